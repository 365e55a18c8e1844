//! Live capture: loads the embedded eBPF programs, writes their configuration,
//! attaches them to the requested interfaces and turns ring-buffer records back
//! into whole [`Frame`]s.
//!
//! Attachment uses TCX links (Linux ≥ 6.6), which vanish with the process. On
//! older kernels it falls back to netlink clsact filters, which survive a
//! `kill -9`; those are named after our programs and carry the owner's PID as
//! their handle, so a later run removes the ones a dead mail-trace left behind
//! and never those of one still running.
use std::{fmt, io, net::IpAddr, str::FromStr, time::Duration};

use aya::{
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, MapData, PerCpuArray, RingBuf},
    programs::{
        tc::{self, NlOptions, TcAttachOptions},
        LinkOrder, SchedClassifier, TcAttachType, Xdp, XdpMode,
    },
    Ebpf, EbpfLoader,
};
use mail_trace_common::{
    names, Config, Counters, PacketHeader, PortBits, CFG_ANY_IFACE_FLAGS, CFG_HOST_FILTER,
    CFG_TLS_SUPPRESS, CHUNK_LEN, FLAG_EGRESS, FLAG_INGRESS, FLAG_L3, FLAG_SUPPRESSED, IFACE_L3,
    MAX_HOSTS, MAX_IFACES, MAX_PACKET_LEN, PORT_IMPLICIT_TLS, PORT_MAIL, PORT_WORDS,
};
use tokio::io::unix::AsyncFd;

use super::kernel::{Features, Module, Variant};
use super::{Direction, Frame, LinkType};

/// The objects built by `build.rs`; empty when built with `MAIL_TRACE_SKIP_EBPF=1`. The
/// compat one is for kernels without bpf_loop (see `kernel::Variant`).
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/mail-trace"));
static EBPF_COMPAT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/mail-trace-compat"));

/// Ports whose sessions are TLS from the first byte: submissions, POP3S, IMAPS.
const IMPLICIT_TLS_PORTS: [u16; 3] = [465, 995, 993];

/// Default ring buffer size (`--ring-size`).
pub const DEFAULT_RING_SIZE: u32 = 16 * 1024 * 1024;
/// How long a record may wait unread: the kernel side wakes us only for backlogs.
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// Packets being joined at once; a lost chunk must not pin memory forever.
const MAX_PENDING: usize = 256;

/// Everything that can stop live capture from starting or running.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("this mail-trace was built without its eBPF programs (MAIL_TRACE_SKIP_EBPF)")]
    NotBuilt,
    #[error("interface {0} does not exist")]
    NoSuchInterface(String),
    #[error("too many interfaces: {0} (at most {MAX_IFACES})")]
    TooManyInterfaces(usize),
    #[error("too many --host filters: {0} (at most {MAX_HOSTS})")]
    TooManyHosts(usize),
    #[error("--ring-size {0}: must be a power of two, at least 4096 bytes")]
    BadRingSize(u32),
    #[error("permission denied loading eBPF programs: run as root (CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON)")]
    Permission,
    /// What the kernel lacks, from `kernel::Features::missing`.
    #[error("{0}")]
    Kernel(String),
    #[error("this kernel has no BPF ring buffer (Linux >= 5.8 required): {0}")]
    NoRingBuf(String),
    #[error("loading the eBPF programs: {0}")]
    Load(String),
    #[error("attaching to {iface}: {reason}")]
    Attach { iface: String, reason: String },
    #[error("reading the ring buffer: {0}")]
    Io(#[from] io::Error),
}

