//! The session engine: TCP flows joined to protocol dissectors, and the records
//! they produce.
//!
//! [`Engine::frame`] takes every [`Frame`] of a source (live or file) and drives
//! it down the path: [`crate::wire::decode`] → [`FlowTable`] → the connection's
//! [`Dissector`] → a [`Sink`] (the outputs). The engine is synchronous and does no
//! I/O; the caller passes time in through the frames and [`Engine::tick`].
pub mod record;
mod sniff;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;

use crate::capture::procfs::Process;
use crate::capture::Frame;
use crate::findings::{Finding, MAX_FINDINGS};
use crate::flow::{CloseReason, ConnId, Dir, FlowConfig, FlowEvent, FlowTable};
use crate::proto::{imap::Imap, pop3::Pop3, smtp::Smtp};
use crate::proto::{Dissector, Event, Privacy, Proto, SessionStart};
use crate::time::Ts;
pub use record::{Fields, SessionRecord};
use sniff::Sniffer;

/// What the engine tells the outputs, in order.
pub trait Sink {
    /// A new mail session was recognised.
    fn session_start(&mut self, info: &SessionInfo);
    /// A command, reply, TLS start or anomaly within a session.
    fn event(&mut self, info: &SessionInfo, event: &Event);
    /// `len` bytes of one direction were never seen (lost in capture, cut by
    /// snaplen, or dropped by a memory bound).
    fn gap(&mut self, _info: &SessionInfo, _dir: Dir, _len: u64, _ts: Ts) {}
    /// The session ended; `record` is final.
    fn session_end(&mut self, info: &SessionInfo, record: &SessionRecord);
    /// The owning process became known after `session_start` (it is in `info`).
    fn process_found(&mut self, _info: &SessionInfo) {}
    /// A mail-log line about session `session` (see [`crate::maillog::join`]); `late`
    /// when the session's record was already written.
    fn log(&mut self, _session: ConnId, _line: &crate::maillog::LogLine, _late: bool) {}
    /// A mail-log line the join gave up on: its smtpd connection agreed with no session
    /// (`why` says how the nearest one differed), or none was there.
    fn unmatched(&mut self, _line: &crate::maillog::LogLine, _why: &str) {}
}

/// Finds the process that owns the connection (client, server). It does I/O
/// (/proc); injected so that the engine itself stays free of it.
pub type ProcessLookup = Box<dyn FnMut(SocketAddr, SocketAddr) -> Option<Process> + Send>;

/// Lookups per session: at its start, then at its next data, until one succeeds
/// (a server socket may not be accepted yet when the SYN is read).
const MAX_PROCESS_LOOKUPS: u8 = 3;

/// The facts about a session known from its first packet on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionInfo {
    pub id: ConnId,
    pub proto: Proto,
    pub client: SocketAddr,
    pub server: SocketAddr,
    pub start: Ts,
    pub partial: bool,
    pub implicit_tls: bool,
    /// The process owning the socket, when a lookup is set and found it.
    pub process: Option<Process>,
}

/// How ports map to protocols.
#[derive(Clone, Debug)]
pub struct PortMap {
    map: HashMap<u16, (Proto, bool)>,
    /// Connections on other ports are recognised by their first lines.
    pub sniff_other_ports: bool,
}

impl Default for PortMap {
    fn default() -> Self {
        let map = [
            (25, (Proto::Smtp, false)),
            (587, (Proto::Smtp, false)),
            (465, (Proto::Smtp, true)),
            (110, (Proto::Pop3, false)),
            (995, (Proto::Pop3, true)),
            (143, (Proto::Imap, false)),
            (993, (Proto::Imap, true)),
        ]
        .into_iter()
        .collect();
        PortMap {
            map,
            sniff_other_ports: true,
        }
    }
}

impl PortMap {
    /// The protocol and implicit-TLS flag of a server port, when it is a known one.
    pub fn get(&self, port: u16) -> Option<(Proto, bool)> {
        self.map.get(&port).copied()
    }

