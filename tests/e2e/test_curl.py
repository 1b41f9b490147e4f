"""The core issue's acceptance list, checked with curl as a user would."""

from __future__ import annotations

import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from ..helpers import DEADLINE_S, RunningServer, curl, running, wait_until

CURL = shutil.which("curl")
if CURL is None:  # pragma: no cover - curl ships with the machine image
    pytest.fail("these tests need curl on PATH", pytrace=False)


def code(*args: str) -> str:
    return curl("-o", "/dev/null", "-w", "%{http_code}", *args).stdout.decode()


def test_curl_acceptance(file_server: RunningServer, tmp_path: Path) -> None:
    url = file_server.url
    root = file_server.root
    assert curl(f"{url}/data.bin").stdout == (root / "data.bin").read_bytes()
    head = curl("-I", f"{url}/data.bin")
    assert head.stdout.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Content-Length: 1048576\r\n" in head.stdout
    assert head.stdout.endswith(b"\r\n\r\n")  # headers only
    assert curl(f"{url}/sub/").stdout == b"<h1>sub</h1>\n"
    moved = curl("-i", f"{url}/sub")
    assert moved.stdout.startswith(b"HTTP/1.1 301 ")
    assert b"\r\nLocation: /sub/\r\n" in moved.stdout

    upload = tmp_path / "five.bin"
    upload.write_bytes(bytes(range(251)) * (5 * 1024 * 1024 // 251 + 1))
    assert code("-T", str(upload), f"{url}/five.bin") == "201"
    assert code("-T", str(upload), f"{url}/five.bin") == "204"
    assert curl(f"{url}/five.bin").stdout == upload.read_bytes()

    assert code(f"{url}/nope") == "404"
    delete = curl("-i", "-X", "DELETE", f"{url}/five.bin")
    assert delete.stdout.startswith(b"HTTP/1.1 405 ")
    assert b"\r\nAllow: GET, HEAD, OPTIONS, PUT\r\n" in delete.stdout
    assert code("-X", "BREW", f"{url}/") == "501"
    assert code("-H", "Host:", f"{url}/") == "400"
    assert code("-X", "PUT", f"{url}/nolength") == "411"

    verbose = curl("-v", "-o", "/dev/null", "-o", "/dev/null", f"{url}/", f"{url}/sub/")
    assert b"Re-using existing connection" in verbose.stderr or b"Reusing existing" in (
        verbose.stderr
    )


def test_curl_upload_over_limit_is_413(www: Path, tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(b"b" * 200_000)
    with running(www, limits={"max_upload_bytes": 100_000}) as srv:
        assert code("-T", str(big), f"{srv.url}/big.bin") == "413"
    assert not (www / "big.bin").exists()


def test_killed_curl_upload_leaves_no_file_and_no_temp(www: Path, tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(b"u" * (5 * 1024 * 1024))
    with running(www) as srv:
        proc = subprocess.Popen(
            [
                CURL,
                "-s",
                "--noproxy",
                "*",
                "--limit-rate",
                "200k",
                "-T",
                str(big),
                f"{srv.url}/killed.bin",
            ]
        )
        try:
            assert wait_until(
                lambda: any(p.name.startswith(".evloop-upload-") for p in www.iterdir())
            ), "the upload never started"
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(DEADLINE_S)
        assert wait_until(
            lambda: not any(p.name.startswith(".evloop-upload-") for p in www.iterdir())
        )
    assert not (www / "killed.bin").exists()
