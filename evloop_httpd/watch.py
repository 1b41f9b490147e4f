"""Watching the loop: what the reactor plugs in when --trace, --status or a teaching fault is on.

Theory of operation
-------------------
Watching must cost nothing when nobody watches. So none of it is a test on the hot path: the
reactor makes its connections and transports from classes it picked once, at start
(:func:`watch_server`): the plain :class:`Connection` and :class:`Transport` when nothing is
watched, and the subclasses here when something is. They add what watching needs and nothing
else:

* :class:`WatchedConnection` remembers when it opened, when it last changed state, and the
  bytes it received (three slots the 10,000 idle connections of an unwatched server do not
  pay for), and traces each ``recv``'s size;
* :class:`WatchedTransport` (and :class:`WatchedTlsTransport`) trace each send's size and each
  EAGAIN, and apply the teaching faults (a tiny send buffer at accept, a cap per ``recv``);
* :class:`Watcher` stands between the connections and the logs as their observer: it stamps
  each transition's time, feeds the :class:`~evloop_httpd.status.StatsCollector`, and writes
  the trace through the :class:`~evloop_httpd.log.Tracer`.

The loop itself (reactor.py) tests ``is not None`` once per pass for the wake-up trace, the
iteration statistics and the loop delay, and once per fired timer.

The status listener (``--status``) is a second listening socket in the same selector. Its
connections are ordinary connections (same limits, timeouts, work budget, accounting) with a
context of their own whose handler is :class:`StatusHandler` instead of the file handler, and
whose gate asks for an account on every request when ``--auth-file`` is set. A snapshot walks
the open connections once and describes at most ``status.MAX_ROWS`` of them (see status.py):
bounded, whatever the number of connections.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import os
import socket
import time
from collections.abc import Callable
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING, cast

from . import metrics, status, status_page
from .auth import Gate, Waiter
from .connection import Address, Connection, Context
from .errors import HttpError
from .faults import Faults, apply_to_socket, recv_size
from .handler import Handler
from .log import Logs, Tracer
from .parser import Request
from .response_cache import ResponseCache
from .responses import Response
from .states import ConnState, Input
from .transport import RECV_BYTES, Transport

if TYPE_CHECKING:
    from .reactor import Server
    from .upload import Upload

S = ConnState


class WatchedConnection(Connection):
    """A connection that also knows its opening time, its last transition and bytes in."""

    __slots__ = ("bytes_in", "changed_at", "opened_at")

    def __init__(
        self,
        ctx: Context,
        now: float,
        peer: Address = ("", 0),
        local: Address = ("", 0),
        ident: int = 0,
        *,
        handshake: bool = False,
        proxy: bool = False,
    ) -> None:
        self.opened_at = now
        self.changed_at = now
        self.bytes_in = 0
        super().__init__(ctx, now, peer, local, ident, handshake=handshake, proxy=proxy)

    def receive(self, data: bytes, now: float) -> None:
        self.bytes_in += len(data)
        tracer = self.ctx.tracer
        if tracer is not None:
            tracer.io(self.ident, recv=len(data))
        super().receive(data, now)

    def received_into_file(self, n: int, now: float) -> None:
        self.bytes_in += n  # spliced: they never passed through receive()
        super().received_into_file(n, now)


def request_line(conn: Connection) -> bytes | None:
    """The request line of the request ``conn`` serves, rebuilt from its parts (the parser
    keeps no copy of it), or None between requests."""
    req = conn.request
    if req is None:
        return None
    return b"%s %s HTTP/%s" % (req.method, req.raw_target, req.http_version)


def deadline_name(conn: Connection) -> str:
    """Which deadline a connection's timer stands for, in the words of config.Timeouts."""
    state = conn.state
    if state is S.HANDSHAKING:
        return "handshake"
    if state is S.READING_HEADERS:
        return "head" if conn.inbuf else "idle"
    if state is S.AUTHENTICATING:
        return "password check"
    if state is S.LINGERING:
        return "linger"
    return "stall"  # a body or a response that must keep moving


class _SendWatch:
    """Send-side tracing shared by the plain and the TLS watched transports."""

    __slots__ = ()
    conn: Connection

    def _send(self, data: bytes | bytearray | memoryview) -> int:
        tracer = self.conn.ctx.tracer
        try:
            n: int = super()._send(data)  # type: ignore[misc]
        except BlockingIOError:
            if tracer is not None:
                tracer.eagain(self.conn.ident, "send")
            raise
        if tracer is not None:
            tracer.io(self.conn.ident, sent=n)
        return n


