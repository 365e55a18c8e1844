//! The `mail-trace` binary: parse the command line, run the subcommand, turn an
//! error into one line on stderr: exit code 2 for usage errors, 1 for the rest.
use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mail_trace::cmd;

/// Sessions, events and records are many small allocations per packet: mimalloc's
/// thread-local free lists cost a fraction of glibc malloc's bins (see BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "mail-trace",
    version,
    about = "eBPF tracer for SMTP, submission, POP3 and IMAP"
)]
pub(crate) struct Cli {
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

/// Exit code of a usage error (bad flag or value, unusable file argument).
const USAGE: u8 = 2;

/// clap's usage errors span several lines (tip, usage); an operator at 3 a.m. needs the one
/// that says what is wrong. Help and version keep clap's output.
fn parse() -> Result<Cli, ExitCode> {
    use clap::error::ErrorKind;
    match Cli::try_parse_from(args()) {
        Ok(cli) => {
            let problem = match &cli.command {
                Command::Why(w) => w.usage_problem(),
                _ => None,
            };
            match problem {
                Some(p) => {
                    let _ = writeln!(std::io::stderr(), "mail-trace: error: {p}");
                    Err(ExitCode::from(USAGE))
                }
                None => Ok(cli),
            }
        }
        Err(e) => match e.kind() {
            ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
                // A closed stdout (`--help | head -1`) is not worth a message.
                let _ = e.print();
                Err(ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(USAGE)))
            }
            _ => {
                let line = first_paragraph(&e.render().to_string());
                let _ = writeln!(std::io::stderr(), "mail-trace: {line}");
                Err(ExitCode::from(USAGE))
            }
        },
    }
}

/// The first paragraph of a clap error on one line, `error: ` prefix kept: "the following
/// required arguments were not provided:" is followed by the arguments on the next lines.
fn first_paragraph(rendered: &str) -> String {
    let line = rendered
        .lines()
        .map(str::trim)
        .skip_while(|l| l.is_empty())
        .take_while(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    if line.is_empty() {
        "error: bad command line".to_owned()
    } else {
        line
    }
}

/// `--version --verbose` (`-V` too, either order): the version, then what the running kernel
/// offers and which eBPF object would load, so a relay's operator sees before a start what will
/// and will not work. Needs no privileges: the kernel's BTF is world-readable.
fn verbose_version(args: &[std::ffi::OsString]) -> Option<ExitCode> {
    let rest = args.get(1..).unwrap_or_default();
    let is =
        |a: &std::ffi::OsString, names: &[&str]| a.to_str().is_some_and(|a| names.contains(&a));
    let version = rest.iter().any(|a| is(a, &["--version", "-V"]));
    let verbose = rest.iter().any(|a| is(a, &["--verbose"]));
    // Only these flags: `--verbose` with anything else is clap's to judge.
    let only_these = rest
        .iter()
        .all(|a| is(a, &["--version", "-V", "--verbose"]));
    if !(version && verbose && only_these) {
        return None;
    }
    let mut out = std::io::stdout().lock();
    let mut text = format!("mail-trace {}\n", env!("CARGO_PKG_VERSION"));
    for line in mail_trace::capture::kernel::Features::probe().version_lines() {
        text.push_str(&line);
        text.push('\n');
    }
    // A closed stdout (`| head -1`) is not worth a message.
    let _ = out.write_all(text.as_bytes());
    Some(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    mail_trace::guard::install_panic_hook();
    if let Some(code) = verbose_version(&std::env::args_os().collect::<Vec<_>>()) {
        return code;
    }
    let cli = match parse() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    let result = match cli.command {
        // Replay is synchronous: no runtime needed.
        Command::Replay(args) => cmd::replay::run(args),
        Command::Why(args) => cmd::why::run(args),
        Command::Capture(args) => live(cmd::capture::run(args)),
        Command::Tail(args) => live(cmd::tail::run(args)),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        // `| head` closed the pipe: nothing worth saying.
        Err(e) if cmd::guard::is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}` joins the context chain on one line; a newline inside a cause would not be.
            let msg = format!("{e:#}").replace('\n', " ");
            // Not eprintln!, which would panic on a closed stderr (`2>&1 | head`); a cause
            // may quote a file or a peer, so the line is made printable too.
            mail_trace::note!("mail-trace: {msg}");
            ExitCode::FAILURE
        }
    }
}
