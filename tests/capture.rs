//! `mail-trace capture` against the real test bed (issue 2): what we write is exactly what crossed
//! the wire, nothing else is copied, and detaching leaves the interface as it was.
//!
//! mail-trace and tshark capture the root-namespace end of the veth at the same time; the
//! reference for every byte is tshark's own reassembly (`follow,tcp,raw`) of its own capture.

mod common;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::clients::{swaks, RawSmtp};
use common::tshark::{self, Capture, Stream};
use common::{run_ok, wait_child, wait_for, TempDir, Testbed, PASSWORD};

const MAIL_PORTS: [u16; 7] = [25, 465, 587, 110, 995, 143, 993];

/// A running `mail-trace capture`, SIGKILLed on drop if still running.
struct MailTrace {
    child: Option<Child>,
    stderr: PathBuf,
    iface: String,
}

impl MailTrace {
    /// Starts `mail-trace capture -i IFACE -w FILE ARGS` and waits until its programs are
    /// attached to the interface.
    fn start(iface: &str, file: &Path, extra: &[&str], dir: &Path) -> MailTrace {
        common::writable_by_dropped_user(file.parent().expect("a directory"));
        let before = attached(iface);
        let stderr = dir.join(format!(
            "{}.stderr",
            file.file_name().and_then(|f| f.to_str()).unwrap_or("mt")
        ));
        let err = std::fs::File::create(&stderr).expect("create stderr file");
        // These tests hold mail-trace to a byte-for-byte copy of the wire, so the
        // encrypted payload it would skip by default (issue 7) is copied too.
        let child = Command::new(env!("CARGO_BIN_EXE_mail-trace"))
            .args(["capture", "--full-payload", "-i", iface, "-w"])
            .arg(file)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .expect("spawn mail-trace capture");
        let mut mt = MailTrace {
            child: Some(child),
            stderr,
            iface: iface.to_string(),
        };
        wait_for(
            Duration::from_secs(30),
            "mail-trace programs attached",
            || {
                if let Some(c) = mt.child.as_mut() {
                    if let Ok(Some(status)) = c.try_wait() {
                        panic!("mail-trace exited early ({status}): {}", mt.stderr_text());
                    }
                }
                (attached(&mt.iface) >= before + 2).then_some(())
            },
        );
        mt
    }

    fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).expect("running")
    }

    /// SIGINT; asserts exit 0 within 20 s and returns its stderr (the counter summary).
    fn interrupt(mut self) -> String {
        let mut child = self.child.take().expect("running");
        common::signal(child.id(), libc::SIGINT);
        let status = wait_child(&mut child, Duration::from_secs(20)).unwrap_or_else(|| {
            panic!("mail-trace ignored SIGINT for 20 s: {}", self.stderr_text())
        });
        let text = self.stderr_text();
        assert!(
            status.success(),
            "mail-trace exited {status} after SIGINT: {text}"
        );
        text
    }

    /// SIGKILL, and wait for the process to be gone.
    fn kill9(mut self) {
        let mut child = self.child.take().expect("running");
        common::signal(child.id(), libc::SIGKILL);
        assert!(
            wait_child(&mut child, Duration::from_secs(10)).is_some(),
            "kill -9 did not end mail-trace"
        );
    }
}

