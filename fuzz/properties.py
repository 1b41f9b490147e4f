"""The invariants the fuzzer checks, as plain functions of their inputs.

Theory of operation: every property takes concrete values (bytes, cut points, write sizes) and
raises ``AssertionError`` when the invariant fails, so the same function serves hypothesis, the
seed replay in the test suite, and a person at a REPL reproducing a failure:

* :func:`check_total`: ``parse_head`` returns a Request or ``None``, or raises ``HttpError``.
* :func:`check_split`: feeding the bytes in pieces gives the outcome of feeding them at once.
* :func:`check_oracle`: where h11 accepts we accept the same messages, where it rejects we
  reject, except for the documented deviations in :data:`DEVIATIONS` (docs/deviations.md).
* :func:`check_connection`: the sans-IO ``Connection`` fed random bytes in random pieces, with
  random short writes, stays in its states, never reports a bug, never parses again after it
  decided to close, and never sends a response after one that said ``Connection: close``.

The drivers below consume bytes the way ``connection.py`` does: ``parse_head`` with
``scan_from``, ``del buf[:head_size]``, then the body decoder's ``read`` loop, request after
request, stopping after a request that does not keep the connection alive.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import h11

from evloop_httpd import connection as connection_module
from evloop_httpd.body import ChunkedBody, FixedBody
from evloop_httpd.config import Config, Limits
from evloop_httpd.connection import Connection, Context
from evloop_httpd.errors import HttpError
from evloop_httpd.grammar import MAX_LIST_ELEMENTS
from evloop_httpd.parser import TOO_MANY_ELEMENTS, Request, parse_head
from evloop_httpd.states import ConnState

LIMITS = Limits()
# Limits small enough that generated inputs cross every one of them.
SMALL_LIMITS = Limits(
    max_request_line_bytes=40,
    max_head_bytes=160,
    max_header_count=4,
    max_upload_bytes=90,
    max_chunk_line_bytes=12,
    max_trailer_bytes=40,
)
Event = tuple


# Our side.


def _request_event(req: Request) -> Event:
    headers: list[tuple[bytes, bytes]] = []
    seen_length = False
    for name, value in req.headers:
        # h11 folds the Content-Length lines into one and lower-cases Transfer-Encoding; put
        # ours in the same shape so that the comparison is about meaning, not spelling.
        if name == b"content-length":
            if not seen_length:
                seen_length = True
                elements = {e.strip(b" \t") for e in value.split(b",")}
                headers.append((name, elements.pop()))
            continue
        if name == b"transfer-encoding":
            value = value.lower()
        headers.append((name, value))
    return ("request", req.method, req.raw_target, tuple(headers))


@dataclass
class Run:
    """What a parser made of a byte stream: events, and where each message began."""

    events: list[Event]
    starts: list[int]


def run_ours(chunks: Iterable[bytes], limits: Limits = LIMITS) -> Run:
    """Drive our parser over ``chunks`` as the connection does."""
    events: list[Event] = []
    starts: list[int] = []
    buf = bytearray()
    consumed = 0  # bytes of the stream taken off the front of buf
    scan_from = 0
    req: Request | None = None
    body: FixedBody | ChunkedBody | None = None
    payload: list[bytes] = []
    try:
        for chunk in chunks:
            buf += chunk
            while True:
                if body is None:
                    parsed = parse_head(buf, limits, scan_from)
                    if parsed is None:
                        scan_from = len(buf)
                        break
                    starts.append(consumed)
                    consumed += parsed.head_size
                    del buf[: parsed.head_size]
                    scan_from = 0
                    req = parsed
                    events.append(_request_event(req))
                    if not req.has_body:
                        events.append(("body", b"", ()))
                        if not req.keep_alive:
                            events.append(("closed",))
                            return Run(events, starts)
                        continue
                    body = ChunkedBody(limits) if req.chunked else FixedBody(req.content_length)
                    payload = []
                before = len(buf)
                data, done = body.read(buf)
                consumed += before - len(buf)
                payload.append(data)
                if not done:
                    break
                trailers = tuple(body.trailers) if isinstance(body, ChunkedBody) else ()
                events.append(("body", b"".join(payload), trailers))
                body = None
                assert req is not None
                if not req.keep_alive:
                    events.append(("closed",))
                    return Run(events, starts)
    except HttpError as exc:
        if body is None:
            starts.append(consumed)  # where the refused head begins
        events.append(("error", int(exc.status), exc.detail))
        return Run(events, starts)
    if body is None:
        starts.append(consumed)  # where the unfinished head begins
    events.append(("need",))
    return Run(events, starts)


# h11's side.


def run_h11(data: bytes, limits: Limits = LIMITS) -> Run:
    """Drive h11's server-side Connection over ``data`` and answer each request with a 200."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_head_bytes)
    if data:  # b"" would mean end of stream to h11
        conn.receive_data(data)
    events: list[Event] = []
    payload: list[bytes] = []
    try:
        while True:
            ev = conn.next_event()
            if ev is h11.NEED_DATA:
                events.append(("need",))
                break
            if ev is h11.PAUSED:
                events.append(("paused",))
                break
            if isinstance(ev, h11.Request):
                events.append(("request", ev.method, ev.target, tuple(ev.headers)))
                payload = []
            elif isinstance(ev, h11.Data):
                payload.append(bytes(ev.data))
            elif isinstance(ev, h11.EndOfMessage):
                events.append(("body", b"".join(payload), tuple(ev.headers)))
                conn.send(h11.Response(status_code=200, headers=[("Content-Length", "0")]))
                conn.send(h11.EndOfMessage())
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    events.append(("closed",))
                    break
                conn.start_next_cycle()
    except h11.RemoteProtocolError as exc:
        events.append(("error", exc.error_status_hint, str(exc)))
    return Run(events, [])


