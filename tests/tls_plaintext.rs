//! `mail-trace tail --tls-plaintext` against the real test bed (issue 9): the plaintext of
//! STARTTLS and implicit-TLS sessions, read through uprobes on the daemons' libssl, gives the
//! full session record; without the flag only the part before TLS. Every session names the
//! process that owns the server socket. Needs root.
mod common;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use common::clients::swaks;
use common::{require_root, run, signal, wait_child, wait_for, Testbed, PASSWORD};
use serde_json::Value;

const USER: &str = "alice@mx.test";

/// A running `mail-trace tail --json`, SIGKILLed on drop if still running.
struct Tail {
    child: Option<Child>,
    out: PathBuf,
    err: PathBuf,
}

impl Tail {
    fn start(iface: &str, dir: &Path, tag: &str, extra: &[&str]) -> Tail {
        let out = dir.join(format!("{tag}.jsonl"));
        let err = dir.join(format!("{tag}.stderr"));
        let child = Command::new(env!("CARGO_BIN_EXE_mail-trace"))
            .args(["tail", "-i", iface, "--json"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).expect("create stdout file"))
            .stderr(std::fs::File::create(&err).expect("create stderr file"))
            .spawn()
            .expect("spawn mail-trace tail");
        let mut t = Tail {
            child: Some(child),
            out,
            err,
        };
        wait_for(Duration::from_secs(60), "mail-trace tail started", || {
            if let Some(Ok(Some(status))) = t.child.as_mut().map(Child::try_wait) {
                panic!("mail-trace exited early ({status}): {}", t.stderr());
            }
            t.stderr().contains("mail-trace: tracing").then_some(())
        });
        t
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }

    /// SIGINT, wait, and the session records by client address.
    fn stop(mut self) -> (BTreeMap<SocketAddr, Value>, String, String) {
        let mut c = self.child.take().expect("running");
        signal(c.id(), libc::SIGINT);
        let status = wait_child(&mut c, Duration::from_secs(30)).expect("tail exits on SIGINT");
        assert!(status.success(), "tail failed: {}", self.stderr());
        let text = std::fs::read_to_string(&self.out).expect("read tail output");
        let mut recs = BTreeMap::new();
        for line in text.lines() {
            let v: Value = serde_json::from_str(line).expect("JSON line");
            if v["type"] == "session" {
                let client: SocketAddr = v["client"].as_str().unwrap().parse().unwrap();
                recs.insert(client, v);
            }
        }
        (recs, text, self.stderr())
    }
}

impl Drop for Tail {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The one record whose server port is `port`.
fn by_port(recs: &BTreeMap<SocketAddr, Value>, port: u16) -> &Value {
    let found: Vec<&Value> = recs
        .values()
        .filter(|v| v["server"].as_str().unwrap().ends_with(&format!(":{port}")))
        .collect();
    assert_eq!(found.len(), 1, "sessions on port {port}: {recs:#?}");
    found[0]
}

/// IMAPS or POP3S login and logout with Python's client (no certificate check).
fn python_login(server: IpAddr, imap: bool) {
    let script = if imap {
        format!(
            "import imaplib,ssl;c=ssl._create_unverified_context();m=imaplib.IMAP4_SSL('{server}',993,ssl_context=c);m.login('{USER}','{PASSWORD}');m.select('INBOX');m.logout()"
        )
    } else {
        format!(
            "import poplib,ssl;c=ssl._create_unverified_context();m=poplib.POP3_SSL('{server}',995,context=c);m.user('{USER}');m.pass_('{PASSWORD}');m.stat();m.quit()"
        )
    };
    let out = run(
        Command::new("python3").args(["-c", &script]),
        Duration::from_secs(60),
        "python login",
    );
    assert!(out.status.success(), "python login: {}", out.stderr);
}

/// A TLS server and client in one python process (its `ssl` module uses the system libssl) on
/// 127.0.0.1:8443 exchanging a line each way; returns the bytes exchanged.
fn non_mail_tls(cert: &Path, key: &Path) -> usize {
    let script = format!(
        r#"import socket,ssl,threading
s=ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER);s.load_cert_chain('{}','{}')
l=socket.socket();l.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);l.bind(('127.0.0.1',8443));l.listen(1)
def serve():
    c,_=l.accept();t=s.wrap_socket(c,server_side=True);d=t.recv(100);t.sendall(b'web reply '+d);t.close()
th=threading.Thread(target=serve);th.start()
c=ssl._create_unverified_context();k=c.wrap_socket(socket.create_connection(('127.0.0.1',8443)))
k.sendall(b'GET /not-mail');r=k.recv(100);k.close();th.join();print(len(r)+14)"#,
        cert.display(),
        key.display()
    );
    let out = run(
        Command::new("python3").args(["-c", &script]),
        Duration::from_secs(60),
        "python non-mail TLS",
    );
    assert!(out.status.success(), "python non-mail TLS: {}", out.stderr);
    out.stdout.trim().parse().expect("bytes exchanged")
}

