//! The session record: what one JSON line of `--json` says about a finished
//! session (documented field by field in docs/json.md).
use std::net::SocketAddr;

use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{Map, Value};

use crate::flow::{CloseReason, ConnId};
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
    /// The protocol's fields, from [`crate::proto::Dissector::record`].
    pub fields: Map<String, Value>,
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
        for (k, v) in &self.fields {
            m.serialize_entry(k, v)?;
        }
        // POP3/IMAP give a per-verb `commands` summary; SMTP leaves the counts to us.
        if !self.fields.contains_key("commands") {
            m.serialize_entry("commands", &self.commands)?;
        }
        if !self.fields.contains_key("replies") {
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
            fields,
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"type":"session","id":7,"proto":"smtp","start":"1970-01-01T00:00:01.000000Z","end":"1970-01-01T00:00:01.002500Z","duration_ms":2.5,"client":"[fd99::1:1]:40000","server":"[fd99::1:2]:25","partial":false,"gaps":0,"close":"fin","helo":"client.test","commands":3,"replies":4,"bytes":{"c":120,"s":450},"anomalies":["bare-lf"]}"#
        );
    }
}
