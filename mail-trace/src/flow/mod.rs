//! TCP connections: a table of flows, each reassembled per direction.
//!
//! The table turns [`crate::wire::Segment`]s into [`FlowEvent`]s — in-order bytes
//! per direction, gaps where bytes are missing, opens and closes — which the
//! session engine feeds to the protocol dissectors.
//!
//! # Use
//! ```no_run
//! # use mail_trace::flow::{FlowConfig, FlowEvent, FlowTable};
//! # let frames: Vec<mail_trace::capture::Frame> = Vec::new();
//! let mut table = FlowTable::new(FlowConfig::default());
//! let mut last = 0;
//! for frame in &frames {
//!     if let Ok(Some(seg)) = mail_trace::wire::decode(frame) {
//!         table.segment(&seg, frame.ts, &mut |ev: FlowEvent<'_>| { /* feed the dissector */ });
//!     }
//!     last = frame.ts;
//!     table.expire(last, &mut |ev| { /* … */ }); // as often as convenient
//! }
//! table.finish(last, &mut |ev| { /* … */ });
//! ```
//!
//! # The event contract
//! - Per connection: one `Opened` first, one `Closed` last; ids are never reused.
//! - Per direction, `Data` and `Gap` events tile the byte stream exactly: each byte is handed
//!   out once, in order, or counted in a gap. `Data` of in-order segments borrows the segment
//!   (no copy); only bytes beyond a hole are copied and held.
//! - Events follow the wire: what a segment makes deliverable is emitted while that segment is
//!   handled, after any gap its ACK reveals in the other direction.
//! - `Opened { partial: false }` when the SYN (or SYN-ACK) was seen, the stream starting at
//!   ISN + 1; `partial: true` for a connection picked up mid-stream, each direction starting at
//!   the first sequence number seen (earlier bytes are ignored). Client and server are then
//!   told apart by [`FlowConfig::server_ports`], else the lower port is the server.
//! - A hole becomes a `Gap` when the peer acknowledges past it (the bytes were sent but not
//!   captured), when held bytes would exceed [`FlowConfig::max_buffer_per_dir`], when a
//!   segment is cut by the snaplen (`Segment::missing`), and when the connection ends.
//!   Bytes the kernel chose not to copy (`Segment::suppressed`) are `Skipped`, not a gap.
//! - A retransmission whose bytes differ from those first seen is an `Anomaly`
//!   (`retransmit-mismatch`) and the first-seen bytes are kept. Only bytes still held can be
//!   compared: bytes already handed out are not kept.
//! - A RST counts only inside the window its receiver offered (from the receiver's last ACK,
//!   scaled as the handshake agreed, or up to the sender's bytes already seen; RFC 793 §3.4,
//!   RFC 5961): the receiver ignores any other, so it is an `Anomaly` (`rst-out-of-window`) and
//!   changes nothing. With nothing known of the receiver (one-sided capture) a RST counts.
//! - A connection ends on FIN from both sides or RST (`Closed` after its last bytes), after
//!   [`FlowConfig::idle_timeout_ns`] without segments ([`FlowTable::expire`]), when evicted as
//!   the idlest to make room for a new one, when a new SYN reuses its addresses, or at
//!   [`FlowTable::finish`]. Segments of a closed connection are ignored for one idle timeout,
//!   except a new SYN, which opens a new connection.
use std::net::SocketAddr;

use crate::time::Ts;

/// Identifies one connection for the lifetime of a run (never reused).
pub type ConnId = u64;

/// Which way bytes travel within a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Dir {
    /// Client to server (the side that sent the SYN, or the side not on a mail port).
    #[serde(rename = "c")]
    ToServer,
    /// Server to client.
    #[serde(rename = "s")]
    ToClient,
}

/// Why a connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CloseReason {
    Fin,
    Rst,
    Idle,
    Evicted,
    /// The capture ended with the connection still open.
    EndOfCapture,
    /// A new SYN arrived on the same addresses.
    Reused,
}

/// What the flow table reports, in order.
#[derive(Debug, PartialEq, Eq)]
pub enum FlowEvent<'a> {
    Opened {
        id: ConnId,
        client: SocketAddr,
        server: SocketAddr,
        ts: Ts,
        /// Time of the client's SYN, when it was seen.
        syn_ts: Option<Ts>,
        /// The handshake was not seen: the connection was picked up mid-stream.
        partial: bool,
    },
    Data {
        id: ConnId,
        dir: Dir,
        data: &'a [u8],
        ts: Ts,
    },
    /// `len` bytes that will never arrive (lost, truncated, or evicted from the buffer).
    Gap {
        id: ConnId,
        dir: Dir,
        len: u64,
        ts: Ts,
    },
    /// `len` bytes that crossed the wire but were not copied on purpose (an encrypted flow
    /// sent header-only by the kernel): the stream stays in step; this is not loss.
    Skipped {
        id: ConnId,
        dir: Dir,
        len: u64,
        ts: Ts,
    },
    /// Something wrong with the TCP stream itself (short id, e.g. `retransmit-mismatch`).
    Anomaly {
        id: ConnId,
        kind: &'static str,
        ts: Ts,
    },
    Closed {
        id: ConnId,
        ts: Ts,
        reason: CloseReason,
    },
}

pub mod reassembly;
pub mod table;

/// The maps looked up per packet (connections, sessions). Keys come from the wire, so the
/// hash is seeded per process (foldhash's RandomState), as std's is, but far cheaper than
/// SipHash, which was a fifth of replay's instructions.
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

pub use table::FlowTable;

/// Bounds and hints of the flow table; every bound is a command-line flag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowConfig {
    /// Bytes held beyond holes per direction (default 4 MiB).
    pub max_buffer_per_dir: usize,
    /// Live connections (default 100 000); the idlest is evicted to make room.
    pub max_connections: usize,
    /// A connection without segments for this long is closed (default 10 minutes).
    pub idle_timeout_ns: u64,
    /// Ports on which servers listen: tells client from server when the SYN was not seen.
    pub server_ports: Vec<u16>,
    /// Bytes all sessions together may hold beyond their fixed size (out-of-order bytes,
    /// recorded transactions, bytes awaiting a reply) before the largest are evicted
    /// (default 1 GiB; the session engine enforces it).
    pub max_held_total: u64,
}

impl Default for FlowConfig {
    fn default() -> Self {
        Self {
            max_buffer_per_dir: 4 << 20,
            max_connections: 100_000,
            idle_timeout_ns: 600 * 1_000_000_000,
            server_ports: vec![25, 110, 143, 465, 587, 993, 995, 2525],
            max_held_total: 1 << 30,
        }
    }
}

/// Counters of the flow table since it was created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct FlowStats {
    pub opened: u64,
    pub closed: u64,
    /// Closed to make room (also counted in `closed`).
    pub evicted: u64,
    /// Number of gaps and the bytes they cover.
    pub gaps: u64,
    pub gap_bytes: u64,
    pub anomalies: u64,
    /// Bytes held beyond holes right now (with a small per-segment overhead).
    pub buffered_bytes: u64,
    /// Connections open right now.
    pub live: u64,
}
