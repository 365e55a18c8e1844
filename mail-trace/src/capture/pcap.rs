//! Replay source: pcap and pcapng files (pcap-file crate), as [`super::Frame`]s.
//!
//! Classic pcap records are read raw and checked here: pcap-file's own check rejects a record
//! whose original length exceeds the snaplen, which is exactly what a snaplen-cut capture holds.
//! pcapng keeps one interface list across sections, so `Frame::iface` indexes [`PcapSource::interfaces`]
//! whatever section the packet came from.
use std::fs::File;
use std::io::{ErrorKind, Read};
use std::path::{Path, PathBuf};

use pcap_file::pcap::PcapReader;
use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketOption;
use pcap_file::pcapng::blocks::interface_description::{
    InterfaceDescriptionBlock, InterfaceDescriptionOption,
};
use pcap_file::pcapng::{Block, PcapNgReader};
use pcap_file::{PcapError, TsResolution};

use super::{Direction, Frame, LinkType};
use crate::time::Ts;

/// Why a capture file cannot be read (further). Displays as one line naming the file.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: not a pcap or pcapng file", path.display())]
    NotACapture { path: PathBuf },
    #[error("{}: unsupported link type {dlt}", path.display())]
    UnsupportedLink { path: PathBuf, dlt: u32 },
    #[error("{}: truncated after {frames} frames", path.display())]
    Truncated { path: PathBuf, frames: u64 },
    #[error("{}: corrupt after {frames} frames: {reason}", path.display())]
    Corrupt {
        path: PathBuf,
        frames: u64,
        reason: String,
    },
}

/// One capture interface (the pcap file's single one, or a pcapng IDB).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IfaceInfo {
    /// `if_name`, when the file names it.
    pub name: Option<String>,
    /// The LINKTYPE number as written in the file (for writing it back out).
    pub dlt: u32,
    /// `None` when mail-trace cannot decode this link type; reading a frame on it is an error.
    pub link: Option<LinkType>,
    pub snaplen: u32,
}

/// LINKTYPE/DLT numbers: 12 and 14 are raw IP on some BSDs, 228/229 raw IPv4/IPv6.
fn link_of(dlt: u32) -> Option<LinkType> {
    match dlt {
        0 => Some(LinkType::Null),
        1 => Some(LinkType::Ethernet),
        12 | 14 | 101 | 228 | 229 => Some(LinkType::RawIp),
        108 => Some(LinkType::Loop),
        113 => Some(LinkType::LinuxSll),
        276 => Some(LinkType::LinuxSll2),
        _ => None,
    }
}

/// Timestamp units per second of a pcapng interface (`if_tsresol`): 10^-n, or 2^-n with the
/// high bit set.
fn units_per_sec(tsresol: u8) -> Option<u128> {
    if tsresol & 0x80 == 0 {
        10u128.checked_pow(u32::from(tsresol))
    } else {
        2u128.checked_pow(u32::from(tsresol & 0x7f))
    }
}

struct NgIface {
    units_per_sec: u128,
    offset_ns: u64,
}

enum Inner {
    Pcap {
        reader: PcapReader<File>,
        nanos: bool,
        link: Option<LinkType>,
        dlt: u32,
    },
    PcapNg {
        reader: Box<PcapNgReader<File>>,
        ng: Vec<NgIface>,
        /// Index in `ifaces` of the current section's interface 0.
        section_base: usize,
        /// Simple packet blocks carry no time: they inherit the last one seen.
        last_ts: Ts,
    },
}

/// Reads frames from one pcap or pcapng file.
pub struct PcapSource {
    path: PathBuf,
    inner: Inner,
    ifaces: Vec<IfaceInfo>,
    frames: u64,
    done: bool,
}

