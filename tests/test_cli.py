"""The command line as a user runs it: ``python -m evloop_httpd`` in a subprocess."""

from __future__ import annotations

import csv
import os
import select
import signal
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

import evloop_httpd
from evloop_httpd.cli import program_name

from .helpers import DEADLINE_S, REPO, Client, get, read_serving_port, spawn_cli


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
    assert "stopping: no transfer in flight" in err
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
    _, err = proc.communicate(timeout=DEADLINE_S)
    assert proc.returncode == 0
    # History: Ctrl+C used to print nothing, leaving the user to guess why the server lingered.
    assert "stopping: waiting up to 60 s for 1 transfer(s) in flight" in err
    assert "a second Ctrl+C stops at once" in err


def test_trace_shows_transitions_with_interest(tmp_path: Path) -> None:
    proc = spawn_cli("-p", "0", "-d", str(tmp_path), "--trace")
    port = read_serving_port(proc)
    with Client(port) as c:
        c.send(get("/"))
        c.read_response()
    _, _, err = finish(proc)
    assert "READING_HEADERS --ERROR--> WRITING_HEADERS (wait for write, " in err
    assert "WRITING_HEADERS --RESPONSE_DONE--> READING_HEADERS (wait for read, " in err


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


# The first five minutes: what a new user types, and what they read when it goes wrong.


def usage_error(*args: str) -> str:
    """Run with ``args``, expect a usage error: exit status 2. Returns stderr."""
    proc = spawn_cli(*args)
    out, err = proc.communicate(timeout=DEADLINE_S)
    assert proc.returncode == 2, (out, err)
    assert out == ""
    return err


def test_a_usage_error_is_the_error_and_a_hint_not_the_usage_block(tmp_path: Path) -> None:
    # History: argparse printed its whole usage block (a screenful) above the line that mattered.
    err = usage_error("-p", "0", "-d", str(tmp_path), "--no-such-flag")
    assert err.splitlines() == [
        "python -m evloop_httpd: error: unrecognized arguments: --no-such-flag",
        "Try 'python -m evloop_httpd --help' for more.",
    ]
    err = usage_error("-p", "99999", "-d", str(tmp_path))
    assert len(err.splitlines()) == 2
    assert "port must be between 0 and 65535" in err


def test_the_program_names_itself_as_it_was_started(tmp_path: Path) -> None:
    # The console script pip writes runs main() with argv[0] set to the script's path.
    script = (
        "import sys; from evloop_httpd.cli import main;"
        " sys.argv[0] = '/some/venv/bin/evloop-httpd'; sys.exit(main())"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, "--bogus"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=DEADLINE_S,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "evloop-httpd: error: unrecognized arguments: --bogus",
        "Try 'evloop-httpd --help' for more.",
    ]


@pytest.mark.parametrize(
    ("argv0", "name"),
    [
        ("/usr/local/bin/evloop-httpd", "evloop-httpd"),
        ("/x/evloop_httpd/__main__.py", "python -m evloop_httpd"),
        ("", "python -m evloop_httpd"),
    ],
)
def test_program_name(monkeypatch: pytest.MonkeyPatch, argv0: str, name: str) -> None:
    monkeypatch.setattr(sys, "argv", [argv0])
    assert program_name() == name


def test_version_is_the_package_version() -> None:
    proc = spawn_cli("--version")
    out, _ = proc.communicate(timeout=DEADLINE_S)
    assert proc.returncode == 0
    assert out == f"python -m evloop_httpd {evloop_httpd.__version__}\n"
    # Written in one place: pyproject reads it from the package.
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "version" not in project["project"]
    assert "version" in project["project"]["dynamic"]
    attr = project["tool"]["setuptools"]["dynamic"]["version"]["attr"]
    assert attr == "evloop_httpd.__version__"


@pytest.mark.parametrize("before", [True, False], ids=["port-first", "options-first"])
def test_a_positional_port_as_http_server_takes_it(tmp_path: Path, before: bool) -> None:
    (tmp_path / "f.txt").write_bytes(b"positional\n")
    args = ["0", "--directory", str(tmp_path)]
    proc = spawn_cli(*(args if before else [*args[1:], args[0]]))
    port = read_serving_port(proc)
    with Client(port) as c:
        c.send(get("/f.txt"))
        assert c.read_response().body == b"positional\n"  # --directory named the root
    assert finish(proc)[0] == 0


