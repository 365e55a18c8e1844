//! `mail-trace capture`: raw mail packets as tcpdump-like lines and/or pcapng.
use std::{
    io::{BufWriter, Write},
    net::SocketAddr,
    path::PathBuf,
    time::Duration,
};

use anyhow::Context as _;
use mail_trace_common::Counters;
use tokio::signal::unix::{signal, SignalKind};

use crate::{
    capture::{
        ebpf::{Captured, EbpfCapture},
        uprobe::{ConnResolver, Plaintext},
        Direction, Frame,
    },
    output::{pcapng::IfaceStats, printable::Printable},
    wire::{self, Segment},
};

use super::live::{LiveArgs, TlsArgs};

#[derive(clap::Args, Clone, Debug)]
pub struct CaptureArgs {
    #[command(flatten)]
    pub live: LiveArgs,
    /// Write the packets to this pcapng file (then lines are printed only with -v).
    #[arg(short = 'w', long = "write", value_name = "FILE.pcapng")]
    pub write: Option<PathBuf>,
    /// Print a line per packet even when writing a file.
    #[arg(short = 'v', long = "print")]
    pub print: bool,
    #[command(flatten)]
    pub tls: TlsArgs,
    /// Stop after this many packets.
    #[arg(short = 'c', long = "count", value_name = "COUNT")]
    pub count: Option<u64>,
    /// Stop after this many seconds.
    #[arg(long, value_name = "SECS")]
    pub duration: Option<u64>,
}

pub async fn run(args: CaptureArgs) -> anyhow::Result<()> {
    let file = args.write.clone();
    match capture(args).await {
        // The reader of stdout went away (`| head`): stop as if interrupted.
        Err(e) if super::guard::is_broken_pipe(&e) => Ok(()),
        Err(e) => {
            // A full disk leaves half a block: cut back to what a reader can use.
            if let Some(p) = &file {
                let _ = super::guard::keep_whole_blocks(p);
            }
            Err(e)
        }
        Ok(()) => Ok(()),
    }
}

async fn capture(args: CaptureArgs) -> anyhow::Result<()> {
    let cfg = args.live.to_config();
    // Before anything is attached: a Ctrl-C during start-up is a clean exit, not the default
    // action that kills the process half set up.
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut cap = EbpfCapture::open(&cfg)?;
    crate::note!(
        "mail-trace: {}",
        cap.kernel().summary(cfg.force_netlink, cfg.xdp)
    );
    // The socket probes find each chunk's connection; kept for the capture's life.
    let mut _owners = None;
    let mut resolver = None;
    if args.tls.tls_plaintext {
        _owners = Some(cap.attach_sock_probes()?);
        let probed = cap.attach_tls(&args.tls.to_config())?;
        for why in &probed.refused {
            crate::note!("mail-trace: --tls-plaintext: not probing {why}");
        }
        crate::note!("mail-trace: TLS plaintext from {}", probed.libs.join(", "));
        resolver = Some(ConnResolver::new(args.tls.comm.clone(), cfg.ports.clone()));
    }
    // After the TLS probes too: attaching them needs the privileges.
    args.live.drop_privileges(&[])?;
    args.live.sandbox()?;
    // Created as the dropped user (cmd::outfile).
    let mut file = match &args.write {
        Some(p) => Some(BufWriter::new(
            super::outfile::create_private(p)
                .with_context(|| format!("creating {}", p.display()))?,
        )),
        None => None,
    };
    let names: Vec<String> = cap.interfaces().iter().map(|i| i.name.clone()).collect();
    let mut sink = file
        .take()
        .map(|f| crate::cmd::live::pcapng_for(&cap, cfg.snaplen, f))
        .transpose()?;
    let print = sink.is_none() || args.print;
    let mut delivered = vec![0u64; names.len()];
    let mut out = std::io::stdout().lock();
    let deadline = args
        .duration
        .map(|s| tokio::time::Instant::now() + Duration::from_secs(s));
    let gone = super::guard::interface_gone(
        cap.interfaces()
            .iter()
            .map(|i| (i.name.clone(), i.ifindex))
            .collect(),
    );
    tokio::pin!(gone);
    let mut seen = 0u64;
    let mut chunks = 0u64;
    let mut handle = |item: Captured| -> anyhow::Result<()> {
        match item {
            Captured::Frame(f) => {
                if let Some(s) = sink.as_mut() {
                    s.write(&f).context("writing pcapng")?;
                }
                if print {
                    writeln!(out, "{}", line(&f, &names[f.iface as usize])).context("stdout")?;
                }
                delivered[f.iface as usize] += 1;
            }
            // Plaintext never goes to the pcapng file: it holds no TLS records.
            Captured::Plaintext(p) => {
                let Some(r) = resolver.as_mut().filter(|r| r.wanted(&p)) else {
                    return Ok(());
                };
                let conn = p.conn.map(|c| (c.local, c.peer)).or_else(|| r.resolve(&p));
                if print {
                    writeln!(out, "{}", tls_line(&p, conn)).context("stdout")?;
                }
                chunks += 1;
            }
        }
        Ok(())
    };
    while args.count.is_none_or(|c| seen < c) {
        let item = tokio::select! {
            c = cap.next() => c?,
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = sleep_until(deadline) => break,
            why = &mut gone => anyhow::bail!(why),
        };
        // -c counts packets only.
        seen += u64::from(matches!(item, Captured::Frame(_)));
        handle(item)?;
    }
    // What the kernel wrote since the last poll is still in the ring: keep it.
    for item in cap.take_pending_all() {
        if args.count.is_some_and(|c| seen >= c) {
            break;
        }
        seen += u64::from(matches!(item, Captured::Frame(_)));
        handle(item)?;
    }
    let counters = cap.counters()?;
    let dropped = counters.lost_records + cap.incomplete();
    let other = cap.tls_counters().map_or(0, |t| t.not_mail);
    // Detach before writing the trailer: the kernel copies nothing more.
    drop(cap);
    if let Some(s) = sink {
        let stats: Vec<IfaceStats> = delivered
            .iter()
            .enumerate()
            // Kernel losses are not per interface: the first ISB carries them all.
            .map(|(i, &d)| IfaceStats {
                delivered: d,
                dropped: if i == 0 { dropped } else { 0 },
            })
            .collect();
        s.finish(now_ns(), &stats).context("writing pcapng")?;
    }
    let tls = if args.tls.tls_plaintext {
        format!(
            ", {chunks} TLS plaintext chunks, {other} TLS calls of no mail connection not copied"
        )
    } else {
        String::new()
    };
    crate::note!(
        "mail-trace: {}{tls}",
        summary(&counters, delivered.iter().sum())
    );
    Ok(())
}