impl PcapSource {
    /// Opens `path`, recognising the format by its magic number (pcap in either byte order with
    /// µs or ns timestamps, or pcapng), not by its name.
    pub fn open(path: &Path) -> Result<Self, CaptureError> {
        let io = |source| CaptureError::Io {
            path: path.to_owned(),
            source,
        };
        let mut magic = [0u8; 4];
        let mut file = File::open(path).map_err(io)?;
        match file.read_exact(&mut magic) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => {
                return Err(CaptureError::NotACapture {
                    path: path.to_owned(),
                })
            }
            Err(e) => return Err(io(e)),
        }
        let file = File::open(path).map_err(io)?;
        let header_err = |e: PcapError| match e {
            PcapError::IoError(e) if e.kind() == ErrorKind::UnexpectedEof => {
                CaptureError::Truncated {
                    path: path.to_owned(),
                    frames: 0,
                }
            }
            PcapError::IoError(e) => io(e),
            other => CaptureError::Corrupt {
                path: path.to_owned(),
                frames: 0,
                reason: other.to_string(),
            },
        };
        let (inner, ifaces) = match magic {
            [0xa1, 0xb2, 0xc3, 0xd4]
            | [0xd4, 0xc3, 0xb2, 0xa1]
            | [0xa1, 0xb2, 0x3c, 0x4d]
            | [0x4d, 0x3c, 0xb2, 0xa1] => {
                let reader = PcapReader::new(file).map_err(header_err)?;
                let h = reader.header();
                let dlt = u32::from(h.datalink);
                let link = link_of(dlt);
                if link.is_none() {
                    return Err(CaptureError::UnsupportedLink {
                        path: path.to_owned(),
                        dlt,
                    });
                }
                let iface = IfaceInfo {
                    name: None,
                    dlt,
                    link,
                    snaplen: h.snaplen,
                };
                let inner = Inner::Pcap {
                    nanos: h.ts_resolution == TsResolution::NanoSecond,
                    reader,
                    link,
                    dlt,
                };
                (inner, vec![iface])
            }
            [0x0a, 0x0d, 0x0d, 0x0a] => {
                let reader = PcapNgReader::new(file).map_err(header_err)?;
                let inner = Inner::PcapNg {
                    reader: Box::new(reader),
                    ng: Vec::new(),
                    section_base: 0,
                    last_ts: 0,
                };
                (inner, Vec::new())
            }
            _ => {
                return Err(CaptureError::NotACapture {
                    path: path.to_owned(),
                })
            }
        };
        Ok(Self {
            path: path.to_owned(),
            inner,
            ifaces,
            frames: 0,
            done: false,
        })
    }

    /// The interfaces seen so far (pcapng interfaces appear as their blocks are read); every
    /// frame's `iface` indexes this list.
    pub fn interfaces(&self) -> &[IfaceInfo] {
        &self.ifaces
    }

    /// Frames returned so far.
    pub fn frames_read(&self) -> u64 {
        self.frames
    }

    /// The next frame; after an error, `None` for ever (the frames before it stay valid).
    pub fn next_frame(&mut self) -> Option<Result<Frame, CaptureError>> {
        let mut frame = Frame::empty();
        self.next_frame_into(&mut frame).map(|r| r.map(|()| frame))
    }

    /// [`Self::next_frame`] into `frame`, whose buffer is reused: a replay reads every
    /// packet into one allocation instead of one per packet.
    pub fn next_frame_into(&mut self, frame: &mut Frame) -> Option<Result<(), CaptureError>> {
        if self.done {
            return None;
        }
        let r = match &mut self.inner {
            Inner::Pcap {
                reader,
                nanos,
                link,
                dlt,
            } => next_pcap(reader, *nanos, *link, *dlt, frame),
            Inner::PcapNg {
                reader,
                ng,
                section_base,
                last_ts,
            } => next_pcapng(reader, ng, &mut self.ifaces, section_base, last_ts, frame),
        };
        match r {
            Ok(true) => {
                self.frames += 1;
                Some(Ok(()))
            }
            Ok(false) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(self.error(e)))
            }
        }
    }

    fn error(&self, e: ReadError) -> CaptureError {
        let path = self.path.clone();
        let frames = self.frames;
        match e {
            ReadError::Pcap(PcapError::IoError(e)) if e.kind() == ErrorKind::UnexpectedEof => {
                CaptureError::Truncated { path, frames }
            }
            ReadError::Pcap(PcapError::IoError(source)) => CaptureError::Io { path, source },
            ReadError::Pcap(e) => CaptureError::Corrupt {
                path,
                frames,
                reason: e.to_string(),
            },
            ReadError::Link(dlt) => CaptureError::UnsupportedLink { path, dlt },
            ReadError::Other(reason) => CaptureError::Corrupt {
                path,
                frames,
                reason,
            },
        }
    }
}

impl Iterator for PcapSource {
    type Item = Result<Frame, CaptureError>;
    fn next(&mut self) -> Option<Self::Item> {
        self.next_frame()
    }
}

