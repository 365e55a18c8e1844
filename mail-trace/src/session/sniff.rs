//! Recognising a mail protocol from a connection's first lines, for connections
//! on ports that have no protocol of their own (`--ports 2525`, or captures made
//! on test ports).

use crate::flow::Dir;
use crate::proto::Proto;
use crate::time::Ts;

/// Bytes looked at per direction before giving up.
const LIMIT: usize = 4096;

pub(crate) enum Verdict {
    NeedMore,
    NotMail,
    Mail(Proto),
}

/// Holds the first bytes of both directions until one line decides.
#[derive(Default)]
pub(crate) struct Sniffer {
    chunks: Vec<(Dir, Vec<u8>, Ts)>,
    client: Vec<u8>,
    server: Vec<u8>,
}

impl Sniffer {
    pub(crate) fn push(&mut self, dir: Dir, data: &[u8], ts: Ts) -> Verdict {
        let buf = match dir {
            Dir::ToServer => &mut self.client,
            Dir::ToClient => &mut self.server,
        };
        if buf.len() >= LIMIT {
            return Verdict::NotMail;
        }
        let take = data.len().min(LIMIT - buf.len());
        buf.extend_from_slice(&data[..take]);
        self.chunks.push((dir, data.to_vec(), ts));
        let (server, client) = (first_line(&self.server), first_line(&self.client));
        if let Some(p) = server.and_then(server_says) {
            return Verdict::Mail(p);
        }
        if let Some(line) = server {
            // Mail servers speak first: a first server line that is not a mail
            // greeting settles it (FTP also sends USER), except a bare "220 …"
            // banner, which an EHLO/HELO from the client then confirms.
            if !(line.starts_with(b"220 ") || line.starts_with(b"220-")) {
                return Verdict::NotMail;
            }
            return match client {
                Some(c) if client_says(c) == Some(Proto::Smtp) => Verdict::Mail(Proto::Smtp),
                Some(_) => Verdict::NotMail,
                None if self.client.len() < LIMIT => Verdict::NeedMore,
                None => Verdict::NotMail,
            };
        }
        if let Some(p) = client.and_then(client_says) {
            return Verdict::Mail(p);
        }
        let undecided = |line: Option<&[u8]>, len: usize| line.is_none() && len < LIMIT;
        if undecided(server, self.server.len()) || undecided(client, self.client.len()) {
            Verdict::NeedMore
        } else {
            Verdict::NotMail
        }
    }

    /// The bytes held so far, in arrival order.
    pub(crate) fn into_chunks(self) -> Vec<(Dir, Vec<u8>, Ts)> {
        self.chunks
    }
}

fn first_line(buf: &[u8]) -> Option<&[u8]> {
    let nl = buf.iter().position(|&b| b == b'\n')?;
    Some(buf[..nl].strip_suffix(b"\r").unwrap_or(&buf[..nl]))
}

fn server_says(line: &[u8]) -> Option<Proto> {
    let upper = line.to_ascii_uppercase();
    if upper.starts_with(b"+OK") {
        return Some(Proto::Pop3);
    }
    if upper.starts_with(b"* OK") || upper.starts_with(b"* PREAUTH") {
        return Some(Proto::Imap);
    }
    // "220" alone is also FTP's greeting: ask for the word SMTP as well.
    let is_220 = upper.starts_with(b"220 ") || upper.starts_with(b"220-");
    if is_220 && upper.windows(4).any(|w| w == b"SMTP") {
        return Some(Proto::Smtp);
    }
    // Picked up mid-session: a reply with an RFC 3463 enhanced code is SMTP only.
    let enhanced = |l: &[u8]| {
        l.len() > 9
            && matches!(l[0], b'2' | b'4' | b'5')
            && l[1].is_ascii_digit()
            && l[2].is_ascii_digit()
            && matches!(l[3], b' ' | b'-')
            && l[4] == l[0]
            && l[5] == b'.'
    };
    enhanced(&upper).then_some(Proto::Smtp)
}

