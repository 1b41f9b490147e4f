"""The connection state machine as data: states, inputs, transitions, and what each waits for.

Theory of operation
-------------------
A connection is always in exactly one :class:`ConnState` and moves only when an :class:`Input`
happens to it. ``TRANSITIONS`` maps each allowed (state, input) pair to the next state; a pair
missing from it is a bug, and :mod:`connection` then closes the connection. ``INTEREST`` says
what the connection waits for in each state, so the transport and the reactor read it off the
state and never reason about HTTP. Nothing here does anything: this module is the table the
code runs and the one :mod:`diagram` draws (docs/state-machine.md), so the picture cannot drift
from it.

A connection over TLS starts in HANDSHAKING; a plain one in READING_HEADERS. With
``--proxy-protocol`` either starts in PROXY_HEADER instead, and leaves it for the state it would
have started in once the load balancer's PROXY header is read (``PROXY_DONE`` /
``PROXY_DONE_TLS``); a malformed header (``PROXY_REFUSED``), an end of stream or the head
deadline closes it, with no response: the peer is a balancer, not a browser.

PREPARING is a response whose headers depend on work too large for one step: a folder's ZIP
(``?download=zip``) is refused with a 403 *before the first byte* when its tree is over a limit,
and finding out walks the whole tree (:meth:`zipstream.ZipStream.maybe_check`, 128 entries a
step). The connection takes steps while the turn's work budget lasts, then waits to write (the
loop comes back at once, after the others), so a tree of 65,535 entries costs everyone else
no more than a pipelined request does. Nothing has been sent, so an error still becomes an
error response. It is a state rather than a flag because it changes which inputs may come
next: no body, no new request, only the verdict (HEAD_COMPLETE or ERROR).

STREAMING_FILE covers every body that follows the head: a file span (``sendfile``), or a
*produced* body (the ZIP), pulled from ``Connection.producer`` when the socket can take more
and framed as chunks by the connection (see :mod:`transport`).

Interest, honestly
------------------
``INTEREST`` is what the *connection* waits for, and it follows from the state alone, except
while the connection is parked (then it waits to write). What the
selector is told is that, except while the transport under the connection has a need of its
own, which the state cannot know: held-back pipelined bytes still to flush (write, whatever
the state), or a TLS record that must finish in the other direction (``SSLWantReadError``
while sending, ``SSLWantWriteError`` while receiving or handshaking). The transport's
``settle`` computes the mask; see :mod:`transport` and :mod:`tls`.

Flags
-----
A few facts change what a connection does without being states, because they do not change
which inputs are allowed next (h11 keeps the same kind beside its table in ``_state.py``):

* ``Connection.parked``: the turn's work budget ran out with whole requests waiting in
  ``inbuf``, or with a response still PREPARING; the connection waits to write (the loop comes
  back at once) rather than read, and the next turn starts one of them, or takes the next
  preparation step (see :mod:`reactor`).
* ``Connection.producer``: the body after the head is produced (a ZIP), not a file span; the
  transport asks :meth:`Connection.produce` for more when the socket takes all it was given.
* ``Connection.keep_alive``: the response being sent ends with RESPONSE_DONE (back to
  READING_HEADERS) rather than RESPONSE_DONE_CLOSE (to LINGERING). Decided per response from
  the request, the response and whether the server is stopping.
* ``Connection.peer_done``: on entering LINGERING, the client had itself asked to close and
  nothing more of it was buffered; the transport may then close at once if nothing is unread,
  instead of draining (``DRAINED``).
* ``Connection.cut_short``: set on entering CLOSED from the middle of a response or a request
  body; the transport then closes with a reset, not a FIN, so that a client cannot take a
  short body for a whole one.
* ``Context.stopping``: the server is stopping; no response keeps its connection.
* ``Transport.pending`` (held-back bytes) and ``Transport.shut_wr`` (FIN sent while
  LINGERING): the transport's own; they change the selector mask and how the socket is
  closed, never the connection's state.
"""

