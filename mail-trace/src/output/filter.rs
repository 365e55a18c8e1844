//! Session selection for the live tail: `--proto`, `--from`/`--rcpt` (globs on
//! envelope addresses) and `--errors`. A session's lines are held until the
//! session is known to pass (then they are written, and later lines pass straight
//! through) or ends without passing (then they are dropped). What is held is
//! bounded per session and, all undecided sessions together, by [`Filter::max_held`]
//! (`--max-held`); frames for `-w` are held and released the same way. What a bound drops
//! is counted and said when the session is shown (`tail-lines-not-kept`).
use std::collections::{HashSet, VecDeque};

use crate::capture::Frame;
use crate::flow::{ConnId, Dir, FastMap};
use crate::proto::{Event, Proto};
use crate::session::{SessionInfo, SessionRecord, Sink};
use crate::time::Ts;

/// Events held for one undecided session before the oldest are dropped.
pub const MAX_HELD_EVENTS: usize = 512;
/// Frame bytes held for one undecided session (for `-w`).
pub const MAX_HELD_FRAME_BYTES: usize = 4 << 20;
/// Ended sessions remembered as shown, so that log lines arriving after the end (deliveries,
/// minutes later) follow them; as many as the log joiner remembers queue ids.
pub const MAX_ENDED_SHOWN: usize = 100_000;

/// What a session must show to be selected. Empty criteria select everything.
#[derive(Clone, Debug, Default)]
pub struct Criteria {
    /// Only these protocols (empty: all).
    pub protos: Vec<Proto>,
    /// A MAIL FROM address matching one of these globs (empty: any).
    pub from: Vec<String>,
    /// A RCPT TO address matching one of these globs (empty: any).
    pub rcpt: Vec<String>,
    /// A 4xx/5xx (or -ERR/NO/BAD) reply, a gap or an anomaly.
    pub errors: bool,
    /// A finding at or above this severity (`--findings`).
    pub findings: Option<crate::findings::Severity>,
}

impl Criteria {
    pub fn is_empty(&self) -> bool {
        self.protos.is_empty()
            && self.from.is_empty()
            && self.rcpt.is_empty()
            && !self.errors
            && self.findings.is_none()
    }
}

/// `*` and `?` globs, case-insensitive (mail addresses compare so in practice).
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (
        pattern.to_lowercase().chars().collect(),
        text.to_lowercase().chars().collect(),
    );
    // Iterative matcher with one backtrack point: linear in practice, no recursion.
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// The address inside `FROM:<a@b> …` / `TO:<a@b> …` (or a bare address).
fn envelope_addr(arg: &str) -> &str {
    let rest = arg.split_once(':').map_or(arg, |(_, r)| r).trim_start();
    match rest.strip_prefix('<') {
        Some(r) => r.split('>').next().unwrap_or(""),
        None => rest.split_whitespace().next().unwrap_or(""),
    }
}

enum Held {
    Start,
    Event(Event),
    Gap(Dir, u64, Ts),
}

#[derive(Default)]
struct Pending {
    held: Vec<Held>,
    dropped_events: u64,
    frames: Vec<Frame>,
    frame_bytes: usize,
    dropped_frames: u64,
    /// Bytes held (event texts, frames), in [`Filter::held_total`].
    bytes: usize,
    from_ok: bool,
    rcpt_ok: bool,
    error_ok: bool,
    findings_ok: bool,
}

enum State {
    Pending(Box<Pending>),
    Shown,
    Hidden,
}

/// Frames of selected sessions go here (`-w`).
pub trait FrameSink {
    fn frame(&mut self, frame: &Frame);
}

/// Wraps an output; see the module docs.
pub struct Filter<S: Sink> {
    pub inner: S,
    criteria: Criteria,
    /// Looked up for every event and frame: hashed with foldhash, not SipHash.
    sessions: FastMap<ConnId, State>,
    /// Shown sessions that have ended, oldest first, at most [`MAX_ENDED_SHOWN`].
    ended_shown: HashSet<ConnId, foldhash::fast::RandomState>,
    ended_order: VecDeque<ConnId>,
    /// Sessions shown and hidden so far.
    pub shown: u64,
    pub hidden: u64,
    /// Bytes all undecided sessions may hold together (`--max-held`, default 1 GiB): past
    /// it, new lines and frames of undecided sessions are dropped (and counted).
    pub max_held: usize,
    held_total: usize,
}