/// A `--host` value: an address and prefix, host bits zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| format!("bad CIDR {s:?}: {why}");
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a.parse().map_err(|_| bad("not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max && !p.starts_with('+') => n,
                _ => return Err(bad(&format!("prefix must be 0..={max}"))),
            },
        };
        let bits = match addr {
            IpAddr::V4(v) => u128::from(u32::from(v)) << 96,
            IpAddr::V6(v) => u128::from(v),
        };
        let host_mask = u128::MAX.checked_shr(u32::from(prefix)).unwrap_or(0);
        if bits & host_mask != 0 {
            return Err(bad("host bits set"));
        }
        Ok(Cidr { addr, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// One item of the ring: a packet, or TLS plaintext from the uprobes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Captured {
    Frame(Frame),
    Plaintext(super::uprobe::Plaintext),
}

/// What to capture and where.
#[derive(Clone, Debug)]
pub struct LiveConfig {
    pub ifaces: Vec<String>,
    pub ports: Vec<u16>,
    pub hosts: Vec<Cidr>,
    /// 0 = whole packets (up to 64 KiB).
    pub snaplen: u32,
    pub ring_size: u32,
    /// XDP on ingress instead of TC (TC still covers egress).
    pub xdp: bool,
    /// Use netlink clsact filters even where TCX exists (tests the old-kernel path).
    pub force_netlink: bool,
    /// Copy encrypted payload too (no in-kernel TLS suppression).
    pub full_payload: bool,
}

/// An interface we attached to, in `-i` order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Iface {
    pub name: String,
    pub ifindex: u32,
    pub link: LinkType,
}

/// A running live capture. Dropping it detaches every program.
pub struct EbpfCapture {
    ring: AsyncFd<RingBuf<MapData>>,
    ifaces: Vec<Iface>,
    joiner: Joiner,
    /// CLOCK_REALTIME − CLOCK_MONOTONIC at start, to turn kernel times into epoch times.
    epoch_offset: i128,
    ready: std::collections::VecDeque<Captured>,
    kernel: Features,
    // Owns the programs and their links: dropped last, which detaches them.
    ebpf: Ebpf,
}

impl EbpfCapture {
    /// Loads, configures and attaches. Must run inside a tokio runtime.
    pub fn open(cfg: &LiveConfig) -> Result<Self, CaptureError> {
        if EBPF_OBJECT.is_empty() {
            return Err(CaptureError::NotBuilt);
        }
        if cfg.ifaces.len() > MAX_IFACES as usize {
            return Err(CaptureError::TooManyInterfaces(cfg.ifaces.len()));
        }
        if cfg.hosts.len() > MAX_HOSTS as usize {
            return Err(CaptureError::TooManyHosts(cfg.hosts.len()));
        }
        if !cfg.ring_size.is_power_of_two() || cfg.ring_size < 4096 {
            return Err(CaptureError::BadRingSize(cfg.ring_size));
        }
        let ifaces = cfg
            .ifaces
            .iter()
            .map(|n| lookup_iface(n))
            .collect::<Result<Vec<_>, _>>()?;
        let kernel = Features::probe();
        if let Some(lacks) = kernel.missing() {
            return Err(CaptureError::Kernel(lacks));
        }
        // Before anything is loaded: the XDP program cannot work without bpf_xdp_load_bytes.
        if cfg.xdp {
            if let Some(refusal) = kernel.xdp_refusal() {
                return Err(CaptureError::Kernel(refusal));
            }
        }
        let object = match kernel.variant() {
            Variant::Main => EBPF_OBJECT,
            Variant::Compat => EBPF_COMPAT,
        };
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(names::EVENTS, cfg.ring_size)
            .load(object)
            .map_err(|e| classify_load(&e))?;
        configure(&mut ebpf, cfg, &ifaces).map_err(|e| CaptureError::Load(e.to_string()))?;
        attach(&mut ebpf, cfg, &ifaces, &kernel)?;
        let events = ebpf
            .take_map(names::EVENTS)
            .ok_or_else(|| CaptureError::Load("no EVENTS map in the object".into()))?;
        let ring = RingBuf::try_from(events).map_err(|e| CaptureError::Load(chain(&e)))?;
        // SAFETY: the RingBuf owns its map fd; it stays open and the same for as
        // long as the AsyncFd owns the RingBuf.
        let ring =
            unsafe { AsyncFd::register(ring) }.map_err(|e| CaptureError::Io(e.into_parts().1))?;
        Ok(EbpfCapture {
            ring,
            ifaces,
            joiner: Joiner::default(),
            epoch_offset: epoch_offset(),
            ready: Default::default(),
            kernel,
            ebpf,
        })
    }

    /// What the kernel offered at start-up, and so which object and fallbacks are in use.
    pub fn kernel(&self) -> &Features {
        &self.kernel
    }

    pub fn interfaces(&self) -> &[Iface] {
        &self.ifaces
    }

