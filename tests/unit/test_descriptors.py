"""The descriptor budget (descriptors.py) and the upload cap it sets (Connection)."""

from __future__ import annotations

from pathlib import Path

import pytest

from evloop_httpd.connection import Connection, Context
from evloop_httpd.descriptors import FD_RESERVE, plan
from evloop_httpd.states import ConnState

from ..helpers import put
from .test_connection import Recorder, flush_out

S = ConnState


def test_a_limit_that_covers_an_upload_per_connection_caps_nothing() -> None:
    budget = plan(1000, 3 * 1000 + FD_RESERVE)
    assert budget.max_uploads is None and budget.covered
    assert plan(1000, None).max_uploads is None


@pytest.mark.parametrize(
    ("conns", "limit"), [(60, 200), (10_000, 30_000), (10_000, 20_000), (10, 70), (1, 1)]
)
def test_a_short_limit_caps_uploads_and_says_whether_it_covers_them(conns: int, limit: int) -> None:
    budget = plan(conns, limit)
    assert budget.max_uploads is not None
    assert min(conns, 16, max(16, conns // 8)) <= budget.max_uploads <= conns
    worst = 2 * conns + budget.max_uploads + FD_RESERVE
    assert budget.covered == (worst <= limit)


def test_uploads_get_what_is_left_but_never_less_than_an_eighth() -> None:
    assert plan(60, 200).max_uploads == 16  # 200 - 64 - 2 x 60
    assert plan(10_000, 30_000).max_uploads == 30_000 - 64 - 20_000
    short = plan(10_000, 20_000)
    assert (short.max_uploads, short.covered) == (1250, False)


def test_the_upload_count_returns_to_zero_however_an_upload_ends(tmp_path: Path) -> None:
    from ..helpers import make_config

    ctx = Context(make_config(tmp_path, max_uploads=1), Recorder())
    done = Connection(ctx, 0.0)
    done.receive(put("/a", b"hello"), 0.0)
    assert flush_out(done).startswith(b"HTTP/1.1 201 ")
    assert ctx.uploads == 0
    cut = Connection(ctx, 0.0)
    cut.receive(put("/b", b"hello")[:-2], 0.0)  # two bytes short: still receiving
    assert ctx.uploads == 1
    refused = Connection(ctx, 0.0)
    refused.receive(put("/c", b"x"), 0.0)
    wire = flush_out(refused)
    assert wire.startswith(b"HTTP/1.1 503 ") and b"\r\nRetry-After: 1\r\n" in wire
    assert not (tmp_path / "c").exists()
    assert ctx.uploads == 1
    cut.abort()
    assert ctx.uploads == 0
    failed = Connection(ctx, 0.0)
    failed.receive(b"PUT /d HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 0.0)
    assert flush_out(failed).startswith(b"HTTP/1.1 400 ")
    assert ctx.uploads == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]
