//! `mail-trace replay FILE…`: the session engine over pcap/pcapng files.
use std::io::Write;
use std::path::PathBuf;

use crate::capture::pcap::PcapSource;
use crate::capture::Frame;
use crate::cmd::output::OutputArgs;
use crate::maillog::join::Joined;
use crate::output::filter::{Criteria, Filter, NoFrames, Selected};
use crate::output::Outputs;
use crate::session::{Engine, EngineConfig};

#[derive(Clone, Debug, clap::Args)]
pub struct ReplayArgs {
    /// pcap or pcapng files, read in order.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    #[command(flatten)]
    pub output: OutputArgs,
    #[command(flatten)]
    pub engine: crate::cmd::engine::EngineArgs,
    /// Dissect only connections on the known mail ports; by default connections on
    /// other ports are recognised by their first lines.
    #[arg(long)]
    pub no_sniff: bool,
    #[command(flatten)]
    pub logs: crate::cmd::maillog::LogArgs,
}

/// How often (in capture time) idle sessions are looked for.
const TICK_NS: u64 = 1_000_000_000;

/// Runs the replay; returns the process exit code: 2 when a file could not be opened as a
/// capture (missing, unreadable, a directory, not pcap) — a bad argument —, else 1 when a file
/// broke off midway (the sessions read before the error are still printed). The other files
/// are read either way.
pub fn run(args: ReplayArgs) -> anyhow::Result<u8> {
    let mut cfg = EngineConfig {
        privacy: args.output.privacy(),
        flow: args.engine.flow_config(),
        ..Default::default()
    };
    cfg.ports.sniff_other_ports = !args.no_sniff;
    let mut engine = Engine::new(cfg);
    let mut logs = crate::cmd::maillog::ReplayLogs::open(&args.logs, args.output.privacy())?;
    // Without --findings every session streams through, nothing held back.
    let criteria = Criteria {
        findings: args.output.findings,
        ..Criteria::default()
    };
    let mut out = args.output.stdout();
    let files: Vec<String> = args.files.iter().map(|p| p.display().to_string()).collect();
    out.run(&args.output.run_line("files", &files));
    let mut filter = Filter::new(out, criteria);
    filter.max_held = args.engine.max_held as usize;
    let mut out = Selected {
        filter: &mut filter,
        frames: &mut NoFrames,
    };
    let mut status = 0;
    let mut frame = Frame::empty();
    for path in &args.files {
        let mut src = match PcapSource::open(path) {
            Ok(s) => s,
            Err(e) => {
                crate::note!("mail-trace: {e}");
                status = 2;
                continue;
            }
        };
        let (mut last_tick, mut last_ts) = (0u64, 0u64);
        while let Some(read) = src.next_frame_into(&mut frame) {
            match read {
                Ok(()) => {
                    if let Some(l) = logs.as_mut() {
                        l.feed_until(frame.ts, &mut out);
                    }
                    let mut sink = Joined {
                        joiner: logs.as_mut().map(|l| &mut l.joiner),
                        inner: &mut out,
                    };
                    engine.frame(&frame, &mut sink);
                    last_ts = last_ts.max(frame.ts);
                    if last_ts >= last_tick + TICK_NS {
                        engine.tick(last_ts, &mut sink);
                        last_tick = last_ts;
                    }
                }
                Err(e) => {
                    crate::note!("mail-trace: {e}");
                    status = status.max(1);
                    break;
                }
            }
            if out.filter.inner.error().is_some() {
                break;
            }
        }
        // Sessions still open at the end of a file end with it.
        let mut sink = Joined {
            joiner: logs.as_mut().map(|l| &mut l.joiner),
            inner: &mut out,
        };
        engine.finish(last_ts, &mut sink);
        if out.filter.inner.error().is_some() {
            break;
        }
    }
    if let Some(l) = logs.as_mut() {
        l.finish(&mut out);
    }
    finish_output(filter.inner)?;
    if let Some(line) = args.engine.eviction_report(&engine.flow_stats()) {
        crate::note!("{line}");
    }
    if let Some(line) = args.engine.held_report(&engine.stats()) {
        crate::note!("{line}");
    }
    Ok(status)
}

/// Flushes the output. A closed pipe (`| head`) is a normal way to stop reading.
pub fn finish_output<W: Write>(mut out: Outputs<W>) -> anyhow::Result<()> {
    let flushed = out.flush();
    let err = out
        .error()
        .map(|e| e.kind())
        .or(flushed.err().map(|e| e.kind()));
    match err {
        None | Some(std::io::ErrorKind::BrokenPipe) => Ok(()),
        Some(kind) => anyhow::bail!("writing output: {kind}"),
    }
}
