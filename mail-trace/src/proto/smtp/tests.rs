//! Hand-written byte streams, one per feature; every transcript is also re-fed
//! in chunks of 1..=64 bytes and must give the same events and record.

use super::*;
use base64::Engine as _;
use serde_json::json;

pub(super) const C: Dir = Dir::ToServer;
pub(super) const S: Dir = Dir::ToClient;
pub(super) const MS: Ts = 1_000_000;

pub(super) type Step<'a> = (Dir, &'a [u8], Ts);

pub(super) fn feed(smtp: &mut Smtp, steps: &[Step<'_>], chunk: usize) -> Vec<Event> {
    let mut out = Vec::new();
    for (dir, bytes, ts) in steps {
        for c in bytes.chunks(chunk.max(1)) {
            smtp.data(*dir, c, *ts);
            while let Some(e) = smtp.poll_event() {
                out.push(e);
            }
        }
    }
    out
}

fn run_with(privacy: Privacy, start: SessionStart, steps: &[Step<'_>]) -> (Vec<Event>, Value) {
    let mut smtp = Smtp::new(privacy, start);
    let events = feed(&mut smtp, steps, usize::MAX);
    (events, Value::Object(smtp.record()))
}

pub(super) fn run(steps: &[Step<'_>]) -> (Vec<Event>, Value) {
    run_with(Privacy::default(), SessionStart::default(), steps)
}

/// Same events and record whatever the segmentation (ts stay per step, so a
/// line split over chunks of one step keeps its timing).
pub(super) fn assert_chunk_invariant(privacy: Privacy, start: SessionStart, steps: &[Step<'_>]) {
    let (want_events, want_record) = run_with(privacy, start, steps);
    for size in 1..=64 {
        let mut smtp = Smtp::new(privacy, start);
        let events = feed(&mut smtp, steps, size);
        assert_eq!(events, want_events, "events at chunk size {size}");
        assert_eq!(
            Value::Object(smtp.record()),
            want_record,
            "record at {size}"
        );
    }
}

pub(super) fn cmd(verb: &str, arg: &str, ts: Ts) -> Event {
    Event::Command {
        ts,
        verb: verb.into(),
        arg: arg.into(),
    }
}

fn rep(code: &str, enhanced: Option<&str>, text: &str, ts: Ts, lat: Option<Ts>) -> Event {
    Event::Reply {
        ts,
        code: code.into(),
        enhanced: enhanced.map(Into::into),
        text: text.into(),
        latency_ns: lat,
    }
}

fn anomalies(events: &[Event]) -> Vec<&'static str> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Anomaly { id, .. } => Some(*id),
            _ => None,
        })
        .collect()
}

const SESSION: &[Step<'static>] = &[
    (S, b"220 mx.example.com ESMTP Postfix\r\n", 10 * MS),
    (C, b"EHLO client.example.org\r\n", 11 * MS),
    (
        S,
        b"250-mx.example.com\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-STARTTLS\r\n250-auth PLAIN LOGIN\r\n250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n250 CHUNKING\r\n",
        12 * MS,
    ),
    (
        C,
        b"MAIL FROM:<alice@example.org> SIZE=120 BODY=8BITMIME\r\nRCPT TO:<bob@example.com> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;bob@example.com\r\nRCPT TO:<nobody@example.com>\r\nDATA\r\n",
        20 * MS,
    ),
    (
        S,
        b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n550 5.1.1 <nobody@example.com>: Recipient address rejected\r\n354 End data with <CR><LF>.<CR><LF>\r\n",
        23 * MS,
    ),
    (
        C,
        b"From: Alice <alice@Example.org>\r\nSubject: hi\r\n\r\nHello\r\n..leading dot\r\n.\r\nQUIT\r\n",
        30 * MS,
    ),
    (
        S,
        b"250 2.0.0 Ok: queued as 4XyzAB12cd\r\n221 2.0.0 Bye\r\n",
        35 * MS,
    ),
];

#[test]
fn full_session_events() {
    let start = SessionStart {
        syn_ts: Some(2 * MS),
        ..SessionStart::default()
    };
    let (events, _) = run_with(Privacy::default(), start, SESSION);
    let l = |ms: Ts| Some(ms * MS);
    assert_eq!(
        events,
        vec![
            rep("220", None, "mx.example.com ESMTP Postfix", 10 * MS, None),
            cmd("EHLO", "client.example.org", 11 * MS),
            rep(
                "250",
                None,
                "mx.example.com / PIPELINING / SIZE 10240000 / STARTTLS / auth PLAIN LOGIN / ENHANCEDSTATUSCODES / 8BITMIME / CHUNKING",
                12 * MS,
                l(1),
            ),
            cmd("MAIL", "FROM:<alice@example.org> SIZE=120 BODY=8BITMIME", 20 * MS),
            cmd(
                "RCPT",
                "TO:<bob@example.com> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;bob@example.com",
                20 * MS
            ),
            cmd("RCPT", "TO:<nobody@example.com>", 20 * MS),
            cmd("DATA", "", 20 * MS),
            rep("250", Some("2.1.0"), "Ok", 23 * MS, l(3)),
            rep("250", Some("2.1.5"), "Ok", 23 * MS, l(3)),
            rep(
                "550",
                Some("5.1.1"),
                "<nobody@example.com>: Recipient address rejected",
                23 * MS,
                l(3)
            ),
            rep("354", None, "End data with <CR><LF>.<CR><LF>", 23 * MS, l(3)),
            cmd("QUIT", "", 30 * MS),
            rep("250", Some("2.0.0"), "Ok: queued as 4XyzAB12cd", 35 * MS, l(5)),
            rep("221", Some("2.0.0"), "Bye", 35 * MS, l(5)),
        ]
    );
}

#[test]
fn full_session_record() {
    let start = SessionStart {
        syn_ts: Some(2 * MS),
        ..SessionStart::default()
    };
    let (_, record) = run_with(Privacy::default(), start, SESSION);
    assert_eq!(
        record,
        json!({
            "greeting": {"code": 220, "text": "mx.example.com ESMTP Postfix", "delay_ms": 8.0},
            "helo": "client.example.org",
            "ehlo": ["PIPELINING", "SIZE 10240000", "STARTTLS", "AUTH PLAIN LOGIN",
                     "ENHANCEDSTATUSCODES", "8BITMIME", "CHUNKING"],
            "tls": false, "tls_mode": null, "tls_info": null, "auth": null,
            "transactions": [{
                "mail_from": "alice@example.org",
                "mail_params": {"SIZE": "120", "BODY": "8BITMIME"},
                "rcpt": [
                    {"addr": "bob@example.com",
                     "params": {"NOTIFY": "SUCCESS,FAILURE", "ORCPT": "rfc822;bob@example.com"},
                     "code": 250, "enhanced": "2.1.5", "text": "Ok"},
                    {"addr": "nobody@example.com", "params": {}, "code": 550, "enhanced": "5.1.1",
                     "text": "<nobody@example.com>: Recipient address rejected"},
                ],
                "data_code": 354,
                "bdat_chunks": 0,
                // 33 + 13 + 2 + 7 + 14 (its stuffed dot removed)
                "size": 69,
                "queue_id": "4XyzAB12cd",
                "headers": null,
                "reply": {"code": 250, "enhanced": "2.0.0", "text": "Ok: queued as 4XyzAB12cd"},
                "dsn": null,
            }],
            "findings": [{"id": "starttls-offered-not-used", "severity": "warn",
                          "reason": "the server offered STARTTLS but the client stayed in clear"}],
        })
    );
}

#[test]
fn headers_only_with_show_headers_but_from_domain_always_kept() {
    let (_, hidden) = run(SESSION);
    assert!(!hidden.to_string().contains("hi\""));
    let mut smtp = Smtp::new(Privacy::default(), SessionStart::default());
    feed(&mut smtp, SESSION, usize::MAX);
    let sum = smtp.transactions()[0].summary.clone().unwrap();
    assert_eq!(sum.from_domain.as_deref(), Some("example.org"));
    assert_eq!(smtp.facts().pipelined_without_offer, 0);
    // RCPT, RCPT, DATA, and QUIT right after the end of data.
    assert_eq!(smtp.facts().pipelined_commands, 4);

    let show = Privacy {
        show_headers: true,
        ..Privacy::default()
    };
    let (_, shown) = run_with(show, SessionStart::default(), SESSION);
    assert_eq!(
        shown["transactions"][0]["headers"],
        json!({"from": "Alice <alice@Example.org>", "to": null, "cc": null, "subject": "hi",
               "message_id": null, "date": null, "content_type": null})
    );
}

#[test]
fn full_session_chunk_invariant() {
    assert_chunk_invariant(Privacy::default(), SessionStart::default(), SESSION);
}

const BDAT: &[Step<'static>] = &[
    (S, b"220 mx ESMTP\r\n", MS),
    (C, b"EHLO c\r\n", 2 * MS),
    (S, b"250-mx\r\n250-CHUNKING\r\n250 PIPELINING\r\n", 3 * MS),
    // The first chunk holds a fake end of data and a fake command.
    (
        C,
        b"MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nBDAT 37\r\nSubject: s\r\n\r\n.\r\nMAIL FROM:<evil@x>\r\n",
        4 * MS,
    ),
    (C, b"BDAT 4 LAST\r\nabcdQUIT\r\n", 5 * MS),
    (
        S,
        b"250 ok\r\n250 ok\r\n250 2.0.0 37 octets\r\n250 OK id=1abcDE-000123-Ab\r\n221 bye\r\n",
        7 * MS,
    ),
];

#[test]
fn bdat_chunks_counted_exactly() {
    let (events, record) = run(BDAT);
    let verbs: Vec<String> = events
        .iter()
        .filter_map(|e| match e {
            Event::Command { verb, arg, .. } => Some(format!("{verb} {arg}")),
            _ => None,
        })
        .collect();
    assert_eq!(
        verbs,
        [
            "EHLO c",
            "MAIL FROM:<a@x>",
            "RCPT TO:<b@y>",
            "BDAT 37",
            "BDAT 4 LAST",
            "QUIT "
        ]
    );
    let t = &record["transactions"][0];
    assert_eq!(t["size"], json!(41));
    assert_eq!(t["bdat_chunks"], json!(2));
    assert_eq!(t["data_code"], Value::Null);
    assert_eq!(t["queue_id"], json!("1abcDE-000123-Ab"));
    assert_eq!(t["reply"]["text"], json!("OK id=1abcDE-000123-Ab"));
    assert_eq!(record["transactions"].as_array().unwrap().len(), 1);
    // The last BDAT's reply is measured from the end of its chunk.
    let lat: Vec<Option<u64>> = events
        .iter()
        .filter_map(|e| match e {
            Event::Reply { latency_ns, .. } => Some(*latency_ns),
            _ => None,
        })
        .collect();
    assert_eq!(lat[4], Some(3 * MS));
    assert_eq!(lat[5], Some(2 * MS));
    assert!(anomalies(&events).is_empty());
    assert_chunk_invariant(Privacy::default(), SessionStart::default(), BDAT);
}

fn b64(s: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn auth_session() -> Vec<(Dir, Vec<u8>, Ts)> {
    let plain = b64(b"\0alice\0Sup3rS3cret!");
    let user = b64(b"bob@example.org");
    let pass = b64(b"Hunter2Hunter2");
    vec![
        (S, b"220 mx\r\n".to_vec(), MS),
        (C, b"EHLO c\r\n".to_vec(), MS),
        (S, b"250-mx\r\n250 AUTH PLAIN LOGIN\r\n".to_vec(), MS),
        (C, format!("AUTH PLAIN {plain}\r\n").into_bytes(), 2 * MS),
        (
            S,
            b"535 5.7.8 Error: authentication failed\r\n".to_vec(),
            3 * MS,
        ),
        (C, b"AUTH PLAIN\r\n".to_vec(), 4 * MS),
        (S, b"334 \r\n".to_vec(), 5 * MS),
        (C, format!("{plain}\r\n").into_bytes(), 6 * MS),
        (S, b"535 5.7.8 Error\r\n".to_vec(), 7 * MS),
        (C, b"AUTH LOGIN\r\n".to_vec(), 8 * MS),
        (S, b"334 VXNlcm5hbWU6\r\n".to_vec(), 9 * MS),
        (C, format!("{user}\r\n").into_bytes(), 10 * MS),
        (S, b"334 UGFzc3dvcmQ6\r\n".to_vec(), 11 * MS),
        (
            C,
            format!("{pass}\r\nMAIL FROM:<bob@example.org>\r\n").into_bytes(),
            12 * MS,
        ),
        (
            S,
            b"235 2.7.0 Authentication successful\r\n250 2.1.0 Ok\r\n".to_vec(),
            13 * MS,
        ),
    ]
}

#[test]
fn auth_secrets_never_leave() {
    let owned = auth_session();
    let steps: Vec<Step<'_>> = owned.iter().map(|(d, b, t)| (*d, &b[..], *t)).collect();
    let (events, record) = run(&steps);
    let all = format!("{events:?} {record}");
    for secret in [
        "Sup3rS3cret!".to_string(),
        b64(b"\0alice\0Sup3rS3cret!"),
        "Hunter2Hunter2".into(),
        b64(b"Hunter2Hunter2"),
    ] {
        assert!(!all.contains(&secret), "{secret} leaked");
    }
    let cmds: Vec<String> = events
        .iter()
        .filter_map(|e| match e {
            Event::Command { verb, arg, .. } => Some(format!("{verb} {arg}")),
            _ => None,
        })
        .collect();
    assert_eq!(
        cmds,
        [
            "EHLO c",
            "AUTH PLAIN <redacted>",
            "AUTH PLAIN",
            "AUTH-DATA <redacted>",
            "AUTH LOGIN",
            "AUTH-DATA <redacted>",
            "AUTH-DATA <redacted>",
            "MAIL FROM:<bob@example.org>",
        ]
    );
    assert_eq!(
        record["auth"],
        json!({"mechanism": "LOGIN", "user": "bob@example.org", "code": 235})
    );
    assert_eq!(
        record["transactions"][0]["mail_from"],
        json!("bob@example.org")
    );
    let mut smtp = Smtp::new(Privacy::default(), SessionStart::default());
    feed(&mut smtp, &steps, 3);
    assert!(smtp.facts().auth_in_clear);
    assert_chunk_invariant(Privacy::default(), SessionStart::default(), &steps);

    // With show_secrets the lines are shown as sent.
    let show = Privacy {
        show_secrets: true,
        ..Privacy::default()
    };
    let (events, _) = run_with(show, SessionStart::default(), &steps);
    assert!(format!("{events:?}").contains(&b64(b"Hunter2Hunter2")));
}

#[test]
fn cram_md5_and_xoauth2_users() {
    let cram = format!("{}\r\n", b64(b"carol 0123456789abcdef0123456789abcdef"));
    let steps: &[Step<'_>] = &[
        (S, b"220 mx\r\n", MS),
        (C, b"AUTH CRAM-MD5\r\n", MS),
        (S, b"334 PDE4OTYuNjk3MTcwOTUyQHBvc3RvZmZpY2U+\r\n", MS),
        (C, cram.as_bytes(), MS),
        (S, b"235 ok\r\n", MS),
    ];
    let (_, r) = run(steps);
    assert_eq!(
        r["auth"],
        json!({"mechanism": "CRAM-MD5", "user": "carol", "code": 235})
    );
    let x = format!(
        "AUTH XOAUTH2 {}\r\n",
        b64(b"user=dave@example.com\x01auth=Bearer ya29.secret\x01\x01")
    );
    let steps: &[Step<'_>] = &[
        (S, b"220 mx\r\n", MS),
        (C, x.as_bytes(), MS),
        (S, b"334 eyJzdGF0dXMiOiI0MDEifQ==\r\n", MS),
        (C, b"\r\n", MS),
        (S, b"535 5.7.8 bad\r\n", MS),
    ];
    let (events, r) = run(steps);
    assert_eq!(
        r["auth"],
        json!({"mechanism": "XOAUTH2", "user": "dave@example.com", "code": 535})
    );
    assert!(!format!("{events:?}{r}").contains("ya29"));
}

#[test]
fn starttls_then_hellos_and_no_more_smtp() {
    let ch = crate::proto::tls::tests::client_hello("mx.example.com");
    let sh = crate::proto::tls::tests::server_hello(0x1301, Some(0x0304));
    let mut server_after = b"220 2.0.0 Ready to start TLS\r\n".to_vec();
    server_after.extend_from_slice(&sh);
    let steps: &[Step<'_>] = &[
        (S, b"220 mx\r\n", MS),
        (C, b"EHLO c\r\n", MS),
        (S, b"250-mx\r\n250 STARTTLS\r\n", MS),
        (C, b"STARTTLS\r\n", 2 * MS),
        (S, &server_after, 3 * MS),
        (C, &ch, 4 * MS),
        (C, b"MAIL FROM:<hidden@x>\r\n", 5 * MS),
    ];
    let (events, r) = run(steps);
    assert_eq!(events.len(), 6);
    assert_eq!(events[5], Event::TlsStarted { ts: 3 * MS });
    assert_eq!(r["tls"], json!(true));
    assert_eq!(r["tls_mode"], json!("starttls"));
    assert_eq!(
        r["tls_info"],
        json!({"sni": "mx.example.com", "version": "TLS 1.3", "cipher": "TLS_AES_128_GCM_SHA256"})
    );
    assert_chunk_invariant(Privacy::default(), SessionStart::default(), steps);

    // The ClientHello sent before the 220 was seen (held), still parsed.
    let mut early = b"STARTTLS\r\n".to_vec();
    early.extend_from_slice(&ch);
    let steps: &[Step<'_>] = &[
        (S, b"220 mx\r\n", MS),
        (C, &early, 2 * MS),
        (S, b"220 go\r\n", 3 * MS),
    ];
    let (_, r) = run(steps);
    assert_eq!(r["tls_info"]["sni"], json!("mx.example.com"));
}

#[test]
fn starttls_refused_stays_clear() {
    let steps: &[Step<'_>] = &[
        (S, b"220 mx\r\n", MS),
        (C, b"STARTTLS\r\n", 2 * MS),
        (
            S,
            b"454 4.7.0 TLS not available due to local problem\r\n",
            3 * MS,
        ),
        (C, b"MAIL FROM:<a@b>\r\n", 4 * MS),
        (S, b"250 ok\r\n", 5 * MS),
    ];
    let (events, r) = run(steps);
    assert_eq!(r["tls"], json!(false));
    assert_eq!(r["tls_mode"], Value::Null);
    assert_eq!(r["transactions"][0]["mail_from"], json!("a@b"));
    assert!(!events.iter().any(|e| matches!(e, Event::TlsStarted { .. })));
}

#[test]
fn implicit_tls_from_the_first_byte() {
    let ch = crate::proto::tls::tests::client_hello("smtp.example.jp");
    let sh = crate::proto::tls::tests::server_hello(0xC02F, None);
    let start = SessionStart {
        implicit_tls: true,
        ..SessionStart::default()
    };
    let steps: &[Step<'_>] = &[(C, &ch, 7 * MS), (S, &sh, 8 * MS)];
    let (events, r) = run_with(Privacy::default(), start, steps);
    assert_eq!(events, vec![Event::TlsStarted { ts: 7 * MS }]);
    assert_eq!(r["tls_mode"], json!("implicit"));
    assert_eq!(r["greeting"], Value::Null);
    assert_eq!(
        r["tls_info"],
        json!({"sni": "smtp.example.jp", "version": "TLS 1.2",
               "cipher": "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"})
    );
}

#[test]
fn japanese_subjects_decoded() {
    let subj = |cs: &str, raw: &[u8]| format!("Subject: =?{cs}?B?{}?=\r\n", b64(raw));
    let show = Privacy {
        show_headers: true,
        ..Privacy::default()
    };
    for (cs, raw) in [
        ("ISO-2022-JP", &b"\x1b$BF|K\\8l\x1b(B"[..]),
        ("Shift_JIS", &b"\x93\xfa\x96\x7b\x8c\xea"[..]),
        ("EUC-JP", &b"\xc6\xfc\xcb\xdc\xb8\xec"[..]),
        ("UTF-8", "日本語".as_bytes()),
    ] {
        let body = format!(
            "{}From: taro@example.jp\r\n\r\nbody\r\n.\r\n",
            subj(cs, raw)
        );
        let steps: &[Step<'_>] = &[
            (S, b"220 mx\r\n", MS),
            (
                C,
                b"MAIL FROM:<taro@example.jp>\r\nRCPT TO:<b@x>\r\nDATA\r\n",
                MS,
            ),
            (S, b"250 ok\r\n250 ok\r\n354 go\r\n", MS),
            (C, body.as_bytes(), MS),
            (S, b"250 ok\r\n", MS),
        ];
        let (_, r) = run_with(show, SessionStart::default(), steps);
        assert_eq!(
            r["transactions"][0]["headers"]["subject"],
            json!("日本語"),
            "{cs}"
        );
        let (_, r) = run(steps);
        assert!(!r.to_string().contains("日本語"));
    }
}

#[test]
fn rset_and_several_transactions() {
    let steps: &[Step<'_>] = &[
        (S, b"220 mx\r\n", MS),
        (C, b"MAIL FROM:<a@x>\r\n", MS),
        (S, b"250 ok\r\n", MS),
        (C, b"RCPT TO:<b@y>\r\n", MS),
        (S, b"550 no\r\n", MS),
        (C, b"RSET\r\n", MS),
        (S, b"250 ok\r\n", MS),
        (
            C,
            b"MAIL FROM:<> RET=HDRS ENVID=QQ1\r\nRCPT TO:<c@y>\r\nDATA\r\n",
            MS,
        ),
        (
            S,
            b"250 ok\r\n250 ok\r\n554 5.5.1 no valid recipients\r\n",
            MS,
        ),
        (C, b"NOOP\r\nVRFY x\r\nEXPN y\r\nHELP\r\nQUIT\r\n", MS),
        (
            S,
            b"250 ok\r\n252 x\r\n502 no\r\n214 help\r\n221 bye\r\n",
            MS,
        ),
    ];
    let mut smtp = Smtp::new(Privacy::default(), SessionStart::default());
    let events = feed(&mut smtp, steps, usize::MAX);
    assert!(anomalies(&events).is_empty(), "{events:?}");
    let t = smtp.transactions();
    assert_eq!(t.len(), 2);
    assert!(t[0].aborted);
    assert_eq!(t[0].rcpt[0].reply.as_ref().map(|r| r.code), Some(550));
    assert_eq!(t[1].mail_from.as_deref(), Some(""));
    assert_eq!(t[1].data_code, Some(554));
    assert_eq!(t[1].size, None);
    let r = Value::Object(smtp.record());
    assert_eq!(
        r["transactions"][1]["mail_params"],
        json!({"RET": "HDRS", "ENVID": "QQ1"})
    );
    // After the refused DATA the next lines are commands again.
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, Event::Command { .. }))
            .count(),
        11
    );
}

