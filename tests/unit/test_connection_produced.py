"""The connection's produced bodies (a folder's ZIP), sans-IO: PREPARING in bounded steps, the
chunk framing, pulling only when the previous piece is gone, failures, HEAD and the cap.

A scripted producer stands in for :class:`zipstream.ZipStream`; the handler is replaced by one
that returns its plan, so only the connection's logic is under test.
"""

from __future__ import annotations

from http import HTTPStatus
from pathlib import Path

import pytest

from evloop_httpd.connection import Connection, Context
from evloop_httpd.errors import HttpError
from evloop_httpd.parser import Request
from evloop_httpd.responses import Response
from evloop_httpd.states import WRITE, ConnState, Input

from ..helpers import make_config

S = ConnState
GET = b"GET /f/?download=zip HTTP/1.1\r\nHost: x\r\n\r\n"


class Script:
    """A producer: ``checks`` calls of maybe_check before True (or ``refuse``), then the
    pieces in order (an exception instance is raised in its turn)."""

    def __init__(
        self,
        pieces: list[bytes | Exception],
        checks: int = 0,
        refuse: HttpError | None = None,
    ) -> None:
        self.pieces = pieces
        self.checks = checks
        self.refuse = refuse
        self.check_calls = 0
        self.pulls: list[int] = []
        self.closed = 0

    @property
    def finished(self) -> bool:
        return not self.pieces

    def maybe_check(self) -> bool:
        self.check_calls += 1
        if self.refuse is not None:
            raise self.refuse
        return self.check_calls > self.checks

    def next_chunk(self, max_bytes: int) -> bytes:
        self.pulls.append(max_bytes)
        piece = self.pieces.pop(0)
        if isinstance(piece, Exception):
            raise piece
        return piece

    def close(self) -> None:
        self.closed += 1


class Quiet:
    def __init__(self) -> None:
        self.bugs: list[BaseException] = []

    def transition(self, conn: Connection, old: ConnState, inp: Input, new: ConnState) -> None:
        pass

    def response_head(self, conn: Connection, head: bytes) -> None:
        pass

    def request_done(self, conn: Connection) -> None:
        pass

    def bug(self, conn: Connection, exc: BaseException) -> None:
        self.bugs.append(exc)

    def debug(self, text: str) -> None:
        pass


class Planner:
    """The handler's part: every request gets a plan with the scripted producer."""

    def __init__(self, script: Script, chunked: bool) -> None:
        self.script = script
        self.chunked = chunked

    def begin(self, req: Request, wall: float) -> Response:
        headers = [(b"Content-Type", b"application/zip")]
        if self.chunked:
            headers.append((b"Transfer-Encoding", b"chunked"))
        return Response(
            HTTPStatus.OK,
            headers,
            producer=self.script,
            chunked=self.chunked,
            close=not self.chunked,
        )


def make(tmp_path: Path, script: Script, *, chunked: bool = True, **cfg: object) -> Connection:
    ctx = Context(make_config(tmp_path, **cfg), Quiet())

    ctx.handler = Planner(script, chunked)  # type: ignore[assignment]
    return Connection(ctx, now=0.0)


def pump(conn: Connection) -> bytes:
    """Play the transport: send what is out, in short writes, and pull when it is gone."""
    sent = b""
    while True:
        out = conn.to_send()
        if out:
            piece = bytes(out[:7])
            sent += piece
            conn.wrote(len(piece), 0.0)
            continue
        if conn.produced is not None and conn.produce():
            continue
        return sent


def state(conn: Connection) -> ConnState:
    """The state, read through a call so that mypy does not narrow it across inputs."""
    return conn.state


def body_of(wire: bytes) -> bytes:
    return wire.partition(b"\r\n\r\n")[2]


def test_pieces_are_framed_as_chunks_and_the_last_chunk_ends_it(tmp_path: Path) -> None:
    script = Script([b"abc", b"", b"defg", b"xyz"])
    conn = make(tmp_path, script)
    conn.receive(GET, 0.0)
    assert state(conn) is S.WRITING_HEADERS and conn.ctx.zips == 1
    wire = pump(conn)
    assert b"Transfer-Encoding: chunked\r\n" in wire
    assert body_of(wire) == b"3\r\nabc\r\n4\r\ndefg\r\n3\r\nxyz\r\n0\r\n\r\n"
    assert state(conn) is S.READING_HEADERS  # kept alive
    assert script.closed == 1 and conn.ctx.zips == 0 and conn.produced is None


