"""Validators and conditional requests over real sockets (RFC 9110 §8.8, §13, §15.4.5)."""

from __future__ import annotations

import os
import shutil
import time
from email.utils import formatdate, parsedate_to_datetime
from pathlib import Path

import pytest

from ..conftest import SMALL
from ..helpers import Client, RunningServer, curl, get, put, request, running

PAST = "Sat, 01 Jan 2000 00:00:00 GMT"
FUTURE = "Fri, 01 Jan 2100 00:00:00 GMT"


def hdrs(**kw: str) -> str:
    return "".join(f"{k.replace('_', '-')}: {v}\r\n" for k, v in kw.items())


def etag_of(srv: RunningServer, path: str = "/hello.txt") -> str:
    etag = request(srv.port, get(path)).header("ETag")
    assert etag is not None
    return etag


def test_get_and_head_carry_strong_validators(server: RunningServer) -> None:
    reply = request(server.port, get("/hello.txt"))
    etag = reply.header("ETag")
    assert etag and etag.startswith('"') and etag.endswith('"')  # strong: no W/
    st = os.stat(server.root / "hello.txt")
    assert etag == f'"{st.st_size:x}-{st.st_mtime_ns:x}"'
    assert reply.header("Last-Modified") == formatdate(int(st.st_mtime), usegmt=True)
    assert reply.header("Accept-Ranges") == "bytes"
    head = request(server.port, get("/hello.txt", method="HEAD"), head_request=True)
    assert head.header("ETag") == etag
    assert head.header("Accept-Ranges") == "bytes"


def test_etag_changes_with_content_and_survives_restart(www: Path) -> None:
    with running(www) as srv:
        first = etag_of(srv)
    with running(www) as srv:
        assert etag_of(srv) == first  # nothing in it depends on the process
        (www / "hello.txt").write_bytes(b"other\n")
        assert etag_of(srv) != first


def test_replicas_with_copied_files_send_the_same_etag(www: Path, tmp_path: Path) -> None:
    # History: the ETag held the inode, which differs on each machine, so a client moved to
    # another replica behind a balancer re-downloaded everything and failed If-Match/If-Range.
    replica = tmp_path / "replica"
    shutil.copytree(www, replica, copy_function=shutil.copy2)  # cp -p / rsync -a: mtimes kept
    assert os.stat(replica / "data.bin").st_ino != os.stat(www / "data.bin").st_ino
    with running(www) as a, running(replica) as b:
        etag = etag_of(a, "/data.bin")
        assert etag_of(b, "/data.bin") == etag
        # A validator from one replica works on the other: If-Match, If-Range, If-None-Match.
        assert request(b.port, get("/data.bin", hdrs(if_match=etag))).status == 200
        resumed = request(b.port, get("/data.bin", hdrs(if_range=etag, range="bytes=10-19")))
        assert resumed.status == 206
        assert resumed.body == (bytes(range(256)) * 4096)[10:20]
        assert request(b.port, get("/data.bin", hdrs(if_none_match=etag))).status == 304
        # A different file of the same size is not confused with it: the mtime differs.
        os.utime(replica / "data.bin", ns=(0, os.stat(www / "data.bin").st_mtime_ns + 1))
        assert etag_of(b, "/data.bin") != etag


def test_last_modified_never_later_than_date(server: RunningServer) -> None:
    future = time.time() + 86400 * 365
    os.utime(server.root / "hello.txt", (future, future))
    reply = request(server.port, get("/hello.txt"))
    date = parsedate_to_datetime(reply.header("Date") or "")
    last_modified = parsedate_to_datetime(reply.header("Last-Modified") or "")
    assert last_modified <= date


def test_if_none_match_gives_304_with_validators_and_keeps_the_connection(
    server: RunningServer,
) -> None:
    full = request(server.port, get("/hello.txt"))
    etag = full.header("ETag")
    with Client(server.port) as c:
        c.send(get("/hello.txt", hdrs(if_none_match=f'"nope", {etag}')))
        reply = c.read_response()
        assert reply.status == 304
        assert reply.header("ETag") == etag
        assert reply.header("Last-Modified") == full.header("Last-Modified")
        assert reply.header("Date")
        assert reply.header("Content-Length") is None
        assert reply.header("Content-Type") is None
        assert reply.header("Connection") == "keep-alive"
        assert c.buf == b""  # no body followed the head
        c.send(get("/hello.txt"))
        assert c.read_response().body == SMALL


