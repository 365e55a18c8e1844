//! `mail-trace tail` live on IMAP and POP3 against the real Dovecot of the test bed (issue 5).
//!
//! A message is delivered to alice through Postfix first, so there is mail to list, fetch and
//! retrieve. Clear sessions are driven by a raw client over std's TcpStream (every command known
//! to the byte); TLS sessions by curl (`--ssl-reqd` for STARTTLS/STLS, `imaps://`, `pop3s://`),
//! which sends SNI because it connects to `mx.test` through `--resolve`. Each record must say
//! exactly what the client did and Dovecot answered; the command verbs are also checked against
//! tshark's own IMAP and POP dissection of a capture taken at the same time.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::clients::RawSmtp;
use common::tailer::{assert_fields, secret_forms, Failures, Tail};
use common::tshark::Capture;
use common::{run_ok, wait_for, TempDir, Testbed, DOMAIN, PASSWORD};
use serde_json::{json, Value};

const USER: &str = "alice@mx.test";
const WRONG_PASSWORD: &str = "Wr0ng-Pa55";
const IO_TIMEOUT: Duration = Duration::from_secs(20);

/// The message delivered to alice before any mailbox session, dot-stuffed for SMTP: the
/// mailbox holds a line that starts with one dot, which POP3 stuffs again.
const MESSAGE: &[u8] =
    b"From: sender@client.test\r\nTo: alice@mx.test\r\nSubject: for the mailbox\r\n\r\n\
    First line of the mailbox test.\r\n..A line that starts with a dot.\r\nLast line.\r\n";

/// A line-oriented client for IMAP and POP3 in clear; every read and write bounded.
struct Raw {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    local: SocketAddr,
}

impl Raw {
    fn connect(server: SocketAddr) -> Raw {
        let s = TcpStream::connect_timeout(&server, IO_TIMEOUT)
            .unwrap_or_else(|e| panic!("connect to {server}: {e}"));
        s.set_read_timeout(Some(IO_TIMEOUT)).expect("read timeout");
        s.set_write_timeout(Some(IO_TIMEOUT))
            .expect("write timeout");
        Raw {
            local: s.local_addr().expect("local addr"),
            reader: BufReader::new(s.try_clone().expect("clone socket")),
            writer: s,
        }
    }

    fn line(&mut self) -> String {
        let mut l = String::new();
        let n = self
            .reader
            .read_line(&mut l)
            .unwrap_or_else(|e| panic!("read from {:?}: {e}", self.writer.peer_addr()));
        assert!(n > 0, "server closed the connection");
        l.trim_end_matches(['\r', '\n']).to_string()
    }

    fn send(&mut self, line: &str) {
        self.writer
            .write_all(format!("{line}\r\n").as_bytes())
            .unwrap_or_else(|e| panic!("write {line:?}: {e}"));
    }

    /// IMAP: sends `tag command`, reads up to the tagged completion; returns (untagged lines,
    /// completion line, literal sizes seen).
    fn imap(&mut self, tag: &str, command: &str) -> (Vec<String>, String, Vec<usize>) {
        self.send(&format!("{tag} {command}"));
        let (mut untagged, mut literals) = (Vec::new(), Vec::new());
        loop {
            let l = self.line();
            if l.starts_with(&format!("{tag} ")) {
                return (untagged, l, literals);
            }
            if let Some(n) = l
                .strip_suffix('}')
                .and_then(|h| h.rsplit_once('{'))
                .and_then(|(_, n)| n.parse::<usize>().ok())
            {
                let mut lit = vec![0; n];
                self.reader.read_exact(&mut lit).expect("IMAP literal");
                literals.push(n);
            }
            untagged.push(l);
        }
    }

    /// POP3: sends a command and reads its status line (and the dot-terminated body when
    /// `multi`); returns (status, body lines unstuffed).
    fn pop(&mut self, command: &str, multi: bool) -> (String, Vec<String>) {
        self.send(command);
        let status = self.line();
        let mut body = Vec::new();
        if multi && status.starts_with("+OK") {
            loop {
                let l = self.line();
                if l == "." {
                    break;
                }
                body.push(l.strip_prefix('.').map_or(l.clone(), str::to_string));
            }
        }
        (status, body)
    }

    /// Reads until the server closes.
    fn drain(mut self) {
        let mut rest = Vec::new();
        let _ = self.reader.read_to_end(&mut rest);
    }
}

