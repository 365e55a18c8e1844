//! IMAP4rev1 / IMAP4rev2 (RFC 3501, 9051; literals RFC 7888; SASL-IR RFC 4959)
//! as a sans-I/O state machine.
//!
//! Both directions are framed into lines and literals: a line ending in `{n}`
//! or `{n+}` is followed by exactly n bytes that are counted, never buffered
//! (only the first bytes of a LOGIN/SELECT/EXAMINE argument literal are kept to
//! read the user or the mailbox). Completions are matched to commands by tag,
//! so pipelined commands pair correctly. Untagged data responses (EXISTS,
//! FETCH, …) are summarised into one `*` reply event per completed command;
//! untagged status responses (OK/NO/BAD/BYE without a data code) get their own.
//!
//! Events carry no tag: [`Event`] has no field for it, and the tag is noise for
//! everything but pairing, which is done here (latency included).
//!
//! | anomaly id | meaning |
//! |---|---|
//! | `bare-lf` | a line ended in LF without CR |
//! | `line-too-long` | a line (or a command's joined lines) over the cap |
//! | `unknown-command` | a client verb not in IMAP4rev1/rev2 or a common extension |
//! | `bad-command` | a client line without tag and verb |
//! | `bad-reply` | a server line that is not `*`, `+` or `tag status` |
//! | `reply-without-command` | a tagged completion whose tag is not pending |
//! | `unexpected-continuation` | a `+` when the client waits for none |
//! | `too-many-pending` | more commands in flight than [`MAX_PENDING`] |
//! | `literal-huge` | a literal announced larger than [`HUGE_LITERAL`] |
//! | `bad-mailbox-name` | a mailbox name that is not valid modified UTF-7 |
//! | `data-after-starttls` | client bytes between STARTTLS and its reply |
//! | `gap-resync` | bytes were lost; lines skipped until one parsed |
//! | `unpaired-reply` | after a loss, a tagged completion whose command was not seen |
//! | `unpaired-command` | a command whose completion was lost (its tag was used again) |
//!
//! After a loss the pairing is rebuilt from evidence: tags. A gap inside a literal only shortens
//! what is left of it (its bytes are never read as lines). Otherwise, after a client gap or a
//! mid-stream pickup, client lines are held, not shown, until the server's tagged completion
//! names one of them (a body line of an APPEND cannot get one); after a server gap every server
//! line is skipped until a tagged completion of a command waiting for one (an untagged line may
//! be a line of a FETCH literal whose announcement was lost). Continuations the client cannot be
//! known to wait for are not shown.

mod token;
pub mod utf7;

use std::collections::VecDeque;

use super::auth::{EchoGuard, SaslExchange, REDACTED, RESPONSE_VERB};
use super::stream::{
    latency, lossy, verb_of, CommandStats, Events, Framed, Framer, TlsFacts, TlsTrack,
};
use super::{Dissector, Event, Privacy, SessionStart};
use crate::flow::Dir;
use crate::time::Ts;
use serde_json::{json, Map, Value};
use token::{tokens, trailing_literal, Tok};

/// Commands in flight (pipelined) before the oldest is forgotten.
pub const MAX_PENDING: usize = 128;
/// A literal this big is legal but worth flagging (most servers cap APPEND far
/// below it).
pub const HUGE_LITERAL: u64 = 1 << 32;
/// Joined text of one command's lines (literal bytes are not part of it).
const MAX_COMMAND_TEXT: usize = super::line::MAX_LINE;
/// Literals per command whose lengths are kept (APPEND of many messages).
const MAX_LITERALS: usize = 64;
/// Bytes kept of an argument literal (user name, mailbox name).
const MAX_CAPTURE: usize = 1024;
const MAX_MAILBOXES: usize = 32;
const MAX_CAPABILITIES: usize = 64;
const MAX_FIELD: usize = 256;
const MAX_ARG: usize = 512;

const KNOWN: &[&str] = &[
    "CAPABILITY",
    "NOOP",
    "LOGOUT",
    "STARTTLS",
    "AUTHENTICATE",
    "LOGIN",
    "ENABLE",
    "SELECT",
    "EXAMINE",
    "CREATE",
    "DELETE",
    "RENAME",
    "SUBSCRIBE",
    "UNSUBSCRIBE",
    "LIST",
    "LSUB",
    "NAMESPACE",
    "STATUS",
    "APPEND",
    "IDLE",
    "CHECK",
    "CLOSE",
    "UNSELECT",
    "EXPUNGE",
    "SEARCH",
    "FETCH",
    "STORE",
    "COPY",
    "MOVE",
    "UID",
    "ID",
    "GETQUOTA",
    "GETQUOTAROOT",
    "SETQUOTA",
    "GETACL",
    "SETACL",
    "MYRIGHTS",
    "LISTRIGHTS",
    "DELETEACL",
    "GETMETADATA",
    "SETMETADATA",
    "COMPRESS",
    "ESEARCH",
    "SORT",
    "THREAD",
    "XLIST",
];

/// Data responses with a data code that only describe the selected mailbox:
/// folded into the summary instead of getting an event each.
const DATA_CODES: &[&str] = &[
    "UIDVALIDITY",
    "UIDNEXT",
    "UNSEEN",
    "PERMANENTFLAGS",
    "HIGHESTMODSEQ",
    "NOMODSEQ",
    "CAPABILITY",
    "MAILBOXID",
];

#[derive(Debug)]
struct Literal {
    len: u64,
    /// First bytes, only for commands whose arguments we read.
    data: Option<Vec<u8>>,
}

/// A client command being framed (it may span lines and literals).
#[derive(Debug)]
struct Building {
    tag: String,
    verb: String,
    text: Vec<u8>,
    literals: Vec<Literal>,
    capture: bool,
    /// When its last line so far ended.
    last_ts: Ts,
    /// Not an IMAP command: shown as its size only (the bytes of its first line).
    hidden: Option<u64>,
}

#[derive(Debug)]
struct Pending {
    tag: String,
    verb: String,
    /// None when bytes of it may have been lost (no latency is computed from it).
    end_ts: Option<Ts>,
    user: Option<String>,
    mailbox: Option<String>,
    /// APPEND: messages and bytes, counted when the server says OK.
    appended: (u64, u64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Line,
    /// Inside a literal: bytes left.
    Literal(u64),
}

#[derive(Debug)]
enum Client {
    Command,
    /// AUTHENTICATE in progress: lines are SASL responses.
    Sasl(SaslExchange),
    /// IDLE in progress: waiting for DONE.
    Idle {
        tag: String,
    },
    /// STARTTLS sent, reply not seen.
    StartTls,
}

#[derive(Debug, Default)]
struct Summary {
    fetch: u64,
    fetch_bytes: u64,
    exists: Option<u64>,
    recent: Option<u64>,
    expunge: u64,
    other: Vec<(String, u64)>,
}

impl Summary {
    fn count(&mut self, what: &str) {
        match self.other.iter().position(|(w, _)| w == what) {
            Some(i) => self.other[i].1 += 1,
            None if self.other.len() < 16 => self.other.push((what.to_string(), 1)),
            None => {}
        }
    }

    fn is_empty(&self) -> bool {
        self.fetch == 0
            && self.exists.is_none()
            && self.recent.is_none()
            && self.expunge == 0
            && self.other.is_empty()
    }

