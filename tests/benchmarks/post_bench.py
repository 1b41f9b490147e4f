"""POST form uploads against PUT, and the loop's latency while a form of tiny parts arrives.

Starts ``python -m evloop_httpd`` on 127.0.0.1 over a temp folder, then, in the same run:

* uploads one file of ``--mib`` MiB by PUT and by POST (one multipart part), best of
  ``--rounds``, and prints MiB/s and the POST/PUT ratio (the multipart parser and the per-part
  work are the difference);
* uploads ``--parts`` tiny files in one POST body while a probe GETs a small file every 20 ms,
  and prints parts/s and the probe's median and worst latency (each step acts on at most
  ``form_upload.PARTS_PER_STEP`` parts, so the probe waits for at most a step, not the form).

Nothing asserts; all traffic is on loopback, bounded in size and count.

    python tests/benchmarks/post_bench.py                # 64 MiB, 3 rounds, 5,000 parts
    python tests/benchmarks/post_bench.py --mib 256 --parts 20000
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BOUNDARY = b"benchBoundary7f3a"
CHUNK = 1 << 20


def start(root: Path) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "evloop_httpd", "-p", "0", "-d", str(root), "--max-upload", "4G"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    return proc, int(line.rsplit(":", 1)[1].strip().rstrip("/"))


def read_reply(sock: socket.socket) -> int:
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("closed")
        buf += data
    return int(buf.split(b" ", 2)[1])


def send_body(port: int, head: bytes, prefix: bytes, size: int, suffix: bytes) -> float:
    block = bytes(range(256)) * (CHUNK // 256)
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        t0 = time.perf_counter()
        sock.sendall(head + prefix)
        left = size
        while left:
            n = min(left, CHUNK)
            sock.sendall(block[:n])
            left -= n
        sock.sendall(suffix)
        status = read_reply(sock)
        elapsed = time.perf_counter() - t0
    assert status in (201, 204, 303), status
    return elapsed


def put(port: int, size: int) -> float:
    head = b"PUT /put.bin HTTP/1.1\r\nHost: b\r\nContent-Length: %d\r\n\r\n" % size
    return send_body(port, head, b"", size, b"")


def post(port: int, size: int) -> float:
    prefix = (
        b"--" + BOUNDARY + b'\r\nContent-Disposition: form-data; name="overwrite"\r\n\r\n1\r\n'
        b"--" + BOUNDARY + b'\r\nContent-Disposition: form-data; name="file"; '
        b'filename="post.bin"\r\nContent-Type: application/octet-stream\r\n\r\n'
    )
    suffix = b"\r\n--" + BOUNDARY + b"--\r\n"
    head = (
        b"POST / HTTP/1.1\r\nHost: b\r\nContent-Length: %d\r\n"
        b"Content-Type: multipart/form-data; boundary=%s\r\n\r\n"
        % (len(prefix) + size + len(suffix), BOUNDARY)
    )
    return send_body(port, head, prefix, size, suffix)


def probe(port: int, stop: threading.Event, out: list[float]) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        while not stop.is_set():
            t0 = time.perf_counter()
            sock.sendall(b"GET /probe.txt HTTP/1.1\r\nHost: b\r\n\r\n")
            buf = b""
            while not buf.endswith(b"probe\n"):
                buf += sock.recv(4096)
            out.append(time.perf_counter() - t0)
            stop.wait(0.02)


def tiny_parts(port: int, count: int) -> tuple[float, list[float]]:
    body = (
        b"".join(
            b"--" + BOUNDARY + b'\r\nContent-Disposition: form-data; name="file"; filename="t%d"'
            b"\r\n\r\n%d\r\n" % (i, i)
            for i in range(count)
        )
        + b"--"
        + BOUNDARY
        + b"--\r\n"
    )
    head = (
        b"POST /tiny/ HTTP/1.1\r\nHost: b\r\nContent-Length: %d\r\n"
        b"Content-Type: multipart/form-data; boundary=%s\r\n\r\n" % (len(body), BOUNDARY)
    )
    stop = threading.Event()
    latencies: list[float] = []
    prober = threading.Thread(target=probe, args=(port, stop, latencies))
    prober.start()
    time.sleep(0.1)  # a few probes before, as a baseline
    with socket.create_connection(("127.0.0.1", port), timeout=120) as sock:
        t0 = time.perf_counter()
        sock.sendall(head + body)
        status = read_reply(sock)
        elapsed = time.perf_counter() - t0
    stop.set()
    prober.join()
    assert status == 303, status
    return elapsed, latencies


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--parts", type=int, default=5000)
    args = ap.parse_args()
    size = args.mib << 20
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "tiny").mkdir()
        (root / "probe.txt").write_bytes(b"probe\n")
        proc, port = start(root)
        try:
            t_put = min(put(port, size) for _ in range(args.rounds))
            t_post = min(post(port, size) for _ in range(args.rounds))
            assert os.path.getsize(root / "post.bin") == size
            print(f"PUT  {args.mib} MiB: {args.mib / t_put:8.1f} MiB/s")
            print(f"POST {args.mib} MiB: {args.mib / t_post:8.1f} MiB/s")
            print(f"POST/PUT throughput ratio: {t_put / t_post:.2f}")
            elapsed, lat = tiny_parts(port, args.parts)
            stored = len(os.listdir(root / "tiny"))
            ms = sorted(x * 1000 for x in lat)
            print(
                f"POST of {args.parts} tiny parts: {elapsed:.2f} s, {stored / elapsed:,.0f} "
                f"parts/s; probe GET during it: median {statistics.median(ms):.2f} ms, "
                f"worst {ms[-1]:.2f} ms over {len(ms)} probes"
            )
        finally:
            proc.terminate()
            proc.wait(10)


if __name__ == "__main__":
    main()
