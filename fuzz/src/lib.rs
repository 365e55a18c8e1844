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
    "maillog_line",
    "journal_entry",
    "ring_records",
    "pcapng_roundtrip",
    "engine",
    "chunking",
    "smtp_body",
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
        "maillog_line" => maillog_line(data),
        "journal_entry" => journal_entry(data),
        "ring_records" => {
            ring_records(data);
        }
        "pcapng_roundtrip" => {
            pcapng_roundtrip(data);
        }
        "engine" => {
            engine(data);
        }
        "chunking" => chunking(data),
        "smtp_body" => smtp_body(data),
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

/// Bytes all long runs of one dissector script may add up to: enough to pass every cap once
/// (8 KiB lines, 32 KiB TLS hellos, 64 KiB held per direction). Each input costs its bytes
/// through the line and body scanners; 256 KiB held the dissector targets under 100 execs/s.
const LONG_RUN_BUDGET: usize = 72 * 1024;

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

/// Log lines: any local user can write a line that reaches the mail log (logger(1)), so the
/// syslog framing, the Postfix and the Dovecot parsers read hostile text. The input is lines;
/// each is parsed with a UTC and a local clock, and also behind a well-formed prefix of each
/// program family, so the message parsers are reached even when the fuzzer's prefix is junk.
/// Asserted: the kept raw line is at most `MAX_LINE`; the redacted form (default privacy) keeps
/// no raw line and, for a line that may quote a header or body, no Message-ID and no quoted
/// text; the tail's summary is one line; the JSON forms serialise.
pub fn maillog_line(data: &[u8]) {
    use mail_trace::maillog::{self, Clock, MAX_LINE};
    const PREFIXES: [&str; 4] = [
        "",
        "Dec  4 10:11:12 mx postfix/smtpd[123]: ",
        "2026-12-04T10:11:12.123456+00:00 mx dovecot[9]: ",
        "Dec  4 10:11:12 mx imap-login: ",
    ];
    let text = String::from_utf8_lossy(data);
    // 2026-12-04 00:00:00 UTC: the year of a BSD syslog stamp comes from the clock.
    let reference = 1_796_342_400_000_000_000u64;
    let clocks = [Clock::utc(reference), Clock::local(reference)];
    for raw in text.split('\n').take(64) {
        for (i, prefix) in PREFIXES.iter().enumerate() {
            let line = format!("{prefix}{raw}");
            let Some(l) = maillog::parse(&line, &clocks[i % 2]) else {
                continue;
            };
            assert!(l.raw.len() <= MAX_LINE, "raw line of {} bytes", l.raw.len());
            let _ = serde_json::to_string(&l.to_json()).expect("a log line serialises");
            let private = l.private;
            let shown = l.redacted(Privacy::default());
            assert!(shown.raw.is_empty(), "the raw line survived redaction");
            if private {
                assert!(
                    !shown.fields.contains_key("message_id") && !shown.fields.contains_key("text"),
                    "private fields survived redaction: {:?}",
                    shown.fields
                );
            }
            let v = shown.to_json();
            assert!(v.get("line").is_none());
            let _ = serde_json::to_string(&shown.record_json(1)).expect("serialises");
            let _ = serde_json::to_string(&shown.unmatched_json("why")).expect("serialises");
            std::hint::black_box(shown.get("client"));
            // The summary is written to a terminal through the printable boundary: one line.
            let summary = shown.summary();
            let printable = mail_trace::output::printable::printable(&summary);
            assert!(!printable.contains(['\n', '\r', '\x1b']), "{printable:?}");
        }
    }
}

