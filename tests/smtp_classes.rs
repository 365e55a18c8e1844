//! Issue 16's classes of wrong SMTP results, each on a crafted capture replayed end to end:
//! a refused EHLO keeps the envelope, a refused nested MAIL keeps the open transaction, an
//! invalid BDAT's refusal is the transaction's reply, header values come out as sent, a
//! client going on in clear after STARTTLS is read as SMTP, and a failed TLS handshake
//! claims no TLS parameters.
mod common;

use common::craft::{replay, sessions, write_pcap, Conv};
use common::TempDir;
use serde_json::{json, Value};

const GREETING: &[u8] = b"220 mx.example ESMTP\r\n";
const EHLO_REPLY: &[u8] = b"250-mx.example\r\n250-PIPELINING\r\n250-CHUNKING\r\n250 STARTTLS\r\n";

fn greeted(port: u16, start_s: u64) -> Conv {
    let mut c = Conv::open(port, 25, start_s);
    c.server(GREETING)
        .client(b"EHLO client.example\r\n")
        .server(EHLO_REPLY);
    c
}

/// A TLS record of `ctype` carrying `body`.
fn record(ctype: u8, body: &[u8]) -> Vec<u8> {
    let mut r = vec![ctype, 3, 3];
    r.extend((body.len() as u16).to_be_bytes());
    r.extend(body);
    r
}

