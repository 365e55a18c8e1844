//! Loss-proof POP3 and IMAP (issue 16): every POP3/IMAP capture of the shared corpus and the
//! Dovecot captures of the test bed (`tests/fixtures/testbed/mbox_*.pcapng`), replayed in-process
//! with one packet dropped at a time and with every prefix cut (the tracer started late).
//!
//! The rule checked for every variant, session by session (a session is matched to the lossless
//! one by its client and server address; "events" are the command and reply events, IMAP's `*`
//! summary of untagged data left out: after a loss it is a smaller count, not a wrong one):
//! 1. **Privacy**: no secret (PASS/APOP argument, LOGIN password, SASL response and its decoded
//!    parts, found in the lossless capture's streams independently of the dissectors) and no body
//!    line (a line of a POP3 RETR/TOP body, of an IMAP literal in either direction: its first
//!    [`BODY_PREFIX`] bytes, lines under [`MIN_BODY_LINE`] bytes left out) appears in any default
//!    output: the human tail, `--summary`, `--json`, `--json --events`.
//! 2. **No panic.**
//! 3. **Nothing wrong**: the variant's events (verb and argument; code, response code and text)
//!    are a subsequence of the lossless session's, each at the lossless time, with the lossless
//!    latency or none. Where the dropped packet's bytes come again in a retransmission of the
//!    capture, nothing is lost but they arrive later: time and latency are not compared then. The
//!    record's `user`, `auth` (each field it has), `greeting`, `tls_mode`, `capa` and `mailbox`,
//!    when the variant has them, are the lossless values; its `retrieved`/`top`/`fetched`/
//!    `appended` counts are at most the lossless ones (`capabilities` is the last list seen, which
//!    a loss can make an earlier one).
//! 4. **Nothing else lost**: the lossless events before the dropped packet's time are the
//!    variant's first events, unchanged (drops; a cut has no "before"). From the resynchronisation
//!    point on, every lossless event is in the variant, in order: the point is the first command
//!    after the first final reply (not a `+` continuation) at or after the lost packet's time.
//!    So the exchange in flight across the loss and its reply may be missing or unpaired, no
//!    more. A `+` continuation and a BYE/PREAUTH before the next completion after that point are
//!    not required (IMAP holds client lines after a loss until a completion names one).
//! 5. **Lossless is unchanged**: with nothing dropped the four outputs are byte-identical to a
//!    second run and, for the corpus, to what `mail-trace replay` wrote at the commit this work
//!    started from (`tests/fixtures/golden/mailbox/`).
//!
//! The number of variants is printed.
//!
//! `dovecot_sessions_lossy` (root) records the Dovecot sessions live in the test bed and runs the
//! same check on that capture; with `MT_WRITE_FIXTURES=1` it also writes them as the
//! `mbox_*.pcapng` fixtures the fast test reads.
mod common;
use std::cell::RefCell;
use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use base64::Engine as _;
use mail_trace::capture::pcap::PcapSource;
use mail_trace::capture::Frame;
use mail_trace::flow::Dir;
use mail_trace::output::jsonl::JsonLines;
use mail_trace::output::tail::{Style, Summary, Tail};
use mail_trace::output::Outputs;
use mail_trace::proto::{Event, Privacy};
use mail_trace::session::{Engine, EngineConfig, SessionInfo, SessionRecord, Sink};
use mail_trace::time::Ts;
use serde_json::Value;

/// Shorter body lines are not looked for (a blank line or `OK` is in every output).
const MIN_BODY_LINE: usize = 8;
/// How much of a body line is looked for.
const BODY_PREFIX: usize = 16;

/// The corpus' POP3 and IMAP captures (MANIFEST.md); the TLS-only ones are in too (their clear
/// part is the greeting at most, and a loss must not make them leak either).
const CORPUS: &[&str] = &[
    "zeek/traces/pop3-unknown-commands.pcap",
    "zeek/traces/tls/imap-starttls.pcap",
    "arkime/tests/pcap/imap-tag.pcap",
    "arkime/tests/pcap/pop3-tag.pcap",
    "ndpi/pcap/imap.pcap",
    "ndpi/pcap/imaps.pcap",
    "ndpi/pcap/pop3_stls.pcap",
];

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus/pcaps")
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/testbed")
}

#[derive(Clone, Default)]
struct Buf(Rc<RefCell<Vec<u8>>>);

impl Write for Buf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.borrow_mut().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

type Events = Vec<(SessionInfo, Vec<Event>, Option<SessionRecord>)>;

/// The four default outputs and the typed events, from one engine run.
#[derive(Default)]
struct Fan {
    outs: Vec<Outputs<Buf>>,
    bufs: Vec<Buf>,
    sessions: Events,
}

impl Fan {
    fn new(privacy: Privacy) -> Fan {
        let bufs: Vec<Buf> = (0..4).map(|_| Buf::default()).collect();
        let style = Style {
            color: false,
            explain: true,
        };
        let outs = vec![
            Outputs::Tail(Tail::new(bufs[0].clone(), style, privacy)),
            Outputs::Summary(Summary::new(bufs[1].clone())),
            Outputs::Json(JsonLines::new(bufs[2].clone(), false)),
            Outputs::Json(JsonLines::new(bufs[3].clone(), true)),
        ];
        Fan {
            outs,
            bufs,
            sessions: Vec::new(),
        }
    }