    /// The ports with a known protocol (the flow table's idea of "server side").
    pub fn ports(&self) -> Vec<u16> {
        let mut p: Vec<u16> = self.map.keys().copied().collect();
        p.sort_unstable();
        p
    }
}

/// Engine settings; every bound has a default (see [`FlowConfig`]).
#[derive(Clone, Debug, Default)]
pub struct EngineConfig {
    pub privacy: Privacy,
    pub ports: PortMap,
    pub flow: FlowConfig,
}

/// Counters over a whole run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct EngineStats {
    pub frames: u64,
    /// Frames that were not TCP (or IPv4 non-first fragments).
    pub not_tcp: u64,
    /// Frames whose headers could not be decoded.
    pub malformed: u64,
    pub sessions: u64,
    /// TCP connections that never looked like mail (on a port with no protocol).
    pub unrecognised: u64,
    /// Bytes the open sessions' dissectors hold right now ([`Dissector::held_bytes`]).
    pub held_bytes: u64,
    /// Sessions evicted because everything held passed `--max-held`.
    pub evicted_held: u64,
}

enum Dissect {
    /// Protocol not yet known: the first bytes are being looked at.
    Sniffing(Sniffer),
    Active(Box<dyn Dissector>),
    /// Not a mail session: bytes are dropped.
    Ignored,
}

struct Session {
    info: Option<SessionInfo>,
    client: SocketAddr,
    server: SocketAddr,
    start: Ts,
    syn_ts: Option<Ts>,
    partial: bool,
    dissect: Dissect,
    gaps: u64,
    anomalies: Vec<&'static str>,
    commands: u64,
    replies: u64,
    /// Payload bytes seen client→server and server→client.
    bytes: [u64; 2],
    last_ts: Ts,
    /// The dissector reads TLS plaintext from the uprobes; TCP payload is only counted.
    plaintext: bool,
    /// Whose plaintext it reads: both ends of a connection may be traced (a local
    /// client with libssl too), and each alone gives the whole stream.
    plaintext_origin: u128,
    process_lookups: u8,
    /// Findings already sent as events (the rest go out when the session ends).
    live: Vec<Finding>,
    /// The server offered STARTTLS in an earlier session (see [`TlsMemory`]).
    tls_offered_before: bool,
    /// The dissector's [`Dissector::held_bytes`] after its last input.
    held: usize,
}

/// Servers remembered as having offered STARTTLS/STLS.
pub const MAX_TLS_MEMORY: usize = 4096;

/// Which servers offered STARTTLS earlier in this run: a later session of the
/// same server without it may have been stripped. Bounded: when full, it
/// starts over (a missed stripping alert, never a false one).
#[derive(Debug, Default)]
struct TlsMemory(HashSet<SocketAddr>);

impl TlsMemory {
    fn remember(&mut self, server: SocketAddr) {
        if self.0.len() >= MAX_TLS_MEMORY && !self.0.contains(&server) {
            self.0.clear();
        }
        self.0.insert(server);
    }
}

/// The session engine. See the module docs.
pub struct Engine {
    cfg: EngineConfig,
    flows: FlowTable,
    /// Boxed: a map's table is sized in powers of two and doubles while it still holds
    /// the old one, so the ~400-byte session inline would cost up to 3 × its size per
    /// slot at the peak; a box costs one pointer per slot and the session once.
    sessions: crate::flow::FastMap<ConnId, Box<Session>>,
    stats: EngineStats,
    lookup: Option<ProcessLookup>,
    tls_memory: TlsMemory,
}

impl Engine {
    pub fn new(cfg: EngineConfig) -> Self {
        let mut flow = cfg.flow.clone();
        flow.server_ports = cfg.ports.ports();
        Engine {
            flows: FlowTable::new(flow),
            sessions: Default::default(),
            stats: EngineStats::default(),
            lookup: None,
            tls_memory: TlsMemory::default(),
            cfg,
        }
    }

    pub fn stats(&self) -> EngineStats {
        self.stats
    }

