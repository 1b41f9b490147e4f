"""Stress a live server: slowloris, idle connections, a soak, and injected faults.

Usage: ``python tests/stress/stress.py [--soak N] [--idle N] [--budget SECONDS]``

It starts ``python -m evloop_httpd -p 0 -d TMP -q`` as a subprocess, runs each scenario against
it with one selectors-based load generator in this process (pipelining over a few sockets, so a
single Python client can reach hundreds of thousands of requests), and while each attack runs,
times a probe GET on a fresh connection every few milliseconds. It prints requests served,
errors, the server's RSS and open descriptors before and after (from /proc), and probe latency
p50/p99. Every scenario is bounded in count and in time. Not collected by pytest.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SMALL = b"hello, stress\n"
MID = bytes(range(256)) * 64  # 16 KiB


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def raise_nofile(n: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < min(n, hard):
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(n, hard), hard))


class Server:
    def __init__(self, root: Path, *extra: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "evloop_httpd", "-p", "0", "-d", str(root), "-q", *extra],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.startswith("Serving "), line
        self.port = int(line.rsplit(":", 1)[1].strip().rstrip("/"))
        self.pid = self.proc.pid

    def snapshot(self) -> tuple[int, int]:
        return rss_kib(self.pid), fds(self.pid)

    def stop(self) -> tuple[int, str]:
        self.proc.send_signal(signal.SIGTERM)
        try:
            _, err = self.proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return self.proc.returncode, err


class Prober:
    """Times a GET of a small file on a fresh connection, between load-generator steps."""

    def __init__(self, port: int, every_s: float = 0.005) -> None:
        self.port = port
        self.every_s = every_s
        self.next_at = 0.0
        self.samples: list[float] = []
        self.failures = 0

    def maybe_probe(self) -> None:
        now = time.monotonic()
        if now < self.next_at:
            return
        self.next_at = now + self.every_s
        start = time.perf_counter()
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
                s.sendall(b"GET /small.txt HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n")
                data = b""
                while chunk := s.recv(65536):
                    data += chunk
            if not data.startswith(b"HTTP/1.1 200 ") or not data.endswith(SMALL):
                self.failures += 1
                return
        except OSError:
            self.failures += 1
            return
        self.samples.append(time.perf_counter() - start)

    def report(self) -> str:
        if not self.samples:
            return f"probe: no samples, {self.failures} failures"
        ms = sorted(x * 1000 for x in self.samples)
        p50 = statistics.median(ms)
        p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
        return (
            f"probe GET: n={len(ms)} p50={p50:.2f} ms p99={p99:.2f} ms max={ms[-1]:.2f} ms"
            f" failures={self.failures}"
        )


def run_for(seconds: float, step: Callable[[], bool], prober: Prober) -> None:
    """Call ``step`` and probe until ``step`` says it is done or time is up."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if step():
            return
        prober.maybe_probe()


# Scenarios


def slowloris(srv: Server, n: int, seconds: float) -> dict[str, object]:
    """n connections each trickling a never-ending head, one byte per 100 ms each."""
    prober = Prober(srv.port)
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", srv.port))
        s.setblocking(False)
        socks.append(s)
    line = b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: " + b"a" * 100_000
    pos = [0] * n
    got_408 = 0
    closed = [False] * n
    next_tick = time.monotonic()

    def step() -> bool:
        nonlocal got_408, next_tick
        if time.monotonic() >= next_tick:
            next_tick += 0.1
            for i, s in enumerate(socks):
                if closed[i]:
                    continue
                try:
                    s.send(line[pos[i] : pos[i] + 1])
                    pos[i] += 1
                except BlockingIOError:
                    pass
                except OSError:
                    closed[i] = True
                try:
                    data = s.recv(4096)
                    if data.startswith(b"HTTP/1.1 408 "):
                        got_408 += 1
                    closed[i] = True
                except BlockingIOError:
                    pass
                except OSError:
                    closed[i] = True
        return all(closed)

    run_for(seconds, step, prober)
    for s in socks:
        s.close()
    return {"connections": n, "answered 408": got_408, "probe": prober.report()}


