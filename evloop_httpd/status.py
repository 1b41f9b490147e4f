"""What the loop is doing, as data: counters fed by the loop, snapshots of it, and /status.json.

Theory of operation
-------------------
Watching a server must not change what it does. So the loop only ever does O(1) work per
event: :class:`StatsCollector` adds to a handful of integers, one bucket of a fixed histogram
and one slot of a 60-second ring, and allocates nothing. All the cost of looking is paid when
someone asks: :func:`snapshot_of` walks the open connections once (O(connections)), counts
them by state, and describes as full rows at most ``max_rows`` of them, the most interesting
ones (busy before idle, then oldest first), so a server holding 10,000 idle keep-alive connections
answers /status.json in a bounded size and time and says how many rows it left out.

Everything here is sans-IO: no socket, no clock. Every event and every snapshot is given
``now`` (``time.monotonic()``), and the snapshot also the wall clock for display. A
:class:`Snapshot` is plain data and can be rendered as JSON (:func:`render_json`), as
Prometheus text (:mod:`metrics`) or drawn by the page (:mod:`status_page`).

Bytes a client chose (its request line) are escaped with :func:`log.escape_text` before they
go anywhere: in the JSON they are one printable line, and the page puts them into the DOM as
text, never as markup.
"""

from __future__ import annotations

import heapq
import json
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import TypeVar

from .log import escape_text

# Upper bounds (seconds) of the loop iteration histogram, Prometheus style (a sample goes in the
# first bucket whose bound it does not exceed; one more bucket, +Inf, holds the rest). Fixed, so
# several workers' histograms add up bucket by bucket. From 50 µs (an idle wake-up) to 1 s (the
# loop stalled: every client waited that long).
ITERATION_BUCKETS_S: tuple[float, ...] = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
)
RING_SECONDS = 60  # the sparklines' window
MAX_ROWS = 200  # rows in /status.json; the rest are counted, not listed
STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
IDLE_STATE = "READING_HEADERS"  # with no request line yet: waiting for a client to speak
INTERESTS = {0: "none", 1: "read", 2: "write", 3: "read|write"}

C = TypeVar("C")  # whatever the loop keeps per connection


@dataclass(frozen=True, slots=True)
class ConnRow:
    """One open connection as the status page shows it. Times are seconds."""

    number: int
    peer: str  # "host:port" ("[v6]:port"), as the server formats it
    state: str  # a ConnState member's name
    age_s: float
    in_state_s: float
    bytes_in: int  # over the connection's life
    bytes_out: int
    request_line: bytes | None  # the current request's, raw; None between requests
    interest: int  # selectors mask: 0, 1 (read), 2 (write)
    progress: tuple[int, int] | None = None  # (sent, total) of the response body in flight

    @property
    def idle(self) -> bool:
        return self.state == IDLE_STATE and self.request_line is None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One worker's state at one moment: what /status.json, /metrics and / show."""

    worker: str
    wall_time: float  # time.time() when taken, for display only
    uptime_s: float
    open_connections: int
    by_state: dict[str, int]  # every open connection counted, listed or not
    rows: tuple[ConnRow, ...]  # the most interesting ones, at most max_rows
    requests_by_class: dict[str, int]  # "1xx".."5xx"
    bytes_served: int
    iterations: int
    ready_events: int
    iteration_counts: tuple[int, ...]  # per bucket of ITERATION_BUCKETS_S, then +Inf
    iteration_sum_s: float
    timers_pending: int
    requests_per_second: tuple[int, ...]  # the last RING_SECONDS seconds, oldest first
    iteration_max_s: tuple[float, ...]  # the slowest iteration of each of those seconds
    # Request bodies written into files since the start: spliced from the socket by the
    # kernel, and read then written (the fall-back, and what splice does not take).
    body_bytes_spliced: int = 0
    body_bytes_copied: int = 0

    @property
    def left_out(self) -> int:
        return self.open_connections - len(self.rows)

    @property
    def requests_total(self) -> int:
        return sum(self.requests_by_class.values())


