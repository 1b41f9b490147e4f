"""Logs, listings, error pages and redirects are data opened in terminals, spreadsheets and
browsers: a request must not be able to forge a log line, send terminal escapes, plant a
spreadsheet formula, or inject markup or header lines (issue 13)."""

from __future__ import annotations

import base64
import csv
import json
import re
from pathlib import Path

from evloop_httpd import hasher
from evloop_httpd.log import csv_cell, decoded_path, escape_text

from ..helpers import Client, get, request, running

# A formula start, markup, URL delimiters, a bidi override (names with C0 controls are never
# served or listed: files.py refuses them).
NASTY = '=a"<b>&%?#\u202ez'
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def test_csv_cells_that_would_be_formulas_get_a_quote() -> None:
    for text in ("=1+2", "+1", "-1", "@SUM(A1)", "\tx", "\rx"):
        assert csv_cell(text) == "'" + text
    assert csv_cell("/index.html") == "/index.html" and csv_cell("") == ""


def test_escape_text_leaves_one_printable_line() -> None:
    escaped = escape_text("a\nb\x1b[31mc\u202ed\\e\x85f")
    assert escaped == "a\\x0ab\\x1b[31mc\\u202ed\\x5ce\\x85f"
    assert decoded_path(b"/%ff%0d%0a%e2%80%ae%25") == "/\\xff\\x0d\\x0a\\u202e%"


def _cheap_hash(password: str) -> str:
    salt = b"0123456789abcdef"
    key = hasher._scrypt(password.encode(), salt, 4, 8, 1, 32)
    return f"$scrypt$ln=4,r=8,p=1${hasher._b64encode(salt)}${hasher._b64encode(key)}"


def test_every_log_escapes_controls_and_defuses_formulas(tmp_path: Path) -> None:
    # History: a method such as "-X" went into the CSV as is, where a spreadsheet reads a formula.
    root = tmp_path / "www"
    root.mkdir()
    accounts = tmp_path / "acc"
    formula_user = "=cmd|' /C calc'!A0"
    accounts.write_text(f"{formula_user}:{_cheap_hash('pw')}\n")
    token = base64.b64encode(f"{formula_user}:pw".encode()).decode()
    stats, heads = tmp_path / "stats.csv", tmp_path / "heads.log"
    evil = "/%1b%5b31mred%0d%0a127.0.0.1%20-%20-%20forged%e2%80%ae%3d.txt"
    with running(
        root,
        auth_file=accounts,
        quiet=False,
        trace=True,
        stats_csv=stats,
        response_log=heads,
    ) as srv:
        with Client(srv.port) as c:
            c.send(get(evil))
            assert c.read_response().status == 400  # decodes to no possible name
            body = b"x"
            c.send(
                f"PUT /%3d1%2b2.txt HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\n"
                f"Authorization: Basic {token}\r\n\r\n".encode()
                + body
            )
            assert c.read_response().status == 201
        # Not a safe method, so an account is asked for before the method is even looked up.
        assert request(srv.port, get("/", method="-X")).status == 401
        # Raw bytes a lenient parser might pass: obs-text in the target.
        raw = request(srv.port, b"GET /\x85\xe2\x80\xae HTTP/1.1\r\nHost: t\r\n\r\n")
        assert raw.status in (400, 404)
    stderr = srv.stderr.getvalue()
    for text in (stderr, stats.read_text(encoding="utf-8"), heads.read_text(encoding="latin-1")):
        assert not CONTROL.search(text.replace("\n", "").replace("\r", "")), text
    access = [line for line in stderr.splitlines() if '] "' in line]
    assert len(access) == 4 and all(line.startswith("127.0.0.1 - ") for line in access)
    assert all(line.count('"') == 2 for line in access)  # nothing closes the quoted request
    rows = list(csv.reader(stats.open(encoding="utf-8", newline="")))
    assert rows[0][8:] == ["time", "user", "path"] and len(rows) == 5
    for row in rows[1:]:
        assert len(row) == 11
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", row[8])
        for cell in row:
            assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), row
    assert rows[1][10] == "/\\x1b[31mred\\x0d\\x0a127.0.0.1 - - forged\\u202e=.txt"
    put_row = rows[2]
    assert put_row[9] == "'" + formula_user and put_row[10] == "/=1+2.txt"
    assert (root / "=1+2.txt").read_bytes() == b"x"
    assert rows[3][4] == "'-X"


def test_listing_and_redirect_escape_hostile_names(tmp_path: Path) -> None:
    # History: a bidi override (U+202E) in a name reached the HTML and JSON listings raw, so a
    # name could display as another one.
    root = tmp_path / "www"
    root.mkdir()
    folder = root / NASTY
    folder.mkdir()
    with running(root, listing=True) as srv:
        page = request(srv.port, get("/")).body.decode()
        data = json.loads(request(srv.port, get("/", "Accept: application/json\r\n")).body)
        encoded = "".join(f"%{b:02X}" for b in NASTY.encode())
        redirect = request(srv.port, get("/" + encoded))
    assert "<b>" not in page and "\u202e" not in page
    assert "&lt;b&gt;" in page and "&amp;" in page and "&quot;" in page
    assert [e["name"] for e in data["entries"]] == [NASTY]
    location = redirect.header("Location") or ""
    assert redirect.status == 301
    assert re.fullmatch(r"/[A-Za-z0-9%._~-]+/", location), location
    assert "\r" not in redirect.raw_head.decode("latin-1").split("\r\n", 1)[1].replace("\r\n", "")
