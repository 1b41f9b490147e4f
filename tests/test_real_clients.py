"""What real clients (wget, curl, node's fetch and http module) found wrong, as raw-socket tests.

Each test replays the exchange a real client had with the server over a raw socket, so that the
suite needs none of those clients.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .helpers import Client, running

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
