"""The descriptor budget (descriptors.py) and the upload cap it sets (Connection)."""

from __future__ import annotations

from pathlib import Path

import pytest

from evloop_httpd.connection import Connection, Context
from evloop_httpd.descriptors import FD_RESERVE, plan
from evloop_httpd.states import ConnState

from .test_connection import Recorder, flush_out

S = ConnState


def test_a_limit_that_covers_an_upload_per_connection_caps_nothing() -> None:
    budget = plan(1000, 3 * 1000 + FD_RESERVE)
    assert (budget.max_connections, budget.max_uploads) == (1000, None)
    assert plan(1000, None).max_uploads is None


@pytest.mark.parametrize(
    ("conns", "limit"), [(60, 200), (10_000, 20_000), (10_000, 4096), (10, 70), (1, 1)]
)
def test_a_short_limit_is_never_overspent(conns: int, limit: int) -> None:
    budget = plan(conns, limit)
    assert budget.max_uploads is not None and budget.max_uploads >= 1
    assert budget.max_uploads <= budget.max_connections <= conns
    worst = 2 * budget.max_connections + budget.max_uploads + FD_RESERVE
    assert worst <= limit or budget.max_connections == 1


def test_connections_give_way_only_to_keep_an_eighth_uploading() -> None:
    small = plan(60, 200)  # 16 uploads fit beside 60 GETs: nothing gives way
    assert (small.max_connections, small.max_uploads) == (60, 16)
    big = plan(10_000, 20_000)  # 1,250 uploads do not: 657 connections make room for them
    assert (big.max_connections, big.max_uploads) == (9343, 1250)


def put(path: str, body: bytes) -> bytes:
    head = f"PUT {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


def test_the_upload_count_returns_to_zero_however_an_upload_ends(tmp_path: Path) -> None:
    from .helpers import make_config

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
