//! Memory under 100 000 concurrent sessions (issue 8): a synthetic capture in which every session
//! is open at once (handshake, banner, EHLO), then every session ends (QUIT, FINs), replayed with
//! the default `--max-sessions` (all held) and with `--max-sessions 10000` (the idlest evicted).
//! The capture comes from bench/pcapgen.py (`concurrent`), the generator of `cargo xtask bench`,
//! and is written to a temporary directory. Peak RSS is the replay child's `ru_maxrss` (wait4).
//!
//! The cap asserted here is the one README.md documents under "Limits".

mod common;

use std::collections::HashMap;
use std::io::BufRead;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{run_ok, TempDir};

const SESSIONS: u64 = 100_000;

/// README "Limits": peak RSS ≤ BASE + live sessions × PER_SESSION (idle sessions, no held bytes).
const BASE_KIB: u64 = 32 << 10;
const PER_SESSION_KIB: u64 = 4;

/// Client address of session number `n` as bench/pcapgen.py writes it (every other one IPv6).
fn client(n: u64) -> String {
    let (host, port) = (n / 60_000, 1024 + n % 60_000);
    if n % 2 == 1 {
        format!("[fd99::{:x}:7]:{port}", 0x10 + host)
    } else {
        format!("10.99.{}.7:{port}", 100 + host)
    }
}

/// What a replay left behind: exit code, peak RSS in KiB, stderr, and the stdout file.
struct Replay {
    code: Option<i32>,
    max_rss_kib: u64,
    stderr: String,
}

/// Runs `mail-trace replay --json ARGS… FILE` with stdout to `out`; waits (bounded) with wait4
/// for its rusage.
#[expect(
    clippy::zombie_processes,
    reason = "reaped by wait4, which also gives the rusage"
)]
fn replay(file: &Path, args: &[&str], out: &Path, dir: &Path) -> Replay {
    let err = dir.join("replay.stderr");
    let mut child = Command::new(env!("CARGO_BIN_EXE_mail-trace"))
        .arg("replay")
        .arg("--json")
        .args(args)
        .arg(file)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(out).expect("stdout file"))
        .stderr(std::fs::File::create(&err).expect("stderr file"))
        .spawn()
        .expect("spawn mail-trace replay");
    let pid = child.id() as libc::pid_t;
    let deadline = Instant::now() + Duration::from_secs(900);
    let (status, ru) = loop {
        let mut status = 0;
        // SAFETY: rusage is plain data that wait4 fills in; the pid is our own child.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: valid pointers to locals; WNOHANG never blocks.
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut ru) };
        assert!(r >= 0, "wait4: {}", std::io::Error::last_os_error());
        if r == pid {
            break (status, ru);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("replay still running after 900 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    Replay {
        code: libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)),
        max_rss_kib: ru.ru_maxrss as u64,
        stderr: std::fs::read_to_string(&err).unwrap_or_default(),
    }
}

/// One session record, reduced to what the cases check.
#[derive(Debug, PartialEq, Eq, Hash, Clone)]
struct Rec {
    client: String,
    partial: bool,
    close: String,
    helo: Option<String>,
    commands: u64,
    replies: u64,
    bytes: (u64, u64),
    gaps: u64,
}

/// The session records of a JSON-lines file, by session id (each id once).
fn records(path: &Path) -> HashMap<u64, Rec> {
    let f = std::io::BufReader::new(std::fs::File::open(path).expect("open output"));
    let mut recs = HashMap::new();
    for line in f.lines() {
        let line = line.expect("read output");
        let v: serde_json::Value = serde_json::from_str(&line).expect("a JSON line");
        if v["type"] == "run" {
            continue; // the first line: how the run was made
        }
        assert_eq!(v["type"], "session", "{line}");
        let rec = Rec {
            client: v["client"].as_str().expect("client").to_owned(),
            partial: v["partial"].as_bool().expect("partial"),
            close: v["close"].as_str().expect("close").to_owned(),
            helo: v["helo"].as_str().map(str::to_owned),
            commands: v["commands"].as_u64().expect("commands"),
            replies: v["replies"].as_u64().expect("replies"),
            bytes: (
                v["bytes"]["c"].as_u64().expect("bytes.c"),
                v["bytes"]["s"].as_u64().expect("bytes.s"),
            ),
            gaps: v["gaps"].as_u64().expect("gaps"),
        };
        let id = v["id"].as_u64().expect("id");
        assert!(recs.insert(id, rec).is_none(), "session {id} twice");
    }
    recs
}

