//! The log join by the daemon's own brackets (issue 22), against the real test bed: Postfix
//! reuses one smtpd process for session after session from the same client, a fraction of a
//! second apart, delivered and rejected alternating; several clients at once; a machine made
//! busy meanwhile; the log read from Postfix's own file and from the systemd journal.
//!
//! The truth each session's `log` is held to is Postfix's own log split by its brackets: an
//! smtpd pid's lines from `connect from` to `disconnect from`, plus every line of the queue ids
//! its `client=` lines name. The tail runs with `--show-headers` so every entry carries its raw
//! line, and the comparison is line for line (the text from `postfix/…[pid]:` on, so that the
//! file's and the journal's time formats do not matter).
//!
//! Dovecot's part (module `dovecot`) holds each IMAP/POP3 session to Dovecot's log split by its
//! session ids: the login process's `session=<ID>` and the mail process's `imap(user)<pid><ID>`.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::clients::{swaks, RawSmtp};
use common::tailer::Tail;
use common::{run_ok, wait_for, TempDir, Testbed};
use serde_json::Value;

/// The line from its `program[pid]:` tag on; None for lines that are not Postfix's.
fn tagged(line: &str) -> Option<&str> {
    let i = line.find(" postfix/")?;
    Some(&line[i + 1..])
}

/// One smtpd connection as Postfix logged it.
#[derive(Debug)]
struct Conn {
    /// `postfix/smtpd[123]`.
    tag: String,
    port: Option<u16>,
    queue_ids: Vec<String>,
    /// Tagged lines, the connection's own and those of its queue ids.
    lines: Vec<String>,
}

/// Postfix's log split by smtpd's brackets, in connect order.
fn split_by_brackets(log: &str, ours: &str) -> Vec<Conn> {
    let mut conns: Vec<Conn> = Vec::new();
    let mut open: HashMap<String, usize> = HashMap::new();
    let mut by_queue_id: HashMap<String, usize> = HashMap::new();
    for l in log.lines().filter_map(tagged) {
        let Some((tag, msg)) = l.split_once(": ") else {
            continue;
        };
        if tag.split('[').next().is_some_and(|p| p.ends_with("/smtpd")) {
            if let Some(client) = msg.strip_prefix("connect from ") {
                if !client.contains(ours) {
                    open.remove(tag);
                    continue;
                }
                let port = client
                    .split("]:")
                    .nth(1)
                    .and_then(|p| p.split(' ').next()?.parse().ok());
                open.insert(tag.to_string(), conns.len());
                conns.push(Conn {
                    tag: tag.to_string(),
                    port,
                    queue_ids: Vec::new(),
                    lines: vec![l.to_string()],
                });
                continue;
            }
            let Some(&i) = open.get(tag) else {
                continue;
            };
            conns[i].lines.push(l.to_string());
            if let Some((id, _)) = msg.split_once(": client=") {
                conns[i].queue_ids.push(id.to_string());
                by_queue_id.insert(id.to_string(), i);
            }
            if msg.starts_with("disconnect from ") {
                open.remove(tag);
            }
        } else if let Some(&i) = msg.split_once(": ").and_then(|(id, _)| by_queue_id.get(id)) {
            conns[i].lines.push(l.to_string());
        }
    }
    conns
}

/// Every tagged raw line mail-trace joined to each session (its record's `log` and its `log`
/// records), by session id; the session records; and the lines said unmatched (`log` records
/// with a null session).
fn joined(out: &[Value]) -> (Vec<Value>, BTreeMap<u64, Vec<String>>, Vec<String>) {
    let sessions: Vec<Value> = out
        .iter()
        .filter(|v| v["type"] == "session" && v["proto"] == "smtp")
        .cloned()
        .collect();
    let mut lines: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    let raw = |e: &Value| -> String {
        let l = e["line"]
            .as_str()
            .unwrap_or_else(|| panic!("no raw line (--show-headers): {e}"));
        tagged(l).unwrap_or(l).to_string()
    };
    for s in &sessions {
        let id = s["id"].as_u64().unwrap();
        let v = lines.entry(id).or_default();
        for e in s["log"].as_array().into_iter().flatten() {
            v.push(raw(e));
        }
    }
    let mut unmatched = Vec::new();
    for r in out.iter().filter(|v| v["type"] == "log") {
        match r["session"].as_u64() {
            Some(id) => lines.entry(id).or_default().push(raw(r)),
            None => {
                assert!(r["unmatched"].is_string(), "a null session says why: {r}");
                unmatched.push(raw(r));
            }
        }
    }
    (sessions, lines, unmatched)
}

