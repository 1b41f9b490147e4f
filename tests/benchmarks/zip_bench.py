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
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--big", type=int, default=40, help="big files (default 40)")
    ap.add_argument("--big-mib", type=int, default=4, help="MiB each (default 4)")
    ap.add_argument("--small", type=int, default=2000, help="small files (default 2000)")
    ap.add_argument("--entries", type=int, default=0, help="extra empty files (default 0)")
    ap.add_argument("--chunk-kib", type=int, default=256, help="next_chunk size (default 256)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--huge", action="store_true", help="the 4 GiB sparse-file check instead")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="zip_bench."))
    try:
        if args.huge:
            huge(tmp)
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
