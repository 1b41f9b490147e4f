"""parse_head and the body decoders, without sockets.

Every head case runs three ways: whole, byte by byte (with ``scan_from`` as the connection passes
it), and with bytes of a next request behind it, which must not change the outcome.
"""

from __future__ import annotations

import pytest

from evloop_httpd.body import ChunkedBody, FixedBody
from evloop_httpd.config import Limits
from evloop_httpd.errors import HttpError
from evloop_httpd.parser import Request, parse_head

L = Limits()
H = b"Host: example.org\r\n"


def feed(data: bytes, limits: Limits = L, step: int = 1) -> Request | None:
    """Feed ``data`` ``step`` bytes at a time as the connection does; the first non-None result."""
    buf = bytearray()
    scan_from = 0
    for i in range(0, len(data), step):
        buf += data[i : i + step]
        req = parse_head(buf, limits, scan_from)
        if req is not None:
            return req
        scan_from = len(buf)
    return None


def outcome(data: bytes, limits: Limits = L, step: int = 0) -> object:
    """Request fields, None, or the error status, for one way of feeding ``data``."""
    try:
        req = parse_head(bytearray(data), limits) if step == 0 else feed(data, limits, step)
    except HttpError as exc:
        assert exc.close
        return int(exc.status)
    if req is None:
        return None
    return (req.method, req.path, req.query, req.host, req.content_length, req.chunked)


def assert_all_ways(data: bytes, expected: object, limits: Limits = L) -> None:
    assert outcome(data, limits) == expected
    assert outcome(data, limits, step=1) == expected
    assert outcome(data, limits, step=3) == expected
    if expected is not None:
        assert outcome(data + b"GET / HTTP/1.1\r\n" + H + b"\r\n", limits) == expected


OK = [
    (b"GET / HTTP/1.1\r\n" + H + b"\r\n", (b"GET", b"/", None, b"example.org", 0, False)),
    (b"GET /a?b=c HTTP/1.1\r\n" + H + b"\r\n", (b"GET", b"/a", b"b=c", b"example.org", 0, False)),
    (b"GET / HTTP/1.0\r\n\r\n", (b"GET", b"/", None, b"", 0, False)),
    (b"HEAD /x HTTP/1.1\r\nHost:h\r\n\r\n", (b"HEAD", b"/x", None, b"h", 0, False)),
    (b"OPTIONS * HTTP/1.1\r\n" + H + b"\r\n", (b"OPTIONS", b"*", None, b"example.org", 0, False)),
    # Absolute-form: its authority wins over Host (RFC 9112 §3.2.2).
    (
        b"GET http://other:81/p?q HTTP/1.1\r\n" + H + b"\r\n",
        (b"GET", b"/p", b"q", b"other:81", 0, False),
    ),
    (b"GET http://o HTTP/1.1\r\n" + H + b"\r\n", (b"GET", b"/", None, b"o", 0, False)),
    (b"CONNECT o:443 HTTP/1.1\r\nHost: o:443\r\n\r\n", (b"CONNECT", b"", None, b"o:443", 0, False)),
    (
        b"PUT /f HTTP/1.1\r\n" + H + b"Content-Length: 5\r\n\r\n",
        (b"PUT", b"/f", None, b"example.org", 5, False),
    ),
    (
        b"PUT /f HTTP/1.1\r\n" + H + b"Content-Length: 5, 5\r\n\r\n",
        (b"PUT", b"/f", None, b"example.org", 5, False),
    ),
    (
        b"PUT /f HTTP/1.1\r\n" + H + b"Transfer-Encoding: Chunked\r\n\r\n",
        (b"PUT", b"/f", None, b"example.org", 0, True),
    ),
    # D5: exactly one leading empty line is skipped.
    (b"\r\nGET / HTTP/1.1\r\n" + H + b"\r\n", (b"GET", b"/", None, b"example.org", 0, False)),
    (
        b"GET /[a]|^`{} HTTP/1.1\r\n" + H + b"\r\n",
        (b"GET", b"/[a]|^`{}", None, b"example.org", 0, False),
    ),
    (
        b"GET / HTTP/1.1\r\n" + H + b"X: a\tb \xff\r\n\r\n",
        (b"GET", b"/", None, b"example.org", 0, False),
    ),
    (b"GET / HTTP/1.1\r\nHost:\r\n\r\n", (b"GET", b"/", None, b"", 0, False)),
    (b"GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n", (b"GET", b"/", None, b"[::1]:80", 0, False)),
]

