"""Misbehaving clients on raw sockets (tag misbehave), part of the default mix.

Each check is reported as request type MISBEHAVE and counts as a success when the server
handles the abuse as it should, as a failure when it does not:

- `AbortingUser` (tag abort): resets (RST) right after a request, in the middle of a
  16 MiB response or of a 1 MiB upload; disconnects (FIN: shutdown, then close, which the
  kernel turns into a RST if response bytes are still unread, as when a browser tab
  closes) in the middle of the response or of the upload.  The server must close a
  connection whose body can no longer arrive, and keep answering everyone else: after
  each abuse a fresh `GET /` must be answered within PROBE_TIMEOUT.
- `SlowlorisUser` (tag slowloris): trickles a request head one header line at a time, or
  connects and sends nothing.  The server must drop it once its `--header-timeout` has
  passed (Locust option `--server-header-timeout`, 10 s unless told), and keep answering.
- `SlowReaderUser` (tag slowread): reads a 1 MiB streamed response at 256 KiB/s through a
  small receive window.  The server must pause that stream (its write buffer is bounded)
  and deliver every byte, neither dropping the reader nor stalling others.

The response time of a check is the whole exchange, probe included; it says how long the
abuse lasted, not how fast the server is, so the runner leaves it out of its p99 bound.
"""

from __future__ import annotations

import random
import socket
import time

from _raw_http import RawConnection, host_port, probe, request_bytes
from _suite import MISBEHAVE, exchange, option
from locust import User, between, tag, task

PROBE_TIMEOUT = 5.0  # a fresh GET / must be answered within this long after any abuse
CLOSE_TIMEOUT = 5.0  # an abandoned upload must be closed by the server within this long
IO_TIMEOUT = 15.0
BIG_STREAM = "/stream?n=1024&size=16384"  # 16 MiB: far more than any socket buffer holds
SLOW_STREAM_COUNT, SLOW_STREAM_SIZE = 16, 65536  # 1 MiB
SLOW_READ_RATE = 256 * 1024  # bytes per second
SLOW_READ_RCVBUF = 8192


class CheckFailed(Exception):
    """The server did not handle a misbehaving client as it should."""


class RawUser(User):
    abstract = True

    def on_start(self) -> None:
        self.address = host_port(self.host)
        self.rng = random.Random()

    def check(self, name: str, action) -> None:
        """Run `action()` (the abuse; it returns the bytes it received), then the probe;
        report the outcome as one MISBEHAVE request called `name`."""

        def abuse_then_probe() -> int:
            length = action() or 0
            try:
                probe(self.address, PROBE_TIMEOUT)
            except Exception as exc:  # any probe failure is the finding
                raise CheckFailed(
                    f"server did not answer GET / within {PROBE_TIMEOUT} s afterwards: {exc!r}"
                ) from exc
            return length

        exchange(self.environment, MISBEHAVE, name, abuse_then_probe)


