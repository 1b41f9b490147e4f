"""Workers: N processes running the same single-threaded loop on the same port, and a small
supervising parent that serves no traffic.

Theory of operation
-------------------
*Sockets belong to the parent.* The parent makes the listening sockets before it starts any
worker and keeps them open until it exits; each worker inherits them through ``fork`` and
accepts on them. Where the OS has ``SO_REUSEPORT`` and we bind ourselves, there is one socket
per worker *slot*, all bound to the same address, and the kernel spreads new connections over
them by a hash of the addresses, with no lock and no thundering herd. Otherwise (no
SO_REUSEPORT, or sockets passed by systemd) every worker accepts on the same shared sockets.

Because the parent holds every socket, no socket is ever closed while the server runs, and so
no queued connection is ever reset. This is what makes restarts and reloads lossless: the
known trap of SO_REUSEPORT is that closing one of the sockets resets the connections waiting
in *its* accept queue. Here a worker that dies or retires closes only its copy; the connections
queued on its slot wait there until the slot's next worker (already running, on a reload;
forked at once, on a crash) accepts them.

*A worker is a fork of the parent* that builds its own ``Logs`` and ``Server`` (so it re-reads
everything a ``Server`` loads when it is made: certificates, the account file), tells the parent
it is ready through a pipe, and serves. There is no shared state between workers (each has its
own caches and counters), which is what lets throughput grow with cores.

*Signals.* Workers ignore SIGINT and SIGHUP: a Ctrl+C in a terminal reaches the whole process
group, and only the parent should decide. The parent turns the first SIGINT/SIGTERM into one
SIGTERM per worker (stop accepting, drain as a single process does) and exits 0 when all have
exited; a second SIGINT/SIGTERM sends SIGQUIT (stop now). A worker treats repeated SIGTERMs as
one, so systemd signalling the whole cgroup and the parent forwarding do not add up to "now".
SIGHUP starts a new generation of workers; once all of it is ready, the old workers get SIGTERM
and finish what they are serving. If a new worker fails before it is ready (a bad certificate,
say), the reload is abandoned and the old workers keep serving. A worker that dies while it
should be serving is restarted at once; if it keeps dying (less than ``STABLE_S`` alive), each
restart waits twice as long as the last, up to ``MAX_BACKOFF_S``. Each worker asks the kernel
for SIGTERM if the parent dies (Linux ``PR_SET_PDEATHSIG``), so a ``kill -9`` of the parent
leaves no orphan serving forever.

*Logs.* Each worker flushes its logs in whole lines, one ``os.write`` each (see ``log.py``),
on descriptors it inherited (stderr) or opened with ``O_APPEND`` (the CSV and response logs), so
lines from different workers never interleave mid-line. The parent writes the CSV header before
the first fork, so there is one.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import selectors
import signal
import socket
import sys
import time
import traceback
from dataclasses import dataclass, field

from .config import Config
from .log import Logs, write_csv_header
from .reactor import Server
from .tls import TlsSetupError

# Signals a worker acts on, blocked from fork until its handlers are installed (_spawn).
_STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGQUIT, signal.SIGINT, signal.SIGHUP})

STABLE_S = 5.0  # a worker alive this long was not "dying at start": its back-off resets
FIRST_BACKOFF_S = 0.1  # the second quick death in a row waits this long, then twice as long
MAX_BACKOFF_S = 10.0
READY_TIMEOUT_S = 30.0  # a new worker not ready by then fails the reload
_PR_SET_PDEATHSIG = 1


def cpu_count() -> int:
    """The number of CPUs this process may run on (its affinity mask, not the machine's)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def open_listeners(host: str, port: int, slots: int) -> list[list[socket.socket]]:
    """The listening sockets per worker slot: one SO_REUSEPORT socket each where the OS has it,
    else one socket shared by all slots. Port 0 picks one free port for all of them."""
    family, _, proto, _, addr = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    reuse_port = hasattr(socket, "SO_REUSEPORT")
    socks: list[socket.socket] = []
    try:
        for _ in range(slots if reuse_port else 1):
            sock = socket.socket(family, socket.SOCK_STREAM, proto)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(addr)
            sock.listen(socket.SOMAXCONN)
            addr = (addr[0], sock.getsockname()[1], *addr[2:])  # port 0: the others follow
    except OSError:
        for sock in socks:
            sock.close()
        raise
    if len(socks) == 1:
        return [socks] * slots
    return [[sock] for sock in socks]


@dataclass(eq=False)
class _Worker:
    slot: int
    pid: int
    ready_r: int  # the read end of its ready pipe, -1 once it said ready (or died)
    started: float
    generation: int
    ready: bool = False
    termed: bool = False  # SIGTERM sent: draining, not to be restarted


@dataclass(eq=False)
class _Slot:
    index: int
    socks: list[socket.socket]
    quick_deaths: int = 0
    restart_at: float | None = None
    current: _Worker | None = None


@dataclass(eq=False)
class Supervisor:
    """Starts ``count`` workers on ``listeners`` (one list of sockets per slot) and keeps them
    running until stopped. :meth:`run` returns the exit status."""

    config: Config
    listeners: list[list[socket.socket]]
    status_sock: socket.socket | None = None  # --status: one listener all workers share
    workers: dict[int, _Worker] = field(default_factory=dict)  # by pid
    _stopping: int = 0  # stop signals received
    _generation: int = 0
    _reloading: list[_Worker] = field(default_factory=list)
    _started_up: bool = False
    _exit_status: int = 0

    def __post_init__(self) -> None:
        self.slots = [_Slot(i + 1, socks) for i, socks in enumerate(self.listeners)]
        self.sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        for s in (self._wake_r, self._wake_w):
            s.setblocking(False)
        self.sel.register(self._wake_r, selectors.EVENT_READ)
        self._signals: list[int] = []

    # Messages: whole lines, one write each, straight to the descriptor.

    @staticmethod
    def say(text: str) -> None:
        with contextlib.suppress(OSError):
            os.write(2, f"evloop_httpd supervisor: {text}\n".encode("utf-8", "backslashreplace"))

    # Starting workers

    def _spawn(self, slot: _Slot) -> _Worker:
        ready_r, ready_w = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()  # or the child would write the parent's buffered text again
        parent = os.getpid()
        # Until the child has its own handlers, a SIGTERM sent to it would run ours (a copy that
        # only queues it in the child's memory) and be lost: the child would serve on, and the
        # stop wait for it for ever (seen: ~1 start in 10 stopped at once hung). So the child
        # is born with these signals blocked, and unblocks them once its handlers are in place;
        # what came meanwhile is delivered then.
        signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        pid = -1
        try:
            pid = os.fork()
        finally:
            if pid != 0:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
        if pid == 0:
            os.close(ready_r)
            _run_worker(
                self.config,
                slot.index,
                slot.socks,
                ready_w,
                parent,
                self.listeners,
                self.status_sock,
            )
        os.close(ready_w)
        worker = _Worker(slot.index, pid, ready_r, time.monotonic(), self._generation)
        self.sel.register(ready_r, selectors.EVENT_READ, worker)
        self.workers[pid] = worker
        return worker

    def _on_ready_pipe(self, worker: _Worker) -> None:
        try:
            said = os.read(worker.ready_r, 1)
        except OSError:
            said = b""
        self._close_ready(worker)
        if said:
            worker.ready = True
            self._maybe_finish_reload()
        # EOF without a word: it died starting; its exit status tells why (see _reap).

    def _close_ready(self, worker: _Worker) -> None:
        if worker.ready_r >= 0:
            self.sel.unregister(worker.ready_r)
            os.close(worker.ready_r)
            worker.ready_r = -1

    # The loop

    def run(self) -> int:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(sig, self._on_signal)
        signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        for slot in self.slots:
            slot.current = self._spawn(slot)
        try:
            while self.workers or (not self._stopping and self.slots):
                self._wait()
                self._handle_signals()
                self._reap()
                if (
                    not self._started_up
                    and not self._stopping
                    and all(s.current is not None and s.current.ready for s in self.slots)
                ):
                    self._started_up = True
                    self.say(f"{len(self.slots)} workers ready")
                if self._stopping == 0:
                    self._restart_due(time.monotonic())
        finally:
            for worker in self.workers.values():  # only after an error of our own
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.pid, signal.SIGKILL)
            signal.set_wakeup_fd(-1)
            for socks in self.listeners:
                for sock in socks:
                    sock.close()
            if self.status_sock is not None:
                self.status_sock.close()
        return self._exit_status

    def _wait(self) -> None:
        now = time.monotonic()
        due = [s.restart_at for s in self.slots if s.restart_at is not None]
        timeout = max(0.0, min(due) - now) if due and not self._stopping else None
        if self._reloading:
            timeout = 0.5 if timeout is None else min(timeout, 0.5)  # check the ready deadline
        for key, _ in self.sel.select(timeout):
            if key.data is None:
                with contextlib.suppress(OSError):
                    while self._wake_r.recv(4096):
                        pass
            else:
                self._on_ready_pipe(key.data)
        if self._reloading:
            late = [w for w in self._reloading if not w.ready]
            if late and time.monotonic() - late[0].started > READY_TIMEOUT_S:
                self._abandon_reload(f"worker {late[0].slot} not ready in {READY_TIMEOUT_S:g} s")

    def _on_signal(self, signum: int, _frame: object) -> None:
        self._signals.append(signum)  # acted on in the loop, not in the handler

    def _handle_signals(self) -> None:
        while self._signals:
            sig = self._signals.pop(0)
            if sig in (signal.SIGINT, signal.SIGTERM):
                self._stopping += 1
                if self._stopping == 1:
                    self.say(f"{signal.Signals(sig).name}: stopping the workers gracefully")
                    self._abandon_reload(None)
                    for worker in list(self.workers.values()):
                        self._term(worker)
                else:
                    self.say("stopping now")
                    for worker in self.workers.values():
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(worker.pid, signal.SIGQUIT)
            elif sig == signal.SIGHUP and not self._stopping:
                self._reload()

    def _term(self, worker: _Worker) -> None:
        if not worker.termed:
            worker.termed = True
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.pid, signal.SIGTERM)

    # Deaths and restarts

    def _reap(self) -> None:
        while self.workers:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            worker = self.workers.pop(pid, None)
            if worker is None:
                continue
            self._close_ready(worker)
            self._on_exit(worker, status)

    def _on_exit(self, worker: _Worker, status: int) -> None:
        why = _describe_status(status)
        if worker.termed:
            if self._stopping == 0 and os.waitstatus_to_exitcode(status) != 0:
                self.say(f"retired worker {worker.slot} (pid {worker.pid}) {why}")
            return
        if worker in self._reloading:
            self._abandon_reload(f"new worker {worker.slot} (pid {worker.pid}) {why}")
            return
        slot = self.slots[worker.slot - 1]
        if slot.current is not worker:
            return
        slot.current = None
        if not self._started_up:
            # Dying before the first generation is up is a start-up error (a bad setting):
            # report it once and stop, rather than retry for ever.
            self.say(f"worker {worker.slot} (pid {worker.pid}) {why} while starting; stopping")
            self._stopping = max(self._stopping, 1)
            for other in list(self.workers.values()):
                self._term(other)
            self.slots = []
            self._exit_status = 1
            return
        now = time.monotonic()
        slot.quick_deaths = slot.quick_deaths + 1 if now - worker.started < STABLE_S else 0
        delay = _backoff(slot.quick_deaths)
        slot.restart_at = now + delay
        when = "at once" if delay == 0 else f"in {delay:g} s (it keeps dying)"
        self.say(f"worker {worker.slot} (pid {worker.pid}) {why}; restarting it {when}")

    def _restart_due(self, now: float) -> None:
        for slot in self.slots:
            if slot.restart_at is not None and now >= slot.restart_at:
                slot.restart_at = None
                slot.current = self._spawn(slot)

    # Reload

    def _reload(self) -> None:
        if self._reloading:
            self.say("SIGHUP: a reload is already under way; ignored")
            return
        self._generation += 1
        self.say(f"SIGHUP: starting generation {self._generation} of the workers")
        self._reloading = [self._spawn(slot) for slot in self.slots]

    def _maybe_finish_reload(self) -> None:
        if not self._reloading or not all(w.ready for w in self._reloading):
            return
        for slot, new in zip(self.slots, self._reloading, strict=True):
            old, slot.current = slot.current, new
            slot.restart_at = None
            slot.quick_deaths = 0
            if old is not None:
                self._term(old)  # stops accepting; its queue stays with the slot's socket
        self._reloading = []
        self.say(f"reloaded: generation {self._generation} serving, the old ones draining")

    def _abandon_reload(self, why: str | None) -> None:
        if not self._reloading:
            return
        if why is not None:
            self.say(f"reload failed ({why}); the old workers keep serving")
        for worker in self._reloading:
            self._term(worker)
        self._reloading = []


