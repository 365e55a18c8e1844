//! Delivery status notifications (RFC 3464): the `message/delivery-status` part
//! of a `multipart/report; report-type=delivery-status` message, read for the
//! per-recipient fields an operator asks about first — who, what happened, the
//! status code (explained) and the remote server's words.
//!
//! The SMTP body scanner keeps at most [`MAX_REPORT_BYTES`] of a report's body
//! for this and drops them once parsed; only these fields are kept.
use serde::Serialize;

use super::{Finding, Severity};

/// Body bytes of a report kept for parsing.
pub const MAX_REPORT_BYTES: usize = 256 * 1024;
/// Recipients kept per report.
pub const MAX_RECIPIENTS: usize = 16;
/// Longest field value kept.
const MAX_FIELD: usize = 512;
/// Longest finding reason.
const MAX_REASON: usize = 1024;

/// One per-recipient block of a DSN.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DsnRecipient {
    /// The address, without its `rfc822;` type.
    pub final_recipient: Option<String>,
    /// failed, delayed, delivered, relayed, expanded.
    pub action: Option<String>,
    /// RFC 3463 status, e.g. 5.1.1.
    pub status: Option<String>,
    /// The status in plain English.
    pub explain: Option<String>,
    /// The remote server's reply, without its `smtp;` type.
    pub diagnostic_code: Option<String>,
}

enum State {
    /// Before the first boundary, or in a part that is not the status part.
    Skip,
    /// A part's header lines; true once it proved to be the status part.
    PartHeaders(bool),
    /// Status fields; `fields` is the group being read.
    Fields,
}

/// The recipients of a report body (the bytes after the message's header block).
/// `boundary` is the multipart boundary from the Content-Type.
pub fn parse(body: &[u8], boundary: Option<&str>) -> Vec<DsnRecipient> {
    let text = String::from_utf8_lossy(body);
    let mut out = Vec::new();
    let mut group: Vec<(String, String)> = Vec::new();
    let mut state = State::Skip;
    for line in text.lines() {
        let is_boundary = line.strip_prefix("--").is_some_and(|rest| match boundary {
            Some(b) => rest.starts_with(b),
            None => !rest.is_empty(),
        });
        if is_boundary {
            flush(&mut group, &mut out);
            state = State::PartHeaders(false);
            continue;
        }
        match &mut state {
            State::Skip => {}
            State::PartHeaders(status_part) => {
                if line.is_empty() {
                    state = if *status_part {
                        State::Fields
                    } else {
                        State::Skip
                    };
                } else if let Some((name, value)) = line.split_once(':') {
                    if name.trim().eq_ignore_ascii_case("content-type") {
                        let v = value.trim().to_ascii_lowercase();
                        *status_part = v.starts_with("message/delivery-status")
                            || v.starts_with("message/global-delivery-status");
                    }
                }
            }
            State::Fields => {
                if line.trim().is_empty() {
                    flush(&mut group, &mut out);
                } else if line.starts_with([' ', '\t']) {
                    if let Some((_, v)) = group.last_mut() {
                        v.push(' ');
                        v.push_str(line.trim());
                        bound(v);
                    }
                } else if let Some((name, value)) = line.split_once(':') {
                    let mut v = value.trim().to_string();
                    bound(&mut v);
                    if group.len() < 32 {
                        group.push((name.trim().to_ascii_lowercase(), v));
                    }
                }
            }
        }
    }
    flush(&mut group, &mut out);
    out
}

fn bound(s: &mut String) {
    crate::proto::auth::truncate(s, MAX_FIELD);
}

/// `rfc822; bob@example.com` → `bob@example.com`.
fn untyped(v: &str) -> String {
    v.split_once(';').map_or(v, |(_, x)| x).trim().to_string()
}

/// A finished group becomes a recipient when it names one (the per-message
/// group, with Reporting-MTA, does not).
fn flush(group: &mut Vec<(String, String)>, out: &mut Vec<DsnRecipient>) {
    let g = std::mem::take(group);
    let get = |k: &str| g.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let r = DsnRecipient {
        final_recipient: get("final-recipient")
            .or_else(|| get("original-recipient"))
            .map(|v| untyped(&v)),
        action: get("action").map(|a| a.to_ascii_lowercase()),
        status: get("status").map(|s| {
            // "5.1.1 (bad destination)" is seen in the wild: the code is the first word.
            s.split_whitespace().next().unwrap_or_default().to_string()
        }),
        explain: None,
        diagnostic_code: get("diagnostic-code").map(|v| untyped(&v)),
    };
    if r.final_recipient.is_none() && r.status.is_none() {
        return;
    }
    let explain = r
        .status
        .as_deref()
        .and_then(crate::explain::enhanced)
        .map(|e| e.to_string());
    if out.len() < MAX_RECIPIENTS {
        out.push(DsnRecipient { explain, ..r });
    }
}

