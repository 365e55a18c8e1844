//! The daemon's own brackets: an smtpd process logs `connect from` when it takes a
//! connection and `disconnect from … commands=N/M` when it lets go, and every line of that
//! pid in between is about that connection. Postfix reuses an smtpd for up to `max_use`
//! connections, often from the same client a fraction of a second apart, and syslog stamps
//! have one-second resolution: only the brackets separate those sessions.
//!
//! This module holds what a bracket and a wire session each say about a connection, and the
//! cross-check between them ([`agrees`]); the join ([`super::join`]) decides which session a
//! bracket is offered to.
use std::collections::HashMap;
use std::net::IpAddr;

use super::{Kind, LogLine};
use crate::proto::Event;
use crate::time::Ts;

/// One smtpd connection as its log lines tell it.
#[derive(Debug)]
pub struct Bracket {
    /// The connect line's arrival order: which bracket this is.
    pub id: u64,
    pub ip: IpAddr,
    /// Only with `smtpd_client_port_logging`.
    pub port: Option<u16>,
    /// `program[pid]`: the smtpd process, which serves one master.cf service (one
    /// listening address) for its whole life.
    pub process: String,
    /// The `connect from` stamp.
    pub opened: Ts,
    /// When the `disconnect` line (or the next `connect` of the pid) closed it.
    pub closed: Option<Ts>,
    /// `(arrival order, line)`: the connect line first.
    pub lines: Vec<(u64, LogLine)>,
    /// The `disconnect from` statistics (`ehlo=1 mail=1 rcpt=0/1 … commands=4/5`).
    pub stats: Option<String>,
    /// Queue ids of its `client=` lines.
    pub queue_ids: Vec<String>,
    /// `NOQUEUE: reject: RCPT …` lines: (recipient, code).
    pub rejects: Vec<(String, u16)>,
}

impl Bracket {
    /// A bracket opened by `connect` (None when the line names no client address).
    pub fn open(seq: u64, connect: LogLine) -> Option<Bracket> {
        let ip = connect.get("client_ip")?.parse().ok()?;
        let port = connect
            .fields
            .get("client_port")
            .and_then(serde_json::Value::as_u64)
            .and_then(|p| u16::try_from(p).ok());
        Some(Bracket {
            id: seq,
            ip,
            port,
            process: format!("{}[{}]", connect.program, connect.pid.unwrap_or(0)),
            opened: connect.ts,
            closed: None,
            lines: vec![(seq, connect)],
            stats: None,
            queue_ids: Vec::new(),
            rejects: Vec::new(),
        })
    }

    /// A line of the same pid while the bracket is open; true when it closes the bracket.
    pub fn push(&mut self, seq: u64, l: LogLine, max_lines: usize) -> (bool, bool) {
        let closes = l.kind == Kind::Disconnect;
        if closes {
            self.stats = l.get("stats").map(str::to_string);
            self.closed = Some(l.ts);
        }
        if l.kind == Kind::Client {
            if let Some(q) = &l.queue_id {
                self.queue_ids.push(q.clone());
            }
        }
        if l.kind == Kind::Reject && l.queue_id.is_none() && l.get("stage") == Some("RCPT") {
            if let (Some(to), Some(code)) = (
                l.get("to"),
                l.fields.get("code").and_then(serde_json::Value::as_u64),
            ) {
                self.rejects
                    .push((to.to_ascii_lowercase(), u16::try_from(code).unwrap_or(0)));
            }
        }
        let kept = self.lines.len() < max_lines;
        if kept {
            self.lines.push((seq, l));
        }
        (closes, kept)
    }
}

/// Postfix's names in the `disconnect` statistics; any other verb counts as `unknown`.
const VERBS: [&str; 15] = [
    "helo", "ehlo", "xclient", "xforward", "auth", "mail", "rcpt", "data", "bdat", "rset", "noop",
    "vrfy", "etrn", "quit", "starttls",
];

