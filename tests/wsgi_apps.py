"""WSGI applications the WSGI tests serve through a real selserve process.

`router` dispatches on PATH_INFO to small plain-WSGI apps; `validated` is the
same router inside `wsgiref.validate.validator` (its warnings made errors, so
any complaint becomes a 500); `flask_app` is a real Flask application.

Apps that must report what happened inside the server process (close() calls,
how many body pieces were pulled) append lines to files in the directory named
by the environment variable RECORD_DIR_ENV, one file per `token` query value.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
import warnings
from urllib.parse import parse_qs
from wsgiref.validate import WSGIWarning, validator

RECORD_DIR_ENV = "SELSERVE_WSGI_TEST_DIR"
PAYLOAD_NAME = "payload.bin"  # the file /file serves, written by the test into the record dir

TEXT = [("Content-Type", "text/plain; charset=utf-8")]
BINARY = [("Content-Type", "application/octet-stream")]

# Any validator complaint raises inside the app: the response becomes a 500.
warnings.simplefilter("error", WSGIWarning)


def record(token: str, line: str) -> None:
    """Append `line` to the record file of `token` (in the directory the test gave us)."""
    directory = os.environ.get(RECORD_DIR_ENV)
    if not directory or not token.isalnum():
        return
    with open(os.path.join(directory, token), "a") as f:
        f.write(line + "\n")


def _query(environ) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}


# --------------------------------------------------------------------------- plain apps


def hello(environ, start_response):
    body = b"Hello, WSGI!\n"
    start_response("200 OK", [*TEXT, ("Content-Length", str(len(body)))])
    return [body]


def environ_json(environ, start_response):
    """The environ's str values (and a few others) as JSON."""
    shown = {k: v for k, v in environ.items() if isinstance(v, str)}
    for key in ("wsgi.version", "wsgi.multithread", "wsgi.multiprocess", "wsgi.run_once"):
        shown[key] = environ[key]
    shown["wsgi.input_terminated"] = environ.get("wsgi.input_terminated")
    # PATH_INFO is latin-1 "bytes as str": show its bytes so UTF-8 survives JSON.
    shown["PATH_INFO_BYTES"] = environ["PATH_INFO"].encode("latin-1").hex()
    body = json.dumps(shown).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]


def echo_input(environ, start_response):
    """Read wsgi.input in the way ?mode= says; answer the bytes and what was read."""
    stream = environ["wsgi.input"]
    mode = _query(environ).get("mode", "read")
    if mode == "read":
        data = stream.read()
    elif mode == "read-n":
        pieces = []
        for _ in range(1_000_000):  # bounded: 1 MB of 7-byte reads is far beyond any test
            piece = stream.read(7)
            if not piece:
                break
            pieces.append(piece)
        data = b"".join(pieces)
    elif mode == "readline":
        lines = []
        for _ in range(1_000_000):
            line = stream.readline()
            if not line:
                break
            lines.append(line)
        data = b"".join(lines)
    elif mode == "readlines":
        data = b"".join(stream.readlines())
    else:  # "iter"
        data = b"".join(line for line in stream)
    headers = [
        *BINARY,
        ("X-Content-Length", environ.get("CONTENT_LENGTH", "<absent>")),
        ("X-Transfer-Encoding", environ.get("HTTP_TRANSFER_ENCODING", "<absent>")),
        ("X-SHA256", hashlib.sha256(data).hexdigest()),
    ]
    start_response("200 OK", headers)
    return [data]


def write_app(environ, start_response):
    """The write() callable first, then the returned iterable."""
    write = start_response("200 OK", TEXT)
    write(b"written-1;")
    write(b"written-2;")
    return [b"returned-1;", b"returned-2"]


class TrackedStream:
    """`n` blocks of `size` bytes, recording how far it got when it is closed."""

    def __init__(self, token: str, n: int, size: int, fail_after: int | None) -> None:
        self.token = token
        self.remaining = n
        self.block = b"x" * size
        self.pulled = 0
        self.fail_after = fail_after

    def __iter__(self):
        return self

    def __next__(self) -> bytes:
        if self.fail_after is not None and self.pulled >= self.fail_after:
            raise RuntimeError("the test app fails in the middle of its body")
        if self.remaining <= 0:
            raise StopIteration
        self.remaining -= 1
        self.pulled += 1
        return self.block

    def close(self) -> None:
        record(self.token, f"close pulled={self.pulled}")


def stream(environ, start_response):
    """?token=T&n=N&size=S[&fail_after=K]: a lazily produced body, close() recorded."""
    q = _query(environ)
    fail_after = int(q["fail_after"]) if "fail_after" in q else None
    n, size = int(q.get("n", "10")), int(q.get("size", "1024"))
    body = TrackedStream(q.get("token", ""), n, size, fail_after)
    start_response("200 OK", BINARY)
    return body


