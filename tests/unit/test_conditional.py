"""Validators and preconditions as pure functions: dates, entity-tag lists, RFC 9110 §13.2.2."""

from __future__ import annotations

import pytest

from evloop_httpd.conditional import (
    Outcome,
    evaluate,
    if_range_allows,
    parse_etags,
    parse_http_date,
)
from evloop_httpd.negotiate import choose_coding, qvalues, wants_json

T = 784111777  # Sun, 06 Nov 1994 08:49:37 GMT
IMF = b"Sun, 06 Nov 1994 08:49:37 GMT"
ETAG = b'"abc-1"'


def headers(**kw: bytes):
    d = {k.replace("_", "-").encode(): v for k, v in kw.items()}
    return d.get


@pytest.mark.parametrize(
    "value",
    [IMF, b"Sunday, 06-Nov-94 08:49:37 GMT", b"Sun Nov  6 08:49:37 1994"],
)
def test_all_three_date_formats(value: bytes) -> None:
    assert parse_http_date(value) == T


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"yesterday",
        b"Sun, 06 Nov 1994 08:49:37 UTC",
        b"Sun, 6 Nov 1994 08:49:37 GMT",
        b"Sun, 31 Feb 1994 08:49:37 GMT",
        b"Sun, 06 Nov 1994 24:00:00 GMT",
        b" Sun, 06 Nov 1994 08:49:37 GMT",
        IMF + b", " + IMF,  # two members: RFC 9110 §13.1.3 says ignore
        b"1994-11-06T08:49:37Z",
    ],
)
def test_malformed_dates_are_none(value: bytes) -> None:
    assert parse_http_date(value) is None


def test_rfc850_two_digit_year_is_never_far_in_the_future() -> None:
    now = parse_http_date(b"Mon, 01 Jan 2024 00:00:00 GMT")
    assert parse_http_date(b"Sunday, 06-Nov-94 08:49:37 GMT", now) == T
    in_2070 = parse_http_date(b"Thursday, 01-Jan-70 00:00:00 GMT", now)
    assert in_2070 == parse_http_date(b"Wed, 01 Jan 2070 00:00:00 GMT")


def test_etag_lists() -> None:
    assert parse_etags(b'"a", W/"b,c" ,, "d"') == [
        (False, b'"a"'),
        (True, b'"b,c"'),
        (False, b'"d"'),
    ]
    assert parse_etags(b"") == []
    for bad in (b"abc", b'"a" "b"', b'"a', b'w/"a"', b'"a"x'):
        assert parse_etags(bad) is None, bad


GET, PUT = b"GET", b"PUT"


