"""Trying to break held-back pipelined responses and the cache's arrival epochs.

Every pipelined response is compared byte for byte (Date aside) with what the same request gets
alone on a fresh connection. Stalls are forced with a tiny receive buffer on the client and a
tiny send buffer on the server's accepted sockets, so that held-back bytes really wait in
``transport.pending`` between loop passes; the tests wait for that state before acting.
"""

from __future__ import annotations

import os
import random
import re
import signal
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from evloop_httpd.reactor import Server
from evloop_httpd.states import ConnState
from evloop_httpd.transport import Transport

from ..helpers import (
    DEADLINE_S,
    Client,
    RunningServer,
    connect,
    get,
    put,
    read_serving_port,
    running,
    spawn_cli,
    wait_until,
)

S = ConnState
BIG = bytes(range(251)) * 400  # 100,400 bytes: past the in-memory cache, so sendfile/pread
MID = b"0123456789abcdef" * 192  # 3 KiB: kept in memory by the cache
_DATE = re.compile(rb"\r\nDate: [^\r]*")
_BOUNDARY = re.compile(rb"\r\nContent-Type: multipart/byteranges; boundary=([^\r]+)")
_RESET = struct.pack("ii", 1, 0)
_SMALL_BUF = 4096


def norm(raw: bytes) -> bytes:
    """A response's bytes with the Date value blanked (it may cross a second boundary), and a
    multipart boundary (random per response) replaced by a fixed one."""
    raw = _DATE.sub(b"\r\nDate: -", raw)
    boundary = _BOUNDARY.search(raw)
    return raw.replace(boundary.group(1), b"BOUNDARY") if boundary else raw


def wire(client: Client, head_request: bool = False) -> bytes:
    """The next final response's exact bytes; interim 100 Continue responses are skipped."""
    while True:
        reply = client.read_response(head_request)
        if reply.status != 100:
            return reply.raw_head + b"\r\n\r\n" + reply.body


def is_head(req: bytes) -> bool:
    return req.startswith(b"HEAD ")


def slow_client(port: int) -> Client:
    """A client whose receive buffer is tiny, so that the server's sends are cut short."""
    return Client(connect(port, rcvbuf=_SMALL_BUF))


def connections(srv: RunningServer) -> list[Transport]:
    """The server's open transports, read from the test thread (retried if the map moves)."""
    for _ in range(100):
        try:
            keys = list(srv.server.sel.get_map().values())
        except RuntimeError:  # the loop changed the map while we copied it
            continue
        return [k.data for k in keys if isinstance(k.data, Transport)]
    return []


def held_back(srv: RunningServer) -> bool:
    return any(c.pending for c in connections(srv))


def read_to_eof(client: Client) -> bytes:
    """Everything left until the server closes; a reset fails the test (it must be a FIN)."""
    client.sock.settimeout(DEADLINE_S)
    while True:
        chunk = client.sock.recv(65536)
        if not chunk:
            return client.buf
        client.buf += chunk


@pytest.fixture
def tiny_send_buffers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Accepted sockets get a tiny send buffer, so a client that stops reading stalls us fast."""
    real_add = Server._add

    def add(self: Server, sock: socket.socket, addr: tuple, now: float) -> Transport | None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SMALL_BUF)
        return real_add(self, sock, addr, now)

    monkeypatch.setattr(Server, "_add", add)


class Oracle:
    """What each request gets alone on a fresh connection (asked once per distinct request)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.seen: dict[bytes, bytes] = {}

    def __call__(self, req: bytes) -> bytes:
        if req not in self.seen:
            with Client(self.port, recv_size=65536) as c:
                c.send(req)
                self.seen[req] = norm(wire(c, is_head(req)))
        return self.seen[req]


def prepare(root: Path) -> None:
    (root / "big.bin").write_bytes(BIG)
    (root / "mid.bin").write_bytes(MID)
    (root / "empty.txt").write_bytes(b"")
    for name, data in (("hello.txt", b"hello, world\n"), ("index.html", b"<h1>home</h1>\n")):
        if not (root / name).exists():
            (root / name).write_bytes(data)
    (root / "sub").mkdir(exist_ok=True)
    (root / "sub" / "index.html").write_bytes(b"<h1>sub</h1>\n")


