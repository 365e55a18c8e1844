//! The third-party captures in ../shared/corpus/pcaps, dissected by mail-trace
//! and checked against tshark's independent dissection of the same files
//! (`*.tshark.txt` beside each capture).
//!
//! tshark is not ground truth (it misses commands pipelined behind DATA, splits
//! STARTTLS into `STAR` + `TLS`), so the check is: every command, reply code,
//! envelope address and AUTH user tshark saw, we saw too, in the same order; and
//! where we see more, the test prints it. Per-file exact expectations follow.
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use mail_trace::capture::pcap::PcapSource;
use mail_trace::proto::Event;
use mail_trace::session::{Engine, EngineConfig, SessionInfo, SessionRecord, Sink};

fn corpus() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let p = here.join("../../shared/corpus/pcaps");
    assert!(p.is_dir(), "corpus not found at {}", p.display());
    p
}

#[derive(Default)]
struct Collect {
    sessions: Vec<(SessionInfo, Vec<Event>, Option<SessionRecord>)>,
}

impl Collect {
    fn idx(&self, info: &SessionInfo) -> usize {
        self.sessions
            .iter()
            .position(|(i, _, _)| i.id == info.id)
            .expect("event for a session that never started")
    }
}

impl Sink for Collect {
    fn session_start(&mut self, info: &SessionInfo) {
        self.sessions.push((info.clone(), Vec::new(), None));
    }
    fn event(&mut self, info: &SessionInfo, ev: &Event) {
        let i = self.idx(info);
        self.sessions[i].1.push(ev.clone());
    }
    fn session_end(&mut self, info: &SessionInfo, rec: &SessionRecord) {
        let i = self.idx(info);
        self.sessions[i].2 = Some(rec.clone());
    }
}

/// Replays one capture through the whole engine, as `mail-trace replay` does.
fn replay(path: &Path) -> Collect {
    let mut src = PcapSource::open(path).unwrap_or_else(|e| panic!("{e}"));
    let mut engine = Engine::new(EngineConfig::default());
    let mut sink = Collect::default();
    let mut last = 0;
    while let Some(f) = src.next_frame() {
        let f = f.unwrap_or_else(|e| panic!("{e}"));
        last = last.max(f.ts);
        engine.frame(&f, &mut sink);
    }
    engine.finish(last, &mut sink);
    sink
}

/// One row of tshark's per-packet mail fields.
#[derive(Debug, Default)]
struct Row {
    pop_cmds: Vec<String>,
    pop_status: Vec<String>,
    imap_cmds: Vec<String>,
    imap_status: Vec<String>,
    srcport: u16,
    dstport: u16,
    commands: Vec<String>,
    params: Vec<String>,
    codes: Vec<String>,
    auth_user: Option<String>,
}

fn tshark_rows(txt: &str) -> Vec<Row> {
    let mut rows = Vec::new();
    let mut header: Option<Vec<&str>> = None;
    for line in txt.lines() {
        if line.starts_with("frame.number\ttcp.stream\tip.src")
            || line.starts_with("frame.number\tframe.time_epoch")
        {
            header = Some(line.split('\t').collect());
            continue;
        }
        let Some(h) = &header else { continue };
        if line.is_empty() || line.starts_with('=') {
            header = None;
            continue;
        }
        let cols: Vec<&str> = line.split('\t').collect();
        let get = |name: &str| {
            h.iter()
                .position(|c| *c == name)
                .and_then(|i| cols.get(i))
                .copied()
                .unwrap_or("")
        };
        let split = |s: &str| -> Vec<String> {
            if s.is_empty() {
                Vec::new()
            } else {
                s.split('|').map(str::to_string).collect()
            }
        };
        rows.push(Row {
            pop_cmds: split(get("pop.request.command")),
            pop_status: split(get("pop.response.indicator")),
            imap_cmds: split(get("imap.request.command")),
            imap_status: split(get("imap.response.status")),
            srcport: get("tcp.srcport").parse().unwrap_or(0),
            dstport: get("tcp.dstport").parse().unwrap_or(0),
            commands: split(get("smtp.req.command")),
            params: split(get("smtp.req.parameter")),
            codes: split(get("smtp.response.code")),
            auth_user: Some(get("smtp.auth.username").to_string()).filter(|s| !s.is_empty()),
        });
    }
    rows
}

/// Where tshark is wrong, with the reason (file suffix, tshark's command).
const TSHARK_WRONG: &[(&str, &str, &str)] = &[(
    "smtp-long-command/input.pcap",
    "QUIT",
    "sent as the AUTH LOGIN user name: the server answered it with 334 (the password prompt), \
     so it is SASL data, not a command",
)];

/// tshark's commands, reply codes, envelope addresses and AUTH users of one connection.
type TsharkView = (Vec<String>, Vec<String>, Vec<String>, Vec<String>);

