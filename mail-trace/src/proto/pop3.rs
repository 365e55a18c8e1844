//! POP3 (RFC 1939, 2449 CAPA/PIPELINING/response codes, 2595 STLS, 5034 SASL)
//! as a sans-I/O state machine.
//!
//! Replies are matched to commands in order (RFC 2449 allows pipelining).
//! Whether a `+OK` opens a multi-line response depends on the command: CAPA,
//! RETR, TOP, LIST and UIDL without argument, AUTH without mechanism (the
//! mechanism list most servers send) and LANG without argument. Multi-line
//! bodies are dot-unstuffed and counted, never shown.
//!
//! | anomaly id | meaning |
//! |---|---|
//! | `bare-lf` | a line ended in LF without CR |
//! | `line-too-long` | a line longer than [`super::line::MAX_LINE`] |
//! | `unknown-command` | a client verb not in POP3 or its extensions |
//! | `bad-reply` | a server line that is not `+OK`, `-ERR` or a SASL `+` |
//! | `reply-without-command` | a status reply with no command waiting for it |
//! | `unexpected-continuation` | a `+` challenge outside AUTH |
//! | `too-many-pending` | more pipelined commands than [`MAX_PENDING`] |
//! | `data-after-stls` | client bytes between STLS and its reply (injection attempt) |
//! | `gap-resync` | bytes were lost; lines skipped until the stream made sense again |
//! | `unpaired-reply` | after a loss, a server line that cannot be attributed to a command (not shown) |
//! | `unpaired-command` | a command whose reply may have been lost (it is answered by nothing) |
//!
//! After a loss the pairing is rebuilt from evidence, never by counting: POP3 replies carry no
//! tag, so once a server gap (or a client gap with nothing left to answer) makes the order
//! unknown, the commands waiting are given up (`unpaired-command`) and every server line is
//! *unattributed*: not shown (it may be a line of a RETR/TOP body whose `+OK` was lost), a
//! `.` line ending a body that may be in progress. The next command the client sends proves the
//! server finished what it was sending (a POP3 client waits for a multi-line response before its
//! next command), and the next status line answers it. A body a gap fell into stays a body
//! (its lines are never read as replies) until its `.` or the client's next command.

use std::collections::VecDeque;

use super::auth::{EchoGuard, SaslExchange, REDACTED, RESPONSE_VERB};
use super::stream::{
    latency, lossy, verb_of, CommandStats, Events, Framed, Framer, TlsFacts, TlsTrack,
};
use super::{Dissector, Event, Privacy, SessionStart};
use crate::flow::Dir;
use crate::time::Ts;
use serde_json::{json, Map, Value};

/// Commands sent but not yet answered. PIPELINING clients send a window of a
/// few; past this the oldest are forgotten.
pub const MAX_PENDING: usize = 64;
/// CAPA lines kept for the record.
pub const MAX_CAPA: usize = 32;
const MAX_FIELD: usize = 256;

const KNOWN: &[&str] = &[
    "USER", "PASS", "APOP", "AUTH", "STLS", "CAPA", "STAT", "LIST", "UIDL", "RETR", "TOP", "DELE",
    "RSET", "NOOP", "QUIT", "LAST", "UTF8", "LANG", "XTND",
];

#[derive(Debug)]
struct Pending {
    verb: String,
    /// A `+OK` to it is followed by a dot-terminated body.
    multi: bool,
    /// None when bytes of it may have been lost (no latency is computed from it).
    end_ts: Option<Ts>,
}

#[derive(Debug)]
struct Body {
    verb: String,
    bytes: u64,
    /// A gap fell into it: its size is unknown, it is not counted.
    lossy: bool,
}

#[derive(Debug)]
struct Auth {
    mechanism: String,
    user: Option<String>,
    result: String,
}

/// POP3 dissector.
pub struct Pop3 {
    privacy: Privacy,
    client: Framer,
    server: Framer,
    ev: Events,
    /// Skip lines until one parses (after a gap or a mid-stream pickup).
    c_resync: bool,
    s_resync: bool,
    /// Server lines cannot be attributed (see the module docs): not shown until the client
    /// sends its next command.
    unattributed: bool,
    /// Client bytes were lost: the commands waiting now are the last ones the pairing is sure
    /// of; once they are answered the server's lines are unattributed.
    c_lost: bool,
    greeting_due: bool,
    pending: VecDeque<Pending>,
    body: Option<Body>,
    sasl: Option<SaslExchange>,
    /// The AUTH exchange's final reply may have been lost (a server gap while it was open).
    sasl_outcome_lost: bool,
    /// The PASS/APOP secret until its reply (a server may echo it).
    echo: EchoGuard,
    /// STLS sent, its reply not seen yet.
    stls_wait: bool,
    /// The USER of a USER/PASS login in progress.
    login_user: Option<String>,
    greeting: Option<(String, String, bool)>,
    user: Option<String>,
    auth: Option<Auth>,
    tls: TlsTrack,
    /// Implicit TLS: `TlsStarted` goes out with the first byte.
    tls_announce: bool,
    stats: CommandStats,
    retrieved: (u64, u64),
    top: (u64, u64),
    capa: Vec<String>,
    tls_facts: TlsFacts,
}

impl Pop3 {
    pub fn new(privacy: Privacy, start: SessionStart) -> Self {
        let mut tls = TlsTrack::default();
        if start.implicit_tls {
            tls.start("implicit");
        }
        Self {
            privacy,
            client: Framer::default(),
            server: Framer::default(),
            ev: Events::default(),
            c_resync: start.partial,
            s_resync: start.partial,
            unattributed: start.partial,
            c_lost: false,
            greeting_due: !start.partial,
            pending: VecDeque::new(),
            body: None,
            sasl: None,
            sasl_outcome_lost: false,
            echo: EchoGuard::default(),
            stls_wait: false,
            login_user: None,
            greeting: None,
            user: None,
            auth: None,
            tls_announce: start.implicit_tls,
            tls,
            stats: CommandStats::default(),
            retrieved: (0, 0),
            top: (0, 0),
            capa: Vec::new(),
            tls_facts: TlsFacts {
                start,
                ..TlsFacts::default()
            },
        }
    }

