//! Outputs: the session tail, JSON lines, pcapng. Each output is a
//! [`crate::session::Sink`]; [`Outputs`] picks one from the command line.
pub mod filter;
pub mod jsonl;
pub mod pcapng;
pub mod printable;
pub mod tail;

use std::io::Write;

use crate::flow::Dir;
use crate::proto::Event;
use crate::session::{SessionInfo, SessionRecord, Sink};
use crate::time::Ts;

/// The output the operator chose (`--json`, `--summary`, or the tail).
pub enum Outputs<W: Write> {
    Tail(tail::Tail<W>),
    Json(jsonl::JsonLines<W>),
    Summary(tail::Summary<W>),
}

impl<W: Write> Outputs<W> {
    pub fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Outputs::Tail(t) => t.flush(),
            Outputs::Json(j) => j.flush(),
            Outputs::Summary(s) => s.flush(),
        }
    }

    /// What the run is, said once before any record: JSON lines begin with it (version,
    /// inputs, the privacy flags in force) so a saved file says how it was made; the human
    /// outputs say it on stderr instead.
    pub fn run(&mut self, line: &serde_json::Value) {
        if let Outputs::Json(j) = self {
            j.run(line);
        }
    }

    /// The first write error; after one, nothing more is written.
    pub fn error(&self) -> Option<&std::io::Error> {
        match self {
            Outputs::Tail(t) => t.error(),
            Outputs::Json(j) => j.error(),
            Outputs::Summary(s) => s.error(),
        }
    }
}

impl<W: Write> Sink for Outputs<W> {
    fn session_start(&mut self, info: &SessionInfo) {
        match self {
            Outputs::Tail(t) => t.session_start(info),
            Outputs::Json(j) => j.session_start(info),
            Outputs::Summary(s) => s.session_start(info),
        }
    }

    fn event(&mut self, info: &SessionInfo, ev: &Event) {
        match self {
            Outputs::Tail(t) => t.event(info, ev),
            Outputs::Json(j) => j.event(info, ev),
            Outputs::Summary(s) => s.event(info, ev),
        }
    }

    fn gap(&mut self, info: &SessionInfo, dir: Dir, len: u64, ts: Ts) {
        match self {
            Outputs::Tail(t) => t.gap(info, dir, len, ts),
            Outputs::Json(j) => j.gap(info, dir, len, ts),
            Outputs::Summary(_) => {}
        }
    }

    fn log(&mut self, session: crate::flow::ConnId, line: &crate::maillog::LogLine, late: bool) {
        match self {
            Outputs::Tail(t) => t.log(session, line, late),
            Outputs::Json(j) => j.log(session, line, late),
            Outputs::Summary(_) => {}
        }
    }

    fn unmatched(&mut self, line: &crate::maillog::LogLine, why: &str) {
        match self {
            Outputs::Tail(t) => t.unmatched(line, why),
            Outputs::Json(j) => j.unmatched(line, why),
            Outputs::Summary(_) => {}
        }
    }

    fn session_end(&mut self, info: &SessionInfo, rec: &SessionRecord) {
        match self {
            Outputs::Tail(t) => t.session_end(info, rec),
            Outputs::Json(j) => j.session_end(info, rec),
            Outputs::Summary(s) => s.session_end(info, rec),
        }
    }
}
