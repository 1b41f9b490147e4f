"""Headless Chromium for end-to-end tests, through Selenium and Debian's chromium-driver.

Use the ``chrome`` fixture (re-exported by tests that need it: ``from .browser import chrome``)::

    def test_page(chrome: ChromeFactory) -> None:
        driver = chrome()                      # JavaScript on
        driver = chrome(javascript=False)      # a browser with JavaScript off
        driver = chrome(args=["--ignore-certificate-errors-spki-list=..."])
        driver = chrome(prefs={"download.default_directory": str(folder)})

Every browser gets a fresh profile (its own ``--user-data-dir``) and its own empty download
folder (a fresh temporary one unless ``prefs`` names another), so that no test saves into the
home folder; ``prefs`` (Chrome preferences) are laid over these defaults. It is quit at
teardown, or earlier by the test: a test that is done with the browser before its server stops
calls ``driver.quit()`` first (quitting twice is harmless), because the graceful stop gives a
just-used keep-alive connection, such as the browser's, ``reactor.STOP_GRACE_S`` (1 s) to send
a request. The flags are those a root user in a container needs (no sandbox, no GPU, no
/dev/shm) and keep it off the network (no background requests, component updates or sync, no
name resolved but loopback's): the machine has only loopback. A missing chromium or
chromedriver fails the test under CI (``CI=true``), where the browser tests must run (.ci/run
installs them), and skips it elsewhere with the command to fix. All the browser tests start
Chromium here, with these flags.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from ..helpers import DEADLINE_S

ChromeFactory = Callable[..., WebDriver]

FLAGS = (
    "--headless=new",
    "--no-sandbox",  # as root in a container there is no user namespace to sandbox with
    "--disable-gpu",
    "--disable-dev-shm-usage",  # /dev/shm is small in containers
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-proxy-server",
    # No name resolves but the loopback ones. Without this, the first page load waited for the
    # start page Debian's Chromium opens (start.duckduckgo.com) to fail through the system
    # resolver: 0.2 s mostly, 1.2 s or 5.2 s about one start in three (2026-11-30: 7 of 20).
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1 , EXCLUDE localhost",
    "--window-size=1024,768",
)


def find_chromium() -> tuple[str, str]:
    """Paths of the browser and its driver; fails under CI, skips elsewhere, when missing."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        why = "chromium and chromedriver are needed (apt-get install chromium chromium-driver)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(why)
        pytest.skip(why)
    return browser, driver


def spki_sha256(pem: bytes) -> str:
    """Base64 of the SHA-256 of a certificate's SubjectPublicKeyInfo, as Chromium's
    ``--ignore-certificate-errors-spki-list`` takes it."""
    cert = x509.load_pem_x509_certificate(pem)
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(hashlib.sha256(spki).digest()).decode("ascii")


def wait_for(driver: WebDriver, predicate: Callable[[WebDriver], object]) -> object:
    """Wait (at most ``DEADLINE_S``) until ``predicate(driver)`` is truthy; return its value.

    An element gone stale (the page reloaded while the predicate looked) means "not yet"."""
    wait = WebDriverWait(
        driver,
        DEADLINE_S,
        poll_frequency=0.05,
        ignored_exceptions=(StaleElementReferenceException,),
    )
    return wait.until(predicate)


@pytest.fixture
def chrome(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChromeFactory]:
    browser, driver_path = find_chromium()
    drivers: list[WebDriver] = []

    def make(
        *,
        javascript: bool = True,
        args: Sequence[str] = (),
        prefs: Mapping[str, object] | None = None,
    ) -> WebDriver:
        options = webdriver.ChromeOptions()
        options.binary_location = browser
        profile: Path = tmp_path_factory.mktemp("chrome-profile")
        for flag in (*FLAGS, f"--user-data-dir={profile}", *args):
            options.add_argument(flag)
        # Headless Chromium 156 honours these two for a link's download (no CDP command
        # needed); without them it would save into ~/Downloads.
        chosen: dict[str, object] = {
            "download.default_directory": str(tmp_path_factory.mktemp("chrome-downloads")),
            "download.prompt_for_download": False,
        }
        if not javascript:
            chosen["profile.managed_default_content_settings.javascript"] = 2
        chosen.update(prefs or {})
        options.add_experimental_option("prefs", chosen)
        driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
        driver.set_page_load_timeout(DEADLINE_S)
        drivers.append(driver)
        return driver

    try:
        yield make
    finally:
        for d in drivers:
            d.quit()
