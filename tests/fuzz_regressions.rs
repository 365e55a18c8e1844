//! Every input a fuzz run ever crashed on (tests/fixtures/fuzz-regressions/<target>/), replayed
//! through the same harness as the fuzzer (fuzz/src/lib.rs), plus our own captures through the
//! pcap reader harness: these run on stable, in CI; the long fuzz runs live outside it
//! (docs/fuzzing.md).
#[path = "../fuzz/src/lib.rs"]
#[allow(dead_code)]
mod harness;

use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    v.sort();
    v
}

#[test]
fn every_kept_crash_input_passes_its_harness() {
    let root = fixtures().join("fuzz-regressions");
    let mut replayed = 0;
    for dir in files_and_dirs(&root) {
        let target = dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        assert!(
            harness::TARGETS.contains(&target.as_str()),
            "{}: not a fuzz target",
            dir.display()
        );
        for f in files(&dir) {
            let data = std::fs::read(&f).expect("read regression input");
            // A panic here names the input through the test's output.
            eprintln!("replaying {}", f.display());
            assert!(harness::run(&target, &data));
            replayed += 1;
        }
    }
    // Each kept input is listed in docs/fuzzing.md; this count keeps the two honest.
    assert_eq!(
        replayed, KEPT_INPUTS,
        "update KEPT_INPUTS and docs/fuzzing.md"
    );
}

/// Crash inputs kept so far (docs/fuzzing.md, "Findings").
const KEPT_INPUTS: usize = 3;

fn files_and_dirs(root: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    v.sort();
    v
}

#[test]
fn our_captures_pass_the_reader_and_decoder_harnesses() {
    let mut n = 0;
    for f in files(&fixtures().join("testbed")) {
        if f.extension().is_some_and(|e| e == "pcapng" || e == "pcap") {
            let data = std::fs::read(&f).expect("read capture");
            harness::pcap_read(&data);
            // Every prefix cut at a block boundary or mid-block must be just as harmless.
            for cut in [1, 27, data.len() / 3, data.len() / 2, data.len() - 1] {
                harness::pcap_read(&data[..cut.min(data.len())]);
            }
            n += 1;
        }
    }
    assert!(n >= 10, "only {n} test-bed captures found");
}

/// The log-line harness on real Postfix and Dovecot lines and hostile ones: each must parse
/// (the harness checks redaction on each), so the harness is known to reach the parsers.
#[test]
fn log_parsers_harness_reaches_every_parser() {
    use mail_trace::maillog::{parse, Clock};
    let lines = [
        "Dec  4 10:11:12 mx postfix/smtpd[123]: connect from unknown[10.99.1.1]",
        "Dec  4 10:11:12 mx postfix/cleanup[124]: 4D1C098E292: message-id=<secret-id@example.test>",
        "Dec  4 10:11:12 mx postfix/cleanup[124]: 4D1C098E292: warning: header Subject: private words from unknown[10.99.1.1]; from=<a@b> to=<c@d> proto=ESMTP helo=<x>",
        "2026-12-04T10:11:12.123456+00:00 mx postfix/smtpd[123]: NOQUEUE: reject: RCPT from unknown[10.99.1.1]: 550 5.1.1 <n@mx.test>: Recipient address rejected: User unknown; from=<s@c> to=<n@mx.test> proto=ESMTP helo=<c>",
        "Dec  4 10:11:12 mx dovecot: imap-login: Login: user=<alice@mx.test>, method=PLAIN, rip=10.99.1.1, lip=10.99.1.2, mpid=14443, session=<LLVHlEphMFcKY5gB>",
        "Dec  4 10:11:12 mx dovecot: imap(alice)<1><LLVHlEphMFcKY5gB>: msgid=<m@x>: saved mail to INBOX, subject=private",
        "Dec  4 10:11:12 mx postfix/smtpd[1]: \x1b[2Jconnect from evil[10.99.1.1]\x07",
    ];
    let clock = Clock::utc(1_796_342_400_000_000_000);
    for l in lines {
        assert!(parse(l, &clock).is_some(), "not parsed: {l}");
    }
    let mut input = lines.join("\n");
    input.push('\n');
    input.push_str(&"x".repeat(20_000));
    harness::maillog_line(input.as_bytes());
}

/// A packet of 3,000 bytes in two records (2,048 + 952) comes out of the ring harness once;
/// with its second chunk lost, not at all; a plaintext record's chunk decodes.
#[test]
fn ring_harness_puts_packets_together() {
    fn record(s: &mut Vec<u8>, op: u8, cap: u16, offset: u32, len: u32) {
        s.push(op);
        s.extend_from_slice(&cap.to_le_bytes());
        s.extend_from_slice(&offset.to_le_bytes());
        s.extend_from_slice(&len.to_le_bytes());
        s.extend_from_slice(&0u32.to_le_bytes()); // flags
        s.extend_from_slice(&0u32.to_le_bytes()); // the plaintext epoch
    }
    // op: 0x04 a new packet id, 0x08 the cap from a u16, 0x10 offset and length as u32s.
    let mut whole = Vec::new();
    record(&mut whole, 0x1c, 3000, 0, 2048);
    record(&mut whole, 0x18, 3000, 2048, 952);
    assert_eq!(harness::ring_records(&whole), 1);
    let mut lost = Vec::new();
    record(&mut lost, 0x1c, 3000, 0, 2048);
    record(&mut lost, 0x1c, 3000, 2048, 952);
    assert_eq!(harness::ring_records(&lost), 0);
}

/// The pcapng round trip harness writes and reads back the frames its script makes.
#[test]
fn pcapng_harness_reads_back_every_frame() {
    // Two interfaces (names "mt0", "mt1ab"; link types 0 and 1), then three frames.
    let mut s = vec![1, 0, 0, 2, b'a', b'b', 1];
    for (op, payload) in [(0x00u8, &b"abc"[..]), (0x85, b""), (0x09, &[0u8; 255][..])] {
        s.push(op);
        s.push(payload.len() as u8);
        s.extend_from_slice(payload);
        if op & 0x80 != 0 {
            s.extend_from_slice(&1500u16.to_le_bytes());
        }
        s.extend_from_slice(&7u32.to_le_bytes());
    }
    assert_eq!(harness::pcapng_roundtrip(&s), 3);
}

/// Journal entries: the harness on a real entry and on the script form.
#[test]
fn journal_harness_reads_entries() {
    let entry = r#"{"SYSLOG_IDENTIFIER":"postfix/smtpd","_UID":"0","_PID":"7","__REALTIME_TIMESTAMP":"1796342400000000","MESSAGE":"connect from unknown[10.99.1.1]"}"#;
    let trusted = mail_trace::maillog::follow::Trusted::uids(&[0]);
    assert!(mail_trace::maillog::follow::journal_line(entry, &trusted).is_some());
    harness::journal_entry(entry.as_bytes());
    for op in 0..=255u8 {
        harness::journal_entry(&[op, 1, 2, 3, 4, 5, 6, 7, 8, 3, b'a', b'\n', b'b', 9, 9]);
    }
}
