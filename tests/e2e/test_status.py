"""--status (issue 16): /status.json, /metrics and / served by the same loop, under a real load.

The counts must add up: what the status listener says was answered, by status class and in
bytes, is exactly what the clients received."""

from __future__ import annotations

import json
import threading
from collections import Counter
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from evloop_httpd import hasher, status_page

from ..helpers import Client, Reply, get, request, running, wait_until

CLIENTS = 6
ROUNDS = 20  # requests per client: a small, bounded load


@pytest.fixture
def site(tmp_path: Path) -> Path:
    root = tmp_path / "site"
    root.mkdir()
    (root / "small.txt").write_bytes(b"hello\n")
    (root / "big.bin").write_bytes(bytes(range(256)) * 800)  # 200 KiB
    return root


def status_json(port: int, replies: list[Reply] | None = None) -> dict[str, object]:
    reply = request(port, get("/status.json"))
    assert reply.status == 200, reply
    assert reply.header("Content-Type") == "application/json"
    if replies is not None:
        replies.append(reply)
    data = json.loads(reply.body)
    assert isinstance(data, dict)
    return data


def wire_size(reply: Reply) -> int:
    return len(reply.raw_head) + len(b"\r\n\r\n") + len(reply.body)


def one_client(port: int, n: int, got: list[Reply], lock: threading.Lock) -> None:
    # A keep-alive client mixing 200, 206, 404, 405 and 304 answers.
    paths = [
        get("/small.txt"),
        get("/big.bin"),
        get("/missing"),
        get("/big.bin", "Range: bytes=0-99\r\n"),
        get("/small.txt", method="DELETE"),
        get("/small.txt", "If-None-Match: *\r\n"),
    ]
    mine = []
    with Client(port, recv_size=65536) as c:
        for i in range(n):
            c.send(paths[(i + n) % len(paths)])
            mine.append(c.read_response())
    with lock:
        got.extend(mine)