class StatsCollector:
    """Counters the loop feeds, each event O(1) and allocation-free; memory is fixed.

    The per-second ring is indexed by ``int(now) % RING_SECONDS``; each slot remembers which
    second it holds, so a slot left from a minute ago reads as zero instead of being cleared
    by a timer.
    """

    __slots__ = (
        "_by_class",
        "_hist",
        "_ring_max",
        "_ring_requests",
        "_ring_second",
        "bytes_served",
        "iteration_sum_s",
        "iterations",
        "ready_events",
        "started",
        "worker",
    )

    def __init__(self, now: float, worker: str = "0") -> None:
        self.worker = worker
        self.started = now
        self.iterations = 0
        self.ready_events = 0
        self.iteration_sum_s = 0.0
        self.bytes_served = 0
        self._by_class = [0] * 6  # index status // 100; 0 for anything outside 100-599
        self._hist = [0] * (len(ITERATION_BUCKETS_S) + 1)
        self._ring_second = [-1] * RING_SECONDS
        self._ring_requests = [0] * RING_SECONDS
        self._ring_max = [0.0] * RING_SECONDS

    def _slot(self, now: float) -> int:
        second = int(now)
        i = second % RING_SECONDS
        if self._ring_second[i] != second:
            self._ring_second[i] = second
            self._ring_requests[i] = 0
            self._ring_max[i] = 0.0
        return i

    def iteration(self, duration_s: float, ready_count: int, now: float) -> None:
        """One pass of the loop: ``duration_s`` of work after ``select`` returned
        ``ready_count`` events (the sleep is not counted: that is the loop resting)."""
        self.iterations += 1
        self.ready_events += ready_count
        self.iteration_sum_s += duration_s
        self._hist[bisect_left(ITERATION_BUCKETS_S, duration_s)] += 1
        i = self._slot(now)
        if duration_s > self._ring_max[i]:
            self._ring_max[i] = duration_s

    def request_done(self, status: int, bytes_sent: int, now: float) -> None:
        """A response ended (sent whole, or aborted: ``bytes_sent`` is what went out)."""
        cls = status // 100
        self._by_class[cls if 1 <= cls <= 5 else 0] += 1
        self.bytes_served += bytes_sent
        self._ring_requests[self._slot(now)] += 1

    def recent(self, now: float) -> tuple[tuple[int, ...], tuple[float, ...]]:
        """Requests and slowest iteration for each of the last RING_SECONDS seconds, oldest
        first, the current (unfinished) second last."""
        second = int(now)
        requests: list[int] = []
        slowest: list[float] = []
        for s in range(second - RING_SECONDS + 1, second + 1):
            i = s % RING_SECONDS
            fresh = self._ring_second[i] == s
            requests.append(self._ring_requests[i] if fresh else 0)
            slowest.append(self._ring_max[i] if fresh else 0.0)
        return tuple(requests), tuple(slowest)

    def histogram(self) -> tuple[int, ...]:
        """Iterations per bucket of ITERATION_BUCKETS_S, then +Inf (not cumulative)."""
        return tuple(self._hist)

    def by_class(self) -> dict[str, int]:
        # Statuses outside 100-599 never leave this server; were one counted, it is a bug, and
        # it is shown as "other" rather than hidden.
        out = dict(zip(STATUS_CLASSES, self._by_class[1:], strict=True))
        if self._by_class[0]:
            out["other"] = self._by_class[0]
        return out


def _interest_key(row: ConnRow) -> tuple[bool, float]:
    # Sorts busy before idle, then oldest (largest age) first.
    return (row.idle, -row.age_s)


def _row_state(row: ConnRow) -> str:
    return row.state


def _same(row: ConnRow) -> ConnRow:
    return row


def build_snapshot(
    stats: StatsCollector,
    rows: Iterable[ConnRow],
    now: float,
    wall_time: float,
    timers_pending: int,
    max_rows: int = MAX_ROWS,
) -> Snapshot:
    """A snapshot from ready-made rows: see :func:`snapshot_of`, which the loop should call
    instead, so that only the rows shown are ever made."""
    return snapshot_of(
        stats,
        list(rows),
        now,
        wall_time,
        timers_pending,
        state_of=_row_state,
        rank=_interest_key,
        describe=_same,
        max_rows=max_rows,
    )


def snapshot_of(
    stats: StatsCollector,
    conns: Collection[C],
    now: float,
    wall_time: float,
    timers_pending: int,
    *,
    state_of: Callable[[C], Enum | str],
    rank: Callable[[C], tuple[bool, float]],
    describe: Callable[[C], ConnRow],
    max_rows: int = MAX_ROWS,
    body_bytes: tuple[int, int] = (0, 0),
) -> Snapshot:
    """A snapshot of ``conns``: every one counted by ``state_of`` (an enum member counts under
    its name), and at most ``max_rows`` described, those with the smallest ``rank``
    (``(idle, opened_at)`` puts busy before idle, then oldest first).

    Only the chosen ones are passed to ``describe``: formatting a peer and a request line for
    10,000 connections would cost more than everything else together (see
    tests/benchmarks/status_bench.py). One pass to count, one bounded heap to choose:
    O(connections x log max_rows). ``body_bytes``: request body bytes (spliced, copied) so far.
    """
    counts = Counter(map(state_of, conns))
    by_state = {k if isinstance(k, str) else k.name: n for k, n in counts.items()}
    if len(conns) > max_rows:
        chosen = heapq.nsmallest(max_rows, conns, key=rank)
    else:
        chosen = sorted(conns, key=rank)
    requests, slowest = stats.recent(now)
    return Snapshot(
        worker=stats.worker,
        wall_time=wall_time,
        uptime_s=now - stats.started,
        open_connections=len(conns),
        by_state=by_state,
        rows=tuple(map(describe, chosen)),
        requests_by_class=stats.by_class(),
        bytes_served=stats.bytes_served,
        iterations=stats.iterations,
        ready_events=stats.ready_events,
        iteration_counts=stats.histogram(),
        iteration_sum_s=stats.iteration_sum_s,
        timers_pending=timers_pending,
        requests_per_second=requests,
        iteration_max_s=slowest,
        body_bytes_spliced=body_bytes[0],
        body_bytes_copied=body_bytes[1],
    )


