//! Reading logs: a file followed like `tail -F` (rotation by inode, truncation by size), a file
//! read whole (replay), and the systemd journal through `journalctl -f -o json`.
//!
//! Followers are plain threads (the reads block) sending lines into a bounded tokio channel:
//! when the engine falls behind they wait, and no line is lost.
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::mpsc::Sender;

use super::{parse, Clock, LogLine, MAX_LINE};
use crate::time::{rfc3339_micros, Ts};

/// How often a followed file is looked at when there is nothing new.
const POLL: Duration = Duration::from_millis(100);

/// Where logs are looked for when `--maillog` is given without a path.
pub const DEFAULT_PATHS: [&str; 2] = ["/var/log/mail.log", "/var/log/maillog"];

/// The first default log that exists.
pub fn default_path() -> Option<PathBuf> {
    DEFAULT_PATHS.iter().map(PathBuf::from).find(|p| p.exists())
}

/// Bytes in, complete lines out; a line longer than [`MAX_LINE`] is cut and the rest of it
/// skipped up to its newline.
#[derive(Default)]
pub struct LineSplitter {
    buf: Vec<u8>,
    skipping: bool,
    /// Lines cut at MAX_LINE.
    pub cut: u64,
}

impl LineSplitter {
    pub fn push(&mut self, mut data: &[u8], out: &mut impl FnMut(String)) {
        while !data.is_empty() {
            let nl = data.iter().position(|&b| b == b'\n');
            let (chunk, rest, end) = match nl {
                Some(i) => (&data[..i], &data[i + 1..], true),
                None => (data, &data[data.len()..], false),
            };
            if !self.skipping {
                let room = MAX_LINE - self.buf.len();
                self.buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
                if chunk.len() > room {
                    self.skipping = true;
                    self.cut += 1;
                    out(String::from_utf8_lossy(&self.buf).into_owned());
                    self.buf.clear();
                }
            }
            if end {
                if !self.skipping {
                    out(String::from_utf8_lossy(&self.buf).into_owned());
                }
                self.buf.clear();
                self.skipping = false;
            }
            data = rest;
        }
    }
}

/// Follows `path` from its current end until the receiver goes away. Rotation (the path
/// now names another inode) reopens from the start of the new file after the old one is
/// drained; truncation (size below our offset) starts over at 0.
pub fn follow_file(
    path: PathBuf,
    tx: Sender<String>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    Ok(OpenLog::open(path)?.follow(tx))
}

/// A mail log opened at its end, not yet followed: opened while the daemon is still root (a
/// file only root may read, such as Dovecot's own `log_path`), followed by a thread started
/// after the privilege drop (a thread started before would keep root's capabilities).
pub struct OpenLog {
    path: PathBuf,
    file: File,
    pos: u64,
    ino: u64,
}

impl OpenLog {
    pub fn open(path: PathBuf) -> std::io::Result<OpenLog> {
        let mut file = File::open(&path)?;
        let pos = file.seek(SeekFrom::End(0))?;
        let ino = file.metadata()?.ino();
        Ok(OpenLog {
            path,
            file,
            pos,
            ino,
        })
    }

    /// The opened file's metadata (`fstat`): who may read it, for the privilege drop.
    pub fn metadata(&self) -> std::io::Result<std::fs::Metadata> {
        self.file.metadata()
    }

    /// Reads on from the end in a thread of its own; a rotated file is reopened by name (as
    /// the user the daemon runs as: when it may not, that is said once and the old file is
    /// still read).
    pub fn follow(self, tx: Sender<String>) -> std::thread::JoinHandle<()> {
        let OpenLog {
            path,
            mut file,
            mut pos,
            mut ino,
        } = self;
        std::thread::spawn(move || {
            let mut refused = None;
            let mut split = LineSplitter::default();
            let mut buf = vec![0u8; 64 << 10];
            loop {
                match file.read(&mut buf) {
                    Ok(0) | Err(_) => {
                        let meta = std::fs::metadata(&path);
                        match meta {
                            Ok(m) if m.ino() != ino => match File::open(&path) {
                                Ok(f) => {
                                    file = f;
                                    ino = m.ino();
                                    pos = 0;
                                    refused = None;
                                    continue;
                                }
                                Err(e) => {
                                    if refused != Some(m.ino()) {
                                        crate::note!(
                                        "mail-trace: --maillog {}: rotated, cannot reopen it: {e} (give the user mail-trace runs as the file's group)",
                                        path.display()
                                    );
                                        refused = Some(m.ino());
                                    }
                                }
                            },
                            Ok(m) if m.len() < pos && file.seek(SeekFrom::Start(0)).is_ok() => {
                                pos = 0;
                                continue;
                            }
                            _ => {}
                        }
                        if tx.is_closed() {
                            return;
                        }
                        std::thread::sleep(POLL);
                    }
                    Ok(n) => {
                        pos += n as u64;
                        let mut closed = false;
                        split.push(&buf[..n], &mut |l| closed |= tx.blocking_send(l).is_err());
                        if closed {
                            return;
                        }
                    }
                }
            }
        })
    }
}

