//! The kernel matrix's end-to-end check (issue 18). `cargo xtask test` runs it on the host kernel
//! like every integration test; `cargo xtask test-kernels` runs the same binary inside qemu guests
//! of Debian's 5.10, 6.1 and 6.12 kernels, on the host's files. On each kernel: the eBPF object the
//! kernel calls for is loaded (compat before 5.17), the programs attach the way the kernel allows
//! (TCX from 6.6, netlink clsact before; XDP as well from 5.18, refused in one line before; netlink
//! forced too where TCX exists), a real SMTP session with the test bed's Postfix is dissected with
//! exact fields, the pcapng holds the bytes tshark captured, and exit leaves nothing attached.
//!
//! What to expect is worked out from the kernel's version, not from mail-trace's own probe, so a
//! probe that guesses wrong fails here.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use common::clients::RawSmtp;
use common::netns::NetNs;
use common::postfix::Postfix;
use common::tailer::{assert_fields, Tail};
use common::tshark::{self, Capture};
use common::{run, run_ok, self_signed_cert, Logs, TempDir};
use serde_json::json;

const USER: &str = "alice@mx.test";
const SENDER: &str = "sender@client.test";

/// `major.minor` of the running kernel.
fn kernel() -> (String, (u32, u32)) {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .expect("read osrelease")
        .trim()
        .to_string();
    let mut parts = release.split(['.', '-', '+']);
    let mut num = || parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let v = (num(), num());
    (release, v)
}

/// `mail-trace --version --verbose` names what this kernel offers and the object that would
/// load, as worked out from the kernel's version (BTF and the ring buffer are on every kernel the
/// matrix boots). Needs no root.
#[test]
fn version_verbose_names_this_kernels_features_and_object() {
    let (release, v) = kernel();
    let out = run_ok(
        Command::new(env!("CARGO_BIN_EXE_mail-trace")).args(["--version", "--verbose"]),
        Duration::from_secs(20),
        "mail-trace --version --verbose",
    );
    let or = |yes: bool, no: &str| {
        if yes {
            "yes".to_string()
        } else {
            no.to_string()
        }
    };
    let want = [
        format!("mail-trace {}", env!("CARGO_PKG_VERSION")),
        format!("kernel: {release}"),
        "BTF: yes".to_string(),
        format!("bpf_loop (Linux 5.17): {}", or(v >= (5, 17), "no")),
        format!(
            "TCX (Linux 6.6): {}",
            or(v >= (6, 6), "no: netlink clsact filters")
        ),
        "ring buffer (Linux 5.8): yes".to_string(),
        format!(
            "socket tracepoints (Linux 6.4): {}",
            or(v >= (6, 4), "no: process owners from /proc")
        ),
        format!(
            "XDP (bpf_xdp_load_bytes, Linux 5.18): {}",
            or(v >= (5, 18), "no: --xdp refused")
        ),
        format!(
            "eBPF object: {}",
            if v >= (5, 17) {
                "main (bpf_loop)"
            } else {
                "compat (bounded loops, no bpf_loop)"
            }
        ),
    ];
    assert_eq!(out.stdout, want.join("\n") + "\n");
    assert_eq!(out.stderr, "");
}

/// Programs named mail_trace* attached to `iface`: (TCX links, netlink clsact filters, XDP).
fn attached(iface: &str, tcx: bool) -> (usize, usize, usize) {
    use aya::programs::tc::{SchedClassifier, TcAttachType};
    let mut links = 0;
    if tcx {
        for dir in [TcAttachType::Ingress, TcAttachType::Egress] {
            let (_, progs) = SchedClassifier::query_tcx(iface, dir)
                .unwrap_or_else(|e| panic!("query TCX programs on {iface}: {e}"));
            links += progs
                .iter()
                .filter(|p| p.name_as_str().is_some_and(|n| n.starts_with("mail_trace")))
                .count();
        }
    }
    // Debian 12's bpftool predates TCX: it lists the netlink filters only.
    let tc = run_ok(
        Command::new("bpftool").args(["net", "show", "dev", iface]),
        Duration::from_secs(20),
        "bpftool net show",
    )
    .stdout;
    let link = run_ok(
        Command::new("ip").args(["-d", "link", "show", "dev", iface]),
        Duration::from_secs(20),
        "ip -d link show",
    );
    (
        links,
        tc.matches("mail_trace").count(),
        link.stdout.matches("prog/xdp").count(),
    )
}