def request_text(raw: bytes) -> str:
    """A client's request line as one printable line: UTF-8 shown as such, any other byte and
    every control or format character as ``\\xNN``/``\\uNNNN``."""
    return escape_text(raw.decode("utf-8", "surrogateescape"))


def _row_json(row: ConnRow) -> dict[str, object]:
    return {
        "number": row.number,
        "peer": escape_text(row.peer),
        "state": row.state,
        "age_s": round(row.age_s, 3),
        "in_state_s": round(row.in_state_s, 3),
        "bytes_in": row.bytes_in,
        "bytes_out": row.bytes_out,
        "request": None if row.request_line is None else request_text(row.request_line),
        "waits_for": INTERESTS.get(row.interest, "none"),
        "progress": None
        if row.progress is None
        else {"sent": row.progress[0], "total": row.progress[1]},
    }


def snapshot_dict(snap: Snapshot) -> dict[str, object]:
    """The snapshot as the JSON-ready structure /status.json serves (see docs/observability.md)."""
    return {
        "worker": escape_text(snap.worker),
        "time": round(snap.wall_time, 3),
        "uptime_s": round(snap.uptime_s, 3),
        "connections": {
            "open": snap.open_connections,
            "by_state": dict(sorted(snap.by_state.items())),
            "shown": len(snap.rows),
            "left_out": snap.left_out,
            "rows": [_row_json(r) for r in snap.rows],
        },
        "requests": {"total": snap.requests_total, "by_class": snap.requests_by_class},
        "bytes_served": snap.bytes_served,
        "request_body_bytes": {
            "spliced": snap.body_bytes_spliced,
            "copied": snap.body_bytes_copied,
        },
        "loop": {
            "iterations": snap.iterations,
            "ready_events": snap.ready_events,
            "iteration_seconds": {
                "le": [*ITERATION_BUCKETS_S, "+Inf"],
                "counts": list(snap.iteration_counts),
                "sum": round(snap.iteration_sum_s, 6),
            },
        },
        "timers_pending": snap.timers_pending,
        "recent": {
            "requests_per_second": list(snap.requests_per_second),
            "iteration_max_ms": [round(s * 1000, 3) for s in snap.iteration_max_s],
        },
    }


def render_json(snap: Snapshot) -> bytes:
    """/status.json: ASCII only (every other character as ``\\uNNNN``), one line."""
    return json.dumps(snapshot_dict(snap), separators=(",", ":"), ensure_ascii=True).encode()


def merge_snapshots(snaps: Sequence[Snapshot], max_rows: int = MAX_ROWS) -> Snapshot:
    """Several workers' snapshots as one: counters and histograms added, the most interesting
    ``max_rows`` rows across all of them kept. The worker becomes their names joined by ",".
    The 60-second rings are added second by second, so the snapshots should be taken in the
    same second (as one scrape of every worker is)."""
    if not snaps:
        raise ValueError("no snapshot to merge")
    by_state: dict[str, int] = {}
    by_class: dict[str, int] = {}
    for s in snaps:
        for k, v in s.by_state.items():
            by_state[k] = by_state.get(k, 0) + v
        for k, v in s.requests_by_class.items():
            by_class[k] = by_class.get(k, 0) + v
    rows = heapq.nsmallest(max_rows, (r for s in snaps for r in s.rows), key=_interest_key)
    return Snapshot(
        worker=",".join(s.worker for s in snaps),
        wall_time=max(s.wall_time for s in snaps),
        uptime_s=max(s.uptime_s for s in snaps),
        open_connections=sum(s.open_connections for s in snaps),
        by_state=by_state,
        rows=tuple(rows),
        requests_by_class=by_class,
        bytes_served=sum(s.bytes_served for s in snaps),
        iterations=sum(s.iterations for s in snaps),
        ready_events=sum(s.ready_events for s in snaps),
        iteration_counts=tuple(map(sum, zip(*(s.iteration_counts for s in snaps), strict=True))),
        iteration_sum_s=sum(s.iteration_sum_s for s in snaps),
        timers_pending=sum(s.timers_pending for s in snaps),
        requests_per_second=tuple(
            map(sum, zip(*(s.requests_per_second for s in snaps), strict=True))
        ),
        iteration_max_s=tuple(map(max, zip(*(s.iteration_max_s for s in snaps), strict=True))),
        body_bytes_spliced=sum(s.body_bytes_spliced for s in snaps),
        body_bytes_copied=sum(s.body_bytes_copied for s in snaps),
    )
