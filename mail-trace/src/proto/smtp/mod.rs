//! SMTP / ESMTP (RFC 5321 and extensions) as a sans-I/O state machine.
//!
//! Client bytes are read as command lines, DATA (dot-stuffed, up to CRLF.CRLF)
//! or BDAT chunks (counted); server bytes as replies, matched first-in
//! first-out to the commands still waiting (PIPELINING). After STARTTLS's 220
//! (or from the first byte on port 465) only the TLS hellos are read.
//!
//! Choices worth knowing:
//! - A command whose reply decides how the following client bytes are read
//!   (DATA, STARTTLS, AUTH and each SASL response) makes the client side wait:
//!   the bytes after it are held (at most [`MAX_HOLD`]) until that reply.
//! - Multi-line replies become one reply; their text lines are joined with
//!   [`reply::LINE_SEPARATOR`] (" / "); an enhanced code repeated on every line
//!   is kept once, in `enhanced`.
//! - `ehlo` lists each capability line of the last successful EHLO reply, the
//!   keyword upper-cased and its parameters as sent ("SIZE 10240000",
//!   "AUTH PLAIN LOGIN"); it is empty when no EHLO succeeded.
//! - Every transaction is kept, whatever became of it: RSET, QUIT, an EHLO/HELO
//!   answered 2xx or a new MAIL end it; `reply` null means no message was accepted.
//!   `data_code` is the reply to DATA (354, or the refusal such as 554). A refused
//!   EHLO/HELO ends nothing (RFC 5321 §4.1.4), and a MAIL refused while a transaction
//!   was open is kept as its own, the earlier one going on with what followed it.
//! - After STARTTLS's 220, a client whose first byte is not a TLS record went on in
//!   clear: it is read as SMTP again (`clear-after-starttls`), and `tls` stays false.
//! - After a loss (a gap either way, a pickup) replies are paired on evidence
//!   only (resync.rs): the commands whose replies may be lost, and those sent
//!   after lost commands, are not sure; such a command takes a reply only it
//!   can answer (334, 354, …) or, when it is the one waiting, any reply that
//!   fits (not a DATA sent after lost commands: a refusal may be theirs); untimed. Otherwise `unpaired-reply` / `unpaired-command`. A gap
//!   inside DATA/BDAT adds its length to `size` and marks the message
//!   incomplete; the end-of-data search continues.
//! - After a client gap or a pickup (`partial`): lines strictly shaped like a
//!   command (`MAIL FROM:`, `RCPT TO:`, `DATA`, …) are held until a server
//!   reply shows they were commands (a body gets no reply before its "."); a
//!   lone "." ends a DATA we joined in the middle, whose reply (usually 250
//!   with a queue id) is then matched to it. Server lines are skipped until
//!   one is a reply line.
//! - The DATA end is CRLF "." CRLF only; a "." next to a bare LF is counted
//!   (fact `fake_end_markers`, anomaly `fake-end-of-data`), not obeyed.
//!
//! Anomaly ids (each emitted at most [`MAX_SAME_ANOMALY`] times per session, all counted):
//!
//! | id | meaning |
//! |----|---------|
//! | `line-too-long` | a command, reply or message line over 1000 octets with its CRLF |
//! | `bare-lf` | a line ended by LF without CR |
//! | `bare-cr` | a CR not followed by LF inside the message |
//! | `nul-byte` | a NUL byte in a command, reply or message |
//! | `non-utf8` | a command or reply that is not UTF-8 (shown lossily) |
//! | `unknown-command` | a verb this dissector does not know (shown as sent) |
//! | `unexpected-reply` | a reply with no command waiting for it |
//! | `unpaired-reply` | after a loss, a reply that cannot be attributed to a command |
//! | `unpaired-command` | after a loss, a command whose reply was lost (a later reply only a later command could answer came) |
//! | `bad-reply` | a server line that is not `NNN[ -]text` |
//! | `reply-code-mismatch` | lines of one multi-line reply carry different codes |
//! | `early-talker` | the client spoke before the greeting |
//! | `bad-bdat` | BDAT without a valid size: its chunk can't be found, resynchronising |
//! | `fake-end-of-data` | a lone "." beside a bare LF inside DATA (SMTP smuggling) |
//! | `too-many-pending` | more than [`MAX_PENDING`] commands unanswered (oldest forgotten) |
//! | `too-many-transactions` | more than [`MAX_TRANSACTIONS`] in one session (not recorded) |
//! | `too-many-recipients` | more than [`MAX_RCPT`] in one transaction or [`MAX_SESSION_RCPT`] in the session (not recorded) |
//! | `address-too-long` | a MAIL/RCPT address or parameter value over [`MAX_ADDR`] octets (cut) |
//! | `clear-after-starttls` | STARTTLS was accepted but the client went on in clear (read as SMTP) |
//! | `hold-overflow` | more than [`MAX_HOLD`] bytes sent before the reply deciding how to read them (dropped as a gap) |
mod client;
mod command;
mod findings;
mod message;
mod record;
mod reply;
mod resync;
mod server;

