//! The join: log lines to the sessions they are about.
//!
//! - A line with a queue id goes to the session that queued it: the id comes from the
//!   end-of-data reply (`queued as X`), the finished record, or smtpd's `X: client=ip:port`.
//!   A bounce's new queue id is linked to the same session.
//! - A line without one (`NOQUEUE: reject`, `connect from`) goes to the SMTP session of its
//!   client `ip:port` (or, without `smtpd_client_port_logging`, the client ip and the time).
//! - Dovecot login lines go to the IMAP/POP3 session with the same `rip`/`lip` open at that
//!   time; the mail process's later lines follow Dovecot's `session=<…>` id.
//!
//! Lines and packets race (the log is read by polling), so a line that matches no session yet
//! waits, bounded in number and age, until its session or queue id shows up. A finished
//! session's record is held for [`JoinConfig::linger`] so that the lines Postfix wrote during
//! the session make it into the record's `log` list; lines after that (deliveries, usually)
//! go out as follow-ups through [`Sink::log`] with `late = true`.
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;

use serde_json::Value;

use super::{Kind, LogLine};
use crate::flow::{ConnId, Dir};
use crate::proto::{Event, Privacy, Proto};
use crate::session::{SessionInfo, SessionRecord, Sink};
use crate::time::Ts;

/// Bounds and delays of the join; every one has a default.
#[derive(Clone, Copy, Debug)]
pub struct JoinConfig {
    /// Queue ids (and Dovecot session ids) remembered after their session ended.
    pub max_ids: usize,
    /// Lines waiting for their session.
    pub max_waiting: usize,
    /// How long a line waits for its session.
    pub wait: Ts,
    /// How long a finished record is held for the log lines of its last moments.
    pub linger: Ts,
    /// Ended sessions kept for late address matches (Dovecot writes `auth failed` at disconnect).
    pub max_recent: usize,
    pub recent: Ts,
    /// Log entries kept in one session record.
    pub max_lines_per_session: usize,
}

impl Default for JoinConfig {
    fn default() -> Self {
        JoinConfig {
            max_ids: 100_000,
            max_waiting: 10_000,
            wait: 30_000_000_000,
            linger: 1_500_000_000,
            max_recent: 4096,
            recent: 120_000_000_000,
            max_lines_per_session: 256,
        }
    }
}

/// Counters of the join.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct JoinStats {
    pub lines: u64,
    pub matched: u64,
    /// Lines that found no session before they expired (or were pushed out).
    pub unmatched: u64,
    /// Lines matched but not kept in a full record.
    pub dropped: u64,
}

/// A bounded map that forgets its oldest insertions first.
struct Bounded<V> {
    map: HashMap<String, (V, u64)>,
    order: VecDeque<(String, u64)>,
    gen: u64,
    cap: usize,
}

impl<V: Copy> Bounded<V> {
    fn new(cap: usize) -> Self {
        Bounded {
            map: HashMap::new(),
            order: VecDeque::new(),
            gen: 0,
            cap,
        }
    }

    fn insert(&mut self, k: &str, v: V) {
        self.gen += 1;
        self.map.insert(k.to_string(), (v, self.gen));
        self.order.push_back((k.to_string(), self.gen));
        while self.map.len() > self.cap || self.order.len() > 2 * self.cap.max(1) {
            let Some((k, g)) = self.order.pop_front() else {
                break;
            };
            if self.map.get(&k).is_some_and(|(_, g2)| *g2 == g) {
                self.map.remove(&k);
            }
        }
    }

    fn get(&self, k: &str) -> Option<V> {
        self.map.get(k).map(|(v, _)| *v)
    }
}

enum State {
    Open,
    /// Ended; the record waits until `until` for the last lines.
    Lingering {
        record: Box<SessionRecord>,
        until: Ts,
    },
    /// Record written; kept until `until` for late address matches.
    Closed {
        until: Ts,
    },
}