#[test]
fn gap_inside_data_counts_and_continues() {
    let mut smtp = Smtp::new(Privacy::default(), SessionStart::default());
    feed(
        &mut smtp,
        &[
            (S, b"220 mx\r\n", MS),
            (C, b"MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\n", MS),
            (S, b"250 ok\r\n250 ok\r\n354 go\r\n", MS),
            (C, b"Subject: g\r\n\r\nline one\r\npart", MS),
        ],
        usize::MAX,
    );
    smtp.gap(C, 1000, 2 * MS);
    let events = feed(
        &mut smtp,
        &[
            (C, b"ial\r\nlast\r\n.\r\nQUIT\r\n", 3 * MS),
            (S, b"250 ok: queued as ABC\r\n221 bye\r\n", 4 * MS),
        ],
        usize::MAX,
    );
    let t = &smtp.transactions()[0];
    assert!(t.incomplete);
    assert_eq!(t.size, Some(12 + 2 + 10 + 4 + 1000 + 5 + 6));
    assert_eq!(t.queue_id.as_deref(), Some("ABC"));
    assert_eq!(events[0], cmd("QUIT", "", 3 * MS));
}

#[test]
fn gap_in_commands_resynchronises() {
    let mut smtp = Smtp::new(Privacy::default(), SessionStart::default());
    feed(
        &mut smtp,
        &[
            (S, b"220 mx\r\n", MS),
            (C, b"MAIL FROM:<a@x>\r\nRCPT TO:<", MS),
        ],
        64,
    );
    smtp.gap(C, 300, 2 * MS);
    let events = feed(
        &mut smtp,
        &[
            (S, b"250 mail-ok\r\n250 lost-rcpt\r\n", 3 * MS),
            (C, b"x@y>\r\nRCPT TO:<c@y>\r\n", 4 * MS),
            (S, b"250 rcpt-c\r\n", 5 * MS),
            (C, b"QUIT\r\n", 6 * MS),
            // An answer older than the command it would match answers something else.
            (S, b"221 bye\r\n", 5 * MS),
            (S, b"221 bye\r\n", 7 * MS),
        ],
        usize::MAX,
    );
    // The torn line is dropped; the reply of the lost command is unpaired; the commands sent
    // after the loss are paired on evidence only (the one waiting; the 221 to QUIT), untimed:
    // a reply to a lost command could come first.
    let said: Vec<&Event> = events
        .iter()
        .filter(|e| !matches!(e, Event::Anomaly { .. }))
        .collect();
    assert_eq!(*said[0], rep("250", None, "mail-ok", 3 * MS, Some(2 * MS)));
    assert_eq!(*said[2], cmd("RCPT", "TO:<c@y>", 4 * MS));
    assert_eq!(*said[3], rep("250", None, "rcpt-c", 5 * MS, None));
    assert_eq!(*said[6], rep("221", None, "bye", 7 * MS, None));
    assert_eq!(anomalies(&events), ["unpaired-reply", "unpaired-reply"]);
    let rc = &smtp.transactions()[0].rcpt;
    assert_eq!(rc.len(), 1);
    assert_eq!(
        rc[0].reply.as_ref().map(|r| r.text()),
        Some("rcpt-c".into())
    );
}

