//! The MTA's own log beside the wire: Postfix and Dovecot log lines parsed
//! ([`parse`]), joined to the sessions they are about ([`join`]), read from files
//! or the journal ([`follow`]).
//!
//! Parsing is sans-I/O: a line and a [`Clock`] in, a [`LogLine`] out.
pub mod bracket;
pub mod dovecot;
pub mod follow;
pub mod join;
pub mod postfix;
pub mod syslog;

use serde_json::{json, Map, Value};

use crate::proto::Privacy;
use crate::time::{rfc3339_micros, Ts};
pub use syslog::Clock;

/// Lines longer than this are cut (Postfix's own limit is about 2 KiB of text).
pub const MAX_LINE: usize = 8192;

/// What a line says, in a word (`event` in JSON).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// smtpd `connect from`.
    Connect,
    /// smtpd `disconnect from`, or a Dovecot login process closing without a login.
    Disconnect,
    /// smtpd `QUEUEID: client=`: the message got its queue id.
    Client,
    /// cleanup `message-id=`.
    MessageId,
    /// qmgr `from=… size=… nrcpt=…` (or pickup `uid=… from=…`).
    Queued,
    /// A delivery attempt: `to=… relay=… status=…`.
    Delivery,
    /// qmgr `removed`.
    Removed,
    /// `sender non-delivery notification: NEWID`.
    Bounce,
    /// `reject:` / `milter-reject:`, with or without a queue id.
    Reject,
    /// Other `*_checks` actions (hold, discard, warning, …).
    Action,
    /// Dovecot `Login:`.
    Login,
    /// Dovecot `Disconnected (auth failed, …)`.
    LoginFailed,
    /// Dovecot mail process `Disconnected: Logged out …`.
    Logout,
    Other,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Connect => "connect",
            Kind::Disconnect => "disconnect",
            Kind::Client => "client",
            Kind::MessageId => "message-id",
            Kind::Queued => "queued",
            Kind::Delivery => "delivery",
            Kind::Removed => "removed",
            Kind::Bounce => "bounce",
            Kind::Reject => "reject",
            Kind::Action => "action",
            Kind::Login => "login",
            Kind::LoginFailed => "login-failed",
            Kind::Logout => "logout",
            Kind::Other => "other",
        }
    }
}

/// One parsed log line.
#[derive(Clone, Debug, PartialEq)]
pub struct LogLine {
    pub ts: Ts,
    /// `postfix/smtpd`, `postfix/submission/smtpd`, `imap-login`, `imap`, …
    pub program: String,
    pub pid: Option<u32>,
    pub queue_id: Option<String>,
    pub kind: Kind,
    pub fields: Map<String, Value>,
    /// The text may quote a header or body (header_checks, Message-ID).
    pub private: bool,
    /// The line as read (cut at [`MAX_LINE`]).
    pub raw: String,
}

/// Parses one line of a Postfix or Dovecot log; None for other programs and junk.
pub fn parse(line: &str, clock: &Clock) -> Option<LogLine> {
    let line = cut(line.trim_end_matches(['\n', '\r']));
    let pre = syslog::split(line, clock)?;
    let mut out = LogLine {
        ts: pre.ts,
        program: pre.program.to_string(),
        pid: pre.pid,
        queue_id: None,
        kind: Kind::Other,
        fields: Map::new(),
        private: false,
        raw: line.to_string(),
    };
    if pre.program.starts_with("postfix") {
        let p = postfix::parse(pre.message);
        out.queue_id = p.queue_id;
        out.private = p.private || p.kind == Kind::MessageId;
        out.kind = p.kind;
        out.fields = p.fields;
    } else {
        let d = dovecot::parse(pre.program, pre.message)?;
        out.program = d.program;
        out.pid = out.pid.or(d.pid);
        out.kind = d.kind;
        out.fields = d.fields;
        out.private = d.private;
    }
    Some(out)
}

