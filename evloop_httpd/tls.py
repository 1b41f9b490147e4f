"""HTTPS: the TLS policy, and TLS as a second transport under the same connection.

Theory of operation
-------------------
With ``--tls-cert`` the port serves HTTPS only. Each accepted socket gets a
:class:`TlsTransport`; the :class:`Connection` above it is the same as over plain TCP, except
that it starts in HANDSHAKING (see docs/state-machine.md), so ``--trace`` shows the handshake
and the handshake has a deadline of its own (``--handshake-timeout``) that trickling bytes do
not extend: a client that never finishes is closed, and since every call here is
non-blocking, it never holds up anyone else.

**SSLSocket, not SSLObject.** The transport wraps the non-blocking socket in an
``ssl.SSLSocket``: OpenSSL reads and writes the descriptor itself. asyncio (``sslproto.py``)
uses an ``SSLObject`` between two memory BIOs instead, because its transports own the
socket's reads and writes for every protocol; here the transport owns the socket anyway, and
the BIO pair would add a copy of every byte through Python in each direction and a second
buffer to bound. What the BIOs buy, control of the raw bytes, is needed only before the
handshake (to tell plain HTTP from a ClientHello), and a ``MSG_PEEK`` before wrapping does
that. The cost of this choice: ``SSLWantReadError``/``SSLWantWriteError`` can come from any
call, and are turned into selector interest (``want``): a send that needs the peer's bytes
waits for read, a read that needs to write waits for write, whatever the connection's state
says, and the next readiness of either kind retries both.

**No sendfile.** ``os.sendfile`` moves page-cache pages to the socket without user space, and
TLS has to encrypt every byte in user space first, so file bodies over TLS are ``pread`` into a
bounded buffer (``TLS_FILE_CHUNK``) and handed to ``SSL_write``; the buffer is kept until
OpenSSL has taken it, since a write that failed with ``SSLWantWriteError`` must be retried with
the same bytes. (Kernel TLS, ``SSL_OP_ENABLE_KTLS`` with OpenSSL 3 on Linux, would hand the
record layer to the kernel after the handshake and make ``SSL_sendfile`` possible again; the
``ssl`` module exposes neither, so it is not used.)

**Plain HTTP on the TLS port.** Before wrapping, the first byte is peeked: a TLS handshake
record starts with 0x16. An ASCII letter means a plain HTTP request: it is answered, in plain
text, with a 400 saying to use https (as nginx does), and the connection closes by the plain
path (FIN, drain). Anything else is dropped.

**The end.** A response that closes the connection is followed by close_notify (then FIN and
the drain, as over plain TCP); so is an orderly close at a graceful stop. A response cut short
closes with a reset and no close_notify, so the client sees the truncation.

**Policy** (what a scanner grades): TLS 1.2 and 1.3 only; TLS 1.2 suites ECDHE with AES-GCM or
ChaCha20-Poly1305 only (forward secret, AEAD; every TLS 1.3 suite is both); no compression; no
renegotiation; ALPN offers ``http/1.1`` only (a client offering only ``h2`` gets no ALPN and
speaks HTTP/1.1 or gives up: either way a clean end); session resumption on (TLS 1.3 tickets,
TLS 1.2 tickets and the server's session cache). SIGHUP builds a new context from the same
files: new connections get it, open ones keep theirs, a broken pair is logged and the old kept.
"""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
from typing import TYPE_CHECKING, ClassVar, cast

from .states import READ, WRITE, ConnState
from .transport import CLOSE, RECV_BYTES, Transport

if TYPE_CHECKING:
    from .config import Config
    from .connection import Connection

# File bytes read ahead of SSL_write, per sending connection: 8 records of 16 KiB. 64 KiB was
# 5-7% slower on 10 MiB files, 256 KiB no faster (see performance.md).
TLS_FILE_CHUNK = 128 * 1024
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"  # forward secret (ECDHE) and AEAD, nothing else
_HANDSHAKE_RECORD = 0x16
_PEEK_BYTES = 8
_RAW_RECV = socket.socket.recv  # the plain socket's recv, which peeks under an SSLSocket
S = ConnState


class TlsSetupError(Exception):
    """The certificate, key or password cannot be used; the message says why, for a human."""


def _readable(path: os.PathLike[str] | str, what: str) -> None:
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as exc:
        raise TlsSetupError(f"cannot read the {what} {str(path)!r}: {exc.strerror}") from None


def _password(config: Config) -> bytes | None:
    path = config.tls_password_file
    if path is None:
        return None
    _readable(path, "password file")
    text = path.read_bytes()
    lines = text.splitlines()
    return lines[0] if lines else b""


def _explain(exc: ssl.SSLError, config: Config, encrypted: bool) -> str:
    text = f"{exc.reason or ''} {exc}".upper()
    if "KEY_VALUES_MISMATCH" in text:
        return "the private key does not match the certificate"
    if "BAD_DECRYPT" in text or "BAD DECRYPT" in text or (encrypted and "PEM LIB" in text):
        # OpenSSL 3 often says only "PEM lib" when the password does not decrypt the key.
        return "wrong password for the private key (--tls-password-file), or a damaged key"
    if "PEM" in text or "NO_START_LINE" in text or "ASN1" in text or "DECODER" in text:
        if config.tls_key is None:
            return (
                f"{str(config.tls_cert)!r} must hold a PEM certificate and its private key "
                "(or give the key with --tls-key)"
            )
        return "the certificate or the key is not valid PEM"
    return f"cannot use the certificate and key: {exc}"


