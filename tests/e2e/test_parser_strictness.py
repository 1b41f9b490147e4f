"""The parser's strictness rules over a real loopback socket: status, and the close that follows.

Each case is sent raw to a running server (some trickled a byte at a time, their response then
read in tiny pieces); the test reads the response and then checks that the server closed the
connection where the rule says it must, and that a valid request pipelined behind a malformed
one got no answer.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..helpers import TINY_RECV, Client, RunningServer, get, running

H = b"Host: t\r\n"
GOOD = b"GET /hello.txt HTTP/1.1\r\n" + H + b"\r\n"
CHUNKED = b"PUT /up.txt HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root: Path = tmp_path_factory.mktemp("www")
    (root / "hello.txt").write_bytes(b"hello\n")
    with running(
        root,
        limits={
            "max_request_line_bytes": 256,
            "max_head_bytes": 1024,
            "max_chunk_line_bytes": 64,
            "max_trailer_bytes": 256,
        },
    ) as server:
        yield server


CLOSING = [
    # Framing.
    (
        "te+cl",
        b"PUT /a HTTP/1.1\r\n"
        + H
        + b"Transfer-Encoding: chunked\r\nContent-Length: 1\r\n\r\n0\r\n\r\n",
        400,
    ),
    (
        "cl differ",
        b"PUT /a HTTP/1.1\r\n" + H + b"Content-Length: 1\r\nContent-Length: 2\r\n\r\nxx",
        400,
    ),
    ("cl sign", b"PUT /a HTTP/1.1\r\n" + H + b"Content-Length: +1\r\n\r\nx", 400),
    ("cl inner space", b"PUT /a HTTP/1.1\r\n" + H + b"Content-Length: 1 1\r\n\r\nx", 400),
    ("cl hex", b"PUT /a HTTP/1.1\r\n" + H + b"Content-Length: 0x1\r\n\r\nx", 400),
    ("cl empty", b"PUT /a HTTP/1.1\r\n" + H + b"Content-Length:\r\n\r\n", 400),
    (
        "te not chunked last",
        b"PUT /a HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked, gzip\r\n\r\n",
        400,
    ),
    (
        "te unknown coding",
        b"PUT /a HTTP/1.1\r\n" + H + b"Transfer-Encoding: gzip, chunked\r\n\r\n",
        501,
    ),
    ("te on 1.0", b"PUT /a HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("chunk size not hex", CHUNKED + b"zz\r\n", 400),
    ("chunk size too long", CHUNKED + b"1" * 17 + b"\r\n", 400),
    ("chunk no crlf after data", CHUNKED + b"3\r\nabcXY0\r\n\r\n", 400),
    ("chunk ext too long", CHUNKED + b"3;" + b"e" * 100 + b"\r\nabc\r\n0\r\n\r\n", 400),
    ("trailer too long", CHUNKED + b"0\r\nT: " + b"v" * 400 + b"\r\n\r\n", 400),
    ("te as trailer", CHUNKED + b"0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    # Syntax.
    ("double space", b"GET  /hello.txt HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("method not token", b"G@T /hello.txt HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("space before colon", b"GET /hello.txt HTTP/1.1\r\n" + H + b"X : y\r\n\r\n", 400),
    ("name not token", b"GET /hello.txt HTTP/1.1\r\n" + H + b"X/y: z\r\n\r\n", 400),
    ("obs-fold", b"GET /hello.txt HTTP/1.1\r\n" + H + b"X: a\r\n b\r\n\r\n", 400),
    ("nul in value", b"GET /hello.txt HTTP/1.1\r\n" + H + b"X: a\x00b\r\n\r\n", 400),
    ("bare cr in value", b"GET /hello.txt HTTP/1.1\r\n" + H + b"X: a\rb\r\n\r\n", 400),
    ("ctl in value", b"GET /hello.txt HTTP/1.1\r\n" + H + b"X: \x1b[0m\r\n\r\n", 400),
    ("bare lf", b"GET /hello.txt HTTP/1.1\n" + H + b"\n", 400),
    ("http/2.0", b"GET /hello.txt HTTP/2.0\r\n" + H + b"\r\n", 505),
    ("garbage first byte", b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03", 400),
    # Targets.
    ("asterisk not options", b"GET * HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("authority not connect", b"GET t:80 HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("relative target", b"GET hello.txt HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("bytes outside uri", b"GET /a<b> HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("fragment", b"GET /hello.txt#x HTTP/1.1\r\n" + H + b"\r\n", 400),
    # Host.
    ("no host", b"GET /hello.txt HTTP/1.1\r\n\r\n", 400),
    ("two hosts", b"GET /hello.txt HTTP/1.1\r\n" + H + H + b"\r\n", 400),
    ("bad host", b"GET /hello.txt HTTP/1.1\r\nHost: a@b\r\n\r\n", 400),
    # Limits.
    ("request line too long", b"GET /" + b"a" * 300 + b" HTTP/1.1\r\n" + H + b"\r\n", 414),
    (
        "head too large",
        b"GET /hello.txt HTTP/1.1\r\n" + H + b"X: " + b"v" * 1100 + b"\r\n\r\n",
        431,
    ),
]


@pytest.mark.parametrize(("name", "data", "status"), CLOSING, ids=[c[0] for c in CLOSING])
def test_refused_and_closed(srv: RunningServer, name: str, data: bytes, status: int) -> None:
    with Client(srv.port) as c:
        # A valid request behind the bad one must never be answered.
        c.send(data + GOOD)
        reply = c.read_response()
        assert reply.status == status, reply.raw_head
        assert reply.header("Connection") == "close"
        assert c.closed_by_peer()
        assert b"HTTP/1.1" not in c.buf, c.buf


@pytest.mark.parametrize(
    ("name", "data", "status"),
    [
        c
        for c in CLOSING
        if c[0] in ("bare lf", "head too large", "request line too long", "obs-fold")
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_refused_when_trickled_bytewise(
    srv: RunningServer, name: str, data: bytes, status: int
) -> None:
    with Client(srv.port, TINY_RECV) as c:
        c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # one segment per byte
        for i in range(len(data)):
            try:
                c.send(data[i : i + 1])
            except (BrokenPipeError, ConnectionResetError):
                break  # refused before the end: the response is already waiting
        reply = c.read_response()
        assert reply.status == status
        assert c.closed_by_peer()


def test_trickled_head_without_line_end_is_refused_at_the_limit(srv: RunningServer) -> None:
    with Client(srv.port, TINY_RECV) as c:
        c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sent = 0
        try:
            for _ in range(5000):
                c.send(b"a")
                sent += 1
        except (BrokenPipeError, ConnectionResetError):
            pass
        reply = c.read_response()
        assert reply.status == 414
        assert c.closed_by_peer()


def test_authority_form_connect_is_405(srv: RunningServer) -> None:
    with Client(srv.port) as c:
        c.send(b"CONNECT t:443 HTTP/1.1\r\nHost: t:443\r\n\r\n")
        reply = c.read_response()
        assert reply.status == 405
        assert reply.header("Allow") is not None


@pytest.mark.parametrize("target", [b"/hello.txt", b"http://t/hello.txt", b"*"])
def test_connect_with_any_other_form_is_400(srv: RunningServer, target: bytes) -> None:
    with Client(srv.port) as c:
        c.send(b"CONNECT " + target + b" HTTP/1.1\r\nHost: t\r\n\r\n")
        reply = c.read_response()
        assert reply.status == 400
        assert b"authority-form" in reply.body
        assert c.closed_by_peer()


def test_absolute_form_is_served_and_keeps_alive(srv: RunningServer) -> None:
    with Client(srv.port) as c:
        c.send(b"GET http://elsewhere/hello.txt HTTP/1.1\r\n" + H + b"\r\n" + GOOD)
        first, second = c.read_response(), c.read_response()
        assert (first.status, first.body, second.status) == (200, b"hello\n", 200)


def test_one_leading_empty_line_is_skipped(srv: RunningServer) -> None:
    with Client(srv.port) as c:
        c.send(b"\r\n" + GOOD)
        assert c.read_response().body == b"hello\n"


def test_options_asterisk(srv: RunningServer) -> None:
    with Client(srv.port) as c:
        c.send(b"OPTIONS * HTTP/1.1\r\n" + H + b"\r\n")
        assert c.read_response().status == 200


def test_valid_chunked_upload_then_pipelined_get(srv: RunningServer) -> None:
    with Client(srv.port) as c:
        c.send(CHUNKED + b"3;x=y\r\nabc\r\n0\r\nT: v\r\n\r\n" + GOOD)
        assert c.read_response().status in (200, 201, 204)
        assert c.read_response().body == b"hello\n"
    assert (srv.root / "up.txt").read_bytes() == b"abc"


def test_bad_chunk_after_good_ones_aborts_the_upload(srv: RunningServer) -> None:
    with Client(srv.port) as c:
        c.send(b"PUT /partial.txt HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n")
        c.send(b"3\r\nabc\r\n")
        c.send(b"3\r\ndefXX" + GOOD)
        reply = c.read_response()
        assert reply.status == 400
        assert c.closed_by_peer()
        assert b"HTTP/1.1" not in c.buf
    assert not (srv.root / "partial.txt").exists()


@pytest.mark.parametrize(
    ("extra", "status"),
    [
        ('If-None-Match: "x"' + "," * 16000, 200),
        ("Range: bytes=0-1" + "," * 16000, 200),
        ("Accept-Encoding: gzip" + "," * 16000, 200),
        ("Connection: keep-alive" + "," * 16000, 400),
        ("Accept-Encoding: " + ", " * 8000, 200),
    ],
)
def test_packed_fields_get_a_clear_answer(tmp_path: Path, extra: str, status: int) -> None:
    (tmp_path / "a.txt").write_bytes(b"hello")
    with running(tmp_path) as srv:
        client = Client(srv.port, recv_size=4096)
        client.send(get("/a.txt", extra + "\r\n"))
        reply = client.read_response()
        assert reply.status == status
        if status == 200:
            assert reply.body == b"hello"
        client.sock.close()
