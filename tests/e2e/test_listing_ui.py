"""The listing page people use: sorting, human sizes, ZIP links, the upload form, escaping of
hostile names, and a Content-Security-Policy whose hashes match the inline blocks served."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from pathlib import Path

import pytest

from evloop_httpd.listing import Entry, View, human_size, parse_view, render_html, render_json
from evloop_httpd.listing_assets import SCRIPT, STYLE

from ..helpers import Client, get, request, running

HOSTILE = [
    ('"><script>alert(1)</script>', "%22%3E%3Cscript%3Ealert%281%29%3C%2Fscript%3E"),
    ("' onmouseover='x", "%27%20onmouseover%3D%27x"),
    ("javascript:alert(1)", "javascript%3Aalert%281%29"),  # no scheme: ':' is encoded
    ("</style></script>&amp;", "%3C%2Fstyle%3E%3C%2Fscript%3E%26amp%3B"),
    ("a?b#c", "a%3Fb%23c"),
    ("\u202egpj.exe", "%E2%80%AEgpj.exe"),
]


def rows_of(page: str) -> list[str]:
    """The names the table's rows link to, in order (the parent row left out)."""
    return re.findall(r'<tr><td class="name"><a href="([^"]*)">', page)[
        1 if 'href="../"' in page else 0 :
    ]


def test_hostile_names_escaped_exactly() -> None:
    entries = [Entry(name, False, 1, 0.0) for name, _ in HOSTILE]
    entries.append(Entry('d"<&>', True, 0, 0.0))
    page = render_html('/<x y="1">/', entries, False, can_write=True).decode()
    assert "<title>Index of /&lt;x y=&quot;1&quot;&gt;/</title>" in page
    for name, href in HOSTILE:
        shown = name.replace("\u202e", "\\u202e")
        text = shown.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        text = text.replace('"', "&quot;").replace("'", "&#x27;")
        assert f'<a href="{href}">{text}</a>' in page
    assert (
        '<a href="d%22%3C%26%3E/">d&quot;&lt;&amp;&gt;/</a>' in page
        and '<a href="d%22%3C%26%3E/?download=zip"'
        ' aria-label="Download d&quot;&lt;&amp;&gt;/ as ZIP">zip</a>'
        in page
    )
    # Exactly one script and one style element, and they are the constants: no name in them.
    assert page.count("<script") == 1 and page.count("</script>") == 1
    assert page.count("<style") == 1 and page.count("</style>") == 1
    assert re.search(r"<script>(.*)</script>", page, re.S)[1] == SCRIPT  # type: ignore[index]
    assert re.search(r"<style>(.*)</style>", page, re.S)[1] == STYLE  # type: ignore[index]
    assert "\u202e" not in page
    # No inline event handler anywhere (a CSP hash would not allow one anyway).
    assert not re.search(r"<[^>]*\son\w+=", page)


def test_json_hostile_names_are_data() -> None:
    doc = json.loads(render_json("/", [Entry(n, False, 1, 0.0) for n, _ in HOSTILE], False))
    assert [(e["name"], e["href"]) for e in doc["entries"]] == sorted(HOSTILE)


def test_human_sizes() -> None:
    cases = {
        0: "0 B",
        1023: "1023 B",
        1024: "1.0 KiB",
        1536: "1.5 KiB",
        10 * 1024 - 1: "10 KiB",  # 9.999 KiB rounds to 10: no "10.0"
        123_456: "121 KiB",
        1024**2 - 1: "1.0 MiB",  # not "1024 KiB"
        5 * 1024**3: "5.0 GiB",
        3 * 1024**4 + 1: "3.0 TiB",
        2**70: "1024 EiB",
    }
    assert {size: human_size(size) for size in cases} == cases


ENTRIES = [
    Entry("b-dir", True, 0, 50.0),
    Entry("a-dir", True, 0, 60.0),
    Entry("small", False, 1, 300.0),
    Entry("big", False, 9000, 100.0),
    Entry("mid", False, 500, 200.0),
    Entry("undated", False, 500, None),
]


@pytest.mark.parametrize(
    ("sort", "order", "names"),
    [
        ("name", "asc", ["a-dir", "b-dir", "big", "mid", "small", "undated"]),
        ("name", "desc", ["b-dir", "a-dir", "undated", "small", "mid", "big"]),
        ("size", "asc", ["a-dir", "b-dir", "small", "mid", "undated", "big"]),
        ("size", "desc", ["b-dir", "a-dir", "big", "undated", "mid", "small"]),
        ("date", "asc", ["b-dir", "a-dir", "undated", "big", "mid", "small"]),
        ("date", "desc", ["a-dir", "b-dir", "small", "mid", "big", "undated"]),
    ],
)
def test_sort_orders(sort: str, order: str, names: list[str]) -> None:
    view = parse_view(f"sort={sort}&order={order}".encode())
    assert view == View(sort, order)
    page = render_html("/", ENTRIES, False, view=view).decode()
    assert [n.rstrip("/") for n in rows_of(page)] == names
    doc = json.loads(render_json("/", ENTRIES, False, view=view))
    assert [e["name"] for e in doc["entries"]] == names
    # The heading of the current sort links to the other order and says which it is.
    flip = "desc" if order == "asc" else "asc"
    state = "ascending" if order == "asc" else "descending"
    assert f'aria-sort="{state}"><a href="?sort={sort}&amp;order={flip}">' in page
    assert page.count("aria-sort=") == 1


