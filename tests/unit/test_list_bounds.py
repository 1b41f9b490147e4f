"""Every list-valued field costs a bounded parse: at most ``MAX_LIST_ELEMENTS`` elements, empty
ones included (RFC 9110 §5.6.1 lets a recipient bound them), and the response cache keys on what
Accept-Encoding negotiates, not on its raw value.

Over the bound: If-None-Match and If-Match are unreadable (no 304; 412 for If-Match), Range is
ignored (200), Accept-Encoding and Accept are ignored (identity, HTML); the framing lists are a
400 (D14, in test_oracle_h11.py). The same over loopback: e2e/test_parser_strictness.py (packed
fields) and e2e/test_response_cache.py (one entry for many Accept-Encoding values).
"""

from __future__ import annotations

import itertools

import pytest

from evloop_httpd.conditional import Outcome, evaluate, parse_etags
from evloop_httpd.grammar import MAX_LIST_ELEMENTS
from evloop_httpd.negotiate import SIDECARS, choose_coding, preference, qvalues, wants_json
from evloop_httpd.ranges import parse_range, plan_ranges

PACKED = b"," * MAX_LIST_ELEMENTS  # with one element on either side: one too many
ALMOST = b"," * (MAX_LIST_ELEMENTS - 1)  # the most that is still read


def test_entity_tags_past_the_bound_are_unreadable() -> None:
    # History: 16,000 empty elements in If-None-Match cost 10 ms of matching per request.
    assert parse_etags(b'"a"' + ALMOST + b'"b"') == [(False, b'"a"'), (False, b'"b"')]
    assert parse_etags(b'"a"' + PACKED + b'"b"') is None
    headers = {b"if-none-match": b'"a"' + PACKED + b'"a"'}
    assert evaluate(b"GET", headers.get, b'"a"', 0) is Outcome.PROCEED  # never a 304 on it
    assert evaluate(b"PUT", headers.get, b'"a"', 0) is Outcome.PRECONDITION_FAILED
    headers = {b"if-match": b'"a"' + PACKED + b'"a"'}
    assert evaluate(b"PUT", headers.get, b'"a"', 0) is Outcome.PRECONDITION_FAILED


def test_range_elements_past_the_bound_make_it_ignored() -> None:
    # History: empty elements were skipped without being counted: 16,000 of them cost 3 ms.
    assert parse_range(b"bytes=0-1" + ALMOST + b"5-6") == [(0, 1), (5, 6)]
    assert parse_range(b"bytes=0-1" + PACKED + b"5-6") is None
    assert plan_ranges(b"bytes=0-1" + PACKED + b"5-6", 100) is None  # a plain 200


def test_accept_lists_past_the_bound_are_ignored() -> None:
    # History: 16,000 empty elements in Accept-Encoding cost 7 ms of parsing per request.
    assert qvalues(b"gzip" + ALMOST + b"br") == {b"gzip": 1.0, b"br": 1.0}
    assert qvalues(b"gzip" + PACKED + b"br") == {}
    assert qvalues(b"gzip" + b";" * MAX_LIST_ELEMENTS) == {}  # parameters count too
    assert choose_coding(b"gzip" + PACKED, [b"gzip"]) is None  # identity
    assert wants_json(b"application/json" + ALMOST)
    assert not wants_json(b"application/json" + PACKED)


@pytest.mark.parametrize(
    "value",
    [
        b"gzip, deflate, br",
        b"gzip;q=0.5, br;q=0.4",
        b"br;q=0.4, gzip;q=0.5",
        b"gzip;q=0.5, br;q=0.5",
        b"*",
        b"*;q=0.3, gzip;q=0.2",
        b"*;q=0, br",
        b"x-gzip",
        b"identity",
        b"gzip;q=0, br;q=0",
        b"",
        b"br;q=2",
        b"GZIP;Q=0.001",
        b"br" + PACKED,
    ],
)
def test_preference_decides_as_choose_coding_does(value: bytes) -> None:
    codings = [c for c, _ in SIDECARS]
    for n in range(len(codings) + 1):
        for available in itertools.combinations(codings, n):
            chosen = choose_coding(value, list(available))
            first = next((c for c in preference(value) if c in available), None)
            assert chosen == first, (value, available)
    assert preference(None) == ()