def idle(srv: Server, n: int, seconds: float) -> dict[str, object]:
    """n connections that each make one request and then sit idle on keep-alive."""
    raise_nofile(n + 256)
    prober = Prober(srv.port, every_s=0.01)
    deadline = time.monotonic() + 10
    while fds(srv.pid) > 8 and time.monotonic() < deadline:
        time.sleep(0.05)  # let the previous scenario's connections go
    rss0, fd0 = srv.snapshot()
    socks = []
    errors = 0
    t0 = time.monotonic()
    for i in range(n):
        try:
            s = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
            s.sendall(b"GET /small.txt HTTP/1.1\r\nHost: x\r\n\r\n")
            socks.append(s)
        except OSError:
            errors += 1
        if i % 50 == 0:
            prober.maybe_probe()
    ok = 0
    for s in socks:
        try:
            if s.recv(4096).startswith(b"HTTP/1.1 200 "):
                ok += 1
        except OSError:
            errors += 1
    opened_s = time.monotonic() - t0
    deadline = time.monotonic() + 10
    while fds(srv.pid) < fd0 + len(socks) and time.monotonic() < deadline:
        time.sleep(0.05)
    rss1, fd1 = srv.snapshot()
    # Hold them all while probing.
    run_for(seconds, lambda: False, prober)
    for s in socks:
        s.close()
    deadline = time.monotonic() + 10
    while fds(srv.pid) > fd0 and time.monotonic() < deadline:
        time.sleep(0.05)
    rss2, fd2 = srv.snapshot()
    return {
        "idle connections held": ok,
        "errors": errors,
        "open+request time": f"{opened_s:.1f} s",
        "server fds before/holding/after": f"{fd0}/{fd1}/{fd2}",
        "server RSS KiB before/holding/after": f"{rss0}/{rss1}/{rss2}",
        "cost per idle connection": f"{(rss1 - rss0) * 1024 / max(ok, 1):.0f} bytes",
        "probe": prober.report(),
    }


REQUESTS = [
    (b"GET /small.txt HTTP/1.1\r\nHost: s\r\n\r\n", 200, False),
    (b"HEAD /mid.bin HTTP/1.1\r\nHost: s\r\n\r\n", 200, True),
    (b"GET /mid.bin HTTP/1.1\r\nHost: s\r\n\r\n", 200, False),
    (b"GET /missing/nope.txt HTTP/1.1\r\nHost: s\r\n\r\n", 404, False),
]


def put_request(i: int) -> bytes:
    body = b"%d\n" % i
    head = b"PUT /up/f%d.txt HTTP/1.1\r\nHost: s\r\nContent-Length: %d\r\n\r\n"
    return head % (i % 50, len(body)) + body


class LoadConn:
    """One pipelining client connection driven by the load generator's selector."""

    def __init__(self, port: int, depth: int, requests_left: int, rng: random.Random) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setblocking(False)
        self.out = bytearray()
        self.inbuf = bytearray()
        self.expect: list[tuple[int, bool]] = []
        self.left = requests_left
        self.depth = depth
        self.rng = rng
        self.counter = 0

    def refill(self) -> None:
        while len(self.expect) < self.depth and self.left > 0:
            r = self.rng.random()
            if r < 0.15:
                self.out += put_request(self.rng.randrange(1_000_000))
                self.expect.append((-1, False))  # 201 or 204
            else:
                req, status, head_only = REQUESTS[self.rng.randrange(len(REQUESTS))]
                self.out += req
                self.expect.append((status, head_only))
            self.left -= 1

    def parse(self) -> tuple[int, int]:
        """Consume whole responses from inbuf; returns (ok, errors)."""
        ok = err = 0
        while self.expect:
            end = self.inbuf.find(b"\r\n\r\n")
            if end < 0:
                break
            head = bytes(self.inbuf[:end])
            status = int(head[9:12])
            length = 0
            want_status, head_only = self.expect[0]
            if not head_only and status not in (204, 304):
                i = head.lower().find(b"content-length: ")
                length = int(head[i + 16 : head.find(b"\r", i)])
            if len(self.inbuf) < end + 4 + length:
                break
            del self.inbuf[: end + 4 + length]
            self.expect.pop(0)
            good = status in (201, 204) if want_status == -1 else status == want_status
            ok += good
            err += not good
        return ok, err


