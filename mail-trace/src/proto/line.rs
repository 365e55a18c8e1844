//! Line framing shared by the text protocols: CRLF (or bare LF) terminated lines,
//! capped in length so a hostile peer cannot make us buffer without bound.

/// Longest line kept whole. RFC 5321 allows 512 octets for commands and 1000 for
/// text lines; IMAP lines can be longer, so the cap is generous but finite.
pub const MAX_LINE: usize = 8192;

/// One line as it came off the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line<'a> {
    /// The line without its terminator (at most [`MAX_LINE`] bytes).
    pub text: &'a [u8],
    /// The line ended in a bare LF instead of CRLF.
    pub bare_lf: bool,
    /// The line was longer than [`MAX_LINE`]; `text` holds its first bytes.
    pub overlong: bool,
}

/// Accumulates bytes and yields complete lines.
#[derive(Debug, Default)]
pub struct LineBuffer {
    buf: Vec<u8>,
    /// Bytes of the current overlong line already dropped.
    dropping: bool,
}

impl LineBuffer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes buffered waiting for a line end.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Forgets a partial line (after a gap: the bytes before it can't be trusted).
    pub fn reset(&mut self) {
        self.buf.clear();
        self.dropping = false;
    }

    /// Feeds `data`, calling `on_line` for every complete line. Returns how many
    /// bytes of `data` were consumed: always all of them, unless `on_line` returns
    /// `false` to stop (e.g. the protocol switches to a byte-counted mode), in
    /// which case the bytes after that line are left for the caller.
    pub fn feed(&mut self, data: &[u8], mut on_line: impl FnMut(Line<'_>) -> bool) -> usize {
        let mut pos = 0;
        while pos < data.len() {
            let rest = &data[pos..];
            match rest.iter().position(|&b| b == b'\n') {
                Some(nl) => {
                    let consumed = nl + 1;
                    let keep = if self.dropping {
                        0
                    } else {
                        nl.min(MAX_LINE.saturating_sub(self.buf.len()))
                    };
                    self.buf.extend_from_slice(&rest[..keep]);
                    let overlong = self.dropping || keep < nl;
                    let mut text: &[u8] = &self.buf;
                    let mut bare_lf = true;
                    if text.last() == Some(&b'\r') {
                        text = &text[..text.len() - 1];
                        bare_lf = false;
                    }
                    let go_on = on_line(Line {
                        text,
                        bare_lf,
                        overlong,
                    });
                    self.buf.clear();
                    self.dropping = false;
                    pos += consumed;
                    if !go_on {
                        return pos;
                    }
                }
                None => {
                    if !self.dropping {
                        let room = MAX_LINE.saturating_sub(self.buf.len());
                        let take = rest.len().min(room);
                        self.buf.extend_from_slice(&rest[..take]);
                        if take < rest.len() {
                            self.dropping = true;
                        }
                    }
                    pos = data.len();
                }
            }
        }
        pos
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(chunks: &[&[u8]]) -> Vec<(Vec<u8>, bool, bool)> {
        let mut lb = LineBuffer::new();
        let mut out = Vec::new();
        for c in chunks {
            lb.feed(c, |l| {
                out.push((l.text.to_vec(), l.bare_lf, l.overlong));
                true
            });
        }
        out
    }

    #[test]
    fn splits_crlf_and_bare_lf_across_chunks() {
        let got = lines(&[b"EHLO a", b".example\r", b"\nMAIL FROM:<>\nQU", b"IT\r\n"]);
        assert_eq!(
            got,
            vec![
                (b"EHLO a.example".to_vec(), false, false),
                (b"MAIL FROM:<>".to_vec(), true, false),
                (b"QUIT".to_vec(), false, false),
            ]
        );
    }

    #[test]
    fn caps_overlong_lines_and_recovers() {
        let long = vec![b'x'; MAX_LINE + 100];
        let got = lines(&[&long[..5000], &long[5000..], b"\r\nNOOP\r\n"]);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].0.len(), MAX_LINE);
        assert!(got[0].2);
        assert_eq!(got[1], (b"NOOP".to_vec(), false, false));
    }

    #[test]
    fn stop_leaves_the_rest_to_the_caller() {
        let mut lb = LineBuffer::new();
        let data = b"BDAT 3 LAST\r\nabcQUIT\r\n";
        let used = lb.feed(data, |_| false);
        assert_eq!(&data[used..], b"abcQUIT\r\n");
    }
}
