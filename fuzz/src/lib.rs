//! The fuzz harnesses, one `pub fn` per target: each reads the fuzz input as a script of small
//! operations, so that one byte string drives interleaved directions, gaps, sequence jumps and
//! timing, and asserts what the code under test promises. The cargo-fuzz targets call these;
//! `tests/fuzz_regressions.rs` includes this file (`#[path]`) and replays every kept crash input
//! through the same functions on stable, in CI.
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use mail_trace::capture::pcap::PcapSource;
use mail_trace::capture::{Direction, Frame, LinkType};
use mail_trace::flow::{Dir, FlowConfig, FlowEvent, FlowTable};
use mail_trace::proto::imap::Imap;
use mail_trace::proto::pop3::Pop3;
use mail_trace::proto::smtp::Smtp;
use mail_trace::proto::tls::TlsHellos;
use mail_trace::proto::{Dissector, Privacy, SessionStart};
use mail_trace::wire::{Segment, TcpFlags};

/// Target names, as in fuzz/Cargo.toml and tests/fixtures/fuzz-regressions/.
pub const TARGETS: &[&str] = &[
    "wire_decode",
    "flow_reassembly",
    "smtp",
    "pop3",
    "imap",
    "tls_hello",
    "pcap_read",
];

/// Runs the harness of `target` on `data`; `false` for an unknown target.
pub fn run(target: &str, data: &[u8]) -> bool {
    match target {
        "wire_decode" => wire_decode(data),
        "flow_reassembly" => flow_reassembly(data),
        "smtp" => drive_dissector(|p, s| Box::new(Smtp::new(p, s)), data),
        "pop3" => drive_dissector(|p, s| Box::new(Pop3::new(p, s)), data),
        "imap" => drive_dissector(|p, s| Box::new(Imap::new(p, s)), data),
        "tls_hello" => tls_hello(data),
        "pcap_read" => pcap_read(data),
        _ => return false,
    }
    true
}

/// Reads the fuzz input front to back; past the end everything reads as zero / empty.
pub struct Script<'a> {
    data: &'a [u8],
}

impl<'a> Script<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    /// Up to `n` bytes (fewer at the end of the input).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.data.len());
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        head
    }

    /// A length-prefixed chunk: one byte of length (0..=255).
    pub fn chunk(&mut self) -> &'a [u8] {
        let n = usize::from(self.u8());
        self.bytes(n)
    }
}

/// Bytes all long runs of one dissector script may add up to.
const LONG_RUN_BUDGET: usize = 256 * 1024;

/// Drives one dissector: each operation is a direction's data, a gap, or a poll, picked by the
/// script; events are drained after every step, as the engine does.
pub fn drive_dissector(
    mut make: impl FnMut(Privacy, SessionStart) -> Box<dyn Dissector>,
    data: &[u8],
) {
    let mut s = Script::new(data);
    let flags = s.u8();
    let privacy = Privacy {
        show_secrets: flags & 1 != 0,
        show_headers: flags & 2 != 0,
    };
    let start = SessionStart {
        syn_ts: (flags & 4 != 0).then_some(1),
        implicit_tls: flags & 8 != 0,
        partial: flags & 16 != 0,
        ..SessionStart::default()
    };
    let mut d = make(privacy, start);
    let mut ts = 1_000u64;
    let mut events = 0usize;
    // Long runs are for line caps and buffer bounds (8 KiB lines, 32 KiB TLS hellos): a few
    // hundred KiB reach them all. Without a budget one 64 KiB input fed gigabytes and ran at
    // ~30 execs/s.
    let mut run_budget = LONG_RUN_BUDGET;
    while !s.is_empty() {
        let op = s.u8();
        ts += u64::from(op >> 3);
        let dir = if op & 1 == 0 {
            Dir::ToServer
        } else {
            Dir::ToClient
        };
        match (op >> 1) & 3 {
            // Data is the common case: two of four codes.
            0 | 1 => d.data(dir, s.chunk(), ts),
            2 => d.gap(dir, u64::from(s.u16()) + 1, ts),
            _ => {
                // A long run of one repeated byte: line caps and buffer bounds.
                let b = s.u8();
                let n = usize::from(s.u16()).min(run_budget);
                run_budget -= n;
                d.data(dir, &vec![b; n], ts);
            }
        }
        while let Some(_ev) = d.poll_event() {
            events += 1;
        }
    }
    // The record must serialise: it is what the JSON output writes.
    let rec = serde_json::Value::Object(d.record());
    let text = serde_json::to_string(&rec).expect("a record serialises");
    std::hint::black_box((text, events));
}

