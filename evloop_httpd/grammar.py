"""Byte-level grammar of HTTP/1.1 requests, each regex under the ABNF it implements.

Theory of operation: every regex here runs against ``bytes`` and is anchored by the caller with
``fullmatch``, so a pattern says what a whole element is, never what it contains. Each is written
so that it cannot backtrack badly: runs of one class alternate with runs of a disjoint class, so
matching is linear in the input, which the fuzzer relies on. Where a run alternates with a
percent-escape (``(?:[...]++|%XX)*+``), both repeats are possessive: the classes are disjoint from
``%`` and from whatever may follow the element, so giving bytes back could never produce a match,
and not offering to saves the engine a branch per byte (half the cost of a Host check).

Deliberate deviations from RFC 9112 / RFC 3986 and from h11 (each explained, with the RFC
section behind it and its own test, in docs/deviations.md):

* D1. Bare LF is never a line terminator (RFC 9112 §2.2 allows it as a MAY): 400.
* D2. Field values may not hold any control character but HTAB (RFC 9110 §5.5 forbids them;
  h11 lets most of them through), in headers and trailers alike.
* D3. Request targets are checked against RFC 3986, plus the seven characters that browsers
  send unescaped by the WHATWG URL standard: ``[ ] | ^ ` { }``. Anything else outside the grammar
  (space, ``"``, ``<``, ``>``, ``\\``, ``#``, controls, bytes >= 0x80) is a 400, and so is a form
  that does not suit the method (``*`` without OPTIONS, ``host:port`` without CONNECT).
* D4. Chunk lines must match the RFC 9112 §7.1 grammar, size at most 16 hex digits (h11 accepts
  any bytes after ``;``, whitespace after the size, and 20 digits).
* D5. Exactly one empty line before a request line is skipped (h11 skips none).
* D6. obs-fold is refused (RFC 9112 §5.2 allows either; h11 unfolds).
* D7. Empty Transfer-Encoding list elements are refused (RFC 9110 §5.6.1.2 would skip them).
* D8. Versions other than HTTP/1.x get 505 (h11 parses HTTP/2.0 heads).
* D9. The Host value must be ``uri-host [":" port]`` (h11 takes any value).
* D10, D11. Transfer-Encoding on HTTP/1.0, or with Content-Length: 400 and close.
* D12. HTTP/1.2-1.9 are HTTP/1.1, Host requirement included (h11 requires it for 1.1 only).
* D13. Content-Length, Transfer-Encoding and Host are refused as trailers (RFC 9110 §6.5.1; h11
  validates their values there like header values).
* D14. Connection, Content-Length and Transfer-Encoding together hold at most
  ``MAX_LIST_ELEMENTS`` list elements, empty ones included (h11 takes any number): 400.
"""

from __future__ import annotations

import re

# RFC 9110 §5.6.1: a recipient MUST parse and ignore "a reasonable number of empty list
# elements: enough to handle common mistakes by senders that merge values, but not so much that
# they could be used as a denial-of-service mechanism". Elements of one list-valued field, its
# repeated lines joined, empty ones included: a head of 32 KiB packs 16,000 of them, and each
# costs a list parser in Python about a microsecond. Browsers send under 10; download managers
# up to 16 ranges; a cache revalidating a few stored variants, a few entity-tags.
MAX_LIST_ELEMENTS = 128


def too_many_elements(value: bytes) -> bool:
    """Whether list-valued ``value`` has more than ``MAX_LIST_ELEMENTS`` elements, counting
    empty ones. It counts commas (in C, before any splitting), so a comma inside an element
    (a quoted string, an entity-tag) counts as a separator too: the bound errs on the safe side.
    """
    return value.count(b",") >= MAX_LIST_ELEMENTS


# RFC 9110 §5.6.2: token = 1*tchar; tchar = "!" / "#" / "$" / "%" / "&" / "'" / "*" / "+" / "-"
#   / "." / "^" / "_" / "`" / "|" / "~" / DIGIT / ALPHA
TCHARS = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
TCHAR = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]"
TOKEN = re.compile(TCHAR + rb"+")

# RFC 9112 §3: request-line = method SP request-target SP HTTP-version
#   method = token; HTTP-version = HTTP-name "/" DIGIT "." DIGIT; HTTP-name = %s"HTTP"
# Single spaces only: RFC 9112 §3 lets a server split on other whitespace, and we do not (the
# target is checked on its own below, so here it is any run of visible ASCII).
REQUEST_LINE = re.compile(TCHAR + rb"+ [\x21-\x7e]+ HTTP/[0-9]\.[0-9]")

# RFC 9112 §5: field-line = field-name ":" OWS field-value OWS
#   field-value = *field-content; field-content = field-vchar [ 1*( SP / HTAB / field-vchar )
#   field-vchar ]; field-vchar = VCHAR / obs-text
# Group 1 is the name; group 2 the value with its leading OWS gone and its trailing OWS kept
# (the caller strips it). The value must start with a field-vchar, so a failed match cannot
# backtrack through the leading OWS one byte at a time. No whitespace before the colon (§5.1).
FIELD_LINE = re.compile(
    rb"(" + TCHAR + rb"+):[ \t]*((?:[\x21-\x7e\x80-\xff][\t\x20-\x7e\x80-\xff]*)?)"
)

# Every field line of a header section at once: ``findall`` from the first field line to the
# CRLF of the last returns one (name, value) pair per line that is a valid field-line. A line
# that is not valid yields no pair, since a match can only start at a line start (``^`` in
# MULTILINE mode) and must reach that line's CRLF; so fewer pairs than lines means a malformed
# line. One pass of the regex engine validates and extracts. The value keeps its trailing OWS
# (the caller strips it): making the pattern drop it costs more than the strip. As in FIELD_LINE,
# the value starts with a field-vchar so a failure cannot backtrack through the leading OWS.
FIELD_LINES = re.compile(
    rb"^(" + TCHAR + rb"+):[ \t]*((?:[\x21-\x7e\x80-\xff][\t\x20-\x7e\x80-\xff]*)?)\r\n",
    re.MULTILINE,
)

