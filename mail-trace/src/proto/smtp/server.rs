//! The server side: reply lines joined into replies, each matched to the
//! oldest command still waiting, and what each reply means for the session.

use super::message::BodyScanner;
use super::reply::{self, Reply, ReplyBuilder};
use super::resync::{self, Answers};
use super::{Awaiting, ClientMode, Greeting, Pending, Smtp};
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
        // Before its first reply: the greeting is what was lost.
        self.greeting_seen = true;
        // After a BDAT without a valid size and nothing lost client-side, what the server
        // said answered it or earlier commands (never a 354): the client is not in a message.
        self.resync_reply = matches!(self.client_mode, ClientMode::Resync)
            && std::mem::take(&mut self.resync_bad_bdat)
            && self.resync_held.is_empty();
        // The replies of the commands waiting may be lost: they are paired on evidence only.
        for p in &mut self.pending {
            p.sure = false;
        }
        // The deciding reply may be lost. TLS is read the likely way at once (its bytes are no
        // lines); an AUTH's client lines are SASL responses unless shaped like commands; DATA's
        // held bytes wait for a reply that tells whether the message was sent.
        if let Some(h) = &self.hold {
            let until = h.until;
            match until {
                Awaiting::StartTls | Awaiting::Auth => {
                    self.decide(until, None);
                    if self.tls.is_some() {
                        self.tls_started(ts);
                    }
                    self.release_hold();
                }
                _ => {}
            }
        }
    }

    /// The waiting command `r` answers, and whether it is timed (paired without doubt).
    /// After a loss it takes evidence: see [`resync`].
    fn pair(&mut self, r: &Reply, ts: Ts) -> Option<(Pending, bool)> {
        loop {
            // A reply can't answer a command sent after it began.
            let front = *self.pending.front().filter(|p| p.ts <= ts)?;
            let kind = resync::answers(r);
            if front.sure {
                if !resync::contradicts(front.what, kind) {
                    return self.pending.pop_front().map(|p| (p, true));
                }
                // A reply only another command can answer (a 354 to a RCPT): the queue is out
                // of step although nothing was seen lost (a reply the capture merged or the
                // server never sent). From here on as after a loss: on evidence only.
                for p in &mut self.pending {
                    p.sure = false;
                }
                self.lenient = true;
                continue;
            }
            let n = self.pending.iter().take_while(|p| p.ts <= ts).count();
            let fits = |p: &Pending| resync::can_answer(p.what, p.quit, kind, r.code);
            let pick = match kind {
                // Only the one command waiting can be sure to get a reply that fits anything.
                // Not a DATA after lost commands: a refusal may be a lost command's, and
                // taken by the DATA it would have the message read as commands (its 354, a
                // kind only DATA takes, is waited for).
                Answers::Any => (n == 1
                    && fits(&front)
                    && !(self.cmds_lost && matches!(front.what, Awaiting::Data(_))))
                .then_some(0),
                // SASL goes step by step: the latest step sent before the reply.
                Answers::AuthStep | Answers::AuthOutcome => {
                    (0..n).rev().find(|&k| fits(&self.pending[k]))
                }
                _ => (0..n).find(|&k| fits(&self.pending[k])),
            };
            if let Some(k) = pick {
                for _ in 0..k {
                    self.pending.pop_front();
                    self.anomaly("unpaired-command", ts);
                }
                let p = self.pending.pop_front()?;
                if kind != Answers::Any {
                    // Realigned: the commands after it get the replies after this one.
                    for q in &mut self.pending {
                        q.sure = true;
                    }
                    self.cmds_lost = false;
                }
                return Some((p, false));
            }
            // No command up to the one the held client bytes wait for can take this reply:
            // that command's deciding reply was lost. Read the held bytes the likely way. (Not
            // when commands were lost: the reply may be theirs.)
            if self.cmds_lost {
                return None;
            }
            let until = self.hold.as_ref().map(|h| h.until)?;
            let u = (0..n).find(|&k| self.pending[k].what == until)?;
            if (0..=u).any(|k| fits(&self.pending[k])) {
                return None;
            }
            for _ in 0..=u {
                self.pending.pop_front();
                self.anomaly("unpaired-command", ts);
            }
            self.decide(until, None);
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
        if matches!(self.client_mode, ClientMode::Data)
            && r.code != 421
            && self.body.as_ref().is_some_and(|(_, b)| b.incomplete)
        {
            // A server does not speak inside a message: the client gap swallowed its end
            // (and maybe commands after it).
            self.data_lost_end(ts);
        }
        if let ClientMode::Bdat { remaining, .. } = self.client_mode {
            let chunk_answered = remaining > 0
                && self.pending.len() == 1
                && self.pending.iter().all(|p| {
                    matches!(p.what, Awaiting::Bdat(..))
                        && p.ts <= ts
                        && resync::can_answer(p.what, p.quit, resync::answers(&r), r.code)
                });
            if chunk_answered {
                // A server answers a BDAT once its whole chunk is in: the rest of the chunk
                // was lost (its gap is seen with the client's next bytes).
                self.bdat_lost_rest(ts);
            }
        }
        if matches!(self.client_mode, ClientMode::Resync) && r.code != 421 {
            self.replay_resync_held(r.code == 334);
        }
        if matches!(self.client_mode, ClientMode::Resync) {
            if r.code == 354 {
                // A DATA we did not see was accepted: the client sends a message now.
                self.body = Some((None, BodyScanner::new(true)));
                if let Some((_, s)) = self.body.as_mut() {
                    s.gap(0);
                }
                self.client_mode = ClientMode::Data;
            } else if r.code != 421 {
                self.resync_reply = true;
            }
        }
        let Some((p, timed)) = self.pair(&r, ts) else {
            self.emit_reply(&r, ts, None);
            // A 334 answers only an AUTH step, whose command was lost: the client's next line
            // is a SASL response (which step is unknown).
            if r.code == 334
                && self.hold.is_none()
                && matches!(
                    self.client_mode,
                    ClientMode::Command | ClientMode::Resync | ClientMode::MaybeSasl
                )
            {
                self.client_mode = ClientMode::AuthResponse;
                self.sasl_lost = true;
                self.clear_resync_held();
            }
            // 421 may come unasked (the server is closing the session).
            if r.code != 421 {
                let id = if self.lenient {
                    "unpaired-reply"
                } else {
                    "unexpected-reply"
                };
                self.anomaly(id, ts);
            }
            return true;
        };
        // Replies of lost commands may still come until the queue is realigned.
        if timed && !self.cmds_lost {
            self.lenient = false;
        }
        let mut r = r;
        if matches!(p.what, Awaiting::Auth) {
            self.redact_auth_echo(&mut r);
        }
        let latency = timed.then(|| ts.saturating_sub(p.ts));
        self.emit_reply(&r, ts, latency);
        let code = r.code;
        match p.what {
            // HELO waits as `Other`: it is known by its command's time.
            Awaiting::Other if self.helo_sent.as_ref().is_some_and(|h| h.0 == p.ts) => {
                self.helo_reply(code);
            }
            Awaiting::Ehlo if code / 100 == 2 => {
                self.helo_reply(code);
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
                if let Some((before, new)) = self.mail_displaced.take().filter(|d| Some(d.1) == tx)
                {
                    let before_ok = self
                        .transactions
                        .get(before)
                        .and_then(|t| t.mail_reply.as_ref())
                        .is_some_and(|m| m.code / 100 == 2);
                    if code / 100 != 2 && before_ok && self.open_tx == Some(new) {
                        // Refused inside a transaction: the earlier one goes on, with
                        // what was pipelined after the refused MAIL.
                        self.open_tx = Some(before);
                        self.retarget(new, before);
                    }
                }
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
                    // Said once the client's first byte is a TLS record: it may go on in
                    // clear instead. Dated from this reply.
                    self.starttls_event = Some(ts);
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

    /// The reply to EHLO/HELO: only a successful one resets the envelope (RFC 5321
    /// §4.1.4), and only the transaction that was open when it was sent (a MAIL sent
    /// after it began a new one).
    fn helo_reply(&mut self, code: u16) {
        let Some((_, open, name)) = self.helo_sent.take() else {
            return;
        };
        if code / 100 != 2 {
            return;
        }
        self.helo = Some(name);
        if self.open_tx == open {
            self.open_tx = None;
        }
    }

    /// Moves what was recorded for transaction `from` since its MAIL (recipients, BDAT
    /// chunks, the waiting commands, the message being read) to `to`.
    fn retarget(&mut self, from: usize, to: usize) {
        let (Some(f), Some(t)) = (self.transactions.get(from), self.transactions.get(to)) else {
            return;
        };
        let base = t.rcpt.len();
        if base + f.rcpt.len() > super::MAX_RCPT {
            return;
        }
        let moved = std::mem::take(&mut self.transactions[from].rcpt);
        let chunks = std::mem::take(&mut self.transactions[from].bdat_chunks);
        let data_code = self.transactions[from].data_code.take();
        let t = &mut self.transactions[to];
        t.rcpt.extend(moved);
        t.bdat_chunks += chunks;
        t.data_code = data_code.or(t.data_code);
        let re = |t: Option<usize>| if t == Some(from) { Some(to) } else { t };
        let map = |w: Awaiting| match w {
            Awaiting::Rcpt(t, i) if t == Some(from) => {
                Awaiting::Rcpt(Some(to), i.map(|i| i + base))
            }
            Awaiting::Data(t) => Awaiting::Data(re(t)),
            Awaiting::EndOfData(t) => Awaiting::EndOfData(re(t)),
            Awaiting::Bdat(t, last) => Awaiting::Bdat(re(t), last),
            w => w,
        };
        for p in &mut self.pending {
            p.what = map(p.what);
        }
        if let Some(h) = &mut self.hold {
            h.until = map(h.until);
        }
        if let Some((t, _)) = &mut self.body {
            *t = re(*t);
        }
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
                self.starttls_probe = true;
                self.client_lines.reset();
                self.client_mode = ClientMode::Tls;
            }
            Awaiting::Auth if code == Some(334) => {
                self.client_mode = ClientMode::AuthResponse;
            }
            Awaiting::Auth if code.is_none() => {
                self.client_mode = ClientMode::MaybeSasl;
                self.sasl_lost = true;
            }
            Awaiting::Auth if matches!(self.client_mode, ClientMode::MaybeSasl) => {
                self.client_mode = ClientMode::Command;
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