class WatchedTransport(_SendWatch, Transport):
    """Plain TCP, traced, with the teaching faults applied."""

    __slots__ = ()
    send_direct = False  # every send through the traced _send
    read_inline = False  # every recv through the traced, capped read
    can_splice = False  # so bodies too: the trace shows each recv, the faults cap them

    def __init__(self, sock: socket.socket, conn: Connection, use_sendfile: bool) -> None:
        super().__init__(sock, conn, use_sendfile)
        faults = conn.ctx.faults
        if faults is not None:
            with contextlib.suppress(OSError):
                apply_to_socket(sock, faults)

    def read(self, now: float) -> None:
        # Transport.read, with the recv cap and the EAGAIN trace.
        sock = self.sock
        conn = self.conn
        assert sock is not None
        faults = conn.ctx.faults
        size = RECV_BYTES if faults is None else recv_size(RECV_BYTES, faults)
        try:
            data = sock.recv(size)
        except (BlockingIOError, InterruptedError):
            tracer = conn.ctx.tracer
            if tracer is not None:
                tracer.eagain(conn.ident, "recv")
            return
        except OSError as exc:
            conn.ctx.observer.debug(f"#{conn.ident} recv: {exc}")
            conn.abort()
            return
        conn.receive(data, now)

    def _send_pair(self, first: bytes | bytearray, second: bytes | memoryview) -> int:
        tracer = self.conn.ctx.tracer
        try:
            n = super()._send_pair(first, second)
        except BlockingIOError:
            if tracer is not None:
                tracer.eagain(self.conn.ident, "send")
            raise
        if tracer is not None:
            tracer.io(self.conn.ident, sent=n)
        return n

    def _send_file(self, fd: int, offset: int, remaining: int) -> int:
        if self.use_sendfile is False:
            return super()._send_file(fd, offset, remaining)  # pread + our traced _send
        tracer = self.conn.ctx.tracer
        try:
            n = super()._send_file(fd, offset, remaining)
        except BlockingIOError:
            if tracer is not None and not _fell_back(self):
                tracer.eagain(self.conn.ident, "sendfile")
            raise
        if tracer is not None and not _fell_back(self):
            tracer.io(self.conn.ident, sent=n)  # else it fell back, and _send traced it
        return n


def _fell_back(t: Transport) -> bool:
    # A function, so that the type checker does not keep the narrowing of before the call.
    return t.use_sendfile is False


def watched_tls_class() -> type[Transport]:
    """The TLS transport, traced (imported only when a certificate is given). Over TLS the
    sizes are of plaintext, the recv cap does not apply (one record is the unit), and an
    EAGAIN on recv is not traced."""
    from .tls import TlsTransport

    class WatchedTlsTransport(_SendWatch, TlsTransport):
        __slots__ = ()

        def __init__(self, sock: socket.socket, conn: Connection, context: object) -> None:
            super().__init__(sock, conn, context)  # type: ignore[arg-type]
            faults = conn.ctx.faults
            if faults is not None:
                with contextlib.suppress(OSError):
                    apply_to_socket(sock, faults)

    return WatchedTlsTransport


class Watcher:
    """The connections' observer while watching: stamps, counts and traces, then hands every
    report on to the logs."""

    __slots__ = ("logs", "stats", "tracer")

    def __init__(
        self, logs: Logs, tracer: Tracer | None, stats: status.StatsCollector | None
    ) -> None:
        self.logs = logs
        self.tracer = tracer
        self.stats = stats

    def transition(self, conn: Connection, old: ConnState, inp: Input, new: ConnState) -> None:
        watched = cast(WatchedConnection, conn)
        watched.changed_at = time.monotonic()
        tracer = self.tracer
        if tracer is not None:
            tracer.transition(
                conn.ident,
                old,
                inp,
                new,
                conn.interest,
                watched.bytes_in,
                conn.handed,
                request_line(conn),
            )

    def response_head(self, conn: Connection, head: bytes) -> None:
        self.logs.response_head(conn, head)

    def request_done(self, conn: Connection) -> None:
        if self.stats is not None:
            self.stats.request_done(conn.status, conn.sent, time.monotonic())
        self.logs.request_done(conn)

    def bug(self, conn: Connection, exc: BaseException) -> None:
        self.logs.bug(conn, exc)

    def debug(self, text: str) -> None:
        self.logs.debug(text)


# The status listener


class _EveryRequestGate:
    """The server's gate, asking for an account on every request (the status pages say who
    is connected from where and what they fetch)."""

    __slots__ = ("gate", "sock")

    def __init__(self, gate: Gate) -> None:
        self.gate = gate
        self.sock = gate.sock

    def admit(self, conn: Waiter, req: Request, peer: str, now: float) -> str | object | None:
        return self.gate.admit(conn, req, peer, now, every_method=True)


_ALLOW = ((b"Allow", b"GET, HEAD"),)


