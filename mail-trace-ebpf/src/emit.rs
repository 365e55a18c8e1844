//! Filtering and copying: the port/host decision, then the packet in chunks
//! into the ring buffer, every outcome counted.
use core::ffi::c_void;

#[cfg(not(feature = "compat"))]
use aya_ebpf::helpers::bpf_loop;
use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{bpf_get_smp_processor_id, bpf_ktime_get_ns},
    maps::lpm_trie::Key,
};
use mail_trace_common::{
    port_bit, Counters, PacketHeader, PortBits, CFG_ANY_IFACE_FLAGS, CFG_HOST_FILTER, CHUNK_LEN,
    FLAG_SUPPRESSED, IFACE_L3, MAX_PACKET_LEN, SMALL_CHUNK_LEN,
};

use crate::{
    maps::{CONFIG, COUNTERS, EVENTS, HOSTS4, HOSTS6, IFACES, MAIL_PORTS},
    parse::{Tcp, Verdict},
};

const HDR: usize = core::mem::size_of::<PacketHeader>();
const MAX_CHUNKS: usize = MAX_PACKET_LEN / CHUNK_LEN;

#[inline(always)]
pub fn counters() -> Option<&'static mut Counters> {
    // SAFETY: per-CPU slot; programs on one CPU do not run concurrently.
    COUNTERS.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

#[inline(always)]
pub fn iface_is_l3(ifindex: u32) -> bool {
    // Every packet pays this: the array lookup is inlined, the hash lookup is not, and most
    // hosts attach to Ethernet devices only.
    let any = CONFIG
        .get(0)
        .is_some_and(|cfg| cfg.flags & CFG_ANY_IFACE_FLAGS != 0);
    // SAFETY: plain u32 value, only read.
    any && unsafe { IFACES.get(&ifindex) }.is_some_and(|f| f & IFACE_L3 != 0)
}

/// The mail-port bitmap (`None` only if the map is missing, which the loader rules out).
#[inline(always)]
pub fn mail_ports() -> Option<&'static PortBits> {
    MAIL_PORTS.get(0)
}

/// Whether a parsed packet is one of ours; counts what is not parseable.
#[inline(always)]
pub fn wanted(c: &mut Counters, ports: &PortBits, v: Verdict, t: &Tcp) -> bool {
    match v {
        Verdict::Tcp => {}
        Verdict::Other => return false,
        Verdict::Fragment => {
            c.fragments += 1;
            return false;
        }
        Verdict::Bad => {
            c.unparseable += 1;
            return false;
        }
    }
    if !port_bit(ports, t.sport) && !port_bit(ports, t.dport) {
        return false;
    }
    let host_filter = CONFIG
        .get(0)
        .is_some_and(|cfg| cfg.flags & CFG_HOST_FILTER != 0);
    if host_filter {
        let hit = if t.v6 {
            HOSTS6.get(Key::new(128, t.src)).is_some() || HOSTS6.get(Key::new(128, t.dst)).is_some()
        } else {
            let (s4, d4) = (
                [t.src[0], t.src[1], t.src[2], t.src[3]],
                [t.dst[0], t.dst[1], t.dst[2], t.dst[3]],
            );
            HOSTS4.get(Key::new(32, s4)).is_some() || HOSTS4.get(Key::new(32, d4)).is_some()
        };
        if !hit {
            return false;
        }
    }
    c.matched += 1;
    true
}

/// How a program type copies packet bytes into a record: its load-bytes helper.
pub trait Copier {
    /// Copies `n` bytes at packet offset `off` of the context `ctx` to `dst`; 0 on success.
    fn copy(ctx: *mut c_void, off: u32, dst: *mut u8, n: u32) -> i64;

    /// One chunk as a `bpf_loop` callback (see [`emit`]).
    #[cfg(not(feature = "compat"))]
    extern "C" fn step(i: u64, job: *mut c_void) -> i64 {
        chunk_step(i, job, Self::copy)
    }
}

/// What the per-chunk callback of `bpf_loop` needs: it runs as its own subprogram and sees
/// only this (on the caller's stack).
#[repr(C)]
pub struct Job {
    hdr: PacketHeader,
    /// The program's context (`__sk_buff` or `xdp_md`), for the load-bytes helper.
    ctx: *mut c_void,
    counters: *mut Counters,
    wake_bytes: u64,
}

