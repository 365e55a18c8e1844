//! The server side: reply lines joined into replies, each matched to the
//! oldest command still waiting, and what each reply means for the session.

use super::message::BodyScanner;
use super::reply::{self, Reply, ReplyBuilder};
use super::{Awaiting, ClientMode, Greeting, Smtp};
use crate::flow::Dir;
use crate::proto::line::Line;
use crate::proto::tls::TlsHellos;
use crate::proto::Event;
use crate::time::Ts;

impl Smtp {
    pub(super) fn server_data(&mut self, mut data: &[u8], ts: Ts) {
        while !data.is_empty() {
            if let Some(t) = self.tls.as_mut().filter(|_| !self.plaintext) {
                t.data(Dir::ToClient, data);
                return;
            }
            // A line finished in this segment may have begun in an earlier one.
            let mut line_ts = if self.server_lines.pending() > 0 {
                self.server_partial_ts
            } else {
                ts
            };
            let mut lines = std::mem::take(&mut self.server_lines);
            let used = lines.feed(data, |line| {
                let go_on = self.server_line(&line, line_ts);
                line_ts = ts;
                go_on
            });
            self.server_lines = lines;
            if self.server_lines.pending() > 0 {
                self.server_partial_ts = line_ts;
            }
            data = &data[used..];
        }
    }

    pub(super) fn server_gap(&mut self, ts: Ts) {
        if let Some(t) = self.tls.as_mut().filter(|_| !self.plaintext) {
            t.gap(Dir::ToClient);
            return;
        }
        self.server_lines.reset();
        self.building = None;
        self.server_resync = true;
        self.lenient = true;
        self.pending.clear();
        // The deciding reply may be lost: read the held bytes the likely way.
        if let Some(h) = &self.hold {
            let until = h.until;
            self.decide(until, None);
            if self.tls.is_some() {
                self.tls_started(ts);
            }
            self.release_hold();
        }
    }

    /// One complete server line, starting at `ts`. False once TLS began.
    fn server_line(&mut self, line: &Line<'_>, ts: Ts) -> bool {
        let text = super::text_of(line.text);
        let Some(rl) = reply::parse_line(&text) else {
            if !self.server_resync {
                self.anomaly("bad-reply", ts);
            }
            return true;
        };
        self.server_resync = false;
        // Anomalies only for lines that are replies (not for skipped ones).
        let _ = self.line_anomalies(line, ts);
        let (builder, start) = match self.building.take() {
            Some((mut b, start)) => {
                b.push(&rl);
                (b, start)
            }
            None => (ReplyBuilder::new(&rl), ts),
        };
        if builder.code_mismatch && !rl.more {
            self.anomaly("reply-code-mismatch", ts);
        }
        if rl.more {
            self.building = Some((builder, start));
            return true;
        }
        self.reply(builder.finish(), start)
    }