    fn idx(&self, info: &SessionInfo) -> usize {
        self.sessions
            .iter()
            .position(|(i, _, _)| i.id == info.id)
            .expect("event for a session that never started")
    }

    fn texts(&mut self) -> Vec<String> {
        for o in &mut self.outs {
            o.flush().expect("flush");
        }
        self.bufs
            .iter()
            .map(|b| String::from_utf8_lossy(&b.0.borrow()).into_owned())
            .collect()
    }
}

impl Sink for Fan {
    fn session_start(&mut self, info: &SessionInfo) {
        self.sessions.push((info.clone(), Vec::new(), None));
        self.outs.iter_mut().for_each(|o| o.session_start(info));
    }
    fn event(&mut self, info: &SessionInfo, ev: &Event) {
        let i = self.idx(info);
        self.sessions[i].1.push(ev.clone());
        self.outs.iter_mut().for_each(|o| o.event(info, ev));
    }
    fn gap(&mut self, info: &SessionInfo, dir: Dir, len: u64, ts: Ts) {
        self.outs.iter_mut().for_each(|o| o.gap(info, dir, len, ts));
    }
    fn session_end(&mut self, info: &SessionInfo, rec: &SessionRecord) {
        let i = self.idx(info);
        self.sessions[i].2 = Some(rec.clone());
        self.outs.iter_mut().for_each(|o| o.session_end(info, rec));
    }
}

fn frames(path: &Path) -> Vec<Frame> {
    let mut src = PcapSource::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut v = Vec::new();
    while let Some(f) = src.next_frame() {
        v.push(f.unwrap_or_else(|e| panic!("{}: {e}", path.display())));
    }
    v
}

fn replay<'a>(frames: impl Iterator<Item = &'a Frame>, privacy: Privacy) -> Fan {
    let mut engine = Engine::new(EngineConfig {
        privacy,
        ..Default::default()
    });
    let mut fan = Fan::new(privacy);
    let (mut last, mut last_tick) = (0, 0);
    for f in frames {
        last = last.max(f.ts);
        engine.frame(f, &mut fan);
        // As `mail-trace replay` does: idle sessions are looked for every second of capture.
        if last >= last_tick + 1_000_000_000 {
            engine.tick(last, &mut fan);
            last_tick = last;
        }
    }
    engine.finish(last, &mut fan);
    fan
}

/// (sender, receiver) of one direction.
type Endpoints = (SocketAddr, SocketAddr);

/// The TCP payload of each direction of each connection, in sequence order (the captures are
/// clean: duplicates are retransmissions of the same bytes).
fn streams(frames: &[Frame]) -> HashMap<Endpoints, Vec<u8>> {
    let mut parts: HashMap<Endpoints, Vec<(u32, Vec<u8>)>> = HashMap::new();
    for f in frames {
        let Ok(Some(seg)) = mail_trace::wire::decode(f) else {
            continue;
        };
        if !seg.payload.is_empty() {
            parts
                .entry((seg.src, seg.dst))
                .or_default()
                .push((seg.seq, seg.payload.to_vec()));
        }
    }
    parts
        .into_iter()
        .map(|(k, mut v)| {
            let base = v[0].0;
            v.sort_by_key(|(s, _)| s.wrapping_sub(base));
            let mut out: Vec<u8> = Vec::new();
            let mut next = 0u32;
            for (s, d) in v {
                let off = s.wrapping_sub(base);
                let end = off.wrapping_add(d.len() as u32);
                if end <= next {
                    continue;
                }
                let skip = next.saturating_sub(off) as usize;
                out.extend_from_slice(&d[skip..]);
                next = end;
            }
            (k, out)
        })
        .collect()
}