def test_if_none_match_weak_comparison_and_star(server: RunningServer) -> None:
    etag = etag_of(server)
    assert request(server.port, get("/hello.txt", hdrs(if_none_match="W/" + etag))).status == 304
    assert request(server.port, get("/hello.txt", hdrs(if_none_match="*"))).status == 304
    reply = request(server.port, get("/hello.txt", hdrs(if_none_match='"other"')))
    assert reply.status == 200
    assert reply.body == SMALL


def test_head_gets_304_too(server: RunningServer) -> None:
    etag = etag_of(server)
    reply = request(
        server.port, get("/hello.txt", hdrs(if_none_match=etag), method="HEAD"), head_request=True
    )
    assert reply.status == 304


def test_if_modified_since(server: RunningServer) -> None:
    lm = request(server.port, get("/hello.txt")).header("Last-Modified") or ""
    assert request(server.port, get("/hello.txt", hdrs(if_modified_since=lm))).status == 304
    assert request(server.port, get("/hello.txt", hdrs(if_modified_since=PAST))).status == 200
    malformed = request(server.port, get("/hello.txt", hdrs(if_modified_since="yesterday")))
    assert malformed.status == 200
    assert malformed.body == SMALL


def test_order_none_match_beats_modified_since(server: RunningServer) -> None:
    # RFC 9110 §13.2.2: with If-None-Match present, If-Modified-Since is not evaluated.
    reply = request(
        server.port, get("/hello.txt", hdrs(if_none_match='"other"', if_modified_since=FUTURE))
    )
    assert reply.status == 200
    assert reply.body == SMALL


def test_if_match_on_missing_file_is_404(server: RunningServer) -> None:
    assert request(server.port, get("/nothing.txt", hdrs(if_match="*"))).status == 404
    assert request(server.port, get("/nothing.txt", hdrs(if_none_match="*"))).status == 404


def test_if_match_and_if_unmodified_since_give_412_and_keep_the_connection(
    server: RunningServer,
) -> None:
    etag = etag_of(server)
    with Client(server.port) as c:
        c.send(get("/hello.txt", hdrs(if_match='"other"')))
        reply = c.read_response()
        assert reply.status == 412
        assert reply.header("Connection") == "keep-alive"
        c.send(get("/hello.txt", hdrs(if_match="W/" + etag)))  # strong comparison
        assert c.read_response().status == 412
        c.send(get("/hello.txt", hdrs(if_unmodified_since=PAST)))
        assert c.read_response().status == 412
        c.send(get("/hello.txt", hdrs(if_match=etag)))
        assert c.read_response().body == SMALL
        # If-Match matched, so If-Unmodified-Since is ignored (§13.2.2 step 2 is "otherwise").
        c.send(get("/hello.txt", hdrs(if_match=etag, if_unmodified_since=PAST)))
        assert c.read_response().status == 200
        c.send(get("/hello.txt", hdrs(if_unmodified_since="garbage")))
        assert c.read_response().status == 200


def test_if_match_fails_before_if_none_match(server: RunningServer) -> None:
    etag = etag_of(server)
    reply = request(server.port, get("/hello.txt", hdrs(if_match='"x"', if_none_match=etag)))
    assert reply.status == 412


def test_put_if_none_match_star_refuses_overwrite_before_the_body(server: RunningServer) -> None:
    with Client(server.port) as c:
        c.send(
            b"PUT /hello.txt HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n"
            b"If-None-Match: *\r\nExpect: 100-continue\r\n\r\n"
        )
        reply = c.read_response()
        assert reply.status == 412  # no 100 Continue: the body was never wanted
        assert reply.header("Connection") == "close"
        assert c.closed_by_peer()
    assert (server.root / "hello.txt").read_bytes() == SMALL
    created = request(server.port, put("/new.txt", b"fresh", hdrs(if_none_match="*")))
    assert created.status == 201
    assert (server.root / "new.txt").read_bytes() == b"fresh"


