"""--proxy-protocol end to end: a PROXY v1 or v2 header before the first request (and before
the TLS handshake), the client it names in the logs, and the connections it refuses.

Each test talks raw sockets to a server on 127.0.0.1:0. The logged client comes from the
stats CSV (``client_ip``, ``client_port``) and the access log.
"""

from __future__ import annotations

import select
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from evloop_httpd.connection import Connection
from evloop_httpd.states import ConnState

from ..helpers import DEADLINE_S, Client, RunningServer, connect, get, make_config, wait_until
from .proxyhelp import csv_rows, silent_close, v1, v2

BODY = b"hello from behind the balancer\n"


@pytest.fixture
def site(tmp_path: Path) -> Path:
    root = tmp_path / "www"
    root.mkdir()
    (root / "hello.txt").write_bytes(BODY)
    return root


@pytest.fixture
def stats(tmp_path: Path) -> Path:
    return tmp_path / "stats.csv"


@pytest.fixture
def proxied(site: Path, stats: Path) -> Iterator[RunningServer]:
    srv = RunningServer(
        make_config(
            site, proxy_protocol=True, stats_csv=stats, quiet=False, timeouts={"head_s": 2.0}
        )
    )
    try:
        yield srv
    finally:
        srv.stop()


def connection_of(srv: RunningServer, count: int = 1) -> Connection:
    """The server's only open connection (waits for the accept)."""
    assert wait_until(lambda: len(srv.server.transports()) == count)
    return srv.server.transports()[-1].conn


# The client each header names


@pytest.mark.parametrize(
    "header,client",
    [
        (v1("TCP4", "203.0.113.7", "192.0.2.1", 56324, 443), ("203.0.113.7", "56324")),
        (v1("TCP6", "2001:db8::7", "2001:db8::1", 4242, 443), ("2001:db8::7", "4242")),
        (v2(1, 1, "198.51.100.23", "192.0.2.1", 61000, 80), ("198.51.100.23", "61000")),
        (v2(1, 2, "2001:db8:1::23", "2001:db8::1", 1, 80), ("2001:db8:1::23", "1")),
        # A TLV (here an authority, type 0x02) is skipped over.
        (v2(1, 1, "198.51.100.24", "192.0.2.1", 2, 80, b"\x02\x00\x03a.b"), ("198.51.100.24", "2")),
    ],
    ids=["v1-tcp4", "v1-tcp6", "v2-ipv4", "v2-ipv6", "v2-tlv"],
)
def test_the_proxied_client_is_the_one_logged(
    proxied: RunningServer, stats: Path, header: bytes, client: tuple[str, str]
) -> None:
    with Client(proxied.port) as c:
        c.send(header + get("/hello.txt"))
        reply = c.read_response()
        assert reply.status == 200 and reply.body == BODY
        c.send(get("/hello.txt"))  # the header came once; the second request is plain HTTP
        assert c.read_response().body == BODY
    rows = csv_rows(stats, 2)
    assert [(r["client_ip"], r["client_port"]) for r in rows] == [client, client]
    assert wait_until(lambda: f"{client[0]} - - [" in proxied.stderr.getvalue())


@pytest.mark.parametrize(
    "header",
    [
        b"PROXY UNKNOWN\r\n",
        b"PROXY UNKNOWN ffff::1 ::1 1 2\r\n",
        v2(0, 1, "203.0.113.9", "1.2.3.4"),
    ],
    ids=["v1-unknown", "v1-unknown-with-addresses", "v2-local"],
)
def test_local_and_unknown_keep_the_sockets_address(
    proxied: RunningServer, stats: Path, header: bytes
) -> None:
    with Client(proxied.port) as c:
        c.send(header + get("/hello.txt"))
        assert c.read_response().body == BODY
        port = c.sock.getsockname()[1]
    [row] = csv_rows(stats, 1)
    assert (row["client_ip"], row["client_port"]) == ("127.0.0.1", str(port))


# Malformed headers: closed without a word, and nobody else is held up


