"""The select backend past FD_SETSIZE: select() cannot watch fds at or above 1024, so with
1150 clients connected at once (and --max-connections far above that) the connections
that land on such fds must be refused cleanly -- closed with no bytes, or a 503 then
closed -- while those below are served and stay usable; the limit is logged once, not
once per refusal; and once every client has gone the server is as healthy as before.
Only the select backend has this limit, so only it runs here."""

from __future__ import annotations

import contextlib
import resource
import selectors
import socket
import time
from dataclasses import dataclass, field

import pytest
from helpers import BACKENDS, RawClient, ServerProcess, get_request, raise_nofile_limit

from faults.helpers import (
    HEALTH_ASPECTS,
    Baseline,
    Health,
    assert_healthy,
    check_health,
    running_server,
)

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif("select" not in BACKENDS, reason="select backend not available"),
]

SELECT_CONNECTIONS = 1150
FLAGS = ("--max-connections", "5000", "--keepalive-timeout", "120", "--log-level", "info")
CONNECT_WITHIN = 60.0  # seconds for all the connects
OUTCOMES_WITHIN = 30.0  # seconds for every connection to be served or refused
SERVED_AT_LEAST = 1024 - 64  # fds below 1024 are usable: only the last few dozen go away
LOG_LINES_AT_MOST = 3


def classify_held_connections(clients: list[socket.socket], deadline: float) -> list[str]:
    """Wait (one selector, bounded) until each connection has a complete response or was
    closed. Outcomes: 'served' (a 200 with its body, still open), 'refused' (closed with no
    bytes, or a 503 then closed), anything else is a description of what went wrong."""
    sel = selectors.DefaultSelector()
    data = {sock: bytearray() for sock in clients}
    outcome: dict[socket.socket, str] = {}

    def complete(buf: bytearray) -> int | None:
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return None
        head = bytes(buf[:end]).decode("latin-1").lower()
        length = 0
        for line in head.split("\r\n")[1:]:
            if line.startswith("content-length:"):
                length = int(line.split(":", 1)[1])
        return int(head[9:12]) if len(buf) >= end + 4 + length else None

    try:
        for sock in clients:
            sock.setblocking(False)
            sel.register(sock, selectors.EVENT_READ)
        while len(outcome) < len(clients) and time.monotonic() < deadline:
            for key, _ in sel.select(0.2):
                sock = key.fileobj
                try:
                    chunk = sock.recv(65536)
                except BlockingIOError:
                    continue
                except ConnectionResetError:
                    chunk = b""
                if chunk:
                    data[sock] += chunk
                    status = complete(data[sock])
                    if status == 200:
                        outcome[sock] = "served"
                        sel.unregister(sock)
                    continue
                status = complete(data[sock]) if data[sock] else None
                if not data[sock] or status == 503:
                    outcome[sock] = "refused"
                else:
                    outcome[sock] = f"closed after {bytes(data[sock][:120])!r}"
                sel.unregister(sock)
    finally:
        sel.close()
    for sock in clients:
        sock.setblocking(True)
        sock.settimeout(5)
    return [outcome.get(sock, f"no outcome, got {bytes(data[sock][:120])!r}") for sock in clients]


@dataclass
class FdSetsizeRun:
    server: ServerProcess
    health: Health
    outcomes: list[str] = field(default_factory=list)  # served / refused / what went wrong
    alive_at_peak: bool = False
    new_log_lines: int = -1  # lines the server logged while the clients connected
    again: int | str = "not tried"  # a second GET / on a served connection, after it all

    def count(self, outcome: str) -> int:
        return self.outcomes.count(outcome)


@pytest.fixture(scope="module")
def beyond_fd_setsize():
    old_limit = raise_nofile_limit()  # before the server starts: it inherits the limit
    try:
        limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        assert limit > SELECT_CONNECTIONS + 100, f"RLIMIT_NOFILE too low here: {limit}"
        with running_server("select", *FLAGS) as proc:
            baseline = Baseline.take(proc)
            run = FdSetsizeRun(server=proc, health=None)  # type: ignore[arg-type]
            log_lines_before = len(proc.stderr_text().splitlines())
            clients: list[socket.socket] = []
            try:
                connect_deadline = time.monotonic() + CONNECT_WITHIN
                for i in range(SELECT_CONNECTIONS):
                    assert time.monotonic() < connect_deadline, (
                        f"only {i} connects in {CONNECT_WITHIN} s"
                    )
                    sock = socket.create_connection(proc.address, timeout=5)
                    clients.append(sock)
                    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                        sock.sendall(get_request("/"))  # a refused one may be closed already
                run.outcomes = classify_held_connections(
                    clients, time.monotonic() + OUTCOMES_WITHIN
                )
                run.alive_at_peak = proc.alive()
                run.new_log_lines = len(proc.stderr_text().splitlines()) - log_lines_before
                if "served" in run.outcomes:
                    again = RawClient(clients[run.outcomes.index("served")])
                    try:
                        again.send(get_request("/"))
                        run.again = again.read_final_response().status
                    except (AssertionError, OSError) as exc:
                        run.again = f"{type(exc).__name__}: {exc}"[:200]
            finally:
                for sock in clients:
                    sock.close()
            run.health = check_health(
                proc,
                baseline,
                "select-beyond-fd-setsize",
                extra={"served": run.count("served"), "refused": run.count("refused")},
            )
            yield run
    finally:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, old_limit)


def test_every_connection_is_served_or_refused_cleanly(beyond_fd_setsize):
    run = beyond_fd_setsize
    other = [(i, o) for i, o in enumerate(run.outcomes) if o not in ("served", "refused")]
    assert len(run.outcomes) == SELECT_CONNECTIONS
    assert not other, run.server.diag(
        f"{len(other)} connections neither served nor refused: {other[:5]}"
    )


def test_server_survives_its_fds_passing_fd_setsize(beyond_fd_setsize):
    assert beyond_fd_setsize.alive_at_peak, beyond_fd_setsize.server.diag(
        "server died when its fds passed FD_SETSIZE"
    )


def test_connections_on_fds_below_fd_setsize_are_served(beyond_fd_setsize):
    run = beyond_fd_setsize
    assert run.count("served") >= SERVED_AT_LEAST, run.server.diag(
        f"only {run.count('served')} of {SELECT_CONNECTIONS} served, {run.count('refused')} refused"
    )


def test_connections_on_fds_past_fd_setsize_are_refused(beyond_fd_setsize):
    run = beyond_fd_setsize
    assert run.count("refused"), run.server.diag(
        f"all {SELECT_CONNECTIONS} served: the server's fds never passed 1024?"
    )


def test_the_fd_limit_is_logged_once_not_per_refusal(beyond_fd_setsize):
    run = beyond_fd_setsize
    assert run.new_log_lines <= LOG_LINES_AT_MOST, run.server.diag(
        f"{run.new_log_lines} log lines for {run.count('refused')} refusals: "
        "the limit is logged once"
    )


def test_served_connections_stay_usable_after_the_refusals(beyond_fd_setsize):
    assert beyond_fd_setsize.again == 200, beyond_fd_setsize.server.diag(
        f"a second GET / on a served connection: {beyond_fd_setsize.again!r}"
    )


@pytest.mark.parametrize("aspect", HEALTH_ASPECTS)
def test_fds_past_fd_setsize_leave_server_healthy(beyond_fd_setsize, aspect):
    assert_healthy(beyond_fd_setsize.health, aspect)