def test_put_if_match_prevents_lost_update_and_returns_new_etag(server: RunningServer) -> None:
    etag = etag_of(server)
    stale = request(server.port, put("/hello.txt", b"v2", hdrs(if_match='"stale"')))
    assert stale.status == 412
    assert (server.root / "hello.txt").read_bytes() == SMALL
    ok = request(server.port, put("/hello.txt", b"v2", hdrs(if_match=etag)))
    assert ok.status == 204
    new_etag = ok.header("ETag")
    assert new_etag and new_etag != etag
    assert etag_of(server) == new_etag
    again = request(server.port, put("/hello.txt", b"v3", hdrs(if_match=etag)))
    assert again.status == 412
    assert (server.root / "hello.txt").read_bytes() == b"v2"
    missing = request(server.port, put("/absent.txt", b"x", hdrs(if_match="*")))
    assert missing.status == 412
    assert not (server.root / "absent.txt").exists()


def test_put_precondition_rechecked_at_commit(server: RunningServer) -> None:
    # History: a PUT with If-Match could pass at the head, then replace a file that another
    # PUT changed while the first body was still arriving. And that late 412 closed the
    # connection, though the body had been read to its end and the framing held.
    etag = etag_of(server)
    with Client(server.port) as slow:
        slow.send(
            b"PUT /hello.txt HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n"
            + f"If-Match: {etag}\r\n\r\nab".encode()
        )
        fast = request(server.port, put("/hello.txt", b"winner"))
        assert fast.status == 204
        slow.send(b"cd" + get("/hello.txt"))
        refused = slow.read_response()
        assert (refused.status, refused.header("Connection")) == (412, "keep-alive")
        assert slow.read_response().body == b"winner"
    assert (server.root / "hello.txt").read_bytes() == b"winner"
    assert not [p for p in server.root.iterdir() if p.name.startswith(".")]


def test_zero_length_put_precondition_failure_keeps_connection(server: RunningServer) -> None:
    with Client(server.port) as c:
        c.send(put("/hello.txt", b"", hdrs(if_none_match="*")))
        reply = c.read_response()
        assert reply.status == 412
        assert reply.header("Connection") == "keep-alive"
        c.send(get("/hello.txt"))
        assert c.read_response().body == SMALL


def test_curl_time_condition(server: RunningServer, tmp_path: Path) -> None:
    url = f"{server.url}/hello.txt"
    newer = curl("-z", PAST, "-o", str(tmp_path / "a"), "-w", "%{http_code}", url)
    assert newer.stdout == b"200"
    assert (tmp_path / "a").read_bytes() == SMALL
    # -z with a local file: its mtime becomes If-Modified-Since.
    local = tmp_path / "copy"
    local.write_bytes(SMALL)
    mtime = os.stat(server.root / "hello.txt").st_mtime + 5
    os.utime(local, (mtime, mtime))
    same = curl("-z", str(local), "-o", str(tmp_path / "b"), "-w", "%{http_code}", url)
    assert same.stdout == b"304"
    assert not (tmp_path / "b").exists() or (tmp_path / "b").read_bytes() == b""


def test_curl_etag_save_and_compare(server: RunningServer, tmp_path: Path) -> None:
    url = f"{server.url}/hello.txt"
    tag = tmp_path / "etag"
    first = curl("--etag-save", str(tag), "-o", str(tmp_path / "a"), "-w", "%{http_code}", url)
    assert first.stdout == b"200"
    assert tag.read_text().strip() == etag_of(server)
    second = curl("--etag-compare", str(tag), "-o", str(tmp_path / "b"), "-w", "%{http_code}", url)
    assert second.stdout == b"304"
    (server.root / "hello.txt").write_bytes(b"changed\n")
    third = curl("--etag-compare", str(tag), "-o", str(tmp_path / "c"), "-w", "%{http_code}", url)
    assert third.stdout == b"200"
    assert (tmp_path / "c").read_bytes() == b"changed\n"


@pytest.mark.parametrize("status_path", ["/hello.txt", "/nothing"])
def test_extra_headers_from_the_command_line(www: Path, status_path: str) -> None:
    extra = ((b"Cache-Control", b"max-age=60"), (b"Access-Control-Allow-Origin", b"*"))
    with running(www, extra_headers=extra) as srv:
        reply = request(srv.port, get(status_path))
        assert reply.header("Cache-Control") == "max-age=60"
        assert reply.header("Access-Control-Allow-Origin") == "*"
        etag = etag_of(srv)
        not_modified = request(srv.port, get("/hello.txt", hdrs(if_none_match=etag)))
        assert not_modified.status == 304
        assert not_modified.header("Cache-Control") == "max-age=60"  # §15.4.5
