//! Capture sources. Live capture (the eBPF ring buffer) and replay (pcap/pcapng
//! files) both produce [`Frame`]s; everything after this layer is shared.
pub mod pcap;

use crate::time::Ts;

/// How to read a frame's first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LinkType {
    /// Ethernet II, possibly with 802.1Q/802.1ad tags.
    Ethernet,
    /// Starts at the IPv4 or IPv6 header.
    RawIp,
    /// Linux cooked capture v1 (DLT_LINUX_SLL).
    LinuxSll,
    /// Linux cooked capture v2 (DLT_LINUX_SLL2).
    LinuxSll2,
    /// BSD loopback: a 4-byte address family in host order, then IP.
    Null,
    /// OpenBSD loopback: the family in network order.
    Loop,
}

/// Which way a frame crossed the capture point, when the source knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    In,
    Out,
    Unknown,
}

/// One captured packet, whole (chunks from the ring buffer are joined first).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// Capture time.
    pub ts: Ts,
    /// Index of the interface within this capture (pcapng IDB index; for live
    /// capture, the position of the interface in the attach list).
    pub iface: u32,
    pub dir: Direction,
    pub link: LinkType,
    /// Length on the wire; larger than `data.len()` when truncated.
    pub orig_len: u32,
    pub data: Vec<u8>,
    /// The bytes past `data` were seen but deliberately not copied (the kernel sends
    /// encrypted flows header-only): they are skipped, not lost.
    pub suppressed: bool,
}

impl Frame {
    /// A frame with no bytes, to be filled by a source that reuses its buffer
    /// ([`pcap::PcapSource::next_frame_into`]).
    pub fn empty() -> Self {
        Frame {
            ts: 0,
            iface: 0,
            dir: Direction::Unknown,
            link: LinkType::Ethernet,
            orig_len: 0,
            data: Vec::new(),
            suppressed: false,
        }
    }
}
pub mod btf;
pub mod ebpf;
pub mod kernel;
pub mod procfs;
mod tcfilter;
pub mod uprobe;
pub mod uprobe_target;