def _is_encrypted(config: Config) -> bool:
    """Whether the private key's PEM says it is encrypted (PKCS#8 or the legacy header)."""
    path = config.tls_key or config.tls_cert
    assert path is not None
    try:
        text = path.read_bytes()
    except OSError:
        return False
    return b"ENCRYPTED PRIVATE KEY" in text or b"Proc-Type: 4,ENCRYPTED" in text


def make_context(config: Config) -> ssl.SSLContext:
    """The server's TLS context from the configured files; :class:`TlsSetupError` if unusable."""
    cert = config.tls_cert
    assert cert is not None
    _readable(cert, "certificate file")
    if config.tls_key is not None:
        _readable(config.tls_key, "key file")
    password = _password(config)

    def no_password() -> bytes:
        raise TlsSetupError(
            "the private key is encrypted: give its password with --tls-password-file"
        )

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= (
        ssl.OP_NO_COMPRESSION
        | ssl.OP_NO_RENEGOTIATION
        | ssl.OP_CIPHER_SERVER_PREFERENCE
        | ssl.OP_SINGLE_ECDH_USE
    )
    ctx.options &= ~ssl.OP_NO_TICKET  # resumption on (the default; said here on purpose)
    ctx.set_alpn_protocols(["http/1.1"])
    try:
        ctx.load_cert_chain(cert, config.tls_key, password if password is not None else no_password)
    except TlsSetupError:
        raise
    except ssl.SSLError as exc:
        raise TlsSetupError(_explain(exc, config, _is_encrypted(config))) from None
    except OSError as exc:
        raise TlsSetupError(f"cannot load the certificate and key: {exc.strerror or exc}") from None
    return ctx


