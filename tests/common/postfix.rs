//! A private Postfix instance inside a `NetNs`: its own config dir, queue and log under a temp dir,
//! started with `postfix -c DIR start` (no systemd) and stopped on drop.
//!
//! Ports: 25 (STARTTLS offered), 587 (SASL via Dovecot, recipients only for authenticated
//! clients), 465 (the same in TLS wrapper mode). Mail for `DOMAIN` users goes to virtual Maildirs;
//! anything else is refused (relay) or bounced to the error transport, so nothing leaves.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use super::{children_of, chown, mkdir, reap, run, wait_for, write, Logs, NetNs, DOMAIN, USERS};

/// How long `postfix start` and its first greeting may take.
fn start_timeout() -> Duration {
    super::patience(Duration::from_secs(60))
}

pub struct Postfix {
    config: PathBuf,
    queue: PathBuf,
    log: PathBuf,
    ns: String,
    master_pid: Option<u32>,
}

impl Postfix {
    /// Writes the configuration under `root` and starts Postfix in `ns`; returns once port 25
    /// answers with a greeting.
    pub fn start(
        ns: &NetNs,
        root: &Path,
        cert: &Path,
        key: &Path,
        sasl_socket: &Path,
        logs: Logs,
    ) -> Postfix {
        let config = mkdir(&root.join("etc"));
        let queue = mkdir(&root.join("queue"));
        let data = mkdir(&root.join("data"));
        chown(&data, "postfix:postfix");
        let logdir = mkdir(&root.join("log"));
        let log = logdir.join("postfix.log");
        let mail = mkdir(&root.join("mail"));
        chown(&mail, "5000:5000");
        let vmailbox = root.join("vmailbox");
        let mut maps = String::new();
        for u in USERS {
            maps.push_str(&format!("{u}@{DOMAIN} {DOMAIN}/{u}/\n"));
        }
        write(&vmailbox, maps);
        write(
            &config.join("main.cf"),
            main_cf(
                &queue,
                &data,
                &log,
                &logdir,
                &mail,
                &vmailbox,
                cert,
                key,
                sasl_socket,
            ),
        );
        if logs == Logs::Syslog {
            // No maillog_file: Postfix's default, syslog(3) to /dev/log.
            let cf = std::fs::read_to_string(config.join("main.cf")).expect("read main.cf");
            let cf: String = cf
                .lines()
                .filter(|l| !l.starts_with("maillog_file"))
                .map(|l| format!("{l}\n"))
                .collect();
            write(&config.join("main.cf"), cf);
        }
        write(&config.join("master.cf"), MASTER_CF);
        // master re-reads a main.cf younger than about a second and restarts its children.
        backdate(&config.join("main.cf"));
        backdate(&config.join("master.cf"));

        // `postfix start` fails silently without a tty; `script` gives it one and its output.
        let console = root.join("start.out");
        let console_file = std::fs::File::create(&console).expect("create postfix start.out");
        let cmdline = format!("postfix -c {} start", config.display());
        let mut child = ns
            .exec("script")
            .args(["-qec", &cmdline, "/dev/null"])
            .stdin(Stdio::null())
            .stdout(console_file.try_clone().expect("dup start.out"))
            .stderr(console_file)
            .spawn()
            .expect("spawn postfix start");
        let status = super::wait_child(&mut child, start_timeout());
        let mut pf = Postfix {
            config,
            queue,
            log,
            ns: ns.name.clone(),
            master_pid: None,
        };
        let said = std::fs::read_to_string(&console).unwrap_or_default();
        assert!(
            status.is_some_and(|s| s.success()),
            "postfix start failed ({status:?}): {said}"
        );
        pf.master_pid = Some(wait_for(
            Duration::from_secs(20),
            "Postfix master.pid",
            || pf.read_master_pid(),
        ));
        let addr = SocketAddr::new(ns.server_v4().into(), 25);
        wait_for(start_timeout(), "Postfix greeting on port 25", || {
            greeting(addr).filter(|g| g.starts_with("220 "))
        });
        pf
    }

    fn read_master_pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.queue.join("pid/master.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Where Postfix writes its log (`maillog_file`).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Postfix's own log (`maillog_file`) as it stands.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Queue ids of the messages Postfix accepted from `client` (address and port, thanks to
    /// `smtpd_client_port_logging`), in order; waits until `count` of them are logged.
    pub fn queue_ids_for(&self, client: SocketAddr, count: usize) -> Vec<String> {
        let needle = format!(": client=unknown[{}]:{}", client.ip(), client.port());
        wait_for(
            Duration::from_secs(15),
            &format!("{count} queue id(s) for {client} in {}", self.log.display()),
            || {
                let ids = queue_ids_in(&self.log(), &needle);
                (ids.len() >= count).then_some(ids)
            },
        )
    }

    /// Like `queue_ids_for` when no message is expected: waits for the disconnect line of that
    /// client, then returns the ids (which should be none).
    pub fn queue_ids_after_disconnect(&self, client: SocketAddr) -> Vec<String> {
        let peer = format!("unknown[{}]:{}", client.ip(), client.port());
        wait_for(
            Duration::from_secs(15),
            &format!("disconnect of {client} in {}", self.log.display()),
            || {
                let log = self.log();
                log.contains(&format!("disconnect from {peer}"))
                    .then(|| queue_ids_in(&log, &format!(": client={peer}")))
            },
        )
    }

    pub fn config_dir(&self) -> &Path {
        &self.config
    }

    pub fn ns(&self) -> &str {
        &self.ns
    }
}

/// Queue ids from lines like `postfix/smtpd[123]: 4Xyz: client=unknown[10.99.1.1]:4321`.
fn queue_ids_in(log: &str, needle: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.ends_with(needle) || l.contains(&format!("{needle},")))
        .filter_map(|l| {
            let before = &l[..l.find(needle)?];
            let id = before.rsplit(' ').next()?;
            (!id.is_empty()).then(|| id.to_string())
        })
        .collect()
}

