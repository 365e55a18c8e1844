//! The TLS-plaintext records: what the uprobes on the TLS library's
//! read/write functions put into the same `EVENTS` ring as the packets.
//!
//! A plaintext record starts with the same 24 bytes as a
//! [`crate::PacketHeader`] as far as the reader cares: `flags` sits at the same
//! offset (20), and [`FLAG_TLS_DATA`] is never set on a packet, so the ring
//! reader dispatches on it without knowing the record size. `chunk_len` bytes
//! of plaintext follow the header.

/// `TlsDataHeader::flags` (at the offset of `PacketHeader::flags`): this record
/// is TLS plaintext, not a packet.
pub const FLAG_TLS_DATA: u32 = 1 << 31;
/// The plaintext came from the peer (SSL_read, SSL_read_ex).
pub const FLAG_TLS_READ: u32 = 1 << 0;
/// The plaintext goes to the peer (SSL_write, SSL_write_ex).
pub const FLAG_TLS_WRITE: u32 = 1 << 1;

/// Byte offset of `flags` in both header kinds.
pub const FLAGS_OFFSET: usize = 20;

/// Plaintext bytes copied per call at most; a longer read or write is cut
/// (counted in `TlsCounters::truncated`). TLS records carry at most 16 KiB, and
/// the mail daemons never read or write more than that per call.
pub const MAX_TLS_CALL: usize = 32768;

/// `SockTuple::how`: no connection known for the `SSL *` yet.
pub const CONN_NONE: u16 = 0;
/// `SockTuple::how`: the TLS call itself sent or received on this TCP socket
/// (`SSL_set_fd` designs: Postfix, Python, Perl clients). Exact.
pub const CONN_IN_CALL: u16 = 1;
/// `SockTuple::how`: the last mail-port TCP socket the calling thread used
/// before the call (memory-BIO designs: Dovecot). Exact while a process
/// serves one client at a time.
pub const CONN_THREAD: u16 = 2;
/// `SockTuple::how`: the TLS call sent or received on an IPv4/IPv6 socket with no mail port
/// at either end (nginx, curl, apt using the same libssl): the kernel copies none of its
/// plaintext. Only in the kernel's maps, never in a record.
pub const CONN_OTHER: u16 = 3;

/// A TCP connection as the kernel socket sees it (`struct sock_common`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockTuple {
    /// AF_INET (2) or AF_INET6 (10); 0 when unknown.
    pub family: u16,
    /// Host byte order.
    pub local_port: u16,
    /// Host byte order.
    pub remote_port: u16,
    /// [`CONN_NONE`], [`CONN_IN_CALL`] or [`CONN_THREAD`].
    pub how: u16,
    /// Network byte order; IPv4 in the first 4 bytes.
    pub local: [u8; 16],
    pub remote: [u8; 16],
}

/// Who last sent or received on a mail-port socket (value of `SOCK_OWNER`,
/// keyed by the socket's [`SockTuple`] with `how` = [`CONN_NONE`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockOwner {
    pub pid: u32,
    pub tid: u32,
    pub comm: [u8; 16],
}

/// Offsets of the `struct sock_common` fields the socket probe reads, from the
/// running kernel's BTF (index 0 of `SOCK_OFFSETS`). No CO-RE for Rust eBPF in
/// aya 0.14: userspace looks them up in /sys/kernel/btf/vmlinux at load time.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockOffsets {
    /// Non-zero once userspace filled in the offsets.
    pub valid: u16,
    pub family: u16,
    /// `skc_daddr` (IPv4 remote).
    pub daddr: u16,
    /// `skc_rcv_saddr` (IPv4 local).
    pub rcv_saddr: u16,
    /// `skc_dport` (network order).
    pub dport: u16,
    /// `skc_num` (host order).
    pub num: u16,
    pub v6_daddr: u16,
    pub v6_rcv_saddr: u16,
}

/// Header of a plaintext record; `chunk_len` bytes follow.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TlsDataHeader {
    /// `bpf_ktime_get_ns()` at the return of the call.
    pub ts_ns: u64,
    /// The `SSL *` of the call: one TLS connection within `pid`.
    pub ssl: u64,
    /// Thread-group id (the pid users know).
    pub pid: u32,
    /// [`FLAG_TLS_DATA`] | [`FLAG_TLS_READ`] or [`FLAG_TLS_WRITE`].
    pub flags: u32,
    /// Thread id.
    pub tid: u32,
    /// The fd given to `SSL_set_fd` for this `SSL *`, or -1 when not seen
    /// (memory BIOs, or set before mail-trace started).
    pub fd: i32,
    /// Bytes the call returned.
    pub call_len: u32,
    /// Offset of this record's data within the call's bytes.
    pub offset: u32,
    /// Bytes of plaintext in this record.
    pub chunk_len: u32,
    /// Zero.
    pub reserved: u32,
    /// `comm` of the calling thread, NUL-padded.
    pub comm: [u8; 16],
    /// The TCP connection of the `SSL *`, found in the kernel (see [`SockTuple::how`]).
    pub conn: SockTuple,
}

/// Arguments saved at a call's entry for its return (keyed by pid_tgid).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TlsCallArgs {
    pub ssl: u64,
    pub buf: u64,
    /// `size_t *` out-parameter of the `_ex` calls (0 for the others).
    pub out_len: u64,
}

