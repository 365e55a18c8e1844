//! The human view: a header line when a session starts, one line per command
//! (`C`) and reply (`S`), a closing line with the outcome. Sessions interleave on
//! a busy host, so every line carries the session id.
use std::io::Write;

use serde_json::Value;

use super::printable::{printable, Printable};
use crate::flow::Dir;
use crate::proto::{Event, Privacy, Proto};
use crate::session::{SessionInfo, SessionRecord, Sink};
use crate::time::{millis_between, Ts};

/// Terminal colours, or none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Style {
    pub color: bool,
    /// Print the plain-English meaning beside failure replies (`--explain`).
    pub explain: bool,
}

impl Style {
    fn paint(&self, code: &str, text: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }
}

/// Clock time of day (UTC) with microseconds, like tcpdump.
pub fn clock(ts: Ts) -> String {
    let secs = ts / 1_000_000_000;
    let micros = (ts % 1_000_000_000) / 1_000;
    format!(
        "{:02}:{:02}:{:02}.{:06}",
        (secs / 3600) % 24,
        (secs / 60) % 60,
        secs % 60,
        micros
    )
}

/// The result of a failed AUTH/LOGIN/USER+PASS as the server gave it (`535`,
/// `NO`, `-ERR`), or None when it succeeded or is unknown (no reply seen).
fn auth_failure(auth: &Value) -> Option<String> {
    match (auth.get("code"), auth.get("result").and_then(Value::as_str)) {
        (Some(Value::Number(c)), _) => {
            let c = c.as_u64()?;
            (!(200..300).contains(&c)).then(|| c.to_string())
        }
        (_, Some(r)) => (r != "OK" && r != "+OK").then(|| printable(r).into_owned()),
        _ => None,
    }
}

/// A multi-line reply folded to one line: the first line's text, then the first
/// word of every further line in brackets (EHLO keywords, CAPA lines).
pub fn fold_reply(text: &str) -> String {
    let mut lines = text.split(crate::proto::REPLY_LINE_SEP);
    let first = lines.next().unwrap_or("").to_string();
    // AUTH keeps its mechanisms: which ones are offered is what gets asked.
    let keys: Vec<String> = lines
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let key = words.next()?;
            let rest: Vec<&str> = words.collect();
            Some(if key.eq_ignore_ascii_case("AUTH") && !rest.is_empty() {
                format!("{key}={}", rest.join(","))
            } else {
                key.to_string()
            })
        })
        .collect();
    if keys.is_empty() {
        first
    } else {
        format!("{first} [{}]", keys.join(" "))
    }
}

/// The session tail. Write errors are kept (first one) and end output.
pub struct Tail<W: Write> {
    out: W,
    style: Style,
    privacy: Privacy,
    error: Option<std::io::Error>,
}

impl<W: Write> Tail<W> {
    pub fn new(out: W, style: Style, privacy: Privacy) -> Self {
        Tail {
            out,
            style,
            privacy,
            error: None,
        }
    }

    pub fn error(&self) -> Option<&std::io::Error> {
        self.error.as_ref()
    }

    pub fn into_inner(self) -> W {
        self.out
    }