    pub fn flow_stats(&self) -> crate::flow::FlowStats {
        self.flows.stats()
    }

    /// Sessions currently open.
    pub fn open_sessions(&self) -> usize {
        self.sessions.len()
    }

    /// Feeds one captured frame; returns the connection it belongs to, if any
    /// (`tail -w` writes the frames of selected sessions only).
    pub fn frame(&mut self, frame: &Frame, sink: &mut dyn Sink) -> Option<ConnId> {
        self.stats.frames += 1;
        let seg = match crate::wire::decode(frame) {
            Ok(Some(seg)) => seg,
            Ok(None) => {
                self.stats.not_tcp += 1;
                return None;
            }
            Err(_) => {
                self.stats.malformed += 1;
                return None;
            }
        };
        let mut id = None;
        self.drive(sink, |flows, on_event| {
            id = flows.segment(&seg, frame.ts, on_event);
        });
        self.within_budget(frame.ts, sink);
        id
    }

    /// Everything the open sessions hold beyond their fixed size: out-of-order bytes and
    /// what the dissectors recorded or hold for a reply.
    pub fn held_bytes(&self) -> u64 {
        self.flows.stats().buffered_bytes + self.stats.held_bytes
    }

    /// Past `--max-held`, evicts the sessions holding the most until what is held is a tenth
    /// under the budget (so a flood does not scan the table per packet); each is written at
    /// once with `close: "evicted"` and counted. One peer's long session or a crowd of
    /// out-of-order streams cannot grow the daemon past the budget.
    fn within_budget(&mut self, ts: Ts, sink: &mut dyn Sink) {
        let budget = self.cfg.flow.max_held_total;
        if self.held_bytes() <= budget {
            return;
        }
        let mut by_size: Vec<(u64, SocketAddr, SocketAddr)> = self
            .sessions
            .values()
            .map(|s| {
                let flow = self.flows.buffered_of(s.client, s.server) as u64;
                (s.held as u64 + flow, s.client, s.server)
            })
            .collect();
        by_size.sort_unstable_by_key(|s| std::cmp::Reverse(s.0));
        let target = budget - budget / 10;
        for (_, client, server) in by_size {
            if self.held_bytes() <= target {
                break;
            }
            self.stats.evicted_held += 1;
            self.drive(sink, |flows, on_event| {
                flows.evict(client, server, ts, on_event)
            });
        }
    }

