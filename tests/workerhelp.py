"""Tools for multi-process tests: a ``--workers`` server in its own session, a bounded load.

Every server is started in a new session so that teardown can kill its whole process group
(parent and workers) whatever state a test left it in. Output goes to files, read with
deadlines; nothing sleeps to synchronise.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .helpers import DEADLINE_S, REPO, wait_until


class WorkerServer:
    """``python -m evloop_httpd ARGS`` in its own session, stdout and stderr in files."""

    def __init__(
        self,
        tmp: Path,
        *args: str,
        env: dict[str, str] | None = None,
        argv: list[str] | None = None,
        err_pipe: bool = False,
        pass_fds: tuple[int, ...] = (),
    ) -> None:
        self.out_path, self.err_path = tmp / "server.out", tmp / "server.err"
        cmd = argv if argv is not None else [sys.executable, "-m", "evloop_httpd", *args]
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(
                cmd,
                cwd=REPO,
                stdout=out,
                stderr=subprocess.PIPE if err_pipe else err,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **(env or {})},
                start_new_session=True,
                pass_fds=pass_fds,
            )
        self.port = 0

    def wait_serving(self) -> int:
        """The port from the 'Serving ... on http://HOST:PORT/' line, once the workers are up
        (with stderr on a pipe, once it listens: connections then wait for the workers)."""
        if self.proc.stderr is None:
            ready = "workers ready"
            assert wait_until(lambda: ready in self.err() or self.proc.poll() is not None)
        assert wait_until(lambda: "Serving " in self.out() or self.proc.poll() is not None)
        line = next(x for x in self.out().splitlines() if x.startswith("Serving "))
        self.port = int(line.split(" on ", 1)[1].split()[0].rsplit(":", 1)[1].rstrip("/"))
        return self.port

    def out(self) -> str:
        return self.out_path.read_text(errors="replace")

    def err(self) -> str:
        return self.err_path.read_text(errors="replace")

    def workers(self) -> list[int]:
        """The parent's live children (its workers), from /proc."""
        path = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        try:
            return [int(x) for x in path.read_text().split()]
        except OSError:
            return []

    def wait_workers(
        self, count: int, exclude: frozenset[int] | set[int] = frozenset()
    ) -> list[int]:
        """Until exactly ``count`` workers run, none of them in ``exclude``; returns them."""
        seen: list[int] = []

        def settled() -> bool:
            seen[:] = self.workers()  # one read: the set must be checked and returned whole
            return len(seen) == count and not exclude & set(seen)

        assert wait_until(settled), (seen, self.err())
        return list(seen)

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = DEADLINE_S) -> int:
        return self.proc.wait(timeout)

    def kill_all(self) -> None:
        """Teardown: the whole session, parent and workers, whatever happened."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(DEADLINE_S)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


@contextlib.contextmanager
def worker_server(tmp: Path, *args: str, **kw: object) -> Iterator[WorkerServer]:
    srv = WorkerServer(tmp, *args, **kw)  # type: ignore[arg-type]
    try:
        yield srv
    finally:
        srv.kill_all()


def fetch(port: int, path: str, timeout: float = DEADLINE_S) -> bytes:
    """One GET on a new connection (Connection: close); the body, or raises OSError."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
        data = bytearray()
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200 "):
        raise ConnectionError(f"bad response: {head[:80]!r}")
    length = int(head.lower().split(b"content-length: ", 1)[1].split(b"\r\n", 1)[0])
    if len(body) != length:
        raise ConnectionError(f"short body: {len(body)} of {length}")
    return body


@dataclass
class Load:
    """Clients that each GET ``path`` in a loop on new connections until stopped.

    Bounded: at most ``max_requests`` per client and ``DEADLINE_S`` per request. ``failures``
    holds (start time, error) of each request that did not get a whole 200.
    """

    port: int
    path: str
    expect: bytes
    clients: int = 4
    max_requests: int = 5000
    ok: int = 0
    failures: list[tuple[float, str]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Load:
        for _ in range(self.clients):
            t = threading.Thread(target=self._run, daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def _run(self) -> None:
        for _ in range(self.max_requests):
            if self._stop.is_set():
                return
            started = time.monotonic()
            try:
                body = fetch(self.port, self.path)
                error = None if body == self.expect else "wrong body"
            except OSError as exc:
                error = repr(exc)
            with self._lock:
                if error is None:
                    self.ok += 1
                else:
                    self.failures.append((started, error))

    def wait_ok(self, count: int) -> None:
        """Until ``count`` more requests have succeeded (the load is really flowing)."""
        target = self.ok + count
        assert wait_until(lambda: self.ok >= target), (self.ok, self.failures[:3])

    def stop(self) -> None:
        self._stop.set()
        self.join()

    def join(self) -> None:
        """Until every client has made its ``max_requests`` (or was stopped)."""
        for t in self._threads:
            t.join(DEADLINE_S)
        assert not any(t.is_alive() for t in self._threads)


class KeepAliveLoad(Load):
    """Like :class:`Load`, but each client keeps one connection for many requests, as browsers
    and HTTP libraries do, and retries a request once on a new connection when a *reused*
    connection ends before any byte of the response: the retry RFC 9112 §9.3.1 allows for an
    idempotent request, which covers a server closing an idle connection as the request left.
    ``retries`` counts them; anything else is a failure."""

    retries: int = 0

    def _run(self) -> None:
        sock: socket.socket | None = None
        for _ in range(self.max_requests):
            if self._stop.is_set():
                break
            started = time.monotonic()
            error = None
            for attempt in (1, 2):
                reused = sock is not None
                if sock is None:
                    sock = socket.create_connection(("127.0.0.1", self.port), DEADLINE_S)
                progress: list[bytes] = []  # response bytes seen, if any
                try:
                    body, keep = _keepalive_get(sock, self.path, progress)
                except OSError as exc:
                    sock.close()
                    sock = None
                    error = repr(exc)
                    if reused and not progress and attempt == 1:
                        with self._lock:
                            self.retries += 1
                        continue
                    break
                error = None if body == self.expect else "wrong body"
                if not keep:
                    sock.close()
                    sock = None
                break
            with self._lock:
                if error is None:
                    self.ok += 1
                else:
                    self.failures.append((started, error))
        if sock is not None:
            sock.close()


def _keepalive_get(sock: socket.socket, path: str, progress: list[bytes]) -> tuple[bytes, bool]:
    """One GET on a kept-alive connection: (body, whether the server keeps the connection).
    Appends to ``progress`` as response bytes come. Raises OSError if the response is cut."""
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    data = bytearray()
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before a whole response head")
        progress.append(chunk[:1])
        data += chunk
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200 "):
        raise ConnectionError(f"bad response: {head[:80]!r}")
    length = int(head.lower().split(b"content-length: ", 1)[1].split(b"\r\n", 1)[0])
    rest = bytearray(body)
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"short body: {len(rest)} of {length}")
        rest += chunk
    return bytes(rest), b"connection: close" not in head.lower()
