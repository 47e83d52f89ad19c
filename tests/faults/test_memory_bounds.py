"""3g. What one client can make the server hold in memory: about what it sent, plus a
constant. A body cut into 250,000 two-byte chunks once grew the server by 28 bytes per
body byte (each piece kept as its own object); a flood of pipelined requests that are
never read, and a head that never ends, must be bounded by the write buffer and the
head limits. Each case measures the server's peak RSS (VmHWM, reset just before it
through /proc/PID/clear_refs) against its RSS right before."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import ServerProcess, get_request

from faults.helpers import MiB, running_server, write_report

TINY_CHUNKS = 250_000  # of "2\r\nab\r\n": 500,000 body bytes, 1.75 MB on the wire
BYTES_PER_BODY_BYTE = 5  # the bound for the tiny-chunk body
PIPELINED_BYTES = 16 * MiB  # of GET / requests, none of whose answers is read
PIPELINE_GROWTH = 4 * MiB
ENDLESS_HEAD_BYTES = 8 * MiB  # sent as one header line that never ends
HEAD_GROWTH = 2 * MiB


def peak_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc/PID/status")


def reset_peak(proc: ServerProcess) -> int:
    """Reset the server's peak RSS to its current RSS (Linux: clear_refs 5); returns it."""
    Path(f"/proc/{proc.pid}/clear_refs").write_text("5")
    return peak_kib(proc.pid)


def growth(proc: ServerProcess, send) -> int:
    """Bytes the server's peak RSS grew by while `send()` ran (after a warm-up of it)."""
    before = reset_peak(proc)
    send()
    return (peak_kib(proc.pid) - before) * 1024


def report(proc: ServerProcess, scenario: str, grew: int, sent: int) -> None:
    write_report(
        {
            "scenario": f"memory-{scenario}",
            "backend": proc.backend,
            "peak_rss_growth_kib": grew // 1024,
            "client_bytes": sent,
        }
    )


@pytest.fixture(scope="module")
def server(backend):
    with running_server(backend, "--header-timeout", "5") as proc:
        assert proc.get("/").status == 200
        yield proc


def tiny_chunk_upload(proc: ServerProcess, chunks: int) -> bytes:
    head = b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
    with proc.connect(timeout=30) as client:
        client.send(head + b"2\r\nab\r\n" * chunks + b"0\r\n\r\n")
        response = client.read_final_response()
    assert response.status == 200, proc.diag(repr(response))
    return response.body


@pytest.mark.timeout(120)
def test_a_body_of_tiny_chunks_costs_about_its_payload(server):
    tiny_chunk_upload(server, TINY_CHUNKS // 10)  # warm up the paths and allocator
    echoed: list[bytes] = []
    grew = growth(server, lambda: echoed.append(tiny_chunk_upload(server, TINY_CHUNKS)))
    assert echoed == [b"ab" * TINY_CHUNKS]
    payload = 2 * TINY_CHUNKS
    report(server, "tiny-chunks", grew, payload)
    assert grew <= BYTES_PER_BODY_BYTE * payload, server.diag(
        f"peak RSS grew by {grew / MiB:.1f} MiB for a {payload / MiB:.2f} MiB body in "
        f"{TINY_CHUNKS:,} chunks ({grew / payload:.1f} bytes per body byte; bound "
        f"{BYTES_PER_BODY_BYTE})"
    )


def pipeline_flood(proc: ServerProcess) -> int:
    """Send PIPELINED_BYTES of GET / without reading; the server must stop reading once
    its answers back up. Returns how many bytes the kernel took before it did."""
    request = get_request("/")
    burst = request * (64 * 1024 // len(request))
    sent = 0
    with proc.connect(timeout=2) as client:
        try:
            while sent < PIPELINED_BYTES:
                client.sock.sendall(burst)
                sent += len(burst)
        except (TimeoutError, OSError):
            pass  # the windows are full: the server is not reading, as it should not
    return sent


@pytest.mark.timeout(120)
def test_pipelined_requests_never_read_back_cost_a_bounded_amount(server):
    pipeline_flood(server)  # warm up
    sent: list[int] = []
    grew = growth(server, lambda: sent.append(pipeline_flood(server)))
    report(server, "pipelined-unread", grew, sent[0])
    assert grew <= PIPELINE_GROWTH, server.diag(
        f"peak RSS grew by {grew / MiB:.1f} MiB while a client pipelined up to "
        f"{PIPELINED_BYTES / MiB:.0f} MiB of requests without reading an answer"
    )
    assert server.get("/").status == 200


def endless_head(proc: ServerProcess) -> int:
    """One header line that never ends, until the server refuses it (431) or we stop."""
    with proc.connect(timeout=5) as client:
        client.send(b"GET / HTTP/1.1\r\nHost: t\r\nX-Endless: ")
        sent = 0
        try:
            while sent < ENDLESS_HEAD_BYTES:
                client.sock.sendall(b"a" * 65536)
                sent += 65536
        except OSError:
            pass  # refused and closed
        try:
            status = client.read_final_response().status
        except AssertionError:
            status = 0
    return status


@pytest.mark.timeout(120)
def test_a_head_that_never_ends_is_refused_within_the_head_limit(server):
    statuses: list[int] = []
    grew = growth(server, lambda: statuses.append(endless_head(server)))
    report(server, "endless-head", grew, ENDLESS_HEAD_BYTES)
    assert statuses == [431], server.diag(f"got {statuses}")
    assert grew <= HEAD_GROWTH, server.diag(
        f"peak RSS grew by {grew / MiB:.1f} MiB for a head refused at 64 KiB"
    )
