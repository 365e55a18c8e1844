//! tshark as the reference: a live capture on an interface, and per-connection, per-direction
//! reassembled TCP payload read back from a pcapng with `follow,tcp,raw` (tshark's own reassembly).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use super::{run_ok, signal, wait_child};

const READ_TIMEOUT: Duration = Duration::from_secs(120);

/// A running `tshark -w`; stopped with SIGINT by [`Capture::stop`] or on drop.
pub struct Capture {
    child: Option<Child>,
    file: PathBuf,
    stderr: mpsc::Receiver<String>,
}

impl Capture {
    /// Starts capturing TCP on `iface` into `file`; returns once tshark says it is capturing.
    pub fn start(iface: &str, file: &Path) -> Capture {
        let mut child = Command::new("tshark")
            .args(["-q", "-i", iface, "-f", "tcp", "-w"])
            .arg(file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start tshark: {e}"));
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().expect("tshark stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut seen = Vec::new();
        let deadline = std::time::Instant::now() + super::patience(Duration::from_secs(20));
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.contains("Capturing on") => break,
                Ok(line) => seen.push(line),
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "tshark on {iface} did not report \"Capturing on\" within {:?}: {}",
                        super::patience(Duration::from_secs(20)),
                        seen.join(" | ")
                    );
                }
            }
        }
        // dumpcap prints the line just before its capture loop takes the first packet.
        std::thread::sleep(Duration::from_millis(300));
        Capture {
            child: Some(child),
            file: file.to_path_buf(),
            stderr: rx,
        }
    }

    /// Stops the capture (SIGINT, so the file is complete) and returns the file.
    pub fn stop(mut self) -> PathBuf {
        // Let the last ACK/FIN of the session reach the capture.
        std::thread::sleep(Duration::from_millis(300));
        self.interrupt();
        self.file.clone()
    }

    fn interrupt(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(child.id(), libc::SIGINT);
            let status = wait_child(&mut child, Duration::from_secs(20));
            if !std::thread::panicking() {
                let said: Vec<String> = self.stderr.try_iter().collect();
                assert!(
                    status.is_some(),
                    "tshark did not exit within 20 s of SIGINT: {}",
                    said.join(" | ")
                );
            }
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.interrupt();
    }
}

/// One TCP connection as tshark reassembled it: the endpoint that sent the first packet is the
/// client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stream {
    pub index: u32,
    pub client: SocketAddr,
    pub server: SocketAddr,
    pub client_bytes: Vec<u8>,
    pub server_bytes: Vec<u8>,
}

/// `tshark -r FILE -T fields -e F…`: one row per packet, the fields in the order asked for
/// (empty where a packet has none).
pub fn fields(file: &Path, names: &[&str]) -> Vec<Vec<String>> {
    let mut cmd = Command::new("tshark");
    cmd.arg("-r").arg(file).args(["-T", "fields"]);
    for n in names {
        cmd.args(["-e", n]);
    }
    let out = run_ok(&mut cmd, READ_TIMEOUT, "tshark -T fields");
    out.stdout
        .lines()
        .map(|l| l.split('\t').map(|f| f.trim().to_string()).collect())
        .collect()
}

/// Every TCP connection in `file`, in tshark's stream order.
pub fn streams(file: &Path) -> Vec<Stream> {
    let mut idx: Vec<u32> = fields(file, &["tcp.stream"])
        .iter()
        .filter_map(|row| row.first()?.parse().ok())
        .collect();
    idx.sort_unstable();
    idx.dedup();
    idx.into_iter().map(|i| follow(file, i)).collect()
}

/// `tshark -z follow,tcp,raw,N`: node 0 lines are unindented hex, node 1 lines start with a tab.
pub fn follow(file: &Path, index: u32) -> Stream {
    let out = run_ok(
        Command::new("tshark").arg("-r").arg(file).args([
            "-q",
            "-z",
            &format!("follow,tcp,raw,{index}"),
        ]),
        READ_TIMEOUT,
        "tshark follow",
    );
    parse_follow(index, &out.stdout)
        .unwrap_or_else(|| panic!("cannot parse tshark follow output of stream {index}"))
}

fn parse_follow(index: u32, text: &str) -> Option<Stream> {
    let mut nodes: Vec<SocketAddr> = Vec::new();
    let (mut c, mut s) = (Vec::new(), Vec::new());
    let mut in_body = false;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("Node ") {
            let (_, addr) = rest.split_once(": ")?;
            nodes.push(parse_endpoint(addr.trim())?);
            in_body = nodes.len() == 2;
            continue;
        }
        if !in_body || line.starts_with("====") || line.is_empty() {
            continue;
        }
        let (target, hex) = match line.strip_prefix('\t') {
            Some(h) => (&mut s, h),
            None => (&mut c, line),
        };
        target.extend(decode_hex(hex.trim())?);
    }
    (nodes.len() == 2).then(|| Stream {
        index,
        client: nodes[0],
        server: nodes[1],
        client_bytes: c,
        server_bytes: s,
    })
}

/// tshark writes `10.99.1.1:25` and `[fd99::1:1]:25` (older ones `fd99::1:1:25`).
fn parse_endpoint(s: &str) -> Option<SocketAddr> {
    if let Ok(a) = s.parse() {
        return Some(a);
    }
    let (ip, port) = s.rsplit_once(':')?;
    Some(SocketAddr::new(
        ip.trim_matches(['[', ']']).parse().ok()?,
        port.parse().ok()?,
    ))
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Writes the packets of `file` that match display filter `filter` to `out`.
pub fn filter(file: &Path, filter: &str, out: &Path) {
    run_ok(
        Command::new("tshark")
            .arg("-r")
            .arg(file)
            .args(["-Y", filter, "-w"])
            .arg(out),
        READ_TIMEOUT,
        "tshark filter",
    );
}
