//! `cargo xtask fuzz [--secs N] [TARGET…]`: every cargo-fuzz target in turn, one job each (the
//! build machines are shared), seeded from the captures by fuzz/scripts/seeds.py, then the
//! regression inputs of tests/fixtures/fuzz-regressions replayed. Installs cargo-fuzz if missing.
use std::process::Command;

use anyhow::Result;

use crate::{cargo, output, root_dir, sh, step};

/// Every target in fuzz/Cargo.toml, in data-path order.
pub const TARGETS: &[&str] = &[
    "wire_decode",
    "flow_reassembly",
    "smtp",
    "pop3",
    "imap",
    "tls_hello",
    "pcap_read",
    "maillog_line",
    "journal_entry",
    "ring_records",
    "pcapng_roundtrip",
    "engine",
    "chunking",
    "smtp_body",
];

/// Targets whose inputs are scripts of chunks: small inputs reach every state (long runs come
/// from a length field), and 4 KiB keeps them above 1,000 execs/s. The file-format targets
/// (pcap, pcapng, journal) keep room for whole files.
const SCRIPT_TARGETS: &[&str] = &[
    "flow_reassembly",
    "smtp",
    "pop3",
    "imap",
    "tls_hello",
    "maillog_line",
    "engine",
    "chunking",
    "smtp_body",
];

/// How a run is built: with AddressSanitizer (the crash runs: every out-of-bounds access is
/// caught) or without (the long runs: several times the executions per second).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Build {
    Asan,
    Throughput,
}

/// cargo-fuzz builds the target crate with nightly (sanitizers, -Z flags).
const TOOLCHAIN: &str = "+nightly";

pub fn fuzz(secs: u64, only: &[String], build: Build) -> Result<()> {
    if output(Command::new("cargo").args(["fuzz", "--version"])).is_none() {
        step("install cargo-fuzz");
        sh(
            "cargo install cargo-fuzz",
            cargo().args(["install", "cargo-fuzz", "--locked"]),
        )?;
    }
    let fuzz_dir = root_dir().join("fuzz");
    step("seed corpora from the captures");
    sh(
        "fuzz/scripts/seeds.py",
        Command::new("python3").arg(fuzz_dir.join("scripts").join("seeds.py")),
    )?;
    let targets: Vec<&str> = if only.is_empty() {
        TARGETS.to_vec()
    } else {
        only.iter().map(String::as_str).collect()
    };
    for t in &targets {
        step(&format!("fuzz {t} for {secs} s"));
        let corpus = fuzz_dir.join("corpus").join(t);
        std::fs::create_dir_all(&corpus)?;
        let regressions = root_dir().join("tests/fixtures/fuzz-regressions").join(t);
        let mut cmd = Command::new("cargo");
        cmd.current_dir(&fuzz_dir)
            // The eBPF object is not needed to fuzz parsers (see mail-trace/build.rs).
            .env("MAIL_TRACE_SKIP_EBPF", "1")
            .args([TOOLCHAIN, "fuzz", "run", t]);
        if build == Build::Throughput {
            cmd.args(["--sanitizer", "none"]);
        }
        cmd.arg(&corpus);
        if regressions.is_dir() {
            cmd.arg(&regressions);
        }
        cmd.args([
            "--",
            "-jobs=1",
            "-workers=1",
            "-timeout=10",
            "-rss_limit_mb=2048",
        ])
        .arg(format!(
            "-max_len={}",
            if SCRIPT_TARGETS.contains(t) {
                4096
            } else {
                65536
            }
        ))
        .arg(format!("-max_total_time={secs}"))
        .arg("-print_final_stats=1");
        sh(&format!("fuzz {t}"), &mut cmd)?;
    }
    Ok(())
}
