"""The parser's fast checks for a complete head must refuse exactly what the careful ones do."""

from __future__ import annotations

import pytest

from evloop_httpd.config import Limits
from evloop_httpd.errors import HttpError
from evloop_httpd.parser import parse_head

L = Limits()


@pytest.mark.parametrize(
    "head",
    [
        # History: the field lines are matched with MULTILINE "^", which also matches after a
        # bare LF; without the LF check first, "X: a\nY: b\r\n" read as one valid line "Y: b".
        b"GET / HTTP/1.1\r\nHost: h\r\nX: a\nY: b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\nX: a\r\n\r\n",
        b"GET / HTTP/1.1\nHost: h\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\nX: a\rY: b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\nX : a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\nBad Name: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\n x: a\r\n\r\n",
    ],
)
def test_malformed_field_sections_are_400(head: bytes) -> None:
    with pytest.raises(HttpError) as info:
        parse_head(bytearray(head), L)
    assert info.value.status == 400


def test_values_lose_only_surrounding_whitespace() -> None:
    req = parse_head(
        bytearray(b"GET / HTTP/1.1\r\nHost:  h \t\r\nX-A:\ta  b\t \r\nX-E:\r\n\r\n"), L
    )
    assert req is not None
    assert req.headers == [(b"host", b"h"), (b"x-a", b"a  b"), (b"x-e", b"")]


def test_field_count_limit_uses_field_lines_only() -> None:
    limits = Limits(max_header_count=2)
    ok = b"GET / HTTP/1.1\r\nHost: h\r\nX: 1\r\n\r\n"
    assert parse_head(bytearray(ok), limits) is not None
    with pytest.raises(HttpError) as info:
        parse_head(bytearray(b"GET / HTTP/1.1\r\nHost: h\r\nX: 1\r\nY: 2\r\n\r\n"), limits)
    assert info.value.status == 431
