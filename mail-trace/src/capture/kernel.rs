//! What the running kernel offers, probed once at start-up from its own BTF (the enums of BPF
//! helpers, map types and attach types, and a typedef per raw tracepoint name what it knows),
//! and the choices that follow: which of the two embedded eBPF objects to load and which
//! fallbacks apply. The start-up line and `mail-trace doctor` say the same thing from here.

use std::fmt::Write as _;
use std::path::Path;

use super::btf::{Btf, VMLINUX_BTF};

/// Which embedded eBPF object fits the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// `bpf_loop` callbacks for the chunk copy and the ClientHello walk (Linux >= 5.17).
    Main,
    /// Bounded loops instead (Linux 5.10 to 5.16). Its XDP program is never loaded: `--xdp`
    /// is refused below 5.18 ([`Features::xdp_refusal`]).
    Compat,
}

impl Variant {
    pub fn name(self) -> &'static str {
        match self {
            Variant::Main => "main",
            Variant::Compat => "compat",
        }
    }
}

/// Whether a netlink-attached TC program can get its clsact qdisc and cls_bpf classifier.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Module {
    /// Built in or loaded.
    Present,
    /// A module of the running kernel that is not loaded yet (the kernel, or mail-trace
    /// through modprobe, loads it on first use).
    Loadable,
    Missing,
}

/// The kernel features mail-trace uses, each `true` when the running kernel has it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Features {
    /// `uname -r`.
    pub release: String,
    /// /sys/kernel/btf/vmlinux parses (CONFIG_DEBUG_INFO_BTF, Linux 5.8+ in practice).
    pub btf: bool,
    /// BPF_MAP_TYPE_RINGBUF (5.8).
    pub ringbuf: bool,
    /// The bpf_loop helper (5.17).
    pub bpf_loop: bool,
    /// The bpf_xdp_load_bytes helper (5.18).
    pub xdp_load_bytes: bool,
    /// TCX attachment (BPF_TCX_INGRESS, 6.6): links that vanish with the process.
    pub tcx: bool,
    /// The raw tracepoints sock_send_length and sock_recv_length (6.4).
    pub sock_tracepoints: bool,
    /// Uprobes (CONFIG_UPROBE_EVENTS): `--tls-plaintext`.
    pub uprobes: bool,
    /// Multi-uprobe links (BPF_TRACE_UPROBE_MULTI, 6.6); not needed: one link per symbol.
    pub uprobe_multi: bool,
    /// The clsact qdisc (sch_ingress) and cls_bpf, for the netlink TC path.
    pub sch_ingress: Module,
    pub cls_bpf: Module,
}

impl Features {
    /// Probes the running kernel.
    pub fn probe() -> Features {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        let btf = std::fs::read(VMLINUX_BTF).ok().and_then(|b| Btf::parse(&b));
        let modules = Path::new("/lib/modules").join(&release);
        Features::from_btf(btf.as_ref(), release.clone(), |m| module_state(&modules, m))
            .with_uprobes(Path::new("/sys/bus/event_source/devices/uprobe").exists())
    }

    /// The features that `btf` (the kernel's, if it has any) shows; `module` says where a
    /// kernel module stands.
    pub fn from_btf(btf: Option<&Btf>, release: String, module: impl Fn(&str) -> Module) -> Self {
        let e = |en: &str, m: &str| btf.is_some_and(|b| b.enum_has(en, m));
        Features {
            release,
            btf: btf.is_some(),
            ringbuf: e("bpf_map_type", "BPF_MAP_TYPE_RINGBUF"),
            bpf_loop: e("bpf_func_id", "BPF_FUNC_loop"),
            xdp_load_bytes: e("bpf_func_id", "BPF_FUNC_xdp_load_bytes"),
            tcx: e("bpf_attach_type", "BPF_TCX_INGRESS"),
            sock_tracepoints: btf.is_some_and(|b| {
                b.has_typedef("btf_trace_sock_send_length")
                    && b.has_typedef("btf_trace_sock_recv_length")
            }),
            uprobes: false,
            uprobe_multi: e("bpf_attach_type", "BPF_TRACE_UPROBE_MULTI"),
            sch_ingress: module("sch_ingress"),
            cls_bpf: module("cls_bpf"),
        }
    }

