"""The connection's PROXY_HEADER state and its per-request client, driven by inputs only.

The socket is played by a bytes buffer: the connection is shown a peek of it
(:meth:`Connection.proxy_bytes`) and the bytes it says are the header's are taken off, as the
transport does. Whatever the split, exactly the header is taken and the rest is left.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from evloop_httpd import connection as connection_module
from evloop_httpd.connection import Connection, Context
from evloop_httpd.proxyproto import MAX_V2_BYTES
from evloop_httpd.states import READ, ConnState, Input

from ..helpers import make_config
from .test_connection import Recorder as _Recorder
from .test_connection import flush_out

S = ConnState
REQUEST = b"GET /a.txt HTTP/1.1\r\nHost: x\r\n\r\n"
V1 = b"PROXY TCP4 203.0.113.7 192.0.2.1 56324 443\r\n"
V2 = (
    b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c"
    + bytes([198, 51, 100, 1, 192, 0, 2, 1])
    + (1234).to_bytes(2, "big")
    + (80).to_bytes(2, "big")
)


class Recorder(_Recorder):
    def __init__(self) -> None:
        super().__init__()
        self.said: list[str] = []

    def debug(self, text: str) -> None:
        self.said.append(text)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "a.txt").write_bytes(b"alpha\n")
    return tmp_path


def make(root: Path, scheme: bytes = b"http", **overrides: object) -> tuple[Connection, Recorder]:
    rec = Recorder()
    ctx = Context(make_config(root, trace=True, **overrides), rec, scheme)
    conn = Connection(ctx, 0.0, ("127.0.0.1", 5000), handshake=scheme == b"https", proxy=True)
    return conn, rec


def play(conn: Connection, arrivals: list[bytes]) -> bytes:
    """Bytes arrive in ``arrivals`` pieces; after each, the transport peeks and takes what the
    connection says. Returns what is left in the 'kernel' once the header is done."""
    kernel = b""
    for piece in arrivals:
        kernel += piece
        if conn.state is not S.PROXY_HEADER or not kernel:
            continue  # nothing to read: the selector would not report the socket
        take = conn.proxy_bytes(kernel[:MAX_V2_BYTES], 0.0)
        assert 0 <= take <= len(kernel)
        kernel = kernel[take:]
    return kernel


@pytest.mark.parametrize(
    "header,client", [(V1, ("203.0.113.7", 56324)), (V2, ("198.51.100.1", 1234))]
)
def test_every_split_takes_exactly_the_header(
    root: Path, header: bytes, client: tuple[str, int]
) -> None:
    wire = header + REQUEST
    for cut in range(1, len(wire)):
        for cut2 in (cut, min(len(wire), cut + 1), len(wire)):
            conn, rec = make(root)
            left = play(conn, [wire[:cut], wire[cut:cut2], wire[cut2:]])
            assert conn.state is S.READING_HEADERS, cut
            assert left == REQUEST, cut
            assert conn.peer == conn.origin == client
            assert not conn.inbuf
            assert rec.transitions == [(S.PROXY_HEADER, Input.PROXY_DONE, S.READING_HEADERS)]
            assert rec.said == [
                f"#0 PROXY v{(header[:1] == b'P' and 1) or 2} PROXY TCP4: client"
                f" {client[0]}:{client[1]}"
            ]


def test_then_http_as_usual(root: Path) -> None:
    conn, _ = make(root)
    left = play(conn, [V1 + REQUEST])
    conn.receive(left, 0.0)
    assert flush_out(conn).endswith(b"\r\n\r\nalpha\n")


def test_over_tls_the_handshake_follows_with_its_own_deadline(root: Path) -> None:
    conn, rec = make(root, b"https", timeouts={"handshake_s": 3.0, "head_s": 7.0})
    assert conn.state is S.PROXY_HEADER and conn.deadline == 7.0 and conn.interest == READ
    assert not conn.handshaken
    assert conn.proxy_bytes(V2 + b"\x16\x03\x01", 1.0) == len(V2)
    assert conn.state is S.HANDSHAKING and conn.deadline == 4.0
    assert rec.transitions == [(S.PROXY_HEADER, Input.PROXY_DONE_TLS, S.HANDSHAKING)]


@pytest.mark.parametrize(
    "junk", [b"GET / HTTP/1.1\r\n", b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", b"\x16\x03\x01"]
)
def test_a_malformed_header_closes_without_a_response(root: Path, junk: bytes) -> None:
    conn, rec = make(root)
    assert conn.proxy_bytes(junk, 0.0) == 0
    assert conn.state is S.CLOSED and not conn.cut_short
    assert conn.to_send() == b"" and rec.heads == [] and rec.done == []
    assert rec.transitions == [(S.PROXY_HEADER, Input.PROXY_REFUSED, S.CLOSED)]
    assert rec.said and "PROXY protocol" in rec.said[0]


def test_the_deadline_runs_from_the_accept_however_it_trickles(root: Path) -> None:
    conn, rec = make(root, timeouts={"head_s": 2.0})
    for i, byte in enumerate(V1[:-1]):
        assert conn.proxy_bytes(bytes([byte]), 0.1 * i) == 1
        assert conn.deadline == 2.0
    conn.on_timeout(2.0)
    assert conn.state is S.CLOSED and rec.heads == []


def test_end_of_stream_in_the_header(root: Path) -> None:
    conn, rec = make(root)
    conn.proxy_bytes(V1[:10], 0.0)
    assert conn.proxy_bytes(b"", 0.0) == 0
    assert rec.transitions[-1] == (S.PROXY_HEADER, Input.PEER_EOF, S.CLOSED)


@pytest.mark.parametrize(
    "header",
    [b"PROXY UNKNOWN\r\n", V2[:12] + b"\x20" + V2[13:], V2[:13] + b"\x00" + V2[14:]],
    ids=["v1-unknown", "v2-local", "v2-unspec"],
)
def test_no_client_in_the_header_keeps_the_sockets(root: Path, header: bytes) -> None:
    conn, _ = make(root)
    play(conn, [header])
    assert conn.state is S.READING_HEADERS and conn.peer == ("127.0.0.1", 5000)


def test_the_inbuf_is_bounded_by_the_parser(root: Path) -> None:
    conn, _ = make(root)
    # The largest v2 header taken (4096 bytes: zero-length TLVs of type 0 tile its 4068
    # bytes after the address block), trickled in 1000-byte pieces with more behind it.
    head = V2[:14] + (MAX_V2_BYTES - 16).to_bytes(2, "big")
    left = play(conn, [head] + [b"\x00" * 1000] * 5)
    assert conn.state is S.READING_HEADERS
    assert len(left) == 16 + 5000 - MAX_V2_BYTES  # nothing past the header's end was taken
    conn, _ = make(root)
    play(conn, [V2[:14] + (MAX_V2_BYTES - 15).to_bytes(2, "big")])
    assert conn.state is S.CLOSED  # over the cap: refused as soon as the length is in


# The per-request client behind a trusted proxy


def test_forwarded_client_per_request(root: Path) -> None:
    conn, _ = make(root, trusted_proxies=(ipaddress.ip_network("203.0.113.0/24"),))
    play(conn, [V1])
    assert conn.origin == ("203.0.113.7", 56324)
    for extra, client in (
        (b"X-Forwarded-For: 198.51.100.9\r\n", ("198.51.100.9", 0)),
        (b"", ("203.0.113.7", 56324)),
        (b"Forwarded: for=203.0.113.1\r\n", ("203.0.113.1", 0)),  # trusted, the last hop
    ):
        conn.receive(b"GET /a.txt HTTP/1.1\r\nHost: x\r\n" + extra + b"\r\n", 0.0)
        assert conn.peer == client
        flush_out(conn)
    assert conn.state is S.READING_HEADERS


def test_the_clients_cache_is_bounded(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(connection_module, "CLIENTS_CACHED", 8)
    conn, _ = make(root, trusted_proxies=(ipaddress.ip_network("203.0.113.0/24"),))
    play(conn, [V1])
    for i in range(20):
        conn.receive(b"GET /a.txt HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 10.0.0.%d\r\n\r\n" % i, 0)
        assert conn.peer == (f"10.0.0.{i}", 0)
        assert len(conn.ctx.clients) <= 8
        flush_out(conn)
    long = b", ".join([b"203.0.113.5"] * 60)  # all trusted: the leftmost is the client
    conn.receive(b"GET /a.txt HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: " + long + b"\r\n\r\n", 0)
    assert conn.peer == ("203.0.113.5", 0)
    assert all(len(key[2] or b"") < len(long) for key in conn.ctx.clients)
