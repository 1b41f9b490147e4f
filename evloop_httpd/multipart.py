"""Sans-IO parsing of multipart/form-data bodies (RFC 7578 over RFC 2046 §5.1).

Theory of operation
-------------------
:class:`MultipartParser` takes the body's bytes in pieces of any size (``feed``) and returns
events: :class:`PartStart` (the part's header fields), :class:`PartData` (a slice of
the part's content) and :class:`PartEnd`; :class:`BodyEnd` follows the close delimiter.
:meth:`~MultipartParser.close` says the body is over and raises if the close delimiter was
never seen. Errors raise :class:`HttpError`. No socket, file or clock is touched.

The body is a sequence of *delimiters* ``CRLF "--" boundary``; the CRLF belongs to the
delimiter, not to the part before it. The preamble is treated as a part whose content is
dropped, and its start is given a virtual CRLF so that a body opening with ``--boundary``
needs no special case. After each delimiter comes ``--`` (the close delimiter: the rest is
epilogue and ignored), or optional transport padding (spaces and tabs, RFC 2046's LWSP) and
CRLF, then the part's header section up to an empty line.

Its promises (the first checked by the fuzzer, the others by tests):

* **Split invariance.** The events, once adjacent :class:`PartData` are joined, and the error
  if any, do not depend on where the input was cut. Every decision is taken at a point fixed
  by the bytes alone: the end of a header section, or its limit; the bytes after a delimiter.
* **Bounded memory.** Across calls the parser keeps only a *tail*: inside content, the
  longest suffix that may be the start of a delimiter (fewer than ``len(delimiter)`` bytes);
  inside a header section, at most ``max_part_header_bytes``. Content is never buffered: it
  leaves as slices of the input as soon as it cannot be the start of a delimiter.
* **Bounded work.** A feed costs O(len(data) + tail): searches resume where the last call
  stopped, and the tail is at most one header section. (A section trickled byte by byte still
  has its tail copied on each feed: at most 8 KiB, less than the system call that read it.)
* **Speed.** Content is scanned with ``bytes.find`` for the delimiter (C speed), never byte by
  byte; a piece that holds no delimiter and ends clear of one goes out as it came, uncopied.

An error refuses the body as a whole: the events of the call that raised are lost, and those
returned before count for nothing (the upload they were feeding is abandoned).

The rest of the module turns header fields into what the upload needs:
:func:`boundary_from_content_type`, :func:`parse_disposition` for ``name`` and ``filename``
the way browsers send them (the HTML standard's form encoding: a quoted string where ``"``,
CR and LF are written ``%22``, ``%0D``, ``%0A`` and everything else is raw UTF-8; never
``filename*``, which RFC 7578 §4.2 forbids), and :func:`safe_filename`, which turns a client's
file name into one name in one folder, or refuses it.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from http import HTTPStatus
from typing import NamedTuple

from .errors import HttpError, bad_request
from .files import is_upload_temp

KIB = 1024

# RFC 2046 §5.1.1: boundary := 0*69<bchars> bcharsnospace, so 1 to 70 characters.
MAX_BOUNDARY_CHARS = 70
# Longest file name most filesystems take (NAME_MAX on Linux, macOS, ext4, APFS): in bytes.
MAX_FILENAME_BYTES = 255


@dataclass(frozen=True, slots=True)
class MultipartLimits:
    """Bounds on what a body's structure may cost. Content size is the body limit's job."""

    # One part's header section, with the padding and CRLF after its delimiter. Browsers send
    # two fields of about 100 bytes; the multipart package allows 4 KiB per line.
    max_part_header_bytes: int = 8 * KIB
    max_part_header_count: int = 8  # RFC 7578 uses 3 fields; the multipart package allows 8
    max_parts: int = 10_000  # a form with a file input per row is still far below this


@dataclass(slots=True)
class PartStart:
    """A part begins. ``headers`` are (name lower-cased, value OWS-stripped), in order."""

    headers: tuple[tuple[bytes, bytes], ...]

    def get(self, name: bytes) -> bytes | None:
        """The value of the field ``name`` (lower-case); ``None`` if absent. Repeats: the first."""
        for n, v in self.headers:
            if n == name:
                return v
        return None


@dataclass(slots=True)
class PartData:
    """A piece of the current part's content; pieces are never empty."""

    data: bytes