    /// The next whole packet (TLS plaintext records are skipped). Cancel-safe.
    pub async fn next_frame(&mut self) -> Result<Frame, CaptureError> {
        loop {
            if let Captured::Frame(f) = self.next().await? {
                return Ok(f);
            }
        }
    }

    /// The next packet or TLS plaintext chunk, in ring order. Cancel-safe:
    /// items are queued before returning.
    pub async fn next(&mut self) -> Result<Captured, CaptureError> {
        loop {
            if let Some(f) = self.ready.pop_front() {
                return Ok(f);
            }
            // Woken by the kernel only for a backlog; otherwise poll on the timer.
            if let Ok(guard) = tokio::time::timeout(POLL_INTERVAL, self.ring.readable_mut()).await {
                guard?.clear_ready();
            }
            self.drain();
        }
    }

    /// The next item the last ring read already queued, without waiting or reading the
    /// ring again: lets the caller handle a whole batch per wake-up.
    pub fn next_ready(&mut self) -> Option<Captured> {
        self.ready.pop_front()
    }

    /// Everything already in the ring, without waiting: called at shutdown so the
    /// records written since the last wake-up are not thrown away with the ring.
    pub fn take_pending(&mut self) -> Vec<Frame> {
        self.take_pending_all()
            .into_iter()
            .filter_map(|c| match c {
                Captured::Frame(f) => Some(f),
                Captured::Plaintext(_) => None,
            })
            .collect()
    }

    /// Like [`Self::take_pending`], with the TLS plaintext chunks, in ring order.
    pub fn take_pending_all(&mut self) -> Vec<Captured> {
        self.drain();
        self.ready.drain(..).collect()
    }

    fn drain(&mut self) {
        let ring = self.ring.get_mut();
        while let Some(item) = ring.next() {
            if super::uprobe::is_plaintext(&item) {
                if let Some(p) = super::uprobe::decode(&item, self.epoch_offset) {
                    self.ready.push_back(Captured::Plaintext(p));
                }
                continue;
            }
            if let Some((hdr, data)) = self.joiner.push(&item) {
                if let Some(frame) = to_frame(&self.ifaces, self.epoch_offset, &hdr, data) {
                    self.ready.push_back(Captured::Frame(frame));
                }
            }
        }
    }

    /// Kernel counters summed over CPUs.
    pub fn counters(&self) -> Result<Counters, CaptureError> {
        let map = self
            .ebpf
            .map(names::COUNTERS)
            .ok_or_else(|| CaptureError::Load("no COUNTERS map".into()))?;
        let arr: PerCpuArray<_, Counters> =
            PerCpuArray::try_from(map).map_err(|e| CaptureError::Load(chain(&e)))?;
        let mut sum = Counters::default();
        for c in arr
            .get(&0, 0)
            .map_err(|e| CaptureError::Load(chain(&e)))?
            .iter()
        {
            sum.add(c);
        }
        Ok(sum)
    }

    /// The loaded object, for attaching more programs (the TLS uprobes).
    pub(super) fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    pub(super) fn ebpf(&self) -> &Ebpf {
        &self.ebpf
    }

    /// Packets dropped in userspace because a chunk never arrived or a record was malformed.
    pub fn incomplete(&self) -> u64 {
        self.joiner.incomplete + self.joiner.malformed
    }
}

fn lookup_iface(name: &str) -> Result<Iface, CaptureError> {
    let missing = || CaptureError::NoSuchInterface(name.to_owned());
    let c = std::ffi::CString::new(name).map_err(|_| missing())?;
    // SAFETY: c is a valid NUL-terminated string.
    let ifindex = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if ifindex == 0 || name.contains('/') {
        return Err(missing());
    }
    // ARPHRD_ETHER (1) and loopback (772) carry an Ethernet header; tun, wireguard
    // and the like (ARPHRD_NONE, 65534) start at IP.
    let ty = std::fs::read_to_string(format!("/sys/class/net/{name}/type")).unwrap_or_default();
    let link = match ty.trim() {
        "1" | "772" | "" => LinkType::Ethernet,
        _ => LinkType::RawIp,
    };
    Ok(Iface {
        name: name.to_owned(),
        ifindex,
        link,
    })
}

