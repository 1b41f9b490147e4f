"""Folder downloads as ZIP (``GET /folder/?download=zip``, issue 14), end to end.

Every archive is taken off the wire (raw sockets reading in small pieces, curl, TLS), then
checked three ways: ``zipfile.testzip()``, ``unzip -t``, and every entry byte for byte against
the tree. Backpressure and memory are checked on what the server did (bytes it produced while
its client read nothing, descriptors it holds, a subprocess server's peak RSS), never on time.
"""

from __future__ import annotations

import io
import os
import re
import socket
import ssl
import struct
import subprocess
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from evloop_httpd.connection import PRODUCE_BYTES, Connection

from ..helpers import (
    DEADLINE_S,
    RunningServer,
    connect,
    curl,
    make_config,
    read_serving_port,
    running,
    spawn_cli,
    wait_until,
)

MIB = 1024 * 1024
UNICODE = "ünï cødé ✓.txt"


def make_tree(tmp_path: Path) -> tuple[Path, dict[str, bytes], set[str]]:
    """A root with ``photos/`` to download: the files it should hold (archive name -> bytes),
    the folders (names ending in ``/``), and hidden entries and a link out that it must not."""
    root = tmp_path / "www"
    top = root / "photos"
    (top / "sub" / "deep").mkdir(parents=True)
    (top / "empty").mkdir()
    (top / ".hiddendir").mkdir()
    (top / ".hiddendir" / "x.txt").write_bytes(b"hidden folder\n")
    (top / ".secret").write_bytes(b"dotfile\n")
    (top / "a.txt").write_bytes(b"hello, zip\n")
    (top / UNICODE).write_bytes(b"unicode name\n")
    deep = os.urandom(300 * 1024 + 7)
    (top / "sub" / "deep" / "b.bin").write_bytes(deep)
    (top / "sub" / "zero.bin").write_bytes(b"")
    (root / "shared.txt").write_bytes(b"inside the root\n")
    (top / "inlink.txt").symlink_to(root / "shared.txt")  # inside the root: served, so zipped
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"never served\n")
    (top / "out.txt").symlink_to(outside)  # leaves the root: left out
    (root / "index.html").write_bytes(b"<h1>home</h1>\n")
    files = {
        "photos/a.txt": b"hello, zip\n",
        f"photos/{UNICODE}": b"unicode name\n",
        "photos/sub/deep/b.bin": deep,
        "photos/sub/zero.bin": b"",
        "photos/inlink.txt": b"inside the root\n",
    }
    folders = {"photos/sub/", "photos/sub/deep/", "photos/empty/"}
    return root, files, folders


