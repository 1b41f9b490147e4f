"""Accounts and HTTP Basic authentication (RFC 7617), without ever hashing on the loop.

Theory of operation
-------------------
:class:`Gate` decides, for each parsed request head, before anything else looks at it (the
response cache included): go on (anonymous, or as a named user), refuse now (401, 403, 429,
503, raised as :class:`HttpError`), or *wait*. Waiting is the one new thing: a password check
is a deliberately slow KDF, so it runs in the verifier process (:mod:`hasher`), the connection
moves to ``AUTHENTICATING`` (waiting for nothing on its socket), and when the verdict arrives on
the verifier's socket, which the reactor watches like any other, :meth:`Gate.on_readable` hands
it to the connection, which carries on from where it stopped. The loop never blocks.

What a password guesser can cost, and who pays:

* A credential that was verified is remembered (``VERIFIED_MAX`` entries, least recently used
  out first) under an HMAC of the whole ``Authorization`` value with a key made at start-up:
  the password itself is never stored, and a repeat of a good credential costs one HMAC.
* Failures are counted per client (IPv4 address, IPv6 /64): ``MAX_FAILURES`` within
  ``FAILURE_WINDOW_S`` lock the client out for ``LOCKOUT_S``: 429 with ``Retry-After``, decided
  before the remembered credentials are consulted (else a locked-out guesser could keep testing
  guesses against them for free). A client may have ``MAX_PENDING_PER_CLIENT`` checks queued.
  The table is bounded (``CLIENTS_MAX``, oldest out first).
* All clients together get ``CHECKS_PER_S`` checks a second (a token bucket) and at most
  ``MAX_QUEUED`` waiting; beyond that, 503 with ``Retry-After``. So a flood from many addresses
  costs the verifier a bounded amount of work, and the loop only cheap refusals.
* An unknown user is checked against a dummy hash made at start-up with the parameters of the
  file's first account, so it costs what a wrong password costs. Comparisons are constant-time.

Which requests need an account: with ``--auth-scope write`` (the default) every method but the
safe ones (GET, HEAD, OPTIONS), so any method that may change files, today's and tomorrow's;
with ``all`` every request. Without an account file, a server bound to a non-loopback address
refuses those same methods with 403 unless ``--allow-anonymous-writes`` (``config.public``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import math
import re
import secrets
import socket
import subprocess
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Protocol

from .config import Config
from .errors import HttpError
from .hasher import (
    ANSWER,
    MAX_PASSWORD_BYTES,
    HashError,
    PasswordHash,
    dummy_like,
    encode_request,
    parse_hash,
    spawn_verifier,
)
from .parser import Request

SAFE_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS"})  # RFC 9110 §9.2.1, less TRACE
VERIFIED_MAX = 1024  # remembered good credentials (32-byte digests)
CLIENTS_MAX = 10_000  # clients with recent failures tracked
MAX_FAILURES = 5  # wrong passwords in FAILURE_WINDOW_S before a lockout
FAILURE_WINDOW_S = 60.0
LOCKOUT_S = 60.0
MAX_PENDING_PER_CLIENT = 2  # checks one client may have queued at once
CHECKS_PER_S = 10.0  # all clients together; one scrypt check is ~70 ms of the verifier's CPU
MAX_QUEUED = 16  # checks queued for the verifier at once (~1 s of its work)
MAX_AUTHORIZATION_BYTES = 4 * MAX_PASSWORD_BYTES // 3 + 512  # longer: a wrong password, unhashed
_TOKEN68 = re.compile(rb"[A-Za-z0-9\-._~+/]+=*")
PENDING = object()  # Gate.admit's answer: the verdict will come through on_readable


class AccountFileError(Exception):
    """A start-up error in ``--auth-file``: the message names the file and the line."""


class Waiter(Protocol):
    """The connection side of a pending check."""

    auth_ticket: int

    def auth_done(self, outcome: str | HttpError, now: float) -> bool:
        """Carry on with ``outcome`` (the user, or the refusal); False if no longer waiting."""
        ...


def load_accounts(path: Path) -> dict[str, PasswordHash]:
    """Read an htpasswd-style file: ``name:hash`` per line; blank lines and ``#`` comments are
    skipped, as Apache does. Raise :class:`AccountFileError` naming the first bad line."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise AccountFileError(f"{path}: cannot read ({exc.strerror})") from None
    accounts: dict[str, PasswordHash] = {}
    for number, raw in enumerate(data.split(b"\n"), 1):
        raw = raw.removesuffix(b"\r")
        if not raw.strip() or raw.startswith(b"#"):
            continue
        where = f"{path}, line {number}"
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise AccountFileError(f"{where}: not UTF-8") from None
        name, colon, text = line.partition(":")
        if not colon or not name or not text:
            raise AccountFileError(f"{where}: expected 'name:hash'")
        if not name.isprintable() or name != name.strip():
            raise AccountFileError(f"{where}: the user name has control characters or spaces")
        if name in accounts:
            raise AccountFileError(f"{where}: user {name!r} appears twice")
        try:
            accounts[name] = parse_hash(text.strip())
        except HashError as exc:
            raise AccountFileError(f"{where}: {exc}") from None
    if not accounts:
        raise AccountFileError(f"{path}: no accounts")
    return accounts


