"""PUT bodies on disk: written to a temporary file, moved into place only when complete.

Theory of operation: an upload never touches its target until the whole body has arrived. The
body goes to ``.evloop-upload-<random>.tmp`` in the target's own folder (the same filesystem, so
the final :func:`os.replace` is atomic), and a failure at any point, a disconnect, a timeout, a
full disk, unlinks it. A reader therefore sees the old file or the new one, never a mix, and two
concurrent PUTs to one path end with exactly one body, whole. The temp name starts with a dot and
is refused by :mod:`files` even under ``--dotfiles``, so it is never served; a server killed
mid-upload leaves one behind, which :func:`remove_stale_temps` deletes at the next start.

Every write happens relative to a descriptor of the target's folder, opened and checked to be
inside the root when the PUT began (:func:`files.open_folder`): the temp file is created,
renamed and unlinked by name within that descriptor. A folder on the path swapped for a symlink
while the body arrives therefore changes nothing: the upload lands in the folder that was
checked, never where the symlink points.
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
# The permission bits a replaced file passes on: rwx for user, group and other, nothing else.
KEPT_MODE_BITS = 0o777
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
# Under --fsync, the body is synced as it arrives, every SYNC_EVERY_BYTES, so that no single sync
# (the one at the commit included) has more than that much to write: one sync blocks the whole
# loop. 4 MiB is about 2-4 ms on an SSD, ~40 ms on a 100 MB/s disk; a whole 512 MiB file at the
# end took 190-220 ms here, seconds on a slow disk (tests/stress/fsync_probe.py).
SYNC_EVERY_BYTES = 4 * 1024 * 1024
_KICK_BYTES = 1024 * 1024  # writeback is started (not waited for) this often; see write()
_FADV_DONTNEED = getattr(os, "POSIX_FADV_DONTNEED", None)


class Upload:
    """One PUT in progress. Call :meth:`write` for each piece, then :meth:`commit` or
    :meth:`abort`; after either, the object holds no descriptor and no temp file."""

    __slots__ = (
        "_dir",
        "_fd",
        "_fsync",
        "_kicked",
        "_owns_dir",
        "_synced",
        "_tmp",
        "name",
        "written",
    )

    def __init__(self, folder_fd: int, name: str, *, fsync: bool, own_dir: bool = True) -> None:
        """Takes ownership of ``folder_fd`` (see :func:`files.open_folder`), even on error,
        unless ``own_dir`` is False: then the caller keeps it (a form upload writes several
        files into one folder through one descriptor) and must keep it open until this upload
        is committed or aborted."""
        self._dir = folder_fd
        self._owns_dir = own_dir
        self.name = name
        self._fsync = fsync
        self.written = 0
        self._kicked = self._synced = 0  # bytes whose writeback was started / is on disk
        self._tmp = f"{UPLOAD_PREFIX}{secrets.token_hex(8)}{UPLOAD_SUFFIX}"
        try:
            self._fd = os.open(self._tmp, _CREATE_FLAGS, 0o666, dir_fd=folder_fd)
        except OSError as exc:
            self._fd = -1
            self._close_dir()
            raise os_error_to_http(exc) from None
        # A replaced file keeps its read, write and execute bits (a script stays executable, a
        # private file private) but never setuid, setgid or sticky: the new file belongs to the
        # server's user, so copying a setuid bit a local user set on their own file would turn
        # any uploaded binary into a program that runs as the server (root, say).
        old = self.target_stat()
        if old is not None and stat.S_ISREG(old.st_mode):
            with contextlib.suppress(OSError):
                os.fchmod(self._fd, stat.S_IMODE(old.st_mode) & KEPT_MODE_BITS)

    def target_stat(self) -> os.stat_result | None:
        """``lstat`` of the target in the checked folder; None when there is none."""
        return lstat_in(self._dir, self.name)

    @property
    def fd(self) -> int:
        """The temp file's descriptor (-1 once committed or aborted), for a transport that
        moves body bytes into it itself (splice) and then reports them with :meth:`wrote`."""
        return self._fd

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                n = os.write(self._fd, view)
            except OSError as exc:
                raise self.failed(exc) from None
            view = view[n:]
        self.wrote(len(data))

    def wrote(self, n: int) -> None:
        """``n`` more bytes are in :attr:`fd` (by :meth:`write`, or spliced by the transport):
        counted, and under ``--fsync`` synced as they go."""
        self.written += n
        if self._fsync and self.written - self._kicked >= _KICK_BYTES:
            self._sync_as_we_go()

    def failed(self, exc: OSError) -> HttpError:
        """A write to the temp file failed with ``exc``: abort, and the error to answer."""
        self.abort()
        if exc.errno == errno.EFBIG:
            return HttpError(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "file too large for the disk", close=True
            )
        return os_error_to_http(exc)

    def _sync_as_we_go(self) -> None:
        """Keep what a sync must wait for small: start the kernel writing each MiB out as soon
        as it is here (``POSIX_FADV_DONTNEED`` starts writeback of dirty pages and returns), and
        every ``SYNC_EVERY_BYTES`` wait for it with ``fdatasync``, by which time most of it is
        written already."""
        try:
            if _FADV_DONTNEED is not None:
                start = self._kicked
                os.posix_fadvise(self._fd, start, self.written - start, _FADV_DONTNEED)
            self._kicked = self.written
            if self.written - self._synced >= SYNC_EVERY_BYTES:
                os.fdatasync(self._fd)
                self._synced = self.written
        except OSError as exc:
            # A write error may surface only here (ENOSPC on some filesystems, EIO).
            self.abort()
            raise os_error_to_http(exc) from None

    def commit(self, *, replace: bool = True) -> tuple[bool, bytes]:
        """Move the body into place. Returns (created, new ETag).

        With ``replace`` False an existing target is never overwritten, atomically: the temp
        file is hard-linked to the name (``link`` fails with EEXIST whatever appeared since any
        check) and then unlinked; a 409 says so. On a filesystem without hard links, the check
        and the ``os.replace`` are two steps, and a file created between them is replaced.
        """
        fd = self._fd
        try:
            if self._fsync:
                os.fsync(fd)
            etag = strong_etag(os.fstat(fd))
            created = self.target_stat() is None
            if replace or not self._link_new():
                os.replace(self._tmp, self.name, src_dir_fd=self._dir, dst_dir_fd=self._dir)
        except FileExistsError:
            self.abort()
            raise HttpError(
                HTTPStatus.CONFLICT, f"{self.name!a} exists (not overwritten)"
            ) from None
        except IsADirectoryError:
            self.abort()
            raise HttpError(HTTPStatus.CONFLICT, "the target is a directory", close=True) from None
        except OSError as exc:
            self.abort()
            raise os_error_to_http(exc) from None
        self._fd = -1
        os.close(fd)
        try:
            if self._fsync:
                _fsync_dir(self._dir)
        finally:
            self._close_dir()
        return created, etag

    def _link_new(self) -> bool:
        """Hard-link the temp file to the target name, then drop the temp name. False when the
        filesystem has no hard links (the caller then falls back on a checked replace);
        FileExistsError when the target exists."""
        try:
            os.link(
                self._tmp,
                self.name,
                src_dir_fd=self._dir,
                dst_dir_fd=self._dir,
                follow_symlinks=False,
            )
        except OSError as exc:
            if exc.errno in (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK, errno.EXDEV):
                if self.target_stat() is not None:
                    raise FileExistsError(errno.EEXIST, "exists") from None
                return False
            raise
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._tmp, dir_fd=self._dir)
        return True

    def _close_dir(self) -> None:
        if self._owns_dir and self._dir >= 0:
            os.close(self._dir)
        self._dir = -1

    def abort(self) -> None:
        """Drop the upload: close and unlink the temp file. Safe to call more than once."""
        if self._fd < 0:
            return
        os.close(self._fd)
        self._fd = -1
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._tmp, dir_fd=self._dir)
        self._close_dir()


def lstat_in(folder_fd: int, name: str) -> os.stat_result | None:
    """``lstat`` of ``name`` in the folder ``folder_fd``; None when absent. Other errors raise
    the matching :class:`HttpError`."""
    try:
        return os.lstat(name, dir_fd=folder_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise os_error_to_http(exc) from None


def _fsync_dir(folder_fd: int) -> None:
    # The rename is only durable once the directory entry is. The folder's descriptor may be
    # O_PATH, which fsync refuses: open the folder itself through it.
    dfd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=folder_fd)
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
