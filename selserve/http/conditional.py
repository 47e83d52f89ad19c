"""Conditional and range requests (RFC 9110 §13, §14), sans I/O: what a request's
preconditions and Range field ask of a representation known by its entity tag and
modification time (and, for ranges, its size).

`preconditions()` gives 0 (go on), 304 or 412, evaluated in the order of §13.2.2;
`if_range()` says whether a Range may be honoured (§13.1.5: only for a strong
validator); `parse_ranges()` turns a Range value into satisfiable byte ranges,
merged and sorted ([] for 416, None for a value to ignore).  Malformed fields never
raise: a precondition that cannot be read is ignored, as §13.1 asks.

    entity-tag = [ weak ] opaque-tag            ; §8.8.3
    weak       = %s"W/"
    opaque-tag = DQUOTE *etagc DQUOTE
    etagc      = %x21 / %x23-7E / obs-text
    ranges-specifier = range-unit "=" range-set  ; §14.1.1
    range-set  = 1#range-spec
    range-spec = int-range / suffix-range / other-range
    int-range  = first-pos "-" [ last-pos ]
    suffix-range = "-" suffix-length
"""

from __future__ import annotations

import calendar
import re
from email.utils import parsedate_tz

from .parser import Request

__all__ = ["http_date", "if_range", "parse_ranges", "preconditions"]

# A member of an entity-tag list (If-Match, If-None-Match), with the comma after it.
_ENTITY_TAG = re.compile(r'[\s,]*(W/)?"([\x21\x23-\x7e\x80-\xff]*)"\s*(?:,|\Z)')
# int-range or suffix-range (other-range is not bytes, and not ours).
_RANGE_SPEC = re.compile(r"(\d*)-(\d*)")
# A byte position with more digits than this is past the end of any file.
_MAX_POSITION_DIGITS = 18


def _tags(value: str) -> list[tuple[bool, str]] | None:
    """The (weak, opaque-tag) members of an entity-tag list; None if it is malformed."""
    out = []
    pos = 0
    while pos < len(value):
        m = _ENTITY_TAG.match(value, pos)
        if m is None:
            if value[pos:].strip(" \t,") == "":
                break
            return None
        out.append((m[1] is not None, m[2]))
        pos = m.end()
    return out


def _matches(value: str, etag: str, *, strong_comparison: bool) -> bool:
    """Whether an If-Match/If-None-Match value names `etag` (RFC 9110 §8.8.3.2)."""
    if value.strip() == "*":
        return True  # a current representation exists
    tags = _tags(value)
    if not tags:
        return False
    ours_weak = etag.startswith("W/")
    ours = etag[3:-1] if ours_weak else etag[1:-1]
    for weak, opaque in tags:
        if opaque == ours and (not strong_comparison or not (weak or ours_weak)):
            return True
    return False


def http_date(value: str) -> int | None:
    """Seconds since the epoch for an HTTP-date (any of the three forms of §5.6.7)."""
    parts = parsedate_tz(value)
    if parts is None:
        return None
    try:
        return calendar.timegm(parts[:6]) - (parts[9] or 0)
    except (ValueError, OverflowError):
        return None


def preconditions(request: Request, etag: str, modified: int) -> int:
    """0 to go on, 304 or 412, in the order of RFC 9110 §13.2.2."""
    if_match = request.header("if-match")
    if if_match is not None:
        if not _matches(if_match, etag, strong_comparison=True):
            return 412
    else:
        since = request.header("if-unmodified-since")
        if since is not None:
            date = http_date(since)
            if date is not None and modified > date:
                return 412
    if_none_match = request.header("if-none-match")
    if if_none_match is not None:
        return 304 if _matches(if_none_match, etag, strong_comparison=False) else 0
    since = request.header("if-modified-since")
    if since is not None:
        date = http_date(since)
        if date is not None and modified <= date:
            return 304
    return 0


def if_range(request: Request, etag: str, modified: int, strong: bool) -> bool:
    """Whether the Range may be honoured: no If-Range, or it names the current
    representation by a strong validator (§13.1.5)."""
    value = request.header("if-range")
    if value is None:
        return True
    value = value.strip()
    if value.startswith('"') or value.startswith("W/"):
        return strong and not value.startswith("W/") and value == etag
    date = http_date(value)
    return strong and date is not None and date == modified


def parse_ranges(value: str, size: int) -> list[tuple[int, int]] | None:
    """Satisfiable (first, last) byte ranges, merged and sorted; [] if none is
    satisfiable (416); None if the header is not a valid bytes range-set (ignored)."""
    unit, eq, spec = value.partition("=")
    if not eq or unit.strip().lower() != "bytes":
        return None
    ranges = []
    valid = 0
    for item in spec.split(","):
        item = item.strip(" \t")
        if not item:
            continue  # empty list members are allowed (§5.6.1.2)
        m = _RANGE_SPEC.fullmatch(item)
        if m is None:
            return None
        first_text, last_text = m.groups()
        if first_text:
            first = _position(first_text)
            last = _position(last_text) if last_text else size - 1
            if last_text and last < first:
                return None  # invalid int-range: the whole header is invalid
            valid += 1
            if first < size:
                ranges.append((first, min(last, size - 1)))
        elif last_text:
            valid += 1
            suffix = _position(last_text)
            if suffix > 0:
                ranges.append((max(0, size - suffix), size - 1))
        else:
            return None  # "-" alone
    if not valid:
        return None
    ranges.sort()
    merged: list[tuple[int, int]] = []
    for first, last in ranges:
        if merged and first <= merged[-1][1] + 1:
            if last > merged[-1][1]:
                merged[-1] = (merged[-1][0], last)
        else:
            merged.append((first, last))
    return merged


def _position(digits: str) -> int:
    # int() of thousands of digits is slow (and refused past 4300): no file is that long.
    return int(digits) if len(digits) <= _MAX_POSITION_DIGITS else 10**_MAX_POSITION_DIGITS
