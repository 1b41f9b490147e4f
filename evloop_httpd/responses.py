"""Building responses: the plan a handler returns, and the exact bytes of its head.

Theory of operation: a handler describes a response as a :class:`Response` (status, headers, and
either a small in-memory body or an open file span); nothing here writes to a socket. The head
is encoded once, as one ``bytes``, so the reactor can hand it to a single ``send``. The headers
every response needs (Date, Server, Connection) are added here, in one place, so no handler can
forget them. Error bodies are a short plain-text line: status, reason, and the detail the
raising code gave, never a traceback.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from email.utils import formatdate
from http import HTTPStatus
from typing import Protocol

from .errors import HttpError

SERVER = b"evloop_httpd/0.1"
TEXT_PLAIN = b"text/plain; charset=utf-8"

# RFC 9110 §6.4.1: these never carry content.
_NO_CONTENT = frozenset({HTTPStatus.NO_CONTENT, HTTPStatus.NOT_MODIFIED})

# RFC 9110 §15 renamed a few reason phrases; Python 3.11's HTTPStatus still has the old ones.
_RFC9110_PHRASES = {
    413: "Content Too Large",
    414: "URI Too Long",
    416: "Range Not Satisfiable",
    422: "Unprocessable Content",
}


def reason(status: int) -> str:
    """The RFC 9110 reason phrase for ``status``."""
    return _RFC9110_PHRASES.get(status) or HTTPStatus(status).phrase


_STATUS_LINES: dict[int, bytes] = {
    s.value: f"HTTP/1.1 {s.value} {reason(s.value)}\r\n".encode("ascii") for s in HTTPStatus
}


class Producer(Protocol):
    """A body made while it is sent, in bounded steps (a folder's ZIP: :class:`zipstream.
    ZipStream`). :meth:`maybe_check` runs before the head (True when the response may go
    ahead; raises :class:`HttpError` to refuse it); :meth:`next_chunk` may return ``b""``
    mid-way, the end is :attr:`finished`; :meth:`close` releases what it holds, on every path."""

    @property
    def finished(self) -> bool: ...
    def maybe_check(self) -> bool: ...
    def next_chunk(self, max_bytes: int) -> bytes: ...
    def close(self) -> None: ...


@dataclass(slots=True)
class Response:
    """What to send. ``headers`` must already hold Content-Length where the status has content.

    A file body is ``file_fd`` with ``spans``: each span is (bytes to send first, offset, length),
    so one span is a plain file or a single range, and several are a multipart/byteranges body
    whose part headers travel as the prefixes; ``trailer`` goes last. The connection owns the
    descriptor from then on and closes it when the response ends.

    A produced body is ``producer`` instead (no Content-Length: its length is not known), sent
    as chunks when ``chunked`` (HTTP/1.1), else delimited by the close (HTTP/1.0, ``close``
    set). The connection owns the producer from then on and closes it on every path.
    """

    status: HTTPStatus
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    file_fd: int = -1
    spans: list[tuple[bytes, int, int]] = field(default_factory=list)
    trailer: bytes = b""
    close: bool = False
    middle: bytes | None = None  # pre-encoded header lines (from the cache): replaces headers
    producer: Producer | None = None
    chunked: bool = False


def encode_middle(
    headers: list[tuple[bytes, bytes]], extra: tuple[tuple[bytes, bytes], ...] = ()
) -> bytes:
    """The response-specific header lines, each ending in CRLF."""
    parts: list[bytes] = []
    for name, value in headers:
        parts += (name, b": ", value, b"\r\n")
    for name, value in extra:
        parts += (name, b": ", value, b"\r\n")
    return b"".join(parts)


_KEEP_ALIVE = b"Connection: keep-alive\r\n\r\n"
_CLOSE = b"Connection: close\r\n\r\n"
_SERVER_LINE = b"\r\nServer: " + SERVER + b"\r\n"


def assemble_head(status: int, middle: bytes, date: bytes, keep_alive: bool) -> bytes:
    """Status line, Date, Server, ``middle``, Connection: the whole head, ready for the wire."""
    # Interim responses carry no Connection header.
    end = b"\r\n" if status < 200 else _KEEP_ALIVE if keep_alive else _CLOSE
    return b"".join((_STATUS_LINES[status], b"Date: ", date, _SERVER_LINE, middle, end))


CONTINUE = _STATUS_LINES[HTTPStatus.CONTINUE] + b"\r\n"


def text_response(
    status: HTTPStatus, text: str, *, head_only: bool = False, close: bool = False
) -> Response:
    """A short text/plain response (also what HEAD of it gets, without the body)."""
    body = text.encode("utf-8")
    headers = [(b"Content-Type", TEXT_PLAIN), (b"Content-Length", b"%d" % len(body))]
    return Response(status, headers, b"" if head_only else body, close=close)


def error_response(err: HttpError, *, head_only: bool = False) -> Response:
    """The response for an :class:`HttpError`: its status, its headers, a one-line body."""
    status = err.status
    if status in _NO_CONTENT:
        return Response(status, list(err.headers), close=err.close)
    text = f"{status.value} {reason(status.value)}\n"
    if err.detail:
        text += f"{err.detail}\n"
    resp = text_response(status, text, head_only=head_only, close=err.close)
    resp.headers += err.headers
    return resp


def http_date(timestamp: float) -> bytes:
    """IMF-fixdate (RFC 9110 §5.6.7), e.g. ``Sun, 06 Nov 1994 08:49:37 GMT``."""
    return formatdate(timestamp, usegmt=True).encode("ascii")


class DateCache:
    """The Date header value, re-formatted at most once a second."""

    __slots__ = ("second", "value")

    def __init__(self) -> None:
        self.second = -1
        self.value = b""
        self.update(time.time())

    def update(self, now: float) -> bytes:
        second = int(now)
        if second != self.second:
            self.second = second
            self.value = http_date(second)
        return self.value
