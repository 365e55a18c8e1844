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

impl Serialize for SessionRecord {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("type", "session")?;
        m.serialize_entry("id", &self.id)?;
        m.serialize_entry("proto", &self.proto)?;
        m.serialize_entry("start", &Rfc3339::new(self.start))?;
        m.serialize_entry("end", &Rfc3339::new(self.end))?;
        m.serialize_entry(
            "duration_ms",
            &crate::time::millis_between(self.start, self.end),
        )?;
        // Written straight into the output, not into a String first.
        m.serialize_entry("client", &format_args!("{}", self.client))?;
        m.serialize_entry("server", &format_args!("{}", self.server))?;
        m.serialize_entry("partial", &self.partial)?;
        m.serialize_entry("gaps", &self.gaps)?;
        m.serialize_entry("close", &self.close)?;
        if let Some(t) = &self.fields.typed {
            t.entries(&mut m)?;
        }
        for (k, v) in &self.fields.map {
            m.serialize_entry(k, v)?;
        }
        // POP3/IMAP give a per-verb `commands` summary; SMTP leaves the counts to us.
        if !self.fields.map.contains_key("commands") {
            m.serialize_entry("commands", &self.commands)?;
        }
        if !self.fields.map.contains_key("replies") {
            m.serialize_entry("replies", &self.replies)?;
        }
        m.serialize_entry(
            "bytes",
            &Bytes {
                c: self.bytes[0],
                s: self.bytes[1],
            },
        )?;
        m.serialize_entry("anomalies", &self.anomalies)?;
        m.end()
    }
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
        let mut typed = record(smtp.record_fields());
        let mut values = record(Fields::from(smtp.record()));
        for r in [&mut typed, &mut values] {
            r.fields.insert("log".into(), Value::from("joined"));
        }
        let want = serde_json::to_string(&values).unwrap();
        assert_eq!(serde_json::to_string(&typed).unwrap(), want);
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
