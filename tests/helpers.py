"""Shared test tools: an in-process server on 127.0.0.1:0, raw-socket clients, and feeders.

Every wait has a deadline (``DEADLINE_S``); nothing sleeps to synchronise. The server runs in a
background thread of the test process so that tests can monkeypatch its internals; the runtime
itself never uses threads.
"""

from __future__ import annotations

import dataclasses
import io
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from evloop_httpd.config import Config, Limits, Timeouts
from evloop_httpd.log import Logs
from evloop_httpd.reactor import Server

DEADLINE_S = 10.0
REPO = Path(__file__).resolve().parent.parent


class RunningServer:
    """A :class:`Server` serving in a thread; ``stop()`` stops it gracefully and joins."""

    def __init__(self, config: Config) -> None:
        self.stderr = io.StringIO()
        self.logs = Logs(config, stderr=self.stderr)
        self.server = Server(config, self.logs)
        self.server.bind()
        self.host, self.port = self.server.address[:2]
        # --status: the status listener's port (0 when the config has none).
        self.status_port = self.server.bind_status()[1] if config.status is not None else 0
        self.root = Path(config.root)
        self.config = config
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self.server.serve_forever()
        except BaseException as exc:  # surfaced by stop(): a crashed loop must fail the test
            self.error = exc

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.request_stop()
        self._thread.join(DEADLINE_S)
        assert not self._thread.is_alive(), "server did not stop within the deadline"
        if self.error is not None:
            raise AssertionError("the server loop crashed") from self.error

    def alive(self) -> bool:
        return self._thread.is_alive()


def make_config(root: Path, **overrides: Any) -> Config:
    """A config for tests: port 0 on loopback, quiet unless asked, other settings overridable.

    ``limits`` and ``timeouts`` overrides may be dicts of the fields to change.
    """
    limits = overrides.pop("limits", {})
    timeouts = overrides.pop("timeouts", {})
    base = Config(root=root, host="127.0.0.1", port=0, quiet=overrides.pop("quiet", True))
    return dataclasses.replace(
        base,
        limits=dataclasses.replace(Limits(), **limits) if isinstance(limits, dict) else limits,
        timeouts=(
            dataclasses.replace(Timeouts(), **timeouts) if isinstance(timeouts, dict) else timeouts
        ),
        **overrides,
    )


@contextmanager
def running(root: Path, **overrides: Any) -> Iterator[RunningServer]:
    srv = RunningServer(make_config(root, **overrides))
    try:
        yield srv
    finally:
        srv.stop()


def connect(port: int, timeout: float = DEADLINE_S, rcvbuf: int | None = None) -> socket.socket:
    """A connection to 127.0.0.1:``port``. ``rcvbuf`` caps the receive buffer (set before
    the connect, so that the window the server sees is small from the start): a response
    larger than it stays in the server's hands until the client reads."""
    if rcvbuf is None:
        return socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(timeout)
    sock.connect(("127.0.0.1", port))
    return sock


@dataclasses.dataclass
class Reply:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes
    raw_head: bytes

    def header(self, name: str) -> str | None:
        values = [v for n, v in self.headers if n.lower() == name.lower()]
        return ", ".join(values) if values else None


RECV_SIZE = 65536  # what a normal client asks for per recv
TINY_RECV = 7  # for tests about responses split across many reads


