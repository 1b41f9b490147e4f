"""Range requests (RFC 9110 §14): parsing ``bytes=`` ranges and laying out 206 bodies.

Theory of operation
-------------------
:func:`plan_ranges` turns a Range field value and a file size into one of three answers:
``None`` (ignore the field and send the whole file with 200), ``[]`` (nothing satisfiable: 416),
or a list of inclusive ``(first, last)`` byte positions to send with 206. Everything here is
arithmetic on integers; no file is read, so a 206 body is always streamed from the file by the
connection, whatever the ranges.

A multipart/byteranges body is laid out by :func:`multipart_spans` as the connection's
``spans``: each part's delimiter and headers are the prefix of its file span, and the closing
delimiter is the trailer. Its Content-Length is computed here, before a byte is sent.

Amplification rule (RFC 9110 §14.3 and §17.15 warn about ranges that cost the server more than
the file, "bytes=0-,0-,0-,..." being the classic): the response to a Range never carries more
file bytes than the file has, and never more than ``MAX_PARTS`` parts. Concretely:

* More than ``MAX_RANGE_SPECS`` range-specs, or more than ``grammar.MAX_LIST_ELEMENTS`` list
  elements counting empty ones (each costs a parse): the field is ignored (a plain 200 costs
  exactly the file, so ignoring is always safe and the RFC allows it).
* If any two satisfiable ranges overlap, or the gap between them is smaller than
  ``COALESCE_GAP_BYTES`` (less than the part headers a new part would cost), all ranges are
  sorted and merged; otherwise the parts keep the order the client asked for (§14.6).
* More than ``MAX_PARTS`` parts left after that: the field is ignored (200).

So a 206 body is at most the file size plus ``MAX_PARTS`` part headers.
"""

from __future__ import annotations

import re
from itertools import pairwise

from .grammar import too_many_elements

MAX_RANGE_SPECS = 100  # download managers ask for 1-16; more is a scan or an attack
MAX_PARTS = 32  # after coalescing; bounds per-response overhead to ~32 part headers
COALESCE_GAP_BYTES = 80  # about one part header: sending the gap is cheaper than a new part
_HUGE = 10**18  # positions with more digits than this are beyond any file we can serve

# RFC 9110 §14.1.1: ranges-specifier = range-unit "=" range-set; range-set = 1#range-spec;
#   range-spec = int-range / suffix-range / other-range; int-range = first-pos "-" [ last-pos ];
#   suffix-range = "-" suffix-length. The unit is case-insensitive (§14.1).
_SPECIFIER = re.compile(rb"([Bb][Yy][Tt][Ee][Ss])=(.*)", re.DOTALL)
_SPEC = re.compile(rb"[ \t]*(?:([0-9]+)-([0-9]*)|-([0-9]+))[ \t]*")
_EMPTY = re.compile(rb"[ \t]*")


def _int(digits: bytes) -> int:
    # int() refuses very long digit strings (and would be slow on them): clamp instead, since
    # such a position can only be past the end of the file.
    return _HUGE if len(digits) > 18 else int(digits)


def parse_range(value: bytes) -> list[tuple[int | None, int | None]] | None:
    """The range-specs of a ``bytes`` Range value, or ``None`` when the field must be ignored
    (another unit, invalid syntax, too many specs).

    Each spec is ``(first, last)`` with ``last`` possibly ``None`` ("first-"), or, for a suffix
    range "-N", ``(None, N)``.
    """
    m = _SPECIFIER.fullmatch(value)
    if m is None or too_many_elements(value):
        return None
    specs: list[tuple[int | None, int | None]] = []
    for element in m.group(2).split(b","):
        if _EMPTY.fullmatch(element):
            continue  # RFC 9110 §5.6.1: empty list elements are ignored
        s = _SPEC.fullmatch(element)
        if s is None:
            return None
        first, last, suffix = s.groups()
        if suffix is not None:
            specs.append((None, _int(suffix)))
            if len(specs) > MAX_RANGE_SPECS:
                return None
            continue
        a = _int(first)
        b = _int(last) if last else None
        if b is not None and b < a:
            return None  # §14.1.1: last-pos < first-pos makes the whole field invalid
        specs.append((a, b))
        if len(specs) > MAX_RANGE_SPECS:
            return None
    return specs or None


def satisfiable(specs: list[tuple[int | None, int | None]], size: int) -> list[tuple[int, int]]:
    """The specs clipped to a representation of ``size`` bytes; unsatisfiable ones dropped."""
    out: list[tuple[int, int]] = []
    for first, last in specs:
        if first is None:  # suffix range: the last N bytes
            assert last is not None
            if last > 0 and size > 0:
                out.append((max(0, size - last), size - 1))
        elif first < size:
            out.append((first, size - 1 if last is None else min(last, size - 1)))
    return out


def coalesce(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Merge overlapping or nearly adjacent ranges (see the module docstring); else keep order."""
    ordered = sorted(ranges)
    close = any(b[0] <= a[1] + 1 + COALESCE_GAP_BYTES for a, b in pairwise(ordered))
    if not close:
        return ranges
    merged = [ordered[0]]
    for first, last in ordered[1:]:
        prev_first, prev_last = merged[-1]
        if first <= prev_last + 1 + COALESCE_GAP_BYTES:
            merged[-1] = (prev_first, max(prev_last, last))
        else:
            merged.append((first, last))
    return merged


def plan_ranges(value: bytes, size: int) -> list[tuple[int, int]] | None:
    """What to send for Range ``value`` on ``size`` bytes: ``None`` for the whole file (200),
    ``[]`` for 416, else the inclusive ranges for a 206, already coalesced."""
    specs = parse_range(value)
    if specs is None or size == 0:
        # An empty file has no byte to select: RFC 9110 §14.1.3 leaves only a suffix range
        # satisfiable, and a 206 cannot express zero bytes, so the whole (empty) file it is.
        return None
    ranges = satisfiable(specs, size)
    if not ranges:
        return []
    ranges = coalesce(ranges)
    return None if len(ranges) > MAX_PARTS else ranges


def content_range(first: int, last: int, size: int) -> bytes:
    return b"bytes %d-%d/%d" % (first, last, size)


def unsatisfied_range(size: int) -> bytes:
    """The Content-Range of a 416 (RFC 9110 §14.4)."""
    return b"bytes */%d" % size


def multipart_spans(
    ranges: list[tuple[int, int]], size: int, content_type: bytes, boundary: bytes
) -> tuple[list[tuple[bytes, int, int]], bytes, int]:
    """The spans, trailer and Content-Length of a multipart/byteranges body (RFC 9110 §14.6).

    Each part is ``CRLF --boundary CRLF`` headers ``CRLF CRLF`` bytes; the first part's leading
    CRLF is left out, which RFC 2046 §5.1.1 allows at the start of the body.
    """
    spans: list[tuple[bytes, int, int]] = []
    total = 0
    for i, (first, last) in enumerate(ranges):
        prefix = b"".join(
            (
                b"--" if i == 0 else b"\r\n--",
                boundary,
                b"\r\nContent-Type: ",
                content_type,
                b"\r\nContent-Range: ",
                content_range(first, last, size),
                b"\r\n\r\n",
            )
        )
        length = last - first + 1
        spans.append((prefix, first, length))
        total += len(prefix) + length
    trailer = b"\r\n--" + boundary + b"--\r\n"
    return spans, trailer, total + len(trailer)
