//! `--json`: one JSON object per line — a `session` record when a session ends
//! and, with `--events`, a `command`/`reply`/`tls`/`anomaly`/`finding` record as each
//! happens. Field by field in docs/json.md.
use std::io::Write;

use serde_json::Value;

use crate::flow::Dir;
use crate::proto::Event;
use crate::session::record::{AsMap, Entries, Object, RawObject};
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

    /// The first line of a run: `{"type":"run", …}` (see [`crate::output::Outputs::run`]).
    pub fn run(&mut self, v: &Value) {
        self.line(v);
    }

    /// One line written straight into the output (see [`RawObject`]).
    fn object(&mut self, v: &impl Object) {
        if self.error.is_some() {
            return;
        }
        let r = RawObject::write(&mut self.out, v)
            .map_err(std::io::Error::from)
            .and_then(|()| self.out.write_all(b"\n"));
        if let Err(e) = r {
            self.error = Some(e);
        }
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

/// The JSON form of one event (`--events`).
pub fn event_json(info: &SessionInfo, ev: &Event) -> Value {
    serde_json::to_value(AsMap(&EventLine { info, ev })).unwrap_or(Value::Null)
}

/// One event's line, its entries listed once for [`RawObject`] (the output) and serde.
struct EventLine<'a> {
    info: &'a SessionInfo,
    ev: &'a Event,
}

impl Object for EventLine<'_> {
    fn entries<E: Entries>(&self, m: &mut E) -> Result<(), E::Error> {
        let (kind, ts) = match self.ev {
            Event::Command { ts, .. } => ("command", ts),
            Event::Reply { ts, .. } => ("reply", ts),
            Event::TlsStarted { ts } => ("tls", ts),
            Event::Anomaly { ts, .. } => ("anomaly", ts),
            Event::Finding { ts, .. } => ("finding", ts),
        };
        m.entry("type", kind)?;
        m.entry("session", &self.info.id)?;
        m.entry("ts", &Rfc3339::new(*ts))?;
        match self.ev {
            Event::Command { verb, arg, .. } => {
                m.entry("dir", "c")?;
                m.entry("verb", verb)?;
                m.entry("arg", arg)
            }
            Event::Reply {
                code,
                enhanced,
                text,
                latency_ns,
                ..
            } => {
                m.entry("dir", "s")?;
                // An SMTP code as a number, other protocols' status words as strings.
                match code.parse::<u16>() {
                    Ok(n) if code.len() == 3 => m.entry("code", &n)?,
                    _ => m.entry("code", code)?,
                }
                m.entry("enhanced", enhanced)?;
                m.entry("text", text)?;
                m.entry("latency_ms", &latency_ns.map(|ns| millis_between(0, ns)))?;
                m.entry(
                    "explain",
                    &crate::explain::failure(code, enhanced.as_deref()),
                )
            }
            Event::TlsStarted { .. } => Ok(()),
            Event::Anomaly { id, .. } => m.entry("id", id),
            Event::Finding { finding, .. } => {
                m.entry("id", finding.id)?;
                m.entry("severity", &finding.severity)?;
                m.entry("reason", &finding.reason)
            }
        }
    }
}

/// A `gap` line (`--events`).
struct GapLine<'a> {
    info: &'a SessionInfo,
    dir: Dir,
    len: u64,
    ts: Ts,
}

impl Object for GapLine<'_> {
    fn entries<E: Entries>(&self, m: &mut E) -> Result<(), E::Error> {
        m.entry("type", "gap")?;
        m.entry("session", &self.info.id)?;
        m.entry("ts", &Rfc3339::new(self.ts))?;
        let dir = match self.dir {
            Dir::ToServer => "c",
            Dir::ToClient => "s",
        };
        m.entry("dir", dir)?;
        m.entry("bytes", &self.len)
    }
}

impl<W: Write> Sink for JsonLines<W> {
    fn session_start(&mut self, _info: &SessionInfo) {}

    fn event(&mut self, info: &SessionInfo, ev: &Event) {
        if self.events {
            self.object(&EventLine { info, ev });
        }
    }

    fn gap(&mut self, info: &SessionInfo, dir: Dir, len: u64, ts: Ts) {
        if self.events {
            self.object(&GapLine { info, dir, len, ts });
        }
    }

    fn session_end(&mut self, _info: &SessionInfo, record: &SessionRecord) {
        self.object(record);
    }

    /// Lines joined before the record was written are in its `log` list.
    fn log(&mut self, session: crate::flow::ConnId, line: &crate::maillog::LogLine, late: bool) {
        if late || self.events {
            self.line(&line.record_json(session));
        }
    }

    fn unmatched(&mut self, line: &crate::maillog::LogLine, why: &str) {
        self.line(&line.unmatched_json(why));
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
    fn every_event_kind_and_gap() {
        let evs = [
            Event::Command {
                ts: 2_000,
                verb: "MAIL".into(),
                arg: "FROM:<\"a\"@test>".into(),
            },
            Event::Reply {
                ts: 3_000,
                code: "+OK".into(),
                enhanced: None,
                text: "x".into(),
                latency_ns: None,
            },
            Event::TlsStarted { ts: 4_000 },
            Event::Anomaly {
                ts: 5_000,
                id: "bare-lf",
            },
            Event::Finding {
                ts: 6_000,
                finding: crate::findings::Finding::new("f", crate::findings::Severity::Warn, "why"),
            },
        ];
        let mut j = JsonLines::new(Vec::new(), true);
        for ev in &evs {
            j.event(&info(), ev);
        }
        j.gap(&info(), Dir::ToClient, 42, 7_000);
        let out = String::from_utf8(j.into_inner()).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        for (line, ev) in lines.iter().zip(&evs) {
            assert_eq!(*line, event_json(&info(), ev).to_string());
        }
        assert_eq!(
            lines[0],
            r#"{"type":"command","session":3,"ts":"1970-01-01T00:00:00.000002Z","dir":"c","verb":"MAIL","arg":"FROM:<\"a\"@test>"}"#
        );
        assert_eq!(
            lines[1],
            r#"{"type":"reply","session":3,"ts":"1970-01-01T00:00:00.000003Z","dir":"s","code":"+OK","enhanced":null,"text":"x","latency_ms":null,"explain":null}"#
        );
        assert_eq!(
            lines[4],
            r#"{"type":"finding","session":3,"ts":"1970-01-01T00:00:00.000006Z","id":"f","severity":"warn","reason":"why"}"#
        );
        assert_eq!(
            lines[5],
            r#"{"type":"gap","session":3,"ts":"1970-01-01T00:00:00.000007Z","dir":"s","bytes":42}"#
        );
        assert_eq!(lines.len(), 6);
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