    fn text(&self) -> String {
        let mut parts = Vec::new();
        if self.fetch > 0 {
            parts.push(format!(
                "{} FETCH ({} literal bytes)",
                self.fetch, self.fetch_bytes
            ));
        }
        if let Some(n) = self.exists {
            parts.push(format!("EXISTS {n}"));
        }
        if let Some(n) = self.recent {
            parts.push(format!("RECENT {n}"));
        }
        if self.expunge > 0 {
            parts.push(format!("{} EXPUNGE", self.expunge));
        }
        for (w, n) in &self.other {
            parts.push(format!("{n} {w}"));
        }
        parts.join(" / ")
    }
}

#[derive(Debug)]
struct Auth {
    mechanism: String,
    user: Option<String>,
    result: String,
}

/// IMAP dissector.
pub struct Imap {
    privacy: Privacy,
    cframe: Framer,
    sframe: Framer,
    cmode: Mode,
    smode: Mode,
    ev: Events,
    c_resync: bool,
    s_resync: bool,
    /// Client lines after a loss (with their times), until a tagged reply confirms one.
    candidates: Vec<(Framed, Ts)>,
    /// Untagged status replies that came while client lines were held.
    deferred: Vec<Event>,
    /// Held lines are being replayed: their literals' bytes are gone.
    replaying: bool,
    greeting_due: bool,
    /// Client bytes were lost in this session (a reply without its command is unpaired).
    c_lost: bool,
    client: Client,
    /// The LOGIN password until its tagged reply (a server may echo it).
    echo: EchoGuard,
    building: Option<Building>,
    /// The server line in progress continues after a literal; `true` when it
    /// is a FETCH response (its literal bytes are message data).
    s_cont: Option<bool>,
    pending: VecDeque<Pending>,
    summary: Summary,
    greeting: Option<(String, String)>,
    user: Option<String>,
    auth: Option<Auth>,
    mailboxes: Vec<String>,
    capabilities: Vec<String>,
    /// A capability list before TLS had STARTTLS.
    starttls_listed: bool,
    tls: TlsTrack,
    tls_announce: bool,
    stats: CommandStats,
    appended: (u64, u64),
    fetched: (u64, u64),
    tls_facts: TlsFacts,
}

impl Imap {
    pub fn new(privacy: Privacy, start: SessionStart) -> Self {
        let mut tls = TlsTrack::default();
        if start.implicit_tls {
            tls.start("implicit");
        }
        Self {
            privacy,
            cframe: Framer::default(),
            sframe: Framer::default(),
            cmode: Mode::Line,
            smode: Mode::Line,
            ev: Events::default(),
            c_resync: start.partial,
            s_resync: start.partial,
            candidates: Vec::new(),
            deferred: Vec::new(),
            replaying: false,
            greeting_due: !start.partial,
            c_lost: start.partial,
            client: Client::Command,
            echo: EchoGuard::default(),
            building: None,
            s_cont: None,
            pending: VecDeque::new(),
            summary: Summary::default(),
            greeting: None,
            user: None,
            auth: None,
            mailboxes: Vec::new(),
            capabilities: Vec::new(),
            starttls_listed: false,
            tls_announce: start.implicit_tls,
            tls,
            stats: CommandStats::default(),
            appended: (0, 0),
            fetched: (0, 0),
            tls_facts: TlsFacts {
                start,
                ..TlsFacts::default()
            },
        }
    }

    /// Whether the server offered STARTTLS; None when no capability list was seen. An offer
    /// in any list before TLS counts: the list after LOGIN omits it (RFC 3501 §6.2.1, the
    /// command is not valid there), which is not the server taking it back.
    fn offered_starttls(&self) -> Option<bool> {
        (!self.capabilities.is_empty() || self.starttls_listed).then(|| {
            self.starttls_listed
                || self
                    .capabilities
                    .iter()
                    .any(|c| c.eq_ignore_ascii_case("STARTTLS"))
        })
    }

    /// A credential was sent: `auth-before-tls`/`auth-cleartext`, emitted after its command.
    fn credential(&mut self, what: String) {
        let offered = self.offered_starttls();
        self.tls_facts
            .credential(what, &self.tls, offered, "STARTTLS");
    }

    fn secret(&self, s: &str) -> String {
        if self.privacy.show_secrets {
            s.to_string()
        } else {
            REDACTED.to_string()
        }
    }

    fn line_anomalies(&mut self, l: &Framed, ts: Ts) {
        if l.bare_lf {
            self.ev.anomaly(ts, "bare-lf");
        }
        if l.overlong {
            self.ev.anomaly(ts, "line-too-long");
        }
    }

    fn feed(&mut self, dir: Dir, mut data: &[u8], ts: Ts) {
        if self.tls_announce && !data.is_empty() {
            self.tls_announce = false;
            self.ev.push(Event::TlsStarted { ts });
        }
        while !data.is_empty() {
            if self.tls.hides_data() {
                self.tls.feed(dir, data);
                return;
            }
            let mode = match dir {
                Dir::ToServer => self.cmode,
                Dir::ToClient => self.smode,
            };
            if let Mode::Literal(left) = mode {
                let take = left.min(data.len() as u64) as usize;
                let chunk = &data[..take];
                data = &data[take..];
                self.literal_bytes(dir, chunk, left - take as u64);
                continue;
            }
            let framer = match dir {
                Dir::ToServer => &mut self.cframe,
                Dir::ToClient => &mut self.sframe,
            };
            let (used, line) = framer.next(data, ts);
            data = &data[used..];
            if let Some(l) = line {
                match dir {
                    Dir::ToServer => self.client_line(l, ts),
                    Dir::ToClient => self.server_line(l, ts),
                }
            }
        }
    }

    fn literal_bytes(&mut self, dir: Dir, chunk: &[u8], left: u64) {
        match dir {
            Dir::ToServer => {
                self.cmode = if left == 0 {
                    Mode::Line
                } else {
                    Mode::Literal(left)
                };
                let lit = self.building.as_mut().and_then(|b| b.literals.last_mut());
                if let Some(Literal { data: Some(d), .. }) = lit {
                    let room = MAX_CAPTURE.saturating_sub(d.len()).min(chunk.len());
                    d.extend_from_slice(&chunk[..room]);
                }
            }
            Dir::ToClient => {
                self.smode = if left == 0 {
                    Mode::Line
                } else {
                    Mode::Literal(left)
                };
                if self.s_cont == Some(true) {
                    self.summary.fetch_bytes += chunk.len() as u64;
                    self.fetched.1 += chunk.len() as u64;
                }
            }
        }
    }

    /// Announces a literal after `line`; returns whether one follows.
    fn start_literal(&mut self, dir: Dir, line: &[u8], ts: Ts) -> Option<u64> {
        let (n, _non_sync) = trailing_literal(line)?;
        if n > HUGE_LITERAL {
            self.ev.anomaly(ts, "literal-huge");
        }
        let mode = if n == 0 { Mode::Line } else { Mode::Literal(n) };
        match dir {
            Dir::ToServer => self.cmode = mode,
            Dir::ToClient => self.smode = mode,
        }
        Some(n)
    }