/// One `journalctl -o json` entry: the raw input as an entry, and an entry built from the script
/// (identifier, uid, pid, a message as a string or as an array of bytes, a timestamp), so the
/// fields the reader looks at are reached. Asserted: an entry not sent by a trusted uid is never
/// a line, whatever its identifier; a line is one line; it parses as a log line of the program
/// the identifier names (or not at all), never panicking.
pub fn journal_entry(data: &[u8]) {
    use mail_trace::maillog::follow::{journal_line, Trusted};
    use serde_json::{json, Value};
    let trusted = Trusted::uids(&[0, 101]);
    if let Ok(text) = std::str::from_utf8(data) {
        if let Some(line) = journal_line(text, &trusted) {
            assert!(!line.contains(['\n', '\r']), "{line:?}");
        }
    }
    let mut s = Script::new(data);
    const IDENTS: [&str; 6] = [
        "postfix/smtpd",
        "postfix/submission/smtpd",
        "dovecot",
        "imap-login",
        "sshd",
        "postfix/cleanup",
    ];
    let op = s.u8();
    let ident = IDENTS[usize::from(op) % IDENTS.len()];
    let uid = [0u32, 101, 1000, 65534][usize::from(op >> 3) & 3];
    let micros = u64::from(s.u32()) * 1_000_000 + u64::from(s.u32() % 1_000_000);
    let msg_bytes = s.chunk();
    let message: Value = if op & 0x80 != 0 {
        Value::Array(msg_bytes.iter().map(|&b| Value::from(b)).collect())
    } else {
        Value::from(String::from_utf8_lossy(msg_bytes).into_owned())
    };
    let mut entry = json!({
        "SYSLOG_IDENTIFIER": ident,
        "_UID": uid.to_string(),
        "__REALTIME_TIMESTAMP": micros.to_string(),
        "MESSAGE": message,
    });
    if op & 0x40 != 0 {
        entry["_PID"] = Value::from(s.u16().to_string());
    }
    if op & 0x20 != 0 {
        entry["_HOSTNAME"] = Value::from(String::from_utf8_lossy(s.chunk()).into_owned());
    }
    let line = journal_line(&entry.to_string(), &trusted);
    if uid != 0 && uid != 101 {
        assert!(line.is_none(), "believed uid {uid}: {line:?}");
    }
    if ident == "sshd" {
        assert!(line.is_none(), "not a mail program: {line:?}");
    }
    if let Some(line) = line {
        assert!(!line.contains(['\n', '\r']), "{line:?}");
        let clock = mail_trace::maillog::Clock::utc(0);
        std::hint::black_box(mail_trace::maillog::parse(&line, &clock));
    }
}

/// Ring-buffer records as the kernel would write them, and as it never would: a script of
/// packet records (header fields from the script, chunk offsets and lengths in and out of
/// bounds, CPUs interleaving, chunks lost or repeated) and plaintext records, each also given
/// to the other decoder. Asserted: a packet comes out only whole (its length is its `cap_len`,
/// its bytes the ones its chunks carried), every record is either part of a packet, a packet, or
/// counted (malformed or incomplete); a plaintext record decodes to exactly its chunk.
pub fn ring_records(data: &[u8]) -> u64 {
    use mail_trace::capture::ebpf::Joiner;
    use mail_trace::capture::uprobe;
    let mut s = Script::new(data);
    let mut j = Joiner::default();
    let mut ids = [0u64; 4];
    let mut records = 0u64;
    let mut packets = 0u64;
    while !s.is_empty() {
        let op = s.u8();
        let cpu = u64::from(op & 3);
        if op & 4 != 0 {
            ids[cpu as usize] += 1;
        }
        let packet_id = (cpu << 48) | ids[cpu as usize];
        let cap = if op & 8 != 0 {
            u32::from(s.u16())
        } else {
            u32::from(s.u8()) * 32
        };
        let (offset, chunk_len) = if op & 0x10 != 0 {
            (s.u32(), s.u32())
        } else {
            let o = u32::from(s.u8()) * 256;
            (o, u32::from(s.u16() % 2049))
        };
        let flags = s.u32();
        let mut rec = Vec::with_capacity(40 + 64);
        for x in [1_000u64 + u64::from(op), packet_id] {
            rec.extend_from_slice(&x.to_ne_bytes());
        }
        for x in [7u32, flags, cap + 10, cap, offset, chunk_len] {
            rec.extend_from_slice(&x.to_ne_bytes());
        }
        // The chunk's bytes are their own offsets (mod 251): a packet put together from the
        // wrong places shows.
        let have = (chunk_len as usize).min(4096);
        let have = if op & 0x20 != 0 { have / 2 } else { have };
        rec.extend((0..have).map(|i| ((offset as usize + i) % 251) as u8));
        if op & 0x40 != 0 {
            rec.truncate(usize::from(s.u8()));
        }
        records += 1;
        let before = j.malformed + j.incomplete;
        if let Some((hdr, bytes)) = j.push(&rec) {
            packets += 1;
            assert_eq!(bytes.len(), hdr.cap_len as usize);
            assert!(bytes.len() <= mail_trace_common::MAX_PACKET_LEN);
            for (i, &b) in bytes.iter().enumerate() {
                assert_eq!(
                    b,
                    (i % 251) as u8,
                    "byte {i} of packet {:#x}",
                    hdr.packet_id
                );
            }
        }
        assert!(j.malformed + j.incomplete >= before);
        if uprobe::is_plaintext(&rec) {
            if let Some(p) = uprobe::decode(&rec, 0) {
                assert!(p.data.len() <= rec.len());
            }
        }
        // A plaintext record with this header's bytes behind a plaintext header.
        let mut tls = vec![0u8; std::mem::size_of::<mail_trace_common::tls::TlsDataHeader>()];
        let n = tls.len().min(rec.len());
        tls[..n].copy_from_slice(&rec[..n]);
        let body = rec.get(40..).unwrap_or_default();
        let len = u32::try_from(body.len()).unwrap_or(u32::MAX);
        let at = std::mem::offset_of!(mail_trace_common::tls::TlsDataHeader, chunk_len);
        tls[at..at + 4].copy_from_slice(&len.to_ne_bytes());
        tls.extend_from_slice(body);
        if let Some(p) = uprobe::decode(&tls, i128::from(s.u32())) {
            assert_eq!(p.data, body);
            assert!(p.comm.len() <= 16 * 3, "{:?}", p.comm);
        }
    }
    std::hint::black_box(records);
    packets
}

