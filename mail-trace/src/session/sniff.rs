//! Recognising a mail protocol from a connection's first lines, for connections
//! on ports that have no protocol of their own (`--ports 2525`, or captures made
//! on test ports).
//!
//! A mail session may run inside a tunnel another client opened to a proxy: HTTP
//! `CONNECT host:25`, SOCKS4(a) or SOCKS5 (an open proxy relaying spam is a classic relay
//! question). The tunnel's setup on both sides is recognised and left out (never shown:
//! SOCKS5 may carry a password), and the bytes after it are sniffed as on any port; the
//! session then carries the anomaly `tunnel-http-connect`, `tunnel-socks4` or `tunnel-socks5`.

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
    /// The tunnel set up first: its kind and the bytes of its setup (client, server).
    tunnel: Option<(&'static str, usize, usize)>,
}

/// What the first bytes say about a tunnel.
enum Tunnel {
    /// No tunnel (or a refused one): sniff the bytes as they are.
    None,
    NeedMore,
    /// Its kind and the bytes its setup took in each direction (client, server).
    Open(&'static str, usize, usize),
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
        let (cskip, sskip) = match tunnel(&self.client, &self.server) {
            Tunnel::NeedMore if self.client.len() < LIMIT && self.server.len() < LIMIT => {
                return Verdict::NeedMore
            }
            Tunnel::Open(kind, c, s) => {
                self.tunnel = Some((kind, c, s));
                (c, s)
            }
            Tunnel::None | Tunnel::NeedMore => {
                self.tunnel = None;
                (0, 0)
            }
        };
        let (all_server, all_client) = (&self.server[sskip..], &self.client[cskip..]);
        let (server, client) = (first_line(all_server), first_line(all_client));
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
                None if all_client.len() < LIMIT => Verdict::NeedMore,
                None => Verdict::NotMail,
            };
        }
        if let Some(p) = client.and_then(client_says) {
            return Verdict::Mail(p);
        }
        let undecided = |line: Option<&[u8]>, len: usize| line.is_none() && len < LIMIT;
        if undecided(server, all_server.len()) || undecided(client, all_client.len()) {
            Verdict::NeedMore
        } else {
            Verdict::NotMail
        }
    }

    /// The anomaly id of the tunnel the session runs in.
    pub(crate) fn tunnel(&self) -> Option<&'static str> {
        self.tunnel.map(|t| t.0)
    }

    /// The bytes held so far, in arrival order, without a tunnel's setup.
    pub(crate) fn into_chunks(self) -> Vec<(Dir, Vec<u8>, Ts)> {
        let Some((_, mut c, mut s)) = self.tunnel else {
            return self.chunks;
        };
        let mut out = Vec::with_capacity(self.chunks.len());
        for (dir, mut bytes, ts) in self.chunks {
            let skip = match dir {
                Dir::ToServer => &mut c,
                Dir::ToClient => &mut s,
            };
            let n = (*skip).min(bytes.len());
            *skip -= n;
            bytes.drain(..n);
            if !bytes.is_empty() {
                out.push((dir, bytes, ts));
            }
        }
        out
    }
}

fn find(buf: &[u8], pat: &[u8]) -> Option<usize> {
    buf.windows(pat.len()).position(|w| w == pat)
}

/// A tunnel's setup at the start of both directions, once both sides of it are complete.
fn tunnel(client: &[u8], server: &[u8]) -> Tunnel {
    const CONNECT: &[u8] = b"CONNECT ";
    match client.first() {
        None => Tunnel::None,
        Some(b'C') if client.len() < CONNECT.len() && CONNECT.starts_with(client) => {
            Tunnel::NeedMore
        }
        Some(b'C') if client.starts_with(CONNECT) => http_connect(client, server),
        Some(4) => socks4(client, server),
        Some(5) => socks5(client, server),
        Some(_) => Tunnel::None,
    }
}

