#!/usr/bin/env python3
"""Writes the fuzz seed corpora into fuzz/corpus/<target>/ from capture files.

Usage: seeds.py CAPTURE_DIR...   (default: ../tests/fixtures and the repo's ../shared/corpus/pcaps)

Each capture gives: itself (pcap_read), its frames (wire_decode), its TCP segments as a flow
script (flow_reassembly), and per mail connection the two directions' payloads as a dissector
script (smtp, pop3, imap) and, on implicit-TLS ports, a TLS hello script. The scripts follow
the encodings in fuzz/src/lib.rs and fuzz/fuzz_targets/*.rs. Nothing here is committed: the
third-party captures stay where they are.
"""
import hashlib
import os
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "corpus")
MAX_SEED = 64 * 1024
LINKS = {1: 0, 101: 1, 228: 1, 229: 1, 12: 1, 14: 1, 113: 2, 276: 3, 0: 4, 108: 5}
SMTP, POP3, IMAP = {25, 465, 587, 2525}, {110, 995}, {143, 993}
IMPLICIT_TLS = {465, 993, 995}


ENGINE_PORTS = [25, 587, 465, 110, 143, 993, 995, 2525]


def save(target, data):
    data = data[:MAX_SEED]
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, hashlib.sha1(data).hexdigest()), "wb") as f:
        f.write(data)