    /// Whether the server offered STLS; None when no CAPA answer was seen.
    fn offered_stls(&self) -> Option<bool> {
        (!self.capa.is_empty()).then(|| self.capa.iter().any(|c| c == "STLS"))
    }

    /// A credential was sent: `auth-before-tls`/`auth-cleartext`, emitted after its command.
    fn credential(&mut self, what: String) {
        let offered = self.offered_stls();
        self.tls_facts.credential(what, &self.tls, offered, "STLS");
    }

    fn secret(&self, s: &str) -> String {
        if self.privacy.show_secrets {
            s.to_string()
        } else {
            REDACTED.to_string()
        }
    }

    fn line_anomalies(&mut self, l: &Framed, ts: Ts) {
        if l.bare_lf {
            self.ev.anomaly(ts, "bare-lf");
        }
        if l.overlong {
            self.ev.anomaly(ts, "line-too-long");
        }
    }

    fn client_line(&mut self, l: Framed, ts: Ts) {
        if self.stls_wait {
            self.ev.anomaly(ts, "data-after-stls");
            return;
        }
        if self.sasl.is_some() && self.sasl_outcome_lost && is_command_line(&l.text) {
            // The exchange's final reply was lost and the client went on: base64 has no space,
            // so a known verb with an argument is a command.
            self.sasl = None;
        }
        if let Some(sasl) = &mut self.sasl {
            // Inside AUTH every client line answers a challenge.
            let line = lossy(&l.text);
            sasl.client_response(&line);
            let arg = SaslExchange::response_arg(&line, self.privacy.show_secrets);
            self.ev.push(Event::Command {
                ts,
                verb: RESPONSE_VERB.into(),
                arg,
            });
            if let Some(p) = self.pending.back_mut() {
                p.end_ts = p.end_ts.map(|_| ts);
            }
            return;
        }
        let text = l.text.as_slice();
        let (word, rest) = match text.iter().position(|&b| b == b' ') {
            Some(i) => (&text[..i], &text[i + 1..]),
            None => (text, &b""[..]),
        };
        let verb = verb_of(word);
        let known = KNOWN.contains(&verb.as_str());
        if self.c_resync {
            if !known {
                return;
            }
            self.c_resync = false;
        }
        self.line_anomalies(&l, ts);
        if self.unattributed {
            // The client's next command: the server finished what it was sending.
            self.unattributed = false;
            self.body = None;
        }
        if !known {
            self.ev.anomaly(ts, "unknown-command");
            if !self.privacy.show_secrets {
                // It may be anything the client typed (a password at the wrong prompt).
                self.stats.sent("OTHER");
                self.push_pending("OTHER".into(), false, ts);
                self.ev.push(Event::Command {
                    ts,
                    verb: format!("<unrecognised line, {} bytes>", l.raw_len),
                    arg: String::new(),
                });
                return;
            }
        }
        let rest_s = lossy(rest);
        let mut args = rest_s.split_ascii_whitespace();
        let first = args.next();
        let second = args.next();
        let mut multi = false;
        let arg = match verb.as_str() {
            "USER" => {
                let u: String = rest_s.trim().chars().take(MAX_FIELD).collect();
                self.login_user = Some(u.clone());
                self.user = Some(u.clone());
                u
            }
            "PASS" => {
                self.credential("USER/PASS".into());
                self.echo.remember(rest_s.as_bytes());
                self.secret(&rest_s)
            }
            "APOP" => {
                let u: String = first.unwrap_or("").chars().take(MAX_FIELD).collect();
                self.credential("APOP".into());
                self.echo.remember(second.unwrap_or("").as_bytes());
                self.login_user = Some(u.clone());
                self.user = Some(u.clone());
                format!("{u} {}", self.secret(second.unwrap_or("")))
            }
            "AUTH" => match first {
                None => {
                    multi = true;
                    String::new()
                }
                Some(m) => {
                    let mut ex = SaslExchange::new(m);
                    if let Some(ir) = second {
                        ex.client_response(ir);
                    }
                    let arg =
                        SaslExchange::command_arg(&ex.mechanism, second, self.privacy.show_secrets);
                    self.credential(format!("AUTH {}", ex.mechanism));
                    self.sasl = Some(ex);
                    arg
                }
            },
            "STLS" => {
                self.stls_wait = true;
                rest_s
            }
            "CAPA" | "RETR" | "TOP" => {
                multi = true;
                rest_s
            }
            "LIST" | "UIDL" | "LANG" => {
                multi = first.is_none();
                rest_s
            }
            _ => rest_s,
        };
        self.stats.sent(&verb);
        self.push_pending(verb.clone(), multi, ts);
        self.ev.push(Event::Command { ts, verb, arg });
        if let Some(f) = self.tls_facts.due.take() {
            self.ev.push(Event::Finding { ts, finding: f });
        }
    }

    fn push_pending(&mut self, verb: String, multi: bool, ts: Ts) {
        if self.pending.is_empty() {
            // Nothing was waiting: what answered the lost commands came before this one
            // (a client sends its next command once the last reply is in).
            self.c_lost = false;
        }
        if self.pending.len() >= MAX_PENDING {
            self.pending.pop_front();
            self.ev.anomaly(ts, "too-many-pending");
        }
        self.pending.push_back(Pending {
            verb,
            multi,
            end_ts: Some(ts),
        });
    }

