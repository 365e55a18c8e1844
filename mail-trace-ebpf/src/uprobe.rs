//! Uprobes on the TLS library (OpenSSL's SSL_read/SSL_write and their `_ex`
//! forms): the plaintext of each successful call goes into the packet ring as
//! `TlsDataHeader` records. Entry saves the arguments per thread; the return
//! probe knows the byte count and copies the buffer.
//!
//! Each record carries the TCP connection of its `SSL *`, found here in the
//! kernel so that it cannot race a process that closes the socket or exits
//! before userspace reads the record: the sock_send_length/sock_recv_length
//! tracepoints note every mail-port socket a thread uses; when that happens while the
//! thread is inside an SSL call, the socket is the `SSL *`'s (fd BIOs). When a
//! call does no socket I/O of its own (memory BIOs: Dovecot reads the socket
//! before SSL_read and writes it after SSL_write), the thread's last mail-port
//! socket is taken once for that `SSL *`.
use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel,
        bpf_probe_read_user,
    },
    macros::{map, raw_tracepoint, uprobe, uretprobe},
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
    programs::{ProbeContext, RawTracePointContext, RetProbeContext},
};
use mail_trace_common::{
    port_bit,
    tls::{
        SockOffsets, SockOwner, SockTuple, TlsCallArgs, TlsCounters, TlsDataHeader, CONN_IN_CALL,
        CONN_NONE, CONN_OTHER, CONN_THREAD, FLAG_TLS_DATA, FLAG_TLS_READ, FLAG_TLS_WRITE,
        MAX_TLS_CALL,
    },
    CHUNK_LEN, SMALL_CHUNK_LEN,
};

use crate::maps::{EVENTS, MAIL_PORTS};

/// Calls in flight: one per thread at a time (the SSL calls do not nest).
#[map]
static TLS_ARGS: HashMap<u64, TlsCallArgs> = HashMap::with_max_entries(16384, 0);

/// (tgid, SSL *) → fd, from SSL_set_fd. LRU: SSL objects are freed without us seeing it.
#[map]
static SSL_FDS: LruHashMap<[u64; 2], i32> = LruHashMap::with_max_entries(65536, 0);

#[map]
static TLS_COUNTERS: PerCpuArray<TlsCounters> = PerCpuArray::with_max_entries(1, 0);

/// (tgid, SSL *) → its TCP connection. LRU, and cleared by SSL_free.
#[map]
static SSL_CONN: LruHashMap<[u64; 2], SockTuple> = LruHashMap::with_max_entries(65536, 0);

/// pid_tgid → the last mail-port TCP socket the thread sent or received on.
#[map]
static THREAD_SOCK: LruHashMap<u64, SockTuple> = LruHashMap::with_max_entries(16384, 0);

/// Mail-port socket (its tuple, `how` = 0) → the process that last used it:
/// names a session's process even after a short-lived daemon exited.
#[map]
static SOCK_OWNER: LruHashMap<SockTuple, SockOwner> = LruHashMap::with_max_entries(16384, 0);

/// `struct sock_common` field offsets of the running kernel (from its BTF).
#[map]
static SOCK_OFFSETS: Array<SockOffsets> = Array::with_max_entries(1, 0);

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

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

/// SSL_free: the address may come back for another connection.
#[uprobe]
pub fn mt_ssl_free(ctx: ProbeContext) -> u32 {
    let Some(ssl) = ctx.arg::<u64>(0) else {
        return 0;
    };
    let key = [bpf_get_current_pid_tgid() >> 32, ssl];
    let _ = SSL_CONN.remove(&key);
    let _ = SSL_FDS.remove(&key);
    0
}

/// Raw tracepoint sock_send_length(struct sock *sk, int ret, int flags): the
/// socket layer after every send, in the sending thread. Raw tracepoints need
/// neither kprobes nor BPF trampolines, which kernels are built without too
/// (the test machine's has neither).
#[raw_tracepoint(tracepoint = "sock_send_length")]
pub fn mt_sock_send(ctx: RawTracePointContext) -> i32 {
    sock_io(ctx.arg::<u64>(0));
    0
}

/// Raw tracepoint sock_recv_length(struct sock *sk, int ret, int flags).
#[raw_tracepoint(tracepoint = "sock_recv_length")]
pub fn mt_sock_recv(ctx: RawTracePointContext) -> i32 {
    sock_io(ctx.arg::<u64>(0));
    0
}