#[test]
fn partial_pickup_in_data_and_in_commands() {
    let start = SessionStart {
        partial: true,
        ..SessionStart::default()
    };
    let steps: &[Step<'_>] = &[
        (S, b"-PIPELINING\r\n250 ok\r\n", MS),
        (
            C,
            b"ge body\r\nMAIL FROM looks like a command\r\n.\r\nMAIL FROM:<n@x>\r\n",
            2 * MS,
        ),
        (
            S,
            b"250 2.0.0 Ok: queued as QID1\r\n250 2.1.0 Ok\r\n",
            3 * MS,
        ),
    ];
    let (events, r) = run_with(Privacy::default(), start, steps);
    assert_eq!(
        events,
        vec![
            rep("250", None, "ok", MS, None),
            Event::Anomaly {
                ts: MS,
                id: "unpaired-reply"
            },
            cmd("MAIL", "FROM:<n@x>", 2 * MS),
            // Paired by its queue id (only a message's end has one), untimed: the "." was
            // found in a pickup; the MAIL after it is then timed.
            rep("250", Some("2.0.0"), "Ok: queued as QID1", 3 * MS, None),
            rep("250", Some("2.1.0"), "Ok", 3 * MS, Some(MS)),
        ]
    );
    assert_eq!(r["greeting"], Value::Null);
    assert_eq!(r["transactions"][0]["mail_from"], json!("n@x"));
    assert_chunk_invariant(Privacy::default(), start, steps);
}

