//! `mail-trace tail`: the live session view. Kernel capture → session engine →
//! the chosen output, with the filters of [`crate::output::filter`].
use std::collections::HashMap;
use std::io::{BufWriter, IsTerminal, Write};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use tokio::signal::unix::{signal, SignalKind};
use tokio::time::{interval, Instant, MissedTickBehavior};

use crate::capture::ebpf::{Captured, EbpfCapture};
use crate::capture::procfs;
use crate::capture::uprobe::{ConnHow, ConnResolver, Plaintext};
use crate::capture::Frame;
use crate::cmd::capture::{now_ns, sleep_until};
use crate::cmd::live::LiveArgs;
use crate::cmd::output::OutputArgs;
use crate::flow::Dir;
use crate::maillog::join::{Joined, Joiner};
use crate::output::filter::{Criteria, Filter, FrameSink, Selected};
use crate::output::pcapng::{IfaceStats, PcapngSink};
use crate::output::Outputs;
use crate::proto::{Event, Proto};
use crate::session::{Engine, EngineConfig, PortMap, SessionInfo, SessionRecord, Sink};
use crate::time::Ts;

/// Process names remembered (by pid and comm) before the cache starts over.
const MAX_CACHED_NAMES: usize = 4096;

#[derive(Clone, Debug, clap::Args)]
pub struct TailArgs {
    #[command(flatten)]
    pub live: LiveArgs,
    #[command(flatten)]
    pub output: OutputArgs,
    #[command(flatten)]
    pub engine: crate::cmd::engine::EngineArgs,
    /// Only sessions of this protocol (repeatable).
    #[arg(long, value_enum, value_name = "PROTO")]
    pub proto: Vec<ProtoArg>,
    /// Only sessions with a MAIL FROM matching this glob (`*@example.com`; repeatable).
    #[arg(long, value_name = "ADDR")]
    pub from: Vec<String>,
    /// Only sessions with a RCPT TO matching this glob (repeatable).
    #[arg(long, value_name = "ADDR")]
    pub rcpt: Vec<String>,
    /// Only sessions with a 4xx/5xx (-ERR, NO, BAD) reply, a gap or an anomaly.
    #[arg(long)]
    pub errors: bool,
    /// Write the packets of the sessions shown to this pcapng file.
    #[arg(short = 'w', long = "write", value_name = "FILE.pcapng")]
    pub write: Option<PathBuf>,
    /// Stop after this many seconds.
    #[arg(long, value_name = "SECS")]
    pub duration: Option<u64>,
    #[command(flatten)]
    pub tls: crate::cmd::live::TlsArgs,
    #[command(flatten)]
    pub logs: crate::cmd::maillog::LogArgs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ProtoArg {
    Smtp,
    Pop3,
    Imap,
}

impl From<ProtoArg> for Proto {
    fn from(p: ProtoArg) -> Proto {
        match p {
            ProtoArg::Smtp => Proto::Smtp,
            ProtoArg::Pop3 => Proto::Pop3,
            ProtoArg::Imap => Proto::Imap,
        }
    }
}

/// Where plaintext chunks went (the exit line).
#[derive(Debug, Default)]
struct PlaintextTally {
    /// Connection from the kernel: the call's own socket I/O / the thread's last socket.
    in_call: u64,
    thread: u64,
    /// Connection from /proc (sockets opened before mail-trace started).
    procfs: u64,
    /// Handed to a session.
    placed: u64,
}

/// Hands a plaintext chunk to the session of its connection: the one the
/// kernel found, or else (no socket I/O seen for this `SSL *` since
/// mail-trace started) the one /proc names.
/// One captured item: a frame through the engine, then to the frame output as the filter
/// decides; a TLS plaintext chunk into its session (with `--tls-plaintext`).
fn handle<S: Sink>(
    item: Captured,
    engine: &mut Engine,
    filter: &mut Filter<S>,
    frames: &mut dyn FrameSink,
    tally: &mut Tally,
    joiner: Option<&mut Joiner>,
    pt: Option<(&mut ConnResolver, &mut PlaintextTally)>,
) {
    let (id, frame) = {
        let mut counted = Counted {
            inner: &mut Selected {
                filter: &mut *filter,
                frames: &mut *frames,
            },
            tally,
        };
        let mut sink = Joined {
            joiner,
            inner: &mut counted,
        };
        match item {
            Captured::Frame(frame) => (engine.frame(&frame, &mut sink), frame),
            Captured::Plaintext(p) => {
                if let Some((r, t)) = pt {
                    plaintext(engine, r, t, &p, &mut sink);
                }
                return;
            }
        }
    };
    filter.frame(id, &frame, frames);
}

fn plaintext(
    engine: &mut Engine,
    r: &mut ConnResolver,
    t: &mut PlaintextTally,
    p: &Plaintext,
    sink: &mut dyn Sink,
) {
    if !r.wanted(p) {
        return;
    }
    let origin = (u128::from(p.pid) << 64) | u128::from(p.ssl);
    let placed = if let Some(c) = p.conn {
        match c.how {
            ConnHow::InCall => t.in_call += 1,
            ConnHow::Thread => t.thread += 1,
        }
        let ok = engine.plaintext(origin, c.local, c.peer, p.from_peer, &p.data, p.ts, sink);
        if ok {
            engine.process_seen(
                c.local,
                c.peer,
                || procfs::process_named(p.pid, &p.comm),
                sink,
            );
        }
        ok
    } else if let Some((local, peer)) = r.resolve(p) {
        t.procfs += 1;
        if engine.plaintext(origin, local, peer, p.from_peer, &p.data, p.ts, sink) {
            true
        } else {
            // Maybe a stale cache entry (SSL * reused for a new connection): once more, fresh.
            r.forget(p);
            r.resolve(p).is_some_and(|(local, peer)| {
                engine.plaintext(origin, local, peer, p.from_peer, &p.data, p.ts, sink)
            })
        }
    } else {
        false
    };
    if placed {
        t.placed += 1;
    }
}

/// How often the status line is refreshed on a terminal.
const STATUS_EVERY: Duration = Duration::from_secs(2);
/// How often output is flushed and idle sessions are looked for.
const TICK_EVERY: Duration = Duration::from_millis(200);

/// Counts what the exit summary reports; sits between the filter and the output.
#[derive(Default)]
struct Tally {
    sessions: [u64; 3],
    messages: u64,
    replies: [u64; 6],
    events: u64,
    gap_bytes: u64,
}

struct Counted<'a, S: Sink> {
    inner: &'a mut S,
    tally: &'a mut Tally,
}

