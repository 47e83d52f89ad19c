"""Static files (`selserve/static.py`): unit tests calling `StaticFiles(...)(request)`
directly, then integration tests against a real server in a subprocess, once per backend,
and the command line's static settings (`--dotfiles`, `--static PREFIX=DIR:listing`).

The unit tests build `selserve.app.Request` objects from a small fake head and read the
answer back (bytes, a `FileBody` read with `pread`, or a streamed body), closing what the
server would close.  Files get a fixed modification time in the past so that validators
are strong and dates are known.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import random
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from email.utils import formatdate, parsedate_to_datetime
from pathlib import Path

import psutil
import pytest
import requests
from helpers import RawClient, ServerProcess, get_request
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from static_fixtures.listing_page import ListingPage
from static_fixtures.static_server import StaticServer

from selserve import file_cache
from selserve import static as static_module
from selserve.app import FileBody, Request, Response
from selserve.file_cache import OpenFileCache
from selserve.static import MAX_RANGE_PARTS, ByteRanges, StaticFiles, mount

OLD = 1_700_000_000  # Tue, 14 Nov 2023 22:13:20 GMT: long enough ago for strong validators
OLD_HTTP = formatdate(OLD, usegmt=True)
HELLO = b"hello, static world\n"
DATA = random.Random(4).randbytes(10_000)
SECRET = b"TOP-SECRET-OUTSIDE-THE-ROOT\n"
INDEX = b"<!doctype html><title>site</title><p>the index</p>\n"


# --------------------------------------------------------------------------- requests


def make_request(target: str, method: str = "GET", headers=()) -> Request:
    path, _, query = target.partition("?")
    fields = [(k.lower(), v) for k, v in headers]
    request = Request(
        method, target, path, query, "HTTP/1.1", fields, True, None, False, False, host="t"
    )
    return request.arrived(b"", ("127.0.0.1", 40000))


@dataclass
class Answer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    kind: str  # "bytes", "file" or "stream"
    offset: int | None = None  # of a FileBody
    count: int | None = None
    extra: dict = field(default_factory=dict)

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k.lower() == name.lower()]
        assert len(values) <= 1, f"header {name} given {len(values)} times: {self.headers}"
        return values[0] if values else None

    @property
    def length(self) -> int:
        """The Content-Length the server would send."""
        if self.kind == "stream":
            return int(self.header("Content-Length"))
        return self.count if self.kind == "file" else len(self.body)


def read_body(response: Response) -> Answer:
    """Take the body as the server would (and close it as the server would)."""
    body = response.body
    if isinstance(body, bytes):
        return Answer(response.status, response.headers, body, "bytes")
    if isinstance(body, FileBody):
        try:
            data = os.pread(body.fileobj.fileno(), body.count, body.offset) if body.count else b""
        finally:
            body.close()
        return Answer(response.status, response.headers, data, "file", body.offset, body.count)
    try:
        data = b"".join(body)
    finally:
        body.close()
    return Answer(response.status, response.headers, data, "stream")


def fetch(app, target: str, method: str = "GET", headers=()) -> Answer:
    response = app(make_request(target, method, headers))
    assert isinstance(response, Response), response
    return read_body(response)


# --------------------------------------------------------------------------- the tree


def age(*paths: Path, when: int = OLD) -> None:
    for path in paths:
        os.utime(path, (when, when), follow_symlinks=False)


def build_tree(base: Path) -> Path:
    """root/ with a few files and folders, and outside/secret.txt beside it."""
    root = base / "root"
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "site").mkdir()
    (root / "%2e%2e").mkdir()
    (root / "hello.txt").write_bytes(HELLO)
    (root / "data.bin").write_bytes(DATA)
    (root / "empty.txt").write_bytes(b"")
    (root / "sub" / "inner.txt").write_bytes(b"inner\n")
    (root / "site" / "index.html").write_bytes(INDEX)
    (root / "site" / "other.txt").write_bytes(b"other\n")
    (root / "%2e%2e" / "x.txt").write_bytes(b"a folder literally named %2e%2e\n")
    outside = base / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(SECRET)
    age(*sorted(base.rglob("*"), key=lambda p: -len(p.parts)), root, outside)
    return root


@pytest.fixture
def root(tmp_path) -> Path:
    return build_tree(tmp_path)


@pytest.fixture(params=["uncached", "cached"])
def static(root, request) -> StaticFiles:
    """StaticFiles as embedders get it, and as the command line runs it: with an open-file
    cache (--open-file-cache), which must not change any answer below."""
    if request.param == "cached":
        return StaticFiles(root, open_file_cache=OpenFileCache(1000, 1.0))
    return StaticFiles(root)


def expire_at_once(static: StaticFiles) -> None:
    """A file changed must show at once: with a cache, once its entry expires (at
    --open-file-cache-valid; 0 here, so that the change is seen by the next request)."""
    if static.cache is not None:
        static.cache.valid = 0.0


# --------------------------------------------------------------------------- files


def test_file_answer_carries_type_length_dates_validator_and_ranges(static):
    answer = fetch(static, "/hello.txt")
    assert answer.status == 200
    assert answer.body == HELLO
    assert answer.header("Content-Type") == "text/plain; charset=utf-8"
    assert answer.length == len(HELLO)
    assert answer.header("Last-Modified") == OLD_HTTP
    assert re.fullmatch(r'"[0-9a-f]+-[0-9a-f]+"', answer.header("ETag"))
    assert answer.header("Accept-Ranges") == "bytes"
    assert answer.header("X-Content-Type-Options") == "nosniff"


def test_file_content_goes_out_as_a_file_body_not_bytes(static):
    if static.cache is not None:  # a small file the cache keeps whole goes out as bytes
        assert static(make_request("/data.bin")).body == DATA
        static.cache.clear()
        file_cache.DATA_BUDGET, budget = 0, file_cache.DATA_BUDGET
        try:
            response = static(make_request("/data.bin"))
        finally:
            file_cache.DATA_BUDGET = budget
    else:
        response = static(make_request("/data.bin"))
    try:
        assert isinstance(response.body, FileBody)
        assert (response.body.offset, response.body.count) == (0, len(DATA))
    finally:
        response.body.close()


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("page.html", "text/html; charset=utf-8"),
        ("style.css", "text/css; charset=utf-8"),
        ("notes.txt", "text/plain; charset=utf-8"),
        ("data.json", "application/json; charset=utf-8"),
        ("picture.png", "image/png"),
        ("archive.tar.gz", "application/gzip"),
        ("blob.gz", "application/gzip"),
        ("mystery.xyzzy", "application/octet-stream"),
        ("noextension", "application/octet-stream"),
    ],
)
def test_content_type_comes_from_the_name(root, static, name, expected):
    (root / name).write_bytes(b"x")
    answer = fetch(static, "/" + name)
    assert answer.header("Content-Type") == expected
    assert answer.header("Content-Encoding") is None  # a .gz asked for by name is not decoded


def test_settled_file_gets_a_strong_etag(static):
    assert not fetch(static, "/hello.txt").header("ETag").startswith("W/")


def test_file_modified_within_the_last_second_gets_a_weak_etag(root, static):
    (root / "hello.txt").write_bytes(b"just now\n")
    assert fetch(static, "/hello.txt").header("ETag").startswith('W/"')


def test_last_modified_in_the_future_is_clamped_to_now(root, static):
    age(root / "hello.txt", when=int(time.time()) + 86400 * 365)
    before = int(time.time())
    answer = fetch(static, "/hello.txt")
    stamp = parsedate_to_datetime(answer.header("Last-Modified")).timestamp()
    assert before <= stamp <= time.time() + 1, answer.headers


def test_empty_file_is_served_with_length_zero(static):
    answer = fetch(static, "/empty.txt")
    assert (answer.status, answer.body, answer.length) == (200, b"", 0)


# --------------------------------------------------------------------------- ETag changes


def etag_of(static, path="/hello.txt") -> str:
    return fetch(static, path).header("ETag")


def test_rewritten_file_with_new_length_gets_a_new_etag(root, static):
    expire_at_once(static)
    first = etag_of(static)
    (root / "hello.txt").write_bytes(HELLO + b"more\n")
    age(root / "hello.txt")  # same mtime: the length alone must change the tag
    assert etag_of(static) != first


def test_rewritten_file_with_same_length_and_later_mtime_gets_a_new_etag(root, static):
    expire_at_once(static)
    first = etag_of(static)
    (root / "hello.txt").write_bytes(HELLO.upper())
    age(root / "hello.txt", when=OLD + 1)
    assert etag_of(static) != first


def test_etag_is_size_and_mtime_in_nanoseconds_in_hex(root, static):
    st = os.stat(root / "hello.txt")
    assert etag_of(static) == f'"{st.st_size:x}-{st.st_mtime_ns:x}"'


def test_etag_does_not_depend_on_the_inode(root, static):
    copy = root / "copy.txt"
    copy.write_bytes(HELLO)
    age(copy)  # another inode with the same size and mtime: nothing tells them apart
    assert os.stat(copy).st_ino != os.stat(root / "hello.txt").st_ino
    assert etag_of(static, "/copy.txt") == etag_of(static, "/hello.txt")


def test_replaced_file_with_same_length_and_mtime_to_the_nanosecond_keeps_its_etag(root, static):
    first = etag_of(static)
    fresh = root / "hello.tmp"
    fresh.write_bytes(HELLO.upper())
    age(fresh)
    os.replace(fresh, root / "hello.txt")  # the price of leaving the inode out
    assert etag_of(static) == first


def test_replaced_file_with_same_length_and_another_mtime_gets_a_new_etag(root, static):
    expire_at_once(static)
    first = etag_of(static)
    fresh = root / "hello.tmp"
    fresh.write_bytes(HELLO.upper())
    os.utime(fresh, ns=(OLD * 10**9, OLD * 10**9 + 1))  # one nanosecond later
    os.replace(fresh, root / "hello.txt")
    assert etag_of(static) != first


def test_old_etag_no_longer_gives_304_after_a_change(root, static):
    expire_at_once(static)
    first = etag_of(static)
    (root / "hello.txt").write_bytes(b"changed content\n")
    age(root / "hello.txt", when=OLD + 5)
    answer = fetch(static, "/hello.txt", headers=[("If-None-Match", first)])
    assert (answer.status, answer.body) == (200, b"changed content\n")


# --------------------------------------------------------------------------- conditional


def test_if_none_match_with_the_current_etag_gives_304(static):
    etag = etag_of(static)
    answer = fetch(static, "/hello.txt", headers=[("If-None-Match", etag)])
    assert answer.status == 304
    assert answer.header("ETag") == etag


def test_304_declares_the_length_a_200_would_have(static):
    # RFC 9110 §8.6: a Content-Length on 304 must equal the 200's (the server keeps
    # an app's Content-Length on a 304 and adds none of its own).
    answer = fetch(static, "/hello.txt", headers=[("If-None-Match", etag_of(static))])
    assert (answer.status, answer.header("Content-Length"), answer.body) == (
        304,
        str(len(HELLO)),
        b"",
    )


def test_if_none_match_compares_weakly(static):
    etag = etag_of(static)
    answer = fetch(static, "/hello.txt", headers=[("If-None-Match", "W/" + etag)])
    assert answer.status == 304


def test_if_none_match_list_containing_the_etag_gives_304(static):
    etag = etag_of(static)
    value = f'"nope", W/"other,with,commas", {etag}'
    assert fetch(static, "/hello.txt", headers=[("If-None-Match", value)]).status == 304


def test_if_none_match_list_with_empty_members_is_read(static):
    value = f' , "nope",, {etag_of(static)} ,'
    assert fetch(static, "/hello.txt", headers=[("If-None-Match", value)]).status == 304


def test_if_none_match_star_gives_304(static):
    assert fetch(static, "/hello.txt", headers=[("If-None-Match", "*")]).status == 304


def test_if_none_match_with_another_etag_gives_200(static):
    answer = fetch(static, "/hello.txt", headers=[("If-None-Match", '"something-else"')])
    assert (answer.status, answer.body) == (200, HELLO)


@pytest.mark.parametrize(
    "since",
    [
        OLD_HTTP,  # IMF-fixdate, equal
        formatdate(OLD + 3600, usegmt=True),  # later
        "Tuesday, 14-Nov-23 22:13:20 GMT",  # obsolete RFC 850 form
        "Tue Nov 14 22:13:20 2023",  # obsolete asctime form
    ],
)
def test_if_modified_since_not_before_last_modified_gives_304(static, since):
    assert fetch(static, "/hello.txt", headers=[("If-Modified-Since", since)]).status == 304


@pytest.mark.parametrize("since", [formatdate(OLD - 1, usegmt=True), "not a date", ""])
def test_if_modified_since_earlier_or_invalid_gives_200(static, since):
    answer = fetch(static, "/hello.txt", headers=[("If-Modified-Since", since)])
    assert (answer.status, answer.body) == (200, HELLO)


def test_if_none_match_overrides_if_modified_since(static):
    headers = [("If-None-Match", '"other"'), ("If-Modified-Since", OLD_HTTP)]
    assert fetch(static, "/hello.txt", headers=headers).status == 200


def test_head_with_matching_if_none_match_gives_304(static):
    answer = fetch(static, "/hello.txt", "HEAD", [("If-None-Match", etag_of(static))])
    assert answer.status == 304


def test_if_match_with_another_etag_gives_412(static):
    assert fetch(static, "/hello.txt", headers=[("If-Match", '"other"')]).status == 412


def test_if_match_with_the_current_etag_gives_200(static):
    answer = fetch(static, "/hello.txt", headers=[("If-Match", etag_of(static))])
    assert (answer.status, answer.body) == (200, HELLO)


def test_if_unmodified_since_before_last_modified_gives_412(static):
    since = formatdate(OLD - 10, usegmt=True)
    assert fetch(static, "/hello.txt", headers=[("If-Unmodified-Since", since)]).status == 412


# --------------------------------------------------------------------------- ranges


def ranged(static, spec: str, path="/data.bin", headers=()) -> Answer:
    return fetch(static, path, headers=[("Range", spec), *headers])


def test_range_of_the_first_bytes_gives_206(static):
    answer = ranged(static, "bytes=0-99")
    assert answer.status == 206
    assert answer.body == DATA[:100]
    assert answer.header("Content-Range") == f"bytes 0-99/{len(DATA)}"
    assert (answer.kind, answer.offset, answer.count) == ("file", 0, 100)


def test_range_of_the_last_byte_gives_206(static):
    last = len(DATA) - 1
    answer = ranged(static, f"bytes={last}-{last}")
    assert (answer.status, answer.body) == (206, DATA[-1:])
    assert answer.header("Content-Range") == f"bytes {last}-{last}/{len(DATA)}"


def test_suffix_range_gives_the_tail(static):
    answer = ranged(static, "bytes=-300")
    assert (answer.status, answer.body) == (206, DATA[-300:])
    assert answer.header("Content-Range") == f"bytes {len(DATA) - 300}-{len(DATA) - 1}/{len(DATA)}"


def test_suffix_longer_than_the_file_gives_all_of_it(static):
    answer = ranged(static, "bytes=-999999")
    assert (answer.status, answer.body) == (206, DATA)


def test_open_ended_range_runs_to_the_end(static):
    answer = ranged(static, "bytes=9000-")
    assert (answer.status, answer.body) == (206, DATA[9000:])
    assert answer.header("Content-Range") == f"bytes 9000-{len(DATA) - 1}/{len(DATA)}"


def test_range_past_the_end_is_clipped(static):
    answer = ranged(static, "bytes=9990-20000")
    assert (answer.status, answer.body) == (206, DATA[9990:])


def test_range_unit_is_case_insensitive_and_spaces_are_allowed(static):
    answer = ranged(static, "Bytes= 10-19 ")
    assert (answer.status, answer.body) == (206, DATA[10:20])


@pytest.mark.parametrize("spec", [f"bytes={len(DATA)}-", "bytes=20000-30000", "bytes=-0"])
def test_unsatisfiable_range_gives_416_with_the_length(static, spec):
    answer = ranged(static, spec)
    assert answer.status == 416
    assert answer.header("Content-Range") == f"bytes */{len(DATA)}"


@pytest.mark.parametrize(
    "spec", ["bytes=5-2", "bytes=abc", "items=0-1", "bytes=", "bytes=-", "bytes 0-1", "bytes=1-2-3"]
)
def test_invalid_range_is_ignored(static, spec):
    answer = ranged(static, spec)
    assert (answer.status, answer.body) == (200, DATA)


def test_range_positions_with_thousands_of_digits_are_handled(static):
    huge = "9" * 5000
    assert ranged(static, f"bytes={huge}-").status == 416
    answer = ranged(static, f"bytes=10-{huge}")
    assert (answer.status, answer.body) == (206, DATA[10:])


def test_range_on_an_empty_file_gives_the_whole_empty_file(static):
    answer = ranged(static, "bytes=-5", path="/empty.txt")
    assert (answer.status, answer.body) == (200, b"")


def test_if_range_with_the_current_etag_honours_the_range(static):
    etag = etag_of(static, "/data.bin")
    answer = ranged(static, "bytes=0-9", headers=[("If-Range", etag)])
    assert (answer.status, answer.body) == (206, DATA[:10])


def test_if_range_with_a_stale_etag_gives_the_whole_file(static):
    answer = ranged(static, "bytes=0-9", headers=[("If-Range", '"stale"')])
    assert (answer.status, answer.body) == (200, DATA)


def test_if_range_with_a_weak_etag_gives_the_whole_file(static):
    etag = etag_of(static, "/data.bin")
    answer = ranged(static, "bytes=0-9", headers=[("If-Range", "W/" + etag)])
    assert (answer.status, answer.body) == (200, DATA)


def test_if_range_with_the_last_modified_date_honours_the_range(static):
    answer = ranged(static, "bytes=0-9", headers=[("If-Range", OLD_HTTP)])
    assert (answer.status, answer.body) == (206, DATA[:10])


def test_if_range_with_another_date_gives_the_whole_file(static):
    other = formatdate(OLD + 60, usegmt=True)
    answer = ranged(static, "bytes=0-9", headers=[("If-Range", other)])
    assert (answer.status, answer.body) == (200, DATA)


def test_if_range_on_a_just_modified_file_gives_the_whole_file(root, static):
    (root / "data.bin").write_bytes(DATA)  # mtime now: its validators are weak
    answer = fetch(static, "/data.bin", headers=[("Range", "bytes=0-9")])
    etag = answer.header("ETag")
    answer = ranged(static, "bytes=0-9", headers=[("If-Range", etag)])
    assert (answer.status, answer.body) == (200, DATA)


def parse_multipart(answer: Answer) -> list[tuple[dict[str, str], bytes]]:
    m = re.fullmatch(
        r"multipart/byteranges; boundary=([0-9A-Za-z'()+_,\-./:=?]+)", answer.header("Content-Type")
    )
    assert m, answer.header("Content-Type")
    delimiter = b"--" + m[1].encode()
    body = answer.body
    assert body.startswith(delimiter + b"\r\n"), body[:100]
    assert body.endswith(b"\r\n" + delimiter + b"--\r\n"), body[-100:]
    inner = body[len(delimiter) + 2 : -(len(delimiter) + 6)]
    parts = []
    for chunk in inner.split(b"\r\n" + delimiter + b"\r\n"):
        head, sep, data = chunk.partition(b"\r\n\r\n")
        assert sep, chunk[:200]
        fields = dict(line.split(": ", 1) for line in head.decode("latin-1").split("\r\n"))
        parts.append((fields, data))
    return parts


def test_several_ranges_give_multipart_byteranges(static):
    answer = ranged(static, "bytes=0-9, 100-199, -5")
    assert answer.status == 206
    assert len(answer.body) == answer.length
    parts = parse_multipart(answer)
    total = len(DATA)
    assert [(p["Content-Range"], data) for p, data in parts] == [
        (f"bytes 0-9/{total}", DATA[:10]),
        (f"bytes 100-199/{total}", DATA[100:200]),
        (f"bytes {total - 5}-{total - 1}/{total}", DATA[-5:]),
    ]
    assert {p["Content-Type"] for p, _ in parts} == {"application/octet-stream"}


def test_multipart_body_is_read_in_blocks_not_all_at_once(root, static):
    big = random.Random(9).randbytes(300_000)
    (root / "big.bin").write_bytes(big)
    response = static(make_request("/big.bin", headers=[("Range", "bytes=0-199999,250000-")]))
    assert isinstance(response.body, ByteRanges)
    pieces = list(response.body)
    response.body.close()
    assert max(len(p) for p in pieces) <= 64 * 1024
    assert b"".join(pieces).count(big[:1000]) == 1


def test_overlapping_and_adjacent_ranges_are_merged_into_one(static):
    answer = ranged(static, "bytes=50-99,0-49,20-60")
    assert (answer.status, answer.body) == (206, DATA[:100])
    assert answer.header("Content-Range") == f"bytes 0-99/{len(DATA)}"


def test_too_many_ranges_give_the_whole_file(static):
    spec = "bytes=" + ",".join(f"{i * 10}-{i * 10 + 1}" for i in range(MAX_RANGE_PARTS + 1))
    answer = ranged(static, spec)
    assert (answer.status, answer.body) == (200, DATA)


def test_unsatisfiable_members_are_dropped_from_a_range_set(static):
    answer = ranged(static, "bytes=0-4, 50000-60000")
    assert (answer.status, answer.body) == (206, DATA[:5])


def test_byte_ranges_body_closes_its_file_even_if_never_read(root):
    file = open(root / "data.bin", "rb")  # noqa: SIM115 - the body owns it
    body = ByteRanges(file, [(0, 1), (5, 6)], len(DATA), "application/octet-stream")
    body.close()
    assert file.closed


# --------------------------------------------------------------------------- HEAD


def test_head_gives_the_same_headers_as_get_for_a_file(static):
    get = fetch(static, "/data.bin")
    head = fetch(static, "/data.bin", "HEAD")
    assert (head.status, head.headers, head.length) == (get.status, get.headers, get.length)
    # The server sends no content for HEAD, but its length (kept whole by the cache,
    # a small file is bytes).
    assert head.kind == ("file" if static.cache is None else "bytes") == get.kind


def test_head_gives_the_same_headers_as_get_for_a_listing(static):
    get = fetch(static, "/sub/")
    head = fetch(static, "/sub/", "HEAD")
    assert (head.status, head.headers, head.length) == (get.status, get.headers, get.length)


def test_head_ignores_range(static):
    # RFC 9110 §14.2: range handling is defined for GET only.
    head = fetch(static, "/data.bin", "HEAD", [("Range", "bytes=0-9")])
    assert (head.status, head.length, head.header("Content-Range")) == (200, len(DATA), None)


@pytest.mark.parametrize("target", ["/missing", "/sub", "/site/"])
def test_head_status_matches_get(static, target):
    assert fetch(static, target, "HEAD").status == fetch(static, target).status


# --------------------------------------------------------------------------- methods


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE"])
def test_other_methods_get_405_with_allow(static, method):
    answer = fetch(static, "/hello.txt", method)
    assert answer.status == 405
    assert answer.header("Allow") == "GET, HEAD"


# --------------------------------------------------------------------------- directories


def listing(static, target="/") -> ListingPage:
    answer = fetch(static, target)
    assert answer.status == 200, answer
    assert answer.header("Content-Type") == "text/html; charset=utf-8"
    return ListingPage(answer.body.decode("utf-8"))


def test_directory_with_index_html_serves_it(static):
    answer = fetch(static, "/site/")
    assert (answer.status, answer.body) == (200, INDEX)
    assert answer.header("Content-Type") == "text/html; charset=utf-8"


def test_directory_without_trailing_slash_is_redirected(static):
    answer = fetch(static, "/sub")
    assert answer.status in (301, 308)
    assert answer.header("Location") == "./sub/"


def test_redirect_keeps_the_query(static):
    assert fetch(static, "/sub/deeper?x=1&y=2").header("Location") == "./deeper/?x=1&y=2"


def test_redirect_location_cannot_leave_the_site(root, static):
    (root / "evil.com:80").mkdir()
    location = fetch(static, "/evil.com:80").header("Location")
    assert location == "./evil.com:80/"  # relative: never a scheme or another host


def test_file_with_trailing_slash_is_404(static):
    assert fetch(static, "/hello.txt/").status == 404


def test_missing_file_is_404(static):
    assert fetch(static, "/nope.txt").status == 404


def test_listing_shows_every_entry_sorted_directories_first(root, static):
    for name in ("Zeta.txt", "alpha.txt", "beta.TXT"):
        (root / name).write_bytes(b"z")
    for name in ("Beta", "alpha_dir"):
        (root / name).mkdir()
    assert listing(static).names() == [
        "%2e%2e/",
        "alpha_dir/",
        "Beta/",
        "site/",
        "sub/",
        "alpha.txt",
        "beta.TXT",
        "data.bin",
        "empty.txt",
        "hello.txt",
        "Zeta.txt",
    ]


def test_listing_escapes_names_as_html(root, static):
    (root / "<b>&\"'.txt").write_bytes(b"x")
    answer = fetch(static, "/")
    assert b"&lt;b&gt;&amp;&quot;&#x27;.txt" in answer.body
    assert b"<b>" not in answer.body
    assert "<b>&\"'.txt" in ListingPage(answer.body.decode()).names()


def test_listing_quotes_names_in_links(root, static):
    names = ["a b#?%.txt", "café.txt", "<i>x<|i>.txt", "q\"uote'.txt"]
    for name in names:
        (root / name).write_bytes(name.encode())
    links = dict((text, href) for href, text in listing(static).links)
    assert links["a b#?%.txt"] == "a%20b%23%3F%25.txt"
    assert links["café.txt"] == "caf%C3%A9.txt"
    for name in names:
        assert fetch(static, "/" + links[name]).body == name.encode()


def test_listing_link_to_a_non_utf8_name_leads_to_it(root, static):
    os.close(os.open(os.path.join(os.fsencode(root), b"bad\xff.txt"), os.O_CREAT | os.O_WRONLY))
    links = dict((text, href) for href, text in listing(static).links)
    assert links["bad\ufffd.txt"] == "bad%FF.txt"
    assert fetch(static, "/bad%FF.txt").status == 200


def test_listing_shows_size_and_modification_time(static):
    page = fetch(static, "/").body.decode()
    row = re.search(r'<a href="data\.bin">data\.bin</a></td><td[^>]*>(\d+)</td><td>([^<]*)<', page)
    assert row, page
    assert row[1] == str(len(DATA))
    assert row[2] == time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(OLD))


def test_listing_of_a_subdirectory_links_to_its_parent(static):
    assert ("../", "../") in listing(static, "/sub/").links


def test_listing_of_the_root_has_no_parent_link(static):
    assert "../" not in [href for href, _ in listing(static).links]


def test_listing_title_names_the_decoded_path(root, static):
    (root / "my dir").mkdir()
    page = fetch(static, "/my%20dir/").body.decode()
    assert "<title>Index of /my dir/</title>" in page


def test_no_listing_gives_403_for_a_directory(root):
    answer = fetch(StaticFiles(root, listing=False), "/sub/")
    assert answer.status == 403
    assert b"inner.txt" not in answer.body


def test_no_listing_still_serves_index_html(root):
    assert fetch(StaticFiles(root, listing=False), "/site/").body == INDEX


def test_index_html_that_is_a_directory_is_ignored(root, static):
    (root / "sub" / "index.html").mkdir()
    assert "index.html/" in listing(static, "/sub/").names()


# --------------------------------------------------------------------------- dot-files

ENV = b"SECRET_KEY=do-not-serve\n"
SECURITY_TXT = b"Contact: mailto:security@example.org\n"


@pytest.fixture
def dotted(root) -> Path:
    """root/ plus what a project folder tends to hold: .env, .git/, and a .well-known/."""
    (root / ".env").write_bytes(ENV)
    (root / ".git").mkdir()
    (root / ".git" / "config").write_bytes(b"[core]\n")
    (root / ".well-known").mkdir()
    (root / ".well-known" / "security.txt").write_bytes(SECURITY_TXT)
    (root / ".well-known" / ".secret").write_bytes(b"hidden inside .well-known\n")
    (root / "sub" / ".hidden").write_bytes(b"hidden\n")
    (root / "sub" / ".well-known").mkdir()
    (root / "sub" / ".well-known" / "x.txt").write_bytes(b"not at the root\n")
    return root


HIDDEN_TARGETS = [
    "/.env",
    "/%2eenv",
    "/%2Eenv",
    "/.git/config",
    "/%2egit/config",
    "/.git/",
    "/.git",
    "/sub/.hidden",
    "/sub/%2ehidden",
    "/sub/.well-known/x.txt",
    "/.well-known/.secret",
]


@pytest.mark.parametrize("target", HIDDEN_TARGETS)
@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_dot_paths_are_404_by_default(dotted, static, target, method):
    answer = fetch(static, target, method)
    assert answer.status == 404, answer
    assert ENV not in answer.body


def test_well_known_at_the_root_is_served_by_default(dotted, static):
    answer = fetch(static, "/.well-known/security.txt")
    assert (answer.status, answer.body) == (200, SECURITY_TXT)


def test_well_known_without_its_slash_is_redirected(dotted, static):
    assert fetch(static, "/.well-known").header("Location") == "./.well-known/"


def test_listing_leaves_out_dot_names_but_keeps_well_known(dotted, static):
    names = listing(static).names()
    assert ".well-known/" in names
    assert [name for name in names if name.startswith(".")] == [".well-known/"]


def test_listing_of_a_subdirectory_leaves_out_every_dot_name(dotted, static):
    assert listing(static, "/sub/").names() == ["deeper/", "inner.txt"]


def test_listing_of_well_known_leaves_out_its_dot_names(dotted, static):
    assert listing(static, "/.well-known/").names() == ["security.txt"]


@pytest.mark.parametrize("target", [t for t in HIDDEN_TARGETS if not t.startswith("/.git")])
def test_dotfiles_serves_dot_paths(dotted, target):
    assert fetch(StaticFiles(dotted, dotfiles=True), target).status == 200


def test_dotfiles_serves_the_content(dotted):
    assert fetch(StaticFiles(dotted, dotfiles=True), "/.env").body == ENV


def test_dotfiles_lists_dot_names(dotted):
    static = StaticFiles(dotted, dotfiles=True)
    assert {".env", ".git/", ".well-known/"} <= set(listing(static).names())
    assert {".hidden", ".well-known/"} <= set(listing(static, "/sub/").names())


def test_mount_hides_dot_paths_under_its_prefix(dotted, static):
    app = mount(fallback_app, [("/assets", static)])
    assert fetch(app, "/assets/.env").status == 404
    assert fetch(app, "/assets/%2egit/config").status == 404
    assert fetch(app, "/assets/.well-known/security.txt").body == SECURITY_TXT


# --------------------------------------------------------------------------- path safety

TRAVERSALS = [
    "/../outside/secret.txt",
    "/%2e%2e/outside/secret.txt",
    "/%2E%2E/outside/secret.txt",
    "/%2E%2E%2Foutside%2Fsecret.txt",
    "/..%2foutside%2fsecret.txt",
    "/..%2Foutside/secret.txt",
    "/.%2e/outside/secret.txt",
    "/%2e./outside/secret.txt",
    "/%5c..%5coutside%5csecret.txt",
    "/..%5coutside%5csecret.txt",
    "/..\\outside\\secret.txt",
    "/sub/../../outside/secret.txt",
    "/sub/%2e%2e/%2e%2e/outside/secret.txt",
    "/sub/..%2f..%2foutside%2fsecret.txt",
    "/%252e%252e/outside/secret.txt",  # decoded once: a folder named "%2e%2e"
    "/%252e%252e%252foutside%252fsecret.txt",
    "/%c0%ae%c0%ae/outside/secret.txt",  # overlong UTF-8 dots are only bytes
    "/%%32%65%%32%65/outside/secret.txt",  # malformed escapes
    "/..",
    "/%2e%2e",
    "/sub/..",
    "/./hello.txt",
    "//etc/passwd",
    "//",
    "/sub//inner.txt",
    "/%2fetc%2fpasswd",
    "/%2Fetc/passwd",
    "/hello.txt%00",
    "/hello.txt%00.png",
    "/%00",
    "/sub%00/inner.txt",
    "/{outside}/secret.txt",  # the outside folder's absolute path, under the root
    "/%2F{outside}/secret.txt",
    "/%2F{outside_encoded}%2Fsecret.txt",
]


@pytest.mark.parametrize("follow_symlinks", [False, True], ids=["checked", "links-followed"])
@pytest.mark.parametrize("template", TRAVERSALS)
def test_paths_escaping_the_root_are_refused(root, template, follow_symlinks):
    # With follow_symlinks the real-path check is off: the path rules alone must hold.
    static = StaticFiles(root, follow_symlinks=follow_symlinks)
    outside = str(root.parent / "outside").lstrip("/")
    target = template.format(outside=outside, outside_encoded=outside.replace("/", "%2F"))
    answer = fetch(static, target)
    assert answer.status in (403, 404), (target, answer)
    assert SECRET not in answer.body


@pytest.fixture(scope="module")
def fuzz_roots(tmp_path_factory) -> tuple[Path, Path]:
    """(a tree with links leaving it, the same tree without them)."""
    linked = build_tree(tmp_path_factory.mktemp("fuzz-linked"))
    (linked / "out").symlink_to(linked.parent / "outside")
    (linked / "link.txt").symlink_to(linked.parent / "outside" / "secret.txt")
    return linked, build_tree(tmp_path_factory.mktemp("fuzz-plain"))


PATH_TOKENS = [
    "/",
    "..",
    ".",
    "%2e",
    "%2E",
    "%2f",
    "%2F",
    "%5c",
    "%5C",
    "\\",
    "%00",
    "%25",
    "%252e",
    "%c0%ae",
    "outside",
    "secret.txt",
    "sub",
    "hello.txt",
    "out",
    "link.txt",
    "%2e%2e",
    "",
]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tokens=st.lists(st.sampled_from(PATH_TOKENS), min_size=1, max_size=10))
def test_no_generated_path_reaches_outside_the_root(fuzz_roots, tokens):
    target = "/" + "".join(tokens)
    linked, plain = fuzz_roots
    # Links leaving the root, refused; and no links, with the real-path check off.
    for root, static in (
        (linked, StaticFiles(linked)),
        (plain, StaticFiles(plain, follow_symlinks=True)),
    ):
        body = static(make_request(target)).body
        if isinstance(body, FileBody):
            where = os.readlink(f"/proc/self/fd/{body.fileobj.fileno()}")
            body.close()
            assert where.startswith(str(root) + "/"), (target, where)
        else:
            data = body if isinstance(body, bytes) else b"".join(body)
            assert SECRET not in data and b"secret.txt" not in data, (target, data[:200])


def test_names_with_backslashes_are_refused_and_not_listed(root, static):
    # Harmless on POSIX, a separator elsewhere: refused everywhere, so not offered.
    (root / "back\\slash.txt").write_bytes(b"x")
    assert fetch(static, "/back%5Cslash.txt").status == 404
    assert fetch(static, "/back\\slash.txt").status == 404
    assert not [name for name in listing(static).names() if "slash" in name]


def test_double_encoded_dots_name_a_literal_folder(static):
    answer = fetch(static, "/%252e%252e/x.txt")
    assert (answer.status, answer.body) == (200, b"a folder literally named %2e%2e\n")


def test_symlink_to_a_file_outside_the_root_is_refused(root, static):
    (root / "link.txt").symlink_to(root.parent / "outside" / "secret.txt")
    answer = fetch(static, "/link.txt")
    assert answer.status in (403, 404)
    assert SECRET not in answer.body


def test_symlink_to_a_folder_outside_the_root_is_refused(root, static):
    (root / "out").symlink_to(root.parent / "outside")
    assert fetch(static, "/out/secret.txt").status in (403, 404)
    assert fetch(static, "/out/").status in (403, 404)


def test_follow_symlinks_allows_links_that_leave_the_root(root):
    (root / "link.txt").symlink_to(root.parent / "outside" / "secret.txt")
    (root / "out").symlink_to(root.parent / "outside")
    static = StaticFiles(root, follow_symlinks=True)
    assert fetch(static, "/link.txt").body == SECRET
    assert fetch(static, "/out/secret.txt").body == SECRET


def test_symlinks_inside_the_root_are_served(root, static):
    (root / "alias.txt").symlink_to("hello.txt")
    (root / "alias_dir").symlink_to("sub")
    assert fetch(static, "/alias.txt").body == HELLO
    assert fetch(static, "/alias_dir/inner.txt").body == b"inner\n"


def test_listing_hides_links_that_leave_the_root(root):
    (root / "out").symlink_to(root.parent / "outside")
    (root / "alias.txt").symlink_to("hello.txt")
    assert "out/" not in listing(StaticFiles(root)).names()
    assert "alias.txt" in listing(StaticFiles(root)).names()
    assert "out/" in listing(StaticFiles(root, follow_symlinks=True)).names()


def test_root_given_through_a_symlink_works(root, tmp_path):
    (tmp_path / "root_link").symlink_to(root)
    assert fetch(StaticFiles(tmp_path / "root_link"), "/hello.txt").body == HELLO


def test_index_html_linking_outside_the_root_is_not_served(root, static):
    (root / "sub" / "index.html").symlink_to(root.parent / "outside" / "secret.txt")
    answer = fetch(static, "/sub/")
    assert SECRET not in answer.body
    assert "inner.txt" in ListingPage(answer.body.decode()).names()


def test_fifo_is_refused_without_blocking(root, static):
    os.mkfifo(root / "pipe")
    result = []
    worker = threading.Thread(target=lambda: result.append(fetch(static, "/pipe")), daemon=True)
    worker.start()
    worker.join(5.0)
    assert not worker.is_alive(), "opening a FIFO blocked"
    assert result[0].status in (403, 404)


def test_symlink_loop_is_404(root, static):
    (root / "loop").symlink_to("loop")
    assert fetch(static, "/loop").status == 404


def test_file_the_server_may_not_read_is_403(static, monkeypatch):
    # As root every file is readable, so the refusal comes from a stand-in for open().
    def refuse(path, flags, *args, **kwargs):
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr("selserve.static.os.open", refuse)
    assert fetch(static, "/hello.txt").status == 403


def test_root_must_be_a_directory(root):
    with pytest.raises(ValueError, match="not a directory"):
        StaticFiles(root / "hello.txt")


# --------------------------------------------------------------------------- the path memo


def test_a_remembered_path_still_follows_the_file_system(root, static):
    expire_at_once(static)
    assert fetch(static, "/later.txt").status == 404
    (root / "later.txt").write_bytes(b"now here\n")
    assert fetch(static, "/later.txt").body == b"now here\n"
    (root / "later.txt").unlink()
    assert fetch(static, "/later.txt").status == 404


@pytest.mark.parametrize("target", ["/.env", "/a/../hello.txt", "/%2e%2e/etc/passwd", "//x"])
def test_a_refused_path_is_refused_every_time(static, target):
    for _ in range(3):
        assert fetch(static, target).status == 404


def test_the_path_memo_is_bounded(static):
    for n in range(static_module.RESOLVED_MAX + 10):
        fetch(static, f"/missing-{n}.txt")
    assert len(static._resolved) <= static_module.RESOLVED_MAX
    assert fetch(static, "/hello.txt").body == HELLO  # and it works on from there


# --------------------------------------------------------------------------- precompressed


@pytest.fixture
def assets(root) -> Path:
    js = b"console.log('hello');\n" * 50
    (root / "app.js").write_bytes(js)
    (root / "app.js.gz").write_bytes(gzip.compress(js))
    (root / "app.js.br").write_bytes(b"BROTLI-BYTES-STAND-IN")
    (root / "plain.css").write_bytes(b"body{}\n")
    (root / "gzonly.css").write_bytes(b"p{}\n" * 40)
    (root / "gzonly.css.gz").write_bytes(gzip.compress(b"p{}\n" * 40))
    age(*root.glob("*.*"))
    return root


def test_precompressed_prefers_brotli_when_both_are_accepted(assets):
    answer = fetch(
        StaticFiles(assets, precompressed=True),
        "/app.js",
        headers=[("Accept-Encoding", "gzip, deflate, br")],
    )
    assert answer.body == b"BROTLI-BYTES-STAND-IN"
    assert answer.header("Content-Encoding") == "br"
    assert answer.header("Vary") == "Accept-Encoding"
    assert answer.header("Content-Type").split(";")[0] in (
        "application/javascript",
        "text/javascript",
    )


def test_precompressed_serves_gzip_to_a_gzip_client(assets):
    answer = fetch(
        StaticFiles(assets, precompressed=True), "/app.js", headers=[("Accept-Encoding", "gzip")]
    )
    assert answer.header("Content-Encoding") == "gzip"
    assert gzip.decompress(answer.body) == (assets / "app.js").read_bytes()


def test_precompressed_respects_q_zero_and_preferences(assets):
    static = StaticFiles(assets, precompressed=True)
    no_br = fetch(static, "/app.js", headers=[("Accept-Encoding", "br;q=0, gzip")])
    assert no_br.header("Content-Encoding") == "gzip"
    gzip_first = fetch(static, "/app.js", headers=[("Accept-Encoding", "br;q=0.5, gzip;q=0.9")])
    assert gzip_first.header("Content-Encoding") == "gzip"
    star = fetch(static, "/app.js", headers=[("Accept-Encoding", "*")])
    assert star.header("Content-Encoding") == "br"


def test_precompressed_sends_identity_without_accept_encoding_but_still_varies(assets):
    answer = fetch(StaticFiles(assets, precompressed=True), "/app.js")
    assert answer.body == (assets / "app.js").read_bytes()
    assert answer.header("Content-Encoding") is None
    assert answer.header("Vary") == "Accept-Encoding"


def test_precompressed_falls_back_to_identity_without_a_variant(assets):
    static = StaticFiles(assets, precompressed=True)
    answer = fetch(static, "/plain.css", headers=[("Accept-Encoding", "gzip, br")])
    assert (answer.body, answer.header("Content-Encoding")) == (b"body{}\n", None)
    answer = fetch(static, "/gzonly.css", headers=[("Accept-Encoding", "gzip, br")])
    assert answer.header("Content-Encoding") == "gzip"


def test_precompressed_variant_has_its_own_etag(assets):
    static = StaticFiles(assets, precompressed=True)
    identity = fetch(static, "/app.js").header("ETag")
    gz = fetch(static, "/app.js", headers=[("Accept-Encoding", "gzip")]).header("ETag")
    assert identity != gz


def test_precompressed_variant_etag_is_its_own_size_and_mtime_and_coding(assets):
    static = StaticFiles(assets, precompressed=True)
    st = os.stat(assets / "app.js.gz")
    gz = fetch(static, "/app.js", headers=[("Accept-Encoding", "gzip")]).header("ETag")
    assert gz == f'"{st.st_size:x}-{st.st_mtime_ns:x}-gzip"'


def test_precompressed_ranges_apply_to_the_encoded_bytes(assets):
    static = StaticFiles(assets, precompressed=True)
    answer = fetch(static, "/app.js", headers=[("Accept-Encoding", "br"), ("Range", "bytes=0-5")])
    assert (answer.status, answer.body) == (206, b"BROTLI")


def test_precompressed_off_never_substitutes_a_variant(assets):
    answer = fetch(StaticFiles(assets), "/app.js", headers=[("Accept-Encoding", "gzip, br")])
    assert answer.header("Content-Encoding") is None
    assert answer.header("Vary") is None
    assert answer.body == (assets / "app.js").read_bytes()


def test_precompressed_variant_linking_outside_the_root_is_not_served(assets):
    (assets / "plain.css.gz").symlink_to(assets.parent / "outside" / "secret.txt")
    answer = fetch(
        StaticFiles(assets, precompressed=True), "/plain.css", headers=[("Accept-Encoding", "gzip")]
    )
    assert (answer.body, answer.header("Content-Encoding")) == (b"body{}\n", None)


def test_precompressed_index_html(root):
    (root / "site" / "index.html.gz").write_bytes(gzip.compress(INDEX))
    static = StaticFiles(root, precompressed=True)
    answer = fetch(static, "/site/", headers=[("Accept-Encoding", "gzip")])
    assert answer.header("Content-Encoding") == "gzip"
    assert gzip.decompress(answer.body) == INDEX


# --------------------------------------------------------------------------- mount


def fallback_app(request: Request) -> Response:
    return Response(200, [("Content-Type", "text/plain")], b"app saw " + request.path.encode())


def test_mount_sends_the_prefix_to_static_files_without_it(static):
    app = mount(fallback_app, [("/assets", static)])
    assert fetch(app, "/assets/hello.txt").body == HELLO
    assert fetch(app, "/assets/sub/inner.txt").body == b"inner\n"


def test_mount_sends_everything_else_to_the_app(static):
    app = mount(fallback_app, [("/assets", static)])
    assert fetch(app, "/hello.txt").body == b"app saw /hello.txt"
    assert fetch(app, "/assetsX/hello.txt").body == b"app saw /assetsX/hello.txt"


def test_mount_redirects_the_bare_prefix(static):
    answer = fetch(mount(fallback_app, [("/assets/", static)]), "/assets")
    assert (answer.status, answer.header("Location")) == (301, "./assets/")


def test_mount_listing_title_shows_the_whole_path(static):
    page = fetch(mount(fallback_app, [("/assets", static)]), "/assets/sub/").body.decode()
    assert "<title>Index of /assets/sub/</title>" in page
    assert ("../", "../") in ListingPage(page).links


def test_mount_root_listing_has_no_parent_link(static):
    page = fetch(mount(fallback_app, [("/assets", static)]), "/assets/").body.decode()
    assert "../" not in [href for href, _ in ListingPage(page).links]


def test_mount_longest_prefix_wins(root, static):
    app = mount(fallback_app, [("/a", StaticFiles(root / "sub")), ("/a/b", static)])
    assert fetch(app, "/a/b/hello.txt").body == HELLO
    assert fetch(app, "/a/inner.txt").body == b"inner\n"


def test_mount_does_not_open_a_way_out_of_the_root(static):
    app = mount(fallback_app, [("/assets", static)])
    for target in ("/assets/../outside/secret.txt", "/assets/%2e%2e/outside/secret.txt"):
        answer = fetch(app, target)
        assert answer.status == 404, target


def test_mount_refuses_a_prefix_without_a_leading_slash(static):
    with pytest.raises(ValueError, match="must start with"):
        mount(fallback_app, [("assets", static)])


# --------------------------------------------------------------------------- on_head


def request_before_its_body(target: str, method: str = "POST", length: int = 5) -> Request:
    """A request as `on_head` sees it: head parsed, addresses set, body not yet read."""
    path, _, query = target.partition("?")
    fields = [("content-length", str(length))]
    request = Request(
        method, target, path, query, "HTTP/1.1", fields, True, length, False, False, host="t"
    )
    return request.arrived(b"", ("127.0.0.1", 40000), ("127.0.0.1", 8000))


def answer_from_head(app, target: str, method: str = "POST") -> Answer | None:
    response = app.on_head(request_before_its_body(target, method))
    return None if response is None else read_body(response)


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
def test_on_head_answers_other_methods_405_with_allow(static, method):
    answer = answer_from_head(static, "/hello.txt", method)
    assert (answer.status, answer.header("Allow")) == (405, "GET, HEAD")


def test_on_head_serves_a_get_that_carries_a_body(static):
    answer = answer_from_head(static, "/hello.txt", "GET")
    assert (answer.status, answer.body) == (200, HELLO)


@pytest.mark.parametrize(
    ("method", "target"),
    [
        ("GET", "/hello.txt"),
        ("HEAD", "/data.bin"),
        ("GET", "/sub/"),
        ("GET", "/sub"),
        ("GET", "/missing"),
        ("GET", "/../outside/secret.txt"),
        ("GET", "/.env"),
        ("POST", "/site/"),
    ],
)
def test_on_head_answers_as_the_app_would(static, method, target):
    early = answer_from_head(static, target, method)
    late = read_body(static(request_before_its_body(target, method)))
    assert (early.status, early.body) == (late.status, late.body)


def test_mount_on_head_answers_under_a_prefix(static):
    app = mount(fallback_app, [("/assets", static)])
    assert answer_from_head(app, "/assets/hello.txt").status == 405
    assert answer_from_head(app, "/assets/hello.txt", "GET").body == HELLO


def test_mount_on_head_answers_the_bare_prefix(static):
    app = mount(fallback_app, [("/assets", static)])
    assert answer_from_head(app, "/assets").status == 405
    assert answer_from_head(app, "/assets", "GET").status == 301


def test_mount_at_the_root_answers_everything_from_the_head(static):
    app = mount(fallback_app, [("/", static)])
    assert answer_from_head(app, "/anything").status == 405


def test_mount_on_head_leaves_the_app_paths_to_read_their_body(static):
    app = mount(fallback_app, [("/assets", static)])
    assert answer_from_head(app, "/upload") is None
    assert answer_from_head(app, "/assetsX/hello.txt") is None


def test_mount_on_head_asks_the_apps_own_on_head(static):
    def app(request: Request) -> Response:
        return Response(200, [], b"app read the body")

    def refuse_uploads(request: Request) -> Response | None:
        if request.path == "/upload":
            return Response(413, [("Content-Type", "text/plain")], b"too large\n")
        return None

    app.on_head = refuse_uploads
    mounted = mount(app, [("/assets", static)])
    assert answer_from_head(mounted, "/upload").status == 413
    assert answer_from_head(mounted, "/form") is None
    assert answer_from_head(mounted, "/assets/hello.txt").status == 405


# --------------------------------------------------------------------------- hygiene


def test_every_path_closes_what_it_opened(assets):
    static = StaticFiles(assets, precompressed=True)
    (assets / "out").symlink_to(assets.parent / "outside")
    os.mkfifo(assets / "pipe")
    requests_made = [
        ("/hello.txt", "GET", ()),
        ("/hello.txt", "HEAD", ()),
        ("/hello.txt", "GET", [("If-None-Match", "*")]),
        ("/hello.txt", "GET", [("If-Match", '"x"')]),
        ("/data.bin", "GET", [("Range", "bytes=0-1")]),
        ("/data.bin", "GET", [("Range", "bytes=0-1,5-6")]),
        ("/data.bin", "GET", [("Range", "bytes=99999-")]),
        ("/app.js", "GET", [("Accept-Encoding", "br, gzip")]),
        ("/plain.css", "GET", [("Accept-Encoding", "br, gzip")]),
        ("/", "GET", ()),
        ("/sub", "GET", ()),
        ("/site/", "GET", ()),
        ("/out/secret.txt", "GET", ()),
        ("/out/", "GET", ()),
        ("/pipe", "GET", ()),
        ("/hello.txt/", "GET", ()),
        ("/missing", "GET", ()),
        ("/../x", "GET", ()),
    ]
    process = psutil.Process()
    for target, method, headers in requests_made:  # warm caches (mimetypes, imports)
        fetch(static, target, method, headers)
    before = process.num_fds()
    for _ in range(20):
        for target, method, headers in requests_made:
            fetch(static, target, method, headers)
    assert process.num_fds() == before


# =========================================================================== integration

BIG_SIZE = 200 * 1024 * 1024
MIB = 1024 * 1024
RSS_BOUND = 32 * MIB


@dataclass
class BigTree:
    root: Path
    big: Path
    sha256: str
    small: bytes


@pytest.fixture(scope="module")
def big_tree(tmp_path_factory) -> BigTree:
    """A served folder with a 200 MiB sparse file that has a marked block every MiB."""
    root = tmp_path_factory.mktemp("served")
    big = root / "big.bin"
    with open(big, "wb") as f:
        f.truncate(BIG_SIZE)
        for i in range(BIG_SIZE // MIB):
            f.seek(i * MIB + (i * 7919) % 4096)
            f.write(i.to_bytes(8, "big") * 512)
    digest = hashlib.sha256()
    with open(big, "rb") as f:
        while block := f.read(4 * MIB):
            digest.update(block)
    small = random.Random(1).randbytes(70_000)
    (root / "small.bin").write_bytes(small)
    (root / "folder").mkdir()
    (root / "folder" / "note.txt").write_bytes(b"note\n")
    age(big, root / "small.bin")
    return BigTree(root, big, digest.hexdigest(), small)


@pytest.fixture(scope="module")
def live(backend, big_tree):
    """serve(StaticFiles(big_tree.root)) in a subprocess, one per backend."""
    server = StaticServer(backend, big_tree.root).start()
    yield server
    server.stop()


def head_request(path: str) -> bytes:
    return f"HEAD {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode()


def test_live_listing_answers(live):
    response = live.get("/")
    assert response.status == 200, live.diag(repr(response))
    names = ListingPage(response.body.decode()).names()
    assert names == ["folder/", "big.bin", "small.bin"], live.diag()


def test_live_range_request(live, big_tree):
    with live.connect() as client:
        client.send(get_request("/big.bin", extra=f"Range: bytes={5 * MIB}-{5 * MIB + 9999}\r\n"))
        response = client.read_response()
    assert response.status == 206, live.diag(repr(response))
    assert response.header("Content-Range") == f"bytes {5 * MIB}-{5 * MIB + 9999}/{BIG_SIZE}"
    with open(big_tree.big, "rb") as f:
        assert response.body == os.pread(f.fileno(), 10_000, 5 * MIB)


def test_live_multipart_ranges(live, big_tree):
    with live.connect() as client:
        client.send(get_request("/small.bin", extra="Range: bytes=0-9,-10\r\n"))
        response = client.read_response()
    assert response.status == 206, live.diag(repr(response))
    answer = Answer(206, response.headers, response.body, "bytes")
    assert [data for _, data in parse_multipart(answer)] == [
        big_tree.small[:10],
        big_tree.small[-10:],
    ]


def test_live_head_sends_the_length_and_no_body(live, big_tree):
    with live.connect() as client:
        client.send(head_request("/big.bin"))
        head = client.read_response("HEAD")
        client.send(get_request("/small.bin"))  # on the same connection: no stray bytes
        follow = client.read_response()
    assert (head.status, head.header("Content-Length")) == (200, str(BIG_SIZE)), live.diag()
    assert head.header("Transfer-Encoding") is None
    assert (follow.status, follow.body) == (200, big_tree.small), live.diag(repr(follow))


def test_live_304_has_no_body_and_the_connection_goes_on(live, big_tree):
    with live.connect() as client:
        client.send(get_request("/small.bin"))
        first = client.read_response()
        client.send(get_request("/small.bin", extra=f"If-None-Match: {first.header('ETag')}\r\n"))
        not_modified = client.read_response()
        client.send(get_request("/folder/note.txt"))
        follow = client.read_response()
    assert not_modified.status == 304, live.diag(repr(not_modified))
    assert not_modified.header("Transfer-Encoding") is None
    assert not_modified.header("Content-Length") in (None, str(len(big_tree.small)))
    assert (follow.status, follow.body) == (200, b"note\n"), live.diag(repr(follow))


def test_live_trailing_slash_redirect_is_followed_by_requests(live):
    response = requests.get(live.url + "/folder", timeout=10)
    assert response.history and response.history[0].status_code == 301
    assert response.url == live.url + "/folder/"
    assert "note.txt" in ListingPage(response.text).names()


def test_live_full_download_with_requests_is_exact(live, big_tree):
    digest = hashlib.sha256()
    count = 0
    with requests.get(live.url + "/big.bin", stream=True, timeout=30) as response:
        assert response.status_code == 200
        assert response.headers["Content-Length"] == str(BIG_SIZE)
        for block in response.iter_content(MIB):
            digest.update(block)
            count += len(block)
    assert count == BIG_SIZE
    assert digest.hexdigest() == big_tree.sha256


def test_live_slow_reader_keeps_server_memory_bounded(live, big_tree):
    live.get("/small.bin")  # warm up: imports, caches, first buffers
    baseline = live.rss()
    peak = baseline
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.settimeout(10)
    sock.connect(live.address)
    client = RawClient(sock, timeout=10)
    with client:
        client.send(get_request("/big.bin"))
        head = client.read_head()
        assert head.status == 200, live.diag(repr(head))
        received = len(client.buf)
        digest = hashlib.sha256(client.buf)
        client.buf.clear()
        block = bytearray(256 * 1024)
        deadline = time.monotonic() + 60
        slow_reads = 0
        while received < BIG_SIZE and time.monotonic() < deadline:
            n = sock.recv_into(block)
            assert n, f"connection closed after {received} of {BIG_SIZE} bytes"
            digest.update(memoryview(block)[:n])
            received += n
            if slow_reads < 150:  # the first ~3 s: a slow reader
                slow_reads += 1
                time.sleep(0.02)
                if slow_reads % 10 == 0:
                    peak = max(peak, live.rss())
        peak = max(peak, live.rss())
    assert received == BIG_SIZE
    assert digest.hexdigest() == big_tree.sha256
    assert peak - baseline < RSS_BOUND, live.diag(f"RSS grew {(peak - baseline) / MIB:.1f} MiB")


def test_live_clients_leaving_mid_download_release_every_fd(live, big_tree):
    live.get("/")
    baseline = live.settled_fds()
    clients = [live.connect() for _ in range(6)]
    try:
        for client in clients:
            client.send(get_request("/big.bin"))
        for client in clients:
            client.read_head()
            client.read_exact(MIB, "the first MiB")
        assert live.num_fds() >= baseline + 12  # a socket and a file each, while they last
    finally:
        for i, client in enumerate(clients):
            if i % 2:
                client.reset()  # RST
            else:
                client.close()  # FIN
    fds = live.wait_fds_at_most(baseline, timeout=10)
    assert fds == baseline, live.diag(f"fds {fds}, baseline {baseline}")
    still_open = [f.path for f in psutil.Process(live.pid).open_files() if "big.bin" in f.path]
    assert still_open == [], live.diag(f"still open: {still_open}")
    response = live.get("/")
    assert response.status == 200, live.diag(repr(response))


@pytest.fixture(scope="module")
def mounted(backend, big_tree):
    """The demo app with big_tree.root mounted at /assets."""
    server = StaticServer(backend, big_tree.root, mode="mounted").start()
    yield server
    server.stop()


def test_live_mount_serves_assets_and_the_app(mounted, big_tree):
    asset = mounted.get("/assets/small.bin")
    assert (asset.status, asset.body) == (200, big_tree.small), mounted.diag(repr(asset))
    greeting = mounted.get("/")
    assert (greeting.status, greeting.body) == (200, b"Hello from selserve!\n")
    bare = mounted.get("/assets")
    assert (bare.status, bare.header("Location")) == (301, "./assets/")
    escape = mounted.get("/assets/../assets/small.bin")
    assert escape.status == 404


# --------------------------------------------------------------------------- the command line


@pytest.fixture(scope="module")
def project_tree(tmp_path_factory) -> Path:
    """A served folder as a project checkout looks: dot-files, .well-known, a folder."""
    root = tmp_path_factory.mktemp("project")
    (root / ".env").write_bytes(ENV)
    (root / ".git").mkdir()
    (root / ".git" / "config").write_bytes(b"[core]\n")
    (root / ".well-known").mkdir()
    (root / ".well-known" / "security.txt").write_bytes(SECURITY_TXT)
    (root / "visible.txt").write_bytes(HELLO)
    (root / "uploads").mkdir()
    (root / "uploads" / "photo.jpg").write_bytes(b"jpeg\n")
    age(*root.rglob("*"))
    return root


@pytest.fixture(scope="module")
def cli_root(project_tree):
    """`selserve --root TREE`: the default job, with default settings."""
    server = ServerProcess(None, "--root", str(project_tree), app=None).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def cli_mounts(project_tree):
    """The demo app with TREE mounted at `/media`, default settings."""
    server = ServerProcess(None, "--static", f"/media={project_tree}").start()
    yield server
    server.stop()


@pytest.mark.parametrize("target", ["/.env", "/%2eenv", "/.git/config", "/.git/"])
def test_cli_dot_paths_are_404_by_default(cli_root, target):
    response = cli_root.get(target)
    assert response.status == 404, cli_root.diag(repr(response))


def test_cli_listing_leaves_out_dot_entries(cli_root):
    response = cli_root.get("/")
    assert response.status == 200, cli_root.diag(repr(response))
    names = ListingPage(response.body.decode()).names()
    assert names == [".well-known/", "uploads/", "visible.txt"]


def test_cli_well_known_is_served(cli_root):
    response = cli_root.get("/.well-known/security.txt")
    assert (response.status, response.body) == (200, SECURITY_TXT), cli_root.diag()


def test_cli_etag_is_made_of_size_and_mtime_only(cli_root, project_tree):
    st = os.stat(project_tree / "visible.txt")
    response = cli_root.get("/visible.txt")
    assert response.header("ETag") == f'"{st.st_size:x}-{st.st_mtime_ns:x}"'


def test_cli_dotfiles_serves_and_lists_them(server_factory, project_tree):
    server = server_factory(None, "--root", str(project_tree), "--dotfiles", app=None)
    assert server.get("/.env").body == ENV
    names = ListingPage(server.get("/").body.decode()).names()
    assert {".env", ".git/", ".well-known/"} <= set(names)


def test_cli_dotfiles_applies_to_static_mounts(server_factory, project_tree):
    server = server_factory(None, "--static", f"/media={project_tree}", "--dotfiles")
    assert server.get("/media/.env").body == ENV


def test_cli_no_listing_gives_403_under_root(server_factory, project_tree):
    server = server_factory(None, "--root", str(project_tree), "--no-listing", app=None)
    assert server.get("/uploads/").status == 403


@pytest.mark.parametrize("target", ["/media/", "/media/uploads/"])
def test_cli_static_mount_directory_without_index_is_403_by_default(cli_mounts, target):
    response = cli_mounts.get(target)
    assert response.status == 403, cli_mounts.diag(repr(response))
    assert b"photo.jpg" not in response.body


def test_cli_static_mount_still_serves_files(cli_mounts):
    assert cli_mounts.get("/media/uploads/photo.jpg").body == b"jpeg\n"


def test_cli_static_mount_lists_with_the_listing_suffix(server_factory, project_tree):
    server = server_factory(None, "--static", f"/pub={project_tree}:listing")
    response = server.get("/pub/uploads/")
    assert response.status == 200, server.diag(repr(response))
    assert ListingPage(response.body.decode()).names() == ["photo.jpg"]
    assert ".env" not in ListingPage(server.get("/pub/").body.decode()).names()


def test_cli_static_mount_hides_dot_paths(cli_mounts):
    response = cli_mounts.get("/media/.env")
    assert response.status == 404, cli_mounts.diag(repr(response))
