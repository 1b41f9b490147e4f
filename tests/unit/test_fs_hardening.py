"""Issue 10, the filesystem side: races between check and use, the cost of resolving a path and
of a listing, and timestamps an HTTP-date cannot carry.

Races are provoked deterministically: a patched ``os`` function swaps a folder for a symlink
(or removes a link) at the exact moment between the check and the use.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from evloop_httpd import listing
from evloop_httpd.config import Config, Limits
from evloop_httpd.errors import HttpError
from evloop_httpd.files import check_hidden, decode_segments, servable_name
from evloop_httpd.handler import Handler
from evloop_httpd.parser import parse_head
from evloop_httpd.responses import Response

from ..helpers import get, request, running

SECRET = b"TOP-SECRET-outside-the-root\n"


def ask(handler: Handler, head: bytes) -> Response:
    """``Handler.begin`` on a raw request head; a refusal comes back as its HttpError."""
    req = parse_head(head, Limits())
    assert req is not None
    resp = handler.begin(req, time.time())
    assert isinstance(resp, Response)
    if resp.file_fd >= 0:
        resp.body = os.pread(resp.file_fd, 1 << 20, 0)
        os.close(resp.file_fd)
        resp.file_fd = -1
    return resp


def status_of(handler: Handler, head: bytes) -> int:
    try:
        return int(ask(handler, head).status)
    except HttpError as exc:
        return int(exc.status)


def head_of(method: str, path: str, extra: str = "") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: t\r\n{extra}\r\n".encode()


@pytest.fixture
def site(tmp_path: Path) -> Path:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim.txt").write_bytes(SECRET)
    (outside / "outside-only-name.txt").write_bytes(SECRET)
    root = tmp_path / "www"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "victim.txt").write_bytes(b"mine\n")
    (root / "hello.txt").write_bytes(b"hello\n")
    return root


def swap_sub_for_link(root: Path) -> None:
    """Replace ``sub`` by a symlink out of the root, keeping the real folder as ``sub-moved``."""
    if not (root / "sub").is_symlink():
        (root / "sub").rename(root / "sub-moved")
        (root / "sub").symlink_to(root.parent / "outside")


def test_delete_folder_swapped_after_the_check_deletes_nothing_outside(
    site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # History: DELETE checked the folder's real path, then unlinked by path: a folder swapped
    # for a symlink out of the root in between deleted a file outside the root.
    real_lstat = os.lstat

    def swap_then_lstat(path: Any, *args: Any, **kw: Any) -> os.stat_result:
        if str(path).endswith("victim.txt"):
            swap_sub_for_link(site)
        return real_lstat(path, *args, **kw)

    monkeypatch.setattr(os, "lstat", swap_then_lstat)
    handler = Handler(Config(root=site, allow_delete=True))
    status = status_of(handler, head_of("DELETE", "/sub/victim.txt"))
    assert (site / "sub").is_symlink()  # the swap did happen in the window
    assert (site.parent / "outside" / "victim.txt").read_bytes() == SECRET
    # What was deleted is the file in the folder that was checked.
    assert status == 204
    assert not (site / "sub-moved" / "victim.txt").exists()


def test_delete_never_follows_a_symlinked_folder_out(site: Path) -> None:
    swap_sub_for_link(site)
    handler = Handler(Config(root=site, allow_delete=True))
    assert status_of(handler, head_of("DELETE", "/sub/victim.txt")) == 403
    assert (site.parent / "outside" / "victim.txt").read_bytes() == SECRET


def test_listing_folder_swapped_after_the_check_lists_the_checked_folder(
    site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # History: a listing scanned the folder by path after checking it: a folder swapped for a
    # symlink out of the root in between listed the outside folder.
    real_scandir = os.scandir

    def swap_then_scandir(path: Any = ".") -> Any:
        swap_sub_for_link(site)
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", swap_then_scandir)
    handler = Handler(Config(root=site, listing=True))
    page = ask(handler, head_of("GET", "/sub/")).body
    assert (site / "sub").is_symlink()  # the swap did happen in the window
    assert b"outside-only-name" not in page
    assert b"victim.txt" in page


def test_link_vanishing_mid_resolution_is_a_404_not_a_500(
    site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # History: realpath saw a symlink, which was removed before it read it: FileNotFoundError
    # escaped and the GET was a 500 with a traceback. Same for a precompressed sidecar's link.
    (site / "app.js").write_bytes(b"js\n")
    for name in ("vanishing", "app.js.gz"):
        (site / name).symlink_to(site / "hello.txt")
    real_readlink, real_open = os.readlink, os.open

    def vanish(path: Any) -> None:
        for name in ("vanishing", "app.js.gz"):
            if str(path).endswith("/" + name) and (site / name).is_symlink():
                (site / name).unlink()

    def readlink(path: Any, *args: Any, **kw: Any) -> Any:
        vanish(path)
        return real_readlink(path, *args, **kw)

    def open_(path: Any, *args: Any, **kw: Any) -> int:
        vanish(path)
        return real_open(path, *args, **kw)

    monkeypatch.setattr(os, "readlink", readlink)
    monkeypatch.setattr(os, "open", open_)
    with running(site) as srv:
        reply = request(srv.port, get("/vanishing"))
        assert reply.status == 404, reply.raw_head
        reply = request(srv.port, get("/app.js", "Accept-Encoding: gzip\r\n"))
        assert reply.status == 200, reply.raw_head
        assert reply.body == b"js\n"
        assert "Traceback" not in srv.stderr.getvalue()
    assert not (site / "vanishing").exists() and not (site / "app.js.gz").exists()


def count_calls(monkeypatch: pytest.MonkeyPatch, names: tuple[str, ...]) -> list[str]:
    calls: list[str] = []

    def counted(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kw: Any) -> Any:
            calls.append(name)
            return fn(*args, **kw)

        return wrapper

    for name in names:
        monkeypatch.setattr(os, name, counted(name, getattr(os, name)))
    return calls


@pytest.mark.parametrize("exists", [True, False])
def test_resolving_a_path_of_thousands_of_segments_costs_a_few_syscalls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exists: bool
) -> None:
    # History: realpath made one lstat per segment: 4000 one-letter segments, within the
    # request-line limit, cost about 15 ms of the loop's time for one request.
    deep = tmp_path / "a"
    deep.mkdir()
    if exists:
        for _ in range(40):
            deep = deep / "a"
            deep.mkdir()
    handler = Handler(Config(root=tmp_path))
    calls = count_calls(monkeypatch, ("lstat", "stat", "readlink", "open", "fstat"))
    target = "/" + "a/" * 4000 + "x"
    assert len(target) < Limits().max_request_line_bytes - 20
    assert status_of(handler, head_of("GET", target)) == 404
    assert len(calls) <= 6, calls


def test_listing_repeats_heads_and_304s_do_not_rescan(
    site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # History: every GET, HEAD and 304 of a listing scanned, stat'ed and rendered the whole
    # folder again (the ETag hashed the rendered page): 120 ms each for 10,000 entries.
    for i in range(50):
        (site / "sub" / f"f{i}.txt").write_bytes(b"x" * i)
    handler = Handler(Config(root=site, listing=True))
    calls = count_calls(monkeypatch, ("scandir",))
    first = ask(handler, head_of("GET", "/sub/"))
    etag = dict(first.headers)[b"ETag"].decode()
    assert ask(handler, head_of("GET", "/sub/")).body == first.body
    assert ask(handler, head_of("HEAD", "/sub/")).body == b""
    assert ask(handler, head_of("GET", "/sub/", f"If-None-Match: {etag}\r\n")).status == 304
    assert calls == ["scandir"]
    # A new entry changes the folder's mtime: seen at once, with a new ETag.
    (site / "sub" / "new.txt").write_bytes(b"n")
    again = ask(handler, head_of("GET", "/sub/"))
    assert b"new.txt" in again.body and dict(again.headers)[b"ETag"].decode() != etag
    # The JSON form is its own page.
    doc = json.loads(ask(handler, head_of("GET", "/sub/", "Accept: application/json\r\n")).body)
    assert "new.txt" in [e["name"] for e in doc["entries"]]
    assert calls == ["scandir"] * 2  # the JSON page is rendered from the same scan


def test_listing_cache_entries_expire_and_are_bounded() -> None:
    cache = listing.ListingCache()
    st = os.stat(".")
    key = listing.page_key(st, False, "/")
    cache.put(key, listing.Page(b"t", b"x", b'"e"', 100.0))
    assert cache.get(key, 100.0 + listing.MAX_AGE_S / 2) is not None
    assert cache.get(key, 100.0 + listing.MAX_AGE_S + 0.01) is None
    for i in range(listing.MAX_CACHED + 10):
        cache.put(listing.page_key(st, False, f"/{i}/"), listing.Page(b"t", b"x", b'"e"', 0.0))
    assert len(cache._pages) == listing.MAX_CACHED
    big = b"y" * (listing.MAX_CACHED_BYTES // 3 + 1)
    for i in range(4):
        cache.put(listing.page_key(st, True, f"/{i}/"), listing.Page(b"t", big, b'"e"', 0.0))
    assert cache._total <= listing.MAX_CACHED_BYTES


def test_listing_bound_counts_skipped_entries(tmp_path: Path) -> None:
    # History: dotfiles skipped by the listing did not count against its bound, so a folder
    # of a million dotfiles was read and stat'ed whole on every request.
    folder = tmp_path / "dots"
    folder.mkdir()
    for i in range(listing.MAX_SCANNED + 5):
        (folder / f".d{i}").write_bytes(b"")
    handler = Handler(Config(root=tmp_path, listing=True))
    doc = json.loads(ask(handler, head_of("GET", "/dots/", "Accept: application/json\r\n")).body)
    assert doc["entries"] == []
    assert doc["truncated"] is True


def test_listing_shows_only_names_a_get_serves(tmp_path: Path) -> None:
    # History: a file named "%2e%2e" was listed, and its link (decoded once: "%2e%2e") was
    # refused by GET with 403; so were other names the path rules refuse.
    folder = tmp_path / "d"
    folder.mkdir()
    refused = ["%2e%2e", "%2E.", "a%2fb", "%5c", "x%00y", "%2e"]
    fine = ["ok.txt", "100%.txt", "%41.txt", "é.txt", "a b", "%252e"]
    for name in refused + fine:
        (folder / name).write_bytes(b"z")
    (folder / "sub dir").mkdir()
    handler = Handler(Config(root=tmp_path, listing=True))
    doc = json.loads(ask(handler, head_of("GET", "/d/", "Accept: application/json\r\n")).body)
    names = {e["name"] for e in doc["entries"]}
    assert names == {*fine, "sub dir"}
    for e in doc["entries"]:
        assert status_of(handler, head_of("GET", "/d/" + e["href"])) == 200, e
    page = ask(handler, head_of("GET", "/d/")).body.decode()
    for href in re.findall(r'href="([^"]+)"', page):
        if href != "../":
            assert status_of(handler, head_of("GET", "/d/" + href)) == 200, href


def get_lets_through(name: str, dotfiles: bool) -> bool:
    try:
        segments, _ = decode_segments(b"/" + quote(name, safe="").encode("ascii"))
        check_hidden(segments, dotfiles)
    except HttpError:
        return False
    return segments == (name,)


NAME_ALPHABET = st.sampled_from([*"a.%25ef/\\\x00\x01\x7fé", "\udcff", "%2e", "%2F"])


@given(st.lists(NAME_ALPHABET, min_size=1, max_size=8).map("".join), st.booleans())
def test_servable_name_agrees_with_what_a_get_lets_through(name: str, dotfiles: bool) -> None:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        assert not servable_name(name, dotfiles)  # no link can name it
        return
    assert servable_name(name, dotfiles) == get_lets_through(name, dotfiles), name


@pytest.mark.parametrize(
    "name", [".", "..", "...", ".env", "%2e%2e", "%252e", "a%2Fb", "a\\b", "x\x1fy", "ok.txt"]
)
def test_servable_name_examples(name: str) -> None:
    for dotfiles in (False, True):
        assert servable_name(name, dotfiles) == get_lets_through(name, dotfiles), name


@pytest.fixture
def ancient_root(tmp_path: Path) -> Iterator[Path]:
    # tmpfs takes any 64-bit timestamp (ext4 clamps to 1901): prefer it, so the mtime really
    # is before year 1.
    base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else str(tmp_path)
    with tempfile.TemporaryDirectory(dir=base) as d:
        yield Path(d)


@pytest.mark.parametrize("seconds", [-70_000_000_000, -1, 300_000_000_000])
def test_timestamps_an_http_date_cannot_carry_do_not_break_serving(
    ancient_root: Path, seconds: int
) -> None:
    # History: a file whose mtime was before year 1 (possible on tmpfs and btrfs) made every
    # GET of it a 500: formatting Last-Modified raised.
    f = ancient_root / "old.txt"
    f.write_bytes(b"old\n")
    os.utime(f, ns=(seconds * 10**9, seconds * 10**9))
    if seconds < -62_135_596_800 and str(ancient_root).startswith("/dev/shm"):
        assert os.stat(f).st_mtime_ns == seconds * 10**9  # really before year 1
    with running(ancient_root, listing=True) as srv:
        reply = request(srv.port, get("/old.txt"))
        assert reply.status == 200, reply.raw_head
        assert reply.body == b"old\n"
        assert reply.header("Last-Modified") is None
        etag = reply.header("ETag")
        assert etag
        since = "If-Modified-Since: Thu, 01 Jan 1970 00:00:00 GMT\r\n"
        assert request(srv.port, get("/old.txt", since)).status == 200
        assert request(srv.port, get("/old.txt", f"If-None-Match: {etag}\r\n")).status == 304
        ranged = request(srv.port, get("/old.txt", "Range: bytes=0-0\r\nIf-Range: " + since[19:]))
        assert ranged.status == 200  # a date If-Range cannot match what has no date
        page = request(srv.port, get("/"))
        assert page.status == 200
        assert (
            b'old.txt</a></td><td class="size" title="4 bytes">4 B</td><td class="date">-</td>'
            in page.body
        )
        doc = json.loads(request(srv.port, get("/", "Accept: application/json\r\n")).body)
        assert doc["entries"] == [
            {"name": "old.txt", "type": "file", "size": 4, "mtime": None, "href": "old.txt"}
        ]
