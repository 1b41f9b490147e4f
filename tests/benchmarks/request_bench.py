"""Our own Python cost per request, without sockets: one Connection on a Transport whose socket
takes everything.

Each round hands the connection either one request per ``receive`` (as a keep-alive client's
requests arrive) or sixteen at once (a pipelining client's), then runs the transport's pump,
which holds back the ones another follows and sends the batch with one call. What is left is
parsing, the response cache, the state machine, the response head and the pump: the part of a
request that is ours, free of the kernel and the load generator.

``--kind`` picks the answer: ``ok`` (default) is a 200 served from the response cache, as in
the ``small`` scenarios of ``run.py``; ``missing`` a 404 for a name that does not exist;
``notmod`` a 304 to ``If-None-Match`` with the file's current ETag (what a browser's
revalidation sends). The three are compared in docs/performance.md.

Wall-clock figures wobble by tens of percent on a shared machine. For a repeatable figure, count
instructions instead (the difference between two counts removes start-up)::

    valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        python tests/benchmarks/request_bench.py --rounds 20 --mode pipelined
    valgrind ... --rounds 220 ...   # then (I_220 - I_20) / (200 * 16) per request

``--forwarded`` serves as behind a trusted proxy: the peer 127.0.0.1 is a ``--trusted-proxy``
and each request carries ``X-Forwarded-For`` (what finding the client per request costs).

Usage: ``python tests/benchmarks/request_bench.py [--mode keepalive|pipelined|both]
[--kind ok|missing|notmod] [--forwarded]``
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from evloop_httpd.config import Config
from evloop_httpd.connection import Connection, Context
from evloop_httpd.files import strong_etag
from evloop_httpd.states import ConnState
from evloop_httpd.transport import Transport

REQUEST = b"GET %s HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n%s\r\n"  # what wrk sends, + a field
KINDS = ("ok", "missing", "notmod")
FORWARDED = b"X-Forwarded-For: 203.0.113.9, 198.51.100.7\r\n"
DEPTH = 16


class Quiet:
    """An observer that logs nothing, as the server does with ``-q``."""

    def transition(self, *args: object) -> None: ...
    def response_head(self, *args: object) -> None: ...
    def request_done(self, *args: object) -> None: ...

    def debug(self, text: str) -> None: ...

    def bug(self, conn: object, exc: BaseException) -> None:
        raise exc


class Sink:
    """A socket that takes every byte at once, keeping the first send (to check the status)."""

    first = b""

    def send(self, data: bytes, flags: int = 0) -> int:
        self.first = self.first or bytes(data)
        return len(data)

    def sendmsg(self, buffers: tuple[bytes, ...]) -> int:
        self.first = self.first or bytes(buffers[0])
        return sum(len(b) for b in buffers)


def request_for(root: Path, kind: str, forwarded: bool = False) -> tuple[bytes, bytes]:
    """The request of one ``kind`` (see the module docstring) and the status it must get."""
    extra = FORWARDED if forwarded else b""
    if kind == "missing":
        return REQUEST % (b"/no-such.bin", extra), b"404"
    if kind == "notmod":
        etag = strong_etag((root / "small.bin").stat())
        return REQUEST % (b"/small.bin", extra + b"If-None-Match: " + etag + b"\r\n"), b"304"
    return REQUEST % (b"/small.bin", extra), b"200"


def run(
    root: Path, depth: int, rounds: int, request: bytes, expected: bytes, forwarded: bool = False
) -> float:
    """Seconds of CPU per request, serving ``rounds`` batches of ``depth`` requests."""
    trusted = (ipaddress.ip_network("127.0.0.1/32"),) if forwarded else ()
    config = Config(root=root, trusted_proxies=trusted)
    conn = Connection(Context(config, Quiet()), 0.0, ("127.0.0.1", 40000))
    sink = Sink()
    transport = Transport(sink, conn, use_sendfile=True)  # type: ignore[arg-type]
    batch = request * depth
    started = time.process_time()
    for _ in range(rounds):
        conn.receive(batch, 1.0)
        transport.pump(1.0)
        assert conn.state is ConnState.READING_HEADERS, conn.state
    assert sink.first[9:12] == expected, sink.first[:12]  # measure what we meant to
    return (time.process_time() - started) / (rounds * depth)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=("keepalive", "pipelined", "both"), default="both")
    parser.add_argument("--kind", choices=KINDS, default="ok", help="200, 404 or 304")
    parser.add_argument("--rounds", type=int, default=0, help="batches (default: about 2 s)")
    parser.add_argument("--forwarded", action="store_true", help="behind a trusted proxy")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp).resolve()
        (root / "small.bin").write_bytes(bytes(range(256)) * 4)
        request, expected = request_for(root, args.kind, args.forwarded)
        # A folder changed in the last few ticks cannot vouch for a missing name (the response
        # cache's racy rule, response_cache.RACY_S): let the new one age, as any served folder has.
        time.sleep(0.2)
        for mode in ("keepalive", "pipelined") if args.mode == "both" else (args.mode,):
            depth = DEPTH if mode == "pipelined" else 1
            run(root, depth, 10, request, expected, args.forwarded)  # fill the response cache
            rounds = args.rounds or max(1, 64_000 // depth)
            cost = run(root, depth, rounds, request, expected, args.forwarded)
            count = rounds * depth
            cpu = f"{cost * 1e6:6.2f} us of CPU per request"
            print(f"{args.kind} {mode:>9}: {cpu} ({count} requests)")


if __name__ == "__main__":
    main()