def read_head(sock: socket.socket, buf: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    """Status, headers (lower-case names) and the bytes after the head."""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(997)
        assert data, f"closed before the head ended: {buf!r}"
        buf += data
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, rest


def read_chunked(sock: socket.socket, buf: bytes, recv_size: int = 65536) -> tuple[bytes, bytes]:
    """A chunked body, strictly framed (RFC 9112 §7.1); the bytes after it. Raises on a
    close or reset before the last chunk."""
    out = bytearray()
    # Parsed up to ``pos``: an offset, not a new slice per chunk, which copied what was left
    # of a large body in hand once for every chunk.
    wire = bytearray(buf)
    pos = 0
    while True:
        if pos > 1 << 20:
            del wire[:pos]
            pos = 0
        while (end := wire.find(b"\r\n", pos)) < 0:
            data = sock.recv(recv_size)
            if not data:
                raise EOFError("closed before the last chunk")
            wire += data
        line = bytes(wire[pos:end])
        assert re.fullmatch(rb"[0-9a-f]+", line), line
        size = int(line, 16)
        pos = end + 2
        while len(wire) - pos < size + 2:
            data = sock.recv(recv_size)
            if not data:
                raise EOFError("closed in a chunk")
            wire += data
        assert wire[pos + size : pos + size + 2] == b"\r\n"
        if size == 0:
            return bytes(out), bytes(wire[pos + 2 :])
        out += wire[pos : pos + size]
        pos += size + 2


def get_zip(port: int, path: str = "/photos/?download=zip") -> tuple[dict[str, str], bytes]:
    with connect(port) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        status, headers, rest = read_head(sock)
        assert status == 200, rest
        body, extra = read_chunked(sock, rest, recv_size=4093)
        assert extra == b""
    return headers, body


def check_archive(data: bytes, files: dict[str, bytes], folders: set[str], tmp: Path) -> None:
    """testzip, unzip -t, and the entries exactly the tree's."""
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        assert z.testzip() is None
        assert set(z.namelist()) == set(files) | folders
        for name, content in files.items():
            assert z.read(name) == content, name
        for info in z.infolist():
            assert info.flag_bits & 0x800  # UTF-8 names
            assert info.compress_type == zipfile.ZIP_STORED
    path = tmp / "got.zip"
    path.write_bytes(data)
    done = subprocess.run(["unzip", "-t", str(path)], capture_output=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert b"No errors detected" in done.stdout


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, dict[str, bytes], set[str]]:
    return make_tree(tmp_path)


@pytest.fixture(params=[True, False], ids=["sendfile", "read-send"])
def zip_server(
    request: pytest.FixtureRequest, tree: tuple[Path, dict[str, bytes], set[str]]
) -> Iterator[RunningServer]:
    with running(tree[0], listing=True, use_sendfile=request.param) as srv:
        yield srv


def zip_conns(srv: RunningServer) -> list[Connection]:
    return [t.conn for t in srv.server.transports() if t.conn.produced is not None]


def test_the_archive_is_the_tree_byte_for_byte(
    zip_server: RunningServer, tree: tuple[Path, dict[str, bytes], set[str]], tmp_path: Path
) -> None:
    _, files, folders = tree
    headers, body = get_zip(zip_server.port)
    assert headers["content-type"] == "application/zip"
    assert headers["transfer-encoding"] == "chunked"
    assert "content-length" not in headers and "etag" not in headers
    assert headers["content-disposition"] == (
        "attachment; filename=\"photos.zip\"; filename*=UTF-8''photos.zip"
    )
    check_archive(body, files, folders, tmp_path)
    assert zip_server.server.ctx.zips == 0


def test_the_listing_link_downloads_the_folder(
    zip_server: RunningServer, tree: tuple[Path, dict[str, bytes], set[str]], tmp_path: Path
) -> None:
    files = tree[1]
    with connect(zip_server.port) as sock:
        sock.sendall(b"GET /photos/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        page = b""
        while data := sock.recv(65536):
            page += data
    links = re.findall(rb'href="([^"]*download=zip)"', page)
    assert b"sub/?download=zip" in links
    _, body = get_zip(zip_server.port, "/photos/sub/?download=zip")
    sub = {k.removeprefix("photos/"): v for k, v in files.items() if k.startswith("photos/sub/")}
    check_archive(body, sub, {"sub/deep/"}, tmp_path)


def test_curl_downloads_a_valid_archive(
    tree: tuple[Path, dict[str, bytes], set[str]], tmp_path: Path
) -> None:
    root, files, folders = tree
    with running(root, listing=True) as srv:
        out = tmp_path / "curl.zip"
        done = curl("-o", str(out), "-D", "-", f"{srv.url}/photos/?download=zip")
        assert done.returncode == 0, done.stderr
        assert b"content-disposition: attachment" in done.stdout.lower()
        check_archive(out.read_bytes(), files, folders, tmp_path)
        # The non-ASCII folder name: an ASCII fallback and the exact name (RFC 8187).
        (root / "été").mkdir()
        (root / "été" / "f.txt").write_bytes(b"f\n")
        done = curl("-I", f"{srv.url}/%C3%A9t%C3%A9/?download=zip")
        assert b"filename=\"_t_.zip\"; filename*=UTF-8''%C3%A9t%C3%A9.zip" in done.stdout


def test_head_gets_the_head_and_the_connection_goes_on(
    zip_server: RunningServer, tree: tuple[Path, dict[str, bytes], set[str]], tmp_path: Path
) -> None:
    _, files, folders = tree
    with connect(zip_server.port) as sock:
        req = b"HEAD /photos/?download=zip HTTP/1.1\r\nHost: x\r\n\r\n"
        sock.sendall(req + req.replace(b"HEAD", b"GET"))
        status, headers, rest = read_head(sock)
        assert status == 200 and headers["transfer-encoding"] == "chunked"
        assert headers["connection"] == "keep-alive"
        status, headers, rest = read_head(sock, rest)  # the next response follows at once
        assert status == 200
        body, _ = read_chunked(sock, rest)
    check_archive(body, files, folders, tmp_path)
    assert zip_server.server.ctx.zips == 0


def test_http_10_gets_the_archive_delimited_by_the_close(
    zip_server: RunningServer, tree: tuple[Path, dict[str, bytes], set[str]], tmp_path: Path
) -> None:
    _, files, folders = tree
    with connect(zip_server.port) as sock:
        sock.sendall(b"GET /photos/?download=zip HTTP/1.0\r\n\r\n")
        status, headers, body = read_head(sock)
        while data := sock.recv(65536):
            body += data
    assert status == 200 and "transfer-encoding" not in headers
    assert headers["connection"] == "close"
    check_archive(body, files, folders, tmp_path)


def test_only_where_a_listing_would_show(
    tree: tuple[Path, dict[str, bytes], set[str]], tmp_path: Path
) -> None:
    root, _, _ = tree
    with running(root) as srv:  # no --listing: the query changes nothing
        with connect(srv.port) as sock:
            sock.sendall(b"GET /photos/?download=zip HTTP/1.1\r\nHost: x\r\n\r\n")
            status, headers, _ = read_head(sock)
        assert status == 404 and headers["content-type"].startswith("text/plain")
    with running(root, listing=True) as srv:  # an index.html stands in for the listing
        with connect(srv.port) as sock:
            sock.sendall(b"GET /?download=zip HTTP/1.1\r\nHost: x\r\n\r\n")
            status, headers, _ = read_head(sock)
        assert status == 200 and headers["content-type"].startswith("text/html")


def test_with_auth_scope_all_the_archive_needs_an_account(
    tree: tuple[Path, dict[str, bytes], set[str]], tmp_path: Path
) -> None:
    import base64

    from evloop_httpd import hasher

    root, files, folders = tree
    salt = b"0123456789abcdef"
    key = hasher._scrypt(b"pw", salt, 4, 8, 1, 32)
    accounts = tmp_path / "accounts"
    accounts.write_text(
        f"ann:$scrypt$ln=4,r=8,p=1${hasher._b64encode(salt)}${hasher._b64encode(key)}\n"
    )
    token = base64.b64encode(b"ann:pw").decode()
    with running(root, listing=True, auth_file=accounts, auth_scope="all") as srv:
        with connect(srv.port) as sock:
            sock.sendall(b"GET /photos/?download=zip HTTP/1.1\r\nHost: x\r\n\r\n")
            status, headers, _ = read_head(sock)
        assert status == 401 and headers["content-type"].startswith("text/plain")
        assert srv.server.ctx.zips == 0
        with connect(srv.port) as sock:
            sock.sendall(
                b"GET /photos/?download=zip HTTP/1.1\r\nHost: x\r\n"
                b"Authorization: Basic " + token.encode() + b"\r\n\r\n"
            )
            status, _, rest = read_head(sock)
            assert status == 200
            body, _ = read_chunked(sock, rest)
    check_archive(body, files, folders, tmp_path)


def test_a_tree_too_deep_is_refused_before_any_byte(tmp_path: Path) -> None:
    root = tmp_path / "www"
    deep = root / "top" / "/".join(["d"] * 65)
    deep.mkdir(parents=True)
    (deep / "f.txt").write_bytes(b"far down\n")
    with running(root, listing=True) as srv:
        with connect(srv.port) as sock:
            sock.sendall(b"GET /top/?download=zip HTTP/1.1\r\nHost: x\r\n\r\n")
            status, headers, rest = read_head(sock)
            while len(rest) < int(headers["content-length"]):
                rest += sock.recv(4096)
            assert status == 403 and b"deeper than 64" in rest
            # The connection goes on, and the slot was given back: 64 levels are fine.
            sock.sendall(b"GET /top/d/d/?download=zip HTTP/1.1\r\nHost: x\r\n\r\n")
            status, _, rest = read_head(sock)
            assert status == 200
            body, _ = read_chunked(sock, rest)
        with zipfile.ZipFile(io.BytesIO(body)) as z:
            assert z.read("d/" + "d/" * 63 + "f.txt") == b"far down\n"
        assert srv.server.ctx.zips == 0


def sparse_tree(tmp_path: Path, count: int, size: int) -> Path:
    root = tmp_path / "www"
    top = root / "big"
    top.mkdir(parents=True)
    for i in range(count):
        with open(top / f"f{i}.bin", "wb") as f:
            f.truncate(size)
    (root / "hello.txt").write_bytes(b"hello\n")
    return root


def send_buffer_max() -> int:
    """The most a TCP send buffer grows to on this machine (the last field of tcp_wmem)."""
    try:
        return int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    except (OSError, ValueError, IndexError):
        return 16 * MIB


def slow_client(port: int, path: bytes) -> socket.socket:
    """A client with a tiny receive buffer that has sent a GET and read nothing yet."""
    sock = connect(port, rcvbuf=4096)
    sock.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    return sock


def settled_sent(srv: RunningServer) -> int:
    """How much the stalled download's connection has produced, once that stops growing."""
    last = [-1, 0]

    def still() -> bool:
        conns = zip_conns(srv)
        sent = conns[0].sent if conns else -1
        if sent == last[0] and sent > 0:
            last[1] += 1
        else:
            last[0], last[1] = sent, 0
        return last[1] >= 20  # unchanged over 20 polls (100 ms): the socket is full

    assert wait_until(still)
    return last[0]


def test_a_reader_that_stops_gets_no_more_made_and_blocks_no_one(tmp_path: Path) -> None:
    # Each file alone is more than the kernel's buffers can take (and every MiB costs time
    # through the client's 4 KiB window: 8 MiB files here, not 32).
    size = send_buffer_max() + 4 * MIB
    root = sparse_tree(tmp_path, 2, size)
    with running(root, listing=True) as srv:
        slow = slow_client(srv.port, b"/big/?download=zip")
        status, _, rest = read_head(slow)
        assert status == 200
        sent = settled_sent(srv)
        # Backpressure: what went is what the kernel's buffers hold, plus one piece at most;
        # nothing more was read from disk for a client that reads nothing.
        assert sent < send_buffer_max() + 2 * MIB, sent
        conn = zip_conns(srv)[0]
        assert len(conn.out) - conn.out_pos <= PRODUCE_BYTES + 16  # one piece waits, framed
        for _ in range(20):  # others are served meanwhile
            with connect(srv.port) as probe:
                probe.sendall(b"GET /hello.txt HTTP/1.1\r\nHost: x\r\n\r\n")
                status, _, body = read_head(probe)
                assert status == 200
        assert zip_conns(srv)[0].sent == sent  # still waiting, still nothing more made
        body, _ = read_chunked(slow, rest)
        slow.close()
    with zipfile.ZipFile(io.BytesIO(body)) as z:
        assert z.testzip() is None
        assert [i.file_size for i in z.infolist()] == [size] * 2


@pytest.mark.slow
def test_server_memory_stays_flat_for_a_large_tree(tmp_path: Path) -> None:
    """A subprocess server's peak RSS (VmHWM) over a 256 MiB archive grows by far less than
    it, or than any one of its files: the archive passes through one piece at a time."""
    root = sparse_tree(tmp_path, 4, 64 * MIB)
    proc = spawn_cli("-b", "127.0.0.1", "-p", "0", "--listing", "-d", str(root))
    try:
        port = read_serving_port(proc)

        def hwm_kib() -> int:
            status = Path(f"/proc/{proc.pid}/status").read_text()
            return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1))  # type: ignore[union-attr]

        before = hwm_kib()
        total = 0
        with connect(port) as sock:
            sock.sendall(b"GET /big/?download=zip HTTP/1.1\r\nHost: x\r\n\r\n")
            status, _, rest = read_head(sock)
            assert status == 200
            body, _ = read_chunked_counting(sock, rest)
            total = body
        assert total > 256 * MIB
        grew = hwm_kib() - before
        assert grew < 48 * 1024, f"peak RSS grew by {grew} KiB for a {total >> 20} MiB archive"
    finally:
        proc.terminate()
        proc.wait(timeout=DEADLINE_S)


