//! Bookkeeping shared by the mailbox-access dissectors (POP3, IMAP): line
//! framing that remembers when a line started and how many raw bytes it had,
//! a bounded event queue, and the per-verb command summary of the record.

use std::collections::VecDeque;

use super::line::LineBuffer;
use super::tls::TlsHellos;
use super::{Event, SessionStart};
use crate::findings::{self, Finding};
use crate::flow::Dir;
use crate::time::Ts;

/// Events waiting for the engine. The engine drains after every `data` call,
/// so this only fills up when it doesn't; past it events are dropped (counted).
pub const MAX_EVENTS: usize = 4096;
/// Anomaly events per session: a peer that is wrong on every line should not
/// drown the tail. The record still has the ids seen first.
pub const MAX_ANOMALY_EVENTS: usize = 64;
/// Distinct verbs in the `commands` summary; the rest are counted as `OTHER`.
pub const MAX_VERBS: usize = 48;
/// Longest verb kept (hostile clients send anything as a verb).
pub const MAX_VERB_LEN: usize = 24;

/// One complete line, with what the framing knows about it.
#[derive(Debug)]
pub struct Framed {
    /// The line without its terminator (capped at [`super::line::MAX_LINE`]).
    pub text: Vec<u8>,
    /// Bytes the line had on the wire, terminator included (not capped).
    pub raw_len: u64,
    /// Time of the segment that carried the line's first byte.
    pub start_ts: Ts,
    pub bare_lf: bool,
    pub overlong: bool,
}

/// [`LineBuffer`] that yields one line at a time, so the caller can switch to a
/// byte-counted mode (literals) between lines.
#[derive(Debug, Default)]
pub struct Framer {
    lb: LineBuffer,
    carry_raw: u64,
    carry_ts: Option<Ts>,
}

impl Framer {
    /// Consumes `data` up to and including the first line end; returns the bytes
    /// consumed and the line, or all of `data` and `None` when no line ended.
    pub fn next(&mut self, data: &[u8], ts: Ts) -> (usize, Option<Framed>) {
        let start_ts = self.carry_ts.unwrap_or(ts);
        let mut out = None;
        let used = self.lb.feed(data, |l| {
            out = Some((l.text.to_vec(), l.bare_lf, l.overlong));
            false
        });
        match out {
            Some((text, bare_lf, overlong)) => {
                let raw_len = self.carry_raw + used as u64;
                self.carry_raw = 0;
                self.carry_ts = None;
                let line = Framed {
                    text,
                    raw_len,
                    start_ts,
                    bare_lf,
                    overlong,
                };
                (used, Some(line))
            }
            None => {
                self.carry_raw += used as u64;
                if used > 0 {
                    self.carry_ts = Some(start_ts);
                }
                (used, None)
            }
        }
    }

    /// Forgets a partial line (after a gap).
    pub fn reset(&mut self) {
        self.lb.reset();
        self.carry_raw = 0;
        self.carry_ts = None;
    }

    /// Bytes of a line started but not finished.
    pub fn in_line(&self) -> bool {
        self.carry_raw > 0
    }
}

/// Bounded event queue with capped anomaly events.
#[derive(Debug, Default)]
pub struct Events {
    queue: VecDeque<Event>,
    anomalies: usize,
    /// Events dropped because the engine did not drain the queue.
    pub dropped: u64,
}

impl Events {
    pub fn push(&mut self, ev: Event) {
        if self.queue.len() >= MAX_EVENTS {
            self.dropped += 1;
            return;
        }
        self.queue.push_back(ev);
    }

    pub fn anomaly(&mut self, ts: Ts, id: &'static str) {
        if self.anomalies >= MAX_ANOMALY_EVENTS {
            return;
        }
        self.anomalies += 1;
        self.push(Event::Anomaly { ts, id });
    }

    pub fn pop(&mut self) -> Option<Event> {
        self.queue.pop_front()
    }
}

/// `commands`: per verb, how many were sent and how many failed, in order of
/// first use.
#[derive(Debug, Default)]
pub struct CommandStats {
    verbs: Vec<(String, u64, u64)>,
}

