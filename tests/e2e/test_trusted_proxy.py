"""--trusted-proxy end to end: Forwarded and X-Forwarded-For from trusted and untrusted peers,
per request, in the CSV, the access log and the Gate's per-address lockout.

The test client is 127.0.0.1: trusted with ``--trusted-proxy 127.0.0.1/32``, untrusted with
``--trusted-proxy 10.0.0.0/8`` (then the headers must be ignored).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from pathlib import Path

import pytest

from evloop_httpd import auth

from ..helpers import Client, RunningServer, get, make_config, running
from .proxyhelp import csv_rows, v1
from .test_auth import PASSWORD, USER, basic, cheap_hash, put

BODY = b"forwarded\n"
LOOPBACK = (ipaddress.ip_network("127.0.0.1/32"),)
TEN = (ipaddress.ip_network("10.0.0.0/8"),)


@pytest.fixture
def site(tmp_path: Path) -> Path:
    root = tmp_path / "www"
    root.mkdir()
    (root / "f.txt").write_bytes(BODY)
    return root


@pytest.fixture
def stats(tmp_path: Path) -> Path:
    return tmp_path / "stats.csv"


def serve(site: Path, stats: Path, **overrides: object) -> RunningServer:
    return RunningServer(make_config(site, stats_csv=stats, quiet=False, **overrides))


@pytest.fixture
def trusting(site: Path, stats: Path) -> Iterator[RunningServer]:
    srv = serve(site, stats, trusted_proxies=LOOPBACK + TEN)
    try:
        yield srv
    finally:
        srv.stop()


CASES = {
    "forwarded": ("Forwarded: for=198.51.100.9\r\n", "198.51.100.9"),
    "forwarded-v6-port": ('Forwarded: for="[2001:db8::9]:4711";proto=https\r\n', "2001:db8::9"),
    "forwarded-chain": ("Forwarded: for=203.0.113.5, for=198.51.100.9\r\n", "198.51.100.9"),
    "forwarded-trusted-hop": ("Forwarded: for=203.0.113.5, for=10.1.2.3\r\n", "203.0.113.5"),
    "xff": ("X-Forwarded-For: 203.0.113.5, 198.51.100.9\r\n", "198.51.100.9"),
    "xff-trusted-hop": ("X-Forwarded-For: 203.0.113.5, 10.1.2.3\r\n", "203.0.113.5"),
    # RFC 9110 §5.3: several field lines are one list, in order.
    "xff-two-lines": (
        "X-Forwarded-For: 203.0.113.5\r\nX-Forwarded-For: 10.1.2.3\r\n",
        "203.0.113.5",
    ),
    "forwarded-two-lines": (
        "Forwarded: for=203.0.113.6\r\nForwarded: for=10.9.9.9\r\n",
        "203.0.113.6",
    ),
    "forwarded-wins": (
        "X-Forwarded-For: 198.51.100.1\r\nForwarded: for=198.51.100.2\r\n",
        "198.51.100.2",
    ),
    # A hop hiding its address ends the walk at the last known one: the trusted peer.
    "forwarded-unknown": ("Forwarded: for=unknown\r\n", "127.0.0.1"),
    # Malformed (a port in X-Forwarded-For): nothing in it is believed.
    "xff-malformed": ("X-Forwarded-For: 198.51.100.1:80\r\n", "127.0.0.1"),
}


@pytest.mark.parametrize("extra,client", CASES.values(), ids=CASES.keys())
def test_a_trusted_peer_names_the_client(
    trusting: RunningServer, stats: Path, extra: str, client: str
) -> None:
    with Client(trusting.port) as c:
        c.send(get("/f.txt", extra))
        assert c.read_response().body == BODY
        port = c.sock.getsockname()[1]
    [row] = csv_rows(stats, 1)
    # A forwarded client's port is unknown (0); the peer's own keeps its socket port.
    expected_port = str(port) if client == "127.0.0.1" else "0"
    assert (row["client_ip"], row["client_port"]) == (client, expected_port)


def test_the_client_is_decided_per_request(trusting: RunningServer, stats: Path) -> None:
    """One balancer connection carries requests of several clients, and some of its own."""
    with Client(trusting.port) as c:
        for extra in (
            "X-Forwarded-For: 198.51.100.1\r\n",
            "X-Forwarded-For: 198.51.100.2\r\n",
            "",
            "Forwarded: for=198.51.100.3\r\n",
        ):
            c.send(get("/f.txt", extra))
            assert c.read_response().body == BODY
        c.send(b"GET /f.txt HTTP/1.1\r\nHost: t\r\nBad Header: x\r\n\r\n")  # refused: 400
        assert c.read_response().status == 400
    rows = csv_rows(stats, 5)
    assert [r["client_ip"] for r in rows] == [
        "198.51.100.1",
        "198.51.100.2",
        "127.0.0.1",
        "198.51.100.3",
        # History: a head that did not parse was logged against the previous request's
        # forwarded client; it has no Forwarded, so it is the connection's own address.
        "127.0.0.1",
    ]
    log = trusting.stderr.getvalue()
    for client in ("198.51.100.1", "198.51.100.2", "198.51.100.3"):
        assert f"\n{client} - - [" in "\n" + log


@pytest.mark.parametrize("extra", [e for e, _ in CASES.values()], ids=CASES.keys())
def test_an_untrusted_peer_is_not_believed(site: Path, stats: Path, extra: str) -> None:
    srv = serve(site, stats, trusted_proxies=TEN)  # 127.0.0.1 is not in it
    try:
        with Client(srv.port) as c:
            c.send(get("/f.txt", extra))
            assert c.read_response().body == BODY
            port = c.sock.getsockname()[1]
    finally:
        srv.stop()
    [row] = csv_rows(stats, 1)
    assert (row["client_ip"], row["client_port"]) == ("127.0.0.1", str(port))


def test_without_trusted_proxies_the_headers_are_ignored(site: Path, stats: Path) -> None:
    srv = serve(site, stats)
    try:
        with Client(srv.port) as c:
            c.send(get("/f.txt", "Forwarded: for=198.51.100.9\r\nX-Forwarded-For: 1.2.3.4\r\n"))
            assert c.read_response().body == BODY
    finally:
        srv.stop()
    [row] = csv_rows(stats, 1)
    assert row["client_ip"] == "127.0.0.1"


# With the PROXY protocol: the header's client is the peer whose trust is judged.


@pytest.mark.parametrize(
    "proxied,client",
    [("10.20.30.40", "198.51.100.77"), ("203.0.113.40", "203.0.113.40")],
    ids=["trusted-balancer-behind-proxy", "untrusted-client-via-balancer"],
)
def test_proxy_protocol_then_forwarded(site: Path, stats: Path, proxied: str, client: str) -> None:
    srv = serve(site, stats, trusted_proxies=TEN, proxy_protocol=True)
    try:
        with Client(srv.port) as c:
            c.send(v1("TCP4", proxied, "192.0.2.1", 5555, 80))
            c.send(get("/f.txt", "X-Forwarded-For: 198.51.100.77\r\n"))
            assert c.read_response().body == BODY
    finally:
        srv.stop()
    [row] = csv_rows(stats, 1)
    assert row["client_ip"] == client


# The Gate counts failures per forwarded client


@pytest.fixture
def accounts(site: Path) -> Path:
    path = site.parent / "accounts"
    path.write_text(f"{USER}:{cheap_hash(PASSWORD)}\n")
    return path


def test_the_lockout_is_per_forwarded_client(
    site: Path, accounts: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(auth, "CHECKS_PER_S", 1000.0)  # the global budget is not under test
    guesser = "X-Forwarded-For: 198.51.100.66\r\n"
    other = "X-Forwarded-For: 198.51.100.67\r\n"
    with running(site, auth_file=accounts, trusted_proxies=LOOPBACK) as srv:
        with Client(srv.port) as c:  # one balancer connection carries the guesser's requests
            for _ in range(auth.MAX_FAILURES):
                c.send(put("/a", b"", guesser + basic(USER, "guess")))
                assert c.read_response().status == 401
            c.send(put("/a", b"x", guesser + basic(USER, PASSWORD)))
            assert c.read_response().status == 429  # locked out, even with the right password
        assert not (site / "a").exists()
        with Client(srv.port) as c:
            c.send(put("/b", b"y", other + basic(USER, PASSWORD)))
            assert c.read_response().status in (200, 201, 204)
            c.send(put("/c", b"z", basic(USER, PASSWORD)))  # the balancer's own address, too
            assert c.read_response().status in (200, 201, 204)
            c.send(put("/a", b"x", guesser + basic(USER, PASSWORD)))
            assert c.read_response().status == 429  # and the guesser is still locked out
        assert (site / "b").read_bytes() == b"y" and (site / "c").read_bytes() == b"z"