@pytest.mark.parametrize(
    ("method", "hdrs", "expected"),
    [
        (GET, {}, Outcome.PROCEED),
        (GET, {"if_match": ETAG}, Outcome.PROCEED),
        (GET, {"if_match": b'W/"abc-1"'}, Outcome.PRECONDITION_FAILED),  # strong comparison
        (GET, {"if_match": b'"x", "abc-1"'}, Outcome.PROCEED),
        (GET, {"if_match": b"*"}, Outcome.PROCEED),
        (GET, {"if_match": b"garbage"}, Outcome.PRECONDITION_FAILED),
        (
            GET,
            {"if_unmodified_since": b"Sun, 06 Nov 1994 08:49:36 GMT"},
            Outcome.PRECONDITION_FAILED,
        ),
        (GET, {"if_unmodified_since": IMF}, Outcome.PROCEED),
        (GET, {"if_unmodified_since": b"bogus"}, Outcome.PROCEED),
        # If-Match present: If-Unmodified-Since is not even looked at (step 2 is "otherwise").
        (
            GET,
            {"if_match": ETAG, "if_unmodified_since": b"Sat, 01 Jan 1994 00:00:00 GMT"},
            Outcome.PROCEED,
        ),
        (GET, {"if_none_match": ETAG}, Outcome.NOT_MODIFIED),
        (GET, {"if_none_match": b'W/"abc-1"'}, Outcome.NOT_MODIFIED),  # weak comparison
        (GET, {"if_none_match": b"*"}, Outcome.NOT_MODIFIED),
        (GET, {"if_none_match": b'"other"'}, Outcome.PROCEED),
        (GET, {"if_none_match": b"garbage"}, Outcome.PROCEED),
        (PUT, {"if_none_match": ETAG}, Outcome.PRECONDITION_FAILED),
        (PUT, {"if_none_match": b"garbage"}, Outcome.PRECONDITION_FAILED),
        (GET, {"if_modified_since": IMF}, Outcome.NOT_MODIFIED),
        (GET, {"if_modified_since": b"Sun, 06 Nov 1994 08:49:36 GMT"}, Outcome.PROCEED),
        (GET, {"if_modified_since": b"not a date"}, Outcome.PROCEED),
        (PUT, {"if_modified_since": IMF}, Outcome.PROCEED),  # GET and HEAD only
        # The order case: If-None-Match that does not match wins over an
        # If-Modified-Since in the future.
        (
            GET,
            {"if_none_match": b'"other"', "if_modified_since": b"Fri, 01 Jan 2100 00:00:00 GMT"},
            Outcome.PROCEED,
        ),
        # If-Match fails first even when If-None-Match would give 304.
        (GET, {"if_match": b'"other"', "if_none_match": ETAG}, Outcome.PRECONDITION_FAILED),
    ],
)
def test_evaluation_order(method: bytes, hdrs: dict[str, bytes], expected: Outcome) -> None:
    assert evaluate(method, headers(**hdrs), ETAG, T) is expected


def test_missing_representation() -> None:
    assert evaluate(PUT, headers(if_none_match=b"*"), None, None) is Outcome.PROCEED
    assert evaluate(PUT, headers(if_match=b"*"), None, None) is Outcome.PRECONDITION_FAILED
    assert evaluate(PUT, headers(if_match=ETAG), None, None) is Outcome.PRECONDITION_FAILED
    assert evaluate(PUT, headers(if_unmodified_since=IMF), None, None) is Outcome.PROCEED
    assert evaluate(PUT, headers(if_none_match=b"*"), ETAG, T) is Outcome.PRECONDITION_FAILED


def test_if_range() -> None:
    assert if_range_allows(ETAG, ETAG, T, T + 10)
    assert not if_range_allows(b'W/"abc-1"', ETAG, T, T + 10)  # weak never matches
    assert not if_range_allows(b'"other"', ETAG, T, T + 10)
    assert if_range_allows(IMF, ETAG, T, T + 10)
    assert not if_range_allows(b"Sun, 06 Nov 1994 08:49:38 GMT", ETAG, T, T + 10)  # exact only
    # A Last-Modified in the same second as Date is weak: it cannot validate a range.
    assert not if_range_allows(IMF, ETAG, T, T)
    assert not if_range_allows(b"nonsense", ETAG, T, T + 10)


def test_qvalues_and_coding_choice() -> None:
    assert qvalues(b"gzip;q=0.5, br , *;q=0, x;q=2") == {b"gzip": 0.5, b"br": 1.0, b"*": 0.0}
    both = [b"br", b"gzip"]
    assert choose_coding(None, both) is None
    assert choose_coding(b"gzip, deflate, br", both) == b"br"
    assert choose_coding(b"gzip", both) == b"gzip"
    assert choose_coding(b"br;q=0, gzip", both) == b"gzip"
    assert choose_coding(b"br;q=0.5, gzip;q=0.8", both) == b"gzip"
    assert choose_coding(b"x-gzip", both) == b"gzip"
    assert choose_coding(b"*", both) == b"br"
    assert choose_coding(b"*;q=0", both) is None
    assert choose_coding(b"identity", both) is None
    assert choose_coding(b"", both) is None


def test_wants_json() -> None:
    assert wants_json(b"application/json")
    assert wants_json(b"application/json, */*")
    assert not wants_json(None)
    assert not wants_json(b"text/html,application/xhtml+xml,*/*;q=0.8")
    assert not wants_json(b"application/json;q=0")
    assert not wants_json(b"application/json;q=0.5, text/html")
