//! pcapng output that tshark and Wireshark read: one IDB per capture interface
//! (name, nanosecond timestamps), an EPB per frame carrying its direction, and
//! at the end an ISB per interface with the drop counters.
use std::{
    borrow::Cow,
    io::{self, Write},
    time::Duration,
};

use pcap_file::{
    pcapng::{
        blocks::{
            enhanced_packet::{EnhancedPacketBlock, EnhancedPacketOption},
            interface_description::{InterfaceDescriptionBlock, InterfaceDescriptionOption},
            interface_statistics::{InterfaceStatisticsBlock, InterfaceStatisticsOption},
        },
        PcapNgWriter,
    },
    DataLink, PcapError,
};

use crate::capture::{Direction, Frame, LinkType};

/// `if_tsresol` = 9: pcap-file writes EPB timestamps in nanoseconds.
const TSRESOL_NANOS: u8 = 9;
/// `epb_flags` inbound / outbound (bits 0-1).
const EPB_INBOUND: u32 = 1;
const EPB_OUTBOUND: u32 = 2;

/// One interface of the capture, in IDB order (= `Frame::iface`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IfaceDesc {
    pub name: String,
    pub link: LinkType,
    /// 0 = no limit.
    pub snaplen: u32,
}

/// Final statistics of one interface for its ISB.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IfaceStats {
    /// Packets delivered to the file.
    pub delivered: u64,
    /// Packets lost before reaching us (ring buffer full, missing chunk).
    pub dropped: u64,
}

pub struct PcapngSink<W: Write> {
    w: PcapNgWriter<W>,
    ifaces: usize,
    last_ts: u64,
}

/// The writer's own error for an I/O failure reads "Error reading bytes" whatever the call was:
/// the OS error itself is what the operator needs (a full disk, a closed pipe).
fn io_error(e: PcapError) -> io::Error {
    match e {
        PcapError::IoError(e) => e,
        e => io::Error::other(e),
    }
}

impl<W: Write> PcapngSink<W> {
    /// Writes the section header and one IDB per interface.
    pub fn new(out: W, ifaces: &[IfaceDesc]) -> io::Result<Self> {
        let mut w = PcapNgWriter::new(out).map_err(io_error)?;
        for i in ifaces {
            w.write_pcapng_block(InterfaceDescriptionBlock {
                linktype: datalink(i.link),
                snaplen: i.snaplen,
                options: vec![
                    InterfaceDescriptionOption::IfName(Cow::Owned(i.name.clone())),
                    InterfaceDescriptionOption::IfTsResol(TSRESOL_NANOS),
                ],
            })
            .map_err(io_error)?;
        }
        Ok(PcapngSink {
            w,
            ifaces: ifaces.len(),
            last_ts: 0,
        })
    }

    pub fn write(&mut self, f: &Frame) -> io::Result<()> {
        if f.iface as usize >= self.ifaces {
            return Err(io::Error::other("frame for an interface without IDB"));
        }
        let flags = match f.dir {
            Direction::In => vec![EnhancedPacketOption::Flags(EPB_INBOUND)],
            Direction::Out => vec![EnhancedPacketOption::Flags(EPB_OUTBOUND)],
            Direction::Unknown => vec![],
        };
        self.last_ts = self.last_ts.max(f.ts);
        self.w
            .write_pcapng_block(EnhancedPacketBlock {
                interface_id: f.iface,
                timestamp: Duration::from_nanos(f.ts),
                original_len: f.orig_len.max(f.data.len() as u32),
                data: Cow::Borrowed(&f.data),
                options: flags,
            })
            .map_err(io_error)?;
        Ok(())
    }

    /// Writes one ISB per interface (`stats[i]` for IDB `i`) and flushes.
    pub fn finish(mut self, end_ts: u64, stats: &[IfaceStats]) -> io::Result<W> {
        let ts = end_ts.max(self.last_ts);
        for (id, s) in stats.iter().enumerate().take(self.ifaces) {
            self.w
                .write_pcapng_block(InterfaceStatisticsBlock {
                    interface_id: id as u32,
                    timestamp: ts,
                    options: vec![
                        InterfaceStatisticsOption::IsbEndTime(ts),
                        InterfaceStatisticsOption::IsbIfDrop(s.dropped),
                        InterfaceStatisticsOption::IsbUsrDeliv(s.delivered),
                    ],
                })
                .map_err(io_error)?;
        }
        let mut out = self.w.into_inner();
        out.flush()?;
        Ok(out)
    }
}

