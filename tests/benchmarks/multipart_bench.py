"""Benchmark: our multipart parser against the `multipart` package's push parser, in MiB/s.

Theory of operation
-------------------
Both parsers get the same body, cut into the same pieces (``--chunk`` bytes, 64 KiB by default:
what one ``recv`` gives), and both must produce the same parts with the same content, checked
before timing by hashing each part, so the timing compares equal work. Each run walks every
event and counts the content bytes, as an upload writing them to disk would touch them.
A sample runs the parse enough times to last about 0.2 s; samples are taken round-robin, ours
then theirs, ``--repeat`` times, and the best of each is kept (the figure least disturbed by
other work on a shared machine). Printed: MiB/s of body for each and the ratio ours/theirs;
above 1.00 means ours is faster. For equal work, ours also parses each part's
Content-Disposition (``parse_disposition``), which the multipart package always does.

Workloads:

* ``one big part``: a single 64 MiB file of random bytes (``--big-mib``);
* ``many small parts``: 1000 fields of 100 bytes each, browser-shaped headers, in pieces of
  ``--chunk`` bytes and again in pieces of 1 KiB (more feeds, more split delimiters).

One big part is bound by ``bytes.find`` in C for both parsers, so parity is what to expect
there; many small parts measure the Python work per part.

    python tests/benchmarks/multipart_bench.py            # both workloads
    python tests/benchmarks/multipart_bench.py --big-mib 16 --repeat 3
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(REPO_ROOT))  # the worktree's package, not an installed copy

import multipart as mp  # noqa: E402  (test-only oracle, the `multipart` PyPI package)

from evloop_httpd.multipart import (  # noqa: E402
    MultipartLimits,
    MultipartParser,
    PartData,
    PartEnd,
    PartStart,
    parse_disposition,
)

BOUNDARY = b"----WebKitFormBoundary7MA4YWxkTrZu0gW"
MIB = 1024 * 1024


def body_one_big(size: int) -> bytes:
    data = os.urandom(size)
    # Random bytes hold the delimiter with negligible odds; make sure anyway.
    assert b"\r\n--" + BOUNDARY not in data
    return (
        b"--" + BOUNDARY + b"\r\n"
        b'Content-Disposition: form-data; name="file"; filename="big.bin"\r\n'
        b"Content-Type: application/octet-stream\r\n\r\n" + data + b"\r\n--" + BOUNDARY + b"--\r\n"
    )


def body_many_small(count: int, size: int) -> bytes:
    parts = [
        b"--" + BOUNDARY + b"\r\n"
        b'Content-Disposition: form-data; name="field%d"\r\n\r\n' % i + os.urandom(size) + b"\r\n"
        for i in range(count)
    ]
    return b"".join(parts) + b"--" + BOUNDARY + b"--\r\n"


def pieces(body: bytes, chunk: int) -> list[bytes]:
    return [body[i : i + chunk] for i in range(0, len(body), chunk)]


Part = tuple[str | None, str | None, int, str]


def run_ours(chunks: list[bytes]) -> list[Part]:
    parser = MultipartParser(BOUNDARY, MultipartLimits(max_parts=1_000_000))
    parts: list[Part] = []
    size = 0
    h = hashlib.sha256()
    name: str | None = None
    filename: str | None = None
    for chunk in chunks:
        for ev in parser.feed(chunk):
            if type(ev) is PartData:
                size += len(ev.data)
                h.update(ev.data)
            elif type(ev) is PartStart:
                disposition = parse_disposition(ev.get(b"content-disposition"))
                name, filename = disposition.name, disposition.filename
            elif type(ev) is PartEnd:
                parts.append((name, filename, size, h.hexdigest()))
                size = 0
                h = hashlib.sha256()
    parser.close()
    return parts


def time_ours(chunks: list[bytes]) -> int:
    # Content-Disposition is parsed for each part, as the multipart package always does.
    parser = MultipartParser(BOUNDARY, MultipartLimits(max_parts=1_000_000))
    total = 0
    for chunk in chunks:
        for ev in parser.feed(chunk):
            if type(ev) is PartData:
                total += len(ev.data)
            elif type(ev) is PartStart:
                parse_disposition(ev.get(b"content-disposition"))
    parser.close()
    return total


def run_theirs(chunks: list[bytes]) -> list[Part]:
    parser = mp.PushMultipartParser(BOUNDARY, max_segment_count=1_000_000)
    parts: list[Part] = []
    size = 0
    h = hashlib.sha256()
    segment = None
    for chunk in [*chunks, b""]:
        for ev in parser.parse(chunk):
            if isinstance(ev, (bytes, bytearray)):
                size += len(ev)
                h.update(ev)
            elif ev is None:
                assert segment is not None
                parts.append((segment.name, segment.filename, size, h.hexdigest()))
                size = 0
                h = hashlib.sha256()
            else:
                segment = ev
    return parts


def time_theirs(chunks: list[bytes]) -> int:
    parser = mp.PushMultipartParser(BOUNDARY, max_segment_count=1_000_000)
    total = 0
    for chunk in [*chunks, b""]:
        for ev in parser.parse(chunk):
            if ev.__class__ is bytes:
                total += len(ev)
    return total


def mib_s(fn: Callable[[list[bytes]], int], chunks: list[bytes], size: int, number: int) -> float:
    started = time.perf_counter()
    for _ in range(number):
        fn(chunks)
    return size * number / MIB / (time.perf_counter() - started)


def runs_per_sample(chunks: list[bytes]) -> int:
    """Enough runs for a sample of about 0.2 s, so that timer and scheduling noise is small."""
    started = time.perf_counter()
    time_ours(chunks)
    return max(1, int(0.2 / max(time.perf_counter() - started, 1e-6)))


def compare(label: str, body: bytes, chunk: int, repeat: int) -> None:
    chunks = pieces(body, chunk)
    ours, theirs = run_ours(chunks), run_theirs(chunks)
    assert ours == theirs, "the parsers disagree; fix that before timing"
    number = runs_per_sample(chunks)
    best = {"ours": 0.0, "multipart": 0.0}
    for _ in range(repeat):
        best["ours"] = max(best["ours"], mib_s(time_ours, chunks, len(body), number))
        best["multipart"] = max(best["multipart"], mib_s(time_theirs, chunks, len(body), number))
    print(
        f"{label:<34} ours {best['ours']:9.1f} MiB/s   multipart {best['multipart']:9.1f} MiB/s"
        f"   ratio {best['ours'] / best['multipart']:5.2f}",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--big-mib", type=int, default=64, help="size of the one big part (MiB)")
    ap.add_argument("--parts", type=int, default=1000, help="number of small parts")
    ap.add_argument("--part-bytes", type=int, default=100, help="size of each small part")
    ap.add_argument("--chunk", type=int, default=64 * 1024, help="bytes per feed")
    ap.add_argument("--repeat", type=int, default=5, help="samples per parser (best kept)")
    args = ap.parse_args(argv)
    print(
        f"multipart package {mp.__version__}; pieces of {args.chunk} bytes; best of {args.repeat}"
    )
    compare(
        f"one part of {args.big_mib} MiB", body_one_big(args.big_mib * MIB), args.chunk, args.repeat
    )
    compare(
        f"{args.parts} parts of {args.part_bytes} bytes",
        body_many_small(args.parts, args.part_bytes),
        args.chunk,
        args.repeat,
    )
    small = 1024
    compare(
        f"{args.parts} parts, pieces of {small} B",
        body_many_small(args.parts, args.part_bytes),
        small,
        args.repeat,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
