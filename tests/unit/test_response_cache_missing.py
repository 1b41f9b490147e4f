"""The response cache's negative entries and If-None-Match matching, without sockets: which
404s are remembered, what vouches for them, and the bounds."""

from __future__ import annotations

import os
import time
from http import HTTPStatus
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest

from evloop_httpd import response_cache
from evloop_httpd.errors import HttpError
from evloop_httpd.response_cache import ResponseCache, is_racy

from ..helpers import wait_until

MISSING = HttpError(HTTPStatus.NOT_FOUND, "no such file")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "here.txt").write_bytes(b"here\n")
    os.symlink("nowhere.txt", tmp_path / "sub" / "dangling")
    assert wait_until(lambda: not is_racy((tmp_path / "sub").stat(), time.time_ns()))
    assert wait_until(lambda: not is_racy(tmp_path.stat(), time.time_ns()))
    return tmp_path


def remembered(cache: ResponseCache, path: bytes) -> bool:
    cache.next_epoch()
    hits = cache.hits
    resp = cache.lookup((path, ()), False, 1.0)
    assert (resp is None) == (cache.hits == hits)
    return resp is not None


def test_a_missing_name_in_an_existing_folder_is_remembered(root: Path) -> None:
    cache = ResponseCache()
    cache.store_missing((b"/sub/new.txt", ()), MISSING, str(root), 1.0)
    assert remembered(cache, b"/sub/new.txt")
    resp = cache.lookup((b"/sub/new.txt", ()), True, 1.0)
    assert resp is not None and resp.status == 404 and resp.body == b""
    (root / "sub" / "new.txt").write_bytes(b"new\n")
    assert not remembered(cache, b"/sub/new.txt")


@pytest.mark.parametrize(
    ("path", "exc"),
    [
        (b"/sub/here.txt", MISSING),  # exists (it appeared, or was a 404 for another reason)
        (b"/sub/dangling", MISSING),  # a name whose target is missing: the name exists
        (b"/nope/new.txt", MISSING),  # the folder is missing too
        (b"/sub/here.txt/x", MISSING),  # a file on the way
        (b"/sub/new.txt", HttpError(HTTPStatus.NOT_FOUND, "no index")),  # another 404
        (b"/sub/new.txt", HttpError(HTTPStatus.FORBIDDEN, "permission denied")),
        (b"/sub/%ff", MISSING),  # undecodable: the handler's 400, never a 404
        (b"/" + b"x" * response_cache.MAX_MISSING_PATH_BYTES, MISSING),  # too long to keep
    ],
)
def test_other_answers_are_not_remembered(root: Path, path: bytes, exc: HttpError) -> None:
    cache = ResponseCache()
    cache.store_missing((path, ()), exc, str(root), 1.0)
    assert not remembered(cache, path)


def test_a_folder_changed_within_the_racy_margin_vouches_for_nothing(root: Path) -> None:
    cache = ResponseCache()
    (root / "sub" / "other.txt").write_bytes(b"")  # the folder changes now
    assert is_racy((root / "sub").stat(), time.time_ns())
    cache.store_missing((b"/sub/new.txt", ()), MISSING, str(root), 1.0)
    assert not remembered(cache, b"/sub/new.txt")


def stamps(ns: int) -> os.stat_result:
    """A stat result with both mtime and ctime at ``ns`` (all is_racy reads)."""
    return cast(os.stat_result, SimpleNamespace(st_mtime_ns=ns, st_ctime_ns=ns))


def test_whole_second_stamps_need_the_coarse_margin() -> None:
    now = time.time_ns()
    whole = now // 1_000_000_000 * 1_000_000_000 - 1_000_000_000  # 1-2 s ago, no fraction
    assert is_racy(stamps(whole), now)  # a filesystem of whole seconds: within 2 s
    assert not is_racy(stamps(whole + 1), now)  # a fine-grained one: 50 ms is enough
    assert not is_racy(stamps(whole - 1_000_000_000), now)  # 2-3 s ago


def test_a_negative_entry_expires_and_is_bounded(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(response_cache, "MAX_MISSING", 2)
    cache = ResponseCache()
    for name in (b"a", b"b", b"c"):
        cache.store_missing((b"/sub/" + name, ()), MISSING, str(root), 1.0)
    assert not remembered(cache, b"/sub/a")  # the oldest went first
    assert remembered(cache, b"/sub/c")
    assert cache.lookup((b"/sub/c", ()), False, 1.0 + response_cache.MAX_AGE_S + 0.01) is None
    assert not remembered(cache, b"/sub/c")


@pytest.mark.parametrize(
    ("value", "matches"),
    [
        (b'"1-2"', True),
        (b'W/"1-2"', True),  # weak comparison (RFC 9110 §13.1.2)
        (b'"x", "1-2"', True),
        (b"*", True),
        (b'"1-3"', False),
        (b"1-2", False),  # not an entity-tag: unreadable is "no match" for GET
        (b'"1-2", junk', False),
    ],
)
def test_if_none_match(value: bytes, matches: bool) -> None:
    assert response_cache._none_match(value, b'"1-2"') is matches