    fn with_uprobes(mut self, uprobes: bool) -> Self {
        self.uprobes = uprobes;
        self
    }

    /// What the kernel lacks that mail-trace cannot do without, as one line; None when it
    /// can run.
    pub fn missing(&self) -> Option<String> {
        let mut lacks = Vec::new();
        if !self.btf {
            lacks.push(format!("BTF ({VMLINUX_BTF}, CONFIG_DEBUG_INFO_BTF)"));
        }
        if self.btf && !self.ringbuf {
            lacks.push("the BPF ring buffer (BPF_MAP_TYPE_RINGBUF, Linux 5.8)".to_string());
        }
        if lacks.is_empty() {
            return None;
        }
        Some(format!(
            "kernel {} lacks {}: mail-trace needs Linux 5.10 or later with BTF",
            self.release,
            lacks.join(" and ")
        ))
    }

    /// Why `--xdp` cannot run here, as the one line mail-trace exits with; None when it can.
    /// Without bpf_xdp_load_bytes (5.18) the XDP program has to read frames with
    /// bpf_probe_read_kernel in bounded loops, and the 5.10 verifier gives up on that program
    /// at its 1M-instruction limit after minutes of work: refusing up front says what is
    /// missing at once instead of after a long, failed load.
    pub fn xdp_refusal(&self) -> Option<String> {
        if self.xdp_load_bytes {
            return None;
        }
        let version = major_minor(&self.release)
            .map(|(major, minor)| format!("{major}.{minor}"))
            .unwrap_or_else(|| self.release.clone());
        Some(format!(
            "--xdp needs Linux >= 5.18 (bpf_xdp_load_bytes); this kernel is {version}: use the TC \
             path (drop --xdp)"
        ))
    }

    pub fn variant(&self) -> Variant {
        if self.bpf_loop {
            Variant::Main
        } else {
            Variant::Compat
        }
    }

