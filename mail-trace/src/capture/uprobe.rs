//! `--tls-plaintext`: uprobes on the TLS library the mail daemons use, and the
//! plaintext records they put into the packet ring.
//!
//! Which library: the `libssl.so*` mapped by running mail daemons (smtpd, smtp,
//! tlsproxy, dovecot, imap-login, pop3-login, imap or pop3 executables owned by
//! root, from /proc/PID/maps), or `--libssl PATH`; each checked and pinned as
//! [`super::uprobe_target`] says. The probes fire only in processes that map that
//! file; `--pid` narrows them to one process in the kernel, `--comm` filters in
//! userspace.
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    num::NonZeroU32,
    path::PathBuf,
};

use aya::programs::{uprobe::UProbeScope, RawTracePoint, UProbe};
use mail_trace_common::tls::{
    names, SockTuple, TlsDataHeader, CONN_IN_CALL, CONN_THREAD, FLAGS_OFFSET, FLAG_TLS_DATA,
    FLAG_TLS_READ, FLAG_TLS_WRITE,
};

use super::{
    ebpf::{chain, os_error, CaptureError, EbpfCapture},
    uprobe_target::{self, Targets},
};
use crate::time::Ts;

/// What [`EbpfCapture::attach_tls`] probed, and what it refused (one line each).
#[derive(Debug, Default)]
pub struct Probed {
    pub libs: Vec<String>,
    pub refused: Vec<String>,
}

/// The TLS library calls probed: (symbol, return program).
const CALLS: [(&str, &str); 4] = [
    ("SSL_read", names::READ_RET),
    ("SSL_write", names::WRITE_RET),
    ("SSL_read_ex", names::READ_EX_RET),
    ("SSL_write_ex", names::WRITE_EX_RET),
];

/// What `--tls-plaintext` probes.
#[derive(Clone, Debug, Default)]
pub struct TlsConfig {
    /// Libraries to probe; empty = the ones the mail daemons map.
    pub libssl: Vec<PathBuf>,
    /// Only this process (in the kernel: the probes fire for no other).
    pub pid: Option<u32>,
    /// Only these comms (userspace filter); empty = all.
    pub comms: Vec<String>,
}

/// Tracepoints whose first argument is the `struct sock *` a thread has just
/// sent or received on (Linux 6.4+), and their programs.
const SOCK_TPS: [(&str, &str); 2] = [
    ("sock_send_length", names::SOCK_SEND),
    ("sock_recv_length", names::SOCK_RECV),
];

/// How the kernel found a chunk's TCP connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnHow {
    /// The TLS call did its own socket I/O on it (SSL_set_fd designs).
    InCall,
    /// The thread's last mail-port socket before the call (memory BIOs).
    Thread,
}

/// A chunk's TCP connection as its process sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conn {
    pub local: SocketAddr,
    pub peer: SocketAddr,
    pub how: ConnHow,
}

/// The connection in a record; v4-mapped IPv6 addresses become IPv4, as the
/// TC program sees them on the wire.
fn conn(t: &SockTuple) -> Option<Conn> {
    let how = match t.how {
        CONN_IN_CALL => ConnHow::InCall,
        CONN_THREAD => ConnHow::Thread,
        _ => return None,
    };
    let ip = |b: &[u8; 16]| -> Option<IpAddr> {
        match t.family {
            2 => Some(IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))),
            10 => {
                let v6 = Ipv6Addr::from(*b);
                Some(match v6.to_ipv4_mapped() {
                    Some(v4) => IpAddr::V4(v4),
                    None => IpAddr::V6(v6),
                })
            }
            _ => None,
        }
    };
    Some(Conn {
        local: SocketAddr::new(ip(&t.local)?, t.local_port),
        peer: SocketAddr::new(ip(&t.remote)?, t.remote_port),
        how,
    })
}

/// One chunk of plaintext a process read from or wrote to its TLS peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plaintext {
    pub ts: Ts,
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    /// The `SSL *`: identifies the TLS connection within `pid`.
    pub ssl: u64,
    /// The fd from `SSL_set_fd`, when seen.
    pub fd: Option<i32>,
    /// True: read from the peer (SSL_read); false: written to it.
    pub from_peer: bool,
    /// The TCP connection, when the kernel found it.
    pub conn: Option<Conn>,
    pub data: Vec<u8>,
}

