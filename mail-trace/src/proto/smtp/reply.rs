//! SMTP replies: `NNN-text` continuation lines and one `NNN text` last line,
//! joined into one [`Reply`]; the RFC 3463 enhanced status code and the queue
//! id of the end-of-data reply.

use crate::proto::auth::truncate;

/// Separator between the text lines of a multi-line reply.
pub const LINE_SEPARATOR: &str = crate::proto::REPLY_LINE_SEP;
/// Lines of one reply kept (an EHLO reply has ~15); the rest are counted, not kept.
pub const MAX_REPLY_LINES: usize = 64;
/// Longest reply text kept, all lines together.
pub const MAX_REPLY_TEXT: usize = 4096;

/// One complete reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// Three digits, e.g. 250.
    pub code: u16,
    /// X.Y.Z from the first line, when present.
    pub enhanced: Option<String>,
    /// The text of each line, the enhanced code stripped where it repeats.
    pub lines: Vec<String>,
}

impl Reply {
    /// The text lines joined with [`LINE_SEPARATOR`], bounded.
    pub fn text(&self) -> String {
        let mut s = self.lines.join(LINE_SEPARATOR);
        truncate(&mut s, MAX_REPLY_TEXT);
        s
    }
}

/// A reply line split into its parts.
#[derive(Debug, PartialEq, Eq)]
pub struct ReplyLine<'a> {
    pub code: u16,
    /// `-` follows the code: more lines come.
    pub more: bool,
    pub text: &'a str,
}

/// Parses `NNN`, `NNN text` or `NNN-text` (the code must be 2xx–5xx).
pub fn parse_line(line: &str) -> Option<ReplyLine<'_>> {
    let b = line.as_bytes();
    if b.len() < 3 || !b[..3].iter().all(u8::is_ascii_digit) || !(b'2'..=b'5').contains(&b[0]) {
        return None;
    }
    let code = u16::from(b[0] - b'0') * 100 + u16::from(b[1] - b'0') * 10 + u16::from(b[2] - b'0');
    match b.get(3) {
        None => Some(ReplyLine {
            code,
            more: false,
            text: "",
        }),
        Some(b' ') => Some(ReplyLine {
            code,
            more: false,
            text: &line[4..],
        }),
        Some(b'-') => Some(ReplyLine {
            code,
            more: true,
            text: &line[4..],
        }),
        _ => None,
    }
}

/// Splits a leading `X.Y.Z ` (RFC 3463: class 2/4/5, subject and detail 1–3 digits).
/// Byte by byte: every reply line comes through here.
pub fn split_enhanced(text: &str) -> Option<(&str, &str)> {
    let b = text.as_bytes();
    if !matches!(b.first(), Some(b'2' | b'4' | b'5')) || b.get(1) != Some(&b'.') {
        return None;
    }
    // Up to four digits looked at: a fourth makes the part too long anyway.
    let digits = |from: usize| {
        b.get(from..)
            .unwrap_or_default()
            .iter()
            .take(4)
            .take_while(|c| c.is_ascii_digit())
            .count()
    };
    let subject = digits(2);
    if !(1..=3).contains(&subject) || b.get(2 + subject) != Some(&b'.') {
        return None;
    }
    let detail_at = 3 + subject;
    let detail = digits(detail_at);
    let end = detail_at + detail;
    if !(1..=3).contains(&detail) || !matches!(b.get(end), None | Some(b' ')) {
        return None;
    }
    Some((&text[..end], text[end..].trim_start()))
}

/// Builds a multi-line reply line by line.
#[derive(Debug)]
pub struct ReplyBuilder {
    reply: Reply,
    /// A continuation line changed the code (counted as an anomaly by the caller).
    pub code_mismatch: bool,
    text_len: usize,
}

impl ReplyBuilder {
    pub fn new(first: &ReplyLine<'_>) -> Self {
        let (enhanced, text) = match split_enhanced(first.text) {
            Some((e, t)) => (Some(e.to_string()), t),
            None => (None, first.text),
        };
        let mut b = Self {
            reply: Reply {
                code: first.code,
                enhanced,
                lines: Vec::new(),
            },
            code_mismatch: false,
            text_len: 0,
        };
        b.push_text(text);
        b
    }

    /// Adds a following line (continuation or last).
    pub fn push(&mut self, line: &ReplyLine<'_>) {
        if line.code != self.reply.code {
            self.code_mismatch = true;
        }
        let text = match (&self.reply.enhanced, split_enhanced(line.text)) {
            (Some(e), Some((e2, t))) if e == e2 => t,
            _ => line.text,
        };
        self.push_text(text);
    }

    fn push_text(&mut self, text: &str) {
        if self.reply.lines.len() < MAX_REPLY_LINES && self.text_len < MAX_REPLY_TEXT {
            let mut t = text.to_string();
            truncate(&mut t, MAX_REPLY_TEXT - self.text_len);
            self.text_len += t.len() + LINE_SEPARATOR.len();
            self.reply.lines.push(t);
        }
    }

    pub fn finish(self) -> Reply {
        self.reply
    }
}

/// The queue id an MTA names in its end-of-data reply:
/// Postfix `250 2.0.0 Ok: queued as 4Xyz…`, Exim `250 OK id=1abcDE-000123-Ab`,
/// Sendmail `250 2.0.0 x9SFG8Qd012345 Message accepted for delivery`.
/// Where `needle` first starts in `text`: a plain scan, as the texts are short (a
/// general substring search sets up more than it then searches).
fn find(text: &str, needle: &str) -> Option<usize> {
    text.as_bytes()
        .windows(needle.len())
        .position(|w| w == needle.as_bytes())
}

