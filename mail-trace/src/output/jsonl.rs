//! `--json`: one JSON object per line — a `session` record when a session ends
//! and, with `--events`, a `command`/`reply`/`tls`/`anomaly`/`finding` record as each
//! happens. Field by field in docs/json.md.
use std::io::Write;

use serde_json::{json, Value};

use crate::flow::Dir;
use crate::proto::Event;
use crate::session::{SessionInfo, SessionRecord, Sink};
use crate::time::{millis_between, Rfc3339, Ts};

/// Writes JSON lines to any writer. The first write error (a closed pipe, a full
/// disk) is kept and every later write is skipped, so the caller can stop cleanly.
pub struct JsonLines<W: Write> {
    out: W,
    events: bool,
    error: Option<std::io::Error>,
}

impl<W: Write> JsonLines<W> {
    pub fn new(out: W, events: bool) -> Self {
        JsonLines {
            out,
            events,
            error: None,
        }
    }

    /// The first write error, if any.
    pub fn error(&self) -> Option<&std::io::Error> {
        self.error.as_ref()
    }

    pub fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }

    pub fn into_inner(self) -> W {
        self.out
    }

    fn line(&mut self, v: &impl serde::Serialize) {
        if self.error.is_some() {
            return;
        }
        let r = serde_json::to_writer(&mut self.out, v)
            .map_err(std::io::Error::from)
            .and_then(|()| self.out.write_all(b"\n"));
        if let Err(e) = r {
            self.error = Some(e);
        }
    }
}

/// An SMTP code as a number, other protocols' status words as strings.
pub fn code_value(code: &str) -> Value {
    match code.parse::<u16>() {
        Ok(n) if code.len() == 3 => Value::from(n),
        _ => Value::from(code),
    }
}

/// The JSON form of one event (`--events`).
pub fn event_json(info: &SessionInfo, ev: &Event) -> Value {
    match ev {
        Event::Command { ts, verb, arg } => json!({
            "type": "command", "session": info.id, "ts": Rfc3339::new(*ts), "dir": "c",
            "verb": verb, "arg": arg,
        }),
        Event::Reply {
            ts,
            code,
            enhanced,
            text,
            latency_ns,
        } => json!({
            "type": "reply", "session": info.id, "ts": Rfc3339::new(*ts), "dir": "s",
            "code": code_value(code), "enhanced": enhanced, "text": text,
            "latency_ms": latency_ns.map(|ns| millis_between(0, ns)),
            "explain": crate::explain::failure(code, enhanced.as_deref()),
        }),
        Event::TlsStarted { ts } => json!({
            "type": "tls", "session": info.id, "ts": Rfc3339::new(*ts),
        }),
        Event::Anomaly { ts, id } => json!({
            "type": "anomaly", "session": info.id, "ts": Rfc3339::new(*ts), "id": id,
        }),
        Event::Finding { ts, finding } => json!({
            "type": "finding", "session": info.id, "ts": Rfc3339::new(*ts), "id": finding.id,
            "severity": finding.severity, "reason": finding.reason,
        }),
    }
}

impl<W: Write> Sink for JsonLines<W> {
    fn session_start(&mut self, _info: &SessionInfo) {}

    fn event(&mut self, info: &SessionInfo, ev: &Event) {
        if self.events {
            self.line(&event_json(info, ev));
        }
    }

    fn gap(&mut self, info: &SessionInfo, dir: Dir, len: u64, ts: Ts) {
        if self.events {
            let dir = match dir {
                Dir::ToServer => "c",
                Dir::ToClient => "s",
            };
            self.line(&json!({
                "type": "gap", "session": info.id, "ts": Rfc3339::new(ts), "dir": dir, "bytes": len,
            }));
        }
    }

    fn session_end(&mut self, _info: &SessionInfo, record: &SessionRecord) {
        if self.error.is_some() {
            return;
        }
        let r = record
            .write_json(&mut self.out)
            .map_err(std::io::Error::from)
            .and_then(|()| self.out.write_all(b"\n"));
        if let Err(e) = r {
            self.error = Some(e);
        }
    }

    /// Lines joined before the record was written are in its `log` list.
    fn log(&mut self, session: crate::flow::ConnId, line: &crate::maillog::LogLine, late: bool) {
        if late || self.events {
            self.line(&line.record_json(session));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::Proto;

    fn info() -> SessionInfo {
        SessionInfo {
            id: 3,
            proto: Proto::Smtp,
            client: "10.99.0.1:40000".parse().unwrap(),
            server: "10.99.0.2:25".parse().unwrap(),
            start: 0,
            partial: false,
            implicit_tls: false,
            process: None,
        }
    }

    #[test]
    fn events_only_with_the_flag() {
        let ev = Event::Reply {
            ts: 1_500_000,
            code: "250".into(),
            enhanced: Some("2.1.0".into()),
            text: "Ok".into(),
            latency_ns: Some(1_234_567),
        };
        let mut quiet = JsonLines::new(Vec::new(), false);
        quiet.event(&info(), &ev);
        assert!(quiet.into_inner().is_empty());
        let mut loud = JsonLines::new(Vec::new(), true);
        loud.event(&info(), &ev);
        assert_eq!(
            String::from_utf8(loud.into_inner()).unwrap(),
            "{\"type\":\"reply\",\"session\":3,\"ts\":\"1970-01-01T00:00:00.001500Z\",\"dir\":\"s\",\"code\":250,\"enhanced\":\"2.1.0\",\"text\":\"Ok\",\"latency_ms\":1.234,\"explain\":null}\n"
        );
    }

    #[test]
    fn keeps_the_first_write_error_and_stops() {
        struct Broken(u32);
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                self.0 += 1;
                Err(std::io::Error::from(std::io::ErrorKind::BrokenPipe))
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut j = JsonLines::new(Broken(0), true);
        let ev = Event::TlsStarted { ts: 0 };
        j.event(&info(), &ev);
        j.event(&info(), &ev);
        assert_eq!(j.error().unwrap().kind(), std::io::ErrorKind::BrokenPipe);
        assert_eq!(j.into_inner().0, 1);
    }
}
