"""Fairness under a pipelining attacker: can one client push another's latency past 50 ms?

Usage: ``python tests/stress/fairness.py [--seconds S] [--only KIND ...]``

It fills a temporary root (a folder of 10,000 files and 200 dotfiles, a small file), starts
``python -m evloop_httpd -p 0 -d ROOT -q --listing`` (default limits) as a subprocess on
127.0.0.1, and for each attack kind runs one attacker connection that keeps a pipeline of that
kind of request full for ``--seconds`` (default 3), while a probe in another process GETs a
small file on a fresh connection every 20 ms. It prints, per kind, the attacker's responses per
second and the probe's p50, p99 and worst latency, with PASS when the worst stays under 50 ms.
The first row is the baseline: a flood of cached GETs, the cheapest request there is.

With ``--nginx``, the same table follows for nginx (one worker process, ``autoindex on``, over
the same root) as a reference: what a listing flood costs a server written in C. nginx refuses
heads over 8 KiB lines / 32 KiB in all by default, so its "16k empties" rows measure its 400s.

Every run is bounded: a fixed number of kinds, each a few seconds, loopback only. Not collected
by pytest. On a shared machine, read the numbers next to the load average it prints.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SMALL = b"hello, probe\n"
PROBE_EVERY_S = 0.020
TARGET_MS = 50.0
FOLDER_ENTRIES = 10_000
DOTFILES = 200
PIPELINE_BYTES = 256 * 1024  # requests kept queued towards the server at any time


def req(target: str, extra: str = "", method: str = "GET") -> bytes:
    return f"{method} {target} HTTP/1.1\r\nHost: a\r\n{extra}\r\n".encode()


def attacks() -> dict[str, bytes]:
    """One pipeline unit per kind: the attacker sends it over and over."""
    deep = "/x" * 3_900  # within the 8 KiB request line: one lstat per segment in realpath
    empties = "," * 16_000  # within the 32 KiB head
    mixed = b"".join(
        [
            req("/small.txt"),
            req("/big/"),
            req("/nope"),
            req("/small.txt", "Range: bytes=0-1,3-4\r\n"),
            req("/big/", method="HEAD"),
            req(deep),
            req("/small.txt", f"If-None-Match: {empties}\r\n"),
            req("/small.txt", method="HEAD"),
        ]
    )
    return {
        "baseline: cached GET": req("/small.txt"),
        "listing GET": req("/big/"),
        "listing HEAD": req("/big/", method="HEAD"),
        "listing If-None-Match": req("/big/", 'If-None-Match: "x"\r\n'),
        "deep path (3,900 segments)": req(deep),
        "If-None-Match 16k empties": req("/small.txt", f"If-None-Match: {empties}\r\n"),
        "Accept-Encoding 16k empties": req("/small.txt", f"Accept-Encoding: {empties}\r\n"),
        "Range 16k empties": req("/small.txt", f"Range: bytes=0-1{empties}\r\n"),
        "404 flood": req("/nope"),
        "PUT of 1-byte chunks": (
            b"PUT /up.bin HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"1\r\nx\r\n" * 20_000
            + b"0\r\n\r\n"
        ),
        "mixed pipeline": mixed,
    }


def fill(root: Path) -> None:
    (root / "small.txt").write_bytes(SMALL)
    big = root / "big"
    big.mkdir()
    for i in range(FOLDER_ENTRIES):
        (big / f"file-{i:05d}.txt").touch()
    for i in range(DOTFILES):
        (big / f".hidden-{i:03d}").touch()


class Server:
    def __init__(self, root: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "evloop_httpd", "-p", "0", "-d", str(root), "-q", "--listing"],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.startswith("Serving "), line
        self.port = int(line.rsplit(":", 1)[1].strip().rstrip("/"))

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()


class Nginx(Server):
    """nginx as one foreground process with autoindex on, for the reference table."""

    def __init__(self, root: Path, work: Path) -> None:
        with socket.socket() as s:  # nginx cannot report a port 0 choice: pick one first
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        temp = work / "temp"
        temp.mkdir(parents=True, exist_ok=True)
        conf = work / "nginx.conf"
        conf.write_text(
            f"""daemon off;