fn client_says(line: &[u8]) -> Option<Proto> {
    let upper = line.to_ascii_uppercase();
    let smtp: [&[u8]; 4] = [b"EHLO ", b"HELO ", b"MAIL FROM:", b"RCPT TO:"];
    if smtp.iter().any(|v| upper.starts_with(v)) || upper == b"EHLO" || upper == b"HELO" {
        return Some(Proto::Smtp);
    }
    let pop3: [&[u8]; 3] = [b"CAPA", b"USER ", b"APOP "];
    if pop3.iter().any(|v| upper.starts_with(v)) {
        return Some(Proto::Pop3);
    }
    // IMAP: "<tag> <command>" with one of the commands a client opens with.
    let mut words = upper.split(|&b| b == b' ');
    let (_tag, cmd) = (words.next()?, words.next()?);
    let imap: [&[u8]; 5] = [b"CAPABILITY", b"LOGIN", b"STARTTLS", b"AUTHENTICATE", b"ID"];
    imap.contains(&cmd).then_some(Proto::Imap)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(dir: Dir, data: &[u8]) -> Option<Proto> {
        match Sniffer::default().push(dir, data, 0) {
            Verdict::Mail(p) => Some(p),
            Verdict::NeedMore => None,
            Verdict::NotMail => None,
        }
    }

    #[test]
    fn recognises_each_protocol_from_either_side() {
        assert_eq!(
            verdict(Dir::ToClient, b"220 mx.test ESMTP Postfix\r\n"),
            Some(Proto::Smtp)
        );
        assert_eq!(
            verdict(Dir::ToServer, b"EHLO client\r\n"),
            Some(Proto::Smtp)
        );
        assert_eq!(
            verdict(Dir::ToClient, b"+OK Dovecot ready.\r\n"),
            Some(Proto::Pop3)
        );
        assert_eq!(
            verdict(Dir::ToClient, b"* OK [CAPABILITY IMAP4rev1] hi\r\n"),
            Some(Proto::Imap)
        );
        assert_eq!(
            verdict(Dir::ToServer, b"a1 LOGIN bob pw\r\n"),
            Some(Proto::Imap)
        );
    }

    #[test]
    fn ftp_and_http_are_not_mail() {
        let mut s = Sniffer::default();
        assert!(matches!(
            s.push(Dir::ToClient, b"421 Service not available\r\n", 0),
            Verdict::NotMail
        ));
        assert_eq!(
            verdict(Dir::ToClient, b"250 2.1.5 Ok\r\n"),
            Some(Proto::Smtp)
        );
        // A banner without the word SMTP needs the client's EHLO to be believed.
        let mut b = Sniffer::default();
        assert!(matches!(
            b.push(Dir::ToClient, b"220 Greetings\r\n", 0),
            Verdict::NeedMore
        ));
        assert!(matches!(
            b.push(Dir::ToServer, b"EHLO x\r\n", 1),
            Verdict::Mail(Proto::Smtp)
        ));
        let mut f = Sniffer::default();
        assert!(matches!(
            f.push(Dir::ToClient, b"220 Welcome\r\n", 0),
            Verdict::NeedMore
        ));
        assert!(matches!(
            f.push(Dir::ToServer, b"USER ftp\r\n", 1),
            Verdict::NotMail
        ));
        assert_eq!(verdict(Dir::ToServer, b"HELO\r\n"), Some(Proto::Smtp));
        let mut h = Sniffer::default();
        assert!(matches!(
            h.push(Dir::ToServer, b"GET / HTTP/1.1\r\n", 0),
            Verdict::NeedMore
        ));
        assert!(matches!(
            h.push(Dir::ToClient, b"HTTP/1.1 200 OK\r\n", 1),
            Verdict::NotMail
        ));
    }

    #[test]
    fn holds_bytes_in_arrival_order() {
        let mut s = Sniffer::default();
        assert!(matches!(
            s.push(Dir::ToClient, b"220 a SM", 5),
            Verdict::NeedMore
        ));
        assert!(matches!(
            s.push(Dir::ToClient, b"TP\r\n", 6),
            Verdict::Mail(Proto::Smtp)
        ));
        let chunks = s.into_chunks();
        assert_eq!(chunks.len(), 2);
        assert_eq!(chunks[1], (Dir::ToClient, b"TP\r\n".to_vec(), 6));
    }
}
