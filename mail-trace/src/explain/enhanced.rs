//! RFC 3463 enhanced status codes (`class.subject.detail`), explained from the IANA
//! "SMTP Enhanced Status Codes" registry (RFC 5248 and the RFCs it lists).
//!
//! The registry enumerates codes as `X.subject.detail`: a detail means the same under
//! any class, so the table is keyed by subject and detail only. Each entry carries the
//! registry's own name (so an operator can search for it) and a plain-English meaning.

use std::fmt;

/// A syntactically valid enhanced status code, e.g. `5.1.1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    /// 2 (success), 4 (persistent transient failure) or 5 (permanent failure).
    pub class: u8,
    /// 0–999; 0–7 are registered.
    pub subject: u16,
    /// 0–999.
    pub detail: u16,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.class, self.subject, self.detail)
    }
}

/// A registered detail code: the registry's name and what it means in plain words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Detail {
    /// The IANA registry's name for the code, lower-cased, e.g. "mailbox full".
    pub name: &'static str,
    /// What it means for the operator, e.g. "the recipient's mailbox is over quota".
    pub meaning: &'static str,
}

/// What an enhanced status code means, part by part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Explanation {
    /// The parsed code.
    pub status: Status,
    /// Meaning of the class, e.g. "permanent failure".
    pub class: &'static str,
    /// Meaning of the subject, e.g. "addressing status".
    pub subject: &'static str,
    /// The registered detail, or `None` when the registry does not list this
    /// subject.detail pair (then only class and subject say anything).
    pub detail: Option<Detail>,
}

impl fmt::Display for Explanation {
    /// `the mailbox does not exist (bad destination mailbox address)`, or for an
    /// unregistered detail `5.7.99: security or policy status (detail unknown)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.detail {
            Some(d) => write!(f, "{} ({})", d.meaning, d.name),
            None => write!(f, "{}: {} (detail unknown)", self.status, self.subject),
        }
    }
}

/// Parses `class.subject.detail` per the RFC 3463 grammar: class 2, 4 or 5; subject and
/// detail 1–3 digits without a leading zero. Surrounding whitespace is ignored; anything
/// else (extra parts, letters, empty fields) is `None`.
pub fn parse_status(code: &str) -> Option<Status> {
    let mut parts = code.trim().split('.');
    let class = parts.next()?;
    let subject = number(parts.next()?)?;
    let detail = number(parts.next()?)?;
    if parts.next().is_some() {
        return None;
    }
    let class = match class {
        "2" => 2,
        "4" => 4,
        "5" => 5,
        _ => return None,
    };
    Some(Status {
        class,
        subject,
        detail,
    })
}

/// 1–3 ASCII digits, no leading zero unless the number is 0 (RFC 3463 §2 grammar).
fn number(s: &str) -> Option<u16> {
    let b = s.as_bytes();
    if b.is_empty() || b.len() > 3 || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    if b.len() > 1 && b[0] == b'0' {
        return None;
    }
    s.parse().ok()
}

/// Explains an enhanced status code such as `5.7.26`. `None` only when the text is not
/// an enhanced status code at all; unregistered subjects or details still get the
/// class (and subject) meaning with `detail: None`.
pub fn enhanced(code: &str) -> Option<Explanation> {
    let status = parse_status(code)?;
    Some(explain_status(status))
}

/// Explains an already parsed status.
pub fn explain_status(status: Status) -> Explanation {
    Explanation {
        status,
        class: class_meaning(status.class),
        subject: subject_meaning(status.subject),
        detail: detail(status.subject, status.detail),
    }
}

fn class_meaning(class: u8) -> &'static str {
    match class {
        2 => "success",
        4 => "persistent transient failure",
        5 => "permanent failure",
        _ => "unknown class",
    }
}

fn subject_meaning(subject: u16) -> &'static str {
    match subject {
        0 => "other or undefined status",
        1 => "addressing status",
        2 => "mailbox status",
        3 => "mail system status",
        4 => "network and routing status",
        5 => "mail delivery protocol status",
        6 => "message content or media status",
        7 => "security or policy status",
        _ => "unregistered status subject",
    }
}

/// The registered detail for `X.subject.detail`.
pub fn detail(subject: u16, detail: u16) -> Option<Detail> {
    DETAILS
        .iter()
        .find(|&&(s, d, _, _)| s == subject && d == detail)
        .map(|&(_, _, name, meaning)| Detail { name, meaning })
}

