//! `mail-trace why QUEUEID`: the whole story of one message from a saved JSON stream (and
//! log files): the session that brought it in with its replies, every log line about it,
//! the bounce it caused, and the outgoing session that carried it on when that was traced.
//! `--live` runs the tail's pipeline (`tail --json --maillog`) into memory and tells the
//! story once the delivery outcome is logged.
use std::cell::RefCell;
use std::collections::{BTreeSet, VecDeque};
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;

use serde_json::Value;

use crate::maillog::follow::Merged;
use crate::maillog::Kind;
use crate::proto::Privacy;

#[derive(Clone, Debug, clap::Args)]
pub struct WhyArgs {
    /// The Postfix queue id (`4Xyz…`, as in `queued as …`).
    #[arg(required_unless_present = "from")]
    pub queue_id: Option<String>,
    /// JSON lines written by `tail --json` or `replay --json` (with `--maillog`); `-` for stdin.
    #[arg(long, value_name = "FILE", num_args = 1.., conflicts_with = "live")]
    pub json: Vec<PathBuf>,
    /// Trace live (as `tail --json --maillog`) and tell the story once the message's
    /// delivery outcome is logged (or at --duration / Ctrl-C, with what is known).
    #[arg(long)]
    pub live: bool,
    /// With --live, instead of a queue id: the first message whose MAIL FROM matches
    /// this glob.
    #[arg(
        long,
        value_name = "ADDR",
        requires = "live",
        conflicts_with = "queue_id"
    )]
    pub from: Option<String>,
    /// With --live: stop after this many seconds.
    #[arg(long, value_name = "SECS", requires = "live")]
    pub duration: Option<u64>,
    #[command(flatten)]
    pub capture: crate::cmd::live::LiveArgs,
    #[command(flatten)]
    pub engine: crate::cmd::engine::EngineArgs,
    #[command(flatten)]
    pub logs: crate::cmd::maillog::LogArgs,
}

/// How many times a bounce may lead to another queue id (a loop guard).
const MAX_IDS: usize = 16;

/// What is known about one message.
#[derive(Debug, Default, PartialEq)]
pub struct Story {
    /// The queue id asked for, then those of the bounces it caused.
    pub ids: Vec<String>,
    /// Sessions that queued one of the ids.
    pub incoming: Vec<Value>,
    /// Log entries about the ids (JSON form), in time order, without duplicates.
    pub lines: Vec<Value>,
    /// Traced sessions to a `relay=` of a delivery line.
    pub outgoing: Vec<Value>,
}