fn lines(b: &[u8]) -> Vec<&[u8]> {
    b.split(|&c| c == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .collect()
}

/// What must never be shown: secrets and body lines, found in the lossless streams
/// independently of the dissectors.
#[derive(Debug, Default)]
struct Hidden {
    secrets: Vec<String>,
    body: Vec<String>,
}

impl Hidden {
    fn secret(&mut self, s: &[u8]) {
        let s = String::from_utf8_lossy(s).trim().to_string();
        if s.len() >= 4 && s != "*" {
            if let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(&s) {
                for part in raw.split(|&b| b == 0 || b == 1) {
                    let p = String::from_utf8_lossy(part).to_string();
                    // The user name is shown (it is the record's `user`); a part that is a
                    // password is longer than a PLAIN authzid.
                    if p.len() >= 6 && !self.secrets.contains(&p) && !p.contains('@') {
                        self.secrets.push(p);
                    }
                }
            }
            self.secrets.push(s);
        }
    }
    /// A body line is looked for by its first [`BODY_PREFIX`] bytes (a long message's lines
    /// that share them are looked for once), and without its first word.
    fn body_line(&mut self, l: &[u8]) {
        let l = String::from_utf8_lossy(l).trim().to_string();
        // Read as an IMAP command, a line loses its first word (the tag): its rest is looked for
        // too, when long enough not to be a name shown anyway.
        if let Some((_, rest)) = l.split_once(' ') {
            if rest.trim().len() >= BODY_PREFIX {
                self.body_text(rest.trim());
            }
        }
        self.body_text(&l);
    }

    fn body_text(&mut self, l: &str) {
        if l.len() >= MIN_BODY_LINE {
            let mut end = l.len().min(BODY_PREFIX);
            while !l.is_char_boundary(end) {
                end -= 1;
            }
            let p = l[..end].to_string();
            if !self.body.contains(&p) {
                self.body.push(p);
            }
        }
    }
}

fn pop3_hidden(client: &[u8], server: &[u8], h: &mut Hidden) {
    let mut cmds: Vec<String> = Vec::new();
    let mut sasl = false;
    for l in lines(client) {
        let up = String::from_utf8_lossy(l).to_ascii_uppercase();
        let mut w = up.split(' ');
        let verb = w.next().unwrap_or_default().to_string();
        let known = [
            "USER", "PASS", "APOP", "AUTH", "STLS", "CAPA", "STAT", "LIST", "UIDL", "RETR", "TOP",
            "DELE", "RSET", "NOOP", "QUIT",
        ];
        if sasl && !known.contains(&verb.as_str()) {
            h.secret(l);
            continue;
        }
        match verb.as_str() {
            "PASS" => h.secret(&l[5.min(l.len())..]),
            "APOP" => {
                if let Some(d) = l.rsplit(|&b| b == b' ').next() {
                    h.secret(d)
                }
            }
            "AUTH" => {
                let parts: Vec<&[u8]> = l.split(|&b| b == b' ').collect();
                if parts.len() >= 3 {
                    h.secret(parts[2]);
                }
                sasl = parts.len() >= 2;
                cmds.push(verb);
                continue;
            }
            _ => {}
        }
        sasl = false;
        cmds.push(verb);
    }
    // Replies in order; AUTH challenges (`+ `) do not consume a command.
    let mut q = cmds.into_iter();
    let mut in_body = false;
    // The first status line is the greeting.
    for l in lines(server).into_iter().skip(1) {
        if in_body {
            if l == b"." {
                in_body = false;
            } else {
                h.body_line(l);
            }
            continue;
        }
        let ok = l.starts_with(b"+OK");
        if ok || l.starts_with(b"-ERR") {
            let Some(c) = q.next() else { continue };
            in_body = ok && (c == "RETR" || c == "TOP");
        }
    }
}

/// IMAP: literals of both directions are bodies, except the LOGIN password's; LOGIN passwords
/// and AUTHENTICATE responses are secrets.
fn imap_hidden(client: &[u8], server: &[u8], h: &mut Hidden) {
    for (dir, data) in [(0, client), (1, server)] {
        let mut i = 0;
        let mut sasl = false;
        let mut login: Option<usize> = None;
        while i < data.len() {
            let end = data[i..]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(data.len(), |p| i + p + 1);
            let line = &data[i..end];
            let text = line.strip_suffix(b"\n").unwrap_or(line);
            let text = text.strip_suffix(b"\r").unwrap_or(text);
            i = end;
            let up = String::from_utf8_lossy(text).to_ascii_uppercase();
            let words: Vec<&str> = up.split(' ').collect();
            if dir == 0 {
                if sasl {
                    if words.len() >= 2 && !text.is_empty() && words[0] != "*" {
                        sasl = false;
                    } else {
                        h.secret(text);
                        continue;
                    }
                }
                if words.get(1) == Some(&"AUTHENTICATE") {
                    if let Some(ir) = text.split(|&b| b == b' ').nth(3) {
                        h.secret(ir);
                    }
                    sasl = true;
                }
                if words.get(1) == Some(&"LOGIN") {
                    login = Some(0);
                    let parts: Vec<&[u8]> = text.split(|&b| b == b' ').collect();
                    if parts.len() == 4 && !parts[3].starts_with(b"{") {
                        let p = parts[3];
                        h.secret(
                            p.strip_prefix(b"\"")
                                .unwrap_or(p)
                                .strip_suffix(b"\"")
                                .unwrap_or(p),
                        );
                    }
                }
            }
            if let Some(n) = literal_len(text) {
                let lit = &data[i.min(data.len())..(i + n).min(data.len())];
                i += n;
                match login.as_mut() {
                    // The second literal of a LOGIN is the password.
                    Some(k) if dir == 0 => {
                        if *k == 1 {
                            h.secret(lit);
                        }
                        *k += 1;
                    }
                    _ => {
                        for l in lines(lit) {
                            h.body_line(l);
                        }
                    }
                }
            } else if dir == 0 {
                login = None;
            }
        }
    }
}

fn literal_len(line: &[u8]) -> Option<usize> {
    let l = line.strip_suffix(b"}")?;
    let open = l.iter().rposition(|&b| b == b'{')?;
    let n = l[open + 1..].strip_suffix(b"+").unwrap_or(&l[open + 1..]);
    std::str::from_utf8(n).ok()?.parse().ok()
}

fn hidden(frames: &[Frame], info: &SessionInfo) -> Hidden {
    let st = streams(frames);
    let c = st
        .get(&(info.client, info.server))
        .cloned()
        .unwrap_or_default();
    let s = st
        .get(&(info.server, info.client))
        .cloned()
        .unwrap_or_default();
    let mut h = Hidden::default();
    match info.proto {
        mail_trace::proto::Proto::Pop3 => pop3_hidden(&c, &s, &mut h),
        mail_trace::proto::Proto::Imap => imap_hidden(&c, &s, &mut h),
        mail_trace::proto::Proto::Smtp => {}
    }
    h
}

/// A command or reply as compared (timestamps aside).
#[derive(Clone, Debug, PartialEq)]
enum Said {
    C(String, String),
    R(String, Option<String>, String),
}

fn said(ev: &[Event]) -> Vec<(Ts, Said, Option<u64>)> {
    ev.iter()
        .filter_map(|e| match e {
            // IMAP's summary of untagged data counts what was seen: after a loss it is a
            // smaller count, not a wrong one; it is not compared.
            Event::Reply { code, .. } if code == "*" => None,
            Event::Command { ts, verb, arg } => {
                Some((*ts, Said::C(verb.clone(), arg.clone()), None))
            }
            Event::Reply {
                ts,
                code,
                enhanced,
                text,
                latency_ns,
            } => Some((
                *ts,
                Said::R(code.clone(), enhanced.clone(), text.clone()),
                *latency_ns,
            )),
            _ => None,
        })
        .collect()
}

struct Variant<'a> {
    what: String,
    frames: Vec<&'a Frame>,
    /// Time of the first packet lost (dropped, or the first one kept after a cut).
    lost_at: Ts,
    cut: bool,
    /// The dropped packet's bytes are in a later retransmission: nothing is lost, but they
    /// arrived later than in the lossless capture (so did a reply they carried).
    recovered: bool,
}

