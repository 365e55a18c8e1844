//! The clear part of a TLS handshake: the ClientHello's server name (SNI) and
//! the ServerHello's version and cipher suite. Sans-I/O: feed each direction's
//! bytes, read [`TlsHellos::info`].
//!
//! Only the first handshake message of each direction is wanted, so only the
//! records that carry it are buffered (at most [`MAX_HELLO`] bytes per
//! direction); a hello split over several records or TCP segments is joined.
//! After it only record headers are read (and a clear alert's two bytes), for one
//! question: did the handshake fail? A fatal alert sent in clear, or a TLS 1.3 client whose
//! first record after its hello is an encrypted alert (too short to be its Finished), means
//! it did: the hellos' version and cipher were then never in use and are not reported.
//! Anything that is not TLS is ignored: this never fails, it just learns nothing.

use crate::flow::Dir;

/// Largest hello kept (a post-quantum ClientHello is ~2 KiB; 16 KiB is one record).
pub const MAX_HELLO: usize = 32 * 1024;

const CONTENT_CHANGE_CIPHER_SPEC: u8 = 20;
const CONTENT_ALERT: u8 = 21;
const CONTENT_HANDSHAKE: u8 = 22;
const CONTENT_APPLICATION_DATA: u8 = 23;
const ALERT_FATAL: u8 = 2;
/// A TLS 1.3 alert as an encrypted record: 2 bytes, the inner content type, a 16-byte tag.
/// A Finished is at least 32 + 1 + 16.
const ENCRYPTED_ALERT_LEN: u16 = 19;
const CLIENT_HELLO: u8 = 1;
const SERVER_HELLO: u8 = 2;
const EXT_SERVER_NAME: u16 = 0;
const EXT_SUPPORTED_VERSIONS: u16 = 43;
const MAX_SNI: usize = 255;
/// Longest incomplete ClientHello searched for a server name.
const MAX_PARTIAL: usize = 4096;

/// What the hellos revealed.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct TlsInfo {
    /// Server name from the ClientHello.
    pub sni: Option<String>,
    /// Negotiated version, e.g. "TLS 1.3" (from supported_versions when present).
    pub version: Option<String>,
    /// Negotiated cipher suite: its IANA name for common suites, else "0xC0FF".
    pub cipher: Option<String>,
    /// Why the handshake failed (then `version` and `cipher` are null: nothing was in use).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed: Option<String>,
}

/// One direction's records after its hello: headers only, but a clear alert's body.
#[derive(Debug, Default)]
struct After {
    header: [u8; 5],
    have: usize,
    body_left: usize,
    /// The body bytes of a clear alert record being read.
    alert: [u8; 2],
    /// A ChangeCipherSpec went by: later alerts are encrypted.
    ccs: bool,
    /// The first record after the hello other than a ChangeCipherSpec: (type, length).
    first: Option<(u8, u16)>,
    /// The description of a fatal alert sent in clear.
    fatal: Option<u8>,
    /// Bytes are missing or not TLS: nothing more to learn.
    lost: bool,
}

impl After {
    fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() && !self.lost && self.fatal.is_none() {
            if self.have < 5 {
                let n = (5 - self.have).min(data.len());
                self.header[self.have..self.have + n].copy_from_slice(&data[..n]);
                self.have += n;
                data = &data[n..];
                if self.have < 5 {
                    return;
                }
                let [ctype, major, _, hi, lo] = self.header;
                let len = u16::from_be_bytes([hi, lo]);
                if major != 3 || !(CONTENT_CHANGE_CIPHER_SPEC..=24).contains(&ctype) {
                    self.lost = true;
                    return;
                }
                if ctype == CONTENT_CHANGE_CIPHER_SPEC {
                    self.ccs = true;
                } else if self.first.is_none() {
                    self.first = Some((ctype, len));
                }
                self.body_left = usize::from(len);
                self.alert = [0xff; 2];
            } else {
                let n = self.body_left.min(data.len());
                let len = usize::from(u16::from_be_bytes([self.header[3], self.header[4]]));
                let at = len - self.body_left;
                for (i, &b) in data[..n].iter().enumerate() {
                    if let Some(slot) = self.alert.get_mut(at + i) {
                        *slot = b;
                    }
                }
                self.body_left -= n;
                data = &data[n..];
            }
            if self.have == 5 && self.body_left == 0 {
                let clear_alert = self.header[0] == CONTENT_ALERT && !self.ccs;
                if clear_alert && self.header[3..] == [0, 2] && self.alert[0] == ALERT_FATAL {
                    self.fatal = Some(self.alert[1]);
                }
                self.have = 0;
            }
        }
    }
}