#[test]
fn hostile_lines_become_anomalies() {
    let mut long = b"NOOP ".to_vec();
    long.extend(std::iter::repeat_n(b'x', 20_000));
    long.extend_from_slice(b"\r\n");
    let steps: &[Step<'_>] = &[
        (C, b"EHLO early\r\n", MS),
        (S, b"220 mx\r\n250 hi\r\n", MS),
        (C, &long, MS),
        (C, b"XYZZY\0 \xff\xfe\nmail from:<a@b>\r\n", MS),
        (
            S,
            b"250 ok\r\n500 what\r\n250 ok\r\n250 extra\r\ngarbage\r\n",
            MS,
        ),
        (S, b"250-a\r\n251 b\r\n", MS),
    ];
    let (events, r) = run(steps);
    assert_eq!(
        anomalies(&events),
        [
            "early-talker",
            "line-too-long",
            "bare-lf",
            "nul-byte",
            "non-utf8",
            "unknown-command",
            "unexpected-reply",
            "bad-reply",
            "reply-code-mismatch",
            "unexpected-reply",
        ]
    );
    assert_eq!(r["transactions"][0]["mail_from"], json!("a@b"));
    assert_eq!(r["helo"], json!("early"));
}

#[test]
fn data_facts_for_later_findings() {
    let mut long = vec![b'y'; 1200];
    long.extend_from_slice(b"\r\n");
    let mut body = b"From: x@Spoof.Example\r\n\r\nbare\nlf\r\n".to_vec();
    body.extend_from_slice(&long);
    body.extend_from_slice(b"\n.\nMAIL FROM:<x>\r\n.\r\n");
    let steps: &[Step<'_>] = &[
        (S, b"220 mx\r\n", MS),
        (C, b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n", MS),
        (S, b"250 ok\r\n250 ok\r\n354 go\r\n", MS),
        (C, &body, MS),
        (S, b"250 ok\r\n", MS),
    ];
    let mut smtp = Smtp::new(Privacy::default(), SessionStart::default());
    let events = feed(&mut smtp, steps, usize::MAX);
    let t = &smtp.transactions()[0];
    assert_eq!(t.facts.bare_lf, 3);
    assert_eq!(t.facts.long_lines, 1);
    assert_eq!(t.facts.fake_end_markers, 1);
    assert_eq!(
        t.summary.as_ref().and_then(|s| s.from_domain.as_deref()),
        Some("spoof.example")
    );
    assert_eq!(
        anomalies(&events),
        ["bare-lf", "line-too-long", "fake-end-of-data"]
    );
    // Pipelined without PIPELINING offered (no EHLO at all here).
    assert_eq!(smtp.facts().pipelined_without_offer, 2);
}

#[test]
fn bounded_under_floods() {
    let mut smtp = Smtp::new(Privacy::default(), SessionStart::default());
    smtp.data(S, b"220 mx\r\n", MS);
    let flood = b"NOOP\r\n".repeat(5000);
    smtp.data(C, &flood, MS);
    assert_eq!(smtp.pending.len(), MAX_PENDING);
    assert_eq!(
        smtp.anomaly_counts()["too-many-pending"],
        5000 - MAX_PENDING as u64
    );
    // A client that never waits for 354 is held only up to MAX_HOLD.
    smtp.data(C, b"DATA\r\n", MS);
    for _ in 0..100 {
        smtp.data(C, &[b'z'; 10_000], MS);
    }
    let held: usize = smtp.hold.as_ref().map_or(0, |h| h.bytes);
    assert!(held <= MAX_HOLD);
    assert_eq!(smtp.anomaly_counts()["hold-overflow"], 1);
    let mut n = 0;
    while smtp.poll_event().is_some() {
        n += 1;
    }
    assert!(n <= MAX_EVENTS);
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(
            chunks in proptest::collection::vec(
                (any::<bool>(), proptest::collection::vec(any::<u8>(), 0..200), 0u8..4),
                0..40,
            ),
            partial in any::<bool>(),
        ) {
            let start = SessionStart { partial, ..SessionStart::default() };
            let mut smtp = Smtp::new(Privacy::default(), start);
            for (i, (to_server, bytes, kind)) in chunks.iter().enumerate() {
                let dir = if *to_server { C } else { S };
                let ts = i as Ts * MS;
                match kind {
                    0 => smtp.gap(dir, bytes.len() as u64, ts),
                    // Bias towards protocol-shaped input.
                    1 => smtp.data(dir, b"250 ok\r\nDATA\r\n354 go\r\nBDAT 3\r\n", ts),
                    _ => smtp.data(dir, bytes, ts),
                }
                while smtp.poll_event().is_some() {}
            }
            let _ = smtp.record();
        }
    }
}