use std::collections::{BTreeMap, VecDeque};

use serde_json::{Map, Value};

use crate::findings::dsn::DsnRecipient;
use crate::findings::Finding;
use crate::flow::Dir;
use crate::proto::auth::SaslExchange;
use crate::proto::line::{Line, LineBuffer};
use crate::proto::tls::{TlsHellos, TlsInfo};
use crate::proto::{Dissector, Event, Privacy, SessionStart};
use crate::time::{millis_between, Ts};

pub use message::{BodyFacts, BodyScanner, HeaderSummary, Headers};
pub use record::SmtpRecord;
pub use reply::Reply;

/// Commands waiting for a reply.
pub const MAX_PENDING: usize = 1024;
/// Transactions recorded per session.
pub const MAX_TRANSACTIONS: usize = 1000;
/// Recipients recorded per transaction (Postfix's default limit too).
pub const MAX_RCPT: usize = 1000;
/// Recipients recorded per session, all transactions together: ten full messages' worth.
/// Without it one unauthenticated connection could make [`MAX_TRANSACTIONS`] ×
/// [`MAX_RCPT`] records.
pub const MAX_SESSION_RCPT: usize = 10_000;
/// Longest address or parameter value kept (RFC 5321 §4.5.3.1.3: a path is at most 256
/// octets); the rest is cut and counted.
pub const MAX_ADDR: usize = 256;
/// What one recorded transaction or recipient costs besides its strings (structs, maps,
/// the reply): the unit of [`Dissector::held_bytes`].
const RECORD_OVERHEAD: usize = 160;
/// Client bytes held while waiting for a deciding reply.
pub const MAX_HOLD: usize = 256 * 1024;
/// Events not yet polled.
pub const MAX_EVENTS: usize = 65536;
/// Events per anomaly id; further ones are only counted.
pub const MAX_SAME_ANOMALY: u64 = 8;
/// Command-shaped lines held while resynchronising (the oldest are dropped).
const MAX_RESYNC_HELD: usize = 64;
/// Longest HELO argument kept.
const MAX_HELO: usize = 255;

/// The server's first reply.
#[derive(Clone, Debug, PartialEq)]
pub struct Greeting {
    pub code: u16,
    pub text: String,
    pub delay_ms: Option<f64>,
}

/// One RCPT TO and its reply.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rcpt {
    pub addr: String,
    pub params: BTreeMap<String, Option<String>>,
    pub reply: Option<Reply>,
}

