//! The join: log lines to the sessions they are about.
//!
//! - A line with a queue id goes to the session that queued it: the id comes from the
//!   end-of-data reply (`queued as X`), the finished record, or smtpd's `X: client=ip:port`.
//!   A bounce's new queue id is linked to the same session.
//! - An smtpd's lines follow its brackets ([`super::bracket`]): `connect from` opens a
//!   connection of that pid, `disconnect from` closes it, every line of the pid in between
//!   (`client=`, `NOQUEUE: reject`, `lost connection`, warnings) is that connection's. A closed
//!   bracket goes to the first wire session of its client address (and port, when logged),
//!   in start order, whose commands, replies, refused recipients and queue ids agree with
//!   the bracket's `disconnect` statistics, rejects and `client=` queue ids; a bracket no
//!   session agrees with stays unmatched (counted in `mismatched`), never given to a
//!   neighbour. Only an smtpd line outside any bracket (its connect was never read) falls
//!   back to the address: its client `ip:port` (or, without `smtpd_client_port_logging`, the
//!   client ip and the time).
//! - Dovecot's lines follow its own `session=<…>` id ([`super::bracket::DovecotSession`]):
//!   the login process's line (`Login:`, or a pre-login `auth failed` / `Aborted login` /
//!   `no auth attempts` disconnect) names the client (`rip`, `lip`, `rport` when logged), the
//!   mail process logs under the same id until its `Disconnected:`. The id's lines go to the
//!   first IMAP/POP3 session of that client address (and port) and server, in start order,
//!   not yet taken, alive around the login line, whose login outcome, user and TLS agree
//!   with the log's; none agreeing: unmatched, like a bracket. Once given, every later line
//!   of the id is that session's, however late. A login line without `session=` (a
//!   customised `login_log_format_elements`) falls back to the address and time.
//!
//! Lines and packets race (the log is read by polling), so a line that matches no session yet
//! waits, bounded in number and age, until its session or queue id shows up. A finished
//! session's record is held for [`JoinConfig::linger`] so that the lines Postfix wrote during
//! the session make it into the record's `log` list; lines after that (deliveries, usually)
//! go out as follow-ups through [`Sink::log`] with `late = true`.
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};

use serde_json::Value;

use super::bracket::{
    disagreement, dovecot_disagreement, Bracket, DovecotSession, Tally, WireLogin,
};
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
    /// Lines of smtpd connections (brackets) that no wire session agreed with: also counted
    /// in `unmatched`.
    pub mismatched: u64,
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
    /// Ended; the record waits (until the time in [`Joiner::lingering`]) for the last lines.
    Lingering {
        record: Box<SessionRecord>,
    },
    /// Record written; kept until `until` for late address matches.
    Closed {
        until: Ts,
    },
}

struct Tracked {
    info: SessionInfo,
    end: Option<Ts>,
    lines: Vec<Held>,
    state: State,
    /// A Dovecot login line already matched (a second one is another connection's).
    dovecot_login: bool,
    /// What the wire saw, for the brackets' cross-check (SMTP only).
    tally: Tally,
    /// An smtpd bracket was given to this session (a second one is another connection's).
    bracket: bool,
    /// What the wire saw of the login, once the session ended (IMAP/POP3).
    login: Option<WireLogin>,
}

/// Lines are kept with their arrival order, so a record lists them as the log did even when
/// a bracket's lines join it after lines found by queue id.
type Held = (u64, LogLine);

/// How long around its `connect` stamp a bracket's session may have started: the stamp is
/// cut to the second (files) and written just after the accept.
const BEFORE_CONNECT: Ts = 5_000_000_000;
const AFTER_CONNECT: Ts = 2_000_000_000;
/// A session still open this long after its bracket closed is not that connection.
const CLOSE_SLACK: Ts = 3_000_000_000;
/// How long a blind session (nothing countable on the wire: implicit TLS) waits after its
/// end before a bracket takes it on agreement alone: every bracket agrees with it, so the
/// bracket of a connection the capture never saw (one just before it started) would take
/// it from its own. Meanwhile the smtpd processes' next connections tell which service
/// (listening address) each serves, and a process of another service is ruled out.
const BLIND_WAIT: Ts = 5_000_000_000;

/// Why a bracket got no session yet: until when it waits for a candidate to end or to be
/// told apart (then looked at again), and the nearest candidate's disagreement.
type Undecided = (Option<Ts>, Option<String>);

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
    /// Sessions by client address, in start order: a bracket's candidates are a range of it.
    by_ip: HashMap<IpAddr, BTreeSet<(Ts, ConnId)>>,
    /// Ended sessions whose record waits, by when it is due: a tick pops what is due instead
    /// of looking at every session (replay ticks at every frame).
    lingering: BTreeSet<(Ts, ConnId)>,
    closed: VecDeque<ConnId>,
    queue: Bounded<ConnId>,
    dovecot: Bounded<ConnId>,
    waiting: HashMap<Key, Vec<Held>>,
    waiting_order: VecDeque<(Ts, Key)>,
    waiting_count: usize,
    stats: JoinStats,
    /// Open smtpd brackets by (program, pid): `postfix/smtpd`, `postfix/submission/smtpd`, ….
    open: HashMap<(String, u32), Bracket>,
    /// The listening address each smtpd process (`program[pid]`) serves, from the sessions
    /// its brackets were given on evidence (not on the agreement of a blind session).
    services: Bounded<SocketAddr>,
    /// Closed brackets waiting for their session, by client address (in close order): a
    /// session's start or end, or a bracket's close, looks only at its address's.
    pending: HashMap<IpAddr, VecDeque<Bracket>>,
    /// (closed, address, bracket id) in close order: when each waiting bracket is given up.
    pending_order: VecDeque<(Ts, IpAddr, u64)>,
    /// Open brackets by their connect stamp, to give up those whose client is never seen.
    open_order: VecDeque<(Ts, (String, u32), u64)>,
    /// (when, address): a bracket or Dovecot connection of that address waits for time
    /// only (an earlier candidate still open when the log has said it is over).
    timers: BTreeSet<(Ts, IpAddr)>,
    /// Lines read so far: the order of the next one.
    seq: u64,
    /// The latest time the joiner was told (capture or wall clock).
    now: Ts,
    /// The last brackets no session agreed with, and why (for `why`).
    mismatches: VecDeque<(Vec<Held>, String)>,
    /// Dovecot connections by session id, not yet given to a wire session.
    dsessions: HashMap<String, DovecotSession>,
    /// Those with a login line (the client is known), by client address, in first-line order.
    dwaiting: HashMap<IpAddr, Vec<String>>,
    /// (when, session id): when a Dovecot connection is looked at again to be given up.
    dexpiry: BTreeSet<(Ts, String)>,
    /// How many sessions, brackets and Dovecot connections were looked at (the tests hold
    /// the work per line and per tick to what the line or tick is about).
    #[cfg(test)]
    work: std::cell::Cell<u64>,
}

/// Mismatched brackets kept for `why`.
const MAX_MISMATCHES: usize = 64;

impl Joiner {
    pub fn new(cfg: JoinConfig, privacy: Privacy) -> Self {
        Joiner {
            cfg,
            privacy,
            sessions: HashMap::new(),
            by_ip: HashMap::new(),
            lingering: BTreeSet::new(),
            closed: VecDeque::new(),
            queue: Bounded::new(cfg.max_ids),
            dovecot: Bounded::new(cfg.max_ids),
            waiting: HashMap::new(),
            waiting_order: VecDeque::new(),
            waiting_count: 0,
            stats: JoinStats::default(),
            open: HashMap::new(),
            services: Bounded::new(cfg.max_ids),
            pending: HashMap::new(),
            pending_order: VecDeque::new(),
            open_order: VecDeque::new(),
            timers: BTreeSet::new(),
            seq: 0,
            now: 0,
            mismatches: VecDeque::new(),
            dsessions: HashMap::new(),
            dwaiting: HashMap::new(),
            dexpiry: BTreeSet::new(),
            #[cfg(test)]
            work: std::cell::Cell::new(0),
        }
    }