def keep_alive_corpus(port: int) -> list[bytes]:
    """Requests whose responses keep the connection open: hits, misses, errors, ranges, etc."""
    etag = Oracle(port)(get("/hello.txt", method="HEAD")).split(b"\r\nETag: ")[1].split(b"\r")[0]
    e = etag.decode()
    return [
        get("/hello.txt"),
        get("/hello.txt", method="HEAD"),
        get("/mid.bin"),
        get("/mid.bin", method="HEAD"),
        get("/big.bin"),
        get("/big.bin", method="HEAD"),
        get("/index.html"),
        get("/sub/"),
        get("/sub"),  # 301 to /sub/
        get("/empty.txt"),
        get("/missing"),  # 404
        get("/missing", method="HEAD"),
        get("/%68ello.txt"),  # the same file under another cache key
        get("/hello.txt?x=1"),
        get("/hello.txt", "Accept-Encoding: gzip, br\r\n"),
        get("/big.bin", "Range: bytes=100-70000\r\n"),
        get("/big.bin", "Range: bytes=0-9,100-199,-50\r\n"),  # multipart/byteranges
        get("/hello.txt", "Range: bytes=0-4\r\n"),
        get("/hello.txt", "Range: bytes=999999-\r\n"),  # 416
        get("/hello.txt", f"If-None-Match: {e}\r\n"),  # 304
        get("/hello.txt", 'If-Match: "nope"\r\n'),  # 412
        get("/hello.txt", "If-Modified-Since: Fri, 01 Jan 2100 00:00:00 GMT\r\n"),
        get("/big.bin", 'If-Range: "stale"\r\nRange: bytes=5-9\r\n'),  # If-Range fails: 200
        get("/hello.txt", f"If-Range: {e}\r\nRange: bytes=1-3\r\n"),
        get("/hello.txt", "Expect: 100-continue\r\n"),  # no body: answered at once
        get("/hello.txt", "Expect: teapot\r\n"),  # 417
        get("/hello.txt", method="DELETE"),  # 405: --allow-delete is off
        get("/", method="FOO"),  # 501
        b"OPTIONS * HTTP/1.1\r\nHost: test\r\n\r\n",
        b"GET /mid.bin HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
        b"\r\n" + get("/hello.txt"),  # an empty line before a request is ignored
        b"POST /x HTTP/1.1\r\nHost: test\r\nContent-Length: 0\r\n\r\n",  # 405, no body to skip
    ]


def pipeline(port: int, seed: int, count: int) -> list[bytes]:
    corpus = keep_alive_corpus(port)
    rng = random.Random(seed)
    weights = [1 if b"/big.bin" in r and b"HEAD" not in r else 4 for r in corpus]
    return rng.choices(corpus, weights, k=count)


def stalling(port: int, seed: int, count: int) -> list[bytes]:
    """A pipeline that opens with small answers: with the client not reading, the server
    stalls while holding a batch back (not in the middle of a file), whatever the mix after."""
    return [get("/mid.bin"), get("/hello.txt")] * 20 + pipeline(port, seed, count)


def expect_all(c: Client, oracle: Oracle, requests: list[bytes]) -> None:
    for i, req in enumerate(requests):
        got = norm(wire(c, is_head(req)))
        assert got == oracle(req), f"response {i} to {req[:60]!r}"


# Deep pipelines, one write


def test_hundreds_of_mixed_requests_in_one_write(file_server: RunningServer) -> None:
    prepare(file_server.root)
    oracle = Oracle(file_server.port)
    requests = pipeline(file_server.port, seed=1, count=400)
    with Client(file_server.port, recv_size=65536) as c:
        c.send(b"".join(requests))
        expect_all(c, oracle, requests)
        # And the connection is still good for one more, sent after all that.
        c.send(get("/hello.txt"))
        assert norm(wire(c)) == oracle(get("/hello.txt"))
        assert c.buf == b""


@pytest.mark.parametrize("closer", ["connection-close", "bad-request", "get-with-body"])
def test_a_closing_request_mid_pipeline_ends_it_cleanly(
    file_server: RunningServer, closer: str
) -> None:
    prepare(file_server.root)
    oracle = Oracle(file_server.port)
    before = pipeline(file_server.port, seed=2, count=150)
    last = {
        "connection-close": get("/mid.bin", "Connection: close\r\n"),
        "bad-request": b"GET /hello.txt HTTP/1.1\r\nHost: test\r\nNo colon here\r\n\r\n",
        # Not read, so the stream cannot be trusted after it: answered, then closed.
        "get-with-body": get("/mid.bin", "Content-Length: 5\r\n") + b"GET /",
    }[closer]
    after = [
        put("/after.txt", b"must not be written"),
        *pipeline(file_server.port, seed=3, count=50),
    ]
    with Client(file_server.port, recv_size=65536) as c:
        c.send(b"".join([*before, last, *after]))
        expect_all(c, oracle, before)
        final = norm(wire(c))
        assert final == oracle(last)
        assert b"\r\nConnection: close\r\n" in final
        assert read_to_eof(c) == b""  # nothing after it was answered, and a FIN, not a reset
    assert not (file_server.root / "after.txt").exists()