/// What the wire saw of one SMTP session, in the terms of Postfix's `disconnect` line.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    /// verb → (succeeded, sent).
    verbs: HashMap<&'static str, (u32, u32)>,
    /// Commands waiting for their final reply, in order (pipelining).
    pending: std::collections::VecDeque<(&'static str, Option<String>)>,
    /// Recipients refused on the wire: (address, code).
    pub refused: Vec<(String, u16)>,
    /// `queued as` ids of the end-of-data replies.
    pub queued: Vec<String>,
    /// Part of the dialogue was not seen (TLS, a gap, a session joined in the middle): the
    /// wire's counts are then a lower bound of the log's.
    pub incomplete: bool,
}

impl Tally {
    /// Nothing countable was seen (implicit TLS, or TLS or a gap before the first command):
    /// every bracket agrees with such a session, so agreement says nothing.
    pub fn blind(&self) -> bool {
        self.incomplete && self.verbs.is_empty() && self.pending.is_empty()
    }

    /// `incomplete` for a session joined in the middle.
    pub fn new(incomplete: bool) -> Tally {
        Tally {
            incomplete,
            ..Tally::default()
        }
    }

    pub fn event(&mut self, ev: &Event) {
        match ev {
            Event::Command { verb, arg, .. } => {
                // AUTH responses are not commands to Postfix (the AUTH is still pending).
                if verb == crate::proto::auth::RESPONSE_VERB {
                    return;
                }
                let lower = verb.to_ascii_lowercase();
                let name = VERBS
                    .iter()
                    .find(|v| **v == lower)
                    .copied()
                    .unwrap_or("unknown");
                let rcpt = if name == "rcpt" { rcpt_addr(arg) } else { None };
                self.pending.push_back((name, rcpt));
            }
            Event::Reply { code, text, .. } => {
                let Some(&(name, _)) = self.pending.front() else {
                    // The greeting, or a reply to nothing seen (421 at a timeout).
                    return;
                };
                // 354 after DATA and 334 after AUTH are not the final word.
                if code.starts_with('3') && matches!(name, "data" | "auth") {
                    return;
                }
                let Some((name, rcpt)) = self.pending.pop_front() else {
                    return;
                };
                let ok = code.starts_with('2');
                let e = self.verbs.entry(name).or_default();
                e.1 += 1;
                if ok {
                    e.0 += 1;
                }
                if let (false, Some(a)) = (ok, rcpt) {
                    self.refused.push((a, code.parse().unwrap_or(0)));
                }
                if ok && matches!(name, "data" | "bdat") {
                    if let Some(q) = super::join::queued_as(text) {
                        self.queued.push(q.to_string());
                    }
                }
            }
            Event::TlsStarted { .. } => self.incomplete = true,
            _ => {}
        }
    }
}

/// `TO:<Alice@mx.test> NOTIFY=…` → `alice@mx.test`.
fn rcpt_addr(arg: &str) -> Option<String> {
    let rest = arg
        .get(3..)
        .filter(|_| arg[..3].eq_ignore_ascii_case("to:"))?;
    let rest = rest.trim_start();
    let addr = match rest.strip_prefix('<') {
        Some(r) => r.split('>').next()?,
        None => rest.split(' ').next()?,
    };
    Some(addr.to_ascii_lowercase())
}

/// `ehlo=1 mail=1 rcpt=0/1 data=1 quit=1 commands=3/4` → (name, (succeeded, sent)), in order.
fn parse_stats(stats: &str) -> Option<Vec<(&str, (u32, u32))>> {
    let mut out = Vec::new();
    for w in stats.split_whitespace() {
        let (k, v) = w.split_once('=')?;
        let (ok, all) = match v.split_once('/') {
            Some((a, b)) => (a.parse().ok()?, b.parse().ok()?),
            None => {
                let n = v.parse().ok()?;
                (n, n)
            }
        };
        out.push((k, (ok, all)));
    }
    Some(out)
}

