"""Benchmark: ZipStream.next_chunk over a generated tree, against reading the same bytes as one
file, in MiB/s; and the process's peak RSS.

Theory of operation
-------------------
A tree is generated under a temporary folder: ``--big`` files of ``--big-mib`` MiB of random
bytes spread over folders, and ``--small`` files of 1-16 KiB. A reference file holds as many
bytes as all of them. Everything is read once first, so both sides read from the page cache
(what a server serving a popular folder sees) and the comparison is of our work, not the
disk's. Then, round-robin, ``--repeat`` times, best kept:

* ``zip``: a ZipStream of the tree pulled with ``next_chunk(--chunk-kib)`` until finished
  (walk, opens, pread, CRC-32, headers and central directory);
* ``pread``: the reference file read with ``os.pread`` in pieces of the same size;
* ``pread+crc``: the same, with ``zlib.crc32`` over each piece (the floor for any ZIP writer
  that computes CRCs, as a streaming one must).

Printed: MiB/s of file content for each and the ratios zip/pread and zip/(pread+crc), and the
peak RSS (``ru_maxrss``) before and after streaming: flat memory means the two are close
whatever the tree's size. ``--entries N`` adds N empty files, for the central directory's
share of memory. ``--huge`` instead streams one sparse file of 4 GiB + 5000 bytes (real ZIP64)
to a sparse copy and checks it with ``unzip -t`` (about 30-40 s: not in the test suite).

    python tests/benchmarks/zip_bench.py
    python tests/benchmarks/zip_bench.py --big 50 --big-mib 4 --small 5000 --entries 50000
    python tests/benchmarks/zip_bench.py --huge

``--e2e`` measures the server instead: a tree of ``--e2e-mib`` MiB (default 2048, in files of
128 MiB and a few folders) and one file of the same bytes, both served by one
``python -m evloop_httpd --listing`` subprocess; a client on loopback takes
``GET /tree/?download=zip`` and ``GET /reference.bin`` round-robin, ``--repeat`` times, best
kept, counting bytes without keeping them. Printed: MiB/s of each and their ratio, the
server's RSS sampled during the downloads and its peak (VmHWM) against before, and the load
average (the machine may be shared: numbers from a loaded machine are only comparable within
one run).

    python tests/benchmarks/zip_bench.py --e2e
    python tests/benchmarks/zip_bench.py --e2e --e2e-mib 512 --repeat 5

``--e2e --huge``: the 4 GiB + 5000 byte sparse file's folder as a ZIP *through the server*
(real ZIP64 on the wire), written sparse and checked with ``unzip -t``; the server's peak RSS.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(REPO_ROOT))  # the worktree's package, not an installed copy

from evloop_httpd.zipstream import ZipStream  # noqa: E402

MIB = 1024 * 1024


def make_tree(root: Path, big: int, big_mib: int, small: int, entries: int) -> int:
    """Fill ``root``; return the number of content bytes."""
    rng = random.Random(0)
    total = 0
    block = rng.randbytes(MIB)
    for i in range(big):
        folder = root / f"big{i % 10}"
        folder.mkdir(exist_ok=True)
        with open(folder / f"file{i}.bin", "wb") as f:
            for _ in range(big_mib):
                f.write(block)
        total += big_mib * MIB
    for i in range(small):
        folder = root / f"small{i % 50}" / f"sub{i % 7}"
        folder.mkdir(parents=True, exist_ok=True)
        size = rng.randint(1024, 16 * 1024)
        (folder / f"s{i}.txt").write_bytes(block[:size])
        total += size
    if entries:
        many = root / "many"
        many.mkdir()
        for i in range(entries):
            (many / f"e{i:06d}").touch()
    return total


def run_zip(root: Path, chunk: int) -> int:
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    produced = 0
    try:
        with ZipStream(fd, str(root), str(root)) as z:
            while not z.maybe_check():
                pass
            while not z.finished:
                produced += len(z.next_chunk(chunk))
    finally:
        os.close(fd)
    return produced


def run_pread(path: Path, chunk: int, crc: bool) -> int:
    fd = os.open(path, os.O_RDONLY)
    pos = 0
    value = 0
    try:
        while data := os.pread(fd, chunk, pos):
            if crc:
                value = zlib.crc32(data, value)
            pos += len(data)
    finally:
        os.close(fd)
    return pos


def best_seconds(fn: Callable[[], int], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def huge(tmp: Path) -> None:
    root = tmp / "huge"
    root.mkdir()
    size = 4 * 1024**3 + 5000
    with open(root / "huge", "wb") as f:
        f.truncate(size)
        f.seek(size - 4)
        f.write(b"tail")
    out = tmp / "huge.zip"
    zero = bytes(MIB)
    t0 = time.perf_counter()
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    with ZipStream(fd, str(root), str(root)) as z, open(out, "wb") as f:
        while not z.finished:
            chunk = z.next_chunk(MIB)
            if chunk == zero[: len(chunk)]:
                f.seek(len(chunk), os.SEEK_CUR)
            else:
                f.write(chunk)
        f.truncate()
    os.close(fd)
    took = time.perf_counter() - t0
    print(f"4 GiB sparse file streamed in {took:.1f} s ({size / MIB / took:.0f} MiB/s)")
    done = subprocess.run(["unzip", "-t", str(out)], capture_output=True, text=True)
    print(done.stdout.strip().splitlines()[-1], f"(unzip exit status {done.returncode})")
    print(f"peak RSS {peak_rss_mib():.1f} MiB")


def _proc_kib(pid: int, field: str) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    found = re.search(rf"{field}:\s+(\d+) kB", text)
    return int(found.group(1)) if found else 0


def _download(port: int, path: str, pid: int, samples: list[int]) -> tuple[int, float]:
    """GET ``path`` with Connection: close, read to the end; (bytes on the wire, seconds).
    Samples the server's RSS every 0.2 s meanwhile."""
    buf = bytearray(1 << 20)
    total = 0
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        t0 = time.perf_counter()
        next_sample = t0
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        while n := sock.recv_into(buf):
            total += n
            now = time.perf_counter()
            if now >= next_sample:
                samples.append(_proc_kib(pid, "VmRSS"))
                next_sample = now + 0.2
        took = time.perf_counter() - t0
    return total, took


