"""WSGI users (tag wsgi, opt-in): drive `loadtests/_wsgi_app.py` under `--wsgi-prefix`
(the runner serves `loadtests._target:app`, the demo app with that WSGI app at /wsgi).

`WsgiUser` checks what the PEP 3333 adapter must get right: fixed bodies, wsgi.input read
back byte for byte (and its SHA-256), generator bodies streamed to the end, the write()
callable before the returned iterable, SCRIPT_NAME / PATH_INFO / QUERY_STRING, and 404s.
"""

from __future__ import annotations

import hashlib
import random

from _payloads import BodyPool, body_length
from _suite import describe, option, verdict
from _wsgi_app import HELLO, RETURN_PIECES, STREAM_FILL, WRITE_PIECES
from locust import FastHttpUser, constant, tag, task

NETWORK_TIMEOUT = 15.0
WRITE_BODY = b"".join(WRITE_PIECES + RETURN_PIECES)

_pool = BodyPool()


class WsgiUser(FastHttpUser):
    """A client of the load-test WSGI app."""

    opt_in = True  # runs only with --tags wsgi (see _suite.selected)
    weight = 3
    wait_time = constant(0)
    network_timeout = NETWORK_TIMEOUT
    connection_timeout = NETWORK_TIMEOUT

    def on_start(self) -> None:
        self.rng = random.Random()
        self.prefix = option(self.environment, "wsgi_prefix", "/wsgi").rstrip("/")

    @tag("wsgi")
    @task(3)
    def hello(self) -> None:
        with self.client.get(f"{self.prefix}/hello", name="/wsgi/hello", catch_response=True) as r:
            verdict(r, r.status_code == 200 and r.content == HELLO, describe(r))

    @tag("wsgi")
    @task(3)
    def echo(self) -> None:
        body = _pool.body(self.rng, body_length(self.rng))
        digest = hashlib.sha256(body).hexdigest()
        with self.client.post(
            f"{self.prefix}/echo", data=body, name="/wsgi/echo", catch_response=True
        ) as r:
            problems = []
            if r.status_code != 200:
                problems.append(describe(r))
            if r.content != body:
                problems.append(f"sent {len(body)} bytes, got {len(r.content or b'')} back")
            if r.headers.get("X-Echo-SHA256") != digest:
                problems.append("the app read different bytes from wsgi.input")
            verdict(r, not problems, "; ".join(problems))

    @tag("wsgi")
    @task(2)
    def stream(self) -> None:
        count = self.rng.randrange(0, 33)
        size = self.rng.choice((1, 1000, 16384, 65536))
        url = f"{self.prefix}/stream?n={count}&size={size}"
        with self.client.get(url, name="/wsgi/stream?n=[0-32]&size=[..]", catch_response=True) as r:
            content = r.content or b""
            ok = r.status_code == 200 and len(content) == count * size
            ok = ok and not content.strip(STREAM_FILL)
            verdict(r, ok, f"{url}: {describe(r)}, want {count * size} bytes")

    @tag("wsgi")
    @task(1)
    def write_callable(self) -> None:
        with self.client.get(f"{self.prefix}/write", name="/wsgi/write", catch_response=True) as r:
            verdict(r, r.status_code == 200 and r.content == WRITE_BODY, describe(r))

    @tag("wsgi")
    @task(1)
    def environ(self) -> None:
        query = f"n={self.rng.randrange(1000)}&word=a%20b"
        url = f"{self.prefix}/env?{query}"
        expected = (
            f"SCRIPT_NAME={self.prefix}\nPATH_INFO=/env\nQUERY_STRING={query}\nREQUEST_METHOD=GET\n"
        ).encode()
        with self.client.get(url, name="/wsgi/env", catch_response=True) as r:
            verdict(r, r.status_code == 200 and r.content == expected, describe(r))

    @tag("wsgi")
    @task(1)
    def not_found(self) -> None:
        url = f"{self.prefix}/no-such-route"
        with self.client.get(url, name="/wsgi/no-such-route [404]", catch_response=True) as r:
            verdict(r, r.status_code == 404, describe(r))
