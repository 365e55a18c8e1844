//! Findings on the captures our test bed recorded from real Postfix
//! (tests/fixtures/testbed): every capture gives exactly the findings an
//! operator should see, in the record, as `--events` lines and in the tail; and
//! `--findings SEVERITY` keeps only the sessions at or above it.
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/testbed")
}

fn replay(args: &[&str], files: &[PathBuf]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_mail-trace"))
        .arg("replay")
        .args(args)
        .args(files)
        .output()
        .expect("run mail-trace");
    assert!(
        out.status.success(),
        "replay failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The JSON lines after the first, `{"type":"run"}` (checked to be there).
fn lines(out: &str) -> Vec<Value> {
    let mut all: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        all.first().map(|r| &r["type"]),
        Some(&"run".into()),
        "{out}"
    );
    all.remove(0);
    all
}

const OFFERED_NOT_USED_25: (&str, &str, &str) = (
    "starttls-offered-not-used",
    "info",
    "the server offered STARTTLS but the client stayed in clear",
);
const AUTH_LOGIN_CLEAR: (&str, &str, &str) = (
    "auth-before-tls",
    "warn",
    "AUTH LOGIN sent in clear although the server offered STARTTLS",
);

/// Every capture and the findings it must give, in order.
/// (id, severity, reason) of one finding.
type Want = (&'static str, &'static str, &'static str);

fn expected() -> Vec<(&'static str, Vec<Want>)> {
    let plain = || vec![OFFERED_NOT_USED_25];
    vec![
        ("bdat_two_chunks", plain()),
        ("body_8bitmime", plain()),
        (
            "header_from_differs",
            vec![
                OFFERED_NOT_USED_25,
                (
                    "from-mismatch",
                    "alert",
                    "header From domain elsewhere.test differs from envelope domain client.test",
                ),
            ],
        ),
        ("large_message", plain()),
        ("mixed_rcpt", plain()),
        ("pipelining_two_rcpt", plain()),
        ("plain_25", plain()),
        ("plain_25_ipv6", plain()),
        ("relay_denied", plain()),
        // TLS from the first byte, or STARTTLS followed by a real handshake: nothing.
        ("smtps_465", vec![]),
        ("starttls_25", vec![]),
        ("submission_auth_login_clear", vec![AUTH_LOGIN_CLEAR]),
        // Postfix refused the recipient: no message accepted without AUTH.
        (
            "submission_no_auth",
            vec![(
                "starttls-offered-not-used",
                "warn",
                "the server offered STARTTLS but the client stayed in clear",
            )],
        ),
        ("submission_starttls_auth_plain", vec![]),
        (
            "submission_wrong_password",
            vec![(
                "auth-before-tls",
                "warn",
                "AUTH PLAIN sent in clear although the server offered STARTTLS",
            )],
        ),
        ("three_rcpt", plain()),
        ("unknown_rcpt", plain()),
    ]
}

fn as_json(list: &[(&str, &str, &str)]) -> Value {
    list.iter()
        .map(|(id, sev, reason)| json!({"id": id, "severity": sev, "reason": reason}))
        .collect()
}

#[test]
fn every_testbed_capture_gives_its_findings_in_record_and_events() {
    for (name, want) in expected() {
        let pcap = fixtures().join(format!("{name}.pcapng"));
        let all = lines(&replay(&["--json", "--events"], &[pcap]));
        let rec = all.iter().find(|l| l["type"] == "session").unwrap();
        assert_eq!(rec["findings"], as_json(&want), "{name}");
        // Each finding is also one event line, before the session record.
        let events: Vec<Value> = all
            .iter()
            .filter(|l| l["type"] == "finding")
            .map(|l| {
                assert_eq!(l["session"], rec["id"], "{name}");
                json!({"id": l["id"], "severity": l["severity"], "reason": l["reason"]})
            })
            .collect();
        // Live ones come when they happen, the rest at the end: same set.
        let key = |v: &Value| v.to_string();
        let mut events = events;
        events.sort_by_key(key);
        let mut want_sorted: Vec<Value> = as_json(&want).as_array().unwrap().clone();
        want_sorted.sort_by_key(key);
        assert_eq!(events, want_sorted, "{name}");
        assert_eq!(all.last().unwrap()["type"], "session", "{name}");
    }
}

#[test]
fn auth_before_tls_shows_in_the_tail_right_after_the_command() {
    let pcap = fixtures().join("submission_auth_login_clear.pcapng");
    let out = replay(&["--color", "never"], &[pcap]);
    let tail: Vec<&str> = out
        .lines()
        .map(|l| l.split_once(" #1 ").unwrap().1)
        .collect();
    let at = tail.iter().position(|l| *l == "C AUTH LOGIN").unwrap();
    assert_eq!(
        tail[at + 1],
        "!! warn auth-before-tls: AUTH LOGIN sent in clear although the server offered STARTTLS"
    );
    assert_eq!(tail.iter().filter(|l| l.starts_with("!! ")).count(), 1);
}

#[test]
fn findings_filter_keeps_sessions_at_or_above_the_severity() {
    let files: Vec<PathBuf> = expected()
        .iter()
        .map(|(n, _)| fixtures().join(format!("{n}.pcapng")))
        .collect();
    let expect = |min: usize| -> Vec<String> {
        let rank = |s: &str| {
            ["info", "warn", "alert"]
                .iter()
                .position(|x| *x == s)
                .unwrap()
        };
        expected()
            .into_iter()
            .filter(|(_, f)| f.iter().any(|(_, s, _)| rank(s) >= min))
            .map(|(n, _)| n.to_string())
            .collect()
    };
    // Each capture is recognised by its client address.
    let by_client: std::collections::HashMap<String, String> = expected()
        .iter()
        .zip(&files)
        .map(|((n, _), f)| {
            let rec = &lines(&replay(&["--json"], std::slice::from_ref(f)))[0];
            (rec["client"].as_str().unwrap().to_string(), n.to_string())
        })
        .collect();
    assert_eq!(by_client.len(), files.len());
    for (min, word) in ["info", "warn", "alert"].iter().enumerate() {
        let out = lines(&replay(&["--json", "--events", "--findings", word], &files));
        let sessions: Vec<&Value> = out.iter().filter(|l| l["type"] == "session").collect();
        let mut got: Vec<String> = sessions
            .iter()
            .map(|s| by_client[s["client"].as_str().unwrap()].clone())
            .collect();
        got.sort();
        assert_eq!(got, expect(min), "--findings {word}");
        // Held events come out with their session, none from filtered ones.
        let ids: Vec<&Value> = sessions.iter().map(|s| &s["id"]).collect();
        assert!(out
            .iter()
            .all(|l| ids.contains(&&l["session"]) || l["type"] == "session"));
        assert!(out.iter().any(|l| l["type"] == "command"));
    }
    assert_eq!(expect(2), vec!["header_from_differs"]);
    assert_eq!(expect(1).len(), 4);
}

/// A TCP conversation built packet by packet (IPv4, raw IP frames).
mod conv {
    use etherparse::PacketBuilder;
    use mail_trace::capture::{Direction, Frame, LinkType};

    pub struct Conv {
        client: ([u8; 4], u16),
        server: ([u8; 4], u16),
        seq: [u32; 2],
        pub ts: u64,
        pub frames: Vec<Frame>,
    }

    impl Conv {
        pub fn new(client: ([u8; 4], u16), server: ([u8; 4], u16), ts: u64) -> Self {
            let mut c = Conv {
                client,
                server,
                seq: [1000, 5000],
                ts,
                frames: Vec::new(),
            };
            c.packet(true, b"", |b| b.syn());
            c.no_ack_on_syn();
            c.seq[0] += 1;
            c.packet(false, b"", |b| b.syn().ack(1001));
            c.seq[1] += 1;
            c
        }

        fn packet(
            &mut self,
            from_client: bool,
            payload: &[u8],
            flags: impl FnOnce(
                etherparse::PacketBuilderStep<etherparse::TcpHeader>,
            ) -> etherparse::PacketBuilderStep<etherparse::TcpHeader>,
        ) {
            let (src, dst, seq, ack) = if from_client {
                (self.client, self.server, self.seq[0], self.seq[1])
            } else {
                (self.server, self.client, self.seq[1], self.seq[0])
            };
            let b = PacketBuilder::ipv4(src.0, dst.0, 64).tcp(src.1, dst.1, seq, 65535);
            let b = flags(b.ack(ack));
            let mut data = Vec::new();
            b.write(&mut data, payload).unwrap();
            self.ts += 1_000_000;
            self.frames.push(Frame {
                ts: self.ts,
                iface: 0,
                dir: Direction::Unknown,
                link: LinkType::RawIp,
                orig_len: data.len() as u32,
                data,
                suppressed: false,
            });
        }

        /// A client SYN carries no ACK.
        fn no_ack_on_syn(&mut self) {
            let f = self.frames.last_mut().unwrap();
            let ip_len = usize::from(f.data[0] & 0x0f) * 4;
            f.data[ip_len + 13] &= !0x10;
            f.data[ip_len + 8..ip_len + 12].fill(0);
            // The TCP checksum is not checked by the capture path.
        }

        pub fn client(&mut self, payload: &[u8]) -> &mut Self {
            self.packet(true, payload, |b| b.psh());
            self.seq[0] += payload.len() as u32;
            self
        }

        pub fn server(&mut self, payload: &[u8]) -> &mut Self {
            self.packet(false, payload, |b| b.psh());
            self.seq[1] += payload.len() as u32;
            self
        }

        pub fn close(&mut self) {
            self.packet(true, b"", |b| b.fin());
            self.seq[0] += 1;
            self.packet(false, b"", |b| b.fin());
            self.seq[1] += 1;
            self.packet(true, b"", |b| b);
        }
    }
}

/// A server that offered STARTTLS and later, in the same run, does not: the
/// later session is flagged as possibly stripped; another server without it
/// only gets the plain warning.
#[test]
fn starttls_missing_where_the_same_server_offered_it_before_is_an_alert() {
    use mail_trace::session::{Engine, EngineConfig, SessionInfo, SessionRecord, Sink};

    #[derive(Default)]
    struct Records(Vec<SessionRecord>);
    impl Sink for Records {
        fn session_start(&mut self, _: &SessionInfo) {}
        fn event(&mut self, _: &SessionInfo, _: &mail_trace::proto::Event) {}
        fn session_end(&mut self, _: &SessionInfo, r: &SessionRecord) {
            self.0.push(r.clone());
        }
    }

    let session = |client_port: u16, server: [u8; 4], caps: &[u8], ts: u64| {
        let mut c = conv::Conv::new(([10, 99, 0, 1], client_port), (server, 25), ts);
        c.server(b"220 mx.test ESMTP\r\n")
            .client(b"EHLO client.test\r\n")
            .server(caps)
            .client(b"QUIT\r\n")
            .server(b"221 bye\r\n");
        c.close();
        c.frames
    };
    let with_tls: &[u8] = b"250-mx.test\r\n250-PIPELINING\r\n250 STARTTLS\r\n";
    let without: &[u8] = b"250-mx.test\r\n250 PIPELINING\r\n";
    let mut frames = session(40001, [10, 99, 0, 2], with_tls, 1 << 40);
    frames.extend(session(40002, [10, 99, 0, 2], without, 2 << 40));
    frames.extend(session(40003, [10, 99, 0, 3], without, 3 << 40));
    let mut engine = Engine::new(EngineConfig::default());
    let mut out = Records::default();
    for f in &frames {
        engine.frame(f, &mut out);
    }
    engine.finish(4 << 40, &mut out);
    let got: Vec<Value> = out.0.iter().map(|r| r.fields["findings"].clone()).collect();
    assert_eq!(
        got,
        vec![
            as_json(&[OFFERED_NOT_USED_25]),
            as_json(&[(
                "starttls-not-offered",
                "alert",
                "no STARTTLS offered on port 25, although this server offered it earlier in \
                 this run: possible STARTTLS stripping"
            )]),
            as_json(&[(
                "starttls-not-offered",
                "warn",
                "the server offered no STARTTLS on port 25"
            )]),
        ]
    );
}
