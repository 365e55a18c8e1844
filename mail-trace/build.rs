//! Builds the eBPF programs (nightly + bpf-linker, through aya-build) so the
//! binary can embed them: twice, as `mail-trace` (bpf_loop, Linux >= 5.17) and
//! `mail-trace-compat` (the `compat` feature: bounded loops, for older kernels; the
//! loader picks one at start-up, see `capture::kernel`). `MAIL_TRACE_SKIP_EBPF=1`
//! writes empty objects instead: parsers and tests then build on stable alone, and
//! the loader refuses to run.
use std::{env, fs, path::PathBuf};

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=MAIL_TRACE_SKIP_EBPF");
    let out_dir =
        PathBuf::from(env::var_os("OUT_DIR").ok_or_else(|| anyhow::anyhow!("OUT_DIR not set"))?);
    if env::var("MAIL_TRACE_SKIP_EBPF").is_ok_and(|v| v == "1") {
        fs::write(out_dir.join("mail-trace"), b"")?;
        fs::write(out_dir.join("mail-trace-compat"), b"")?;
        return Ok(());
    }
    let manifest = PathBuf::from(
        env::var_os("CARGO_MANIFEST_DIR")
            .ok_or_else(|| anyhow::anyhow!("CARGO_MANIFEST_DIR not set"))?,
    );
    let root = manifest.join("..").join("mail-trace-ebpf");
    let root = root
        .to_str()
        .ok_or_else(|| anyhow::anyhow!("non-UTF-8 path {}", root.display()))?;
    // aya-build names its output after the binary, so the compat build goes first and is
    // moved aside before the default build writes the same name.
    for (features, name) in [
        (&["compat"][..], "mail-trace-compat"),
        (&[][..], "mail-trace"),
    ] {
        aya_build::build_ebpf(
            [aya_build::Package {
                name: "mail-trace-ebpf",
                root_dir: root,
                features,
                ..Default::default()
            }],
            aya_build::Toolchain::default(),
        )?;
        if name != "mail-trace" {
            fs::rename(out_dir.join("mail-trace"), out_dir.join(name))?;
        }
    }
    Ok(())
}
