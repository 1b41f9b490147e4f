"""proxyproto.py: PROXY protocol v1 and v2 headers, valid and malformed, whole and byte by byte."""

from __future__ import annotations

import struct
from http import HTTPStatus

import pytest

from evloop_httpd.errors import HttpError
from evloop_httpd.proxyproto import (
    MAX_V2_BYTES,
    V1_MAX_BYTES,
    V2_SIGNATURE,
    ProxyHeader,
    parse_proxy_header,
)

HTTP = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"


def parse_all_ways(data: bytes) -> ProxyHeader:
    """Parse ``data`` whole and as a buffer growing byte by byte: every shorter prefix must ask
    for more, and the first complete one must give the same header."""
    header = parse_proxy_header(data)
    assert header is not None
    for n in range(header.consumed):
        assert parse_proxy_header(data[:n]) is None, n
    assert parse_proxy_header(data[: header.consumed]) == header
    assert parse_proxy_header(bytearray(data)) == header
    return header


def refused_all_ways(data: bytes) -> str:
    """The error for ``data``, raised for the whole input and first at the same prefix for
    a growing buffer; returns its detail."""
    with pytest.raises(HttpError) as whole:
        parse_proxy_header(data)
    assert whole.value.status == HTTPStatus.BAD_REQUEST and whole.value.close
    for n in range(1, len(data) + 1):
        try:
            got = parse_proxy_header(data[:n])
        except HttpError as exc:
            assert exc.detail == whole.value.detail, (n, exc.detail)
            break
        assert got is None, n
    return whole.value.detail


def v2(command: int, family: int, payload: bytes) -> bytes:
    head = V2_SIGNATURE + bytes([0x20 | command, family])
    return head + struct.pack("!H", len(payload)) + payload


# Version 1.


def test_v1_tcp4() -> None:
    data = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n" + HTTP
    h = parse_all_ways(data)
    assert h == ProxyHeader(
        1, "PROXY", "TCP4", ("192.168.0.1", 56324), ("192.168.0.11", 443), (), len(data) - len(HTTP)
    )
    assert data[h.consumed :] == HTTP


def test_v1_tcp6() -> None:
    data = b"PROXY TCP6 2001:db8::1 ::ffff:10.0.0.1 0 65535\r\n"
    h = parse_all_ways(data)
    assert (h.family, h.source, h.destination) == (
        "TCP6",
        ("2001:db8::1", 0),
        ("::ffff:10.0.0.1", 65535),  # the same text on every Python (3.13 changed str())
    )


def test_v1_longest_line_is_107_bytes() -> None:
    ip6 = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
    # The spec's worst case is UNKNOWN followed by the longest TCP6 fields.
    data = f"PROXY UNKNOWN {ip6} {ip6} 65535 65535\r\n".encode()
    assert len(data) == V1_MAX_BYTES
    assert parse_all_ways(data + HTTP).consumed == V1_MAX_BYTES
    tcp6 = f"PROXY TCP6 {ip6} {ip6} 65535 65535\r\n".encode()
    assert parse_all_ways(tcp6).source == (ip6, 65535)
    # One byte more and the CRLF falls outside the window.
    assert "first 107 bytes" in refused_all_ways(data[:-2] + b"x\r\n")


