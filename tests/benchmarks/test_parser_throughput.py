"""Parser throughput: requests parsed per second by `RequestParser` for a typical browser
GET head, an API POST (head and a small JSON body), and a pipelined batch of 16 GETs fed
in one piece. One parser is reused across rounds, as a keep-alive connection reuses its
own; a round ends with the parser back in its initial state.  From the second round on,
the parser knows these heads' lines (parser.py's tables of lines seen before); the cases
"with new lines" measure a browser head with lines never seen before: a new cookie and
Referer in every request, or every line new, against the same head measured the same
way (one round a parse, a new parser each: `pedantic`).
"""

from __future__ import annotations

import itertools

import pytest

from selserve.http.parser import EndOfMessage, Request, RequestParser

pytestmark = pytest.mark.benchmark(group="parser")

BROWSER_GET = (
    b"GET /articles/2024/selectors-in-depth?ref=home&utm_source=feed HTTP/1.1\r\n"
    b"Host: www.example.org\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    b"Chrome/124.0.0.0 Safari/537.36\r\n"
    b"Accept: text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,"
    b"*/*;q=0.8\r\n"
    b"Accept-Language: en-GB,en;q=0.9,de;q=0.8\r\n"
    b"Accept-Encoding: gzip, deflate, br, zstd\r\n"
    b"Referer: https://www.example.org/\r\n"
    b"Cookie: session=5f2b8c0e9a7d4e1fb3c6a2d9e8f70415; theme=dark; consent=1\r\n"
    b"Connection: keep-alive\r\n"
    b"Upgrade-Insecure-Requests: 1\r\n"
    b"Sec-Fetch-Dest: document\r\n"
    b"Sec-Fetch-Mode: navigate\r\n"
    b"Sec-Fetch-Site: same-origin\r\n"
    b"Cache-Control: max-age=0\r\n"
    b"\r\n"
)

API_BODY = b'{"name": "widget", "quantity": 3, "tags": ["blue", "small"]}'
API_POST = (
    b"POST /api/v1/orders HTTP/1.1\r\n"
    b"Host: api.example.org\r\n"
    b"User-Agent: python-requests/2.31.0\r\n"
    b"Accept: application/json\r\n"
    b"Accept-Encoding: gzip, deflate\r\n"
    b"Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiI0MiJ9.c2lnbmF0dXJl\r\n"
    b"Content-Type: application/json\r\n"
    b"Content-Length: %d\r\n"
    b"X-Request-Id: 9b2f6c1e-47a3-4d0b-8f5e-2a7c3d9e1b40\r\n"
    b"\r\n%s" % (len(API_BODY), API_BODY)
)

PIPELINE_DEPTH = 16
PIPELINED = b"GET /api/v1/items/%d HTTP/1.1\r\nHost: api.example.org\r\nAccept: */*\r\n\r\n"
PIPELINED_BATCH = b"".join(PIPELINED % i for i in range(PIPELINE_DEPTH))


def parse_one(parser: RequestParser, data: bytes) -> Request:
    """Feed one whole request and take its events through EndOfMessage."""
    parser.feed(data)
    head = parser.next_event()
    while type(parser.next_event()) is not EndOfMessage:
        pass
    parser.start_next_request()
    return head


def parse_batch(parser: RequestParser, data: bytes) -> int:
    """Feed a pipelined batch at once and take every request out of it."""
    parser.feed(data)
    count = 0
    for _ in range(PIPELINE_DEPTH):
        parser.next_event()
        parser.next_event()  # EndOfMessage: GETs have no body
        parser.start_next_request()
        count += 1
    return count


def test_browser_get_head(benchmark):
    benchmark.name = "browser GET head (13 fields)"
    head = benchmark(parse_one, RequestParser(), BROWSER_GET)
    assert head.path == "/articles/2024/selectors-in-depth" and len(head.headers) == 13


NEVER_SEEN = {  # which field lines of BROWSER_GET are new in every round
    "every line new but Host and Connection": lambda field: (
        not field.startswith((b"Host:", b"Connection:"))
    ),
    "a new Cookie and Referer": lambda field: field.startswith((b"Cookie:", b"Referer:")),
}


@pytest.mark.parametrize("case", NEVER_SEEN)
def test_browser_get_head_with_new_lines(benchmark, case):
    benchmark.name = f"browser GET head (13 fields), {case}"
    is_new = NEVER_SEEN[case]
    rounds = itertools.count()
    request_line, *fields = BROWSER_GET.split(b"\r\n")[:-2]

    def fresh_head() -> tuple[tuple[RequestParser, bytes], dict]:
        n = next(rounds)  # a distinct suffix makes a line one no parser has seen
        varied = [field + b";%d" % n if is_new(field) else field for field in fields]
        line = request_line.replace(b" HTTP/", b"&n=%d HTTP/" % n)
        return (RequestParser(), b"\r\n".join([line, *varied]) + b"\r\n\r\n"), {}

    head = benchmark.pedantic(parse_one, setup=fresh_head, rounds=2000)
    assert head.path == "/articles/2024/selectors-in-depth" and len(head.headers) == 13
    last = next(rounds) - 1
    assert head.query.endswith(f"&n={last}")
    assert sum(value.endswith(f";{last}") for _, value in head.headers) == sum(map(is_new, fields))


def test_browser_get_head_pedantic(benchmark):
    benchmark.name = "browser GET head (13 fields), measured as the two above"
    head = benchmark.pedantic(
        parse_one, setup=lambda: ((RequestParser(), BROWSER_GET), {}), rounds=2000
    )
    assert len(head.headers) == 13


def test_api_post(benchmark):
    benchmark.name = "API POST head + 60-byte JSON body"
    head = benchmark(parse_one, RequestParser(), API_POST)
    assert head.method == "POST" and head.content_length == len(API_BODY)


def test_pipelined_batch(benchmark):
    benchmark.name = f"pipelined batch of {PIPELINE_DEPTH} GETs (per round: {PIPELINE_DEPTH})"
    benchmark.extra_info["requests_per_round"] = PIPELINE_DEPTH
    parser = RequestParser()
    assert benchmark(parse_batch, parser, PIPELINED_BATCH) == PIPELINE_DEPTH
    assert parser.buffered == 0
