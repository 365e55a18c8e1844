//! A private Dovecot inside a `NetNs` (IMAP 143/993, POP3 110/995, and the auth socket Postfix
//! uses for SASL), run with `dovecot -c FILE` and stopped on drop.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::{children_of, chown, mkdir, reap, run, run_ok, wait_for, write, NetNs};
use super::{Logs, DOMAIN, PASSWORD, USERS};

pub struct Dovecot {
    config: PathBuf,
    base: PathBuf,
    log: PathBuf,
    ns: String,
    master_pid: Option<u32>,
}

impl Dovecot {
    pub fn start(ns: &NetNs, root: &Path, cert: &Path, key: &Path, logs: Logs) -> Dovecot {
        let base = mkdir(&root.join("run"));
        let state = mkdir(&root.join("state"));
        let mail = mkdir(&root.join("mail"));
        chown(&mail, "5000:5000");
        let log = root.join("dovecot.log");
        let users = root.join("users");
        let mut passwd = String::new();
        for u in USERS {
            passwd.push_str(&format!(
                "{u}@{DOMAIN}:{{PLAIN}}{PASSWORD}:5000:5000::{home}::\n",
                home = mail.join(u).display()
            ));
        }
        write(&users, passwd);
        let config = root.join("dovecot.conf");
        write(
            &config,
            format!(
                r#"protocols = imap pop3
listen = *, ::
base_dir = {base}
state_dir = {state}
instance_name = dovecot-{ns}
log_path = {log_path}
ssl = yes
ssl_cert = <{cert}
ssl_key = <{key}
ssl_dh = </usr/share/dovecot/dh.pem
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_failure_delay = 0
mail_location = maildir:~/Maildir
first_valid_uid = 5000
last_valid_uid = 5000
pop3_uidl_format = %08Xu%08Xv
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {users}
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {users}
}}
service imap-login {{
  inet_listener imap {{
    port = 143
  }}
  inet_listener imaps {{
    port = 993
    ssl = yes
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    port = 110
  }}
  inet_listener pop3s {{
    port = 995
    ssl = yes
  }}
}}
service auth {{
  unix_listener auth-postfix {{
    mode = 0660
    user = postfix
    group = postfix
  }}
}}
# Without this a login after a failed one is held for seconds.
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
"#,
                base = base.display(),
                state = state.display(),
                ns = ns.name,
                log_path = match logs {
                    Logs::Files => log.display().to_string(),
                    Logs::Syslog => "syslog".to_string(),
                },
                cert = cert.display(),
                key = key.display(),
                users = users.display(),
            ),
        );
        // Dovecot daemonises; its children must not hold our pipes, hence run() with a grace.
        run_ok(
            ns.exec("dovecot").arg("-c").arg(&config),
            Duration::from_secs(30),
            "dovecot start",
        );
        let mut dc = Dovecot {
            config,
            base,
            log,
            ns: ns.name.clone(),
            master_pid: None,
        };
        dc.master_pid = Some(wait_for(
            Duration::from_secs(20),
            "Dovecot master.pid",
            || dc.read_master_pid(),
        ));
        let addr = SocketAddr::new(ns.server_v4().into(), 143);
        wait_for(Duration::from_secs(30), "Dovecot greeting on 143", || {
            super::postfix::greeting(addr).filter(|g| g.starts_with("* OK"))
        });
        wait_for(
            Duration::from_secs(10),
            "Dovecot auth-postfix socket",
            || dc.auth_socket().exists().then_some(()),
        );
        dc
    }

    fn read_master_pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.base.join("master.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// The unix socket Postfix's `smtpd_sasl_path` points at.
    pub fn auth_socket(&self) -> PathBuf {
        self.base.join("auth-postfix")
    }

    /// Where Dovecot writes its log (`log_path`).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Appends `settings` to the configuration and reloads (`dovecot reload`: new login
    /// processes take new connections, old ones finish theirs).
    pub fn reconfigure(&self, settings: &str) {
        let mut conf = std::fs::read_to_string(&self.config).expect("read dovecot.conf");
        conf.push_str(settings);
        conf.push('\n');
        write(&self.config, conf);
        run_ok(
            Command::new("ip")
                .args(["netns", "exec", &self.ns, "dovecot", "-c"])
                .arg(&self.config)
                .arg("reload"),
            Duration::from_secs(30),
            "dovecot reload",
        );
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        let Some(master) = self.master_pid.or_else(|| self.read_master_pid()) else {
            return;
        };
        let children = children_of(master);
        let _ = run(
            Command::new("ip")
                .args(["netns", "exec", &self.ns, "dovecot", "-c"])
                .arg(&self.config)
                .arg("stop"),
            Duration::from_secs(30),
            "dovecot stop",
        );
        let mut pids = children;
        pids.push(master);
        let killed = reap(&pids, Duration::from_secs(10));
        if !killed.is_empty() && !std::thread::panicking() {
            eprintln!("dovecot stop left pids {killed:?}; killed them");
        }
    }
}
