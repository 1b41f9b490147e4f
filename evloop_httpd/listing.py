"""Directory listings (``--listing``): what a folder without index.html shows, as HTML or JSON.

Theory of operation
-------------------
:func:`scan` reads a folder once, through a descriptor of the folder the handler checked (never
by name, so a folder swapped for a symlink cannot list somewhere else), and keeps only the
entries a client could also fetch: names that the path rules of :mod:`files` accept as one
segment (:func:`files.servable_name`: no dotfiles unless ``--dotfiles``, never our upload temp
files, nothing that would decode to a refused path), no symlink that leaves the root (unless
``--follow-symlinks``), and only regular files and folders. So the listing never shows a name
that a GET would refuse. Every entry read counts against ``MAX_SCANNED``, skipped ones too:
that bound is on the work (one ``stat`` per entry, then the render), not just on the output.

:func:`render_html` and :func:`render_json` are pure: names are HTML-escaped for display and
percent-encoded for links (relative links, which is right because a listing URL always ends in
``/``). Entries are sorted folders first, then by name, so the output is deterministic.

:class:`ListingCache` keeps rendered pages, keyed on the folder's identity (device, inode,
mtime and ctime in ns: adding, removing or renaming an entry changes the mtime), the format and
the URL path, for at most ``MAX_AGE_S``, since a file's own size or date changing in place does
not touch its folder. Repeats, HEADs and 304s within that time cost one ``fstat`` of the folder.
"""

from __future__ import annotations

import html
import json
import os
import stat
import time
from collections import OrderedDict
from dataclasses import dataclass
from urllib.parse import quote

from .errors import HttpError
from .files import http_mtime, locate, servable_name

# One build costs about 5 us per entry read here (a stat, then the render): this keeps a build
# near 6 ms (tests/benchmarks/fs_bench.py), so a client asking for huge folders cannot stall
# the loop for long. nginx's autoindex has no bound, but is C.
MAX_SCANNED = 1_000
MAX_AGE_S = 1.0  # how stale a cached listing may be about a file's size or date
MAX_CACHED = 64  # pages
MAX_CACHED_BYTES = 8 * 1024 * 1024
MAX_CACHED_SCANS = 16  # a scan of MAX_SCANNED entries holds about 0.3 MiB

JSON_TYPE = b"application/json"
HTML_TYPE = b"text/html; charset=utf-8"


@dataclass(frozen=True, slots=True)
class Entry:
    name: str
    is_dir: bool
    size: int
    mtime: float | None  # None: outside what a date can show (see files.http_mtime)


def scan(
    folder_fd: int, folder_real: str, root_real: str, *, dotfiles: bool, follow_symlinks: bool
) -> tuple[list[Entry], bool]:
    """The listable entries of the folder open as ``folder_fd`` (read, not closed), sorted,
    and whether the list was cut short. ``folder_real`` is its path, used only to check where
    a symlink in it leads."""
    entries: list[Entry] = []
    truncated = False
    scanned = 0
    with os.scandir(folder_fd) as it:
        for de in it:
            scanned += 1
            if scanned > MAX_SCANNED:
                truncated = True
                break
            name = de.name
            if not servable_name(name, dotfiles):
                continue
            try:
                if de.is_symlink():
                    # Where it leads is checked on what the kernel opens, as for a GET.
                    found = locate(
                        root_real,
                        os.path.join(folder_real, name),
                        follow_symlinks=follow_symlinks,
                    )
                    os.close(found.fd)
                    st = found.st
                else:
                    st = de.stat(follow_symlinks=False)
            except (OSError, HttpError):
                continue  # a broken link, a link out, or a file removed while we looked
            is_dir = stat.S_ISDIR(st.st_mode)
            if not is_dir and not stat.S_ISREG(st.st_mode):
                continue
            entries.append(Entry(name, is_dir, 0 if is_dir else st.st_size, http_mtime(st)))
    entries.sort(key=lambda e: (not e.is_dir, e.name))
    return entries, truncated


def _href(e: Entry) -> str:
    return quote(e.name, safe="") + ("/" if e.is_dir else "")


def _when(mtime: float | None, fmt: str = "%Y-%m-%d %H:%M:%S") -> str | None:
    return None if mtime is None else time.strftime(fmt, time.gmtime(mtime))


def _shown(text: str) -> str:
    # HTML-escaped, and a bidi override or another invisible format character is shown as
    # \uXXXX: otherwise a name could display as a different one ("gpj.exe" as "exe.jpg").
    if not text.isprintable():
        text = "".join(c if c.isprintable() else f"\\u{ord(c):04x}" for c in text)
    return html.escape(text)