impl<S: Sink> Sink for Counted<'_, S> {
    fn session_start(&mut self, info: &SessionInfo) {
        self.tally.sessions[info.proto as usize] += 1;
        self.inner.session_start(info);
    }
    fn event(&mut self, info: &SessionInfo, ev: &Event) {
        self.tally.events += 1;
        if let Event::Reply { code, .. } = ev {
            let class = match code.as_bytes().first() {
                Some(d @ b'1'..=b'5') => (d - b'0') as usize,
                _ if crate::output::filter::is_failure(code) => 5,
                _ => 0,
            };
            self.tally.replies[class] += 1;
        }
        self.inner.event(info, ev);
    }
    fn gap(&mut self, info: &SessionInfo, dir: Dir, len: u64, ts: Ts) {
        self.tally.gap_bytes += len;
        self.inner.gap(info, dir, len, ts);
    }
    fn log(&mut self, session: crate::flow::ConnId, line: &crate::maillog::LogLine, late: bool) {
        self.inner.log(session, line, late);
    }
    fn unmatched(&mut self, line: &crate::maillog::LogLine, why: &str) {
        self.inner.unmatched(line, why);
    }
    fn session_end(&mut self, info: &SessionInfo, rec: &SessionRecord) {
        // Accepted at end of data: not every server names a queue id.
        self.tally.messages += rec.fields.accepted_messages();
        self.inner.session_end(info, rec);
    }
}

/// Frames of shown sessions into the pcapng file; the first write error is kept.
struct PcapFrames<W: Write> {
    sink: Option<PcapngSink<W>>,
    written: Vec<u64>,
    error: Option<String>,
}

