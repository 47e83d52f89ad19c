"""End to end, per backend: 100 keep-alive `GET /` on one client socket through a real
server (`python -m selserve selserve.demo:app` in a subprocess, so it has its own core and
GIL) while K other keep-alive connections sit idle on it, K = 0, 1,000, 10,000.

This is each backend's cost curve: epoll's round time should stay flat in K, while poll
and select scan every watched fd on every turn. Every idle connection has completed one
request (so it is a real keep-alive connection, not a half-open one); the server gets
`--keepalive-timeout 300` so none of them is closed while the round runs. The timing
includes the client's own Python work, the same for every backend, and the time idle
cores take to wake up for each round trip (on an idle VM that can make a round 2-3x
slower than on a busy one): compare backends within one run.

When benchmarking is not enabled (the plain `pytest` run), K = 10,000 is skipped -- setting
it up takes seconds per backend -- and the other cases run one round each. `select` cannot
hold connections on fds at or above 1024, so it runs K = 0 and 1,000 only.
"""

from __future__ import annotations

import socket

import pytest
from helpers import ServerProcess  # tests/helpers.py: the black-box server process

from selserve import backends

from .helpers import (
    HELLO_REQUEST,
    IO_TIMEOUT,
    close_with_reset,
    open_idle_connections,
    read_response,
    wait_until,
)

pytestmark = pytest.mark.timeout(300)

K_VALUES = (0, 1_000, 10_000)
REQUESTS_PER_ROUND = 100
ROUNDS = 30
MEASURED_ONLY_K = 10_000  # skipped unless benchmarking: see the module docstring
FD_MARGIN = 4  # fds the server may open besides these connections (e.g. a log file)


@pytest.fixture(scope="module", params=backends.available())
def server(request, open_file_limit):
    proc = ServerProcess(request.param, "--keepalive-timeout", "300", "--log-level", "warning")
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(params=K_VALUES, ids=lambda k: f"K={k}")
def idle_connections(request, server, benchmarking, open_file_limit):
    """K idle keep-alive connections on `server`, closed (with RST) and gone afterwards."""
    k = request.param
    if k == MEASURED_ONLY_K and not benchmarking:
        pytest.skip(f"K={k} runs only when benchmarking (--benchmark-only or --benchmark-enable)")
    baseline = server.num_fds()
    limit = backends.backend_class(server.backend).fd_limit
    # The idle connections, the measured one and a margin must all land below the limit.
    if limit is not None and baseline + k + 1 + FD_MARGIN >= limit:
        pytest.skip(f"{server.backend} cannot watch fds at or above {limit}")
    if open_file_limit < k + 256:
        pytest.skip(f"RLIMIT_NOFILE is {open_file_limit}; K={k} needs about {k + 256}")
    socks = open_idle_connections(server.address, k)
    yield socks
    for sock in socks:
        close_with_reset(sock)
    # The next case must not pay for this one's closes.
    wait_until(lambda: server.num_fds() <= baseline, timeout=30.0)


def test_keepalive_requests(benchmark, server, idle_connections):
    """100 sequential keep-alive GET / per round on one connection, K others idle."""
    k = len(idle_connections)
    benchmark.group = f"end to end: {REQUESTS_PER_ROUND} keep-alive GET /, K={k} idle"
    benchmark.name = server.backend
    benchmark.extra_info["requests_per_round"] = REQUESTS_PER_ROUND
    benchmark.extra_info["idle_connections"] = k
    sock = socket.create_connection(server.address, timeout=IO_TIMEOUT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = bytearray()

    def round_of_requests() -> int:
        ok = 0
        for _ in range(REQUESTS_PER_ROUND):
            sock.sendall(HELLO_REQUEST)
            ok += read_response(sock, buf) == 200
        return ok

    try:
        answered = benchmark.pedantic(round_of_requests, rounds=ROUNDS, warmup_rounds=2)
    finally:
        sock.close()
    assert answered == REQUESTS_PER_ROUND
    assert server.alive()