    pub fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }

    fn line(&mut self, ts: Ts, id: u64, body: &str) {
        if self.error.is_some() {
            return;
        }
        let prefix = format!("{} {}", clock(ts), self.style.paint("2", &format!("#{id}")));
        if let Err(e) = writeln!(self.out, "{prefix} {body}") {
            self.error = Some(e);
        }
    }

    /// The line for one event (without time and id), or None for events not shown.
    pub fn event_body(&self, ev: &Event) -> Option<String> {
        Some(match ev {
            Event::Command { verb, arg, .. } => {
                let text = if arg.is_empty() {
                    verb.clone()
                } else {
                    format!("{verb} {arg}")
                };
                format!("{} {}", self.style.paint("36", "C"), printable(&text))
            }
            Event::Reply {
                code,
                enhanced,
                text,
                latency_ns,
                ..
            } => {
                let colour = match code.as_bytes().first() {
                    Some(b'4') => "33",
                    Some(b'5') | Some(b'-') => "31",
                    _ if code == "NO" || code == "BAD" => "31",
                    _ => "32",
                };
                let mut s = format!(
                    "{} {}",
                    self.style.paint("35", "S"),
                    self.style.paint(colour, &printable(code))
                );
                if let Some(e) = enhanced {
                    // SMTP shows its X.Y.Z where the wire has it; POP3/IMAP codes go in brackets.
                    if code.parse::<u16>().is_ok() {
                        s.push_str(&format!(" {}", Printable(e)));
                    } else {
                        s.push_str(&format!(" [{}]", Printable(e)));
                    }
                }
                // Only SMTP joins the lines of one reply: IMAP's `*` summary is
                // joined the same way but its parts are not keywords to fold.
                let folded = if code.parse::<u16>().is_ok() {
                    fold_reply(text)
                } else {
                    text.clone()
                };
                if !folded.is_empty() {
                    s.push(' ');
                    s.push_str(&printable(&folded));
                }
                if let Some(ns) = latency_ns {
                    s.push_str(
                        &self
                            .style
                            .paint("2", &format!(" ({:.1} ms)", millis_between(0, *ns))),
                    );
                }
                if self.style.explain {
                    if let Some(words) = crate::explain::failure(code, enhanced.as_deref()) {
                        s.push_str(&self.style.paint("33", &format!(" — {words}")));
                    }
                }
                s
            }
            Event::TlsStarted { .. } => "-- TLS: the rest of the session is encrypted".to_string(),
            Event::Anomaly { id, .. } => self.style.paint("33", &format!("!! anomaly: {id}")),
            Event::Finding { finding: f, .. } => {
                let colour = match f.severity {
                    crate::findings::Severity::Info => "36",
                    crate::findings::Severity::Warn => "33",
                    crate::findings::Severity::Alert => "1;31",
                };
                // A reason quotes the wire (addresses, names).
                let line = format!(
                    "!! {} {}: {}",
                    f.severity.as_str(),
                    f.id,
                    Printable(&f.reason)
                );
                self.style.paint(colour, &line)
            }
        })
    }
}

/// The closing line's text, from the finished record.
pub fn outcome(rec: &SessionRecord) -> String {
    let mut parts: Vec<String> = Vec::new();
    if rec.proto == Proto::Smtp {
        let txs = rec.field("transactions").and_then(Value::as_array);
        let (mut queued, mut ids, mut ok, mut bad) = (0, Vec::new(), 0, 0);
        for tx in txs.into_iter().flatten() {
            if let Some(q) = tx.get("queue_id").and_then(Value::as_str) {
                queued += 1;
                ids.push(printable(q).into_owned());
            } else if tx
                .get("reply")
                .and_then(|r| r.get("code"))
                .and_then(Value::as_u64)
                .is_some_and(|c| (200..300).contains(&c))
            {
                queued += 1;
            }
            for r in tx
                .get("rcpt")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                match r.get("code").and_then(Value::as_u64) {
                    Some(c) if (200..300).contains(&c) => ok += 1,
                    _ => bad += 1,
                }
            }
        }
        let msgs = if ids.is_empty() {
            format!("{queued} queued")
        } else {
            format!("{queued} queued ({})", ids.join(", "))
        };
        parts.push(msgs);
        parts.push(format!("rcpt {ok} ok / {bad} rejected"));
    }
    if let Some(auth) = rec.field("auth") {
        if let Some(user) = auth.get("user").and_then(Value::as_str) {
            let user = printable(user);
            // A failed login must not read like a successful one.
            match auth_failure(auth) {
                Some(result) => parts.push(format!("auth {user} FAILED ({result})")),
                None => parts.push(format!("auth {user}")),
            }
        }
    }
    let tls = match rec.field("tls_mode").and_then(Value::as_str) {
        Some(mode) => {
            let info = rec.field("tls_info");
            let get = |k: &str| info.and_then(|i| i.get(k)).and_then(Value::as_str);
            let facts: Vec<std::borrow::Cow<'_, str>> = [get("sni"), get("version"), get("cipher")]
                .into_iter()
                .flatten()
                .map(printable)
                .collect();
            if facts.is_empty() {
                format!("tls {mode}")
            } else {
                format!("tls {mode} ({})", facts.join(" "))
            }
        }
        None => "no tls".to_string(),
    };
    parts.push(tls);
    parts.push(format!(
        "{:.3} s",
        millis_between(rec.start, rec.end) / 1000.0
    ));
    parts.push(format!("{}/{} bytes", rec.bytes[0], rec.bytes[1]));
    if rec.gaps > 0 {
        parts.push(format!("gaps {} bytes", rec.gaps));
    }
    parts.join(", ")
}