/// `CONNECT host:port HTTP/1.x` … blank line; `HTTP/1.x 2xx` … blank line.
fn http_connect(client: &[u8], server: &[u8]) -> Tunnel {
    let Some(c) = find(client, b"\r\n\r\n") else {
        return Tunnel::NeedMore;
    };
    if server.len() < 12 {
        return Tunnel::NeedMore;
    }
    if !server.starts_with(b"HTTP/1.") || server[8] != b' ' || server[9] != b'2' {
        return Tunnel::None;
    }
    match find(server, b"\r\n\r\n") {
        Some(s) => Tunnel::Open("tunnel-http-connect", c + 4, s + 4),
        None => Tunnel::NeedMore,
    }
}

/// SOCKS4 CONNECT: 4, 1, port, IPv4, user id, NUL (SOCKS4a: 0.0.0.x, then a host name,
/// NUL); granted: 0, 0x5A and 6 bytes.
fn socks4(client: &[u8], server: &[u8]) -> Tunnel {
    if client.len() < 9 {
        return Tunnel::NeedMore;
    }
    if client[1] != 1 {
        return Tunnel::None;
    }
    let Some(user_end) = client[8..].iter().position(|&b| b == 0).map(|i| 8 + i + 1) else {
        return Tunnel::NeedMore;
    };
    let socks4a = client[4..7] == [0, 0, 0] && client[7] != 0;
    let c = if socks4a {
        match client[user_end..].iter().position(|&b| b == 0) {
            Some(i) => user_end + i + 1,
            None => return Tunnel::NeedMore,
        }
    } else {
        user_end
    };
    match server {
        [0, 0x5A, _, _, _, _, _, _, ..] => Tunnel::Open("tunnel-socks4", c, 8),
        _ if server.len() < 8 => Tunnel::NeedMore,
        _ => Tunnel::None,
    }
}