# Deviations: each one a place where we refuse what h11 accepts (or the reverse), the details
# our parser gives for it, and a predicate on the raw bytes that shows the deviation's cause is
# really there, so that a new disagreement cannot hide behind an old excuse.

_BARE_LF = re.compile(rb"(?<!\r)\n")
_CTL = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]|\r(?!\n)")
_SIMPLE_TARGET = re.compile(
    rb"(?:/|[Hh][Tt][Tt][Pp][Ss]?://[A-Za-z0-9.\-]+(?::[0-9]*)?(?:/|$))"
    rb"(?:[A-Za-z0-9\-._~!$&'()*+,;=:@/?]|%[0-9A-Fa-f]{2})*"
)
_REQUEST_LINE = re.compile(rb"([!-~]+) ([!-~]+) HTTP/")
_ODD_CHUNK_LINE = re.compile(rb"\n[0-9A-Fa-f]+(?:[ \t;]|[0-9A-Fa-f]{16})")
_HOST_LINE = re.compile(rb"\n[Hh][Oo][Ss][Tt]:[ \t]*([^\r\n]*?)[ \t]*\r", re.IGNORECASE)
_FRAMING_TRAILER = re.compile(
    rb"\r\n0+(?:;[^\r\n]*)?\r\n(?:[^\r\n]*\r\n)*?(?:content-length|transfer-encoding|host):",
    re.IGNORECASE,
)
_SIMPLE_HOST = re.compile(rb"[A-Za-z0-9.\-]*(?::[0-9]*)?")


def _head(data: bytes) -> bytes:
    """The head at the start of ``data``: the checks on it must not look at later messages."""
    end = data.find(b"\r\n\r\n")
    return data if end < 0 else data[: end + 4]


def _odd_target(data: bytes) -> bool:
    m = _REQUEST_LINE.match(data.removeprefix(b"\r\n"))
    return m is not None and (m[1] == b"CONNECT" or not _SIMPLE_TARGET.fullmatch(m[2]))


def _many_framing_elements(data: bytes) -> bool:
    # Counted independently of the parser: the commas + 1 of every framing list field line.
    lines = re.findall(
        rb"\n(?:connection|content-length|transfer-encoding):([^\r\n]*)", _head(data), re.I
    )
    return sum(line.count(b",") + 1 for line in lines) > MAX_LIST_ELEMENTS


