//! Postfix 3.x log messages (the text after `postfix/…[pid]: `).
//!
//! A message is `QUEUEID: rest`, `NOQUEUE: rest` or a plain text (`connect from …`). The rest is
//! mostly a `key=value` list separated by `, ` (or spaces in the tail of reject lines), values in
//! `<…>` kept whole, and a trailing `(…)` note (`status=sent (delivered to maildir)`).
use serde_json::{Map, Value};

use super::Kind;

/// What a Postfix message says.
#[derive(Clone, Debug, PartialEq)]
pub struct Parsed {
    pub queue_id: Option<String>,
    pub kind: Kind,
    pub fields: Map<String, Value>,
    /// The text may carry header or body content (header_checks `warning: header …`).
    pub private: bool,
}

/// Parses one Postfix message.
pub fn parse(message: &str) -> Parsed {
    let mut p = Parsed {
        queue_id: None,
        kind: Kind::Other,
        fields: Map::new(),
        private: false,
    };
    let mut rest = message;
    if let Some((id, r)) = message.split_once(": ") {
        if id == "NOQUEUE" {
            rest = r;
        } else if is_queue_id(id) {
            p.queue_id = Some(id.to_string());
            rest = r;
        }
    }
    let f = &mut p.fields;
    if let Some(r) = rest
        .strip_prefix("connect from ")
        .filter(|_| p.queue_id.is_none())
    {
        p.kind = Kind::Connect;
        client_fields(f, r.split(' ').next().unwrap_or(r));
    } else if let Some(r) = rest.strip_prefix("disconnect from ") {
        p.kind = Kind::Disconnect;
        let (client, stats) = r.split_once(' ').unwrap_or((r, ""));
        client_fields(f, client);
        if !stats.is_empty() {
            f.insert("stats".into(), stats.into());
        }
    } else if rest.starts_with("client=") {
        p.kind = Kind::Client;
        kv_into(f, rest);
        if let Some(c) = f.get("client").and_then(Value::as_str).map(str::to_string) {
            client_fields(f, &c);
        }
    } else if rest.starts_with("message-id=") {
        p.kind = Kind::MessageId;
        kv_into(f, rest);
    } else if rest.starts_with("from=") || rest.starts_with("uid=") {
        p.kind = Kind::Queued;
        kv_into(f, rest);
    } else if rest.starts_with("to=") {
        p.kind = Kind::Delivery;
        kv_into(f, rest);
    } else if rest == "removed" {
        p.kind = Kind::Removed;
    } else if let Some(new) = notification(rest) {
        p.kind = Kind::Bounce;
        let what = rest[..rest.len() - new.len() - 2].trim_end_matches(" notification");
        f.insert("notification".into(), what.into());
        f.insert("new_queue_id".into(), new.into());
    } else if let Some((action, r)) = rest.split_once(": ") {
        match action {
            "reject" | "milter-reject" | "defer" | "discard" | "hold" | "redirect" | "filter"
            | "warning" | "info" | "prepend" | "replace"
                if r.contains(" from ") =>
            {
                p.kind = if action.ends_with("reject") {
                    Kind::Reject
                } else {
                    Kind::Action
                };
                f.insert("action".into(), action.into());
                // header_checks and body_checks lines quote the header or body text.
                p.private = r.starts_with("header ") || r.starts_with("body ");
                if !p.private {
                    reject_fields(f, r);
                }
            }
            _ => other(f, rest),
        }
    } else {
        other(f, rest);
    }
    p
}

/// Short ids are upper-case hex; long ids (`enable_long_queue_ids`) mix digits and letters.
pub fn is_queue_id(s: &str) -> bool {
    if !(6..=20).contains(&s.len()) || !s.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return false;
    }
    let has = |f: fn(&u8) -> bool| s.as_bytes().iter().any(f);
    let short = s
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b));
    let long =
        has(u8::is_ascii_lowercase) && has(u8::is_ascii_uppercase) && has(u8::is_ascii_digit);
    short || long
}

/// `sender non-delivery notification: NEWID` and the delay/success variants: the new id.
fn notification(rest: &str) -> Option<&str> {
    let (what, id) = rest.rsplit_once(": ")?;
    (what.starts_with("sender ") && what.ends_with(" notification") && is_queue_id(id))
        .then_some(id)
}

/// Lines without a known shape keep their text, and the client when one is named.
fn other(f: &mut Map<String, Value>, rest: &str) {
    f.insert("text".into(), rest.into());
    if let Some(c) = rest
        .split(' ')
        .find(|w| w.contains('[') && (w.ends_with(']') || w.contains("]:")))
    {
        client_fields(f, c.trim_end_matches([':', ',']));
    }
}