fn check(
    name: &str,
    base: &Fan,
    hide: &HashMap<u64, Hidden>,
    v: &Variant<'_>,
    failures: &mut Vec<String>,
) {
    let mut fan = replay(v.frames.iter().copied(), Privacy::default());
    let texts = fan.texts();
    let tag = format!("{name} {}", v.what);
    for (info, _, _) in &base.sessions {
        let h = &hide[&info.id];
        for (o, t) in ["tail", "summary", "json", "events"].iter().zip(&texts) {
            for s in &h.secrets {
                if t.contains(s.as_str()) {
                    failures.push(format!("{tag}: secret {s:?} in {o}"));
                }
            }
            for b in &h.body {
                if t.contains(b.as_str()) {
                    failures.push(format!("{tag}: body line {b:?} in {o}"));
                }
            }
        }
    }
    for (info, ev, rec) in &fan.sessions {
        let Some((_, lev, lrec)) = base
            .sessions
            .iter()
            .find(|(i, _, _)| i.client == info.client && i.server == info.server)
        else {
            continue;
        };
        let l = said(lev);
        let got = said(ev);
        if std::env::var("LOSSY_DEBUG").is_ok_and(|d| d == tag) {
            println!("lossless: {lev:#?}\nvariant: {ev:#?}");
        }
        // 3: a subsequence, latencies equal or absent.
        let mut j = 0;
        for (ts, s, lat) in &got {
            while j < l.len() && l[j].1 != *s {
                j += 1;
            }
            if j == l.len() {
                failures.push(format!(
                    "{tag}: {s:?} at {ts} is not in the lossless session (or out of order)"
                ));
                break;
            }
            if *ts != l[j].0 && !v.recovered {
                failures.push(format!("{tag}: {s:?} at {ts}, lossless at {}", l[j].0));
            }
            if lat.is_some() && *lat != l[j].2 && !v.recovered {
                failures.push(format!(
                    "{tag}: {s:?} latency {lat:?}, lossless {:?}",
                    l[j].2
                ));
            }
            j += 1;
        }
        // 4: the prefix before the loss, and everything from the resynchronisation point.
        if !v.cut {
            let before: Vec<_> = l.iter().filter(|e| e.0 < v.lost_at).collect();
            for (k, e) in before.iter().enumerate() {
                if got.get(k).map(|g| (&g.1, g.2)) != Some((&e.1, e.2)) {
                    failures.push(format!(
                        "{tag}: before the loss, event {k} {:?} became {:?}",
                        e.1,
                        got.get(k).map(|g| &g.1)
                    ));
                    break;
                }
            }
        }
        // A `+` challenge is not a final reply: the SASL exchange across a loss is not whole.
        let reply_after = l
            .iter()
            .position(|e| e.0 >= v.lost_at && matches!(&e.1, Said::R(c, _, _) if c != "+"));
        let resync =
            reply_after.and_then(|r| (r + 1..l.len()).find(|&k| matches!(l[k].1, Said::C(..))));
        if let Some(r) = resync {
            // Two kinds of reply can only be placed once a later completion confirms the
            // command (IMAP holds client lines after a loss): `+` continuations, and an
            // untagged BYE/PREAUTH that came before the first completion.
            let late = |c: &str| c == "+" || c == "BYE" || c == "PREAUTH";
            let done = (r..l.len())
                .find(|&k| matches!(&l[k].1, Said::R(c, _, _) if !late(c)))
                .unwrap_or(l.len());
            let tail: Vec<&Said> = l[r..]
                .iter()
                .enumerate()
                .filter(|(k, e)| match &e.1 {
                    Said::R(c, _, _) => c != "+" && !(late(c) && r + k < done),
                    Said::C(..) => true,
                })
                .map(|(_, e)| &e.1)
                .collect();
            let mut gi = got.iter().map(|g| &g.1).peekable();
            let mut missing = None;
            for want in &tail {
                loop {
                    match gi.next() {
                        Some(g) if g == *want => break,
                        Some(_) => continue,
                        None => {
                            missing = Some(*want);
                            break;
                        }
                    }
                }
                if missing.is_some() {
                    break;
                }
            }
            if let Some(m) = missing {
                failures.push(format!("{tag}: after resync, {m:?} is missing"));
            }
        }
        if let (Some(r), Some(lr)) = (rec, lrec) {
            for f in ["user", "auth", "greeting", "tls_mode", "capa", "mailbox"] {
                let (a, b) = (r.field(f), lr.field(f));
                let empty = |x: Option<&Value>| {
                    x.is_none_or(|x| x.is_null() || x.as_array().is_some_and(|a| a.is_empty()))
                };
                // An object agrees when every field it knows agrees (a lost USER leaves
                // `auth.user` null).
                let agrees = match (a, b) {
                    (Some(Value::Object(x)), Some(Value::Object(y))) => {
                        x.iter().all(|(k, v)| v.is_null() || y.get(k) == Some(v))
                    }
                    _ => a == b,
                };
                if !empty(a) && !agrees {
                    failures.push(format!("{tag}: record {f} {a:?}, lossless {b:?}"));
                }
            }
            for (f, keys) in [
                ("retrieved", ["messages", "bytes"]),
                ("top", ["messages", "bytes"]),
                ("fetched", ["responses", "bytes"]),
                ("appended", ["messages", "bytes"]),
            ] {
                for k in keys {
                    let n = |x: Option<&Value>| x.and_then(|x| x[k].as_u64()).unwrap_or(0);
                    if n(r.field(f)) > n(lr.field(f)) {
                        failures.push(format!(
                            "{tag}: record {f}.{k} {} > lossless {}",
                            n(r.field(f)),
                            n(lr.field(f))
                        ));
                    }
                }
            }
        }
    }
}