pub async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// The exit summary: one line, kernel counters first.
pub fn summary(c: &Counters, delivered: u64) -> String {
    format!(
        "{} packets matched, {} records emitted ({} bytes), {} records lost ({} bytes), \
         {} truncated, {} unparseable, {} fragments skipped, {} packets delivered",
        c.matched,
        c.records,
        c.bytes,
        c.lost_records,
        c.lost_bytes,
        c.truncated,
        c.unparseable,
        c.fragments,
        delivered
    )
}

/// One tcpdump-like line: time (UTC), interface, direction, then the TCP summary.
pub fn line(f: &Frame, iface: &str) -> String {
    let dir = match f.dir {
        Direction::In => "In ",
        Direction::Out => "Out",
        Direction::Unknown => "?  ",
    };
    // Interface and process names are chosen by whoever created them: shown printable.
    let head = format!("{} {} {dir}", clock(f.ts), Printable(iface));
    match wire::decode(f) {
        Ok(Some(seg)) => format!("{head} {}", tcp_summary(&seg)),
        Ok(None) => format!("{head} {} bytes, not TCP", f.orig_len),
        Err(e) => format!("{head} {} bytes, {e}", f.orig_len),
    }
}

/// One line per TLS plaintext chunk: process, connection (source > destination
/// as the data flows) and length; never the bytes.
pub fn tls_line(p: &Plaintext, conn: Option<(SocketAddr, SocketAddr)>) -> String {
    let call = if p.from_peer { "SSL_read" } else { "SSL_write" };
    let head = format!("{} TLS {}[{}]", clock(p.ts), Printable(&p.comm), p.pid);
    let len = p.data.len();
    let Some((local, peer)) = conn else {
        return format!("{head} connection unknown: {call}, length {len}");
    };
    let (src, dst) = if p.from_peer {
        (peer, local)
    } else {
        (local, peer)
    };
    let ip = if src.is_ipv4() { "IP" } else { "IP6" };
    format!(
        "{head} {ip} {}.{} > {}.{}: {call}, length {len}",
        src.ip(),
        src.port(),
        dst.ip(),
        dst.port()
    )
}

fn clock(ts: u64) -> String {
    let secs = ts / 1_000_000_000;
    let day = secs % 86_400;
    format!(
        "{:02}:{:02}:{:02}.{:06}",
        day / 3600,
        day / 60 % 60,
        day % 60,
        ts % 1_000_000_000 / 1_000
    )
}

