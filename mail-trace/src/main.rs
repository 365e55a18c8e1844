//! `mail-trace`: see README.md. Kept thin: parse, dispatch, report errors as one line.
use clap::{Parser, Subcommand};

use mail_trace::cmd;

#[derive(Parser)]
#[command(
    name = "mail-trace",
    version,
    about = "Trace SMTP, POP3 and IMAP sessions on the wire"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Dissect mail sessions from pcap or pcapng files.
    Replay(cmd::replay::ReplayArgs),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Replay(args) => cmd::replay::run(args),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("mail-trace: {e:#}");
            std::process::exit(1);
        }
    }
}