/// After STARTTLS, plaintext from the uprobes: the new EHLO, AUTH (secret
/// hidden) and the transaction are dissected; TLS facts stay.
#[test]
fn resumes_plaintext_after_starttls() {
    let mut smtp = Smtp::new(Privacy::default(), SessionStart::default());
    assert!(!smtp.resume_plaintext(0), "no TLS yet: nothing to resume");
    feed(
        &mut smtp,
        &[
            (S, b"220 mx ESMTP\r\n", MS),
            (C, b"EHLO c\r\n", 2 * MS),
            (S, b"250-mx\r\n250 STARTTLS\r\n", 3 * MS),
            (C, b"STARTTLS\r\n", 4 * MS),
            (S, b"220 go ahead\r\n", 5 * MS),
            (C, b"\x16\x03\x01\x00\x05hello", 6 * MS),
        ],
        usize::MAX,
    );
    assert!(smtp.resume_plaintext(7 * MS));
    let plain: &[Step<'_>] = &[
        (C, b"EHLO c\r\n", 7 * MS),
        (S, b"250-mx\r\n250 AUTH PLAIN\r\n", 8 * MS),
        (C, b"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n", 9 * MS),
        (S, b"235 2.7.0 ok\r\n", 10 * MS),
        (C, b"MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\n", 11 * MS),
        (S, b"250 ok\r\n250 ok\r\n354 go\r\n", 12 * MS),
        (C, b"Subject: s\r\n\r\nbody\r\n.\r\n", 13 * MS),
        (S, b"250 2.0.0 Ok: queued as 4XyZ1\r\n", 14 * MS),
    ];
    let ev = feed(&mut smtp, plain, usize::MAX);
    assert_eq!(ev[0], cmd("EHLO", "c", 7 * MS));
    let r = Value::Object(smtp.record());
    assert_eq!(r["tls"], json!(true));
    assert_eq!(r["tls_mode"], json!("starttls"));
    assert_eq!(r["ehlo"], json!(["AUTH PLAIN"]));
    assert_eq!(r["auth"]["user"], json!("alice"));
    assert_eq!(r["auth"]["code"], json!(235));
    assert_eq!(r["transactions"][0]["mail_from"], json!("a@x"));
    assert_eq!(r["transactions"][0]["rcpt"][0]["code"], json!(250));
    assert_eq!(r["transactions"][0]["queue_id"], json!("4XyZ1"));
    let shown = format!("{ev:?}{r}");
    assert!(!shown.contains("AGFsaWNlAHNlY3JldA") && !shown.contains("secret"));
    assert!(
        smtp.resume_plaintext(15 * MS),
        "a second call changes nothing"
    );
}

