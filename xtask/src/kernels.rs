//! Debian kernels under qemu: fetch a release's kernel package (a private apt configuration, never
//! the machine's own sources), build an initramfs that loads the modules a guest needs, and boot the
//! kernel with a root file system shared read-only over 9p (a RAM overlay on top makes it writable
//! inside the guest) to run one script. `cargo xtask test-kernels` runs `tests/kernel.rs` inside a
//! guest of every kernel in [`MATRIX`]; [`boot`] is the reusable part (any kernel, any root fs dir).
//!
//! KVM is not usable on these machines (a guest aborts on an MSR), so guests run under TCG,
//! multi-threaded: about 10 s to boot.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// The Debian releases whose default kernel the matrix boots: 5.10, 6.1, 6.12.
pub const MATRIX: &[&str] = &["bullseye", "bookworm", "trixie"];

/// What the initramfs loads, in this order once dependencies are added: the guest's disk (9p over
/// virtio, an overlay for a writable root), then what the tests need before any modprobe could run
/// (veth for the test bed's namespaces; sch_ingress and cls_bpf for the netlink TC path of kernels
/// without TCX, which `Specified qdisc kind is unknown` otherwise). Built-in ones are skipped.
const MODULES: &[&str] = &[
    "virtio_pci",
    "9pnet_virtio",
    "9p",
    "overlay",
    "veth",
    "sch_ingress",
    "cls_bpf",
];

/// A kernel unpacked from its Debian package.
pub struct Kernel {
    /// `uname -r` of the kernel, e.g. `6.1.0-50-amd64`.
    pub version: String,
    pub vmlinuz: PathBuf,
    /// `lib/modules/<version>`, with `modules.dep` (depmod is run on it).
    pub modules: PathBuf,
}

/// What a guest did.
pub struct GuestRun {
    /// The script's exit status, as the guest reported it.
    pub status: i32,
    /// Everything written on the serial console.
    pub console: String,
    pub took: Duration,
}

/// apt with a configuration of its own under `dir`: sources, lists and cache.
fn apt(dir: &Path, tool: &str) -> Command {
    let mut cmd = Command::new(tool);
    cmd.arg("-o")
        .arg(format!(
            "Dir::Etc::sourcelist={}",
            dir.join("sources.list").display()
        ))
        .args(["-o", "Dir::Etc::sourceparts=-"])
        .arg("-o")
        .arg(format!("Dir::State::Lists={}", dir.join("lists").display()))
        .arg("-o")
        .arg(format!("Dir::Cache={}", dir.join("cache").display()))
        // Downloads land in a root-owned directory the _apt user cannot write.
        .args(["-o", "APT::Sandbox::User=root"]);
    cmd
}

fn run(what: &str, cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("{what}: cannot start {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The default kernel of Debian `release` (linux-image-amd64's dependency), downloaded and
/// unpacked under `cache` once; later runs use what is there.
pub fn fetch(cache: &Path, release: &str) -> Result<Kernel> {
    let dir = cache.join(release);
    let unpacked = dir.join("root");
    let done = dir.join("unpacked");
    if !done.exists() {
        crate::step(&format!("fetch the Debian {release} kernel"));
        let apt_dir = dir.join("apt");
        for d in ["lists/partial", "cache/archives/partial", "deb"] {
            fs::create_dir_all(apt_dir.join(d))?;
        }
        fs::write(
            apt_dir.join("sources.list"),
            format!("deb http://deb.debian.org/debian {release} main\n"),
        )?;
        run(
            &format!("apt-get update ({release})"),
            apt(&apt_dir, "apt-get").arg("update"),
        )?;
        let deps = run(
            &format!("apt-cache depends linux-image-amd64 ({release})"),
            apt(&apt_dir, "apt-cache").args(["depends", "linux-image-amd64"]),
        )?;
        let pkg = deps
            .lines()
            .find_map(|l| l.trim().strip_prefix("Depends: "))
            .filter(|p| p.starts_with("linux-image-"))
            .with_context(|| format!("no kernel package behind linux-image-amd64 in {release}"))?
            .to_string();
        run(
            &format!("apt-get download {pkg}"),
            apt(&apt_dir, "apt-get")
                .args(["download", &pkg])
                .current_dir(apt_dir.join("deb")),
        )?;
        let deb = fs::read_dir(apt_dir.join("deb"))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|x| x == "deb"))
            .context("apt-get download left no .deb")?;
        let _ = fs::remove_dir_all(&unpacked);
        fs::create_dir_all(&unpacked)?;
        run(
            "dpkg-deb -x",
            Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked),
        )?;
        // Merged-/usr releases (trixie) ship /usr/lib/modules: one place for all, so depmod
        // (-b looks in BASE/lib/modules) and the guest find them alike.
        let usr = unpacked.join("usr/lib/modules");
        if usr.exists() {
            fs::create_dir_all(unpacked.join("lib"))?;
            fs::rename(&usr, unpacked.join("lib/modules"))?;
        }
        let version = only_entry(&unpacked.join("lib/modules"))?;
        run(
            "depmod",
            Command::new("depmod")
                .arg("-b")
                .arg(&unpacked)
                .arg(&version),
        )?;
        fs::write(&done, &version)?;
    }
    let version = fs::read_to_string(&done)?.trim().to_string();
    Ok(Kernel {
        vmlinuz: unpacked.join(format!("boot/vmlinuz-{version}")),
        modules: unpacked.join("lib/modules").join(&version),
        version,
    })
}

