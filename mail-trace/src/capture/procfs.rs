//! Sockets and their processes, from /proc: which TCP connection an fd is,
//! and which process owns a connection. Read at most once per new session or
//! TLS connection, never per packet, and for sessions within a share of the
//! time ([`ScanBudget`]).
//!
//! Each process's own `/proc/PID/net/tcp{,6}` is read, so processes in other
//! network namespaces (containers, the test bed) resolve like local ones.
use std::{
    collections::HashMap,
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::Path,
};

/// The process that owns a socket, as the daemon's logs name it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Process {
    pub pid: u32,
    /// `comm`, prefixed with "postfix/" for Postfix daemons (how they log).
    pub comm: String,
}

impl std::fmt::Display for Process {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}[{}]", self.comm, self.pid)
    }
}

/// The share of wall-clock time /proc scans may take, in percent. One
/// [`owner_of`] reads every process's fds and the TCP tables, whose cost grows
/// with the connections: under a SYN flood a single scan of the flooded
/// namespace takes about a second. Scanning for every new session would stall
/// the reader until the kernel ring overflows; sessions met while the budget is
/// spent go unnamed (or are named by a later try), the capture keeps up.
pub const MAX_SCAN_SHARE_PERCENT: u64 = 10;

/// Spaces /proc scans so that they take at most [`MAX_SCAN_SHARE_PERCENT`] of the time.
#[derive(Debug, Default)]
pub struct ScanBudget {
    /// No scan before this time (ns).
    next_ok: u64,
    /// Scans refused since the start.
    pub refused: u64,
}

impl ScanBudget {
    /// True when a scan may start at `now`; otherwise counts a refusal.
    pub fn allows(&mut self, now: u64) -> bool {
        if now < self.next_ok {
            self.refused += 1;
            return false;
        }
        true
    }

    /// A scan ran from `start` to `end`: the next waits until its cost is diluted.
    pub fn spent(&mut self, start: u64, end: u64) {
        let took = end.saturating_sub(start);
        let pause = took.saturating_mul(100 / MAX_SCAN_SHARE_PERCENT - 1);
        self.next_ok = end.saturating_add(pause);
    }

    /// `scan` if the budget allows it at `now()`, its cost accounted.
    pub fn run<T>(&mut self, now: impl Fn() -> u64, scan: impl FnOnce() -> Option<T>) -> Option<T> {
        let start = now();
        if !self.allows(start) {
            return None;
        }
        let r = scan();
        self.spent(start, now());
        r
    }
}

/// One row of /proc/net/tcp{,6}.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpRow {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// Kernel TCP state number (1 = ESTABLISHED, 10 = LISTEN).
    pub state: u8,
    pub inode: u64,
}

/// Rows of one /proc/net/tcp or tcp6 text; malformed lines are skipped.
pub fn parse_tcp_table(text: &str) -> Vec<TcpRow> {
    text.lines().skip(1).filter_map(parse_row).collect()
}

fn parse_row(line: &str) -> Option<TcpRow> {
    let f: Vec<&str> = line.split_whitespace().collect();
    if f.len() < 10 {
        return None;
    }
    Some(TcpRow {
        local: parse_addr(f[1])?,
        remote: parse_addr(f[2])?,
        state: u8::from_str_radix(f[3], 16).ok()?,
        inode: f[9].parse().ok()?,
    })
}

/// "0100007F:0019" (IPv4) or 32 hex digits + port (IPv6): 32-bit words in host order.
fn parse_addr(s: &str) -> Option<SocketAddr> {
    let (a, p) = s.split_once(':')?;
    let port = u16::from_str_radix(p, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        let w = u32::from_str_radix(a.get(i * 8..i * 8 + 8)?, 16).ok()?;
        Some(w.to_ne_bytes())
    };
    let ip = match a.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            let v6 = Ipv6Addr::from(b);
            // The TC program sees IPv4 on the wire for v4-mapped sockets.
            match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(v6),
            }
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// TCP sockets visible in `pid`'s network namespace.
pub fn tcp_rows(pid: u32) -> Vec<TcpRow> {
    let mut rows = Vec::new();
    for t in ["tcp", "tcp6"] {
        if let Ok(text) = fs::read_to_string(format!("/proc/{pid}/net/{t}")) {
            rows.extend(parse_tcp_table(&text));
        }
    }
    rows
}

