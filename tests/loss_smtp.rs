//! Loss-proof SMTP (issue 16): every SMTP capture of the shared corpus and the SMTP captures of
//! the test bed (`tests/fixtures/testbed/*.pcapng` but `mbox_*`), replayed in-process with one
//! packet dropped at a time and with every prefix cut (the tracer started late); a capture of
//! more than [`SAMPLE`] packets is sampled evenly ([`SAMPLE`] drops, [`SAMPLE`] cuts).
//!
//! The rule checked for every variant, session by session (a session is matched to the lossless
//! one by its client and server address; "events" are the command and reply events):
//! 1. **Privacy**: no secret (the AUTH initial response, every SASL response line after AUTH,
//!    base64 and its decoded parts, found in the lossless client stream independently of the
//!    dissector) and no body line (a line between DATA and its lone ".", a line of a BDAT chunk:
//!    its first [`BODY_PREFIX`] bytes, lines under [`MIN_BODY_LINE`] bytes left out) appears in
//!    any default output: the human tail, `--summary`, `--json`, `--json --events` (a body line
//!    that the session also sends outside the message, in a command or a reply, is not looked
//!    for: an address, the date in a greeting).
//! 2. **No panic.**
//! 3. **Nothing wrong**: the variant's events (verb and argument; code, enhanced code and text)
//!    are a subsequence of the lossless session's, each matched to one at the same time, with the lossless
//!    latency or none. Where the dropped packet's bytes come again in a retransmission of the
//!    capture, time and latency are not compared. The record's `helo`, `auth` (each field it
//!    has), `greeting` and `tls_mode`, when the variant has them, are the lossless values.
//! 4. **Nothing else lost**: the lossless events before the dropped packet's time are the
//!    variant's first events, unchanged (drops; a cut has no "before"). From the resynchronisation
//!    point on, every lossless event is in the variant, in order: the point is the first command
//!    after the first final reply (not a 334 challenge) at or after the lost packet's time.
//! 5. **Lossless is unchanged**: with nothing dropped the four outputs are byte-identical to a
//!    second run and to `tests/fixtures/golden/smtp/` (written with `MT_WRITE_GOLDEN=1` at the
//!    commit this work started from; four captures deliberately differ since: an unknown client
//!    line is `<unrecognised line, N bytes>` — smtp-bug-6053 printed a password, detect-email-received
//!    a whole message, smtp-html a `DATA\r` — and smtp-attachment-msg, whose greeting the capture
//!    lost, is no longer an `early-talker`; since, a 354/334 that the first waiting command
//!    cannot take realigns the queue, so detect-email-received's message and smtp-bug-6053's
//!    password line are read as a message and a SASL response; smtp-html's pickup lands in a
//!    message whose "." beside a bare LF ends nothing, so its `DATA\r` is body).
//!
//! Rules 1, 2 and 5 are asserted. Rules 3 and 4 are checked and the variants breaking them
//! counted in the printed line; their failures may not grow past [`RULES_3_4_AT_MOST`] (a
//! ratchet: lower it as the dissector gets better), and with `LOSS_SMTP_STRICT=1` they are
//! asserted too (not yet met by every variant: `LOSS_SMTP_ONLY=<part of a name>` replays only
//! the matching captures, `LOSSY_DEBUG="<name> <variant>"` prints both event lists).
//!
//! The number of variants is printed.
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
    "zeek/traces/smtp-attachment-msg.pcap",
    "zeek/traces/smtp-multi-addr.pcap",
    "zeek/traces/smtp/mime-header-size-limit.pcap",
    "zeek/traces/smtp/rfc3030-bdat-0-last.pcap",
    "zeek/traces/smtp/rfc3030-bdat-example1.pcap",
    "zeek/traces/smtp/rfc3030-bdat-multipart.pcap",
    "zeek/traces/smtp/smtp-bdat-cmd-chunk-size-overflow2.pcap",
    "zeek/traces/smtp/smtp-bdat-cmd-negative-chunk-size.pcap",
    "zeek/traces/smtp/smtp-many-addresses.pcap",
    "suricata-verify/tests/bug-1045/smtpsuricataflowbitsFN.pcap",
    "suricata-verify/tests/detect-email-received/input.pcap",
    "suricata-verify/tests/firewall/ruletype-firewall-122-smtp/smtp-simple-session.pcap",
    "suricata-verify/tests/firewall/ruletype-firewall-128-smtp-rset-next-tx-delivered/smtp-rset-change-sender.pcap",
    "suricata-verify/tests/firewall/ruletype-firewall-130-smtp-rset-after-rcpt/smtp-rset-after-rcpt.pcap",
    "suricata-verify/tests/firewall/ruletype-firewall-131-smtp-quit-after-mail-from/smtp-quit-after-mail.pcap",
    "suricata-verify/tests/firewall/ruletype-firewall-134-smtp-rset-then-quit/smtp-rset-then-quit.pcap",
    "suricata-verify/tests/mime/mime-dec-parse-full-msg-test02/input.pcap",
    "suricata-verify/tests/mime/mime-dec-parse-line-test02/input.pcap",
    "suricata-verify/tests/mime/mime-dec-parse-long-filename02/input.pcap",
    "suricata-verify/tests/mime/mime-dec-parse-rem-sp/input.pcap",
    "suricata-verify/tests/mime/mime-dec-very-small-inp/input.pcap",
    "suricata-verify/tests/mime/mime-quoted-printable/input.pcap",
    "suricata-verify/tests/mime/mime-stream-depth/input.pcap",
    "suricata-verify/tests/smtp-attachment-md5/input.pcap",
    "suricata-verify/tests/smtp-bdat-last-next-mail/input.pcap",
    "suricata-verify/tests/smtp-bdat-multichunk-inspection/input.pcap",
    "suricata-verify/tests/smtp-bdat-multichunk-next-mail/input.pcap",
    "suricata-verify/tests/smtp-bdat-zero-last-next-mail/input.pcap",
    "suricata-verify/tests/smtp-bug-6053/input.pcap",
    "suricata-verify/tests/smtp-ehlo-reset/input.pcap",
    "suricata-verify/tests/smtp-long-command/input.pcap",
    "suricata-verify/tests/smtp-no-helo-quit/input.pcap",
    "suricata-verify/tests/smtp-no-helo-rset/input.pcap",
    "suricata-verify/tests/smtp-pipelined-rset-after-complete/input.pcap",
    "suricata-verify/tests/smtp-pipelining/input.pcap",
    "suricata-verify/tests/smtp-quit/input.pcap",
    "suricata-verify/tests/smtp-rejected-ehlo-preserves-envelope/input.pcap",
    "suricata-verify/tests/smtp-startssl/input.pcap",
    "suricata-verify/tests/smtp-url-base64/smtp-url-b64.pcap",
    "arkime/tests/pcap/smtp-data-521.pcap",
    "arkime/tests/pcap/smtp-html.pcap",
    "arkime/tests/pcap/smtp-nospaces.pcap",
    "arkime/tests/pcap/smtp-originating.pcap",
    "arkime/tests/pcap/smtp-subject-8859-b.pcap",
    "arkime/tests/pcap/smtp-subject-8859-q.pcap",
    "arkime/tests/pcap/smtp-subject-multi-nospace.pcap",
    "arkime/tests/pcap/smtp-subject-utf8-q.pcap",
    "arkime/tests/pcap/smtp-zip.pcap",
    "arkime/tests/pcap/wireshark-bdat.pcap",
    "ndpi/pcap/smtp.pcap",
    "ndpi/pcap/smtps.pcapng",
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
    /// that share them are looked for once).
    fn body_line(&mut self, l: &[u8]) {
        let l = String::from_utf8_lossy(l).trim().to_string();
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

const VERBS: &[&str] = &[
    "HELO", "EHLO", "LHLO", "MAIL", "RCPT", "DATA", "BDAT", "RSET", "VRFY", "EXPN", "HELP", "NOOP",
    "QUIT", "STARTTLS", "AUTH", "ETRN", "ATRN", "TURN", "XCLIENT", "XFORWARD",
];

/// SMTP, from the client stream alone: the AUTH initial response and every line after AUTH that
/// is not a command (SASL responses) are secrets; the lines after DATA up to the lone "." and the
/// bytes of each BDAT chunk are body lines. The server stream is not needed.
fn smtp_hidden(client: &[u8], server: &[u8], h: &mut Hidden) {
    // What the session says outside the message (command lines, replies): a body line that
    // is also there (an address, the date of a greeting) is shown for that, not leaked.
    let mut outside = String::from_utf8_lossy(server).into_owned();
    let mut i = 0;
    let mut sasl = false;
    let mut data = false;
    while i < client.len() {
        let end = client[i..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(client.len(), |p| i + p + 1);
        let line = &client[i..end];
        let text = line.strip_suffix(b"\n").unwrap_or(line);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        i = end;
        if data {
            if text == b"." {
                data = false;
            } else {
                h.body_line(text);
            }
            continue;
        }
        let up = String::from_utf8_lossy(text).to_ascii_uppercase();
        let words: Vec<&str> = up.split(' ').collect();
        let verb = words[0];
        if VERBS.contains(&verb) {
            outside.push_str(&String::from_utf8_lossy(text));
            outside.push('\n');
        }
        if sasl && !VERBS.contains(&verb) {
            h.secret(text);
            continue;
        }
        sasl = false;
        match verb {
            "AUTH" => {
                if let Some(ir) = text.split(|&b| b == b' ').nth(2) {
                    h.secret(ir);
                }
                sasl = true;
            }
            "DATA" => data = true,
            "BDAT" => {
                let n: usize = words.get(1).and_then(|n| n.parse().ok()).unwrap_or(0);
                let chunk = &client[i.min(client.len())..(i + n).min(client.len())];
                for l in lines(chunk) {
                    h.body_line(l);
                }
                i += n;
            }
            _ => {}
        }
    }
    h.body.retain(|b| !outside.contains(b.as_str()));
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
    if info.proto == mail_trace::proto::Proto::Smtp {
        smtp_hidden(&c, &s, &mut h);
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
            // Every BODY_PREFIX-byte window of the output, once: a long message has thousands
            // of lines to look for.
            let windows: std::collections::HashSet<&[u8]> =
                t.as_bytes().windows(BODY_PREFIX).collect();
            for b in &h.body {
                let found = if b.len() == BODY_PREFIX {
                    windows.contains(b.as_bytes())
                } else {
                    t.contains(b.as_str())
                };
                if found {
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
            // The same event at the same time (a session repeats "250 OK" many times).
            while j < l.len() && (l[j].1 != *s || (*ts != l[j].0 && !v.recovered)) {
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
            let before: Vec<_> = l.iter().take_while(|e| e.0 < v.lost_at).collect();
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
            .position(|e| e.0 >= v.lost_at && matches!(&e.1, Said::R(c, _, _) if c != "334"));
        let resync =
            reply_after.and_then(|r| (r + 1..l.len()).find(|&k| matches!(l[k].1, Said::C(..))));
        if let Some(r) = resync {
            // A 334 challenge answers an AUTH whose exchange may have lost a step.
            let late = |c: &str| c == "334";
            let done = (r..l.len())
                .find(|&k| matches!(&l[k].1, Said::R(c, _, _) if !late(c)))
                .unwrap_or(l.len());
            let tail: Vec<&Said> = l[r..]
                .iter()
                .enumerate()
                .filter(|(k, e)| match &e.1 {
                    Said::R(c, _, _) => c != "334" && !(late(c) && r + k < done),
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
            for f in ["helo", "auth", "greeting", "tls_mode"] {
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
        .join("../tests/fixtures/golden/smtp")
        .join(name.trim_end_matches(".pcap").replace('/', "_"));
    if std::env::var_os("MT_WRITE_GOLDEN").is_some_and(|v| v == "1") {
        for (ext, got) in ["tail.txt", "summary.txt", "json", "events.json"]
            .iter()
            .zip(&lossless)
        {
            std::fs::create_dir_all(golden.parent().expect("golden dir")).expect("golden dir");
            std::fs::write(format!("{}.{ext}", golden.display()), got).expect("write golden");
        }
    }
    {
        for (ext, got) in ["tail.txt", "summary.txt", "json", "events.json"]
            .iter()
            .zip(&lossless)
        {
            let file = format!("{}.{ext}", golden.display());
            let want = std::fs::read_to_string(&file)
                .unwrap_or_else(|e| panic!("{name} golden {ext}: {e}"));
            if got != &want {
                failures.push(format!(
                    "{name} lossless: {ext} differs from the golden file"
                ));
            }
        }
    }
    let mut hide = HashMap::new();
    for (info, _, rec) in &base.sessions {
        let mut h = hidden(&all, info);
        // A password that is part of the user name ("zeek" of zeek@zeek.org) is shown with it.
        let user = rec
            .as_ref()
            .and_then(|r| r.field("auth"))
            .and_then(|a| a["user"].as_str());
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
    for i in sample(0, all.len()) {
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
    for i in sample(1, all.len()) {
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

/// Failures of rules 3 and 4 today (11, in 9 variants: smtp-bug-6053 and detect-email-received
/// around their greeting merged with a reply, bug-1045 drop #11). More is a regression.
const RULES_3_4_AT_MOST: usize = 11;

/// Variants per kind (drops, cuts) of one capture: a longer capture is sampled evenly.
const SAMPLE: usize = 30;

/// `from..to`, or [`SAMPLE`] indices spread evenly over it.
fn sample(from: usize, to: usize) -> Vec<usize> {
    let n = to.saturating_sub(from);
    if n <= SAMPLE {
        return (from..to).collect();
    }
    (0..SAMPLE).map(|k| from + k * n / SAMPLE).collect()
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
                .is_some_and(|n| !n.starts_with("mbox_") && n.ends_with(".pcapng"))
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
    // LOSS_SMTP_ONLY=<part of a name>: only those captures (when looking into one).
    let only = std::env::var("LOSS_SMTP_ONLY").unwrap_or_default();
    for (name, path) in inputs().into_iter().filter(|(n, _)| n.contains(&only)) {
        let n = run_capture(&name, &path, &mut failures);
        println!("{name}: {n} variants");
        total += n;
    }
    let variant_of = |f: &String| f.split(':').next().unwrap_or_default().to_string();
    let failing = |what: &str| {
        let mut v: Vec<String> = failures
            .iter()
            .filter(|f| f.contains(what))
            .map(variant_of)
            .collect();
        v.dedup();
        v.len()
    };
    said_always(&format!(
        "loss_smtp: {total} variants, {} failures in {} variants ({} with a secret shown, {} with a body line shown)",
        failures.len(),
        failing(""),
        failing(": secret "),
        failing(": body line ")
    ));
    let mut per: HashMap<&str, usize> = HashMap::new();
    for f in &failures {
        let c = per
            .entry(f.split(' ').next().unwrap_or_default())
            .or_default();
        *c += 1;
    }
    println!("{per:?}");
    // Rules 1, 2 and 5 always hold; rules 3 and 4 (pairing and completeness across a loss) are
    // not met yet by every variant: counted and printed, asserted with LOSS_SMTP_STRICT=1.
    let strict = std::env::var_os("LOSS_SMTP_STRICT").is_some_and(|v| v == "1");
    let hard: Vec<&String> = failures
        .iter()
        .filter(|f| {
            strict
                || f.contains(": secret ")
                || f.contains(": body line ")
                || f.contains("differs from the golden file")
        })
        .collect();
    let soft = failures.len() - hard.len();
    assert!(
        soft <= RULES_3_4_AT_MOST,
        "{soft} failures of rules 3 and 4, more than the {RULES_3_4_AT_MOST} known:\n{:#?}",
        failures
    );
    assert!(
        hard.is_empty(),
        "{} failures:\n{:#?}",
        hard.len(),
        hard.iter().take(200).collect::<Vec<_>>()
    );
}
