//! The client side: command lines, SASL responses, DATA and BDAT.

use super::command;
use super::message::BodyScanner;
use super::{
    Awaiting, ClientMode, Held, Rcpt, Smtp, Transaction, MAX_HELO, MAX_RCPT, MAX_SESSION_RCPT,
    RECORD_OVERHEAD,
};
use crate::flow::Dir;
use crate::proto::auth::{truncate, RESPONSE_VERB};
use crate::proto::line::Line;
use crate::proto::Event;
use crate::time::Ts;

impl Smtp {
    pub(super) fn client_data(&mut self, mut data: &[u8], ts: Ts) {
        while !data.is_empty() {
            if self.hold.is_some() {
                self.hold_push(Held::Data(data.to_vec(), ts));
                return;
            }
            match &mut self.client_mode {
                ClientMode::Tls => {
                    if let Some(t) = self.tls.as_mut() {
                        t.data(Dir::ToServer, data);
                    }
                    return;
                }
                ClientMode::Data => {
                    let end = match self.body.as_mut() {
                        Some((_, scanner)) => scanner.feed(data),
                        None => Some(0),
                    };
                    match end {
                        Some(n) => {
                            data = &data[n..];
                            self.end_of_data(ts);
                        }
                        None => return,
                    }
                }
                ClientMode::Bdat { remaining, .. } => {
                    let n = usize::try_from(*remaining)
                        .unwrap_or(usize::MAX)
                        .min(data.len());
                    *remaining -= n as u64;
                    if let Some((_, scanner)) = self.body.as_mut() {
                        scanner.feed(&data[..n]);
                    }
                    data = &data[n..];
                    self.end_of_chunk_if_done(ts);
                }
                ClientMode::Command | ClientMode::Resync | ClientMode::AuthResponse => {
                    let mut lines = std::mem::take(&mut self.client_lines);
                    let used = lines.feed(data, |line| self.client_line(&line, ts));
                    self.client_lines = lines;
                    data = &data[used..];
                }
            }
        }
    }

    pub(super) fn client_gap(&mut self, len: u64, ts: Ts) {
        if self.hold.is_some() {
            self.hold_push(Held::Gap(len, ts));
            return;
        }
        let mut rest = len;
        match &mut self.client_mode {
            ClientMode::Tls => {
                if let Some(t) = self.tls.as_mut() {
                    t.gap(Dir::ToServer);
                }
                return;
            }
            ClientMode::Data => {
                if let Some((_, scanner)) = self.body.as_mut() {
                    scanner.gap(len);
                }
                return;
            }
            ClientMode::Bdat { remaining, .. } => {
                let n = (*remaining).min(len);
                *remaining -= n;
                rest -= n;
                if let Some((_, scanner)) = self.body.as_mut() {
                    scanner.gap(n);
                }
                self.end_of_chunk_if_done(ts);
                if rest == 0 {
                    return;
                }
            }
            ClientMode::Command | ClientMode::Resync | ClientMode::AuthResponse => {}
        }
        // Commands were lost: their replies can't be matched any more.
        self.client_lines.reset();
        self.client_mode = ClientMode::Resync;
        self.pending.clear();
        self.lenient = true;
    }

    /// One complete client line; returns false when the bytes after it are
    /// not command lines (mode switch or hold).
    fn client_line(&mut self, line: &Line<'_>, ts: Ts) -> bool {
        match self.client_mode {
            ClientMode::Resync => {
                if line.text == b"." {
                    // The end of a DATA we joined in the middle.
                    self.client_mode = ClientMode::Command;
                    self.push_pending(Awaiting::EndOfData(None), ts);
                    return true;
                }
                let text = String::from_utf8_lossy(line.text);
                if !command::looks_like_command(&text) {
                    return true;
                }
                self.client_mode = ClientMode::Command;
            }
            ClientMode::AuthResponse => {
                let text = self.line_anomalies(line, ts);
                let arg = self.auth_response(&text);
                self.emit(Event::Command {
                    ts,
                    verb: RESPONSE_VERB.to_string(),
                    arg,
                });
                self.client_mode = ClientMode::Command;
                self.push_pending(Awaiting::Auth, ts);
                self.hold_until(Awaiting::Auth);
                return false;
            }
            _ => {}
        }
        let text = self.line_anomalies(line, ts);
        self.command(&text, ts)
    }

