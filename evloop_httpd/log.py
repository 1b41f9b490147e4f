"""The server's logs: access log, CSV stats, response heads, the loop's trace, and bugs.

Theory of operation: nothing here writes on the hot path. Each record is formatted into an
in-memory list and the reactor calls :meth:`Logs.flush` once per loop iteration, so a burst of
requests costs one ``write`` per log, not one per request. :meth:`Logs.close` flushes for the
last time at shutdown. Errors writing a log are reported once on stderr and never stop serving.
"""

from __future__ import annotations

import csv
import encodings.unicode_escape  # noqa: F401  loaded now: at EMFILE a lazy import would fail
import io
import json
import os
import select
import socket
import stat
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TextIO
from urllib.parse import unquote_to_bytes

from .config import Config
from .connection import Address, Connection
from .states import INTEREST, ConnState, Input

_CSV_HEADER = [
    "server_ip",
    "server_port",
    "client_ip",
    "client_port",
    "method",
    "url",
    "status",
    "bytes_sent",
    # Added later, so at the end: readers that count columns keep working.
    "time",
    "user",
    "path",
]
_INTEREST_NAMES = {0: "none", 1: "read", 2: "write", 3: "read|write"}


def _whole_lines(pending: bytearray) -> int:
    """How much of ``pending`` to write at once: whole lines only, up to ``PIPE_BUF`` bytes (a
    pipe takes that much atomically), or one longer line whole. So processes sharing a log
    (``--workers``) never interleave mid-line: each line is in one ``write`` of its own
    process. Only a line longer than PIPE_BUF, written to a pipe, can still be split."""
    end = pending.rfind(b"\n", 0, select.PIPE_BUF) + 1
    if end == 0:
        end = pending.find(b"\n") + 1 or len(pending)
    return end


def _printable(raw: bytes) -> str:
    # Log lines must not let a client forge lines or terminal escapes.
    return raw.decode("latin-1").encode("unicode_escape").decode("ascii").replace('"', '\\"')


def escape_text(text: str, also: str = "") -> str:
    """``text`` with every character that is not printable (C0 and C1 controls, DEL, bidi and
    other format characters such as U+202E, line and paragraph separators), the backslash and
    those in ``also`` written as ``\\xNN``/``\\uNNNN``: one log line stays one line, shows
    what was sent, and cannot reorder or recolour what a terminal displays."""
    if text.isprintable() and "\\" not in text and not any(c in text for c in also):
        return text
    out = []
    for c in text:
        if c.isprintable() and c != "\\" and c not in also:
            out.append(c)
        elif 0xDC80 <= ord(c) <= 0xDCFF:  # an undecodable byte (surrogateescape)
            out.append(f"\\x{ord(c) - 0xDC00:02x}")
        elif ord(c) < 0x100:
            out.append(f"\\x{ord(c):02x}")
        elif ord(c) < 0x10000:
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(f"\\U{ord(c):08x}")
    return "".join(out)


_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(text: str) -> str:
    """A CSV cell a spreadsheet shows as text: one that a spreadsheet would read as a formula
    (leading ``=``, ``+``, ``-``, ``@``, tab or CR) gets a ``'`` in front (OWASP's advice)."""
    return "'" + text if text.startswith(_FORMULA_STARTS) else text


def decoded_path(raw_path: bytes) -> str:
    """The request's path, percent-decoded as UTF-8 (invalid bytes as ``\\xNN``), escaped."""
    text = unquote_to_bytes(raw_path).decode("utf-8", "surrogateescape")
    return escape_text(text)


