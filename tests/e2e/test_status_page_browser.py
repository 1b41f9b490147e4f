"""The status page (/) in a real browser: headless Chromium through Selenium (issue 16).

The page is a constant that draws /status.json with its inline script, under a CSP that allows
only that script and style by hash: so only a browser shows whether it works. While clients hold
connections open, the page must show one row per connection, with the client's request line as
text, and a hostile request line must not become markup.

The browser is Debian's ``chromium`` through ``chromium-driver`` (``.ci/run`` installs them),
started by browser.py's ``chrome`` fixture.
"""

from __future__ import annotations

import time
from pathlib import Path

from selenium.webdriver.common.by import By

from ..helpers import DEADLINE_S, Client, get, running
from .browser import ChromeFactory, chrome

__all__ = ["chrome"]  # the fixture, imported for pytest


def _wait(predicate: object, what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)  # polling the DOM, not synchronising with the server
    raise AssertionError(f"the page never showed {what}")


def test_the_page_shows_a_row_per_open_connection(chrome: ChromeFactory, tmp_path: Path) -> None:
    root = tmp_path / "site"
    root.mkdir()
    (root / "a.txt").write_bytes(b"a\n")
    hostile = "/%3Cimg%20src=x%20onerror=alert(1)%3E"  # the parser refuses a raw "<"
    with running(root, status=("127.0.0.1", 0)) as srv:
        clients = [Client(srv.port) for _ in range(3)]
        try:
            for c in clients:
                c.send(get("/a.txt"))
                c.read_response()
            # A request head that is never finished: its row shows no request line yet, but
            # the connection is there; and a response in flight to a client that does not read
            # it, whose row shows its request line (as text).
            half = Client(srv.port)
            half.send(b"GET /a.txt HTTP/1.1\r\nHost: x\r\n")
            (root / "big.bin").write_bytes(bytes(10 * 1024 * 1024))
            stuck = Client(srv.port)
            stuck.send(get(f"/big.bin?{hostile[1:]}"))
            clients += [half, stuck]
            browser = chrome()
            browser.get(f"http://127.0.0.1:{srv.status_port}/")
            peers = {f"127.0.0.1:{c.sock.getsockname()[1]}" for c in clients}

            def rows_shown() -> bool:
                text = browser.find_element(By.TAG_NAME, "body").text
                return all(p in text for p in peers)

            _wait(rows_shown, "a row for every open connection")
            # One script call reads every row's class: the page redraws the table every 400 ms,
            # so elements found one call earlier may already be gone (stale).
            states = browser.execute_script(
                "return Array.from(document.querySelectorAll('tbody tr'), r => r.className)"
            )
            assert len(states) >= len(clients)  # (and the page's own poll, between fetches)
            assert any("st-READING_HEADERS" in s for s in states)
            assert any("st-STREAMING_FILE" in s for s in states)
            # What the client sent is shown as text, never made into an element.
            body = browser.find_element(By.TAG_NAME, "body").text
            assert f"GET /big.bin?{hostile[1:]} HTTP/1.1" in body
            assert not browser.find_elements(By.CSS_SELECTOR, "img")
            logs = browser.get_log("browser") if hasattr(browser, "get_log") else []
            assert not [e for e in logs if "Content Security Policy" in e.get("message", "")]
            # When connections close, their rows go.
            for c in clients:
                c.close()
            _wait(
                lambda: not any(p in browser.find_element(By.TAG_NAME, "body").text for p in peers),
                "the rows gone once the connections closed",
            )
            # Before the stop, which would give the page's idle keep-alive connection a grace
            # (reactor.STOP_GRACE_S) to send one more request. The fixture's quit is then a no-op.
            browser.quit()
        finally:
            for c in clients:
                c.close()
