//! Bad input at the edges of the command line: every case gives exactly one line on stderr, no
//! backtrace, and exit code 2; help and version keep clap's full output and exit 0.
//! Runs the binary unprivileged where that matters (the unreadable file).
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Output};

fn mail_trace(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mail-trace"))
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .output()
        .expect("run mail-trace")
}

/// Asserts exit code 2, empty stdout and exactly `line` (plus newline) on stderr.
fn usage_error(args: &[&str], line: &str) {
    let out = mail_trace(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr, format!("{line}\n"), "stderr of {args:?}");
    assert_eq!(out.status.code(), Some(2), "exit code of {args:?}");
    assert!(out.stdout.is_empty(), "stdout of {args:?}");
}

struct Tmp(PathBuf);
impl Tmp {
    fn new(tag: &str) -> Tmp {
        let p = std::env::temp_dir().join(format!("mt-edges-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("temp dir");
        Tmp(p)
    }
}
impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn wrong_flags_are_one_line() {
    usage_error(
        &["--bogus"],
        "mail-trace: error: unexpected argument '--bogus' found",
    );
    usage_error(
        &["capture", "--bogus"],
        "mail-trace: error: unexpected argument '--bogus' found",
    );
    usage_error(
        &["frobnicate"],
        "mail-trace: error: unrecognized subcommand 'frobnicate'",
    );
    usage_error(
        &["replay"],
        "mail-trace: error: the following required arguments were not provided: <FILE>...",
    );
    usage_error(
        &["tail", "--json", "--summary"],
        "mail-trace: error: the argument '--json' cannot be used with '--summary'",
    );
    usage_error(
        &["capture", "--count", "many"],
        "mail-trace: error: invalid value 'many' for '--count <COUNT>': invalid digit found in string",
    );
}

#[test]
fn bad_ports_cidrs_and_sizes_are_one_line() {
    usage_error(
        &["tail", "--ports", "0"],
        "mail-trace: error: invalid value '0' for '--ports <PORT,…>': bad port \"0\": must be 1..=65535",
    );
    usage_error(
        &["capture", "--ports", "25,70000"],
        "mail-trace: error: invalid value '25,70000' for '--ports <PORT,…>': bad port \"70000\": must be 1..=65535",
    );
    usage_error(
        &["--host", "10.99.0.1/16"],
        "mail-trace: error: invalid value '10.99.0.1/16' for '--host <CIDR>': bad CIDR \"10.99.0.1/16\": host bits set",
    );
    usage_error(
        &["capture", "--host", "fd99::1/64"],
        "mail-trace: error: invalid value 'fd99::1/64' for '--host <CIDR>': bad CIDR \"fd99::1/64\": host bits set",
    );
    usage_error(
        &["tail", "--ring-size", "3000"],
        "mail-trace: error: invalid value '3000' for '--ring-size <BYTES>': bad size \"3000\": a power of two of at least 4096 bytes, e.g. 16M",
    );
    usage_error(
        &["why", "4Xyz", "--json", "/dev/null", "-i", "eth0"],
        "mail-trace: error: why: capture options (-i, --ports, --host, …) need --live",
    );
    usage_error(
        &["why", "4Xyz", "--json", "/dev/null", "--journal"],
        "mail-trace: error: why: --journal needs --live; give --maillog=PATH for saved logs",
    );
}

#[test]
fn unusable_files_are_one_line() {
    let tmp = Tmp::new("files");
    let missing = tmp.0.join("missing.pcapng");
    let m = missing.to_str().expect("utf-8 path");
    usage_error(
        &["replay", m],
        &format!("mail-trace: {m}: No such file or directory (os error 2)"),
    );
    let d = tmp.0.to_str().expect("utf-8 path");
    usage_error(
        &["replay", d],
        &format!("mail-trace: {d}: Is a directory (os error 21)"),
    );
    let text = tmp.0.join("notes.txt");
    std::fs::write(&text, "not a capture at all\n").expect("write");
    let t = text.to_str().expect("utf-8 path");
    usage_error(
        &["replay", t],
        &format!("mail-trace: {t}: not a pcap or pcapng file"),
    );
}

#[test]
fn unreadable_file_is_one_line() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = Tmp::new("perm");
    let f = tmp.0.join("secret.pcapng");
    std::fs::write(&f, b"\x0a\x0d\x0d\x0a").expect("write");
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    std::fs::set_permissions(&tmp.0, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let p = f.to_str().expect("utf-8 path");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mail-trace"));
    cmd.args(["replay", p]);
    // Root reads any file: the case only exists for an unprivileged user.
    if unsafe { libc::geteuid() } == 0 {
        cmd.uid(65534).gid(65534);
    }
    let out = cmd.output().expect("run mail-trace as nobody");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!("mail-trace: {p}: Permission denied (os error 13)\n")
    );
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn help_and_version_keep_their_output() {
    let out = mail_trace(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.starts_with(
            "eBPF tracer for SMTP, submission, POP3 and IMAP\n\nUsage: mail-trace <COMMAND>\n"
        ),
        "{help}"
    );
    assert!(help.lines().count() > 5);
    assert!(out.stderr.is_empty());
    let out = mail_trace(&["--version"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("mail-trace {}\n", env!("CARGO_PKG_VERSION"))
    );
    // --verbose adds the kernel's features, one a line, in any order and with -V alike (their
    // values are checked per kernel in tests/kernel.rs); anything else beside it is not this.
    let verbose = mail_trace(&["--version", "--verbose"]);
    assert_eq!(verbose.status.code(), Some(0));
    let text = String::from_utf8_lossy(&verbose.stdout).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 9, "{text}");
    assert_eq!(
        lines[0],
        format!("mail-trace {}", env!("CARGO_PKG_VERSION"))
    );
    assert!(lines[1].starts_with("kernel: "), "{text}");
    assert!(lines[8].starts_with("eBPF object: "), "{text}");
    assert!(verbose.stderr.is_empty());
    for args in [["-V", "--verbose"], ["--verbose", "--version"]] {
        let out = mail_trace(&args);
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), text, "{args:?}");
    }
    let out = mail_trace(&["replay", "--help"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("Usage: mail-trace replay"));
}
