#!/usr/bin/env python3
"""mail-trace benchmarks, written to BENCHMARKS.md. Run by `cargo xtask bench` (as root).

Every result is a ratio against a baseline measured in the same run. Traffic only crosses the veth
pair this script creates (mtbh0 in the root namespace, mtbh1 in namespace mtbench, 10.99.77.0/24),
which is deleted on every exit path; every process started here is stopped by its PID.

Environment: MT_BIN (the release mail-trace), BENCH_OUT (BENCHMARKS.md path), BENCH_SCALE (float,
multiplies session counts, default 1), BENCH_REPLAY_MB (default 1024)."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bpf_floor  # noqa: E402
import pcapgen  # noqa: E402

MT = os.environ.get("MT_BIN", "mail-trace")
OUT = os.environ.get("BENCH_OUT", os.path.join(HERE, "..", "BENCHMARKS.md"))
SCALE = float(os.environ.get("BENCH_SCALE", "1"))
REPLAY_MB = int(os.environ.get("BENCH_REPLAY_MB", "1024"))
NS, IF0, IF1 = "mtbench", "mtbh0", "mtbh1"
CLIENT, SERVER = "10.99.77.1", "10.99.77.2"
NONMAIL_PORT = 2626
# A bound on every load step: no single command may run longer.
STEP_TIMEOUT = 300

started = []  # Popen objects still running, stopped on exit
report = []


def log(msg):
    print(f"bench: {msg}", flush=True)


def sh(cmd, check=True, **kw):
    return subprocess.run(cmd, check=check, text=True, capture_output=True, **kw)


def n(x):
    return max(1, int(x * SCALE))


# ---------------------------------------------------------------- network
def net_down():
    sh(["ip", "link", "del", IF0], check=False)
    sh(["ip", "netns", "del", NS], check=False)


def net_up():
    net_down()
    sh(["ip", "netns", "add", NS])
    sh(["ip", "link", "add", IF0, "type", "veth", "peer", "name", IF1, "netns", NS])
    sh(["ip", "addr", "add", f"{CLIENT}/24", "dev", IF0])
    sh(["ip", "link", "set", IF0, "up"])
    for c in (["ip", "addr", "add", f"{SERVER}/24", "dev", IF1], ["ip", "link", "set", IF1, "up"],
              ["ip", "link", "set", "lo", "up"]):
        sh(["ip", "netns", "exec", NS] + c)


def cleanup():
    for p in started:
        stop(p)
    net_down()


def start(cmd, **kw):
    p = subprocess.Popen(cmd, **kw)
    started.append(p)
    return p


def stop(p, sig=signal.SIGINT, timeout=60):
    """Stops a process we started; returns (user+sys CPU seconds incl. reaped children, wall)."""
    if p not in started:
        return 0.0
    started.remove(p)
    if p.poll() is None:
        p.send_signal(sig)
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            pid, status, ru = os.wait4(p.pid, os.WNOHANG)
        except ChildProcessError:  # already reaped by poll()
            return 0.0, 0
        if pid:
            p.returncode = status
            return ru.ru_utime + ru.ru_stime, ru.ru_maxrss
        time.sleep(0.05)
    p.kill()
    _, status, ru = os.wait4(p.pid, 0)
    p.returncode = status
    return ru.ru_utime + ru.ru_stime, ru.ru_maxrss


def run_measured(cmd, stdout=subprocess.DEVNULL):
    """Runs to completion; returns (wall s, cpu s, max RSS KiB)."""
    t = time.time()
    p = start(cmd, stdout=stdout, stderr=subprocess.PIPE)
    while True:
        pid, status, ru = os.wait4(p.pid, os.WNOHANG)
        if pid:
            break
        if time.time() - t > STEP_TIMEOUT * 4:
            p.kill()
            _, status, ru = os.wait4(p.pid, 0)
            break
        time.sleep(0.05)
    started.remove(p)
    p.returncode = status
    if status != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {p.stderr.read().decode()[-500:]}")
    return time.time() - t, ru.ru_utime + ru.ru_stime, ru.ru_maxrss


# ---------------------------------------------------------------- bpf stats
def owned_prog_ids(pid):
    """IDs of the BPF programs a process holds (prog and link fds name them in fdinfo): other
    mail-traces may run on the machine, and this bpftool reports no owning PIDs."""
    ids = set()
    d = f"/proc/{pid}/fdinfo"
    for fd in os.listdir(d):
        try:
            m = re.search(r"^prog_id:\s+(\d+)", open(os.path.join(d, fd)).read(), re.M)
        except OSError:
            continue
        if m:
            ids.add(int(m.group(1)))
    return ids


def progs(names, pid):
    out = json.loads(sh(["bpftool", "prog", "show", "-j"]).stdout)
    ids = owned_prog_ids(pid)
    return [p for p in out if p.get("name") in names and p.get("id") in ids]


def bpf_time(names, pid):
    ps = progs(names, pid)
    return sum(p.get("run_time_ns", 0) for p in ps), sum(p.get("run_cnt", 0) for p in ps)


COUNTER_FIELDS = ("seen", "matched", "records", "bytes", "lost_records", "lost_bytes", "truncated",
                  "unparseable", "fragments", "suppressed_packets", "suppressed_bytes")
MT_PROGS = ("mail_trace_in", "mail_trace_out")


def mt_counters(pid):
    """The kernel COUNTERS map of the mail-trace with this PID, summed over CPUs."""
    ids = {m for p in progs(MT_PROGS, pid) for m in p.get("map_ids", [])}
    for mid in ids:
        info = json.loads(sh(["bpftool", "map", "show", "id", str(mid), "-j"]).stdout)
        if info.get("name") != "COUNTERS":
            continue
        dump = json.loads(sh(["bpftool", "map", "dump", "id", str(mid), "-j"]).stdout)
        total = {}
        for entry in dump:
            for v in entry.get("values", []):
                raw = bytes(int(x, 16) for x in v["value"])
                # mail_trace_common::Counters: u64 fields in this order.
                for i, k in enumerate(COUNTER_FIELDS[:len(raw) // 8]):
                    total[k] = total.get(k, 0) + int.from_bytes(raw[8 * i:8 * i + 8], "little")
        return total
    return {}


# ---------------------------------------------------------------- tracers
def tracer_cmd(kind, json_path, extra=()):
    if kind == "mail-trace":
        return [MT, "tail", "--json", "-i", IF0, "--ports", "25", *extra]
    if kind == "tcpdump":
        return ["tcpdump", "-i", IF0, "-n", "-w", "/dev/null", "tcp port 25"]
    if kind == "tshark":
        return ["tshark", "-i", IF0, "-n", "-f", "tcp port 25", "-Y", "smtp", "-T", "fields",
                "-e", "smtp.req.command", "-e", "smtp.response.code"]
    return None


def start_tracer(kind, tmp, extra=()):
    cmd = tracer_cmd(kind, None, extra)
    if cmd is None:
        return None
    out = open(os.path.join(tmp, f"{kind}.out"), "wb") if kind == "mail-trace" else subprocess.DEVNULL
    err_path = os.path.join(tmp, f"{kind}.err")
    p = start(cmd, stdout=out, stderr=open(err_path, "wb"))
    p.err_path, p.out_path = err_path, getattr(out, "name", None)
    deadline = time.time() + 30
    while time.time() < deadline:
        if p.poll() is not None:
            raise RuntimeError(f"{kind} exited: {open(err_path).read()[-500:]}")
        err = open(err_path, errors="replace").read()
        if any(w in err for w in ("tracing", "listening on", "Capturing on")):
            break
        time.sleep(0.1)
    time.sleep(0.5)
    return p


def proc_cpu(pid):
    """user+sys CPU seconds a running process has used so far (/proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tracer_losses(kind, p):
    err = open(p.err_path, errors="replace").read()
    if kind == "mail-trace":
        m = re.search(r"(\d+) records lost", err)
        return int(m.group(1)) if m else None
    m = re.search(r"(\d+) packets? dropped", err)
    return int(m.group(1)) if m else 0


def session_records(p):
    with open(p.out_path, errors="replace") as f:
        return sum(1 for line in f if '"type":"session"' in line.replace(" ", ""))


# ---------------------------------------------------------------- loads
def sink(port):
    cmd = ["ip", "netns", "exec", NS, "smtp-sink", "-u", "nobody", f"{SERVER}:{port}", "1024"]
    p = start(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    return p


def smtp_source(conc, msgs, port=25, size=5120):
    cmd = ["smtp-source", "-s", str(conc), "-m", str(msgs), "-l", str(size),
           "-f", "a@client.test", "-t", "b@mx.test", f"{SERVER}:{port}"]
    t = time.time()
    sh(cmd, timeout=STEP_TIMEOUT)
    return time.time() - t, " ".join(cmd)


def tls_source(conc, msgs, size=5120):
    cmd = [sys.executable, os.path.join(HERE, "tls_smtp.py"), "source", SERVER, "25",
           str(msgs), str(conc), str(size)]
    t = time.time()
    out = sh(cmd, timeout=STEP_TIMEOUT).stdout
    ok = int(out.split()[1])
    return time.time() - t, ok, " ".join(cmd[1:])


# ---------------------------------------------------------------- sections
def machine():
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    v = lambda c: (sh(c, check=False).stdout + sh(c, check=False).stderr).strip().splitlines()[:1]
    rows = [
        ("nproc", sh(["nproc"]).stdout.strip()), ("CPU", cpu),
        ("memory", f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') >> 20} MiB"),
        ("kernel", os.uname().release), ("mail-trace", " ".join(v([MT, "--version"]))),
        ("git", sh(["git", "-C", HERE, "rev-parse", "--short", "HEAD"], check=False).stdout.strip()),
        ("tcpdump", " ".join(v(["tcpdump", "--version"]))), ("tshark", " ".join(v(["tshark", "--version"]))),
        ("postfix (smtp-source/sink)", sh(["postconf", "-h", "mail_version"], check=False).stdout.strip()),
        ("python", sys.version.split()[0]), ("bpftool", " ".join(v(["bpftool", "version"]))),
    ]
    report.append("## Machine\n\n| | |\n|---|---|\n" + "".join(f"| {k} | {x} |\n" for k, x in rows))
    report.append("Load runs share the 2 cores with the load generator and the sink, and (on the "
                  "development machine) with other users: expect ±15 % between runs.\n")


def kernel_cost(tmp):
    log("kernel cost per packet")
    s25 = sink(25)
    rows = []
    msgs = n(3000)
    for label, port in (("non-mail (port 2626)", NONMAIL_PORT), ("mail (port 25)", 25)):
        res = {}
        for who in ("floor", "mail-trace"):
            if who == "floor":
                fl = bpf_floor.Floor(IF0)
                t0 = bpf_time(("mt_floor",), os.getpid())
            else:
                p = start_tracer("mail-trace", tmp)
                t0 = bpf_time(MT_PROGS, p.pid)
            smtp_source(4, msgs, port)
            if who == "floor":
                t1 = bpf_time(("mt_floor",), os.getpid())
                fl.close()
            else:
                t1 = bpf_time(MT_PROGS, p.pid)
                stop(p)
            dt, dc = t1[0] - t0[0], t1[1] - t0[1]
            res[who] = (dt / dc if dc else float("nan"), dc)
        ratio = res["mail-trace"][0] / res["floor"][0]
        rows.append(f"| {label} | {res['floor'][0]:.1f} ({res['floor'][1]}) | "
                    f"{res['mail-trace'][0]:.1f} ({res['mail-trace'][1]}) | **{ratio:.2f} ×** |")
    stop(s25, signal.SIGTERM)
    report.append(
        "## 1. Kernel cost per packet\n\n"
        "`sysctl kernel.bpf_stats_enabled=1`; run_time_ns / run_cnt of the programs (ingress + egress "
        "on mtbh0, summed) from `bpftool prog show -j`, before and after the load. The floor is a "
        "two-instruction TC classifier (`r0 = TC_ACT_UNSPEC; exit`, bench/bpf_floor.py) attached by "
        "TCX exactly like mail-trace. Load: "
        f"`smtp-source -s 4 -m {msgs} -l 5120 {SERVER}:PORT` into smtp-sink; mail-trace runs "
        f"`{' '.join(tracer_cmd('mail-trace', None))}` so port 2626 is not mail to it.\n\n"
        "| packets | floor ns/pkt (packets) | mail-trace ns/pkt (packets) | ratio |\n|---|---|---|---|\n"
        + "\n".join(rows) + "\n\nTarget: non-mail ≤ 1.5 × the floor.\n")


def live(tmp):
    log("live load")
    s25 = sink(25)
    levels = [(1, n(2000)), (4, n(6000)), (20, n(20000))]
    rows = []
    cmds = set()
    startups = []
    for conc, msgs in levels:
        base_rate = None
        for kind in ("none", "mail-trace", "tcpdump", "tshark"):
            log(f"  -s {conc} -m {msgs}: {kind}")
            p = start_tracer(kind, tmp)
            k0 = bpf_time(MT_PROGS, p.pid) if kind == "mail-trace" else (0, 0)
            startup = proc_cpu(p.pid) if kind == "mail-trace" else None
            wall, cmd = smtp_source(conc, msgs)
            cmds.add(cmd)
            k1 = bpf_time(MT_PROGS, p.pid) if kind == "mail-trace" else (0, 0)
            cpu = stop(p)[0] if p else 0.0
            if startup is not None:
                startups.append(startup)
            rate = msgs / wall
            base_rate = base_rate or rate
            lost = tracer_losses(kind, p) if p else 0
            recorded = f"{session_records(p)}/{msgs}" if kind == "mail-trace" else "–"
            kern = f"{(k1[0] - k0[0]) / 1e9:.3f}" if kind == "mail-trace" else "n/a"
            rows.append((conc, msgs, kind, rate, rate / base_rate, cpu, kern, lost, recorded))
    stop(s25, signal.SIGTERM)
    lines = []
    for conc, msgs, kind, rate, rr, cpu, kern, lost, rec in rows:
        ref = {k: c for (cc, _, k, _, _, c, _, _, _) in rows if cc == conc}
        vs_td = f"{cpu / ref['tcpdump']:.2f} ×" if kind == "mail-trace" and ref["tcpdump"] else ""
        vs_ts = f"{cpu / ref['tshark']:.3f} ×" if kind == "mail-trace" and ref["tshark"] else ""
        lines.append(f"| -s {conc} | {kind} | {rate:.0f} | {rr:.2f} | {cpu:.2f} | {kern} | {vs_td} | "
                     f"{vs_ts} | {lost} | {rec} |")
    report.append(
        "## 2. Live load (plain SMTP)\n\nsmtp-source in the root namespace → veth → smtp-sink in "
        f"`{NS}`; 5 KiB messages, one per session. Commands: "
        + "; ".join(f"`{c}`" for c in sorted(cmds)) + ".\nTracers: "
        + "; ".join(f"`{' '.join(tracer_cmd(k, None))}`" for k in ("mail-trace", "tcpdump", "tshark"))
        + " (mail-trace's JSON goes to a file, counted afterwards; tshark's fields to /dev/null).\n"
        "CPU = user+sys of the tracer process and its reaped children (wait4 rusage, so tshark "
        "includes dumpcap). Kernel BPF = run_time_ns of mail-trace's programs during the load "
        "(tcpdump's and tshark's in-kernel cost — classic BPF socket filter and the AF_PACKET copy — "
        "is not visible to bpf_stats). Throughput ratio = sessions/s ÷ sessions/s with nothing "
        "attached at the same concurrency. Lost = mail-trace records lost in the ring / packets "
        "the capture tool reports dropped.\n\n"
        "| conc. | tracer | sessions/s | × none | CPU s | kernel BPF s | CPU × tcpdump | CPU × tshark "
        "| lost | sessions recorded |\n|---|---|---|---|---|---|---|---|---|---|\n"
        + "\n".join(lines) + "\n\nTargets: mail-trace CPU ≤ 1.0 × tcpdump and ≤ 0.05 × tshark at the "
        "highest rate, zero lost; throughput ≥ 0.97 × none.\n\nOf mail-trace's CPU, the start-up "
        "(loading and verifying the eBPF programs, attaching, before any load) took "
        + ", ".join(f"{c:.2f}" for c in startups) + " s in the three runs (/proc/PID/stat when the "
        "load began); it is included in the CPU column, as tcpdump's and tshark's start-up are.\n")
    return rows


def live_tls(tmp):
    log("live load, STARTTLS")
    cert, key = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
    sh(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30", "-keyout", key,
        "-out", cert, "-subj", "/CN=mx.test"])
    sink = start(["ip", "netns", "exec", NS, sys.executable, os.path.join(HERE, "tls_smtp.py"),
                  "sink", SERVER, "25", cert, key], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1)
    conc, msgs = 8, n(600)
    rows, cmd = [], ""
    base = None
    variants = [("none", ()), ("mail-trace", ()), ("mail-trace --full-payload", ("--full-payload",)),
                ("tcpdump", ()), ("tshark", ())]
    if "--full-payload" not in sh([MT, "tail", "--help"]).stdout:
        variants = [v for v in variants if "--full-payload" not in v[0]]
    for label, extra in variants:
        kind = label.split()[0]
        log(f"  STARTTLS {label}")
        p = start_tracer(kind, tmp, extra)
        k0 = bpf_time(MT_PROGS, p.pid) if kind == "mail-trace" else (0, 0)
        wall, ok, cmd = tls_source(conc, msgs)
        k1 = bpf_time(MT_PROGS, p.pid) if kind == "mail-trace" else (0, 0)
        counters = mt_counters(p.pid) if kind == "mail-trace" else {}
        cpu = stop(p)[0] if p else 0.0
        rate = ok / wall
        if ok == 0:
            raise RuntimeError(f"STARTTLS load: no session succeeded ({label})")
        base = base or rate
        lost = tracer_losses(kind, p) if p else 0
        rec = f"{session_records(p)}/{ok}" if kind == "mail-trace" else "–"
        kern = f"{(k1[0] - k0[0]) / 1e9:.3f}" if kind == "mail-trace" else "n/a"
        copied = f"{counters.get('bytes', 0) / 1e6:.1f}" if counters else "n/a"
        supp = f"{counters.get('suppressed_bytes', 0) / 1e6:.1f}" if "suppressed_bytes" in counters else "n/a"
        rows.append(f"| {label} | {rate:.0f} | {rate / base:.2f} | {cpu:.2f} | {kern} | {copied} | {supp} | "
                    f"{lost} | {rec} |")
    if variants[2][0].endswith("--full-payload"):
        acc = tls_accounting(tmp, sink)
    else:
        acc = None
    stop(sink, signal.SIGTERM)
    if acc:
        msgs, enc, supp = acc
        rows.append(f"\nEncrypted payload never copied: **{supp} of {enc} bytes = "
                    f"{100 * supp / max(enc, 1):.1f} %** (target ≥ 95 %), over {msgs} STARTTLS sessions; "
                    "encrypted bytes counted from a `tcpdump -s 0 -w` of the same run (client bytes after "
                    "its STARTTLS line, server bytes after its 220 reply), suppressed bytes from the "
                    "kernel's COUNTERS.suppressed_bytes.")
    report.append(
        "## 2b. Live load (STARTTLS)\n\nsmtp-source has no STARTTLS and swaks costs a Perl start per "
        "session, so bench/tls_smtp.py provides both ends: an asyncio sink offering STARTTLS (RSA-2048 "
        "self-signed, TLS 1.3) in the namespace and a threaded smtplib client "
        f"(`{cmd}`). Copied = packet bytes the kernel wrote into the ring (COUNTERS.bytes); "
        "suppressed = payload bytes of TLS flows the kernel did not copy.\n\n"
        "| tracer | sessions/s | × none | CPU s | kernel BPF s | copied MB | suppressed MB | lost "
        "| sessions recorded |\n|---|---|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n")


def encrypted_payload(path):
    """TCP payload bytes after STARTTLS in a tcpdump pcap (Ethernet, IPv4): the client's bytes
    after its `STARTTLS` line, the server's after its 220 reply to it."""
    import struct
    data = open(path, "rb").read()
    pos, total, tls_from = 24, 0, {}
    while pos + 16 <= len(data):
        caplen = struct.unpack_from("<I", data, pos + 8)[0]
        pkt = data[pos + 16:pos + 16 + caplen]
        pos += 16 + caplen
        if len(pkt) < 54 or pkt[12:14] != b"\x08\x00" or pkt[23] != 6:
            continue
        ihl = (pkt[14] & 15) * 4
        tot = struct.unpack_from(">H", pkt, 16)[0]
        t = 14 + ihl
        sport, dport = struct.unpack_from(">HH", pkt, t)
        doff = (pkt[t + 12] >> 4) * 4
        payload = pkt[t + doff:14 + tot]
        plen = tot - ihl - doff
        conn = (pkt[26:30], pkt[30:34], sport, dport) if dport == 25 else (pkt[30:34], pkt[26:30], dport, sport)
        side = "c" if dport == 25 else "s"
        state = tls_from.setdefault(conn, set())
        if side in state:
            total += plen
        elif side == "c" and payload.upper().startswith(b"STARTTLS"):
            state.add("c")
        elif side == "s" and "c" in state and payload.startswith(b"220"):
            state.add("s")
    return total


def tls_accounting(tmp, sink_ready):
    """Fraction of encrypted payload bytes the kernel never copied: mail-trace's
    COUNTERS.suppressed_bytes over the encrypted bytes tcpdump saw in the same run."""
    msgs = n(300)
    pcap = os.path.join(tmp, "tls.pcap")
    td = start(["tcpdump", "-i", IF0, "-n", "-s", "0", "-w", pcap, "tcp port 25"],
               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    p = start_tracer("mail-trace", tmp)
    time.sleep(1)
    tls_source(8, msgs)
    time.sleep(0.5)
    counters = mt_counters(p.pid)
    stop(p)
    stop(td)
    enc = encrypted_payload(pcap)
    supp = counters.get("suppressed_bytes", 0)
    return msgs, enc, supp


def replay(tmp):
    log(f"replay: generating ≥ {REPLAY_MB} MB")
    path = os.path.join(tmp, "replay.pcap")
    sessions, size = pcapgen.write(path, pcapgen.full_session(), min_bytes=REPLAY_MB << 20)
    sh(["sh", "-c", f"cat {path} > /dev/null"])  # both read from the page cache
    mt_cmd = [MT, "replay", "--json", path]
    ts_cmd = ["tshark", "-n", "-r", path, "-Y", "smtp", "-T", "fields", "-e", "smtp.req.command",
              "-e", "smtp.response.code"]
    log("  mail-trace replay")
    mw, mc, mr = run_measured(mt_cmd)
    log("  tshark")
    tw, tc, tr = run_measured(ts_cmd)
    mb = size / 1e6
    report.append(
        "## 3. Replay\n\n"
        f"A synthetic capture (bench/pcapgen.py): {sessions} complete SMTP sessions (5 KiB message, "
        f"{len(pcapgen.full_session())} packets each), {mb:.0f} MB, read from the page cache.\n\n"
        "| command | wall s | CPU s | MB/s | peak RSS MiB |\n|---|---|---|---|---|\n"
        f"| `{' '.join(mt_cmd)} >/dev/null` | {mw:.2f} | {mc:.2f} | {mb / mw:.0f} | {mr / 1024:.0f} |\n"
        f"| `{' '.join(ts_cmd)} >/dev/null` | {tw:.2f} | {tc:.2f} | {mb / tw:.1f} | {tr / 1024:.0f} |\n\n"
        f"**mail-trace / tshark throughput: {tw / mw:.1f} ×** (target ≥ 30 ×).\n")
    os.unlink(path)


def memory(tmp):
    log("memory")
    rss = {}
    for count in (1, 10_000, 100_000):
        path = os.path.join(tmp, f"open{count}.pcap")
        pcapgen.write(path, pcapgen.open_session(), sessions=count)
        _, _, rss[count] = run_measured([MT, "replay", "--json", path])
        os.unlink(path)
    per = lambda c: (rss[c] - rss[1]) * 1024 / (c - 1)
    report.append(
        "## 4. Memory\n\nSynthetic captures of N sessions left open after `MAIL FROM` (bench/pcapgen.py); "
        f"`{MT} replay --json FILE`, peak RSS from wait4. Per session = (RSS(N) − RSS(1)) / (N − 1).\n\n"
        "| open sessions | peak RSS MiB | bytes per session |\n|---|---|---|\n"
        f"| 1 | {rss[1] / 1024:.1f} | – |\n"
        f"| 10 000 | {rss[10_000] / 1024:.1f} | {per(10_000):.0f} |\n"
        f"| 100 000 | {rss[100_000] / 1024:.1f} | {per(100_000):.0f} |\n")


def main():
    if os.geteuid() != 0:
        sys.exit("bench: needs root (network namespaces, eBPF)")
    only = set(sys.argv[1:])
    want = lambda s: not only or s in only
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: sys.exit(1))
    stats_before = open("/proc/sys/kernel/bpf_stats_enabled").read().strip()
    tmp = tempfile.mkdtemp(prefix="mtbench-")
    try:
        net_up()
        sink(NONMAIL_PORT)
        with open("/proc/sys/kernel/bpf_stats_enabled", "w") as f:
            f.write("1")
        report.append("# mail-trace benchmarks\n\nProduced by `cargo xtask bench` (bench/bench.py) on "
                      f"{time.strftime('%Y-%m-%d %H:%M %Z')}; scale {SCALE}.\n")
        machine()
        if want("kernel"):
            kernel_cost(tmp)
        if want("live"):
            live(tmp)
        if want("tls"):
            live_tls(tmp)
        if want("replay"):
            replay(tmp)
        if want("memory"):
            memory(tmp)
    finally:
        cleanup()
        with open("/proc/sys/kernel/bpf_stats_enabled", "w") as f:
            f.write(stats_before)
        shutil.rmtree(tmp, ignore_errors=True)
    with open(OUT, "w") as f:
        f.write(relative_paths("\n".join(report), tmp))
    log(f"wrote {OUT}")


def relative_paths(text, tmp):
    """BENCHMARKS.md is committed: it names no path of this machine. The binary, the repo's own
    files and the run's temporary directory are shown relative to the repo (or as $TMPDIR)."""
    root = os.path.dirname(HERE)
    mt = os.path.abspath(MT)
    if os.path.isabs(MT):
        # xtask passes <target dir>/release/mail-trace; the target dir may live outside the repo.
        text = text.replace(mt, "target/release/mail-trace")
    text = text.replace(tmp, "$TMPDIR/mtbench")
    return text.replace(root + "/", "")


if __name__ == "__main__":
    main()
