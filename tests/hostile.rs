//! Hostile peers (issue 17): what anyone who can reach port 25 can send must not reach the
//! operator's terminal raw, end a flow the server kept, or grow the daemon without bound.
//!
//! Captures the test bed's Postfix cannot produce (escapes in replies and in a TLS server
//! name, an out-of-window RST, 10 000 recipients with 10 KB addresses) are written here with
//! etherparse and replayed; the escapes a real client can send go to the real Postfix while
//! `mail-trace tail` watches.
mod common;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use etherparse::{PacketBuilder, TcpOptionElement};
use serde_json::Value;

use common::TempDir;

const ESCAPES: &str = "evil\x1b[2J\x1b]52;c;aGk=\x07";

/// One TCP connection written packet by packet, sequence numbers kept.
struct Conv {
    client: ([u8; 4], u16),
    server: ([u8; 4], u16),
    cseq: u32,
    sseq: u32,
    ts: Duration,
    packets: Vec<(Duration, Vec<u8>)>,
    /// Packets go straight to this file instead (a large capture is not kept in memory: the
    /// replay's peak RSS, measured from its fork, would count it).
    stream: Option<Writer>,
}

type Writer = pcap_file::pcap::PcapWriter<std::io::BufWriter<std::fs::File>>;

fn writer(path: &Path) -> Writer {
    let f = std::io::BufWriter::new(std::fs::File::create(path).expect("create pcap"));
    pcap_file::pcap::PcapWriter::new(f).expect("pcap header")
}

impl Conv {
    fn new(client_port: u16, server_port: u16) -> Conv {
        Conv {
            client: ([10, 99, 7, 1], client_port),
            server: ([10, 99, 7, 2], server_port),
            cseq: 1000,
            sseq: 5000,
            ts: Duration::from_secs(1_700_000_000),
            packets: Vec::new(),
            stream: None,
        }
    }

    fn packet(&mut self, from_client: bool, flags: &str, seq: u32, payload: &[u8]) {
        let ((src, sport), (dst, dport)) = if from_client {
            (self.client, self.server)
        } else {
            (self.server, self.client)
        };
        let ack = if from_client { self.sseq } else { self.cseq };
        let mut b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4(src, dst, 64)
            .tcp(sport, dport, seq, 65535);
        if flags.contains('S') {
            b = b.syn();
        }
        if flags.contains('A') {
            b = b.ack(ack);
        }
        if flags.contains('R') {
            b = b.rst();
        }
        if flags.contains('F') {
            b = b.fin();
        }
        if flags.contains('P') {
            b = b.psh();
        }
        if flags.contains('S') {
            b = b
                .options(&[TcpOptionElement::WindowScale(7)])
                .expect("tcp options");
        }
        let mut bytes = Vec::with_capacity(payload.len() + 64);
        b.write(&mut bytes, payload).expect("build packet");
        self.ts += Duration::from_micros(100);
        match &mut self.stream {
            Some(w) => {
                let p = pcap_file::pcap::PcapPacket::new(self.ts, bytes.len() as u32, &bytes);
                w.write_packet(&p).expect("write packet");
            }
            None => self.packets.push((self.ts, bytes)),
        }
    }

    fn handshake(&mut self) {
        self.packet(true, "S", self.cseq, b"");
        self.cseq += 1;
        self.packet(false, "SA", self.sseq, b"");
        self.sseq += 1;
        self.packet(true, "A", self.cseq, b"");
    }

    fn client(&mut self, data: &[u8]) {
        for chunk in data.chunks(1400) {
            self.packet(true, "AP", self.cseq, chunk);
            self.cseq += chunk.len() as u32;
        }
    }

    fn server(&mut self, data: &[u8]) {
        for chunk in data.chunks(1400) {
            self.packet(false, "AP", self.sseq, chunk);
            self.sseq += chunk.len() as u32;
        }
        // The client's ACK: the window the server's RSTs are checked against.
        self.packet(true, "A", self.cseq, b"");
    }

