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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| {
            rt.block_on(async {
                match cli.command {
                    Command::Capture(args) => cmd::capture::run(args).await,
                }
            })
        });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mail-trace: {e:#}");
            ExitCode::FAILURE
        }
    }
}