def _odd_host(data: bytes) -> bool:
    return any(not _SIMPLE_HOST.fullmatch(m[1]) for m in _HOST_LINE.finditer(_head(data)))


@dataclass(frozen=True)
class Deviation:
    ident: str
    details: frozenset[str]
    present: object  # Callable[[bytes], bool]


DEVIATIONS: tuple[Deviation, ...] = (
    Deviation(
        "D1 bare LF",
        frozenset({"line ends in a bare LF; CRLF is required"}),
        lambda d: bool(_BARE_LF.search(d)),
    ),
    Deviation(
        "D2 control character in a field value",
        frozenset({"control character in a header value", "control character in a trailer value"}),
        lambda d: bool(_CTL.search(d)),
    ),
    Deviation(
        "D3 request target outside RFC 3986",
        frozenset(
            {
                "request target is not a valid origin-form URI",
                "request target is not origin-form, absolute-form or asterisk-form",
                "asterisk-form is only for OPTIONS",
                "CONNECT takes only an authority-form target (host:port)",
                "absolute-form target with an empty host",
            }
        ),
        _odd_target,
    ),
    Deviation(
        "D4 chunk line grammar",
        frozenset({"malformed chunk-size line"}),
        lambda d: bool(_ODD_CHUNK_LINE.search(d)),
    ),
    Deviation(
        "D6 obs-fold",
        frozenset({"obsolete line folding is not accepted"}),
        lambda d: b"\n " in d or b"\n\t" in d,
    ),
    Deviation(
        "D8 HTTP version other than 1.x",
        frozenset({"only HTTP/1.x is served here"}),
        lambda d: bool(re.search(rb"HTTP/[02-9]\.", _head(d))),
    ),
    Deviation("D9 Host syntax", frozenset({"invalid Host header"}), _odd_host),
    Deviation(
        "D10 Transfer-Encoding in HTTP/1.0",
        frozenset({"Transfer-Encoding in an HTTP/1.0 request"}),
        lambda d: b"HTTP/1.0" in _head(d) and b"transfer-encoding" in _head(d).lower(),
    ),
    Deviation(
        "D11 Transfer-Encoding with Content-Length",
        frozenset({"both Transfer-Encoding and Content-Length"}),
        lambda d: (
            b"transfer-encoding" in _head(d).lower() and b"content-length" in _head(d).lower()
        ),
    ),
    Deviation(
        "D13 framing field in a trailer",
        frozenset({"framing or routing field in a trailer"}),
        lambda d: bool(_FRAMING_TRAILER.search(d)),
    ),
    Deviation(
        "D14 too many list elements in framing fields",
        frozenset({TOO_MANY_ELEMENTS}),
        _many_framing_elements,
    ),
    Deviation(
        "D12 Host required on HTTP/1.2-1.9",
        frozenset({"HTTP/1.1 request without a Host header"}),
        lambda d: bool(re.search(rb"HTTP/1\.[2-9]", _head(d))),
    ),
)
_BY_DETAIL = {detail: dev for dev in DEVIATIONS for detail in dev.details}


def strict_deviation(detail: str, data: bytes) -> str | None:
    """The deviation that explains our refusing ``data`` with ``detail``, if any."""
    dev = _BY_DETAIL.get(detail)
    if dev is not None and dev.present(data):  # type: ignore[operator]
        return dev.ident
    return None


# Ways to finish an unfinished input: end a line, end a head or trailer section, finish a
# request line.
_ENDINGS = (b"\r\n", b"\r\n\r\n", b"\r\n\r\n\r\n", b" / HTTP/1.1\r\nHost: a\r\n\r\n")


def _h11_refuses_every_ending(data: bytes, index: int) -> bool:
    """True if no ending makes h11 accept more than it had, and some ending makes it refuse."""
    kinds = {run_h11(data + end).events[index][0] for end in _ENDINGS}
    return kinds <= {"error", "need"} and "error" in kinds