/// All variants of one capture; returns how many were checked.
fn run_capture(name: &str, path: &Path, failures: &mut Vec<String>) -> usize {
    let all = frames(path);
    let base = replay(all.iter(), Privacy::default());
    let mut again = replay(all.iter(), Privacy::default());
    let mut base_texts = replay(all.iter(), Privacy::default());
    let lossless = base_texts.texts();
    assert_eq!(lossless, again.texts(), "{name}: lossless runs differ");
    // The corpus' lossless outputs are those mail-trace gave before the loss-proofing (written
    // by `mail-trace replay` at the commit this branch started from, run line left out).
    let golden = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/golden/mailbox")
        .join(name.trim_end_matches(".pcap").replace('/', "_"));
    if CORPUS.contains(&name) {
        for (ext, got) in ["tail.txt", "summary.txt", "json", "events.json"]
            .iter()
            .zip(&lossless)
        {
            let file = format!("{}.{ext}", golden.display());
            let want = std::fs::read_to_string(&file)
                .unwrap_or_else(|e| panic!("{name} golden {ext}: {e}"));
            assert_eq!(got, &want, "{name}: lossless {ext} changed");
        }
    }
    let mut hide = HashMap::new();
    for (info, _, rec) in &base.sessions {
        let mut h = hidden(&all, info);
        // A password that is part of the user name ("zeek" of zeek@zeek.org) is shown with it.
        let user = rec
            .as_ref()
            .and_then(|r| r.field("user"))
            .and_then(Value::as_str);
        h.secrets
            .retain(|s| !user.is_some_and(|u| u.contains(s.as_str())));
        hide.insert(info.id, h);
    }
    // The lossless outputs must already keep them hidden.
    let mut n = 0;
    let mut variants = Vec::new();
    variants.push(Variant {
        what: "lossless".into(),
        frames: all.iter().collect(),
        lost_at: Ts::MAX,
        cut: false,
        recovered: false,
    });
    for i in 0..all.len() {
        variants.push(Variant {
            what: format!("drop #{}", i + 1),
            frames: all
                .iter()
                .enumerate()
                .filter(|(k, _)| *k != i)
                .map(|(_, f)| f)
                .collect(),
            lost_at: all[i].ts,
            cut: false,
            recovered: retransmitted(&all, i),
        });
    }
    for i in 1..all.len() {
        variants.push(Variant {
            what: format!("cut before #{}", i + 1),
            frames: all[i..].iter().collect(),
            lost_at: all[i].ts,
            cut: true,
            recovered: false,
        });
    }
    for v in &variants {
        check(name, &base, &hide, v, failures);
        n += 1;
    }
    n
}

/// Frame `i` carries payload that another frame carries too (a retransmission).
fn retransmitted(all: &[Frame], i: usize) -> bool {
    let key = |f: &Frame| {
        mail_trace::wire::decode(f)
            .ok()
            .flatten()
            .filter(|s| !s.payload.is_empty())
            .map(|s| (s.src, s.seq, s.payload.to_vec()))
    };
    let Some(k) = key(&all[i]) else { return false };
    all.iter()
        .enumerate()
        .any(|(j, f)| j != i && key(f).is_some_and(|o| o.0 == k.0 && o.1 == k.1))
}

fn inputs() -> Vec<(String, PathBuf)> {
    let mut v: Vec<(String, PathBuf)> = CORPUS
        .iter()
        .map(|c| (c.to_string(), corpus().join(c)))
        .collect();
    let mut fx: Vec<PathBuf> = std::fs::read_dir(fixtures())
        .expect("fixtures")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("mbox_") && n.ends_with(".pcapng"))
        })
        .collect();
    fx.sort();
    for p in fx {
        let n = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        v.push((n, p));
    }
    v
}

