//! A systemd journal for `--journal` tests on machines without systemd (CI, containers): a
//! standalone `systemd-journald` (Debian's `systemd` package) with `/dev/log` pointing at its
//! syslog socket, so Postfix and Dovecot log into it through syslog(3) as on a systemd host.
//!
//! On a host whose own journald already runs, that one is used and nothing is changed. Otherwise
//! everything this creates (the daemon, its sockets and volatile journal, the `/dev/log` link)
//! goes on drop; a `/dev/log` that exists but is not a journald's is never touched: the test
//! stops with that reason instead.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{run_ok, wait_for};

const JOURNALD: &str = "/lib/systemd/systemd-journald";
const SOCKETS: &str = "/run/systemd/journal";
const DEV_LOG_TARGET: &str = "/run/systemd/journal/dev-log";
const VOLATILE: &str = "/run/log/journal";

pub struct Journald {
    /// None when the host's own journald is used.
    child: Option<Child>,
    dev_log_link: bool,
    created: Vec<PathBuf>,
}

impl Journald {
    pub fn start() -> Journald {
        if host_journald_answers() {
            return Journald {
                child: None,
                dev_log_link: false,
                created: vec![],
            };
        }
        let dev_log = Path::new("/dev/log");
        assert!(
            dev_log.symlink_metadata().is_err(),
            "/dev/log exists but no systemd-journald answers on {SOCKETS}/socket: another syslog \
             daemon owns it; this test needs the journal (run it on a systemd host or one without \
             /dev/log)"
        );
        assert!(
            Path::new(JOURNALD).exists(),
            "{JOURNALD} missing (Debian package systemd)"
        );
        let mut created = vec![];
        for d in [SOCKETS, VOLATILE] {
            if !Path::new(d).exists() {
                created.push(PathBuf::from(d));
            }
        }
        std::fs::create_dir_all(SOCKETS).expect("create /run/systemd/journal");
        if !Path::new(VOLATILE).exists() {
            // As systemd-tmpfiles sets it up on a systemd host (systemd's tmpfiles.d/systemd.conf):
            // setgid systemd-journal, so the journal files are readable by that group, which is
            // how an unprivileged reader (mail-trace after its privilege drop) gets at them.
            run_ok(
                Command::new("install").args([
                    "-d",
                    "-m",
                    "2755",
                    "-g",
                    "systemd-journal",
                    VOLATILE,
                ]),
                Duration::from_secs(10),
                "install -d /run/log/journal",
            );
        }
        let child = Command::new(JOURNALD)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn systemd-journald");
        let mut j = Journald {
            child: Some(child),
            dev_log_link: false,
            created,
        };
        wait_for(Duration::from_secs(20), "systemd-journald sockets", || {
            (Path::new(DEV_LOG_TARGET).exists() && host_journald_answers()).then_some(())
        });
        std::os::unix::fs::symlink(DEV_LOG_TARGET, dev_log).expect("link /dev/log");
        j.dev_log_link = true;
        j
    }

    /// The journal's Postfix and Dovecot entries since `since` (UNIX seconds) as syslog-style
    /// lines (`journalctl -o short-iso`), the way an operator reads them.
    pub fn mail_lines(&self, since: u64) -> String {
        let out = run_ok(
            Command::new("journalctl").args([
                "--no-pager",
                "-o",
                "short-iso",
                "--since",
                &format!("@{since}"),
            ]),
            Duration::from_secs(30),
            "journalctl",
        );
        out.stdout
            .lines()
            .filter(|l| l.contains(" postfix/") || l.contains(" dovecot"))
            .map(|l| format!("{l}\n"))
            .collect()
    }
}

/// A datagram to the native socket is accepted only by a running journald.
fn host_journald_answers() -> bool {
    UnixDatagram::unbound()
        .and_then(|s| s.connect(format!("{SOCKETS}/socket")))
        .is_ok()
}

impl Drop for Journald {
    fn drop(&mut self) {
        if self.dev_log_link {
            let ours = std::fs::read_link("/dev/log").is_ok_and(|t| t == Path::new(DEV_LOG_TARGET));
            if ours {
                let _ = std::fs::remove_file("/dev/log");
            }
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for d in &self.created {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}
