"""Sans-IO parsing of HTTP/1.1 requests: the head, then the body's framing.

Theory of operation
-------------------
:func:`parse_head` takes the bytes received so far and returns a :class:`Request`, ``None`` for
"need more", or raises :class:`HttpError`. It owns no buffer and touches no socket, clock or
file, so it can be fed from a test, a fuzzer or the reactor alike.

Two promises hold for every input, and the fuzzer checks both:

* **Split invariance.** Whatever the boundaries at which bytes arrive, the outcome is the same.
  Errors that can be seen before the head is complete (a bare LF, a request line over its limit,
  a head over its limit) are ordered by the byte position at which they become certain, and a
  complete head reports the earliest of them, exactly as a byte-by-byte feed would have.
* **Linear work.** The caller passes ``scan_from``, the length of the buffer at its previous call,
  and the search for the blank line resumes there instead of rescanning from the start.

A complete head is then validated as a whole: request line, each field line, Host, and the body
framing of RFC 9112 §6.3. Framing problems close the connection (``close=True``) because after
them nobody can tell where the next request starts.

The body that follows is decoded by :mod:`body` (``FixedBody`` and ``ChunkedBody``), given the
framing decided here.
"""

from __future__ import annotations

from dataclasses import dataclass
from http import HTTPStatus

from . import grammar
from .config import Limits
from .errors import HttpError, bad_request

# Methods whose request target may take a non-origin form.
_OPTIONS = b"OPTIONS"
_CONNECT = b"CONNECT"
_CRLF = b"\r\n"
_CONNECT_FORM = "CONNECT takes only an authority-form target (host:port)"
_TCHAR = [bytes([b]) in grammar.TCHARS for b in range(256)]
TOO_MANY_ELEMENTS = "too many list elements in Connection, Content-Length, Transfer-Encoding"
_FRAMING_FIELDS = frozenset(
    {b"host", b"content-length", b"transfer-encoding", b"connection", b"expect"}
)


@dataclass(slots=True, eq=False)
class Request:
    """A parsed request head. Names in ``headers`` are lower-cased; values are OWS-stripped."""

    method: bytes
    raw_target: bytes
    http_version: bytes  # as sent: b"1.1", b"1.0", b"1.7" (any 1.x other than 1.0 acts as 1.1)
    headers: list[tuple[bytes, bytes]]
    path: bytes  # still percent-encoded; b"*" for asterisk-form, b"" for authority-form
    query: bytes | None
    host: bytes  # from the absolute-form target when there is one, else from Host
    content_length: int  # body length when not chunked (0: no body)
    chunked: bool
    keep_alive: bool
    expect: bytes | None  # the Expect value, lower-cased, on HTTP/1.1 only
    head_size: int  # bytes of the buffer this head used, leading blank lines included

    @property
    def has_body(self) -> bool:
        return self.chunked or self.content_length > 0

    def get(self, name: bytes) -> bytes | None:
        """The value of header ``name`` (lower-case), with repeated lines joined by ", "."""
        values = [v for n, v in self.headers if n == name]
        if not values:
            return None
        return values[0] if len(values) == 1 else b", ".join(values)


def parse_head(buf: bytes | bytearray, limits: Limits, scan_from: int = 0) -> Request | None:
    """Parse the request head at the start of ``buf``.

    Returns the :class:`Request`, or ``None`` when more bytes are needed, or raises
    :class:`HttpError`. ``scan_from`` is how many bytes of ``buf`` an earlier call has seen.
    """
    # RFC 9112 §2.2: a server SHOULD ignore at least one empty line before the request-line
    # (some clients send a CRLF after a POST body). Exactly one is ignored (D5): a run of them
    # is no request at all, and a bound keeps this check O(1) however the bytes are trickled.
    start = 2 if buf.startswith(_CRLF) else 0
    end = buf.find(b"\r\n\r\n", max(start, scan_from - 3))
    if end < 0:
        _check_partial(buf, start, len(buf), scan_from, limits)
        return None
    stop = end + 4
    # The common case, checked in C: a first byte that can start a method, no bare LF (every LF
    # is part of a CRLF), a head within its limit, and a request line within its limit (certain
    # when the head is shorter than that limit: its LF is then inside the window). Only when one
    # fails is the position-ordered search needed, to pick the error a byte-by-byte reader would
    # have seen first.
    window_end = start + limits.max_request_line_bytes + 2
    crlfs = buf.count(_CRLF, start, stop)
    if (
        stop > limits.max_head_bytes
        or not _TCHAR[buf[start]]
        or buf.count(b"\n", start, stop) != crlfs
        or (end + 1 >= window_end and buf.find(b"\n", start, window_end) < 0)
    ):
        _check_partial(buf, start, stop, scan_from, limits)
    # From here on every LF ends a CRLF: _parse_fields relies on it (see grammar.FIELD_LINES).
    method, raw_target, http_version, target, fields_at = _parse_request_line(buf, start, end)
    # The CRLFs are the request line's, one per field line, and the blank line's.
    headers = _parse_fields(buf, fields_at, end + 2, crlfs - 2, limits)
    return _interpret(method, raw_target, http_version, target, headers, limits, stop)