def generator_stream(environ, start_response):
    """A generator body whose finally: clause records that it was closed."""
    q = _query(environ)
    token, n, size = q.get("token", ""), int(q.get("n", "10")), int(q.get("size", "1024"))
    start_response("200 OK", BINARY)

    def body():
        pulled = 0
        try:
            for _ in range(n):
                pulled += 1
                yield b"y" * size
        finally:
            record(token, f"close pulled={pulled}")

    return body()


def longer_than_content_length(environ, start_response):
    start_response("200 OK", [*TEXT, ("Content-Length", "5")])
    return iter([b"hel", b"lo world, more than promised"])


def shorter_than_content_length(environ, start_response):
    start_response("200 OK", [*TEXT, ("Content-Length", "100")])
    return iter([b"only ten b"])


def raise_before_start(environ, start_response):
    raise RuntimeError("the test app fails before start_response")


def raise_in_generator_before_body(environ, start_response):
    start_response("200 OK", TEXT)
    yield b""  # empty pieces do not start the response (PEP 3333)
    raise RuntimeError("the test app fails before its first body byte")


def bad_header(environ, start_response):
    start_response("200 OK", [*TEXT, ("X-Injected", "a\r\nSet-Cookie: evil=1")])
    return [b"must not be sent"]


def file_app(environ, start_response):
    """The payload file the test wrote, through wsgi.file_wrapper (sent with sendfile)."""
    path = os.path.join(os.environ[RECORD_DIR_ENV], PAYLOAD_NAME)
    f = open(path, "rb")  # noqa: SIM115 - the server closes it through the wrapper
    start_response("200 OK", BINARY)
    return environ["wsgi.file_wrapper"](f, 32 * 1024)


def errors_app(environ, start_response):
    """Writes a marker line to wsgi.errors (the server logs it)."""
    errors = environ["wsgi.errors"]
    errors.write("wsgi.errors marker from the test app\n")
    errors.flush()
    start_response("200 OK", TEXT)
    return [b"logged\n"]


def sleep_app(environ, start_response):
    """A blocking app: sleeps a second (with --threads it must not hold up others)."""
    time.sleep(1.0)
    start_response("200 OK", TEXT)
    return [b"slept\n"]


def head_aware_stream(environ, start_response):
    """As werkzeug and httpbin answer: nothing for HEAD, a generator for GET, no length."""
    start_response("200 OK", TEXT)
    if environ["REQUEST_METHOD"] == "HEAD":
        return iter(())
    return (b"piece %d\n" % i for i in range(3))


def own_reason(environ, start_response):
    start_response("404 Nope", TEXT)
    return [b"nope\n"]


ROUTES = {
    "/head-aware-stream": head_aware_stream,
    "/own-reason": own_reason,
    "/hello": hello,
    "/env": environ_json,
    "/echo": echo_input,
    "/write": write_app,
    "/stream": stream,
    "/generator": generator_stream,
    "/longer": longer_than_content_length,
    "/shorter": shorter_than_content_length,
    "/raise": raise_before_start,
    "/raise-in-generator": raise_in_generator_before_body,
    "/bad-header": bad_header,
    "/file": file_app,
    "/errors": errors_app,
    "/sleep": sleep_app,
}


def router(environ, start_response):
    app = ROUTES.get(environ.get("PATH_INFO", ""))
    if app is None:
        start_response("404 Not Found", TEXT)
        return [b"no such test route\n"]
    return app(environ, start_response)


validated = validator(router)


# --------------------------------------------------------------------------- Flask


def make_flask_app():
    from flask import Flask, Response, jsonify, request, stream_with_context

    app = Flask("selserve_wsgi_tests")

    @app.get("/json")
    def json_route():
        return jsonify(hello="world", numbers=[1, 2, 3], unicode="héllo ✓")

    @app.post("/form")
    def form_route():
        return jsonify({key: request.form.getlist(key) for key in request.form})

    @app.post("/upload")
    def upload_route():
        upload = request.files["file"]
        data = upload.read()
        return jsonify(
            filename=upload.filename,
            size=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            note=request.form.get("note"),
        )

    @app.get("/stream")
    def stream_route():
        count = int(request.args.get("n", "5"))

        def lines():
            for i in range(count):
                yield f"line {i}\n"

        return Response(stream_with_context(lines()), mimetype="text/plain")

    @app.get("/error")
    def error_route():
        raise RuntimeError("the Flask test app fails on purpose")

    @app.get("/whoami")
    def whoami_route():
        return jsonify(
            url=request.url,
            path=request.path,
            script_root=request.script_root,
            remote_addr=request.remote_addr,
        )

    return app


try:
    flask_app = make_flask_app()
except ImportError as exc:  # reported by the Flask tests, not at import of this module

    def flask_app(environ, start_response, _reason=str(exc)):
        start_response("500 Internal Server Error", TEXT)
        return [f"Flask is not installed: {_reason}\n".encode()]


if __name__ == "__main__":
    sys.exit("import this module; it only holds test applications")