@dataclass(slots=True)
class PartEnd:
    """The current part's content is complete."""


@dataclass(slots=True)
class BodyEnd:
    """The close delimiter was seen; whatever follows is epilogue and is ignored."""


Event = PartStart | PartData | PartEnd | BodyEnd
_PART_END = PartEnd()
_BODY_END = BodyEnd()

# Parser states.
_CONTENT = 0  # inside a part's content (or the preamble)
_HEAD = 1  # after a delimiter: "--", or padding, CRLF and a header section
_DONE = 2  # after the close delimiter

# RFC 9110 §5.1 token for field names; §5.5 field-value (obs-text allowed: raw UTF-8 names).
_TCHARS = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_VALUE = rb"((?:[\x21-\x7e\x80-\xff][\t\x20-\x7e\x80-\xff]*)?)"  # trailing OWS: rstrip
_FIELD_LINE = re.compile(b"(" + _TCHARS + rb"):[ \t]*" + _VALUE)
_FIELD_LINES = re.compile(rb"^(" + _TCHARS + rb"):[ \t]*" + _VALUE + rb"\r\n", re.MULTILINE)
_LINE = _TCHARS + rb":[ \t]*(?:[\x21-\x7e\x80-\xff][\t\x20-\x7e\x80-\xff]*)?\r\n"
# A whole header section: the first line's name and value as groups (most parts have one or
# two lines, so this spares a findall), then the other lines.
_QUICK_HEAD = re.compile(
    rb"\r\n(?:(" + _TCHARS + rb"):[ \t]*" + _VALUE + rb"\r\n((?:" + _LINE + rb")*))?\r\n"
)
_AFTER_BOUNDARY = "multipart boundary followed by something other than CRLF"
_PADDING = re.compile(rb"[ \t]*")


