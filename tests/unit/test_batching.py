"""Pipelined responses held back and sent as one batch, and one cache check shared by a batch.

The reactor's pump is driven with a fake socket, so the number of send calls and the exact
bytes can be asserted; the end-to-end tests (e2e/test_pipelining.py) check the same over
loopback.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from evloop_httpd import reactor, response_cache
from evloop_httpd.connection import Connection
from evloop_httpd.reactor import Server
from evloop_httpd.states import READ, ConnState
from evloop_httpd.transport import STAGE_BYTES, Transport

from ..helpers import DEADLINE_S, get, make_config

S = ConnState


class FakeSocket:
    """Takes at most ``cap`` bytes a call, and refuses every ``refuse_every``-th call."""

    def __init__(self, cap: int = 1 << 30, refuse_every: int = 0) -> None:
        self.cap = cap
        self.refuse_every = refuse_every
        self.calls = 0
        self.wire = bytearray()

    def _take(self, data: bytes) -> int:
        self.calls += 1
        if self.refuse_every and self.calls % self.refuse_every == 0:
            raise BlockingIOError
        n = min(len(data), self.cap)
        self.wire += data[:n]
        return n

    def send(self, data: bytes, flags: int = 0) -> int:
        return self._take(bytes(data))

    def sendmsg(self, buffers: tuple[bytes, ...]) -> int:
        return self._take(b"".join(bytes(b) for b in buffers))

    def fileno(self) -> int:
        return -1


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    # A turn's work budget (2 ms) is not what these tests are about: on a loaded machine 16
    # requests can outlast it, and the rest of a batch then waits for the next turn (a failure
    # seen under pytest -n 3). test_work_budget.py tests the budget.
    monkeypatch.setattr(reactor, "WORK_BUDGET_S", 60.0)
    (tmp_path / "a.txt").write_bytes(b"A" * 1000)
    (tmp_path / "b.txt").write_bytes(b"B" * 3000)
    srv = Server(make_config(tmp_path))
    try:
        yield srv
    finally:
        srv.close()


def attach(srv: Server, sock: FakeSocket) -> Transport:
    conn = Connection(srv.ctx, 0.0, ("127.0.0.1", 1), ("127.0.0.1", 2), 1)
    return Transport(sock, conn, srv.config.use_sendfile)  # type: ignore[arg-type]


def turn(srv: Server, t: Transport, now: float) -> None:
    """One turn of the transport, as the reactor gives it: a fresh work budget, then the pump."""
    srv.start_turn()
    t.pump(now)


def pump_until_idle(srv: Server, t: Transport) -> None:
    for _ in range(10_000):
        conn = t.conn
        if conn.state is S.READING_HEADERS and not conn.out and not t.pending and not conn.parked:
            return
        turn(srv, t, 0.0)
    raise AssertionError("the pump never finished")


def one_at_a_time(srv: Server, requests: list[bytes]) -> bytes:
    """The bytes the same requests get when each arrives alone."""
    sock = FakeSocket()
    t = attach(srv, sock)
    for req in requests:
        t.conn.receive(req, 0.0)
        pump_until_idle(srv, t)
    return bytes(sock.wire)


REQUESTS = [get("/a.txt"), get("/b.txt"), get("/a.txt", method="HEAD"), get("/missing")] * 4


def test_a_pipelined_batch_goes_out_in_one_call_with_the_same_bytes(server: Server) -> None:
    sock = FakeSocket()
    t = attach(server, sock)
    t.conn.receive(b"".join(REQUESTS), 0.0)
    turn(server, t, 0.0)
    assert sock.calls == 1
    assert t.conn.state is S.READING_HEADERS and not t.pending
    assert bytes(sock.wire) == one_at_a_time(server, REQUESTS)
    assert bytes(sock.wire).count(b"HTTP/1.1 404 ") == 4


def test_short_and_refused_sends_lose_and_reorder_nothing(server: Server) -> None:
    sock = FakeSocket(cap=333, refuse_every=3)
    t = attach(server, sock)
    t.conn.receive(b"".join(REQUESTS), 0.0)
    pump_until_idle(server, t)
    assert bytes(sock.wire) == one_at_a_time(server, REQUESTS)


def test_a_batch_is_bounded_in_bytes(server: Server) -> None:
    requests = [get("/b.txt")] * 64  # about 200 KiB of responses
    sock = FakeSocket()
    t = attach(server, sock)
    t.conn.receive(b"".join(requests), 0.0)
    largest = 0
    # Parked (a turn's work budget spent, as on a loaded machine) is not done either.
    while t.conn.state is not S.READING_HEADERS or t.conn.out or t.conn.parked:
        before = len(sock.wire)
        turn(server, t, 0.0)
        largest = max(largest, len(t.pending), len(sock.wire) - before)
    assert largest <= STAGE_BYTES + len(one_at_a_time(server, requests[:1]))
    assert bytes(sock.wire) == one_at_a_time(server, requests)


def test_one_stat_vouches_for_a_batch_but_not_for_later_input(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    stats: list[str] = []
    real_stat = os.stat

    def counting_stat(path: str, *args: object, **kwargs: object) -> os.stat_result:
        stats.append(path)
        return real_stat(path, *args, **kwargs)  # type: ignore[arg-type]

    t = attach(server, FakeSocket())
    t.conn.receive(get("/a.txt"), 0.0)  # fills the cache (slow path)
    pump_until_idle(server, t)
    monkeypatch.setattr(response_cache.os, "stat", counting_stat)
    t.conn.receive(get("/a.txt") * 8, 0.0)
    pump_until_idle(server, t)
    assert len(stats) == 1  # eight requests that arrived together, one check
    t.conn.receive(get("/a.txt"), 0.0)
    pump_until_idle(server, t)
    assert len(stats) == 2  # bytes that arrived later get a check of their own


class Trickle(FakeSocket):
    """A client that takes ``allow`` bytes, then refuses until the test allows more."""

    def __init__(self) -> None:
        super().__init__()
        self.allow = 0

    def _take(self, data: bytes) -> int:
        self.calls += 1
        if not self.allow:
            raise BlockingIOError
        n = min(len(data), self.allow)
        self.allow -= n
        self.wire += data[:n]
        return n


def test_a_batch_read_at_a_fair_rate_is_not_taken_for_a_stall(server: Server) -> None:
    # History: bytes flushed from the held-back batch did not count as progress, so a client
    # reading above the minimum rate was cut off stall_s after the batch's last response began.
    timeouts = server.config.timeouts
    rate = 3 * timeouts.min_rate_bytes_s // 2
    assert rate * timeouts.stall_s < STAGE_BYTES  # the batch outlasts stall_s at this rate
    requests = [get("/b.txt")] * 60
    sock = Trickle()
    t = attach(server, sock)
    now = 0.0
    t.conn.receive(b"".join(requests), now)
    while t.conn.state is not S.CLOSED and (t.conn.out or t.pending or t.conn.inbuf):
        turn(server, t, now)
        now += 1.0
        sock.allow = rate
        if now >= t.conn.deadline:  # what the reactor's timer does (the kernel holds nothing)
            t.conn.check_delivery(len(t.pending), now)
            t.conn.on_timeout(now)
    assert t.conn.state is S.READING_HEADERS
    assert bytes(sock.wire) == one_at_a_time(server, requests)


def test_an_end_of_stream_waits_for_the_held_back_bytes(server: Server) -> None:
    # History: at a graceful stop, a batch's last response went to LINGERING with bytes still
    # held back; the reactor also waited for input, read the half-closed client's end of stream
    # and closed, dropping them behind a clean FIN.
    ours, theirs = socket.socketpair()
    for s, opt in ((ours, socket.SO_SNDBUF), (theirs, socket.SO_RCVBUF)):
        s.setsockopt(socket.SOL_SOCKET, opt, 4096)
    ours.setblocking(False)
    theirs.settimeout(DEADLINE_S)
    t = attach(server, ours)  # type: ignore[arg-type]
    server.sel.register(ours.fileno(), READ, t)
    server.count += 1
    requests = [get("/a.txt")] * 200
    whole = one_at_a_time(server, requests)
    t.conn.receive(b"".join(requests), 0.0)
    server._step(t, 0.0)
    assert t.pending and t.conn.state is S.WRITING_HEADERS  # the client is not reading yet
    server.ctx.stopping = True
    theirs.shutdown(socket.SHUT_WR)
    got = bytearray()
    for _ in range(10_000):
        for key, mask in server.sel.select(0):
            if key.data is t:
                server._step(t, 0.0, mask)
        chunk = theirs.recv(1024)  # a slow reader: the batch stays held back a while
        got += chunk
        if not chunk:
            break
    assert not t.is_open
    assert len(got) > 0 and whole.startswith(bytes(got))
    assert whole[len(got) :].startswith(b"HTTP/1.1 ")  # it ends where a response ends


def test_at_a_stop_the_linger_waits_for_a_held_back_batch_read_at_a_fair_rate(
    server: Server,
) -> None:
    # History: the linger deadline (2 s) started when the last response was held back, so a
    # batch still being read at a stop was cut off, its bytes dropped.
    rate = 3 * server.config.timeouts.min_rate_bytes_s // 2
    requests = [get("/b.txt")] * 60
    whole = one_at_a_time(server, requests)
    sock = Trickle()
    t = attach(server, sock)
    now = 0.0
    t.conn.receive(b"".join(requests), now)
    turn(server, t, now)
    assert len(t.pending) > rate * server.config.timeouts.linger_s
    server.ctx.stopping = True
    while t.conn.state is not S.CLOSED and (t.conn.out or t.pending):
        now += 1.0
        sock.allow = rate
        if now >= t.conn.deadline:
            t.conn.check_delivery(len(t.pending), now)
            t.conn.on_timeout(now)
        turn(server, t, now)
    assert t.conn.state is S.LINGERING
    assert whole.startswith(bytes(sock.wire)) and whole[len(sock.wire) :].startswith(b"HTTP/1.1")
