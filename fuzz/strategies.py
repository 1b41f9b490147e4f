"""Hypothesis strategies for HTTP/1.1 requests: valid ones, and valid ones with damage done.

Theory of operation: a *valid* request is built from parts that each follow their ABNF (method,
target, field lines, body framing), so that h11 and our parser must both accept it. Mutated
requests start from one of those and apply a few edits chosen to hit the places where parsers
disagree in practice: line ends (CR, LF, CRLF), NUL and other controls, spaces and tabs around
separators, duplicated or dropped field lines, and truncation. Valid inputs show agreement on
what is accepted; mutated ones show agreement (or a documented deviation) on what is refused.
"""

from __future__ import annotations

import itertools

from hypothesis import strategies as st

TCHARS = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_PCHARS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,;=:@"
_HEX = b"0123456789abcdefABCDEF"


# Strings are drawn as one ``binary`` and mapped onto their alphabet: one choice per string
# instead of one per byte keeps hypothesis fast enough for thousands of inputs a minute, and it
# still shrinks towards the alphabet's first character.


def _from(alphabet: bytes, min_size: int = 0, max_size: int = 12) -> st.SearchStrategy[bytes]:
    n = len(alphabet)
    return st.binary(min_size=min_size, max_size=max_size).map(
        lambda raw: bytes(alphabet[b % n] for b in raw)
    )


def _with_pct(alphabet: bytes, max_size: int) -> st.SearchStrategy[bytes]:
    """Characters of ``alphabet``, with a byte over 0xEF drawn as a percent-encoded pair."""
    n = len(alphabet)

    def expand(raw: bytes) -> bytes:
        return b"".join(
            b"%%%02X" % (b * 7 % 256) if b > 0xEF else alphabet[b % n : b % n + 1] for b in raw
        )

    return st.binary(max_size=max_size).map(expand)


token = _from(TCHARS, 1, 10)
method = st.one_of(
    st.sampled_from([b"GET", b"HEAD", b"PUT", b"POST", b"DELETE", b"OPTIONS", b"PATCH"]),
    token,
)

path = st.lists(_with_pct(_PCHARS, 8), min_size=1, max_size=4).map(lambda s: b"/" + b"/".join(s))
query = _with_pct(_PCHARS + b"/?", 10)
origin_form = st.tuples(path, st.none() | query).map(
    lambda t: t[0] if t[1] is None else t[0] + b"?" + t[1]
)
reg_name = _from(b"abcdefghijklmnopqrstuvwxyz0123456789-.", 1, 12)
authority = st.tuples(reg_name, st.none() | st.integers(0, 65535)).map(
    lambda t: t[0] if t[1] is None else t[0] + b":%d" % t[1]
)
absolute_form = st.tuples(st.sampled_from([b"http", b"https", b"HTTP"]), authority, origin_form)
absolute_form = absolute_form.map(lambda t: t[0] + b"://" + t[1] + t[2])

# A field value: field-vchars (obs-text included) with spaces or tabs between them.
field_value = _from(bytes(range(0x21, 0x7F)) + b"\x80\xa0\xff    \t", 0, 16).map(
    lambda v: v.strip(b" \t")
)
# Names that never mean anything to the framing, so that extra fields cannot change it.
extra_name = token.filter(
    lambda n: (
        n.lower()
        not in (
            b"host",
            b"content-length",
            b"transfer-encoding",
            b"connection",
            b"upgrade",
            b"expect",
        )
    )
)
extra_field = st.tuples(extra_name, field_value)
ows = st.sampled_from([b"", b" ", b"\t", b"  "])


# The strategies the composites below draw from are built once, here: a strategy built inside
# a composite is built (and validated by hypothesis) again for every draw, which cost more than
# the drawing itself. The same strategies draw the same inputs either way.
_booleans = st.booleans()
_int_0_3 = st.integers(0, 3)
_int_0_4 = st.integers(0, 4)
_int_0_5 = st.integers(0, 5)
_chunk_datas = st.lists(st.binary(min_size=1, max_size=40), max_size=4)
_ext_value = st.one_of(token, st.just(b'"a b\\"c"'))
_trailers = st.lists(extra_field, max_size=2)


@st.composite
def chunked_body(draw: st.DrawFn) -> tuple[bytes, bytes, list[tuple[bytes, bytes]]]:
    """(wire bytes, payload, trailers) of a valid chunked body."""
    wire: list[bytes] = []
    payload: list[bytes] = []
    for data in draw(_chunk_datas):
        size = b"%x" % len(data)
        if draw(_booleans):
            size = size.upper()
        size = b"0" * draw(_int_0_3) + size
        ext = b""
        if draw(_int_0_4) == 0:
            ext = b";" + draw(token)
            if draw(_booleans):
                ext += b"=" + draw(_ext_value)
        wire.append(size + ext + b"\r\n" + data + b"\r\n")
        payload.append(data)
    trailers = draw(_trailers)
    wire.append(b"0\r\n" + b"".join(n + b": " + v + b"\r\n" for n, v in trailers) + b"\r\n")
    return b"".join(wire), b"".join(payload), [(n.lower(), v) for n, v in trailers]


_target = st.one_of(origin_form, origin_form, origin_form, absolute_form)
_fields = st.lists(extra_field, max_size=5)
_framing = st.sampled_from(["none", "none", "length", "chunked"])
_length_body = st.binary(max_size=60)
_length_name = st.sampled_from([b"Content-Length", b"content-length", b"CONTENT-LENGTH"])
_chunked_body = chunked_body()
_coding = st.sampled_from([b"chunked", b"Chunked", b"CHUNKED"])
_connection = st.sampled_from([b"close", b"keep-alive"])
# st.integers(0, n) for every n a request can need (fields: up to 5 extra, Host, framing).
_index_upto = [st.integers(0, n) for n in range(8)]


