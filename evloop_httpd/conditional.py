"""Validators and conditional requests (RFC 9110 §8.8 and §13), as pure functions.

Theory of operation
-------------------
A file's validators are its strong ETag (identity, size and mtime in nanoseconds, see
:func:`files.strong_etag`) and its Last-Modified second, which the handler clamps to the Date it
sends. :func:`evaluate` takes those, the method and the request's conditional header fields, and
says what the response must be: go on, 304, or 412. It follows RFC 9110 §13.2.2 step by step:

1. If-Match present: false (strong comparison; ``*`` is true when the file exists) → 412.
2. Else If-Unmodified-Since with a valid date: the file changed after it → 412.
3. If-None-Match present: true (weak comparison; ``*`` matches any existing file) → go on;
   false → 304 for GET and HEAD, 412 for the other methods.
4. Else, on GET and HEAD only, If-Modified-Since with a valid date: not changed since → 304.

If-Range (step 5) is asked separately, through :func:`if_range_allows`, because it only decides
between a 206 and a 200. The caller evaluates none of this when the response would not be a
2xx anyway (no such file, a directory, a refused method): RFC 9110 §13.2.1.

A malformed date is ignored, as §13.1.3 and §13.1.4 require. A malformed entity-tag list is
where the RFC is silent, and we fail safe: never perform an unsafe method, and never claim
"not modified", on a condition we could not read. So an unreadable If-Match is false (412), and
an unreadable If-None-Match is "no match" for GET and HEAD (a full 200, always correct) and
"match" for other methods (412).
"""

from __future__ import annotations

import calendar
import re
import time
from collections.abc import Callable
from enum import Enum

from .grammar import too_many_elements

# RFC 9110 §8.8.3: entity-tag = [ weak ] opaque-tag; weak = %s"W/";
#   opaque-tag = DQUOTE *etagc DQUOTE; etagc = %x21 / %x23-7E / obs-text
_ETAG = re.compile(rb'[ \t]*(W/)?("[\x21\x23-\x7e\x80-\xff]*")[ \t]*')
_OWS = re.compile(rb"[ \t]*")

