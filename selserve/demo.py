"""The built-in demo application (`selserve selserve.demo:app`).

Small, fast routes that exercise the server end to end: a greeting, an echo,
a lazily generated chunked stream and arbitrary statuses.  Load tests and the
integration suite drive it.  Only the echo reads a request body; every other
route answers a request with a body from its head (`on_head`), so that body is
never stored.
"""

from __future__ import annotations

from urllib.parse import parse_qsl

from .app import Request, Response, native

GREETING = b"Hello from selserve!\n"
TEXT = [("Content-Type", "text/plain; charset=utf-8")]
BINARY = [("Content-Type", "application/octet-stream")]

# Bounds of /stream (beyond them: 400).
MAX_STREAM_CHUNKS = 1_000_000
MAX_STREAM_CHUNK_SIZE = 1024 * 1024
STREAM_FILL = b"x"


@native
def app(request: Request) -> Response:
    path = request.path
    if path == "/":
        if request.method in ("GET", "HEAD"):
            return Response(200, TEXT, GREETING)
        return _not_allowed("GET, HEAD")
    if path == "/echo":
        if request.method in ("POST", "PUT"):
            return Response(200, BINARY, request.body)
        return _not_allowed("POST, PUT")
    if path == "/stream":
        if request.method in ("GET", "HEAD"):
            return _stream(request.query)
        return _not_allowed("GET, HEAD")
    if path.startswith("/status/"):
        code = path[len("/status/") :]
        if code.isdigit() and len(code) == 3 and 200 <= int(code) <= 599:
            return Response(int(code))
        return _plain(400, b"status must be a number from 200 to 599\n")
    return _plain(404, b"not found\n")


def _answer_from_head(request: Request) -> Response | None:
    """Every route but the echo ignores the body: answer those before it is read."""
    if request.path == "/echo" and request.method in ("POST", "PUT"):
        return None
    return app(request)


app.on_head = _answer_from_head


def _stream(query: str) -> Response:
    params = dict(parse_qsl(query))
    try:
        count = int(params.get("n", "10"))
        size = int(params.get("size", "1024"))
    except ValueError:
        return _plain(400, b"n and size must be whole numbers\n")
    if not (0 <= count <= MAX_STREAM_CHUNKS and 1 <= size <= MAX_STREAM_CHUNK_SIZE):
        return _plain(
            400, b"n must be 0..%d and size 1..%d\n" % (MAX_STREAM_CHUNKS, MAX_STREAM_CHUNK_SIZE)
        )
    return Response(200, BINARY, _chunks(STREAM_FILL * size, count))


def _chunks(block: bytes, count: int):
    # Lazily: the server pulls a block only when its write buffer has room.
    for _ in range(count):
        yield block


def _plain(status: int, body: bytes) -> Response:
    return Response(status, TEXT, body)


def _not_allowed(allow: str) -> Response:
    return Response(405, [*TEXT, ("Allow", allow)], b"method not allowed\n")
