//! Findings on mail a real Postfix produced and passed on, captured live in the
//! test bed (tests/common): an S/MIME message signed with `openssl smime`, and a
//! delivery status notification Postfix wrote itself, relayed through it again.
//! Needs root (namespaces, Postfix, Dovecot), like tests/testbed.rs.

mod common;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::clients::swaks;
use common::tshark::Capture;
use common::{require_root, run_ok, TempDir, Testbed};
use serde_json::Value;

fn replay_json(pcap: &Path) -> Vec<Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_mail-trace"))
        .args(["replay", "--json"])
        .arg(pcap)
        .output()
        .expect("run mail-trace");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["type"] != "run")
        .collect()
}

/// Sends `data` (a whole message) to bob on port 25 while capturing; the session record.
fn relay_captured(tb: &Testbed, tmp: &TempDir, name: &str, from: &str, data: &Path) -> Value {
    let server: IpAddr = tb.ns.server_v4().into();
    let pcap = tmp.path().join(format!("{name}.pcapng"));
    let cap = Capture::start(&tb.ns.host_if, &pcap);
    let run = swaks(
        server,
        25,
        &[
            "--from",
            from,
            "--to",
            "bob@mx.test",
            "--data",
            &data.display().to_string(),
        ],
    );
    cap.stop();
    assert_eq!(
        run.codes(),
        vec![220, 250, 250, 250, 354, 250, 221],
        "{}",
        run.transcript
    );
    let records = replay_json(&pcap);
    assert_eq!(records.len(), 1, "{records:?}");
    records.into_iter().next().unwrap()
}

fn finding<'a>(rec: &'a Value, id: &str) -> Option<&'a Value> {
    rec["findings"].as_array()?.iter().find(|f| f["id"] == id)
}

fn smime_message(tmp: &TempDir) -> PathBuf {
    let dir = tmp.subdir("smime");
    let (cert, key) = (dir.join("signer.pem"), dir.join("signer.key"));
    run_ok(
        Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .args(["-subj", "/CN=alice@mx.test", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert),
        Duration::from_secs(60),
        "openssl signer certificate",
    );
    let body = dir.join("body.txt");
    std::fs::write(&body, "Signed hello from the test bed.\r\n").unwrap();
    let msg = dir.join("signed.eml");
    run_ok(
        Command::new("openssl")
            .args(["smime", "-sign", "-text", "-in"])
            .arg(&body)
            .arg("-signer")
            .arg(&cert)
            .arg("-inkey")
            .arg(&key)
            .args([
                "-from",
                "alice@mx.test",
                "-to",
                "bob@mx.test",
                "-subject",
                "signed",
            ])
            .arg("-out")
            .arg(&msg),
        Duration::from_secs(60),
        "openssl smime -sign",
    );
    msg
}

/// Has Postfix bounce a message alice sends (through Postfix's own `sendmail`)
/// to an unknown local recipient, and returns the DSN Postfix put in alice's
/// mailbox. (Over SMTP Postfix refuses that recipient at RCPT instead.)
fn postfix_bounce(tb: &Testbed) -> PathBuf {
    use std::io::Write;
    let mut child = Command::new("/usr/sbin/sendmail")
        .arg("-C")
        .arg(tb.postfix.config_dir())
        .args(["-f", "alice@mx.test", "nobody@mx.test"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("spawn sendmail");
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(b"From: alice@mx.test\nTo: nobody@mx.test\nSubject: to nobody\n\nhello\n")
        .unwrap();
    drop(stdin);
    let status = common::wait_child(&mut child, Duration::from_secs(30));
    assert!(status.is_some_and(|s| s.success()), "sendmail: {status:?}");
    let new = tb.dir.path().join("postfix/mail/mx.test/alice/new");
    let found = || {
        std::fs::read_dir(&new)
            .ok()?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| {
                std::fs::read_to_string(p).is_ok_and(|m| m.contains("report-type=delivery-status"))
            })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        if let Some(p) = found() {
            return p;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no bounce in alice's mailbox after 90 s; Postfix log:\n{}",
            tb.postfix.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn smime_and_a_postfix_dsn_are_read_from_the_wire() {
    require_root("smime_and_a_postfix_dsn_are_read_from_the_wire");
    let tmp = TempDir::new("fl");
    let tb = Testbed::start();

    let smime = relay_captured(&tb, &tmp, "smime", "alice@mx.test", &smime_message(&tmp));
    let f = finding(&smime, "smime").unwrap_or_else(|| panic!("no smime finding: {smime}"));
    assert_eq!(f["severity"], "info");
    assert_eq!(
        f["reason"],
        "message is S/MIME signed (multipart/signed, pkcs7-signature)"
    );
    assert!(finding(&smime, "from-mismatch").is_none(), "{smime}");

    let bounce = postfix_bounce(&tb);
    let dsn = relay_captured(&tb, &tmp, "dsn", "alice@mx.test", &bounce);
    let f = finding(&dsn, "dsn").unwrap_or_else(|| panic!("no dsn finding: {dsn}"));
    assert_eq!(f["severity"], "info");
    let reason = f["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("delivery status notification: nobody@mx.test failed 5.1.1 ("),
        "{reason}"
    );
    let r = &dsn["transactions"][0]["dsn"]["recipients"];
    assert_eq!(r.as_array().map(Vec::len), Some(1), "{dsn}");
    assert_eq!(r[0]["final_recipient"], "nobody@mx.test");
    assert_eq!(r[0]["action"], "failed");
    assert_eq!(r[0]["status"], "5.1.1");
    assert_eq!(
        r[0]["explain"].as_str(),
        mail_trace::explain::enhanced("5.1.1")
            .map(|e| e.to_string())
            .as_deref()
    );
    // Postfix's own words for why, as it wrote them in the report.
    let diag = r[0]["diagnostic_code"].as_str().unwrap_or_default();
    assert!(diag.contains("nobody@mx.test"), "{diag}");
}