const LINKS: [LinkType; 6] = [
    LinkType::Ethernet,
    LinkType::RawIp,
    LinkType::LinuxSll,
    LinkType::LinuxSll2,
    LinkType::Null,
    LinkType::Loop,
];

/// Frame decoding: arbitrary bytes under every link type (the first byte picks it).
pub fn wire_decode(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let frame = Frame {
        ts: 0,
        iface: 0,
        dir: Direction::Unknown,
        link: LINKS[usize::from(sel) % LINKS.len()],
        // The high bit says the capture was cut short: `missing` must then stay consistent.
        orig_len: rest.len() as u32 + if sel & 0x80 != 0 { 1000 } else { 0 },
        data: rest.to_vec(),
        suppressed: false,
    };
    if let Ok(Some(seg)) = mail_trace::wire::decode(&frame) {
        assert!(seg.payload.len() <= rest.len());
    }
}

const MAX_BUFFER: usize = 4096;
const MAX_CONNS: usize = 3;

/// TCP reassembly: segments (any order, overlap, flags, sequence jumps) of four connections
/// through one FlowTable with small bounds: every connection is opened once and closed once,
/// data and gaps only on open connections, at most `max_connections` live, held bytes bounded,
/// nothing left after `finish`.
pub fn flow_reassembly(data: &[u8]) {
    let mut s = Script::new(data);
    let mut table = FlowTable::new(FlowConfig {
        max_buffer_per_dir: MAX_BUFFER,
        max_connections: MAX_CONNS,
        idle_timeout_ns: 1_000_000,
        server_ports: vec![25],
        ..FlowConfig::default()
    });
    let server = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 99, 0, 2)), 25);
    // Per connection: the next sequence number each side would send.
    let mut next: [[u32; 2]; 4] = [[s.u32(), s.u32()]; 4];
    let mut ts = 1u64;
    let mut opened_ids: HashMap<u64, ()> = HashMap::new();
    while !s.is_empty() {
        let op = s.u8();
        let conn = usize::from(op & 3);
        let side = usize::from((op >> 2) & 1);
        ts += u64::from(s.u8()) * 1000;
        if op >> 3 == 31 {
            table.expire(ts, &mut |ev| {
                if let FlowEvent::Closed { id, .. } = ev {
                    opened_ids.remove(&id);
                }
            });
            continue;
        }
        let client = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 99, 0, 1)), 40000 + conn as u16);
        let (src, dst) = if side == 0 {
            (client, server)
        } else {
            (server, client)
        };
        let fl = s.u8();
        let flags = TcpFlags {
            syn: fl & 1 != 0,
            ack: fl & 2 != 0,
            fin: fl & 4 != 0,
            rst: fl & 8 != 0,
            psh: fl & 16 != 0,
        };
        // Sequence: mostly in order, sometimes behind/ahead by a small amount, sometimes anywhere.
        let seq = match fl >> 5 {
            0..=3 => next[conn][side],
            4 => next[conn][side].wrapping_sub(u32::from(s.u16())),
            5 => next[conn][side].wrapping_add(u32::from(s.u16())),
            6 => s.u32(),
            _ => next[conn][side].wrapping_add(u32::from(s.u8())),
        };
        let payload = s.chunk();
        let missing = if fl & 0x80 != 0 && fl & 0x40 == 0 {
            u32::from(s.u8())
        } else {
            0
        };
        let ack = next[conn][1 - side].wrapping_add(u32::from(s.u8() & 0x0f));
        let seg = Segment {
            src,
            dst,
            seq,
            ack,
            flags,
            payload,
            missing,
            suppressed: false,
            window: u16::MAX,
            wscale: None,
        };
        next[conn][side] = seq
            .wrapping_add(payload.len() as u32)
            .wrapping_add(missing)
            .wrapping_add(u32::from(flags.syn || flags.fin));
        table.segment(&seg, ts, &mut |ev| match ev {
            FlowEvent::Opened { id, .. } => {
                assert!(opened_ids.insert(id, ()).is_none(), "opened twice: {id}");
            }
            FlowEvent::Closed { id, .. } => {
                assert!(opened_ids.remove(&id).is_some(), "closed unopened: {id}");
            }
            FlowEvent::Data { id, data, .. } => {
                assert!(opened_ids.contains_key(&id), "data on unopened {id}");
                assert!(!data.is_empty());
            }
            FlowEvent::Gap { id, len, .. } | FlowEvent::Skipped { id, len, .. } => {
                assert!(opened_ids.contains_key(&id), "gap on unopened {id}");
                assert!(len > 0);
            }
            FlowEvent::Anomaly { .. } => {}
        });
        let st = table.stats();
        assert!(
            st.live as usize <= MAX_CONNS,
            "live {} > {MAX_CONNS}",
            st.live
        );
        assert_eq!(st.live as usize, opened_ids.len());
        // Each direction holds at most its bound (plus a per-segment overhead per byte held).
        let cap = (MAX_BUFFER as u64)
            * (1 + mail_trace::flow::reassembly::HELD_OVERHEAD as u64)
            * 2
            * MAX_CONNS as u64;
        assert!(st.buffered_bytes <= cap, "buffered {}", st.buffered_bytes);
    }
    table.finish(ts, &mut |ev| {
        if let FlowEvent::Closed { id, .. } = ev {
            opened_ids.remove(&id);
        }
    });
    assert!(opened_ids.is_empty(), "left open: {opened_ids:?}");
    assert_eq!(table.stats().live, 0);
    assert_eq!(table.stats().buffered_bytes, 0);
}