/// One mail transaction (MAIL … end of data), kept whatever its outcome.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Transaction {
    /// None when the transaction began without a MAIL we saw (mid-stream pickup).
    pub mail_from: Option<String>,
    pub mail_params: BTreeMap<String, Option<String>>,
    pub mail_reply: Option<Reply>,
    pub rcpt: Vec<Rcpt>,
    /// Reply code to DATA (354 or a refusal).
    pub data_code: Option<u16>,
    pub bdat_chunks: u64,
    /// Message bytes (after dot-unstuffing); None when no message was sent.
    pub size: Option<u64>,
    /// A gap hit the message: `size` counts the missing bytes, content unknown.
    pub incomplete: bool,
    /// Decoded header block (always kept internally; shown only with show_headers).
    pub summary: Option<HeaderSummary>,
    pub facts: BodyFacts,
    /// End-of-data (or last / failing BDAT) reply.
    pub reply: Option<Reply>,
    pub queue_id: Option<String>,
    /// Ended by RSET before a reply to its message.
    pub aborted: bool,
    /// The recipients of a delivery report (the message is a DSN).
    pub dsn: Vec<DsnRecipient>,
}

/// Session-wide facts later findings use.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionFacts {
    /// Commands sent while earlier ones were unanswered.
    pub pipelined_commands: u64,
    /// … of which while the server had not offered PIPELINING.
    pub pipelined_without_offer: u64,
    /// AUTH sent before TLS began.
    pub auth_in_clear: bool,
    /// Events dropped because nobody polled them.
    pub events_dropped: u64,
}

/// What a waiting command is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Awaiting {
    Ehlo,
    Mail(Option<usize>),
    Rcpt(Option<usize>, Option<usize>),
    Data(Option<usize>),
    EndOfData(Option<usize>),
    Bdat(Option<usize>, bool),
    StartTls,
    Auth,
    Other,
}

#[derive(Clone, Copy, Debug)]
struct Pending {
    what: Awaiting,
    /// Last byte of the command (for BDAT: of its chunk).
    ts: Ts,
    /// Its reply is the next one once those before it are answered: nothing was lost since it
    /// was sent, or a reply only it could answer realigned the queue. Otherwise (after a loss)
    /// a reply is paired with it only on evidence, and without a latency.
    sure: bool,
    /// QUIT (a 221 answers only it).
    quit: bool,
}

/// How the client's next bytes are read.
#[derive(Debug)]
enum ClientMode {
    Resync,
    Command,
    AuthResponse,
    /// After a loss, an AUTH whose outcome is unknown: a line not shaped like a command is a
    /// SASL response (redacted).
    MaybeSasl,
    Data,
    Bdat {
        remaining: u64,
        last: bool,
    },
    Tls,
}

#[derive(Debug)]
enum Held {
    Data(Vec<u8>, Ts),
    Gap(u64, Ts),
}

/// A command-shaped line held while resynchronising, with the chunk that follows a BDAT.
#[derive(Debug)]
struct ResyncHeld {
    /// The line with its terminator, then (BDAT) the chunk's bytes.
    raw: Vec<u8>,
    ts: Ts,
    /// Chunk bytes beyond [`MAX_HOLD`]: replayed as a gap inside the chunk.
    lost: u64,
}

/// Client bytes waiting for the reply to `until`.
#[derive(Debug)]
struct Hold {
    until: Awaiting,
    items: VecDeque<Held>,
    bytes: usize,
    overflowed: bool,
}