    /// Runs one flow-table call with every event it reports handled in order.
    fn drive(
        &mut self,
        sink: &mut dyn Sink,
        call: impl FnOnce(&mut FlowTable, &mut dyn FnMut(FlowEvent<'_>)),
    ) {
        let Engine {
            cfg,
            flows,
            sessions,
            stats,
            lookup,
            tls_memory,
        } = self;
        call(flows, &mut |ev| {
            handle(cfg, sessions, stats, lookup, tls_memory, ev, sink)
        });
    }

    /// Sets how the owning process of a new session is found (live capture).
    pub fn set_process_lookup(&mut self, f: ProcessLookup) {
        self.lookup = Some(f);
    }

    /// TLS plaintext of the connection between `local` (the process that read
    /// or wrote it) and `peer`, from the uprobes. The first chunk switches the
    /// session's dissector to plaintext ([`Dissector::resume_plaintext`]); from
    /// then on the TCP payload of the session is only counted. `origin`
    /// identifies the TLS endpoint (pid and `SSL *`): the session takes the
    /// plaintext of the first one only, since when both peers run on this host
    /// each sees the whole conversation. False when no session has these
    /// endpoints, the chunk is the other peer's, or the dissector cannot take
    /// plaintext (TLS not started: the chunk would be out of place).
    #[expect(clippy::too_many_arguments, reason = "one chunk's facts")]
    pub fn plaintext(
        &mut self,
        origin: u128,
        local: SocketAddr,
        peer: SocketAddr,
        from_peer: bool,
        data: &[u8],
        ts: Ts,
        sink: &mut dyn Sink,
    ) -> bool {
        let Some(id) = self.flows.conn_id(local, peer) else {
            return false;
        };
        let Some(s) = self.sessions.get_mut(&id) else {
            return false;
        };
        // The server reads what the client sent; the client reads what the server sent.
        let dir = if (local == s.server) == from_peer {
            Dir::ToServer
        } else {
            Dir::ToClient
        };
        if !s.plaintext {
            let Dissect::Active(d) = &mut s.dissect else {
                return false;
            };
            if !d.resume_plaintext(ts) {
                return false;
            }
            s.plaintext = true;
            s.plaintext_origin = origin;
        } else if s.plaintext_origin != origin {
            return false;
        }
        s.last_ts = s.last_ts.max(ts);
        feed(s, &mut self.stats, |x| x.data(dir, data, ts), sink);
        self.within_budget(ts, sink);
        true
    }

    /// `process` owns the `local` end of the connection between `local` and
    /// `peer` (the kernel saw it use the socket, e.g. in a TLS call). Names the
    /// session's process when `local` is the server and none is known yet: a
    /// /proc lookup can miss a process that was forked for the connection and
    /// gone by the time the records were read (Dovecot's login processes).
    /// `process` is called only then (it may read /proc).
    pub fn process_seen(
        &mut self,
        local: SocketAddr,
        peer: SocketAddr,
        process: impl FnOnce() -> Process,
        sink: &mut dyn Sink,
    ) {
        let Some(id) = self.flows.conn_id(local, peer) else {
            return;
        };
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        if local != s.server {
            return;
        }
        let Some(info) = s.info.as_mut() else { return };
        if info.process.is_none() {
            info.process = Some(process());
            sink.process_found(info);
        }
    }

    /// Lets time pass: ends sessions idle for longer than the flow idle timeout.
    pub fn tick(&mut self, now: Ts, sink: &mut dyn Sink) {
        self.drive(sink, |flows, on_event| flows.expire(now, on_event));
    }

    /// Ends every open session (end of file, or the capture stopped).
    pub fn finish(&mut self, now: Ts, sink: &mut dyn Sink) {
        self.drive(sink, |flows, on_event| flows.finish(now, on_event));
    }
}

fn handle(
    cfg: &EngineConfig,
    sessions: &mut crate::flow::FastMap<ConnId, Box<Session>>,
    stats: &mut EngineStats,
    lookup: &mut Option<ProcessLookup>,
    tls_memory: &mut TlsMemory,
    ev: FlowEvent<'_>,
    sink: &mut dyn Sink,
) {
    match ev {
        FlowEvent::Opened {
            id,
            client,
            server,
            ts,
            syn_ts,
            partial,
        } => {
            let mut s = Session {
                info: None,
                client,
                server,
                start: syn_ts.unwrap_or(ts),
                syn_ts,
                partial,
                dissect: Dissect::Sniffing(Sniffer::default()),
                gaps: 0,
                anomalies: Vec::new(),
                commands: 0,
                replies: 0,
                bytes: [0, 0],
                last_ts: ts,
                plaintext: false,
                plaintext_origin: 0,
                process_lookups: 0,
                live: Vec::new(),
                tls_offered_before: tls_memory.0.contains(&server),
                held: 0,
            };
            match cfg.ports.get(server.port()) {
                Some((proto, implicit)) => {
                    activate(cfg, &mut s, id, proto, implicit, stats, lookup, sink)
                }
                None if cfg.ports.sniff_other_ports => {}
                None => s.dissect = Dissect::Ignored,
            }
            sessions.insert(id, Box::new(s));
        }
        FlowEvent::Data { id, dir, data, ts } => {
            let Some(s) = sessions.get_mut(&id) else {
                return;
            };
            s.last_ts = ts;
            s.bytes[dir as usize] += data.len() as u64;
            retry_lookup(s, lookup, sink);
            if s.plaintext {
                return;
            }
            if let Dissect::Sniffing(sniffer) = &mut s.dissect {
                match sniffer.push(dir, data, ts) {
                    sniff::Verdict::NeedMore => return,
                    sniff::Verdict::NotMail => {
                        stats.unrecognised += 1;
                        s.dissect = Dissect::Ignored;
                        return;
                    }
                    sniff::Verdict::Mail(proto) => {
                        let Dissect::Sniffing(sniffer) =
                            std::mem::replace(&mut s.dissect, Dissect::Ignored)
                        else {
                            unreachable!("matched Sniffing above")
                        };
                        activate(cfg, s, id, proto, false, stats, lookup, sink);
                        if let Some(kind) = sniffer.tunnel() {
                            note_anomaly(s, kind);
                            if let Some(info) = &s.info {
                                sink.event(info, &Event::Anomaly { ts, id: kind });
                            }
                        }
                        // Replay what the sniffer held, in arrival order.
                        for (d, bytes, t) in sniffer.into_chunks() {
                            feed(s, stats, |x| x.data(d, &bytes, t), sink);
                        }
                        return;
                    }
                }
            }
            feed(s, stats, |x| x.data(dir, data, ts), sink);
        }
        FlowEvent::Gap { id, dir, len, ts } => {
            let Some(s) = sessions.get_mut(&id) else {
                return;
            };
            s.gaps += len;
            s.last_ts = ts;
            if let Some(info) = &s.info {
                sink.gap(info, dir, len, ts);
            }
            if s.plaintext {
                return;
            }
            if let Dissect::Sniffing(_) = s.dissect {
                // A gap before the protocol is known: the session is partial from here.
                s.dissect = Dissect::Sniffing(Sniffer::default());
                s.partial = true;
            }
            feed(s, stats, |x| x.gap(dir, len, ts), sink);
        }
        // Encrypted bytes the kernel did not copy: nothing for the dissector, and not a gap.
        FlowEvent::Skipped { id, dir, len, ts } => {
            // Encrypted bytes the kernel did not copy: seen on the wire, so counted.
            if let Some(s) = sessions.get_mut(&id) {
                s.last_ts = ts;
                s.bytes[dir as usize] += len;
                feed(s, stats, |x| x.skipped(dir, len), sink);
            }
        }
        FlowEvent::Anomaly { id, kind, ts } => {
            if let Some(s) = sessions.get_mut(&id) {
                s.last_ts = ts;
                note_anomaly(s, kind);
                if let Some(info) = &s.info {
                    sink.event(info, &Event::Anomaly { ts, id: kind });
                }
            }
        }
        FlowEvent::Closed { id, ts, reason } => {
            let Some(s) = sessions.remove(&id) else {
                return;
            };
            stats.held_bytes = stats.held_bytes.saturating_sub(s.held as u64);
            if let Some(info) = &s.info {
                let mut findings = Vec::new();
                if let Dissect::Active(d) = &s.dissect {
                    if d.tls_offered() {
                        tls_memory.remember(s.server);
                    }
                    // Findings known only now go out as events before the record.
                    let end = ts.max(s.last_ts);
                    findings = d.findings();
                    for finding in &findings {
                        if !s.live.contains(finding) {
                            let finding = finding.clone();
                            sink.event(info, &Event::Finding { ts: end, finding });
                        }
                    }
                }
                let rec = build_record(&s, info, ts, reason, findings);
                sink.session_end(info, &rec);
            }
        }
    }
}

#[expect(
    clippy::too_many_arguments,
    reason = "the engine's parts, split for the borrow checker"
)]
fn activate(
    cfg: &EngineConfig,
    s: &mut Session,
    id: ConnId,
    proto: Proto,
    implicit_tls: bool,
    stats: &mut EngineStats,
    lookup: &mut Option<ProcessLookup>,
    sink: &mut dyn Sink,
) {
    let start = SessionStart {
        syn_ts: s.syn_ts,
        implicit_tls,
        partial: s.partial,
        client: Some(s.client),
        server: Some(s.server),
        tls_offered_before: s.tls_offered_before,
    };
    let d: Box<dyn Dissector> = match proto {
        Proto::Smtp => Box::new(Smtp::new(cfg.privacy, start)),
        Proto::Pop3 => Box::new(Pop3::new(cfg.privacy, start)),
        Proto::Imap => Box::new(Imap::new(cfg.privacy, start)),
    };
    s.dissect = Dissect::Active(d);
    let info = SessionInfo {
        id,
        proto,
        client: s.client,
        server: s.server,
        start: s.start,
        partial: s.partial,
        implicit_tls,
        process: lookup.as_mut().and_then(|f| f(s.client, s.server)),
    };
    if lookup.is_some() {
        s.process_lookups = 1;
    }
    stats.sessions += 1;
    sink.session_start(&info);
    s.info = Some(info);
}

