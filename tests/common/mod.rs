//! Shared harness for the integration tests: a network namespace joined to the root namespace by a
//! veth pair, a real Postfix and Dovecot inside it, clients and tshark on the root side.
//!
//! Everything here is bounded in time and cleans up in `Drop`, so a failing test leaves no
//! namespace, interface or daemon behind. Each test binary includes it with `mod common;` and uses
//! only part of it.
#![allow(
    dead_code,
    reason = "each test binary uses a different part of the harness"
)]

pub mod clients;
pub mod craft;
pub mod dovecot;
pub mod journal;
pub mod netns;
pub mod postfix;
pub mod tailer;
pub mod tshark;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

pub use dovecot::Dovecot;
pub use netns::NetNs;
pub use postfix::Postfix;

/// The test users' password: distinctive, so tests can assert it never appears in any output.
pub const PASSWORD: &str = "Secr3t-Pa55";
/// The mail domain served by the test bed's Postfix and Dovecot.
pub const DOMAIN: &str = "mx.test";
/// Mailbox users of `DOMAIN`, each with `PASSWORD`.
pub const USERS: [&str; 3] = ["alice", "bob", "carol"];

/// Panics with a clear message unless the test runs as root (namespaces, veths and daemons need it).
pub fn require_root(test: &str) {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "{test} needs root (network namespaces, veth pairs, Postfix, Dovecot); run it via `cargo xtask test` as root"
    );
}

/// Output of a finished command.
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `cmd` with stdin from /dev/null and kills it after `timeout`, panicking with `what` and
/// whatever it printed so far.
///
/// Output is read by detached threads so that a daemon which inherits the pipes cannot make this
/// hang: once the command itself exits, its output is taken as it stands after a short grace.
pub fn run(cmd: &mut Command, timeout: Duration, what: &str) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: cannot start {cmd:?}: {e}"));
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());
    let status = wait_child(&mut child, timeout).unwrap_or_else(|| {
        panic!(
            "{what}: {cmd:?} still running after {timeout:?}; killed. stdout: {} stderr: {}",
            take(&out.0),
            take(&err.0)
        )
    });
    // The pipes close when the command exits unless a daemon it started still holds them.
    for (_, done) in [&out, &err] {
        let deadline = Instant::now() + Duration::from_secs(2);
        while !done.lock().map(|d| *d).unwrap_or(true) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
    }
    Output {
        status,
        stdout: take(&out.0),
        stderr: take(&err.0),
    }
}

/// Like [`run`], and panics unless the command exits 0.
pub fn run_ok(cmd: &mut Command, timeout: Duration, what: &str) -> Output {
    let out = run(cmd, timeout, what);
    assert!(
        out.status.success(),
        "{what}: {cmd:?} failed with {}; stdout: {} stderr: {}",
        out.status,
        out.stdout,
        out.stderr
    );
    out
}

type Drained = (Arc<Mutex<Vec<u8>>>, Arc<Mutex<bool>>);

fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> Drained {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let done = Arc::new(Mutex::new(false));
    if let Some(mut pipe) = pipe {
        let (b, d) = (buf.clone(), done.clone());
        thread::spawn(move || {
            let mut chunk = [0u8; 8192];
            while let Ok(n) = pipe.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                if let Ok(mut b) = b.lock() {
                    b.extend_from_slice(&chunk[..n]);
                }
            }
            if let Ok(mut d) = d.lock() {
                *d = true;
            }
        });
    } else if let Ok(mut d) = done.lock() {
        *d = true;
    }
    (buf, done)
}

fn take(buf: &Arc<Mutex<Vec<u8>>>) -> String {
    buf.lock()
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// Waits for `child` up to `timeout`; on timeout kills it (by its pid) and returns None.
pub fn wait_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
}

/// A test bed timeout, stretched inside a kernel-matrix guest (`MT_GUEST_KERNEL`): qemu without
/// KVM runs Postfix's start-up checks, tshark and the daemon's start several times slower.
pub fn patience(d: Duration) -> Duration {
    if std::env::var_os("MT_GUEST_KERNEL").is_some() {
        d * 6
    } else {
        d
    }
}

/// Polls `f` every 50 ms until it returns Some, or panics naming `what` after `timeout`.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// True while a process with this pid exists and is not a zombie.
pub fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name, which may itself contain spaces.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Pids whose parent is `ppid` (one level).
pub fn children_of(ppid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    let (_, rest) = s.rsplit_once(')')?;
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(ppid)
        })
        .collect()
}