def soak(srv: Server, total: int, seconds: float, nconns: int = 8) -> dict[str, object]:
    """``total`` mixed requests, pipelined over ``nconns`` keep-alive sockets that are replaced
    by new connections every few hundred requests (so both reuse and new connections count)."""
    rng = random.Random(1)
    prober = Prober(srv.port, every_s=0.02)
    sel = selectors.DefaultSelector()
    issued = 0
    done = ok = errors = 0
    new_connections = 0
    warm_at = total // 10
    warm: tuple[int, int] | None = None
    rss0, fd0 = srv.snapshot()

    def open_conn() -> None:
        nonlocal issued, new_connections
        per_conn = min(rng.randrange(50, 800), total - issued)
        if per_conn <= 0:
            return
        c = LoadConn(srv.port, depth=32, requests_left=per_conn, rng=rng)
        issued += per_conn
        new_connections += 1
        c.refill()
        sel.register(c.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, c)

    for _ in range(nconns):
        open_conn()
    start = time.monotonic()
    end = start + seconds

    while sel.get_map() and time.monotonic() < end:
        for key, mask in sel.select(0.5):
            c: LoadConn = key.data
            if mask & selectors.EVENT_WRITE and c.out:
                try:
                    n = c.sock.send(c.out)
                    del c.out[:n]
                except BlockingIOError:
                    pass
                except OSError:
                    errors += len(c.expect)
                    sel.unregister(c.sock)
                    c.sock.close()
                    open_conn()
                    continue
            if mask & selectors.EVENT_READ:
                try:
                    data = c.sock.recv(262144)
                except BlockingIOError:
                    data = None
                except OSError:
                    data = b""
                if data == b"":
                    errors += len(c.expect)
                    done += len(c.expect)
                    sel.unregister(c.sock)
                    c.sock.close()
                    open_conn()
                    continue
                if data:
                    c.inbuf += data
                    o, e = c.parse()
                    ok += o
                    errors += e
                    done += o + e
                    c.refill()
            if not c.expect and c.left == 0:
                sel.unregister(c.sock)
                c.sock.close()
                open_conn()
                continue
            want = selectors.EVENT_READ | (selectors.EVENT_WRITE if c.out else 0)
            if key.events != want:
                sel.modify(c.sock, want, c)
        if warm is None and done >= warm_at:
            warm = srv.snapshot()
        prober.maybe_probe()
    elapsed = time.monotonic() - start
    for key in list(sel.get_map().values()):
        key.fileobj.close()  # type: ignore[union-attr]
    sel.close()
    deadline = time.monotonic() + 10
    while fds(srv.pid) > fd0 and time.monotonic() < deadline:
        time.sleep(0.05)
    rss1, fd1 = srv.snapshot()
    warm = warm or (rss0, fd0)
    return {
        "requests answered": done,
        "ok": ok,
        "errors": errors,
        "connections used": new_connections,
        "time": f"{elapsed:.1f} s ({done / max(elapsed, 1e-9):.0f} req/s incl. probes)",
        "server RSS KiB start/warm(10%)/end": f"{rss0}/{warm[0]}/{rss1}",
        "server fds start/warm/end": f"{fd0}/{warm[1]}/{fd1}",
        "probe": prober.report(),
    }


