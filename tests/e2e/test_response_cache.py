"""The response cache must never serve stale bytes or a file outside the root."""

from __future__ import annotations

import os
from pathlib import Path

from evloop_httpd import response_cache
from evloop_httpd.connection import Context

from ..helpers import Client, RunningServer, get, request, running


def cache_of(srv: RunningServer) -> object:
    ctx: Context = srv.server.ctx
    return ctx.cache


def test_repeated_get_hits_the_cache(server: RunningServer) -> None:
    for _ in range(3):
        assert request(server.port, get("/hello.txt")).body == b"hello, world\n"
    cache = server.server.ctx.cache
    assert cache.hits >= 2


def test_content_change_with_same_size_is_seen(server: RunningServer) -> None:
    path = server.root / "hello.txt"
    assert request(server.port, get("/hello.txt")).body == b"hello, world\n"
    path.write_bytes(b"HELLO, WORLD\n")  # same size
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1))  # even within one timestamp tick
    assert request(server.port, get("/hello.txt")).body == b"HELLO, WORLD\n"


def test_replaced_file_is_seen(server: RunningServer) -> None:
    assert request(server.port, get("/hello.txt")).status == 200
    put = b"PUT /hello.txt HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nnew"
    assert request(server.port, put).status == 204
    reply = request(server.port, get("/hello.txt"))
    assert reply.body == b"new"
    assert reply.header("Content-Length") == "3"


def test_deleted_file_is_404_again(server: RunningServer) -> None:
    assert request(server.port, get("/hello.txt")).status == 200
    (server.root / "hello.txt").unlink()
    assert request(server.port, get("/hello.txt")).status == 404


def test_folder_swapped_for_outside_symlink_is_refused(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "d").mkdir(parents=True)
    outside.mkdir()
    (root / "d" / "f.txt").write_bytes(b"inside")
    (outside / "f.txt").write_bytes(b"SECRET")
    with running(root) as srv:
        for _ in range(2):
            assert request(srv.port, get("/d/f.txt")).body == b"inside"
        os.rename(root / "d", tmp_path / "d-old")
        os.symlink(outside, root / "d")
        reply = request(srv.port, get("/d/f.txt"))
        assert reply.status == 404
        assert b"SECRET" not in reply.body


def test_head_from_cache_has_no_body(server: RunningServer) -> None:
    request(server.port, get("/hello.txt"))
    reply = request(server.port, get("/hello.txt", method="HEAD"), head_request=True)
    assert reply.status == 200
    assert reply.header("Content-Length") == "13"
    assert reply.body == b""


def test_large_file_from_cache_streams_whole(file_server: RunningServer) -> None:
    expected = (file_server.root / "data.bin").read_bytes()
    for _ in range(2):
        assert request(file_server.port, get("/data.bin")).body == expected
    assert file_server.server.ctx.cache.hits >= 1


def test_sidecar_made_stale_by_its_original_is_not_served_from_the_cache(tmp_path: Path) -> None:
    # History: a cache hit re-checked only the sidecar it had served, so for up to a second
    # after the original was edited the old .br bytes still went out; the handler's own rule
    # (a sidecar older than its original is ignored) was skipped.
    (tmp_path / "app.js").write_bytes(b"old();")
    (tmp_path / "app.js.br").write_bytes(b"BROTLI(old)")
    accept = "Accept-Encoding: br\r\n"
    with running(tmp_path) as srv:
        for _ in range(2):
            reply = request(srv.port, get("/app.js", accept))
            assert (reply.header("Content-Encoding"), reply.body) == ("br", b"BROTLI(old)")
        original = tmp_path / "app.js"
        original.write_bytes(b"new();")
        later = (tmp_path / "app.js.br").stat().st_mtime_ns + 10**9
        os.utime(original, ns=(later, later))
        reply = request(srv.port, get("/app.js", accept))
        assert reply.header("Content-Encoding") is None
        assert reply.body == b"new();"


def test_an_unmet_expectation_is_417_even_when_the_path_is_cached(server: RunningServer) -> None:
    # History: a cache hit skipped the handler's Expect check, so a cached path answered 200.
    teapot = get("/hello.txt", "Expect: teapot\r\n")
    assert request(server.port, teapot).status == 417
    assert request(server.port, get("/hello.txt")).status == 200  # now cached
    assert request(server.port, get("/hello.txt")).status == 200  # and checked
    assert request(server.port, teapot).status == 417
    go_on = request(server.port, get("/hello.txt", "Expect: 100-continue\r\n"))
    assert (go_on.status, go_on.body) == (200, b"hello, world\n")


def test_same_size_rewrite_with_its_mtime_set_back_is_seen(server: RunningServer) -> None:
    # History: the identity was (device, inode, size, mtime): `touch -d`/`rsync -t` after a
    # same-size rewrite restored all four, so old bytes stayed served until the entry aged out.
    path = server.root / "hello.txt"
    assert request(server.port, get("/hello.txt")).body == b"hello, world\n"
    before = path.stat()
    path.write_bytes(b"HELLO, WORLD\n")
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_mtime_ns == before.st_mtime_ns
    assert request(server.port, get("/hello.txt")).body == b"HELLO, WORLD\n"


def test_many_accept_encoding_values_share_one_cache_entry(tmp_path: Path) -> None:
    # History: the cache keyed on the raw Accept-Encoding, outside its byte budget: 1,100
    # distinct 30 KiB values held 36 MB of keys, and each value took an entry of its own.
    (tmp_path / "a.txt").write_bytes(b"hello")
    with running(tmp_path) as srv:
        client = Client(srv.port, recv_size=4096)
        for i in range(300):
            value = f"gzip;q=0.{i % 1000:03d}, x-{i}" + ", " * 2000 * (i % 2)
            client.send(get("/a.txt", f"Accept-Encoding: {value}\r\n"))
            assert client.read_response().body == b"hello"
        client.sock.close()
        entries = srv.server.ctx.cache._entries
        assert len(entries) <= 2  # gzip acceptable or not: the same file either way
        assert sum(len(repr(key)) for key in entries) < 200
        assert len(srv.server.ctx.cache._profiles) <= response_cache.PROFILE_MEMO_ENTRIES
