"""Directory listings (``--listing``): what a folder without index.html shows, as HTML or JSON.

Theory of operation
-------------------
:func:`scan` reads a folder once and keeps only the entries a client could also fetch: no
dotfiles (unless ``--dotfiles``), never our upload temp files, no name that the path rules of
:mod:`files` would refuse (not UTF-8, control characters, backslashes), no symlink that leaves
the root (unless ``--follow-symlinks``), and only regular files and folders. So the listing
never reveals a name that a GET would hide. It stops at ``MAX_ENTRIES`` and says so, so a huge
folder costs bounded memory and time.

:func:`render_html` and :func:`render_json` are pure: names are HTML-escaped for display and
percent-encoded for links (relative links, which is right because a listing URL always ends in
``/``). Entries are sorted folders first, then by name, so the output is deterministic.
"""

from __future__ import annotations

import html
import json
import os
import stat
import time
from dataclasses import dataclass
from urllib.parse import quote

from .files import inside, is_upload_temp

MAX_ENTRIES = 10_000  # a listing is built in memory; more than this is not for reading anyway

JSON_TYPE = b"application/json"
HTML_TYPE = b"text/html; charset=utf-8"


@dataclass(frozen=True, slots=True)
class Entry:
    name: str
    is_dir: bool
    size: int
    mtime: float


def _servable_name(name: str, dotfiles: bool) -> bool:
    if is_upload_temp(name) or (name.startswith(".") and not dotfiles):
        return False
    try:
        name.encode("utf-8")  # os.scandir keeps undecodable bytes as surrogates
    except UnicodeEncodeError:
        return False
    return "\\" not in name and not any(ord(c) < 0x20 or ord(c) == 0x7F for c in name)


def scan(
    folder: str, root_real: str, *, dotfiles: bool, follow_symlinks: bool
) -> tuple[list[Entry], bool]:
    """The listable entries of ``folder``, sorted, and whether the list was cut short."""
    entries: list[Entry] = []
    truncated = False
    with os.scandir(folder) as it:
        for de in it:
            if not _servable_name(de.name, dotfiles):
                continue
            try:
                if (
                    de.is_symlink()
                    and not follow_symlinks
                    and not inside(root_real, os.path.realpath(de.path))
                ):
                    continue
                st = de.stat()  # follows symlinks, as a GET would
            except OSError:
                continue  # a broken link, or a file removed while we looked
            is_dir = stat.S_ISDIR(st.st_mode)
            if not is_dir and not stat.S_ISREG(st.st_mode):
                continue
            if len(entries) >= MAX_ENTRIES:
                truncated = True
                break
            entries.append(Entry(de.name, is_dir, 0 if is_dir else st.st_size, st.st_mtime))
    entries.sort(key=lambda e: (not e.is_dir, e.name))
    return entries, truncated


def _href(e: Entry) -> str:
    return quote(e.name, safe="") + ("/" if e.is_dir else "")


def _when(mtime: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(mtime))


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
            f'<td class="size">{size}</td><td>{_when(e.mtime)}</td></tr>'
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
                "mtime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(e.mtime)),
                "href": _href(e),
            }
            for e in entries
        ],
        "truncated": truncated,
    }
    # ASCII only: the same data for any JSON reader, and a terminal showing it raw (curl) gets
    # no bidi override or other control character from a file name.
    return (json.dumps(doc) + "\n").encode("ascii")
