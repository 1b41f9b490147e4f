"""A folder's tree as a ZIP archive, produced in bounded pieces (``?download=zip``).

Theory of operation
-------------------
:class:`ZipStream` is a pull producer: the connection asks :meth:`ZipStream.next_chunk` for at
most ``max_bytes`` bytes whenever its socket can take more, and sends them as they come
(chunked: the archive's length is not known beforehand). No socket is touched here, and each
call does bounded work: at most ``max_bytes`` read from files (``os.pread``, so no shared file
offset) and at most ``MAX_SCANNED_PER_CHUNK`` directory entries looked at. A call may return
``b""`` while the walk skips entries; the end is :attr:`ZipStream.finished`, never an empty
chunk alone.

The archive is what a streaming writer can produce without seeking back:

* every file is *stored* (method 0, no compression): bytes go out at disk speed, and a server
  CPU is not spent on photos and videos that do not compress anyway;
* every file entry sets general purpose bit 3: its CRC-32 and sizes follow its data in a *data
  descriptor*, computed (``zlib.crc32``) while the data is read. Folders are entries ``name/``
  with no data, so empty folders survive;
* names are UTF-8 with ``/`` separators and set bit 11 (APPNOTE 4.4.4, appendix D);
* ZIP64 (APPNOTE 4.5.3) is used per entry when the file's size at open is at least
  ``zip64_threshold`` (4 GiB - 1 by default; a parameter so tests can force it): its local
  header carries a ZIP64 extra field and its descriptor 8-byte sizes. The central directory
  uses ZIP64 fields for any size or offset at or over the threshold, and the archive ends with
  the ZIP64 end records when the entry count, the directory's size or offset need them.

Memory stays flat in the tree's size and in the files' sizes: file data passes through in
pieces of at most ``max_bytes``; what accumulates is one central-directory record per entry
(46 bytes + name + at most 28 bytes of ZIP64 fields), capped by ``MAX_ENTRIES`` and
``MAX_CENTRAL_BYTES``, plus a stack of open folders at most ``MAX_DEPTH`` deep (two
descriptors a level: ours and ``scandir``'s). :meth:`ZipStream.maybe_check` walks the tree
once beforehand, in bounded steps, without opening files, so a tree over a limit is refused
*before the first byte* with a clear :class:`HttpError`; a tree that grows past a limit
between that check and the stream makes :meth:`next_chunk` raise, which the connection turns
into an abort (the archive then has no central directory, and no unzip tool takes it for
whole).

What goes in is what a GET would serve (:func:`files.servable_name`): no dotfiles unless
``dotfiles``, never our upload temp files, no names a GET refuses, no symlink whose target
leaves the root unless ``follow_symlinks`` (checked on the descriptor the kernel opened, as
:func:`files.locate` does), only regular files and folders. Names are opened relative to the
descriptor of their folder with ``O_NOFOLLOW``, so a folder swapped for a symlink mid-walk
cannot lead out. A folder already on the stack (a symlink loop inside the root) is left out.
Entries that cannot be opened (permission denied, vanished) are left out, as a listing does.

Files that change while the archive is made, and what the archive then says:

* vanished before it was opened: left out;
* vanished after it was opened: we hold a descriptor, so its bytes are read as usual;
* shrank while being read: the entry holds the bytes read, and its descriptor and central
  record carry their real size and CRC, so the archive stays valid; the entry is the file as
  it was read, possibly a mix of before and after a rewrite (what ``cp`` or ``tar`` give too);
* grew: the entry stops at the size seen when the file was opened (which is also what decided
  whether it needs ZIP64 sizes), so it is the file's first ``size`` bytes;
* a read error (``EIO``): raised from :meth:`next_chunk` (the connection aborts); never
  written into the archive as a short entry.
"""

from __future__ import annotations

import os
import stat
import struct
import time
import zlib
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from http import HTTPStatus

from .errors import HttpError
from .files import locate, open_listable, open_regular, servable_name

ZIP64_LIMIT = 0xFFFF_FFFF  # a 32-bit field's all-ones means "see the ZIP64 field"
MAX_ENTRIES = 65_535  # keeps the central directory in memory small; ZIP64 could hold more
# Each record is 46 + name + up to 28 bytes: 65,535 records of 150-byte paths are about 15 MiB.
MAX_CENTRAL_BYTES = 16 * 1024 * 1024
MAX_DEPTH = 64  # folders deep; 2 descriptors each while the walk is inside them
# Entries looked at per call: about 5-10 us each (an open and fstat for what goes in), so a
# call of skipped entries costs a few ms at most, like a listing build (listing.MAX_SCANNED).
MAX_SCANNED_PER_CHUNK = 128
READ_BYTES = 1024 * 1024  # largest single pread