/// `journalctl -f -o json -n 0`, killed on drop. Entries of programs other than Postfix and
/// Dovecot are skipped here (journalctl cannot match `postfix/*`), and so are entries of any
/// sender but root and the mail system's users (see [`Trusted`]).
pub struct Journal {
    child: Child,
}

/// journalctl by absolute path: a root daemon does not run whatever `journalctl` comes first
/// in a PATH someone else may have set.
pub const JOURNALCTL: [&str; 2] = ["/usr/bin/journalctl", "/bin/journalctl"];

/// The first of [`JOURNALCTL`] that is a root-owned file nobody else may write.
fn journalctl() -> Option<&'static str> {
    JOURNALCTL.into_iter().find(|p| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.uid() == 0 && m.mode() & 0o022 == 0)
    })
}

/// The senders whose journal entries are believed: `SYSLOG_IDENTIFIER` is whatever the sender
/// says (`logger -t postfix/smtp` by any user), `_UID` is what journald saw on the socket.
/// `_SYSTEMD_UNIT` alone is not enough: Postfix's `local` runs a user's `.forward` pipe
/// command inside Postfix's unit, as that user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Trusted {
    uids: Vec<u32>,
}

/// The mail system's users, where they exist: Postfix's, Dovecot's (its login and mail users)
/// and the usual virtual-mail owners.
pub const MAIL_USERS: [&str; 5] = ["postfix", "dovecot", "dovenull", "vmail", "mail"];

impl Trusted {
    /// Root and the [`MAIL_USERS`] of this host (looked up now, before any privilege drop).
    pub fn mail_system() -> Trusted {
        let mut uids = vec![0];
        uids.extend(MAIL_USERS.iter().filter_map(|u| uid_of(u)));
        Trusted { uids }
    }

    pub fn uids(uids: &[u32]) -> Trusted {
        Trusted {
            uids: uids.to_vec(),
        }
    }

    fn believes(&self, entry: &Value) -> bool {
        entry
            .get("_UID")
            .and_then(Value::as_str)
            .and_then(|u| u.parse::<u32>().ok())
            .is_some_and(|u| self.uids.contains(&u))
    }
}

/// The uid of user `name` from the passwd database.
fn uid_of(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: getpwnam_r writes only into pw, buf and out, all valid for the sizes given.
    unsafe {
        let mut pw: libc::passwd = std::mem::zeroed();
        let mut buf = vec![0 as libc::c_char; 4096];
        let mut out: *mut libc::passwd = std::ptr::null_mut();
        let rc = libc::getpwnam_r(c.as_ptr(), &mut pw, buf.as_mut_ptr(), buf.len(), &mut out);
        (rc == 0 && !out.is_null()).then_some(pw.pw_uid)
    }
}

