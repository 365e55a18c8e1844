//! Least privilege for the live commands. Loading and attaching the programs needs root
//! (CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON); afterwards the ring buffer and the maps are used
//! through file descriptors already open, which the kernel checks no capability on, and TCX and
//! XDP links detach when their fd closes. Only netlink clsact filters (kernels before 6.6, or the
//! hidden `--tc-netlink`) need CAP_NET_ADMIN again, to be removed at exit: that one is kept then.
//! Before Linux 6.5 a kernel with unprivileged BPF disabled (Debian's default) checks CAP_BPF on
//! every bpf() command, map lookups on open fds included: CAP_BPF is kept there.
//! Then the process becomes an unprivileged user (the first of [`DEFAULT_USERS`] that exists, or
//! `--user NAME`; `--user root` opts out and keeps uid 0 without capabilities), sets
//! no_new_privs, and installs a seccomp allow-list ([`install_seccomp`]).
use std::ffi::CString;

use anyhow::{bail, Context as _};

/// `CAP_NET_ADMIN` (linux/capability.h).
pub const CAP_NET_ADMIN: u32 = 12;
/// `CAP_BPF` (linux/capability.h, Linux 5.8).
pub const CAP_BPF: u32 = 39;
/// Highest capability number this kernel knows, read from procfs; 40 (CAP_CHECKPOINT_RESTORE)
/// when it can't be read.
fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

fn os(what: &str) -> anyhow::Error {
    anyhow::anyhow!("{what}: {}", std::io::Error::last_os_error())
}

/// Sets this thread's effective and permitted sets to `keep` (capability numbers < 64) and the
/// inheritable set to nothing.
fn capset(keep: &[u32]) -> anyhow::Result<()> {
    let mask = keep.iter().fold(0u64, |m, &c| m | (1 << c));
    let hdr = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    // Version 3 splits the 64 bits in two words, low word first.
    let word = |w: u64| CapData {
        effective: w as u32,
        permitted: w as u32,
        inheritable: 0,
    };
    let data = [word(mask), word(mask >> 32)];
    // SAFETY: version 3 takes a header and two data structs, laid out as above.
    if unsafe { libc::syscall(libc::SYS_capset, &hdr, data.as_ptr()) } != 0 {
        return Err(os("capset"));
    }
    Ok(())
}

/// The uid and gid of `name`, from the passwd database.
fn lookup_user(name: &str) -> anyhow::Result<(libc::uid_t, libc::gid_t)> {
    let c = CString::new(name).with_context(|| format!("bad user name {name:?}"))?;
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut out: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; buf outlives the use of pw's strings (none).
    let rc =
        unsafe { libc::getpwnam_r(c.as_ptr(), &mut pw, buf.as_mut_ptr(), buf.len(), &mut out) };
    if rc != 0 || out.is_null() {
        bail!("no such user {name:?}");
    }
    Ok((pw.pw_uid, pw.pw_gid))
}

/// The users the daemon becomes without `--user`, first existing one wins: a dedicated
/// account (which an operator can put in `adm`/`systemd-journal` to read the mail logs), else
/// `nobody`, as tcpdump does with `-Z tcpdump`.
pub const DEFAULT_USERS: [&str; 2] = ["mail-trace", "nobody"];

/// The user to run as after attaching: `--user NAME` (`root` keeps uid 0, still without
/// capabilities), else the first of [`DEFAULT_USERS`] that exists.
pub fn choose_user(explicit: Option<&str>) -> anyhow::Result<String> {
    if let Some(u) = explicit {
        return Ok(u.to_string());
    }
    DEFAULT_USERS
        .iter()
        .find(|u| lookup_user(u).is_ok())
        .map(|u| u.to_string())
        .with_context(|| {
            format!(
                "neither {} exists; name one with --user (--user root to stay root)",
                DEFAULT_USERS.join(" nor ")
            )
        })
}