struct Tracked {
    info: SessionInfo,
    end: Option<Ts>,
    lines: Vec<LogLine>,
    state: State,
    /// A Dovecot login line already matched (a second one is another connection's).
    dovecot_login: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Key {
    Queue(String),
    Addr(IpAddr, Option<u16>),
    Dovecot(String),
}

/// The join state; drive it with [`Joined`] (as the engine's sink) and [`Joiner::line`].
pub struct Joiner {
    cfg: JoinConfig,
    privacy: Privacy,
    sessions: HashMap<ConnId, Tracked>,
    by_ip: HashMap<IpAddr, Vec<ConnId>>,
    closed: VecDeque<ConnId>,
    queue: Bounded<ConnId>,
    dovecot: Bounded<ConnId>,
    waiting: HashMap<Key, Vec<LogLine>>,
    waiting_order: VecDeque<(Ts, Key)>,
    waiting_count: usize,
    stats: JoinStats,
}

impl Joiner {
    pub fn new(cfg: JoinConfig, privacy: Privacy) -> Self {
        Joiner {
            cfg,
            privacy,
            sessions: HashMap::new(),
            by_ip: HashMap::new(),
            closed: VecDeque::new(),
            queue: Bounded::new(cfg.max_ids),
            dovecot: Bounded::new(cfg.max_ids),
            waiting: HashMap::new(),
            waiting_order: VecDeque::new(),
            waiting_count: 0,
            stats: JoinStats::default(),
        }
    }

    pub fn stats(&self) -> JoinStats {
        self.stats
    }

    /// One parsed log line.
    pub fn line(&mut self, line: LogLine, sink: &mut dyn Sink) {
        self.stats.lines += 1;
        let line = line.redacted(self.privacy);
        match self.find(&line) {
            Some(id) => self.deliver(id, line, sink),
            None => self.wait(line),
        }
    }

    /// Lets time pass: records whose linger is over are written, old waiting lines and
    /// ended sessions are forgotten.
    pub fn tick(&mut self, now: Ts, sink: &mut dyn Sink) {
        let due: Vec<ConnId> = self
            .sessions
            .iter()
            .filter(|(_, t)| matches!(t.state, State::Lingering { until, .. } if until <= now))
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            self.write_record(id, now, sink);
        }
        while let Some(&id) = self.closed.front() {
            let expired = match self.sessions.get(&id) {
                Some(Tracked {
                    state: State::Closed { until },
                    ..
                }) => *until <= now || self.closed.len() > self.cfg.max_recent,
                _ => true,
            };
            if !expired {
                break;
            }
            self.closed.pop_front();
            self.forget(id);
        }
        while let Some((ts, _)) = self.waiting_order.front() {
            if ts.saturating_add(self.cfg.wait) > now {
                break;
            }
            let Some((_, key)) = self.waiting_order.pop_front() else {
                break;
            };
            let wait = self.cfg.wait;
            if let Some(v) = self.waiting.get_mut(&key) {
                let before = v.len();
                v.retain(|l| l.ts.saturating_add(wait) > now);
                let gone = before - v.len();
                self.waiting_count -= gone;
                self.stats.unmatched += gone as u64;
                if v.is_empty() {
                    self.waiting.remove(&key);
                }
            }
        }
    }

    /// Writes every held record (end of input).
    pub fn finish(&mut self, sink: &mut dyn Sink) {
        let ids: Vec<ConnId> = self
            .sessions
            .iter()
            .filter(|(_, t)| matches!(t.state, State::Lingering { .. }))
            .map(|(id, _)| *id)
            .collect();
        let mut ids = ids;
        ids.sort_unstable();
        for id in ids {
            self.write_record(id, Ts::MAX, sink);
        }
        self.stats.unmatched += self.waiting_count as u64;
        self.waiting.clear();
        self.waiting_order.clear();
        self.waiting_count = 0;
    }