    fn client_line(&mut self, l: Framed, ts: Ts) {
        match &mut self.client {
            Client::StartTls => {
                self.ev.anomaly(ts, "data-after-starttls");
                return;
            }
            // Base64 has no space: a tagged known command ends an exchange whose outcome was
            // lost (the client went on).
            Client::Sasl(_) if is_command_line(&l.text) => {
                self.client = Client::Command;
            }
            Client::Sasl(ex) => {
                let line = lossy(&l.text);
                ex.client_response(&line);
                let arg = SaslExchange::response_arg(&line, self.privacy.show_secrets);
                self.ev.push(Event::Command {
                    ts,
                    verb: RESPONSE_VERB.into(),
                    arg,
                });
                if let Some(p) = self.pending.back_mut() {
                    p.end_ts = p.end_ts.map(|_| ts);
                }
                return;
            }
            Client::Idle { tag } => {
                if l.text.eq_ignore_ascii_case(b"DONE") {
                    let tag = tag.clone();
                    if let Some(p) = self.pending.iter_mut().find(|p| p.tag == tag) {
                        p.end_ts = Some(ts);
                    }
                    self.client = Client::Command;
                    self.stats.sent("DONE");
                    self.ev.push(Event::Command {
                        ts,
                        verb: "DONE".into(),
                        arg: String::new(),
                    });
                } else {
                    self.ev.anomaly(ts, "bad-command");
                }
                return;
            }
            Client::Command => {}
        }
        if self.c_resync && self.building.is_none() {
            // Held until a tagged reply names it; a literal it announces is skipped as one.
            let _ = self.start_literal(Dir::ToServer, &l.text, ts);
            if self.candidates.len() >= MAX_CANDIDATES {
                self.candidates.remove(0);
            }
            self.candidates.push((l, ts));
            return;
        }
        if let Some(mut b) = self.building.take() {
            // The line after a literal continues the same command.
            if b.text.len() + l.text.len() > MAX_COMMAND_TEXT {
                self.ev.anomaly(ts, "line-too-long");
            }
            let room = MAX_COMMAND_TEXT
                .saturating_sub(b.text.len())
                .min(l.text.len());
            b.text.extend_from_slice(&l.text[..room]);
            self.continue_command(b, &l.text, ts);
            return;
        }
        let text = l.text.as_slice();
        let mut words = text.splitn(3, |&b| b == b' ');
        let tag = words.next().unwrap_or_default();
        let verb_word = words.next().unwrap_or_default();
        let mut verb = verb_of(verb_word);
        let known = !tag.is_empty() && KNOWN.contains(&verb.as_str());
        self.line_anomalies(&l, ts);
        if tag.is_empty() || verb.is_empty() {
            self.ev.anomaly(ts, "bad-command");
            return;
        }
        let hidden = !known && !self.privacy.show_secrets;
        if !known {
            self.ev.anomaly(ts, "unknown-command");
        }
        let mut head = tag.len() + 1 + verb_word.len();
        if verb == "UID" {
            let rest = words.next().unwrap_or_default();
            let sub = rest.split(|&b| b == b' ').next().unwrap_or_default();
            verb = format!("UID {}", verb_of(sub));
            head += 1 + sub.len();
        }
        let capture = matches!(verb.as_str(), "LOGIN" | "SELECT" | "EXAMINE");
        let args = text.get(head + 1..).unwrap_or_default();
        let b = Building {
            tag: lossy(tag).chars().take(MAX_FIELD).collect(),
            verb,
            text: args.to_vec(),
            literals: Vec::new(),
            capture,
            last_ts: ts,
            hidden: hidden.then_some(l.raw_len),
        };
        self.continue_command(b, text, ts);
    }

    /// After each line of a command: wait for its literal, or finish it.
    fn continue_command(&mut self, mut b: Building, line: &[u8], ts: Ts) {
        b.last_ts = ts;
        if let Some(n) = self.start_literal(Dir::ToServer, line, ts) {
            if b.literals.len() < MAX_LITERALS {
                let data = (b.capture && !self.replaying).then(Vec::new);
                b.literals.push(Literal { len: n, data });
            }
            self.building = Some(b);
            return;
        }
        self.finish_command(b, ts);
    }

    fn finish_command(&mut self, mut b: Building, ts: Ts) {
        if let Some(n) = b.hidden {
            // It may be anything the client typed (a password at the wrong prompt).
            self.stats.sent("OTHER");
            b.verb = "OTHER".into();
            self.push_pending(&b, ts);
            self.ev.push(Event::Command {
                ts,
                verb: format!("<unrecognised line, {n} bytes>"),
                arg: String::new(),
            });
            return;
        }
        let toks = tokens(&b.text, 16);
        let arg_bytes = |t: Option<&Tok<'_>>| -> Option<Vec<u8>> {
            match t? {
                Tok::Atom(a) => Some(a.to_vec()),
                Tok::Quoted(q) => Some(q.clone()),
                Tok::Literal(i) => b.literals.get(*i).and_then(|l| l.data.clone()),
                Tok::List(_) => None,
            }
        };
        let mut p = Pending {
            tag: b.tag.clone(),
            verb: b.verb.clone(),
            end_ts: Some(ts),
            user: None,
            mailbox: None,
            appended: (0, 0),
        };
        let shown = lossy(&b.text);
        let arg = match b.verb.as_str() {
            "LOGIN" => {
                self.credential("LOGIN".into());
                let user = arg_bytes(toks.first()).map(|u| lossy(&u));
                let user: Option<String> = user.map(|u| u.chars().take(MAX_FIELD).collect());
                p.user = user.clone();
                self.user = user.clone().or(self.user.take());
                let pass = arg_bytes(toks.get(1))
                    .map(|p| lossy(&p))
                    .unwrap_or_default();
                self.echo.remember(pass.as_bytes());
                format!("{} {}", user.unwrap_or_default(), self.secret(&pass))
            }
            "AUTHENTICATE" => {
                let mech = arg_bytes(toks.first())
                    .map(|m| lossy(&m))
                    .unwrap_or_default();
                let initial = arg_bytes(toks.get(1)).map(|ir| lossy(&ir));
                let mut ex = SaslExchange::new(&mech);
                if let Some(ir) = &initial {
                    ex.client_response(ir);
                }
                self.credential(format!("AUTHENTICATE {}", ex.mechanism));
                let arg = SaslExchange::command_arg(
                    &ex.mechanism,
                    initial.as_deref(),
                    self.privacy.show_secrets,
                );
                self.client = Client::Sasl(ex);
                arg
            }
            "SELECT" | "EXAMINE" => {
                let raw = arg_bytes(toks.first()).unwrap_or_default();
                let name = match utf7::decode(&raw) {
                    Some(n) => n,
                    None => {
                        self.ev.anomaly(ts, "bad-mailbox-name");
                        lossy(&raw)
                    }
                };
                let name: String = lossy(name.as_bytes()).chars().take(MAX_FIELD).collect();
                p.mailbox = Some(name.clone());
                name
            }
            "APPEND" => {
                // A literal mailbox name is not a message.
                let skip = usize::from(matches!(toks.first(), Some(Tok::Literal(0))));
                for l in b.literals.iter().skip(skip) {
                    p.appended.0 += 1;
                    p.appended.1 += l.len;
                }
                shown
            }
            "IDLE" => {
                self.client = Client::Idle { tag: b.tag.clone() };
                shown
            }
            "STARTTLS" => {
                self.client = Client::StartTls;
                shown
            }
            _ => shown,
        };
        let arg: String = arg.chars().take(MAX_ARG).collect();
        self.stats.sent(&b.verb);
        self.retire_tag(&p.tag, ts);
        if self.pending.len() >= MAX_PENDING {
            self.pending.pop_front();
            self.ev.anomaly(ts, "too-many-pending");
        }
        self.pending.push_back(p);
        self.ev.push(Event::Command {
            ts,
            verb: b.verb,
            arg,
        });
        if let Some(f) = self.tls_facts.due.take() {
            self.ev.push(Event::Finding { ts, finding: f });
        }
    }

    /// A client reuses a tag only once the command that had it is complete (clients that
    /// tag every command `.` do so in turn): one still waiting with it lost its completion,
    /// and the next completion with that tag is the new command's.
    fn retire_tag(&mut self, tag: &str, ts: Ts) {
        while let Some(i) = self.pending.iter().position(|p| p.tag == tag) {
            self.pending.remove(i);
            self.ev.anomaly(ts, "unpaired-command");
        }
    }

    fn push_pending(&mut self, b: &Building, ts: Ts) {
        self.retire_tag(&b.tag, ts);
        if self.pending.len() >= MAX_PENDING {
            self.pending.pop_front();
            self.ev.anomaly(ts, "too-many-pending");
        }
        self.pending.push_back(Pending {
            tag: b.tag.clone(),
            verb: b.verb.clone(),
            end_ts: Some(ts),
            user: None,
            mailbox: None,
            appended: (0, 0),
        });
    }

