//! Just enough of the kernel's BTF (/sys/kernel/btf/vmlinux) to find where
//! `struct sock` keeps a connection's addresses and ports.
//!
//! aya 0.14 has no CO-RE relocations for Rust eBPF programs, and aya-obj keeps
//! its BTF type details private, so the socket probe reads `struct sock` at
//! offsets taken here, at load time, from the running kernel's own type
//! information: a kernel built with other options (no IPv6, other field order)
//! still gets the right ones, or a clear error instead of wrong addresses.
use mail_trace_common::tls::SockOffsets;

/// Where the running kernel describes its types.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

const MAGIC: u16 = 0xeb9f;
const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;
/// Anonymous struct/union nesting followed at most (sock_common nests two deep).
const MAX_DEPTH: u32 = 4;

/// One type: kind, name, and for structs and unions their members.
#[derive(Debug)]
struct Type {
    kind: u32,
    name: u32,
    /// For modifiers and typedefs: the type they refer to.
    target: u32,
    bitfield_offsets: bool,
    /// (name, type, offset) of struct/union members.
    members: Vec<(u32, u32, u32)>,
}

/// Parsed BTF: the types (index = type id - 1) and the string section.
#[derive(Debug)]
pub struct Btf {
    types: Vec<Type>,
    strings: Vec<u8>,
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

impl Btf {
    /// Parses a BTF blob in host byte order; None when it is malformed.
    pub fn parse(b: &[u8]) -> Option<Btf> {
        if u16_at(b, 0)? != MAGIC {
            return None;
        }
        let hdr_len = u32_at(b, 4)? as usize;
        let (type_off, type_len) = (u32_at(b, 8)? as usize, u32_at(b, 12)? as usize);
        let (str_off, str_len) = (u32_at(b, 16)? as usize, u32_at(b, 20)? as usize);
        let tstart = hdr_len.checked_add(type_off)?;
        let tsec = b.get(tstart..tstart.checked_add(type_len)?)?;
        let sstart = hdr_len.checked_add(str_off)?;
        let strings = b.get(sstart..sstart.checked_add(str_len)?)?.to_vec();
        let mut types = Vec::new();
        let mut at = 0;
        while at < tsec.len() {
            let name = u32_at(tsec, at)?;
            let info = u32_at(tsec, at + 4)?;
            let target = u32_at(tsec, at + 8)?;
            at += 12;
            let kind = (info >> 24) & 0x1f;
            let vlen = (info & 0xffff) as usize;
            let mut members = Vec::new();
            let extra = match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION => {
                    for i in 0..vlen {
                        let m = at + i * 12;
                        members.push((
                            u32_at(tsec, m)?,
                            u32_at(tsec, m + 4)?,
                            u32_at(tsec, m + 8)?,
                        ));
                    }
                    12 * vlen
                }
                KIND_ENUM => {
                    // Enumerators as (name, 0, value): what `enum_has` asks about.
                    for i in 0..vlen {
                        let m = at + i * 8;
                        members.push((u32_at(tsec, m)?, 0, u32_at(tsec, m + 4)?));
                    }
                    8 * vlen
                }
                KIND_FUNC_PROTO => 8 * vlen,
                KIND_DATASEC | KIND_ENUM64 => 12 * vlen,
                0..=19 => 0,
                _ => return None,
            };
            at += extra;
            types.push(Type {
                kind,
                name,
                target,
                bitfield_offsets: info >> 31 != 0,
                members,
            });
        }
        Some(Btf { types, strings })
    }

    fn name(&self, off: u32) -> &[u8] {
        let rest = self.strings.get(off as usize..).unwrap_or_default();
        let end = rest.iter().position(|&c| c == 0).unwrap_or(rest.len());
        &rest[..end]
    }

    fn get(&self, id: u32) -> Option<&Type> {
        self.types.get((id as usize).checked_sub(1)?)
    }

    /// The id of the struct named `name`.
    fn struct_named(&self, name: &str) -> Option<u32> {
        let i = self.types.iter().position(|t| {
            t.kind == KIND_STRUCT && !t.members.is_empty() && self.name(t.name) == name.as_bytes()
        })?;
        u32::try_from(i + 1).ok()
    }

    /// Whether the enum `name` has the enumerator `member`: how the kernel says which
    /// helpers (`bpf_func_id`), map types and attach types it knows.
    pub fn enum_has(&self, name: &str, member: &str) -> bool {
        self.types.iter().any(|t| {
            t.kind == KIND_ENUM
                && self.name(t.name) == name.as_bytes()
                && t.members
                    .iter()
                    .any(|m| self.name(m.0) == member.as_bytes())
        })
    }

    /// Whether a typedef `name` exists: each raw tracepoint has one, `btf_trace_<event>`.
    pub fn has_typedef(&self, name: &str) -> bool {
        self.types
            .iter()
            .any(|t| t.kind == KIND_TYPEDEF && self.name(t.name) == name.as_bytes())
    }

