"""FormUpload and the connection's body path for POST, without sockets: bounded work per step,
byte-by-byte feeds, aborts."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from evloop_httpd import upload as upload_mod
from evloop_httpd.connection import Connection, Context
from evloop_httpd.errors import HttpError
from evloop_httpd.form_upload import PARTS_PER_STEP, FormUpload
from evloop_httpd.states import WRITE, ConnState, Input
from evloop_httpd.upload import Upload

from ..helpers import make_config

B = b"XyZboundary"


def part(filename: str, content: bytes) -> bytes:
    return (
        b"--" + B + b'\r\nContent-Disposition: form-data; name="file"; filename="'
        + filename.encode() + b'"\r\n\r\n' + content + b"\r\n"
    )  # fmt: skip


def form(*parts: bytes) -> bytes:
    return b"".join(parts) + b"--" + B + b"--\r\n"


def open_dir(path: Path) -> int:
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY)


class Recorder:
    def __init__(self) -> None:
        self.heads: list[bytes] = []
        self.bugs: list[BaseException] = []

    def transition(self, conn: Connection, old: ConnState, inp: Input, new: ConnState) -> None:
        pass

    def response_head(self, conn: Connection, head: bytes) -> None:
        self.heads.append(head)

    def request_done(self, conn: Connection) -> None:
        pass

    def bug(self, conn: Connection, exc: BaseException) -> None:
        self.bugs.append(exc)

    def debug(self, text: str) -> None:
        pass


def test_byte_by_byte_gives_the_same_files(tmp_path: Path) -> None:
    body = form(part("a.txt", b"--XyZboundar\r\n--" + b"a" * 50), part("b.txt", b""))
    up = FormUpload(open_dir(tmp_path), B, b"/", fsync=False, dotfiles=False, json_answer=True)
    for i in range(len(body)):
        up.write(body[i : i + 1])
    resp = up.finish()
    assert resp.status == 200
    assert [s["name"] for s in json.loads(resp.body)["stored"]] == ["a.txt", "b.txt"]
    assert (tmp_path / "a.txt").read_bytes() == b"--XyZboundar\r\n--" + b"a" * 50
    assert (tmp_path / "b.txt").read_bytes() == b""


def test_a_step_acts_on_at_most_parts_per_step(tmp_path: Path) -> None:
    n = PARTS_PER_STEP * 3 + 5
    body = form(*(part(f"f{i}", b"x") for i in range(n)))
    up = FormUpload(open_dir(tmp_path), B, b"/", fsync=False, dotfiles=False, json_answer=True)
    up.write(body)  # one recv's worth holding every part
    assert up.backlog and len(os.listdir(tmp_path)) <= PARTS_PER_STEP
    steps = 1
    while up.backlog:
        before = len(os.listdir(tmp_path))
        up.work()
        assert len(os.listdir(tmp_path)) - before <= PARTS_PER_STEP
        steps += 1
    assert steps == 4 and len(os.listdir(tmp_path)) == n
    assert up.finish().status == 200


def test_abort_mid_part_removes_the_temp_and_closes_the_folder(tmp_path: Path) -> None:
    fd = open_dir(tmp_path)
    up = FormUpload(fd, B, b"/", fsync=False, dotfiles=False, json_answer=False)
    up.write(part("a.txt", b"whole") + part("b.txt", b"half" * 10)[:-3])
    names = sorted(os.listdir(tmp_path))
    assert names[1] == "a.txt" and names[0].startswith(".evloop-upload-")
    up.abort()
    assert os.listdir(tmp_path) == ["a.txt"]
    with pytest.raises(OSError):
        os.fstat(fd)  # closed
    up.abort()  # again: nothing happens


def test_error_in_the_body_aborts_the_open_part(tmp_path: Path) -> None:
    up = FormUpload(open_dir(tmp_path), B, b"/", fsync=False, dotfiles=False, json_answer=False)
    up.write(part("a.txt", b"content"))
    with pytest.raises(HttpError) as err:
        up.write(b"\r\n--" + B + b"garbage")
    assert err.value.status == 400
    assert os.listdir(tmp_path) == []  # a.txt's delimiter was never whole: never committed


def test_connection_parks_between_steps_of_tiny_parts(tmp_path: Path) -> None:
    # History: without a bound per step, one recv of 64 KiB of tiny parts created hundreds of
    # files in one turn, whatever the reactor's work budget said.
    n = PARTS_PER_STEP * 4
    body = form(*(part(f"f{i}", b"x") for i in range(n)))
    head = (
        b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n"
        b"Content-Type: multipart/form-data; boundary=" % len(body) + B + b"\r\n\r\n"
    )
    ctx = Context(make_config(tmp_path), Recorder())
    ctx.may_start = lambda: False  # the turn's budget is spent after every step
    conn = Connection(ctx, now=0.0)
    conn.receive(head + body, 0.0)
    assert conn.parked and conn.interest == WRITE
    assert conn.state is ConnState.READING_BODY
    turns = 1
    while conn.state is ConnState.READING_BODY:
        assert len(os.listdir(tmp_path)) <= turns * PARTS_PER_STEP + 1  # + one temp file
        conn.resume(0.0)
        turns += 1
    assert turns >= 4
    assert conn.state is ConnState.WRITING_HEADERS
    assert conn.out.startswith(b"HTTP/1.1 303 ")
    assert len(os.listdir(tmp_path)) == n and ctx.uploads == 0


def test_a_file_appearing_mid_part_is_not_overwritten(tmp_path: Path) -> None:
    up = FormUpload(open_dir(tmp_path), B, b"/", fsync=False, dotfiles=False, json_answer=True)
    up.write(part("race.txt", b"from the form")[:-2])  # the part is open, its name was free
    (tmp_path / "race.txt").write_bytes(b"someone else's")
    up.write(b"\r\n--" + B + b"--\r\n")
    resp = up.finish()
    assert resp.status == 409
    assert json.loads(resp.body)["refused"][0]["name"] == "race.txt"
    assert (tmp_path / "race.txt").read_bytes() == b"someone else's"
    assert os.listdir(tmp_path) == ["race.txt"]


@pytest.mark.parametrize("errno_", [errno.EPERM, errno.EOPNOTSUPP])
def test_no_clobber_without_hard_links_checks_then_renames(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, errno_: int
) -> None:
    def link(*args: object, **kwargs: object) -> None:
        raise OSError(errno_, os.strerror(errno_))

    monkeypatch.setattr(upload_mod.os, "link", link)
    fd = open_dir(tmp_path)
    try:
        fresh = Upload(fd, "new.txt", fsync=False, own_dir=False)
        fresh.write(b"new")
        assert fresh.commit(replace=False)[0] is True
        (tmp_path / "old.txt").write_bytes(b"old")
        late = Upload(fd, "old.txt", fsync=False, own_dir=False)
        late.write(b"would replace")
        with pytest.raises(HttpError) as err:
            late.commit(replace=False)
        assert err.value.status == 409
        os.fstat(fd)  # own_dir=False: still open
    finally:
        os.close(fd)
    assert (tmp_path / "new.txt").read_bytes() == b"new"
    assert (tmp_path / "old.txt").read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["new.txt", "old.txt"]


def test_a_spent_budget_ends_a_step_after_one_part(tmp_path: Path) -> None:
    # History: a count of parts per step was no bound on time where a create costs 2 ms (this
    # machine's disk): 32 parts held the loop 40-60 ms and a probe GET waited that long.
    up = FormUpload(open_dir(tmp_path), B, b"/", fsync=False, dotfiles=False, json_answer=True)
    up.may_continue = lambda: False
    up.write(form(*(part(f"f{i}", b"x") for i in range(5))))
    created = [len(os.listdir(tmp_path))]
    while up.backlog:
        up.work()
        created.append(len(os.listdir(tmp_path)))
    # One part per step (the last step also sees the close delimiter).
    assert created == [1, 2, 3, 4, 5]
    assert up.finish().status == 200
