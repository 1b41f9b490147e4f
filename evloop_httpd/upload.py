"""PUT bodies on disk: written to a temporary file, moved into place only when complete.

Theory of operation: an upload never touches its target until the whole body has arrived. The
body goes to ``.evloop-upload-<random>.tmp`` in the target's own folder (the same filesystem, so
the final :func:`os.replace` is atomic), and a failure at any point, a disconnect, a timeout, a
full disk, unlinks it. A reader therefore sees the old file or the new one, never a mix, and two
concurrent PUTs to one path end with exactly one body, whole. The temp name starts with a dot and
is refused by :mod:`files` even under ``--dotfiles``, so it is never served; a server killed
mid-upload leaves one behind, which :func:`remove_stale_temps` deletes at the next start.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import stat
from http import HTTPStatus

from .errors import HttpError
from .files import UPLOAD_PREFIX, UPLOAD_SUFFIX, os_error_to_http, strong_etag

_TEMP_NAME = re.compile(re.escape(UPLOAD_PREFIX) + r"[0-9a-f]{16}" + re.escape(UPLOAD_SUFFIX))
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW


class Upload:
    """One PUT in progress. Call :meth:`write` for each piece, then :meth:`commit` or
    :meth:`abort`; after either, the object holds no descriptor and no temp file."""

    __slots__ = ("_fd", "_fsync", "_tmp", "target", "written")

    def __init__(self, folder: str, target: str, *, fsync: bool) -> None:
        self.target = target
        self._fsync = fsync
        self.written = 0
        self._tmp = os.path.join(folder, f"{UPLOAD_PREFIX}{secrets.token_hex(8)}{UPLOAD_SUFFIX}")
        try:
            self._fd = os.open(self._tmp, _CREATE_FLAGS, 0o666)
        except OSError as exc:
            raise os_error_to_http(exc) from None
        try:
            # Keep a replaced file's permissions rather than resetting them to the umask's.
            old = os.lstat(target)
            if stat.S_ISREG(old.st_mode):
                os.fchmod(self._fd, stat.S_IMODE(old.st_mode))
        except OSError:
            pass

    @property
    def active(self) -> bool:
        return self._fd >= 0

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                n = os.write(self._fd, view)
            except OSError as exc:
                self.abort()
                if exc.errno == errno.EFBIG:
                    raise HttpError(
                        HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                        "file too large for the disk",
                        close=True,
                    ) from None
                raise os_error_to_http(exc) from None
            view = view[n:]
            self.written += n

    def commit(self) -> tuple[bool, bytes]:
        """Move the body into place. Returns (created, new ETag)."""
        fd = self._fd
        try:
            if self._fsync:
                os.fsync(fd)
            etag = strong_etag(os.fstat(fd))
            created = not os.path.lexists(self.target)
            os.replace(self._tmp, self.target)
        except IsADirectoryError:
            self.abort()
            raise HttpError(HTTPStatus.CONFLICT, "the target is a directory", close=True) from None
        except OSError as exc:
            self.abort()
            raise os_error_to_http(exc) from None
        self._fd = -1
        os.close(fd)
        if self._fsync:
            _fsync_dir(os.path.dirname(self.target))
        return created, etag

    def abort(self) -> None:
        """Drop the upload: close and unlink the temp file. Safe to call more than once."""
        if self._fd < 0:
            return
        os.close(self._fd)
        self._fd = -1
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._tmp)


def _fsync_dir(folder: str) -> None:
    # The rename is only durable once the directory entry is.
    dfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def remove_stale_temps(root: str) -> int:
    """Delete upload temp files left by a server that was killed mid-upload. Returns the count."""
    removed = 0
    for folder, dirs, names in os.walk(root):
        for name in names:
            if _TEMP_NAME.fullmatch(name):
                try:
                    os.unlink(os.path.join(folder, name))
                    removed += 1
                except OSError:
                    pass
        # os.walk does not follow symlinked folders by default; hidden ones we still search,
        # since that is where nothing else would clean up.
        dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(folder, d))]
    return removed