def compare(data: bytes) -> str | None:
    """Check ``data`` against h11. Returns the deviation that explains a difference, or None.

    Raises ``AssertionError`` on an unexplained difference.
    """
    ours = run_ours([data])
    theirs = run_h11(data)
    for index, (a, b) in enumerate(zip(ours.events, theirs.events, strict=False)):
        if a == b:
            if a[0] in ("error", "need", "closed"):
                return None
            continue
        context = f"at event {index}: ours {a!r}, h11 {b!r}\ninput {data!r}"
        if "closed" in (a[0], b[0]) or b[0] == "paused":
            # Persistence (h11 never keeps HTTP/1.0 alive) and protocol switches are not
            # parsing: what follows is never read by either side.
            return None
        if a[0] == "error" and b[0] == "error":
            return None
        if a[0] == "error" and b[0] == "need" and _h11_refuses_every_ending(data, index):
            # We refuse as soon as the input is certainly bad (a first byte no method starts
            # with, a line that can never be a field) where h11 waits for a whole line or head.
            return None
        if a[0] == "error":
            # The deviation's cause must be in the refused message, not in one before it.
            n = sum(1 for e in ours.events[:index] if e[0] == "request")
            dev = strict_deviation(a[2], data[ours.starts[min(n, len(ours.starts) - 1)] :])
            assert dev is not None, "we refuse what h11 accepts, " + context
            return dev
        if b[0] == "error":
            # D5: one empty line before a request line is skipped (RFC 9112 §2.2).
            # h11 refuses it as soon as it sees the CR, where we wait for the rest of the head.
            n = sum(1 for e in ours.events[:index] if e[0] == "request")
            lead = data[ours.starts[n] : ours.starts[n] + 2] if n < len(ours.starts) else b""
            if a[0] in ("request", "need") and lead and b"\r\n".startswith(lead):
                return "D5 leading empty line"
            raise AssertionError("h11 refuses what we accept, " + context)
        raise AssertionError("different results, " + context)
    raise AssertionError(f"event lists of different lengths: {ours.events!r} {theirs.events!r}")


# Our parser alone.


def check_total(data: bytes, limits: Limits = LIMITS) -> None:
    """parse_head: a Request, None, or HttpError; nothing else, whatever the bytes."""
    try:
        result = parse_head(bytearray(data), limits)
    except HttpError as exc:
        assert 400 <= exc.status < 600, exc
        assert exc.close, f"parser error that keeps the connection open: {exc}"
        return
    assert result is None or isinstance(result, Request), result
    if result is not None:
        assert 0 < result.head_size <= len(data)


def check_split(data: bytes, cuts: list[int], limits: Limits = LIMITS) -> None:
    """Any split of the input gives the outcome of the input in one piece."""
    from .strategies import cut

    whole = run_ours([data], limits).events
    pieces = run_ours(cut(data, cuts), limits).events
    assert pieces == whole, f"split {cuts} of {data!r}:\n whole  {whole!r}\n pieces {pieces!r}"


# The connection state machine.


class _Recorder:
    def __init__(self) -> None:
        self.heads: list[bytes] = []
        self.bugs: list[BaseException] = []

    def transition(self, conn: object, old: object, inp: object, new: object) -> None:
        pass

    def response_head(self, conn: object, head: bytes) -> None:
        self.heads.append(head)

    def request_done(self, conn: object) -> None:
        pass

    def bug(self, conn: object, exc: BaseException) -> None:
        self.bugs.append(exc)

    def debug(self, text: str) -> None:
        pass


_ROOT: Path | None = None


def _root() -> Path:
    global _ROOT
    if _ROOT is None:
        _ROOT = Path(tempfile.mkdtemp(prefix="evloop-fuzz-"))
        (_ROOT / "index.html").write_bytes(b"<p>hi</p>\n")
        (_ROOT / "a").write_bytes(b"x" * 3000)
    return _ROOT


