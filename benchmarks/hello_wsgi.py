"""The WSGI hello every WSGI server in `compare.py` runs (selserve's WSGI adapter,
waitress, gunicorn): the same routes and bytes as `selserve.demo:app`.

`GET /` answers the demo's 21-byte greeting with a Content-Length; `GET /stream?n=K&size=S`
streams K chunks of S bytes, generated lazily and without a Content-Length, so an HTTP/1.1
server sends them chunked -- as the demo does.
"""

from __future__ import annotations

from urllib.parse import parse_qsl

GREETING = b"Hello from selserve!\n"
TEXT_HEADERS = [
    ("Content-Type", "text/plain; charset=utf-8"),
    ("Content-Length", str(len(GREETING))),
]
STREAM_HEADERS = [("Content-Type", "application/octet-stream")]
NOT_FOUND = b"not found\n"
MAX_CHUNKS = 1_000_000
MAX_CHUNK_SIZE = 1024 * 1024


def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/":
        start_response("200 OK", TEXT_HEADERS)
        return [GREETING]
    if path == "/stream":
        params = dict(parse_qsl(environ.get("QUERY_STRING", "")))
        count = min(int(params.get("n", "10")), MAX_CHUNKS)
        size = min(int(params.get("size", "1024")), MAX_CHUNK_SIZE)
        start_response("200 OK", STREAM_HEADERS)
        return _chunks(b"x" * size, count)
    start_response("404 Not Found", [("Content-Type", "text/plain"), ("Content-Length", "10")])
    return [NOT_FOUND]


def _chunks(block: bytes, count: int):
    for _ in range(count):
        yield block
