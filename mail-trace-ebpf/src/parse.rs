//! Bounded header walk: Ethernet (+ up to two VLAN tags), IPv4 or IPv6 with
//! extension headers, down to the TCP ports. Generic over how bytes are read so
//! the same code serves direct packet access and `bpf_skb_load_bytes`.
use core::mem::size_of;
#[cfg(not(feature = "compat"))]
use core::mem::MaybeUninit;

use aya_ebpf::programs::TcContext;
#[cfg(not(feature = "compat"))]
use aya_ebpf::{bindings::xdp_md, helpers::bpf_xdp_load_bytes};

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;
const IPPROTO_TCP: u8 = 6;

/// IPv6 extension headers walked at most; more is treated as "not TCP".
const MAX_EXT_HEADERS: usize = 6;
/// Deepest offset a TCP header may start at; keeps offsets bounded for the verifier.
const MAX_L4_OFFSET: usize = 512;

pub trait Reader {
    fn read<T: Copy>(&self, off: usize) -> Option<T>;
}

/// Direct packet access between `data` and `data_end`.
pub struct Direct {
    pub start: usize,
    pub end: usize,
}

impl Reader for Direct {
    #[inline(always)]
    fn read<T: Copy>(&self, off: usize) -> Option<T> {
        let p = self.start + off;
        if p + size_of::<T>() > self.end {
            return None;
        }
        // SAFETY: bounds checked against data_end just above.
        Some(unsafe { core::ptr::read_unaligned(p as *const T) })
    }
}

/// `bpf_skb_load_bytes`: for headers outside the linear part of the skb.
pub struct SkbLoad<'a>(pub &'a TcContext);

impl Reader for SkbLoad<'_> {
    #[inline(always)]
    fn read<T: Copy>(&self, off: usize) -> Option<T> {
        self.0.load::<T>(off).ok()
    }
}

/// `bpf_xdp_load_bytes`: for `bpf_loop` callbacks, which cannot carry packet pointers.
#[cfg(not(feature = "compat"))]
pub struct XdpLoad(pub *mut xdp_md);

#[cfg(not(feature = "compat"))]
impl Reader for XdpLoad {
    #[inline(always)]
    fn read<T: Copy>(&self, off: usize) -> Option<T> {
        let mut v = MaybeUninit::<T>::uninit();
        // SAFETY: the helper writes at most size_of::<T>() bytes into v.
        let r = unsafe {
            bpf_xdp_load_bytes(
                self.0,
                off as u32,
                v.as_mut_ptr().cast(),
                size_of::<T>() as u32,
            )
        };
        // SAFETY: fully written when the helper succeeded.
        (r == 0).then(|| unsafe { v.assume_init() })
    }
}

/// What the walk found. Plain integers, fully initialised: LLVM spills
/// uninitialised enum payloads, which the verifier rejects (`!read_ok`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not IP, or IP but not TCP.
    Other,
    /// A fragment without the TCP header.
    Fragment,
    /// Headers cut short or inconsistent.
    Bad,
    Tcp,
}

/// Addresses (IPv4 in the first 4 bytes) and ports of a TCP packet.
#[derive(Clone, Copy)]
pub struct Tcp {
    pub v6: bool,
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    /// Offset of the TCP payload from the start of the packet.
    pub payload_off: u32,
    /// TCP flags byte (FIN 0x01, SYN 0x02, RST 0x04, ACK 0x10).
    pub flags: u8,
}

impl Tcp {
    pub const fn new() -> Self {
        Tcp {
            v6: false,
            src: [0; 16],
            dst: [0; 16],
            sport: 0,
            dport: 0,
            payload_off: 0,
            flags: 0,
        }
    }
}

/// The cheap look every packet gets: an untagged Ethernet frame carrying TCP over IPv4
/// (unfragmented) or over IPv6 (no extension header) whose ports are not mail ports is not
/// ours, decided from a few bytes without the full walk. Other traffic that is not IP is
/// not ours either. `false` = walk it (`parse` decides and counts the oddities).
#[inline(always)]
pub fn not_mail<R: Reader, F: Fn(u16) -> bool>(r: &R, l3: bool, mail: F) -> bool {
    if l3 {
        return false;
    }
    let Some(et) = r.read::<[u8; 2]>(12) else {
        return false;
    };
    let l4 = match u16::from_be_bytes(et) {
        ETH_P_IP => {
            // Unused bytes of the read are never loaded: the compiler drops them.
            let Some(h) = r.read::<[u8; 10]>(14) else {
                return false;
            };
            let ihl = ((h[0] & 0x0f) as usize) * 4;
            if h[0] >> 4 != 4 || ihl < 20 || u16::from_be_bytes([h[6], h[7]]) & 0x1fff != 0 {
                return false;
            }
            if h[9] != IPPROTO_TCP {
                return true;
            }
            14 + ihl
        }
        ETH_P_IPV6 => match r.read::<[u8; 8]>(14) {
            Some(h) if h[6] == IPPROTO_TCP => 14 + 40,
            _ => return false,
        },
        ETH_P_8021Q | ETH_P_8021AD => return false,
        _ => return true,
    };
    match r.read::<[u8; 4]>(l4) {
        Some(p) => {
            !mail(u16::from_be_bytes([p[0], p[1]])) && !mail(u16::from_be_bytes([p[2], p[3]]))
        }
        None => false,
    }
}