impl Drop for MailTrace {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// How many mail-trace programs are attached to `iface`: TCX links (asked of the kernel through
/// aya, since Debian's bpftool predates TCX), netlink clsact filters (bpftool) and XDP (ip).
fn attached(iface: &str) -> usize {
    use aya::programs::tc::{SchedClassifier, TcAttachType};
    let mut n = 0;
    for dir in [TcAttachType::Ingress, TcAttachType::Egress] {
        let (_, progs) = SchedClassifier::query_tcx(iface, dir)
            .unwrap_or_else(|e| panic!("query TCX programs on {iface}: {e}"));
        n += progs
            .iter()
            .filter(|p| {
                p.name_as_str()
                    .is_some_and(|name| name.starts_with("mail_trace"))
            })
            .count();
    }
    let out = run_ok(
        Command::new("bpftool").args(["net", "show", "dev", iface]),
        Duration::from_secs(20),
        "bpftool net show",
    );
    // bpftool names XDP programs only by id; `ip -d link` gives the name.
    let link = run_ok(
        Command::new("ip").args(["-d", "link", "show", "dev", iface]),
        Duration::from_secs(20),
        "ip -d link show",
    );
    n + out.stdout.matches("mail_trace").count()
        + link.stdout.matches("prog/xdp id").count()
            * link.stdout.matches("name mail_trace_xdp").count()
}

/// "… N records lost (…" from the exit summary.
fn lost_records(summary: &str) -> u64 {
    let line = summary
        .lines()
        .find(|l| l.contains("records lost"))
        .unwrap_or_else(|| panic!("no counter summary on stderr: {summary}"));
    let before = &line[..line.find(" records lost").expect("records lost")];
    before
        .rsplit(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("cannot read lost records from {line:?}"))
}

fn is_mail(s: &Stream) -> bool {
    MAIL_PORTS.contains(&s.server.port())
}

fn by_endpoints(streams: Vec<Stream>) -> BTreeMap<(SocketAddr, SocketAddr), Stream> {
    streams
        .into_iter()
        .map(|s| ((s.client, s.server), s))
        .collect()
}

/// Packets in `file` as (src port, dst port) pairs.
fn packet_ports(file: &Path) -> Vec<(u16, u16)> {
    tshark::fields(file, &["tcp.srcport", "tcp.dstport"])
        .iter()
        .filter_map(|row| Some((row.first()?.parse().ok()?, row.get(1)?.parse().ok()?)))
        .collect()
}

fn mail_packets(file: &Path) -> usize {
    packet_ports(file)
        .iter()
        .filter(|(s, d)| MAIL_PORTS.contains(s) || MAIL_PORTS.contains(d))
        .count()
}

/// Asserts that every mail connection tshark saw is in ours with identical bytes both ways, and
/// that ours has nothing else.
fn assert_same_streams(ours: &Path, reference: &Path) {
    let theirs: BTreeMap<_, _> = by_endpoints(tshark::streams(reference))
        .into_iter()
        .filter(|(_, s)| is_mail(s))
        .collect();
    let mine = by_endpoints(tshark::streams(ours));
    assert_eq!(
        mine.keys().collect::<Vec<_>>(),
        theirs.keys().collect::<Vec<_>>(),
        "connections in our pcapng vs tshark's"
    );
    for (k, t) in &theirs {
        let m = &mine[k];
        assert!(
            m.client_bytes == t.client_bytes,
            "{k:?}: client→server bytes differ ({} vs tshark {})",
            m.client_bytes.len(),
            t.client_bytes.len()
        );
        assert!(
            m.server_bytes == t.server_bytes,
            "{k:?}: server→client bytes differ ({} vs tshark {})",
            m.server_bytes.len(),
            t.server_bytes.len()
        );
    }
}

fn big_body() -> Vec<u8> {
    let mut body = Vec::new();
    let mut n = 0;
    while body.len() < 1_150_000 {
        body.extend_from_slice(
            format!("line {n:06}: capture must copy every one of these bytes.\r\n").as_bytes(),
        );
        n += 1;
    }
    body
}

/// A python3 http.server on 8080 inside the namespace, killed on drop.
struct HttpServer(Child);

impl HttpServer {
    fn start(tb: &Testbed, dir: &Path) -> HttpServer {
        let child = tb
            .ns
            .exec("python3")
            .args(["-m", "http.server", "8080", "--bind", "::"])
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn python3 http.server");
        let addr = SocketAddr::new(tb.ns.server_v4().into(), 8080);
        wait_for(Duration::from_secs(20), "http.server on 8080", || {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()
        });
        HttpServer(child)
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        // `ip netns exec` execs python, so this pid is python's.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn curl(url: &str) -> String {
    run_ok(
        Command::new("curl").args(["-sS", "--max-time", "20", "-g", url]),
        Duration::from_secs(30),
        "curl",
    )
    .stdout
}

#[test]
fn capture_is_byte_identical_to_tshark_and_copies_only_mail() {
    common::require_root("capture_is_byte_identical_to_tshark_and_copies_only_mail");
    byte_identical_capture(&[]);
}

/// The same over XDP ingress (TC egress): the XDP program has its own packet access and
/// `bpf_loop` callbacks, which nothing else exercises.
#[test]
fn xdp_capture_is_byte_identical_to_tshark_and_copies_only_mail() {
    common::require_root("xdp_capture_is_byte_identical_to_tshark_and_copies_only_mail");
    byte_identical_capture(&["--xdp"]);
}

/// Mail over v4 and v6, plain and STARTTLS, a ≥ 1 MiB message and HTTP beside it, captured
/// by `mail-trace capture EXTRA` and by tshark: the same mail streams and packets, no other.
fn byte_identical_capture(extra: &[&str]) {
    let tmp = TempDir::new("cap");
    let tb = Testbed::start();
    let www = tmp.subdir("www");
    common::write(&www.join("index.txt"), "not mail\n");
    let _http = HttpServer::start(&tb, &www);
    let (v4, v6): (IpAddr, IpAddr) = (tb.ns.server_v4().into(), tb.ns.server_v6().into());

    let reference = tmp.path().join("tshark.pcapng");
    let ours = tmp.path().join("ours.pcapng");
    let cap = Capture::start(&tb.ns.host_if, &reference);
    let mt = MailTrace::start(&tb.ns.host_if, &ours, extra, tmp.path());

    let plain = swaks(v4, 25, &["--to", "alice@mx.test"]);
    assert_eq!(plain.queue_ids().len(), 1, "{}", plain.transcript);
    let sub = swaks(
        v4,
        587,
        &[
            "--to",
            "bob@mx.test",
            "--tls",
            "--auth",
            "PLAIN",
            "--auth-user",
            "alice@mx.test",
            "--auth-password",
            PASSWORD,
        ],
    );
    assert_eq!(sub.queue_ids().len(), 1, "{}", sub.transcript);
    let mut sent = Vec::new();
    let body = big_body();
    sent.push(RawSmtp::send_mail(
        SocketAddr::new(v4, 25),
        None,
        "carol@mx.test",
        &body,
    ));
    sent.push(RawSmtp::send_mail(
        SocketAddr::new(v6, 25),
        None,
        "alice@mx.test",
        b"Subject: v6\r\n\r\nover IPv6\r\n",
    ));
    sent.push(RawSmtp::send_mail(
        SocketAddr::new(v6, 587),
        Some(("alice@mx.test", PASSWORD)),
        "bob@mx.test",
        &body,
    ));
    assert_eq!(curl(&format!("http://{v4}:8080/index.txt")), "not mail\n");
    assert_eq!(curl(&format!("http://[{v6}]:8080/index.txt")), "not mail\n");

    std::thread::sleep(Duration::from_millis(300));
    let summary = mt.interrupt();
    cap.stop();
    assert_eq!(
        attached(&tb.ns.host_if),
        0,
        "programs still attached after SIGINT"
    );
    assert_eq!(lost_records(&summary), 0, "records lost: {summary}");

    // tshark reads our file, and it holds the same connections and bytes as tshark's capture.
    assert_same_streams(&ours, &reference);
    let mine = by_endpoints(tshark::streams(&ours));
    assert_eq!(mine.len(), 5, "five mail connections: {:?}", mine.keys());
    // The raw client's sessions: the bytes on the wire are the bytes it wrote.
    for (bytes, _) in &sent {
        assert!(
            mine.values().any(|s| &s.client_bytes == bytes),
            "no connection in our pcapng carries the {} bytes the raw client sent",
            bytes.len()
        );
    }
    assert!(
        mine.values().any(|s| s.client_bytes.len() > 1 << 20),
        "a ≥ 1 MiB message"
    );
    // The same packets, and nothing that is not mail.
    assert_eq!(
        mail_packets(&ours),
        mail_packets(&reference),
        "mail packets: ours vs tshark"
    );
    let ports = packet_ports(&ours);
    assert_eq!(
        ports.len(),
        mail_packets(&ours),
        "non-mail packets in our pcapng"
    );
    let web = packet_ports(&reference)
        .iter()
        .filter(|(s, d)| *s == 8080 || *d == 8080)
        .count();
    assert!(
        web >= 10,
        "the http traffic happened (tshark saw {web} packets on 8080)"
    );
}

#[test]
fn kill9_leaves_nothing_attached_and_mail_flows() {
    common::require_root("kill9_leaves_nothing_attached_and_mail_flows");
    let tmp = TempDir::new("k9");
    let tb = Testbed::start();
    let mt = MailTrace::start(
        &tb.ns.host_if,
        &tmp.path().join("k9.pcapng"),
        &[],
        tmp.path(),
    );
    assert_eq!(attached(&tb.ns.host_if), 2, "ingress and egress attached");
    let pid = mt.pid();
    mt.kill9();
    assert!(!common::pid_alive(pid));
    wait_for(
        Duration::from_secs(10),
        "TCX links gone after kill -9",
        || (attached(&tb.ns.host_if) == 0).then_some(()),
    );
    let r = swaks(tb.ns.server_v4().into(), 25, &["--to", "alice@mx.test"]);
    assert_eq!(r.code, 0, "{}", r.transcript);
    assert_eq!(r.queue_ids().len(), 1, "{}", r.transcript);
}

#[test]
fn two_instances_both_capture_every_packet() {
    common::require_root("two_instances_both_capture_every_packet");
    let tmp = TempDir::new("two");
    let tb = Testbed::start();
    let (a, b, reference) = (
        tmp.path().join("a.pcapng"),
        tmp.path().join("b.pcapng"),
        tmp.path().join("ref.pcapng"),
    );
    let cap = Capture::start(&tb.ns.host_if, &reference);
    let one = MailTrace::start(&tb.ns.host_if, &a, &[], tmp.path());
    let two = MailTrace::start(&tb.ns.host_if, &b, &[], tmp.path());
    assert_eq!(
        attached(&tb.ns.host_if),
        4,
        "two instances, ingress and egress each"
    );
    let v4: IpAddr = tb.ns.server_v4().into();
    let r = swaks(v4, 25, &["--to", "alice@mx.test,bob@mx.test"]);
    assert_eq!(r.queue_ids().len(), 1, "{}", r.transcript);
    RawSmtp::send_mail(
        SocketAddr::new(tb.ns.server_v6().into(), 25),
        None,
        "carol@mx.test",
        &big_body(),
    );
    std::thread::sleep(Duration::from_millis(300));
    let s1 = two.interrupt();
    let s2 = one.interrupt();
    cap.stop();
    assert_eq!(lost_records(&s1), 0, "{s1}");
    assert_eq!(lost_records(&s2), 0, "{s2}");
    assert_same_streams(&a, &reference);
    assert_same_streams(&b, &reference);
    let n = mail_packets(&reference);
    assert_eq!(mail_packets(&a), n, "first instance's packets vs tshark");
    assert_eq!(mail_packets(&b), n, "second instance's packets vs tshark");
    assert_eq!(tshark::streams(&a).len(), 2);
}

#[test]
fn host_filter_captures_only_the_chosen_peer() {
    common::require_root("host_filter_captures_only_the_chosen_peer");
    let tmp = TempDir::new("host");
    let tb = Testbed::start();
    let other = tb.ns.add_client_v4(3);
    let ours = tmp.path().join("host.pcapng");
    let reference = tmp.path().join("ref.pcapng");
    let cap = Capture::start(&tb.ns.host_if, &reference);
    let mt = MailTrace::start(
        &tb.ns.host_if,
        &ours,
        &["--host", &format!("{other}/32")],
        tmp.path(),
    );
    let v4: IpAddr = tb.ns.server_v4().into();
    let default = swaks(
        v4,
        25,
        &[
            "--to",
            "alice@mx.test",
            "--local-interface",
            &tb.ns.client_v4().to_string(),
        ],
    );
    assert_eq!(default.queue_ids().len(), 1, "{}", default.transcript);
    let chosen = swaks(
        v4,
        25,
        &[
            "--to",
            "bob@mx.test",
            "--local-interface",
            &other.to_string(),
        ],
    );
    assert_eq!(chosen.queue_ids().len(), 1, "{}", chosen.transcript);
    let default6 = swaks_free_v6(&tb);
    std::thread::sleep(Duration::from_millis(300));
    let summary = mt.interrupt();
    cap.stop();
    assert_eq!(lost_records(&summary), 0, "{summary}");
    let mine = tshark::streams(&ours);
    assert_eq!(
        mine.len(),
        1,
        "only the chosen peer's connection: {:?}",
        mine.iter().map(|s| s.client).collect::<Vec<_>>()
    );
    assert_eq!(mine[0].client.ip(), IpAddr::from(other));
    let theirs = tshark::streams(&reference);
    assert_eq!(theirs.len(), 3, "tshark saw all three connections");
    let reference_stream = theirs
        .iter()
        .find(|s| s.client == mine[0].client)
        .expect("chosen peer in tshark's capture");
    assert_eq!(
        &mine[0],
        &Stream {
            index: mine[0].index,
            ..reference_stream.clone()
        }
    );
    assert!(
        theirs.iter().any(|s| s.client == default6),
        "the IPv6 session happened"
    );
}

/// One IPv6 session from the default client address (not selected by an IPv4 --host).
fn swaks_free_v6(tb: &Testbed) -> SocketAddr {
    let server = SocketAddr::new(tb.ns.server_v6().into(), 25);
    let mut c = RawSmtp::connect(server);
    let local = c.local;
    assert_eq!(c.cmd("EHLO client.test").code, 250);
    c.quit();
    local
}
