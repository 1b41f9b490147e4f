"""log.py's sinks: a log shared with other processes never blocks the loop that writes it.

No server here: a pipe, a socket pair, and a sink writing to them, as a worker's stderr sink
does. The "other worker" fills the pipe through a description of its own."""

from __future__ import annotations

import os
import select
import socket
import threading
from collections.abc import Callable

from evloop_httpd.log import _Sink

from ..helpers import DEADLINE_S


class AlwaysWritable:
    """A poll that says "writable" every time: what a worker sees when another worker fills
    the pipe between its poll and its write."""

    def poll(self, timeout: int = 0) -> list[tuple[int, int]]:
        return [(0, select.POLLOUT)]


CHUNK = b"x" * 4096


def until_refused(step: Callable[[], int]) -> int:
    """Repeat ``step`` (a non-blocking write, or read) until it would block or moves nothing:
    the bytes it moved in all."""
    n = 0
    while True:
        try:
            moved = step()
        except BlockingIOError:
            return n
        if not moved:
            return n
        n += moved


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
            # The other worker's lines fill the pipe.
            assert until_refused(lambda: os.write(other, CHUNK)) > 0
            sink.add("a whole line\n")
            returned = flush_returns(sink)
            os.set_blocking(r, False)  # the reader catches up (and frees a blocked writer)
            until_refused(lambda: len(os.read(r, 1 << 16)))
            os.set_blocking(r, True)
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
        until_refused(lambda: ours.send(CHUNK))  # the other worker's lines fill it
        ours.setblocking(True)  # as a process's stderr socket is
        with os.fdopen(os.dup(ours.fileno()), "w") as stderr:
            sink = _Sink(stderr, owned=False)
            sink._poll = AlwaysWritable()  # type: ignore[assignment]
            sink.add("a whole line\n")
            returned = flush_returns(sink)
            journal.setblocking(False)
            until_refused(lambda: len(journal.recv(1 << 16)))  # the journal catches up
            assert returned, "a flush blocked on a full socket"
            sink.close()
    finally:
        ours.close()
        journal.close()