    fn close(&mut self) {
        self.packet(true, "AF", self.cseq, b"");
        self.cseq += 1;
        self.packet(false, "AF", self.sseq, b"");
        self.sseq += 1;
        self.packet(true, "A", self.cseq, b"");
    }
}

fn write_pcap(path: &Path, convs: &[&Conv]) {
    let mut all: Vec<&(Duration, Vec<u8>)> = convs.iter().flat_map(|c| &c.packets).collect();
    all.sort_by_key(|p| p.0);
    let mut w = writer(path);
    for (ts, data) in all {
        let p = pcap_file::pcap::PcapPacket::new(*ts, data.len() as u32, data);
        w.write_packet(&p).expect("write packet");
    }
}

fn replay(args: &[&str], file: &Path) -> (String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_mail-trace"))
        .arg("replay")
        .args(args)
        .arg(file)
        .output()
        .expect("run mail-trace replay");
    let (stdout, stderr) = (
        String::from_utf8(out.stdout).expect("UTF-8 output"),
        String::from_utf8_lossy(&out.stderr).to_string(),
    );
    assert!(out.status.success(), "replay {args:?}: {stderr}");
    (stdout, stderr)
}

/// Characters a terminal would act on: C0 (but the newline ending each line), DEL, C1, and
/// the bidirectional overrides.
fn terminal_controls(text: &str) -> Vec<char> {
    text.chars()
        .filter(|&c| {
            (c.is_control() && c != '\n')
                || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
        })
        .collect()
}

fn sessions(json: &str) -> Vec<Value> {
    json.lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("JSON line"))
        .filter(|v| v["type"] == "session")
        .collect()
}

