//! After a loss: which waiting command a reply can answer, judged by the reply alone.
//!
//! Replies are paired first-in first-out only while nothing was lost. Once a gap or a pickup
//! may have swallowed replies (or commands), a reply is paired only on evidence: a reply of a
//! kind that answers few commands (a 334 only AUTH, a 354 only DATA, …) goes to the command
//! it can answer; a reply that could answer anything goes to the one command waiting, or to
//! none (`unpaired-reply`).

use super::reply::Reply;
use super::Awaiting;

/// What kind of command a reply can answer, when its code and text tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Answers {
    /// 334: a step of an AUTH exchange.
    AuthStep,
    /// 235, 535: the outcome of an AUTH.
    AuthOutcome,
    /// 354: DATA.
    Data,
    /// 220: STARTTLS (or a greeting).
    StartTls,
    /// 221: QUIT.
    Quit,
    /// A multi-line 250 whose lines after the first are EHLO keywords.
    Ehlo,
    /// A 250 naming a queue id: the end of a message.
    Message,
    /// Anything: the reply itself does not tell.
    Any,
}

/// What `r` can answer.
pub(super) fn answers(r: &Reply) -> Answers {
    match r.code {
        334 => Answers::AuthStep,
        235 | 535 => Answers::AuthOutcome,
        354 => Answers::Data,
        220 => Answers::StartTls,
        221 => Answers::Quit,
        250 if r.lines.len() > 1 && r.lines[1..].iter().all(|l| ehlo_keyword(l)) => Answers::Ehlo,
        250 if super::reply::queue_id(r).is_some() => Answers::Message,
        _ => Answers::Any,
    }
}

/// An EHLO keyword line: `KEYWORD[ params]`, the keyword upper-case letters, digits and
/// dashes (as servers send them; prose is lower-case).
fn ehlo_keyword(l: &str) -> bool {
    let k = l.split([' ', '=']).next().unwrap_or_default();
    !k.is_empty()
        && k.as_bytes()[0].is_ascii_alphanumeric()
        && k.bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'-')
}

/// Whether a reply of kind `a` certainly does not answer `what`, even when the queue is in
/// step: a 354 answers only DATA, a 334/235/535 only AUTH. (Weaker kinds are not trusted
/// that far: a 220 also answers XCLIENT, a 221 a command the server closes on.)
pub(super) fn contradicts(what: Awaiting, a: Answers) -> bool {
    match a {
        Answers::AuthStep | Answers::AuthOutcome => !matches!(what, Awaiting::Auth),
        Answers::Data => !matches!(what, Awaiting::Data(_)),
        _ => false,
    }
}

/// Whether a reply of kind `a` with code `code` can answer a command waiting as `what`.
pub(super) fn can_answer(what: Awaiting, quit: bool, a: Answers, code: u16) -> bool {
    match a {
        Answers::AuthStep | Answers::AuthOutcome => matches!(what, Awaiting::Auth),
        Answers::Data => matches!(what, Awaiting::Data(_)),
        Answers::StartTls => matches!(what, Awaiting::StartTls),
        Answers::Quit => quit,
        Answers::Ehlo => matches!(what, Awaiting::Ehlo),
        // A queue id is given once the message is whole: not to a BDAT chunk but the last.
        Answers::Message => matches!(what, Awaiting::EndOfData(_) | Awaiting::Bdat(_, true)),
        // A success answers neither DATA (354), STARTTLS (220) nor AUTH (235/334), whose
        // successes are the kinds above; a refusal answers anything.
        Answers::Any => {
            code >= 400
                || !matches!(
                    what,
                    Awaiting::Data(_) | Awaiting::StartTls | Awaiting::Auth
                )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(code: u16, lines: &[&str]) -> Reply {
        Reply {
            code,
            enhanced: None,
            lines: lines.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn kinds() {
        assert_eq!(answers(&reply(334, &["VXNlcm5hbWU6"])), Answers::AuthStep);
        assert_eq!(answers(&reply(354, &["go ahead"])), Answers::Data);
        assert_eq!(
            answers(&reply(
                250,
                &["mx.test", "PIPELINING", "SIZE 1000", "8BITMIME"]
            )),
            Answers::Ehlo
        );
        assert_eq!(answers(&reply(250, &["2.0.0 Ok"])), Answers::Any);
        // A multi-line 250 with prose is not an EHLO reply.
        assert_eq!(
            answers(&reply(250, &["first", "this is text."])),
            Answers::Any
        );
        assert_eq!(answers(&reply(221, &["Bye"])), Answers::Quit);
        assert_eq!(answers(&reply(535, &["nope"])), Answers::AuthOutcome);
    }

    #[test]
    fn what_answers_what() {
        let any = |what, code| can_answer(what, false, Answers::Any, code);
        assert!(!any(Awaiting::Data(None), 250));
        assert!(any(Awaiting::Data(None), 554));
        assert!(any(Awaiting::Mail(None), 250));
        assert!(!any(Awaiting::Auth, 250));
        assert!(can_answer(Awaiting::Auth, false, Answers::AuthStep, 334));
        assert!(!can_answer(Awaiting::Ehlo, false, Answers::AuthStep, 334));
        assert!(!can_answer(Awaiting::Mail(None), false, Answers::Data, 354));
        assert!(can_answer(Awaiting::Other, true, Answers::Quit, 221));
        // A queue id answers the end of a message: the last BDAT, not a chunk before it.
        assert!(can_answer(
            Awaiting::Bdat(None, true),
            false,
            Answers::Message,
            250
        ));
        assert!(!can_answer(
            Awaiting::Bdat(None, false),
            false,
            Answers::Message,
            250
        ));
        assert!(!can_answer(Awaiting::Other, false, Answers::Quit, 221));
    }
}
