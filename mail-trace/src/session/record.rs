//! The session record: what one JSON line of `--json` says about a finished
//! session (documented field by field in docs/json.md).
use std::net::SocketAddr;
use std::sync::OnceLock;

use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{Map, Value};

use crate::flow::{CloseReason, ConnId};
use crate::proto::smtp::SmtpRecord;
use crate::proto::Proto;
use crate::time::{Rfc3339, Ts};

/// A finished session: engine facts plus the dissector's own fields.
#[derive(Clone, Debug, PartialEq)]
pub struct SessionRecord {
    pub id: ConnId,
    pub proto: Proto,
    pub start: Ts,
    pub end: Ts,
    pub client: SocketAddr,
    pub server: SocketAddr,
    pub partial: bool,
    /// Bytes missing from the streams (both directions).
    pub gaps: u64,
    pub close: CloseReason,
    pub commands: u64,
    pub replies: u64,
    /// Payload bytes client→server, server→client.
    pub bytes: [u64; 2],
    pub anomalies: Vec<&'static str>,
    /// The protocol's fields, from [`crate::proto::Dissector::record_fields`].
    pub fields: Fields,
}

impl SessionRecord {
    /// The whole record as a JSON object, in the documented field order.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    /// A dissector field by name.
    pub fn field(&self, name: &str) -> Option<&Value> {
        self.fields.get(name)
    }
}

/// The protocol's fields of a record (typed where the protocol has them), then the
/// engine's and the log join's own (`plaintext_source`, `process`, `log`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Fields {
    typed: Option<Box<SmtpRecord>>,
    map: Map<String, Value>,
    /// The typed fields as JSON values, made only when an output asks for one by name
    /// (the tail, the log join): JSON lines never need them.
    values: OnceLock<Map<String, Value>>,
}

impl Fields {
    pub fn smtp(r: SmtpRecord) -> Self {
        Fields {
            typed: Some(Box::new(r)),
            ..Fields::default()
        }
    }

    /// Adds a field after the protocol's (an existing one keeps its place).
    pub fn insert(&mut self, k: String, v: Value) -> Option<Value> {
        self.map.insert(k, v)
    }

    pub fn get(&self, name: &str) -> Option<&Value> {
        self.map.get(name).or_else(|| self.typed_values().get(name))
    }

    /// Messages accepted at the end of data (2xx), from the typed record when there is
    /// one: the tail counts them for every session, and the JSON form costs a map per
    /// field.
    pub fn accepted_messages(&self) -> u64 {
        if let Some(t) = &self.typed {
            return t.accepted_messages();
        }
        self.get("transactions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|t| {
                t["reply"]["code"]
                    .as_u64()
                    .is_some_and(|c| (200..300).contains(&c))
            })
            .count() as u64
    }

    pub fn contains_key(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    fn typed_values(&self) -> &Map<String, Value> {
        self.values
            .get_or_init(|| match serde_json::to_value(&self.typed) {
                Ok(Value::Object(m)) => m,
                _ => Map::new(),
            })
    }
}

/// `fields["name"]`, null when absent (as indexing a `Value` is).
impl std::ops::Index<&str> for Fields {
    type Output = Value;

    fn index(&self, name: &str) -> &Value {
        static NULL: Value = Value::Null;
        self.get(name).unwrap_or(&NULL)
    }
}

impl From<Map<String, Value>> for Fields {
    fn from(map: Map<String, Value>) -> Self {
        Fields {
            map,
            ..Fields::default()
        }
    }
}

impl SessionRecord {
    /// The record as one JSON object written straight into `w` (see [`RawObject`]).
    pub fn write_json<W: std::io::Write>(&self, w: &mut W) -> serde_json::Result<()> {
        RawObject::write(w, self)
    }
}

impl Object for SessionRecord {
    fn entries<E: Entries>(&self, m: &mut E) -> Result<(), E::Error> {
        m.entry("type", "session")?;
        m.entry("id", &self.id)?;
        m.entry("proto", &self.proto)?;
        m.entry("start", &Rfc3339::new(self.start))?;
        m.entry("end", &Rfc3339::new(self.end))?;
        m.entry(
            "duration_ms",
            &crate::time::millis_between(self.start, self.end),
        )?;
        m.entry("client", &Addr(self.client))?;
        m.entry("server", &Addr(self.server))?;
        m.entry("partial", &self.partial)?;
        m.entry("gaps", &self.gaps)?;
        m.entry("close", &self.close)?;
        if let Some(t) = &self.fields.typed {
            t.entries(m)?;
        }
        for (k, v) in &self.fields.map {
            m.entry(k, v)?;
        }
        // POP3/IMAP give a per-verb `commands` summary; SMTP leaves the counts to us.
        if !self.fields.map.contains_key("commands") {
            m.entry("commands", &self.commands)?;
        }
        if !self.fields.map.contains_key("replies") {
            m.entry("replies", &self.replies)?;
        }
        m.entry(
            "bytes",
            &Bytes {
                c: self.bytes[0],
                s: self.bytes[1],
            },
        )?;
        m.entry("anomalies", &self.anomalies)
    }
}