/// Builds the story of `queue_id` from JSON records and log entries (already in JSON form).
pub fn story(queue_id: &str, records: &[Value], log: &[Value]) -> Story {
    let sessions: Vec<&Value> = records.iter().filter(|r| r["type"] == "session").collect();
    // Every log entry: inside records, follow-up records, and the log files.
    let mut entries: Vec<(Option<u64>, &Value)> = Vec::new();
    for s in &sessions {
        for e in s["log"].as_array().into_iter().flatten() {
            entries.push((s["id"].as_u64(), e));
        }
    }
    for r in records.iter().filter(|r| r["type"] == "log") {
        entries.push((r["session"].as_u64(), r));
    }
    for e in log {
        entries.push((None, e));
    }
    let mut ids = vec![queue_id.to_string()];
    let mut i = 0;
    while i < ids.len() && ids.len() < MAX_IDS {
        let q = ids[i].clone();
        for (_, e) in &entries {
            if e["queue_id"] == q.as_str() && e["event"] == Kind::Bounce.name() {
                if let Some(n) = e["fields"]["new_queue_id"].as_str() {
                    if !ids.iter().any(|x| x == n) {
                        ids.push(n.to_string());
                    }
                }
            }
        }
        i += 1;
    }
    let has_id = |v: &Value| v.as_str().is_some_and(|s| ids.iter().any(|x| x == s));
    let incoming: Vec<Value> = sessions
        .iter()
        .filter(|s| {
            s["transactions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|t| has_id(&t["queue_id"]))
        })
        .map(|s| (*s).clone())
        .collect();
    let mut seen = BTreeSet::new();
    let mut lines: Vec<Value> = Vec::new();
    for (_, e) in &entries {
        if !has_id(&e["queue_id"]) {
            continue;
        }
        let mut clean = (*e).clone();
        if let Value::Object(m) = &mut clean {
            m.remove("type");
            m.remove("session");
            m.remove("transaction");
            m.remove("rcpt");
            m.remove("line");
            // An unmatched record and the same line read from the file are one line.
            m.remove("unmatched");
        }
        if seen.insert(clean.to_string()) {
            lines.push((*e).clone());
        }
    }
    lines.sort_by(|a, b| a["ts"].as_str().cmp(&b["ts"].as_str()));
    let mut outgoing = Vec::new();
    for l in &lines {
        let Some(relay) = l["fields"]["relay"].as_str() else {
            continue;
        };
        let Some(addr) = relay_addr(relay) else {
            continue;
        };
        for s in &sessions {
            let server: Option<SocketAddr> = s["server"].as_str().and_then(|x| x.parse().ok());
            let near = match (ts_of(&s["start"]), ts_of(&l["ts"])) {
                // Started during the delivery attempt: its connection and transmission
                // delays (the last two of `delays=a/b/c/d`) before the line, log
                // timestamps being whole seconds.
                (Some(st), Some(ts)) => {
                    let window = attempt_secs(&l["fields"]) + 2.0;
                    st <= ts + 1_000_000_000 && st as f64 >= ts as f64 - window * 1e9
                }
                _ => false,
            };
            if server == Some(addr) && near && !outgoing.contains(*s) {
                outgoing.push((*s).clone());
            }
        }
    }
    Story {
        ids,
        incoming,
        lines,
        outgoing,
    }
}

fn ts_of(v: &Value) -> Option<crate::time::Ts> {
    crate::maillog::syslog::rfc3339(v.as_str()?)
}

/// Seconds of the delivery attempt: `c + d` of `delays=a/b/c/d`, else `delay`.
fn attempt_secs(fields: &Value) -> f64 {
    let parts: Vec<f64> = fields["delays"]
        .as_str()
        .unwrap_or("")
        .split('/')
        .filter_map(|x| x.parse().ok())
        .collect();
    match parts.as_slice() {
        [_, _, c, d] => c + d,
        _ => fields["delay"].as_f64().unwrap_or(0.0),
    }
}

/// `mx.example.net[192.0.2.7]:25` → the address.
fn relay_addr(relay: &str) -> Option<SocketAddr> {
    let (_, r) = relay.split_once('[')?;
    let (ip, port) = r.split_once(']')?;
    let ip: std::net::IpAddr = ip.strip_prefix("IPv6:").unwrap_or(ip).parse().ok()?;
    let port: u16 = port.strip_prefix(':')?.parse().ok()?;
    Some(SocketAddr::new(ip, port))
}

/// The story as text.
pub fn render(st: &Story) -> String {
    let mut out = String::new();
    let q = st.ids.first().map_or("", String::as_str);
    out.push_str(&format!("Message {q}"));
    if st.ids.len() > 1 {
        out.push_str(&format!(" (bounce: {})", st.ids[1..].join(", ")));
    }
    out.push('\n');
    if st.incoming.is_empty() && st.lines.is_empty() {
        out.push_str("  nothing known about it in the input\n");
        return out;
    }
    for s in &st.incoming {
        session(&mut out, "Received", s, &st.ids);
    }
    if st.incoming.is_empty() {
        out.push_str("  the session that brought it in was not traced\n");
    }
    if !st.lines.is_empty() {
        out.push_str("Log:\n");
        for l in &st.lines {
            out.push_str(&format!("  {}\n", log_text(l)));
        }
    }
    for s in &st.outgoing {
        session(&mut out, "Sent on", s, &[]);
    }
    out
}

fn session(out: &mut String, what: &str, s: &Value, ids: &[String]) {
    let st = |k: &str| s[k].as_str().unwrap_or("?").to_string();
    out.push_str(&format!(
        "{what} in session #{} {} {} -> {}, {} .. {} (close {})\n",
        s["id"],
        st("proto"),
        st("client"),
        st("server"),
        st("start"),
        st("end"),
        st("close")
    ));
    let mut facts = Vec::new();
    if let Some(h) = s["helo"].as_str() {
        facts.push(format!("helo {h}"));
    }
    if let Some(m) = s["tls_mode"].as_str() {
        facts.push(format!("tls {m}"));
    }
    if let Some(u) = s["auth"]["user"].as_str() {
        facts.push(format!("auth {u} ({})", s["auth"]["code"]));
    }
    if !facts.is_empty() {
        out.push_str(&format!("  {}\n", facts.join(", ")));
    }
    for t in s["transactions"].as_array().into_iter().flatten() {
        let mine = ids.is_empty()
            || t["queue_id"]
                .as_str()
                .is_some_and(|q| ids.iter().any(|x| x == q));
        if !mine {
            continue;
        }
        out.push_str(&format!(
            "  MAIL FROM:<{}>\n",
            t["mail_from"].as_str().unwrap_or("")
        ));
        for r in t["rcpt"].as_array().into_iter().flatten() {
            out.push_str(&format!(
                "  RCPT TO:<{}> -> {}\n",
                r["addr"].as_str().unwrap_or(""),
                reply_text(r)
            ));
        }
        if !t["reply"].is_null() {
            out.push_str(&format!("  end of data -> {}\n", reply_text(&t["reply"])));
        }
    }
    for e in s["log"].as_array().into_iter().flatten() {
        // Lines of the session without this message's queue id (NOQUEUE rejects, connect).
        if e["queue_id"].is_null() {
            out.push_str(&format!("  log: {}\n", log_text(e)));
        }
    }
}

fn reply_text(r: &Value) -> String {
    let mut s = r["code"].to_string();
    if let Some(e) = r["enhanced"].as_str() {
        s.push_str(&format!(" {e}"));
    }
    if let Some(t) = r["text"].as_str() {
        s.push_str(&format!(" {t}"));
    }
    s
}

fn log_text(e: &Value) -> String {
    let mut s = format!(
        "{} {}",
        e["ts"].as_str().unwrap_or("?"),
        e["program"].as_str().unwrap_or("?")
    );
    if let Some(p) = e["pid"].as_u64() {
        s.push_str(&format!("[{p}]"));
    }
    if let Some(q) = e["queue_id"].as_str() {
        s.push_str(&format!(" {q}"));
    }
    s.push_str(&format!(" {}:", e["event"].as_str().unwrap_or("?")));
    for (k, v) in e["fields"].as_object().into_iter().flatten() {
        match v {
            Value::String(x) if x.contains(' ') => s.push_str(&format!(" {k}=({x})")),
            Value::String(x) => s.push_str(&format!(" {k}={x}")),
            other => s.push_str(&format!(" {k}={other}")),
        }
    }
    if let Some(sess) = e["session"].as_u64() {
        s.push_str(&format!("  [#{sess}]"));
    }
    // A line of an smtpd connection no session agreed with: said, with the reason.
    if let Some(why) = e["unmatched"].as_str() {
        s.push_str(&format!("  [unmatched: {why}]"));
    }
    s
}

/// The most JSON records `--live` keeps (the oldest go first).
const MAX_LIVE_RECORDS: usize = 10_000;

/// What `--live` has seen so far.
struct Live {
    /// The JSON lines the tail's output wrote, not yet parsed.
    raw: Rc<RefCell<Vec<u8>>>,
    records: VecDeque<Value>,
    queue_id: Option<String>,
    from: Option<String>,
}

impl Live {
    /// Takes in what the tail wrote; true once the message's outcome is known.
    fn done(&mut self) -> bool {
        let raw = std::mem::take(&mut *self.raw.borrow_mut());
        let mut found = false;
        for line in raw.split(|&b| b == b'\n') {
            let Ok(v) = serde_json::from_slice::<Value>(line) else {
                continue;
            };
            if v["type"] == "run" {
                continue; // how the run was made, not a record
            }
            if self.queue_id.is_none() {
                self.queue_id = self.from.as_deref().and_then(|f| queued_from(&v, f));
            }
            if self.records.len() == MAX_LIVE_RECORDS {
                self.records.pop_front();
            }
            self.records.push_back(v);
            found = true;
        }
        found
            && self
                .queue_id
                .as_deref()
                .is_some_and(|q| self.records.iter().any(|r| outcome(r, q)))
    }
}

/// The queue id of the first message in a session record whose MAIL FROM matches `glob`.
fn queued_from(rec: &Value, glob: &str) -> Option<String> {
    if rec["type"] != "session" {
        return None;
    }
    rec["transactions"]
        .as_array()?
        .iter()
        .filter(|t| {
            t["mail_from"]
                .as_str()
                .is_some_and(|m| crate::output::filter::glob_match(glob, m))
        })
        .find_map(|t| t["queue_id"].as_str().map(str::to_string))
}

/// Whether the record holds the delivery outcome of `queue_id`: a `status=` line or a bounce.
fn outcome(rec: &Value, queue_id: &str) -> bool {
    let is = |e: &Value| {
        e["queue_id"] == queue_id
            && (!e["fields"]["status"].is_null() || e["event"] == Kind::Bounce.name())
    };
    match rec["type"].as_str() {
        Some("log") => is(rec),
        Some("session") => rec["log"].as_array().is_some_and(|l| l.iter().any(is)),
        _ => false,
    }
}

/// A writer into shared memory: the tail's output, read by [`Live::done`].
struct Shared(Rc<RefCell<Vec<u8>>>);

impl std::io::Write for Shared {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.borrow_mut().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn run_live(args: WhyArgs) -> anyhow::Result<u8> {
    if !args.logs.enabled() {
        anyhow::bail!(
            "why --live: give --maillog[=PATH] or --journal (the outcome comes from the log)"
        );
    }
    let output = crate::cmd::output::OutputArgs {
        json: true,
        events: false,
        summary: false,
        color: crate::cmd::output::ColorChoice::Never,
        explain: crate::cmd::output::ExplainChoice::Never,
        show_headers: false,
        show_secrets: false,
        findings: None,
    };
    let tail = crate::cmd::tail::TailArgs {
        live: args.capture,
        output: output.clone(),
        engine: args.engine,
        proto: Vec::new(),
        from: Vec::new(),
        rcpt: Vec::new(),
        errors: false,
        write: None,
        duration: args.duration,
        tls: crate::cmd::live::TlsArgs {
            tls_plaintext: false,
            libssl: Vec::new(),
            pid: None,
            comm: Vec::new(),
        },
        logs: args.logs,
    };
    let raw = Rc::new(RefCell::new(Vec::new()));
    let mut live = Live {
        raw: raw.clone(),
        records: VecDeque::new(),
        queue_id: args.queue_id,
        from: args.from,
    };
    let out = output.build(Shared(raw), false);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(crate::cmd::tail::trace(tail, out, || live.done()))?;
    // What the end flushed (sessions still open or lingering).
    live.done();
    let Some(q) = live.queue_id.clone() else {
        let from = live.from.unwrap_or_default();
        let _ = writeln!(
            std::io::stdout(),
            "No message from {} was seen",
            crate::output::printable::Printable(&from)
        );
        return Ok(1);
    };
    let records: Vec<Value> = live.records.into();
    print_story(&q, &records, &[])
}

fn print_story(queue_id: &str, records: &[Value], log: &[Value]) -> anyhow::Result<u8> {
    let st = story(queue_id, records, log);
    // Every value in the story came from the wire or a log: shown printable.
    let text = render(&st);
    let mut out = std::io::stdout().lock();
    if let Err(e) = out
        .write_all(crate::output::printable::printable_lines(&text).as_bytes())
        .and_then(|()| out.flush())
    {
        // `why … | head` is a normal way to stop reading.
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            return Err(anyhow::Error::from(e).context("writing the story"));
        }
    }
    Ok(if st.incoming.is_empty() && st.lines.is_empty() {
        1
    } else {
        0
    })
}

impl WhyArgs {
    /// What clap cannot say: options that mean something only with `--live`.
    pub fn usage_problem(&self) -> Option<&'static str> {
        if self.live {
            return None;
        }
        if self.logs.journal {
            return Some("why: --journal needs --live; give --maillog=PATH for saved logs");
        }
        let c = &self.capture;
        let capturing = !c.interfaces.is_empty()
            || c.ports.is_some()
            || !c.hosts.is_empty()
            || c.snaplen != 0
            || c.xdp
            || c.tc_netlink
            || c.full_payload
            || c.user.is_some();
        capturing.then_some("why: capture options (-i, --ports, --host, …) need --live")
    }
}