def test_put_inside_a_deep_pipeline(file_server: RunningServer) -> None:
    prepare(file_server.root)
    oracle = Oracle(file_server.port)
    first, second = b"first upload\n", b"second, longer upload\n" * 100
    requests = [
        *pipeline(file_server.port, seed=4, count=60),
        put("/up.txt", first),
        get("/up.txt"),
        *pipeline(file_server.port, seed=5, count=60),
        put("/up.txt", second, "Expect: 100-continue\r\n"),  # body already here: no 100 needed
        *pipeline(file_server.port, seed=6, count=60),
        b"PUT /chunked.txt HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n7\r\n, world\r\n0\r\n\r\n",
        get("/chunked.txt"),
        get("/up.txt"),
        get("/up.txt", method="HEAD"),
    ]
    with Client(file_server.port, recv_size=65536) as c:
        c.send(b"".join(requests))
        got = [norm(wire(c, is_head(r))) for r in requests]
    assert (file_server.root / "up.txt").read_bytes() == second
    assert (file_server.root / "chunked.txt").read_bytes() == b"hello, world"
    puts = [i for i, r in enumerate(requests) if r.startswith(b"PUT ")]
    assert got[puts[0]].startswith(b"HTTP/1.1 201 Created\r\n")
    assert got[puts[0] + 1].endswith(b"\r\n\r\n" + first)
    assert got[puts[1]].startswith(b"HTTP/1.1 204 No Content\r\n")
    assert got[puts[2]].startswith(b"HTTP/1.1 201 Created\r\n")
    # The file does not change after the pipeline: what the last GET and HEAD got is what they
    # get alone now, and the second PUT's ETag is the file's.
    for i, req in enumerate(requests):
        if i not in puts and i != puts[0] + 1:
            assert got[i] == oracle(req), f"response {i} to {req[:60]!r}"
    etag = oracle(get("/up.txt", method="HEAD")).split(b"\r\nETag: ")[1].split(b"\r")[0]
    assert b"\r\nETag: " + etag + b"\r\n" in got[puts[1]]


def test_expect_100_continue_after_a_held_back_batch(file_server: RunningServer) -> None:
    prepare(file_server.root)
    oracle = Oracle(file_server.port)
    before = pipeline(file_server.port, seed=7, count=80)
    body = b"uploaded after the interim response\n"
    head = (
        f"PUT /cont.txt HTTP/1.1\r\nHost: test\r\nContent-Length: {len(body)}\r\n"
        "Expect: 100-continue\r\n\r\n"
    ).encode()
    after = pipeline(file_server.port, seed=8, count=80)
    with Client(file_server.port, recv_size=65536) as c:
        c.send(b"".join(before) + head)
        expect_all(c, oracle, before)
        interim = c.read_response()
        assert (interim.status, interim.raw_head) == (100, b"HTTP/1.1 100 Continue")
        c.send(body + get("/cont.txt") + b"".join(after))
        assert wire(c).startswith(b"HTTP/1.1 201 Created\r\n")
        assert wire(c).endswith(b"\r\n\r\n" + body)
        expect_all(c, oracle, after)


# Clients that stall, half-close or vanish


def test_a_client_that_stops_reading_then_resumes(
    file_server: RunningServer, tiny_send_buffers: None
) -> None:
    prepare(file_server.root)
    oracle = Oracle(file_server.port)
    requests = stalling(file_server.port, seed=9, count=300)
    with slow_client(file_server.port) as c:
        c.send(b"".join(requests))
        assert wait_until(lambda: held_back(file_server))
        expect_all(c, oracle, requests)
        c.send(get("/mid.bin"))
        assert norm(wire(c)) == oracle(get("/mid.bin"))


def test_a_client_that_half_closes_after_its_pipeline(
    file_server: RunningServer, tiny_send_buffers: None
) -> None:
    prepare(file_server.root)
    oracle = Oracle(file_server.port)
    requests = stalling(file_server.port, seed=10, count=300)
    with slow_client(file_server.port) as c:
        c.send(b"".join(requests))
        c.sock.shutdown(socket.SHUT_WR)
        assert wait_until(lambda: held_back(file_server))
        expect_all(c, oracle, requests)
        assert read_to_eof(c) == b""


