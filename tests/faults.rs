//! Faults (issue 8): the interface going away under a live command, a full disk while writing
//! pcapng, and the reader of stdout going away. Root, namespaces and veths the test creates, each
//! step bounded in time.

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::netns::NetNs;
use common::{run, run_ok, wait_child, wait_for, TempDir};

/// A running mail-trace, SIGKILLed on drop if still running; stderr goes to a file.
struct MailTrace {
    child: Option<Child>,
    stderr: std::path::PathBuf,
}

impl MailTrace {
    fn start(args: &[&str], dir: &Path, tag: &str) -> MailTrace {
        let stderr = dir.join(format!("{tag}.stderr"));
        let child = Command::new(env!("CARGO_BIN_EXE_mail-trace"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).expect("stderr file"))
            .spawn()
            .expect("spawn mail-trace");
        MailTrace {
            child: Some(child),
            stderr,
        }
    }

    fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Waits until the tcpdump-like "attached" state: its programs are on `iface`.
    fn wait_attached(&mut self, iface: &str) {
        wait_for(Duration::from_secs(30), "mail-trace attached", || {
            if let Some(Ok(Some(st))) = self.child.as_mut().map(Child::try_wait) {
                panic!("mail-trace exited early ({st}): {}", self.stderr_text());
            }
            (tcx_programs(iface) >= 2).then_some(())
        });
    }

    /// Waits for the exit (bounded) and returns its code and stderr.
    fn wait_exit(&mut self, within: Duration) -> (Option<i32>, String) {
        let mut child = self.child.take().expect("running");
        let st = wait_child(&mut child, within).unwrap_or_else(|| {
            panic!(
                "mail-trace still running after {within:?}: {}",
                self.stderr_text()
            )
        });
        (st.code(), self.stderr_text())
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

fn tcx_programs(iface: &str) -> usize {
    use aya::programs::tc::{SchedClassifier, TcAttachType};
    [TcAttachType::Ingress, TcAttachType::Egress]
        .into_iter()
        .map(|dir| {
            SchedClassifier::query_tcx(iface, dir)
                .map(|(_, progs)| {
                    progs
                        .iter()
                        .filter(|p| p.name_as_str().is_some_and(|n| n.starts_with("mail_trace")))
                        .count()
                })
                .unwrap_or(0)
        })
        .sum()
}

#[test]
fn interface_removed_under_tail_and_capture_is_a_clean_error() {
    common::require_root("interface_removed_under_tail_and_capture_is_a_clean_error");
    let tmp = TempDir::new("ifgone");
    for cmd in ["tail", "capture"] {
        let ns = NetNs::new();
        let mut mt = MailTrace::start(&[cmd, "-i", &ns.host_if], tmp.path(), cmd);
        mt.wait_attached(&ns.host_if);
        run_ok(
            Command::new("ip").args(["link", "del", &ns.host_if]),
            Duration::from_secs(20),
            "ip link del",
        );
        let (code, stderr) = mt.wait_exit(Duration::from_secs(10));
        assert_eq!(code, Some(1), "{cmd}: {stderr}");
        assert_eq!(
            stderr.lines().last(),
            Some(format!("mail-trace: interface {} disappeared", ns.host_if).as_str()),
            "{cmd}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

/// A tmpfs of `size`, unmounted on drop.
struct Tmpfs(std::path::PathBuf);
impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).expect("mount point");
        run_ok(
            Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "mtfull"])
                .arg(dir),
            Duration::from_secs(20),
            "mount tmpfs",
        );
        Tmpfs(dir.to_owned())
    }
}
impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = run(
            Command::new("umount").arg(&self.0),
            Duration::from_secs(20),
            "umount",
        );
    }
}

/// Sends `bytes` to a sink listening on port 25 inside the namespace (python3, bounded).
fn push_bytes(ns: &NetNs, bytes: usize) {
    let server = format!(
        "import socket,sys\ns=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n\
         s.bind(('{}',25));s.listen(1);s.settimeout(20);c,_=s.accept();c.settimeout(20)\n\
         n=0\nwhile True:\n  d=c.recv(65536)\n  if not d: break\n  n+=len(d)\nprint(n)\n",
        ns.server_v4()
    );
    let mut srv = ns
        .exec("python3")
        .args(["-c", &server])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn sink");
    let addr = std::net::SocketAddr::from((ns.server_v4(), 25));
    let mut conn = wait_for(Duration::from_secs(10), "sink listening", || {
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()
    });
    conn.set_write_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let chunk = vec![b'x'; 64 * 1024];
    let mut sent = 0;
    while sent < bytes {
        conn.write_all(&chunk).expect("send to sink");
        sent += chunk.len();
    }
    drop(conn);
    let st = wait_child(&mut srv, Duration::from_secs(20)).expect("sink ended");
    let mut got = String::new();
    srv.stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut got)
        .expect("read");
    assert!(
        st.success() && got.trim() == sent.to_string(),
        "sink got {got}"
    );
}

