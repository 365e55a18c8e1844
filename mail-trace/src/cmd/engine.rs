//! The session engine's memory bounds, shared by `replay` and `tail`. Every bound
//! has a default sized for a busy relay; what a bound drops is counted (gaps,
//! evictions) and reported, never silently lost.
use crate::cmd::live::parse_buffer;
use crate::flow::{FlowConfig, FlowStats};

#[derive(Clone, Debug, clap::Args)]
pub struct EngineArgs {
    /// Out-of-order bytes held per connection and direction before the hole is
    /// declared a gap (K, M, G suffixes allowed).
    #[arg(long, value_name = "BYTES", default_value = "4M", value_parser = parse_buffer)]
    pub max_buffer: u32,
    /// Connections tracked at once; beyond it the idlest is evicted (and counted).
    #[arg(long, value_name = "N", default_value_t = 100_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_sessions: u32,
    /// Bytes all sessions together may hold beyond their fixed size — out-of-order bytes,
    /// recorded transactions and recipients, bytes awaiting a reply — before the sessions
    /// holding the most are evicted (`close: "evicted"`, counted) (K, M, G suffixes allowed).
    #[arg(long, value_name = "BYTES", default_value = "1G", value_parser = parse_buffer)]
    pub max_held: u32,
    /// Seconds without a packet after which a session is ended (`close: "idle"`).
    #[arg(long, value_name = "SECS", default_value_t = 600, value_parser = clap::value_parser!(u32).range(1..))]
    pub idle_timeout: u32,
}

impl EngineArgs {
    pub fn flow_config(&self) -> FlowConfig {
        FlowConfig {
            max_buffer_per_dir: self.max_buffer as usize,
            max_connections: self.max_sessions as usize,
            idle_timeout_ns: u64::from(self.idle_timeout) * 1_000_000_000,
            max_held_total: u64::from(self.max_held),
            ..FlowConfig::default()
        }
    }

    /// The line that reports evictions at exit (none when nothing was evicted): each
    /// evicted session was still written, with `close: "evicted"`.
    pub fn eviction_report(&self, stats: &FlowStats) -> Option<String> {
        (stats.evicted > 0).then(|| {
            format!(
                "mail-trace: {} sessions evicted (more than --max-sessions {} open at once); \
                 their records end with close \"evicted\"",
                stats.evicted, self.max_sessions
            )
        })
    }
}

impl EngineArgs {
    /// The line that reports evictions for `--max-held` at exit (none when there were none).
    pub fn held_report(&self, stats: &crate::session::EngineStats) -> Option<String> {
        (stats.evicted_held > 0).then(|| {
            format!(
                "mail-trace: {} sessions evicted (together they held more than --max-held {} \
                 bytes); their records end with close \"evicted\"",
                stats.evicted_held, self.max_held
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        engine: EngineArgs,
    }

    #[test]
    fn evictions_are_reported_in_one_line_only_when_there_are_some() {
        let args = Cli::parse_from(["t", "--max-sessions", "10000"]).engine;
        assert_eq!(args.flow_config().max_connections, 10_000);
        let mut stats = FlowStats::default();
        assert_eq!(args.eviction_report(&stats), None);
        stats.evicted = 90_001;
        assert_eq!(
            args.eviction_report(&stats).as_deref(),
            Some(
                "mail-trace: 90001 sessions evicted (more than --max-sessions 10000 open at \
                 once); their records end with close \"evicted\""
            )
        );
        let default = Cli::parse_from(["t"]).engine;
        assert_eq!(default.flow_config().max_connections, 100_000);
    }
}
