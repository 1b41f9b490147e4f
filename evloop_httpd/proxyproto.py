"""Sans-IO parsing of the HAProxy PROXY protocol header, versions 1 and 2, at a connection's start.

Theory of operation
-------------------
A load balancer that speaks the PROXY protocol sends one header before the client's bytes,
saying who the client is. :func:`parse_proxy_header` takes the bytes received so far and
returns ``None`` (need more), a :class:`ProxyHeader` with ``consumed``, the length of the
header (the caller drops that many bytes and parses HTTP from there), or raises
:class:`HttpError` (400, close): a listener configured for the protocol accepts nothing else,
since a connection without the header could claim any address by sending one later.

The version is fixed by the first byte: ``P`` starts v1 (text), CR starts v2 (binary). Both are
bounded before anything is buffered: a v1 line has at most 107 bytes, CRLF included (the
spec's limit); a v2 header has 16 bytes plus the length it announces, and an announced length
over :data:`MAX_V2_BYTES` is refused as soon as the 16 bytes are in, not after buffering it.

**Split invariance.** Every check is a function of a fixed prefix, made in byte order as soon
as its bytes are in: the signature byte by byte, then (v2) the version and command, the
family, the length, and last the address block and TLVs; (v1) the line up to its LF or its
107th byte. So a growing buffer gives ``None`` until the first byte that makes the answer
certain, and then the same answer (header or error) as the whole input would.

Strictness, where the spec allows it: v1 fields are separated by exactly one space, addresses
are in the family's plain textual form (IPv4 dotted quad without leading zeros, IPv6 without a
zone), ports are 0-65535 without leading zeros; v2 must be version 2 with command LOCAL or
PROXY, a known family and STREAM (or UNSPEC), an address block long enough for its family,
and TLVs that tile the rest exactly. TLVs are returned as ``(type, value)`` without being
interpreted; nothing in them is trusted here.

``LOCAL`` (v2) and ``UNKNOWN`` / ``UNSPEC`` mean "no client address here: use the socket's",
shown as ``source is None``. For ``AF_UNIX`` the addresses are paths, returned as bytes, and
there are no ports.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from http import HTTPStatus

from .errors import HttpError

V1_PREFIX = b"PROXY "
V1_MAX_BYTES = 107  # the spec's worst case: "PROXY TCP6 " + 2 x 39 + 2 x 5 + 4 spaces + CRLF
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_HEADER_BYTES = 16
# The spec allows 16 + 65535. TLVs seen in practice (ALPN, authority, SSL details, AWS and
# Azure ids) take a few hundred bytes; 4 KiB leaves room for a client certificate's CN and
# keeps what a peer can make us buffer before the first HTTP byte small.
MAX_V2_BYTES = 4096

_V2_ADDRESS_BYTES = {0x1: 12, 0x2: 36, 0x3: 216}  # AF_INET, AF_INET6, AF_UNIX
_V2_FAMILY = {0x0: "UNSPEC", 0x1: "TCP4", 0x2: "TCP6", 0x3: "UNIX"}
_PORT = re.compile(rb"0|[1-9][0-9]{0,4}")
_IPV4 = re.compile(rb"[0-9]{1,3}(?:\.[0-9]{1,3}){3}")
_IPV6 = re.compile(rb"[0-9A-Fa-f:.]{2,39}")


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """What the proxy said. ``source``/``destination`` are ``(address, port)``, or for
    ``UNIX`` ``(path, None)``; both are ``None`` when the socket's own addresses apply
    (v2 ``LOCAL``, v1 ``UNKNOWN``, v2 ``UNSPEC``)."""

    version: int  # 1 or 2
    command: str  # "PROXY" or "LOCAL" (v1 is always "PROXY")
    family: str  # "TCP4", "TCP6", "UNIX", "UNKNOWN" (v1) or "UNSPEC" (v2)
    source: tuple[str | bytes, int | None] | None
    destination: tuple[str | bytes, int | None] | None
    tlvs: tuple[tuple[int, bytes], ...]
    consumed: int  # bytes of the input that the header took


def _refuse(detail: str) -> HttpError:
    return HttpError(HTTPStatus.BAD_REQUEST, f"PROXY protocol: {detail}", close=True)


def parse_proxy_header(
    buf: bytes | bytearray, max_v2_bytes: int = MAX_V2_BYTES
) -> ProxyHeader | None:
    """Parse the PROXY header at the start of ``buf``: the header, ``None`` for need-more, or
    raise :class:`HttpError` (400, close)."""
    if not buf:
        return None
    if buf[0] == V1_PREFIX[0]:
        return _parse_v1(bytes(buf[:V1_MAX_BYTES]))
    if buf[0] == V2_SIGNATURE[0]:
        return _parse_v2(buf, max_v2_bytes)
    raise _refuse("the connection does not start with a PROXY header")


def _check_signature(head: bytes, signature: bytes, what: str) -> bool:
    """Whether all of ``signature`` is in; raise as soon as a byte of it is wrong."""
    n = min(len(head), len(signature))
    if head[:n] != signature[:n]:
        raise _refuse(f"bad {what} signature")
    return n == len(signature)


# Version 1: "PROXY" SP family SP src SP dst SP sport SP dport CRLF, or "PROXY UNKNOWN ..." CRLF.


def _parse_v1(head: bytes) -> ProxyHeader | None:
    if not _check_signature(head, V1_PREFIX, "v1"):
        return None
    lf = head.find(b"\n")
    if lf < 0:
        if len(head) >= V1_MAX_BYTES:
            raise _refuse(f"v1 header without CRLF in its first {V1_MAX_BYTES} bytes")
        return None
    if head[lf - 1] != 13:
        raise _refuse("v1 header ends in a bare LF")
    line = head[len(V1_PREFIX) : lf - 1]
    consumed = lf + 1
    if line == b"UNKNOWN" or line.startswith(b"UNKNOWN "):
        # The spec: the receiver must ignore whatever follows UNKNOWN up to the CRLF.
        if b"\r" in line:
            raise _refuse("v1 header with a CR before its end")
        return ProxyHeader(1, "PROXY", "UNKNOWN", None, None, (), consumed)
    fields = line.split(b" ")
    if len(fields) != 5:
        raise _refuse("v1 header needs a family, two addresses and two ports, one space apart")
    family, src, dst, sport, dport = fields
    if family == b"TCP4":
        source, destination = _v1_ip(src, _IPV4, 4), _v1_ip(dst, _IPV4, 4)
    elif family == b"TCP6":
        source, destination = _v1_ip(src, _IPV6, 6), _v1_ip(dst, _IPV6, 6)
    else:
        raise _refuse("v1 family is not TCP4, TCP6 or UNKNOWN")
    return ProxyHeader(
        1,
        "PROXY",
        family.decode(),
        (source, _v1_port(sport)),
        (destination, _v1_port(dport)),
        (),
        consumed,
    )


def _v1_ip(text: bytes, shape: re.Pattern[bytes], version: int) -> str:
    if not shape.fullmatch(text):
        raise _refuse(f"v1 address is not a plain IPv{version} address")
    try:
        address = ipaddress.ip_address(text.decode("ascii"))
    except ValueError:
        raise _refuse(f"v1 address is not a plain IPv{version} address") from None
    if address.version != version:
        raise _refuse(f"v1 address is not a plain IPv{version} address")
    return _text(address)


def _text(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """An address as logs show it, the same on every Python: an IPv4-mapped IPv6 address keeps
    its dotted quad (``::ffff:10.0.0.1``; before 3.13, ``str`` gave ``::ffff:a00:1``)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return f"::ffff:{address.ipv4_mapped}"
    return str(address)


