"""Slow and idle clients: each is timed out after its configured deadline (408 where a response is
still possible, otherwise a quiet close), and none of them keeps others from being served.

Deadlines here are short (a fraction of a second) so the tests are quick; no test asserts how
long anything took, only what the client got and that the server moved on.
"""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from evloop_httpd.connection import Connection

from ..conftest import SMALL
from ..helpers import (
    DEADLINE_S,
    Client,
    RunningServer,
    connect,
    get,
    make_config,
    request,
    running,
    wait_until,
)

BIG = 16 * 1024 * 1024
SHORT = {"head_s": 0.4, "idle_s": 0.4, "stall_s": 0.4, "linger_s": 0.4, "min_rate_bytes_s": 1024}


@pytest.fixture
def fast_timeouts(request: pytest.FixtureRequest, www: Path) -> Iterator[RunningServer]:
    """A server with short timeouts; sendfile on unless a test parametrizes it (indirect)."""
    use_sendfile = getattr(request, "param", True)
    srv = RunningServer(make_config(www, use_sendfile=use_sendfile, timeouts=SHORT))
    yield srv
    srv.stop()


def readable(sock: socket.socket, timeout: float) -> bool:
    return bool(select.select([sock], [], [], timeout)[0])


def trickle_until_answered(sock: socket.socket, data: bytes, gap_s: float = 0.02) -> int:
    """Send ``data`` a byte at a time until the server speaks; returns the bytes sent."""
    end = time.monotonic() + DEADLINE_S
    sent = 0
    while time.monotonic() < end:
        if readable(sock, gap_s):
            return sent
        try:
            sock.send(data[sent % len(data) : sent % len(data) + 1])
        except OSError:
            return sent
        sent += 1
    raise AssertionError("the server never answered the trickle")


def test_slowloris_head_gets_408(fast_timeouts: RunningServer) -> None:
    srv = fast_timeouts
    # An endless head: the header section never ends, each byte arrives just in time.
    endless = b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-a: b\r\n" * 10_000
    with Client(srv.port) as c:
        sent = trickle_until_answered(c.sock, endless)
        assert sent < len(endless)
        reply = c.read_response()
        assert reply.status == 408
        assert reply.header("Connection") == "close"
        assert c.closed_by_peer()


def test_slowloris_does_not_block_others(fast_timeouts: RunningServer) -> None:
    srv = fast_timeouts
    lorises = [connect(srv.port) for _ in range(50)]
    try:
        for s in lorises:
            s.sendall(b"GET / HTTP/1.1\r\nHo")
        # While they hang mid-head, another client is served at once, many times over.
        with Client(srv.port, recv_size=4096) as c:
            for _ in range(20):
                c.send(get("/hello.txt"))
                assert c.read_response().body == SMALL
        for s in lorises:
            s.settimeout(DEADLINE_S)
            assert s.recv(4096).startswith(b"HTTP/1.1 408 ")
    finally:
        for s in lorises:
            s.close()


def test_connection_that_never_sends_is_closed_quietly(fast_timeouts: RunningServer) -> None:
    with Client(fast_timeouts.port) as c:
        assert c.closed_by_peer()
        assert c.buf == b""  # no 408 for a request that never began


def test_idle_keep_alive_is_closed_quietly(fast_timeouts: RunningServer) -> None:
    with Client(fast_timeouts.port) as c:
        c.send(get("/hello.txt"))
        assert c.read_response().body == SMALL
        assert c.closed_by_peer()
        assert c.buf == b""


