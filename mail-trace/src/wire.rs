//! A [`crate::capture::Frame`] decoded down to its TCP segment, with etherparse's zero-copy slices
//! (no hand-written header parsing in userspace).
//!
//! The lax slicer is used on purpose: captures are often cut by a snaplen, and frames taken
//! before segmentation offload (GSO/TSO) carry an IPv4 total length of 0 or one larger than the
//! bytes present. The strict slicer rejects both; the lax one falls back to the captured length,
//! and [`Segment::missing`] tells the reassembler how many payload bytes it will never see.
use std::net::{IpAddr, SocketAddr};

use etherparse::{
    EtherType, IpNumber, Ipv6ExtensionSlice, LaxNetSlice, LaxSlicedPacket, TcpSlice, TransportSlice,
};

use crate::capture::{Frame, LinkType};

/// TCP flags of a segment (the low byte of the TCP flags field).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpFlags {
    pub syn: bool,
    pub ack: bool,
    pub fin: bool,
    pub rst: bool,
    pub psh: bool,
}

/// The TCP part of one frame: borrowed, never copied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment<'a> {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub seq: u32,
    pub ack: u32,
    pub flags: TcpFlags,
    /// The payload bytes present in the frame.
    pub payload: &'a [u8],
    /// Payload bytes the IP header announces beyond `payload` (snaplen cut).
    pub missing: u32,
    /// The `missing` bytes were seen but not copied on purpose ([`Frame::suppressed`]).
    pub suppressed: bool,
    /// The window field as sent (unscaled).
    pub window: u16,
    /// The window scale option, read on SYN segments only (it is valid nowhere else).
    pub wscale: Option<u8>,
}

/// Why a frame could not be decoded to a TCP segment.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("malformed {layer} header: {reason}")]
    Malformed { layer: &'static str, reason: String },
}

fn malformed(layer: &'static str, reason: impl ToString) -> DecodeError {
    DecodeError::Malformed {
        layer,
        reason: reason.to_string(),
    }
}

/// BSD `AF_INET6` differs per OS (24 NetBSD/OpenBSD, 28 FreeBSD, 30 macOS); `AF_INET` is 2
/// everywhere.
fn ether_type_of_bsd_family(family: u32) -> Option<EtherType> {
    match family {
        2 => Some(EtherType::IPV4),
        24 | 28 | 30 => Some(EtherType::IPV6),
        _ => None,
    }
}

/// Decodes a frame to its TCP segment.
///
/// `Ok(None)` for anything that carries no TCP header: other protocols, other ether types,
/// non-first IP fragments. `Err` when a header is cut or inconsistent; never panics.
///
/// A first fragment (more-fragments set, offset 0) is returned with the TCP payload it holds;
/// the rest is never seen, and the reassembler declares the hole when the peer acknowledges it.
pub fn decode(frame: &Frame) -> Result<Option<Segment<'_>>, DecodeError> {
    let data = frame.data.as_slice();
    let sliced = match frame.link {
        LinkType::Ethernet => {
            LaxSlicedPacket::from_ethernet(data).map_err(|e| malformed("ethernet", e))?
        }
        LinkType::RawIp => match data.first().map(|b| b >> 4) {
            Some(4) | Some(6) => LaxSlicedPacket::from_ip(data).map_err(|e| malformed("ip", e))?,
            Some(v) => return Err(malformed("ip", format_args!("version {v}"))),
            None => return Err(malformed("ip", "empty frame")),
        },
        LinkType::LinuxSll => {
            let hdr = data
                .get(..16)
                .ok_or_else(|| malformed("sll", format_args!("{} bytes < 16", data.len())))?;
            let proto = u16::from_be_bytes([hdr[14], hdr[15]]);
            LaxSlicedPacket::from_ether_type(EtherType(proto), &data[16..])
        }
        LinkType::LinuxSll2 => {
            let hdr = data
                .get(..20)
                .ok_or_else(|| malformed("sll2", format_args!("{} bytes < 20", data.len())))?;
            let proto = u16::from_be_bytes([hdr[0], hdr[1]]);
            LaxSlicedPacket::from_ether_type(EtherType(proto), &data[20..])
        }
        LinkType::Null | LinkType::Loop => {
            let hdr: [u8; 4] = data
                .get(..4)
                .and_then(|h| h.try_into().ok())
                .ok_or_else(|| malformed("null", format_args!("{} bytes < 4", data.len())))?;
            let family = if frame.link == LinkType::Loop {
                u32::from_be_bytes(hdr)
            } else {
                // Host order of the machine that captured, not ours: a family is < 65536, so a
                // value with the low half zero was written by the other endianness.
                let le = u32::from_le_bytes(hdr);
                if le & 0xffff == 0 {
                    le.swap_bytes()
                } else {
                    le
                }
            };
            match ether_type_of_bsd_family(family) {
                Some(et) => LaxSlicedPacket::from_ether_type(et, &data[4..]),
                None => return Ok(None),
            }
        }
    };
    segment_of(frame, sliced)
}