    /// A tagged reply names `tag`: when a held client line has it, the client side is in step
    /// again from that line on (the lines before it were not commands, or their replies are
    /// lost). Lines of a command with a literal are dropped: its literal's bytes are gone.
    fn confirm(&mut self, tag: &str) {
        let at = self.candidates.iter().position(|(l, _)| {
            let mut w = l.text.splitn(3, |&b| b == b' ');
            w.next() == Some(tag.as_bytes())
                && w.next()
                    .is_some_and(|v| KNOWN.contains(&verb_of(v).as_str()))
        });
        let Some(at) = at else {
            self.flush_deferred(Ts::MAX);
            return;
        };
        let held = std::mem::take(&mut self.candidates);
        self.c_resync = false;
        // Where the stream really is (a later line's literal may still be coming).
        let mode = self.cmode;
        self.cmode = Mode::Line;
        self.replaying = true;
        for (l, ts) in held.into_iter().skip(at) {
            self.flush_deferred(ts);
            self.client_line(l, ts);
            // The literal it announced has passed already.
            self.cmode = Mode::Line;
        }
        self.cmode = mode;
        self.replaying = false;
        self.flush_deferred(Ts::MAX);
    }

    /// Deferred replies that came before `ts`, in order.
    fn flush_deferred(&mut self, ts: Ts) {
        let reply_ts = |e: &Event| match e {
            Event::Reply { ts, .. } => *ts,
            _ => 0,
        };
        while self.deferred.first().is_some_and(|e| reply_ts(e) < ts) {
            let e = self.deferred.remove(0);
            self.ev.push(e);
        }
    }

    fn server_line(&mut self, l: Framed, ts: Ts) {
        let text = l.text.as_slice();
        if let Some(fetch) = self.s_cont.take() {
            // The rest of a response that carried a literal.
            if self.start_literal(Dir::ToClient, text, ts).is_some() {
                self.s_cont = Some(fetch);
            }
            return;
        }
        if text.starts_with(b"* ") {
            self.untagged(&l, ts);
        } else if text == b"+" || text.starts_with(b"+ ") {
            if !self.s_resync {
                self.line_anomalies(&l, ts);
                self.continuation(&l, ts);
            }
        } else {
            self.tagged(&l, ts);
        }
    }

    fn continuation(&mut self, l: &Framed, ts: Ts) {
        if self.c_resync {
            // What it answers was lost or is held: nothing to show (it may be a challenge).
            return;
        }
        let rest = l.text.get(2..).unwrap_or_default();
        let lat = latency(self.pending.back().and_then(|p| p.end_ts), l.start_ts);
        let text = match &self.client {
            Client::Sasl(_) => self.secret(&lossy(rest)),
            Client::Idle { .. } => lossy(rest),
            // The go-ahead for a synchronising literal: no event.
            _ if self.building.is_some() => return,
            _ => {
                self.ev.anomaly(ts, "unexpected-continuation");
                lossy(rest)
            }
        };
        self.ev.push(Event::Reply {
            ts: l.start_ts,
            code: "+".into(),
            enhanced: None,
            text,
            latency_ns: lat,
        });
    }

    fn untagged(&mut self, l: &Framed, ts: Ts) {
        let text = &l.text[2..];
        let mut words = text.splitn(3, |&b| b == b' ');
        let first = words.next().unwrap_or_default();
        let second = words.next().unwrap_or_default();
        let status = verb_of(first);
        if self.s_resync {
            // It may be a line of a literal whose announcement was lost; a literal it
            // announces is skipped as one.
            if self.start_literal(Dir::ToClient, text, ts).is_some() {
                self.s_cont = Some(false);
            }
            return;
        }
        if matches!(status.as_str(), "OK" | "NO" | "BAD" | "BYE" | "PREAUTH") {
            self.line_anomalies(l, ts);
            let rest = text.get(first.len() + 1..).unwrap_or_default();
            let (code, resp) = split_code(rest);
            let code_word = code.as_deref().and_then(|c| c.split(' ').next());
            if let Some("CAPABILITY") = code_word {
                self.set_capabilities(code.as_deref().unwrap_or_default());
            }
            if self.greeting_due {
                self.greeting_due = false;
                self.greeting = Some((status.clone(), resp.clone()));
            } else if status == "OK" && code_word.is_some_and(|c| DATA_CODES.contains(&c)) {
                self.summary
                    .count(&format!("OK [{}]", code_word.unwrap_or_default()));
                return;
            }
            let ev = Event::Reply {
                ts: l.start_ts,
                code: status,
                enhanced: code,
                text: resp,
                latency_ns: None,
            };
            if self.c_resync {
                // It may answer a held command: it goes out after it (see `confirm`).
                if self.deferred.len() < MAX_CANDIDATES {
                    self.deferred.push(ev);
                }
            } else {
                self.ev.push(ev);
            }
            return;
        }
        self.line_anomalies(l, ts);
        let kind = if second.is_empty() || first.iter().all(u8::is_ascii_digit) {
            verb_of(second)
        } else {
            verb_of(first)
        };
        let number = std::str::from_utf8(first)
            .ok()
            .and_then(|s| s.parse::<u64>().ok());
        match (kind.as_str(), number) {
            ("EXISTS", Some(n)) => self.summary.exists = Some(n),
            ("RECENT", Some(n)) => self.summary.recent = Some(n),
            ("EXPUNGE", Some(_)) => self.summary.expunge += 1,
            ("FETCH", Some(_)) => {
                self.summary.fetch += 1;
                self.fetched.0 += 1;
            }
            ("CAPABILITY", _) => {
                let caps = text.get(first.len() + 1..).unwrap_or_default();
                self.set_capabilities(&lossy(caps));
                self.summary.count("CAPABILITY");
            }
            (k, _) => {
                let k = if k.is_empty() { "?" } else { k };
                self.summary.count(k);
            }
        }
        if self.start_literal(Dir::ToClient, text, ts).is_some() {
            self.s_cont = Some(kind == "FETCH");
        }
    }

    fn set_capabilities(&mut self, caps: &str) {
        if !self.tls.on()
            && caps
                .split_ascii_whitespace()
                .any(|c| c.eq_ignore_ascii_case("STARTTLS"))
        {
            self.starttls_listed = true;
        }
        self.capabilities = caps
            .split_ascii_whitespace()
            .filter(|c| !c.eq_ignore_ascii_case("CAPABILITY"))
            .take(MAX_CAPABILITIES)
            .map(|c| c.chars().take(MAX_FIELD).collect())
            .collect();
    }

