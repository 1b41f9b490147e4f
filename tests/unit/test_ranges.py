"""Range parsing and multipart layout as pure functions (RFC 9110 §14)."""

from __future__ import annotations

import pytest

from evloop_httpd.ranges import (
    COALESCE_GAP_BYTES,
    MAX_PARTS,
    MAX_RANGE_SPECS,
    multipart_spans,
    plan_ranges,
)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"bytes=0-0", [(0, 0)]),
        (b"bytes=0-499", [(0, 499)]),
        (b"bytes=500-", [(500, 999)]),
        (b"bytes=-200", [(800, 999)]),
        (b"bytes=-5000", [(0, 999)]),
        (b"bytes=900-5000", [(900, 999)]),
        (b"BYTES=1-2", [(1, 2)]),  # range units are case-insensitive
        (b"bytes=0-1,500-600", [(0, 1), (500, 600)]),
        (b"bytes=500-600,0-1", [(500, 600), (0, 1)]),  # far apart: the client's order
        (b"bytes=0-1, ,500-600", [(0, 1), (500, 600)]),  # empty list elements
        (b"bytes=0-1,2000-3000", [(0, 1)]),  # the unsatisfiable one is dropped
        (b"bytes=1000-", []),
        (b"bytes=-0", []),
        (b"bytes=1000-2000,5000-", []),
        (b"bytes=99999999999999999999999-", []),  # huge positions are just past the end
        (b"bytes=0-99999999999999999999999", [(0, 999)]),
        (b"items=0-1", None),  # another unit: ignored
        (b"bytes=5-1", None),  # last < first: the whole field is invalid
        (b"bytes=", None),
        (b"bytes=a-b", None),
        (b"bytes=1-2;x", None),
        (b"bytes 1-2", None),
        (b"bytes=--1", None),
    ],
)
def test_plan_ranges(value: bytes, expected: list[tuple[int, int]] | None) -> None:
    assert plan_ranges(value, 1000) == expected


def test_empty_file_ignores_range() -> None:
    assert plan_ranges(b"bytes=0-", 0) is None
    assert plan_ranges(b"bytes=-5", 0) is None


def test_overlapping_and_near_ranges_are_coalesced_and_sorted() -> None:
    # The classic amplification: the same bytes many times over.
    assert plan_ranges(b"bytes=" + b",".join([b"0-"] * 50), 1000) == [(0, 999)]
    assert plan_ranges(b"bytes=500-600,0-100,50-550", 1000) == [(0, 600)]
    gap = COALESCE_GAP_BYTES
    near = b"bytes=200-300,0-%d" % (200 - gap)  # gap of exactly COALESCE_GAP_BYTES - 1
    assert plan_ranges(near, 1000) == [(0, 300)]
    far = b"bytes=200-300,0-%d" % (200 - gap - 2)
    assert plan_ranges(far, 1000) == [(200, 300), (0, 200 - gap - 2)]


def test_too_many_specs_or_parts_are_ignored() -> None:
    many = b"bytes=" + b",".join(b"%d-%d" % (i * 200, i * 200) for i in range(MAX_RANGE_SPECS + 1))
    assert plan_ranges(many, 10**6) is None
    parts = b"bytes=" + b",".join(b"%d-%d" % (i * 200, i * 200) for i in range(MAX_PARTS + 1))
    assert plan_ranges(parts, 10**6) is None
    ok = b"bytes=" + b",".join(b"%d-%d" % (i * 200, i * 200) for i in range(MAX_PARTS))
    assert plan_ranges(ok, 10**6) is not None


def test_response_never_exceeds_file_plus_part_headers() -> None:
    size = 10_000
    value = b"bytes=" + b",".join(b"%d-%d" % (i, i + 5000) for i in range(0, 5000, 50))
    ranges = plan_ranges(value, size)
    assert ranges is not None
    spans, _trailer, length = multipart_spans(ranges, size, b"text/plain", b"B" * 24)
    assert sum(n for _, _, n in spans) <= size
    assert length <= size + MAX_PARTS * 200


def test_multipart_layout_exact_bytes() -> None:
    spans, trailer, length = multipart_spans([(0, 1), (5, 9)], 10, b"text/plain", b"XYZ")
    assert spans == [
        (b"--XYZ\r\nContent-Type: text/plain\r\nContent-Range: bytes 0-1/10\r\n\r\n", 0, 2),
        (b"\r\n--XYZ\r\nContent-Type: text/plain\r\nContent-Range: bytes 5-9/10\r\n\r\n", 5, 5),
    ]
    assert trailer == b"\r\n--XYZ--\r\n"
    assert length == sum(len(p) + n for p, _, n in spans) + len(trailer)
