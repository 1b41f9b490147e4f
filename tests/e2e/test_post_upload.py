"""POST multipart/form-data uploads into a folder, over raw sockets (issue 14).

Bytes on the wire, files on disk: one part, several, byte by byte, overwrite refused and
allowed, hostile names, NFC, aborts at many cut points, --max-upload, and the access rules.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import json
import os
import socket
import struct
import unicodedata
from pathlib import Path

import pytest

from evloop_httpd import auth, hasher
from evloop_httpd import upload as upload_mod

from ..helpers import Client, connect, request, running, wait_until

BOUNDARY = "----formBoundaryx7Qp"


def part(name: str, content: bytes, filename: str | None = None, ctype: str = "") -> bytes:
    disp = f'form-data; name="{name}"'
    if filename is not None:
        disp += f'; filename="{filename}"'
    head = f"--{BOUNDARY}\r\nContent-Disposition: {disp}\r\n"
    if ctype:
        head += f"Content-Type: {ctype}\r\n"
    return head.encode("utf-8") + b"\r\n" + content + b"\r\n"


def form(*parts: bytes) -> bytes:
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


def post(path: str, body: bytes, extra: str = "", accept: str | None = None) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
    )
    if accept is not None:
        head += f"Accept: {accept}\r\n"
    return (head + extra + "\r\n").encode() + body


def temps(folder: Path) -> list[str]:
    return [n for n in os.listdir(folder) if n.startswith(".evloop-upload-")]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "www"
    (r / "in").mkdir(parents=True)
    return r


def test_one_file_303_back_to_the_folder(root: Path) -> None:
    with running(root) as srv:
        reply = request(srv.port, post("/in/", form(part("file", b"hello\n", "a.txt"))))
    assert reply.status == 303
    assert reply.header("Location") == "/in/"
    assert (root / "in" / "a.txt").read_bytes() == b"hello\n"
    assert temps(root / "in") == []


def test_several_parts_json_answer_with_names_sizes_etags(root: Path) -> None:
    body = form(
        part("file", b"A" * 1000, "a.bin"),
        part("note", b"ignored field"),
        part("file", b"", "empty.txt"),
        part("file", bytes(range(256)) * 300, "b.bin", "application/octet-stream"),
    )
    with running(root) as srv:
        reply = request(srv.port, post("/in/", body, accept="application/json"))
        assert reply.status == 200, reply.body
        assert reply.header("Content-Type") == "application/json"
        doc = json.loads(reply.body)
        names = [s["name"] for s in doc["stored"]]
        assert names == ["a.bin", "empty.txt", "b.bin"]
        assert [s["size"] for s in doc["stored"]] == [1000, 0, 76800]
        # The ETags are the ones a GET of each file then shows.
        for s in doc["stored"]:
            got = request(
                srv.port, f"HEAD /in/{s['name']} HTTP/1.1\r\nHost: t\r\n\r\n".encode(), True
            )
            assert got.header("ETag") == s["etag"]
    assert (root / "in" / "b.bin").read_bytes() == bytes(range(256)) * 300
    assert (root / "in" / "empty.txt").read_bytes() == b""
    assert not (root / "in" / "note").exists()


def test_root_folder_and_chunked_body(root: Path) -> None:
    body = form(part("file", b"xyz" * 5000, "c.txt"))
    chunked = b"".join(
        b"%x\r\n%s\r\n" % (len(body[i : i + 777]), body[i : i + 777])
        for i in range(0, len(body), 777)
    )
    data = (
        (
            f"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
            f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n\r\n"
        ).encode()
        + chunked
        + b"0\r\n\r\n"
    )
    with running(root) as srv:
        reply = request(srv.port, data)
    assert reply.status == 303 and reply.header("Location") == "/"
    assert (root / "c.txt").read_bytes() == b"xyz" * 5000


def test_byte_by_byte_then_keep_alive(root: Path) -> None:
    body = form(part("overwrite", b"1"), part("file", b"one\r\n--notboundary\r\n", "x.txt"))
    data = post("/in/", body)
    with running(root) as srv, Client(srv.port) as c:
        for i in range(len(data)):
            c.send(data[i : i + 1])
        reply = c.read_response()
        assert reply.status == 303
        # The body was read to its end: the connection serves the next request.
        c.send(b"GET /in/x.txt HTTP/1.1\r\nHost: t\r\n\r\n")
        assert c.read_response().body == b"one\r\n--notboundary\r\n"


def test_many_tiny_parts_in_one_body(root: Path) -> None:
    # More parts than one step acts on (PARTS_PER_STEP): all stored, none lost at a step edge.
    body = form(*(part("file", b"%d" % i, f"f{i}.txt") for i in range(300)))
    with running(root) as srv:
        reply = request(srv.port, post("/in/", body, accept="application/json"))
    assert reply.status == 200
    assert len(json.loads(reply.body)["stored"]) == 300
    for i in range(300):
        assert (root / "in" / f"f{i}.txt").read_bytes() == b"%d" % i
    assert temps(root / "in") == []


def test_existing_file_refused_409_others_stored(root: Path) -> None:
    (root / "in" / "old.txt").write_bytes(b"keep me")
    body = form(part("file", b"new", "old.txt"), part("file", b"fresh", "new.txt"))
    with running(root) as srv:
        reply = request(srv.port, post("/in/", body, accept="application/json"))
        assert reply.status == 409
        doc = json.loads(reply.body)
        assert "old.txt" in doc["error"]
        assert [s["name"] for s in doc["stored"]] == ["new.txt"]
        assert doc["refused"][0]["name"] == "old.txt"
        text = request(srv.port, post("/in/", form(part("file", b"x", "old.txt"))))
        assert text.status == 409 and b"old.txt" in text.body.splitlines()[-1]
    assert (root / "in" / "old.txt").read_bytes() == b"keep me"
    assert (root / "in" / "new.txt").read_bytes() == b"fresh"
    assert temps(root / "in") == []


def test_overwrite_field_before_the_files_replaces(root: Path) -> None:
    (root / "in" / "old.txt").write_bytes(b"old")
    body = form(part("overwrite", b"1"), part("file", b"replaced", "old.txt"))
    with running(root) as srv:
        reply = request(srv.port, post("/in/", body, accept="application/json"))
    assert reply.status == 200
    assert json.loads(reply.body)["stored"][0]["created"] is False
    assert (root / "in" / "old.txt").read_bytes() == b"replaced"


def test_overwrite_field_after_the_files_is_too_late(root: Path) -> None:
    (root / "in" / "old.txt").write_bytes(b"old")
    body = form(part("file", b"replaced", "old.txt"), part("overwrite", b"1"))
    with running(root) as srv:
        reply = request(srv.port, post("/in/", body))
    assert reply.status == 409
    assert (root / "in" / "old.txt").read_bytes() == b"old"


def test_a_folder_of_that_name_is_never_replaced(root: Path) -> None:
    (root / "in" / "d").mkdir()
    body = form(part("overwrite", b"1"), part("file", b"x", "d"))
    with running(root) as srv:
        reply = request(srv.port, post("/in/", body))
    assert reply.status == 409 and (root / "in" / "d").is_dir()


# (as sent in the quoted filename, as decoded, what the refusal says)
HOSTILE = [
    ("", "", "is empty"),
    (".", ".", "dot-segment"),
    ("..", "..", "dot-segment"),
    ("a/..", "a/..", "dot-segment"),
    ("dir/", "dir/", "is empty"),
    ("a%0Ab", "a\nb", "control character"),  # browsers write CR and LF as %0D, %0A
    ("a%0D", "a\r", "control character"),
    ("a\tb", "a\tb", "control character"),  # a raw tab is legal in a field value
    (".hidden", ".hidden", "starts with a dot"),
    ("x" * 256, "x" * 256, "over 255 bytes"),
    ("é" * 128, "é" * 128, "over 255 bytes"),  # 256 bytes of UTF-8
    ("%2e%2e", "%2e%2e", "encoded"),
    (".evloop-upload-0123456789abcdef.tmp", ".evloop-upload-0123456789abcdef.tmp", "reserved"),
]


@pytest.mark.parametrize(("sent", "name", "why"), HOSTILE)
def test_hostile_name_is_a_400_naming_it(root: Path, sent: str, name: str, why: str) -> None:
    body = form(part("file", b"evil", sent), part("file", b"fine", "ok.txt"))
    with running(root, dotfiles=why == "reserved") as srv:
        reply = request(srv.port, post("/in/", body, accept="application/json"))
        text = request(srv.port, post("/in/", form(part("file", b"evil", sent))))
    assert reply.status == 400, reply.body
    doc = json.loads(reply.body)
    shown = ascii(name if len(name) <= 80 else name[:80] + "...")
    assert why in doc["error"] and shown in doc["error"]
    assert doc["refused"][0]["name"] == name
    # The plain-text answer says it on its last line (what the page's script shows).
    assert text.status == 400 and shown in text.body.decode().splitlines()[-1]
    # Nothing escaped the folder, nothing stray was written; the good part was stored.
    assert sorted(os.listdir(root / "in")) == ["ok.txt"]
    assert sorted(os.listdir(root)) == ["in"]


def test_raw_control_character_in_a_part_header_is_a_400(root: Path) -> None:
    # Not a legal field value (RFC 9110 §5.5): the part's header is refused, and the request.
    with running(root) as srv:
        reply = request(srv.port, post("/in/", form(part("file", b"evil", "a\x01b"))))
    assert reply.status == 400 and b"control character" in reply.body
    assert os.listdir(root / "in") == []


def test_nul_in_a_name_is_refused(root: Path) -> None:
    # A raw NUL in the Content-Disposition line: the part header grammar refuses it first.
    body = form(part("file", b"evil", "a\x00b"))
    with running(root) as srv:
        reply = request(srv.port, post("/in/", body))
    assert reply.status == 400
    assert os.listdir(root / "in") == []


def test_path_in_the_name_keeps_the_last_component(root: Path) -> None:
    body = form(
        part("file", b"w", "C:\\Users\\me\\win.txt"), part("file", b"u", "../../etc/unix.txt")
    )
    with running(root) as srv:
        reply = request(srv.port, post("/in/", body))
    assert reply.status == 303
    assert sorted(os.listdir(root / "in")) == ["unix.txt", "win.txt"]
    assert sorted(os.listdir(root)) == ["in"]


def test_names_are_stored_in_nfc(root: Path) -> None:
    nfd = unicodedata.normalize("NFD", "café.txt")
    assert nfd != "café.txt"
    with running(root) as srv:
        reply = request(
            srv.port, post("/in/", form(part("file", b"c", nfd)), accept="application/json")
        )
    assert reply.status == 200
    assert json.loads(reply.body)["stored"][0]["name"] == "café.txt"
    assert os.listdir(root / "in") == ["café.txt"]


def test_dotfile_allowed_with_dotfiles(root: Path) -> None:
    with running(root, dotfiles=True) as srv:
        reply = request(srv.port, post("/in/", form(part("file", b"d", ".env"))))
    assert reply.status == 303 and (root / "in" / ".env").read_bytes() == b"d"


def test_abort_at_any_byte_leaves_nothing(root: Path) -> None:
    big = bytes(range(256)) * 64
    body = form(part("file", b"small", "s.txt"), part("file", big, "big.bin"))
    data = post("/in/", body)
    head_len = data.index(b"\r\n\r\n") + 4
    second = data.index(b'filename="big.bin"')
    # A part is whole once the delimiter after it is in: "\r\n--" + boundary.
    small_done = data.index(f"\r\n--{BOUNDARY}".encode(), head_len + 10) + len(BOUNDARY) + 4
    big_done = len(data) - len(b"--\r\n")
    cuts = sorted(
        {head_len + k for k in range(0, 200, 7)}
        | set(range(second - 60, second + 120, 5))
        | {len(data) - k for k in range(1, 60, 3)}
        | {head_len + len(body) // 2, small_done - 1, small_done, big_done - 1, big_done}
    )
    folder = root / "in"
    with running(root) as srv:
        for cut in cuts:
            # The client stops sending (FIN) and reads what the server says until it closes:
            # by then the server has acted on every byte.
            with Client(srv.port, recv_size=65536) as c:
                c.send(data[:cut])
                c.sock.shutdown(socket.SHUT_WR)
                assert c.closed_by_peer(), cut
                assert c.buf.startswith(b"HTTP/1.1 400 "), (cut, c.buf[:80])
            assert srv.server.ctx.uploads == 0, cut
            # No temp file; a target only once its part was whole, and then with every byte.
            assert temps(folder) == [], cut
            assert (folder / "s.txt").exists() == (cut >= small_done), cut
            assert (folder / "big.bin").exists() == (cut >= big_done), cut
            if cut >= small_done:
                assert (folder / "s.txt").read_bytes() == b"small"
                (folder / "s.txt").unlink()
            if cut >= big_done:
                assert (folder / "big.bin").read_bytes() == big
                (folder / "big.bin").unlink()
        # The same cuts with a reset instead of a FIN: nothing is answered, nothing is left.
        for cut in cuts:
            if cut >= small_done:
                break
            sock = connect(srv.port)
            sock.sendall(data[:cut])
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
        assert wait_until(lambda: srv.server.ctx.uploads == 0 and temps(folder) == [])
        assert os.listdir(folder) == []


def test_max_upload_counts_the_whole_body(root: Path) -> None:
    body = form(part("file", b"a" * 600, "a.txt"), part("file", b"b" * 600, "b.txt"))
    with running(root, limits={"max_upload_bytes": 1000}) as srv:
        reply = request(srv.port, post("/in/", body))
        assert reply.status == 413
        chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
        data = (
            f"POST /in/ HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
            f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n\r\n"
        ).encode() + chunked
        assert request(srv.port, data).status == 413
    assert os.listdir(root / "in") == []


def test_not_multipart_is_415_and_post_to_a_file_405(root: Path) -> None:
    (root / "in" / "f.txt").write_bytes(b"f")
    with running(root) as srv:
        plain = request(
            srv.port,
            b"POST /in/ HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain\r\n"
            b"Content-Length: 2\r\n\r\nhi",
        )
        assert plain.status == 415
        to_file = request(srv.port, post("/in/f.txt", form(part("file", b"x", "y.txt"))))
        assert to_file.status == 405
        assert "POST" not in (to_file.header("Allow") or "POST")
        missing = request(srv.port, post("/nope/", form(part("file", b"x", "y.txt"))))
        assert missing.status == 404
        # Allow names POST for a folder's URL only.
        folder = request(srv.port, b"OPTIONS /in/ HTTP/1.1\r\nHost: t\r\n\r\n")
        assert folder.header("Allow") == "GET, HEAD, OPTIONS, PUT, POST"
        for target in (b"*", b"/in/f.txt", b"/nope/"):
            opts = request(srv.port, b"OPTIONS %s HTTP/1.1\r\nHost: t\r\n\r\n" % target)
            assert opts.header("Allow") == "GET, HEAD, OPTIONS, PUT", target
        patch = request(srv.port, b"PATCH /in/ HTTP/1.1\r\nHost: t\r\n\r\n")
        assert patch.status == 405 and patch.header("Allow") == "GET, HEAD, OPTIONS, PUT, POST"
    assert sorted(os.listdir(root / "in")) == ["f.txt"]


def test_read_only_is_405_with_allow(root: Path) -> None:
    with running(root, read_only=True) as srv:
        reply = request(srv.port, post("/in/", form(part("file", b"x", "y.txt"))))
    assert reply.status == 405 and reply.header("Allow") == "GET, HEAD, OPTIONS"
    assert os.listdir(root / "in") == []


def test_public_without_accounts_is_403(root: Path) -> None:
    with running(root, public=True) as srv:
        reply = request(srv.port, post("/in/", form(part("file", b"x", "y.txt"))))
    assert reply.status == 403
    assert os.listdir(root / "in") == []


def _cheap_hash(password: str) -> str:
    salt = b"0123456789abcdef"
    key = hasher._scrypt(password.encode(), salt, 4, 8, 1, 32)
    return f"$scrypt$ln=4,r=8,p=1${hasher._b64encode(salt)}${hasher._b64encode(key)}"


def test_accounts_401_then_stored_with_credentials(root: Path, tmp_path: Path) -> None:
    accounts = tmp_path / "accounts"
    accounts.write_text(f"ann:{_cheap_hash('pw')}\n")
    token = base64.b64encode(b"ann:pw").decode()
    with running(root, auth_file=accounts) as srv:
        anon = request(srv.port, post("/in/", form(part("file", b"x", "y.txt"))))
        assert anon.status == 401 and anon.header("WWW-Authenticate") is not None
        assert os.listdir(root / "in") == []
        ok = request(
            srv.port,
            post("/in/", form(part("file", b"x", "y.txt")), f"Authorization: Basic {token}\r\n"),
        )
        assert ok.status == 303
    assert (root / "in" / "y.txt").read_bytes() == b"x"
    assert auth.SAFE_METHODS.isdisjoint({b"POST"})


def test_truncated_form_is_400_and_keeps_earlier_parts(root: Path) -> None:
    # The body ends (Content-Length reached) without the close delimiter.
    body = part("file", b"whole", "a.txt") + part("file", b"cut", "b.txt")
    with running(root) as srv:
        reply = request(srv.port, post("/in/", body))
    assert reply.status == 400 and b"closing boundary" in reply.body
    assert (root / "in" / "a.txt").read_bytes() == b"whole"
    assert os.listdir(root / "in") == ["a.txt"]  # b.txt's temp file was removed


def test_100_continue(root: Path) -> None:
    body = form(part("file", b"c", "cont.txt"))
    head, _, rest = post("/in/", body, "Expect: 100-continue\r\n").partition(b"\r\n\r\n")
    with running(root) as srv, Client(srv.port) as c:
        c.send(head + b"\r\n\r\n")
        assert c.read_response().status == 100
        c.send(rest)
        assert c.read_response().status == 303
    assert (root / "in" / "cont.txt").read_bytes() == b"c"


def test_timeout_mid_part_removes_the_temp_file(root: Path) -> None:
    data = post("/in/", form(part("file", b"z" * 100_000, "slow.bin")))
    with running(root, timeouts={"stall_s": 0.5}) as srv, Client(srv.port) as c:
        c.send(data[:5000])
        assert wait_until(lambda: temps(root / "in") != [])
        reply = c.read_response()
        assert reply.status == 408
    assert temps(root / "in") == [] and not (root / "in" / "slow.bin").exists()


@pytest.mark.parametrize(("err", "status"), [(errno.ENOSPC, 507), (errno.EDQUOT, 507)])
def test_disk_fills_mid_part(
    root: Path, monkeypatch: pytest.MonkeyPatch, err: int, status: int
) -> None:
    real_write = os.write
    written = [0]

    def write(fd: int, data: bytes | memoryview) -> int:
        if written[0] > 100_000:
            raise OSError(err, os.strerror(err))
        n = real_write(fd, data)
        written[0] += n
        return n

    monkeypatch.setattr(upload_mod.os, "write", write)
    body = form(part("file", b"first", "a.txt"), part("file", b"z" * 1_000_000, "b.bin"))
    with running(root) as srv, Client(srv.port) as c:
        # The server may close before taking it all; its answer is already queued.
        with contextlib.suppress(OSError):
            c.send(post("/in/", body)[:-100_000])
        reply = c.read_response()
        assert c.closed_by_peer()
    assert reply.status == status and reply.header("Connection") == "close"
    # The part committed before the disk filled stays; the one it filled in does not.
    assert os.listdir(root / "in") == ["a.txt"]


def test_disk_full_at_commit_is_507(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def link(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(upload_mod.os, "link", link)
    with running(root) as srv:
        reply = request(srv.port, post("/in/", form(part("file", b"abc", "new.txt"))))
    assert reply.status == 507
    assert os.listdir(root / "in") == []


@pytest.mark.parametrize("fsync", [True, False])
def test_fsync_each_part_before_the_answer(
    root: Path, monkeypatch: pytest.MonkeyPatch, fsync: bool
) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        real_fsync(fd)
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))

    monkeypatch.setattr(upload_mod.os, "fsync", recording_fsync)
    body = form(part("file", b"1", "a.txt"), part("file", b"2", "b.txt"))
    with running(root, fsync=fsync) as srv:
        reply = request(srv.port, post("/in/", body))
        seen = list(synced)  # as the answer arrived
    assert reply.status == 303
    folder = str(root / "in")
    if fsync:
        # Each part: its data under the temp name, then the folder with the new entry.
        assert len(seen) == 4
        assert ".evloop-upload-" in seen[0] and ".evloop-upload-" in seen[2]
        assert seen[1] == seen[3] == folder
    else:
        assert seen == []


def test_upload_cap_counts_a_form_upload(root: Path) -> None:
    # One upload allowed at a time: a POST whose body is still arriving holds the slot.
    body = form(part("file", b"x" * 1000, "a.txt"))
    with running(root, max_uploads=1) as srv, Client(srv.port) as slow:
        slow.send(post("/in/", body)[:-10])
        assert wait_until(lambda: srv.server.ctx.uploads == 1)
        second = request(srv.port, post("/in/", form(part("file", b"y", "b.txt"))))
        assert second.status == 503 and second.header("Retry-After") == "1"
        slow.send(post("/in/", body)[-10:])
        assert slow.read_response().status == 303
    assert os.listdir(root / "in") == ["a.txt"]