    fn forget(&mut self, id: ConnId) {
        if let Some(t) = self.sessions.remove(&id) {
            let ip = t.info.client.ip();
            if let Some(v) = self.by_ip.get_mut(&ip) {
                v.retain(|x| *x != id);
                if v.is_empty() {
                    self.by_ip.remove(&ip);
                }
            }
        }
    }

    fn write_record(&mut self, id: ConnId, now: Ts, sink: &mut dyn Sink) {
        let Some(t) = self.sessions.get_mut(&id) else {
            return;
        };
        let until = now.saturating_add(self.cfg.recent);
        let State::Lingering { record, .. } =
            std::mem::replace(&mut t.state, State::Closed { until })
        else {
            return;
        };
        let mut record = *record;
        if !t.lines.is_empty() {
            let entries: Vec<Value> = t.lines.iter().map(|l| entry_for(l, &record)).collect();
            record.fields.insert("log".into(), Value::Array(entries));
        }
        t.lines = Vec::new();
        let info = t.info.clone();
        sink.session_end(&info, &record);
        self.closed.push_back(id);
    }

    /// The session a line is about, learning queue and Dovecot ids on the way.
    fn find(&mut self, l: &LogLine) -> Option<ConnId> {
        if let Some(q) = &l.queue_id {
            if let Some(id) = self.queue.get(q) {
                return Some(id);
            }
        }
        if let Some(s) = l.get("session").filter(|_| l.kind == Kind::Logout) {
            return self.dovecot.get(s);
        }
        let id = if l.program.starts_with("postfix") {
            // Only smtpd names the client: other daemons' client= is someone else's.
            let ip: IpAddr = l.get("client_ip")?.parse().ok()?;
            let port = l
                .fields
                .get("client_port")
                .and_then(Value::as_u64)
                .map(|p| p as u16);
            self.by_addr(l, ip, port, None, |p| p == Proto::Smtp)?
        } else {
            let want = match l.program.as_str() {
                "imap-login" => Proto::Imap,
                "pop3-login" => Proto::Pop3,
                _ => return None,
            };
            let ip: IpAddr = l.get("rip")?.parse().ok()?;
            let lip: Option<IpAddr> = l.get("lip").and_then(|s| s.parse().ok());
            let port = l
                .fields
                .get("rport")
                .and_then(Value::as_u64)
                .map(|p| p as u16);
            self.by_addr(l, ip, port, lip, |p| p == want)?
        };
        if let Some(q) = &l.queue_id {
            self.queue.insert(q, id);
        }
        if l.kind == Kind::Login || l.kind == Kind::LoginFailed {
            if let Some(s) = l.get("session") {
                self.dovecot.insert(s, id);
            }
            if let Some(t) = self.sessions.get_mut(&id) {
                t.dovecot_login = true;
            }
        }
        Some(id)
    }

    /// The session of client `ip` (and `port`, when logged) alive at the line's time.
    fn by_addr(
        &self,
        l: &LogLine,
        ip: IpAddr,
        port: Option<u16>,
        server: Option<IpAddr>,
        proto: impl Fn(Proto) -> bool,
    ) -> Option<ConnId> {
        const SLACK: Ts = 2_000_000_000;
        let dovecot_login = matches!(l.kind, Kind::Login | Kind::LoginFailed);
        self.by_ip
            .get(&ip)?
            .iter()
            .filter_map(|id| Some((*id, self.sessions.get(id)?)))
            .filter(|(_, t)| {
                proto(t.info.proto)
                    && port.is_none_or(|p| t.info.client.port() == p)
                    && server.is_none_or(|s| t.info.server.ip() == s)
                    && t.info.start <= l.ts.saturating_add(SLACK)
                    && t.end.is_none_or(|e| l.ts <= e.saturating_add(SLACK))
                    && !(dovecot_login && t.dovecot_login)
            })
            // Without a port several sessions may fit: the one started last before the line.
            .max_by_key(|(id, t)| {
                (
                    t.info.start <= l.ts.saturating_add(1_000_000_000),
                    t.info.start,
                    *id,
                )
            })
            .map(|(id, _)| id)
    }

