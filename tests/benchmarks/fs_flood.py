"""A probe's latency while one client floods the server with listing and deep-path requests.

Starts ``python -m evloop_httpd --listing`` on a temporary root with a 10,000-entry folder. One
client process pipelines, in batches of 16, a mix of: GET, HEAD and 304-revalidation of that
folder's listing (HTML and JSON), and GETs of a 4,000-segment path. Meanwhile this process
times a GET of a small file on a fresh connection every 5 ms. Prints the probe's p50/p99/max
with and without the flood, and how many flood responses were served. Bounded: a few seconds.
With ``--nginx``, the same run against nginx (one worker, ``autoindex on``), as the reference
the issue names (nginx sends autoindex pages without an ETag, so its "304s" are full pages).
Usage: PYTHONPATH=$PWD python tests/benchmarks/fs_flood.py [--seconds 5] [--nginx]
"""

from __future__ import annotations

import argparse
import multiprocessing
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SMALL = b"small\n"
DEEP = "/" + "a/" * 4000 + "x"


def start(root: Path) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "evloop_httpd", "-p", "0", "-d", str(root), "-q", "--listing"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("Serving "), line
    return proc, int(line.rsplit(":", 1)[1].strip().rstrip("/"))


def start_nginx(root: Path, work: Path) -> tuple[subprocess.Popen[str], int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conf = work / "nginx.conf"
    conf.write_text(
        f"""daemon off;
master_process off;
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {work}/body;
    proxy_temp_path {work}/proxy;
    fastcgi_temp_path {work}/fastcgi;
    uwsgi_temp_path {work}/uwsgi;
    scgi_temp_path {work}/scgi;
    keepalive_requests 10000000;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        autoindex on;
    }}
}}
"""
    )
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    cmd = [binary, "-p", str(work), "-c", str(conf), "-e", str(work / "nginx-error.log")]
    proc = subprocess.Popen(cmd, text=True)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("nginx did not start")


def read_responses(sock: socket.socket, buf: bytes, n: int, heads: list[bool]) -> bytes:
    """Read ``n`` responses (``heads[i]``: a HEAD, no body); return what is left over."""
    for i in range(n):
        while b"\r\n\r\n" not in buf:
            buf += sock.recv(1 << 20)
        head, _, buf = buf.partition(b"\r\n\r\n")
        m = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
        length = int(m.group(1)) if m and not heads[i] and b" 304 " not in head[:13] else 0
        while len(buf) < length:
            buf += sock.recv(1 << 20)
        buf = buf[length:]
    return buf


def flood(port: int, seconds: float, served: multiprocessing.Value) -> None:  # type: ignore[type-arg]
    sock = socket.create_connection(("127.0.0.1", port))
    first = b"GET /big/ HTTP/1.1\r\nHost: f\r\n\r\n"
    sock.sendall(first)
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += sock.recv(1 << 20)
    m = re.search(rb"(?i)\r\netag: *(\S+)", buf.partition(b"\r\n\r\n")[0])
    etag = m.group(1) if m else b'"none"'
    buf = read_responses(sock, buf, 1, [False])
    mix = [
        (b"GET /big/ HTTP/1.1\r\nHost: f\r\n\r\n", False),
        (b"HEAD /big/ HTTP/1.1\r\nHost: f\r\n\r\n", True),
        (b"GET /big/ HTTP/1.1\r\nHost: f\r\nIf-None-Match: " + etag + b"\r\n\r\n", False),
        (b"GET /big/ HTTP/1.1\r\nHost: f\r\nAccept: application/json\r\n\r\n", False),
        (f"GET {DEEP} HTTP/1.1\r\nHost: f\r\n\r\n".encode(), False),
    ]
    end = time.monotonic() + seconds
    i = 0
    while time.monotonic() < end:
        batch = [mix[(i + k) % len(mix)] for k in range(16)]
        i += 16
        sock.sendall(b"".join(r for r, _ in batch))
        buf = read_responses(sock, buf, len(batch), [h for _, h in batch])
        with served.get_lock():
            served.value += len(batch)
    sock.close()


def probe(port: int, seconds: float) -> list[float]:
    samples = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t0 = time.perf_counter()
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"GET /small.txt HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        assert data.startswith(b"HTTP/1.1 200 ") and data.endswith(SMALL), data[:100]
        samples.append((time.perf_counter() - t0) * 1000)
        time.sleep(0.005)
    return samples


def report(name: str, ms: list[float]) -> float:
    ms = sorted(ms)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    print(
        f"{name:14} n={len(ms):5} p50={statistics.median(ms):6.2f} ms"
        f" p99={p99:6.2f} ms max={ms[-1]:6.2f} ms"
    )
    return ms[-1]


def run(name: str, proc: subprocess.Popen[str], port: int, seconds: float) -> None:
    print(f"--- {name}")
    try:
        report("probe alone", probe(port, min(2.0, seconds)))
        served = multiprocessing.Value("q", 0)
        p = multiprocessing.Process(target=flood, args=(port, seconds, served))
        p.start()
        time.sleep(0.2)  # let the flood get going
        worst = report("probe + flood", probe(port, seconds - 0.4))
        p.join(seconds + 10)
        print(f"flood served {served.value} requests ({served.value / seconds:.0f}/s)")
        print(f"target: worst probe under 50 ms: {'met' if worst < 50 else 'NOT met'}")
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--nginx", action="store_true", help="also run against nginx's autoindex")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "www"
        root.mkdir()
        (root / "small.txt").write_bytes(SMALL)
        (root / "a").mkdir()
        big = root / "big"
        big.mkdir()
        for i in range(10_000):
            (big / f"file-{i:05d}.txt").write_bytes(b"y" * (i % 100))
        run("evloop_httpd", *start(root), args.seconds)
        if args.nginx:
            work = Path(tmp) / "nginx"
            work.mkdir()
            run("nginx autoindex", *start_nginx(root, work), args.seconds)


if __name__ == "__main__":
    main()
