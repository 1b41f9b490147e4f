"""The status data, /status.json and /metrics, without a server (issue 16): the counters the loop
will feed, snapshots bounded at 10,000 connections, escaping, and Prometheus' own parser."""

from __future__ import annotations

import json

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from evloop_httpd.metrics import escape_label, merge_texts, render_metrics
from evloop_httpd.status import (
    ITERATION_BUCKETS_S,
    MAX_ROWS,
    RING_SECONDS,
    ConnRow,
    Snapshot,
    StatsCollector,
    build_snapshot,
    merge_snapshots,
    render_json,
)

T0 = 1000.0


def row(n: int, state: str = "READING_HEADERS", age: float = 1.0, **kw: object) -> ConnRow:
    fields: dict[str, object] = {
        "number": n,
        "peer": f"127.0.0.1:{40000 + n}",
        "state": state,
        "age_s": age,
        "in_state_s": age / 2,
        "bytes_in": 100,
        "bytes_out": 200,
        "request_line": None,
        "interest": 1,
    }
    fields.update(kw)
    return ConnRow(**fields)  # type: ignore[arg-type]


def fed(worker: str = "0") -> StatsCollector:
    stats = StatsCollector(T0, worker)
    for status, size in ((200, 1000), (200, 500), (304, 0), (404, 120), (101, 0), (503, 90)):
        stats.request_done(status, size, T0 + 0.5)
    stats.request_done(200, 10, T0 + 3.2)
    for d in (0.00001, 0.0003, 0.003, 0.003, 2.0):
        stats.iteration(d, 2, T0 + 0.5)
    stats.iteration(0.02, 1, T0 + 3.1)
    return stats


def test_collector_counts_classes_bytes_and_histogram() -> None:
    stats = fed()
    snap = build_snapshot(stats, [], T0 + 3.5, 1.7e9, timers_pending=4)
    assert snap.requests_by_class == {"1xx": 1, "2xx": 3, "3xx": 1, "4xx": 1, "5xx": 1}
    assert snap.requests_total == 7 and snap.bytes_served == 1720
    assert snap.iterations == 6 and snap.ready_events == 11
    assert sum(snap.iteration_counts) == 6
    counts = dict(zip((*ITERATION_BUCKETS_S, "inf"), snap.iteration_counts, strict=True))
    assert counts[0.00005] == 1 and counts[0.0005] == 1 and counts[0.005] == 2
    assert counts[0.025] == 1 and counts["inf"] == 1  # 2 s: past every bound
    assert snap.iteration_sum_s == pytest.approx(2.02631)
    assert snap.timers_pending == 4 and snap.uptime_s == pytest.approx(3.5)


def test_bucket_bounds_are_inclusive() -> None:
    # Prometheus' le: a sample equal to a bound belongs to that bound's bucket.
    stats = StatsCollector(T0)
    stats.iteration(0.001, 0, T0)
    counts = build_snapshot(stats, [], T0, 0, 0).iteration_counts
    assert counts[ITERATION_BUCKETS_S.index(0.001)] == 1


def test_ring_holds_the_last_minute_and_forgets_older_seconds() -> None:
    stats = fed()
    requests, slowest = stats.recent(T0 + 3.5)
    assert len(requests) == len(slowest) == RING_SECONDS
    assert requests[-1] == 1 and requests[-4] == 6 and sum(requests) == 7
    assert slowest[-4] == 2.0 and slowest[-1] == 0.02
    # A minute later the same slots mean other seconds: they read as zero, uncleared.
    requests, slowest = stats.recent(T0 + RING_SECONDS + 5)
    assert sum(requests) == 0 and max(slowest) == 0.0
    stats.request_done(200, 1, T0 + RING_SECONDS + 0.1)  # reuses the slot of second T0
    requests, _ = stats.recent(T0 + RING_SECONDS + 0.2)
    # Second T0's six are gone; second T0 + 3's one is still inside the window.
    assert requests[-1] == 1 and requests[2] == 1 and sum(requests) == 2


def test_status_outside_100_599_is_shown_not_hidden() -> None:
    stats = StatsCollector(T0)
    stats.request_done(0, 0, T0)
    assert stats.by_class()["other"] == 1


