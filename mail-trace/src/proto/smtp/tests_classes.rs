//! The classes of wrong results issue 16 lists (a rejected EHLO, a refused second MAIL,
//! an invalid BDAT, STARTTLS not followed by TLS, a failed TLS handshake), each on a
//! hand-written transcript re-fed in chunks of every size.

use super::tests::{assert_chunk_invariant, feed, run, Step, C, MS, S};
use super::*;
use serde_json::{json, Value};

const HELLO: &[Step<'static>] = &[
    (S, b"220 mx ESMTP\r\n", MS),
    (C, b"EHLO a.example\r\n", 2 * MS),
    (S, b"250-mx\r\n250 CHUNKING\r\n", 3 * MS),
];

fn steps<'a>(rest: &[Step<'a>]) -> Vec<Step<'a>> {
    HELLO.iter().chain(rest).copied().collect()
}

#[test]
fn rejected_ehlo_keeps_the_envelope() {
    let s = steps(&[
        (C, b"MAIL FROM:<a@x>\r\n", 4 * MS),
        (S, b"250 ok\r\n", 5 * MS),
        (C, b"EHLO \x01bad\r\n", 6 * MS),
        (S, b"501 5.5.2 bad hostname\r\n", 7 * MS),
        (C, b"HELO also-bad\r\n", 8 * MS),
        (S, b"550 no\r\n", 9 * MS),
        (C, b"RCPT TO:<b@y>\r\n", 10 * MS),
        (S, b"250 ok\r\n", 11 * MS),
    ]);
    let (_, r) = run(&s);
    // The accepted name, not the refused ones.
    assert_eq!(r["helo"], json!("a.example"));
    let txs = r["transactions"].as_array().unwrap();
    assert_eq!(txs.len(), 1, "{r}");
    assert_eq!(txs[0]["mail_from"], json!("a@x"));
    assert_eq!(txs[0]["rcpt"][0]["addr"], json!("b@y"));
    assert_eq!(txs[0]["rcpt"][0]["code"], json!(250));
    assert_chunk_invariant(Privacy::default(), SessionStart::default(), &s);
}

#[test]
fn accepted_helo_resets_the_envelope() {
    let s = steps(&[
        (C, b"MAIL FROM:<a@x>\r\n", 4 * MS),
        (S, b"250 ok\r\n", 5 * MS),
        (C, b"HELO again\r\n", 6 * MS),
        (S, b"250 mx\r\n", 7 * MS),
        (C, b"RCPT TO:<b@y>\r\n", 8 * MS),
        (S, b"503 5.5.1 need MAIL\r\n", 9 * MS),
    ]);
    let (_, r) = run(&s);
    let txs = r["transactions"].as_array().unwrap();
    assert_eq!(txs.len(), 2, "{r}");
    assert_eq!(txs[0]["rcpt"], json!([]));
    assert_eq!(txs[1]["mail_from"], json!(null));
    assert_eq!(txs[1]["rcpt"][0]["code"], json!(503));
}

