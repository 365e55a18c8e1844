//! SMTP command lines: the verb, and the arguments of MAIL, RCPT and BDAT.

use std::collections::BTreeMap;

/// Parameters kept per MAIL/RCPT command.
pub const MAX_PARAMS: usize = 16;
/// Verbs the dissector understands; anything else is an unknown command.
pub const KNOWN_VERBS: &[&str] = &[
    "HELO", "EHLO", "LHLO", "MAIL", "RCPT", "DATA", "BDAT", "RSET", "NOOP", "VRFY", "EXPN", "HELP",
    "QUIT", "STARTTLS", "AUTH", "ETRN", "ATRN", "TURN", "BURL", "XCLIENT", "XFORWARD",
];
/// An unknown verb is shown cut to this many bytes.
const MAX_UNKNOWN_VERB: usize = 32;

/// A command line split into verb and argument.
#[derive(Debug, PartialEq, Eq)]
pub struct CommandLine<'a> {
    /// Upper-cased for known verbs, as sent (cut) for unknown ones.
    pub verb: String,
    pub known: bool,
    /// The rest of the line after one space, as sent.
    pub arg: &'a str,
}

pub fn split(line: &str) -> CommandLine<'_> {
    let (verb, arg) = match line.find(' ') {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => (line, ""),
    };
    let upper = verb.to_ascii_uppercase();
    if KNOWN_VERBS.contains(&upper.as_str()) {
        CommandLine {
            verb: upper,
            known: true,
            arg,
        }
    } else {
        let mut verb = verb.to_string();
        crate::proto::auth::truncate(&mut verb, MAX_UNKNOWN_VERB);
        CommandLine {
            verb,
            known: false,
            arg,
        }
    }
}

/// Whether a line found while resynchronising is strictly shaped like a
/// command a client sends between messages (a body line rarely is).
pub fn looks_like_command(line: &str) -> bool {
    let c = split(line);
    if !c.known {
        return false;
    }
    let arg = c.arg.to_ascii_uppercase();
    match c.verb.as_str() {
        "DATA" | "RSET" | "QUIT" | "STARTTLS" => arg.is_empty(),
        "NOOP" | "HELP" => !arg.contains(' '),
        "MAIL" => arg.starts_with("FROM:"),
        "RCPT" => arg.starts_with("TO:"),
        // A count, valid or not (a negative or overflowing one is refused, as it should
        // be), and at most LAST after it.
        "BDAT" => {
            let mut w = arg.split_whitespace();
            let count = w.next().unwrap_or_default();
            let digits = count.strip_prefix(['-', '+']).unwrap_or(count);
            !digits.is_empty()
                && digits.bytes().all(|b| b.is_ascii_digit())
                && w.next().is_none_or(|l| l == "LAST")
                && w.next().is_none()
        }
        // A bare HELO/EHLO is a command too (refused with 501, as it should be).
        "HELO" | "EHLO" | "LHLO" => !arg.contains(char::is_whitespace),
        _ => !arg.is_empty() && !arg.contains(char::is_whitespace) || c.verb == "AUTH",
    }
}

/// A MAIL FROM / RCPT TO argument: the path and its ESMTP parameters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PathArg {
    /// The address without angle brackets (empty for the null sender `<>`).
    pub addr: String,
    /// `KEY[=value]`, keys upper-cased, values as sent (None for a bare keyword).
    pub params: BTreeMap<String, Option<String>>,
    /// Parameters beyond [`MAX_PARAMS`] were dropped.
    pub params_dropped: bool,
}

/// Parses `FROM:<addr> PARAMS` (or `TO:`); `prefix` is "FROM:" or "TO:".
/// Returns None when the prefix is missing.
pub fn path_arg(arg: &str, prefix: &str) -> Option<PathArg> {
    let head = arg.get(..prefix.len())?;
    if !head.eq_ignore_ascii_case(prefix) {
        return None;
    }
    let rest = arg[prefix.len()..].trim_start();
    let (addr, rest) = if let Some(inner) = rest.strip_prefix('<') {
        // A quoted local part may hold '>' or spaces.
        let mut quoted = false;
        let mut escaped = false;
        let mut end = None;
        for (i, c) in inner.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => quoted = !quoted,
                '>' if !quoted => {
                    end = Some(i);
                    break;
                }
                _ => {}
            }
        }
        match end {
            Some(e) => (&inner[..e], &inner[e + 1..]),
            None => (inner, ""),
        }
    } else {
        // Sloppy clients omit the brackets.
        match rest.find(' ') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        }
    };
    // Drop an RFC 5321 source route "@a,@b:".
    let addr = match addr.starts_with('@') {
        true => addr.split_once(':').map_or(addr, |(_, a)| a),
        false => addr,
    };
    let mut out = PathArg {
        addr: addr.to_string(),
        ..PathArg::default()
    };
    for word in rest.split_whitespace() {
        if out.params.len() >= MAX_PARAMS {
            out.params_dropped = true;
            break;
        }
        let (k, v) = match word.split_once('=') {
            Some((k, v)) => (k, Some(v.to_string())),
            None => (word, None),
        };
        out.params.insert(k.to_ascii_uppercase(), v);
    }
    Some(out)
}

