//! Which files the TLS uprobes go into, and which processes choose them.
//!
//! A uprobe fires in every process that maps the probed file, at an offset read from
//! that file, and copies what the TLS calls carry into our ring. So the choice must not
//! be left to an unprivileged local user: anyone can name a process `smtpd` and map a
//! library of their own, and a path that is checked and then resolved again at attach
//! time can be swapped in between (or be a FIFO that hangs start-up).
//!
//! The rules:
//! - a process chooses libraries only if its executable (the inode behind
//!   `/proc/PID/exe`, not its comm) is a root-owned mail daemon binary;
//! - a library path from its maps is resolved inside that process's root
//!   (`/proc/PID/root`, `RESOLVE_IN_ROOT`), so a container's path means the
//!   container's file and no symlink leads out of it;
//! - the file is opened once (non-blocking: a FIFO cannot hang us), checked on the
//!   open descriptor (a regular file owned by root, not writable by group or others)
//!   and attached through `/proc/self/fd/N`, so the inode attached is the one checked;
//! - anything else is refused with a one-line reason.
use std::{
    collections::BTreeSet,
    ffi::CString,
    fs::{self, File, Metadata},
    io,
    os::{
        fd::{AsRawFd, FromRawFd},
        unix::{ffi::OsStrExt, fs::MetadataExt},
    },
    path::{Path, PathBuf},
};

/// Executable names of the mail daemons whose libssl is probed when no `--libssl`
/// is given (Postfix's smtpd, smtp and tlsproxy; Dovecot's master, login and mail
/// processes).
pub const MAIL_DAEMONS: [&str; 8] = [
    "smtpd",
    "smtp",
    "tlsproxy",
    "dovecot",
    "imap-login",
    "pop3-login",
    "imap",
    "pop3",
];

/// A library opened and checked, to attach through its descriptor.
#[derive(Debug)]
pub struct Pinned {
    /// How the operator is told about it: the path, and whose root it is in.
    pub shown: String,
    file: File,
}

impl Pinned {
    /// The path the probes attach to: the kernel resolves it to the open file's
    /// inode, whatever the original path points to by then.
    pub fn attach_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.file.as_raw_fd()))
    }
}

/// The libraries to probe, and one line per target refused.
#[derive(Debug, Default)]
pub struct Targets {
    pub pinned: Vec<Pinned>,
    /// At most [`MAX_REFUSED`] lines, then one that counts the rest: any local user
    /// can start processes by the thousand to fill the operator's screen.
    pub refused: Vec<String>,
    more: usize,
}

/// Refusal lines kept before they are only counted.
pub const MAX_REFUSED: usize = 8;

impl Targets {
    fn refuse(&mut self, why: String) {
        if self.refused.len() < MAX_REFUSED {
            self.refused.push(why);
            return;
        }
        self.more += 1;
        let line = format!("{} more targets", self.more);
        if self.refused.len() == MAX_REFUSED {
            self.refused.push(line);
        } else {
            *self.refused.last_mut().expect("pushed above") = line;
        }
    }

    /// Adds `p` unless the same inode is pinned already (many processes map one
    /// library, and one file can have several names).
    fn add(&mut self, seen: &mut BTreeSet<(u64, u64)>, p: Pinned) {
        if let Ok(m) = p.file.metadata() {
            if seen.insert((m.dev(), m.ino())) {
                self.pinned.push(p);
            }
        }
    }
}

/// Why a file may not carry probes, if it may not: it must be a regular file owned by
/// root and writable by no one else (a file another user can write can be made to
/// hold any code at the probed offsets).
pub fn refusal(m: &Metadata) -> Option<String> {
    if !m.file_type().is_file() {
        return Some("not a regular file".into());
    }
    if m.uid() != 0 {
        return Some(format!("owned by uid {}, not root", m.uid()));
    }
    if m.mode() & 0o022 != 0 {
        return Some(format!(
            "writable by group or others (mode {:04o})",
            m.mode() & 0o7777
        ));
    }
    None
}

/// Opens `path` for reading as seen from the directory `root`, never leaving it:
/// `..` and absolute symlinks stay inside `root` (`RESOLVE_IN_ROOT`), magic links are
/// refused. Non-blocking, so a FIFO is opened at once (and then refused as not a
/// regular file) instead of waiting for a writer.
fn open_in_root(root: &Path, path: &Path) -> io::Result<File> {
    let dir = File::open(root)?;
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: a plain C struct of integers, for which all zeroes is valid (and what
    // the kernel wants in fields we do not set).
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NONBLOCK | libc::O_NOCTTY) as u64;
    how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: `c` and `how` outlive the call; the kernel reads `size_of::<open_how>()`
    // bytes of `how`. A non-negative result is a new descriptor that we own.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            c.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: see above.
    Ok(unsafe { File::from_raw_fd(fd as i32) })
}

