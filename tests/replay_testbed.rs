//! `mail-trace replay` on the captures our own test bed recorded from real Postfix
//! (tests/fixtures/testbed, written by tests/testbed.rs). Each capture has a JSON
//! file of facts gathered independently of mail-trace — Postfix's own log (queue
//! ids), the client's view of every reply, tshark's byte counts — and the session
//! record must agree with every one of them. The binary is run as an operator
//! would run it, and the secrets the clients sent must appear nowhere in any
//! output mode.
use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine as _;
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/testbed")
}

fn replay(args: &[&str], file: &Path) -> (String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_mail-trace"))
        .arg("replay")
        .args(args)
        .arg(file)
        .output()
        .expect("run mail-trace");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        out.status.success(),
        "replay {} failed: {stderr}",
        file.display()
    );
    (stdout, stderr)
}

fn scenarios() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(fixtures()).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "json") {
            let v: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
            out.push((p.file_stem().unwrap().to_string_lossy().to_string(), v));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(out.len() >= 17, "only {} fixtures", out.len());
    out
}

#[test]
fn every_testbed_session_matches_what_postfix_did() {
    for (name, facts) in scenarios() {
        let pcap = fixtures().join(facts["pcapng"].as_str().unwrap());
        let (json, _) = replay(&["--json", "--events"], &pcap);
        let lines: Vec<Value> = json
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let sessions: Vec<&Value> = lines.iter().filter(|l| l["type"] == "session").collect();
        assert_eq!(sessions.len(), 1, "{name}: one session per capture");
        let rec = sessions[0];
        let ctx = format!("{name}: {rec}");
        assert_eq!(rec["client"], facts["client"], "{ctx}");
        assert_eq!(rec["server"], facts["server"], "{ctx}");
        assert_eq!(rec["proto"], "smtp", "{ctx}");
        assert_eq!(rec["partial"], false, "{ctx}");
        assert_eq!(rec["gaps"], 0, "{ctx}");
        assert_eq!(rec["anomalies"], serde_json::json!([]), "{ctx}");
        assert_eq!(rec["bytes"]["c"], facts["client_payload_bytes"], "{ctx}");
        assert_eq!(rec["bytes"]["s"], facts["server_payload_bytes"], "{ctx}");
        assert_eq!(rec["tls_mode"], facts["tls_mode"], "{ctx}");
        assert_eq!(rec["tls"], !facts["tls_mode"].is_null(), "{ctx}");
        if let Some(sni) = facts["sni"].as_str() {
            assert_eq!(rec["tls_info"]["sni"], sni, "{ctx}");
        }

        // Commands and replies in clear, in order, as the client and Postfix exchanged them.
        let cmds: Vec<String> = lines
            .iter()
            .filter(|l| l["type"] == "command")
            .map(|l| {
                let (v, a) = (l["verb"].as_str().unwrap(), l["arg"].as_str().unwrap());
                if a.is_empty() {
                    v.to_string()
                } else {
                    format!("{v} {a}")
                }
            })
            .collect();
        let want: Vec<String> = facts["commands"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap().to_string())
            .collect();
        assert_eq!(
            cmds.len(),
            want.len(),
            "{ctx}\nours {cmds:?}\nwire {want:?}"
        );
        for (ours, wire) in cmds.iter().zip(&want) {
            // AUTH arguments are redacted in ours; everything else is verbatim.
            if ours.starts_with("AUTH") {
                assert!(
                    wire.starts_with(ours.split(' ').next().unwrap())
                        || ours.starts_with("AUTH-DATA"),
                    "{ctx}: {ours} vs {wire}"
                );
            } else {
                assert_eq!(ours, wire, "{ctx}");
            }
        }
        let codes: Vec<Value> = lines
            .iter()
            .filter(|l| l["type"] == "reply")
            .map(|l| l["code"].clone())
            .collect();
        assert_eq!(Value::from(codes), facts["reply_codes"], "{ctx}");
        assert_eq!(
            rec["replies"],
            facts["reply_codes"].as_array().unwrap().len(),
            "{ctx}"
        );

        // The envelope and its replies.
        let txs = rec["transactions"].as_array().unwrap();
        if let Some(from) = facts["mail_from"].as_str() {
            assert_eq!(txs[0]["mail_from"], from, "{ctx}");
        }
        let our_rcpt: Vec<(Value, Value)> = txs
            .iter()
            .flat_map(|t| t["rcpt"].as_array().unwrap().iter())
            .map(|r| (r["addr"].clone(), r["code"].clone()))
            .collect();
        let want_rcpt: Vec<(Value, Value)> = facts["rcpt"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (r["addr"].clone(), r["code"].clone()))
            .collect();
        assert_eq!(our_rcpt, want_rcpt, "{ctx}");
        // Queue ids equal the ones Postfix wrote in its own log (clear sessions only:
        // inside TLS the end-of-data reply is not visible without --tls-plaintext).
        if facts["tls_mode"].is_null() {
            let ours: Vec<Value> = txs
                .iter()
                .filter(|t| !t["queue_id"].is_null())
                .map(|t| t["queue_id"].clone())
                .collect();
            assert_eq!(Value::from(ours), facts["queue_ids"], "{ctx}");
        }
        // AUTH: mechanism, user and result in clear; nothing when it happened inside TLS.
        if facts["tls_mode"].is_null() && !facts["auth"].is_null() {
            assert_eq!(
                rec["auth"]["mechanism"], facts["auth"]["mechanism"],
                "{ctx}"
            );
            assert_eq!(rec["auth"]["user"], facts["auth"]["user"], "{ctx}");
            assert_eq!(rec["auth"]["code"], facts["auth"]["code"], "{ctx}");
        } else {
            assert!(rec["auth"].is_null(), "{ctx}");
        }
        // Headers stay hidden by default.
        for t in txs {
            assert!(t["headers"].is_null(), "{ctx}");
        }
    }
}