    /// Through typedefs and qualifiers to the type itself.
    fn resolve(&self, mut id: u32) -> Option<&Type> {
        for _ in 0..16 {
            let t = self.get(id)?;
            match t.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = t.target
                }
                _ => return Some(t),
            }
        }
        None
    }

    /// Byte offset of member `field` in struct/union `ty`, looking into
    /// anonymous structs and unions (as C does).
    fn offset_in(&self, ty: &Type, field: &str, depth: u32) -> Option<u32> {
        if depth > MAX_DEPTH {
            return None;
        }
        for &(name, mty, off) in &ty.members {
            let bits = if ty.bitfield_offsets {
                off & 0xff_ffff
            } else {
                off
            };
            if name != 0 {
                if self.name(name) == field.as_bytes() {
                    return (bits % 8 == 0).then_some(bits / 8);
                }
                continue;
            }
            let Some(inner) = self.resolve(mty) else {
                continue;
            };
            if matches!(inner.kind, KIND_STRUCT | KIND_UNION) {
                if let Some(o) = self.offset_in(inner, field, depth + 1) {
                    return Some(bits / 8 + o);
                }
            }
        }
        None
    }

    /// Byte offset of `field` in `struct strukt`.
    pub fn offset(&self, strukt: &str, field: &str) -> Option<u32> {
        let t = self.get(self.struct_named(strukt)?)?;
        self.offset_in(t, field, 0)
    }
}

/// The `struct sock` offsets the socket probe needs, or what is missing.
pub fn sock_offsets(btf: &Btf) -> Result<SockOffsets, String> {
    // struct sock begins with its sock_common today; taken from BTF all the same.
    let base = btf
        .offset("sock", "__sk_common")
        .ok_or("no struct sock with __sk_common in the kernel BTF")?;
    let field = |name: &str| -> Result<u16, String> {
        let off = btf
            .offset("sock_common", name)
            .ok_or_else(|| format!("no sock_common.{name} in the kernel BTF"))?;
        u16::try_from(base + off).map_err(|_| format!("sock_common.{name} beyond 64 KiB"))
    };
    // A kernel without IPv6 has no v6 fields and no AF_INET6 sockets to read.
    let v6 = |name: &str| field(name).unwrap_or(0);
    Ok(SockOffsets {
        valid: 1,
        family: field("skc_family")?,
        daddr: field("skc_daddr")?,
        rcv_saddr: field("skc_rcv_saddr")?,
        dport: field("skc_dport")?,
        num: field("skc_num")?,
        v6_daddr: v6("skc_v6_daddr"),
        v6_rcv_saddr: v6("skc_v6_rcv_saddr"),
    })
}