/// Opens and checks `path` inside `root`; `shown` names it in messages.
pub fn pin(root: &Path, path: &Path, shown: String) -> Result<Pinned, String> {
    let file = open_in_root(root, path).map_err(|e| format!("{shown}: {e}"))?;
    let m = file.metadata().map_err(|e| format!("{shown}: {e}"))?;
    if let Some(why) = refusal(&m) {
        return Err(format!("{shown}: {why}"));
    }
    Ok(Pinned { shown, file })
}

/// The libraries named with `--libssl`: the operator's own paths (relative ones from
/// the working directory), checked like any other target.
pub fn named(paths: &[PathBuf]) -> Targets {
    let mut t = Targets::default();
    let mut seen = BTreeSet::new();
    for p in paths {
        let abs = if p.is_absolute() {
            p.clone()
        } else {
            std::env::current_dir().unwrap_or_default().join(p)
        };
        match pin(Path::new("/"), &abs, p.display().to_string()) {
            Ok(pinned) => t.add(&mut seen, pinned),
            Err(why) => t.refuse(why),
        }
    }
    t
}

/// Why `pid` may not choose libraries (its executable is not a root-owned mail daemon
/// binary), or `None` if it may; `Some("")` for processes that are no mail daemon at
/// all, which are passed over in silence.
fn process_refusal(proc: &Path, pid: u32) -> Option<String> {
    let exe = fs::read_link(proc.join(format!("{pid}/exe"))).ok()?;
    let name = exe.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if !MAIL_DAEMONS.contains(&name) {
        return Some(String::new());
    }
    // The metadata of the inode the process runs, whatever its path shows now.
    let m = fs::metadata(proc.join(format!("{pid}/exe"))).ok()?;
    refusal(&m).map(|why| format!("the libraries of pid {pid} ({}): {why}", exe.display()))
}

/// The libssl files mapped by running mail daemons (see the module's rules).
pub fn daemon_libssl() -> Targets {
    daemon_libssl_in(Path::new("/proc"))
}

fn daemon_libssl_in(proc: &Path) -> Targets {
    let mut t = Targets::default();
    let mut seen = BTreeSet::new();
    // One open per (mount namespace, path): a relay runs hundreds of smtpd processes
    // mapping one library.
    let mut tried: BTreeSet<(PathBuf, PathBuf)> = BTreeSet::new();
    let own_ns = fs::read_link(proc.join("self/ns/mnt")).unwrap_or_default();
    let Ok(dir) = fs::read_dir(proc) else {
        return t;
    };
    let mut pids: Vec<u32> = dir
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
        .collect();
    pids.sort_unstable();
    for pid in pids {
        match process_refusal(proc, pid) {
            None => {}
            Some(why) if why.is_empty() => continue,
            Some(why) => {
                t.refuse(why);
                continue;
            }
        }
        let maps = fs::read_to_string(proc.join(format!("{pid}/maps"))).unwrap_or_default();
        let ns = fs::read_link(proc.join(format!("{pid}/ns/mnt"))).unwrap_or_default();
        for lib in libssl_in_maps(&maps) {
            if !tried.insert((ns.clone(), lib.clone())) {
                continue;
            }
            let shown = if ns == own_ns {
                lib.display().to_string()
            } else {
                format!("{} (in the mount namespace of pid {pid})", lib.display())
            };
            match pin(&proc.join(format!("{pid}/root")), &lib, shown) {
                Ok(p) => t.add(&mut seen, p),
                Err(why) => t.refuse(format!("{why} (mapped by pid {pid})")),
            }
        }
    }
    t
}