def parse_basic(value: bytes) -> tuple[bytes, bytes] | None:
    """The (user-id, password) of ``Basic <token68>`` (RFC 7617 §2), or None if the value is
    not Basic credentials. The user-id ends at the first colon; the password may hold more."""
    scheme, _, rest = value.partition(b" ")
    if scheme.lower() != b"basic":
        return None
    token = rest.strip(b" ")
    if not _TOKEN68.fullmatch(token):
        return None
    try:
        decoded = base64.b64decode(token, validate=True)
    except (binascii.Error, ValueError):
        return None
    user, colon, password = decoded.partition(b":")
    if not colon:
        return None
    return user, password


def client_key(host: str) -> str:
    """Whom failures are counted against: the IPv4 address, or the IPv6 /64 (one subscriber
    usually gets a whole /64, so counting single IPv6 addresses would count nothing)."""
    try:
        ip = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def is_loopback(host: str) -> bool:
    """Whether every address ``host`` names is a loopback one (``--bind`` checks)."""
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError:
        return False
    try:
        return bool(infos) and all(
            ipaddress.ip_address(str(info[4][0]).partition("%")[0]).is_loopback for info in infos
        )
    except ValueError:
        return False


@dataclass(slots=True)
class _Strikes:
    count: int
    first_at: float
    locked_until: float = 0.0


def _retry_after(seconds: float) -> tuple[tuple[bytes, bytes], ...]:
    return ((b"Retry-After", b"%d" % max(1, math.ceil(seconds))),)