def test_a_client_reset_mid_batch_hurts_no_one_else(
    file_server: RunningServer, tiny_send_buffers: None
) -> None:
    prepare(file_server.root)
    oracle = Oracle(file_server.port)
    requests = stalling(file_server.port, seed=11, count=200)
    for _ in range(3):
        victim = slow_client(file_server.port)
        victim.send(b"".join(requests))
        with Client(file_server.port, recv_size=65536) as other:
            other.send(b"".join(requests[:100]))
            assert wait_until(lambda: held_back(file_server))
            victim.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
            victim.close()
            expect_all(other, oracle, requests[:100])
    assert wait_until(lambda: file_server.server.count == 0)
    assert file_server.alive()
    assert "bug" not in file_server.stderr.getvalue()


# Graceful stop while a batch is held back


def _stop_while_held_back(root: Path, *, half_close: bool, use_sendfile: bool) -> None:
    prepare(root)
    with running(root, use_sendfile=use_sendfile) as srv:
        oracle = Oracle(srv.port)
        requests = stalling(srv.port, seed=12, count=300)
        for req in set(requests):
            oracle(req)  # now: the listener closes when the stop begins
        with slow_client(srv.port) as c:
            c.send(b"".join(requests))
            assert wait_until(lambda: held_back(srv))
            srv.server.request_stop()
            assert wait_until(lambda: srv.server.ctx.stopping)
            if half_close:
                c.sock.shutdown(socket.SHUT_WR)
            read_to_eof(c)
            assert expect_prefix(c, oracle, requests) >= 1


def expect_prefix(c: Client, oracle: Oracle, requests: list[bytes]) -> int:
    """After EOF: ``c.buf`` holds whole, exact answers to a prefix of ``requests``, nothing cut
    short (a response made once the stop began says it closes). Returns how many."""
    answered = 0
    while c.buf:
        req = requests[answered]
        got = norm(wire(c, is_head(req)))  # a cut-short answer raises ConnectionError here
        alone = oracle(req)
        closing = alone.replace(b"\r\nConnection: keep-alive\r\n", b"\r\nConnection: close\r\n")
        assert got in (alone, closing), f"response {answered} to {req[:60]!r}"
        answered += 1
    return answered


@pytest.mark.parametrize("use_sendfile", [True, False], ids=["sendfile", "read-send"])
def test_graceful_stop_flushes_a_held_back_batch(
    tmp_path: Path, tiny_send_buffers: None, use_sendfile: bool
) -> None:
    _stop_while_held_back(tmp_path, half_close=False, use_sendfile=use_sendfile)


@pytest.mark.parametrize("use_sendfile", [True, False], ids=["sendfile", "read-send"])
def test_graceful_stop_flushes_a_held_back_batch_to_a_half_closed_client(
    tmp_path: Path, tiny_send_buffers: None, use_sendfile: bool
) -> None:
    _stop_while_held_back(tmp_path, half_close=True, use_sendfile=use_sendfile)


@pytest.mark.parametrize("stop", [False, True], ids=["serving", "stopping"])
def test_a_batch_held_back_ahead_of_a_100_continue(
    file_server: RunningServer, tiny_send_buffers: None, stop: bool
) -> None:
    # The answers to the GETs are still held back when the PUT's head is parsed. Serving, the
    # interim response comes after all of them; stopping, they all come and the PUT, of which
    # nothing was promised, is not started.
    prepare(file_server.root)
    oracle = Oracle(file_server.port)
    gets = [get("/mid.bin"), get("/hello.txt")] * 8
    for req in set(gets):
        oracle(req)  # now: the listener closes when the stop begins
    body = b"sent after the interim response\n"
    head = put("/late.txt", b"", "Expect: 100-continue\r\n").replace(
        b"Content-Length: 0", b"Content-Length: %d" % len(body)
    )
    with slow_client(file_server.port) as c:
        c.send(b"".join(gets) + head)
        assert wait_until(lambda: held_back(file_server))
        if stop:
            file_server.server.request_stop()
            assert wait_until(lambda: file_server.server.ctx.stopping)
        expect_all(c, oracle, gets)
        if stop:
            assert read_to_eof(c) == b""
            assert not (file_server.root / "late.txt").exists()
            return
        interim = c.read_response()
        assert (interim.status, interim.raw_head) == (100, b"HTTP/1.1 100 Continue")
        c.send(body)
        assert wire(c).startswith(b"HTTP/1.1 201 Created\r\n")
    assert (file_server.root / "late.txt").read_bytes() == body