/// curl against `mx.test` (resolved to the test bed) from `local_port`; panics unless it exits 0.
fn curl(server: IpAddr, port: u16, local_port: u16, urls: &[&[&str]]) -> String {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "20"]);
    for (i, u) in urls.iter().enumerate() {
        if i > 0 {
            cmd.arg("--next");
        }
        // `--next` resets every option; the connection itself is reused.
        cmd.args(["-k", "--resolve", &format!("{DOMAIN}:{port}:{server}")])
            .args(["--local-port", &local_port.to_string()])
            .args(["-u", &format!("{USER}:{PASSWORD}")])
            .args(*u);
    }
    run_ok(&mut cmd, Duration::from_secs(60), "curl").stdout
}

/// Delivers MESSAGE to alice through Postfix and points Dovecot's Maildir for alice at the
/// Maildir Postfix's virtual transport wrote.
fn deliver(tb: &Testbed) {
    let (_, id) = RawSmtp::send_mail(
        SocketAddr::new(tb.ns.server_v4().into(), 25),
        None,
        USER,
        MESSAGE,
    );
    wait_for(
        Duration::from_secs(20),
        "delivery to alice's Maildir",
        || {
            tb.postfix
                .log()
                .lines()
                .any(|l| l.contains(&format!("{id}: to=<{USER}>")) && l.contains("status=sent"))
                .then_some(())
        },
    );
    let postfix_maildir = tb.dir.path().join("postfix/mail/mx.test/alice");
    let home = common::mkdir(&tb.dir.path().join("dovecot/mail/alice"));
    common::chown(&home, "5000:5000");
    std::os::unix::fs::symlink(&postfix_maildir, home.join("Maildir"))
        .expect("symlink alice's Maildir");
}

/// Command verbs tshark's dissector saw from `client` (field `imap.request.command` or
/// `pop.request.command`), in order.
fn tshark_verbs(pcap: &Path, field: &str, client: SocketAddr) -> Vec<String> {
    let out = run_ok(
        Command::new("tshark").arg("-r").arg(pcap).args([
            "-Y",
            &format!("{field} && tcp.srcport == {}", client.port()),
            "-T",
            "fields",
            "-e",
            field,
        ]),
        Duration::from_secs(60),
        "tshark verbs",
    );
    out.stdout
        .split(['\n', ','])
        .map(|v| v.trim().to_ascii_uppercase())
        .filter(|v| !v.is_empty())
        .collect()
}

/// Our command verbs for session `id`, from the `--events` lines.
fn our_verbs(lines: &[Value], id: &Value) -> Vec<String> {
    lines
        .iter()
        .filter(|l| l["type"] == "command" && &l["session"] == id)
        .filter_map(|l| l["verb"].as_str().map(String::from))
        .collect()
}

fn cmds(list: &[(&str, u64, u64)]) -> Value {
    list.iter()
        .map(|(v, c, e)| json!({"verb": v, "count": c, "errors": e}))
        .collect()
}

/// Fields every session record here must have.
fn base(proto: &str, client: SocketAddr, server: SocketAddr) -> Value {
    json!({
        "proto": proto, "client": client.to_string(), "server": server.to_string(),
        "partial": false, "gaps": 0, "anomalies": [],
    })
}

fn with(mut a: Value, b: Value) -> Value {
    for (k, v) in b.as_object().expect("object") {
        a[k] = v.clone();
    }
    a
}

fn tls_fields(mode: &str) -> Value {
    json!({"tls": true, "tls_mode": mode, "tls_info.sni": DOMAIN, "tls_info.version": "TLS 1.3",
           "user": null, "auth": null})
}

struct Ran {
    name: &'static str,
    client: SocketAddr,
    /// tshark field naming the command verbs, for sessions with a clear part.
    verbs: Option<&'static str>,
}

