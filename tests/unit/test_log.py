"""log.py's sinks: a log shared with other processes never blocks the loop that writes it.

No server here: a pipe, a socket pair, and a sink writing to them, as a worker's stderr sink
does. The "other worker" fills the pipe through a description of its own."""

from __future__ import annotations

import os
import select
import socket
import threading

from evloop_httpd.log import _Sink

from ..helpers import DEADLINE_S


class AlwaysWritable:
    """A poll that says "writable" every time: what a worker sees when another worker fills
    the pipe between its poll and its write."""

    def poll(self, timeout: int = 0) -> list[tuple[int, int]]:
        return [(0, select.POLLOUT)]


def fill(fd: int) -> int:
    """Write to ``fd`` (non-blocking) until it takes no more; the bytes written."""
    n = 0
    while True:
        try:
            n += os.write(fd, b"x" * 4096)
        except BlockingIOError:
            return n


def flush_returns(sink: _Sink) -> bool:
    """Whether ``sink.flush()`` returns, in a thread, within the deadline (or blocks)."""
    t = threading.Thread(target=sink.flush, daemon=True)
    t.start()
    t.join(DEADLINE_S / 5)
    return not t.is_alive()


def test_a_pipe_filled_by_another_writer_never_blocks_a_flush() -> None:
    r, w = os.pipe()
    other = os.open(f"/proc/self/fd/{w}", os.O_WRONLY | os.O_NONBLOCK)
    try:
        with os.fdopen(w, "w") as stderr:
            sink = _Sink(stderr, owned=False)
            sink._poll = AlwaysWritable()  # type: ignore[assignment]
            assert fill(other) > 0  # the other worker's lines fill the pipe
            sink.add("a whole line\n")
            returned = flush_returns(sink)
            while os.read(r, 1 << 16):  # the reader catches up (and frees a blocked writer)
                if not select.select([r], [], [], 0)[0]:
                    break
            assert returned, "a flush blocked on a full pipe"
            sink.flush()  # the line kept for later goes now, whole
            sink.close()
        os.close(other)
        tail = b""
        while chunk := os.read(r, 1 << 16):
            tail += chunk
        assert tail.endswith(b"a whole line\n")
    finally:
        os.close(r)


def test_the_shared_description_stays_blocking() -> None:
    # O_NONBLOCK belongs to the open file description: set on stderr itself, it would reach
    # the shell and the other workers. The sink takes a description of its own.
    r, w = os.pipe()
    try:
        with os.fdopen(w, "w") as stderr:
            sink = _Sink(stderr, owned=False)
            sink.add("line\n")
            sink.flush()
            assert os.get_blocking(w)
            sink.close()
            assert os.get_blocking(w)
        assert os.read(r, 100) == b"line\n"
    finally:
        os.close(r)


def test_a_socket_full_of_other_lines_never_blocks_a_flush() -> None:
    # systemd gives a service's stderr as a stream socket to the journal.
    ours, journal = socket.socketpair()
    try:
        ours.setblocking(False)
        filled = 0
        while True:
            try:
                filled += ours.send(b"x" * 4096)
            except BlockingIOError:
                break
        ours.setblocking(True)  # as a process's stderr socket is
        with os.fdopen(os.dup(ours.fileno()), "w") as stderr:
            sink = _Sink(stderr, owned=False)
            sink._poll = AlwaysWritable()  # type: ignore[assignment]
            sink.add("a whole line\n")
            returned = flush_returns(sink)
            journal.setblocking(False)
            got = 0
            while got < filled:  # the journal catches up
                try:
                    got += len(journal.recv(1 << 16))
                except BlockingIOError:
                    break
            assert returned, "a flush blocked on a full socket"
            sink.close()
    finally:
        ours.close()
        journal.close()