/// Implicit TLS: the plaintext starts with the greeting.
#[test]
fn resumes_plaintext_on_implicit_tls() {
    let start = SessionStart {
        implicit_tls: true,
        ..Default::default()
    };
    let mut smtp = Smtp::new(Privacy::default(), start);
    feed(
        &mut smtp,
        &[(C, b"\x16\x03\x01\x00\x05hello", MS)],
        usize::MAX,
    );
    assert!(smtp.resume_plaintext(2 * MS));
    feed(
        &mut smtp,
        &[
            (S, b"220 mx ESMTP\r\n", 2 * MS),
            (C, b"EHLO c\r\n", 3 * MS),
            (S, b"250 mx\r\n", 4 * MS),
            (C, b"QUIT\r\n", 5 * MS),
            (S, b"221 bye\r\n", 6 * MS),
        ],
        usize::MAX,
    );
    let r = Value::Object(smtp.record());
    assert_eq!(r["greeting"]["code"], json!(220));
    assert_eq!(r["helo"], json!("c"));
    assert_eq!(r["tls_mode"], json!("implicit"));
    assert!(
        smtp.anomaly_counts().is_empty(),
        "{:?}",
        smtp.anomaly_counts()
    );
}

/// Issue 16: the greeting lost, the 334 challenges still pair with AUTH (not with EHLO), the
/// password line is a redacted response, and nothing before the loss is an early talker.
#[test]
fn lost_greeting_keeps_auth_in_step() {
    let mut smtp = Smtp::new(Privacy::default(), SessionStart::default());
    feed(&mut smtp, &[(C, b"EHLO c\r\n", 2 * MS)], usize::MAX);
    smtp.gap(S, 20, 3 * MS);
    let events = feed(
        &mut smtp,
        &[
            (S, b"250-mx\r\n250-AUTH LOGIN\r\n250 8BITMIME\r\n", 3 * MS),
            (C, b"AUTH LOGIN\r\n", 4 * MS),
            (S, b"334 VXNlcm5hbWU6\r\n", 5 * MS),
            (C, b"dXNlcg==\r\n", 6 * MS),
            (S, b"334 UGFzc3dvcmQ6\r\n", 7 * MS),
            (C, b"c2VjcmV0cHc=\r\n", 8 * MS),
            (S, b"235 ok\r\n", 9 * MS),
        ],
        usize::MAX,
    );
    assert_eq!(anomalies(&events), Vec::<&str>::new());
    assert_eq!(smtp.greeting(), None);
    let events: Vec<Event> = events
        .into_iter()
        .filter(|e| matches!(e, Event::Command { .. } | Event::Reply { .. }))
        .collect();
    // EHLO answered on evidence (its keywords), untimed; the AUTH exchange after it is sure.
    assert_eq!(
        events[0],
        rep("250", None, "mx / AUTH LOGIN / 8BITMIME", 3 * MS, None)
    );
    assert_eq!(smtp.capabilities(), ["AUTH LOGIN", "8BITMIME"]);
    assert_eq!(
        events[2],
        rep("334", None, "VXNlcm5hbWU6", 5 * MS, Some(MS))
    );
    assert_eq!(
        events[3],
        cmd(crate::proto::auth::RESPONSE_VERB, "<redacted>", 6 * MS)
    );
    assert_eq!(
        events[5],
        cmd(crate::proto::auth::RESPONSE_VERB, "<redacted>", 8 * MS)
    );
    assert_eq!(events[6], rep("235", None, "ok", 9 * MS, Some(MS)));
}