fn classify_load(e: &aya::EbpfError) -> CaptureError {
    if let Some(errno) = os_error(e) {
        if errno == libc::EPERM {
            return CaptureError::Permission;
        }
    }
    let text = chain(e);
    if text.contains(names::EVENTS) {
        return CaptureError::NoRingBuf(text);
    }
    CaptureError::Load(text)
}

pub(super) fn os_error(e: &(dyn std::error::Error + 'static)) -> Option<i32> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<io::Error>() {
            if let Some(n) = io.raw_os_error() {
                return Some(n);
            }
        }
        cur = err.source();
    }
    None
}

/// An error and its sources on one line.
pub(super) fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(err) = cur {
        s.push_str(": ");
        s.push_str(&err.to_string());
        cur = err.source();
    }
    s
}

fn map<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut aya::maps::Map, String> {
    ebpf.map_mut(name).ok_or(format!("no {name} map"))
}

fn configure(ebpf: &mut Ebpf, cfg: &LiveConfig, ifaces: &[Iface]) -> Result<(), String> {
    let mut ports: Array<_, u8> =
        Array::try_from(map(ebpf, names::PORTS)?).map_err(|e| chain(&e))?;
    for &p in &cfg.ports {
        let tls = if IMPLICIT_TLS_PORTS.contains(&p) {
            PORT_IMPLICIT_TLS
        } else {
            0
        };
        ports
            .set(u32::from(p), PORT_MAIL | tls, 0)
            .map_err(|e| chain(&e))?;
    }
    let mut bits: PortBits = [0; PORT_WORDS];
    for &p in &cfg.ports {
        bits[usize::from(p) / 64] |= 1 << (p % 64);
    }
    let mut mail_ports: Array<_, PortBits> =
        Array::try_from(map(ebpf, names::MAIL_PORTS)?).map_err(|e| chain(&e))?;
    mail_ports.set(0, bits, 0).map_err(|e| chain(&e))?;
    let mut v4: LpmTrie<_, [u8; 4], u8> =
        LpmTrie::try_from(map(ebpf, names::HOSTS4)?).map_err(|e| chain(&e))?;
    for h in &cfg.hosts {
        if let IpAddr::V4(a) = h.addr {
            v4.insert(&Key::new(u32::from(h.prefix), a.octets()), 1, 0)
                .map_err(|e| chain(&e))?;
        }
    }
    let mut v6: LpmTrie<_, [u8; 16], u8> =
        LpmTrie::try_from(map(ebpf, names::HOSTS6)?).map_err(|e| chain(&e))?;
    for h in &cfg.hosts {
        if let IpAddr::V6(a) = h.addr {
            v6.insert(&Key::new(u32::from(h.prefix), a.octets()), 1, 0)
                .map_err(|e| chain(&e))?;
        }
    }
    let mut flags: HashMap<_, u32, u32> =
        HashMap::try_from(map(ebpf, names::IFACES)?).map_err(|e| chain(&e))?;
    let mut any_iface_flags = 0;
    for i in ifaces.iter().filter(|i| i.link == LinkType::RawIp) {
        flags
            .insert(i.ifindex, IFACE_L3, 0)
            .map_err(|e| chain(&e))?;
        any_iface_flags = CFG_ANY_IFACE_FLAGS;
    }
    let mut config: Array<_, Config> =
        Array::try_from(map(ebpf, names::CONFIG)?).map_err(|e| chain(&e))?;
    let c = Config {
        snaplen: cfg.snaplen.min(MAX_PACKET_LEN as u32),
        flags: if cfg.hosts.is_empty() {
            0
        } else {
            CFG_HOST_FILTER
        } | if cfg.full_payload {
            0
        } else {
            CFG_TLS_SUPPRESS
        } | any_iface_flags,
        // Wake the reader once an eighth of the ring is waiting: well before it fills.
        wake_bytes: cfg.ring_size / 8,
        reserved: 0,
    };
    config.set(0, c, 0).map_err(|e| chain(&e))
}

