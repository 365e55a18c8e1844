//! `mail-trace-gen DIR`: writes the man pages (section 8, one per subcommand) and the bash, zsh and
//! fish completions of `mail-trace`, from the same clap definitions the binary parses, into
//! DIR/man and DIR/completions. `cargo xtask dist` runs it and packs the result into the .deb.
//! It is its own binary (feature `gen`) so that the installed `mail-trace` carries neither
//! clap_mangen nor clap_complete.
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::CommandFactory as _;
use clap_complete::Shell;

// The real command line: main.rs compiled a second time, of which only `Cli` is used here, so
// that the pages can never describe flags the binary does not have.
#[allow(dead_code)]
#[path = "main.rs"]
mod app;

/// Section 8: running mail-trace live needs root (CAP_BPF, CAP_NET_ADMIN).
const SECTION: &str = "8";

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args_os().skip(1);
    let (Some(dir), None) = (args.next(), args.next()) else {
        anyhow::bail!("usage: mail-trace-gen DIR");
    };
    let dir = PathBuf::from(dir);
    let cmd = app::Cli::command();
    man_pages(cmd.clone(), &dir.join("man"))?;
    completions(cmd, &dir.join("completions"))
}

/// mail-trace.8 and mail-trace-SUBCOMMAND.8 for every subcommand clap shows.
fn man_pages(cmd: clap::Command, dir: &Path) -> anyhow::Result<()> {
    fn page(cmd: clap::Command, dir: &Path) -> anyhow::Result<()> {
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            page(sub.clone(), dir)?;
        }
        let path = clap_mangen::Man::new(cmd)
            .section(SECTION)
            .manual("System Administration")
            .generate_to(dir)?;
        println!("{}", path.display());
        Ok(())
    }
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    // `help` is clap's, not ours: no page for it (as clap_mangen::generate_to does).
    let mut cmd = cmd.disable_help_subcommand(true);
    // Built once here so that subcommands get their display names (mail-trace-tail).
    cmd.build();
    page(cmd, dir)
}

/// The file names each shell's completion directory expects (bash-completion, zsh's
/// vendor-completions, fish's vendor_completions.d), so they are packed as they are.
fn completions(mut cmd: clap::Command, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    for (shell, file) in [
        (Shell::Bash, "mail-trace"),
        (Shell::Zsh, "_mail-trace"),
        (Shell::Fish, "mail-trace.fish"),
    ] {
        let path = dir.join(file);
        let mut out =
            std::fs::File::create(&path).with_context(|| format!("create {}", path.display()))?;
        clap_complete::generate(shell, &mut cmd, "mail-trace", &mut out);
        println!("{}", path.display());
    }
    Ok(())
}
