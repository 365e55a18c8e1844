//! `mail-trace tail` live against the real test bed (issue 4): Postfix in a namespace, swaks and a
//! raw client on the root side, several tail instances attached to the root end of the veth at
//! once. Every scenario's session record must say exactly what the client and Postfix did: the
//! envelope and every reply from the client's side, the queue id from Postfix's own log, the SNI
//! the client sent. The filters (`--errors`, `--from`, `-w`) and the human view are checked on the
//! same sessions, so one test bed serves the whole file.
//!
//! Each scenario's client binds its own source port, so a record is matched to its scenario by
//! the client address; a failing check names its scenario and the others still run.

mod common;

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::clients::{swaks, RawSmtp};
use common::tailer::{assert_fields, secret_forms, Failures, Tail};
use common::{run_ok, TempDir, Testbed, DOMAIN, PASSWORD};
use serde_json::{json, Value};

const USER: &str = "alice@mx.test";
const WRONG_PASSWORD: &str = "Wr0ng-Pa55";
const SENDER: &str = "sender@client.test";
/// The envelope sender of the one session `--from` must select.
const PICKED_SENDER: &str = "pick-me@client.test";

enum Client {
    /// swaks with these arguments; the message is `data` (sent with `--data`).
    Swaks(Vec<String>),
    /// Raw client: BDAT in two chunks.
    Bdat,
    /// Raw client: MAIL FROM with BODY=8BITMIME and an 8-bit body.
    EightBitMime,
    /// Raw client: a plain session over IPv6 (swaks lacks IO::Socket::INET6 here).
    RawPlainV6,
}

struct Scenario {
    name: &'static str,
    port: u16,
    client: Client,
    /// The DATA content (or BDAT chunks joined) exactly as sent, so `size` is known.
    message: Vec<u8>,
    /// Messages Postfix queues for this connection (per its log).
    queued: usize,
    /// A 4xx/5xx reply is visible in clear: `--errors` must show the session.
    fails: bool,
    /// Record fields this scenario must produce, given what Postfix logged.
    expect: Box<dyn Fn(&Facts) -> Value>,
}

/// What the test knows independently of mail-trace.
struct Facts {
    client: SocketAddr,
    server: SocketAddr,
    /// Queue ids Postfix logged for the connection.
    queue_ids: Vec<String>,
    /// Bytes of the message as sent.
    size: usize,
}

fn message(name: &str, from_header: &str, to: &str) -> Vec<u8> {
    format!(
        "From: {from_header}\r\nTo: {to}\r\nSubject: live tail {name}\r\n\r\n\
         This is the {name} scenario.\r\nSecond line.\r\n"
    )
    .into_bytes()
}

fn rcpt(addr: &str, code: u16, enhanced: &str, text: &str) -> Value {
    json!({"addr": addr, "params": {}, "code": code, "enhanced": enhanced, "text": text})
}

fn ok(addr: &str) -> Value {
    rcpt(addr, 250, "2.1.5", "Ok")
}

fn unknown(addr: &str) -> Value {
    rcpt(
        addr,
        550,
        "5.1.1",
        &format!("<{addr}>: Recipient address rejected: User unknown in virtual mailbox table"),
    )
}

/// A transaction whose message was queued, sent with DATA.
fn queued(f: &Facts, from: &str, params: Value, rcpts: Vec<Value>) -> Value {
    let id = f.queue_ids.first().expect("a queue id in Postfix's log");
    json!({
        "mail_from": from, "mail_params": params, "rcpt": rcpts,
        "data_code": 354, "bdat_chunks": 0, "size": f.size, "queue_id": id, "headers": null,
        "reply": {"code": 250, "enhanced": "2.0.0", "text": format!("Ok: queued as {id}")},
    })
}

/// A transaction that ended with every recipient refused.
fn refused(rcpts: Vec<Value>) -> Value {
    json!({
        "mail_from": SENDER, "mail_params": {}, "rcpt": rcpts,
        "data_code": null, "bdat_chunks": 0, "size": null, "queue_id": null, "headers": null,
        "reply": null,
    })
}

