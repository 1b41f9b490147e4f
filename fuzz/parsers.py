"""Strategies and properties for the other parsers of untrusted bytes: multipart, PROXY, Forwarded.

Theory of operation: the same shape as :mod:`fuzz.properties` and :mod:`fuzz.strategies`, one
module for the three smaller parsers. Each ``check_*`` takes concrete values and raises
``AssertionError`` when its invariant fails, so hypothesis, the seed replay and a person at a
REPL all call the same function.

* multipart: *totality* (events of the four kinds or an ``HttpError``, 4xx, ``close=True``),
  *split invariance* (any cuts give the same events, adjacent data joined, or the same error),
  and *oracle agreement* with the ``multipart`` package on valid bodies (same parts, header
  fields, content, field name and file name).
* PROXY protocol: totality (``None``, a header with ``0 < consumed <= len``, or a 400) and split
  invariance (fed as a growing buffer, the first answer is the one for the whole input).
* Forwarded: totality (always an address: the peer or one taken from the fields).
"""

from __future__ import annotations

import ipaddress
from http import HTTPStatus

import multipart as mp_oracle
from hypothesis import strategies as st

from evloop_httpd import forwarded, proxyproto
from evloop_httpd.errors import HttpError
from evloop_httpd.multipart import (
    BodyEnd,
    MultipartLimits,
    MultipartParser,
    PartData,
    PartEnd,
    PartStart,
    parse_disposition,
)

from . import strategies as strat

# Multipart.

MP_LIMITS = MultipartLimits()
# Small enough that generated bodies cross each limit.
MP_SMALL_LIMITS = MultipartLimits(max_part_header_bytes=60, max_part_header_count=2, max_parts=2)

_BCHARS = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz'()+_,-./:=? "
boundary = strat._from(_BCHARS, 1, 70).filter(lambda b: not b.endswith(b" "))
_NAME_CHARS = "abcdefghijklmnopqrstuvwxyz ABC0123456789-_.[]%é日\U0001f600"
form_name = st.text(alphabet=_NAME_CHARS, max_size=12)
# Extra field names from the narrower alphabet the oracle accepts (its _hname); the tokens it
# refuses are covered by the tests and by the total and split targets.
_extra_name = strat._from(b"abcdefghijklmnopqrstuvwxyzABCXYZ0123456789-_", 1, 10).filter(
    lambda n: not n.lower().startswith(b"content-")
)
_ascii_value = strat._from(bytes(range(0x21, 0x7F)) + b"  \t", 0, 16).map(lambda v: v.strip(b" \t"))


def _quote(name: str) -> bytes:
    """Quote a name the way browsers do (HTML standard: ``"``, CR, LF percent-encoded)."""
    return b'"' + name.replace('"', "%22").encode() + b'"'


@st.composite
def mp_part(draw: st.DrawFn) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """(header fields, content) of one valid form-data part."""
    disposition = b"form-data; name=" + _quote(draw(form_name))
    if draw(st.booleans()):
        disposition += b"; filename=" + _quote(draw(form_name))
    fields = [(b"Content-Disposition", disposition)]
    if draw(st.booleans()):
        fields.append((b"Content-Type", draw(st.sampled_from([b"text/plain", b"image/png"]))))
    for _ in range(draw(st.integers(0, 2))):
        fields.append((draw(_extra_name), draw(_ascii_value)))
    content = draw(
        st.one_of(
            st.binary(max_size=60),
            st.lists(st.sampled_from([b"\r", b"\n", b"-", b"\r\n--", b"a", b"--"])).map(b"".join),
        )
    )
    return fields, content


@st.composite
def mp_valid(draw: st.DrawFn) -> tuple[bytes, bytes]:
    """(boundary, body) of a valid multipart/form-data body that both parsers must accept."""
    b = draw(boundary)
    delim = b"\r\n--" + b
    parts = draw(st.lists(mp_part(), max_size=4))
    preamble = b""
    if draw(st.integers(0, 3)) == 0:
        preamble = draw(st.binary(max_size=20)) + b"\r\n"
        if b"--" + b in preamble:
            preamble = b""
    body = [preamble, b"--", b]
    for fields, content in parts:
        if delim in content or (delim in b"\r\n" + content + delim[:-1]):
            content = content.replace(b"\r", b"")
        body.append(b"\r\n")
        for name, value in fields:
            body.append(name + b":" + draw(strat.ows) + value + b"\r\n")
        body.append(b"\r\n" + content + b"\r\n--" + b)
    body.append(b"--")
    if draw(st.booleans()):
        body.append(b"\r\n" + draw(st.binary(max_size=20)))
    return b, b"".join(body)


