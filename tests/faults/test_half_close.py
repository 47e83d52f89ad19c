"""4. Half-closes, pipelined bursts dropped on the floor, partial requests then RST.

A client that sends its request and then `shutdown(SHUT_WR)` has only said it will send
nothing more: the whole response must still arrive, for a small answer, a big chunked
stream and a pipelined batch alike. Clients that fire a pipelined burst and close at
once, and clients that RST halfway through a request (line, header block, Content-Length
body, chunked body, a body big enough to spill to disk), must leave nothing behind."""

from __future__ import annotations

import contextlib
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pytest
from helpers import ServerProcess, get_request, post_request, set_linger_rst

from faults.helpers import (
    HEALTH_ASPECTS,
    Baseline,
    Health,
    assert_healthy,
    check_health,
)

GREETING = b"Hello from selserve!\n"
BIG_STREAM = "/stream?n=200&size=16384"
BIG_STREAM_BYTES = 200 * 16384
HALF_CLOSED_STREAMS = 8  # at once
PIPELINE = 12  # requests in the half-closed pipelined batch

BURST_CLIENTS = 40
BURST_REQUESTS = 30  # pipelined requests per burst, sent in one write, then close
PARTIAL_CLIENTS = 160


# --------------------------------------------------------------------------- half-close


@dataclass
class HalfCloseRun:
    server: ServerProcess
    health: Health
    root: str = ""  # '' when right, else what went wrong
    streams: list[str] = field(default_factory=list)
    pipeline: str = ""


def half_closed_exchange(proc: ServerProcess, data: bytes, methods: list[str]) -> list:
    """Send `data`, SHUT_WR, read one response per entry of `methods`, then expect EOF."""
    with proc.connect(timeout=10) as client:
        client.send(data)
        client.sock.shutdown(socket.SHUT_WR)
        responses = [client.read_final_response(method) for method in methods]
        end, extra = client.wait_closed(timeout=3)
        assert end == "eof" and not extra, (
            f"after the answers: {end}, {len(extra)} more bytes {extra[:80]!r}"
        )
        return responses


def check_root(proc: ServerProcess) -> str:
    try:
        (response,) = half_closed_exchange(proc, get_request("/"), ["GET"])
    except (AssertionError, OSError) as exc:
        return f"{type(exc).__name__}: {exc}"
    if (response.status, response.body) != (200, GREETING):
        return f"got {response!r}"
    return ""


def check_stream(proc: ServerProcess) -> str:
    try:
        (response,) = half_closed_exchange(proc, get_request(BIG_STREAM), ["GET"])
    except (AssertionError, OSError) as exc:
        return f"{type(exc).__name__}: {exc}"
    if response.status != 200 or len(response.body) != BIG_STREAM_BYTES:
        return f"status {response.status}, {len(response.body)} of {BIG_STREAM_BYTES} bytes"
    if response.body.strip(b"x"):
        return "body is not all b'x'"
    return ""


def pipeline_requests() -> tuple[bytes, list[str], list[tuple[int, bytes | None]]]:
    """A mixed pipelined batch: the bytes, the methods, and the (status, body) expected
    (body None: only its length is known, checked as the stream's)."""
    data, methods, expected = b"", [], []
    for i in range(PIPELINE):
        kind = i % 4
        if kind == 0:
            data += get_request("/")
            methods.append("GET")
            expected.append((200, GREETING))
        elif kind == 1:
            body = f"pipelined body {i}".encode()
            data += post_request("/echo", body)
            methods.append("POST")
            expected.append((200, body))
        elif kind == 2:
            data += get_request("/stream?n=3&size=1000")
            methods.append("GET")
            expected.append((200, b"x" * 3000))
        else:
            data += b"HEAD / HTTP/1.1\r\nHost: test\r\n\r\n"
            methods.append("HEAD")
            expected.append((200, b""))
    return data, methods, expected


def check_pipeline(proc: ServerProcess) -> str:
    data, methods, expected = pipeline_requests()
    try:
        responses = half_closed_exchange(proc, data, methods)
    except (AssertionError, OSError) as exc:
        return f"{type(exc).__name__}: {exc}"
    got = [(r.status, r.body) for r in responses]
    if got != expected:
        wrong = [
            (i, g[0], g[1][:40])
            for i, (g, e) in enumerate(zip(got, expected, strict=False))
            if g != e
        ]
        return f"answers out of order or wrong: {wrong[:5]}"
    return ""


@pytest.fixture(scope="module")
def half_close(server):  # tests/conftest.py: one default server per backend and module
    baseline = Baseline.take(server)
    root = check_root(server)
    with ThreadPoolExecutor(max_workers=HALF_CLOSED_STREAMS) as pool:
        streams = list(
            pool.map(lambda _: check_stream(server), range(HALF_CLOSED_STREAMS), timeout=60)
        )
    pipeline = check_pipeline(server)
    health = check_health(server, baseline, "half-close")
    return HalfCloseRun(server, health, root=root, streams=streams, pipeline=pipeline)


@pytest.mark.timeout(90)
def test_half_closed_client_gets_the_whole_root_response(half_close):
    assert not half_close.root, half_close.server.diag(half_close.root)


@pytest.mark.timeout(90)
def test_half_closed_clients_get_whole_big_streams(half_close):
    bad = [problem for problem in half_close.streams if problem]
    assert len(half_close.streams) == HALF_CLOSED_STREAMS
    assert not bad, half_close.server.diag(
        f"{len(bad)}/{HALF_CLOSED_STREAMS} half-closed clients of {BIG_STREAM}: {bad[:3]}"
    )


