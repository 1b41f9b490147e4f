"""The server over real loopback sockets: every status and behaviour of the core issue."""

from __future__ import annotations

import http.client
import re
import socket
from pathlib import Path

import pytest

from evloop_httpd.connection import Connection
from evloop_httpd.handler import Handler

from ..conftest import SMALL
from ..helpers import Client, RunningServer, get, request, running, wait_until

DATE = re.compile(r"[A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} GMT")


def test_get_returns_identical_bytes_with_required_headers(file_server: RunningServer) -> None:
    reply = request(file_server.port, get("/data.bin"))
    assert reply.status == 200
    assert reply.body == (file_server.root / "data.bin").read_bytes()
    assert DATE.fullmatch(reply.header("Date") or "")
    assert (
        reply.header(
            "Server",
        )
        == "evloop_httpd/0.1"
    )
    assert reply.header("Content-Type") == "application/octet-stream"
    assert reply.header("Content-Length") == str(len(reply.body))
    assert DATE.fullmatch(reply.header("Last-Modified") or "")


def test_head_has_get_headers_and_no_body(server: RunningServer) -> None:
    with Client(server.port) as c:
        c.send(get("/hello.txt", method="HEAD"))
        head = c.read_response(head_request=True)
        c.send(get("/hello.txt"))
        full = c.read_response()
    assert head.status == 200
    assert head.body == b""
    assert full.body == SMALL
    strip = {"date"}
    assert [h for h in head.headers if h[0].lower() not in strip] == [
        h for h in full.headers if h[0].lower() not in strip
    ]


def test_directory_serves_index_and_redirects_without_slash(server: RunningServer) -> None:
    assert request(server.port, get("/")).body == b"<h1>home</h1>\n"
    assert request(server.port, get("/sub/")).body == b"<h1>sub</h1>\n"
    moved = request(server.port, get("/sub?x=1"))
    assert moved.status == 301
    assert moved.header("Location") == "/sub/?x=1"
    noindex = request(server.port, get("/noindex/"))
    assert noindex.status == 404
    # History: this said "no such file", which sent users looking for a missing folder.
    assert b"no index.html" in noindex.body and b"--listing" in noindex.body


def test_redirect_location_never_leaves_the_site(server: RunningServer) -> None:
    (server.root / "evil.example").mkdir()
    for target in ("//evil.example", "///evil.example", "/%2Fevil.example"):
        reply = request(server.port, get(target))
        assert reply.status == 301, target
        assert reply.header("Location") == "/evil.example/", target


def test_content_types(server: RunningServer) -> None:
    for name, ctype in [
        ("a.txt", "text/plain; charset=utf-8"),
        ("a.html", "text/html; charset=utf-8"),
        ("a.css", "text/css; charset=utf-8"),
        ("a.js", "text/javascript; charset=utf-8"),
        ("a.json", "application/json; charset=utf-8"),
        ("a.png", "image/png"),
        ("a.unknownext", "application/octet-stream"),
    ]:
        (server.root / name).write_bytes(b"x")
        assert request(server.port, get("/" + name)).header("Content-Type") == ctype


def test_put_creates_then_replaces_and_get_returns_it(server: RunningServer) -> None:
    body = bytes(range(256)) * 20480  # 5 MiB
    head = f"PUT /up.bin HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    first = request(server.port, head + body)
    assert first.status == 201
    assert first.header("ETag")
    second = request(server.port, head + body[::-1])
    assert second.status == 204
    assert second.header("Content-Length") is None
    assert (server.root / "up.bin").read_bytes() == body[::-1]
    assert request(server.port, get("/up.bin")).body == body[::-1]


def test_put_chunked_with_trailer(server: RunningServer) -> None:
    reply = request(
        server.port,
        b"PUT /c.txt HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n1;ext=1\r\n!\r\n0\r\nX-Check: 1\r\n\r\n",
    )
    assert reply.status == 201
    assert (server.root / "c.txt").read_bytes() == b"hello!"


def test_put_expect_continue(server: RunningServer) -> None:
    with Client(server.port) as c:
        c.send(
            b"PUT /e.txt HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n"
        )
        interim = c.read_response()
        assert interim.status == 100
        c.send(b"abc")
        assert c.read_response().status == 201
    assert (server.root / "e.txt").read_bytes() == b"abc"


def test_put_without_length_is_411(server: RunningServer) -> None:
    reply = request(server.port, b"PUT /x HTTP/1.1\r\nHost: t\r\n\r\n")
    assert reply.status == 411
    assert not (server.root / "x").exists()


