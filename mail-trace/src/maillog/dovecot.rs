//! Dovecot 2.3 log messages: the login processes (`imap-login`, `pop3-login`) and the mail
//! processes (`imap(user)<pid><session>`, `pop3(…)`).
//!
//! Login lines are `%$: %s` (`login_log_format`): a message (`Login`, `Disconnected (auth
//! failed, 1 attempts in 2 secs)`, `Disconnected: Aborted login by logging out (auth failed, …)`),
//! then `login_log_format_elements` joined by `, `: `user=<…>, method=PLAIN, rip=…, lip=…,
//! mpid=…, TLS, session=<…>`.
use serde_json::{Map, Value};

use super::Kind;

/// What a Dovecot line says; None for lines of other programs.
#[derive(Clone, Debug, PartialEq)]
pub struct Parsed {
    /// `imap-login`, `pop3-login`, `imap`, `pop3`.
    pub program: String,
    pub pid: Option<u32>,
    pub kind: Kind,
    pub fields: Map<String, Value>,
    /// The text may quote a header (mail_log's `msgid=` and `subject=`, like Postfix's
    /// Message-ID and header_checks lines).
    pub private: bool,
}

/// Dovecot's syslog ident: `dovecot`, or `dovecot-NAME` for `instance_name = dovecot-NAME`.
pub fn is_syslog_ident(program: &str) -> bool {
    program == "dovecot" || program.starts_with("dovecot-")
}

const LEVELS: [&str; 6] = [
    "Info: ",
    "Warning: ",
    "Error: ",
    "Fatal: ",
    "Panic: ",
    "Debug: ",
];

/// `program` as split off the line (`imap-login`, `imap(alice)<14430><uLc8…>`, or `dovecot`
/// with the real program at the start of the message, as syslog has it; a named instance logs
/// as `dovecot-NAME`, its `instance_name`).
pub fn parse(program: &str, message: &str) -> Option<Parsed> {
    let (program, message) = if is_syslog_ident(program) {
        let (p, m) = message.split_once(": ")?;
        (p, m)
    } else {
        (program, message)
    };
    let mut message = message;
    for l in LEVELS {
        if let Some(m) = message.strip_prefix(l) {
            message = m;
            break;
        }
    }
    if let Some(proto) = program.strip_suffix("-login") {
        if !matches!(proto, "imap" | "pop3" | "submission" | "managesieve") {
            return None;
        }
        return Some(login(program, message));
    }
    // imap(alice@mx.test)<14430><uLc8lEphtMoKY5gB>
    let (proto, rest) = program.split_once('(')?;
    if !matches!(proto, "imap" | "pop3" | "lmtp" | "submission") {
        return None;
    }
    let (user, rest) = rest.split_once(')')?;
    let mut f = Map::new();
    f.insert("user".into(), user.into());
    let mut pid = None;
    let mut parts = rest.split('<').filter_map(|p| p.strip_suffix('>'));
    if let Some(p) = parts.next() {
        pid = p.parse().ok();
    }
    if let Some(s) = parts.next() {
        f.insert("session".into(), s.into());
    }
    // The mail process's last line: `Disconnected: Logged out in=103 out=1454 …` (imap),
    // `Disconnected: Logged out top=0/0, retr=1/424, …` (pop3), `Disconnected: Connection
    // closed (IDLE running for …, state=wait-input) in=… out=…`, `Disconnected for
    // inactivity in=…`, or (2.2) `Connection closed in=… out=…`.
    let last = message
        .strip_prefix("Disconnected: ")
        .or_else(|| message.strip_prefix("Disconnected ").map(|_| message))
        .or_else(|| message.starts_with("Connection closed").then_some(message));
    let kind = if let Some(r) = last {
        // The statistics start after the reason's parenthesis (which may hold `state=…`).
        let from = r.rfind(')').map_or(0, |i| i + 1);
        let (reason, stats) = match r[from..].find('=').map(|i| i + from) {
            Some(i) => {
                let cut = r[..i].rfind(' ').unwrap_or(0);
                (&r[..cut], r[cut..].trim())
            }
            None => (r, ""),
        };
        f.insert("reason".into(), reason.into());
        for kv in stats.split([',', ' ']).filter(|s| !s.is_empty()) {
            if let Some((k, v)) = kv.split_once('=') {
                let v = v
                    .parse::<u64>()
                    .map_or_else(|_| Value::from(v), Value::from);
                f.insert(k.into(), v);
            }
        }
        Kind::Logout
    } else {
        f.insert("text".into(), message.into());
        Kind::Other
    };
    let private = kind == Kind::Other && mail_log_into(&mut f, message);
    Some(Parsed {
        program: proto.to_string(),
        pid,
        kind,
        fields: f,
        private,
    })
}

