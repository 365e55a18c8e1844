//! SASL exchanges as seen on the wire (SMTP AUTH, POP3 AUTH, IMAP AUTHENTICATE):
//! which mechanism, which user, and how to show the lines without their secrets.
//!
//! The protocol dissector owns the framing (`334 …` / `+ …` challenges, one
//! base64 line per client response); this module only looks at the payloads.
//! It keeps the user name and nothing else in the record: passwords, tokens and
//! digests never reach it. While an exchange is open it remembers the client's
//! responses (as sent and decoded) only to redact a server reply that echoes one
//! ([`SaslExchange::redact_echo`], e.g. `535 … bad response: cGFzcw==`); they are
//! forgotten at the exchange's final reply ([`SaslExchange::finish`]).

use base64::Engine as _;

/// What replaces a secret in a command argument.
pub const REDACTED: &str = "<redacted>";

/// The verb of a client line that answers a SASL challenge (it has no verb of
/// its own on the wire).
pub const RESPONSE_VERB: &str = "AUTH-DATA";

/// Longest user name kept (a longer one is cut, never an error).
const MAX_USER: usize = 256;

/// One SASL exchange: from the AUTH command to its final reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SaslExchange {
    /// Mechanism, upper-cased ("PLAIN", "LOGIN", "CRAM-MD5", "XOAUTH2", …).
    pub mechanism: String,
    /// User name, when the mechanism carries it and it was seen.
    pub user: Option<String>,
    /// Client responses seen so far (the initial response counts).
    responses: u32,
    /// What a reply must not echo, until [`Self::finish`]: each response as sent and the
    /// secret parts decoded from it.
    secrets: EchoGuard,
}

/// Secrets a server reply must not echo (a password, a SASL response), kept from the command
/// that sent them to its final reply. Nothing of it reaches a record.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EchoGuard(Vec<String>);

impl EchoGuard {
    pub fn remember(&mut self, secret: &[u8]) {
        let s = String::from_utf8_lossy(secret);
        let s = s.trim();
        if s.len() >= MIN_SECRET && self.0.len() < MAX_SECRETS && !self.0.iter().any(|x| x == s) {
            self.0.push(s.to_string());
        }
    }

    /// `text` with every remembered secret replaced by [`REDACTED`]; None when it echoes none.
    pub fn redact(&self, text: &str) -> Option<String> {
        let mut out: Option<String> = None;
        for s in &self.0 {
            let cur = out.as_deref().unwrap_or(text);
            if cur.contains(s.as_str()) {
                out = Some(cur.replace(s.as_str(), REDACTED));
            }
        }
        out
    }

    pub fn clear(&mut self) {
        self.0 = Vec::new();
    }
}

/// Secrets remembered for [`EchoGuard`] (a mechanism needs two or three).
const MAX_SECRETS: usize = 8;
/// Shorter strings are not looked for in replies: "ok" would redact half of every reply.
const MIN_SECRET: usize = 4;

impl SaslExchange {
    /// Starts an exchange for `mechanism` (any case).
    pub fn new(mechanism: &str) -> Self {
        Self {
            mechanism: mechanism.to_ascii_uppercase(),
            user: None,
            responses: 0,
            secrets: EchoGuard::default(),
        }
    }

    fn remember(&mut self, secret: &[u8]) {
        self.secrets.remember(secret);
    }

    /// `text` with every remembered response (or secret part of one) replaced by
    /// [`REDACTED`]; None when it echoes none.
    pub fn redact_echo(&self, text: &str) -> Option<String> {
        self.secrets.redact(text)
    }

    /// The exchange got its final reply: what it remembered for [`Self::redact_echo`] goes.
    pub fn finish(&mut self) {
        self.secrets.clear();
    }