_V2 = v2(1, 1, "1.2.3.4", "5.6.7.8")
MALFORMED = {
    "plain-http": get("/hello.txt"),
    "lower-case": b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
    "two-spaces": b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n",
    "leading-zero-port": b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
    "port-too-big": b"PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n",
    "v6-in-tcp4": b"PROXY TCP4 ::1 ::1 1 2\r\n",
    "bad-family": b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
    "bare-lf": b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
    "no-crlf-in-107": b"PROXY UNKNOWN " + b"x" * 120,
    "v2-version-1": v2(1, 1, "1.2.3.4", "5.6.7.8")[:12]
    + b"\x11"
    + v2(1, 1, "1.2.3.4", "5.6.7.8")[13:],
    "v2-command-2": v2(1, 1, "1.2.3.4", "5.6.7.8")[:12]
    + b"\x22"
    + v2(1, 1, "1.2.3.4", "5.6.7.8")[13:],
    "v2-over-4k": v2(1, 1, "1.2.3.4", "5.6.7.8")[:14] + b"\x10\x01",
    "v2-short-block": v2(1, 1, "1.2.3.4", "5.6.7.8")[:14] + b"\x00\x04" + b"\x01\x02\x03\x04",
    "v2-tlv-cut": v2(1, 1, "1.2.3.4", "5.6.7.8", tlvs=b"\x02\x00\x09ab"),
    "v2-bad-signature": b"\r\n\r\n\x00\r\nQUIT!" + b"\x21\x11\x00\x0c" + bytes(12),
    "tls-without-header": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
}


@pytest.mark.parametrize("junk", MALFORMED.values(), ids=MALFORMED.keys())
def test_a_malformed_header_closes_without_a_response_while_others_are_served(
    proxied: RunningServer, stats: Path, junk: bytes
) -> None:
    good_header = v1("TCP4", "203.0.113.50", "192.0.2.1", 5000, 80)
    with Client(proxied.port) as good:
        good.send(good_header[:9])  # a well-behaved client midway through its header
        with connect(proxied.port) as bad:
            bad.sendall(junk + get("/hello.txt"))
            assert silent_close(bad) == b""
        good.send(good_header[9:] + get("/hello.txt"))
        assert good.read_response().body == BODY
    [row] = csv_rows(stats, 1)  # the refused connection logged no request
    assert row["client_ip"] == "203.0.113.50"


# How the header arrives


def test_a_header_trickled_byte_by_byte(proxied: RunningServer, stats: Path) -> None:
    header = v1("TCP4", "203.0.113.8", "192.0.2.1", 40000, 80)
    with Client(proxied.port) as c:
        conn = connection_of(proxied)
        for i in range(len(header) - 1):
            c.send(header[i : i + 1])
            # Each byte is taken on its own (nothing beyond the header is ever read).
            assert wait_until(lambda i=i: len(conn.inbuf) == i + 1), (i, bytes(conn.inbuf))
            assert conn.state is ConnState.PROXY_HEADER
        c.send(header[-1:])
        assert wait_until(lambda: conn.state is ConnState.READING_HEADERS)
        for b in get("/hello.txt"):
            c.send(bytes([b]))
        assert c.read_response().body == BODY
    [row] = csv_rows(stats, 1)
    assert (row["client_ip"], row["client_port"]) == ("203.0.113.8", "40000")


def test_a_v2_header_trickled_byte_by_byte(proxied: RunningServer, stats: Path) -> None:
    header = v2(1, 2, "2001:db8::99", "2001:db8::1", 7, 80, b"\x04\x00\x02hi")
    with Client(proxied.port) as c:
        conn = connection_of(proxied)
        for i in range(len(header)):
            c.send(header[i : i + 1])
            if i + 1 < len(header):
                assert wait_until(lambda i=i: len(conn.inbuf) == i + 1)
        c.send(get("/hello.txt"))
        assert c.read_response().body == BODY
    [row] = csv_rows(stats, 1)
    assert (row["client_ip"], row["client_port"]) == ("2001:db8::99", "7")


@pytest.mark.parametrize("split", [0, 5, 20], ids=["header-then-request", "5", "20"])
def test_header_and_request_in_different_segments(
    proxied: RunningServer, stats: Path, split: int
) -> None:
    """The header alone, then the request; or the header cut and the request riding on its
    second piece (``split`` bytes of the header first)."""
    header = v1("TCP4", "203.0.113.9", "192.0.2.1", 1234, 80)
    with Client(proxied.port) as c:
        conn = connection_of(proxied)
        if split == 0:
            c.send(header)
            assert wait_until(lambda: conn.state is ConnState.READING_HEADERS)
            assert not conn.inbuf
            c.send(get("/hello.txt"))
        else:
            c.send(header[:split])
            assert wait_until(lambda: len(conn.inbuf) == split)
            c.send(header[split:] + get("/hello.txt")[:7])
            assert wait_until(lambda: conn.state is ConnState.READING_HEADERS)
            c.send(get("/hello.txt")[7:])
        assert c.read_response().body == BODY
    [row] = csv_rows(stats, 1)
    assert row["client_ip"] == "203.0.113.9"


