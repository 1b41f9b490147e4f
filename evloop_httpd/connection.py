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
* :meth:`Connection.received_into_file` after the transport moved ``n`` bytes of a PUT body
  from the socket straight into the file :meth:`Connection.body_sink` offered (splice), or
  :meth:`Connection.sink_failed` when writing them failed;
* :meth:`Connection.wrote` after the socket took ``n`` bytes of :meth:`Connection.to_send`, or
  after the transport held them back to send with the next response;
* :meth:`Connection.streamed` after ``n`` bytes of the file span went out;
* :meth:`Connection.produce` when all of :meth:`Connection.to_send` went and a produced body
  (:attr:`Connection.produced`) may have more: it pulls the next piece into ``to_send``;
* :meth:`Connection.flushed` after the socket took ``n`` bytes the transport had held back
  (bytes of earlier pipelined responses, already counted as written, see :mod:`transport`);
* :meth:`Connection.check_delivery` with how many sent bytes the client has not acknowledged,
  when the timer of a connection sending a response comes due;
* :meth:`Connection.on_timeout` when :attr:`Connection.deadline` has passed;
* :meth:`Connection.resume` at the start of a turn, when the connection is *parked*;
* over TLS, :meth:`Connection.handshake_done` and :meth:`Connection.refuse_plain`;
* with ``--proxy-protocol``, :meth:`Connection.proxy_bytes` with the bytes waiting at the
  start of the socket (peeked, not taken), until the PROXY header is read;

and two that end it: :meth:`Connection.drained` (LINGERING found nothing left to drain) and
:meth:`Connection.abort` (a socket error, or the server stopping).

A parsed request is answered from the response cache (:mod:`response_cache`) when that can
be done safely, else by the handler; either way the answer is a :class:`Response` plan. A
request whose body the handler accepts (a PUT; a POST of a form to a folder) gets an upload
instead, an
:class:`~evloop_httpd.upload.Upload` or a :class:`~evloop_httpd.form_upload.FormUpload`, and
the body is decoded into it as it arrives; its response is made once the body is complete.

A plan with a *producer* (a folder's ZIP) is first PREPARING: its ``maybe_check`` (a walk of
the tree, bounded per call) runs while the turn's work budget lasts, then the connection parks
until the next turn, so the verdict (a 403 for a tree over a limit) comes before any byte.
After the head, its body is pulled ``PRODUCE_BYTES`` at a time, only when the transport found
the socket took all of the previous piece: the kernel's full buffer is the backpressure, and
memory per download stays one piece whatever the tree. The connection frames each piece as a
chunk (HTTP/1.1) and sends the last chunk when the producer is finished. A producer that fails
after the head (a read error, a tree grown past a limit) aborts: no last chunk, and a reset,
so no client takes a cut archive for a whole one. Producers running at once are capped
(``Config.max_zips``, counted in ``Context.zips``): beyond it, a 503 with Retry-After.

``HttpError`` is handled in one place, ``_caught``, for the two entries that act on a request
(``_advance``, and ``auth_done`` when a password verdict comes). If nothing of a response has
been sent, it becomes an error response; otherwise the connection aborts. Any other exception is
a bug: a 500 under the same rule, and the traceback goes to the log. After an error response the
connection goes to LINGERING, where it only drains what the client still sends (so that closing
does not turn into a reset that destroys the response) and never parses again.

One request is in flight at a time. Pipelined requests wait in ``inbuf``; when a response ends,
the next one is parsed at once, without going back to the selector, as long as the reactor's
work budget for this turn lasts (``ctx.may_start``, which counts time, not sends: one request
can cost a thousand times another). Past it, the connection is *parked*: it starts nothing (nor
decodes more of a body of tiny chunks, nor acts on more parts of a form), it waits to write
rather than to read, and the transport's next turn calls :meth:`resume`. The transport does
not read while a response is being written or while parked, so ``inbuf`` never holds more
than the head limit plus one ``recv``: memory per connection is bounded whatever is sent or
received.

