//! The BPF filters on one clsact hook (ingress or egress) of an interface, as the
//! kernel lists them over rtnetlink: name, priority and handle of each.
//!
//! Netlink clsact filters outlive a `kill -9`. Each mail-trace attaches its own with
//! its PID as the filter handle, so a later run can tell which filters belong to a
//! dead instance (remove) and which to a live one (leave alone). aya can only remove
//! filters by name, all of them, so the listing is done here.
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// One BPF filter on a clsact hook.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BpfFilter {
    pub prio: u16,
    pub handle: u32,
    /// The name given at attach (aya gives the program's name).
    pub name: String,
}

const NLMSG_HDR: usize = 16;
const TCMSG: usize = 20;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const RTM_NEWTFILTER: u16 = 44;
const RTM_GETTFILTER: u16 = 46;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
const TCA_KIND: u16 = 1;
const TCA_OPTIONS: u16 = 2;
const TCA_BPF_NAME: u16 = 7;
/// The nested/byte-order flags of an attribute type.
const NLA_TYPE_MASK: u16 = 0x3fff;

/// The BPF filters on `parent` (a clsact hook, e.g. `TcAttachType::tc_parent`) of
/// interface `ifindex`.
pub fn bpf_filters(ifindex: u32, parent: u32) -> io::Result<Vec<BpfFilter>> {
    // SAFETY: plain socket(2); the result is checked before use.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a socket we just opened and own.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let req = dump_request(ifindex, parent);
    // SAFETY: req outlives the call; the kernel fills in the address (nl_pid 0).
    let sent = unsafe { libc::send(sock.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut found = Vec::new();
    // A dump message holds at most a page or so per filter; 64 KiB takes several.
    let mut buf = vec![0u8; 64 << 10];
    loop {
        // SAFETY: buf is writable for its length.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let n = n as usize;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "netlink closed",
            ));
        }
        if parse(&buf[..n], &mut found)? {
            return Ok(found);
        }
    }
}

fn dump_request(ifindex: u32, parent: u32) -> Vec<u8> {
    let len = (NLMSG_HDR + TCMSG) as u32;
    let mut m = Vec::with_capacity(len as usize);
    m.extend_from_slice(&len.to_ne_bytes());
    m.extend_from_slice(&RTM_GETTFILTER.to_ne_bytes());
    m.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    m.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    m.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's
    m.extend_from_slice(&[libc::AF_UNSPEC as u8, 0, 0, 0]);
    m.extend_from_slice(&ifindex.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes()); // handle: all
    m.extend_from_slice(&parent.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes()); // info: every priority and protocol
    m
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn malformed() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, "malformed netlink filter dump")
}

/// Reads one datagram of the dump into `found`; true at its end (NLMSG_DONE).
fn parse(buf: &[u8], found: &mut Vec<BpfFilter>) -> io::Result<bool> {
    let mut at = 0;
    while at + NLMSG_HDR <= buf.len() {
        let len = u32_at(buf, at).ok_or_else(malformed)? as usize;
        let kind = u16_at(buf, at + 4).ok_or_else(malformed)?;
        let msg = buf
            .get(at..at + len)
            .filter(|_| len >= NLMSG_HDR)
            .ok_or_else(malformed)?;
        match kind {
            NLMSG_DONE => return Ok(true),
            NLMSG_ERROR => {
                let errno = u32_at(msg, NLMSG_HDR).ok_or_else(malformed)? as i32;
                if errno != 0 {
                    return Err(io::Error::from_raw_os_error(-errno));
                }
            }
            RTM_NEWTFILTER => {
                if let Some(f) = filter(msg) {
                    found.push(f);
                }
            }
            _ => {}
        }
        at += (len + 3) & !3;
    }
    Ok(false)
}

/// A BPF filter message; None for the other kinds and for a priority's head entry
/// (handle 0, no options).
fn filter(msg: &[u8]) -> Option<BpfFilter> {
    let handle = u32_at(msg, NLMSG_HDR + 8)?;
    let info = u32_at(msg, NLMSG_HDR + 16)?;
    let mut kind_bpf = false;
    let mut name = None;
    for (t, v) in attrs(msg.get(NLMSG_HDR + TCMSG..)?) {
        match t {
            TCA_KIND => kind_bpf = v == b"bpf\0",
            TCA_OPTIONS => {
                name = attrs(v)
                    .find(|&(t, _)| t == TCA_BPF_NAME)
                    .and_then(|(_, n)| n.split(|&b| b == 0).next())
                    .map(|n| String::from_utf8_lossy(n).into_owned());
            }
            _ => {}
        }
    }
    (kind_bpf && handle != 0).then_some(BpfFilter {
        prio: (info >> 16) as u16,
        handle,
        name: name?,
    })
}