def read_chunked_counting(sock: socket.socket, buf: bytes) -> tuple[int, bytes]:
    """A chunked body's length, without keeping it (the client's memory stays flat too)."""
    total = 0
    view = bytearray(buf)
    while True:
        while b"\r\n" not in view:
            data = sock.recv(1 << 20)
            if not data:
                raise EOFError("closed before the last chunk")
            view += data
        end = view.index(b"\r\n")
        size = int(view[:end], 16)
        del view[: end + 2]
        while len(view) < size + 2:
            data = sock.recv(1 << 20)
            if not data:
                raise EOFError("closed in a chunk")
            view += data
        total += size
        del view[: size + 2]
        if size == 0:
            return total, bytes(view)


@pytest.mark.parametrize("change", ["truncate", "unlink"])
def test_a_file_changed_mid_stream(tmp_path: Path, change: str) -> None:
    """Truncated under the stream: the entry holds the bytes read, its sizes and CRC say so,
    and the archive stays valid. Unlinked after it was opened: read whole through the
    descriptor held. Either way no silent corruption (see limits.md)."""
    root = tmp_path / "www"
    (root / "c").mkdir(parents=True)
    # The stalled reader's connection settles at about 40 KiB sent: changing the file at
    # 4 MiB is well ahead of the stream, and the client's 4 KiB window makes every MiB cost.
    original = os.urandom(8 * MIB)
    target = root / "c" / "f.bin"
    target.write_bytes(original)
    with running(root, listing=True) as srv:
        slow = slow_client(srv.port, b"/c/?download=zip")
        status, _, rest = read_head(slow)
        assert status == 200
        sent = settled_sent(srv)
        assert sent < 2 * MIB  # the stream has not read past 2 MiB of the file yet
        if change == "truncate":
            os.truncate(target, 4 * MIB)
        else:
            target.unlink()
        body, _ = read_chunked(slow, rest)
        slow.close()
    with zipfile.ZipFile(io.BytesIO(body)) as z:
        assert z.testzip() is None
        got = z.read("c/f.bin")
    assert got == (original[: 4 * MIB] if change == "truncate" else original)


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_client_reset_mid_stream_leaks_no_descriptor(tmp_path: Path) -> None:
    root = sparse_tree(tmp_path, 2, 64 * MIB)
    nested = root / "big" / "a" / "b" / "c"
    nested.mkdir(parents=True)
    with open(nested / "g.bin", "wb") as f:
        f.truncate(64 * MIB)
    with running(root, listing=True) as srv:
        base = fd_count()
        for _ in range(3):
            slow = slow_client(srv.port, b"/big/?download=zip")
            status, _, _ = read_head(slow)
            assert status == 200
            settled_sent(srv)
            assert fd_count() > base + 1  # the walk holds descriptors of its own
            slow.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            slow.close()  # a reset
            assert wait_until(lambda: srv.server.count == 0)
        assert wait_until(lambda: fd_count() == base), (fd_count(), base)
        assert srv.server.ctx.zips == 0


