"""The response cache's 404s and 304s are never stale: a name that appears (on disk or by PUT)
is served at once, a file removed or changed after a 200 or a 304 is seen at once, and what the
cache answers is byte for byte what the handler answers (Date aside)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from evloop_httpd import response_cache
from evloop_httpd.files import strong_etag

from ..helpers import Client, Reply, RunningServer, get, request, running, wait_until


def aged(folder: Path) -> None:
    """Wait (bounded) until ``folder``'s last change is old enough to vouch for a missing name
    (the cache's racy-stamp rule): before that, a 404 in it is not remembered at all."""
    assert wait_until(lambda: not response_cache.is_racy(folder.stat(), time.time_ns()))


def hits(srv: RunningServer) -> int:
    return srv.server.ctx.cache.hits


def ask(c: Client, data: bytes, head: bool = False) -> Reply:
    c.send(data)
    return c.read_response(head)


def without_date(head: bytes) -> bytes:
    return b"\r\n".join(line for line in head.split(b"\r\n") if not line.startswith(b"Date: "))


def test_a_repeated_404_comes_from_the_cache_with_the_handlers_bytes(
    server: RunningServer,
) -> None:
    aged(server.root / "sub")
    with Client(server.port, recv_size=4096) as c:
        first = ask(c, get("/sub/new.txt"))  # the handler's 404, remembered
        before = hits(server)
        second = ask(c, get("/sub/new.txt"))
        assert hits(server) == before + 1
        head = ask(c, get("/sub/new.txt", method="HEAD"), head=True)
        assert hits(server) == before + 2
    assert (first.status, second.status, head.status) == (404, 404, 404)
    assert without_date(second.raw_head) == without_date(first.raw_head)
    assert second.body == first.body == b"404 Not Found\nno such file\n"
    assert head.header("Content-Length") == str(len(first.body))
    assert second.header("Connection") == "keep-alive"


def test_a_file_created_on_disk_after_a_cached_404_is_served_at_once(
    server: RunningServer,
) -> None:
    for folder, url in ((server.root / "sub", "/sub/new.txt"), (server.root, "/new.txt")):
        aged(folder)
        with Client(server.port, recv_size=4096) as c:
            assert ask(c, get(url)).status == 404
            before = hits(server)
            assert ask(c, get(url)).status == 404
            assert hits(server) == before + 1  # the negative entry answered
            (folder / "new.txt").write_bytes(b"fresh\n")
            reply = ask(c, get(url))
        assert (reply.status, reply.body) == (200, b"fresh\n")


def test_a_file_put_after_a_cached_404_is_served_at_once(server: RunningServer) -> None:
    aged(server.root / "sub")
    with Client(server.port, recv_size=4096) as c, Client(server.port, recv_size=4096) as other:
        assert ask(c, get("/sub/put.txt")).status == 404
        before = hits(server)
        assert ask(c, get("/sub/put.txt")).status == 404
        assert hits(server) == before + 1
        # From another connection, then on this one and on the writer's own.
        put = b"PUT /sub/put.txt HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n\r\nput\n"
        assert ask(other, put).status == 201
        assert ask(c, get("/sub/put.txt")).body == b"put\n"
        assert ask(other, get("/sub/put.txt")).body == b"put\n"


def test_a_404_and_a_put_in_one_pipelined_batch_then_the_get_sees_the_file(
    server: RunningServer,
) -> None:
    aged(server.root / "sub")
    assert request(server.port, get("/sub/batch.txt")).status == 404  # remembered
    put = b"PUT /sub/batch.txt HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nb\n"
    with Client(server.port, recv_size=4096) as c:
        c.send(get("/sub/batch.txt") + put + get("/sub/batch.txt"))
        statuses = [c.read_response().status for _ in range(2)]
        last = c.read_response()
    assert statuses == [404, 201]
    assert (last.status, last.body) == (200, b"b\n")


def test_a_dangling_symlink_is_not_a_missing_name(server: RunningServer) -> None:
    # The link's target lives in another folder, whose change the link's folder never sees.
    (server.root / "other").mkdir()
    os.symlink("../other/target.txt", server.root / "sub" / "link.txt")
    aged(server.root / "sub")
    with Client(server.port, recv_size=4096) as c:
        assert ask(c, get("/sub/link.txt")).status == 404
        before = hits(server)
        assert ask(c, get("/sub/link.txt")).status == 404
        assert hits(server) == before  # not remembered
        (server.root / "other" / "target.txt").write_bytes(b"target\n")
        assert ask(c, get("/sub/link.txt")).body == b"target\n"


def test_a_folder_swapped_for_a_link_to_one_holding_the_name_is_seen_at_once(
    server: RunningServer,
) -> None:
    (server.root / "a").mkdir()
    (server.root / "b").mkdir()
    (server.root / "b" / "x.txt").write_bytes(b"in b\n")
    aged(server.root / "a")
    with Client(server.port, recv_size=4096) as c:
        assert ask(c, get("/a/x.txt")).status == 404
        before = hits(server)
        assert ask(c, get("/a/x.txt")).status == 404
        assert hits(server) == before + 1
        os.rename(server.root / "a", server.root / "a-old")  # the folder itself is unchanged
        os.symlink("b", server.root / "a")
        assert ask(c, get("/a/x.txt")).body == b"in b\n"


def test_if_none_match_is_answered_from_the_cache_as_the_handler_would(
    server: RunningServer,
) -> None:
    with Client(server.port, recv_size=4096) as c:
        ok = ask(c, get("/hello.txt"))
        etag = ok.header("ETag")
        assert etag is not None
        # If-Match sends the request past the cache: the handler's own 304, for comparison.
        handler = ask(c, get("/hello.txt", f"If-Match: *\r\nIf-None-Match: {etag}\r\n"))
        before = hits(server)
        cached = ask(c, get("/hello.txt", f"If-None-Match: {etag}\r\n"))
        head = ask(c, get("/hello.txt", f"If-None-Match: {etag}\r\n", method="HEAD"), head=True)
        listed = ask(c, get("/hello.txt", f'If-None-Match: "nope", W/{etag}\r\n'))
        star = ask(c, get("/hello.txt", "If-None-Match: *\r\n"))
        assert hits(server) == before + 4
    assert (handler.status, cached.status, head.status, listed.status, star.status) == (304,) * 5
    assert without_date(cached.raw_head) == without_date(handler.raw_head)
    assert cached.header("ETag") == etag
    assert cached.header("Last-Modified") == ok.header("Last-Modified")
    assert cached.header("Content-Length") is None


def test_if_none_match_that_does_not_match_gets_the_200_and_ignores_if_modified_since(
    server: RunningServer,
) -> None:
    later = "Fri, 31 Dec 9999 23:59:59 GMT"  # alone, this would be a 304
    for path, body in (("/hello.txt", b"hello, world\n"), ("/data.bin", bytes(range(256)) * 4096)):
        with Client(server.port, recv_size=65536) as c:
            assert ask(c, get(path)).status == 200
            extra = f'If-None-Match: "other"\r\nIf-Modified-Since: {later}\r\n'
            before = hits(server)
            reply = ask(c, get(path, extra))
            assert hits(server) == before + 1
            assert (reply.status, reply.body) == (200, body)
            # and a file too large to keep in memory gets its 304 from the entry as well
            etag = reply.header("ETag")
            assert ask(c, get(path, f"If-None-Match: {etag}\r\n")).status == 304
            assert hits(server) == before + 2


def test_a_client_that_only_revalidates_is_served_from_the_cache(
    server: RunningServer,
) -> None:
    etag = strong_etag((server.root / "hello.txt").stat()).decode()
    with Client(server.port, recv_size=4096) as c:
        assert ask(c, get("/hello.txt", f"If-None-Match: {etag}\r\n")).status == 304
        before = hits(server)
        assert ask(c, get("/hello.txt", f"If-None-Match: {etag}\r\n")).status == 304
        assert hits(server) == before + 1
        other = ask(c, get("/data.bin", 'If-None-Match: "other"\r\n'))  # filled, then a 200
        assert (other.status, len(other.body)) == (200, 256 * 4096)


def test_a_change_after_a_304_gets_the_new_200_at_once(server: RunningServer) -> None:
    path = server.root / "hello.txt"
    with Client(server.port, recv_size=4096) as c:
        etag = ask(c, get("/hello.txt")).header("ETag")
        assert ask(c, get("/hello.txt", f"If-None-Match: {etag}\r\n")).status == 304
        path.write_bytes(b"HELLO, WORLD\n")  # same size
        st = path.stat()
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1))  # even within one tick
        reply = ask(c, get("/hello.txt", f"If-None-Match: {etag}\r\n"))
        assert (reply.status, reply.body) == (200, b"HELLO, WORLD\n")
        assert reply.header("ETag") != etag
        assert ask(c, get("/hello.txt", f"If-None-Match: {reply.header('ETag')}\r\n")).status == 304


def test_a_file_removed_after_a_200_and_a_304_is_a_404_at_once(www: Path) -> None:
    with running(www, allow_delete=True) as srv:
        for how in ("on disk", "by DELETE"):
            name = f"gone-{how.split()[-1].lower()}.txt"
            (www / name).write_bytes(b"here\n")
            with Client(srv.port, recv_size=4096) as c:
                etag = ask(c, get(f"/{name}")).header("ETag")
                assert ask(c, get(f"/{name}", f"If-None-Match: {etag}\r\n")).status == 304
                if how == "on disk":
                    (www / name).unlink()
                else:
                    with Client(srv.port, recv_size=4096) as other:
                        assert ask(other, get(f"/{name}", method="DELETE")).status == 204
                assert ask(c, get(f"/{name}", f"If-None-Match: {etag}\r\n")).status == 404
                assert ask(c, get(f"/{name}")).status == 404