fn attach(
    ebpf: &mut Ebpf,
    cfg: &LiveConfig,
    ifaces: &[Iface],
    kernel: &Features,
) -> Result<(), CaptureError> {
    let tcx = !cfg.force_netlink && kernel.tcx;
    // The netlink path needs the clsact qdisc (sch_ingress) and cls_bpf: load them now if
    // they are modules (a kernel without a usable modprobe helper fails with "Specified
    // qdisc kind is unknown" otherwise); what modprobe says is kept for the error below.
    let mut modprobe_said = None;
    if !tcx {
        let wanted: Vec<&str> = [
            ("sch_ingress", kernel.sch_ingress),
            ("cls_bpf", kernel.cls_bpf),
        ]
        .into_iter()
        .filter(|(_, m)| *m != Module::Present)
        .map(|(n, _)| n)
        .collect();
        if !wanted.is_empty() {
            modprobe_said = super::kernel::modprobe(&wanted).err();
        }
    }
    let no_modules = |e: String| {
        let said = modprobe_said
            .as_deref()
            .map(|s| format!(" (modprobe: {s})"))
            .unwrap_or_default();
        format!(
            "{e}; without TCX (Linux 6.6) the programs attach through netlink, which needs the \
             kernel modules sch_ingress and cls_bpf (CONFIG_NET_SCH_INGRESS, CONFIG_NET_CLS_BPF): \
             modprobe sch_ingress cls_bpf{said}"
        )
    };
    let load_err = |e: aya::programs::ProgramError| match os_error(&e) {
        Some(libc::EPERM) => CaptureError::Permission,
        _ => CaptureError::Load(chain(&e)),
    };
    let mut tc_progs = vec![(names::TC_EGRESS, TcAttachType::Egress)];
    if !cfg.xdp {
        tc_progs.push((names::TC_INGRESS, TcAttachType::Ingress));
    }
    for (name, kind) in tc_progs {
        let prog: &mut SchedClassifier = ebpf
            .program_mut(name)
            .ok_or_else(|| CaptureError::Load(format!("no program {name}")))?
            .try_into()
            .map_err(load_err)?;
        prog.load().map_err(load_err)?;
        for i in ifaces {
            let fail = |reason: String| CaptureError::Attach {
                iface: i.name.clone(),
                reason,
            };
            let opts = if tcx {
                TcAttachOptions::TcxOrder(LinkOrder::default())
            } else {
                // EEXIST: the clsact qdisc is already there, which is fine.
                if let Err(e) = tc::qdisc_add_clsact(&i.name) {
                    match os_error(&e) {
                        Some(libc::EEXIST) => {}
                        Some(libc::ENOENT | libc::EOPNOTSUPP) => {
                            return Err(fail(no_modules(chain(&e))))
                        }
                        _ => return Err(fail(chain(&e))),
                    }
                }
                remove_stale_filters(i, kind, name);
                TcAttachOptions::Netlink(NlOptions {
                    handle: std::process::id().into(),
                    ..NlOptions::default()
                })
            };
            prog.attach_with_options(&i.name, kind, opts)
                .map_err(|e| match os_error(&e) {
                    Some(libc::EPERM) => CaptureError::Permission,
                    Some(libc::ENOENT | libc::EOPNOTSUPP) if !tcx => fail(no_modules(chain(&e))),
                    _ => fail(chain(&e)),
                })?;
        }
    }
    if cfg.xdp {
        let prog: &mut Xdp = ebpf
            .program_mut(names::XDP_INGRESS)
            .ok_or_else(|| CaptureError::Load("no XDP program".into()))?
            .try_into()
            .map_err(load_err)?;
        prog.load().map_err(load_err)?;
        for i in ifaces {
            prog.attach(&i.name, XdpMode::default())
                .map_err(|e| CaptureError::Attach {
                    iface: i.name.clone(),
                    reason: chain(&e),
                })?;
        }
    }
    Ok(())
}

/// Netlink filters outlive a killed process. Ours carry the program's name and the
/// owner's PID as handle: those whose owner is gone are stale. A failure here only
/// leaves a stale filter in place (it sees the same packets as ours, harmlessly).
fn remove_stale_filters(iface: &Iface, kind: TcAttachType, name: &str) {
    use aya::programs::links::Link;
    let Ok(filters) = super::tcfilter::bpf_filters(iface.ifindex, clsact_parent(kind)) else {
        return;
    };
    for f in filters {
        if f.name == name && !owner_running(f.handle) {
            if let Ok(link) =
                tc::SchedClassifierLink::attached(&iface.name, kind, f.prio, f.handle.into(), None)
            {
                let _ = link.detach();
            }
        }
    }
}

