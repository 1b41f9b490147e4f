"""Injected faults: resets, broken pipes, files changing under a response, full disks, permission
errors and bugs. Each aborts only the connection it hits, and the next request is served right.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import struct
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from evloop_httpd import handler as handler_mod
from evloop_httpd import transport as transport_mod
from evloop_httpd import upload as upload_mod

from ..conftest import SMALL
from ..helpers import (
    DEADLINE_S,
    REPO,
    Client,
    RunningServer,
    connect,
    get,
    make_config,
    read_serving_port,
    request,
    wait_until,
)

BIG = 32 * 1024 * 1024  # larger than any socket buffers, so the response is surely mid-flight
TRUNCATED = 1024 * 1024


def pattern(n: int) -> bytes:
    block = bytes(range(256)) * 256
    return (block * (n // len(block) + 1))[:n]


@pytest.fixture(params=[True, False], ids=["sendfile", "read-send"])
def big_server(request: pytest.FixtureRequest, www: Path) -> Iterator[RunningServer]:
    (www / "big.bin").write_bytes(pattern(BIG))
    srv = RunningServer(make_config(www, use_sendfile=request.param))
    yield srv
    srv.stop()


def healthy(srv: RunningServer) -> None:
    """The server answers a fresh request correctly, and holds no connection it should not."""
    reply = request(srv.port, get("/hello.txt"))
    assert reply.status == 200 and reply.body == SMALL
    assert wait_until(lambda: srv.server.count == 0), srv.server.count
    assert srv.alive()


def small_rcvbuf_client(port: int) -> socket.socket:
    return connect(port, rcvbuf=4096)


def read_head(sock: socket.socket) -> tuple[bytes, bytes]:
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(4096)
        assert chunk, buf
        buf += chunk
    head, rest = buf.split(b"\r\n\r\n", 1)
    return head, rest


def test_client_reset_mid_response(big_server: RunningServer) -> None:
    sock = small_rcvbuf_client(big_server.port)
    sock.sendall(get("/big.bin"))
    head, _ = read_head(sock)
    assert head.startswith(b"HTTP/1.1 200")
    # SO_LINGER 0: close sends RST rather than FIN, so the server's next send fails.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
    healthy(big_server)


def test_client_closes_without_reading(big_server: RunningServer) -> None:
    # EPIPE/ECONNRESET on the server's send: a client that asks, then hangs up.
    for _ in range(3):
        sock = connect(big_server.port)
        sock.sendall(get("/big.bin") + get("/big.bin"))
        sock.close()
    healthy(big_server)


def test_file_truncated_while_sent_aborts(big_server: RunningServer, www: Path) -> None:
    original = pattern(BIG)
    sock = small_rcvbuf_client(big_server.port)
    sock.sendall(get("/big.bin"))
    head, got = read_head(sock)
    assert b"Content-Length: %d" % BIG in head
    os.truncate(www / "big.bin", TRUNCATED)
    received = bytearray(got)
    # The server may end it with a FIN or, to make the failure unmistakable, a reset.
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(1 << 20):
            received += chunk
    sock.close()
    # The connection was cut short, so the client can tell the body is incomplete: no filler and
    # no new content passed off as the whole file.
    assert len(received) < BIG
    if big_server.config.use_sendfile:
        # sendfile queues references to page-cache pages, and truncation zeroes the ones past
        # the new end even when they already sit in the socket buffer: bytes beyond TRUNCATED
        # may be zeros. Nothing can be done about bytes already queued except cut the
        # connection, which is what the length check above proves.
        n = min(len(received), TRUNCATED)
        assert bytes(received[:n]) == original[:n]
        assert all(b == 0 or b == o for b, o in zip(received[n:], original[n:], strict=False))
    else:
        assert bytes(received) == original[: len(received)]
    healthy(big_server)


def test_file_deleted_while_sent_is_whole(big_server: RunningServer, www: Path) -> None:
    # Unlinking does not change an open file's bytes: the client gets the whole old file.
    original = pattern(BIG)
    with Client(big_server.port, recv_size=1 << 20) as c:
        c.send(get("/big.bin"))
        c._fill()
        os.unlink(www / "big.bin")
        reply = c.read_response()
    assert reply.body == original
    assert request(big_server.port, get("/big.bin")).status == 404
    healthy(big_server)


def test_unexpected_exception_gives_500_and_loop_goes_on(
    server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_begin = handler_mod.Handler.begin

    def buggy(self: handler_mod.Handler, req: object, wall: float) -> object:
        if req.path == b"/boom":  # type: ignore[attr-defined]
            raise ZeroDivisionError("injected")
        return real_begin(self, req, wall)  # type: ignore[arg-type]

    monkeypatch.setattr(handler_mod.Handler, "begin", buggy)
    with Client(server.port) as c:
        c.send(get("/boom") + get("/hello.txt"))
        reply = c.read_response()
        assert reply.status == 500
        assert reply.header("Connection") == "close"
        assert b"ZeroDivisionError" not in reply.body  # no traceback to the client
        assert c.closed_by_peer()
    assert wait_until(lambda: "ZeroDivisionError" in server.stderr.getvalue())
    healthy(server)


def test_bug_in_the_reactor_drops_only_that_connection(
    big_server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    def buggy(self: transport_mod.Transport, fd: int, offset: int, count: int) -> int:
        raise KeyError("injected")

    with Client(big_server.port) as idle:
        idle.send(get("/hello.txt"))
        assert idle.read_response().body == SMALL
        monkeypatch.setattr(transport_mod.Transport, "_send_file", buggy)
        with Client(big_server.port, recv_size=65536) as victim:
            victim.send(get("/big.bin"))
            with pytest.raises(ConnectionError):
                victim.read_response()
        monkeypatch.undo()
        # The other keep-alive connection is untouched.
        idle.send(get("/hello.txt"))
        assert idle.read_response().body == SMALL
    assert "KeyError" in big_server.stderr.getvalue()
    healthy(big_server)


def put(path: str, body: bytes) -> bytes:
    return f"PUT {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body


def temp_files(root: Path) -> list[Path]:
    return list(root.rglob(".evloop-upload-*"))


def fail_upload_writes(
    monkeypatch: pytest.MonkeyPatch, err: int, after_bytes: int = 0
) -> Callable[[], int]:
    """Make os.write fail with ``err`` on upload temp files once ``after_bytes`` went through;
    os.splice too, by which a Content-Length body reaches its temp file (issue 17)."""
    real_write = os.write
    real_splice = os.splice
    written = [0]

    def counted(fd: int, do: Callable[[], int]) -> int:
        """Run ``do`` (a write or splice into ``fd``); into a temp file, fail past the budget."""
        try:
            into_temp = ".evloop-upload-" in os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            into_temp = False
        if not into_temp:
            return do()
        if written[0] >= after_bytes:
            raise OSError(err, os.strerror(err))
        n = do()
        written[0] += n
        return n

    def splice(src: int, dst: int, count: int, *args: Any, **kwargs: Any) -> int:
        return counted(dst, lambda: real_splice(src, dst, count, *args, **kwargs))

    def write(fd: int, data: bytes) -> int:
        return counted(fd, lambda: real_write(fd, data))

    monkeypatch.setattr(upload_mod.os, "write", write)
    monkeypatch.setattr(os, "splice", splice)
    return lambda: written[0]


@pytest.mark.parametrize(
    ("err", "status"),
    [(errno.ENOSPC, 507), (errno.EDQUOT, 507), (errno.EFBIG, 413), (errno.EACCES, 403)],
)
def test_disk_fills_during_put(
    server: RunningServer, www: Path, monkeypatch: pytest.MonkeyPatch, err: int, status: int
) -> None:
    (www / "keep.txt").write_bytes(b"old content\n")
    written = fail_upload_writes(monkeypatch, err, after_bytes=100_000)
    body = pattern(1_000_000)
    with Client(server.port) as c:
        c.send(b"PUT /keep.txt HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body))
        # The server may close before taking it all; its answer is already queued.
        with contextlib.suppress(OSError):
            c.send(body)
        reply = c.read_response()
        assert c.closed_by_peer()
    assert reply.status == status
    assert reply.header("Connection") == "close"
    assert written() >= 100_000  # the fault struck mid-body, not before
    assert (www / "keep.txt").read_bytes() == b"old content\n"
    assert wait_until(lambda: not temp_files(www)), temp_files(www)
    monkeypatch.undo()
    reply = request(server.port, put("/keep.txt", b"new!"))
    assert reply.status == 204
    assert (www / "keep.txt").read_bytes() == b"new!"
    healthy(server)


def test_disk_full_at_commit(
    server: RunningServer, www: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def replace(src: str, dst: str, **dir_fds: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(upload_mod.os, "replace", replace)
    reply = request(server.port, put("/new.txt", b"abc"))
    assert reply.status == 507
    assert not (www / "new.txt").exists()
    assert not temp_files(www)
    monkeypatch.undo()
    healthy(server)


def test_bug_at_commit_gives_500_and_removes_temp(
    server: RunningServer, www: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # History: the connection dropped its reference to the upload before committing it, so an
    # unexpected exception in commit left the temp file behind.
    def replace(src: str, dst: str, **dir_fds: int) -> None:
        raise RuntimeError("injected")

    monkeypatch.setattr(upload_mod.os, "replace", replace)
    reply = request(server.port, put("/new.txt", b"abc"))
    assert reply.status == 500
    assert not (www / "new.txt").exists()
    assert not temp_files(www)
    monkeypatch.undo()
    healthy(server)


def test_permission_denied_on_temp_create(
    server: RunningServer, www: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open = os.open

    def deny(path: str, *args: object, **kw: object) -> int:
        if ".evloop-upload-" in str(path):
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_open(path, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(upload_mod.os, "open", deny)
    reply = request(server.port, put("/new.txt", b"abc"))
    assert reply.status == 403
    assert not (www / "new.txt").exists()
    monkeypatch.undo()
    healthy(server)


# Root ignores permission bits through CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH; drop them.
_DROP_DAC = "-dac_override,-dac_read_search"
_NO_DAC = ["setpriv", f"--bounding-set={_DROP_DAC}", f"--inh-caps={_DROP_DAC}"]


def test_real_permission_errors(tmp_path: Path) -> None:
    """Real EACCES from the kernel: a server that is not root, a folder and a file it may not use.

    Root ignores permission bits, so under root the server runs without the capabilities that
    let it (``setpriv`` from util-linux).
    """
    base = Path(tempfile.mkdtemp(prefix="evloop-perm-"))
    try:
        os.chmod(base, 0o755)
        (base / "locked").mkdir(mode=0o755)
        (base / "open").mkdir(mode=0o777)
        (base / "secret.txt").write_bytes(b"no\n")
        os.chmod(base / "secret.txt", 0o000)
        (base / "ok.txt").write_bytes(b"ok\n")
        os.chmod(base / "ok.txt", 0o644)
        os.chmod(base / "locked", 0o555)
        wrapper = _NO_DAC if os.getuid() == 0 else []
        proc = subprocess.Popen(
            [*wrapper, sys.executable, "-m", "evloop_httpd", "-p", "0", "-d", str(base), "-q"],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            port = read_serving_port(proc)
            assert request(port, get("/secret.txt")).status == 403
            put = b"PUT /locked/new.txt HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
            assert request(port, put).status == 403
            assert not (base / "locked" / "new.txt").exists()
            assert not list((base / "locked").iterdir())
            put = b"PUT /open/new.txt HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
            assert request(port, put).status == 201
            assert (base / "open" / "new.txt").read_bytes() == b"abc"
            assert request(port, get("/ok.txt")).body == b"ok\n"
        finally:
            proc.terminate()
            proc.communicate(timeout=DEADLINE_S)
        assert proc.returncode == 0
    finally:
        subprocess.run(["rm", "-rf", str(base)], check=True)


class _RaisingObserver:
    def transition(self, *args: object) -> None:
        pass

    def response_head(self, *args: object) -> None:
        pass

    def request_done(self, conn: object) -> None:
        raise OSError(24, "Too many open files")

    def bug(self, *args: object) -> None:
        pass


def test_release_frees_the_file_even_if_logging_fails(www: Path) -> None:
    # History: at EMFILE, the access log's lazy codec import raised inside _release before the
    # file descriptor was closed, leaking one descriptor per aborted response.
    from evloop_httpd.connection import Connection, Context
    from evloop_httpd.states import ConnState

    conn = Connection(Context(make_config(www), _RaisingObserver()), 0.0)  # type: ignore[arg-type]
    conn.receive(get("/data.bin"), 0.0)
    fd = conn.file_fd
    assert fd >= 0 and conn.state is ConnState.WRITING_HEADERS
    with pytest.raises(OSError):
        conn.abort()
    assert conn.state is ConnState.CLOSED
    with pytest.raises(OSError):
        os.fstat(fd)


@pytest.mark.parametrize("where", ["create", "commit"])
def test_read_only_file_system_is_a_403(
    server: RunningServer, www: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    # History: EROFS (a root mounted read-only, found on a real tmpfs) answered a PUT with 500.
    (www / "keep.txt").write_bytes(b"old\n")
    real_open = os.open

    def open_(path: str, *args: object, **kw: object) -> int:
        if ".evloop-upload-" in str(path):
            raise OSError(errno.EROFS, "Read-only file system")
        return real_open(path, *args, **kw)  # type: ignore[arg-type]

    def replace(src: str, dst: str, **dir_fds: int) -> None:
        raise OSError(errno.EROFS, "Read-only file system")

    if where == "create":
        monkeypatch.setattr(upload_mod.os, "open", open_)
    else:
        monkeypatch.setattr(upload_mod.os, "replace", replace)
    for target in ("/keep.txt", "/new.txt"):
        reply = request(server.port, put(target, b"abc"))
        assert reply.status == 403, reply.raw_head
        assert b"read-only" in reply.body
    monkeypatch.undo()
    assert (www / "keep.txt").read_bytes() == b"old\n"
    assert not (www / "new.txt").exists()
    assert not temp_files(www)
    healthy(server)
