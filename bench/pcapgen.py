"""Synthetic SMTP captures (classic pcap, Ethernet) for the replay and memory benchmarks.

Every session is a complete, well-formed TCP conversation (handshake, banner, EHLO, MAIL, RCPT,
DATA with a 5 KiB message in 1448-byte segments, QUIT, FINs); sessions differ by client address
and port and follow one another in time. Checksums are left zero: neither mail-trace nor tshark
(by default) verifies them.

`concurrent()` instead holds every session open at once (tests/memcap.rs, through the command line:
`python3 pcapgen.py concurrent N FILE`)."""
import struct
import sys

SERVER = bytes([10, 99, 0, 25])
SERVER6 = bytes.fromhex("fd990000000000000000000000000025")
MSS = 1448
SYN, ACK, PSH, FIN = 0x02, 0x10, 0x08, 0x01
ETH = bytes.fromhex("020000000002" "020000000001") + b"\x08\x00"
ETH6 = bytes.fromhex("020000000002" "020000000001") + b"\x86\xdd"


def _message(size):
    head = b"From: a@client.test\r\nTo: b@mx.test\r\nSubject: bench\r\n\r\n"
    line = b"x" * 70 + b"\r\n"
    body = head + line * ((size - len(head)) // len(line))
    return body + b".\r\n"


def full_session(msg_size=5120):
    """[(from_client, flags, payload)] of one delivered message."""
    c, s = True, False
    steps = [
        (c, SYN, b""), (s, SYN | ACK, b""), (c, ACK, b""),
        (s, PSH | ACK, b"220 mx.test ESMTP bench\r\n"),
        (c, PSH | ACK, b"EHLO client.test\r\n"),
        (s, PSH | ACK, b"250-mx.test\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250 8BITMIME\r\n"),
        (c, PSH | ACK, b"MAIL FROM:<a@client.test>\r\n"), (s, PSH | ACK, b"250 2.1.0 Ok\r\n"),
        (c, PSH | ACK, b"RCPT TO:<b@mx.test>\r\n"), (s, PSH | ACK, b"250 2.1.5 Ok\r\n"),
        (c, PSH | ACK, b"DATA\r\n"), (s, PSH | ACK, b"354 End data with <CR><LF>.<CR><LF>\r\n"),
    ]
    msg = _message(msg_size)
    for i in range(0, len(msg), MSS):
        steps.append((c, ACK | (PSH if i + MSS >= len(msg) else 0), msg[i:i + MSS]))
        if (i // MSS) % 2 == 1:
            steps.append((s, ACK, b""))
    steps += [
        (s, PSH | ACK, b"250 2.0.0 Ok: queued as 4ABCDEF0123\r\n"),
        (c, PSH | ACK, b"QUIT\r\n"), (s, PSH | ACK, b"221 2.0.0 Bye\r\n"),
        (s, FIN | ACK, b""), (c, FIN | ACK, b""), (s, ACK, b""),
    ]
    return steps


def open_session():
    """A session left open after MAIL FROM: for the memory benchmark."""
    return full_session()[:8]


def greeted_session():
    """Handshake, banner, EHLO and its reply: an idle session waiting for MAIL FROM."""
    return full_session()[:6]


def closing_steps():
    """QUIT, its reply and the FINs that end a session opened with `greeted_session()`."""
    return full_session()[-5:]


class Writer:
    def __init__(self, path):
        self.f = open(path, "wb", buffering=1 << 20)
        self.f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        self.t_us = 1_700_000_000 * 1_000_000
        self.bytes = 24

    def session(self, steps, n, step_us=20, seq=None, v6=False):
        """Writes session template `steps` as client number `n` (IPv6 in fd99::/64 with `v6`);
        `seq` continues a session written earlier. Returns the sequence numbers to continue with."""
        if v6:
            cip = bytes.fromhex("fd990000000000000000000000") + bytes([0x10 + n // 60000 % 150, 0, 7])
            server, eth = SERVER6, ETH6
        else:
            cip = bytes([10, 99, 100 + (n // 60000) % 150, 7])
            server, eth = SERVER, ETH
        cport = 1024 + n % 60000
        seq = dict(seq or {True: 1000, False: 5000})
        out = []
        for from_client, flags, payload in steps:
            src, dst = (cip, server) if from_client else (server, cip)
            sp, dp = (cport, 25) if from_client else (25, cport)
            ack = seq[not from_client] if flags & ACK else 0
            if v6:
                ip = struct.pack(">IHBB16s16s", 6 << 28, 20 + len(payload), 6, 64, src, dst)
            else:
                ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 40 + len(payload), 0, 0x4000, 64, 6, 0, src, dst)
            tcp = struct.pack(">HHIIBBHHH", sp, dp, seq[from_client], ack, 0x50, flags, 65535, 0, 0)
            frame = eth + ip + tcp + payload
            self.t_us += step_us
            out.append(struct.pack("<IIII", self.t_us // 1_000_000, self.t_us % 1_000_000, len(frame), len(frame)))
            out.append(frame)
            seq[from_client] += len(payload) + (1 if flags & (SYN | FIN) else 0)
        data = b"".join(out)
        self.f.write(data)
        self.bytes += len(data)
        return seq

    def close(self):
        self.f.close()


def write(path, steps, sessions=None, min_bytes=None):
    """Writes sessions until `sessions` were written or the file reached `min_bytes`."""
    w = Writer(path)
    n = 0
    while (sessions is not None and n < sessions) or (min_bytes is not None and w.bytes < min_bytes):
        w.session(steps, n)
        n += 1
    w.close()
    return n, w.bytes


def concurrent(path, sessions):
    """`sessions` SMTP sessions open at once: each in turn gets its handshake, banner and EHLO,
    then each in turn (in the same order) QUIT and FINs. Every other session is IPv6; clients
    differ by port (60 000 per address)."""
    w = Writer(path)
    seqs = [w.session(greeted_session(), n, v6=n % 2 == 1) for n in range(sessions)]
    for n in range(sessions):
        w.session(closing_steps(), n, seq=seqs[n], v6=n % 2 == 1)
    w.close()
    return sessions, w.bytes


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] != "concurrent":
        sys.exit("usage: pcapgen.py concurrent SESSIONS FILE")
    print(*concurrent(sys.argv[3], int(sys.argv[2])))
