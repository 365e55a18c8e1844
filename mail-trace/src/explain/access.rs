//! POP3 and IMAP response codes (the bracketed `[CODE]` after `-ERR` / `NO` / `OK`).

/// Explains a POP3 response code (IANA "POP3 Response Codes": RFC 2449, 3206, 6856).
/// Codes are hierarchical (`SYS/TEMP`): an unknown subcode of a known code gets the
/// parent's meaning. Case-insensitive; surrounding brackets and spaces are ignored.
pub fn pop3_code(code: &str) -> Option<&'static str> {
    let code = strip(code);
    lookup(POP3, code).or_else(|| {
        let (parent, _) = code.split_once('/')?;
        lookup(POP3, parent)
    })
}

/// Explains an IMAP response code (IANA "IMAP Response Codes": RFC 3501, 9051, 5530
/// and extensions). Arguments after the atom (`UIDNEXT 4392`) are ignored;
/// case-insensitive.
pub fn imap_code(code: &str) -> Option<&'static str> {
    let code = strip(code);
    let atom = code.split(|c: char| c.is_ascii_whitespace()).next()?;
    lookup(IMAP, atom)
}

fn strip(code: &str) -> &str {
    let code = code.trim();
    let code = code.strip_prefix('[').unwrap_or(code);
    let code = code.strip_suffix(']').unwrap_or(code);
    code.trim()
}