/// Fields of every clear session.
fn clear(f: &Facts, auth: Value, txs: Vec<Value>) -> Value {
    json!({
        "proto": "smtp", "client": f.client.to_string(), "server": f.server.to_string(),
        "partial": false, "gaps": 0, "anomalies": [],
        "tls": false, "tls_mode": null, "tls_info": null,
        "auth": auth, "transactions": txs,
    })
}

/// Fields of a session that turned to TLS: nothing after the switch is dissected.
fn encrypted(f: &Facts, mode: &str, commands: u64, replies: u64) -> Value {
    json!({
        "proto": "smtp", "client": f.client.to_string(), "server": f.server.to_string(),
        "partial": false, "gaps": 0, "anomalies": [],
        "tls": true, "tls_mode": mode, "tls_info.sni": DOMAIN, "tls_info.version": "TLS 1.3",
        "auth": null, "transactions": [], "commands": commands, "replies": replies,
    })
}

fn sw(args: &[&str]) -> Client {
    Client::Swaks(args.iter().map(|s| s.to_string()).collect())
}

/// swaks with `args` and AUTH by `mech` as USER with `password`.
fn sw_auth(args: &[&str], mech: &str, password: &str) -> Client {
    let auth = [
        "--auth",
        mech,
        "--auth-user",
        USER,
        "--auth-password",
        password,
    ];
    Client::Swaks(args.iter().chain(&auth).map(|s| s.to_string()).collect())
}