master_process off;
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    keepalive_requests 10000000;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    server {{
        listen 127.0.0.1:{self.port};
        root {root};
        autoindex on;
    }}
}}
"""
        )
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        self.proc = subprocess.Popen(
            [binary, "-p", str(work), "-c", str(conf), "-e", str(work / "error.log")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise RuntimeError("nginx did not start") from None
                time.sleep(0.05)  # polling for start-up, bounded by the deadline


def table(srv: Server, kinds: dict[str, bytes], seconds: float) -> int:
    """Run every kind against ``srv`` and print its rows; returns how many failed."""
    failed = 0
    print(
        f"{'attack':30} {'resp/s':>9} {'probes':>6} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'worst ms':>9}  < {TARGET_MS:g} ms"
    )
    for name, unit in kinds.items():
        r = run_kind(srv.port, unit, seconds)
        ok = r["failures"] == 0 and r["worst"] < TARGET_MS  # type: ignore[operator]
        failed += not ok
        print(
            f"{name:30} {r['rate']:9.0f} {r['n']:6d} {r['p50']:8.2f} {r['p99']:8.2f} "
            f"{r['worst']:9.2f}  {'PASS' if ok else 'FAIL'}"
            + (f" ({r['failures']} probe failures)" if r["failures"] else ""),
            flush=True,
        )
    return failed


def probe(port: int, seconds: float) -> None:
    """The probe process: a GET of the small file on a fresh connection every 20 ms. Prints
    one JSON line: the latencies in ms and the number of failures."""
    samples: list[float] = []
    failures = 0
    end = time.monotonic() + seconds
    next_at = time.monotonic()
    want = b"HTTP/1.1 200 "
    while time.monotonic() < end:
        delay = next_at - time.monotonic()
        if delay > 0:
            time.sleep(delay)  # pacing, not synchronisation
        next_at += PROBE_EVERY_S
        start = time.perf_counter()
        try:
            # No "Connection: close": nginx then leaves Nagle on, and its head and body
            # segments wait out a delayed ACK. The response is read to its Content-Length.
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                s.sendall(b"GET /small.txt HTTP/1.1\r\nHost: p\r\n\r\n")
                data = b""
                while not data.endswith(SMALL) and len(data) < 4096:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    data += chunk
        except OSError:
            failures += 1
            continue
        if not data.startswith(want) or not data.endswith(SMALL):
            failures += 1
            continue
        samples.append((time.perf_counter() - start) * 1000)
        next_at = max(next_at, time.monotonic())  # a slow probe does not bunch up the next ones
    print(json.dumps({"ms": samples, "failures": failures}), flush=True)


def attack(port: int, unit: bytes, probe_proc: subprocess.Popen[str]) -> tuple[int, float]:
    """Keep a pipeline of ``unit`` full on one connection until the probe is done.

    Returns (responses seen, seconds). Responses are counted by their status lines.
    """
    blob = unit * max(1, PIPELINE_BYTES // len(unit))
    sel = selectors.DefaultSelector()
    sock: socket.socket | None = None
    responses = 0
    carry = b""
    start = time.monotonic()
    out = memoryview(blob)
    try:
        while probe_proc.poll() is None and time.monotonic() - start < 60:
            if sock is None:
                sock = socket.create_connection(("127.0.0.1", port))
                sock.setblocking(False)
                sel.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
                out = memoryview(blob)
            for _key, mask in sel.select(0.05):
                if mask & selectors.EVENT_WRITE:
                    try:
                        n = sock.send(out)
                    except BlockingIOError:
                        n = 0
                    except OSError:
                        n = -1
                    if n > 0:
                        out = out[n:] if n < len(out) else memoryview(blob)
                if mask & selectors.EVENT_READ:
                    try:
                        data = sock.recv(1 << 20)
                    except BlockingIOError:
                        continue
                    except OSError:
                        data = b""
                    if not data:  # closed by the server: start over on a new connection
                        sel.unregister(sock)
                        sock.close()
                        sock = None
                        carry = b""
                        break
                    chunk = carry + data
                    responses += chunk.count(b"HTTP/1.1 ")
                    carry = chunk[-8:]
                    responses -= carry.count(b"HTTP/1.1 ")
    finally:
        if sock is not None:
            sock.close()
        sel.close()
    return responses, time.monotonic() - start


def run_kind(port: int, unit: bytes, seconds: float) -> dict[str, object]:
    probe_proc = subprocess.Popen(
        [sys.executable, __file__, "--probe", str(port), "--seconds", str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
    )
    responses, took = attack(port, unit, probe_proc)
    out, _ = probe_proc.communicate(timeout=60)
    result = json.loads(out)
    ms = sorted(result["ms"])
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))] if ms else float("nan")
    return {
        "rate": responses / took if took else 0.0,
        "n": len(ms),
        "failures": result["failures"],
        "p50": statistics.median(ms) if ms else float("nan"),
        "p99": p99,
        "worst": ms[-1] if ms else float("nan"),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=3.0, help="per attack kind (at most 20)")
    ap.add_argument("--only", nargs="*", help="run only kinds whose name contains one of these")
    ap.add_argument("--nginx", action="store_true", help="then the same against nginx autoindex")
    ap.add_argument("--probe", type=int, help=argparse.SUPPRESS)  # internal: the probe process
    args = ap.parse_args()
    seconds = min(args.seconds, 20.0)
    if args.probe is not None:
        probe(args.probe, seconds)
        return 0
    kinds = attacks()
    if args.only:
        kinds = {k: v for k, v in kinds.items() if any(o in k for o in args.only)}
    tmp = Path(tempfile.mkdtemp(prefix="evloop-fairness-"))
    failed = 0
    try:
        fill(tmp)
        srv = Server(tmp)
        try:
            print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
            print(f"{len(os.sched_getaffinity(0))} CPUs; {seconds:g} s per kind; probe every 20 ms")
            print()
            failed += table(srv, kinds, seconds)
            print()
            print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        finally:
            srv.stop()
        if args.nginx:
            print("\nnginx (reference, not judged):")
            ngx = Nginx(tmp, tmp / ".nginx")
            try:
                table(ngx, kinds, seconds)
            finally:
                ngx.stop()
            print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
