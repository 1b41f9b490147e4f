"""Folder downloads as ZIP in headless Chromium (issue 14): a user clicks the link, the browser
saves the archive, and the file on disk is checked (``zipfile.testzip()``, every entry byte for
byte against the tree, nothing hidden inside).

The links are found the way a user finds them: the folder row's link by its accessible name
(its ``aria-label``, what a screen reader announces; its visible text is just "zip"), the
folder page's own link by its text. The saved name comes from the server's
``Content-Disposition``, so a folder with a non-ASCII name checks its ``filename*`` too.
"""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement

from ..helpers import running, wait_until
from .browser import ChromeFactory, chrome, wait_for

__all__ = ["chrome"]  # the fixture, imported for pytest

UNICODE = "ünï cødé ✓.txt"
FOLDER = "fötos ✓"  # the folder name, non-ASCII, so the saved name is the filename* one


def make_tree(tmp_path: Path, folder: str) -> tuple[Path, dict[str, bytes], set[str]]:
    """A root holding ``folder``: the files its archive must hold (name -> bytes), its folders
    (names ending in ``/``); the dotfile and the hidden folder must stay out."""
    root = tmp_path / "www"
    top = root / folder
    (top / "sub" / "deep").mkdir(parents=True)
    (top / ".secret").write_bytes(b"dotfile, never zipped\n")
    (top / ".hiddendir").mkdir()
    (top / ".hiddendir" / "x.txt").write_bytes(b"in a hidden folder\n")
    big = os.urandom(200 * 1024 + 3)  # more than one read of the producer, odd length
    files = {
        f"{folder}/a.txt": b"hello, zip\n",
        f"{folder}/{UNICODE}": b"unicode name\n",
        f"{folder}/sub/deep/b.bin": big,
        f"{folder}/sub/zero.bin": b"",
    }
    for name, data in files.items():
        (root / name).write_bytes(data)
    return root, files, {f"{folder}/sub/", f"{folder}/sub/deep/"}


def download_folder(tmp_path: Path) -> Path:
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    return downloads


def saved(downloads: Path, name: str) -> bytes:
    """The finished download ``name``, read while the browser still runs: wait (with a
    deadline) until the folder holds it and nothing else (Chromium writes into a
    ``.crdownload`` file and renames it when done) and it is a whole ZIP (its end record is
    there).

    History: the file was read after ``driver.quit()``; on a loaded machine Chromium now and
    then deleted the download at quit (it had not yet marked it complete), and the test
    failed on a missing file that the server had sent whole."""
    path = downloads / name

    def finished() -> bool:
        return sorted(os.listdir(downloads)) == [name] and zipfile.is_zipfile(path)

    assert wait_until(finished), os.listdir(downloads)
    return path.read_bytes()


def check_archive(data: bytes, files: dict[str, bytes], folders: set[str]) -> None:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert zf.testzip() is None  # every entry's CRC-32 matches its bytes
        assert set(zf.namelist()) == set(files) | folders
        assert len(zf.namelist()) == len(set(zf.namelist()))  # no entry twice
        for name, data in files.items():
            assert zf.read(name) == data, name
        assert not any("/." in n for n in zf.namelist())  # the dotfile, the hidden folder


def by_accessible_name(driver: WebDriver, name: str) -> WebElement:
    """The one link whose accessible name (as the browser computes it) is ``name``."""
    found = [
        a
        for a in driver.find_elements(By.TAG_NAME, "a")
        if a.aria_role == "link" and a.accessible_name == name
    ]
    assert len(found) == 1, [a.accessible_name for a in driver.find_elements(By.TAG_NAME, "a")]
    return found[0]


@pytest.mark.slow
@pytest.mark.parametrize("javascript", [True, False], ids=["js", "nojs"])
def test_folder_row_link_downloads_the_folder(
    chrome: ChromeFactory, tmp_path: Path, javascript: bool
) -> None:
    root, files, folders = make_tree(tmp_path, "photos")
    (root / "top.txt").write_bytes(b"beside the folder, not in it\n")
    downloads = download_folder(tmp_path)
    with running(root, listing=True) as srv:
        driver = chrome(javascript=javascript, prefs={"download.default_directory": str(downloads)})
        driver.get(f"{srv.url}/")
        link = by_accessible_name(driver, "Download photos/ as ZIP")
        assert link.text == "zip"
        link.click()
        archive = saved(downloads, "photos.zip")
        # An attachment: the browser saved it and stayed on the listing.
        assert driver.current_url == f"{srv.url}/"
        driver.quit()  # before the stop, which would give its idle connection a grace (browser.py)
    check_archive(archive, files, folders)


@pytest.mark.slow
def test_folder_page_link_downloads_it_under_its_unicode_name(
    chrome: ChromeFactory, tmp_path: Path
) -> None:
    root, files, folders = make_tree(tmp_path, FOLDER)
    downloads = download_folder(tmp_path)
    with running(root, listing=True) as srv:
        driver = chrome(prefs={"download.default_directory": str(downloads)})
        driver.get(f"{srv.url}/")
        driver.find_element(By.LINK_TEXT, f"{FOLDER}/").click()
        # The root page has a link of the same text: wait until the folder's page is shown.
        wait_for(driver, lambda d: d.find_element(By.TAG_NAME, "h1").text == f"Index of /{FOLDER}/")
        driver.find_element(By.LINK_TEXT, "Download this folder as ZIP").click()
        archive = saved(downloads, f"{FOLDER}.zip")
        driver.quit()  # before the stop, which would give its idle connection a grace (browser.py)
    check_archive(archive, files, folders)
