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
``/``). Entries are sorted folders first, then by the :class:`View` the query asks for
(:func:`parse_view`: name, size or date, either way; ties by name), so the output is
deterministic. The HTML page's CSS and script are constants from :mod:`listing_assets`, which
also holds the Content-Security-Policy naming them by hash; no name is ever written into them.

:class:`ListingCache` keeps rendered pages, keyed on the folder's identity (device, inode,
mtime and ctime in ns: adding, removing or renaming an entry changes the mtime), the format,
the URL path, the view (never the raw query, which a client can vary at will) and whether the
page has the upload form, for at most ``MAX_AGE_S``, since a file's own size or date changing
in place does not touch its folder. Repeats, HEADs and 304s within that time cost one ``fstat``
of the folder.
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
from .listing_assets import SCRIPT, STYLE

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


SORT_KEYS = ("name", "size", "date")
ORDERS = ("asc", "desc")
ZIP_QUERY = "?download=zip"


@dataclass(frozen=True, slots=True)
class View:
    """What the query asks of a listing: the sort key and order, and whether it asks for the
    folder as a ZIP instead (``download=zip``, served by :mod:`zipstream`)."""

    sort: str = "name"
    order: str = "asc"
    download_zip: bool = False


def parse_view(query: bytes | None) -> View:
    """The :class:`View` a listing's query names. Unknown parameters and values are ignored
    (the defaults stand), so a cache-busting ``?v=2`` still gets the listing; the first of a
    repeated parameter wins. The query is at most a request line long, so this is bounded."""
    if not query:
        return View()
    sort = order = download = None
    for pair in query.split(b"&"):
        name, _, value = pair.partition(b"=")
        if name == b"sort" and sort is None:
            sort = value.decode("ascii", "replace")
        elif name == b"order" and order is None:
            order = value.decode("ascii", "replace")
        elif name == b"download" and download is None:
            download = value
    return View(
        sort if sort in SORT_KEYS else "name",
        order if order in ORDERS else "asc",
        download == b"zip",
    )


def sort_entries(entries: list[Entry], sort: str, order: str) -> list[Entry]:
    """Folders first, then files, each group by ``sort`` (ties by name) in ``order``."""
    if sort == "size":
        key = _by_size
    elif sort == "date":
        key = _by_date
    else:
        key = _by_name
    desc = order == "desc"
    folders = sorted((e for e in entries if e.is_dir), key=key, reverse=desc)
    return folders + sorted((e for e in entries if not e.is_dir), key=key, reverse=desc)


# All three keys have one type, (number, name), so that a sort is one call whatever the key.
def _by_name(e: Entry) -> tuple[float, str]:
    return (0, e.name)


def _by_size(e: Entry) -> tuple[float, str]:
    return (e.size, e.name)


def _by_date(e: Entry) -> tuple[float, str]:
    return (float("-inf") if e.mtime is None else e.mtime, e.name)  # no date: oldest


_UNITS = ("KiB", "MiB", "GiB", "TiB", "PiB", "EiB")


def human_size(size: int) -> str:
    """``size`` bytes in binary units, three significant digits at most: ``"999 B"``,
    ``"1.0 KiB"``, ``"9.9 MiB"``, ``"10 MiB"``, ``"1023 KiB"``."""
    if size < 1024:
        return f"{size} B"
    value = float(size)
    for unit in _UNITS:
        value /= 1024
        # Rounded as shown: 1023.96 KiB would show as "1024 KiB", so it goes up a unit.
        if round(value) < 1024 or unit == _UNITS[-1]:
            return f"{value:.1f} {unit}" if round(value, 1) < 10 else f"{value:.0f} {unit}"
    raise AssertionError("unreachable")


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


_COLUMNS = (
    ("name", "Name", ""),
    ("size", "Size", ' class="size"'),
    ("date", "Modified (UTC)", ' class="date"'),
)


def _header(view: View) -> str:
    # Each column heading links to its own sort: ascending first, the other way when it is
    # already the sort. The links are relative ("?..."), so they keep the folder's path.
    cells = []
    for key, label, cls in _COLUMNS:
        if key == view.sort:
            flip = "desc" if view.order == "asc" else "asc"
            state = "ascending" if view.order == "asc" else "descending"
            arrow = "\u25b2" if view.order == "asc" else "\u25bc"
            cells.append(
                f'<th scope="col"{cls} aria-sort="{state}"><a href="?sort={key}&amp;order={flip}">'
                f'{label}<span aria-hidden="true"> {arrow}</span></a></th>'
            )
        else:
            cells.append(
                f'<th scope="col"{cls}><a href="?sort={key}&amp;order=asc">{label}</a></th>'
            )
    cells.append('<th scope="col"><span class="visually-hidden">Download</span></th>')
    return "<tr>" + "".join(cells) + "</tr>"


