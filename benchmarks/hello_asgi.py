"""The native ASGI hello that uvicorn runs in `compare.py`: the same routes and bytes as
`selserve.demo:app`.

`GET /` answers the demo's 21-byte greeting with a Content-Length; `GET /stream?n=K&size=S`
sends K body messages of S bytes with `more_body`, and no Content-Length, so uvicorn
streams them chunked -- as the demo does.
"""

from __future__ import annotations

from urllib.parse import parse_qsl

GREETING = b"Hello from selserve!\n"
TEXT_START = {
    "type": "http.response.start",
    "status": 200,
    "headers": [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(GREETING)).encode()),
    ],
}
TEXT_BODY = {"type": "http.response.body", "body": GREETING}
STREAM_START = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-type", b"application/octet-stream")],
}
NOT_FOUND_START = {
    "type": "http.response.start",
    "status": 404,
    "headers": [(b"content-type", b"text/plain"), (b"content-length", b"10")],
}
NOT_FOUND_BODY = {"type": "http.response.body", "body": b"not found\n"}
MAX_CHUNKS = 1_000_000
MAX_CHUNK_SIZE = 1024 * 1024


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    path = scope["path"]
    if path == "/":
        await send(TEXT_START)
        await send(TEXT_BODY)
        return
    if path == "/stream":
        params = dict(parse_qsl(scope["query_string"].decode("latin-1")))
        count = min(int(params.get("n", "10")), MAX_CHUNKS)
        size = min(int(params.get("size", "1024")), MAX_CHUNK_SIZE)
        await send(STREAM_START)
        block = {"type": "http.response.body", "body": b"x" * size, "more_body": True}
        for _ in range(count):
            await send(block)
        await send({"type": "http.response.body", "body": b""})
        return
    await send(NOT_FOUND_START)
    await send(NOT_FOUND_BODY)
