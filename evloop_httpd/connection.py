"""One client connection as an explicit state machine, with no socket in it.

Theory of operation
-------------------
A connection is always in exactly one :class:`ConnState`. It moves only through ``_fire``,
which looks the (state, :class:`Input`) pair up in ``TRANSITIONS`` (the table lives in
:mod:`states`); a pair missing from that table is a bug, is reported, and closes the
connection. What the connection waits for is read off the state (``INTEREST``; to write while
*parked*, see below); the transport under it may wait for something else for a while (see
:mod:`transport`).

The connection is sans-IO. Its :class:`~evloop_httpd.transport.Transport` asks it what to send
(:meth:`Connection.to_send`, then :meth:`Connection.file_span`) and drives it through these
calls, each given the current time:

* :meth:`Connection.receive` with bytes from the peer (``b""`` for end of stream);
* :meth:`Connection.wrote` after the socket took ``n`` bytes of :meth:`Connection.to_send`, or
  after the transport held them back to send with the next response;
* :meth:`Connection.streamed` after ``n`` bytes of the file span went out;
* :meth:`Connection.flushed` after the socket took ``n`` bytes the transport had held back
  (bytes of earlier pipelined responses, already counted as written, see :mod:`transport`);
* :meth:`Connection.check_delivery` with how many sent bytes the client has not acknowledged,
  when the timer of a connection sending a response comes due;
* :meth:`Connection.on_timeout` when :attr:`Connection.deadline` has passed;
* :meth:`Connection.resume` at the start of a turn, when the connection is *parked*;
* over TLS, :meth:`Connection.handshake_done` and :meth:`Connection.refuse_plain`;

and two that end it: :meth:`Connection.drained` (LINGERING found nothing left to drain) and
:meth:`Connection.abort` (a socket error, or the server stopping).

A parsed request is answered from the response cache (:mod:`response_cache`) when that can be done
safely, else by the handler; either way the answer is a :class:`Response` plan.

``HttpError`` is caught in one place, :meth:`Connection._advance`. If nothing of a response has
been sent, it becomes an error response; otherwise the connection aborts. Any other exception is
a bug: a 500 under the same rule, and the traceback goes to the log. After an error response the
connection goes to LINGERING, where it only drains what the client still sends (so that closing
does not turn into a reset that destroys the response) and never parses again.

One request is in flight at a time. Pipelined requests wait in ``inbuf``; when a response ends,
the next one is parsed at once, without going back to the selector, as long as the reactor's
work budget for this turn lasts (``ctx.may_start``, which counts time, not sends: one request
can cost a thousand times another). Past it, the connection is *parked*: it starts nothing (nor
decodes more of a body of tiny chunks), it waits to write rather than to read, and the
transport's next turn calls :meth:`resume`. The transport does not read while a response is
being written or while parked, so ``inbuf`` never holds more than the head limit plus one
``recv``: memory per connection is bounded whatever is sent or received.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from http import HTTPStatus
from typing import Protocol, cast

from .auth import PENDING, Gate
from .body import LINES_PER_STEP, ChunkedBody, FixedBody
from .config import Config
from .errors import HttpError, bad_request
from .handler import Handler
from .parser import Request, parse_head
from .response_cache import ResponseCache
from .responses import (
    CONTINUE,
    DateCache,
    Response,
    assemble_head,
    encode_middle,
    error_response,
)
from .states import CAN_RESPOND, INTEREST, MID_RESPONSE, TRANSITIONS, WRITE, ConnState, Input
from .upload import Upload

S = ConnState
I = Input  # noqa: E741 - short aliases keep the state-changing lines readable
_BODYLESS = (b"GET ", b"HEAD ")


def more_follows(conn: Connection) -> bool:
    """Whether another response will be made right after this one without waiting for input.

    True only when the next pipelined request is already whole in ``inbuf`` and is a GET or
    HEAD (no body to wait for), and no file span follows this response.
    """
    inbuf = conn.inbuf
    return not conn.file_remaining and inbuf.startswith(_BODYLESS) and b"\r\n\r\n" in inbuf


def _scheme_mismatch(raw_target: bytes, scheme: bytes) -> bool:
    """An absolute-form target naming the other scheme than the connection's (RFC 9110 §7.4:
    a request the server is not configured to answer on this connection; 421)."""
    if raw_target[:1] == b"/" or b"://" not in raw_target[:8]:
        return False
    return raw_target.split(b"://", 1)[0].lower() != scheme


def _names_head(inbuf: bytearray) -> bool:
    """Whether an unparsed (refused) request head is a HEAD request.

    A head refused before it parsed (414, 431, a malformed field, a 408) has no Request, but its
    method is its first token. A client that sent HEAD reads no content after the header section
    whatever the status (RFC 9110 §9.3.2, §6.4.1), so a body there would be read as garbage
    (node's llhttp: "Data after Connection: close"; curl: "Excess found"). The optional empty
    line before a request (D5) is skipped as the parser skips it.
    """
    return inbuf.startswith(b"HEAD ") or inbuf.startswith(b"\r\nHEAD ")


# A socket address as the socket module gives it: IPv6 adds flowinfo and scope_id.
Address = tuple[str, int] | tuple[str, int, int, int]


class Observer(Protocol):
    """Where a connection reports what the logs want to know."""

    def transition(self, conn: Connection, old: ConnState, inp: Input, new: ConnState) -> None: ...
    def response_head(self, conn: Connection, head: bytes) -> None: ...
    def request_done(self, conn: Connection) -> None: ...
    def bug(self, conn: Connection, exc: BaseException) -> None: ...
    def debug(self, text: str) -> None: ...


def _always() -> bool:
    return True


class Context:
    """What all connections of one server share."""

    __slots__ = (
        "acks_known",
        "cache",
        "config",
        "date",
        "gate",
        "handler",
        "may_start",
        "observer",
        "scheme",
        "stopping",
        "trace",
        "uploads",
    )

    def __init__(self, config: Config, observer: Observer, scheme: bytes = b"http") -> None:
        self.config = config
        # Whether the reactor can tell what a client acknowledged (Linux SIOCOUTQ). If so, a
        # response's average rate is judged on that, not on what the kernel took: see _progress.
        self.acks_known = False
        self.uploads = 0  # PUTs holding a temp file and a folder descriptor (see Config)
        self.handler = Handler(config)
        self.cache = ResponseCache(config.extra_headers)
        self.observer = observer
        self.date = DateCache()
        self.stopping = False
        self.trace = config.trace
        self.scheme = scheme  # every connection of a server has the same: one port, one scheme
        gate = Gate(config)
        self.gate = gate if gate.active else None
        # Whether this turn's work budget allows starting another pipelined request: the
        # reactor's clock. Without a reactor (unit tests), always.
        self.may_start: Callable[[], bool] = _always


class Connection:
    """The HTTP side of one TCP connection. See the module docstring for the protocol."""

    __slots__ = (
        "auth_ticket",
        "body",
        "ctx",
        "deadline",
        "delivered",
        "handed",
        "file_fd",
        "file_offset",
        "file_remaining",
        "ident",
        "inbuf",
        "keep_alive",
        "local",
        "out",
        "out_pos",
        "parked",
        "peer",
        "phase_bytes",
        "phase_acked",
        "phase_start",
        "request",
        "scan_from",
        "sent",
        "spans",
        "state",
        "status",
        "trailer",
        "upload",
        "user",
        # Flags that change how the connection ends on the wire; see states.py, "Flags".
        "cut_short",
        "peer_done",
    )

    def __init__(
        self,
        ctx: Context,
        now: float,
        peer: Address = ("", 0),
        local: Address = ("", 0),
        ident: int = 0,
        *,
        handshake: bool = False,
    ) -> None:
        self.ctx = ctx
        self.state = S.READING_HEADERS
        self.inbuf = bytearray()
        self.scan_from = 0
        self.out = b""
        self.out_pos = 0
        self.file_fd = -1
        self.file_offset = 0
        self.file_remaining = 0
        # Still to send, last first. Idle connections share the empty tuple: an empty list
        # of their own would cost 72 bytes each, 7% of an idle connection.
        self.spans: list[tuple[bytes, int, int]] | tuple[()] = ()
        self.trailer = b""
        self.request: Request | None = None
        self.body: FixedBody | ChunkedBody | None = None
        self.upload: Upload | None = None
        self.user: str | None = None  # the account the current request acts as
        self.auth_ticket = 0  # the password check this connection waits for (0: none)
        self.keep_alive = False
        self.status = 0
        self.sent = 0  # bytes of the current response on the wire
        # Over the connection's life: bytes of responses the kernel took (or the reactor held
        # back), and of those, the ones the client had acknowledged when the timer last looked.
        self.handed = 0
        self.delivered = 0
        self.phase_start = now
        self.phase_bytes = 0
        self.phase_acked = 0  # bytes the client acknowledged in this phase (see check_delivery)
        self.deadline = now + ctx.config.timeouts.head_s
        self.peer = peer
        self.local = local
        self.ident = ident
        self.cut_short = False  # closed mid-response: the transport closes with RST, not FIN
        self.peer_done = False  # the client asked to close and sent nothing more
        self.parked = False  # whole requests wait in inbuf for the next turn (work budget)
        if handshake:
            self.state = S.HANDSHAKING
            self.deadline = now + ctx.config.timeouts.handshake_s

    @property
    def interest(self) -> int:
        # Parked: wait to write. A socket almost always is writable, so the loop comes back at
        # once; reading more would grow inbuf past its bound, and an end of stream read now
        # would cut off requests already whole.
        return WRITE if self.parked else INTEREST[self.state]

    # What the transport asks.

    @property
    def handshaken(self) -> bool:
        """Past HANDSHAKING: HTTP may flow (always true over plain TCP)."""
        return self.state is not S.HANDSHAKING and self.state is not S.CLOSED

    def to_send(self) -> bytes | memoryview:
        """What of the response's in-memory bytes (head, small body, a multipart boundary) is
        still to go, or ``b""``."""
        out = self.out
        if not out or self.state not in MID_RESPONSE:
            return b""
        return memoryview(out)[self.out_pos :] if self.out_pos else out

    def file_span(self) -> tuple[int, int, int] | None:
        """``(fd, offset, count)`` of the file bytes to send next, once :meth:`to_send` is
        empty; None when no file bytes are due."""
        if self.state is S.STREAMING_FILE and not self.out and self.file_remaining > 0:
            return self.file_fd, self.file_offset, self.file_remaining
        return None

    def response_follows(self) -> bool:
        """Whether, once all of :meth:`to_send` is taken, the next response will be made at
        once without waiting for input; the transport may then hold this one back and send
        the batch in one call. Only for a whole, untouched in-memory response on a kept-alive
        connection (see :func:`more_follows`)."""
        return self.out_pos == 0 and self.keep_alive and more_follows(self)

    # What the transport tells.

    def receive(self, data: bytes, now: float) -> None:
        """Bytes from the peer; ``b""`` means it closed its side."""
        state = self.state
        if state is S.LINGERING or state is S.HANDSHAKING:
            # LINGERING discards; HANDSHAKING is given only the end of stream (TLS bytes
            # never reach HTTP).
            if not data:
                self._fire(I.PEER_EOF)
            return
        if state is S.CLOSED:
            return
        if not data:
            if state is S.READING_HEADERS and not self.inbuf:
                self._fire(I.PEER_EOF)
            elif state in CAN_RESPOND:
                # A half-closed client may still read: tell it why nothing was done.
                self._fail(bad_request("connection closed in the middle of a request"), now)
            else:
                self.abort()
            return
        self.ctx.cache.next_epoch()
        self.inbuf += data
        if state in CAN_RESPOND:
            self._advance(now)

    def wrote(self, n: int, now: float) -> None:
        """``send`` took the first ``n`` bytes of ``out[out_pos:]``."""
        self.out_pos += n
        self.sent += n
        self.handed += n
        if self.out_pos < len(self.out):
            self._progress(n, now)
            return
        self.out = b""
        self.out_pos = 0
        state = self.state
        if state is S.WRITING_CONTINUE:
            self._fire(I.CONTINUE_SENT)
            self._start_phase(now)
            self._advance(now)
        elif self.file_remaining > 0:
            if state is S.WRITING_HEADERS:
                self._fire(I.FILE_FOLLOWS)
                self._start_phase(now)
            else:
                self._progress(n, now)
        elif state is S.STREAMING_FILE and self._next_span():
            self._progress(n, now)
        else:
            self._finish_response(now)

    def streamed(self, n: int, now: float) -> None:
        """``sendfile`` (or its fallback) moved ``n`` bytes of the current file span.

        In STREAMING_FILE the reactor sends :attr:`out` first when it is not empty (a multipart
        boundary), and the file span after it.
        """
        if n <= 0:
            # The file ended before the length we promised: it was truncated under us. Never
            # let the client take what it got for the whole file.
            self.abort()
            return
        self.file_offset += n
        self.file_remaining -= n
        self.sent += n
        self.handed += n
        if self.file_remaining > 0 or self._next_span():
            self._progress(n, now)
        else:
            self._finish_response(now)

    def flushed(self, n: int, now: float) -> None:
        """``send`` took ``n`` held-back bytes: the client is reading, so this is progress.

        Without it, a client that reads a held-back batch above the minimum rate, but more
        slowly than the whole batch in ``stall_s``, would be cut off as a stalled one; and at a
        stop, the linger would run out while the batch still had bytes to go.
        """
        state = self.state
        if state is S.LINGERING:
            self.deadline = now + self.ctx.config.timeouts.linger_s
        elif state in MID_RESPONSE:
            self._progress(n, now)

    def check_delivery(self, backlog: int, now: float) -> None:
        """Before a sending connection's expired deadline is judged: ``backlog`` bytes of what
        it sent are not yet acknowledged by the client (the kernel's send queue, and anything
        the reactor held back).

        Progress is otherwise counted when the kernel takes bytes, but a socket becomes
        writable again only once about a third of its send buffer has drained (Linux), and the
        kernel grows that buffer to megabytes on a fast path such as loopback. A client that
        reads steadily but slowly (wget or curl with ``--limit-rate``, a slow link behind a
        fast one) then leaves the server with nothing to write for longer than the stall
        timeout, although it is taking bytes all along. So when the deadline comes, bytes the
        client acknowledged since the timer last looked count as progress too. A client that
        takes nothing has acknowledged nothing new, and the stall stands; the average-rate bound
        is not relaxed.
        """
        if self.state is not S.WRITING_HEADERS and self.state is not S.STREAMING_FILE:
            return
        delivered = self.handed - backlog
        if delivered > self.delivered:
            # Each byte is credited once, to the phase in which a look first saw it
            # acknowledged (bytes of an earlier response still draining are the client
            # reading, too, and were not credited to that response).
            self.phase_acked += delivered - self.delivered
            self.delivered = delivered
            self._progress(0, now)

    def resume(self, now: float) -> None:
        """A new turn: a parked connection starts its next buffered request, or goes on
        decoding the body bytes it has."""
        if self.parked and self.state in CAN_RESPOND:
            self._advance(now)

    def on_timeout(self, now: float) -> None:
        """The reactor's timer fired; act only if our deadline really has passed."""
        if self.state is S.CLOSED or now < self.deadline:
            return
        if self.parked and self.state is S.READING_HEADERS:
            # Parked all the idle timeout long: the socket never became writable, so the client
            # reads none of its responses. No request is half-received: close quietly.
            self._fire(I.TIMEOUT)
        elif self.state is S.READING_HEADERS and self.inbuf:
            self._fail(
                HttpError(
                    HTTPStatus.REQUEST_TIMEOUT, "request head not received in time", close=True
                ),
                now,
            )
        elif self.state is S.READING_BODY:
            self._fail(
                HttpError(HTTPStatus.REQUEST_TIMEOUT, "request body stalled", close=True), now
            )
        elif self.state is S.AUTHENTICATING:
            self._fail(
                HttpError(
                    HTTPStatus.SERVICE_UNAVAILABLE,
                    "the password check took too long",
                    close=True,
                    headers=((b"Retry-After", b"1"),),
                ),
                now,
            )
        else:
            self._fire(I.TIMEOUT)

    def handshake_done(self, now: float) -> None:
        """TLS: the handshake finished; HTTP may begin, with a fresh head deadline."""
        if self.state is S.HANDSHAKING:
            self._fire(I.HANDSHAKE_DONE)
            self.deadline = now + self.ctx.config.timeouts.head_s

    def refuse_plain(self, first_bytes: bytes, now: float) -> None:
        """TLS: the client spoke plain HTTP to the TLS port. Answer it in plain text, as nginx
        does, that this port wants https, then close: better than a silent reset or a hang."""
        if self.state is not S.HANDSHAKING:
            return
        err = HttpError(
            HTTPStatus.BAD_REQUEST,
            "This port speaks HTTPS only: use an https:// URL.",
            close=True,
        )
        resp = error_response(err, head_only=_names_head(bytearray(first_bytes)))
        self._start_response(resp, now, I.PLAIN_HTTP, body_read=False)

    def drained(self) -> None:
        """While LINGERING: the transport found nothing unread, and the client had asked to close,
        so closing now cannot turn into a reset that destroys the response."""
        self._fire(I.DRAINED)

    def abort(self) -> None:
        """Drop the connection now, whatever it was doing (reset, stall, server stopping)."""
        if self.state is not S.CLOSED:
            self._fire(I.ABORT)

    # Request processing.

    def _advance(self, now: float) -> None:
        """Parse and act on whatever ``inbuf`` allows; the one place errors are caught."""
        self.parked = False
        try:
            if self.state is S.READING_HEADERS:
                self._maybe_start_request(now)
            if self.state is S.READING_BODY:
                self._maybe_read_body(now)
        except HttpError as exc:
            self._fail(exc, now)
        except Exception as exc:
            # A bug, or an OS error nobody anticipated: this client gets a 500, the rest go on.
            self.ctx.observer.bug(self, exc)
            self._fail(
                HttpError(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error", close=True), now
            )

    def _maybe_start_request(self, now: float) -> None:
        inbuf = self.inbuf
        if not inbuf:
            return
        ctx = self.ctx
        req = parse_head(inbuf, ctx.config.limits, self.scan_from)
        if req is None:
            if self.scan_from == 0:
                self.deadline = now + ctx.config.timeouts.head_s
            self.scan_from = len(inbuf)
            return
        del inbuf[: req.head_size]
        self.scan_from = 0
        self.request = req
        if req.raw_target[:1] != b"/" and _scheme_mismatch(req.raw_target, ctx.scheme):
            raise HttpError(
                HTTPStatus.MISDIRECTED_REQUEST,
                f"this connection is {ctx.scheme.decode()}; the target names another scheme",
            )
        gate = ctx.gate
        if gate is not None:  # before the cache: a cached answer is no less protected
            user = gate.admit(self, req, self.peer[0], now)
            if user is PENDING:
                self._fire(I.CHECK_PASSWORD)
                self.deadline = now + ctx.config.timeouts.head_s
                return
            self.user = user  # type: ignore[assignment]
        self._begin(req, now)

    def auth_done(self, outcome: str | HttpError, now: float) -> bool:
        """The password check this connection waited for is over: ``outcome`` is the user, or
        the refusal to send. False if the connection no longer waits (it timed out, closed)."""
        if self.state is not S.AUTHENTICATING or self.request is None:
            return False
        try:
            if isinstance(outcome, HttpError):
                raise outcome
            self.user = outcome
            self._begin(self.request, now)
            # _begin moves the state on; mypy keeps it narrowed to AUTHENTICATING without this.
            if cast(ConnState, self.state) is S.READING_BODY:
                self._maybe_read_body(now)
        except HttpError as exc:
            self._fail(exc, now)
        except Exception as exc:
            self.ctx.observer.bug(self, exc)
            self._fail(
                HttpError(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error", close=True), now
            )
        return True

    def _begin(self, req: Request, now: float) -> None:
        """Answer a parsed (and admitted) request, or start reading its body."""
        ctx = self.ctx
        inbuf = self.inbuf
        cache = ctx.cache
        key = cache.key(req)
        plan: Response | Upload | None = (
            None if key is None else cache.lookup(key, req.method == b"HEAD", now)
        )
        if plan is None:
            plan = ctx.handler.begin(req, ctx.date.second)
            if key is not None and isinstance(plan, Response) and plan.file_fd >= 0:
                cache.store(key, plan, now)
        if isinstance(plan, Response):
            self._start_response(plan, now, I.HEAD_COMPLETE, body_read=False)
            return
        cap = ctx.config.max_uploads
        if cap is not None and ctx.uploads >= cap:
            # Past the descriptor budget for uploads (see descriptors.py): refuse this one
            # rather than let GETs run out of descriptors. Its two were opened and are closed
            # within this step, which the budget's reserve covers.
            plan.abort()
            raise HttpError(
                HTTPStatus.SERVICE_UNAVAILABLE,
                "too many uploads at once, try again",
                close=True,
                headers=((b"Retry-After", b"1"),),
            )
        ctx.uploads += 1  # until _drop_upload
        self.upload = plan
        self.body = ChunkedBody(ctx.config.limits) if req.chunked else FixedBody(req.content_length)
        if req.expect == b"100-continue" and req.has_body and not inbuf:
            self.out = CONTINUE
            self._fire(I.CONTINUE_EXPECTED)
        else:
            self._fire(I.BODY_EXPECTED)
        self._start_phase(now)

    def _maybe_read_body(self, now: float) -> None:
        body, upload, req = self.body, self.upload, self.request
        assert body is not None and upload is not None and req is not None
        while True:
            # Bounded reads: a recv of tiny chunks is thousands of lines to decode. Between
            # reads, the work budget decides whether to go on now or park until the next turn.
            data, done = body.read(self.inbuf, LINES_PER_STEP)
            if data:
                upload.write(data)
                self._progress(len(data), now)
            if done or not body.paused:
                break
            if not self.ctx.may_start():
                self.parked = True
                return
        if done:
            # Keep owning the upload until it is committed: if committing raises anything,
            # _fail still finds it and unlinks the temp file.
            try:
                resp = self.ctx.handler.finish_upload(upload, req)
            except HttpError as exc:
                # Refused at the last moment (a precondition re-checked before the rename):
                # the body was read to its end, so the framing still holds and the connection
                # may stay open for the next request.
                self._fail(exc, now, body_read=True)
                return
            self.body = None
            self._drop_upload()  # committed: it holds nothing any more
            self._start_response(resp, now, I.BODY_COMPLETE, body_read=True)

    def _start_response(self, resp: Response, now: float, inp: Input, *, body_read: bool) -> None:
        ctx = self.ctx
        req = self.request
        keep = (
            req is not None
            and req.keep_alive
            and not resp.close
            and not ctx.stopping
            and (body_read or not req.has_body)
        )
        middle = resp.middle
        if middle is None:
            middle = encode_middle(resp.headers, ctx.config.extra_headers)
        head = assemble_head(resp.status, middle, ctx.date.value, keep)
        ctx.observer.response_head(self, head)
        if req is not None and req.method != b"GET" and req.method != b"HEAD":
            ctx.cache.next_epoch()  # it may have changed a file that a later request reads
        self.keep_alive = keep
        self.status = resp.status
        self.sent = 0
        self.out = head + resp.body if resp.body else head
        self.out_pos = 0
        if resp.file_fd >= 0:
            self.file_fd = resp.file_fd
            self.spans = [span for span in reversed(resp.spans) if span[2] > 0 or span[0]]
            self.trailer = resp.trailer
            self._next_span()
        self._fire(inp)
        self._start_phase(now)

    def _fail(self, exc: HttpError, now: float, *, body_read: bool = False) -> None:
        self._drop_upload()
        self.body = None
        if self.state not in CAN_RESPOND:
            self.abort()
            return
        req = self.request
        head_only = req.method == b"HEAD" if req is not None else _names_head(self.inbuf)
        resp = error_response(exc, head_only=head_only)
        self._start_response(resp, now, I.ERROR, body_read=body_read)

    def _finish_response(self, now: float) -> None:
        if self.file_fd >= 0:
            self._close_file()
        self.ctx.observer.request_done(self)
        req = self.request
        self.request = None
        self.user = None
        self.status = 0
        # Counts of the response just logged, back to the shared small ints: past 256 each is
        # an int object of its own, 32 bytes an idle connection would keep for nothing.
        self.sent = self.phase_bytes = self.phase_acked = 0
        timeouts = self.ctx.config.timeouts
        if self.keep_alive and not self.ctx.stopping:
            self._fire(I.RESPONSE_DONE)
            self.deadline = now + timeouts.idle_s
            if self.inbuf:
                if self.ctx.may_start():
                    self._advance(now)
                else:
                    self.parked = True
        else:
            # If the client itself asked for the close and nothing of it is buffered, it will
            # send nothing more; the reactor may then skip the drain (see drained()).
            self.peer_done = req is not None and not req.keep_alive and not self.inbuf
            self._fire(I.RESPONSE_DONE_CLOSE)
            self.inbuf.clear()
            self.deadline = now + timeouts.linger_s

    # Deadlines: a phase that moves bytes must keep moving them (see config.Timeouts).

    def _start_phase(self, now: float) -> None:
        self.phase_start = now
        self.phase_bytes = 0
        self.phase_acked = 0
        self.deadline = now + self.ctx.config.timeouts.stall_s

    def _progress(self, n: int, now: float) -> None:
        """``n`` more bytes moved: the deadline becomes the earlier of ``stall_s`` from now and
        the average-rate bound, ``phase_start + stall_s + counted / min_rate``.

        What a body's rate counts is what arrived. What a response's rate counts, where the
        kernel can tell, is what the client *acknowledged* (``phase_acked``, as of the
        timer's last look; see :meth:`check_delivery`), not what the kernel took: the kernel takes
        megabytes at once into a send buffer it grows on a fast path, and counting those let a
        client reading at half the minimum rate keep its slot ten times as long as it should
        (and at the defaults, a trickling reader about an hour). So the deadline comes when
        the acknowledged bytes run out; the reactor then asks the kernel, and a client that
        did keep up gets a later deadline.
        """
        t = self.ctx.config.timeouts
        self.phase_bytes += n
        counted = self.phase_bytes
        state = self.state
        if self.ctx.acks_known and (state is S.WRITING_HEADERS or state is S.STREAMING_FILE):
            counted = self.phase_acked
        self.deadline = min(
            now + t.stall_s, self.phase_start + t.stall_s + counted / t.min_rate_bytes_s
        )

    # Transitions and resources.

    def _fire(self, inp: Input) -> None:
        old = self.state
        new = TRANSITIONS.get((old, inp))
        if new is None:
            self.ctx.observer.bug(
                self, RuntimeError(f"no transition from {old.name} on {inp.name}")
            )
            new = S.CLOSED
        self.state = new
        if new is S.CLOSED:
            # A response cut short must not look like a clean end of stream to the client, and
            # its unsent bytes should not linger in the kernel: tell the transport to reset.
            self.cut_short = old in MID_RESPONSE or old is S.READING_BODY
            self._release()
        if self.ctx.trace:
            self.ctx.observer.transition(self, old, inp, new)

    def _next_span(self) -> bool:
        """Queue the next span's prefix and file range (or the trailer). False when done."""
        spans = self.spans
        if spans:
            prefix, self.file_offset, self.file_remaining = spans.pop()
        elif self.trailer:
            prefix, self.trailer = self.trailer, b""
        else:
            return False
        if prefix:
            self.out = self.out + prefix if self.out else prefix
        return True

    def _close_file(self) -> None:
        if self.file_fd >= 0:
            os.close(self.file_fd)
            self.file_fd = -1
        self.file_remaining = 0
        self.spans = ()
        self.trailer = b""

    def _drop_upload(self) -> None:
        """Abort the upload if it is still open (a no-op after a commit) and free its slot."""
        if self.upload is not None:
            self.upload.abort()
            self.upload = None
            self.ctx.uploads -= 1

    def _release(self) -> None:
        # Descriptors and temp files first: if logging below raises, nothing leaks.
        self._close_file()
        self._drop_upload()
        self.body = None
        self.out = b""
        self.inbuf = bytearray()
        self.parked = False
        if self.status:
            # A response was under way: log what the client actually got.
            try:
                self.ctx.observer.request_done(self)
            finally:
                self.status = 0
