"""The command line as a user runs it: ``python -m evloop_httpd`` in a subprocess."""

from __future__ import annotations

import csv
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from .helpers import DEADLINE_S, Client, get, read_serving_port, spawn_cli


def finish(proc: subprocess.Popen[str], sig: int = signal.SIGINT) -> tuple[int, str, str]:
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=DEADLINE_S)
    return proc.returncode, out, err


@pytest.mark.parametrize("port", ["abc", "80.5", "-1", "65536", "99999999"])
def test_bad_port_exits_2_with_a_message(tmp_path: Path, port: str) -> None:
    proc = spawn_cli("-p", port, "-d", str(tmp_path))
    _out, err = proc.communicate(timeout=DEADLINE_S)
    assert proc.returncode == 2
    assert "port" in err


def test_root_must_be_a_directory(tmp_path: Path) -> None:
    proc = spawn_cli("-p", "0", "-d", str(tmp_path / "missing"))
    _, err = proc.communicate(timeout=DEADLINE_S)
    assert proc.returncode == 2
    assert "not an existing directory" in err


def test_bad_size_exits_2(tmp_path: Path) -> None:
    proc = spawn_cli("-p", "0", "-d", str(tmp_path), "--max-upload", "ten")
    proc.communicate(timeout=DEADLINE_S)
    assert proc.returncode == 2


def test_privileged_port_warns(tmp_path: Path) -> None:
    # Root may bind it, a user may not: either way the warning comes first.
    proc = spawn_cli("-p", "1023", "-d", str(tmp_path))
    assert proc.stderr is not None
    first = proc.stderr.readline()
    assert "warning: port 1023 is privileged" in first
    proc.kill()
    proc.communicate(timeout=DEADLINE_S)


def test_port_0_serves_and_sigint_stops_cleanly_with_logs(tmp_path: Path) -> None:
    root = tmp_path / "www"
    root.mkdir()
    (root / "index.html").write_bytes(b"hi\n")
    stats, heads = tmp_path / "stats.csv", tmp_path / "heads.log"
    proc = spawn_cli(
        "-p", "0", "-d", str(root), "--stats-csv", str(stats), "--response-log", str(heads)
    )
    port = read_serving_port(proc)
    assert port > 0
    with Client(port) as c:
        c.send(get("/"))
        assert c.read_response().body == b"hi\n"
        c.send(get("/missing"))
        assert c.read_response().status == 404
    code, _out, err = finish(proc, signal.SIGINT)
    assert code == 0
    assert '"GET / HTTP/1.1" 200' in err  # the access log, in Common Log Format
    rows = list(csv.reader(stats.open()))
    assert rows[0] == [
        "server_ip", "server_port", "client_ip", "client_port", "method", "url", "status",
        "bytes_sent", "time", "user", "path",
    ]  # fmt: skip
    assert rows[1][:2] == ["127.0.0.1", str(port)]
    assert rows[1][2] == "127.0.0.1"
    assert rows[1][4:7] == ["GET", "/", "200"]
    assert rows[2][4:7] == ["GET", "/missing", "404"]
    assert int(rows[1][7]) > 3
    text = heads.read_text()
    assert "HTTP/1.1 200 OK\nDate: " in text
    assert "HTTP/1.1 404 Not Found\n" in text


def test_sigterm_stops_with_status_0_and_quiet_mode(tmp_path: Path) -> None:
    proc = spawn_cli("-p", "0", "-d", str(tmp_path), "-q")
    port = read_serving_port(proc)
    with Client(port) as c:
        c.send(get("/"))
        assert c.read_response().status == 404
    code, _, err = finish(proc, signal.SIGTERM)
    assert code == 0
    assert "GET" not in err


def test_sigint_lets_an_in_flight_download_finish(tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(bytes(range(256)) * (256 * 1024))  # 64 MiB: more than kernel buffers hold
    # A generous grace period: this machine is shared, and the point is that the response
    # completes rather than how fast.
    proc = spawn_cli("-p", "0", "-d", str(tmp_path), "-q", "--shutdown-timeout", "60")
    port = read_serving_port(proc)
    sock = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE_S)
    sock.sendall(get("/big.bin"))
    got = bytearray(sock.recv(65536))
    assert got.startswith(b"HTTP/1.1 200 OK")
    proc.send_signal(signal.SIGINT)
    while chunk := sock.recv(1 << 20):
        got += chunk
    sock.close()
    body = bytes(got.split(b"\r\n\r\n", 1)[1])
    assert body == big.read_bytes()
    proc.communicate(timeout=DEADLINE_S)
    assert proc.returncode == 0