fn lookup(table: &[(&str, &'static str)], code: &str) -> Option<&'static str> {
    table
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(code))
        .map(|&(_, meaning)| meaning)
}

#[rustfmt::skip]
const POP3: &[(&str, &str)] = &[
    ("LOGIN-DELAY", "login refused: this user logged in too recently (minimum delay between logins)"),
    ("IN-USE", "the maildrop is locked by another session"),
    ("SYS", "a server-side problem, not the user's credentials"),
    ("SYS/TEMP", "temporary server-side problem, not the credentials; retry later"),
    ("SYS/PERM", "permanent server-side problem, not the credentials; retrying will not help"),
    ("AUTH", "authentication failed because of the user's credentials or account"),
    ("UTF8", "the message has UTF-8 headers and the client did not enable UTF8 mode"),
];

#[rustfmt::skip]
const IMAP: &[(&str, &str)] = &[
    ("NEWNAME", "obsolete: the mailbox was renamed; use the new name"),
    ("REFERRAL", "the mailbox or account is on another server; follow the IMAP URL given"),
    ("ALERT", "the server has a message the user must see"),
    ("BADCHARSET", "SEARCH used a charset the server does not support"),
    ("CAPABILITY", "the server's capability list"),
    ("PARSE", "the server could not parse a message's headers or MIME structure"),
    ("PERMANENTFLAGS", "the flags the client may change permanently"),
    ("READ-ONLY", "the mailbox is open read-only"),
    ("READ-WRITE", "the mailbox is open read-write"),
    ("TRYCREATE", "the target mailbox does not exist; the client may create it and retry"),
    ("UIDNEXT", "the next UID this mailbox will assign"),
    ("UIDVALIDITY", "the mailbox's UID validity (if it changes, cached UIDs are void)"),
    ("UNSEEN", "the number of the first unseen message"),
    ("UNKNOWN-CTE", "the server cannot decode this part's content transfer encoding"),
    ("UIDNOTSTICKY", "this mailbox does not keep UIDs across sessions"),
    ("APPENDUID", "the UID given to the appended message"),
    ("COPYUID", "the UIDs given to the copied messages"),
    ("URLMECH", "the URLAUTH mechanisms the server supports"),
    ("TOOBIG", "the message or a referenced part is too big"),
    ("BADURL", "an IMAP URL in the command is invalid or not accessible"),
    ("HIGHESTMODSEQ", "the mailbox's highest modification sequence (CONDSTORE)"),
    ("NOMODSEQ", "this mailbox does not keep modification sequences"),
    ("MODIFIED", "some messages changed since the given MODSEQ and were left alone"),
    ("COMPRESSIONACTIVE", "compression is already active"),
    ("CLOSED", "the previously selected mailbox is now closed"),
    ("NOTSAVED", "the search result could not be saved"),
    ("BADCOMPARATOR", "the comparator asked for is unknown or not supported"),
    ("ANNOTATE", "the annotation was refused"),
    ("ANNOTATIONS", "annotation limit reached, or annotations not allowed here"),
    ("TEMPFAIL", "a conversion failed temporarily"),
    ("MAXCONVERTMESSAGES", "too many messages to convert in one command"),
    ("MAXCONVERTPARTS", "too many body parts to convert in one command"),
    ("NOUPDATE", "the server cannot keep this search context updated"),
    ("NOTIFICATIONOVERFLOW", "too many changes: the server stopped sending notifications"),
    ("BADEVENT", "the client asked for an event the server does not support"),
    ("UNDEFINED-FILTER", "the named search filter is not defined"),
    ("METADATA", "metadata refused: too large, too many, or not supported"),
    ("UNAVAILABLE", "a subsystem the server needs is down; retry later"),
    ("AUTHENTICATIONFAILED", "login failed: wrong credentials (the server gives no more detail)"),
    ("AUTHORIZATIONFAILED", "credentials were right but this user may not act as the requested identity"),
    ("EXPIRED", "the password or certificate has expired"),
    ("PRIVACYREQUIRED", "refused until the connection is encrypted (TLS)"),
    ("CONTACTADMIN", "the user must contact the administrator"),
    ("NOPERM", "no permission for this mailbox or operation (ACL)"),
    ("INUSE", "another session is using the resource; retry later"),
    ("EXPUNGEISSUED", "some requested messages were expunged by another session"),
    ("CORRUPTION", "the server found corrupted data"),
    ("SERVERBUG", "the server hit an internal bug"),
    ("CLIENTBUG", "the server says the client misbehaved (the command was still handled)"),
    ("CANNOT", "the operation can never succeed on this server"),
    ("LIMIT", "a server limit was reached (too many of something)"),
    ("OVERQUOTA", "the user is over quota"),
    ("ALREADYEXISTS", "the mailbox or object already exists"),
    ("NONEXISTENT", "the mailbox or object does not exist"),
    ("USEATTR", "the special-use attribute is not supported or not allowed here"),
    ("DOWNGRADED", "the message was downgraded from its internationalised (UTF-8) form"),
    ("HASCHILDREN", "the mailbox has child mailboxes, so it cannot be deleted"),
    ("MAILBOXID", "the mailbox's permanent identifier (OBJECTID)"),
    ("INPROGRESS", "the command is still running (progress report)"),
    ("UIDREQUIRED", "the client must address messages by UID, not sequence number (UIDONLY)"),
];

#[cfg(test)]
mod tests {
    use super::*;

    /// IANA "POP3 Response Codes".
    const POP3_CODES: &[&str] = &[
        "LOGIN-DELAY",
        "IN-USE",
        "SYS/PERM",
        "SYS/TEMP",
        "AUTH",
        "UTF8",
    ];

    /// IANA "IMAP Response Codes": NEWNAME … PRIVACYREQUIRED as listed by the registry;
    /// the rest of RFC 5530, USEATTR (RFC 6154), DOWNGRADED (RFC 6858), HASCHILDREN
    /// (RFC 9051), MAILBOXID (RFC 8474), INPROGRESS (RFC 9585) and UIDREQUIRED
    /// (RFC 9586) from those RFCs; CAPABILITY from RFC 3501/9051 §7.1.
    const IMAP_CODES: &[&str] = &[
        "NEWNAME",
        "REFERRAL",
        "ALERT",
        "BADCHARSET",
        "CAPABILITY",
        "PARSE",
        "PERMANENTFLAGS",
        "READ-ONLY",
        "READ-WRITE",
        "TRYCREATE",
        "UIDNEXT",
        "UIDVALIDITY",
        "UNSEEN",
        "UNKNOWN-CTE",
        "UIDNOTSTICKY",
        "APPENDUID",
        "COPYUID",
        "URLMECH",
        "TOOBIG",
        "BADURL",
        "HIGHESTMODSEQ",
        "NOMODSEQ",
        "MODIFIED",
        "COMPRESSIONACTIVE",
        "CLOSED",
        "NOTSAVED",
        "BADCOMPARATOR",
        "ANNOTATE",
        "ANNOTATIONS",
        "TEMPFAIL",
        "MAXCONVERTMESSAGES",
        "MAXCONVERTPARTS",
        "NOUPDATE",
        "NOTIFICATIONOVERFLOW",
        "BADEVENT",
        "UNDEFINED-FILTER",
        "METADATA",
        "UNAVAILABLE",
        "AUTHENTICATIONFAILED",
        "AUTHORIZATIONFAILED",
        "EXPIRED",
        "PRIVACYREQUIRED",
        "CONTACTADMIN",
        "NOPERM",
        "INUSE",
        "EXPUNGEISSUED",
        "CORRUPTION",
        "SERVERBUG",
        "CLIENTBUG",
        "CANNOT",
        "LIMIT",
        "OVERQUOTA",
        "ALREADYEXISTS",
        "NONEXISTENT",
        "USEATTR",
        "DOWNGRADED",
        "HASCHILDREN",
        "MAILBOXID",
        "INPROGRESS",
        "UIDREQUIRED",
    ];

    #[test]
    fn every_pop3_code_has_its_own_words() {
        for code in POP3_CODES {
            let own = lookup(POP3, code).unwrap_or_else(|| panic!("{code} missing"));
            assert_eq!(pop3_code(code), Some(own));
        }
        // Only the registry plus the SYS parent the hierarchy falls back to.
        assert_eq!(POP3.len(), POP3_CODES.len() + 1);
    }

    #[test]
    fn every_imap_code_has_its_own_words() {
        for code in IMAP_CODES {
            assert!(imap_code(code).is_some(), "{code} missing");
        }
        assert_eq!(IMAP.len(), IMAP_CODES.len());
        for (name, _) in IMAP {
            assert!(IMAP_CODES.contains(name), "{name} not in the list");
        }
    }

    #[test]
    fn lookups_are_lenient_about_case_brackets_and_arguments() {
        assert_eq!(pop3_code("sys/temp"), lookup(POP3, "SYS/TEMP"));
        assert_eq!(pop3_code("[IN-USE]"), lookup(POP3, "IN-USE"));
        assert_eq!(pop3_code("SYS/QUOTA"), lookup(POP3, "SYS"));
        assert_eq!(
            imap_code("UIDVALIDITY 3857529045"),
            Some("the mailbox's UID validity (if it changes, cached UIDs are void)")
        );
        assert_eq!(
            imap_code("[authenticationfailed]"),
            lookup(IMAP, "AUTHENTICATIONFAILED")
        );
        assert_eq!(
            imap_code("[BADCHARSET (UTF-8)]"),
            lookup(IMAP, "BADCHARSET")
        );
    }

    #[test]
    fn unknown_codes_are_none_never_a_panic() {
        for bad in [
            "", "[]", "[", "]", " ", "X-FOO", "/", "SYS/", "/TEMP", "ÄUTH", "\u{0}",
        ] {
            assert_eq!(imap_code(bad), None, "imap {bad:?}");
            if bad != "SYS/" {
                assert_eq!(pop3_code(bad), None, "pop3 {bad:?}");
            }
        }
        // An empty subcode still names its parent.
        assert_eq!(pop3_code("SYS/"), lookup(POP3, "SYS"));
    }
}
