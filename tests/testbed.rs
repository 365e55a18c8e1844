//! The real test bed: Postfix and Dovecot in a namespace, one scenario per TCP connection, each
//! captured by tshark on the root-namespace end of the veth. Asserts what Postfix answered (reply
//! codes in order, queue ids in Postfix's own log). With `MT_WRITE_FIXTURES=1` it also writes
//! `tests/fixtures/testbed/<scenario>.pcapng` and `<scenario>.json` (documented in
//! tests/fixtures/testbed/README.md) for the session-engine tests.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use common::clients::{swaks, RawSmtp, Reply};
use common::tshark::{self, Capture};
use common::{TempDir, Testbed, PASSWORD};
use serde_json::{json, Value};

const USER: &str = "alice@mx.test";

/// How a scenario's client talks.
enum Client {
    Swaks(Vec<String>),
    Bdat,
    EightBitMime,
    /// The raw client's plain session (swaks needs IO::Socket::INET6 for IPv6).
    RawPlain,
}

struct Scenario {
    name: &'static str,
    description: &'static str,
    port: u16,
    v6: bool,
    tls_mode: Option<&'static str>,
    /// Mechanism, and whether the right password is used.
    auth: Option<(&'static str, bool)>,
    client: Client,
    /// Every reply code of the session as the client saw it, in order (inside TLS too).
    codes: &'static [u16],
    queued: usize,
}

fn sw(args: &[&str]) -> Client {
    Client::Swaks(args.iter().map(|s| s.to_string()).collect())
}

fn scenarios(big_body: &Path) -> Vec<Scenario> {
    let big = big_body.display().to_string();
    let s = |name, description, port, tls_mode, auth, client, codes, queued| Scenario {
        name,
        description,
        port,
        v6: false,
        tls_mode,
        auth,
        client,
        codes,
        queued,
    };
    const PLAIN: &[u16] = &[220, 250, 250, 250, 354, 250, 221];
    vec![
        s(
            "plain_25",
            "plain SMTP on 25, one recipient",
            25,
            None,
            None,
            sw(&["--to", USER]),
            PLAIN,
            1,
        ),
        s(
            "starttls_25",
            "STARTTLS on 25",
            25,
            Some("starttls"),
            None,
            sw(&["--to", USER, "--tls", "--tls-sni", "mx.test"]),
            &[220, 250, 220, 250, 250, 250, 354, 250, 221],
            1,
        ),
        s(
            "submission_starttls_auth_plain",
            "587 STARTTLS then AUTH PLAIN",
            587,
            Some("starttls"),
            Some(("PLAIN", true)),
            sw(&[
                "--to",
                "bob@mx.test",
                "--tls",
                "--tls-sni",
                "mx.test",
                "--auth",
                "PLAIN",
                "--auth-user",
                USER,
                "--auth-password",
                PASSWORD,
            ]),
            &[220, 250, 220, 250, 235, 250, 250, 354, 250, 221],
            1,
        ),
        s(
            "submission_auth_login_clear",
            "587 AUTH LOGIN in clear",
            587,
            None,
            Some(("LOGIN", true)),
            sw(&[
                "--to",
                "bob@mx.test",
                "--auth",
                "LOGIN",
                "--auth-user",
                USER,
                "--auth-password",
                PASSWORD,
            ]),
            &[220, 250, 334, 334, 235, 250, 250, 354, 250, 221],
            1,
        ),
        s(
            "smtps_465",
            "465 implicit TLS with AUTH PLAIN",
            465,
            Some("implicit"),
            Some(("PLAIN", true)),
            sw(&[
                "--to",
                "bob@mx.test",
                "--tls-on-connect",
                "--tls-sni",
                "mx.test",
                "--auth",
                "PLAIN",
                "--auth-user",
                USER,
                "--auth-password",
                PASSWORD,
            ]),
            &[220, 250, 235, 250, 250, 354, 250, 221],
            1,
        ),
        s(
            "submission_wrong_password",
            "587 AUTH PLAIN in clear with a wrong password",
            587,
            None,
            Some(("PLAIN", false)),
            sw(&[
                "--to",
                "bob@mx.test",
                "--auth",
                "PLAIN",
                "--auth-user",
                USER,
                "--auth-password",
                "Wr0ng-Pa55",
            ]),
            &[220, 250, 535, 221],
            0,
        ),
        s(
            "submission_no_auth",
            "587 without AUTH: recipient refused",
            587,
            None,
            None,
            sw(&["--to", USER]),
            &[220, 250, 250, 554, 221],
            0,
        ),
        s(
            "pipelining_two_rcpt",
            "PIPELINING: MAIL, two RCPT and DATA in one segment",
            25,
            None,
            None,
            sw(&["--to", "alice@mx.test,bob@mx.test", "--pipeline"]),
            &[220, 250, 250, 250, 250, 354, 250, 221],
            1,
        ),
        s(
            "three_rcpt",
            "three recipients",
            25,
            None,
            None,
            sw(&["--to", "alice@mx.test,bob@mx.test,carol@mx.test"]),
            &[220, 250, 250, 250, 250, 250, 354, 250, 221],
            1,
        ),
        s(
            "unknown_rcpt",
            "unknown recipient, 550 5.1.1",
            25,
            None,
            None,
            sw(&["--to", "nobody@mx.test"]),
            &[220, 250, 250, 550, 221],
            0,
        ),
        s(
            "mixed_rcpt",
            "one good and one unknown recipient",
            25,
            None,
            None,
            sw(&["--to", "alice@mx.test,nobody@mx.test"]),
            &[220, 250, 250, 250, 550, 354, 250, 221],
            1,
        ),
        s(
            "relay_denied",
            "relay attempt, 554 5.7.1",
            25,
            None,
            None,
            sw(&["--to", "someone@example.org"]),
            &[220, 250, 250, 554, 221],
            0,
        ),
        s(
            "header_from_differs",
            "header From differs from the envelope sender",
            25,
            None,
            None,
            sw(&[
                "--to",
                USER,
                "--header",
                "From: Boss <boss@elsewhere.test>",
                "--header",
                "Subject: quarterly figures",
            ]),
            PLAIN,
            1,
        ),
        s(
            "bdat_two_chunks",
            "BDAT in two chunks (CHUNKING)",
            25,
            None,
            None,
            Client::Bdat,
            &[220, 250, 250, 250, 250, 250, 221],
            1,
        ),
        s(
            "body_8bitmime",
            "MAIL FROM with BODY=8BITMIME and an 8-bit body",
            25,
            None,
            None,
            Client::EightBitMime,
            PLAIN,
            1,
        ),
        Scenario {
            v6: true,
            ..s(
                "plain_25_ipv6",
                "plain SMTP on 25 over IPv6",
                25,
                None,
                None,
                Client::RawPlain,
                PLAIN,
                1,
            )
        },
        s(
            "large_message",
            "a message of about 1.1 MiB (GSO, chunking)",
            25,
            None,
            None,
            sw(&["--to", USER, "--body", &big]),
            PLAIN,
            1,
        ),
    ]
}

/// What the client saw: every reply, and the queue ids it was told.
struct Seen {
    replies: Vec<Reply>,
    queue_ids: Vec<String>,
    transcript: String,
}

fn run_client(sc: &Scenario, server: IpAddr) -> Seen {
    match &sc.client {
        Client::Swaks(args) => {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let r = swaks(server, sc.port, &args);
            Seen {
                queue_ids: r.queue_ids(),
                replies: r.replies,
                transcript: r.transcript,
            }
        }
        Client::Bdat => {
            let mut c = RawSmtp::connect(SocketAddr::new(server, sc.port));
            let ehlo = c.cmd("EHLO client.test");
            assert!(
                ehlo.lines.iter().any(|l| l.ends_with("CHUNKING")),
                "no CHUNKING: {ehlo:?}"
            );
            c.cmd("MAIL FROM:<sender@client.test>");
            c.cmd("RCPT TO:<alice@mx.test>");
            let part1 =
                b"From: sender@client.test\r\nTo: alice@mx.test\r\nSubject: chunked\r\n\r\n";
            let part2 = b"First line of a chunked body.\r\nSecond line.\r\n";
            c.send(format!("BDAT {}\r\n", part1.len()).as_bytes());
            c.send(part1);
            c.read_reply();
            c.send(format!("BDAT {} LAST\r\n", part2.len()).as_bytes());
            c.send(part2);
            c.read_reply();
            raw_seen(c)
        }
        Client::RawPlain => {
            let mut c = RawSmtp::connect(SocketAddr::new(server, sc.port));
            c.cmd("EHLO client.test");
            c.cmd("MAIL FROM:<sender@client.test>");
            c.cmd("RCPT TO:<alice@mx.test>");
            c.cmd("DATA");
            c.send(b"From: sender@client.test\r\nTo: alice@mx.test\r\nSubject: over IPv6\r\n\r\nHello over IPv6.\r\n.\r\n");
            c.read_reply();
            raw_seen(c)
        }
        Client::EightBitMime => {
            let mut c = RawSmtp::connect(SocketAddr::new(server, sc.port));
            c.cmd("EHLO client.test");
            c.cmd("MAIL FROM:<sender@client.test> BODY=8BITMIME");
            c.cmd("RCPT TO:<alice@mx.test>");
            c.cmd("DATA");
            c.send(
                "From: sender@client.test\r\nTo: alice@mx.test\r\nSubject: 8bit\r\n\
                 MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\
                 Content-Transfer-Encoding: 8bit\r\n\r\nGrüße aus Zürich. 日本語のテキスト。\r\n.\r\n"
                    .as_bytes(),
            );
            c.read_reply();
            raw_seen(c)
        }
    }
}

fn raw_seen(c: RawSmtp) -> Seen {
    let replies = c.quit();
    Seen {
        queue_ids: replies.iter().filter_map(Reply::queue_id).collect(),
        transcript: format!("{replies:?}"),
        replies,
    }
}

/// The clear-text dialogue visible on the wire.
struct Wire {
    commands: Vec<String>,
    replies: Vec<Reply>,
}

/// Client lines up to STARTTLS (message bodies and BDAT chunk bytes skipped), and server replies
/// up to the 220 that answers STARTTLS. Nothing is clear on 465.
fn wire_dialogue(sc: &Scenario, stream: &tshark::Stream) -> Wire {
    if sc.tls_mode == Some("implicit") {
        return Wire {
            commands: Vec::new(),
            replies: Vec::new(),
        };
    }
    let mut replies = Vec::new();
    let mut lines = Vec::new();
    for line in crlf_lines(&stream.server_bytes) {
        let text = String::from_utf8_lossy(line).into_owned();
        let code: u16 = text
            .get(..3)
            .and_then(|c| c.parse().ok())
            .expect("reply line");
        let more = text.as_bytes().get(3) == Some(&b'-');
        lines.push(text);
        if !more {
            replies.push(Reply {
                code,
                lines: std::mem::take(&mut lines),
            });
            if code == 220 && replies.len() > 1 {
                break;
            }
        }
    }
    let data_accepted = replies.iter().any(|r| r.code == 354);
    let bytes = &stream.client_bytes;
    let mut commands = Vec::new();
    let mut i = 0;
    while let Some(end) = find(&bytes[i..], b"\r\n") {
        let line = String::from_utf8_lossy(&bytes[i..i + end]).into_owned();
        i += end + 2;
        let upper = line.to_ascii_uppercase();
        commands.push(line);
        if upper == "DATA" && data_accepted {
            let stop = find(&bytes[i - 2..], b"\r\n.\r\n").expect("end of DATA");
            i += stop + 3;
        } else if let Some(n) = upper.strip_prefix("BDAT ") {
            let n: usize = n
                .split(' ')
                .next()
                .and_then(|n| n.parse().ok())
                .expect("BDAT size");
            i += n;
        } else if upper == "STARTTLS" {
            break;
        }
    }
    Wire { commands, replies }
}

fn crlf_lines(b: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = b;
    std::iter::from_fn(move || {
        let end = find(rest, b"\r\n")?;
        let line = &rest[..end];
        rest = &rest[end + 2..];
        Some(line)
    })
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// RCPT TO commands paired with their replies: each client line gets one reply in order (the
/// greeting first; an accepted DATA or BDAT also gets the end-of-data reply).
fn rcpt_pairs(w: &Wire) -> Vec<Value> {
    let mut next = 1; // replies[0] is the greeting
    let mut out = Vec::new();
    for c in &w.commands {
        let Some(r) = w.replies.get(next) else { break };
        next += 1;
        let upper = c.to_ascii_uppercase();
        if let Some(arg) = upper.strip_prefix("RCPT TO:") {
            let addr = c[8..8 + arg.len()].trim().trim_start_matches('<');
            let addr = addr.split('>').next().unwrap_or("");
            out.push(json!({"addr": addr, "code": r.code}));
        }
        if upper == "DATA" && r.code == 354 {
            next += 1;
        }
    }
    out
}

fn mail_from(w: &Wire) -> Value {
    w.commands
        .iter()
        .find_map(|c| {
            let rest = c
                .get(..10)
                .filter(|p| p.eq_ignore_ascii_case("MAIL FROM:"))
                .map(|_| &c[10..])?;
            Some(
                rest.trim_start_matches('<')
                    .split('>')
                    .next()
                    .unwrap_or("")
                    .to_string(),
            )
        })
        .map_or(Value::Null, Value::String)
}

fn big_body(dir: &Path) -> PathBuf {
    let path = dir.join("big-body.txt");
    let mut body = String::new();
    let mut n = 0;
    while body.len() < 1_150_000 {
        body.push_str(&format!(
            "line {n:06}: the quick brown fox jumps over the lazy dog, again and again.\n"
        ));
        n += 1;
    }
    common::write(&path, body);
    path
}

#[test]
fn testbed_scenarios() {
    common::require_root("testbed_scenarios");
    let write = std::env::var_os("MT_WRITE_FIXTURES").is_some_and(|v| v == "1");
    let tmp = TempDir::new("scen");
    let tb = Testbed::start();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/testbed");
    for sc in scenarios(&big_body(tmp.path())) {
        let server: IpAddr = if sc.v6 {
            tb.ns.server_v6().into()
        } else {
            tb.ns.server_v4().into()
        };
        let pcap = tmp.path().join(format!("{}.pcapng", sc.name));
        let cap = Capture::start(&tb.ns.host_if, &pcap);
        let seen = run_client(&sc, server);
        cap.stop();

        let ctx = |what: &str| {
            format!(
                "scenario {}: {what}\n--- client transcript ---\n{}",
                sc.name, seen.transcript
            )
        };
        let codes: Vec<u16> = seen.replies.iter().map(|r| r.code).collect();
        assert_eq!(codes, sc.codes, "{}", ctx("reply codes"));
        let streams = tshark::streams(&pcap);
        assert_eq!(
            streams.len(),
            1,
            "{}",
            ctx("exactly one TCP connection captured")
        );
        let st = &streams[0];
        assert_eq!(
            st.server,
            SocketAddr::new(server, sc.port),
            "{}",
            ctx("server endpoint")
        );
        let logged = if sc.queued > 0 {
            tb.postfix.queue_ids_for(st.client, sc.queued)
        } else {
            tb.postfix.queue_ids_after_disconnect(st.client)
        };
        assert_eq!(
            logged.len(),
            sc.queued,
            "{}",
            ctx("messages queued per Postfix's log")
        );
        assert_eq!(
            logged,
            seen.queue_ids,
            "{}",
            ctx("queue ids: Postfix log vs replies")
        );

        let wire = wire_dialogue(&sc, st);
        let wire_codes: Vec<u16> = wire.replies.iter().map(|r| r.code).collect();
        match sc.tls_mode {
            None => {
                assert_eq!(
                    wire_codes,
                    sc.codes,
                    "{}",
                    ctx("clear reply codes on the wire")
                );
                assert_eq!(
                    wire.replies,
                    seen.replies,
                    "{}",
                    ctx("replies on the wire vs client")
                );
            }
            Some("starttls") => assert_eq!(
                wire_codes,
                [220, 250, 220],
                "{}",
                ctx("clear part before TLS")
            ),
            Some(_) => assert!(wire.replies.is_empty()),
        }
        if sc.name == "large_message" {
            assert!(
                st.client_bytes.len() > 1 << 20,
                "large message sent {} bytes",
                st.client_bytes.len()
            );
        }

        if write {
            let dest = fixtures.join(format!("{}.pcapng", sc.name));
            std::fs::create_dir_all(&fixtures).expect("fixtures dir");
            std::fs::copy(&pcap, &dest)
                .unwrap_or_else(|e| panic!("copy to {}: {e}", dest.display()));
            let auth = sc.auth.map(|(mechanism, _)| {
                let code = seen
                    .replies
                    .iter()
                    .map(|r| r.code)
                    .find(|c| [235, 535].contains(c));
                json!({"mechanism": mechanism, "user": USER, "code": code})
            });
            let record = json!({
                "scenario": sc.name,
                "description": sc.description,
                "pcapng": format!("{}.pcapng", sc.name),
                "client": st.client.to_string(),
                "server": st.server.to_string(),
                "tls_mode": sc.tls_mode,
                "sni": sc.tls_mode.map(|_| common::DOMAIN),
                "auth": auth,
                "secret": sc.auth.map(|_| if sc.auth.is_some_and(|a| a.1) { PASSWORD } else { "Wr0ng-Pa55" }),
                "queue_ids": logged,
                "session_reply_codes": codes,
                "commands": wire.commands,
                "replies": wire.replies.iter().map(|r| json!({"code": r.code, "lines": r.lines})).collect::<Vec<_>>(),
                "reply_codes": wire_codes,
                "mail_from": mail_from(&wire),
                "rcpt": rcpt_pairs(&wire),
                "client_payload_bytes": st.client_bytes.len(),
                "server_payload_bytes": st.server_bytes.len(),
            });
            let text = serde_json::to_string_pretty(&record).expect("json") + "\n";
            common::write(&fixtures.join(format!("{}.json", sc.name)), text);
        }
    }
}