/// SOCKS5 (RFC 1928): methods, the server's choice (no authentication, or user/password
/// RFC 1929), CONNECT, and its success reply.
fn socks5(client: &[u8], server: &[u8]) -> Tunnel {
    let need = Tunnel::NeedMore;
    let Some(&n) = client.get(1) else { return need };
    let mut c = 2 + usize::from(n);
    let mut s = 2;
    let Some(&method) = server.get(1) else {
        return need;
    };
    if server[0] != 5 {
        return Tunnel::None;
    }
    match method {
        0 => {}
        2 => {
            // 1, user length, user, password length, password; the server's 1, status.
            let Some(&ulen) = client.get(c + 1) else {
                return need;
            };
            let Some(&plen) = client.get(c + 2 + usize::from(ulen)) else {
                return need;
            };
            c += 3 + usize::from(ulen) + usize::from(plen);
            match server.get(s + 1) {
                Some(0) => s += 2,
                Some(_) => return Tunnel::None,
                None => return need,
            }
        }
        _ => return Tunnel::None,
    }
    // The request: 5, CONNECT (1), 0, address type, address, port.
    let (Some(&5), Some(&1), Some(&atyp)) = (client.get(c), client.get(c + 1), client.get(c + 3))
    else {
        return if client.len() < c + 4 {
            need
        } else {
            Tunnel::None
        };
    };
    let addr = |buf: &[u8], at: usize, atyp: u8| match atyp {
        1 => Some(4),
        4 => Some(16),
        3 => buf.get(at + 4).map(|&l| 1 + usize::from(l)),
        _ => None,
    };
    let Some(alen) = addr(client, c, atyp) else {
        return if atyp == 3 { need } else { Tunnel::None };
    };
    c += 4 + alen + 2;
    // The reply: 5, succeeded (0), 0, address type, address, port.
    let (Some(&5), Some(&rep), Some(&ratyp)) =
        (server.get(s), server.get(s + 1), server.get(s + 3))
    else {
        return if server.len() < s + 4 {
            need
        } else {
            Tunnel::None
        };
    };
    if rep != 0 {
        return Tunnel::None;
    }
    let Some(ralen) = addr(server, s, ratyp) else {
        return if ratyp == 3 { need } else { Tunnel::None };
    };
    s += 4 + ralen + 2;
    if client.len() < c || server.len() < s {
        return need;
    }
    Tunnel::Open("tunnel-socks5", c, s)
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

    /// Feeds the steps in order; the verdict, the tunnel and what the dissector would get.
    fn through(steps: &[(Dir, &[u8])]) -> (Option<Proto>, Option<&'static str>, Vec<u8>) {
        let mut sn = Sniffer::default();
        let mut proto = None;
        for (dir, data) in steps {
            for b in data.chunks(3) {
                if let Verdict::Mail(p) = sn.push(*dir, b, 0) {
                    proto = Some(p);
                }
            }
        }
        let tunnel = sn.tunnel();
        let mut seen = Vec::new();
        for (d, bytes, _) in sn.into_chunks() {
            seen.push(if d == Dir::ToServer { b'>' } else { b'<' });
            seen.extend(bytes);
        }
        (proto, tunnel, seen)
    }

    const C: Dir = Dir::ToServer;
    const S: Dir = Dir::ToClient;

    #[test]
    fn smtp_inside_http_connect() {
        let (p, t, seen) = through(&[
            (
                C,
                b"CONNECT mx.example:25 HTTP/1.1\r\nHost: mx.example:25\r\n\r\n",
            ),
            (
                S,
                b"HTTP/1.1 200 Connection established\r\n\r\n220 mx.example ESMTP\r\n",
            ),
            (C, b"EHLO spam\r\n"),
        ]);
        assert_eq!((p, t), (Some(Proto::Smtp), Some("tunnel-http-connect")));
        // The dissector gets the bytes after the setup only (3-byte pieces re-joined here).
        let text = String::from_utf8(seen).unwrap().replace(['<', '>'], "");
        assert_eq!(text, "220 mx.example ESMTP\r\nEHLO spam\r\n");
        // A refused CONNECT is no tunnel, and not mail.
        let (p, t, _) = through(&[
            (C, b"CONNECT mx.example:25 HTTP/1.1\r\n\r\n"),
            (S, b"HTTP/1.1 403 Forbidden\r\n\r\n"),
        ]);
        assert_eq!((p, t), (None, None));
    }

    #[test]
    fn smtp_inside_socks4_and_socks5() {
        let (p, t, seen) = through(&[
            (C, b"\x04\x01\x00\x19\x0a\x63\x00\x02user\x00"),
            (S, b"\x00\x5a\x00\x00\x00\x00\x00\x00"),
            (S, b"220 mx ESMTP\r\n"),
        ]);
        assert_eq!((p, t), (Some(Proto::Smtp), Some("tunnel-socks4")));
        assert_eq!(seen.iter().filter(|&&b| b == 0).count(), 0);
        // SOCKS5 with a user and password (never passed on), to a host name.
        let (p, t, seen) = through(&[
            (C, b"\x05\x01\x02"),
            (S, b"\x05\x02"),
            (C, b"\x01\x01u\x06s3cr3t"),
            (S, b"\x01\x00"),
            (C, b"\x05\x01\x00\x03\x0amx.example\x00\x19"),
            (S, b"\x05\x00\x00\x01\x0a\x63\x00\x02\x00\x19"),
            (S, b"220 mx ESMTP\r\n"),
            (C, b"EHLO x\r\n"),
        ]);
        assert_eq!((p, t), (Some(Proto::Smtp), Some("tunnel-socks5")));
        let text = String::from_utf8(seen).unwrap().replace(['<', '>'], "");
        assert_eq!(text, "220 mx ESMTP\r\nEHLO x\r\n");
        // A refused SOCKS5 CONNECT (host unreachable) is no tunnel.
        let (_, t, _) = through(&[
            (C, b"\x05\x01\x00"),
            (S, b"\x05\x00"),
            (C, b"\x05\x01\x00\x01\x0a\x63\x00\x02\x00\x19"),
            (S, b"\x05\x04\x00\x01\x00\x00\x00\x00\x00\x00"),
        ]);
        assert_eq!(t, None);
    }

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