def test_pipelined_requests_behind_the_header_are_all_served(
    proxied: RunningServer, stats: Path
) -> None:
    with Client(proxied.port) as c:
        c.send(v2(1, 1, "198.51.100.3", "192.0.2.1", 9, 80) + get("/hello.txt") * 3)
        for _ in range(3):
            assert c.read_response().body == BODY
    rows = csv_rows(stats, 3)
    assert {r["client_ip"] for r in rows} == {"198.51.100.3"}


# Deadlines


def test_a_connection_that_sends_nothing_is_closed_at_the_head_timeout(
    site: Path, stats: Path
) -> None:
    config = make_config(site, proxy_protocol=True, stats_csv=stats, timeouts={"head_s": 0.3})
    srv = RunningServer(config)
    try:
        with connect(srv.port) as idle:
            assert silent_close(idle) == b""
        with Client(srv.port) as c:  # and the server goes on
            c.send(v1("TCP4", "203.0.113.1", "192.0.2.1", 1, 2) + get("/hello.txt"))
            assert c.read_response().body == BODY
    finally:
        srv.stop()


def test_a_trickled_header_gets_no_more_time_than_the_head_timeout(site: Path, stats: Path) -> None:
    """Each byte moves the deadline nowhere: it runs from the accept.

    History: a deadline reset per byte (as for an HTTP head's first byte) would let a client
    hold a connection forever, 106 bytes at a time."""
    head_s = 0.5
    config = make_config(site, proxy_protocol=True, stats_csv=stats, timeouts={"head_s": head_s})
    srv = RunningServer(config)
    try:
        header = v1("TCP4", "203.0.113.77", "192.0.2.100", 50000, 8080)
        with connect(srv.port) as sock:
            started = time.monotonic()
            closed = False
            for i in range(len(header) - 1):
                try:
                    sock.sendall(header[i : i + 1])
                except OSError:
                    closed = True
                    break
                # Pace the trickle (not a synchronisation): a byte per 50 ms is well inside
                # any per-byte deadline, and the whole header takes 2.3 s, 4.6 x head_s.
                readable, _, _ = select.select([sock], [], [], 0.05)
                if readable:
                    closed = True
                    break
            assert closed, "the trickled header outlived the head timeout"
            assert silent_close(sock) == b""
            assert time.monotonic() - started < len(header) * 0.05
    finally:
        srv.stop()


# TLS after the header


@pytest.fixture
def tls_proxied(tmp_path: Path, site: Path, stats: Path) -> Iterator[tuple[RunningServer, Path]]:
    ca = trustme.CA()
    leaf = ca.issue_cert("localhost", "127.0.0.1")
    cert, key, ca_file = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(ca_file))
    srv = RunningServer(
        make_config(site, proxy_protocol=True, stats_csv=stats, tls_cert=cert, tls_key=key)
    )
    try:
        yield srv, ca_file
    finally:
        srv.stop()


def _https_get(sock: ssl.SSLSocket) -> bytes:
    sock.sendall(get("/hello.txt", "Connection: close\r\n"))
    out = b""
    while chunk := sock.recv(65536):
        out += chunk
    return out


def test_header_then_tls_handshake(tls_proxied: tuple[RunningServer, Path], stats: Path) -> None:
    srv, ca_file = tls_proxied
    ctx = ssl.create_default_context(cafile=str(ca_file))
    raw = connect(srv.port)
    raw.sendall(v1("TCP6", "2001:db8::5", "2001:db8::1", 443, 443))
    with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
        out = _https_get(tls)
    assert out.startswith(b"HTTP/1.1 200 ") and out.endswith(BODY)
    [row] = csv_rows(stats, 1)
    assert (row["client_ip"], row["client_port"]) == ("2001:db8::5", "443")