    fn tagged(&mut self, l: &Framed, ts: Ts) {
        let text = l.text.as_slice();
        let mut words = text.splitn(3, |&b| b == b' ');
        let tag = lossy(words.next().unwrap_or_default());
        let status = verb_of(words.next().unwrap_or_default());
        if !matches!(status.as_str(), "OK" | "NO" | "BAD") {
            if !self.s_resync {
                self.line_anomalies(l, ts);
                self.ev.anomaly(ts, "bad-reply");
            } else if self.start_literal(Dir::ToClient, text, ts).is_some() {
                self.s_cont = Some(false);
            }
            return;
        }
        if self.c_resync {
            self.confirm(&tag);
        } else {
            self.flush_deferred(Ts::MAX);
        }
        let waiting = self.pending.iter().any(|p| p.tag == tag);
        if self.s_resync && !waiting {
            // After a server gap only a completion of a command we know proves the framing.
            if self.start_literal(Dir::ToClient, text, ts).is_some() {
                self.s_cont = Some(false);
            }
            return;
        }
        if self.building.as_ref().is_some_and(|b| b.tag == tag) {
            // The server refused a synchronising literal: the command ends
            // here and its literal is never sent.
            if let Some(b) = self.building.take() {
                self.cmode = Mode::Line;
                let end = b.last_ts;
                self.finish_command(b, end);
            }
        }
        let at = self.pending.iter().position(|p| p.tag == tag);
        let cmd = at.and_then(|i| self.pending.remove(i));
        if cmd.is_none() {
            // Across a loss the command may be in it; on a clean stream it is the server's.
            let lost = self.c_resync || self.c_lost;
            self.ev.anomaly(
                ts,
                if lost {
                    "unpaired-reply"
                } else {
                    "reply-without-command"
                },
            );
        }
        self.s_resync = false;
        self.line_anomalies(l, ts);
        let (code, resp) = split_code(words.next().unwrap_or_default());
        if !self.summary.is_empty() {
            let summary = std::mem::take(&mut self.summary);
            self.ev.push(Event::Reply {
                ts: l.start_ts,
                code: "*".into(),
                enhanced: None,
                text: summary.text(),
                latency_ns: None,
            });
        }
        if let Some(Some("CAPABILITY")) = code.as_deref().map(|c| c.split(' ').next()) {
            self.set_capabilities(code.as_deref().unwrap_or_default());
        }
        // A reply echoing the LOGIN password or the SASL response shows it redacted.
        let resp = if self.privacy.show_secrets {
            resp
        } else {
            let sasl = match &self.client {
                Client::Sasl(x) => x.redact_echo(&resp),
                _ => None,
            };
            let sasl = sasl.unwrap_or(resp);
            self.echo.redact(&sasl).unwrap_or(sasl)
        };
        if cmd.as_ref().is_some_and(|c| c.verb == "LOGIN") {
            self.echo.clear();
        }
        self.ev.push(Event::Reply {
            ts: l.start_ts,
            code: status.clone(),
            enhanced: code,
            text: resp,
            latency_ns: latency(cmd.as_ref().and_then(|c| c.end_ts), l.start_ts),
        });
        if let Some(c) = cmd {
            self.completed(c, &status, ts);
        }
    }

    /// What a command's tagged completion changes in the session.
    fn completed(&mut self, c: Pending, status: &str, ts: Ts) {
        let ok = status == "OK";
        if !ok {
            self.stats.failed(&c.verb);
        }
        match c.verb.as_str() {
            "LOGIN" => {
                self.auth = Some(Auth {
                    mechanism: "LOGIN".into(),
                    user: c.user,
                    result: status.into(),
                });
            }
            "AUTHENTICATE" => {
                let client = std::mem::replace(&mut self.client, Client::Command);
                if let Client::Sasl(ex) = client {
                    if ex.user.is_some() {
                        self.user = ex.user.clone();
                    }
                    self.auth = Some(Auth {
                        mechanism: ex.mechanism,
                        user: ex.user,
                        result: status.into(),
                    });
                }
            }
            "SELECT" | "EXAMINE" if ok => {
                if let Some(m) = c.mailbox {
                    if !self.mailboxes.contains(&m) && self.mailboxes.len() < MAX_MAILBOXES {
                        self.mailboxes.push(m);
                    }
                }
            }
            "APPEND" if ok => {
                self.appended.0 += c.appended.0;
                self.appended.1 += c.appended.1;
            }
            "IDLE" => {
                if matches!(self.client, Client::Idle { .. }) {
                    self.client = Client::Command;
                }
            }
            "STARTTLS" => {
                self.client = Client::Command;
                if ok {
                    self.tls.start("starttls");
                    self.ev.push(Event::TlsStarted { ts });
                } else {
                    self.tls_facts.refused = Some(status.to_string());
                }
            }
            _ => {}
        }
    }
}

/// Client lines held after a loss (a pipelined burst is a few).
const MAX_CANDIDATES: usize = 32;

/// `tag SP verb…` with a known verb: a command, never a SASL response (base64 has no space).
fn is_command_line(text: &[u8]) -> bool {
    let mut w = text.splitn(3, |&b| b == b' ');
    let tag = w.next().unwrap_or_default();
    !tag.is_empty()
        && w.next()
            .is_some_and(|v| KNOWN.contains(&verb_of(v).as_str()))
}

/// A response code in brackets at the start of resp-text (RFC 3501 §7.1).
fn split_code(rest: &[u8]) -> (Option<String>, String) {
    let text = lossy(rest);
    if let Some(inner) = text.strip_prefix('[') {
        if let Some(end) = inner.find(']') {
            let code: String = inner[..end].chars().take(MAX_FIELD).collect();
            return (Some(code), inner[end + 1..].trim_start().to_string());
        }
    }
    (None, text)
}

impl Dissector for Imap {
    fn resume_plaintext(&mut self, _ts: Ts) -> bool {
        self.tls.resume_plaintext()
    }

    fn data(&mut self, dir: Dir, data: &[u8], ts: Ts) {
        self.feed(dir, data, ts);
    }

    fn skipped(&mut self, dir: Dir, _len: u64) {
        self.tls.skipped(dir);
    }

    fn gap(&mut self, dir: Dir, len: u64, ts: Ts) {
        if self.tls.hides_data() {
            self.tls.gap(dir);
            return;
        }
        self.ev.anomaly(ts, "gap-resync");
        let mode = match dir {
            Dir::ToServer => &mut self.cmode,
            Dir::ToClient => &mut self.smode,
        };
        if let Mode::Literal(left) = *mode {
            if len < left {
                // Inside a literal: the rest of it is still counted, never read as lines.
                *mode = Mode::Literal(left - len);
                if dir == Dir::ToServer {
                    if let Some(p) = self.pending.back_mut() {
                        p.end_ts = None;
                    }
                }
                return;
            }
        }
        match dir {
            Dir::ToServer => {
                self.c_lost = true;
                self.candidates.clear();
                // The lost bytes may be the rest of an AUTHENTICATE or IDLE (its end): its
                // completion cannot be timed from what was seen.
                if matches!(self.client, Client::Sasl(_) | Client::Idle { .. }) {
                    if let Some(p) = self.pending.back_mut() {
                        p.end_ts = None;
                    }
                }
                self.cframe.reset();
                self.cmode = Mode::Line;
                self.building = None;
                self.c_resync = true;
                if !matches!(self.client, Client::StartTls) {
                    self.client = Client::Command;
                }
            }
            Dir::ToClient => {
                self.sframe.reset();
                self.smode = Mode::Line;
                self.s_cont = None;
                self.s_resync = true;
                self.greeting_due = false;
            }
        }
    }

    fn poll_event(&mut self) -> Option<Event> {
        self.ev.pop()
    }

    fn findings(&self) -> Vec<crate::findings::Finding> {
        self.tls_facts
            .findings(&self.tls, self.offered_starttls(), "STARTTLS")
    }

    fn tls_offered(&self) -> bool {
        self.offered_starttls() == Some(true)
    }