fn only_entry(dir: &Path) -> Result<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .with_context(|| format!("read {}", dir.display()))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    if names.len() != 1 {
        bail!("expected one kernel in {}, found {names:?}", dir.display());
    }
    Ok(names.remove(0))
}

/// `MODULES` and what they depend on, dependencies first, as paths relative to the modules dir;
/// built-in modules (modules.builtin) are left out.
fn module_order(k: &Kernel) -> Result<Vec<String>> {
    let dep = fs::read_to_string(k.modules.join("modules.dep")).context("modules.dep")?;
    let builtin = fs::read_to_string(k.modules.join("modules.builtin")).unwrap_or_default();
    let stem = |p: &str| -> String {
        let f = p.rsplit('/').next().unwrap_or(p);
        f.split(".ko").next().unwrap_or(f).replace('-', "_")
    };
    let mut order: Vec<String> = Vec::new();
    for want in MODULES {
        if builtin.lines().any(|l| stem(l) == *want) {
            continue;
        }
        let line = dep
            .lines()
            .find(|l| l.split(':').next().is_some_and(|m| stem(m) == *want))
            .with_context(|| format!("module {want} not in {} modules.dep", k.version))?;
        let (module, deps) = line.split_once(':').unwrap_or((line, ""));
        // modules.dep lists a module's dependencies so that the last must load first.
        for m in deps.split_whitespace().rev().chain(std::iter::once(module)) {
            if !order.iter().any(|o| o == m) {
                order.push(m.to_string());
            }
        }
    }
    Ok(order)
}

/// The guest's /init: load the modules, mount the shared root read-only with a RAM overlay,
/// run the script named on the kernel command line (`mt.script=`) chrooted there, print its exit
/// status and power off.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /modules.order); do
    insmod "/modules/$m" || echo "mt-guest: insmod $m failed"
done
script=$(sed -n 's/.*mt\.script=\([^ ]*\).*/\1/p' /proc/cmdline)
mkdir -p /lower /rw /newroot
mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=512000 hostroot /lower || echo "mt-guest: 9p root not mounted"
mount -t tmpfs -o size=70% rw /rw
mkdir -p /rw/upper /rw/work
mount -t overlay overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work /newroot || echo "mt-guest: overlay not mounted"
mkdir -p /newroot/lib/modules
mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose modules /newroot/lib/modules
for d in proc sys dev tmp run; do mkdir -p /newroot/$d; done
mount -t proc proc /newroot/proc
mount -t sysfs sys /newroot/sys
mount -t devtmpfs dev /newroot/dev
mkdir -p /newroot/dev/pts /newroot/dev/shm
mount -t devpts devpts /newroot/dev/pts
mount -t tmpfs tmp /newroot/tmp
mount -t tmpfs run /newroot/run
mount -t bpf bpf /newroot/sys/fs/bpf
mount -t tracefs tracefs /newroot/sys/kernel/tracing 2>/dev/null
mount -t debugfs debugfs /newroot/sys/kernel/debug 2>/dev/null
hostname mt-guest
echo "mt-guest: running $script on $(uname -r)"
chroot /newroot /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TERM=dumb /bin/sh -c "ip link set lo up; exec /bin/sh $script"
echo "mt-guest-exit=$?"
poweroff -f
"#;