/// A handshake message in its record.
fn handshake(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut hs = vec![kind];
    hs.extend(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend(body);
    record(22, &hs)
}

/// A TLS 1.2 ClientHello naming `sni`.
fn client_hello(sni: &[u8]) -> Vec<u8> {
    let mut name = vec![0u8];
    name.extend((sni.len() as u16).to_be_bytes());
    name.extend(sni);
    let mut list = (name.len() as u16).to_be_bytes().to_vec();
    list.extend(name);
    let mut ext = vec![0, 0];
    ext.extend((list.len() as u16).to_be_bytes());
    ext.extend(list);
    let mut body = vec![3, 3];
    body.extend([7u8; 32]);
    body.push(0);
    body.extend([0, 2, 0xc0, 0x2f, 1, 0]);
    body.extend((ext.len() as u16).to_be_bytes());
    body.extend(ext);
    handshake(1, &body)
}

/// A TLS 1.2 ServerHello choosing ECDHE-RSA-AES128-GCM-SHA256.
fn server_hello() -> Vec<u8> {
    let mut body = vec![3, 3];
    body.extend([9u8; 32]);
    body.extend([0, 0xc0, 0x2f, 0, 0, 0]);
    handshake(2, &body)
}

fn by_port(sessions: &[Value], port: u16) -> &Value {
    let want = format!("10.99.8.1:{port}");
    sessions
        .iter()
        .find(|s| s["client"] == want.as_str())
        .unwrap_or_else(|| panic!("no session from {want}"))
}

fn finding_ids(s: &Value) -> Vec<&str> {
    s["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["id"].as_str().unwrap())
        .collect()
}

fn captures() -> Vec<Conv> {
    let mut out = Vec::new();
    // 40001: a refused EHLO inside a transaction, then the recipient and the message.
    let mut c = greeted(40001, 0);
    c.client(b"MAIL FROM:<alice@example.org>\r\n")
        .server(b"250 2.1.0 Ok\r\n")
        .client(b"EHLO bad_name!\r\n")
        .server(b"501 5.5.2 <bad_name!>: Helo command rejected: Invalid name\r\n")
        .client(b"RCPT TO:<bob@example.com>\r\n")
        .server(b"250 2.1.5 Ok\r\n")
        .client(b"DATA\r\n")
        .server(b"354 End data with <CR><LF>.<CR><LF>\r\n")
        .client(b"Subject: one\r\n\r\nbody\r\n.\r\n")
        .server(b"250 2.0.0 Ok: queued as AAA111\r\n");
    c.close();
    out.push(c);
    // 40002: a second MAIL refused with 503; the message goes out under the first.
    let mut c = greeted(40002, 10);
    c.client(b"MAIL FROM:<alice@example.org>\r\n")
        .server(b"250 2.1.0 Ok\r\n")
        .client(b"MAIL FROM:<mallory@example.net>\r\n")
        .server(b"503 5.5.1 Error: nested MAIL command\r\n")
        .client(b"RCPT TO:<bob@example.com>\r\n")
        .server(b"250 2.1.5 Ok\r\n")
        .client(b"DATA\r\n")
        .server(b"354 End data with <CR><LF>.<CR><LF>\r\n")
        .client(b"Subject: two\r\n\r\nbody\r\n.\r\n")
        .server(b"250 2.0.0 Ok: queued as BBB222\r\n");
    c.close();
    out.push(c);
    // 40003: BDAT without a valid size.
    let mut c = greeted(40003, 20);
    c.client(b"MAIL FROM:<alice@example.org>\r\n")
        .server(b"250 2.1.0 Ok\r\n")
        .client(b"RCPT TO:<bob@example.com>\r\n")
        .server(b"250 2.1.5 Ok\r\n")
        .client(b"BDAT -5 LAST\r\n")
        .server(b"521 5.5.4 Syntax: BDAT count [LAST]\r\n");
    c.close();
    out.push(c);
    // 40004: header values a replay shows only with --show-headers.
    let mut c = greeted(40004, 30);
    c.client(b"MAIL FROM:<jam@abrakadabra.ch>\r\n")
        .server(b"250 2.1.0 Ok\r\n")
        .client(b"RCPT TO:<bob@example.com>\r\n")
        .server(b"250 2.1.5 Ok\r\n")
        .client(b"DATA\r\n")
        .server(b"354 End data with <CR><LF>.<CR><LF>\r\n")
        .client(
            b"From: \"jam,abrakadabra.ch\" <jam@abrakadabra.ch>\r\n\
Subject: Preis  \x80 10   netto\r\n  (Angebot)\r\nTo: Ren\xe9 <bob@example.com>\r\n\r\nHallo\r\n.\r\n",
        )
        .server(b"250 2.0.0 Ok: queued as CCC333\r\n");
    c.close();
    out.push(c);
    // 40005: STARTTLS accepted, the client carries on in clear.
    let mut c = greeted(40005, 40);
    c.client(b"STARTTLS\r\n")
        .server(b"220 2.0.0 Ready to start TLS\r\n")
        .client(b"MAIL FROM:<alice@example.org>\r\n")
        .server(b"250 2.1.0 Ok\r\n")
        .client(b"QUIT\r\n")
        .server(b"221 2.0.0 Bye\r\n");
    c.close();
    out.push(c);
    // 40007: the same refusal with the refused MAIL's RCPT and DATA pipelined after it.
    let mut c = greeted(40007, 60);
    c.client(b"MAIL FROM:<alice@example.org>\r\n")
        .server(b"250 2.1.0 Ok\r\n")
        .client(b"MAIL FROM:<mallory@example.net>\r\nRCPT TO:<bob@example.com>\r\nDATA\r\n")
        .server(b"503 5.5.1 Error: nested MAIL command\r\n250 2.1.5 Ok\r\n354 go ahead\r\n")
        .client(b"Subject: three\r\n\r\nbody\r\n.\r\n")
        .server(b"250 2.0.0 Ok: queued as DDD444\r\n");
    c.close();
    out.push(c);
    // 40006: STARTTLS whose handshake the client gives up (fatal unknown_ca alert).
    let mut c = greeted(40006, 50);
    c.client(b"STARTTLS\r\n")
        .server(b"220 2.0.0 Ready to start TLS\r\n")
        .client(&client_hello(b"mx.example"))
        .server(&server_hello())
        .client(&record(21, &[2, 48]));
    c.close();
    out.push(c);
    out
}

#[test]
fn smtp_classes_on_a_crafted_capture() {
    let tmp = TempDir::new("smtp-classes");
    let pcap = tmp.path().join("classes.pcap");
    write_pcap(&pcap, &captures());
    let json = replay(&["--json"], &pcap);
    let all = sessions(&json);
    assert_eq!(all.len(), 7, "{json}");

    let s = by_port(&all, 40001);
    let t = s["transactions"].as_array().unwrap();
    assert_eq!(t.len(), 1, "{s}");
    assert_eq!(t[0]["mail_from"], json!("alice@example.org"));
    assert_eq!(t[0]["rcpt"][0]["addr"], json!("bob@example.com"));
    assert_eq!(t[0]["queue_id"], json!("AAA111"));

    let s = by_port(&all, 40002);
    let t = s["transactions"].as_array().unwrap();
    assert_eq!(t.len(), 2, "{s}");
    assert_eq!(t[0]["mail_from"], json!("alice@example.org"));
    assert_eq!(t[0]["queue_id"], json!("BBB222"));
    assert_eq!(t[0]["rcpt"][0]["code"], json!(250));
    assert_eq!(t[1]["mail_from"], json!("mallory@example.net"));
    assert_eq!((&t[1]["rcpt"], &t[1]["reply"]), (&json!([]), &json!(null)));

    let t = by_port(&all, 40007)["transactions"].as_array().unwrap();
    assert_eq!(t.len(), 2);
    assert_eq!(t[0]["mail_from"], json!("alice@example.org"));
    assert_eq!(t[0]["rcpt"][0]["addr"], json!("bob@example.com"));
    assert_eq!(t[0]["queue_id"], json!("DDD444"));
    assert_eq!(t[1]["rcpt"], json!([]));

    let s = by_port(&all, 40003);
    assert_eq!(
        s["transactions"][0]["reply"],
        json!({"code": 521, "enhanced": "5.5.4", "text": "Syntax: BDAT count [LAST]"})
    );
    assert_eq!(s["transactions"][0]["bdat_chunks"], json!(0));

    // Header values stay private by default.
    let s = by_port(&all, 40004);
    assert_eq!(s["transactions"][0]["headers"], json!(null));
    assert!(!json.contains("Preis") && !json.contains("Angebot"));

    let s = by_port(&all, 40005);
    assert_eq!((&s["tls"], &s["tls_mode"]), (&json!(false), &json!(null)));
    assert_eq!(
        s["transactions"][0]["mail_from"],
        json!("alice@example.org")
    );
    assert_eq!(
        s["transactions"][0]["mail_params"],
        json!({}),
        "read as the command it is"
    );
    assert!(finding_ids(s).contains(&"starttls-failed"), "{s}");

    let s = by_port(&all, 40006);
    assert_eq!(s["tls"], json!(true));
    assert_eq!(
        s["tls_info"],
        json!({"sni": "mx.example", "version": null, "cipher": null,
               "failed": "the client sent a fatal alert (unknown_ca)"})
    );
    assert!(finding_ids(s).contains(&"tls-handshake-failed"), "{s}");
    assert!(!finding_ids(s).contains(&"starttls-failed"), "{s}");
}

#[test]
fn header_values_as_sent_with_show_headers() {
    let tmp = TempDir::new("smtp-classes-headers");
    let pcap = tmp.path().join("classes.pcap");
    write_pcap(&pcap, &captures());
    let all = sessions(&replay(&["--json", "--show-headers"], &pcap));
    let h = &by_port(&all, 40004)["transactions"][0]["headers"];
    assert_eq!(
        h["from"],
        json!("\"jam,abrakadabra.ch\" <jam@abrakadabra.ch>")
    );
    // Only the fold's CRLF goes; 0x80 is windows-1252's euro sign, 0xE9 its é.
    assert_eq!(h["subject"], json!("Preis  € 10   netto  (Angebot)"));
    assert_eq!(h["to"], json!("René <bob@example.com>"));
}

#[test]
fn clear_after_starttls_in_the_event_stream() {
    let tmp = TempDir::new("smtp-classes-events");
    let pcap = tmp.path().join("classes.pcap");
    write_pcap(&pcap, &captures());
    let out = replay(&["--json", "--events"], &pcap);
    let events: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["client"] == "10.99.8.1:40005" || v["type"] != "session")
        .collect();
    let anomalies: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "anomaly" && e["id"] == "clear-after-starttls")
        .collect();
    assert_eq!(anomalies.len(), 1, "{out}");
    // The commands after it are SMTP: MAIL and QUIT of that session, answered.
    let sid = &anomalies[0]["session"];
    let verbs: Vec<&str> = events
        .iter()
        .filter(|e| &e["session"] == sid && e["type"] == "command")
        .map(|e| e["verb"].as_str().unwrap())
        .collect();
    assert_eq!(verbs, ["EHLO", "STARTTLS", "MAIL", "QUIT"]);
}

