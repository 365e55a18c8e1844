//! What the live commands do when the world changes under them: an attached interface
//! disappears, the disk fills while writing pcapng, the reader of stdout goes away.
use std::fs::OpenOptions;
use std::io::{ErrorKind, Read};
use std::path::Path;
use std::time::Duration;

/// How often the attached interfaces are looked for.
pub const IFACE_POLL: Duration = Duration::from_secs(1);

/// Resolves, with a one-line reason, once one of `ifaces` (name, ifindex) is gone. TCX links
/// vanish silently with their interface and the ring buffer then just stays empty: without this
/// the command would wait forever. Polled by index, so a rename is not mistaken for a removal.
pub async fn interface_gone(ifaces: Vec<(String, u32)>) -> String {
    let mut every = tokio::time::interval(IFACE_POLL);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        if let Some((name, _)) = ifaces.iter().find(|(_, index)| !index_exists(*index)) {
            return format!("interface {name} disappeared");
        }
    }
}

fn index_exists(index: u32) -> bool {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: buf holds IF_NAMESIZE bytes, as if_indextoname requires.
    !unsafe { libc::if_indextoname(index, buf.as_mut_ptr()) }.is_null()
}

/// True when `e` (or what it wraps) says the reader of a pipe went away: `| head` is a normal
/// way to stop reading, not an error worth a message (Rust ignores SIGPIPE, so writes see EPIPE).
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == ErrorKind::BrokenPipe)
    })
}

/// Length of the complete pcapng blocks at the start of `bytes`: each block's leading and
/// trailing lengths agree and it ends inside the data. Byte order follows each section header.
pub fn whole_blocks_len(bytes: &[u8]) -> usize {
    let mut off = 0usize;
    let mut big = false;
    loop {
        let Some(head) = bytes.get(off..off + 12) else {
            return off;
        };
        if head[..4] == [0x0a, 0x0d, 0x0d, 0x0a] {
            big = head[8..12] == [0x1a, 0x2b, 0x3c, 0x4d];
        }
        let u32_at = |b: &[u8]| {
            let a = [b[0], b[1], b[2], b[3]];
            if big {
                u32::from_be_bytes(a)
            } else {
                u32::from_le_bytes(a)
            }
        };
        let len = u32_at(&head[4..8]) as usize;
        if len < 12 || !len.is_multiple_of(4) {
            return off;
        }
        match bytes.get(off + len - 4..off + len) {
            Some(tail) if u32_at(tail) as usize == len => off += len,
            _ => return off,
        }
    }
}

/// After a failed write (a full disk), cuts the pcapng file back to its last complete block so
/// that what was written stays readable. Returns the length kept.
pub fn keep_whole_blocks(path: &Path) -> std::io::Result<u64> {
    // Never through a symlink planted after the file was created (cmd::outfile).
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes)?;
    let keep = whole_blocks_len(&bytes) as u64;
    if keep < bytes.len() as u64 {
        f.set_len(keep)?;
    }
    Ok(keep)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A little-endian block of `len` bytes of type `ty`.
    fn block(ty: u32, len: u32) -> Vec<u8> {
        let mut b = ty.to_le_bytes().to_vec();
        b.extend(len.to_le_bytes());
        b.resize(len as usize - 4, 0);
        b.extend(len.to_le_bytes());
        b
    }

    fn shb() -> Vec<u8> {
        let mut b = block(0x0a0d0d0a, 28);
        b[8..12].copy_from_slice(&0x1a2b3c4d_u32.to_le_bytes());
        b
    }

    #[test]
    fn a_cut_block_is_left_out() {
        let mut file = shb();
        file.extend(block(1, 20));
        file.extend(block(6, 64));
        assert_eq!(whole_blocks_len(&file), 112);
        for cut in [1, 11, 12, 63] {
            assert_eq!(whole_blocks_len(&file[..112 - cut]), 48, "cut {cut}");
        }
        assert_eq!(whole_blocks_len(&file[..27]), 0);
        assert_eq!(whole_blocks_len(&[]), 0);
    }

    #[test]
    fn lengths_that_disagree_or_are_impossible_stop_the_walk() {
        let mut file = shb();
        let mut bad = block(6, 32);
        bad[28..32].copy_from_slice(&36u32.to_le_bytes());
        file.extend(bad);
        assert_eq!(whole_blocks_len(&file), 28);
        let mut file = shb();
        file.extend(block(6, 32));
        file[32..36].copy_from_slice(&13u32.to_le_bytes());
        assert_eq!(whole_blocks_len(&file), 28);
        let mut file = shb();
        file.extend([6, 0, 0, 0, 8, 0, 0, 0, 8, 0, 0, 0]);
        assert_eq!(whole_blocks_len(&file), 28);
    }

    #[test]
    fn big_endian_sections_are_walked_in_their_order() {
        let mut file = Vec::new();
        for w in [
            0x0a0d0d0a_u32,
            28,
            0x1a2b3c4d,
            0x0001_0000,
            u32::MAX,
            u32::MAX,
            28,
        ] {
            file.extend(w.to_be_bytes());
        }
        file.extend([0, 0, 0, 6, 0, 0, 0, 16, 0, 0, 0, 0, 0, 0, 0, 16]);
        assert_eq!(whole_blocks_len(&file), 44);
        assert_eq!(whole_blocks_len(&file[..40]), 28);
    }

    #[test]
    fn the_file_is_cut_back_in_place() {
        let path = std::env::temp_dir().join(format!("mt-guard-{}.pcapng", std::process::id()));
        let mut file = shb();
        file.extend(block(6, 40));
        std::fs::write(&path, &file[..60]).unwrap();
        assert_eq!(keep_whole_blocks(&path).unwrap(), 28);
        assert_eq!(std::fs::read(&path).unwrap(), file[..28]);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn broken_pipe_is_found_through_context() {
        let e = anyhow::Error::from(std::io::Error::from(ErrorKind::BrokenPipe)).context("stdout");
        assert!(is_broken_pipe(&e));
        let e = anyhow::Error::from(std::io::Error::from(ErrorKind::StorageFull)).context("x");
        assert!(!is_broken_pipe(&e));
    }

    #[tokio::test]
    async fn a_missing_index_is_reported_by_name() {
        assert!(index_exists(1), "loopback is index 1");
        let msg = interface_gone(vec![("lo".into(), 1), ("mtgone0".into(), u32::MAX)]).await;
        assert_eq!(msg, "interface mtgone0 disappeared");
    }
}
