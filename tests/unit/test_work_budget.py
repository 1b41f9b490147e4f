"""The reactor's per-turn work budget: expensive pipelined requests are spread over turns.

A turn of one connection starts new pipelined requests only while ``WORK_BUDGET_S`` lasts; past
it the connection parks (whole requests wait in ``inbuf``, it waits to write) and the next turn
starts one. These tests check the bytes: the same responses in the same order, fewer per turn,
and a parked connection is always served again without new input.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from evloop_httpd import reactor
from evloop_httpd.connection import Connection
from evloop_httpd.reactor import WORK_BUDGET_S, Server
from evloop_httpd.states import READ, WRITE, ConnState
from evloop_httpd.transport import Transport

from ..helpers import DEADLINE_S, Client, get, make_config, running

S = ConnState
COST_S = 3 * WORK_BUDGET_S / 2  # what each request of the expensive kind costs here


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    (tmp_path / "a.txt").write_bytes(b"A" * 1000)
    srv = Server(make_config(tmp_path))
    try:
        yield srv
    finally:
        srv.close()


class SlowHandler:
    """The server's handler, but every request it begins costs COST_S of CPU (as a listing of a
    big folder or a path of thousands of segments does)."""

    def __init__(self, handler: object) -> None:
        self._handler = handler

    def begin(self, *args: object) -> object:
        end = time.perf_counter() + COST_S
        while time.perf_counter() < end:  # busy: the loop is blocked, as by real work
            pass
        return self._handler.begin(*args)  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> object:
        return getattr(self._handler, name)


def make_expensive(srv: Server) -> None:
    srv.ctx.handler = SlowHandler(srv.ctx.handler)  # type: ignore[assignment]


def drain(sock: socket.socket) -> bytes:
    got = bytearray()
    while True:
        try:
            chunk = sock.recv(65536)
        except BlockingIOError:
            return bytes(got)
        if not chunk:
            return bytes(got)
        got += chunk


def test_expensive_pipelined_requests_take_one_turn_each(server: Server) -> None:
    # History: the pump counted sends, not work, so one wake-up ran up to 17 pipelined requests
    # whatever each cost (17 listings of a big folder froze every other client for seconds).
    make_expensive(server)
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    theirs.setblocking(False)
    conn = Connection(server.ctx, 0.0, ("127.0.0.1", 1), ("127.0.0.1", 2), 1)
    t = Transport(ours, conn, server.config.use_sendfile)
    server.sel.register(ours.fileno(), READ, t)
    server.count += 1
    n = 6
    theirs.sendall(get("/missing") * n)  # 404s: never cached, each goes through the handler
    server._step(t, 0.0, READ)
    per_turn = [drain(theirs).count(b"HTTP/1.1 404 ")]
    for _ in range(100):
        if sum(per_turn) == n:
            break
        assert conn.parked and conn.interest == WRITE and t.events == WRITE
        ready = [key for key, mask in server.sel.select(0) if key.data is t]
        assert ready  # no new input: the loop comes back to it all the same
        server._step(t, 0.0, WRITE)
        per_turn.append(drain(theirs).count(b"HTTP/1.1 404 "))
    assert per_turn == [1] * n
    assert not conn.parked and conn.state is S.READING_HEADERS and t.events == READ
    theirs.close()


def test_cheap_pipelined_requests_still_share_a_turn(server: Server) -> None:
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    theirs.setblocking(False)
    conn = Connection(server.ctx, 0.0, ("127.0.0.1", 1), ("127.0.0.1", 2), 1)
    t = Transport(ours, conn, server.config.use_sendfile)
    server.sel.register(ours.fileno(), READ, t)
    server.count += 1
    theirs.sendall(get("/a.txt"))
    server._step(t, 0.0, READ)  # fills the cache
    drain(theirs)
    theirs.sendall(get("/a.txt") * 8)
    server._step(t, 0.0, READ)
    assert drain(theirs).count(b"HTTP/1.1 200 ") == 8  # cached GETs cost microseconds
    theirs.close()


@pytest.mark.parametrize("half_close", [False, True])
def test_a_parked_pipeline_is_answered_whole_without_more_input(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, half_close: bool
) -> None:
    # No budget at all: every turn starts exactly one request, the worst case for getting stuck.
    monkeypatch.setattr(reactor, "WORK_BUDGET_S", 0.0)
    (tmp_path / "a.txt").write_bytes(b"0123456789" * 100)
    (tmp_path / "dir").mkdir()
    kinds = [
        (get("/a.txt"), 200, False),
        (get("/a.txt", method="HEAD"), 200, True),
        (get("/missing"), 404, False),
        (get("/a.txt", "Range: bytes=0-9\r\n"), 206, False),
        (get("/a.txt", 'If-None-Match: "x", , "y"\r\n'), 200, False),
        (get("/dir"), 301, False),
    ]
    pipeline = kinds * 5
    with running(tmp_path, listing=True) as srv:
        client = Client(srv.port, recv_size=4096)
        client.send(b"".join(req for req, _, _ in pipeline))
        if half_close:  # the end of stream is read only after every parked request is answered
            client.sock.shutdown(socket.SHUT_WR)
        client.sock.settimeout(DEADLINE_S)
        statuses = [client.read_response(head_request=head).status for _, _, head in pipeline]
        assert statuses == [status for _, status, _ in pipeline]
        client.sock.close()


def test_a_request_that_came_with_the_handshake_is_answered_at_accept(server: Server) -> None:
    # History: a new connection was only registered at accept, and its request read a loop pass
    # later, after every other ready connection's turn: under a flood of expensive requests a
    # fresh client waited one extra attacker turn (deep paths: probe p50 63 ms, now 28 ms).
    server.bind()
    client = socket.create_connection(server.address[:2], timeout=DEADLINE_S)
    client.sendall(get("/a.txt"))  # loopback: in the server's receive queue when this returns
    server._accept(server.listeners[0], 0.0)
    client.setblocking(False)
    reply = client.recv(65536)  # no wait: the answer must already be here
    assert reply.startswith(b"HTTP/1.1 200 OK\r\n") and reply.endswith(b"A" * 1000)
    client.close()


def tiny_chunks(payload: bytes) -> bytes:
    return b"".join(b"1\r\n" + payload[i : i + 1] + b"\r\n" for i in range(len(payload)))


def test_a_body_of_tiny_chunks_is_decoded_a_bounded_step_at_a_time(tmp_path: Path) -> None:
    # History: one recv of 64 KiB of one-byte chunks (10,000 lines) was decoded in one go, 20-40
    # ms of matching during which no other client was served.
    from evloop_httpd.body import LINES_PER_STEP, ChunkedBody
    from evloop_httpd.config import Limits

    payload = bytes(range(256)) * 8
    body = ChunkedBody(Limits())
    buf = bytearray(tiny_chunks(payload) + b"0\r\n\r\n")
    got, done = body.read(buf, LINES_PER_STEP)
    assert (got, done, body.paused) == (payload[: LINES_PER_STEP - 1], False, True)  # a line each
    while not done:
        more, done = body.read(buf, LINES_PER_STEP)
        got += more
    assert got == payload and not buf

    srv = Server(make_config(tmp_path))
    try:
        conn = Connection(srv.ctx, 0.0, ("127.0.0.1", 1), ("127.0.0.1", 2), 1)
        srv.ctx.may_start = lambda: False  # no budget: one bounded step per turn
        head = b"PUT /up.bin HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        conn.receive(head + tiny_chunks(payload) + b"0\r\n\r\n", 0.0)
        turns = 1
        while conn.parked:
            assert conn.state is S.READING_BODY and conn.interest == WRITE
            conn.resume(0.0)
            turns += 1
        assert turns == len(payload) // LINES_PER_STEP + 1  # the last step reads "0" and ends
        assert conn.state is S.WRITING_HEADERS and conn.out.startswith(b"HTTP/1.1 201 ")
    finally:
        srv.close()
    assert (tmp_path / "up.bin").read_bytes() == payload


def test_an_upload_of_tiny_chunks_completes_over_many_turns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reactor, "WORK_BUDGET_S", 0.0)
    payload = bytes(range(256)) * 80  # 20,480 chunks: several recvs, each parked many times
    with running(tmp_path) as srv:
        client = Client(srv.port, recv_size=4096)
        client.send(b"PUT /up.bin HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
        client.send(tiny_chunks(payload) + b"0\r\n\r\n" + get("/up.bin"))
        assert client.read_response().status == 201
        assert client.read_response().body == payload
        client.sock.close()
