//! Plain-English explanations of mail protocol status codes, for the tail and the JSON
//! `explain` field: SMTP reply codes, RFC 3463 enhanced status codes, POP3 and IMAP
//! response codes.
//!
//! Pure lookups over static tables: no I/O and no allocation except in
//! [`explain_reply`], which builds the one line the tail prints. Every input is
//! untrusted wire text, so lookups return `None` (or a fallback) and never panic.

mod access;
mod enhanced;
mod reply;

pub use access::{imap_code, pop3_code};
pub use enhanced::{detail, enhanced, explain_status, parse_status, Detail, Explanation, Status};
pub use reply::{reply_class, smtp_reply};

/// The one line printed beside a reply, e.g. for `550 5.1.1`:
/// `permanent failure: the mailbox does not exist (bad destination mailbox address)`.
///
/// The reply code's first digit decides "transient" or "permanent" (it is what the
/// client acts on); a registered enhanced code gives the detail. An enhanced code with
/// an unregistered detail adds its subject after the reply's meaning; one that is not
/// an enhanced code at all is ignored. A class that contradicts the reply code (RFC 3463
/// requires them to agree) is pointed out, as it usually means a misconfigured server.
pub fn explain_reply(code: u16, enhanced_code: Option<&str>) -> String {
    let (Some(class), Some(reply)) = (reply_class(code), smtp_reply(code)) else {
        return format!("unknown reply code {code}");
    };
    let Some(e) = enhanced_code.and_then(enhanced) else {
        return format!("{class}: {reply}");
    };
    let mut line = match e.detail {
        Some(_) => format!("{class}: {e}"),
        None => format!("{class}: {reply}; {e}"),
    };
    if u16::from(e.status.class) != code / 100 {
        line.push_str(&format!(" [status {} contradicts reply {code}]", e.status));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_with_registered_enhanced_code() {
        assert_eq!(
            explain_reply(550, Some("5.1.1")),
            "permanent failure: the mailbox does not exist (bad destination mailbox address)"
        );
        assert_eq!(
            explain_reply(452, Some("4.2.2")),
            "transient failure: the recipient's mailbox is over quota (mailbox full)"
        );
        assert_eq!(
            explain_reply(535, Some("5.7.8")),
            "permanent failure: wrong username or password (authentication credentials invalid)"
        );
        assert_eq!(
            explain_reply(550, Some("5.7.26")),
            "permanent failure: several sender authentication checks (SPF, DKIM, ...) failed \
             (multiple authentication checks failed)"
        );
    }

    #[test]
    fn reply_without_or_with_unusable_enhanced_code() {
        assert_eq!(
            explain_reply(421, None),
            "transient failure: service not available, closing the connection \
             (overload, rate limit or shutdown)"
        );
        assert_eq!(
            explain_reply(503, Some("")),
            "permanent failure: bad sequence of commands"
        );
        assert_eq!(
            explain_reply(503, Some("5.x.y")),
            "permanent failure: bad sequence of commands"
        );
        assert_eq!(
            explain_reply(559, None),
            "permanent failure: a mail system reply (code not listed in RFC 5321)"
        );
    }

    #[test]
    fn reply_with_unregistered_detail_keeps_the_reply_meaning() {
        assert_eq!(
            explain_reply(554, Some("5.7.99")),
            "permanent failure: transaction failed (at connect: no SMTP service here); \
             5.7.99: security or policy status (detail unknown)"
        );
    }

    #[test]
    fn contradicting_class_is_flagged() {
        assert_eq!(
            explain_reply(450, Some("5.2.1")),
            "transient failure: the mailbox exists but is disabled \
             (mailbox disabled, not accepting messages) [status 5.2.1 contradicts reply 450]"
        );
    }

    #[test]
    fn not_a_reply_code() {
        assert_eq!(explain_reply(0, None), "unknown reply code 0");
        assert_eq!(explain_reply(999, Some("5.1.1")), "unknown reply code 999");
        assert_eq!(explain_reply(570, None), "unknown reply code 570");
    }
}