/// Written to the process's stderr, past the test harness's capture, so that a passing run in CI
/// shows how many variants it checked.
fn said_always(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

#[test]
fn every_dropped_packet_and_cut_prefix() {
    let mut failures = Vec::new();
    let mut total = 0;
    for (name, path) in inputs() {
        let n = run_capture(&name, &path, &mut failures);
        println!("{name}: {n} variants");
        total += n;
    }
    said_always(&format!(
        "lossy_mailbox: {total} variants, {} failures",
        failures.len()
    ));
    let mut shown: Vec<&String> = Vec::new();
    let mut per: HashMap<&str, usize> = HashMap::new();
    for f in &failures {
        let c = per
            .entry(f.split(' ').next().unwrap_or_default())
            .or_default();
        *c += 1;
        if *c <= 40 {
            shown.push(f);
        }
    }
    println!("{per:?}");
    assert!(
        failures.is_empty(),
        "{} failures:\n{shown:#?}",
        failures.len()
    );
}

/// A line-oriented client for IMAP and POP3 in clear; every read bounded.
struct Raw {
    reader: std::io::BufReader<std::net::TcpStream>,
    writer: std::net::TcpStream,
    local: SocketAddr,
}

const IO_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);
const USER: &str = "alice@mx.test";

/// Delivered to alice before the mailbox sessions; its lines are body lines.
const MESSAGE: &[u8] = b"From: sender@client.test\r\nTo: alice@mx.test\r\nSubject: private subject of the lossy test\r\n\r\n\
    First private line of the lossy mailbox test.\r\n..A private line that starts with a dot.\r\n+OK a private line that looks like a status\r\n\
    * OK a private line that looks untagged\r\na9 OK a private line that looks tagged\r\nLast private line.\r\n";

/// A message of many segments in either direction (APPEND, FETCH, RETR): a loss lands inside
/// a literal or a body.
fn big_message() -> Vec<u8> {
    let mut m = b"From: alice@mx.test\r\nSubject: a big private message\r\n\r\n".to_vec();
    for i in 0..1500 {
        m.extend_from_slice(
            format!("Big private line {i:04} of a long message, padded to about seventy.\r\n")
                .as_bytes(),
        );
        if i % 300 == 7 {
            m.extend_from_slice(
                b"* OK big private line that looks untagged\r\n+OK big private line\r\n",
            );
        }
    }
    m
}

/// Appended by IMAP APPEND: a client-side literal.
const APPENDED: &[u8] = b"From: alice@mx.test\r\nSubject: appended private subject\r\n\r\nAppended private body line one.\r\nz1 LOGOUT is a private body line\r\n";

impl Raw {
    fn connect(server: SocketAddr) -> Raw {
        let s = std::net::TcpStream::connect_timeout(&server, IO_TIMEOUT)
            .unwrap_or_else(|e| panic!("connect to {server}: {e}"));
        s.set_read_timeout(Some(IO_TIMEOUT)).expect("read timeout");
        Raw {
            local: s.local_addr().expect("local addr"),
            reader: std::io::BufReader::new(s.try_clone().expect("clone socket")),
            writer: s,
        }
    }

    fn line(&mut self) -> String {
        use std::io::BufRead;
        let mut l = String::new();
        let n = self.reader.read_line(&mut l).expect("read");
        assert!(n > 0, "server closed the connection");
        l.trim_end_matches(['\r', '\n']).to_string()
    }

    fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).expect("write");
    }

    /// Reads up to the tagged completion of `tag`, skipping literals; returns it.
    fn until_tag(&mut self, tag: &str) -> String {
        use std::io::Read;
        loop {
            let l = self.line();
            if let Some(n) = literal_len(l.as_bytes()) {
                let mut buf = vec![0; n];
                self.reader.read_exact(&mut buf).expect("literal");
                continue;
            }
            if l.starts_with(&format!("{tag} ")) {
                return l;
            }
        }
    }

    fn imap(&mut self, tag: &str, command: &str) -> String {
        self.send(format!("{tag} {command}\r\n").as_bytes());
        self.until_tag(tag)
    }

    /// POP3: a status line, then the body when `multi` and +OK.
    fn pop(&mut self, multi: bool) -> String {
        let status = self.line();
        if multi && status.starts_with("+OK") {
            while self.line() != "." {}
        }
        status
    }

    fn drain(mut self) {
        use std::io::Read;
        let mut rest = Vec::new();
        let _ = self.reader.read_to_end(&mut rest);
    }
}

/// Delivers MESSAGE to alice through Postfix and points Dovecot's Maildir for alice at it.
fn deliver(tb: &common::Testbed) {
    let (_, id) = common::clients::RawSmtp::send_mail(
        SocketAddr::new(tb.ns.server_v4().into(), 25),
        None,
        USER,
        MESSAGE,
    );
    common::wait_for(IO_TIMEOUT, "delivery to alice's Maildir", || {
        tb.postfix
            .log()
            .lines()
            .any(|l| l.contains(&format!("{id}: to=<{USER}>")) && l.contains("status=sent"))
            .then_some(())
    });
    let postfix_maildir = tb.dir.path().join("postfix/mail/mx.test/alice");
    let home = common::mkdir(&tb.dir.path().join("dovecot/mail/alice"));
    common::chown(&home, "5000:5000");
    std::os::unix::fs::symlink(&postfix_maildir, home.join("Maildir")).expect("symlink Maildir");
}