fn tcp_summary(s: &Segment<'_>) -> String {
    let ip = if s.src.is_ipv4() { "IP" } else { "IP6" };
    let mut flags = String::new();
    for (on, c) in [
        (s.flags.syn, 'S'),
        (s.flags.fin, 'F'),
        (s.flags.rst, 'R'),
        (s.flags.psh, 'P'),
    ] {
        if on {
            flags.push(c);
        }
    }
    if s.flags.ack {
        flags.push('.');
    }
    let len = s.payload.len() as u32 + s.missing;
    let seq = if len > 0 {
        format!("{}:{}", s.seq, s.seq.wrapping_add(len))
    } else {
        s.seq.to_string()
    };
    let ack = if s.flags.ack {
        format!(", ack {}", s.ack)
    } else {
        String::new()
    };
    format!(
        "{ip} {}.{} > {}.{}: Flags [{flags}], seq {seq}{ack}, length {len}",
        s.src.ip(),
        s.src.port(),
        s.dst.ip(),
        s.dst.port()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{capture::LinkType, wire::TcpFlags};

    #[test]
    fn tcp_summary_reads_like_tcpdump() {
        let seg = Segment {
            src: "10.99.0.1:45678".parse().unwrap(),
            dst: "10.99.0.2:25".parse().unwrap(),
            seq: 1000,
            ack: 2000,
            flags: TcpFlags {
                psh: true,
                ack: true,
                ..Default::default()
            },
            payload: b"EHLO x\r\n",
            missing: 2,
            suppressed: false,
            window: u16::MAX,
            wscale: None,
        };
        assert_eq!(
            tcp_summary(&seg),
            "IP 10.99.0.1.45678 > 10.99.0.2.25: Flags [P.], seq 1000:1010, ack 2000, length 10"
        );
        let syn = Segment {
            src: "[fd99::1]:587".parse().unwrap(),
            dst: "[fd99::2]:40000".parse().unwrap(),
            seq: u32::MAX,
            ack: 0,
            flags: TcpFlags {
                syn: true,
                ..Default::default()
            },
            payload: b"",
            missing: 0,
            suppressed: false,
            window: u16::MAX,
            wscale: None,
        };
        assert_eq!(
            tcp_summary(&syn),
            "IP6 fd99::1.587 > fd99::2.40000: Flags [S], seq 4294967295, length 0"
        );
    }

    #[test]
    fn tls_line_names_process_and_flow_never_the_bytes() {
        let mut p = Plaintext {
            ts: 1_795_906_900_123_456_789,
            pid: 1234,
            tid: 1234,
            comm: "smtpd".into(),
            ssl: 0x5555_0000,
            fd: Some(12),
            from_peer: true,
            conn: None,
            data: b"AUTH PLAIN c2VjcmV0\r\n".to_vec(),
        };
        let conn = Some((
            "10.99.0.2:25".parse().unwrap(),
            "10.99.0.1:45678".parse().unwrap(),
        ));
        assert_eq!(
            tls_line(&p, conn),
            "23:01:40.123456 TLS smtpd[1234] IP 10.99.0.1.45678 > 10.99.0.2.25: SSL_read, length 21"
        );
        p.from_peer = false;
        assert_eq!(
            tls_line(&p, conn),
            "23:01:40.123456 TLS smtpd[1234] IP 10.99.0.2.25 > 10.99.0.1.45678: SSL_write, length 21"
        );
        let v6 = Some((
            "[fd99::2]:993".parse().unwrap(),
            "[fd99::1]:40000".parse().unwrap(),
        ));
        assert_eq!(
            tls_line(&p, v6),
            "23:01:40.123456 TLS smtpd[1234] IP6 fd99::2.993 > fd99::1.40000: SSL_write, length 21"
        );
        // Anyone can name a process: its comm is shown printable.
        p.comm = "sm\x1b]0;x\x07tpd".into();
        assert_eq!(
            tls_line(&p, None),
            "23:01:40.123456 TLS sm\\x1b]0;x\\x07tpd[1234] connection unknown: SSL_write, length 21"
        );
        p.comm = "smtpd".into();
        assert_eq!(
            tls_line(&p, None),
            "23:01:40.123456 TLS smtpd[1234] connection unknown: SSL_write, length 21"
        );
    }

    #[test]
    fn clock_is_utc_with_micros() {
        assert_eq!(clock(1_795_906_900_123_456_789), "23:01:40.123456");
        assert_eq!(clock(0), "00:00:00.000000");
    }

    #[test]
    fn summary_has_the_kernel_counters() {
        let c = Counters {
            seen: 10,
            matched: 4,
            records: 6,
            bytes: 3000,
            lost_records: 1,
            lost_bytes: 2048,
            truncated: 0,
            unparseable: 2,
            fragments: 3,
            ..Default::default()
        };
        assert_eq!(
            summary(&c, 3),
            "4 packets matched, 6 records emitted (3000 bytes), 1 records lost (2048 bytes), \
             0 truncated, 2 unparseable, 3 fragments skipped, 3 packets delivered"
        );
    }

    #[test]
    fn line_without_tcp_says_so() {
        let f = Frame {
            ts: 1_795_906_900_000_001_000,
            iface: 0,
            dir: Direction::Out,
            link: LinkType::Ethernet,
            orig_len: 42,
            data: vec![0; 42],
            suppressed: false,
        };
        // An all-zero Ethernet frame has EtherType 0: not IP, so not TCP.
        assert_eq!(
            line(&f, "mteb0"),
            "23:01:40.000001 mteb0 Out 42 bytes, not TCP"
        );
    }
}