def test_sigterm_while_a_batch_is_held_back(tmp_path: Path) -> None:
    prepare(tmp_path)
    (tmp_path / "hello.txt").write_bytes(b"hello\n")
    proc = spawn_cli("-p", "0", "-d", str(tmp_path), "-q")
    try:
        port = read_serving_port(proc)
        oracle = Oracle(port)
        requests = [get("/mid.bin"), get("/hello.txt"), get("/big.bin", method="HEAD")] * 150
        for req in set(requests):
            oracle(req)
        with slow_client(port) as c:
            c.send(b"".join(requests))
            # The first answer proves the batch is being made; the rest cannot all fit in the
            # socket buffers, so some of them wait in the server when the signal lands (the
            # count asserted below shows that it did).
            assert norm(wire(c)) == oracle(requests[0])
            proc.send_signal(signal.SIGTERM)
            read_to_eof(c)
            answered = 1 + expect_prefix(c, oracle, requests[1:])
        assert answered < len(requests)  # the stop did land in the middle of the batch
        _, err = proc.communicate(timeout=DEADLINE_S)
        assert proc.returncode == 0, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=DEADLINE_S)


# The cache's arrival epochs


@pytest.fixture
def site(tmp_path: Path) -> Iterator[RunningServer]:
    root = tmp_path / "www"
    (root / "dir").mkdir(parents=True)
    (root / "dir" / "f.txt").write_bytes(b"inside\n")
    (root / "dir" / "big.bin").write_bytes(BIG)
    (root / "dir" / "index.html").write_bytes(b"index!\n")
    with running(root) as srv:
        yield srv


def bodies(c: Client, requests: list[bytes]) -> list[tuple[int, bytes]]:
    c.send(b"".join(requests))
    out = []
    for req in requests:
        reply = c.read_response(is_head(req))
        out.append((reply.status, reply.body if not is_head(req) else reply.raw_head))
    return out


@pytest.mark.parametrize("how", ["in-place-same-size", "in-place-longer", "replace"])
def test_a_file_changed_between_two_batches_is_seen(site: RunningServer, how: str) -> None:
    f = site.root / "dir" / "f.txt"
    batch = [get("/dir/f.txt")] * 40
    with Client(site.port, recv_size=65536) as c:
        assert bodies(c, batch) == [(200, b"inside\n")] * 40
        new = {"in-place-same-size": b"INSIDE\n", "in-place-longer": b"inside, longer\n"}
        if how == "replace":
            tmp = f.with_name("f.tmp")
            tmp.write_bytes(b"INSIDE\n")
            os.replace(tmp, f)
            expected = b"INSIDE\n"
        else:
            with open(f, "r+b") as fh:  # the same inode, written in place
                fh.write(new[how])
            expected = new[how]
        assert bodies(c, batch) == [(200, expected)] * 40


def test_a_put_on_another_connection_is_seen_by_the_next_batch(site: RunningServer) -> None:
    batch = [get("/dir/f.txt"), get("/dir/f.txt", method="HEAD")] * 30
    with Client(site.port, recv_size=65536) as reader:
        first = bodies(reader, batch)
        assert first[0] == (200, b"inside\n")
        with Client(site.port, recv_size=65536) as writer:
            writer.send(put("/dir/f.txt", b"written by a PUT\n"))
            assert writer.read_response().status == 204
        again = bodies(reader, batch)
    assert again[0::2] == [(200, b"written by a PUT\n")] * 30
    assert all(b"\r\nContent-Length: 17\r\n" in head for _, head in again[1::2])


def test_a_put_while_a_batch_is_held_back_is_never_undone(
    site: RunningServer, tiny_send_buffers: None
) -> None:
    # The reader's requests all arrived before the PUT, so each may see either version; but
    # once one has seen the new file, no later one may see the old, and the next batch, sent
    # after the PUT was answered, must see only the new one.
    f = site.root / "dir" / "f.txt"
    f.write_bytes(MID)
    batch = [get("/dir/f.txt")] * 300
    new = MID.upper()
    with slow_client(site.port) as reader:
        reader.send(b"".join(batch))
        assert wait_until(lambda: held_back(site))
        with Client(site.port, recv_size=65536) as writer:
            writer.send(put("/dir/f.txt", new))
            assert writer.read_response().status == 204
        seen = [reader.read_response().body for _ in batch]
        assert set(seen) <= {MID, new}
        assert seen == sorted(seen, key=lambda b: b == new)  # old ones, then new ones
        assert bodies(reader, batch[:50]) == [(200, new)] * 50