class Gate:
    """The per-server authentication policy, its memory, and the verifier it feeds."""

    def __init__(
        self,
        config: Config,
        spawn: Callable[[], tuple[subprocess.Popen[bytes], socket.socket]] | None = None,
    ) -> None:
        self.scope_all = config.auth_scope == "all"
        self.refuse_anonymous_writes = config.auth_file is None and (
            config.public and not config.allow_anonymous_writes
        )
        self.accounts: dict[str, PasswordHash] = {}
        self.sock: socket.socket | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        realm = config.auth_realm.replace("\\", "\\\\").replace('"', '\\"')
        self._challenge = (
            (b"WWW-Authenticate", b'Basic realm="%s", charset="UTF-8"' % realm.encode("utf-8")),
        )
        self._key = secrets.token_bytes(32)
        self._verified: OrderedDict[bytes, str] = OrderedDict()
        self._strikes: OrderedDict[str, _Strikes] = OrderedDict()
        self._pending: dict[int, tuple[Waiter, bytes, str | None, str]] = {}
        self._per_client: dict[str, int] = {}
        self._tokens = CHECKS_PER_S
        self._tokens_at = 0.0
        self._next_ticket = 1
        self._answers = bytearray()
        self.checks = 0  # sent to the verifier, for tests and the stress report
        self.broken = False
        if config.auth_file is not None:
            self.accounts = load_accounts(config.auth_file)
            self._dummy = dummy_like(next(iter(self.accounts.values())))
            self._proc, self.sock = (spawn or spawn_verifier)()

    @property
    def active(self) -> bool:
        return bool(self.accounts) or self.refuse_anonymous_writes

    def admit(
        self, conn: Waiter, req: Request, peer: str, now: float, *, every_method: bool = False
    ) -> str | object | None:
        """The user the request acts as (None: anonymous, allowed), or ``PENDING`` (the verdict
        comes later through ``conn.auth_done``); refusals are raised as :class:`HttpError`.
        ``every_method``: an account is needed whatever the scope (the status listener)."""
        if not self.accounts:
            if self.refuse_anonymous_writes and req.method not in SAFE_METHODS:
                raise HttpError(
                    HTTPStatus.FORBIDDEN,
                    "writes are off: this server listens beyond loopback without --auth-file"
                    " (start it with --auth-file, or --allow-anonymous-writes)",
                )
            return None
        if not (self.scope_all or every_method) and req.method in SAFE_METHODS:
            return None
        value = req.get(b"authorization")
        if value is None:
            raise self._unauthorized("this needs an account")
        client = client_key(peer)
        strikes = self._strikes.get(client)
        if strikes is not None and strikes.locked_until > now:
            raise HttpError(
                HTTPStatus.TOO_MANY_REQUESTS,
                "too many wrong passwords from this address; try again later",
                headers=_retry_after(strikes.locked_until - now),
            )
        digest = hmac.digest(self._key, value, hashlib.sha256)
        user = self._verified.get(digest)
        if user is not None:
            self._verified.move_to_end(digest)
            return user
        creds = parse_basic(value)
        if creds is None:
            raise self._unauthorized("only Basic credentials are accepted")
        raw_user, password = creds
        try:
            name = raw_user.decode("utf-8")
        except UnicodeDecodeError:
            name = ""
        known = self.accounts.get(name)
        if len(value) > MAX_AUTHORIZATION_BYTES or len(password) > MAX_PASSWORD_BYTES:
            self._strike(client, now)
            raise self._unauthorized("wrong user name or password")
        if self._per_client.get(client, 0) >= MAX_PENDING_PER_CLIENT:
            raise HttpError(
                HTTPStatus.TOO_MANY_REQUESTS,
                "a password check from this address is already under way",
                headers=_retry_after(1),
            )
        if self.broken or self.sock is None:
            raise HttpError(HTTPStatus.SERVICE_UNAVAILABLE, "password checks are unavailable")
        self._tokens = min(CHECKS_PER_S, self._tokens + (now - self._tokens_at) * CHECKS_PER_S)
        self._tokens_at = now
        if self._tokens < 1 or len(self._pending) >= MAX_QUEUED:
            raise HttpError(
                HTTPStatus.SERVICE_UNAVAILABLE,
                "too many password checks right now; try again shortly",
                headers=_retry_after((1 - self._tokens) / CHECKS_PER_S),
            )
        target = known if known is not None else self._dummy
        ticket = self._next_ticket
        self._next_ticket = ticket % 0xFFFF_FFFF + 1
        try:
            # Frames are at most ~4.4 KiB and at most MAX_QUEUED are outstanding, well within
            # a socket buffer: a partial send means the verifier is stuck, not busy.
            frame = encode_request(ticket, target.text, password)
            if self.sock.send(frame) != len(frame):
                raise BlockingIOError
        except OSError:
            self._break()
            raise HttpError(
                HTTPStatus.SERVICE_UNAVAILABLE, "password checks are unavailable"
            ) from None
        self._tokens -= 1
        self.checks += 1
        self._pending[ticket] = (conn, digest, name if known is not None else None, client)
        self._per_client[client] = self._per_client.get(client, 0) + 1
        conn.auth_ticket = ticket
        return PENDING

    def on_readable(self, now: float) -> list[Waiter]:
        """Take the verifier's answers; resume each connection still waiting for one."""
        assert self.sock is not None
        try:
            while chunk := self.sock.recv(4096):
                self._answers += chunk
            self._break()  # end of stream: the verifier died
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            self._break()
        resumed: list[Waiter] = []
        answers = self._answers
        usable = len(answers) - len(answers) % ANSWER.size
        for offset in range(0, usable, ANSWER.size):
            ticket, ok = ANSWER.unpack_from(answers, offset)
            entry = self._pending.pop(ticket, None)
            if entry is None:
                continue
            conn, digest, user, client = entry
            self._release(client)
            if ok and user is not None:
                self._remember(digest, user)
                self._strikes.pop(client, None)
                outcome: str | HttpError = user
            else:
                self._strike(client, now)
                outcome = self._unauthorized("wrong user name or password")
            if conn.auth_ticket == ticket:
                conn.auth_ticket = 0
                if conn.auth_done(outcome, now):
                    resumed.append(conn)
        del answers[:usable]
        if self.broken:
            resumed += self._fail_pending(now)
        return resumed

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if self._proc is not None:
            # Closing our end is the verifier's signal to exit; it is niced and may be mid-hash.
            try:
                self._proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None

    # Internals

    def _unauthorized(self, detail: str) -> HttpError:
        return HttpError(HTTPStatus.UNAUTHORIZED, detail, headers=self._challenge)

    def _remember(self, digest: bytes, user: str) -> None:
        self._verified[digest] = user
        self._verified.move_to_end(digest)
        while len(self._verified) > VERIFIED_MAX:
            self._verified.popitem(last=False)

    def _strike(self, client: str, now: float) -> None:
        s = self._strikes.get(client)
        if s is None or now - s.first_at > FAILURE_WINDOW_S:
            s = _Strikes(0, now)
        s.count += 1
        if s.count >= MAX_FAILURES:
            s.locked_until = now + LOCKOUT_S
            s.count, s.first_at = 0, now + LOCKOUT_S
        self._strikes[client] = s
        self._strikes.move_to_end(client)
        while len(self._strikes) > CLIENTS_MAX:
            self._strikes.popitem(last=False)

    def _release(self, client: str) -> None:
        left = self._per_client.get(client, 0) - 1
        if left > 0:
            self._per_client[client] = left
        else:
            self._per_client.pop(client, None)

    def _break(self) -> None:
        self.broken = True

    def _fail_pending(self, now: float) -> list[Waiter]:
        resumed = []
        for ticket, (conn, _, _, client) in list(self._pending.items()):
            del self._pending[ticket]
            self._release(client)
            unavailable = HttpError(
                HTTPStatus.SERVICE_UNAVAILABLE, "password checks are unavailable"
            )
            if conn.auth_ticket == ticket:
                conn.auth_ticket = 0
                if conn.auth_done(unavailable, now):
                    resumed.append(conn)
        return resumed