def test_beyond_the_cap_a_503_then_a_slot_again(tmp_path: Path) -> None:
    root = sparse_tree(tmp_path, 1, 64 * MIB)
    with running(root, listing=True, max_zips=1) as srv:
        slow = slow_client(srv.port, b"/big/?download=zip")
        assert read_head(slow)[0] == 200
        with connect(srv.port) as sock:
            sock.sendall(b"GET /big/?download=zip HTTP/1.1\r\nHost: x\r\n\r\n")
            status, headers, rest = read_head(sock)
            assert status == 503 and headers["retry-after"] == "5"
            while len(rest) < int(headers["content-length"]):
                rest += sock.recv(4096)
            assert b"too many folder downloads" in rest
            sock.sendall(b"GET /hello.txt HTTP/1.1\r\nHost: x\r\n\r\n")  # still usable
            assert read_head(sock, rest[int(headers["content-length"]) :])[0] == 200
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        slow.close()
        assert wait_until(lambda: srv.server.ctx.zips == 0)
        _, body = get_zip(srv.port, "/big/?download=zip")
        with zipfile.ZipFile(io.BytesIO(body)) as z:
            assert z.testzip() is None


def test_four_downloads_at_once_read_in_turns(
    tree: tuple[Path, dict[str, bytes], set[str]], tmp_path: Path
) -> None:
    """The default cap's worth of downloads, read a little from each in turn: each is whole,
    and all four were under way together (no one waited for another to end)."""
    root, files, folders = tree
    # More than loopback's buffers hold (the server's send buffer at its largest, and our
    # receive buffer, kept small): all four stay under way. 8 MiB here, where 24 MiB used to be
    # needed with a receive buffer left to grow.
    big = os.urandom(send_buffer_max() + 4 * MIB)
    (root / "photos" / "big.bin").write_bytes(big)
    files = {**files, "photos/big.bin": big}
    with running(root, listing=True) as srv:
        socks = []
        for _ in range(4):
            socks.append(connect(srv.port, rcvbuf=64 * 1024))
        for sock in socks:
            sock.sendall(b"GET /photos/?download=zip HTTP/1.1\r\nHost: x\r\n")
            sock.sendall(b"Connection: close\r\n\r\n")
        rests = [read_head(sock) for sock in socks]
        assert all(status == 200 for status, _, _ in rests)
        assert wait_until(lambda: srv.server.ctx.zips == 4)
        wires = [bytearray(rest) for _, _, rest in rests]  # not bytes: += would copy it all
        done = [False] * 4
        while not all(done):
            for i, sock in enumerate(socks):
                if not done[i]:
                    data = sock.recv(65536)
                    wires[i] += data
                    done[i] = not data  # Connection: close: the end of the stream
        for sock in socks:
            sock.close()
    for wire in wires:
        body, _ = read_chunked(socket.socket(), bytes(wire))  # all of it is in hand: no recv
        check_archive(body, files, folders, tmp_path)