/// The `(type, value)` attributes of a netlink attribute area, up to the first bad one.
fn attrs(mut b: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        let len = u16_at(b, 0)? as usize;
        let t = u16_at(b, 2)? & NLA_TYPE_MASK;
        let v = b.get(4..len.max(4))?;
        b = b.get(((len + 3) & !3).max(4)..).unwrap_or(&[]);
        Some((t, v))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(t: u16, v: &[u8]) -> Vec<u8> {
        let mut a = Vec::new();
        a.extend_from_slice(&((4 + v.len()) as u16).to_ne_bytes());
        a.extend_from_slice(&t.to_ne_bytes());
        a.extend_from_slice(v);
        while a.len() % 4 != 0 {
            a.push(0);
        }
        a
    }

    fn msg(kind: u16, handle: u32, info: u32, attrs: &[Vec<u8>]) -> Vec<u8> {
        let body: Vec<u8> = attrs.concat();
        let mut m = Vec::new();
        m.extend_from_slice(&((NLMSG_HDR + TCMSG + body.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&[0; 10]);
        m.extend_from_slice(&[0; 8]);
        m.extend_from_slice(&handle.to_ne_bytes());
        m.extend_from_slice(&0xffff_fff2u32.to_ne_bytes());
        m.extend_from_slice(&info.to_ne_bytes());
        m.extend_from_slice(&body);
        m
    }

    fn bpf(handle: u32, prio: u16, name: &str) -> Vec<u8> {
        let opts = attr(TCA_BPF_NAME, format!("{name}\0").as_bytes());
        msg(
            RTM_NEWTFILTER,
            handle,
            (u32::from(prio) << 16) | 3,
            &[attr(TCA_KIND, b"bpf\0"), attr(TCA_OPTIONS | 0x8000, &opts)],
        )
    }

    #[test]
    fn dump_lists_bpf_filters_with_name_priority_and_handle() {
        let head = msg(RTM_NEWTFILTER, 0, 49152 << 16, &[attr(TCA_KIND, b"bpf\0")]);
        let other = msg(
            RTM_NEWTFILTER,
            5,
            49151 << 16,
            &[attr(TCA_KIND, b"u32\0"), attr(TCA_OPTIONS, &[])],
        );
        let dgram = [
            head,
            bpf(4242, 49152, "mail_trace_in"),
            other,
            bpf(7, 49150, "x"),
        ]
        .concat();
        let mut found = Vec::new();
        assert!(!parse(&dgram, &mut found).unwrap(), "no NLMSG_DONE yet");
        assert_eq!(
            found,
            vec![
                BpfFilter {
                    prio: 49152,
                    handle: 4242,
                    name: "mail_trace_in".into()
                },
                BpfFilter {
                    prio: 49150,
                    handle: 7,
                    name: "x".into()
                },
            ]
        );
        let done = msg(NLMSG_DONE, 0, 0, &[]);
        assert!(parse(&done, &mut found).unwrap());
        assert_eq!(found.len(), 2);
    }

    #[test]
    fn errors_and_truncation_are_errors_not_panics() {
        let mut err = msg(NLMSG_ERROR, 0, 0, &[]);
        err[NLMSG_HDR..NLMSG_HDR + 4].copy_from_slice(&(-libc::ENODEV).to_ne_bytes());
        let e = parse(&err, &mut Vec::new()).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENODEV));
        let whole = bpf(1, 1, "mail_trace_out");
        for cut in 0..whole.len() {
            let mut found = Vec::new();
            // A cut message is malformed or, under a header's length, ignored.
            match parse(&whole[..cut], &mut found) {
                Ok(done) => assert!(!done && found.is_empty(), "cut at {cut}"),
                Err(e) => assert_eq!(e.kind(), io::ErrorKind::InvalidData),
            }
        }
        let mut bad = whole.clone();
        bad[0..4].copy_from_slice(&3u32.to_ne_bytes()); // shorter than a header
        assert_eq!(
            parse(&bad, &mut Vec::new()).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
    }

    #[test]
    fn request_asks_for_a_dump_of_one_hook() {
        let r = dump_request(9, 0xffff_fff2);
        assert_eq!(r.len(), 36);
        assert_eq!(u32_at(&r, 0), Some(36));
        assert_eq!(u16_at(&r, 4), Some(RTM_GETTFILTER));
        assert_eq!(u16_at(&r, 6), Some(0x301));
        assert_eq!(u32_at(&r, NLMSG_HDR + 4), Some(9));
        assert_eq!(u32_at(&r, NLMSG_HDR + 12), Some(0xffff_fff2));
    }
}