/// Socket inodes of `pid`'s open fds, with the fd numbers.
pub fn socket_fds(pid: u32) -> Vec<(i32, u64)> {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let e = e.ok()?;
        let fd: i32 = e.file_name().to_str()?.parse().ok()?;
        let ino = socket_inode(&e.path())?;
        Some((fd, ino))
    })
    .collect()
}

fn socket_inode(link: &Path) -> Option<u64> {
    let t = fs::read_link(link).ok()?;
    let t = t.to_str()?;
    t.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
}

/// The connection (local, remote) of `pid`'s fd `fd`; with no fd, of its only
/// established TCP socket where one end is on a port `wanted` accepts
/// (Dovecot's login processes hold one client connection each).
pub fn connection_of(
    pid: u32,
    fd: Option<i32>,
    wanted: impl Fn(u16) -> bool,
) -> Option<(SocketAddr, SocketAddr)> {
    let inodes: Vec<u64> = match fd {
        Some(fd) => vec![socket_inode(Path::new(&format!("/proc/{pid}/fd/{fd}")))?],
        None => socket_fds(pid).into_iter().map(|(_, i)| i).collect(),
    };
    let rows = tcp_rows(pid);
    let mut found = rows.iter().filter(|r| {
        r.state == 1
            && inodes.contains(&r.inode)
            && (fd.is_some() || wanted(r.local.port()) || wanted(r.remote.port()))
    });
    let first = found.next()?;
    if found.next().is_some() {
        return None;
    }
    Some((first.local, first.remote))
}

/// The process that owns the connection between `client` and `server`: the
/// daemon holding the server end when that end is on this host, else the
/// client. None while the server end is local but not yet accepted (its row
/// has no inode): the client is not the answer then, a later try is.
pub fn owner_of(client: SocketAddr, server: SocketAddr) -> Option<Process> {
    let pids = all_pids();
    // One tcp table read per network namespace.
    let mut by_ns: HashMap<u64, Vec<u32>> = HashMap::new();
    for &pid in &pids {
        if let Some(ns) = netns(pid) {
            by_ns.entry(ns).or_default().push(pid);
        }
    }
    let mut client_side = None;
    for members in by_ns.values() {
        let Some(&first) = members.first() else {
            continue;
        };
        let rows = tcp_rows(first);
        let end = |local: SocketAddr, remote: SocketAddr| {
            rows.iter()
                .find(|r| r.local == local && r.remote == remote)
                .map(|r| r.inode)
        };
        let holder = |inode: u64| {
            members
                .iter()
                .copied()
                .find(|&p| socket_fds(p).iter().any(|(_, i)| *i == inode))
        };
        match end(server, client) {
            Some(0) => return None,
            Some(inode) => return holder(inode).and_then(process),
            None => {}
        }
        if let Some(inode) = end(client, server).filter(|&i| i != 0) {
            client_side = client_side.or_else(|| holder(inode));
        }
    }
    client_side.and_then(process)
}

fn all_pids() -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

fn netns(pid: u32) -> Option<u64> {
    let t = fs::read_link(format!("/proc/{pid}/ns/net")).ok()?;
    let t = t.to_str()?;
    t.strip_prefix("net:[")?.strip_suffix(']')?.parse().ok()
}

/// pid and log name of a process.
pub fn process(pid: u32) -> Option<Process> {
    let comm = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    Some(process_named(pid, comm.trim_end()))
}

/// The log name of `pid`, whose comm the kernel reported. Its executable
/// (/proc/PID/exe) tells Postfix and Dovecot daemons apart; once privileges
/// are dropped that link is unreadable for other users' processes, and the
/// parent's comm (world-readable) tells it instead: Postfix's daemons are
/// children of `master`, Dovecot's of `dovecot`.
pub fn process_named(pid: u32, comm: &str) -> Process {
    let exe = fs::read_link(format!("/proc/{pid}/exe")).ok().or_else(|| {
        let parent = match parent_comm(pid)?.as_str() {
            "master" => "/postfix/",
            "dovecot" => "/dovecot/",
            _ => return None,
        };
        Some(std::path::PathBuf::from(parent))
    });
    Process {
        pid,
        comm: log_name(comm, exe.as_deref()),
    }
}

fn parent_comm(pid: u32) -> Option<String> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let ppid = status
        .lines()
        .find_map(|l| l.strip_prefix("PPid:"))?
        .trim()
        .parse::<u32>()
        .ok()?;
    let comm = fs::read_to_string(format!("/proc/{ppid}/comm")).ok()?;
    Some(comm.trim_end().to_string())
}