def test_ten_thousand_idle_connections_stay_bounded_busy_first() -> None:
    rows = [row(i, age=float(i % 500)) for i in range(10_000)]
    rows[7000] = row(7000, "STREAMING_FILE", age=0.1, request_line=b"GET /big HTTP/1.1",
                     interest=2, progress=(1024, 1 << 20))  # fmt: skip
    rows[42] = row(42, "READING_HEADERS", age=0.2, request_line=b"GET /slow HTTP/1.1")
    snap = build_snapshot(fed(), rows, T0 + 4, 1.7e9, timers_pending=10_000)
    assert snap.open_connections == 10_000 and len(snap.rows) == MAX_ROWS
    assert snap.left_out == 10_000 - MAX_ROWS
    assert snap.by_state == {"READING_HEADERS": 9_999, "STREAMING_FILE": 1}
    # Busy ones first, the oldest of those first; then idle ones, oldest first.
    assert [r.number for r in snap.rows[:2]] == [42, 7000]
    ages = [r.age_s for r in snap.rows[2:]]
    assert ages == sorted(ages, reverse=True) and ages[0] == 499.0
    body = render_json(snap)
    assert len(body) < 60_000  # 200 rows, not 10,000
    doc = json.loads(body)
    conns = doc["connections"]
    assert conns["open"] == 10_000 and conns["shown"] == MAX_ROWS
    assert conns["left_out"] == 9_800 and len(conns["rows"]) == MAX_ROWS
    streaming = conns["rows"][1]
    assert streaming["waits_for"] == "write" and streaming["request"] == "GET /big HTTP/1.1"
    assert streaming["progress"] == {"sent": 1024, "total": 1 << 20}
    assert conns["rows"][2]["progress"] is None and conns["rows"][2]["request"] is None


def test_json_has_every_field_the_issue_asks_for() -> None:
    snap = build_snapshot(fed("w1"), [row(1)], T0 + 3.5, 1.7e9, timers_pending=3)
    doc = json.loads(render_json(snap))
    assert doc["worker"] == "w1" and doc["timers_pending"] == 3
    assert doc["requests"] == {
        "total": 7,
        "by_class": {"1xx": 1, "2xx": 3, "3xx": 1, "4xx": 1, "5xx": 1},
    }
    assert doc["bytes_served"] == 1720
    assert doc["loop"]["iterations"] == 6
    hist = doc["loop"]["iteration_seconds"]
    assert hist["le"][-1] == "+Inf" and len(hist["le"]) == len(hist["counts"])
    assert len(doc["recent"]["requests_per_second"]) == RING_SECONDS
    assert doc["recent"]["iteration_max_ms"][-1] == 20.0
    assert doc["connections"]["by_state"] == {"READING_HEADERS": 1}
    assert set(doc["connections"]["rows"][0]) == {
        "number", "peer", "state", "age_s", "in_state_s", "bytes_in", "bytes_out",
        "request", "waits_for", "progress",
    }  # fmt: skip


def test_hostile_request_line_is_one_printable_ascii_line() -> None:
    hostile = b'GET /\x1b[31m\xff"</script><b>\r\n\xe2\x80\xae\xc3\xa9 HTTP/1.1'
    snap = build_snapshot(fed(), [row(1, request_line=hostile)], T0, 0, 0)
    body = render_json(snap)
    assert body.isascii() and b"\n" not in body and b"\x1b" not in body
    text = json.loads(body)["connections"]["rows"][0]["request"]
    assert text == 'GET /\\x1b[31m\\xff"</script><b>\\x0d\\x0a\\u202e\u00e9 HTTP/1.1'
    assert text.isprintable()


def test_merge_snapshots_adds_up_and_keeps_the_most_interesting_rows() -> None:
    a = build_snapshot(fed("a"), [row(1, age=5), row(2, age=1)], T0 + 3.5, 10, 2)
    b = build_snapshot(fed("b"), [row(3, "READING_BODY", age=0.5)], T0 + 3.5, 11, 1)
    m = merge_snapshots([a, b], max_rows=2)
    assert m.worker == "a,b" and m.open_connections == 3 and m.left_out == 1
    assert m.by_state == {"READING_HEADERS": 2, "READING_BODY": 1}
    assert [r.number for r in m.rows] == [3, 1]
    assert m.requests_total == 14 and m.bytes_served == 2 * 1720
    assert m.iteration_counts == tuple(2 * c for c in a.iteration_counts)
    assert m.requests_per_second[-4] == 12 and m.timers_pending == 3
    with pytest.raises(ValueError):
        merge_snapshots([])


def _families(text: bytes) -> dict[str, list[Sample]]:
    return {f.name: f.samples for f in text_string_to_metric_families(text.decode())}


def _snap(worker: str) -> Snapshot:
    return build_snapshot(
        fed(worker), [row(1), row(2, "STREAMING_FILE")], T0 + 3.5, 1.7e9, timers_pending=2
    )


