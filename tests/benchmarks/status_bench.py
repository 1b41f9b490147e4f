"""Micro-benchmark: the cost of looking at a server holding 10,000 connections (issue 16).

Theory of operation
-------------------
/status.json and /metrics are answered by the loop itself, so every millisecond spent building
and rendering a snapshot is a millisecond every client waits. This times, on synthetic rows
(9,900 idle keep-alive connections and 100 busy ones, the shape the 10,000-idle target has):

* ``snapshot``: :func:`snapshot_of` over 10,000 connection-like objects (count by state,
  rank each, choose 200, describe only those 200 as :class:`ConnRow`);
* ``json`` and ``metrics``: rendering that snapshot;
* ``total``: the three, what one /status.json poll costs the loop;

and, as references in the same run, what the cap saves: describing all 10,000 connections
as rows first (``rows for all``), and :func:`render_json` of a snapshot keeping all of them.
Each figure is the best of ``--repeat`` samples (the least disturbed one). The target is a
total under 20 ms. Event costs (``iteration``, ``request_done``) are printed in ns, for the
O(1) claim.
"""

from __future__ import annotations

import argparse
import sys
import time
import timeit
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(REPO_ROOT))  # the worktree's package, not an installed copy

from evloop_httpd.metrics import render_metrics  # noqa: E402
from evloop_httpd.states import ConnState  # noqa: E402
from evloop_httpd.status import (  # noqa: E402
    ConnRow,
    Snapshot,
    StatsCollector,
    render_json,
    snapshot_of,
)

TARGET_MS = 20.0


class FakeConn:
    """What the loop will hold per connection, as far as the status page reads it."""

    __slots__ = (
        "bytes_in", "bytes_out", "ident", "interest", "opened_at", "peer", "progress",
        "request_line", "state", "state_since",
    )  # fmt: skip

    def __init__(self, i: int, now: float) -> None:
        busy = i % 100 == 0
        self.ident = i
        self.peer = (f"10.0.{i // 250}.{i % 250}", 30000 + i % 30000)
        self.state = ConnState.STREAMING_FILE if busy else ConnState.READING_HEADERS
        self.opened_at = now - i % 600
        self.state_since = now - i % 60
        self.bytes_in = 300 * (i % 7)
        self.bytes_out = 5000 * (i % 11)
        self.request_line = b"GET /files/some/long/path/name.iso HTTP/1.1" if busy else None
        self.interest = 2 if busy else 1
        self.progress = (123456, 1 << 30) if busy else None


def describe(c: FakeConn, now: float) -> ConnRow:
    return ConnRow(
        c.ident,
        f"{c.peer[0]}:{c.peer[1]}",
        c.state.name,
        now - c.opened_at,
        now - c.state_since,
        c.bytes_in,
        c.bytes_out,
        c.request_line,
        c.interest,
        c.progress,
    )


def snap(stats: StatsCollector, conns: list[FakeConn], now: float, max_rows: int) -> Snapshot:
    return snapshot_of(
        stats,
        conns,
        now,
        0.0,
        len(conns),
        state_of=lambda c: c.state,
        rank=lambda c: (
            c.state is ConnState.READING_HEADERS and c.request_line is None,
            c.opened_at,
        ),
        describe=lambda c: describe(c, now),
        max_rows=max_rows,
    )


def best_ms(fn: object, repeat: int, number: int) -> float:
    return min(timeit.repeat(fn, repeat=repeat, number=number)) / number * 1000  # type: ignore[arg-type]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", type=int, default=10_000, help="connections (default 10,000)")
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    n = args.n
    now = time.monotonic()
    stats = StatsCollector(now - 100)
    for k in range(100_000):
        stats.request_done(200, 1000, now - 50 + k / 2000)
        stats.iteration(0.0002, 3, now - 50 + k / 2000)
    conns = [FakeConn(i, now) for i in range(n)]
    one = snap(stats, conns, now, 200)

    t_snap = best_ms(lambda: snap(stats, conns, now, 200), args.repeat, 3)
    t_json = best_ms(lambda: render_json(one), args.repeat, 10)
    t_metrics = best_ms(lambda: render_metrics([one]), args.repeat, 10)
    t_rows = best_ms(lambda: [describe(c, now) for c in conns], args.repeat, 1)
    full = snap(stats, conns, now, n)
    t_full = best_ms(lambda: render_json(full), args.repeat, 1)
    total = t_snap + t_json + t_metrics
    ev_iter = min(timeit.repeat(lambda: stats.iteration(0.0003, 2, now), number=100_000, repeat=3))
    ev_req = min(timeit.repeat(lambda: stats.request_done(200, 512, now), number=100_000, repeat=3))

    print(f"{n:,} connections, {len(one.rows)} rows shown, {one.left_out:,} left out")
    print(f"  snapshot  {t_snap:8.2f} ms   (count by state, rank, describe 200)")
    print(f"  json      {t_json:8.2f} ms   ({len(render_json(one)):,} bytes)")
    print(f"  metrics   {t_metrics:8.2f} ms   ({len(render_metrics([one])):,} bytes)")
    print(f"  total     {total:8.2f} ms   target < {TARGET_MS:.0f} ms: ", end="")
    print("met" if total < TARGET_MS else "MISSED")
    print(f"  reference: rows for all {n:,} {t_rows:.2f} ms; json of all of them {t_full:.2f} ms")
    print(f"  ({len(render_json(full)):,} bytes): uncapped costs {(t_rows + t_full) / total:.0f}x")
    print(f"  per event: iteration {ev_iter * 1e4:.0f} ns, request_done {ev_req * 1e4:.0f} ns")
    t_server, size = through_the_server(n, args.repeat)
    print(f"  through the server (watch.py, real connections): /status.json {t_server:.2f} ms")
    print(f"  ({size:,} bytes), target < {TARGET_MS:.0f} ms: ", end="")
    print("met" if t_server < TARGET_MS else "MISSED")


class _Held:
    """A transport as the snapshot sees it: only its connection."""

    __slots__ = ("conn",)

    def __init__(self, conn: object) -> None:
        self.conn = conn


def through_the_server(n: int, repeat: int) -> tuple[float, int]:
    """What one /status.json costs the loop of a server holding ``n`` connections: the
    server's own snapshot of real (watched) Connection objects, rendered. The selector's map
    is stood in for by a list (walking it is O(n) more, about 1 ms at 10,000)."""
    import tempfile

    from evloop_httpd.config import Config
    from evloop_httpd.reactor import Server
    from evloop_httpd.watch import WatchedConnection, every_worker

    with tempfile.TemporaryDirectory() as root:
        server = Server(Config(root=Path(root), quiet=True, status=("127.0.0.1", 0)))
        now = time.monotonic()
        held = []
        for i in range(n):
            peer = (f"10.0.{i // 250}.{i % 250}", 30000 + i % 30000)
            conn = WatchedConnection(server.ctx, now - i % 600, peer, ("127.0.0.1", 8000), i)
            if i % 100 == 0:
                conn.state = ConnState.STREAMING_FILE
            held.append(_Held(conn))
        server.transports = lambda: held  # type: ignore[assignment,return-value]

        def poll() -> bytes:
            snaps = every_worker(server)
            return render_json(snaps[0])

        t = best_ms(poll, repeat, 3)
        size = len(poll())
        held.clear()
        server.close()
    return t, size


if __name__ == "__main__":
    main()