/// Paths of libssl.so* in a /proc/PID/maps text.
fn libssl_in_maps(maps: &str) -> BTreeSet<PathBuf> {
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .filter(|p| {
            Path::new(p)
                .file_name()
                .and_then(|f| f.to_str())
                .is_some_and(|f| f.starts_with("libssl.so"))
        })
        .map(PathBuf::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{symlink, PermissionsExt};

    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("mt-uprobe-target-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    fn root() -> bool {
        // SAFETY: no arguments, no memory.
        unsafe { libc::geteuid() == 0 }
    }

    #[test]
    fn refusals_are_bounded() {
        let mut t = Targets::default();
        for i in 0..1000 {
            t.refuse(format!("r{i}"));
        }
        assert_eq!(t.refused.len(), MAX_REFUSED + 1);
        assert_eq!(t.refused[MAX_REFUSED - 1], format!("r{}", MAX_REFUSED - 1));
        assert_eq!(
            t.refused[MAX_REFUSED],
            format!("{} more targets", 1000 - MAX_REFUSED)
        );
    }

    #[test]
    fn libssl_paths_from_maps() {
        let maps = "7f0-7f1 r--p 0 08:01 12 /usr/lib/x86_64-linux-gnu/libssl.so.3\n\
                    7f1-7f2 r-xp 0 08:01 12 /usr/lib/x86_64-linux-gnu/libssl.so.3\n\
                    7f2-7f3 r--p 0 08:01 13 /usr/lib/x86_64-linux-gnu/libcrypto.so.3\n\
                    7f3-7f4 rw-p 0 00:00 0 \n";
        let got: Vec<PathBuf> = libssl_in_maps(maps).into_iter().collect();
        assert_eq!(
            got,
            [PathBuf::from("/usr/lib/x86_64-linux-gnu/libssl.so.3")]
        );
    }

    #[test]
    fn only_root_owned_unwritable_regular_files_are_pinned() {
        let d = scratch("vet");
        let lib = d.join("libssl.so.3");
        fs::write(&lib, b"\x7fELF").unwrap();
        fs::set_permissions(&lib, fs::Permissions::from_mode(0o644)).unwrap();
        let got = pin(Path::new("/"), &lib, "lib".into());
        if root() {
            assert!(got.is_ok(), "{got:?}");
        } else {
            assert_eq!(
                got.unwrap_err(),
                format!("lib: owned by uid {}, not root", unsafe { libc::geteuid() })
            );
        }
        fs::set_permissions(&lib, fs::Permissions::from_mode(0o664)).unwrap();
        let err = pin(Path::new("/"), &lib, "lib".into()).unwrap_err();
        if root() {
            assert_eq!(err, "lib: writable by group or others (mode 0664)");
        }
        fs::set_permissions(&lib, fs::Permissions::from_mode(0o646)).unwrap();
        assert!(pin(Path::new("/"), &lib, "lib".into()).is_err());
        // A directory is not a regular file.
        assert_eq!(
            pin(Path::new("/"), &d, "dir".into()).unwrap_err(),
            "dir: not a regular file"
        );
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_fifo_is_refused_at_once() {
        let d = scratch("fifo");
        let fifo = d.join("libssl.so.3");
        let c = CString::new(fifo.as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid C string.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        // Would block for ever without O_NONBLOCK (no writer).
        assert_eq!(
            pin(Path::new("/"), &fifo, "f".into()).unwrap_err(),
            "f: not a regular file"
        );
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn paths_resolve_inside_the_processes_root() {
        // A container root whose library is an absolute symlink: it must lead to the
        // container's file, not to the same path on the host.
        let d = scratch("root");
        fs::create_dir_all(d.join("usr/lib")).unwrap();
        fs::write(d.join("usr/lib/real.so"), b"inside").unwrap();
        symlink("/usr/lib/real.so", d.join("usr/lib/libssl.so.3")).unwrap();
        let p = pin(&d, Path::new("/usr/lib/libssl.so.3"), "l".into());
        if root() {
            let p = p.unwrap();
            assert_eq!(fs::read(p.attach_path()).unwrap(), b"inside");
        }
        // `..` cannot climb out of the root either: /../../etc/hostname is the root's
        // own /etc/hostname, which does not exist here.
        let err = pin(&d, Path::new("/../../etc/hostname"), "h".into()).unwrap_err();
        assert!(err.starts_with("h: No such file"), "{err}");
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn the_pinned_inode_is_attached_whatever_the_path_becomes() {
        if !root() {
            return;
        }
        let d = scratch("swap");
        let lib = d.join("libssl.so.3");
        fs::write(&lib, b"checked").unwrap();
        let p = pin(Path::new("/"), &lib, "l".into()).unwrap();
        // Swapped after the check: the descriptor still names the checked file.
        fs::remove_file(&lib).unwrap();
        fs::write(&lib, b"swapped").unwrap();
        assert_eq!(fs::read(p.attach_path()).unwrap(), b"checked");
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn processes_are_chosen_by_their_executable_not_their_comm() {
        // A fake /proc: pid 10 runs a mail daemon binary, pid 11 a binary named smtpd
        // that is not root's, pid 12 is something else.
        let d = scratch("proc");
        let bin = d.join("bin");
        fs::create_dir_all(&bin).unwrap();
        for (pid, exe) in [(10, "/usr/sbin/postfix-smtpd"), (12, "/bin/sh")] {
            fs::create_dir_all(d.join(format!("{pid}"))).unwrap();
            symlink(exe, d.join(format!("{pid}/exe"))).unwrap();
        }
        let fake = bin.join("smtpd");
        fs::write(&fake, b"").unwrap();
        fs::set_permissions(&fake, fs::Permissions::from_mode(0o777)).unwrap();
        fs::create_dir_all(d.join("11")).unwrap();
        symlink(&fake, d.join("11/exe")).unwrap();
        // Not named like a mail daemon: passed over, whatever its comm says.
        assert_eq!(process_refusal(&d, 10), Some(String::new()));
        assert_eq!(process_refusal(&d, 12), Some(String::new()));
        let why = process_refusal(&d, 11).unwrap();
        if root() {
            assert_eq!(
                why,
                format!(
                    "the libraries of pid 11 ({}): writable by group or others (mode 0777)",
                    fake.display()
                )
            );
        } else {
            assert!(why.contains("not root"), "{why}");
        }
        let t = daemon_libssl_in(&d);
        assert!(t.pinned.is_empty());
        assert_eq!(t.refused, [why]);
        fs::remove_dir_all(&d).unwrap();
    }
}