def _start_server(root: Path) -> tuple[subprocess.Popen[str], int]:
    flags = ["-b", "127.0.0.1", "-p", "0", "--listing", "-q", "-d", str(root)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "evloop_httpd", *flags],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    return proc, int(line.rsplit(":", 1)[1].strip().rstrip("/"))


def e2e_huge(tmp: Path) -> None:
    root = tmp / "www"
    (root / "h").mkdir(parents=True)
    size = 4 * 1024**3 + 5000
    with open(root / "h" / "huge.bin", "wb") as f:
        f.truncate(size)
        f.seek(size - 4)
        f.write(b"tail")
    proc, port = _start_server(root)
    out = tmp / "huge.zip"
    zero = bytes(MIB)
    buf = bytearray(MIB)
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        with sock, open(out, "wb") as f:
            t0 = time.perf_counter()
            # HTTP/1.0: the archive unframed, delimited by the close, written as it comes.
            sock.sendall(b"GET /h/?download=zip HTTP/1.0\r\n\r\n")
            head = b""
            while b"\r\n\r\n" not in head:
                head += sock.recv(4096)
            head, _, rest = head.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200"), head
            f.write(rest)
            while n := sock.recv_into(buf):
                if buf[:n] == zero[:n]:
                    f.seek(n, os.SEEK_CUR)
                else:
                    f.write(buf[:n])
            f.truncate()
            took = time.perf_counter() - t0
        hwm = _proc_kib(proc.pid, "VmHWM")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    print(f"4 GiB sparse file's folder through the server in {took:.1f} s", end="")
    print(f" ({size / MIB / took:.0f} MiB/s); server peak RSS {hwm / 1024:.1f} MiB")
    done = subprocess.run(["unzip", "-t", str(out)], capture_output=True, text=True)
    print(done.stdout.strip().splitlines()[-1], f"(unzip exit status {done.returncode})")
    print(f"load average {os.getloadavg()[0]:.2f} ({os.cpu_count()} CPUs)")