def _check_partial(
    buf: bytes | bytearray, start: int, stop: int, scan_from: int, limits: Limits
) -> None:
    """Raise the error, if any, that the first ``stop`` bytes already make certain.

    Each candidate error has the position at which a byte-by-byte reader would first see it;
    the earliest wins, so the outcome does not depend on how the bytes were split.
    """
    found: list[tuple[int, HttpError]] = []

    # A LF not preceded by CR (D1 in grammar.py). Only the first one matters, and the bytes
    # before ``scan_from`` were checked by an earlier call.
    lf = buf.find(b"\n", max(start, scan_from), stop)
    while lf >= 0:
        if lf == start or buf[lf - 1] != 13:
            found.append((lf + 1, bad_request("line ends in a bare LF; CRLF is required")))
            break
        lf = buf.find(b"\n", lf + 1, stop)

    # The first byte of the request line must start a method (a token), and is known as soon as
    # it arrives: refusing it then spares a client that speaks TLS or garbage a head timeout.
    # A CR at the very start may still be the one empty line we skip (D5).
    if start < stop and scan_from <= start and not (start == 0 and buf[0] == 13):
        if not _TCHAR[buf[start]]:
            found.append((start + 1, bad_request("request does not start with a method")))
    elif start == 0 and stop >= 2 and scan_from <= 1 and buf[0] == 13 and buf[1] != 10:
        found.append((2, bad_request("request does not start with a method")))

    # The request line, CRLF included, must end within max_request_line_bytes + 2. The window is
    # searched once, by the first call that holds all of it: a later call (``scan_from`` past the
    # window) would only repeat that search, and would make a trickled head quadratic.
    window = limits.max_request_line_bytes + 2
    if (
        stop - start >= window
        and scan_from < start + window
        and buf.find(b"\n", start, start + window) < 0
    ):
        found.append(
            (
                start + window,
                HttpError(
                    HTTPStatus.REQUEST_URI_TOO_LONG,
                    f"request line over {limits.max_request_line_bytes} bytes",
                    close=True,
                ),
            )
        )

    # The whole head, leading blank lines and final CRLF CRLF included.
    if stop > limits.max_head_bytes:
        found.append(
            (
                limits.max_head_bytes + 1,
                HttpError(
                    HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
                    f"request head over {limits.max_head_bytes} bytes",
                    close=True,
                ),
            )
        )
    if found:
        raise min(found, key=lambda pair: pair[0])[1]


_Target = tuple[bytes, bytes | None, bytes | None]  # path, query, host from an absolute-form


def _parse_request_line(
    buf: bytes | bytearray, start: int, end: int
) -> tuple[bytes, bytes, bytes, _Target, int]:
    """Validate and split the request line of the complete head ``buf[start:end]``. Returns the
    pieces :func:`_interpret` takes, and where the field lines start."""
    line_end = buf.find(_CRLF, start, end + 2)
    m = grammar.ORIGIN_REQUEST_LINE.fullmatch(buf, start, line_end)
    if m is not None:
        method, raw_target, path, query, http_version = m.groups()
        if method == _CONNECT:
            raise bad_request(_CONNECT_FORM)
        target: _Target = (path, query, None)
    else:
        request_line = bytes(buf[start:line_end])
        if not grammar.REQUEST_LINE.fullmatch(request_line):
            raise bad_request("malformed request line")
        method, raw_target, version = request_line.split(b" ")
        if version[5:6] != b"1":
            raise HttpError(
                HTTPStatus.HTTP_VERSION_NOT_SUPPORTED,
                "only HTTP/1.x is served here",
                close=True,
            )
        http_version = version[5:]
        target = _split_target(method, raw_target)
    return method, raw_target, http_version, target, line_end + 2


