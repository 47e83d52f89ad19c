"""Well-behaved users of the demo app (`selserve selserve.demo:app`): the default mix.

- `ApiUser` (tags demo, api): keep-alive client hitting `/`, `/echo` with random bodies
  (every echo must come back byte for byte), `/status/NNN`, error routes, and now and then
  four requests pipelined in one write.
- `Streamer` (tags demo, stream): reads `/stream?n=K&size=S` to the end; the body must be
  exactly K*S bytes of b"x".
- `ChunkedUploader` (tags demo, upload): sends bodies with `Transfer-Encoding: chunked`
  (and with `Expect: 100-continue`) to `/echo`; the echo must match.
"""

from __future__ import annotations

import random

from _payloads import BodyPool, body_length
from _raw_http import RawConnection, host_port, request_bytes
from _suite import describe, exchange, verdict
from locust import FastHttpUser, HttpUser, between, constant, tag, task

from selserve.demo import GREETING, STREAM_FILL

NETWORK_TIMEOUT = 15.0  # seconds any one request may take before it is a failure
STATUSES = (200, 201, 204, 404, 418, 503)

_pool = BodyPool()


def _mismatch(sent: bytes, received: bytes) -> str:
    """Where two byte strings first differ, for a failure message."""
    if len(sent) != len(received):
        return f"echo differs: sent {len(sent)} bytes, got {len(received)} back"
    first = next((i for i, (a, b) in enumerate(zip(sent, received, strict=True)) if a != b), None)
    return f"echo differs: {len(sent)} bytes, first difference at byte {first}"


class ApiUser(FastHttpUser):
    """A keep-alive API client of the demo app."""

    weight = 6
    wait_time = constant(0)
    network_timeout = NETWORK_TIMEOUT
    connection_timeout = NETWORK_TIMEOUT

    def on_start(self) -> None:
        self.rng = random.Random()

    @tag("demo", "api")
    @task(4)
    def greeting(self) -> None:
        with self.client.get("/", catch_response=True) as r:
            verdict(r, r.status_code == 200 and r.content == GREETING, describe(r))

    @tag("demo", "api")
    @task(4)
    def echo(self) -> None:
        self._echo("POST")

    @tag("demo", "api")
    @task(1)
    def echo_put(self) -> None:
        self._echo("PUT")

    def _echo(self, method: str) -> None:
        body = _pool.body(self.rng, body_length(self.rng))
        with self.client.request(
            method, "/echo", data=body, name=f"/echo [{method}]", catch_response=True
        ) as r:
            if r.status_code != 200:
                verdict(r, False, describe(r))
            else:
                verdict(r, r.content == body, lambda: _mismatch(body, r.content))

    @tag("demo", "api")
    @task(1)
    def status(self) -> None:
        code = self.rng.choice(STATUSES)
        with self.client.get(f"/status/{code}", name="/status/[code]", catch_response=True) as r:
            verdict(r, r.status_code == code and not r.content, f"asked {code}: {describe(r)}")

    @tag("demo", "api")
    @task(1)
    def wrong_method_and_path(self) -> None:
        with self.client.post("/", data=b"", name="/ [POST: 405]", catch_response=True) as r:
            allow = r.headers.get("Allow", "")
            verdict(r, r.status_code == 405 and "GET" in allow, f"{describe(r)}, Allow {allow!r}")
        name = "/no-such-route [404]"
        with self.client.get("/no-such-route", name=name, catch_response=True) as r:
            verdict(r, r.status_code == 404, describe(r))

    @tag("demo", "api")
    @task(1)
    def pipelined(self) -> None:
        """Four requests in one write on one connection; four answers, in order."""
        body = _pool.body(self.rng, self.rng.randrange(1, 4096))
        requests = (
            request_bytes("GET", "/")
            + request_bytes("POST", "/echo", body=body)
            + request_bytes("GET", "/status/204")
            + request_bytes("GET", "/stream?n=3&size=10")
        )
        expected = [(200, GREETING), (200, body), (204, b""), (200, b"x" * 30)]

        def action() -> int:
            length = 0
            with RawConnection(host_port(self.host), NETWORK_TIMEOUT) as conn:
                conn.send(requests)
                for index, (status, content) in enumerate(expected):
                    head = conn.read_head()
                    got = conn.read_body(head)
                    length += len(got)
                    if head.status != status or got != content:
                        raise AssertionError(
                            f"answer {index + 1} of 4: status {head.status}, {len(got)} bytes "
                            f"({got[:40]!r}); expected {status}, {len(content)} bytes"
                        )
            return length

        exchange(self.environment, "PIPELINE", "4 requests in one write", action)