def render_html(url_path: str, entries: list[Entry], truncated: bool) -> bytes:
    """An HTML page listing ``entries`` of the folder at (decoded) ``url_path``."""
    title = _shown(f"Index of {url_path}")
    rows = []
    if url_path != "/":
        rows.append('<tr><td><a href="../">../</a></td><td></td><td></td></tr>')
    for e in entries:
        shown = _shown(e.name + ("/" if e.is_dir else ""))
        size = "-" if e.is_dir else str(e.size)
        rows.append(
            f'<tr><td><a href="{html.escape(_href(e))}">{shown}</a></td>'
            f'<td class="size">{size}</td><td>{_when(e.mtime) or "-"}</td></tr>'
        )
    note = f"<p>Only the first {len(entries)} entries are shown.</p>\n" if truncated else ""
    page = (
        "<!DOCTYPE html>\n"
        '<html><head><meta charset="utf-8">'
        f"<title>{title}</title>"
        "<style>td{padding:0 1em}.size{text-align:right}</style></head>\n"
        f"<body><h1>{title}</h1>\n"
        "<table><tr><th>Name</th><th>Size (bytes)</th><th>Modified (UTC)</th></tr>\n"
        + "\n".join(rows)
        + f"\n</table>\n{note}</body></html>\n"
    )
    return page.encode("utf-8")


def render_json(url_path: str, entries: list[Entry], truncated: bool) -> bytes:
    """The same listing as JSON: ``{"path", "entries": [{name, type, size, mtime, href}], ...}``."""
    doc = {
        "path": url_path,
        "entries": [
            {
                "name": e.name,
                "type": "directory" if e.is_dir else "file",
                "size": e.size,
                "mtime": _when(e.mtime, "%Y-%m-%dT%H:%M:%SZ"),
                "href": _href(e),
            }
            for e in entries
        ],
        "truncated": truncated,
    }
    # ASCII only: the same data for any JSON reader, and a terminal showing it raw (curl) gets
    # no bidi override or other control character from a file name.
    return (json.dumps(doc) + "\n").encode("ascii")


@dataclass(frozen=True, slots=True)
class Page:
    """A rendered listing: its Content-Type, bytes, ETag, and when the scan it shows was made
    (monotonic seconds)."""

    ctype: bytes
    body: bytes
    etag: bytes
    built: float


@dataclass(frozen=True, slots=True)
class Scan:
    """The result of :func:`scan`, and when it was made (monotonic seconds)."""

    entries: list[Entry]
    truncated: bool
    built: float


# (st_dev, st_ino, st_mtime_ns, st_ctime_ns): a folder as it is now
FolderKey = tuple[int, int, int, int]
# the folder, then is_json and the URL path
PageKey = tuple[FolderKey, bool, str]


def folder_key(st: os.stat_result) -> FolderKey:
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns)


def page_key(st: os.stat_result, is_json: bool, url_path: str) -> PageKey:
    return (folder_key(st), is_json, url_path)


class ListingCache:
    """Rendered pages, and the scans they were made from (so the HTML and the JSON form of a
    folder share one scan), each bounded in count, pages also in bytes; least recently used
    dropped first. Nothing is older than ``MAX_AGE_S``: a page expires with its scan."""

    __slots__ = ("_pages", "_scans", "_total")

    def __init__(self) -> None:
        self._pages: OrderedDict[PageKey, Page] = OrderedDict()
        self._scans: OrderedDict[FolderKey, Scan] = OrderedDict()
        self._total = 0

    def get(self, key: PageKey, now: float) -> Page | None:
        page = self._pages.get(key)
        if page is None:
            return None
        if now - page.built > MAX_AGE_S:
            self._drop(key)
            return None
        self._pages.move_to_end(key)
        return page

    def put(self, key: PageKey, page: Page) -> None:
        self._drop(key)
        self._pages[key] = page
        self._total += len(page.body)
        while len(self._pages) > MAX_CACHED or self._total > MAX_CACHED_BYTES:
            self._drop(next(iter(self._pages)))

    def get_scan(self, key: FolderKey, now: float) -> Scan | None:
        found = self._scans.get(key)
        if found is None:
            return None
        if now - found.built > MAX_AGE_S:
            del self._scans[key]
            return None
        self._scans.move_to_end(key)
        return found

    def put_scan(self, key: FolderKey, found: Scan) -> None:
        self._scans.pop(key, None)
        self._scans[key] = found
        while len(self._scans) > MAX_CACHED_SCANS:
            del self._scans[next(iter(self._scans))]

    def _drop(self, key: PageKey) -> None:
        page = self._pages.pop(key, None)
        if page is not None:
            self._total -= len(page.body)
