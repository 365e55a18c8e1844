//! `cargo xtask build|run|test|bench|fuzz`: the commands the README promises. Each installs what it
//! needs first (idempotently), prints every step as it starts, and stops at the first failure,
//! naming it.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

mod dist;
mod fuzz;
mod kernels;

/// bpf-linker 0.10.0 emits BTF the kernel rejects; 0.11+ need a system LLVM Debian lacks.
const BPF_LINKER_VERSION: &str = "0.10.4";

/// What the integration tests run: Postfix, Dovecot, swaks (+ Perl TLS and SASL modules), tshark,
/// tcpdump, bpftool (what is attached to an interface), curl, openssl, iproute2, systemd (journald
/// and journalctl for `--journal`).
const DEBIAN_PACKAGES: &[&str] = &[
    "postfix",
    "dovecot-core",
    "dovecot-imapd",
    "dovecot-pop3d",
    "swaks",
    "libnet-ssleay-perl",
    "libauthen-sasl-perl",
    "openssl",
    "ca-certificates",
    "iproute2",
    "curl",
    "tshark",
    "tcpdump",
    "bpftool",
    "python3",
    "bsdutils",
    "systemd",
    "hping3",
];

#[derive(Parser)]
#[command(about = "mail-trace developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install missing prerequisites (nightly rust-src, bpf-linker) and build mail-trace (release).
    Build,
    /// Build, then run target/release/mail-trace with ARGS (needs root).
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Everything CI runs: fmt check, clippy, unit tests, integration tests, test-dist and
    /// test-kernels (the last three as root).
    Test,
    /// The kernel matrix (as root): tests/kernel.rs inside qemu guests of Debian's 5.10, 6.1 and
    /// 6.12 kernels (target/kernels caches the packages), or only the RELEASEs named.
    TestKernels { releases: Vec<String> },
    /// Boot a Debian RELEASE's kernel under qemu with ROOT (default /) shared read-only as its
    /// root file system and run SCRIPT (a path inside ROOT) there; exits with the script's status.
    Guest {
        release: String,
        script: PathBuf,
        #[arg(long, default_value = "/")]
        root: PathBuf,
    },
    /// Benchmarks against tcpdump and tshark, written to BENCHMARKS.md (as root; bench/bench.py).
    /// SECTIONS: any of kernel, live, tls, replay, memory (default: all).
    Bench {
        #[arg(value_name = "SECTIONS")]
        sections: Vec<String>,
    },
    /// Fuzz every parser for N seconds each (cargo-fuzz, nightly), or only the TARGETs named.
    Fuzz {
        #[arg(long, default_value_t = 60)]
        secs: u64,
        /// Without AddressSanitizer: the long runs (several times the executions per second).
        #[arg(long)]
        throughput: bool,
        targets: Vec<String>,
    },
    /// Release artifacts in target/dist/: the static x86_64 binary (musl) and the .deb
    /// (cargo-deb; man pages, completions, lintian-clean), each with a .sha256 file.
    Dist,
    /// `dist`, then `dpkg -i` the .deb into Debian 11, 12 and 13 root file systems (debootstrap,
    /// cached in target/dist-test/) and check it there (as root; the last step of `test`).
    TestDist,
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Build => build(),
        Task::Run { args } => run(args),
        Task::Test => test(),
        Task::TestKernels { releases } => kernels::test_kernels(&releases),
        Task::Guest {
            release,
            script,
            root,
        } => kernels::guest(&release, &root, &script),
        Task::Bench { sections } => bench(sections),
        Task::Fuzz {
            secs,
            throughput,
            targets,
        } => fuzz::fuzz(
            secs,
            &targets,
            if throughput {
                fuzz::Build::Throughput
            } else {
                fuzz::Build::Asan
            },
        ),
        Task::Dist => dist::dist().map(|_| ()),
        Task::TestDist => dist::test_dist(),
    };
    if let Err(e) = result {
        eprintln!("xtask: {e:#}");
        std::process::exit(1);
    }
}

fn root_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

/// The cargo that runs us (cargo sets $CARGO), so the same toolchain builds everything.
fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(root_dir());
    cmd
}

fn step(name: &str) {
    println!("==> {name}");
}

/// Runs `cmd`, inheriting stdio; fails naming `what` unless it exits 0.
fn sh(what: &str, cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("{what}: cannot start {:?}", cmd.get_program()))?;
    if !status.success() {
        bail!("step failed: {what} ({status})");
    }
    Ok(())
}

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn is_root() -> bool {
    // "Uid: real effective saved fs": the effective uid decides what we may attach.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|u| u.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// rust-src for the nightly toolchain and the pinned bpf-linker, each only when missing.
fn prerequisites() -> Result<()> {
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"]))
        .context("rustup is needed (https://rustup.rs)")?;
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        step("install the nightly toolchain with rust-src (eBPF build)");
        sh(
            "rustup toolchain install nightly",
            Command::new("rustup").args([
                "toolchain",
                "install",
                "nightly",
                "--profile",
                "minimal",
                "--component",
                "rust-src",
            ]),
        )?;
    } else {
        let installed = output(Command::new("rustup").args([
            "component",
            "list",
            "--installed",
            "--toolchain",
            "nightly",
        ]))
        .unwrap_or_default();
        if !installed.lines().any(|l| l.starts_with("rust-src")) {
            step("rustup component add rust-src --toolchain nightly");
            sh(
                "rustup component add rust-src",
                Command::new("rustup").args([
                    "component",
                    "add",
                    "rust-src",
                    "--toolchain",
                    "nightly",
                ]),
            )?;
        }
    }
    let linker = output(Command::new("bpf-linker").arg("--version")).unwrap_or_default();
    if linker.split_whitespace().nth(1) != Some(BPF_LINKER_VERSION) {
        step(&format!(
            "cargo install bpf-linker@{BPF_LINKER_VERSION} --locked (about 4 minutes)"
        ));
        sh(
            "install bpf-linker",
            cargo().args([
                "install",
                &format!("bpf-linker@{BPF_LINKER_VERSION}"),
                "--locked",
                "--force",
            ]),
        )?;
    }
    Ok(())
}