/// Where one direction's hello parsing stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HelloState {
    /// Waiting for more bytes.
    Pending,
    /// The hello was parsed.
    Done,
    /// Not a TLS handshake (or a malformed/oversized hello): nothing more to learn.
    Failed,
}

/// One direction: TLS records in, the first handshake message out.
#[derive(Debug)]
struct Direction {
    state: HelloState,
    /// Bytes of the record being read (header included).
    record: Vec<u8>,
    /// Handshake bytes joined across records.
    handshake: Vec<u8>,
    after: After,
}

impl Direction {
    fn new() -> Self {
        Self {
            state: HelloState::Pending,
            record: Vec::new(),
            handshake: Vec::new(),
            after: After::default(),
        }
    }

    /// Feeds bytes; returns the complete first handshake message once available.
    fn feed(&mut self, mut data: &[u8]) -> Option<Vec<u8>> {
        if self.state != HelloState::Pending {
            self.after.feed(data);
            return None;
        }
        while self.state == HelloState::Pending && !data.is_empty() {
            // Read the 5-byte header, then the body it announces.
            let want = if self.record.len() < 5 {
                5 - self.record.len()
            } else {
                let len = usize::from(u16::from_be_bytes([self.record[3], self.record[4]]));
                5 + len - self.record.len()
            };
            let take = want.min(data.len());
            self.record.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.record.len() == 5 {
                let (ctype, major) = (self.record[0], self.record[1]);
                let len = usize::from(u16::from_be_bytes([self.record[3], self.record[4]]));
                if ctype == CONTENT_ALERT && major == 3 && self.handshake.is_empty() {
                    // An alert instead of a hello (a ClientHello the server refused).
                    let header = std::mem::take(&mut self.record);
                    self.fail();
                    self.after.lost = false;
                    self.after.feed(&header);
                    self.after.feed(data);
                    return None;
                }
                if ctype != CONTENT_HANDSHAKE || major != 3 || len == 0 || len > 16384 + 2048 {
                    self.fail();
                    return None;
                }
                continue;
            }
            // Refuse an oversized hello as soon as its length is visible.
            if self.handshake.is_empty() && self.record.len() >= 9 {
                let len = (usize::from(self.record[6]) << 16)
                    | (usize::from(self.record[7]) << 8)
                    | usize::from(self.record[8]);
                if 4 + len > MAX_HELLO {
                    self.fail();
                    return None;
                }
            }
            if take < want {
                return None;
            }
            let body_len = self.record.len() - 5;
            if self.handshake.len() + body_len > MAX_HELLO {
                self.fail();
                return None;
            }
            self.handshake.extend_from_slice(&self.record[5..]);
            self.record.clear();
            if self.handshake.len() >= 4 {
                let len = (usize::from(self.handshake[1]) << 16)
                    | (usize::from(self.handshake[2]) << 8)
                    | usize::from(self.handshake[3]);
                if 4 + len > MAX_HELLO {
                    self.fail();
                    return None;
                }
                if self.handshake.len() >= 4 + len {
                    self.state = HelloState::Done;
                    let mut msg = std::mem::take(&mut self.handshake);
                    // The hello's last record was read whole: what follows in this
                    // segment begins the next record.
                    msg.truncate(4 + len);
                    self.after.feed(data);
                    return Some(msg);
                }
            }
        }
        None
    }

