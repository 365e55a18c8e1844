//! Mail clients on the root-namespace side: swaks (always under a timeout) and a tiny raw SMTP
//! client for what swaks cannot send (BDAT, BODY=8BITMIME).

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use super::run;

const IO_TIMEOUT: Duration = Duration::from_secs(20);

/// One SMTP reply: its code and every line of it as sent (without CRLF).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub lines: Vec<String>,
}

impl Reply {
    /// The last line, where Postfix puts "Ok: queued as ID".
    pub fn last(&self) -> &str {
        self.lines.last().map(String::as_str).unwrap_or("")
    }

    /// The queue id from "queued as ID".
    pub fn queue_id(&self) -> Option<String> {
        let (_, id) = self.last().split_once("queued as ")?;
        Some(id.trim().to_string())
    }
}

/// What swaks did: its exit code, its transcript, and the server replies it printed.
pub struct SwaksRun {
    pub code: i32,
    pub transcript: String,
    pub replies: Vec<Reply>,
}

impl SwaksRun {
    pub fn codes(&self) -> Vec<u16> {
        self.replies.iter().map(|r| r.code).collect()
    }

    pub fn queue_ids(&self) -> Vec<String> {
        self.replies.iter().filter_map(Reply::queue_id).collect()
    }
}

/// Runs swaks against `server`:`port` with `extra` arguments (from, helo and a 20 s timeout set
/// here), killed after 90 s.
pub fn swaks(server: IpAddr, port: u16, extra: &[&str]) -> SwaksRun {
    let out = run(
        Command::new("swaks")
            .args(["--server", &server.to_string(), "--port", &port.to_string()])
            .args(["--from", "sender@client.test", "--helo", "client.test"])
            .args(["--timeout", "20"])
            .args(extra),
        Duration::from_secs(90),
        "swaks",
    );
    let transcript = format!("{}{}", out.stdout, out.stderr);
    SwaksRun {
        code: out.status.code().unwrap_or(-1),
        replies: swaks_replies(&out.stdout),
        transcript,
    }
}

/// Server lines in a swaks transcript: `<-` in clear, `<~` inside TLS, `<**` for a failure reply.
fn swaks_replies(transcript: &str) -> Vec<Reply> {
    let mut replies = Vec::new();
    let mut lines = Vec::new();
    for line in transcript.lines() {
        let Some(rest) = ["<** ", "<~* ", "<-  ", "<~  "]
            .iter()
            .find_map(|p| line.strip_prefix(p))
        else {
            continue;
        };
        let Some(code) = rest.get(..3).and_then(|c| c.parse::<u16>().ok()) else {
            continue;
        };
        lines.push(rest.to_string());
        if rest.as_bytes().get(3) != Some(&b'-') {
            replies.push(Reply {
                code,
                lines: std::mem::take(&mut lines),
            });
        }
    }
    replies
}

/// A blocking SMTP client over std's TcpStream, every read and write bounded.
pub struct RawSmtp {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    pub local: SocketAddr,
    pub replies: Vec<Reply>,
    /// Every byte written, to compare with what a capture reassembles.
    pub sent: Vec<u8>,
}

impl RawSmtp {
    /// Connects and reads the greeting (kept in `replies`).
    pub fn connect(server: SocketAddr) -> RawSmtp {
        let s = TcpStream::connect_timeout(&server, IO_TIMEOUT)
            .unwrap_or_else(|e| panic!("raw SMTP connect to {server}: {e}"));
        s.set_read_timeout(Some(IO_TIMEOUT)).expect("read timeout");
        s.set_write_timeout(Some(IO_TIMEOUT))
            .expect("write timeout");
        let local = s.local_addr().expect("local addr");
        let mut c = RawSmtp {
            reader: BufReader::new(s.try_clone().expect("clone socket")),
            writer: s,
            local,
            replies: Vec::new(),
            sent: Vec::new(),
        };
        c.read_reply();
        c
    }

    /// Sends `line` + CRLF and reads one reply.
    pub fn cmd(&mut self, line: &str) -> Reply {
        self.send(format!("{line}\r\n").as_bytes());
        self.read_reply()
    }

    /// Writes bytes as they are (for BDAT chunks and message bodies).
    pub fn send(&mut self, bytes: &[u8]) {
        self.sent.extend_from_slice(bytes);
        self.writer
            .write_all(bytes)
            .unwrap_or_else(|e| panic!("raw SMTP write to {:?}: {e}", self.writer.peer_addr()));
    }

    /// Reads one (possibly multi-line) reply.
    pub fn read_reply(&mut self) -> Reply {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            let n = self
                .reader
                .read_line(&mut line)
                .unwrap_or_else(|e| panic!("raw SMTP read (after {lines:?}): {e}"));
            assert!(
                n > 0,
                "raw SMTP: server closed the connection after {lines:?}"
            );
            let line = line.trim_end_matches(['\r', '\n']).to_string();
            let code = line
                .get(..3)
                .and_then(|c| c.parse::<u16>().ok())
                .unwrap_or_else(|| panic!("raw SMTP: not a reply line: {line:?}"));
            let more = line.as_bytes().get(3) == Some(&b'-');
            lines.push(line);
            if !more {
                let r = Reply { code, lines };
                self.replies.push(r.clone());
                return r;
            }
        }
    }

    /// QUIT, read the 221, and wait for the server to close.
    pub fn quit(self) -> Vec<Reply> {
        self.finish().0
    }

    /// Like `quit`, also returning every byte sent.
    pub fn finish(mut self) -> (Vec<Reply>, Vec<u8>) {
        let r = self.cmd("QUIT");
        assert_eq!(r.code, 221, "QUIT answered {r:?}");
        let mut rest = Vec::new();
        let _ = std::io::Read::read_to_end(&mut self.reader, &mut rest);
        (self.replies, self.sent)
    }

    /// A whole plain transaction to `rcpt` (AUTH PLAIN first when `auth` is given), ending with
    /// QUIT; returns the bytes sent and the queue id.
    pub fn send_mail(
        server: SocketAddr,
        auth: Option<(&str, &str)>,
        rcpt: &str,
        body: &[u8],
    ) -> (Vec<u8>, String) {
        use base64::Engine as _;
        let mut c = RawSmtp::connect(server);
        assert_eq!(c.cmd("EHLO client.test").code, 250);
        if let Some((user, pass)) = auth {
            let token =
                base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{pass}"));
            let r = c.cmd(&format!("AUTH PLAIN {token}"));
            assert_eq!(r.code, 235, "AUTH PLAIN to {server}: {r:?}");
        }
        for cmd in [
            "MAIL FROM:<sender@client.test>",
            &format!("RCPT TO:<{rcpt}>"),
        ] {
            let r = c.cmd(cmd);
            assert_eq!(r.code, 250, "{cmd} to {server}: {r:?}");
        }
        assert_eq!(c.cmd("DATA").code, 354);
        c.send(body);
        c.send(b".\r\n");
        let r = c.read_reply();
        let id = r
            .queue_id()
            .unwrap_or_else(|| panic!("end of data at {server}: {r:?}"));
        let (_, sent) = c.finish();
        (sent, id)
    }

    pub fn codes(&self) -> Vec<u16> {
        self.replies.iter().map(|r| r.code).collect()
    }
}