    /// How TC programs attach (`force_netlink`: the hidden `--tc-netlink`).
    pub fn tc_path(&self, force_netlink: bool) -> &'static str {
        if self.tcx && !force_netlink {
            "TCX"
        } else {
            "netlink clsact"
        }
    }

    /// The start-up line's account of the kernel: the object loaded and every fallback taken,
    /// each with what is missing, e.g. `kernel 6.1.0-50-amd64: main eBPF object, netlink
    /// clsact TC (no TCX, Linux 6.6), process owners from /proc (no sock_send_length
    /// tracepoints, Linux 6.4)`.
    pub fn summary(&self, force_netlink: bool, xdp: bool) -> String {
        let mut s = format!(
            "kernel {}: {} eBPF object",
            self.release,
            self.variant().name()
        );
        if self.variant() == Variant::Compat {
            s.push_str(" (no bpf_loop, Linux 5.17: bounded loops)");
        }
        let _ = write!(s, ", {} TC", self.tc_path(force_netlink));
        if !self.tcx {
            s.push_str(" (no TCX, Linux 6.6)");
        } else if force_netlink {
            s.push_str(" (--tc-netlink)");
        }
        if xdp {
            s.push_str(", XDP ingress");
        }
        if !self.sock_tracepoints {
            s.push_str(", process owners from /proc (no sock_send_length tracepoints, Linux 6.4)");
        }
        s
    }

    /// `mail-trace --version --verbose`: what the kernel offers that decides what loads, one
    /// feature a line, then the eBPF object that would load (or what stops any from loading).
    pub fn version_lines(&self) -> Vec<String> {
        let yes = |b: bool| if b { "yes" } else { "no" };
        let object = match self.missing() {
            Some(lacks) => format!("none: {lacks}"),
            None if self.variant() == Variant::Main => "main (bpf_loop)".to_string(),
            None => "compat (bounded loops, no bpf_loop)".to_string(),
        };
        vec![
            format!("kernel: {}", self.release),
            format!("BTF: {}", yes(self.btf)),
            format!("bpf_loop (Linux 5.17): {}", yes(self.bpf_loop)),
            format!(
                "TCX (Linux 6.6): {}",
                if self.tcx {
                    "yes"
                } else {
                    "no: netlink clsact filters"
                }
            ),
            format!("ring buffer (Linux 5.8): {}", yes(self.ringbuf)),
            format!(
                "socket tracepoints (Linux 6.4): {}",
                if self.sock_tracepoints {
                    "yes"
                } else {
                    "no: process owners from /proc"
                }
            ),
            format!(
                "XDP (bpf_xdp_load_bytes, Linux 5.18): {}",
                if self.xdp_load_bytes {
                    "yes"
                } else {
                    "no: --xdp refused"
                }
            ),
            format!("eBPF object: {object}"),
        ]
    }

    /// `mail-trace doctor`'s kernel lines: each feature, whether it is there, what it is for
    /// and what happens without it.
    pub fn report(&self) -> Vec<(bool, String)> {
        let module = |m: Module, name: &str| match m {
            Module::Present => (true, format!("{name}: loaded")),
            Module::Loadable => (true, format!("{name}: a module, loaded on first use")),
            Module::Missing => (false, format!("{name}: missing")),
        };
        let (sch_ok, sch) = module(self.sch_ingress, "sch_ingress");
        let (cls_ok, cls) = module(self.cls_bpf, "cls_bpf");
        vec![
            (
                self.btf,
                format!(
                    "BTF ({VMLINUX_BTF}): {}",
                    if self.btf {
                        "yes"
                    } else {
                        "NO: nothing can load (CONFIG_DEBUG_INFO_BTF)"
                    }
                ),
            ),
            (
                self.ringbuf,
                format!(
                    "BPF ring buffer (5.8): {}",
                    yes_or(self.ringbuf, "NO: nothing can load")
                ),
            ),
            (
                true,
                format!(
                    "bpf_loop (5.17): {}",
                    if self.bpf_loop {
                        "yes: main eBPF object"
                    } else {
                        "no: compat eBPF object (bounded loops)"
                    }
                ),
            ),
            (
                true,
                format!(
                    "bpf_xdp_load_bytes (5.18): {}",
                    yes_or(self.xdp_load_bytes, "no: --xdp refused (TC only)")
                ),
            ),
            (
                self.tcx || (sch_ok && cls_ok),
                if self.tcx {
                    "TCX (6.6): yes: programs detach when mail-trace exits, even on kill -9"
                        .to_string()
                } else {
                    format!(
                        "TCX (6.6): no: netlink clsact filters ({sch}, {cls}); a kill -9 leaves them until the next run removes them"
                    )
                },
            ),
            (
                true,
                format!(
                    "socket tracepoints (6.4): {}",
                    yes_or(
                        self.sock_tracepoints,
                        "no: session processes from /proc (short-lived ones may go unnamed); --tls-plaintext unavailable"
                    )
                ),
            ),
            (
                true,
                format!(
                    "uprobes: {}",
                    yes_or(self.uprobes, "no: --tls-plaintext unavailable")
                ),
            ),
        ]
    }
}

fn yes_or(v: bool, no: &str) -> String {
    if v {
        "yes".to_string()
    } else {
        no.to_string()
    }
}

/// Where module `name` stands on this kernel: /sys/module lists the loaded and built-in ones,
/// `modules.dep` (or modules.builtin) under `modules` the installed ones.
fn module_state(modules: &Path, name: &str) -> Module {
    if Path::new("/sys/module").join(name).exists() {
        return Module::Present;
    }
    let listed = |file: &str| {
        std::fs::read_to_string(modules.join(file)).is_ok_and(|s| {
            s.lines().any(|l| {
                let path = l.split(':').next().unwrap_or(l);
                let base = path.rsplit('/').next().unwrap_or(path);
                base.split(".ko").next() == Some(name)
            })
        })
    };
    if listed("modules.builtin") {
        Module::Present
    } else if listed("modules.dep") {
        Module::Loadable
    } else {
        Module::Missing
    }
}