fn scenarios() -> Vec<Scenario> {
    let plain = |name: &'static str, to: &str| message(name, SENDER, to);
    let mut v = vec![
        Scenario {
            name: "plain_25",
            port: 25,
            client: sw(&["--to", USER]),
            message: plain("plain_25", USER),
            queued: 1,
            fails: false,
            expect: Box::new(|f| {
                clear(
                    f,
                    json!(null),
                    vec![queued(f, SENDER, json!({}), vec![ok(USER)])],
                )
            }),
        },
        Scenario {
            name: "starttls_25",
            port: 25,
            client: sw(&["--to", USER, "--tls", "--tls-sni", DOMAIN]),
            message: plain("starttls_25", USER),
            queued: 1,
            fails: false,
            // EHLO and STARTTLS; the greeting, the EHLO reply and the 220 to STARTTLS.
            expect: Box::new(|f| encrypted(f, "starttls", 2, 3)),
        },
        Scenario {
            name: "submission_starttls_auth_plain",
            port: 587,
            client: sw_auth(
                &["--to", "bob@mx.test", "--tls", "--tls-sni", DOMAIN],
                "PLAIN",
                PASSWORD,
            ),
            message: plain("submission_starttls_auth_plain", "bob@mx.test"),
            queued: 1,
            fails: false,
            expect: Box::new(|f| encrypted(f, "starttls", 2, 3)),
        },
        Scenario {
            name: "submission_auth_login_clear",
            port: 587,
            client: sw_auth(&["--to", "bob@mx.test"], "LOGIN", PASSWORD),
            message: plain("submission_auth_login_clear", "bob@mx.test"),
            queued: 1,
            fails: false,
            expect: Box::new(|f| {
                clear(
                    f,
                    json!({"mechanism": "LOGIN", "user": USER, "code": 235}),
                    vec![queued(f, SENDER, json!({}), vec![ok("bob@mx.test")])],
                )
            }),
        },
        Scenario {
            name: "smtps_465",
            port: 465,
            client: sw_auth(
                &[
                    "--to",
                    "bob@mx.test",
                    "--tls-on-connect",
                    "--tls-sni",
                    DOMAIN,
                ],
                "PLAIN",
                PASSWORD,
            ),
            message: plain("smtps_465", "bob@mx.test"),
            queued: 1,
            fails: false,
            expect: Box::new(|f| {
                let mut v = encrypted(f, "implicit", 0, 0);
                v["greeting"] = json!(null);
                v
            }),
        },
        Scenario {
            name: "submission_wrong_password",
            port: 587,
            client: sw_auth(&["--to", "bob@mx.test"], "PLAIN", WRONG_PASSWORD),
            message: plain("submission_wrong_password", "bob@mx.test"),
            queued: 0,
            fails: true,
            expect: Box::new(|f| {
                clear(
                    f,
                    json!({"mechanism": "PLAIN", "user": USER, "code": 535}),
                    vec![],
                )
            }),
        },
        Scenario {
            name: "submission_no_auth",
            port: 587,
            client: sw(&["--to", USER]),
            message: plain("submission_no_auth", USER),
            queued: 0,
            fails: true,
            expect: Box::new(|f| {
                clear(
                    f,
                    json!(null),
                    vec![refused(vec![rcpt(
                        USER,
                        554,
                        "5.7.1",
                        "<alice@mx.test>: Recipient address rejected: Access denied",
                    )])],
                )
            }),
        },
        Scenario {
            // The refused recipient first: a reply paired with the wrong RCPT shows at once.
            name: "pipelining_two_rcpt",
            port: 25,
            client: sw(&["--to", "nobody@mx.test,alice@mx.test", "--pipeline"]),
            message: plain("pipelining_two_rcpt", USER),
            queued: 1,
            fails: true,
            expect: Box::new(|f| {
                clear(
                    f,
                    json!(null),
                    vec![queued(
                        f,
                        SENDER,
                        json!({}),
                        vec![unknown("nobody@mx.test"), ok(USER)],
                    )],
                )
            }),
        },
        Scenario {
            name: "three_rcpt",
            port: 25,
            client: sw(&["--to", "alice@mx.test,bob@mx.test,carol@mx.test"]),
            message: plain("three_rcpt", USER),
            queued: 1,
            fails: false,
            expect: Box::new(|f| {
                clear(
                    f,
                    json!(null),
                    vec![queued(
                        f,
                        SENDER,
                        json!({}),
                        vec![ok(USER), ok("bob@mx.test"), ok("carol@mx.test")],
                    )],
                )
            }),
        },
        Scenario {
            name: "unknown_rcpt",
            port: 25,
            client: sw(&["--to", "nobody@mx.test"]),
            message: plain("unknown_rcpt", "nobody@mx.test"),
            queued: 0,
            fails: true,
            expect: Box::new(|f| {
                clear(
                    f,
                    json!(null),
                    vec![refused(vec![unknown("nobody@mx.test")])],
                )
            }),
        },
        Scenario {
            name: "mixed_rcpt",
            port: 25,
            client: sw(&["--to", "alice@mx.test,nobody@mx.test"]),
            message: plain("mixed_rcpt", USER),
            queued: 1,
            fails: true,
            expect: Box::new(|f| {
                clear(
                    f,
                    json!(null),
                    vec![queued(
                        f,
                        SENDER,
                        json!({}),
                        vec![ok(USER), unknown("nobody@mx.test")],
                    )],
                )
            }),
        },
        Scenario {
            name: "relay_denied",
            port: 25,
            client: sw(&["--to", "someone@example.org"]),
            message: plain("relay_denied", "someone@example.org"),
            queued: 0,
            fails: true,
            expect: Box::new(|f| {
                clear(
                    f,
                    json!(null),
                    vec![refused(vec![rcpt(
                        "someone@example.org",
                        554,
                        "5.7.1",
                        "<someone@example.org>: Relay access denied",
                    )])],
                )
            }),
        },
        Scenario {
            name: "header_from_differs",
            port: 25,
            client: sw(&["--to", USER]),
            message: message("header_from_differs", "Boss <boss@elsewhere.test>", USER),
            queued: 1,
            fails: false,
            expect: Box::new(|f| {
                clear(
                    f,
                    json!(null),
                    vec![queued(f, SENDER, json!({}), vec![ok(USER)])],
                )
            }),
        },
        Scenario {
            name: "from_filter",
            port: 25,
            // swaks takes the last --from.
            client: sw(&["--to", "carol@mx.test", "--from", PICKED_SENDER]),
            message: message("from_filter", PICKED_SENDER, "carol@mx.test"),
            queued: 1,
            fails: false,
            expect: Box::new(|f| {
                clear(
                    f,
                    json!(null),
                    vec![queued(
                        f,
                        PICKED_SENDER,
                        json!({}),
                        vec![ok("carol@mx.test")],
                    )],
                )
            }),
        },
        Scenario {
            name: "bdat_two_chunks",
            port: 25,
            client: Client::Bdat,
            message: [BDAT_PART1, BDAT_PART2].concat(),
            queued: 1,
            fails: false,
            expect: Box::new(|f| {
                let id = f.queue_ids.first().expect("a queue id in Postfix's log");
                let tx = json!({
                    "mail_from": SENDER, "mail_params": {}, "rcpt": [ok(USER)],
                    "data_code": null, "bdat_chunks": 2, "size": f.size, "queue_id": id,
                    "headers": null,
                    "reply": {"code": 250, "enhanced": "2.0.0",
                              "text": format!("Ok: {} bytes queued as {id}", f.size)},
                });
                clear(f, json!(null), vec![tx])
            }),
        },
        Scenario {
            name: "body_8bitmime",
            port: 25,
            client: Client::EightBitMime,
            message: EIGHT_BIT_BODY.as_bytes().to_vec(),
            queued: 1,
            fails: false,
            expect: Box::new(|f| {
                clear(
                    f,
                    json!(null),
                    vec![queued(
                        f,
                        SENDER,
                        json!({"BODY": "8BITMIME"}),
                        vec![ok(USER)],
                    )],
                )
            }),
        },
        Scenario {
            name: "plain_25_ipv6",
            port: 25,
            client: Client::RawPlainV6,
            message: plain("plain_25_ipv6", USER),
            queued: 1,
            fails: false,
            expect: Box::new(|f| {
                clear(
                    f,
                    json!(null),
                    vec![queued(f, SENDER, json!({}), vec![ok(USER)])],
                )
            }),
        },
        Scenario {
            // Over 1 MiB: GSO segments up to 64 KiB and many ring-buffer records.
            name: "large_message",
            port: 25,
            client: sw(&["--to", USER]),
            message: large_message(),
            queued: 1,
            fails: false,
            expect: Box::new(|f| {
                clear(
                    f,
                    json!(null),
                    vec![queued(f, SENDER, json!({}), vec![ok(USER)])],
                )
            }),
        },
    ];
    v.shrink_to_fit();
    v
}