class Streamer(FastHttpUser):
    """Reads lazily generated chunked bodies to the end."""

    weight = 2
    wait_time = constant(0)
    network_timeout = NETWORK_TIMEOUT
    connection_timeout = NETWORK_TIMEOUT

    def on_start(self) -> None:
        self.rng = random.Random()

    def _stream(self, count: int, size: int, name: str) -> None:
        url = f"/stream?n={count}&size={size}"
        with self.client.get(url, name=name, catch_response=True) as r:
            content = r.content or b""
            expected = count * size
            if r.status_code != 200:
                verdict(r, False, describe(r))
            elif len(content) != expected:
                verdict(r, False, f"{url}: {len(content)} bytes, expected {expected}")
            else:
                # Exactly K*S fill bytes: strip() leaves nothing only then.
                verdict(r, not content.strip(STREAM_FILL), f"{url}: a byte other than fill")

    @tag("demo", "stream")
    @task(6)
    def stream(self) -> None:
        count = self.rng.randrange(0, 33)
        size = self.rng.choice((1, 100, 1024, 4096, 16384, 65536, self.rng.randrange(1, 70000)))
        self._stream(count, size, "/stream?n=[0-32]&size=[1-70000]")

    @tag("demo", "stream")
    @task(1)
    def big_stream(self) -> None:
        # 4 MiB: sixteen times the write buffer's high-water mark.
        self._stream(64, 65536, "/stream?n=64&size=65536 (4 MiB)")

    @tag("demo", "stream")
    @task(1)
    def head_stream(self) -> None:
        url = "/stream?n=5&size=10"
        with self.client.head(url, name="/stream [HEAD]", catch_response=True) as r:
            verdict(r, r.status_code == 200 and not r.content, describe(r))

    @tag("demo", "stream")
    @task(1)
    def bad_stream(self) -> None:
        with self.client.get("/stream?n=x", name="/stream?n=x [400]", catch_response=True) as r:
            verdict(r, r.status_code == 400, describe(r))


class ChunkedUploader(HttpUser):
    """Uploads with Transfer-Encoding: chunked (requests sends a generator that way)."""

    weight = 1
    wait_time = between(0.0, 0.05)

    def on_start(self) -> None:
        self.rng = random.Random()

    @tag("demo", "upload")
    @task(3)
    def chunked_echo(self) -> None:
        pieces = [
            _pool.body(self.rng, self.rng.randrange(1, 32768))
            for _ in range(self.rng.randrange(1, 20))
        ]
        sent = b"".join(pieces)
        with self.client.post(
            "/echo",
            data=iter(pieces),
            name="/echo [POST chunked]",
            timeout=NETWORK_TIMEOUT,
            catch_response=True,
        ) as r:
            if r.status_code != 200:
                verdict(r, False, describe(r))
            else:
                verdict(r, r.content == sent, lambda: "chunked: " + _mismatch(sent, r.content))

    @tag("demo", "upload")
    @task(1)
    def expect_continue(self) -> None:
        """Content-Length body sent only after the server's 100 Continue."""
        body = _pool.body(self.rng, self.rng.randrange(1, 200_000))
        head = (
            "POST /echo HTTP/1.1\r\nHost: loadtest\r\nExpect: 100-continue\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()

        def action() -> int:
            with RawConnection(host_port(self.host), NETWORK_TIMEOUT) as conn:
                conn.send(head)
                interim = conn.read_until(b"\r\n\r\n", 4096)
                if not interim.startswith(b"HTTP/1.1 100"):
                    raise AssertionError(f"expected 100 Continue first, got {interim[:60]!r}")
                conn.send(body)
                final = conn.read_head()
                echoed = conn.read_body(final)
                if final.status != 200 or echoed != body:
                    raise AssertionError(f"status {final.status}: " + _mismatch(body, echoed))
                return len(echoed)

        exchange(self.environment, "RAW", "/echo [Expect: 100-continue]", action)