/// Issue 16: DATA's 354 lost: the message is held, never read as commands; the end-of-data
/// reply (no reply but 354 answers DATA) shows the 354 was lost, and the body is a message.
#[test]
fn lost_354_keeps_the_body_out_of_the_commands() {
    let mut smtp = Smtp::new(Privacy::default(), SessionStart::default());
    feed(
        &mut smtp,
        &[
            (S, b"220 mx\r\n", MS),
            (C, b"MAIL FROM:<a@x>\r\n", 2 * MS),
            (S, b"250 ok\r\n", 3 * MS),
            (C, b"DATA\r\n", 4 * MS),
        ],
        usize::MAX,
    );
    smtp.gap(S, 40, 6 * MS);
    let events = feed(
        &mut smtp,
        &[
            (
                C,
                b"From: a@x\r\nRCPT TO:<looks@like.a.command>\r\nsecret body line\r\n.\r\n",
                5 * MS,
            ),
            (S, b"250 2.0.0 Ok: queued as QX1\r\n", 6 * MS),
            (C, b"QUIT\r\n", 7 * MS),
            (S, b"221 bye\r\n", 8 * MS),
        ],
        usize::MAX,
    );
    let commands: Vec<&Event> = events
        .iter()
        .filter(|e| matches!(e, Event::Command { .. }))
        .collect();
    assert_eq!(commands, [&cmd("QUIT", "", 7 * MS)]);
    assert_eq!(anomalies(&events), ["unpaired-command"]);
    let tx = &smtp.transactions()[0];
    assert_eq!(tx.queue_id.as_deref(), Some("QX1"));
    assert!(tx.rcpt.is_empty());
}

