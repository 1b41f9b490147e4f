"""Mapping request paths to files under the root, safely; and what a file is (type, validator).

Theory of operation
-------------------
A request path reaches the filesystem only through :func:`resolve`, which enforces these, in
this order:

1. The path is percent-decoded exactly once. A decoded NUL, an invalid UTF-8 sequence (which
   includes every overlong encoding), or a control character is a 400: no file has such a
   name that we are willing to serve.
2. The decoded path is split on ``/``. A ``.`` or ``..`` segment, or a backslash, is refused with
   403. They are never collapsed: a client that sends them is confused or hostile, and silently
   fixing the path is how servers end up serving what they should not. So is a path that still
   holds an encoded dot, slash, backslash or NUL after decoding (``%252e``): harmless here, but a
   file with such a name is a trap for any proxy or script that decodes once more.
3. A segment starting with ``.`` (``.git``, ``.env``, our own upload temp files) is hidden with a
   404 unless ``--dotfiles``; upload temp files stay hidden even then.
4. The joined path is resolved with ``realpath``. If the result is not inside the (real) root,
   because a symlink points out, it is a 404 unless ``--follow-symlinks``. The file is then
   opened from that resolved path with ``O_NOFOLLOW``, so swapping the last component for a
   symlink after the check does not help an attacker; and (on Linux, through ``/proc``) the
   file the kernel opened must be inside the root too, so swapping a folder on the way does
   not either.

Only regular files are served: the file is opened with ``O_NONBLOCK`` and checked with
``fstat``, so a FIFO or device cannot stall the loop. A precompressed sidecar (``foo.js.br``
beside ``foo.js``) is found by :func:`sidecar` under the same rules as the file itself.
"""

from __future__ import annotations

import errno
import mimetypes
import os
import re
import stat
from dataclasses import dataclass
from http import HTTPStatus
from urllib.parse import unquote_to_bytes

from .errors import HttpError

UPLOAD_PREFIX = ".evloop-upload-"
UPLOAD_SUFFIX = ".tmp"

_NOT_FOUND = "no such file"
_DOUBLE_ENCODED = re.compile(r"%(?:2e|2f|5c|00)", re.IGNORECASE)
_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW
# No O_NOFOLLOW: where the folder leads is checked on the descriptor itself (/proc), which also
# catches a link swapped in at any component, not just the last.
_FOLDER_FLAGS = getattr(os, "O_PATH", os.O_RDONLY) | os.O_DIRECTORY | os.O_CLOEXEC


@dataclass(frozen=True, slots=True)
class Resolved:
    """A request path mapped to disk: ``real`` is the resolved path, ``segments`` the decoded
    segments of the request path, ``trailing_slash`` whether it ended in ``/``."""

    real: str
    segments: tuple[str, ...]
    trailing_slash: bool


def decode_segments(raw_path: bytes) -> tuple[tuple[str, ...], bool]:
    """Percent-decode ``raw_path`` once and split it; raise for anything we refuse."""
    decoded = unquote_to_bytes(raw_path)
    if b"\x00" in decoded:
        raise HttpError(HTTPStatus.BAD_REQUEST, "NUL byte in path")
    try:
        text = decoded.decode("utf-8")
    except UnicodeDecodeError:
        raise HttpError(HTTPStatus.BAD_REQUEST, "path is not valid UTF-8") from None
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        raise HttpError(HTTPStatus.BAD_REQUEST, "control character in path")
    if "\\" in text:
        raise HttpError(HTTPStatus.FORBIDDEN, "backslash in path")
    if _DOUBLE_ENCODED.search(text):
        raise HttpError(HTTPStatus.FORBIDDEN, "double-encoded dot, slash or NUL in path")
    parts = text.split("/")
    segments = tuple(p for p in parts if p)
    if any(s in (".", "..") for s in segments):
        raise HttpError(HTTPStatus.FORBIDDEN, "dot-segment in path")
    return segments, text.endswith("/") and bool(segments)


def is_upload_temp(name: str) -> bool:
    return name.startswith(UPLOAD_PREFIX) and name.endswith(UPLOAD_SUFFIX)


def check_hidden(segments: tuple[str, ...], dotfiles: bool) -> None:
    """404 for dotfiles (unless allowed) and, always, for our own upload temp files."""
    for s in segments:
        if is_upload_temp(s) or (s.startswith(".") and not dotfiles):
            raise HttpError(HTTPStatus.NOT_FOUND, _NOT_FOUND)


def inside(root_real: str, real: str) -> bool:
    return real == root_real or real.startswith(root_real.rstrip(os.sep) + os.sep)


def resolve(root_real: str, raw_path: bytes, *, dotfiles: bool, follow_symlinks: bool) -> Resolved:
    """Map a request path to a real path under the root (see the module docstring)."""
    segments, trailing = decode_segments(raw_path)
    check_hidden(segments, dotfiles)
    real = os.path.realpath(os.path.join(root_real, *segments))
    if not follow_symlinks and not inside(root_real, real):
        raise HttpError(HTTPStatus.NOT_FOUND, _NOT_FOUND)
    return Resolved(real, segments, trailing)


def open_regular(path: str, root_real: str | None = None) -> tuple[int, os.stat_result]:
    """Open a regular file for reading; 404 for anything else, 403 when not permitted.

    With ``root_real``, also 404 when the file the kernel opened is not inside that root.
    """
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as exc:
        raise os_error_to_http(exc) from None
    try:
        st = os.fstat(fd)
    except OSError:
        os.close(fd)
        raise
    if not stat.S_ISREG(st.st_mode) or (
        root_real is not None and not _opened_inside(root_real, fd)
    ):
        os.close(fd)
        raise HttpError(HTTPStatus.NOT_FOUND, _NOT_FOUND)
    return fd, st


