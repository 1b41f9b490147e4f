"""A cache of answered GETs, so a repeated request skips path resolution and file reads.

Theory of operation
-------------------
The slow path (``Handler.begin``) resolves a path safely (realpath, root check, hidden names),
stats and opens the file, and builds the headers. For a plain ``200`` to a GET, this module
remembers the result under the request's raw path (and its ``Accept-Encoding``, which can select
a different file): the file it named, the file's identity (device, inode, size, mtime in ns), the
encoded header block, and, for a small file, its bytes.

A later request for the same key is answered from the entry only after one ``stat`` of that
file shows the same identity. That check carries both guarantees:

* **Never stale.** Any write to the file changes its size or mtime_ns, and a replacement
  (``os.replace`` by a PUT, an editor's save-as) changes its inode. Either makes the entry miss.
* **Never outside the root.** The entry was filled by the safe slow path. If a folder on the way
  is later swapped for a symlink, ``stat`` follows it to some other inode, and the entry misses;
  if it leads to the very same inode, it is the very same file we checked.

Precompressed sidecars are never cached: whether one may be served depends on its original
too. Decisions that do not show in the file's identity (whether a sidecar has appeared, what a
folder's index is) are re-checked by sending the key through the slow path again once an entry
is older than ``MAX_AGE_S``. Requests whose answer depends on more than path and encoding
(conditionals, ranges) always take the slow path. The cache is bounded in entries and in bytes.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from http import HTTPStatus

from .parser import Request
from .responses import Response, encode_middle

MAX_ENTRIES = 1024
MAX_BODY_BYTES = 64 * 1024  # files up to this size are kept in memory and sent with the head
MAX_TOTAL_BYTES = 32 * 1024 * 1024
MAX_AGE_S = 1.0

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
_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC


class Entry:
    __slots__ = ("body", "filled_at", "identity", "length", "middle", "path")

    def __init__(
        self,
        path: str,
        identity: tuple[int, int, int, int],
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


class ResponseCache:
    """Maps (raw path, Accept-Encoding) to an :class:`Entry`; see the module docstring."""

    __slots__ = ("_entries", "_extra", "_total", "hits", "misses")

    def __init__(self, extra_headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
        self._entries: OrderedDict[tuple[bytes, bytes | None], Entry] = OrderedDict()
        self._extra = extra_headers
        self._total = 0
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(req: Request) -> tuple[bytes, bytes | None] | None:
        """The cache key for ``req``, or None when the request must take the slow path."""
        method = req.method
        if method != _GET and method != _HEAD:
            return None
        encoding = None
        for name, value in req.headers:
            if name in _BYPASS:
                return None
            if name == b"accept-encoding":
                if encoding is not None:
                    return None
                encoding = value
        return req.path, encoding

    def lookup(
        self, key: tuple[bytes, bytes | None], head_only: bool, now: float
    ) -> Response | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if now - entry.filled_at > MAX_AGE_S:
            self._drop(key)
            return None
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
        if (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns) != entry.identity:
            if fd >= 0:
                os.close(fd)
            self._drop(key)
            return None
        self.hits += 1
        self._entries.move_to_end(key)
        resp = Response(HTTPStatus.OK, middle=entry.middle)
        if head_only:
            return resp
        if entry.body is not None:
            resp.body = entry.body
        else:
            resp.file_fd = fd
            resp.spans = [(b"", 0, entry.length)]
        return resp

    def store(self, key: tuple[bytes, bytes | None], resp: Response, now: float) -> None:
        """Remember a slow-path answer if it is a whole-file 200.

        A small body is read into the entry, and ``resp`` is switched to send it from memory
        too, so even the first answer saves the ``sendfile`` call.
        """
        self.misses += 1
        if resp.status != HTTPStatus.OK or resp.file_fd < 0 or len(resp.spans) != 1:
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
            (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns),
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

    def _drop(self, key: tuple[bytes, bytes | None]) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None and entry.body is not None:
            self._total -= len(entry.body)