fn build() -> Result<()> {
    prerequisites()?;
    step("cargo build --release -p mail-trace");
    sh(
        "build mail-trace",
        cargo().args(["build", "--release", "-p", "mail-trace"]),
    )
}

fn run(args: Vec<OsString>) -> Result<()> {
    build()?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root_dir().join("target"));
    let bin = target.join("release/mail-trace");
    if !is_root() {
        eprintln!(
            "xtask: mail-trace attaches eBPF programs and needs root (or CAP_BPF + CAP_NET_ADMIN); try `sudo -E cargo xtask run -- …`"
        );
    }
    step(&format!("{} {}", bin.display(), join(&args)));
    use std::os::unix::process::CommandExt;
    let err = Command::new(&bin).args(&args).exec();
    bail!("cannot run {}: {err}", bin.display())
}

fn join(args: &[OsString]) -> String {
    args.iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Builds the release binary, then hands over to bench/bench.py, which owns the network
/// namespace, the load generators and BENCHMARKS.md. Scale with BENCH_SCALE, BENCH_REPLAY_MB.
fn bench(sections: Vec<String>) -> Result<()> {
    if !is_root() {
        bail!("the benchmarks attach eBPF programs and create network namespaces: run as root");
    }
    debian_packages()?;
    build()?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root_dir().join("target"));
    step("python3 bench/bench.py");
    sh(
        "benchmarks",
        Command::new("python3")
            .arg(root_dir().join("bench/bench.py"))
            .args(&sections)
            .env("MT_BIN", target.join("release/mail-trace"))
            .env("BENCH_OUT", root_dir().join("BENCHMARKS.md")),
    )
}

fn test() -> Result<()> {
    prerequisites()?;
    let root = is_root();
    if root {
        debian_packages()?;
    }
    step("cargo fmt --all -- --check");
    sh("fmt check", cargo().args(["fmt", "--all", "--", "--check"]))?;
    // The feature adds mail-trace-gen (man pages, completions), which a plain build skips.
    step("cargo clippy --all-targets --features mail-trace/gen -- -D warnings");
    sh(
        "clippy",
        cargo().args([
            "clippy",
            "--all-targets",
            "--features",
            "mail-trace/gen",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    step("unit tests: cargo test --lib --bins");
    sh("unit tests", cargo().args(["test", "--lib", "--bins"]))?;
    step("integration tests: cargo test -p mail-trace --test '*' (one at a time)");
    if !root {
        bail!("step failed: integration tests need root (network namespaces, Postfix, Dovecot, eBPF); run `cargo xtask test` as root");
    }
    sh(
        "integration tests",
        cargo().args([
            "test",
            "-p",
            "mail-trace",
            "--test",
            "*",
            "--",
            "--test-threads=1",
        ]),
    )?;
    // A smoke run, not a search: every target's build, seeds and kept crash inputs still pass,
    // with a few seconds of new inputs each (the long runs: `cargo xtask fuzz`, docs/fuzzing.md).
    step("fuzz smoke run: every target for 8 s (AddressSanitizer)");
    fuzz::fuzz(8, &[], fuzz::Build::Asan)?;
    step("test-dist: the .deb and the static binary on Debian 11, 12 and 13");
    dist::test_dist()?;
    // Last: it needs qemu and boots three guests (about 4 minutes under TCG on two cores).
    step("test-kernels: tests/kernel.rs in qemu guests of Debian's 5.10, 6.1 and 6.12 kernels");
    kernels::test_kernels(&[])
}

/// Installs the integration tests' Debian packages that `dpkg -s` says are missing.
fn debian_packages() -> Result<()> {
    apt_install(DEBIAN_PACKAGES)
}

/// Installs those of `packages` that `dpkg -s` says are missing.
fn apt_install(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| {
            !output(Command::new("dpkg").args(["-s", p]))
                .is_some_and(|s| s.contains("Status: install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    step(&format!("apt-get install {}", missing.join(" ")));
    // Without this debconf asks which kind of mail server to configure.
    sh(
        "debconf-set-selections",
        Command::new("sh").args([
            "-c",
            "echo 'postfix postfix/main_mailer_type select No configuration' | debconf-set-selections",
        ]),
    )?;
    sh(
        "apt-get update",
        Command::new("apt-get")
            .args(["-o", "DPkg::Lock::Timeout=600", "update"])
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    sh(
        "apt-get install",
        Command::new("apt-get")
            .args([
                "install",
                "-y",
                "-o",
                "DPkg::Lock::Timeout=600",
                "--no-install-recommends",
            ])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}