/// `needle` appears in `hay` in order (not necessarily contiguous).
fn is_subsequence(needle: &[String], hay: &[String]) -> bool {
    let mut it = hay.iter();
    needle.iter().all(|n| it.any(|h| h == n))
}

fn smtp_captures() -> Vec<PathBuf> {
    let manifest = std::fs::read_to_string(corpus().join("MANIFEST.md")).unwrap();
    let mut out = Vec::new();
    for line in manifest.lines() {
        // Index rows: | `file` | protocols | ...
        let cols: Vec<&str> = line.split('|').map(str::trim).collect();
        if cols.len() > 3
            && cols[1].starts_with('`')
            && cols[2].contains("SMTP")
            && !cols[2].contains("SMTPS")
        {
            out.push(corpus().join(cols[1].trim_matches('`')));
        }
    }
    out.sort();
    out.dedup();
    out
}

#[test]
fn every_smtp_capture_agrees_with_tshark() {
    let files = smtp_captures();
    assert!(
        files.len() >= 30,
        "only {} SMTP captures listed",
        files.len()
    );
    let mut failures = Vec::new();
    let (mut sessions, mut commands, mut codes_seen) = (0, 0, 0);
    for file in &files {
        let txt_path = PathBuf::from(format!("{}.tshark.txt", file.display()));
        let txt = std::fs::read_to_string(&txt_path).unwrap();
        let rows = tshark_rows(&txt);
        let ours = replay(file);
        // tshark's view per connection, keyed by (client port, server port).
        let mut theirs: HashMap<(u16, u16), TsharkView> = HashMap::new();
        for r in &rows {
            let server_side = !r.codes.is_empty();
            let key = if server_side {
                (r.dstport, r.srcport)
            } else {
                (r.srcport, r.dstport)
            };
            let e = theirs.entry(key).or_default();
            for (i, c) in r.commands.iter().enumerate() {
                let c = c.to_ascii_uppercase();
                if c == "STAR" {
                    e.0.push("STARTTLS".into()); // tshark quirk
                } else {
                    e.0.push(c.clone());
                }
                let p = r.params.get(i).cloned().unwrap_or_default();
                if c == "MAIL" || c == "RCPT" {
                    if let Some(a) = angle_addr(&p) {
                        e.2.push(a);
                    }
                }
            }
            e.1.extend(r.codes.iter().cloned());
            if let Some(u) = &r.auth_user {
                e.3.push(u.clone());
            }
        }
        for ((cport, sport), (cmds, codes, addrs, users)) in theirs {
            let Some((_, events, rec)) = ours
                .sessions
                .iter()
                .find(|(i, _, _)| i.client.port() == cport && i.server.port() == sport)
            else {
                failures.push(format!(
                    "{}: no session for {cport}->{sport}",
                    file.display()
                ));
                continue;
            };
            let our_cmds: Vec<String> = events
                .iter()
                .filter_map(|e| match e {
                    Event::Command { verb, .. } => Some(verb.clone()),
                    _ => None,
                })
                .collect();
            let our_codes: Vec<String> = events
                .iter()
                .filter_map(|e| match e {
                    Event::Reply { code, .. } => Some(code.clone()),
                    _ => None,
                })
                .collect();
            // tshark reports the AUTH continuation lines as commands of their own.
            let name = file.display().to_string();
            let cmds: Vec<String> = cmds
                .into_iter()
                .filter(|c| our_cmds.contains(c) || !looks_like_base64(c))
                .filter(|c| {
                    !TSHARK_WRONG
                        .iter()
                        .any(|(f, w, _)| name.ends_with(f) && c == w)
                })
                .collect();
            if !is_subsequence(&cmds, &our_cmds) {
                failures.push(format!(
                    "{}: commands: tshark {cmds:?} not within ours {our_cmds:?}",
                    file.display()
                ));
            }
            if !is_subsequence(&codes, &our_codes) {
                failures.push(format!(
                    "{}: reply codes: tshark {codes:?} not within ours {our_codes:?}",
                    file.display()
                ));
            }
            sessions += 1;
            commands += cmds.len();
            codes_seen += codes.len();
            let rec = rec.as_ref().expect("session ended");
            let rec_json = serde_json::to_string(rec).unwrap();
            for a in &addrs {
                if !rec_json.contains(&format!(
                    "\"{}\"",
                    a.replace('\\', "\\\\").replace('"', "\\\"")
                )) {
                    failures.push(format!(
                        "{}: envelope address {a} missing from {rec_json}",
                        file.display()
                    ));
                }
            }
            for u in &users {
                let user = rec
                    .field("auth")
                    .and_then(|a| a.get("user"))
                    .and_then(|u| u.as_str());
                // tshark shows AUTH LOGIN's user still in base64.
                use base64::Engine as _;
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(u)
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok());
                if user != Some(u.as_str()) && user.map(str::to_string) != decoded {
                    failures.push(format!(
                        "{}: auth user: tshark {u}, ours {user:?}",
                        file.display()
                    ));
                }
            }
            if cmds.iter().any(|c| c == "STARTTLS") && codes.iter().any(|c| c == "220") {
                let tls = rec.field("tls").and_then(|t| t.as_bool());
                if codes.last().map(String::as_str) != Some("454") && tls != Some(true) {
                    failures.push(format!(
                        "{}: STARTTLS accepted but tls={tls:?}",
                        file.display()
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
    eprintln!(
        "{sessions} sessions, {commands} tshark commands and {codes_seen} reply codes matched"
    );
    // Every listed capture holds at least one session tshark dissected.
    assert!(
        sessions >= files.len(),
        "{sessions} sessions compared for {} files",
        files.len()
    );
    assert!(
        commands > 700 && codes_seen > 250,
        "{commands} commands, {codes_seen} codes"
    );
}

fn angle_addr(param: &str) -> Option<String> {
    let start = param.find('<')?;
    let end = param[start..].find('>')? + start;
    Some(param[start + 1..end].to_string())
}

fn looks_like_base64(s: &str) -> bool {
    s.len() >= 4
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'=')
        && s.bytes()
            .any(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

fn captures_of(proto: &str) -> Vec<PathBuf> {
    let manifest = std::fs::read_to_string(corpus().join("MANIFEST.md")).unwrap();
    let mut out: Vec<PathBuf> = manifest
        .lines()
        .filter_map(|line| {
            let cols: Vec<&str> = line.split('|').map(str::trim).collect();
            (cols.len() > 3 && cols[1].starts_with('`') && cols[2].contains(proto))
                .then(|| corpus().join(cols[1].trim_matches('`')))
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

#[test]
fn every_pop3_and_imap_capture_agrees_with_tshark() {
    let mut failures = Vec::new();
    let mut compared = 0;
    for (proto, files) in [("pop3", captures_of("POP3")), ("imap", captures_of("IMAP"))] {
        assert!(!files.is_empty(), "no {proto} captures listed");
        for file in files {
            let txt = std::fs::read_to_string(format!("{}.tshark.txt", file.display())).unwrap();
            let rows = tshark_rows(&txt);
            let ours = replay(&file);
            let (mut cmds, mut status) = (Vec::new(), Vec::new());
            for r in &rows {
                let (c, st) = if proto == "pop3" {
                    (&r.pop_cmds, &r.pop_status)
                } else {
                    (&r.imap_cmds, &r.imap_status)
                };
                cmds.extend(c.iter().map(|c| c.to_ascii_uppercase()));
                // tshark marks untagged IMAP lines too; we count tagged completions.
                status.extend(st.iter().filter(|s| !s.is_empty()).cloned());
            }
            if cmds.is_empty() && status.is_empty() {
                continue; // tshark saw no command in clear (implicit TLS, fragments)
            }
            let Some((info, events, rec)) = ours
                .sessions
                .iter()
                .find(|(i, _, _)| format!("{:?}", i.proto).to_lowercase() == proto)
            else {
                failures.push(format!("{}: no {proto} session", file.display()));
                continue;
            };
            compared += 1;
            let our_cmds: Vec<String> = events
                .iter()
                .filter_map(|e| match e {
                    // tshark names `UID FETCH` by its second word.
                    Event::Command { verb, .. } => {
                        Some(verb.trim_start_matches("UID ").to_string())
                    }
                    _ => None,
                })
                .collect();
            let our_codes: Vec<String> = events
                .iter()
                .filter_map(|e| match e {
                    Event::Reply { code, .. } => Some(code.clone()),
                    _ => None,
                })
                .collect();
            if !is_subsequence(&cmds, &our_cmds) {
                failures.push(format!(
                    "{}: commands: tshark {cmds:?} not within ours {our_cmds:?}",
                    file.display()
                ));
            }
            let tagged: Vec<String> = status
                .iter()
                .filter(|s| s.as_str() != "*")
                .cloned()
                .collect();
            if !is_subsequence(&tagged, &our_codes) {
                failures.push(format!(
                    "{}: replies: tshark {tagged:?} not within ours {our_codes:?}",
                    file.display()
                ));
            }
            let starttls = cmds.iter().any(|c| c == "STLS" || c == "STARTTLS");
            let tls = rec
                .as_ref()
                .and_then(|r| r.field("tls"))
                .and_then(|t| t.as_bool());
            if starttls && tls != Some(true) {
                failures.push(format!(
                    "{}: {info:?}: STARTTLS/STLS seen but tls={tls:?}",
                    file.display()
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(compared >= 5, "only {compared} POP3/IMAP sessions compared");
}

#[test]
fn memory_bounds_are_flags_and_evictions_are_reported() {
    // Two concurrent IMAPS sessions; room for one: the idlest is evicted, and says so.
    let file = corpus().join("ndpi/pcap/imaps.pcap");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mail-trace"))
        .args(["replay", "--json", "--max-sessions", "1"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success());
    let closes: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["type"] == "session")
        .map(|v| v["close"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(closes, ["evicted", "end_of_capture"]);
}
