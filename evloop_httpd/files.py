"""Mapping request paths to files under the root, safely; and what a file is (type, validator).

Theory of operation
-------------------
A request path reaches the filesystem only through :func:`decode_segments`,
:func:`check_hidden` and :func:`locate`, which enforce these, in this order:

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
4. The joined path is opened once with ``O_PATH`` (:func:`locate`): the kernel resolves it, in
   one system call whatever the number of segments (``PATH_MAX`` bounds it), and opens
   nothing for reading, so a device has no side effect. Where the descriptor really is
   (``/proc/self/fd``) must be inside the (real) root, or it is a 404 unless
   ``--follow-symlinks``. Everything after works on that descriptor, never on the path again:
   a file is reopened for reading through ``/proc/self/fd`` (:func:`open_regular`), a folder
   is listed through a descriptor of itself (:func:`open_listable`), a DELETE or PUT acts
   with ``dir_fd`` of the folder it checked. A folder swapped for a symlink at any moment
   therefore changes nothing: what is used is what was checked. Every ``OSError`` on the way
   is mapped to its status (:func:`os_error_to_http`): a name that vanishes mid-lookup is a
   404, not a 500.

Only regular files are served: the ``O_PATH`` descriptor is checked with ``fstat`` before the
file is opened (``O_NONBLOCK``) to be read, so a FIFO or device cannot stall the loop. Without
``O_PATH`` and ``/proc`` (not Linux), the path is resolved with ``realpath`` and opened again
with ``O_NOFOLLOW``: correct, but neither race-free nor bounded in cost. A precompressed
sidecar (``foo.js.br`` beside ``foo.js``) is found by :func:`sidecar` under the same rules as
the file itself.
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
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Anything _check_text refuses, in one search: a listing asks this of every name it reads.
_REFUSED = re.compile(
    f"{_CONTROL.pattern}|\\\\|{_DOUBLE_ENCODED.pattern}|^\\.\\.?$|/", re.IGNORECASE
)
_PROC_FD = "/proc/self/fd/"
# Linux: a name is opened with O_PATH (no read, no permission beyond the path walk, no side
# effect even for a device), checked through /proc/self/fd, and reopened through that same
# magic link to read it. Elsewhere the resolved name is opened again, with O_NOFOLLOW.
_REOPEN = hasattr(os, "O_PATH") and os.path.isdir(_PROC_FD)
_LOCATE_FLAGS = (os.O_PATH if _REOPEN else os.O_RDONLY | os.O_NONBLOCK) | os.O_CLOEXEC
_REOPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC
_OPEN_FLAGS = _REOPEN_FLAGS | os.O_NOFOLLOW
_LIST_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


@dataclass(frozen=True, slots=True)
class Found:
    """A name under the root, held by a descriptor: ``fd`` (``O_PATH`` on Linux: it reads
    nothing and opens no device; the caller closes it), ``st`` its ``fstat``, ``real`` where the
    kernel says it is."""

    fd: int
    st: os.stat_result
    real: str


def decode_segments(raw_path: bytes) -> tuple[tuple[str, ...], bool]:
    """Percent-decode ``raw_path`` once and split it; raise for anything we refuse."""
    decoded = unquote_to_bytes(raw_path)
    if b"\x00" in decoded:
        raise HttpError(HTTPStatus.BAD_REQUEST, "NUL byte in path")
    try:
        text = decoded.decode("utf-8")
    except UnicodeDecodeError:
        raise HttpError(HTTPStatus.BAD_REQUEST, "path is not valid UTF-8") from None
    _check_text(text)
    # Whole-tuple operations only: a path of thousands of segments costs microseconds.
    segments = tuple(filter(None, text.split("/")))
    if "." in segments or ".." in segments:
        raise HttpError(HTTPStatus.FORBIDDEN, "dot-segment in path")
    return segments, text.endswith("/") and bool(segments)


def _check_text(text: str) -> None:
    # The rules on decoded text, shared by request paths and by the names a listing may show.
    if _CONTROL.search(text):
        raise HttpError(HTTPStatus.BAD_REQUEST, "control character in path")
    if "\\" in text:
        raise HttpError(HTTPStatus.FORBIDDEN, "backslash in path")
    if _DOUBLE_ENCODED.search(text):
        raise HttpError(HTTPStatus.FORBIDDEN, "double-encoded dot, slash or NUL in path")


def servable_name(name: str, dotfiles: bool) -> bool:
    """Whether a GET of this one name (as a listing links it, percent-encoded) would be let
    through by the path rules: the same checks as :func:`decode_segments` and
    :func:`check_hidden`, so a listing never shows a name that a GET refuses."""
    if name.startswith(".") and (not dotfiles or is_upload_temp(name)):
        return False
    if _REFUSED.search(name):
        return False
    try:
        name.encode("utf-8")  # os.scandir keeps undecodable bytes as surrogates
    except UnicodeEncodeError:
        return False
    return True


def is_upload_temp(name: str) -> bool:
    return name.startswith(UPLOAD_PREFIX) and name.endswith(UPLOAD_SUFFIX)


def check_hidden(segments: tuple[str, ...], dotfiles: bool) -> None:
    """404 for dotfiles (unless allowed) and, always, for our own upload temp files."""
    if "/." not in "/" + "/".join(segments):
        return  # no segment starts with a dot (upload temp names do too): the common case
    for s in segments:
        if is_upload_temp(s) or (s.startswith(".") and not dotfiles):
            raise HttpError(HTTPStatus.NOT_FOUND, _NOT_FOUND)


def inside(root_real: str, real: str) -> bool:
    return real == root_real or real.startswith(root_real.rstrip(os.sep) + os.sep)


def under_root(root_real: str, segments: tuple[str, ...]) -> str:
    """The path a request's segments name under the root (not yet resolved: see :func:`locate`)."""
    # Not os.path.join, which takes time quadratic in the number of segments.
    return root_real.rstrip("/") + "/" + "/".join(segments)