/// The groups that may read the logs asked for, by name: the systemd journal's readers
/// (`systemd-journal`, and `adm`, which Debian's journald grants read too) for `--journal`, and
/// for each `--maillog` file that others may not read, the group owning it (`adm` for Debian's
/// /var/log/mail.log) when that group may read it. Looked up as root, before the drop, from
/// the files as they were opened (their `fstat`): the same files the followers read, not
/// the paths resolved a second time.
pub fn log_groups(files: &[std::fs::Metadata], journal: bool) -> Vec<(String, libc::gid_t)> {
    use std::os::unix::fs::MetadataExt as _;
    let mut out: Vec<(String, libc::gid_t)> = Vec::new();
    let mut add = |g: Option<(String, libc::gid_t)>| {
        if let Some(g) = g {
            if !out.iter().any(|o| o.1 == g.1) {
                out.push(g);
            }
        }
    };
    if journal {
        add(lookup_group("systemd-journal"));
        add(lookup_group("adm"));
    }
    for m in files {
        if m.mode() & 0o004 == 0 && m.mode() & 0o040 != 0 && m.gid() != 0 {
            add(group_name(m.gid()).map(|n| (n, m.gid())));
        }
    }
    out
}

fn lookup_group(name: &str) -> Option<(String, libc::gid_t)> {
    let c = CString::new(name).ok()?;
    // SAFETY: getgrnam returns a pointer into static storage or null; read at once.
    let gr = unsafe { libc::getgrnam(c.as_ptr()) };
    // SAFETY: non-null: a valid group entry.
    (!gr.is_null()).then(|| (name.to_string(), unsafe { (*gr).gr_gid }))
}

fn group_name(gid: libc::gid_t) -> Option<String> {
    // SAFETY: as in lookup_group; the name is copied out before any other call.
    let gr = unsafe { libc::getgrgid(gid) };
    if gr.is_null() {
        return None;
    }
    // SAFETY: gr_name is a NUL-terminated string of the entry.
    let name = unsafe { std::ffi::CStr::from_ptr((*gr).gr_name) };
    Some(name.to_string_lossy().into_owned())
}

/// Who the process is after [`drop_privileges`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dropped {
    pub user: String,
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
    /// CAP_NET_ADMIN kept to remove netlink filters at exit.
    pub net_admin: bool,
    /// CAP_BPF kept: the kernel (before 6.5) checks it on every bpf() command.
    pub bpf: bool,
    /// Groups added to read the logs asked for (empty for root, which reads them anyway).
    pub log_groups: Vec<String>,
}

impl Dropped {
    /// The start-up line's account of it.
    pub fn describe(&self, seccomp: SeccompMode) -> String {
        let caps = match (self.net_admin, self.bpf) {
            (false, false) => "no capabilities",
            (true, false) => "only CAP_NET_ADMIN (to detach the netlink filters at exit)",
            (false, true) => "only CAP_BPF (this kernel checks it on every bpf() command)",
            (true, true) => {
                "only CAP_NET_ADMIN (to detach the netlink filters at exit) and CAP_BPF (this kernel checks it on every bpf() command)"
            }
        };
        let filter = match seccomp {
            SeccompMode::Enforce => "seccomp allow-list",
            SeccompMode::Log => "seccomp allow-list in log mode (nothing refused)",
            SeccompMode::Off => "NO seccomp filter",
        };
        let opt_out = if self.uid == 0 { ", --user root" } else { "" };
        let groups = if self.log_groups.is_empty() {
            String::new()
        } else {
            format!(", groups {} for the logs", self.log_groups.join(","))
        };
        format!(
            "mail-trace: running as {} (uid {}, gid {}{opt_out}{groups}), {caps}, no_new_privs, {filter}",
            self.user, self.uid, self.gid
        )
    }
}

