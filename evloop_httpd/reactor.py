"""The event loop: one ``selectors`` selector, non-blocking sockets, one timer heap.

Theory of operation
-------------------
This module is the only one that calls ``select``, ``accept``, ``recv``, ``send``, ``sendfile``
or ``close`` on a socket. Everything it knows about HTTP it asks the :class:`Connection`: which
state it is in, what to send next, and what to wait for (``conn.interest``).

One pass of the loop: wait in ``select`` until a socket is ready or the earliest deadline comes;
serve each ready socket; fire the timers that are due; flush the logs. Serving a socket is:

1. ``recv`` once, if the connection is reading, and hand the bytes over;
2. *pump*: while the connection has something to send, ``send``/``sendfile`` it right away.
   Registering for write and waiting a whole loop pass for it would cost a round trip for
   nothing: a socket is almost always writable. Only what the kernel refuses (``EAGAIN``) waits.
   A whole in-memory response that another pipelined response will follow at once is not
   sent but held back in ``conn.pending`` (up to ``STAGE_BYTES``), and the batch goes out with
   the last one in one ``sendmsg``: one system call and one TCP transmission for what would
   have been sixteen. To the connection, held-back bytes are sent, as bytes in the kernel's
   buffer are; the reactor owes them to the socket before anything else, and waits for
   writability only (whatever the state says) while it does: not for input, whose end of
   stream could close the connection before they have left. The pump stops after a fixed budget
   of calls, so one fast client downloading a large file cannot keep the loop from everyone
   else;
3. *work budget*: sends are not what a request costs. A cached GET takes microseconds, a
   listing of a big folder or a path of thousands of segments takes milliseconds, and a
   pipeline can hold dozens of either. So each turn of a connection has a time budget
   (``WORK_BUDGET_S``, from the start of the turn, measured with ``perf_counter`` between
   requests): the connection starts the next pipelined request only while it lasts
   (``ctx.may_start``). Past it, the connection *parks*: whole requests wait in ``inbuf``, the
   connection waits to write (a socket almost always is writable, so the next ``select``
   returns at once, after everyone else ready now had their turn; and a client that does not
   read its responses gets no more made for it), and the next turn starts one of them whatever
   the clock says, so each turn makes progress. A turn therefore costs at most the budget plus
   one request, whatever the client pipelines. Nothing is read while parked, so ``inbuf``
   stays within its bound;
4. *settle*: close the socket if the connection closed, otherwise call ``modify`` only if the
   interest changed, and re-arm the timer only if the deadline moved earlier.

Timers are a heap with at most one live entry per connection (``conn.timer_at``). A deadline
that moves later, which is what activity does, costs nothing: when the stale entry fires, it is
pushed again at the new deadline. So each event costs O(1) or O(log n), never a scan of all
connections. Stale entries (closed connections, superseded deadlines) are swept out in one pass
when they outnumber the live ones, which is O(1) amortized per push.

A new connection gets its first turn right after the accept batch that took it: its request has
usually come with the handshake, and waiting for the next ``select`` would put every other
ready connection's turn in front of it.

Accepting is a bounded loop. At ``--max-connections``, or when ``accept`` fails for lack of file
descriptors (``EMFILE``/``ENFILE``), the listener is unregistered: new clients wait in the
kernel's backlog until a connection closes (or, for EMFILE, a short back-off passes), instead of
the loop spinning on a listener it cannot serve.

Listening sockets are bound here (:meth:`Server.bind`) or handed over (:meth:`Server.adopt`:
systemd's, or the supervisor's shared among workers); there may be several. On a graceful stop
the loop closes its listeners, drops connections that were promised nothing, but serves a
request already waiting in the kernel: a reload must not fail it (see supervisor.py).

Errors: ``EAGAIN`` means wait. A reset or broken pipe aborts that connection, logged at debug
level. Exceptions inside a connection's HTTP logic are caught by the connection; anything that
still escapes while serving one socket is a bug, logged, and only that connection is dropped.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import heapq
import itertools
import os
import selectors
import socket
import struct
import termios
import time
from collections.abc import Callable

from .config import Config
from .connection import Address, Connection, Context
from .log import Logs
from .states import READ, WRITE, ConnState

assert selectors.EVENT_READ == READ and selectors.EVENT_WRITE == WRITE

RECV_BYTES = 64 * 1024  # one recv; also what a connection may buffer beyond its head limit
SENDFILE_CHUNK = 1024 * 1024  # per sendfile call: large enough to keep the kernel busy
FALLBACK_CHUNK = 64 * 1024  # per pread+send when sendfile is off or unsupported
PUMP_BUDGET = 16  # sends per connection per wake-up, for fairness
# Time per connection per wake-up after which no new pipelined request is started. 16 cached
# GETs take about 0.3 ms, so batching is untouched; a 10 ms request is one per turn.
WORK_BUDGET_S = 0.002
STAGE_BYTES = 64 * 1024  # pipelined responses held back to go out in one send
ACCEPT_BATCH = 64  # accepts per wake-up of the listener
EMFILE_BACKOFF_S = 0.1
STOP_GRACE_S = 1.0  # on a stop, how long a just-accepted connection may take to send its request
TIMER_SLACK = 64  # stale timer entries tolerated beyond two per open connection
_SENDFILE_UNSUPPORTED = frozenset(
    {errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSOCK, errno.EOVERFLOW}
)
_OUT_OF_FDS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})

_LINGER_RESET = struct.pack("ii", 1, 0)
_MAX_SHARED_HOSTS = 4096
_BODYLESS = (b"GET ", b"HEAD ")
_WAKER = object()
_GATE = object()
S = ConnState


_OUTQ: int | None = getattr(termios, "TIOCOUTQ", None)  # SIOCOUTQ on Linux sockets


def _unacknowledged(sock: socket.socket) -> int | None:
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


def more_follows(conn: Connection) -> bool:
    """Whether another response will be made right after this one without waiting for input.

    True only when the next pipelined request is already whole in ``inbuf`` and is a GET or
    HEAD (no body to wait for), and no file span follows this response. The pump then holds
    this response back and sends the batch with one call (see :meth:`Server._pump`).
    """
    inbuf = conn.inbuf
    return not conn.file_remaining and inbuf.startswith(_BODYLESS) and b"\r\n\r\n" in inbuf


class _Listening:
    """A listening socket, as the selector's data for it."""

    __slots__ = ("sock",)

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock


