"""Directory listings (--listing): rendering as pure functions, then over real sockets."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from evloop_httpd.files import UPLOAD_PREFIX, UPLOAD_SUFFIX
from evloop_httpd.listing import Entry, render_html, render_json, scan

from ..helpers import Client, get, request, running


def test_render_html_escapes_and_encodes() -> None:
    entries = [
        Entry("a dir", True, 0, 0.0),
        Entry('<script>"x"&.txt', False, 12, 86400.0),
        Entry("100%.txt", False, 3, 0.0),
    ]
    page = render_html("/a<b>/", entries, False).decode()
    assert "<script>" not in page
    assert "&lt;script&gt;&quot;x&quot;&amp;.txt" in page
    assert 'href="%3Cscript%3E%22x%22%26.txt"' in page
    assert 'href="a%20dir/"' in page
    assert 'href="100%25.txt"' in page
    assert "Index of /a&lt;b&gt;/" in page
    assert "1970-01-02 00:00:00" in page
    assert 'href="../"' in page
    assert 'href="../"' not in render_html("/", entries, False).decode()


def test_render_json() -> None:
    doc = json.loads(render_json("/x/", [Entry("é.txt", False, 5, 0.0)], True))
    assert doc == {
        "path": "/x/",
        "entries": [
            {
                "name": "é.txt",
                "type": "file",
                "size": 5,
                "mtime": "1970-01-01T00:00:00Z",
                "href": "%C3%A9.txt",
            }
        ],
        "truncated": True,
        "zip": "?download=zip",
    }


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    d = root / "stuff"
    (d / "zdir").mkdir(parents=True)
    (d / "b.txt").write_bytes(b"bb")
    (d / "A.txt").write_bytes(b"a")
    (d / "<b>&.html").write_bytes(b"x")
    (d / ".hidden").write_bytes(b"h")
    (d / f"{UPLOAD_PREFIX}0123456789abcdef{UPLOAD_SUFFIX}").write_bytes(b"t")
    (d / "out").symlink_to(tmp_path)  # leaves the root
    (d / "in").symlink_to(d / "b.txt")
    os.mkfifo(d / "fifo")
    (root / "withindex").mkdir()
    (root / "withindex" / "index.html").write_bytes(b"index!")
    return root


def scan_path(
    folder: Path, root: Path, *, dotfiles: bool, follow_symlinks: bool
) -> tuple[list[Entry], bool]:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return scan(fd, str(folder), str(root), dotfiles=dotfiles, follow_symlinks=follow_symlinks)
    finally:
        os.close(fd)


def test_scan_hides_what_a_get_would_hide(tree: Path) -> None:
    entries, truncated = scan_path(tree / "stuff", tree, dotfiles=False, follow_symlinks=False)
    assert [e.name for e in entries] == ["zdir", "<b>&.html", "A.txt", "b.txt", "in"]
    assert not truncated
    with_dots, _ = scan_path(tree / "stuff", tree, dotfiles=True, follow_symlinks=True)
    names = [e.name for e in with_dots]
    assert ".hidden" in names and "out" in names
    assert not any(n.startswith(UPLOAD_PREFIX) for n in names)  # never, whatever the flags


def test_listing_off_by_default(tree: Path) -> None:
    with running(tree) as srv:
        assert request(srv.port, get("/stuff/")).status == 404


def test_html_listing(tree: Path) -> None:
    with running(tree, listing=True) as srv:
        reply = request(srv.port, get("/stuff/"))
        assert reply.status == 200
        assert reply.header("Content-Type") == "text/html; charset=utf-8"
        assert reply.header("Vary") == "Accept"
        page = reply.body.decode()
        order = [page.index(f">{n}<") for n in ("zdir/", "&lt;b&gt;&amp;.html", "A.txt", "b.txt")]
        assert order == sorted(order)
        assert ">.hidden<" not in page and 'href=".hidden"' not in page
        assert UPLOAD_PREFIX not in page
        assert ">out<" not in page and "fifo" not in page
        assert 'href="%3Cb%3E%26.html"' in page
        assert '<td class="size" title="2 bytes">2 B</td>' in page  # b.txt
        # The link works.
        assert request(srv.port, get("/stuff/%3Cb%3E%26.html")).body == b"x"
        # index.html still wins over a listing.
        assert request(srv.port, get("/withindex/")).body == b"index!"


def test_json_listing_and_revalidation(tree: Path) -> None:
    with running(tree, listing=True) as srv, Client(srv.port) as c:
        c.send(get("/stuff/", "Accept: application/json\r\n"))
        reply = c.read_response()
        assert reply.header("Content-Type") == "application/json"
        assert reply.header("Vary") == "Accept"
        doc = json.loads(reply.body)
        assert doc["path"] == "/stuff/"
        assert [e["name"] for e in doc["entries"]] == ["zdir", "<b>&.html", "A.txt", "b.txt", "in"]
        assert doc["entries"][0]["type"] == "directory"
        assert doc["entries"][3]["size"] == 2
        etag = reply.header("ETag")
        c.send(get("/stuff/", f"Accept: application/json\r\nIf-None-Match: {etag}\r\n"))
        again = c.read_response()
        assert again.status == 304
        assert again.header("Vary") == "Accept"
        # The HTML variant has another ETag.
        c.send(get("/stuff/", f"If-None-Match: {etag}\r\n"))
        assert c.read_response().status == 200
        c.send(get("/stuff/", method="HEAD"))
        head = c.read_response(head_request=True)
        assert head.status == 200
        assert int(head.header("Content-Length") or 0) > 0
        assert c.buf == b""


def test_root_listing_and_hidden_folder(tree: Path) -> None:
    (tree / ".secret").mkdir()
    with running(tree, listing=True) as srv:
        root = request(srv.port, get("/")).body.decode()
        assert 'href="stuff/"' in root and ".secret" not in root
        assert request(srv.port, get("/.secret/")).status == 404
