//! TCP connections: a table of flows, each reassembled per direction.
//!
//! The table turns [`crate::wire::Segment`]s into [`FlowEvent`]s — in-order bytes
//! per direction, gaps where bytes are missing, opens and closes — which the
//! session engine feeds to the protocol dissectors.
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