def _nonblocking_view(fd: int) -> tuple[int, bool, socket.socket | None]:
    """How to write to ``fd`` without ever blocking, whoever else writes to it too: (the
    descriptor to poll and write, whether it is one of our own to close, the socket to send
    to with ``MSG_DONTWAIT`` instead).

    ``O_NONBLOCK`` cannot simply be set on stderr: the flag belongs to the open file
    description, which the shell and the other workers share. So a pipe or FIFO is opened
    again through /proc, which gives a description of our own on the same pipe, and a socket
    (systemd's journal stream) is sent to with ``MSG_DONTWAIT``, a per-call flag. A regular
    file, a terminal, or a system without /proc keeps the plain descriptor.

    History: two workers sharing a stderr pipe could both see it writable, both write, and the
    second write blocked its worker's whole loop until the reader drained the pipe (a CI run of
    ``test_logs_of_all_workers_stay_whole_lines`` stalled its load for 60 s)."""
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISFIFO(mode):
            flags = os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC
            return os.open(f"/proc/self/fd/{fd}", flags), True, None
        if stat.S_ISSOCK(mode):
            copy = os.dup(fd)
            try:
                return fd, False, socket.socket(fileno=copy)
            except OSError:
                os.close(copy)
    except OSError:
        pass
    return fd, False, None


class _Sink:
    """One buffered text destination that never blocks the loop.

    Text is kept in memory until :meth:`flush`. Then, for a real descriptor, only what it can
    take right now is written: a zero-timeout ``poll`` says it is writable, each write is at
    most ``PIPE_BUF`` bytes, and a pipe or socket is written without blocking
    (:func:`_nonblocking_view`), since another process may fill it between our poll and our
    write. The rest waits for the next flush. If a reader stalls for good
    (``server 2>&1 | less``), the backlog is capped at ``MAX_PENDING_BYTES``: the oldest bytes
    are dropped and the drop is reported in the log once the reader is back. Only the last
    flush at shutdown waits, and only briefly.
    """

    __slots__ = (
        "_broken",
        "_buf",
        "_dropped",
        "_fd",
        "_file",
        "_own_fd",
        "_owned",
        "_pending",
        "_poll",
        "_sock",
    )

    MAX_PENDING_BYTES = 4 * 1024 * 1024
    FINAL_WAIT_S = 2.0

    def __init__(self, file: TextIO, owned: bool) -> None:
        self._file = file
        self._owned = owned
        self._buf: list[str] = []
        self._broken = False
        self._pending = bytearray()
        self._dropped = 0
        self._own_fd = False
        self._sock: socket.socket | None = None
        try:
            self._fd = file.fileno()
        except (OSError, ValueError, io.UnsupportedOperation):
            self._fd = -1  # an in-memory stream (tests): plain writes cannot block
        else:
            self._fd, self._own_fd, self._sock = _nonblocking_view(self._fd)
        self._poll = select.poll()
        if self._fd >= 0:
            self._poll.register(self._fd, select.POLLOUT)

    def add(self, text: str) -> None:
        self._buf.append(text)

    def flush(self, final: bool = False) -> None:
        if self._buf:
            text = "".join(self._buf)
            self._buf.clear()
            if self._broken:
                return
            if self._fd < 0:
                self._write_stream(text)
                return
            self._pending += text.encode("utf-8", "backslashreplace")
            excess = len(self._pending) - self.MAX_PENDING_BYTES
            if excess > 0:
                del self._pending[:excess]
                self._dropped += excess
        if self._pending and not self._broken:
            self._drain(final)

    def _write_stream(self, text: str) -> None:
        try:
            self._file.write(text)
            self._file.flush()
        except (OSError, ValueError) as exc:
            self._fail(exc)

    def _drain(self, final: bool) -> None:
        deadline = time.monotonic() + self.FINAL_WAIT_S
        try:
            self._file.flush()  # anything print() left in the text layer goes first
            while self._pending:
                wait_ms = max(0, int((deadline - time.monotonic()) * 1000)) if final else 0
                if not self._poll.poll(wait_ms):
                    return
                if self._dropped:
                    note = f"evloop_httpd: a stalled log reader lost {self._dropped} bytes\n"
                    self._pending[:0] = note.encode()
                    self._dropped = 0
                piece = self._pending[: _whole_lines(self._pending)]
                try:
                    if self._sock is not None:
                        n = self._sock.send(piece, socket.MSG_DONTWAIT)
                    else:
                        n = os.write(self._fd, piece)
                except BlockingIOError:
                    # Another process filled it between our poll and our write. Serving, the
                    # rest waits for the next flush; at the last flush, for the reader, a
                    # millisecond at a time until the deadline.
                    if not final or time.monotonic() >= deadline:
                        return
                    time.sleep(0.001)
                    continue
                del self._pending[:n]
        except (OSError, ValueError) as exc:
            self._fail(exc)

    def _fail(self, exc: Exception) -> None:
        self._broken = True
        self._pending.clear()
        print(f"evloop_httpd: cannot write a log ({exc}); dropping it", file=sys.stderr)

    def close(self) -> None:
        self.flush(final=True)
        if self._own_fd:
            os.close(self._fd)
            self._own_fd, self._broken = False, True  # nothing more can be written
        if self._sock is not None:
            self._sock.close()  # our duplicate; the original stays open
            self._sock, self._broken = None, True
        if self._owned:
            self._file.close()