# The overwrite box comes before the file input: a browser sends the fields in tree order, and
# the server decides each file part as it starts (form_upload.py), so it must know by then.
_UPLOAD_FORM = """<form id="upload" method="post" enctype="multipart/form-data" action="./">
<fieldset><legend>Upload files into this folder</legend>
<p><input id="overwrite" type="checkbox" name="overwrite" value="1">
<label for="overwrite">Overwrite files of the same name</label></p>
<p><label for="files">Files:</label>
<input id="files" type="file" name="file" multiple required></p>
<p id="drop" hidden>Or drop files anywhere on this page.</p>
<p><button type="submit">Upload</button></p>
</fieldset>
<ul id="progress" aria-live="polite"></ul>
<p id="summary" role="status"></p>
</form>
"""


def render_html(
    url_path: str,
    entries: list[Entry],
    truncated: bool,
    *,
    view: View = View(),
    can_write: bool = False,
) -> bytes:
    """An HTML page listing ``entries`` of the folder at (decoded) ``url_path``, sorted as
    ``view`` says, with an upload form (and the script driving it) when ``can_write``.

    Every name is escaped for where it goes: HTML-escaped as text and in attributes,
    percent-encoded in links (then HTML-escaped), never written into the script or the style,
    which are constants (see :mod:`listing_assets`)."""
    title = _shown(f"Index of {url_path}")
    rows = []
    if url_path != "/":
        rows.append(
            '<tr><td class="name"><a href="../">../</a></td><td></td><td></td><td></td></tr>'
        )
    for e in sort_entries(entries, view.sort, view.order):
        shown = _shown(e.name + ("/" if e.is_dir else ""))
        href = html.escape(_href(e))
        if e.is_dir:
            size = '<td class="size">-</td>'
            zip_link = (
                f'<a href="{href}{html.escape(ZIP_QUERY)}"'
                f' aria-label="Download {shown} as ZIP">zip</a>'
            )
        else:
            size = f'<td class="size" title="{e.size} bytes">{human_size(e.size)}</td>'
            zip_link = ""
        rows.append(
            f'<tr><td class="name"><a href="{href}">{shown}</a></td>{size}'
            f'<td class="date">{_when(e.mtime) or "-"}</td><td>{zip_link}</td></tr>'
        )
    note = f"<p>Only the first {len(entries)} entries are shown.</p>\n" if truncated else ""
    form = script = ""
    if can_write:
        form = _UPLOAD_FORM
        script = f"<script>{SCRIPT}</script>\n"
    page = (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{title}</title>"
        f"<style>{STYLE}</style></head>\n"
        f"<body><h1>{title}</h1>\n"
        f'<p><a href="{html.escape(ZIP_QUERY)}">Download this folder as ZIP</a></p>\n'
        + form
        + "<table>\n"
        + _header(view)
        + "\n"
        + "\n".join(rows)
        + f"\n</table>\n{note}{script}</body></html>\n"
    )
    return page.encode("utf-8")


def render_json(
    url_path: str, entries: list[Entry], truncated: bool, *, view: View = View()
) -> bytes:
    """The same listing as JSON: ``{"path", "entries": [{name, type, size, mtime, href}],
    "truncated", "zip"}``, sorted as ``view`` says; a folder's entry also has ``zip``, the
    link to download it as a ZIP."""
    listed: list[dict[str, object]] = []
    for e in sort_entries(entries, view.sort, view.order):
        doc: dict[str, object] = {
            "name": e.name,
            "type": "directory" if e.is_dir else "file",
            "size": e.size,
            "mtime": _when(e.mtime, "%Y-%m-%dT%H:%M:%SZ"),
            "href": _href(e),
        }
        if e.is_dir:
            doc["zip"] = _href(e) + ZIP_QUERY
        listed.append(doc)
    top = {"path": url_path, "entries": listed, "truncated": truncated, "zip": ZIP_QUERY}
    # ASCII only: the same data for any JSON reader, and a terminal showing it raw (curl) gets
    # no bidi override or other control character from a file name.
    return (json.dumps(top) + "\n").encode("ascii")


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
# the folder, then is_json, the URL path, the sort key and order, and whether the page has
# the upload form: never the raw query, which a client could make different on every request
PageKey = tuple[FolderKey, bool, str, str, str, bool]


def folder_key(st: os.stat_result) -> FolderKey:
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns)


def page_key(
    st: os.stat_result,
    is_json: bool,
    url_path: str,
    view: View | None = None,
    can_write: bool = False,
) -> PageKey:
    view = view or View()
    return (folder_key(st), is_json, url_path, view.sort, view.order, can_write)


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
