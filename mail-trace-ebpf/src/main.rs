//! The in-kernel half of mail-trace: TC (ingress and egress) and XDP (ingress)
//! programs that copy mail packets to a ring buffer. They only read: TC returns
//! "continue" (TC_ACT_UNSPEC, which is TCX_NEXT) and XDP returns XDP_PASS, so
//! traffic and other programs' verdicts are never touched.
#![no_std]
#![no_main]

mod emit;
mod maps;
mod parse;
mod tls;
mod uprobe;

use core::ffi::c_void;

use aya_ebpf::{
    bindings::{xdp_action, TC_ACT_UNSPEC},
    helpers::bpf_skb_load_bytes,
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
    EbpfContext,
};
use mail_trace_common::{port_bit, FLAG_EGRESS, FLAG_INGRESS, FLAG_L3, FLAG_XDP};

#[cfg(not(feature = "compat"))]
use crate::parse::XdpLoad;
use crate::parse::{Direct, SkbLoad, Tcp, Verdict};

#[classifier]
pub fn mail_trace_in(ctx: TcContext) -> i32 {
    tc(&ctx, FLAG_INGRESS);
    TC_ACT_UNSPEC
}

#[classifier]
pub fn mail_trace_out(ctx: TcContext) -> i32 {
    tc(&ctx, FLAG_EGRESS);
    TC_ACT_UNSPEC
}

#[xdp]
pub fn mail_trace_xdp(ctx: XdpContext) -> u32 {
    xdp_in(&ctx);
    xdp_action::XDP_PASS
}

#[inline(always)]
fn tc(ctx: &TcContext, dir: u32) {
    let Some(ports) = emit::mail_ports() else {
        return;
    };
    // SAFETY: the context pointer is the kernel's __sk_buff.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let l3 = emit::iface_is_l3(ifindex);
    let direct = Direct {
        start: ctx.data(),
        end: ctx.data_end(),
    };
    // Most packets on a relay are not mail: they cost no more than this (not even a
    // counter: `seen` counts the packets walked).
    if parse::not_mail(&direct, l3, |p| port_bit(ports, p)) {
        return;
    }
    let Some(c) = emit::counters() else { return };
    c.seen += 1;
    // The headers go to a per-CPU map value rather than the stack: the verifier tracks
    // nothing of a map value's contents, so what follows is checked once, not once per
    // parse path below (the TC programs load in a third of the time). TC programs on
    // one CPU never nest (egress runs with bottom halves off), so the slot is ours.
    let Some(t) = maps::HEADERS.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: a per-CPU map value, see above.
    let t = unsafe { &mut *t };
    *t = Tcp::new();
    // Headers normally sit in the linear part; load them when they do not.
    let mut v = parse::parse(&direct, l3, t);
    if v == Verdict::Bad {
        v = parse::parse(&SkbLoad(ctx), l3, t);
    }
    if !emit::wanted(c, ports, v, t) {
        return;
    }
    let flags = dir | if l3 { FLAG_L3 } else { 0 };
    let hook = tls::Hook {
        ctx: ctx.as_ptr(),
        #[cfg(not(feature = "compat"))]
        ext_step: tc_ext_step,
    };
    let headers = tls::copy_len(&SkbLoad(ctx), t, ctx.len(), hook);
    emit::emit::<TcCopy>(c, ctx.as_ptr(), ifindex, flags, ctx.len(), headers);
}

/// One ClientHello extension of a TC packet (`bpf_loop` callback, see `tls::ExtWalk`).
#[cfg(not(feature = "compat"))]
extern "C" fn tc_ext_step(_i: u64, walk: *mut c_void) -> i64 {
    // SAFETY: `hello_cut` passes its `ExtWalk`, alive for the whole loop.
    let walk = unsafe { &mut *(walk as *mut tls::ExtWalk) };
    let ctx = TcContext::new(walk.ctx.cast());
    tls::ext_step(&SkbLoad(&ctx), walk)
}

/// One ClientHello extension of an XDP frame (`bpf_loop` callback, see `tls::ExtWalk`).
#[cfg(not(feature = "compat"))]
extern "C" fn xdp_ext_step(_i: u64, walk: *mut c_void) -> i64 {
    // SAFETY: `hello_cut` passes its `ExtWalk`, alive for the whole loop.
    let walk = unsafe { &mut *(walk as *mut tls::ExtWalk) };
    let md = walk.ctx.cast();
    tls::ext_step(&XdpLoad(md), walk)
}

/// A TC packet's bytes, through `bpf_skb_load_bytes` (see `emit::emit`).
struct TcCopy;

impl emit::Copier for TcCopy {
    #[inline(always)]
    fn copy(skb: *mut c_void, off: u32, dst: *mut u8, n: u32) -> i64 {
        // SAFETY: dst has room for n bytes (bounded by the caller); skb is the context.
        unsafe { bpf_skb_load_bytes(skb, off, dst.cast(), n) }
    }
}

#[inline(always)]
fn xdp_in(ctx: &XdpContext) {
    let Some(ports) = emit::mail_ports() else {
        return;
    };
    // SAFETY: the context pointer is the kernel's xdp_md.
    let ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
    let l3 = emit::iface_is_l3(ifindex);
    let direct = Direct {
        start: ctx.data(),
        end: ctx.data_end(),
    };
    if parse::not_mail(&direct, l3, |p| port_bit(ports, p)) {
        return;
    }
    let Some(c) = emit::counters() else { return };
    c.seen += 1;
    let mut t = Tcp::new();
    let v = parse::parse(&direct, l3, &mut t);
    if !emit::wanted(c, ports, v, &t) {
        return;
    }
    let flags = FLAG_INGRESS | FLAG_XDP | if l3 { FLAG_L3 } else { 0 };
    let len = (ctx.data_end() - ctx.data()) as u32;
    let hook = tls::Hook {
        ctx: ctx.as_ptr(),
        #[cfg(not(feature = "compat"))]
        ext_step: xdp_ext_step,
    };
    let headers = tls::copy_len(&direct, &t, len, hook);
    emit::emit::<XdpCopy>(c, ctx.as_ptr(), ifindex, flags, len, headers);
}

/// An XDP frame's bytes (see `emit::emit`): `bpf_xdp_load_bytes` (5.18); the compat object
/// reads the frame's linear data with `bpf_probe_read_kernel` instead (kernels before 5.18
/// have no multi-buffer XDP, so the frame is all in `data..data_end`).
struct XdpCopy;

impl emit::Copier for XdpCopy {
    #[inline(always)]
    fn copy(md: *mut c_void, off: u32, dst: *mut u8, n: u32) -> i64 {
        #[cfg(not(feature = "compat"))]
        // SAFETY: dst has room for n bytes (bounded by the caller); md is the context.
        unsafe {
            aya_ebpf::helpers::bpf_xdp_load_bytes(md.cast(), off, dst.cast(), n)
        }
        #[cfg(feature = "compat")]
        {
            let md = md as *const aya_ebpf::bindings::xdp_md;
            // SAFETY: md is the program's context; data and data_end are its frame bounds.
            let (start, end) = unsafe { ((*md).data as usize, (*md).data_end as usize) };
            let from = start + off as usize;
            if from + n as usize > end {
                return -1;
            }
            // SAFETY: dst has room for n bytes; the source lies within the frame.
            unsafe {
                aya_ebpf::helpers::generated::bpf_probe_read_kernel(
                    dst.cast(),
                    n,
                    from as *const c_void,
                )
            }
        }
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
