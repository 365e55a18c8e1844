//! The SMTP fields of the session record as plain structs, serialised straight into
//! the output: a `serde_json::Value` tree allocated every key and hashed it into an
//! order-keeping map, about a sixth of a replay's work. Field order is the record's
//! (docs/json.md).
use std::collections::BTreeMap;

use serde::ser::{Serialize, Serializer};

use super::message::Headers;
use super::reply::Reply;
use super::Smtp;
use crate::findings::dsn::DsnRecipient;
use crate::findings::Finding;
use crate::proto::tls::TlsInfo;
use crate::session::record::{AsMap, Entries, Object};

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
    not_recorded: Option<NotRecorded>,
    findings: Vec<Finding>,
}

/// What the session's caps left out (present only when something was): the counts behind
/// the `too-many-*` and `address-too-long` anomalies, which are emitted a few times only.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
struct NotRecorded {
    transactions: u64,
    recipients: u64,
    addresses_cut: u64,
}

impl SmtpRecord {
    /// Transactions the server accepted at the end of data (2xx), queue id or not.
    pub fn accepted_messages(&self) -> u64 {
        self.transactions
            .iter()
            .filter(|t| {
                t.reply
                    .as_ref()
                    .is_some_and(|r| (200..300).contains(&r.code))
            })
            .count() as u64
    }
}

#[derive(Clone, Debug, PartialEq)]
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

#[derive(Clone, Debug, PartialEq)]
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

#[derive(Clone, Debug, PartialEq)]
struct RcptRecord {
    addr: String,
    params: BTreeMap<String, Option<String>>,
    code: Option<u16>,
    enhanced: Option<String>,
    text: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
struct ReplyRecord {
    code: u16,
    enhanced: Option<String>,
    text: String,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
struct DsnRecord {
    recipients: Vec<DsnRecipient>,
}

impl Object for SmtpRecord {
    /// Also the entries of the enclosing session record.
    fn entries<E: Entries>(&self, m: &mut E) -> Result<(), E::Error> {
        m.object("greeting", self.greeting.as_ref())?;
        m.entry("helo", &self.helo)?;
        m.entry("ehlo", &self.ehlo)?;
        m.entry("tls", &self.tls)?;
        m.entry("tls_mode", &self.tls_mode)?;
        m.entry("tls_info", &self.tls_info)?;
        m.entry("auth", &self.auth)?;
        m.objects("transactions", &self.transactions)?;
        if let Some(n) = &self.not_recorded {
            m.entry("not_recorded", n)?;
        }
        m.entry("findings", &self.findings)
    }
}

impl Serialize for SmtpRecord {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        AsMap(self).serialize(s)
    }
}

impl Object for GreetingRecord {
    fn entries<E: Entries>(&self, m: &mut E) -> Result<(), E::Error> {
        m.entry("code", &self.code)?;
        m.entry("text", &self.text)?;
        m.entry("delay_ms", &self.delay_ms)
    }
}

impl Object for TxRecord {
    fn entries<E: Entries>(&self, m: &mut E) -> Result<(), E::Error> {
        m.entry("mail_from", &self.mail_from)?;
        m.entry("mail_params", &self.mail_params)?;
        m.objects("rcpt", &self.rcpt)?;
        m.entry("data_code", &self.data_code)?;
        m.entry("bdat_chunks", &self.bdat_chunks)?;
        m.entry("size", &self.size)?;
        m.entry("queue_id", &self.queue_id)?;
        m.entry("headers", &self.headers)?;
        m.object("reply", self.reply.as_ref())?;
        m.entry("dsn", &self.dsn)
    }
}

impl Object for RcptRecord {
    fn entries<E: Entries>(&self, m: &mut E) -> Result<(), E::Error> {
        m.entry("addr", &self.addr)?;
        m.entry("params", &self.params)?;
        m.entry("code", &self.code)?;
        m.entry("enhanced", &self.enhanced)?;
        m.entry("text", &self.text)
    }
}

impl Object for ReplyRecord {
    fn entries<E: Entries>(&self, m: &mut E) -> Result<(), E::Error> {
        m.entry("code", &self.code)?;
        m.entry("enhanced", &self.enhanced)?;
        m.entry("text", &self.text)
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
    /// The protocol's fields of the session record, with the session's findings.
    pub(super) fn typed_record(&self, findings: Vec<Finding>) -> SmtpRecord {
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
            not_recorded: {
                let n = |id| self.anomaly_counts().get(id).copied().unwrap_or(0);
                let counts = NotRecorded {
                    transactions: n("too-many-transactions"),
                    recipients: n("too-many-recipients"),
                    addresses_cut: n("address-too-long"),
                };
                (counts.transactions + counts.recipients + counts.addresses_cut > 0)
                    .then_some(counts)
            },
            findings,
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