/// (subject, detail, registry name, plain meaning). Linear search: ~80 entries, looked
/// up once per failed reply, so a map would buy nothing.
#[rustfmt::skip]
const DETAILS: &[(u16, u16, &str, &str)] = &[
    (0, 0, "other undefined status", "no more specific reason given"),
    // X.1.x addressing
    (1, 0, "other address status", "something about an address caused this"),
    (1, 1, "bad destination mailbox address", "the mailbox does not exist"),
    (1, 2, "bad destination system address", "the recipient's domain does not exist or takes no mail"),
    (1, 3, "bad destination mailbox address syntax", "the recipient address is malformed"),
    (1, 4, "destination mailbox address ambiguous", "the recipient address matches more than one mailbox"),
    (1, 5, "destination address valid", "the recipient address is valid"),
    (1, 6, "destination mailbox has moved, no forwarding address", "the mailbox used to exist but no longer takes mail"),
    (1, 7, "bad sender's mailbox address syntax", "the sender address is malformed"),
    (1, 8, "bad sender's system address", "the sender's domain does not exist or cannot take replies"),
    (1, 9, "message relayed to non-compliant mailer", "relayed to a system that cannot report delivery status"),
    (1, 10, "recipient address has null MX", "the recipient's domain publishes a null MX: it takes no mail"),
    // X.2.x mailbox
    (2, 0, "other or undefined mailbox status", "something about the recipient's mailbox caused this"),
    (2, 1, "mailbox disabled, not accepting messages", "the mailbox exists but is disabled"),
    (2, 2, "mailbox full", "the recipient's mailbox is over quota"),
    (2, 3, "message length exceeds administrative limit", "the message is bigger than this mailbox allows"),
    (2, 4, "mailing list expansion problem", "the mailing list could not be expanded"),
    // X.3.x mail system
    (3, 0, "other or undefined mail system status", "the receiving mail system has a problem"),
    (3, 1, "mail system full", "the receiving system is out of storage"),
    (3, 2, "system not accepting network messages", "the receiving host is not accepting mail (shutdown, load or policy)"),
    (3, 3, "system not capable of selected features", "the receiving system lacks a feature this message needs"),
    (3, 4, "message too big for system", "the message exceeds the system's size limit"),
    (3, 5, "system incorrectly configured", "the receiving system is misconfigured"),
    (3, 6, "requested priority was changed", "accepted, but at another priority than requested"),
    // X.4.x network and routing
    (4, 0, "other or undefined network or routing status", "a network or routing problem"),
    (4, 1, "no answer from host", "the next host did not answer"),
    (4, 2, "bad connection", "the connection broke or timed out mid-transaction"),
    (4, 3, "directory server failure", "a directory lookup (usually DNS) failed"),
    (4, 4, "unable to route", "no route to the destination (no usable MX or address record)"),
    (4, 5, "mail system congestion", "the mail system is congested"),
    (4, 6, "routing loop detected", "the message is looping between servers"),
    (4, 7, "delivery time expired", "the message waited in a queue too long and expired"),
    // X.5.x mail delivery protocol
    (5, 0, "other or undefined protocol status", "an SMTP protocol problem"),
    (5, 1, "invalid command", "the command is out of sequence or not supported"),
    (5, 2, "syntax error", "the command could not be parsed"),
    (5, 3, "too many recipients", "too many recipients for one message"),
    (5, 4, "invalid command arguments", "the command's arguments are invalid or not supported"),
    (5, 5, "wrong protocol version", "the two sides speak incompatible protocol versions"),
    (5, 6, "authentication exchange line is too long", "an AUTH response line was longer than the server accepts"),
    // X.6.x message content or media
    (6, 0, "other or undefined media error", "something in the message content prevents delivery"),
    (6, 1, "media not supported", "a media type in the message is not supported on this path"),
    (6, 2, "conversion required and prohibited", "the content must be converted but conversion is forbidden"),
    (6, 3, "conversion required but not supported", "the content must be converted (e.g. 8bit to 7bit) and this hop cannot"),
    (6, 4, "conversion with loss performed", "converting the content lost some data"),
    (6, 5, "conversion failed", "a required content conversion failed"),
    (6, 6, "message content not available", "the message content could not be fetched from elsewhere (BURL)"),
    (6, 7, "non-ASCII addresses not permitted for that sender/recipient", "internationalised (non-ASCII) addresses are not allowed here"),
    (6, 8, "UTF-8 string reply is required, but not permitted by the SMTP client", "the answer needs UTF-8 but the client did not use SMTPUTF8"),
    (6, 9, "UTF-8 header message cannot be transferred to one or more recipients", "a message with UTF-8 headers cannot reach a server without SMTPUTF8"),
    (6, 10, "deprecated duplicate of X.6.8", "the answer needs UTF-8 but the client did not use SMTPUTF8"),
    // X.7.x security or policy
    (7, 0, "other or undefined security status", "refused for a security or policy reason"),
    (7, 1, "delivery not authorized, message refused", "refused by policy (relay denied, blocklist or recipient filter)"),
    (7, 2, "mailing list expansion prohibited", "the sender may not post to this mailing list"),
    (7, 3, "security conversion required but not possible", "a conversion between secure-mail formats was needed and impossible"),
    (7, 4, "security features not supported", "a required security feature is not supported"),
    (7, 5, "cryptographic failure", "a key or certificate needed to check or decrypt is missing or invalid"),
    (7, 6, "cryptographic algorithm not supported", "the message uses an unsupported cryptographic algorithm"),
    (7, 7, "message integrity failure", "the message was corrupted or altered in transit"),
    (7, 8, "authentication credentials invalid", "wrong username or password"),
    (7, 9, "authentication mechanism is too weak", "the AUTH mechanism is weaker than policy allows for this user"),
    (7, 10, "encryption needed", "this AUTH mechanism needs TLS first"),
    (7, 11, "encryption required for requested authentication mechanism", "this AUTH mechanism is only allowed on an encrypted connection"),
    (7, 12, "a password transition is needed", "log in once with PLAIN to enable this AUTH mechanism"),
    (7, 13, "user account disabled", "the account is disabled: the user must contact the administrator"),
    (7, 14, "trust relationship required", "the submission server lacks the trust needed to fetch the content (BURL)"),
    (7, 15, "priority level is too low", "the message priority is below what the server accepts now"),
    (7, 16, "message is too big for the specified priority", "the message is too big for its priority"),
    (7, 17, "mailbox owner has changed", "the recipient mailbox changed owner since the given date (RRVS)"),
    (7, 18, "domain owner has changed", "the recipient domain changed owner since the given date (RRVS)"),
    (7, 19, "RRVS test cannot be completed", "the server cannot tell who owned the mailbox at the given date (RRVS)"),
    (7, 20, "no passing DKIM signature found", "the message has no valid DKIM signature"),
    (7, 21, "no acceptable DKIM signature found", "DKIM signatures verify but none is acceptable to the receiver"),
    (7, 22, "no valid author-matched DKIM signature found", "no valid DKIM signature from the header From domain"),
    (7, 23, "SPF validation failed", "SPF fail: the sending IP is not allowed to send for the sender domain"),
    (7, 24, "SPF validation error", "the SPF check itself failed (DNS or record error)"),
    (7, 25, "reverse DNS validation failed", "the client IP's reverse DNS does not check out"),
    (7, 26, "multiple authentication checks failed", "several sender authentication checks (SPF, DKIM, ...) failed"),
    (7, 27, "sender address has null MX", "the sender's domain publishes a null MX, so bounces could not be returned"),
    (7, 28, "mail flood detected", "the message looks like part of a flood of similar abusive mail"),
    (7, 29, "ARC validation failure", "the message's ARC chain did not validate"),
    (7, 30, "REQUIRETLS support required", "the message demands TLS on every hop (REQUIRETLS) and the next hop cannot promise it"),
];