impl<W: Write> FrameSink for PcapFrames<W> {
    fn frame(&mut self, f: &Frame) {
        if let (Some(s), None) = (self.sink.as_mut(), &self.error) {
            match s.write(f) {
                Ok(()) => self.written[f.iface as usize] += 1,
                Err(e) => self.error = Some(e.to_string()),
            }
        }
    }
}

/// The next line from the log readers; never, without `--maillog`/`--journal`.
async fn next_log(logs: &mut Option<crate::cmd::maillog::LiveLogs>) -> Option<String> {
    match logs {
        Some(l) => l.rx.recv().await,
        None => std::future::pending().await,
    }
}

pub async fn run(args: TailArgs) -> anyhow::Result<()> {
    let file = args.write.clone();
    let r = tail(args).await;
    if let (Err(_), Some(p)) = (&r, &file) {
        // A full disk leaves half a block: cut back to what a reader can use.
        let _ = crate::cmd::guard::keep_whole_blocks(p);
    }
    r
}

async fn tail(args: TailArgs) -> anyhow::Result<()> {
    let out = args.output.stdout();
    let out = trace(args, out, || false).await?;
    crate::cmd::replay::finish_output(out)
}

/// The tail's pipeline into `out` (`why --live` reads it from memory). Stops at
/// --duration, a signal, or as soon as `done` (asked after every event) says so;
/// hands the output back for the caller to finish.
pub(crate) async fn trace<W: Write>(
    args: TailArgs,
    out: Outputs<W>,
    mut done: impl FnMut() -> bool,
) -> anyhow::Result<Outputs<W>> {
    // Before anything is attached: a Ctrl-C during start-up is then an ordinary clean exit
    // (detaching, the summary), not the default action that kills the process half set up.
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let cfg = args.live.to_config();
    let mut cap = EbpfCapture::open(&cfg)?;
    crate::note!(
        "mail-trace: {}",
        cap.kernel().summary(cfg.force_netlink, cfg.xdp)
    );
    // The socket probes name each session's process (and find the connection of
    // TLS plaintext); without them, /proc alone, which misses short-lived daemons.
    let owners = match cap.attach_sock_probes() {
        Ok(o) => Some(o),
        Err(e) if args.tls.tls_plaintext => return Err(e.into()),
        Err(e) => {
            crate::note!("mail-trace: owning processes from /proc only: {e}");
            None
        }
    };
    let mut resolver = None;
    let mut pt_tally = PlaintextTally::default();
    if args.tls.tls_plaintext {
        let probed = cap.attach_tls(&args.tls.to_config())?;
        for why in &probed.refused {
            crate::note!("mail-trace: --tls-plaintext: not probing {why}");
        }
        crate::note!("mail-trace: TLS plaintext from {}", probed.libs.join(", "));
        resolver = Some(ConnResolver::new(
            args.tls.comm.clone(),
            PortMap::default().ports(),
        ));
    }
    // After the TLS probes too: attaching them needs the privileges.
    // The log files are opened as root; the groups that read them (and the journal) stay,
    // for a rotated file and journalctl.
    let log_files = crate::cmd::maillog::open_live(&args.logs)?;
    let log_groups = if args.logs.enabled() {
        let opened: Vec<std::fs::Metadata> =
            log_files.iter().filter_map(|f| f.metadata().ok()).collect();
        crate::cmd::privilege::log_groups(&opened, args.logs.journal)
    } else {
        Vec::new()
    };
    args.live.drop_privileges(&log_groups)?;
    // Created as the dropped user (cmd::outfile).
    let file = match &args.write {
        Some(p) => Some(BufWriter::new(
            crate::cmd::outfile::create_private(p)
                .with_context(|| format!("creating {}", p.display()))?,
        )),
        None => None,
    };
    let names: Vec<String> = cap.interfaces().iter().map(|i| i.name.clone()).collect();
    let mut frames = PcapFrames {
        sink: file
            .map(|f| crate::cmd::live::pcapng_for(&cap, cfg.snaplen, f))
            .transpose()?,
        written: vec![0; names.len()],
        error: None,
    };

    // Ports given with --ports that have no protocol of their own are recognised
    // by their first lines.
    let mut engine_cfg = EngineConfig {
        privacy: args.output.privacy(),
        ports: PortMap::default(),
        flow: args.engine.flow_config(),
    };
    engine_cfg.ports.sniff_other_ports = true;
    let mut engine = Engine::new(engine_cfg);
    // The kernel's socket owners (no /proc race, no privilege needed); /proc only when the
    // socket probes could not be attached, and then within its time budget (a SYN flood must
    // not stall the reader). A miss in the kernel map means the socket has not sent or
    // received yet (the lookup at the SYN): the engine asks again with its data. A /proc scan
    // reads every process's fds and tcp table — per new session on a busy relay that was the
    // daemon's largest cost (14 % of its CPU under smtp-source load).
    // Names are cached by pid and comm: a Postfix smtpd serves up to 100 sessions.
    let mut proc_names: HashMap<(u32, String), procfs::Process> = HashMap::new();
    let mut scans = procfs::ScanBudget::default();
    engine.set_process_lookup(Box::new(move |client, server| match owners.as_ref() {
        Some(o) => {
            let (pid, comm) = o.owner(server, client)?;
            if proc_names.len() >= MAX_CACHED_NAMES {
                proc_names.clear();
            }
            Some(
                proc_names
                    .entry((pid, comm))
                    .or_insert_with_key(|(pid, comm)| procfs::process_named(*pid, comm))
                    .clone(),
            )
        }
        None => scans.run(now_ns, || procfs::owner_of(client, server)),
    }));
    let mut logs = crate::cmd::maillog::start_live(&args.logs, log_files)?;
    // After journalctl is started: the allow-list has no execve.
    args.live.sandbox()?;
    let mut joiner = logs
        .is_some()
        .then(|| Joiner::new(args.logs.join_config(), args.output.privacy()));
    let criteria = Criteria {
        protos: args.proto.iter().map(|&p| p.into()).collect(),
        from: args.from.clone(),
        rcpt: args.rcpt.clone(),
        errors: args.errors,
        findings: args.output.findings,
    };
    let mut out = out;
    out.run(&args.output.run_line("interfaces", &names));
    let mut filter = Filter::new(out, criteria);
    filter.max_held = args.engine.max_held as usize;
    let mut tally = Tally::default();
    let tty = std::io::stderr().is_terminal();
    crate::note!(
        "mail-trace: tracing {} on {}{}",
        cfg.ports
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(","),
        names.join(", "),
        if args.output.show_headers || args.output.show_secrets {
            " — headers/secrets are SHOWN"
        } else {
            ""
        }
    );

    let deadline = args
        .duration
        .map(|s| Instant::now() + Duration::from_secs(s));
    let mut tick = interval(TICK_EVERY);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut status = interval(STATUS_EVERY);
    status.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_events = 0u64;
    let gone = crate::cmd::guard::interface_gone(
        cap.interfaces()
            .iter()
            .map(|i| (i.name.clone(), i.ifindex))
            .collect(),
    );
    tokio::pin!(gone);
    loop {
        tokio::select! {
            item = cap.next() => {
                // The whole batch the ring read queued, in one go: a select! round per
                // packet polls every other branch (timers, signals, the log) each time.
                let mut item = Some(item?);
                while let Some(it) = item {
                    let pt = resolver.as_mut().map(|r| (r, &mut pt_tally));
                    handle(it, &mut engine, &mut filter, &mut frames, &mut tally, joiner.as_mut(), pt);
                    item = cap.next_ready();
                }
            }
            Some(line) = next_log(&mut logs) => {
                let mut counted = Counted { inner: &mut Selected { filter: &mut filter, frames: &mut frames }, tally: &mut tally };
                if let Some(j) = joiner.as_mut() {
                    crate::cmd::maillog::live_line(j, &line, now_ns(), &mut counted);
                }
            }
            _ = tick.tick() => {
                let mut counted = Counted { inner: &mut Selected { filter: &mut filter, frames: &mut frames }, tally: &mut tally };
                engine.tick(now_ns(), &mut Joined { joiner: joiner.as_mut(), inner: &mut counted });
                if let Some(j) = joiner.as_mut() {
                    j.tick(now_ns(), &mut counted);
                }
                let _ = filter.inner.flush();
            }
            _ = status.tick(), if tty => {
                let lost = cap.counters().map(|c| c.lost_records).unwrap_or(0);
                let rate = (tally.events - last_events) as f64 / STATUS_EVERY.as_secs_f64();
                last_events = tally.events;
                crate::note!(
                    "-- {} sessions open, {:.0} events/s, {} records lost",
                    engine.open_sessions(), rate, lost
                );
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = sleep_until(deadline) => break,
            why = &mut gone => anyhow::bail!(why),
        }
        if filter.inner.error().is_some() || frames.error.is_some() || done() {
            break;
        }
    }
    // The kernel wakes us only for a backlog: what it wrote since the last poll
    // is still in the ring. Read it before the ring goes away.
    for item in cap.take_pending_all() {
        let pt = resolver.as_mut().map(|r| (r, &mut pt_tally));
        // As before: these last items' events bypass the log joiner (see the closing note).
        handle(
            item,
            &mut engine,
            &mut filter,
            &mut frames,
            &mut tally,
            None,
            pt,
        );
    }
    let counters = cap.counters()?;
    let incomplete = cap.incomplete();
    if let (Some(r), Some(t)) = (&resolver, cap.tls_counters()) {
        crate::note!(
            "mail-trace: TLS plaintext: {} calls, {} of no mail connection not copied, {} records, {} lost, {} truncated, {} unreadable; \
             connection of {} chunks from the call's socket, {} from the thread's last socket, {} from /proc, {} unknown; {} chunks in sessions; \
             {} encrypted bytes not copied",
            t.calls, t.not_mail, t.records, t.lost_records, t.truncated, t.read_errors,
            pt_tally.in_call, pt_tally.thread, pt_tally.procfs, r.unresolved, pt_tally.placed,
            counters.suppressed_bytes
        );
    }
    drop(cap);
    {
        let mut counted = Counted {
            inner: &mut Selected {
                filter: &mut filter,
                frames: &mut frames,
            },
            tally: &mut tally,
        };
        engine.finish(
            now_ns(),
            &mut Joined {
                joiner: joiner.as_mut(),
                inner: &mut counted,
            },
        );
        if let Some(j) = joiner.as_mut() {
            j.finish(&mut counted);
        }
    }
    if let Some(s) = frames.sink.take() {
        let stats: Vec<IfaceStats> = frames
            .written
            .iter()
            .enumerate()
            .map(|(i, &delivered)| IfaceStats {
                delivered,
                // Kernel losses are not per interface: reported on the first.
                dropped: if i == 0 {
                    counters.lost_records + incomplete
                } else {
                    0
                },
            })
            .collect();
        let mut w = s.finish(now_ns(), &stats).context("writing pcapng")?;
        w.flush().context("writing pcapng")?;
    }
    if let Some(e) = &frames.error {
        anyhow::bail!("writing pcapng: {e}");
    }
    let t = &tally;
    let flows = engine.flow_stats();
    crate::note!(
        "mail-trace: {} sessions (smtp {}, pop3 {}, imap {}), {} shown; {} messages queued; replies 2xx {} 3xx {} 4xx {} 5xx {}; {} gap bytes; {} evicted at --max-sessions {}; kernel: {} packets matched, {} records emitted, {} records lost",
        t.sessions.iter().sum::<u64>(),
        t.sessions[0],
        t.sessions[1],
        t.sessions[2],
        filter.shown,
        t.messages,
        t.replies[2],
        t.replies[3],
        t.replies[4],
        t.replies[5],
        t.gap_bytes,
        flows.evicted,
        args.engine.max_sessions,
        counters.matched,
        counters.records,
        counters.lost_records
    );
    if let Some(line) = args.engine.eviction_report(&engine.flow_stats()) {
        crate::note!("{line}");
    }
    if let Some(line) = args.engine.held_report(&engine.stats()) {
        crate::note!("{line}");
    }
    Ok(filter.inner)
}
