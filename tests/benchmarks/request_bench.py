"""Our own Python cost per request, without sockets: one Connection on a Transport whose socket
takes everything.

Each round hands the connection either one request per ``receive`` (as a keep-alive client's
requests arrive) or sixteen at once (a pipelining client's), then runs the transport's pump,
which holds back the ones another follows and sends the batch with one call. What is left is
parsing, the response cache, the state machine, the response head and the pump: the part of a
request that is ours, free of the kernel and the load generator. The file is served from the
response cache, as in the ``small`` scenarios of ``run.py``.

Wall-clock figures wobble by tens of percent on a shared machine. For a repeatable figure, count
instructions instead (the difference between two counts removes start-up)::

    valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        python tests/benchmarks/request_bench.py --rounds 20 --mode pipelined
    valgrind ... --rounds 220 ...   # then (I_220 - I_20) / (200 * 16) per request

``--forwarded`` serves as behind a trusted proxy: the peer 127.0.0.1 is a ``--trusted-proxy``
and each request carries ``X-Forwarded-For`` (what finding the client per request costs).

Usage: ``python tests/benchmarks/request_bench.py [--mode keepalive|pipelined|both] [--forwarded]``
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
from evloop_httpd.states import ConnState
from evloop_httpd.transport import Transport

REQUEST = b"GET /small.bin HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n"  # what wrk sends
FORWARDED = REQUEST[:-2] + b"X-Forwarded-For: 203.0.113.9, 198.51.100.7\r\n\r\n"
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
    """A socket that takes every byte at once."""

    def send(self, data: bytes, flags: int = 0) -> int:
        return len(data)

    def sendmsg(self, buffers: tuple[bytes, ...]) -> int:
        return sum(len(b) for b in buffers)


def run(root: Path, depth: int, rounds: int, forwarded: bool = False) -> float:
    """Seconds of CPU per request, serving ``rounds`` batches of ``depth`` requests."""
    trusted = (ipaddress.ip_network("127.0.0.1/32"),) if forwarded else ()
    config = Config(root=root, trusted_proxies=trusted)
    conn = Connection(Context(config, Quiet()), 0.0, ("127.0.0.1", 40000))
    transport = Transport(Sink(), conn, use_sendfile=True)  # type: ignore[arg-type]
    batch = (FORWARDED if forwarded else REQUEST) * depth
    started = time.process_time()
    for _ in range(rounds):
        conn.receive(batch, 1.0)
        transport.pump(1.0)
        assert conn.state is ConnState.READING_HEADERS, conn.state
    return (time.process_time() - started) / (rounds * depth)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=("keepalive", "pipelined", "both"), default="both")
    parser.add_argument("--rounds", type=int, default=0, help="batches (default: about 2 s)")
    parser.add_argument("--forwarded", action="store_true", help="behind a trusted proxy")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp).resolve()
        (root / "small.bin").write_bytes(bytes(range(256)) * 4)
        for mode in ("keepalive", "pipelined") if args.mode == "both" else (args.mode,):
            depth = DEPTH if mode == "pipelined" else 1
            run(root, depth, 10, args.forwarded)  # fill the response cache
            rounds = args.rounds or max(1, 64_000 // depth)
            cost = run(root, depth, rounds, args.forwarded)
            print(f"{mode:>9}: {cost * 1e6:6.2f} us of CPU per request ({rounds * depth} requests)")


if __name__ == "__main__":
    main()