fn large_message() -> Vec<u8> {
    let mut m = message("large_message", SENDER, USER);
    let mut n = 0;
    while m.len() < 1_150_000 {
        m.extend_from_slice(
            format!("line {n:06}: the tail must count every one of these bytes.\r\n").as_bytes(),
        );
        n += 1;
    }
    m
}

const BDAT_PART1: &[u8] =
    b"From: sender@client.test\r\nTo: alice@mx.test\r\nSubject: chunked\r\n\r\n";
const BDAT_PART2: &[u8] = b"First line of a chunked body.\r\nSecond line.\r\n";
const EIGHT_BIT_BODY: &str = "From: sender@client.test\r\nTo: alice@mx.test\r\nSubject: 8bit\r\n\
     MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\
     Content-Transfer-Encoding: 8bit\r\n\r\nGrüße aus Zürich. 日本語のテキスト。\r\n";

/// Runs the scenario's client from `local_port` (swaks) or an ephemeral port (raw client) and
/// returns the client address it used.
fn run_client(
    sc: &Scenario,
    (client, server): (IpAddr, IpAddr),
    local_port: u16,
    dir: &Path,
) -> SocketAddr {
    let to = SocketAddr::new(server, sc.port);
    match &sc.client {
        Client::Swaks(args) => {
            let data = dir.join(format!("{}.eml", sc.name));
            // swaks ends the message with its own CRLF before the final dot.
            let text = sc
                .message
                .strip_suffix(b"\r\n")
                .expect("message ends with CRLF");
            common::write(&data, text);
            let data_arg = format!("@{}", data.display());
            let port = local_port.to_string();
            let mut all: Vec<&str> = args.iter().map(String::as_str).collect();
            all.extend(["--local-port", &port, "--data", &data_arg]);
            let r = swaks(server, sc.port, &all);
            // 0: delivered; 23/24/25: refused at RCPT/AUTH, as some scenarios mean to be.
            assert!(
                [0, 23, 24, 25, 28].contains(&r.code),
                "swaks for {} exited {}: {}",
                sc.name,
                r.code,
                r.transcript
            );
            SocketAddr::new(client, local_port)
        }
        Client::Bdat => {
            let mut c = RawSmtp::connect(to);
            let local = c.local;
            c.cmd("EHLO client.test");
            c.cmd(&format!("MAIL FROM:<{SENDER}>"));
            c.cmd(&format!("RCPT TO:<{USER}>"));
            c.send(format!("BDAT {}\r\n", BDAT_PART1.len()).as_bytes());
            c.send(BDAT_PART1);
            assert_eq!(c.read_reply().code, 250, "first BDAT chunk");
            c.send(format!("BDAT {} LAST\r\n", BDAT_PART2.len()).as_bytes());
            c.send(BDAT_PART2);
            assert_eq!(c.read_reply().code, 250, "last BDAT chunk");
            c.quit();
            local
        }
        Client::RawPlainV6 => {
            let mut c = RawSmtp::connect(to);
            let local = c.local;
            c.cmd("EHLO client.test");
            c.cmd(&format!("MAIL FROM:<{SENDER}>"));
            c.cmd(&format!("RCPT TO:<{USER}>"));
            assert_eq!(c.cmd("DATA").code, 354);
            c.send(&sc.message);
            c.send(b".\r\n");
            assert_eq!(c.read_reply().code, 250, "end of data over IPv6");
            c.quit();
            local
        }
        Client::EightBitMime => {
            let mut c = RawSmtp::connect(to);
            let local = c.local;
            c.cmd("EHLO client.test");
            assert_eq!(
                c.cmd(&format!("MAIL FROM:<{SENDER}> BODY=8BITMIME")).code,
                250
            );
            c.cmd(&format!("RCPT TO:<{USER}>"));
            assert_eq!(c.cmd("DATA").code, 354);
            c.send(EIGHT_BIT_BODY.as_bytes());
            c.send(b".\r\n");
            assert_eq!(c.read_reply().code, 250, "end of 8-bit data");
            c.quit();
            local
        }
    }
}