impl Journal {
    pub fn start(tx: Sender<String>) -> Result<Journal, String> {
        let trusted = Trusted::mail_system();
        let Some(bin) = journalctl() else {
            return Err(format!(
                "--journal: journalctl not found as a root-owned {} (no systemd journal here?); use --maillog PATH",
                JOURNALCTL.join(" or ")
            ));
        };
        let mut child = Command::new(bin)
            .args(["-f", "-o", "json", "-n", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("--journal: cannot run {bin}: {e}"))?;
        if !JOURNAL_DIRS.iter().any(|d| has_journal_files(Path::new(d))) {
            // journalctl -f waits silently when there is no journal at all.
            crate::note!(
                "mail-trace: --journal: no journal files under {} yet (is systemd-journald running?)",
                JOURNAL_DIRS.join(" or ")
            );
        }
        let out = child
            .stdout
            .take()
            .ok_or("--journal: no journalctl output")?;
        if let Some(err) = child.stderr.take() {
            // What journalctl says (no permission, corrupt file) reaches the operator, a line each.
            std::thread::spawn(move || {
                for l in BufReader::new(err).lines().map_while(Result::ok) {
                    crate::note!("mail-trace: --journal: journalctl: {l}");
                }
            });
        }
        std::thread::spawn(move || {
            let mut r = BufReader::new(out);
            let mut line = String::new();
            loop {
                line.clear();
                match r.read_line(&mut line) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                if let Some(l) = journal_line(&line, &trusted) {
                    if tx.blocking_send(l).is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Journal { child })
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where systemd-journald keeps the volatile and the persistent journal.
const JOURNAL_DIRS: [&str; 2] = ["/run/log/journal", "/var/log/journal"];

/// A `*.journal` file in `dir` or one level down (the machine-id directory).
fn has_journal_files(dir: &Path) -> bool {
    let is_journal = |p: &Path| p.extension().is_some_and(|e| e == "journal");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.flatten().any(|e| {
        let p = e.path();
        is_journal(&p)
            || std::fs::read_dir(&p)
                .map(|sub| sub.flatten().any(|f| is_journal(&f.path())))
                .unwrap_or(false)
    })
}

/// A journal JSON entry as a log line with an RFC 3339 timestamp, or None when it is not
/// from Postfix or Dovecot, or not sent by a `trusted` user.
pub fn journal_line(json: &str, trusted: &Trusted) -> Option<String> {
    let v: Value = serde_json::from_str(json).ok()?;
    if !trusted.believes(&v) {
        return None;
    }
    let ident = v.get("SYSLOG_IDENTIFIER")?.as_str()?;
    let ours = ident.starts_with("postfix")
        || super::dovecot::is_syslog_ident(ident)
        || ident.ends_with("-login");
    if !ours {
        return None;
    }
    // MESSAGE is an array of bytes when it is not UTF-8 (an 8-bit address in a Postfix line):
    // kept, with the bad bytes replaced, as a log file reader would show them.
    let msg = match v.get("MESSAGE")? {
        Value::String(s) => std::borrow::Cow::Borrowed(s.as_str()),
        Value::Array(a) => {
            let bytes: Vec<u8> = a
                .iter()
                .map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok()))
                .collect::<Option<_>>()?;
            std::borrow::Cow::Owned(String::from_utf8_lossy(&bytes).into_owned())
        }
        _ => return None,
    };
    // One entry is one line: an embedded newline would forge a second one.
    let msg = msg.replace(['\n', '\r'], " ");
    let micros: u64 = v.get("__REALTIME_TIMESTAMP")?.as_str()?.parse().ok()?;
    let host = v
        .get("_HOSTNAME")
        .and_then(Value::as_str)
        .unwrap_or("localhost");
    // _PID is journald's (from the socket's credentials), SYSLOG_PID the sender's word.
    let pid = v
        .get("_PID")
        .or_else(|| v.get("SYSLOG_PID"))
        .and_then(Value::as_str)
        .map(|p| format!("[{p}]"))
        .unwrap_or_default();
    let ts = rfc3339_micros(micros.saturating_mul(1000)).replace('Z', "+00:00");
    // Every field is one line's part: a newline in any (the fuzzer put one in _HOSTNAME)
    // would end the line there and forge the next.
    let one = |s: &str| s.replace(['\n', '\r'], " ");
    Some(format!(
        "{ts} {} {}{}: {msg}",
        one(host),
        one(ident),
        one(&pid)
    ))
}

/// A log file read whole for replay, as parsed lines in file order.
pub struct LogFile {
    reader: BufReader<File>,
    clock: Clock,
    split: LineSplitter,
    ready: std::collections::VecDeque<String>,
    done: bool,
}

impl LogFile {
    /// BSD timestamps get their year from the file's modification time.
    pub fn open(path: &Path) -> std::io::Result<LogFile> {
        let f = File::open(path)?;
        let mtime = f.metadata()?.mtime().max(0) as u64;
        Ok(LogFile {
            reader: BufReader::new(f),
            clock: Clock::local(mtime * 1_000_000_000),
            split: LineSplitter::default(),
            ready: Default::default(),
            done: false,
        })
    }

    /// The next Postfix or Dovecot line; other lines are skipped.
    pub fn next_line(&mut self) -> std::io::Result<Option<LogLine>> {
        loop {
            while let Some(s) = self.ready.pop_front() {
                if let Some(l) = parse(&s, &self.clock) {
                    return Ok(Some(l));
                }
            }
            if self.done {
                return Ok(None);
            }
            let buf = self.reader.fill_buf()?;
            if buf.is_empty() {
                self.done = true;
                // A last line without a newline still counts.
                let ready = &mut self.ready;
                self.split.push(b"\n", &mut |l| {
                    if !l.is_empty() {
                        ready.push_back(l)
                    }
                });
                continue;
            }
            let n = buf.len();
            let ready = &mut self.ready;
            self.split.push(buf, &mut |l| ready.push_back(l));
            self.reader.consume(n);
        }
    }
}

/// Several log files merged by time (each file is in time order on its own).
pub struct Merged {
    files: Vec<(LogFile, Option<LogLine>)>,
}

impl Merged {
    pub fn open(paths: &[PathBuf]) -> Result<Merged, String> {
        let mut files = Vec::new();
        for p in paths {
            let mut f = LogFile::open(p).map_err(|e| format!("--maillog {}: {e}", p.display()))?;
            let head = f
                .next_line()
                .map_err(|e| format!("--maillog {}: {e}", p.display()))?;
            files.push((f, head));
        }
        Ok(Merged { files })
    }

    /// Timestamp of the next line, if any.
    pub fn peek_ts(&self) -> Option<Ts> {
        self.files
            .iter()
            .filter_map(|(_, h)| h.as_ref().map(|l| l.ts))
            .min()
    }

    pub fn next_line(&mut self) -> Option<LogLine> {
        let i = self
            .files
            .iter()
            .enumerate()
            .filter_map(|(i, (_, h))| h.as_ref().map(|l| (l.ts, i)))
            .min()?
            .1;
        let (f, head) = &mut self.files[i];
        // A read error mid-file ends that file; what was read stays.
        let next = f.next_line().ok().flatten();
        std::mem::replace(head, next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split_all(chunks: &[&[u8]]) -> (Vec<String>, u64) {
        let mut s = LineSplitter::default();
        let mut out = Vec::new();
        for c in chunks {
            s.push(c, &mut |l| out.push(l));
        }
        (out, s.cut)
    }

    #[test]
    fn lines_across_chunks_and_cut_at_the_bound() {
        assert_eq!(
            split_all(&[b"ab", b"c\nde", b"f\n\n"]).0,
            vec!["abc", "def", ""]
        );
        let long = vec![b'x'; MAX_LINE + 10];
        let (out, cut) = split_all(&[&long, b"yy\nok\n"]);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].len(), MAX_LINE);
        assert_eq!(out[1], "ok");
        assert_eq!(cut, 1);
    }

    fn root() -> Trusted {
        Trusted::uids(&[0])
    }

    #[test]
    fn journal_entries_become_lines() {
        let j = r#"{"_UID":"0","__REALTIME_TIMESTAMP":"1795822796118183","_HOSTNAME":"mx","SYSLOG_IDENTIFIER":"postfix/smtpd","SYSLOG_PID":"14344","MESSAGE":"connect from unknown[10.99.152.1]:46226"}"#;
        let line = journal_line(j, &root()).unwrap();
        assert_eq!(line, "2026-11-27T23:39:56.118183+00:00 mx postfix/smtpd[14344]: connect from unknown[10.99.152.1]:46226");
        let l = parse(&line, &Clock::utc(0)).unwrap();
        assert_eq!(l.kind, super::super::Kind::Connect);
        assert_eq!(
            journal_line(
                r#"{"_UID":"0","SYSLOG_IDENTIFIER":"sshd","MESSAGE":"x","__REALTIME_TIMESTAMP":"1"}"#,
                &root()
            ),
            None
        );
        // Not UTF-8: the bad byte replaced, the line kept; a newline cannot start a new line.
        assert_eq!(
            journal_line(
                r#"{"_UID":"0","SYSLOG_IDENTIFIER":"postfix/qmgr","MESSAGE":[65,255,10,66],"__REALTIME_TIMESTAMP":"1000000"}"#, &root()
            )
            .as_deref(),
            Some("1970-01-01T00:00:01.000000+00:00 localhost postfix/qmgr: A\u{fffd} B")
        );
        assert_eq!(
            journal_line(
                r#"{"_UID":"0","SYSLOG_IDENTIFIER":"postfix/qmgr","MESSAGE":[1,300],"__REALTIME_TIMESTAMP":"1"}"#,
                &root()
            ),
            None
        );
        // A named Dovecot instance logs as dovecot-NAME, with the real program in the message.
        let line = journal_line(
            r#"{"_UID":"0","__REALTIME_TIMESTAMP":"1795822796118183","_HOSTNAME":"mx","SYSLOG_IDENTIFIER":"dovecot-mt1","SYSLOG_PID":"90","MESSAGE":"imap-login: Disconnected (auth failed, 1 attempts in 0 secs): user=<alice@mx.test>, method=PLAIN, rip=10.99.1.1, lip=10.99.1.2, session=<x>"}"#, &root(),
        )
        .unwrap();
        let l = parse(&line, &Clock::utc(0)).unwrap();
        assert_eq!(l.kind, super::super::Kind::LoginFailed);
        assert_eq!(journal_line("not json", &root()), None);
    }

    #[test]
    fn journal_entries_are_believed_by_their_sender_uid_not_their_identifier() {
        let postfix = Trusted::uids(&[0, 102]);
        let entry = |uid: &str, unit: &str| {
            format!(
                r#"{{"_UID":"{uid}","_PID":"4242","SYSLOG_PID":"1","_SYSTEMD_UNIT":"{unit}","__REALTIME_TIMESTAMP":"1795822796118183","_HOSTNAME":"mx","SYSLOG_IDENTIFIER":"postfix/smtp","MESSAGE":"A74CF98E292: to=<alice@mx.test>, relay=evil, status=sent (forged)"}}"#
            )
        };
        // The pid is journald's, not the one the sender wrote.
        assert_eq!(
            journal_line(&entry("102", "postfix@-.service"), &postfix).as_deref(),
            Some("2026-11-27T23:39:56.118183+00:00 mx postfix/smtp[4242]: A74CF98E292: to=<alice@mx.test>, relay=evil, status=sent (forged)")
        );
        assert!(journal_line(&entry("0", "session-3.scope"), &postfix).is_some());
        // Any other user, whatever identifier or unit (a .forward pipe runs in Postfix's unit).
        assert_eq!(
            journal_line(&entry("1000", "session-3.scope"), &postfix),
            None
        );
        assert_eq!(
            journal_line(&entry("65534", "postfix@-.service"), &postfix),
            None
        );
        let no_uid = entry("0", "x").replace(r#""_UID":"0","#, "");
        assert_eq!(journal_line(&no_uid, &postfix), None);
        // This host's mail users are found by name.
        let here = Trusted::mail_system();
        assert!(here.uids[0] == 0 && here.uids.len() <= 1 + MAIL_USERS.len());
        assert_eq!(uid_of("root"), Some(0));
        assert_eq!(uid_of("no such user here"), None);
    }

    #[test]
    fn follows_appends_rotation_and_truncation() {
        let dir = std::env::temp_dir().join(format!("mt-follow-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("mail.log");
        std::fs::write(&path, "old line before start\n").unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::channel(16);
        let h = follow_file(path.clone(), tx).unwrap();
        let recv = |rx: &mut tokio::sync::mpsc::Receiver<String>| {
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            loop {
                if let Ok(l) = rx.try_recv() {
                    return l;
                }
                assert!(std::time::Instant::now() < deadline, "no line");
                std::thread::sleep(Duration::from_millis(10));
            }
        };
        let append = |s: &str| {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(&path)
                .unwrap();
            f.write_all(s.as_bytes()).unwrap();
        };
        append("one\n");
        assert_eq!(recv(&mut rx), "one");
        // logrotate: rename, new file.
        std::fs::rename(&path, dir.join("mail.log.1")).unwrap();
        std::fs::write(&path, "two\n").unwrap();
        assert_eq!(recv(&mut rx), "two");
        // copytruncate.
        std::fs::write(&path, "").unwrap();
        std::thread::sleep(Duration::from_millis(300));
        append("3\n");
        assert_eq!(recv(&mut rx), "3");
        drop(rx);
        append("four\n");
        h.join().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
