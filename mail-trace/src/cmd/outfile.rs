//! Files mail-trace creates (`-w`): opened after the privilege drop, so they are the dropped
//! user's to create, and never a way for a local user to make mail-trace write or truncate
//! a file they could not (tcpdump `-Z` does the same). The file can hold cleartext AUTH lines
//! and bodies: it is created 0600.
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;

/// Opens `path` for writing from its start:
/// - `O_NOFOLLOW`: a symlink planted at the path is refused, never followed;
/// - `O_NONBLOCK` while opening: a FIFO without a reader fails at once instead of hanging;
/// - no `O_TRUNC`: the file is truncated only after checking it is a regular file owned by the
///   user mail-trace runs as (who could have written it anyway), else refused untouched;
/// - mode 0600 when created, and set to 0600 when it existed.
pub fn create_private(path: &Path) -> io::Result<File> {
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            // What O_NOFOLLOW answers for a symlink.
            Some(libc::ELOOP) => refused("is a symbolic link"),
            Some(libc::ENXIO) => refused("is a FIFO or socket, not a regular file"),
            // The usual surprise after the drop (tcpdump -Z has it too): say what to do.
            Some(libc::EACCES) => {
                // SAFETY: no preconditions.
                let uid = unsafe { libc::geteuid() };
                refused(&format!(
                    "permission denied for uid {uid}, which mail-trace runs as once attached: \
                     write into a directory that user may write, or use --user"
                ))
            }
            _ => e,
        })?;
    let meta = f.metadata()?;
    if !meta.file_type().is_file() {
        return Err(refused("is not a regular file"));
    }
    // SAFETY: no preconditions.
    let euid = unsafe { libc::geteuid() };
    if meta.uid() != euid {
        return Err(refused(&format!(
            "belongs to uid {}, not to uid {euid} that mail-trace runs as: not overwritten",
            meta.uid()
        )));
    }
    if meta.nlink() > 1 {
        return Err(refused("has other hard links: not overwritten"));
    }
    // Back to blocking writes (a regular file never blocks, but say what is meant).
    // SAFETY: fcntl on an fd we own.
    unsafe {
        let fd = std::os::fd::AsRawFd::as_raw_fd(&f);
        let fl = libc::fcntl(fd, libc::F_GETFL);
        if fl >= 0 {
            libc::fcntl(fd, libc::F_SETFL, fl & !libc::O_NONBLOCK);
        }
    }
    if meta.mode() & 0o7777 != 0o600 {
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    f.set_len(0)?;
    Ok(f)
}

fn refused(why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, why.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    fn dir(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("mt-outfile-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn new_files_are_0600_and_existing_own_files_are_truncated_and_tightened() {
        let d = dir("own");
        let p = d.join("a.pcapng");
        let mut f = create_private(&p).unwrap();
        f.write_all(b"x").unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o7777, 0o600);
        std::fs::write(&p, b"older content").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        drop(create_private(&p).unwrap());
        let m = std::fs::metadata(&p).unwrap();
        assert_eq!((m.len(), m.mode() & 0o7777), (0, 0o600));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn symlinks_fifos_directories_and_hard_links_are_refused_untouched() {
        let d = dir("bad");
        let target = d.join("target");
        std::fs::write(&target, b"keep me").unwrap();
        let link = d.join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert_eq!(
            create_private(&link).unwrap_err().to_string(),
            "is a symbolic link"
        );
        let fifo = d.join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert_eq!(
            create_private(&fifo).unwrap_err().to_string(),
            "is a FIFO or socket, not a regular file"
        );
        assert!(create_private(&d).is_err());
        let hard = d.join("hard");
        std::fs::hard_link(&target, &hard).unwrap();
        assert_eq!(
            create_private(&hard).unwrap_err().to_string(),
            "has other hard links: not overwritten"
        );
        assert_eq!(std::fs::read(&target).unwrap(), b"keep me");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