from __future__ import annotations

from enum import Enum

READ = 1  # selectors.EVENT_READ
WRITE = 2  # selectors.EVENT_WRITE


class ConnState(Enum):
    # Members are singletons, so identity hashing is exact, and it runs in C: Enum's own
    # __hash__ is Python code, and the transition table is consulted several times a request.
    __hash__ = object.__hash__

    PROXY_HEADER = "reading the PROXY protocol header"
    HANDSHAKING = "TLS handshake"
    READING_HEADERS = "reading headers"
    AUTHENTICATING = "awaiting a password check"
    WRITING_CONTINUE = "writing 100 Continue"
    READING_BODY = "reading body"
    PREPARING = "preparing a produced response"
    WRITING_HEADERS = "writing headers"
    STREAMING_FILE = "streaming file"
    LINGERING = "lingering"
    CLOSED = "closed"


class Input(Enum):
    __hash__ = object.__hash__

    PROXY_DONE = "PROXY header read, HTTP follows"
    PROXY_DONE_TLS = "PROXY header read, TLS follows"
    PROXY_REFUSED = "malformed PROXY header"
    HANDSHAKE_DONE = "TLS handshake complete"
    PLAIN_HTTP = "plain HTTP on the TLS port, 400 ready"
    HEAD_COMPLETE = "head complete, response ready"
    CHECK_PASSWORD = "head complete, password to check"
    CONTINUE_EXPECTED = "head complete, client awaits 100 Continue"
    BODY_EXPECTED = "head complete, body follows"
    CONTINUE_SENT = "100 Continue sent"
    BODY_COMPLETE = "body complete, response ready"
    ERROR = "error response ready"
    PREPARE = "head complete, response to prepare in steps"
    FILE_FOLLOWS = "headers sent, file follows"
    RESPONSE_DONE = "response sent, keep alive"
    RESPONSE_DONE_CLOSE = "response sent, close"
    PEER_EOF = "peer closed"
    TIMEOUT = "deadline passed"
    DRAINED = "nothing left to drain"
    ABORT = "abort"


S = ConnState
I = Input  # noqa: E741 - the table below reads better with one-letter aliases

