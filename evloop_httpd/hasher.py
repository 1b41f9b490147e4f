"""Password hashes: the formats, making and checking them, and the checker process.

Theory of operation
-------------------
A password hash is deliberately slow (tens of milliseconds), and this server runs every client
on one loop, so a hash is never computed in the serving process. The server starts one
*verifier* process (:func:`spawn_verifier`) that owns nothing but one end of a socketpair: it
reads a request, computes one hash, writes one answer, and repeats. The loop registers its end
of the pair in its selector like any socket, so a connection waiting for a verdict costs the
loop nothing, and the verifier runs at a lower CPU priority (``nice``) than the loop, so even
on one core the loop wins. :mod:`auth` decides how many checks may be queued.

Wire format on the pair (both directions length-bounded, so neither side can be made to buffer
without limit):

* request: ``>I`` payload length, then ``>IH`` ticket and hash length, the hash string (ASCII)
  and the password bytes;
* answer: ``>IB`` ticket and verdict (1 = match).

Hash strings carry their parameters, so stronger settings later never break old lines:

* ``$scrypt$ln=15,r=8,p=1$<salt>$<key>`` (salt and key in unpadded standard base64), the default;
* ``$pbkdf2-sha256$i=600000$<salt>$<key>``;
* ``$2y$``/``$2b$``/``$2a$`` bcrypt, as Apache's ``htpasswd -B`` writes it, only when the optional
  ``bcrypt`` package is installed (``pip install evloop_httpd[bcrypt]``).

Parameters are bounded when a line is parsed (:func:`parse_hash`), so an account file cannot
make one check take minutes or gigabytes. Every comparison is :func:`hmac.compare_digest`.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import getpass
import hashlib
import hmac
import os
import re
import secrets
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

SCRYPT_LN, SCRYPT_R, SCRYPT_P = 15, 8, 1  # 32 MiB, ~70 ms here; OWASP's minimum is ln=17 r=8
PBKDF2_ITERATIONS = 600_000  # OWASP 2023 for PBKDF2-HMAC-SHA256
SALT_BYTES = 16
KEY_BYTES = 32
MAX_SCRYPT_MEMORY = 1024 * 1024 * 1024  # 1 GiB: a bound on what one account line may ask for
MAX_PBKDF2_ITERATIONS = 100_000_000
MAX_BCRYPT_COST = 16  # 2^16 rounds: several seconds already
MAX_PASSWORD_BYTES = 4096  # what the verifier takes; a longer Authorization never gets here
MAX_FRAME_BYTES = 8 + 256 + MAX_PASSWORD_BYTES
ANSWER = struct.Struct(">IB")
REQUEST_HEAD = struct.Struct(">IH")
LENGTH = struct.Struct(">I")

_B64 = r"([A-Za-z0-9+/]+)"
_SCRYPT = re.compile(r"\$scrypt\$ln=(\d{1,2}),r=(\d{1,3}),p=(\d{1,2})\$" + _B64 + r"\$" + _B64)
_PBKDF2 = re.compile(r"\$pbkdf2-sha256\$i=(\d{1,9})\$" + _B64 + r"\$" + _B64)
_BCRYPT = re.compile(r"\$2[aby]\$(\d\d)\$[./A-Za-z0-9]{53}")


class HashError(ValueError):
    """A hash string this server cannot use; the message says why."""


@dataclass(frozen=True, slots=True)
class PasswordHash:
    """A parsed hash: ``scheme`` is ``scrypt``, ``pbkdf2-sha256`` or ``bcrypt``."""

    text: str
    scheme: str
    params: tuple[int, ...]
    salt: bytes
    key: bytes

    def cost_class(self) -> tuple[str, tuple[int, ...]]:
        """What the check's duration depends on (the dummy for unknown users matches it)."""
        return self.scheme, self.params


def _b64decode(text: str) -> bytes:
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except binascii.Error as exc:
        raise HashError(f"bad base64 ({exc})") from None


def _b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def bcrypt_available() -> bool:
    try:
        import bcrypt  # noqa: F401
    except ImportError:
        return False
    return True


