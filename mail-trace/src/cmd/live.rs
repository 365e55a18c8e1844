//! Options shared by the commands that read live traffic (`capture`, `tail`).
use std::{path::PathBuf, str::FromStr};

use anyhow::Context as _;

use mail_trace_common::DEFAULT_PORTS;

use crate::capture::ebpf::{Cidr, LiveConfig};
use crate::capture::uprobe::TlsConfig;

#[derive(clap::Args, Clone, Debug)]
pub struct LiveArgs {
    /// Interface to attach to (repeatable). Default: every interface that is up,
    /// loopback included.
    #[arg(short = 'i', long = "interface", value_name = "IFACE")]
    pub interfaces: Vec<String>,
    /// TCP ports to capture, comma-separated; replaces the default mail ports
    /// 25,465,587,110,995,143,993. A packet matches on its source or destination port.
    #[arg(long, value_name = "PORT,…")]
    pub ports: Option<PortList>,
    /// Only packets from or to this network (repeatable; IPv4 or IPv6 CIDR).
    #[arg(long = "host", value_name = "CIDR")]
    pub hosts: Vec<Cidr>,
    /// Bytes captured per packet at most; 0 = whole packets (up to 64 KiB).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub snaplen: u32,
    /// Kernel ring buffer size in bytes (power of two; K, M, G suffixes allowed).
    #[arg(long, value_name = "BYTES", default_value = "16M", value_parser = parse_size)]
    pub ring_size: u32,
    /// Capture ingress with XDP instead of TC (egress stays on TC); needs Linux >= 5.18.
    #[arg(long)]
    pub xdp: bool,
    /// Attach with netlink clsact filters even on kernels with TCX (for testing).
    #[arg(long, hide = true)]
    pub tc_netlink: bool,
    /// Copy the payload of encrypted (STARTTLS or implicit-TLS) sessions too. By default
    /// the kernel sends their packets header-only after the TLS handshake.
    #[arg(long)]
    pub full_payload: bool,
    /// After attaching, run as this user. Default: `mail-trace` if that user exists, else
    /// `nobody`; `root` keeps uid 0. Every capability is dropped either way.
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,
    /// The seccomp allow-list installed after the drop: enforce (default), log (allow and log
    /// what it would refuse, to find a missing call), off. For debugging.
    #[arg(long, hide = true, value_enum, default_value_t = super::privilege::SeccompMode::Enforce)]
    pub seccomp: super::privilege::SeccompMode,
}

impl LiveArgs {
    /// What the live commands do once the capture is open: give up root, saying so, keeping
    /// the groups that read the logs asked for (`logs`, see [`super::privilege::log_groups`]).
    pub fn drop_privileges(&self, logs: &[(String, libc::gid_t)]) -> anyhow::Result<()> {
        use super::privilege as p;
        let user = p::choose_user(self.user.as_deref()).context("dropping privileges")?;
        let dropped = p::drop_privileges(p::needs_net_admin_at_exit(self.tc_netlink), &user, logs)
            .map_err(|e| e.context("dropping privileges"))?;
        crate::note!("{}", dropped.describe(self.seccomp));
        Ok(())
    }

    /// After [`Self::drop_privileges`] and after any helper program has been started: from
    /// here on only the allow-listed system calls work.
    pub fn sandbox(&self) -> anyhow::Result<()> {
        super::privilege::install_seccomp(self.seccomp)
    }
}

impl LiveArgs {
    pub fn to_config(&self) -> LiveConfig {
        let ifaces = if self.interfaces.is_empty() {
            up_interfaces()
        } else {
            self.interfaces.clone()
        };
        LiveConfig {
            ifaces,
            ports: self
                .ports
                .as_ref()
                .map_or_else(|| DEFAULT_PORTS.to_vec(), |p| p.0.clone()),
            hosts: self.hosts.clone(),
            snaplen: self.snaplen,
            ring_size: self.ring_size,
            xdp: self.xdp,
            force_netlink: self.tc_netlink,
            full_payload: self.full_payload,
        }
    }
}

/// The TLS plaintext options of `tail` and `capture`.
#[derive(clap::Args, Clone, Debug)]
pub struct TlsArgs {
    /// See inside TLS: read the plaintext of STARTTLS and implicit-TLS sessions
    /// from uprobes on the mail daemons' libssl (SSL_read/SSL_write). `capture`
    /// prints one line per plaintext chunk, never its bytes, and does not write
    /// plaintext to the -w pcapng file.
    #[arg(long)]
    pub tls_plaintext: bool,
    /// The libssl to probe (repeatable); default: the one the mail daemons map.
    #[arg(long, value_name = "PATH", requires = "tls_plaintext")]
    pub libssl: Vec<PathBuf>,
    /// Only TLS plaintext of this process.
    #[arg(long, value_name = "PID", requires = "tls_plaintext")]
    pub pid: Option<u32>,
    /// Only TLS plaintext of processes with this comm (repeatable).
    #[arg(long, value_name = "COMM", requires = "tls_plaintext")]
    pub comm: Vec<String>,
}

impl TlsArgs {
    pub fn to_config(&self) -> TlsConfig {
        TlsConfig {
            libssl: self.libssl.clone(),
            pid: self.pid,
            comms: self.comm.clone(),
        }
    }
}

