"""Request bodies: Content-Length and chunked framing, decoded incrementally and sans-IO.

Theory of operation: once :func:`parser.parse_head` has decided how a body is framed, one of
these decoders takes the body's bytes off the front of the connection's ``bytearray`` and hands
back payload. Each :meth:`read` consumes what it can and leaves a partial line in place for
the next call, so a line is scanned once per arrival of new bytes, and the decoder holds no
more than one ``recv``'s worth of memory whatever the body's size. Every malformation is a 400
with ``close``: after a framing error nobody can tell where the next request starts.

Work: a ``recv`` of 64 KiB can hold 10,000 one-byte chunks, each a line to match in Python
(tens of milliseconds). So a caller may bound the lines one call decodes (``max_lines``); the
decoder then says, through ``paused``, that it stopped with decodable bytes left, and the
connection decides, by the reactor's work budget, whether to call again now or next turn.
"""

from __future__ import annotations

from http import HTTPStatus

from . import grammar
from .config import Limits
from .errors import HttpError, bad_request
from .parser import field_line_problem

LINES_PER_STEP = 256  # chunk-size and trailer lines per bounded read: well under a millisecond

# RFC 9110 §6.5.1: fields that frame or route a message cannot be trailers (D13).
_NOT_TRAILERS = frozenset({b"content-length", b"transfer-encoding", b"host"})


class FixedBody:
    """Content-Length framing: take exactly ``remaining`` bytes."""

    __slots__ = ("remaining",)
    paused = False  # one slice per call: never stops early

    def __init__(self, length: int) -> None:
        self.remaining = length

    def read(self, buf: bytearray, max_lines: int | None = None) -> tuple[bytes, bool]:
        """Take what belongs to the body off ``buf``. Returns (payload, finished)."""
        take = min(self.remaining, len(buf))
        data = bytes(buf[:take])
        del buf[:take]
        self.remaining -= take
        return data, self.remaining == 0


# ChunkedBody phases. Plain ints: they are compared on every chunk.
_SIZE, _DATA, _DATA_END, _TRAILER, _DONE = range(5)


class ChunkedBody:
    """Chunked framing (RFC 9112 §7.1), decoded incrementally.

    Each call consumes as much of ``buf`` as it can and leaves a partial line in place for the
    next call, so a line is only ever scanned once per arrival of new bytes.
    """

    __slots__ = (
        "_limits",
        "_phase",
        "_remaining",
        "_scanned",
        "paused",
        "total",
        "trailer_bytes",
        "trailers",
    )

    def __init__(self, limits: Limits) -> None:
        self._limits = limits
        self._phase = _SIZE
        self._remaining = 0
        self._scanned = 0  # bytes of a partial line already searched for LF
        self.paused = False  # the last read stopped at max_lines with decodable bytes left
        self.total = 0
        self.trailers: list[tuple[bytes, bytes]] = []
        self.trailer_bytes = 0

    @property
    def done(self) -> bool:
        return self._phase == _DONE

    def read(self, buf: bytearray, max_lines: int | None = None) -> tuple[bytes, bool]:
        """Take what belongs to the body off ``buf``. Returns (payload, finished).

        With ``max_lines``, stop after that many chunk-size or trailer lines; ``paused`` then
        tells whether bytes were left that could be decoded without waiting for more.
        """
        out: list[bytes] = []
        pos = 0
        end = len(buf)
        lines = 0
        while pos < end and self._phase != _DONE:
            phase = self._phase
            if phase == _DATA:
                take = min(self._remaining, end - pos)
                out.append(bytes(buf[pos : pos + take]))
                pos += take
                self._remaining -= take
                if self._remaining == 0:
                    self._phase = _DATA_END
            elif phase == _DATA_END:
                if buf[pos] != 13 or (end - pos >= 2 and buf[pos + 1] != 10):
                    raise bad_request("chunk data not followed by CRLF")
                if end - pos < 2:
                    break
                pos += 2
                self._phase = _SIZE
            else:
                line = self._maybe_line(buf, pos, end)
                if line is None:
                    break
                pos += len(line) + 2
                if phase == _SIZE:
                    self._start_chunk(line)
                else:
                    self._add_trailer(line)
                lines += 1
                if lines == max_lines:
                    break
        self.paused = lines == max_lines and pos < end and self._phase != _DONE
        del buf[:pos]
        return b"".join(out), self._phase == _DONE

    def _maybe_line(self, buf: bytearray, pos: int, end: int) -> bytes | None:
        limit = (
            self._limits.max_chunk_line_bytes
            if self._phase == _SIZE
            else self._limits.max_trailer_bytes - self.trailer_bytes
        )
        lf = buf.find(b"\n", pos + self._scanned, end)
        if lf < 0:
            self._scanned = end - pos
            if end - pos > limit + 1:
                raise bad_request(self._too_long())
            return None
        self._scanned = 0
        # Same order as a byte-by-byte feed: too long (without LF) first, then a bare LF.
        if lf - pos > limit + 1:
            raise bad_request(self._too_long())
        if lf == pos or buf[lf - 1] != 13:
            raise bad_request("line ends in a bare LF; CRLF is required")
        if lf - 1 - pos > limit:
            raise bad_request(self._too_long())
        return bytes(buf[pos : lf - 1])

    def _too_long(self) -> str:
        return "chunk-size line too long" if self._phase == _SIZE else "trailer section too large"

    def _start_chunk(self, line: bytes) -> None:
        m = grammar.CHUNK_LINE.fullmatch(line)
        if m is None:
            raise bad_request("malformed chunk-size line")
        size = int(m[1], 16)
        if size == 0:
            self._phase = _TRAILER
            return
        self.total += size
        if self.total > self._limits.max_upload_bytes:
            raise HttpError(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"body over the {self._limits.max_upload_bytes}-byte limit",
                close=True,
            )
        self._remaining = size
        self._phase = _DATA

    def _add_trailer(self, line: bytes) -> None:
        if not line:
            self._phase = _DONE
            return
        self.trailer_bytes += len(line) + 2
        m = grammar.FIELD_LINE.fullmatch(line)
        if m is None:
            raise bad_request(field_line_problem(line).replace("header", "trailer"))
        name = m[1].lower()
        # RFC 9110 §6.5.1: framing and routing fields cannot be sent as trailers. A recipient
        # that merged one into the header section would frame the message anew (D13).
        if name in _NOT_TRAILERS:
            raise bad_request("framing or routing field in a trailer")
        self.trailers.append((name, m[2].rstrip(b" \t")))
