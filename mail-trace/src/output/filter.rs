//! A sink that passes on only the sessions whose final record satisfies a
//! predicate (`--findings SEVERITY`; the live tail's `--errors` too).
//!
//! A session's start and events are held until its record decides. Holding is
//! bounded: past [`MAX_HELD_EVENTS`] events a session keeps only its start, and
//! a passing session then shows its start, the note `events-dropped-by-filter`,
//! and its record.
use std::collections::HashMap;

use crate::flow::ConnId;
use crate::proto::Event;
use crate::session::{SessionInfo, SessionRecord, Sink};

/// Events held per session while its outcome is unknown.
pub const MAX_HELD_EVENTS: usize = 4096;

struct Held {
    info: SessionInfo,
    events: Vec<Event>,
    overflowed: bool,
}

/// Wraps `inner`; see the module docs. Without a predicate everything passes
/// straight through, nothing held.
pub struct Filter<S, P> {
    inner: S,
    keep: Option<P>,
    held: HashMap<ConnId, Held>,
}

impl<S: Sink, P: FnMut(&SessionRecord) -> bool> Filter<S, P> {
    pub fn new(inner: S, keep: Option<P>) -> Self {
        Filter {
            inner,
            keep,
            held: HashMap::new(),
        }
    }

    pub fn inner(&self) -> &S {
        &self.inner
    }

    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Sink, P: FnMut(&SessionRecord) -> bool> Sink for Filter<S, P> {
    fn session_start(&mut self, info: &SessionInfo) {
        if self.keep.is_none() {
            return self.inner.session_start(info);
        }
        self.held.insert(
            info.id,
            Held {
                info: info.clone(),
                events: Vec::new(),
                overflowed: false,
            },
        );
    }

    fn event(&mut self, info: &SessionInfo, event: &Event) {
        if self.keep.is_none() {
            return self.inner.event(info, event);
        }
        let Some(h) = self.held.get_mut(&info.id) else {
            return;
        };
        if h.overflowed {
            return;
        }
        if h.events.len() < MAX_HELD_EVENTS {
            h.events.push(event.clone());
        } else {
            h.overflowed = true;
            h.events.clear();
            h.events.shrink_to_fit();
        }
    }

    fn session_end(&mut self, info: &SessionInfo, record: &SessionRecord) {
        let Some(keep) = self.keep.as_mut() else {
            return self.inner.session_end(info, record);
        };
        let held = self.held.remove(&info.id);
        if !keep(record) {
            return;
        }
        if let Some(h) = held {
            self.inner.session_start(&h.info);
            if h.overflowed {
                let ts = h.info.start;
                let note = Event::Anomaly {
                    ts,
                    id: "events-dropped-by-filter",
                };
                self.inner.event(&h.info, &note);
            } else {
                for e in &h.events {
                    self.inner.event(&h.info, e);
                }
            }
        }
        self.inner.session_end(info, record);
    }
}

/// The `--findings` predicate: a finding at or above `min` in the record.
pub fn findings_at_least(min: crate::findings::Severity) -> impl FnMut(&SessionRecord) -> bool {
    move |rec| crate::findings::max_severity(rec.field("findings")).is_some_and(|s| s >= min)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::findings::Severity;
    use crate::flow::CloseReason;
    use crate::proto::Proto;

    #[derive(Default)]
    struct Log(Vec<String>);
    impl Sink for Log {
        fn session_start(&mut self, i: &SessionInfo) {
            self.0.push(format!("start {}", i.id));
        }
        fn event(&mut self, i: &SessionInfo, e: &Event) {
            let what = match e {
                Event::Anomaly { id, .. } => id.to_string(),
                _ => "event".into(),
            };
            self.0.push(format!("{what} {}", i.id));
        }
        fn session_end(&mut self, i: &SessionInfo, _: &SessionRecord) {
            self.0.push(format!("end {}", i.id));
        }
    }

    fn info(id: ConnId) -> SessionInfo {
        SessionInfo {
            id,
            proto: Proto::Smtp,
            client: "10.99.0.1:40000".parse().unwrap(),
            server: "10.99.0.2:25".parse().unwrap(),
            start: 0,
            partial: false,
            implicit_tls: false,
        }
    }

    fn record(id: ConnId, severities: &[&str]) -> SessionRecord {
        let list: Vec<_> = severities
            .iter()
            .map(|s| serde_json::json!({"id": "x", "severity": s, "reason": "r"}))
            .collect();
        let mut fields = serde_json::Map::new();
        fields.insert("findings".into(), list.into());
        SessionRecord {
            id,
            proto: Proto::Smtp,
            start: 0,
            end: 0,
            client: info(id).client,
            server: info(id).server,
            partial: false,
            gaps: 0,
            close: CloseReason::Fin,
            commands: 0,
            replies: 0,
            bytes: [0, 0],
            anomalies: vec![],
            fields,
        }
    }

    #[test]
    fn passes_only_sessions_at_or_above_the_severity_in_order() {
        let mut f = Filter::new(Log::default(), Some(findings_at_least(Severity::Warn)));
        let ev = Event::TlsStarted { ts: 1 };
        f.session_start(&info(1));
        f.session_start(&info(2));
        f.event(&info(1), &ev);
        f.event(&info(2), &ev);
        f.event(&info(2), &ev);
        f.session_end(&info(2), &record(2, &["info", "alert"]));
        f.session_end(&info(1), &record(1, &["info"]));
        f.session_start(&info(3));
        f.session_end(&info(3), &record(3, &[]));
        assert_eq!(
            f.into_inner().0,
            vec!["start 2", "event 2", "event 2", "end 2"]
        );
    }

    #[test]
    fn holding_is_bounded() {
        let mut f = Filter::new(Log::default(), Some(|_: &SessionRecord| true));
        f.session_start(&info(1));
        for _ in 0..MAX_HELD_EVENTS + 10 {
            f.event(&info(1), &Event::TlsStarted { ts: 1 });
        }
        assert!(f.held[&1].events.is_empty());
        f.session_end(&info(1), &record(1, &[]));
        assert_eq!(
            f.into_inner().0,
            vec!["start 1", "events-dropped-by-filter 1", "end 1"]
        );
    }

    #[test]
    fn without_a_predicate_everything_streams() {
        let mut f = Filter::new(Log::default(), None::<fn(&SessionRecord) -> bool>);
        f.session_start(&info(1));
        assert!(f.held.is_empty());
        assert_eq!(f.inner().0, vec!["start 1"]);
        f.session_end(&info(1), &record(1, &[]));
        assert_eq!(f.into_inner().0, vec!["start 1", "end 1"]);
    }
}