#[test]
fn full_disk_while_writing_pcapng_leaves_a_readable_file() {
    common::require_root("full_disk_while_writing_pcapng_leaves_a_readable_file");
    let tmp = TempDir::new("full");
    let ns = NetNs::new();
    let fs = Tmpfs::mount(&tmp.path().join("small"), "256k");
    let file = fs.0.join("cap.pcapng");
    common::writable_by_dropped_user(&fs.0);
    let mut mt = MailTrace::start(
        &[
            "capture",
            "-i",
            &ns.host_if,
            "-w",
            file.to_str().expect("utf-8"),
        ],
        tmp.path(),
        "full",
    );
    mt.wait_attached(&ns.host_if);
    push_bytes(&ns, 2 << 20);
    let (code, stderr) = mt.wait_exit(Duration::from_secs(15));
    assert_eq!(code, Some(1), "{stderr}");
    // The start-up lines (the eBPF object chosen, who the daemon runs as), then one error line.
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 3, "{stderr}");
    assert!(lines[0].starts_with("mail-trace: kernel "), "{stderr}");
    assert!(lines[1].starts_with("mail-trace: running as "), "{stderr}");
    assert!(
        lines[2].starts_with("mail-trace: writing pcapng: ")
            && lines[2].ends_with("No space left on device (os error 28)"),
        "{stderr}"
    );
    let len = std::fs::metadata(&file).expect("file kept").len();
    assert!(len > 100_000, "{len} bytes written before the disk filled");
    let out = run(
        Command::new("tshark")
            .args(["-r"])
            .arg(&file)
            .args(["-T", "fields", "-e", "frame.number"]),
        Duration::from_secs(60),
        "tshark -r",
    );
    assert!(
        out.status.success(),
        "tshark could not read the file: {}",
        out.stderr
    );
    assert!(!out.stderr.contains("cut short"), "{}", out.stderr);
    assert!(out.stdout.lines().count() > 5, "{}", out.stdout);
    assert_eq!(tcx_programs(&ns.host_if), 0, "detached after the error");
}

#[test]
fn replay_into_a_closed_pipe_exits_quietly() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/testbed");
    let mut files: Vec<_> = std::fs::read_dir(&fixtures)
        .expect("fixtures")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "pcapng"))
        .collect();
    files.sort();
    // Enough output to fill the pipe many times over before `head` is done.
    let many: Vec<_> = files.iter().cycle().take(files.len() * 20).collect();
    let out = Command::new("bash")
        .arg("-c")
        .arg(r#""$0" replay --json --events "$@" | head -1; echo "status=${PIPESTATUS[0]}""#)
        .arg(env!("CARGO_BIN_EXE_mail-trace"))
        .args(&many)
        .output()
        .expect("run the pipe");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(lines[0].starts_with('{'), "{stdout}");
    assert_eq!(lines[1], "status=0", "mail-trace's own exit code");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "",
        "no message, no panic"
    );
}

/// The `Name:\tvalue` line of /proc/PID/status.
fn status_field(pid: u32, name: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix(&format!("{name}:"))
                .map(|v| v.trim().to_owned())
        })
        .unwrap_or_default()
}

