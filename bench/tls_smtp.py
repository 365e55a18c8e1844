"""STARTTLS load: smtp-source and smtp-sink speak no STARTTLS, swaks costs a Perl start per
session. So a small asyncio SMTP sink that offers STARTTLS, and a threaded smtplib client.

    tls_smtp.py sink ADDR PORT CERT KEY
    tls_smtp.py source ADDR PORT SESSIONS CONCURRENCY MSG_BYTES   (prints "ok N")
"""
import asyncio
import concurrent.futures
import smtplib
import ssl
import sys


async def _session(r, w, ctx):
    w.write(b"220 mx.test ESMTP bench\r\n")
    tls = False
    while True:
        line = await r.readline()
        if not line:
            break
        cmd = line[:4].upper()
        if cmd in (b"EHLO", b"HELO"):
            w.write(b"250-mx.test\r\n" + (b"" if tls else b"250-STARTTLS\r\n") + b"250 PIPELINING\r\n")
        elif cmd == b"STAR" and not tls:
            w.write(b"220 2.0.0 Ready to start TLS\r\n")
            await w.drain()
            await w.start_tls(ctx)
            tls = True
            continue
        elif cmd == b"DATA":
            w.write(b"354 End data with <CR><LF>.<CR><LF>\r\n")
            await w.drain()
            while True:
                l = await r.readline()
                if not l or l == b".\r\n":
                    break
            w.write(b"250 2.0.0 Ok: queued as 4ABCDEF\r\n")
        elif cmd == b"QUIT":
            w.write(b"221 2.0.0 Bye\r\n")
            await w.drain()
            break
        else:
            w.write(b"250 2.1.0 Ok\r\n")
        await w.drain()
    w.close()


async def _serve(addr, port, cert, key):
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)

    async def handle(r, w):
        try:
            await _session(r, w, ctx)
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError):
            w.close()

    server = await asyncio.start_server(handle, addr, port, backlog=1024)
    async with server:
        await server.serve_forever()


def _one(addr, port, msg):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with smtplib.SMTP(addr, port, local_hostname="client.test", timeout=30) as s:
        s.ehlo()
        s.starttls(context=ctx)
        s.ehlo()
        s.sendmail("a@client.test", ["b@mx.test"], msg)
    return 1


def _source(addr, port, sessions, conc, size):
    head = b"From: a@client.test\r\nTo: b@mx.test\r\nSubject: bench\r\n\r\n"
    msg = head + (b"x" * 70 + b"\r\n") * ((size - len(head)) // 72)
    ok = 0
    with concurrent.futures.ThreadPoolExecutor(conc) as ex:
        for f in [ex.submit(_one, addr, port, msg) for _ in range(sessions)]:
            try:
                ok += f.result()
            except (OSError, smtplib.SMTPException):
                pass
    print(f"ok {ok}")


if __name__ == "__main__":
    if sys.argv[1] == "sink":
        asyncio.run(_serve(sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]))
    else:
        _source(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]))
