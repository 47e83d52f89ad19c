"""What the benchmarks share besides fixtures: whether this run measures, and bounded
helpers that open, read and reset keep-alive connections (a Content-Length response
reader, an RST close, a batch of idle connections, a bounded poll). No fixtures or pytest
hooks live here; tests/benchmarks/conftest.py has those.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import time

import pytest


def measuring(config: pytest.Config) -> bool:
    """True when this run measures (--benchmark-only or --benchmark-enable was given)."""
    return bool(
        config.getoption("benchmark_only", False) or config.getoption("benchmark_enable", False)
    )


# --------------------------------------------------------------------------- HTTP client bits

HELLO_REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
CONNECT_BATCH = 500  # connections opened before their responses are read (< listen backlog)
IO_TIMEOUT = 10.0  # seconds any single socket operation may take


def read_response(sock: socket.socket, buf: bytearray) -> int:
    """Read one Content-Length-framed response from `sock`; return its status.

    `buf` carries bytes read past the response to the next call. Bounded by the socket's
    timeout for every recv."""
    while True:
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            break
        data = sock.recv(65536)
        if not data:
            raise ConnectionError(f"server closed the connection; got {bytes(buf[:200])!r}")
        buf += data
    head = bytes(buf[:end]).lower()
    status = int(head[9:12])
    at = head.find(b"\r\ncontent-length:")
    length = 0
    if at >= 0:
        line_end = head.find(b"\r\n", at + 2)
        length = int(head[at + 17 : line_end if line_end >= 0 else len(head)])
    total = end + 4 + length
    while len(buf) < total:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("server closed the connection inside a body")
        buf += data
    del buf[:total]
    return status


def close_with_reset(sock: socket.socket) -> None:
    """Close with SO_LINGER 0: RST instead of FIN, so no TIME_WAIT ties up a client port."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def open_idle_connections(address: tuple[str, int], count: int) -> list[socket.socket]:
    """`count` keep-alive connections that have each completed one GET / and now sit idle.

    Opened in batches (connect and send for a batch, then read its responses) so the
    listen backlog never overflows. Raises if any connection is not answered 200; closes
    what it opened on failure."""
    opened: list[socket.socket] = []
    try:
        for start in range(0, count, CONNECT_BATCH):
            batch = []
            for _ in range(min(CONNECT_BATCH, count - start)):
                sock = socket.create_connection(address, timeout=IO_TIMEOUT)
                opened.append(sock)
                batch.append(sock)
                sock.sendall(HELLO_REQUEST)
            for sock in batch:
                status = read_response(sock, bytearray())
                if status != 200:
                    raise AssertionError(f"idle connection {len(opened)} answered {status}")
    except BaseException:
        for sock in opened:
            close_with_reset(sock)
        raise
    return opened


def wait_until(predicate, timeout: float, interval: float = 0.05) -> bool:
    """Poll `predicate` until true or `timeout` passes; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
