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
            // Carrying on in clear after the 220 is a STARTTLS without a ClientHello.
            started: self.tls_mode == Some("starttls") || self.starttls_clear,
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
        if let Some(why) = self.tls_info().and_then(|i| i.failed.as_deref()) {
            f::push(&mut out, f::tls_handshake_failed(why));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::findings::Severity;
    use crate::flow::Dir;
    use crate::proto::{Dissector, SessionStart};

    const C: Dir = Dir::ToServer;
    const S: Dir = Dir::ToClient;

    /// A TLS record holding a (minimal) ClientHello: enough for the hello parser.
    const HELLO: &[u8] = &[
        0x16, 0x03, 0x01, 0x00, 0x08, 0x01, 0x00, 0x00, 0x04, 0x03, 0x03, 0x00, 0x00,
    ];

    fn start(port: u16) -> SessionStart {
        SessionStart {
            client: Some("10.99.0.1:40000".parse().unwrap()),
            server: Some(format!("10.99.0.2:{port}").parse().unwrap()),
            ..SessionStart::default()
        }
    }

    fn session(start: SessionStart, steps: &[(Dir, &[u8])]) -> (Vec<Event>, Vec<Finding>) {
        let mut d = Smtp::new(Default::default(), start);
        let mut live = Vec::new();
        for (i, (dir, bytes)) in steps.iter().enumerate() {
            d.data(*dir, bytes, i as Ts + 1);
            while let Some(e) = d.poll_event() {
                if let Event::Finding { .. } = e {
                    live.push(e);
                }
            }
        }
        let found = d.findings();
        assert_eq!(
            serde_json::to_value(&found).unwrap(),
            d.record()["findings"],
            "the record lists the same findings"
        );
        (live, found)
    }

    fn ids(f: &[Finding]) -> Vec<(&'static str, Severity)> {
        f.iter().map(|x| (x.id, x.severity)).collect()
    }

    const CAPS_TLS: &[u8] =
        b"250-mx.test\r\n250-PIPELINING\r\n250-STARTTLS\r\n250 AUTH PLAIN LOGIN\r\n";
    const CAPS_PLAIN: &[u8] = b"250-mx.test\r\n250-PIPELINING\r\n250 AUTH PLAIN LOGIN\r\n";

    /// Greeting and EHLO with `caps`, then `rest`.
    fn with<'a>(caps: &'a [u8], rest: &[(Dir, &'a [u8])]) -> Vec<(Dir, &'a [u8])> {
        let mut v: Vec<(Dir, &[u8])> = vec![
            (S, b"220 mx.test ESMTP\r\n"),
            (C, b"EHLO client.test\r\n"),
            (S, caps),
        ];
        v.extend_from_slice(rest);
        v
    }

    /// One message `msg` (with its end line) from `from`, accepted.
    fn mail<'a>(from: &'a [u8], msg: &'a [u8]) -> Vec<(Dir, &'a [u8])> {
        vec![
            (C, from),
            (S, b"250 2.1.0 Ok\r\n"),
            (C, b"RCPT TO:<bob@mx.test>\r\n"),
            (S, b"250 2.1.5 Ok\r\n"),
            (C, b"DATA\r\n"),
            (S, b"354 go ahead\r\n"),
            (C, msg),
            (S, b"250 2.0.0 Ok: queued as ABC123\r\n"),
        ]
    }

    #[test]
    fn auth_before_tls_live_and_in_record() {
        let auth: &[(Dir, &[u8])] = &[(C, b"AUTH PLAIN AGEAYg==\r\n"), (S, b"235 2.7.0 ok\r\n")];
        let (live, found) = session(start(587), &with(CAPS_TLS, auth));
        let want = Finding::new(
            "auth-before-tls",
            Severity::Warn,
            "AUTH PLAIN sent in clear although the server offered STARTTLS",
        );
        assert_eq!(
            live,
            vec![Event::Finding {
                ts: 4,
                finding: want.clone()
            }]
        );
        assert_eq!(found, vec![want]);
        // The close one: STARTTLS first, so AUTH is inside TLS and nothing is found.
        let tls: &[(Dir, &[u8])] = &[
            (C, b"STARTTLS\r\n"),
            (S, b"220 2.0.0 Ready\r\n"),
            (C, HELLO),
        ];
        assert_eq!(session(start(587), &with(CAPS_TLS, tls)), (vec![], vec![]));
        // Port 465 is TLS from the first byte: never cleartext.
        let implicit = SessionStart {
            implicit_tls: true,
            ..start(465)
        };
        assert_eq!(session(implicit, &[(C, HELLO)]).1, vec![]);
    }

    #[test]
    fn auth_cleartext_without_starttls() {
        let auth: &[(Dir, &[u8])] = &[(C, b"AUTH LOGIN\r\n"), (S, b"334 VXNlcm5hbWU6\r\n")];
        let (_, found) = session(start(587), &with(CAPS_PLAIN, auth));
        assert_eq!(
            found,
            vec![
                Finding::new(
                    "auth-cleartext",
                    Severity::Warn,
                    "AUTH LOGIN sent in clear; the server offered no STARTTLS"
                ),
                Finding::new(
                    "starttls-not-offered",
                    Severity::Warn,
                    "the server offered no STARTTLS on port 587"
                ),
            ]
        );
    }

    #[test]
    fn starttls_refused_or_not_followed_by_tls() {
        let refused: &[(Dir, &[u8])] = &[
            (C, b"STARTTLS\r\n"),
            (S, b"454 4.7.0 TLS not available\r\n"),
        ];
        let (_, found) = session(start(25), &with(CAPS_TLS, refused));
        assert_eq!(
            found,
            vec![Finding::new(
                "starttls-failed",
                Severity::Warn,
                "STARTTLS refused with 454; the session stayed in clear"
            )]
        );
        let garbage: &[(Dir, &[u8])] = &[
            (C, b"STARTTLS\r\n"),
            (S, b"220 2.0.0 Ready\r\n"),
            (C, b"EHLO still.clear\r\n"),
        ];
        assert_eq!(
            ids(&session(start(25), &with(CAPS_TLS, garbage)).1),
            vec![("starttls-failed", Severity::Warn)]
        );
        // Offered and unused on 25: info only.
        let quit: &[(Dir, &[u8])] = &[(C, b"QUIT\r\n"), (S, b"221 bye\r\n")];
        assert_eq!(
            ids(&session(start(25), &with(CAPS_TLS, quit)).1),
            vec![("starttls-offered-not-used", Severity::Info)]
        );
    }

    #[test]
    fn starttls_not_offered_and_stripping() {
        let quit: &[(Dir, &[u8])] = &[(C, b"QUIT\r\n"), (S, b"221 bye\r\n")];
        let steps = with(CAPS_PLAIN, quit);
        assert_eq!(
            ids(&session(start(25), &steps).1),
            vec![("starttls-not-offered", Severity::Warn)]
        );
        let seen = SessionStart {
            tls_offered_before: true,
            ..start(25)
        };
        assert_eq!(
            ids(&session(seen, &steps).1),
            vec![("starttls-not-offered", Severity::Alert)]
        );
        // Not a port where STARTTLS is expected.
        assert_eq!(session(start(2525), &steps).1, vec![]);
    }

    #[test]
    fn submission_without_auth_only_on_587() {
        let msg = mail(
            b"MAIL FROM:<a@client.test>\r\n",
            b"Subject: x\r\n\r\nhi\r\n.\r\n",
        );
        let (_, found) = session(start(587), &with(CAPS_PLAIN, &msg));
        assert!(found.contains(&Finding::new(
            "submission-without-auth",
            Severity::Warn,
            "message ABC123 accepted on port 587 without a successful AUTH"
        )));
        let mut authed: Vec<(Dir, &[u8])> =
            vec![(C, b"AUTH PLAIN AGEAYg==\r\n"), (S, b"235 2.7.0 ok\r\n")];
        authed.extend(msg.iter().copied());
        let f = session(start(587), &with(CAPS_PLAIN, &authed)).1;
        assert!(
            !f.iter().any(|x| x.id == "submission-without-auth"),
            "{f:?}"
        );
        let f = session(start(25), &with(CAPS_PLAIN, &msg)).1;
        assert!(
            !f.iter().any(|x| x.id == "submission-without-auth"),
            "{f:?}"
        );
    }

    fn message_findings(from: &[u8], msg: &[u8]) -> (Vec<Event>, Vec<Finding>) {
        session(start(2525), &with(CAPS_PLAIN, &mail(from, msg)))
    }

    #[test]
    fn from_mismatch_alert_info_and_none() {
        let (live, found) = message_findings(
            b"MAIL FROM:<x@evil.example>\r\n",
            b"From: Bank <service@bank.example>\r\n\r\nhi\r\n.\r\n",
        );
        let want = Finding::new(
            "from-mismatch",
            Severity::Alert,
            "header From domain bank.example differs from envelope domain evil.example",
        );
        assert_eq!(found, vec![want.clone()]);
        assert_eq!(
            live,
            vec![Event::Finding {
                ts: 10,
                finding: want
            }]
        );
        let (_, sub) = message_findings(
            b"MAIL FROM:<b@bounces.example.com>\r\n",
            b"From: news@example.com\r\n\r\nhi\r\n.\r\n",
        );
        assert_eq!(ids(&sub), vec![("from-mismatch", Severity::Info)]);
        let (_, same) = message_findings(
            b"MAIL FROM:<a@Example.com>\r\n",
            b"From: a@example.com\r\n\r\nhi\r\n.\r\n",
        );
        assert_eq!(same, vec![]);
        // Bounces: null sender.
        let (_, bounce) = message_findings(
            b"MAIL FROM:<>\r\n",
            b"From: MAILER-DAEMON@mx.test\r\n\r\n.\r\n",
        );
        assert_eq!(bounce, vec![]);
    }

    #[test]
    fn helo_checked_against_the_client_address() {
        let quit: &[(Dir, &[u8])] = &[(C, b"QUIT\r\n"), (S, b"221 bye\r\n")];
        let steps = |helo: &'static [u8]| {
            vec![
                (S, &b"220 mx.test ESMTP\r\n"[..]),
                (C, helo),
                (S, CAPS_PLAIN),
                quit[0],
                quit[1],
            ]
        };
        assert_eq!(
            session(start(2525), &steps(b"EHLO [10.0.0.9]\r\n")).1,
            vec![Finding::new(
                "helo-suspicious",
                Severity::Warn,
                "HELO [10.0.0.9] differs from the client address 10.99.0.1"
            )]
        );
        assert_eq!(
            session(start(2525), &steps(b"EHLO [10.99.0.1]\r\n")).1,
            vec![]
        );
        assert_eq!(
            ids(&session(start(2525), &steps(b"EHLO localhost\r\n")).1),
            vec![("helo-suspicious", Severity::Warn)]
        );
    }

    #[test]
    fn smuggling_in_data() {
        let (live, found) = message_findings(
            b"MAIL FROM:<a@client.test>\r\n",
            b"Subject: x\r\n\r\nhi\n.\nMAIL FROM:<evil@x>\r\n.\r\n",
        );
        assert_eq!(
            found,
            vec![Finding::new(
                "smtp-smuggling",
                Severity::Alert,
                "message data with 1 fake end-of-data markers (<LF>.<LF> and kin), 2 bare LF"
            )]
        );
        assert_eq!(live.len(), 1);
        let (_, cr) = message_findings(
            b"MAIL FROM:<a@client.test>\r\n",
            b"Subject: x\r\n\r\nhi\r.\rMAIL\r\n.\r\n",
        );
        assert_eq!(ids(&cr), vec![("smtp-smuggling", Severity::Warn)]);
        let (_, clean) = message_findings(
            b"MAIL FROM:<a@client.test>\r\n",
            b"Subject: x\r\n\r\nhi\r\n..\r\n.\r\n",
        );
        assert_eq!(clean, vec![]);
    }

    #[test]
    fn pipelining_without_offer() {
        let caps: &[u8] = b"250-mx.test\r\n250 SIZE 1000\r\n";
        let steps = |caps: &'static [u8]| {
            vec![
                (S, &b"220 mx.test ESMTP\r\n"[..]),
                (C, b"EHLO client.test\r\n"),
                (S, caps),
                (C, b"MAIL FROM:<a@client.test>\r\nRCPT TO:<b@mx.test>\r\n"),
                (S, b"250 ok\r\n250 ok\r\n"),
            ]
        };
        assert_eq!(
            session(start(2525), &steps(caps)).1,
            vec![Finding::new(
                "pipelining-violation",
                Severity::Warn,
                "1 commands pipelined although the server did not offer PIPELINING"
            )]
        );
        assert_eq!(session(start(2525), &steps(CAPS_PLAIN)).1, vec![]);
    }

    #[test]
    fn message_facts() {
        let from = b"MAIL FROM:<a@example.com>\r\n";
        let smime = b"From: a@example.com\r\nContent-Type: multipart/signed; \
protocol=\"application/pkcs7-signature\"; micalg=sha-256; boundary=b\r\n\r\n--b\r\n\r\nx\r\n--b--\r\n.\r\n";
        assert_eq!(
            ids(&message_findings(from, smime).1),
            vec![("smime", Severity::Info)]
        );
        let pgp = b"From: a@example.com\r\nContent-Type: multipart/encrypted; \
protocol=\"application/pgp-encrypted\"; boundary=b\r\n\r\n--b--\r\n.\r\n";
        assert_eq!(
            ids(&message_findings(from, pgp).1),
            vec![("pgp", Severity::Info)]
        );
        let dkim = b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed;\r\n d=example.com; s=s1;\r\n b=AAAA\r\nFrom: a@example.com\r\n\r\nhi\r\n.\r\n";
        assert_eq!(
            message_findings(from, dkim).1,
            vec![Finding::new(
                "dkim-signed",
                Severity::Info,
                "DKIM-signed by d=example.com"
            )]
        );
        let mixed = b"From: a@example.com\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b--\r\n.\r\n";
        assert_eq!(message_findings(from, mixed).1, vec![]);
    }

    #[test]
    fn dsn_read_and_recorded_on_the_transaction() {
        let bounce = b"From: MAILER-DAEMON@mx.test\r\nContent-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"XX/mx.test\"\r\n\r\n\
--XX/mx.test\r\nContent-Type: text/plain\r\n\r\nsorry\r\n\r\n\
--XX/mx.test\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.test\r\n\r\n\
Final-Recipient: rfc822; nobody@mx.test\r\nAction: failed\r\nStatus: 5.1.1\r\nDiagnostic-Code: X-Postfix; unknown user: \"nobody\"\r\n\r\n\
--XX/mx.test--\r\n.\r\n";
        let steps = with(CAPS_PLAIN, &mail(b"MAIL FROM:<>\r\n", bounce));
        let mut d = Smtp::new(Default::default(), start(25));
        for (i, (dir, b)) in steps.iter().enumerate() {
            d.data(*dir, b, i as Ts);
        }
        let found = d.findings();
        let dsn = found.iter().find(|f| f.id == "dsn").expect("dsn finding");
        let explain = crate::explain::enhanced("5.1.1").unwrap().to_string();
        assert_eq!(
            dsn.reason,
            format!(
                "delivery status notification: nobody@mx.test failed 5.1.1 ({explain}): \
                 unknown user: \"nobody\""
            )
        );
        assert_eq!(
            d.record()["transactions"][0]["dsn"],
            serde_json::json!({"recipients": [{
                "final_recipient": "nobody@mx.test", "action": "failed", "status": "5.1.1",
                "explain": explain, "diagnostic_code": "unknown user: \"nobody\""}]})
        );
    }
}
