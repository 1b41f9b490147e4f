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
(conditionals, ranges, an Expect header) always take the slow path. The cache is bounded in
entries and in bytes.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from http import HTTPStatus

from .negotiate import preference
from .parser import Request
from .responses import Response, encode_middle

MAX_ENTRIES = 1024
MAX_BODY_BYTES = 64 * 1024  # files up to this size are kept in memory and sent with the head
MAX_TOTAL_BYTES = 32 * 1024 * 1024
MAX_AGE_S = 1.0
PROFILE_MEMO_ENTRIES = 256  # distinct short Accept-Encoding values remembered; then forgotten
PROFILE_MEMO_VALUE_BYTES = 256  # longer values are parsed each time (bounded: negotiate.py)

# Headers that make the answer depend on more than the path: always the slow path.
_BYPASS = frozenset(
    {
        b"range",
        b"if-match",
        b"if-none-match",
        b"if-modified-since",
        b"if-unmodified-since",
        b"if-range",
    }
)
_GET, _HEAD = b"GET", b"HEAD"
_OK = HTTPStatus.OK  # a module constant: Enum member access from the class is Python code
_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC


Key = tuple[bytes, tuple[bytes, ...]]  # (raw path, negotiate.preference of Accept-Encoding)


class Entry:
    __slots__ = (
        "body",
        "checked_in",
        "filled_at",
        "head_only",
        "identity",
        "in_memory",
        "length",
        "middle",
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


class ResponseCache:
    """Maps (raw path, accepted codings) to an :class:`Entry`; see the module docstring."""

    __slots__ = ("_entries", "_extra", "_profiles", "_total", "epoch", "hits")

    def __init__(self, extra_headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
        self._entries: OrderedDict[Key, Entry] = OrderedDict()
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
        encoding = None
        for name, value in req.headers:
            if name in _BYPASS:
                return None
            if name == b"accept-encoding":
                if encoding is not None:
                    return None
                encoding = value
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

    def lookup(self, key: Key, head_only: bool, now: float) -> Response | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if now - entry.filled_at > MAX_AGE_S:
            self._drop(key)
            return None
        if entry.checked_in == self.epoch and (head_only or entry.body is not None):
            self.hits += 1  # (and the entry was moved to the LRU end when it was checked)
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
        entry = Entry(
            path,
            (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns),
            encode_middle(resp.headers, self._extra),
            length,
            body,
            now,
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

    def _drop(self, key: Key) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None and entry.body is not None:
            self._total -= len(entry.body)