/// A session that went from SYN to FIN: banner, EHLO (2 commands: EHLO, QUIT; 3 replies).
fn whole(n: u64) -> Rec {
    Rec {
        client: client(n),
        partial: false,
        close: "fin".into(),
        helo: Some("client.test".into()),
        commands: 2,
        replies: 3,
        bytes: (24, 102),
        gaps: 0,
    }
}

fn cap_kib(live: u64) -> u64 {
    BASE_KIB + live * PER_SESSION_KIB
}

#[test]
fn hundred_thousand_concurrent_sessions_stay_under_the_cap() {
    let tmp = TempDir::new("memcap");
    let file = tmp.path().join("concurrent.pcap");
    let gen = Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/pcapgen.py");
    let made = run_ok(
        Command::new("python3")
            .arg(&gen)
            .args(["concurrent", &SESSIONS.to_string()])
            .arg(&file),
        Duration::from_secs(300),
        "pcapgen.py concurrent",
    );
    assert!(
        made.stdout.starts_with(&format!("{SESSIONS} ")),
        "{}",
        made.stdout
    );
    let out = tmp.path().join("out.jsonl");

    // 1. Default --max-sessions (100 000): every session held to its FIN, none evicted.
    let r = replay(&file, &[], &out, tmp.path());
    assert_eq!((r.code, r.stderr.as_str()), (Some(0), ""));
    let recs = records(&out);
    assert_eq!(recs.len() as u64, SESSIONS);
    for n in 0..SESSIONS {
        // Sessions are opened, hence numbered, in capture order.
        assert_eq!(recs.get(&(n + 1)), Some(&whole(n)), "session {}", n + 1);
    }
    eprintln!(
        "default --max-sessions: peak RSS {} KiB for {SESSIONS} open sessions",
        r.max_rss_kib
    );
    assert!(
        r.max_rss_kib <= cap_kib(SESSIONS),
        "peak RSS {} KiB over the documented cap {} KiB",
        r.max_rss_kib,
        cap_kib(SESSIONS)
    );

    // 2. --max-sessions 10000. Opening session 10 001 evicts the idlest (the oldest: sessions
    //    see no packet after their EHLO reply), and so on up to session 100 000: 90 000
    //    evictions, sessions 1..=90 000. Evicted connections are not remembered as closed, so
    //    each one's QUIT later opens a new, partial session (ids 100 001…), which its FINs end.
    //    The first of those finds the table full (10 000 live) and evicts session 90 001; after
    //    that each partial session ends before the next opens. Hence 90 001 evictions and
    //    90 001 partial sessions; sessions 90 002..=100 000 end whole.
    let r = replay(&file, &["--max-sessions", "10000"], &out, tmp.path());
    let evicted = 90_001;
    assert_eq!(
        (r.code, r.stderr.as_str()),
        (
            Some(0),
            "mail-trace: 90001 sessions evicted (more than --max-sessions 10000 open at once); \
             their records end with close \"evicted\"\n"
        )
    );
    let recs = records(&out);
    assert_eq!(recs.len() as u64, SESSIONS + evicted);
    for n in 0..SESSIONS {
        let want = if n < evicted {
            // Evicted after the EHLO reply: banner and EHLO are in the record.
            Rec {
                close: "evicted".into(),
                commands: 1,
                replies: 2,
                bytes: (18, 87),
                ..whole(n)
            }
        } else {
            whole(n)
        };
        assert_eq!(recs.get(&(n + 1)), Some(&want), "session {}", n + 1);
    }
    for n in 0..evicted {
        let id = SESSIONS + 1 + n;
        let want = Rec {
            client: client(n),
            partial: true,
            close: "fin".into(),
            helo: None,
            commands: 1,
            replies: 1,
            bytes: (6, 15),
            gaps: 0,
        };
        assert_eq!(recs.get(&id), Some(&want), "session {id}");
    }
    eprintln!("--max-sessions 10000: peak RSS {} KiB", r.max_rss_kib);
    assert!(
        r.max_rss_kib <= cap_kib(10_000),
        "peak RSS {} KiB over the documented cap {} KiB",
        r.max_rss_kib,
        cap_kib(10_000)
    );
}