def parse_hash(text: str) -> PasswordHash:
    """Check a hash string's format and bounds; raise :class:`HashError` with the reason."""
    if m := _SCRYPT.fullmatch(text):
        ln, r, p = int(m[1]), int(m[2]), int(m[3])
        if not (1 <= ln <= 30 and 1 <= r <= 64 and 1 <= p <= 16):
            raise HashError("scrypt parameters out of range")
        if 128 * r * (2**ln) > MAX_SCRYPT_MEMORY or p * r > 64:
            raise HashError("scrypt parameters would need more than 1 GiB or too much time")
        salt, key = _b64decode(m[4]), _b64decode(m[5])
        if not (8 <= len(salt) <= 64 and 16 <= len(key) <= 64):
            raise HashError("scrypt salt or key of a wrong length")
        return PasswordHash(text, "scrypt", (ln, r, p), salt, key)
    if m := _PBKDF2.fullmatch(text):
        iterations = int(m[1])
        if not 1_000 <= iterations <= MAX_PBKDF2_ITERATIONS:
            raise HashError("pbkdf2 iteration count out of range (1000 to 100000000)")
        salt, key = _b64decode(m[2]), _b64decode(m[3])
        if not (8 <= len(salt) <= 64 and 16 <= len(key) <= 64):
            raise HashError("pbkdf2 salt or key of a wrong length")
        return PasswordHash(text, "pbkdf2-sha256", (iterations,), salt, key)
    if text.startswith(("$2y$", "$2b$", "$2a$")):
        m = _BCRYPT.fullmatch(text)
        if not m:
            raise HashError("malformed bcrypt hash")
        cost = int(m[1])
        if not 4 <= cost <= MAX_BCRYPT_COST:
            raise HashError(f"bcrypt cost {cost} out of range (4 to {MAX_BCRYPT_COST})")
        if not bcrypt_available():
            raise HashError(
                "a bcrypt hash needs the optional bcrypt package:"
                " pip install 'evloop_httpd[bcrypt]'"
                " (or make the hash again with: python -m evloop_httpd hash-password)"
            )
        return PasswordHash(text, "bcrypt", (cost,), b"", b"")
    if text.startswith("$apr1$") or text.startswith("{SHA}") or text.startswith("$1$"):
        raise HashError("MD5/SHA-1 htpasswd hashes are too weak; use htpasswd -B or hash-password")
    raise HashError("not a hash this server knows (scrypt, pbkdf2-sha256, bcrypt $2y$/$2b$)")


def make_hash(password: bytes, scheme: str = "scrypt") -> str:
    """A new hash string for ``password`` with a random salt and the default parameters."""
    salt = secrets.token_bytes(SALT_BYTES)
    if scheme == "scrypt":
        key = _scrypt(password, salt, SCRYPT_LN, SCRYPT_R, SCRYPT_P, KEY_BYTES)
        params = f"ln={SCRYPT_LN},r={SCRYPT_R},p={SCRYPT_P}"
        return f"$scrypt${params}${_b64encode(salt)}${_b64encode(key)}"
    if scheme == "pbkdf2-sha256":
        key = hashlib.pbkdf2_hmac("sha256", password, salt, PBKDF2_ITERATIONS, KEY_BYTES)
        return f"$pbkdf2-sha256$i={PBKDF2_ITERATIONS}${_b64encode(salt)}${_b64encode(key)}"
    raise ValueError(f"unknown scheme {scheme!r}")


def dummy_like(h: PasswordHash) -> PasswordHash:
    """A hash nobody knows the password of, costing what checking ``h`` costs: unknown users
    are checked against it, so their answer takes as long as a wrong password's."""
    secret = secrets.token_bytes(32)
    salt = secrets.token_bytes(len(h.salt) or SALT_BYTES)
    if h.scheme == "scrypt":
        ln, r, p = h.params
        key = _scrypt(secret, salt, ln, r, p, len(h.key))
        return parse_hash(f"$scrypt$ln={ln},r={r},p={p}${_b64encode(salt)}${_b64encode(key)}")
    if h.scheme == "pbkdf2-sha256":
        key = hashlib.pbkdf2_hmac("sha256", secret, salt, h.params[0], len(h.key))
        return parse_hash(f"$pbkdf2-sha256$i={h.params[0]}${_b64encode(salt)}${_b64encode(key)}")
    import bcrypt

    return parse_hash(bcrypt.hashpw(secret, bcrypt.gensalt(rounds=h.params[0])).decode("ascii"))


def _scrypt(password: bytes, salt: bytes, ln: int, r: int, p: int, dklen: int) -> bytes:
    memory = 128 * r * (2**ln) * 2 + 1024 * 1024
    return hashlib.scrypt(password, salt=salt, n=2**ln, r=r, p=p, maxmem=memory, dklen=dklen)


