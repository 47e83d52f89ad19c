"""http/conditional.py with requests built by hand: preconditions in RFC 9110 §13.2.2's
order, If-Range's strong-validator rule, and Range values merged, clipped, refused or
ignored (the static-file tests check the same through whole answers)."""

from __future__ import annotations

import pytest

from selserve.http.conditional import http_date, if_range, parse_ranges, preconditions
from selserve.http.parser import Request

ETAG = '"1f-abc"'
MODIFIED = 784111777  # Sun, 06 Nov 1994 08:49:37 GMT
DATE = "Sun, 06 Nov 1994 08:49:37 GMT"


def request(*headers: tuple[str, str]) -> Request:
    return Request("GET", "/", "/", "", "HTTP/1.1", list(headers), True, None, False, False, "t")


@pytest.mark.parametrize(
    "headers, status",
    [
        ((), 0),
        ((("if-none-match", ETAG),), 304),
        ((("if-none-match", 'W/"1f-abc"'),), 304),  # weak comparison
        ((("if-none-match", '"other", "1f-abc"'),), 304),
        ((("if-none-match", '"other"'),), 0),
        ((("if-none-match", "*"),), 304),
        ((("if-match", '"other"'),), 412),
        ((("if-match", 'W/"1f-abc"'),), 412),  # If-Match compares strongly
        ((("if-match", ETAG), ("if-none-match", ETAG)), 304),
        ((("if-unmodified-since", "Sat, 05 Nov 1994 08:49:37 GMT"),), 412),
        ((("if-unmodified-since", DATE),), 0),
        ((("if-modified-since", DATE),), 304),
        ((("if-modified-since", "Sat, 05 Nov 1994 08:49:37 GMT"),), 0),
        # If-None-Match present: If-Modified-Since is not looked at (§13.1.3).
        ((("if-none-match", '"other"'), ("if-modified-since", DATE)), 0),
        ((("if-modified-since", "not a date"),), 0),  # unreadable: ignored
        ((("if-none-match", "no quotes"),), 0),
    ],
)  # fmt: skip
def test_preconditions_in_the_order_of_rfc_9110(headers, status):
    assert preconditions(request(*headers), ETAG, MODIFIED) == status


def test_if_range_honours_only_a_strong_match():
    assert if_range(request(), ETAG, MODIFIED, strong=True)
    assert if_range(request(("if-range", ETAG)), ETAG, MODIFIED, strong=True)
    assert not if_range(request(("if-range", '"other"')), ETAG, MODIFIED, strong=True)
    assert not if_range(request(("if-range", 'W/"1f-abc"')), ETAG, MODIFIED, strong=True)
    assert if_range(request(("if-range", DATE)), ETAG, MODIFIED, strong=True)
    assert not if_range(request(("if-range", DATE)), ETAG, MODIFIED, strong=False)


@pytest.mark.parametrize(
    "value, ranges",
    [
        ("bytes=0-9", [(0, 9)]),
        ("bytes=90-", [(90, 99)]),
        ("bytes=-10", [(90, 99)]),
        ("bytes=-1000", [(0, 99)]),
        ("bytes=95-200", [(95, 99)]),
        ("bytes=0-4,5-9,20-29,25-30", [(0, 9), (20, 30)]),  # touching and overlapping merge
        ("bytes= 50-59 , ,0-0", [(0, 0), (50, 59)]),
        ("bytes=100-", []),  # nothing satisfiable: 416
        ("bytes=-0", []),
        ("bytes=9-5", None),  # invalid: the header is ignored
        ("bytes=-", None),
        ("items=0-9", None),
        ("bytes=a-b", None),
        ("bytes=", None),
        ("bytes=0-" + "9" * 5000, [(0, 99)]),  # absurd positions are clipped, not parsed
    ],
)
def test_ranges_are_merged_clipped_refused_or_ignored(value, ranges):
    assert parse_ranges(value, 100) == ranges


def test_the_three_date_forms_are_read_and_nonsense_is_none():
    assert http_date(DATE) == MODIFIED
    assert http_date("Sunday, 06-Nov-94 08:49:37 GMT") == MODIFIED
    assert http_date("Sun Nov  6 08:49:37 1994") == MODIFIED
    assert http_date("yesterday") is None
