"""3b. At the connection cap (--max-connections 50): idle keep-alive connections filling the
cap stay usable; idle connections must not lock real clients out -- at the cap the server
reclaims the longest-idle connections with no request in progress (accepted but silent,
or idle keep-alive), as nginx does with its reusable connections, so a new client is
served within a second; and a flood of 300 clients at once is served later or refused
cleanly, never left hanging. Busy connections are never reclaimed: with five responses
in progress at a cap of 5, newcomers wait in the backlog and are all answered, in full,
once the busy ones close."""

from __future__ import annotations

import errno
import selectors
import socket
import time
from dataclasses import dataclass, field

import pytest
from helpers import RawClient, ServerProcess, get_request, post_request

from faults.helpers import (
    ANSWER_WITHIN,
    HEALTH_ASPECTS,
    Baseline,
    Health,
    assert_healthy,
    check_health,
    running_server,
)

CAP = 50
# Long idle timeouts, so that only reclaiming can free a slot while the test holds them.
CAP_FLAGS = ("--max-connections", str(CAP), "--keepalive-timeout", "30", "--header-timeout", "30")
GREETING = b"Hello from selserve!\n"
NEWCOMER_TIMEOUT = 2.0  # how long a new client waits at the cap before we call it locked out
OLDEST_CLOSED_WITHIN = 2.0  # the reclaimed longest-idle connection sees its close this soon
FLOOD_CLIENTS = 300
FLOOD_WITHIN = 15.0  # every flood client has an outcome within this long


@pytest.fixture(scope="module")
def server(backend):
    with running_server(backend, *CAP_FLAGS) as proc:
        yield proc


def wait_server_fds(proc: ServerProcess, at_least: int, timeout: float = 5.0) -> int:
    """Poll until the server holds at least this many fds (it accepted our clients)."""
    deadline = time.monotonic() + timeout
    fds = proc.num_fds()
    while fds < at_least and time.monotonic() < deadline:
        time.sleep(0.02)
        fds = proc.num_fds()
    return fds


def hold_keepalive(proc: ServerProcess, count: int) -> list[RawClient]:
    """`count` connections, each served one GET / and then left idle (keep-alive)."""
    clients = []
    try:
        for _ in range(count):
            client = proc.connect(timeout=5)
            clients.append(client)
            client.send(get_request("/"))
            response = client.read_final_response()
            assert (response.status, response.body) == (200, GREETING), proc.diag(
                f"held connection {len(clients)}: {response!r}"
            )
    except BaseException:
        for client in clients:
            client.close()
        raise
    return clients


# --------------------------------------------------------------------------- idle at the cap


@dataclass
class IdleRun:
    server: ServerProcess
    health: Health
    peak_fds: int = 0
    baseline_fds: int = 0
    second_answers: list[tuple[int, bytes] | str] = field(default_factory=list)


@pytest.fixture(scope="module")
def idle_at_cap(server):
    baseline = Baseline.take(server)
    run = IdleRun(server=server, health=None, baseline_fds=baseline.fds)  # type: ignore[arg-type]
    clients = hold_keepalive(server, CAP)
    try:
        run.peak_fds = server.num_fds()
        for client in clients:
            try:
                client.send(get_request("/"))
                response = client.read_final_response()
                run.second_answers.append((response.status, response.body))
            except (AssertionError, OSError) as exc:
                run.second_answers.append(f"{type(exc).__name__}: {exc}"[:200])
    finally:
        for client in clients:
            client.close()
    run.health = check_health(server, baseline, "idle-at-cap")
    return run


@pytest.mark.timeout(60)
def test_idle_connections_filling_the_cap_stay_usable(idle_at_cap):
    assert idle_at_cap.peak_fds >= idle_at_cap.baseline_fds + CAP, "the cap was never reached"
    wrong = [(i, a) for i, a in enumerate(idle_at_cap.second_answers) if a != (200, GREETING)]
    assert len(idle_at_cap.second_answers) == CAP
    assert not wrong, idle_at_cap.server.diag(f"second requests on held connections: {wrong[:5]}")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("aspect", HEALTH_ASPECTS)