class StatusHandler:
    """Answers the status listener's requests: ``/``, ``/status.json``, ``/metrics``."""

    def __init__(self, server: Server) -> None:
        self.server = server

    def begin(self, req: Request, second: int) -> Response:
        if req.method != b"GET" and req.method != b"HEAD":
            raise HttpError(
                HTTPStatus.METHOD_NOT_ALLOWED, "the status pages are read-only", headers=_ALLOW
            )
        path = req.path
        headers: tuple[tuple[str, str], ...]
        if path == b"/":
            body, headers = status_page.PAGE, status_page.HEADERS
        elif path == b"/status.json":
            snaps = every_worker(self.server)
            merged = snaps[0] if len(snaps) == 1 else status.merge_snapshots(snaps)
            body, headers = status.render_json(merged), status_page.JSON_HEADERS
        elif path == b"/metrics":
            body = metrics.render_metrics(every_worker(self.server))
            headers = (
                ("Content-Type", metrics.CONTENT_TYPE),
                ("Cache-Control", "no-store"),
            )
        else:
            raise HttpError(HTTPStatus.NOT_FOUND, "here: /, /status.json and /metrics")
        fields = [(k.encode("ascii"), v.encode("ascii")) for k, v in headers]
        fields.append((b"Content-Length", b"%d" % len(body)))
        return Response(HTTPStatus.OK, fields, b"" if req.method == b"HEAD" else body)

    def finish_upload(self, upload: Upload, req: Request) -> Response:  # pragma: no cover
        raise HttpError(HTTPStatus.METHOD_NOT_ALLOWED, "the status pages are read-only")


def _state(conn: Connection) -> ConnState:
    return conn.state


def _rank(conn: Connection) -> tuple[bool, float]:
    # Busy before idle, then the oldest first (status.snapshot_of).
    idle = conn.state is S.READING_HEADERS and conn.request is None  # as status.ConnRow.idle
    return (idle, cast(WatchedConnection, conn).opened_at)


def _describer(now: float) -> Callable[[Connection], status.ConnRow]:
    def describe(conn: Connection) -> status.ConnRow:
        w = cast(WatchedConnection, conn)
        host, port = conn.peer[0], conn.peer[1]
        progress = None
        if conn.state is S.STREAMING_FILE:
            progress = (conn.sent, conn.sent + conn.file_remaining)
        return status.ConnRow(
            number=conn.ident,
            peer=f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
            state=conn.state.name,
            age_s=now - w.opened_at,
            in_state_s=now - w.changed_at,
            bytes_in=w.bytes_in,
            bytes_out=conn.handed,
            request_line=request_line(conn),
            interest=conn.interest,
            progress=progress,
        )

    return describe


def snapshot(server: Server) -> status.Snapshot:
    """The server's state now: O(connections), at most MAX_ROWS of them described."""
    stats = server.stats
    assert stats is not None
    now = time.monotonic()
    conns = [t.conn for t in server.transports()]
    return status.snapshot_of(
        stats,
        conns,
        now,
        time.time(),
        len(server.timers.heap),
        state_of=_state,
        rank=_rank,
        describe=_describer(now),
        body_bytes=(server.ctx.body_spliced, server.ctx.body_copied),
    )


def every_worker(server: Server) -> list[status.Snapshot]:
    """This worker's snapshot, now, and with --workers the others' latest (see StatusShare),
    in the order of their numbers."""
    own = snapshot(server)
    share = server.status_share
    if share is None:
        return [own]
    snaps = [own, *share.others(own.wall_time)]
    return sorted(snaps, key=lambda s: int(s.worker) if s.worker.isdigit() else 0)


PUBLISH_S = 1.0  # how often a worker leaves its snapshot for the others
STALE_S = 5.0  # a snapshot older than this is of a worker that is gone (or stuck): left out


