//! `NetNs`: a namespace joined to the root namespace by a veth pair, deleted on drop.
//!
//! The client end of the veth stays in the root namespace so a tracer attaches there without
//! `ip netns exec`; the server end lives in the namespace with Postfix and Dovecot behind it.
//! Addresses: 10.99.N.1/24 and fd99::N:1/112 (N in hex there) on the root side, 10.99.N.2 and fd99::N:2 in the
//! namespace. The IPv6 prefix is a /112 rather than a /64 so that several test beds (and other
//! engineers' ones) can share fd99::/64 without their routes overlapping.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use super::{pid_alive, run, run_ok};

const CMD_TIMEOUT: Duration = Duration::from_secs(20);

/// One test bed network; everything it made is removed on drop, even during a panic.
pub struct NetNs {
    pub name: String,
    /// Veth end in the root namespace (client side).
    pub host_if: String,
    /// Veth end inside the namespace (server side).
    pub ns_if: String,
    /// The third octet of the 10.99.N.0/24 subnet.
    pub n: u8,
    claim: PathBuf,
    etc: PathBuf,
}

/// Serialises subnet choice between tests of one binary; the claim files do it between processes.
static ALLOC: Mutex<()> = Mutex::new(());

impl NetNs {
    pub fn new() -> NetNs {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let c = COUNTER.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let name = format!("mt{pid}x{c}");
        // Interface names are limited to 15 bytes: "mt" + pid (≤ 7 digits) + "x" + c + a/b.
        let host_if = format!("{name}a");
        let ns_if = format!("{name}b");
        assert!(host_if.len() <= 15, "interface name {host_if} too long");
        let (n, claim) = claim_subnet();
        let etc = PathBuf::from(format!("/etc/netns/{name}"));
        let ns = NetNs {
            name,
            host_if,
            ns_if,
            n,
            claim,
            etc,
        };
        ns.create();
        ns
    }

    fn create(&self) {
        let (name, a, b, n) = (&self.name, &self.host_if, &self.ns_if, self.n);
        // `ip netns exec` bind-mounts these over /etc, so names resolve and no DNS query leaves.
        std::fs::create_dir_all(&self.etc).expect("create /etc/netns/<ns>");
        super::write(
            &self.etc.join("hosts"),
            format!(
                "127.0.0.1 localhost\n::1 localhost\n{} {dom}\n{} {dom}\n",
                self.server_v4(),
                self.server_v6(),
                dom = super::DOMAIN
            ),
        );
        super::write(&self.etc.join("resolv.conf"), "nameserver 127.0.0.1\n");
        ip(&["netns", "add", name]);
        ip(&["link", "add", a, "type", "veth", "peer", "name", b]);
        ip(&["link", "set", b, "netns", name]);
        ip(&["addr", "add", &format!("10.99.{n}.1/24"), "dev", a]);
        ip(&[
            "-6",
            "addr",
            "add",
            &format!("{}/112", self.client_v6()),
            "dev",
            a,
            "nodad",
        ]);
        ip(&["link", "set", a, "up"]);
        let inside = |args: &[&str]| {
            let mut full = vec!["-n", name.as_str()];
            full.extend_from_slice(args);
            ip(&full);
        };
        inside(&["link", "set", "lo", "up"]);
        inside(&["addr", "add", &format!("10.99.{n}.2/24"), "dev", b]);
        inside(&[
            "-6",
            "addr",
            "add",
            &format!("{}/112", self.server_v6()),
            "dev",
            b,
            "nodad",
        ]);
        inside(&["link", "set", b, "up"]);
    }

    pub fn client_v4(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 99, self.n, 1)
    }

    pub fn server_v4(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 99, self.n, 2)
    }

    pub fn client_v6(&self) -> Ipv6Addr {
        Ipv6Addr::new(0xfd99, 0, 0, 0, 0, 0, u16::from(self.n), 1)
    }

    pub fn server_v6(&self) -> Ipv6Addr {
        Ipv6Addr::new(0xfd99, 0, 0, 0, 0, 0, u16::from(self.n), 2)
    }

    /// Adds 10.99.N.`host` on the root side (a second client address) and returns it.
    pub fn add_client_v4(&self, host: u8) -> Ipv4Addr {
        let addr = Ipv4Addr::new(10, 99, self.n, host);
        ip(&["addr", "add", &format!("{addr}/24"), "dev", &self.host_if]);
        addr
    }

    /// A command that runs `program` inside the namespace.
    pub fn exec(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Deleting one veth end deletes both; the namespace goes with `netns del`.
        let _ = run(
            Command::new("ip").args(["link", "del", &self.host_if]),
            CMD_TIMEOUT,
            "ip link del",
        );
        let _ = run(
            Command::new("ip").args(["netns", "del", &self.name]),
            CMD_TIMEOUT,
            "ip netns del",
        );
        let _ = std::fs::remove_dir_all(&self.etc);
        let _ = std::fs::remove_file(&self.claim);
    }
}

fn ip(args: &[&str]) {
    run_ok(Command::new("ip").args(args), CMD_TIMEOUT, "ip");
}

/// Picks a 10.99.N.0/24 that no root-namespace interface uses and claims it with a file holding
/// our pid (a claim whose process is gone is stale and taken over).
fn claim_subnet() -> (u8, PathBuf) {
    let _guard = ALLOC.lock().unwrap_or_else(|e| e.into_inner());
    let dir = std::env::temp_dir().join("mt-subnets");
    let _ = std::fs::create_dir_all(&dir);
    let used = run_ok(
        Command::new("ip").args(["-o", "addr", "show"]),
        CMD_TIMEOUT,
        "ip addr show",
    )
    .stdout;
    let start = (std::process::id() % 200) as u8;
    for i in 0..200u8 {
        let n = 20 + (start.wrapping_add(i) % 200);
        if used.contains(&format!("10.99.{n}.")) || used.contains(&format!("fd99::{n:x}:")) {
            continue;
        }
        let path = dir.join(n.to_string());
        for _ in 0..2 {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(mut f) => {
                    use std::io::Write;
                    let _ = write!(f, "{}", std::process::id());
                    return (n, path);
                }
                Err(_) => {
                    let owner = std::fs::read_to_string(&path)
                        .ok()
                        .and_then(|s| s.trim().parse::<u32>().ok());
                    if owner.is_some_and(pid_alive) {
                        break;
                    }
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
    }
    panic!("no free 10.99.N.0/24 subnet for a test bed");
}
