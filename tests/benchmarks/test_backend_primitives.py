"""Backend primitives side by side: what one register/modify/unregister costs, and what
one select() turn costs, while N idle fds are watched (N = 10, 1,000, 10,000).

The idle fds are both ends of N/2 socketpairs (nothing is ever written to them); one more
socketpair has a byte waiting, so every select() turn reports exactly one ready fd -- one
busy connection among N idle ones. epoll's costs should stay flat in N; poll's and
select's turn grows with N. `select` cannot watch fds at or above FD_SETSIZE (1024), so it
runs only where every fd is below that (N = 10 and, when few other fds are open, 1,000).
Groups are per operation and N, so the backends stand next to each other.
"""

from __future__ import annotations

import socket

import pytest

from selserve import backends
from selserve.backends import READABLE, WRITABLE

N_VALUES = (10, 1_000, 10_000)


class IdleFds:
    """N idle fds (both ends of N/2 socketpairs), one ready fd and one spare fd."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.pairs: list[tuple[socket.socket, socket.socket]] = []
        try:
            for _ in range(n // 2):
                self.pairs.append(socket.socketpair())
            self.ready_pair = socket.socketpair()
            self.pairs.append(self.ready_pair)
            self.ready_pair[0].send(b"x")  # ready_pair[1] is readable from now on
            self.spare_pair = socket.socketpair()
            self.pairs.append(self.spare_pair)
        except BaseException:
            self.close()
            raise
        self.idle = [s.fileno() for pair in self.pairs[: n // 2] for s in pair]
        self.ready = self.ready_pair[1].fileno()
        self.spare = self.spare_pair[0].fileno()
        self.highest = max(s.fileno() for pair in self.pairs for s in pair)

    def close(self) -> None:
        for a, b in self.pairs:
            a.close()
            b.close()
        self.pairs.clear()


@pytest.fixture(scope="module", params=N_VALUES, ids=lambda n: f"N={n}")
def idle_fds(request, open_file_limit):
    n = request.param
    if open_file_limit < n + 256:
        pytest.skip(f"RLIMIT_NOFILE is {open_file_limit}; N={n} needs about {n + 256}")
    fds = IdleFds(n)
    yield fds
    fds.close()


@pytest.fixture(params=backends.available())
def watching(request, idle_fds):
    """A backend of the parametrised kind watching every idle fd and the ready one."""
    backend = backends.create(request.param)
    if not backend.can_watch(idle_fds.highest):
        backend.close()
        pytest.skip(f"{backend.name} cannot watch fd {idle_fds.highest} (limit {backend.fd_limit})")
    try:
        for fd in idle_fds.idle:
            backend.register(fd, READABLE, None)
        backend.register(idle_fds.ready, READABLE, None)
        yield backend
    finally:
        backend.close()


def test_register_modify_unregister(benchmark, watching, idle_fds):
    """One fd through its whole life in the backend: register, modify, unregister."""
    benchmark.group = f"backend register+modify+unregister, N={idle_fds.n}"
    benchmark.name = watching.name
    fd = idle_fds.spare
    backend = watching

    def cycle() -> None:
        backend.register(fd, READABLE, None)
        backend.modify(fd, READABLE | WRITABLE, None)
        backend.unregister(fd)

    benchmark(cycle)
    assert len(backend) == idle_fds.n + 1


def test_modify_toggle(benchmark, watching, idle_fds):
    """Write interest on and off again: what a response that cannot be sent at once costs."""
    benchmark.group = f"backend modify on+off, N={idle_fds.n}"
    benchmark.name = watching.name
    fd = idle_fds.ready
    backend = watching

    def toggle() -> None:
        backend.modify(fd, READABLE | WRITABLE, None)
        backend.modify(fd, READABLE, None)

    benchmark(toggle)


def test_select_turn(benchmark, watching, idle_fds):
    """One select(0) turn that finds the single ready fd among N idle ones."""
    benchmark.group = f"backend select() turn, N={idle_fds.n} idle + 1 ready"
    benchmark.name = watching.name
    backend = watching
    ready = benchmark(backend.select, 0)
    assert [key.fd for key, _ in ready] == [idle_fds.ready]