/// Cuts at a char boundary at most [`MAX_LINE`] bytes in.
fn cut(s: &str) -> &str {
    if s.len() <= MAX_LINE {
        return s;
    }
    let mut end = MAX_LINE;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl LogLine {
    /// The line as it may be shown under `privacy`: parsed fields carry what the session
    /// record already shows (envelope addresses, client address, reply texts, the login
    /// user); the Message-ID and `header_checks`/`body_checks` text are header or body
    /// content, and the raw line may hold anything: those stay only with `--show-headers`.
    pub fn redacted(mut self, privacy: Privacy) -> LogLine {
        if !privacy.show_headers {
            if self.private {
                self.fields.remove("message_id");
                self.fields.remove("text");
            }
            self.raw = String::new();
        }
        self
    }

    /// The JSON form (`log` entries of a session record, `log` records); `line` only when
    /// the raw line was kept (see [`LogLine::redacted`]).
    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "ts": rfc3339_micros(self.ts),
            "program": self.program,
            "pid": self.pid,
            "queue_id": self.queue_id,
            "event": self.kind.name(),
            "fields": self.fields,
        });
        if !self.raw.is_empty() {
            v["line"] = Value::from(self.raw.as_str());
        }
        v
    }

    /// A follow-up `log` record of session `session`.
    pub fn record_json(&self, session: u64) -> Value {
        let mut v = json!({"type": "log", "session": session});
        if let (Value::Object(m), Value::Object(e)) = (&mut v, self.to_json()) {
            m.extend(e);
        }
        v
    }

    /// A `log` record of a line no session agreed with: `"session":null` and the reason.
    pub fn unmatched_json(&self, why: &str) -> Value {
        let mut v = json!({"type": "log", "session": null, "unmatched": why});
        if let (Value::Object(m), Value::Object(e)) = (&mut v, self.to_json()) {
            m.extend(e);
        }
        v
    }

    /// A field as text.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields.get(key).and_then(Value::as_str)
    }

    /// One line for the tail: `postfix/virtual[14354] A74CF98E292 delivery: status=sent …`.
    pub fn summary(&self) -> String {
        let mut s = self.program.clone();
        if let Some(pid) = self.pid {
            s.push_str(&format!("[{pid}]"));
        }
        if let Some(q) = &self.queue_id {
            s.push(' ');
            s.push_str(q);
        }
        s.push(' ');
        s.push_str(self.kind.name());
        s.push(':');
        // The outcome first: what the operator scans for.
        let order = [
            "status",
            "code",
            "dsn",
            "relay",
            "delay",
            "to",
            "from",
            "user",
            "method",
            "reason",
            "new_queue_id",
            "client",
            "size",
            "nrcpt",
            "message",
        ];
        for k in order {
            if let Some(v) = self.fields.get(k) {
                let v = match v {
                    Value::String(s) if s.contains(' ') => format!("({s})"),
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                s.push_str(&format!(" {k}={v}"));
            }
        }
        if let Some(t) = self.get("text").or(self.get("message_id")) {
            s.push_str(&format!(" {t}"));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Ts = 1_795_823_100_000_000_000;

    #[test]
    fn postfix_line_to_json_hides_raw_and_message_id_by_default() {
        let l = parse(
            "Nov 27 23:39:56 mx postfix/cleanup[14352]: A74CF98E292: message-id=<20261127@client.test>\n",
            &Clock::utc(NOW),
        )
        .unwrap();
        assert_eq!(
            l.clone().redacted(Privacy::default()).record_json(7),
            json!({"type":"log","session":7,"ts":"2026-11-27T23:39:56.000000Z","program":"postfix/cleanup","pid":14352,"queue_id":"A74CF98E292","event":"message-id","fields":{}})
        );
        let open = l.redacted(Privacy {
            show_headers: true,
            show_secrets: false,
        });
        assert_eq!(
            open.to_json()["line"],
            "Nov 27 23:39:56 mx postfix/cleanup[14352]: A74CF98E292: message-id=<20261127@client.test>"
        );
        assert_eq!(
            open.to_json()["fields"]["message_id"],
            "20261127@client.test"
        );
    }

    #[test]
    fn delivery_summary_and_dovecot_line() {
        let l = parse("Nov 27 23:39:56 mx postfix/virtual[14354]: A74CF98E292: to=<alice@mx.test>, relay=virtual, delay=0.1, delays=0.09/0.01/0/0.01, dsn=2.0.0, status=sent (delivered to maildir)", &Clock::utc(NOW)).unwrap();
        assert_eq!(
            l.summary(),
            "postfix/virtual[14354] A74CF98E292 delivery: status=sent dsn=2.0.0 relay=virtual delay=0.1 to=alice@mx.test reason=(delivered to maildir)"
        );
        let l = parse("Nov 27 23:40:03 imap-login: Info: Disconnected: Aborted login by logging out (auth failed, 1 attempts in 1 secs): user=<alice@mx.test>, method=PLAIN, rip=10.99.152.1, lip=10.99.152.2, session=<MHM+lEphvsoKY5gB>", &Clock::utc(NOW)).unwrap();
        assert_eq!(
            (l.program.as_str(), l.kind, l.pid),
            ("imap-login", Kind::LoginFailed, None)
        );
        assert_eq!(l.get("rip"), Some("10.99.152.1"));
    }

    #[test]
    fn other_programs_and_long_lines() {
        assert_eq!(
            parse(
                "Nov 27 23:39:52 master: Info: Dovecot v2.3.19.1 starting up",
                &Clock::utc(NOW)
            ),
            None
        );
        assert_eq!(
            parse(
                "Nov 27 23:39:52 mx sshd[1]: Accepted publickey",
                &Clock::utc(NOW)
            ),
            None
        );
        let long = format!(
            "Nov 27 23:39:56 mx postfix/smtpd[1]: warning: {}",
            "é".repeat(10_000)
        );
        let l = parse(&long, &Clock::utc(NOW)).unwrap();
        assert!(l.raw.len() <= MAX_LINE && l.raw.len() > MAX_LINE - 2);
    }

    proptest::proptest! {
        #[test]
        fn never_panics_on_any_line(s in "\\PC{0,200}") {
            let _ = parse(&s, &Clock::utc(NOW));
        }

        #[test]
        fn never_panics_on_lines_shaped_like_ours(
            stamp in "(Nov 27 23:39:56|2026-11-27T23:15:02(\\.[0-9é]{0,12})?([+-][0-9:é]{0,6}|Z)?)",
            tag in "(mx postfix/smtpd\\[1\\]|imap-login|mx dovecot|imap\\([a-z@]{0,5}\\)<[0-9]{0,3}><[a-z]{0,3}>)",
            id in "(NOQUEUE|A74CF98E292|warning|)",
            rest in "[ -~é<>\\[\\]:;,=()]{0,120}",
        ) {
            let _ = parse(&format!("{stamp} {tag}: {id}: {rest}"), &Clock::utc(NOW));
        }
    }
}
