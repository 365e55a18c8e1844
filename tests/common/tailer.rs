//! A running `mail-trace tail` as an operator starts it: stdout and stderr go to files so that a
//! test can read what it printed so far, stop it with SIGINT, and check its exit status. Killed on
//! drop if still running, so a failing test leaves no tracer attached.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::{signal, wait_child, wait_for};

/// How long a session record may take to appear once the client has finished (FIN seen, then the
/// next output flush).
const RECORD_TIMEOUT: Duration = Duration::from_secs(15);

pub struct Tail {
    child: Option<Child>,
    out: PathBuf,
    err: PathBuf,
    /// What this instance is for, in failure messages.
    pub what: String,
}

/// What a stopped tail printed.
pub struct Stopped {
    pub stdout: String,
    pub stderr: String,
}

impl Tail {
    /// Starts `mail-trace tail -i IFACE ARGS` and returns once it says it is tracing (the kernel
    /// programs are attached by then) plus a moment for the first ring-buffer poll.
    pub fn start(iface: &str, args: &[&str], dir: &Path, what: &str) -> Tail {
        let out = dir.join(format!("{what}.stdout"));
        let err = dir.join(format!("{what}.stderr"));
        let child = Command::new(env!("CARGO_BIN_EXE_mail-trace"))
            .args(["tail", "-i", iface])
            .args(args)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).expect("create tail stdout file"))
            .stderr(std::fs::File::create(&err).expect("create tail stderr file"))
            .spawn()
            .expect("spawn mail-trace tail");
        let mut t = Tail {
            child: Some(child),
            out,
            err,
            what: what.to_string(),
        };
        wait_for(
            super::patience(Duration::from_secs(30)),
            &format!("mail-trace tail ({what}) to say it is tracing"),
            || {
                if let Some(Ok(Some(status))) = t.child.as_mut().map(Child::try_wait) {
                    panic!(
                        "mail-trace tail ({what}) exited early ({status}): {}",
                        t.stderr()
                    );
                }
                t.stderr().contains("mail-trace: tracing ").then_some(())
            },
        );
        std::thread::sleep(Duration::from_millis(500));
        t
    }

    /// The tail's process id (for /proc/PID/status).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).expect("tail running")
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }

    /// Every JSON line printed so far (a partly written last line is skipped).
    pub fn json_lines(&self) -> Vec<Value> {
        self.stdout()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The session records printed so far.
    pub fn sessions(&self) -> Vec<Value> {
        self.json_lines()
            .into_iter()
            .filter(|l| l["type"] == "session")
            .collect()
    }

    /// Waits for the session record of the connection from `client`.
    pub fn session(&self, client: SocketAddr) -> Value {
        let want = client.to_string();
        wait_for(
            super::patience(RECORD_TIMEOUT),
            &format!("the session record of {want} from tail ({})", self.what),
            || {
                self.sessions()
                    .into_iter()
                    .find(|r| r["client"].as_str() == Some(want.as_str()))
            },
        )
    }

    /// SIGINT; asserts a clean exit (status 0) within 20 s and returns what it printed.
    pub fn stop(mut self) -> Stopped {
        let mut child = self.child.take().expect("tail running");
        signal(child.id(), libc::SIGINT);
        let status = wait_child(&mut child, super::patience(Duration::from_secs(20)))
            .unwrap_or_else(|| {
                panic!(
                    "tail ({}) ignored SIGINT for 20 s: {}",
                    self.what,
                    self.stderr()
                )
            });
        let stopped = Stopped {
            stdout: self.stdout(),
            stderr: self.stderr(),
        };
        assert!(
            status.success(),
            "tail ({}) exited {status} after SIGINT: {}",
            self.what,
            stopped.stderr
        );
        stopped
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

/// The forms a password takes on the wire in PLAIN, LOGIN and IMAP/POP3 LOGIN/PASS: none of them
/// may appear in any output.
pub fn secret_forms(user: &str, secret: &str) -> Vec<String> {
    use base64::Engine as _;
    let b64 = |s: &[u8]| base64::engine::general_purpose::STANDARD.encode(s);
    vec![
        secret.to_string(),
        b64(secret.as_bytes()),
        b64(format!("\0{user}\0{secret}").as_bytes()),
        b64(format!("{user}\0{user}\0{secret}").as_bytes()),
    ]
}

/// Collects failures per scenario so that one run reports every scenario that went wrong, each
/// by name, instead of stopping at the first.
#[derive(Default)]
pub struct Failures(Vec<String>);

impl Failures {
    /// Runs `check`; a panic inside it is recorded under `scenario`.
    pub fn check(&mut self, scenario: &str, check: impl FnOnce()) {
        if let Err(e) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(check)) {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panic".into());
            self.0.push(format!("scenario {scenario}: {msg}"));
        }
    }

    /// Panics listing every failure, if any.
    pub fn assert_none(self) {
        assert!(
            self.0.is_empty(),
            "{} failure(s):\n\n{}",
            self.0.len(),
            self.0.join("\n\n")
        );
    }
}

/// Asserts that `rec` has each field of `want` (an object) with that value; `a.b` names a
/// nested field. Values compare with [`matches`]: fields that other features add to an object
/// (a new key in a transaction) do not break the check, every value named does.
pub fn assert_fields(rec: &Value, want: &Value) {
    let mut wrong = Vec::new();
    for (k, v) in want.as_object().expect("expected fields as an object") {
        let got = k.split('.').fold(rec, |r, part| &r[part]);
        if !matches(got, v) {
            wrong.push(format!("  {k}: got {got}, want {v}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "record fields differ:\n{}\nrecord: {rec}",
        wrong.join("\n")
    );
}

/// `got` has every key of `want` with a matching value (recursively); arrays match element by
/// element with the same length; an empty object matches only an empty object; anything else
/// compares equal.
pub fn matches(got: &Value, want: &Value) -> bool {
    match (got, want) {
        (Value::Object(g), Value::Object(w)) if !w.is_empty() => w
            .iter()
            .all(|(k, v)| g.get(k).is_some_and(|gv| matches(gv, v))),
        (Value::Array(g), Value::Array(w)) => {
            g.len() == w.len() && g.iter().zip(w).all(|(a, b)| matches(a, b))
        }
        _ => got == want,
    }
}