class Logs:
    """Implements the connection's ``Observer`` and the reactor's own messages."""

    def __init__(
        self, config: Config, stderr: TextIO | None = None, worker: int | None = None
    ) -> None:
        err = stderr if stderr is not None else sys.stderr
        self._err = _Sink(err, owned=False)
        self._access = None if config.quiet else self._err
        self._trace = config.trace
        self.worker = worker  # which worker this process is, with --workers; None: the only one
        self._who = "" if worker is None else f" w{worker}"
        self._stamps: dict[str, tuple[int, str]] = {}
        self._csv: _Sink | None = None
        self._csv_rows = io.StringIO()
        self._csv_writer = csv.writer(self._csv_rows, lineterminator="\n")
        self._heads: _Sink | None = None
        # The loop's trace (--trace): in the stderr sink, so its lines keep their order among
        # the access log's, or in its own file (--trace-file).
        self.tracer: Tracer | None = None
        if config.trace:
            sink = self._err if config.trace_file is None else _open(config.trace_file)
            self.tracer = Tracer(sink, config.trace_form, None if worker is None else str(worker))
        if config.stats_csv is not None:
            write_csv_header(config.stats_csv)
            self._csv = _open(config.stats_csv)
        if config.response_log is not None:
            self._heads = _open(config.response_log)

    # Observer

    def transition(self, conn: Connection, old: ConnState, inp: Input, new: ConnState) -> None:
        interest = _INTEREST_NAMES[INTEREST[new]]
        self._err.add(
            f"trace{self._who} #{conn.ident} {old.name} --{inp.name}--> {new.name}"
            f" (wait for {interest})\n"
        )

    def response_head(self, conn: Connection, head: bytes) -> None:
        if self._heads is None:
            return
        stamp = self._stamp("%Y-%m-%dT%H:%M:%SZ")
        self._heads.add(f"# {stamp} #{conn.ident} {_addr(conn.peer)}\n")
        self._heads.add(head.decode("latin-1").replace("\r\n", "\n"))

    def request_done(self, conn: Connection) -> None:
        if self._access is None and self._csv is None:
            return
        req = conn.request
        if req is not None:
            method = req.method.decode("ascii")
            url = _printable(req.raw_target)
            line = f"{method} {url} HTTP/{req.http_version.decode('ascii')}"
        else:
            method, url, line = "", "", "-"
        # The user name is the client's own bytes too (it could be any name, before a check).
        user = conn.user
        if self._access is not None:
            stamp = self._stamp("%d/%b/%Y:%H:%M:%S +0000")
            who = "-" if user is None else escape_text(user, also=' "')
            self._access.add(
                f'{conn.peer[0]} - {who} [{stamp}] "{line}" {conn.status} {conn.sent}\n'
            )
        if self._csv is not None:
            self._csv_writer.writerow(
                [
                    csv_cell(conn.local[0]),
                    conn.local[1],
                    csv_cell(conn.peer[0]),
                    conn.peer[1],
                    csv_cell(method),
                    csv_cell(url),
                    conn.status,
                    conn.sent,
                    self._stamp("%Y-%m-%dT%H:%M:%SZ"),
                    "" if user is None else csv_cell(escape_text(user)),
                    "" if req is None else csv_cell(decoded_path(req.path)),
                ]
            )
            self._take_csv()

    def bug(self, conn: Connection, exc: BaseException) -> None:
        text = "".join(traceback.format_exception(exc))
        self._err.add(f"evloop_httpd: bug on connection #{conn.ident} {_addr(conn.peer)}:\n{text}")

    # The reactor's messages

    def info(self, text: str) -> None:
        self._err.add(text + "\n")

    def debug(self, text: str) -> None:
        if self.tracer is not None:
            self.tracer.note(text)  # timestamped, in the trace's form and place
        elif self._trace:
            self._err.add(f"debug{self._who} {text}\n")

    def flush(self) -> None:
        self._err.flush()
        if self.tracer is not None:
            self.tracer.flush()
        if self._csv is not None:
            self._csv.flush()
        if self._heads is not None:
            self._heads.flush()

    def close(self) -> None:
        if self.tracer is not None:
            self.tracer.close()  # its own file; the stderr sink just flushes, closed next
        self._err.close()
        for sink in (self._csv, self._heads):
            if sink is not None:
                sink.close()

    def _stamp(self, fmt: str) -> str:
        # Formatting a time costs more than the rest of a log line: once a second is enough.
        second = int(time.time())
        cached = self._stamps.get(fmt)
        if cached is None or cached[0] != second:
            cached = (second, time.strftime(fmt, time.gmtime(second)))
            self._stamps[fmt] = cached
        return cached[1]

    def _take_csv(self) -> None:
        assert self._csv is not None
        self._csv.add(self._csv_rows.getvalue())
        self._csv_rows.seek(0)
        self._csv_rows.truncate()