class MultipartParser:
    """Push parser for one multipart body; see the module docstring."""

    __slots__ = (
        "_delim",
        "_max_fields",
        "_max_head",
        "_max_parts",
        "_parts",
        "_preamble",
        "_scanned",
        "_state",
        "_tail",
    )

    def __init__(self, boundary: bytes, limits: MultipartLimits | None = None) -> None:
        check_boundary(boundary)
        self._delim = b"\r\n--" + boundary
        limits = limits or MultipartLimits()
        self._max_head = limits.max_part_header_bytes
        self._max_fields = limits.max_part_header_count
        self._max_parts = limits.max_parts
        self._state = _CONTENT
        self._preamble = True
        self._tail = b"\r\n"  # the virtual CRLF before a body that opens with --boundary
        self._scanned = 0  # bytes of the tail's header section already searched
        self._parts = 0

    @property
    def finished(self) -> bool:
        """Whether the close delimiter has been seen."""
        return self._state == _DONE

    def feed(self, data: bytes | bytearray | memoryview) -> list[Event]:
        """Parse the next piece of the body; return the events it completes."""
        if self._state == _DONE or not data:
            return []
        tail = self._tail
        buf = tail + data if tail else bytes(data)
        self._tail = b""
        events: list[Event] = []
        pos = 0
        end = len(buf)
        delim = self._delim
        while True:
            if self._state == _CONTENT:
                i = buf.find(delim, pos)
                if i < 0:
                    # Keep the longest suffix that may start a delimiter. The delimiter holds
                    # one CR, its first byte, so only the last CR near the end can start one.
                    keep = buf.rfind(b"\r", max(pos, end - len(delim) + 1))
                    if keep < 0 or not delim.startswith(buf[keep:]):
                        keep = end
                    if keep > pos and not self._preamble:
                        events.append(PartData(buf[pos:keep]))  # the whole piece: no copy
                    self._tail = buf[keep:]
                    return events
                if self._preamble:
                    self._preamble = False
                else:
                    if i > pos:
                        events.append(PartData(buf[pos:i]))
                    events.append(_PART_END)
                pos = i + len(delim)
                self._state = _HEAD
                self._scanned = 0
            pos = self._head(buf, pos, events)
            if pos < 0:
                return events

    def close(self) -> None:
        """The body is complete: raise unless its close delimiter was seen."""
        if self._state != _DONE:
            where = "before its first boundary" if self._preamble else "inside a part"
            raise bad_request(f"multipart body ends {where}, without its closing boundary")

    def _head(self, buf: bytes, pos: int, events: list[Event]) -> int:
        """Read what follows a delimiter at ``buf[pos:]``. Returns where the part's content
        starts, or -1 when there is nothing more to do with ``buf``: either more bytes are
        needed (``buf[pos:]`` is then kept as the tail) or the body is done."""
        # The usual case in one regex: no padding, and a complete, valid header section within
        # the limit. It gives exactly what the general path below would, which handles the
        # rest. Tried once per section: a trickled section resumes in the general path.
        m = None if self._scanned else _QUICK_HEAD.match(buf, pos, pos + self._max_head)
        if m is not None:
            self._parts += 1
            name, value, rest = m.groups()
            if name is None:
                headers: tuple[tuple[bytes, bytes], ...] = ()
            elif rest:
                pairs = [(name, value), *_FIELD_LINES.findall(rest)]
                headers = tuple([(n.lower(), v.rstrip(b" \t")) for n, v in pairs])
            else:
                headers = ((name.lower(), value.rstrip(b" \t")),)
            if self._parts > self._max_parts or len(headers) > self._max_fields:
                self._check_counts(len(headers))
            events.append(PartStart(headers))
            self._state = _CONTENT
            return m.end()
        end = len(buf)
        stop = min(end, pos + self._max_head)
        if buf.startswith(b"\r\n", pos, stop):
            fields = pos + 2  # the usual case: no transport padding
        elif buf.startswith(b"-", pos):
            if end - pos < 2:
                self._tail = buf[pos:]
                return -1
            if buf[pos + 1] != 45:  # "-"
                raise bad_request(_AFTER_BOUNDARY)
            self._state = _DONE
            events.append(_BODY_END)
            return -1  # the rest is epilogue
        else:
            # RFC 2046 §5.1.1: transport-padding (LWSP) may follow a delimiter; it counts
            # towards the header section's limit, so it cannot go on for ever.
            pad = _PADDING.match(buf, pos, stop).end()  # type: ignore[union-attr]
            if pad + 2 > stop:
                if buf[pad:stop] not in (b"", b"\r"):
                    raise bad_request(_AFTER_BOUNDARY)
                return self._need_more(buf, pos, "padding after a multipart boundary")
            if not buf.startswith(b"\r\n", pad):
                raise bad_request(_AFTER_BOUNDARY)
            fields = pad + 2
        if buf.startswith(b"\r\n", fields, stop):
            head_end = fields  # no header fields at all
        else:
            # The section, its final CRLF CRLF included, must end within the limit; resume the
            # search where the last call stopped, so that a trickled section is not quadratic.
            start = max(fields, pos + self._scanned - 3)
            head_end = buf.find(b"\r\n\r\n", start, stop)
            if head_end < 0:
                self._scanned = stop - pos
                return self._need_more(buf, pos, "multipart part header section")
            head_end += 2
        # The field lines, each ending in CRLF; ``fields`` follows a LF, so ``^`` matches there.
        self._parts += 1
        lines = buf.count(b"\r\n", fields, head_end)
        self._check_counts(lines)
        if lines:
            pairs = _FIELD_LINES.findall(buf, fields, head_end)
            # findall skips a line that does not match (fewer pairs than lines); a bare LF
            # would start a line of its own inside another, so it is looked for too.
            if len(pairs) != lines or buf.count(b"\n", fields, head_end) != lines:
                raise bad_request(_section_problem(buf[fields:head_end]))
            events.append(PartStart(tuple([(n.lower(), v.rstrip(b" \t")) for n, v in pairs])))
        else:
            events.append(PartStart(()))
        self._state = _CONTENT
        return head_end + 2

    def _check_counts(self, fields: int) -> None:
        if self._parts > self._max_parts:
            raise HttpError(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"more than {self._max_parts} multipart parts",
                close=True,
            )
        if fields > self._max_fields:
            raise HttpError(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"more than {self._max_fields} header fields in a multipart part",
                close=True,
            )

    def _need_more(self, buf: bytes, pos: int, what: str) -> int:
        limit = self._max_head
        if len(buf) - pos >= limit:
            raise HttpError(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"{what} over {limit} bytes", close=True
            )
        self._tail = buf[pos:]
        return -1


