//! The ABI shared by the eBPF programs and the userspace daemon.
//!
//! Every struct is `#[repr(C)]` with explicit padding-free layouts (u32 flags, not
//! `bool`) so both sides agree byte for byte; the tests at the end pin sizes and
//! alignments so a change to the layout cannot go unnoticed.
#![no_std]

/// TLS plaintext records from the uprobes (a separate section of the ABI).
pub mod tls;

/// Bumped whenever a struct below changes layout.
pub const ABI_VERSION: u32 = 4;

/// Bytes of packet data one ring-buffer record can carry. A power of two, because
/// the eBPF side bounds its variable-length copy with `(n - 1) & (CHUNK_LEN - 1)`.
pub const CHUNK_LEN: usize = 2048;

/// Largest packet the kernel side copies: GSO packets on TC egress reach 64 KiB.
pub const MAX_PACKET_LEN: usize = 65536;

/// Default mail ports: SMTP, submissions, submission, POP3, POP3S, IMAP, IMAPS.
pub const DEFAULT_PORTS: [u16; 7] = [25, 465, 587, 110, 995, 143, 993];

/// `PacketHeader::flags`: the packet was received (TC ingress or XDP).
pub const FLAG_INGRESS: u32 = 1 << 0;
/// `PacketHeader::flags`: the packet was sent (TC egress).
pub const FLAG_EGRESS: u32 = 1 << 1;
/// `PacketHeader::flags`: the data starts at the IP header (device without Ethernet).
pub const FLAG_L3: u32 = 1 << 2;
/// `PacketHeader::flags`: the record was produced by the XDP program.
pub const FLAG_XDP: u32 = 1 << 3;

/// `PacketHeader::flags`: the payload was seen but deliberately not copied (an encrypted
/// TLS flow): the record holds the L2–L4 headers and `orig_len − cap_len` payload bytes
/// crossed the wire. Readers count them as seen, never as lost.
pub const FLAG_SUPPRESSED: u32 = 1 << 4;

/// Names of the kernel objects, shared so the loader cannot drift from the programs.
pub mod names {
    /// The packet ring buffer.
    pub const EVENTS: &str = "EVENTS";
    /// `Array<u8>` of 65536 entries indexed by port: non-zero = a mail port.
    pub const PORTS: &str = "PORTS";
    /// `Array<PortBits>` with one entry: the mail ports as a bitmap, for the check every
    /// packet gets (8 KiB stay in cache; `PORTS` is 512 KiB, its values padded to 8 bytes).
    pub const MAIL_PORTS: &str = "MAIL_PORTS";
    /// `Array<Config>` with one entry.
    pub const CONFIG: &str = "CONFIG";
    /// LPM trie over IPv4 addresses (`Key<[u8; 4]>` → `u8`), network byte order.
    pub const HOSTS4: &str = "HOSTS4";
    /// LPM trie over IPv6 addresses (`Key<[u8; 16]>` → `u8`), network byte order.
    pub const HOSTS6: &str = "HOSTS6";
    /// `HashMap<u32 ifindex, u32 IFACE_* bits>` for interfaces that need them.
    pub const IFACES: &str = "IFACES";
    /// LRU hash of [`super::FlowKey`] → [`super::TlsFlow`]: flows whose payload is, or is
    /// about to be, encrypted.
    pub const TLS_FLOWS: &str = "TLS_FLOWS";
    /// Per-CPU [`super::Counters`] at index 0.
    pub const COUNTERS: &str = "COUNTERS";
    /// TC ingress program. Also the name of our netlink filters, which is how a
    /// later run recognises filters a killed mail-trace left behind.
    pub const TC_INGRESS: &str = "mail_trace_in";
    /// TC egress program (and netlink filter name).
    pub const TC_EGRESS: &str = "mail_trace_out";
    /// XDP ingress program.
    pub const XDP_INGRESS: &str = "mail_trace_xdp";
}

/// Entries of the `HOSTS4`/`HOSTS6` tries; bounds the `--host` list.
pub const MAX_HOSTS: u32 = 256;
/// Entries of the `IFACES` map; bounds the `-i` list.
pub const MAX_IFACES: u32 = 64;

/// `IFACES` value bit: the device has no Ethernet header (frames start at L3).
pub const IFACE_L3: u32 = 1 << 0;

/// `PORTS` value bit: a mail port (any non-zero value also means that).
pub const PORT_MAIL: u8 = 1 << 0;
/// `PORTS` value bit: the port speaks TLS from the first byte (465, 993, 995).
pub const PORT_IMPLICIT_TLS: u8 = 1 << 1;

/// The mail ports as a bitmap (the value of `MAIL_PORTS`): bit `p % 64` of word `p / 64`.
pub type PortBits = [u64; PORT_WORDS];
/// Words of a [`PortBits`].
pub const PORT_WORDS: usize = 65536 / 64;

/// Whether port `p` is set in `bits`. The mask keeps the index provably in range for the
/// verifier.
#[inline(always)]
pub fn port_bit(bits: &PortBits, p: u16) -> bool {
    let p = p as usize;
    (bits[(p >> 6) & (PORT_WORDS - 1)] >> (p & 63)) & 1 != 0
}