_LOCAL_SIG = 0x04034B50
_CENTRAL_SIG = 0x02014B50
_DESCRIPTOR_SIG = 0x08074B50
_END_SIG = 0x06054B50
_END64_SIG = 0x06064B50
_LOCATOR64_SIG = 0x07064B50
_FLAG_DESCRIPTOR = 0x0008  # bit 3: CRC and sizes follow the data
_FLAG_UTF8 = 0x0800  # bit 11: the name is UTF-8
_VERSION = 20  # 2.0: folders, stored
_VERSION64 = 45  # 4.5: ZIP64
_MADE_BY_UNIX = 3 << 8  # the upper byte: external attributes hold a Unix mode
_MSDOS_DIR = 0x10
_LOCAL = struct.Struct("<IHHHHHIIIHH")
_CENTRAL = struct.Struct("<IHHHHHHIIIHHHHHII")
_CENTRAL_FIXED = _CENTRAL.size + 28  # the most a record adds beyond its name
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def _too_large(detail: str) -> HttpError:
    return HttpError(HTTPStatus.FORBIDDEN, f"this folder cannot be downloaded as one ZIP: {detail}")


def dos_datetime(mtime: float) -> tuple[int, int]:
    """(time, date) in MS-DOS form, local time as unzip reads it; clamped to 1980-2107."""
    earliest = 0, (1 << 5) | 1  # 1980-01-01 00:00:00
    latest = (23 << 11) | (59 << 5) | 29, (127 << 9) | (12 << 5) | 31  # 2107-12-31 23:59:58
    try:
        t = time.localtime(mtime)
    except (OverflowError, OSError, ValueError):
        # tmpfs and btrfs take any 64-bit mtime, far outside what localtime can show.
        return earliest if mtime < 0 else latest
    if t.tm_year < 1980:
        return earliest
    if t.tm_year > 2107:
        return latest
    return (
        (t.tm_hour << 11) | (t.tm_min << 5) | (t.tm_sec // 2),
        ((t.tm_year - 1980) << 9) | (t.tm_mon << 5) | t.tm_mday,
    )


@dataclass(frozen=True, slots=True)
class Item:
    """One entry of the walk: its archive name (folders end in ``/``), its ``fstat`` (None in
    a walk that opens no files), and a readable descriptor for a file (-1 otherwise; the
    receiver closes it)."""

    name: str
    is_dir: bool
    st: os.stat_result | None
    fd: int


@dataclass(slots=True)
class _Level:
    fd: int  # the folder, opened by us (O_DIRECTORY | O_NOFOLLOW)
    entries: Iterator[os.DirEntry[str]]
    prefix: str  # its archive name, "" or ending in "/"
    real: str  # where it is, to resolve its symlinks the way files.locate does
    ident: tuple[int, int]  # (st_dev, st_ino), for loop detection


class Walker:
    """A depth-first walk of a folder, one entry per :meth:`next_item`, bounded in work.

    ``allowance`` is how many directory entries the walk may still look at; the caller sets it
    before a batch of calls. ``open_files=False`` walks names only (for :meth:`ZipStream.
    maybe_check`): files are not opened, and their stat is not taken.
    """

    __slots__ = (
        "_stack",
        "allowance",
        "dotfiles",
        "finished",
        "follow_symlinks",
        "max_depth",
        "open_files",
        "root_real",
    )

    def __init__(
        self,
        folder_fd: int,
        folder_real: str,
        root_real: str,
        *,
        dotfiles: bool,
        follow_symlinks: bool,
        open_files: bool,
        prefix: str = "",
        max_depth: int = MAX_DEPTH,
    ) -> None:
        self.root_real = root_real
        self.dotfiles = dotfiles
        self.follow_symlinks = follow_symlinks
        self.open_files = open_files
        self.max_depth = max_depth
        self.allowance = 0
        self.finished = False
        self._stack: list[_Level] = []
        # Our own open file description: two walks of one folder never share a read position.
        fd = os.open(".", _DIR_FLAGS, dir_fd=folder_fd)
        try:
            self._push(fd, os.fstat(fd), prefix, folder_real)
        except BaseException:
            os.close(fd)
            raise

    def next_item(self) -> Item | None:
        """The next entry, or None when the walk is over (:attr:`finished`) or ``allowance``
        is spent."""
        stack = self._stack
        while stack:
            if self.allowance <= 0:
                return None
            level = stack[-1]
            de = next(level.entries, None)
            if de is None:
                stack.pop()
                self._close_level(level)
                continue
            self.allowance -= 1
            if not servable_name(de.name, self.dotfiles):
                continue
            item = self._take(level, de)
            if item is not None:
                return item
        self.finished = True
        return None

    def close(self) -> None:
        while self._stack:
            self._close_level(self._stack.pop())

    def _take(self, level: _Level, de: os.DirEntry[str]) -> Item | None:
        name = de.name
        fd = -1
        try:
            if de.is_symlink():
                fd, st, real = self._follow(level, name)
                if fd < 0:
                    if not self.open_files and stat.S_ISREG(st.st_mode):
                        return Item(level.prefix + name, False, None, -1)
                    return None
            elif de.is_dir(follow_symlinks=False):
                fd = os.open(name, _DIR_FLAGS, dir_fd=level.fd)
                st, real = os.fstat(fd), f"{level.real}/{name}"
            elif de.is_file(follow_symlinks=False):
                if not self.open_files:
                    return Item(level.prefix + name, False, None, -1)
                fd = os.open(name, _FILE_FLAGS, dir_fd=level.fd)
                st, real = os.fstat(fd), ""
            else:
                return None  # a FIFO, socket or device: never opened
        except (OSError, HttpError):
            if fd >= 0:
                os.close(fd)
            return None  # vanished, unreadable, or a link out of the root
        if stat.S_ISREG(st.st_mode):
            return Item(level.prefix + name, False, st, fd)
        if not stat.S_ISDIR(st.st_mode) or (st.st_dev, st.st_ino) in (
            lv.ident for lv in self._stack
        ):
            os.close(fd)  # swapped for something else, or a loop back up the tree
            return None
        if len(self._stack) >= self.max_depth:
            os.close(fd)
            raise _too_large(f"folders nest deeper than {self.max_depth} levels")
        prefix = f"{level.prefix}{name}/"
        try:
            self._push(fd, st, prefix, real)
        except OSError:
            os.close(fd)
            return None
        return Item(prefix, True, st, -1)

    def _follow(self, level: _Level, name: str) -> tuple[int, os.stat_result, str]:
        """A symlink, resolved and checked as a GET would (files.locate): (-1, ...) to skip."""
        found = locate(self.root_real, f"{level.real}/{name}", follow_symlinks=self.follow_symlinks)
        try:
            if stat.S_ISDIR(found.st.st_mode):
                return open_listable(found), found.st, found.real
            if stat.S_ISREG(found.st.st_mode):
                if not self.open_files:
                    return -1, found.st, found.real  # counted, not opened
                fd, st = open_regular(found)
                return fd, st, found.real
            return -1, found.st, ""
        finally:
            os.close(found.fd)

    def _push(self, fd: int, st: os.stat_result, prefix: str, real: str) -> None:
        entries = os.scandir(fd)
        self._stack.append(_Level(fd, entries, prefix, real, (st.st_dev, st.st_ino)))

    @staticmethod
    def _close_level(level: _Level) -> None:
        close = getattr(level.entries, "close", None)
        if close is not None:
            close()
        os.close(level.fd)


class ZipStream:
    """The ZIP archive of the folder open as ``folder_fd`` (read, never closed here: the
    stream opens its own descriptors), produced by :meth:`next_chunk`.

    ``prefix`` goes before every name (``"photos/"`` makes the archive unpack into one folder).
    Call :meth:`close` when done or abandoned: it releases every descriptor the walk holds.
    """

    __slots__ = (
        "_central",
        "_check",
        "_checked_entries",
        "_checked_bytes",
        "_crc",
        "_entry",
        "_file_fd",
        "_file_left",
        "_file_pos",
        "_offset",
        "_out",
        "_out_pos",
        "_walker",
        "_ended",
        "central_bytes",
        "folder_real",
        "max_central_bytes",
        "max_entries",
        "zip64_threshold",
    )

    def __init__(
        self,
        folder_fd: int,
        folder_real: str,
        root_real: str,
        *,
        dotfiles: bool = False,
        follow_symlinks: bool = False,
        prefix: str = "",
        zip64_threshold: int = ZIP64_LIMIT,
        max_entries: int = MAX_ENTRIES,
        max_central_bytes: int = MAX_CENTRAL_BYTES,
        max_depth: int = MAX_DEPTH,
    ) -> None:
        self.folder_real = folder_real
        self.zip64_threshold = zip64_threshold
        self.max_entries = max_entries
        self.max_central_bytes = max_central_bytes
        self._walker = Walker(
            folder_fd,
            folder_real,
            root_real,
            dotfiles=dotfiles,
            follow_symlinks=follow_symlinks,
            open_files=True,
            prefix=prefix,
            max_depth=max_depth,
        )
        self._check: Walker | None = None
        try:
            self._check = Walker(
                folder_fd,
                folder_real,
                root_real,
                dotfiles=dotfiles,
                follow_symlinks=follow_symlinks,
                open_files=False,
                prefix=prefix,
                max_depth=max_depth,
            )
        except BaseException:
            self._walker.close()
            raise
        self._checked_entries = 0
        self._checked_bytes = 0
        self._central: list[bytes] = []
        self.central_bytes = 0
        self._out: deque[bytes] = deque()  # headers, descriptors, the end: small except the end
        self._out_pos = 0  # how much of _out[0] has gone
        self._offset = 0  # archive bytes produced so far (queued or returned)
        self._file_fd = -1
        self._file_pos = 0
        self._file_left = 0
        self._crc = 0
        self._entry: tuple[bytes, os.stat_result, int, bool] | None = None
        self._ended = False

    @property
    def finished(self) -> bool:
        """True once the whole archive has been returned."""
        return self._ended and not self._out

    def maybe_check(self) -> bool:
        """Walk the tree once more without opening files, ``MAX_SCANNED_PER_CHUNK`` entries
        per call: True once the whole tree is known to fit the limits. Raises
        :class:`HttpError` (403) for a tree over a limit, before any byte is sent."""
        walker = self._check
        if walker is None:
            return True
        walker.allowance = MAX_SCANNED_PER_CHUNK
        while (item := walker.next_item()) is not None:
            self._checked_entries += 1
            self._checked_bytes += _CENTRAL_FIXED + len(item.name.encode("utf-8"))
            self._check_limits(self._checked_entries, self._checked_bytes)
        if not walker.finished:
            return False
        walker.close()
        self._check = None
        return True

    def next_chunk(self, max_bytes: int) -> bytes:
        """At most ``max_bytes`` more bytes of the archive (possibly ``b""`` mid-way: see
        :attr:`finished`). Raises :class:`HttpError` for a tree that outgrew a limit, and
        ``OSError`` for a read error: either way the archive cannot be finished."""
        parts: list[bytes] = []
        room = max_bytes
        self._walker.allowance = MAX_SCANNED_PER_CHUNK
        out = self._out
        while room > 0:
            if out:
                head = out[0]
                piece = head[self._out_pos : self._out_pos + room]
                parts.append(piece)
                room -= len(piece)
                self._out_pos += len(piece)
                if self._out_pos == len(head):
                    out.popleft()
                    self._out_pos = 0
            elif self._file_fd >= 0:
                want = min(room, self._file_left, READ_BYTES)
                data = os.pread(self._file_fd, want, self._file_pos) if want else b""
                if not data:
                    self._end_file()
                    continue
                self._crc = zlib.crc32(data, self._crc)
                self._file_pos += len(data)
                self._file_left -= len(data)
                self._offset += len(data)
                room -= len(data)
                parts.append(data)
            elif not self._ended:
                item = self._walker.next_item()
                if item is None:
                    if not self._walker.finished:
                        break  # this call's share of the walk is spent
                    self._end_archive()
                else:
                    self._start(item)
            else:
                break
        return b"".join(parts)

    def close(self) -> None:
        """Release every descriptor; the stream is over, finished or not."""
        self._walker.close()
        if self._check is not None:
            self._check.close()
            self._check = None
        if self._file_fd >= 0:
            os.close(self._file_fd)
            self._file_fd = -1

    def __enter__(self) -> ZipStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # Producing entries

    def _queue(self, data: bytes) -> None:
        self._out.append(data)
        self._offset += len(data)

    def _check_limits(self, entries: int, central: int) -> None:
        if entries > self.max_entries:
            raise _too_large(f"it holds more than {self.max_entries:,} entries")
        if central > self.max_central_bytes:
            raise _too_large("its names are too many and too long for one archive's directory")

    def _start(self, item: Item) -> None:
        name = item.name.encode("utf-8")
        st = item.st
        assert st is not None  # a walk that opens files always has the stat
        self._check_limits(len(self._central) + 1, self.central_bytes + _CENTRAL_FIXED + len(name))
        offset = self._offset
        dtime, ddate = dos_datetime(st.st_mtime)
        if item.is_dir:
            self._queue(
                _LOCAL.pack(
                    _LOCAL_SIG, _VERSION, _FLAG_UTF8, 0, dtime, ddate, 0, 0, 0, len(name), 0
                )
                + name
            )
            self._add_central(name, st, offset, 0, 0, False)
            return
        # The size at open decides the descriptor's form, and is the most that will be read:
        # a growing file cannot outgrow the 4-byte sizes it announced.
        zip64 = st.st_size >= self.zip64_threshold
        extra = struct.pack("<HHQQ", 1, 16, 0, 0) if zip64 else b""
        size_field = ZIP64_LIMIT if zip64 else 0
        self._queue(
            _LOCAL.pack(
                _LOCAL_SIG,
                _VERSION64 if zip64 else _VERSION,
                _FLAG_UTF8 | _FLAG_DESCRIPTOR,
                0,
                dtime,
                ddate,
                0,
                size_field,
                size_field,
                len(name),
                len(extra),
            )
            + name
            + extra
        )
        self._file_fd = item.fd
        self._file_pos = 0
        self._file_left = st.st_size
        self._crc = 0
        self._entry = (name, st, offset, zip64)

    def _end_file(self) -> None:
        os.close(self._file_fd)
        self._file_fd = -1
        assert self._entry is not None
        name, st, offset, zip64 = self._entry
        self._entry = None
        size, crc = self._file_pos, self._crc
        if zip64:
            self._queue(struct.pack("<IIQQ", _DESCRIPTOR_SIG, crc, size, size))
        else:
            self._queue(struct.pack("<IIII", _DESCRIPTOR_SIG, crc, size, size))
        self._add_central(name, st, offset, size, crc, zip64)

    def _add_central(
        self, name: bytes, st: os.stat_result, offset: int, size: int, crc: int, zip64: bool
    ) -> None:
        limit = self.zip64_threshold
        fields: list[int] = []
        size_field = size
        if zip64 or size >= limit:
            size_field = ZIP64_LIMIT
            fields += [size, size]  # APPNOTE 4.5.3: original size, then compressed size
        offset_field = offset
        if offset >= limit:
            offset_field = ZIP64_LIMIT
            fields.append(offset)
        extra = struct.pack(f"<HH{len(fields)}Q", 1, 8 * len(fields), *fields) if fields else b""
        is_dir = stat.S_ISDIR(st.st_mode)
        # The permission bits only: never set-user-ID and the like on whoever unpacks it.
        mode = (stat.S_IFDIR if is_dir else stat.S_IFREG) | (st.st_mode & 0o777)
        dtime, ddate = dos_datetime(st.st_mtime)
        version = _VERSION64 if fields else _VERSION
        record = (
            _CENTRAL.pack(
                _CENTRAL_SIG,
                _MADE_BY_UNIX | version,
                version,
                _FLAG_UTF8 | (0 if is_dir else _FLAG_DESCRIPTOR),
                0,
                dtime,
                ddate,
                crc,
                size_field,
                size_field,
                len(name),
                len(extra),
                0,
                0,
                0,
                (mode << 16) | (_MSDOS_DIR if is_dir else 0),
                offset_field,
            )
            + name
            + extra
        )
        self._central.append(record)
        self.central_bytes += len(record)

    def _end_archive(self) -> None:
        self._ended = True
        start, size, count = self._offset, self.central_bytes, len(self._central)
        for record in self._central:
            self._queue(record)
        self._central = []  # the queue holds them now, and lets each go once it is sent
        limit = self.zip64_threshold
        if count >= 0xFFFF or size >= limit or start >= limit:
            end64 = self._offset
            self._queue(
                struct.pack(
                    "<IQHHIIQQQQ",
                    _END64_SIG,
                    44,  # the record's size after this field
                    _MADE_BY_UNIX | _VERSION64,
                    _VERSION64,
                    0,
                    0,
                    count,
                    count,
                    size,
                    start,
                )
                + struct.pack("<IIQI", _LOCATOR64_SIG, 0, end64, 1)
            )
            count16 = min(count, 0xFFFF)
            size32 = size if size < limit else ZIP64_LIMIT
            start32 = start if start < limit else ZIP64_LIMIT
        else:
            count16, size32, start32 = count, size, start
        self._queue(struct.pack("<IHHHHIIH", _END_SIG, 0, 0, count16, count16, size32, start32, 0))
