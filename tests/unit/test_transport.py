"""The plain transport's send side: which system calls carry a response, and with what flags.

A fake socket records each ``send`` and its flags; its descriptor is a pipe's write end, so
``os.sendfile`` really runs (Linux sends a file into a pipe as into a socket) and the file
bytes can be read back. No network: the end-to-end tests check the same bytes over loopback.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from evloop_httpd import response_cache
from evloop_httpd.connection import Connection
from evloop_httpd.reactor import Server, open_listener
from evloop_httpd.states import ConnState
from evloop_httpd.transport import NOTSENT_LOWAT, Transport

from ..helpers import get, make_config

S = ConnState
BIG = bytes(range(256)) * 800  # 200 KiB: over MAX_BODY_BYTES, streamed from the file
HUNDRED = bytes(range(256)) * 400  # 100 KiB: kept in memory and sent with its head


class RecordingSocket:
    """Takes every ``send`` whole and records it with its flags; ``sendfile`` goes to a pipe."""

    def __init__(self) -> None:
        self.read_end, self.write_end = os.pipe()
        os.set_blocking(self.read_end, False)
        os.set_blocking(self.write_end, False)  # a full pipe says EAGAIN, as a socket would
        self.sends: list[tuple[bytes, int]] = []

    def send(self, data: bytes, flags: int = 0) -> int:
        self.sends.append((bytes(data), flags))
        return len(data)

    def sendmsg(self, buffers: tuple[bytes, ...]) -> int:
        return self.send(b"".join(bytes(b) for b in buffers))

    def fileno(self) -> int:
        return self.write_end

    def streamed(self) -> bytes:
        """What ``sendfile`` wrote into the pipe so far."""
        out = bytearray()
        while True:
            try:
                chunk = os.read(self.read_end, 1 << 20)
            except BlockingIOError:
                return bytes(out)
            if not chunk:
                return bytes(out)
            out += chunk

    def close(self) -> None:
        os.close(self.read_end)
        os.close(self.write_end)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    (tmp_path / "big.bin").write_bytes(BIG)
    (tmp_path / "hundred.bin").write_bytes(HUNDRED)
    (tmp_path / "small.txt").write_bytes(b"small\n")
    srv = Server(make_config(tmp_path))
    try:
        yield srv
    finally:
        srv.close()


@pytest.fixture
def sock() -> Iterator[RecordingSocket]:
    s = RecordingSocket()
    try:
        yield s
    finally:
        s.close()


def serve(srv: Server, sock: RecordingSocket, request: bytes) -> Transport:
    """One request through a fresh connection on ``sock``, pumped until the response is out.
    The pipe holds 64 KiB by default: it is drained between turns, as a reading client would."""
    conn = Connection(srv.ctx, 0.0, ("127.0.0.1", 1), ("127.0.0.1", 2), 1)
    t = Transport(sock, conn, srv.config.use_sendfile)  # type: ignore[arg-type]
    conn.receive(request, 0.0)
    body = bytearray()
    for _ in range(1000):
        srv.start_turn()
        t.pump(0.0)
        body += sock.streamed()
        if conn.state is S.READING_HEADERS and not conn.out:
            break
    else:
        raise AssertionError("the response never finished")
    sock.file_bytes = bytes(body)  # type: ignore[attr-defined]
    return t


def test_the_head_of_a_streamed_file_asks_the_kernel_to_wait_for_its_body(
    server: Server, sock: RecordingSocket
) -> None:
    serve(server, sock, get("/big.bin"))
    # One send, the head, with MSG_MORE: the file's first bytes share its segment.
    assert len(sock.sends) == 1
    head, flags = sock.sends[0]
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and head.endswith(b"\r\n\r\n")
    assert b"Content-Length: %d\r\n" % len(BIG) in head
    assert flags & socket.MSG_MORE
    assert sock.file_bytes == BIG  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "request_bytes",
    [get("/big.bin", method="HEAD"), get("/small.txt"), get("/missing")],
    ids=["head-of-a-big-file", "small-file", "404"],
)
def test_a_response_with_nothing_after_it_is_pushed_at_once(
    server: Server, sock: RecordingSocket, request_bytes: bytes
) -> None:
    # MSG_MORE here would leave the response waiting in the kernel for bytes that never come.
    serve(server, sock, request_bytes)
    assert sock.sends and all(flags == 0 for _, flags in sock.sends)
    assert sock.file_bytes == b""  # type: ignore[attr-defined]


def test_a_100_kib_file_goes_out_from_memory_with_its_head(
    server: Server, sock: RecordingSocket
) -> None:
    assert len(HUNDRED) <= response_cache.MAX_BODY_BYTES
    serve(server, sock, get("/hundred.bin"))  # the first GET fills the cache
    first = len(sock.sends)
    serve(server, sock, get("/hundred.bin"))
    # The repeat: one send holding head and body, nothing by sendfile.
    assert len(sock.sends) == first + 1
    data, flags = sock.sends[-1]
    assert flags == 0
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and body == HUNDRED
    assert sock.file_bytes == b""  # type: ignore[attr-defined]


def test_listeners_hand_a_small_unsent_queue_to_accepted_sockets(tmp_path: Path) -> None:
    # History: with megabytes of unsent data queued, the client's ACKs did the sending in its
    # CPU's softirq and ours idled: 10 MiB downloads ran at half the threaded server's speed.
    made_elsewhere = open_listener("127.0.0.1", 0)  # as systemd's or the supervisor's would be
    srv = Server(make_config(tmp_path))
    try:
        srv.adopt([made_elsewhere])  # bind() adopts the socket it opens the same way
        for listening in srv.listeners:
            lsock = listening.sock
            assert lsock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT) == NOTSENT_LOWAT
        # What the reactor relies on: an accepted socket inherits it (Linux copies it).
        client = socket.create_connection(made_elsewhere.getsockname()[:2], timeout=10)
        made_elsewhere.setblocking(True)
        made_elsewhere.settimeout(10)
        accepted, _ = made_elsewhere.accept()
        with client, accepted:
            lowat = accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT)
            assert lowat == NOTSENT_LOWAT
    finally:
        srv.close()