Addresses: ``origin`` is where the connection comes from, the socket's peer or, behind a
balancer speaking the PROXY protocol, the client its header names. ``peer`` is the client of
the current request, which the logs, the Gate's per-address limits and the status page use:
``origin``, unless ``origin`` is a trusted proxy (``--trusted-proxy``) and the request's
``Forwarded`` / ``X-Forwarded-For`` name another client (:mod:`forwarded`). That is decided per
request, since one balancer's connection may carry requests of many clients; a head that does
not parse is logged against ``origin``. Without ``--trusted-proxy`` it costs one ``is None``
per request.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from http import HTTPStatus
from typing import TYPE_CHECKING, Protocol, cast

from .auth import PENDING, Gate
from .body import LINES_PER_STEP, ChunkedBody, FixedBody
from .config import Config
from .errors import HttpError, bad_request
from .faults import Faults
from .files import os_error_to_http
from .form_upload import FormUpload
from .forwarded import Network, client_address
from .handler import Handler
from .parser import Request, parse_head
from .proxyproto import parse_proxy_header
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

if TYPE_CHECKING:
    from .log import Tracer
    from .transport import SplicePipe

S = ConnState
I = Input  # noqa: E741 - short aliases keep the state-changing lines readable
# Clients found behind trusted proxies, by (origin, Forwarded, X-Forwarded-For): parsing the
# addresses costs ~10 us a request, a lookup well under one. Bounded: only short fields are
# kept (a few hops), and the table is emptied when full, so it holds at most ~2 MiB.
CLIENTS_CACHED = 4096
CLIENT_KEY_BYTES = 512
_BODYLESS = (b"GET ", b"HEAD ")
# A produced body's piece per pull: its one buffer per download (plus the chunk framing). Each
# pull copies it once more to frame it; 256 KiB keeps that copy and the pread in the cache and
# is a few hundred microseconds of a turn's work budget.
PRODUCE_BYTES = 256 * 1024
_LAST_CHUNK = b"0\r\n\r\n"  # RFC 9112 §7.1: last-chunk, no trailer, the final CRLF