    fn key(l: &LogLine) -> Option<Key> {
        if let Some(q) = &l.queue_id {
            if l.kind != Kind::Client {
                return Some(Key::Queue(q.clone()));
            }
        }
        if l.kind == Kind::Logout {
            return l.get("session").map(|s| Key::Dovecot(s.to_string()));
        }
        let (ip, port) = if l.program.starts_with("postfix") {
            (l.get("client_ip")?, l.fields.get("client_port"))
        } else {
            (l.get("rip")?, l.fields.get("rport"))
        };
        let port = port.and_then(Value::as_u64).map(|p| p as u16);
        Some(Key::Addr(ip.parse().ok()?, port))
    }

    fn wait(&mut self, l: LogLine) {
        let Some(key) = Self::key(&l) else {
            self.stats.unmatched += 1;
            return;
        };
        if self.waiting_count >= self.cfg.max_waiting {
            self.stats.unmatched += 1;
            return;
        }
        self.waiting_order.push_back((l.ts, key.clone()));
        self.waiting.entry(key).or_default().push(l);
        self.waiting_count += 1;
    }

    /// Lines waiting under `key` that now find their session.
    fn retry(&mut self, key: Key, sink: &mut dyn Sink) {
        let Some(lines) = self.waiting.remove(&key) else {
            return;
        };
        let mut keep = Vec::new();
        for l in lines {
            match self.find(&l) {
                Some(id) => {
                    self.waiting_count -= 1;
                    self.deliver(id, l, sink);
                }
                None => keep.push(l),
            }
        }
        if !keep.is_empty() {
            self.waiting.insert(key, keep);
        }
    }

    fn learn_queue_id(&mut self, q: &str, id: ConnId, sink: &mut dyn Sink) {
        if self.queue.get(q) != Some(id) {
            self.queue.insert(q, id);
        }
        self.retry(Key::Queue(q.to_string()), sink);
    }

    fn deliver(&mut self, id: ConnId, l: LogLine, sink: &mut dyn Sink) {
        self.stats.matched += 1;
        // A bounce belongs to the story of the message that caused it.
        let bounce = (l.kind == Kind::Bounce).then(|| l.get("new_queue_id").map(str::to_string));
        let late = match self.sessions.get_mut(&id) {
            Some(t) if !matches!(t.state, State::Closed { .. }) => {
                if t.lines.len() < self.cfg.max_lines_per_session {
                    t.lines.push(l.clone());
                } else {
                    self.stats.dropped += 1;
                }
                false
            }
            _ => true,
        };
        sink.log(id, &l, late);
        if let Some(Some(new)) = bounce {
            self.learn_queue_id(&new, id, sink);
        }
    }
}

/// The `log` entry of a record; a RCPT reject names the transaction and recipient it answered.
fn entry_for(l: &LogLine, rec: &SessionRecord) -> Value {
    let mut v = l.to_json();
    if l.kind == Kind::Reject && l.get("stage") == Some("RCPT") {
        let to = l.get("to").unwrap_or("");
        let code = l.fields.get("code").and_then(Value::as_u64);
        let txs = rec.field("transactions").and_then(Value::as_array);
        'found: for (i, tx) in txs.into_iter().flatten().enumerate() {
            let rcpts = tx.get("rcpt").and_then(Value::as_array);
            for (j, r) in rcpts.into_iter().flatten().enumerate() {
                if r.get("addr").and_then(Value::as_str) == Some(to)
                    && r.get("code").and_then(Value::as_u64) == code
                {
                    v["transaction"] = i.into();
                    v["rcpt"] = j.into();
                    break 'found;
                }
            }
        }
    }
    v
}

/// The queue id in a Postfix end-of-data reply (`Ok: queued as 4Xyz`).
pub fn queued_as(text: &str) -> Option<&str> {
    let (_, rest) = text.split_once("queued as ")?;
    let id = rest.split_whitespace().next()?;
    super::postfix::is_queue_id(id).then_some(id)
}