#[inline(always)]
pub fn parse<R: Reader>(r: &R, l3: bool, t: &mut Tcp) -> Verdict {
    match walk(r, l3, t) {
        Ok(v) => v,
        Err(()) => Verdict::Bad,
    }
}

#[inline(always)]
fn walk<R: Reader>(r: &R, l3: bool, t: &mut Tcp) -> Result<Verdict, ()> {
    let mut off = 0usize;
    let mut ethertype: u16;
    if l3 {
        // Reads are never a single byte: the compiler turns `p + 1 > end` into
        // `end > p`, from which the verifier learns no accessible range.
        let b: [u8; 2] = r.read(0).ok_or(())?;
        ethertype = match b[0] >> 4 {
            4 => ETH_P_IP,
            6 => ETH_P_IPV6,
            _ => return Ok(Verdict::Other),
        };
    } else {
        ethertype = u16::from_be(r.read(12).ok_or(())?);
        off = 14;
        for _ in 0..2 {
            if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
                ethertype = u16::from_be(r.read(off + 2).ok_or(())?);
                off += 4;
            }
        }
    }
    match ethertype {
        ETH_P_IP => ipv4(r, off, t),
        ETH_P_IPV6 => ipv6(r, off, t),
        _ => Ok(Verdict::Other),
    }
}

#[inline(always)]
fn ipv4<R: Reader>(r: &R, off: usize, t: &mut Tcp) -> Result<Verdict, ()> {
    let h: [u8; 20] = r.read(off).ok_or(())?;
    let ihl = ((h[0] & 0x0f) as usize) * 4;
    if h[0] >> 4 != 4 || ihl < 20 {
        return Err(());
    }
    if u16::from_be_bytes([h[6], h[7]]) & 0x1fff != 0 {
        return Ok(Verdict::Fragment);
    }
    if h[9] != IPPROTO_TCP {
        return Ok(Verdict::Other);
    }
    t.src[..4].copy_from_slice(&h[12..16]);
    t.dst[..4].copy_from_slice(&h[16..20]);
    tcp(r, off + ihl, t)
}

#[inline(always)]
fn ipv6<R: Reader>(r: &R, off: usize, t: &mut Tcp) -> Result<Verdict, ()> {
    let h: [u8; 40] = r.read(off).ok_or(())?;
    let mut nh = h[6];
    t.v6 = true;
    t.src.copy_from_slice(&h[8..24]);
    t.dst.copy_from_slice(&h[24..40]);
    let mut off = off + 40;
    for _ in 0..MAX_EXT_HEADERS {
        match nh {
            IPPROTO_TCP => return tcp(r, off, t),
            // Hop-by-hop, routing, destination options: length in 8-octet units.
            0 | 43 | 60 => {
                let h: [u8; 2] = r.read(off).ok_or(())?;
                nh = h[0];
                off += (h[1] as usize + 1) * 8;
            }
            // Fragment: only the first one carries the TCP header.
            44 => {
                let h: [u8; 4] = r.read(off).ok_or(())?;
                if u16::from_be_bytes([h[2], h[3]]) & 0xfff8 != 0 {
                    return Ok(Verdict::Fragment);
                }
                nh = h[0];
                off += 8;
            }
            // Authentication header: length in 4-octet units, minus 2.
            51 => {
                let h: [u8; 2] = r.read(off).ok_or(())?;
                nh = h[0];
                off += (h[1] as usize + 2) * 4;
            }
            _ => return Ok(Verdict::Other),
        }
        if off > MAX_L4_OFFSET {
            return Err(());
        }
    }
    if nh == IPPROTO_TCP {
        return tcp(r, off, t);
    }
    Ok(Verdict::Other)
}

#[inline(always)]
fn tcp<R: Reader>(r: &R, off: usize, t: &mut Tcp) -> Result<Verdict, ()> {
    if off > MAX_L4_OFFSET {
        return Err(());
    }
    let h: [u8; 14] = r.read(off).ok_or(())?;
    t.sport = u16::from_be_bytes([h[0], h[1]]);
    t.dport = u16::from_be_bytes([h[2], h[3]]);
    t.payload_off = (off + ((h[12] >> 4) as usize) * 4) as u32;
    t.flags = h[13];
    Ok(Verdict::Tcp)
}