#[test]
fn tail_runs_without_capabilities_and_as_the_user_given() {
    common::require_root("tail_runs_without_capabilities_and_as_the_user_given");
    let tmp = TempDir::new("caps");
    let default_uid = run_ok(
        Command::new("id").args(["-u", common::dropped_user()]),
        Duration::from_secs(10),
        "id",
    )
    .stdout;
    let default_uid = default_uid.trim();
    // Without --user: the dedicated user or nobody; --user root opts out of the uid change only.
    for (user, uid) in [
        (None, default_uid),
        (Some("nobody"), "65534"),
        (Some("root"), "0"),
    ] {
        let ns = NetNs::new();
        let mut args = vec!["tail", "-i", ns.host_if.as_str()];
        if let Some(u) = user {
            args.extend(["--user", u]);
        }
        let mut mt = MailTrace::start(&args, tmp.path(), uid);
        mt.wait_attached(&ns.host_if);
        let pid = mt.child.as_ref().map(Child::id).expect("running");
        let zero = "0000000000000000";
        wait_for(Duration::from_secs(10), "capabilities dropped", || {
            (status_field(pid, "CapEff") == zero).then_some(())
        });
        assert_eq!(status_field(pid, "CapPrm"), zero);
        assert_eq!(status_field(pid, "CapInh"), zero);
        assert_eq!(status_field(pid, "CapBnd"), zero);
        assert_eq!(status_field(pid, "CapAmb"), zero);
        assert_eq!(status_field(pid, "NoNewPrivs"), "1");
        assert_eq!(
            status_field(pid, "Uid"),
            [uid; 4].join("\t"),
            "real, effective, saved, fs uid"
        );
        // Still capturing and still reading the kernel counters without any capability.
        let addr = std::net::SocketAddr::from((ns.server_v4(), 25));
        for _ in 0..3 {
            let _ = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1));
        }
        common::signal(pid, libc::SIGINT);
        let (code, stderr) = mt.wait_exit(Duration::from_secs(20));
        assert_eq!(code, Some(0), "{stderr}");
        let matched: u64 = stderr
            .split("kernel: ")
            .nth(1)
            .and_then(|k| k.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no kernel counters in {stderr}"));
        assert!(
            matched >= 6,
            "3 SYNs and 3 RSTs on port 25, got {matched}: {stderr}"
        );
        assert_eq!(
            tcx_programs(&ns.host_if),
            0,
            "detached at exit without caps"
        );
    }
}

/// The mail-trace BPF filters on one clsact hook of `iface` as `tc filter show` lists them:
/// `(handle, name)`; each of ours has its owner's PID as handle.
fn tc_filters(iface: &str, hook: &str) -> Vec<(u32, String)> {
    let out = run_ok(
        Command::new("tc").args(["filter", "show", "dev", iface, hook]),
        Duration::from_secs(20),
        "tc filter show",
    );
    let mut found: Vec<(u32, String)> = out
        .stdout
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace().skip_while(|&w| w != "handle").skip(1);
            let handle = u32::from_str_radix(words.next()?.strip_prefix("0x")?, 16).ok()?;
            let name = words.next()?;
            name.starts_with("mail_trace")
                .then(|| (handle, name.to_owned()))
        })
        .collect();
    found.sort();
    found
}

/// Both hooks: `[(pid, "mail_trace_in")]` for ingress then egress, per owner.
fn owners(iface: &str) -> Vec<(u32, String)> {
    let mut all = tc_filters(iface, "ingress");
    all.extend(tc_filters(iface, "egress"));
    all.sort();
    all
}

fn ours(pids: &[u32]) -> Vec<(u32, String)> {
    let mut v: Vec<(u32, String)> = pids
        .iter()
        .flat_map(|&p| [(p, "mail_trace_in".into()), (p, "mail_trace_out".into())])
        .collect();
    v.sort();
    v
}