def test_slow_body_gets_408(fast_timeouts: RunningServer) -> None:
    srv = fast_timeouts
    with Client(srv.port) as c:
        c.send(b"PUT /slow.txt HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
        # 50 bytes per 20 ms is ~2.5 KB/s, over the 1 KiB/s minimum at first; but a byte
        # every 20 ms is not, and that is what trickle sends.
        trickle_until_answered(c.sock, b"x" * 100_000)
        reply = c.read_response()
        assert reply.status == 408
        assert c.closed_by_peer()
    assert not (srv.root / "slow.txt").exists()
    assert not list(srv.root.glob(".evloop-upload-*"))


def test_body_faster_than_min_rate_survives_past_stall_timeout(
    fast_timeouts: RunningServer,
) -> None:
    srv = fast_timeouts
    body = b"y" * 40_000
    with Client(srv.port) as c:
        c.send(b"PUT /steady.txt HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body))
        # 4 KB every 0.1 s, for about a second: longer than stall_s, well above min rate.
        for i in range(0, len(body) - 4000, 4000):
            c.send(body[i : i + 4000])
            assert not readable(c.sock, 0.1), c.sock.recv(200)
        c.send(body[-4000:])
        reply = c.read_response()
    assert reply.status == 201
    assert (srv.root / "steady.txt").read_bytes() == body


# The stalled response is a file body: run it with sendfile on and off.
@pytest.mark.parametrize(
    "fast_timeouts", [True, False], ids=["sendfile", "read-send"], indirect=True
)
def test_client_that_never_reads_is_dropped(fast_timeouts: RunningServer) -> None:
    srv = fast_timeouts
    (srv.root / "big.bin").write_bytes(b"z" * BIG)  # far more than socket buffers hold
    sock = connect(srv.port, rcvbuf=4096)
    try:
        sock.sendall(get("/big.bin"))
        # Never read. The server's buffers fill and it waits; after the stall deadline it must
        # give up this connection and forget it.
        assert _wait_count(srv, 1)
        assert _wait_count(srv, 0)
        # Meanwhile and afterwards, others are served.
        assert request(srv.port, get("/hello.txt")).body == SMALL
        sock.settimeout(DEADLINE_S)
        got = 0
        try:
            while chunk := sock.recv(1 << 20):
                got += len(chunk)
        except ConnectionResetError:
            pass
        assert got < BIG
    finally:
        sock.close()


def test_lingering_after_error_is_bounded(fast_timeouts: RunningServer) -> None:
    # After an error response, the server drains what the client sends, but not forever.
    srv = fast_timeouts
    with Client(srv.port) as c:
        c.send(b"BAD\x00 / HTTP/1.1\r\n\r\n")
        reply = c.read_response()
        assert reply.status == 400
        end = time.monotonic() + DEADLINE_S
        closed = False
        while time.monotonic() < end:
            try:
                c.sock.send(b"junk" * 256)
            except OSError:
                closed = True
                break
            if readable(c.sock, 0.02) and c.sock.recv(4096) == b"":
                closed = True
                break
        assert closed


def test_many_pipelined_requests_from_one_client_do_not_starve_another(
    fast_timeouts: RunningServer,
) -> None:
    srv = fast_timeouts
    hog = connect(srv.port)
    try:
        hog.sendall(get("/hello.txt") * 2000)  # never read: the server stops when buffers fill
        for _ in range(10):
            assert request(srv.port, get("/hello.txt")).body == SMALL
    finally:
        hog.close()


def _wait_count(srv: RunningServer, n: int) -> bool:
    end = time.monotonic() + DEADLINE_S
    while time.monotonic() < end:
        if srv.server.count == n:
            return True
        time.sleep(0.01)
    return False


def test_timer_heap_stays_bounded_under_connection_churn(www: Path) -> None:
    # Timers are lazily re-armed, so closed connections leave stale heap entries behind; they
    # must not pile up (each one holds a whole Connection) while clients come and go.
    with running(www) as srv:
        for _ in range(600):
            assert request(srv.port, get("/hello.txt", "Connection: close\r\n")).status == 200
        assert _wait_count(srv, 0)
        assert len(srv.server.timers.heap) < 200, len(srv.server.timers.heap)


def test_timer_compaction_keeps_the_heap_the_loop_is_popping(www: Path) -> None:
    # History: compaction rebound self._timers to a new list while _run_timers was popping
    # from the old one (an _arm inside that loop can compact), so pushes and pops diverged.
    with running(www) as srv:
        heap = srv.server.timers.heap
        srv.server.timers.compact()
        assert srv.server.timers.heap is heap


def test_bug_in_a_timeout_handler_drops_only_that_connection(
    www: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # History: on_timeout ran outside the reactor's bug guard, so an exception in it would
    # have ended serve_forever for every client.
    def explode(self: Connection, now: float) -> None:
        if now >= self.deadline:
            raise RuntimeError("injected timeout bug")

    monkeypatch.setattr(Connection, "on_timeout", explode)
    with running(www, timeouts={"head_s": 0.2}) as srv:
        with Client(srv.port) as stuck:
            stuck.send(b"GET /hello.txt HTTP/1.1\r\nHo")
            assert stuck.closed_by_peer()
        assert request(srv.port, get("/hello.txt")).status == 200
        assert srv.alive()
        assert wait_until(lambda: "injected timeout bug" in srv.stderr.getvalue())
