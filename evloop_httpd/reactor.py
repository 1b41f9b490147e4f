"""The event loop: one ``selectors`` selector, the listener, the timers, the stop.

Theory of operation
-------------------
This module owns the loop and nothing below it: each connection's socket belongs to its
:class:`~evloop_httpd.transport.Transport` (plain TCP, or TLS from :mod:`tls`), which alone
calls ``recv``/``send``/``sendfile``/``shutdown`` on it, and the HTTP lives in the
:class:`Connection` above that. The server calls ``select``, ``accept``, ``register``/``modify``/
``unregister``, and asks the transport to close a socket it has unregistered.

One pass of the loop: wait in ``select`` until a socket is ready or the earliest deadline comes;
give each ready transport its turn; fire the timers that are due; flush the logs. A turn is:

1. ``transport.ready(mask)`` (or ``transport.due()`` when its timer fired): read once, if the
   connection wants input, and hand the bytes over (TLS: or continue the handshake, or the
   record that waited for the other direction);
2. ``transport.pump()``: send what the connection has to send, send-first, within a budget;
   a *parked* connection (see below) first starts one of its waiting requests;
3. settle: ``transport.settle()`` says what the selector should wait for, or that the
   transport is done; the server calls ``modify`` only if that changed, closes a finished
   transport, and re-arms the timer only if the deadline moved earlier (:mod:`timers`).

*Work budget*: sends are not what a request costs. A cached GET takes microseconds, a listing
of a big folder or a path of thousands of segments takes milliseconds, and a pipeline can hold
dozens of either. So each turn of a connection has a time budget (``WORK_BUDGET_S``, from the
start of the turn, measured with ``perf_counter`` between requests): the connection starts the
next pipelined request only while it lasts (``ctx.may_start``). Past it, the connection
*parks*: whole requests wait in ``inbuf``, the connection waits to write (a socket almost
always is writable, so the next ``select`` returns at once, after everyone else ready now had
their turn; and a client that does not read its responses gets no more made for it), and the
next turn starts one of them whatever the clock says, so each turn makes progress. A turn
therefore costs at most the budget plus one request, whatever the client pipelines. Nothing is
read while parked, so ``inbuf`` stays within its bound.

A new connection gets its first turn right after the accept batch that took it: its request has
usually come with the handshake, and waiting for the next ``select`` would put every other
ready connection's turn in front of it.

A TLS transport may hold decrypted input above the kernel, where ``select`` cannot see it
(``buffered()``); such a transport is served again on the next pass without waiting.

Accepting is a bounded loop. At ``--max-connections``, or when ``accept`` fails for lack of file
descriptors (``EMFILE``/``ENFILE``), the listener is unregistered: new clients wait in the
kernel's backlog until a connection closes (or, for EMFILE, a short back-off passes), instead of
the loop spinning on a listener it cannot serve.

Listening sockets are bound here (:meth:`Server.bind`) or handed over (:meth:`Server.adopt`:
systemd's, or the supervisor's shared among workers); there may be several. On a graceful stop
the loop closes its listeners, drops connections that were promised nothing, but serves a
request already waiting in the kernel: a reload must not fail it (see supervisor.py).

Sockets are registered by descriptor number, not by object: a TLS transport replaces its
socket object by an ``SSLSocket`` on the same descriptor, and the registration must survive.

Errors: ``EAGAIN`` means wait. A reset or broken pipe aborts that connection, logged at debug
level. Exceptions inside a connection's HTTP logic are caught by the connection; anything that
still escapes during one transport's turn is a bug, logged, and only that connection is dropped.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import selectors
import socket
import ssl
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from .config import Config
from .connection import Address, Connection, Context
from .faults import Faults, maybe_delay
from .log import Logs, Tracer
from .states import READ, ConnState
from .status import StatsCollector
from .timers import Timers
from .transport import CLOSE, Transport, tune_listener, unacknowledged

if TYPE_CHECKING:
    from .watch import StatusShare

assert selectors.EVENT_READ == READ

# Time per connection per wake-up after which no new pipelined request is started. 16 cached
# GETs take about 0.3 ms, so batching is untouched; a 10 ms request is one per turn.
WORK_BUDGET_S = 0.002
ACCEPT_BATCH = 64  # accepts per wake-up of the listener
# Over TLS each new connection costs a handshake, about 0.3 ms of CPU in OpenSSL, in the turn
# right after its accept: 8 per wake-up bound a flood of new clients to a few ms between
# everyone else's turns (64 would be 20 ms). The price is one more select per 8 connections,
# some microseconds against 8 handshakes' 2-3 ms.
TLS_ACCEPT_BATCH = 8
EMFILE_BACKOFF_S = 0.1
STOP_GRACE_S = 1.0  # on a stop, how long a just-accepted connection may take to send its request
_OUT_OF_FDS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})

_MAX_SHARED_HOSTS = 4096
_WAKER = object()
_GATE = object()
S = ConnState


class _Listening:
    """A listening socket, as the selector's data for it: with the context its connections
    get (None: the server's; the status listener's has its own, see watch.py)."""

    __slots__ = ("ctx", "sock")

    def __init__(self, sock: socket.socket, ctx: Context | None = None) -> None:
        self.sock = sock
        self.ctx = ctx


def open_listener(host: str, port: int) -> socket.socket:
    """A non-blocking socket listening on ``host:port`` (the first address it names): the
    server's own (``bind``) and the ``--status`` one."""
    family, _, proto, _, addr = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, socket.SOCK_STREAM, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(socket.SOMAXCONN)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class Server:
    """Listens on one address (or adopts listening sockets) and serves connections until
    :meth:`request_stop`."""

    def __init__(self, config: Config, logs: Logs | None = None, worker: int | None = None) -> None:
        self.config = config
        # Over TLS, the port serves HTTPS only. A bad certificate raises TlsSetupError here,
        # before anything is opened or listens.
        self.tls: ssl.SSLContext | None = None
        if config.tls_cert is not None:
            from .tls import make_context

            self.tls = make_context(config)
        self.logs = logs if logs is not None else Logs(config)
        self.ctx = Context(config, self.logs, b"https" if self.tls else b"http")
        self.sel = selectors.DefaultSelector()
        self.listeners: list[_Listening] = []
        self.address: Address = ("", 0)  # the first listener's
        self._ask_local = False  # a wildcard address or several listeners: getsockname each
        self.count = 0  # open connections
        self.timers = Timers()
        self._ready: list[Transport] = []  # input buffered above the kernel (TLS)
        self._ids = itertools.count(1)
        self._hosts: dict[str, str] = {}
        self._accepting = False
        self._accept_resume_at: float | None = None
        self._stop_requested = False
        self._reload_requested = False
        self._shutdown_deadline: float | None = None
        self._work_until = 0.0  # perf_counter() past which this turn starts no new request
        self.ctx.may_start = self._within_budget
        self._authenticating: dict[int, Transport] = {}  # by connection number, for verdicts
        self._waker_r, self._waker_w = socket.socketpair()
        for s in (self._waker_r, self._waker_w):
            s.setblocking(False)
        self.sel.register(self._waker_r, selectors.EVENT_READ, _WAKER)
        # Judge responses on what clients acknowledged only where the kernel says (Linux).
        self.ctx.acks_known = unacknowledged(self._waker_w) is not None
        gate = self.ctx.gate
        if gate is not None and gate.sock is not None:  # password verdicts (auth.py)
            self.sel.register(gate.sock, selectors.EVENT_READ, _GATE)
        # What connections and transports are made of, and what watches the loop: picked
        # once here, so that when nothing watches, nothing is tested per request (watch.py).
        self.conn_class: type[Connection] = Connection
        self.plain_class: type[Transport] = Transport
        self.tls_class: type[Transport] | None = None
        self.tracer: Tracer | None = None
        self.stats: StatsCollector | None = None
        self.faults: Faults | None = None  # only when the loop delay is on
        self.status_address: Address | None = None
        self.status_share: StatusShare | None = None  # --workers: snapshots for the others
        if config.trace or config.status is not None or config.faults is not None:
            from .watch import watch_server

            watch_server(self, worker)

    # Set-up and tear-down

    def bind(self) -> Address:
        """Create the listening socket. Returns the bound (host, port, ...)."""
        return self.adopt([open_listener(self.config.host, self.config.port)])

    def adopt(self, socks: list[socket.socket]) -> Address:
        """Serve listening sockets made elsewhere (systemd, or a supervisor sharing them among
        workers) instead of binding. Returns the first one's address. They are closed on stop:
        in a worker that closes only its own copy, and the queue stays with the others."""
        for sock in socks:
            sock.setblocking(False)
            tune_listener(sock)
            self.listeners.append(_Listening(sock))
        self.address = self.listeners[0].sock.getsockname()
        # A connection's local address is the listener's, unless that is a wildcard or there
        # are several listeners: then ask each accepted socket.
        self._ask_local = len(self.listeners) > 1 or self.address[0] in ("0.0.0.0", "::")
        self._resume_accepting()
        return self.address

    def bind_status(self, sock: socket.socket | None = None) -> Address:
        """Listen on the ``--status`` address too (or on ``sock``, the supervisor's, shared by
        the workers): its connections are answered by the status handler (watch.py), from
        this same loop. Call after :meth:`bind` or :meth:`adopt`."""
        from .watch import status_context

        assert self.config.status is not None
        if sock is None:
            sock = open_listener(*self.config.status)
        sock.setblocking(False)
        listening = _Listening(sock, status_context(self))
        self.listeners.append(listening)
        if self._accepting:
            self.sel.register(sock, selectors.EVENT_READ, listening)
        self.status_address = sock.getsockname()
        return self.status_address

    def wakeup_fd(self) -> int:
        """A descriptor for ``signal.set_wakeup_fd``: a signal then wakes the selector."""
        return self._waker_w.fileno()

    def request_stop(self) -> None:
        """Begin a graceful stop (safe to call from a signal handler)."""
        self._stop_requested = True
        with contextlib.suppress(OSError):
            self._waker_w.send(b"\0")

    def request_reload(self) -> None:
        """Re-read the TLS certificate and key at the next pass (safe from a signal handler)."""
        self._reload_requested = True
        with contextlib.suppress(OSError):
            self._waker_w.send(b"\0")

    def reload_tls(self) -> bool:
        """Load the certificate and key again: new connections get the new pair, open ones keep
        theirs. A broken new pair is logged and the old one kept. True if replaced."""
        if self.tls is None:
            return False
        from .tls import TlsSetupError, make_context

        try:
            context = make_context(self.config)
        except TlsSetupError as exc:
            self.logs.info(f"evloop_httpd: TLS reload failed, keeping the old certificate: {exc}")
            return False
        self.tls = context
        self.logs.info("evloop_httpd: TLS certificate and key reloaded")
        return True

    def transports(self) -> list[Transport]:
        """The open transports (for the stop, and for tests)."""
        return [k.data for k in self.sel.get_map().values() if isinstance(k.data, Transport)]

    def close(self) -> None:
        for t in self.transports():
            t.conn.abort()
            self._close(t)
        self._close_listeners()
        self.sel.unregister(self._waker_r)
        self._waker_r.close()
        if self.ctx.gate is not None:
            if self.ctx.gate.sock is not None:
                self.sel.unregister(self.ctx.gate.sock)
            self.ctx.gate.close()
        self._waker_w.close()
        if self.ctx.pipe is not None:
            self.ctx.pipe.close()
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
                slept_from = now
                events = self.sel.select(self._next_timeout(now))
                now = time.monotonic()
                if self.tracer is not None:
                    self.tracer.wakeup(now - slept_from, len(events))
                self.ctx.date.update(time.time())
                if self._ready:
                    ready, self._ready = self._ready, []
                    for t in ready:
                        if t.is_open:
                            self._step(t, now, READ)
                for key, mask in events:
                    data = key.data
                    if data.__class__ is _Listening:
                        self._accept(data, now)
                    elif data is _WAKER:
                        self._drain_waker()
                    elif data is _GATE:
                        self._take_verdicts(now)
                    elif data.sock is not None:  # not closed earlier in this pass
                        self._step(data, now, mask)
                self._run_timers(now)
                if self._reload_requested:  # after the select the signal's byte woke
                    self._reload_requested = False
                    self.reload_tls()
                if self.faults is not None:
                    maybe_delay(self.faults)  # inside the iteration: the histogram shows it
                if self.stats is not None:
                    self.stats.iteration(time.monotonic() - now, len(events), now)
                    share = self.status_share
                    if share is not None and now >= share.next_at:
                        share.publish(self, now)
                self.logs.flush()
                if on_iteration is not None:
                    on_iteration()
        finally:
            self.close()

    def _next_timeout(self, now: float) -> float | None:
        if self._ready:
            return 0.0
        candidates = []
        at = self.timers.next_at()
        if at is not None:
            candidates.append(at)
        if self._accept_resume_at is not None:
            candidates.append(self._accept_resume_at)
        if self._shutdown_deadline is not None:
            candidates.append(self._shutdown_deadline)
        if self.status_share is not None:
            candidates.append(self.status_share.next_at)
        if not candidates:
            return None
        return max(0.0, min(candidates) - now)

    def _take_verdicts(self, now: float) -> None:
        gate = self.ctx.gate
        assert gate is not None and gate.sock is not None
        for conn in gate.on_readable(now):
            t = self._authenticating.pop(getattr(conn, "ident", -1), None)
            if t is not None and t.is_open:
                self._step(t, now)
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
        for t in fresh:
            if t.is_open:
                self._step(t, now, READ)

    def _accept_batch(self, listening: _Listening, now: float) -> list[Transport]:
        listener = listening.sock
        fresh: list[Transport] = []
        for _ in range(ACCEPT_BATCH if self.tls is None else TLS_ACCEPT_BATCH):
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
            ctx = listening.ctx  # the status listener's; None: the server's (3 arguments)
            t = self._add(sock, addr, now) if ctx is None else self._add(sock, addr, now, ctx)
            if t is not None:
                fresh.append(t)
        return fresh

    def _add(
        self, sock: socket.socket, addr: Address, now: float, ctx: Context | None = None
    ) -> Transport | None:
        sock.setblocking(False)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # The status listener's few connections ask; the others share the listener's.
            ask = self._ask_local or ctx is not None
            local = sock.getsockname() if ask else self.address
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
        tls = self.tls
        # The status listener's connections have a context of their own (its handler), and
        # speak TLS when the server does: its accounts' passwords must not cross in clear.
        # They come straight from the operator, not through the balancer: no PROXY header.
        conn = self.conn_class(
            ctx or self.ctx,
            now,
            addr,
            local,
            next(self._ids),
            handshake=tls is not None,
            proxy=self.config.proxy_protocol and ctx is None,
        )
        t: Transport
        if tls is None:
            t = self.plain_class(sock, conn, self.config.use_sendfile)
        else:
            from .tls import TlsTransport

            t = (self.tls_class or TlsTransport)(sock, conn, tls)  # type: ignore[arg-type]
        self.sel.register(sock.fileno(), READ, t)
        self.count += 1
        self.timers.arm(t, conn.deadline, self.count)
        if self.ctx.trace:
            self.logs.debug(f"#{conn.ident} accepted from {addr[0]}:{addr[1]}")
        return t

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

    # One turn of one transport

    def _step(self, t: Transport, now: float, mask: int = 0, *, due: bool = False) -> None:
        """Ready (or due), pump, settle. The turn's work budget starts now: the request read
        in this turn counts too."""
        self._work_until = time.perf_counter() + WORK_BUDGET_S  # as start_turn(), inline
        try:
            if due:
                t.due(now)
            elif mask:
                t.ready(mask, now)
            elif not t.events and t.conn.state is S.AUTHENTICATING:
                # Reported though it waits for nothing: epoll always reports a hang-up or an
                # error. The client reset while its password was being checked; left alone, it
                # would be reported again at every select until the verdict (a busy loop).
                t.conn.abort()
            t.pump(now)
        except Exception as exc:  # a bug outside the connection's own guard: drop only this one
            self.logs.bug(t.conn, exc)
            t.conn.abort()
        want = CLOSE
        try:
            want = t.settle()
        except Exception as exc:
            self.logs.bug(t.conn, exc)
            t.conn.abort()
        if want == CLOSE:
            self._close(t)
            return
        if want != t.events:
            self.sel.modify(t.fileno(), want, t)
            t.events = want
        if t.may_buffer and want & READ and t.buffered():
            self._ready.append(t)
        conn = t.conn
        if conn.state is S.AUTHENTICATING:
            self._authenticating[conn.ident] = t  # the verdict comes on the gate's socket
        if conn.deadline < t.timer_at:  # else nothing to do: see timers.py
            self.timers.arm(t, conn.deadline, self.count)

    def start_turn(self) -> None:
        """A connection's turn begins: its work budget runs from now (see the docstring)."""
        self._work_until = time.perf_counter() + WORK_BUDGET_S

    def _within_budget(self) -> bool:
        return time.perf_counter() < self._work_until

    def _close(self, t: Transport) -> None:
        if not t.is_open:
            return
        self.sel.unregister(t.fileno())  # before close: the number may be reused at once
        t.close()
        self._authenticating.pop(t.conn.ident, None)
        self.count -= 1
        if self.count < self.config.max_connections and self._accept_resume_at is None:
            self._resume_accepting()

    # Timers

    def _run_timers(self, now: float) -> None:
        if self._accept_resume_at is not None and now >= self._accept_resume_at:
            self._resume_accepting()
        tracer = self.tracer
        for t in self.timers.due(now, _deadline_of):
            if tracer is not None:
                from .watch import deadline_name

                tracer.timer(t.ident, deadline_name(t.conn))  # type: ignore[attr-defined]
            self._step(t, now, due=True)  # type: ignore[arg-type]

    # Graceful stop

    def _begin_shutdown(self, now: float) -> None:
        self._shutdown_deadline = now + self.config.timeouts.shutdown_s
        self.ctx.stopping = True
        for listening in self.listeners:
            if listening.ctx is not None:
                listening.ctx.stopping = True
        self._close_listeners()
        waiting = 0  # connections given a moment for a request that may be on its way
        for t in self.transports():
            conn = t.conn
            # Nothing promised yet (idle, or still sending us a request): drop. A half-received
            # PUT is aborted, which removes its temp file. But a request that has arrived whole
            # in the kernel and not been read yet (just accepted, or the next on a keep-alive
            # connection) is served, with Connection: close: its client did nothing wrong, and
            # on a reload (see supervisor.py) dropping it would fail a request. Over TLS, the
            # close sends close_notify (see tls.py).
            if not t.pending and conn.state in (
                S.PROXY_HEADER,
                S.HANDSHAKING,
                S.READING_HEADERS,
                S.AUTHENTICATING,
                S.READING_BODY,
                S.WRITING_CONTINUE,
            ):
                # A connection still in its PROXY header has not sent its request either.
                if (
                    conn.state is S.READING_HEADERS and not conn.inbuf
                ) or conn.state is S.PROXY_HEADER:
                    if t.input_waits():
                        continue
                    if now - conn.phase_start < STOP_GRACE_S:
                        # Just accepted (or just answered): its client has probably sent, or is
                        # about to send, a request. A moment to arrive, then a quiet close.
                        conn.deadline = min(conn.deadline, now + STOP_GRACE_S)
                        self.timers.arm(t, conn.deadline, self.count)
                        waiting += 1
                        continue
                conn.abort()
                self._close(t)
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


def _deadline_of(t: Transport) -> float:
    return t.conn.deadline