/// The SMTP dissector of one session.
pub struct Smtp {
    privacy: Privacy,
    start: SessionStart,
    events: VecDeque<Event>,
    anomalies: BTreeMap<&'static str, u64>,
    client_lines: LineBuffer,
    server_lines: LineBuffer,
    client_mode: ClientMode,
    server_resync: bool,
    /// Start time of the partial server line in `server_lines`.
    server_partial_ts: Ts,
    building: Option<(reply::ReplyBuilder, Ts)>,
    pending: VecDeque<Pending>,
    hold: Option<Hold>,
    /// Replies without a command are expected (after a gap or pickup).
    lenient: bool,
    /// Client bytes were lost (or the session picked up): replies to commands never seen may
    /// come before those of the commands sent since, which are not [`Pending::sure`].
    cmds_lost: bool,
    /// While resynchronising the client side: a server reply other than 354 came since the
    /// loss, so the client is not inside a message (a line shaped like a command is one).
    resync_reply: bool,
    /// While resynchronising, before any such reply: the lines shaped like commands (with
    /// their terminators, and when each came). A server reply shows they were commands (a
    /// client inside a message gets none before its "."); a "." that they were body lines.
    resync_held: Vec<ResyncHeld>,
    /// Resynchronising only because a BDAT had no valid size (nothing lost): a reply that a
    /// server gap lost answered it, so the client is not inside a message.
    resync_bad_bdat: bool,
    /// The next client line is the first after a loss (it may end a line begun in it).
    resync_first_line: bool,
    /// That line was a "." (when): an end of message once a reply comes before a body line.
    resync_dot: Option<Ts>,
    /// Bytes of the last held BDAT's chunk still to come: they are its chunk if it was a
    /// command (read raw with it, not as lines: a chunk need not end with CRLF).
    resync_chunk: u64,
    /// Chunk bytes in `resync_held` (at most [`MAX_HOLD`]; more are kept as a count).
    resync_bytes: usize,
    greeting_seen: bool,
    greeting: Option<Greeting>,
    helo: Option<String>,
    /// Client bytes were lost at some point (or the session picked up): a name sent later
    /// and refused is no stand-in for the one the lost bytes may have held.
    client_lost: bool,
    ehlo: Vec<String>,
    tls: Option<TlsHellos>,
    tls_mode: Option<&'static str>,
    tls_event_due: bool,
    sasl: Option<SaslExchange>,
    /// A step of the SASL exchange was lost: which response is which is unknown, so none more
    /// is fed to `sasl` (a password must not be read as the user name).
    sasl_lost: bool,
    auth_code: Option<u16>,
    transactions: Vec<Transaction>,
    open_tx: Option<usize>,
    /// The last EHLO/HELO waiting for its reply: its time, the transaction then open, its name.
    helo_sent: Option<(Ts, Option<usize>, String)>,
    /// A MAIL sent with a transaction open: (that transaction, the MAIL's own).
    mail_displaced: Option<(usize, usize)>,
    /// The message being read and its transaction.
    body: Option<(Option<usize>, message::BodyScanner)>,
    facts: SessionFacts,
    /// TLS plaintext (uprobes) replaces the TLS bytes: read it as commands again.
    plaintext: bool,
    /// The reply to STARTTLS.
    starttls_code: Option<u16>,
    /// STARTTLS was accepted and the client's first byte after it is still to come.
    starttls_probe: bool,
    /// The `TlsStarted` event for that 220, due once the client's first byte is TLS.
    starttls_event: Option<Ts>,
    /// … and that byte began no TLS record: the client carried on in clear.
    starttls_clear: bool,
    /// The first AUTH sent in clear, as shown ("AUTH PLAIN").
    auth_clear: Option<String>,
    /// Per-message findings, decided at the end of each message.
    message_findings: Vec<Finding>,
    /// Recipients recorded in all transactions.
    rcpts: usize,
    /// Bytes the recorded transactions hold (estimated): [`Dissector::held_bytes`].
    recorded_bytes: usize,
}