fn sessions(tb: &Testbed) -> Vec<String> {
    let server = IpAddr::V4(tb.ns.server_v4());
    let mut queue_ids = Vec::new();
    let tls25 = swaks(server, 25, &["--to", USER, "--tls", "--tls-sni", "mx.test"]);
    assert_eq!(tls25.code, 0, "{}", tls25.transcript);
    queue_ids.extend(tls25.queue_ids());
    let auth = [
        "--to",
        "bob@mx.test",
        "--auth",
        "PLAIN",
        "--auth-user",
        USER,
        "--auth-password",
        PASSWORD,
        "--tls-sni",
        "mx.test",
    ];
    let mut a587 = auth.to_vec();
    a587.push("--tls");
    let sub = swaks(server, 587, &a587);
    assert_eq!(sub.code, 0, "{}", sub.transcript);
    queue_ids.extend(sub.queue_ids());
    let mut a465 = auth.to_vec();
    a465.push("--tls-on-connect");
    let smtps = swaks(server, 465, &a465);
    assert_eq!(smtps.code, 0, "{}", smtps.transcript);
    queue_ids.extend(smtps.queue_ids());
    python_login(server, true);
    python_login(server, false);
    queue_ids
}

/// The tests of this file one at a time: each attaches uprobes to every process using the
/// libssl, and the cost test counts the runs of the probes it loaded.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