    /// The last smtpd connections whose lines no session agreed with, each with the reason
    /// the nearest candidate gave (oldest first).
    pub fn mismatches(&self) -> impl Iterator<Item = (&[Held], &str)> {
        self.mismatches
            .iter()
            .map(|(lines, why)| (lines.as_slice(), why.as_str()))
    }

    pub fn stats(&self) -> JoinStats {
        self.stats
    }

    /// One parsed log line.
    pub fn line(&mut self, line: LogLine, sink: &mut dyn Sink) {
        self.stats.lines += 1;
        self.seq += 1;
        let seq = self.seq;
        let line = line.redacted(self.privacy);
        let Some(line) = self.bracket_line(seq, line, sink) else {
            return;
        };
        let Some(line) = self.dovecot_line(seq, line, sink) else {
            return;
        };
        match self.find(&line) {
            Some(id) => self.deliver(id, (seq, line), sink),
            None => self.wait((seq, line)),
        }
    }

    /// An smtpd line into its pid's bracket; the line back when it is in none.
    fn bracket_line(&mut self, seq: u64, l: LogLine, sink: &mut dyn Sink) -> Option<LogLine> {
        let Some(pid) = l.pid.filter(|_| is_smtpd(&l.program)) else {
            return Some(l);
        };
        let key = (l.program.clone(), pid);
        if l.kind == Kind::Connect {
            // A connect while one is open: the disconnect line was lost; that one is over.
            if let Some(prev) = self.open.remove(&key) {
                let ip = prev.ip;
                self.close_bracket(prev);
                self.match_brackets_of(ip, sink);
            }
            match Bracket::open(seq, l.clone()) {
                Some(b) if self.open.len() < self.cfg.max_waiting => {
                    self.open_order.push_back((b.opened, key.clone(), seq));
                    self.open.insert(key, b);
                }
                _ => return Some(l),
            }
            return None;
        }
        let Some(b) = self.open.get_mut(&key) else {
            return Some(l);
        };
        let (closes, kept) = b.push(seq, l, self.cfg.max_lines_per_session);
        if !kept {
            self.stats.dropped += 1;
        }
        if closes {
            if let Some(b) = self.open.remove(&key) {
                let ip = b.ip;
                self.close_bracket(b);
                self.match_brackets_of(ip, sink);
            }
        }
        None
    }

    /// A closed bracket waits among its address's for its session.
    fn close_bracket(&mut self, b: Bracket) {
        let closed = b.closed.unwrap_or(b.opened);
        self.pending_order.push_back((closed, b.ip, b.id));
        self.pending.entry(b.ip).or_default().push_back(b);
    }

    /// Gives every closed bracket of client `ip` that can be decided its session (a bracket's
    /// candidates are all of its address: no other address's can change its answer).
    fn match_brackets_of(&mut self, ip: IpAddr, sink: &mut dyn Sink) {
        self.match_pass(ip, false, sink);
        self.match_pass(ip, true, sink);
    }

    /// One look at the waiting brackets of `ip`, in close order: first only sessions the
    /// wire saw something of (`blind_ok` false), so that the processes those tie to a
    /// service are known before blind sessions are given out.
    fn match_pass(&mut self, ip: IpAddr, blind_ok: bool, sink: &mut dyn Sink) {
        let Some(mut q) = self.pending.remove(&ip) else {
            return;
        };
        let mut i = 0;
        while i < q.len() {
            #[cfg(test)]
            self.work.set(self.work.get() + 1);
            match self.pick(&q[i], blind_ok) {
                Ok(id) => {
                    if let Some(b) = q.remove(i) {
                        self.attach(b, id, sink);
                    }
                }
                Err((until, _)) => {
                    // Waiting for a candidate, but not beyond a bound: looked at again then,
                    // whatever else happens.
                    if let Some(when) = until.filter(|w| *w > self.now) {
                        self.timers.insert((when, ip));
                    }
                    i += 1;
                }
            }
        }
        if !q.is_empty() {
            self.pending.insert(ip, q);
        }
    }

    /// A waiting bracket taken out (to be given up): None when it found its session.
    fn take_pending(&mut self, ip: IpAddr, id: u64) -> Option<Bracket> {
        let q = self.pending.get_mut(&ip)?;
        let b = q.iter().position(|b| b.id == id).and_then(|i| q.remove(i));
        if q.is_empty() {
            self.pending.remove(&ip);
        }
        b
    }

    /// The session of a closed bracket: the first of its client's sessions (in start order)
    /// that agrees with it. Err((Some(until), _)) while an earlier candidate is still open
    /// (wait for its end) or blind and young, with the reason of the nearest disagreement.
    /// Blind sessions are only taken with `blind_ok`, and never by a process known to serve
    /// another listening address.
    fn pick(&self, b: &Bracket, blind_ok: bool) -> Result<ConnId, Undecided> {
        let mut c: Vec<(Ts, ConnId, &Tracked)> = self.candidates(b).collect();
        c.sort_unstable_by_key(|(start, id, _)| (*start, *id));
        let mut why = None;
        let service = self.services.get(&b.process);
        for (_, id, t) in c {
            let Some(end) = t.end else {
                let until = b.closed.unwrap_or(b.opened).saturating_add(CLOSE_SLACK);
                if self.now < until {
                    return Err((Some(until), why));
                }
                continue;
            };
            if t.tally.blind() {
                if let Some(s) = service.filter(|s| *s != t.info.server) {
                    why.get_or_insert_with(|| {
                        format!(
                            "session #{id}: to {}, and {} serves {s}",
                            t.info.server, b.process
                        )
                    });
                    continue;
                }
                if !blind_ok {
                    continue;
                }
                let until = end.saturating_add(BLIND_WAIT);
                if service.is_none() && self.now < until {
                    return Err((Some(until), why));
                }
            }
            // A queue id the wire saw queued in another session is not this one's (inside
            // TLS the bracket's cross-check cannot see it).
            let other = b
                .queue_ids
                .iter()
                .find_map(|q| Some((q, self.queue.get(q).filter(|o| *o != id)?)));
            let against = match other {
                Some((q, o)) => Some(format!("queue id {q} queued in session #{o}")),
                None => disagreement(b, &t.tally),
            };
            match against {
                None => return Ok(id),
                Some(r) => {
                    why.get_or_insert_with(|| format!("session #{id}: {r}"));
                }
            }
        }
        Err((None, why))
    }