    /// A client response (the initial response or a line after a challenge),
    /// base64 as sent. Extracts the user name where the mechanism carries one.
    pub fn client_response(&mut self, b64: &str) {
        let index = self.responses;
        self.responses = self.responses.saturating_add(1);
        let b64 = b64.trim();
        if b64 == "*" || b64 == "=" || b64.is_empty() {
            return;
        }
        self.remember(b64.as_bytes());
        let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(b64) else {
            return;
        };
        // The decoded parts too (a server may echo "bad password 's3cret'"), the user
        // name excepted: it is shown anyway.
        let fields: Vec<&[u8]> = raw.split(|&b| b == 0 || b == 1).collect();
        match (self.mechanism.as_str(), &fields[..]) {
            ("LOGIN", _) if index == 0 => {}
            ("PLAIN", [_, _, password]) => self.remember(password),
            _ => {
                for f in fields.iter().filter(|f| !f.is_empty()) {
                    self.remember(f);
                }
            }
        }
        let user = match self.mechanism.as_str() {
            // authzid NUL authcid NUL passwd: the authentication identity is the user. Exactly
            // two NULs, else nothing: in a malformed `user NUL pass` the second field is the
            // password, and it must not be shown as the user.
            "PLAIN" => {
                let fields: Vec<&[u8]> = raw.splitn(4, |&b| b == 0).collect();
                match fields[..] {
                    [_, authcid, _] if !authcid.is_empty() => Some(authcid.to_vec()),
                    [authzid, _, _] => Some(authzid.to_vec()),
                    _ => None,
                }
            }
            // The first response is the user name, the second the password.
            "LOGIN" if index == 0 => Some(raw),
            // "user hex-digest".
            "CRAM-MD5" => raw.split(|&b| b == b' ').next().map(<[u8]>::to_vec),
            // "user=" NAME ^A "auth=Bearer " TOKEN ^A ^A
            "XOAUTH2" => raw
                .split(|&b| b == 1)
                .find_map(|f| f.strip_prefix(b"user=").map(<[u8]>::to_vec)),
            // GS2 header "n,a=" NAME "," ^A …
            "OAUTHBEARER" => raw
                .split(|&b| b == b',' || b == 1)
                .find_map(|f| f.strip_prefix(b"a=").map(<[u8]>::to_vec)),
            _ => None,
        };
        if let Some(user) = user.filter(|u| !u.is_empty()) {
            let mut s = String::from_utf8_lossy(&user).into_owned();
            truncate(&mut s, MAX_USER);
            self.user = Some(s);
        }
    }

    /// How the AUTH command's arguments (`MECH [initial-response]`) are shown.
    pub fn command_arg(mechanism: &str, initial: Option<&str>, show_secrets: bool) -> String {
        match initial {
            Some(ir) if show_secrets => format!("{mechanism} {ir}"),
            Some(_) => format!("{mechanism} {REDACTED}"),
            None => mechanism.to_string(),
        }
    }

    /// How a client response line is shown.
    pub fn response_arg(line: &str, show_secrets: bool) -> String {
        if show_secrets || line.trim() == "*" {
            line.to_string()
        } else {
            REDACTED.to_string()
        }
    }
}