@pytest.mark.timeout(90)
def test_half_closed_pipeline_is_answered_in_full_and_in_order(half_close):
    assert not half_close.pipeline, half_close.server.diag(half_close.pipeline)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("aspect", HEALTH_ASPECTS)
def test_half_closing_clients_leave_server_healthy(half_close, aspect):
    assert_healthy(half_close.health, aspect)


# --------------------------------------------------------------------------- drop and RST


def partial_request(i: int) -> bytes:
    """Eight ways to stop partway through a request (the 1.5 MiB one only for every
    fourth client of its kind: each holds up to 1 MiB in memory before spilling)."""
    kind = i % 8
    if kind == 7 and i % 32 != 7:
        kind = 3
    if kind == 0:
        return b"GET /stream?n=10 HT"  # half a request line
    if kind == 1:
        return b"GET / HTTP/1.1\r\nHost: te"  # half a header block
    if kind == 2:
        return b"GET / HTTP/1.1\r\nHost: test\r\nX-A: b\r\n"  # no blank line yet
    if kind == 3:
        return post_request("/echo", b"x" * 100_000)[:5000]  # Content-Length body, 5%
    if kind == 4:  # chunked body inside its first chunk
        return (
            b"POST /echo HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"1000\r\n" + b"y" * 100
        )
    if kind == 5:  # one request answered (unread), the next one half sent
        return get_request("/") + b"GET /str"
    if kind == 6:  # waiting for 100 Continue
        return (
            b"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 100\r\n"
            b"Expect: 100-continue\r\n\r\n"
        )
    # A body past the 1 MiB spill threshold: it is in a temporary file when the RST comes.
    return post_request("/echo", b"z" * (3 << 20))[: (3 << 19)]


@dataclass
class DropRun:
    server: ServerProcess
    health: Health
    burst_peak_fds: int = 0
    partial_peak_fds: int = 0
    baseline_fds: int = 0
    errors: list[str] = field(default_factory=list)


def burst() -> bytes:
    out = bytearray()
    for i in range(BURST_REQUESTS):
        if i % 3 == 0:
            out += get_request("/")
        elif i % 3 == 1:
            out += get_request("/stream?n=20&size=16384")
        else:
            out += post_request("/echo", b"e" * 10_000)
    return bytes(out)


def open_clients(proc: ServerProcess, count: int, errors: list[str]) -> list[socket.socket]:
    clients = []
    for i in range(count):
        try:
            clients.append(socket.create_connection(proc.address, timeout=5))
        except OSError as exc:
            errors.append(f"connect {i}: {exc!r}")
    return clients


def peak_fds_until(proc: ServerProcess, want: int, timeout: float) -> int:
    """Poll the server's fd count until it reaches `want` (or timeout); the highest seen."""
    peak = proc.num_fds()
    deadline = time.monotonic() + timeout
    while peak < want and time.monotonic() < deadline:
        time.sleep(0.02)
        peak = max(peak, proc.num_fds())
    return peak


@pytest.fixture(scope="module")
def drops(server):
    baseline = Baseline.take(server)
    run = DropRun(server=server, health=None, baseline_fds=baseline.fds)  # type: ignore[arg-type]
    data = burst()
    clients = open_clients(server, BURST_CLIENTS, run.errors)
    try:
        run.burst_peak_fds = peak_fds_until(server, baseline.fds + len(clients), 5)
        for i, sock in enumerate(clients):
            if i % 2:
                set_linger_rst(sock)
            try:
                sock.sendall(data)
            except OSError as exc:
                run.errors.append(f"burst {i}: {exc!r}")
            sock.close()  # at once: FIN (RST when answers are already unread) or RST
    finally:
        for sock in clients:
            sock.close()
    clients = open_clients(server, PARTIAL_CLIENTS, run.errors)
    try:
        for i, sock in enumerate(clients):
            try:
                sock.sendall(partial_request(i))
            except OSError as exc:
                run.errors.append(f"partial {i}: {exc!r}")
        run.partial_peak_fds = peak_fds_until(server, baseline.fds + len(clients), 5)
        for sock in clients:
            set_linger_rst(sock)
            sock.close()
    finally:
        for sock in clients:
            with contextlib.suppress(OSError):
                sock.close()
    run.health = check_health(server, baseline, "burst-close-partial-rst")
    return run


@pytest.mark.timeout(90)
def test_bursting_and_partial_clients_were_all_connected_before_leaving(drops):
    # Otherwise the closes and resets would have tested nothing.
    assert not drops.errors, drops.server.diag(f"client-side errors: {drops.errors[:5]}")
    assert drops.burst_peak_fds >= drops.baseline_fds + BURST_CLIENTS, drops.server.diag(
        f"server fds peaked at {drops.burst_peak_fds} with {BURST_CLIENTS} bursting clients"
    )
    assert drops.partial_peak_fds >= drops.baseline_fds + PARTIAL_CLIENTS, drops.server.diag(
        f"server fds peaked at {drops.partial_peak_fds} with {PARTIAL_CLIENTS} partial clients"
    )


@pytest.mark.timeout(90)
@pytest.mark.parametrize("aspect", HEALTH_ASPECTS)
def test_dropped_bursts_and_reset_partials_leave_server_healthy(drops, aspect):
    assert_healthy(drops.health, aspect)