/// `tshark -q -z conv,tcp`: the endpoint pairs of every TCP conversation in `file`.
fn tshark_conversations(file: &Path) -> Vec<(String, String)> {
    let out = run_ok(
        Command::new("tshark")
            .arg("-r")
            .arg(file)
            .args(["-q", "-z", "conv,tcp"]),
        Duration::from_secs(60),
        "tshark conv,tcp",
    );
    out.stdout
        .lines()
        .filter_map(|l| {
            let (a, rest) = l.split_once("<->")?;
            let b = rest.split_whitespace().next()?;
            Some((a.trim().to_string(), b.to_string()))
        })
        .collect()
}

/// The human lines of session `#id`, without the leading time and the trailing latency.
fn human_lines(out: &str, id: u64) -> Vec<String> {
    let tag = format!("#{id} ");
    out.lines()
        .filter_map(|l| {
            let (_, rest) = l.split_once(' ')?;
            rest.starts_with(&tag).then_some(rest)
        })
        // `!!` lines are findings, checked by their own tests; this checks the dialogue.
        .filter(|l| !l[tag.len()..].starts_with("!! "))
        .map(|l| match l.rsplit_once(" (") {
            Some((head, tail)) if tail.ends_with(" ms)") => head.to_string(),
            _ => l.to_string(),
        })
        .collect()
}