/// `BDAT size [LAST]`: (size, last).
pub fn bdat(arg: &str) -> Option<(u64, bool)> {
    let mut words = arg.split_whitespace();
    let size = words.next()?;
    if !size.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let size = size.parse().ok()?;
    match (words.next(), words.next()) {
        (None, _) => Some((size, false)),
        (Some(l), None) if l.eq_ignore_ascii_case("LAST") => Some((size, true)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbs() {
        let c = split("mail FROM:<a@b>");
        assert_eq!(
            (c.verb.as_str(), c.known, c.arg),
            ("MAIL", true, "FROM:<a@b>")
        );
        let c = split("XYZZY plugh");
        assert_eq!((c.verb.as_str(), c.known, c.arg), ("XYZZY", false, "plugh"));
        let c = split("quit");
        assert_eq!((c.verb.as_str(), c.arg), ("QUIT", ""));
        let long = "A".repeat(100);
        assert_eq!(split(&long).verb.len(), 32);
    }

    #[test]
    fn mail_and_rcpt_paths_with_params() {
        let p = path_arg(
            "FROM:<bounce@example.com> SIZE=1234 BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=QQ314159 AUTH=<>",
            "FROM:",
        )
        .unwrap();
        assert_eq!(p.addr, "bounce@example.com");
        let params: Vec<(&str, Option<&str>)> = p
            .params
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_deref()))
            .collect();
        assert_eq!(
            params,
            vec![
                ("AUTH", Some("<>")),
                ("BODY", Some("8BITMIME")),
                ("ENVID", Some("QQ314159")),
                ("RET", Some("HDRS")),
                ("SIZE", Some("1234")),
                ("SMTPUTF8", None),
            ]
        );
        let r = path_arg(
            "to: <\"john >doe\"@example.org> notify=SUCCESS,FAILURE ORCPT=rfc822;j+40x",
            "TO:",
        )
        .unwrap();
        assert_eq!(r.addr, "\"john >doe\"@example.org");
        assert_eq!(r.params["NOTIFY"].as_deref(), Some("SUCCESS,FAILURE"));
        assert_eq!(r.params["ORCPT"].as_deref(), Some("rfc822;j+40x"));
        assert_eq!(path_arg("FROM:<>", "FROM:").unwrap().addr, "");
        assert_eq!(path_arg("TO:<@a,@b:u@c>", "TO:").unwrap().addr, "u@c");
        assert_eq!(path_arg("FROM:u@c SIZE=1", "FROM:").unwrap().addr, "u@c");
        assert_eq!(path_arg("FRM:<u@c>", "FROM:"), None);
        assert_eq!(path_arg("FR", "FROM:"), None);
        let many: String = (0..40).map(|i| format!(" X{i}=1")).collect();
        let p = path_arg(&format!("FROM:<a@b>{many}"), "FROM:").unwrap();
        assert_eq!(p.params.len(), MAX_PARAMS);
        assert!(p.params_dropped);
    }

    #[test]
    fn bdat_args() {
        assert_eq!(bdat("86 LAST"), Some((86, true)));
        assert_eq!(bdat("1000"), Some((1000, false)));
        assert_eq!(bdat("0 last"), Some((0, true)));
        assert_eq!(bdat("-1"), None);
        assert_eq!(bdat("99999999999999999999999"), None);
        assert_eq!(bdat("5 LAST x"), None);
        assert_eq!(bdat(""), None);
    }

    #[test]
    fn resync_shapes() {
        assert!(looks_like_command("MAIL FROM:<a@b>"));
        assert!(looks_like_command("RCPT TO:<a@b>"));
        assert!(looks_like_command("DATA"));
        assert!(looks_like_command("EHLO client.example"));
        assert!(looks_like_command("ehlo"));
        assert!(!looks_like_command("Helo there, friend"));
        assert!(!looks_like_command("Mail from Bob arrived"));
        assert!(!looks_like_command("Data is here"));
        assert!(!looks_like_command("Subject: hi"));
        assert!(!looks_like_command("Help me please"));
        assert!(looks_like_command("BDAT 12 LAST"));
        assert!(looks_like_command("BDAT -1 LAST\r"));
        assert!(looks_like_command("BDAT 184467440737095516150"));
        assert!(!looks_like_command("BDAT is a command"));
        assert!(!looks_like_command("BDAT 12 bytes here"));
    }
}