impl CommandStats {
    fn slot(&mut self, verb: &str) -> &mut (String, u64, u64) {
        let known = self.verbs.iter().position(|(v, _, _)| v == verb);
        let i = match known {
            Some(i) => i,
            None if self.verbs.len() < MAX_VERBS => {
                self.verbs.push((verb.to_string(), 0, 0));
                self.verbs.len() - 1
            }
            None => match self.verbs.iter().position(|(v, _, _)| v == "OTHER") {
                Some(i) => i,
                None => {
                    // OTHER is the one entry allowed past the cap.
                    self.verbs.push(("OTHER".to_string(), 0, 0));
                    self.verbs.len() - 1
                }
            },
        };
        &mut self.verbs[i]
    }

    pub fn sent(&mut self, verb: &str) {
        self.slot(verb).1 += 1;
    }

    pub fn failed(&mut self, verb: &str) {
        self.slot(verb).2 += 1;
    }

    pub fn to_json(&self) -> serde_json::Value {
        self.verbs
            .iter()
            .map(|(v, c, e)| serde_json::json!({"verb": v, "count": c, "errors": e}))
            .collect()
    }
}

/// A verb as shown: upper-cased printable ASCII, capped.
pub fn verb_of(word: &[u8]) -> String {
    word.iter()
        .take(MAX_VERB_LEN)
        .map(|&b| {
            if b.is_ascii_graphic() {
                b.to_ascii_uppercase() as char
            } else {
                '?'
            }
        })
        .collect()
}

/// Text of wire bytes: lossy UTF-8 (U+FFFD for bytes that are not), nothing else changed, as
/// SMTP keeps its lines. Control characters stay in the record (JSON escapes them); every
/// human output makes them printable at [`crate::output::printable`].
pub fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// TLS as seen by a mailbox dissector: whether and how the session turned to
/// TLS, and what the hellos revealed.
#[derive(Debug, Default)]
pub struct TlsTrack {
    pub mode: Option<&'static str>,
    hellos: TlsHellos,
    /// Plaintext from the uprobes replaces the TLS bytes.
    plaintext: bool,
}

impl TlsTrack {
    pub fn start(&mut self, mode: &'static str) {
        self.mode = Some(mode);
    }

    pub fn on(&self) -> bool {
        self.mode.is_some()
    }

    /// TLS began and its bytes (not plaintext) are what the dissector gets.
    pub fn hides_data(&self) -> bool {
        self.on() && !self.plaintext
    }

    /// See [`crate::proto::Dissector::resume_plaintext`].
    pub fn resume_plaintext(&mut self) -> bool {
        self.plaintext = self.on();
        self.plaintext
    }

    /// Bytes after the switch.
    pub fn feed(&mut self, dir: Dir, data: &[u8]) {
        self.hellos.data(dir, data);
    }

    pub fn gap(&mut self, dir: Dir) {
        self.hellos.gap(dir);
    }

    pub fn skipped(&mut self, dir: Dir) {
        self.hellos.skipped(dir);
    }

    /// A TLS ClientHello followed the switch.
    pub fn client_hello_seen(&self) -> bool {
        self.hellos.state().0 == super::tls::HelloState::Done
    }

    /// `tls`, `tls_mode`, `tls_info` of the record.
    pub fn record(&self, m: &mut serde_json::Map<String, serde_json::Value>) {
        let info = self.hellos.info();
        let known = info.sni.is_some()
            || info.version.is_some()
            || info.cipher.is_some()
            || info.failed.is_some();
        m.insert("tls".into(), self.on().into());
        m.insert("tls_mode".into(), self.mode.into());
        m.insert(
            "tls_info".into(),
            if known {
                // As SMTP's: `failed` only when the handshake failed.
                serde_json::to_value(info).unwrap_or_default()
            } else {
                serde_json::Value::Null
            },
        );
    }
}

/// What a mailbox session showed about credentials and TLS, for its findings.
#[derive(Debug, Default)]
pub struct TlsFacts {
    pub start: SessionStart,
    /// The first credential sent in clear, as shown ("USER/PASS", "LOGIN", "AUTH PLAIN").
    pub auth_clear: Option<String>,
    /// The reply that refused STLS/STARTTLS.
    pub refused: Option<String>,
    /// The credential finding to emit after the command that carried it.
    pub due: Option<Finding>,
}