/// The shared corpus's captures of the same classes (suricata-verify, Zeek).
fn corpus(rel: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/corpus/pcaps")
        .join(rel)
}

#[test]
fn corpus_rejected_ehlo_and_invalid_bdat() {
    let s = sessions(&replay(
        &["--json"],
        &corpus("suricata-verify/tests/smtp-rejected-ehlo-preserves-envelope/input.pcap"),
    ));
    assert_eq!(s.len(), 1);
    // HELO accepted, MAIL, `EHLO` refused with 501, then RCPT and DATA: one transaction.
    assert_eq!(s[0]["helo"], json!("client.example.com"));
    let t = s[0]["transactions"].as_array().unwrap();
    assert_eq!(t.len(), 1, "{}", s[0]);
    assert_eq!(t[0]["mail_from"], json!("alice@example.com"));
    assert_eq!(t[0]["rcpt"][0]["addr"], json!("bob@example.com"));
    assert_eq!(t[0]["queue_id"], json!("6C83A5EECDCE"));

    // An accepted EHLO does end the first envelope.
    let s = sessions(&replay(
        &["--json"],
        &corpus("suricata-verify/tests/smtp-ehlo-reset/input.pcap"),
    ));
    let t = s[0]["transactions"].as_array().unwrap();
    assert_eq!(t.len(), 2);
    assert_eq!((&t[0]["rcpt"], &t[0]["reply"]), (&json!([]), &json!(null)));
    assert_eq!(t[1]["mail_from"], json!("bob@example.com"));
    assert_eq!(t[1]["queue_id"], json!("BBD4A58CE356"));

    for f in [
        "zeek/traces/smtp/smtp-bdat-cmd-negative-chunk-size.pcap",
        "zeek/traces/smtp/smtp-bdat-cmd-chunk-size-overflow2.pcap",
    ] {
        let s = sessions(&replay(&["--json"], &corpus(f)));
        assert_eq!(
            s[0]["transactions"][0]["reply"],
            json!({"code": 521, "enhanced": "5.5.4", "text": "Syntax: BDAT count [LAST]"}),
            "{f}"
        );
        assert_eq!(s[0]["anomalies"], json!(["bad-bdat"]), "{f}");
    }
}