def check_connection(chunks: list[bytes], writes: list[int], limits: Limits = LIMITS) -> None:
    """Drive a Connection with ``chunks`` of input and write sizes cycling through ``writes``.

    A write size that is a multiple of 97 fires the timer past the deadline instead; an odd one
    in LINGERING, with no input left, reports the socket drained. In HANDSHAKING (a first size
    that is a multiple of 5 starts there), a multiple of 3 is plain HTTP on the TLS port, any
    other size the end of the handshake. A first size that is a multiple of 7 starts in
    PROXY_HEADER (``--proxy-protocol``): each step shows the connection the next chunk, as
    a peek, and takes off what it says is the header's; a multiple of 14 puts a valid v1
    header before the chunks.
    """
    recorder = _Recorder()
    # A first write size that is a multiple of 5 makes it a TLS connection: it starts in
    # HANDSHAKING, and the next step finishes the handshake or finds plain HTTP instead.
    tls = bool(writes) and writes[0] % 5 == 0
    ctx = Context(
        Config(root=_root(), limits=limits, quiet=True), recorder, b"https" if tls else b"http"
    )
    proxy = bool(writes) and writes[0] % 7 == 0
    if proxy and writes[0] % 14 == 0:
        chunks = [b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2\r\n", *chunks]
    conn = Connection(ctx, now=0.0, handshake=tls, proxy=proxy)
    parses = 0
    real_parse = connection_module.parse_head

    def counting_parse(buf: bytearray, lim: Limits, scan_from: int = 0) -> Request | None:
        nonlocal parses
        parses += 1
        return real_parse(buf, lim, scan_from)

    connection_module.parse_head = counting_parse  # type: ignore[assignment]
    try:
        _drive(conn, recorder, chunks, writes, lambda: parses)
    finally:
        connection_module.parse_head = real_parse  # type: ignore[assignment]
        if conn.file_fd >= 0:
            conn.abort()


def _drive(
    conn: Connection,
    rec: _Recorder,
    chunks: list[bytes],
    writes: list[int],
    parses: Callable[[], int],
) -> None:
    pending = list(reversed(chunks))
    now = 0.0
    closing_at: int | None = None  # parse count when a "Connection: close" head went out
    heads_at_close = 0
    for step in range(10_000):
        state = conn.state
        assert isinstance(state, ConnState), state
        assert not rec.bugs, f"bug reported: {rec.bugs!r}"
        if closing_at is None and any(b"Connection: close" in h for h in rec.heads):
            closing_at = parses()
            heads_at_close = len(rec.heads)
        if closing_at is not None:
            assert len(rec.heads) == heads_at_close, "response after Connection: close"
            assert parses() == closing_at, "parsed input after deciding to close"
        if state is ConnState.CLOSED:
            return
        now += 0.001
        size = writes[step % len(writes)] if writes else 1
        if size % 97 == 0:
            # Now and then the reactor's timer fires past the deadline instead.
            now = max(now, conn.deadline) + 0.001
            conn.on_timeout(now)
        elif state is ConnState.PROXY_HEADER:
            peek = pending[-1] if pending else b""
            take = conn.proxy_bytes(peek, now)
            assert 0 <= take <= len(peek)
            assert len(conn.inbuf) < 4096, "PROXY header buffer past its bound"
            if pending:
                pending[-1] = peek[take:]
                if not pending[-1]:
                    pending.pop()
        elif state is ConnState.HANDSHAKING:
            if size % 3 == 0:
                conn.refuse_plain(pending[-1][:8] if pending else b"", now)
            else:
                conn.handshake_done(now)
        elif state is ConnState.LINGERING and not pending and size % 2:
            conn.drained()
        elif state in (ConnState.WRITING_HEADERS, ConnState.WRITING_CONTINUE) or (
            state is ConnState.STREAMING_FILE and conn.out_pos < len(conn.out)
        ):
            conn.wrote(min(size, len(conn.out) - conn.out_pos), now)
        elif state is ConnState.STREAMING_FILE:
            conn.streamed(min(size, conn.file_remaining), now)
        elif pending:
            conn.receive(pending.pop(), now)
        else:
            conn.receive(b"", now)
    raise AssertionError(f"connection did not settle; state {conn.state}")