/// Builds `dir/initramfs.cpio` for `k`: busybox, the init above, the modules (decompressed: the
/// initramfs has no modprobe, and busybox's insmod reads plain ELF).
pub fn initramfs(k: &Kernel, dir: &Path) -> Result<PathBuf> {
    let tree = dir.join("initramfs");
    let _ = fs::remove_dir_all(&tree);
    for d in ["bin", "modules", "proc", "sys", "dev"] {
        fs::create_dir_all(tree.join(d))?;
    }
    let busybox = ["/usr/bin/busybox", "/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .context("busybox (busybox-static) is needed for the guests' initramfs")?;
    fs::copy(busybox, tree.join("bin/busybox"))?;
    let init = tree.join("init");
    fs::write(&init, INIT)?;
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&init, fs::Permissions::from_mode(0o755))?;
    let mut list = String::new();
    for m in module_order(k)? {
        let src = k.modules.join(&m);
        let name = m.rsplit('/').next().unwrap_or(&m);
        let plain = name
            .strip_suffix(".xz")
            .or_else(|| name.strip_suffix(".zst"))
            .unwrap_or(name)
            .to_string();
        let bytes = if name.ends_with(".xz") {
            decompress("xz", &src)?
        } else if name.ends_with(".zst") {
            decompress("zstd", &src)?
        } else {
            fs::read(&src)?
        };
        fs::write(tree.join("modules").join(&plain), bytes)?;
        list.push_str(&plain);
        list.push('\n');
    }
    fs::write(tree.join("modules.order"), list)?;
    let cpio = dir.join("initramfs.cpio");
    let files = run(
        "find (initramfs)",
        Command::new("find").arg(".").current_dir(&tree),
    )?;
    let mut child = Command::new("cpio")
        .args(["-o", "-H", "newc", "--quiet"])
        .current_dir(&tree)
        .stdin(Stdio::piped())
        .stdout(fs::File::create(&cpio)?)
        .spawn()
        .context("cannot start cpio")?;
    child
        .stdin
        .take()
        .context("cpio stdin")?
        .write_all(files.as_bytes())?;
    if !child.wait()?.success() {
        bail!("cpio failed building {}", cpio.display());
    }
    Ok(cpio)
}

fn decompress(tool: &str, file: &Path) -> Result<Vec<u8>> {
    let out = Command::new(tool)
        .arg("-dc")
        .arg(file)
        .output()
        .with_context(|| format!("cannot start {tool}"))?;
    if !out.status.success() {
        bail!("{tool} -dc {} failed", file.display());
    }
    Ok(out.stdout)
}

/// Boots `k` with `rootfs` as its (read-only, RAM-overlaid) root and runs `script` (a path inside
/// `rootfs`) with /bin/sh; `dir` holds the initramfs and the console logs. A guest that panics
/// before the script ends, or does not reach the script within [`BOOT_TIMEOUT`], is booted once
/// more, saying so: multi-threaded TCG rarely panics or stalls a kernel at boot, and one such
/// boot says nothing about mail-trace.
pub fn boot(
    k: &Kernel,
    rootfs: &Path,
    script: &Path,
    dir: &Path,
    timeout: Duration,
) -> Result<GuestRun> {
    fs::create_dir_all(dir)?;
    let initrd = initramfs(k, dir)?;
    for attempt in 1..=2 {
        let log = dir.join(format!("console-{attempt}.log"));
        let why = match outcome(boot_once(k, rootfs, script, &initrd, &log, timeout)?) {
            Ok(run) => return Ok(run),
            Err(why) => why,
        };
        if attempt == 2 {
            bail!(
                "{} guest failed to boot twice: {why}; consoles in {}",
                k.version,
                dir.display()
            );
        }
        println!(
            "xtask: retry: the {} guest {why} (console in {}); booting it once more",
            k.version,
            log.display()
        );
    }
    unreachable!("the second attempt returns or fails")
}

/// A boot's run when its outcome (pass or fail) is mail-trace's, else why it is worth one more
/// try.
fn outcome(boot: Boot) -> std::result::Result<GuestRun, String> {
    match boot {
        Boot::Ran(run) if run.console.contains("Kernel panic") => {
            Err(format!("panicked after {:.0} s", run.took.as_secs_f64()))
        }
        Boot::Ran(run) => Ok(run),
        Boot::Stalled => Err(format!(
            "had not started its script after {} s",
            BOOT_TIMEOUT.as_secs()
        )),
    }
}