enum ReadError {
    Pcap(PcapError),
    Link(u32),
    Other(String),
}

impl From<PcapError> for ReadError {
    fn from(e: PcapError) -> Self {
        ReadError::Pcap(e)
    }
}

fn next_pcap(
    reader: &mut PcapReader<File>,
    nanos: bool,
    link: Option<LinkType>,
    dlt: u32,
    frame: &mut Frame,
) -> Result<bool, ReadError> {
    let Some(raw) = reader.next_raw_packet() else {
        return Ok(false);
    };
    let raw = raw?;
    let link = link.ok_or(ReadError::Link(dlt))?;
    let frac_ns = if nanos {
        u64::from(raw.ts_frac)
    } else {
        u64::from(raw.ts_frac) * 1_000
    };
    frame.data.clear();
    frame.data.extend_from_slice(&raw.data);
    frame.ts = u64::from(raw.ts_sec) * 1_000_000_000 + frac_ns;
    frame.iface = 0;
    frame.dir = Direction::Unknown;
    frame.link = link;
    // Some writers leave orig_len below incl_len; the bytes present are the truth.
    frame.orig_len = raw.orig_len.max(frame.data.len() as u32);
    frame.suppressed = false;
    Ok(true)
}

fn iface_of(idb: &InterfaceDescriptionBlock<'_>) -> Result<(IfaceInfo, NgIface), ReadError> {
    let dlt = u32::from(idb.linktype);
    let mut name = None;
    let mut resol = 6u8;
    let mut offset_s = 0u64;
    for opt in &idb.options {
        match opt {
            InterfaceDescriptionOption::IfName(n) => name = Some(n.to_string()),
            InterfaceDescriptionOption::IfTsResol(r) => resol = *r,
            InterfaceDescriptionOption::IfTsOffset(s) => offset_s = *s,
            _ => {}
        }
    }
    let units = units_per_sec(resol)
        .filter(|u| *u > 0)
        .ok_or_else(|| ReadError::Other(format!("if_tsresol {resol:#x} out of range")))?;
    let info = IfaceInfo {
        name,
        dlt,
        link: link_of(dlt),
        snaplen: idb.snaplen,
    };
    let ng = NgIface {
        units_per_sec: units,
        offset_ns: offset_s.saturating_mul(1_000_000_000),
    };
    Ok((info, ng))
}

fn to_ns(ticks: u64, iface: &NgIface) -> Ts {
    let ns = u128::from(ticks) * 1_000_000_000 / iface.units_per_sec;
    u64::try_from(ns)
        .unwrap_or(u64::MAX)
        .saturating_add(iface.offset_ns)
}