/// An SMTP-ish server on port 25 in the namespace that greets, answers each line with 250
/// (221 to QUIT, then closes) and gives up after 60 s (python3, killed on drop).
struct SlowServer(Child);
impl SlowServer {
    fn start(ns: &NetNs) -> SlowServer {
        let script = format!(
            "import socket\ns=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n\
             s.bind(('{}',25));s.listen(1);s.settimeout(60);c,_=s.accept();c.settimeout(60)\n\
             c.sendall(b'220 mt.test ESMTP\\r\\n');f=c.makefile('rb')\n\
             for l in f:\n  q=l.strip().upper()==b'QUIT'\n  c.sendall(b'221 bye\\r\\n' if q else b'250 mt.test\\r\\n')\n  \
             if q: break\nc.close()\n",
            ns.server_v4()
        );
        SlowServer(
            ns.exec("python3")
                .args(["-c", &script])
                .spawn()
                .expect("spawn server"),
        )
    }
}
impl Drop for SlowServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Reads one CRLF line (bounded by the stream's timeout).
fn read_line(conn: &mut std::net::TcpStream) -> String {
    let mut line = Vec::new();
    let mut b = [0u8];
    while !line.ends_with(b"\r\n") {
        match conn.read(&mut b) {
            Ok(1) => line.push(b[0]),
            other => panic!("reading from the server: {other:?} after {line:?}"),
        }
    }
    String::from_utf8_lossy(&line).into_owned()
}

/// The netlink fallback (`--tc-netlink`): filters carry the owner's PID as handle. A `kill -9`
/// in the middle of a session leaves them attached; the next start removes exactly those, while
/// the filters of an instance that is still running stay, and both running instances go on
/// capturing the session and remove their own at exit.
#[test]
fn kill9_with_netlink_filters_next_start_removes_only_the_dead_ones() {
    common::require_root("kill9_with_netlink_filters_next_start_removes_only_the_dead_ones");
    let tmp = TempDir::new("k9nl");
    let ns = NetNs::new();
    let iface = ns.host_if.clone();
    let start = |tag: &str, before: &[u32]| {
        let mut mt = MailTrace::start(
            &["tail", "-i", &iface, "--tc-netlink", "--json"],
            tmp.path(),
            tag,
        );
        let pid = mt.child.as_ref().map(Child::id).expect("running");
        let mut want = before.to_vec();
        want.push(pid);
        wait_for(Duration::from_secs(30), "netlink filters attached", || {
            if let Some(Ok(Some(st))) = mt.child.as_mut().map(Child::try_wait) {
                panic!("mail-trace exited early ({st}): {}", mt.stderr_text());
            }
            owners(&iface).iter().any(|(p, _)| *p == pid).then_some(())
        });
        // Both hooks are attached before the tail starts reading.
        wait_for(Duration::from_secs(10), "both hooks", || {
            (owners(&iface) == ours(&want)).then_some(())
        });
        (mt, pid)
    };

    // A session is open (greeting and EHLO done) when the first instance is killed.
    let _server = SlowServer::start(&ns);
    let (doomed, doomed_pid) = start("doomed", &[]);
    let addr = std::net::SocketAddr::from((ns.server_v4(), 25));
    let mut conn = wait_for(Duration::from_secs(10), "server listening", || {
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()
    });
    conn.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    assert_eq!(read_line(&mut conn), "220 mt.test ESMTP\r\n");
    conn.write_all(b"EHLO client.test\r\n").expect("EHLO");
    assert_eq!(read_line(&mut conn), "250 mt.test\r\n");
    let (mut other, other_pid) = start("other", &[doomed_pid]);

    common::signal(doomed_pid, libc::SIGKILL);
    let mut doomed = doomed;
    let child = doomed.child.as_mut().expect("running");
    assert!(
        wait_child(child, Duration::from_secs(10)).is_some(),
        "kill -9"
    );
    doomed.child = None;
    assert_eq!(
        owners(&iface),
        ours(&[doomed_pid, other_pid]),
        "netlink filters survive kill -9"
    );

    // The next start removes the dead instance's filters, not the running one's.
    let (mut next, next_pid) = start("next", &[other_pid]);
    assert_eq!(owners(&iface), ours(&[other_pid, next_pid]));

    // Both running instances still capture: the session goes on and ends.
    conn.write_all(b"QUIT\r\n").expect("QUIT");
    assert_eq!(read_line(&mut conn), "221 bye\r\n");
    drop(conn);
    std::thread::sleep(Duration::from_millis(500));
    for (mt, pid) in [(&mut other, other_pid), (&mut next, next_pid)] {
        common::signal(pid, libc::SIGINT);
        let (code, stderr) = mt.wait_exit(Duration::from_secs(20));
        assert_eq!(code, Some(0), "{stderr}");
        assert!(
            stderr.contains("mail-trace: 1 sessions (smtp 1, pop3 0, imap 0)"),
            "{pid}: {stderr}"
        );
    }
    assert_eq!(owners(&iface), vec![], "both removed their own at exit");
}

/// A Ctrl-C while the programs are being attached (as soon as the start-up line naming the
/// eBPF object is out, before the privilege drop and the trace loop) is a clean exit: status 0,
/// the summary line, and no program left on the interface. Before the signal handlers were
/// installed ahead of the attach, the default action killed the process half set up.
#[test]
fn sigint_during_start_up_is_a_clean_exit() {
    common::require_root("sigint_during_start_up_is_a_clean_exit");
    let tmp = TempDir::new("sigint-start");
    let ns = NetNs::new();
    let mut mt = MailTrace::start(&["tail", "-i", &ns.host_if], tmp.path(), "early");
    let pid = mt.child.as_ref().map(Child::id).expect("running");
    wait_for(Duration::from_secs(30), "the start-up line", || {
        mt.stderr_text()
            .contains("mail-trace: kernel ")
            .then_some(())
    });
    common::signal(pid, libc::SIGINT);
    let (code, stderr) = mt.wait_exit(Duration::from_secs(20));
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains(" sessions ("), "no summary line: {stderr}");
    assert_eq!(tcx_programs(&ns.host_if), 0, "programs left attached");
}