/// The offsets of the running kernel.
pub fn kernel_sock_offsets() -> Result<SockOffsets, String> {
    let blob = std::fs::read(VMLINUX_BTF).map_err(|e| format!("{VMLINUX_BTF}: {e}"))?;
    let btf = Btf::parse(&blob).ok_or_else(|| format!("{VMLINUX_BTF}: not BTF"))?;
    sock_offsets(&btf)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (name, type, bit offset) of a struct or union member.
    type Member<'a> = (&'a str, u32, u32);

    /// A BTF blob from (kind, name, target, members) entries.
    fn blob(types: &[(u32, &str, u32, &[Member])]) -> Vec<u8> {
        let mut strings = vec![0u8];
        let mut name = |s: &str| -> u32 {
            if s.is_empty() {
                return 0;
            }
            let off = strings.len() as u32;
            strings.extend_from_slice(s.as_bytes());
            strings.push(0);
            off
        };
        let mut tsec = Vec::new();
        for &(kind, n, target, members) in types {
            let n = name(n);
            tsec.extend_from_slice(&n.to_ne_bytes());
            tsec.extend_from_slice(&((kind << 24) | members.len() as u32).to_ne_bytes());
            tsec.extend_from_slice(&target.to_ne_bytes());
            if kind == KIND_INT {
                tsec.extend_from_slice(&32u32.to_ne_bytes());
            }
            for &(m, ty, bits) in members {
                let m = name(m);
                // An enumerator is (name, value); `bits` carries the value.
                let words: &[u32] = if kind == KIND_ENUM {
                    &[m, bits]
                } else {
                    &[m, ty, bits]
                };
                for v in words {
                    tsec.extend_from_slice(&v.to_ne_bytes());
                }
            }
        }
        let mut b = Vec::new();
        b.extend_from_slice(&MAGIC.to_ne_bytes());
        b.extend_from_slice(&[1, 0]);
        for v in [
            24u32,
            0,
            tsec.len() as u32,
            tsec.len() as u32,
            strings.len() as u32,
        ] {
            b.extend_from_slice(&v.to_ne_bytes());
        }
        b.extend_from_slice(&tsec);
        b.extend_from_slice(&strings);
        b
    }

    #[test]
    fn finds_fields_inside_anonymous_unions_and_structs() {
        let b = blob(&[
            (KIND_INT, "int", 4, &[]),        // 1
            (KIND_TYPEDEF, "__be32", 1, &[]), // 2
            (
                KIND_STRUCT,
                "",
                8,
                &[("skc_daddr", 2, 0), ("skc_rcv_saddr", 2, 32)],
            ), // 3
            (KIND_UNION, "", 8, &[("skc_addrpair", 1, 0), ("", 3, 0)]), // 4
            (
                KIND_STRUCT,
                "",
                4,
                &[("skc_dport", 1, 0), ("skc_num", 1, 16)],
            ), // 5
            (KIND_UNION, "", 4, &[("skc_portpair", 1, 0), ("", 5, 0)]), // 6
            (KIND_CONST, "", 6, &[]),         // 7
            (
                KIND_STRUCT,
                "sock_common",
                136,
                &[
                    ("", 4, 0),
                    ("", 7, 96),
                    ("skc_family", 1, 128),
                    ("skc_v6_daddr", 1, 448),
                    ("skc_v6_rcv_saddr", 1, 576),
                ],
            ), // 8
            (KIND_STRUCT, "sock", 800, &[("__sk_common", 8, 0)]), // 9
        ]);
        let btf = Btf::parse(&b).unwrap();
        assert_eq!(
            sock_offsets(&btf).unwrap(),
            SockOffsets {
                valid: 1,
                family: 16,
                daddr: 0,
                rcv_saddr: 4,
                dport: 12,
                num: 14,
                v6_daddr: 56,
                v6_rcv_saddr: 72,
            }
        );
        assert_eq!(btf.offset("sock_common", "nope"), None);
        assert_eq!(btf.offset("nope", "skc_num"), None);
    }

    #[test]
    fn a_kernel_without_the_fields_is_an_error_not_a_guess() {
        let b = blob(&[
            (KIND_INT, "int", 4, &[]),
            (KIND_STRUCT, "sock_common", 4, &[("skc_family", 1, 0)]),
            (KIND_STRUCT, "sock", 4, &[("__sk_common", 2, 0)]),
        ]);
        let btf = Btf::parse(&b).unwrap();
        assert_eq!(
            sock_offsets(&btf).unwrap_err(),
            "no sock_common.skc_daddr in the kernel BTF"
        );
    }

    #[test]
    fn enumerators_and_tracepoint_typedefs_are_found_by_name() {
        let b = blob(&[
            (KIND_INT, "int", 4, &[]), // 1
            (
                KIND_ENUM,
                "bpf_func_id",
                4,
                &[("BPF_FUNC_unspec", 0, 0), ("BPF_FUNC_loop", 0, 181)],
            ), // 2
            (KIND_TYPEDEF, "btf_trace_sock_send_length", 1, &[]), // 3
            (KIND_STRUCT, "sock", 4, &[("BPF_FUNC_xdp_load_bytes", 1, 0)]), // 4
        ]);
        let btf = Btf::parse(&b).expect("parses");
        assert!(btf.enum_has("bpf_func_id", "BPF_FUNC_loop"));
        assert!(!btf.enum_has("bpf_func_id", "BPF_FUNC_xdp_load_bytes"));
        // A struct member of that name is not an enumerator.
        assert!(!btf.enum_has("sock", "BPF_FUNC_xdp_load_bytes"));
        assert!(!btf.enum_has("bpf_map_type", "BPF_FUNC_loop"));
        assert!(btf.has_typedef("btf_trace_sock_send_length"));
        assert!(!btf.has_typedef("btf_trace_sock_recv_length"));
    }

    #[test]
    fn malformed_blobs_are_refused() {
        assert!(Btf::parse(&[]).is_none());
        assert!(Btf::parse(&[0u8; 24]).is_none());
        let mut b = blob(&[(KIND_INT, "int", 4, &[])]);
        b.truncate(b.len() - 6); // the string section is cut
        assert!(Btf::parse(&b).is_none());
        let mut bad = blob(&[(KIND_INT, "int", 4, &[])]);
        bad[24 + 7] = 0x1f; // kind 31 does not exist
        assert!(Btf::parse(&bad).is_none());
    }

    /// The running kernel, where it exposes BTF (the CI machines do): the IPv4
    /// part of sock_common has had the same layout since Linux 2.6.
    #[test]
    fn the_running_kernel_has_the_known_ipv4_layout() {
        if !std::path::Path::new(VMLINUX_BTF).exists() {
            return;
        }
        let o = kernel_sock_offsets().unwrap();
        assert_eq!(
            (o.daddr, o.rcv_saddr, o.dport, o.num, o.family),
            (0, 4, 12, 14, 16)
        );
        assert!(
            o.v6_daddr >= 24 && o.v6_rcv_saddr == o.v6_daddr + 16,
            "{o:?}"
        );
    }
}