fn login(program: &str, message: &str) -> Parsed {
    let mut f = Map::new();
    // The element list starts after the last ": " before `user=<` (or `rip=` when
    // the elements were customised without the user).
    let start = message
        .find("user=<")
        .or_else(|| message.find("rip="))
        .and_then(|i| message[..i].rfind(": ").map(|j| (j, i)));
    let (head, elems) = match start {
        Some((j, i)) => (&message[..j], &message[i..]),
        None => (message, ""),
    };
    let kind = if head == "Login" {
        Kind::Login
    } else if head.contains("auth failed") {
        Kind::LoginFailed
    } else {
        Kind::Disconnect
    };
    f.insert("message".into(), head.into());
    // `(auth failed, 1 attempts in 2 secs)`
    if let Some(n) = head
        .split_once("auth failed, ")
        .and_then(|(_, r)| r.split(' ').next())
        .and_then(|n| n.parse::<u64>().ok())
    {
        f.insert("attempts".into(), n.into());
    }
    let mut rest = elems;
    while !rest.is_empty() {
        let (item, r) = match rest.split_once('=') {
            // A bare flag (`TLS`, `secured`) before the next `, `.
            Some((k, _)) if k.contains(", ") => {
                let (flag, r) = rest.split_once(", ").unwrap_or((rest, ""));
                flag_into(&mut f, flag);
                rest = r;
                continue;
            }
            Some((k, r)) => (k, r),
            None => {
                for flag in rest.split(", ") {
                    flag_into(&mut f, flag);
                }
                break;
            }
        };
        let (value, r) = match r.strip_prefix('<') {
            Some(v) => match v.find('>') {
                Some(i) => (&v[..i], v[i + 1..].trim_start_matches(", ")),
                None => (v, ""),
            },
            None => r.split_once(", ").unwrap_or((r, "")),
        };
        let v = match item {
            "mpid" | "rport" | "lport" => value
                .parse::<u64>()
                .map_or_else(|_| value.into(), Value::from),
            _ => value.into(),
        };
        f.insert(item.into(), v);
        rest = r;
    }
    Parsed {
        program: program.to_string(),
        pid: None,
        kind,
        fields: f,
        private: false,
    }
}

/// mail_log plugin lines (`save: box=INBOX, uid=7, msgid=<…>, size=407, subject=Hi`): the
/// action and the elements that are not header text go into fields; true when the line quotes
/// a header (`msgid`, `subject`, `from`), which then stays only in `text`, shown only with
/// `--show-headers`.
fn mail_log_into(f: &mut Map<String, Value>, message: &str) -> bool {
    const HEADERS: [&str; 3] = ["msgid=", "subject=", "from="];
    let Some((action, elems)) = message.split_once(": ") else {
        return false;
    };
    let private = elems
        .split(", ")
        .any(|e| HEADERS.iter().any(|h| e.starts_with(h)));
    if !private || !action.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
        return private;
    }
    f.insert("action".into(), action.into());
    // Header values may hold ", " themselves: everything from the first header element on is
    // left out, not split.
    for e in elems.split(", ") {
        if HEADERS.iter().any(|h| e.starts_with(h)) {
            break;
        }
        if let Some((k, v)) = e.split_once('=') {
            if matches!(k, "box" | "uid" | "size" | "vsize" | "flags") {
                let v = v
                    .parse::<u64>()
                    .map_or_else(|_| Value::from(v), Value::from);
                f.insert(k.into(), v);
            }
        }
    }
    true
}