def test_idle_connections_at_the_cap_leave_server_healthy(idle_at_cap, aspect):
    assert_healthy(idle_at_cap.health, aspect)


# --------------------------------------------------------------------------- reclaiming


@dataclass
class Newcomer:
    latency: float
    outcome: int | str
    held_closed: int = 0  # held connections the server closed (reclaimed) meanwhile
    held_garbage: list[bytes] = field(default_factory=list)  # bytes a silent one got
    oldest_end: tuple[str, bytes] = ("unwatched", b"")  # how the longest-held one ended


@dataclass
class ReclaimRun:
    server: ServerProcess
    health: Health
    silent: Newcomer | None = None
    keepalive: Newcomer | None = None
    peak_fds: tuple[int, int] = (0, 0)
    baseline_fds: int = 0


def closed_by_server(socks: list[socket.socket]) -> tuple[int, list[bytes]]:
    """How many of these (otherwise quiet) connections the server has closed, and any bytes
    that arrived on them instead."""
    closed, garbage = 0, []
    for sock in socks:
        sock.setblocking(False)
        try:
            data = sock.recv(4096)
        except BlockingIOError:
            continue
        except ConnectionResetError:
            closed += 1
            continue
        finally:
            sock.setblocking(True)
        if data:
            garbage.append(data[:80])
        else:
            closed += 1
    return closed, garbage


def newcomer(
    proc: ServerProcess, held: list[socket.socket], watch_oldest: bool = False
) -> Newcomer:
    latency, outcome = proc.timed_get(timeout=NEWCOMER_TIMEOUT)
    oldest_end = ("unwatched", b"")
    if watch_oldest:  # before closed_by_server reads it: an RST must not pass for an EOF
        oldest_end = RawClient(held[0]).wait_closed(timeout=OLDEST_CLOSED_WITHIN)
    closed, garbage = closed_by_server(held)
    return Newcomer(latency, outcome, closed, garbage, oldest_end)


@pytest.fixture(scope="module")
def reclaim(server):
    baseline = Baseline.take(server)
    run = ReclaimRun(server=server, health=None, baseline_fds=baseline.fds)  # type: ignore[arg-type]
    # (a) accepted but silent connections fill the cap
    silent = []
    try:
        for _ in range(CAP):
            silent.append(socket.create_connection(server.address, timeout=5))
        peak_silent = wait_server_fds(server, baseline.fds + CAP)
        run.silent = newcomer(server, silent, watch_oldest=True)
    finally:
        for sock in silent:
            sock.close()
    server.wait_fds_at_most(baseline.fds, timeout=5)
    # (b) idle keep-alive connections fill the cap
    clients = hold_keepalive(server, CAP)
    try:
        peak_keepalive = server.num_fds()
        run.keepalive = newcomer(server, [client.sock for client in clients])
    finally:
        for client in clients:
            client.close()
    run.peak_fds = (peak_silent, peak_keepalive)
    run.health = check_health(server, baseline, "reclaim-at-cap")
    return run


@pytest.mark.timeout(60)
def test_silent_connections_at_the_cap_do_not_lock_a_new_client_out(reclaim):
    assert reclaim.peak_fds[0] >= reclaim.baseline_fds + CAP, "the cap was never reached"
    got = reclaim.silent
    assert got.outcome == 200 and got.latency < ANSWER_WITHIN, reclaim.server.diag(
        f"with {CAP} accepted-but-silent connections at --max-connections {CAP}, a new "
        f"GET / got {got.outcome!r} after {got.latency:.2f} s "
        f"(held connections closed meanwhile: {got.held_closed}); expected the server to "
        f"reclaim a silent one and answer within {ANSWER_WITHIN} s"
    )


