"""PUT bodies spliced from the socket into the file (issue 17), and the read+write path they
fall back on: byte for byte either way, never past the body's end, and an upload that fails
leaves nothing behind. Which path ran is read off the server's counters
(``Context.body_spliced`` / ``body_copied``, the figures /status.json shows)."""

from __future__ import annotations

import errno
import json
import os
import socket
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ..helpers import (
    DEADLINE_S,
    Client,
    RunningServer,
    connect,
    get,
    open_fds,
    request,
    running,
    wait_until,
)

MIB = 1024 * 1024
OLD = b"the old content, which must survive\n"


def put_head(path: str, length: int, extra: str = "") -> bytes:
    return f"PUT {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n{extra}\r\n".encode()


def temps(root: Path) -> list[Path]:
    return list(root.rglob(".evloop-upload-*"))


def spliced(srv: RunningServer) -> int:
    return srv.server.ctx.body_spliced


def copied(srv: RunningServer) -> int:
    return srv.server.ctx.body_copied


def body_of(size: int) -> bytes:
    return (os.urandom(4096) * (size // 4096 + 1))[:size]


@pytest.fixture(params=[True, False], ids=["splice", "no-splice"])
def use_splice(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


@pytest.mark.parametrize("size", [1000, 70_000, 300_000, 3 * MIB + 7])
def test_byte_for_byte(www: Path, use_splice: bool, size: int) -> None:
    # History: before issue 17 every body went recv -> bytes -> write; body_spliced stayed 0.
    body = body_of(size)
    with running(www, use_splice=use_splice) as srv, Client(srv.port) as c:
        c.send(put_head("/up.bin", size) + body)
        assert c.read_response().status == 201
        assert (www / "up.bin").read_bytes() == body
        assert spliced(srv) + copied(srv) == size
        if not use_splice or size < 100_000:
            assert spliced(srv) == 0  # off, or too small to be worth a pipe
        else:
            assert spliced(srv) >= size - 128 * 1024  # the head's recv and the last 64 KiB
        assert not temps(www)


def test_first_part_with_the_head_rest_later(www: Path, use_splice: bool) -> None:
    body = body_of(2 * MIB)
    with running(www, use_splice=use_splice) as srv, Client(srv.port) as c:
        c.send(put_head("/up.bin", len(body)) + body[:5000])
        assert wait_until(lambda: copied(srv) == 5000)  # written the read path's way
        c.send(body[5000:])
        assert c.read_response().status == 201
        assert (www / "up.bin").read_bytes() == body
        assert (spliced(srv) > 0) is use_splice


def test_pipelined_request_after_the_body_is_answered(www: Path, use_splice: bool) -> None:
    body = body_of(MIB + 123)
    second = b"the second body"
    with running(www, use_splice=use_splice) as srv, Client(srv.port) as c:
        # One send: the next requests are in the socket right behind the body's last byte.
        c.send(
            put_head("/up.bin", len(body))
            + body
            + get("/up.bin")
            + put_head("/two.txt", len(second))
            + second
            + get("/two.txt")
        )
        assert c.read_response().status == 201
        got = c.read_response()
        assert got.status == 200 and got.body == body
        assert c.read_response().status == 201
        got = c.read_response()
        assert got.status == 200 and got.body == second
        assert (spliced(srv) > 0) is use_splice


def test_disconnect_mid_body_leaves_nothing(www: Path, use_splice: bool) -> None:
    (www / "up.bin").write_bytes(OLD)
    body = body_of(4 * MIB)
    with running(www, use_splice=use_splice) as srv:
        sock = connect(srv.port)
        sock.sendall(put_head("/up.bin", len(body)) + body[: 2 * MIB])
        moved = spliced if use_splice else copied
        assert wait_until(lambda: moved(srv) >= MIB)  # an upload in progress
        sock.close()
        assert wait_until(lambda: srv.server.count == 0 and not temps(www))
        sock = connect(srv.port)
        sock.sendall(put_head("/up.bin", len(body)) + body[: 2 * MIB])
        assert wait_until(lambda: moved(srv) >= 3 * MIB)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
        sock.close()  # a reset this time
        assert wait_until(lambda: srv.server.count == 0 and not temps(www))
    assert (www / "up.bin").read_bytes() == OLD


def test_max_upload_exceeded(www: Path, use_splice: bool) -> None:
    limit = 256 * 1024
    with running(www, use_splice=use_splice, limits={"max_upload_bytes": limit}) as srv:
        with Client(srv.port) as c:
            c.send(put_head("/up.bin", limit + 1) + body_of(limit + 1))
            reply = c.read_response()
            assert reply.status == 413
            assert c.closed_by_peer()
        with Client(srv.port) as c:  # exactly the limit is fine
            body = body_of(limit)
            c.send(put_head("/up.bin", limit) + body)
            assert c.read_response().status == 201
        assert (www / "up.bin").read_bytes() == body
        assert not temps(www)


def test_trickling_client_judged_by_min_rate(www: Path, use_splice: bool) -> None:
    # Pieces come well within the stall timeout, but on average at a quarter of the minimum
    # rate: the body is cut off as a stall, whichever path its bytes take.
    piece = 100 * 1024
    timeouts = {"stall_s": 0.5, "min_rate_bytes_s": 40 * piece}  # 4x a piece per 0.1 s
    (www / "up.bin").write_bytes(OLD)
    with running(www, use_splice=use_splice, timeouts=timeouts) as srv, Client(srv.port) as c:
        c.sock.sendall(put_head("/up.bin", 100 * MIB))
        started = time.monotonic()
        c.sock.setblocking(False)
        reply = b""
        while time.monotonic() - started < DEADLINE_S:
            try:
                reply = c.sock.recv(4096)
                break
            except BlockingIOError:
                pass
            c.sock.setblocking(True)
            c.sock.sendall(body_of(piece))
            c.sock.setblocking(False)
            time.sleep(0.1)  # the trickle's pace, not a synchronisation
        assert reply.startswith(b"HTTP/1.1 408 "), reply
        assert time.monotonic() - started < 5.0
        if use_splice:
            assert spliced(srv) > 0
        assert wait_until(lambda: not temps(www))
    assert (www / "up.bin").read_bytes() == OLD


def test_stalled_body_times_out(www: Path, use_splice: bool) -> None:
    body = body_of(MIB)
    with running(www, use_splice=use_splice, timeouts={"stall_s": 0.3}) as srv:
        with Client(srv.port) as c:
            c.send(put_head("/up.bin", 2 * MIB) + body)
            reply = c.read_response()
            assert reply.status == 408
            assert c.closed_by_peer()
            assert wait_until(lambda: not temps(www))
        assert not (www / "up.bin").exists()
        assert (spliced(srv) > 0) is use_splice


def refusing(errno_: int, refused: list[int], *, file_side: bool) -> Callable[..., int]:
    """An os.splice that refuses with ``errno_`` (noting each refusal in ``refused``): every
    call, or only those into a file."""
    real = os.splice

    def fake(src: int, dst: int, count: int, *args: Any, **kwargs: Any) -> int:
        if not file_side or stat.S_ISREG(os.fstat(dst).st_mode):
            refused.append(count)
            raise OSError(errno_, os.strerror(errno_))
        return real(src, dst, count, *args, **kwargs)

    return fake


@pytest.mark.parametrize("file_side", [False, True], ids=["socket", "file"])
@pytest.mark.parametrize("code", [errno.EINVAL, errno.EOPNOTSUPP, errno.ENOSYS])
def test_splice_refused_falls_back(
    www: Path, monkeypatch: pytest.MonkeyPatch, file_side: bool, code: int
) -> None:
    # History: the transport's fall-back when a socket or file system cannot splice (the
    # bytes already in the pipe, for a file that refuses, are handed over as if read).
    refused: list[int] = []
    monkeypatch.setattr(os, "splice", refusing(code, refused, file_side=file_side))
    body = body_of(3 * MIB + 5)
    with running(www) as srv, Client(srv.port) as c:
        c.send(put_head("/up.bin", len(body)) + body + get("/up.bin"))
        assert c.read_response().status == 201
        assert c.read_response().body == body
        assert (www / "up.bin").read_bytes() == body
        assert spliced(srv) == 0 and copied(srv) == len(body)
        assert len(refused) == 1  # tried once; the rest of the connection reads
        assert not temps(www)


def test_file_write_error_answers_and_leaves_nothing(
    www: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Once splice worked, a failed write is a failed write, not a reason to fall back.
    real = os.splice
    calls = {"file": 0}

    def full_disk(src: int, dst: int, count: int, *args: Any, **kwargs: Any) -> int:
        if stat.S_ISREG(os.fstat(dst).st_mode):
            calls["file"] += 1
            if calls["file"] > 3:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(src, dst, count, *args, **kwargs)

    monkeypatch.setattr(os, "splice", full_disk)
    (www / "up.bin").write_bytes(OLD)
    body = body_of(8 * MIB)
    with running(www) as srv, Client(srv.port) as c:
        c.send(put_head("/up.bin", len(body)) + body)
        reply = c.read_response()
        assert reply.status == 507
        assert spliced(srv) > 0
        assert wait_until(lambda: not temps(www))
        # The pipe was dropped with what it held: the next upload is whole.
        calls["file"] = -(10**9)
        with Client(srv.port) as c2:
            c2.send(put_head("/two.bin", len(body)) + body)
            assert c2.read_response().status == 201
        assert (www / "two.bin").read_bytes() == body
    assert (www / "up.bin").read_bytes() == OLD


def test_status_json_says_which_path_ran(www: Path, use_splice: bool) -> None:
    # History: /status.json had no way to tell a spliced upload from a copied one.
    body = body_of(2 * MIB)
    with running(www, use_splice=use_splice, status=("127.0.0.1", 0)) as srv:
        with Client(srv.port) as c:
            c.send(put_head("/up.bin", len(body)) + body)
            assert c.read_response().status == 201
        reply = request(srv.status_port, get("/status.json"))
        counts = json.loads(reply.body)["request_body_bytes"]
        assert counts["spliced"] + counts["copied"] == len(body)
        assert (counts["spliced"] > MIB) is use_splice


def test_one_pipe_per_loop_closed_with_the_server(www: Path) -> None:
    # History: the splice pipe is the loop's, shared by its uploads: it must not grow with
    # them, nor outlive the server.
    body = body_of(MIB)
    before = open_fds()
    with running(www) as srv:
        for name in ("a", "b", "c"):
            with Client(srv.port) as c:
                c.send(put_head(f"/{name}.bin", len(body)) + body)
                assert c.read_response().status == 201
        pipe = srv.server.ctx.pipe
        assert pipe is not None and pipe.r >= 0
        held = {pipe.r, pipe.w}
        assert spliced(srv) > 2 * MIB
    assert pipe.r == -1
    for fd in held:
        with pytest.raises(OSError):
            os.fstat(fd)  # closed (or reused by nothing: this test opens no files meanwhile)
    assert open_fds() == before


def test_status_row_counts_spliced_bytes_in(www: Path) -> None:
    # History: a spliced body never passed through receive(), where the row's bytes_in was
    # counted, so an upload in progress looked stuck at its head.
    body = body_of(4 * MIB)
    with running(www, status=("127.0.0.1", 0)) as srv:
        sock = connect(srv.port)
        try:
            sock.sendall(put_head("/up.bin", len(body)) + body[: 2 * MIB])
            assert wait_until(lambda: spliced(srv) >= MIB)
            rows = json.loads(request(srv.status_port, get("/status.json")).body)["connections"][
                "rows"
            ]
            uploading = [r for r in rows if r["state"] == "READING_BODY"]
            assert len(uploading) == 1
            assert uploading[0]["bytes_in"] >= MIB
        finally:
            sock.close()
        assert wait_until(lambda: not temps(www))


def test_a_turn_splices_only_while_its_work_budget_lasts(
    www: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # History: a turn made up to 16 pipe-fulls (16 MiB to the page cache) back to back, and a
    # probe's GET waited 70-80 ms behind one fast upload.
    from evloop_httpd import reactor
    from evloop_httpd.transport import Transport

    monkeypatch.setattr(reactor, "WORK_BUDGET_S", 0.0)  # spent after the first step of a turn
    per_turn: list[int] = []
    real_ready, real_splice = Transport.ready, os.splice

    def ready(self: Transport, *args: Any) -> None:
        per_turn.append(0)
        real_ready(self, *args)

    def counting_splice(src: int, dst: int, count: int, *args: Any, **kwargs: Any) -> int:
        if stat.S_ISSOCK(os.fstat(src).st_mode) and per_turn:
            per_turn[-1] += 1
        return real_splice(src, dst, count, *args, **kwargs)

    monkeypatch.setattr(Transport, "ready", ready)
    monkeypatch.setattr(os, "splice", counting_splice)
    size = 8 * MIB
    body = body_of(size)
    with running(www) as srv, Client(srv.port) as c:
        c.send(put_head("/up.bin", size) + body)  # far more than a pipe-full waits at a time
        assert c.read_response().status == 201
        assert (www / "up.bin").read_bytes() == body
        assert spliced(srv) >= size - 128 * 1024
    assert max(per_turn) == 1, per_turn
    assert sum(per_turn) >= 8  # 1 MiB a step at most: the body took many turns
