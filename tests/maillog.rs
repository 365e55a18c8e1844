//! `--maillog` against the real test bed (issue 10): Postfix and Dovecot write their own logs,
//! `mail-trace tail --json --maillog … -w` watches the veth, and every session record (or its
//! follow-up `log` records) carries the log lines about it: a queued message's lines with its
//! queue id down to `status=sent`, a rejected recipient's `NOQUEUE: reject:` line, a Dovecot
//! `auth failed` line. Then `replay --json --maillog` on the pcapng written by the tail joins
//! the same lines.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::clients::swaks;
use common::{run_ok, wait_child, wait_for, TempDir, Testbed};
use serde_json::Value;

/// A running `mail-trace tail`, killed on drop if still running.
struct Tail {
    child: Option<Child>,
    stderr: std::path::PathBuf,
}

impl Tail {
    fn start(args: &[String], stdout: &Path, stderr: &Path) -> Tail {
        let mut all = vec!["tail".to_string()];
        all.extend_from_slice(args);
        Tail::start_cmd(&all, stdout, stderr)
    }

    /// Any live subcommand (`args[0]`), up to its `tracing` line.
    fn start_cmd(args: &[String], stdout: &Path, stderr: &Path) -> Tail {
        let child = Command::new(env!("CARGO_BIN_EXE_mail-trace"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(stdout).expect("create stdout file"))
            .stderr(std::fs::File::create(stderr).expect("create stderr file"))
            .spawn()
            .expect("spawn mail-trace tail");
        let mut t = Tail {
            child: Some(child),
            stderr: stderr.to_path_buf(),
        };
        wait_for(Duration::from_secs(60), "mail-trace tail attached", || {
            if let Some(Ok(Some(status))) = t.child.as_mut().map(|c| c.try_wait()) {
                panic!("mail-trace tail exited early ({status}): {}", t.err());
            }
            t.err().contains("mail-trace: tracing").then_some(())
        });
        t
    }

    fn err(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn interrupt(mut self) -> String {
        let mut child = self.child.take().expect("running");
        common::signal(child.id(), libc::SIGINT);
        let status = wait_child(&mut child, Duration::from_secs(20))
            .unwrap_or_else(|| panic!("mail-trace ignored SIGINT: {}", self.err()));
        assert!(
            status.success(),
            "mail-trace exited {status}: {}",
            self.err()
        );
        self.err()
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

/// IMAP LOGIN with a wrong password, then LOGOUT; returns the client's address.
fn imap_wrong_login(server: SocketAddr) -> SocketAddr {
    let s = TcpStream::connect_timeout(&server, Duration::from_secs(5)).expect("imap connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let local = s.local_addr().unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut w = s;
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert!(line.starts_with("* OK"), "{line}");
    w.write_all(b"a1 LOGIN alice@mx.test Wr0ng-Pa55\r\n")
        .unwrap();
    let tagged = |r: &mut BufReader<TcpStream>, tag: &str| loop {
        let mut l = String::new();
        assert!(r.read_line(&mut l).unwrap() > 0, "imap closed");
        if l.starts_with(tag) {
            return l;
        }
    };
    assert!(tagged(&mut r, "a1 ").starts_with("a1 NO"));
    w.write_all(b"a2 LOGOUT\r\n").unwrap();
    tagged(&mut r, "a2 ");
    local
}

/// The three things the log join is checked on: a queued message, a rejected recipient and
/// an IMAP login failure. Returns the queue id and the IMAP client's address.
fn queued_rejected_and_failed_login(server: std::net::IpAddr) -> (String, SocketAddr) {
    let ok = swaks(server, 25, &["--to", "alice@mx.test"]);
    let queue_id = ok.queue_ids().pop().expect("queued");
    let rej = swaks(server, 25, &["--to", "nobody@mx.test"]);
    assert_eq!(rej.codes(), vec![220, 250, 250, 550, 221]);
    (queue_id, imap_wrong_login(SocketAddr::new(server, 143)))
}

/// An RFC 3339 timestamp of the JSON output, in µs since the epoch.
fn micros(v: &Value) -> u64 {
    let s = v.as_str().unwrap_or_else(|| panic!("not a timestamp: {v}"));
    mail_trace::maillog::syslog::rfc3339(s).unwrap_or_else(|| panic!("not RFC 3339: {s}")) / 1000
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// The session with this client address, and every log entry about it: its record's `log`
/// list and the follow-up `log` records.
fn session_and_log(out: &[Value], client: SocketAddr) -> (Value, Vec<Value>) {
    let s = out
        .iter()
        .find(|v| v["type"] == "session" && v["client"] == client.to_string().as_str())
        .unwrap_or_else(|| panic!("no session from {client} in {out:#?}"))
        .clone();
    let mut log: Vec<Value> = s["log"].as_array().cloned().unwrap_or_default();
    log.extend(
        out.iter()
            .filter(|v| v["type"] == "log" && v["session"] == s["id"])
            .cloned(),
    );
    (s, log)
}

/// Postfix lines with this queue id in its log file.
fn postfix_lines(log: &str, queue_id: &str) -> usize {
    log.lines()
        .filter(|l| {
            l.contains(&format!(": {queue_id}: ")) || l.ends_with(&format!(": {queue_id}: removed"))
        })
        .count()
}

struct Seen {
    queued_client: SocketAddr,
    queue_id: String,
    rejected_client: SocketAddr,
    imap_client: SocketAddr,
}

fn check(out: &[Value], seen: &Seen, postfix_log: &str, dovecot_log: &str) {
    // The queued message: every line with its queue id, down to the delivery.
    let (s, log) = session_and_log(out, seen.queued_client);
    assert_eq!(s["transactions"][0]["queue_id"], seen.queue_id.as_str());
    let mine: Vec<&Value> = log
        .iter()
        .filter(|e| e["queue_id"] == seen.queue_id.as_str())
        .collect();
    assert_eq!(
        mine.len(),
        postfix_lines(postfix_log, &seen.queue_id),
        "{log:#?}\n{postfix_log}"
    );
    assert!(log
        .iter()
        .all(|e| e["queue_id"].is_null() || e["queue_id"] == seen.queue_id.as_str()));
    let events: Vec<&str> = mine.iter().map(|e| e["event"].as_str().unwrap()).collect();
    for ev in ["client", "message-id", "queued", "delivery", "removed"] {
        assert!(events.contains(&ev), "{ev} missing: {events:?}");
    }
    let delivery = mine.iter().find(|e| e["event"] == "delivery").unwrap();
    assert_eq!(delivery["program"], "postfix/virtual");
    assert_eq!(delivery["fields"]["status"], "sent");
    assert_eq!(delivery["fields"]["dsn"], "2.0.0");
    assert_eq!(delivery["fields"]["to"], "alice@mx.test");
    assert_eq!(delivery["fields"]["relay"], "virtual");
    let client = mine.iter().find(|e| e["event"] == "client").unwrap();
    assert_eq!(client["fields"]["client_port"], seen.queued_client.port());
    // Privacy by default: no raw line, no Message-ID.
    assert!(log.iter().all(|e| e.get("line").is_none()));
    let mid = mine.iter().find(|e| e["event"] == "message-id").unwrap();
    assert_eq!(mid["fields"], serde_json::json!({}));

    // The rejected recipient: its 550 and Postfix's NOQUEUE line, on the same RCPT.
    let (s, log) = session_and_log(out, seen.rejected_client);
    let rcpt = &s["transactions"][0]["rcpt"][0];
    assert_eq!(
        (rcpt["addr"].as_str(), rcpt["code"].as_u64()),
        (Some("nobody@mx.test"), Some(550))
    );
    let rejects: Vec<&Value> = log.iter().filter(|e| e["event"] == "reject").collect();
    assert_eq!(rejects.len(), 1, "{log:#?}");
    let r = rejects[0];
    assert!(r["queue_id"].is_null());
    assert_eq!(r["fields"]["code"], 550);
    assert_eq!(r["fields"]["dsn"], "5.1.1");
    assert_eq!(r["fields"]["stage"], "RCPT");
    assert_eq!(r["fields"]["to"], "nobody@mx.test");
    assert_eq!(r["fields"]["client_port"], seen.rejected_client.port());
    assert_eq!(
        format!(
            "{} {}",
            r["fields"]["dsn"].as_str().unwrap(),
            r["fields"]["reason"].as_str().unwrap()
        ),
        format!(
            "{} {}",
            rcpt["enhanced"].as_str().unwrap(),
            rcpt["text"].as_str().unwrap()
        )
    );
    if s["log"]
        .as_array()
        .is_some_and(|l| l.iter().any(|e| e["event"] == "reject"))
    {
        assert_eq!(
            (r["transaction"].as_u64(), r["rcpt"].as_u64()),
            (Some(0), Some(0))
        );
    }

    // The IMAP login failure and Dovecot's auth failed line.
    let (s, log) = session_and_log(out, seen.imap_client);
    assert_eq!(s["proto"], "imap");
    assert_eq!(s["auth"]["result"], "NO");
    let failed: Vec<&Value> = log
        .iter()
        .filter(|e| e["event"] == "login-failed")
        .collect();
    assert_eq!(failed.len(), 1, "{log:#?}\n{dovecot_log}");
    assert_eq!(failed[0]["program"], "imap-login");
    assert_eq!(failed[0]["fields"]["user"], "alice@mx.test");
    assert_eq!(
        failed[0]["fields"]["rip"],
        seen.imap_client.ip().to_string().as_str()
    );
    assert_eq!(failed[0]["fields"]["attempts"], 1);
    assert_eq!(
        dovecot_log
            .lines()
            .filter(|l| l.contains("auth failed"))
            .count(),
        1,
        "{dovecot_log}"
    );
}

#[test]
fn tail_and_replay_join_postfix_and_dovecot_lines() {
    common::require_root("tail_and_replay_join_postfix_and_dovecot_lines");
    let tb = Testbed::start();
    let dir = TempDir::new("maillog");
    let pcap = dir.path().join("tail.pcapng");
    common::writable_by_dropped_user(dir.path());
    let stdout = dir.path().join("tail.json");
    let plog = tb.postfix.log_path().to_path_buf();
    let dlog = tb.dovecot.log_path().to_path_buf();
    let args: Vec<String> = vec![
        "--json".into(),
        "-i".into(),
        tb.ns.host_if.clone(),
        format!("--maillog={}", plog.display()),
        format!("--maillog={}", dlog.display()),
        "-w".into(),
        pcap.display().to_string(),
    ];
    let tail = Tail::start(&args, &stdout, &dir.path().join("tail.stderr"));
    let server = std::net::IpAddr::from(tb.ns.server_v4());

    let (queue_id, imap_client) = queued_rejected_and_failed_login(server);
    // The clients' ports, from Postfix's own log.
    let clients: Vec<SocketAddr> = tb
        .postfix
        .log()
        .lines()
        .filter_map(|l| l.split("connect from unknown[").nth(1))
        .filter(|_| true)
        .filter_map(|r| {
            let (ip, port) = r.split_once("]:")?;
            format!("{ip}:{}", port.split(' ').next()?).parse().ok()
        })
        .collect();
    wait_for(
        Duration::from_secs(20),
        "delivery and auth failed in the logs",
        || {
            (tb.postfix.log().contains(&format!("{queue_id}: removed"))
                && tb.dovecot.log().contains("auth failed"))
            .then_some(())
        },
    );
    // Let the follower read the last lines and the linger pass.
    std::thread::sleep(Duration::from_secs(3));
    tail.interrupt();
    let postfix_log = tb.postfix.log();
    let dovecot_log = tb.dovecot.log();
    let seen = Seen {
        queued_client: *clients
            .iter()
            .find(|c| {
                postfix_log.contains(&format!(
                    "{queue_id}: client=unknown[{}]:{}",
                    c.ip(),
                    c.port()
                ))
            })
            .expect("client of the queued message"),
        queue_id,
        rejected_client: *clients
            .iter()
            .find(|c| {
                postfix_log.contains(&format!(
                    "NOQUEUE: reject: RCPT from unknown[{}]:{}:",
                    c.ip(),
                    c.port()
                ))
            })
            .expect("client of the reject"),
        imap_client,
    };
    let live = json_lines(&std::fs::read_to_string(&stdout).unwrap());
    check(&live, &seen, &postfix_log, &dovecot_log);

    // The same from the saved capture and the logs.
    let out = run_ok(
        Command::new(env!("CARGO_BIN_EXE_mail-trace"))
            .args(["replay", "--json"])
            .arg(&pcap)
            .arg(format!("--maillog={}", plog.display()))
            .arg(format!("--maillog={}", dlog.display())),
        Duration::from_secs(60),
        "mail-trace replay --maillog",
    );
    let replayed = json_lines(&out.stdout);
    check(&replayed, &seen, &postfix_log, &dovecot_log);

    // Without the linger, the record holds only the lines the joiner had attached before the
    // session's last packet. Its clock at a line is the line's stamp + 1 s (a line stamped S was
    // written in [S, S+1)), and smtpd's lines are attached as a bracket, when its `disconnect`
    // line closes it (then the lines of its queue id as they come). So a line is in the record
    // iff max(its stamp, the disconnect's stamp) + 1 s < end; every other line comes after the
    // record, as a `log` record of its own.
    let out = run_ok(
        Command::new(env!("CARGO_BIN_EXE_mail-trace"))
            .args(["replay", "--json", "--maillog-linger-ms", "0"])
            .arg(&pcap)
            .arg(format!("--maillog={}", plog.display()))
            .arg(format!("--maillog={}", dlog.display())),
        Duration::from_secs(60),
        "mail-trace replay --maillog without linger",
    );
    let late = json_lines(&out.stdout);
    check(&late, &seen, &postfix_log, &dovecot_log);
    for client in [seen.queued_client, seen.rejected_client] {
        let (s, log) = session_and_log(&late, client);
        let end = micros(&s["end"]);
        let in_record = s["log"].as_array().map_or(0, Vec::len);
        let disconnect = log
            .iter()
            .find(|e| e["event"] == "disconnect")
            .map(|e| micros(&e["ts"]))
            .unwrap_or_else(|| panic!("no disconnect line joined: {log:#?}"));
        for (i, e) in log.iter().enumerate() {
            let certainly_before = micros(&e["ts"]).max(disconnect) + 1_000_000 < end;
            assert_eq!(
                (i < in_record, e["type"] == "log"),
                (certainly_before, !certainly_before),
                "entry {i} of {log:#?} in the record {s}"
            );
        }
    }
    let (_, log) = session_and_log(&late, seen.queued_client);
    assert!(log
        .iter()
        .any(|e| e["event"] == "delivery" && e["fields"]["status"] == "sent"));

    // And `why` tells the story from the saved stream.
    let why = run_ok(
        Command::new(env!("CARGO_BIN_EXE_mail-trace"))
            .args(["why", &seen.queue_id, "--json"])
            .arg(&stdout),
        Duration::from_secs(30),
        "mail-trace why",
    );
    let first = why.stdout.lines().next().unwrap_or("");
    assert_eq!(first, format!("Message {}", seen.queue_id));
    assert!(
        why.stdout.contains(&format!(
            "Received in session #{} smtp {} -> ",
            session_and_log(&live, seen.queued_client).0["id"],
            seen.queued_client
        )),
        "{}",
        why.stdout
    );
    assert!(
        why.stdout
            .contains("delivery: to=alice@mx.test relay=virtual"),
        "{}",
        why.stdout
    );
    assert!(why.stdout.contains("status=sent"), "{}", why.stdout);
}

#[test]
fn why_live_tells_the_story_once_delivered() {
    common::require_root("why_live_tells_the_story_once_delivered");
    let tb = Testbed::start();
    let dir = TempDir::new("whylive");
    let stdout = dir.path().join("why.out");
    let plog = tb.postfix.log_path().to_path_buf();
    let args: Vec<String> = vec![
        "why".into(),
        "--live".into(),
        "--from".into(),
        "*@client.test".into(),
        "-i".into(),
        tb.ns.host_if.clone(),
        format!("--maillog={}", plog.display()),
        "--duration".into(),
        "60".into(),
    ];
    let mut why = Tail::start_cmd(&args, &stdout, &dir.path().join("why.stderr"));
    let server = std::net::IpAddr::from(tb.ns.server_v4());
    let ok = swaks(server, 25, &["--to", "alice@mx.test"]);
    let queue_id = ok.queue_ids().pop().expect("queued");
    let started = std::time::Instant::now();
    let mut child = why.child.take().expect("running");
    // It stops by itself at the delivery line, well before --duration.
    let status = wait_child(&mut child, Duration::from_secs(40))
        .unwrap_or_else(|| panic!("why --live did not stop: {}", why.err()));
    assert!(
        status.success(),
        "why --live exited {status}: {}",
        why.err()
    );
    assert!(started.elapsed() < Duration::from_secs(40));
    let out = std::fs::read_to_string(&stdout).unwrap();
    assert_eq!(
        out.lines().next(),
        Some(format!("Message {queue_id}").as_str()),
        "{out}"
    );
    assert!(
        out.lines()
            .nth(1)
            .is_some_and(|l| l.starts_with("Received in session #") && l.contains(" smtp ")),
        "{out}"
    );
    assert!(out.contains("  MAIL FROM:<sender@client.test>\n"), "{out}");
    assert!(
        out.contains(&format!(
            "  end of data -> 250 2.0.0 Ok: queued as {queue_id}\n"
        )),
        "{out}"
    );
    // The delivery line, as Postfix logged it for this queue id.
    let delivery = format!(" {queue_id} delivery: to=alice@mx.test relay=virtual");
    assert!(
        out.lines().any(|l| l.contains("postfix/virtual[")
            && l.contains(&delivery)
            && l.contains(" status=sent")),
        "{out}"
    );
    assert!(tb
        .postfix
        .log()
        .contains(&format!("{queue_id}: to=<alice@mx.test>")));
}

/// `--journal`: Postfix and Dovecot log through syslog(3) into a real systemd-journald (the
/// host's, or a standalone one the harness starts), `tail --journal` follows it with
/// `journalctl`, and the records carry the same lines as with `--maillog`.
#[test]
fn tail_joins_the_systemd_journal() {
    common::require_root("tail_joins_the_systemd_journal");
    let journald = common::journal::Journald::start();
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let tb = Testbed::start_logging(common::Logs::Syslog);
    let dir = TempDir::new("journal");
    let stdout = dir.path().join("tail.json");
    let args: Vec<String> = vec![
        "--json".into(),
        "-i".into(),
        tb.ns.host_if.clone(),
        "--journal".into(),
    ];
    let tail = Tail::start(&args, &stdout, &dir.path().join("tail.stderr"));
    let server = std::net::IpAddr::from(tb.ns.server_v4());

    let (queue_id, imap_client) = queued_rejected_and_failed_login(server);
    let logs = wait_for(
        Duration::from_secs(20),
        "delivery and auth failed in the journal",
        || {
            let l = journald.mail_lines(since);
            (l.contains(&format!("{queue_id}: removed")) && l.contains("auth failed")).then_some(l)
        },
    );
    std::thread::sleep(Duration::from_secs(3));
    let err = tail.interrupt();
    assert!(!err.contains("--journal:"), "{err}");
    let lines_with = |needle: &str| -> String {
        logs.lines()
            .filter(|l| l.contains(needle))
            .map(|l| format!("{l}\n"))
            .collect()
    };
    let (postfix_log, dovecot_log) = (lines_with(" postfix/"), lines_with(" dovecot"));
    let client_of = |needle: &str| -> SocketAddr {
        let rest = postfix_log
            .lines()
            .find_map(|l| l.split(needle).nth(1))
            .unwrap_or_else(|| panic!("{needle} not in the journal:\n{postfix_log}"));
        let (ip, port) = rest.split_once("]:").expect("client address");
        format!("{ip}:{}", port.split([' ', ':']).next().unwrap())
            .parse()
            .expect("client address")
    };
    let seen = Seen {
        queued_client: client_of(&format!("{queue_id}: client=unknown[")),
        queue_id,
        rejected_client: client_of("NOQUEUE: reject: RCPT from unknown["),
        imap_client,
    };
    let live = json_lines(&std::fs::read_to_string(&stdout).unwrap());
    check(&live, &seen, &postfix_log, &dovecot_log);
    // The journal's own fields: program and pid as journald recorded them.
    let (_, log) = session_and_log(&live, seen.queued_client);
    let delivery = log.iter().find(|e| e["event"] == "delivery").unwrap();
    let pid = delivery["pid"].as_u64().expect("pid");
    assert!(
        postfix_log.contains(&format!(
            " postfix/virtual[{pid}]: {}: to=<alice@mx.test>",
            seen.queue_id
        )),
        "{postfix_log}"
    );
}
