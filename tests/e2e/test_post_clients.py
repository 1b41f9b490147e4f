"""POST uploads from real clients: curl -F, Python requests and httpx (issue 14)."""

from __future__ import annotations

import json
import os
import unicodedata
from pathlib import Path

import httpx
import pytest
import requests

from evloop_httpd import reactor

from ..helpers import curl, running

BIG = bytes(range(256)) * 4096 + b"tail"  # 1 MiB and a bit: several recvs, several steps


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "www"
    (r / "up").mkdir(parents=True)
    return r


@pytest.fixture
def sources(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    (src / "big.bin").write_bytes(BIG)
    (src / "note.txt").write_bytes(b"a note\n")
    return src


def test_curl_form_upload_two_files(root: Path, sources: Path) -> None:
    with running(root) as srv:
        url = f"{srv.url}/up/"
        done = curl(
            "-o", "/dev/null", "-w", "%{http_code} %{redirect_url}",
            "-F", f"file=@{sources / 'big.bin'}",
            "-F", f"file=@{sources / 'note.txt'}",
            url,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert done.stdout.decode() == f"303 {url}"
        again = curl("-H", "Accept: application/json", "-F", f"file=@{sources / 'note.txt'}", url)
        assert json.loads(again.stdout)["error"].startswith("'note.txt' exists")
        over = curl(
            "-H", "Accept: application/json",
            "-F", "overwrite=1", "-F", f"file=@{sources / 'big.bin'};filename=note.txt", url,
        )  # fmt: skip
    assert (root / "up" / "big.bin").read_bytes() == BIG
    assert (root / "up" / "note.txt").read_bytes() == BIG  # overwritten
    assert json.loads(over.stdout)["stored"][0]["name"] == "note.txt"


def test_curl_follows_the_redirect_to_the_listing(root: Path, sources: Path) -> None:
    with running(root, listing=True) as srv:
        done = curl("-L", "-F", f"file=@{sources / 'note.txt'}", f"{srv.url}/up/")
    assert done.returncode == 0
    assert b'href="note.txt"' in done.stdout


def test_requests_multipart(root: Path, sources: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # requests closes its socket only when the last response is garbage-collected, so the
    # stop below would give that idle connection the whole grace for a next request.
    monkeypatch.setattr(reactor, "STOP_GRACE_S", 0.05)
    nfd = unicodedata.normalize("NFD", "Zoë résumé.txt")
    with running(root) as srv:
        with (sources / "big.bin").open("rb") as big:
            r = requests.post(
                f"{srv.url}/up/",
                files=[("file", ("big.bin", big)), ("file", (nfd, b"cv"))],
                headers={"Accept": "application/json"},
                timeout=20,
            )
        assert r.status_code == 200, r.text
        stored = r.json()["stored"]
        assert [s["size"] for s in stored] == [len(BIG), 2]
        # Without Accept JSON: the 303 is followed to the folder (404: no listing, no index).
        plain = requests.post(f"{srv.url}/up/", files={"file": ("third.txt", b"3")}, timeout=20)
        assert plain.history[0].status_code == 303
    assert (root / "up" / "big.bin").read_bytes() == BIG
    assert (root / "up" / unicodedata.normalize("NFC", "Zoë résumé.txt")).read_bytes() == b"cv"
    assert (root / "up" / "third.txt").read_bytes() == b"3"


def test_httpx_multipart_with_overwrite_field(root: Path) -> None:
    (root / "up" / "x.txt").write_bytes(b"old")
    with running(root) as srv, httpx.Client(timeout=20) as client:
        refused = client.post(
            f"{srv.url}/up/",
            files={"file": ("x.txt", b"new")},
            headers={"Accept": "application/json"},
        )
        assert refused.status_code == 409
        assert refused.json()["refused"][0]["name"] == "x.txt"
        # httpx sends the data fields before the files: overwrite applies.
        ok = client.post(
            f"{srv.url}/up/",
            data={"overwrite": "1"},
            files={"file": ("x.txt", b"new")},
            headers={"Accept": "application/json"},
        )
        assert ok.status_code == 200, ok.text
        assert ok.json()["stored"][0]["etag"] == client.head(f"{srv.url}/up/x.txt").headers["etag"]
    assert (root / "up" / "x.txt").read_bytes() == b"new"
    assert [n for n in os.listdir(root / "up") if n.startswith(".")] == []