#[test]
fn tls_plaintext_gives_the_whole_session_and_its_process() {
    require_root("tls_plaintext");
    let _one = serial();
    let tb = Testbed::start();
    let dir = tb.dir.path().to_path_buf();
    let with = Tail::start(&tb.ns.host_if, &dir, "with", &["--tls-plaintext"]);
    let without = Tail::start(&tb.ns.host_if, &dir, "without", &[]);
    assert!(
        with.stderr().contains("TLS plaintext from /"),
        "{}",
        with.stderr()
    );
    let queue_ids = sessions(&tb);
    assert_eq!(queue_ids.len(), 3, "one message per SMTP session");
    // Let the last records and FINs reach the ring.
    std::thread::sleep(Duration::from_millis(500));
    let (recs, text, with_err) = with.stop();
    let (plain, plain_text, _) = without.stop();
    for t in [&text, &plain_text] {
        assert!(!t.contains(PASSWORD), "password in output");
    }
    let log = tb.postfix.log();
    let dovecot_log = tb.dovecot.log();

    // STARTTLS on 25: everything after the 220 too.
    let r = by_port(&recs, 25);
    assert_eq!(r["tls"], true);
    assert_eq!(r["tls_mode"], "starttls");
    assert_eq!(r["plaintext_source"], "uprobe");
    let tx = &r["transactions"][0];
    assert_eq!(tx["mail_from"], "sender@client.test");
    assert_eq!(tx["rcpt"][0]["addr"], USER, "{r:#}");
    assert_eq!(tx["rcpt"][0]["code"], 250);
    assert_eq!(tx["reply"]["code"], 250);
    assert_eq!(tx["queue_id"].as_str(), Some(queue_ids[0].as_str()));
    assert!(log.contains(&format!("{}: ", queue_ids[0])));
    assert_eq!(r["process"]["comm"], "postfix/smtpd");
    assert!(r["process"]["pid"].as_u64().unwrap() > 1);

    // 587 STARTTLS + AUTH PLAIN: the user, never the password.
    let r = by_port(&recs, 587);
    assert_eq!(r["plaintext_source"], "uprobe", "{r:#}");
    assert_eq!(r["auth"]["mechanism"], "PLAIN", "{r:#}");
    assert_eq!(r["auth"]["user"], USER);
    assert_eq!(r["auth"]["code"], 235);
    let tx = &r["transactions"][0];
    assert_eq!(tx["mail_from"], "sender@client.test");
    assert_eq!(tx["rcpt"][0]["addr"], "bob@mx.test");
    assert_eq!(tx["queue_id"].as_str(), Some(queue_ids[1].as_str()));
    assert_eq!(r["process"]["comm"], "postfix/smtpd");

    // 465 implicit TLS: greeting to QUIT.
    let r = by_port(&recs, 465);
    assert_eq!(r["tls_mode"], "implicit");
    assert_eq!(r["plaintext_source"], "uprobe");
    assert_eq!(r["greeting"]["code"], 220);
    assert_eq!(r["auth"]["user"], USER);
    let tx = &r["transactions"][0];
    assert_eq!(tx["rcpt"][0]["addr"], "bob@mx.test");
    assert_eq!(tx["queue_id"].as_str(), Some(queue_ids[2].as_str()));
    assert_eq!(r["process"]["comm"], "postfix/smtpd");

    // Dovecot's login processes use memory BIOs: OpenSSL never touches the socket, and the
    // kernel ties each SSL object to the login process's last mail socket instead. The
    // login process lives as long as its one connection and is named as `ps` shows it.
    let r = by_port(&recs, 993);
    assert_eq!(r["tls_mode"], "implicit");
    assert_eq!(r["plaintext_source"], "uprobe", "{r:#}");
    assert_eq!(r["greeting"]["code"], "OK");
    assert_eq!(r["user"], USER);
    assert_eq!(r["auth"]["mechanism"], "LOGIN");
    assert_eq!(r["auth"]["result"], "OK");
    assert_eq!(r["mailbox"], serde_json::json!(["INBOX"]));
    assert_eq!(verbs(r), ["CAPABILITY", "LOGIN", "SELECT", "LOGOUT"]);
    assert_eq!(r["process"]["comm"], "dovecot/imap-login");
    let imap_pid = r["process"]["pid"].as_u64().unwrap();
    let r = by_port(&recs, 995);
    assert_eq!(r["tls_mode"], "implicit");
    assert_eq!(r["plaintext_source"], "uprobe", "{r:#}");
    assert_eq!(r["greeting"]["code"], "+OK");
    assert_eq!(r["user"], USER);
    assert_eq!(r["auth"]["mechanism"], "USER");
    assert_eq!(r["auth"]["result"], "+OK");
    assert_eq!(verbs(r), ["USER", "PASS", "STAT", "QUIT"]);
    assert_eq!(r["process"]["comm"], "dovecot/pop3-login");
    assert_ne!(r["process"]["pid"].as_u64().unwrap(), imap_pid);
    // Dovecot's own view of the two logins: over TLS, by the login processes named above.
    for daemon in ["imap-login", "pop3-login"] {
        let login = format!("{daemon}: Info: Login: user=<{USER}>, method=PLAIN,");
        let line = dovecot_log.lines().find(|l| l.contains(&login));
        assert!(line.is_some_and(|l| l.contains(", TLS, ")), "{dovecot_log}");
    }

    // Every chunk's connection came from the kernel: Postfix and the clients through their
    // own socket I/O in the call, Dovecot through the thread's last socket; none from /proc.
    let tally = with_err
        .lines()
        .find(|l| l.starts_with("mail-trace: TLS plaintext: "))
        .unwrap_or_else(|| panic!("no plaintext line: {with_err}"));
    assert!(
        tally.contains(" 0 lost, 0 truncated, 0 unreadable;"),
        "{tally}"
    );
    assert!(tally.contains(" 0 from /proc, 0 unknown;"), "{tally}");
    let count = |label: &str| -> u64 {
        let before = tally.split(label).next().unwrap();
        before.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert!(count(" chunks from the call's socket") > 0, "{tally}");
    assert!(count(" from the thread's last socket") > 0, "{tally}");
    // The kernel still leaves the encrypted payload out (TLS suppression): the plaintext,
    // not the wire, drives the dissectors.
    assert!(count(" encrypted bytes not copied") > 0, "{tally}");

    // Without the flag: what the wire shows, nothing after TLS began.
    let r = by_port(&plain, 25);
    assert_eq!(r["tls"], true);
    assert!(r.get("plaintext_source").is_none());
    assert_eq!(r["transactions"], Value::Array(vec![]));
    assert_eq!(r["process"]["comm"], "postfix/smtpd");
    let r = by_port(&plain, 587);
    assert_eq!(r["auth"], Value::Null);
    assert_eq!(r["transactions"], Value::Array(vec![]));
    let r = by_port(&plain, 465);
    assert_eq!(r["greeting"], Value::Null);
    assert_eq!(r["transactions"], Value::Array(vec![]));
    for port in [993, 995] {
        let r = by_port(&plain, port);
        assert_eq!(r["tls"], true);
        assert_eq!(r["user"], Value::Null);
        assert_eq!(r["greeting"], Value::Null);
        assert_eq!(r["commands"], Value::Array(vec![]));
        assert!(r.get("plaintext_source").is_none());
    }
}

/// The command verbs of a POP3 or IMAP record, in order.
fn verbs(r: &Value) -> Vec<&str> {
    r["commands"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["verb"].as_str().unwrap())
        .collect()
}

/// SMTP sessions (587, STARTTLS + AUTH) and IMAPS logins in the cost run.
const COST_SMTP: usize = 20;
const COST_IMAPS: usize = 5;

/// The probes' cost per run under a bounded swaks loop, from the kernel's BPF run-time
/// statistics (BPF_ENABLE_STATS: counted only while our fd is open, and without touching
/// the `kernel.bpf_stats_enabled` sysctl others may use). Prints the figures that go into
/// docs/tls-plaintext.md; asserts that every probe ran, that every probed call was seen
/// entering and returning, and that every session got its plaintext.
#[test]
fn probe_cost_per_call() {
    require_root("tls_plaintext");
    let _one = serial();
    let tb = Testbed::start();
    let dir = tb.dir.path().to_path_buf();
    let before: Vec<u32> = mt_programs().iter().map(|p| p.0).collect();
    let stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).expect("BPF_ENABLE_STATS");
    let tail = Tail::start(&tb.ns.host_if, &dir, "cost", &["--tls-plaintext"]);
    let server = IpAddr::V4(tb.ns.server_v4());
    for _ in 0..COST_SMTP {
        let run = swaks(
            server,
            587,
            &[
                "--to",
                "bob@mx.test",
                "--auth",
                "PLAIN",
                "--auth-user",
                USER,
                "--auth-password",
                PASSWORD,
                "--tls",
                "--tls-sni",
                "mx.test",
            ],
        );
        assert_eq!(run.code, 0, "{}", run.transcript);
    }
    for _ in 0..COST_IMAPS {
        python_login(server, true);
    }
    std::thread::sleep(Duration::from_millis(500));
    let ours: BTreeMap<String, (u64, u64)> = mt_programs()
        .into_iter()
        .filter(|p| !before.contains(&p.0))
        .map(|(_, name, cnt, ns)| (name, (cnt, ns)))
        .collect();
    drop(stats);
    let (recs, _, err) = tail.stop();
    let placed = recs
        .values()
        .filter(|r| r["plaintext_source"] == "uprobe")
        .count();
    assert_eq!(placed, COST_SMTP + COST_IMAPS, "{err}");

    eprintln!(
        "probe cost: {COST_SMTP} swaks 587 STARTTLS+AUTH sessions, {COST_IMAPS} IMAPS logins"
    );
    eprintln!(
        "probe cost: {:<16} {:>8} {:>12} {:>8}",
        "program", "runs", "run_time_ns", "ns/run"
    );
    for (name, (cnt, ns)) in &ours {
        eprintln!(
            "probe cost: {name:<16} {cnt:>8} {ns:>12} {:>8}",
            ns.checked_div(*cnt).unwrap_or(0)
        );
    }
    // Kernel names are cut to 15 bytes.
    let runs = |name: &str| ours.get(&name[..name.len().min(15)]).map_or(0, |p| p.0);
    for p in [
        "mt_ssl_enter",
        "mt_ssl_set_fd",
        "mt_ssl_free",
        "mt_sock_send",
        "mt_sock_recv",
    ] {
        assert!(runs(p) > 0, "{p} never ran: {ours:?}");
    }
    let returns: u64 = [
        "mt_ssl_read_ret",
        "mt_ssl_write_ret",
        "mt_ssl_read_ex_ret",
        "mt_ssl_write_ex_ret",
    ]
    .iter()
    .map(|p| runs(p))
    .sum();
    assert_eq!(runs("mt_ssl_enter"), returns, "{ours:?}");
}

