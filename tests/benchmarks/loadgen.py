"""A small, bounded HTTP/1.1 load generator for the benchmark runner: stdlib only.

Theory of operation
-------------------
One ``selectors`` loop drives ``connections`` non-blocking client sockets against one
server on loopback. Each socket repeats a cycle: write one request (or ``depth`` requests in
one write when pipelining), read until as many responses are complete, then write again; in
``close`` mode it sends ``Connection: close`` and opens a fresh socket for every request.
Responses are framed by ``Content-Length`` only, because every server under test serves
static files that way; anything else is counted as an error and the socket is replaced, so a
confused server shows up as errors rather than as a hang.

Every loop here is bounded twice, by a wall-clock duration and by a count, and stalled sockets
are replaced after ``stall_s``; nothing waits forever. The runner prefers ``wrk`` (C, much
faster); this module is the fallback when ``wrk`` is missing, and it also holds the idle
connections and sends the latency probes for the idle-memory scenario, which ``wrk`` cannot.

Used as a script, it runs one load and prints one JSON line, so the runner can pin it to its
own CPU::

    python tests/benchmarks/loadgen.py --port 8080 --path /small.bin -c 50 -d 5 --mode keepalive
"""

from __future__ import annotations

import argparse
import errno
import json
import selectors
import socket
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Literal

Mode = Literal["keepalive", "close", "pipeline"]

HOST = "127.0.0.1"  # loopback only: this tool must never aim anywhere else
RECV_BYTES = 256 * 1024  # large reads keep the Python client from being the bottleneck on files
MAX_HEAD_BYTES = 64 * 1024  # a response head larger than this is a broken server, not a benchmark
DEFAULT_MAX_REQUESTS = 50_000_000  # the count bound; the duration bound is the one that bites
CONNECT_BATCH = 256  # in-flight connects while opening idle connections; below somaxconn (4096)


class ResponseError(Exception):
    """The server sent something this client cannot frame; the socket must be replaced."""


def build_request(path: str, port: int, *, close: bool = False, header: str = "") -> bytes:
    """Return the request bytes ``wrk`` would send, so both generators measure the same thing;
    ``header`` is one more field line ("Name: value"), as run.py's conditional scenarios add."""
    head = f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
    if header:
        head += header + "\r\n"
    if close:
        head += "Connection: close\r\n"
    return (head + "\r\n").encode("ascii")


class ResponseReader:
    """Incremental response framer: counts complete responses and received bytes.

    Bodies are skipped by count, never copied, so a 10 MiB file costs one subtraction per
    ``recv`` rather than a buffer append.
    """

    __slots__ = ("body_left", "bytes_received", "head", "in_body", "last_status", "server_closes")

    def __init__(self) -> None:
        self.head = bytearray()
        self.body_left = 0
        self.in_body = False
        self.bytes_received = 0
        self.last_status = 0
        self.server_closes = False

    def feed(self, data: bytes) -> int:
        """Consume ``data``; return how many responses it completed."""
        self.bytes_received += len(data)
        done = 0
        view = memoryview(data)
        while view:
            if self.in_body:
                take = min(self.body_left, len(view))
                self.body_left -= take
                view = view[take:]
                if self.body_left == 0:
                    self.in_body = False
                    done += 1
                continue
            self.head += view
            view = memoryview(b"")
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                if len(self.head) > MAX_HEAD_BYTES:
                    raise ResponseError("response head too large")
                break
            rest = bytes(self.head[end + 4 :])
            self._start_body(bytes(self.head[:end]))
            self.head = bytearray()
            if not self.in_body:
                done += 1
            view = memoryview(rest)
        return done

    def _start_body(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise ResponseError(f"bad status line {lines[0][:80]!r}")
        self.last_status = int(parts[1])
        length: int | None = None
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value.strip())
            elif name == b"transfer-encoding":
                raise ResponseError("chunked responses are not framed by this client")
            elif name == b"connection" and value.strip().lower() == b"close":
                self.server_closes = True
        if length is None:
            # Static files always carry a length; 1xx/204/304 legitimately do not.
            if self.last_status in (204, 304) or self.last_status < 200:
                length = 0
            else:
                raise ResponseError("response without Content-Length")
        self.body_left = length
        self.in_body = length > 0