/// Whether the guest's console shows the init starting the script (it prints this just before).
fn script_started(console: &[u8]) -> bool {
    const STARTED: &[u8] = b"mt-guest: running ";
    console.windows(STARTED.len()).any(|w| w == STARTED)
}

/// How long a guest may take to reach its script (about 10 s under TCG, a minute on a loaded
/// machine); past that it is taken for a stalled boot and booted again.
const BOOT_TIMEOUT: Duration = Duration::from_secs(150);

/// One boot: the script ran (or the kernel died while it ran), or the kernel never got there.
enum Boot {
    Ran(GuestRun),
    Stalled,
}

fn boot_once(
    k: &Kernel,
    rootfs: &Path,
    script: &Path,
    initrd: &Path,
    log: &Path,
    timeout: Duration,
) -> Result<Boot> {
    let start = Instant::now();
    let virtfs = |path: &Path, tag: &str| {
        format!(
            "local,path={},mount_tag={tag},security_model=none,readonly=on,multidevs=remap",
            path.display()
        )
    };
    let mut child = Command::new("qemu-system-x86_64")
        .args([
            "-machine",
            "q35",
            "-accel",
            "tcg,thread=multi",
            "-cpu",
            "max",
        ])
        .args(["-smp", "2", "-m", "2048"])
        .args(["-nographic", "-no-reboot", "-nic", "none"])
        .arg("-kernel")
        .arg(&k.vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .arg("-append")
        .arg(format!(
            "console=ttyS0 panic=-1 oops=panic quiet loglevel=4 mt.script={}",
            script.display()
        ))
        .arg("-virtfs")
        .arg(virtfs(rootfs, "hostroot"))
        .arg("-virtfs")
        .arg(virtfs(&k.modules, "modules"))
        .stdin(Stdio::null())
        .stdout(fs::File::create(log)?)
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start qemu-system-x86_64 (apt-get install qemu-system-x86)")?;
    let mut started = false;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if !started && start.elapsed() > BOOT_TIMEOUT {
            started = fs::read(log).is_ok_and(|c| script_started(&c));
            if !started {
                let _ = child.kill();
                let _ = child.wait();
                return Ok(Boot::Stalled);
            }
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "{} guest still running after {} s; console in {}",
                k.version,
                timeout.as_secs(),
                log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    let console = String::from_utf8_lossy(&fs::read(log)?).into_owned();
    let took = start.elapsed();
    if !status.success() {
        bail!("qemu exited {status}: {}", err.trim());
    }
    let exit = console
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("mt-guest-exit="))
        .and_then(|s| s.trim().parse().ok());
    Ok(Boot::Ran(GuestRun {
        // No exit line: the kernel died first (the caller retries a panic once).
        status: exit.unwrap_or(-1),
        console,
        took,
    }))
}

/// The host packages the guests need: qemu, busybox for the initramfs, kmod (depmod for the
/// unpacked kernels; modprobe inside the guests, which run the host's userland).
const HOST_PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "busybox-static",
    "kmod",
    "cpio",
    "xz-utils",
];

/// How long one guest may take, boot to power-off (50 to 95 s under TCG on two shared cores).
const GUEST_TIMEOUT: Duration = Duration::from_secs(600);

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::root_dir().join("target"))
}

/// `cargo xtask guest RELEASE SCRIPT [--root DIR]`.
pub fn guest(release: &str, root: &Path, script: &Path) -> Result<()> {
    if !crate::is_root() {
        bail!("booting a guest with the host's files shared needs root");
    }
    crate::apt_install(HOST_PACKAGES)?;
    let cache = target_dir().join("kernels");
    let k = fetch(&cache, release)?;
    let dir = cache.join(release).join("guest");
    let run = boot(&k, root, script, &dir, GUEST_TIMEOUT)?;
    print!("{}", run.console);
    println!(
        "xtask: {} ({}) exit {} in {:.1} s",
        release,
        k.version,
        run.status,
        run.took.as_secs_f64()
    );
    if run.status != 0 {
        std::process::exit(1);
    }
    Ok(())
}

