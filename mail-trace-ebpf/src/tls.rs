//! Uprobes on the TLS library (OpenSSL's SSL_read/SSL_write and their `_ex`
//! forms): the plaintext of each successful call goes into the packet ring as
//! `TlsDataHeader` records. Entry saves the arguments per thread; the return
//! probe knows the byte count and copies the buffer.
use aya_ebpf::{
    bindings::BPF_RB_FORCE_WAKEUP,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user,
    },
    macros::{map, uprobe, uretprobe},
    maps::{HashMap, LruHashMap, PerCpuArray},
    programs::{ProbeContext, RetProbeContext},
};
use mail_trace_common::{
    tls::{
        TlsCallArgs, TlsCounters, TlsDataHeader, FLAG_TLS_DATA, FLAG_TLS_READ, FLAG_TLS_WRITE,
        MAX_TLS_CALL,
    },
    CHUNK_LEN, SMALL_CHUNK_LEN,
};

use crate::maps::EVENTS;

/// Calls in flight: one per thread at a time (the SSL calls do not nest).
#[map]
static TLS_ARGS: HashMap<u64, TlsCallArgs> = HashMap::with_max_entries(16384, 0);

/// (tgid, SSL *) → fd, from SSL_set_fd. LRU: SSL objects are freed without us seeing it.
#[map]
static SSL_FDS: LruHashMap<[u64; 2], i32> = LruHashMap::with_max_entries(65536, 0);

#[map]
static TLS_COUNTERS: PerCpuArray<TlsCounters> = PerCpuArray::with_max_entries(1, 0);

const HDR: usize = core::mem::size_of::<TlsDataHeader>();
const MAX_CHUNKS: usize = MAX_TLS_CALL / CHUNK_LEN;

#[uprobe]
pub fn mt_ssl_enter(ctx: ProbeContext) -> u32 {
    let (Some(ssl), Some(buf)) = (ctx.arg::<u64>(0), ctx.arg::<u64>(1)) else {
        return 0;
    };
    // Only the _ex return probes read it; for the others it is whatever rcx held.
    let out_len = ctx.arg::<u64>(3).unwrap_or(0);
    let args = TlsCallArgs { ssl, buf, out_len };
    let _ = TLS_ARGS.insert(&bpf_get_current_pid_tgid(), &args, 0);
    0
}

#[uprobe]
pub fn mt_ssl_set_fd(ctx: ProbeContext) -> u32 {
    let (Some(ssl), Some(fd)) = (ctx.arg::<u64>(0), ctx.arg::<i32>(1)) else {
        return 0;
    };
    let key = [bpf_get_current_pid_tgid() >> 32, ssl];
    let _ = SSL_FDS.insert(&key, &fd, 0);
    0
}

#[uretprobe]
pub fn mt_ssl_read_ret(ctx: RetProbeContext) -> u32 {
    let n: i32 = ctx.ret();
    ret(n as i64, false, FLAG_TLS_READ);
    0
}

#[uretprobe]
pub fn mt_ssl_write_ret(ctx: RetProbeContext) -> u32 {
    let n: i32 = ctx.ret();
    ret(n as i64, false, FLAG_TLS_WRITE);
    0
}

#[uretprobe]
pub fn mt_ssl_read_ex_ret(ctx: RetProbeContext) -> u32 {
    let ok: i32 = ctx.ret();
    ret(ok as i64, true, FLAG_TLS_READ);
    0
}

#[uretprobe]
pub fn mt_ssl_write_ex_ret(ctx: RetProbeContext) -> u32 {
    let ok: i32 = ctx.ret();
    ret(ok as i64, true, FLAG_TLS_WRITE);
    0
}

#[inline(always)]
fn counters() -> Option<&'static mut TlsCounters> {
    // SAFETY: per-CPU slot; programs on one CPU do not run concurrently.
    TLS_COUNTERS.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