def write_csv_header(path: Path) -> None:
    """Start a new or empty stats CSV with its header row (once, before workers fork)."""
    with open(path, "a", encoding="utf-8", newline="") as f:
        if os.fstat(f.fileno()).st_size == 0:
            csv.writer(f, lineterminator="\n").writerow(_CSV_HEADER)


def _open(path: Path) -> _Sink:
    return _Sink(open(path, "a", encoding="utf-8", newline=""), owned=True)


def _addr(addr: Address) -> str:
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


# The loop's trace (--trace [text|json], --trace-file): Logs makes the Tracer, the reactor and
# the watched classes of watch.py call it.

TRACE_FORMS = ("text", "json")


def trace_sink(path: Path | None, stderr: TextIO | None = None) -> _Sink:
    """Where a :class:`Tracer` writes: ``path`` (appended to), else stderr."""
    if path is not None:
        return _open(path)
    return _Sink(stderr if stderr is not None else sys.stderr, owned=False)


def _request_text(raw: bytes) -> str:
    return escape_text(raw.decode("utf-8", "surrogateescape"), also='"')


class Tracer:
    """What the loop does, one line per event, for a learner to follow.

    Two forms. ``text`` (the default) is for reading: every line starts with the UTC time to
    the microsecond, then ``trace``, the connection (``#4``) and what happened. ``json`` is
    for tools: one JSON object per line with ``time`` (Unix seconds), ``worker``, ``event``
    and the event's fields; a transition has ``connection``, ``from``, ``input``, ``to``,
    ``interest`` and ``bytes`` (``{"in": n, "out": n}``, the connection's totals so far).

    Lines go through a buffered :class:`_Sink`, written whole at the loop's next flush, so
    tracing costs a formatted string per event and no system call. Anything a client chose (a
    request line) is escaped with :func:`escape_text` in both forms: JSON would escape control
    characters itself, but ``jq -r`` would turn them back into terminal escapes.
    """

    __slots__ = ("_clock", "_json", "_second", "_sink", "_stamp", "_worker", "_who")

    def __init__(
        self,
        sink: _Sink,
        form: str = "text",
        worker: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if form not in TRACE_FORMS:
            raise ValueError(f"trace form must be one of {TRACE_FORMS}, not {form!r}")
        self._sink = sink
        self._json = form == "json"
        self._worker = "0" if worker is None else worker
        # Text lines name the worker only when there are several (a worker was given).
        self._who = "" if worker is None else f" [{escape_text(worker)}]"
        self._clock = clock
        self._second = -1
        self._stamp = ""

    def _time(self, now: float) -> str:
        # strftime once a second; the microseconds are cheap.
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%H:%M:%S", time.gmtime(second))
        return f"{self._stamp}.{int((now - second) * 1_000_000):06d}"

    def _line(self, text: str) -> None:
        self._sink.add(f"{self._time(self._clock())}{self._who} trace {text}\n")

    def _record(self, event: str, fields: dict[str, object]) -> None:
        record: dict[str, object] = {
            "time": round(self._clock(), 6),
            "worker": self._worker,
            "event": event,
        }
        record.update(fields)
        self._sink.add(json.dumps(record, ensure_ascii=True, separators=(",", ":")) + "\n")

    def transition(
        self,
        conn_id: int,
        old: ConnState,
        inp: Input,
        new: ConnState,
        interest: int | None = None,
        bytes_in: int = 0,
        bytes_out: int = 0,
        request: bytes | None = None,
    ) -> None:
        """A connection moved. ``interest`` is what it waits for now (default: its state's;
        a parked connection waits to write), ``request`` the request line it is serving."""
        wants = _INTEREST_NAMES[INTEREST[new] if interest is None else interest]
        if self._json:
            fields: dict[str, object] = {
                "connection": conn_id,
                "from": old.name,
                "input": inp.name,
                "to": new.name,
                "interest": wants,
                "bytes": {"in": bytes_in, "out": bytes_out},
            }
            if request is not None:
                fields["request"] = _request_text(request)
            self._record("transition", fields)
            return
        req = "" if request is None else f' "{_request_text(request)}"'
        self._line(
            f"#{conn_id} {old.name} --{inp.name}--> {new.name} (wait for {wants}, "
            f"{bytes_in} B in, {bytes_out} B out){req}"
        )

    def wakeup(self, slept_s: float, ready: int) -> None:
        """``select`` returned after sleeping ``slept_s`` with ``ready`` sockets ready."""
        if self._json:
            self._record("wakeup", {"slept_s": round(slept_s, 6), "ready": ready})
        else:
            self._line(f"select woke after {slept_s * 1000:.3f} ms: {ready} ready")

    def io(self, conn_id: int, *, recv: int | None = None, sent: int | None = None) -> None:
        """One step moved bytes: ``recv`` received (0: the peer closed), ``sent`` sent."""
        if recv is None and sent is None:
            raise ValueError("io() needs recv= or sent=")
        if self._json:
            fields: dict[str, object] = {"connection": conn_id}
            if recv is not None:
                fields["recv"] = recv
            if sent is not None:
                fields["sent"] = sent
            self._record("io", fields)
            return
        parts = []
        if recv is not None:
            parts.append("recv end of stream" if recv == 0 else f"recv {recv} B")
        if sent is not None:
            parts.append(f"sent {sent} B")
        self._line(f"#{conn_id} " + ", ".join(parts))

    def eagain(self, conn_id: int, op: str) -> None:
        """``op`` (``recv``, ``send``, ``sendfile``) would block: the connection waits."""
        if self._json:
            self._record("eagain", {"connection": conn_id, "op": escape_text(op)})
        else:
            self._line(f"#{conn_id} EAGAIN on {escape_text(op)}: wait for the selector")

    def timer(self, conn_id: int, what: str) -> None:
        """A connection's timer fired; ``what`` says which deadline (``idle``, ``head``...)."""
        if self._json:
            self._record("timer", {"connection": conn_id, "what": escape_text(what)})
        else:
            self._line(f"#{conn_id} timer fired: {escape_text(what)}")

    def note(self, text: str) -> None:
        """Anything else the loop says while tracing (an accept, a reset), ours to escape."""
        if self._json:
            self._record("note", {"text": escape_text(text)})
        else:
            self._line(escape_text(text))

    def flush(self) -> None:
        self._sink.flush()

    def close(self) -> None:
        self._sink.close()
