"""Uploads through the listing page's form in headless Chromium, with and without JavaScript."""

from __future__ import annotations

from pathlib import Path

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from ..helpers import running, wait_until
from .browser import ChromeFactory, chrome, wait_for

__all__ = ["chrome"]  # the fixture, imported for pytest

ONE = b"first file\n" * 1000
TWO = bytes(range(256)) * 2048  # 512 KiB of every byte value


@pytest.fixture
def sources(tmp_path: Path) -> tuple[Path, Path]:
    src = tmp_path / "src"
    src.mkdir()
    a, b = src / "one.txt", src / "two é.bin"
    a.write_bytes(ONE)
    b.write_bytes(TWO)
    return a, b


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "www"
    (r / "up").mkdir(parents=True)
    return r


def links(driver: WebDriver) -> set[str]:
    """The names the listing's table links to (not its parent or ZIP links)."""
    found = set()
    for a in driver.find_elements(By.CSS_SELECTOR, "table a"):
        href = a.get_attribute("href") or ""
        if a.text != "../" and "download=" not in href and "?" not in href:
            found.add(a.text)
    return found


@pytest.mark.slow
def test_javascript_uploader_sends_both_files(
    chrome: ChromeFactory, root: Path, sources: tuple[Path, Path]
) -> None:
    with running(root, listing=True) as srv:
        driver = chrome()
        driver.get(f"{srv.url}/up/")
        assert links(driver) == set()
        # The script shows the drop zone: JavaScript is on and the uploader took the form.
        assert driver.find_element(By.ID, "drop").is_displayed()
        driver.find_element(By.ID, "files").send_keys("\n".join(str(p) for p in sources))
        driver.find_element(By.CSS_SELECTOR, "#upload button[type=submit]").click()
        # Both succeed, and the script reloads the page, which then lists them.
        wait_for(driver, lambda d: links(d) == {"one.txt", "two é.bin"})
        driver.quit()  # before the stop, which would give its idle connection a grace (browser.py)
    assert (root / "up" / "one.txt").read_bytes() == ONE
    assert (root / "up" / "two é.bin").read_bytes() == TWO
    assert sorted(p.name for p in (root / "up").iterdir()) == ["one.txt", "two é.bin"]


def test_javascript_uploader_shows_a_refusal(
    chrome: ChromeFactory, root: Path, sources: tuple[Path, Path]
) -> None:
    (root / "up" / "one.txt").write_bytes(b"already here")
    with running(root, listing=True) as srv:
        driver = chrome()
        driver.get(f"{srv.url}/up/")
        driver.find_element(By.ID, "files").send_keys(str(sources[0]))
        driver.find_element(By.CSS_SELECTOR, "#upload button[type=submit]").click()
        failed = wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#progress .failed"))
        assert "failed (409)" in failed[0].text  # type: ignore[index]
        driver.quit()  # before the stop, which would give its idle connection a grace (browser.py)
    assert (root / "up" / "one.txt").read_bytes() == b"already here"


@pytest.mark.slow
def test_form_without_javascript_posts_and_follows_the_303(
    chrome: ChromeFactory, root: Path, sources: tuple[Path, Path]
) -> None:
    (root / "up" / "one.txt").write_bytes(b"old version")
    with running(root, listing=True) as srv:
        driver = chrome(javascript=False)
        driver.get(f"{srv.url}/up/")
        # No script ran: the drop zone stays hidden.
        assert not driver.find_element(By.ID, "drop").is_displayed()
        driver.find_element(By.ID, "overwrite").click()
        driver.find_element(By.ID, "files").send_keys("\n".join(str(p) for p in sources))
        driver.find_element(By.CSS_SELECTOR, "#upload button[type=submit]").click()
        # The browser posts the form itself, gets 303 See Other, and shows the folder again.
        wait_for(driver, lambda d: links(d) == {"one.txt", "two é.bin"})
        assert driver.current_url == f"{srv.url}/up/"
        assert wait_until(lambda: (root / "up" / "two é.bin").exists())
        driver.quit()  # before the stop, which would give its idle connection a grace (browser.py)
    assert (root / "up" / "one.txt").read_bytes() == ONE  # the box asked to overwrite
    assert (root / "up" / "two é.bin").read_bytes() == TWO