fn flag_into(f: &mut Map<String, Value>, flag: &str) {
    let flag = flag.trim();
    if flag == "TLS" {
        f.insert("tls".into(), true.into());
    } else if !flag.is_empty() {
        f.insert("flag".into(), flag.into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn p(program: &str, m: &str) -> (String, Option<u32>, Kind, Value) {
        let x = parse(program, m).unwrap();
        (x.program, x.pid, x.kind, Value::Object(x.fields))
    }

    // Lines from Dovecot 2.3.19.1 in the test bed (log_path).
    #[test]
    fn login_with_tls() {
        assert_eq!(
            p("imap-login", "Info: Login: user=<alice@mx.test>, method=PLAIN, rip=10.99.152.1, lip=10.99.152.2, mpid=14443, TLS, session=<LLVHlEphMFcKY5gB>"),
            ("imap-login".into(), None, Kind::Login, json!({"message":"Login","user":"alice@mx.test","method":"PLAIN","rip":"10.99.152.1","lip":"10.99.152.2","mpid":14443,"tls":true,"session":"LLVHlEphMFcKY5gB"}))
        );
    }

    #[test]
    fn auth_failed_both_shapes() {
        assert_eq!(
            p("imap-login", "Info: Disconnected: Aborted login by logging out (auth failed, 1 attempts in 1 secs): user=<alice@mx.test>, method=PLAIN, rip=10.99.152.1, lip=10.99.152.2, session=<MHM+lEphvsoKY5gB>"),
            ("imap-login".into(), None, Kind::LoginFailed, json!({"message":"Disconnected: Aborted login by logging out (auth failed, 1 attempts in 1 secs)","attempts":1,"user":"alice@mx.test","method":"PLAIN","rip":"10.99.152.1","lip":"10.99.152.2","session":"MHM+lEphvsoKY5gB"}))
        );
        let x = parse("dovecot", "pop3-login: Disconnected (auth failed, 3 attempts in 14 secs): user=<bob@mx.test>, method=PLAIN, rip=fd99::5:1, lip=fd99::5:2, TLS: Disconnected, session=<abc>").unwrap();
        assert_eq!(
            (x.program.as_str(), x.kind),
            ("pop3-login", Kind::LoginFailed)
        );
        assert_eq!(x.fields["attempts"], 3);
        assert_eq!(x.fields["rip"], "fd99::5:1");
        assert_eq!(x.fields["flag"], "TLS: Disconnected");
        assert_eq!(x.fields["session"], "abc");
    }

    #[test]
    fn no_auth_attempts() {
        let (_, _, kind, f) = p("imap-login", "Info: Disconnected: Connection closed (no auth attempts in 0 secs): user=<>, rip=10.99.152.1, lip=10.99.152.2, session=<FivEk0phcpgKY5gB>");
        assert_eq!(kind, Kind::Disconnect);
        assert_eq!(f["user"], "");
        assert_eq!(
            f["message"],
            "Disconnected: Connection closed (no auth attempts in 0 secs)"
        );
    }

    #[test]
    fn mail_process_logout() {
        assert_eq!(
            p("imap(alice@mx.test)<14430><uLc8lEphtMoKY5gB>", "Info: Disconnected: Logged out in=103 out=1454 deleted=0 expunged=0 trashed=0 hdr_count=0 hdr_bytes=0 body_count=1 body_bytes=407"),
            ("imap".into(), Some(14430), Kind::Logout, json!({"user":"alice@mx.test","session":"uLc8lEphtMoKY5gB","reason":"Logged out","in":103,"out":1454,"deleted":0,"expunged":0,"trashed":0,"hdr_count":0,"hdr_bytes":0,"body_count":1,"body_bytes":407}))
        );
        let (_, pid, _, f) = p(
            "pop3(alice@mx.test)<14511><vqxTlEph3rEKY5gB>",
            "Info: Disconnected: Logged out top=0/0, retr=1/424, del=1/1, size=407",
        );
        assert_eq!(pid, Some(14511));
        assert_eq!(f["retr"], "1/424");
        assert_eq!(f["size"], 407);
    }

    #[test]
    fn every_last_line_of_a_mail_process_closes_it() {
        // Debian's dovecot-core through syslog: `dovecot: imap(…)…: Disconnected: …`.
        let x = parse("dovecot", "imap(alice@mx.test)<14450><uLc8lEphtMoKY5gB>: Disconnected: Connection closed (IDLE running for 0.001 + waiting input for 28.132 secs, 2 B in + 10+10 B out, state=wait-input) in=20 out=335 deleted=0 expunged=0 trashed=0 hdr_count=0 hdr_bytes=0 body_count=0 body_bytes=0").unwrap();
        assert_eq!((x.kind, x.pid), (Kind::Logout, Some(14450)));
        assert_eq!(
            x.fields["reason"],
            "Connection closed (IDLE running for 0.001 + waiting input for 28.132 secs, 2 B in + 10+10 B out, state=wait-input)"
        );
        assert_eq!(
            (x.fields["in"].clone(), x.fields["out"].clone()),
            (json!(20), json!(335))
        );
        assert!(x.fields.get("state").is_none());
        let (_, _, kind, f) = p(
            "imap(alice@mx.test)<1><s>",
            "Info: Disconnected for inactivity in=5 out=300",
        );
        assert_eq!(
            (kind, f["reason"].clone(), f["in"].clone()),
            (Kind::Logout, json!("Disconnected for inactivity"), json!(5))
        );
        let (_, _, kind, f) = p(
            "imap(alice@mx.test)<1><s>",
            "Info: Connection closed (UID FETCH finished 0.1 secs ago) in=1 out=2",
        );
        assert_eq!((kind, f["out"].clone()), (Kind::Logout, json!(2)));
        let (_, _, kind, _) = p("imap(alice@mx.test)<1><s>", "Info: Some other line");
        assert_eq!(kind, Kind::Other);
    }

    #[test]
    fn login_with_client_ports() {
        // `login_log_format_elements = user=<%u> method=%m rip=%r rport=%{rport} lip=%l lport=%{lport} mpid=%e %c session=<%{session}>`
        let (_, _, kind, f) = p("pop3-login", "Info: Login: user=<bob@mx.test>, method=PLAIN, rip=10.99.1.1, rport=51234, lip=10.99.1.2, lport=110, mpid=201, session=<7Ob2lEphCoUKYwEB>");
        assert_eq!(kind, Kind::Login);
        assert_eq!(
            (f["rport"].clone(), f["lport"].clone(), f["session"].clone()),
            (json!(51234), json!(110), json!("7Ob2lEphCoUKYwEB"))
        );
    }

    #[test]
    fn mail_log_message_ids_and_subjects_are_private() {
        let x = parse(
            "imap(alice@mx.test)<14430><uLc8lEphtMoKY5gB>",
            "Info: expunge: box=INBOX, uid=7, msgid=<20261127@client.test>, size=407, subject=Salary, bonus",
        )
        .unwrap();
        assert!(x.private);
        assert_eq!(x.fields["action"], "expunge");
        assert_eq!(
            (x.fields["box"].clone(), x.fields["uid"].clone()),
            (json!("INBOX"), json!(7))
        );
        assert!(x.fields.get("msgid").is_none() && x.fields.get("size").is_none());
        let plain = parse(
            "imap(alice@mx.test)<1><s>",
            "Info: Connection closed (UID FETCH finished 0.1 secs ago) in=1 out=2",
        )
        .unwrap();
        assert!(!plain.private);
        // Through the line parser: hidden by default, kept with --show-headers.
        let line = "Nov 27 23:40:03 imap(alice@mx.test)<14430><uLc8lEphtMoKY5gB>: Info: save: box=INBOX, uid=8, msgid=<x@y>, from=<boss@example.org>, subject=Layoffs";
        let l = crate::maillog::parse(line, &crate::maillog::Clock::utc(1_795_823_100_000_000_000))
            .unwrap();
        let shown = l
            .clone()
            .redacted(crate::proto::Privacy::default())
            .to_json();
        assert_eq!(
            shown["fields"],
            json!({"user":"alice@mx.test","session":"uLc8lEphtMoKY5gB","action":"save","box":"INBOX","uid":8})
        );
        assert!(shown.get("line").is_none());
        let open = l
            .redacted(crate::proto::Privacy {
                show_headers: true,
                show_secrets: false,
            })
            .to_json();
        assert!(open["fields"]["text"]
            .as_str()
            .unwrap()
            .contains("subject=Layoffs"));
    }

    #[test]
    fn other_programs_are_not_dovecot() {
        assert_eq!(parse("master", "Info: Dovecot v2.3.19.1 starting up"), None);
        assert_eq!(parse("postfix/smtpd", "connect from x"), None);
        assert_eq!(parse("imap", "x"), None);
    }
}