def test_parse_view_ignores_what_it_does_not_know() -> None:
    assert parse_view(None) == View()
    assert parse_view(b"v=2&sort=bogus&order=up") == View()
    assert parse_view(b"sort=size&sort=date&order=desc") == View("size", "desc")
    assert parse_view(b"download=zip") == View(download_zip=True)
    assert parse_view(b"download=tar") == View()


def test_zip_links() -> None:
    page = render_html("/x/", ENTRIES, False).decode()
    assert '<p><a href="?download=zip">Download this folder as ZIP</a></p>' in page
    assert '<a href="a-dir/?download=zip" aria-label="Download a-dir/ as ZIP">zip</a>' in page
    assert page.count("?download=zip") == 3  # the folder itself and its two folders
    doc = json.loads(render_json("/x/", ENTRIES, False))
    assert doc["zip"] == "?download=zip"
    assert [e.get("zip") for e in doc["entries"][:3]] == [
        "a-dir/?download=zip",
        "b-dir/?download=zip",
        None,
    ]


def test_upload_form_only_when_writes_are_possible() -> None:
    without = render_html("/x/", ENTRIES, False, can_write=False).decode()
    assert "<form" not in without and "<script" not in without
    page = render_html("/x/", ENTRIES, False, can_write=True).decode()
    form = re.search(r"<form[^>]*>", page)
    assert form is not None
    assert form[0] == ('<form id="upload" method="post" enctype="multipart/form-data" action="./">')
    assert '<input id="files" type="file" name="file" multiple required>' in page
    assert '<input id="overwrite" type="checkbox" name="overwrite" value="1">' in page
    assert '<label for="files">' in page and '<label for="overwrite">' in page
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in page


def b64_sha256(text: str) -> str:
    return base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "d" / "sub").mkdir(parents=True)
    (root / "d" / "big").write_bytes(b"x" * 3000)
    (root / "d" / "small").write_bytes(b"x")
    os.utime(root / "d" / "big", (100, 100))
    os.utime(root / "d" / "small", (200, 200))
    return root


def test_served_csp_matches_the_inline_blocks(tree: Path) -> None:
    with running(tree, listing=True) as srv:
        reply = request(srv.port, get("/d/"))
    assert reply.status == 200
    page = reply.body.decode()
    csp = reply.header("Content-Security-Policy")
    assert csp is not None
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    script = re.search(r"<script>(.*?)</script>", page, re.S)
    style = re.search(r"<style>(.*?)</style>", page, re.S)
    assert script is not None and style is not None
    assert directives["script-src"] == f"'sha256-{b64_sha256(script[1])}'"
    assert directives["style-src"] == f"'sha256-{b64_sha256(style[1])}'"
    assert directives["default-src"] == "'none'"
    assert "unsafe" not in csp
    assert reply.header("X-Content-Type-Options") == "nosniff"
    assert reply.header("Referrer-Policy") == "no-referrer"
    assert "<form" in page  # writes are on by default on loopback


@pytest.mark.parametrize(
    "settings",
    [{"read_only": True}, {"public": True}],
    ids=["read-only", "public-without-accounts"],
)
def test_no_form_when_nobody_may_write(tree: Path, settings: dict[str, bool]) -> None:
    with running(tree, listing=True, **settings) as srv:
        page = request(srv.port, get("/d/")).body.decode()
    assert "<form" not in page and "<script" not in page and "d/" in page
    with running(tree, listing=True, public=True, allow_anonymous_writes=True) as srv:
        assert "<form" in request(srv.port, get("/d/")).body.decode()


def test_sorted_pages_cached_per_view(tree: Path) -> None:
    with running(tree, listing=True) as srv, Client(srv.port) as c:
        tags = {}
        for query in ("", "?sort=size&order=desc", "?sort=date&order=asc", "?v=1"):
            c.send(get("/d/" + query))
            reply = c.read_response()
            assert reply.status == 200
            tags[query] = reply.header("ETag")
            if query == "?sort=size&order=desc":
                assert rows_of(reply.body.decode()) == ["sub/", "big", "small"]
            if query == "?sort=date&order=asc":
                assert rows_of(reply.body.decode()) == ["sub/", "big", "small"]
            if query == "":
                assert rows_of(reply.body.decode()) == ["sub/", "big", "small"]
        # Again, in the other order: each view its own page; an unknown parameter is the default.
        for query in ("?sort=name&order=desc", "?sort=size&order=asc"):
            c.send(get("/d/" + query))
            reply = c.read_response()
            want = ["sub/", "small", "big"]
            assert rows_of(reply.body.decode()) == want
        assert tags["?v=1"] == tags[""]
        assert len({tags[""], tags["?sort=size&order=desc"], tags["?sort=date&order=asc"]}) == 3
        c.send(get("/d/?sort=size&order=desc", "Accept: application/json\r\n"))
        reply = c.read_response()
        doc = json.loads(reply.body)
        assert [e["name"] for e in doc["entries"]] == ["sub", "big", "small"]
        assert reply.header("X-Content-Type-Options") == "nosniff"