@pytest.mark.timeout(60)
def test_idle_keepalive_connections_at_the_cap_do_not_lock_a_new_client_out(reclaim):
    assert reclaim.peak_fds[1] >= reclaim.baseline_fds + CAP, "the cap was never reached"
    got = reclaim.keepalive
    assert got.outcome == 200 and got.latency < ANSWER_WITHIN, reclaim.server.diag(
        f"with {CAP} idle keep-alive connections at --max-connections {CAP}, a new GET / "
        f"got {got.outcome!r} after {got.latency:.2f} s (held connections closed meanwhile: "
        f"{got.held_closed}); expected the server to reclaim an idle one and answer within "
        f"{ANSWER_WITHIN} s"
    )


@pytest.mark.timeout(60)
def test_at_the_cap_the_longest_idle_connection_is_the_one_reclaimed(reclaim):
    # Checked where the held connections had never said anything, so their age is how
    # long they have been idle: the first one accepted is the longest idle.
    assert reclaim.silent.oldest_end == ("eof", b""), reclaim.server.diag(
        f"the longest-idle of {CAP} silent connections, after a newcomer was served at the "
        f"cap: {reclaim.silent.oldest_end!r} within {OLDEST_CLOSED_WITHIN} s; expected a "
        "plain close (it is the one to make room)"
    )


@pytest.mark.timeout(60)
def test_reclaimed_connections_are_closed_without_a_word(reclaim):
    # Reclaiming closes a connection with nothing in flight: its client sees a plain close,
    # never bytes (no half response, no 503 on a connection that asked nothing).
    got = [reclaim.silent, reclaim.keepalive]
    assert all(x.held_closed >= 1 for x in got), reclaim.server.diag(
        f"held connections closed by the server: silent {got[0].held_closed}, "
        f"keep-alive {got[1].held_closed}; a reclaim closes at least one"
    )
    assert not got[0].held_garbage and not got[1].held_garbage, (
        f"bytes on reclaimed connections: {got[0].held_garbage[:3]} {got[1].held_garbage[:3]}"
    )


@pytest.mark.timeout(60)
@pytest.mark.parametrize("aspect", HEALTH_ASPECTS)
def test_idle_connections_reclaimed_at_the_cap_leave_server_healthy(reclaim, aspect):
    assert_healthy(reclaim.health, aspect)


# --------------------------------------------------------------------------- busy at the cap

BUSY_CAP = 5
BUSY_FLAGS = ("--max-connections", str(BUSY_CAP), "--keepalive-timeout", "30")
HUGE_STREAM = b"GET /stream?n=100000&size=65536 HTTP/1.1\r\nHost: held\r\n\r\n"
EARLY_WITHIN = 0.5  # a client beyond the cap must not be answered this soon


@dataclass
class BusyRun:
    server: ServerProcess
    health: Health
    early: bytes = b""  # what the first client beyond the cap got while the cap was busy
    answers: list[tuple[int, bytes] | str] = field(default_factory=list)  # the queued ones'


@pytest.fixture(scope="module")
def busy_at_cap(backend):
    """BUSY_CAP connections each with a response in progress (a huge stream they do not
    read: busy, so not reclaimable), then BUSY_CAP more clients that queue behind them;
    the busy ones close and the queued ones are read."""
    with running_server(backend, *BUSY_FLAGS) as proc:
        baseline = Baseline.take(proc)
        run = BusyRun(server=proc, health=None)  # type: ignore[arg-type]
        held: list[RawClient] = []
        waiting: list[RawClient] = []
        try:
            for i in range(BUSY_CAP):
                client = proc.connect(timeout=5)
                held.append(client)
                client.send(post_request("/echo", f"held {i}".encode()))
                response = client.read_final_response()
                assert (response.status, response.body) == (200, f"held {i}".encode()), proc.diag()
                client.send(HUGE_STREAM)
                assert client.received_within(5.0).startswith(b"HTTP/1.1 200"), proc.diag()
            first = proc.connect(timeout=5)  # completes in the kernel's listen backlog
            waiting.append(first)
            first.send(post_request("/echo", b"waiting 0"))
            run.early = first.received_within(EARLY_WITHIN)
            for i in range(1, BUSY_CAP):
                client = proc.connect(timeout=5)
                waiting.append(client)
                client.send(post_request("/echo", f"waiting {i}".encode()))
            for client in held:
                client.close()
            held.clear()
            for client in waiting:
                client.timeout = 5.0
                client.sock.settimeout(5.0)
                try:
                    response = client.read_final_response()
                    run.answers.append((response.status, response.body))
                except (AssertionError, OSError) as exc:
                    run.answers.append(f"{type(exc).__name__}: {exc}"[:200])
        finally:
            for client in held + waiting:
                client.close()
        run.health = check_health(proc, baseline, "busy-at-cap")
        yield run


