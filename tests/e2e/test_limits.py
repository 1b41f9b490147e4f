"""Limits end to end: the connection cap, graceful shutdown under load, and the memory and
descriptors that idle connections and a long run of requests cost.
"""

from __future__ import annotations

import contextlib
import os
import resource
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ..conftest import SMALL
from ..helpers import (
    DEADLINE_S,
    REPO,
    Client,
    connect,
    get,
    read_serving_port,
    request,
    running,
    spawn_cli,
    wait_until,
)

BIG = 16 * 1024 * 1024


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


AT_REST = 8  # a spawn_cli server's descriptors with no connection (listed where it is checked)


def test_max_connections_pauses_accept_until_a_slot_frees(www: Path) -> None:
    with running(www, max_connections=5) as srv:
        held = [Client(srv.port) for _ in range(5)]
        try:
            for c in held:
                c.send(get("/hello.txt"))
                assert c.read_response().body == SMALL
            assert srv.server.count == 5
            waiting = connect(srv.port)  # the kernel queues it; the server must not take it
            waiting.sendall(get("/hello.txt"))
            assert not select.select([waiting], [], [], 0.3)[0]
            assert srv.server.count == 5
            held.pop().close()
            waiting.settimeout(DEADLINE_S)
            assert waiting.recv(4096).startswith(b"HTTP/1.1 200 ")
            waiting.close()
            assert wait_until(lambda: srv.server.count == 4)
        finally:
            for c in held:
                c.close()


@pytest.mark.slow
def test_sigterm_under_load_finishes_responses_and_aborts_puts(tmp_path: Path) -> None:
    root = tmp_path / "www"
    root.mkdir()
    payload = bytes(range(256)) * (BIG // 256)
    (root / "big.bin").write_bytes(payload)
    (root / "keep.bin").write_bytes(b"old\n")
    proc = spawn_cli("-p", "0", "-d", str(root), "-q", "--shutdown-timeout", "10")
    downloads: list[socket.socket] = []
    puts: list[socket.socket] = []
    idle: list[Client] = []
    try:
        port = read_serving_port(proc)
        for _ in range(4):
            s = connect(port, rcvbuf=16384)
            s.sendall(get("/big.bin"))
            assert s.recv(1) == b"H"  # the response has begun
            downloads.append(s)
        for path in ("/keep.bin", "/new.bin"):
            s = connect(port)
            s.sendall(
                f"PUT {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {BIG}\r\n\r\n".encode()
                + payload[: BIG // 4]
            )
            puts.append(s)
        assert wait_until(lambda: len(list(root.glob(".evloop-upload-*"))) == 2)
        for _ in range(5):
            c = Client(port, recv_size=4096)
            c.send(get("/big.bin", method="HEAD"))
            c.read_response(head_request=True)
            idle.append(c)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        # In-flight downloads complete, byte for byte.
        for s in downloads:
            data = bytearray(b"H")  # bytes += would be quadratic over 16 MiB of small reads
            while chunk := s.recv(1 << 20):
                data += chunk
            _head, body = bytes(data).split(b"\r\n\r\n", 1)
            assert len(body) == len(payload), (len(body), time.monotonic() - started)
            assert body == payload
            s.close()
        # Half-received PUTs are dropped, with nothing left on disk.
        for s in puts:
            s.settimeout(DEADLINE_S)
            with contextlib.suppress(ConnectionResetError):
                assert s.recv(4096) == b""
        for c in idle:
            assert c.closed_by_peer()
        proc.wait(DEADLINE_S)
        assert time.monotonic() - started < 10 + DEADLINE_S
    finally:
        for s in downloads + puts:
            s.close()
        for c in idle:
            c.close()
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.communicate(timeout=DEADLINE_S)
    assert proc.returncode == 0
    assert (root / "keep.bin").read_bytes() == b"old\n"
    assert not (root / "new.bin").exists()
    assert not list(root.glob(".evloop-upload-*"))


@pytest.mark.slow
def test_idle_connections_cost_is_bounded_and_returned(tmp_path: Path) -> None:
    n = 3000
    root = tmp_path / "www"
    root.mkdir()
    (root / "hello.txt").write_bytes(SMALL)
    proc = spawn_cli("-p", "0", "-d", str(root), "-q", "--idle-timeout", "120")
    clients: list[socket.socket] = []
    try:
        port = read_serving_port(proc)
        assert request(port, get("/hello.txt")).body == SMALL
        # At rest: stdin, stdout, stderr and the log's own non-blocking view of that pipe
        # (log.py), epoll, the waker pair and the listener.
        assert wait_until(lambda: open_fds(proc.pid) == AT_REST), open_fds(proc.pid)
        rss0, fds0 = rss_kib(proc.pid), open_fds(proc.pid)
        for _ in range(n):
            s = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE_S)
            s.sendall(get("/hello.txt"))
            clients.append(s)
        for s in clients:
            assert s.recv(4096).startswith(b"HTTP/1.1 200 ")
        assert wait_until(lambda: open_fds(proc.pid) >= fds0 + n)
        per_conn = (rss_kib(proc.pid) - rss0) * 1024 / n
        # Measured about 1 KiB each; 16 KiB would mean buffers kept per idle connection.
        assert per_conn < 16 * 1024, per_conn
        print(f"idle connection cost: {per_conn:.0f} bytes each over {n}")
        for s in clients:
            s.close()
        clients.clear()
        assert wait_until(lambda: open_fds(proc.pid) == fds0), open_fds(proc.pid)
        assert request(port, get("/hello.txt")).body == SMALL
    finally:
        for s in clients:
            s.close()
        proc.terminate()
        proc.communicate(timeout=DEADLINE_S)
    assert proc.returncode == 0


@pytest.mark.slow
def test_soak_has_no_descriptor_or_memory_growth(tmp_path: Path) -> None:
    root = tmp_path / "www"
    root.mkdir()
    (root / "hello.txt").write_bytes(SMALL)
    (root / "mid.bin").write_bytes(b"m" * 100_000)
    proc = spawn_cli("-p", "0", "-d", str(root), "-q")
    try:
        port = read_serving_port(proc)

        def round_() -> None:
            with Client(port, recv_size=65536) as c:
                batch = (
                    get("/hello.txt")
                    + get("/mid.bin", method="HEAD")
                    + get("/missing")
                    + b"PUT /up.txt HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
                    + get("/mid.bin")
                )
                c.send(batch * 20)
                for _ in range(20):
                    assert c.read_response().status == 200
                    assert c.read_response(head_request=True).status == 200
                    assert c.read_response().status == 404
                    assert c.read_response().status in (201, 204)
                    assert len(c.read_response().body) == 100_000
            assert request(port, get("/hello.txt", "Connection: close\r\n")).body == SMALL

        for _ in range(50):  # warm-up
            round_()
        assert wait_until(lambda: open_fds(proc.pid) == AT_REST), open_fds(proc.pid)
        rss0, fds0 = rss_kib(proc.pid), open_fds(proc.pid)
        # 20,000 more requests (it was 40,000 for twice the bound: the same 52 bytes a request;
        # measured growth is 30 to 70 KiB).
        for _ in range(200):
            round_()
        assert wait_until(lambda: open_fds(proc.pid) == fds0), (open_fds(proc.pid), fds0)
        growth = rss_kib(proc.pid) - rss0
        assert growth < 1024, f"RSS grew {growth} KiB over 20,000 requests"
    finally:
        proc.terminate()
        proc.communicate(timeout=DEADLINE_S)
    assert proc.returncode == 0
    assert not list(root.glob(".evloop-upload-*"))


def test_cli_raises_soft_nofile_towards_max_connections(tmp_path: Path) -> None:
    # The server should not hit EMFILE long before --max-connections just because the
    # inherited soft limit is low (1024 on many systems) while the hard limit allows more.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    proc = subprocess.Popen(
        [sys.executable, "-m", "evloop_httpd", "-p", "0", "-d", str(tmp_path), "-q"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard)),
    )
    try:
        read_serving_port(proc)
        with open(f"/proc/{proc.pid}/limits") as f:
            line = next(x for x in f if x.startswith("Max open files"))
        new_soft = int(line.split()[3])
        assert new_soft == min(hard, 3 * 10_000 + 64), line  # room for 10,000 uploads
    finally:
        proc.terminate()
        proc.communicate(timeout=DEADLINE_S)
    assert soft > 0


