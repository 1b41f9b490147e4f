"""The connection's body sink (issue 17): what it offers a transport that splices a PUT body
into its file itself, and what it does when told how that went. No sockets: the test plays
the transport, writing into the offered descriptor with os.write."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from evloop_httpd.connection import Connection
from evloop_httpd.states import ConnState

from .test_connection import flush_out, make

S = ConnState
BODY = bytes(range(256)) * 1024  # 256 KiB


def put_head(length: int, extra: str = "") -> bytes:
    return f"PUT /up.bin HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n{extra}\r\n".encode()


def temps(root: Path) -> list[Path]:
    return list(root.glob(".evloop-upload-*"))


def splice_rest(conn: Connection, data: bytes, step: int, now: float = 0.0) -> None:
    """What the transport does: write into the sink's descriptor, never past what is due,
    then say so."""
    while data:
        sink = conn.body_sink()
        assert sink is not None
        fd, due = sink
        piece = data[: min(step, due)]
        assert os.write(fd, piece) == len(piece)
        data = data[len(piece) :]
        conn.received_into_file(len(piece), now)


def test_sink_offered_after_the_head_part_then_commits(tmp_path: Path) -> None:
    # History: before issue 17 a connection had no body_sink: every byte went through receive.
    conn, rec = make(tmp_path)
    conn.receive(put_head(len(BODY)) + BODY[:1000], 0.0)  # part of the body came with the head
    assert conn.state is S.READING_BODY
    sink = conn.body_sink()
    assert sink is not None and sink[1] == len(BODY) - 1000
    assert conn.ctx.body_copied == 1000
    splice_rest(conn, BODY[1000:], 70_000, now=1.0)
    assert conn.ctx.body_spliced == len(BODY) - 1000
    assert conn.state is S.WRITING_HEADERS
    assert flush_out(conn).startswith(b"HTTP/1.1 201 ")
    assert (tmp_path / "up.bin").read_bytes() == BODY
    assert not temps(tmp_path)
    assert conn.ctx.uploads == 0
    assert not rec.bugs


def test_progress_moves_the_stall_deadline(tmp_path: Path) -> None:
    conn, _ = make(tmp_path, timeouts={"stall_s": 5.0, "min_rate_bytes_s": 1})
    conn.receive(put_head(len(BODY)), 0.0)
    assert conn.deadline == 5.0
    fd, _due = conn.body_sink()  # type: ignore[misc]
    os.write(fd, BODY[:4096])
    conn.received_into_file(4096, 3.0)
    assert conn.deadline == 8.0  # stall_s from the last progress
    assert conn.body_sink() == (fd, len(BODY) - 4096)


def test_no_sink_where_bytes_must_be_decoded_or_wait(tmp_path: Path) -> None:
    conn, _ = make(tmp_path)
    assert conn.body_sink() is None  # no request
    conn.receive(b"PUT /c.bin HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", 0.0)
    assert conn.state is S.READING_BODY
    assert conn.body_sink() is None  # chunked: framing to decode
    conn2, _ = make(tmp_path)
    boundary = "b0undary"
    conn2.receive(
        (
            f"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n"
        ).encode(),
        0.0,
    )
    assert conn2.state is S.READING_BODY
    assert conn2.body_sink() is None  # a form: parts to parse
    conn3, _ = make(tmp_path)
    conn3.receive(put_head(len(BODY)), 0.0)
    conn3.parked = True
    assert conn3.body_sink() is None  # parked: starts nothing this turn
    conn3.parked = False
    conn3.inbuf += b"x"  # bytes buffered: they come first, by the read path
    assert conn3.body_sink() is None


def test_expect_continue_then_sink(tmp_path: Path) -> None:
    conn, _ = make(tmp_path)
    conn.receive(put_head(len(BODY), "Expect: 100-continue\r\n"), 0.0)
    assert conn.body_sink() is None  # the 100 goes first
    assert flush_out(conn).startswith(b"HTTP/1.1 100 ")
    assert conn.body_sink() is not None
    splice_rest(conn, BODY, 1 << 20)
    assert flush_out(conn).startswith(b"HTTP/1.1 201 ")
    assert (tmp_path / "up.bin").read_bytes() == BODY


def test_sink_failed_answers_and_leaves_no_temp(tmp_path: Path) -> None:
    (tmp_path / "up.bin").write_bytes(b"old")
    conn, _ = make(tmp_path)
    conn.receive(put_head(len(BODY)), 0.0)
    assert temps(tmp_path)
    conn.sink_failed(OSError(errno.ENOSPC, "No space left on device"), 1.0)
    assert conn.body_sink() is None
    reply = flush_out(conn)
    assert reply.startswith(b"HTTP/1.1 507 ")
    assert b"Connection: close" in reply
    assert not temps(tmp_path)
    assert (tmp_path / "up.bin").read_bytes() == b"old"
    assert conn.ctx.uploads == 0


def test_fsync_syncs_spliced_bytes_as_they_go(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[int] = []
    real = os.fdatasync
    monkeypatch.setattr(os, "fdatasync", lambda fd: (synced.append(fd), real(fd))[1])
    body = os.urandom(9 * 1024 * 1024)
    conn, _ = make(tmp_path, fsync=True)
    conn.receive(put_head(len(body)), 0.0)
    splice_rest(conn, body, 1 << 20)
    assert len(synced) >= 2  # every SYNC_EVERY_BYTES (4 MiB) of the 9, as the read path does
    assert flush_out(conn).startswith(b"HTTP/1.1 201 ")
    assert (tmp_path / "up.bin").read_bytes() == body


def test_told_after_the_end_is_ignored(tmp_path: Path) -> None:
    conn, rec = make(tmp_path)
    conn.receive(put_head(10) + b"0123456789", 0.0)
    assert conn.state is S.WRITING_HEADERS
    conn.received_into_file(5, 0.0)  # not reading a body: nothing happens
    conn.sink_failed(OSError(errno.EIO, "I/O error"), 0.0)
    assert flush_out(conn).startswith(b"HTTP/1.1 201 ")
    assert not rec.bugs
