"""Password flood: does a client guessing passwords slow anyone else down?

Usage: ``python tests/stress/auth_flood.py [--seconds S] [--conns N] [--addresses N]``

Starts ``python -m evloop_httpd -p 0 -d TMP -q --auth-file ACC`` with one account hashed at the
default (real) cost, then runs three bounded phases of ``--seconds`` each:

1. *baseline*: only the probe;
2. *flood, one address*: ``--conns`` keep-alive connections from 127.0.0.2 send PUTs with a new
   wrong password each, as fast as the server answers (the per-address lockout turns them into
   cheap 429s after a few checks);
3. *flood, many addresses*: the same from ``--addresses`` loopback addresses (127.0.1.x), so the
   lockout alone cannot help and the global budget of checks per second must (503s).

Before the password floods, a *reference* phase floods the same way with plain GETs of a missing
file (404s): any flood of requests costs the loop the work of answering them, and on a shared
two-core machine the flood client competes for the CPU too, so the question is whether a
password flood costs the other clients *more* than a request flood of the same shape. The
"x ref p99" column is the probe's p99 divided by the reference phase's (the baseline's for the
reference itself).

Throughout, a probe on 127.0.0.1 times a plain GET on a fresh connection every 5 ms, and a
second probe times an authenticated PUT with the right (remembered) credentials. It prints the
probes' p50/p99/worst per phase and the ratio to the baseline, the flood's answers by status,
and the CPU seconds of the server and of its verifier process. Every phase is bounded in time;
the flood runs in a child process so that its own Python work does not disturb the probe's
measurement. Not collected by pytest.
"""

from __future__ import annotations

import argparse
import base64
import multiprocessing as mp
import os
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from evloop_httpd.hasher import make_hash  # noqa: E402

USER, PASSWORD = "alice", "correct horse:battery"


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(x) for x in f.read().split()]


def auth_header(user: str, password: str) -> bytes:
    return b"Authorization: Basic " + base64.b64encode(f"{user}:{password}".encode()) + b"\r\n"


def read_response(sock: socket.socket) -> int:
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    head, rest = buf.split(b"\r\n\r\n", 1)
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.lower() == b"content-length":
            length = int(value)
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        rest += chunk
    return int(head.split(b" ", 2)[1])


def flood(
    port: int, sources: list[str], conns: int, seconds: float, plain: bool, out: mp.Queue
) -> None:
    """Wrong passwords (or, with ``plain``, GETs of a missing file: the reference load) as fast
    as the server answers, on ``conns`` keep-alive connections."""
    sel = selectors.DefaultSelector()
    statuses: Counter[int] = Counter()
    counter = 0
    bufs: dict[socket.socket, bytes] = {}

    def request() -> bytes:
        nonlocal counter
        counter += 1
        if plain:
            return b"GET /missing HTTP/1.1\r\nHost: t\r\n\r\n"
        return (
            b"PUT /x HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n"
            + auth_header(USER, f"guess-{counter}")
            + b"\r\n"
        )

    def open_one(i: int) -> None:
        sock = socket.socket()
        sock.bind((sources[i % len(sources)], 0))
        sock.connect(("127.0.0.1", port))
        sock.setblocking(False)
        sock.send(request())
        bufs[sock] = b""
        sel.register(sock, selectors.EVENT_READ, i)

    for i in range(conns):
        open_one(i)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for key, _ in sel.select(0.05):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            try:
                chunk = sock.recv(65536)
            except OSError:
                chunk = b""
            buf = bufs[sock] + chunk
            closed = not chunk
            while b"\r\n\r\n" in buf:
                head, rest = buf.split(b"\r\n\r\n", 1)
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.lower() == b"content-length":
                        length = int(value)
                if len(rest) < length:
                    break
                statuses[int(head.split(b" ", 2)[1])] += 1
                buf = rest[length:]
                if not closed:
                    try:
                        sock.send(request())
                    except OSError:
                        closed = True
            bufs[sock] = buf
            if closed:
                sel.unregister(sock)
                sock.close()
                del bufs[sock]
                open_one(key.data)
    for sock in list(bufs):
        sock.close()
    out.put(dict(statuses))