/// Runs one dissector input, then drains its events to the sink; keeps the engine's count
/// of held bytes.
fn feed(
    s: &mut Session,
    stats: &mut EngineStats,
    input: impl FnOnce(&mut dyn Dissector),
    sink: &mut dyn Sink,
) {
    let Dissect::Active(d) = &mut s.dissect else {
        return;
    };
    input(d.as_mut());
    let held = d.held_bytes();
    if held != s.held {
        stats.held_bytes = (stats.held_bytes + held as u64).saturating_sub(s.held as u64);
        s.held = held;
    }
    while let Some(ev) = d.poll_event() {
        match &ev {
            Event::Command { .. } => s.commands += 1,
            Event::Reply { .. } => s.replies += 1,
            Event::Anomaly { id, .. } => {
                if !s.anomalies.contains(id) {
                    s.anomalies.push(id);
                }
            }
            Event::TlsStarted { .. } => {}
            Event::Finding { finding, .. } => {
                if s.live.len() < MAX_FINDINGS && !s.live.contains(finding) {
                    s.live.push(finding.clone());
                }
            }
        }
        if let Some(info) = &s.info {
            sink.event(info, &ev);
        }
    }
}

/// Another try at finding the owning process, while it is unknown and tries are left.
fn retry_lookup(s: &mut Session, lookup: &mut Option<ProcessLookup>, sink: &mut dyn Sink) {
    let Some(f) = lookup.as_mut() else { return };
    let Some(info) = s.info.as_mut() else { return };
    if info.process.is_some() || s.process_lookups >= MAX_PROCESS_LOOKUPS {
        return;
    }
    s.process_lookups += 1;
    info.process = f(s.client, s.server);
    if info.process.is_some() {
        sink.process_found(info);
    }
}