/// Entries of `TLS_FLOWS` (two per connection, one per direction); LRU evicts the oldest.
pub const MAX_TLS_FLOWS: u32 = 65536;
/// Once a flow is encrypted, each direction copies its first TLS record when that record
/// holds a whole hello (the ClientHello's SNI, the ServerHello's version and cipher: all
/// the dissector reads) and sends everything after header-only. A direction that does not
/// start that way is copied in full until its first segment that starts with a TLS
/// application-data record (`17 03`), or until this many payload bytes were copied.
pub const TLS_KEEP_BYTES: u32 = 16384;

/// `TlsFlow::state`: the client sent `STARTTLS`; the server's reply decides.
pub const TLS_ARMED: u32 = 1;
/// `TlsFlow::state`: encrypted from here on; the handshake is still copied.
pub const TLS_ON: u32 = 2;
/// `TlsFlow::state`: past the handshake: header-only.
pub const TLS_DONE: u32 = 3;
/// `TlsFlow::state`: the first segment began the hello record, which continues in later
/// segments; `TlsFlow::kept` counts the record's bytes still to copy.
pub const TLS_HELLO: u32 = 4;

/// Bytes of a TLS direction to copy from its first byte on: given the first 9 payload bytes
/// (record header, handshake header), the length of the first record, header included, when
/// it is a handshake record holding a whole ClientHello or ServerHello, the only messages the
/// dissector reads. `None` when the direction does not start that way (a hello split over
/// records, or not TLS at all): the caller then falls back to [`TLS_KEEP_BYTES`].
#[inline(always)]
pub fn hello_record_len(h: &[u8; 9]) -> Option<u32> {
    const HANDSHAKE: u8 = 22;
    const CLIENT_HELLO: u8 = 1;
    const SERVER_HELLO: u8 = 2;
    // The dissector refuses longer records too (16 KiB of plaintext plus expansion).
    const MAX_RECORD: u32 = 16384 + 2048;
    if h[0] != HANDSHAKE || h[1] != 3 || (h[5] != CLIENT_HELLO && h[5] != SERVER_HELLO) {
        return None;
    }
    let record = u32::from(u16::from_be_bytes([h[3], h[4]]));
    let msg = (u32::from(h[6]) << 16) | (u32::from(h[7]) << 8) | u32::from(h[8]);
    if record > MAX_RECORD || 4 + msg > record {
        return None;
    }
    Some(5 + record)
}

/// One direction of a TCP connection, as the packet carries it (source first). IPv4
/// addresses use the first 4 bytes, the rest zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    /// 4 or 6.
    pub family: u32,
}

/// Value of `TLS_FLOWS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TlsFlow {
    /// `TLS_ARMED`, `TLS_ON` or `TLS_DONE`.
    pub state: u32,
    /// Payload bytes of this direction copied since the flow became `TLS_ON`; in
    /// `TLS_HELLO`, bytes of the hello record still to copy.
    pub kept: u32,
}

/// `Config::flags`: copy only the headers of encrypted flows' packets (unless
/// `--full-payload`).
pub const CFG_TLS_SUPPRESS: u32 = 1 << 1;

/// `Config::flags`: only packets whose source or destination is in `HOSTS4`/`HOSTS6`.
pub const CFG_HOST_FILTER: u32 = 1 << 0;

/// `Config::flags`: some attached interface has an `IFACES` entry; without it every packet
/// is Ethernet and the programs skip that hash lookup.
pub const CFG_ANY_IFACE_FLAGS: u32 = 1 << 2;

/// Settings userspace writes before attaching (index 0 of `CONFIG`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// Bytes captured per packet at most (clamped to [`MAX_PACKET_LEN`]); 0 = all.
    pub snaplen: u32,
    /// `CFG_*` bits.
    pub flags: u32,
    /// Unread bytes in the ring above which a record wakes the reader; below it
    /// records are submitted with `BPF_RB_NO_WAKEUP` and the reader polls on a timer.
    pub wake_bytes: u32,
    /// Zero; keeps the size a multiple of 8.
    pub reserved: u32,
}

/// Header of every packet record in the ring buffer; `chunk_len` bytes of packet
/// data follow it. A packet longer than [`CHUNK_LEN`] is sent as several records
/// with the same `packet_id` and increasing `offset`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PacketHeader {
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC nanoseconds.
    pub ts_ns: u64,
    /// Identifies the records of one packet: CPU number in the top 16 bits,
    /// a per-CPU counter below.
    pub packet_id: u64,
    /// Interface the packet crossed.
    pub ifindex: u32,
    /// `FLAG_*` bits.
    pub flags: u32,
    /// Length of the packet on the wire (skb->len or the XDP frame length).
    pub orig_len: u32,
    /// Bytes of the packet captured in all its records (after `snaplen`).
    pub cap_len: u32,
    /// Offset of this record's data within the packet.
    pub offset: u32,
    /// Bytes of packet data in this record.
    pub chunk_len: u32,
}