@pytest.mark.parametrize("line", [b"PROXY UNKNOWN\r\n", b"PROXY UNKNOWN ffff::1 ::1 1 2\r\n"])
def test_v1_unknown(line: bytes) -> None:
    h = parse_all_ways(line + HTTP)
    assert (h.family, h.source, h.destination, h.consumed) == ("UNKNOWN", None, None, len(line))


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"GET / HTTP/1.1\r\n", "does not start with a PROXY header"),
        (b"PROXZ TCP4", "bad v1 signature"),
        (b"proxy TCP4", "does not start with a PROXY header"),
        (b"PROXY\tTCP4", "bad v1 signature"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "bare LF"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\r\n", "port"),
        (b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n", "one space apart"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n", "one space apart"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "one space apart"),
        (b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", "family"),
        (b"PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n", "family"),
        (b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n", "family"),
        (b"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n", "plain IPv4"),
        (b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n", "plain IPv4"),
        (b"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n", "plain IPv4"),
        (b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n", "plain IPv4"),
        (b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n", "plain IPv6"),
        (b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n", "plain IPv6"),
        (b"PROXY TCP6 ::1 1::2::3 1 2\r\n", "plain IPv6"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", "port"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 080 2\r\n", "port"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n", "port"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 +2\r\n", "port"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 \xff\r\n", "port"),
        (b"PROXY UNKNOWN \rx\r\n", "CR"),
        (b"PROXY UNKNOWN\rx\r\n", "one space apart"),
        (b"PROXY " + b"x" * 200, "without CRLF in its first 107 bytes"),
        (b"PROXY TCP6 " + b"1" * 95 + b"\r\n", "without CRLF"),
    ],
)
def test_v1_malformed(data: bytes, words: str) -> None:
    assert words in refused_all_ways(data)


# Version 2.


def test_v2_proxy_tcp4_with_tlvs() -> None:
    block = bytes([192, 0, 2, 1, 10, 0, 0, 1]) + struct.pack("!HH", 56324, 443)
    tlvs = b"\x01\x00\x02h2" + b"\x04\x00\x00" + b"\x20\x00\x05\x01\x00\x00\x00\x00"
    data = v2(1, 0x11, block + tlvs) + HTTP
    h = parse_all_ways(data)
    assert h == ProxyHeader(
        2,
        "PROXY",
        "TCP4",
        ("192.0.2.1", 56324),
        ("10.0.0.1", 443),
        ((1, b"h2"), (4, b""), (0x20, b"\x01\x00\x00\x00\x00")),
        16 + len(block) + len(tlvs),
    )
    assert data[h.consumed :] == HTTP


def test_v2_proxy_tcp6() -> None:
    src = bytes.fromhex("20010db8000000000000000000000001")
    dst = bytes.fromhex("00000000000000000000ffff0a000001")
    h = parse_all_ways(v2(1, 0x21, src + dst + struct.pack("!HH", 1, 2)))
    assert (h.family, h.source, h.destination, h.tlvs) == (
        "TCP6",
        ("2001:db8::1", 1),
        ("::ffff:10.0.0.1", 2),
        (),
    )


def test_v2_proxy_unix() -> None:
    src = b"/run/client.sock".ljust(108, b"\x00")
    dst = b"\x00abstract".ljust(108, b"\x00")
    h = parse_all_ways(v2(1, 0x31, src + dst))
    assert (h.family, h.source, h.destination) == (
        "UNIX",
        (b"/run/client.sock", None),
        (b"\x00abstract", None),
    )


def test_v2_local_skips_whatever_block() -> None:
    for family, payload in [(0x00, b""), (0x11, b"\x00" * 12), (0x21, b"junk"), (0x31, b"")]:
        data = v2(0, family, payload) + HTTP
        h = parse_all_ways(data)
        assert (h.command, h.source, h.destination, h.consumed) == (
            "LOCAL",
            None,
            None,
            16 + len(payload),
        )


def test_v2_proxy_unspec_means_use_the_socket() -> None:
    h = parse_all_ways(v2(1, 0x00, b"ignored"))
    assert (h.command, h.family, h.source, h.consumed) == ("PROXY", "UNSPEC", None, 23)


def test_v2_length_cap_is_checked_before_buffering() -> None:
    data = v2(1, 0x11, b"\x00" * (MAX_V2_BYTES - 16 + 1))
    with pytest.raises(HttpError) as exc:
        parse_proxy_header(data[:16])  # the length alone is enough to refuse
    assert f"over {MAX_V2_BYTES} bytes" in exc.value.detail
    # Exactly at the cap: accepted (as an address block and one TLV filling the rest).
    rest = MAX_V2_BYTES - 16 - 12 - 3
    ok = v2(1, 0x11, b"\x01" * 12 + b"\xee" + struct.pack("!H", rest) + b"x" * rest)
    assert len(ok) == MAX_V2_BYTES
    assert parse_proxy_header(ok).consumed == MAX_V2_BYTES  # type: ignore[union-attr]
    with pytest.raises(HttpError):
        parse_proxy_header(ok, max_v2_bytes=MAX_V2_BYTES - 1)


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"\r\n\r\n\x00\r\nQUIT!", "bad v2 signature"),
        (b"\r\r", "bad v2 signature"),
        (V2_SIGNATURE + b"\x11\x11\x00\x0c", "version 1"),
        (V2_SIGNATURE + b"\x31\x11\x00\x0c", "version 3"),
        (V2_SIGNATURE + b"\x22\x11\x00\x0c", "neither LOCAL nor PROXY"),
        (V2_SIGNATURE + b"\x2f\x11\x00\x0c", "neither LOCAL nor PROXY"),
        (V2_SIGNATURE + b"\x21\x41\x00\x0c", "family is unknown"),
        (V2_SIGNATURE + b"\x21\x12\x00\x0c", "not STREAM"),
        (V2_SIGNATURE + b"\x21\x13\x00\x0c", "not STREAM"),
        (V2_SIGNATURE + b"\x21\x10\x00\x0c" + b"\x00" * 12, "unspecified transport"),
        (V2_SIGNATURE + b"\x21\x11\x00\x0b" + b"\x00" * 11, "shorter than 12"),
        (V2_SIGNATURE + b"\x21\x21\x00\x0c" + b"\x00" * 12, "shorter than 36"),
        (V2_SIGNATURE + b"\x21\x31\x00\x24" + b"\x00" * 36, "shorter than 216"),
        (V2_SIGNATURE + b"\x21\x11\x00\x0e" + b"\x00" * 12 + b"\x01\x00", "cut short"),
        (V2_SIGNATURE + b"\x21\x11\x00\x10" + b"\x00" * 12 + b"\x01\x00\x02x", "past the end"),
        (V2_SIGNATURE + b"\x21\x11\x00\x0f" + b"\x00" * 12 + b"\x01\xff\xff", "past the end"),
        (V2_SIGNATURE + b"\x21\x11\xff\xff", "over 4096 bytes"),
    ],
)
def test_v2_malformed(data: bytes, words: str) -> None:
    assert words in refused_all_ways(data + b"\x00" * 8)


def test_incomplete_headers_ask_for_more() -> None:
    assert parse_proxy_header(b"") is None
    assert parse_proxy_header(b"PROXY TCP4 1.2.3.4") is None
    assert parse_proxy_header(V2_SIGNATURE + b"\x21\x11\x00\x0c" + b"\x00" * 11) is None