fn b64(s: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// A TLS 1.2 ClientHello record whose server name is `sni`, as sent.
fn client_hello(sni: &[u8]) -> Vec<u8> {
    let mut name = vec![0u8];
    name.extend((sni.len() as u16).to_be_bytes());
    name.extend(sni);
    let mut list = (name.len() as u16).to_be_bytes().to_vec();
    list.extend(name);
    let mut ext = vec![0, 0];
    ext.extend((list.len() as u16).to_be_bytes());
    ext.extend(list);
    let mut body = vec![3, 3];
    body.extend([7u8; 32]);
    body.push(0); // no session id
    body.extend([0, 2, 0xc0, 0x2f]); // one cipher suite
    body.extend([1, 0]); // null compression
    body.extend((ext.len() as u16).to_be_bytes());
    body.extend(ext);
    let mut hs = vec![1];
    hs.extend(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend(body);
    let mut rec = vec![0x16, 3, 1];
    rec.extend((hs.len() as u16).to_be_bytes());
    rec.extend(hs);
    rec
}

#[test]
fn escapes_from_either_peer_are_shown_printable_and_kept_exact_in_json() {
    let tmp = TempDir::new("hostile-esc");
    let mut c = Conv::new(40001, 25);
    c.handshake();
    c.server(b"220 mx.test\x1b]0;owned\x07 ESMTP\r\n");
    c.client(format!("EHLO {ESCAPES}\r\n").as_bytes());
    c.server(b"250-mx.test\r\n250-PIPE\x1b[8mLINING\r\n250 AUTH PLAIN\r\n");
    // A user name with an escape; a reply that echoes the client's secret response.
    let ir = b64(b"\0ev\x1b[2Kil\0Secr3t-Pa55");
    c.client(format!("AUTH PLAIN {ir}\r\n").as_bytes());
    c.server(format!("535 5.7.8 Error: authentication failed: {ir}\r\n").as_bytes());
    c.client(b"MAIL FROM:<a\x1b[31m@x.test>\r\n");
    c.server(b"250 2.1.0 Ok\x1b[1A\x1b[2K\r\n");
    c.client("RCPT TO:<\u{9b}2J\u{202e}b@x.test>\r\n".as_bytes());
    c.server(b"550 5.1.1 <\x1b[2Jb>: Recipient address rejected\r\n");
    c.client(b"DATA\r\n");
    c.server(b"354 go ahead\r\n");
    c.client(b"Subject: x\r\n\r\nhi\r\n.\r\n");
    c.server(b"250 2.0.0 Ok: queued as 4ABC123 \x1b]52;c;aGk=\x07\r\n");
    c.client(b"QUIT\r\n");
    c.server(b"221 2.0.0 Bye\r\n");
    c.close();
    // Implicit TLS: the server name is whatever the client wrote.
    let mut t = Conv::new(40002, 465);
    t.ts = c.ts + Duration::from_secs(1);
    t.handshake();
    t.client(&client_hello(b"mx\x1b]52;c;aGk=\x07.test"));
    t.close();
    let pcap = tmp.path().join("escapes.pcap");
    write_pcap(&pcap, &[&c, &t]);

    let (tail, _) = replay(&["--color", "never"], &pcap);
    assert_eq!(terminal_controls(&tail), Vec::<char>::new(), "{tail}");
    for shown in [
        "C EHLO evil\\x1b[2J\\x1b]52;c;aGk=\\x07",
        "S 220 mx.test\\x1b]0;owned\\x07 ESMTP",
        "S 250 mx.test [PIPE\\x1b[8mLINING AUTH=PLAIN]",
        "C MAIL FROM:<a\\x1b[31m@x.test>",
        "S 250 2.1.0 Ok\\x1b[1A\\x1b[2K",
        "C RCPT TO:<\\u{9b}2J\\u{202e}b@x.test>",
        "S 550 5.1.1 <\\x1b[2Jb>: Recipient address rejected",
        "auth ev\\x1b[2Kil FAILED (535)",
        "tls implicit (mx\\x1b]52;c;aGk=\\x07.test)",
        // The reply echoing the SASL response shows it redacted.
        "S 535 5.7.8 Error: authentication failed: <redacted>",
    ] {
        assert!(tail.contains(shown), "{shown:?} missing from\n{tail}");
    }
    assert!(!tail.contains("Secr3t") && !tail.contains(&ir), "{tail}");

    let (summary, _) = replay(&["--summary"], &pcap);
    assert_eq!(terminal_controls(&summary), Vec::<char>::new(), "{summary}");
    assert!(
        summary.contains(" evil\\x1b[2J\\x1b]52;c;aGk=\\x07 | "),
        "{summary}"
    );

    // JSON keeps the exact text: serde_json's escapes make it one clean line all the same.
    let (json, _) = replay(&["--json", "--events"], &pcap);
    assert!(
        !json.bytes().any(|b| b < 0x20 && b != b'\n'),
        "a raw control byte in JSON"
    );
    assert!(json.contains(r#""helo":"evil\u001b[2J\u001b]52;c;aGk=\u0007""#));
    let recs = sessions(&json);
    assert_eq!(recs[0]["helo"], ESCAPES);
    assert_eq!(recs[0]["auth"]["user"], "ev\x1b[2Kil");
    assert_eq!(recs[0]["transactions"][0]["mail_from"], "a\x1b[31m@x.test");
    assert_eq!(
        recs[1]["tls_info"]["sni"], "mx\x1b]52;c;aGk=\x07.test",
        "{}",
        recs[1]
    );
    assert!(!json.contains("Secr3t") && !json.contains(&ir));

    // A log line with escapes, joined to the session by its queue id: printable too.
    let log = tmp.path().join("mail.log");
    std::fs::write(
        &log,
        "2023-11-14T22:13:20.500000+00:00 mx postfix/smtp[123]: 4ABC123: to=<b\x1b[2J@x.test>, \
         relay=none, delay=0.1, delays=0/0/0/0.1, dsn=5.0.0, status=bounced (evil\x1b]52;c;aGk=\x07)\n",
    )
    .unwrap();
    let (joined, _) = replay(
        &["--color", "never", &format!("--maillog={}", log.display())],
        &pcap,
    );
    assert_eq!(terminal_controls(&joined), Vec::<char>::new(), "{joined}");
    assert!(
        joined.contains(" log: postfix/smtp[123] 4ABC123 delivery: status=bounced"),
        "{joined}"
    );
    assert!(joined.contains("b\\x1b[2J@x.test"), "{joined}");

    // `why` over the saved JSON (its run line skipped) tells the story printable.
    let saved = tmp.path().join("saved.jsonl");
    std::fs::write(&saved, &json).unwrap();
    let why = Command::new(env!("CARGO_BIN_EXE_mail-trace"))
        .args(["why", "4ABC123", "--json"])
        .arg(&saved)
        .output()
        .expect("run why");
    let story = String::from_utf8(why.stdout).unwrap();
    assert_eq!(why.status.code(), Some(0), "{story}");
    assert_eq!(terminal_controls(&story), Vec::<char>::new(), "{story}");
    for shown in [
        "helo evil\\x1b[2J\\x1b]52;c;aGk=\\x07",
        "MAIL FROM:<a\\x1b[31m@x.test>",
        "RCPT TO:<\\u{9b}2J\\u{202e}b@x.test> -> 550 5.1.1 <\\x1b[2Jb>",
        "end of data -> 250 2.0.0 Ok: queued as 4ABC123 \\x1b]52;c;aGk=\\x07",
    ] {
        assert!(story.contains(shown), "{shown:?} missing from\n{story}");
    }
}

#[test]
fn pop3_and_imap_text_goes_through_the_same_boundary() {
    let tmp = TempDir::new("hostile-mbox");
    let mut p = Conv::new(40006, 110);
    p.handshake();
    p.server(b"+OK POP3 \x1b]52;c;aGk=\x07ready\r\n");
    p.client(b"USER ev\x1b[2Jil\r\n");
    p.server(b"+OK\r\n");
    p.client(b"QUIT\r\n");
    p.server(b"+OK bye\r\n");
    p.close();
    let mut i = Conv::new(40007, 143);
    i.ts = p.ts + Duration::from_secs(1);
    i.handshake();
    i.server(b"* OK IMAP \x1b[2J ready\r\n");
    i.client(b"a1 LOGIN m\x1b[8mallory pw\r\n");
    i.server(b"a1 NO [AUTHENTICATIONFAILED] no \x1b[1A\r\n");
    i.close();
    let pcap = tmp.path().join("mbox.pcap");
    write_pcap(&pcap, &[&p, &i]);
    let (tail, _) = replay(&["--color", "never"], &pcap);
    assert_eq!(terminal_controls(&tail), Vec::<char>::new(), "{tail}");
    for shown in [
        "S +OK POP3 \\x1b]52;c;aGk=\\x07ready",
        "C USER ev\\x1b[2Jil",
        "auth m\\x1b[8mallory FAILED (NO)",
        "C LOGIN m\\x1b[8mallory <redacted>",
        "S NO [AUTHENTICATIONFAILED] no \\x1b[1A",
    ] {
        assert!(tail.contains(shown), "{shown:?} missing from\n{tail}");
    }
    // The records keep the text as sent, as SMTP's do (until issue 17 POP3 and IMAP replaced
    // control characters with U+FFFD in the record itself).
    let (json, _) = replay(&["--json"], &pcap);
    let recs = sessions(&json);
    let pop = recs.iter().find(|r| r["proto"] == "pop3").expect("pop3");
    assert_eq!(pop["user"], "ev\x1b[2Jil", "{pop}");
    let imap = recs.iter().find(|r| r["proto"] == "imap").expect("imap");
    assert_eq!(imap["auth"]["user"], "m\x1b[8mallory", "{imap}");
}

#[test]
fn a_rst_outside_the_servers_window_does_not_end_the_session() {
    let tmp = TempDir::new("hostile-rst");
    let mut c = Conv::new(40003, 25);
    c.handshake();
    c.server(b"220 mx.test ESMTP\r\n");
    c.client(b"EHLO client.test\r\n");
    c.server(b"250 mx.test\r\n");
    // Behind what the server acknowledged, then past its window (65535 << 7): it ignores both.
    let behind = c.cseq.wrapping_sub(10);
    c.packet(true, "R", behind, b"");
    let beyond = c.cseq.wrapping_add(65535 << 7).wrapping_add(1);
    c.packet(true, "R", beyond, b"");
    c.client(b"MAIL FROM:<hidden@client.test>\r\n");
    c.server(b"250 2.1.0 Ok\r\n");
    c.client(b"QUIT\r\n");
    c.server(b"221 2.0.0 Bye\r\n");
    c.close();
    let pcap = tmp.path().join("rst.pcap");
    write_pcap(&pcap, &[&c]);
    let (json, _) = replay(&["--json", "--events"], &pcap);
    let recs = sessions(&json);
    assert_eq!(recs.len(), 1, "{json}");
    let r = &recs[0];
    assert_eq!(r["close"], "fin", "{r}");
    assert_eq!(r["transactions"][0]["mail_from"], "hidden@client.test");
    assert_eq!(r["anomalies"], serde_json::json!(["rst-out-of-window"]));
    let anomalies = json
        .lines()
        .filter(|l| l.contains(r#""type":"anomaly""#) && l.contains("rst-out-of-window"))
        .count();
    assert_eq!(anomalies, 2, "{json}");
    // An in-window RST still ends it.
    let mut d = Conv::new(40004, 25);
    d.handshake();
    d.server(b"220 mx.test ESMTP\r\n");
    d.client(b"EHLO client.test\r\n");
    let at = d.cseq + 100;
    d.packet(true, "R", at, b"");
    let pcap = tmp.path().join("rst-ok.pcap");
    write_pcap(&pcap, &[&d]);
    let (json, _) = replay(&["--json"], &pcap);
    assert_eq!(sessions(&json)[0]["close"], "rst", "{json}");
}

/// 10 000 RCPTs with 10 KB addresses on one connection — 2000 in the first transaction,
/// 1000 in each of eight more — then 1000 and 500 short ones: one unauthenticated client
/// trying to grow the tracer (unbounded, the long ones alone would be 80 MB of records).
fn flood(pcap: &Path) {
    let mut c = Conv::new(40005, 25);
    c.stream = Some(writer(pcap));
    c.handshake();
    c.server(b"220 mx.test ESMTP\r\n");
    c.client(b"EHLO flood.test\r\n");
    c.server(b"250 mx.test\r\n");
    let long = "x".repeat(10 * 1024);
    let mut plan = vec![(2000, long.as_str())];
    plan.extend([(1000, long.as_str()); 8]);
    plan.extend([(1000, ""), (500, "")]);
    for (t, (n, tail)) in plan.into_iter().enumerate() {
        c.client(format!("MAIL FROM:<f{t}@flood.test>\r\n").as_bytes());
        c.server(b"250 2.1.0 Ok\r\n");
        for i in 0..n {
            c.client(format!("RCPT TO:<{i}{tail}@flood.test>\r\n").as_bytes());
            c.server(b"250 2.1.5 Ok\r\n");
        }
        c.client(b"RSET\r\n");
        c.server(b"250 2.0.0 Ok\r\n");
    }
    c.client(b"QUIT\r\n");
    c.server(b"221 2.0.0 Bye\r\n");
    c.close();
}

/// Runs replay with stdout to a file, returning (peak RSS KiB, stdout, stderr).
#[expect(
    clippy::zombie_processes,
    reason = "reaped by wait4, which also gives the rusage"
)]
fn replay_measured(args: &[&str], file: &Path, dir: &Path) -> (u64, String, String) {
    let (out, err) = (dir.join("out.json"), dir.join("err.txt"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_mail-trace"))
        .arg("replay")
        .args(args)
        .arg(file)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .expect("spawn replay");
    let pid = child.id() as libc::pid_t;
    let deadline = Instant::now() + Duration::from_secs(600);
    let (status, ru) = loop {
        let mut status = 0;
        // SAFETY: plain data filled in by wait4 for our own child; WNOHANG never blocks.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut ru) };
        assert!(r >= 0, "wait4");
        if r == pid {
            break (status, ru);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("replay still running after 600 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stderr = std::fs::read_to_string(&err).unwrap_or_default();
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "{stderr}"
    );
    (
        ru.ru_maxrss as u64,
        std::fs::read_to_string(&out).unwrap(),
        stderr,
    )
}

#[test]
fn a_recipient_flood_is_capped_and_counted() {
    let tmp = TempDir::new("hostile-flood");
    let pcap = tmp.path().join("flood.pcap");
    flood(&pcap);
    let (rss_kib, json, _) = replay_measured(&["--json"], &pcap, tmp.path());
    let recs = sessions(&json);
    assert_eq!(recs.len(), 1);
    let r = &recs[0];
    let txs = r["transactions"].as_array().unwrap();
    assert_eq!(txs.len(), 11);
    let rcpts: Vec<usize> = txs
        .iter()
        .map(|t| t["rcpt"].as_array().unwrap().len())
        .collect();
    // The per-transaction cap (1000) in the first, the session's (10 000) in the last.
    assert_eq!(
        rcpts,
        [1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000, 0]
    );
    let addr = txs[0]["rcpt"][0]["addr"].as_str().unwrap();
    assert_eq!(addr.len(), 256, "cut at MAX_ADDR");
    assert!(addr.starts_with("0xxx"));
    assert_eq!(txs[0]["rcpt"][0]["code"], 250);
    assert_eq!(
        r["not_recorded"],
        serde_json::json!({"transactions": 0, "recipients": 1500, "addresses_cut": 9000})
    );
    let mut anomalies: Vec<&str> = r["anomalies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    anomalies.sort_unstable();
    assert!(anomalies.contains(&"too-many-recipients"), "{anomalies:?}");
    assert!(anomalies.contains(&"address-too-long"), "{anomalies:?}");
    // Bounded: the record holds 10 000 recipients of at most 256 bytes (main before the caps
    // peaked at over 100 MiB on this capture: 8 KiB per long recipient).
    assert!(rss_kib < 64 << 10, "peak RSS {rss_kib} KiB");

    // A global budget smaller than what the session holds: it is evicted, said so, counted.
    let (_, json, stderr) = replay_measured(&["--json", "--max-held", "1M"], &pcap, tmp.path());
    let recs = sessions(&json);
    assert_eq!(recs[0]["close"], "evicted", "{}", recs[0]);
    assert!(
        stderr.contains("sessions evicted (together they held more than --max-held 1048576 bytes)"),
        "{stderr}"
    );
}

#[test]
fn a_closed_stderr_or_stdout_is_a_clean_exit_not_a_panic() {
    // A pipe whose reader is gone: every write gets EPIPE (SIGPIPE is ignored by Rust).
    let closed = || {
        let mut fds = [0; 2];
        // SAFETY: fds has room for the two descriptors pipe(2) returns.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: fds[0] is ours and not used again.
        unsafe { libc::close(fds[0]) };
        // SAFETY: fds[1] is an open descriptor we own from here on.
        Stdio::from(unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fds[1]) })
    };
    let run = |args: &[&str], out: Stdio, err: Stdio| {
        Command::new(env!("CARGO_BIN_EXE_mail-trace"))
            .args(args)
            .stdout(out)
            .stderr(err)
            .status()
            .expect("run mail-trace")
    };
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/testbed/plain_25.pcapng")
        .display()
        .to_string();
    // An error message (exit 2 for a missing file), not a panic (101).
    let st = run(&["replay", "/nonexistent.pcap"], Stdio::null(), closed());
    assert_eq!(st.code(), Some(2));
    // The message, into a closed stderr, and records into a closed stdout.
    let st = run(
        &["replay", "--json", "/nonexistent.pcap", &fixture],
        closed(),
        closed(),
    );
    assert_eq!(st.code(), Some(2));
    let st = run(&["why", "X", "--json", "/nonexistent"], closed(), closed());
    assert_eq!(st.code(), Some(1));
}

/// The escapes a real client can send, to the test bed's Postfix, with the tail watching.
#[test]
fn a_hostile_client_leaves_no_control_byte_in_the_live_tail() {
    common::require_root("a_hostile_client_leaves_no_control_byte_in_the_live_tail");
    let tmp = TempDir::new("hostile-live");
    let tb = common::Testbed::start();
    let iface = tb.ns.host_if.clone();
    let human = common::tailer::Tail::start(&iface, &["--color", "never"], tmp.path(), "human");
    let summary = common::tailer::Tail::start(&iface, &["--summary"], tmp.path(), "summary");
    let json = common::tailer::Tail::start(&iface, &["--json"], tmp.path(), "json");
    let server: IpAddr = tb.ns.server_v4().into();
    let mut c = common::clients::RawSmtp::connect(SocketAddr::new(server, 25));
    let client = c.local;
    c.cmd(&format!("EHLO {ESCAPES}"));
    c.cmd("MAIL FROM:<x\x1b[2J\x1b]52;c;aGk=\x07@client.test>");
    c.cmd("RCPT TO:<bob\x1b[8m@mx.test>");
    c.cmd("NOOP \x1b[1A\x1b[2K\x7f");
    c.quit();
    let rec = json.session(client);
    assert_eq!(rec["helo"], ESCAPES, "{rec}");
    assert_eq!(
        rec["transactions"][0]["mail_from"],
        "x\x1b[2J\x1b]52;c;aGk=\x07@client.test"
    );
    let human = human.stop().stdout;
    let summary = summary.stop().stdout;
    json.stop();
    for (what, out) in [("tail", &human), ("--summary", &summary)] {
        assert_eq!(terminal_controls(out), Vec::<char>::new(), "{what}: {out}");
        assert!(
            out.contains("evil\\x1b[2J\\x1b]52;c;aGk=\\x07"),
            "{what}: {out}"
        );
    }
    assert!(human.contains("C NOOP \\x1b[1A\\x1b[2K\\x7f"), "{human}");
    assert!(
        human.contains("C MAIL FROM:<x\\x1b[2J\\x1b]52;c;aGk=\\x07@client.test>"),
        "{human}"
    );
}

/// The client's next sequence number on a connected socket, read in TCP repair mode (root).
fn next_seq(s: &std::net::TcpStream) -> u32 {
    use std::os::fd::AsRawFd;
    let fd = s.as_raw_fd();
    let set = |opt: libc::c_int, v: libc::c_int| {
        // SAFETY: a valid socket and a c_int option value of the right size.
        let r = unsafe {
            libc::setsockopt(
                fd,
                libc::IPPROTO_TCP,
                opt,
                (&v as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(
            r,
            0,
            "setsockopt {opt}: {}",
            std::io::Error::last_os_error()
        );
    };
    set(libc::TCP_REPAIR, 1);
    set(libc::TCP_REPAIR_QUEUE, 2); // TCP_SEND_QUEUE
    let mut seq: u32 = 0;
    let mut len = std::mem::size_of::<u32>() as libc::socklen_t;
    // SAFETY: seq and len are valid for getsockopt to fill in.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_QUEUE_SEQ,
            (&mut seq as *mut u32).cast(),
            &mut len,
        )
    };
    assert_eq!(r, 0, "TCP_QUEUE_SEQ: {}", std::io::Error::last_os_error());
    set(libc::TCP_REPAIR, 0);
    seq
}

/// Sends one RST from `from` to `to` at `seq` through a raw socket (IP_HDRINCL).
fn raw_rst(from: std::net::SocketAddrV4, to: std::net::SocketAddrV4, seq: u32) {
    let mut pkt = Vec::new();
    PacketBuilder::ipv4(from.ip().octets(), to.ip().octets(), 64)
        .tcp(from.port(), to.port(), seq, 0)
        .rst()
        .write(&mut pkt, &[])
        .expect("build RST");
    // SAFETY: plain socket(2); the descriptor is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
    assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
    let sa = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(to.ip().octets()),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: pkt and sa are valid for the lengths given.
    let n = unsafe {
        libc::sendto(
            fd,
            pkt.as_ptr().cast(),
            pkt.len(),
            0,
            (&sa as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    // SAFETY: fd is ours.
    unsafe { libc::close(fd) };
    assert_eq!(
        n,
        pkt.len() as isize,
        "sendto: {}",
        std::io::Error::last_os_error()
    );
}

/// A hostile client of the real Postfix sends RSTs outside the window (which Postfix's kernel
/// ignores) and goes on with its session: the tail must not end the session there.
#[test]
fn out_of_window_rsts_against_postfix_do_not_hide_the_rest_of_the_session() {
    use std::io::{BufRead, BufReader, Write};
    common::require_root("out_of_window_rsts_against_postfix_do_not_hide_the_rest_of_the_session");
    let tmp = TempDir::new("hostile-rst-live");
    let tb = common::Testbed::start();
    let json =
        common::tailer::Tail::start(&tb.ns.host_if, &["--json", "--events"], tmp.path(), "json");
    let server = std::net::SocketAddrV4::new(tb.ns.server_v4(), 25);
    let s = std::net::TcpStream::connect_timeout(&server.into(), Duration::from_secs(10))
        .expect("connect to Postfix");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let local = match s.local_addr().unwrap() {
        SocketAddr::V4(a) => a,
        other => panic!("{other}"),
    };
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut w = s.try_clone().unwrap();
    // One reply (all its lines); its code.
    let mut reply = || -> String {
        loop {
            let mut l = String::new();
            r.read_line(&mut l).expect("read reply");
            if l.len() < 4 || l.as_bytes()[3] != b'-' {
                return l.get(..3).unwrap_or("").to_string();
            }
        }
    };
    assert_eq!(reply(), "220");
    w.write_all(b"EHLO client.test\r\n").unwrap();
    assert_eq!(reply(), "250");
    let seq = next_seq(&s);
    raw_rst(local, server, seq.wrapping_sub(70_000)); // behind what Postfix acknowledged
    raw_rst(local, server, seq.wrapping_add(1 << 31)); // far past any window
    std::thread::sleep(Duration::from_millis(200));
    w.write_all(b"MAIL FROM:<after-rst@client.test>\r\n")
        .unwrap();
    assert_eq!(reply(), "250", "Postfix ignored the RSTs");
    w.write_all(b"QUIT\r\n").unwrap();
    assert_eq!(reply(), "221");
    // Closes every clone of the socket (the reader's too): the FINs end the session.
    s.shutdown(std::net::Shutdown::Both).unwrap();
    let rec = json.session(SocketAddr::V4(local));
    assert_eq!(rec["close"], "fin", "{rec}");
    assert_eq!(
        rec["transactions"][0]["mail_from"], "after-rst@client.test",
        "{rec}"
    );
    assert!(
        rec["anomalies"]
            .as_array()
            .unwrap()
            .contains(&"rst-out-of-window".into()),
        "{rec}"
    );
    let out = json.stop().stdout;
    let rsts = out
        .lines()
        .filter(|l| l.contains(r#""type":"anomaly""#) && l.contains("rst-out-of-window"))
        .count();
    assert_eq!(rsts, 2, "{out}");
}
