"""The socket side of one connection: what to send when, and how a connection ends on the wire.

Theory of operation
-------------------
A :class:`Transport` owns one socket and the bytes in flight on it; the :class:`Connection`
above it owns HTTP and never sees the socket (asyncio's transports and protocols draw the same
line). The connection says what it wants sent (:meth:`Connection.to_send`, then a file span,
:meth:`Connection.file_span`) and what it waits for (``conn.interest``); the transport moves
bytes and tells it what happened (``receive``, ``wrote``, ``streamed``, ``flushed``). Which
system calls do that is the transport's business alone:

* **Send first.** When the connection has something to send, it is sent at once. Waiting for
  the selector to report the socket writable would cost a loop pass for nothing: a socket is
  almost always writable. Only what the kernel refuses (``EAGAIN``) waits for writability.
* **Produced bodies** (a folder's ZIP) are pulled: when ``to_send()`` is empty and there is no
  file span, the transport asks :meth:`Connection.produce` for the next piece, which then
  appears in ``to_send()``. It asks only after the socket took all of the previous one, so a
  client that reads slowly fills the kernel's buffer, ``send`` says ``EAGAIN``, and nothing
  more is made for it until the socket is writable again: the backpressure is the socket's.
  The piece goes through ``_send``, so TLS needs nothing of its own.
* **Files** go with ``os.sendfile`` from the page cache, or ``pread`` + ``send`` where sendfile
  is off or unsupported. The fall-back happens only before any sendfile on this socket has
  worked: a socket that took sendfile once and refuses it now has a real problem. A file that
  ends before the promised length was truncated under us: the connection aborts.
* **Bodies into files.** While the connection reads a ``Content-Length`` PUT body and has
  nothing buffered, it offers a sink (:meth:`Connection.body_sink`: the temp file and the
  bytes due), and the next bytes on the socket are the body's. They go with ``os.splice``,
  socket -> pipe -> file, never through Python and never past the body's end (a pipelined
  request stays in the socket), at most ``SPLICE_STEPS`` pipe-fulls per turn and only within
  the turn's work budget (``ctx.may_start``: each step writes a pipe-full to the page cache);
  the connection is told ``received_into_file(n)`` and keeps its timers and the upload's
  accounting as if it had read them. One pipe serves the whole loop (:class:`SplicePipe`).
  Splice falls back to ``recv`` like sendfile does, only before it ever worked on this
  connection.
* **Held-back batch.** A whole in-memory response that another pipelined response will follow
  at once (:meth:`Connection.response_follows`) is not sent but kept in ``pending`` (up to
  ``STAGE_BYTES``), and the batch goes out with the last one in one ``sendmsg``: one system
  call and one TCP transmission for what would have been sixteen. To the connection these
  bytes are sent, as bytes in the kernel's buffer are; the transport owes them to the socket
  before anything else, and while it does it waits for writability only (whatever the state
  says): a read could bring the client's end of stream, which ends the connection before they
  have left.
* **The end.** After a response that closes the connection (LINGERING), the transport sends
  FIN (``SHUT_WR``) and drains what the client still sends until it closes, because closing
  with unread bytes makes the kernel send a reset, which can destroy the response before the
  client reads it. When the client had asked to close and nothing is unread, it closes at
  once. A connection that ended in the middle of a response (``conn.cut_short``) closes with a
  reset instead, so that the client cannot take a short body for a whole one.

So the selector interest is the connection's (``INTEREST[state]``) except while the transport
has a need of its own: held-back bytes to flush (write), or, in :mod:`tls`, a TLS record to
finish in the other direction. :meth:`Transport.settle` returns that combined mask.

**The PROXY header** (``--proxy-protocol``) comes first on the wire, before the first request
or the TLS ClientHello. It is read without ever taking a byte past it: the transport *peeks*
at what is there (``MSG_PEEK``), the connection parses that and says how many bytes are the
header's (:meth:`Connection.proxy_bytes`), and the transport takes exactly those. So what
follows stays in the kernel for the HTTP parser or OpenSSL (which reads the descriptor itself
and could not be handed bytes already taken), and a header trickled in pieces leaves nothing
unread behind it for the selector to report again.

**Unsent bytes stay few** (``NOTSENT_LOWAT``). Linux lets a socket queue megabytes that are
not yet sent, and a large file fills that queue at once. Then it is the *peer's ACKs* that send
the rest: each ACK frees window, and the kernel transmits more from the queue right there, in
the softirq of whichever CPU took the ACK. On loopback that is the client's CPU, which so does
the whole TCP stack of both ends while ours idles (measured: 10 MiB downloads ran at half the
speed of CPython's threaded server, whose blocking writes keep the sending on its own CPU). A
listener with ``TCP_NOTSENT_LOWAT`` hands that setting to every socket it accepts: the socket
takes only a little beyond what can leave at once, reports writable when the queue drains
below it, and the next ``sendfile`` sends from our side. On a real network it also keeps
memory per connection down and latency for the next response low; bytes in flight are not
limited by it.

One call to :meth:`Transport.pump` sends until the kernel refuses or ``PUMP_BUDGET`` sends
have been made, so one fast client downloading a large file, or sending a deep pipeline, cannot
keep the loop from everyone else.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import struct
import termios
from typing import TYPE_CHECKING, ClassVar, cast

from .proxyproto import MAX_V2_BYTES
from .states import READ, WRITE, ConnState

if TYPE_CHECKING:
    from .connection import Connection

RECV_BYTES = 64 * 1024  # one recv; also what a connection may buffer beyond its head limit
SPLICE_PIPE_BYTES = 1024 * 1024  # asked of the kernel for the splice pipe (F_SETPIPE_SZ)
SPLICE_STEPS = 16  # socket-to-file splices per connection per wake-up, within the work budget
SPLICE_MIN = RECV_BYTES  # a body with less than this still due is read: splice costs more
# Per sendfile call. Each call goes on only while the socket can take more, and with
# NOTSENT_LOWAT that is little more than what the peer's window lets out at once; 256 KiB
# measured as well as 1 MiB or better (docs/performance.md) and bounds a turn to 4 MiB.
SENDFILE_CHUNK = 256 * 1024
NOTSENT_LOWAT = 32 * 1024  # unsent bytes a socket may queue beyond what is in flight
FALLBACK_CHUNK = 64 * 1024  # per pread+send when sendfile is off or unsupported
PUMP_BUDGET = 16  # sends per connection per wake-up, for fairness
STAGE_BYTES = 64 * 1024  # pipelined responses held back to go out in one send
CLOSE = -1  # from settle(): the transport is done, close it

_SENDFILE_UNSUPPORTED = frozenset(
    {errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSOCK, errno.EOVERFLOW}
)
# Errors that say this socket or file system cannot splice (rather than that something failed).
_SPLICE_UNSUPPORTED = frozenset({errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP})
_HAS_SPLICE = hasattr(os, "splice")  # Linux, Python 3.10+
_SPLICE_MOVE = getattr(os, "SPLICE_F_MOVE", 0)
# Non-blocking on the socket's side whatever the socket's own mode; the pipe is always empty
# when a step begins, so it never blocks on the pipe's either.
_SPLICE_FLAGS = _SPLICE_MOVE | getattr(os, "SPLICE_F_NONBLOCK", 0)
_LINGER_RESET = struct.pack("ii", 1, 0)
S = ConnState


_OUTQ: int | None = getattr(termios, "TIOCOUTQ", None)  # SIOCOUTQ on Linux sockets


def unacknowledged(sock: socket.socket) -> int | None:
    """Bytes in ``sock``'s send queue not yet acknowledged by the peer (Linux SIOCOUTQ), or
    None where the kernel cannot tell. Asked only when a sending connection's timer expires:
    about once per ``--stall-timeout`` for a client near ``--min-rate``, seldom for a fast one
    (see ``Connection._progress``)."""
    if _OUTQ is None:
        return None
    try:
        out = fcntl.ioctl(sock.fileno(), _OUTQ, b"\0\0\0\0")
    except OSError:
        return None
    queued: int = struct.unpack("i", out)[0]
    return queued


def tune_listener(sock: socket.socket) -> None:
    """Set what accepted sockets inherit from their listener (Linux copies it): the
    ``NOTSENT_LOWAT`` bound, once here instead of once per connection. Not a TCP socket (a
    Unix one handed over by systemd), or a kernel without the option: left as it is."""
    lowat = getattr(socket, "TCP_NOTSENT_LOWAT", None)
    if lowat is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, lowat, NOTSENT_LOWAT)


class SplicePipe:
    """The pipe a reactor's uploads are spliced through: socket -> pipe -> file.

    One per reactor (held by the connections' shared :class:`~evloop_httpd.connection.Context`),
    not one per upload: the loop runs one connection at a time, and each splice step empties
    the pipe into the file before it returns, so between steps the pipe is always empty and
    any connection may use it next. Its two descriptors are fixed, like the selector's, and
    fall within ``descriptors.FD_RESERVE``; an upload holds no descriptor more than on the
    read path. Opened at the first splice, closed with the server, and dropped (to be opened
    afresh) if a failed write to a file left bytes in it.
    """

    __slots__ = ("r", "size", "w")

    def __init__(self) -> None:
        self.r = self.w = -1
        self.size = 0

    def open(self) -> None:
        if self.r >= 0:
            return
        self.r, self.w = os.pipe2(os.O_CLOEXEC)
        try:
            # A larger pipe moves more per pair of calls; an unprivileged process may ask up to
            # /proc/sys/fs/pipe-max-size (1 MiB by default). The default (64 KiB) works too.
            self.size = fcntl.fcntl(self.w, fcntl.F_SETPIPE_SZ, SPLICE_PIPE_BYTES)
        except OSError:
            self.size = fcntl.fcntl(self.w, fcntl.F_GETPIPE_SZ)  # splice means Linux: both exist

    def close(self) -> None:
        for fd in (self.r, self.w):
            if fd >= 0:
                os.close(fd)
        self.r = self.w = -1
        self.size = 0


class Transport:
    """Plain TCP under one :class:`Connection`. See the module docstring."""

    __slots__ = (
        "conn",
        "events",
        "pending",
        "shut_wr",
        "sock",
        "timer_at",
        "use_sendfile",
        "use_splice",
    )

    can_sendfile: ClassVar[bool] = True  # TLS cannot: see tls.py
    # Whether a body may be spliced into its file: only where bytes on the socket are the
    # body's (not TLS) and where every read goes through ready()'s inline path (not traced).
    can_splice: ClassVar[bool] = True
    may_buffer: ClassVar[bool] = False  # input held above the kernel (TLS): see buffered()
    # The hot path's shortcuts, for classes that do not change how a socket is read or sent
    # on (subclasses that do, a traced transport or TLS, turn them off): the pump sends with
    # the socket's own send, and ready() reads inline instead of calling read().
    send_direct: ClassVar[bool] = True
    read_inline: ClassVar[bool] = True

    def __init__(self, sock: socket.socket, conn: Connection, use_sendfile: bool) -> None:
        self.sock: socket.socket | None = sock
        self.conn = conn
        self.events = READ  # what the selector was last told
        self.pending: bytes | bytearray = b""  # held back: idle transports keep b"", shared
        self.shut_wr = False
        self.timer_at = float("inf")  # see timers.Timers
        # None: sendfile not tried yet on this socket (it may still fall back), True: it works.
        self.use_sendfile: bool | None = None if use_sendfile else False
        # The same for splicing a body into its file (only this class's inline read does).
        splice = self.can_splice and _HAS_SPLICE and conn.ctx.config.use_splice
        self.use_splice: bool | None = None if splice else False

    # What the reactor asks.

    @property
    def ident(self) -> int:
        return self.conn.ident

    @property
    def is_open(self) -> bool:
        return self.sock is not None

    def fileno(self) -> int:
        sock = self.sock
        return sock.fileno() if sock is not None else -1

    def buffered(self) -> bool:
        """Whether input is buffered above the kernel, where the selector cannot see it."""
        return False

    # One turn: ready (or due), then pump, then settle.

    def ready(self, mask: int, now: float) -> None:
        """The selector reported ``mask``: read if the connection wants input."""
        conn = self.conn
        if mask & READ and conn.interest & READ:
            if conn.state is S.PROXY_HEADER:
                self.read_proxy_header(now)
                if cast(ConnState, conn.state) is not S.READING_HEADERS:  # mypy narrowed it
                    return
                # The first request often comes in the same segment as the header.
            if not self.read_inline:
                self.read(now)
                return
            if conn.state is S.READING_BODY and self.use_splice is not False:
                sink = conn.body_sink()
                if sink is not None and sink[1] >= SPLICE_MIN and self._splice_body(*sink, now):
                    return
            # read(), inline: this is the path of every request.
            try:
                data = self.sock.recv(RECV_BYTES)  # type: ignore[union-attr]
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                conn.ctx.observer.debug(f"#{conn.ident} recv: {exc}")
                conn.abort()
                return
            conn.receive(data, now)

    def due(self, now: float) -> None:
        """The connection's deadline came: let it judge delivery, then time out."""
        conn = self.conn
        if conn.state is S.WRITING_HEADERS or conn.state is S.STREAMING_FILE:
            backlog = self.backlog()
            if backlog is not None:
                conn.check_delivery(backlog, now)
        conn.on_timeout(now)

    def backlog(self) -> int | None:
        """Bytes the connection counts as sent that the client has not acknowledged."""
        sock = self.sock
        queued = unacknowledged(sock) if sock is not None else None
        return None if queued is None else queued + len(self.pending)

    def input_waits(self) -> bool:
        """Whether bytes wait unread in the kernel (at a stop, a request on its way is served
        rather than dropped)."""
        try:
            return bool(self.sock.recv(1, socket.MSG_PEEK))  # type: ignore[union-attr]
        except OSError:
            return False  # nothing yet (EAGAIN), or reset: nothing to serve

    def read(self, now: float) -> None:
        sock = self.sock
        assert sock is not None
        try:
            data = sock.recv(RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.conn.ctx.observer.debug(f"#{self.conn.ident} recv: {exc}")
            self.conn.abort()
            return
        self.conn.receive(data, now)

    def _splice_body(self, file_fd: int, due: int, now: float) -> bool:
        """Move up to ``due`` body bytes from the socket into ``file_fd`` without bringing them
        into Python: ``splice`` socket -> pipe, then pipe -> file, in at most ``SPLICE_STEPS``
        steps, never past the body's end (a pipelined request stays in the socket). False if
        the socket or the file system cannot splice before it ever worked here: the caller
        then reads, and so does every later read of this connection."""
        conn = self.conn
        ctx = conn.ctx
        pipe = ctx.pipe
        if pipe is None:
            pipe = ctx.pipe = SplicePipe()
        try:
            pipe.open()
        except OSError as exc:  # EMFILE, say: read this body instead
            ctx.observer.debug(f"#{conn.ident} splice pipe: {exc}")
            return False
        splice = os.splice
        sock_fd = self.fileno()
        for _ in range(SPLICE_STEPS):
            ask = min(due, pipe.size)
            try:
                n = splice(sock_fd, pipe.w, ask, flags=_SPLICE_FLAGS)
            except (BlockingIOError, InterruptedError):
                return True
            except OSError as exc:
                if exc.errno in _SPLICE_UNSUPPORTED and not self.use_splice:
                    self._no_splice(f"socket: {exc}")
                    return False
                ctx.observer.debug(f"#{conn.ident} splice from the socket: {exc}")
                conn.abort()
                return True
            if not n:
                conn.receive(b"", now)  # the client closed: as the read path says it
                return True
            if not self._drain_pipe(pipe, file_fd, n, now):
                return True
            due -= n
            conn.received_into_file(n, now)
            if n < ask or not due or conn.state is not S.READING_BODY:
                return True  # the socket had no more for now, or the body is done
            if not ctx.may_start():
                # The turn's work budget is spent: a step is a pipe-full written to the page
                # cache, and 16 of them back to back held everyone else's turn for 70-80 ms.
                return True
        return True

    def _drain_pipe(self, pipe: SplicePipe, file_fd: int, n: int, now: float) -> bool:
        """Splice the ``n`` bytes in the pipe into the file. False if the connection was told
        otherwise (the file system cannot splice: the bytes went the read path's way; or the
        write failed)."""
        conn = self.conn
        left = n
        try:
            while left:
                m = os.splice(pipe.r, file_fd, left, flags=_SPLICE_MOVE)
                if not m:
                    raise OSError(errno.EIO, "splice into the file wrote nothing")
                left -= m
        except OSError as exc:
            if exc.errno in _SPLICE_UNSUPPORTED and not self.use_splice and left == n:
                # This file system cannot splice in: take the bytes out of the pipe and hand
                # them over as if read (the body had nothing buffered, so they come next).
                self._no_splice(f"file: {exc}")
                data = os.read(pipe.r, n)
                while len(data) < n:  # a pipe read returns what is there: all of it, normally
                    data += os.read(pipe.r, n - len(data))
                conn.receive(data, now)
                return False
            pipe.close()  # whatever is left in it is not the next body's
            conn.sink_failed(exc, now)
            return False
        self.use_splice = True
        return True

    def _no_splice(self, why: str) -> None:
        self.use_splice = False
        conn = self.conn
        conn.ctx.observer.debug(f"#{conn.ident} splice refused ({why}): the body is read")

    def read_proxy_header(self, now: float) -> None:
        """PROXY_HEADER: peek, let the connection parse, take exactly the header's bytes."""
        conn = self.conn
        sock = self.sock
        assert sock is not None
        try:
            # The largest header we accept; MSG_PEEK leaves everything where it is.
            data = sock.recv(MAX_V2_BYTES, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            conn.ctx.observer.debug(f"#{conn.ident} recv: {exc}")
            conn.abort()
            return
        take = conn.proxy_bytes(data, now)
        if not take:
            return
        try:
            taken = len(sock.recv(take))  # the peek saw them: they are there
        except OSError as exc:
            taken = -1
            conn.ctx.observer.debug(f"#{conn.ident} recv: {exc}")
        if taken != take:
            conn.abort()

    def pump(self, now: float) -> None:
        """Send what the connection has to send until the kernel refuses or the budget ends:
        held-back bytes first, then ``to_send()`` (a head, a small body, a multipart boundary),
        then the file span."""
        conn = self.conn
        # Plain TCP sends with the socket's own method: one Python call fewer per response.
        send = self.sock.send if self.send_direct else self._send  # type: ignore[union-attr]
        try:
            if conn.parked:
                conn.resume(now)  # a new turn: one waiting request starts whatever the clock
            for _ in range(PUMP_BUDGET):
                out = conn.to_send()
                if out:
                    pending = self.pending
                    if len(pending) + len(out) <= STAGE_BYTES and conn.response_follows():
                        # The next response is about to be made without waiting for input:
                        # hold this one back, and send the batch with one call.
                        if pending:
                            pending += out  # non-empty, it is the bytearray: grows in place
                        else:
                            self.pending = bytearray(out)  # idle transports keep b"", not this
                        conn.wrote(len(out), now)
                        continue
                    if not pending:
                        if conn.file_remaining and self.send_direct:
                            # File bytes follow at once: MSG_MORE lets the kernel put the head
                            # in their first segment instead of sending it in one of its own,
                            # a packet fewer per response for both ends (docs/performance.md).
                            conn.wrote(self.sock.send(out, socket.MSG_MORE), now)  # type: ignore[union-attr]
                        else:
                            conn.wrote(send(out), now)
                        state = conn.state
                        if state is S.READING_HEADERS or state is S.LINGERING:
                            break  # the response is done and no other was started: the usual end
                        continue
                    held = len(pending)
                    n = self._send_pair(pending, out)
                    conn.flushed(min(n, held), now)
                    if n < held:
                        del pending[:n]  # type: ignore[union-attr]
                        return
                    self.pending = b""
                    if n > held:
                        conn.wrote(n - held, now)
                    continue
                if conn.state is not S.STREAMING_FILE:
                    break  # the usual end of a turn: one call fewer than file_span()
                span = conn.file_span()
                if span is None:
                    # A produced body (a ZIP): the socket took everything it was given, so
                    # pull the next piece; never before, so what waits is one piece at most.
                    if conn.produced is not None and conn.produce():
                        continue
                    break
                if self.pending and not self._flush(now):
                    return
                conn.streamed(self._send_file(*span), now)
            if self.pending:
                self._flush(now)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            conn.ctx.observer.debug(f"#{conn.ident} send: {exc}")
            conn.abort()

    def settle(self) -> int:
        """After a turn: the selector mask to wait for, or CLOSE. Begins the end of a
        LINGERING connection (FIN, then drain)."""
        conn = self.conn
        state = conn.state
        if state is S.CLOSED:
            return CLOSE
        if state is S.LINGERING and not self.shut_wr and not self.pending:
            if conn.peer_done and self._nothing_unread():
                conn.drained()  # a plain close sends FIN: nothing unread, so no reset
                return CLOSE
            # Our response is complete: send FIN, then drain until the client closes.
            self.shut_wr = True
            if not self._shut_wr():
                conn.abort()
                return CLOSE
        # While held-back bytes wait, wait only to write: a read could bring the client's end
        # of stream, which closes the connection (from LINGERING, say) before they have left.
        return WRITE if self.pending else conn.interest

    def close(self) -> None:
        """Close the socket (the reactor has unregistered it): with a reset if a response was
        cut short, so the client cannot take what it got for the whole."""
        sock = self.sock
        if sock is None:
            return
        self.sock = None
        cut_short = self.conn.cut_short or bool(self.pending)  # dropped held-back bytes, too
        self.pending = b""
        if cut_short:
            # SO_LINGER with a zero timeout: close() sends RST and drops unsent data at once.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        else:
            self._goodbye(sock)
        sock.close()

    # The system calls; the TLS transport replaces these.

    def _send(self, data: bytes | bytearray | memoryview) -> int:
        return self.sock.send(data)  # type: ignore[union-attr]

    def _send_pair(self, first: bytes | bytearray, second: bytes | memoryview) -> int:
        return self.sock.sendmsg((first, second))  # type: ignore[union-attr]

    def _flush(self, now: float) -> bool:
        """Send what was held back; True when none is left."""
        pending = self.pending
        n = self._send(pending)
        del pending[:n]  # type: ignore[union-attr]
        self.conn.flushed(n, now)
        if pending:
            return False
        self.pending = b""
        return True

    def _send_file(self, fd: int, offset: int, remaining: int) -> int:
        count = min(remaining, SENDFILE_CHUNK)
        if self.use_sendfile is not False:
            sock = self.sock
            assert sock is not None
            try:
                n = os.sendfile(sock.fileno(), fd, offset, count)
            except OSError as exc:
                # Fall back only before sendfile ever worked here: a socket that took it once
                # and refuses it now has a real problem, which must not be papered over.
                if exc.errno not in _SENDFILE_UNSUPPORTED or self.use_sendfile:
                    raise
                self.use_sendfile = False
            else:
                if n:
                    self.use_sendfile = True
                return n
        data = os.pread(fd, min(count, FALLBACK_CHUNK), offset)
        return self._send(data) if data else 0

    def _shut_wr(self) -> bool:
        try:
            self.sock.shutdown(socket.SHUT_WR)  # type: ignore[union-attr]
        except OSError:
            return False
        return True

    def _goodbye(self, sock: socket.socket) -> None:
        """Last words before an orderly close (TLS: close_notify). Nothing for plain TCP."""

    def _nothing_unread(self) -> bool:
        try:
            return not self.sock.recv(RECV_BYTES, socket.MSG_PEEK)  # type: ignore[union-attr]
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            return True  # reset: there is nothing left to protect
