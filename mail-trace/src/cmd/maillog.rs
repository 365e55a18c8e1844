//! `--maillog` and `--journal`: the options that put the MTA's log beside the sessions
//! (see [`crate::maillog`]), and their wiring for `tail` (followed) and `replay` (read whole).
use std::path::PathBuf;

use tokio::sync::mpsc;

use crate::maillog::follow::{self, Journal, Merged};
use crate::maillog::join::{JoinConfig, Joiner};
use crate::maillog::{parse, Clock};
use crate::proto::Privacy;
use crate::session::Sink;
use crate::time::Ts;

#[derive(Clone, Debug, Default, clap::Args)]
pub struct LogArgs {
    /// Join Postfix and Dovecot log lines to the sessions (repeatable). Alone, without a
    /// path, the first of /var/log/mail.log and /var/log/maillog that exists. Write
    /// `--maillog=PATH` when a file name follows.
    #[arg(long, value_name = "PATH", num_args = 0..=1, default_missing_value = "")]
    pub maillog: Vec<PathBuf>,
    /// With `tail`: also read Postfix and Dovecot lines from the systemd journal
    /// (`journalctl -f`).
    #[arg(long)]
    pub journal: bool,
    /// How long a finished session's record waits for its last log lines (ms).
    #[arg(long, hide = true, value_name = "MS", default_value_t = 1500)]
    pub maillog_linger_ms: u64,
}

impl LogArgs {
    pub fn join_config(&self) -> JoinConfig {
        JoinConfig {
            linger: self.maillog_linger_ms.saturating_mul(1_000_000),
            ..JoinConfig::default()
        }
    }

    pub fn enabled(&self) -> bool {
        !self.maillog.is_empty() || self.journal
    }

    /// The paths, the default one in place of an empty `--maillog`.
    pub fn paths(&self) -> anyhow::Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        for p in &self.maillog {
            if p.as_os_str().is_empty() {
                match follow::default_path() {
                    Some(d) => out.push(d),
                    None => anyhow::bail!(
                        "--maillog: neither {} exists; give the path (--maillog=PATH) or use --journal",
                        follow::DEFAULT_PATHS.join(" nor ")
                    ),
                }
            } else {
                out.push(p.clone());
            }
        }
        Ok(out)
    }
}

/// Lines queued between the log readers and the engine.
const CHANNEL: usize = 4096;

/// The live readers; the journal child is killed when this goes.
pub struct LiveLogs {
    pub rx: mpsc::Receiver<String>,
    _journal: Option<Journal>,
}

/// Starts a follower per file (from its end) and the journal reader.
/// Opens the `--maillog` files, at their end: before the privilege drop, so that a file only
/// root may read is read all the same.
pub fn open_live(args: &LogArgs) -> anyhow::Result<Vec<follow::OpenLog>> {
    args.paths()?
        .into_iter()
        .map(|p| {
            follow::OpenLog::open(p.clone())
                .map_err(|e| anyhow::anyhow!("--maillog {}: {e}", p.display()))
        })
        .collect()
}

/// Follows the files [`open_live`] opened and, with `--journal`, the journal: after the
/// privilege drop (the reader threads start here).
pub fn start_live(args: &LogArgs, files: Vec<follow::OpenLog>) -> anyhow::Result<Option<LiveLogs>> {
    if !args.enabled() {
        return Ok(None);
    }
    let (tx, rx) = mpsc::channel(CHANNEL);
    for f in files {
        f.follow(tx.clone());
    }
    let journal = if args.journal {
        Some(Journal::start(tx).map_err(|e| anyhow::anyhow!(e))?)
    } else {
        None
    };
    Ok(Some(LiveLogs {
        rx,
        _journal: journal,
    }))
}

/// One line read live: parsed with this host's clock and joined.
pub fn live_line(joiner: &mut Joiner, line: &str, now: Ts, sink: &mut dyn Sink) {
    if let Some(l) = parse(line, &Clock::local(now)) {
        joiner.line(l, sink);
    }
}

/// Timestamps of BSD and `maillog_file` lines are whole seconds.
const LOG_RESOLUTION: Ts = 1_000_000_000;

/// Replay's logs: every file merged by time, fed to the joiner as capture time passes.
pub struct ReplayLogs {
    merged: Merged,
    pub joiner: Joiner,
}

impl ReplayLogs {
    pub fn open(args: &LogArgs, privacy: Privacy) -> anyhow::Result<Option<ReplayLogs>> {
        if args.journal {
            anyhow::bail!("--journal follows the live journal; replay reads --maillog files");
        }
        if args.maillog.is_empty() {
            return Ok(None);
        }
        let merged = Merged::open(&args.paths()?).map_err(|e| anyhow::anyhow!(e))?;
        Ok(Some(ReplayLogs {
            merged,
            joiner: Joiner::new(args.join_config(), privacy),
        }))
    }

    /// Feeds the lines written before capture time `ts` and lets the joiner's clock reach it.
    /// A line stamped second S was written during [S, S+1): it is fed once the capture has
    /// passed S+1, so it follows the packets it is about (the linger keeps it in the record).
    ///
    /// The joiner's clock at a line is S+1, when the line had certainly been written, never
    /// S: a record is written at `end + linger` capture time, so with S the record could still
    /// be held for a line fed after that moment, and whether a line landed in the record or
    /// in a `log` record of its own depended on which frame happened to come next. With S+1
    /// the rule is exact: a line is in its session's record iff `S + 1 s < end + linger`.
    pub fn feed_until(&mut self, ts: Ts, sink: &mut dyn Sink) {
        while self
            .merged
            .peek_ts()
            .is_some_and(|t| t.saturating_add(LOG_RESOLUTION) <= ts)
        {
            if let Some(l) = self.merged.next_line() {
                self.joiner.tick(l.ts.saturating_add(LOG_RESOLUTION), sink);
                self.joiner.line(l, sink);
            }
        }
        self.joiner.tick(ts, sink);
    }

    /// After the last frame: the rest of the log (deliveries after the capture), then every
    /// held record.
    pub fn finish(&mut self, sink: &mut dyn Sink) {
        while let Some(l) = self.merged.next_line() {
            self.joiner.tick(l.ts.saturating_add(LOG_RESOLUTION), sink);
            self.joiner.line(l, sink);
        }
        self.joiner.finish(sink);
    }
}