def read_at(sock: socket.socket, rate: int, give_up_s: float) -> tuple[float, int]:
    """Read ``rate`` bytes a second (in tenths) until the server closes or ``give_up_s`` pass.
    Returns (seconds until closed, or ``inf``; bytes read)."""
    start = time.monotonic()
    got = 0
    sock.settimeout(0.1)
    while time.monotonic() - start < give_up_s:
        allowed = int(rate * (time.monotonic() - start)) - got
        try:
            chunk = sock.recv(max(1, min(allowed, 4096))) if allowed > 0 else None
        except TimeoutError:
            continue
        except (ConnectionResetError, BrokenPipeError):
            return time.monotonic() - start, got
        if chunk == b"":
            return time.monotonic() - start, got
        if chunk is None:
            time.sleep(0.02)  # pacing the reader is the behaviour under test, not a sync
            continue
        got += len(chunk)
    return float("inf"), got


def download_slowly(
    root: Path, stall: float, min_rate: int, rate: int, give_up_s: float
) -> tuple[float, int]:
    """GET a ``BIG`` sparse file under ``--stall-timeout stall --min-rate min_rate`` through a
    16 KiB receive buffer, reading at ``rate`` (``read_at``): (seconds until cut off, bytes)."""
    with open(root / "big.bin", "wb") as f:
        f.truncate(BIG)
    with running(root, timeouts={"stall_s": stall, "min_rate_bytes_s": min_rate}) as srv:
        sock = connect(srv.port, rcvbuf=16 * 1024)
        try:
            sock.sendall(get("/big.bin"))
            return read_at(sock, rate, give_up_s)
        finally:
            sock.close()


