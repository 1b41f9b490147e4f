"""The status page as bytes (issue 16): self-contained, allowed by its own CSP and nothing else,
no markup built from data. (Drawing it in a real browser comes with the wiring, in selenium.)"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from html.parser import HTMLParser

from evloop_httpd.status import ConnRow, StatsCollector, build_snapshot, render_json
from evloop_httpd.status_page import CSP, HEADERS, PAGE, POLL_MS


class Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: dict[str, list[str]] = {"script": [], "style": []}
        self._in: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag in self.text:
            self._in = tag

    def handle_endtag(self, tag: str) -> None:
        self._in = None

    def handle_data(self, data: str) -> None:
        if self._in is not None:
            self.text[self._in].append(data)


def parsed() -> Collect:
    c = Collect()
    c.feed(PAGE.decode("utf-8"))
    return c


def sha(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def directives() -> dict[str, list[str]]:
    out = {}
    for part in CSP.split(";"):
        name, *values = part.split()
        out[name] = values
    return out


def test_csp_allows_exactly_the_inline_script_and_style() -> None:
    page = parsed()
    scripts = [t for t in page.tags if t[0] == "script"]
    styles = [t for t in page.tags if t[0] == "style"]
    assert len(scripts) == 1 and len(styles) == 1
    d = directives()
    assert d["default-src"] == ["'none'"]
    assert d["script-src"] == [sha("".join(page.text["script"]))]
    assert d["style-src"] == [sha("".join(page.text["style"]))]
    assert d["connect-src"] == ["'self'"]
    assert d["base-uri"] == d["form-action"] == d["frame-ancestors"] == ["'none'"]
    assert ("Content-Security-Policy", CSP) in HEADERS


def test_no_external_asset_no_inline_handler_no_style_attribute() -> None:
    for tag, attrs in parsed().tags:
        assert "src" not in attrs and "style" not in attrs, tag
        assert tag != "link" and tag not in ("img", "iframe", "object", "embed"), tag
        assert not any(a.startswith("on") for a in attrs), (tag, attrs)
    assert b"http:" not in PAGE and b"https:" not in PAGE
    assert b"//" not in PAGE.split(b"<script>")[0]  # no protocol-relative URL either


def test_data_reaches_the_dom_as_text_only() -> None:
    script = "".join(parsed().text["script"])
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in script, sink
    assert "textContent" in script
    # Class names from data only after matching the fixed list of states.
    assert 'STATES.includes(r.state) ? r.state : "other"' in script


def test_script_polls_status_json_a_few_times_a_second() -> None:
    script = "".join(parsed().text["script"])
    assert 250 <= POLL_MS <= 500
    assert f"const POLL_MS = {POLL_MS};" in script
    assert 'fetch("status.json"' in script and "setTimeout(poll, POLL_MS)" in script


def test_every_field_the_script_reads_is_in_the_json() -> None:
    # The page and /status.json are written apart: a renamed field would blank the page.
    stats = StatsCollector(0.0)
    row = ConnRow(1, "127.0.0.1:5", "STREAMING_FILE", 1, 1, 1, 1, b"GET / HTTP/1.1", 2, (1, 2))
    doc = json.loads(render_json(build_snapshot(stats, [row], 1.0, 0.0, 0)))
    script = "".join(parsed().text["script"])

    def has(d: dict[str, object], path: list[str]) -> bool:
        cur: object = d
        for key in path:
            if not isinstance(cur, dict) or key not in cur:
                return False
            cur = cur[key]
        return True

    for chain in re.findall(r"\bdoc\.([a-z_]+(?:\.[a-z_]+)*)", script):
        assert has(doc, chain.split(".")), chain
    conn = doc["connections"]
    for name in re.findall(r"\bc\.([a-z_]+)", script):
        assert name in conn, name
    for name in re.findall(r"\br\.([a-z_]+)", script):
        assert name in conn["rows"][0], name
    for name in re.findall(r"\bp\.([a-z_]+)", script):
        assert name in conn["rows"][0]["progress"], name


def test_every_state_has_a_colour() -> None:
    from evloop_httpd.states import ConnState

    style = "".join(parsed().text["style"])
    script = "".join(parsed().text["script"])
    for state in ConnState:
        if state is ConnState.CLOSED:
            continue  # a closed connection is gone before any snapshot
        assert f".st-{state.name} " in style and f'"{state.name}"' in script, state