/// `rv` is the return value; for the `_ex` calls 1 means success and the byte
/// count is in the saved out-parameter.
#[inline(always)]
fn ret(rv: i64, ex: bool, dir: u32) {
    let id = bpf_get_current_pid_tgid();
    // SAFETY: plain value, copied out before the entry is removed.
    let Some(args) = (unsafe { TLS_ARGS.get(&id) }).copied() else {
        return;
    };
    let _ = TLS_ARGS.remove(&id);
    if rv <= 0 {
        return;
    }
    let len: u64 = if ex {
        if args.out_len == 0 {
            return;
        }
        // SAFETY: user pointer read through the checked helper.
        match unsafe { bpf_probe_read_user(args.out_len as *const u64) } {
            Ok(n) => n,
            Err(_) => return,
        }
    } else {
        rv as u64
    };
    if len == 0 {
        return;
    }
    let Some(c) = counters() else { return };
    c.calls += 1;
    let mut cap = len;
    if cap > MAX_TLS_CALL as u64 {
        cap = MAX_TLS_CALL as u64;
        c.truncated += 1;
    }
    let pid = (id >> 32) as u32;
    // SAFETY: plain value.
    let fd = unsafe { SSL_FDS.get(&[id >> 32, args.ssl]) }
        .copied()
        .unwrap_or(-1);
    let mut hdr = TlsDataHeader {
        // SAFETY: helper without preconditions.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        ssl: args.ssl,
        pid,
        flags: FLAG_TLS_DATA | dir,
        tid: id as u32,
        fd,
        call_len: len.min(u32::MAX as u64) as u32,
        offset: 0,
        chunk_len: 0,
        reserved: 0,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    };
    let cap = cap as u32;
    for i in 0..MAX_CHUNKS {
        let offset = (i * CHUNK_LEN) as u32;
        if offset >= cap {
            break;
        }
        let n = (cap - offset).min(CHUNK_LEN as u32);
        hdr.offset = offset;
        hdr.chunk_len = n;
        let src = args.buf + offset as u64;
        let ok = if n as usize <= SMALL_CHUNK_LEN {
            chunk::<{ HDR + SMALL_CHUNK_LEN }, SMALL_CHUNK_LEN>(&hdr, src)
        } else {
            chunk::<{ HDR + CHUNK_LEN }, CHUNK_LEN>(&hdr, src)
        };
        match ok {
            Ok(()) => {
                c.records += 1;
                c.bytes += n as u64;
            }
            Err(true) => c.lost_records += 1,
            Err(false) => {
                c.read_errors += 1;
                return;
            }
        }
    }
}

/// One record; `Err(true)` = ring full, `Err(false)` = the user buffer could not be read.
#[inline(always)]
fn chunk<const SIZE: usize, const DATA: usize>(hdr: &TlsDataHeader, src: u64) -> Result<(), bool> {
    let Some(mut rec) = EVENTS.reserve_bytes(SIZE, 0) else {
        return Err(true);
    };
    let base = rec.as_mut_ptr();
    // SAFETY: the record is SIZE bytes, 8-aligned by the kernel; the header fits.
    unsafe { core::ptr::write_unaligned(base as *mut TlsDataHeader, *hdr) };
    // The verifier must see the copy length within [1, DATA].
    let n = ((hdr.chunk_len.wrapping_sub(1)) & (DATA as u32 - 1)) + 1;
    // SAFETY: HDR + n <= SIZE by the mask above; src is a user address read
    // through the checked helper.
    let r = unsafe {
        aya_ebpf::helpers::generated::bpf_probe_read_user(
            base.add(HDR).cast(),
            n,
            src as *const core::ffi::c_void,
        )
    };
    if r != 0 {
        rec.discard(0);
        return Err(false);
    }
    // Wake the reader now: it must find the connection in /proc while the
    // process still holds it, and login processes live only milliseconds.
    rec.submit(BPF_RB_FORCE_WAKEUP as u64);
    Ok(())
}