/// `RCPT from unknown[10.99.1.1]:4000: 550 5.1.1 <a@b>: Recipient address rejected: …; from=<…> to=<…> proto=ESMTP helo=<…>`
fn reject_fields(f: &mut Map<String, Value>, r: &str) {
    let Some((stage, r)) = r.split_once(" from ") else {
        return;
    };
    f.insert("stage".into(), stage.into());
    let Some((client, r)) = r.split_once(": ") else {
        return;
    };
    client_fields(f, client);
    let (reply, tail) = match r.rfind("; from=") {
        Some(i) => (&r[..i], &r[i + 2..]),
        None => (r, ""),
    };
    let (code, text) = reply.split_once(' ').unwrap_or((reply, ""));
    if code.len() == 3 && code.bytes().all(|b| b.is_ascii_digit()) {
        f.insert(
            "code".into(),
            code.parse::<u16>().map(Value::from).unwrap_or(Value::Null),
        );
        let (dsn, reason) = match text.split_once(' ') {
            Some((d, rest)) if is_dsn(d) => (Some(d), rest),
            _ => (None, text),
        };
        if let Some(d) = dsn {
            f.insert("dsn".into(), d.into());
        }
        f.insert("reason".into(), reason.into());
    } else {
        f.insert("reason".into(), reply.into());
    }
    kv_into(f, tail);
}

fn is_dsn(s: &str) -> bool {
    let parts: Vec<&str> = s.split('.').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// `unknown[10.99.1.1]:4000` → client, client_ip, client_port (the port only with
/// `smtpd_client_port_logging`).
fn client_fields(f: &mut Map<String, Value>, c: &str) {
    f.insert("client".into(), c.into());
    let Some((_, r)) = c.split_once('[') else {
        return;
    };
    let Some((ip, port)) = r.split_once(']') else {
        return;
    };
    let ip = ip.strip_prefix("IPv6:").unwrap_or(ip);
    if ip.parse::<std::net::IpAddr>().is_ok() {
        f.insert("client_ip".into(), ip.into());
    }
    if let Some(p) = port.strip_prefix(':').and_then(|p| p.parse::<u16>().ok()) {
        f.insert("client_port".into(), p.into());
    }
}

/// `key=value, key=<v a l>, key=value (note)`: into `f`; a trailing `(…)` becomes
/// `reason` after `status=`, else `note`. Stops at anything else.
pub fn kv_into(f: &mut Map<String, Value>, s: &str) {
    let mut rest = s;
    loop {
        rest = rest.trim_start_matches([',', ' ']);
        if rest.is_empty() {
            return;
        }
        if let Some(note) = rest.strip_prefix('(') {
            let note = note.strip_suffix(')').unwrap_or(note);
            let key = if f.contains_key("status") {
                "reason"
            } else {
                "note"
            };
            f.insert(key.into(), note.into());
            return;
        }
        let Some((key, r)) = rest.split_once('=') else {
            f.insert("text".into(), rest.into());
            return;
        };
        if key.is_empty()
            || !key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            f.insert("text".into(), rest.into());
            return;
        }
        let (value, r) = if let Some(inner) = r.strip_prefix('<') {
            match inner.find('>') {
                Some(i) => (&inner[..i], &inner[i + 1..]),
                None => (inner, ""),
            }
        } else {
            let end = r.find([',', ' ']).unwrap_or(r.len());
            (&r[..end], &r[end..])
        };
        f.insert(key.replace('-', "_"), typed(key, value));
        rest = r;
    }
}

