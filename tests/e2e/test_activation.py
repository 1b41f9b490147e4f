"""systemd socket activation: the variables parsed alone, then real and faked launches."""

from __future__ import annotations

import shutil
import signal
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from evloop_httpd.activation import ActivationError, parse_environment

from ..helpers import DEADLINE_S, wait_until
from ..workerhelp import WorkerServer, fetch

TOOL = shutil.which("systemd-socket-activate")


def test_variables_for_another_process_or_absent_are_not_ours() -> None:
    assert parse_environment({}, 42) == []
    assert parse_environment({"LISTEN_PID": "41", "LISTEN_FDS": "1"}, 42) == []
    assert parse_environment({"LISTEN_PID": "x", "LISTEN_FDS": "1"}, 42) == []


def test_variables_for_us_give_descriptors_from_3_with_names() -> None:
    env = {"LISTEN_PID": "42", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "web:alt"}
    assert parse_environment(env, 42) == [(3, "web"), (4, "alt")]
    assert parse_environment({"LISTEN_PID": "42", "LISTEN_FDS": "1"}, 42) == [(3, "unknown")]


@pytest.mark.parametrize(
    "env",
    [
        {"LISTEN_FDS": "0"},
        {"LISTEN_FDS": ""},
        {"LISTEN_FDS": "-1"},
        {"LISTEN_FDS": "100000"},
        {"LISTEN_FDS": "2", "LISTEN_FDNAMES": "only-one"},
    ],
)
def test_malformed_variables_for_us_are_an_error(env: dict[str, str]) -> None:
    with pytest.raises(ActivationError):
        parse_environment({"LISTEN_PID": "42", **env}, 42)


def free_port() -> int:
    """A port free right now (the tool needs a fixed one; the race with others is accepted)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(count: int) -> list[socket.socket]:
    socks = []
    for _ in range(count):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen()
        socks.append(s)
    return socks


_FAKE_MANAGER = """
import fcntl, os, sys
fds, names, args = [int(x) for x in sys.argv[1].split(",")], sys.argv[2], sys.argv[3:]
high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 100) for fd in fds]  # out of the way of 3, 4, ...
for i, fd in enumerate(high):
    os.dup2(fd, 3 + i)
for fd in {*fds, *high} - set(range(3, 3 + len(fds))):
    os.close(fd)
os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS=str(len(fds)))
if names:
    os.environ["LISTEN_FDNAMES"] = names