pub fn queue_id(reply: &Reply) -> Option<String> {
    let text = reply.lines.first()?;
    let clean = |s: &str| {
        let id: String = s
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'))
            .take(128)
            .collect();
        let id = id.trim_end_matches('.').to_string();
        (!id.is_empty()).then_some(id)
    };
    if let Some(i) = find(text, "queued as ") {
        return clean(&text[i + 10..]);
    }
    if let Some(i) = find(text, "id=") {
        return clean(&text[i + 3..]);
    }
    let mut words = text.split_whitespace();
    let first = words.next()?;
    if text.contains("Message accepted for delivery") || text.contains("Message accepted") {
        return clean(first);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(lines: &[&str]) -> Reply {
        let parsed: Vec<_> = lines.iter().map(|l| parse_line(l).unwrap()).collect();
        let mut b = ReplyBuilder::new(&parsed[0]);
        for l in &parsed[1..] {
            b.push(l);
        }
        b.finish()
    }

    #[test]
    fn parses_reply_lines() {
        assert_eq!(
            parse_line("250-PIPELINING"),
            Some(ReplyLine {
                code: 250,
                more: true,
                text: "PIPELINING"
            })
        );
        assert_eq!(
            parse_line("221").map(|l| (l.code, l.more)),
            Some((221, false))
        );
        assert_eq!(parse_line("25O ok"), None);
        assert_eq!(parse_line("150 no"), None);
        assert_eq!(parse_line("250x"), None);
        assert_eq!(parse_line("MAIL FROM:<a@b>"), None);
    }

    /// The split as first written (text split at the first space, then at dots).
    fn split_enhanced_by_parts(text: &str) -> Option<(&str, &str)> {
        let end = text.find(' ').unwrap_or(text.len());
        let code = &text[..end];
        let mut parts = code.split('.');
        let class = parts.next()?;
        let subject = parts.next()?;
        let detail = parts.next()?;
        let digits = |p: &str, max: usize| {
            !p.is_empty() && p.len() <= max && p.bytes().all(|b| b.is_ascii_digit())
        };
        let ok = parts.next().is_none()
            && matches!(class, "2" | "4" | "5")
            && digits(subject, 3)
            && digits(detail, 3);
        ok.then(|| (code, text[end..].trim_start()))
    }

    #[test]
    fn split_enhanced_agrees_with_splitting_by_parts() {
        // Every string of up to 6 characters over the alphabet that matters, then tails.
        let alphabet = ['2', '4', '5', '1', '0', '9', '.', ' ', 'x', 'é'];
        let mut cases = vec![String::new()];
        let mut last = vec![String::new()];
        for _ in 0..6 {
            let next: Vec<String> = last
                .iter()
                .flat_map(|s| alphabet.iter().map(move |c| format!("{s}{c}")))
                .collect();
            cases.extend(next.iter().cloned());
            last = next;
        }
        let mut accepted = 0;
        for base in &cases {
            for tail in ["", " Ok", "  two  spaces", ".1", "1 x"] {
                let text = format!("{base}{tail}");
                let want = split_enhanced_by_parts(&text);
                assert_eq!(split_enhanced(&text), want, "{text:?}");
                accepted += usize::from(want.is_some());
            }
        }
        assert!(accepted > 1000, "{accepted}");
    }

    #[test]
    fn enhanced_codes() {
        assert_eq!(split_enhanced("2.1.0 Ok"), Some(("2.1.0", "Ok")));
        assert_eq!(
            split_enhanced("5.7.139 Access"),
            Some(("5.7.139", "Access"))
        );
        assert_eq!(split_enhanced("4.4.2"), Some(("4.4.2", "")));
        assert_eq!(split_enhanced("3.0.0 no"), None);
        assert_eq!(split_enhanced("1.2 x"), None);
        assert_eq!(split_enhanced("Ok 2.0.0"), None);
    }

    #[test]
    fn multiline_joined_with_repeated_enhanced_stripped() {
        let r = reply(&[
            "550-5.1.1 The email account that you tried to reach does not exist.",
            "550 5.1.1  https://support.example/?p=NoSuchUser x1si",
        ]);
        assert_eq!(r.code, 550);
        assert_eq!(r.enhanced.as_deref(), Some("5.1.1"));
        assert_eq!(
            r.text(),
            "The email account that you tried to reach does not exist. / https://support.example/?p=NoSuchUser x1si"
        );
    }

    #[test]
    fn find_is_str_find() {
        for (text, needle) in [
            ("Ok: queued as 4AB", "queued as "),
            ("queued as ", "queued as "),
            ("queued a", "queued as "),
            ("é id=x id=y", "id="),
            ("", "id="),
        ] {
            assert_eq!(find(text, needle), text.find(needle), "{text:?}");
        }
    }

    #[test]
    fn queue_ids_of_postfix_exim_sendmail() {
        let q = |l: &str| queue_id(&reply(&[l]));
        assert_eq!(
            q("250 2.0.0 Ok: queued as 4XyzAB12cd"),
            Some("4XyzAB12cd".into())
        );
        assert_eq!(
            q("250 OK id=1abcDE-000123-Ab"),
            Some("1abcDE-000123-Ab".into())
        );
        assert_eq!(
            q("250 2.0.0 x9SFG8Qd012345 Message accepted for delivery"),
            Some("x9SFG8Qd012345".into())
        );
        assert_eq!(q("250 2.0.0 Ok"), None);
    }

    #[test]
    fn bounded_lines_and_text() {
        let mut lines: Vec<String> = (0..200).map(|i| format!("250-line{i}")).collect();
        lines.push("250 end".into());
        let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
        let r = reply(&refs);
        assert_eq!(r.lines.len(), MAX_REPLY_LINES);
        let long = format!("250 {}", "é".repeat(5000));
        assert!(reply(&[&long]).text().len() <= MAX_REPLY_TEXT);
    }
}
