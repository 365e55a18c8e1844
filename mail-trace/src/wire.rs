//! A [`crate::capture::Frame`] decoded down to its TCP segment, with etherparse's zero-copy slices
//! (no hand-written header parsing in userspace).
use std::net::SocketAddr;

/// TCP flags of a segment (the low byte of the TCP flags field).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpFlags {
    pub syn: bool,
    pub ack: bool,
    pub fin: bool,
    pub rst: bool,
    pub psh: bool,
}

/// The TCP part of one frame: borrowed, never copied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment<'a> {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub seq: u32,
    pub ack: u32,
    pub flags: TcpFlags,
    /// The payload bytes present in the frame.
    pub payload: &'a [u8],
    /// Payload bytes the IP header announces beyond `payload` (snaplen cut).
    pub missing: u32,
}

/// Why a frame could not be decoded to a TCP segment.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("malformed {layer} header: {reason}")]
    Malformed { layer: &'static str, reason: String },
}