def test_put_over_limit_is_413_before_any_body_is_read(www: Path) -> None:
    with running(www, limits={"max_upload_bytes": 1000}) as srv, Client(srv.port) as c:
        c.send(
            b"PUT /big HTTP/1.1\r\nHost: t\r\nContent-Length: 1001\r\nExpect: 100-continue\r\n\r\n"
        )
        reply = c.read_response()
        assert reply.status == 413  # straight to the final status: no 100 Continue first
        assert reply.header("Connection") == "close"
        assert c.closed_by_peer()
    assert not (www / "big").exists()


def test_put_chunked_over_limit_is_413(www: Path) -> None:
    with running(www, limits={"max_upload_bytes": 10}) as srv:
        reply = request(
            srv.port,
            b"PUT /big HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"b\r\n0123456789a\r\n",
        )
    assert reply.status == 413
    assert sorted(p.name for p in www.iterdir()) == sorted(
        ["sub", "noindex", "index.html", "hello.txt", "data.bin"]
    )


def test_put_conflicts(server: RunningServer) -> None:
    missing_parent = b"PUT /nope/x HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\n\r\nx"
    assert request(server.port, missing_parent).status == 409
    onto_dir = b"PUT /sub HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\n\r\nx"
    assert request(server.port, onto_dir).status == 409
    assert (server.root / "sub").is_dir()


def test_read_only_refuses_put_with_allow(www: Path) -> None:
    with running(www, read_only=True) as srv:
        reply = request(srv.port, b"PUT /x HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\n\r\nx")
    assert reply.status == 405
    assert reply.header("Allow") == "GET, HEAD, OPTIONS"
    assert not (www / "x").exists()


@pytest.mark.parametrize("method", ["DELETE", "POST", "PATCH", "TRACE"])
def test_known_methods_not_allowed_are_405_with_allow(server: RunningServer, method: str) -> None:
    reply = request(server.port, get("/hello.txt", method=method))
    assert reply.status == 405
    assert reply.header("Allow") == "GET, HEAD, OPTIONS, PUT"