/// Drops every capability but CAP_NET_ADMIN when `keep_net_admin` (and CAP_BPF where the
/// kernel checks it on every bpf() command), and switches to `user`
/// (its groups, gid and uid; `root` stays uid 0). Call once, after the programs are attached,
/// while the process has one thread (capabilities are per thread).
pub fn drop_privileges(
    keep_net_admin: bool,
    user: &str,
    log_groups: &[(String, libc::gid_t)],
) -> anyhow::Result<Dropped> {
    let mut keep: Vec<u32> = Vec::new();
    if keep_net_admin {
        keep.push(CAP_NET_ADMIN);
    }
    let bpf = crate::capture::kernel::bpf_commands_need_cap();
    if bpf {
        keep.push(CAP_BPF);
    }
    let keep = keep.as_slice();
    // Looked up before anything is given up: the passwd database may need files that root
    // alone can read (NSS modules).
    let (uid, gid) = lookup_user(user)?;
    let name = CString::new(user).with_context(|| format!("bad user name {user:?}"))?;
    // Nothing this process runs may regain what it gives up here.
    // SAFETY: plain prctl calls with integer arguments.
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(os("no_new_privs"));
        }
        for cap in 0..=last_cap() {
            if !keep.contains(&cap)
                && libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0, 0, 0) != 0
            {
                return Err(os("dropping the capability bounding set"));
            }
        }
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        );
    }
    if uid != 0 {
        // SAFETY: plain syscalls; initgroups reads the NUL-terminated name.
        unsafe {
            if !keep.is_empty() && libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0 {
                return Err(os("keepcaps"));
            }
            // The user's supplementary groups: `adm` or `systemd-journal` given to a dedicated
            // account is how it reads rotated mail logs and the journal.
            if libc::initgroups(name.as_ptr(), gid) != 0 {
                return Err(os("initgroups"));
            }
            if !log_groups.is_empty() {
                // The groups that read the logs asked for (--maillog, --journal), added to
                // the user's own: what mail-trace reads it was told to read, nothing more.
                // getgroups(0, NULL) tells how many there are (at most NGROUPS_MAX).
                let n = libc::getgroups(0, std::ptr::null_mut());
                if n < 0 {
                    return Err(os("getgroups"));
                }
                let mut groups = vec![0 as libc::gid_t; n as usize];
                let n = libc::getgroups(n, groups.as_mut_ptr());
                if n < 0 {
                    return Err(os("getgroups"));
                }
                groups.truncate(n as usize);
                for (_, g) in log_groups {
                    if !groups.contains(g) {
                        groups.push(*g);
                    }
                }
                if libc::setgroups(groups.len(), groups.as_ptr()) != 0 {
                    return Err(os("setgroups"));
                }
            }
            if libc::setgid(gid) != 0 {
                return Err(os("setgid"));
            }
            if libc::setuid(uid) != 0 {
                return Err(os("setuid"));
            }
        }
    } else {
        // Root keeps uid 0 but not root's supplementary groups beyond gid 0.
        // SAFETY: a one-element array that outlives the call.
        if unsafe { libc::setgroups(1, &gid) } != 0 {
            return Err(os("setgroups"));
        }
    }
    capset(keep)?;
    Ok(Dropped {
        user: user.to_string(),
        uid,
        gid,
        net_admin: keep_net_admin,
        bpf,
        log_groups: if uid == 0 {
            Vec::new()
        } else {
            log_groups.iter().map(|(n, _)| n.clone()).collect()
        },
    })
}

/// What to do with the seccomp filter (the hidden `--seccomp`, for debugging a refused call).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum SeccompMode {
    /// Calls outside the allow-list fail with EPERM.
    #[default]
    Enforce,
    /// Calls outside the allow-list are allowed and logged by the kernel (audit / dmesg).
    Log,
    /// No filter.
    Off,
}