fn datalink(l: LinkType) -> DataLink {
    match l {
        LinkType::Ethernet => DataLink::ETHERNET,
        LinkType::RawIp => DataLink::RAW,
        LinkType::LinuxSll => DataLink::LINUX_SLL,
        LinkType::LinuxSll2 => DataLink::LINUX_SLL2,
        LinkType::Null => DataLink::NULL,
        LinkType::Loop => DataLink::LOOP,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pcap_file::pcapng::{Block, PcapNgReader};

    fn frame(iface: u32, dir: Direction, ts: u64, data: &[u8], orig_len: u32) -> Frame {
        Frame {
            ts,
            iface,
            dir,
            link: LinkType::Ethernet,
            orig_len,
            data: data.to_vec(),
            suppressed: false,
        }
    }

    #[test]
    fn round_trip_reads_back_every_block() {
        let ifaces = [
            IfaceDesc {
                name: "mteb0".into(),
                link: LinkType::Ethernet,
                snaplen: 0,
            },
            IfaceDesc {
                name: "wg0".into(),
                link: LinkType::RawIp,
                snaplen: 128,
            },
        ];
        let mut sink = PcapngSink::new(Vec::new(), &ifaces).unwrap();
        sink.write(&frame(
            0,
            Direction::In,
            1_700_000_000_123_456_789,
            b"abcde",
            5,
        ))
        .unwrap();
        sink.write(&frame(
            1,
            Direction::Out,
            1_700_000_000_223_456_789,
            b"xyz",
            1500,
        ))
        .unwrap();
        sink.write(&frame(
            0,
            Direction::Unknown,
            1_700_000_001_000_000_000,
            b"",
            0,
        ))
        .unwrap();
        let bytes = sink
            .finish(
                1_700_000_002_000_000_000,
                &[
                    IfaceStats {
                        delivered: 2,
                        dropped: 7,
                    },
                    IfaceStats {
                        delivered: 1,
                        dropped: 0,
                    },
                ],
            )
            .unwrap();

        let mut r = PcapNgReader::new(&bytes[..]).unwrap();
        let mut blocks = Vec::new();
        while let Some(b) = r.next_block() {
            blocks.push(b.unwrap().into_owned());
        }
        assert_eq!(blocks.len(), 2 + 3 + 2);
        let Block::InterfaceDescription(idb) = &blocks[1] else {
            panic!("{:?}", blocks[1])
        };
        assert_eq!(idb.linktype, DataLink::RAW);
        assert_eq!(idb.snaplen, 128);
        assert_eq!(
            idb.options,
            vec![
                InterfaceDescriptionOption::IfName("wg0".into()),
                InterfaceDescriptionOption::IfTsResol(9)
            ]
        );
        let Block::EnhancedPacket(e0) = &blocks[2] else {
            panic!()
        };
        assert_eq!(e0.interface_id, 0);
        assert_eq!(
            e0.timestamp,
            Duration::from_nanos(1_700_000_000_123_456_789)
        );
        assert_eq!(&e0.data[..], b"abcde");
        assert_eq!(e0.options, vec![EnhancedPacketOption::Flags(1)]);
        let Block::EnhancedPacket(e1) = &blocks[3] else {
            panic!()
        };
        assert_eq!(
            (e1.interface_id, e1.original_len, &e1.data[..]),
            (1, 1500, &b"xyz"[..])
        );
        assert_eq!(e1.options, vec![EnhancedPacketOption::Flags(2)]);
        let Block::EnhancedPacket(e2) = &blocks[4] else {
            panic!()
        };
        assert!(e2.options.is_empty());
        let Block::InterfaceStatistics(isb) = &blocks[5] else {
            panic!()
        };
        assert_eq!(isb.interface_id, 0);
        assert_eq!(isb.timestamp, 1_700_000_002_000_000_000);
        assert!(isb
            .options
            .contains(&InterfaceStatisticsOption::IsbIfDrop(7)));
        assert!(isb
            .options
            .contains(&InterfaceStatisticsOption::IsbUsrDeliv(2)));
        let Block::InterfaceStatistics(isb1) = &blocks[6] else {
            panic!()
        };
        assert_eq!(isb1.interface_id, 1);
        assert!(isb1
            .options
            .contains(&InterfaceStatisticsOption::IsbIfDrop(0)));
    }

    #[test]
    fn frame_for_unknown_interface_is_an_error() {
        let ifaces = [IfaceDesc {
            name: "lo".into(),
            link: LinkType::Ethernet,
            snaplen: 0,
        }];
        let mut sink = PcapngSink::new(Vec::new(), &ifaces).unwrap();
        assert!(sink.write(&frame(1, Direction::In, 1, b"a", 1)).is_err());
    }
}