def test_a_graceful_stop_lets_the_download_finish(tmp_path: Path) -> None:
    size = send_buffer_max() + 4 * MIB  # still under way at the stop, whatever the buffers
    root = sparse_tree(tmp_path, 1, size)
    srv = RunningServer(make_config(root, listing=True))
    try:
        slow = slow_client(srv.port, b"/big/?download=zip")
        status, _, rest = read_head(slow)
        assert status == 200
        settled_sent(srv)
        srv.server.request_stop()
        body, _ = read_chunked(slow, rest)  # whole, within --shutdown-timeout
        slow.close()
    finally:
        srv.stop()
    with zipfile.ZipFile(io.BytesIO(body)) as z:
        assert z.testzip() is None and z.infolist()[0].file_size == size


def tls_setup(tmp_path: Path) -> tuple[dict[str, object], ssl.SSLContext]:
    """Server settings for HTTPS with a throwaway certificate, and a client context."""
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    leaf = ca.issue_cert("localhost", "127.0.0.1")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return {"tls_cert": cert, "tls_key": key}, ctx


def test_over_tls(tree: tuple[Path, dict[str, bytes], set[str]], tmp_path: Path) -> None:
    root, files, folders = tree
    settings, ctx = tls_setup(tmp_path)
    big = os.urandom(3 * MIB)
    (root / "photos" / "big.bin").write_bytes(big)
    with running(root, listing=True, **settings) as srv:
        raw = socket.create_connection(("127.0.0.1", srv.port), timeout=DEADLINE_S)
        with ctx.wrap_socket(raw, server_hostname="localhost") as sock:
            sock.sendall(b"GET /photos/?download=zip HTTP/1.1\r\nHost: x\r\n\r\n")
            status, _, rest = read_head(sock)
            assert status == 200
            body, _ = read_chunked(sock, rest, recv_size=1000)
    check_archive(body, {**files, "photos/big.bin": big}, folders, tmp_path)


