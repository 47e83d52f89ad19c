"""A deliberately broken server app, to prove that the load tests can fail.

`selserve loadtests._faulty_target:app` is the demo app except that every other non-empty
`/echo` answer has its last byte changed.  tests/test_loadtests.py runs the load test
against it and expects the echo checks to fail and the runner to exit 1.
"""

from __future__ import annotations

import itertools

from selserve.app import Request, Response, native
from selserve.demo import app as demo_app

_count = itertools.count()


@native
def app(request: Request) -> Response:
    response = demo_app(request)
    if request.path == "/echo" and response.status == 200 and next(_count) % 2:
        body = response.body
        if isinstance(body, bytes) and body:
            response.body = body[:-1] + bytes([body[-1] ^ 0xFF])
    return response