/// The system calls the live commands make once attached and dropped: reading the ring and the
/// maps (bpf, epoll, mmap'd ring), writing stdout/stderr/pcapng, reading /proc and the mail
/// logs, the tokio runtime and allocator, threads of the log followers, timers and signals,
/// and detaching at exit (closing link fds, perf-event ioctls, netlink for clsact filters).
/// Not in it, among others: execve/execveat (a helper program is started before the filter),
/// ptrace, process_vm_*, mount, setuid and friends, connect, accept, kexec, init_module, keyctl,
/// perf_event_open (no new probe can be attached).
fn allowed_syscalls() -> Vec<libc::c_long> {
    let mut v = vec![
        libc::SYS_read,
        libc::SYS_write,
        libc::SYS_readv,
        libc::SYS_writev,
        libc::SYS_pread64,
        libc::SYS_pwrite64,
        libc::SYS_lseek,
        libc::SYS_close,
        libc::SYS_openat,
        libc::SYS_newfstatat,
        libc::SYS_fstat,
        libc::SYS_statx,
        libc::SYS_getdents64,
        libc::SYS_readlinkat,
        libc::SYS_fcntl,
        libc::SYS_ioctl,
        libc::SYS_dup,
        libc::SYS_dup3,
        libc::SYS_pipe2,
        libc::SYS_ftruncate,
        libc::SYS_fsync,
        libc::SYS_fdatasync,
        libc::SYS_fchmod,
        libc::SYS_futex,
        libc::SYS_epoll_create1,
        libc::SYS_epoll_ctl,
        libc::SYS_epoll_pwait,
        libc::SYS_epoll_pwait2,
        libc::SYS_ppoll,
        libc::SYS_eventfd2,
        libc::SYS_mmap,
        libc::SYS_munmap,
        libc::SYS_mremap,
        libc::SYS_mprotect,
        libc::SYS_madvise,
        libc::SYS_brk,
        libc::SYS_rt_sigaction,
        libc::SYS_rt_sigprocmask,
        libc::SYS_rt_sigreturn,
        libc::SYS_sigaltstack,
        libc::SYS_clock_gettime,
        libc::SYS_clock_nanosleep,
        libc::SYS_nanosleep,
        libc::SYS_gettimeofday,
        libc::SYS_getpid,
        libc::SYS_gettid,
        libc::SYS_getppid,
        libc::SYS_getuid,
        libc::SYS_geteuid,
        libc::SYS_getgid,
        libc::SYS_getegid,
        libc::SYS_sched_yield,
        libc::SYS_sched_getaffinity,
        libc::SYS_getrandom,
        libc::SYS_uname,
        libc::SYS_prlimit64,
        libc::SYS_getcwd,
        libc::SYS_exit,
        libc::SYS_exit_group,
        libc::SYS_restart_syscall,
        // Threads (log followers) and their start-up.
        libc::SYS_clone,
        libc::SYS_clone3,
        libc::SYS_set_robust_list,
        libc::SYS_rseq,
        libc::SYS_prctl,
        // The journalctl child: stopped and reaped at exit.
        libc::SYS_kill,
        libc::SYS_tgkill,
        libc::SYS_wait4,
        libc::SYS_waitid,
        // Maps and the ring through fds already open; TLS tgid map updates.
        libc::SYS_bpf,
        // Detaching netlink clsact filters; if_indextoname's AF_INET socket.
        libc::SYS_socket,
        libc::SYS_bind,
        libc::SYS_getsockname,
        libc::SYS_setsockopt,
        libc::SYS_sendto,
        libc::SYS_recvfrom,
        libc::SYS_sendmsg,
        libc::SYS_recvmsg,
    ];
    #[cfg(target_arch = "x86_64")]
    v.extend([
        libc::SYS_open,
        libc::SYS_stat,
        libc::SYS_lstat,
        libc::SYS_readlink,
        libc::SYS_poll,
        libc::SYS_epoll_wait,
        libc::SYS_arch_prctl,
    ]);
    v
}

/// Installs the allow-list on every thread of the process (TSYNC). The default action is EPERM,
/// not a kill: a refused call then surfaces as a one-line error through the normal exit path,
/// which still detaches (netlink clsact filters survive a killed process and would keep
/// copying into an orphaned ring); the call itself is refused either way.
pub fn install_seccomp(mode: SeccompMode) -> anyhow::Result<()> {
    use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};
    let refuse = match mode {
        SeccompMode::Off => return Ok(()),
        SeccompMode::Enforce => SeccompAction::Errno(libc::EPERM as u32),
        SeccompMode::Log => SeccompAction::Log,
    };
    let arch = TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|e| anyhow::anyhow!("seccomp on {}: {e}", std::env::consts::ARCH))?;
    let rules = allowed_syscalls()
        .into_iter()
        .map(|n| (n, Vec::new()))
        .collect();
    let filter = SeccompFilter::new(rules, refuse, SeccompAction::Allow, arch)
        .map_err(|e| anyhow::anyhow!("seccomp filter: {e}"))?;
    let prog: BpfProgram = filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| anyhow::anyhow!("seccomp filter: {e}"))?;
    seccompiler::apply_filter_all_threads(&prog)
        .map_err(|e| anyhow::anyhow!("installing the seccomp filter: {e}"))
}

