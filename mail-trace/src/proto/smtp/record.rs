//! The SMTP fields of the session record as plain structs, serialised straight into
//! the output: a `serde_json::Value` tree allocated every key and hashed it into an
//! order-keeping map, about a sixth of a replay's work. Field order is the record's
//! (docs/json.md).
use std::collections::BTreeMap;

use serde::ser::{Serialize, SerializeMap, Serializer};

use super::message::Headers;
use super::reply::Reply;
use super::Smtp;
use crate::findings::dsn::DsnRecipient;
use crate::findings::Finding;
use crate::proto::tls::TlsInfo;

#[derive(Clone, Debug, PartialEq)]
pub struct SmtpRecord {
    greeting: Option<GreetingRecord>,
    helo: Option<String>,
    ehlo: Vec<String>,
    tls: bool,
    tls_mode: Option<&'static str>,
    tls_info: Option<TlsInfo>,
    auth: Option<AuthRecord>,
    transactions: Vec<TxRecord>,
    findings: Vec<Finding>,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
struct GreetingRecord {
    code: u16,
    text: String,
    delay_ms: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
struct AuthRecord {
    mechanism: String,
    user: Option<String>,
    code: Option<u16>,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
struct TxRecord {
    mail_from: Option<String>,
    mail_params: BTreeMap<String, Option<String>>,
    rcpt: Vec<RcptRecord>,
    data_code: Option<u16>,
    bdat_chunks: u64,
    size: Option<u64>,
    queue_id: Option<String>,
    headers: Option<Headers>,
    reply: Option<ReplyRecord>,
    dsn: Option<DsnRecord>,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
struct RcptRecord {
    addr: String,
    params: BTreeMap<String, Option<String>>,
    code: Option<u16>,
    enhanced: Option<String>,
    text: Option<String>,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
struct ReplyRecord {
    code: u16,
    enhanced: Option<String>,
    text: String,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
struct DsnRecord {
    recipients: Vec<DsnRecipient>,
}

impl SmtpRecord {
    /// The fields as entries of the enclosing session record's map.
    pub fn entries<M: SerializeMap>(&self, m: &mut M) -> Result<(), M::Error> {
        m.serialize_entry("greeting", &self.greeting)?;
        m.serialize_entry("helo", &self.helo)?;
        m.serialize_entry("ehlo", &self.ehlo)?;
        m.serialize_entry("tls", &self.tls)?;
        m.serialize_entry("tls_mode", &self.tls_mode)?;
        m.serialize_entry("tls_info", &self.tls_info)?;
        m.serialize_entry("auth", &self.auth)?;
        m.serialize_entry("transactions", &self.transactions)?;
        m.serialize_entry("findings", &self.findings)
    }
}

impl Serialize for SmtpRecord {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(9))?;
        self.entries(&mut m)?;
        m.end()
    }
}

impl ReplyRecord {
    fn of(r: &Reply) -> Self {
        ReplyRecord {
            code: r.code,
            enhanced: r.enhanced.clone(),
            text: r.text(),
        }
    }
}

impl Smtp {
    /// The protocol's fields of the session record.
    pub(super) fn typed_record(&self) -> SmtpRecord {
        SmtpRecord {
            greeting: self.greeting.as_ref().map(|g| GreetingRecord {
                code: g.code,
                text: g.text.clone(),
                delay_ms: g.delay_ms,
            }),
            helo: self.helo.clone(),
            ehlo: self.ehlo.clone(),
            tls: self.tls.is_some(),
            tls_mode: self.tls_mode,
            tls_info: self
                .tls_info()
                .filter(|i| **i != TlsInfo::default())
                .cloned(),
            auth: self.sasl.as_ref().map(|s| AuthRecord {
                mechanism: s.mechanism.clone(),
                user: s.user.clone(),
                code: self.auth_code,
            }),
            transactions: (0..self.transactions.len())
                .map(|i| self.tx_record(i))
                .collect(),
            findings: self.session_findings(),
        }
    }

    fn tx_record(&self, i: usize) -> TxRecord {
        let t = &self.transactions[i];
        // A message still being read when the record is taken.
        let live = match &self.body {
            Some((Some(b), scanner)) if *b == i => Some(scanner),
            _ => None,
        };
        let size = live.map(|s| s.size).or(t.size);
        // Decoded (or copied) only when shown: most records never show headers.
        let headers = match (&t.summary, live) {
            _ if !self.privacy.show_headers => None,
            (Some(s), _) => Some(s.headers.clone()),
            (None, Some(scanner)) => Some(scanner.peek_summary().headers),
            (None, None) => None,
        };
        TxRecord {
            mail_from: t.mail_from.clone(),
            mail_params: t.mail_params.clone(),
            rcpt: t
                .rcpt
                .iter()
                .map(|r| RcptRecord {
                    addr: r.addr.clone(),
                    params: r.params.clone(),
                    code: r.reply.as_ref().map(|x| x.code),
                    enhanced: r.reply.as_ref().and_then(|x| x.enhanced.clone()),
                    text: r.reply.as_ref().map(Reply::text),
                })
                .collect(),
            data_code: t.data_code,
            bdat_chunks: t.bdat_chunks,
            size,
            queue_id: t.queue_id.clone(),
            headers,
            reply: t.reply.as_ref().map(ReplyRecord::of),
            dsn: (!t.dsn.is_empty()).then(|| DsnRecord {
                recipients: t.dsn.clone(),
            }),
        }
    }
}