fn next_pcapng(
    reader: &mut PcapNgReader<File>,
    ng: &mut Vec<NgIface>,
    ifaces: &mut Vec<IfaceInfo>,
    section_base: &mut usize,
    last_ts: &mut Ts,
    frame: &mut Frame,
) -> Result<bool, ReadError> {
    loop {
        let Some(block) = reader.next_block() else {
            return Ok(false);
        };
        let data = &mut frame.data;
        // (interface index in this section, raw ticks or None for SPB, orig_len, dir); the
        // bytes go to `data`.
        let (local, ticks, orig_len, dir) = match block? {
            Block::SectionHeader(_) => {
                *section_base = ifaces.len();
                continue;
            }
            Block::InterfaceDescription(idb) => {
                let (info, n) = iface_of(&idb)?;
                ifaces.push(info);
                ng.push(n);
                continue;
            }
            Block::EnhancedPacket(epb) => {
                let mut dir = Direction::Unknown;
                for opt in &epb.options {
                    if let EnhancedPacketOption::Flags(f) = opt {
                        dir = match f & 0b11 {
                            1 => Direction::In,
                            2 => Direction::Out,
                            _ => Direction::Unknown,
                        };
                    }
                }
                // pcap-file stores the raw tick count in a Duration's nanoseconds.
                let ticks = u64::try_from(epb.timestamp.as_nanos()).unwrap_or(u64::MAX);
                let (id, orig) = (epb.interface_id as usize, epb.original_len);
                data.clear();
                data.extend_from_slice(&epb.data);
                (id, Some(ticks), orig, dir)
            }
            Block::Packet(pb) => {
                let (id, orig) = (usize::from(pb.interface_id), pb.original_len);
                data.clear();
                data.extend_from_slice(&pb.data);
                (id, Some(pb.timestamp), orig, Direction::Unknown)
            }
            Block::SimplePacket(spb) => {
                let snap = ifaces
                    .get(*section_base)
                    .map(|i| i.snaplen)
                    .filter(|s| *s > 0)
                    .unwrap_or(u32::MAX);
                // The block body is padded to 4 bytes; the packet is original_len cut to snaplen.
                let keep = (spb.original_len.min(snap) as usize).min(spb.data.len());
                data.clear();
                data.extend_from_slice(&spb.data[..keep]);
                (0, None, spb.original_len, Direction::Unknown)
            }
            _ => continue,
        };
        let idx = *section_base + local;
        let (Some(info), Some(n)) = (ifaces.get(idx), ng.get(idx)) else {
            return Err(ReadError::Other(format!(
                "packet on interface {local} which no block describes"
            )));
        };
        let link = info.link.ok_or(ReadError::Link(info.dlt))?;
        let ts = match ticks {
            Some(t) => to_ns(t, n),
            None => *last_ts,
        };
        *last_ts = ts;
        frame.ts = ts;
        frame.iface = u32::try_from(idx).unwrap_or(u32::MAX);
        frame.dir = dir;
        frame.link = link;
        frame.orig_len = orig_len.max(frame.data.len() as u32);
        frame.suppressed = false;
        return Ok(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// The third-party captures (read in place, never copied into the repository).
    fn corpus() -> PathBuf {
        let candidates = [
            std::env::var_os("MAIL_TRACE_CORPUS").map(PathBuf::from),
            Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus/pcaps")),
        ];
        candidates
            .into_iter()
            .flatten()
            .find(|p| p.join("MANIFEST.md").is_file())
            .expect("corpus not found: set MAIL_TRACE_CORPUS to the shared corpus/pcaps directory")
    }

    fn read_all(path: &Path) -> (Vec<Frame>, Option<CaptureError>) {
        let mut src = PcapSource::open(path).unwrap();
        let mut frames = Vec::new();
        let mut err = None;
        for r in &mut src {
            match r {
                Ok(f) => frames.push(f),
                Err(e) => {
                    assert!(err.is_none(), "two errors");
                    err = Some(e);
                }
            }
        }
        (frames, err)
    }

    fn captures(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                captures(&p, out);
            } else if p.extension().is_some_and(|x| x == "pcap" || x == "pcapng") {
                out.push(p);
            }
        }
    }

    /// "Number of packets:   N" from tshark's capinfos section beside each capture.
    fn tshark_count(capture: &Path) -> u64 {
        let mut txt = capture.as_os_str().to_owned();
        txt.push(".tshark.txt");
        let text = std::fs::read_to_string(&txt).unwrap();
        let line = text
            .lines()
            .find(|l| l.starts_with("Number of packets:"))
            .unwrap();
        line.split_whitespace().last().unwrap().parse().unwrap()
    }

    #[test]
    fn every_corpus_capture_yields_tshark_packet_count() {
        let mut files = Vec::new();
        captures(&corpus(), &mut files);
        assert_eq!(files.len(), 59, "MANIFEST.md lists 59 captures");
        for f in files {
            let (frames, err) = read_all(&f);
            assert!(err.is_none(), "{}: {:?}", f.display(), err);
            assert_eq!(frames.len() as u64, tshark_count(&f), "{}", f.display());
            // Every frame of these captures is well-formed down to TCP (GSO frames included).
            let tcp = frames
                .iter()
                .map(|fr| crate::wire::decode(fr))
                .collect::<Result<Vec<_>, _>>()
                .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            assert!(tcp.iter().any(|s| s.is_some()), "{}", f.display());
        }
    }

    #[test]
    fn reused_frame_reads_the_same_frames_as_fresh_ones() {
        let mut files = Vec::new();
        captures(&corpus(), &mut files);
        for f in files {
            let (want, _) = read_all(&f);
            let mut src = PcapSource::open(&f).unwrap();
            let mut frame = Frame::empty();
            let mut got = Vec::new();
            while let Some(Ok(())) = src.next_frame_into(&mut frame) {
                got.push(frame.clone());
            }
            assert_eq!(got, want, "{}", f.display());
        }
    }

    #[test]
    fn corpus_counts_and_link_types() {
        let c = corpus();
        let cases: [(&str, usize, LinkType); 5] = [
            ("ndpi/pcap/imaps.pcap", 28, LinkType::Ethernet),
            ("ndpi/pcap/smtps.pcapng", 4, LinkType::Ethernet),
            (
                "suricata-verify/tests/smtp-pipelining/input.pcap",
                18,
                LinkType::Null,
            ),
            ("arkime/tests/pcap/smtp-html.pcap", 1, LinkType::Null),
            (
                "zeek/traces/smtp/smtp-many-addresses.pcap",
                2508,
                LinkType::Ethernet,
            ),
        ];
        for (rel, n, link) in cases {
            let (frames, err) = read_all(&c.join(rel));
            assert!(err.is_none(), "{rel}");
            assert_eq!(frames.len(), n, "{rel}");
            assert!(frames.iter().all(|f| f.link == link), "{rel}");
        }
    }

    #[test]
    fn pcapng_timestamps_match_tshark() {
        // tshark: first packet 2020-05-30 16:55:44.659641 UTC (capinfos prints UTC here).
        let (frames, _) = read_all(&corpus().join("ndpi/pcap/imaps.pcap"));
        assert_eq!(
            crate::time::rfc3339_micros(frames[0].ts),
            "2020-05-30T16:55:44.659641Z"
        );
        let src = PcapSource::open(&corpus().join("ndpi/pcap/imaps.pcap")).unwrap();
        assert_eq!(src.interfaces().len(), 0, "IDBs appear as they are read");
    }

    #[test]
    fn pcap_frames_decode_to_tcp() {
        let (frames, _) =
            read_all(&corpus().join("suricata-verify/tests/smtp-pipelining/input.pcap"));
        let seg = crate::wire::decode(&frames[0]).unwrap().unwrap();
        assert!(seg.flags.syn && !seg.flags.ack);
        assert_eq!(seg.dst.port(), 25);
    }

    fn temp(name: &str, bytes: &[u8]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("mail-trace-pcap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        std::fs::File::create(&p).unwrap().write_all(bytes).unwrap();
        p
    }

    #[test]
    fn truncated_file_yields_frames_then_one_error() {
        let whole =
            std::fs::read(corpus().join("suricata-verify/tests/smtp-quit/input.pcap")).unwrap();
        let p = temp("cut.pcap", &whole[..whole.len() - 10]);
        let (frames, err) = read_all(&p);
        assert_eq!(frames.len(), 6);
        let err = err.unwrap();
        assert_eq!(
            err.to_string(),
            format!("{}: truncated after 6 frames", p.display())
        );

        let ng = std::fs::read(corpus().join("ndpi/pcap/smtps.pcapng")).unwrap();
        let p = temp("cut.pcapng", &ng[..ng.len() - 3]);
        let (frames, err) = read_all(&p);
        assert_eq!(frames.len(), 3);
        assert!(matches!(
            err,
            Some(CaptureError::Truncated { frames: 3, .. })
        ));
    }

    #[test]
    fn not_a_capture_and_unsupported_link() {
        let p = temp("mail.txt", b"From: someone\r\n\r\nhello\r\n");
        let e = PcapSource::open(&p).err().unwrap();
        assert_eq!(
            e.to_string(),
            format!("{}: not a pcap or pcapng file", p.display())
        );
        let p = temp("empty", b"");
        assert!(matches!(
            PcapSource::open(&p),
            Err(CaptureError::NotACapture { .. })
        ));

        // A pcap header with LINKTYPE 147 (user-defined).
        let mut h = vec![0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        h.extend_from_slice(&65535u32.to_le_bytes());
        h.extend_from_slice(&147u32.to_le_bytes());
        let p = temp("dlt147.pcap", &h);
        let e = PcapSource::open(&p).err().unwrap();
        assert_eq!(
            e.to_string(),
            format!("{}: unsupported link type 147", p.display())
        );

        let missing = Path::new("/nonexistent/x.pcap");
        let e = PcapSource::open(missing).err().unwrap();
        assert!(e.to_string().starts_with("/nonexistent/x.pcap: "), "{e}");
    }

    /// A classic pcap in the given byte order and resolution, with one record cut by a snaplen.
    fn classic(big: bool, nanos: bool, dlt: u32) -> Vec<u8> {
        let w32 = |v: u32| {
            if big {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            }
        };
        let w16 = |v: u16| {
            if big {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            }
        };
        let mut out = Vec::new();
        out.extend_from_slice(&w32(if nanos { 0xa1b2_3c4d } else { 0xa1b2_c3d4 }));
        out.extend_from_slice(&w16(2));
        out.extend_from_slice(&w16(4));
        out.extend_from_slice(&[0; 8]);
        out.extend_from_slice(&w32(8)); // snaplen 8: orig_len exceeds it
        out.extend_from_slice(&w32(dlt));
        out.extend_from_slice(&w32(1_700_000_000));
        out.extend_from_slice(&w32(if nanos { 123_456_789 } else { 123_456 }));
        out.extend_from_slice(&w32(8));
        out.extend_from_slice(&w32(60));
        out.extend_from_slice(&[0x45, 0, 0, 60, 0, 0, 0, 0]);
        out
    }

    #[test]
    fn classic_byte_orders_resolutions_and_snaplen() {
        for (big, nanos, frac) in [
            (false, false, 123_456_000),
            (true, false, 123_456_000),
            (false, true, 123_456_789),
            (true, true, 123_456_789),
        ] {
            let p = temp(&format!("c-{big}-{nanos}.pcap"), &classic(big, nanos, 101));
            let (frames, err) = read_all(&p);
            assert!(err.is_none(), "{err:?}");
            assert_eq!(frames.len(), 1);
            let f = &frames[0];
            assert_eq!(f.ts, 1_700_000_000_000_000_000 + frac);
            assert_eq!((f.orig_len, f.data.len()), (60, 8));
            assert_eq!(f.link, LinkType::RawIp);
        }
        for (dlt, link) in [
            (0, LinkType::Null),
            (1, LinkType::Ethernet),
            (12, LinkType::RawIp),
            (14, LinkType::RawIp),
            (228, LinkType::RawIp),
            (229, LinkType::RawIp),
            (108, LinkType::Loop),
            (113, LinkType::LinuxSll),
            (276, LinkType::LinuxSll2),
        ] {
            let p = temp(&format!("dlt{dlt}.pcap"), &classic(false, false, dlt));
            let src = PcapSource::open(&p).unwrap();
            assert_eq!(src.interfaces()[0].link, Some(link));
            assert_eq!(src.interfaces()[0].dlt, dlt);
        }
    }

    /// pcapng writer for tests: little endian, with the blocks built by hand so that the
    /// options (if_tsresol, flags) are exactly what the test says.
    fn block(ty: u32, body: &[u8]) -> Vec<u8> {
        let mut b = body.to_vec();
        while !b.len().is_multiple_of(4) {
            b.push(0);
        }
        let len = (b.len() + 12) as u32;
        let mut out = ty.to_le_bytes().to_vec();
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&b);
        out.extend_from_slice(&len.to_le_bytes());
        out
    }

    fn opt(code: u16, val: &[u8]) -> Vec<u8> {
        let mut o = code.to_le_bytes().to_vec();
        o.extend_from_slice(&(val.len() as u16).to_le_bytes());
        o.extend_from_slice(val);
        while !o.len().is_multiple_of(4) {
            o.push(0);
        }
        o
    }

    fn shb() -> Vec<u8> {
        let mut body = 0x1a2b_3c4du32.to_le_bytes().to_vec();
        body.extend_from_slice(&[1, 0, 0, 0]);
        body.extend_from_slice(&u64::MAX.to_le_bytes());
        block(0x0a0d_0d0a, &body)
    }

    fn idb(dlt: u16, name: &str, tsresol: Option<u8>) -> Vec<u8> {
        let mut body = dlt.to_le_bytes().to_vec();
        body.extend_from_slice(&[0, 0]);
        body.extend_from_slice(&0u32.to_le_bytes());
        body.extend(opt(2, name.as_bytes()));
        if let Some(r) = tsresol {
            body.extend(opt(9, &[r]));
        }
        body.extend(opt(0, &[]));
        block(1, &body)
    }

    fn epb(iface: u32, ticks: u64, data: &[u8], flags: Option<u32>) -> Vec<u8> {
        let mut body = iface.to_le_bytes().to_vec();
        body.extend_from_slice(&((ticks >> 32) as u32).to_le_bytes());
        body.extend_from_slice(&(ticks as u32).to_le_bytes());
        body.extend_from_slice(&(data.len() as u32).to_le_bytes());
        body.extend_from_slice(&(data.len() as u32 + 5).to_le_bytes());
        body.extend_from_slice(data);
        while !body.len().is_multiple_of(4) {
            body.push(0);
        }
        if let Some(f) = flags {
            body.extend(opt(2, &f.to_le_bytes()));
            body.extend(opt(0, &[]));
        }
        block(6, &body)
    }

    #[test]
    fn pcapng_interfaces_resolutions_and_direction() {
        let mut f = shb();
        f.extend(idb(1, "eth0", None)); // µs
        f.extend(idb(113, "any", Some(9))); // ns
        f.extend(idb(101, "tun0", Some(0x80 | 10))); // 1/1024 s
        f.extend(epb(0, 1_700_000_000_123_456, b"eth", Some(1)));
        f.extend(epb(1, 1_700_000_000_123_456_789, b"sll", Some(2)));
        f.extend(epb(2, 1024 * 10 + 512, b"raw", None));
        // A second section restarts interface numbering.
        f.extend(shb());
        f.extend(idb(0, "lo0", None));
        f.extend(epb(0, 5, b"null", Some(3)));
        f.extend(block(3, &[4, 0, 0, 0, b's', b'p', b'b', b'!'])); // SPB, orig_len 4
        let p = temp("multi.pcapng", &f);
        let (frames, err) = read_all(&p);
        assert!(err.is_none(), "{err:?}");
        let got: Vec<_> = frames
            .iter()
            .map(|f| (f.iface, f.link, f.ts, f.dir, f.data.as_slice(), f.orig_len))
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    0,
                    LinkType::Ethernet,
                    1_700_000_000_123_456_000,
                    Direction::In,
                    &b"eth"[..],
                    8
                ),
                (
                    1,
                    LinkType::LinuxSll,
                    1_700_000_000_123_456_789,
                    Direction::Out,
                    &b"sll"[..],
                    8
                ),
                (
                    2,
                    LinkType::RawIp,
                    10_500_000_000,
                    Direction::Unknown,
                    &b"raw"[..],
                    8
                ),
                (
                    3,
                    LinkType::Null,
                    5_000,
                    Direction::Unknown,
                    &b"null"[..],
                    9
                ),
                (
                    3,
                    LinkType::Null,
                    5_000,
                    Direction::Unknown,
                    &b"spb!"[..],
                    4
                ),
            ]
        );
        let mut src = PcapSource::open(&p).unwrap();
        while src.next_frame().is_some() {}
        let names: Vec<_> = src
            .interfaces()
            .iter()
            .map(|i| (i.name.as_deref(), i.dlt))
            .collect();
        assert_eq!(
            names,
            vec![
                (Some("eth0"), 1),
                (Some("any"), 113),
                (Some("tun0"), 101),
                (Some("lo0"), 0)
            ]
        );
    }

    #[test]
    fn pcapng_unsupported_interface_errors_only_when_used() {
        let mut f = shb();
        f.extend(idb(147, "usb", None));
        f.extend(idb(1, "eth0", None));
        f.extend(epb(1, 1, b"ok", None));
        f.extend(epb(0, 2, b"usb", None));
        let p = temp("dlt147.pcapng", &f);
        let (frames, err) = read_all(&p);
        assert_eq!(frames.len(), 1);
        assert_eq!(
            err.unwrap().to_string(),
            format!("{}: unsupported link type 147", p.display())
        );
    }

    #[test]
    fn damaged_files_never_panic() {
        let c = corpus();
        for rel in ["ndpi/pcap/smtps.pcapng", "arkime/tests/pcap/imap-tag.pcap"] {
            let whole = std::fs::read(c.join(rel)).unwrap();
            for cut in (0..whole.len()).step_by(7) {
                let p = temp("prefix", &whole[..cut]);
                if let Ok(mut src) = PcapSource::open(&p) {
                    while src.next_frame().is_some() {}
                }
            }
            for i in (0..whole.len().min(400)).step_by(3) {
                let mut bad = whole.clone();
                bad[i] ^= 0xa5;
                let p = temp("flipped", &bad);
                if let Ok(mut src) = PcapSource::open(&p) {
                    while src.next_frame().is_some() {}
                }
            }
        }
    }
}
