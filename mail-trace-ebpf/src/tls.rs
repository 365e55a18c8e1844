//! In-kernel TLS suppression: once a flow is encrypted its payload is useless to the
//! dissectors, so each direction copies only its first record when that record holds the
//! hello (`hello_record_len`: the SNI, version and cipher are all the dissector reads; of a
//! ClientHello only up to its server name, `hello_cut`), and sends the rest of that segment
//! and everything after header-only; `orig_len` keeps the
//! byte counts and the reassembly exact. A direction that starts otherwise is copied until
//! its first application-data record, at most `TLS_KEEP_BYTES`.
//!
//! The kernel arms a flow itself when a client segment is exactly `STARTTLS\r\n` and turns it
//! on when the server's next segment starts with `220`; any other reply disarms it. On the
//! implicit-TLS ports the flow is on from the SYN. Waiting for the daemon to mark flows would
//! be too late: it is woken every 20 ms, longer than a whole TLS session on a LAN. FIN or
//! RST removes both directions; the LRU map is the backstop for flows whose end was missed.
use core::ffi::c_void;

#[cfg(not(feature = "compat"))]
use aya_ebpf::helpers::bpf_loop;
use mail_trace_common::{
    hello_record_len, FlowKey, TlsFlow, CFG_TLS_SUPPRESS, PORT_IMPLICIT_TLS, TLS_ARMED, TLS_DONE,
    TLS_HELLO, TLS_KEEP_BYTES, TLS_ON,
};

use crate::{
    maps::{CONFIG, PORTS, TLS_FLOWS},
    parse::{Reader, Tcp},
};

const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const ACK: u8 = 0x10;

const CLIENT_HELLO: u8 = 1;
/// Extensions looked at before the server name; OpenSSL and GnuTLS send it among the first.
const MAX_EXTS: usize = 16;
/// Deepest offset in a ClientHello searched for the server name.
const MAX_SNI_OFF: u32 = 2048;

/// Where to cut a ClientHello, counted from `base` (the record's first byte), when it lies
/// within the first `limit` bytes: after its server_name extension, or after the handshake
/// header when the walk found none (the dissector then takes the hello as seen, unnamed).
#[inline(always)]
fn hello_cut<R: Reader>(r: &R, base: usize, limit: u32, hook: Hook) -> Option<u32> {
    // Masked offsets keep the verifier's range bounded; the checks keep them exact.
    let at = |off: u32| (base + (off as usize & 0xfff)) & 0x1fff;
    // Record header 5, handshake header 4, version 2, random 32: the session id length.
    let mut off = 43;
    let sid: [u8; 2] = r.read(at(off))?;
    off += 1 + sid[0] as u32;
    let suites: [u8; 2] = r.read(at(off))?;
    off += 2 + u16::from_be_bytes(suites) as u32;
    if off > MAX_SNI_OFF {
        return None;
    }
    let comp: [u8; 2] = r.read(at(off))?;
    off += 1 + comp[0] as u32;
    if off > MAX_SNI_OFF {
        return None;
    }
    let block: [u8; 2] = r.read(at(off))?;
    off += 2;
    let mut walk = ExtWalk {
        ctx: hook.ctx,
        base: base as u32,
        off,
        block_end: off + u16::from_be_bytes(block) as u32,
        limit,
        cut: 0,
    };
    // SAFETY: the callback only reads and writes `walk`, which outlives the call.
    #[cfg(not(feature = "compat"))]
    unsafe {
        bpf_loop(
            MAX_EXTS as u32,
            hook.ext_step as *mut c_void,
            (&mut walk as *mut ExtWalk).cast(),
            0,
        )
    };
    // Without bpf_loop (kernels before 5.17), a bounded loop with the caller's reader.
    #[cfg(feature = "compat")]
    for _ in 0..MAX_EXTS {
        if ext_step(r, &mut walk) != 0 {
            break;
        }
    }
    (walk.cut != 0).then_some(walk.cut)
}

/// The program's context and its `bpf_loop` callback for [`ext_step`] (one per program
/// type: the callback reads through the context's load-bytes helper).
#[derive(Clone, Copy)]
pub struct Hook {
    pub ctx: *mut c_void,
    #[cfg(not(feature = "compat"))]
    pub ext_step: extern "C" fn(u64, *mut c_void) -> i64,
}

/// The extension walk of a ClientHello, one extension per `bpf_loop` step: the verifier
/// checks one step instead of 16 unrolled ones in every state (0.1 s of CPU per program
/// at every start).
#[repr(C)]
pub struct ExtWalk {
    pub ctx: *mut c_void,
    base: u32,
    /// Offset of the next extension from `base`.
    off: u32,
    block_end: u32,
    limit: u32,
    /// Where to cut once found; 0 = not (yet) found.
    cut: u32,
}