fn segment_of<'a>(
    frame: &'a Frame,
    sliced: LaxSlicedPacket<'a>,
) -> Result<Option<Segment<'a>>, DecodeError> {
    let Some(net) = sliced.net else {
        return match sliced.stop_err {
            Some((err, layer)) => Err(malformed(layer_name(layer), err)),
            None => Ok(None), // not IP
        };
    };
    let (src, dst, announced_ip_len, ip_start, payload, first_fragment) = match &net {
        LaxNetSlice::Ipv4(v4) => {
            let h = v4.header();
            let offset_zero = Some(h.fragments_offset().value() == 0);
            (
                IpAddr::V4(h.source_addr()),
                IpAddr::V4(h.destination_addr()),
                usize::from(h.total_len()),
                h.slice().as_ptr(),
                v4.payload(),
                offset_zero,
            )
        }
        LaxNetSlice::Ipv6(v6) => {
            let h = v6.header();
            // The extension chain is walked below, once it is known to end at TCP.
            let offset_zero = None;
            let payload_len = usize::from(h.payload_length());
            (
                IpAddr::V6(h.source_addr()),
                IpAddr::V6(h.destination_addr()),
                // 0 is a jumbogram or a GSO super-packet: length unknown.
                if payload_len == 0 {
                    0
                } else {
                    40 + payload_len
                },
                h.slice().as_ptr(),
                v6.payload(),
                offset_zero,
            )
        }
    };
    if payload.ip_number != IpNumber::TCP {
        // An extension header that could not be sliced leaves ip_number on that header.
        return match sliced.stop_err {
            Some((err, layer)) => Err(malformed(layer_name(layer), err)),
            None => Ok(None),
        };
    }
    // Only now: etherparse 0.16's extension iterator trusts the chain and reads past the packet
    // when the lax parse stopped inside it (found by fuzzing: wire_decode crash-4c4f7fd2).
    let first_fragment = first_fragment.unwrap_or_else(|| match &net {
        LaxNetSlice::Ipv6(v6) => v6.extensions().clone().into_iter().all(|ext| match ext {
            Ipv6ExtensionSlice::Fragment(f) => f.fragment_offset().value() == 0,
            _ => true,
        }),
        LaxNetSlice::Ipv4(_) => true,
    });
    if !first_fragment {
        return Ok(None);
    }
    let tcp = match sliced.transport {
        Some(TransportSlice::Tcp(tcp)) => tcp,
        // First fragments are not sliced by etherparse; a cut TCP header lands here too.
        _ => TcpSlice::from_slice(payload.payload).map_err(|e| malformed("tcp", e))?,
    };

    let frame_missing = (frame.orig_len as usize).saturating_sub(frame.data.len());
    let missing = if announced_ip_len == 0 {
        frame_missing
    } else {
        let ip_offset = (ip_start as usize).saturating_sub(frame.data.as_ptr() as usize);
        let captured_ip = frame.data.len().saturating_sub(ip_offset);
        // A GSO frame can announce more than it carries although nothing was cut: trust the IP
        // length only as far as the capture says bytes are missing.
        announced_ip_len
            .saturating_sub(captured_ip)
            .min(frame_missing)
    };
    Ok(Some(Segment {
        src: SocketAddr::new(src, tcp.source_port()),
        dst: SocketAddr::new(dst, tcp.destination_port()),
        seq: tcp.sequence_number(),
        ack: tcp.acknowledgment_number(),
        flags: TcpFlags {
            syn: tcp.syn(),
            ack: tcp.ack(),
            fin: tcp.fin(),
            rst: tcp.rst(),
            psh: tcp.psh(),
        },
        payload: tcp.payload(),
        missing: u32::try_from(missing).unwrap_or(u32::MAX),
        suppressed: frame.suppressed && missing > 0,
        window: tcp.window_size(),
        wscale: if tcp.syn() {
            tcp.options_iterator().find_map(|o| match o {
                Ok(etherparse::TcpOptionElement::WindowScale(s)) => Some(s),
                _ => None,
            })
        } else {
            None
        },
    }))
}