/// The Dovecot sessions, each on its own connection: (fixture name, client address).
fn dovecot_sessions(srv: std::net::IpAddr) -> Vec<(&'static str, SocketAddr)> {
    let pw = common::PASSWORD;
    let plain = base64::engine::general_purpose::STANDARD.encode(format!("\0{USER}\0{pw}"));
    let mut out = Vec::new();
    let imap = SocketAddr::new(srv, 143);
    let pop = SocketAddr::new(srv, 110);

    // LOGIN with the password as a synchronising literal, FETCH (server literal), APPEND
    // (client literal), a FETCH of the appended message.
    let mut c = Raw::connect(imap);
    c.line();
    assert!(c.imap("a1", "CAPABILITY").starts_with("a1 OK"));
    c.send(format!("a2 LOGIN {USER} {{{}}}\r\n", pw.len()).as_bytes());
    assert!(c.line().starts_with('+'));
    c.send(format!("{pw}\r\n").as_bytes());
    assert!(c.until_tag("a2").starts_with("a2 OK"));
    assert!(c.imap("a3", "SELECT INBOX").starts_with("a3 OK"));
    assert!(c.imap("a4", "FETCH 1 (FLAGS BODY[])").starts_with("a4 OK"));
    c.send(format!("a5 APPEND INBOX {{{}}}\r\n", APPENDED.len()).as_bytes());
    assert!(c.line().starts_with('+'));
    c.send(APPENDED);
    c.send(b"\r\n");
    assert!(c.until_tag("a5").starts_with("a5 OK"));
    assert!(c
        .imap("a6", "FETCH 2 (BODY.PEEK[TEXT])")
        .starts_with("a6 OK"));
    let big = big_message();
    c.send(format!("a6b APPEND INBOX {{{}}}\r\n", big.len()).as_bytes());
    assert!(c.line().starts_with('+'));
    c.send(&big);
    c.send(b"\r\n");
    assert!(c.until_tag("a6b").starts_with("a6b OK"));
    assert!(c.imap("a6c", "FETCH 3 (BODY.PEEK[])").starts_with("a6c OK"));
    assert!(c.imap("a7", "LOGOUT").starts_with("a7 OK"));
    out.push(("mbox_imap_login_literal", c.local));
    c.drain();

    // AUTHENTICATE PLAIN with a continuation, pipelined SELECT + FETCH in one write.
    let mut c = Raw::connect(imap);
    c.line();
    c.send(b"b1 AUTHENTICATE PLAIN\r\n");
    assert!(c.line().starts_with('+'));
    c.send(format!("{plain}\r\n").as_bytes());
    assert!(c.until_tag("b1").starts_with("b1 OK"));
    c.send(
        b"b2 SELECT INBOX\r\nb3 FETCH 1:* (BODY.PEEK[HEADER.FIELDS (SUBJECT)] BODY.PEEK[TEXT])\r\n",
    );
    assert!(c.until_tag("b2").starts_with("b2 OK"));
    assert!(c.until_tag("b3").starts_with("b3 OK"));
    assert!(c.imap("b4", "LOGOUT").starts_with("b4 OK"));
    out.push(("mbox_imap_authenticate_plain", c.local));
    c.drain();

    // LOGIN in clear (quoted password), FETCH, LOGOUT.
    let mut c = Raw::connect(imap);
    c.line();
    assert!(c
        .imap("c1", &format!("LOGIN {USER} \"{pw}\""))
        .starts_with("c1 OK"));
    assert!(c.imap("c2", "EXAMINE INBOX").starts_with("c2 OK"));
    assert!(c
        .imap("c3", "UID FETCH 1 (BODY.PEEK[])")
        .starts_with("c3 OK"));
    assert!(c.imap("c4", "LOGOUT").starts_with("c4 OK"));
    out.push(("mbox_imap_login_quoted", c.local));
    c.drain();

    // POP3 USER/PASS, LIST, UIDL, RETR, TOP, QUIT.
    let mut c = Raw::connect(pop);
    c.line();
    c.send(b"CAPA\r\n");
    assert!(c.pop(true).starts_with("+OK"));
    c.send(format!("USER {USER}\r\n").as_bytes());
    assert!(c.pop(false).starts_with("+OK"));
    c.send(format!("PASS {pw}\r\n").as_bytes());
    assert!(c.pop(false).starts_with("+OK"));
    for (cmd, multi) in [
        ("STAT", false),
        ("LIST", true),
        ("UIDL", true),
        ("RETR 1", true),
        ("TOP 2 1", true),
        ("RETR 2", true),
        ("RETR 3", true),
    ] {
        c.send(format!("{cmd}\r\n").as_bytes());
        assert!(c.pop(multi).starts_with("+OK"), "{cmd}");
    }
    c.send(b"QUIT\r\n");
    c.pop(false);
    out.push(("mbox_pop3_user_pass", c.local));
    c.drain();

    // POP3 AUTH PLAIN with a continuation; pipelined LIST + RETR + RETR in one write.
    let mut c = Raw::connect(pop);
    c.line();
    c.send(b"AUTH PLAIN\r\n");
    assert!(c.line().starts_with('+'));
    c.send(format!("{plain}\r\n").as_bytes());
    assert!(c.pop(false).starts_with("+OK"));
    c.send(b"LIST 1\r\nRETR 1\r\nRETR 2\r\n");
    assert!(c.pop(false).starts_with("+OK"));
    assert!(c.pop(true).starts_with("+OK"));
    assert!(c.pop(true).starts_with("+OK"));
    c.send(b"QUIT\r\n");
    c.pop(false);
    out.push(("mbox_pop3_auth_plain", c.local));
    c.drain();
    out
}

