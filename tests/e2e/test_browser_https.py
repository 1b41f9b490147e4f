"""Issue 12 acceptance: a browser that trusts the server's certificate loads pages from our
HTTPS server (and uploads through the listing's form over it); one that does not gets no page.

Chromium is told to trust the certificate by the SHA-256 of its public key
(``--ignore-certificate-errors-spki-list``), which it matches against the server's own
(leaf) certificate: pinning the CA's key this way was tried and does not make the page load.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trustme
from selenium.webdriver.common.by import By

from ..helpers import running, wait_until
from .browser import ChromeFactory, chrome, spki_sha256, wait_for

__all__ = ["chrome"]  # the fixture, imported for pytest


@pytest.mark.slow
def test_browser_trusting_the_certificate_loads_and_uploads_over_https(
    chrome: ChromeFactory, tmp_path: Path
) -> None:
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    root = tmp_path / "www"
    root.mkdir()
    (root / "hello.txt").write_bytes(b"hello over tls\n")
    src = tmp_path / "sent.txt"
    src.write_bytes(b"uploaded over https\n" * 500)
    with running(root, tls_cert=cert, tls_key=key, listing=True) as srv:
        url = f"https://127.0.0.1:{srv.port}/"
        # Without trust: Chromium shows its certificate error page, never our listing.
        untrusting = chrome()
        untrusting.get(url)
        assert "hello.txt" not in untrusting.page_source
        # Trusting the certificate's key: the listing loads, and its form uploads over TLS.
        pin = (
            f"--ignore-certificate-errors-spki-list={spki_sha256(leaf.cert_chain_pems[0].bytes())}"
        )
        driver = chrome(args=[pin])
        driver.get(url)
        assert driver.current_url == url
        assert driver.find_element(By.LINK_TEXT, "hello.txt")
        driver.find_element(By.ID, "files").send_keys(str(src))
        driver.find_element(By.CSS_SELECTOR, "#upload button[type=submit]").click()
        wait_for(driver, lambda d: d.find_elements(By.LINK_TEXT, "sent.txt"))
        assert wait_until(lambda: (root / "sent.txt").exists())
        for browser in (untrusting, driver):  # before the stop, which would give an idle
            browser.quit()  # connection a grace (browser.py)
    assert (root / "sent.txt").read_bytes() == src.read_bytes()