#[test]
fn refused_second_mail_keeps_the_first_sender() {
    let s = steps(&[
        (C, b"MAIL FROM:<good@x>\r\n", 4 * MS),
        (S, b"250 ok\r\n", 5 * MS),
        (C, b"MAIL FROM:<evil@x>\r\n", 6 * MS),
        (S, b"503 5.5.1 Error: nested MAIL command\r\n", 7 * MS),
        (C, b"RCPT TO:<b@y>\r\n", 8 * MS),
        (S, b"250 ok\r\n", 9 * MS),
        (C, b"DATA\r\n", 10 * MS),
        (S, b"354 go\r\n", 11 * MS),
        (C, b"Subject: s\r\n\r\nbody\r\n.\r\n", 12 * MS),
        (S, b"250 2.0.0 Ok: queued as ABC123\r\n", 13 * MS),
    ]);
    let (_, r) = run(&s);
    let txs = r["transactions"].as_array().unwrap();
    assert_eq!(txs.len(), 2, "{r}");
    assert_eq!(txs[0]["mail_from"], json!("good@x"));
    assert_eq!(txs[0]["rcpt"][0]["addr"], json!("b@y"));
    assert_eq!(txs[0]["queue_id"], json!("ABC123"));
    assert_eq!(txs[0]["size"], json!(20));
    // The refused MAIL is kept, with its refusal and nothing else.
    assert_eq!(txs[1]["mail_from"], json!("evil@x"));
    assert_eq!(txs[1]["rcpt"], json!([]));
    assert_eq!(txs[1]["size"], json!(null));
    assert_eq!(txs[1]["reply"], json!(null));
    let mut smtp = Smtp::new(Privacy::default(), SessionStart::default());
    feed(&mut smtp, &s, usize::MAX);
    assert_eq!(
        smtp.transactions()[1].mail_reply.as_ref().map(|r| r.code),
        Some(503)
    );
    assert_chunk_invariant(Privacy::default(), SessionStart::default(), &s);
}

#[test]
fn refused_second_mail_pipelined_with_its_envelope() {
    // The refused MAIL's RCPT and DATA went out before its 503: they belong to the first.
    let s = steps(&[
        (C, b"MAIL FROM:<good@x>\r\n", 4 * MS),
        (S, b"250 ok\r\n", 5 * MS),
        (
            C,
            b"MAIL FROM:<evil@x>\r\nRCPT TO:<b@y>\r\nDATA\r\n",
            6 * MS,
        ),
        (
            S,
            b"503 5.5.1 Error: nested MAIL command\r\n250 ok\r\n354 go\r\n",
            7 * MS,
        ),
        (C, b"Subject: s\r\n\r\nbody\r\n.\r\n", 8 * MS),
        (S, b"250 2.0.0 Ok: queued as ABC123\r\n", 9 * MS),
    ]);
    let (_, r) = run(&s);
    let txs = r["transactions"].as_array().unwrap();
    assert_eq!(txs.len(), 2, "{r}");
    assert_eq!(txs[0]["mail_from"], json!("good@x"));
    assert_eq!(txs[0]["rcpt"][0]["addr"], json!("b@y"));
    assert_eq!(txs[0]["rcpt"][0]["code"], json!(250));
    assert_eq!(txs[0]["data_code"], json!(354));
    assert_eq!(txs[0]["queue_id"], json!("ABC123"));
    assert_eq!(txs[0]["size"], json!(20));
    assert_eq!(txs[1]["mail_from"], json!("evil@x"));
    assert_eq!(
        (&txs[1]["rcpt"], &txs[1]["data_code"], &txs[1]["size"]),
        (&json!([]), &json!(null), &json!(null))
    );
    assert_chunk_invariant(Privacy::default(), SessionStart::default(), &s);
}

#[test]
fn accepted_second_mail_starts_a_new_transaction() {
    // Some servers take a new MAIL as an implicit reset: then it is a new transaction.
    let s = steps(&[
        (C, b"MAIL FROM:<one@x>\r\n", 4 * MS),
        (S, b"250 ok\r\n", 5 * MS),
        (C, b"MAIL FROM:<two@x>\r\n", 6 * MS),
        (S, b"250 ok\r\n", 7 * MS),
        (C, b"RCPT TO:<b@y>\r\n", 8 * MS),
        (S, b"250 ok\r\n", 9 * MS),
    ]);
    let (_, r) = run(&s);
    assert_eq!(r["transactions"][0]["rcpt"], json!([]));
    assert_eq!(r["transactions"][1]["rcpt"][0]["addr"], json!("b@y"));
}