def test_metrics_parse_with_prometheus_own_parser() -> None:
    text = render_metrics([_snap("0")])
    fams = {f.name: f for f in text_string_to_metric_families(text.decode())}
    # The parser strips _total from counter family names.
    assert fams["evloop_httpd_requests"].type == "counter"
    assert fams["evloop_httpd_sent_bytes"].type == "counter"
    assert fams["evloop_httpd_loop_iterations"].type == "counter"
    assert fams["evloop_httpd_connections"].type == "gauge"
    hist = fams["evloop_httpd_loop_iteration_duration_seconds"]
    assert hist.type == "histogram"
    by_name: dict[str, list[Sample]] = {}
    for s in hist.samples:
        by_name.setdefault(s.name, []).append(s)
    buckets = by_name["evloop_httpd_loop_iteration_duration_seconds_bucket"]
    assert [s.labels["le"] for s in buckets][-1] == "+Inf"
    values = [s.value for s in buckets]
    assert values == sorted(values) and values[-1] == 6  # cumulative, ends at the count
    assert by_name["evloop_httpd_loop_iteration_duration_seconds_count"][0].value == 6
    assert by_name["evloop_httpd_loop_iteration_duration_seconds_sum"][0].value == pytest.approx(
        2.02631
    )
    requests = {s.labels["class"]: s.value for s in fams["evloop_httpd_requests"].samples}
    assert requests == {"1xx": 1, "2xx": 3, "3xx": 1, "4xx": 1, "5xx": 1}
    conns = {s.labels["state"]: s.value for s in fams["evloop_httpd_connections"].samples}
    assert conns == {"READING_HEADERS": 1, "STREAMING_FILE": 1}
    assert all(s.labels["worker"] == "0" for f in fams.values() for s in f.samples)
    assert fams["evloop_httpd_sent_bytes"].samples[0].value == 1720
    assert fams["evloop_httpd_timers_pending"].samples[0].value == 2


def test_hostile_worker_label_is_escaped_and_parses_back() -> None:
    name = 'a"b\\c\nd} x 1'
    assert escape_label(name) == 'a\\"b\\\\c\\nd} x 1'
    fams = _families(render_metrics([_snap(name)]))
    assert fams["evloop_httpd_timers_pending"][0].labels == {"worker": name}


@pytest.mark.parametrize("how", ["snapshots", "texts"])
def test_several_workers_merge_into_one_valid_exposition(how: str) -> None:
    snaps = [_snap("0"), _snap("1"), _snap("2")]
    if how == "snapshots":
        text = render_metrics(snaps)
    else:
        text = merge_texts([render_metrics([s]) for s in snaps])
        assert text == render_metrics(snaps)
    assert text.count(b"# TYPE evloop_httpd_requests_total counter") == 1
    fams = _families(text)
    workers = {s.labels["worker"] for s in fams["evloop_httpd_loop_iterations"]}
    assert workers == {"0", "1", "2"}
    assert sum(s.value for s in fams["evloop_httpd_sent_bytes"]) == 3 * 1720


def test_concatenated_texts_repeat_families_but_merged_ones_do_not() -> None:
    # Why merge_texts exists: Prometheus refuses a family's # TYPE line twice (the Python parser
    # is lenient and yields the family twice, which is what this counts).
    a, b = render_metrics([_snap("0")]), render_metrics([_snap("1")])

    def names(text: bytes) -> list[str]:
        return [f.name for f in text_string_to_metric_families(text.decode())]

    assert names(a + b).count("evloop_httpd_timers_pending") == 2
    merged = names(merge_texts([a, b]))
    assert merged.count("evloop_httpd_timers_pending") == 1 and len(merged) == len(set(merged))
    assert len(_families(merge_texts([a, b]))["evloop_httpd_timers_pending"]) == 2


def test_snapshot_of_describes_only_the_rows_it_shows() -> None:
    # The loop's entry point: formatting 10,000 rows would cost more than all the rest.
    from evloop_httpd.states import ConnState
    from evloop_httpd.status import snapshot_of

    conns = [(i, ConnState.READING_HEADERS if i % 10 else ConnState.READING_BODY, 100.0 - i)
             for i in range(1000)]  # fmt: skip
    described: list[int] = []

    def describe(c: tuple[int, ConnState, float]) -> ConnRow:
        described.append(c[0])
        return row(c[0], c[1].name, age=T0 - c[2])

    snap = snapshot_of(
        StatsCollector(T0),
        conns,
        T0,
        0.0,
        0,
        state_of=lambda c: c[1],
        rank=lambda c: (c[1] is ConnState.READING_HEADERS, c[2]),
        describe=describe,
        max_rows=5,
    )
    assert described == [990, 980, 970, 960, 950]  # busy (READING_BODY) ones, oldest first
    assert snap.by_state == {"READING_HEADERS": 900, "READING_BODY": 100}
    assert snap.open_connections == 1000 and snap.left_out == 995