#[cfg(test)]
mod tests {
    use super::*;

    /// The IANA "SMTP Enhanced Status Codes" registry, Enumerated Status Codes
    /// (RFC 3463, 3886, 4468, 4954, 5248, 6531, 6710, 7293, 7372, 7504, 7505,
    /// draft-levine-mailbomb-header), then X.7.29 (ARC, RFC 8617) and X.7.30
    /// (REQUIRETLS, RFC 8689). Every code is registered as `X.`: valid under classes
    /// 2, 4 and 5 alike.
    const REGISTRY: &[&str] = &[
        "X.0.0", "X.1.0", "X.1.1", "X.1.2", "X.1.3", "X.1.4", "X.1.5", "X.1.6", "X.1.7", "X.1.8",
        "X.1.9", "X.1.10", "X.2.0", "X.2.1", "X.2.2", "X.2.3", "X.2.4", "X.3.0", "X.3.1", "X.3.2",
        "X.3.3", "X.3.4", "X.3.5", "X.3.6", "X.4.0", "X.4.1", "X.4.2", "X.4.3", "X.4.4", "X.4.5",
        "X.4.6", "X.4.7", "X.5.0", "X.5.1", "X.5.2", "X.5.3", "X.5.4", "X.5.5", "X.5.6", "X.6.0",
        "X.6.1", "X.6.2", "X.6.3", "X.6.4", "X.6.5", "X.6.6", "X.6.7", "X.6.8", "X.6.9", "X.6.10",
        "X.7.0", "X.7.1", "X.7.2", "X.7.3", "X.7.4", "X.7.5", "X.7.6", "X.7.7", "X.7.8", "X.7.9",
        "X.7.10", "X.7.11", "X.7.12", "X.7.13", "X.7.14", "X.7.15", "X.7.16", "X.7.17", "X.7.18",
        "X.7.19", "X.7.20", "X.7.21", "X.7.22", "X.7.23", "X.7.24", "X.7.25", "X.7.26", "X.7.27",
        "X.7.28", "X.7.29", "X.7.30",
    ];

