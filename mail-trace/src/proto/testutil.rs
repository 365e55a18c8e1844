//! Transcript helpers shared by the POP3 and IMAP dissectors' tests.
use serde_json::{Map, Value};

use crate::flow::Dir;
use crate::proto::{Dissector, Event};

pub(crate) const MS: u64 = 1_000_000;

/// Feeds a transcript to `d`, each step `chunk` bytes at a time (0: whole), one
/// millisecond per step, and returns the events and the record.
pub(crate) fn feed(
    mut d: impl Dissector,
    steps: &[(Dir, &[u8])],
    chunk: usize,
) -> (Vec<Event>, Map<String, Value>) {
    let mut events = Vec::new();
    for (i, (dir, bytes)) in steps.iter().enumerate() {
        let ts = (i as u64 + 1) * MS;
        let n = if chunk == 0 {
            bytes.len().max(1)
        } else {
            chunk
        };
        for c in bytes.chunks(n) {
            d.data(*dir, c, ts);
        }
        while let Some(e) = d.poll_event() {
            events.push(e);
        }
    }
    (events, d.record())
}

pub(crate) fn cmd(ts: u64, verb: &str, arg: &str) -> Event {
    Event::Command {
        ts: ts * MS,
        verb: verb.into(),
        arg: arg.into(),
    }
}

pub(crate) fn reply(ts: u64, code: &str, enh: Option<&str>, text: &str, lat: Option<u64>) -> Event {
    Event::Reply {
        ts: ts * MS,
        code: code.into(),
        enhanced: enh.map(Into::into),
        text: text.into(),
        latency_ns: lat.map(|l| l * MS),
    }
}