    fn server_line(&mut self, l: Framed, ts: Ts) {
        if self.c_lost && self.pending.is_empty() && self.body.is_none() {
            // What answers the lost commands comes now, framing unknown.
            self.c_lost = false;
            self.unattributed = true;
        }
        if self.unattributed && self.body.is_none() {
            if l.text == b"." {
                return;
            }
            if starts_word(&l.text, b"+OK") || starts_word(&l.text, b"-ERR") {
                self.ev.anomaly(ts, "unpaired-reply");
            }
            return;
        }
        if let Some(body) = &mut self.body {
            if l.text == b"." {
                let body = std::mem::take(&mut self.body);
                if let Some(b) = body.filter(|b| !b.lossy) {
                    match b.verb.as_str() {
                        "RETR" => {
                            self.retrieved.0 += 1;
                            self.retrieved.1 += b.bytes;
                        }
                        "TOP" => {
                            self.top.0 += 1;
                            self.top.1 += b.bytes;
                        }
                        _ => {}
                    }
                }
                return;
            }
            // Dot-stuffing: a leading dot was doubled on the wire.
            let stuffed = u64::from(l.text.starts_with(b".."));
            body.bytes += l.raw_len - stuffed;
            if body.verb == "CAPA" && self.capa.len() < MAX_CAPA {
                let cap: String = lossy(&l.text).chars().take(MAX_FIELD).collect();
                self.capa.push(cap);
            }
            return;
        }
        let text = l.text.as_slice();
        let code = if starts_word(text, b"+OK") {
            "+OK"
        } else if starts_word(text, b"-ERR") {
            "-ERR"
        } else if text == b"+" || text.starts_with(b"+ ") {
            "+"
        } else {
            if !self.s_resync {
                self.line_anomalies(&l, ts);
                self.ev.anomaly(ts, "bad-reply");
            }
            return;
        };
        self.line_anomalies(&l, ts);
        let rest = text.get(code.len() + 1..).unwrap_or(b"");
        if code == "+" {
            if self.sasl.is_none() {
                self.ev.anomaly(ts, "unexpected-continuation");
            }
            let shown = self.secret(&lossy(rest));
            let lat = latency(self.pending.back().and_then(|p| p.end_ts), l.start_ts);
            self.ev.push(Event::Reply {
                ts: l.start_ts,
                code: code.into(),
                enhanced: None,
                text: shown,
                latency_ns: lat,
            });
            return;
        }
        let (enhanced, text_s) = split_code(rest);
        if self.greeting_due {
            self.greeting_due = false;
            let apop = has_apop_stamp(&text_s);
            self.greeting = Some((code.into(), text_s.clone(), apop));
            self.ev.push(Event::Reply {
                ts: l.start_ts,
                code: code.into(),
                enhanced,
                text: text_s,
                latency_ns: None,
            });
            return;
        }
        let cmd = self.pending.pop_front();
        if cmd.is_none() && !self.s_resync {
            self.ev.anomaly(ts, "reply-without-command");
        }
        if cmd.is_some() {
            self.s_resync = false;
        }
        let ok = code == "+OK";
        // A reply echoing the password or the SASL response shows it redacted.
        let text_s = if self.privacy.show_secrets {
            text_s
        } else {
            let sasl = self.sasl.as_ref().and_then(|x| x.redact_echo(&text_s));
            let sasl = sasl.unwrap_or(text_s);
            self.echo.redact(&sasl).unwrap_or(sasl)
        };
        if cmd
            .as_ref()
            .is_some_and(|c| matches!(c.verb.as_str(), "PASS" | "APOP"))
        {
            self.echo.clear();
        }
        self.ev.push(Event::Reply {
            ts: l.start_ts,
            code: code.into(),
            enhanced,
            text: text_s,
            latency_ns: latency(cmd.as_ref().and_then(|c| c.end_ts), l.start_ts),
        });
        if let Some(c) = cmd {
            if !ok {
                self.stats.failed(&c.verb);
            }
            self.completed(&c, code, ok, ts);
            if ok && c.multi {
                self.body = Some(Body {
                    verb: c.verb,
                    bytes: 0,
                    lossy: false,
                });
            }
        }
    }

    /// What a command's final reply changes in the session.
    fn completed(&mut self, c: &Pending, code: &str, ok: bool, ts: Ts) {
        match c.verb.as_str() {
            "PASS" | "APOP" => {
                let mechanism = if c.verb == "PASS" { "USER" } else { "APOP" };
                self.auth = Some(Auth {
                    mechanism: mechanism.into(),
                    user: self.login_user.clone(),
                    result: code.into(),
                });
            }
            "AUTH" => {
                self.sasl_outcome_lost = false;
                if let Some(ex) = self.sasl.take() {
                    if ex.user.is_some() {
                        self.user = ex.user.clone();
                    }
                    self.auth = Some(Auth {
                        mechanism: ex.mechanism,
                        user: ex.user,
                        result: code.into(),
                    });
                }
            }
            "STLS" => {
                self.stls_wait = false;
                if ok {
                    self.tls.start("starttls");
                    self.ev.push(Event::TlsStarted { ts });
                } else {
                    self.tls_facts.refused = Some(code.to_string());
                }
            }
            _ => {}
        }
    }

    fn feed(&mut self, dir: Dir, mut data: &[u8], ts: Ts) {
        if self.tls_announce && !data.is_empty() {
            self.tls_announce = false;
            self.ev.push(Event::TlsStarted { ts });
        }
        while !data.is_empty() {
            if self.tls.hides_data() {
                self.tls.feed(dir, data);
                return;
            }
            let framer = match dir {
                Dir::ToServer => &mut self.client,
                Dir::ToClient => &mut self.server,
            };
            let (used, line) = framer.next(data, ts);
            data = &data[used..];
            if let Some(l) = line {
                match dir {
                    Dir::ToServer => self.client_line(l, ts),
                    Dir::ToClient => self.server_line(l, ts),
                }
            }
        }
    }
}

