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


@pytest.fixture(params=[True, False], ids=["sendfile", "read-send"])
def server(request: pytest.FixtureRequest, www: Path) -> Iterator[RunningServer]:
    """A server on 127.0.0.1:0 over ``www``, once with sendfile and once without."""
    srv = RunningServer(make_config(www, use_sendfile=request.param))
    yield srv
    srv.stop()