# RFC 3986 §3.3: pchar = unreserved / pct-encoded / sub-delims / ":" / "@"
#   unreserved = ALPHA / DIGIT / "-" / "." / "_" / "~"; sub-delims = "!" / "$" / "&" / "'" / "("
#   / ")" / "*" / "+" / "," / ";" / "="; pct-encoded = "%" HEXDIG HEXDIG
# RFC 3986 §3.4: query = *( pchar / "/" / "?" ); D3 adds [ ] | ^ ` { }.
_PCHAR_SAFE = rb"A-Za-z0-9\-._~!$&'()*+,;=:@\[\]|^`{}"
_PCT = rb"%[0-9A-Fa-f]{2}"
# "/" followed by pchars and slashes is exactly 1*( "/" segment ), without a nested repeat.
_PATH_ABEMPTY = rb"(?:/(?:[" + _PCHAR_SAFE + rb"/]++|" + _PCT + rb")*+)?"
_QUERY = rb"(?:[" + _PCHAR_SAFE + rb"/?]++|" + _PCT + rb")*+"

# RFC 9112 §3.2.1: origin-form = absolute-path [ "?" query ]; absolute-path = 1*( "/" segment )
_ORIGIN = rb"(/(?:[" + _PCHAR_SAFE + rb"/]++|" + _PCT + rb")*+)(?:\?(" + _QUERY + rb"))?"
ORIGIN_FORM = re.compile(_ORIGIN)

# The request line of nearly every request: a method, an origin-form target and HTTP/1.x, taken
# apart in one match. Groups: method, target, path, query, version (b"1.1"). A line this does not
# match is checked piece by piece instead, with the same result for the lines it does match.
ORIGIN_REQUEST_LINE = re.compile(rb"(" + TCHAR + rb"+) (" + _ORIGIN + rb") HTTP/(1\.[0-9])")

# RFC 3986 §3.2.2: host = IP-literal / IPv4address / reg-name
#   IP-literal = "[" ( IPv6address / IPvFuture ) "]"; reg-name = *( unreserved / pct-encoded /
#   sub-delims ). IPv4address is a subset of reg-name. The IPv6 form is checked loosely
#   (hex digits, colons and dots): a wrong literal only fails to name us, it cannot smuggle.
_HOST = rb"(?:\[[0-9A-Fa-f:.]+\]|(?:[A-Za-z0-9\-._~!$&'()*+,;=]++|" + _PCT + rb")*+)"
# RFC 9110 §7.2: Host = uri-host [ ":" port ]; port = *DIGIT
HOST = re.compile(rb"(" + _HOST + rb")(?::[0-9]*)?")

# RFC 9112 §3.2.2: absolute-form = absolute-URI; for http(s): scheme "://" authority
#   path-abempty [ "?" query ]. Userinfo is refused (RFC 9110 §4.2.4: treat it as an error).
# Groups: 1 authority, 2 host, 3 path, 4 query.
ABSOLUTE_FORM = re.compile(
    rb"[Hh][Tt][Tt][Pp][Ss]?://((" + _HOST + rb")(?::[0-9]*)?)(" + _PATH_ABEMPTY + rb")"
    rb"(?:\?(" + _QUERY + rb"))?"
)

# RFC 9112 §3.2.3: authority-form = uri-host ":" port (CONNECT only)
AUTHORITY_FORM = re.compile(_HOST + rb":[0-9]+")

# RFC 9112 §7.1: chunk-size = 1*HEXDIG; chunk-ext = *( BWS ";" BWS chunk-ext-name
#   [ BWS "=" BWS chunk-ext-val ] ); chunk-ext-name = token; chunk-ext-val = token / quoted-string
# RFC 9110 §5.6.4: quoted-string = DQUOTE *( qdtext / quoted-pair ) DQUOTE
#   qdtext = HTAB / SP / %x21 / %x23-5B / %x5D-7E / obs-text; quoted-pair = "\" ( HTAB / SP /
#   VCHAR / obs-text )
# At most 16 hex digits: enough for any size we could accept, and a cheap bound on the int.
# No whitespace between the size and the first ";" (D4): the RFC's BWS there is a MUST-accept,
# but h11 refuses it, and whitespace after a chunk size is a known source of disagreement
# between proxies; after the ";" BWS is accepted as the RFC says.
_BWS = rb"[ \t]*"
_QUOTED = rb'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"'
_CHUNK_EXT = (
    _BWS + TCHAR + rb"+(?:" + _BWS + rb"=" + _BWS + rb"(?:" + TCHAR + rb"+|" + _QUOTED + rb"))?"
)
CHUNK_LINE = re.compile(
    rb"([0-9A-Fa-f]{1,16})(?:;" + _CHUNK_EXT + rb"(?:" + _BWS + rb";" + _CHUNK_EXT + rb")*)?"
)

# RFC 9112 §6.1 / RFC 9110 §10.1.4: transfer-coding = token *( OWS ";" OWS transfer-parameter )
TRANSFER_CODING = re.compile(
    TCHAR + rb"+(?:[ \t]*;[ \t]*" + TCHAR + rb"+=(?:" + TCHAR + rb"+|" + _QUOTED + rb"))*"
)

# RFC 9110 §8.6: Content-Length = 1*DIGIT
DIGITS = re.compile(rb"[0-9]+")