def _v1_port(text: bytes) -> int:
    if not _PORT.fullmatch(text) or int(text) > 65535:
        raise _refuse("v1 port is not a number from 0 to 65535 without leading zeros")
    return int(text)


# Version 2: signature, ver_cmd, fam, len (big-endian), address block, TLVs.


def _parse_v2(buf: bytes | bytearray, max_v2_bytes: int) -> ProxyHeader | None:
    if not _check_signature(bytes(buf[:12]), V2_SIGNATURE, "v2"):
        return None
    if len(buf) < 13:
        return None
    version, command = buf[12] >> 4, buf[12] & 0xF
    if version != 2:
        raise _refuse(f"v2 header with version {version}")
    if command not in (0x0, 0x1):
        raise _refuse("v2 command is neither LOCAL nor PROXY")
    if len(buf) < 14:
        return None
    family, transport = buf[13] >> 4, buf[13] & 0xF
    if family not in _V2_FAMILY:
        raise _refuse("v2 address family is unknown")
    if transport not in (0x0, 0x1):
        raise _refuse("v2 transport is not STREAM")  # DGRAM: this server speaks TCP only
    if len(buf) < V2_HEADER_BYTES:
        return None
    length = int.from_bytes(buf[14:16], "big")
    total = V2_HEADER_BYTES + length
    if total > max_v2_bytes:
        raise _refuse(f"v2 header over {max_v2_bytes} bytes")
    if len(buf) < total:
        return None
    payload = bytes(buf[V2_HEADER_BYTES:total])
    # LOCAL: health checks from the proxy itself; the block, whatever it holds, is skipped.
    if command == 0x0:
        return ProxyHeader(2, "LOCAL", _V2_FAMILY[family], None, None, (), total)
    if family == 0x0:
        # PROXY over an unspecified family: the spec says to use the socket's addresses.
        return ProxyHeader(2, "PROXY", "UNSPEC", None, None, (), total)
    if transport != 0x1:
        raise _refuse("v2 PROXY command with an unspecified transport")
    size = _V2_ADDRESS_BYTES[family]
    if length < size:
        raise _refuse(f"v2 address block shorter than {size} bytes")
    block, tlvs = payload[:size], _tlvs(payload[size:])
    if family == 0x1:
        source: tuple[str | bytes, int | None] = (
            str(ipaddress.IPv4Address(block[0:4])),
            int.from_bytes(block[8:10], "big"),
        )
        destination: tuple[str | bytes, int | None] = (
            str(ipaddress.IPv4Address(block[4:8])),
            int.from_bytes(block[10:12], "big"),
        )
    elif family == 0x2:
        source = (_text(ipaddress.IPv6Address(block[0:16])), int.from_bytes(block[32:34], "big"))
        destination = (
            _text(ipaddress.IPv6Address(block[16:32])),
            int.from_bytes(block[34:36], "big"),
        )
    else:
        # AF_UNIX: two 108-byte sun_path fields, NUL-padded (an abstract path starts with NUL).
        source = (_unix_path(block[:108]), None)
        destination = (_unix_path(block[108:216]), None)
    return ProxyHeader(2, "PROXY", _V2_FAMILY[family], source, destination, tlvs, total)


def _unix_path(raw: bytes) -> bytes:
    if raw[:1] == b"\x00":
        return raw.rstrip(b"\x00")  # abstract namespace: the leading NUL is part of the name
    return raw.split(b"\x00", 1)[0]


def _tlvs(data: bytes) -> tuple[tuple[int, bytes], ...]:
    """Split the TLVs (type, 2-byte big-endian length, value); they must tile ``data``."""
    found = []
    at = 0
    while at < len(data):
        if len(data) - at < 3:
            raise _refuse("v2 TLV cut short")
        size = int.from_bytes(data[at + 1 : at + 3], "big")
        if at + 3 + size > len(data):
            raise _refuse("v2 TLV runs past the end of the header")
        found.append((data[at], data[at + 3 : at + 3 + size]))
        at += 3 + size
    return tuple(found)