fn layer_name(layer: etherparse::err::Layer) -> &'static str {
    use etherparse::err::Layer as L;
    match layer {
        L::Ethernet2Header | L::LinuxSllHeader => "link",
        L::VlanHeader => "vlan",
        L::IpHeader | L::Ipv4Header | L::Ipv6Header => "ip",
        L::TcpHeader => "tcp",
        _ => "ip extension",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::Direction;
    use etherparse::{
        IpHeaders, Ipv4Header, Ipv4Options, Ipv6Extensions, Ipv6Header, Ipv6RawExtHeader,
        PacketBuilder,
    };

    fn frame(link: LinkType, data: Vec<u8>) -> Frame {
        Frame {
            ts: 1,
            iface: 0,
            dir: Direction::Unknown,
            link,
            orig_len: data.len() as u32,
            data,
            suppressed: false,
        }
    }

    /// Tests hold the segment past the statement; leaking the frame keeps them short.
    fn dec(f: Frame) -> Result<Option<Segment<'static>>, DecodeError> {
        decode(Box::leak(Box::new(f)))
    }

    fn v4_tcp(payload: &[u8]) -> Vec<u8> {
        let b = PacketBuilder::ipv4([10, 99, 0, 1], [10, 99, 0, 2], 64)
            .tcp(40000, 25, 1000, 8192)
            .ack(77)
            .psh();
        let mut out = Vec::new();
        b.write(&mut out, payload).unwrap();
        out
    }

    fn v6_tcp(payload: &[u8]) -> Vec<u8> {
        let mut src = [0u8; 16];
        src[..2].copy_from_slice(&[0xfd, 0x99]);
        src[15] = 1;
        let mut dst = src;
        dst[15] = 2;
        let b = PacketBuilder::ipv6(src, dst, 64)
            .tcp(40000, 587, 0xffff_fff0, 8192)
            .syn();
        let mut out = Vec::new();
        b.write(&mut out, payload).unwrap();
        out
    }

    fn eth(ether_type: u16, rest: &[u8]) -> Vec<u8> {
        let mut out = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1];
        out.extend_from_slice(&ether_type.to_be_bytes());
        out.extend_from_slice(rest);
        out
    }

    fn v4_addr(last: u8, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4([10, 99, 0, last].into()), port)
    }

    fn check_v4(seg: &Segment<'_>, payload: &[u8]) {
        assert_eq!(seg.src, v4_addr(1, 40000));
        assert_eq!(seg.dst, v4_addr(2, 25));
        assert_eq!(seg.seq, 1000);
        assert_eq!(seg.ack, 77);
        assert_eq!(
            seg.flags,
            TcpFlags {
                ack: true,
                psh: true,
                ..TcpFlags::default()
            }
        );
        assert_eq!(seg.payload, payload);
        assert_eq!(seg.missing, 0);
    }

    #[test]
    fn ipv6_chain_stopping_at_a_second_hop_by_hop_is_malformed_without_reading_past_it() {
        // Fuzz regression (tests/fixtures/fuzz-regressions/wire_decode/crash-4c4f7fd2…): a
        // hop-by-hop header naming another hop-by-hop header; walking the chain read past the
        // frame (AddressSanitizer: heap-buffer-overflow in etherparse).
        let data = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/fuzz-regressions/wire_decode/crash-4c4f7fd219d093837cbac333d615234cd3d11007"
        ))
        .unwrap();
        assert_eq!(data[0], 0, "link selector: Ethernet");
        let f = frame(LinkType::Ethernet, data[1..].to_vec());
        assert_eq!(
            decode(&f),
            Err(DecodeError::Malformed {
                layer: "ip extension",
                reason:
                    "IPv6 Extension Header Error: Encountered an IPv6 hop-by-hop header not \
                         directly after the IPv6 header. This is not allowed according to RFC 8200."
                        .into()
            })
        );
    }

    #[test]
    fn ethernet_ipv4() {
        let f = frame(LinkType::Ethernet, eth(0x0800, &v4_tcp(b"EHLO x\r\n")));
        check_v4(&dec(f.clone()).unwrap().unwrap(), b"EHLO x\r\n");
    }

    #[test]
    fn ethernet_padding_is_not_payload() {
        // A 40-byte IPv4 packet padded to the 60-byte Ethernet minimum.
        let mut data = eth(0x0800, &v4_tcp(b""));
        data.resize(60, 0);
        let f = frame(LinkType::Ethernet, data);
        check_v4(&dec(f.clone()).unwrap().unwrap(), b"");
    }

    #[test]
    fn vlan_single_and_double() {
        let mut one = vec![0x00, 0x0a, 0x08, 0x00]; // VID 10, then IPv4
        one.extend_from_slice(&v4_tcp(b"QUIT\r\n"));
        let f = frame(LinkType::Ethernet, eth(0x8100, &one));
        check_v4(&dec(f.clone()).unwrap().unwrap(), b"QUIT\r\n");

        let mut two = vec![0x00, 0x64, 0x81, 0x00, 0x00, 0x0a, 0x08, 0x00]; // 802.1ad S+C tags
        two.extend_from_slice(&v4_tcp(b"QUIT\r\n"));
        let f = frame(LinkType::Ethernet, eth(0x88a8, &two));
        check_v4(&dec(f.clone()).unwrap().unwrap(), b"QUIT\r\n");
    }

    #[test]
    fn raw_ip_v4_and_v6() {
        let f = frame(LinkType::RawIp, v4_tcp(b"x"));
        check_v4(&dec(f.clone()).unwrap().unwrap(), b"x");

        let f = frame(LinkType::RawIp, v6_tcp(b"hi"));
        let seg = dec(f.clone()).unwrap().unwrap();
        assert_eq!(seg.src.to_string(), "[fd99::1]:40000");
        assert_eq!(seg.dst.to_string(), "[fd99::2]:587");
        assert_eq!(seg.seq, 0xffff_fff0);
        assert!(seg.flags.syn && !seg.flags.ack);
        assert_eq!(seg.payload, b"hi");
    }

    #[test]
    fn linux_sll_and_sll2() {
        let mut sll = vec![0, 0, 0, 1, 0, 6, 2, 0, 0, 0, 0, 1, 0, 0, 0x08, 0x00];
        sll.extend_from_slice(&v4_tcp(b"sll"));
        check_v4(
            &dec(frame(LinkType::LinuxSll, sll)).unwrap().unwrap(),
            b"sll",
        );

        let mut sll2 = vec![
            0x86, 0xdd, 0, 0, 0, 0, 0, 2, 0, 1, 0, 6, 2, 0, 0, 0, 0, 1, 0, 0,
        ];
        sll2.extend_from_slice(&v6_tcp(b"sll2"));
        let seg = dec(frame(LinkType::LinuxSll2, sll2)).unwrap().unwrap();
        assert_eq!(seg.payload, b"sll2");
        assert_eq!(seg.dst.port(), 587);
    }

    #[test]
    fn null_in_either_byte_order_and_loop() {
        for (link, hdr) in [
            (LinkType::Null, 2u32.to_le_bytes()),
            (LinkType::Null, 2u32.to_be_bytes()),
            (LinkType::Loop, 2u32.to_be_bytes()),
        ] {
            let mut d = hdr.to_vec();
            d.extend_from_slice(&v4_tcp(b"n"));
            check_v4(&dec(frame(link, d)).unwrap().unwrap(), b"n");
        }
        for fam in [24u32, 28, 30] {
            let mut d = fam.to_le_bytes().to_vec();
            d.extend_from_slice(&v6_tcp(b"6"));
            assert_eq!(
                dec(frame(LinkType::Null, d)).unwrap().unwrap().payload,
                b"6"
            );
        }
        // AF_APPLETALK or anything else: not IP, not an error.
        let mut d = 16u32.to_le_bytes().to_vec();
        d.extend_from_slice(&v4_tcp(b"n"));
        assert_eq!(dec(frame(LinkType::Null, d)), Ok(None));
    }

    #[test]
    fn ipv4_options() {
        let mut h = Ipv4Header::new(0, 64, IpNumber::TCP, [10, 99, 0, 1], [10, 99, 0, 2]).unwrap();
        h.options = Ipv4Options::try_from(&[1u8, 1, 1, 0][..]).unwrap(); // NOP NOP NOP EOL
        let b = PacketBuilder::ip(IpHeaders::Ipv4(h, Default::default()))
            .tcp(40000, 25, 1000, 8192)
            .ack(77)
            .psh();
        let mut d = Vec::new();
        b.write(&mut d, b"opt").unwrap();
        assert_eq!(d[0], 0x46); // IHL 6: the options are really there
        check_v4(&dec(frame(LinkType::RawIp, d)).unwrap().unwrap(), b"opt");
    }

    #[test]
    fn ipv6_extension_header() {
        let h = Ipv6Header {
            traffic_class: 0,
            flow_label: Default::default(),
            payload_length: 0,
            next_header: IpNumber::TCP,
            hop_limit: 64,
            source: [0xfd, 0x99, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            destination: [0xfd, 0x99, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
        };
        let exts = Ipv6Extensions {
            destination_options: Some(
                Ipv6RawExtHeader::new_raw(IpNumber::TCP, &[1, 4, 0, 0, 0, 0]).unwrap(),
            ),
            ..Default::default()
        };
        let b = PacketBuilder::ip(IpHeaders::Ipv6(h, exts)).tcp(143, 50000, 9, 100);
        let mut d = Vec::new();
        b.write(&mut d, b"* OK").unwrap();
        assert_eq!(d[6], 60); // next header: destination options
        let seg = dec(frame(LinkType::RawIp, d)).unwrap().unwrap();
        assert_eq!(seg.payload, b"* OK");
        assert_eq!(seg.src.port(), 143);
        assert_eq!(seg.seq, 9);
    }

    #[test]
    fn suppressed_frame_marks_its_missing_bytes() {
        let full = eth(0x0800, &v4_tcp(&[b'a'; 100]));
        let mut f = frame(LinkType::Ethernet, full[..full.len() - 100].to_vec());
        (f.orig_len, f.suppressed) = (full.len() as u32, true);
        let seg = dec(f.clone()).unwrap().unwrap();
        assert_eq!(
            (seg.payload, seg.missing, seg.suppressed),
            (&b""[..], 100, true)
        );
        // Nothing missing: nothing suppressed, whatever the flag says.
        let mut f = frame(LinkType::Ethernet, full.clone());
        f.suppressed = true;
        let seg = dec(f).unwrap().unwrap();
        assert_eq!((seg.missing, seg.suppressed), (0, false));
    }

    #[test]
    fn snaplen_cut_reports_missing_bytes() {
        let full = eth(0x0800, &v4_tcp(&[b'a'; 100]));
        let mut f = frame(LinkType::Ethernet, full[..full.len() - 30].to_vec());
        f.orig_len = full.len() as u32;
        let seg = dec(f.clone()).unwrap().unwrap();
        assert_eq!(seg.payload, &[b'a'; 70][..]);
        assert_eq!(seg.missing, 30);
    }

    #[test]
    fn gso_lengths_are_not_missing_bytes() {
        // TSO: total length 0, everything captured.
        let mut d = v4_tcp(b"big");
        d[2] = 0;
        d[3] = 0;
        let seg_bytes = d.clone();
        let seg = dec(frame(LinkType::RawIp, seg_bytes)).unwrap().unwrap();
        assert_eq!((seg.payload, seg.missing), (&b"big"[..], 0));
        // Total length larger than the frame, yet the frame is whole on the capture's word.
        d[2] = 0x10;
        let seg = dec(frame(LinkType::RawIp, d.clone())).unwrap().unwrap();
        assert_eq!((seg.payload, seg.missing), (&b"big"[..], 0));
        // Total length 0 and the capture cut 500 bytes: the capture's word is all there is.
        d[2] = 0;
        let mut f = frame(LinkType::RawIp, d);
        f.orig_len += 500;
        assert_eq!(dec(f.clone()).unwrap().unwrap().missing, 500);
    }

    #[test]
    fn fragments() {
        let mut first = v4_tcp(b"frag");
        first[6] = 0x20; // MF, offset 0
        let seg = dec(frame(LinkType::RawIp, first)).unwrap().unwrap();
        assert_eq!(seg.payload, b"frag");

        let mut later = v4_tcp(b"frag");
        later[6] = 0x00;
        later[7] = 0x10; // offset 16*8
        assert_eq!(dec(frame(LinkType::RawIp, later)), Ok(None));
    }

    #[test]
    fn non_tcp_is_none() {
        let b = PacketBuilder::ipv4([10, 99, 0, 1], [10, 99, 0, 2], 64).udp(53, 53);
        let mut d = Vec::new();
        b.write(&mut d, b"dns").unwrap();
        assert_eq!(dec(frame(LinkType::RawIp, d)), Ok(None));
        let arp = eth(0x0806, &[0u8; 28]);
        assert_eq!(dec(frame(LinkType::Ethernet, arp)), Ok(None));
    }

    #[test]
    fn garbage_is_an_error_never_a_panic() {
        let cases: Vec<(LinkType, Vec<u8>)> = vec![
            (LinkType::Ethernet, vec![1, 2, 3]),
            (LinkType::RawIp, vec![]),
            (LinkType::RawIp, vec![0x75, 0, 0]),
            (LinkType::RawIp, vec![0x45, 0, 0]),
            (LinkType::LinuxSll, vec![0; 15]),
            (LinkType::LinuxSll2, vec![0x08, 0, 0]),
            (LinkType::Null, vec![2, 0]),
            (LinkType::Ethernet, eth(0x0800, &v4_tcp(b"")[..30])), // TCP header cut
            (LinkType::Ethernet, eth(0x8100, &[0, 1])),            // VLAN tag cut
        ];
        for (link, data) in cases {
            let f = frame(link, data.clone());
            assert!(
                matches!(dec(f.clone()), Err(DecodeError::Malformed { .. })),
                "{link:?} {data:?} -> {:?}",
                dec(f.clone())
            );
        }
        // The error names the layer in one line.
        let e = dec(frame(LinkType::LinuxSll, vec![0; 3])).unwrap_err();
        assert_eq!(e.to_string(), "malformed sll header: 3 bytes < 16");
        // Every prefix of a valid frame decodes or errs without panicking.
        let full = eth(
            0x8100,
            &[0, 10, 0x86, 0xdd]
                .iter()
                .copied()
                .chain(v6_tcp(b"xyz"))
                .collect::<Vec<_>>(),
        );
        for n in 0..full.len() {
            let _ = dec(frame(LinkType::Ethernet, full[..n].to_vec()));
        }
    }
}