/// Whether a ring record is a plaintext record (see `mail_trace_common::tls`).
pub fn is_plaintext(rec: &[u8]) -> bool {
    rec.get(FLAGS_OFFSET..FLAGS_OFFSET + 4)
        .and_then(|b| b.try_into().ok())
        .is_some_and(|b| u32::from_ne_bytes(b) & FLAG_TLS_DATA != 0)
}

/// A plaintext record, checked; None when it is malformed.
pub fn decode(rec: &[u8], epoch_offset: i128) -> Option<Plaintext> {
    const HDR: usize = std::mem::size_of::<TlsDataHeader>();
    let head = rec.get(..HDR)?;
    // SAFETY: HDR bytes, TlsDataHeader is plain-old-data; read_unaligned needs no alignment.
    let h: TlsDataHeader = unsafe { std::ptr::read_unaligned(head.as_ptr().cast()) };
    let data = rec.get(HDR..HDR.checked_add(h.chunk_len as usize)?)?;
    let from_peer = match h.flags & (FLAG_TLS_READ | FLAG_TLS_WRITE) {
        FLAG_TLS_READ => true,
        FLAG_TLS_WRITE => false,
        _ => return None,
    };
    let end = h.comm.iter().position(|&b| b == 0).unwrap_or(h.comm.len());
    Some(Plaintext {
        ts: u64::try_from(epoch_offset + i128::from(h.ts_ns)).unwrap_or(0),
        pid: h.pid,
        tid: h.tid,
        comm: String::from_utf8_lossy(&h.comm[..end]).into_owned(),
        ssl: h.ssl,
        fd: (h.fd >= 0).then_some(h.fd),
        from_peer,
        conn: conn(&h.conn),
        data: data.to_vec(),
    })
}

impl EbpfCapture {
    /// Loads and attaches the socket probes (raw tracepoints after every socket
    /// send and receive): they note the process using each mail-port socket,
    /// and the socket of each TLS call once the uprobes are attached too.
    pub fn attach_sock_probes(&mut self) -> Result<SockOwners, CaptureError> {
        let offsets = super::btf::kernel_sock_offsets().map_err(CaptureError::Load)?;
        let ebpf = self.ebpf_mut();
        {
            let map = ebpf
                .map_mut(names::SOCK_OFFSETS)
                .ok_or_else(|| CaptureError::Load("no SOCK_OFFSETS map".into()))?;
            let mut arr: aya::maps::Array<_, mail_trace_common::tls::SockOffsets> =
                aya::maps::Array::try_from(map).map_err(|e| CaptureError::Load(chain(&e)))?;
            arr.set(0, offsets, 0)
                .map_err(|e| CaptureError::Load(chain(&e)))?;
        }
        for (tp, prog) in SOCK_TPS {
            let p: &mut RawTracePoint = ebpf
                .program_mut(prog)
                .ok_or_else(|| CaptureError::Load(format!("no program {prog}")))?
                .try_into()
                .map_err(load_err)?;
            p.load().map_err(load_err)?;
            p.attach(tp).map_err(|e| CaptureError::Attach {
                iface: format!("tracepoint {tp} (Linux 6.4 or later)"),
                reason: chain(&e),
            })?;
        }
        let map = ebpf
            .take_map(names::SOCK_OWNER)
            .ok_or_else(|| CaptureError::Load("no SOCK_OWNER map".into()))?;
        let map = aya::maps::HashMap::try_from(map).map_err(|e| CaptureError::Load(chain(&e)))?;
        Ok(SockOwners { map })
    }