/// `dsn`: the report read at a glance.
pub fn finding(rcpts: &[DsnRecipient]) -> Option<Finding> {
    if rcpts.is_empty() {
        return None;
    }
    let parts: Vec<String> = rcpts
        .iter()
        .map(|r| {
            let mut s = format!(
                "{} {}",
                r.final_recipient
                    .as_deref()
                    .unwrap_or("(recipient unknown)"),
                r.action.as_deref().unwrap_or("(no action)")
            );
            if let Some(st) = &r.status {
                s.push_str(&format!(" {st}"));
            }
            if let Some(e) = &r.explain {
                s.push_str(&format!(" ({e})"));
            }
            if let Some(d) = &r.diagnostic_code {
                s.push_str(&format!(": {d}"));
            }
            s
        })
        .collect();
    let mut reason = format!("delivery status notification: {}", parts.join("; "));
    crate::proto::auth::truncate(&mut reason, MAX_REASON);
    Some(Finding::new("dsn", Severity::Info, reason))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What Postfix writes for an unknown local recipient.
    const POSTFIX_BOUNCE: &[u8] = b"This is a MIME-encapsulated message.\r\n\r\n\
--4B1C93E0A1.1700000000/mx.example.com\r\n\
Content-Description: Notification\r\n\
Content-Type: text/plain; charset=us-ascii\r\n\r\n\
I'm sorry to have to inform you that your message could not\r\n\
Final-Recipient: rfc822; this-is-body-text@example.com\r\n\r\n\
--4B1C93E0A1.1700000000/mx.example.com\r\n\
Content-Description: Delivery report\r\n\
Content-Type: message/delivery-status\r\n\r\n\
Reporting-MTA: dns; mx.example.com\r\n\
X-Postfix-Queue-ID: 4B1C93E0A1\r\n\
Arrival-Date: Tue,  1 Jul 2025 10:00:00 +0000 (UTC)\r\n\r\n\
Final-Recipient: rfc822; nobody@example.com\r\n\
Original-Recipient: rfc822;nobody@example.com\r\n\
Action: failed\r\n\
Status: 5.1.1\r\n\
Diagnostic-Code: X-Postfix; unknown user: \"nobody\"\r\n\r\n\
--4B1C93E0A1.1700000000/mx.example.com\r\n\
Content-Description: Undelivered Message\r\n\
Content-Type: message/rfc822\r\n\r\n\
Final-Recipient: rfc822; quoted@example.com\r\n\
--4B1C93E0A1.1700000000/mx.example.com--\r\n";

    #[test]
    fn postfix_bounce_only_the_status_part() {
        let r = parse(POSTFIX_BOUNCE, Some("4B1C93E0A1.1700000000/mx.example.com"));
        assert_eq!(
            r,
            vec![DsnRecipient {
                final_recipient: Some("nobody@example.com".into()),
                action: Some("failed".into()),
                status: Some("5.1.1".into()),
                explain: crate::explain::enhanced("5.1.1").map(|e| e.to_string()),
                diagnostic_code: Some("unknown user: \"nobody\"".into()),
            }]
        );
        let f = finding(&r).unwrap();
        assert_eq!(f.id, "dsn");
        assert_eq!(f.severity, Severity::Info);
        assert!(
            f.reason
                .starts_with("delivery status notification: nobody@example.com failed 5.1.1 ("),
            "{}",
            f.reason
        );
        assert!(
            f.reason.ends_with("): unknown user: \"nobody\""),
            "{}",
            f.reason
        );
    }

    #[test]
    fn folded_fields_two_recipients_and_no_status_part() {
        let body = b"--b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; x\r\n\r\n\
Final-Recipient: rfc822; a@x.org\r\nAction: delayed\r\nStatus: 4.4.1\r\nDiagnostic-Code: smtp; 421\r\n  timeout\r\n\r\n\
Final-Recipient: rfc822; b@x.org\r\nAction: failed\r\nStatus: 5.2.2\r\n--b--\r\n";
        let r = parse(body, Some("b"));
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].diagnostic_code.as_deref(), Some("421 timeout"));
        assert_eq!(r[1].final_recipient.as_deref(), Some("b@x.org"));
        assert_eq!(r[1].status.as_deref(), Some("5.2.2"));
        // The close one: a report without a delivery-status part says nothing.
        let plain = b"--b\r\nContent-Type: text/plain\r\n\r\nStatus: 5.1.1\r\n--b--\r\n";
        assert_eq!(parse(plain, Some("b")), vec![]);
        assert_eq!(finding(&[]), None);
    }
}