/// The joiner in front of an output, as the engine's [`Sink`]; without a joiner (no
/// `--maillog`) everything passes straight through.
pub struct Joined<'a> {
    pub joiner: Option<&'a mut Joiner>,
    pub inner: &'a mut dyn Sink,
}

impl Sink for Joined<'_> {
    fn session_start(&mut self, info: &SessionInfo) {
        let Some(j) = self.joiner.as_deref_mut() else {
            return self.inner.session_start(info);
        };
        j.sessions.insert(
            info.id,
            Tracked {
                info: info.clone(),
                end: None,
                lines: Vec::new(),
                state: State::Open,
                dovecot_login: false,
            },
        );
        j.by_ip.entry(info.client.ip()).or_default().push(info.id);
        self.inner.session_start(info);
        let ip = info.client.ip();
        j.retry(Key::Addr(ip, Some(info.client.port())), self.inner);
        j.retry(Key::Addr(ip, None), self.inner);
    }

    fn event(&mut self, info: &SessionInfo, ev: &Event) {
        self.inner.event(info, ev);
        let Some(j) = self.joiner.as_deref_mut() else {
            return;
        };
        if let Event::Reply { text, code, .. } = ev {
            if code.starts_with('2') {
                if let Some(q) = queued_as(text) {
                    j.learn_queue_id(q, info.id, self.inner);
                }
            }
        }
    }

    fn gap(&mut self, info: &SessionInfo, dir: Dir, len: u64, ts: Ts) {
        self.inner.gap(info, dir, len, ts);
    }

    fn session_end(&mut self, info: &SessionInfo, record: &SessionRecord) {
        let Some(j) = self.joiner.as_deref_mut() else {
            return self.inner.session_end(info, record);
        };
        let ids: Vec<String> = record
            .field("transactions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|t| {
                t.get("queue_id")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            })
            .collect();
        for q in ids {
            j.learn_queue_id(&q, info.id, self.inner);
        }
        let until = record.end.saturating_add(j.cfg.linger);
        let Some(t) = j.sessions.get_mut(&info.id) else {
            return self.inner.session_end(info, record);
        };
        t.end = Some(record.end);
        t.state = State::Lingering {
            record: Box::new(record.clone()),
            until,
        };
        let ip = info.client.ip();
        j.retry(Key::Addr(ip, Some(info.client.port())), self.inner);
        j.retry(Key::Addr(ip, None), self.inner);
    }

    fn log(&mut self, session: ConnId, line: &LogLine, late: bool) {
        self.inner.log(session, line, late);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::CloseReason;
    use crate::maillog::{parse, Clock};
    use serde_json::json;

    const NOW: Ts = 1_795_823_100_000_000_000;
    // 2026-11-27T23:39:56Z
    const T0: Ts = 1_795_822_796_000_000_000;
    const S: Ts = 1_000_000_000;

    #[derive(Default)]
    struct Rec {
        out: Vec<String>,
        records: Vec<SessionRecord>,
    }
    impl Sink for Rec {
        fn session_start(&mut self, i: &SessionInfo) {
            self.out.push(format!("start #{}", i.id));
        }
        fn event(&mut self, _: &SessionInfo, _: &Event) {}
        fn session_end(&mut self, i: &SessionInfo, r: &SessionRecord) {
            self.out.push(format!("end #{}", i.id));
            self.records.push(r.clone());
        }
        fn log(&mut self, s: ConnId, l: &LogLine, late: bool) {
            self.out.push(format!("log #{s} {} {late}", l.kind.name()));
        }
    }

    fn info(id: ConnId, proto: Proto, client: &str, server: &str, start: Ts) -> SessionInfo {
        SessionInfo {
            id,
            proto,
            client: client.parse().unwrap(),
            server: server.parse().unwrap(),
            start,
            partial: false,
            implicit_tls: false,
            process: None,
        }
    }

    fn record(i: &SessionInfo, end: Ts, fields: Value) -> SessionRecord {
        SessionRecord {
            id: i.id,
            proto: i.proto,
            start: i.start,
            end,
            client: i.client,
            server: i.server,
            partial: false,
            gaps: 0,
            close: CloseReason::Fin,
            commands: 0,
            replies: 0,
            bytes: [0, 0],
            anomalies: vec![],
            fields: fields.as_object().cloned().unwrap_or_default().into(),
        }
    }

    fn line(s: &str) -> LogLine {
        parse(s, &Clock::utc(NOW)).unwrap()
    }

    fn reply(text: &str) -> Event {
        Event::Reply {
            ts: T0,
            code: "250".into(),
            enhanced: Some("2.0.0".into()),
            text: text.into(),
            latency_ns: None,
        }
    }

    #[test]
    fn queued_message_lines_in_the_record_and_delivery_as_follow_up() {
        let mut j = Joiner::new(JoinConfig::default(), Privacy::default());
        let mut out = Rec::default();
        let i = info(7, Proto::Smtp, "10.99.152.1:46240", "10.99.152.2:25", T0);
        // The client= line is read before the capture shows the session: it waits.
        j.line(line("Nov 27 23:39:56 mx postfix/smtpd[14344]: A74CF98E292: client=unknown[10.99.152.1]:46240"), &mut out);
        Joined {
            joiner: Some(&mut j),
            inner: &mut out,
        }
        .session_start(&i);
        j.line(line("Nov 27 23:39:56 mx postfix/qmgr[14342]: A74CF98E292: from=<sender@client.test>, size=313, nrcpt=1 (queue active)"), &mut out);
        Joined {
            joiner: Some(&mut j),
            inner: &mut out,
        }
        .event(&i, &reply("Ok: queued as A74CF98E292"));
        let rec = record(
            &i,
            T0 + S / 10,
            json!({"transactions":[{"queue_id":"A74CF98E292","rcpt":[]}]}),
        );
        Joined {
            joiner: Some(&mut j),
            inner: &mut out,
        }
        .session_end(&i, &rec);
        j.line(
            line("Nov 27 23:39:56 mx postfix/cleanup[14352]: A74CF98E292: message-id=<x@y>"),
            &mut out,
        );
        j.tick(T0 + S, &mut out);
        assert!(out.records.is_empty(), "held while lingering");
        j.tick(T0 + 2 * S, &mut out);
        j.line(line("Nov 27 23:39:58 mx postfix/virtual[14354]: A74CF98E292: to=<alice@mx.test>, relay=virtual, delay=0.1, delays=0.09/0.01/0/0.01, dsn=2.0.0, status=sent (delivered to maildir)"), &mut out);
        j.line(
            line("Nov 27 23:39:58 mx postfix/qmgr[14342]: A74CF98E292: removed"),
            &mut out,
        );
        assert_eq!(
            out.out,
            vec![
                "start #7",
                "log #7 client false",
                "log #7 queued false",
                "log #7 message-id false",
                "end #7",
                "log #7 delivery true",
                "log #7 removed true"
            ]
        );
        let log = out.records[0].field("log").unwrap();
        let events: Vec<&str> = log
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["event"].as_str().unwrap())
            .collect();
        assert_eq!(events, vec!["client", "queued", "message-id"]);
        // Privacy: neither the raw line nor the Message-ID by default.
        assert_eq!(log[2]["fields"], json!({}));
        assert!(log[0].get("line").is_none());
        assert_eq!(
            j.stats(),
            JoinStats {
                lines: 5,
                matched: 5,
                unmatched: 0,
                dropped: 0
            }
        );
    }

    #[test]
    fn noqueue_reject_names_its_rcpt_and_late_lines_wait_no_longer_than_allowed() {
        let mut j = Joiner::new(JoinConfig::default(), Privacy::default());
        let mut out = Rec::default();
        let i = info(3, Proto::Smtp, "10.99.152.1:46268", "10.99.152.2:25", T0);
        let other = info(4, Proto::Smtp, "10.99.152.1:46270", "10.99.152.2:25", T0);
        Joined {
            joiner: Some(&mut j),
            inner: &mut out,
        }
        .session_start(&i);
        Joined {
            joiner: Some(&mut j),
            inner: &mut out,
        }
        .session_start(&other);
        let rec = record(
            &i,
            T0 + S / 2,
            json!({"transactions":[{"queue_id":null,"rcpt":[{"addr":"nobody@mx.test","code":550}]}]}),
        );
        Joined {
            joiner: Some(&mut j),
            inner: &mut out,
        }
        .session_end(&i, &rec);
        // Read after the session ended, within the linger.
        j.line(line("Nov 27 23:39:56 mx postfix/smtpd[14344]: NOQUEUE: reject: RCPT from unknown[10.99.152.1]:46268: 550 5.1.1 <nobody@mx.test>: Recipient address rejected: User unknown in virtual mailbox table; from=<sender@client.test> to=<nobody@mx.test> proto=ESMTP helo=<client.test>"), &mut out);
        // A line for a client never seen waits, then expires.
        j.line(
            line("Nov 27 23:39:56 mx postfix/smtpd[1]: connect from unknown[10.99.9.9]:1"),
            &mut out,
        );
        j.tick(T0 + 60 * S, &mut out);
        let log = out.records[0].field("log").unwrap();
        assert_eq!(log[0]["event"], "reject");
        assert_eq!(
            (log[0]["transaction"].clone(), log[0]["rcpt"].clone()),
            (json!(0), json!(0))
        );
        assert_eq!(log[0]["fields"]["code"], 550);
        assert_eq!(j.stats().unmatched, 1);
        assert!(!out.out.contains(&"log #4 reject false".to_string()));
    }

    #[test]
    fn dovecot_auth_failed_goes_to_the_imap_session_of_its_addresses() {
        let mut j = Joiner::new(JoinConfig::default(), Privacy::default());
        let mut out = Rec::default();
        let smtp = info(1, Proto::Smtp, "10.99.152.1:40000", "10.99.152.2:25", T0);
        let imap = info(2, Proto::Imap, "10.99.152.1:40002", "10.99.152.2:143", T0);
        let wrong_server = info(3, Proto::Imap, "10.99.152.1:40004", "10.99.152.9:143", T0);
        for s in [&smtp, &imap, &wrong_server] {
            Joined {
                joiner: Some(&mut j),
                inner: &mut out,
            }
            .session_start(s);
        }
        let rec = record(&imap, T0 + S, json!({}));
        Joined {
            joiner: Some(&mut j),
            inner: &mut out,
        }
        .session_end(&imap, &rec);
        j.line(line("Nov 27 23:39:57 imap-login: Info: Disconnected: Aborted login by logging out (auth failed, 1 attempts in 1 secs): user=<alice@mx.test>, method=PLAIN, rip=10.99.152.1, lip=10.99.152.2, session=<MHM+lEphvsoKY5gB>"), &mut out);
        j.finish(&mut out);
        assert!(
            out.out.contains(&"log #2 login-failed false".to_string()),
            "{:?}",
            out.out
        );
        assert_eq!(
            out.records[0].field("log").unwrap()[0]["fields"]["attempts"],
            1
        );
    }

    #[test]
    fn without_port_logging_the_ip_and_time_choose_the_session() {
        let mut j = Joiner::new(JoinConfig::default(), Privacy::default());
        let mut out = Rec::default();
        let old = info(
            1,
            Proto::Smtp,
            "10.99.152.1:40000",
            "10.99.152.2:25",
            T0 - 60 * S,
        );
        let now = info(2, Proto::Smtp, "10.99.152.1:40002", "10.99.152.2:25", T0);
        for s in [&old, &now] {
            Joined {
                joiner: Some(&mut j),
                inner: &mut out,
            }
            .session_start(s);
        }
        let rec = record(&old, T0 - 50 * S, json!({}));
        Joined {
            joiner: Some(&mut j),
            inner: &mut out,
        }
        .session_end(&old, &rec);
        j.line(line("Nov 27 23:39:56 mx postfix/smtpd[1]: NOQUEUE: reject: RCPT from unknown[10.99.152.1]: 554 5.7.1 <a@example.org>: Relay access denied; from=<s@c> to=<a@example.org> proto=ESMTP helo=<c>"), &mut out);
        j.line(
            line("Nov 27 23:39:56 mx postfix/smtpd[1]: B2C3D4E5F6: client=unknown[10.99.152.1]"),
            &mut out,
        );
        j.line(
            line("Nov 27 23:39:57 mx postfix/qmgr[2]: B2C3D4E5F6: removed"),
            &mut out,
        );
        assert_eq!(
            out.out[2..],
            [
                "log #2 reject false",
                "log #2 client false",
                "log #2 removed false"
            ]
        );
    }

    #[test]
    fn bounded_map_forgets_the_oldest() {
        let mut b = Bounded::new(2);
        b.insert("a", 1u64);
        b.insert("b", 2);
        b.insert("c", 3);
        assert_eq!(
            (b.get("a"), b.get("b"), b.get("c")),
            (None, Some(2), Some(3))
        );
        b.insert("b", 4);
        b.insert("d", 5);
        assert_eq!(
            (b.get("b"), b.get("c"), b.get("d")),
            (Some(4), None, Some(5))
        );
    }

    #[test]
    fn queued_as_reply_text() {
        assert_eq!(queued_as("Ok: queued as A74CF98E292"), Some("A74CF98E292"));
        assert_eq!(
            queued_as("2.0.0 Ok: queued as 4XyzAbC12kz9Q"),
            Some("4XyzAbC12kz9Q")
        );
        assert_eq!(queued_as("Ok"), None);
        assert_eq!(queued_as("Ok: queued as <script>"), None);
    }
}