class StatusShare:
    """With --workers, every worker's snapshot for whichever worker answers the status page.

    The status listener is one socket made by the supervising parent and shared by all
    workers, so any worker may take a status connection; it answers with its own snapshot,
    taken now, and the others' latest, which each worker writes into a private folder every
    ``PUBLISH_S`` (atomically: a temp file renamed over the last). So the page covers every
    worker, the other workers' figures at most about a second old, and no worker ever waits
    for another: a worker stuck in a slow step simply shows its last snapshot, until it is
    ``STALE_S`` old and left out. The cost is one snapshot (about 3 ms at 10,000
    connections, see tests/benchmarks/status_bench.py) and one small file write per worker
    per second, and reading the other workers' files (a few KB to ~50 KB each) per status
    request: bounded, on the page cache, and done only when --status is on.
    """

    __slots__ = ("folder", "next_at", "worker")

    def __init__(self, folder: Path, worker: int) -> None:
        self.folder = folder
        self.worker = worker
        self.next_at = 0.0  # publish at the first pass

    def publish(self, server: Server, now: float) -> None:
        self.next_at = now + PUBLISH_S
        tmp = self.folder / f".worker-{self.worker}.tmp"
        try:
            tmp.write_bytes(dump_snapshot(snapshot(server)))
            os.replace(tmp, self.folder / f"worker-{self.worker}.json")
        except OSError as exc:  # the folder went away: the page covers this worker alone
            server.logs.debug(f"status snapshot not shared: {exc}")

    def others(self, wall_now: float) -> list[status.Snapshot]:
        out: list[status.Snapshot] = []
        mine = f"worker-{self.worker}.json"
        try:
            names = sorted(os.listdir(self.folder))
        except OSError:
            return out
        for name in names:
            if name == mine or not name.startswith("worker-") or not name.endswith(".json"):
                continue
            try:
                snap = load_snapshot((self.folder / name).read_bytes())
            except (OSError, ValueError, TypeError, KeyError):
                continue  # half-gone or from another version: leave it out
            if wall_now - snap.wall_time <= STALE_S:
                out.append(snap)
        return out


def dump_snapshot(snap: status.Snapshot) -> bytes:
    """A snapshot as JSON for another worker of this server (the request line kept raw, as
    latin-1: the reader escapes it as the snapshot's own would be)."""
    data = {f.name: getattr(snap, f.name) for f in dataclasses.fields(snap)}
    data["rows"] = [
        {
            **{f.name: getattr(row, f.name) for f in dataclasses.fields(row)},
            "request_line": None
            if row.request_line is None
            else row.request_line.decode("latin-1"),
        }
        for row in snap.rows
    ]
    return json.dumps(data).encode()


def load_snapshot(raw: bytes) -> status.Snapshot:
    """The inverse of :func:`dump_snapshot`; ValueError, TypeError or KeyError if malformed."""
    data = json.loads(raw)
    rows = []
    for r in data["rows"]:
        line, progress = r["request_line"], r["progress"]
        r["request_line"] = None if line is None else line.encode("latin-1")
        r["progress"] = None if progress is None else (int(progress[0]), int(progress[1]))
        rows.append(status.ConnRow(**r))
    data["rows"] = tuple(rows)
    for key in ("iteration_counts", "requests_per_second", "iteration_max_s"):
        data[key] = tuple(data[key])
    return status.Snapshot(**data)


def watch_server(server: Server, worker: int | None = None) -> None:
    """Make ``server`` watched: its classes, observer, tracer, statistics, status context.
    Called once, from ``Server.__init__``, when --trace, --status or a fault is on."""
    config = server.config
    ctx = server.ctx
    tracer = server.logs.tracer
    faults: Faults | None = config.faults
    watching = tracer is not None or config.status is not None
    if watching:
        server.conn_class = WatchedConnection
        ctx.trace = True  # transitions reach the Watcher (the status rows need their time)
    server.tracer = tracer
    ctx.tracer = tracer
    ctx.faults = faults
    server.faults = faults if faults is not None and faults.loop_delay_s > 0 else None
    if tracer is not None or faults is not None:
        server.plain_class = WatchedTransport
        if server.tls is not None:
            server.tls_class = watched_tls_class()
    if config.status is not None:
        worker_name = "0" if worker is None else str(worker)
        server.stats = status.StatsCollector(time.monotonic(), worker_name)
        if config.status_dir is not None and worker is not None:
            server.status_share = StatusShare(config.status_dir, worker)
    if watching:
        ctx.observer = Watcher(server.logs, tracer, server.stats)


class _Uncached(ResponseCache):
    """The status listener's cache: it keys nothing, so every answer is made fresh and no
    path (a 404 included, which the file cache remembers) is ever looked up or stored."""

    def key(self, req: Request) -> None:
        return None


def status_context(server: Server) -> Context:
    """The status listener's context: the server's, with the status handler, a cache that
    keeps nothing (the answers are made fresh) and a gate that asks on every request."""
    sctx = copy.copy(server.ctx)
    sctx.handler = cast(Handler, StatusHandler(server))
    # History: with the file cache's remembered 404s, a 404 here asked the status handler for
    # the file root it does not have: a 500.
    sctx.cache = _Uncached(server.config.extra_headers)
    gate = server.ctx.gate
    if gate is not None and gate.accounts:
        sctx.gate = cast(Gate, _EveryRequestGate(gate))
    elif gate is not None:
        sctx.gate = None  # nothing to write here: the anonymous-write refusal is moot
    sctx.faults = None  # the status client is a normal client, not a crippled one
    return sctx