def test_connect_is_405(server: RunningServer) -> None:
    reply = request(server.port, b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com\r\n\r\n")
    assert reply.status == 405


def test_unknown_method_is_501(server: RunningServer) -> None:
    assert request(server.port, get("/", method="BREW")).status == 501


def test_options(server: RunningServer) -> None:
    for target in ("*", "/hello.txt"):
        reply = request(server.port, get(target, method="OPTIONS"))
        assert reply.status == 200
        assert reply.header("Allow") == "GET, HEAD, OPTIONS, PUT"
        assert reply.header("Content-Length") == "0"


def test_http2_version_is_505(server: RunningServer) -> None:
    with Client(server.port) as c:
        c.send(b"GET / HTTP/2.0\r\nHost: t\r\n\r\n")
        assert c.read_response().status == 505
        assert c.closed_by_peer()


def test_other_http1_minor_versions_act_as_11(server: RunningServer) -> None:
    with Client(server.port) as c:
        c.send(b"GET /hello.txt HTTP/1.7\r\nHost: t\r\n\r\n")
        reply = c.read_response()
        assert reply.status == 200
        assert reply.header("Connection") == "keep-alive"


def test_host_rules(server: RunningServer) -> None:
    assert request(server.port, b"GET / HTTP/1.1\r\n\r\n").status == 400
    assert request(server.port, b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n").status == 400
    assert request(server.port, b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n").status == 400
    assert request(server.port, b"GET / HTTP/1.0\r\n\r\n").status == 200


def test_http10_closes_unless_keep_alive_asked(server: RunningServer) -> None:
    with Client(server.port) as c:
        c.send(b"GET /hello.txt HTTP/1.0\r\n\r\n")
        assert c.read_response().header("Connection") == "close"
        assert c.closed_by_peer()
    with Client(server.port) as c:
        c.send(b"GET /hello.txt HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        assert c.read_response().header("Connection") == "keep-alive"
        c.send(b"GET /hello.txt HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        assert c.read_response().body == SMALL


def test_connection_close_is_honoured(server: RunningServer) -> None:
    with Client(server.port) as c:
        c.send(get("/hello.txt", "Connection: close\r\n"))
        assert c.read_response().header("Connection") == "close"
        assert c.closed_by_peer()


def test_pipelined_requests_answered_in_order(server: RunningServer) -> None:
    # Tiny reads: each response is split across many of them.
    with Client(server.port, recv_size=3) as c:
        c.send(
            get("/hello.txt") + get("/nothing") + get("/sub/") + get("/hello.txt", method="HEAD")
        )
        assert c.read_response().body == SMALL
        assert c.read_response().status == 404  # survivable: the connection stays open
        assert c.read_response().body == b"<h1>sub</h1>\n"
        assert c.read_response(head_request=True).header("Content-Length") == str(len(SMALL))


def test_error_bodies_are_small_and_plain(server: RunningServer) -> None:
    reply = request(server.port, get("/nothing"))
    assert reply.status == 404
    assert reply.header("Content-Type") == "text/plain; charset=utf-8"
    assert reply.body == b"404 Not Found\nno such file\n"


def test_request_line_too_long_is_414(www: Path) -> None:
    with running(www, limits={"max_request_line_bytes": 100}) as srv, Client(srv.port) as c:
        c.send(b"GET /" + b"a" * 200)  # no line end needed to know
        assert c.read_response().status == 414
        assert c.closed_by_peer()


def test_head_too_large_or_too_many_fields_is_431(www: Path) -> None:
    with running(www, limits={"max_head_bytes": 1000, "max_header_count": 5}) as srv:
        big = get("/", "X-Big: " + "b" * 1000 + "\r\n")
        assert request(srv.port, big).status == 431
        many = get("/", "".join(f"X-{i}: v\r\n" for i in range(6)))
        assert request(srv.port, many).status == 431
        assert request(srv.port, get("/", "X-1: v\r\n")).status == 200


def test_incomplete_head_times_out_with_408(www: Path) -> None:
    with running(www, timeouts={"head_s": 0.3}) as srv, Client(srv.port) as c:
        c.send(b"GET / HTTP/1.1\r\nHost")
        reply = c.read_response()
        assert reply.status == 408
        assert c.closed_by_peer()


def test_bug_gives_500_and_server_goes_on(server: RunningServer, monkeypatch) -> None:
    original = Handler.begin

    def flaky(self: Handler, req, wall):  # type: ignore[no-untyped-def]
        if req.path == b"/boom":
            raise RuntimeError("secret detail")
        return original(self, req, wall)

    monkeypatch.setattr(Handler, "begin", flaky)
    reply = request(server.port, get("/boom"))
    assert reply.status == 500
    assert b"secret" not in reply.body and b"Traceback" not in reply.body
    assert request(server.port, get("/hello.txt")).body == SMALL
    assert wait_until(lambda: "RuntimeError: secret detail" in server.stderr.getvalue())


def test_http_client_keeps_one_connection(server: RunningServer) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("GET", "/hello.txt")
    first = conn.getresponse()
    assert first.read() == SMALL
    sock = conn.sock
    conn.request("GET", "/sub/")
    assert conn.getresponse().read() == b"<h1>sub</h1>\n"
    assert conn.sock is sock  # reused, not reconnected
    conn.request("PUT", "/via-client.txt", body=b"payload")
    assert conn.getresponse().status == 201
    conn.close()
    assert (server.root / "via-client.txt").read_bytes() == b"payload"


def test_slow_download_and_stuck_client_do_not_block_others(www: Path) -> None:
    big = www / "big.bin"
    with open(big, "wb") as f:
        f.truncate(200 * 1024 * 1024)  # sparse: 200 MiB on the wire, not on disk
    with running(www) as srv:
        stuck = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
        stuck.sendall(b"GET /hel")  # half a request line, then nothing
        slow = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow.sendall(get("/big.bin"))
        assert slow.recv(4096).startswith(b"HTTP/1.1 200 OK")  # the download has begun
        received = 4096
        for _ in range(3):
            reply = request(srv.port, get("/hello.txt"))
            assert reply.body == SMALL
            received += len(slow.recv(4096))
        # The third client was answered while the download was far from finished.
        assert received < 200 * 1024 * 1024
        stuck.close()
        slow.close()


def test_every_response_is_framed_and_typed(server: RunningServer) -> None:
    requests = [
        get("/hello.txt"),
        get("/nothing"),
        get("/sub"),
        get("/", method="BREW"),
        get("/", method="DELETE"),
        b"GET / HTTP/1.1\r\n\r\n",
        b"PUT /z HTTP/1.1\r\nHost: t\r\n\r\n",
        b"PUT /z HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\n\r\nz",
    ]
    for data in requests:
        reply = request(server.port, data)
        assert reply.header("Date") and reply.header("Server"), data
        if reply.status != 204:
            assert reply.header("Content-Length") is not None, data
        if reply.status not in (204,) and reply.header("Content-Length") != "0":
            assert reply.header("Content-Type"), data


def test_connection_objects_stay_small() -> None:
    # Memory per idle connection is part of the design: no __dict__ on the hot object.
    assert not hasattr(Connection, "__dict__") or "__slots__" in Connection.__dict__


def test_client_requested_close_ends_with_fin_not_reset(server: RunningServer) -> None:
    for _ in range(20):  # the quick close path races nothing: repeat to be sure
        with Client(server.port, recv_size=65536) as c:
            c.send(get("/hello.txt", "Connection: close\r\n"))
            assert c.read_response().body == SMALL
            c.sock.settimeout(10)
            assert c.sock.recv(1) == b""  # orderly end of stream; a reset would raise