@pytest.mark.timeout(60)
def test_a_client_beyond_busy_connections_at_the_cap_waits(busy_at_cap):
    assert busy_at_cap.early == b"", busy_at_cap.server.diag(
        f"a client beyond the cap was answered while {BUSY_CAP} busy connections were held "
        f"(--max-connections {BUSY_CAP}): {busy_at_cap.early[:200]!r}"
    )


@pytest.mark.timeout(60)
def test_clients_queued_behind_busy_connections_are_all_answered_once_they_close(busy_at_cap):
    expected = [(200, f"waiting {i}".encode()) for i in range(BUSY_CAP)]
    assert busy_at_cap.answers == expected, busy_at_cap.server.diag(
        f"answers to the clients queued at the cap: {busy_at_cap.answers}"
    )


@pytest.mark.timeout(60)
@pytest.mark.parametrize("aspect", HEALTH_ASPECTS)
def test_busy_connections_at_the_cap_leave_server_healthy(busy_at_cap, aspect):
    assert_healthy(busy_at_cap.health, aspect)


# --------------------------------------------------------------------------- flood


@dataclass
class FloodRun:
    server: ServerProcess
    health: Health
    outcomes: list[str] = field(default_factory=list)  # served / refused / what went wrong
    seconds: float = 0.0


def response_status(buf: bytes) -> int | None:
    """The status of the complete (Content-Length framed) response in buf, else None."""
    end = buf.find(b"\r\n\r\n")
    if end < 0 or not buf.startswith(b"HTTP/1.1 "):
        return None
    length = 0
    for line in buf[:end].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    return int(buf[9:12]) if len(buf) >= end + 4 + length else None


def flood(address, count: int, within: float) -> list[str]:
    """`count` clients connect at once and each sends GET /; a client closes once it has a
    complete response. Outcomes: 'served' (200), 'refused' (closed or reset with no bytes,
    or a 503 then closed), else a description; 'hung: ...' when nothing ended it in time."""
    sel = selectors.DefaultSelector()
    outcomes: dict[int, str] = {}
    request = get_request("/")
    try:
        for i in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            code = sock.connect_ex(address)
            if code not in (0, errno.EINPROGRESS):
                outcomes[i] = f"connect: {errno.errorcode.get(code, code)}"
                sock.close()
                continue
            sel.register(sock, selectors.EVENT_WRITE, {"i": i, "buf": b"", "sent": False})
        deadline = time.monotonic() + within
        while sel.get_map() and time.monotonic() < deadline:
            for key, _ in sel.select(0.2):
                sock, state = key.fileobj, key.data
                outcome = None
                try:
                    if not state["sent"]:
                        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                        if err in (errno.ECONNREFUSED, errno.ECONNRESET):
                            outcome = "refused"
                        elif err:
                            outcome = f"connect: {errno.errorcode.get(err, err)}"
                        else:
                            sock.send(request)
                            state["sent"] = True
                            sel.modify(sock, selectors.EVENT_READ, state)
                    else:
                        data = sock.recv(65536)
                        state["buf"] += data
                        status = response_status(state["buf"])
                        if status == 200:
                            outcome = "served"
                        elif not data:
                            outcome = (
                                "refused"
                                if not state["buf"] or status == 503
                                else f"closed after {state['buf'][:100]!r}"
                            )
                except BlockingIOError:
                    continue
                except (BrokenPipeError, ConnectionResetError):
                    outcome = "refused" if not state["buf"] else f"reset after {state['buf']!r}"
                if outcome is not None:
                    outcomes[state["i"]] = outcome
                    sel.unregister(sock)
                    sock.close()
        for key in list(sel.get_map().values()):
            state = key.data
            outcomes[state["i"]] = f"hung: sent {state['sent']}, got {state['buf'][:60]!r}"
            key.fileobj.close()
    finally:
        sel.close()
    return [outcomes.get(i, "no outcome") for i in range(count)]