    /// The sessions a bracket may be: its client's, started around its connect, not taken.
    fn candidates<'a>(
        &'a self,
        b: &'a Bracket,
    ) -> impl Iterator<Item = (Ts, ConnId, &'a Tracked)> + 'a {
        let from = (b.opened.saturating_sub(BEFORE_CONNECT), 0);
        let to = (b.opened.saturating_add(AFTER_CONNECT), ConnId::MAX);
        self.by_ip
            .get(&b.ip)
            .into_iter()
            .flat_map(move |s| s.range(from..=to))
            .filter_map(|(_, id)| {
                #[cfg(test)]
                self.work.set(self.work.get() + 1);
                Some((*id, self.sessions.get(id)?))
            })
            .filter(|(_, t)| {
                t.info.proto == Proto::Smtp
                    && !t.bracket
                    && b.port.is_none_or(|p| t.info.client.port() == p)
            })
            .map(|(id, t)| (t.info.start, id, t))
    }

    fn attach(&mut self, b: Bracket, id: ConnId, sink: &mut dyn Sink) {
        if let Some(t) = self.sessions.get_mut(&id) {
            t.bracket = true;
            if !t.tally.blind() {
                self.services.insert(&b.process, t.info.server);
            }
        }
        for q in &b.queue_ids {
            self.queue.insert(q, id);
        }
        for l in b.lines {
            self.deliver(id, l, sink);
        }
        for q in &b.queue_ids {
            self.retry(Key::Queue(q.clone()), sink);
        }
    }

    /// A bracket given up: its lines are unmatched, kept for `why` with the reason.
    fn give_up(&mut self, b: Bracket, sink: &mut dyn Sink) {
        let n = b.lines.len() as u64;
        self.stats.unmatched += n;
        let why = self
            .pick(&b, true)
            .err()
            .and_then(|(_, why)| why)
            .unwrap_or_else(|| "no session of that client address".to_string());
        self.stats.mismatched += n;
        self.unmatched(b.lines, why, sink);
    }

    fn unmatched(&mut self, lines: Vec<Held>, why: String, sink: &mut dyn Sink) {
        for (_, l) in &lines {
            sink.unmatched(l, &why);
        }
        self.mismatches.push_back((lines, why));
        while self.mismatches.len() > MAX_MISMATCHES {
            self.mismatches.pop_front();
        }
    }

    /// A Dovecot line with a session id into its connection; the line back when it has none
    /// (a customised `login_log_format_elements` without `session=`).
    fn dovecot_line(&mut self, seq: u64, l: LogLine, sink: &mut dyn Sink) -> Option<LogLine> {
        if !matches!(
            l.program.as_str(),
            "imap-login" | "pop3-login" | "imap" | "pop3"
        ) {
            return Some(l);
        }
        let Some(sid) = l.get("session").map(str::to_string) else {
            return Some(l);
        };
        // Already given to its session: every later line of the id is that session's,
        // however late (a logout hours after the login).
        if let Some(id) = self.dovecot.get(&sid) {
            self.deliver(id, (seq, l), sink);
            return None;
        }
        if !self.dsessions.contains_key(&sid) {
            if self.dsessions.len() >= self.cfg.max_waiting {
                self.stats.unmatched += 1;
                return None;
            }
            self.dsessions
                .insert(sid.clone(), DovecotSession::new(&sid, seq, l.ts));
            self.dexpiry
                .insert((l.ts.saturating_add(self.cfg.wait), sid.clone()));
        }
        let max = self.cfg.max_lines_per_session;
        let d = self.dsessions.get_mut(&sid)?;
        let had_login = d.login.is_some();
        if !d.push(seq, l, max) {
            self.stats.dropped += 1;
        }
        let (first, rip) = (d.first, d.login.as_ref().map(|x| x.rip));
        if let Some(ip) = rip {
            if !had_login {
                // Now that the client is known, among its address's in first-line order.
                let v = self.dwaiting.entry(ip).or_default();
                let at =
                    v.partition_point(|s| self.dsessions.get(s).is_some_and(|d| d.first < first));
                v.insert(at, sid);
            }
            self.match_dovecot_of(ip, sink);
        }
        None
    }

    /// Gives every Dovecot connection of client `ip` that can be decided its session.
    fn match_dovecot_of(&mut self, ip: IpAddr, sink: &mut dyn Sink) {
        let Some(mut v) = self.dwaiting.remove(&ip) else {
            return;
        };
        let mut i = 0;
        while i < v.len() {
            #[cfg(test)]
            self.work.set(self.work.get() + 1);
            let Some(d) = self.dsessions.get(&v[i]) else {
                v.remove(i);
                continue;
            };
            match self.pick_dovecot(d) {
                Ok(id) => {
                    let sid = v.remove(i);
                    if let Some(d) = self.dsessions.remove(&sid) {
                        self.attach_dovecot(d, id, sink);
                    }
                }
                Err(why) => {
                    if let (None, Some(c)) = (&why, d.closed) {
                        let when = c.saturating_add(CLOSE_SLACK);
                        if when > self.now {
                            self.timers.insert((when, ip));
                        }
                    }
                    i += 1;
                }
            }
        }
        if !v.is_empty() {
            self.dwaiting.insert(ip, v);
        }
    }

    /// The session of a Dovecot connection: the first session (in start order) of its client
    /// address (and port, when logged) and server address, of its protocol, not yet taken,
    /// alive around its login line, whose login outcome, user and TLS agree. Err(None) while
    /// undecided (no login line yet, an earlier candidate still open), Err(Some(reason))
    /// when none agrees.
    fn pick_dovecot(&self, d: &DovecotSession) -> Result<ConnId, Option<String>> {
        const SLACK: Ts = 2_000_000_000;
        let Some(login) = &d.login else {
            return Err(None);
        };
        let at = d
            .lines
            .iter()
            .find(|(_, l)| l.program.ends_with("-login"))
            .map_or(d.opened, |(_, l)| l.ts);
        let want = if login.imap { Proto::Imap } else { Proto::Pop3 };
        let mut c: Vec<(Ts, ConnId, &Tracked)> = self
            .by_ip
            .get(&login.rip)
            .into_iter()
            .flat_map(|s| s.range(..=(at.saturating_add(SLACK), ConnId::MAX)))
            .filter_map(|(_, id)| {
                #[cfg(test)]
                self.work.set(self.work.get() + 1);
                Some((*id, self.sessions.get(id)?))
            })
            .filter(|(_, t)| {
                t.info.proto == want
                    && !t.dovecot_login
                    && login.rport.is_none_or(|p| t.info.client.port() == p)
                    && login.lip.is_none_or(|s| t.info.server.ip() == s)
                    && login.lport.is_none_or(|p| t.info.server.port() == p)
                    && t.info.start <= at.saturating_add(SLACK)
                    && t.end.is_none_or(|e| at <= e.saturating_add(SLACK))
            })
            .map(|(id, t)| (t.info.start, id, t))
            .collect();
        c.sort_unstable_by_key(|(start, id, _)| (*start, *id));
        let mut why = None;
        for (_, id, t) in c {
            let Some(wire) = t.login.as_ref().filter(|_| t.end.is_some()) else {
                // Still open: wait for it unless the log has long said this one is over.
                // At the end of input every session has ended.
                let over = self.now == Ts::MAX
                    || d.closed
                        .is_some_and(|c| self.now >= c.saturating_add(CLOSE_SLACK));
                if over {
                    continue;
                }
                return Err(None);
            };
            match dovecot_disagreement(login, wire) {
                None => return Ok(id),
                Some(r) => {
                    why.get_or_insert_with(|| format!("session #{id}: {r}"));
                }
            }
        }
        Err(Some(why.unwrap_or_else(|| {
            "no session of that client address".to_string()
        })))
    }

    fn attach_dovecot(&mut self, d: DovecotSession, id: ConnId, sink: &mut dyn Sink) {
        if let Some(t) = self.sessions.get_mut(&id) {
            t.dovecot_login = true;
        }
        self.dovecot.insert(&d.id, id);
        for l in d.lines {
            self.deliver(id, l, sink);
        }
    }

    /// Dovecot connections due to be looked at again: given up when closed (or first seen)
    /// longer than the wait ago, unless logged in and still open on the wire (IDLE for hours:
    /// looked at again a wait later).
    fn expire_dovecot(&mut self, now: Ts, sink: &mut dyn Sink) {
        let wait = self.cfg.wait;
        let mut again = Vec::new();
        while self.dexpiry.first().is_some_and(|(due, _)| *due <= now) {
            let Some((_, sid)) = self.dexpiry.pop_first() else {
                break;
            };
            let Some(d) = self.dsessions.get(&sid) else {
                continue;
            };
            let since = d.closed.unwrap_or(d.opened);
            let picked = self.pick_dovecot(d);
            let open = d.login.is_some() && picked == Err(None);
            if open || since.saturating_add(wait) > now {
                let due = since.saturating_add(wait);
                again.push((
                    if open {
                        due.max(now.saturating_add(wait))
                    } else {
                        due
                    },
                    sid,
                ));
                continue;
            }
            self.give_up_dovecot(&sid, picked, sink);
        }
        // After the loop: with no wait at all, what is due again is due now.
        self.dexpiry.extend(again);
    }

    /// A Dovecot connection given up: its lines are unmatched, with the reason.
    fn give_up_dovecot(
        &mut self,
        sid: &str,
        picked: Result<ConnId, Option<String>>,
        sink: &mut dyn Sink,
    ) {
        let Some(d) = self.dsessions.remove(sid) else {
            return;
        };
        if let Some(ip) = d.login.as_ref().map(|l| l.rip) {
            if let Some(v) = self.dwaiting.get_mut(&ip) {
                v.retain(|s| s != sid);
                if v.is_empty() {
                    self.dwaiting.remove(&ip);
                }
            }
        }
        let why = match picked {
            Err(Some(why)) => why,
            _ => format!("no login line of session {}", d.id),
        };
        let n = d.lines.len() as u64;
        self.stats.unmatched += n;
        self.stats.mismatched += n;
        self.unmatched(d.lines, why, sink);
    }

    /// Lets time pass: records whose linger is over are written, old waiting lines and
    /// ended sessions are forgotten. Only what is due is looked at: replay ticks at every
    /// frame, and a relay has thousands of sessions open.
    pub fn tick(&mut self, now: Ts, sink: &mut dyn Sink) {
        self.now = self.now.max(now);
        let mut ips = Vec::new();
        while self.timers.first().is_some_and(|(when, _)| *when <= now) {
            if let Some((_, ip)) = self.timers.pop_first() {
                if !ips.contains(&ip) {
                    ips.push(ip);
                }
            }
        }
        for ip in ips {
            self.match_brackets_of(ip, sink);
            self.match_dovecot_of(ip, sink);
        }
        while let Some(&(closed, ip, id)) = self.pending_order.front() {
            if closed.saturating_add(self.cfg.wait) > now {
                break;
            }
            self.pending_order.pop_front();
            // A last look (the session may just have ended), then given up.
            self.match_brackets_of(ip, sink);
            if let Some(b) = self.take_pending(ip, id) {
                self.give_up(b, sink);
            }
        }
        self.expire_dovecot(now, sink);
        // A connection still open past the wait, with no session on the wire that could be
        // it (its packets were never captured): its lines will find nothing. One that could
        // be a long session's is looked at again a wait later.
        let mut again = Vec::new();
        while let Some(&(opened, _, _)) = self.open_order.front() {
            if opened.saturating_add(self.cfg.wait) > now {
                break;
            }
            let Some((_, key, id)) = self.open_order.pop_front() else {
                break;
            };
            let Some(b) = self.open.get(&key).filter(|b| b.id == id) else {
                continue;
            };
            if self.candidates(b).next().is_some() {
                again.push((now, key, id));
            } else if let Some(b) = self.open.remove(&key) {
                self.give_up(b, sink);
            }
        }
        self.open_order.extend(again);
        let mut due = Vec::new();
        while self
            .lingering
            .first()
            .is_some_and(|(until, _)| *until <= now)
        {
            if let Some((_, id)) = self.lingering.pop_first() {
                due.push(id);
            }
        }
        // In session order.
        due.sort_unstable();
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
                v.retain(|l| l.1.ts.saturating_add(wait) > now);
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
        // The capture is over: what is still open is closed, and every candidate has ended.
        self.now = Ts::MAX;
        let mut open: Vec<Bracket> = self.open.drain().map(|(_, b)| b).collect();
        open.sort_unstable_by_key(|b| b.id);
        self.open_order.clear();
        for b in open {
            self.close_bracket(b);
        }
        // Every address with a waiting bracket, in the order the first of them closed.
        let mut ips: Vec<IpAddr> = Vec::new();
        for &(_, ip, _) in &self.pending_order {
            if !ips.contains(&ip) && self.pending.contains_key(&ip) {
                ips.push(ip);
            }
        }
        // Every session the wire saw something of first: what they tie to a service rules
        // processes out of the blind ones, whatever address they were on.
        for blind_ok in [false, true] {
            for &ip in &ips {
                self.match_pass(ip, blind_ok, sink);
            }
        }
        while let Some((_, ip, id)) = self.pending_order.pop_front() {
            if let Some(b) = self.take_pending(ip, id) {
                self.give_up(b, sink);
            }
        }
        let mut ips: Vec<(u64, IpAddr)> = self
            .dwaiting
            .iter()
            .filter_map(|(ip, v)| Some((self.dsessions.get(v.first()?)?.first, *ip)))
            .collect();
        ips.sort_unstable();
        for (_, ip) in ips {
            self.match_dovecot_of(ip, sink);
        }
        let mut left: Vec<(u64, String)> = self
            .dsessions
            .values()
            .map(|d| (d.first, d.id.clone()))
            .collect();
        left.sort_unstable();
        for (_, sid) in left {
            let picked = match self.dsessions.get(&sid) {
                Some(d) => self.pick_dovecot(d),
                None => continue,
            };
            self.give_up_dovecot(&sid, picked, sink);
        }
        self.dexpiry.clear();
        self.timers.clear();
        let mut ids: Vec<ConnId> = std::mem::take(&mut self.lingering)
            .into_iter()
            .map(|(_, id)| id)
            .collect();
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
                v.remove(&(t.info.start, id));
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
        let State::Lingering { record } = std::mem::replace(&mut t.state, State::Closed { until })
        else {
            return;
        };
        let mut record = *record;
        if !t.lines.is_empty() {
            t.lines.sort_unstable_by_key(|l| l.0);
            let entries: Vec<Value> = t.lines.iter().map(|l| entry_for(&l.1, &record)).collect();
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
            .range(..=(l.ts.saturating_add(SLACK), ConnId::MAX))
            .filter_map(|(_, id)| Some((*id, self.sessions.get(id)?)))
            .filter(|(_, t)| {
                proto(t.info.proto)
                    && port.is_none_or(|p| t.info.client.port() == p)
                    && server.is_none_or(|s| t.info.server.ip() == s)
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

    fn wait(&mut self, l: Held) {
        let Some(key) = Self::key(&l.1) else {
            self.stats.unmatched += 1;
            return;
        };
        if self.waiting_count >= self.cfg.max_waiting {
            self.stats.unmatched += 1;
            return;
        }
        self.waiting_order.push_back((l.1.ts, key.clone()));
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
            match self.find(&l.1) {
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

    fn deliver(&mut self, id: ConnId, (seq, l): Held, sink: &mut dyn Sink) {
        self.stats.matched += 1;
        // A bounce belongs to the story of the message that caused it.
        let bounce = (l.kind == Kind::Bounce).then(|| l.get("new_queue_id").map(str::to_string));
        let late = match self.sessions.get_mut(&id) {
            Some(t) if !matches!(t.state, State::Closed { .. }) => {
                if t.lines.len() < self.cfg.max_lines_per_session {
                    t.lines.push((seq, l.clone()));
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

/// `postfix/smtpd`, `postfix/submission/smtpd`, `postfix/smtps/smtpd` (any `syslog_name`).
fn is_smtpd(program: &str) -> bool {
    program.starts_with("postfix") && (program == "smtpd" || program.ends_with("/smtpd"))
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
                // Joined in the middle: the wire's counts are a lower bound.
                tally: Tally::new(info.partial),
                bracket: false,
                login: None,
            },
        );
        j.by_ip
            .entry(info.client.ip())
            .or_default()
            .insert((info.start, info.id));
        self.inner.session_start(info);
        let ip = info.client.ip();
        j.retry(Key::Addr(ip, Some(info.client.port())), self.inner);
        j.retry(Key::Addr(ip, None), self.inner);
        j.match_brackets_of(ip, self.inner);
    }

    fn event(&mut self, info: &SessionInfo, ev: &Event) {
        self.inner.event(info, ev);
        let Some(j) = self.joiner.as_deref_mut() else {
            return;
        };
        if info.proto == Proto::Smtp {
            if let Some(t) = j.sessions.get_mut(&info.id) {
                t.tally.event(ev);
            }
        }
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
        if let Some(t) = self
            .joiner
            .as_deref_mut()
            .and_then(|j| j.sessions.get_mut(&info.id))
        {
            t.tally.incomplete = true;
        }
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
        let Some(t) = j.sessions.get_mut(&info.id) else {
            return self.inner.session_end(info, record);
        };
        // A blind session's bracket is only given to it BLIND_WAIT after its end: its record
        // waits for it.
        let linger = match info.proto == Proto::Smtp && t.tally.blind() {
            true => BLIND_WAIT.saturating_add(j.cfg.linger),
            false => j.cfg.linger,
        };
        let until = record.end.saturating_add(linger);
        t.end = Some(record.end);
        if matches!(info.proto, Proto::Imap | Proto::Pop3) {
            t.login = Some(WireLogin::of(record, info.partial || t.tally.incomplete));
        }
        t.state = State::Lingering {
            record: Box::new(record.clone()),
        };
        j.lingering.insert((until, info.id));
        let ip = info.client.ip();
        j.retry(Key::Addr(ip, Some(info.client.port())), self.inner);
        j.retry(Key::Addr(ip, None), self.inner);
        j.match_brackets_of(ip, self.inner);
        j.match_dovecot_of(ip, self.inner);
    }

    fn log(&mut self, session: ConnId, line: &LogLine, late: bool) {
        self.inner.log(session, line, late);
    }

    fn unmatched(&mut self, line: &LogLine, why: &str) {
        self.inner.unmatched(line, why);
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
        fn unmatched(&mut self, l: &LogLine, why: &str) {
            self.out
                .push(format!("unmatched {} ({why})", l.kind.name()));
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

    /// The joiner as the engine's sink, in front of `out`.
    fn joined<'a>(j: &'a mut Joiner, out: &'a mut Rec) -> Joined<'a> {
        Joined {
            joiner: Some(j),
            inner: out,
        }
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
        joined(&mut j, &mut out).session_start(&i);
        j.line(line("Nov 27 23:39:56 mx postfix/qmgr[14342]: A74CF98E292: from=<sender@client.test>, size=313, nrcpt=1 (queue active)"), &mut out);
        joined(&mut j, &mut out).event(&i, &reply("Ok: queued as A74CF98E292"));
        let rec = record(
            &i,
            T0 + S / 10,
            json!({"transactions":[{"queue_id":"A74CF98E292","rcpt":[]}]}),
        );
        joined(&mut j, &mut out).session_end(&i, &rec);
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
                dropped: 0,
                mismatched: 0,
            }
        );
    }

    #[test]
    fn noqueue_reject_names_its_rcpt_and_late_lines_wait_no_longer_than_allowed() {
        let mut j = Joiner::new(JoinConfig::default(), Privacy::default());
        let mut out = Rec::default();
        let i = info(3, Proto::Smtp, "10.99.152.1:46268", "10.99.152.2:25", T0);
        let other = info(4, Proto::Smtp, "10.99.152.1:46270", "10.99.152.2:25", T0);
        joined(&mut j, &mut out).session_start(&i);
        joined(&mut j, &mut out).session_start(&other);
        let rec = record(
            &i,
            T0 + S / 2,
            json!({"transactions":[{"queue_id":null,"rcpt":[{"addr":"nobody@mx.test","code":550}]}]}),
        );
        joined(&mut j, &mut out).session_end(&i, &rec);
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
            joined(&mut j, &mut out).session_start(s);
        }
        let rec = record(&imap, T0 + S, json!({}));
        joined(&mut j, &mut out).session_end(&imap, &rec);
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
            joined(&mut j, &mut out).session_start(s);
        }
        let rec = record(&old, T0 - 50 * S, json!({}));
        joined(&mut j, &mut out).session_end(&old, &rec);
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

    fn cmd(verb: &str, arg: &str) -> Event {
        Event::Command {
            ts: T0,
            verb: verb.into(),
            arg: arg.into(),
        }
    }

    fn coded(code: &str, text: &str) -> Event {
        Event::Reply {
            ts: T0,
            code: code.into(),
            enhanced: None,
            text: text.into(),
            latency_ns: None,
        }
    }

    /// One wire session through the joiner: start, the dialogue, end.
    fn session(j: &mut Joiner, out: &mut Rec, i: &SessionInfo, evs: &[Event], fields: Value) {
        let mut s = joined(j, out);
        s.session_start(i);
        for e in evs {
            s.event(i, e);
        }
        s.session_end(i, &record(i, i.start + S / 10, fields));
    }

    /// A delivered session's dialogue: one message, queued as `queue_id`.
    fn delivered(queue_id: &str) -> Vec<Event> {
        vec![
            coded("220", "mx"),
            cmd("EHLO", "c"),
            coded("250", "mx"),
            cmd("MAIL", "FROM:<s@c>"),
            coded("250", "Ok"),
            cmd("RCPT", "TO:<alice@mx.test>"),
            coded("250", "Ok"),
            cmd("DATA", ""),
            coded("354", "go"),
            coded("250", &format!("Ok: queued as {queue_id}")),
            cmd("QUIT", ""),
            coded("221", "Bye"),
        ]
    }

    /// A rejected session's dialogue: its one recipient `to` refused with 550.
    fn rejected(to: &str) -> Vec<Event> {
        vec![
            coded("220", "mx"),
            cmd("EHLO", "c"),
            coded("250", "mx"),
            cmd("MAIL", "FROM:<s@c>"),
            coded("250", "Ok"),
            cmd("RCPT", &format!("TO:<{to}>")),
            coded("550", "5.1.1 rejected"),
            cmd("QUIT", ""),
            coded("221", "Bye"),
        ]
    }

    /// Lines that arrive after their session's record was written (a late `disconnect`, a
    /// delivery, a bounce and the bounce's own lines) go to that session as `log` records of
    /// their own, also after the same smtpd pid has served further sessions of the client.
    #[test]
    fn late_lines_join_their_session_after_the_pid_served_others() {
        let mut j = Joiner::new(JoinConfig::default(), Privacy::default());
        let mut out = Rec::default();
        let first = info(1, Proto::Smtp, "10.99.1.1:4000", "10.99.1.2:25", T0);
        let second = info(2, Proto::Smtp, "10.99.1.1:4002", "10.99.1.2:25", T0 + 3 * S);
        let third = info(3, Proto::Smtp, "10.99.1.1:4004", "10.99.1.2:25", T0 + 4 * S);
        // `at(3956, …)`: stamped 23:39:56.
        let at = |t: u32, m: &str| line(&format!("Nov 27 23:{}:{:02} {m}", t / 100, t % 100));
        let smtpd = |t: u32, m: &str| at(t, &format!("mx postfix/smtpd[7]: {m}"));
        session(
            &mut j,
            &mut out,
            &first,
            &delivered("A74CF98E292"),
            json!({}),
        );
        j.line(smtpd(3956, "connect from unknown[10.99.1.1]"), &mut out);
        j.line(
            smtpd(3956, "A74CF98E292: client=unknown[10.99.1.1]"),
            &mut out,
        );
        j.line(
            at(3956, "mx postfix/cleanup[8]: A74CF98E292: message-id=<x@y>"),
            &mut out,
        );
        // The record is written; smtpd's disconnect comes later still.
        j.tick(T0 + 2 * S, &mut out);
        j.line(
            smtpd(
                3956,
                "disconnect from unknown[10.99.1.1] ehlo=1 mail=1 rcpt=1 data=1 quit=1 commands=5",
            ),
            &mut out,
        );
        // The pid serves two more sessions of the client.
        session(
            &mut j,
            &mut out,
            &second,
            &rejected("nobody@mx.test"),
            json!({}),
        );
        session(
            &mut j,
            &mut out,
            &third,
            &delivered("B1C2D3E4F5"),
            json!({}),
        );
        for (sec, m) in [
            (3959, "connect from unknown[10.99.1.1]"),
            (3959, "NOQUEUE: reject: RCPT from unknown[10.99.1.1]: 550 5.1.1 <nobody@mx.test>: Recipient address rejected: User unknown; from=<s@c> to=<nobody@mx.test> proto=ESMTP helo=<c>"),
            (3959, "disconnect from unknown[10.99.1.1] ehlo=1 mail=1 rcpt=0/1 quit=1 commands=3/4"),
            (4000, "connect from unknown[10.99.1.1]"),
            (4000, "B1C2D3E4F5: client=unknown[10.99.1.1]"),
            (4000, "disconnect from unknown[10.99.1.1] ehlo=1 mail=1 rcpt=1 data=1 quit=1 commands=5"),
        ] {
            j.line(smtpd(sec, m), &mut out);
        }
        j.tick(T0 + 10 * S, &mut out);
        // Minutes later: the first message bounces, the bounce's own id follows it.
        for m in [
            "mx postfix/smtp[9]: A74CF98E292: to=<alice@mx.test>, relay=none, delay=300, delays=0/0/300/0, dsn=4.4.1, status=deferred (connect to mx.example: Connection timed out)",
            "mx postfix/bounce[10]: A74CF98E292: sender non-delivery notification: C0FFEE12345",
            "mx postfix/qmgr[11]: C0FFEE12345: removed",
            "mx postfix/qmgr[11]: B1C2D3E4F5: removed",
        ] {
            j.line(at(4456, m), &mut out);
        }
        j.finish(&mut out);
        assert_eq!(
            out.out,
            [
                "start #1",
                "log #1 message-id false",
                "end #1",
                // The bracket closes after the record: all its lines as records of their own.
                "log #1 connect true",
                "log #1 client true",
                "log #1 disconnect true",
                "start #2",
                "start #3",
                "log #2 connect false",
                "log #2 reject false",
                "log #2 disconnect false",
                "log #3 connect false",
                "log #3 client false",
                "log #3 disconnect false",
                "end #2",
                "end #3",
                "log #1 delivery true",
                "log #1 bounce true",
                "log #1 removed true",
                "log #3 removed true",
            ]
        );
        assert_eq!((j.stats().unmatched, j.stats().matched), (0, 14));
    }

    /// A relay with thousands of sessions open: the work of a line or a tick is that of the
    /// sessions and connections it is about, not of all those open (replay ticks at every
    /// frame).
    #[test]
    fn thousands_of_open_sessions_cost_each_line_and_tick_little() {
        const N: u32 = 3000;
        let mut j = Joiner::new(JoinConfig::default(), Privacy::default());
        let mut out = Rec::default();
        let client = |k: u32| format!("10.99.{}.{}", 1 + k / 250, 1 + k % 250);
        let sessions: Vec<SessionInfo> = (0..N)
            .map(|k| {
                let (proto, port) = if k % 2 == 0 {
                    (Proto::Smtp, 25)
                } else {
                    (Proto::Imap, 143)
                };
                let c = format!("{}:40000", client(k));
                info(
                    u64::from(k) + 1,
                    proto,
                    &c,
                    &format!("10.99.0.1:{port}"),
                    T0,
                )
            })
            .collect();
        for s in &sessions {
            joined(&mut j, &mut out).session_start(s);
        }
        // Every one's lines while all are open, a tick after each (the wire is behind).
        for (k, s) in (0..N).zip(&sessions) {
            let c = client(k);
            if s.proto == Proto::Smtp {
                for m in [
                    format!("connect from unknown[{c}]:40000"),
                    format!("disconnect from unknown[{c}]:40000 ehlo=1 quit=1 commands=2"),
                ] {
                    j.line(
                        line(&format!("Nov 27 23:39:56 mx postfix/smtpd[{k}]: {m}")),
                        &mut out,
                    );
                }
            } else {
                j.line(dc(&format!("imap-login: Login: user=<alice@mx.test>, method=PLAIN, rip={c}, lip=10.99.0.1, mpid={k}, session=<s{k}>")), &mut out);
            }
            j.tick(T0 + S / 10, &mut out);
        }
        let work = j.work.get();
        assert!(
            work <= 4 * u64::from(N),
            "work {work} for {N} sessions open"
        );
        let smtp = [
            coded("220", "mx"),
            cmd("EHLO", "c"),
            coded("250", "mx"),
            cmd("QUIT", ""),
            coded("221", "Bye"),
        ];
        for s in &sessions {
            let mut w = joined(&mut j, &mut out);
            if s.proto == Proto::Smtp {
                for e in &smtp {
                    w.event(s, e);
                }
                w.session_end(s, &record(s, T0 + S, json!({})));
            } else {
                w.session_end(
                    s,
                    &record(s, T0 + S, mailbox("alice@mx.test", "LOGIN", "OK")),
                );
            }
        }
        j.tick(T0 + 5 * S, &mut out);
        let work = j.work.get();
        assert!(work <= 12 * u64::from(N), "work {work} for {N} sessions");
        j.finish(&mut out);
        let logs = |kind: &str| {
            out.out
                .iter()
                .filter(|o| o.starts_with("log #") && o.contains(kind))
                .count()
        };
        assert_eq!(
            (logs(" connect "), logs(" disconnect "), logs(" login ")),
            (N as usize / 2, N as usize / 2, N as usize / 2)
        );
        assert_eq!(out.records.len(), N as usize);
        assert!(out.records.iter().all(|r| r.field("log").is_some()));
        assert_eq!(
            (j.stats().unmatched, j.stats().matched),
            (0, 3 * u64::from(N) / 2)
        );
    }

    #[test]
    fn one_smtpd_pid_back_to_back_without_ports_follows_its_brackets() {
        let mut j = Joiner::new(JoinConfig::default(), Privacy::default());
        let mut out = Rec::default();
        let delivered = delivered("A74CF98E292");
        let rejected = rejected("nobody@mx.test");
        // Both sessions within one second, both ended before any line is read.
        let a = info(1, Proto::Smtp, "10.99.1.1:4000", "10.99.1.2:25", T0);
        let b = info(2, Proto::Smtp, "10.99.1.1:4002", "10.99.1.2:25", T0 + S / 5);
        // A third session from the client whose lines are lost.
        let c = info(3, Proto::Smtp, "10.99.1.1:4004", "10.99.1.2:25", T0 + S / 2);
        session(&mut j, &mut out, &a, &delivered, json!({}));
        session(&mut j, &mut out, &b, &rejected, json!({}));
        session(&mut j, &mut out, &c, &rejected, json!({}));
        let pf = |m: &str| line(&format!("Nov 27 23:39:56 mx postfix/smtpd[7]: {m}"));
        for l in [
            "connect from unknown[10.99.1.1]",
            "A74CF98E292: client=unknown[10.99.1.1]",
            "disconnect from unknown[10.99.1.1] ehlo=1 mail=1 rcpt=1 data=1 quit=1 commands=5",
            "connect from unknown[10.99.1.1]",
            "NOQUEUE: reject: RCPT from unknown[10.99.1.1]: 550 5.1.1 <nobody@mx.test>: Recipient address rejected: User unknown; from=<s@c> to=<nobody@mx.test> proto=ESMTP helo=<c>",
            "disconnect from unknown[10.99.1.1] ehlo=1 mail=1 rcpt=0/1 quit=1 commands=3/4",
            // A connection the wire did not see like this: no session agrees.
            "connect from unknown[10.99.1.1]",
            "disconnect from unknown[10.99.1.1] ehlo=1 quit=1 commands=2",
        ] {
            j.line(pf(l), &mut out);
        }
        j.line(
            line("Nov 27 23:39:56 mx postfix/qmgr[9]: A74CF98E292: removed"),
            &mut out,
        );
        j.finish(&mut out);
        assert_eq!(
            out.out[3..],
            [
                "log #1 connect false",
                "log #1 client false",
                "log #1 disconnect false",
                "log #2 connect false",
                "log #2 reject false",
                "log #2 disconnect false",
                "log #1 removed false",
                "unmatched connect (session #3: mail: 1/1 on the wire, none in the log)",
                "unmatched disconnect (session #3: mail: 1/1 on the wire, none in the log)",
                "end #1",
                "end #2",
                "end #3",
            ]
        );
        assert_eq!(j.stats().mismatched, 2);
        assert_eq!(j.stats().unmatched, 2);
        let (lines, why) = j.mismatches().next().unwrap();
        assert_eq!(lines.len(), 2);
        assert_eq!(why, "session #3: mail: 1/1 on the wire, none in the log");
        let log = out.records[1].field("log").unwrap();
        assert_eq!(
            (log[1]["event"].as_str(), log[1]["transaction"].clone()),
            (Some("reject"), Value::Null)
        );
    }

    /// An smtps session (implicit TLS: nothing countable on the wire) agrees with every
    /// bracket, also with that of a connection just before the capture started: the process
    /// of that one serves port 25 (its next connection, a STARTTLS session, says so), so it is
    /// not the smtps session's, which gets its own bracket's lines in its record.
    #[test]
    fn a_blind_session_goes_to_a_process_of_its_service() {
        let mut j = Joiner::new(JoinConfig::default(), Privacy::default());
        let mut out = Rec::default();
        let pf = |prog: &str, m: &str| line(&format!("Nov 27 23:39:56 mx {prog}: {m}"));
        // The probe: logged before the capture saw anything.
        for l in [
            "connect from unknown[10.99.1.1]",
            "disconnect from unknown[10.99.1.1] quit=1 commands=1",
        ] {
            j.line(pf("postfix/smtpd[7]", l), &mut out);
        }
        let tls = Event::TlsStarted { ts: T0 };
        let a = info(
            1,
            Proto::Smtp,
            "10.99.1.1:4000",
            "10.99.1.2:465",
            T0 + S / 5,
        );
        session(&mut j, &mut out, &a, std::slice::from_ref(&tls), json!({}));
        for l in [
            "connect from unknown[10.99.1.1]",
            "A74CF98E292: client=unknown[10.99.1.1], sasl_method=PLAIN, sasl_username=alice@mx.test",
            "disconnect from unknown[10.99.1.1] ehlo=1 auth=1 mail=1 rcpt=1 data=1 quit=1 commands=6",
        ] {
            j.line(pf("postfix/smtps/smtpd[8]", l), &mut out);
        }
        let b = info(2, Proto::Smtp, "10.99.1.1:4002", "10.99.1.2:25", T0 + S / 2);
        let starttls = [
            coded("220", "mx"),
            cmd("EHLO", "c"),
            coded("250", "mx"),
            cmd("STARTTLS", ""),
            coded("220", "go ahead"),
            tls,
        ];
        j.tick(T0 + S, &mut out);
        session(&mut j, &mut out, &b, &starttls, json!({}));
        for l in [
            "connect from unknown[10.99.1.1]",
            "disconnect from unknown[10.99.1.1] ehlo=2 starttls=1 mail=1 rcpt=1 data=1 quit=1 commands=7",
        ] {
            j.line(pf("postfix/smtpd[7]", l), &mut out);
        }
        // Capture time passes: the blind session's wait is over, its record is written.
        j.tick(T0 + 8 * S, &mut out);
        let written = out.out.len();
        // The probe waits its 30 s like any connection no session agreed with.
        j.finish(&mut out);
        assert_eq!(
            out.out,
            [
                "start #1",
                "start #2",
                "log #2 connect false",
                "log #2 disconnect false",
                "log #1 connect false",
                "log #1 client false",
                "log #1 disconnect false",
                "end #1",
                "end #2",
                "unmatched connect (no session of that client address)",
                "unmatched disconnect (no session of that client address)",
            ]
        );
        assert_eq!(written, 9, "both records written before the end of input");
        assert_eq!(j.stats().mismatched, 2);
    }

    /// An IMAP/POP3 session's record as the dissectors write it.
    fn mailbox(user: &str, mechanism: &str, result: &str) -> Value {
        json!({"tls": false, "user": user, "auth": {"mechanism": mechanism, "user": user, "result": result}})
    }

    /// Debian's dovecot-core through syslog: the ident is `dovecot`, the program follows.
    fn dc(m: &str) -> LogLine {
        line(&format!("Nov 27 23:39:56 mx dovecot: {m}"))
    }

    #[test]
    fn dovecot_back_to_back_without_ports_follows_session_ids_and_the_wire_login() {
        let mut j = Joiner::new(JoinConfig::default(), Privacy::default());
        let mut out = Rec::default();
        let imap = |id, port: u16, start| {
            info(
                id,
                Proto::Imap,
                &format!("10.99.1.1:{port}"),
                "10.99.1.2:143",
                start,
            )
        };
        let s1 = imap(1, 4000, T0);
        let s2 = imap(2, 4002, T0 + S / 5);
        let s3 = imap(3, 4004, T0 + 2 * S / 5);
        let s4 = info(
            4,
            Proto::Pop3,
            "10.99.1.1:4006",
            "10.99.1.2:110",
            T0 + 3 * S / 5,
        );
        let s5 = imap(5, 4008, T0 + 4 * S / 5);
        let alice = "alice@mx.test";
        session(&mut j, &mut out, &s1, &[], mailbox(alice, "LOGIN", "OK"));
        session(&mut j, &mut out, &s2, &[], mailbox(alice, "LOGIN", "NO"));
        session(&mut j, &mut out, &s3, &[], mailbox(alice, "PLAIN", "OK"));
        session(
            &mut j,
            &mut out,
            &s4,
            &[],
            mailbox("bob@mx.test", "USER", "-ERR"),
        );
        session(&mut j, &mut out, &s5, &[], mailbox(alice, "LOGIN", "NO"));
        for m in [
            // The journal may have the mail process's last line before the login process's
            // (Dovecot's log process reads them from two pipes).
            "imap(alice@mx.test)<14443><LLVHlEphMFcKY5gB>: Disconnected: Logged out in=37 out=456 deleted=0 expunged=0 trashed=0 hdr_count=0 hdr_bytes=0 body_count=0 body_bytes=0",
            "imap-login: Login: user=<alice@mx.test>, method=PLAIN, rip=10.99.1.1, lip=10.99.1.2, mpid=14443, session=<LLVHlEphMFcKY5gB>",
            "imap-login: Disconnected: Aborted login by logging out (auth failed, 1 attempts in 0 secs): user=<alice@mx.test>, method=PLAIN, rip=10.99.1.1, lip=10.99.1.2, session=<MHM+lEphvsoKY5gB>",
            "imap-login: Login: user=<alice@mx.test>, method=PLAIN, rip=10.99.1.1, lip=10.99.1.2, mpid=14450, session=<uLc8lEphtMoKY5gB>",
        ] {
            j.line(dc(m), &mut out);
        }
        // The records are written; the rest of the lines come late.
        j.tick(T0 + 10 * S, &mut out);
        for m in [
            "pop3-login: Disconnected (auth failed, 1 attempts in 0 secs): user=<bob@mx.test>, method=PLAIN, rip=10.99.1.1, lip=10.99.1.2, session=<vqxTlEph3rEKY5gB>",
            "imap(alice@mx.test)<14450><uLc8lEphtMoKY5gB>: Info: Disconnected: Connection closed (IDLE running for 0.001 + waiting input for 0.002 secs, 2 B in + 10+10 B out, state=wait-input) in=20 out=335 deleted=0 expunged=0 trashed=0 hdr_count=0 hdr_bytes=0 body_count=0 body_bytes=0",
            // Said to have logged in, but the one session left failed on the wire.
            "imap-login: Login: user=<alice@mx.test>, method=PLAIN, rip=10.99.1.1, lip=10.99.1.2, mpid=14460, session=<ZZZZlEphtMoKY5gB>",
            "imap(alice@mx.test)<14460><ZZZZlEphtMoKY5gB>: Disconnected: Logged out in=1 out=2",
        ] {
            j.line(dc(m), &mut out);
        }
        j.finish(&mut out);
        let why = "session #5: login failed on the wire, login succeeded in the log";
        assert_eq!(
            out.out[5..],
            [
                "log #1 logout false",
                "log #1 login false",
                "log #2 login-failed false",
                "log #3 login false",
                "end #1",
                "end #2",
                "end #3",
                "end #4",
                "end #5",
                "log #4 login-failed true",
                "log #3 logout true",
                &format!("unmatched login ({why})"),
                &format!("unmatched logout ({why})"),
            ]
        );
        assert_eq!((j.stats().unmatched, j.stats().mismatched), (2, 2));
        let (lines, w) = j.mismatches().next().unwrap();
        assert_eq!((lines.len(), w), (2, why));
        // The record lists them as the log did.
        let log = out.records[0].field("log").unwrap();
        assert_eq!(
            (log[0]["event"].as_str(), log[1]["event"].as_str()),
            (Some("logout"), Some("login"))
        );
        assert_eq!(log[1]["fields"]["session"], "LLVHlEphMFcKY5gB");
    }

    #[test]
    fn dovecot_rport_and_user_choose_among_concurrent_sessions() {
        let mut j = Joiner::new(JoinConfig::default(), Privacy::default());
        let mut out = Rec::default();
        let a = info(1, Proto::Imap, "10.99.1.1:4000", "10.99.1.2:143", T0);
        let b = info(2, Proto::Imap, "10.99.1.1:4002", "10.99.1.2:143", T0);
        let c = info(3, Proto::Imap, "10.99.1.1:4004", "10.99.1.2:143", T0);
        session(
            &mut j,
            &mut out,
            &a,
            &[],
            mailbox("alice@mx.test", "LOGIN", "OK"),
        );
        session(
            &mut j,
            &mut out,
            &b,
            &[],
            mailbox("bob@mx.test", "LOGIN", "OK"),
        );
        session(
            &mut j,
            &mut out,
            &c,
            &[],
            mailbox("alice@mx.test", "LOGIN", "OK"),
        );
        for m in [
            // rport names session #3 although #1 started first with the same user.
            "imap-login: Login: user=<alice@mx.test>, method=PLAIN, rip=10.99.1.1, rport=4004, lip=10.99.1.2, mpid=1, session=<c>",
            // Without a port, the user sets #2 apart.
            "imap-login: Login: user=<bob@mx.test>, method=PLAIN, rip=10.99.1.1, lip=10.99.1.2, mpid=2, session=<b>",
            "imap-login: Login: user=<alice@mx.test>, method=PLAIN, rip=10.99.1.1, lip=10.99.1.2, mpid=3, session=<a>",
            // A port no session has.
            "imap-login: Disconnected (auth failed, 1 attempts in 0 secs): user=<carol@mx.test>, method=PLAIN, rip=10.99.1.1, rport=4999, lip=10.99.1.2, session=<x>",
        ] {
            j.line(dc(m), &mut out);
        }
        j.finish(&mut out);
        assert_eq!(
            out.out[3..],
            [
                "log #3 login false",
                "log #2 login false",
                "log #1 login false",
                "unmatched login-failed (no session of that client address)",
                "end #1",
                "end #2",
                "end #3",
            ]
        );
        // A user mismatch is said as such.
        let wire = WireLogin::of(
            &record(&a, T0, mailbox("alice@mx.test", "LOGIN", "OK")),
            false,
        );
        let l = super::super::bracket::DovecotLogin::of(&dc("imap-login: Login: user=<bob@mx.test>, method=PLAIN, rip=10.99.1.1, lip=10.99.1.2, mpid=2, session=<b>")).unwrap();
        assert_eq!(
            dovecot_disagreement(&l, &wire).as_deref(),
            Some("user \"alice@mx.test\" on the wire, \"bob@mx.test\" in the log")
        );
        let tls = WireLogin {
            tls: Some(true),
            blind: true,
            ..WireLogin::default()
        };
        assert_eq!(
            dovecot_disagreement(&l, &tls).as_deref(),
            Some("TLS used on the wire, no TLS in the log")
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
    fn unmatched_lines_in_the_tail_and_as_json_records() {
        let l = parse(
            "Nov 27 23:39:56 mx postfix/smtpd[7]: A74CF98E292: client=unknown[10.99.1.1]",
            &Clock::utc(1_795_823_100_000_000_000),
        )
        .unwrap()
        .redacted(Privacy::default());
        let why = "session #3: queue id A74CF98E292 not queued in the session";
        let mut j = JsonLines::new(Vec::new(), false);
        j.unmatched(&l, why);
        assert_eq!(
            String::from_utf8(j.into_inner()).unwrap(),
            "{\"type\":\"log\",\"session\":null,\"unmatched\":\"session #3: queue id A74CF98E292 not queued in the session\",\"ts\":\"2026-11-27T23:39:56.000000Z\",\"program\":\"postfix/smtpd\",\"pid\":7,\"queue_id\":\"A74CF98E292\",\"event\":\"client\",\"fields\":{\"client\":\"unknown[10.99.1.1]\",\"client_ip\":\"10.99.1.1\"}}\n"
        );
        let mut t = tail::Tail::new(
            Vec::new(),
            tail::Style {
                color: false,
                explain: true,
            },
            Privacy::default(),
        );
        t.unmatched(&l, why);
        assert_eq!(
            String::from_utf8(t.into_inner()).unwrap(),
            "23:39:56.000000 log unmatched: postfix/smtpd[7] A74CF98E292 client: client=unknown[10.99.1.1] (session #3: queue id A74CF98E292 not queued in the session)\n"
        );
    }

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