def test_a_positional_port_is_checked_like_p(tmp_path: Path) -> None:
    assert "port must be" in usage_error("65536", "-d", str(tmp_path))


def test_the_port_given_twice_is_an_error(tmp_path: Path) -> None:
    err = usage_error("8000", "-p", "0", "-d", str(tmp_path))
    assert "the port is given twice (8000 and -p 0)" in err


@pytest.mark.parametrize("option", ["--stats-csv", "--response-log"])
def test_a_log_file_that_cannot_be_opened_is_named(tmp_path: Path, option: str) -> None:
    # History: this read "cannot listen on 127.0.0.1:0", sending users to look at the network.
    path = tmp_path / "missing-folder" / "log"
    err = usage_error("-p", "0", "-d", str(tmp_path), option, str(path))
    assert f"cannot open the {option} file {str(path)!r}: No such file or directory" in err
    assert "listen" not in err


# Root ignores permission bits through CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH; drop them.
_DROP_DAC = "-dac_override,-dac_read_search"
_AS_A_USER = ["setpriv", f"--bounding-set={_DROP_DAC}", f"--inh-caps={_DROP_DAC}"]


@pytest.mark.parametrize(
    ("mode", "why"),
    [(0o000, "cannot read it"), (0o300, "cannot read it"), (0o600, "cannot enter it")],
)
def test_a_root_the_server_cannot_read_or_enter_is_refused_at_start(
    tmp_path: Path, mode: int, why: str
) -> None:
    # History: the server started and answered 403 to every request.
    root = tmp_path / "www"
    root.mkdir()
    (root / "index.html").write_bytes(b"x")
    os.chmod(root, mode)
    try:
        wrapper = _AS_A_USER if os.getuid() == 0 else []
        proc = subprocess.run(
            [*wrapper, sys.executable, "-m", "evloop_httpd", "-p", "0", "-d", str(root)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=DEADLINE_S,
            check=False,
        )
    finally:
        os.chmod(root, 0o755)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""  # never started serving
    assert f"root {str(root)!r}: {why} (Permission denied)" in proc.stderr


def read_line_with(proc: subprocess.Popen[str], text: str) -> str:
    """The first line of the server's stderr, which must come before the deadline and hold text."""
    assert proc.stderr is not None
    ready, _, _ = select.select([proc.stderr], [], [], DEADLINE_S)
    assert ready, f"no line on stderr within {DEADLINE_S} s"
    line = proc.stderr.readline()
    assert text in line, line
    return line


def test_a_second_ctrl_c_stops_at_once(tmp_path: Path) -> None:
    (tmp_path / "big.bin").write_bytes(b"b" * (64 * 1024 * 1024))  # more than kernel buffers hold
    proc = spawn_cli("-p", "0", "-d", str(tmp_path), "-q", "--shutdown-timeout", "600")
    port = read_serving_port(proc)
    with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE_S) as sock:
        sock.sendall(get("/big.bin"))
        assert sock.recv(100).startswith(b"HTTP/1.1 200 OK")  # then reads no more: it stalls
        proc.send_signal(signal.SIGINT)
        read_line_with(proc, "stopping: waiting up to 600 s for 1 transfer(s) in flight")
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=DEADLINE_S)
    assert time.monotonic() - started < DEADLINE_S  # not the 600 s grace
    assert proc.returncode == 0
    assert "stopping now: transfers in flight are cut short" in err


def test_a_bare_trace_before_the_positional_port_is_the_text_trace(tmp_path: Path) -> None:
    # History: --trace grew an optional form (text|json) and then swallowed the port after it:
    # `python -m evloop_httpd --trace 8000` was a usage error.
    port = free_port_for_test()
    proc = spawn_cli("--trace", str(port), "-d", str(tmp_path))
    assert read_serving_port(proc) == port
    with Client(port) as c:
        c.send(get("/"))
        c.read_response()
    _, _, err = finish(proc)
    assert "READING_HEADERS --ERROR--> WRITING_HEADERS" in err


def free_port_for_test() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