/// Sends `sig` to `pid` (a process this harness started).
pub fn signal(pid: u32, sig: i32) {
    let Ok(pid) = i32::try_from(pid) else { return };
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// Waits until none of `pids` is alive, then SIGKILLs the survivors; returns those it had to kill.
pub fn reap(pids: &[u32], timeout: Duration) -> Vec<u32> {
    let deadline = Instant::now() + timeout;
    while pids.iter().any(|&p| pid_alive(p)) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    let survivors: Vec<u32> = pids.iter().copied().filter(|&p| pid_alive(p)).collect();
    for &p in &survivors {
        signal(p, libc::SIGKILL);
    }
    survivors
}

/// A private directory under /tmp, removed on drop. Mode 0755 so that Postfix and Dovecot
/// daemons running as their own users can reach their files inside it.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("mt-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        set_mode(&path, 0o755);
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Creates (mode 0755) and returns a subdirectory.
    pub fn subdir(&self, name: &str) -> PathBuf {
        mkdir(&self.path.join(name))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("MT_KEEP_TMP").is_none() {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

pub fn mkdir(path: &Path) -> PathBuf {
    std::fs::create_dir_all(path)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
    set_mode(path, 0o755);
    path.to_path_buf()
}

pub fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("cannot chmod {}: {e}", path.display()));
}

pub fn write(path: &Path, contents: impl AsRef<[u8]>) {
    std::fs::write(path, contents)
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}

/// The user mail-trace becomes after attaching when no `--user` is given (cmd::privilege).
pub fn dropped_user() -> &'static str {
    let exists = |u: &str| {
        Command::new("id")
            .args(["-u", u])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if exists("mail-trace") {
        "mail-trace"
    } else {
        "nobody"
    }
}

/// Lets the dropped user create its `-w` files in `dir` (they are opened after the drop).
pub fn writable_by_dropped_user(dir: &Path) {
    run_ok(
        Command::new("chown").arg(dropped_user()).arg(dir),
        Duration::from_secs(10),
        "chown",
    );
}

/// `chown owner path` (owner like "postfix:postfix" or "5000:5000").
pub fn chown(path: &Path, owner: &str) {
    run_ok(
        Command::new("chown").args(["-R", owner]).arg(path),
        Duration::from_secs(10),
        "chown",
    );
}

/// A self-signed certificate for `mx.test` and the server addresses: (cert path, key path).
pub fn self_signed_cert(dir: &Path, ips: &[std::net::IpAddr]) -> (PathBuf, PathBuf) {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    let mut san = format!("subjectAltName=DNS:{DOMAIN}");
    for ip in ips {
        san.push_str(&format!(",IP:{ip}"));
    }
    run_ok(
        Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650",
            ])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .args(["-subj", &format!("/CN={DOMAIN}"), "-addext", &san]),
        Duration::from_secs(60),
        "openssl self-signed certificate",
    );
    set_mode(&key, 0o644);
    (cert, key)
}

/// Postfix and Dovecot serving `DOMAIN` inside a fresh namespace. Fields drop in order: the
/// daemons stop before the namespace goes, and the files go last.
pub struct Testbed {
    pub postfix: Postfix,
    pub dovecot: Dovecot,
    pub ns: NetNs,
    pub dir: TempDir,
}

/// Where the test bed's daemons log.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Logs {
    /// Files of their own (`maillog_file`, `log_path`): `Postfix::log`, `Dovecot::log`.
    Files,
    /// syslog(3), i.e. `/dev/log`: the journal when a `journal::Journald` runs.
    Syslog,
}

impl Testbed {
    pub fn start() -> Testbed {
        Testbed::start_logging(Logs::Files)
    }

    pub fn start_logging(logs: Logs) -> Testbed {
        let dir = TempDir::new("tb");
        let ns = NetNs::new();
        let tls = dir.subdir("tls");
        let (cert, key) = self_signed_cert(&tls, &[ns.server_v4().into(), ns.server_v6().into()]);
        let dovecot = Dovecot::start(&ns, &dir.subdir("dovecot"), &cert, &key, logs);
        let postfix = Postfix::start(
            &ns,
            &dir.subdir("postfix"),
            &cert,
            &key,
            &dovecot.auth_socket(),
            logs,
        );
        Testbed {
            postfix,
            dovecot,
            ns,
            dir,
        }
    }
}