impl<W: Write> Sink for Tail<W> {
    fn session_start(&mut self, info: &SessionInfo) {
        let mut tags = Vec::new();
        if info.partial {
            tags.push("partial");
        }
        if info.implicit_tls {
            tags.push("implicit TLS");
        }
        if self.privacy.show_headers {
            tags.push("HEADERS SHOWN");
        }
        if self.privacy.show_secrets {
            tags.push("SECRETS SHOWN");
        }
        let proto = format!("{:?}", info.proto).to_uppercase();
        let mut body = format!(
            "{} {} -> {}",
            self.style.paint("1", &proto),
            info.client,
            info.server
        );
        if let Some(p) = &info.process {
            // A process name is whatever its owner chose (comm, /proc).
            body.push_str(&format!(" {}", printable(&p.to_string())));
        }
        if !tags.is_empty() {
            body.push_str(&format!(" [{}]", tags.join(", ")));
        }
        self.line(info.start, info.id, &body);
    }

    fn event(&mut self, info: &SessionInfo, ev: &Event) {
        if let Some(body) = self.event_body(ev) {
            let ts = match ev {
                Event::Command { ts, .. }
                | Event::Reply { ts, .. }
                | Event::TlsStarted { ts }
                | Event::Anomaly { ts, .. }
                | Event::Finding { ts, .. } => *ts,
            };
            self.line(ts, info.id, &body);
        }
    }

    fn gap(&mut self, info: &SessionInfo, dir: Dir, len: u64, ts: Ts) {
        let side = match dir {
            Dir::ToServer => "client",
            Dir::ToClient => "server",
        };
        let body = self.style.paint(
            "33",
            &format!("[gap {len} bytes from the {side}: capture lost data]"),
        );
        self.line(ts, info.id, &body);
    }

    fn session_end(&mut self, info: &SessionInfo, record: &SessionRecord) {
        let body = format!("{} {}", self.style.paint("1", "end:"), outcome(record));
        self.line(record.end, info.id, &body);
    }

    /// Printed as the line arrives, also after `end:` (deliveries come later).
    fn log(&mut self, session: crate::flow::ConnId, line: &crate::maillog::LogLine, _late: bool) {
        let body = format!(
            "{} {}",
            self.style.paint("34", "log:"),
            printable(&line.summary())
        );
        self.line(line.ts, session, &body);
    }

    fn unmatched(&mut self, line: &crate::maillog::LogLine, why: &str) {
        if self.error.is_some() {
            return;
        }
        let body = format!(
            "{} {} ({})",
            self.style.paint("33", "log unmatched:"),
            printable(&line.summary()),
            printable(why)
        );
        if let Err(e) = writeln!(self.out, "{} {body}", clock(line.ts)) {
            self.error = Some(e);
        }
    }
}

/// `--summary`: one line per finished session.
pub struct Summary<W: Write> {
    out: W,
    error: Option<std::io::Error>,
}

impl<W: Write> Summary<W> {
    pub fn new(out: W) -> Self {
        Summary { out, error: None }
    }

    pub fn error(&self) -> Option<&std::io::Error> {
        self.error.as_ref()
    }