    /// Loads and attaches the TLS uprobes; returns the libraries probed and the
    /// targets refused (one line each). The socket probes
    /// ([`Self::attach_sock_probes`]) must be attached first: they find each
    /// chunk's connection.
    pub fn attach_tls(&mut self, cfg: &TlsConfig) -> Result<Probed, CaptureError> {
        let Targets {
            pinned, refused, ..
        } = if cfg.libssl.is_empty() {
            uprobe_target::daemon_libssl()
        } else {
            uprobe_target::named(&cfg.libssl)
        };
        if pinned.is_empty() {
            let why = if refused.is_empty() {
                String::new()
            } else {
                format!(" (refused: {})", refused.join("; "))
            };
            return Err(CaptureError::Load(if cfg.libssl.is_empty() {
                format!("--tls-plaintext: no running mail daemon maps a libssl.so that may be probed; name it with --libssl PATH{why}")
            } else {
                format!("--tls-plaintext: no --libssl file may be probed{why}")
            }));
        }
        let scope = match cfg.pid.and_then(NonZeroU32::new) {
            Some(p) => UProbeScope::OneProcess(p),
            None => UProbeScope::AllProcesses,
        };
        let ebpf = self.ebpf_mut();
        let mut progs = vec![names::ENTER, names::SET_FD, names::FREE];
        progs.extend(CALLS.iter().map(|(_, p)| *p));
        for name in &progs {
            let p: &mut UProbe = ebpf
                .program_mut(name)
                .ok_or_else(|| CaptureError::Load(format!("no program {name}")))?
                .try_into()
                .map_err(load_err)?;
            p.load().map_err(load_err)?;
        }
        for lib in &pinned {
            let path = lib.attach_path();
            let fail = |e: aya::programs::ProgramError| CaptureError::Attach {
                iface: lib.shown.clone(),
                reason: chain(&e),
            };
            let mut attach = |prog: &str, sym: &str| -> Result<(), CaptureError> {
                let p: &mut UProbe = ebpf
                    .program_mut(prog)
                    .ok_or_else(|| CaptureError::Load(format!("no program {prog}")))?
                    .try_into()
                    .map_err(load_err)?;
                p.attach(sym, &path, scope).map(drop).map_err(fail)
            };
            attach(names::SET_FD, "SSL_set_fd")?;
            attach(names::FREE, "SSL_free")?;
            for (sym, ret) in CALLS {
                attach(names::ENTER, sym)?;
                attach(ret, sym)?;
            }
        }
        // The probes hold the inodes now; the descriptors can go.
        Ok(Probed {
            libs: pinned.into_iter().map(|p| p.shown).collect(),
            refused,
        })
    }

    /// TLS probe counters summed over CPUs.
    pub fn tls_counters(&self) -> Option<mail_trace_common::tls::TlsCounters> {
        let map = self.ebpf().map(names::TLS_COUNTERS)?;
        let arr: aya::maps::PerCpuArray<_, mail_trace_common::tls::TlsCounters> =
            aya::maps::PerCpuArray::try_from(map).ok()?;
        let mut sum = mail_trace_common::tls::TlsCounters::default();
        for c in arr.get(&0, 0).ok()?.iter() {
            sum.add(c);
        }
        Some(sum)
    }
}

/// A program load error; EPERM as root is the verifier refusing a program, so
/// its message is kept.
fn load_err(e: aya::programs::ProgramError) -> CaptureError {
    match os_error(&e) {
        Some(libc::EPERM) if !nix_is_root() => CaptureError::Permission,
        _ => CaptureError::Load(chain(&e)),
    }
}

fn nix_is_root() -> bool {
    // SAFETY: no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The process that last sent or received on each mail-port socket, noted by
/// the kernel's socket probes: it outlives the process, so a daemon forked for
/// one connection and gone before its session was read is still named, and
/// reading it needs no privilege (the map's fd is open).
pub struct SockOwners {
    map: aya::maps::HashMap<aya::maps::MapData, SockTuple, mail_trace_common::tls::SockOwner>,
}

impl std::fmt::Debug for SockOwners {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SockOwners")
    }
}

impl SockOwners {
    /// (pid, comm) of the process holding the `local` end of the connection to `remote`.
    pub fn owner(&self, local: SocketAddr, remote: SocketAddr) -> Option<(u32, String)> {
        sock_keys(local, remote).into_iter().find_map(|k| {
            let o = self.map.get(&k, 0).ok()?;
            let end = o.comm.iter().position(|&b| b == 0).unwrap_or(o.comm.len());
            Some((o.pid, String::from_utf8_lossy(&o.comm[..end]).into_owned()))
        })
    }
}

/// The keys a socket with these ends can have: an IPv4 connection is also an
/// IPv6 socket's with v4-mapped addresses (dual-stack listeners).
fn sock_keys(local: SocketAddr, remote: SocketAddr) -> Vec<SockTuple> {
    let key = |family: u16, l: [u8; 16], r: [u8; 16]| SockTuple {
        family,
        local_port: local.port(),
        remote_port: remote.port(),
        how: 0,
        local: l,
        remote: r,
    };
    let v4 = |a: Ipv4Addr| {
        let mut b = [0u8; 16];
        b[..4].copy_from_slice(&a.octets());
        b
    };
    match (local.ip(), remote.ip()) {
        (IpAddr::V4(l), IpAddr::V4(r)) => vec![
            key(2, v4(l), v4(r)),
            key(10, l.to_ipv6_mapped().octets(), r.to_ipv6_mapped().octets()),
        ],
        (IpAddr::V6(l), IpAddr::V6(r)) => vec![key(10, l.octets(), r.octets())],
        _ => Vec::new(),
    }
}