class AbortingUser(RawUser):
    """Leaves in the middle of things, politely (FIN) or not (RST)."""

    weight = 1
    wait_time = between(0.2, 1.0)

    def _start_big_response(self, conn: RawConnection) -> int:
        conn.send(request_bytes("GET", BIG_STREAM))
        head = conn.read_head()
        if head.status != 200:
            raise CheckFailed(f"GET {BIG_STREAM}: status {head.status}")
        received = 0
        while received < 64 * 1024:  # some of the body, far from all of it
            data = conn.recv_some()
            if not data:
                raise CheckFailed(f"server closed after {received} body bytes of 16 MiB")
            received += len(data)
        return received

    def _start_upload(self, conn: RawConnection) -> None:
        """Announce a 1 MiB body and send a quarter of it."""
        length = 1024 * 1024
        conn.send(
            f"POST /echo HTTP/1.1\r\nHost: loadtest\r\nContent-Length: {length}\r\n\r\n".encode()
        )
        conn.send(b"u" * (length // 4))

    @tag("misbehave", "abort")
    @task
    def reset_after_request(self) -> None:
        def action():
            conn = RawConnection(self.address, IO_TIMEOUT)
            try:
                conn.send(request_bytes("GET", BIG_STREAM))
            finally:
                conn.reset()

        self.check("reset right after the request", action)

    @tag("misbehave", "abort")
    @task
    def reset_mid_response(self) -> None:
        def action():
            conn = RawConnection(self.address, IO_TIMEOUT)
            try:
                return self._start_big_response(conn)
            finally:
                conn.reset()

        self.check("reset mid-response (16 MiB stream)", action)

    @tag("misbehave", "abort")
    @task
    def disconnect_mid_response(self) -> None:
        def action():
            with RawConnection(self.address, IO_TIMEOUT) as conn:
                received = self._start_big_response(conn)
                conn.sock.shutdown(socket.SHUT_WR)
                return received

        self.check("disconnect mid-response (16 MiB stream)", action)

    @tag("misbehave", "abort")
    @task
    def reset_mid_upload(self) -> None:
        def action():
            conn = RawConnection(self.address, IO_TIMEOUT)
            try:
                self._start_upload(conn)
            finally:
                conn.reset()

        self.check("reset mid-upload (1 MiB body)", action)

    @tag("misbehave", "abort")
    @task
    def disconnect_mid_upload(self) -> None:
        def action():
            with RawConnection(self.address, IO_TIMEOUT) as conn:
                self._start_upload(conn)
                conn.sock.shutdown(socket.SHUT_WR)
                # No more body can come: the request can never complete, so the server
                # must close this connection (answering 400 first is fine).
                outcome = conn.wait_closed(CLOSE_TIMEOUT)
                if outcome == "open":
                    raise CheckFailed(
                        f"server kept the connection open {CLOSE_TIMEOUT} s after the client "
                        "half-closed it in the middle of a request body"
                    )

        self.check("disconnect mid-upload (1 MiB body)", action)


class SlowlorisUser(RawUser):
    """Holds connections open with request heads that never finish."""

    weight = 1
    wait_time = between(0.2, 1.0)

    def _deadline(self) -> tuple[float, float]:
        """(the server's header timeout, how long after connecting we still accept the drop)."""
        timeout = float(option(self.environment, "server_header_timeout", 10.0))
        return timeout, timeout + max(2.0, timeout / 2)

    @tag("misbehave", "slowloris")
    @task(3)
    def trickle_head(self) -> None:
        timeout, limit = self._deadline()
        interval = min(1.0, timeout / 4)

        def action():
            start = time.monotonic()
            with RawConnection(self.address, IO_TIMEOUT) as conn:
                conn.send(b"GET / HTTP/1.1\r\nHost: loadtest\r\n")
                for line_number in range(10_000):  # bounded by `limit` long before this
                    outcome = conn.wait_closed(interval)
                    elapsed = time.monotonic() - start
                    if outcome != "open":
                        if elapsed < timeout * 0.5:
                            raise CheckFailed(
                                f"dropped after {elapsed:.1f} s, well before the "
                                f"{timeout} s header timeout, while the head was arriving"
                            )
                        return 0
                    if elapsed > limit:
                        raise CheckFailed(
                            f"slowloris still connected after {elapsed:.1f} s "
                            f"(server --header-timeout {timeout} s)"
                        )
                    try:
                        conn.send(b"X-Trickle-%d: y\r\n" % line_number)
                    except (BrokenPipeError, ConnectionResetError):
                        pass  # dropped: the next wait_closed() sees it

        self.check("slowloris: head trickled a line at a time", action)

    @tag("misbehave", "slowloris")
    @task(1)
    def idle_connection(self) -> None:
        timeout, limit = self._deadline()

        def action():
            with RawConnection(self.address, IO_TIMEOUT) as conn:
                if conn.wait_closed(limit) == "open":
                    raise CheckFailed(
                        f"slowloris still connected after {limit:.1f} s with nothing sent "
                        f"(server --header-timeout {timeout} s)"
                    )

        self.check("slowloris: connect and send nothing", action)


class SlowReaderUser(RawUser):
    """Takes a streamed response far more slowly than the server can produce it."""

    weight = 1
    wait_time = between(0.2, 1.0)

    @tag("misbehave", "slowread")
    @task
    def slow_read(self) -> None:
        expected = SLOW_STREAM_COUNT * SLOW_STREAM_SIZE
        target = f"/stream?n={SLOW_STREAM_COUNT}&size={SLOW_STREAM_SIZE}"

        def pace(count: int) -> None:
            time.sleep(count / SLOW_READ_RATE)

        def action():
            with RawConnection(self.address, IO_TIMEOUT, rcvbuf=SLOW_READ_RCVBUF) as conn:
                conn.send(request_bytes("GET", target))
                head = conn.read_head()
                body = conn.read_body(head, pace=pace)
                if head.status != 200 or len(body) != expected or body.strip(b"x"):
                    raise CheckFailed(
                        f"GET {target} read slowly: status {head.status}, {len(body)} bytes "
                        f"(expected {expected} bytes of b'x')"
                    )
                return len(body)

        self.check("slow reader: 1 MiB at 256 KiB/s", action)