@st.composite
def valid_request(draw: st.DrawFn, http_10: bool | None = None) -> bytes:
    """One complete, valid request that both parsers must accept."""
    is_10 = draw(_int_0_5) == 0 if http_10 is None else http_10
    m = draw(method)
    target = draw(_target)
    if m == b"OPTIONS" and draw(_int_0_3) == 0:
        target = b"*"
    fields = list(draw(_fields))
    if not is_10 or draw(_booleans):
        fields.insert(draw(_index_upto[len(fields)]), (b"Host", draw(authority)))
    body = b""
    framing = draw(_framing)
    if framing == "chunked" and is_10:
        framing = "length"
    if framing == "length":
        body = draw(_length_body)
        name = draw(_length_name)
        fields.insert(draw(_index_upto[len(fields)]), (name, b"%d" % len(body)))
    elif framing == "chunked":
        body = draw(_chunked_body)[0]
        coding = draw(_coding)
        fields.insert(draw(_index_upto[len(fields)]), (b"Transfer-Encoding", coding))
    if draw(_int_0_5) == 0:
        fields.append((b"Connection", draw(_connection)))
    version = b"HTTP/1.0" if is_10 else b"HTTP/1.1"
    head = m + b" " + target + b" " + version + b"\r\n"
    for name, value in fields:
        head += name + b":" + draw(ows) + value + draw(ows) + b"\r\n"
    return head + b"\r\n" + body


pipeline = st.lists(valid_request(), min_size=1, max_size=3).map(b"".join)


_special = st.sampled_from([b"\r", b"\n", b"\r\n", b"\x00", b" ", b"\t", b":", b","])
_inserted = st.one_of(_special, _special, st.binary(min_size=1, max_size=2))
_edits = st.integers(1, 3)
_edit_kind = st.sampled_from(
    ["flip", "insert", "insert", "delete", "dup", "drop", "truncate", "line", "line"]
)
_bit = st.integers(0, 7)


def _damage(draw: st.DrawFn, valid: bytes) -> bytes:
    """``valid`` with one to three edits applied, each drawn with ``draw``."""
    data = bytearray(valid)
    for _ in range(draw(_edits)):
        kind = draw(_edit_kind)
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        if kind == "flip":
            data[i] ^= 1 << draw(_bit)
        elif kind == "insert":
            data[i:i] = draw(_inserted)
        elif kind == "delete":
            del data[i]
        elif kind in ("dup", "drop"):
            # Field lines: find the CRLF-bounded line that holds position i.
            start = data.rfind(b"\r\n", 0, i) + 2 if data.rfind(b"\r\n", 0, i) >= 0 else 0
            end = data.find(b"\r\n", i)
            if end < 0:
                continue
            line = bytes(data[start : end + 2])
            if kind == "dup":
                data[start:start] = line
            else:
                del data[start : end + 2]
        elif kind == "line":
            # A whole line of a smuggling shape, at a line start.
            at = data.find(b"\r\n", i)
            if at >= 0:
                data[at + 2 : at + 2] = draw(_nasty_line)
        else:
            del data[draw(st.integers(0, len(data))) :]
    return bytes(data)


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[bytes] = pipeline) -> bytes:
    """A valid pipeline with one to three edits applied."""
    return _damage(draw, draw(base))


@st.composite
def pipeline_and_damage(draw: st.DrawFn) -> tuple[bytes, bytes]:
    """A valid pipeline, and the same pipeline with one to three edits applied.

    Two inputs for the price of one: drawing the pipeline is most of hypothesis's work (about
    a hundred choices against a handful for the edits), so a test that wants many of both
    checks each pipeline whole and then damaged."""
    valid = draw(pipeline)
    return valid, _damage(draw, valid)


_NASTY_LINES = [
    b"Transfer-Encoding: chunked\r\n",
    b"Transfer-Encoding: chunked, identity\r\n",
    b"Transfer-Encoding: gzip, chunked\r\n",
    b"Transfer-Encoding : chunked\r\n",
    b"Transfer-Encoding:\tchunked\r\n",
    b"Content-Length: 0\r\n",
    b"Content-Length: 3\r\n",
    b"Content-Length: +3\r\n",
    b"Content-Length: 3, 3\r\n",
    b"Content-Length: 3,4\r\n",
    b"Host: a\r\n",
    b"Host: a b\r\n",
    b" folded\r\n",
    b"\tfolded\r\n",
    b"Connection: close\r\n",
    b"Expect: 100-continue\r\n",
    b"X: \x01\r\n",
    b"\r\n",
    b"0\r\n\r\n",
    b"3 ;a\r\nabc\r\n",
    b'3;a="b"\r\nabc\r\n',
    b"GET / HTTP/1.1\r\n",
    b"GET / HTTP/2.0\r\n",
    b"GET / HTTP/1.0\r\n",
]
_nasty_line = st.sampled_from(_NASTY_LINES)


def splits(data: bytes) -> st.SearchStrategy[list[int]]:
    """Cut points into ``data``: sorted, distinct, strictly inside."""
    if len(data) < 2:
        return st.just([])
    return st.lists(st.integers(1, len(data) - 1), max_size=min(24, len(data) - 1)).map(
        lambda cuts: sorted(set(cuts))
    )


def cut(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds) if b > a]


any_input = st.one_of(
    pipeline,
    mutated(),
    mutated(),
    st.binary(max_size=200),
    st.lists(
        st.sampled_from([b"GET / HTTP/1.1", b"\r\n", b"\n", b"\r", b"Host: a", b" ", b":"])
    ).map(b"".join),
)
