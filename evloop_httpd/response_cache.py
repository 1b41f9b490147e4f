"""A cache of answered GETs, so a repeated request skips path resolution and file reads.

Theory of operation
-------------------
The slow path (``Handler.begin``) resolves a path safely (realpath, root check, hidden names),
stats and opens the file, and builds the headers. For a plain ``200`` to a GET, this module
remembers the result under the request's raw path and what its ``Accept-Encoding`` accepts
(which can select a different file; see below): the file it named, the file's identity
(device, inode, size, and the mtime and ctime in ns), the encoded header block, and, for a
small file, its bytes.

A later request for the same key is answered from the entry only after one ``stat`` of that
file shows the same identity. That check carries both guarantees:

* **Never stale.** Any write to the file changes its size or mtime_ns, and a replacement
  (``os.replace`` by a PUT, an editor's save-as) changes its inode. Either makes the entry miss.
  The ctime catches the rest: a ``chmod`` (which may make the file unreadable to us), and a
  write whose mtime was then set back (``touch -d``, ``rsync -t``), since no one can set it.
* **Never outside the root.** The entry was filled by the safe slow path. If a folder on the way
  is later swapped for a symlink, ``stat`` follows it to some other inode, and the entry misses;
  if it leads to the very same inode, it is the very same file we checked.

One ``stat`` can vouch for several pipelined requests. ``epoch`` counts arrivals: it moves on
whenever bytes arrive on any connection (:meth:`ResponseCache.next_epoch`), and whenever a
request other than GET or HEAD is answered (a PUT or DELETE may have changed a file). An entry
checked in the current epoch needs no new ``stat``: every request now being answered was already
in our buffers when that check ran, so the check is as fresh as one made for it alone would have
been, and nothing this server did since could have changed the file. A keep-alive request that
comes in its own ``recv`` therefore always gets its own check; a batch of pipelined requests that
came in one shares a check.

The key holds :func:`negotiate.preference` of ``Accept-Encoding`` (which sidecar codings are
acceptable, best first: one of five values), not the raw field: a client could make that
different, and 30 KiB long, on every request, and keys are not counted in the byte budget.
Working it out costs a parse of the field, so results are remembered for short values
(``PROFILE_MEMO_*``), which is all that browsers send.

Precompressed sidecars are never cached: whether one may be served depends on its original
too. Decisions that do not show in the file's identity (whether a sidecar has appeared, what a
folder's index is) are re-checked by sending the key through the slow path again once an entry
is older than ``MAX_AGE_S``. Requests whose answer depends on more than path and encoding
(ranges, If-Match, If-Unmodified-Since, If-Modified-Since alone, an Expect header) always take
the slow path. The cache is bounded in entries and in bytes.

**If-None-Match** (what browsers send to revalidate) is answered from an entry: the entry knows
the ETag the slow path computed from the very identity the check confirms, so after the same
check as any hit, a match is the 304 the handler would send (ETag, Last-Modified, Vary, RFC 9110
§15.4.5) and no match is the 200. With If-None-Match present, If-Modified-Since is ignored
(RFC 9110 §13.2.2 step 4), so requests carrying both (as browsers send them) are served too.
When there is no entry yet (or it expired), :meth:`ResponseCache.revalidate` fills it from the
same GET without those two fields and answers from it, so a client that only revalidates does
not take the slow path forever; what cannot be cached (a listing, a precompressed variant)
goes on to the slow path with the request as it came.

**Missing files** get negative entries, so a repeated 404 skips path resolution too. A missing
file has nothing to stat; what says it is still missing is its folder: adding, removing or
renaming a name in a folder changes the folder's mtime and ctime. An entry is kept only when
the request's last name is absent (``lstat``: a dangling symlink is a name, and not cached)
from a folder that exists, and it holds that folder's identity (device, inode, mtime_ns,
ctime_ns) from a ``stat`` of the folder's path as the request names it (so a folder on the way
swapped or re-pointed resolves to another inode and misses). The check, the arrival epochs and
``MAX_AGE_S`` are those of a hit. One more rule: a folder timestamp is only evidence if a later
change cannot get the *same* timestamp. The kernel stamps changes from a clock that advances
in ticks (and some filesystems keep whole seconds), so a folder changed within the last
``RACY_S`` (``RACY_COARSE_S`` on a filesystem whose stamps are whole seconds) is not cached,
as git does for its index ("racy git"). Only the 404 of a missing name is cached; other 404s
(a folder without index, a FIFO, a name outside the root) and hidden names that exist always
take the slow path.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import stat
import time
from collections import OrderedDict
from collections.abc import Callable
from http import HTTPStatus

from .conditional import Outcome, evaluate
from .errors import HttpError
from .files import decode_segments, os_error_to_http, under_root
from .form_upload import FormUpload
from .negotiate import preference
from .parser import Request
from .responses import Response, encode_middle, error_response
from .upload import Upload

MAX_ENTRIES = 1024
# Files up to this size are kept in memory and sent with the head in one send: a 100 KiB
# file from memory costs less than open+fstat+sendfile+close and the Python around them.
MAX_BODY_BYTES = 128 * 1024
MAX_TOTAL_BYTES = 32 * 1024 * 1024
MAX_AGE_S = 1.0
PROFILE_MEMO_ENTRIES = 256  # distinct short Accept-Encoding values remembered; then forgotten
PROFILE_MEMO_VALUE_BYTES = 256  # longer values are parsed each time (bounded: negotiate.py)
MAX_MISSING = 1024  # negative entries (404s), apart from the others
MAX_MISSING_PATH_BYTES = 1024  # longer paths are not remembered: a flood of them costs memory
RACY_S = 0.05  # a folder changed this recently is no evidence: several kernel ticks (HZ >= 100)
RACY_COARSE_S = 2.0  # the same where stamps are whole seconds (FAT keeps 2 s)

# Headers that make the answer depend on more than the path: always the slow path.
_BYPASS = frozenset({b"range", b"if-match", b"if-unmodified-since", b"if-range"})
_IF_NONE_MATCH, _IF_MODIFIED_SINCE = b"if-none-match", b"if-modified-since"
_VALIDATORS = frozenset({b"ETag", b"Last-Modified", b"Vary"})  # what a 304 repeats
_GET, _HEAD = b"GET", b"HEAD"
_OK = HTTPStatus.OK  # a module constant: Enum member access from the class is Python code
_NOT_MODIFIED = HTTPStatus.NOT_MODIFIED
_NOT_FOUND = HTTPStatus.NOT_FOUND
# What the handler raises for a name that does not exist: the only 404 remembered.
_MISSING = os_error_to_http(FileNotFoundError(errno.ENOENT, "missing"))
_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC


Key = tuple[bytes, tuple[bytes, ...]]  # (raw path, negotiate.preference of Accept-Encoding)


class Entry:
    __slots__ = (
        "body",
        "checked_in",
        "etag",
        "filled_at",
        "head_only",
        "identity",
        "in_memory",
        "length",
        "middle",
        "not_modified",
        "path",
    )

    def __init__(
        self,
        path: str,
        identity: tuple[int, int, int, int, int],
        middle: bytes,
        length: int,
        body: bytes | None,
        filled_at: float,
        etag: bytes | None = None,
        validators: bytes = b"",
    ) -> None:
        self.path = path
        self.identity = identity
        self.middle = middle
        self.length = length
        self.body = body
        self.filled_at = filled_at
        self.checked_in = -1  # the epoch of the last stat that matched
        # Answers that need no descriptor are the same every time: made once, shared by every
        # hit (nothing downstream mutates a Response).
        self.head_only = Response(_OK, middle=middle)
        self.in_memory = None if body is None else Response(_OK, body=body, middle=middle)
        self.etag = etag
        self.not_modified = Response(_NOT_MODIFIED, middle=validators)


class Missing:
    """A negative entry: the 404 for a name absent from ``folder`` (see the module docstring)."""

    __slots__ = ("checked_in", "filled_at", "folder", "get", "head", "identity")

    def __init__(
        self,
        folder: str,
        identity: tuple[int, int, int, int],
        get: Response,
        head: Response,
        filled_at: float,
    ) -> None:
        self.folder = folder
        self.identity = identity
        self.get = get
        self.head = head
        self.filled_at = filled_at
        self.checked_in = -1


class ResponseCache:
    """Maps (raw path, accepted codings) to an :class:`Entry`; see the module docstring."""

    __slots__ = (
        "_entries",
        "_extra",
        "_missing",
        "_profiles",
        "_total",
        "epoch",
        "hits",
        "if_none_match",
    )

    def __init__(self, extra_headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
        self._entries: OrderedDict[Key, Entry] = OrderedDict()
        self._missing: OrderedDict[Key, Missing] = OrderedDict()
        # The If-None-Match of the request key() was last given (None: none), for the lookup
        # that follows it on the same step.
        self.if_none_match: bytes | None = None
        self._profiles: dict[bytes, tuple[bytes, ...]] = {}
        self._extra = extra_headers
        self._total = 0
        self.hits = 0  # read by the tests: proof that a request took this path
        self.epoch = 0

    def next_epoch(self) -> None:
        """Bytes arrived, or a file may have changed: checks made so far vouch for nothing new."""
        self.epoch += 1

    def key(self, req: Request) -> Key | None:
        """The cache key for ``req``, or None when the request must take the slow path."""
        method = req.method
        if method != _GET and method != _HEAD:
            return None
        if req.expect is not None:
            return None  # an expectation we do not meet is a 417: the handler decides
        encoding = if_none_match = None
        if_modified_since = False
        for name, value in req.headers:
            if name in _BYPASS:
                return None
            if name == b"accept-encoding":
                if encoding is not None:
                    return None
                encoding = value
            elif name == _IF_NONE_MATCH:
                if if_none_match is not None:
                    return None  # repeated: the handler reads the fields as one list
                if_none_match = value
            elif name == _IF_MODIFIED_SINCE:
                if_modified_since = True
        if if_modified_since and if_none_match is None:
            return None  # a date comparison the entry does not make
        self.if_none_match = if_none_match
        if encoding is None:
            return req.path, ()
        profile = self._profiles.get(encoding)
        if profile is None:
            profile = preference(encoding)
            if len(encoding) <= PROFILE_MEMO_VALUE_BYTES:
                if len(self._profiles) >= PROFILE_MEMO_ENTRIES:
                    self._profiles.clear()
                self._profiles[encoding] = profile
        return req.path, profile

    def lookup(
        self, key: Key, head_only: bool, now: float, if_none_match: bytes | None = None
    ) -> Response | None:
        """The answer for ``key`` if an entry holds one that is still right, else None.

        ``if_none_match`` is the request's field (:attr:`if_none_match` after :meth:`key`).
        """
        entry = self._entries.get(key)
        if entry is None:
            return None if not self._missing else self._lookup_missing(key, head_only, now)
        if now - entry.filled_at > MAX_AGE_S:
            self._drop(key)
            return None
        not_modified = if_none_match is not None and _none_match(if_none_match, entry.etag)
        if not_modified:
            head_only = True  # no body to send, so no descriptor to open
        if entry.checked_in == self.epoch and (head_only or entry.body is not None):
            self.hits += 1  # (and the entry was moved to the LRU end when it was checked)
            if not_modified:
                return entry.not_modified
            return entry.head_only if head_only else entry.in_memory
        try:
            if entry.body is not None or head_only:
                st = os.stat(entry.path)
                fd = -1
            else:
                fd = os.open(entry.path, _OPEN_FLAGS)
                st = os.fstat(fd)
        except OSError:
            self._drop(key)
            return None
        if (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns) != entry.identity:
            if fd >= 0:
                os.close(fd)
            self._drop(key)
            return None
        self.hits += 1
        self._entries.move_to_end(key)
        if fd < 0:
            entry.checked_in = self.epoch
            if not_modified:
                return entry.not_modified
            return entry.head_only if head_only else entry.in_memory
        return Response(_OK, file_fd=fd, spans=[(b"", 0, entry.length)], middle=entry.middle)

    def store(self, key: Key, resp: Response, now: float) -> None:
        """Remember a slow-path answer if it is a whole-file 200.

        A small body is read into the entry, and ``resp`` is switched to send it from memory
        too, so even the first answer saves the ``sendfile`` call.
        """
        if resp.status != _OK or resp.file_fd < 0 or len(resp.spans) != 1:
            return
        if resp.body or resp.trailer or resp.spans[0][:2] != (b"", 0):
            return
        if any(name == b"Content-Encoding" for name, _ in resp.headers):
            # A precompressed sidecar is only right while its original is not newer, and a hit
            # re-checks just the file it serves: leave variants to the handler every time.
            return
        try:
            # The path the kernel actually opened: Linux names it here, symlinks resolved.
            path = os.readlink(f"/proc/self/fd/{resp.file_fd}")
        except OSError:
            return  # no /proc (not Linux): no cache, only the slow path
        if not path.startswith("/"):
            return
        st = os.fstat(resp.file_fd)
        length = resp.spans[0][2]
        if length != st.st_size:
            return
        body = None
        if length <= MAX_BODY_BYTES:
            body = os.pread(resp.file_fd, length, 0)
            if len(body) != length:
                return  # changed while we read it: do not remember
        self._drop(key)
        self._missing.pop(key, None)
        validators = [(name, value) for name, value in resp.headers if name in _VALIDATORS]
        entry = Entry(
            path,
            (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns),
            encode_middle(resp.headers, self._extra),
            length,
            body,
            now,
            next((value for name, value in validators if name == b"ETag"), None),
            encode_middle(validators, self._extra),
        )
        self._entries[key] = entry
        if body is not None:
            self._total += len(body)
            os.close(resp.file_fd)
            resp.file_fd = -1
            resp.spans = []
            resp.body = body
        while len(self._entries) > MAX_ENTRIES or self._total > MAX_TOTAL_BYTES:
            self._drop(next(iter(self._entries)))

    def store_missing(self, key: Key, exc: HttpError, root_real: str, now: float) -> None:
        """Remember the slow path's 404 ``exc`` for ``key`` if it says the name is missing and a
        folder vouches for that (see the module docstring); otherwise do nothing."""
        if exc.status != _NOT_FOUND or exc.detail != _MISSING.detail or exc.headers or exc.close:
            return
        if len(key[0]) > MAX_MISSING_PATH_BYTES:
            return
        try:
            segments = decode_segments(key[0])[0]
        except HttpError:
            return
        if not segments:
            return
        folder = under_root(root_real, segments[:-1]).rstrip("/") or "/"
        wall_ns = time.time_ns()
        # The folder first, then the name: a name created before the lstat shows in it, and
        # one created after it changes the folder after the stat whose identity is kept.
        try:
            st = os.stat(folder)
        except OSError:
            return  # the folder is missing too, or unreadable: not the simple case
        try:
            os.lstat(folder + "/" + segments[-1])
        except FileNotFoundError:
            pass
        except OSError:
            return  # ENOTDIR, EACCES, ...: not a plain missing name
        else:
            return  # the name exists now (a hidden name, a FIFO, or it just appeared)
        if not stat.S_ISDIR(st.st_mode) or is_racy(st, wall_ns):
            return
        get = error_response(exc)
        head = error_response(exc, head_only=True)
        self._drop(key)
        self._missing.pop(key, None)
        self._missing[key] = Missing(
            folder,
            (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns),
            Response(get.status, body=get.body, middle=encode_middle(get.headers, self._extra)),
            Response(head.status, middle=encode_middle(head.headers, self._extra)),
            now,
        )
        while len(self._missing) > MAX_MISSING:
            self._missing.popitem(last=False)

    def _lookup_missing(self, key: Key, head_only: bool, now: float) -> Response | None:
        miss = self._missing.get(key)
        if miss is None:
            return None
        if now - miss.filled_at > MAX_AGE_S:
            del self._missing[key]
            return None
        if miss.checked_in != self.epoch:
            try:
                st = os.stat(miss.folder)
            except OSError:
                del self._missing[key]
                return None
            if (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns) != miss.identity:
                del self._missing[key]
                return None
            miss.checked_in = self.epoch
            self._missing.move_to_end(key)
        self.hits += 1
        return miss.head if head_only else miss.get

    def revalidate(
        self,
        key: Key,
        req: Request,
        begin: Callable[[Request, float], Response | Upload | FormUpload],
        wall: float,
        now: float,
    ) -> Response | None:
        """Answer a GET with If-None-Match that found no entry by filling one first.

        ``begin`` (``Handler.begin``) answers the request without its If-None-Match and
        If-Modified-Since: a plain 200 is stored and the conditional answered from the entry.
        Returns None, having closed what it opened, when the answer is not one the cache keeps;
        the caller then asks the handler with ``req`` itself. An ``HttpError`` (a 404, a 403)
        propagates: the handler gives the conditional request the same, since preconditions
        are evaluated only on what would be a 2xx (RFC 9110 §13.2.1).
        """
        if_none_match = self.if_none_match
        if req.method != _GET or if_none_match is None:
            return None
        plain = dataclasses.replace(
            req,
            headers=[
                (name, value)
                for name, value in req.headers
                if name != _IF_NONE_MATCH and name != _IF_MODIFIED_SINCE
            ],
        )
        resp = begin(plain, wall)
        if not isinstance(resp, Response):  # cannot be, for a GET; would be a bug upstream
            resp.abort()
            return None
        if resp.producer is not None:
            # A produced body (a folder's ZIP) has no validators, so If-None-Match cannot
            # match it: the plan is the answer. Dropping it would leak its open walk.
            return resp
        if resp.file_fd >= 0:
            self.store(key, resp, now)
        entry = self._entries.get(key)  # (a failed lookup dropped the key: any entry is new)
        if entry is None or not _none_match(if_none_match, entry.etag):
            if entry is not None:
                return resp  # the 200 the conditional request gets too
            if resp.file_fd >= 0:
                os.close(resp.file_fd)
            return None
        if resp.file_fd >= 0:
            os.close(resp.file_fd)
        self.hits += 1
        return entry.not_modified

    def _drop(self, key: Key) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None and entry.body is not None:
            self._total -= len(entry.body)


def is_racy(st: os.stat_result, wall_ns: int) -> bool:
    """Was the folder ``st`` changed so recently (before ``time.time_ns()`` gave ``wall_ns``)
    that a change now could get the same stamps? Then its stamps are no evidence."""
    stamp = max(st.st_mtime_ns, st.st_ctime_ns)
    coarse = st.st_mtime_ns % 1_000_000_000 == 0 and st.st_ctime_ns % 1_000_000_000 == 0
    return wall_ns - stamp < (RACY_COARSE_S if coarse else RACY_S) * 1e9


def _none_match(value: bytes, etag: bytes | None) -> bool:
    """RFC 9110 §13.1.2 for GET and HEAD: does If-None-Match ``value`` match ``etag``?"""
    if etag is None:
        return False
    if value == etag:
        return True  # what a browser sends back: the common case, without parsing
    fields = {_IF_NONE_MATCH: value}
    return evaluate(_GET, fields.get, etag, None) is Outcome.NOT_MODIFIED
