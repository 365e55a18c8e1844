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

/// The first byte of a TLS record: change_cipher_spec, alert, handshake, application_data.
/// (The ClientHello's is 22; after a lost ClientHello the next record is another type.)
const TLS_CONTENT_TYPES: std::ops::RangeInclusive<u8> = 20..=23;

impl Smtp {
    pub(super) fn client_data(&mut self, mut data: &[u8], ts: Ts) {
        while !data.is_empty() {
            if self.hold.is_some() {
                self.hold_push(Held::Data(data.to_vec(), ts));
                return;
            }
            match &mut self.client_mode {
                ClientMode::Tls
                    if std::mem::take(&mut self.starttls_probe)
                        && !TLS_CONTENT_TYPES.contains(&data[0]) =>
                {
                    self.clear_after_starttls(ts);
                }
                ClientMode::Tls => {
                    self.starttls_probe = false;
                    if let Some(at) = self.starttls_event.take() {
                        self.tls_started(at);
                    }
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
                ClientMode::Resync if self.resync_chunk > 0 => {
                    let n = usize::try_from(self.resync_chunk)
                        .unwrap_or(usize::MAX)
                        .min(data.len());
                    self.resync_chunk -= n as u64;
                    self.hold_resync_chunk(&data[..n]);
                    data = &data[n..];
                }
                ClientMode::Command
                | ClientMode::Resync
                | ClientMode::AuthResponse
                | ClientMode::MaybeSasl => {
                    let mut lines = std::mem::take(&mut self.client_lines);
                    let used = lines.feed(data, |line| self.client_line(&line, ts));
                    self.client_lines = lines;
                    data = &data[used..];
                }
            }
        }
    }

    /// Bytes after a held BDAT line: its chunk, if it was a command.
    fn hold_resync_chunk(&mut self, d: &[u8]) {
        let Some(h) = self.resync_held.last_mut() else {
            return;
        };
        if h.lost > 0 || self.resync_bytes + d.len() > super::MAX_HOLD {
            h.lost += d.len() as u64;
        } else {
            h.raw.extend_from_slice(d);
            self.resync_bytes += d.len();
        }
    }

    /// Forgets the held command-shaped lines (they were body lines, or bytes were lost).
    pub(super) fn clear_resync_held(&mut self) {
        self.resync_bad_bdat = false;
        self.resync_dot = None;
        self.resync_held.clear();
        self.resync_chunk = 0;
        self.resync_bytes = 0;
    }

    /// A server reply came while resynchronising: the held command-shaped lines were
    /// commands; they are read now, each at its own time. A partial line the client sent
    /// before the reply is no command's beginning (the server answers whole commands and
    /// chunks, and a chunk need not end with CRLF): it is dropped.
    /// `sasl_step`: the reply is a 334, which answers only an AUTH step: the last held line,
    /// unless it is the AUTH, was a SASL response (shaped like a command or not).
    pub(super) fn replay_resync_held(&mut self, sasl_step: bool) {
        self.client_lines.reset();
        let mut held = std::mem::take(&mut self.resync_held);
        let response = held
            .last()
            .filter(|h| {
                let verb = h.raw.split(|&b| b == b' ' || b == b'\r').next();
                sasl_step && !verb.is_some_and(|v| v.eq_ignore_ascii_case(b"AUTH"))
            })
            .is_some()
            .then(|| held.pop())
            .flatten();
        // A chunk still coming belongs to the last held BDAT: replayed, it is read on as its
        // chunk (`ClientMode::Bdat`).
        self.resync_chunk = 0;
        self.resync_bytes = 0;
        if let Some(at) = self.resync_dot.take() {
            // The "." first after the loss was the end of a message: the reply shows it.
            self.client_mode = ClientMode::Command;
            self.push_pending(Awaiting::EndOfData(None), at);
        }
        if held.is_empty() && response.is_none() {
            return;
        }
        self.client_mode = ClientMode::Command;
        for h in held {
            self.client_data(&h.raw, h.ts);
            if h.lost > 0 {
                self.client_gap(h.lost, h.ts);
            }
        }
        if let Some(h) = response {
            if self.hold.is_none() {
                self.client_mode = ClientMode::AuthResponse;
                self.sasl_lost = true;
            }
            self.client_data(&h.raw, h.ts);
        }
    }

    pub(super) fn client_gap(&mut self, len: u64, ts: Ts) {
        self.client_lost = true;
        if self.hold.is_some() {
            self.hold_push(Held::Gap(len, ts));
            return;
        }
        let mut rest = len;
        match &mut self.client_mode {
            ClientMode::Tls => {
                // The client's first bytes after the 220 are lost: whether they were TLS is
                // unknown, TLS is the usual (and what the next bytes are read as anyway).
                if std::mem::take(&mut self.starttls_probe) {
                    if let Some(at) = self.starttls_event.take() {
                        self.tls_started(at);
                    }
                }
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
                if n > 0 && *remaining == 0 {
                    // The chunk's end is lost: when the server had it all is unknown, so its
                    // reply is not timed.
                    if let Some(p) = self.pending.back_mut() {
                        p.sure = false;
                    }
                }
                self.end_of_chunk_if_done(ts);
                if rest == 0 {
                    return;
                }
            }
            ClientMode::Command
            | ClientMode::Resync
            | ClientMode::AuthResponse
            | ClientMode::MaybeSasl => {}
        }
        // Commands were lost, and perhaps a DATA: until a reply says otherwise the client may
        // be inside a message. The commands still waiting keep their place (their replies come
        // first); those sent from now on are paired on evidence only.
        self.client_lines.reset();
        self.client_mode = ClientMode::Resync;
        self.cmds_lost = true;
        self.resync_reply = false;
        self.clear_resync_held();
        self.resync_first_line = true;
        self.lenient = true;
    }

    /// One complete client line; returns false when the bytes after it are
    /// not command lines (mode switch or hold).
    fn client_line(&mut self, line: &Line<'_>, ts: Ts) -> bool {
        match self.client_mode {
            ClientMode::Resync => {
                // CRLF "." CRLF only, as inside DATA (a "." beside a bare LF ends nothing).
                let first = std::mem::take(&mut self.resync_first_line);
                if line.text == b"." && !line.bare_lf && first {
                    // The first bytes after a loss may end a line that began in it ("…again."):
                    // the end of a message only if no body line follows before a reply.
                    self.resync_dot = Some(ts);
                    return true;
                }
                if line.text == b"." && !line.bare_lf {
                    // The end of a DATA we joined in the middle: what it held were body lines.
                    self.clear_resync_held();
                    self.client_mode = ClientMode::Command;
                    self.push_pending(Awaiting::EndOfData(None), ts);
                    return true;
                }
                // A line shaped like a command is one only once a server reply showed that the
                // client is not inside a message (a body line can look like anything).
                let text = String::from_utf8_lossy(line.text);
                if !command::looks_like_command(&text) {
                    // A body line: a "." before it ended nothing.
                    self.resync_dot = None;
                    return true;
                }
                if !self.resync_reply {
                    if self.resync_held.len() >= super::MAX_RESYNC_HELD {
                        let old = self.resync_held.remove(0);
                        self.resync_bytes -= old.raw.len().min(self.resync_bytes);
                    }
                    let mut raw = line.text.to_vec();
                    raw.extend_from_slice(b"\r\n");
                    self.resync_held
                        .push(super::ResyncHeld { raw, ts, lost: 0 });
                    // A BDAT's chunk follows it: held with it, raw.
                    let c = command::split(&text);
                    if let Some((size, _)) =
                        (c.verb == "BDAT").then(|| command::bdat(c.arg)).flatten()
                    {
                        self.resync_chunk = size;
                        return size == 0;
                    }
                    return true;
                }
                self.client_mode = ClientMode::Command;
            }
            ClientMode::MaybeSasl => {
                let text = String::from_utf8_lossy(line.text);
                if !command::looks_like_command(&text) {
                    // Not fed to the SASL exchange: which step it is is unknown (a password
                    // must not become the user name).
                    let text = self.line_anomalies(line, ts);
                    let arg = crate::proto::auth::SaslExchange::response_arg(
                        &text,
                        self.privacy.show_secrets,
                    );
                    self.emit(Event::Command {
                        ts,
                        verb: RESPONSE_VERB.to_string(),
                        arg,
                    });
                    self.push_pending(Awaiting::Auth, ts);
                    if let Some(p) = self.pending.back_mut() {
                        p.sure = false;
                    }
                    return true;
                }
                // Shaped like a command, it may still be a response ("QUIT" as a user name):
                // held until a reply tells (a 334 that it was a response).
                self.client_mode = ClientMode::Resync;
                self.resync_reply = false;
                return self.client_line(line, ts);
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
        let wire = line.text.len() + if line.bare_lf { 1 } else { 2 };
        self.command(&text, wire, ts)
    }

    /// `wire`: the line's bytes with its terminator.
    fn command(&mut self, text: &str, wire: usize, ts: Ts) -> bool {
        let c = command::split(text);
        if !self.greeting_seen {
            self.anomaly_once("early-talker", ts);
        } else if !self.pending.is_empty() && self.pending.iter().all(|p| p.sure) {
            // Waiting commands whose replies may be lost say nothing about pipelining.
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
        // A line that is no command may be a password or a body line read out of place:
        // only its size is shown by default.
        let (verb, shown) = if c.known || self.privacy.show_secrets {
            (c.verb.clone(), shown)
        } else {
            (format!("<unrecognised line, {wire} bytes>"), String::new())
        };
        self.emit(Event::Command {
            ts,
            verb,
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
                // Only a successful greeting resets the envelope (RFC 5321 §4.1.4) and
                // names the client: the reply decides, and only for the transaction open
                // now. Until one succeeds, the first name sent is all there is (not after a
                // client loss: the lost bytes may have held the accepted one).
                if self.helo.is_none() && !self.client_lost {
                    self.helo = Some(h.clone());
                }
                self.helo_sent = Some((ts, self.open_tx, h));
                if c.verb == "HELO" {
                    Awaiting::Other
                } else {
                    Awaiting::Ehlo
                }
            }
            "MAIL" => match command::path_arg(c.arg, "FROM:") {
                Some(p) => {
                    let before = self.open_tx;
                    let tx = Transaction {
                        mail_from: Some(self.capped(p.addr, ts)),
                        mail_params: self.capped_params(p.params, ts),
                        ..Transaction::default()
                    };
                    self.open_tx = self.new_tx(tx, ts);
                    // A MAIL inside a transaction is refused (503) by a conforming server:
                    // the reply decides whether the earlier one is still open.
                    self.mail_displaced = before.zip(self.open_tx);
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
                    self.resync_bad_bdat = self.resync_held.is_empty();
                    go_on = false;
                    // Its refusal (501, 521, …) is the transaction's outcome: as a failing
                    // BDAT chunk's is.
                    Awaiting::Bdat(self.current_tx(ts), false)
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
        if c.verb == "QUIT" {
            if let Some(p) = self.pending.back_mut() {
                p.quit = true;
            }
        }
        go_on
    }

    /// The 220 to STARTTLS was followed by something other than a TLS record (a client
    /// that ignores the reply, or a capture decrypted after the fact): it is SMTP again,
    /// and no TLS is claimed.
    fn clear_after_starttls(&mut self, ts: Ts) {
        self.tls = None;
        self.tls_mode = None;
        self.starttls_clear = true;
        self.starttls_event = None;
        self.client_mode = ClientMode::Command;
        self.client_lines.reset();
        self.server_lines.reset();
        self.anomaly("clear-after-starttls", ts);
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

    /// A message whose "." fell in a client gap (a reply came): the message ends there, its
    /// end-of-data reply is waited for on evidence only, and the client is read as after a
    /// loss (the gap may have held commands after the ".").
    pub(super) fn data_lost_end(&mut self, ts: Ts) {
        let tx = self.finish_body(ts);
        self.open_tx = None;
        self.client_mode = ClientMode::Resync;
        self.client_lines.reset();
        self.cmds_lost = true;
        self.resync_reply = false;
        self.clear_resync_held();
        self.resync_first_line = true;
        self.lenient = true;
        self.push_pending(Awaiting::EndOfData(tx), ts);
    }

    /// The BDAT whose chunk is being read was answered before the chunk was whole: the rest
    /// is lost (counted in `size`, the message incomplete), and the reply is not timed.
    pub(super) fn bdat_lost_rest(&mut self, ts: Ts) {
        let ClientMode::Bdat { remaining, .. } = &mut self.client_mode else {
            return;
        };
        let n = std::mem::take(remaining);
        if let Some((_, scanner)) = self.body.as_mut() {
            scanner.gap(n);
        }
        self.client_lost = true;
        for p in &mut self.pending {
            p.sure = false;
        }
        self.end_of_chunk_if_done(ts);
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