class Server:
    """Listens on one address (or adopts listening sockets) and serves connections until
    :meth:`request_stop`."""

    def __init__(self, config: Config, logs: Logs | None = None) -> None:
        self.config = config
        self.logs = logs if logs is not None else Logs(config)
        self.ctx = Context(config, self.logs)
        self.sel = selectors.DefaultSelector()
        self.listeners: list[_Listening] = []
        self.address: Address = ("", 0)  # the first listener's
        self._ask_local = False  # a wildcard address or several listeners: getsockname each
        self.count = 0  # open connections
        self._timers: list[tuple[float, int, Connection]] = []
        self._ids = itertools.count(1)
        self._hosts: dict[str, str] = {}
        self._accepting = False
        self._accept_resume_at: float | None = None
        self._stop_requested = False
        self._shutdown_deadline: float | None = None
        self._work_until = 0.0  # perf_counter() past which this turn starts no new request
        self.ctx.may_start = self._within_budget
        self._waker_r, self._waker_w = socket.socketpair()
        for s in (self._waker_r, self._waker_w):
            s.setblocking(False)
        self.sel.register(self._waker_r, selectors.EVENT_READ, _WAKER)
        # Judge responses on what clients acknowledged only where the kernel says (Linux).
        self.ctx.acks_known = _unacknowledged(self._waker_w) is not None
        gate = self.ctx.gate
        if gate is not None and gate.sock is not None:  # password verdicts (auth.py)
            self.sel.register(gate.sock, selectors.EVENT_READ, _GATE)

    # Set-up and tear-down

    def bind(self) -> Address:
        """Create the listening socket. Returns the bound (host, port, ...)."""
        host = self.config.host
        infos = socket.getaddrinfo(
            host, self.config.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        family, _, proto, _, addr = infos[0]
        sock = socket.socket(family, socket.SOCK_STREAM, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(addr)
            sock.listen(socket.SOMAXCONN)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        return self.adopt([sock])

    def adopt(self, socks: list[socket.socket]) -> Address:
        """Serve listening sockets made elsewhere (systemd, or a supervisor sharing them among
        workers) instead of binding. Returns the first one's address. They are closed on stop:
        in a worker that closes only its own copy, and the queue stays with the others."""
        for sock in socks:
            sock.setblocking(False)
            self.listeners.append(_Listening(sock))
        self.address = self.listeners[0].sock.getsockname()
        # A connection's local address is the listener's, unless that is a wildcard or there
        # are several listeners: then ask each accepted socket.
        self._ask_local = len(self.listeners) > 1 or self.address[0] in ("0.0.0.0", "::")
        self._resume_accepting()
        return self.address

    def wakeup_fd(self) -> int:
        """A descriptor for ``signal.set_wakeup_fd``: a signal then wakes the selector."""
        return self._waker_w.fileno()

    def request_stop(self) -> None:
        """Begin a graceful stop (safe to call from a signal handler)."""
        self._stop_requested = True
        with contextlib.suppress(OSError):
            self._waker_w.send(b"\0")

    def close(self) -> None:
        for key in list(self.sel.get_map().values()):
            if isinstance(key.data, Connection):
                key.data.abort()
                self._close(key.data)
        self._close_listeners()
        self.sel.unregister(self._waker_r)
        self._waker_r.close()
        if self.ctx.gate is not None:
            if self.ctx.gate.sock is not None:
                self.sel.unregister(self.ctx.gate.sock)
            self.ctx.gate.close()
        self._waker_w.close()
        self.sel.close()
        self.logs.close()

    # The loop

    def serve_forever(self, on_iteration: Callable[[], None] | None = None) -> None:
        """Run until a stop is requested and every in-flight response has finished."""
        try:
            while True:
                now = time.monotonic()
                if self._stop_requested and self._shutdown_deadline is None:
                    self._begin_shutdown(now)
                if self._shutdown_deadline is not None and (
                    self.count == 0 or now >= self._shutdown_deadline
                ):
                    break
                events = self.sel.select(self._next_timeout(now))
                now = time.monotonic()
                self.ctx.date.update(time.time())
                for key, mask in events:
                    data = key.data
                    if data.__class__ is _Listening:
                        self._accept(data, now)
                    elif data is _WAKER:
                        self._drain_waker()
                    elif data is _GATE:
                        self._take_verdicts(now)
                    else:
                        self._serve(data, mask, now)
                self._run_timers(now)
                self.logs.flush()
                if on_iteration is not None:
                    on_iteration()
        finally:
            self.close()

    def _next_timeout(self, now: float) -> float | None:
        candidates = []
        if self._timers:
            candidates.append(self._timers[0][0])
        if self._accept_resume_at is not None:
            candidates.append(self._accept_resume_at)
        if self._shutdown_deadline is not None:
            candidates.append(self._shutdown_deadline)
        if not candidates:
            return None
        return max(0.0, min(candidates) - now)

    def _take_verdicts(self, now: float) -> None:
        gate = self.ctx.gate
        assert gate is not None and gate.sock is not None
        for conn in gate.on_readable(now):
            if isinstance(conn, Connection) and conn.sock is not None:
                self._step(conn, now)
        if gate.broken:
            self.logs.info("evloop_httpd: the password checker stopped; logins now get 503")
            self.sel.unregister(gate.sock)
            gate.close()

    def _drain_waker(self) -> None:
        try:
            while self._waker_r.recv(4096):
                pass
        except OSError:
            pass

    # Accepting

    def _accept(self, listening: _Listening, now: float) -> None:
        # The new connections get their first turn after the batch, not each as it comes: a
        # client quick enough to reconnect within our turn would otherwise keep us in this
        # loop for the whole batch, with the others' turns (and their closes) waiting.
        fresh = self._accept_batch(listening, now)
        for conn in fresh:
            if conn.sock is not None:
                self._step(conn, now, read=True)

    def _accept_batch(self, listening: _Listening, now: float) -> list[Connection]:
        listener = listening.sock
        fresh: list[Connection] = []
        for _ in range(ACCEPT_BATCH):
            if self.count >= self.config.max_connections:
                self.logs.debug("connection cap reached; pausing accept")
                self._stop_accepting()
                break
            try:
                sock, addr = listener.accept()
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if exc.errno in _OUT_OF_FDS:
                    self.logs.info(f"evloop_httpd: accept failed ({exc.strerror}); backing off")
                    self._stop_accepting()
                    self._accept_resume_at = now + EMFILE_BACKOFF_S
                    break
                # ECONNABORTED and friends: that client gave up; the next may not have.
                self.logs.debug(f"accept: {exc}")
                continue
            conn = self._add(sock, addr, now)
            if conn is not None:
                fresh.append(conn)
        return fresh

    def _add(self, sock: socket.socket, addr: Address, now: float) -> Connection | None:
        sock.setblocking(False)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            local = sock.getsockname() if self._ask_local else self.address
        except OSError:
            sock.close()
            return None
        # Many connections come from few addresses: share one str per address (~60 bytes each
        # of the ~1 KiB an idle connection costs). The table is bounded; past it, no sharing.
        host = self._hosts.get(addr[0])
        if host is None and len(self._hosts) < _MAX_SHARED_HOSTS:
            host = self._hosts[addr[0]] = addr[0]
        if host is not None:
            addr = (host, *addr[1:])
        conn = Connection(self.ctx, now, addr, local, next(self._ids))
        conn.sock = sock
        conn.events = selectors.EVENT_READ
        self.sel.register(sock, selectors.EVENT_READ, conn)
        self.count += 1
        self._arm(conn)
        if self.ctx.trace:
            self.logs.debug(f"#{conn.ident} accepted from {addr[0]}:{addr[1]}")
        return conn

    def _stop_accepting(self) -> None:
        if self._accepting:
            for listening in self.listeners:
                self.sel.unregister(listening.sock)
            self._accepting = False

    def _resume_accepting(self) -> None:
        self._accept_resume_at = None
        if not self._accepting and self.listeners and self._shutdown_deadline is None:
            for listening in self.listeners:
                self.sel.register(listening.sock, selectors.EVENT_READ, listening)
            self._accepting = True

    def _close_listeners(self) -> None:
        self._stop_accepting()
        for listening in self.listeners:
            listening.sock.close()
        self.listeners.clear()

    # Serving one connection

    def _serve(self, conn: Connection, mask: int, now: float) -> None:
        self._step(conn, now, read=bool(mask & selectors.EVENT_READ and conn.interest & READ))

    def _step(self, conn: Connection, now: float, *, read: bool = False, due: bool = False) -> None:
        """One turn for one connection: read (or fire its timer), pump, settle."""
        budget_end = time.perf_counter() + WORK_BUDGET_S  # the request read now counts too
        try:
            if due:
                if conn.state is S.WRITING_HEADERS or conn.state is S.STREAMING_FILE:
                    assert conn.sock is not None  # a sending connection is open
                    backlog = _unacknowledged(conn.sock)
                    if backlog is not None:
                        conn.check_delivery(backlog + len(conn.pending), now)
                conn.on_timeout(now)
            elif read:
                self._read(conn, now)
            self._pump(conn, now, budget_end)
        except Exception as exc:  # a bug outside the connection's own guard: drop only this one
            self.logs.bug(conn, exc)
            conn.abort()
        self._settle(conn)

    def _read(self, conn: Connection, now: float) -> None:
        sock = conn.sock
        assert sock is not None  # only open connections are served
        try:
            data = sock.recv(RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.logs.debug(f"#{conn.ident} recv: {exc}")
            conn.abort()
            return
        conn.receive(data, now)

    def _within_budget(self) -> bool:
        return time.perf_counter() < self._work_until

    def _pump(self, conn: Connection, now: float, budget_end: float | None = None) -> None:
        """Send what the connection has to send until the kernel refuses or the budget ends:
        held-back bytes first, then ``out`` (a head, a small body, a multipart boundary), then
        the file span. See the module docstring for when a response is held back.

        ``budget_end`` is when this turn's work budget runs out (``perf_counter`` time; by
        default ``WORK_BUDGET_S`` from now). A parked connection starts one request first."""
        sock = conn.sock
        assert sock is not None
        self._work_until = time.perf_counter() + WORK_BUDGET_S if budget_end is None else budget_end
        try:
            if conn.parked:
                conn.resume(now)
            for _ in range(PUMP_BUDGET):
                state = conn.state
                if state is S.STREAMING_FILE and not conn.out:
                    if conn.pending and not self._flush(conn, sock, now):
                        return
                    conn.streamed(self._send_file(conn, sock), now)
                elif conn.out and (
                    state is S.WRITING_HEADERS
                    or state is S.WRITING_CONTINUE
                    or state is S.STREAMING_FILE
                ):
                    out: bytes | memoryview = conn.out
                    pending = conn.pending
                    if (
                        conn.out_pos == 0
                        and conn.keep_alive
                        and len(pending) + len(out) <= STAGE_BYTES
                        and more_follows(conn)
                    ):
                        # The next response is about to be made without waiting for input:
                        # hold this one back, and send the batch with one call.
                        if pending:
                            pending += out  # non-empty, it is the bytearray: grows in place
                        else:
                            conn.pending = bytearray(out)  # idle connections keep b"", not this
                        conn.wrote(len(out), now)
                        continue
                    if conn.out_pos:
                        out = memoryview(out)[conn.out_pos :]
                    if not pending:
                        conn.wrote(sock.send(out), now)
                        continue
                    held = len(pending)
                    n = sock.sendmsg((pending, out))
                    conn.flushed(min(n, held), now)
                    if n < held:
                        assert isinstance(pending, bytearray)  # b"" only while empty
                        del pending[:n]
                        return
                    conn.pending = b""
                    if n > held:
                        conn.wrote(n - held, now)
                else:
                    break
            if conn.pending:
                self._flush(conn, sock, now)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.logs.debug(f"#{conn.ident} send: {exc}")
            conn.abort()

    @staticmethod
    def _flush(conn: Connection, sock: socket.socket, now: float) -> bool:
        """Send what was held back; True when none is left."""
        pending = conn.pending
        assert isinstance(pending, bytearray)  # called only when there is something held back
        n = sock.send(pending)
        del pending[:n]
        conn.flushed(n, now)
        if pending:
            return False
        conn.pending = b""
        return True

    def _send_file(self, conn: Connection, sock: socket.socket) -> int:
        count = min(conn.file_remaining, SENDFILE_CHUNK)
        if conn.use_sendfile:
            try:
                return os.sendfile(sock.fileno(), conn.file_fd, conn.file_offset, count)
            except OSError as exc:
                # Fall back only before the first byte: switching mid-file could repeat or skip.
                if exc.errno not in _SENDFILE_UNSUPPORTED or conn.phase_bytes:
                    raise
                conn.use_sendfile = False
        data = os.pread(conn.file_fd, min(count, FALLBACK_CHUNK), conn.file_offset)
        return sock.send(data) if data else 0

    def _settle(self, conn: Connection) -> None:
        if conn.state is S.CLOSED:
            self._close(conn)
            return
        sock = conn.sock
        assert sock is not None  # open until _close, which only a CLOSED connection reaches
        if conn.state is S.LINGERING and not conn.shut_wr and not conn.pending:
            if conn.peer_done and self._nothing_unread(sock):
                conn.drained()  # a plain close sends FIN: nothing unread, so no reset
                self._close(conn)
                return
            # Our response is complete: send FIN, then drain until the client closes.
            conn.shut_wr = True
            try:
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                conn.abort()
                self._close(conn)
                return
        # While held-back bytes wait, wait only to write: a read could bring the client's end
        # of stream, which closes the connection (from LINGERING, say) before they have left.
        want = WRITE if conn.pending else conn.interest
        if want != conn.events:
            self.sel.modify(sock, want, conn)
            conn.events = want
        self._arm(conn)

    @staticmethod
    def _nothing_unread(sock: socket.socket) -> bool:
        try:
            return not sock.recv(RECV_BYTES, socket.MSG_PEEK)  # b"": the client closed too
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            return True  # reset: there is nothing left to protect

    def _close(self, conn: Connection) -> None:
        sock = conn.sock
        if sock is None:
            return
        conn.sock = None
        self.sel.unregister(sock)
        cut_short = conn.reset or bool(conn.pending)  # held-back bytes dropped cut a response
        conn.pending = b""
        if cut_short:
            # SO_LINGER with a zero timeout: close() sends RST and drops unsent data at once.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        sock.close()
        self.count -= 1
        if self.count < self.config.max_connections and self._accept_resume_at is None:
            self._resume_accepting()

    # Timers

    def _arm(self, conn: Connection) -> None:
        if conn.deadline < conn.timer_at:
            conn.timer_at = conn.deadline
            # The tie-breaker is the connection's own number: no new int per entry, and one
            # connection never has two entries with one deadline (only an earlier one is pushed).
            heapq.heappush(self._timers, (conn.deadline, conn.ident, conn))
            if len(self._timers) > 2 * self.count + TIMER_SLACK:
                self._compact_timers()

    def _compact_timers(self) -> None:
        # Entries of closed connections, and entries superseded by an earlier deadline, wait in
        # the heap until they fire, each holding its Connection. Under churn that is thousands
        # of dead objects; dropping them once they outnumber the live ones costs O(n) per n/2
        # pushes, so O(1) amortized per push.
        # In place: _run_timers may be iterating this very list when an _arm lands here.
        timers = self._timers
        timers[:] = [e for e in timers if e[2].sock is not None and e[0] == e[2].timer_at]
        heapq.heapify(timers)

    def _run_timers(self, now: float) -> None:
        timers = self._timers
        if self._accept_resume_at is not None and now >= self._accept_resume_at:
            self._resume_accepting()
        while timers and timers[0][0] <= now:
            at, _, conn = heapq.heappop(timers)
            if conn.sock is None or at != conn.timer_at:
                continue  # closed, or superseded by an earlier entry
            conn.timer_at = float("inf")
            if conn.deadline > now:
                self._arm(conn)
                continue
            self._step(conn, now, due=True)

    # Graceful stop

    def _begin_shutdown(self, now: float) -> None:
        self._shutdown_deadline = now + self.config.timeouts.shutdown_s
        self.ctx.stopping = True
        self._close_listeners()
        waiting = 0  # connections given a moment for a request that may be on its way
        for key in list(self.sel.get_map().values()):
            conn = key.data
            if not isinstance(conn, Connection):
                continue
            # Nothing promised yet (idle, or still sending us a request): drop. A half-received
            # PUT is aborted, which removes its temp file. But a request that has arrived whole
            # in the kernel and not been read yet (just accepted, or the next on a keep-alive
            # connection) is served, with Connection: close: its client did nothing wrong, and
            # on a reload (see supervisor.py) dropping it would fail a request.
            if not conn.pending and conn.state in (
                S.READING_HEADERS,
                S.AUTHENTICATING,
                S.READING_BODY,
                S.WRITING_CONTINUE,
            ):
                if conn.state is S.READING_HEADERS and not conn.inbuf:
                    if self._input_waits(conn):
                        continue
                    if now - conn.phase_start < STOP_GRACE_S:
                        # Just accepted (or just answered): its client has probably sent, or is
                        # about to send, a request. A moment to arrive, then a quiet close.
                        conn.deadline = min(conn.deadline, now + STOP_GRACE_S)
                        self._arm(conn)
                        waiting += 1
                        continue
                conn.abort()
                self._close(conn)
        # What a person who pressed Ctrl+C wants to know. A worker stays quiet: its supervisor
        # speaks for all of them, once. Connections in the short grace for a request about to
        # arrive are not transfers: they close quietly within STOP_GRACE_S.
        in_flight = self.count - waiting
        if self.logs.worker is not None:
            pass
        elif in_flight:
            self.logs.info(
                f"stopping: waiting up to {self.config.timeouts.shutdown_s:g} s for"
                f" {in_flight} transfer(s) in flight; a second Ctrl+C stops at once"
            )
        else:
            self.logs.info("stopping: no transfer in flight")
        self.logs.flush()

    @staticmethod
    def _input_waits(conn: Connection) -> bool:
        sock = conn.sock
        assert sock is not None  # only open connections are asked
        try:
            return bool(sock.recv(1, socket.MSG_PEEK))
        except OSError:
            return False  # nothing yet (EAGAIN), or reset: nothing to serve