/// The pcapng writer, read back by our reader: every frame the script makes (interfaces of
/// every link type, times, directions, lengths on the wire longer than the bytes kept) reads
/// back identically, in order, and the file ends cleanly.
pub fn pcapng_roundtrip(data: &[u8]) -> usize {
    use mail_trace::output::pcapng::{IfaceDesc, IfaceStats, PcapngSink};
    let mut s = Script::new(data);
    let n_ifaces = usize::from(s.u8() % 3) + 1;
    let ifaces: Vec<IfaceDesc> = (0..n_ifaces)
        .map(|i| {
            let n = usize::from(s.u8() % 8);
            IfaceDesc {
                name: format!("mt{i}{}", String::from_utf8_lossy(s.bytes(n))),
                link: LINKS[usize::from(s.u8()) % LINKS.len()],
                snaplen: 0,
            }
        })
        .collect();
    let mut frames = Vec::new();
    while !s.is_empty() && frames.len() < 64 {
        let op = s.u8();
        let data = s.chunk().to_vec();
        let extra = if op & 0x80 != 0 {
            u32::from(s.u16())
        } else {
            0
        };
        frames.push(Frame {
            ts: u64::from(s.u32()) * 1_000_000_007 % (1 << 62),
            iface: u32::from(op) % n_ifaces as u32,
            dir: [Direction::In, Direction::Out, Direction::Unknown][usize::from(op >> 2) % 3],
            link: LINKS[0],
            orig_len: data.len() as u32 + extra,
            data,
            suppressed: false,
        });
    }
    let mut w = PcapngSink::new(Vec::new(), &ifaces).expect("writing to memory");
    for f in &mut frames {
        f.link = ifaces[f.iface as usize].link;
        w.write(f).expect("writing to memory");
    }
    let stats = vec![IfaceStats::default(); n_ifaces];
    let bytes = w.finish(0, &stats).expect("writing to memory");
    let path = std::env::temp_dir().join(format!(
        "mt-fuzz-pcapng-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::write(&path, &bytes).expect("temp file");
    let mut src = PcapSource::open(&path).expect("our own pcapng opens");
    let mut back = Vec::new();
    while let Some(f) = src.next_frame() {
        back.push(f.expect("our own pcapng reads"));
    }
    // Interfaces are known as their blocks are read: all of them once the file is.
    let names: Vec<Option<String>> = src.interfaces().iter().map(|i| i.name.clone()).collect();
    let _ = std::fs::remove_file(&path);
    assert_eq!(names.len(), n_ifaces);
    for (n, i) in names.iter().zip(&ifaces) {
        assert_eq!(n.as_deref(), Some(i.name.as_str()));
    }
    assert_eq!(back.len(), frames.len());
    for (b, f) in back.iter().zip(&frames) {
        assert_eq!(
            (b.ts, b.iface, b.dir, b.link),
            (f.ts, f.iface, f.dir, f.link)
        );
        assert_eq!((b.orig_len, &b.data), (f.orig_len, &f.data));
    }
    back.len()
}

/// The dissectors the `chunking` target picks from (its first byte).
fn dissector(which: u8, privacy: Privacy, start: SessionStart) -> Box<dyn Dissector> {
    match which % 3 {
        0 => Box::new(Smtp::new(privacy, start)),
        1 => Box::new(Pop3::new(privacy, start)),
        _ => Box::new(Imap::new(privacy, start)),
    }
}

/// One step of a dissector script, read ahead so that it can be replayed twice.
enum Step<'a> {
    Data(Dir, &'a [u8], u64),
    Gap(Dir, u64, u64),
}

/// Runs `steps` through a fresh dissector; each data step is cut into pieces of the sizes
/// `cuts` cycles through (none: whole). Returns the events and the record as JSON.
fn run_steps(
    d: &mut dyn Dissector,
    steps: &[Step<'_>],
    cuts: &[u8],
) -> (Vec<mail_trace::proto::Event>, String) {
    let mut events = Vec::new();
    let mut k = 0usize;
    for st in steps {
        match *st {
            Step::Data(dir, mut bytes, ts) => {
                while !bytes.is_empty() {
                    let n = match cuts.get(k % cuts.len().max(1)) {
                        Some(&c) => usize::from(c % 16) + 1,
                        None => bytes.len(),
                    };
                    k += 1;
                    let (piece, rest) = bytes.split_at(n.min(bytes.len()));
                    d.data(dir, piece, ts);
                    bytes = rest;
                    while let Some(ev) = d.poll_event() {
                        events.push(ev);
                    }
                }
            }
            Step::Gap(dir, len, ts) => d.gap(dir, len, ts),
        }
        while let Some(ev) = d.poll_event() {
            events.push(ev);
        }
    }
    let rec = serde_json::Value::Object(d.record());
    (
        events,
        serde_json::to_string(&rec).expect("a record serialises"),
    )
}

/// A property, not only "no panic": the same bytes at the same times give the same events
/// and the same record however the stream is cut into segments (the unit tests check it on
/// known dialogues; here on any). Byte 0 picks SMTP, POP3 or IMAP, byte 1 privacy and start,
/// byte 2 how many cut sizes follow; then steps as in [`drive_dissector`] (no long runs).
pub fn chunking(data: &[u8]) {
    let mut s = Script::new(data);
    let which = s.u8();
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
    let n_cuts = usize::from(s.u8() % 8) + 1;
    let cuts = s.bytes(n_cuts);
    let mut steps = Vec::new();
    let mut ts = 1_000u64;
    while !s.is_empty() {
        let op = s.u8();
        ts += u64::from(op >> 3);
        let dir = if op & 1 == 0 {
            Dir::ToServer
        } else {
            Dir::ToClient
        };
        match (op >> 1) & 3 {
            2 => steps.push(Step::Gap(dir, u64::from(s.u16()) + 1, ts)),
            _ => steps.push(Step::Data(dir, s.chunk(), ts)),
        }
    }
    let whole = run_steps(&mut *dissector(which, privacy, start), &steps, &[]);
    let cut = run_steps(&mut *dissector(which, privacy, start), &steps, cuts);
    assert_eq!(
        whole.0, cut.0,
        "events differ with the stream cut at {cuts:?}"
    );
    assert_eq!(
        whole.1, cut.1,
        "records differ with the stream cut at {cuts:?}"
    );
}

/// The message scanner (DATA and BDAT bodies) on its own, for speed: the dissector targets
/// reach it only behind a dialogue. Property: its fast path past the headers and its byte
/// loop agree, i.e. every cut of the stream gives the same end, size, facts and headers.
/// Byte 0: dot-stuffed or not, byte 1: cut sizes; then the message bytes, with a gap where
/// the byte 0xff 0xfe pair is (so gaps land anywhere).
pub fn smtp_body(data: &[u8]) {
    use mail_trace::proto::smtp::BodyScanner;
    let mut s = Script::new(data);
    let dot = s.u8() & 1 != 0;
    let cut = usize::from(s.u8() % 64) + 1;
    let rest = s.bytes(usize::MAX);
    let scan = |piece: usize| {
        let mut b = BodyScanner::new(dot);
        let mut ends = Vec::new();
        let mut at = 0;
        for (k, part) in rest.split(|&x| x == 0xfe).enumerate() {
            if k > 0 {
                b.gap(u64::from(part.first().copied().unwrap_or(1)));
            }
            for chunk in part.chunks(piece) {
                let mut c = chunk;
                while let Some(n) = b.feed(c) {
                    // Ended: what follows is a new message (the next transaction's).
                    ends.push(at + n);
                    at += n;
                    c = &c[n..];
                    b.finish();
                    b = BodyScanner::new(dot);
                }
                at += c.len();
            }
        }
        let summary = b.finish();
        (ends, b.size, b.incomplete, b.facts.clone(), summary)
    };
    let whole = scan(usize::MAX);
    let pieces = scan(cut);
    assert_eq!(
        whole, pieces,
        "the message scanner differs cut every {cut} bytes"
    );
}

/// Where the `engine` target writes: shared with the outputs it is given to.
#[derive(Clone, Default)]
pub struct Shared(std::rc::Rc<std::cell::RefCell<Vec<u8>>>);

impl std::io::Write for Shared {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.borrow_mut().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The default outputs side by side, as `tail` and `tail --json [--events]` write them.
struct Fan(Vec<mail_trace::output::Outputs<Shared>>);

impl mail_trace::session::Sink for Fan {
    fn session_start(&mut self, info: &mail_trace::session::SessionInfo) {
        self.0.iter_mut().for_each(|o| o.session_start(info));
    }
    fn event(&mut self, info: &mail_trace::session::SessionInfo, ev: &mail_trace::proto::Event) {
        self.0.iter_mut().for_each(|o| o.event(info, ev));
    }
    fn gap(&mut self, info: &mail_trace::session::SessionInfo, dir: Dir, len: u64, ts: u64) {
        self.0.iter_mut().for_each(|o| o.gap(info, dir, len, ts));
    }
    fn session_end(
        &mut self,
        info: &mail_trace::session::SessionInfo,
        rec: &mail_trace::session::SessionRecord,
    ) {
        self.0.iter_mut().for_each(|o| o.session_end(info, rec));
    }
}

/// The mail ports the `engine` target's connections go to (its first byte picks them).
const ENGINE_PORTS: [u16; 8] = [25, 587, 465, 110, 143, 993, 995, 2525];

/// The whole engine: IPv4 TCP packets of four connections (raw IP frames, built with
/// etherparse) through wire decoding, reassembly, protocol sniffing, the dissectors and the
/// four default outputs (the human tail, `--summary`, `--json`, `--json --events`), with
/// truncated and header-only frames, garbage frames and idle ticks. Properties: what the human
/// outputs print has no control character but the line ends (a peer must not drive the
/// operator's terminal), and every JSON output line parses. Returns the bytes written.
pub fn engine(data: &[u8]) -> usize {
    use mail_trace::output::jsonl::JsonLines;
    use mail_trace::output::tail::{Style, Summary, Tail};
    use mail_trace::output::Outputs;
    use mail_trace::session::{Engine, EngineConfig};

    let mut s = Script::new(data);
    let seed = s.u8();
    let privacy = Privacy::default();
    let bufs: Vec<Shared> = (0..4).map(|_| Shared::default()).collect();
    let style = Style {
        color: false,
        explain: seed & 1 != 0,
    };
    let mut fan = Fan(vec![
        Outputs::Tail(Tail::new(bufs[0].clone(), style, privacy)),
        Outputs::Summary(Summary::new(bufs[1].clone())),
        Outputs::Json(JsonLines::new(bufs[2].clone(), false)),
        Outputs::Json(JsonLines::new(bufs[3].clone(), true)),
    ]);
    let mut engine = Engine::new(EngineConfig {
        privacy,
        ..EngineConfig::default()
    });
    let ports: [u16; 4] =
        std::array::from_fn(|k| ENGINE_PORTS[usize::from(seed >> (k + 1)) % ENGINE_PORTS.len()]);
    let mut next: [[u32; 2]; 4] = [[s.u32(), s.u32()]; 4];
    let mut ts = 1_000_000_000u64;
    let mut frame = Frame::empty();
    frame.link = LinkType::RawIp;
    while !s.is_empty() {
        let op = s.u8();
        let conn = usize::from(op & 3);
        let side = usize::from((op >> 2) & 1);
        ts += u64::from(s.u8()) * 1_000_000;
        match op >> 3 {
            // An idle second or minute: timeouts.
            30 => {
                ts += 61_000_000_000;
                engine.tick(ts, &mut fan);
                continue;
            }
            // A frame of anything.
            31 => {
                frame.data.clear();
                frame.data.extend_from_slice(s.chunk());
                frame.orig_len = frame.data.len() as u32;
                frame.ts = ts;
                frame.suppressed = false;
                engine.frame(&frame, &mut fan);
                continue;
            }
            _ => {}
        }
        let client = [10, 99, 0, 1];
        let server = [10, 99, 0, 2];
        let cport = 40000 + conn as u16;
        let sport = ports[conn];
        let fl = s.u8();
        let seq = match fl >> 5 {
            0..=4 => next[conn][side],
            5 => next[conn][side].wrapping_add(u32::from(s.u16())),
            6 => next[conn][side].wrapping_sub(u32::from(s.u8())),
            _ => s.u32(),
        };
        let ack = next[conn][1 - side];
        let b = if side == 0 {
            etherparse::PacketBuilder::ipv4(client, server, 64).tcp(cport, sport, seq, 65535)
        } else {
            etherparse::PacketBuilder::ipv4(server, client, 64).tcp(sport, cport, seq, 65535)
        };
        let b = if fl & 1 != 0 { b.syn() } else { b };
        let b = if fl & 2 != 0 { b.ack(ack) } else { b };
        let b = if fl & 4 != 0 { b.fin() } else { b };
        let b = if fl & 8 != 0 { b.rst() } else { b };
        let payload = s.chunk();
        frame.data.clear();
        if b.write(&mut frame.data, payload).is_err() {
            continue;
        }
        frame.orig_len = frame.data.len() as u32;
        frame.suppressed = false;
        // Truncated (a snap length) or header-only (the kernel's encrypted flows).
        if fl & 16 != 0 && payload.len() > 1 {
            let keep = frame.data.len() - payload.len() / 2;
            frame.data.truncate(keep);
            frame.suppressed = op & 0x80 != 0;
        }
        frame.ts = ts;
        engine.frame(&frame, &mut fan);
        next[conn][side] = seq
            .wrapping_add(payload.len() as u32)
            .wrapping_add(u32::from(fl & 1 != 0 || fl & 4 != 0));
    }
    engine.finish(ts, &mut fan);
    for o in &mut fan.0 {
        o.flush().expect("flush to memory");
    }
    let mut written = 0;
    for (k, b) in bufs.iter().enumerate() {
        let out = b.0.borrow();
        written += out.len();
        let text = std::str::from_utf8(&out).expect("outputs are UTF-8");
        if k < 2 {
            if let Some(c) = text.chars().find(|c| c.is_control() && *c != '\n') {
                panic!("the human output prints {c:?}: {text}");
            }
        } else {
            for line in text.lines() {
                if let Err(e) = serde_json::from_str::<serde_json::Value>(line) {
                    panic!("a JSON line does not parse ({e}): {line}");
                }
            }
        }
    }
    written
}