#[test]
fn dovecot_sessions_lossy() {
    common::require_root("dovecot_sessions_lossy");
    let tmp = common::TempDir::new("lossy");
    let tb = common::Testbed::start();
    deliver(&tb);
    let all = tmp.path().join("all.pcapng");
    let cap = common::tshark::Capture::start(&tb.ns.host_if, &all);
    let sessions = dovecot_sessions(tb.ns.server_v4().into());
    // Dovecot's close and the last ACKs.
    std::thread::sleep(std::time::Duration::from_millis(500));
    cap.stop();
    let write = std::env::var_os("MT_WRITE_FIXTURES").is_some_and(|v| v == "1");
    let mut failures = Vec::new();
    let mut total = 0;
    for (name, client) in sessions {
        let one = tmp.path().join(format!("{name}.pcapng"));
        common::tshark::filter(&all, &format!("tcp.port == {}", client.port()), &one);
        let n = run_capture(name, &one, &mut failures);
        println!("{name}: {n} variants");
        total += n;
        if write {
            std::fs::copy(&one, fixtures().join(format!("{name}.pcapng"))).expect("write fixture");
        }
    }
    said_always(&format!(
        "dovecot_sessions_lossy: {total} variants, {} failures",
        failures.len()
    ));
    let shown: Vec<_> = failures.iter().take(60).collect();
    assert!(
        failures.is_empty(),
        "{} failures:\n{shown:#?}",
        failures.len()
    );
}

/// The index of the first frame with payload from the server (the greeting).
fn greeting_frame(frames: &[Frame], server_port: u16) -> usize {
    frames
        .iter()
        .position(|f| {
            mail_trace::wire::decode(f)
                .ok()
                .flatten()
                .is_some_and(|s| s.src.port() == server_port && !s.payload.is_empty())
        })
        .expect("a server payload frame")
}

/// Issue 16 item 3: a POP3 session picked up without its greeting (the greeting packet lost,
/// or the capture started after it) does not take the CAPA reply for the greeting: no greeting,
/// the CAPA list as the lossless record has it, CAPA answered with the lossless latency when the
/// command was seen.
#[test]
fn pop3_without_its_greeting_keeps_capa_in_step() {
    for (name, path) in [
        ("pop3_stls", corpus().join("ndpi/pcap/pop3_stls.pcap")),
        ("dovecot", fixtures().join("mbox_pop3_user_pass.pcapng")),
    ] {
        let all = frames(&path);
        let g = greeting_frame(&all, 110);
        let base = replay(all.iter(), Privacy::default());
        let (_, lev, lrec) = &base.sessions[0];
        let lrec = lrec.as_ref().expect("record");
        assert!(
            !lrec.fields["capa"].as_array().expect("capa").is_empty(),
            "{name}"
        );
        let capa_reply = |ev: &[Event]| {
            let at = ev
                .iter()
                .position(|e| matches!(e, Event::Command { verb, .. } if verb == "CAPA"))?;
            ev[at..].iter().find_map(|e| match e {
                Event::Reply {
                    code, latency_ns, ..
                } => Some((code.clone(), *latency_ns)),
                _ => None,
            })
        };
        let want = capa_reply(lev).expect("CAPA answered");
        assert!(want.1.is_some());
        let dropped: Vec<&Frame> = all
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != g)
            .map(|(_, f)| f)
            .collect();
        for (what, v) in [
            ("greeting dropped", dropped),
            ("cut after the greeting", all[g + 1..].iter().collect()),
        ] {
            let got = replay(v.into_iter(), Privacy::default());
            let (_, ev, rec) = &got.sessions[0];
            let rec = rec.as_ref().expect("record");
            assert_eq!(rec.fields["greeting"], Value::Null, "{name} {what}");
            assert_eq!(rec.fields["capa"], lrec.fields["capa"], "{name} {what}");
            assert_eq!(capa_reply(ev), Some(want.clone()), "{name} {what}");
        }
    }
}

/// Issue 16 item 3: Dovecot lists STARTTLS in its greeting's [CAPABILITY …] and leaves it out of
/// the list after LOGIN (it is not valid there): the session's only TLS finding is
/// `auth-before-tls`, never also `auth-cleartext` + `starttls-not-offered`.
#[test]
fn imap_starttls_in_the_greeting_only_is_one_finding() {
    for f in [
        "mbox_imap_login_quoted.pcapng",
        "mbox_imap_login_literal.pcapng",
        "mbox_imap_authenticate_plain.pcapng",
    ] {
        let all = frames(&fixtures().join(f));
        let got = replay(all.iter(), Privacy::default());
        let (_, ev, rec) = &got.sessions[0];
        let rec = rec.as_ref().expect("record");
        let caps = rec.fields["capabilities"].as_array().expect("capabilities");
        assert!(
            !caps.iter().any(|c| c == "STARTTLS"),
            "{f}: the last list omits it"
        );
        let ids: Vec<&str> = rec.fields["findings"]
            .as_array()
            .expect("findings")
            .iter()
            .filter_map(|x| x["id"].as_str())
            .collect();
        assert_eq!(ids, vec!["auth-before-tls"], "{f}");
        let live: Vec<&str> = ev
            .iter()
            .filter_map(|e| match e {
                Event::Finding { finding, .. } => Some(finding.id),
                _ => None,
            })
            .collect();
        assert_eq!(live, vec!["auth-before-tls"], "{f}");
    }
}
