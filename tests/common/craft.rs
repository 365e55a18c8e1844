//! Captures written frame by frame (etherparse + pcap-file): sessions no real peer of the
//! test bed produces on demand (a refused nested MAIL, a client going on in clear after
//! STARTTLS, a failed TLS handshake). Sequence numbers are kept, so a replay reads each
//! direction in order.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use etherparse::PacketBuilder;
use serde_json::Value;

/// One TCP connection, 10.99.8.1:`client_port` → 10.99.8.2:`server_port`.
pub struct Conv {
    client: ([u8; 4], u16),
    server: ([u8; 4], u16),
    cseq: u32,
    sseq: u32,
    ts: Duration,
    pub packets: Vec<(Duration, Vec<u8>)>,
}

impl Conv {
    /// Opened with its three-way handshake; `start_s` spaces sessions out in time.
    pub fn open(client_port: u16, server_port: u16, start_s: u64) -> Conv {
        let mut c = Conv {
            client: ([10, 99, 8, 1], client_port),
            server: ([10, 99, 8, 2], server_port),
            cseq: 1000,
            sseq: 5000,
            ts: Duration::from_secs(1_700_000_000 + start_s),
            packets: Vec::new(),
        };
        c.packet(true, "S", b"");
        c.cseq += 1;
        c.packet(false, "SA", b"");
        c.sseq += 1;
        c.packet(true, "A", b"");
        c
    }

    fn packet(&mut self, from_client: bool, flags: &str, payload: &[u8]) {
        let ((src, sport), (dst, dport), seq, ack) = if from_client {
            (self.client, self.server, self.cseq, self.sseq)
        } else {
            (self.server, self.client, self.sseq, self.cseq)
        };
        let mut b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4(src, dst, 64)
            .tcp(sport, dport, seq, 65535);
        if flags.contains('S') {
            b = b.syn();
        }
        if flags.contains('A') {
            b = b.ack(ack);
        }
        if flags.contains('F') {
            b = b.fin();
        }
        if flags.contains('P') {
            b = b.psh();
        }
        let mut bytes = Vec::with_capacity(payload.len() + 64);
        b.write(&mut bytes, payload).expect("build packet");
        self.ts += Duration::from_millis(1);
        self.packets.push((self.ts, bytes));
    }

    pub fn client(&mut self, data: &[u8]) -> &mut Self {
        for chunk in data.chunks(1400) {
            self.packet(true, "AP", chunk);
            self.cseq += chunk.len() as u32;
        }
        self
    }

    pub fn server(&mut self, data: &[u8]) -> &mut Self {
        for chunk in data.chunks(1400) {
            self.packet(false, "AP", chunk);
            self.sseq += chunk.len() as u32;
        }
        self
    }

    pub fn close(&mut self) {
        self.packet(true, "AF", b"");
        self.cseq += 1;
        self.packet(false, "AF", b"");
        self.sseq += 1;
        self.packet(true, "A", b"");
    }
}

/// All conversations' packets into one classic pcap, in time order.
pub fn write_pcap(path: &Path, convs: &[Conv]) {
    let mut all: Vec<&(Duration, Vec<u8>)> = convs.iter().flat_map(|c| &c.packets).collect();
    all.sort_by_key(|p| p.0);
    let f = std::io::BufWriter::new(std::fs::File::create(path).expect("create pcap"));
    let mut w = pcap_file::pcap::PcapWriter::new(f).expect("pcap header");
    for (ts, data) in all {
        let p = pcap_file::pcap::PcapPacket::new(*ts, data.len() as u32, data);
        w.write_packet(&p).expect("write packet");
    }
}

/// `mail-trace replay ARGS FILE`: its stdout, which must be UTF-8 and a success.
pub fn replay(args: &[&str], pcap: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_mail-trace"))
        .arg("replay")
        .args(args)
        .arg(pcap)
        .output()
        .expect("run mail-trace replay");
    assert!(
        out.status.success(),
        "replay {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// The `session` records of a `--json` output.
pub fn sessions(json: &str) -> Vec<Value> {
    json.lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("JSON line"))
        .filter(|v| v["type"] == "session")
        .collect()
}