/// A POP3 command with an argument: a known verb, a space, more (no SASL response has a space).
fn is_command_line(text: &[u8]) -> bool {
    let Some(i) = text.iter().position(|&b| b == b' ') else {
        return false;
    };
    KNOWN.contains(&verb_of(&text[..i]).as_str()) && i + 1 < text.len()
}

fn starts_word(text: &[u8], word: &[u8]) -> bool {
    text.len() >= word.len()
        && text[..word.len()].eq_ignore_ascii_case(word)
        && matches!(text.get(word.len()), None | Some(b' '))
}

/// RFC 2449 §8: an extended response code in brackets right after the status.
fn split_code(rest: &[u8]) -> (Option<String>, String) {
    let text = lossy(rest);
    if let Some(inner) = text.strip_prefix('[') {
        if let Some(end) = inner.find(']') {
            let code: String = inner[..end].chars().take(MAX_FIELD).collect();
            return (Some(code), inner[end + 1..].trim_start().to_string());
        }
    }
    (None, text)
}

/// RFC 1939 §7: an APOP-capable server puts a `<…@…>` timestamp in its greeting.
fn has_apop_stamp(text: &str) -> bool {
    text.find('<')
        .and_then(|a| text[a..].find('>').map(|b| &text[a..a + b]))
        .is_some_and(|stamp| stamp.contains('@'))
}

impl Dissector for Pop3 {
    fn resume_plaintext(&mut self, _ts: Ts) -> bool {
        self.tls.resume_plaintext()
    }

    fn data(&mut self, dir: Dir, data: &[u8], ts: Ts) {
        self.feed(dir, data, ts);
    }

    fn skipped(&mut self, dir: Dir, _len: u64) {
        self.tls.skipped(dir);
    }

    fn gap(&mut self, dir: Dir, _len: u64, ts: Ts) {
        if self.tls.hides_data() {
            self.tls.gap(dir);
            return;
        }
        self.ev.anomaly(ts, "gap-resync");
        match dir {
            Dir::ToServer => {
                self.client.reset();
                self.c_resync = true;
                self.c_lost = true;
                // The lost bytes may be the rest of the AUTH exchange (a SASL response): its
                // reply cannot be timed from the last response seen.
                if self.sasl.is_some() {
                    if let Some(p) = self.pending.back_mut() {
                        p.end_ts = None;
                    }
                }
            }
            Dir::ToClient => {
                // The reply (or the body's end) may be in the hole: nothing waiting can be
                // matched with confidence any more. A body in progress stays one (its lines
                // are never replies) until its end or the client's next command.
                self.server.reset();
                self.s_resync = true;
                for _ in self.pending.drain(..) {
                    self.ev.anomaly(ts, "unpaired-command");
                }
                if self.sasl.is_some() {
                    self.sasl_outcome_lost = true;
                }
                if let Some(b) = &mut self.body {
                    b.lossy = true;
                }
                self.unattributed = true;
                self.greeting_due = false;
            }
        }
    }

    fn poll_event(&mut self) -> Option<Event> {
        self.ev.pop()
    }

    fn findings(&self) -> Vec<crate::findings::Finding> {
        self.tls_facts
            .findings(&self.tls, self.offered_stls(), "STLS")
    }

    fn tls_offered(&self) -> bool {
        self.offered_stls() == Some(true)
    }

