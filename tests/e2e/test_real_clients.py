"""What real clients (wget, curl, node's fetch and http module) found wrong, as raw-socket tests.

Each test replays the exchange a real client had with the server over a raw socket, so that the
suite needs none of those clients.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from evloop_httpd.reactor import Server

from ..helpers import Client, connect, get, running

LONG_TARGET = "/" + "a" * 9000


def read_all(port: int, data: bytes) -> bytes:
    """Send ``data`` and read until the server closes the connection."""
    with Client(port, recv_size=4096) as c:
        c.send(data)
        assert c.closed_by_peer(), "the server did not close after its error response"
        return c.buf


def split_head(wire: bytes) -> tuple[bytes, bytes]:
    head, sep, rest = wire.partition(b"\r\n\r\n")
    assert sep, wire[:200]
    return head, rest


# History: node's http module (llhttp) failed HEAD requests that the parser refused with
# "HPE_CLOSED_CONNECTION: Data after `Connection: close`", and curl -I said "Excess found": the
# error response to a HEAD that never parsed carried its text body.
@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (f"HEAD {LONG_TARGET} HTTP/1.1\r\nHost: x\r\n\r\n".encode(), b"414"),
        (b"HEAD / HTTP/1.1\r\nHost: x\r\n" + b"X-A: b\r\n" * 150 + b"\r\n", b"431"),
        (b"HEAD / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 40_000 + b"\r\n\r\n", b"431"),
        (b"HEAD / HTTP/1.1\r\nHost: a b\r\n\r\n", b"400"),
        (b'HEAD /a"b HTTP/1.1\r\nHost: x\r\n\r\n', b"400"),
        (b"HEAD / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", b"400"),
        (b"HEAD / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", b"501"),
        (b"\r\nHEAD / HTTP/2.0\r\nHost: x\r\n\r\n", b"505"),  # after the one skipped CRLF (D5)
    ],
    ids=["414", "431-count", "431-size", "400-host", "400-target", "400-length", "501", "505"],
)
def test_refused_head_request_gets_no_body(www: Path, request_bytes: bytes, status: bytes) -> None:
    with running(www) as srv:
        head, rest = split_head(read_all(srv.port, request_bytes))
    assert head.startswith(b"HTTP/1.1 " + status + b" ")
    assert b"\r\nContent-Length: " in head  # what a GET would have been told
    assert b"\r\nConnection: close" in head
    assert rest == b""


def test_head_timed_out_mid_head_gets_no_body(www: Path) -> None:
    with running(www, timeouts={"head_s": 0.2}) as srv:
        head, rest = split_head(read_all(srv.port, b"HEAD /index.html HTTP/1.1\r\nHo"))
    assert head.startswith(b"HTTP/1.1 408 ")
    assert rest == b""


@pytest.mark.parametrize(
    "request_bytes",
    [
        f"GET {LONG_TARGET} HTTP/1.1\r\nHost: x\r\n\r\n".encode(),
        f"HEADX {LONG_TARGET} HTTP/1.1\r\nHost: x\r\n\r\n".encode(),  # not HEAD: a longer token
        f"head {LONG_TARGET} HTTP/1.1\r\nHost: x\r\n\r\n".encode(),  # methods are case-sensitive
    ],
)
def test_refused_other_requests_keep_their_error_body(www: Path, request_bytes: bytes) -> None:
    with running(www) as srv:
        head, rest = split_head(read_all(srv.port, request_bytes))
    assert head.startswith(b"HTTP/1.1 414 ")
    assert rest.startswith(b"414 URI Too Long\n")


# History: wget --limit-rate=20k and curl --limit-rate 200K were reset after 30 s of a
# download they were reading steadily: the server counted progress only when the kernel took
# more bytes, and a socket is writable again only once a third of its send buffer has drained.
@pytest.mark.slow
def test_slow_steady_reader_is_not_taken_for_a_stall(
    www: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A fixed send buffer (the kernel doubles it to 1 MiB) keeps the socket unwritable until
    # ~340 KiB have drained; the client's tiny receive buffer makes it acknowledge every read.
    add = Server._add

    def add_with_fixed_sndbuf(self: Server, sock: socket.socket, addr: tuple, now: float) -> None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 512 * 1024)
        add(self, sock, addr, now)

    monkeypatch.setattr(Server, "_add", add_with_fixed_sndbuf)
    data = os.urandom(1536 * 1024)
    (www / "slow.bin").write_bytes(data)
    stall_s = 0.5
    with running(www, timeouts={"stall_s": stall_s, "min_rate_bytes_s": 1}) as srv:
        sock = connect(srv.port, rcvbuf=4096)
        with sock:
            sock.sendall(get("/slow.bin"))
            wire = b""
            # 8 KiB every 0.1 s for three stall periods: progress the server can only see in
            # what the client acknowledges (120 KiB, far from making the socket writable).
            # The sleep paces a slow client; nothing waits on the server here.
            for _ in range(15):
                wire += sock.recv(8192)
                time.sleep(0.1)
            whole = wire.index(b"\r\n\r\n") + 4 + len(data)
            while len(wire) < whole:
                chunk = sock.recv(65536)
                if not chunk:
                    break  # reset or closed: the server gave up on us
                wire += chunk
    head, body = split_head(wire)
    assert head.startswith(b"HTTP/1.1 200 ")
    assert body == data


def test_a_path_that_names_nothing_is_400_on_a_connection_that_stays_open(www: Path) -> None:
    # The framing is intact, so unlike a malformed message this 400 does not close (README).
    with running(www) as srv, Client(srv.port) as c:
        c.send(get("/%ff") + get("/%00", method="HEAD") + get("/hello.txt"))
        bad = c.read_response()
        assert (bad.status, bad.header("Connection")) == (400, "keep-alive")
        bad_head = c.read_response(head_request=True)
        assert (bad_head.status, bad_head.header("Connection")) == (400, "keep-alive")
        assert c.read_response().body == b"hello, world\n"