/// (id, name, run count, run time in ns) of the loaded programs named mt_*, and of the TC
/// programs (mail_trace_*) that share a map with them: the same mail-trace, for scale.
fn mt_programs() -> Vec<(u32, String, u64, u64)> {
    let all: Vec<_> = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter_map(|p| {
            let name = p.name_as_str()?.to_string();
            let maps = p.map_ids().ok().flatten().unwrap_or_default();
            Some((
                p.id(),
                name,
                p.run_count(),
                p.run_time().as_nanos() as u64,
                maps,
            ))
        })
        .collect();
    let ours: Vec<u32> = all
        .iter()
        .filter(|p| p.1.starts_with("mt_"))
        .flat_map(|p| p.4.iter().copied())
        .collect();
    all.into_iter()
        .filter(|p| {
            p.1.starts_with("mt_")
                || (p.1.starts_with("mail_trace_") && p.4.iter().any(|m| ours.contains(m)))
        })
        .map(|(id, name, cnt, ns, _)| (id, name, cnt, ns))
        .collect()
}

/// `capture --tls-plaintext` during one STARTTLS session on 25: a `TLS` line per plaintext
/// chunk, in both directions of that connection, counted in the exit summary, and no content
/// (the password is in the message body).
#[test]
fn capture_prints_a_line_per_plaintext_chunk_and_no_content() {
    require_root("tls_plaintext");
    let _one = serial();
    let tb = Testbed::start();
    let dir = tb.dir.path().to_path_buf();
    let out = dir.join("capture.out");
    let err = dir.join("capture.stderr");
    let mut child = Command::new(env!("CARGO_BIN_EXE_mail-trace"))
        .args(["capture", "--tls-plaintext", "-i", &tb.ns.host_if])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).expect("create stdout file"))
        .stderr(std::fs::File::create(&err).expect("create stderr file"))
        .spawn()
        .expect("spawn mail-trace capture");
    let stderr = || std::fs::read_to_string(&err).unwrap_or_default();
    wait_for(Duration::from_secs(60), "TLS probes attached", || {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("mail-trace exited early ({status}): {}", stderr());
        }
        stderr()
            .contains("mail-trace: TLS plaintext from")
            .then_some(())
    });
    let server = IpAddr::V4(tb.ns.server_v4());
    let run = swaks(
        server,
        25,
        &[
            "--to",
            USER,
            "--tls",
            "--tls-sni",
            "mx.test",
            "--body",
            PASSWORD,
        ],
    );
    // Another process using the same libssl for a connection that is not mail (a web
    // server and its client on loopback port 8443): the kernel copies none of its plaintext.
    let (cert, key) = common::self_signed_cert(&dir, &[]);
    let other = non_mail_tls(&cert, &key);
    std::thread::sleep(Duration::from_millis(500));
    signal(child.id(), libc::SIGINT);
    let status = wait_child(&mut child, Duration::from_secs(30));
    let _ = child.kill();
    assert!(
        status.expect("capture exits on SIGINT").success(),
        "{}",
        stderr()
    );
    assert_eq!(run.code, 0, "{}", run.transcript);
    let text = std::fs::read_to_string(&out).expect("read capture output");
    assert!(
        !text.contains(".8443"),
        "a non-mail TLS call was copied: {text}"
    );
    // Its calls are counted, not copied: at least the server's read and write and the
    // client's write and read of the exchange.
    let not_copied: u64 = stderr()
        .split(" TLS calls of no mail connection not copied")
        .next()
        .and_then(|h| h.rsplit(", ").next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count of calls not copied: {}", stderr()));
    assert!(
        not_copied >= 4,
        "{not_copied} calls not copied ({other} exchanged)"
    );
    let err_text = stderr();
    assert!(!text.contains(PASSWORD), "password in output");
    assert!(!err_text.contains(PASSWORD), "password in stderr");
    // The client's address from the one SYN to port 25.
    let syn = format!(" > {server}.25: Flags [S]");
    let clients: Vec<&str> = text
        .lines()
        .filter(|l| l.contains(&syn))
        .filter_map(|l| l.split(" IP ").nth(1)?.split(' ').next())
        .collect();
    assert_eq!(clients.len(), 1, "{text}");
    let client = clients[0];
    let tls: Vec<&str> = text.lines().filter(|l| l.contains(" TLS ")).collect();
    let to_server = format!(" IP {client} > {server}.25: SSL_");
    let to_client = format!(" IP {server}.25 > {client}: SSL_");
    assert!(tls.iter().any(|l| l.contains(&to_server)), "{text}");
    assert!(tls.iter().any(|l| l.contains(&to_client)), "{text}");
    for l in &tls {
        assert!(l.contains(", length "), "{l}");
        // Only the mail connection's calls: none of the web exchange's.
        assert!(l.contains(&format!("{server}.25")), "{l}");
    }
    assert!(
        err_text.contains(&format!(", {} TLS plaintext chunks", tls.len())),
        "{err_text}"
    );
}

