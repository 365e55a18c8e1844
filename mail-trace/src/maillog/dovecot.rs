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
    let kind = if let Some(r) = message.strip_prefix("Disconnected: ") {
        // `Logged out in=103 out=1454 …` (imap), `Logged out top=0/0, retr=1/424, …` (pop3)
        let (reason, stats) = match r.find('=') {
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
    Some(Parsed {
        program: proto.to_string(),
        pid,
        kind,
        fields: f,
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
    }
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
    fn other_programs_are_not_dovecot() {
        assert_eq!(parse("master", "Info: Dovecot v2.3.19.1 starting up"), None);
        assert_eq!(parse("postfix/smtpd", "connect from x"), None);
        assert_eq!(parse("imap", "x"), None);
    }
}