impl Drop for Postfix {
    fn drop(&mut self) {
        let Some(master) = self.master_pid.or_else(|| self.read_master_pid()) else {
            return;
        };
        let children = children_of(master);
        let _ = run(
            Command::new("ip").args([
                "netns",
                "exec",
                &self.ns,
                "postfix",
                "-c",
                &self.config.display().to_string(),
                "stop",
            ]),
            Duration::from_secs(30),
            "postfix stop",
        );
        let mut pids = children;
        pids.push(master);
        let killed = reap(&pids, Duration::from_secs(10));
        if !killed.is_empty() && !std::thread::panicking() {
            eprintln!("postfix stop left pids {killed:?}; killed them");
        }
    }
}

/// Connects, reads the greeting line and says QUIT; None on any failure.
pub fn greeting(addr: SocketAddr) -> Option<String> {
    use std::io::{BufRead, BufReader, Write};
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.set_write_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut r = BufReader::new(s.try_clone().ok()?);
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let mut w = s;
    let _ = w.write_all(b"QUIT\r\n");
    let _ = r.read_line(&mut String::new());
    Some(line.trim_end().to_string())
}

fn backdate(path: &Path) {
    let f = std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let _ = f.set_modified(SystemTime::now() - Duration::from_secs(5));
}

#[allow(clippy::too_many_arguments, reason = "one call site, all paths")]
fn main_cf(
    queue: &Path,
    data: &Path,
    log: &Path,
    logdir: &Path,
    mail: &Path,
    vmailbox: &Path,
    cert: &Path,
    key: &Path,
    sasl: &Path,
) -> String {
    format!(
        "compatibility_level = 3.6
queue_directory = {queue}
data_directory = {data}
meta_directory = /etc/postfix
maillog_file = {log}
maillog_file_prefixes = {logdir}
myhostname = {DOMAIN}
mydomain = {DOMAIN}
myorigin = {DOMAIN}
mydestination =
relayhost =
mynetworks = 127.0.0.0/8 [::1]/128
inet_interfaces = all
inet_protocols = all
alias_maps =
alias_database =
biff = no
# Nothing may leave the test bed.
default_transport = error:outbound mail disabled in the test bed
relay_transport = error:outbound mail disabled in the test bed
local_transport = error:local delivery disabled in the test bed
smtp_dns_support_level = disabled
smtpd_peername_lookup = no
# Puts the client port in the log, so a test finds the queue id of its own connection.
smtpd_client_port_logging = yes
virtual_mailbox_domains = {DOMAIN}
virtual_mailbox_base = {mail}
virtual_mailbox_maps = texthash:{vmailbox}
virtual_uid_maps = static:5000
virtual_gid_maps = static:5000
virtual_minimum_uid = 5000
smtpd_tls_cert_file = {cert}
smtpd_tls_key_file = {key}
smtpd_tls_security_level = may
smtpd_sasl_type = dovecot
smtpd_sasl_path = {sasl}
smtpd_relay_restrictions = permit_mynetworks, permit_sasl_authenticated, reject_unauth_destination
# Tests must not wait on anti-abuse delays.
smtpd_error_sleep_time = 0
in_flow_delay = 0
smtpd_client_event_limit_exceptions = 10.99.0.0/16 [fd99::]/64
",
        queue = queue.display(),
        data = data.display(),
        log = log.display(),
        logdir = logdir.display(),
        mail = mail.display(),
        vmailbox = vmailbox.display(),
        cert = cert.display(),
        key = key.display(),
        sasl = sasl.display(),
    )
}

/// Every service unchrooted (the queue is in a temp dir, not a prepared chroot).
const MASTER_CF: &str = "\
smtp      inet  n       -       n       -       -       smtpd
587       inet  n       -       n       -       -       smtpd
  -o syslog_name=postfix/submission
  -o smtpd_sasl_auth_enable=yes
  -o smtpd_recipient_restrictions=permit_sasl_authenticated,reject
465       inet  n       -       n       -       -       smtpd
  -o syslog_name=postfix/smtps
  -o smtpd_tls_wrappermode=yes
  -o smtpd_sasl_auth_enable=yes
  -o smtpd_recipient_restrictions=permit_sasl_authenticated,reject
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
";