    /// The server name of a ClientHello still incomplete, once its extension is complete.
    fn partial_sni(&self) -> Option<String> {
        if self.state != HelloState::Pending || self.record.len() <= 5 {
            return None;
        }
        let body = &self.record[5..];
        // Bounds the re-parse per segment: a server name sits in the first few hundred bytes.
        if self.handshake.len() + body.len() > MAX_PARTIAL {
            return None;
        }
        let joined;
        let msg = if self.handshake.is_empty() {
            body
        } else {
            joined = [self.handshake.as_slice(), body].concat();
            &joined
        };
        if msg.len() < 4 || msg[0] != CLIENT_HELLO {
            return None;
        }
        client_hello_sni(&msg[4..])
    }

    fn fail(&mut self) {
        self.state = HelloState::Failed;
        self.after.lost = true;
        self.record = Vec::new();
        self.handshake = Vec::new();
    }
}

/// Both directions of one TLS handshake.
#[derive(Debug)]
pub struct TlsHellos {
    client: Direction,
    server: Direction,
    info: TlsInfo,
}

impl Default for TlsHellos {
    fn default() -> Self {
        Self::new()
    }
}

impl TlsHellos {
    pub fn new() -> Self {
        Self {
            client: Direction::new(),
            server: Direction::new(),
            info: TlsInfo::default(),
        }
    }

    /// In-order bytes of one direction, from the first byte of TLS on.
    pub fn data(&mut self, dir: Dir, data: &[u8]) {
        match dir {
            Dir::ToServer => {
                if let Some(msg) = self.client.feed(data) {
                    if msg[0] == CLIENT_HELLO {
                        self.info.sni = client_hello_sni(&msg[4..]);
                    } else {
                        self.client.state = HelloState::Failed;
                    }
                } else if let Some(sni) = self.client.partial_sni() {
                    // The kernel copies a ClientHello only up to its server name (the rest
                    // arrives as skipped bytes): the name is all there is to learn.
                    self.info.sni = Some(sni);
                    self.client.state = HelloState::Done;
                    // In order, the rest of the hello's record is still to come: skip it.
                    let d = &mut self.client;
                    let len = usize::from(u16::from_be_bytes([d.record[3], d.record[4]]));
                    d.after.header.copy_from_slice(&d.record[..5]);
                    d.after.have = 5;
                    d.after.body_left = (5 + len).saturating_sub(d.record.len());
                    self.client.record = Vec::new();
                    self.client.handshake = Vec::new();
                }
            }
            Dir::ToClient => {
                if let Some(msg) = self.server.feed(data) {
                    let parsed = (msg[0] == SERVER_HELLO)
                        .then(|| server_hello(&msg[4..]))
                        .flatten();
                    match parsed {
                        Some((version, cipher)) => {
                            self.info.version = Some(version_name(version));
                            self.info.cipher = Some(cipher_name(cipher));
                        }
                        None => self.server.state = HelloState::Failed,
                    }
                }
            }
        }
        if self.info.failed.is_none() {
            if let Some(why) = self.failure() {
                self.info.version = None;
                self.info.cipher = None;
                self.info.failed = Some(why);
            }
        }
    }

    /// Why the handshake failed, once the records say so.
    fn failure(&self) -> Option<String> {
        if let Some(d) = self.server.after.fatal {
            return Some(format!("the server sent a fatal alert ({})", alert_name(d)));
        }
        if let Some(d) = self.client.after.fatal {
            return Some(format!("the client sent a fatal alert ({})", alert_name(d)));
        }
        let tls13 = self.info.version.as_deref() == Some("TLS 1.3");
        let first = self.client.after.first;
        if tls13 && first == Some((CONTENT_APPLICATION_DATA, ENCRYPTED_ALERT_LEN)) {
            return Some("the client sent an encrypted alert instead of its Finished".into());
        }
        None
    }

