//! `cargo xtask dist`: what a relay without a toolchain installs — a static x86_64 binary (musl,
//! the eBPF objects embedded by mail-trace/build.rs as in any build) and a .deb made by cargo-deb
//! with that binary, man pages and completions generated from the clap definitions
//! (mail-trace-gen), the user documentation and a postinst creating the `mail-trace` system user.
//! Artifacts and their SHA-256 files go to target/dist/.
//!
//! `cargo xtask test-dist`: installs that .deb with `dpkg -i` into minimal Debian root file systems
//! (debootstrap, cached under target/dist-test/) and checks what a user would: `--version`, a
//! replay of a shared-corpus capture against tshark's dissection, the system user, the pages and
//! completions in place. Everything happens in a private mount namespace (`unshare --mount`), so
//! the mounts vanish with it on every exit path, a kill included.
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};

use crate::{cargo, output, root_dir, sh, step};

/// Static: musl links libc in, so the binary starts on any x86_64 userland (glibc 2.31 of
/// Debian 11 as well as 2.41 of 13); the glibc build needs the build host's 2.36.
pub const TARGET: &str = "x86_64-unknown-linux-musl";

/// Pinned like bpf-linker: the .deb's layout must not change under us between two runs.
const CARGO_DEB_VERSION: &str = "3.8.0";

/// musl-tools: musl-gcc, for the C in libmimalloc-sys. lintian: the package's checks.
const DIST_PACKAGES: &[&str] = &["musl-tools", "lintian"];

const VERSION: &str = env!("CARGO_PKG_VERSION");

/// A Debian release whose userland the .deb is installed into.
pub struct Release {
    pub codename: &'static str,
    /// What /etc/debian_version starts with.
    pub number: &'static str,
}

/// Debian 11 (glibc 2.31, Linux 5.10), 12 (glibc 2.36, Linux 6.1) and 13 (glibc 2.41, Linux
/// 6.12): the releases relays run.
pub const RELEASES: &[Release] = &[
    Release {
        codename: "bullseye",
        number: "11.",
    },
    Release {
        codename: "bookworm",
        number: "12.",
    },
    Release {
        codename: "trixie",
        number: "13.",
    },
];

/// Installed into each root fs besides minbase: adduser is the .deb's one dependency (postinst).
/// The live check in a qemu guest on these trees (issue 18, branch `kernels`) adds the release's
/// own postfix and iproute2 here.
const ROOTFS_PACKAGES: &[&str] = &["adduser"];

/// A simple SMTP session (HELO, MAIL, RCPT, DATA, QUIT against Postfix), from the shared corpus,
/// with tshark's dissection beside it (`.tshark.txt`), from which the expected fields are read.
const CORPUS_CAPTURE: &str =
    "suricata-verify/tests/firewall/ruletype-firewall-122-smtp/smtp-simple-session.pcap";

/// What `dist` made.
pub struct Artifacts {
    /// target/dist/
    pub dir: PathBuf,
    /// File names in `dir`.
    pub deb: String,
    pub bin: String,
    /// Where mail-trace-gen wrote the pages (man/*.8.gz) and completions (completions/*).
    pub gen: PathBuf,
}

pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root_dir().join("target"))
}