def _parse_fields(
    buf: bytes | bytearray, fields_at: int, stop: int, lines: int, limits: Limits
) -> list[tuple[bytes, bytes]]:
    """The ``lines`` field lines in ``buf[fields_at:stop]``, each ending in CRLF, as (name,
    value). The caller has checked that ``buf`` holds no bare LF there."""
    if lines > limits.max_header_count:
        raise HttpError(
            HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
            f"more than {limits.max_header_count} header fields",
            close=True,
        )
    pairs = grammar.FIELD_LINES.findall(buf, fields_at, stop)
    if len(pairs) != lines:
        for line in bytes(buf[fields_at:stop]).split(_CRLF):
            if line and not grammar.FIELD_LINE.fullmatch(line):
                raise bad_request(field_line_problem(line))
        raise bad_request("malformed header section")  # pragma: no cover - defensive
    return [(name.lower(), value.rstrip(b" \t")) for name, value in pairs]


def field_line_problem(line: bytes) -> str:
    if line[:1] in (b" ", b"\t"):
        return "obsolete line folding is not accepted"
    name, colon, _ = line.partition(b":")
    if not colon:
        return "header line without a colon"
    if name != name.rstrip(b" \t"):
        return "whitespace between header name and colon"
    if not grammar.TOKEN.fullmatch(name):
        return "header name is not a token"
    return "control character in a header value"


# Host values that passed the check: nearly every request on a server names one of a handful,
# and the regex costs more than the rest of _interpret. Bounded in count and in value size.
_VALID_HOSTS: set[bytes] = set()
_VALID_HOSTS_MAX = 256
_VALID_HOST_BYTES_MAX = 255


def _check_host(value: bytes) -> bool:
    if not grammar.HOST.fullmatch(value):
        return False
    if len(value) <= _VALID_HOST_BYTES_MAX:
        if len(_VALID_HOSTS) >= _VALID_HOSTS_MAX:
            _VALID_HOSTS.clear()
        _VALID_HOSTS.add(value)
    return True


def _interpret(
    method: bytes,
    raw_target: bytes,
    http_version: bytes,
    target: _Target,
    headers: list[tuple[bytes, bytes]],
    limits: Limits,
    head_size: int,
) -> Request:
    """Apply the rules that need the head as a whole: target form, Host, framing, persistence."""
    hosts: list[bytes] = []
    lengths: list[bytes] = []
    codings: list[bytes] = []
    connection: list[bytes] = []
    expect: bytes | None = None
    has_te = False
    elements = 0  # of the list-valued fields below, empty ones included (D14)
    for name, value in headers:
        if name not in _FRAMING_FIELDS:
            continue
        if name != b"host" and name != b"expect":
            elements += value.count(b",") + 1
            if elements > grammar.MAX_LIST_ELEMENTS:
                raise bad_request(TOO_MANY_ELEMENTS)
        if name == b"host":
            hosts.append(value)
        elif name == b"content-length":
            lengths.append(value)
        elif name == b"transfer-encoding":
            # Framing is no place for leniency: an empty element (", chunked", "chunked,") is
            # kept, and refused below, rather than ignored as RFC 9110 §5.6.1.2 allows (D7).
            has_te = True
            codings.extend(e.strip(b" \t") for e in value.split(b","))
        elif name == b"connection":
            connection.extend(_list_elements(value))
        elif name == b"expect":
            expect = value.lower() if expect is None else expect + b", " + value.lower()

    is_10 = http_version == b"1.0"
    path, query, target_host = target

    # RFC 9112 §3.2: exactly one valid Host in HTTP/1.1, at most one in HTTP/1.0.
    if len(hosts) > 1:
        raise bad_request("more than one Host header")
    if not hosts and not is_10:
        raise bad_request("HTTP/1.1 request without a Host header")
    if hosts and hosts[0] not in _VALID_HOSTS and not _check_host(hosts[0]):
        raise bad_request("invalid Host header")
    host = target_host if target_host is not None else (hosts[0] if hosts else b"")

    if has_te or lengths:
        chunked, content_length = _framing(has_te, codings, lengths, is_10, limits)
    else:
        chunked, content_length = False, 0

    if connection:
        tokens = {t.lower() for t in connection}
        keep_alive = b"close" not in tokens and (not is_10 or b"keep-alive" in tokens)
    else:
        keep_alive = not is_10
    # Positional: this runs once per request, and keywords cost measurably more.
    return Request(
        method,
        raw_target,
        http_version,
        headers,
        path,
        query,
        host,
        content_length,
        chunked,
        keep_alive,
        None if is_10 else expect,
        head_size,
    )