/// The clsact hook `kind` as a netlink parent (TC_H_CLSACT with the hook's minor).
fn clsact_parent(kind: TcAttachType) -> u32 {
    match kind {
        TcAttachType::Ingress => 0xffff_fff2,
        TcAttachType::Egress => 0xffff_fff3,
        TcAttachType::Custom(parent) => parent,
    }
}

/// A mail-trace other than this one runs as `pid` (a filter with our own PID as handle
/// was left by an earlier process that had it: we have attached nothing yet).
fn owner_running(pid: u32) -> bool {
    pid != std::process::id()
        && std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .is_ok_and(|c| c.trim_end() == "mail-trace")
}

fn epoch_offset() -> i128 {
    let now = |clock| {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: ts is a valid out-pointer.
        unsafe { libc::clock_gettime(clock, &mut ts) };
        i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
    };
    now(libc::CLOCK_REALTIME) - now(libc::CLOCK_MONOTONIC)
}

fn to_frame(
    ifaces: &[Iface],
    epoch_offset: i128,
    hdr: &PacketHeader,
    data: Vec<u8>,
) -> Option<Frame> {
    // Records from an interface we did not attach to cannot happen; skip rather than guess.
    let iface = ifaces.iter().position(|i| i.ifindex == hdr.ifindex)?;
    let ts = (i128::from(hdr.ts_ns) + epoch_offset).clamp(0, i128::from(u64::MAX)) as u64;
    let dir = if hdr.flags & FLAG_INGRESS != 0 {
        Direction::In
    } else if hdr.flags & FLAG_EGRESS != 0 {
        Direction::Out
    } else {
        Direction::Unknown
    };
    let link = if hdr.flags & FLAG_L3 != 0 {
        LinkType::RawIp
    } else {
        LinkType::Ethernet
    };
    Some(Frame {
        ts,
        iface: iface as u32,
        dir,
        link,
        orig_len: hdr.orig_len,
        data,
        suppressed: hdr.flags & FLAG_SUPPRESSED != 0,
    })
}

/// Joins the records of one packet (same `packet_id`) into its bytes.
///
/// The records of a packet are reserved back to back by one CPU, so a record of a
/// new packet from the same CPU means any unfinished one from it lost a chunk
/// (ring full): that one is dropped and counted, never emitted with a hole.
#[derive(Debug, Default)]
pub struct Joiner {
    pending: Vec<Pending>,
    /// Packets dropped because a chunk was missing.
    pub incomplete: u64,
    /// Records that do not follow the ABI (short, or lengths out of bounds).
    pub malformed: u64,
}

#[derive(Debug)]
struct Pending {
    hdr: PacketHeader,
    data: Vec<u8>,
    got: u32,
}

const HDR_LEN: usize = core::mem::size_of::<PacketHeader>();

impl Joiner {
    /// Feeds one ring-buffer record; returns a packet when its last chunk arrives.
    pub fn push(&mut self, rec: &[u8]) -> Option<(PacketHeader, Vec<u8>)> {
        let Some(hdr) = parse_header(rec) else {
            self.malformed += 1;
            return None;
        };
        let chunk = &rec[HDR_LEN..HDR_LEN + hdr.chunk_len as usize];
        let cpu = hdr.packet_id >> 48;
        let before = self.pending.len();
        self.pending
            .retain(|p| p.hdr.packet_id == hdr.packet_id || p.hdr.packet_id >> 48 != cpu);
        self.incomplete += (before - self.pending.len()) as u64;
        if hdr.offset == 0 && hdr.chunk_len == hdr.cap_len {
            return Some((hdr, chunk.to_vec()));
        }
        let idx = match self
            .pending
            .iter()
            .position(|p| p.hdr.packet_id == hdr.packet_id)
        {
            Some(i) => i,
            None => {
                if self.pending.len() >= MAX_PENDING {
                    self.pending.remove(0);
                    self.incomplete += 1;
                }
                self.pending.push(Pending {
                    hdr,
                    data: vec![0; hdr.cap_len as usize],
                    got: 0,
                });
                self.pending.len() - 1
            }
        };
        let p = &mut self.pending[idx];
        if p.hdr.cap_len != hdr.cap_len {
            self.pending.remove(idx);
            self.malformed += 1;
            return None;
        }
        let start = hdr.offset as usize;
        p.data[start..start + chunk.len()].copy_from_slice(chunk);
        p.got += hdr.chunk_len;
        if p.got < p.hdr.cap_len {
            return None;
        }
        let p = self.pending.remove(idx);
        // A duplicated chunk would overshoot: the bytes cannot be trusted.
        if p.got != p.hdr.cap_len {
            self.malformed += 1;
            return None;
        }
        Some((p.hdr, p.data))
    }
}