/// One step of [`ExtWalk`]: 0 to go on, 1 to stop.
#[inline(always)]
pub fn ext_step<R: Reader>(r: &R, w: &mut ExtWalk) -> i64 {
    if w.off >= w.block_end {
        // No server name: cut after the handshake header.
        if w.block_end <= w.limit {
            w.cut = 9;
        }
        return 1;
    }
    if w.off > MAX_SNI_OFF {
        return 1;
    }
    let at = (w.base as usize + (w.off as usize & 0xfff)) & 0x1fff;
    let Some(e) = r.read::<[u8; 4]>(at) else {
        return 1;
    };
    let end = w.off + 4 + u16::from_be_bytes([e[2], e[3]]) as u32;
    if e[0] == 0 && e[1] == 0 {
        if end <= w.limit {
            w.cut = end;
        }
        return 1;
    }
    w.off = end;
    0
}

#[inline(always)]
fn keys(t: &Tcp) -> (FlowKey, FlowKey) {
    let family = if t.v6 { 6 } else { 4 };
    let fwd = FlowKey {
        src: t.src,
        dst: t.dst,
        sport: t.sport,
        dport: t.dport,
        family,
    };
    let rev = FlowKey {
        src: t.dst,
        dst: t.src,
        sport: t.dport,
        dport: t.sport,
        family,
    };
    (fwd, rev)
}

#[inline(always)]
fn set(k: &FlowKey, state: u32) {
    // A full map evicts its oldest entry (LRU): failure here only means no suppression.
    let _ = TLS_FLOWS.insert(k, &TlsFlow { state, kept: 0 }, 0);
}

/// How many bytes of the packet to copy: `0` = all of it, else the header length (the
/// payload is encrypted and past the handshake). `len` is the packet's length.
#[inline(always)]
pub fn copy_len<R: Reader>(r: &R, t: &Tcp, len: u32, hook: Hook) -> u32 {
    if !CONFIG
        .get(0)
        .is_some_and(|cfg| cfg.flags & CFG_TLS_SUPPRESS != 0)
    {
        return 0;
    }
    let payload = len.saturating_sub(t.payload_off);
    let (fwd, rev) = keys(t);
    if t.flags & (FIN | RST) != 0 {
        let _ = TLS_FLOWS.remove(&fwd);
        let _ = TLS_FLOWS.remove(&rev);
        return 0;
    }
    match TLS_FLOWS.get_ptr_mut(&fwd) {
        Some(f) => {
            // SAFETY: a map value pointer, valid for this program run.
            let f = unsafe { &mut *f };
            if payload == 0 {
                return 0;
            }
            if f.state == TLS_HELLO {
                // The rest of the hello record, then header-only.
                if payload < f.kept {
                    f.kept -= payload;
                    return 0;
                }
                f.state = TLS_DONE;
                return t.payload_off + f.kept;
            }
            if f.state == TLS_ON && f.kept == 0 && payload >= 9 {
                let off = (t.payload_off as usize) & 0xfff;
                let head = r.read::<[u8; 9]>(off);
                if let Some(mut need) = head.and_then(|h| hello_record_len(&h)) {
                    if head.is_some_and(|h| h[5] == CLIENT_HELLO) {
                        if let Some(end) = hello_cut(r, off, payload.min(need), hook) {
                            need = end;
                        }
                    }
                    if payload < need {
                        f.state = TLS_HELLO;
                        f.kept = need - payload;
                        return 0;
                    }
                    f.state = TLS_DONE;
                    return t.payload_off + need;
                }
            }
            if f.state == TLS_ON {
                let off = (t.payload_off as usize) & 0xfff;
                let app_data = r.read::<[u8; 2]>(off).is_some_and(|b| b == [0x17, 0x03]);
                if !app_data && f.kept < TLS_KEEP_BYTES {
                    f.kept = f.kept.saturating_add(payload);
                    return 0;
                }
                f.state = TLS_DONE;
            }
            if f.state == TLS_DONE {
                return t.payload_off;
            }
            // Armed: this is the server's reply to STARTTLS.
            if payload >= 3 {
                let off = (t.payload_off as usize) & 0xfff;
                let go = r.read::<[u8; 3]>(off).is_some_and(|b| &b == b"220");
                if go {
                    f.state = TLS_ON;
                    f.kept = 0;
                    set(&rev, TLS_ON);
                } else {
                    let _ = TLS_FLOWS.remove(&fwd);
                }
            }
            0
        }
        None => {
            if t.flags & (SYN | ACK) == SYN {
                let implicit = |p: u16| {
                    PORTS
                        .get(p as u32)
                        .is_some_and(|v| *v & PORT_IMPLICIT_TLS != 0)
                };
                if implicit(t.dport) {
                    set(&fwd, TLS_ON);
                    set(&rev, TLS_ON);
                }
            } else if payload == 10 {
                let off = (t.payload_off as usize) & 0xfff;
                // ASCII letters fold to lower case with | 0x20; CR LF are left as they are.
                let starttls = r.read::<[u8; 10]>(off).is_some_and(|b| {
                    let mut lower = [0u8; 8];
                    for i in 0..8 {
                        lower[i] = b[i] | 0x20;
                    }
                    &lower == b"starttls" && b[8] == b'\r' && b[9] == b'\n'
                });
                if starttls {
                    set(&rev, TLS_ARMED);
                }
            }
            0
        }
    }
}