/// The forms a password takes on the wire in PLAIN and LOGIN.
fn secret_forms(user: &str, secret: &str) -> Vec<String> {
    let b64 = |s: &[u8]| base64::engine::general_purpose::STANDARD.encode(s);
    vec![
        secret.to_string(),
        b64(secret.as_bytes()),
        b64(format!("\0{user}\0{secret}").as_bytes()),
        b64(format!("{user}\0{user}\0{secret}").as_bytes()),
    ]
}

#[test]
fn secrets_never_appear_in_any_output_mode() {
    let mut checked = 0;
    for (name, facts) in scenarios() {
        let Some(secret) = facts["secret"].as_str() else {
            continue;
        };
        let user = facts["auth"]["user"].as_str().unwrap_or("alice@mx.test");
        let pcap = fixtures().join(facts["pcapng"].as_str().unwrap());
        for mode in [
            &["--json", "--events"][..],
            &["--color", "always"],
            &["--summary"],
            &["--json", "--show-headers"],
        ] {
            let (out, err) = replay(mode, &pcap);
            for form in secret_forms(user, secret) {
                assert!(
                    !out.contains(&form) && !err.contains(&form),
                    "{name} {mode:?}: {form} leaked:\n{out}"
                );
            }
        }
        // And with --show-secrets the clear-text ones do show (so the check above can fail).
        if facts["tls_mode"].is_null() {
            let (out, _) = replay(&["--json", "--events", "--show-secrets"], &pcap);
            assert!(
                secret_forms(user, secret).iter().any(|f| out.contains(f)),
                "{name}: --show-secrets shows no form of the secret:\n{out}"
            );
        }
        checked += 1;
    }
    assert!(checked >= 3, "only {checked} scenarios carry a secret");
}

#[test]
fn headers_only_with_show_headers() {
    let facts: Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("header_from_differs.json")).unwrap(),
    )
    .unwrap();
    let pcap = fixtures().join(facts["pcapng"].as_str().unwrap());
    // The first line says which privacy flags were in force; the session follows.
    let run_and_session = |out: &str| -> (Value, Value) {
        let mut l = out.lines().map(|l| serde_json::from_str(l).unwrap());
        (l.next().unwrap(), l.next().unwrap())
    };
    let (hidden, _) = replay(&["--json"], &pcap);
    let (run, rec) = run_and_session(&hidden);
    assert_eq!(run["type"], "run");
    assert_eq!(run["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(run["files"][0], pcap.display().to_string());
    assert_eq!(
        run["privacy"],
        serde_json::json!({"show_secrets": false, "show_headers": false})
    );
    assert!(rec["transactions"][0]["headers"].is_null());
    let (shown, _) = replay(&["--json", "--show-headers"], &pcap);
    let (run, rec) = run_and_session(&shown);
    assert_eq!(
        run["privacy"],
        serde_json::json!({"show_secrets": false, "show_headers": true})
    );
    let h = &rec["transactions"][0]["headers"];
    let from = h["from"].as_str().unwrap_or_default();
    assert!(!from.is_empty(), "{rec}");
    assert!(
        !from.contains(rec["transactions"][0]["mail_from"].as_str().unwrap()),
        "header From equals the envelope: {rec}"
    );
}

#[test]
fn human_output_of_a_plain_session_matches_the_golden_file() {
    let pcap = fixtures().join("plain_25.pcapng");
    let (out, _) = replay(&["--color", "never"], &pcap);
    let golden =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/golden/plain_25.tail.txt");
    if std::env::var_os("MT_UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(golden.parent().unwrap()).unwrap();
        std::fs::write(&golden, &out).unwrap();
    }
    let want =
        std::fs::read_to_string(&golden).expect("golden file (MT_UPDATE_GOLDEN=1 writes it)");
    assert_eq!(out, want);
}

#[test]
fn broken_files_give_one_line_and_keep_what_was_read() {
    let dir = std::env::temp_dir().join(format!("mt-replay-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let whole = std::fs::read(fixtures().join("three_rcpt.pcapng")).unwrap();
    // Cut inside the last packets: the sessions' first part is still there.
    let cut = dir.join("cut.pcapng");
    std::fs::write(&cut, &whole[..whole.len() * 3 / 4]).unwrap();
    let text = dir.join("notes.txt");
    std::fs::write(&text, b"this is not a capture\n").unwrap();
    let run = |files: &[&Path]| {
        Command::new(env!("CARGO_BIN_EXE_mail-trace"))
            .args(["replay", "--json"])
            .args(files)
            .output()
            .unwrap()
    };
    let out = run(&[&text, &cut]);
    let cut_only = run(&[&cut]);
    let _ = std::fs::remove_dir_all(&dir);
    // 2: a file could not be opened as a capture (bad input); 1 alone: a broken one.
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(cut_only.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{stderr}");
    assert!(
        lines[0].starts_with("mail-trace: ")
            && lines[0].contains("notes.txt")
            && lines[0].contains("not a pcap or pcapng file"),
        "{stderr}"
    );
    assert!(
        lines[1].contains("cut.pcapng") && lines[1].contains("truncated"),
        "{stderr}"
    );
    // The session read before the cut is still reported, marked as ended by the file's end.
    let stdout = String::from_utf8(out.stdout).unwrap();
    let recs: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["type"] != "run")
        .collect();
    assert_eq!(recs.len(), 1, "{stdout}");
    assert_eq!(recs[0]["close"], "end_of_capture");
    assert_eq!(
        recs[0]["transactions"][0]["mail_from"],
        "sender@client.test"
    );
}