impl Smtp {
    pub fn new(privacy: Privacy, start: SessionStart) -> Self {
        let mut s = Self {
            privacy,
            start,
            events: VecDeque::new(),
            anomalies: BTreeMap::new(),
            client_lines: LineBuffer::new(),
            server_lines: LineBuffer::new(),
            client_mode: ClientMode::Command,
            server_resync: false,
            server_partial_ts: 0,
            building: None,
            pending: VecDeque::new(),
            hold: None,
            lenient: false,
            cmds_lost: false,
            resync_reply: false,
            resync_held: Vec::new(),
            resync_bad_bdat: false,
            resync_first_line: start.partial,
            resync_dot: None,
            resync_chunk: 0,
            resync_bytes: 0,
            greeting_seen: false,
            greeting: None,
            helo: None,
            client_lost: start.partial,
            ehlo: Vec::new(),
            tls: None,
            tls_mode: None,
            tls_event_due: false,
            sasl: None,
            sasl_lost: false,
            auth_code: None,
            transactions: Vec::new(),
            open_tx: None,
            helo_sent: None,
            mail_displaced: None,
            body: None,
            facts: SessionFacts::default(),
            plaintext: false,
            starttls_code: None,
            starttls_probe: false,
            starttls_event: None,
            starttls_clear: false,
            auth_clear: None,
            message_findings: Vec::new(),
            rcpts: 0,
            recorded_bytes: 0,
        };
        if start.implicit_tls {
            s.tls = Some(TlsHellos::new());
            s.tls_mode = Some("implicit");
            s.tls_event_due = true;
            s.client_mode = ClientMode::Tls;
        } else if start.partial {
            s.client_mode = ClientMode::Resync;
            s.server_resync = true;
            s.greeting_seen = true;
            s.lenient = true;
            s.cmds_lost = true;
        }
        s
    }

    // Getters for findings and tests.