impl Serialize for SessionRecord {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        AsMap(self).serialize(s)
    }
}

/// A JSON object whose entries are listed once, for both ways of writing it: through
/// serde (`to_value`, tests) and straight into the output ([`RawObject`]).
pub trait Object {
    fn entries<E: Entries>(&self, e: &mut E) -> Result<(), E::Error>;
}

/// Takes the entries of a JSON object, in order.
pub trait Entries {
    type Error;
    fn entry<T: Serialize + ?Sized>(&mut self, k: &str, v: &T) -> Result<(), Self::Error>;
    /// An object, or null.
    fn object<T: Object>(&mut self, k: &str, v: Option<&T>) -> Result<(), Self::Error>;
    /// An array of objects.
    fn objects<T: Object>(&mut self, k: &str, v: &[T]) -> Result<(), Self::Error>;
}

impl<M: SerializeMap> Entries for M {
    type Error = M::Error;

    fn entry<T: Serialize + ?Sized>(&mut self, k: &str, v: &T) -> Result<(), M::Error> {
        self.serialize_entry(k, v)
    }

    fn object<T: Object>(&mut self, k: &str, v: Option<&T>) -> Result<(), M::Error> {
        self.serialize_entry(k, &v.map(AsMap))
    }

    fn objects<T: Object>(&mut self, k: &str, v: &[T]) -> Result<(), M::Error> {
        self.serialize_entry(k, &AsSeq(v))
    }
}

/// An [`Object`] as a serde map.
pub struct AsMap<'a, T>(pub &'a T);

impl<T: Object> Serialize for AsMap<'_, T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        self.0.entries(&mut m)?;
        m.end()
    }
}

struct AsSeq<'a, T>(&'a [T]);

impl<T: Object> Serialize for AsSeq<'_, T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(AsMap))
    }
}

/// Writes an [`Object`] as JSON into the output: the keys, all plain ASCII names of
/// ours, go out as they are (serde_json escapes every key byte by byte, a twentieth of
/// a replay); values still go through serde_json.
pub struct RawObject<'a, W> {
    w: &'a mut W,
    first: bool,
}

impl<W: std::io::Write> RawObject<'_, W> {
    pub fn write<T: Object>(w: &mut W, v: &T) -> serde_json::Result<()> {
        w.write_all(b"{").map_err(serde_json::Error::io)?;
        let mut o = RawObject { w, first: true };
        v.entries(&mut o)?;
        o.w.write_all(b"}").map_err(serde_json::Error::io)
    }

    fn key(&mut self, k: &str) -> serde_json::Result<()> {
        debug_assert!(k.bytes().all(|b| b != b'"' && b != b'\\' && b >= b' '));
        let sep: &[u8] = if self.first { b"\"" } else { b",\"" };
        self.first = false;
        self.w.write_all(sep).map_err(serde_json::Error::io)?;
        self.w
            .write_all(k.as_bytes())
            .map_err(serde_json::Error::io)?;
        self.w.write_all(b"\":").map_err(serde_json::Error::io)
    }
}

impl<W: std::io::Write> Entries for RawObject<'_, W> {
    type Error = serde_json::Error;

    fn entry<T: Serialize + ?Sized>(&mut self, k: &str, v: &T) -> serde_json::Result<()> {
        self.key(k)?;
        serde_json::to_writer(&mut *self.w, v)
    }

    fn object<T: Object>(&mut self, k: &str, v: Option<&T>) -> serde_json::Result<()> {
        self.key(k)?;
        match v {
            Some(v) => RawObject::write(self.w, v),
            None => self.w.write_all(b"null").map_err(serde_json::Error::io),
        }
    }

    fn objects<T: Object>(&mut self, k: &str, v: &[T]) -> serde_json::Result<()> {
        self.key(k)?;
        self.w.write_all(b"[").map_err(serde_json::Error::io)?;
        for (i, x) in v.iter().enumerate() {
            if i > 0 {
                self.w.write_all(b",").map_err(serde_json::Error::io)?;
            }
            RawObject::write(self.w, x)?;
        }
        self.w.write_all(b"]").map_err(serde_json::Error::io)
    }
}