    fn command(&mut self, text: &str, ts: Ts) -> bool {
        let c = command::split(text);
        if !self.greeting_seen {
            self.anomaly_once("early-talker", ts);
        } else if !self.pending.is_empty() {
            self.facts.pipelined_commands += 1;
            if !self.offered("PIPELINING") {
                self.facts.pipelined_without_offer += 1;
            }
        }
        let clear_before = self.auth_clear.is_some();
        let shown = match c.verb.as_str() {
            "AUTH" => self.auth_command(c.arg),
            _ => c.arg.to_string(),
        };
        self.emit(Event::Command {
            ts,
            verb: c.verb.clone(),
            arg: shown,
        });
        if !clear_before {
            if let Some(what) = &self.auth_clear {
                let offered = self.offered_tls();
                let f = crate::findings::auth_in_clear(what, "STARTTLS", offered);
                self.emit(Event::Finding { ts, finding: f });
            }
        }
        if !c.known {
            self.anomaly("unknown-command", ts);
        }
        let mut go_on = true;
        let what = match c.verb.as_str() {
            "HELO" | "EHLO" | "LHLO" => {
                let mut h = c.arg.trim().to_string();
                truncate(&mut h, MAX_HELO);
                self.helo = Some(h);
                self.open_tx = None;
                if c.verb == "HELO" {
                    Awaiting::Other
                } else {
                    Awaiting::Ehlo
                }
            }
            "MAIL" => match command::path_arg(c.arg, "FROM:") {
                Some(p) => {
                    let tx = Transaction {
                        mail_from: Some(self.capped(p.addr, ts)),
                        mail_params: self.capped_params(p.params, ts),
                        ..Transaction::default()
                    };
                    self.open_tx = self.new_tx(tx, ts);
                    Awaiting::Mail(self.open_tx)
                }
                None => Awaiting::Other,
            },
            "RCPT" => match command::path_arg(c.arg, "TO:") {
                Some(p) => {
                    let tx = self.current_tx(ts);
                    let idx = self.add_rcpt(tx, p.addr, p.params, ts);
                    Awaiting::Rcpt(tx, idx)
                }
                None => Awaiting::Other,
            },
            "DATA" => {
                let tx = self.current_tx(ts);
                self.hold_until(Awaiting::Data(tx));
                go_on = false;
                Awaiting::Data(tx)
            }
            "BDAT" => match command::bdat(c.arg) {
                Some((size, last)) => {
                    let tx = self.current_tx(ts);
                    if let Some(t) = self.tx_mut(tx) {
                        t.bdat_chunks += 1;
                    }
                    if !matches!(&self.body, Some((b, _)) if *b == tx) {
                        self.body = Some((tx, BodyScanner::new(false)));
                    }
                    self.client_mode = ClientMode::Bdat {
                        remaining: size,
                        last,
                    };
                    self.push_pending(Awaiting::Bdat(tx, last), ts);
                    self.end_of_chunk_if_done(ts);
                    return false;
                }
                None => {
                    self.anomaly("bad-bdat", ts);
                    self.client_mode = ClientMode::Resync;
                    go_on = false;
                    Awaiting::Other
                }
            },
            "RSET" => {
                if let Some(t) = self.tx_mut(self.open_tx) {
                    t.aborted = t.reply.is_none();
                }
                self.open_tx = None;
                self.body = None;
                Awaiting::Other
            }
            "STARTTLS" => {
                self.hold_until(Awaiting::StartTls);
                go_on = false;
                Awaiting::StartTls
            }
            "AUTH" => {
                self.hold_until(Awaiting::Auth);
                go_on = false;
                Awaiting::Auth
            }
            _ => Awaiting::Other,
        };
        self.push_pending(what, ts);
        go_on
    }

    fn add_rcpt(
        &mut self,
        tx: Option<usize>,
        addr: String,
        params: std::collections::BTreeMap<String, Option<String>>,
        ts: Ts,
    ) -> Option<usize> {
        let over_session = self.rcpts >= MAX_SESSION_RCPT;
        let t = self.tx_mut(tx)?;
        if t.rcpt.len() >= MAX_RCPT || over_session {
            self.anomaly("too-many-recipients", ts);
            return None;
        }
        // Cut only what is recorded: `address-too-long` counts recorded addresses.
        let (addr, params) = (self.capped(addr, ts), self.capped_params(params, ts));
        let bytes = RECORD_OVERHEAD + addr.len() + Self::params_len(&params);
        let t = self.tx_mut(tx)?;
        t.rcpt.push(Rcpt {
            addr,
            params,
            reply: None,
        });
        let i = t.rcpt.len() - 1;
        self.rcpts += 1;
        self.recorded_bytes += bytes;
        Some(i)
    }

    /// The "." line of a DATA was read.
    fn end_of_data(&mut self, ts: Ts) {
        self.client_mode = ClientMode::Command;
        let tx = self.finish_body(ts);
        self.open_tx = None;
        self.push_pending(Awaiting::EndOfData(tx), ts);
    }

    fn end_of_chunk_if_done(&mut self, ts: Ts) {
        let ClientMode::Bdat {
            remaining: 0, last, ..
        } = self.client_mode
        else {
            return;
        };
        self.client_mode = ClientMode::Command;
        // The server answers once the chunk is in: measure from its last byte.
        if let Some(p) = self.pending.back_mut() {
            if matches!(p.what, Awaiting::Bdat(..)) {
                p.ts = ts;
            }
        }
        if last {
            self.finish_body(ts);
            self.open_tx = None;
        } else if let Some((tx, scanner)) = &self.body {
            let size = scanner.size;
            if let Some(t) = self.tx_mut(*tx) {
                t.size = Some(size);
            }
        }
    }

    /// Moves the finished message's counts into its transaction.
    fn finish_body(&mut self, ts: Ts) -> Option<usize> {
        let (tx, mut scanner) = self.body.take()?;
        let summary = scanner.finish();
        let facts = scanner.facts.clone();
        for (n, id) in [
            (facts.bare_lf, "bare-lf"),
            (facts.bare_cr, "bare-cr"),
            (facts.long_lines, "line-too-long"),
            (facts.nul_bytes, "nul-byte"),
            (facts.fake_end_markers, "fake-end-of-data"),
            (facts.header_parse_failed, "header-parse-failed"),
        ] {
            if n > 0 {
                self.anomaly(id, ts);
            }
        }
        let mail_from = self.tx_mut(tx).and_then(|t| t.mail_from.clone());
        self.message_done(&summary, &facts, &scanner.dsn, mail_from.as_deref(), ts);
        if let Some(t) = self.tx_mut(tx) {
            t.size = Some(scanner.size);
            t.incomplete = scanner.incomplete;
            t.summary = Some(summary);
            t.facts = facts;
            t.dsn = std::mem::take(&mut scanner.dsn);
        }
        tx
    }

    fn anomaly_once(&mut self, id: &'static str, ts: Ts) {
        if !self.anomalies.contains_key(id) {
            self.anomaly(id, ts);
        }
    }
}