    pub fn transactions(&self) -> &[Transaction] {
        &self.transactions
    }
    pub fn facts(&self) -> &SessionFacts {
        &self.facts
    }
    /// Every anomaly id with how often it happened.
    pub fn anomaly_counts(&self) -> &BTreeMap<&'static str, u64> {
        &self.anomalies
    }
    pub fn greeting(&self) -> Option<&Greeting> {
        self.greeting.as_ref()
    }
    /// Capability lines of the last successful EHLO.
    pub fn capabilities(&self) -> &[String] {
        &self.ehlo
    }
    /// Whether the server offered `keyword` (e.g. "PIPELINING", "STARTTLS").
    pub fn offered(&self, keyword: &str) -> bool {
        self.ehlo
            .iter()
            .any(|c| c.split([' ', '=']).next() == Some(keyword))
    }
    pub fn tls_info(&self) -> Option<&TlsInfo> {
        self.tls.as_ref().map(TlsHellos::info)
    }

    fn emit(&mut self, e: Event) {
        if self.events.len() >= MAX_EVENTS {
            self.facts.events_dropped += 1;
        } else {
            self.events.push_back(e);
        }
    }

    fn anomaly(&mut self, id: &'static str, ts: Ts) {
        let n = self.anomalies.entry(id).or_insert(0);
        *n += 1;
        if *n <= MAX_SAME_ANOMALY {
            self.emit(Event::Anomaly { ts, id });
        }
    }

    fn tls_started(&mut self, ts: Ts) {
        self.tls_event_due = false;
        self.emit(Event::TlsStarted { ts });
    }

    fn push_pending(&mut self, what: Awaiting, ts: Ts) {
        if self.pending.len() >= MAX_PENDING {
            self.pending.pop_front();
            self.anomaly("too-many-pending", ts);
        }
        self.pending.push_back(Pending {
            what,
            ts,
            sure: !self.cmds_lost,
            quit: false,
        });
    }

    /// Holds the client's following bytes until the reply to `until`.
    fn hold_until(&mut self, until: Awaiting) {
        self.hold = Some(Hold {
            until,
            items: VecDeque::new(),
            bytes: 0,
            overflowed: false,
        });
    }

    fn hold_push(&mut self, item: Held) {
        let Some(h) = self.hold.as_mut() else {
            return;
        };
        let ts = match &item {
            Held::Data(_, ts) | Held::Gap(_, ts) => *ts,
        };
        let len = match &item {
            Held::Data(d, _) => d.len(),
            Held::Gap(..) => 0,
        };
        if h.bytes + len <= MAX_HOLD {
            h.bytes += len;
            h.items.push_back(item);
            return;
        }
        // Too much to hold: keep only the byte count, as a gap, in order.
        let mut lost = len as u64;
        for it in h.items.drain(..) {
            lost += match it {
                Held::Data(d, _) => d.len() as u64,
                Held::Gap(n, _) => n,
            };
        }
        if let Held::Gap(n, _) = item {
            lost += n;
        }
        h.items.push_back(Held::Gap(lost, ts));
        h.bytes = 0;
        if !std::mem::replace(&mut h.overflowed, true) {
            self.anomaly("hold-overflow", ts);
        }
    }

    /// The deciding reply came (the client mode is already set): read the held bytes.
    fn release_hold(&mut self) {
        let Some(hold) = self.hold.take() else {
            return;
        };
        let mut queue = hold.items;
        while let Some(item) = queue.pop_front() {
            match item {
                Held::Data(d, ts) => self.client_data(&d, ts),
                Held::Gap(n, ts) => self.client_gap(n, ts),
            }
            if self.hold.is_some() {
                for it in queue.drain(..) {
                    self.hold_push(it);
                }
                return;
            }
        }
    }

    fn tx_mut(&mut self, i: Option<usize>) -> Option<&mut Transaction> {
        i.and_then(|i| self.transactions.get_mut(i))
    }

    /// The open transaction, or a new one (None when over the limit).
    fn current_tx(&mut self, ts: Ts) -> Option<usize> {
        if self.open_tx.is_none() {
            self.open_tx = self.new_tx(Transaction::default(), ts);
        }
        self.open_tx
    }

    fn new_tx(&mut self, tx: Transaction, ts: Ts) -> Option<usize> {
        if self.transactions.len() >= MAX_TRANSACTIONS {
            self.anomaly("too-many-transactions", ts);
            return None;
        }
        self.recorded_bytes += RECORD_OVERHEAD
            + tx.mail_from.as_ref().map_or(0, String::len)
            + Self::params_len(&tx.mail_params);
        self.transactions.push(tx);
        Some(self.transactions.len() - 1)
    }

    /// An address as recorded: cut at [`MAX_ADDR`] (counted).
    fn capped(&mut self, mut s: String, ts: Ts) -> String {
        if s.len() > MAX_ADDR {
            self.anomaly("address-too-long", ts);
            crate::proto::auth::truncate(&mut s, MAX_ADDR);
            // Truncating keeps the capacity: the cut is only worth it with the memory given back.
            s.shrink_to_fit();
        }
        s
    }

    /// Parameters as recorded: names and values cut like addresses.
    fn capped_params(
        &mut self,
        params: BTreeMap<String, Option<String>>,
        ts: Ts,
    ) -> BTreeMap<String, Option<String>> {
        if params
            .iter()
            .all(|(k, v)| k.len() <= MAX_ADDR && v.as_ref().is_none_or(|v| v.len() <= MAX_ADDR))
        {
            return params;
        }
        params
            .into_iter()
            .map(|(k, v)| (self.capped(k, ts), v.map(|v| self.capped(v, ts))))
            .collect()
    }

    /// Bytes of one recorded recipient or transaction's strings.
    fn params_len(params: &BTreeMap<String, Option<String>>) -> usize {
        params
            .iter()
            .map(|(k, v)| k.len() + v.as_ref().map_or(0, String::len))
            .sum()
    }

    fn line_anomalies<'l>(&mut self, line: &Line<'l>, ts: Ts) -> std::borrow::Cow<'l, str> {
        if line.overlong || line.text.len() as u64 > message::MAX_TEXT_LINE {
            self.anomaly("line-too-long", ts);
        }
        // An overlong line lost its CR with its tail: not a bare LF.
        if line.bare_lf && !line.overlong {
            self.anomaly("bare-lf", ts);
        }
        if line.text.contains(&0) {
            self.anomaly("nul-byte", ts);
        }
        let text = text_of(line.text);
        if let std::borrow::Cow::Owned(_) = text {
            self.anomaly("non-utf8", ts);
        }
        text
    }
}