/// Why a bracket is not this session's, or None when everything the two both know agrees.
pub fn disagreement(b: &Bracket, t: &Tally) -> Option<String> {
    // Every queue id smtpd handed out is one the wire saw queued, and (all seen) no other.
    // Inside TLS the wire sees no `queued as`: nothing to hold against the log's.
    for q in &b.queue_ids {
        if !t.queued.contains(q) && !t.incomplete {
            return Some(format!("queue id {q} not queued in the session"));
        }
    }
    if !t.incomplete && t.queued.len() != b.queue_ids.len() {
        return Some(format!(
            "{} message(s) queued on the wire, {} client= line(s)",
            t.queued.len(),
            b.queue_ids.len()
        ));
    }
    let mut refused = t.refused.clone();
    for (to, code) in &b.rejects {
        match refused.iter().position(|(a, c)| a == to && c == code) {
            Some(i) => {
                refused.swap_remove(i);
            }
            // A refusal inside TLS (or a gap) the wire did not see.
            None if t.incomplete => {}
            None => return Some(format!("reject of {to} ({code}) not refused on the wire")),
        }
    }
    let Some(stats) = &b.stats else {
        return None;
    };
    let Some(log) = parse_stats(stats) else {
        return Some(format!("unreadable statistics {stats:?}"));
    };
    let wire = |name: &str| t.verbs.get(name).copied().unwrap_or((0, 0));
    let differ = |name: &str, w: (u32, u32), l: (u32, u32)| {
        let none = |c: (u32, u32)| c == (0, 0);
        let show = |c: (u32, u32)| format!("{}/{}", c.0, c.1);
        Some(format!(
            "{name}: {} on the wire, {} in the log",
            if none(w) { "none".into() } else { show(w) },
            if none(l) { "none".into() } else { show(l) }
        ))
    };
    // In the log's order, then what the wire saw and the log did not count, then the total.
    for &(name, l) in log.iter().filter(|(n, _)| *n != "commands") {
        if !fits(t.incomplete, wire(name), l) {
            return differ(name, wire(name), l);
        }
    }
    for name in VERBS.iter().chain(&["unknown"]) {
        if !log.iter().any(|(n, _)| n == name) && !fits(t.incomplete, wire(name), (0, 0)) {
            return differ(name, wire(name), (0, 0));
        }
    }
    let total = t.verbs.values().fold((0, 0), |a, v| (a.0 + v.0, a.1 + v.1));
    if let Some(&(_, l)) = log.iter().find(|(n, _)| *n == "commands") {
        if !fits(t.incomplete, total, l) {
            return differ("commands", total, l);
        }
    }
    None
}

fn fits(incomplete: bool, wire: (u32, u32), log: (u32, u32)) -> bool {
    if incomplete {
        wire.0 <= log.0 && wire.1 <= log.1
    } else {
        wire == log
    }
}

/// One Dovecot connection as its log lines tell it, known by Dovecot's `session=<ID>`: the
/// login process's line (`Login:`, or the pre-login `Disconnected (auth failed, …)` /
/// `Aborted login` / `Connection closed (no auth attempts …)`) names the client, and the mail
/// process logs under the same id (`imap(user)<mpid><ID>: …`) until its `Disconnected:` line.
#[derive(Debug)]
pub struct DovecotSession {
    pub id: String,
    /// The first line's arrival order.
    pub first: u64,
    /// `imap-login` → IMAP, `pop3-login` → POP3; None until the login line is read.
    pub login: Option<DovecotLogin>,
    /// The first line's stamp.
    pub opened: Ts,
    /// The stamp of the line that ended it: a pre-login disconnect, or the mail process's.
    pub closed: Option<Ts>,
    /// `(arrival order, line)`.
    pub lines: Vec<(u64, LogLine)>,
}

/// What a login process's line says of its connection.
#[derive(Debug)]
pub struct DovecotLogin {
    pub imap: bool,
    pub rip: IpAddr,
    pub lip: Option<IpAddr>,
    /// Only when `login_log_format_elements` has `rport=%{rport}` (not in Dovecot's default).
    pub rport: Option<u16>,
    pub lport: Option<u16>,
    /// `Login:` (true), `auth failed` (false), no attempt at all (None).
    pub logged_in: Option<bool>,
    /// `user=<…>`; empty when no user was named.
    pub user: String,
    /// The `TLS` element.
    pub tls: bool,
}