/// What a held line costs: its texts and the enum around them.
fn held_size(h: &Held) -> usize {
    let texts = match h {
        Held::Event(Event::Command { verb, arg, .. }) => verb.len() + arg.len(),
        Held::Event(Event::Reply {
            code,
            enhanced,
            text,
            ..
        }) => code.len() + enhanced.as_ref().map_or(0, String::len) + text.len(),
        Held::Event(Event::Finding { finding, .. }) => finding.reason.len(),
        _ => 0,
    };
    std::mem::size_of::<Held>() + texts
}

impl<S: Sink> Filter<S> {
    pub fn new(inner: S, criteria: Criteria) -> Self {
        Filter {
            inner,
            criteria,
            sessions: FastMap::default(),
            ended_shown: HashSet::default(),
            ended_order: VecDeque::new(),
            shown: 0,
            hidden: 0,
            max_held: 1 << 30,
            held_total: 0,
        }
    }

    /// Bytes the undecided sessions hold now.
    pub fn held_bytes(&self) -> usize {
        self.held_total
    }

    fn decided(&self, p: &Pending) -> bool {
        decided(&self.criteria, p)
    }

    /// Writes what a session held and lets the rest of it through.
    fn release(&mut self, info: &SessionInfo, p: Pending, frames: &mut dyn FrameSink) {
        self.shown += 1;
        self.held_total = self.held_total.saturating_sub(p.bytes);
        for h in p.held {
            match h {
                Held::Start => self.inner.session_start(info),
                Held::Event(ev) => self.inner.event(info, &ev),
                Held::Gap(dir, len, ts) => self.inner.gap(info, dir, len, ts),
            }
        }
        if p.dropped_events > 0 {
            let ev = Event::Anomaly {
                ts: info.start,
                id: "tail-lines-not-kept",
            };
            self.inner.event(info, &ev);
        }
        for f in &p.frames {
            frames.frame(f);
        }
        self.sessions.insert(info.id, State::Shown);
    }

    /// Passes a frame of session `id` on (or holds it while the session is undecided).
    pub fn frame(&mut self, id: Option<ConnId>, frame: &Frame, frames: &mut dyn FrameSink) {
        match id.and_then(|id| self.sessions.get_mut(&id)) {
            Some(State::Shown) => frames.frame(frame),
            Some(State::Pending(p)) => {
                let n = frame.data.len();
                if p.frame_bytes + n <= MAX_HELD_FRAME_BYTES && self.held_total + n <= self.max_held
                {
                    p.frame_bytes += n;
                    p.bytes += n;
                    self.held_total += n;
                    p.frames.push(frame.clone());
                } else {
                    p.dropped_frames += 1;
                }
            }
            // Frames before the session is recognised (the handshake) or of
            // unselected sessions: with no criteria everything is written.
            _ if self.criteria.is_empty() => frames.frame(frame),
            _ => {}
        }
    }

    fn note(&mut self, info: &SessionInfo, held: Held, frames: &mut dyn FrameSink) {
        let Some(State::Pending(p)) = self.sessions.get_mut(&info.id) else {
            return;
        };
        if let Held::Event(ev) = &held {
            match ev {
                Event::Command { verb, arg, .. } if verb == "MAIL" => {
                    let a = envelope_addr(arg);
                    p.from_ok |= self.criteria.from.iter().any(|g| glob_match(g, a));
                }
                Event::Command { verb, arg, .. } if verb == "RCPT" => {
                    let a = envelope_addr(arg);
                    p.rcpt_ok |= self.criteria.rcpt.iter().any(|g| glob_match(g, a));
                }
                Event::Reply { code, .. } => p.error_ok |= is_failure(code),
                Event::Anomaly { .. } => p.error_ok = true,
                // The engine sends every finding as an event before the record.
                Event::Finding { finding, .. } => {
                    p.findings_ok |= self
                        .criteria
                        .findings
                        .is_some_and(|m| finding.severity >= m);
                }
                _ => {}
            }
        }
        if let Held::Gap(..) = held {
            p.error_ok = true;
        }
        let size = held_size(&held);
        if p.held.len() >= MAX_HELD_EVENTS {
            // Keep the start line; drop the oldest events after it.
            let old = p.held.remove(1);
            p.dropped_events += 1;
            let freed = held_size(&old);
            p.bytes -= freed;
            self.held_total -= freed;
        }
        if self.held_total + size <= self.max_held {
            p.bytes += size;
            self.held_total += size;
            p.held.push(held);
        } else {
            // The budget of all undecided sessions is spent: this line is not kept (its facts
            // still decide the session, above).
            p.dropped_events += 1;
        }
        if decided(&self.criteria, p) {
            let Some(State::Pending(p)) = self.sessions.remove(&info.id) else {
                unreachable!("checked above")
            };
            self.release(info, *p, frames);
        }
    }
}