fn note_anomaly(s: &mut Session, kind: &'static str) {
    if !s.anomalies.contains(&kind) {
        s.anomalies.push(kind);
    }
}

/// `findings`: the dissector's, just computed for the events (not computed twice).
fn build_record(
    s: &Session,
    info: &SessionInfo,
    end: Ts,
    reason: CloseReason,
    findings: Vec<Finding>,
) -> SessionRecord {
    let mut fields = match &s.dissect {
        Dissect::Active(d) => d.record_fields(findings),
        _ => Fields::default(),
    };
    // Present only when known, so records of plain captures do not change.
    if s.plaintext {
        fields.insert("plaintext_source".into(), "uprobe".into());
    }
    if let Some(p) = &info.process {
        fields.insert(
            "process".into(),
            serde_json::json!({"pid": p.pid, "comm": p.comm}),
        );
    }
    SessionRecord {
        id: info.id,
        proto: info.proto,
        start: s.start,
        end: end.max(s.last_ts),
        client: s.client,
        server: s.server,
        partial: s.partial,
        gaps: s.gaps,
        close: reason,
        commands: s.commands,
        replies: s.replies,
        bytes: s.bytes,
        anomalies: s.anomalies.clone(),
        fields,
    }
}

/// Direction helper for outputs: which endpoint sent in `dir`.
pub fn sender(info: &SessionInfo, dir: Dir) -> SocketAddr {
    match dir {
        Dir::ToServer => info.client,
        Dir::ToClient => info.server,
    }
}

#[cfg(test)]
mod plaintext_tests;