@st.composite
def mp_mutated(draw: st.DrawFn) -> tuple[bytes, bytes]:
    b, body = draw(mp_valid())
    data = bytearray(body)
    for _ in range(draw(st.integers(1, 3))):
        if not data:
            break
        i = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["insert", "insert", "delete", "flip", "truncate", "pad"]))
        if kind == "insert":
            special = [b"\r", b"\n", b"\r\n", b" ", b"\t", b"-", b":", b"\x00", b"\r\n--" + b]
            data[i:i] = draw(st.sampled_from(special))
        elif kind == "delete" and i < len(data):
            del data[i]
        elif kind == "flip" and i < len(data):
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif kind == "pad":
            data[i:i] = b" " * draw(st.integers(1, 80))
        elif kind == "truncate":
            del data[i:]
    return b, bytes(data)


mp_any = st.one_of(
    mp_valid(),
    mp_mutated(),
    mp_mutated(),
    st.tuples(st.just(b"b"), st.binary(max_size=120)),
    st.tuples(
        st.just(b"b"),
        st.lists(st.sampled_from([b"--b", b"\r\n", b"--", b" ", b"A: b", b"x", b"\r", b"\n"])).map(
            b"".join
        ),
    ),
)


def run_multipart(
    boundary: bytes, chunks: list[bytes], limits: MultipartLimits = MP_LIMITS
) -> list[tuple]:
    """Our events for ``chunks`` (then the end of the body), data joined; an error ends it."""
    out: list[tuple] = []
    try:
        parser = MultipartParser(boundary, limits)
        for chunk in chunks:
            for ev in parser.feed(chunk):
                if isinstance(ev, PartData):
                    assert isinstance(ev.data, bytes) and ev.data, "empty or non-bytes data"
                    if out and out[-1][0] == "data":
                        out[-1] = ("data", out[-1][1] + ev.data)
                    else:
                        out.append(("data", ev.data))
                elif isinstance(ev, PartStart):
                    out.append(("start", ev.headers))
                elif isinstance(ev, PartEnd):
                    out.append(("end",))
                elif isinstance(ev, BodyEnd):
                    out.append(("body end",))
                else:
                    raise AssertionError(f"unknown event {ev!r}")
        parser.close()
    except HttpError as exc:
        # An error refuses the body as a whole: the events before it (some returned by earlier
        # calls, some lost with the call that raised) count for nothing.
        assert 400 <= exc.status < 500 and exc.close, exc
        return [("error", int(exc.status), exc.detail)]
    return out


def check_multipart_total(boundary: bytes, body: bytes, small: bool = False) -> None:
    run_multipart(boundary, [body], MP_SMALL_LIMITS if small else MP_LIMITS)


def check_multipart_split(
    boundary: bytes, body: bytes, cuts: list[int], small: bool = False
) -> None:
    limits = MP_SMALL_LIMITS if small else MP_LIMITS
    whole = run_multipart(boundary, [body], limits)
    pieces = run_multipart(boundary, strat.cut(body, cuts), limits)
    assert pieces == whole, f"split {cuts} of {body!r}:\n whole  {whole}\n pieces {pieces}"


def _ours_parts(boundary: bytes, body: bytes) -> list[tuple]:
    parts: list[tuple] = []
    for ev in run_multipart(boundary, [body]):
        if ev[0] == "start":
            d = parse_disposition(dict(ev[1])[b"content-disposition"])
            parts.append((tuple((n, v.decode()) for n, v in ev[1]), d.name, d.filename, b""))
        elif ev[0] == "data":
            parts[-1] = (*parts[-1][:3], ev[1])
        elif ev[0] == "error":
            raise AssertionError(f"we refuse a valid body: {ev}")
    return parts


def _oracle_parts(boundary: bytes, body: bytes) -> list[tuple]:
    parser = mp_oracle.PushMultipartParser(boundary)
    parts: list[tuple] = []
    content: list[bytes] = []
    for chunk in (body, b""):
        for ev in parser.parse(chunk):
            if isinstance(ev, mp_oracle.MultipartSegment):
                content = []
                headers = tuple((n.lower().encode(), v) for n, v in ev.headerlist)
                parts.append((headers, ev.name, ev.filename))
            elif ev is None:
                parts[-1] = (*parts[-1], b"".join(content))
            else:
                content.append(bytes(ev))
    return parts


def check_multipart_oracle(boundary: bytes, body: bytes) -> None:
    ours = _ours_parts(boundary, body)
    theirs = _oracle_parts(boundary, body)
    assert ours == theirs, f"different parts for {body!r}:\n ours   {ours}\n theirs {theirs}"


# PROXY protocol.

_V2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"