/// TLS hello parser: both directions' records in arbitrary chunks, with gaps.
pub fn tls_hello(data: &[u8]) {
    let mut s = Script::new(data);
    let mut h = TlsHellos::new();
    while !s.is_empty() {
        let op = s.u8();
        let dir = if op & 1 == 0 {
            Dir::ToServer
        } else {
            Dir::ToClient
        };
        if op & 0x80 != 0 && op & 0x40 != 0 && op & 0x20 != 0 {
            h.gap(dir);
        } else {
            h.data(dir, s.chunk());
        }
        let _ = h.state();
    }
    std::hint::black_box(h.info());
}

/// pcap/pcapng reading: the input is the file. PcapSource reads a path, so the bytes go to a
/// per-process file in the temp dir; every frame is read to the end or the first error.
pub fn pcap_read(data: &[u8]) {
    // One file per thread: the regression test runs harnesses on parallel threads.
    let path = std::env::temp_dir().join(format!(
        "mt-fuzz-pcap-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::write(&path, data).expect("temp file");
    if let Ok(src) = PcapSource::open(&path) {
        let _ = src.interfaces().len();
        // Every frame is read until the end or the first error; an error ends the iterator.
        let mut n = 0usize;
        for frame in src {
            match frame {
                Ok(f) => {
                    assert!(f.data.len() <= 1 << 26);
                    let _ = mail_trace::wire::decode(&f);
                    n += 1;
                }
                Err(e) => {
                    // One line, naming the file.
                    let msg = e.to_string();
                    assert!(!msg.contains('\n'), "multi-line error: {msg:?}");
                }
            }
        }
        std::hint::black_box(n);
    }
    let _ = std::fs::remove_file(&path);
}