def faults(srv: Server, root: Path, rounds: int, seconds: float) -> dict[str, object]:
    """Resets mid-response, hang-ups before reading, half PUTs cut off, truncation under a
    response; then checks the server still answers right and left nothing behind."""
    prober = Prober(srv.port, every_s=0.01)
    big = root / "big.bin"
    big.write_bytes(os.urandom(8 * 1024 * 1024))
    counts = {"reset": 0, "hangup": 0, "half-put": 0, "truncate": 0}
    end = time.monotonic() + seconds
    for i in range(rounds):
        if time.monotonic() > end:
            break
        kind = ("reset", "hangup", "half-put", "truncate")[i % 4]
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
        s.settimeout(5)
        s.connect(("127.0.0.1", srv.port))
        try:
            if kind == "reset":
                s.sendall(b"GET /big.bin HTTP/1.1\r\nHost: f\r\n\r\n")
                s.recv(4096)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
            elif kind == "hangup":
                s.sendall(b"GET /big.bin HTTP/1.1\r\nHost: f\r\n\r\n" * 3)
            elif kind == "half-put":
                s.sendall(b"PUT /small.txt HTTP/1.1\r\nHost: f\r\nContent-Length: 1000000\r\n\r\n")
                s.sendall(b"x" * 300_000)
            else:
                s.sendall(b"GET /big.bin HTTP/1.1\r\nHost: f\r\n\r\n")
                s.recv(4096)
                os.truncate(big, 1024 * 1024)
                got = 0
                while chunk := s.recv(1 << 20):
                    got += len(chunk)
                assert got < 8 * 1024 * 1024, "truncated file sent as whole"
                big.write_bytes(os.urandom(8 * 1024 * 1024))
        except OSError:
            pass
        finally:
            s.close()
        counts[kind] += 1
        prober.maybe_probe()
    deadline = time.monotonic() + 10
    while list(root.rglob(".evloop-upload-*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    leftovers = len(list(root.rglob(".evloop-upload-*")))
    small_ok = (root / "small.txt").read_bytes() == SMALL
    return {
        "injected": counts,
        "temp files left": leftovers,
        "small.txt intact after half PUTs": small_ok,
        "probe": prober.report(),
    }


def emfile(root: Path, seconds: float) -> dict[str, object]:
    """A server with RLIMIT_NOFILE=128 and 400 clients: CPU while starved, then recovery."""
    args = ["-p", "0", "-d", str(root), "-q"]
    proc = subprocess.Popen(
        ["prlimit", "--nofile=128:128", sys.executable, "-m", "evloop_httpd", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    port = int(proc.stdout.readline().rsplit(":", 1)[1].strip().rstrip("/"))
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(400)]
    time.sleep(0.5)
    c0, t0 = cpu_s(proc.pid), time.monotonic()
    time.sleep(seconds)
    cpu = cpu_s(proc.pid) - c0
    wall = time.monotonic() - t0
    fd_starved = fds(proc.pid)
    for s in socks:
        s.close()
    ok = 0
    for _ in range(20):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(b"GET /small.txt HTTP/1.1\r\nHost: e\r\nConnection: close\r\n\r\n")
                ok += s.recv(4096).startswith(b"HTTP/1.1 200 ")
        except OSError:
            pass
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=15)
    return {
        "server fds while starved": fd_starved,
        "server CPU while starved": f"{cpu:.2f} s in {wall:.1f} s",
        "requests ok after clients left": f"{ok}/20",
        "exit code": proc.returncode,
        "crashed": "Traceback" in err,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--soak", type=int, default=200_000, help="requests in the soak")
    ap.add_argument("--idle", type=int, default=10_000, help="idle connections to hold")
    ap.add_argument("--slowloris", type=int, default=500, help="slowloris connections")
    ap.add_argument("--budget", type=float, default=600, help="seconds for the whole run")
    args = ap.parse_args()
    raise_nofile(args.idle + 1024)
    tmp = Path(tempfile.mkdtemp(prefix="evloop-stress-"))
    root = tmp / "www"
    (root / "up").mkdir(parents=True)
    (root / "small.txt").write_bytes(SMALL)
    (root / "mid.bin").write_bytes(MID)
    started = time.monotonic()

    def left() -> float:
        return max(5.0, args.budget - (time.monotonic() - started))

    results: dict[str, dict[str, object]] = {}
    try:
        # The cap sits above the idle count so that probes still get in while they are held.
        cap = str(args.idle + 200)
        srv = Server(root, "--head-timeout", "3", "--idle-timeout", "60", "--max-connections", cap)
        before = srv.snapshot()
        results["slowloris (head timeout 3 s)"] = slowloris(srv, args.slowloris, min(15, left()))
        results["idle"] = idle(srv, args.idle, min(10, left()))
        results["soak"] = soak(srv, args.soak, min(420, left()))
        results["faults"] = faults(srv, root, 200, min(60, left()))
        after = srv.snapshot()
        code, err = srv.stop()
        results["main server"] = {
            "RSS KiB before/after all": f"{before[0]}/{after[0]}",
            "fds before/after all": f"{before[1]}/{after[1]}",
            "exit code on SIGTERM": code,
            "bugs logged": err.count("bug on connection"),
        }
        results["EMFILE (nofile=128, 400 clients)"] = emfile(root, 2.0)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for name, figures in results.items():
        print(f"== {name}")
        for k, v in figures.items():
            print(f"   {k}: {v}")
    print(f"total time: {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
