"""The command line of the proxy options: --trusted-proxy validation, --proxy-protocol with
workers and with sockets passed by socket activation (every listener expects the header)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..helpers import DEADLINE_S, spawn_cli, wait_until
from ..workerhelp import WorkerServer
from .proxyhelp import csv_rows, silent_close, v1, v2
from .test_activation import faked, listening


@pytest.mark.parametrize(
    "value", ["10.0.0.0/33", "10.0.0.1/8", "example.com", "", "::1/129", "1.2.3.4/ 8"]
)
def test_a_bad_trusted_proxy_exits_2_with_a_message(tmp_path: Path, value: str) -> None:
    proc = spawn_cli("-p", "0", "-d", str(tmp_path), "--trusted-proxy", value)
    _, err = proc.communicate(timeout=DEADLINE_S)
    assert proc.returncode == 2, err
    assert "--trusted-proxy" in err and "not a network or address" in err


@pytest.fixture
def root(tmp_path: Path) -> Path:
    www = tmp_path / "www"
    www.mkdir()
    (www / "a.txt").write_bytes(b"behind a balancer\n")
    return www


@pytest.fixture
def servers() -> Iterator[list[WorkerServer]]:
    started: list[WorkerServer] = []
    yield started
    for srv in started:
        srv.kill_all()


def _get_via(port: int, header: bytes, forwarded_for: str = "") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE_S) as s:
        extra = f"X-Forwarded-For: {forwarded_for}\r\n" if forwarded_for else ""
        s.sendall(
            header + f"GET /a.txt HTTP/1.1\r\nHost: t\r\n{extra}Connection: close\r\n\r\n".encode()
        )
        return silent_close(s)


@pytest.mark.parametrize("workers", [1, 2])
def test_cli_options_reach_every_worker(
    tmp_path: Path, root: Path, servers: list[WorkerServer], workers: int
) -> None:
    stats = tmp_path / "stats.csv"
    srv = WorkerServer(
        tmp_path,
        *("-d", str(root), "-p", "0", "--workers", str(workers)),
        *("--proxy-protocol", "--trusted-proxy", "10.0.0.0/8", "--trusted-proxy", "fd00::/8"),
        *("--stats-csv", str(stats)),
        err_pipe=True,  # then wait_serving waits for the listener, with 1 worker or 2
    )
    servers.append(srv)
    port = srv.wait_serving()
    got = _get_via(port, v1("TCP4", "10.1.1.1", "10.0.0.2", 1000, 80), "198.51.100.5")
    assert got.startswith(b"HTTP/1.1 200 ") and got.endswith(b"behind a balancer\n")
    got = _get_via(port, v2(1, 2, "fd00::7", "fd00::1", 1001, 80), "198.51.100.6")
    assert got.endswith(b"behind a balancer\n")
    assert _get_via(port, b"", "198.51.100.7") == b""  # no header: closed, not answered
    rows = csv_rows(stats, 2)
    assert sorted(r["client_ip"] for r in rows) == ["198.51.100.5", "198.51.100.6"]


def test_socket_activation_listeners_expect_the_header(
    tmp_path: Path, root: Path, servers: list[WorkerServer]
) -> None:
    socks = listening(2)
    ports = [s.getsockname()[1] for s in socks]
    stats = tmp_path / "stats.csv"
    args = ["-d", str(root), "-q", "--proxy-protocol", "--stats-csv", str(stats)]
    srv = faked(tmp_path, socks, "web:alt", args)
    for s in socks:
        s.close()  # the server holds them now
    servers.append(srv)
    assert wait_until(lambda: "Serving " in srv.out() or srv.proc.poll() is not None)
    assert srv.proc.poll() is None, srv.err()
    for i, port in enumerate(ports):
        got = _get_via(port, v1("TCP4", f"203.0.113.{i + 1}", "192.0.2.1", 9, 80))
        assert got.endswith(b"behind a balancer\n"), got
        assert _get_via(port, b"") == b""
    rows = csv_rows(stats, 2)
    assert sorted(r["client_ip"] for r in rows) == ["203.0.113.1", "203.0.113.2"]