/// Connections cached at most; the cache starts over when full.
const MAX_CONNS: usize = 4096;
/// /proc lookups per unresolved (pid, SSL *, fd) before its chunks are dropped.
const MAX_TRIES: u8 = 3;

/// Ties plaintext chunks to TCP connections through /proc: the fd from
/// SSL_set_fd when the kernel saw it (Postfix), else the process's only
/// established mail-port socket (Dovecot's login processes, one client each).
#[derive(Debug, Default)]
pub struct ConnResolver {
    known: std::collections::HashMap<(u32, u64, Option<i32>), Resolved>,
    comms: Vec<String>,
    ports: Vec<u16>,
    /// Chunks dropped because their connection could not be found.
    pub unresolved: u64,
}

#[derive(Clone, Copy, Debug)]
enum Resolved {
    Conn(std::net::SocketAddr, std::net::SocketAddr),
    Failed(u8),
}

impl ConnResolver {
    /// `comms` as in [`TlsConfig::comms`]; `ports` the mail ports (server side).
    pub fn new(comms: Vec<String>, ports: Vec<u16>) -> Self {
        ConnResolver {
            comms,
            ports,
            ..Default::default()
        }
    }

    /// Whether `--comm` lets the chunk's process through.
    pub fn wanted(&self, p: &Plaintext) -> bool {
        self.comms.is_empty() || self.comms.contains(&p.comm)
    }

    /// (local, peer) of the chunk's connection from /proc; None when unknown.
    pub fn resolve(
        &mut self,
        p: &Plaintext,
    ) -> Option<(std::net::SocketAddr, std::net::SocketAddr)> {
        let key = (p.pid, p.ssl, p.fd);
        let tries = match self.known.get(&key) {
            Some(Resolved::Conn(l, r)) => return Some((*l, *r)),
            Some(Resolved::Failed(n)) if *n >= MAX_TRIES => {
                self.unresolved += 1;
                return None;
            }
            Some(Resolved::Failed(n)) => *n,
            None => 0,
        };
        if self.known.len() >= MAX_CONNS {
            self.known.clear();
        }
        let ports = &self.ports;
        match super::procfs::connection_of(p.pid, p.fd, |port| ports.contains(&port)) {
            Some((l, r)) => {
                self.known.insert(key, Resolved::Conn(l, r));
                Some((l, r))
            }
            None => {
                self.known.insert(key, Resolved::Failed(tries + 1));
                self.unresolved += 1;
                None
            }
        }
    }