/// Netlink filters are what the capture falls back to without TCX; removing them at exit needs
/// CAP_NET_ADMIN (mirrors the choice in capture::ebpf).
pub fn needs_net_admin_at_exit(force_netlink: bool) -> bool {
    use aya::util::KernelVersion;
    force_netlink || !KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_are_looked_up_or_refused_by_name() {
        assert_eq!(lookup_user("root").unwrap(), (0, 0));
        assert_eq!(
            lookup_user("mt-no-such-user").unwrap_err().to_string(),
            "no such user \"mt-no-such-user\""
        );
        assert!(lookup_user("a\0b").is_err());
    }

    #[test]
    fn the_default_user_is_the_dedicated_one_else_nobody() {
        let want = if lookup_user("mail-trace").is_ok() {
            "mail-trace"
        } else {
            "nobody"
        };
        assert_eq!(choose_user(None).unwrap(), want);
        assert_eq!(choose_user(Some("root")).unwrap(), "root");
    }

    #[test]
    fn log_groups_are_those_that_read_the_logs_asked_for() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!("mt-log-groups-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (adm, journal) = (lookup_group("adm"), lookup_group("systemd-journal"));
        let f = dir.join("mail.log");
        std::fs::write(&f, b"").unwrap();
        // Debian's /var/log/mail.log: root:adm 0640.
        if let Some((_, gid)) = &adm {
            std::os::unix::fs::chown(&f, Some(0), Some(*gid)).unwrap();
        }
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o640)).unwrap();
        let names =
            |v: Vec<(String, libc::gid_t)>| -> Vec<String> { v.into_iter().map(|g| g.0).collect() };
        assert_eq!(
            names(log_groups(&[std::fs::metadata(&f).unwrap()], false)),
            adm.iter().map(|g| g.0.clone()).collect::<Vec<_>>()
        );
        // Readable by anyone: no group needed. Not readable by its group: that group is no help.
        for mode in [0o644, 0o600] {
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(mode)).unwrap();
            assert!(
                log_groups(&[std::fs::metadata(&f).unwrap()], false).is_empty(),
                "{mode:o}"
            );
        }
        let want: Vec<String> = journal
            .iter()
            .chain(adm.iter())
            .map(|g| g.0.clone())
            .collect();
        assert_eq!(names(log_groups(&[], true)), want);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_start_up_line_says_who_and_what() {
        let d = Dropped {
            user: "nobody".into(),
            uid: 65534,
            gid: 65534,
            net_admin: false,
            bpf: false,
            log_groups: vec![],
        };
        assert_eq!(
            d.describe(SeccompMode::Enforce),
            "mail-trace: running as nobody (uid 65534, gid 65534), no capabilities, no_new_privs, seccomp allow-list"
        );
        let r = Dropped {
            user: "root".into(),
            uid: 0,
            gid: 0,
            net_admin: true,
            bpf: false,
            log_groups: vec![],
        };
        assert_eq!(
            r.describe(SeccompMode::Off),
            "mail-trace: running as root (uid 0, gid 0, --user root), only CAP_NET_ADMIN (to detach the netlink filters at exit), no_new_privs, NO seccomp filter"
        );
    }

    #[test]
    fn the_allow_list_compiles_and_leaves_out_exec() {
        let v = allowed_syscalls();
        for no in [
            libc::SYS_execve,
            libc::SYS_execveat,
            libc::SYS_ptrace,
            libc::SYS_setuid,
            libc::SYS_connect,
            libc::SYS_mount,
        ] {
            assert!(!v.contains(&no), "{no}");
        }
        let rules = v.into_iter().map(|n| (n, Vec::new())).collect();
        let arch = seccompiler::TargetArch::try_from(std::env::consts::ARCH).unwrap();
        let f = seccompiler::SeccompFilter::new(
            rules,
            seccompiler::SeccompAction::Errno(1),
            seccompiler::SeccompAction::Allow,
            arch,
        )
        .unwrap();
        let prog: seccompiler::BpfProgram = f.try_into().unwrap();
        assert!(prog.len() > 80);
    }

    #[test]
    fn tcx_kernels_keep_nothing_at_exit() {
        assert!(needs_net_admin_at_exit(true));
        // These machines run 6.18 (DEVELOPERS.md).
        assert!(!needs_net_admin_at_exit(false));
    }
}