pub fn dist() -> Result<Artifacts> {
    let started = Instant::now();
    crate::prerequisites()?;
    musl_target()?;
    crate::apt_install(DIST_PACKAGES)?;
    cargo_deb()?;

    step(&format!(
        "cargo build --release --locked --target {TARGET} -p mail-trace --features gen --bins"
    ));
    // One build for both binaries: the feature only adds mail-trace-gen's dependencies, which
    // the mail-trace binary does not use, so it is the binary a build without it makes.
    sh(
        "build the static binary",
        cargo().args([
            "build",
            "--release",
            "--locked",
            "--target",
            TARGET,
            "-p",
            "mail-trace",
            "--features",
            "gen",
            "--bins",
        ]),
    )?;
    let release = target_dir().join(TARGET).join("release");
    let built = release.join("mail-trace");

    // Under the target dir, where cargo-deb's `target/release/` asset paths point.
    let gen = release.join("dist-gen");
    step(&format!("mail-trace-gen {}", gen.display()));
    if gen.exists() {
        std::fs::remove_dir_all(&gen).with_context(|| format!("remove {}", gen.display()))?;
    }
    sh(
        "generate man pages and completions",
        Command::new(release.join("mail-trace-gen"))
            .arg(&gen)
            .stdout(Stdio::null()),
    )?;
    step("strip --strip-unneeded");
    // Symbols are a tenth of the file. Stripped once, here, for both artifacts: the .deb
    // packs this file (`--no-strip`), so its /usr/bin/mail-trace has the static binary's hash.
    sh(
        "strip",
        Command::new("strip")
            .arg("--strip-unneeded")
            .arg("-o")
            .arg(gen.join("mail-trace"))
            .arg(&built),
    )?;
    check_static(&gen.join("mail-trace"))?;
    // -n: no name or time stamp in the gzip header, so the same page packs the same bytes.
    sh(
        "gzip the man pages",
        Command::new("sh")
            .args(["-c", "gzip -9nf \"$1\"/*.8", "sh"])
            .arg(gen.join("man")),
    )?;

    let dir = target_dir().join("dist");
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("remove {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;

    let bin = format!("mail-trace-{VERSION}-x86_64-linux-musl");
    std::fs::copy(gen.join("mail-trace"), dir.join(&bin))
        .with_context(|| format!("copy the binary to {}", dir.display()))?;
    let version = output(Command::new(dir.join(&bin)).arg("--version"))
        .context("the static binary does not start on this host")?;
    ensure!(
        version == format!("mail-trace {VERSION}\n"),
        "the static binary says {version:?}"
    );

    step("cargo deb --no-build --no-strip");
    sh(
        "cargo deb",
        cargo()
            .args(["deb", "-p", "mail-trace", "--no-build", "--no-strip"])
            .args(["--target", TARGET])
            .arg("--output")
            .arg(&dir),
    )?;
    let deb = format!("mail-trace_{VERSION}-1_amd64.deb");
    ensure!(
        dir.join(&deb).is_file(),
        "cargo deb did not write target/dist/{deb}"
    );

    step(&format!("lintian --fail-on error {deb}"));
    // Warnings are printed for whoever reads the log; only errors fail the build.
    sh(
        "lintian",
        Command::new("lintian")
            .args(["--fail-on", "error", "--info"])
            .arg(dir.join(&deb)),
    )?;

    for name in [&bin, &deb] {
        checksum(&dir, name)?;
    }
    println!(
        "dist: {} and {} (+ .sha256) in {} ({:.0} s)",
        bin,
        deb,
        dir.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(Artifacts { dir, deb, bin, gen })
}

/// `rustup target add` for the musl standard library, only when missing.
fn musl_target() -> Result<()> {
    let installed = output(Command::new("rustup").args(["target", "list", "--installed"]))
        .context("rustup is needed (https://rustup.rs)")?;
    if !installed.lines().any(|l| l.trim() == TARGET) {
        step(&format!("rustup target add {TARGET}"));
        sh(
            "rustup target add",
            Command::new("rustup").args(["target", "add", TARGET]),
        )?;
    }
    Ok(())
}

fn cargo_deb() -> Result<()> {
    // `cargo deb --version` prints `cargo-deb 3.8.0` (without `deb`: cargo's own version).
    let have = output(cargo().args(["deb", "--version"])).unwrap_or_default();
    if have.split_whitespace().nth(1) != Some(CARGO_DEB_VERSION) {
        step(&format!(
            "cargo install cargo-deb@{CARGO_DEB_VERSION} --locked (about 2 minutes)"
        ));
        sh(
            "install cargo-deb",
            cargo().args([
                "install",
                &format!("cargo-deb@{CARGO_DEB_VERSION}"),
                "--locked",
                "--force",
            ]),
        )?;
    }
    Ok(())
}

/// Fails unless `path` is an x86_64 ELF without a program interpreter (nothing for a dynamic
/// loader to resolve, so no glibc version to need) that carries at least one eBPF object.
fn check_static(path: &Path) -> Result<()> {
    let bytes = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    let facts = elf_facts(&bytes).with_context(|| format!("{} is no ELF", path.display()))?;
    ensure!(
        !facts.interp,
        "{} asks for a dynamic loader (PT_INTERP): not static",
        path.display()
    );
    ensure!(
        facts.bpf_objects > 0,
        "{} embeds no eBPF object (was it built with MAIL_TRACE_SKIP_EBPF=1?)",
        path.display()
    );
    println!(
        "{}: static x86_64, {} eBPF object(s) embedded",
        path.display(),
        facts.bpf_objects
    );
    Ok(())
}

#[derive(Debug, PartialEq)]
struct ElfFacts {
    interp: bool,
    bpf_objects: usize,
}

const PT_INTERP: u32 = 3;
const EM_X86_64: u16 = 62;
const EM_BPF: u16 = 247;

/// Reads the program headers of a 64-bit little-endian ELF, and counts the little-endian eBPF
/// ELF objects inside it (include_bytes keeps them whole, header first).
fn elf_facts(bytes: &[u8]) -> Result<ElfFacts> {
    let u16_at = |o: usize| -> Option<u16> {
        Some(u16::from_le_bytes(bytes.get(o..o + 2)?.try_into().ok()?))
    };
    let u32_at = |o: usize| -> Option<u32> {
        Some(u32::from_le_bytes(bytes.get(o..o + 4)?.try_into().ok()?))
    };
    let u64_at = |o: usize| -> Option<u64> {
        Some(u64::from_le_bytes(bytes.get(o..o + 8)?.try_into().ok()?))
    };
    let is_elf64_le = |o: usize| bytes.get(o..o + 6) == Some(b"\x7fELF\x02\x01".as_slice());
    ensure!(is_elf64_le(0), "not a 64-bit little-endian ELF");
    ensure!(u16_at(18) == Some(EM_X86_64), "not x86_64");
    let short = || anyhow::anyhow!("truncated ELF header");
    let phoff = usize::try_from(u64_at(0x20).ok_or_else(short)?)?;
    let phentsize = usize::from(u16_at(0x36).ok_or_else(short)?);
    let phnum = usize::from(u16_at(0x38).ok_or_else(short)?);
    let mut interp = false;
    for i in 0..phnum {
        let p_type = u32_at(phoff + i * phentsize).ok_or_else(short)?;
        interp |= p_type == PT_INTERP;
    }
    let bpf_objects = (1..bytes.len().saturating_sub(20))
        .filter(|&o| bytes[o] == 0x7f && is_elf64_le(o) && u16_at(o + 18) == Some(EM_BPF))
        .count();
    Ok(ElfFacts {
        interp,
        bpf_objects,
    })
}

/// Writes `name.sha256` beside `name`, in the form `sha256sum -c` reads.
fn checksum(dir: &Path, name: &str) -> Result<()> {
    let line = output(Command::new("sha256sum").arg(name).current_dir(dir))
        .with_context(|| format!("sha256sum {name}"))?;
    std::fs::write(dir.join(format!("{name}.sha256")), line)
        .with_context(|| format!("write {name}.sha256"))
}

pub fn test_dist() -> Result<()> {
    let started = Instant::now();
    if !crate::is_root() {
        bail!("test-dist runs debootstrap, mounts and chroot: run as root");
    }
    crate::apt_install(&["debootstrap"])?;
    let cache = target_dir().join("dist-test");
    std::fs::create_dir_all(&cache).with_context(|| format!("create {}", cache.display()))?;
    // The root file systems download while the binary compiles: one waits on the network, the
    // other on the CPU.
    let mut pending = Vec::new();
    for release in RELEASES {
        if let Some(child) = start_rootfs(&cache, release)? {
            pending.push((release, child));
        }
    }
    let built = dist();
    let mut failed = Vec::new();
    for (release, child) in pending {
        if let Err(e) = finish_rootfs(&cache, release, child) {
            failed.push(format!("{e:#}"));
        }
    }
    let art = built?;
    if !failed.is_empty() {
        bail!("{}", failed.join("; "));
    }
    let expected = Expected::from_tshark(&corpus().join(format!("{CORPUS_CAPTURE}.tshark.txt")))?;
    let host_replay = replay_on_host(&art)?;
    check_replay("the build host", &host_replay, &expected)?;
    for release in RELEASES {
        step(&format!(
            "test-dist: dpkg -i {} into Debian {} ({})",
            art.deb,
            release.number.trim_end_matches('.'),
            release.codename
        ));
        let out = cache.join(format!("out-{}", release.codename));
        with_installed_rootfs(
            release,
            &art,
            &out,
            CHECKS_IN_ROOTFS,
            &[
                ("MT_CAPTURE", CORPUS_CAPTURE),
                ("MT_CHECKS", CHECKS_IN_CHROOT),
            ],
        )?;
        check_rootfs(release, &art, &out, &host_replay, &expected)?;
        println!("test-dist: Debian {}: ok", release.codename);
    }
    println!(
        "test-dist: passed on {} ({:.0} s)",
        RELEASES
            .iter()
            .map(|r| r.codename)
            .collect::<Vec<_>>()
            .join(", "),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn corpus() -> PathBuf {
    root_dir().join("../shared/corpus/pcaps")
}

fn rootfs_dir(cache: &Path, release: &Release) -> PathBuf {
    cache.join(format!("rootfs-{}", release.codename))
}

/// What a cached root fs was made with; a change of ROOTFS_PACKAGES makes it again.
fn rootfs_stamp(release: &Release) -> String {
    format!(
        "debootstrap --variant=minbase --include={} {}\n",
        ROOTFS_PACKAGES.join(","),
        release.codename
    )
}

const STAMP: &str = ".mail-trace-rootfs";

/// Starts debootstrap for `release` unless its tree is cached; it writes into a `.new` directory
/// renamed when complete, so an interrupted run leaves nothing that looks usable.
fn start_rootfs(cache: &Path, release: &Release) -> Result<Option<Child>> {
    let dir = rootfs_dir(cache, release);
    let stamp = std::fs::read_to_string(dir.join(STAMP)).unwrap_or_default();
    if stamp == rootfs_stamp(release) {
        return Ok(None);
    }
    let new = cache.join(format!("rootfs-{}.new", release.codename));
    for d in [&dir, &new] {
        if d.exists() {
            std::fs::remove_dir_all(d).with_context(|| format!("remove {}", d.display()))?;
        }
    }
    let log_path = cache.join(format!("debootstrap-{}.log", release.codename));
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("create {}", log_path.display()))?;
    step(&format!(
        "debootstrap --variant=minbase {} (in the background; log {})",
        release.codename,
        log_path.display()
    ));
    // In its own mount namespace: the /proc and /sys debootstrap mounts in the tree go with it,
    // whatever happens to it. No mirror named: debootstrap's default, Debian's own.
    let child = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "debootstrap"])
        .arg("--variant=minbase")
        .arg(format!("--include={}", ROOTFS_PACKAGES.join(",")))
        .arg(release.codename)
        .arg(&new)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .spawn()
        .context("cannot start unshare debootstrap")?;
    Ok(Some(child))
}

fn finish_rootfs(cache: &Path, release: &Release, mut child: Child) -> Result<()> {
    let status = child.wait()?;
    let log = cache.join(format!("debootstrap-{}.log", release.codename));
    if !status.success() {
        let tail = std::fs::read_to_string(&log).unwrap_or_default();
        let tail: Vec<&str> = tail.lines().rev().take(5).collect();
        bail!(
            "debootstrap {} failed ({status}); {}: …{}",
            release.codename,
            log.display(),
            tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
        );
    }
    let new = cache.join(format!("rootfs-{}.new", release.codename));
    std::fs::write(new.join(STAMP), rootfs_stamp(release))?;
    let dir = rootfs_dir(cache, release);
    std::fs::rename(&new, &dir)
        .with_context(|| format!("rename {} to {}", new.display(), dir.display()))?;
    println!("debootstrap {}: done", release.codename);
    Ok(())
}

/// Sets up, in a new private mount namespace, `release`'s cached tree under a throw-away overlay
/// (the cache stays pristine) with /proc, /dev, target/dist (read-only, at /mnt/dist), the corpus
/// (read-only, /mnt/pcaps) and `out` (/mnt/out) mounted, installs the .deb with `dpkg -i`
/// (log in out/dpkg-install.log), then runs `then` (sh) with $ROOT the installed tree and $OUT
/// `out`, the deb's and the static binary's file names as $1 and $2, and `vars` in its
/// environment. Every mount lives only in
/// that namespace, so it ends with the script, however the script ends.
///
/// The hook for the live check (issue 18 item 1, the kernels branch's qemu harness): a `then`
/// that boots the release's kernel with `-virtfs local,path=$ROOT,…` as its root runs the
/// packaged mail-trace against that release's own Postfix (add it to ROOTFS_PACKAGES).
pub fn with_installed_rootfs(
    release: &Release,
    art: &Artifacts,
    out: &Path,
    then: &str,
    vars: &[(&str, &str)],
) -> Result<()> {
    let cache = target_dir().join("dist-test");
    let lower = rootfs_dir(&cache, release);
    ensure!(
        std::fs::read_to_string(lower.join(STAMP)).unwrap_or_default() == rootfs_stamp(release),
        "no root fs for {} in {}: `cargo xtask test-dist` makes it",
        release.codename,
        cache.display()
    );
    let mnt = cache.join(format!("mnt-{}", release.codename));
    for d in [&mnt, out] {
        if d.exists() {
            std::fs::remove_dir_all(d).with_context(|| format!("remove {}", d.display()))?;
        }
        std::fs::create_dir_all(d).with_context(|| format!("create {}", d.display()))?;
    }
    let corpus = corpus();
    for p in [&lower, &mnt] {
        // overlayfs splits its options at commas and lowerdir at colons.
        ensure!(
            !p.to_string_lossy().contains([',', ':']),
            "{} has a comma or colon, which overlayfs options cannot carry",
            p.display()
        );
    }
    let script = format!("{SETUP_ROOTFS}\n{then}");
    // Kept in `out` (not on the terminal) and quoted on failure: the failing command says why.
    let stderr_path = out.join("stderr");
    let stderr = std::fs::File::create(&stderr_path)
        .with_context(|| format!("create {}", stderr_path.display()))?;
    let status = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-euc"])
        .arg(&script)
        .arg("sh")
        .args([&art.deb, &art.bin])
        .env("MT_MNT", &mnt)
        .env("MT_LOWER", &lower)
        .env("MT_DIST", &art.dir)
        .env("MT_PCAPS", &corpus)
        .env("OUT", out)
        .envs(vars.iter().copied())
        .stdin(Stdio::null())
        .stderr(stderr)
        .status()
        .context("cannot start unshare")?;
    // The mount point is an empty directory again once the namespace is gone.
    let _ = std::fs::remove_dir(&mnt);
    if !status.success() {
        let said = std::fs::read_to_string(&stderr_path).unwrap_or_default();
        let said: Vec<&str> = said.lines().rev().take(5).collect();
        bail!(
            "in Debian {} ({status}): {} (the rest in {})",
            release.codename,
            said.into_iter().rev().collect::<Vec<_>>().join(" / "),
            out.display()
        );
    }
    Ok(())
}

/// Runs as root in the private mount namespace; see with_installed_rootfs.
const SETUP_ROOTFS: &str = r#"
mount -t tmpfs -o mode=0755 mt-dist "$MT_MNT"
mkdir "$MT_MNT/upper" "$MT_MNT/work" "$MT_MNT/root"
mount -t overlay mt-dist -o "lowerdir=$MT_LOWER,upperdir=$MT_MNT/upper,workdir=$MT_MNT/work" "$MT_MNT/root"
ROOT=$MT_MNT/root
export ROOT OUT
mount -t proc proc "$ROOT/proc"
mount --rbind /dev "$ROOT/dev"
mount -t tmpfs tmpfs "$ROOT/tmp"
mkdir -p "$ROOT/mnt/dist" "$ROOT/mnt/pcaps" "$ROOT/mnt/out"
mount --bind "$MT_DIST" "$ROOT/mnt/dist"
mount -o remount,bind,ro "$ROOT/mnt/dist"
mount --bind "$MT_PCAPS" "$ROOT/mnt/pcaps"
mount -o remount,bind,ro "$ROOT/mnt/pcaps"
mount --bind "$OUT" "$ROOT/mnt/out"
chroot "$ROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C DEBIAN_FRONTEND=noninteractive \
    dpkg -i "/mnt/dist/$1" >"$OUT/dpkg-install.log" 2>&1 ||
    { echo "dpkg -i $1 failed:" >&2; tail -n 5 "$OUT/dpkg-install.log" >&2; exit 1; }
"#;

/// test-dist's `then`: runs CHECKS_IN_CHROOT (as $MT_CHECKS) inside the installed tree.
const CHECKS_IN_ROOTFS: &str = r#"
chroot "$ROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C DEBIAN_FRONTEND=noninteractive \
    /bin/sh -euc "$MT_CHECKS" sh "$1" "$2" "$MT_CAPTURE"
"#;

/// What a user of the release would try, written to files in /mnt/out ($OUT) that check_rootfs
/// reads. $1 the .deb, $2 the static binary, $3 the corpus capture.
const CHECKS_IN_CHROOT: &str = r#"
cd /mnt/out
cat /etc/debian_version >debian_version
# the release artifact itself, before any package
"/mnt/dist/$2" --version >static-version
# installing again runs postinst with the user already there
dpkg -i "/mnt/dist/$1" >dpkg-reinstall.log 2>&1 || { tail -n 5 dpkg-reinstall.log >&2; exit 1; }
id mail-trace >id
getent passwd mail-trace >passwd
command -v mail-trace >path
mail-trace --version >version
(cd /mnt/pcaps && mail-trace replay --json "$3") >replay.json
dpkg -L mail-trace | while read -r f; do if [ -f "$f" ]; then sha256sum "$f"; fi; done >installed.sha256
bash -c ". /usr/share/bash-completion/completions/mail-trace && complete -p mail-trace" >bash-complete
"#;

/// `replay --json` of the corpus capture by the static binary, on the build host, named as the
/// chroot names it (relative to the corpus), for a byte-for-byte comparison.
fn replay_on_host(art: &Artifacts) -> Result<String> {
    output(
        Command::new(art.dir.join(&art.bin))
            .args(["replay", "--json", CORPUS_CAPTURE])
            .current_dir(corpus()),
    )
    .context("replay --json of the corpus capture on the build host failed")
}

fn check_rootfs(
    release: &Release,
    art: &Artifacts,
    out: &Path,
    host_replay: &str,
    expected: &Expected,
) -> Result<()> {
    let read = |name: &str| {
        std::fs::read_to_string(out.join(name))
            .with_context(|| format!("{}: no {name} in {}", release.codename, out.display()))
    };
    let name = release.codename;
    let debian_version = read("debian_version")?;
    ensure!(
        debian_version.starts_with(release.number),
        "{name}: /etc/debian_version is {debian_version:?}"
    );
    let version_line = format!("mail-trace {VERSION}\n");
    for file in ["static-version", "version"] {
        let got = read(file)?;
        ensure!(
            got == version_line,
            "{name}: {file}: {got:?}, not {version_line:?}"
        );
    }
    ensure!(
        read("path")? == "/usr/bin/mail-trace\n",
        "{name}: mail-trace is not /usr/bin/mail-trace"
    );
    let user = SystemUser::parse(&read("id")?, &read("passwd")?)
        .with_context(|| format!("{name}: the mail-trace user"))?;
    println!(
        "{name}: user mail-trace uid {} gid {}, home {}, shell {}",
        user.uid, user.gid, user.home, user.shell
    );

    let replay = read("replay.json")?;
    ensure!(
        replay == host_replay,
        "{name}: replay --json differs from the build host's:\n{replay}\nvs\n{host_replay}"
    );
    check_replay(name, &replay, expected)?;

    // Each generated file installed where its tool looks, with the bytes generated.
    let installed = read("installed.sha256")?;
    let mut wanted: Vec<(PathBuf, String)> =
        vec![(art.dir.join(&art.bin), "/usr/bin/mail-trace".to_owned())];
    for entry in std::fs::read_dir(art.gen.join("man"))? {
        let path = entry?.path();
        let file = path.file_name().unwrap_or_default().to_string_lossy();
        wanted.push((path.clone(), format!("/usr/share/man/man8/{file}")));
    }
    for (file, dest) in [
        (
            "mail-trace",
            "/usr/share/bash-completion/completions/mail-trace",
        ),
        (
            "_mail-trace",
            "/usr/share/zsh/vendor-completions/_mail-trace",
        ),
        (
            "mail-trace.fish",
            "/usr/share/fish/vendor_completions.d/mail-trace.fish",
        ),
    ] {
        wanted.push((art.gen.join("completions").join(file), dest.to_owned()));
    }
    ensure!(
        wanted.len() >= 9,
        "{name}: expected 5 man pages, found {}",
        wanted.len() - 4
    );
    for (src, dest) in &wanted {
        let hash = sha256(src)?;
        let line = format!("{hash}  {dest}");
        ensure!(
            installed.lines().any(|l| l == line),
            "{name}: {dest} is not installed as {} (sha256 {hash}); dpkg -L gave:\n{installed}",
            src.display()
        );
    }
    for doc in ["README.md", "json.md", "tls-plaintext.md", "copyright"] {
        let dest = format!("  /usr/share/doc/mail-trace/{doc}");
        ensure!(
            installed.lines().any(|l| l.ends_with(&dest)),
            "{name}: /usr/share/doc/mail-trace/{doc} is not installed"
        );
    }
    let complete = read("bash-complete")?;
    ensure!(
        complete.trim_end().ends_with(" mail-trace") && complete.starts_with("complete "),
        "{name}: bash does not complete mail-trace: {complete:?}"
    );
    Ok(())
}

fn sha256(path: &Path) -> Result<String> {
    let line = output(Command::new("sha256sum").arg(path))
        .with_context(|| format!("sha256sum {}", path.display()))?;
    Ok(line
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned())
}

/// The system user as `id` and `getent passwd` show it.
#[derive(Debug, PartialEq)]
struct SystemUser {
    uid: u32,
    gid: u32,
    home: String,
    shell: String,
}

impl SystemUser {
    /// A system user (Debian: uid 100–999) with its own group and no login.
    fn parse(id: &str, passwd: &str) -> Result<Self> {
        // uid=101(mail-trace) gid=102(mail-trace) groups=102(mail-trace)
        let id_field = |key: &str| -> Result<u32> {
            let v = id
                .split_whitespace()
                .find_map(|f| f.strip_prefix(key))
                .with_context(|| format!("`id mail-trace` has no {key}: {id:?}"))?;
            let n = v
                .strip_suffix("(mail-trace)")
                .with_context(|| format!("{key}{v} is not mail-trace's"))?;
            n.parse().with_context(|| format!("{key}{v}"))
        };
        let uid = id_field("uid=")?;
        let gid = id_field("gid=")?;
        ensure!(
            id.trim_end()
                .ends_with(&format!(" groups={gid}(mail-trace)")),
            "mail-trace is in other groups than its own: {id:?}"
        );
        ensure!((100..1000).contains(&uid), "uid {uid} is not a system uid");
        let f: Vec<&str> = passwd.trim_end().split(':').collect();
        ensure!(
            f.len() == 7 && f[0] == "mail-trace" && f[2] == uid.to_string(),
            "getent passwd mail-trace: {passwd:?}"
        );
        let (home, shell) = (f[5].to_owned(), f[6].to_owned());
        ensure!(home == "/nonexistent", "home {home}, not /nonexistent");
        ensure!(
            shell == "/usr/sbin/nologin" || shell == "/bin/false",
            "shell {shell}: the user can log in"
        );
        Ok(Self {
            uid,
            gid,
            home,
            shell,
        })
    }
}

/// The SMTP session as tshark dissected it, from the `-T fields` table of a `.tshark.txt`.
#[derive(Debug, PartialEq)]
struct Expected {
    client: String,
    server: String,
    helo: String,
    mail_from: String,
    rcpt: Vec<String>,
    queue_id: String,
}

impl Expected {
    fn from_tshark(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("{}", path.display()))
    }

    /// One SMTP session: the commands' rows give the endpoints and the arguments, the
    /// end-of-data reply the queue id.
    fn parse(text: &str) -> Result<Self> {
        let mut lines = text
            .lines()
            .skip_while(|l| !l.starts_with("frame.number\t"));
        let header: Vec<&str> = lines
            .next()
            .context("no `tshark -T fields` table")?
            .split('\t')
            .collect();
        let col = |name: &str| {
            header
                .iter()
                .position(|h| *h == name)
                .with_context(|| format!("no column {name}"))
        };
        let (src, sport, dst, dport) = (
            col("ip.src")?,
            col("tcp.srcport")?,
            col("ip.dst")?,
            col("tcp.dstport")?,
        );
        let (cmd, param, code, text_col) = (
            col("smtp.req.command")?,
            col("smtp.req.parameter")?,
            col("smtp.response.code")?,
            col("smtp.rsp.parameter")?,
        );
        let (mut client, mut server, mut helo, mut mail_from, mut queue_id) =
            (None, None, None, None, None);
        let mut rcpt = Vec::new();
        for line in lines.take_while(|l| !l.is_empty()) {
            let f: Vec<&str> = line.split('\t').collect();
            let get = |i: usize| f.get(i).copied().unwrap_or("");
            let verb = get(cmd).to_ascii_uppercase();
            if !verb.is_empty() {
                client = Some(format!("{}:{}", get(src), get(sport)));
                server = Some(format!("{}:{}", get(dst), get(dport)));
            }
            let path = || {
                let p = get(param);
                let p = p.split_once(':').map_or(p, |(_, a)| a);
                p.trim()
                    .trim_start_matches('<')
                    .trim_end_matches('>')
                    .to_owned()
            };
            match verb.as_str() {
                "HELO" | "EHLO" => helo = Some(get(param).to_owned()),
                "MAIL" => mail_from = Some(path()),
                "RCPT" => rcpt.push(path()),
                _ => {}
            }
            if get(code) == "250" {
                if let Some((_, id)) = get(text_col).split_once("queued as ") {
                    queue_id = Some(id.trim().to_owned());
                }
            }
        }
        Ok(Self {
            client: client.context("no client command")?,
            server: server.context("no client command")?,
            helo: helo.context("no HELO/EHLO")?,
            mail_from: mail_from.context("no MAIL FROM")?,
            rcpt,
            queue_id: queue_id.context("no `queued as` reply")?,
        })
    }
}