    /// The session for a cached connection is gone (the `SSL *` was reused for
    /// a new connection): look it up again next time.
    pub fn forget(&mut self, p: &Plaintext) {
        self.known.remove(&(p.pid, p.ssl, p.fd));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(flags: u32, comm: &[u8], data: &[u8]) -> Vec<u8> {
        record_with(flags, comm, data, SockTuple::default())
    }

    fn record_with(flags: u32, comm: &[u8], data: &[u8], conn: SockTuple) -> Vec<u8> {
        let mut c = [0u8; 16];
        c[..comm.len()].copy_from_slice(comm);
        let h = TlsDataHeader {
            ts_ns: 5,
            ssl: 0xdead_beef,
            pid: 42,
            flags,
            tid: 43,
            fd: 7,
            call_len: data.len() as u32,
            offset: 0,
            chunk_len: data.len() as u32,
            reserved: 0,
            comm: c,
            conn,
        };
        let mut v = vec![0u8; std::mem::size_of::<TlsDataHeader>()];
        // SAFETY: room for the header, unaligned write of a POD.
        unsafe { std::ptr::write_unaligned(v.as_mut_ptr().cast(), h) };
        v.extend_from_slice(data);
        v.extend_from_slice(&[0xaa; 8]); // record padding beyond chunk_len
        v
    }

    #[test]
    fn decodes_a_write_record() {
        let r = record(FLAG_TLS_DATA | FLAG_TLS_WRITE, b"smtpd", b"250 ok\r\n");
        assert!(is_plaintext(&r));
        let p = decode(&r, 1_000).unwrap();
        assert_eq!(
            p,
            Plaintext {
                ts: 1_005,
                pid: 42,
                tid: 43,
                comm: "smtpd".into(),
                ssl: 0xdead_beef,
                fd: Some(7),
                from_peer: false,
                conn: None,
                data: b"250 ok\r\n".to_vec(),
            }
        );
    }

    #[test]
    fn decodes_the_kernel_found_connection() {
        let mut local = [0u8; 16];
        local[..4].copy_from_slice(&[10, 99, 0, 2]);
        let mut remote = [0u8; 16];
        remote[..4].copy_from_slice(&[10, 99, 0, 1]);
        let v4 = SockTuple {
            family: 2,
            local_port: 993,
            remote_port: 40000,
            how: CONN_THREAD,
            local,
            remote,
        };
        let p = decode(
            &record_with(FLAG_TLS_DATA | FLAG_TLS_READ, b"imap-login", b"a\r\n", v4),
            0,
        )
        .unwrap();
        assert_eq!(
            p.conn,
            Some(Conn {
                local: "10.99.0.2:993".parse().unwrap(),
                peer: "10.99.0.1:40000".parse().unwrap(),
                how: ConnHow::Thread,
            })
        );
        // A dual-stack socket with a v4 client: the wire (and the session) is IPv4.
        let mapped = |a: [u8; 4]| {
            let mut b = [0u8; 16];
            b[10] = 0xff;
            b[11] = 0xff;
            b[12..].copy_from_slice(&a);
            b
        };
        let v6 = SockTuple {
            family: 10,
            how: CONN_IN_CALL,
            local: mapped([10, 99, 0, 2]),
            remote: "fd99::1".parse::<Ipv6Addr>().unwrap().octets(),
            local_port: 25,
            remote_port: 50000,
        };
        let p = decode(
            &record_with(FLAG_TLS_DATA | FLAG_TLS_WRITE, b"smtpd", b"x", v6),
            0,
        )
        .unwrap();
        assert_eq!(
            p.conn,
            Some(Conn {
                local: "10.99.0.2:25".parse().unwrap(),
                peer: "[fd99::1]:50000".parse().unwrap(),
                how: ConnHow::InCall,
            })
        );
        let unknown_family = SockTuple { family: 1, ..v4 };
        let p = decode(
            &record_with(FLAG_TLS_DATA | FLAG_TLS_READ, b"x", b"y", unknown_family),
            0,
        );
        assert_eq!(p.unwrap().conn, None);
    }

    #[test]
    fn rejects_short_and_directionless_records() {
        let r = record(FLAG_TLS_DATA | FLAG_TLS_READ, b"imap-login", b"a LOGIN\r\n");
        assert!(decode(&r[..110], 0).is_none());
        assert!(decode(&r[..10], 0).is_none());
        let both = record(FLAG_TLS_DATA | FLAG_TLS_READ | FLAG_TLS_WRITE, b"x", b"y");
        assert!(decode(&both, 0).is_none());
        assert!(!is_plaintext(&[0u8; 40]));
        assert!(!is_plaintext(&[0u8; 3]));
    }

    #[test]
    fn socket_keys_cover_dual_stack_sockets() {
        let k = sock_keys(
            "10.99.0.2:25".parse().unwrap(),
            "10.99.0.1:40000".parse().unwrap(),
        );
        assert_eq!(k.len(), 2);
        assert_eq!(
            (k[0].family, k[0].local_port, k[0].remote_port),
            (2, 25, 40000)
        );
        assert_eq!(&k[0].local[..4], &[10, 99, 0, 2]);
        assert_eq!(&k[0].local[4..], &[0u8; 12]);
        assert_eq!(&k[0].remote[..4], &[10, 99, 0, 1]);
        assert_eq!(k[1].family, 10);
        assert_eq!(&k[1].local[10..], &[0xff, 0xff, 10, 99, 0, 2]);
        assert_eq!(&k[1].local[..10], &[0u8; 10]);
        let k = sock_keys(
            "[fd99::2]:993".parse().unwrap(),
            "[fd99::1]:5000".parse().unwrap(),
        );
        assert_eq!(k.len(), 1);
        assert_eq!(k[0].local, "fd99::2".parse::<Ipv6Addr>().unwrap().octets());
        assert!(sock_keys(
            "[fd99::2]:1".parse().unwrap(),
            "10.0.0.1:2".parse().unwrap()
        )
        .is_empty());
    }
}
