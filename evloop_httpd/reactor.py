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
3. settle: ``transport.settle()`` says what the selector should wait for, or that the
   transport is done; the server calls ``modify`` only if that changed, closes a finished
   transport, and re-arms the timer only if the deadline moved earlier (:mod:`timers`).

A TLS transport may hold decrypted input above the kernel, where ``select`` cannot see it
(``buffered()``); such a transport is served again on the next pass without waiting.

Accepting is a bounded loop. At ``--max-connections``, or when ``accept`` fails for lack of file
descriptors (``EMFILE``/``ENFILE``), the listener is unregistered: new clients wait in the
kernel's backlog until a connection closes (or, for EMFILE, a short back-off passes), instead of
the loop spinning on a listener it cannot serve.

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

from .config import Config
from .connection import Connection, Context
from .log import Logs
from .states import READ, ConnState
from .timers import Timers
from .transport import CLOSE, Transport

assert selectors.EVENT_READ == READ

ACCEPT_BATCH = 64  # accepts per wake-up of the listener
EMFILE_BACKOFF_S = 0.1
_OUT_OF_FDS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})

_MAX_SHARED_HOSTS = 4096
_LISTENER = object()
_WAKER = object()
S = ConnState


class Server:
    """Listens on one address and serves connections until :meth:`request_stop`."""

    def __init__(self, config: Config, logs: Logs | None = None) -> None:
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
        self.listener: socket.socket | None = None
        self.address: tuple = ("", 0)
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
        self._local_is_wildcard = False
        self._waker_r, self._waker_w = socket.socketpair()
        for s in (self._waker_r, self._waker_w):
            s.setblocking(False)
        self.sel.register(self._waker_r, selectors.EVENT_READ, _WAKER)

    # Set-up and tear-down

    def bind(self) -> tuple:
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
        self.listener = sock
        self.address = sock.getsockname()
        self._local_is_wildcard = self.address[0] in ("0.0.0.0", "::")
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
        self._stop_accepting()
        if self.listener is not None:
            self.listener.close()
            self.listener = None
        self.sel.unregister(self._waker_r)
        self._waker_r.close()
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
                if self._ready:
                    ready, self._ready = self._ready, []
                    for t in ready:
                        if t.is_open:
                            self._step(t, now, READ)
                for key, mask in events:
                    data = key.data
                    if data is _LISTENER:
                        self._accept(now)
                    elif data is _WAKER:
                        self._drain_waker()
                    elif data.is_open:
                        self._step(data, now, mask)
                self._run_timers(now)
                if self._reload_requested:  # after the select the signal's byte woke
                    self._reload_requested = False
                    self.reload_tls()
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
        if not candidates:
            return None
        return max(0.0, min(candidates) - now)

    def _drain_waker(self) -> None:
        try:
            while self._waker_r.recv(4096):
                pass
        except OSError:
            pass

    # Accepting

    def _accept(self, now: float) -> None:
        listener = self.listener
        assert listener is not None
        for _ in range(ACCEPT_BATCH):
            if self.count >= self.config.max_connections:
                self.logs.debug("connection cap reached; pausing accept")
                self._stop_accepting()
                return
            try:
                sock, addr = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _OUT_OF_FDS:
                    self.logs.info(f"evloop_httpd: accept failed ({exc.strerror}); backing off")
                    self._stop_accepting()
                    self._accept_resume_at = now + EMFILE_BACKOFF_S
                    return
                # ECONNABORTED and friends: that client gave up; the next may not have.
                self.logs.debug(f"accept: {exc}")
                continue
            self._add(sock, addr, now)

    def _add(self, sock: socket.socket, addr: tuple, now: float) -> None:
        sock.setblocking(False)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            local = sock.getsockname() if self._local_is_wildcard else self.address
        except OSError:
            sock.close()
            return
        # Many connections come from few addresses: share one str per address (~60 bytes each
        # of the ~1 KiB an idle connection costs). The table is bounded; past it, no sharing.
        host = self._hosts.get(addr[0])
        if host is None and len(self._hosts) < _MAX_SHARED_HOSTS:
            host = self._hosts[addr[0]] = addr[0]
        if host is not None:
            addr = (host, *addr[1:])
        tls = self.tls
        conn = Connection(self.ctx, now, addr, local, next(self._ids), handshake=tls is not None)
        t: Transport
        if tls is None:
            t = Transport(sock, conn, self.config.use_sendfile)
        else:
            from .tls import TlsTransport

            t = TlsTransport(sock, conn, tls)
        self.sel.register(sock.fileno(), READ, t)
        self.count += 1
        self.timers.arm(t, conn.deadline, self.count)
        if self.ctx.trace:
            self.logs.debug(f"#{conn.ident} accepted from {addr[0]}:{addr[1]}")

    def _stop_accepting(self) -> None:
        if self._accepting and self.listener is not None:
            self.sel.unregister(self.listener)
            self._accepting = False

    def _resume_accepting(self) -> None:
        self._accept_resume_at = None
        if not self._accepting and self.listener is not None and self._shutdown_deadline is None:
            self.sel.register(self.listener, selectors.EVENT_READ, _LISTENER)
            self._accepting = True

    # One turn of one transport

    def _step(self, t: Transport, now: float, mask: int = 0, *, due: bool = False) -> None:
        """Ready (or due), pump, settle."""
        try:
            if due:
                t.due(now)
            elif mask:
                t.ready(mask, now)
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
        if want & READ and t.buffered():
            self._ready.append(t)
        self.timers.arm(t, t.conn.deadline, self.count)

    def _close(self, t: Transport) -> None:
        if not t.is_open:
            return
        self.sel.unregister(t.fileno())  # before close: the number may be reused at once
        t.close()
        self.count -= 1
        if self.count < self.config.max_connections and self._accept_resume_at is None:
            self._resume_accepting()

    # Timers

    def _run_timers(self, now: float) -> None:
        if self._accept_resume_at is not None and now >= self._accept_resume_at:
            self._resume_accepting()
        for t in self.timers.due(now, _deadline_of):
            self._step(t, now, due=True)  # type: ignore[arg-type]

    # Graceful stop

    def _begin_shutdown(self, now: float) -> None:
        self._shutdown_deadline = now + self.config.timeouts.shutdown_s
        self.ctx.stopping = True
        self._stop_accepting()
        if self.listener is not None:
            self.listener.close()
            self.listener = None
        for t in self.transports():
            # Nothing promised yet (idle, or still sending us a request): drop. A half-received
            # PUT is aborted, which removes its temp file. Over TLS, the close sends
            # close_notify (see tls.py).
            if not t.pending and t.conn.state in (
                S.HANDSHAKING,
                S.READING_HEADERS,
                S.READING_BODY,
                S.WRITING_CONTINUE,
            ):
                t.conn.abort()
                self._close(t)
        self.logs.flush()


def _deadline_of(t: Transport) -> float:
    return t.conn.deadline