def _section_problem(section: bytes) -> str:
    for line in section.split(b"\r\n")[:-1]:
        if not _FIELD_LINE.fullmatch(line):
            return _line_problem(line)
    return "multipart part header line ends in a bare LF"


def _line_problem(line: bytes) -> str:
    if line[:1] in (b" ", b"\t"):
        return "obsolete line folding in a multipart part header"
    if b"\n" in line or b"\r" in line:
        return "multipart part header line ends in a bare CR or LF"
    name, colon, _ = line.partition(b":")
    if not colon:
        return "multipart part header line without a colon"
    if not name or not re.fullmatch(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+", name):
        return "multipart part header name is not a token"
    return "control character in a multipart part header value"


# Content-Type and its boundary.

# RFC 2046 §5.1.1: bchars := bcharsnospace / " "; the last character is not a space.
_BOUNDARY = re.compile(rb"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")
_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
# RFC 9110 §5.6.4 quoted-string: qdtext or quoted-pair.
_QUOTED = rb'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"'
# RFC 9110 §5.6.6: parameters = *( OWS ";" OWS [ parameter ] ), parameter = token "=" value.
_PARAM = re.compile(rb"[ \t]*;[ \t]*(?:(" + _TOKEN + rb")=(" + _TOKEN + rb"|" + _QUOTED + rb"))?")
_MEDIA_TYPE = re.compile(rb"[ \t]*(" + _TOKEN + rb")/(" + _TOKEN + rb")")
_QUOTED_PAIR = re.compile(rb"\\(.)", re.DOTALL)


def check_boundary(boundary: bytes) -> None:
    """Raise a 400 unless ``boundary`` is a boundary RFC 2046 allows (1 to 70 bchars)."""
    if not boundary:
        raise bad_request("multipart boundary is empty")
    if len(boundary) > MAX_BOUNDARY_CHARS:
        raise bad_request(f"multipart boundary over {MAX_BOUNDARY_CHARS} characters")
    if not _BOUNDARY.fullmatch(boundary):
        raise bad_request("multipart boundary has a character RFC 2046 does not allow")


def _parameters(value: bytes, at: int, what: str) -> dict[bytes, bytes]:
    """The parameters of a field value from ``at`` on: names lower-cased, values unquoted
    as raw bytes (quoted-pairs kept). A repeated name or a syntax error is a 400."""
    params: dict[bytes, bytes] = {}
    end = len(value.rstrip(b" \t"))
    while at < end:
        m = _PARAM.match(value, at)
        if m is None or m.end() == at:
            raise bad_request(f"malformed {what} parameters")
        at = m.end()
        if m[1] is None:
            continue  # an empty parameter (";;"), which RFC 9110 allows
        name = m[1].lower()
        if name in params:
            raise bad_request(f"{what} parameter {name.decode()} given twice")
        params[name] = m[2]
    return params


def boundary_from_content_type(value: bytes | None) -> bytes:
    """The boundary of a ``multipart/form-data`` Content-Type value.

    415 if the type is something else; 400 if the boundary is missing, invalid or too long.
    """
    if value is None:
        raise HttpError(
            HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "multipart/form-data body expected", close=True
        )
    m = _MEDIA_TYPE.match(value)
    if m is None or (m[1].lower(), m[2].lower()) != (b"multipart", b"form-data"):
        raise HttpError(
            HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "multipart/form-data body expected", close=True
        )
    params = _parameters(value, m.end(), "Content-Type")
    boundary = params.get(b"boundary")
    if boundary is None:
        raise bad_request("multipart/form-data without a boundary parameter")
    if boundary[:1] == b'"':
        boundary = _QUOTED_PAIR.sub(rb"\1", boundary[1:-1])
    check_boundary(boundary)
    return boundary


# Content-Disposition.


class Disposition(NamedTuple):
    """A part's Content-Disposition: ``name`` of the form field, ``filename`` if a file."""

    name: str
    filename: str | None


def _unquote_form_value(raw: bytes, what: str) -> str:
    """A parameter value as browsers send it, decoded.

    Browsers (the HTML standard's multipart/form-data encoding) quote the value and write
    ``"``, CR and LF as ``%22``, ``%0D``, ``%0A``; they escape nothing else, so a ``%`` or
    ``\\`` is literal and other ``%XX`` are left alone. A value with ``\\"`` inside comes from
    a client that uses RFC 9110 quoted-pairs instead (curl before 7.81, some libraries): for
    it, quoted-pairs are undone and nothing is percent-decoded.
    """
    if raw[:1] == b'"':
        inner = raw[1:-1]
        if b'\\"' in inner:
            inner = _QUOTED_PAIR.sub(rb"\1", inner)
        else:
            inner = inner.replace(b"%22", b'"').replace(b"%0D", b"\r").replace(b"%0A", b"\n")
    else:
        inner = raw  # a token: nothing to decode
    try:
        return inner.decode("utf-8")
    except UnicodeDecodeError:
        raise bad_request(f"multipart {what} is not valid UTF-8") from None


_BROWSER_DISPOSITION = re.compile(
    rb'form-data; name="([^"%\\\x00-\x1f\x7f]*)"(?:; filename="([^"%\\\x00-\x1f\x7f]*)")?'
)


def parse_disposition(value: bytes | None) -> Disposition:
    """Parse a part's ``Content-Disposition: form-data; name=...; filename=...``.

    400 if it is missing, not ``form-data``, has no ``name``, or has only ``filename*``:
    RFC 7578 §4.2 forbids that form and no browser sends it. Next to a plain ``filename``
    (the RFC 6266 habit of sending both), ``filename*`` is ignored.
    """
    if value is None:
        raise bad_request("multipart part without a Content-Disposition")
    m = _BROWSER_DISPOSITION.fullmatch(value)
    if m is not None:  # what every browser sends, with nothing to unescape: the quick way
        try:
            name = m[1].decode("utf-8")
            filename = None if m[2] is None else m[2].decode("utf-8")
        except UnicodeDecodeError:
            pass  # the general path below says which one
        else:
            return Disposition(name, filename)
    m = re.match(rb"[ \t]*(" + _TOKEN + rb")", value)
    if m is None or m[1].lower() != b"form-data":
        raise bad_request("multipart part's Content-Disposition is not form-data")
    params = _parameters(value, m.end(), "Content-Disposition")
    raw_name = params.get(b"name")
    if raw_name is None:
        raise bad_request("multipart part's Content-Disposition has no name")
    raw_filename = params.get(b"filename")
    if raw_filename is None and b"filename*" in params:
        raise bad_request("filename* is not accepted in multipart/form-data (RFC 7578 §4.2)")
    return Disposition(
        _unquote_form_value(raw_name, "field name"),
        None if raw_filename is None else _unquote_form_value(raw_filename, "file name"),
    )


# File names.

_DOUBLE_ENCODED = re.compile(r"%(?:2e|2f|5c|00)", re.IGNORECASE)


def safe_filename(name: str, *, dotfiles: bool = False) -> str:
    """The client's file name as one safe name in one folder, or a 400 that says which name.

    Keeps the last path component (after ``/`` or ``\\``: browsers on Windows and old IE send
    whole paths), normalises it to NFC (macOS sends NFD, and one name should have one
    spelling on disk), and refuses: an empty name, ``.`` and ``..``, NUL and every control
    character, a name over 255 bytes in UTF-8, and what the path rules in :mod:`files` would
    never serve: a dotfile unless ``dotfiles``, our upload temp names, and names holding an
    encoded dot, slash, backslash or NUL.
    """
    base = unicodedata.normalize("NFC", re.split(r"[/\\]", name)[-1])
    problem = None
    if not base:
        problem = "is empty"
    elif base in (".", ".."):
        problem = "is a dot-segment"
    elif any(unicodedata.category(c) == "Cc" for c in base):
        problem = "holds a control character"
    elif len(base.encode("utf-8", "surrogatepass")) > MAX_FILENAME_BYTES:
        problem = f"is over {MAX_FILENAME_BYTES} bytes"
    elif any(unicodedata.category(c) == "Cs" for c in base):
        problem = "is not valid Unicode"
    elif is_upload_temp(base):
        problem = "is reserved for the server's upload files"
    elif base.startswith(".") and not dotfiles:
        problem = "starts with a dot (dotfiles are not served)"
    elif _DOUBLE_ENCODED.search(base):
        problem = "holds an encoded dot, slash, backslash or NUL"
    if problem is not None:
        shown = ascii(name if len(name) <= 80 else name[:80] + "...")
        raise bad_request(f"file name {shown} {problem}")
    return base
