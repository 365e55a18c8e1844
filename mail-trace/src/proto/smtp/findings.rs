//! The SMTP session's findings (see [`crate::findings`]), from the facts the
//! dissector kept. Message findings are decided when each message ends (and
//! emitted then); session findings when the record is taken.
use super::message::HeaderSummary;
use super::{BodyFacts, Smtp};
use crate::findings::dsn::{self, DsnRecipient};
use crate::findings::{self as f, Finding, TlsPicture};
use crate::proto::tls::HelloState;
use crate::proto::Event;
use crate::time::Ts;

/// RFC 4954 "235 Authentication successful".
const AUTH_OK: u16 = 235;

impl Smtp {
    /// Whether the server offered STARTTLS; None when no EHLO capabilities were seen.
    pub(super) fn offered_tls(&self) -> Option<bool> {
        (!self.ehlo.is_empty()).then(|| self.offered("STARTTLS"))
    }

    fn tls_picture(&self) -> TlsPicture {
        TlsPicture {
            port: self.start.server.map(|s| s.port()),
            implicit: self.start.implicit_tls,
            offered: self.offered_tls(),
            offered_before: self.start.tls_offered_before,
            refused: self
                .starttls_code
                .filter(|c| *c != 220)
                .map(|c| c.to_string()),
            started: self.tls_mode == Some("starttls"),
            client_hello: self
                .tls
                .as_ref()
                .is_some_and(|t| t.state().0 == HelloState::Done),
            auth_in_clear: self.auth_clear.clone(),
        }
    }

    /// Every finding of the session so far.
    pub(super) fn session_findings(&self) -> Vec<Finding> {
        let mut out = Vec::new();
        for x in f::tls_findings(&self.tls_picture(), "STARTTLS") {
            f::push(&mut out, x);
        }
        if let Some(h) = &self.helo {
            let client = self.start.client.map(|c| c.ip());
            if let Some(x) = f::helo_suspicious(h, client) {
                f::push(&mut out, x);
            }
        }
        if let Some(x) = f::pipelining_violation(self.facts.pipelined_without_offer) {
            f::push(&mut out, x);
        }
        let port = self.start.server.map(|s| s.port());
        if port == Some(587) && self.auth_code != Some(AUTH_OK) {
            for t in &self.transactions {
                if t.reply.as_ref().is_some_and(|r| r.code / 100 == 2) {
                    f::push(&mut out, f::submission_without_auth(t.queue_id.as_deref()));
                }
            }
        }
        for x in &self.message_findings {
            f::push(&mut out, x.clone());
        }
        out
    }

    /// A message ended: its findings are known now.
    pub(super) fn message_done(
        &mut self,
        summary: &HeaderSummary,
        facts: &BodyFacts,
        report: &[DsnRecipient],
        mail_from: Option<&str>,
        ts: Ts,
    ) {
        let from = summary
            .from_domain
            .as_deref()
            .zip(mail_from)
            .and_then(|(h, e)| f::from_mismatch(h, e));
        let secure = summary
            .media_type
            .as_deref()
            .and_then(|m| f::secure_mime(m, summary.protocol.as_deref()));
        let found = [
            from,
            f::smtp_smuggling(facts),
            secure,
            f::dkim_signed(&summary.dkim_domains),
            dsn::finding(report),
        ];
        for x in found.into_iter().flatten() {
            if self.message_findings.len() < f::MAX_FINDINGS && !self.message_findings.contains(&x)
            {
                self.message_findings.push(x.clone());
                self.emit(Event::Finding { ts, finding: x });
            }
        }
    }
}