@pytest.mark.parametrize("name", ["f.txt", "big.bin", ""])
def test_a_folder_swapped_for_a_symlink_out_of_the_root_between_batches(
    site: RunningServer, tmp_path: Path, name: str
) -> None:
    inside = site.root / "dir" / (name or "index.html")
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / (name or "index.html")
    # The same size and mtime as the file inside: only the inode tells them apart.
    secret.write_bytes(BIG[::-1] if name == "big.bin" else b"SECRET!")
    st = inside.stat()
    os.utime(secret, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert secret.stat().st_size == st.st_size
    batch = [get(f"/dir/{name}"), get(f"/dir/{name}", method="HEAD")] * 20
    with Client(site.port, recv_size=65536) as c:
        first = bodies(c, batch)
        assert first[0] == (200, inside.read_bytes())
        os.rename(site.root / "dir", site.root / "dir.old")
        os.symlink(outside, site.root / "dir")
        again = bodies(c, batch)
    for status, data in again:
        assert status in (403, 404)
        assert b"SECRET" not in data and data != BIG[::-1]


def test_a_folder_swapped_for_a_symlink_while_a_batch_is_held_back(
    site: RunningServer, tmp_path: Path, tiny_send_buffers: None
) -> None:
    # Requests already in the server's buffer may still get the file that was inside; none may
    # get the one outside, and a batch sent after the swap gets only refusals.
    inside = site.root / "dir" / "f.txt"
    inside.write_bytes(MID)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "f.txt").write_bytes(MID.upper())
    st = inside.stat()
    os.utime(outside / "f.txt", ns=(st.st_atime_ns, st.st_mtime_ns))
    batch = [get("/dir/f.txt"), get("/dir/f.txt", method="HEAD")] * 150
    with slow_client(site.port) as c:
        c.send(b"".join(batch))
        assert wait_until(lambda: held_back(site))
        os.rename(site.root / "dir", site.root / "dir.old")
        os.symlink(outside, site.root / "dir")
        for req in batch:
            reply = c.read_response(is_head(req))
            assert reply.status in (200, 403, 404)
            assert MID.upper() not in reply.body
            if reply.status == 200:
                assert is_head(req) or reply.body == MID
        again = bodies(c, batch[:40])
    assert all(status in (403, 404) for status, _ in again)


def test_a_delete_inside_a_batch_is_seen_by_the_gets_after_it(tmp_path: Path) -> None:
    (tmp_path / "f.txt").write_bytes(b"doomed\n")
    delete = get("/f.txt", method="DELETE")
    with running(tmp_path, allow_delete=True) as srv, Client(srv.port, recv_size=65536) as c:
        assert bodies(c, [get("/f.txt")]) == [(200, b"doomed\n")]  # now cached
        batch = [get("/f.txt"), get("/f.txt", method="HEAD")] * 5
        got = bodies(c, [*batch, delete, *batch])
    assert [status for status, _ in got] == [200] * 10 + [204] + [404] * 10


def test_a_put_inside_a_batch_is_seen_by_the_get_after_it(tmp_path: Path) -> None:
    (tmp_path / "f.txt").write_bytes(b"old")
    put = b"PUT /f.txt HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nnew"
    with running(tmp_path) as srv, Client(srv.port, recv_size=65536) as c:
        c.send(get("/f.txt"))
        assert c.read_response().body == b"old"  # now cached
        c.send(get("/f.txt") + get("/f.txt") + put + get("/f.txt") + get("/f.txt"))
        bodies = [c.read_response().body for _ in range(5)]
        assert bodies == [b"old", b"old", b"", b"new", b"new"]


def test_a_reader_that_stalls_gets_every_pipelined_byte(tmp_path: Path) -> None:
    # Far more than the socket buffers hold: the batch's send is cut short and the rest waits
    # for the client to read.
    body = bytes(range(256)) * 12  # 3 KiB, kept in memory by the cache
    (tmp_path / "f.bin").write_bytes(body)
    count = 400
    with running(tmp_path) as srv:
        sock = connect(srv.port, rcvbuf=4096)
        with Client(sock) as c:
            c.send(get("/f.bin") * count)
            replies = [c.read_response() for _ in range(count)]
            assert all(r.status == 200 and r.body == body for r in replies)
            assert c.buf == b""
