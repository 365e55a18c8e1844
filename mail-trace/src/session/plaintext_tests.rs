//! The engine with TLS plaintext from the uprobes: a STARTTLS session read on
//! the wire up to the 220, then from plaintext chunks; process naming.
use etherparse::PacketBuilder;

use super::*;
use crate::capture::{Direction, LinkType};

const CLIENT: ([u8; 4], u16) = ([10, 99, 0, 1], 40000);
const SERVER: ([u8; 4], u16) = ([10, 99, 0, 2], 25);

#[derive(Default)]
struct Records(Vec<SessionRecord>, Vec<Option<Process>>);

impl Sink for Records {
    fn session_start(&mut self, _: &SessionInfo) {}
    fn event(&mut self, _: &SessionInfo, _: &Event) {}
    fn session_end(&mut self, info: &SessionInfo, record: &SessionRecord) {
        self.0.push(record.clone());
        self.1.push(info.process.clone());
    }
}

/// TCP state of the test connection: next sequence numbers of client and server.
struct Wire {
    seq: [u32; 2],
    ts: Ts,
}

impl Wire {
    fn send(
        &mut self,
        e: &mut Engine,
        sink: &mut Records,
        from_client: bool,
        flags: &str,
        data: &[u8],
    ) {
        let (src, dst, i) = if from_client {
            (CLIENT, SERVER, 0)
        } else {
            (SERVER, CLIENT, 1)
        };
        let mut b = PacketBuilder::ipv4(src.0, dst.0, 64).tcp(src.1, dst.1, self.seq[i], 8192);
        if flags.contains('S') {
            b = b.syn();
        }
        if flags.contains('F') {
            b = b.fin();
        }
        if !(flags.contains('S') && from_client) {
            b = b.ack(self.seq[1 - i]);
        }
        let mut out = Vec::new();
        b.write(&mut out, data).expect("build packet");
        let syn_fin = u32::from(flags.contains('S') || flags.contains('F'));
        self.seq[i] = self.seq[i].wrapping_add(data.len() as u32 + syn_fin);
        self.ts += 1_000;
        let frame = Frame {
            ts: self.ts,
            iface: 0,
            dir: Direction::Unknown,
            link: LinkType::RawIp,
            orig_len: out.len() as u32,
            data: out,
            suppressed: false,
        };
        e.frame(&frame, sink);
    }
}

fn addr(a: ([u8; 4], u16)) -> SocketAddr {
    SocketAddr::from((a.0, a.1))
}

fn daemon() -> Process {
    Process {
        pid: 4242,
        comm: "postfix/smtpd".into(),
    }
}

#[test]
fn starttls_session_continues_from_plaintext_and_names_its_process() {
    let mut e = Engine::new(EngineConfig::default());
    let mut sink = Records::default();
    let mut w = Wire {
        seq: [1000, 5000],
        ts: 0,
    };
    let (server, client) = (addr(SERVER), addr(CLIENT));
    w.send(&mut e, &mut sink, true, "S", b"");
    w.send(&mut e, &mut sink, false, "S", b"");
    w.send(&mut e, &mut sink, true, "", b"");
    // Plaintext before TLS started has no place in the session.
    assert!(!e.plaintext(1, server, client, true, b"EHLO early\r\n", w.ts, &mut sink));
    w.send(&mut e, &mut sink, false, "", b"220 mx ESMTP\r\n");
    w.send(&mut e, &mut sink, true, "", b"EHLO c.test\r\n");
    w.send(&mut e, &mut sink, false, "", b"250-mx\r\n250 STARTTLS\r\n");
    w.send(&mut e, &mut sink, true, "", b"STARTTLS\r\n");
    w.send(
        &mut e,
        &mut sink,
        false,
        "",
        b"220 2.0.0 Ready to start TLS\r\n",
    );
    // Encrypted bytes on the wire are only counted from now on.
    w.send(
        &mut e,
        &mut sink,
        true,
        "",
        &[0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5],
    );

    // The client end is not the session's process.
    e.process_seen(client, server, || unreachable!("client end"), &mut sink);
    let chunks: [(bool, &[u8]); 6] = [
        (true, b"EHLO c.test\r\n"),
        (false, b"250 mx\r\n"),
        (true, b"MAIL FROM:<a@c.test>\r\n"),
        (false, b"250 2.1.0 Ok\r\n"),
        (true, b"QUIT\r\n"),
        (false, b"221 2.0.0 Bye\r\n"),
    ];
    for (from_peer, data) in chunks {
        w.ts += 1_000;
        assert!(e.plaintext(7, server, client, from_peer, data, w.ts, &mut sink));
        e.process_seen(server, client, daemon, &mut sink);
    }
    // The other TLS endpoint of the same conversation (a local client) is not read twice.
    assert!(!e.plaintext(8, client, server, false, b"QUIT\r\n", w.ts, &mut sink));
    // Nor is a connection without a session.
    let other: SocketAddr = "10.99.0.9:25".parse().unwrap();
    assert!(!e.plaintext(7, other, client, true, b"QUIT\r\n", w.ts, &mut sink));

    w.send(&mut e, &mut sink, true, "F", b"");
    w.send(&mut e, &mut sink, false, "F", b"");
    e.finish(w.ts + 1, &mut sink);

    assert_eq!(sink.0.len(), 1);
    let r = sink.0[0].to_json();
    assert_eq!(r["tls"], true);
    assert_eq!(r["tls_mode"], "starttls");
    assert_eq!(r["plaintext_source"], "uprobe");
    assert_eq!(r["helo"], "c.test");
    assert_eq!(r["transactions"][0]["mail_from"], "a@c.test");
    assert_eq!(
        r["process"],
        serde_json::json!({"pid": 4242, "comm": "postfix/smtpd"})
    );
    assert_eq!(sink.1[0], Some(daemon()));
    // The 10 encrypted bytes count on the wire, the plaintext does not.
    assert_eq!(sink.0[0].bytes[0], 13 + 10 + 10);
}

#[test]
fn the_process_lookup_is_retried_until_the_server_accepted() {
    let mut e = Engine::new(EngineConfig::default());
    let mut tries = 0;
    e.set_process_lookup(Box::new(move |_, _| {
        tries += 1;
        (tries == 2).then(daemon)
    }));
    let mut sink = Records::default();
    let mut w = Wire {
        seq: [1000, 5000],
        ts: 0,
    };
    w.send(&mut e, &mut sink, true, "S", b"");
    w.send(&mut e, &mut sink, false, "S", b"");
    w.send(&mut e, &mut sink, true, "", b"");
    w.send(&mut e, &mut sink, false, "", b"220 mx ESMTP\r\n");
    // Named now: the seen-socket path does not override it.
    e.process_seen(
        addr(SERVER),
        addr(CLIENT),
        || unreachable!("already named"),
        &mut sink,
    );
    w.send(&mut e, &mut sink, true, "F", b"");
    w.send(&mut e, &mut sink, false, "F", b"");
    e.finish(w.ts + 1, &mut sink);
    assert_eq!(sink.1, vec![Some(daemon())]);
}