impl Dissector for Smtp {
    fn data(&mut self, dir: Dir, data: &[u8], ts: Ts) {
        if data.is_empty() {
            return;
        }
        if self.tls_event_due {
            self.tls_started(ts);
        }
        match dir {
            Dir::ToServer => self.client_data(data, ts),
            Dir::ToClient => self.server_data(data, ts),
        }
    }

    fn skipped(&mut self, dir: Dir, _len: u64) {
        if let Some(t) = &mut self.tls {
            t.skipped(dir);
        }
    }

    fn gap(&mut self, dir: Dir, len: u64, ts: Ts) {
        match dir {
            Dir::ToServer => self.client_gap(len, ts),
            Dir::ToClient => self.server_gap(ts),
        }
    }

    fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    fn held_bytes(&self) -> usize {
        self.recorded_bytes + self.hold.as_ref().map_or(0, |h| h.bytes) + self.resync_bytes
    }

    /// After STARTTLS the client must start over with EHLO (RFC 3207 §4.2);
    /// with implicit TLS nothing was read yet and the greeting comes first.
    /// Either way no command is waiting and no partial line is kept.
    fn resume_plaintext(&mut self, _ts: Ts) -> bool {
        if self.tls.is_none() || self.plaintext {
            return self.plaintext;
        }
        self.plaintext = true;
        // The plaintext of a TLS session: it did begin.
        self.starttls_probe = false;
        if let Some(at) = self.starttls_event.take() {
            self.tls_started(at);
        }
        self.client_mode = ClientMode::Command;
        self.client_lines = LineBuffer::new();
        self.server_lines = LineBuffer::new();
        self.building = None;
        self.hold = None;
        self.pending.clear();
        self.server_resync = false;
        true
    }

    fn findings(&self) -> Vec<Finding> {
        self.session_findings()
    }

    fn tls_offered(&self) -> bool {
        self.offered("STARTTLS")
    }

    fn record(&self) -> Map<String, Value> {
        match serde_json::to_value(self.typed_record(self.session_findings())) {
            Ok(Value::Object(m)) => m,
            _ => Map::new(),
        }
    }

    fn record_fields(&self, findings: Vec<Finding>) -> crate::session::Fields {
        crate::session::Fields::smtp(self.typed_record(findings))
    }
}

fn sasl_mech(s: &Option<SaslExchange>) -> &str {
    s.as_ref().map_or("", |s| s.mechanism.as_str())
}

/// A line as text: borrowed when it is UTF-8 (checked by the fast validator; the lossy
/// conversion's is several times slower), else with U+FFFD for the bad bytes.
pub(super) fn text_of(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(s) => std::borrow::Cow::Borrowed(s),
        Err(_) => String::from_utf8_lossy(bytes),
    }
}

impl Smtp {
    /// How an AUTH command is shown; also starts the exchange.
    fn auth_command(&mut self, arg: &str) -> String {
        let (mech, ir) = match arg.split_once(' ') {
            Some((m, ir)) => (m, Some(ir.trim())),
            None => (arg.trim(), None),
        };
        let mut sasl = SaslExchange::new(mech);
        if let Some(ir) = ir {
            sasl.client_response(ir);
        }
        let shown = SaslExchange::command_arg(&sasl.mechanism, ir, self.privacy.show_secrets);
        self.sasl = Some(sasl);
        self.sasl_lost = false;
        self.auth_code = None;
        if self.tls.is_none() {
            self.facts.auth_in_clear = true;
            if self.auth_clear.is_none() {
                self.auth_clear = Some(format!("AUTH {}", sasl_mech(&self.sasl)));
            }
        }
        shown
    }

    fn auth_response(&mut self, line: &str) -> String {
        if let Some(s) = self.sasl.as_mut().filter(|_| !self.sasl_lost) {
            s.client_response(line);
        }
        SaslExchange::response_arg(line, self.privacy.show_secrets)
    }

    fn greeting_delay(&self, ts: Ts) -> Option<f64> {
        self.start.syn_ts.map(|syn| millis_between(syn, ts))
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_classes;
#[cfg(test)]
mod tests_loss;