def test_trace_shows_transitions_with_interest(tmp_path: Path) -> None:
    proc = spawn_cli("-p", "0", "-d", str(tmp_path), "--trace")
    port = read_serving_port(proc)
    with Client(port) as c:
        c.send(get("/"))
        c.read_response()
    _, _, err = finish(proc)
    assert "READING_HEADERS --ERROR--> WRITING_HEADERS (wait for write)" in err
    assert "WRITING_HEADERS --RESPONSE_DONE--> READING_HEADERS (wait for read)" in err


def test_ipv6_bind(tmp_path: Path) -> None:
    try:
        socket.socket(socket.AF_INET6).close()
        probe = socket.socket(socket.AF_INET6)
        probe.bind(("::1", 0))
        probe.close()
    except OSError:
        pytest.fail("this machine has no IPv6 loopback; the test needs one")
    proc = spawn_cli("-p", "0", "-d", str(tmp_path), "-b", "::1")
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert "http://[::1]:" in line
    port = int(line.rsplit(":", 1)[1].strip("/\n"))
    with socket.create_connection(("::1", port), timeout=DEADLINE_S) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: [::1]\r\nConnection: close\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 404 ")
    assert finish(proc)[0] == 0


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.parametrize("flag", [[], ["--no-sendfile"]], ids=["sendfile", "read-send"])
def test_memory_does_not_grow_with_file_size(tmp_path: Path, flag: list[str]) -> None:
    with open(tmp_path / "huge.bin", "wb") as f:
        f.truncate(256 * 1024 * 1024)
    (tmp_path / "small.bin").write_bytes(b"s" * 1024)
    proc = spawn_cli("-p", "0", "-d", str(tmp_path), "-q", *flag)
    port = read_serving_port(proc)
    with Client(port, recv_size=1 << 20) as c:
        c.send(get("/small.bin"))
        c.read_response()
        before = rss_kib(proc.pid)
        c.send(get("/huge.bin"))
        total = 0
        head = b""
        while b"\r\n\r\n" not in head:
            head += c.sock.recv(65536)
        total = len(head.split(b"\r\n\r\n", 1)[1])
        while total < 256 * 1024 * 1024:
            chunk = c.sock.recv(1 << 20)
            assert chunk, "connection closed early"
            total += len(chunk)
        after = rss_kib(proc.pid)
    finish(proc)
    # 256 MiB went out; the server grew by at most a few buffers.
    assert after - before < 8 * 1024, (before, after)


def test_a_stalled_log_reader_never_stalls_the_server(tmp_path: Path) -> None:
    (tmp_path / "f.txt").write_bytes(b"x")
    proc = spawn_cli("-p", "0", "-d", str(tmp_path))  # stderr is a pipe we do not read yet
    port = read_serving_port(proc)
    batch = get("/f.txt") * 100
    with Client(port, recv_size=65536) as c:
        # 3,000 access-log lines, about 240 KiB: far more than a pipe buffer (64 KiB) holds.
        for _ in range(30):
            c.send(batch)
            for _ in range(100):
                assert c.read_response().body == b"x"
    code, _, err = finish(proc)
    assert code == 0
    assert '"GET /f.txt HTTP/1.1" 200' in err


def test_every_timeout_flag_reaches_the_config(tmp_path: Path) -> None:
    from evloop_httpd.cli import build_parser, config_from

    parser = build_parser()
    flags = {
        "--head-timeout": "head_s",
        "--idle-timeout": "idle_s",
        "--stall-timeout": "stall_s",
        "--linger-timeout": "linger_s",
        "--shutdown-timeout": "shutdown_s",
    }
    argv = ["-d", str(tmp_path)]
    for i, flag in enumerate(flags):
        argv += [flag, str(1.5 + i)]
    timeouts = config_from(parser.parse_args(argv), parser).timeouts
    assert [getattr(timeouts, field) for field in flags.values()] == [1.5, 2.5, 3.5, 4.5, 5.5]
