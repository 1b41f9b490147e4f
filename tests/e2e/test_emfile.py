"""Out of file descriptors: a server with a lowered RLIMIT_NOFILE is driven into EMFILE. It must
not crash, must not spin on a listener it cannot serve, and must recover by itself once clients
leave.
"""

from __future__ import annotations

import contextlib
import os
import resource
import socket
import time
from pathlib import Path

from ..helpers import DEADLINE_S, get, read_serving_port, request, spawn_cli, wait_until

NOFILE = 64


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # After the ")" closing comm: state is field 3, utime 14 and stime 15 (1-based).
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _lower_nofile() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))


def test_emfile_pauses_accept_without_spinning_and_recovers(tmp_path: Path) -> None:
    root = tmp_path / "www"
    root.mkdir()
    (root / "hello.txt").write_bytes(b"hello\n")
    proc = spawn_cli("-p", "0", "-d", str(root), preexec_fn=_lower_nofile)
    clients: list[socket.socket] = []
    try:
        port = read_serving_port(proc)
        assert request(port, get("/hello.txt")).body == b"hello\n"
        # Twice as many clients as the server has descriptors. connect() succeeds for all of
        # them: the kernel queues what the server cannot accept.
        for _ in range(2 * NOFILE):
            s = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE_S)
            clients.append(s)
        assert wait_until(lambda: open_fds(proc.pid) >= NOFILE - 1), open_fds(proc.pid)
        # Out of descriptors now. Over a window of half a second, a server that retried accept
        # in a tight loop would burn most of a core; one that backs off barely registers.
        before, start = cpu_seconds(proc.pid), time.monotonic()
        time.sleep(0.5)
        used, elapsed = cpu_seconds(proc.pid) - before, time.monotonic() - start
        assert used < 0.5 * elapsed, f"{used:.2f}s CPU in {elapsed:.2f}s: busy loop at EMFILE"
        assert proc.poll() is None, "the server died at EMFILE"
        for s in clients:
            s.close()
        clients.clear()
        # It recovers by itself: the queued clients were abandoned, new ones are served.
        for _ in range(5):
            assert request(port, get("/hello.txt")).body == b"hello\n"
        assert wait_until(lambda: open_fds(proc.pid) < 16), open_fds(proc.pid)
    finally:
        for s in clients:
            s.close()
        proc.terminate()
        _, err = proc.communicate(timeout=DEADLINE_S)
    assert proc.returncode == 0, err
    assert "accept failed" in err
    assert "Traceback" not in err, err


def test_emfile_while_serving_a_file_is_503_not_a_crash(tmp_path: Path) -> None:
    # Existing connections may need a descriptor too (to open the file they asked for).
    root = tmp_path / "www"
    root.mkdir()
    (root / "hello.txt").write_bytes(b"hello\n")
    proc = spawn_cli("-p", "0", "-d", str(root), "-q", preexec_fn=_lower_nofile)
    clients: list[socket.socket] = []
    try:
        port = read_serving_port(proc)
        for _ in range(2 * NOFILE):
            clients.append(socket.create_connection(("127.0.0.1", port), timeout=DEADLINE_S))
        assert wait_until(lambda: open_fds(proc.pid) >= NOFILE), open_fds(proc.pid)
        # Every accepted client asks for a file; those that cannot get a descriptor are told to
        # come back later, and the connection is closed, which frees a slot for the queue.
        statuses = []
        for s in clients:
            s.sendall(get("/hello.txt", "Connection: close\r\n"))
        for s in clients:
            data = b""
            with contextlib.suppress(OSError):
                while chunk := s.recv(4096):
                    data += chunk
            s.close()
            statuses.append(int(data.split(b" ", 2)[1]) if data else 0)
            if statuses[-1] == 503:
                assert b"\r\nRetry-After: 1\r\n" in data
        assert set(statuses) <= {200, 503}, statuses
        assert statuses.count(200) > 0
        assert proc.poll() is None
        assert request(port, get("/hello.txt")).body == b"hello\n"
    finally:
        for s in clients:
            s.close()
        proc.terminate()
        _, err = proc.communicate(timeout=DEADLINE_S)
    assert proc.returncode == 0, err
    assert "Traceback" not in err, err
