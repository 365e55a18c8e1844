//! Modified UTF-7 mailbox names (RFC 3501 §5.1.3): `&` starts a run of
//! UTF-16BE in base64 with `,` for `/`, `-` ends it, `&-` is a literal `&`.

/// Decodes a mailbox name. Names with non-ASCII bytes are UTF-8 already
/// (RFC 9051 / UTF8=ACCEPT) and pass through; a malformed run gives `None`.
pub fn decode(name: &[u8]) -> Option<String> {
    if !name.is_ascii() {
        return std::str::from_utf8(name).ok().map(str::to_string);
    }
    let mut out = String::with_capacity(name.len());
    let mut i = 0;
    while i < name.len() {
        let b = name[i];
        if b != b'&' {
            out.push(char::from(b));
            i += 1;
            continue;
        }
        let run_len = name[i + 1..].iter().position(|&c| c == b'-')?;
        let run = &name[i + 1..i + 1 + run_len];
        i += run_len + 2;
        if run.is_empty() {
            out.push('&');
            continue;
        }
        let mut bits: u32 = 0;
        let mut nbits = 0;
        let mut units = Vec::with_capacity(run.len() * 6 / 16);
        for &c in run {
            let v = match c {
                b'A'..=b'Z' => c - b'A',
                b'a'..=b'z' => c - b'a' + 26,
                b'0'..=b'9' => c - b'0' + 52,
                b'+' => 62,
                b',' => 63,
                _ => return None,
            };
            bits = (bits << 6) | u32::from(v);
            nbits += 6;
            if nbits >= 16 {
                nbits -= 16;
                units.push((bits >> nbits) as u16);
                bits &= (1 << nbits) - 1;
            }
        }
        // Leftover bits are padding and must be zero (RFC 2152).
        if bits != 0 {
            return None;
        }
        out.push_str(&String::from_utf16(&units).ok()?);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::decode;

    #[test]
    fn rfc3501_examples() {
        assert_eq!(
            decode(b"~peter/mail/&U,BTFw-/&ZeVnLIqe-").as_deref(),
            Some("~peter/mail/台北/日本語")
        );
        assert_eq!(decode(b"Entw&APw-rfe").as_deref(), Some("Entwürfe"));
        assert_eq!(decode(b"Tom &- Jerry").as_deref(), Some("Tom & Jerry"));
        assert_eq!(decode(b"INBOX").as_deref(), Some("INBOX"));
        // Astral plane: a surrogate pair.
        assert_eq!(decode(b"&2D3eAA-").as_deref(), Some("😀"));
    }

    #[test]
    fn utf8_names_pass_through() {
        assert_eq!(decode("Entwürfe".as_bytes()).as_deref(), Some("Entwürfe"));
    }

    #[test]
    fn malformed_runs_are_rejected() {
        assert_eq!(decode(b"&U,BTFw"), None); // unterminated
        assert_eq!(decode(b"&U!-"), None); // not base64
        assert_eq!(decode(b"&2D0-"), None); // lone surrogate
        assert_eq!(decode(b"&AB-"), None); // non-zero padding bits
    }
}