    fn record(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("user".into(), self.user.clone().into());
        self.tls.record(&mut m);
        m.insert(
            "auth".into(),
            self.auth.as_ref().map_or(
                Value::Null,
                |a| json!({"mechanism": a.mechanism, "user": a.user, "result": a.result}),
            ),
        );
        m.insert("commands".into(), self.stats.to_json());
        m.insert(
            "greeting".into(),
            self.greeting.as_ref().map_or(
                Value::Null,
                |(c, t, apop)| json!({"code": c, "text": t, "apop": apop}),
            ),
        );
        m.insert("capa".into(), self.capa.clone().into());
        m.insert("findings".into(), json!(self.findings()));
        m.insert(
            "retrieved".into(),
            json!({"messages": self.retrieved.0, "bytes": self.retrieved.1}),
        );
        m.insert(
            "top".into(),
            json!({"messages": self.top.0, "bytes": self.top.1}),
        );
        m
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::findings::{Finding, Severity};
    use Dir::{ToClient as S, ToServer as C};

    use crate::proto::testutil::{cmd, feed, reply, MS};

    fn run_with(
        privacy: Privacy,
        start: SessionStart,
        steps: &[(Dir, &[u8])],
        chunk: usize,
    ) -> (Vec<Event>, Map<String, Value>) {
        feed(Pop3::new(privacy, start), steps, chunk)
    }

    fn run(steps: &[(Dir, &[u8])]) -> (Vec<Event>, Map<String, Value>) {
        run_with(Privacy::default(), SessionStart::default(), steps, 0)
    }

    fn found(ts: u64, id: &'static str, reason: &str) -> Event {
        Event::Finding {
            ts: ts * MS,
            finding: Finding::new(id, Severity::Warn, reason),
        }
    }

    const SESSION: &[(Dir, &[u8])] = &[
        (S, b"+OK POP3 ready <1896.697170952@dbc.mtview.ca.us>\r\n"),
        (C, b"CAPA\r\n"),
        (S, b"+OK Capability list follows\r\nTOP\r\nUSER\r\nPIPELINING\r\n.\r\n"),
        (C, b"USER alice\r\n"),
        (S, b"+OK\r\n"),
        (C, b"PASS hunter2\r\n"),
        (S, b"+OK Logged in.\r\n"),
        (C, b"STAT\r\nLIST\r\nUIDL 1\r\n"),
        (S, b"+OK 2 320\r\n+OK 2 messages\r\n1 120\r\n2 200\r\n.\r\n+OK 1 whqtswO00WBw418f9t5JxYwZ\r\n"),
        (C, b"RETR 1\r\n"),
        (S, b"+OK 14 octets\r\nSubject: x\r\n\r\n..dot\r\n.\r\n"),
        (C, b"TOP 2 0\r\n"),
        (S, b"+OK\r\nA: b\r\n.\r\n"),
        (C, b"DELE 1\r\nDELE 9\r\n"),
        (S, b"+OK deleted\r\n-ERR [SYS/PERM] no such message\r\n"),
        (C, b"QUIT\r\n"),
        (S, b"+OK bye\r\n"),
    ];

    #[test]
    fn full_session_events() {
        let (ev, _) = run(SESSION);
        assert_eq!(
            ev,
            vec![
                reply(
                    1,
                    "+OK",
                    None,
                    "POP3 ready <1896.697170952@dbc.mtview.ca.us>",
                    None
                ),
                cmd(2, "CAPA", ""),
                reply(3, "+OK", None, "Capability list follows", Some(1)),
                cmd(4, "USER", "alice"),
                reply(5, "+OK", None, "", Some(1)),
                cmd(6, "PASS", "<redacted>"),
                found(
                    6,
                    "auth-cleartext",
                    "USER/PASS sent in clear; the server offered no STLS"
                ),
                reply(7, "+OK", None, "Logged in.", Some(1)),
                cmd(8, "STAT", ""),
                cmd(8, "LIST", ""),
                cmd(8, "UIDL", "1"),
                reply(9, "+OK", None, "2 320", Some(1)),
                reply(9, "+OK", None, "2 messages", Some(1)),
                reply(9, "+OK", None, "1 whqtswO00WBw418f9t5JxYwZ", Some(1)),
                cmd(10, "RETR", "1"),
                reply(11, "+OK", None, "14 octets", Some(1)),
                cmd(12, "TOP", "2 0"),
                reply(13, "+OK", None, "", Some(1)),
                cmd(14, "DELE", "1"),
                cmd(14, "DELE", "9"),
                reply(15, "+OK", None, "deleted", Some(1)),
                reply(15, "-ERR", Some("SYS/PERM"), "no such message", Some(1)),
                cmd(16, "QUIT", ""),
                reply(17, "+OK", None, "bye", Some(1)),
            ]
        );
    }

    #[test]
    fn full_session_record() {
        let (_, r) = run(SESSION);
        assert_eq!(
            Value::Object(r),
            json!({
                "user": "alice",
                "tls": false, "tls_mode": null, "tls_info": null,
                "auth": {"mechanism": "USER", "user": "alice", "result": "+OK"},
                "commands": [
                    {"verb": "CAPA", "count": 1, "errors": 0},
                    {"verb": "USER", "count": 1, "errors": 0},
                    {"verb": "PASS", "count": 1, "errors": 0},
                    {"verb": "STAT", "count": 1, "errors": 0},
                    {"verb": "LIST", "count": 1, "errors": 0},
                    {"verb": "UIDL", "count": 1, "errors": 0},
                    {"verb": "RETR", "count": 1, "errors": 0},
                    {"verb": "TOP", "count": 1, "errors": 0},
                    {"verb": "DELE", "count": 2, "errors": 1},
                    {"verb": "QUIT", "count": 1, "errors": 0},
                ],
                "greeting": {"code": "+OK", "text": "POP3 ready <1896.697170952@dbc.mtview.ca.us>", "apop": true},
                "capa": ["TOP", "USER", "PIPELINING"],
                // "Subject: x\r\n" 12 + "\r\n" 2 + ".dot\r\n" 6 (unstuffed)
                "retrieved": {"messages": 1, "bytes": 20},
                "top": {"messages": 1, "bytes": 6},
                "findings": [{"id": "auth-cleartext", "severity": "warn",
                              "reason": "USER/PASS sent in clear; the server offered no STLS"}],
            })
        );
    }

    #[test]
    fn any_chunking_gives_identical_output() {
        let whole = run(SESSION);
        for chunk in 1..=64 {
            let got = run_with(Privacy::default(), SessionStart::default(), SESSION, chunk);
            assert_eq!(got, whole, "chunk size {chunk}");
        }
    }

    #[test]
    fn a_reply_echoing_the_password_or_sasl_response_is_redacted() {
        let ir = "AGFsaWNlAGh1bnRlcjIy"; // \0alice\0hunter22
        let (auth, echo) = (
            format!("AUTH PLAIN {ir}\r\n"),
            format!("-ERR bad response {ir} (hunter22)\r\n"),
        );
        let steps: &[(Dir, &[u8])] = &[
            (S, b"+OK ready\r\n"),
            (C, b"USER mrose\r\nPASS s3cr3t-pw\r\n"),
            (S, b"+OK\r\n-ERR [AUTH] no such password: s3cr3t-pw\r\n"),
            (C, auth.as_bytes()),
            (S, echo.as_bytes()),
        ];
        let (ev, _) = run(steps);
        let all = format!("{ev:?}");
        assert!(!all.contains("s3cr3t") && !all.contains("hunter22") && !all.contains(ir));
        assert!(all.contains("no such password: <redacted>"), "{all}");
        assert!(
            all.contains("bad response <redacted> (<redacted>)"),
            "{all}"
        );
    }

    #[test]
    fn password_and_apop_digest_never_shown() {
        let steps: &[(Dir, &[u8])] = &[
            (S, b"+OK <1.2@h>\r\n"),
            (C, b"APOP mrose c4c9334bac560ecc979e58001b3e22fb\r\n"),
            (S, b"-ERR [AUTH] bad digest\r\n"),
            (C, b"USER mrose\r\nPASS s3cr3t pass\r\n"),
            (S, b"+OK\r\n-ERR [IN-USE] locked\r\n"),
        ];
        let (ev, r) = run(steps);
        let all = format!("{ev:?}{r:?}");
        assert!(!all.contains("c4c9334b"));
        assert!(!all.contains("s3cr3t"));
        assert_eq!(ev[1], cmd(2, "APOP", "mrose <redacted>"));
        // Only the first credential in clear is a finding.
        assert_eq!(
            ev[2],
            found(
                2,
                "auth-cleartext",
                "APOP sent in clear (the server's capabilities were not seen)"
            )
        );
        assert_eq!(ev[3], reply(3, "-ERR", Some("AUTH"), "bad digest", Some(1)));
        assert_eq!(ev[7], reply(5, "-ERR", Some("IN-USE"), "locked", Some(1)));
        assert_eq!(ev.len(), 8);
        assert_eq!(
            r["auth"],
            json!({"mechanism": "USER", "user": "mrose", "result": "-ERR"})
        );
        let shown = run_with(
            Privacy {
                show_secrets: true,
                show_headers: false,
            },
            SessionStart::default(),
            steps,
            0,
        );
        assert_eq!(shown.0[5], cmd(4, "PASS", "s3cr3t pass"));
    }

    #[test]
    fn auth_exchange_redacts_continuations() {
        let steps: &[(Dir, &[u8])] = &[
            (S, b"+OK ready\r\n"),
            (C, b"AUTH\r\n"),
            (S, b"+OK\r\nPLAIN\r\nLOGIN\r\n.\r\n"),
            (C, b"AUTH LOGIN\r\n"),
            (S, b"+ VXNlcm5hbWU6\r\n"),
            (C, b"dXNlcg==\r\n"),
            (S, b"+ UGFzc3dvcmQ6\r\n"),
            (C, b"c2VjcmV0\r\n"),
            (S, b"-ERR [AUTH] Authentication failed.\r\n"),
            (C, b"AUTH PLAIN AHVzZXIAc2VjcmV0\r\n"),
            (S, b"+OK Logged in.\r\n"),
        ];
        let (ev, r) = run(steps);
        assert_eq!(
            ev,
            vec![
                reply(1, "+OK", None, "ready", None),
                cmd(2, "AUTH", ""),
                reply(3, "+OK", None, "", Some(1)),
                cmd(4, "AUTH", "LOGIN"),
                found(
                    4,
                    "auth-cleartext",
                    "AUTH LOGIN sent in clear (the server's capabilities were not seen)"
                ),
                reply(5, "+", None, "<redacted>", Some(1)),
                cmd(6, "AUTH-DATA", "<redacted>"),
                reply(7, "+", None, "<redacted>", Some(1)),
                cmd(8, "AUTH-DATA", "<redacted>"),
                reply(9, "-ERR", Some("AUTH"), "Authentication failed.", Some(1)),
                cmd(10, "AUTH", "PLAIN <redacted>"),
                reply(11, "+OK", None, "Logged in.", Some(1)),
            ]
        );
        assert_eq!(
            r["auth"],
            json!({"mechanism": "PLAIN", "user": "user", "result": "+OK"})
        );
        assert_eq!(r["user"], "user");
        assert!(!format!("{ev:?}{r:?}").contains("c2VjcmV0"));
    }

    #[test]
    fn stls_stops_dissection() {
        let steps: &[(Dir, &[u8])] = &[
            (S, b"+OK lavad\r\n"),
            (C, b"STLS\r\n"),
            (S, b"+OK Ready to start TLS negotiation.\r\n"),
            (C, b"\x16\x03\x01\x00\x05USER x\r\n"),
            (S, b"\x16\x03\x03-ERR\r\n"),
        ];
        let (ev, r) = run(steps);
        assert_eq!(ev.len(), 4);
        assert_eq!(ev[3], Event::TlsStarted { ts: 3 * MS });
        assert_eq!(r["tls"], true);
        assert_eq!(r["tls_mode"], "starttls");
        assert_eq!(r["user"], Value::Null);
    }

    /// A TLS record holding one handshake message.
    fn tls_record(msg_type: u8, body: &[u8]) -> Vec<u8> {
        let mut hs = vec![msg_type, 0, (body.len() >> 8) as u8, body.len() as u8];
        hs.extend_from_slice(body);
        let mut rec = vec![22, 3, 1, (hs.len() >> 8) as u8, hs.len() as u8];
        rec.extend_from_slice(&hs);
        rec
    }

    /// ClientHello with SNI `name`, ServerHello for TLS 1.3 / TLS_AES_256_GCM_SHA384.
    pub(crate) fn hellos(name: &str) -> (Vec<u8>, Vec<u8>) {
        let n = name.len();
        let mut sni = vec![0, 0, 0, (n + 5) as u8, 0, (n + 3) as u8, 0, 0, n as u8];
        sni.extend_from_slice(name.as_bytes());
        let mut ch = vec![3, 3];
        ch.extend_from_slice(&[7; 32]);
        ch.extend_from_slice(&[0, 0, 2, 0x13, 0x01, 1, 0, 0, sni.len() as u8]);
        ch.extend_from_slice(&sni);
        let mut sh = vec![3, 3];
        sh.extend_from_slice(&[9; 32]);
        sh.extend_from_slice(&[0, 0x13, 0x02, 0, 0, 6, 0, 43, 0, 2, 3, 4]);
        (tls_record(1, &ch), tls_record(2, &sh))
    }

    #[test]
    fn stls_records_tls_facts() {
        let (ch, sh) = hellos("pop.lavabit.com");
        let mut s_bytes = b"+OK go\r\n".to_vec();
        s_bytes.extend_from_slice(&sh);
        let steps: &[(Dir, &[u8])] = &[(S, b"+OK\r\n"), (C, b"STLS\r\n"), (C, &ch), (S, &s_bytes)];
        // The ClientHello is sent after the +OK: reorder the last two steps.
        let steps = [steps[0], steps[1], steps[3], steps[2]];
        let (_, r) = run(&steps);
        assert_eq!(
            r["tls_info"],
            json!({"sni": "pop.lavabit.com", "version": "TLS 1.3", "cipher": "TLS_AES_256_GCM_SHA384"})
        );
    }

    #[test]
    fn refused_stls_stays_clear() {
        let (ev, r) = run(&[
            (S, b"+OK\r\n"),
            (C, b"STLS\r\n"),
            (S, b"-ERR not now\r\n"),
            (C, b"NOOP\r\n"),
        ]);
        assert_eq!(ev[3], cmd(4, "NOOP", ""));
        assert_eq!(r["tls"], false);
    }

    #[test]
    fn implicit_tls_is_not_dissected() {
        let start = SessionStart {
            implicit_tls: true,
            ..Default::default()
        };
        let (ev, r) = run_with(
            Privacy::default(),
            start,
            &[(C, b"\x16\x03\x01USER a\r\n"), (S, b"+OK\r\n")],
            0,
        );
        assert_eq!(ev, vec![Event::TlsStarted { ts: MS }]);
        assert_eq!(r["tls_mode"], "implicit");
    }

    #[test]
    fn garbage_reply_and_unknown_command_are_anomalies() {
        // From zeek's pop3-unknown-commands trace: STAT answered with binary.
        let (ev, r) = run(&[
            (S, b"+OK example.com POP3-Server\r\n"),
            (C, b"STAT\r\n"),
            (S, b"+\x00\x01\x02x\r\n\x03'\r\n"),
            (S, b"+OK 1 236\r\n"),
            (C, b"XYZZY 1\r\n"),
            (S, b"-ERR unknown\r\n"),
        ]);
        let ids: Vec<_> = ev
            .iter()
            .filter_map(|e| match e {
                Event::Anomaly { id, .. } => Some(*id),
                _ => None,
            })
            .collect();
        assert_eq!(ids, vec!["bad-reply", "bad-reply", "unknown-command"]);
        // A line that is not a POP3 command may be anything the client typed: its size only.
        assert!(ev.contains(&cmd(5, "<unrecognised line, 9 bytes>", "")));
        assert!(!format!("{ev:?}{r:?}").contains("XYZZY"));
        assert_eq!(
            r["commands"][1],
            json!({"verb": "OTHER", "count": 1, "errors": 1})
        );
    }

    #[test]
    fn gap_in_body_resyncs_at_next_status() {
        let mut d = Pop3::new(Privacy::default(), SessionStart::default());
        d.data(S, b"+OK\r\n", 1);
        d.data(C, b"RETR 1\r\n", 2);
        d.data(S, b"+OK\r\nline one\r\npart", 3);
        d.gap(S, 1000, 4);
        d.data(S, b"ial\r\n+OK looks like status\r\n.\r\n", 5);
        d.data(C, b"NOOP\r\n", 6);
        d.data(S, b"+OK\r\n", 7);
        let ev: Vec<_> = std::iter::from_fn(|| d.poll_event()).collect();
        assert_eq!(
            ev[3],
            Event::Anomaly {
                ts: 4,
                id: "gap-resync"
            }
        );
        // The body goes on after the gap: its "+OK" line is not a reply; the NOOP reply is
        // matched again.
        assert_eq!(ev.len(), 6, "{ev:?}");
        assert_eq!(
            ev[5],
            Event::Reply {
                ts: 7,
                code: "+OK".into(),
                enhanced: None,
                text: String::new(),
                latency_ns: Some(1),
            }
        );
        assert_eq!(d.record()["retrieved"], json!({"messages": 0, "bytes": 0}));
    }

    #[test]
    fn partial_pickup_waits_for_a_line_that_parses() {
        let start = SessionStart {
            partial: true,
            ..Default::default()
        };
        let (ev, r) = run_with(
            Privacy::default(),
            start,
            &[
                (S, b"ody text\r\nmore\r\n.\r\n"),
                (C, b"tail of something\r\nDELE 1\r\n"),
                (S, b"+OK gone\r\n"),
            ],
            0,
        );
        assert_eq!(
            ev,
            vec![cmd(2, "DELE", "1"), reply(3, "+OK", None, "gone", Some(1))]
        );
        assert_eq!(r["greeting"], Value::Null);
    }

    #[test]
    fn hostile_input_is_bounded() {
        let mut d = Pop3::new(Privacy::default(), SessionStart::default());
        d.data(S, b"+OK\r\n", 1);
        for _ in 0..(MAX_PENDING + 10) {
            d.data(C, b"NOOP\r\n", 2);
        }
        let big = vec![b'A'; 100_000];
        d.data(C, &big, 3);
        d.data(S, &big, 3);
        d.data(S, b"\r\n", 4);
        assert_eq!(d.pending.len(), MAX_PENDING);
        let ev: Vec<_> = std::iter::from_fn(|| d.poll_event()).collect();
        assert!(ev.contains(&Event::Anomaly {
            ts: 2,
            id: "too-many-pending"
        }));
        assert!(ev.contains(&Event::Anomaly {
            ts: 4,
            id: "line-too-long"
        }));
    }

    fn drain(d: &mut Pop3) -> Vec<Event> {
        std::iter::from_fn(|| d.poll_event()).collect()
    }

    #[test]
    fn after_a_server_gap_nothing_is_paired_until_the_next_command() {
        let mut d = Pop3::new(Privacy::default(), SessionStart::default());
        d.data(S, b"+OK\r\n", 1);
        d.data(C, b"RETR 1\r\n", 2);
        // The +OK of the RETR is lost: its body must not become replies.
        d.gap(S, 20, 3);
        d.data(
            S,
            b"+OK a body line that looks like a status\r\nbody\r\n.\r\n",
            4,
        );
        d.data(C, b"NOOP\r\n", 5);
        d.data(S, b"+OK noop\r\n", 6);
        let ev = drain(&mut d);
        assert!(!format!("{ev:?}").contains("looks like"), "{ev:?}");
        assert_eq!(
            ev[2..],
            [
                Event::Anomaly {
                    ts: 3,
                    id: "gap-resync"
                },
                Event::Anomaly {
                    ts: 3,
                    id: "unpaired-command"
                },
                Event::Anomaly {
                    ts: 4,
                    id: "unpaired-reply"
                },
                Event::Command {
                    ts: 5,
                    verb: "NOOP".into(),
                    arg: String::new()
                },
                Event::Reply {
                    ts: 6,
                    code: "+OK".into(),
                    enhanced: None,
                    text: "noop".into(),
                    latency_ns: Some(1)
                },
            ]
        );
    }

    #[test]
    fn a_lost_command_does_not_shift_the_pairing() {
        let mut d = Pop3::new(Privacy::default(), SessionStart::default());
        d.data(S, b"+OK\r\n", 1);
        d.data(C, b"STAT\r\n", 2);
        // RETR 1 is lost; its reply and body come after the STAT reply.
        d.gap(C, 8, 3);
        d.data(
            S,
            b"+OK 1 20\r\n+OK 20 octets\r\n+OK private line\r\n.\r\n",
            4,
        );
        d.data(C, b"QUIT\r\n", 5);
        d.data(S, b"+OK bye\r\n", 6);
        let ev = drain(&mut d);
        let replies: Vec<_> = ev
            .iter()
            .filter_map(|e| match e {
                Event::Reply {
                    text, latency_ns, ..
                } => Some((text.as_str(), *latency_ns)),
                _ => None,
            })
            .collect();
        assert_eq!(
            replies,
            vec![("", None), ("1 20", Some(2)), ("bye", Some(1))]
        );
        assert!(!format!("{ev:?}").contains("private"));
    }

    #[test]
    fn a_lost_auth_outcome_ends_at_a_command_line() {
        let mut d = Pop3::new(Privacy::default(), SessionStart::default());
        d.data(S, b"+OK\r\n", 1);
        d.data(C, b"AUTH PLAIN\r\n", 2);
        d.data(S, b"+ \r\n", 3);
        d.data(C, b"AGFsaWNlAHNlY3JldA==\r\n", 4);
        d.gap(S, 15, 5);
        // STAT alone could be base64; `LIST 1` cannot.
        d.data(C, b"STAT\r\nLIST 1\r\n", 6);
        let ev = drain(&mut d);
        assert!(!format!("{ev:?}").contains("AGFsaWNl"));
        assert!(ev.contains(&cmd_ts(6, "AUTH-DATA", "<redacted>")));
        assert!(ev.contains(&cmd_ts(6, "LIST", "1")));
    }

    fn cmd_ts(ts: u64, verb: &str, arg: &str) -> Event {
        Event::Command {
            ts,
            verb: verb.into(),
            arg: arg.into(),
        }
    }

    #[test]
    fn without_its_greeting_the_capa_reply_is_not_the_greeting() {
        let mut d = Pop3::new(Privacy::default(), SessionStart::default());
        d.gap(S, 30, 1);
        d.data(C, b"CAPA\r\n", 2);
        d.data(
            S,
            b"+OK Capability list follows\r\nUSER\r\nSTLS\r\n.\r\n",
            3,
        );
        let ev = drain(&mut d);
        assert_eq!(
            ev[2],
            Event::Reply {
                ts: 3,
                code: "+OK".into(),
                enhanced: None,
                text: "Capability list follows".into(),
                latency_ns: Some(1),
            }
        );
        let r = d.record();
        assert_eq!(r["greeting"], Value::Null);
        assert_eq!(r["capa"], json!(["USER", "STLS"]));
    }

    use proptest::strategy::Strategy as _;

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        #[test]
        fn arbitrary_bytes_never_panic(
            steps in proptest::collection::vec((proptest::bool::ANY, proptest::prop_oneof![proptest::collection::vec(proptest::num::u8::ANY, 0..200), "(a1 |\\* |\\+ |OK |NO |BAD |\\{3\\}|\\{2\\+\\}|LOGIN |FETCH |AUTHENTICATE PLAIN|AUTH LOGIN|IDLE|DONE|STLS|STARTTLS|RETR 1|CAPA|\\+OK |-ERR |\\.|\r\n|x){0,40}".prop_map(String::into_bytes)]), 0..40),
            gap_at in 0usize..40,
        ) {
            let mut d = Pop3::new(Privacy::default(), SessionStart::default());
            for (i, (to_server, bytes)) in steps.iter().enumerate() {
                let dir = if *to_server { C } else { S };
                if i == gap_at {
                    d.gap(dir, 10, i as u64);
                }
                d.data(dir, bytes, i as u64);
                while d.poll_event().is_some() {}
            }
            let _ = d.record();
        }
    }
}