def locate(
    root_real: str,
    path: str,
    *,
    follow_symlinks: bool,
    outside: HTTPStatus = HTTPStatus.NOT_FOUND,
) -> Found:
    """Open ``path`` as a :class:`Found` descriptor; ``outside`` (404) unless it is inside the
    root.

    The kernel resolves the path in one ``open`` (symlinks, at most ``PATH_MAX`` bytes), and
    the containment check is made on the descriptor, not on the path: whatever is swapped on
    the way, before or after, what the caller goes on to read, list or delete is what was
    checked. Every ``OSError`` becomes its status (:func:`os_error_to_http`), so a name that
    vanishes mid-resolution is a 404, never a 500.
    """
    try:
        fd = os.open(path, _LOCATE_FLAGS)
    except OSError as exc:
        raise os_error_to_http(exc) from None
    found = None
    try:
        real = _real_path(fd, path)
        if not follow_symlinks and not inside(root_real, real):
            raise HttpError(
                outside, _NOT_FOUND if outside == HTTPStatus.NOT_FOUND else "outside the root"
            )
        found = Found(fd, os.fstat(fd), real)
    except OSError as exc:
        raise os_error_to_http(exc) from None
    finally:
        if found is None:
            os.close(fd)
    return found


def _real_path(fd: int, path: str) -> str:
    try:
        return os.readlink(f"{_PROC_FD}{fd}").removesuffix(" (deleted)")
    except OSError:
        if _REOPEN:
            raise
        # Not Linux: no /proc to ask, so the path is resolved again (and a race is possible).
        return os.path.realpath(path)


def open_regular(found: Found) -> tuple[int, os.stat_result]:
    """A readable descriptor of the regular file ``found`` holds; 404 for anything else, 403
    when not permitted. The file is reopened through its descriptor, never by name, so it is
    the file that was checked; a FIFO or a device is refused before anything opens it."""
    if not stat.S_ISREG(found.st.st_mode):
        raise HttpError(HTTPStatus.NOT_FOUND, _NOT_FOUND)
    try:
        if _REOPEN:
            fd = os.open(f"{_PROC_FD}{found.fd}", _REOPEN_FLAGS)
        else:
            fd = os.open(found.real, _OPEN_FLAGS)
    except OSError as exc:
        raise os_error_to_http(exc) from None
    try:
        st = os.fstat(fd)
    except OSError:
        os.close(fd)
        raise
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise HttpError(HTTPStatus.NOT_FOUND, _NOT_FOUND)
    return fd, st


def open_listable(found: Found) -> int:
    """A descriptor that ``os.scandir`` can read, of the very folder ``found`` holds."""
    try:
        if _REOPEN:
            return os.open(".", _LIST_FLAGS, dir_fd=found.fd)
        return os.open(found.real, _LIST_FLAGS)
    except OSError as exc:
        raise os_error_to_http(exc) from None


def open_folder(root_real: str, segments: tuple[str, ...]) -> int:
    """A descriptor for the folder a PUT writes into, checked to be inside the root.

    Creating, renaming and unlinking relative to this descriptor keeps every write in the
    folder that was checked, even if a folder on the way is swapped for a symlink before the
    upload ends. Symlinks out of the root are never followed for writing: 403.
    """
    path = under_root(root_real, segments)
    try:
        fd = os.open(path, _LOCATE_FLAGS | os.O_DIRECTORY)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            raise HttpError(
                HTTPStatus.CONFLICT, "the parent folder does not exist", close=True
            ) from None
        raise os_error_to_http(exc) from None
    try:
        real = _real_path(fd, path)
    except OSError:
        real = ""  # vanished as we looked: treated as outside
    if not inside(root_real, real):
        os.close(fd)
        raise HttpError(HTTPStatus.FORBIDDEN, "outside the served folder", close=True)
    return fd


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
) -> Found | None:
    """A usable precompressed sidecar ``real + suffix`` (the caller closes it), or ``None``.

    The sidecar passes the same checks as a requested file (:func:`locate`: inside the root
    unless ``--follow-symlinks``; a regular file) and must not be older than the original: a
    stale sidecar would serve content that no longer matches the file the client asked for.
    """
    try:
        found = locate(root_real, real + suffix, follow_symlinks=follow_symlinks)
    except HttpError:
        return None
    if not stat.S_ISREG(found.st.st_mode) or found.st.st_mtime_ns < original.st_mtime_ns:
        os.close(found.fd)
        return None
    return found


# An HTTP-date (RFC 9110 §5.6.7) has a four-digit year, and Python cannot format a time before
# year 1 at all. A file's mtime can be anything (tmpfs and btrfs take any signed 64-bit value):
# one before 1970 or after 9999 is treated as unknown, so no Last-Modified is sent for it.
_LATEST_HTTP_TIME = 253_402_300_799  # 9999-12-31T23:59:59Z


def http_mtime(st: os.stat_result) -> int | None:
    """The file's mtime in whole seconds if an HTTP-date can carry it, else ``None``."""
    mtime = st.st_mtime_ns // 1_000_000_000
    return mtime if 0 <= mtime <= _LATEST_HTTP_TIME else None


def last_modified(st: os.stat_result, wall: float) -> int | None:
    """Last-Modified in seconds: the mtime, never later than ``wall`` (the Date sent), or
    ``None`` when the mtime is outside what an HTTP-date can express."""
    mtime = http_mtime(st)
    return None if mtime is None else min(mtime, int(wall))


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
