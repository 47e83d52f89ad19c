"""The WSGI application the `wsgi`-tagged users drive (plain PEP 3333, no framework).

Served at /wsgi by `loadtests._target:app` (what the runner starts for `--tags wsgi`), or
alone: `selserve loadtests._wsgi_app:app` with `--wsgi-prefix ''` given to Locust.

Routes (PATH_INFO): /hello, /echo (wsgi.input read in blocks, sent back with its SHA-256),
/stream?n=&size= (a generator of n blocks of b"w"), /write (the write() callable, then
the iterable), /env (SCRIPT_NAME, PATH_INFO and QUERY_STRING, one per line).
"""

from __future__ import annotations

import hashlib
from urllib.parse import parse_qsl

HELLO = b"Hello from the load-test WSGI app!\n"
WRITE_PIECES = (b"written-1;", b"written-2;")
RETURN_PIECES = (b"returned-1;", b"returned-2\n")
STREAM_FILL = b"w"
MAX_STREAM_CHUNKS = 10_000
MAX_STREAM_CHUNK_SIZE = 1024 * 1024
READ_BLOCK = 64 * 1024

TEXT = ("Content-Type", "text/plain; charset=utf-8")
BINARY = ("Content-Type", "application/octet-stream")


def _plain(start_response, status: str, body: bytes):
    start_response(status, [TEXT, ("Content-Length", str(len(body)))])
    return [body]


def hello(environ, start_response):
    return _plain(start_response, "200 OK", HELLO)


def echo(environ, start_response):
    stream = environ["wsgi.input"]
    digest = hashlib.sha256()
    pieces = []
    while True:
        piece = stream.read(READ_BLOCK)
        if not piece:
            break
        digest.update(piece)
        pieces.append(piece)
    body = b"".join(pieces)
    start_response(
        "200 OK",
        [BINARY, ("Content-Length", str(len(body))), ("X-Echo-SHA256", digest.hexdigest())],
    )
    return [body]


def stream(environ, start_response):
    query = dict(parse_qsl(environ.get("QUERY_STRING", "")))
    try:
        count, size = int(query.get("n", "10")), int(query.get("size", "1024"))
    except ValueError:
        return _plain(start_response, "400 Bad Request", b"n and size must be numbers\n")
    if not (0 <= count <= MAX_STREAM_CHUNKS and 1 <= size <= MAX_STREAM_CHUNK_SIZE):
        return _plain(start_response, "400 Bad Request", b"n or size out of bounds\n")
    start_response("200 OK", [BINARY])
    block = STREAM_FILL * size
    return (block for _ in range(count))


def write(environ, start_response):
    write_piece = start_response("200 OK", [TEXT])
    for piece in WRITE_PIECES:
        write_piece(piece)
    return list(RETURN_PIECES)


def env(environ, start_response):
    lines = [f"{key}={environ.get(key, '')}" for key in ENV_KEYS]
    body = ("\n".join(lines) + "\n").encode("latin-1")
    return _plain(start_response, "200 OK", body)


ENV_KEYS = ("SCRIPT_NAME", "PATH_INFO", "QUERY_STRING", "REQUEST_METHOD")
ROUTES = {"/hello": hello, "/echo": echo, "/stream": stream, "/write": write, "/env": env}


def app(environ, start_response):
    route = ROUTES.get(environ.get("PATH_INFO", ""))
    if route is None:
        return _plain(start_response, "404 Not Found", b"no such route\n")
    return route(environ, start_response)