/// Per-CPU counters of the TLS probes (index 0 of `TLS_COUNTERS`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TlsCounters {
    /// Successful calls seen (return value > 0).
    pub calls: u64,
    pub records: u64,
    pub bytes: u64,
    /// Records lost to a full ring buffer.
    pub lost_records: u64,
    /// Calls longer than [`MAX_TLS_CALL`].
    pub truncated: u64,
    /// `bpf_probe_read_user` failures (page not resident, bad pointer).
    pub read_errors: u64,
    /// Calls whose connection was found: in the call, by the thread's last socket.
    pub conn_in_call: u64,
    pub conn_thread: u64,
    /// Calls with no mail connection known: not copied (see `not_mail`).
    pub conn_none: u64,
    /// Runs of the socket probes on a mail-port socket.
    pub sock_seen: u64,
    /// Calls not copied because their connection is not a mail connection ([`CONN_OTHER`])
    /// or none is known ([`CONN_NONE`]): another process's plaintext never enters the ring.
    pub not_mail: u64,
}

impl TlsCounters {
    /// Adds another CPU's counters to these.
    pub fn add(&mut self, o: &TlsCounters) {
        self.calls += o.calls;
        self.records += o.records;
        self.bytes += o.bytes;
        self.lost_records += o.lost_records;
        self.truncated += o.truncated;
        self.read_errors += o.read_errors;
        self.conn_in_call += o.conn_in_call;
        self.conn_thread += o.conn_thread;
        self.conn_none += o.conn_none;
        self.sock_seen += o.sock_seen;
        self.not_mail += o.not_mail;
    }
}

/// Kernel object names of the TLS probes.
pub mod names {
    /// `HashMap<u64 pid_tgid, TlsCallArgs>`: calls in flight.
    pub const TLS_ARGS: &str = "TLS_ARGS";
    /// `LruHashMap<[u64; 2] (tgid, SSL *), i32 fd>` from `SSL_set_fd`.
    pub const SSL_FDS: &str = "SSL_FDS";
    /// Per-CPU [`super::TlsCounters`] at index 0.
    pub const TLS_COUNTERS: &str = "TLS_COUNTERS";
    /// `LruHashMap<[u64; 2] (tgid, SSL *), SockTuple>`: the connection of each TLS object.
    pub const SSL_CONN: &str = "SSL_CONN";
    /// `LruHashMap<u64 pid_tgid, SockTuple>`: each thread's last mail-port socket.
    pub const THREAD_SOCK: &str = "THREAD_SOCK";
    /// `LruHashMap<SockTuple, SockOwner>`: the process using each mail-port socket.
    pub const SOCK_OWNER: &str = "SOCK_OWNER";
    /// `Array<SockOffsets>` with one entry, written by userspace before attaching.
    pub const SOCK_OFFSETS: &str = "SOCK_OFFSETS";
    /// Raw tracepoints sock_send_length and sock_recv_length: learn the sockets of TLS calls.
    pub const SOCK_SEND: &str = "mt_sock_send";
    pub const SOCK_RECV: &str = "mt_sock_recv";
    /// Entry uprobe of SSL_free: forgets the object's connection.
    pub const FREE: &str = "mt_ssl_free";
    /// Entry uprobe of SSL_read, SSL_write, SSL_read_ex, SSL_write_ex.
    pub const ENTER: &str = "mt_ssl_enter";
    pub const READ_RET: &str = "mt_ssl_read_ret";
    pub const WRITE_RET: &str = "mt_ssl_write_ret";
    pub const READ_EX_RET: &str = "mt_ssl_read_ex_ret";
    pub const WRITE_EX_RET: &str = "mt_ssl_write_ex_ret";
    /// Entry uprobe of SSL_set_fd.
    pub const SET_FD: &str = "mt_ssl_set_fd";
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain-old-data, repr(C), no padding (checked by the tests below).
    unsafe impl aya::Pod for super::TlsDataHeader {}
    unsafe impl aya::Pod for super::TlsCounters {}
    unsafe impl aya::Pod for super::TlsCallArgs {}
    unsafe impl aya::Pod for super::SockTuple {}
    unsafe impl aya::Pod for super::SockOffsets {}
    unsafe impl aya::Pod for super::SockOwner {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{offset_of, size_of};

    #[test]
    fn layouts_are_pinned() {
        assert_eq!(size_of::<TlsDataHeader>(), 104);
        assert_eq!(size_of::<TlsDataHeader>() % 8, 0);
        assert_eq!(size_of::<SockTuple>(), 40);
        assert_eq!(size_of::<SockOffsets>(), 16);
        assert_eq!(size_of::<SockOwner>(), 24);
        assert_eq!(crate::FLAG_SUPPRESSED & FLAG_TLS_DATA, 0);
        assert_eq!(offset_of!(TlsDataHeader, flags), FLAGS_OFFSET);
        assert_eq!(offset_of!(crate::PacketHeader, flags), FLAGS_OFFSET);
        assert_eq!(size_of::<TlsCallArgs>(), 24);
        assert_eq!(size_of::<TlsCounters>(), 11 * 8);
        assert!(MAX_TLS_CALL.is_power_of_two());
        assert_eq!(crate::FLAG_INGRESS & FLAG_TLS_DATA, 0);
    }
}