    /// The kernel sent the rest of this direction header-only (an encrypted flow): of a
    /// ClientHello it copies the part up to the server name, or only the handshake header
    /// when the hello names none, so a hello begun here was seen and is all there is.
    pub fn skipped(&mut self, dir: Dir) {
        match dir {
            Dir::ToServer => self.client.after.lost = true,
            Dir::ToClient => self.server.after.lost = true,
        }
        let d = &mut self.client;
        let began = d.handshake.first().or(d.record.get(5)) == Some(&CLIENT_HELLO);
        if dir == Dir::ToServer && d.state == HelloState::Pending && began {
            d.state = HelloState::Done;
            d.record = Vec::new();
            d.handshake = Vec::new();
        }
    }

    /// Bytes are missing: a hello spanning the hole can't be trusted.
    pub fn gap(&mut self, dir: Dir) {
        let d = match dir {
            Dir::ToServer => &mut self.client,
            Dir::ToClient => &mut self.server,
        };
        if d.state == HelloState::Pending {
            d.fail();
        }
        d.after.lost = true;
    }

    /// What was learned so far.
    pub fn info(&self) -> &TlsInfo {
        &self.info
    }

    /// Parsing state of (client, server) hellos.
    pub fn state(&self) -> (HelloState, HelloState) {
        (self.client.state, self.server.state)
    }
}

/// A bounds-checked reader over a hello body.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
    fn vec8(&mut self) -> Option<&'a [u8]> {
        let n = usize::from(self.u8()?);
        self.take(n)
    }
    fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = usize::from(self.u16()?);
        self.take(n)
    }
    /// Extensions as (type, body) until the block ends, is malformed, or (in a hello cut
    /// short) the bytes end.
    fn extensions(&mut self) -> Vec<(u16, &'a [u8])> {
        let mut out = Vec::new();
        let Some(n) = self.u16() else {
            return out;
        };
        let Some(block) = self.take(usize::from(n).min(self.0.len())) else {
            return out;
        };
        let mut r = Reader(block);
        while let (Some(t), Some(body)) = (r.u16(), r.vec16()) {
            out.push((t, body));
        }
        out
    }
}

fn client_hello_sni(body: &[u8]) -> Option<String> {
    let mut r = Reader(body);
    r.take(2 + 32)?; // legacy_version, random
    r.vec8()?; // session id
    r.vec16()?; // cipher suites
    r.vec8()?; // compression methods
    let ext = r.extensions();
    let (_, sni) = ext.into_iter().find(|(t, _)| *t == EXT_SERVER_NAME)?;
    let mut list = Reader(Reader(sni).vec16()?);
    while let Some(kind) = list.u8() {
        let name = list.vec16()?;
        if kind == 0 {
            let mut s = String::from_utf8_lossy(name).into_owned();
            crate::proto::auth::truncate(&mut s, MAX_SNI);
            return Some(s);
        }
    }
    None
}

/// (version, cipher suite) of a ServerHello.
fn server_hello(body: &[u8]) -> Option<(u16, u16)> {
    let mut r = Reader(body);
    let legacy = r.u16()?;
    r.take(32)?;
    r.vec8()?;
    let cipher = r.u16()?;
    r.u8()?;
    let version = r
        .extensions()
        .into_iter()
        .find(|(t, b)| *t == EXT_SUPPORTED_VERSIONS && b.len() == 2)
        .map(|(_, b)| u16::from_be_bytes([b[0], b[1]]))
        .unwrap_or(legacy);
    Some((version, cipher))
}

fn version_name(v: u16) -> String {
    match v {
        0x0300 => "SSL 3.0".into(),
        0x0301 => "TLS 1.0".into(),
        0x0302 => "TLS 1.1".into(),
        0x0303 => "TLS 1.2".into(),
        0x0304 => "TLS 1.3".into(),
        _ => format!("0x{v:04X}"),
    }
}

