//! SMTP reply codes (RFC 5321 §4.2, plus RFC 3207, 4954, 7504), explained.

/// What a listed three-digit reply code means, without its class (see
/// [`reply_class`]); unlisted codes fall back to the meaning of their second digit.
/// `None` when the code is not a reply code at all (outside 100–599, or a second digit
/// above 5).
pub fn smtp_reply(code: u16) -> Option<&'static str> {
    listed(code).or_else(|| by_category(code))
}

/// "success", "intermediate", "transient failure" or "permanent failure" — the first
/// digit, which is what a client acts on. `None` outside 100–599.
pub fn reply_class(code: u16) -> Option<&'static str> {
    match code / 100 {
        1 => Some("preliminary"),
        2 => Some("success"),
        3 => Some("intermediate"),
        4 => Some("transient failure"),
        5 => Some("permanent failure"),
        _ => None,
    }
}

fn listed(code: u16) -> Option<&'static str> {
    Some(match code {
        211 => "system status or help reply",
        214 => "help text for a human",
        220 => "service ready",
        221 => "service closing the connection",
        235 => "authentication succeeded",
        250 => "requested action completed",
        251 => "recipient not local: the server will forward it",
        252 => "cannot verify the user, but will accept the message and try",
        334 => "authentication challenge: the client sends the next AUTH step",
        354 => "go ahead: send the message, ending with <CRLF>.<CRLF>",
        421 => "service not available, closing the connection (overload, rate limit or shutdown)",
        432 => "a password transition is needed",
        450 => "mailbox unavailable for now (busy, locked, or greylisted)",
        451 => "aborted: local error in processing on the server",
        452 => "insufficient system storage, or too many recipients",
        454 => "temporary authentication failure, or TLS not available now",
        455 => "the server cannot accommodate these parameters now",
        500 => "syntax error: command unrecognised (or line too long)",
        501 => "syntax error in parameters or arguments",
        502 => "command not implemented",
        503 => "bad sequence of commands",
        504 => "command parameter not implemented",
        521 => "this host does not accept mail",
        530 => "authentication (or STARTTLS) required first",
        534 => "authentication mechanism is too weak",
        535 => "authentication credentials invalid",
        538 => "encryption required for the requested authentication mechanism",
        550 => "mailbox unavailable: it does not exist, or policy refuses it",
        551 => "recipient not local: try the forward path given",
        552 => "exceeded storage allocation (message too big or mailbox full)",
        553 => "mailbox name not allowed (bad address syntax)",
        554 => "transaction failed (at connect: no SMTP service here)",
        555 => "MAIL FROM/RCPT TO parameters not recognised or not implemented",
        556 => "the recipient's domain does not accept mail",
        _ => return None,
    })
}

/// RFC 5321 §4.2.1: the second digit names the category; x3z is the one RFC 4954
/// gave to authentication.
fn by_category(code: u16) -> Option<&'static str> {
    reply_class(code)?;
    Some(match code / 10 % 10 {
        0 => "a syntax problem (code not listed in RFC 5321)",
        1 => "an information reply (code not listed in RFC 5321)",
        2 => "a connection reply (code not listed in RFC 5321)",
        3 => "an authentication reply (code not listed in RFC 5321)",
        4 => "a reply of unspecified category (code not listed in RFC 5321)",
        5 => "a mail system reply (code not listed in RFC 5321)",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 5321 §4.2.2–4.2.3, plus 235, 334, 432, 454, 534, 535, 538 (RFC 4954),
    /// 530 (RFC 4954/3207), 521 and 556 (RFC 7504).
    const RFC_CODES: &[u16] = &[
        211, 214, 220, 221, 235, 250, 251, 252, 334, 354, 421, 432, 450, 451, 452, 454, 455, 500,
        501, 502, 503, 504, 521, 530, 534, 535, 538, 550, 551, 552, 553, 554, 555, 556,
    ];

    #[test]
    fn every_rfc_code_has_its_own_words() {
        for &code in RFC_CODES {
            let words = listed(code).unwrap_or_else(|| panic!("{code} not listed"));
            assert_eq!(smtp_reply(code), Some(words));
            assert!(!words.contains("not listed"), "{code}");
        }
    }

    #[test]
    fn table_holds_nothing_else() {
        for code in 0..=u16::MAX {
            if listed(code).is_some() {
                assert!(
                    RFC_CODES.contains(&code),
                    "{code} listed but not in RFC list"
                );
            }
        }
    }

    #[test]
    fn unlisted_codes_fall_back_by_category() {
        assert_eq!(
            smtp_reply(559),
            Some("a mail system reply (code not listed in RFC 5321)")
        );
        assert_eq!(
            smtp_reply(507),
            Some("a syntax problem (code not listed in RFC 5321)")
        );
        assert_eq!(
            smtp_reply(537),
            Some("an authentication reply (code not listed in RFC 5321)")
        );
        assert_eq!(
            smtp_reply(429),
            Some("a connection reply (code not listed in RFC 5321)")
        );
        assert_eq!(
            smtp_reply(219),
            Some("an information reply (code not listed in RFC 5321)")
        );
        assert_eq!(
            smtp_reply(541),
            Some("a reply of unspecified category (code not listed in RFC 5321)")
        );
        assert_eq!(reply_class(559), Some("permanent failure"));
        assert_eq!(reply_class(451), Some("transient failure"));
    }

    #[test]
    fn non_codes_are_none() {
        for code in [0, 1, 99, 600, 999, 560, 570, 590, 465, 0xffff] {
            assert_eq!(smtp_reply(code), None, "{code}");
        }
        assert_eq!(reply_class(600), None);
        assert_eq!(reply_class(99), None);
    }
}