@st.composite
def proxy_valid(draw: st.DrawFn) -> bytes:
    """A valid PROXY header (v1 or v2), possibly followed by the first bytes of HTTP."""
    after = draw(st.sampled_from([b"", b"GET / HTTP/1.1\r\n", b"\r\n\r\n\x00"]))
    if draw(st.booleans()):
        kind = draw(st.sampled_from(["TCP4", "TCP6", "UNKNOWN"]))
        if kind == "UNKNOWN":
            return b"PROXY UNKNOWN" + draw(st.sampled_from([b"", b" 1.2.3.4 x"])) + b"\r\n" + after
        ints = st.integers(0, 2**32 - 1) if kind == "TCP4" else st.integers(0, 2**128 - 1)
        make = ipaddress.IPv4Address if kind == "TCP4" else ipaddress.IPv6Address
        src, dst = str(make(draw(ints))), str(make(draw(ints)))
        sport, dport = draw(st.integers(0, 65535)), draw(st.integers(0, 65535))
        line = f"PROXY {kind} {src} {dst} {sport} {dport}\r\n"
        return line.encode() + after
    command = draw(st.sampled_from([0x20, 0x21]))
    family = draw(st.sampled_from([0x00, 0x11, 0x21, 0x31, 0x12]))
    size = {0x00: 0, 0x11: 12, 0x12: 12, 0x21: 36, 0x31: 216}[family]
    block = draw(st.binary(min_size=size, max_size=size))
    tlvs = b""
    for t, v in draw(st.lists(st.tuples(st.integers(0, 255), st.binary(max_size=20)), max_size=3)):
        tlvs += bytes([t]) + len(v).to_bytes(2, "big") + v
    payload = block + tlvs
    return _V2_SIG + bytes([command, family]) + len(payload).to_bytes(2, "big") + payload + after


@st.composite
def proxy_mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(proxy_valid()))
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["insert", "delete", "flip", "truncate", "byte"]))
        if kind == "insert":
            data[i:i] = draw(st.sampled_from([b" ", b"\r", b"\n", b"0", b":", b"\x00", b"\xff"]))
        elif kind in ("delete", "flip", "byte") and i < len(data):
            if kind == "delete":
                del data[i]
            elif kind == "flip":
                data[i] ^= 1 << draw(st.integers(0, 7))
            else:
                data[i] = draw(st.integers(0, 255))
        elif kind == "truncate":
            del data[i:]
    return bytes(data)


proxy_any = st.one_of(
    proxy_valid(),
    proxy_mutated(),
    proxy_mutated(),
    st.binary(max_size=120),
    st.binary(max_size=60).map(lambda b: _V2_SIG + b),
    st.binary(max_size=60).map(lambda b: b"PROXY " + b),
)


def _proxy_outcome(buf: bytes) -> tuple:
    try:
        header = proxyproto.parse_proxy_header(buf)
    except HttpError as exc:
        assert exc.status == HTTPStatus.BAD_REQUEST and exc.close, exc
        return ("error", exc.detail)
    if header is None:
        return ("need",)
    assert isinstance(header, proxyproto.ProxyHeader), header
    assert 0 < header.consumed <= len(buf), header
    assert header.consumed <= proxyproto.MAX_V2_BYTES, header
    return ("header", header)


def check_proxy_total(data: bytes) -> None:
    _proxy_outcome(data)


def check_proxy_split(data: bytes, cuts: list[int]) -> None:
    """Fed as a growing buffer (as a connection would), the first answer other than need-more
    is the answer for the whole input, and it never changes once given."""
    whole = _proxy_outcome(data)
    for end in [*cuts, len(data)]:
        got = _proxy_outcome(data[:end])
        if got != ("need",):
            assert got == whole, f"prefix {end} of {data!r}: {got} but whole {whole}"
            return
    assert whole == ("need",)


# Forwarded.

_FWD_PIECES = [
    b"for=",
    b"by=",
    b"proto=https",
    b"host=x",
    b'"',
    b"[",
    b"]",
    b":",
    b";",
    b",",
    b" ",
    b"\t",
    b"\\",
    b"unknown",
    b"_hidden",
    b"192.0.2.1",
    b"10.0.0.1",
    b"2001:db8::1",
    b"::ffff:10.0.0.2",
    b":8080",
    b"_port",
    b"for=10.0.0.9",
    b'for="[2001:db8::2]:443"',
]
forwarded_value = st.one_of(
    st.none(),
    st.binary(max_size=60),
    st.lists(st.sampled_from(_FWD_PIECES), max_size=20).map(b"".join),
)
peer_address = st.sampled_from(["10.0.0.1", "192.0.2.7", "::1", "2001:db8::5", "::ffff:10.0.0.3"])
TRUSTED = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("::1/128"))


def check_forwarded_total(peer: str, fwd: bytes | None, xff: bytes | None) -> None:
    got = forwarded.client_address(peer, TRUSTED, fwd, xff)
    assert isinstance(got, str), got
    ipaddress.ip_address(got)  # always an address, never a name, a port or garbage
    address = ipaddress.ip_address(peer)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # as a dual-stack socket reports an IPv4 client
    if not any(address in net for net in TRUSTED):
        assert got == peer, "the fields of an untrusted peer were believed"