impl DovecotLogin {
    /// From a login process's line (None for other lines or without a readable `rip`).
    pub fn of(l: &LogLine) -> Option<DovecotLogin> {
        let imap = match l.program.as_str() {
            "imap-login" => true,
            "pop3-login" => false,
            _ => return None,
        };
        let port = |k: &str| {
            l.fields
                .get(k)
                .and_then(serde_json::Value::as_u64)
                .and_then(|p| u16::try_from(p).ok())
        };
        Some(DovecotLogin {
            imap,
            rip: l.get("rip")?.parse().ok()?,
            lip: l.get("lip").and_then(|s| s.parse().ok()),
            rport: port("rport"),
            lport: port("lport"),
            logged_in: match l.kind {
                Kind::Login => Some(true),
                Kind::LoginFailed => Some(false),
                _ => None,
            },
            user: l.get("user").unwrap_or("").to_string(),
            // `TLS`, or a flag about it (`TLS: Disconnected`, `TLS handshaking: …`): the
            // connection turned to TLS, as the wire saw.
            tls: l.fields.get("tls") == Some(&serde_json::Value::Bool(true))
                || l.get("flag").is_some_and(|f| f.starts_with("TLS")),
        })
    }
}

impl DovecotSession {
    pub fn new(id: &str, seq: u64, ts: Ts) -> DovecotSession {
        DovecotSession {
            id: id.to_string(),
            first: seq,
            login: None,
            opened: ts,
            closed: None,
            lines: Vec::new(),
        }
    }

    /// A line with this session id; the line is kept while there is room (false: dropped).
    pub fn push(&mut self, seq: u64, l: LogLine, max_lines: usize) -> bool {
        if self.login.is_none() {
            if let Some(login) = DovecotLogin::of(&l) {
                // A pre-login line is the login process's last word: nothing else follows.
                if login.logged_in != Some(true) {
                    self.closed = Some(l.ts);
                }
                self.login = Some(login);
            }
        }
        if l.kind == Kind::Logout {
            self.closed = Some(l.ts);
        }
        let kept = self.lines.len() < max_lines;
        if kept {
            self.lines.push((seq, l));
        }
        kept
    }
}

/// What the wire saw of an IMAP/POP3 session's login, from its record.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WireLogin {
    /// The last LOGIN/AUTHENTICATE/USER+PASS/AUTH outcome: Some(true) for `OK`/`+OK`; None
    /// when none was seen.
    pub logged_in: Option<bool>,
    /// The user the client named.
    pub user: Option<String>,
    pub tls: Option<bool>,
    /// The record has no `auth` field at all, or part of the dialogue is missing (TLS
    /// without plaintext, a gap, joined in the middle): absence of a login proves nothing.
    pub blind: bool,
}

impl WireLogin {
    pub fn of(record: &crate::session::SessionRecord, incomplete: bool) -> WireLogin {
        use serde_json::Value;
        let tls = record.field("tls").and_then(Value::as_bool);
        let auth = record.field("auth");
        let result = auth.and_then(|a| a.get("result")).and_then(Value::as_str);
        let user = auth
            .and_then(|a| a.get("user"))
            .and_then(Value::as_str)
            .or_else(|| record.field("user").and_then(Value::as_str))
            .map(str::to_string);
        WireLogin {
            logged_in: result.map(|r| matches!(r, "OK" | "+OK")),
            user,
            tls,
            blind: auth.is_none() || incomplete || tls == Some(true),
        }
    }
}