    fn record(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("user".into(), self.user.clone().into());
        self.tls.record(&mut m);
        m.insert(
            "auth".into(),
            self.auth.as_ref().map_or(
                Value::Null,
                |a| json!({"mechanism": a.mechanism, "user": a.user, "result": a.result}),
            ),
        );
        m.insert("mailbox".into(), self.mailboxes.clone().into());
        m.insert("commands".into(), self.stats.to_json());
        m.insert(
            "greeting".into(),
            self.greeting
                .as_ref()
                .map_or(Value::Null, |(c, t)| json!({"code": c, "text": t})),
        );
        m.insert("capabilities".into(), self.capabilities.clone().into());
        m.insert("findings".into(), json!(self.findings()));
        m.insert(
            "appended".into(),
            json!({"messages": self.appended.0, "bytes": self.appended.1}),
        );
        m.insert(
            "fetched".into(),
            json!({"responses": self.fetched.0, "bytes": self.fetched.1}),
        );
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::findings::{Finding, Severity};
    use Dir::{ToClient as S, ToServer as C};

    use crate::proto::testutil::{cmd, feed, reply, MS};

    fn run_with(
        privacy: Privacy,
        start: SessionStart,
        steps: &[(Dir, &[u8])],
        chunk: usize,
    ) -> (Vec<Event>, Map<String, Value>) {
        feed(Imap::new(privacy, start), steps, chunk)
    }

    fn run(steps: &[(Dir, &[u8])]) -> (Vec<Event>, Map<String, Value>) {
        run_with(Privacy::default(), SessionStart::default(), steps, 0)
    }

    #[test]
    fn a_reply_echoing_the_login_password_is_redacted() {
        let steps: &[(Dir, &[u8])] = &[
            (S, b"* OK ready\r\n"),
            (C, b"a1 LOGIN alice s3cr3t-pw\r\n"),
            (
                S,
                b"a1 NO [AUTHENTICATIONFAILED] no password s3cr3t-pw here\r\n",
            ),
        ];
        let (ev, r) = run(steps);
        let all = format!("{ev:?}{r:?}");
        assert!(!all.contains("s3cr3t"), "{all}");
        assert!(all.contains("no password <redacted> here"), "{all}");
    }

    const SESSION: &[(Dir, &[u8])] = &[
        (S, b"* OK [CAPABILITY IMAP4rev1 LITERAL+ IDLE] Dovecot ready.\r\n"),
        (C, b"a1 LOGIN alice {6}\r\n"),
        (S, b"+ OK\r\n"),
        (C, b"s3cr3t\r\n"),
        (S, b"a1 NO [AUTHENTICATIONFAILED] Authentication failed.\r\n"),
        (C, b"a2 LOGIN {5}\r\nalice \"pw\\\"2\"\r\n"),
        (S, b"a2 OK [CAPABILITY IMAP4rev1 MOVE] Logged in\r\n"),
        (C, b"a3 SELECT \"Entw&APw-rfe\"\r\n"),
        (S, b"* FLAGS (\\Seen)\r\n* 2 EXISTS\r\n* 0 RECENT\r\n* OK [UIDVALIDITY 1] ok\r\n* OK [ALERT] disk almost full\r\na3 OK [READ-WRITE] Select completed.\r\n"),
        (C, b"a4 UID FETCH 1:* (BODY[])\r\na5 STORE 1 +FLAGS (\\Deleted)\r\n"),
        (S, b"* 1 FETCH (UID 7 BODY[] {21}\r\na4 OK fake\r\na5 OK x\r\n)\r\n* 2 FETCH (UID 8 BODY[] {3}\r\nabc FLAGS (\\Seen))\r\n* 1 FETCH (FLAGS (\\Deleted))\r\n"),
        (S, b"a5 OK Store completed.\r\na4 OK Fetch completed.\r\n"),
        (C, b"a6 APPEND Sent (\\Seen) {11+}\r\nHello\r\nBye\r\n"),
        (S, b"a6 OK [APPENDUID 1 9] Append completed.\r\n"),
        (C, b"a7 IDLE\r\n"),
        (S, b"+ idling\r\n* 3 EXISTS\r\n"),
        (C, b"DONE\r\n"),
        (S, b"a7 OK Idle completed.\r\n"),
        (C, b"a8 COPY 1 Trash\r\n"),
        (S, b"a8 NO [TRYCREATE] no such mailbox\r\n"),
        (C, b"a9 LOGOUT\r\n"),
        (S, b"* BYE Logging out\r\na9 OK Logout completed.\r\n"),
    ];

    #[test]
    fn full_session_events() {
        let (ev, _) = run(SESSION);
        assert_eq!(
            ev,
            vec![
                reply(
                    1,
                    "OK",
                    Some("CAPABILITY IMAP4rev1 LITERAL+ IDLE"),
                    "Dovecot ready.",
                    None
                ),
                cmd(4, "LOGIN", "alice <redacted>"),
                Event::Finding {
                    ts: 4 * MS,
                    finding: Finding::new(
                        "auth-cleartext",
                        Severity::Warn,
                        "LOGIN sent in clear; the server offered no STARTTLS"
                    )
                },
                reply(
                    5,
                    "NO",
                    Some("AUTHENTICATIONFAILED"),
                    "Authentication failed.",
                    Some(1)
                ),
                cmd(6, "LOGIN", "alice <redacted>"),
                reply(
                    7,
                    "OK",
                    Some("CAPABILITY IMAP4rev1 MOVE"),
                    "Logged in",
                    Some(1)
                ),
                cmd(8, "SELECT", "Entwürfe"),
                reply(9, "OK", Some("ALERT"), "disk almost full", None),
                reply(
                    9,
                    "*",
                    None,
                    "EXISTS 2 / RECENT 0 / 1 FLAGS / 1 OK [UIDVALIDITY]",
                    None
                ),
                reply(9, "OK", Some("READ-WRITE"), "Select completed.", Some(1)),
                cmd(10, "UID FETCH", "1:* (BODY[])"),
                cmd(10, "STORE", "1 +FLAGS (\\Deleted)"),
                reply(12, "*", None, "3 FETCH (24 literal bytes)", None),
                reply(12, "OK", None, "Store completed.", Some(2)),
                reply(12, "OK", None, "Fetch completed.", Some(2)),
                cmd(13, "APPEND", "Sent (\\Seen) {11+}"),
                reply(
                    14,
                    "OK",
                    Some("APPENDUID 1 9"),
                    "Append completed.",
                    Some(1)
                ),
                cmd(15, "IDLE", ""),
                reply(16, "+", None, "idling", Some(1)),
                cmd(17, "DONE", ""),
                reply(18, "*", None, "EXISTS 3", None),
                reply(18, "OK", None, "Idle completed.", Some(1)),
                cmd(19, "COPY", "1 Trash"),
                reply(20, "NO", Some("TRYCREATE"), "no such mailbox", Some(1)),
                cmd(21, "LOGOUT", ""),
                reply(22, "BYE", None, "Logging out", None),
                reply(22, "OK", None, "Logout completed.", Some(1)),
            ]
        );
    }

    #[test]
    fn full_session_record() {
        let (_, r) = run(SESSION);
        assert_eq!(
            Value::Object(r),
            json!({
                "user": "alice",
                "tls": false, "tls_mode": null, "tls_info": null,
                "auth": {"mechanism": "LOGIN", "user": "alice", "result": "OK"},
                "mailbox": ["Entwürfe"],
                "commands": [
                    {"verb": "LOGIN", "count": 2, "errors": 1},
                    {"verb": "SELECT", "count": 1, "errors": 0},
                    {"verb": "UID FETCH", "count": 1, "errors": 0},
                    {"verb": "STORE", "count": 1, "errors": 0},
                    {"verb": "APPEND", "count": 1, "errors": 0},
                    {"verb": "IDLE", "count": 1, "errors": 0},
                    {"verb": "DONE", "count": 1, "errors": 0},
                    {"verb": "COPY", "count": 1, "errors": 1},
                    {"verb": "LOGOUT", "count": 1, "errors": 0},
                ],
                "greeting": {"code": "OK", "text": "Dovecot ready."},
                "capabilities": ["IMAP4rev1", "MOVE"],
                "appended": {"messages": 1, "bytes": 11},
                "fetched": {"responses": 3, "bytes": 24},
                "findings": [{"id": "auth-cleartext", "severity": "warn",
                              "reason": "LOGIN sent in clear; the server offered no STARTTLS"}],
            })
        );
    }

    #[test]
    fn any_chunking_gives_identical_output() {
        let whole = run(SESSION);
        for chunk in 1..=64 {
            let got = run_with(Privacy::default(), SessionStart::default(), SESSION, chunk);
            assert_eq!(got, whole, "chunk size {chunk}");
        }
    }

    #[test]
    fn passwords_never_reach_output() {
        let (ev, r) = run(SESSION);
        let all = format!("{ev:?}{r:?}");
        assert!(!all.contains("s3cr3t"));
        assert!(!all.contains("pw"));
        let shown = run_with(
            Privacy {
                show_secrets: true,
                show_headers: false,
            },
            SessionStart::default(),
            SESSION,
            0,
        );
        assert_eq!(shown.0[1], cmd(4, "LOGIN", "alice s3cr3t"));
        assert_eq!(shown.0[4], cmd(6, "LOGIN", "alice pw\"2"));
    }

    #[test]
    fn literal_split_across_segments_hides_a_fake_completion() {
        let mut d = Imap::new(Privacy::default(), SessionStart::default());
        d.data(C, b"b1 FETCH 1 BODY[]\r\n", 1);
        d.data(S, b"* 1 FETCH (BODY[] {16}\r\nb1 OK", 2);
        d.data(S, b" inside\r\n", 3);
        d.data(S, b"   )\r\n", 4);
        let ev: Vec<_> = std::iter::from_fn(|| d.poll_event()).collect();
        assert_eq!(
            ev,
            vec![Event::Command {
                ts: 1,
                verb: "FETCH".into(),
                arg: "1 BODY[]".into()
            }]
        );
        d.data(S, b"b1 OK done\r\n", 5);
        let ev: Vec<_> = std::iter::from_fn(|| d.poll_event()).collect();
        assert_eq!(
            ev,
            vec![
                Event::Reply {
                    ts: 5,
                    code: "*".into(),
                    enhanced: None,
                    text: "1 FETCH (16 literal bytes)".into(),
                    latency_ns: None
                },
                Event::Reply {
                    ts: 5,
                    code: "OK".into(),
                    enhanced: None,
                    text: "done".into(),
                    latency_ns: Some(4)
                },
            ]
        );
    }

    #[test]
    fn pipelined_completions_match_by_tag() {
        let (ev, _) = run(&[
            (S, b"* OK hi\r\n"),
            (C, b"x NOOP\r\ny CHECK\r\n"),
            (S, b"y OK\r\n"),
            (S, b"x BAD\r\n"),
        ]);
        assert_eq!(ev[3], reply(3, "OK", None, "", Some(1)));
        assert_eq!(ev[4], reply(4, "BAD", None, "", Some(2)));
    }

    #[test]
    fn refused_sync_literal_is_not_waited_for() {
        let (ev, r) = run(&[
            (S, b"* OK hi\r\n"),
            (C, b"a APPEND INBOX {999999}\r\n"),
            (S, b"a NO [LIMIT] too big\r\n"),
            (C, b"b NOOP\r\n"),
            (S, b"b OK\r\n"),
        ]);
        assert_eq!(ev[1], cmd(2, "APPEND", "INBOX {999999}"));
        assert_eq!(ev[2], reply(3, "NO", Some("LIMIT"), "too big", Some(1)));
        assert_eq!(ev[3], cmd(4, "NOOP", ""));
        assert_eq!(ev.len(), 5);
        assert_eq!(r["appended"], json!({"messages": 0, "bytes": 0}));
    }

    #[test]
    fn huge_literal_is_counted_not_allocated() {
        let mut d = Imap::new(Privacy::default(), SessionStart::default());
        d.data(C, b"a APPEND INBOX {99999999999+}\r\n", 1);
        d.data(C, &[b'x'; 4096], 2);
        assert_eq!(d.cmode, Mode::Literal(99_999_999_999 - 4096));
        let ev: Vec<_> = std::iter::from_fn(|| d.poll_event()).collect();
        assert_eq!(
            ev,
            vec![Event::Anomaly {
                ts: 1,
                id: "literal-huge"
            }]
        );
    }

    #[test]
    fn authenticate_with_and_without_sasl_ir() {
        let (ev, r) = run(&[
            (S, b"* OK hi\r\n"),
            (C, b"a AUTHENTICATE PLAIN\r\n"),
            (S, b"+ \r\n"),
            (C, b"AGFsaWNlAHNlY3JldA==\r\n"),
            (S, b"a NO [AUTHENTICATIONFAILED] bad\r\n"),
            (C, b"b AUTHENTICATE PLAIN AGFsaWNlAHNlY3JldA==\r\n"),
            (S, b"b OK done\r\n"),
        ]);
        assert_eq!(
            ev,
            vec![
                reply(1, "OK", None, "hi", None),
                cmd(2, "AUTHENTICATE", "PLAIN"),
                Event::Finding {
                    ts: 2 * MS,
                    finding: Finding::new(
                        "auth-cleartext",
                        Severity::Warn,
                        "AUTHENTICATE PLAIN sent in clear (the server's capabilities were not seen)"
                    )
                },
                reply(3, "+", None, "<redacted>", Some(1)),
                cmd(4, "AUTH-DATA", "<redacted>"),
                reply(5, "NO", Some("AUTHENTICATIONFAILED"), "bad", Some(1)),
                cmd(6, "AUTHENTICATE", "PLAIN <redacted>"),
                reply(7, "OK", None, "done", Some(1)),
            ]
        );
        assert_eq!(
            r["auth"],
            json!({"mechanism": "PLAIN", "user": "alice", "result": "OK"})
        );
        assert_eq!(r["user"], "alice");
    }

    #[test]
    fn starttls_stops_dissection() {
        let (ev, r) = run(&[
            (S, b"* OK IMAP4rev1\r\n"),
            (C, b". STARTTLS\r\n"),
            (S, b". OK Begin TLS negotiation now\r\n\x16\x03\x03"),
            (C, b"\x16\x03\x01a LOGIN x y\r\n"),
        ]);
        assert_eq!(
            ev[2],
            reply(3, "OK", None, "Begin TLS negotiation now", Some(1))
        );
        assert_eq!(ev[3], Event::TlsStarted { ts: 3 * MS });
        assert_eq!(ev.len(), 4);
        assert_eq!(
            (r["tls"].clone(), r["tls_mode"].clone()),
            (json!(true), json!("starttls"))
        );
    }

    #[test]
    fn implicit_tls_is_not_dissected() {
        let start = SessionStart {
            implicit_tls: true,
            ..Default::default()
        };
        let (ch, sh) = crate::proto::pop3::tests::hellos("imap.gmx.net");
        let (ev, r) = run_with(Privacy::default(), start, &[(C, &ch), (S, &sh)], 7);
        assert_eq!(ev, vec![Event::TlsStarted { ts: MS }]);
        assert_eq!(r["tls_mode"], "implicit");
        assert_eq!(r["tls_info"]["sni"], "imap.gmx.net");
        assert_eq!(r["tls_info"]["version"], "TLS 1.3");
        assert_eq!(r["greeting"], Value::Null);
    }

    #[test]
    fn partial_pickup_and_gap_resync() {
        let start = SessionStart {
            partial: true,
            ..Default::default()
        };
        let mut d = Imap::new(Privacy::default(), start);
        d.data(S, b"ody of a message\r\n)\r\n", 1);
        d.data(C, b"ter stuff\r\nz1 NOOP\r\n", 2);
        d.data(S, b"z1 OK\r\n", 3);
        d.data(C, b"z2 LOGIN {5}\r\nal", 4);
        d.gap(C, 10, 5);
        d.data(C, b"garbage\r\nz3 NOOP\r\n", 6);
        d.data(S, b"z3 OK\r\n", 7);
        let ev: Vec<_> = std::iter::from_fn(|| d.poll_event()).collect();
        assert_eq!(
            ev,
            vec![
                Event::Command {
                    ts: 2,
                    verb: "NOOP".into(),
                    arg: String::new()
                },
                Event::Reply {
                    ts: 3,
                    code: "OK".into(),
                    enhanced: None,
                    text: String::new(),
                    latency_ns: Some(1)
                },
                Event::Anomaly {
                    ts: 5,
                    id: "gap-resync"
                },
                Event::Command {
                    ts: 6,
                    verb: "NOOP".into(),
                    arg: String::new()
                },
                Event::Reply {
                    ts: 7,
                    code: "OK".into(),
                    enhanced: None,
                    text: String::new(),
                    latency_ns: Some(1)
                },
            ]
        );
        assert_eq!(d.record()["user"], Value::Null);
    }

    #[test]
    fn hostile_lines_are_anomalies_not_panics() {
        let (ev, _) = run(&[
            (S, b"* OK hi\r\n"),
            (C, b"\r\n \r\nnotag\r\nq WHATEVER {x}\r\n"),
            (S, b"garbage\r\nzz OK\r\n+ what\r\n* \r\n* 5\r\n"),
            (C, b"q SELECT \"&bad\"\r\n"),
        ]);
        let ids: Vec<_> = ev
            .iter()
            .filter_map(|e| match e {
                Event::Anomaly { id, .. } => Some(*id),
                _ => None,
            })
            .collect();
        assert_eq!(
            ids,
            vec![
                "bad-command",
                "bad-command",
                "bad-command",
                "unknown-command",
                "bad-reply",
                "reply-without-command",
                "unexpected-continuation",
                "bad-mailbox-name",
                // The second `q` command: the first `q` never got its completion.
                "unpaired-command",
            ]
        );
    }

    fn drain(d: &mut Imap) -> Vec<Event> {
        std::iter::from_fn(|| d.poll_event()).collect()
    }

    fn ids(ev: &[Event]) -> Vec<&'static str> {
        ev.iter()
            .filter_map(|e| match e {
                Event::Anomaly { id, .. } => Some(*id),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_gap_inside_a_literal_keeps_its_count() {
        let mut d = Imap::new(Privacy::default(), SessionStart::default());
        d.data(S, b"* OK hi\r\n", 1);
        d.data(C, b"a1 FETCH 1 BODY[]\r\n", 2);
        // 30 bytes of literal: 5 seen, 10 lost, 15 seen (which look like lines).
        d.data(S, b"* 1 FETCH (BODY[] {30}\r\nabcde", 3);
        d.gap(S, 10, 4);
        d.data(S, b"\r\n* OK fake\r\nxx)\r\na1 OK done\r\n", 5);
        let ev = drain(&mut d);
        assert!(!format!("{ev:?}").contains("fake"), "{ev:?}");
        assert_eq!(
            ev.last(),
            Some(&Event::Reply {
                ts: 5,
                code: "OK".into(),
                enhanced: None,
                text: "done".into(),
                latency_ns: Some(3),
            })
        );
        assert_eq!(ids(&ev), vec!["gap-resync"]);
    }

    #[test]
    fn after_a_client_gap_lines_wait_for_their_completion() {
        let mut d = Imap::new(Privacy::default(), SessionStart::default());
        d.data(S, b"* OK hi\r\n", 1);
        d.data(C, b"a1 APPEND INBOX {100}\r\nFrom: x\r\n", 2);
        // The rest of the literal's length is unknown to the gap (it took more than was left).
        d.gap(C, 200, 3);
        d.data(C, b"z9 LOGOUT is a body line\r\na2 NOOP\r\n", 4);
        d.data(S, b"* BYE not really\r\na2 OK noop done\r\n", 5);
        let ev = drain(&mut d);
        let all = format!("{ev:?}");
        assert!(
            !all.contains("body line") && !all.contains("LOGOUT"),
            "{all}"
        );
        // The held NOOP goes out when its completion names it, then the untagged reply that
        // came after it, then the completion, timed from the NOOP.
        let tail: Vec<_> = ev
            .iter()
            .filter(|e| !matches!(e, Event::Anomaly { .. }))
            .skip(1)
            .collect();
        assert_eq!(
            tail,
            vec![
                &Event::Command {
                    ts: 4,
                    verb: "NOOP".into(),
                    arg: String::new()
                },
                &Event::Reply {
                    ts: 5,
                    code: "BYE".into(),
                    enhanced: None,
                    text: "not really".into(),
                    latency_ns: None
                },
                &Event::Reply {
                    ts: 5,
                    code: "OK".into(),
                    enhanced: None,
                    text: "noop done".into(),
                    latency_ns: Some(1)
                },
            ]
        );
    }

    #[test]
    fn a_reused_tag_retires_the_command_that_lost_its_completion() {
        // Clients that tag every command `.`: the CAPABILITY completion is lost, STARTTLS's
        // completion must not pair with CAPABILITY.
        let mut d = Imap::new(Privacy::default(), SessionStart::default());
        d.data(S, b"* OK hi\r\n", 1);
        d.data(C, b". CAPABILITY\r\n", 2);
        d.gap(S, 50, 3);
        d.data(C, b". STARTTLS\r\n", 4);
        d.data(S, b". OK Begin TLS negotiation now\r\n", 5);
        let ev = drain(&mut d);
        assert!(ev.contains(&Event::TlsStarted { ts: 5 }), "{ev:?}");
        assert!(ev.contains(&Event::Reply {
            ts: 5,
            code: "OK".into(),
            enhanced: None,
            text: "Begin TLS negotiation now".into(),
            latency_ns: Some(1),
        }));
        assert_eq!(ids(&ev), vec!["gap-resync", "unpaired-command"]);
    }

    #[test]
    fn an_unrecognised_line_shows_its_size_only() {
        let (ev, r) = run(&[
            (S, b"* OK hi\r\n"),
            (C, b"t1 hunter2pass x\r\n"),
            (S, b"t1 BAD what\r\n"),
        ]);
        assert_eq!(ev[2], cmd(2, "<unrecognised line, 18 bytes>", ""));
        assert!(!format!("{ev:?}{r:?}").contains("HUNTER2PASS"));
        assert_eq!(
            r["commands"],
            json!([{"verb": "OTHER", "count": 1, "errors": 1}])
        );
    }

    #[test]
    fn starttls_in_the_greeting_only_is_auth_before_tls_alone() {
        let (ev, r) = run(&[
            (
                S,
                b"* OK [CAPABILITY IMAP4rev1 STARTTLS AUTH=PLAIN] ready\r\n",
            ),
            (C, b"a1 LOGIN alice secret1\r\n"),
            (S, b"a1 OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n"),
        ]);
        let reason = "LOGIN sent in clear although the server offered STARTTLS";
        assert!(ev.contains(&Event::Finding {
            ts: 2 * MS,
            finding: Finding::new("auth-before-tls", Severity::Warn, reason),
        }));
        assert_eq!(
            r["findings"],
            json!([{"id": "auth-before-tls", "severity": "warn", "reason": reason}])
        );
        assert_eq!(r["capabilities"], json!(["IMAP4rev1", "IDLE"]));
    }

    use proptest::strategy::Strategy as _;

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        #[test]
        fn arbitrary_bytes_never_panic(
            steps in proptest::collection::vec((proptest::bool::ANY, proptest::prop_oneof![proptest::collection::vec(proptest::num::u8::ANY, 0..200), "(a1 |\\* |\\+ |OK |NO |BAD |\\{3\\}|\\{2\\+\\}|LOGIN |FETCH |AUTHENTICATE PLAIN|AUTH LOGIN|IDLE|DONE|STLS|STARTTLS|RETR 1|CAPA|\\+OK |-ERR |\\.|\r\n|x){0,40}".prop_map(String::into_bytes)]), 0..40),
            gap_at in 0usize..40,
        ) {
            let mut d = Imap::new(Privacy::default(), SessionStart::default());
            for (i, (to_server, bytes)) in steps.iter().enumerate() {
                let dir = if *to_server { C } else { S };
                if i == gap_at {
                    d.gap(dir, 10, i as u64);
                }
                d.data(dir, bytes, i as u64);
                while d.poll_event().is_some() {}
            }
            let _ = d.record();
        }
    }
}
