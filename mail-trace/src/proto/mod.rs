//! Sans-I/O protocol state machines: bytes in, events out, no clock, no I/O.
//!
//! Each dissector implements [`Dissector`]: the session engine hands it the
//! reassembled bytes of each direction (and the gaps), then drains
//! [`Dissector::poll_event`] and finally asks for the protocol's part of the
//! session record.
pub mod auth;
pub mod imap;
pub mod line;
pub mod pop3;
pub mod smtp;
pub mod stream;
#[cfg(test)]
mod testutil;
pub mod tls;

use std::net::SocketAddr;

use crate::findings::Finding;
use crate::flow::Dir;
use crate::time::Ts;

/// What the operator allowed to be shown. Both default to hidden.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Privacy {
    /// Show AUTH secrets (passwords, tokens, challenge responses).
    pub show_secrets: bool,
    /// Show header values (From, To, Subject, …).
    pub show_headers: bool,
}

/// Which protocol a session speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Smtp,
    Pop3,
    Imap,
}

/// What the session engine knows when it creates a dissector.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionStart {
    /// Time of the client's SYN, when seen (greeting delay is measured from it).
    pub syn_ts: Option<Ts>,
    /// Implicit TLS port (465, 993, 995): the session is TLS from its first byte.
    pub implicit_tls: bool,
    /// Picked up mid-stream: resynchronise at the first complete command or reply line.
    pub partial: bool,
    /// The client's address (HELO literal check), when known.
    pub client: Option<SocketAddr>,
    /// The server's address (its port decides which findings apply), when known.
    pub server: Option<SocketAddr>,
    /// The same server offered STARTTLS/STLS in an earlier session of this run
    /// (a session without it may have been stripped).
    pub tls_offered_before: bool,
}

/// One thing that happened in a session, as it happened.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A client command. `arg` is already redacted according to [`Privacy`].
    Command { ts: Ts, verb: String, arg: String },
    /// A server reply (multi-line replies joined into one event).
    Reply {
        ts: Ts,
        /// "250", "+OK", "-ERR", "OK", "NO", "BAD", "*"…
        code: String,
        /// RFC 3463 X.Y.Z, or a POP3/IMAP response code such as `AUTHENTICATIONFAILED`.
        enhanced: Option<String>,
        /// The reply text, lines joined with " / " (redacted where it echoes a secret).
        text: String,
        /// From the last byte of the command it answers to its first byte.
        latency_ns: Option<u64>,
    },
    /// The session turned to TLS; nothing after this is dissected.
    TlsStarted { ts: Ts },
    /// Something malformed or suspicious (short stable id).
    Anomaly { ts: Ts, id: &'static str },
    /// Something the operator should notice, known the moment it happened
    /// (the rest are in the record's `findings` and sent by the engine at the end).
    Finding { ts: Ts, finding: Finding },
}

/// A protocol state machine. Each one is built with
/// `new(privacy: Privacy, start: SessionStart) -> Self`.
///
/// The record map holds the protocol's own fields (SMTP: `greeting`, `helo`,
/// `ehlo`, `tls`, `tls_mode`, `tls_info`, `auth`, `transactions`, …); the engine
/// adds `id`, `proto`, `start`, `end`, `client`, `server`, `partial`, `gaps`,
/// `anomalies`, and `commands`/`replies` counts unless the map already has them.
pub trait Dissector: Send {
    /// In-order bytes of one direction.
    fn data(&mut self, dir: Dir, data: &[u8], ts: Ts);
    /// `len` bytes of one direction are missing; resynchronise at the next line.
    fn gap(&mut self, dir: Dir, len: u64, ts: Ts);
    /// `len` bytes of one direction crossed the wire but the kernel did not copy them
    /// (encrypted, see [`crate::proto::tls::TlsHellos::skipped`]).
    fn skipped(&mut self, _dir: Dir, _len: u64) {}
    /// Next pending event, if any.
    fn poll_event(&mut self) -> Option<Event>;
    /// The protocol's fields of the session record (flattened into it).
    fn record(&self) -> serde_json::Map<String, serde_json::Value>;
    /// The same fields as the session record holds them: a protocol with typed
    /// fields serialises them without building a `Value` tree. `findings` are what
    /// [`Self::findings`] just returned (the engine needed them first).
    fn record_fields(&self, _findings: Vec<Finding>) -> crate::session::Fields {
        crate::session::Fields::from(self.record())
    }
    /// The TLS layer's plaintext (from uprobes on the TLS library) replaces the
    /// TCP bytes from now on: read it as clear text again, in the state the
    /// protocol is in after its TLS start (SMTP: the client's new EHLO; implicit
    /// TLS: the greeting). The TLS facts already recorded stay. False when TLS
    /// has not started, so the plaintext cannot be placed.
    fn resume_plaintext(&mut self, _ts: Ts) -> bool {
        false
    }
    /// The session's findings so far (also the record's `findings` list).
    fn findings(&self) -> Vec<Finding> {
        Vec::new()
    }
    /// Heap bytes this session's dissector holds beyond its fixed size and grows with what
    /// a peer sends (recorded transactions, bytes held for a reply): what the engine's global
    /// budget (`--max-held`) counts. An estimate; 0 for dissectors bounded per session.
    fn held_bytes(&self) -> usize {
        0
    }
    /// Whether the server offered STARTTLS/STLS (remembered per server by the engine).
    fn tls_offered(&self) -> bool {
        false
    }
}

/// Separator between the lines of a multi-line reply in [`Event::Reply::text`].
pub const REPLY_LINE_SEP: &str = " / ";