/// Why a Dovecot login line is not this session's, or None when what both know agrees.
pub fn dovecot_disagreement(d: &DovecotLogin, w: &WireLogin) -> Option<String> {
    let say = |v: Option<bool>| match v {
        Some(true) => "login succeeded",
        Some(false) => "login failed",
        None => "no login",
    };
    if let Some(tls) = w.tls {
        // A session that turned to TLS: Dovecot says `TLS` (STARTTLS or implicit).
        if tls != d.tls {
            return Some(format!(
                "TLS {} on the wire, {} in the log",
                if tls { "used" } else { "not used" },
                if d.tls { "TLS" } else { "no TLS" }
            ));
        }
    }
    let outcome_differs = match (w.logged_in, d.logged_in) {
        (Some(a), Some(b)) => a != b,
        // Dovecot logs a failure only after an attempt, and every success.
        (Some(_), None) => true,
        (None, Some(_)) => !w.blind,
        (None, None) => false,
    };
    if outcome_differs {
        return Some(format!(
            "{} on the wire, {} in the log",
            say(w.logged_in),
            say(d.logged_in)
        ));
    }
    if let Some(u) = &w.user {
        if !d.user.is_empty() && !u.eq_ignore_ascii_case(&d.user) {
            return Some(format!("user {u:?} on the wire, {:?} in the log", d.user));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maillog::{parse, Clock};

    const NOW: Ts = 1_795_823_100_000_000_000;

    fn line(s: &str) -> LogLine {
        parse(s, &Clock::utc(NOW)).unwrap()
    }

    fn cmd(verb: &str, arg: &str) -> Event {
        Event::Command {
            ts: 0,
            verb: verb.into(),
            arg: arg.into(),
        }
    }

    fn reply(code: &str, text: &str) -> Event {
        Event::Reply {
            ts: 0,
            code: code.into(),
            enhanced: None,
            text: text.into(),
            latency_ns: None,
        }
    }

    fn tally(evs: &[Event]) -> Tally {
        let mut t = Tally::default();
        for e in evs {
            t.event(e);
        }
        t
    }

    fn bracket(lines: &[&str]) -> Bracket {
        let mut b = Bracket::open(0, line(lines[0])).unwrap();
        for (i, l) in lines[1..].iter().enumerate() {
            b.push(i as u64 + 1, line(l), 100);
        }
        b
    }

    #[test]
    fn a_rejected_session_agrees_with_its_bracket_and_not_with_a_delivered_one() {
        let rejected = tally(&[
            reply("220", "mx.test ESMTP"),
            cmd("EHLO", "client.test"),
            reply("250", "mx.test"),
            cmd("MAIL", "FROM:<s@client.test>"),
            reply("250", "Ok"),
            cmd("RCPT", "TO:<Nobody@mx.test>"),
            reply("550", "Recipient address rejected"),
            cmd("QUIT", ""),
            reply("221", "Bye"),
        ]);
        let delivered = tally(&[
            reply("220", "mx.test ESMTP"),
            cmd("EHLO", "client.test"),
            reply("250", "mx.test"),
            cmd("MAIL", "FROM:<s@client.test>"),
            reply("250", "Ok"),
            cmd("RCPT", "TO:<alice@mx.test>"),
            reply("250", "Ok"),
            cmd("DATA", ""),
            reply("354", "End data with <CR><LF>.<CR><LF>"),
            reply("250", "Ok: queued as A74CF98E292"),
            cmd("QUIT", ""),
            reply("221", "Bye"),
        ]);
        assert_eq!(delivered.queued, vec!["A74CF98E292"]);
        assert_eq!(rejected.refused, vec![("nobody@mx.test".to_string(), 550)]);
        let rej = bracket(&[
            "Nov 27 23:39:56 mx postfix/smtpd[1]: connect from unknown[10.99.1.1]",
            "Nov 27 23:39:56 mx postfix/smtpd[1]: NOQUEUE: reject: RCPT from unknown[10.99.1.1]: 550 5.1.1 <nobody@mx.test>: Recipient address rejected: User unknown; from=<s@client.test> to=<nobody@mx.test> proto=ESMTP helo=<client.test>",
            "Nov 27 23:39:56 mx postfix/smtpd[1]: disconnect from unknown[10.99.1.1] ehlo=1 mail=1 rcpt=0/1 quit=1 commands=3/4",
        ]);
        let ok = bracket(&[
            "Nov 27 23:39:56 mx postfix/smtpd[1]: connect from unknown[10.99.1.1]",
            "Nov 27 23:39:56 mx postfix/smtpd[1]: A74CF98E292: client=unknown[10.99.1.1]",
            "Nov 27 23:39:56 mx postfix/smtpd[1]: disconnect from unknown[10.99.1.1] ehlo=1 mail=1 rcpt=1 data=1 quit=1 commands=5",
        ]);
        assert_eq!(disagreement(&rej, &rejected), None);
        assert_eq!(disagreement(&ok, &delivered), None);
        assert_eq!(
            disagreement(&rej, &delivered).as_deref(),
            Some("1 message(s) queued on the wire, 0 client= line(s)")
        );
        assert_eq!(
            disagreement(&ok, &rejected).as_deref(),
            Some("queue id A74CF98E292 not queued in the session")
        );
        // The same counts but another queue id.
        let mut other = delivered.clone();
        other.queued = vec!["B00000000001".into()];
        assert!(disagreement(&ok, &other).is_some());
    }

    fn login(m: &str) -> DovecotLogin {
        DovecotLogin::of(&line(&format!("Nov 27 23:39:56 mx dovecot: {m}"))).unwrap()
    }

    #[test]
    fn dovecot_logins_against_the_wire() {
        let ok = login("imap-login: Login: user=<alice@mx.test>, method=PLAIN, rip=10.99.1.1, lip=10.99.1.2, mpid=1, TLS, session=<a>");
        assert_eq!(
            (ok.imap, ok.logged_in, ok.tls, ok.user.as_str(), ok.rport),
            (true, Some(true), true, "alice@mx.test", None)
        );
        let failed = login("pop3-login: Disconnected (auth failed, 3 attempts in 14 secs): user=<Bob@mx.test>, method=PLAIN, rip=10.99.1.1, rport=4000, lip=10.99.1.2, TLS: Disconnected, session=<b>");
        assert_eq!(
            (failed.imap, failed.logged_in, failed.tls, failed.rport),
            (false, Some(false), true, Some(4000))
        );
        let none = login("imap-login: Disconnected: Connection closed (no auth attempts in 0 secs): user=<>, rip=10.99.1.1, lip=10.99.1.2, TLS handshaking: SSL_accept() failed, session=<c>");
        assert_eq!((none.logged_in, none.tls), (None, true));
        let wire = |logged_in, user: Option<&str>, tls| WireLogin {
            logged_in,
            user: user.map(str::to_string),
            tls: Some(tls),
            blind: tls,
        };
        let alice = Some("alice@mx.test");
        assert_eq!(
            dovecot_disagreement(&ok, &wire(Some(true), alice, true)),
            None
        );
        assert_eq!(
            dovecot_disagreement(&ok, &wire(Some(false), alice, true)).as_deref(),
            Some("login failed on the wire, login succeeded in the log")
        );
        assert_eq!(
            dovecot_disagreement(&ok, &wire(Some(true), alice, false)).as_deref(),
            Some("TLS not used on the wire, TLS in the log")
        );
        // The user compared without case; TLS hides the login: nothing against it.
        assert_eq!(
            dovecot_disagreement(&failed, &wire(Some(false), Some("bob@MX.test"), true)),
            None
        );
        assert_eq!(dovecot_disagreement(&failed, &wire(None, None, true)), None);
        assert_eq!(dovecot_disagreement(&none, &wire(None, None, true)), None);
        assert_eq!(
            dovecot_disagreement(&none, &wire(Some(false), alice, true)).as_deref(),
            Some("login failed on the wire, no login in the log")
        );
        // The whole dialogue seen in the clear without a login: a logged login is not it.
        let mut clear = login("imap-login: Login: user=<alice@mx.test>, method=PLAIN, rip=10.99.1.1, lip=10.99.1.2, mpid=1, session=<d>");
        assert_eq!(
            dovecot_disagreement(&clear, &wire(None, None, false)).as_deref(),
            Some("no login on the wire, login succeeded in the log")
        );
        clear.logged_in = Some(false);
        assert_eq!(
            dovecot_disagreement(&clear, &wire(Some(false), Some("carol@mx.test"), false))
                .as_deref(),
            Some("user \"carol@mx.test\" on the wire, \"alice@mx.test\" in the log")
        );
    }

    #[test]
    fn statistics_are_compared_verb_by_verb_and_lower_bounds_after_tls() {
        let t = tally(&[
            reply("220", "x"),
            cmd("EHLO", "c"),
            reply("250", "x"),
            cmd("AUTH", "PLAIN"),
            reply("334", ""),
            cmd(crate::proto::auth::RESPONSE_VERB, "<redacted>"),
            reply("535", "no"),
            cmd("FOO", ""),
            reply("502", "no"),
            cmd("QUIT", ""),
            reply("221", "x"),
        ]);
        let b = |stats: &str| {
            bracket(&[
                "Nov 27 23:39:56 mx postfix/submission/smtpd[1]: connect from unknown[10.99.1.1]:4000",
                &format!("Nov 27 23:39:56 mx postfix/submission/smtpd[1]: disconnect from unknown[10.99.1.1]:4000 {stats}"),
            ])
        };
        assert_eq!(
            disagreement(&b("ehlo=1 auth=0/1 unknown=0/1 quit=1 commands=2/4"), &t),
            None
        );
        assert_eq!(
            disagreement(&b("ehlo=1 auth=1 unknown=0/1 quit=1 commands=3/4"), &t).as_deref(),
            Some("auth: 0/1 on the wire, 1/1 in the log")
        );
        assert_eq!(
            disagreement(
                &b("ehlo=1 auth=0/1 unknown=0/1 rset=1 quit=1 commands=3/5"),
                &t
            )
            .as_deref(),
            Some("rset: none on the wire, 1/1 in the log")
        );
        let mut tls = tally(&[
            reply("220", "x"),
            cmd("EHLO", "c"),
            reply("250", "x"),
            cmd("STARTTLS", ""),
            reply("220", "go"),
        ]);
        tls.event(&Event::TlsStarted { ts: 0 });
        assert_eq!(
            disagreement(
                &b("ehlo=2 starttls=1 mail=1 rcpt=1 data=1 quit=1 commands=7"),
                &tls
            ),
            None
        );
        assert!(disagreement(&b("ehlo=1 quit=1 commands=2"), &tls).is_some());
        // Inside TLS the queue id and the refusals are not on the wire: no disagreement...
        let queued = bracket(&[
            "Nov 27 23:39:56 mx postfix/smtpd[1]: connect from unknown[10.99.1.1]",
            "Nov 27 23:39:56 mx postfix/smtpd[1]: A74CF98E292: client=unknown[10.99.1.1]",
            "Nov 27 23:39:56 mx postfix/smtpd[1]: NOQUEUE: reject: RCPT from unknown[10.99.1.1]: 550 5.1.1 <nobody@mx.test>: Recipient address rejected: User unknown; from=<s@c> to=<nobody@mx.test> proto=ESMTP helo=<c>",
            "Nov 27 23:39:56 mx postfix/smtpd[1]: disconnect from unknown[10.99.1.1] ehlo=2 starttls=1 mail=1 rcpt=1/2 data=1 quit=1 commands=7/8",
        ]);
        assert_eq!(disagreement(&queued, &tls), None);
        // ...which the same dialogue seen in the clear has.
        let clear = tally(&[
            reply("220", "x"),
            cmd("EHLO", "c"),
            reply("250", "x"),
            cmd("STARTTLS", ""),
            reply("220", "go"),
        ]);
        assert_eq!(
            disagreement(&queued, &clear).as_deref(),
            Some("queue id A74CF98E292 not queued in the session")
        );
    }
}