def verify(h: PasswordHash, password: bytes) -> bool:
    """Whether ``password`` matches; slow by design. Never call it on the serving loop."""
    if h.scheme == "scrypt":
        ln, r, p = h.params
        return hmac.compare_digest(_scrypt(password, h.salt, ln, r, p, len(h.key)), h.key)
    if h.scheme == "pbkdf2-sha256":
        key = hashlib.pbkdf2_hmac("sha256", password, h.salt, h.params[0], len(h.key))
        return hmac.compare_digest(key, h.key)
    import bcrypt

    # bcrypt uses only the first 72 bytes; longer passwords are refused by bcrypt >= 5 with
    # ValueError, which must not become a 500: such a password simply does not match.
    try:
        return bool(bcrypt.checkpw(password, h.text.encode("ascii")))
    except ValueError:
        return False


# The verifier process.


def encode_request(ticket: int, hash_text: str, password: bytes) -> bytes:
    raw = hash_text.encode("ascii")
    payload = REQUEST_HEAD.pack(ticket, len(raw)) + raw + password
    return LENGTH.pack(len(payload)) + payload


def spawn_verifier() -> tuple[subprocess.Popen[bytes], socket.socket]:
    """Start the checker process; returns it and the server's (non-blocking) end of the pair."""
    ours, theirs = socket.socketpair()
    try:
        env = dict(os.environ)
        # The child imports this very package, wherever it was imported from.
        package_parent = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_parent, env.get("PYTHONPATH")]))
        proc = subprocess.Popen(
            [sys.executable, "-m", "evloop_httpd.hasher", "--serve-fd", str(theirs.fileno())],
            pass_fds=[theirs.fileno()],
            stdin=subprocess.DEVNULL,
            env=env,
        )
    finally:
        theirs.close()
    ours.setblocking(False)
    return proc, ours


def _read_exactly(sock: socket.socket, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def serve_verifier(sock: socket.socket) -> None:
    """The checker's loop: one request, one hash, one answer, until the server closes."""
    parsed: dict[str, PasswordHash] = {}
    while True:
        head = _read_exactly(sock, LENGTH.size)
        if head is None:
            return
        (length,) = LENGTH.unpack(head)
        if not REQUEST_HEAD.size <= length <= MAX_FRAME_BYTES:
            return  # the server never sends this: stop rather than guess
        payload = _read_exactly(sock, length)
        if payload is None:
            return
        ticket, hash_len = REQUEST_HEAD.unpack_from(payload)
        hash_text = payload[REQUEST_HEAD.size : REQUEST_HEAD.size + hash_len].decode("ascii")
        password = payload[REQUEST_HEAD.size + hash_len :]
        try:
            h = parsed.get(hash_text) or parse_hash(hash_text)
            if len(parsed) < 10_000:
                parsed[hash_text] = h
            ok = verify(h, password)
        except (HashError, ValueError):
            ok = False
        sock.sendall(ANSWER.pack(ticket, 1 if ok else 0))


# python -m evloop_httpd hash-password


def read_password(stdin_is_tty: bool) -> bytes:
    """From a prompt (asked twice) on a terminal, else one line of stdin; never from argv."""
    if stdin_is_tty:
        first = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != first:
            raise SystemExit("evloop_httpd: the passwords differ")
        return first.encode("utf-8")
    line = sys.stdin.buffer.readline()
    return line[:-1] if line.endswith(b"\n") else line


def hash_password_main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(
        prog="python -m evloop_httpd hash-password",
        description="Print a password hash (or a 'name:hash' line) for --auth-file. The password "
        "is read from a prompt, or from the first line of stdin when it is not a terminal.",
    )
    p.add_argument("--user", help="print 'USER:hash', a whole line for the account file")
    p.add_argument("--scheme", choices=("scrypt", "pbkdf2-sha256"), default="scrypt")
    args = p.parse_args(argv)
    if args.user is not None and (":" in args.user or not args.user or not args.user.isprintable()):
        p.error("a user name must be non-empty, printable, and without ':'")
    password = read_password(sys.stdin.isatty())
    if not password:
        p.error("empty password")
    if len(password) > MAX_PASSWORD_BYTES:
        p.error(f"password longer than {MAX_PASSWORD_BYTES} bytes")
    text = make_hash(password, args.scheme)
    print(f"{args.user}:{text}" if args.user is not None else text)
    return 0


def _child_main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="evloop_httpd.hasher")
    p.add_argument("--serve-fd", type=int, required=True)
    args = p.parse_args(argv)
    # Ctrl+C reaches the whole process group; the server decides when to stop, and this
    # process ends when the server closes its end of the pair.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(OSError):
        os.nice(10)  # the serving loop comes first, even on one core
    sock = socket.socket(fileno=args.serve_fd)
    sock.setblocking(True)
    with contextlib.suppress(OSError, KeyboardInterrupt):
        serve_verifier(sock)
    return 0


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