BAD = [
    # Framing (RFC 9112 §6).
    (
        "te+cl",
        b"PUT / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
        400,
    ),
    (
        "cl differ",
        b"PUT / HTTP/1.1\r\n" + H + b"Content-Length: 3\r\nContent-Length: 4\r\n\r\n",
        400,
    ),
    ("cl list differ", b"PUT / HTTP/1.1\r\n" + H + b"Content-Length: 3, 4\r\n\r\n", 400),
    ("cl sign", b"PUT / HTTP/1.1\r\n" + H + b"Content-Length: +3\r\n\r\n", 400),
    ("cl minus", b"PUT / HTTP/1.1\r\n" + H + b"Content-Length: -3\r\n\r\n", 400),
    ("cl inner space", b"PUT / HTTP/1.1\r\n" + H + b"Content-Length: 1 2\r\n\r\n", 400),
    ("cl hex", b"PUT / HTTP/1.1\r\n" + H + b"Content-Length: 0x10\r\n\r\n", 400),
    ("cl empty", b"PUT / HTTP/1.1\r\n" + H + b"Content-Length:\r\n\r\n", 400),
    ("cl empty element", b"PUT / HTTP/1.1\r\n" + H + b"Content-Length: 3,\r\n\r\n", 400),
    ("cl huge", b"PUT / HTTP/1.1\r\n" + H + b"Content-Length: 99999999999999999999\r\n\r\n", 413),
    ("te not last", b"PUT / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked, gzip\r\n\r\n", 400),
    ("te only gzip", b"PUT / HTTP/1.1\r\n" + H + b"Transfer-Encoding: gzip\r\n\r\n", 400),
    ("te unknown", b"PUT / HTTP/1.1\r\n" + H + b"Transfer-Encoding: gzip, chunked\r\n\r\n", 501),
    (
        "te twice",
        b"PUT / HTTP/1.1\r\n"
        + H
        + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
        400,
    ),
    ("te empty element", b"PUT / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked,\r\n\r\n", 400),
    ("te http/1.0", b"PUT / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    # Syntax (RFC 9112 §3, §5).
    ("double space", b"GET  / HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("tab separator", b"GET\t/ HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("trailing space", b"GET / HTTP/1.1 \r\n" + H + b"\r\n", 400),
    ("method not token", b"G(T / HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("lower version", b"GET / http/1.1\r\n" + H + b"\r\n", 400),
    ("space before colon", b"GET / HTTP/1.1\r\n" + H + b"X : y\r\n\r\n", 400),
    ("tab before colon", b"GET / HTTP/1.1\r\n" + H + b"X\t: y\r\n\r\n", 400),
    ("name not token", b"GET / HTTP/1.1\r\n" + H + b"X(y): z\r\n\r\n", 400),
    ("no colon", b"GET / HTTP/1.1\r\n" + H + b"Xyz\r\n\r\n", 400),
    ("obs-fold", b"GET / HTTP/1.1\r\n" + H + b"X: a\r\n  b\r\n\r\n", 400),
    ("nul in value", b"GET / HTTP/1.1\r\n" + H + b"X: a\x00b\r\n\r\n", 400),
    ("bare cr in value", b"GET / HTTP/1.1\r\n" + H + b"X: a\rb\r\n\r\n", 400),
    ("ctl in value", b"GET / HTTP/1.1\r\n" + H + b"X: a\x01b\r\n\r\n", 400),
    ("del in value", b"GET / HTTP/1.1\r\n" + H + b"X: a\x7f\r\n\r\n", 400),
    ("bare lf", b"GET / HTTP/1.1\n" + H + b"\r\n", 400),
    ("bare lf end", b"GET / HTTP/1.1\r\n" + H + b"\n", 400),
    ("two empty lines", b"\r\n\r\nGET / HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("starts with space", b" GET / HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("starts with tls", b"\x16\x03\x01\x02\x00\x01", 400),
    ("http/2.0", b"GET / HTTP/2.0\r\n" + H + b"\r\n", 505),
    ("http/0.9", b"GET / HTTP/0.9\r\n" + H + b"\r\n", 505),
    # Targets (RFC 9112 §3.2).
    ("asterisk not options", b"GET * HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("authority not connect", b"GET example.org:80 HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("relative", b"GET a/b HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("other scheme", b"GET ftp://h/ HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("empty host", b"GET http:///a HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("userinfo", b"GET http://u@h/ HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("fragment", b"GET /a#b HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("angle", b"GET /<a> HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("quote", b'GET /"a" HTTP/1.1\r\n' + H + b"\r\n", 400),
    ("backslash", b"GET /a\\b HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("bad pct", b"GET /a%2 HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("obs-text target", b"GET /\xe9 HTTP/1.1\r\n" + H + b"\r\n", 400),
    # Host (RFC 9112 §3.2, RFC 9110 §7.2).
    ("no host", b"GET / HTTP/1.1\r\n\r\n", 400),
    ("no host 1.2", b"GET / HTTP/1.2\r\n\r\n", 400),
    ("two hosts", b"GET / HTTP/1.1\r\n" + H + H + b"\r\n", 400),
    ("host space", b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
    ("host userinfo", b"GET / HTTP/1.1\r\nHost: u@h\r\n\r\n", 400),
    ("host path", b"GET / HTTP/1.1\r\nHost: h/p\r\n\r\n", 400),
    ("host bad port", b"GET / HTTP/1.1\r\nHost: h:8x\r\n\r\n", 400),
]


@pytest.mark.parametrize(("data", "expected"), OK)
def test_accepts(data: bytes, expected: object) -> None:
    assert_all_ways(data, expected)


@pytest.mark.parametrize(("name", "data", "status"), BAD, ids=[b[0] for b in BAD])
def test_refuses(name: str, data: bytes, status: int) -> None:
    assert_all_ways(data, status)


def test_incomplete_head_needs_more() -> None:
    assert_all_ways(b"GET / HTTP/1.1\r\n" + H, None)
    assert_all_ways(b"\r", None)
    assert_all_ways(b"\r\n", None)


SMALL = Limits(max_request_line_bytes=64, max_head_bytes=256, max_header_count=3)


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"GET /" + b"a" * 100 + b" HTTP/1.1\r\n" + H + b"\r\n", 414),
        (b"GET /" + b"a" * 200, 414),  # no line end at all: refused once the window is full
        (b"GET / HTTP/1.1\r\n" + H + b"X: " + b"v" * 300 + b"\r\n\r\n", 431),
        (b"GET / HTTP/1.1\r\n" + H + b"X: " + b"v" * 300, 431),
        (b"GET / HTTP/1.1\r\n" + H + b"A: 1\r\nB: 2\r\nC: 3\r\n\r\n", 431),
    ],
)
def test_limits_hold_bytewise(data: bytes, status: int) -> None:
    assert_all_ways(data, status, SMALL)


def test_limit_is_exact() -> None:
    line = b"GET /" + b"a" * (64 - len(b"GET / HTTP/1.1")) + b" HTTP/1.1"
    assert len(line) == 64
    assert outcome(line + b"\r\n" + H + b"\r\n", SMALL, step=1) is not None
    assert outcome(line[:-1] + b"11\r\n" + H + b"\r\n", SMALL, step=1) == 414


class CountingBuffer(bytearray):
    """A bytearray that counts the bytes each ``find`` call may examine."""

    examined = 0

    def find(self, sub, start=0, end=None):  # type: ignore[no-untyped-def,override]
        stop = len(self) if end is None else min(end, len(self))
        CountingBuffer.examined += max(0, stop - max(start, 0))
        return super().find(sub, start, end)


def test_trickled_head_is_linear() -> None:
    # History: the request-line window was searched again on every call once the buffer had
    # passed it, making a trickled 30 KiB head quadratic.
    head = b"GET /" + b"a" * 8000 + b" HTTP/1.1\r\n" + H
    head += b"".join(b"X-%d: %s\r\n" % (i, b"v" * 220) for i in range(95)) + b"\r\n"
    assert 28_000 < len(head) < L.max_head_bytes
    CountingBuffer.examined = 0
    buf = CountingBuffer()
    scan_from = 0
    req = None
    for i in range(len(head)):
        buf += head[i : i + 1]
        req = parse_head(buf, L, scan_from)
        scan_from = len(buf)
    assert req is not None and req.path == b"/" + b"a" * 8000
    # Each call searches the few bytes that are new, plus 3 for a CRLF CRLF split across calls:
    # about 5 a byte, and the request-line window once. Rescanning the window on each call
    # would be about 8 KiB a byte (180 million in all).
    assert CountingBuffer.examined < 8 * len(head), CountingBuffer.examined


# Bodies.

CHUNKED_REQ = b"PUT /f HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"


def read_body(data: bytes, limits: Limits = L, step: int = 0) -> tuple[bytes, list] | int | None:
    body = ChunkedBody(limits)
    buf = bytearray()
    out = []
    pieces = [data] if step == 0 else [data[i : i + step] for i in range(0, len(data), step)]
    try:
        for piece in pieces:
            buf += piece
            payload, done = body.read(buf)
            out.append(payload)
            if done:
                return b"".join(out), body.trailers
    except HttpError as exc:
        assert exc.close
        return int(exc.status)
    return None


CHUNKED_OK = [
    (b"5\r\nhello\r\n0\r\n\r\n", b"hello", []),
    (b'5;a=b;c="d e"\r\nhello\r\nA\r\n0123456789\r\n0\r\n\r\n', b"hello0123456789", []),
    (b"0005; x = y ;z\r\nhello\r\n0\r\nT: v\r\n\r\n", b"hello", [(b"t", b"v")]),
    (b"0\r\n\r\n", b"", []),
]
CHUNKED_BAD = [
    (b"x\r\n", 400),
    (b"-5\r\nhello\r\n0\r\n\r\n", 400),
    (b"0x5\r\nhello\r\n0\r\n\r\n", 400),
    (b"\r\n", 400),
    (b"11111111111111111\r\n", 400),  # 17 hex digits
    (b"5\r\nhelloXX0\r\n\r\n", 400),  # no CRLF after the data
    (b"5\r\nhello\n0\r\n\r\n", 400),
    (b"5\nhello\r\n0\r\n\r\n", 400),
    (b"5 \r\nhello\r\n0\r\n\r\n", 400),  # D4: whitespace after the size
    # D4, found by the fuzzer: BWS before the first ";" (h11 refuses it too).
    (b"5 ;x\r\nhello\r\n0\r\n\r\n", 400),
    (b"5;a b\r\nhello\r\n0\r\n\r\n", 400),  # D4: extension outside its grammar
    (b"5;" + b"a" * 5000 + b"\r\nhello\r\n0\r\n\r\n", 400),
    (b"0\r\n" + b"T: " + b"v" * 20_000 + b"\r\n\r\n", 400),
    (b"0\r\nT: a\r\n b\r\n\r\n", 400),
    (b"0\r\nT: a\x00\r\n\r\n", 400),
    (b"0\r\nT : a\r\n\r\n", 400),
    (b"0\r\nTransfer-Encoding: chunked, identity\r\n\r\n", 400),  # D13
    (b"0\r\nContent-Length: 5\r\n\r\n", 400),  # D13
    (b"8\r\n" + b"x" * 8 + b"\r\n" + b"ffffffffff\r\n", 413),
]


@pytest.mark.parametrize(("data", "payload", "trailers"), CHUNKED_OK)
def test_chunked_ok(data: bytes, payload: bytes, trailers: list) -> None:
    for step in (0, 1, 2, 7):
        assert read_body(data + b"NEXT", step=step) == (payload, trailers)


@pytest.mark.parametrize(("data", "status"), CHUNKED_BAD)
def test_chunked_bad(data: bytes, status: int) -> None:
    limits = Limits(max_upload_bytes=1000)
    for step in (0, 1, 3):
        assert read_body(data, limits, step) == status


def test_chunked_leaves_next_request_in_buffer() -> None:
    buf = bytearray(b"3\r\nabc\r\n0\r\n\r\nGET / HTTP/1.1\r\n")
    payload, done = ChunkedBody(L).read(buf)
    assert (payload, done, bytes(buf)) == (b"abc", True, b"GET / HTTP/1.1\r\n")


def test_fixed_body_takes_exactly_its_length() -> None:
    body = FixedBody(5)
    buf = bytearray(b"hel")
    assert body.read(buf) == (b"hel", False)
    buf += b"loGET"
    assert body.read(buf) == (b"lo", True)
    assert bytes(buf) == b"GET"


def test_chunked_request_head_then_body() -> None:
    buf = bytearray(CHUNKED_REQ + b"2\r\nhi\r\n0\r\n\r\n")
    req = parse_head(buf, L)
    assert req is not None and req.chunked
    del buf[: req.head_size]
    assert ChunkedBody(L).read(buf) == (b"hi", True)


def test_remembered_host_values_stay_bounded_and_change_no_verdict() -> None:
    from evloop_httpd import parser

    def host_verdict(value: bytes) -> object:
        return outcome(b"GET / HTTP/1.1\r\nHost: " + value + b"\r\n\r\n")

    for i in range(3 * parser._VALID_HOSTS_MAX):
        req = parse_head(bytearray(b"GET / HTTP/1.1\r\nHost: h%d.example\r\n\r\n" % i), L)
        assert req is not None and req.host == b"h%d.example" % i
        assert len(parser._VALID_HOSTS) <= parser._VALID_HOSTS_MAX
    long_host = b"x" * 300 + b".example"
    assert parse_head(bytearray(b"GET / HTTP/1.1\r\nHost: " + long_host + b"\r\n\r\n"), L)
    assert long_host not in parser._VALID_HOSTS
    for bad in (b"a b", b"a@b", b"[::1", b"h:port"):
        assert host_verdict(bad) == 400
        assert host_verdict(bad) == 400  # a refusal is never remembered as a pass