/// Data bytes of the small record size: packets (or last chunks) that fit are
/// reserved as `PacketHeader` + `SMALL_CHUNK_LEN` so that ACKs and short commands
/// do not take a full [`CHUNK_LEN`] slot of the ring. Readers must use
/// `chunk_len`, never the record size, to find the data.
pub const SMALL_CHUNK_LEN: usize = 256;

/// A full record as reserved in the ring buffer.
#[repr(C)]
pub struct PacketRecord {
    pub header: PacketHeader,
    pub data: [u8; CHUNK_LEN],
}

/// Per-CPU counters kept by the kernel programs (index 0 of a per-CPU array).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Packets that passed the quick non-mail check and were parsed (also numbers the
    /// records of one packet).
    pub seen: u64,
    /// Packets that passed the port and host filters.
    pub matched: u64,
    /// Ring-buffer records written.
    pub records: u64,
    /// Packet bytes written into records.
    pub bytes: u64,
    /// Records that could not be written because the ring buffer was full.
    pub lost_records: u64,
    /// Packet bytes in those lost records.
    pub lost_bytes: u64,
    /// Matched packets cut short by `snaplen` or [`MAX_PACKET_LEN`].
    pub truncated: u64,
    /// Packets whose headers could not be parsed.
    pub unparseable: u64,
    /// IPv4 non-first fragments, skipped because they carry no TCP header.
    pub fragments: u64,
    /// Packets of encrypted flows sent header-only.
    pub suppressed_packets: u64,
    /// Payload bytes of those packets that were not copied.
    pub suppressed_bytes: u64,
}

impl Counters {
    /// Adds another CPU's counters to these.
    pub fn add(&mut self, o: &Counters) {
        self.seen += o.seen;
        self.matched += o.matched;
        self.records += o.records;
        self.bytes += o.bytes;
        self.lost_records += o.lost_records;
        self.lost_bytes += o.lost_bytes;
        self.truncated += o.truncated;
        self.unparseable += o.unparseable;
        self.fragments += o.fragments;
        self.suppressed_packets += o.suppressed_packets;
        self.suppressed_bytes += o.suppressed_bytes;
    }
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain-old-data, repr(C), no padding (checked by the tests below).
    unsafe impl aya::Pod for super::PacketHeader {}
    unsafe impl aya::Pod for super::Counters {}
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::TlsFlow {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{align_of, size_of};

    #[test]
    fn port_bits_hold_exactly_the_ports_set() {
        let mut bits: PortBits = [0; PORT_WORDS];
        for p in [0u16, 25, 63, 64, 993, 65535] {
            bits[usize::from(p) / 64] |= 1 << (p % 64);
        }
        let mut set = [0u16; 8];
        let mut n = 0;
        for p in (0..=u16::MAX).filter(|&p| port_bit(&bits, p)) {
            set[n.min(7)] = p;
            n += 1;
        }
        assert_eq!(n, 6);
        assert_eq!(set[..6], [0, 25, 63, 64, 993, 65535]);
        assert_eq!(size_of::<PortBits>(), 8192);
    }

    #[test]
    fn layouts_are_pinned() {
        assert_eq!(size_of::<PacketHeader>(), 40);
        assert_eq!(align_of::<PacketHeader>(), 8);
        assert_eq!(size_of::<PacketRecord>(), 40 + CHUNK_LEN);
        assert_eq!(size_of::<Counters>(), 11 * 8);
        assert_eq!(size_of::<FlowKey>(), 40);
        assert_eq!(size_of::<TlsFlow>(), 8);
        assert_eq!(size_of::<Config>(), 16);
        assert_eq!(align_of::<Config>(), 4);
        assert!(CHUNK_LEN.is_power_of_two());
        assert!(MAX_PACKET_LEN.is_power_of_two());
    }

    #[test]
    fn hello_record_len_keeps_only_a_whole_hello_record() {
        // ClientHello of 0x1f0 bytes in a record of 0x1f4: copy header + record.
        let ch = [22, 3, 1, 0x01, 0xf4, 1, 0, 0x01, 0xf0];
        assert_eq!(hello_record_len(&ch), Some(5 + 0x1f4));
        // ServerHello filling its record exactly.
        let sh = [22, 3, 3, 0, 0x7a, 2, 0, 0, 0x76];
        assert_eq!(hello_record_len(&sh), Some(5 + 0x7a));
        // The hello continues in the next record: no cut.
        assert_eq!(
            hello_record_len(&[22, 3, 1, 0, 0x40, 1, 0, 0x01, 0xf0]),
            None
        );
        // Not a handshake record, not a hello, not TLS 3.x, or an oversized record.
        assert_eq!(hello_record_len(&[23, 3, 3, 0, 0x40, 1, 0, 0, 0x10]), None);
        assert_eq!(hello_record_len(&[22, 3, 3, 0, 0x40, 11, 0, 0, 0x10]), None);
        assert_eq!(hello_record_len(&[22, 2, 0, 0, 0x40, 1, 0, 0, 0x10]), None);
        assert_eq!(
            hello_record_len(&[22, 3, 3, 0x48, 0x01, 1, 0, 0, 0x10]),
            None
        );
        assert_eq!(hello_record_len(b"220 ready"), None);
    }
}