/// The replay's session record has tshark's fields, exactly.
fn check_replay(where_: &str, replay: &str, want: &Expected) -> Result<()> {
    let mut sessions = Vec::new();
    for line in replay.lines() {
        let v: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("{where_}: replay --json wrote a non-JSON line {line:?}"))?;
        if v["type"] == "session" {
            sessions.push(v);
        }
    }
    ensure!(
        sessions.len() == 1,
        "{where_}: {} session records, not 1",
        sessions.len()
    );
    let s = &sessions[0];
    let tx = &s["transactions"][0];
    let rcpt: Vec<&str> = tx["rcpt"]
        .as_array()
        .map(|a| a.iter().filter_map(|r| r["addr"].as_str()).collect())
        .unwrap_or_default();
    let got = [
        ("proto", s["proto"].as_str()),
        ("client", s["client"].as_str()),
        ("server", s["server"].as_str()),
        ("helo", s["helo"].as_str()),
        ("close", s["close"].as_str()),
        ("mail_from", tx["mail_from"].as_str()),
        ("queue_id", tx["queue_id"].as_str()),
    ];
    let wanted = [
        Some("smtp"),
        Some(want.client.as_str()),
        Some(want.server.as_str()),
        Some(want.helo.as_str()),
        Some("fin"),
        Some(want.mail_from.as_str()),
        Some(want.queue_id.as_str()),
    ];
    for ((field, got), wanted) in got.iter().zip(wanted) {
        ensure!(
            *got == wanted,
            "{where_}: session {field} is {got:?}, tshark says {wanted:?}"
        );
    }
    ensure!(
        rcpt == want.rcpt,
        "{where_}: rcpt {rcpt:?}, tshark says {:?}",
        want.rcpt
    );
    ensure!(
        s["transactions"].as_array().map(Vec::len) == Some(1) && s["partial"] == false,
        "{where_}: not one whole transaction: {s}"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn elf(machine: u16, phdrs: &[u32]) -> Vec<u8> {
        let mut b = vec![0u8; 64 + 56 * phdrs.len()];
        b[..6].copy_from_slice(b"\x7fELF\x02\x01");
        b[18..20].copy_from_slice(&machine.to_le_bytes());
        b[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        b[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        b[0x38..0x3a].copy_from_slice(&(phdrs.len() as u16).to_le_bytes());
        for (i, t) in phdrs.iter().enumerate() {
            b[64 + 56 * i..68 + 56 * i].copy_from_slice(&t.to_le_bytes());
        }
        b
    }

    #[test]
    fn static_binary_with_two_embedded_objects() {
        let mut bin = elf(EM_X86_64, &[1, 2, 6]);
        bin.extend(elf(EM_BPF, &[]));
        bin.extend(b"padding");
        bin.extend(elf(EM_BPF, &[]));
        // an x86 ELF inside is not an eBPF object
        bin.extend(elf(EM_X86_64, &[]));
        assert_eq!(
            elf_facts(&bin).unwrap(),
            ElfFacts {
                interp: false,
                bpf_objects: 2
            }
        );
    }

    #[test]
    fn dynamic_binary_has_an_interpreter() {
        let bin = elf(EM_X86_64, &[6, PT_INTERP, 1]);
        assert_eq!(
            elf_facts(&bin).unwrap(),
            ElfFacts {
                interp: true,
                bpf_objects: 0
            }
        );
        assert!(elf_facts(&elf(EM_BPF, &[])).is_err());
        assert!(elf_facts(b"#!/bin/sh\n").is_err());
        // program headers past the end: an error, not a panic
        let mut cut = elf(EM_X86_64, &[1, 1]);
        cut.truncate(80);
        assert!(elf_facts(&cut).is_err());
    }

    #[test]
    fn system_user_from_id_and_passwd() {
        let u = SystemUser::parse(
            "uid=100(mail-trace) gid=101(mail-trace) groups=101(mail-trace)\n",
            "mail-trace:x:100:101::/nonexistent:/usr/sbin/nologin\n",
        )
        .unwrap();
        assert_eq!(
            u,
            SystemUser {
                uid: 100,
                gid: 101,
                home: "/nonexistent".into(),
                shell: "/usr/sbin/nologin".into()
            }
        );
        // a login user, a shell, another group: each refused
        assert!(SystemUser::parse(
            "uid=1000(mail-trace) gid=1000(mail-trace) groups=1000(mail-trace)",
            "mail-trace:x:1000:1000::/nonexistent:/usr/sbin/nologin",
        )
        .is_err());
        assert!(SystemUser::parse(
            "uid=100(mail-trace) gid=101(mail-trace) groups=101(mail-trace)",
            "mail-trace:x:100:101::/nonexistent:/bin/bash",
        )
        .is_err());
        assert!(SystemUser::parse(
            "uid=100(mail-trace) gid=101(mail-trace) groups=101(mail-trace),27(sudo)",
            "mail-trace:x:100:101::/nonexistent:/usr/sbin/nologin",
        )
        .is_err());
        assert!(SystemUser::parse("id: 'mail-trace': no such user", "").is_err());
    }

    const TSHARK: &str = "== tshark -Y 'smtp || imap || pop' -T fields\n\
frame.number\tframe.time_epoch\ttcp.stream\tip.src\tipv6.src\ttcp.srcport\tip.dst\tipv6.dst\ttcp.dstport\tsmtp.req.command\tsmtp.req.parameter\tsmtp.response.code\tsmtp.rsp.parameter\n\
4\t1.0\t0\t172.22.0.3\t\t25\t172.22.0.1\t\t41656\t\t\t220\tmail.example.com ESMTP Postfix\n\
6\t1.1\t0\t172.22.0.1\t\t41656\t172.22.0.3\t\t25\thelo\tclient.example.com\t\t\n\
10\t1.2\t0\t172.22.0.1\t\t41656\t172.22.0.3\t\t25\tmail\tfrom:<alice@example.com>\t\t\n\
12\t1.3\t0\t172.22.0.1\t\t41656\t172.22.0.3\t\t25\trcpt\tto:<bob@example.com>\t\t\n\
18\t1.4\t0\t172.22.0.3\t\t25\t172.22.0.1\t\t41656\t\t\t250\t2.0.0 Ok: queued as EBBB147EEBBB\n\
\n\
== tshark -Y imf -T fields\n";

    #[test]
    fn expected_fields_from_tshark() {
        assert_eq!(
            Expected::parse(TSHARK).unwrap(),
            Expected {
                client: "172.22.0.1:41656".into(),
                server: "172.22.0.3:25".into(),
                helo: "client.example.com".into(),
                mail_from: "alice@example.com".into(),
                rcpt: vec!["bob@example.com".into()],
                queue_id: "EBBB147EEBBB".into(),
            }
        );
        assert!(Expected::parse("no table").is_err());
    }

    #[test]
    fn replay_record_against_tshark() {
        let want = Expected::parse(TSHARK).unwrap();
        let record = r#"{"type":"run","version":"0.1.0"}
{"type":"session","proto":"smtp","client":"172.22.0.1:41656","server":"172.22.0.3:25","partial":false,"close":"fin","helo":"client.example.com","transactions":[{"mail_from":"alice@example.com","rcpt":[{"addr":"bob@example.com"}],"queue_id":"EBBB147EEBBB"}]}"#;
        check_replay("test", record, &want).unwrap();
        let wrong = record.replace("EBBB147EEBBB", "EBBB147EEBBC");
        assert!(check_replay("test", &wrong, &want).is_err());
        let two = format!("{record}\n{}", record.lines().nth(1).unwrap());
        assert!(check_replay("test", &two, &want).is_err());
    }
}