    #[test]
    fn every_registered_code_has_its_own_words_in_every_class() {
        for entry in REGISTRY {
            let rest = entry
                .strip_prefix("X.")
                .expect("registry entries start with X.");
            for class in ["2", "4", "5"] {
                let code = format!("{class}.{rest}");
                let e = enhanced(&code).unwrap_or_else(|| panic!("{code} did not parse"));
                let d = e.detail.unwrap_or_else(|| panic!("{code} fell back"));
                assert!(!d.name.is_empty() && !d.meaning.is_empty(), "{code}");
                assert_ne!(e.subject, "unregistered status subject", "{code}");
            }
        }
    }

    #[test]
    fn table_holds_nothing_the_registry_does_not() {
        assert_eq!(DETAILS.len(), REGISTRY.len());
        for &(s, d, name, _) in DETAILS {
            let code = format!("X.{s}.{d}");
            assert!(
                REGISTRY.contains(&code.as_str()),
                "{code} ({name}) not registered"
            );
        }
    }

    #[test]
    fn explains_class_subject_and_detail() {
        let e = enhanced("5.1.1").unwrap();
        assert_eq!(
            e,
            Explanation {
                status: Status {
                    class: 5,
                    subject: 1,
                    detail: 1
                },
                class: "permanent failure",
                subject: "addressing status",
                detail: Some(Detail {
                    name: "bad destination mailbox address",
                    meaning: "the mailbox does not exist",
                }),
            }
        );
        assert_eq!(
            e.to_string(),
            "the mailbox does not exist (bad destination mailbox address)"
        );
        assert_eq!(
            enhanced("4.2.2").unwrap().class,
            "persistent transient failure"
        );
        assert_eq!(enhanced("2.1.5").unwrap().class, "success");
        assert_eq!(
            enhanced("5.7.26").unwrap().detail.unwrap().name,
            "multiple authentication checks failed"
        );
    }

    #[test]
    fn unregistered_detail_falls_back_to_class_and_subject() {
        let e = enhanced("5.7.99").unwrap();
        assert_eq!(e.class, "permanent failure");
        assert_eq!(e.subject, "security or policy status");
        assert_eq!(e.detail, None);
        assert_eq!(
            e.to_string(),
            "5.7.99: security or policy status (detail unknown)"
        );
        let e = enhanced("4.9.1").unwrap();
        assert_eq!(e.subject, "unregistered status subject");
        assert_eq!(
            e.to_string(),
            "4.9.1: unregistered status subject (detail unknown)"
        );
        assert_eq!(enhanced("5.999.999").unwrap().detail, None);
        assert_eq!(
            enhanced(" 5.1.1\t").unwrap().status,
            Status {
                class: 5,
                subject: 1,
                detail: 1
            }
        );
    }

    #[test]
    fn garbage_is_none_never_a_panic() {
        for bad in [
            "", ".", "..", "5", "5.", "5.1", "5.1.", "5..1", ".1.1", "5.x.y", "x.1.1", "99.99.99",
            "5.1.1.1", "3.1.1", "1.1.1", "6.1.1", "0.0.0", "5.1000.1", "5.1.1000", "5.01.1",
            "5.1.01", "5.+1.1", "5.-1.1", "5 .1.1", "５.1.1", "5.1.1x", "\u{0}",
        ] {
            assert_eq!(enhanced(bad), None, "{bad:?}");
        }
        assert_eq!(
            parse_status("5.999.0"),
            Some(Status {
                class: 5,
                subject: 999,
                detail: 0
            })
        );
    }
}