def e2e(tmp: Path, mib: int, repeat: int) -> None:
    root = tmp / "www"
    tree = root / "tree"
    tree.mkdir(parents=True)
    block = random.Random(0).randbytes(MIB)
    per_file = 128
    files = max(1, mib // per_file)
    with open(root / "reference.bin", "wb") as ref:
        for i in range(files):
            folder = tree / f"d{i % 4}"
            folder.mkdir(exist_ok=True)
            with open(folder / f"f{i}.bin", "wb") as f:
                for _ in range(per_file):
                    f.write(block)
                    ref.write(block)
    content = files * per_file * MIB
    proc, port = _start_server(root)
    try:
        load0 = os.getloadavg()
        # Warm the page cache (and the server) once; not counted.
        _download(port, "/reference.bin", proc.pid, [])
        _download(port, "/tree/?download=zip", proc.pid, [])
        rss0 = _proc_kib(proc.pid, "VmRSS")
        hwm0 = _proc_kib(proc.pid, "VmHWM")
        zip_s = file_s = float("inf")
        samples: list[int] = []
        wire = 0
        for _ in range(repeat):
            wire, took = _download(port, "/tree/?download=zip", proc.pid, samples)
            zip_s = min(zip_s, took)
            size, took = _download(port, "/reference.bin", proc.pid, [])
            file_s = min(file_s, took)
            assert size > content, size  # the head, then every byte
        load1 = os.getloadavg()
        m = content / MIB
        print(
            f"tree: {files} files, {m:.0f} MiB of content; archive on the wire {wire / MIB:.1f} MiB"
        )
        print(f"zip download   {m / zip_s:8.0f} MiB/s  (best of {repeat}, {zip_s:.2f} s)")
        print(f"file download  {m / file_s:8.0f} MiB/s  (best of {repeat}, {file_s:.2f} s)")
        print(f"zip/file {file_s / zip_s:.2f}")
        print(
            f"server RSS: {rss0 / 1024:.1f} MiB before; during the zip downloads"
            f" {min(samples) / 1024:.1f}-{max(samples) / 1024:.1f} MiB ({len(samples)} samples);"
            f" peak {hwm0 / 1024:.1f} MiB before, {_proc_kib(proc.pid, 'VmHWM') / 1024:.1f} after"
        )
        print(
            f"load average {load0[0]:.2f} at the start, {load1[0]:.2f} at the end"
            f" ({os.cpu_count()} CPUs)"
        )
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--big", type=int, default=40, help="big files (default 40)")
    ap.add_argument("--big-mib", type=int, default=4, help="MiB each (default 4)")
    ap.add_argument("--small", type=int, default=2000, help="small files (default 2000)")
    ap.add_argument("--entries", type=int, default=0, help="extra empty files (default 0)")
    ap.add_argument("--chunk-kib", type=int, default=256, help="next_chunk size (default 256)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--huge", action="store_true", help="the 4 GiB sparse-file check instead")
    ap.add_argument("--e2e", action="store_true", help="through a server, against a file GET")
    ap.add_argument("--e2e-mib", type=int, default=2048, help="tree size for --e2e (2048)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="zip_bench."))
    try:
        if args.huge and args.e2e:
            e2e_huge(tmp)
            return
        if args.huge:
            huge(tmp)
            return
        if args.e2e:
            e2e(tmp, args.e2e_mib, args.repeat if args.repeat != 5 else 3)
            return
        root = tmp / "tree"
        root.mkdir()
        total = make_tree(root, args.big, args.big_mib, args.small, args.entries)
        ref = tmp / "reference.bin"
        with open(ref, "wb") as f:
            for i in range(total // MIB):
                f.write(random.Random(i).randbytes(MIB))
            f.write(bytes(total % MIB))
        chunk = args.chunk_kib * 1024
        rss_before = peak_rss_mib()
        archive = run_zip(root, chunk)  # warm the page cache, and check the size
        run_pread(ref, chunk, False)
        n = args.big + args.small + args.entries
        print(
            f"tree: {n} files, {total / MIB:.1f} MiB of content; archive {archive / MIB:.1f} MiB;"
            f" pieces of {args.chunk_kib} KiB"
        )
        zip_s = pread_s = crc_s = float("inf")
        for _ in range(args.repeat):
            zip_s = min(zip_s, best_seconds(lambda: run_zip(root, chunk), 1))
            pread_s = min(pread_s, best_seconds(lambda: run_pread(ref, chunk, False), 1))
            crc_s = min(crc_s, best_seconds(lambda: run_pread(ref, chunk, True), 1))
        mib = total / MIB
        print(f"zip        {mib / zip_s:8.0f} MiB/s")
        print(f"pread      {mib / pread_s:8.0f} MiB/s")
        print(f"pread+crc  {mib / crc_s:8.0f} MiB/s")
        print(f"zip/pread {pread_s / zip_s:.2f}   zip/(pread+crc) {crc_s / zip_s:.2f}")
        print(f"peak RSS: {rss_before:.1f} MiB before streaming, {peak_rss_mib():.1f} MiB after")
    finally:
        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
