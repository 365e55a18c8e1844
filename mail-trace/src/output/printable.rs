//! The one boundary between text that came from outside (the wire, a log, the kernel, /proc)
//! and a human's terminal: [`printable`] (and [`Printable`] for `format!`) shows every
//! character a terminal could act on as an escape, so a peer cannot clear the screen, move the
//! cursor over earlier lines, hide text or write the operator's clipboard (OSC 52).
//!
//! Escaped: C0 controls and DEL as `\xNN` (ESC is `\x1b`), C1 controls as `\u{NN}` (some
//! terminals take U+009B as CSI), and the Unicode bidirectional overrides and isolates as
//! `\u{NNNN}` (they reorder what the operator reads). Everything else, non-ASCII letters
//! included, is shown as it is. A backslash is not doubled: the tail stays readable, and a
//! literal `\x1b` typed by a peer is harmless text either way.
//!
//! JSON output does not use this: serde_json escapes every C0 control (`\u001b`), so a record
//! keeps the exact text, and `jq -r` is the operator's explicit choice.
use std::borrow::Cow;
use std::fmt;

/// Whether a terminal could act on `c` rather than print it.
fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

fn escape(c: char, out: &mut impl fmt::Write) -> fmt::Result {
    match u32::from(c) {
        n @ (0..=0x1f | 0x7f) => write!(out, "\\x{n:02x}"),
        n => write!(out, "\\u{{{n:x}}}"),
    }
}

/// `s` with every character a terminal could act on escaped; borrowed when there is none.
pub fn printable(s: &str) -> Cow<'_, str> {
    if !s.chars().any(is_unsafe) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    // Writing into a String cannot fail.
    let _ = fmt::Write::write_fmt(&mut out, format_args!("{}", Printable(s)));
    Cow::Owned(out)
}

/// [`printable`] as a `Display`, for `format!`/`write!` without an intermediate string.
#[derive(Clone, Copy, Debug)]
pub struct Printable<'a>(pub &'a str);

impl fmt::Display for Printable<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        while let Some((i, c)) = rest.char_indices().find(|&(_, c)| is_unsafe(c)) {
            f.write_str(&rest[..i])?;
            escape(c, f)?;
            rest = &rest[i + c.len_utf8()..];
        }
        f.write_str(rest)
    }
}

/// Text made of several lines (`why`'s story): each line made printable, the newlines kept.
pub fn printable_lines(s: &str) -> Cow<'_, str> {
    if !s.chars().any(|c| c != '\n' && is_unsafe(c)) {
        return Cow::Borrowed(s);
    }
    let lines: Vec<Cow<'_, str>> = s.split('\n').map(printable).collect();
    Cow::Owned(lines.join("\n"))
}

/// Writes one line on stderr, made printable (a path or process name may come from /proc).
/// A closed stderr (`2>&1 | head`) is not an error worth dying for: `eprintln!` would panic
/// there, this drops the line. Use [`crate::note!`].
pub fn note(args: fmt::Arguments<'_>) {
    use std::io::Write;
    let line = args.to_string();
    let _ = writeln!(std::io::stderr().lock(), "{}", Printable(&line));
}

/// `eprintln!` for the daemon's own messages: see [`note`].
#[macro_export]
macro_rules! note {
    ($($arg:tt)*) => {
        $crate::output::printable::note(format_args!($($arg)*))
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_are_shown_not_obeyed() {
        assert_eq!(
            printable("evil\x1b[2J\x1b]52;c;aGk=\x07"),
            "evil\\x1b[2J\\x1b]52;c;aGk=\\x07"
        );
        assert_eq!(
            printable("a\rb\nc\td\0e\x7f"),
            "a\\x0db\\x0ac\\x09d\\x00e\\x7f"
        );
        // C1 CSI and a right-to-left override.
        assert_eq!(printable("x\u{9b}2Jy\u{202e}z"), "x\\u{9b}2Jy\\u{202e}z");
        assert_eq!(format!("<{}>", Printable("\x1b")), "<\\x1b>");
    }

    #[test]
    fn clean_text_is_borrowed_unchanged() {
        for s in [
            "",
            "250 2.0.0 Ok: queued as 1C00C98C129",
            "Grüße ☃ \u{fffd}",
            "a\\x1b",
        ] {
            assert!(matches!(printable(s), Cow::Borrowed(b) if b == s), "{s}");
        }
    }

    #[test]
    fn lines_keep_their_newlines() {
        assert_eq!(printable_lines("a\x1b\nb\r\n"), "a\\x1b\nb\\x0d\n");
        assert!(matches!(printable_lines("a\nb\n"), Cow::Borrowed(_)));
    }

    proptest::proptest! {
        #[test]
        fn no_control_survives(s in ".*") {
            let out = printable(&s);
            proptest::prop_assert!(!out.chars().any(is_unsafe), "{:?}", out);
        }
    }
}