def test_http_10_gets_the_bytes_unframed_and_a_close(tmp_path: Path) -> None:
    conn = make(tmp_path, Script([b"abc", b"de"]), chunked=False)
    conn.receive(b"GET /f/?download=zip HTTP/1.0\r\n\r\n", 0.0)
    wire = pump(conn)
    assert body_of(wire) == b"abcde" and b"Connection: close" in wire
    assert state(conn) is S.LINGERING


def test_nothing_is_pulled_while_a_piece_waits(tmp_path: Path) -> None:
    script = Script([b"a" * 100, b"b"])
    conn = make(tmp_path, script)
    conn.receive(GET, 0.0)
    conn.wrote(len(conn.to_send()), 0.0)  # the head
    assert state(conn) is S.STREAMING_FILE
    assert conn.produce() and len(script.pulls) == 1
    conn.wrote(10, 0.0)  # the socket took part of it, then said EAGAIN
    assert not conn.produce() and len(script.pulls) == 1  # backpressure: no second pull
    conn.wrote(len(conn.to_send()), 0.0)
    assert conn.produce() and len(script.pulls) == 2


def test_the_check_runs_in_steps_across_turns(tmp_path: Path) -> None:
    script = Script([b"z"], checks=5)
    conn = make(tmp_path, script)
    budget = iter([True, False, False, True, True, True, True])
    conn.ctx.may_start = lambda: next(budget)
    conn.receive(GET, 0.0)
    # Two steps in the first turn, then parked: waiting to write, nothing sent.
    assert state(conn) is S.PREPARING and conn.parked and conn.interest == WRITE
    assert script.check_calls == 2 and conn.to_send() == b""
    conn.resume(1.0)  # the next turn: one step at least, whatever the clock
    assert state(conn) is S.PREPARING and script.check_calls == 3
    conn.resume(2.0)
    assert state(conn) is S.WRITING_HEADERS and script.check_calls == 6
    assert body_of(pump(conn)) == b"1\r\nz\r\n0\r\n\r\n"


def test_a_refusal_in_the_check_is_an_error_response(tmp_path: Path) -> None:
    script = Script([b"never"], refuse=HttpError(HTTPStatus.FORBIDDEN, "too many entries"))
    conn = make(tmp_path, script)
    conn.receive(GET, 0.0)
    wire = pump(conn)
    assert wire.startswith(b"HTTP/1.1 403 ") and b"too many entries" in wire
    assert script.closed == 1 and conn.ctx.zips == 0 and script.pulls == []
    assert state(conn) is S.READING_HEADERS


@pytest.mark.parametrize(
    "failure", [OSError(5, "EIO"), HttpError(HTTPStatus.FORBIDDEN, "grew")], ids=["eio", "grew"]
)
def test_a_failure_after_the_head_aborts_without_a_last_chunk(
    tmp_path: Path, failure: Exception
) -> None:
    script = Script([b"abc", failure, b"never"])
    conn = make(tmp_path, script)
    conn.receive(GET, 0.0)
    wire = pump(conn)
    assert body_of(wire) == b"3\r\nabc\r\n"  # no last chunk: the client sees it cut short
    assert state(conn) is S.CLOSED and conn.cut_short
    assert script.closed == 1 and conn.ctx.zips == 0


def test_head_runs_the_check_and_sends_no_body(tmp_path: Path) -> None:
    script = Script([b"never"], checks=2)
    conn = make(tmp_path, script)
    conn.receive(b"HEAD /f/?download=zip HTTP/1.1\r\nHost: x\r\n\r\n", 0.0)
    wire = pump(conn)
    assert wire.endswith(b"\r\n\r\n") and b"Transfer-Encoding: chunked" in wire
    assert script.check_calls == 3 and script.pulls == [] and script.closed == 1
    assert state(conn) is S.READING_HEADERS and conn.ctx.zips == 0


def test_beyond_the_cap_a_503(tmp_path: Path) -> None:
    script = Script([b"never"])
    conn = make(tmp_path, script, max_zips=1)
    conn.ctx.zips = 1  # another download holds the one slot
    conn.receive(GET, 0.0)
    wire = pump(conn)
    assert wire.startswith(b"HTTP/1.1 503 ") and b"Retry-After: 5\r\n" in wire
    assert script.closed == 1 and script.check_calls == 0 and conn.ctx.zips == 1


def test_an_abort_while_preparing_closes_the_producer(tmp_path: Path) -> None:
    script = Script([b"never"], checks=100)
    conn = make(tmp_path, script)
    conn.ctx.may_start = lambda: False
    conn.receive(GET, 0.0)
    assert state(conn) is S.PREPARING
    conn.abort()
    assert state(conn) is S.CLOSED and not conn.cut_short  # nothing of a response had gone
    assert script.closed == 1 and conn.ctx.zips == 0