def _list_elements(value: bytes) -> list[bytes]:
    # RFC 9110 §5.6.1: recipients accept and ignore empty list elements.
    if b"," not in value:
        return [value] if value else []  # one element, already OWS-stripped: the usual case
    return [e for e in (part.strip(b" \t") for part in value.split(b",")) if e]


def _split_target(method: bytes, target: bytes) -> _Target:
    """Return (path, query, host-from-target) for the four forms of RFC 9112 §3.2."""
    if method == _CONNECT:
        # RFC 9112 §3.2.3: CONNECT takes the authority-form, and only it takes that form.
        if grammar.AUTHORITY_FORM.fullmatch(target):
            return b"", None, target
        raise bad_request(_CONNECT_FORM)
    if target[:1] == b"/":
        m = grammar.ORIGIN_FORM.fullmatch(target)
        if m is None:
            raise bad_request("request target is not a valid origin-form URI")
        return m[1], m[2], None
    if target == b"*":
        if method != _OPTIONS:
            raise bad_request("asterisk-form is only for OPTIONS")
        return b"*", None, None
    m = grammar.ABSOLUTE_FORM.fullmatch(target)
    if m is not None:
        # RFC 9110 §4.2.1: an http(s) URI with an empty host MUST be rejected as invalid.
        if not m[2]:
            raise bad_request("absolute-form target with an empty host")
        return m[3] or b"/", m[4], m[1]
    raise bad_request("request target is not origin-form, absolute-form or asterisk-form")


def _framing(
    has_te: bool, codings: list[bytes], lengths: list[bytes], is_10: bool, limits: Limits
) -> tuple[bool, int]:
    """RFC 9112 §6.3: how long is the body? Returns (chunked, content_length)."""
    if has_te:
        if lengths:
            raise bad_request("both Transfer-Encoding and Content-Length")
        if is_10:
            raise bad_request("Transfer-Encoding in an HTTP/1.0 request")
        for coding in codings:
            if not grammar.TRANSFER_CODING.fullmatch(coding):
                raise bad_request("malformed Transfer-Encoding")
        names = [c.split(b";", 1)[0].rstrip(b" \t").lower() for c in codings]
        if not names or names[-1] != b"chunked" or codings[-1].lower() != b"chunked":
            raise bad_request("Transfer-Encoding must end in chunked")
        if names.count(b"chunked") > 1:
            raise bad_request("chunked applied more than once")
        if len(names) > 1:
            raise HttpError(
                HTTPStatus.NOT_IMPLEMENTED,
                "only the chunked transfer coding is supported",
                close=True,
            )
        return True, 0
    if not lengths:
        return False, 0
    # RFC 9110 §8.6: a list of identical values may be taken as one; anything else is an error.
    values = {e.strip(b" \t") for v in lengths for e in v.split(b",")}
    if len(values) != 1:
        raise bad_request("conflicting Content-Length values")
    (value,) = values
    if not grammar.DIGITS.fullmatch(value):
        raise bad_request("Content-Length is not a plain decimal number")
    # 18 digits cannot overflow anything and are far past any sane limit.
    length = int(value) if len(value) <= 18 else limits.max_upload_bytes + 1
    if length > limits.max_upload_bytes:
        raise HttpError(
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
            f"body over the {limits.max_upload_bytes}-byte limit",
            close=True,
        )
    return False, length
