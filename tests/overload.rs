//! Overload (issue 8): a kernel ring far too small for a burst, and a SYN flood far beyond
//! `--max-sessions`. Root, a namespace and veth the test creates; every load bounded in count
//! and time.
//!
//! The truth for the burst is tcpdump's own capture of the same veth with a large buffer (it
//! must drop nothing): per connection and direction, the stream length is the highest
//! relative sequence number a data segment reached.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::clients::{swaks, RawSmtp};
use common::netns::NetNs;
use common::tailer::Tail;
use common::{pid_alive, run, run_ok, signal, wait_child, wait_for, TempDir};
use serde_json::Value;

/// smtp-sink in the namespace on the server address, port 25; killed on drop.
struct Sink(Child);

impl Sink {
    fn start(ns: &NetNs) -> Sink {
        let child = ns
            .exec("smtp-sink")
            .args(["-u", "nobody", &format!("{}:25", ns.server_v4()), "256"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn smtp-sink");
        let sink = Sink(child);
        let addr = SocketAddr::from((ns.server_v4(), 25));
        wait_for(Duration::from_secs(10), "smtp-sink listening", || {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()
        });
        sink
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        // `ip netns exec` execs smtp-sink: this pid is smtp-sink itself.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// tcpdump writing port-25 TCP on `iface` to a file with a 64 MiB buffer.
struct Tcpdump {
    child: Option<Child>,
    file: PathBuf,
    err: PathBuf,
}

impl Tcpdump {
    fn start(iface: &str, dir: &Path) -> Tcpdump {
        let file = dir.join("truth.pcap");
        let err = dir.join("tcpdump.stderr");
        let child = Command::new("tcpdump")
            .args(["-i", iface, "-B", "65536", "-s", "0", "-U", "-w"])
            .arg(&file)
            .args(["tcp", "port", "25"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&err).expect("tcpdump stderr"))
            .spawn()
            .expect("spawn tcpdump");
        let t = Tcpdump {
            child: Some(child),
            file,
            err,
        };
        wait_for(Duration::from_secs(20), "tcpdump listening", || {
            t.stderr().contains("listening on").then_some(())
        });
        t
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }

    /// Waits until tcpdump has written its backlog (with `-U` the file grows per packet,
    /// and a SIGINT would leave what its buffer still holds unwritten), then SIGINT; returns
    /// the file once tcpdump said it dropped nothing.
    fn stop(mut self) -> PathBuf {
        let size = || std::fs::metadata(&self.file).map_or(0, |m| m.len());
        let mut last = u64::MAX;
        wait_for(Duration::from_secs(60), "tcpdump to catch up", || {
            std::thread::sleep(Duration::from_millis(700));
            let now = size();
            let still = now == last;
            last = now;
            still.then_some(())
        });
        let mut child = self.child.take().expect("tcpdump running");
        signal(child.id(), libc::SIGINT);
        wait_child(&mut child, Duration::from_secs(20)).expect("tcpdump exits on SIGINT");
        let err = self.stderr();
        assert!(
            err.contains("\n0 packets dropped by kernel"),
            "the reference capture must be complete: {err}"
        );
        self.file.clone()
    }
}

impl Drop for Tcpdump {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Stream lengths `[client→server, server→client]` by client port, from tshark's relative
/// sequence numbers (a retransmission cannot inflate them).
fn truth(file: &Path) -> BTreeMap<u16, [u64; 2]> {
    let rows = common::tshark::fields(
        file,
        &["tcp.srcport", "tcp.dstport", "tcp.len", "tcp.nxtseq"],
    );
    let mut len = BTreeMap::new();
    for f in &rows {
        let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
        let (Some(sp), Some(dp), Some(n)) = (num(0), num(1), num(2)) else {
            continue;
        };
        let (port, dir) = if dp == 25 { (sp, 0) } else { (dp, 1) };
        let e: &mut [u64; 2] = len.entry(port as u16).or_default();
        if n > 0 {
            let next = num(3).expect("tcp.nxtseq of a data segment");
            e[dir] = e[dir].max(next - 1);
        }
    }
    len
}

/// The number before `what` in the exit summary ("… 17 records lost").
fn summary_count(stderr: &str, what: &str) -> u64 {
    let line = stderr
        .lines()
        .rfind(|l| l.contains(what))
        .unwrap_or_else(|| panic!("no {what:?} in {stderr}"));
    let before = &line[..line.find(what).expect("found")];
    before
        .rsplit(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count before {what:?} in {line}"))
}

/// One gentle session: every byte each way known, so the record can be held to it exactly.
struct Gentle {
    client: SocketAddr,
    sent: u64,
    received: u64,
    replies: usize,
}

fn gentle_session(server: SocketAddr, n: usize) -> Gentle {
    let mut c = RawSmtp::connect(server);
    let client = c.local;
    assert_eq!(c.cmd("EHLO gentle.test").code, 250);
    assert_eq!(c.cmd(&format!("MAIL FROM:<g{n}@client.test>")).code, 250);
    assert_eq!(c.cmd("RCPT TO:<rcpt@mx.test>").code, 250);
    assert_eq!(c.cmd("DATA").code, 354);
    // Small writes: each fits the small ring whole.
    for i in 0..20 {
        c.send(format!("line {i:02} of a message sent after the burst.\r\n").as_bytes());
    }
    c.send(b".\r\n");
    assert_eq!(c.read_reply().code, 250);
    let (replies, sent) = c.finish();
    let received = replies
        .iter()
        .flat_map(|r| &r.lines)
        .map(|l| l.len() as u64 + 2)
        .sum();
    Gentle {
        client,
        sent: sent.len() as u64,
        received,
        replies: replies.len(),
    }
}

fn assert_complete(rec: &Value, g: &Gentle, n: usize) {
    let want = serde_json::json!({
        "partial": false, "gaps": 0, "close": "fin", "anomalies": [],
        "helo": "gentle.test", "commands": 5, "replies": g.replies,
        "bytes": {"c": g.sent, "s": g.received},
    });
    common::tailer::assert_fields(rec, &want);
    let tx = &rec["transactions"];
    assert_eq!(tx.as_array().map(Vec::len), Some(1), "{rec}");
    assert_eq!(tx[0]["mail_from"], format!("g{n}@client.test"), "{rec}");
    assert_eq!(tx[0]["rcpt"][0]["addr"], "rcpt@mx.test", "{rec}");
    assert_eq!(tx[0]["reply"]["code"], 250, "{rec}");
}

/// Sessions in the burst: 20 at a time, 300 kB each, over a 256 KiB ring.
const BURST_SESSIONS: usize = 60;

#[test]
fn a_burst_over_a_small_ring_is_lost_as_gaps_on_exactly_the_sessions_hit() {
    common::require_root("a_burst_over_a_small_ring_is_lost_as_gaps_on_exactly_the_sessions_hit");
    let dir = TempDir::new("burst");
    let ns = NetNs::new();
    let _sink = Sink::start(&ns);
    let dump = Tcpdump::start(&ns.host_if, dir.path());
    let tail = Tail::start(
        &ns.host_if,
        &["--json", "--ring-size", "256K"],
        dir.path(),
        "burst",
    );
    let server = SocketAddr::from((ns.server_v4(), 25));
    let m = BURST_SESSIONS.to_string();
    run_ok(
        Command::new("smtp-source").args([
            "-s",
            "20",
            "-m",
            &m,
            "-l",
            "300000",
            "-f",
            "burst@client.test",
            "-t",
            "rcpt@mx.test",
            "-M",
            "client.test",
            &server.to_string(),
        ]),
        Duration::from_secs(60),
        "smtp-source burst",
    );
    assert!(
        pid_alive(tail.pid()),
        "tail died in the burst: {}",
        tail.stderr()
    );

    // After the burst: sessions the small ring carries whole, once the reader has caught
    // up with the backlog (its output stops growing; sessions whose end was lost stay open).
    let mut last = usize::MAX;
    wait_for(Duration::from_secs(60), "tail to catch up", || {
        std::thread::sleep(Duration::from_millis(700));
        let now = tail.stdout().len();
        let still = now == last;
        last = now;
        still.then_some(())
    });
    let gentle: Vec<Gentle> = (0..3).map(|n| gentle_session(server, n)).collect();
    for (n, g) in gentle.iter().enumerate() {
        let rec = tail.session(g.client);
        assert_complete(&rec, g, n);
    }
    let stopped = tail.stop();
    let file = dump.stop();

    let lost_records = summary_count(&stopped.stderr, " records lost");
    assert!(lost_records > 0, "the ring overflowed: {}", stopped.stderr);
    let records: Vec<Value> = stopped
        .stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|r| r["type"] == "session")
        .collect();
    let by_client: BTreeMap<String, &Value> = records
        .iter()
        .map(|r| (r["client"].as_str().unwrap_or("").to_string(), r))
        .collect();
    assert_eq!(by_client.len(), records.len(), "one record per connection");
    let gentle_ports: Vec<u16> = gentle.iter().map(|g| g.client.port()).collect();
    let streams = truth(&file);
    // The readiness probe of the sink ran before both captures.
    assert_eq!(streams.len(), BURST_SESSIONS + gentle.len(), "{streams:?}");
    let (mut hit, mut whole, mut unseen, mut summed_gaps) = (0, 0, 0, 0);
    for (&port, &[c, s]) in &streams {
        let key = SocketAddr::from((ns.client_v4(), port)).to_string();
        // Every packet of a session can be lost (a slow reader): then there is no record.
        let Some(rec) = by_client.get(&key) else {
            assert!(!gentle_ports.contains(&port), "no record of {key}");
            unseen += 1;
            continue;
        };
        let seen =
            rec["bytes"]["c"].as_u64().unwrap_or(0) + rec["bytes"]["s"].as_u64().unwrap_or(0);
        let gaps = rec["gaps"].as_u64().expect("gaps");
        let partial = rec["partial"] == true;
        let ended_on_wire = rec["close"] == "fin" || rec["close"] == "rst";
        let lost = (c + s)
            .checked_sub(seen)
            .unwrap_or_else(|| panic!("more bytes seen than sent: {rec}"));
        summed_gaps += gaps;
        // Never more loss claimed than happened (give or take a FIN per direction: a plain
        // ACK past bytes and a FIN that were both lost counts the FIN as a byte, a known
        // limit of the flow table); none claimed where none happened.
        assert!(gaps <= lost + 2, "{gaps} gap bytes but {lost} lost: {rec}");
        // Loss always shows: as gaps, as a missed handshake, or as an end never seen.
        if lost > 0 {
            hit += 1;
            assert!(
                gaps > 0 || partial || !ended_on_wire,
                "{lost} bytes lost without a sign: {rec}"
            );
        } else {
            whole += 1;
        }
        // With the handshake and both FINs seen, every lost byte is in a gap. A RST is no
        // such end: bytes in flight when the peer reset were sent (tshark counts them) but
        // never delivered, and the RST's ack tells only what the resetting side had received
        // (seen once in CI: a session ended by RST with 120 KB seen and 180 KB of gaps, short
        // of what tshark counted as sent) — there only the two checks above hold.
        if !partial && rec["close"] == "fin" {
            assert_eq!(seen + gaps, c + s, "gaps tile the loss exactly: {rec}");
        }
        if gentle_ports.contains(&port) {
            assert_eq!((lost, gaps), (0, 0), "gentle session: {rec}");
        }
    }
    assert!(hit > 0, "the overflow hit some session");
    assert_eq!(
        summary_count(&stopped.stderr, " gap bytes"),
        summed_gaps,
        "the summary's gap bytes are the records' gaps: {}",
        stopped.stderr
    );
    eprintln!(
        "burst: {lost_records} records lost; {hit} of {} sessions lost bytes, {whole} whole, {unseen} unseen; {summed_gaps} gap bytes",
        streams.len()
    );
}

/// The `Name:` value of /proc/PID/status in kB.
fn status_kb(pid: u32, name: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
}

/// Half-open connections in the flood, each from its own source port.
const SYNS: u32 = 20_000;
const MAX_SESSIONS: u64 = 1_000;
/// What one tracked session may cost at most (README, "Limits"): measured about 2 KiB.
const PER_SESSION_KB: u64 = 4;

#[test]
fn a_syn_flood_beyond_max_sessions_is_evicted_within_the_memory_cap() {
    common::require_root("a_syn_flood_beyond_max_sessions_is_evicted_within_the_memory_cap");
    let dir = TempDir::new("flood");
    let ns = NetNs::new();
    let _sink = Sink::start(&ns);
    let max = MAX_SESSIONS.to_string();
    let tail = Tail::start(
        &ns.host_if,
        &["--json", "--ring-size", "1M", "--max-sessions", &max],
        dir.path(),
        "flood",
    );
    let pid = tail.pid();
    let at_rest = status_kb(pid, "VmHWM");
    // The SYNs come from 10.99.N.3, an address no one holds: the sink's SYN-ACKs find no
    // neighbour and never reach the wire, so no RST ends any of them. Source ports count up
    // from 10000 (hping3's default), one connection each.
    let spoofed = std::net::Ipv4Addr::new(10, 99, ns.n, 3).to_string();
    let count = SYNS.to_string();
    let out = run(
        Command::new("hping3").args([
            "-q",
            "-S",
            "-p",
            "25",
            "-s",
            "10000",
            "-a",
            &spoofed,
            "-c",
            &count,
            "-i",
            "u100",
            &ns.server_v4().to_string(),
        ]),
        Duration::from_secs(60),
        "hping3",
    );
    let said = format!("{}{}", out.stdout, out.stderr);
    assert!(
        said.contains(&format!("{SYNS} packets transmitted")),
        "hping3: {said}"
    );
    // A real session right after the flood.
    let local_port = 40025;
    let r = swaks(
        ns.server_v4().into(),
        25,
        &[
            "--to",
            "rcpt@mx.test",
            "--local-port",
            &local_port.to_string(),
        ],
    );
    assert_eq!(r.code, 0, "{}", r.transcript);
    let client = SocketAddr::from((ns.client_v4(), local_port));
    let rec = tail.session(client);
    common::tailer::assert_fields(
        &rec,
        &serde_json::json!({
            "partial": false, "gaps": 0, "close": "fin", "anomalies": [],
            "helo": "client.test", "commands": 5, "replies": 7,
        }),
    );
    assert_eq!(rec["transactions"][0]["mail_from"], "sender@client.test");
    assert_eq!(rec["transactions"][0]["reply"]["code"], 250);
    assert!(pid_alive(pid), "tail died in the flood: {}", tail.stderr());
    let peak = status_kb(pid, "VmHWM");
    let stopped = tail.stop();

    let sessions = summary_count(&stopped.stderr, " sessions (smtp");
    let evicted = summary_count(&stopped.stderr, " evicted at --max-sessions");
    let lost = summary_count(&stopped.stderr, " records lost");
    // One record per SYN: each is a session unless the ring dropped it (a slow reader).
    assert_eq!(sessions + lost, u64::from(SYNS) + 1, "{}", stopped.stderr);
    assert!(sessions > 10 * MAX_SESSIONS, "{}", stopped.stderr);
    // The table is full from SYN 1000 on: every later connection, the swaks one included,
    // evicts the idlest.
    assert_eq!(evicted, sessions - MAX_SESSIONS, "{}", stopped.stderr);
    let closes = stopped
        .stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|r| r["type"] == "session")
        .fold(BTreeMap::<String, u64>::new(), |mut m, r| {
            *m.entry(r["close"].as_str().unwrap_or("?").to_string())
                .or_default() += 1;
            m
        });
    let want: BTreeMap<String, u64> = [
        ("evicted".to_string(), evicted),
        ("fin".to_string(), 1),
        ("end_of_capture".to_string(), MAX_SESSIONS - 1),
    ]
    .into();
    assert_eq!(closes, want, "every record, by how it ended");
    let grew = peak.saturating_sub(at_rest);
    assert!(
        grew <= MAX_SESSIONS * PER_SESSION_KB,
        "VmHWM grew {grew} kB over {at_rest} kB at rest: more than {MAX_SESSIONS} sessions × {PER_SESSION_KB} KiB"
    );
    eprintln!(
        "flood: {sessions} sessions, {lost} records lost, {evicted} evicted; VmHWM {at_rest} kB at rest, {peak} kB peak (+{grew} kB)"
    );
}