@dataclass
class LoadResult:
    """What one load run measured; ``errors`` counts by kind, as wrk does."""

    requests: int = 0
    bytes: int = 0
    duration_s: float = 0.0
    errors: dict[str, int] = field(
        default_factory=lambda: {"connect": 0, "read": 0, "write": 0, "status": 0, "timeout": 0}
    )


class _Client:
    """One client socket's progress through its request/response cycle."""

    __slots__ = ("last_progress", "outstanding", "pending", "reader", "sock")

    def __init__(self, sock: socket.socket, now: float) -> None:
        self.sock = sock
        self.reader = ResponseReader()
        self.pending = b""  # request bytes not yet written
        self.outstanding = 0  # responses still expected for what was written
        self.last_progress = now


def run_load(
    port: int,
    path: str,
    connections: int,
    duration_s: float,
    mode: Mode = "keepalive",
    depth: int = 16,
    max_requests: int = DEFAULT_MAX_REQUESTS,
    stall_s: float = 5.0,
    header: str = "",
) -> LoadResult:
    """Drive ``connections`` sockets for at most ``duration_s`` and ``max_requests`` responses."""
    per_write = depth if mode == "pipeline" else 1
    request = build_request(path, port, close=mode == "close", header=header) * per_write
    result = LoadResult()
    sel = selectors.DefaultSelector()
    start = time.monotonic()
    deadline = start + duration_s
    next_stall_check = start + 0.5

    def open_client(now: float) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        err = sock.connect_ex((HOST, port))
        if err not in (0, errno.EINPROGRESS):
            result.errors["connect"] += 1
            sock.close()
            return
        client = _Client(sock, now)
        client.pending = request
        client.outstanding = per_write
        sel.register(sock, selectors.EVENT_WRITE, client)

    def replace(client: _Client, kind: str | None, now: float) -> None:
        if kind:
            result.errors[kind] += 1
        sel.unregister(client.sock)
        client.sock.close()
        if now < deadline:
            open_client(now)

    def write(client: _Client, now: float) -> None:
        try:
            sent = client.sock.send(client.pending)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            # A refused or reset connect surfaces here first, on the first write.
            replace(client, "connect" if exc.errno == errno.ECONNREFUSED else "write", now)
            return
        client.pending = client.pending[sent:]
        client.last_progress = now
        if not client.pending:
            sel.modify(client.sock, selectors.EVENT_READ, client)

    def read(client: _Client, now: float) -> None:
        try:
            data = client.sock.recv(RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            replace(client, "read", now)
            return
        if not data:
            # EOF before the expected responses: the server dropped a live request.
            replace(client, "read", now)
            return
        client.last_progress = now
        try:
            done = client.reader.feed(data)
        except ResponseError:
            replace(client, "read", now)
            return
        result.bytes += len(data)
        if done == 0:
            return
        if client.reader.last_status != 200:
            result.errors["status"] += done
        result.requests += done
        client.outstanding -= done
        if client.outstanding > 0:
            return
        if mode == "close" or client.reader.server_closes:
            replace(client, None, now)
            return
        client.pending = request
        client.outstanding = per_write
        sel.modify(client.sock, selectors.EVENT_WRITE, client)
        write(client, now)  # try at once: the socket buffer is almost always free

    try:
        for _ in range(connections):
            open_client(start)
        now = start
        while now < deadline and result.requests < max_requests:
            for key, events in sel.select(timeout=min(0.1, max(0.0, deadline - now))):
                client = key.data
                if client.sock.fileno() < 0:
                    continue  # replaced earlier in this same batch of events
                if events & selectors.EVENT_WRITE:
                    write(client, now)
                elif events & selectors.EVENT_READ:
                    read(client, now)
            now = time.monotonic()
            if now >= next_stall_check:
                next_stall_check = now + 0.5
                for key in list(sel.get_map().values()):
                    client = key.data
                    if now - client.last_progress > stall_s:
                        replace(client, "timeout", now)
                if not sel.get_map() and now < deadline:
                    open_client(now)  # everything failed to connect: keep trying, bounded
        result.duration_s = time.monotonic() - start
    finally:
        for key in list(sel.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        sel.close()
    return result


def hold_idle(
    port: int, path: str, count: int, deadline_s: float
) -> tuple[list[socket.socket], int]:
    """Open ``count`` keep-alive connections, do one GET on each, and return them idle.

    The GET proves the server has accepted the connection (a connect alone may sit in the
    listen backlog) and leaves it in the state a browser's idle keep-alive connection is in.
    Returns the held sockets and the number that failed; gives up at ``deadline_s`` seconds.
    """
    request = build_request(path, port)
    sel = selectors.DefaultSelector()
    held: list[socket.socket] = []
    failed = 0
    to_open = count
    end = time.monotonic() + deadline_s

    def open_one() -> None:
        nonlocal failed
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        err = sock.connect_ex((HOST, port))
        if err not in (0, errno.EINPROGRESS):
            failed += 1
            sock.close()
            return
        client = _Client(sock, 0.0)
        client.pending = request
        client.outstanding = 1
        sel.register(sock, selectors.EVENT_WRITE, client)

    try:
        while (to_open or sel.get_map()) and time.monotonic() < end:
            while to_open and len(sel.get_map()) < CONNECT_BATCH:
                to_open -= 1
                open_one()
            for key, events in sel.select(timeout=0.1):
                client = key.data
                try:
                    if events & selectors.EVENT_WRITE:
                        client.pending = client.pending[client.sock.send(client.pending) :]
                        if not client.pending:
                            sel.modify(client.sock, selectors.EVENT_READ, client)
                        continue
                    data = client.sock.recv(RECV_BYTES)
                    if not data:
                        raise ConnectionResetError("EOF before the response")
                    if client.reader.feed(data):
                        sel.unregister(client.sock)
                        if client.reader.last_status == 200:
                            held.append(client.sock)
                        else:
                            failed += 1
                            client.sock.close()
                except (BlockingIOError, InterruptedError):
                    continue
                except (OSError, ResponseError):
                    failed += 1
                    sel.unregister(client.sock)
                    client.sock.close()
    finally:
        for key in list(sel.get_map().values()):
            failed += 1
            key.fileobj.close()  # type: ignore[union-attr]
        sel.close()
    return held, failed + to_open


def count_still_open(socks: list[socket.socket]) -> int:
    """Count held sockets the server has not closed (no EOF, no reset, nothing unexpected)."""
    alive = 0
    for sock in socks:
        try:
            if sock.recv(1, socket.MSG_PEEK):
                continue  # unsolicited bytes: not an idle connection any more
        except (BlockingIOError, InterruptedError):
            alive += 1
        except OSError:
            pass
    return alive


def probe_latencies(
    sock: socket.socket, port: int, path: str, count: int, deadline_s: float
) -> list[float]:
    """Send ``count`` sequential GETs on one keep-alive socket; return each round trip in ms.

    One connection, one request at a time: this measures how long the server's loop takes to
    notice and answer a ready socket while it also watches every other held connection.
    """
    request = build_request(path, port)
    sock.setblocking(True)
    sock.settimeout(2.0)
    samples: list[float] = []
    end = time.monotonic() + deadline_s
    for _ in range(count):
        if time.monotonic() >= end:
            break
        reader = ResponseReader()
        t0 = time.perf_counter()
        sock.sendall(request)
        done = 0
        while not done:
            data = sock.recv(RECV_BYTES)
            if not data:
                return samples
            done = reader.feed(data)
        samples.append((time.perf_counter() - t0) * 1000.0)
    return samples


def main(argv: list[str] | None = None) -> int:
    """Run one bounded load and print its :class:`LoadResult` as one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/small.bin")
    parser.add_argument("-c", "--connections", type=int, default=50)
    parser.add_argument("-d", "--duration", type=float, default=5.0, help="seconds")
    parser.add_argument("--mode", choices=["keepalive", "close", "pipeline"], default="keepalive")
    parser.add_argument("--depth", type=int, default=16, help="requests per write in pipeline")
    parser.add_argument("--max-requests", type=int, default=DEFAULT_MAX_REQUESTS)
    parser.add_argument("--header", default="", help='one more field: "Name: value"')
    args = parser.parse_args(argv)
    result = run_load(
        args.port,
        args.path,
        args.connections,
        args.duration,
        args.mode,
        args.depth,
        args.max_requests,
        header=args.header,
    )
    print(json.dumps(asdict(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