fn parse_header(rec: &[u8]) -> Option<PacketHeader> {
    let h = rec.get(..HDR_LEN)?;
    let u32_at = |o: usize| {
        let mut a = [0u8; 4];
        a.copy_from_slice(&h[o..o + 4]);
        u32::from_ne_bytes(a)
    };
    let u64_at = |o: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&h[o..o + 8]);
        u64::from_ne_bytes(a)
    };
    let hdr = PacketHeader {
        ts_ns: u64_at(0),
        packet_id: u64_at(8),
        ifindex: u32_at(16),
        flags: u32_at(20),
        orig_len: u32_at(24),
        cap_len: u32_at(28),
        offset: u32_at(32),
        chunk_len: u32_at(36),
    };
    let ok = hdr.chunk_len as usize <= CHUNK_LEN
        && hdr.chunk_len > 0
        && hdr.cap_len as usize <= MAX_PACKET_LEN
        && hdr
            .offset
            .checked_add(hdr.chunk_len)
            .is_some_and(|end| end <= hdr.cap_len)
        && rec.len() >= HDR_LEN + hdr.chunk_len as usize;
    ok.then_some(hdr)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: u64, cap: u32, offset: u32, data: &[u8]) -> Vec<u8> {
        let h = PacketHeader {
            ts_ns: 5_000,
            packet_id: id,
            ifindex: 7,
            flags: FLAG_EGRESS,
            orig_len: cap + 10,
            cap_len: cap,
            offset,
            chunk_len: data.len() as u32,
        };
        let mut v = Vec::new();
        for x in [h.ts_ns, h.packet_id] {
            v.extend_from_slice(&x.to_ne_bytes());
        }
        for x in [
            h.ifindex,
            h.flags,
            h.orig_len,
            h.cap_len,
            h.offset,
            h.chunk_len,
        ] {
            v.extend_from_slice(&x.to_ne_bytes());
        }
        v.extend_from_slice(data);
        // Records are reserved in fixed size classes: trailing bytes are not data.
        v.extend_from_slice(&[0xee; 16]);
        v
    }

    fn pattern(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[test]
    fn single_record_packet_comes_out_whole() {
        let mut j = Joiner::default();
        let (h, d) = j.push(&rec(1, 3, 0, b"abc")).unwrap();
        assert_eq!(d, b"abc");
        assert_eq!((h.ifindex, h.orig_len, h.cap_len), (7, 13, 3));
    }

    #[test]
    fn chunks_are_joined_across_interleaved_cpus() {
        let p = pattern(5000);
        let (a, b) = (1u64 << 48 | 9, 2u64 << 48 | 9);
        let mut j = Joiner::default();
        assert_eq!(j.push(&rec(a, 5000, 0, &p[..2048])), None);
        assert_eq!(j.push(&rec(b, 3000, 0, &p[..2048])), None);
        assert_eq!(j.push(&rec(a, 5000, 2048, &p[2048..4096])), None);
        let (_, db) = j.push(&rec(b, 3000, 2048, &p[2048..3000])).unwrap();
        assert_eq!(db, &p[..3000]);
        let (h, da) = j.push(&rec(a, 5000, 4096, &p[4096..])).unwrap();
        assert_eq!(da, p);
        assert_eq!(h.packet_id, a);
        assert_eq!((j.incomplete, j.malformed), (0, 0));
    }

    #[test]
    fn a_lost_chunk_drops_the_packet_never_emits_a_hole() {
        let p = pattern(4096);
        let mut j = Joiner::default();
        assert_eq!(j.push(&rec(3 << 48 | 1, 4096, 0, &p[..2048])), None);
        // The second chunk was lost (ring full); the same CPU's next packet arrives.
        let (_, d) = j.push(&rec(3 << 48 | 2, 2, 0, b"ok")).unwrap();
        assert_eq!(d, b"ok");
        assert_eq!(j.push(&rec(3 << 48 | 3, 4096, 0, &p[..2048])), None);
        assert_eq!(j.incomplete, 1);
        // A packet whose first chunk was lost never completes either.
        assert_eq!(j.push(&rec(4 << 48 | 1, 4096, 2048, &p[2048..])), None);
        assert_eq!(
            j.push(&rec(4 << 48 | 2, 1, 0, b"x")).map(|(_, d)| d),
            Some(b"x".to_vec())
        );
        assert_eq!(j.incomplete, 2);
    }

    #[test]
    fn malformed_records_are_counted_not_trusted() {
        let mut j = Joiner::default();
        assert_eq!(j.push(&[0u8; 39]), None);
        let mut short = rec(1, 100, 0, &[1; 100]);
        short.truncate(40 + 50);
        assert_eq!(j.push(&short), None);
        assert_eq!(j.push(&rec(1, 10, 8, b"abcd")), None); // past cap_len
        assert_eq!(j.push(&rec(1, 70000, 0, &[0; 16])), None); // over 64 KiB
        assert_eq!(j.push(&rec(1, 0, 0, b"")), None); // empty chunk
        assert_eq!(j.malformed, 5);
        // A duplicated chunk would overshoot the packet length.
        let p = pattern(3000);
        assert_eq!(j.push(&rec(5 << 48, 3000, 0, &p[..2048])), None);
        assert_eq!(j.push(&rec(5 << 48, 3000, 0, &p[..2048])), None);
        assert_eq!(j.malformed, 6);
    }

    #[test]
    fn pending_packets_are_bounded() {
        let mut j = Joiner::default();
        for cpu in 0..(MAX_PENDING as u64 + 10) {
            assert_eq!(j.push(&rec(cpu << 48, 4096, 0, &[0; 2048])), None);
        }
        assert_eq!(j.pending.len(), MAX_PENDING);
        assert_eq!(j.incomplete, 10);
    }

    #[test]
    fn frames_carry_epoch_time_direction_and_attach_position() {
        let ifaces = [
            Iface {
                name: "a".into(),
                ifindex: 3,
                link: LinkType::Ethernet,
            },
            Iface {
                name: "b".into(),
                ifindex: 7,
                link: LinkType::Ethernet,
            },
        ];
        let mut j = Joiner::default();
        let (h, d) = j.push(&rec(1, 3, 0, b"abc")).unwrap();
        let f = to_frame(&ifaces, 1_000_000, &h, d).unwrap();
        assert_eq!(
            f,
            Frame {
                ts: 1_005_000,
                iface: 1,
                dir: Direction::Out,
                link: LinkType::Ethernet,
                orig_len: 13,
                data: b"abc".to_vec(),
                suppressed: false,
            }
        );
        let l3 = PacketHeader {
            flags: FLAG_INGRESS | FLAG_L3,
            ifindex: 3,
            ..h
        };
        let f = to_frame(&ifaces, -10_000, &l3, vec![]).unwrap();
        assert_eq!(
            (f.ts, f.iface, f.dir, f.link),
            (0, 0, Direction::In, LinkType::RawIp)
        );
        assert_eq!(
            to_frame(&ifaces, 0, &PacketHeader { ifindex: 99, ..h }, vec![]),
            None
        );
    }

    #[test]
    fn only_filters_of_a_running_mail_trace_are_kept() {
        // Our own PID as a handle is a predecessor's: nothing is attached yet.
        assert!(!owner_running(std::process::id()));
        assert!(!owner_running(1), "init is not a mail-trace");
        assert!(!owner_running(u32::MAX), "no such process");
        assert_eq!(clsact_parent(TcAttachType::Ingress), 0xffff_fff2);
        assert_eq!(clsact_parent(TcAttachType::Egress), 0xffff_fff3);
    }

    #[test]
    fn missing_interface_is_a_clear_error() {
        let e = lookup_iface("mtnosuch0").unwrap_err();
        assert_eq!(e.to_string(), "interface mtnosuch0 does not exist");
        assert!(lookup_iface("lo").is_ok());
    }
}