/// Copies `len` bytes of packet (capped by snaplen and 64 KiB) into records; with
/// `headers` non-zero (an encrypted flow, see `tls.rs`) only that many, flagged
/// `FLAG_SUPPRESSED`. `C` copies one record with the program type's load-bytes helper.
///
/// The chunks go through `bpf_loop` rather than an unrolled loop: the verifier checks the
/// callback once instead of every one of the 32 iterations in every state that reaches
/// it, which took 0.45 s of CPU per program at every start. Kernels before 5.17 have no
/// `bpf_loop` (and before 5.13 reject the callback's BPF_PSEUDO_FUNC reference): the
/// compat object (feature `compat`) walks the chunks in a bounded loop instead.
#[inline(always)]
pub fn emit<C: Copier>(
    c: &mut Counters,
    ctx: *mut c_void,
    ifindex: u32,
    mut flags: u32,
    len: u32,
    headers: u32,
) {
    let (snaplen, wake_bytes) = match CONFIG.get(0) {
        Some(cfg) => (cfg.snaplen, cfg.wake_bytes as u64),
        None => (0, 0),
    };
    let mut cap = len.min(MAX_PACKET_LEN as u32);
    if snaplen != 0 && cap > snaplen {
        cap = snaplen;
    }
    if headers != 0 && headers < cap {
        c.suppressed_packets += 1;
        c.suppressed_bytes += (cap - headers) as u64;
        cap = headers;
        flags |= FLAG_SUPPRESSED;
    } else if cap < len {
        c.truncated += 1;
    }
    // SAFETY: helpers without preconditions.
    let (cpu, ts_ns) = unsafe { (bpf_get_smp_processor_id(), bpf_ktime_get_ns()) };
    let mut job = Job {
        hdr: PacketHeader {
            ts_ns,
            packet_id: ((cpu as u64) << 48) | (c.seen & 0xffff_ffff_ffff),
            ifindex,
            flags,
            orig_len: len,
            cap_len: cap,
            offset: 0,
            chunk_len: 0,
        },
        ctx,
        counters: c,
        wake_bytes,
    };
    let job = (&mut job as *mut Job).cast();
    #[cfg(not(feature = "compat"))]
    {
        let chunks = cap.div_ceil(CHUNK_LEN as u32).min(MAX_CHUNKS as u32);
        // SAFETY: the callback only reads and writes `job`, which outlives the call.
        unsafe { bpf_loop(chunks, C::step as *mut c_void, job, 0) };
    }
    #[cfg(feature = "compat")]
    for i in 0..MAX_CHUNKS as u64 {
        if chunk_step(i, job, C::copy) != 0 {
            break;
        }
    }
}

/// The body of the chunk loop (a `bpf_loop` callback or the compat loop) for chunk `i`: one record, counted. `copy(offset, dst, n)` is
/// the load-bytes helper. Returns 0 to go on, 1 to stop.
#[inline(always)]
pub fn chunk_step<F>(i: u64, job: *mut c_void, copy: F) -> i64
where
    F: Fn(*mut c_void, u32, *mut u8, u32) -> i64,
{
    // SAFETY: `emit` passes its `Job`, alive for the whole loop.
    let job = unsafe { &mut *(job as *mut Job) };
    let offset = (i as u32).wrapping_mul(CHUNK_LEN as u32);
    let cap = job.hdr.cap_len;
    if i >= MAX_CHUNKS as u64 || offset >= cap {
        return 1;
    }
    let n = (cap - offset).min(CHUNK_LEN as u32);
    job.hdr.offset = offset;
    job.hdr.chunk_len = n;
    let ctx = job.ctx;
    let copy = |off: u32, dst: *mut u8, n: u32| copy(ctx, off, dst, n);
    let ok = if n as usize <= SMALL_CHUNK_LEN {
        chunk::<{ HDR + SMALL_CHUNK_LEN }, SMALL_CHUNK_LEN, _>(&job.hdr, job.wake_bytes, &copy)
    } else {
        chunk::<{ HDR + CHUNK_LEN }, CHUNK_LEN, _>(&job.hdr, job.wake_bytes, &copy)
    };
    // SAFETY: the per-CPU counters `emit` was given; nothing else runs on this CPU meanwhile.
    let c = unsafe { &mut *job.counters };
    if ok {
        c.records += 1;
        c.bytes += n as u64;
    } else {
        c.lost_records += 1;
        c.lost_bytes += n as u64;
    }
    0
}

/// One record of `SIZE` bytes (header + up to `DATA` bytes of packet).
#[inline(always)]
fn chunk<const SIZE: usize, const DATA: usize, F>(
    hdr: &PacketHeader,
    wake_bytes: u64,
    copy: &F,
) -> bool
where
    F: Fn(u32, *mut u8, u32) -> i64,
{
    let Some(mut rec) = EVENTS.reserve_bytes(SIZE, 0) else {
        return false;
    };
    let base = rec.as_mut_ptr();
    // SAFETY: the record is SIZE bytes, 8-aligned by the kernel; the header fits.
    unsafe { core::ptr::write_unaligned(base as *mut PacketHeader, *hdr) };
    // The verifier must see the copy length within [1, DATA].
    let n = ((hdr.chunk_len.wrapping_sub(1)) & (DATA as u32 - 1)) + 1;
    // SAFETY: HDR + n <= SIZE by the mask above.
    if copy(hdr.offset, unsafe { base.add(HDR) }, n) != 0 {
        rec.discard(0);
        return false;
    }
    // Batch wake-ups: the reader polls on a timer, and is woken early only when
    // the unread backlog grows past wake_bytes.
    let flags = if EVENTS.query(BPF_RB_AVAIL_DATA as u64) >= wake_bytes {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    rec.submit(flags as u64);
    true
}
