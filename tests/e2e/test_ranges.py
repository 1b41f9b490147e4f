"""Range requests over real sockets (RFC 9110 §14), with sendfile on and off."""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..helpers import DEADLINE_S, Client, RunningServer, connect, curl, get, request


def rng(path: str, value: str, extra: str = "", method: str = "GET") -> bytes:
    return get(path, f"Range: {value}\r\n{extra}", method=method)


def data(srv: RunningServer) -> bytes:
    return (srv.root / "data.bin").read_bytes()


def test_single_ranges(file_server: RunningServer) -> None:
    whole = data(file_server)
    size = len(whole)
    for value, first, last in [
        ("bytes=0-0", 0, 0),
        ("bytes=100-199", 100, 199),
        ("bytes=1000000-", 1000000, size - 1),
        ("bytes=-300", size - 300, size - 1),
        ("bytes=5-99999999999", 5, size - 1),
    ]:
        reply = request(file_server.port, rng("/data.bin", value))
        assert reply.status == 206, value
        assert reply.header("Content-Range") == f"bytes {first}-{last}/{size}"
        assert reply.header("Content-Length") == str(last - first + 1)
        assert reply.header("Content-Type") == "application/octet-stream"
        assert reply.header("ETag")
        assert reply.body == whole[first : last + 1], value


def parse_multipart(reply_body: bytes, boundary: bytes) -> list[tuple[dict[str, str], bytes]]:
    assert reply_body.startswith(b"--" + boundary + b"\r\n")
    assert reply_body.endswith(b"\r\n--" + boundary + b"--\r\n")
    inner = reply_body[: -len(b"\r\n--" + boundary + b"--\r\n")]
    parts = []
    for chunk in inner.split(b"--" + boundary + b"\r\n")[1:]:
        head, body = chunk.split(b"\r\n\r\n", 1)
        if body.endswith(b"\r\n"):
            body = body[:-2]
        fields = dict(line.split(": ", 1) for line in head.decode().split("\r\n"))
        parts.append((fields, body))
    return parts


def test_multiple_ranges_are_multipart_byteranges(file_server: RunningServer) -> None:
    whole = data(file_server)
    size = len(whole)
    reply = request(file_server.port, rng("/data.bin", "bytes=500000-500099, 0-9, -4"))
    assert reply.status == 206
    ctype = reply.header("Content-Type") or ""
    m = re.fullmatch(r"multipart/byteranges; boundary=([0-9a-f]{24})", ctype)
    assert m, ctype
    assert reply.header("Content-Range") is None
    assert reply.header("Content-Length") == str(len(reply.body))
    parts = parse_multipart(reply.body, m.group(1).encode())
    expected = [(500000, 500099), (0, 9), (size - 4, size - 1)]  # the client's order
    assert len(parts) == len(expected)
    for (fields, body), (first, last) in zip(parts, expected, strict=True):
        assert fields["Content-Type"] == "application/octet-stream"
        assert fields["Content-Range"] == f"bytes {first}-{last}/{size}"
        assert body == whole[first : last + 1]


def test_overlapping_ranges_are_coalesced(file_server: RunningServer) -> None:
    whole = data(file_server)
    value = "bytes=" + ",".join(["0-"] * 40)
    reply = request(file_server.port, rng("/data.bin", value))
    assert reply.status == 206
    assert reply.header("Content-Range") == f"bytes 0-{len(whole) - 1}/{len(whole)}"
    assert reply.body == whole  # once, not forty times
    near = request(file_server.port, rng("/data.bin", "bytes=10-19,0-4,5-9"))
    assert near.header("Content-Range") == f"bytes 0-19/{len(whole)}"
    assert near.body == whole[:20]


def test_too_many_small_ranges_get_the_plain_file(file_server: RunningServer) -> None:
    value = "bytes=" + ",".join(f"{i * 1000}-{i * 1000}" for i in range(101))
    reply = request(file_server.port, rng("/data.bin", value))
    assert reply.status == 200
    assert reply.body == data(file_server)


def test_unsatisfiable_is_416_and_keeps_the_connection(file_server: RunningServer) -> None:
    size = len(data(file_server))
    with Client(file_server.port) as c:
        c.send(rng("/data.bin", f"bytes={size}-"))
        reply = c.read_response()
        assert reply.status == 416
        assert reply.header("Content-Range") == f"bytes */{size}"
        assert reply.header("Connection") == "keep-alive"
        c.send(rng("/hello.txt", "bytes=0-4"))
        assert c.read_response().body == b"hello"


def test_invalid_or_foreign_ranges_are_ignored(server: RunningServer) -> None:
    for value in ["bytes=5-1", "bytes=abc", "items=0-10", "bytes 0-1", "bytes=0-1;x"]:
        reply = request(server.port, rng("/hello.txt", value))
        assert reply.status == 200, value
        assert reply.body == b"hello, world\n"
        assert reply.header("Content-Range") is None


def test_head_ignores_range(file_server: RunningServer) -> None:
    reply = request(
        file_server.port, rng("/data.bin", "bytes=0-9", method="HEAD"), head_request=True
    )
    assert reply.status == 200
    assert reply.header("Content-Length") == str(len(data(file_server)))
    assert reply.header("Content-Range") is None