def open_folder(folder: str, root_real: str) -> int:
    """A descriptor for the folder a PUT writes into, checked to be inside the root.

    The path was resolved and checked before, but a folder on the way may be swapped for a
    symlink before the upload ends: creating, renaming and unlinking relative to this
    descriptor keeps every write in the folder that was checked. ``O_PATH`` needs no read
    permission on the folder, only what the path walk needs.
    """
    try:
        fd = os.open(folder, _FOLDER_FLAGS)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            raise HttpError(
                HTTPStatus.CONFLICT, "the parent folder does not exist", close=True
            ) from None
        raise os_error_to_http(exc) from None
    if not _opened_inside(root_real, fd):
        os.close(fd)
        raise HttpError(HTTPStatus.FORBIDDEN, "outside the served folder", close=True)
    return fd


def _opened_inside(root_real: str, fd: int) -> bool:
    # O_NOFOLLOW guards only the last component: a folder on the way swapped for a symlink
    # between realpath and open would lead out of the root. Linux names the file actually
    # opened; without /proc there is nothing more to check.
    try:
        opened = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return True
    return inside(root_real, opened.removesuffix(" (deleted)"))


def os_error_to_http(exc: OSError) -> HttpError:
    """The honest status for a filesystem error on the path a client named."""
    if exc.errno in (errno.EACCES, errno.EPERM):
        return HttpError(HTTPStatus.FORBIDDEN, "permission denied")
    if exc.errno == errno.EROFS:
        # The operator mounted it so: as unwritable as a folder without write permission.
        return HttpError(HTTPStatus.FORBIDDEN, "read-only file system")
    # ENXIO and ENODEV come from opening a socket, or a device node without a driver: names
    # that are not files to us, like a FIFO, which open_regular refuses after fstat.
    if exc.errno in (
        errno.ENOENT,
        errno.ENOTDIR,
        errno.ELOOP,
        errno.ENAMETOOLONG,
        errno.ENXIO,
        errno.ENODEV,
    ):
        return HttpError(HTTPStatus.NOT_FOUND, _NOT_FOUND)
    if exc.errno in (errno.EMFILE, errno.ENFILE):
        # Out of descriptors is the server's load, not the client's fault, and passes: closing
        # this connection frees one.
        return HttpError(
            HTTPStatus.SERVICE_UNAVAILABLE,
            "server busy, try again",
            close=True,
            headers=((b"Retry-After", b"1"),),
        )
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return HttpError(HTTPStatus.INSUFFICIENT_STORAGE, "no space left on the server", close=True)
    return HttpError(HTTPStatus.INTERNAL_SERVER_ERROR, "filesystem error", close=True)


def strong_etag(st: os.stat_result, coding: bytes = b"") -> bytes:
    """A strong validator from size and mtime in nanoseconds: stable across restarts and equal
    on every replica that holds a copy made with its mtime (``rsync -a``, ``cp -p``), so a
    client can switch servers behind a balancer. No inode: it differs per machine.

    A precompressed variant gets its sidecar's own stat plus its coding, so it never shares an
    ETag with the original or with another coding (RFC 9110 §8.8.3.3).
    """
    if coding:
        return b'"%x-%x-%s"' % (st.st_size, st.st_mtime_ns, coding)
    return b'"%x-%x"' % (st.st_size, st.st_mtime_ns)


def sidecar(
    root_real: str, real: str, suffix: str, original: os.stat_result, *, follow_symlinks: bool
) -> str | None:
    """The real path of a usable precompressed sidecar ``real + suffix``, or ``None``.

    The sidecar passes the same checks as a requested file (resolved inside the root unless
    ``--follow-symlinks``, a regular file) and must not be older than the original: a stale
    sidecar would serve content that no longer matches the file the client asked for.
    """
    candidate = os.path.realpath(real + suffix)
    if not follow_symlinks and not inside(root_real, candidate):
        return None
    try:
        st = os.stat(candidate)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode) or st.st_mtime_ns < original.st_mtime_ns:
        return None
    return candidate


# Types that browsers need right and that system mime.types files get wrong or lack. Anything
# else comes from Python's built-in table, never from /etc/mime.types, so it is the same on
# every machine.
_TYPES: dict[str, str] = {
    ".html": "text/html",
    ".htm": "text/html",
    ".css": "text/css",
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".json": "application/json",
    ".map": "application/json",
    ".txt": "text/plain",
    ".md": "text/markdown",
    ".csv": "text/csv",
    ".xml": "application/xml",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
    ".avif": "image/avif",
    ".ico": "image/vnd.microsoft.icon",
    ".wasm": "application/wasm",
    ".woff": "font/woff",
    ".woff2": "font/woff2",
    ".ttf": "font/ttf",
    ".otf": "font/otf",
    ".pdf": "application/pdf",
    ".mp4": "video/mp4",
    ".webm": "video/webm",
    ".mp3": "audio/mpeg",
    ".ogg": "audio/ogg",
    ".wav": "audio/wav",
    ".zip": "application/zip",
    ".gz": "application/gzip",
    ".tar": "application/x-tar",
}
_BUILTIN = mimetypes.MimeTypes(filenames=())
# Text types that get "; charset=utf-8" (RFC 9110 §8.3.2: name the charset rather than sniff).
_TEXTUAL = ("text/", "application/json", "application/xml", "image/svg+xml")


def content_type(name: str) -> bytes:
    """The Content-Type for a file name, by extension; octet-stream when unknown."""
    ext = os.path.splitext(name)[1].lower()
    ctype = _TYPES.get(ext) or _BUILTIN.types_map[1].get(ext) or "application/octet-stream"
    if ctype.startswith(_TEXTUAL):
        ctype += "; charset=utf-8"
    return ctype.encode("ascii")
