//! The table of live TCP connections: finds a segment's connection, feeds its direction's
//! reassembler, and ends connections on FIN, RST, idleness, eviction or end of capture.
//!
//! Time is passed in with every call (the capture's clock), never read here.
use std::collections::{BTreeMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;

use super::reassembly::{Half, Out, MAX_SEQ_JUMP};
use super::{CloseReason, ConnId, Dir, FlowConfig, FlowEvent, FlowStats};
use crate::time::Ts;
use crate::wire::Segment;

/// The two endpoints, lower first, so both directions find the same entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Key(SocketAddr, SocketAddr);

/// Hashed as a few whole words (every field `Eq` compares but the IPv6 flow label and
/// scope): the derived hash feeds the hasher a dozen small pieces, and the table is
/// looked up for every segment.
impl Hash for Key {
    fn hash<H: Hasher>(&self, h: &mut H) {
        for a in [&self.0, &self.1] {
            match a {
                SocketAddr::V4(v4) => {
                    h.write_u64(u64::from(v4.ip().to_bits()) << 16 | u64::from(v4.port()))
                }
                SocketAddr::V6(v6) => {
                    h.write_u128(v6.ip().to_bits());
                    h.write_u16(v6.port());
                }
            }
        }
    }
}

fn key_of(a: SocketAddr, b: SocketAddr) -> Key {
    if a <= b {
        Key(a, b)
    } else {
        Key(b, a)
    }
}

/// The idle index is refreshed at most this often per connection, so a busy connection costs
/// one map update per second rather than one per segment.
const IDLE_GRANULARITY_NS: u64 = 1_000_000_000;

struct Conn {
    id: ConnId,
    client: SocketAddr,
    /// `[ToServer, ToClient]`.
    halves: [Half; 2],
    last_ts: Ts,
    /// The timestamp under which the connection sits in the idle index.
    indexed_ts: Ts,
    /// Any payload, FIN or RST seen (a new SYN then means a new connection).
    used: bool,
    /// Per direction (as `halves`): the receiver's last ACK of it and the window it then
    /// offered (scaled), which a RST must fall in to be obeyed.
    rcv: [Option<(u32, u32)>; 2],
    /// Per sending direction: the window scale of its SYN, `None` when that SYN was not
    /// seen, `Some(None)` when it had no option.
    wscale: [Option<Option<u8>>; 2],
}

/// The window shift when the handshake was not seen: the largest allowed (RFC 7323), so a
/// RST is never refused for a window we cannot know.
const UNKNOWN_WSCALE: u8 = 14;

/// Whether a RST sent in direction `me` at `seq` is inside the window its receiver offered
/// (RFC 793 §3.4, RFC 5961 §3): a receiver ignores one outside it, so it must not end the
/// flow either — else a peer could hide the rest of a session behind a RST the server never
/// obeyed. Nothing known about the receiver (one-sided capture): accepted, as before.
fn rst_in_window(c: &Conn, me: usize, seq: u32) -> bool {
    let Some((ack, wnd)) = c.rcv[me] else {
        return true;
    };
    // The ACK seen may lag (delayed, or lost to the capture): the sender's bytes seen so far
    // were inside the window when sent, so the window reaches at least to their end.
    let h = &c.halves[me];
    let seen_end = h
        .base()
        .map(|b| b.wrapping_add(h.next() as u32 + u32::from(h.fin().is_some())));
    let seen = seen_end
        .map(|e| e.wrapping_sub(ack))
        .filter(|&d| d < 1 << 31) // else the receiver acked past what we saw
        .unwrap_or(0);
    // SEG.SEQ - RCV.NXT modulo 2^32; a zero window still accepts RCV.NXT itself.
    seq.wrapping_sub(ack) <= wnd.max(seen)
}

/// The window a segment sent in direction `dir` offers, scaled as the handshake agreed.
fn offered_window(c: &Conn, dir: usize, seg: &Segment<'_>) -> u32 {
    if seg.flags.syn {
        return u32::from(seg.window); // never scaled (RFC 7323 §2.2)
    }
    let shift = match (c.wscale[dir], c.wscale[1 - dir]) {
        (Some(Some(mine)), Some(Some(_))) => mine.min(UNKNOWN_WSCALE),
        (Some(_), Some(_)) => 0,
        _ => UNKNOWN_WSCALE,
    };
    u32::from(seg.window) << shift
}

fn buffered(c: &Conn) -> usize {
    c.halves.iter().map(Half::buffered).sum()
}

/// One reassembly output as the flow event it stands for, counted in the stats.
fn report(
    o: Out<'_>,
    id: ConnId,
    dir: Dir,
    ts: Ts,
    stats: &mut FlowStats,
    out: &mut dyn FnMut(FlowEvent<'_>),
) {
    let anomaly = |kind| FlowEvent::Anomaly { id, kind, ts };
    match o {
        // Held bytes keep the time they were captured at (see `reassembly`).
        Out::Data(data, held) => out(FlowEvent::Data {
            id,
            dir,
            data,
            ts: held.unwrap_or(ts),
        }),
        Out::Gap(len) => {
            stats.gap_bytes += len;
            stats.gaps += 1;
            out(FlowEvent::Gap { id, dir, len, ts });
        }
        Out::Skipped(len) => out(FlowEvent::Skipped { id, dir, len, ts }),
        Out::Mismatch => {
            stats.anomalies += 1;
            out(anomaly("retransmit-mismatch"));
        }
        Out::OutOfWindow => {
            stats.anomalies += 1;
            out(anomaly("seq-out-of-window"));
        }
    }
}

/// The end of the bytes a sequence number `at` (relative) vouches for in a direction whose
/// FIN is at `fin`. The FIN takes one sequence number but carries no byte. Seen on a RST,
/// with that FIN unseen, the last number may be a FIN we missed as well as a byte: it is
/// not counted, so a gap never claims more than was lost (at most one byte less).
fn closing_edge(at: i64, fin: Option<u64>, rst: bool) -> i64 {
    match fin {
        Some(f) if at > f as i64 => f as i64,
        Some(_) => at,
        None if rst => at - 1,
        None => at,
    }
}

fn idx(d: Dir) -> usize {
    match d {
        Dir::ToServer => 0,
        Dir::ToClient => 1,
    }
}

fn other(d: Dir) -> Dir {
    match d {
        Dir::ToServer => Dir::ToClient,
        Dir::ToClient => Dir::ToServer,
    }
}

/// TCP connections by address pair. See the [module docs](super) for the event contract.
pub struct FlowTable {
    cfg: FlowConfig,
    /// Boxed for the same reason as the engine's sessions: table slots stay small.
    conns: super::FastMap<Key, Box<Conn>>,
    /// `(indexed_ts, id) → key`, oldest first: eviction and idle expiry.
    idle: BTreeMap<(Ts, ConnId), Key>,
    /// Recently closed address pairs: late ACKs and retransmitted FINs must not reopen them.
    closed: super::FastMap<Key, Ts>,
    closed_order: VecDeque<(Ts, Key)>,
    next_id: ConnId,
    stats: FlowStats,
}

impl FlowTable {
    pub fn new(cfg: FlowConfig) -> Self {
        Self {
            cfg,
            conns: Default::default(),
            idle: BTreeMap::new(),
            closed: Default::default(),
            closed_order: VecDeque::new(),
            next_id: 1,
            stats: FlowStats::default(),
        }
    }

    /// The connection between these endpoints, if one is open.
    pub fn conn_id(&self, a: SocketAddr, b: SocketAddr) -> Option<ConnId> {
        self.conns.get(&key_of(a, b)).map(|c| c.id)
    }

    pub fn stats(&self) -> FlowStats {
        FlowStats {
            live: self.conns.len() as u64,
            ..self.stats
        }
    }

    /// Takes one TCP segment captured at `ts`; emits what it makes known, in causal order.
    /// Returns the connection the segment belongs to: the one open after it, else the one
    /// it closed, else none (what [`Self::conn_id`] before and after would tell, without
    /// the two lookups).
    pub fn segment(
        &mut self,
        seg: &Segment<'_>,
        ts: Ts,
        out: &mut dyn FnMut(FlowEvent<'_>),
    ) -> Option<ConnId> {
        let key = key_of(seg.src, seg.dst);
        let syn_only = seg.flags.syn && !seg.flags.ack;

        // One lookup for the common segment of a known connection; SYNs look twice.
        let id_before = self.conns.get(&key).map(|c| c.id);
        let mut known = id_before.is_some();
        if known && syn_only {
            let reused = self.conns.get(&key).is_some_and(|c| {
                seg.src == c.client && c.used && c.halves[0].base() != Some(seg.seq.wrapping_add(1))
            });
            if reused {
                self.close(key, ts, CloseReason::Reused, out);
                known = false;
            }
        }
        if !known {
            if self.closed.contains_key(&key) {
                if !syn_only {
                    return id_before; // the tail of a connection already reported closed
                }
                self.closed.remove(&key);
            }
            if seg.flags.rst {
                return id_before; // a reset of something never seen opens nothing
            }
            self.open(key, seg, ts, out);
        }
        let Some(c) = self.conns.get_mut(&key) else {
            return id_before;
        };
        let dir = if seg.src == c.client {
            Dir::ToServer
        } else {
            Dir::ToClient
        };
        let id = c.id;
        c.last_ts = c.last_ts.max(ts);
        if c.last_ts >= c.indexed_ts.saturating_add(IDLE_GRANULARITY_NS) {
            self.idle.remove(&(c.indexed_ts, id));
            c.indexed_ts = c.last_ts;
            self.idle.insert((c.indexed_ts, id), key);
        }

        let me = idx(dir);
        if seg.flags.rst && !rst_in_window(c, me, seg.seq) {
            self.stats.anomalies += 1;
            out(FlowEvent::Anomaly {
                id,
                kind: "rst-out-of-window",
                ts,
            });
            return Some(id);
        }
        if seg.flags.syn {
            c.wscale[me] = Some(seg.wscale);
        }
        if seg.flags.ack && !seg.flags.rst {
            let w = offered_window(c, me, seg);
            c.rcv[idx(other(dir))] = Some((seg.ack, w));
        }
        let before = buffered(c);
        let max_buffer = self.cfg.max_buffer_per_dir;
        let stats = &mut self.stats;
        let mut emit_for = |d: Dir, o: Out<'_>| report(o, id, d, ts, stats, out);

        if seg.flags.syn {
            if syn_only && dir == Dir::ToServer && !c.used {
                // A SYN retransmitted with a new ISN before anything else happened.
                c.halves[0] = Half::default();
            }
            c.halves[me].set_base(seg.seq.wrapping_add(1));
            if seg.flags.ack {
                c.halves[idx(other(dir))].set_base(seg.ack);
            }
        } else {
            c.halves[me].set_base(seg.seq);
            if seg.flags.ack && !seg.flags.rst {
                // The peer's next byte, even if the peer is never seen (one-sided capture):
                // its missing bytes then show as gaps rather than vanish.
                c.halves[idx(other(dir))].set_base(seg.ack);
            }
        }

        // The peer received bytes we never saw: they are lost to the capture, not in flight.
        // A RST with ACK counts too: Linux's abortive close acknowledges exactly what it got.
        if seg.flags.ack {
            let peer = &mut c.halves[idx(other(dir))];
            if let Some(a) = peer.rel(seg.ack) {
                let a = closing_edge(a, peer.fin(), seg.flags.rst);
                // One sequence number past everything may be a FIN we did not see, not a byte.
                let maybe_fin = !seg.flags.rst
                    && a == peer.next() as i64 + 1
                    && peer.fin().is_none()
                    && !peer.holds();
                if a > peer.next() as i64 && (a as u64 - peer.next()) <= MAX_SEQ_JUMP && !maybe_fin
                {
                    peer.skip_to(a as u64, &mut |o| emit_for(other(dir), o));
                }
            }
        }

        let half = &mut c.halves[me];
        let start = if seg.flags.syn {
            half.rel(seg.seq.wrapping_add(1))
        } else {
            half.rel(seg.seq)
        };
        let Some(start) = start else { return Some(id) };
        let lost = u64::from(seg.missing);
        if !seg.payload.is_empty() || lost > 0 {
            c.used = true;
            half.segment_with(
                start,
                seg.payload,
                lost,
                seg.suppressed,
                ts,
                max_buffer,
                &mut |o| emit_for(dir, o),
            );
        }
        if seg.flags.fin {
            c.used = true;
            half.set_fin(start + seg.payload.len() as i64 + lost as i64);
        }
        if seg.flags.rst {
            // A RST carries the sender's next sequence number: bytes before it that we never
            // saw were sent and lost to the capture (a ring overflow that took the QUIT and
            // the data before it).
            let end = start + seg.payload.len() as i64 + lost as i64;
            let end = closing_edge(end, half.fin(), true);
            let next = half.next() as i64;
            if end > next && (end - next) as u64 <= MAX_SEQ_JUMP {
                half.skip_to(end as u64, &mut |o| emit_for(dir, o));
            }
        }
        let after = buffered(c);
        self.stats.buffered_bytes =
            (self.stats.buffered_bytes + after as u64).saturating_sub(before as u64);

        if seg.flags.rst {
            c.used = true;
            self.close(key, ts, CloseReason::Rst, out);
            id_before
        } else if c.halves.iter().all(|h| h.fin().is_some()) {
            self.close(key, ts, CloseReason::Fin, out);
            id_before
        } else {
            Some(id)
        }
    }

    /// Bytes the connection between `a` and `b` holds beyond holes.
    pub fn buffered_of(&self, a: SocketAddr, b: SocketAddr) -> usize {
        self.conns.get(&key_of(a, b)).map_or(0, |c| buffered(c))
    }

    /// Ends the connection between `a` and `b` now (`Evicted`): the session engine's memory
    /// budget. Counted by the engine, not in [`FlowStats::evicted`] (that is `--max-sessions`).
    pub fn evict(
        &mut self,
        a: SocketAddr,
        b: SocketAddr,
        ts: Ts,
        out: &mut dyn FnMut(FlowEvent<'_>),
    ) {
        self.close(key_of(a, b), ts, CloseReason::Evicted, out);
    }

    /// Ends connections idle for longer than the configured timeout.
    pub fn expire(&mut self, now: Ts, out: &mut dyn FnMut(FlowEvent<'_>)) {
        let timeout = self.cfg.idle_timeout_ns;
        while let Some((&(t, id), &key)) = self.idle.first_key_value() {
            if t.saturating_add(timeout) >= now {
                break;
            }
            let last = self.conns.get(&key).map_or(t, |c| c.last_ts);
            if last.saturating_add(timeout) < now {
                self.close(key, now, CloseReason::Idle, out);
            } else if let Some(c) = self.conns.get_mut(&key) {
                self.idle.remove(&(t, id));
                c.indexed_ts = last;
                self.idle.insert((last, id), key);
            } else {
                self.idle.remove(&(t, id));
            }
        }
        while let Some(&(t, key)) = self.closed_order.front() {
            if t.saturating_add(timeout) >= now {
                break;
            }
            self.closed_order.pop_front();
            if self.closed.get(&key) == Some(&t) {
                self.closed.remove(&key);
            }
        }
    }

    /// Ends every connection at the end of a capture (in the order they were opened).
    pub fn finish(&mut self, now: Ts, out: &mut dyn FnMut(FlowEvent<'_>)) {
        let mut keys: Vec<(ConnId, Key)> = self.conns.iter().map(|(k, c)| (c.id, *k)).collect();
        keys.sort_unstable();
        for (_, key) in keys {
            self.close(key, now, CloseReason::EndOfCapture, out);
        }
    }

    fn open(&mut self, key: Key, seg: &Segment<'_>, ts: Ts, out: &mut dyn FnMut(FlowEvent<'_>)) {
        if self.conns.len() >= self.cfg.max_connections.max(1) {
            if let Some((_, &victim)) = self.idle.first_key_value() {
                self.stats.evicted += 1;
                self.close(victim, ts, CloseReason::Evicted, out);
            }
        }
        let ports = &self.cfg.server_ports;
        let server_is_src = if seg.flags.syn {
            seg.flags.ack // a SYN-ACK comes from the server
        } else if ports.contains(&seg.dst.port()) {
            false
        } else if ports.contains(&seg.src.port()) {
            true
        } else {
            seg.src.port() < seg.dst.port()
        };
        let (client, server) = if server_is_src {
            (seg.dst, seg.src)
        } else {
            (seg.src, seg.dst)
        };
        let id = self.next_id;
        self.next_id += 1;
        self.stats.opened += 1;
        self.conns.insert(
            key,
            Box::new(Conn {
                id,
                client,
                halves: [Half::default(), Half::default()],
                last_ts: ts,
                indexed_ts: ts,
                used: false,
                rcv: [None; 2],
                wscale: [None; 2],
            }),
        );
        self.idle.insert((ts, id), key);
        let syn_ts = (seg.flags.syn && !seg.flags.ack).then_some(ts);
        out(FlowEvent::Opened {
            id,
            client,
            server,
            ts,
            syn_ts,
            partial: !seg.flags.syn,
        });
    }

    /// Hands out everything still deliverable (gaps for holes), then reports the close.
    fn close(&mut self, key: Key, ts: Ts, reason: CloseReason, out: &mut dyn FnMut(FlowEvent<'_>)) {
        let Some(mut c) = self.conns.remove(&key) else {
            return;
        };
        self.idle.remove(&(c.indexed_ts, c.id));
        let id = c.id;
        let stats = &mut self.stats;
        stats.buffered_bytes = stats.buffered_bytes.saturating_sub(buffered(&c) as u64);
        for d in [Dir::ToServer, Dir::ToClient] {
            c.halves[idx(d)].flush(&mut |o| report(o, id, d, ts, stats, out));
        }
        self.stats.closed += 1;
        out(FlowEvent::Closed { id, ts, reason });
        if reason != CloseReason::Evicted {
            if self.closed.len() >= self.cfg.max_connections.max(1) {
                if let Some((_, old)) = self.closed_order.pop_front() {
                    self.closed.remove(&old);
                }
            }
            self.closed.insert(key, ts);
            self.closed_order.push_back((ts, key));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::TcpFlags;
    use proptest::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq)]
    enum E {
        Open {
            id: ConnId,
            client: u16,
            partial: bool,
            syn: bool,
        },
        Data(ConnId, Dir, Vec<u8>),
        Gap(ConnId, Dir, u64),
        Skip(ConnId, Dir, u64),
        Anom(ConnId, &'static str),
        Close(ConnId, CloseReason),
    }

    fn own(ev: FlowEvent<'_>) -> E {
        match ev {
            FlowEvent::Opened {
                id,
                client,
                partial,
                syn_ts,
                ..
            } => E::Open {
                id,
                client: client.port(),
                partial,
                syn: syn_ts.is_some(),
            },
            FlowEvent::Data { id, dir, data, .. } => E::Data(id, dir, data.to_vec()),
            FlowEvent::Gap { id, dir, len, .. } => E::Gap(id, dir, len),
            FlowEvent::Skipped { id, dir, len, .. } => E::Skip(id, dir, len),
            FlowEvent::Anomaly { id, kind, .. } => E::Anom(id, kind),
            FlowEvent::Closed { id, reason, .. } => E::Close(id, reason),
        }
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([10, 99, 0, if port < 1024 { 2 } else { 1 }], port))
    }

    /// A segment from port `from` to port `to`; `flags` letters: S A F R.
    fn seg<'a>(
        from: u16,
        to: u16,
        seq: u32,
        ack: u32,
        flags: &str,
        payload: &'a [u8],
    ) -> Segment<'a> {
        Segment {
            src: addr(from),
            dst: addr(to),
            seq,
            ack,
            flags: TcpFlags {
                syn: flags.contains('S'),
                ack: flags.contains('A'),
                fin: flags.contains('F'),
                rst: flags.contains('R'),
                psh: false,
            },
            payload,
            missing: 0,
            suppressed: false,
            window: u16::MAX,
            wscale: None,
        }
    }

    struct T {
        table: FlowTable,
        ev: Vec<E>,
    }

    impl T {
        fn new(cfg: FlowConfig) -> Self {
            Self {
                table: FlowTable::new(cfg),
                ev: Vec::new(),
            }
        }
        /// Also checks, for every segment of every test, the connection `segment` returns:
        /// the one open after it, else the one open before it.
        fn feed(&mut self, s: &Segment<'_>, ts: Ts) {
            let ev = &mut self.ev;
            let before = self.table.conn_id(s.src, s.dst);
            let got = self.table.segment(s, ts, &mut |e| ev.push(own(e)));
            let want = self.table.conn_id(s.src, s.dst).or(before);
            assert_eq!(got, want, "{s:?}");
        }
        fn finish(&mut self, ts: Ts) {
            let ev = &mut self.ev;
            self.table.finish(ts, &mut |e| ev.push(own(e)));
        }
        fn expire(&mut self, ts: Ts) {
            let ev = &mut self.ev;
            self.table.expire(ts, &mut |e| ev.push(own(e)));
        }
        fn take(&mut self) -> Vec<E> {
            std::mem::take(&mut self.ev)
        }
    }

    const C: u16 = 40000;
    const S: u16 = 25;
    use Dir::{ToClient as TC, ToServer as TS};

    fn d(id: ConnId, dir: Dir, s: &str) -> E {
        E::Data(id, dir, s.as_bytes().to_vec())
    }

    /// SYN, SYN-ACK, ACK with client ISN 1000 and server ISN 5000.
    fn handshake(t: &mut T) {
        t.feed(&seg(C, S, 1000, 0, "S", b""), 1);
        t.feed(&seg(S, C, 5000, 1001, "SA", b""), 2);
        t.feed(&seg(C, S, 1001, 5001, "A", b""), 3);
    }

    #[test]
    fn key_is_the_same_both_ways_and_hashes_alike() {
        let hash = |k: &Key| {
            let mut h = std::hash::DefaultHasher::new();
            k.hash(&mut h);
            h.finish()
        };
        let pairs: [(&str, &str); 2] = [
            ("10.99.0.1:40000", "10.99.0.2:25"),
            ("[fd99::1]:40000", "[fd99::2]:25"),
        ];
        for (a, b) in pairs {
            let (a, b): (SocketAddr, SocketAddr) = (a.parse().unwrap(), b.parse().unwrap());
            assert_eq!(key_of(a, b), key_of(b, a));
            assert_eq!(hash(&key_of(a, b)), hash(&key_of(b, a)));
            let mut other = b;
            other.set_port(26);
            assert_ne!(key_of(a, b), key_of(a, other));
            assert_ne!(hash(&key_of(a, b)), hash(&key_of(a, other)));
        }
    }

    #[test]
    fn full_session_in_wire_order() {
        let mut t = T::new(FlowConfig::default());
        handshake(&mut t);
        t.feed(&seg(S, C, 5001, 1001, "A", b"220 hi\r\n"), 4);
        t.feed(&seg(C, S, 1001, 5009, "A", b"QUIT\r\n"), 5);
        t.feed(&seg(S, C, 5009, 1007, "AF", b"221 bye\r\n"), 6);
        t.feed(&seg(C, S, 1007, 5019, "AF", b""), 7);
        t.feed(&seg(S, C, 5019, 1008, "A", b""), 8); // last ACK: ignored, not a new connection
        assert_eq!(
            t.take(),
            vec![
                E::Open {
                    id: 1,
                    client: C,
                    partial: false,
                    syn: true
                },
                d(1, TC, "220 hi\r\n"),
                d(1, TS, "QUIT\r\n"),
                d(1, TC, "221 bye\r\n"),
                E::Close(1, CloseReason::Fin),
            ]
        );
        let st = t.table.stats();
        assert_eq!((st.opened, st.closed, st.live, st.gaps), (1, 1, 0, 0));
    }

    #[test]
    fn mid_stream_pickup_uses_server_ports_then_lower_port() {
        let mut t = T::new(FlowConfig::default());
        // First seen: the server's reply; port 587 is a mail port.
        t.feed(&seg(587, 50000, 77, 9, "A", b"250 ok\r\n"), 1);
        t.feed(&seg(50000, 587, 9, 85, "A", b"DATA\r\n"), 2);
        let mut cfg = FlowConfig::default();
        cfg.server_ports.clear();
        let mut u = T::new(cfg);
        u.feed(&seg(3000, 2000, 1, 1, "A", b"x"), 1);
        t.finish(9);
        u.finish(9);
        assert_eq!(
            t.take(),
            vec![
                E::Open {
                    id: 1,
                    client: 50000,
                    partial: true,
                    syn: false
                },
                d(1, TC, "250 ok\r\n"),
                d(1, TS, "DATA\r\n"),
                E::Close(1, CloseReason::EndOfCapture),
            ]
        );
        assert_eq!(
            u.take(),
            vec![
                E::Open {
                    id: 1,
                    client: 3000,
                    partial: true,
                    syn: false
                },
                d(1, TS, "x"),
                E::Close(1, CloseReason::EndOfCapture),
            ]
        );
    }

    #[test]
    fn syn_ack_first_is_not_partial() {
        let mut t = T::new(FlowConfig::default());
        t.feed(&seg(S, C, 5000, 1001, "SA", b""), 1);
        t.feed(&seg(C, S, 1001, 5001, "A", b"EHLO"), 2);
        assert_eq!(
            t.take(),
            vec![
                E::Open {
                    id: 1,
                    client: C,
                    partial: false,
                    syn: false
                },
                d(1, TS, "EHLO")
            ]
        );
    }

    #[test]
    fn ack_past_a_hole_declares_the_gap_before_the_reply() {
        let mut t = T::new(FlowConfig::default());
        handshake(&mut t);
        t.take();
        t.feed(&seg(C, S, 1001, 5001, "A", b"MAIL FROM:<a>\r\n"), 4); // 15 bytes
                                                                      // "RCPT TO:<b>\r\n" (13 bytes) lost, then "DATA\r\n" seen
        t.feed(&seg(C, S, 1029, 5001, "A", b"DATA\r\n"), 5);
        t.feed(&seg(S, C, 5001, 1035, "A", b"250 ok\r\n"), 6);
        assert_eq!(
            t.take(),
            vec![
                d(1, TS, "MAIL FROM:<a>\r\n"),
                E::Gap(1, TS, 13),
                d(1, TS, "DATA\r\n"),
                d(1, TC, "250 ok\r\n"),
            ]
        );
        assert_eq!(t.table.stats().gap_bytes, 13);
        // The lost segment retransmitted late changes nothing.
        t.feed(&seg(C, S, 1016, 5009, "A", b"RCPT TO:<b>\r\n"), 7);
        assert_eq!(t.take(), vec![]);
    }

    #[test]
    fn out_of_order_retransmission_and_mismatch() {
        let mut t = T::new(FlowConfig::default());
        handshake(&mut t);
        t.take();
        t.feed(&seg(C, S, 1006, 5001, "A", b"world"), 4);
        assert_eq!(t.table.stats().buffered_bytes, 5 + 32);
        t.feed(&seg(C, S, 1006, 5001, "A", b"WORLD"), 5);
        t.feed(&seg(C, S, 1001, 5001, "A", b"hello"), 6);
        t.feed(&seg(C, S, 1001, 5001, "A", b"hello"), 7);
        assert_eq!(
            t.take(),
            vec![
                E::Anom(1, "retransmit-mismatch"),
                d(1, TS, "hello"),
                d(1, TS, "world")
            ]
        );
        let st = t.table.stats();
        assert_eq!((st.anomalies, st.buffered_bytes), (1, 0));
    }

    #[test]
    fn snaplen_cut_segment() {
        let mut t = T::new(FlowConfig::default());
        handshake(&mut t);
        t.take();
        let mut s = seg(C, S, 1001, 5001, "A", b"EHLO ");
        s.missing = 95;
        t.feed(&s, 4);
        t.feed(&seg(C, S, 1101, 5001, "A", b"QUIT\r\n"), 5);
        assert_eq!(
            t.take(),
            vec![d(1, TS, "EHLO "), E::Gap(1, TS, 95), d(1, TS, "QUIT\r\n")]
        );
    }

    #[test]
    fn suppressed_payload_is_skipped_not_a_gap() {
        let mut t = T::new(FlowConfig::default());
        handshake(&mut t);
        t.take();
        // Header-only record of a 1000-byte encrypted segment, then one arriving before the
        // segment it follows (held beyond a hole), then the hole's own header-only record.
        let mut a = seg(C, S, 1001, 5001, "A", b"");
        (a.missing, a.suppressed) = (1000, true);
        t.feed(&a, 4);
        let mut c = seg(C, S, 2501, 5001, "A", b"");
        (c.missing, c.suppressed) = (300, true);
        t.feed(&c, 5);
        let mut b = seg(C, S, 2001, 5001, "A", b"");
        (b.missing, b.suppressed) = (500, true);
        t.feed(&b, 6);
        t.feed(&seg(C, S, 2801, 5001, "A", b"x"), 7);
        assert_eq!(
            t.take(),
            vec![
                E::Skip(1, TS, 1000),
                E::Skip(1, TS, 500),
                E::Skip(1, TS, 300),
                d(1, TS, "x")
            ]
        );
        let st = t.table.stats();
        assert_eq!((st.gaps, st.gap_bytes, st.buffered_bytes), (0, 0, 0));
    }

    #[test]
    fn rst_flushes_holes_then_closes() {
        let mut t = T::new(FlowConfig::default());
        handshake(&mut t);
        t.take();
        t.feed(&seg(C, S, 1004, 5001, "A", b"def"), 4);
        t.feed(&seg(S, C, 5001, 0, "R", b""), 5);
        t.feed(&seg(C, S, 1007, 5001, "A", b"ghi"), 6); // after the close: ignored
        assert_eq!(
            t.take(),
            vec![
                E::Gap(1, TS, 3),
                d(1, TS, "def"),
                E::Close(1, CloseReason::Rst)
            ]
        );
    }

    #[test]
    fn a_rst_outside_the_receivers_window_is_an_anomaly_not_the_end() {
        let mut t = T::new(FlowConfig::default());
        handshake(&mut t);
        t.feed(&seg(S, C, 5001, 1001, "A", b"220 hi\r\n"), 4);
        t.take();
        // The server acked 1001 with a 65535-byte window: one behind it and one past its
        // right edge are ignored by the server, so they change nothing here either.
        t.feed(&seg(C, S, 1000, 5009, "AR", b""), 5);
        t.feed(&seg(C, S, 1001 + 65536, 5009, "R", b""), 6);
        t.feed(&seg(C, S, 1001, 5009, "A", b"MAIL FROM:<a@b>\r\n"), 7);
        // The server's reset (at the client's ACK of it) is obeyed.
        t.feed(&seg(S, C, 5009, 0, "R", b""), 8);
        assert_eq!(
            t.take(),
            vec![
                E::Anom(1, "rst-out-of-window"),
                E::Anom(1, "rst-out-of-window"),
                d(1, TS, "MAIL FROM:<a@b>\r\n"),
                E::Close(1, CloseReason::Rst)
            ]
        );
        assert_eq!(t.table.stats().anomalies, 2);
    }

    #[test]
    fn the_window_is_scaled_as_the_handshake_agreed() {
        let scaled = |c_ws: Option<u8>, s_ws: Option<u8>| {
            let mut t = T::new(FlowConfig::default());
            let mut syn = seg(C, S, 1000, 0, "S", b"");
            syn.wscale = c_ws;
            t.feed(&syn, 1);
            let mut syn_ack = seg(S, C, 5000, 1001, "SA", b"");
            syn_ack.wscale = s_ws;
            t.feed(&syn_ack, 2);
            t.feed(&seg(C, S, 1001, 5001, "A", b""), 3);
            // The server offers 1024 << its scale.
            let mut ack = seg(S, C, 5001, 1001, "A", b"");
            ack.window = 1024;
            t.feed(&ack, 4);
            t.take();
            t.feed(&seg(C, S, 1001 + 100_000, 5001, "R", b""), 5);
            t.take()
        };
        // 1024 << 7 = 131072 holds 100000; without both options no scaling: 1024 does not.
        assert_eq!(
            scaled(Some(7), Some(7)).last(),
            Some(&E::Close(1, CloseReason::Rst))
        );
        assert_eq!(scaled(Some(7), None), vec![E::Anom(1, "rst-out-of-window")]);
    }

    #[test]
    fn the_window_reaches_past_a_lagging_ack_to_the_bytes_seen() {
        let mut t = T::new(FlowConfig::default());
        handshake(&mut t);
        let mut ack = seg(S, C, 5001, 1001, "A", b"");
        ack.window = 10;
        t.feed(&ack, 4);
        t.feed(&seg(C, S, 1001, 5001, "A", &[b'x'; 100]), 5);
        t.take();
        // The server's ACK of the 100 bytes was not captured; the client's RST at their end
        // is past the window seen but not past what the client sent.
        t.feed(&seg(C, S, 1101, 5001, "R", b""), 6);
        assert_eq!(t.take(), vec![E::Close(1, CloseReason::Rst)]);
    }

    #[test]
    fn rst_reveals_bytes_lost_before_it_in_both_directions() {
        let mut t = T::new(FlowConfig::default());
        handshake(&mut t);
        t.feed(&seg(S, C, 5001, 1001, "A", b"220 hi\r\n"), 4);
        t.take();
        // Lost: the client's 1000 bytes and QUIT, the server's 9-byte reply and its FIN. The
        // client's abortive close says where both streams were, each give or take a FIN:
        // the gaps claim one number less.
        t.feed(&seg(C, S, 2007, 5019, "AR", b""), 5);
        assert_eq!(
            t.take(),
            vec![
                E::Gap(1, TC, 9),
                E::Gap(1, TS, 1005),
                E::Close(1, CloseReason::Rst)
            ]
        );
        let st = t.table.stats();
        assert_eq!((st.gaps, st.gap_bytes), (2, 1014));
    }

    #[test]
    fn rst_after_a_fin_or_one_past_the_stream_is_no_gap() {
        let mut t = T::new(FlowConfig::default());
        handshake(&mut t);
        t.feed(&seg(C, S, 1001, 5001, "AF", b"QUIT\r\n"), 4);
        t.feed(&seg(C, S, 1008, 5001, "R", b""), 5); // RST after the FIN: seq FIN + 1
        let mut u = T::new(FlowConfig::default());
        handshake(&mut u);
        u.feed(&seg(C, S, 1001, 5001, "A", b"QUIT\r\n"), 4);
        u.feed(&seg(C, S, 1008, 5001, "R", b""), 5); // maybe after a FIN we did not see
        for mut x in [t, u] {
            let ev = x.take();
            assert_eq!(
                ev[1..],
                [d(1, TS, "QUIT\r\n"), E::Close(1, CloseReason::Rst)],
                "{ev:?}"
            );
            assert_eq!(x.table.stats().gaps, 0);
        }
    }

    #[test]
    fn holes_become_gaps_at_fin_and_finish() {
        let mut t = T::new(FlowConfig::default());
        handshake(&mut t);
        t.feed(&seg(C, S, 1004, 5001, "AF", b"def"), 4); // FIN after a hole of 3
        t.feed(&seg(S, C, 5001, 1001, "AF", b""), 5);
        let ev = t.take();
        assert_eq!(
            ev[1..],
            [
                E::Gap(1, TS, 3),
                d(1, TS, "def"),
                E::Close(1, CloseReason::Fin)
            ]
        );

        let mut t = T::new(FlowConfig::default());
        handshake(&mut t);
        t.feed(&seg(C, S, 1004, 5001, "A", b"def"), 4);
        t.finish(10);
        let ev = t.take();
        assert_eq!(
            ev[1..],
            [
                E::Gap(1, TS, 3),
                d(1, TS, "def"),
                E::Close(1, CloseReason::EndOfCapture)
            ]
        );
    }

    #[test]
    fn idle_timeout_and_new_syn_after_close() {
        let cfg = FlowConfig {
            idle_timeout_ns: 100,
            ..FlowConfig::default()
        };
        let mut t = T::new(cfg);
        handshake(&mut t);
        t.expire(50);
        t.feed(&seg(C, S, 1001, 5001, "A", b"x"), 60);
        t.expire(150);
        assert_eq!(t.take()[1..], [d(1, TS, "x")]);
        t.expire(161);
        assert_eq!(t.take(), vec![E::Close(1, CloseReason::Idle)]);
        t.feed(&seg(C, S, 1002, 5001, "A", b"y"), 170); // late: ignored
        t.feed(&seg(C, S, 7000, 0, "S", b""), 180); // a new connection on the same addresses
        assert_eq!(
            t.take(),
            vec![E::Open {
                id: 2,
                client: C,
                partial: false,
                syn: true
            }]
        );
    }

    #[test]
    fn new_syn_on_a_used_connection_replaces_it() {
        let mut t = T::new(FlowConfig::default());
        handshake(&mut t);
        t.feed(&seg(C, S, 1001, 5001, "A", b"x"), 4);
        t.feed(&seg(C, S, 9000, 0, "S", b""), 5);
        assert_eq!(
            t.take()[1..],
            [
                d(1, TS, "x"),
                E::Close(1, CloseReason::Reused),
                E::Open {
                    id: 2,
                    client: C,
                    partial: false,
                    syn: true
                }
            ]
        );
    }

    #[test]
    fn the_idlest_connection_is_evicted() {
        let cfg = FlowConfig {
            max_connections: 2,
            ..FlowConfig::default()
        };
        let mut t = T::new(cfg);
        let s = 1_000_000_000;
        t.feed(&seg(40001, S, 1, 1, "A", b"a"), s);
        t.feed(&seg(40002, S, 1, 1, "A", b"b"), 2 * s);
        t.feed(&seg(40001, S, 2, 1, "A", b"c"), 3 * s); // 40002 is now the idlest
        t.take();
        t.feed(&seg(40003, S, 1, 1, "A", b"d"), 4 * s);
        assert_eq!(
            t.take(),
            vec![
                E::Close(2, CloseReason::Evicted),
                E::Open {
                    id: 3,
                    client: 40003,
                    partial: true,
                    syn: false
                },
                d(3, TS, "d")
            ]
        );
        let st = t.table.stats();
        assert_eq!((st.evicted, st.closed, st.live), (1, 1, 2));
    }

    #[test]
    fn the_buffer_bound_declares_a_gap() {
        let cfg = FlowConfig {
            max_buffer_per_dir: 100,
            ..FlowConfig::default()
        };
        let mut t = T::new(cfg);
        handshake(&mut t);
        t.take();
        t.feed(&seg(C, S, 1011, 5001, "A", &[b'a'; 60]), 4);
        t.feed(&seg(C, S, 1071, 5001, "A", &[b'b'; 60]), 5);
        assert_eq!(
            t.take(),
            vec![
                E::Gap(1, TS, 10),
                E::Data(1, TS, vec![b'a'; 60]),
                E::Data(1, TS, vec![b'b'; 60])
            ]
        );
        assert_eq!(t.table.stats().buffered_bytes, 0);
    }

    // ---- properties -------------------------------------------------------------------

    /// One direction's stream cut into segments: `(offset, len)`.
    fn cuts(len: usize, sizes: &[usize]) -> Vec<(usize, usize)> {
        let mut v = Vec::new();
        let mut off = 0;
        let mut i = 0;
        while off < len {
            let n = sizes[i % sizes.len()].min(len - off);
            v.push((off, n));
            off += n;
            i += 1;
        }
        v
    }

    #[derive(Clone, Debug)]
    struct Plan {
        isn: [u32; 2],
        streams: [Vec<u8>; 2],
        /// (direction index, offset, len), in feed order.
        order: Vec<(usize, usize, usize)>,
    }

    /// Feeds handshake + planned segments; the ACK on data never passes what was fed.
    fn run_plan(p: &Plan, final_ack: bool) -> (Vec<E>, [Vec<Option<u8>>; 2]) {
        let mut t = T::new(FlowConfig::default());
        let ports = [C, S];
        t.feed(&seg(C, S, p.isn[0], 0, "S", b""), 1);
        t.feed(&seg(S, C, p.isn[1], p.isn[0].wrapping_add(1), "SA", b""), 2);
        for (i, &(d, off, len)) in p.order.iter().enumerate() {
            let seq = p.isn[d].wrapping_add(1).wrapping_add(off as u32);
            let ack = p.isn[1 - d].wrapping_add(1);
            let s = seg(
                ports[d],
                ports[1 - d],
                seq,
                ack,
                "A",
                &p.streams[d][off..off + len],
            );
            t.feed(&s, 3 + i as u64);
        }
        if final_ack {
            for d in 0..2 {
                let ack = p.isn[d]
                    .wrapping_add(1)
                    .wrapping_add(p.streams[d].len() as u32);
                let seq = p.isn[1 - d]
                    .wrapping_add(1)
                    .wrapping_add(p.streams[1 - d].len() as u32);
                t.feed(&seg(ports[1 - d], ports[d], seq, ack, "A", b""), 1_000_000);
            }
            // Then both FINs: a lost last byte is told from a lost FIN only by the FIN.
            for d in 0..2 {
                let seq = p.isn[d]
                    .wrapping_add(1)
                    .wrapping_add(p.streams[d].len() as u32);
                let ack = p.isn[1 - d]
                    .wrapping_add(1)
                    .wrapping_add(p.streams[1 - d].len() as u32);
                t.feed(&seg(ports[d], ports[1 - d], seq, ack, "AF", b""), 1_000_001);
            }
        }
        t.finish(2_000_000);
        let ev = t.take();
        let mut got: [Vec<Option<u8>>; 2] = [Vec::new(), Vec::new()];
        for e in &ev {
            match e {
                E::Data(_, dir, b) => got[idx(*dir)].extend(b.iter().map(|x| Some(*x))),
                E::Gap(_, dir, n) => got[idx(*dir)].extend((0..*n).map(|_| None)),
                _ => {}
            }
        }
        (ev, got)
    }

    fn isn() -> impl Strategy<Value = u32> {
        prop_oneof![any::<u32>(), (0u32..3000).prop_map(|x| u32::MAX - x)]
    }

    fn plan() -> impl Strategy<Value = (Plan, Vec<(usize, usize, usize)>)> {
        (
            [isn(), isn()],
            [
                proptest::collection::vec(any::<u8>(), 1..1500),
                proptest::collection::vec(any::<u8>(), 1..1500),
            ],
            [
                proptest::collection::vec(1usize..300, 1..8),
                proptest::collection::vec(1usize..300, 1..8),
            ],
            any::<u64>(),
            proptest::collection::vec((0usize..2, any::<u16>(), 1usize..200), 0..6),
        )
            .prop_map(|(isn, streams, sizes, shuffle_seed, extra)| {
                let mut segs: Vec<(usize, usize, usize)> = Vec::new();
                for d in 0..2 {
                    segs.extend(
                        cuts(streams[d].len(), &sizes[d])
                            .into_iter()
                            .map(|(o, l)| (d, o, l)),
                    );
                }
                let base = segs.clone();
                // Duplicates of whole segments and overlapping re-segmentations.
                let mut dup = Vec::new();
                for (i, &(d, o, l)) in extra.iter().enumerate() {
                    if i % 2 == 0 && !segs.is_empty() {
                        dup.push(segs[o as usize % segs.len()]);
                    } else {
                        let len = streams[d].len();
                        let off = o as usize % len;
                        dup.push((d, off, l.min(len - off)));
                    }
                }
                segs.extend(dup);
                shuffle(&mut segs, shuffle_seed);
                (
                    Plan {
                        isn,
                        streams,
                        order: segs,
                    },
                    base,
                )
            })
    }

    fn shuffle<T>(v: &mut [T], mut seed: u64) {
        for i in (1..v.len()).rev() {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            v.swap(i, (seed >> 33) as usize % (i + 1));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        #[test]
        fn any_segmentation_order_and_duplication_reproduces_the_streams((p, _) in plan()) {
            let (ev, got) = run_plan(&p, true);
            for (got, stream) in got.iter().zip(&p.streams) {
                let want: Vec<Option<u8>> = stream.iter().map(|b| Some(*b)).collect();
                prop_assert_eq!(got, &want);
            }
            prop_assert!(!ev.iter().any(|e| matches!(e, E::Gap(..) | E::Anom(..))));
            prop_assert_eq!(ev.last(), Some(&E::Close(1, CloseReason::Fin)));
        }

        #[test]
        fn a_dropped_segment_is_exactly_one_gap((p, base) in plan(), pick in any::<usize>(), final_ack in any::<bool>()) {
            let victim = base[pick % base.len()];
            let (d, off, len) = victim;
            let last_of_dir = base.iter().filter(|s| s.0 == d).map(|s| s.1 + s.2).max() == Some(off + len);
            prop_assume!(final_ack || !last_of_dir);
            // Drop every copy and every overlapping re-segmentation of the victim's bytes.
            let order: Vec<_> = p.order.iter().copied()
                .filter(|&(sd, so, sl)| !(sd == d && so < off + len && so + sl > off))
                .collect();
            let p = Plan { order, ..p };
            let (ev, got) = run_plan(&p, final_ack);
            let gaps: Vec<_> = ev.iter().filter(|e| matches!(e, E::Gap(..))).collect();
            // Re-segmentations overlapping the victim were dropped too, so the hole is the union
            // of the victim and those; compare against what was actually fed.
            let mut want: [Vec<Option<u8>>; 2] = [
                vec![None; p.streams[0].len()],
                vec![None; p.streams[1].len()],
            ];
            for &(sd, so, sl) in &p.order {
                for (w, b) in want[sd][so..so + sl].iter_mut().zip(&p.streams[sd][so..so + sl]) {
                    *w = Some(*b);
                }
            }
            let holes: usize = want[d].split(|b| b.is_some()).filter(|r| !r.is_empty()).count();
            prop_assert_eq!(holes, 1);
            prop_assert_eq!(gaps.len(), 1);
            let hole_len = want[d].iter().filter(|b| b.is_none()).count() as u64;
            prop_assert_eq!(gaps[0], &E::Gap(1, if d == 0 { TS } else { TC }, hole_len));
            prop_assert_eq!(&got[d], &want[d]);
            prop_assert_eq!(&got[1 - d], &want[1 - d]);
        }
    }
}

#[cfg(test)]
mod corpus_tests {
    use super::*;
    use crate::capture::pcap::PcapSource;
    use std::path::{Path, PathBuf};

    fn corpus() -> PathBuf {
        [
            std::env::var_os("MAIL_TRACE_CORPUS").map(PathBuf::from),
            Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus/pcaps")),
        ]
        .into_iter()
        .flatten()
        .find(|p| p.join("MANIFEST.md").is_file())
        .expect("corpus not found: set MAIL_TRACE_CORPUS")
    }

    /// Replays one capture: (stats, bytes per direction of connection 1, opened events).
    fn replay(rel: &str) -> (FlowStats, [Vec<u8>; 2], Vec<bool>) {
        let mut src = PcapSource::open(&corpus().join(rel)).unwrap();
        let mut t = FlowTable::new(FlowConfig::default());
        let mut bytes: [Vec<u8>; 2] = [Vec::new(), Vec::new()];
        let mut partial = Vec::new();
        let mut last = 0;
        let mut on = |e: FlowEvent<'_>| match e {
            FlowEvent::Data {
                id: 1, dir, data, ..
            } => bytes[idx(dir)].extend_from_slice(data),
            FlowEvent::Opened { partial: p, .. } => partial.push(p),
            _ => {}
        };
        while let Some(f) = src.next_frame() {
            let f = f.unwrap();
            if let Ok(Some(seg)) = crate::wire::decode(&f) {
                t.segment(&seg, f.ts, &mut on);
            }
            last = f.ts;
        }
        t.finish(last, &mut on);
        (t.stats(), bytes, partial)
    }

    #[test]
    fn corpus_streams_reassemble_without_gaps_or_anomalies() {
        fn walk(d: &Path, out: &mut Vec<PathBuf>) {
            for e in std::fs::read_dir(d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    walk(&p, out)
                } else if p.extension().is_some_and(|x| x == "pcap" || x == "pcapng") {
                    out.push(p)
                }
            }
        }
        let mut files = Vec::new();
        walk(&corpus(), &mut files);
        assert_eq!(files.len(), 59);
        for f in files {
            let rel = f
                .strip_prefix(corpus())
                .unwrap()
                .to_str()
                .unwrap()
                .to_string();
            let (st, _, _) = replay(&rel);
            assert!(st.opened >= 1, "{rel}");
            assert_eq!(
                (st.anomalies, st.live, st.buffered_bytes),
                (0, 0, 0),
                "{rel}"
            );
            if rel == "zeek/traces/smtp-attachment-msg.pcap" {
                // Only the client's side was captured: the server's 169 bytes (its ACKed
                // sequence space minus its FIN) are gaps, one per reply.
                assert_eq!((st.gaps, st.gap_bytes), (8, 169), "{rel}");
            } else {
                assert_eq!(st.gaps, 0, "{rel}");
            }
        }
    }

    #[test]
    fn pipelined_capture_bytes() {
        let (st, b, partial) = replay("suricata-verify/tests/smtp-pipelining/input.pcap");
        assert_eq!((st.opened, partial), (1, vec![false]));
        assert_eq!((b[0].len(), b[1].len()), (104, 298));
        assert!(b[0].starts_with(b"EHLO ehlo.fr\r\nMAIL F"));
        assert!(b[1].starts_with(b"220 Air-de-catena.lo"));
        // One-sided capture, picked up at the SYN: the client's bytes arrive whole.
        let (_, b, _) = replay("zeek/traces/smtp-attachment-msg.pcap");
        assert_eq!((b[0].len(), b[1].len()), (688, 0));
    }
}