def more_follows(conn: Connection) -> bool:
    """Whether another response will be made right after this one without waiting for input.

    True only when the next pipelined request is already whole in ``inbuf`` and is a GET or
    HEAD (no body to wait for), and no file span follows this response.
    """
    inbuf = conn.inbuf
    return (
        not conn.file_remaining
        and conn.produced is None
        and inbuf.startswith(_BODYLESS)
        and b"\r\n\r\n" in inbuf
    )


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
        "body_copied",
        "body_spliced",
        "cache",
        "clients",
        "config",
        "date",
        "faults",
        "gate",
        "handler",
        "may_start",
        "observer",
        "pipe",
        "scheme",
        "stopping",
        "trace",
        "trusted",
        "tracer",
        "uploads",
        "zips",
    )

    def __init__(self, config: Config, observer: Observer, scheme: bytes = b"http") -> None:
        self.config = config
        # Whether the transport can tell what a client acknowledged (Linux SIOCOUTQ). If so, a
        # response's average rate is judged on that, not on what the kernel took: see _progress.
        self.acks_known = False
        self.uploads = 0  # PUTs and POSTs holding a temp file and a folder descriptor (Config)
        self.zips = 0  # produced responses (folder ZIPs) under way (see Config.max_zips)
        # Bytes of request bodies written into files: read and written (the read path), or
        # spliced by the transport from the socket straight into the file (/status.json).
        self.body_copied = 0
        self.body_spliced = 0
        # The transport's splice pipe, one per loop (see transport.SplicePipe); None until used.
        self.pipe: SplicePipe | None = None
        self.handler = Handler(config)
        self.cache = ResponseCache(config.extra_headers)
        self.observer = observer
        self.date = DateCache()
        self.stopping = False
        # Whether transitions are reported to the observer (--trace, or --status watching).
        self.trace = config.trace
        # Set by the reactor when --trace / teaching faults are on (see watch.py); the
        # watched transports read them, the plain ones never do.
        self.tracer: Tracer | None = None
        self.faults: Faults | None = None
        self.scheme = scheme  # every connection of a server has the same: one port, one scheme
        # --trusted-proxy networks; None (not an empty tuple) keeps the per-request check cheap.
        self.trusted = config.trusted_proxies or None
        self.clients: dict[tuple[str, bytes | None, bytes | None], str] = {}
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
        "client",
        "origin_host",
        "origin_port",
        "out",
        "out_pos",
        "parked",
        "phase_bytes",
        "phase_acked",
        "phase_start",
        "produced",
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
        proxy: bool = False,
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
        # A response whose body is produced (its plan holds the producer): kept while it is
        # PREPARING and while its body goes, None once the producer is closed.
        self.produced: Response | None = None
        self.request: Request | None = None
        self.body: FixedBody | ChunkedBody | None = None
        self.upload: Upload | FormUpload | None = None
        self.user: str | None = None  # the account the current request acts as
        self.auth_ticket = 0  # the password check this connection waits for (0: none)
        self.keep_alive = False
        self.status = 0
        self.sent = 0  # bytes of the current response on the wire
        # Over the connection's life: bytes of responses the kernel took (or the transport held
        # back), and of those, the ones the client had acknowledged when the timer last looked.
        self.handed = 0
        self.delivered = 0
        self.phase_start = now
        self.phase_bytes = 0
        self.phase_acked = 0  # bytes the client acknowledged in this phase (see check_delivery)
        self.deadline = now + ctx.config.timeouts.head_s
        # The connection's address as two fields, not the accept() tuple: the host string is
        # shared between connections from one address (see reactor), and a tuple would cost 64
        # bytes of each idle connection's 1 KiB. ``origin`` and ``peer`` rebuild it.
        self.origin_host: str = peer[0]
        self.origin_port: int = peer[1]
        # This request's client when it is not ``origin`` (behind a trusted proxy), else None.
        self.client: tuple[str, int] | None = None
        self.local = local
        self.ident = ident
        self.cut_short = False  # closed mid-response: the transport closes with RST, not FIN
        self.peer_done = False  # the client asked to close and sent nothing more
        self.parked = False  # whole requests wait in inbuf for the next turn (work budget)
        if proxy:
            # The PROXY header comes before anything else, TLS included. Its deadline runs from
            # the accept, however the header trickles.
            self.state = S.PROXY_HEADER
        elif handshake:
            self.state = S.HANDSHAKING
            self.deadline = now + ctx.config.timeouts.handshake_s

    @property
    def origin(self) -> tuple[str, int]:
        """Where the connection comes from: the socket's peer, or the PROXY header's client."""
        return self.origin_host, self.origin_port

    @origin.setter
    def origin(self, address: tuple[str, int]) -> None:
        self.origin_host, self.origin_port = address[0], address[1]

    @property
    def peer(self) -> tuple[str, int]:
        """The current request's client (see "Addresses" above)."""
        client = self.client
        return (self.origin_host, self.origin_port) if client is None else client

    @peer.setter
    def peer(self, address: tuple[str, int]) -> None:
        same = address[0] == self.origin_host and address[1] == self.origin_port
        self.client = None if same else (address[0], address[1])

    @property
    def interest(self) -> int:
        # Parked: wait to write. A socket almost always is writable, so the loop comes back at
        # once; reading more would grow inbuf past its bound, and an end of stream read now
        # would cut off requests already whole.
        return WRITE if self.parked else INTEREST[self.state]

    # What the transport asks.

    @property
    def handshaken(self) -> bool:
        """Past HANDSHAKING (and PROXY_HEADER): HTTP may flow."""
        state = self.state
        return state is not S.HANDSHAKING and state is not S.CLOSED and state is not S.PROXY_HEADER

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

    def body_sink(self) -> tuple[int, int] | None:
        """``(file fd, bytes still due)`` while the body being read may go straight from the
        socket into its file (splice): a Content-Length PUT whose buffered bytes are all
        written, so the next ones off the socket are the body's and nothing needs decoding.
        None otherwise (chunked, a form, bytes waiting in ``inbuf``, parked): read as usual."""
        if self.state is not S.READING_BODY or self.inbuf or self.parked:
            return None
        body, upload = self.body, self.upload
        if type(body) is not FixedBody or type(upload) is not Upload or not body.remaining:
            return None
        return upload.fd, body.remaining

    def response_follows(self) -> bool:
        """Whether, once all of :meth:`to_send` is taken, the next response will be made at
        once without waiting for input; the transport may then hold this one back and send
        the batch in one call. Only for a whole, untouched in-memory response on a kept-alive
        connection (see :func:`more_follows`)."""
        if self.out_pos or not self.keep_alive or self.file_remaining or self.produced is not None:
            return False
        inbuf = self.inbuf  # as more_follows(self), inline: this is asked once per response
        return inbuf.startswith(_BODYLESS) and b"\r\n\r\n" in inbuf

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

    def received_into_file(self, n: int, now: float) -> None:
        """The transport moved ``n`` bytes of the body from the socket into the file of
        :meth:`body_sink` itself: counted as if read and written here (progress, the upload's
        size and ``--fsync``), and the upload is committed when they were the last."""
        body, upload = self.body, self.upload
        if self.state is not S.READING_BODY or type(body) is not FixedBody or upload is None:
            return
        body.remaining -= n
        self.ctx.body_spliced += n
        try:
            cast(Upload, upload).wrote(n)
            self._progress(n, now)
            if not body.remaining:
                self._body_done(now)
        except Exception as exc:
            self._caught(exc, now)

    def sink_failed(self, exc: OSError, now: float) -> None:
        """Writing into the file of :meth:`body_sink` failed (a full disk, say): answered as
        the same error of a written body is, and the temp file is gone."""
        upload = self.upload
        if self.state is not S.READING_BODY or type(upload) is not Upload:
            return
        self._caught(upload.failed(exc), now)

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
        elif self.file_remaining > 0 or self.produced is not None:
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

        In STREAMING_FILE the transport sends :attr:`out` first when it is not empty (a multipart
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

    def produce(self) -> bool:
        """Pull the next piece of a produced body into :meth:`to_send`, framed: True if it
        did, False when there is nothing to pull now (no produced body, bytes still to send,
        the work budget spent: the transport waits to write, and the next turn goes on).

        The producer may return nothing while it skips entries; the pull goes on while the
        budget lasts. Once it is finished, the last chunk follows its last bytes and the
        producer is closed; the response then ends like any other when they are sent. If it
        fails, the connection aborts (see the module docstring)."""
        plan = self.produced
        if plan is None or self.state is not S.STREAMING_FILE or self.out:
            return False
        producer = plan.producer
        assert producer is not None
        may_start = self.ctx.may_start
        try:
            while True:
                if not may_start():
                    return False
                data = producer.next_chunk(PRODUCE_BYTES)
                if data or producer.finished:
                    break
        except (HttpError, OSError) as exc:
            self.ctx.observer.debug(f"#{self.ident} produced body failed: {exc}")
            self.abort()
            return False
        if plan.chunked and data:
            data = b"".join((b"%x\r\n" % len(data), data, b"\r\n"))
        if producer.finished:
            if plan.chunked:
                data += _LAST_CHUNK
            self._drop_producer()
        self.out = data
        self.out_pos = 0
        return True

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
        the transport held back).

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
            self._advance(now)  # PREPARING included: its next steps

    def on_timeout(self, now: float) -> None:
        """The timer fired; act only if our deadline really has passed."""
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

    def proxy_bytes(self, available: bytes, now: float) -> int:
        """PROXY_HEADER: ``available`` are the bytes waiting at the start of the socket's input,
        peeked, not taken (``b""``: the peer closed). Returns how many of them the transport
        must take: those of the header and never one past it, so what follows (a ClientHello,
        the first request) stays in the kernel for whoever reads next.

        A malformed header closes the connection without a response: the peer is a balancer,
        which would not read one, and the spec says to drop the connection. Bytes of an
        unfinished header wait in ``inbuf``, which the parser bounds (107 bytes for v1, 16 plus
        the announced length, at most ``MAX_V2_BYTES``, for v2)."""
        if self.state is not S.PROXY_HEADER:
            return 0
        if not available:
            self._fire(I.PEER_EOF)
            return 0
        inbuf = self.inbuf
        have = len(inbuf)
        try:
            header = parse_proxy_header(inbuf + available if have else available)
        except HttpError as exc:
            self.ctx.observer.debug(f"#{self.ident} {exc.detail}")
            self._fire(I.PROXY_REFUSED)
            return 0
        if header is None:
            # The header goes on past these bytes, so all of them are the header's.
            inbuf += available
            return len(available)
        self.inbuf = bytearray()
        source = header.source
        # LOCAL (the balancer's own health check), UNKNOWN, UNSPEC and AF_UNIX name no IP
        # client: the socket's address stands.
        if source is not None and isinstance(source[0], str) and source[1] is not None:
            self.origin = (source[0], source[1])
            self.client = None  # the peer is the origin
        ctx = self.ctx
        if ctx.trace:
            ctx.observer.debug(
                f"#{self.ident} PROXY v{header.version} {header.command} {header.family}:"
                f" client {self.origin[0]}:{self.origin[1]}"
            )
        if ctx.scheme == b"https":
            self._fire(I.PROXY_DONE_TLS)
            self.deadline = now + ctx.config.timeouts.handshake_s
        else:
            self._fire(I.PROXY_DONE)
            self.deadline = now + ctx.config.timeouts.head_s
        return header.consumed - have

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
            elif self.state is S.PREPARING:
                self._maybe_prepare(now)
            if self.state is S.READING_BODY:
                self._maybe_read_body(now)
        except Exception as exc:
            self._caught(exc, now)

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
        trusted = ctx.trusted
        if trusted is not None:
            self._find_client(req, trusted)
        if req.raw_target[0] != 47 and _scheme_mismatch(req.raw_target, ctx.scheme):  # not "/"
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

    def _find_client(self, req: Request, trusted: tuple[Network, ...]) -> None:
        """This request's client: ``origin``, or if that is a trusted proxy, the address its
        ``Forwarded`` or ``X-Forwarded-For`` lines (joined in order, RFC 9110 §5.3) name. The
        client's port is not known then: 0."""
        origin = self.origin
        forwarded = req.get(b"forwarded")
        xff = req.get(b"x-forwarded-for")
        if forwarded is None and xff is None:
            self.peer = origin
            return
        key = (origin[0], forwarded, xff)
        clients = self.ctx.clients
        client = clients.get(key)
        if client is None:
            client = client_address(origin[0], trusted, forwarded, xff)
            if len(forwarded or b"") + len(xff or b"") <= CLIENT_KEY_BYTES:
                if len(clients) >= CLIENTS_CACHED:
                    clients.clear()
                clients[key] = client
        self.peer = origin if client == origin[0] else (client, 0)

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
        except Exception as exc:
            self._caught(exc, now)
        return True

    def _caught(self, exc: Exception, now: float) -> None:
        """What ``_advance`` and ``auth_done`` do with an exception: an ``HttpError`` is the
        answer; anything else is a bug, or an OS error nobody anticipated: this client gets a
        500 and the traceback goes to the log, the rest go on."""
        if isinstance(exc, HttpError):
            self._fail(exc, now)
            return
        self.ctx.observer.bug(self, exc)
        self._fail(HttpError(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error", close=True), now)

    def _begin(self, req: Request, now: float) -> None:
        """Answer a parsed (and admitted) request, or start reading its body."""
        ctx = self.ctx
        inbuf = self.inbuf
        cache = ctx.cache
        key = cache.key(req)
        plan: Response | Upload | FormUpload | None = (
            None
            if key is None
            else cache.lookup(key, req.method == b"HEAD", now, cache.if_none_match)
        )
        if plan is None:
            try:
                if key is not None and cache.if_none_match is not None:
                    plan = cache.revalidate(key, req, ctx.handler.begin, ctx.date.second, now)
                if plan is None:
                    plan = ctx.handler.begin(req, ctx.date.second)
            except HttpError as exc:
                if key is not None and exc.status == 404:
                    cache.store_missing(key, exc, ctx.handler.root_real, now)
                raise
            if key is not None and isinstance(plan, Response) and plan.file_fd >= 0:
                cache.store(key, plan, now)
        if isinstance(plan, Response):
            if plan.producer is not None:
                self._prepare(plan, now)
                return
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
        if isinstance(plan, FormUpload):
            plan.may_continue = ctx.may_start  # parts started per turn: see form_upload.py
        self.upload = plan
        self.body = ChunkedBody(ctx.config.limits) if req.chunked else FixedBody(req.content_length)
        if req.expect == b"100-continue" and req.has_body and not inbuf:
            self.out = CONTINUE
            self._fire(I.CONTINUE_EXPECTED)
        else:
            self._fire(I.BODY_EXPECTED)
        self._start_phase(now)

    def _prepare(self, plan: Response, now: float) -> None:
        """Take a plan with a produced body: within the cap, PREPARING; else a 503."""
        ctx = self.ctx
        producer = plan.producer
        assert producer is not None
        if ctx.zips >= ctx.config.max_zips:
            # The descriptor budget counts max_zips walks (descriptors.py); this one's few
            # descriptors were opened and are closed within this step, which its reserve covers.
            producer.close()
            raise HttpError(
                HTTPStatus.SERVICE_UNAVAILABLE,
                "too many folder downloads at once, try again",
                headers=((b"Retry-After", b"5"),),
            )
        ctx.zips += 1  # until _drop_producer
        self.produced = plan
        self._fire(I.PREPARE)
        self._start_phase(now)
        self._maybe_prepare(now)

    def _maybe_prepare(self, now: float) -> None:
        """Steps of the producer's check while the work budget lasts; the head once it passes."""
        plan, req = self.produced, self.request
        assert plan is not None and plan.producer is not None and req is not None
        producer = plan.producer
        try:
            while not producer.maybe_check():
                self.deadline = now + self.ctx.config.timeouts.stall_s  # it moves: not stalled
                if not self.ctx.may_start():
                    self.parked = True
                    return
        except OSError as exc:
            raise os_error_to_http(exc) from None
        if req.method == b"HEAD":
            self._drop_producer()  # HEAD: the verdict and the head a GET would get, no body
        self._start_response(plan, now, I.HEAD_COMPLETE, body_read=False)

    def _maybe_read_body(self, now: float) -> None:
        body, upload, req = self.body, self.upload, self.request
        assert body is not None and upload is not None and req is not None
        form = upload if isinstance(upload, FormUpload) else None
        done = False
        while True:
            # Bounded reads: a recv of tiny chunks is thousands of lines to decode, and one of
            # tiny form parts hundreds of files to create. Between steps, the work budget
            # decides whether to go on now or park until the next turn. A form's backlog is
            # worked off before more of the body is decoded, so it never outgrows one recv.
            worked = form is not None and form.backlog
            if worked:
                form.work()  # type: ignore[union-attr]
            else:
                data, done = body.read(self.inbuf, LINES_PER_STEP)
                if data:
                    upload.write(data)
                    self.ctx.body_copied += len(data)
                    self._progress(len(data), now)
            backlog = form is not None and form.backlog
            if not worked and not backlog and (done or not body.paused):
                break
            if not self.ctx.may_start():
                self.parked = True
                return
        if done:
            self._body_done(now)

    def _body_done(self, now: float) -> None:
        """The whole body is in the upload: commit it and start the response."""
        upload, req = self.upload, self.request
        assert upload is not None and req is not None
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
        self._drop_producer()
        self._drop_upload()
        self.body = None
        if self.state not in CAN_RESPOND:
            self.abort()
            return
        req = self.request
        if req is None:
            self.peer = self.origin  # no head, no Forwarded: the connection's address
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
            # send nothing more; the transport may then skip the drain (see drained()).
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
        the acknowledged bytes run out; the transport then asks the kernel, and a client that
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

    def _drop_producer(self) -> None:
        """Close the produced body's producer, if any, and free its slot."""
        plan = self.produced
        if plan is not None:
            self.produced = None
            self.ctx.zips -= 1
            if plan.producer is not None:
                plan.producer.close()

    def _release(self) -> None:
        # Descriptors and temp files first: if logging below raises, nothing leaks.
        self._drop_producer()
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