/// Notes the thread's socket, and binds it to the `SSL *` of a call in flight.
#[inline(always)]
fn sock_io(sk: u64) {
    let Some(t) = sock_tuple(sk) else {
        return;
    };
    let id = bpf_get_current_pid_tgid();
    if t.how == CONN_OTHER {
        // A TLS call on a socket that is no mail connection: its `SSL *` is marked so that
        // none of its plaintext is copied (unless the object is already tied to a mail
        // connection). Not the thread's last mail socket, not an owner.
        // SAFETY: plain value.
        if let Some(args) = unsafe { TLS_ARGS.get(&id) } {
            let key = [id >> 32, args.ssl];
            // SAFETY: plain value.
            if unsafe { SSL_CONN.get(&key) }.is_none() {
                let _ = SSL_CONN.insert(&key, &t, 0);
            }
        }
        return;
    }
    if let Some(c) = counters() {
        c.sock_seen += 1;
    }
    // SAFETY: plain value.
    if let Some(args) = unsafe { TLS_ARGS.get(&id) } {
        let mut bound = t;
        bound.how = CONN_IN_CALL;
        let _ = SSL_CONN.insert(&[id >> 32, args.ssl], &bound, 0);
    }
    let mut last = t;
    last.how = CONN_THREAD;
    let _ = THREAD_SOCK.insert(&id, &last, 0);
    let pid = (id >> 32) as u32;
    // SAFETY: plain value.
    if unsafe { SOCK_OWNER.get(&t) }.is_none_or(|o| o.pid != pid) {
        let owner = SockOwner {
            pid,
            tid: id as u32,
            comm: bpf_get_current_comm().unwrap_or([0; 16]),
        };
        let _ = SOCK_OWNER.insert(&t, &owner, 0);
    }
}

/// The socket's connection, when it is IPv4/IPv6 with a mail port at either
/// end; an IPv4/IPv6 socket without one as `how` = [`CONN_OTHER`] and no addresses
/// (it marks a non-mail TLS object); None for the rest (unix sockets).
#[inline(always)]
fn sock_tuple(sk: u64) -> Option<SockTuple> {
    let o = SOCK_OFFSETS.get(0)?;
    if o.valid == 0 || sk == 0 {
        return None;
    }
    // SAFETY: kernel reads through the checked helper at offsets from BTF.
    let family: u16 =
        unsafe { bpf_probe_read_kernel((sk + o.family as u64) as *const u16) }.ok()?;
    if family != AF_INET && family != AF_INET6 {
        return None;
    }
    // SAFETY: as above.
    let num: u16 = unsafe { bpf_probe_read_kernel((sk + o.num as u64) as *const u16) }.ok()?;
    // SAFETY: as above.
    let dport: u16 = unsafe { bpf_probe_read_kernel((sk + o.dport as u64) as *const u16) }.ok()?;
    let dport = u16::from_be(dport);
    let ports = MAIL_PORTS.get(0)?;
    if !port_bit(ports, num) && !port_bit(ports, dport) {
        return Some(SockTuple {
            family,
            how: CONN_OTHER,
            ..SockTuple::default()
        });
    }
    let mut t = SockTuple {
        family,
        local_port: num,
        remote_port: dport,
        how: CONN_NONE,
        local: [0; 16],
        remote: [0; 16],
    };
    match family {
        AF_INET => {
            // SAFETY: as above.
            let l: [u8; 4] =
                unsafe { bpf_probe_read_kernel((sk + o.rcv_saddr as u64) as *const [u8; 4]) }
                    .ok()?;
            let r: [u8; 4] =
                unsafe { bpf_probe_read_kernel((sk + o.daddr as u64) as *const [u8; 4]) }.ok()?;
            t.local[..4].copy_from_slice(&l);
            t.remote[..4].copy_from_slice(&r);
        }
        AF_INET6 => {
            // SAFETY: as above.
            t.local =
                unsafe { bpf_probe_read_kernel((sk + o.v6_rcv_saddr as u64) as *const [u8; 16]) }
                    .ok()?;
            t.remote =
                unsafe { bpf_probe_read_kernel((sk + o.v6_daddr as u64) as *const [u8; 16]) }
                    .ok()?;
        }
        _ => return None,
    }
    Some(t)
}

/// The connection of `ssl` in the calling process: the one its own I/O used (or the mark
/// that it used a non-mail socket), else (first call of a memory-BIO object) the thread's
/// last mail socket; `CONN_NONE` when there is neither.
#[inline(always)]
fn conn_of(id: u64, ssl: u64, c: &mut TlsCounters) -> SockTuple {
    let key = [id >> 32, ssl];
    // SAFETY: plain value.
    if let Some(t) = unsafe { SSL_CONN.get(&key) } {
        if t.how == CONN_IN_CALL {
            c.conn_in_call += 1;
        } else if t.how == CONN_THREAD {
            c.conn_thread += 1;
        }
        return *t;
    }
    // SAFETY: plain value.
    if let Some(t) = unsafe { THREAD_SOCK.get(&id) }.copied() {
        let _ = SSL_CONN.insert(&key, &t, 0);
        c.conn_thread += 1;
        return t;
    }
    c.conn_none += 1;
    SockTuple {
        how: CONN_NONE,
        ..SockTuple::default()
    }
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
    // Only a mail connection's plaintext crosses the ring: the same libssl serves every
    // process on the host (web servers, package managers), and their data is not ours.
    let conn = conn_of(id, args.ssl, c);
    if conn.how == CONN_NONE || conn.how == CONN_OTHER {
        c.not_mail += 1;
        return;
    }
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
        conn,
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
    // With the connection known, batch wake-ups like the packets do; without
    // it, wake the reader now: its /proc fallback (connections opened before
    // mail-trace started) must run while the process still holds the socket.
    let wake_bytes = crate::maps::CONFIG
        .get(0)
        .map_or(0, |c| c.wake_bytes as u64);
    let flags = if hdr.conn.how == CONN_NONE || EVENTS.query(BPF_RB_AVAIL_DATA as u64) >= wake_bytes
    {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    rec.submit(flags as u64);
    Ok(())
}