/// `major.minor` of a kernel release string such as `5.10.0-32-amd64`.
pub fn major_minor(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(['.', '-', '+']);
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// Whether every bpf() command, even on an fd already open, needs CAP_BPF: before Linux 6.5
/// when unprivileged BPF is disabled (`kernel.unprivileged_bpf_disabled`, 2 on Debian).
pub fn bpf_commands_need_cap() -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let disabled = std::fs::read_to_string("/proc/sys/kernel/unprivileged_bpf_disabled")
        .map(|s| s.trim() != "0")
        .unwrap_or(true);
    disabled && major_minor(release.trim()).is_some_and(|v| v < (6, 5))
}

/// Loads kernel modules with modprobe, found at its absolute path (a root process does not
/// take the program to run from $PATH). Returns what modprobe said when it failed.
pub fn modprobe(names: &[&str]) -> Result<(), String> {
    let bin = ["/usr/sbin/modprobe", "/sbin/modprobe"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .ok_or("no modprobe (/usr/sbin/modprobe, /sbin/modprobe)")?;
    let out = std::process::Command::new(bin)
        .args(names)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("{bin}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr)
            .trim()
            .replace('\n', " "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn features(bpf_loop: bool, tcx: bool, tps: bool) -> Features {
        Features {
            release: "5.10.0-32-amd64".into(),
            btf: true,
            ringbuf: true,
            bpf_loop,
            xdp_load_bytes: bpf_loop,
            tcx,
            sock_tracepoints: tps,
            uprobes: true,
            uprobe_multi: tcx,
            sch_ingress: Module::Loadable,
            cls_bpf: Module::Present,
        }
    }

    #[test]
    fn releases_are_read_as_major_minor() {
        assert_eq!(major_minor("5.10.0-32-amd64"), Some((5, 10)));
        assert_eq!(major_minor("6.12.117+deb13-amd64"), Some((6, 12)));
        assert_eq!(major_minor("6.18.44-fc-v1045"), Some((6, 18)));
        assert_eq!(major_minor("garbage"), None);
    }

    #[test]
    fn old_kernels_get_the_compat_object_and_every_fallback_named() {
        let f = features(false, false, false);
        assert_eq!(f.variant(), Variant::Compat);
        assert_eq!(f.missing(), None);
        assert_eq!(
            f.summary(false, false),
            "kernel 5.10.0-32-amd64: compat eBPF object (no bpf_loop, Linux 5.17: bounded loops), \
             netlink clsact TC (no TCX, Linux 6.6), process owners from /proc (no \
             sock_send_length tracepoints, Linux 6.4)"
        );
    }

    #[test]
    fn xdp_is_refused_without_bpf_xdp_load_bytes_naming_the_kernel() {
        let f = features(false, false, false);
        assert_eq!(
            f.xdp_refusal().as_deref(),
            Some(
                "--xdp needs Linux >= 5.18 (bpf_xdp_load_bytes); this kernel is 5.10: use the TC \
                 path (drop --xdp)"
            )
        );
        // 5.17 has bpf_loop (the main object) but not yet bpf_xdp_load_bytes.
        let mut f = features(true, false, false);
        f.xdp_load_bytes = false;
        f.release = "5.17.3".into();
        assert_eq!(f.variant(), Variant::Main);
        assert_eq!(
            f.xdp_refusal().as_deref(),
            Some(
                "--xdp needs Linux >= 5.18 (bpf_xdp_load_bytes); this kernel is 5.17: use the TC \
                 path (drop --xdp)"
            )
        );
        // A release that does not parse is named as it is.
        f.release = "custom".into();
        assert_eq!(
            f.xdp_refusal().as_deref(),
            Some(
                "--xdp needs Linux >= 5.18 (bpf_xdp_load_bytes); this kernel is custom: use the \
                 TC path (drop --xdp)"
            )
        );
        f.xdp_load_bytes = true;
        assert_eq!(f.xdp_refusal(), None);
    }

    #[test]
    fn new_kernels_take_the_main_object_and_no_fallback() {
        let mut f = features(true, true, true);
        f.release = "6.12.1".into();
        assert_eq!(f.variant(), Variant::Main);
        assert_eq!(
            f.summary(false, true),
            "kernel 6.12.1: main eBPF object, TCX TC, XDP ingress"
        );
        assert_eq!(f.xdp_refusal(), None);
        assert_eq!(
            f.summary(true, false),
            "kernel 6.12.1: main eBPF object, netlink clsact TC (--tc-netlink)"
        );
    }

    #[test]
    fn without_btf_or_a_ring_buffer_the_error_names_what_is_missing() {
        let mut f = Features::from_btf(None, "5.4.0".into(), |_| Module::Missing);
        assert_eq!(
            f.missing().as_deref(),
            Some(
                "kernel 5.4.0 lacks BTF (/sys/kernel/btf/vmlinux, CONFIG_DEBUG_INFO_BTF): \
                 mail-trace needs Linux 5.10 or later with BTF"
            )
        );
        f.btf = true;
        assert_eq!(
            f.missing().as_deref(),
            Some(
                "kernel 5.4.0 lacks the BPF ring buffer (BPF_MAP_TYPE_RINGBUF, Linux 5.8): \
                 mail-trace needs Linux 5.10 or later with BTF"
            )
        );
    }

    #[test]
    fn version_lines_name_each_feature_and_the_object() {
        assert_eq!(
            features(false, false, false).version_lines(),
            [
                "kernel: 5.10.0-32-amd64",
                "BTF: yes",
                "bpf_loop (Linux 5.17): no",
                "TCX (Linux 6.6): no: netlink clsact filters",
                "ring buffer (Linux 5.8): yes",
                "socket tracepoints (Linux 6.4): no: process owners from /proc",
                "XDP (bpf_xdp_load_bytes, Linux 5.18): no: --xdp refused",
                "eBPF object: compat (bounded loops, no bpf_loop)",
            ]
        );
        let mut f = features(true, true, true);
        f.release = "6.12.1".into();
        assert_eq!(
            f.version_lines(),
            [
                "kernel: 6.12.1",
                "BTF: yes",
                "bpf_loop (Linux 5.17): yes",
                "TCX (Linux 6.6): yes",
                "ring buffer (Linux 5.8): yes",
                "socket tracepoints (Linux 6.4): yes",
                "XDP (bpf_xdp_load_bytes, Linux 5.18): yes",
                "eBPF object: main (bpf_loop)",
            ]
        );
        let f = Features::from_btf(None, "5.4.0".into(), |_| Module::Missing);
        assert_eq!(
            f.version_lines().last().map(String::as_str),
            Some(
                "eBPF object: none: kernel 5.4.0 lacks BTF (/sys/kernel/btf/vmlinux, \
                 CONFIG_DEBUG_INFO_BTF): mail-trace needs Linux 5.10 or later with BTF"
            )
        );
    }

    /// The host kernel (6.18 on the test machines) has everything: its BTF must say so.
    #[test]
    fn the_running_kernel_is_probed_from_its_btf() {
        let f = Features::probe();
        assert!(f.btf && f.ringbuf, "{f:?}");
        let at_least =
            |maj: u32, min: u32| major_minor(&f.release).is_some_and(|v| v >= (maj, min));
        assert_eq!(f.bpf_loop, at_least(5, 17), "{f:?}");
        assert_eq!(f.xdp_load_bytes, at_least(5, 18), "{f:?}");
        assert_eq!(f.sock_tracepoints, at_least(6, 4), "{f:?}");
        assert_eq!(f.tcx, at_least(6, 6), "{f:?}");
    }
}