/// An address as `a.b.c.d:port` or `[v6]:port`: IPv4 formatted by hand on the stack
/// (the general formatter costs ~2,000 instructions a record for the two of them).
struct Addr(SocketAddr);

impl Serialize for Addr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let SocketAddr::V4(a) = self.0 else {
            return s.collect_str(&self.0);
        };
        let mut buf = [0u8; 21];
        let mut n = 0;
        for (i, o) in a.ip().octets().into_iter().enumerate() {
            if i > 0 {
                buf[n] = b'.';
                n += 1;
            }
            n += decimal(&mut buf[n..], u32::from(o));
        }
        buf[n] = b':';
        n += 1;
        n += decimal(&mut buf[n..], u32::from(a.port()));
        s.serialize_str(std::str::from_utf8(&buf[..n]).unwrap_or_default())
    }
}

/// Writes `v` in decimal at the start of `out` (room for it is the caller's), returns
/// the length.
fn decimal(out: &mut [u8], v: u32) -> usize {
    let mut digits = [0u8; 10];
    let mut n = 0;
    let mut v = v;
    loop {
        digits[n] = b'0' + (v % 10) as u8;
        n += 1;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    for (o, d) in out.iter_mut().zip(digits[..n].iter().rev()) {
        *o = *d;
    }
    n
}

/// `bytes` of the record: payload bytes client→server and server→client.
#[derive(serde::Serialize)]
struct Bytes {
    c: u64,
    s: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::Dir;
    use crate::proto::smtp::Smtp;
    use crate::proto::{Dissector, Privacy, SessionStart};

    fn record(fields: Fields) -> SessionRecord {
        SessionRecord {
            id: 1,
            proto: Proto::Smtp,
            start: 0,
            end: 0,
            client: "10.99.0.1:40000".parse().unwrap(),
            server: "10.99.0.2:25".parse().unwrap(),
            partial: false,
            gaps: 0,
            close: CloseReason::Fin,
            commands: 2,
            replies: 3,
            bytes: [0, 0],
            anomalies: vec![],
            fields,
        }
    }

    #[test]
    fn addresses_as_the_standard_library_writes_them() {
        for a in [
            "0.0.0.0:0",
            "255.255.255.255:65535",
            "10.99.0.1:40000",
            "1.22.133.4:25",
            "[fd99::1:2]:25",
            "[::ffff:10.0.0.1]:993",
        ] {
            let a: SocketAddr = a.parse().unwrap();
            assert_eq!(
                serde_json::to_string(&Addr(a)).unwrap(),
                format!("\"{a}\""),
                "{a}"
            );
        }
        for i in 0..=255u8 {
            let a = SocketAddr::from(([i, i / 7, 255 - i, i % 10], u16::from(i) * 257));
            assert_eq!(serde_json::to_string(&Addr(a)).unwrap(), format!("\"{a}\""));
        }
    }

    #[test]
    fn typed_fields_write_what_their_values_would() {
        let mut smtp = Smtp::new(Privacy::default(), SessionStart::default());
        for (dir, line) in [
            (Dir::ToClient, "220 mx.test ESMTP\r\n"),
            (Dir::ToServer, "EHLO client.test\r\n"),
            (Dir::ToClient, "250-mx.test\r\n250 SIZE 1000\r\n"),
            (Dir::ToServer, "MAIL FROM:<a@test> SIZE=12\r\n"),
            (Dir::ToClient, "250 2.1.0 Ok\r\n"),
            (Dir::ToServer, "RCPT TO:<b@test>\r\n"),
            (Dir::ToClient, "550 5.1.1 \"no\" such user\r\n"),
        ] {
            smtp.data(dir, line.as_bytes(), 1_000_000);
        }
        let mut typed = record(smtp.record_fields(smtp.findings()));
        let mut values = record(Fields::from(smtp.record()));
        for r in [&mut typed, &mut values] {
            r.fields.insert("log".into(), Value::from("joined"));
        }
        let want = serde_json::to_string(&values).unwrap();
        assert_eq!(serde_json::to_string(&typed).unwrap(), want);
        // The output's own writer, keys unescaped, says the same.
        for r in [&typed, &values] {
            let mut raw = Vec::new();
            r.write_json(&mut raw).unwrap();
            assert_eq!(String::from_utf8(raw).unwrap(), want);
        }
        assert!(want.contains(
            r#""rcpt":[{"addr":"b@test","params":{},"code":550,"enhanced":"5.1.1","text":"\"no\" such user"}]"#
        ), "{want}");
        assert!(want.ends_with(r#""findings":[],"log":"joined","commands":2,"replies":3,"bytes":{"c":0,"s":0},"anomalies":[]}"#), "{want}");
        assert_eq!(typed.field("helo"), Some(&Value::from("client.test")));
        assert_eq!(typed.field("ehlo"), Some(&serde_json::json!(["SIZE 1000"])));
        assert_eq!(typed.field("log"), Some(&Value::from("joined")));
        assert_eq!(typed.field("commands"), None);
        assert_eq!(typed.fields["tls"], Value::Bool(false));
        assert_eq!(typed.fields["nothing"], Value::Null);
        assert_eq!(typed, typed.clone());
    }

    #[test]
    fn accepted_messages_count_the_same_typed_and_as_values() {
        let mut smtp = Smtp::new(Privacy::default(), SessionStart::default());
        for (dir, line) in [
            (Dir::ToClient, "220 mx.test ESMTP\r\n"),
            (Dir::ToServer, "EHLO client.test\r\n"),
            (Dir::ToClient, "250 mx.test\r\n"),
            (Dir::ToServer, "MAIL FROM:<a@test>\r\n"),
            (Dir::ToClient, "250 2.1.0 Ok\r\n"),
            (Dir::ToServer, "RCPT TO:<b@test>\r\n"),
            (Dir::ToClient, "250 2.1.5 Ok\r\n"),
            (Dir::ToServer, "DATA\r\n"),
            (Dir::ToClient, "354 go\r\n"),
            (Dir::ToServer, "Subject: 1\r\n\r\none\r\n.\r\n"),
            (Dir::ToClient, "250 2.0.0 Ok: queued as 4Q1\r\n"),
            (Dir::ToServer, "MAIL FROM:<a@test>\r\n"),
            (Dir::ToClient, "250 2.1.0 Ok\r\n"),
            (Dir::ToServer, "RCPT TO:<c@test>\r\n"),
            (Dir::ToClient, "250 2.1.5 Ok\r\n"),
            (Dir::ToServer, "DATA\r\n"),
            (Dir::ToClient, "354 go\r\n"),
            (Dir::ToServer, "Subject: 2\r\n\r\ntwo\r\n.\r\n"),
            (Dir::ToClient, "554 5.7.1 rejected\r\n"),
            (Dir::ToServer, "MAIL FROM:<a@test>\r\n"),
            (Dir::ToClient, "250 2.1.0 Ok\r\n"),
        ] {
            smtp.data(dir, line.as_bytes(), 1_000_000);
        }
        let typed = record(smtp.record_fields(smtp.findings()));
        let values = record(Fields::from(smtp.record()));
        assert_eq!(typed.fields.accepted_messages(), 1);
        assert_eq!(values.fields.accepted_messages(), 1);
        assert_eq!(
            typed.fields["transactions"].as_array().map(Vec::len),
            Some(3)
        );
    }

    #[test]
    fn serialises_in_documented_order_with_ipv6_brackets() {
        let mut fields = Map::new();
        fields.insert("helo".into(), Value::from("client.test"));
        let r = SessionRecord {
            id: 7,
            proto: Proto::Smtp,
            start: 1_000_000_000,
            end: 1_002_500_000,
            client: "[fd99::1:1]:40000".parse().unwrap(),
            server: "[fd99::1:2]:25".parse().unwrap(),
            partial: false,
            gaps: 0,
            close: CloseReason::Fin,
            commands: 3,
            replies: 4,
            bytes: [120, 450],
            anomalies: vec!["bare-lf"],
            fields: fields.into(),
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"type":"session","id":7,"proto":"smtp","start":"1970-01-01T00:00:01.000000Z","end":"1970-01-01T00:00:01.002500Z","duration_ms":2.5,"client":"[fd99::1:1]:40000","server":"[fd99::1:2]:25","partial":false,"gaps":0,"close":"fin","helo":"client.test","commands":3,"replies":4,"bytes":{"c":120,"s":450},"anomalies":["bare-lf"]}"#
        );
    }
}
