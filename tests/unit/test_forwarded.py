"""forwarded.py: the client address behind trusted proxies, from Forwarded or X-Forwarded-For."""

from __future__ import annotations

import ipaddress

import pytest

from evloop_httpd.forwarded import MAX_HOPS, client_address

TRUSTED = [ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("2001:db8:ffff::/48")]
PROXY = "10.0.0.1"


def pick(forwarded: bytes | None = None, xff: bytes | None = None, peer: str = PROXY) -> str:
    return client_address(peer, TRUSTED, forwarded, xff)


def test_untrusted_peer_is_the_client_whatever_it_says() -> None:
    assert pick(b"for=192.0.2.1", b"192.0.2.2", peer="198.51.100.7") == "198.51.100.7"
    assert pick(b"for=192.0.2.1", peer="2001:db8::7") == "2001:db8::7"


def test_trusted_peer_without_fields_is_the_client() -> None:
    assert pick() == PROXY


def test_unix_socket_peer_is_returned_as_is() -> None:
    assert client_address("/run/http.sock", TRUSTED, b"for=192.0.2.1", None) == "/run/http.sock"
    assert client_address("", TRUSTED, b"for=192.0.2.1", None) == ""


@pytest.mark.parametrize(
    ("value", "client"),
    [
        (b"for=192.0.2.43", "192.0.2.43"),
        (b'for="192.0.2.43:4711"', "192.0.2.43"),
        (b'for="[2001:db8:cafe::17]"', "2001:db8:cafe::17"),
        (b'for="[2001:db8:cafe::17]:4711"', "2001:db8:cafe::17"),
        (b'For="[2001:DB8:CAFE::17]:_port"', "2001:db8:cafe::17"),
        (b"for=192.0.2.60;proto=http;by=203.0.113.43", "192.0.2.60"),
        (b"proto=https;for=192.0.2.60", "192.0.2.60"),
        # Rightmost untrusted: the client cannot plant an address by sending its own field.
        (b"for=203.0.113.9, for=192.0.2.43", "192.0.2.43"),
        (b"for=192.0.2.43, for=10.1.2.3", "192.0.2.43"),
        (b"for=192.0.2.43,for=10.1.2.3 , for=10.9.9.9", "192.0.2.43"),
        (b'for=192.0.2.43, for="[2001:db8:ffff::1]:80"', "192.0.2.43"),
        # Every hop trusted: the leftmost.
        (b"for=10.2.2.2, for=10.1.1.1", "10.2.2.2"),
        # unknown, obfuscated and missing for= end the walk at the last known address.
        (b"for=192.0.2.43, for=unknown", PROXY),
        (b"for=192.0.2.43, for=_hidden", PROXY),
        (b'for=192.0.2.43, for="_hidden:_p"', PROXY),
        (b"for=192.0.2.43, for=10.1.1.1, for=UNKNOWN", PROXY),
        (b"for=192.0.2.43, for=_x, for=10.1.1.1", "10.1.1.1"),
        (b"for=192.0.2.43, proto=https", PROXY),
        # IPv4-mapped IPv6 is IPv4.
        (b'for="[::ffff:192.0.2.9]"', "192.0.2.9"),
        (b'for="[::ffff:10.0.0.5]", for=10.0.0.6', "10.0.0.5"),
        # Empty list elements are ignored; OWS around commas is allowed.
        (b" , for=192.0.2.43 ,, ", "192.0.2.43"),
        (b'for="192.0.2.43";host="a;b,c"', "192.0.2.43"),
        (b'for="\\192.0.2.43"', "192.0.2.43"),  # a quoted-pair
    ],
)
def test_forwarded(value: bytes, client: str) -> None:
    assert pick(value) == client


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b" ",
        b"for=",
        b"for",
        b"for=192.0.2.43 ;proto=http",  # no whitespace around ";" in RFC 7239
        b"for=192.0.2.43; proto=http",
        b"for = 192.0.2.43",
        b"for=192.0.2.43:80",  # ":" needs quoting
        b"for=[2001:db8::1]",  # so do the brackets
        b'for="2001:db8::1"',  # IPv6 must be bracketed
        b'for="[192.0.2.1]"',  # brackets are for IPv6 only
        b'for="[fe80::1%eth0]"',
        b'for="192.0.2.43:123456"',
        b'for="192.0.2.43:"',
        b"for=192.0.2.256",
        b"for=192.0.2.043",
        b"for=example.com",
        b"for=_",
        b'for="192.0.2.43',
        b"for=192.0.2.43;for=192.0.2.44",
        b"for=192.0.2.43;FOR=192.0.2.44",
        b"for=192.0.2.43, garbage",
        b"for=\xff",
        b",".join([b"for=192.0.2.1"] * (MAX_HOPS + 1)),
        b"for=192.0.2.1, " + b" " * 9000,
    ],
)
def test_malformed_forwarded_means_the_peer(value: bytes) -> None:
    assert pick(value, b"192.0.2.99") == PROXY


def test_forwarded_wins_over_x_forwarded_for() -> None:
    assert pick(b"for=192.0.2.1", b"192.0.2.2") == "192.0.2.1"


def test_hop_count_at_the_cap_is_walked() -> None:
    value = b",".join([b"for=192.0.2.1"] + [b"for=10.0.0.2"] * (MAX_HOPS - 1))
    assert pick(value) == "192.0.2.1"


@pytest.mark.parametrize(
    ("value", "client"),
    [
        (b"192.0.2.43", "192.0.2.43"),
        (b"203.0.113.9, 192.0.2.43", "192.0.2.43"),
        (b"192.0.2.43,10.1.1.1", "192.0.2.43"),
        (b"192.0.2.43 , 10.1.1.1 ,\t10.2.2.2", "192.0.2.43"),
        (b"10.3.3.3, 10.1.1.1", "10.3.3.3"),
        (b"2001:db8::1, 2001:db8:ffff::2", "2001:db8::1"),
        (b"::ffff:192.0.2.5", "192.0.2.5"),
        (b"192.0.2.43, unknown", PROXY),
        (b"192.0.2.43, unknown, 10.1.1.1", "10.1.1.1"),
    ],
)
def test_x_forwarded_for(value: bytes, client: str) -> None:
    assert pick(xff=value) == client


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"192.0.2.43,",
        b",192.0.2.43",
        b"192.0.2.43:80",
        b"[2001:db8::1]",
        b"192.0.2.43 10.0.0.1",
        b"_hidden",
        b"fe80::1%eth0",
        b"example.com",
        b"\xff",
        b",".join([b"192.0.2.1"] * (MAX_HOPS + 1)),
    ],
)
def test_malformed_x_forwarded_for_means_the_peer(value: bytes) -> None:
    assert pick(xff=value) == PROXY


def test_ipv4_mapped_peer_is_matched_against_ipv4_networks() -> None:
    assert pick(b"for=192.0.2.1", peer="::ffff:10.0.0.1") == "192.0.2.1"
    assert pick(b"for=192.0.2.1", peer="::ffff:192.0.2.200") == "::ffff:192.0.2.200"