TRANSITIONS: dict[tuple[ConnState, Input], ConnState] = {
    (S.PROXY_HEADER, I.PROXY_DONE): S.READING_HEADERS,
    (S.PROXY_HEADER, I.PROXY_DONE_TLS): S.HANDSHAKING,
    (S.PROXY_HEADER, I.PROXY_REFUSED): S.CLOSED,
    (S.PROXY_HEADER, I.PEER_EOF): S.CLOSED,
    (S.PROXY_HEADER, I.TIMEOUT): S.CLOSED,
    (S.PROXY_HEADER, I.ABORT): S.CLOSED,
    (S.HANDSHAKING, I.HANDSHAKE_DONE): S.READING_HEADERS,
    (S.HANDSHAKING, I.PLAIN_HTTP): S.WRITING_HEADERS,
    (S.HANDSHAKING, I.PEER_EOF): S.CLOSED,
    (S.HANDSHAKING, I.TIMEOUT): S.CLOSED,
    (S.HANDSHAKING, I.ABORT): S.CLOSED,
    (S.READING_HEADERS, I.HEAD_COMPLETE): S.WRITING_HEADERS,
    (S.READING_HEADERS, I.CONTINUE_EXPECTED): S.WRITING_CONTINUE,
    (S.READING_HEADERS, I.BODY_EXPECTED): S.READING_BODY,
    (S.READING_HEADERS, I.ERROR): S.WRITING_HEADERS,
    (S.READING_HEADERS, I.PEER_EOF): S.CLOSED,
    (S.READING_HEADERS, I.TIMEOUT): S.CLOSED,
    (S.READING_HEADERS, I.ABORT): S.CLOSED,
    (S.READING_HEADERS, I.CHECK_PASSWORD): S.AUTHENTICATING,
    (S.READING_HEADERS, I.PREPARE): S.PREPARING,
    (S.AUTHENTICATING, I.HEAD_COMPLETE): S.WRITING_HEADERS,
    (S.AUTHENTICATING, I.CONTINUE_EXPECTED): S.WRITING_CONTINUE,
    (S.AUTHENTICATING, I.BODY_EXPECTED): S.READING_BODY,
    (S.AUTHENTICATING, I.ERROR): S.WRITING_HEADERS,
    (S.AUTHENTICATING, I.PREPARE): S.PREPARING,
    (S.AUTHENTICATING, I.TIMEOUT): S.CLOSED,
    (S.AUTHENTICATING, I.ABORT): S.CLOSED,
    (S.WRITING_CONTINUE, I.CONTINUE_SENT): S.READING_BODY,
    (S.WRITING_CONTINUE, I.TIMEOUT): S.CLOSED,
    (S.WRITING_CONTINUE, I.ABORT): S.CLOSED,
    (S.READING_BODY, I.BODY_COMPLETE): S.WRITING_HEADERS,
    (S.READING_BODY, I.ERROR): S.WRITING_HEADERS,
    (S.READING_BODY, I.ABORT): S.CLOSED,
    (S.PREPARING, I.HEAD_COMPLETE): S.WRITING_HEADERS,
    (S.PREPARING, I.ERROR): S.WRITING_HEADERS,
    (S.PREPARING, I.TIMEOUT): S.CLOSED,
    (S.PREPARING, I.ABORT): S.CLOSED,
    (S.WRITING_HEADERS, I.FILE_FOLLOWS): S.STREAMING_FILE,
    (S.WRITING_HEADERS, I.RESPONSE_DONE): S.READING_HEADERS,
    (S.WRITING_HEADERS, I.RESPONSE_DONE_CLOSE): S.LINGERING,
    (S.WRITING_HEADERS, I.TIMEOUT): S.CLOSED,
    (S.WRITING_HEADERS, I.ABORT): S.CLOSED,
    (S.STREAMING_FILE, I.RESPONSE_DONE): S.READING_HEADERS,
    (S.STREAMING_FILE, I.RESPONSE_DONE_CLOSE): S.LINGERING,
    (S.STREAMING_FILE, I.TIMEOUT): S.CLOSED,
    (S.STREAMING_FILE, I.ABORT): S.CLOSED,
    (S.LINGERING, I.PEER_EOF): S.CLOSED,
    (S.LINGERING, I.DRAINED): S.CLOSED,
    (S.LINGERING, I.TIMEOUT): S.CLOSED,
    (S.LINGERING, I.ABORT): S.CLOSED,
}

INTEREST: dict[ConnState, int] = {
    S.PROXY_HEADER: READ,
    S.HANDSHAKING: READ,  # the ClientHello; the TLS transport asks for write when OpenSSL does
    S.READING_HEADERS: READ,
    # Nothing: the verdict comes on the verifier's socket, and bytes the client sends meanwhile
    # (a body, a pipelined request) wait in the kernel, which bounds them.
    S.AUTHENTICATING: 0,
    S.WRITING_CONTINUE: WRITE,
    S.READING_BODY: READ,
    # Write, as when parked: the socket is almost always writable, so the loop comes back at
    # once for the next step, after everyone else ready now; nothing is read meanwhile.
    S.PREPARING: WRITE,
    S.WRITING_HEADERS: WRITE,
    S.STREAMING_FILE: WRITE,
    S.LINGERING: READ,
    S.CLOSED: 0,
}

# States in which nothing of the current response has gone out, so an error can still be sent.
CAN_RESPOND = frozenset({S.READING_HEADERS, S.AUTHENTICATING, S.READING_BODY, S.PREPARING})
MID_RESPONSE = frozenset({S.WRITING_CONTINUE, S.WRITING_HEADERS, S.STREAMING_FILE})
