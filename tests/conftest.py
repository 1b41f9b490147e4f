from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .helpers import RunningServer, make_config

SMALL = b"hello, world\n"


@pytest.fixture
def www(tmp_path: Path) -> Path:
    """A small document root: index, a sub-folder with an index, a 1 MiB binary file."""
    root = tmp_path / "www"
    (root / "sub").mkdir(parents=True)
    (root / "noindex").mkdir()
    (root / "index.html").write_bytes(b"<h1>home</h1>\n")
    (root / "sub" / "index.html").write_bytes(b"<h1>sub</h1>\n")
    (root / "hello.txt").write_bytes(SMALL)
    (root / "data.bin").write_bytes(bytes(range(256)) * 4096)
    return root


# The two ways a file body goes out (transport.py): os.sendfile, or read + send. Only a test
# that streams a file body can tell them apart, so only those run twice (``file_server``).
SENDFILE_BOTH = pytest.mark.parametrize(
    "use_sendfile", [True, False], ids=["sendfile", "read-send"]
)


@pytest.fixture
def server(www: Path) -> Iterator[RunningServer]:
    """A server on 127.0.0.1:0 over ``www`` (sendfile on, the default)."""
    srv = RunningServer(make_config(www))
    yield srv
    srv.stop()


# A file body goes out by os.sendfile or by read + send (transport.py). Only a test that
# streams a file body can tell the two apart, so only those run twice.
@pytest.fixture(params=[True, False], ids=["sendfile", "read-send"])
def file_server(request: pytest.FixtureRequest, www: Path) -> Iterator[RunningServer]:
    """``server``, once with sendfile and once without: for tests that stream a file body."""
    srv = RunningServer(make_config(www, use_sendfile=request.param))
    yield srv
    srv.stop()