@pytest.fixture(scope="module")
def flooded(server):
    baseline = Baseline.take(server)
    start = time.monotonic()
    outcomes = flood(server.address, FLOOD_CLIENTS, FLOOD_WITHIN)
    seconds = time.monotonic() - start
    counts = {"served": outcomes.count("served"), "refused": outcomes.count("refused")}
    health = check_health(server, baseline, "flood-beyond-cap", extra=counts)
    return FloodRun(server=server, health=health, outcomes=outcomes, seconds=seconds)


@pytest.mark.timeout(60)
def test_flood_clients_are_all_served_or_refused_cleanly_in_time(flooded):
    other = [(i, o) for i, o in enumerate(flooded.outcomes) if o not in ("served", "refused")]
    assert len(flooded.outcomes) == FLOOD_CLIENTS
    assert not other, flooded.server.diag(
        f"{len(other)}/{FLOOD_CLIENTS} flood clients neither served nor cleanly refused "
        f"within {FLOOD_WITHIN} s: {other[:8]}"
    )


@pytest.mark.timeout(60)
def test_flood_beyond_the_cap_is_mostly_served_not_refused(flooded):
    # Clients that close after their answer free their slot: the backlog is served later.
    served = flooded.outcomes.count("served")
    assert served > CAP, flooded.server.diag(
        f"only {served} of {FLOOD_CLIENTS} flood clients served (cap {CAP}); "
        f"outcomes: {sorted(set(flooded.outcomes))[:5]}"
    )


@pytest.mark.timeout(60)
@pytest.mark.parametrize("aspect", HEALTH_ASPECTS)
def test_flood_beyond_the_cap_leaves_server_healthy(flooded, aspect):
    assert_healthy(flooded.health, aspect)


@pytest.mark.timeout(60)
def test_a_client_waiting_at_the_cap_is_taken_once_a_busy_connection_goes_idle(
    backend, server_factory
):
    # At --max-connections 1: A is busy, B waits in the backlog, A finishes and goes
    # idle. Accepting used to resume only when a connection closed: B was answered
    # at A's keep-alive timeout (5 s) instead of about RECLAIM_MIN_IDLE (0.5 s) later.
    proc = server_factory(backend, "--max-connections", "1", "--keepalive-timeout", "5")
    baseline = proc.settled_fds()
    with proc.connect() as first:
        first.send(b"GET / HTTP/1.1\r\nHost: a\r\n")  # a head in progress: A is busy
        assert wait_server_fds(proc, baseline + 1) > baseline, "A was never accepted"
        with socket.create_connection(proc.address, timeout=10) as second:
            second.sendall(get_request("/"))
            time.sleep(0.3)  # B is queued behind the cap meanwhile
            first.send(b"\r\n")
            assert first.read_final_response().status == 200
            idle_since = time.monotonic()
            waiting = RawClient(second, timeout=10)
            assert waiting.read_final_response().status == 200, proc.diag()
            waited = time.monotonic() - idle_since
    assert waited < 2.0, proc.diag(
        f"the client queued at the cap was answered {waited:.2f} s after the busy "
        "connection went idle; expected about 0.5 s (reclaimable), not the keep-alive timeout"
    )