/// One plain SMTP session from the test bed's client address to Postfix; returns the client
/// end, the queue id and the message size.
fn session(server: SocketAddr, tag: &str) -> (SocketAddr, String, usize) {
    let mut c = RawSmtp::connect(server);
    let client = c.local;
    assert_eq!(c.cmd("EHLO client.test").code, 250);
    assert_eq!(c.cmd(&format!("MAIL FROM:<{SENDER}>")).code, 250);
    assert_eq!(c.cmd(&format!("RCPT TO:<{USER}>")).code, 250);
    assert_eq!(c.cmd("DATA").code, 354);
    let body = format!(
        "From: {SENDER}\r\nTo: {USER}\r\nSubject: kernel matrix {tag}\r\n\r\nOn this kernel.\r\n"
    );
    c.send(body.as_bytes());
    c.send(b".\r\n");
    let r = c.read_reply();
    let id = r.queue_id().unwrap_or_else(|| panic!("end of data: {r:?}"));
    c.quit();
    (client, id, body.len())
}

/// Below 5.18 `mail-trace tail --xdp` must exit 1 at once with exactly one line naming what is
/// missing and the kernel, and leave nothing attached.
fn xdp_is_refused(iface: &str, (major, minor): (u32, u32), tcx: bool) {
    let out = run(
        Command::new(env!("CARGO_BIN_EXE_mail-trace")).args(["tail", "-i", iface, "--xdp"]),
        Duration::from_secs(60),
        "mail-trace tail --xdp (refused)",
    );
    assert_eq!(out.status.code(), Some(1), "--xdp: {}", out.stderr);
    assert_eq!(
        out.stderr,
        format!(
            "mail-trace: --xdp needs Linux >= 5.18 (bpf_xdp_load_bytes); this kernel is \
             {major}.{minor}: use the TC path (drop --xdp)\n"
        ),
        "--xdp refused"
    );
    assert_eq!(out.stdout, "", "--xdp refused: stdout");
    assert_eq!(attached(iface, tcx), (0, 0, 0), "--xdp refused: attached");
}

/// (name, extra arguments, TC programs expected as (TCX links, netlink filters), XDP programs).
type Mode = (&'static str, Vec<&'static str>, (usize, usize), usize);