#[test]
fn smtp_through_proxy_tunnels_in_replay() {
    let mut convs = Vec::new();
    let mut c = Conv::open(41001, 3128, 0);
    c.client(b"CONNECT mx.example:25 HTTP/1.1\r\nHost: mx.example:25\r\n\r\n")
        .server(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .server(GREETING)
        .client(b"EHLO spammer.example\r\n")
        .server(EHLO_REPLY)
        .client(b"MAIL FROM:<spam@spammer.example>\r\n")
        .server(b"250 2.1.0 Ok\r\n");
    c.close();
    convs.push(c);
    let mut c = Conv::open(41002, 1080, 10);
    c.client(b"\x05\x01\x02")
        .server(b"\x05\x02")
        .client(b"\x01\x04user\x06s3cr3t")
        .server(b"\x01\x00")
        .client(b"\x05\x01\x00\x03\x0amx.example\x00\x19")
        .server(b"\x05\x00\x00\x01\x0a\x63\x08\x02\x00\x19")
        .server(GREETING)
        .client(b"EHLO spammer.example\r\n")
        .server(EHLO_REPLY);
    c.close();
    convs.push(c);
    let mut c = Conv::open(41003, 1081, 20);
    c.client(b"\x04\x01\x00\x19\x0a\x63\x08\x02\x00")
        .server(b"\x00\x5a\x00\x00\x00\x00\x00\x00")
        .server(GREETING)
        .client(b"HELO spammer.example\r\n")
        .server(b"250 mx.example\r\n");
    c.close();
    convs.push(c);
    let tmp = TempDir::new("smtp-classes-tunnels");
    let pcap = tmp.path().join("tunnels.pcap");
    write_pcap(&pcap, &convs);
    let json = replay(&["--json"], &pcap);
    let all = sessions(&json);
    assert_eq!(all.len(), 3, "{json}");
    for (port, kind) in [
        (41001, "tunnel-http-connect"),
        (41002, "tunnel-socks5"),
        (41003, "tunnel-socks4"),
    ] {
        let s = by_port(&all, port);
        assert_eq!(s["proto"], json!("smtp"), "{s}");
        assert_eq!(s["helo"], json!("spammer.example"), "{s}");
        assert_eq!(s["greeting"]["text"], json!("mx.example ESMTP"), "{s}");
        assert_eq!(s["anomalies"], json!([kind]), "{s}");
    }
    assert_eq!(
        by_port(&all, 41001)["transactions"][0]["mail_from"],
        json!("spam@spammer.example")
    );
    // The SOCKS5 password is part of the setup: never shown.
    assert!(!json.contains("s3cr3t"));
}