def test_header_and_client_hello_in_one_segment(
    tls_proxied: tuple[RunningServer, Path], stats: Path
) -> None:
    """The ClientHello right behind the header, in the same send: the server must take the
    header's bytes and not one more, or OpenSSL would see a cut ClientHello."""
    srv, ca_file = tls_proxied
    ctx = ssl.create_default_context(cafile=str(ca_file))
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    hello = outgoing.read()
    with connect(srv.port) as sock:
        sock.sendall(v2(1, 1, "198.51.100.44", "192.0.2.1", 444, 443) + hello)
        deadline = time.monotonic() + DEADLINE_S
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                pass
            if outgoing.pending:
                sock.sendall(outgoing.read())
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            data = sock.recv(65536)
            assert data, "closed during the handshake"
            incoming.write(data)
        tls.write(get("/hello.txt", "Connection: close\r\n"))
        sock.sendall(outgoing.read())
        out = b""
        while True:
            try:
                chunk = tls.read(65536)
                if not chunk:
                    break
                out += chunk
                continue
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLZeroReturnError:
                break
            data = sock.recv(65536)
            if not data:
                break
            incoming.write(data)
    assert out.startswith(b"HTTP/1.1 200 ") and out.endswith(BODY)
    [row] = csv_rows(stats, 1)
    assert (row["client_ip"], row["client_port"]) == ("198.51.100.44", "444")


def test_a_tls_client_without_the_header_is_refused(
    tls_proxied: tuple[RunningServer, Path],
) -> None:
    srv, ca_file = tls_proxied
    ctx = ssl.create_default_context(cafile=str(ca_file))
    raw = connect(srv.port)
    with (
        pytest.raises((ssl.SSLError, OSError)),
        ctx.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        _https_get(tls)
    raw.close()


# The command line


def test_trace_shows_the_proxy_header_state(site: Path) -> None:
    srv = RunningServer(make_config(site, proxy_protocol=True, trace=True, quiet=False))
    try:
        with Client(srv.port) as c:
            c.send(v1("TCP4", "203.0.113.61", "192.0.2.1", 6161, 80) + get("/hello.txt"))
            assert c.read_response().body == BODY
    finally:
        srv.stop()
    err = srv.stderr.getvalue()
    assert "PROXY_HEADER --PROXY_DONE--> READING_HEADERS" in err
    assert "PROXY v1 PROXY TCP4: client 203.0.113.61:6161" in err


def test_the_socket_family_of_the_listener_does_not_matter(site: Path, stats: Path) -> None:
    """An IPv6 listener (a dual-stack balancer address) takes a TCP4 header all the same."""
    srv = RunningServer(make_config(site, host="::1", proxy_protocol=True, stats_csv=stats))
    try:
        with socket.create_connection(("::1", srv.port), timeout=DEADLINE_S) as sock:
            sock.sendall(v1("TCP4", "203.0.113.62", "192.0.2.1", 62, 80) + get("/hello.txt"))
            sock.sendall(get("/hello.txt", "Connection: close\r\n"))
            data = silent_close(sock)
        assert data.count(BODY) == 2
    finally:
        srv.stop()
    rows = csv_rows(stats, 2)
    assert {r["client_ip"] for r in rows} == {"203.0.113.62"}


# A graceful stop (a reload with --workers) fails no request that is on its way


@pytest.mark.parametrize("sent_before_stop", [0, 10], ids=["nothing-yet", "part-of-header"])
def test_a_stop_serves_a_connection_accepted_just_before_it(
    proxied: RunningServer, stats: Path, sent_before_stop: int
) -> None:
    # History: a stopping server dropped connections still in PROXY_HEADER, so a request
    # whose header had not arrived when a reload began got an empty reply.
    header = v1("TCP4", "203.0.113.90", "192.0.2.1", 9090, 80)
    with Client(proxied.port, recv_size=4096) as c:
        conn = connection_of(proxied)
        c.send(header[:sent_before_stop])
        assert wait_until(lambda: len(conn.inbuf) == sent_before_stop)
        proxied.server.request_stop()
        assert wait_until(lambda: proxied.server.ctx.stopping)
        c.send(header[sent_before_stop:] + get("/hello.txt"))
        reply = c.read_response()
        assert reply.status == 200 and reply.body == BODY
        assert reply.header("Connection") == "close"
        assert c.closed_by_peer()
    [row] = csv_rows(stats, 1)
    assert row["client_ip"] == "203.0.113.90"