class Client:
    """A raw-socket HTTP client: connects to ``127.0.0.1:port``, or wraps a socket the test
    already set up (a TLS socket, one with a tiny receive buffer, a socketpair end).

    It reads ``recv_size`` bytes per ``recv``: a normal size by default; tests about responses
    split across reads pass ``TINY_RECV``.
    """

    def __init__(self, port: int | socket.socket, recv_size: int = RECV_SIZE) -> None:
        # ``port`` keeps its old name so that Client(port=...) still works.
        self.sock = port if isinstance(port, socket.socket) else connect(port)
        self.buf = b""
        self.recv_size = recv_size

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        chunk = self.sock.recv(self.recv_size)
        if not chunk:
            return False
        self.buf += chunk
        return True

    def read_response(self, head_request: bool = False) -> Reply:
        """Read one response; raises ``ConnectionError`` if the peer closes before it is whole."""
        while b"\r\n\r\n" not in self.buf:
            if not self._fill():
                raise ConnectionError(f"closed before a full head; got {self.buf[:200]!r}")
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        version, status, reason = ([*lines[0].split(" ", 2), ""])[:3]
        assert version == "HTTP/1.1", lines[0]
        headers = [tuple(x.strip() for x in line.split(":", 1)) for line in lines[1:]]
        reply = Reply(int(status), reason, headers, b"", head)  # type: ignore[arg-type]
        code = int(status)
        if head_request or code in (204, 304) or 100 <= code < 200:
            return reply
        length = reply.header("Content-Length")
        assert length is not None, f"response without Content-Length: {head!r}"
        n = int(length)
        while len(self.buf) < n:
            if not self._fill():
                raise ConnectionError(f"closed after {len(self.buf)} of {n} body bytes")
        reply.body, self.buf = self.buf[:n], self.buf[n:]
        return reply

    def closed_by_peer(self, timeout: float = DEADLINE_S) -> bool:
        """True if the server closes the connection (EOF or reset) within ``timeout``."""
        self.sock.settimeout(timeout)
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
                self.buf += chunk
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def request(port: int, data: bytes, head_request: bool = False) -> Reply:
    """One request on a fresh connection."""
    with Client(port, recv_size=4096) as c:
        c.send(data)
        return c.read_response(head_request)


def put(path: str, body: bytes, extra: str = "") -> bytes:
    """A whole PUT request with a Content-Length body (``extra``: more header lines)."""
    head = f"PUT {path} HTTP/1.1\r\nHost: test\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
    return head.encode() + body


def rss_kib(pid: int) -> int:
    """The resident set size of process ``pid`` in KiB, from /proc/PID/status."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def open_fds(pid: int | str = "self") -> int:
    """How many descriptors process ``pid`` (default: this one) holds open."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def get(host_path: str, extra: str = "", method: str = "GET") -> bytes:
    return f"{method} {host_path} HTTP/1.1\r\nHost: test\r\n{extra}\r\n".encode()


def feed_bytewise(data: bytes) -> Iterator[bytes]:
    for i in range(len(data)):
        yield data[i : i + 1]


def fill_socket(sock: socket.socket) -> int:
    """Fill ``sock``'s send buffer until it would block; returns the bytes written."""
    sock.setblocking(False)
    total = 0
    chunk = b"x" * 65536
    try:
        while True:
            total += sock.send(chunk)
    except BlockingIOError:
        pass
    finally:
        sock.setblocking(True)
    return total


def wait_until(predicate: Callable[[], bool], timeout: float = DEADLINE_S) -> bool:
    """Poll ``predicate`` until true or the deadline; for state other threads change."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.005)
    return predicate()


CURL_TIMEOUT_S = 20


def curl(*args: str) -> subprocess.CompletedProcess[bytes]:
    """curl as a user runs it, but never through a proxy the environment may name."""
    return subprocess.run(
        ["curl", "-sS", "--noproxy", "*", "--max-time", str(CURL_TIMEOUT_S), *args],
        capture_output=True,
        timeout=CURL_TIMEOUT_S + 10,
        check=False,
    )


def spawn_cli(
    *args: str,
    env: dict[str, str] | None = None,
    preexec_fn: Callable[[], None] | None = None,
) -> subprocess.Popen[str]:
    """``python -m evloop_httpd ARGS`` as a user would start it (``preexec_fn``: for limits)."""
    return subprocess.Popen(
        [sys.executable, "-m", "evloop_httpd", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
        preexec_fn=preexec_fn,
    )


def read_serving_port(proc: subprocess.Popen[str]) -> int:
    """The port from the server's 'Serving ... on http://HOST:PORT/' line."""
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("Serving "), line
    return int(line.rsplit(":", 1)[1].strip().rstrip("/"))