#[test]
fn on_this_kernel_a_session_is_captured_dissected_and_nothing_stays_attached() {
    common::require_root("kernel");
    let (release, v) = kernel();
    let compat = v < (5, 17);
    let tcx = v >= (6, 6);
    let tmp = TempDir::new("kernel");
    let dir = tmp.path();
    let ns = NetNs::new();
    let (cert, key) = self_signed_cert(&tmp.subdir("tls"), &[ns.server_v4().into()]);
    // No Dovecot: SASL is not exercised here, and the socket is only used by AUTH.
    let postfix = Postfix::start(
        &ns,
        &tmp.subdir("postfix"),
        &cert,
        &key,
        &dir.join("no-auth-socket"),
        Logs::Files,
    );
    let iface = ns.host_if.clone();
    let server = SocketAddr::new(ns.server_v4().into(), 25);
    assert_eq!(attached(&iface, tcx), (0, 0, 0), "attached before the test");
    let reference = dir.join("tshark.pcapng");
    let cap = Capture::start(&iface, &reference);

    // bpf_xdp_load_bytes is 5.18: below it --xdp is refused before anything loads.
    let xdp_ok = v >= (5, 18);
    let mut modes: Vec<Mode> = vec![("tc", vec![], if tcx { (2, 0) } else { (0, 2) }, 0)];
    if xdp_ok {
        modes.push(("xdp", vec!["--xdp"], if tcx { (1, 0) } else { (0, 1) }, 1));
    } else {
        xdp_is_refused(&iface, v, tcx);
    }
    if tcx {
        modes.push(("netlink", vec!["--tc-netlink"], (0, 2), 0));
    }
    // -w files are opened after the privilege drop: a directory the dropped user may write.
    let out = tmp.subdir("out");
    common::writable_by_dropped_user(&out);
    let mut ran = Vec::new();
    for (mode, extra, tc, xdp) in &modes {
        let pcap = out.join(format!("{mode}.pcapng"));
        let mut args = vec!["--json", "-w", pcap.to_str().expect("utf-8 path")];
        args.extend(extra);
        let tail = Tail::start(&iface, &args, dir, mode);
        let line = tail
            .stderr()
            .lines()
            .find(|l| l.starts_with("mail-trace: kernel "))
            .map(str::to_string)
            .unwrap_or_else(|| panic!("no kernel line ({mode}): {}", tail.stderr()));
        let object = if compat { "compat" } else { "main" };
        let path = if tcx && *mode != "netlink" {
            "TCX"
        } else {
            "netlink clsact"
        };
        let prefix = format!("mail-trace: kernel {release}: {object} eBPF object");
        assert!(line.starts_with(&prefix), "{mode}: {line}");
        assert!(line.contains(&format!(", {path} TC")), "{mode}: {line}");
        assert_eq!(
            line.contains("process owners from /proc"),
            v < (6, 4),
            "{mode}: {line}"
        );
        // Before 6.5 a kernel with unprivileged BPF disabled checks CAP_BPF on every bpf()
        // command: the dropped daemon keeps it there, and only there.
        let unpriv_off = std::fs::read_to_string("/proc/sys/kernel/unprivileged_bpf_disabled")
            .map(|s| s.trim() != "0")
            .unwrap_or(true);
        let who = tail
            .stderr()
            .lines()
            .find(|l| l.starts_with("mail-trace: running as "))
            .map(str::to_string)
            .unwrap_or_else(|| panic!("no running-as line ({mode}): {}", tail.stderr()));
        assert_eq!(
            who.contains("CAP_BPF"),
            unpriv_off && v < (6, 5),
            "{mode}: {who}"
        );
        let now = attached(&iface, tcx);
        assert_eq!((now.0, now.1), *tc, "{mode}: TC programs attached");
        assert_eq!(now.2, *xdp, "{mode}: XDP programs attached");

        let (client, id, size) = session(server, mode);
        assert_eq!(postfix.queue_ids_for(client, 1), vec![id.clone()]);
        let rec = tail.session(client);
        assert_fields(
            &rec,
            &json!({
                "proto": "smtp", "client": client.to_string(), "server": server.to_string(),
                "partial": false, "gaps": 0, "anomalies": [], "helo": "client.test",
                "tls": false, "auth": null,
                "transactions": [{
                    "mail_from": SENDER, "mail_params": {},
                    "rcpt": [{"addr": USER, "params": {}, "code": 250, "enhanced": "2.1.5",
                              "text": "Ok"}],
                    "data_code": 354, "bdat_chunks": 0, "size": size, "queue_id": id,
                    "headers": null,
                    "reply": {"code": 250, "enhanced": "2.0.0",
                              "text": format!("Ok: queued as {id}")},
                }],
            }),
        );
        tail.stop();
        assert_eq!(
            attached(&iface, tcx),
            (0, 0, 0),
            "{mode}: left attached after exit"
        );
        ran.push((mode.to_string(), client, pcap));
    }
    drop(postfix);
    let reference = cap.stop();
    let want = tshark::streams(&reference);
    for (mode, client, pcap) in &ran {
        let got = tshark::streams(pcap);
        assert_eq!(got.len(), 1, "{mode}: connections in {}", pcap.display());
        let w = want
            .iter()
            .find(|s| s.client == *client)
            .unwrap_or_else(|| panic!("{mode}: tshark did not capture {client}"));
        assert_eq!(got[0].client, w.client, "{mode}");
        assert_eq!(got[0].server, w.server, "{mode}");
        assert!(
            got[0].client_bytes == w.client_bytes && got[0].server_bytes == w.server_bytes,
            "{mode}: the pcapng's payload differs from tshark's ({} / {} bytes, tshark {} / {})",
            got[0].client_bytes.len(),
            got[0].server_bytes.len(),
            w.client_bytes.len(),
            w.server_bytes.len()
        );
    }
}