/// Dovecot's login processes, named as such even when their executable can no
/// longer be read (they live as long as one connection).
const DOVECOT_LOGIN: [&str; 4] = [
    "imap-login",
    "pop3-login",
    "submission-login",
    "managesieve-login",
];

/// Postfix daemons log as "postfix/smtpd"; Dovecot's processes are
/// "dovecot/imap-login" as `ps` shows them (their process title); everything
/// else by its comm.
pub fn log_name(comm: &str, exe: Option<&Path>) -> String {
    let under = |dir: &str| exe.is_some_and(|e| e.components().any(|c| c.as_os_str() == dir));
    if under("postfix") && comm != "master" {
        format!("postfix/{comm}")
    } else if (under("dovecot") && comm != "dovecot")
        || (exe.is_none() && DOVECOT_LOGIN.contains(&comm))
    {
        format!("dovecot/{comm}")
    } else {
        comm.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:0019 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1234 1 0000000000000000 100 0 0 10 0\n   1: 0163630A:0019 0263630A:B3A2 01 00000000:00000000 00:00000000 00000000   106        0 5678 1 0000000000000000 20 4 30 10 -1\n   2: garbage\n";
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0000000000000000FFFF00000163630A:03E1 0000000000000000FFFF00000263630A:C001 01 00000000:00000000 00:00000000 00000000     0        0 42 1 0\n   1: 000099FD000000000000000001000000:0019 000099FD000000000000000002000000:D000 01 00000000:00000000 00:00000000 00000000     0        0 43 1 0\n";

    #[test]
    fn scan_budget_keeps_scans_to_their_share_of_time() {
        let mut b = ScanBudget::default();
        assert!(b.allows(1_000));
        b.spent(1_000, 1_000_001_000); // a one-second scan
        assert!(!b.allows(1_000_001_000));
        assert!(!b.allows(10_000_000_999));
        assert_eq!(b.refused, 2);
        assert!(b.allows(10_000_001_000), "nine seconds later: 10 %");
        let clock = std::cell::Cell::new(20_000_000_000u64);
        let tick = || {
            clock.set(clock.get() + 1_000);
            clock.get()
        };
        assert_eq!(b.run(tick, || Some(7)), Some(7));
        assert_eq!(b.run(tick, || Some(8)), None, "within 9 µs of a 1 µs scan");
        assert_eq!(b.refused, 3);
    }

    #[test]
    fn parses_ipv4_rows_and_skips_garbage() {
        let rows = parse_tcp_table(TCP);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].local, "127.0.0.1:25".parse().unwrap());
        assert_eq!(rows[0].state, 10);
        assert_eq!(rows[1].local, "10.99.99.1:25".parse().unwrap());
        assert_eq!(rows[1].remote, "10.99.99.2:45986".parse().unwrap());
        assert_eq!(rows[1].state, 1);
        assert_eq!(rows[1].inode, 5678);
    }

    #[test]
    fn parses_ipv6_rows_and_unmaps_v4() {
        let rows = parse_tcp_table(TCP6);
        assert_eq!(rows[0].local, "10.99.99.1:993".parse().unwrap());
        assert_eq!(rows[0].remote, "10.99.99.2:49153".parse().unwrap());
        assert_eq!(rows[1].local, "[fd99::1]:25".parse().unwrap());
        assert_eq!(rows[1].remote, "[fd99::2]:53248".parse().unwrap());
        assert_eq!(rows[1].inode, 43);
    }

    #[test]
    fn postfix_daemons_get_their_log_prefix() {
        let pf = Path::new("/usr/lib/postfix/sbin/smtpd");
        assert_eq!(log_name("smtpd", Some(pf)), "postfix/smtpd");
        assert_eq!(
            log_name("master", Some(Path::new("/usr/lib/postfix/sbin/master"))),
            "master"
        );
        let dc = Path::new("/usr/lib/dovecot/imap-login");
        assert_eq!(log_name("imap-login", Some(dc)), "dovecot/imap-login");
        assert_eq!(log_name("pop3-login", None), "dovecot/pop3-login");
        let master = Path::new("/usr/sbin/dovecot");
        assert_eq!(log_name("dovecot", Some(master)), "dovecot");
        assert_eq!(log_name("smtpd", None), "smtpd");
        assert_eq!(log_name("swaks", None), "swaks");
    }

    #[test]
    fn own_process_resolves() {
        let me = process(std::process::id()).unwrap();
        assert_eq!(me.pid, std::process::id());
        assert!(!me.comm.is_empty());
    }
}