def frames(blob):
    """(linktype, bytes) of every packet of a pcap or pcapng file."""
    if len(blob) < 24:
        return
    magic = blob[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        e = "<" if magic[0] in (0xD4, 0x4D) else ">"
        link = struct.unpack(e + "I", blob[20:24])[0] & 0xFFFF
        off = 24
        while off + 16 <= len(blob):
            incl = struct.unpack(e + "I", blob[off + 8:off + 12])[0]
            yield link, blob[off + 16:off + 16 + incl]
            off += 16 + incl
    elif magic == b"\x0a\x0d\x0d\x0a":
        e, links, off = "<", [], 0
        while off + 12 <= len(blob):
            btype = struct.unpack(e + "I", blob[off:off + 4])[0]
            if btype == 0x0A0D0D0A:
                e = "<" if blob[off + 8:off + 12] == b"\x4d\x3c\x2b\x1a" else ">"
                links = []
            blen = struct.unpack(e + "I", blob[off + 4:off + 8])[0]
            if blen < 12:
                return
            body = blob[off + 8:off + blen - 4]
            if btype == 1:
                links.append(struct.unpack(e + "H", body[:2])[0])
            elif btype == 6 and len(body) >= 20:
                iface, _, _, cap = struct.unpack(e + "IIII", body[:16])
                if iface < len(links):
                    yield links[iface], body[20:20 + cap]
            elif btype == 3 and links:
                yield links[0], body[4:]
            off += blen


def ip_offset(link, f):
    if link == 1:
        off, et = 14, f[12:14]
        while et in (b"\x81\x00", b"\x88\xa8") and len(f) >= off + 4:
            et, off = f[off + 2:off + 4], off + 4
        return off
    return {101: 0, 228: 0, 229: 0, 12: 0, 14: 0, 113: 16, 276: 20, 0: 4, 108: 4}.get(link)


def tcp_of(link, f):
    off = ip_offset(link, f)
    if off is None or len(f) < off + 20:
        return None
    v = f[off] >> 4
    if v == 4:
        ihl, proto = (f[off] & 15) * 4, f[off + 9]
        total = struct.unpack(">H", f[off + 2:off + 4])[0]
        src, dst, t = f[off + 12:off + 16], f[off + 16:off + 20], off + ihl
        end = min(len(f), off + total)
    elif v == 6 and len(f) >= off + 40:
        proto, src, dst, t = f[off + 6], f[off + 8:off + 24], f[off + 24:off + 40], off + 40
        end = min(len(f), off + 40 + struct.unpack(">H", f[off + 4:off + 6])[0])
    else:
        return None
    if proto != 6 or len(f) < t + 20:
        return None
    sport, dport, seq, ack = struct.unpack(">HHII", f[t:t + 12])
    doff, flags = (f[t + 12] >> 4) * 4, f[t + 13]
    return (src, sport), (dst, dport), seq, ack, flags, f[t + doff:end]


def dissector_script(segs, flags_byte):
    out = bytearray([flags_byte])
    for d, payload in segs:
        for i in range(0, len(payload), 255):
            piece = payload[i:i + 255]
            out += bytes([(1 << 3) | d]) + bytes([len(piece)]) + piece
    return bytes(out)


def from_capture(path):
    blob = open(path, "rb").read()
    save("pcap_read", blob)
    conns, order, flow, engine_ops = {}, [], bytearray(8), bytearray()
    for link, f in frames(blob):
        if link in LINKS:
            save("wire_decode", bytes([LINKS[link]]) + f)
        t = tcp_of(link, f)
        if t is None:
            continue
        a, b, seq, ack, fl, payload = t
        server_port = b[1] if b[1] in SMTP | POP3 | IMAP else a[1]
        key = tuple(sorted([a, b]))
        if key not in conns:
            conns[key] = (server_port, [])
            order.append(key)
        d = 0 if b[1] == server_port else 1
        conns[key][1].append((d, payload))
        idx = order.index(key)
        if idx < 4 and len(engine_ops) < MAX_SEED:
            if not engine_ops:
                # The first connection's port (ENGINE_PORTS in fuzz/src/lib.rs), initial seqs.
                engine_ops += bytes([ENGINE_PORTS.index(server_port) << 1 if server_port in ENGINE_PORTS else 0]) + bytes(8)
            # engine op: conn | side<<2 (kind 0: a packet), time byte, flags (in-order seq), chunk.
            ef = (fl & 2 and 1) | (fl & 16 and 2) | (fl & 1 and 4) | (fl & 4 and 8)
            for i in range(0, max(len(payload), 1), 255):
                piece = payload[i:i + 255]
                engine_ops += bytes([idx | d << 2, 1, ef]) + bytes([len(piece)]) + piece
        if idx < 4 and len(flow) < MAX_SEED:
            # flow_reassembly op: conn | side<<2, time byte, flags (in-order seq), chunk, ack byte.
            tf = (fl & 2 and 1) | (fl & 16 and 2) | (fl & 1 and 4) | (fl & 4 and 8) | (fl & 8 and 16)
            for i in range(0, max(len(payload), 1), 255):
                piece = payload[i:i + 255]
                flow += bytes([idx | d << 2, 1, tf]) + bytes([len(piece)]) + piece + b"\x00"
    if len(flow) > 8:
        save("flow_reassembly", bytes(flow))
    for server_port, segs in conns.values():
        segs = [(d, p) for d, p in segs if p]
        if not segs:
            continue
        target = "smtp" if server_port in SMTP else "pop3" if server_port in POP3 else "imap"
        tls = 8 if server_port in IMPLICIT_TLS else 0
        save(target, dissector_script(segs, 4 | tls))
        save(target, dissector_script(segs, 4 | 16 | 3))
        # chunking: the dissector (0 SMTP, 1 POP3, 2 IMAP), flags, one cut size, then the same ops.
        which = 0 if target == "smtp" else 1 if target == "pop3" else 2
        save("chunking", bytes([which, 4 | tls, 0, 3]) + dissector_script(segs, 0)[1:])
        if target == "smtp":
            # smtp_body: dot-stuffed, cut every 7 bytes, the client's stream as one message.
            client = b"".join(p for d, p in segs if d == 0)
            save("smtp_body", bytes([1, 6]) + client[:MAX_SEED])
    if engine_ops:
        save("engine", bytes(engine_ops))
        if tls:
            hello = bytearray()
            for d, p in segs[:8]:
                for i in range(0, len(p), 255):
                    hello += bytes([d, len(p[i:i + 255])]) + p[i:i + 255]
            save("tls_hello", bytes(hello))


def main():
    dirs = sys.argv[1:] or [os.path.join(HERE, "..", "..", "tests", "fixtures"), os.path.join(HERE, "..", "..", "..", "shared", "corpus", "pcaps")]
    n = 0
    for top in dirs:
        for root, _, files in os.walk(top):
            for name in sorted(files):
                if name.endswith((".pcap", ".pcapng")):
                    from_capture(os.path.join(root, name))
                    n += 1
    for t in sorted(os.listdir(OUT)):
        print(f"{t}: {len(os.listdir(os.path.join(OUT, t)))} seeds")
    print(f"from {n} captures")


if __name__ == "__main__":
    main()