/// Names of the interfaces that are up (IFF_UP in /sys/class/net/*/flags), sorted.
pub fn up_interfaces() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir("/sys/class/net")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            std::fs::read_to_string(e.path().join("flags"))
                .ok()
                .and_then(|f| u32::from_str_radix(f.trim().trim_start_matches("0x"), 16).ok())
                .is_some_and(|flags| flags & 1 != 0)
        })
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// A `--ports` value: one or more ports in 1..=65535.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortList(pub Vec<u16>);

impl FromStr for PortList {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ports = s
            .split(',')
            .map(|p| match p.trim().parse::<u32>() {
                Ok(n @ 1..=65535) => Ok(n as u16),
                _ => Err(format!("bad port {:?}: must be 1..=65535", p.trim())),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(PortList(ports))
    }
}

/// `16777216`, `16M`, `512K`, `1G`.
pub fn parse_size(s: &str) -> Result<u32, String> {
    match parse_bytes(s) {
        Some(n) if n.is_power_of_two() && n >= 4096 => Ok(n),
        _ => Err(format!(
            "bad size {s:?}: a power of two of at least 4096 bytes, e.g. 16M"
        )),
    }
}

/// `4096`, `512K`, `4M`: any byte count of at least 1 KiB that fits in u32.
pub fn parse_buffer(s: &str) -> Result<u32, String> {
    match parse_bytes(s) {
        Some(n) if n >= 1024 => Ok(n),
        _ => Err(format!("bad size {s:?}: at least 1024 bytes, e.g. 4M")),
    }
}

fn parse_bytes(s: &str) -> Option<u32> {
    let (num, mult) = match s.as_bytes().last() {
        Some(b'K' | b'k') => (&s[..s.len() - 1], 1u64 << 10),
        Some(b'M' | b'm') => (&s[..s.len() - 1], 1 << 20),
        Some(b'G' | b'g') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    let n = num.parse::<u64>().ok()?.checked_mul(mult)?;
    u32::try_from(n).ok()
}

/// A pcapng writer with one interface block per attached interface, in attach order.
pub fn pcapng_for<W: std::io::Write>(
    cap: &crate::capture::ebpf::EbpfCapture,
    snaplen: u32,
    out: W,
) -> anyhow::Result<crate::output::pcapng::PcapngSink<W>> {
    use anyhow::Context;
    let descs: Vec<crate::output::pcapng::IfaceDesc> = cap
        .interfaces()
        .iter()
        .map(|i| crate::output::pcapng::IfaceDesc {
            name: i.name.clone(),
            link: i.link,
            snaplen,
        })
        .collect();
    crate::output::pcapng::PcapngSink::new(out, &descs).context("writing pcapng")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    #[test]
    fn ports_parse_and_reject_out_of_range() {
        assert_eq!("25,587".parse::<PortList>(), Ok(PortList(vec![25, 587])));
        assert_eq!(
            " 110 , 65535".parse::<PortList>(),
            Ok(PortList(vec![110, 65535]))
        );
        assert_eq!(
            "0".parse::<PortList>(),
            Err("bad port \"0\": must be 1..=65535".into())
        );
        assert_eq!(
            "25,65536".parse::<PortList>(),
            Err("bad port \"65536\": must be 1..=65535".into())
        );
        assert!("25,,587".parse::<PortList>().is_err());
        assert!("smtp".parse::<PortList>().is_err());
        assert!("-25".parse::<PortList>().is_err());
    }

    #[test]
    fn cidrs_parse_and_reject_host_bits() {
        let c: Cidr = "10.99.0.0/16".parse().unwrap();
        assert_eq!(
            (c.addr, c.prefix),
            ("10.99.0.0".parse::<IpAddr>().unwrap(), 16)
        );
        let c: Cidr = "10.99.1.2".parse().unwrap();
        assert_eq!(c.prefix, 32);
        let c: Cidr = "fd99::/64".parse().unwrap();
        assert_eq!(c.to_string(), "fd99::/64");
        assert_eq!("fd99::1".parse::<Cidr>().unwrap().prefix, 128);
        assert_eq!("0.0.0.0/0".parse::<Cidr>().unwrap().prefix, 0);
        assert_eq!(
            "10.99.0.1/16".parse::<Cidr>(),
            Err("bad CIDR \"10.99.0.1/16\": host bits set".into())
        );
        assert_eq!(
            "fd99::1/64".parse::<Cidr>(),
            Err("bad CIDR \"fd99::1/64\": host bits set".into())
        );
        assert_eq!(
            "10.99.0.0/33".parse::<Cidr>(),
            Err("bad CIDR \"10.99.0.0/33\": prefix must be 0..=32".into())
        );
        assert!("fd99::/129".parse::<Cidr>().is_err());
        assert!("10.99.0.0/".parse::<Cidr>().is_err());
        assert!("10.99.0.0/+8".parse::<Cidr>().is_err());
        assert!("mail.example".parse::<Cidr>().is_err());
    }

    #[test]
    fn sizes_need_a_power_of_two() {
        assert_eq!(parse_size("16M"), Ok(16 << 20));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert!(parse_size("4G").is_err());
        assert!(parse_size("3000").is_err());
        assert!(parse_size("2048").is_err());
        assert!(parse_size("M").is_err());
    }
}