#[cfg(test)]
mod output_tests {
    use super::*;
    use crate::maillog::{parse, Clock};
    use crate::output::{jsonl::JsonLines, tail};

    #[test]
    fn late_lines_in_the_tail_and_as_json_records() {
        let l = parse("Nov 27 23:39:58 mx postfix/virtual[14354]: A74CF98E292: to=<alice@mx.test>, relay=virtual, delay=0.1, delays=0.09/0.01/0/0.01, dsn=2.0.0, status=sent (delivered to maildir)", &Clock::utc(1_795_823_100_000_000_000)).unwrap();
        let mut t = tail::Tail::new(
            Vec::new(),
            tail::Style {
                color: false,
                explain: true,
            },
            Privacy::default(),
        );
        t.log(7, &l, true);
        assert_eq!(
            String::from_utf8(t.into_inner()).unwrap(),
            "23:39:58.000000 #7 log: postfix/virtual[14354] A74CF98E292 delivery: status=sent dsn=2.0.0 relay=virtual delay=0.1 to=alice@mx.test reason=(delivered to maildir)\n"
        );
        let l = l.redacted(Privacy::default());
        let mut j = JsonLines::new(Vec::new(), false);
        // Not late: it goes into the record, not a line of its own.
        j.log(7, &l, false);
        j.log(7, &l, true);
        assert_eq!(
            String::from_utf8(j.into_inner()).unwrap(),
            "{\"type\":\"log\",\"session\":7,\"ts\":\"2026-11-27T23:39:58.000000Z\",\"program\":\"postfix/virtual\",\"pid\":14354,\"queue_id\":\"A74CF98E292\",\"event\":\"delivery\",\"fields\":{\"to\":\"alice@mx.test\",\"relay\":\"virtual\",\"delay\":0.1,\"delays\":\"0.09/0.01/0/0.01\",\"dsn\":\"2.0.0\",\"status\":\"sent\",\"reason\":\"delivered to maildir\"}}\n"
        );
    }
}
