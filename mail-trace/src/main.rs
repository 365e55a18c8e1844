//! The `mail-trace` binary: parse the command line, run the subcommand, turn an
//! error into one line on stderr and exit code 1 (clap exits 2 on usage errors).
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mail_trace::cmd;

#[derive(Parser)]
#[command(
    name = "mail-trace",
    version,
    about = "eBPF tracer for SMTP, submission, POP3 and IMAP"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Capture mail packets: tcpdump-like lines and/or a pcapng file.
    Capture(cmd::capture::CaptureArgs),
    /// Watch mail sessions live (the default command).
    Tail(cmd::tail::TailArgs),
    /// Dissect mail sessions from pcap or pcapng files.
    Replay(cmd::replay::ReplayArgs),
    /// The story of one message: its session, replies and log lines (from saved --json).
    Why(cmd::why::WhyArgs),
}

/// `mail-trace` alone, or with options only, means `mail-trace tail …`.
fn args() -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let first = args.get(1).and_then(|a| a.to_str()).unwrap_or("-");
    let help_or_version = matches!(first, "-h" | "--help" | "-V" | "--version");
    if first.starts_with('-') && !help_or_version {
        args.insert(1, "tail".into());
    }
    args
}

/// The live commands run on a single-threaded runtime: one reader, one engine.
fn live(fut: impl std::future::Future<Output = anyhow::Result<()>>) -> anyhow::Result<u8> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(fut).map(|()| 0)
}

fn main() -> ExitCode {
    let cli = Cli::parse_from(args());
    let result = match cli.command {
        // Replay is synchronous: no runtime needed.
        Command::Replay(args) => cmd::replay::run(args),
        Command::Why(args) => cmd::why::run(args),
        Command::Capture(args) => live(cmd::capture::run(args)),
        Command::Tail(args) => live(cmd::tail::run(args)),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("mail-trace: {e:#}");
            ExitCode::FAILURE
        }
    }
}