/// An unprivileged local user cannot choose where the TLS probes go (issue 17): a process of
/// `nobody` whose executable is named `smtpd` and that maps a libssl from a directory of its
/// own is passed over with a one-line reason, and the same library named with `--libssl` is
/// refused (it is not root's: whoever owns it can put any code at the probed offsets).
#[test]
fn uprobe_targets_of_unprivileged_users_are_refused() {
    require_root("tls_plaintext");
    let _one = serial();
    let dir = common::TempDir::new("uprobe");
    let d = dir.path();
    let chown = |p: &Path| {
        let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).expect("path");
        // SAFETY: a valid C string; 65534 is nobody.
        assert_eq!(unsafe { libc::chown(c.as_ptr(), 65534, 65534) }, 0);
    };
    let exe = d.join("smtpd");
    let lib = d.join("libssl.so.3");
    std::fs::copy("/bin/sleep", &exe).expect("copy sleep");
    let real = [
        "/usr/lib/x86_64-linux-gnu/libssl.so.3",
        "/lib/x86_64-linux-gnu/libssl.so.3",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists())
    .expect("the system's libssl.so.3");
    std::fs::copy(real, &lib).expect("copy libssl");
    chown(&exe);
    chown(&lib);
    let mut sleeper = Command::new("/usr/bin/setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg("/usr/bin/env")
        .arg(format!("LD_PRELOAD={}", lib.display()))
        .arg(&exe)
        .arg("120")
        .stdin(Stdio::null())
        .spawn()
        .expect("start the fake smtpd");
    let pid = sleeper.id();
    wait_for(
        Duration::from_secs(20),
        "the fake smtpd maps its libssl",
        || {
            let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
            maps.contains(&lib.display().to_string()).then_some(())
        },
    );
    let reason = format!(
        "the libraries of pid {pid} ({}): owned by uid 65534, not root",
        exe.display()
    );

    // Chosen from the running processes: the fake one is named with its reason. Other mail
    // daemons may run here (then the capture starts and is stopped), or none (then it exits).
    let err = d.join("auto.stderr");
    let mut child = Command::new(env!("CARGO_BIN_EXE_mail-trace"))
        .args(["capture", "--tls-plaintext", "-i", "lo"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err).expect("create stderr file"))
        .spawn()
        .expect("spawn mail-trace capture");
    let stderr = || std::fs::read_to_string(&err).unwrap_or_default();
    let started = wait_for(
        Duration::from_secs(60),
        "capture started or refused",
        || {
            if let Ok(Some(_)) = child.try_wait() {
                return Some(false);
            }
            stderr().contains("mail-trace: running as").then_some(true)
        },
    );
    if started {
        signal(child.id(), libc::SIGINT);
    }
    let status = wait_child(&mut child, Duration::from_secs(30));
    let _ = child.kill();
    let text = stderr();
    if started {
        assert!(
            text.contains(&format!(
                "mail-trace: --tls-plaintext: not probing {reason}\n"
            )),
            "{text}"
        );
        let from = text
            .lines()
            .find(|l| l.starts_with("mail-trace: TLS plaintext from"))
            .expect("the libraries probed");
        assert!(!from.contains(&d.display().to_string()), "{from}");
    } else {
        assert!(!status.expect("exited").success(), "{text}");
        assert!(
            text.contains(&format!(
                "--tls-plaintext: no running mail daemon maps a libssl.so that may be probed; \
                 name it with --libssl PATH (refused: {reason})"
            )),
            "{text}"
        );
    }

    // Named by the operator: refused all the same, in one line, and nothing is attached.
    let out = run(
        Command::new(env!("CARGO_BIN_EXE_mail-trace"))
            .args(["capture", "--tls-plaintext", "-i", "lo", "--libssl"])
            .arg(&lib),
        Duration::from_secs(60),
        "capture --libssl",
    );
    let text = &out.stderr;
    assert!(!out.status.success(), "{text}");
    let line = format!(
        "--tls-plaintext: no --libssl file may be probed (refused: {}: owned by uid 65534, not root)",
        lib.display()
    );
    assert!(text.contains(&line), "{text}");
    assert_eq!(
        text.lines().count(),
        text.lines().filter(|l| l.starts_with("mail-trace")).count(),
        "{text}"
    );

    signal(pid, libc::SIGKILL);
    let _ = sleeper.wait();
}