_MONTHS = {
    m: i + 1 for i, m in enumerate(b"Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split())
}
_DAY = rb"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)"
_LONG_DAY = rb"(?:Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday)"
_MONTH = rb"(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
_TIME = rb"([0-9]{2}):([0-9]{2}):([0-9]{2})"
# RFC 9110 §5.6.7: HTTP-date = IMF-fixdate / obs-date; obs-date = rfc850-date / asctime-date
#   IMF-fixdate  = day-name "," SP date1 SP time-of-day SP GMT   ; Sun, 06 Nov 1994 08:49:37 GMT
#   rfc850-date  = day-name-l "," SP date2 SP time-of-day SP GMT ; Sunday, 06-Nov-94 08:49:37 GMT
#   asctime-date = day-name SP date3 SP time-of-day SP year      ; Sun Nov  6 08:49:37 1994
# Recipients MUST accept all three; the day name is not checked against the date (nothing
# useful follows from a mismatch, and the RFC does not ask for it).
_IMF = re.compile(_DAY + rb", ([0-9]{2}) " + _MONTH + rb" ([0-9]{4}) " + _TIME + rb" GMT")
_RFC850 = re.compile(_LONG_DAY + rb", ([0-9]{2})-" + _MONTH + rb"-([0-9]{2}) " + _TIME + rb" GMT")
_ASCTIME = re.compile(_DAY + rb" " + _MONTH + rb" ([ 0-9][0-9]) " + _TIME + rb" ([0-9]{4})")


class Outcome(Enum):
    PROCEED = "proceed"
    NOT_MODIFIED = "304 Not Modified"
    PRECONDITION_FAILED = "412 Precondition Failed"


def parse_http_date(value: bytes, now: float | None = None) -> int | None:
    """Seconds since the epoch for an HTTP-date, or ``None`` when it is not exactly one."""
    if m := _IMF.fullmatch(value):
        day, mon, year, hh, mm, ss = m.groups()
    elif m := _ASCTIME.fullmatch(value):
        mon, day, hh, mm, ss, year = m.groups()
    elif m := _RFC850.fullmatch(value):
        day, mon, yy, hh, mm, ss = m.groups()
        # RFC 9110 §5.6.7: a two-digit year more than 50 years in the future is in the past.
        this_year = time.gmtime(time.time() if now is None else now).tm_year
        full = this_year - this_year % 100 + int(yy)
        if full > this_year + 50:
            full -= 100
        year = b"%d" % full
    else:
        return None
    try:
        fields = (int(year), _MONTHS[mon], int(day), int(hh), int(mm), int(ss))
    except (KeyError, ValueError):
        return None
    y, mo, d, h, mi, s = fields
    if not (1 <= d <= calendar.monthrange(y, mo)[1] and h < 24 and mi < 60 and s < 61):
        return None
    return calendar.timegm((y, mo, d, h, mi, min(s, 59), 0, 0, 0))


def parse_etags(value: bytes) -> list[tuple[bool, bytes]] | None:
    """An entity-tag list as (weak, opaque-tag with its quotes); ``None`` when malformed.

    ``*`` is not handled here: callers check for it first, since it is the whole value or
    nothing (RFC 9110 §13.1.1: ``If-Match = "*" / #entity-tag``). Empty list elements are
    skipped (RFC 9110 §5.6.1). The tags are matched one by one from the left rather than split
    on commas, because a comma is a legal character inside an opaque-tag.

    More than ``grammar.MAX_LIST_ELEMENTS`` elements (empty ones included, commas counted) is
    malformed too, so the fail-safe rules apply: no 304 on it, and no unsafe method.
    """
    if too_many_elements(value):
        return None
    tags: list[tuple[bool, bytes]] = []
    pos, end = 0, len(value)
    while pos < end:
        m = _ETAG.match(value, pos)
        if m is not None:
            tags.append((m.group(1) is not None, m.group(2)))
            pos = m.end()
        else:
            pos = _OWS.match(value, pos).end()  # type: ignore[union-attr]  # always matches
        if pos < end:
            if value[pos] != 0x2C:  # ","
                return None
            pos += 1
    return tags


def strong_match(tags: list[tuple[bool, bytes]], etag: bytes) -> bool:
    """RFC 9110 §8.8.3.2 strong comparison: both strong and the same opaque-tag."""
    return any(not weak and tag == etag for weak, tag in tags)


def weak_match(tags: list[tuple[bool, bytes]], etag: bytes) -> bool:
    """RFC 9110 §8.8.3.2 weak comparison: the same opaque-tag, weak or not."""
    bare = etag[2:] if etag.startswith(b"W/") else etag
    return any(tag == bare for _weak, tag in tags)


def evaluate(
    method: bytes,
    get: Callable[[bytes], bytes | None],
    etag: bytes | None,
    last_modified: int | None,
) -> Outcome:
    """The RFC 9110 §13.2.2 steps 1-4 for a resource whose current representation has ``etag``
    and ``last_modified`` (both ``None`` when there is none, as for a PUT that creates).

    ``get`` returns a request header's value by lower-case name (``Request.get``).
    """
    exists = etag is not None
    safe = method in (b"GET", b"HEAD")
    if_match = get(b"if-match")
    if if_match is not None:
        if not _matches(if_match, etag, strong=True, unreadable=False):
            return Outcome.PRECONDITION_FAILED
    elif exists and last_modified is not None:
        ius = get(b"if-unmodified-since")
        date = parse_http_date(ius) if ius is not None else None
        if date is not None and last_modified > date:
            return Outcome.PRECONDITION_FAILED
    if_none_match = get(b"if-none-match")
    if if_none_match is not None:
        if _matches(if_none_match, etag, strong=False, unreadable=not safe):
            return Outcome.NOT_MODIFIED if safe else Outcome.PRECONDITION_FAILED
    elif safe and exists and last_modified is not None:
        ims = get(b"if-modified-since")
        date = parse_http_date(ims) if ims is not None else None
        if date is not None and last_modified <= date:
            return Outcome.NOT_MODIFIED
    return Outcome.PROCEED


def _matches(value: bytes, etag: bytes | None, *, strong: bool, unreadable: bool) -> bool:
    if value.strip(b" \t") == b"*":
        return etag is not None
    tags = parse_etags(value)
    if tags is None:
        return unreadable
    if etag is None:
        return False
    return strong_match(tags, etag) if strong else weak_match(tags, etag)


def if_range_allows(value: bytes, etag: bytes, last_modified: int, date: int) -> bool:
    """RFC 9110 §13.1.5: may the Range be honoured? ``date`` is the Date the response shows.

    An entity-tag must match strongly (a weak one never does). A date must equal Last-Modified
    exactly, and Last-Modified must itself be strong: earlier than the second of Date, since a
    file can change again within the second it was last written (RFC 9110 §8.8.2.2). Anything
    else, malformed values included, means "send the whole file".
    """
    value = value.strip(b" \t")
    if value.startswith((b'"', b"W/")):
        tags = parse_etags(value)
        return tags is not None and len(tags) == 1 and strong_match(tags, etag)
    when = parse_http_date(value)
    return when is not None and when == last_modified and last_modified < date