    pub fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

impl<W: Write> Sink for Summary<W> {
    fn session_start(&mut self, _: &SessionInfo) {}
    fn event(&mut self, _: &SessionInfo, _: &Event) {}
    fn session_end(&mut self, info: &SessionInfo, rec: &SessionRecord) {
        if self.error.is_some() {
            return;
        }
        let proto = format!("{:?}", info.proto).to_lowercase();
        let helo = rec
            .field("helo")
            .or_else(|| rec.field("user"))
            .and_then(Value::as_str)
            .unwrap_or("-");
        let r = writeln!(
            self.out,
            "{} #{} {} {} -> {} {} | {}",
            clock(rec.start),
            info.id,
            proto,
            info.client,
            info.server,
            Printable(helo),
            outcome(rec)
        );
        if let Err(e) = r {
            self.error = Some(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn clock_and_folding() {
        assert_eq!(clock(3_723_000_456_000), "01:02:03.000456");
        let sep = crate::proto::REPLY_LINE_SEP;
        let ehlo = [
            "mx.test",
            "PIPELINING",
            "SIZE 10240000",
            "STARTTLS",
            "AUTH PLAIN LOGIN",
        ]
        .join(sep);
        assert_eq!(
            fold_reply(&ehlo),
            "mx.test [PIPELINING SIZE STARTTLS AUTH=PLAIN,LOGIN]"
        );
        assert_eq!(fold_reply("2.0.0 Ok"), "2.0.0 Ok");
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

    #[test]
    fn imap_untagged_summary_is_not_folded_like_an_ehlo() {
        let style = Style {
            color: false,
            explain: false,
        };
        let t = Tail::new(Vec::new(), style, Privacy::default());
        let sep = crate::proto::REPLY_LINE_SEP;
        let summary = ["EXISTS 1", "RECENT 1", "1 FLAGS", "5 OK"].join(sep);
        assert_eq!(
            t.event_body(&reply("*", &summary)).as_deref(),
            Some("S * EXISTS 1 / RECENT 1 / 1 FLAGS / 5 OK")
        );
        let ehlo = ["mx.test", "PIPELINING", "SIZE 10240000"].join(sep);
        assert_eq!(
            t.event_body(&reply("250", &ehlo)).as_deref(),
            Some("S 250 mx.test [PIPELINING SIZE]")
        );
    }

    #[test]
    fn failed_auth_says_so_in_the_outcome() {
        let cases = [
            (
                json!({"mechanism": "PLAIN", "user": "a@x", "code": 535}),
                "auth a@x FAILED (535)",
            ),
            (
                json!({"mechanism": "PLAIN", "user": "a@x", "code": 235}),
                "auth a@x, ",
            ),
            (
                json!({"mechanism": "PLAIN", "user": "a@x", "code": null}),
                "auth a@x, ",
            ),
            (
                json!({"mechanism": "LOGIN", "user": "a@x", "result": "NO"}),
                "auth a@x FAILED (NO)",
            ),
            (
                json!({"mechanism": "LOGIN", "user": "a@x", "result": "OK"}),
                "auth a@x, ",
            ),
            (
                json!({"mechanism": "USER", "user": "a@x", "result": "-ERR"}),
                "auth a@x FAILED (-ERR)",
            ),
            (
                json!({"mechanism": "USER", "user": "a@x", "result": "+OK"}),
                "auth a@x, ",
            ),
        ];
        for (auth, want) in cases {
            let mut fields = serde_json::Map::new();
            fields.insert("auth".into(), auth.clone());
            let rec = SessionRecord {
                id: 1,
                proto: Proto::Imap,
                start: 0,
                end: 0,
                client: "10.0.0.1:1000".parse().unwrap(),
                server: "10.0.0.2:143".parse().unwrap(),
                partial: false,
                gaps: 0,
                close: crate::flow::CloseReason::Fin,
                commands: 0,
                replies: 0,
                bytes: [0, 0],
                anomalies: vec![],
                fields: fields.into(),
            };
            let out = outcome(&rec);
            assert!(out.starts_with(want), "{auth}: {out}");
        }
    }
}
