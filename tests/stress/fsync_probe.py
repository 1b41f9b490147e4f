"""Probe the loop's worst stall while a large PUT is written, with and without ``--fsync``.

Usage: ``python tests/stress/fsync_probe.py [--mib 512] [--rounds 1] [--dir DIR]``

For each mode (no sync, then ``--fsync``) it starts ``python -m evloop_httpd -p 0 -d TMP -q``
as a subprocess, with TMP under ``--dir`` (default: a temp folder next to this repository, so on
a real disk and not a tmpfs), uploads ``--mib`` MiB of body with one PUT from a thread, and
meanwhile times a probe GET of a small file on a keep-alive connection every 20 ms, from a
little before the upload starts until its response has arrived. It prints, per mode, the
upload's duration, the time from the body's last byte to its response (the commit, where a
whole-file sync would sit), and the probe latencies (count, p50, p99, max); the verdict line
gives the worst probe under ``--fsync`` against the one without, in the same run. The goal of
the project: no client pushes a concurrent probe's worst latency above 50 ms.

Bounded: one upload per mode and round, every wait has a deadline. Not collected by pytest.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SMALL = b"probe\n"
PROBE_EVERY_S = 0.020
DEADLINE_S = 120.0


def start(root: Path, *extra: str) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "evloop_httpd", "-p", "0", "-d", str(root), "-q", *extra],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("Serving "), line
    return proc, int(line.rsplit(":", 1)[1].strip().rstrip("/"))


def read_response(sock: socket.socket) -> bytes:
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before a head")
        buf += chunk
    head, body = buf.split(b"\r\n\r\n", 1)
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            need = int(value)
            while len(body) < need:
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionError("closed in a body")
                body += chunk
    return head


class Upload(threading.Thread):
    """One PUT of ``size`` bytes, as fast as the server takes it."""

    def __init__(self, port: int, size: int) -> None:
        super().__init__(daemon=True)
        self.port, self.size = port, size
        self.started = self.body_sent = self.answered = 0.0
        self.status = b""

    def run(self) -> None:
        block = bytes(range(256)) * 4096  # 1 MiB, not all zeros
        with socket.create_connection(("127.0.0.1", self.port), timeout=DEADLINE_S) as sock:
            self.started = time.monotonic()
            sock.sendall(
                b"PUT /big.bin HTTP/1.1\r\nHost: probe\r\n"
                + f"Content-Length: {self.size}\r\n\r\n".encode()
            )
            left = self.size
            while left:
                n = min(left, len(block))
                sock.sendall(block[:n])
                left -= n
            self.body_sent = time.monotonic()
            self.status = read_response(sock).split(b"\r\n", 1)[0]
            self.answered = time.monotonic()


def run_mode(base: Path, size: int, extra: tuple[str, ...]) -> dict[str, float]:
    root = Path(tempfile.mkdtemp(prefix="fsync-probe-", dir=base))
    (root / "small.txt").write_bytes(SMALL)
    proc, port = start(root, *extra)
    try:
        probe = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE_S)
        probe.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        request = b"GET /small.txt HTTP/1.1\r\nHost: probe\r\n\r\n"
        latencies: list[float] = []

        def one_probe() -> None:
            t0 = time.monotonic()
            probe.sendall(request)
            read_response(probe)
            latencies.append(time.monotonic() - t0)

        for _ in range(5):  # warm: connection, response cache
            one_probe()
        latencies.clear()
        upload = Upload(port, size)
        upload.start()
        end = time.monotonic() + DEADLINE_S
        while upload.is_alive() and time.monotonic() < end:
            one_probe()
            time.sleep(PROBE_EVERY_S)  # the probe's pace, not a synchronisation
        upload.join(1.0)
        assert not upload.is_alive(), "upload did not finish within the deadline"
        assert upload.status.split()[1] in (b"201", b"204"), upload.status
        assert (root / "big.bin").stat().st_size == size
        probe.close()
    finally:
        proc.terminate()
        proc.wait(DEADLINE_S)
        shutil.rmtree(root, ignore_errors=True)
    latencies.sort()
    return {
        "upload_s": upload.answered - upload.started,
        "commit_ms": 1000 * (upload.answered - upload.body_sent),
        "probes": len(latencies),
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))],
        "max_ms": 1000 * latencies[-1],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=512, help="upload size in MiB (512)")
    parser.add_argument("--rounds", type=int, default=1, help="uploads per mode (1)")
    parser.add_argument("--dir", type=Path, default=REPO.parent, help="where the root goes")
    args = parser.parse_args()
    size = args.mib * 1024 * 1024
    worst: dict[str, float] = {}
    for name, extra in (("no sync", ()), ("--fsync", ("--fsync",))):
        for r in range(args.rounds):
            m = run_mode(args.dir, size, extra)
            worst[name] = max(worst.get(name, 0.0), m["max_ms"])
            print(
                f"{name:8} round {r + 1}: upload {m['upload_s']:.2f} s, last byte to response "
                f"{m['commit_ms']:.1f} ms; probes {m['probes']:.0f}: p50 {m['p50_ms']:.1f} ms, "
                f"p99 {m['p99_ms']:.1f} ms, max {m['max_ms']:.1f} ms",
                flush=True,
            )
    ratio = worst["--fsync"] / worst["no sync"]
    print(
        f"worst probe: --fsync {worst['--fsync']:.1f} ms, no sync {worst['no sync']:.1f} ms "
        f"(x{ratio:.1f}); goal: under 50 ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
