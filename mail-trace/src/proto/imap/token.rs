//! Arguments of one IMAP command, after framing: the command's lines joined,
//! each literal left as its `{n}` marker (its bytes are counted elsewhere).

/// One argument.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tok<'a> {
    Atom(&'a [u8]),
    /// A quoted string, escapes removed.
    Quoted(Vec<u8>),
    /// The n-th literal of the command (0-based).
    Literal(usize),
    /// A parenthesised or bracketed list, kept raw.
    List(&'a [u8]),
}

/// `{123}` or `{123+}` (RFC 7888) at the end of `line`: its length and whether
/// it is non-synchronising. `None` also for a length that overflows `u64`.
pub fn trailing_literal(line: &[u8]) -> Option<(u64, bool)> {
    let inner = line.strip_suffix(b"}")?;
    let open = inner.iter().rposition(|&b| b == b'{')?;
    let mut digits = &inner[open + 1..];
    let non_sync = digits.last() == Some(&b'+');
    if non_sync {
        digits = &digits[..digits.len() - 1];
    }
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut n: u64 = 0;
    for &d in digits {
        n = n.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    Some((n, non_sync))
}

/// Splits arguments; at most `max` of them (the rest is ignored).
pub fn tokens(text: &[u8], max: usize) -> Vec<Tok<'_>> {
    let mut out = Vec::new();
    let mut i = 0;
    let mut literal = 0;
    while i < text.len() && out.len() < max {
        match text[i] {
            b' ' => i += 1,
            b'"' => {
                let mut s = Vec::new();
                i += 1;
                while i < text.len() && text[i] != b'"' {
                    if text[i] == b'\\' && i + 1 < text.len() {
                        i += 1;
                    }
                    s.push(text[i]);
                    i += 1;
                }
                i += 1;
                out.push(Tok::Quoted(s));
            }
            b'(' | b'[' => {
                let start = i;
                let mut depth = 0usize;
                let mut quoted = false;
                while i < text.len() {
                    let b = text[i];
                    if quoted {
                        if b == b'\\' {
                            i += 1;
                        } else if b == b'"' {
                            quoted = false;
                        }
                    } else if b == b'"' {
                        quoted = true;
                    } else if b == b'(' || b == b'[' {
                        depth += 1;
                    } else if b == b'{' && trailing_literal(literal_at(&text[i..])).is_some() {
                        literal += 1;
                    } else if b == b')' || b == b']' {
                        depth = depth.saturating_sub(1);
                        if depth == 0 {
                            i += 1;
                            break;
                        }
                    }
                    i += 1;
                }
                out.push(Tok::List(&text[start..i.min(text.len())]));
            }
            _ => {
                let start = i;
                while i < text.len() && text[i] != b' ' {
                    i += 1;
                }
                let word = &text[start..i];
                if trailing_literal(word).is_some() && word.first() == Some(&b'{') {
                    out.push(Tok::Literal(literal));
                    literal += 1;
                } else {
                    out.push(Tok::Atom(word));
                }
            }
        }
    }
    out
}

/// The `{…}` starting at `s`, if it closes before a space.
fn literal_at(s: &[u8]) -> &[u8] {
    match s.iter().position(|&b| b == b'}') {
        Some(end) if !s[..end].contains(&b' ') => &s[..=end],
        _ => b"",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_markers() {
        assert_eq!(trailing_literal(b"a LOGIN {5}"), Some((5, false)));
        assert_eq!(trailing_literal(b"a APPEND x {310+}"), Some((310, true)));
        assert_eq!(trailing_literal(b"* 1 FETCH (BODY[] {0}"), Some((0, false)));
        assert_eq!(trailing_literal(b"a LOGIN {}"), None);
        assert_eq!(trailing_literal(b"a LOGIN {5a}"), None);
        assert_eq!(trailing_literal(b"a OK done"), None);
        assert_eq!(
            trailing_literal(b"{18446744073709551615}"),
            Some((u64::MAX, false))
        );
        assert_eq!(trailing_literal(b"{18446744073709551616}"), None);
    }

    #[test]
    fn splits_atoms_quoted_literals_and_lists() {
        let t = tokens(br#"{5} "my \"pw\"" (\Seen {3}) [x y] {7+} end"#, 16);
        assert_eq!(
            t,
            vec![
                Tok::Literal(0),
                Tok::Quoted(br#"my "pw""#.to_vec()),
                Tok::List(br"(\Seen {3})"),
                Tok::List(b"[x y]"),
                Tok::Literal(2),
                Tok::Atom(b"end"),
            ]
        );
        assert_eq!(tokens(b"a b c", 2).len(), 2);
        // Unterminated input never reads past the end.
        assert_eq!(tokens(b"\"abc", 4), vec![Tok::Quoted(b"abc".to_vec())]);
        assert_eq!(tokens(b"((x", 4), vec![Tok::List(b"((x")]);
    }
}