/// Counts and delays as numbers (so `jq 'select(.delay > 5)'` works), the rest as text.
fn typed(key: &str, v: &str) -> Value {
    match key {
        "size" | "nrcpt" | "uid" | "conn_use" => {
            v.parse::<u64>().map_or_else(|_| v.into(), Value::from)
        }
        "delay" => v.parse::<f64>().map_or_else(|_| v.into(), Value::from),
        _ => v.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(m: &str) -> (Option<String>, Kind, Value) {
        let p = parse(m);
        (p.queue_id, p.kind, Value::Object(p.fields))
    }

    // Lines below are from Postfix 3.7.11 in the test bed (maillog_file).
    #[test]
    fn connect_and_disconnect() {
        assert_eq!(
            fields("connect from unknown[10.99.152.1]:46226"),
            (
                None,
                Kind::Connect,
                json!({"client":"unknown[10.99.152.1]:46226","client_ip":"10.99.152.1","client_port":46226})
            )
        );
        assert_eq!(
            fields("disconnect from unknown[10.99.152.1]:46240 ehlo=1 mail=1 rcpt=1 data=1 quit=1 commands=5"),
            (None, Kind::Disconnect, json!({"client":"unknown[10.99.152.1]:46240","client_ip":"10.99.152.1","client_port":46240,"stats":"ehlo=1 mail=1 rcpt=1 data=1 quit=1 commands=5"}))
        );
    }

    #[test]
    fn the_life_of_a_message() {
        let id = Some("A74CF98E292".to_string());
        assert_eq!(
            fields("A74CF98E292: client=unknown[10.99.152.1]:46240"),
            (
                id.clone(),
                Kind::Client,
                json!({"client":"unknown[10.99.152.1]:46240","client_ip":"10.99.152.1","client_port":46240})
            )
        );
        assert_eq!(
            fields("A74CF98E292: message-id=<>"),
            (id.clone(), Kind::MessageId, json!({"message_id":""}))
        );
        assert_eq!(
            fields("A74CF98E292: from=<sender@client.test>, size=313, nrcpt=1 (queue active)"),
            (
                id.clone(),
                Kind::Queued,
                json!({"from":"sender@client.test","size":313,"nrcpt":1,"note":"queue active"})
            )
        );
        assert_eq!(
            fields("A74CF98E292: to=<alice@mx.test>, relay=virtual, delay=0.1, delays=0.09/0.01/0/0.01, dsn=2.0.0, status=sent (delivered to maildir)"),
            (id.clone(), Kind::Delivery, json!({"to":"alice@mx.test","relay":"virtual","delay":0.1,"delays":"0.09/0.01/0/0.01","dsn":"2.0.0","status":"sent","reason":"delivered to maildir"}))
        );
        assert_eq!(
            fields("A74CF98E292: removed"),
            (id, Kind::Removed, json!({}))
        );
    }

    #[test]
    fn noqueue_reject_with_reply_and_envelope() {
        assert_eq!(
            fields("NOQUEUE: reject: RCPT from unknown[10.99.152.1]:46268: 550 5.1.1 <nobody@mx.test>: Recipient address rejected: User unknown in virtual mailbox table; from=<sender@client.test> to=<nobody@mx.test> proto=ESMTP helo=<client.test>"),
            (None, Kind::Reject, json!({
                "action":"reject","stage":"RCPT","client":"unknown[10.99.152.1]:46268","client_ip":"10.99.152.1","client_port":46268,
                "code":550,"dsn":"5.1.1","reason":"<nobody@mx.test>: Recipient address rejected: User unknown in virtual mailbox table",
                "from":"sender@client.test","to":"nobody@mx.test","proto":"ESMTP","helo":"client.test"}))
        );
    }

    #[test]
    fn bounce_error_and_deferred() {
        assert_eq!(
            fields("3F2A198E2A0: sender non-delivery notification: 4B1C298E2A5"),
            (
                Some("3F2A198E2A0".into()),
                Kind::Bounce,
                json!({"notification":"sender non-delivery","new_queue_id":"4B1C298E2A5"})
            )
        );
        assert_eq!(
            fields("3F2A198E2A0: to=<someone@example.org>, relay=none, delay=0.02, delays=0.01/0/0/0.01, dsn=5.0.0, status=bounced (outbound mail disabled in the test bed)").2["status"],
            "bounced"
        );
        assert_eq!(
            fields("4XyzAbC12kz9Q: to=<x@example.net>, orig_to=<y@example.net>, relay=mx.example.net[192.0.2.7]:25, conn_use=2, delay=301, delays=0.1/0/300/0.9, dsn=4.4.1, status=deferred (connect to mx.example.net[192.0.2.7]:25: Connection timed out)"),
            (Some("4XyzAbC12kz9Q".into()), Kind::Delivery, json!({"to":"x@example.net","orig_to":"y@example.net","relay":"mx.example.net[192.0.2.7]:25","conn_use":2,"delay":301.0,"delays":"0.1/0/300/0.9","dsn":"4.4.1","status":"deferred","reason":"connect to mx.example.net[192.0.2.7]:25: Connection timed out"}))
        );
    }

    #[test]
    fn header_checks_text_is_private_and_warnings_name_the_client() {
        let p = parse("A74CF98E292: warning: header Subject: quarterly figures from unknown[10.99.1.1]; from=<a@b> to=<c@d> proto=ESMTP helo=<x>");
        assert!(p.private);
        assert_eq!(p.kind, Kind::Action);
        assert_eq!(Value::Object(p.fields), json!({"action":"warning"}));
        let p = parse("warning: unknown[10.99.152.1]: SASL PLAIN authentication failed: authentication failure");
        assert_eq!((p.queue_id, p.kind), (None, Kind::Other));
        assert_eq!(p.fields["client_ip"], "10.99.152.1");
        let p = parse("lost connection after RCPT from unknown[fd99::5:1]:40000");
        assert_eq!(p.fields["client_ip"], "fd99::5:1");
        assert_eq!(p.fields["client_port"], 40000);
    }

    #[test]
    fn queue_ids() {
        for id in ["A74CF98E292", "4XyzAbC12kz9Q", "3F2A198E2A0"] {
            assert!(is_queue_id(id), "{id}");
        }
        for id in [
            "NOQUEUE",
            "warning",
            "reject",
            "A7",
            "a74cf98e292",
            "A74C-F98",
        ] {
            assert!(!is_queue_id(id), "{id}");
        }
    }
}