/// Reads the inputs and prints the story; exit code 1 when nothing was found.
pub fn run(args: WhyArgs) -> anyhow::Result<u8> {
    if args.live {
        return run_live(args);
    }
    let Some(queue_id) = args.queue_id.as_deref() else {
        anyhow::bail!("why: --from needs --live; give the queue id");
    };

    let maillog = args.logs.paths()?;
    if args.json.is_empty() && maillog.is_empty() {
        anyhow::bail!(
            "why: give --json FILE (from tail/replay --json) and/or --maillog PATH, or --live"
        );
    }
    let mut records = Vec::new();
    for p in &args.json {
        let reader: Box<dyn BufRead> = if p.as_os_str() == "-" {
            Box::new(BufReader::new(std::io::stdin()))
        } else {
            Box::new(BufReader::new(
                std::fs::File::open(p)
                    .map_err(|e| anyhow::anyhow!("--json {}: {e}", p.display()))?,
            ))
        };
        for line in reader.lines() {
            let line = line.map_err(|e| anyhow::anyhow!("--json {}: {e}", p.display()))?;
            // Lines that are not JSON (a tail mixed in) are skipped.
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                records.push(v);
            }
        }
    }
    let mut log = Vec::new();
    if !maillog.is_empty() {
        let mut m = Merged::open(&maillog).map_err(|e| anyhow::anyhow!(e))?;
        // Only lines with a queue id can be about the message; the rest is not kept.
        while let Some(l) = m.next_line() {
            if l.queue_id.is_some() {
                log.push(l.redacted(Privacy::default()).to_json());
            }
        }
    }
    print_story(queue_id, &records, &log)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn entry(ts: &str, prog: &str, q: &str, event: &str, fields: Value) -> Value {
        json!({"ts": ts, "program": prog, "pid": 1, "queue_id": q, "event": event, "fields": fields})
    }

    #[test]
    fn follows_the_bounce_and_the_relay() {
        let records = vec![
            json!({"type":"session","id":3,"proto":"smtp","client":"10.99.1.1:4000","server":"10.99.1.2:25",
                "start":"2026-11-27T23:39:56.000000Z","end":"2026-11-27T23:39:57.000000Z","close":"fin","helo":"client.test",
                "transactions":[{"mail_from":"a@client.test","rcpt":[{"addr":"x@example.org","code":250,"enhanced":"2.1.5","text":"Ok"}],
                    "reply":{"code":250,"enhanced":"2.0.0","text":"Ok: queued as AAAAAA1"},"queue_id":"AAAAAA1"}],
                "log":[entry("2026-11-27T23:39:56.000000Z","postfix/smtpd","AAAAAA1","client",json!({"client":"unknown[10.99.1.1]:4000"}))]}),
            json!({"type":"session","id":4,"proto":"smtp","client":"10.99.1.2:5000","server":"192.0.2.7:25",
                "start":"2026-11-27T23:39:58.000000Z","end":"2026-11-27T23:39:59.000000Z","close":"fin","transactions":[]}),
            json!({"type":"session","id":5,"proto":"smtp","client":"10.99.1.9:5000","server":"10.99.1.2:25",
                "start":"2026-11-27T23:39:58.000000Z","end":"2026-11-27T23:39:59.000000Z","close":"fin","transactions":[{"queue_id":"CCCCCC3"}]}),
            {
                let mut v = entry(
                    "2026-11-27T23:40:00.000000Z",
                    "postfix/smtp",
                    "AAAAAA1",
                    "delivery",
                    json!({"to":"x@example.org","relay":"mx.example.org[192.0.2.7]:25","delays":"0/0/0.5/1","status":"bounced","dsn":"5.1.1"}),
                );
                v["type"] = "log".into();
                v["session"] = 3.into();
                v
            },
        ];
        let log = vec![
            entry(
                "2026-11-27T23:39:56.000000Z",
                "postfix/smtpd",
                "AAAAAA1",
                "client",
                json!({"client":"unknown[10.99.1.1]:4000"}),
            ),
            entry(
                "2026-11-27T23:40:00.000000Z",
                "postfix/bounce",
                "AAAAAA1",
                "bounce",
                json!({"notification":"sender non-delivery","new_queue_id":"BBBBBB2"}),
            ),
            entry(
                "2026-11-27T23:40:01.000000Z",
                "postfix/virtual",
                "BBBBBB2",
                "delivery",
                json!({"to":"a@client.test","status":"sent"}),
            ),
            entry(
                "2026-11-27T23:40:01.000000Z",
                "postfix/virtual",
                "CCCCCC3",
                "delivery",
                json!({"to":"z@z","status":"sent"}),
            ),
        ];
        let st = story("AAAAAA1", &records, &log);
        assert_eq!(st.ids, vec!["AAAAAA1", "BBBBBB2"]);
        assert_eq!(st.incoming.len(), 1);
        assert_eq!(st.incoming[0]["id"], 3);
        // The client line appears once although it is both in the record and the file.
        let events: Vec<&str> = st
            .lines
            .iter()
            .map(|l| l["event"].as_str().unwrap())
            .collect();
        assert_eq!(events, vec!["client", "delivery", "bounce", "delivery"]);
        assert_eq!(st.outgoing.len(), 1);
        assert_eq!(st.outgoing[0]["id"], 4);
        let text = render(&st);
        assert!(text.starts_with("Message AAAAAA1 (bounce: BBBBBB2)\nReceived in session #3 smtp 10.99.1.1:4000 -> 10.99.1.2:25"), "{text}");
        assert!(text.contains("  RCPT TO:<x@example.org> -> 250 2.1.5 Ok\n  end of data -> 250 2.0.0 Ok: queued as AAAAAA1\n"), "{text}");
        assert!(text.contains("postfix/smtp[1] AAAAAA1 delivery: to=x@example.org relay=mx.example.org[192.0.2.7]:25 delays=0/0/0.5/1 status=bounced dsn=5.1.1  [#3]\n"), "{text}");
        assert!(
            text.contains("Sent on in session #4 smtp 10.99.1.2:5000 -> 192.0.2.7:25"),
            "{text}"
        );
        assert!(!text.contains("CCCCCC3"));
    }

    #[test]
    fn live_stops_at_the_outcome_of_the_message_from() {
        let raw = Rc::new(RefCell::new(Vec::new()));
        let mut live = Live {
            raw: raw.clone(),
            records: VecDeque::new(),
            queue_id: None,
            from: Some("*@client.test".into()),
        };
        let other = json!({"type":"session","id":1,"transactions":[{"mail_from":"b@other.test","queue_id":"OTHER1"}]});
        let mine = json!({"type":"session","id":2,"transactions":[{"mail_from":"a@client.test","queue_id":"AAAAAA1"}],
            "log":[entry("t","postfix/cleanup","AAAAAA1","message-id",json!({}))]});
        raw.borrow_mut()
            .extend_from_slice(format!("{other}\n{mine}\nnot json\n").as_bytes());
        assert!(!live.done());
        assert_eq!(live.queue_id.as_deref(), Some("AAAAAA1"));
        assert_eq!(live.records.len(), 2);
        // Another message's outcome is not this one's.
        let mut late = entry(
            "t",
            "postfix/virtual",
            "OTHER1",
            "delivery",
            json!({"status":"sent"}),
        );
        late["type"] = "log".into();
        raw.borrow_mut()
            .extend_from_slice(format!("{late}\n").as_bytes());
        assert!(!live.done());
        late["queue_id"] = "AAAAAA1".into();
        raw.borrow_mut()
            .extend_from_slice(format!("{late}\n").as_bytes());
        assert!(live.done());
        assert!(raw.borrow().is_empty());
    }

    #[test]
    fn a_bounce_is_an_outcome() {
        let mut s =
            json!({"type":"session","log":[entry("t","postfix/bounce","Q1","bounce",json!({}))]});
        assert!(outcome(&s, "Q1"));
        assert!(!outcome(&s, "Q2"));
        s["log"][0]["event"] = "queued".into();
        assert!(!outcome(&s, "Q1"));
    }

    /// A line the join said unmatched (its smtpd connection agreed with no session) is in
    /// the story with the reason, once, also when the log file has it too.
    #[test]
    fn unmatched_lines_are_told_with_their_reason() {
        let why = "session #3: queue id DDDDDD4 not queued in the session";
        let client = || {
            entry(
                "2026-11-27T23:39:56.000000Z",
                "postfix/smtpd",
                "DDDDDD4",
                "client",
                json!({"client":"unknown[10.99.1.1]"}),
            )
        };
        let mut unmatched = client();
        unmatched["type"] = "log".into();
        unmatched["session"] = Value::Null;
        unmatched["unmatched"] = why.into();
        let st = story("DDDDDD4", &[unmatched], &[client()]);
        assert_eq!(st.lines.len(), 1);
        assert_eq!(
            render(&st),
            format!("Message DDDDDD4\n  the session that brought it in was not traced\nLog:\n  2026-11-27T23:39:56.000000Z postfix/smtpd[1] DDDDDD4 client: client=unknown[10.99.1.1]  [unmatched: {why}]\n")
        );
    }

    #[test]
    fn unknown_id_says_so() {
        let st = story("ZZZZZZ9", &[], &[]);
        assert_eq!(
            render(&st),
            "Message ZZZZZZ9\n  nothing known about it in the input\n"
        );
    }
}