/// Issue 16: a client gap swallowed the message's "." (and a QUIT): the end-of-data reply
/// shows the message is over (a server says nothing inside one), so the QUIT after it is a
/// command, not body, and the reply is the message's, untimed.
#[test]
fn lost_end_of_data_ends_the_message_at_the_reply() {
    let mut smtp = Smtp::new(Privacy::default(), SessionStart::default());
    feed(
        &mut smtp,
        &[
            (S, b"220 mx\r\n", MS),
            (C, b"MAIL FROM:<a@x>\r\nDATA\r\n", 2 * MS),
            (S, b"250 ok\r\n354 go\r\n", 3 * MS),
            (C, b"Subject: s\r\n\r\nbody\r\n", 4 * MS),
        ],
        usize::MAX,
    );
    smtp.gap(C, 3, 5 * MS);
    let events = feed(
        &mut smtp,
        &[
            (S, b"250 2.0.0 Ok: queued as QX2\r\n", 6 * MS),
            (C, b"QUIT\r\n", 7 * MS),
            (S, b"221 bye\r\n", 8 * MS),
        ],
        usize::MAX,
    );
    let said: Vec<&Event> = events
        .iter()
        .filter(|e| matches!(e, Event::Command { .. } | Event::Reply { .. }))
        .collect();
    assert_eq!(
        said,
        [
            &rep("250", Some("2.0.0"), "Ok: queued as QX2", 6 * MS, None),
            &cmd("QUIT", "", 7 * MS),
            // Realigned by the queue id: the QUIT after it is sure.
            &rep("221", None, "bye", 8 * MS, Some(MS)),
        ]
    );
    let tx = &smtp.transactions()[0];
    assert_eq!(tx.queue_id.as_deref(), Some("QX2"));
    assert!(tx.incomplete);
    assert_eq!(tx.size, Some(12 + 2 + 6 + 3));
}

/// A 354 while a RCPT is first in line: the queue is out of step although nothing was seen
/// lost (a reply merged into the greeting: suricata-verify detect-email-received). The RCPT is
/// unpaired, the 354 answers DATA, and the message is read as one (never as commands).
#[test]
fn reply_only_data_can_take_realigns_a_clean_queue() {
    let (events, record) = run(&[
        (S, b"220 mx\r\n", MS),
        (C, b"MAIL FROM:<a@x>\r\n", 2 * MS),
        (C, b"RCPT TO:<b@y>\r\n", 3 * MS),
        (C, b"DATA\r\n", 4 * MS),
        (S, b"250 ok\r\n", 5 * MS),
        (S, b"354 go\r\n", 6 * MS),
        (
            C,
            b"Subject: s\r\n\r\nRCPT TO:<not@a.command>\r\n.\r\n",
            7 * MS,
        ),
        (S, b"250 ok: queued as QX3\r\n", 8 * MS),
    ]);
    let commands: Vec<&Event> = events
        .iter()
        .filter(|e| matches!(e, Event::Command { .. }))
        .collect();
    assert_eq!(commands.len(), 3);
    assert_eq!(anomalies(&events), ["unpaired-command"]);
    assert!(events.contains(&rep("354", None, "go", 6 * MS, None)));
    // Realigned on the 354: the end-of-data reply is sure again.
    assert!(events.contains(&rep("250", None, "ok: queued as QX3", 8 * MS, Some(MS))));
    assert_eq!(record["transactions"][0]["queue_id"], json!("QX3"));
    assert_eq!(record["transactions"][0]["data_code"], json!(354));
    assert_eq!(record["transactions"][0]["rcpt"][0]["code"], json!(null));
}
