"""Path safety end to end: every traversal trick is refused for GET, HEAD and PUT alike.

Each test plants a secret just outside the root (and a dotfile inside it) and checks both the
status and that the secret's bytes never appear on the wire, nor is anything written outside.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from evloop_httpd.files import os_error_to_http

from ..helpers import Client, RunningServer, make_config, request, running, wait_until

SECRET = b"TOP-SECRET-outside-the-root\n"
DOT_SECRET = b"API_KEY=hunter2\n"

# (raw target, what a sane server must not do: serve or write outside the root)
TRAVERSALS = [
    b"/../secret.txt",
    b"/sub/../../secret.txt",
    b"/%2e%2e/secret.txt",
    b"/%2E%2E/secret.txt",
    b"/.%2e/secret.txt",
    b"/%2e./secret.txt",
    b"/sub%2f..%2f..%2fsecret.txt",
    b"/sub%2F%2E%2E%2F%2E%2E%2Fsecret.txt",
    b"/%252e%252e/secret.txt",  # double encoding: decoded once, it is a literal name
    b"/%252e%252e%252fsecret.txt",
    b"/..%5csecret.txt",
    b"/sub%5c..%5c..%5csecret.txt",
    b"/secret.txt%00.html",
    b"/%00",
    b"/%c0%ae%c0%ae/secret.txt",  # overlong UTF-8 for "."
    b"/%c0%af../secret.txt",  # overlong UTF-8 for "/"
    b"/%e0%80%ae%e0%80%ae/secret.txt",
    b"/./secret.txt",
    b"/sub/./../../secret.txt",
    b"http://x/../secret.txt",
    b"http://x/%2e%2e/secret.txt",
    b"http://x/sub/%2e%2e%2f%2e%2e%2fsecret.txt",
    b"http://x/..%5csecret.txt",
    b"http://x/%00",
    b"../secret.txt",
    b"..%2fsecret.txt",
    b"//../secret.txt",
    b"/escape/secret.txt",  # a symlinked folder that points out of the root
    b"/escape-file",  # a symlinked file that points out of the root
    b"http://x/escape-file",
]

HIDDEN = [
    b"/.env",
    b"/.git/config",
    b"/%2egit/config",
    b"/%2Eenv",
    b"/sub/.env",
    b"http://x/.env",
]


@pytest.fixture
def layout(tmp_path: Path) -> Path:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(SECRET)
    (tmp_path / "secret.txt").write_bytes(SECRET)
    root = tmp_path / "www"
    (root / "sub").mkdir(parents=True)
    (root / "hello.txt").write_bytes(b"hello\n")
    (root / ".env").write_bytes(DOT_SECRET)
    (root / ".git").mkdir()
    (root / ".git" / "config").write_bytes(DOT_SECRET)
    (root / "sub" / ".env").write_bytes(DOT_SECRET)
    (root / "escape").symlink_to(outside)
    (root / "escape-file").symlink_to(outside / "secret.txt")
    (root / "inner-link.txt").symlink_to(root / "hello.txt")
    return root


@pytest.fixture
def srv(layout: Path) -> Iterator[RunningServer]:
    s = RunningServer(make_config(layout))
    yield s
    s.stop()


def raw(method: bytes, target: bytes, body: bytes | None = None) -> bytes:
    head = method + b" " + target + b" HTTP/1.1\r\nHost: x\r\n"
    if body is not None:
        head += b"Content-Length: %d\r\n" % len(body)
    return head + b"\r\n" + (body or b"")


def outside_files(root: Path) -> dict[str, bytes]:
    base = root.parent
    return {
        str(p): p.read_bytes()
        for p in base.rglob("*")
        if p.is_file() and not p.is_relative_to(root)
    }


@pytest.mark.parametrize("target", TRAVERSALS, ids=lambda t: t.decode("latin-1"))
@pytest.mark.parametrize("method", [b"GET", b"HEAD"])
def test_traversal_refused_for_reads(srv: RunningServer, method: bytes, target: bytes) -> None:
    reply = request(srv.port, raw(method, target), head_request=method == b"HEAD")
    assert reply.status in (400, 403, 404), reply.raw_head
    assert SECRET not in reply.body
    # Still serving, and serving the right bytes, afterwards.
    assert request(srv.port, raw(b"GET", b"/hello.txt")).body == b"hello\n"


@pytest.mark.parametrize("target", TRAVERSALS, ids=lambda t: t.decode("latin-1"))
def test_traversal_refused_for_put(srv: RunningServer, layout: Path, target: bytes) -> None:
    before = outside_files(layout)
    reply = request(srv.port, raw(b"PUT", target, b"pwned\n"))
    assert reply.status in (400, 403, 404, 409), reply.raw_head
    assert outside_files(layout) == before
    assert not list(layout.parent.rglob("*pwned*"))
    for p in layout.parent.rglob("*"):
        if p.is_file() and not p.is_symlink():
            assert p.read_bytes() != b"pwned\n", p


@pytest.mark.parametrize("target", HIDDEN, ids=lambda t: t.decode("latin-1"))
def test_dotfiles_hidden_by_default(srv: RunningServer, target: bytes) -> None:
    for method in (b"GET", b"HEAD"):
        reply = request(srv.port, raw(method, target), head_request=method == b"HEAD")
        assert reply.status == 404, reply.raw_head
        assert DOT_SECRET not in reply.body


@pytest.mark.parametrize("target", [b"/.env", b"/.git/config", b"/sub/.new", b"/.hidden"])
def test_put_to_hidden_names_refused(srv: RunningServer, layout: Path, target: bytes) -> None:
    reply = request(srv.port, raw(b"PUT", target, b"overwrite\n"))
    assert reply.status == 403
    assert (layout / ".env").read_bytes() == DOT_SECRET
    assert (layout / ".git" / "config").read_bytes() == DOT_SECRET
    assert not (layout / "sub" / ".new").exists()
    assert not (layout / ".hidden").exists()


def test_dotfiles_flag_serves_them(layout: Path) -> None:
    with running(layout, dotfiles=True) as s:
        assert request(s.port, raw(b"GET", b"/.env")).body == DOT_SECRET
        assert request(s.port, raw(b"GET", b"/.git/config")).body == DOT_SECRET
        # Upload temp files stay hidden even then.
        (layout / ".evloop-upload-0123456789abcdef.tmp").write_bytes(b"partial")
        reply = request(s.port, raw(b"GET", b"/.evloop-upload-0123456789abcdef.tmp"))
        assert reply.status == 404
        assert b"partial" not in reply.body
        # And cannot be written to by name.
        reply = request(s.port, raw(b"PUT", b"/.evloop-upload-0123456789abcdef.tmp", b"x"))
        assert reply.status == 403


def test_symlink_inside_root_followed(srv: RunningServer) -> None:
    assert request(srv.port, raw(b"GET", b"/inner-link.txt")).body == b"hello\n"


def test_follow_symlinks_flag_allows_outside_reads_but_never_writes(layout: Path) -> None:
    with running(layout, follow_symlinks=True) as s:
        assert request(s.port, raw(b"GET", b"/escape-file")).body == SECRET
        assert request(s.port, raw(b"GET", b"/escape/secret.txt")).body == SECRET
        # Writing through a link out of the root is refused whatever the flag says.
        assert request(s.port, raw(b"PUT", b"/escape/new.txt", b"pwned")).status == 403
        assert request(s.port, raw(b"PUT", b"/escape-file", b"pwned")).status == 403
        assert not (layout.parent / "outside" / "new.txt").exists()
        assert (layout.parent / "outside" / "secret.txt").read_bytes() == SECRET
        # Dot-segments stay refused with the flag too.
        assert request(s.port, raw(b"GET", b"/../secret.txt")).status == 403


def test_put_through_symlink_to_file_inside_root_replaces_link_not_target(
    srv: RunningServer, layout: Path
) -> None:
    reply = request(srv.port, raw(b"PUT", b"/inner-link.txt", b"new\n"))
    # The link is not a regular file: refused rather than written through.
    assert reply.status == 403
    assert (layout / "hello.txt").read_bytes() == b"hello\n"
    assert (layout / "inner-link.txt").is_symlink()


def test_traversal_on_keep_alive_does_not_poison_the_connection(srv: RunningServer) -> None:
    with Client(srv.port) as c:
        c.send(raw(b"GET", b"/sub/../../secret.txt") + raw(b"GET", b"/hello.txt"))
        first = c.read_response()
        assert first.status == 403
        assert SECRET not in first.body
        assert c.read_response().body == b"hello\n"


def test_fifo_is_not_served(srv: RunningServer, layout: Path) -> None:
    os.mkfifo(layout / "pipe")
    # Opening a FIFO for reading would block the loop forever if it were not O_NONBLOCK.
    assert request(srv.port, raw(b"GET", b"/pipe")).status == 404
    assert request(srv.port, raw(b"GET", b"/hello.txt")).status == 200


def test_literal_percent_in_a_name_still_works(srv: RunningServer, layout: Path) -> None:
    # The double-encoding refusal is narrow: only an encoded dot, slash, backslash or NUL.
    assert request(srv.port, raw(b"PUT", b"/100%25.txt", b"full\n")).status == 201
    assert (layout / "100%.txt").read_bytes() == b"full\n"
    assert request(srv.port, raw(b"GET", b"/100%25.txt")).body == b"full\n"


def test_socket_is_not_served(srv: RunningServer, layout: Path) -> None:
    # History: open() of a Unix socket fails with ENXIO, which was mapped to 500.
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(layout / "s"))
        for method in (b"GET", b"HEAD"):
            reply = request(srv.port, raw(method, b"/s"), head_request=method == b"HEAD")
            assert reply.status == 404, reply.raw_head
        assert request(srv.port, raw(b"PUT", b"/s", b"x")).status == 403
        assert stat.S_ISSOCK(os.lstat(layout / "s").st_mode)
    finally:
        sock.close()
    assert request(srv.port, raw(b"GET", b"/hello.txt")).status == 200


@pytest.mark.parametrize("err", [errno.ENXIO, errno.ENODEV])
def test_device_without_driver_is_a_404(err: int) -> None:
    # History: a device node whose driver is absent (open gives ENXIO or ENODEV) was a 500.
    exc = os_error_to_http(OSError(err, os.strerror(err)))
    assert exc.status == 404


def test_folder_swapped_for_symlink_after_the_check_is_not_followed(
    layout: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # History: O_NOFOLLOW guarded only the last component; a folder replaced by a link out of
    # the root between realpath and open let the secret out. The swap runs in the check's wake:
    # what is served is the file that was checked, held by its descriptor.
    from evloop_httpd import handler as handler_mod

    (layout / "sub" / "secret.txt").write_bytes(b"harmless\n")
    real_locate = handler_mod.locate

    def locate_then_swap(*args: object, **kw: object) -> object:
        found = real_locate(*args, **kw)  # type: ignore[arg-type]
        if (layout / "sub").is_dir() and not (layout / "sub").is_symlink():
            (layout / "sub").rename(layout / "sub-moved")
            (layout / "sub").symlink_to(layout.parent / "outside")
        return found

    monkeypatch.setattr(handler_mod, "locate", locate_then_swap)
    with running(layout) as s:
        reply = request(s.port, raw(b"GET", b"/sub/secret.txt"))
        assert (layout / "sub").is_symlink()  # the swap did happen in the window
        assert reply.status == 200, reply.raw_head
        assert reply.body == b"harmless\n"
        # Asked again through the link: never the secret (a 404, or the cached checked file).
        assert SECRET not in request(s.port, raw(b"GET", b"/sub/secret.txt")).body
        assert request(s.port, raw(b"GET", b"/hello.txt")).body == b"hello\n"


def test_put_folder_swapped_after_the_check_writes_nothing_outside(
    layout: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # History: a PUT created and renamed its temp file by path, so a folder replaced by a link
    # out of the root between the check and the create wrote the upload outside the root.
    from evloop_httpd import files as files_mod

    outside = layout.parent / "outside"
    real_inside = files_mod.inside

    def inside_then_swap(root: str, path: str) -> bool:
        verdict = real_inside(root, path)
        if (layout / "sub").is_dir() and not (layout / "sub").is_symlink():
            (layout / "sub").rename(layout / "sub-moved")
            (layout / "sub").symlink_to(outside)
        return verdict

    monkeypatch.setattr(files_mod, "inside", inside_then_swap)
    before = sorted(p.name for p in outside.iterdir())
    with running(layout) as s:
        reply = request(
            s.port, b"PUT /sub/new.txt HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc"
        )
        assert (layout / "sub").is_symlink()  # the swap did happen in the window
        assert reply.status == 201, reply.raw_head
    assert sorted(p.name for p in outside.iterdir()) == before
    # The upload landed in the folder that was checked, under its new name.
    assert (layout / "sub-moved" / "new.txt").read_bytes() == b"abc"


def test_put_into_a_symlinked_folder_leading_out_is_refused(layout: Path) -> None:
    before = outside_files(layout)
    with running(layout) as s:
        reply = request(s.port, raw(b"PUT", b"/escape/new.txt", b"abc"))
        assert reply.status == 403, reply.raw_head
        reply = request(s.port, raw(b"PUT", b"/no-such-folder/new.txt", b"abc"))
        assert reply.status == 409, reply.raw_head
    assert outside_files(layout) == before


def test_put_folder_swapped_while_the_body_arrives_lands_in_the_checked_folder(
    layout: Path,
) -> None:
    # History: the rename went by path, through whatever the folder's name pointed to by then.
    outside = layout.parent / "outside"
    before = sorted(p.name for p in outside.iterdir())
    with running(layout) as s, Client(s.port) as c:
        c.send(b"PUT /sub/new.txt HTTP/1.1\r\nHost: t\r\nContent-Length: 6\r\n\r\nabc")
        assert wait_until(
            lambda: any(p.name.startswith(".evloop-upload-") for p in (layout / "sub").iterdir())
        )
        (layout / "sub").rename(layout / "sub-moved")
        (layout / "sub").symlink_to(outside)
        c.send(b"def")
        assert c.read_response().status == 201
    assert (layout / "sub-moved" / "new.txt").read_bytes() == b"abcdef"
    assert sorted(p.name for p in outside.iterdir()) == before
    assert not [p for p in (layout / "sub-moved").iterdir() if p.name.startswith(".evloop")]