def test_status_json_and_metrics_add_up_under_load(site: Path) -> None:
    with running(site, status=("127.0.0.1", 0)) as srv:
        got: list[Reply] = []
        lock = threading.Lock()
        threads = [
            threading.Thread(target=one_client, args=(srv.port, ROUNDS + i, got, lock))
            for i in range(CLIENTS)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not any(t.is_alive() for t in threads)
        assert len(got) == sum(ROUNDS + i for i in range(CLIENTS))
        classes = Counter(f"{r.status // 100}xx" for r in got)
        assert set(classes) >= {"2xx", "3xx", "4xx"}  # the load did mix them
        sent = sum(wire_size(r) for r in got)

        # The clients' connections close once they are done; wait for the server to see it
        # (every poll is on record: they are answered and counted like any request).
        polls: list[Reply] = []
        assert wait_until(
            lambda: status_json(srv.status_port, polls)["connections"]["open"] == 1  # type: ignore[index]
        )
        before = len(polls)
        snap = status_json(srv.status_port, polls)  # not counted in itself: not finished yet
        assert snap["requests"]["total"] == len(got) + before  # type: ignore[index]
        assert snap["requests"]["by_class"] == {  # type: ignore[index]
            "1xx": 0,
            "2xx": classes["2xx"] + before,
            "3xx": classes["3xx"],
            "4xx": classes["4xx"],
            "5xx": 0,
        }
        polled = sum(wire_size(r) for r in polls[:before])
        assert snap["bytes_served"] == sent + polled
        rows = snap["connections"]["rows"]  # type: ignore[index]
        assert "GET /status.json HTTP/1.1" in [r["request"] for r in rows]
        assert snap["loop"]["iterations"] > 0  # type: ignore[index]

        # /metrics: the same counts, in a text Prometheus' own parser reads.
        reply = request(srv.status_port, get("/metrics"))
        assert reply.status == 200
        assert reply.header("Content-Type") == "text/plain; version=0.0.4; charset=utf-8"
        families = {f.name: f for f in text_string_to_metric_families(reply.body.decode())}
        requests = {s.labels["class"]: s.value for s in families["evloop_httpd_requests"].samples}
        assert requests["2xx"] == classes["2xx"] + len(polls)
        assert requests["4xx"] == classes["4xx"] and requests["3xx"] == classes["3xx"]
        assert all(s.labels["worker"] == "0" for f in families.values() for s in f.samples)


def test_rows_show_open_connections_with_their_bytes_and_request(site: Path) -> None:
    (site / "huge.bin").write_bytes(bytes(range(256)) * 40_000)  # 10 MiB: outlasts the buffers
    with running(site, status=("127.0.0.1", 0)) as srv:
        idle = [Client(srv.port) for _ in range(3)]
        busy = Client(srv.port)
        try:
            for c in idle:
                c.send(get("/small.txt"))
                c.read_response()
            busy.send(get("/huge.bin"))  # and never read: the response stays in flight
            # 3 idle + 1 busy + the poll's own connection.
            assert wait_until(lambda: status_json(srv.status_port)["connections"]["open"] == 5)  # type: ignore[index]
            snap = status_json(srv.status_port)
            rows = snap["connections"]["rows"]  # type: ignore[index]
            ports = {c.sock.getsockname()[1] for c in idle}
            idle_rows = [r for r in rows if int(r["peer"].rsplit(":", 1)[1]) in ports]
            assert len(idle_rows) == 3
            for r in idle_rows:
                assert r["state"] == "READING_HEADERS" and r["request"] is None
                assert r["bytes_in"] == len(get("/small.txt"))
                assert r["bytes_out"] > 6 and r["waits_for"] == "read"
                assert r["age_s"] >= r["in_state_s"] >= 0
            # Busy before idle: the download and the poll come first.
            busy_port = busy.sock.getsockname()[1]
            (mine,) = [r for r in rows if int(r["peer"].rsplit(":", 1)[1]) == busy_port]
            assert rows.index(mine) < 2
            assert mine["state"] == "STREAMING_FILE" and mine["waits_for"] == "write"
            assert mine["request"] == "GET /huge.bin HTTP/1.1"
            sent, total = mine["progress"]["sent"], mine["progress"]["total"]
            assert 0 < sent < total  # of the whole response: its head, then the 10 MiB
            assert 10_240_000 < total < 10_240_000 + 1024
        finally:
            for c in [*idle, busy]:
                c.close()


def test_the_page_and_its_headers(site: Path) -> None:
    with running(site, status=("127.0.0.1", 0)) as srv:
        page = request(srv.status_port, get("/"))
        assert page.status == 200 and page.body == status_page.PAGE
        assert page.header("Content-Security-Policy") == status_page.CSP
        head = request(srv.status_port, get("/status.json", method="HEAD"), head_request=True)
        assert head.status == 200 and head.body == b""
        assert int(head.header("Content-Length") or 0) > 100
        assert request(srv.status_port, get("/small.txt")).status == 404  # not the file root
        refused = request(srv.status_port, get("/status.json", method="DELETE"))
        assert refused.status == 405 and refused.header("Allow") == "GET, HEAD"
        # ... and the file port does not serve the status pages.
        assert request(srv.port, get("/status.json")).status == 404


def cheap_hash(password: str) -> str:
    salt = b"0123456789abcdef"
    key = hasher._scrypt(password.encode(), salt, 4, 8, 1, 32)
    return f"$scrypt$ln=4,r=8,p=1${hasher._b64encode(salt)}${hasher._b64encode(key)}"


def test_an_account_is_needed_when_accounts_are_configured(site: Path, tmp_path: Path) -> None:
    accounts = tmp_path / "accounts"
    accounts.write_text(f"ann:{cheap_hash('pw')}\n")
    # The default scope asks only writes for an account; the status pages ask every request.
    with running(site, status=("127.0.0.1", 0), auth_file=accounts) as srv:
        assert request(srv.port, get("/small.txt")).status == 200
        denied = request(srv.status_port, get("/status.json"))
        assert denied.status == 401 and "Basic" in (denied.header("WWW-Authenticate") or "")
        wrong = request(srv.status_port, get("/metrics", "Authorization: Basic YW5uOm5v\r\n"))
        assert wrong.status == 401
        ok = request(srv.status_port, get("/status.json", "Authorization: Basic YW5uOnB3\r\n"))
        assert ok.status == 200 and json.loads(ok.body)["connections"]["open"] >= 1


def test_nothing_watches_an_unwatched_server(site: Path) -> None:
    # The promise of watch.py: off, the loop runs the plain classes and the logs directly,
    # so nothing of the status, trace or faults is on the hot path.
    from evloop_httpd.connection import Connection
    from evloop_httpd.faults import Faults
    from evloop_httpd.transport import Transport
    from evloop_httpd.watch import WatchedConnection, WatchedTransport, Watcher

    with running(site) as plain, Client(plain.port) as c:
        c.send(get("/small.txt"))
        c.read_response()
        (t,) = plain.server.transports()
        assert type(t) is Transport and type(t.conn) is Connection
        server = plain.server
        assert server.ctx.observer is server.logs and not server.ctx.trace
        assert server.tracer is server.stats is server.faults is server.status_share is None
    with running(site, status=("127.0.0.1", 0), faults=Faults(recv_cap=100)) as watched:
        with Client(watched.port) as c:
            c.send(get("/small.txt"))
            c.read_response()
            (t,) = watched.server.transports()
            assert type(t) is WatchedTransport and type(t.conn) is WatchedConnection
        assert isinstance(watched.server.ctx.observer, Watcher)
        assert watched.server.faults is None  # only the loop delay is the loop's to apply


def test_over_tls_the_status_listener_speaks_tls_too(site: Path, tmp_path: Path) -> None:
    # History: the status listener spoke plain HTTP next to an HTTPS port, so with accounts
    # its Basic credentials would have crossed the network in clear.
    import socket
    import ssl

    import trustme

    ca = trustme.CA()
    leaf = ca.issue_cert("localhost", "127.0.0.1")
    pem = tmp_path / "server.pem"
    leaf.private_key_and_cert_chain_pem.write_to_path(str(pem))
    context = ssl.create_default_context()
    ca.configure_trust(context)
    with running(site, status=("127.0.0.1", 0), tls_cert=pem) as srv:
        raw = socket.create_connection(("127.0.0.1", srv.status_port), timeout=10)
        c = Client.__new__(Client)
        c.sock = context.wrap_socket(raw, server_hostname="localhost")
        c.buf, c.recv_size = b"", 4096
        with c:
            c.send(get("/status.json"))
            reply = c.read_response()
        assert reply.status == 200 and json.loads(reply.body)["connections"]["open"] == 1
        plain = request(srv.status_port, get("/status.json"))
        assert plain.status == 400 and b"HTTPS only" in plain.body