/// Which lines may be said unmatched: connections the capture did not see (the probes, logged
/// before it started).
enum Unseen<'a> {
    /// Exactly these connections' lines (replay reads the whole file).
    Exactly(&'a [Conn]),
    /// Some of these connections' lines or none: journalctl -n 0 -f starts at an end of the
    /// journal that entries written just before may not have reached yet.
    AtMost(&'a [Conn]),
}

/// Asserts that the session of each client address has exactly the lines of its connection,
/// and that the lines said unmatched are those `unseen` allows.
fn assert_exactly_their_own(pairs: &[(SocketAddr, &Conn)], unseen: Unseen, out: &[Value]) {
    let (sessions, lines, mut unmatched) = joined(out);
    unmatched.sort();
    match unseen {
        Unseen::Exactly(conns) => {
            let mut want: Vec<String> = conns.iter().flat_map(|c| c.lines.clone()).collect();
            want.sort();
            assert_eq!(unmatched, want, "the lines said unmatched");
        }
        Unseen::AtMost(conns) => {
            for l in &unmatched {
                assert!(
                    conns.iter().any(|c| c.lines.contains(l)),
                    "said unmatched, not a probe's line: {l}"
                );
            }
        }
    }
    let mut wrong = Vec::new();
    for (client, conn) in pairs {
        let Some(s) = sessions
            .iter()
            .find(|s| s["client"] == client.to_string().as_str())
        else {
            wrong.push(format!("no session record from {client}"));
            continue;
        };
        let mut got = lines
            .get(&s["id"].as_u64().unwrap())
            .cloned()
            .unwrap_or_default();
        let mut want = conn.lines.clone();
        got.sort();
        want.sort();
        if got != want {
            wrong.push(format!(
                "session #{} from {client} ({}):\n  got  {got:#?}\n  want {want:#?}",
                s["id"], conn.tag
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} sessions wrong:\n{}",
        wrong.len(),
        pairs.len(),
        wrong.join("\n")
    );
}

/// `smtpd_client_port_logging = no` (Postfix's default; the test bed turns it on), applied by
/// a reload and waited for: a probe connection (before any capture) logs no port.
fn port_logging_off(tb: &Testbed, log: impl Fn() -> String) {
    let cf = tb.postfix.config_dir().display().to_string();
    run_ok(
        Command::new("postconf").args(["-c", &cf, "-e", "smtpd_client_port_logging = no"]),
        Duration::from_secs(20),
        "postconf",
    );
    run_ok(
        tb.ns.exec("postfix").args(["-c", &cf, "reload"]),
        Duration::from_secs(30),
        "postfix reload",
    );
    let server = SocketAddr::new(tb.ns.server_v4().into(), 25);
    wait_for(
        Duration::from_secs(30),
        "smtpd without client ports after the reload",
        || {
            RawSmtp::connect(server).quit();
            std::thread::sleep(Duration::from_millis(300));
            let l = log();
            let last = l.lines().rfind(|l| l.contains(": disconnect from "))?;
            let client = last.split(": disconnect from ").nth(1)?.split(' ').next()?;
            (!client.contains("]:")).then_some(())
        },
    );
}

/// A journald of the tests' own and the second it starts at: the lines of this run are those
/// since then.
fn journal_from_now() -> (common::journal::Journald, u64) {
    let j = common::journal::Journald::start();
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    (j, since)
}

/// `[10.99.N.`: this test bed's client addresses (other test beds may log to the same journal).
fn ours(tb: &Testbed) -> String {
    let o = tb.ns.client_v4().octets();
    format!("[{}.{}.{}.", o[0], o[1], o[2])
}

/// `n` sessions back to back from one client, delivered (even) and rejected (odd)
/// alternating; returns each session's client address and, for the delivered, its queue id.
fn back_to_back(server: IpAddr, n: usize) -> Vec<(SocketAddr, Option<String>)> {
    let server = SocketAddr::new(server, 25);
    (0..n)
        .map(|i| {
            if i % 2 == 0 {
                let mut c = RawSmtp::connect(server);
                let local = c.local;
                assert_eq!(c.cmd("EHLO client.test").code, 250);
                assert_eq!(c.cmd("MAIL FROM:<sender@client.test>").code, 250);
                assert_eq!(c.cmd("RCPT TO:<alice@mx.test>").code, 250);
                assert_eq!(c.cmd("DATA").code, 354);
                c.send(format!("Subject: back to back {i}\r\n\r\nbody {i}\r\n.\r\n").as_bytes());
                let r = c.read_reply();
                let id = r.queue_id().unwrap_or_else(|| panic!("not queued: {r:?}"));
                c.quit();
                (local, Some(id))
            } else {
                let mut c = RawSmtp::connect(server);
                let local = c.local;
                assert_eq!(c.cmd("EHLO client.test").code, 250);
                assert_eq!(c.cmd("MAIL FROM:<sender@client.test>").code, 250);
                assert_eq!(c.cmd("RCPT TO:<nobody@mx.test>").code, 550);
                c.quit();
                (local, None)
            }
        })
        .collect()
}

/// Waits until every queue id is `removed` in `log()`, and every connection disconnected.
fn wait_all_logged(
    log: impl Fn() -> String,
    ours: &str,
    ids: &[String],
    connects: usize,
) -> String {
    wait_for(
        Duration::from_secs(40),
        "every message removed and every connection closed in the log",
        || {
            let l = log();
            (ids.iter().all(|q| l.contains(&format!("{q}: removed")))
                && l.lines()
                    .filter(|l| l.contains(": disconnect from ") && l.contains(ours))
                    .count()
                    >= connects)
                .then_some(l)
        },
    )
}

/// The back-to-back sessions paired with their connections: strictly one after the other, so
/// the k-th connection logged after `skip` earlier ones is the k-th session.
fn pair_in_order<'a>(
    sessions: &[(SocketAddr, Option<String>)],
    conns: &'a [Conn],
    reuse: usize,
) -> Vec<(SocketAddr, &'a Conn)> {
    assert_eq!(conns.len(), sessions.len(), "{conns:#?}");
    let pairs: Vec<(SocketAddr, &Conn)> = sessions
        .iter()
        .zip(conns)
        .map(|((client, id), conn)| {
            assert_eq!(
                conn.queue_ids,
                id.iter().cloned().collect::<Vec<_>>(),
                "{conn:#?}"
            );
            assert!(conn.port.is_none(), "port logged: {conn:#?}");
            (*client, conn)
        })
        .collect();
    // Each smtpd instance has a process that serves `reuse` of them: reuse is visible.
    let mut per_pid: HashMap<&str, usize> = HashMap::new();
    for c in conns {
        *per_pid.entry(c.tag.as_str()).or_default() += 1;
    }
    for c in conns {
        let program = c.tag.split('[').next().unwrap_or_default();
        assert!(
            per_pid
                .iter()
                .any(|(t, &n)| t.starts_with(&format!("{program}[")) && n >= reuse),
            "no {program} served {reuse} connections: {per_pid:?}"
        );
    }
    pairs
}

/// `mail-trace replay --json --show-headers` of `pcap` with the log `maillog` (`--maillog=…`),
/// with the default linger and without: the output of each.
fn replayed(pcap: &std::path::Path, maillog: &str) -> Vec<Vec<Value>> {
    ["1500", "0"]
        .iter()
        .map(|linger| {
            let out = run_ok(
                Command::new(env!("CARGO_BIN_EXE_mail-trace"))
                    .args([
                        "replay",
                        "--json",
                        "--show-headers",
                        "--maillog-linger-ms",
                        linger,
                    ])
                    .arg(pcap)
                    .arg(maillog),
                Duration::from_secs(60),
                "mail-trace replay --maillog",
            );
            json(&out.stdout)
        })
        .collect()
}

fn json(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

#[test]
fn fifty_back_to_back_sessions_through_one_smtpd_from_the_file() {
    common::require_root("fifty_back_to_back_sessions_through_one_smtpd_from_the_file");
    let tb = Testbed::start();
    port_logging_off(&tb, || tb.postfix.log());
    let probes = split_by_brackets(&tb.postfix.log(), &ours(&tb)).len();
    let dir = TempDir::new("logjoin");
    // -w is opened after the privilege drop: a directory the dropped user may write.
    common::writable_by_dropped_user(dir.path());
    let plog = format!("--maillog={}", tb.postfix.log_path().display());
    let pcap = dir.path().join("b2b.pcapng");
    let pcap_arg = pcap.display().to_string();
    let tail = Tail::start(
        &tb.ns.host_if,
        &["--json", "--show-headers", &plog, "-w", &pcap_arg],
        dir.path(),
        "b2b",
    );
    let sessions = back_to_back(tb.ns.server_v4().into(), 50);
    let ids: Vec<String> = sessions.iter().filter_map(|s| s.1.clone()).collect();
    let log = wait_all_logged(|| tb.postfix.log(), &ours(&tb), &ids, probes + 50);
    // The follower's last read and the linger.
    std::thread::sleep(Duration::from_secs(3));
    let live = json(&tail.stop().stdout);
    let conns = split_by_brackets(&log, &ours(&tb));
    let pairs = pair_in_order(&sessions, &conns[probes..], 10);
    // Live, the log is followed from its end: the probes are not read.
    assert_exactly_their_own(&pairs, Unseen::Exactly(&[]), &live);

    // The same capture replayed with the log: the same lines, with and without the linger.
    for out in replayed(&pcap, &plog) {
        // Replay reads the whole file: the probes' connections have no session in the
        // capture and are said unmatched, line for line.
        assert_exactly_their_own(&pairs, Unseen::Exactly(&conns[..probes]), &out);
    }
}

/// The other smtpd instances `master.cf` names by `syslog_name` are bracketed like smtpd:
/// submission (587, AUTH in the clear, and a refused relay without it), smtps (465, implicit
/// TLS) and smtpd on 25 with STARTTLS, back to back from one client, the port not logged.
/// Inside TLS the wire sees neither the `queued as` nor the refusals: the brackets' order and
/// the counts the wire did see decide.
#[test]
fn submission_smtps_and_starttls_sessions_back_to_back() {
    common::require_root("submission_smtps_and_starttls_sessions_back_to_back");
    let tb = Testbed::start();
    port_logging_off(&tb, || tb.postfix.log());
    let probes = split_by_brackets(&tb.postfix.log(), &ours(&tb)).len();
    let dir = TempDir::new("logjoin-instances");
    common::writable_by_dropped_user(dir.path());
    let plog = format!("--maillog={}", tb.postfix.log_path().display());
    let pcap = dir.path().join("instances.pcapng");
    let pcap_arg = pcap.display().to_string();
    let tail = Tail::start(
        &tb.ns.host_if,
        &["--json", "--show-headers", &plog, "-w", &pcap_arg],
        dir.path(),
        "instances",
    );
    let server: IpAddr = tb.ns.server_v4().into();
    let client: IpAddr = tb.ns.client_v4().into();
    let user = format!("alice@{}", common::DOMAIN);
    let auth = [
        "--auth-user",
        user.as_str(),
        "--auth-password",
        common::PASSWORD,
    ];
    let tls = ["--tls", "--tls-sni", common::DOMAIN];
    const N: u16 = 40;
    let sessions: Vec<(SocketAddr, Option<String>)> = (0..N)
        .map(|i| {
            // (port, arguments, queued, refused)
            let (port, args, queued): (u16, Vec<&str>, bool) = match i % 5 {
                0 => (
                    587,
                    [&["--to", "bob@mx.test", "--auth", "LOGIN"][..], &auth].concat(),
                    true,
                ),
                // Relaying without AUTH: 554 to the RCPT, in the clear.
                1 => (587, vec!["--to", "bob@mx.test"], false),
                2 => (
                    465,
                    [
                        &[
                            "--to",
                            "bob@mx.test",
                            "--tls-on-connect",
                            "--tls-sni",
                            common::DOMAIN,
                            "--auth",
                            "PLAIN",
                        ][..],
                        &auth,
                    ]
                    .concat(),
                    true,
                ),
                // 550 to the RCPT inside TLS.
                3 => (25, [&["--to", "nobody@mx.test"][..], &tls].concat(), false),
                _ => (25, [&["--to", "alice@mx.test"][..], &tls].concat(), true),
            };
            let local = 41000 + i;
            let lp = local.to_string();
            let ip = client.to_string();
            let mut args = args;
            args.extend(["--local-interface", &ip, "--local-port", &lp]);
            let r = swaks(server, port, &args);
            let ids = r.queue_ids();
            assert_eq!(ids.len(), usize::from(queued), "{}", r.transcript);
            if !queued {
                assert!(
                    r.codes().iter().any(|c| [550, 554].contains(c)),
                    "{}",
                    r.transcript
                );
            }
            (SocketAddr::new(client, local), ids.into_iter().next())
        })
        .collect();
    let ids: Vec<String> = sessions.iter().filter_map(|s| s.1.clone()).collect();
    let log = wait_all_logged(
        || tb.postfix.log(),
        &ours(&tb),
        &ids,
        probes + usize::from(N),
    );
    std::thread::sleep(Duration::from_secs(3));
    let live = json(&tail.stop().stdout);
    let conns = split_by_brackets(&log, &ours(&tb));
    // Each instance's process served all of its sessions (8 or 16).
    let pairs = pair_in_order(&sessions, &conns[probes..], 8);
    for (k, program) in [
        (0, "postfix/submission/smtpd["),
        (1, "postfix/submission/smtpd["),
        (2, "postfix/smtps/smtpd["),
        (3, "postfix/smtpd["),
        (4, "postfix/smtpd["),
    ] {
        assert!(pairs[k].1.tag.starts_with(program), "{:#?}", pairs[k].1);
    }
    assert_exactly_their_own(&pairs, Unseen::Exactly(&[]), &live);
    for out in replayed(&pcap, &plog) {
        assert_exactly_their_own(&pairs, Unseen::Exactly(&conns[..probes]), &out);
    }
}

/// Busy-loop processes started by the test, killed by pid on drop.
struct Burners(Vec<Child>);

impl Burners {
    fn start(n: usize) -> Burners {
        Burners(
            (0..n)
                .map(|_| {
                    Command::new("sh")
                        .args(["-c", "while :; do :; done"])
                        .stdin(Stdio::null())
                        .spawn()
                        .expect("spawn a CPU burner")
                })
                .collect(),
        )
    }
}

impl Drop for Burners {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn concurrent_clients_on_a_busy_machine() {
    common::require_root("concurrent_clients_on_a_busy_machine");
    let tb = Testbed::start();
    let before = split_by_brackets(&tb.postfix.log(), &ours(&tb)).len();
    let dir = TempDir::new("logjoin-busy");
    let plog = format!("--maillog={}", tb.postfix.log_path().display());
    let tail = Tail::start(
        &tb.ns.host_if,
        &["--json", "--show-headers", &plog],
        dir.path(),
        "busy",
    );
    let clients: Vec<IpAddr> = vec![
        tb.ns.client_v4().into(),
        tb.ns.add_client_v4(3).into(),
        tb.ns.add_client_v4(4).into(),
    ];
    let server: IpAddr = tb.ns.server_v4().into();
    let burners = Burners::start(2);
    const EACH: usize = 8;
    let threads: Vec<_> = clients
        .iter()
        .map(|&ip| {
            std::thread::spawn(move || {
                (0..EACH)
                    .map(|i| {
                        let to = if i % 2 == 0 {
                            "alice@mx.test"
                        } else {
                            "nobody@mx.test"
                        };
                        let r = swaks(
                            server,
                            25,
                            &["--to", to, "--local-interface", &ip.to_string()],
                        );
                        let want: &[u16] = if i % 2 == 0 {
                            &[220, 250, 250, 250, 354, 250, 221]
                        } else {
                            &[220, 250, 250, 550, 221]
                        };
                        assert_eq!(r.codes(), want, "{}", r.transcript);
                        r.queue_ids()
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let ids: Vec<String> = threads
        .into_iter()
        .flat_map(|t| t.join().expect("client thread"))
        .flatten()
        .collect();
    drop(burners);
    let n = clients.len() * EACH;
    let log = wait_all_logged(|| tb.postfix.log(), &ours(&tb), &ids, before + n);
    std::thread::sleep(Duration::from_secs(3));
    let live = json(&tail.stop().stdout);
    let conns = split_by_brackets(&log, &ours(&tb));
    let conns = &conns[before..];
    assert_eq!(conns.len(), n);
    // With the client port in the log, each connection names its session.
    let pairs: Vec<(SocketAddr, &Conn)> = conns
        .iter()
        .map(|c| {
            let connect = &c.lines[0];
            let ip: IpAddr = connect
                .split('[')
                .nth(2)
                .and_then(|r| r.split(']').next()?.parse().ok())
                .unwrap_or_else(|| panic!("client address in {connect}"));
            (SocketAddr::new(ip, c.port.expect("port logged")), c)
        })
        .collect();
    for ip in &clients {
        assert_eq!(pairs.iter().filter(|p| p.0.ip() == *ip).count(), EACH);
    }
    assert_exactly_their_own(&pairs, Unseen::Exactly(&[]), &live);
}

#[test]
fn back_to_back_sessions_from_the_journal() {
    common::require_root("back_to_back_sessions_from_the_journal");
    let (journald, since) = journal_from_now();
    let tb = Testbed::start_logging(common::Logs::Syslog);
    let journal = || journald.mail_lines(since);
    port_logging_off(&tb, journal);
    let probes = split_by_brackets(&journal(), &ours(&tb)).len();
    let dir = TempDir::new("logjoin-journal");
    let tail = Tail::start(
        &tb.ns.host_if,
        // The journal's files are root's and the systemd-journal group's: the dropped user
        // keeps that group for --journal (the start-up line says so).
        &["--json", "--show-headers", "--journal"],
        dir.path(),
        "journal",
    );
    let sessions = back_to_back(tb.ns.server_v4().into(), 30);
    let ids: Vec<String> = sessions.iter().filter_map(|s| s.1.clone()).collect();
    // An unprivileged local user forges a delivery line of a real queue id (issue 17): the
    // journal has it under Postfix's identifier, the join must not believe it.
    let forged = format!(
        "{}: to=<alice@mx.test>, relay=forged, delay=0, dsn=5.0.0, status=bounced (forged by nobody)",
        ids[0]
    );
    run_ok(
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .args(["logger", "-t", "postfix/smtp", &forged]),
        Duration::from_secs(20),
        "logger as nobody",
    );
    wait_all_logged(journal, &ours(&tb), &ids, probes + 30);
    wait_for(
        Duration::from_secs(20),
        "the forged line in the journal",
        || journal().contains("relay=forged").then_some(()),
    );
    std::thread::sleep(Duration::from_secs(3));
    let stopped = tail.stop();
    assert!(!stopped.stderr.contains("--journal:"), "{}", stopped.stderr);
    assert!(!stopped.stdout.contains("forged"), "{}", stopped.stdout);
    // The truth is Postfix's own lines.
    let log: String = journal()
        .lines()
        .filter(|l| !l.contains("relay=forged"))
        .map(|l| format!("{l}\n"))
        .collect();
    let conns = split_by_brackets(&log, &ours(&tb));
    let pairs = pair_in_order(&sessions, &conns[probes..], 10);
    assert_exactly_their_own(
        &pairs,
        Unseen::AtMost(&conns[..probes]),
        &json(&stopped.stdout),
    );
}

/// Dovecot's part (issue 22): its lines follow its own `session=<ID>`.
mod dovecot {
    use std::collections::{BTreeMap, HashMap, HashSet};
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::{IpAddr, SocketAddr, TcpStream};
    use std::process::Command;
    use std::sync::{Arc, Barrier};
    use std::time::Duration;

    use super::common::tailer::Tail;
    use super::common::{run_ok, wait_for, Logs, TempDir, Testbed, PASSWORD};
    use super::json;
    use serde_json::Value;

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Kind {
        Imap,
        Pop3,
    }

    /// A plain-text IMAP or POP3 client (no TLS: the wire shows the login and its outcome).
    struct Client {
        kind: Kind,
        r: BufReader<TcpStream>,
        w: TcpStream,
        local: SocketAddr,
    }

    impl Client {
        fn connect(server: IpAddr, kind: Kind) -> Client {
            let port = if kind == Kind::Imap { 143 } else { 110 };
            let s =
                TcpStream::connect_timeout(&SocketAddr::new(server, port), Duration::from_secs(5))
                    .expect("connect to Dovecot");
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let local = s.local_addr().unwrap();
            let mut c = Client {
                kind,
                r: BufReader::new(s.try_clone().unwrap()),
                w: s,
                local,
            };
            let greeting = c.line();
            let want = if kind == Kind::Imap { "* OK" } else { "+OK" };
            assert!(greeting.starts_with(want), "{greeting}");
            c
        }

        fn line(&mut self) -> String {
            let mut l = String::new();
            assert!(self.r.read_line(&mut l).unwrap() > 0, "Dovecot closed");
            l
        }

        /// The reply to an IMAP command tagged `tag`, or a POP3 command's status line.
        fn cmd(&mut self, tag: &str, cmd: &str) -> String {
            match self.kind {
                Kind::Imap => {
                    self.w
                        .write_all(format!("{tag} {cmd}\r\n").as_bytes())
                        .unwrap();
                    loop {
                        let l = self.line();
                        if l.starts_with(&format!("{tag} ")) {
                            return l[tag.len() + 1..].to_string();
                        }
                    }
                }
                Kind::Pop3 => {
                    self.w.write_all(format!("{cmd}\r\n").as_bytes()).unwrap();
                    self.line()
                }
            }
        }

        /// A login with the right password (`ok`) or a wrong one; asserts the outcome.
        fn login(&mut self, user: &str, ok: bool) {
            let pass = if ok { PASSWORD } else { "Wr0ng-Pa55" };
            let r = match self.kind {
                Kind::Imap => self.cmd("a1", &format!("LOGIN {user} {pass}")),
                Kind::Pop3 => {
                    assert!(self.cmd("", &format!("USER {user}")).starts_with("+OK"));
                    self.cmd("", &format!("PASS {pass}"))
                }
            };
            let want = match (self.kind, ok) {
                (Kind::Imap, true) => "OK",
                (Kind::Imap, false) => "NO",
                (Kind::Pop3, true) => "+OK",
                (Kind::Pop3, false) => "-ERR",
            };
            assert!(r.starts_with(want), "{:?} login of {user}: {r}", self.kind);
        }

        /// LOGOUT / QUIT, then reads until Dovecot closes.
        fn logout(mut self) -> SocketAddr {
            match self.kind {
                Kind::Imap => assert!(self.cmd("a2", "LOGOUT").starts_with("OK")),
                Kind::Pop3 => assert!(self.cmd("", "QUIT").starts_with("+OK")),
            }
            let mut rest = Vec::new();
            let _ = self.r.read_to_end(&mut rest);
            self.local
        }
    }

    /// One whole session.
    fn session(server: IpAddr, kind: Kind, user: &str, ok: bool) -> SocketAddr {
        let mut c = Client::connect(server, kind);
        c.login(user, ok);
        c.logout()
    }

    /// The session id of a Dovecot line: `session=<ID>` of a login process's line, or the
    /// `<ID>` of a mail process's `imap(user)<pid><ID>:`.
    fn session_id(line: &str) -> Option<&str> {
        if line.contains("-login: ") {
            let (_, r) = line.split_once("session=<")?;
            return r.split('>').next();
        }
        let i = line.find(" imap(").or_else(|| line.find(" pop3("))?;
        let (_, r) = line[i..].split_once(")<")?;
        let (tag, _) = r.split_once(": ")?;
        tag.split('<').nth(1)?.strip_suffix('>')
    }

    /// Dovecot's log split by session id, in the order of each id's first line; every line
    /// that mentions an id at all must be one of its lines (nothing else names it).
    fn split_by_session_id(log: &str) -> Vec<(String, Vec<String>)> {
        let mut groups = split_in_log_order(log);
        // In the order of the login processes' lines: the journal may have a mail process's
        // `Disconnected` before the `Login` (Dovecot's log process reads them from two pipes).
        let login_at = |g: &(String, Vec<String>)| {
            log.lines()
                .position(|l| login_line(&g.1).is_some_and(|x| x == l))
                .unwrap_or(usize::MAX)
        };
        groups.sort_by_cached_key(login_at);
        groups
    }

    /// The login process's line of a session's lines.
    fn login_line(lines: &[String]) -> Option<&String> {
        lines.iter().find(|l| l.contains("-login: "))
    }

    fn split_in_log_order(log: &str) -> Vec<(String, Vec<String>)> {
        let mut order: Vec<(String, Vec<String>)> = Vec::new();
        let mut at: HashMap<String, usize> = HashMap::new();
        for l in log.lines() {
            let Some(id) = session_id(l) else {
                continue;
            };
            let i = *at.entry(id.to_string()).or_insert_with(|| {
                order.push((id.to_string(), Vec::new()));
                order.len() - 1
            });
            order[i].1.push(l.to_string());
        }
        for (id, lines) in &order {
            let naming = log
                .lines()
                .filter(|l| l.contains(&format!("<{id}>")))
                .count();
            assert_eq!(
                naming,
                lines.len(),
                "a line names session {id} otherwise: {lines:#?}"
            );
        }
        order
    }

    /// A session's lines are all there: a failed login's one line, or the mail process's
    /// last line after a login.
    fn complete(lines: &[String]) -> bool {
        let Some(login) = login_line(lines) else {
            return false;
        };
        login.contains("auth failed")
            || lines
                .iter()
                .any(|l| !l.contains("-login: ") && l.contains(": Disconnected"))
    }

    /// Waits until `n` sessions are completely in the log; says which are not, if not.
    fn all_logged(
        read: &dyn Fn() -> String,
        ours: impl Fn(&str) -> Vec<(String, Vec<String>)>,
        n: usize,
        what: &str,
    ) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let l = read();
            let g = ours(&l);
            if g.len() == n && g.iter().all(|g| complete(&g.1)) {
                return l;
            }
            if std::time::Instant::now() > deadline {
                let incomplete: Vec<_> = g.iter().filter(|g| !complete(&g.1)).collect();
                panic!(
                    "{what}: {} of {n} sessions in the log, incomplete: {incomplete:#?}\nlog:\n{l}",
                    g.len()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Asserts each client's session has exactly the lines of its Dovecot session id, and no
    /// line of those ids went out unmatched or to another session.
    fn assert_exactly_their_own(pairs: &[(SocketAddr, &(String, Vec<String>))], out: &[Value]) {
        let mut by_session: BTreeMap<u64, Vec<String>> = BTreeMap::new();
        let mut unmatched = Vec::new();
        let raw = |e: &Value| -> String {
            text(
                e["line"]
                    .as_str()
                    .unwrap_or_else(|| panic!("no raw line (--show-headers): {e}")),
            )
            .to_string()
        };
        for v in out {
            match v["type"].as_str() {
                Some("session") => {
                    let id = v["id"].as_u64().unwrap();
                    let e = by_session.entry(id).or_default();
                    for l in v["log"].as_array().into_iter().flatten() {
                        e.push(raw(l));
                    }
                }
                Some("log") => match v["session"].as_u64() {
                    Some(id) => by_session.entry(id).or_default().push(raw(v)),
                    None => unmatched.push(v.clone()),
                },
                _ => {}
            }
        }
        let ours: HashSet<&str> = pairs.iter().map(|(_, g)| g.0.as_str()).collect();
        let mut wrong: Vec<String> = unmatched
            .iter()
            .filter(|v| {
                v["line"]
                    .as_str()
                    .and_then(session_id)
                    .is_some_and(|s| ours.contains(s))
            })
            .map(|v| format!("unmatched: {v}"))
            .collect();
        for (client, (sid, want)) in pairs {
            let Some(s) = out
                .iter()
                .find(|v| v["type"] == "session" && v["client"] == client.to_string().as_str())
            else {
                wrong.push(format!("no session record from {client}"));
                continue;
            };
            let mut got = by_session
                .get(&s["id"].as_u64().unwrap())
                .cloned()
                .unwrap_or_default();
            let mut want: Vec<String> = want.iter().map(|l| text(l).to_string()).collect();
            got.sort();
            want.sort();
            if got != want {
                wrong.push(format!(
                    "session #{} from {client} (Dovecot session {sid}):\n  got  {got:#?}\n  want {want:#?}",
                    s["id"]
                ));
            }
        }
        assert!(
            wrong.is_empty(),
            "{} wrong of {} sessions:\n{}",
            wrong.len(),
            pairs.len(),
            wrong.join("\n")
        );
    }

    /// An IMAPS or POP3S session with Python's client (no certificate check): a login with the
    /// right password (`ok`) or a wrong one, then LOGOUT / QUIT; returns the client's address.
    fn tls_session(server: IpAddr, client: IpAddr, kind: Kind, user: &str, ok: bool) -> SocketAddr {
        let pass = if ok { PASSWORD } else { "Wr0ng-Pa55" };
        let script = match kind {
            Kind::Imap => format!(
                "import imaplib,ssl\nc=ssl._create_unverified_context()\nm=imaplib.IMAP4_SSL('{server}',993,ssl_context=c)\nprint(m.sock.getsockname()[1])\ntry:\n  m.login('{user}','{pass}'); print('OK')\nexcept imaplib.IMAP4.error: print('NO')\nm.logout()\n"
            ),
            Kind::Pop3 => format!(
                "import poplib,ssl\nc=ssl._create_unverified_context()\nm=poplib.POP3_SSL('{server}',995,context=c)\nprint(m.sock.getsockname()[1])\nm.user('{user}')\ntry:\n  m.pass_('{pass}'); print('OK')\nexcept poplib.error_proto: print('NO')\nm.quit()\n"
            ),
        };
        let out = run_ok(
            Command::new("python3").args(["-c", &script]),
            Duration::from_secs(60),
            "python TLS login",
        );
        let mut lines = out.stdout.lines();
        let port: u16 = lines
            .next()
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("no local port: {}", out.stdout));
        assert_eq!(
            lines.next(),
            Some(if ok { "OK" } else { "NO" }),
            "{kind:?} TLS login of {user}"
        );
        SocketAddr::new(client, port)
    }

    /// What the k-th back-to-back session is: IMAP ok, IMAP failed, POP3 ok, POP3 failed, ….
    fn plan(k: usize) -> (Kind, &'static str, bool) {
        match k % 4 {
            0 => (Kind::Imap, "alice@mx.test", true),
            1 => (Kind::Imap, "alice@mx.test", false),
            2 => (Kind::Pop3, "bob@mx.test", true),
            _ => (Kind::Pop3, "bob@mx.test", false),
        }
    }

    /// The login process's line of a group says what `plan` asked for.
    fn assert_is(group: &(String, Vec<String>), kind: Kind, ok: bool) {
        let first = login_line(&group.1).unwrap_or(&group.1[0]);
        let program = if kind == Kind::Imap {
            "imap-login: "
        } else {
            "pop3-login: "
        };
        let outcome = if ok { "Login: " } else { "auth failed" };
        assert!(
            first.contains(program) && first.contains(outcome),
            "{kind:?} ok={ok}: {group:#?}"
        );
    }

    #[test]
    fn dovecot_sessions_back_to_back_and_concurrent_by_their_session_ids() {
        super::common::require_root(
            "dovecot_sessions_back_to_back_and_concurrent_by_their_session_ids",
        );
        run(Logs::Files);
    }

    #[test]
    fn dovecot_sessions_by_their_session_ids_from_the_journal() {
        super::common::require_root("dovecot_sessions_by_their_session_ids_from_the_journal");
        run(Logs::Syslog);
    }

    /// The line from its program on (`imap-login: …`, `imap(alice@mx.test)<…><…>: …`): the
    /// file's and the journal's time formats and idents aside. Every such text names its
    /// session id, so it is still one line's.
    fn text(line: &str) -> &str {
        [" imap-login: ", " pop3-login: ", " imap(", " pop3("]
            .iter()
            .filter_map(|p| line.find(p))
            .min()
            .map_or(line, |i| &line[i + 1..])
    }

    /// 24 back-to-back sessions (Dovecot's default elements: no port), then 6 concurrent ones
    /// with `rport` logged and two CPU burners running; the log from Dovecot's `log_path` (live and replayed) or from the
    /// journal through syslog (live).
    fn run(logs: Logs) {
        let (journald, since) = match logs {
            Logs::Syslog => {
                let (j, since) = super::journal_from_now();
                (Some(j), since)
            }
            Logs::Files => (None, 0),
        };
        let tb = Testbed::start_logging(logs);
        // Only this test bed's Dovecot (`instance_name = dovecot-NS`): other test beds may log
        // to the same journal.
        let ident = format!(" dovecot-{}", tb.ns.name);
        let read = || -> String {
            match &journald {
                None => tb.dovecot.log(),
                Some(j) => j
                    .mail_lines(since)
                    .lines()
                    .filter(|l| l.contains(&ident))
                    .map(|l| format!("{l}\n"))
                    .collect(),
            }
        };
        let server: IpAddr = tb.ns.server_v4().into();
        // The harness's own probes (a greeting, no login) are not among the sessions.
        let before: HashSet<String> = split_by_session_id(&read())
            .into_iter()
            .map(|g| g.0)
            .collect();
        let dir = TempDir::new("logjoin-dovecot");
        super::common::writable_by_dropped_user(dir.path());
        let dlog = format!("--maillog={}", tb.dovecot.log_path().display());
        let pcap = dir.path().join("dovecot.pcapng");
        let pcap_arg = pcap.display().to_string();
        let args: Vec<&str> = match logs {
            Logs::Files => vec!["--json", "--show-headers", &dlog, "-w", &pcap_arg],
            // The journal's files are root's and systemd-journal's.
            Logs::Syslog => vec!["--json", "--show-headers", "--journal"],
        };
        let tail = Tail::start(&tb.ns.host_if, &args, dir.path(), "dovecot");
        // Dovecot's default login_log_format_elements: no client port in the log.
        const N: usize = 24;
        let b2b: Vec<SocketAddr> = (0..N)
            .map(|k| {
                let (kind, user, ok) = plan(k);
                session(server, kind, user, ok)
            })
            .collect();
        let ours = |log: &str, skip: &HashSet<String>| -> Vec<(String, Vec<String>)> {
            split_by_session_id(log)
                .into_iter()
                .filter(|g| {
                    !skip.contains(&g.0)
                        && !login_line(&g.1).is_some_and(|l| l.contains("no auth attempts"))
                })
                .collect()
        };
        let log = all_logged(&read, |l| ours(l, &before), N, "back-to-back");
        let groups = ours(&log, &before);
        assert!(
            groups
                .iter()
                .all(|g| !g.1.iter().any(|l| l.contains("rport="))),
            "port logged: {groups:#?}"
        );
        for (k, g) in groups.iter().enumerate() {
            let (kind, _, ok) = plan(k);
            assert_is(g, kind, ok);
        }

        // With the client port logged, concurrent sessions from one client.
        tb.dovecot.reconfigure(
            "login_log_format_elements = user=<%u> method=%m rip=%r rport=%{rport} lip=%l mpid=%e %c session=<%{session}>",
        );
        wait_for(
            Duration::from_secs(30),
            "rport in Dovecot's login lines",
            || {
                let probe = session(server, Kind::Imap, "carol@mx.test", false);
                std::thread::sleep(Duration::from_millis(200));
                read()
                    .contains(&format!("rport={}, ", probe.port()))
                    .then_some(())
            },
        );
        let seen: HashSet<String> = split_by_session_id(&read())
            .into_iter()
            .map(|g| g.0)
            .collect();
        let concurrent: [(Kind, &str, bool); 6] = [
            (Kind::Imap, "alice@mx.test", true),
            (Kind::Imap, "carol@mx.test", false),
            (Kind::Pop3, "bob@mx.test", true),
            (Kind::Pop3, "carol@mx.test", false),
            (Kind::Imap, "bob@mx.test", true),
            (Kind::Pop3, "alice@mx.test", false),
        ];
        // The machine made busy meanwhile.
        let burners = super::Burners::start(2);
        // All connected, then all logging in, then all logging out: every one overlaps.
        let (connected, logged_in) = (
            Arc::new(Barrier::new(concurrent.len())),
            Arc::new(Barrier::new(concurrent.len())),
        );
        let threads: Vec<_> = concurrent
            .iter()
            .map(|&(kind, user, ok)| {
                let (a, b) = (connected.clone(), logged_in.clone());
                std::thread::spawn(move || {
                    let mut c = Client::connect(server, kind);
                    a.wait();
                    c.login(user, ok);
                    b.wait();
                    c.logout()
                })
            })
            .collect();
        let clients: Vec<SocketAddr> = threads
            .into_iter()
            .map(|t| t.join().expect("client thread"))
            .collect();
        drop(burners);
        // Implicit TLS (IMAPS, POP3S), one after the other: Dovecot's `TLS` agrees with the
        // wire's, the login's outcome is the log's (or the TLS plaintext's).
        let tls_plan = [
            (Kind::Imap, "alice@mx.test", true),
            (Kind::Imap, "alice@mx.test", false),
            (Kind::Pop3, "bob@mx.test", true),
            (Kind::Pop3, "bob@mx.test", false),
        ];
        let client_ip: IpAddr = tb.ns.client_v4().into();
        let tls_clients: Vec<SocketAddr> = tls_plan
            .iter()
            .map(|&(kind, user, ok)| tls_session(server, client_ip, kind, user, ok))
            .collect();
        let all: Vec<(SocketAddr, (Kind, &str, bool), bool)> = clients
            .iter()
            .copied()
            .zip(concurrent)
            .map(|(c, p)| (c, p, false))
            .chain(
                tls_clients
                    .iter()
                    .copied()
                    .zip(tls_plan)
                    .map(|(c, p)| (c, p, true)),
            )
            .collect();
        let log = all_logged(&read, |l| ours(l, &seen), all.len(), "concurrent and TLS");
        std::thread::sleep(Duration::from_secs(3));
        let live = json(&tail.stop().stdout);
        let later_groups = ours(&log, &seen);
        let mut pairs: Vec<(SocketAddr, &(String, Vec<String>))> =
            b2b.iter().copied().zip(&groups).collect();
        for (client, (kind, _, ok), tls) in &all {
            let rport = format!("rport={}, ", client.port());
            let g = later_groups
                .iter()
                .find(|g| login_line(&g.1).is_some_and(|l| l.contains(&rport)))
                .unwrap_or_else(|| panic!("no login line with {rport}: {later_groups:#?}"));
            assert_is(g, *kind, *ok);
            assert_eq!(
                login_line(&g.1).is_some_and(|l| l.contains(", TLS")),
                *tls,
                "{g:#?}"
            );
            pairs.push((*client, g));
        }
        assert_exactly_their_own(&pairs, &live);

        if logs == Logs::Syslog {
            return;
        }
        // The same capture replayed with the log, with and without the linger.
        for out in super::replayed(&pcap, &dlog) {
            assert_exactly_their_own(&pairs, &out);
        }
    }
}