impl TlsFacts {
    /// A credential was sent: when it is the first one in clear, its finding is due.
    pub fn credential(&mut self, what: String, tls: &TlsTrack, offered: Option<bool>, verb: &str) {
        if tls.on() || self.auth_clear.is_some() {
            return;
        }
        self.due = Some(findings::auth_in_clear(&what, verb, offered));
        self.auth_clear = Some(what);
    }

    /// The session's TLS and credential findings.
    pub fn findings(&self, tls: &TlsTrack, offered: Option<bool>, verb: &str) -> Vec<Finding> {
        let p = findings::TlsPicture {
            port: self.start.server.map(|s| s.port()),
            implicit: self.start.implicit_tls,
            offered,
            offered_before: self.start.tls_offered_before,
            refused: self.refused.clone(),
            started: tls.mode == Some("starttls"),
            client_hello: tls.client_hello_seen(),
            auth_in_clear: self.auth_clear.clone(),
        };
        let mut out = findings::tls_findings(&p, verb);
        if let Some(why) = tls.hellos.info().failed.as_deref() {
            out.push(findings::tls_handshake_failed(why));
        }
        out
    }
}

/// Latency from a command's last byte to its reply's first byte.
pub fn latency(cmd_end: Option<Ts>, reply_start: Ts) -> Option<u64> {
    cmd_end.map(|end| reply_start.saturating_sub(end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_handshake_is_a_finding_and_in_the_record() {
        let mut tls = TlsTrack::default();
        tls.start("starttls");
        tls.feed(
            Dir::ToServer,
            &crate::proto::tls::tests::client_hello("imap.example"),
        );
        // The server refuses the hello: a fatal handshake_failure alert in clear.
        tls.feed(Dir::ToClient, &[21, 3, 3, 0, 2, 2, 40]);
        let ids: Vec<String> = TlsFacts::default()
            .findings(&tls, Some(true), "STARTTLS")
            .iter()
            .map(|f| f.id.to_string())
            .collect();
        assert_eq!(ids, ["tls-handshake-failed"]);
        let mut m = serde_json::Map::new();
        tls.record(&mut m);
        assert_eq!(
            m["tls_info"],
            serde_json::json!({"sni": "imap.example", "version": null, "cipher": null,
                               "failed": "the server sent a fatal alert (handshake_failure)"})
        );
    }

    #[test]
    fn framer_reports_raw_length_and_start_time() {
        let mut f = Framer::default();
        let (used, l) = f.next(b"+OK hel", 10);
        assert_eq!((used, l.is_none()), (7, true));
        assert!(f.in_line());
        let (used, l) = f.next(b"lo\r\nNEXT", 20);
        assert_eq!(used, 4);
        let l = l.expect("line");
        assert_eq!(l.text, b"+OK hello");
        assert_eq!((l.raw_len, l.start_ts, l.bare_lf), (11, 10, false));
        let (used, l) = f.next(b"NEXT\n", 30);
        assert_eq!(used, 5);
        let l = l.expect("line");
        assert_eq!((l.raw_len, l.start_ts, l.bare_lf), (5, 30, true));
    }

    #[test]
    fn framer_counts_overlong_lines_exactly() {
        let mut f = Framer::default();
        let long = vec![b'a'; 20_000];
        assert!(f.next(&long, 1).1.is_none());
        let l = f.next(b"\r\n", 2).1.expect("line");
        assert_eq!(l.raw_len, 20_002);
        assert!(l.overlong);
        assert_eq!(l.start_ts, 1);
    }

    #[test]
    fn command_stats_cap_distinct_verbs() {
        let mut s = CommandStats::default();
        for i in 0..MAX_VERBS + 5 {
            s.sent(&format!("V{i}"));
        }
        s.failed("V0");
        let j = s.to_json();
        let arr = j.as_array().expect("array");
        assert_eq!(arr.len(), MAX_VERBS + 1);
        assert_eq!(arr[0]["errors"], 1);
        assert_eq!(arr[MAX_VERBS]["verb"], "OTHER");
        assert_eq!(arr[MAX_VERBS]["count"], 5);
    }

    #[test]
    fn lossy_keeps_controls_for_the_output_boundary() {
        assert_eq!(lossy(b"a\x1b[2Jb\xff"), "a\x1b[2Jb\u{fffd}");
        assert_eq!(verb_of(b"retr\x01"), "RETR?");
    }
}