#[test]
fn smtp_sessions_live() {
    common::require_root("smtp_sessions_live");
    let tmp = TempDir::new("tail");
    let tb = Testbed::start();
    let iface = tb.ns.host_if.clone();
    let dir = tmp.path();
    let picked_pcap = dir.join("picked.pcapng");
    common::writable_by_dropped_user(dir);
    let from_glob = "pick-me@*";
    let picked_arg = picked_pcap.display().to_string();

    // Several operators at once: each view of the same traffic is checked below.
    let main = Tail::start(&iface, &["--json"], dir, "json");
    let headers = Tail::start(&iface, &["--json", "--show-headers"], dir, "headers");
    let errors = Tail::start(&iface, &["--json", "--errors"], dir, "errors");
    let picked = Tail::start(
        &iface,
        &["--json", "--from", from_glob, "-w", &picked_arg],
        dir,
        "from",
    );
    let human = Tail::start(&iface, &["--color", "never"], dir, "human");
    let carol = Tail::start(&iface, &["--json", "--rcpt", "carol@*"], dir, "rcpt");
    // The one view allowed to show secrets: proves the secret is on the wire where the tracer
    // sees it, so its absence from the other views means something.
    let events = Tail::start(
        &iface,
        &["--json", "--events", "--show-secrets"],
        dir,
        "secrets-shown",
    );

    let server: IpAddr = tb.ns.server_v4().into();
    let base = 20000 + (std::process::id() % 2000) as u16 * 20;
    let mut failures = Failures::default();
    let mut ran: Vec<(&'static str, SocketAddr, bool, Vec<String>)> = Vec::new();
    for (i, sc) in scenarios().iter().enumerate() {
        failures.check(sc.name, || {
            let (client_ip, server): (IpAddr, IpAddr) = match sc.client {
                Client::RawPlainV6 => (tb.ns.client_v6().into(), tb.ns.server_v6().into()),
                _ => (tb.ns.client_v4().into(), server),
            };
            let client = run_client(sc, (client_ip, server), base + i as u16, dir);
            let queue_ids = if sc.queued > 0 {
                tb.postfix.queue_ids_for(client, sc.queued)
            } else {
                tb.postfix.queue_ids_after_disconnect(client)
            };
            assert_eq!(queue_ids.len(), sc.queued, "messages in Postfix's log");
            ran.push((sc.name, client, sc.fails, queue_ids.clone()));
            let facts = Facts {
                client,
                server: SocketAddr::new(server, sc.port),
                queue_ids,
                size: sc.message.len(),
            };
            let rec = main.session(client);
            assert_fields(&rec, &(sc.expect)(&facts));
            // Headers stay hidden without --show-headers.
            for tx in rec["transactions"].as_array().into_iter().flatten() {
                assert_eq!(tx["headers"], Value::Null, "headers without --show-headers");
            }
        });
    }

    // A session already open when tail starts: picked up mid-stream and marked partial.
    failures.check("partial (tail started mid-session)", || {
        let mut c = RawSmtp::connect(SocketAddr::new(server, 25));
        let client = c.local;
        c.cmd("EHLO client.test");
        let late = Tail::start(&iface, &["--json"], dir, "late");
        c.cmd(&format!("MAIL FROM:<{SENDER}>"));
        c.cmd(&format!("RCPT TO:<{USER}>"));
        assert_eq!(c.cmd("DATA").code, 354);
        let body = message("partial", SENDER, USER);
        c.send(&body);
        c.send(b".\r\n");
        assert_eq!(c.read_reply().code, 250, "end of data");
        c.quit();
        let queue_ids = tb.postfix.queue_ids_for(client, 1);
        ran.push(("partial", client, false, queue_ids.clone()));
        let rec = late.session(client);
        let f = Facts {
            client,
            server: SocketAddr::new(server, 25),
            queue_ids,
            size: body.len(),
        };
        let mut want = clear(
            &f,
            json!(null),
            vec![queued(&f, SENDER, json!({}), vec![ok(USER)])],
        );
        want["partial"] = json!(true);
        assert_fields(&rec, &want);
        late.stop();
    });

    // --show-headers: the header From, not the envelope sender.
    failures.check("header_from_differs (--show-headers)", || {
        let (_, client, ..) = ran
            .iter()
            .find(|r| r.0 == "header_from_differs")
            .expect("header scenario ran");
        let rec = headers.session(*client);
        assert_eq!(
            rec["transactions"][0]["headers"],
            json!({
                "from": "Boss <boss@elsewhere.test>", "to": USER, "cc": null,
                "subject": "live tail header_from_differs", "message_id": null, "date": null,
                "content_type": null,
            }),
            "{rec}"
        );
        assert_eq!(rec["transactions"][0]["mail_from"], SENDER);
    });

    // Every record is written at session end; let the last ones reach the files before stopping.
    let last = ran.last().map(|r| r.1);
    for t in [&headers, &events] {
        if let Some(c) = last {
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| t.session(c)));
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    let stopped: Vec<(String, common::tailer::Stopped)> =
        [main, headers, errors, picked, human, carol, events]
            .into_iter()
            .map(|t| (t.what.clone(), t.stop()))
            .collect();
    let out = |what: &str| &stopped.iter().find(|s| s.0 == what).expect("tail").1;
    let records = |what: &str| -> Vec<Value> {
        out(what)
            .stdout
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|r| r["type"] == "session")
            .collect()
    };
    let clients = |what: &str| -> BTreeSet<String> {
        records(what)
            .iter()
            .filter_map(|r| r["client"].as_str().map(String::from))
            .collect()
    };

    failures.check("--json: one record per session, exit summary", || {
        let recs = records("json");
        assert_eq!(recs.len(), ran.len(), "one record per scenario");
        let all: BTreeSet<String> = ran.iter().map(|r| r.1.to_string()).collect();
        assert_eq!(clients("json"), all);
        let visible_queued = recs
            .iter()
            .flat_map(|r| r["transactions"].as_array().cloned().unwrap_or_default())
            .filter(|t| !t["queue_id"].is_null())
            .count();
        let n = ran.len();
        let summary = &out("json").stderr;
        let want = format!(
            "mail-trace: {n} sessions (smtp {n}, pop3 0, imap 0), {n} shown; {visible_queued} messages queued;"
        );
        assert!(summary.contains(&want), "exit summary {summary:?} lacks {want:?}");
    });

    failures.check("--errors", || {
        let want: BTreeSet<String> = ran
            .iter()
            .filter(|r| r.2)
            .map(|r| r.1.to_string())
            .collect();
        assert_eq!(clients("errors"), want, "sessions shown by --errors");
    });

    failures.check("--rcpt", || {
        let want: BTreeSet<String> = ran
            .iter()
            .filter(|r| ["three_rcpt", "from_filter"].contains(&r.0))
            .map(|r| r.1.to_string())
            .collect();
        assert_eq!(clients("rcpt"), want, "sessions shown by --rcpt carol@*");
    });

    failures.check("pipelining_two_rcpt (on the wire)", || {
        // Commands completed by one segment share its time: swaks really pipelined.
        let (_, client, ..) = ran
            .iter()
            .find(|r| r.0 == "pipelining_two_rcpt")
            .expect("pipelining ran");
        let lines: Vec<Value> = out("secrets-shown")
            .stdout
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let id = lines
            .iter()
            .find(|l| l["type"] == "session" && l["client"] == client.to_string())
            .map(|l| l["id"].clone())
            .expect("pipelining record with --events");
        let cmds: Vec<(String, Value)> = lines
            .iter()
            .filter(|l| l["type"] == "command" && l["session"] == id)
            .map(|l| {
                (
                    l["verb"].as_str().unwrap_or("").to_string(),
                    l["ts"].clone(),
                )
            })
            .collect();
        let verbs: Vec<&str> = cmds.iter().map(|c| c.0.as_str()).collect();
        assert_eq!(verbs, ["EHLO", "MAIL", "RCPT", "RCPT", "DATA", "QUIT"]);
        assert!(
            cmds[1..5].iter().all(|c| c.1 == cmds[1].1),
            "MAIL, RCPT, RCPT, DATA not in one segment: {cmds:?}"
        );
    });

    failures.check("--from and -w", || {
        let (_, client, ..) = ran
            .iter()
            .find(|r| r.0 == "from_filter")
            .expect("from_filter ran");
        let recs = records("from");
        assert_eq!(
            recs.len(),
            1,
            "--from {from_glob} shows one session: {recs:?}"
        );
        assert_eq!(recs[0]["client"], client.to_string());
        assert_eq!(recs[0]["transactions"][0]["mail_from"], PICKED_SENDER);
        let convs = tshark_conversations(&picked_pcap);
        assert_eq!(
            convs,
            vec![(client.to_string(), SocketAddr::new(server, 25).to_string())],
            "conversations in the -w file"
        );
    });

    failures.check("human output of plain_25", || {
        let (_, client, _, ids) = ran
            .iter()
            .find(|r| r.0 == "plain_25")
            .expect("plain_25 ran");
        let qid = ids.first().expect("queue id");
        let text = &out("human").stdout;
        let srv = SocketAddr::new(server, 25);
        let rec = records("json")
            .into_iter()
            .find(|r| r["client"] == client.to_string())
            .expect("json record of plain_25");
        // The header names the process owning the server socket, as the JSON record does.
        let head = format!(
            "SMTP {client} -> {srv} postfix/smtpd[{}]",
            rec["process"]["pid"]
        );
        let id: u64 = text
            .lines()
            .find(|l| l.ends_with(&head))
            .and_then(|l| l.split(' ').nth(1)?.strip_prefix('#')?.parse().ok())
            .unwrap_or_else(|| panic!("no header line {head:?} in:\n{text}"));
        assert_eq!(rec["process"]["comm"], "postfix/smtpd");
        let lines = human_lines(text, id);
        let end = lines.last().cloned().unwrap_or_default();
        let mut want: Vec<String> = [
            head.clone(),
            "S 220 mx.test ESMTP Postfix".into(),
            "C EHLO client.test".into(),
            "S 250 mx.test [PIPELINING SIZE VRFY ETRN STARTTLS ENHANCEDSTATUSCODES 8BITMIME DSN SMTPUTF8 CHUNKING]".into(),
            format!("C MAIL FROM:<{SENDER}>"),
            "S 250 2.1.0 Ok".into(),
            format!("C RCPT TO:<{USER}>"),
            "S 250 2.1.5 Ok".into(),
            "C DATA".into(),
            "S 354 End data with <CR><LF>.<CR><LF>".into(),
            format!("S 250 2.0.0 Ok: queued as {qid}"),
            "C QUIT".into(),
            "S 221 2.0.0 Bye".into(),
        ]
        .iter()
        .map(|l| format!("#{id} {l}"))
        .collect();
        want.push(format!(
            "#{id} end: 1 queued ({qid}), rcpt 1 ok / 0 rejected, no tls, "
        ));
        // The duration is rounded to milliseconds there: compared within a millisecond.
        let (end_head, end_rest) = end.split_at(end.find(", no tls, ").map_or(0, |i| i + 10));
        let mut got = lines.clone();
        if let Some(l) = got.last_mut() {
            *l = end_head.to_string();
        }
        assert_eq!(got, want, "human lines of plain_25 (end line: {end})");
        let secs = rec["duration_ms"].as_f64().unwrap_or(0.0) / 1000.0;
        let (shown, bytes) = end_rest.split_once(" s, ").unwrap_or_default();
        let shown: f64 = shown.parse().unwrap_or(-1.0);
        assert!((shown - secs).abs() <= 0.001, "duration {shown} s vs record {secs} s");
        assert_eq!(
            bytes,
            format!("{}/{} bytes", rec["bytes"]["c"], rec["bytes"]["s"]),
            "end line bytes vs the JSON record"
        );
    });

    failures.check("human output of submission_wrong_password", || {
        let (_, client, ..) = ran
            .iter()
            .find(|r| r.0 == "submission_wrong_password")
            .expect("wrong password ran");
        let text = &out("human").stdout;
        let head = text
            .lines()
            .find(|l| l.contains(&format!(" SMTP {client} -> ")))
            .unwrap_or_else(|| panic!("no header line for {client} in:\n{text}"));
        let id = head.split(' ').nth(1).expect("session id");
        let end = text
            .lines()
            .find(|l| l.contains(&format!(" {id} end: ")))
            .expect("end line");
        assert!(
            end.contains(&format!(
                " {id} end: 0 queued, rcpt 0 ok / 0 rejected, auth {USER} FAILED (535), no tls, "
            )),
            "{end}"
        );
    });

    failures.check("secrets", || {
        let shown = &out("secrets-shown").stdout;
        assert!(
            shown.contains(&secret_forms(USER, PASSWORD)[1])
                && shown.contains(&secret_forms(USER, WRONG_PASSWORD)[2]),
            "--show-secrets shows neither the LOGIN password nor the wrong PLAIN one"
        );
        for (what, s) in stopped.iter().filter(|s| s.0 != "secrets-shown") {
            for (secret, name) in [(PASSWORD, "password"), (WRONG_PASSWORD, "wrong password")] {
                for form in secret_forms(USER, secret) {
                    assert!(
                        !s.stdout.contains(&form) && !s.stderr.contains(&form),
                        "tail ({what}) printed the {name} as {form:?}"
                    );
                }
            }
        }
    });
    failures.assert_none();
}