/// IANA name of the suites seen in practice on mail servers; others in hex.
/// An alert's name (RFC 8446 §6, RFC 5246 §7.2).
fn alert_name(d: u8) -> String {
    let name = match d {
        0 => "close_notify",
        10 => "unexpected_message",
        20 => "bad_record_mac",
        40 => "handshake_failure",
        42 => "bad_certificate",
        43 => "unsupported_certificate",
        44 => "certificate_revoked",
        45 => "certificate_expired",
        46 => "certificate_unknown",
        47 => "illegal_parameter",
        48 => "unknown_ca",
        49 => "access_denied",
        50 => "decode_error",
        51 => "decrypt_error",
        70 => "protocol_version",
        71 => "insufficient_security",
        80 => "internal_error",
        86 => "inappropriate_fallback",
        90 => "user_canceled",
        109 => "missing_extension",
        110 => "unsupported_extension",
        112 => "unrecognized_name",
        116 => "certificate_required",
        120 => "no_application_protocol",
        _ => return format!("alert {d}"),
    };
    name.to_string()
}

pub fn cipher_name(c: u16) -> String {
    let name = match c {
        0x1301 => "TLS_AES_128_GCM_SHA256",
        0x1302 => "TLS_AES_256_GCM_SHA384",
        0x1303 => "TLS_CHACHA20_POLY1305_SHA256",
        0x1304 => "TLS_AES_128_CCM_SHA256",
        0x1305 => "TLS_AES_128_CCM_8_SHA256",
        0xC02B => "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
        0xC02C => "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
        0xC02F => "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
        0xC030 => "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
        0xCCA8 => "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
        0xCCA9 => "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
        0xCCAA => "TLS_DHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
        0xC009 => "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA",
        0xC00A => "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA",
        0xC013 => "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA",
        0xC014 => "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA",
        0xC023 => "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256",
        0xC024 => "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA384",
        0xC027 => "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256",
        0xC028 => "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA384",
        0x009E => "TLS_DHE_RSA_WITH_AES_128_GCM_SHA256",
        0x009F => "TLS_DHE_RSA_WITH_AES_256_GCM_SHA384",
        0x0033 => "TLS_DHE_RSA_WITH_AES_128_CBC_SHA",
        0x0039 => "TLS_DHE_RSA_WITH_AES_256_CBC_SHA",
        0x009C => "TLS_RSA_WITH_AES_128_GCM_SHA256",
        0x009D => "TLS_RSA_WITH_AES_256_GCM_SHA384",
        0x002F => "TLS_RSA_WITH_AES_128_CBC_SHA",
        0x0035 => "TLS_RSA_WITH_AES_256_CBC_SHA",
        0x003C => "TLS_RSA_WITH_AES_128_CBC_SHA256",
        0x003D => "TLS_RSA_WITH_AES_256_CBC_SHA256",
        0x000A => "TLS_RSA_WITH_3DES_EDE_CBC_SHA",
        0x0005 => "TLS_RSA_WITH_RC4_128_SHA",
        0x0004 => "TLS_RSA_WITH_RC4_128_MD5",
        _ => return format!("0x{c:04X}"),
    };
    name.to_string()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn ext(t: u16, body: &[u8]) -> Vec<u8> {
        let mut v = t.to_be_bytes().to_vec();
        v.extend_from_slice(&(body.len() as u16).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    fn handshake(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![kind];
        v.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        v.extend_from_slice(body);
        v
    }

    /// `msg` in TLS records of at most `max` body bytes each.
    fn records(msg: &[u8], max: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for chunk in msg.chunks(max) {
            out.extend_from_slice(&[22, 3, 1]);
            out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
            out.extend_from_slice(chunk);
        }
        out
    }

    /// A ClientHello record carrying `sni` (and some padding to make it long).
    pub(crate) fn client_hello(sni: &str) -> Vec<u8> {
        let mut body = vec![3, 3];
        body.extend_from_slice(&[7; 32]);
        body.push(0); // session id
        body.extend_from_slice(&[0, 4, 0x13, 0x01, 0xC0, 0x2F]);
        body.extend_from_slice(&[1, 0]);
        let mut name = vec![0];
        name.extend_from_slice(&(sni.len() as u16).to_be_bytes());
        name.extend_from_slice(sni.as_bytes());
        let mut list = (name.len() as u16).to_be_bytes().to_vec();
        list.extend_from_slice(&name);
        let mut exts = ext(0x000a, &[0, 2, 0, 29]);
        exts.extend(ext(EXT_SERVER_NAME, &list));
        exts.extend(ext(0x0015, &[0; 300]));
        body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
        body.extend(exts);
        records(&handshake(CLIENT_HELLO, &body), 16384)
    }

    /// A ServerHello record; `supported` adds the TLS 1.3 supported_versions extension.
    pub(crate) fn server_hello(cipher: u16, supported: Option<u16>) -> Vec<u8> {
        let mut body = vec![3, 3];
        body.extend_from_slice(&[9; 32]);
        body.push(0);
        body.extend_from_slice(&cipher.to_be_bytes());
        body.push(0);
        let mut exts = ext(0xff01, &[0]);
        if let Some(v) = supported {
            exts.extend(ext(EXT_SUPPORTED_VERSIONS, &v.to_be_bytes()));
        }
        body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
        body.extend(exts);
        records(&handshake(SERVER_HELLO, &body), 16384)
    }

    #[test]
    fn sni_version_cipher_tls13() {
        let mut t = TlsHellos::new();
        t.data(Dir::ToServer, &client_hello("mx.example.jp"));
        t.data(Dir::ToClient, &server_hello(0x1302, Some(0x0304)));
        assert_eq!(
            t.info(),
            &TlsInfo {
                sni: Some("mx.example.jp".into()),
                version: Some("TLS 1.3".into()),
                cipher: Some("TLS_AES_256_GCM_SHA384".into()),
                failed: None,
            }
        );
        assert_eq!(t.state(), (HelloState::Done, HelloState::Done));
    }

    #[test]
    fn tls12_and_unknown_cipher_in_hex() {
        let mut t = TlsHellos::new();
        t.data(Dir::ToClient, &server_hello(0xC030, None));
        assert_eq!(t.info().version.as_deref(), Some("TLS 1.2"));
        assert_eq!(
            t.info().cipher.as_deref(),
            Some("TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384")
        );
        let mut t = TlsHellos::new();
        t.data(Dir::ToClient, &server_hello(0xABCD, None));
        assert_eq!(t.info().cipher.as_deref(), Some("0xABCD"));
    }

    #[test]
    fn hello_split_over_records_and_segments() {
        let whole = client_hello("smtp.example.org");
        // Re-frame the handshake message into 50-byte records, then feed byte by byte.
        let msg = whole[5..].to_vec();
        let framed = records(&msg, 50);
        let mut t = TlsHellos::new();
        for b in &framed {
            t.data(Dir::ToServer, std::slice::from_ref(b));
        }
        assert_eq!(t.info().sni.as_deref(), Some("smtp.example.org"));
        for size in 1..=64 {
            let mut t = TlsHellos::new();
            for c in whole.chunks(size) {
                t.data(Dir::ToServer, c);
            }
            assert_eq!(t.info().sni.as_deref(), Some("smtp.example.org"), "{size}");
        }
    }

    #[test]
    fn garbage_truncation_and_gaps_learn_nothing() {
        let mut t = TlsHellos::new();
        t.data(Dir::ToServer, b"EHLO not tls\r\n");
        assert_eq!(t.state().0, HelloState::Failed);
        // A hello announcing more than MAX_HELLO is refused without buffering it.
        let mut t = TlsHellos::new();
        let mut huge = vec![22, 3, 1, 0x40, 0x00, CLIENT_HELLO, 0x01, 0, 0];
        huge.extend_from_slice(&[0; 100]);
        t.data(Dir::ToServer, &huge);
        assert_eq!(t.state().0, HelloState::Failed);
        // Truncated before the server name ends: no SNI, no panic.
        let whole = client_hello("a.example");
        let name_end = whole.windows(9).position(|w| w == b"a.example").unwrap() + 9;
        for cut in 0..name_end {
            let mut t = TlsHellos::new();
            t.data(Dir::ToServer, &whole[..cut]);
            assert_eq!(t.info().sni, None, "{cut}");
            assert_eq!(t.state().0, HelloState::Pending, "{cut}");
        }
        let mut t = TlsHellos::new();
        t.data(Dir::ToServer, &whole[..20]);
        t.gap(Dir::ToServer);
        t.data(Dir::ToServer, &whole[20..]);
        assert_eq!(t.info().sni, None);
        assert_eq!(t.state().0, HelloState::Failed);
    }

    #[test]
    fn hello_cut_after_the_server_name_still_names_it() {
        // What the kernel copies of a suppressed flow's ClientHello: up to the end of the
        // server_name extension, the rest skipped.
        let whole = client_hello("a.example");
        let name_end = whole.windows(9).position(|w| w == b"a.example").unwrap() + 9;
        assert!(name_end + 300 < whole.len());
        for cut in name_end..=whole.len() {
            let mut t = TlsHellos::new();
            t.data(Dir::ToServer, &whole[..cut]);
            assert_eq!(t.info().sni.as_deref(), Some("a.example"), "{cut}");
            assert_eq!(t.state().0, HelloState::Done, "{cut}");
        }
        // Cut after the handshake header (the kernel found no server name): seen, unnamed.
        let mut t = TlsHellos::new();
        t.data(Dir::ToServer, &whole[..9]);
        t.skipped(Dir::ToClient);
        assert_eq!(t.state().0, HelloState::Pending);
        t.skipped(Dir::ToServer);
        assert_eq!(
            (t.info().sni.as_deref(), t.state().0),
            (None, HelloState::Done)
        );
        // Skipped bytes that follow no hello teach nothing.
        let mut t = TlsHellos::new();
        t.data(Dir::ToServer, &whole[..4]);
        t.skipped(Dir::ToServer);
        assert_eq!(t.state().0, HelloState::Pending);
        // In two segments, the name completed by the second.
        let mut t = TlsHellos::new();
        t.data(Dir::ToServer, &whole[..name_end - 3]);
        assert_eq!(t.info().sni, None);
        t.data(Dir::ToServer, &whole[name_end - 3..name_end]);
        assert_eq!(t.info().sni.as_deref(), Some("a.example"));
        // A hello without a server name learns it only complete: none.
        let mut t = TlsHellos::new();
        let mut body = vec![3, 3];
        body.extend_from_slice(&[7; 32]);
        body.extend_from_slice(&[0, 0, 2, 0x13, 0x01, 1, 0]);
        let exts = ext(0x000a, &[0, 2, 0, 29]);
        body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
        body.extend(exts);
        let rec = records(&handshake(CLIENT_HELLO, &body), 16384);
        t.data(Dir::ToServer, &rec[..rec.len() - 1]);
        assert_eq!(t.state().0, HelloState::Pending);
        t.data(Dir::ToServer, &rec[rec.len() - 1..]);
        assert_eq!(
            (t.info().sni.as_deref(), t.state().0),
            (None, HelloState::Done)
        );
    }

    #[test]
    fn corrupt_lengths_never_panic() {
        let whole = server_hello(0x1301, Some(0x0304));
        for i in 5..whole.len() {
            for v in [0u8, 1, 0x7f, 0xff] {
                let mut b = whole.clone();
                b[i] = v;
                let mut t = TlsHellos::new();
                t.data(Dir::ToClient, &b);
            }
        }
    }

    /// Both hellos, then `client_after` from the client, fed in pieces of `chunk` bytes.
    fn after_hellos(server: &[u8], client_after: &[u8], chunk: usize) -> TlsInfo {
        let mut t = TlsHellos::new();
        for c in client_hello("mx.example").chunks(chunk) {
            t.data(Dir::ToServer, c);
        }
        for c in server.chunks(chunk) {
            t.data(Dir::ToClient, c);
        }
        for c in client_after.chunks(chunk) {
            t.data(Dir::ToServer, c);
        }
        t.info().clone()
    }

    fn record(ctype: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![ctype, 3, 3];
        v.extend_from_slice(&(body.len() as u16).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn fatal_alerts_in_clear_fail_the_handshake() {
        let tls12 = server_hello(0xC02F, None);
        for chunk in [1, 3, 7, 4096] {
            // The client refuses the certificate.
            let i = after_hellos(&tls12, &record(CONTENT_ALERT, &[2, 42]), chunk);
            assert_eq!(
                i.failed.as_deref(),
                Some("the client sent a fatal alert (bad_certificate)")
            );
            assert_eq!((i.version, i.cipher), (None, None));
            assert_eq!(i.sni.as_deref(), Some("mx.example"));
            // The server refuses the ClientHello: an alert instead of its hello.
            let i = after_hellos(&record(CONTENT_ALERT, &[2, 40]), b"", chunk);
            assert_eq!(
                i.failed.as_deref(),
                Some("the server sent a fatal alert (handshake_failure)")
            );
            // A ServerHello and its certificate in one record, then the server's alert.
            let mut s = tls12.clone();
            s.extend(record(CONTENT_HANDSHAKE, &[11, 0, 0, 3, 0, 0, 0]));
            s.extend(record(CONTENT_ALERT, &[2, 70]));
            let i = after_hellos(&s, b"", chunk);
            assert_eq!(
                i.failed.as_deref(),
                Some("the server sent a fatal alert (protocol_version)")
            );
        }
    }

    #[test]
    fn a_finished_handshake_or_a_warning_is_not_a_failure() {
        let tls12 = server_hello(0xC02F, None);
        // Key exchange, CCS, then an encrypted alert (close_notify at the end): fine.
        let mut c = record(CONTENT_HANDSHAKE, &[16, 0, 0, 2, 0, 0]);
        c.extend(record(CONTENT_CHANGE_CIPHER_SPEC, &[1]));
        c.extend(record(CONTENT_HANDSHAKE, &[0x55; 40]));
        c.extend(record(CONTENT_ALERT, &[0x66; 26]));
        let i = after_hellos(&tls12, &c, 5);
        assert_eq!(i.failed, None);
        assert_eq!(i.version.as_deref(), Some("TLS 1.2"));
        // A warning alert in clear is no failure either.
        let i = after_hellos(&tls12, &record(CONTENT_ALERT, &[1, 112]), 5);
        assert_eq!(i.failed, None);
        // TLS 1.3: CCS then a 53-byte Finished.
        let tls13 = server_hello(0x1301, Some(0x0304));
        let mut c = record(CONTENT_CHANGE_CIPHER_SPEC, &[1]);
        c.extend(record(CONTENT_APPLICATION_DATA, &[0x77; 53]));
        let i = after_hellos(&tls13, &c, 5);
        assert_eq!(i.failed, None);
        assert_eq!(i.cipher.as_deref(), Some("TLS_AES_128_GCM_SHA256"));
    }

    #[test]
    fn tls13_client_giving_up_is_a_failure() {
        let tls13 = server_hello(0x1301, Some(0x0304));
        let mut c = record(CONTENT_CHANGE_CIPHER_SPEC, &[1]);
        c.extend(record(CONTENT_APPLICATION_DATA, &[0x77; 19]));
        for chunk in [1, 2, 4096] {
            let i = after_hellos(&tls13, &c, chunk);
            assert_eq!(
                i.failed.as_deref(),
                Some("the client sent an encrypted alert instead of its Finished")
            );
            assert_eq!((i.version, i.cipher), (None, None));
        }
        // A gap before it: nothing is concluded.
        let mut t = TlsHellos::new();
        t.data(Dir::ToServer, &client_hello("mx.example"));
        t.data(Dir::ToClient, &tls13);
        t.gap(Dir::ToServer);
        t.data(Dir::ToServer, &c);
        assert_eq!(t.info().failed, None);
        assert_eq!(t.info().version.as_deref(), Some("TLS 1.3"));
    }
}