/// Builds tests/kernel.rs, then runs it inside a guest of each kernel in `only` (default: the
/// whole [`MATRIX`]), one after the other (each guest uses both CPUs), and prints a summary.
pub fn test_kernels(only: &[String]) -> Result<()> {
    if !crate::is_root() {
        bail!("the kernel matrix boots guests that attach eBPF programs: run as root");
    }
    let releases: Vec<&str> = if only.is_empty() {
        MATRIX.to_vec()
    } else {
        only.iter().map(String::as_str).collect()
    };
    crate::debian_packages()?;
    crate::apt_install(HOST_PACKAGES)?;
    crate::prerequisites()?;
    let start = Instant::now();
    crate::step("cargo test -p mail-trace --test kernel --no-run");
    let out = crate::cargo()
        .args(["test", "-p", "mail-trace", "--test", "kernel", "--no-run"])
        .stderr(Stdio::piped())
        .output()
        .context("cannot start cargo")?;
    let text = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("step failed: build tests/kernel.rs: {text}");
    }
    // "  Executable ../tests/kernel.rs (target/debug/deps/kernel-…)"
    let bin = text
        .lines()
        .find_map(|l| {
            let l = l.trim().strip_prefix("Executable ")?;
            let (src, rest) = l.split_once(" (")?;
            src.ends_with("tests/kernel.rs")
                .then(|| rest.strip_suffix(')'))?
        })
        .context("cargo did not name the tests/kernel.rs executable")?;
    let bin = crate::root_dir().join(bin);
    let cache = target_dir().join("kernels");
    let mut results = Vec::new();
    for release in &releases {
        let k = fetch(&cache, release)?;
        let dir = cache.join(release).join("guest");
        fs::create_dir_all(&dir)?;
        let script = dir.join("run.sh");
        // The guest runs the host's files: the same binaries, test bed and tools. Its tests
        // are told which kernel it is, so they assert what that kernel must offer.
        fs::write(
            &script,
            format!(
                "cd {}\nMT_GUEST_KERNEL={} exec {} --test-threads=1\n",
                crate::root_dir().join("mail-trace").display(),
                release,
                bin.display()
            ),
        )?;
        crate::step(&format!("{release}: boot {} under qemu (TCG)", k.version));
        let run = boot(&k, Path::new("/"), &script, &dir, GUEST_TIMEOUT)?;
        print!("{}", run.console);
        println!(
            "==> {release} ({}): exit {} in {:.1} s",
            k.version,
            run.status,
            run.took.as_secs_f64()
        );
        results.push((release.to_string(), k.version, run.status, run.took));
    }
    println!(
        "kernel matrix ({:.0} s in all):",
        start.elapsed().as_secs_f64()
    );
    for (release, version, status, took) in &results {
        let verdict = if *status == 0 { "ok" } else { "FAILED" };
        println!(
            "  {release:<9} {version:<24} {verdict:<6} {:>5.1} s",
            took.as_secs_f64()
        );
    }
    let failed: Vec<&str> = results
        .iter()
        .filter(|r| r.2 != 0)
        .map(|r| r.0.as_str())
        .collect();
    if !failed.is_empty() {
        bail!("step failed: kernel matrix: {}", failed.join(", "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ran(console: &str, status: i32) -> Boot {
        Boot::Ran(GuestRun {
            status,
            console: console.to_string(),
            took: Duration::from_secs(42),
        })
    }

    #[test]
    fn only_a_panic_or_a_stalled_boot_is_booted_again() {
        let retry = |b: Boot| outcome(b).err();
        assert_eq!(
            retry(ran(
                "mt-guest: running x\nKernel panic - not syncing: Fatal exception",
                -1
            )),
            Some("panicked after 42 s".to_string())
        );
        assert_eq!(
            retry(Boot::Stalled),
            Some("had not started its script after 150 s".to_string())
        );
        // A failing test is mail-trace's failure, never retried.
        let failed = outcome(ran("mt-guest: running x\nmt-guest-exit=101\n", 101));
        assert_eq!(failed.map(|r| r.status), Ok(101));
    }

    #[test]
    fn the_script_counts_as_started_once_the_init_says_so() {
        assert!(script_started(
            b"SeaBIOS\r\nmt-guest: running /x/run.sh on 5.10.0-32-amd64\r\n"
        ));
        assert!(!script_started(b"SeaBIOS\r\nBooting from ROM..\r\n"));
        assert!(!script_started(b""));
    }
}