#[test]
fn invalid_bdat_reply_recorded_on_the_transaction() {
    let s = steps(&[
        (C, b"MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\n", 4 * MS),
        (S, b"250 ok\r\n250 ok\r\n", 5 * MS),
        (C, b"BDAT ten LAST\r\n", 6 * MS),
        (S, b"501 5.5.4 Syntax: BDAT count [LAST]\r\n", 7 * MS),
    ]);
    let (events, r) = run(&s);
    assert!(events
        .iter()
        .any(|e| matches!(e, Event::Anomaly { id: "bad-bdat", .. })));
    let t = &r["transactions"][0];
    assert_eq!(t["bdat_chunks"], json!(0));
    assert_eq!(
        t["reply"],
        json!({"code": 501, "enhanced": "5.5.4", "text": "Syntax: BDAT count [LAST]"})
    );
    assert_chunk_invariant(Privacy::default(), SessionStart::default(), &s);
}

#[test]
fn clear_after_starttls_is_read_as_smtp() {
    let s = steps(&[
        (C, b"STARTTLS\r\n", 4 * MS),
        (S, b"220 2.0.0 Ready to start TLS\r\n", 5 * MS),
        (C, b"MAIL FROM:<a@x>\r\n", 6 * MS),
        (S, b"250 2.1.0 Ok\r\n", 7 * MS),
        (C, b"RCPT TO:<b@y>\r\n", 8 * MS),
        (S, b"250 2.1.5 Ok\r\n", 9 * MS),
    ]);
    let (events, r) = run(&s);
    assert!(
        events.contains(&Event::Anomaly {
            ts: 6 * MS,
            id: "clear-after-starttls"
        }),
        "{events:?}"
    );
    assert!(events.contains(&super::tests::cmd("MAIL", "FROM:<a@x>", 6 * MS)));
    // Not announced as TLS: the client never began it.
    assert!(!events.iter().any(|e| matches!(e, Event::TlsStarted { .. })));
    assert_eq!(r["tls"], json!(false));
    assert_eq!(r["tls_mode"], json!(null));
    assert_eq!(r["transactions"][0]["mail_from"], json!("a@x"));
    assert_eq!(r["transactions"][0]["rcpt"][0]["code"], json!(250));
    let ids: Vec<&Value> = r["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| &f["id"])
        .collect();
    assert_eq!(ids, [&json!("starttls-failed")], "{r}");
    assert_chunk_invariant(Privacy::default(), SessionStart::default(), &s);
}

#[test]
fn failed_starttls_handshake_claims_no_tls() {
    use crate::proto::tls::tests::{client_hello, server_hello};
    let hello = client_hello("mx.example");
    let server = server_hello(0xC02F, None);
    let alert: &[u8] = &[21, 3, 3, 0, 2, 2, 48];
    let s = steps(&[
        (C, b"STARTTLS\r\n", 4 * MS),
        (S, b"220 go ahead\r\n", 5 * MS),
        (C, &hello, 6 * MS),
        (S, &server, 7 * MS),
        (C, alert, 8 * MS),
    ]);
    let (events, r) = run(&s);
    assert!(!anomalies_of(&events).contains(&"clear-after-starttls"));
    // Announced at the 220 once the ClientHello showed the client did begin TLS.
    let tls: Vec<&Event> = events
        .iter()
        .filter(|e| matches!(e, Event::TlsStarted { .. }))
        .collect();
    assert_eq!(tls, [&Event::TlsStarted { ts: 5 * MS }]);
    assert_eq!(r["tls"], json!(true));
    assert_eq!(
        r["tls_info"],
        json!({"sni": "mx.example", "version": null, "cipher": null,
               "failed": "the client sent a fatal alert (unknown_ca)"})
    );
    let f: Vec<&Value> = r["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["id"] == "tls-handshake-failed")
        .collect();
    assert_eq!(
        f,
        [&json!({"id": "tls-handshake-failed", "severity": "warn",
                 "reason": "the TLS handshake failed: the client sent a fatal alert (unknown_ca)"})]
    );
    assert_chunk_invariant(Privacy::default(), SessionStart::default(), &s);
}

fn anomalies_of(events: &[Event]) -> Vec<&'static str> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Anomaly { id, .. } => Some(*id),
            _ => None,
        })
        .collect()
}
