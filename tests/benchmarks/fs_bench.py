"""Cost of path resolution and of directory listings, through ``Handler.begin`` (no sockets).

Prints microseconds per request for: a normal path, a path of 4000 one-letter segments (just
under the 8 KiB request-line limit), a listing of a 10,000-entry folder built from scratch,
the same listing again (a cache hit, when there is a cache), and its HEAD and 304.
Usage: PYTHONPATH=$PWD python tests/benchmarks/fs_bench.py
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from evloop_httpd import listing
from evloop_httpd.config import Config, Limits
from evloop_httpd.errors import HttpError
from evloop_httpd.handler import Handler
from evloop_httpd.parser import parse_head
from evloop_httpd.responses import Response


def begin(h: Handler, head: bytes) -> Response | None:
    req = parse_head(head, Limits())
    assert req is not None
    try:
        resp = h.begin(req, time.time())
    except HttpError:
        return None
    assert isinstance(resp, Response)
    if resp.file_fd >= 0:
        os.close(resp.file_fd)
    return resp


def per_call_us(h: Handler, head: bytes, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        begin(h, head)
    return (time.perf_counter() - t0) / n * 1e6


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "a").mkdir()
        (root / "a" / "index.txt").write_bytes(b"x")
        big = root / "big"
        big.mkdir()
        for i in range(10_000):
            (big / f"file-{i:05d}.txt").write_bytes(b"y" * (i % 100))
        h = Handler(Config(root=root, listing=True))
        normal = b"GET /a/index.txt HTTP/1.1\r\nHost: t\r\n\r\n"
        deep = b"GET /" + b"a/" * 4000 + b"x HTTP/1.1\r\nHost: t\r\n\r\n"
        print(f"normal path:       {per_call_us(h, normal, 2000):9.1f} us")
        print(f"4000-segment path: {per_call_us(h, deep, 200):9.1f} us")
        get = b"GET /big/ HTTP/1.1\r\nHost: t\r\n\r\n"
        t0 = time.perf_counter()
        resp = begin(h, get)
        first = (time.perf_counter() - t0) * 1e6
        assert resp is not None
        etag = dict(resp.headers)[b"ETag"]
        print(f"listing 10k, first:{first:9.1f} us ({len(resp.body)} bytes)")
        print(f"listing 10k, again:{per_call_us(h, get, 20):9.1f} us")
        head = b"HEAD /big/ HTTP/1.1\r\nHost: t\r\n\r\n"
        print(f"listing 10k, HEAD: {per_call_us(h, head, 20):9.1f} us")
        inm = b"GET /big/ HTTP/1.1\r\nHost: t\r\nIf-None-Match: " + etag + b"\r\n\r\n"
        print(f"listing 10k, 304:  {per_call_us(h, inm, 20):9.1f} us")
        print(f"(listing.MAX_SCANNED = {getattr(listing, 'MAX_SCANNED', None)})")


if __name__ == "__main__":
    main()