fn decided(c: &Criteria, p: &Pending) -> bool {
    (c.from.is_empty() || p.from_ok)
        && (c.rcpt.is_empty() || p.rcpt_ok)
        && (!c.errors || p.error_ok)
        && (c.findings.is_none() || p.findings_ok)
}

/// A failure reply of any protocol.
pub fn is_failure(code: &str) -> bool {
    matches!(code.as_bytes().first(), Some(b'4' | b'5')) || matches!(code, "-ERR" | "NO" | "BAD")
}

/// The filter as a [`Sink`] needs somewhere to put released frames; sessions
/// without `-w` use this.
pub struct NoFrames;

impl FrameSink for NoFrames {
    fn frame(&mut self, _: &Frame) {}
}

/// A [`Filter`] together with the frame output, as one [`Sink`] for the engine.
pub struct Selected<'a, S: Sink> {
    pub filter: &'a mut Filter<S>,
    pub frames: &'a mut dyn FrameSink,
}

impl<S: Sink> Sink for Selected<'_, S> {
    fn session_start(&mut self, info: &SessionInfo) {
        let f = &mut *self.filter;
        if !f.criteria.protos.is_empty() && !f.criteria.protos.contains(&info.proto) {
            f.hidden += 1;
            f.sessions.insert(info.id, State::Hidden);
            return;
        }
        let p = Pending {
            held: vec![Held::Start],
            ..Default::default()
        };
        if f.decided(&p) {
            f.release(info, p, self.frames);
        } else {
            f.sessions.insert(info.id, State::Pending(Box::new(p)));
        }
    }

    fn event(&mut self, info: &SessionInfo, ev: &Event) {
        match self.filter.sessions.get(&info.id) {
            Some(State::Shown) => self.filter.inner.event(info, ev),
            Some(State::Pending(_)) => self.filter.note(info, Held::Event(ev.clone()), self.frames),
            _ => {}
        }
    }

    fn gap(&mut self, info: &SessionInfo, dir: Dir, len: u64, ts: Ts) {
        match self.filter.sessions.get(&info.id) {
            Some(State::Shown) => self.filter.inner.gap(info, dir, len, ts),
            Some(State::Pending(_)) => self.filter.note(info, Held::Gap(dir, len, ts), self.frames),
            _ => {}
        }
    }

    /// Log lines of shown sessions, also those that arrive after the session ended (the
    /// delivery of a message selected by `--from` is what the operator waits for).
    fn log(&mut self, session: ConnId, line: &crate::maillog::LogLine, late: bool) {
        let f = &mut *self.filter;
        match f.sessions.get(&session) {
            Some(State::Shown) => f.inner.log(session, line, late),
            None if f.criteria.is_empty() || f.ended_shown.contains(&session) => {
                f.inner.log(session, line, late)
            }
            _ => {}
        }
    }

    fn unmatched(&mut self, line: &crate::maillog::LogLine, why: &str) {
        // About no session: shown only when every session is.
        if self.filter.criteria.is_empty() {
            self.filter.inner.unmatched(line, why);
        }
    }

    fn session_end(&mut self, info: &SessionInfo, record: &SessionRecord) {
        match self.filter.sessions.remove(&info.id) {
            Some(State::Shown) => {
                let f = &mut *self.filter;
                if !f.criteria.is_empty() {
                    if f.ended_order.len() >= MAX_ENDED_SHOWN {
                        if let Some(old) = f.ended_order.pop_front() {
                            f.ended_shown.remove(&old);
                        }
                    }
                    f.ended_order.push_back(info.id);
                    f.ended_shown.insert(info.id);
                }
                f.inner.session_end(info, record)
            }
            Some(State::Pending(p)) => {
                let f = &mut *self.filter;
                f.held_total = f.held_total.saturating_sub(p.bytes);
                f.hidden += 1;
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("*@example.com", "Alice@Example.com"));
        assert!(glob_match("a?ice@*", "alice@x"));
        assert!(!glob_match("*@example.com", "alice@example.org"));
        assert!(glob_match("*", ""));
        assert!(!glob_match("a*b*c", "aXbY"));
        assert!(glob_match("a*b*c", "aXbYc"));
    }

    #[test]
    fn envelope_addresses() {
        assert_eq!(envelope_addr("FROM:<a@b.c> SIZE=12"), "a@b.c");
        assert_eq!(envelope_addr("TO:<> NOTIFY=NEVER"), "");
        assert_eq!(envelope_addr("FROM: a@b.c"), "a@b.c");
    }

    #[derive(Default)]
    struct Rec(Vec<String>);
    impl Sink for Rec {
        fn session_start(&mut self, i: &SessionInfo) {
            self.0.push(format!("start {}", i.id));
        }
        fn event(&mut self, i: &SessionInfo, e: &Event) {
            self.0.push(format!("{} {e:?}", i.id));
        }
        fn session_end(&mut self, i: &SessionInfo, _: &SessionRecord) {
            self.0.push(format!("end {}", i.id));
        }
        fn log(&mut self, session: ConnId, line: &crate::maillog::LogLine, late: bool) {
            self.0
                .push(format!("log {session} {} late={late}", line.program));
        }
    }

    fn wanted_from_filter() -> Filter<Rec> {
        let criteria = Criteria {
            from: vec!["*@wanted.test".into()],
            ..Default::default()
        };
        Filter::new(Rec::default(), criteria)
    }

    #[test]
    fn late_log_lines_follow_shown_sessions_only() {
        let mut f = wanted_from_filter();
        let mut s = Selected {
            filter: &mut f,
            frames: &mut NoFrames,
        };
        let line = crate::maillog::parse(
            "2026-11-27T23:39:56.000000+00:00 mx postfix/virtual[14354]: A74CF98E292: to=<alice@mx.test>, relay=virtual, dsn=2.0.0, status=sent (delivered)",
            &crate::maillog::Clock::utc(0),
        )
        .unwrap();
        for (id, from) in [(1, "FROM:<x@other.test>"), (2, "FROM:<y@wanted.test>")] {
            s.session_start(&info(id));
            s.event(&info(id), &cmd("MAIL", from));
            s.session_end(&info(id), &record(id, 1));
        }
        s.log(1, &line, true);
        s.log(2, &line, true);
        s.log(3, &line, true);
        let logs: Vec<&String> = f.inner.0.iter().filter(|l| l.starts_with("log")).collect();
        assert_eq!(logs, ["log 2 postfix/virtual late=true"]);
        assert_eq!(f.ended_order.len(), 1);
    }

    fn info(id: u64) -> SessionInfo {
        SessionInfo {
            id,
            proto: Proto::Smtp,
            client: "10.99.0.1:4000".parse().unwrap(),
            server: "10.99.0.2:25".parse().unwrap(),
            start: 0,
            partial: false,
            implicit_tls: false,
            process: None,
        }
    }

    /// The record of session `id` (as `info` describes it), closed by FIN after `commands` commands.
    fn record(id: u64, commands: u64) -> SessionRecord {
        let i = info(id);
        SessionRecord {
            id,
            proto: i.proto,
            start: 0,
            end: 0,
            client: i.client,
            server: i.server,
            partial: false,
            gaps: 0,
            close: crate::flow::CloseReason::Fin,
            commands,
            replies: 0,
            bytes: [0, 0],
            anomalies: vec![],
            fields: Default::default(),
        }
    }

    fn cmd(verb: &str, arg: &str) -> Event {
        Event::Command {
            ts: 1,
            verb: verb.into(),
            arg: arg.into(),
        }
    }

    #[test]
    fn undecided_sessions_together_hold_at_most_max_held() {
        let mut f = wanted_from_filter();
        let line = held_size(&Held::Event(cmd("NOOP", &"x".repeat(1000))));
        f.max_held = 3 * line;
        let mut s = Selected {
            filter: &mut f,
            frames: &mut NoFrames,
        };
        // Two sessions of two long lines each: the fourth line does not fit.
        for id in [1, 2] {
            s.session_start(&info(id));
            s.event(&info(id), &cmd("NOOP", &"x".repeat(1000)));
            s.event(&info(id), &cmd("NOOP", &"x".repeat(1000)));
        }
        assert_eq!(s.filter.held_bytes(), 3 * line);
        // Session 2 passes (its MAIL line decides, though the budget has no room to keep it):
        // what it kept is written, and that lines were lost is said.
        s.event(&info(2), &cmd("MAIL", "FROM:<y@wanted.test>"));
        assert_eq!(s.filter.inner.0.len(), 3, "{:?}", s.filter.inner.0);
        assert_eq!(s.filter.inner.0[0], "start 2");
        assert!(s.filter.inner.0[2].contains("tail-lines-not-kept"));
        assert_eq!(s.filter.held_bytes(), 2 * line);
        s.session_end(&info(1), &record(1, 2));
        assert_eq!(s.filter.held_bytes(), 0);
    }

    #[test]
    fn from_filter_holds_lines_until_mail_from_matches() {
        let mut f = wanted_from_filter();
        let mut s = Selected {
            filter: &mut f,
            frames: &mut NoFrames,
        };
        for (id, from) in [(1, "FROM:<x@other.test>"), (2, "FROM:<y@wanted.test>")] {
            s.session_start(&info(id));
            s.event(&info(id), &cmd("EHLO", "c"));
            s.event(&info(id), &cmd("MAIL", from));
            s.event(&info(id), &cmd("QUIT", ""));
        }
        assert_eq!(
            f.inner.0,
            vec![
                "start 2".to_string(),
                format!("2 {:?}", cmd("EHLO", "c")),
                format!("2 {:?}", cmd("MAIL", "FROM:<y@wanted.test>")),
                format!("2 {:?}", cmd("QUIT", "")),
            ]
        );
    }

    #[test]
    fn errors_filter_shows_only_failing_sessions() {
        let criteria = Criteria {
            errors: true,
            ..Default::default()
        };
        let mut f = Filter::new(Rec::default(), criteria);
        let mut s = Selected {
            filter: &mut f,
            frames: &mut NoFrames,
        };
        let reply = |code: &str| Event::Reply {
            ts: 2,
            code: code.into(),
            enhanced: None,
            text: String::new(),
            latency_ns: None,
        };
        s.session_start(&info(1));
        s.event(&info(1), &reply("250"));
        s.session_start(&info(2));
        s.event(&info(2), &reply("550"));
        assert_eq!(f.inner.0.len(), 2, "{:?}", f.inner.0);
        assert_eq!(f.inner.0[0], "start 2");
        assert_eq!((f.shown, f.hidden), (1, 0));
    }

    #[test]
    fn findings_filter_shows_sessions_with_a_finding_at_or_above() {
        use crate::findings::{Finding, Severity};
        let criteria = Criteria {
            findings: Some(Severity::Warn),
            ..Default::default()
        };
        let mut f = Filter::new(Rec::default(), criteria);
        let mut s = Selected {
            filter: &mut f,
            frames: &mut NoFrames,
        };
        let found = |sev| Event::Finding {
            ts: 3,
            finding: Finding::new("x", sev, "r"),
        };
        s.session_start(&info(1));
        s.event(&info(1), &cmd("EHLO", "c"));
        s.event(&info(1), &found(Severity::Info));
        s.session_start(&info(2));
        s.event(&info(2), &cmd("EHLO", "c"));
        s.event(&info(2), &found(Severity::Alert));
        assert_eq!(
            f.inner.0,
            vec![
                "start 2".to_string(),
                format!("2 {:?}", cmd("EHLO", "c")),
                format!("2 {:?}", found(Severity::Alert)),
            ]
        );
    }
}