def test_if_range(file_server: RunningServer) -> None:
    full = request(file_server.port, get("/hello.txt"))
    etag, lm = full.header("ETag"), full.header("Last-Modified")
    matched = request(file_server.port, rng("/hello.txt", "bytes=0-4", f"If-Range: {etag}\r\n"))
    assert matched.status == 206
    assert matched.body == b"hello"
    weak = request(file_server.port, rng("/hello.txt", "bytes=0-4", f"If-Range: W/{etag}\r\n"))
    assert weak.status == 200
    assert weak.body == b"hello, world\n"
    other = request(file_server.port, rng("/hello.txt", "bytes=0-4", 'If-Range: "other"\r\n'))
    assert other.status == 200
    old = "Sat, 01 Jan 2000 00:00:00 GMT"
    dated = request(file_server.port, rng("/hello.txt", "bytes=0-4", f"If-Range: {old}\r\n"))
    assert dated.status == 200
    # The fixture file was written a moment ago, so its Last-Modified may be the same second as
    # Date, which makes it too weak to validate a range. Age it first.
    p = file_server.root / "old.txt"
    p.write_bytes(b"0123456789")
    os.utime(p, (946684800, 946684800))  # 2000-01-01
    exact = request(file_server.port, rng("/old.txt", "bytes=2-3", f"If-Range: {old}\r\n"))
    assert exact.status == 206
    assert exact.body == b"23"
    # An unsatisfiable range under a failed If-Range is not a 416: the whole file is sent.
    big = request(file_server.port, rng("/hello.txt", "bytes=999-", 'If-Range: "other"\r\n'))
    assert big.status == 200
    assert lm


def test_if_range_date_too_recent_to_be_strong(server: RunningServer) -> None:
    # A file dated in the future gets Last-Modified = Date: within the second of Date it may
    # change again unseen, so that date cannot validate a range (RFC 9110 §8.8.2.2).
    p = server.root / "future.txt"
    p.write_bytes(b"0123456789")
    os.utime(p, (4102444800, 4102444800))  # 2100-01-01
    lm = request(server.port, get("/future.txt")).header("Last-Modified")
    reply = request(server.port, rng("/future.txt", "bytes=0-1", f"If-Range: {lm}\r\n"))
    assert reply.status == 200
    assert reply.body == b"0123456789"


def test_preconditions_come_before_range(server: RunningServer) -> None:
    etag = request(server.port, get("/hello.txt")).header("ETag")
    reply = request(server.port, rng("/hello.txt", "bytes=0-1", f"If-None-Match: {etag}\r\n"))
    assert reply.status == 304


def test_range_on_empty_file_is_the_whole_empty_file(server: RunningServer) -> None:
    (server.root / "empty").write_bytes(b"")
    reply = request(server.port, rng("/empty", "bytes=0-"))
    assert reply.status == 200
    assert reply.header("Content-Length") == "0"


def test_segmented_download_over_eight_connections(file_server: RunningServer) -> None:
    whole = data(file_server)
    size = len(whole)
    n = 8
    bounds = [(i * size // n, (i + 1) * size // n - 1) for i in range(n)]
    socks = [connect(file_server.port) for _ in range(n)]
    try:
        # All requests out before any response is read, so the file_server interleaves 8 streams.
        for sock, (first, last) in zip(socks, bounds, strict=True):
            sock.sendall(rng("/data.bin", f"bytes={first}-{last}", "Connection: close\r\n"))
        pieces = []
        for sock, (first, last) in zip(socks, bounds, strict=True):
            sock.settimeout(DEADLINE_S)
            buf = b""
            while chunk := sock.recv(65536):
                buf += chunk
            head, body = buf.split(b"\r\n\r\n", 1)
            assert head.startswith(b"HTTP/1.1 206 ")
            assert f"\r\nContent-Range: bytes {first}-{last}/{size}\r\n".encode() in head
            pieces.append(body)
    finally:
        for sock in socks:
            sock.close()
    assert b"".join(pieces) == whole


def test_curl_range(file_server: RunningServer) -> None:
    whole = data(file_server)
    one = curl("-r", "1000-1999", f"{file_server.url}/data.bin")
    assert one.returncode == 0, one.stderr
    assert one.stdout == whole[1000:2000]
    # Several ranges: curl hands the multipart body through as it is.
    multi = curl("-r", "0-9,20000-20009", "-D", "-", f"{file_server.url}/data.bin")
    assert multi.returncode == 0, multi.stderr
    assert b"206 Partial Content" in multi.stdout
    assert whole[20000:20010] in multi.stdout.split(b"\r\n\r\n", 1)[1]


def test_curl_resume(file_server: RunningServer, tmp_path: Path) -> None:
    whole = data(file_server)
    out = tmp_path / "partial.bin"
    out.write_bytes(whole[:123457])
    done = curl("-C", "-", "-o", str(out), "-w", "%{http_code}", f"{file_server.url}/data.bin")
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"206"
    assert out.read_bytes() == whole