#[test]
fn imap_and_pop3_sessions_live() {
    common::require_root("imap_and_pop3_sessions_live");
    let tmp = TempDir::new("mbox");
    let tb = Testbed::start();
    deliver(&tb);
    let dir = tmp.path();
    let iface = tb.ns.host_if.clone();
    let pcap = dir.join("mailbox.pcapng");
    let cap = Capture::start(&iface, &pcap);
    let tail = Tail::start(&iface, &["--json", "--events"], dir, "json");
    let pop3_only = Tail::start(&iface, &["--json", "--proto", "pop3"], dir, "pop3");
    let human = Tail::start(&iface, &["--color", "never"], dir, "human");
    let srv = tb.ns.server_v4();
    let server = |port| SocketAddr::new(srv.into(), port);
    let base_port = 21000 + (std::process::id() % 2000) as u16 * 10;
    let mut failures = Failures::default();
    let mut ran: Vec<Ran> = Vec::new();

    failures.check("imap_login_clear", || {
        let mut c = Raw::connect(server(143));
        let greeting = c.line();
        assert!(greeting.starts_with("* OK "), "{greeting}");
        let (_, done, _) = c.imap("a1", &format!("LOGIN {USER} {PASSWORD}"));
        assert!(done.starts_with("a1 OK "), "{done}");
        let (_, done, _) = c.imap("a2", "SELECT INBOX");
        assert!(done.starts_with("a2 OK "), "{done}");
        let (found, done, _) = c.imap("a3", "SEARCH ALL");
        assert_eq!(
            (found, done.get(..5)),
            (vec!["* SEARCH 1".to_string()], Some("a3 OK"))
        );
        let (_, done, lits) = c.imap("a4", "FETCH 1 (FLAGS BODY.PEEK[])");
        assert!(done.starts_with("a4 OK "), "{done}");
        assert_eq!(lits.len(), 1, "one literal in the FETCH response");
        let (_, done, _) = c.imap("a5", "STORE 1 +FLAGS (\\Flagged)");
        assert!(done.starts_with("a5 OK "), "{done}");
        let (_, done, _) = c.imap("a6", "LOGOUT");
        assert!(done.starts_with("a6 OK "), "{done}");
        let client = c.local;
        c.drain();
        ran.push(Ran {
            name: "imap_login_clear",
            client,
            verbs: Some("imap.request.command"),
        });
        let rec = tail.session(client);
        assert_fields(
            &rec,
            &with(
                base("imap", client, server(143)),
                json!({
                    "user": USER, "tls": false, "tls_mode": null, "tls_info": null,
                    "auth": {"mechanism": "LOGIN", "user": USER, "result": "OK"},
                    "mailbox": ["INBOX"],
                    "commands": cmds(&[("LOGIN", 1, 0), ("SELECT", 1, 0), ("SEARCH", 1, 0),
                                       ("FETCH", 1, 0), ("STORE", 1, 0), ("LOGOUT", 1, 0)]),
                    // The FETCH response, and the one STORE's flag change brought.
                    "fetched": {"responses": 2, "bytes": lits[0]},
                }),
            ),
        );
    });

    failures.check("imap_login_failed", || {
        let mut c = Raw::connect(server(143));
        c.line();
        let (_, done, _) = c.imap("f1", &format!("LOGIN {USER} {WRONG_PASSWORD}"));
        assert_eq!(done, "f1 NO [AUTHENTICATIONFAILED] Authentication failed.");
        let (_, done, _) = c.imap("f2", "LOGOUT");
        assert!(done.starts_with("f2 OK "), "{done}");
        let client = c.local;
        c.drain();
        ran.push(Ran {
            name: "imap_login_failed",
            client,
            verbs: Some("imap.request.command"),
        });
        let rec = tail.session(client);
        assert_fields(
            &rec,
            &with(
                base("imap", client, server(143)),
                json!({
                    // `user` is the name the client gave; `auth.result` says it failed.
                    "user": USER, "tls": false, "tls_mode": null,
                    "auth": {"mechanism": "LOGIN", "user": USER, "result": "NO"},
                    "mailbox": [],
                    "commands": cmds(&[("LOGIN", 1, 1), ("LOGOUT", 1, 0)]),
                }),
            ),
        );
    });

    failures.check("imap_starttls_143", || {
        let p = base_port;
        let url = |path: &str| format!("imap://{DOMAIN}/{path}");
        curl(
            srv.into(),
            143,
            p,
            &[
                &["--ssl-reqd", &url("INBOX"), "-X", "SEARCH ALL"],
                &["--ssl-reqd", &url("INBOX;MAILINDEX=1")],
                &["--ssl-reqd", &url("INBOX"), "-X", "STORE 1 +FLAGS (\\Seen)"],
            ],
        );
        let client = SocketAddr::new(tb.ns.client_v4().into(), p);
        ran.push(Ran { name: "imap_starttls_143", client, verbs: Some("imap.request.command") });
        let rec = tail.session(client);
        assert_fields(
            &rec,
            &with(
                with(base("imap", client, server(143)), tls_fields("starttls")),
                json!({"mailbox": [], "commands": cmds(&[("CAPABILITY", 1, 0), ("STARTTLS", 1, 0)])}),
            ),
        );
    });

    failures.check("imaps_993", || {
        let p = base_port + 1;
        curl(
            srv.into(),
            993,
            p,
            &[&[&format!("imaps://{DOMAIN}/INBOX"), "-X", "SEARCH ALL"]],
        );
        let client = SocketAddr::new(tb.ns.client_v4().into(), p);
        ran.push(Ran {
            name: "imaps_993",
            client,
            verbs: None,
        });
        let rec = tail.session(client);
        assert_fields(
            &rec,
            &with(
                with(base("imap", client, server(993)), tls_fields("implicit")),
                json!({"mailbox": [], "commands": [], "greeting": null}),
            ),
        );
    });

    failures.check("pop3_stls_110", || {
        let p = base_port + 2;
        curl(
            srv.into(),
            110,
            p,
            &[&["--ssl-reqd", &format!("pop3://{DOMAIN}/")]],
        );
        let client = SocketAddr::new(tb.ns.client_v4().into(), p);
        ran.push(Ran {
            name: "pop3_stls_110",
            client,
            verbs: Some("pop.request.command"),
        });
        let rec = tail.session(client);
        assert_fields(
            &rec,
            &with(
                with(base("pop3", client, server(110)), tls_fields("starttls")),
                json!({"commands": cmds(&[("CAPA", 1, 0), ("STLS", 1, 0)])}),
            ),
        );
    });

    failures.check("pop3s_995", || {
        let p = base_port + 3;
        curl(srv.into(), 995, p, &[&[&format!("pop3s://{DOMAIN}/")]]);
        let client = SocketAddr::new(tb.ns.client_v4().into(), p);
        ran.push(Ran {
            name: "pop3s_995",
            client,
            verbs: None,
        });
        let rec = tail.session(client);
        assert_fields(
            &rec,
            &with(
                with(base("pop3", client, server(995)), tls_fields("implicit")),
                json!({"commands": [], "greeting": null}),
            ),
        );
    });

    // Last: it deletes the message.
    failures.check("pop3_clear_110", || {
        let mut c = Raw::connect(server(110));
        let greeting = c.line();
        assert!(greeting.starts_with("+OK"), "{greeting}");
        assert!(c.pop(&format!("USER {USER}"), false).0.starts_with("+OK"));
        assert!(c
            .pop(&format!("PASS {PASSWORD}"), false)
            .0
            .starts_with("+OK"));
        let (stat, _) = c.pop("STAT", false);
        let (list, sizes) = c.pop("LIST", true);
        assert!(list.starts_with("+OK"), "{list}");
        assert_eq!(sizes.len(), 1, "one message listed: {sizes:?}");
        let size: u64 = sizes[0]
            .strip_prefix("1 ")
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("LIST line {:?}", sizes[0]));
        assert_eq!(stat, format!("+OK 1 {size}"));
        let (uidl, uids) = c.pop("UIDL", true);
        assert!(
            uidl.starts_with("+OK") && uids.len() == 1,
            "{uidl} {uids:?}"
        );
        let (retr, body) = c.pop("RETR 1", true);
        assert!(retr.starts_with("+OK"), "{retr}");
        assert!(
            body.iter().any(|l| l == ".A line that starts with a dot."),
            "{body:?}"
        );
        assert!(c.pop("DELE 1", false).0.starts_with("+OK"));
        assert!(c.pop("QUIT", false).0.starts_with("+OK"));
        let client = c.local;
        c.drain();
        ran.push(Ran {
            name: "pop3_clear_110",
            client,
            verbs: Some("pop.request.command"),
        });
        let rec = tail.session(client);
        assert_fields(
            &rec,
            &with(
                base("pop3", client, server(110)),
                json!({
                    "user": USER, "tls": false, "tls_mode": null, "tls_info": null,
                    "auth": {"mechanism": "USER", "user": USER, "result": "+OK"},
                    "commands": cmds(&[("USER", 1, 0), ("PASS", 1, 0), ("STAT", 1, 0),
                                       ("LIST", 1, 0), ("UIDL", 1, 0), ("RETR", 1, 0),
                                       ("DELE", 1, 0), ("QUIT", 1, 0)]),
                    "retrieved": {"messages": 1, "bytes": size},
                }),
            ),
        );
    });

    cap.stop();
    std::thread::sleep(Duration::from_millis(300));
    let stopped = tail.stop();
    let pop3_stopped = pop3_only.stop();
    let human_stopped = human.stop();
    let lines: Vec<Value> = stopped
        .stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();

    // tshark's dissection names the same commands in the same order.
    for r in &ran {
        let Some(field) = r.verbs else { continue };
        failures.check(&format!("{} vs tshark", r.name), || {
            let rec = lines
                .iter()
                .find(|l| l["type"] == "session" && l["client"] == r.client.to_string())
                .expect("session record");
            let ours = our_verbs(&lines, &rec["id"]);
            let theirs = tshark_verbs(&pcap, field, r.client);
            assert!(!theirs.is_empty(), "tshark saw no commands");
            assert_eq!(ours, theirs, "command verbs: ours vs tshark");
        });
    }

    failures.check("one record per session, exit summary", || {
        let sessions: Vec<&Value> = lines.iter().filter(|l| l["type"] == "session").collect();
        assert_eq!(sessions.len(), ran.len(), "records: {sessions:?}");
        let imap = ran.iter().filter(|r| r.name.starts_with("imap")).count();
        let pop3 = ran.len() - imap;
        let want = format!(
            "mail-trace: {} sessions (smtp 0, pop3 {pop3}, imap {imap}), {} shown;",
            ran.len(),
            ran.len()
        );
        assert!(
            stopped.stderr.contains(&want),
            "{:?} lacks {want:?}",
            stopped.stderr
        );
    });

    failures.check("--proto pop3", || {
        let shown: Vec<String> = pop3_stopped
            .stdout
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter_map(|r| r["client"].as_str().map(String::from))
            .collect();
        let want: Vec<String> = ran
            .iter()
            .filter(|r| r.name.starts_with("pop3"))
            .map(|r| r.client.to_string())
            .collect();
        assert_eq!(shown, want, "sessions shown by --proto pop3, in order");
    });

    failures.check("imap_login_failed (reply event)", || {
        let r = ran
            .iter()
            .find(|r| r.name == "imap_login_failed")
            .expect("failed login ran");
        let rec = lines
            .iter()
            .find(|l| l["type"] == "session" && l["client"] == r.client.to_string())
            .expect("record");
        let replies: Vec<(Value, Value)> = lines
            .iter()
            .filter(|l| l["type"] == "reply" && l["session"] == rec["id"])
            .map(|l| (l["code"].clone(), l["enhanced"].clone()))
            .collect();
        assert!(
            replies.contains(&(json!("NO"), json!("AUTHENTICATIONFAILED"))),
            "no NO [AUTHENTICATIONFAILED] reply: {replies:?}"
        );
    });

    failures.check("human view", || {
        let text = &human_stopped.stdout;
        let session_lines = |name: &str| -> Vec<String> {
            let r = ran.iter().find(|r| r.name == name).expect("scenario ran");
            let head = text
                .lines()
                .find(|l| l.contains(&format!(" {} -> ", r.client)))
                .unwrap_or_else(|| panic!("no header line for {name} in:\n{text}"));
            let id = head.split(' ').nth(1).expect("session id").to_string();
            text.lines()
                .filter_map(|l| l.split_once(' ').map(|(_, rest)| rest))
                .filter(|l| l.starts_with(&format!("{id} ")))
                .map(String::from)
                .collect()
        };
        // The untagged summary of SELECT reads as the JSON says it, not folded like an EHLO.
        let rec = lines
            .iter()
            .find(|l| l["type"] == "session" && l["client"] == ran[0].client.to_string())
            .expect("imap_login_clear record");
        let select_summary = lines
            .iter()
            .filter(|l| l["type"] == "reply" && l["session"] == rec["id"] && l["code"] == "*")
            .find_map(|l| l["text"].as_str().filter(|t| t.contains("EXISTS")))
            .expect("a * reply with EXISTS");
        let shown = session_lines("imap_login_clear");
        assert!(
            shown
                .iter()
                .any(|l| l.ends_with(&format!(" S * {select_summary}"))),
            "no line 'S * {select_summary}' in {shown:#?}"
        );
        let failed = session_lines("imap_login_failed");
        let end = failed.last().cloned().unwrap_or_default();
        assert!(
            end.contains(" end: auth alice@mx.test FAILED (NO), no tls,"),
            "failed login end line: {end}"
        );
        let pop = session_lines("pop3_clear_110");
        assert!(
            pop.iter().any(|l| l.ends_with(" C PASS <redacted>")),
            "{pop:#?}"
        );
        assert!(
            pop.last()
                .is_some_and(|l| l.contains(" end: auth alice@mx.test, no tls,")),
            "{pop:#?}"
        );
    });

    failures.check("secrets", || {
        for secret in [PASSWORD, WRONG_PASSWORD] {
            for form in secret_forms(USER, secret) {
                assert!(
                    !stopped.stdout.contains(&form)
                        && !stopped.stderr.contains(&form)
                        && !pop3_stopped.stdout.contains(&form)
                        && !human_stopped.stdout.contains(&form),
                    "the password leaked as {form:?}"
                );
            }
        }
    });
    failures.assert_none();
}