    fn reply(&mut self, r: Reply, ts: Ts) -> bool {
        if !self.greeting_seen {
            self.greeting_seen = true;
            self.greeting = Some(Greeting {
                code: r.code,
                text: r.text(),
                delay_ms: self.greeting_delay(ts),
            });
            self.emit_reply(&r, ts, None);
            return true;
        }
        // A reply can't answer a command sent after it began.
        let answerable = self.pending.front().is_some_and(|p| p.ts <= ts);
        let Some(p) = answerable.then(|| self.pending.pop_front()).flatten() else {
            self.emit_reply(&r, ts, None);
            // 421 may come unasked (the server is closing the session).
            if !self.lenient && r.code != 421 {
                self.anomaly("unexpected-reply", ts);
            }
            return true;
        };
        self.lenient = false;
        let mut r = r;
        if matches!(p.what, Awaiting::Auth) {
            self.redact_auth_echo(&mut r);
        }
        self.emit_reply(&r, ts, Some(ts.saturating_sub(p.ts)));
        let code = r.code;
        match p.what {
            Awaiting::Ehlo if code / 100 == 2 => {
                self.ehlo = r
                    .lines
                    .iter()
                    .skip(1)
                    .map(|l| match l.split_once(' ') {
                        Some((k, rest)) => format!("{} {}", k.to_ascii_uppercase(), rest),
                        None => l.to_ascii_uppercase(),
                    })
                    .collect();
            }
            Awaiting::Mail(tx) => {
                let bytes = r.lines.iter().map(String::len).sum::<usize>();
                if let Some(t) = self.tx_mut(tx) {
                    t.mail_reply = Some(r);
                    self.recorded_bytes += bytes;
                }
            }
            Awaiting::Rcpt(tx, Some(i)) => {
                let bytes = r.lines.iter().map(String::len).sum::<usize>();
                if let Some(rc) = self.tx_mut(tx).and_then(|t| t.rcpt.get_mut(i)) {
                    rc.reply = Some(r);
                    self.recorded_bytes += bytes;
                }
            }
            Awaiting::Data(tx) => {
                if let Some(t) = self.tx_mut(tx) {
                    t.data_code = Some(code);
                }
                self.decide(p.what, Some(code));
                self.release_hold();
            }
            Awaiting::EndOfData(tx) => self.final_reply(tx, r),
            Awaiting::Bdat(tx, last) => {
                if last || code >= 400 {
                    self.final_reply(tx, r);
                }
            }
            Awaiting::StartTls => {
                self.starttls_code = Some(code);
                self.decide(p.what, Some(code));
                let tls = self.tls.is_some();
                if tls {
                    self.tls_started(ts);
                }
                self.release_hold();
                return !tls;
            }
            Awaiting::Auth => {
                if code != 334 {
                    self.auth_code = Some(code);
                    if let Some(x) = self.sasl.as_mut() {
                        x.finish();
                    }
                }
                self.decide(p.what, Some(code));
                self.release_hold();
            }
            Awaiting::Ehlo | Awaiting::Rcpt(_, None) | Awaiting::Other => {}
        }
        true
    }

    /// A reply within an AUTH exchange that echoes what the client sent (the base64
    /// response or a decoded secret) shows `<redacted>` there unless `--show-secrets`.
    fn redact_auth_echo(&self, r: &mut Reply) {
        let Some(x) = self.sasl.as_ref().filter(|_| !self.privacy.show_secrets) else {
            return;
        };
        for l in &mut r.lines {
            if let Some(clean) = x.redact_echo(l) {
                *l = clean;
            }
        }
    }

    fn final_reply(&mut self, tx: Option<usize>, r: Reply) {
        let id = if r.code / 100 == 2 {
            reply::queue_id(&r)
        } else {
            None
        };
        if let Some(t) = self.tx_mut(tx) {
            t.queue_id = id.or(t.queue_id.take());
            t.reply = Some(r);
        }
    }

    /// Sets how the client's next bytes are read once `what` is answered with
    /// `code` (None: the reply was lost, assume the usual outcome).
    pub(super) fn decide(&mut self, what: Awaiting, code: Option<u16>) {
        match what {
            Awaiting::Data(tx) if code.is_none_or(|c| c == 354) => {
                self.body = Some((tx, BodyScanner::new(true)));
                self.client_mode = ClientMode::Data;
            }
            Awaiting::StartTls if code.is_none_or(|c| c == 220) => {
                self.tls = Some(TlsHellos::new());
                self.tls_mode = Some("starttls");
                self.client_lines.reset();
                self.client_mode = ClientMode::Tls;
            }
            Awaiting::Auth if code == Some(334) => {
                self.client_mode = ClientMode::AuthResponse;
            }
            _ => {}
        }
    }

    fn emit_reply(&mut self, r: &Reply, ts: Ts, latency_ns: Option<u64>) {
        self.emit(Event::Reply {
            ts,
            code: r.code.to_string(),
            enhanced: r.enhanced.clone(),
            text: r.text(),
            latency_ns,
        });
    }
}
