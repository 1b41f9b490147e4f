"""Upload fairness: does one client uploading as fast as it can slow anyone else down?

Usage: ``python tests/stress/upload_fairness.py [--seconds S] [--gib G] [--repeat N] [-- ARGS]``

Starts ``python -m evloop_httpd -p 0 -d TMP -q --max-upload ...`` (plus ARGS, e.g.
``--no-splice``) on 127.0.0.1 and runs, for each of ``--repeat`` rounds: a *baseline* phase
with only the probe, then an *upload* phase in which a child process PUTs a ``--gib`` GiB body
with ``Content-Length`` as fast as the loopback takes it (the spliced path, unless ARGS turn it
off). Throughout, the probe GETs a small file on a fresh connection every 20 ms and times it.
It prints each phase's probe count, p50, p99 and worst, and PASS when the worst stays under
50 ms (the goal fairness.py sets for request floods).

History: the splice path first moved 16 pipe-fulls (16 MiB into the page cache) per turn; the
worst probe during an upload was 70-80 ms. A turn now ends at the loop's work budget.

Every phase is bounded in time, the upload's child is killed at its end, the temporary root is
removed, loopback only. Not collected by pytest. On a shared machine, read the numbers next to
the load average it prints; the page cache's writeback of earlier rounds overlaps later ones.
"""

from __future__ import annotations

import argparse
import os
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
PROBE_EVERY_S = 0.020
TARGET_MS = 50.0
DEADLINE_S = 10.0


def start(root: Path, extra: list[str]) -> tuple[subprocess.Popen[str], int]:
    argv = [sys.executable, "-m", "evloop_httpd", "-p", "0", "-d", str(root), "-b", "127.0.0.1"]
    argv += ["-q", "--max-upload", "64G", *extra]
    proc = subprocess.Popen(
        argv,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()  # "Serving ROOT on http://127.0.0.1:PORT/"
    if "http://" not in line:
        proc.kill()
        raise SystemExit(f"the server did not start: {line!r}")
    return proc, int(line.rsplit(":", 1)[1].strip().rstrip("/"))


def uploader(port: int, size: int) -> int:
    """Fork a child that PUTs ``size`` bytes as fast as it can; returns its pid."""
    pid = os.fork()
    if pid:
        return pid
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE_S)
        head = f"PUT /up.bin HTTP/1.1\r\nHost: a\r\nContent-Length: {size}\r\n\r\n"
        sock.sendall(head.encode())
        block = os.urandom(1 << 20)
        left = size
        while left:
            left -= sock.send(block[: min(left, len(block))])
        sock.recv(1024)
    finally:
        os._exit(0)


def probe(port: int, seconds: float) -> list[float]:
    took: list[float] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t0 = time.perf_counter()
        with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE_S) as c:
            c.sendall(b"GET /small.txt HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            while c.recv(4096):
                pass
        took.append((time.perf_counter() - t0) * 1000)
        time.sleep(PROBE_EVERY_S)
    return took


def row(name: str, took: list[float]) -> str:
    took = sorted(took)
    p99 = took[max(0, int(len(took) * 0.99) - 1)]
    verdict = "PASS" if took[-1] < TARGET_MS else "FAIL"
    return (
        f"{name:10s} probes {len(took):4d}  p50 {statistics.median(took):6.2f} ms  "
        f"p99 {p99:6.2f} ms  worst {took[-1]:6.2f} ms  {verdict}"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=4.0, help="per phase (at most 20)")
    ap.add_argument("--gib", type=float, default=3.0, help="body size of the upload")
    ap.add_argument("--repeat", type=int, default=2, help="rounds (at most 5)")
    ap.add_argument("server_args", nargs="*", help="after --: extra server options")
    args = ap.parse_args()
    seconds, repeat = min(args.seconds, 20.0), min(args.repeat, 5)
    root = Path(tempfile.mkdtemp(prefix="upload-fairness-"))
    (root / "small.txt").write_bytes(b"hello, probe\n")
    proc, port = start(root, args.server_args)
    worst = 0.0
    try:
        print(f"server options: {args.server_args or '(defaults)'}; load {os.getloadavg()[0]:.2f}")
        for r in range(repeat):
            print(row(f"baseline{r + 1}", probe(port, seconds)))
            pid = uploader(port, int(args.gib * (1 << 30)))
            try:
                took = probe(port, seconds)
            finally:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            worst = max(worst, max(took))
            print(row(f"upload{r + 1}", took))
        print(f"load average after: {os.getloadavg()[0]:.2f}")
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(DEADLINE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(root, ignore_errors=True)
    return 0 if worst < TARGET_MS else 1


if __name__ == "__main__":
    sys.exit(main())