def probe(port: int, seconds: float) -> tuple[list[float], list[float]]:
    """(plain GET latencies, authenticated PUT latencies) in ms over ``seconds``."""
    plain: list[float] = []
    authed: list[float] = []
    good = auth_header(USER, PASSWORD)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t0 = time.perf_counter()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"GET /small.txt HTTP/1.1\r\nHost: t\r\n\r\n")
            assert read_response(s) == 200
        plain.append((time.perf_counter() - t0) * 1000)
        t0 = time.perf_counter()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(
                b"PUT /mine.txt HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n" + good + b"\r\nok"
            )
            status = read_response(s)
            assert status in (201, 204), status
        authed.append((time.perf_counter() - t0) * 1000)
        time.sleep(0.005)
    return plain, authed


def summary(ms: list[float]) -> tuple[float, float, float]:
    ms = sorted(ms)
    return ms[len(ms) // 2], ms[min(len(ms) - 1, int(len(ms) * 0.99))], ms[-1]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5.0, help="length of each phase (max 60)")
    ap.add_argument("--conns", type=int, default=32, help="flood connections (max 500)")
    ap.add_argument("--addresses", type=int, default=200, help="flood addresses in phase 3")
    args = ap.parse_args()
    seconds = min(args.seconds, 60.0)
    conns = min(args.conns, 500)
    addresses = min(args.addresses, 250)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "www"
        root.mkdir()
        (root / "small.txt").write_bytes(b"hello\n")
        acc = Path(tmp) / "accounts"
        acc.write_text(f"{USER}:{make_hash(PASSWORD.encode())}\n")
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        proc = subprocess.Popen(
            [sys.executable, "-m", "evloop_httpd", "-p", "0", "-d", str(root), "-q",
             "--auth-file", str(acc)],
            stdout=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            port = int(line.rsplit(":", 1)[1].strip().rstrip("/"))
            kids = children(proc.pid)
            print(f"server pid {proc.pid}, verifier pid(s) {kids}; phases of {seconds:g} s")
            many = [f"127.0.1.{i + 1}" for i in range(addresses)]
            phases = [
                ("baseline (probe only)", [], True),
                ("reference: GET flood, 1 ad.", ["127.0.0.2"], True),
                ("password flood, 1 address", ["127.0.0.2"], False),
                (f"password flood, {addresses} ad.", many, False),
            ]
            base = None
            print(
                f"{'phase':<28}{'GET p50':>9}{'p99':>8}{'worst':>8}{'x ref p99':>11}"
                f"{'authPUT p50':>12}{'p99':>8}{'worst':>8}  flood answers; cpu s server/verifier"
            )
            for name, sources, plain_flood in phases:
                cpu0 = (cpu_s(proc.pid), sum(cpu_s(k) for k in kids))
                q: mp.Queue = mp.Queue()
                worker = None
                if sources:
                    worker = mp.Process(
                        target=flood, args=(port, sources, conns, seconds, plain_flood, q)
                    )
                    worker.start()
                    time.sleep(0.3)  # let the flood reach full speed before measuring
                plain, authed = probe(port, seconds - (0.3 if sources else 0))
                answers = q.get(timeout=seconds + 30) if worker else {}
                if worker:
                    worker.join(30)
                cpu1 = (cpu_s(proc.pid), sum(cpu_s(k) for k in kids))
                g, a = summary(plain), summary(authed)
                ratio = g[1] / base[1] if base is not None else 1.0
                if base is None or name.startswith("reference"):
                    base = g  # password floods are compared with the reference flood
                total = sum(answers.values())
                print(
                    f"{name:<28}{g[0]:>9.2f}{g[1]:>8.2f}{g[2]:>8.2f}{ratio:>11.2f}"
                    f"{a[0]:>12.2f}{a[1]:>8.2f}{a[2]:>8.2f}  "
                    f"{total} ({total / seconds:.0f}/s) {dict(sorted(answers.items()))}; "
                    f"{cpu1[0] - cpu0[0]:.1f}/{cpu1[1] - cpu0[1]:.1f}"
                )
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