def test_over_tls_a_reader_that_stops_then_reads_on(tmp_path: Path) -> None:
    """The piece OpenSSL could not take whole (SSLWantWriteError) is retried from where it
    stopped, once the client reads again: the archive arrives whole."""
    root = tmp_path / "www"
    (root / "c").mkdir(parents=True)
    content = os.urandom(24 * MIB)
    (root / "c" / "f.bin").write_bytes(content)
    settings, ctx = tls_setup(tmp_path)
    with running(root, listing=True, **settings) as srv:
        raw = connect(srv.port, rcvbuf=4096)
        with ctx.wrap_socket(raw, server_hostname="localhost") as sock:
            sock.sendall(b"GET /c/?download=zip HTTP/1.1\r\nHost: x\r\n\r\n")
            status, _, rest = read_head(sock)
            assert status == 200
            assert settled_sent(srv) < 16 * MIB
            body, _ = read_chunked(sock, rest)
    with zipfile.ZipFile(io.BytesIO(body)) as z:
        assert z.testzip() is None and z.read("c/f.bin") == content


def test_if_none_match_on_a_zip_gets_the_archive_and_leaks_nothing(
    zip_server: RunningServer, tree: tuple[Path, dict[str, bytes], set[str]], tmp_path: Path
) -> None:
    # History: the response cache's revalidation (a GET with If-None-Match and no entry) asked
    # the handler for the ZIP's plan, did not keep it, and dropped it without closing its
    # stream: two descriptors leaked per request, and the handler was asked twice.
    _, files, folders = tree
    base = fd_count()
    for _ in range(3):
        with connect(zip_server.port) as sock:
            sock.sendall(
                b'GET /photos/?download=zip HTTP/1.1\r\nHost: x\r\nIf-None-Match: "x"\r\n\r\n'
            )
            status, _, rest = read_head(sock)
            assert status == 200
            body, _ = read_chunked(sock, rest)
        check_archive(body, files, folders, tmp_path)
    assert wait_until(lambda: zip_server.server.count == 0)
    assert fd_count() == base, (fd_count(), base)