@pytest.mark.slow
def test_a_reader_below_min_rate_is_judged_on_what_it_acknowledged(tmp_path: Path) -> None:
    # History: --min-rate counted bytes the kernel took, so a reader at 57 KiB/s under a
    # 100 KiB/s minimum (stall 2 s) kept its slot for about 50 s instead of about 5.
    # Run with a 1 s stall (about 2.3 s to the cut): the margins below stay 0.5 s and more.
    stall, min_rate, rate = 1.0, 100 * 1024, 57 * 1024
    expected = stall / (1 - rate / min_rate)  # reading r of m per second: acked/m = t - stall
    took, got = download_slowly(tmp_path, stall, min_rate, rate, give_up_s=4 * expected)
    print(f"closed after {took:.2f} s, {got} bytes read; expected about {expected:.2f} s")
    assert expected * 0.8 < took < expected * 2, (took, got, expected)  # before: about 50 s
    assert got < BIG


@pytest.mark.slow
def test_a_reader_above_min_rate_is_not_cut_off(tmp_path: Path) -> None:
    # The other side of the bound: a steady reader a little above the minimum stays on for
    # many stall periods although the kernel's buffer is far ahead of it. Five periods of half
    # a second: only a pause of well over half a second in this process could cut it off.
    stall, min_rate, rate = 0.5, 40 * 1024, 60 * 1024
    periods = 5
    took, got = download_slowly(tmp_path, stall, min_rate, rate, give_up_s=periods * stall)
    assert took == float("inf"), (took, got)
    assert got > (periods - 2) * stall * rate


def head_status(sock: socket.socket) -> bytes:
    """Read one response head (not its body) and return its status line."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(256)
        if not chunk:
            raise ConnectionError(f"closed before a full head: {buf!r}")
        buf += chunk
    return buf.split(b"\r\n", 1)[0]


def hold_uploads(port: int, root: Path, n: int) -> list[socket.socket]:
    """``n`` PUTs that send their head and a little body, then wait: each holds its temp file."""
    socks = []
    for i in range(n):
        sock = connect(port)
        sock.sendall(
            f"PUT /up{i}.bin HTTP/1.1\r\nHost: t\r\nContent-Length: 1000000\r\n\r\n".encode()
            + b"x" * 1000
        )
        socks.append(sock)
    return socks


def serve_with_nofile(root: Path, soft: int, hard: int, *args: str) -> subprocess.Popen[str]:
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    return spawn_cli("-p", "0", "-d", str(root), "-q", *args, preexec_fn=limit)


def temps(root: Path) -> int:
    return len(list(root.glob(".evloop-upload-*")))


def test_slow_uploads_leave_descriptors_for_every_get(tmp_path: Path) -> None:
    # History: the open-file limit was sized at one descriptor per connection, but an upload
    # holds three: slow uploads on a third of --max-connections made every uncached GET a 503.
    with open(tmp_path / "big.bin", "wb") as f:
        f.truncate(BIG)
    conns = 90
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert hard >= 3 * conns + 64
    proc = serve_with_nofile(tmp_path, 64, hard, "--max-connections", str(conns))
    socks: list[socket.socket] = []
    try:
        port = read_serving_port(proc)
        socks += hold_uploads(port, tmp_path, conns // 3)
        assert wait_until(lambda: temps(tmp_path) == conns // 3), temps(tmp_path)
        statuses = []
        for _ in range(conns - conns // 3 - 1):
            sock = connect(port)
            socks.append(sock)
            sock.sendall(get("/big.bin"))  # never read: the response holds the file open
            statuses.append(head_status(sock))
        assert statuses == [b"HTTP/1.1 200 OK"] * len(statuses)
        assert temps(tmp_path) == conns // 3  # and no upload was dropped for them
    finally:
        for sock in socks:
            sock.close()
        proc.terminate()
        proc.communicate(timeout=DEADLINE_S)


def test_uploads_past_a_short_descriptor_budget_get_503_and_gets_do_not(tmp_path: Path) -> None:
    # A hard limit too low for every connection to upload: uploads are capped (16 here, what
    # 200 descriptors leave after two per connection and the reserve), GETs are not.
    with open(tmp_path / "big.bin", "wb") as f:
        f.truncate(BIG)
    conns = 60
    proc = serve_with_nofile(tmp_path, 200, 200, "--max-connections", str(conns))
    socks: list[socket.socket] = []
    try:
        port = read_serving_port(proc)
        socks += hold_uploads(port, tmp_path, 16)
        assert wait_until(lambda: temps(tmp_path) == 16), temps(tmp_path)
        with Client(port, recv_size=4096) as extra:
            extra.send(b"PUT /one-more.bin HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\n")
            reply = extra.read_response()
            assert reply.status == 503
            assert reply.header("Retry-After") == "1"
            assert extra.closed_by_peer()
        assert temps(tmp_path) == 16
        statuses = []
        for _ in range(conns - 16):
            sock = connect(port)
            socks.append(sock)
            sock.sendall(get("/big.bin"))
            statuses.append(head_status(sock))
        assert statuses == [b"HTTP/1.1 200 OK"] * len(statuses)
    finally:
        for sock in socks:
            sock.close()
        proc.terminate()
        _, err = proc.communicate(timeout=DEADLINE_S)
    assert "at most 16 uploads at a time;" in err