def _backoff(quick_deaths: int) -> float:
    """No wait for a worker that lived, nor for the first quick death; then 0.1 s, 0.2 s, ..."""
    if quick_deaths <= 1:
        return 0.0
    return float(min(MAX_BACKOFF_S, FIRST_BACKOFF_S * 2.0 ** (quick_deaths - 2)))


def _describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = str(sig)
        return f"was killed by signal {sig} ({name})"
    return f"exited with status {os.waitstatus_to_exitcode(status)}"


def _ask_for_sigterm_when_orphaned(parent: int) -> None:
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _run_worker(
    config: Config,
    index: int,
    socks: list[socket.socket],
    ready_w: int,
    parent: int,
    all_listeners: list[list[socket.socket]],
    status_sock: socket.socket | None = None,
) -> None:
    """The child's whole life after ``fork``; never returns."""
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGQUIT):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        _ask_for_sigterm_when_orphaned(parent)
        for other in all_listeners:  # other slots' sockets are theirs to accept on
            for sock in other:
                if all(sock is not mine for mine in socks):
                    sock.close()
        server = Server(config, Logs(config, worker=index), worker=index)
        server.adopt(socks)
        if status_sock is not None:
            server.bind_status(status_sock)

        def stop(_signum: int, _frame: object) -> None:
            server.request_stop()  # repeated SIGTERMs are one request

        def stop_now(_signum: int, _frame: object) -> None:
            raise SystemExit(0)  # serve_forever's finally still closes

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGQUIT, stop_now)
        signal.set_wakeup_fd(server.wakeup_fd(), warn_on_full_buffer=False)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)  # blocked since the fork
        os.write(ready_w, b"r")
        os.close(ready_w)
        server.serve_forever()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 0
    except TlsSetupError as exc:  # the certificate changed for the worse before a reload
        with contextlib.suppress(OSError):
            os.write(2, f"evloop_httpd worker {index}: TLS: {exc}\n".encode())
    except Exception:  # a bug: report it; the finally below never lets the child return
        with contextlib.suppress(OSError):
            os.write(2, f"evloop_httpd worker {index}: {traceback.format_exc()}".encode())
    finally:
        with contextlib.suppress(OSError, ValueError):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def listeners_for(
    config: Config, workers: int, passed: list[socket.socket]
) -> list[list[socket.socket]]:
    """One list of listening sockets per worker: the ``passed`` ones (systemd) shared by all,
    else sockets bound here (see :func:`open_listeners`). Raises OSError if binding fails."""
    return [passed] * workers if passed else open_listeners(config.host, config.port, workers)


def run(
    config: Config,
    listeners: list[list[socket.socket]],
    status_sock: socket.socket | None = None,
) -> int:
    """Serve with one worker per entry of ``listeners`` (and, with --status, ``status_sock``
    shared by all); returns the exit status."""
    if config.stats_csv is not None:
        write_csv_header(config.stats_csv)
    return Supervisor(config, listeners, status_sock).run()
