//! Least privilege for the live commands. Loading and attaching the programs needs root
//! (CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON); afterwards the ring buffer and the maps are used
//! through file descriptors already open, which the kernel checks no capability on, and TCX and
//! XDP links detach when their fd closes. Only netlink clsact filters (kernels before 6.6, or the
//! hidden `--tc-netlink`) need CAP_NET_ADMIN again, to be removed at exit: that one is kept then.
//! With `--user`, the process also becomes that user (groups, gid, uid), after attaching.
use std::ffi::CString;

use anyhow::{bail, Context as _};

/// `CAP_NET_ADMIN` (linux/capability.h).
pub const CAP_NET_ADMIN: u32 = 12;
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

/// Sets this thread's effective and permitted sets to `keep` (a list of capability numbers < 32)
/// and the inheritable set to nothing.
fn capset(keep: &[u32]) -> anyhow::Result<()> {
    let mask = keep.iter().fold(0u32, |m, &c| m | (1 << c));
    let hdr = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [
        CapData {
            effective: mask,
            permitted: mask,
            inheritable: 0,
        },
        CapData::default(),
    ];
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

/// Drops every capability but CAP_NET_ADMIN when `keep_net_admin`, and with `user` switches to
/// that user first. Call once, after the programs are attached, while the process has one thread
/// (capabilities are per thread).
pub fn drop_privileges(keep_net_admin: bool, user: Option<&str>) -> anyhow::Result<()> {
    let keep: &[u32] = if keep_net_admin {
        &[CAP_NET_ADMIN]
    } else {
        &[]
    };
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
    if let Some(name) = user {
        let (uid, gid) = lookup_user(name)?;
        // SAFETY: plain syscalls; setgroups gets a one-element array that outlives it.
        unsafe {
            if !keep.is_empty() && libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0 {
                return Err(os("keepcaps"));
            }
            if libc::setgroups(1, &gid) != 0 {
                return Err(os("setgroups"));
            }
            if libc::setgid(gid) != 0 {
                return Err(os("setgid"));
            }
            if libc::setuid(uid) != 0 {
                return Err(os("setuid"));
            }
        }
    }
    capset(keep)
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
    fn tcx_kernels_keep_nothing_at_exit() {
        assert!(needs_net_admin_at_exit(true));
        // These machines run 6.18 (DEVELOPERS.md).
        assert!(!needs_net_admin_at_exit(false));
    }
}