class TlsTransport(Transport):
    """TLS over one accepted socket. See the module docstring."""

    __slots__ = ("context", "filebuf", "want", "wrapped")

    can_sendfile: ClassVar[bool] = False
    can_splice: ClassVar[bool] = False  # the socket carries records, not the body
    may_buffer: ClassVar[bool] = True
    send_direct: ClassVar[bool] = False

    def __init__(self, sock: socket.socket, conn: Connection, context: ssl.SSLContext) -> None:
        super().__init__(sock, conn, use_sendfile=False)
        self.context: ssl.SSLContext | None = context  # until the socket is wrapped
        self.wrapped = False
        self.want = 0  # the direction a TLS call that could not finish is waiting for
        self.filebuf: bytes | memoryview = b""  # read from the file, not yet taken by OpenSSL

    def buffered(self) -> bool:
        # Decrypted bytes OpenSSL holds beyond what recv returned: select cannot see them.
        return self.wrapped and self.sock.pending() > 0  # type: ignore[union-attr]

    def ready(self, mask: int, now: float) -> None:
        # Either readiness may unblock what waited (a read that had to write, a write that had
        # to read), so both are retried: the pump after this, the read here.
        self.want = 0
        conn = self.conn
        if conn.state is S.PROXY_HEADER:
            # Before the ClientHello: read on the raw socket, never a byte past the header.
            self.read_proxy_header(now)
            if cast(ConnState, conn.state) is not S.HANDSHAKING:  # mypy narrowed it
                return
        if conn.state is S.HANDSHAKING:
            self._handshake(now)
            if not conn.handshaken or self.want:
                return
            # The first request often arrives with the client's last handshake flight.
        if conn.interest & READ:
            self.read(now)

    def _handshake(self, now: float) -> None:
        conn = self.conn
        if not self.wrapped:
            sock = self.sock
            assert sock is not None and self.context is not None
            try:
                first = sock.recv(_PEEK_BYTES, socket.MSG_PEEK)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                conn.ctx.observer.debug(f"#{conn.ident} recv: {exc}")
                conn.abort()
                return
            if not first:
                conn.receive(b"", now)
                return
            if first[0] != _HANDSHAKE_RECORD:
                self.context = None
                if 0x41 <= first[0] <= 0x5A or first[:1] in (b"\r", b"\n"):
                    conn.refuse_plain(first, now)  # the plain path sends it and drains
                else:
                    conn.ctx.observer.debug(f"#{conn.ident} neither TLS nor HTTP: {first!r}")
                    conn.abort()
                return
            try:
                self.sock = self.context.wrap_socket(
                    sock, server_side=True, do_handshake_on_connect=False
                )
            except (ssl.SSLError, OSError) as exc:
                conn.ctx.observer.debug(f"#{conn.ident} wrap: {exc}")
                conn.abort()
                return
            self.context = None
            self.wrapped = True
        try:
            self.sock.do_handshake()  # type: ignore[union-attr]
        except ssl.SSLWantReadError:
            self.want = READ
            return
        except ssl.SSLWantWriteError:
            self.want = WRITE
            return
        except (ssl.SSLError, OSError, ValueError) as exc:
            conn.ctx.observer.debug(f"#{conn.ident} handshake: {exc}")
            conn.abort()
            return
        conn.handshake_done(now)

    def read(self, now: float) -> None:
        if not self.wrapped:
            super().read(now)
            return
        # One recv returns at most one record (16 KiB of plaintext): read on while the
        # connection wants input, up to what one plain recv may bring (the same bound on what
        # a turn can add to inbuf), so an upload is not one loop pass per record.
        conn = self.conn
        sock = self.sock
        assert sock is not None
        budget = RECV_BYTES
        while True:
            try:
                data = sock.recv(budget)
            except ssl.SSLWantReadError:
                return
            except ssl.SSLWantWriteError:
                self.want = WRITE
                return
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # ssl.SSLError included: a bad record, a reset
                conn.ctx.observer.debug(f"#{conn.ident} recv: {exc}")
                conn.abort()
                return
            conn.receive(data, now)
            budget -= len(data)
            if not data or budget <= 0 or not conn.interest & READ:
                return

    def settle(self) -> int:
        conn = self.conn
        if conn.state is S.CLOSED:
            return CLOSE
        if not self.wrapped:
            return self.want or super().settle()
        if conn.state is S.LINGERING and not self.shut_wr and not self.pending:
            sent = self._close_notify()
            if sent is None:
                conn.abort()
                return CLOSE
            if sent and conn.peer_done and self._nothing_unread():
                # As over plain TCP: the client asked to close and has sent nothing more, so
                # closing now cannot reset a response it has not read; its own close_notify,
                # sent after it read ours, meets a closed socket. Saves a loop pass per
                # connection, which is what a new connection per request costs.
                self.shut_wr = True  # close_notify is out: close() need not send it again
                conn.drained()
                return CLOSE
            if sent:
                self.shut_wr = True
                try:
                    self.sock.shutdown(socket.SHUT_WR)  # type: ignore[union-attr]
                except OSError:
                    conn.abort()
                    return CLOSE
            else:
                self.want = WRITE
        if self.want:
            return self.want
        return WRITE if self.pending else conn.interest

    # backlog() is the plain one: SIOCOUTQ counts encrypted bytes, a little more than the
    # plaintext the connection counts, so what it credits as acknowledged errs low.

    def close(self) -> None:
        self.filebuf = b""
        super().close()

    # System calls

    def _send(self, data: bytes | memoryview | bytearray) -> int:
        if not self.wrapped:
            return super()._send(data)
        try:
            return self.sock.send(data)  # type: ignore[union-attr]
        except ssl.SSLWantWriteError:
            self.want = WRITE
            raise BlockingIOError from None
        except ssl.SSLWantReadError:
            self.want = READ
            raise BlockingIOError from None

    def _send_pair(self, first: bytes | bytearray, second: bytes | memoryview) -> int:
        if not self.wrapped:
            return super()._send_pair(first, second)
        # No sendmsg over TLS: one buffer, so the batch still goes out as one record. A retry
        # after SSLWantWriteError builds the same bytes again, which OpenSSL accepts.
        return self._send(bytes(first) + bytes(second))

    def _send_file(self, fd: int, offset: int, remaining: int) -> int:
        buf = self.filebuf
        if not buf:
            buf = os.pread(fd, min(remaining, TLS_FILE_CHUNK), offset)
            if not buf:
                return 0  # the file is shorter than promised: the connection aborts
            self.filebuf = buf
        n = self._send(buf)  # on SSLWantWriteError, filebuf stays for the retry
        self.filebuf = memoryview(buf)[n:] if n < len(buf) else b""
        return n

    def _close_notify(self) -> bool | None:
        """Send close_notify: True when it went out, False when the socket is full (retry when
        writable), None when TLS broke."""
        try:
            self.sock.unwrap()  # type: ignore[union-attr]
        except ssl.SSLWantReadError:
            return True  # ours went out; the peer's need not come
        except ssl.SSLWantWriteError:
            return False
        except (ssl.SSLError, OSError, ValueError) as exc:
            self.conn.ctx.observer.debug(f"#{self.conn.ident} close_notify: {exc}")
            return None
        return True

    def _goodbye(self, sock: socket.socket) -> None:
        # An orderly close (a graceful stop, an idle timeout): close_notify if TLS is up and
        # it was not sent yet; best effort, the socket closes next whatever happens.
        if self.wrapped and not self.shut_wr:
            with contextlib.suppress(OSError, ValueError):
                sock.unwrap()  # type: ignore[attr-defined]

    def input_waits(self) -> bool:
        try:
            return bool(_RAW_RECV(self.sock, 1, socket.MSG_PEEK))  # type: ignore[arg-type]
        except OSError:
            return False

    def _nothing_unread(self) -> bool:
        # Peek at the raw bytes under TLS (SSLSocket.recv refuses flags): anything there, a
        # record or the client's close_notify, would turn the close into a reset.
        try:
            return not _RAW_RECV(self.sock, 1, socket.MSG_PEEK)  # type: ignore[arg-type]
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            return True  # reset: there is nothing left to protect