os.execv(sys.executable, [sys.executable, "-m", "evloop_httpd", *args])
"""


def faked(
    tmp: Path, socks: list[socket.socket], names: str | None, server_args: list[str]
) -> WorkerServer:
    """What the manager does: descriptors 3, 4, ... and LISTEN_PID naming the process that
    ``exec`` then turns into the server (exec keeps the pid)."""
    fds = ",".join(str(s.fileno()) for s in socks)
    argv = [sys.executable, "-c", _FAKE_MANAGER, fds, names or "", *server_args]
    return WorkerServer(tmp, argv=argv, pass_fds=tuple(s.fileno() for s in socks))


@pytest.fixture(params=["faked", "systemd-socket-activate"])
def launcher(request: pytest.FixtureRequest) -> str:
    # The real tool where it is installed (.ci/run installs it); the faked environment
    # stands in where it is not, so the same checks still run.
    return request.param if TOOL is not None else "faked"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    www = tmp_path / "www"
    www.mkdir()
    (www / "a.txt").write_bytes(b"served from a passed socket\n")
    return www


def launch(
    launcher: str, tmp: Path, count: int, workers: int, root: Path
) -> tuple[WorkerServer, list[int]]:
    # -p/-b name an address nothing listens on: they must be ignored.
    args = ["-d", str(root), "-q", "-p", "1", "-b", "127.0.0.2", "--workers", str(workers)]
    args += ["--stats-csv", str(tmp / "stats.csv")]
    names = ":".join(["web", "alt"][:count])
    if launcher == "faked":
        socks = listening(count)
        ports = [s.getsockname()[1] for s in socks]
        srv = faked(tmp, socks, names, args)
        for s in socks:
            s.close()  # the server holds them now
        return srv, ports
    ports = [free_port() for _ in range(count)]
    listen = [f"--listen=127.0.0.1:{p}" for p in ports]
    argv = [TOOL or "", *listen, f"--fdname={names}", sys.executable, "-m", "evloop_httpd"]
    srv = WorkerServer(tmp, argv=[*argv, *args])
    # It says "Listening on 127.0.0.1:PORT as 3." once bound; before that, connect is refused.
    assert wait_until(lambda: srv.err().count("Listening on") == count), srv.err()
    return srv, ports


@pytest.fixture
def cleanup() -> Iterator[list[WorkerServer]]:
    servers: list[WorkerServer] = []
    yield servers
    for srv in servers:
        srv.kill_all()


@pytest.mark.parametrize("count", [1, 2])
@pytest.mark.parametrize("workers", [1, 2])
def test_serves_the_passed_sockets_instead_of_binding(
    launcher: str,
    count: int,
    workers: int,
    root: Path,
    tmp_path: Path,
    cleanup: list[WorkerServer],
) -> None:
    srv, ports = launch(launcher, tmp_path, count, workers, root)
    cleanup.append(srv)
    # The real tool starts the server on the first connection: it waits in the backlog.
    for port in ports:
        for _ in range(3):
            assert fetch(port, "/a.txt") == b"served from a passed socket\n"
    out = srv.out()
    assert "socket activation: serving 127.0.0.1:" in out
    assert "-p/--port and -b/--bind are ignored" in out
    if workers > 1:
        assert wait_until(lambda: "2 workers ready" in srv.err())
    srv.signal(signal.SIGTERM)
    assert srv.wait(DEADLINE_S) == 0, srv.err()
    # Each request is logged with the address of the socket it came in on.
    rows = (tmp_path / "stats.csv").read_text().splitlines()[1:]
    assert sorted(int(r.split(",")[1]) for r in rows) == sorted(ports * 3)


def test_a_passed_socket_that_is_not_listening_is_refused(
    root: Path, tmp_path: Path, cleanup: list[WorkerServer]
) -> None:
    a, b = socket.socketpair(socket.AF_UNIX)
    with a, b:
        srv = faked(tmp_path, [a], None, ["-d", str(root)])
        cleanup.append(srv)
        assert srv.wait(DEADLINE_S) == 1
    assert "socket activation: passed descriptor 3 (unknown) is not a TCP socket" in srv.err()
    (server_side,) = listening(1)
    connected = socket.create_connection(server_side.getsockname())
    with server_side, connected:
        srv = faked(tmp_path, [connected], None, ["-d", str(root)])
        cleanup.append(srv)
        assert srv.wait(DEADLINE_S) == 1
    assert "is not a listening stream socket" in srv.err()


@pytest.mark.parametrize("workers", [1, 2])
def test_a_passed_socket_beyond_loopback_turns_anonymous_writes_off(
    root: Path, tmp_path: Path, cleanup: list[WorkerServer], workers: int
) -> None:
    # History: whether writes were safe was judged from -b (127.0.0.1 by default), which socket
    # activation ignores, so a socket systemd bound to 0.0.0.0 took anonymous PUTs.
    s = socket.socket()
    s.bind(("0.0.0.0", 0))  # the server listens on every address; we talk to it on loopback only
    s.listen()
    port = s.getsockname()[1]
    srv = faked(tmp_path, [s], None, ["-d", str(root), "-q", "--workers", str(workers)])
    s.close()
    cleanup.append(srv)
    assert fetch(port, "/a.txt") == b"served from a passed socket\n"
    with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE_S) as c:
        c.sendall(
            b"PUT /new.txt HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi"
        )
        reply = b""
        while chunk := c.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 403 "), reply[:100]
    assert not (root / "new.txt").exists()
    assert "Writes are off" in srv.out()  # the banner says so, with workers too
    srv.signal(signal.SIGTERM)
    assert srv.wait(DEADLINE_S) == 0, srv.err()