/// Cuts `s` to at most `max` bytes on a character boundary.
pub(crate) fn truncate(s: &mut String, max: usize) {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn plain_user_is_the_authcid() {
        let mut x = SaslExchange::new("plain");
        x.client_response(&b64(b"\0alice@example.com\0s3cret"));
        assert_eq!(x.mechanism, "PLAIN");
        assert_eq!(x.user.as_deref(), Some("alice@example.com"));
        let mut x = SaslExchange::new("PLAIN");
        x.client_response(&b64(b"admin\0bob\0pw"));
        assert_eq!(x.user.as_deref(), Some("bob"));
    }

    #[test]
    fn malformed_plain_never_shows_the_password_as_the_user() {
        for raw in [
            &b"user\0s3cret"[..],
            b"\0s3cret",
            b"s3cret",
            b"a\0b\0s3cret\0more",
        ] {
            let mut x = SaslExchange::new("PLAIN");
            x.client_response(&b64(raw));
            assert_eq!(x.user, None, "{raw:?}");
        }
        // An empty authcid falls back to the authzid, never to the password.
        let mut x = SaslExchange::new("PLAIN");
        x.client_response(&b64(b"zid\0\0s3cret"));
        assert_eq!(x.user.as_deref(), Some("zid"));
    }

    #[test]
    fn login_user_is_the_first_response_only() {
        let mut x = SaslExchange::new("LOGIN");
        x.client_response(&b64(b"carol"));
        x.client_response(&b64(b"password"));
        assert_eq!(x.user.as_deref(), Some("carol"));
    }

    #[test]
    fn cram_md5_xoauth2_oauthbearer_users() {
        let mut x = SaslExchange::new("CRAM-MD5");
        x.client_response(&b64(b"dave b913a602c7eda7a495b4e6e7334d3890"));
        assert_eq!(x.user.as_deref(), Some("dave"));
        let mut x = SaslExchange::new("XOAUTH2");
        x.client_response(&b64(
            b"user=erin@example.com\x01auth=Bearer ya29.tok\x01\x01",
        ));
        assert_eq!(x.user.as_deref(), Some("erin@example.com"));
        let mut x = SaslExchange::new("OAUTHBEARER");
        x.client_response(&b64(
            b"n,a=frank@example.com,\x01host=mx\x01auth=Bearer t\x01\x01",
        ));
        assert_eq!(x.user.as_deref(), Some("frank@example.com"));
    }

    #[test]
    fn garbage_and_cancel_keep_no_user() {
        let mut x = SaslExchange::new("PLAIN");
        x.client_response("*");
        x.client_response("!!!not base64");
        x.client_response(&b64(b"no-nul-here"));
        assert_eq!(x.user, None);
        let mut x = SaslExchange::new("GSSAPI");
        x.client_response(&b64(b"opaque"));
        assert_eq!(x.user, None);
    }

    #[test]
    fn a_reply_echoing_a_response_is_redacted_until_the_exchange_ends() {
        let mut x = SaslExchange::new("PLAIN");
        let ir = b64(b"\0alice\0s3cret-pw");
        x.client_response(&ir);
        assert_eq!(
            x.redact_echo(&format!("5.7.8 Error: bad response {ir}"))
                .as_deref(),
            Some("5.7.8 Error: bad response <redacted>")
        );
        assert_eq!(
            x.redact_echo("Error: wrong password s3cret-pw for alice")
                .as_deref(),
            Some("Error: wrong password <redacted> for alice")
        );
        assert_eq!(x.redact_echo("2.7.0 Authentication successful"), None);
        x.finish();
        assert_eq!(x.redact_echo(&format!("echo {ir}")), None);
        // LOGIN: the user (first response) is not a secret, the password is.
        let mut x = SaslExchange::new("LOGIN");
        x.client_response(&b64(b"carol"));
        x.client_response(&b64(b"hunter22"));
        assert_eq!(x.redact_echo("carol: bad"), None);
        assert_eq!(
            x.redact_echo("no hunter22").as_deref(),
            Some("no <redacted>")
        );
    }

    #[test]
    fn args_are_redacted_unless_allowed() {
        assert_eq!(
            SaslExchange::command_arg("PLAIN", Some("AGFsaWNlAHB3"), false),
            "PLAIN <redacted>"
        );
        assert_eq!(
            SaslExchange::command_arg("PLAIN", Some("AGFsaWNlAHB3"), true),
            "PLAIN AGFsaWNlAHB3"
        );
        assert_eq!(SaslExchange::command_arg("LOGIN", None, false), "LOGIN");
        assert_eq!(SaslExchange::response_arg("cGFzcw==", false), REDACTED);
        assert_eq!(SaslExchange::response_arg("*", false), "*");
        assert_eq!(SaslExchange::response_arg("cGFzcw==", true), "cGFzcw==");
    }
}
