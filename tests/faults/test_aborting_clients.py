"""2. Clients walking away mid-response, hundreds at once, while a probe client keeps being
served: a plain close or an RST (SO_LINGER 0), after 0 bytes of the response, after a few
KB, and in the middle of a chunk of a chunked stream. And clients walking away from a
connection they have only just opened, a hundred in quick succession, at seven points from
"before sending anything" to "before reading the answer". (test_reset_storm.py resets
clients while the server is still writing an 80 MB stream to them.)"""

from __future__ import annotations

import dataclasses
import errno
import selectors
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pytest
from helpers import ServerProcess, get_request, post_request, set_linger_rst

from faults.helpers import (
    ANSWER_WITHIN,
    HEALTH_ASPECTS,
    Baseline,
    Health,
    Prober,
    assert_healthy,
    check_health,
    running_server,
)

WAVE_CLIENTS = 300  # at once
MIN_SECONDS = 1.5  # waves repeat at least this long so that the probe runs meanwhile
MAX_WAVES = 8
WAVE_DEADLINE = 15.0  # seconds one wave may take
STREAM = "/stream?n=64&size=16384"
CHUNK = 16384
CHUNK_FRAME = b"%x\r\n" % CHUNK  # the size line in front of every chunk of STREAM
FRAME_LEN = len(CHUNK_FRAME) + CHUNK + 2


@dataclass(frozen=True)
class Plan:
    path: str
    leave: str  # "close" (FIN, or RST if unread data is pending) or "rst" (SO_LINGER 0)
    point: str  # "0-bytes", "few-kb", "mid-chunk"


PLANS = [
    Plan(path, leave, point)
    for path, point in (("/", "0-bytes"), (STREAM, "0-bytes"), (STREAM, "few-kb"))
    + ((STREAM, "mid-chunk"),)
    for leave in ("close", "rst")
]


def body_bytes_wanted(plan: Plan, i: int) -> int:
    """How much of the response body a client reads before it leaves."""
    if plan.point == "0-bytes":
        return 0
    if plan.point == "few-kb":
        return 1000 + (i * 617) % 7000
    # Inside the data of chunk k (k = 0..2), j bytes in: never on a frame boundary.
    k, j = i % 3, 1 + (i * 389) % (CHUNK - 2)
    return k * FRAME_LEN + len(CHUNK_FRAME) + j


def framing_problem(body: bytes) -> str:
    """'' if `body` is a prefix of STREAM's chunked encoding, else what is wrong."""
    for start in range(0, len(body), FRAME_LEN):
        size_line = body[start : start + len(CHUNK_FRAME)]
        if not CHUNK_FRAME.startswith(size_line):
            return f"size line {size_line!r} at body offset {start}"
        data = body[start + len(CHUNK_FRAME) : start + len(CHUNK_FRAME) + CHUNK]
        if data.strip(b"x"):
            return f"chunk data at body offset {start} is not all b'x'"
        crlf = body[start + len(CHUNK_FRAME) + CHUNK : start + FRAME_LEN]
        if not b"\r\n".startswith(crlf):
            return f"chunk data at body offset {start} not followed by CRLF"
    return ""


def run_wave(address, count: int, deadline: float) -> tuple[int, list[str]]:
    """`count` clients at once, client i following PLANS[i % len(PLANS)]; one selector, one
    thread. Returns (clients that left at their point, descriptions of the others)."""
    sel = selectors.DefaultSelector()
    failures: list[str] = []
    done = 0
    try:
        for i in range(count):
            plan = PLANS[i % len(PLANS)]
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            if plan.leave == "rst":
                set_linger_rst(sock)
            code = sock.connect_ex(address)
            if code not in (0, errno.EINPROGRESS):
                failures.append(f"client {i}: connect: {errno.errorcode.get(code, code)}")
                sock.close()
                continue
            state = {
                "selector": sel,
                "i": i,
                "plan": plan,
                "phase": "connect",
                "want": body_bytes_wanted(plan, i),
                "head": b"",
                "body": bytearray(),
            }
            sel.register(sock, selectors.EVENT_WRITE, state)
        while sel.get_map() and time.monotonic() < deadline:
            for key, _ in sel.select(0.2):
                sock, state = key.fileobj, key.data
                try:
                    finished = step(sock, state)
                except OSError as exc:
                    failures.append(f"client {state['i']} {state['plan']}: {exc!r}")
                    finished = True
                except AssertionError as exc:
                    failures.append(f"client {state['i']} {state['plan']}: {exc}")
                    finished = True
                else:
                    done += finished is True
                if finished:
                    sel.unregister(sock)
                    sock.close()  # FIN, or RST: SO_LINGER 0 for "rst", unread data for some
        for key in list(sel.get_map().values()):
            failures.append(f"client {key.data['i']}: still {key.data['phase']} at the deadline")
            key.fileobj.close()
    finally:
        sel.close()
    return done, failures


def step(sock: socket.socket, state: dict) -> bool | None:
    """Advance one client; True once it has reached its point (the caller closes it)."""
    if state["phase"] == "connect":
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            raise OSError(err, errno.errorcode.get(err, str(err)))
        request = get_request(state["plan"].path)
        assert sock.send(request) == len(request), "short send of a tiny request"
        if state["want"] == 0:
            return True  # leave after 0 bytes of the response
        state["phase"] = "head"
        state["selector"].modify(sock, selectors.EVENT_READ, state)
        return None
    if state["phase"] == "head":
        peek = sock.recv(8192, socket.MSG_PEEK)
        assert peek, f"EOF before the response head; got {state['head']!r}"
        end = peek.find(b"\r\n\r\n")
        if end < 0:
            assert len(peek) < 8192, "response head longer than 8 KiB"
            return None
        head = sock.recv(end + 4)
        assert head.startswith(b"HTTP/1.1 200 "), f"bad head {head[:120]!r}"
        assert b"transfer-encoding: chunked" in head.lower(), f"stream not chunked: {head!r}"
        state["head"] = head
        state["phase"] = "body"
        return None
    want = state["want"] - len(state["body"])
    data = sock.recv(min(65536, want))
    assert data, f"EOF after {len(state['body'])} of {state['want']} body bytes"
    state["body"] += data
    if len(state["body"]) < state["want"]:
        return None
    problem = framing_problem(bytes(state["body"]))
    assert not problem, f"bad chunked framing at the cut: {problem}"
    return True


@dataclass
class AbortRun:
    server: ServerProcess
    health: Health
    waves: int = 0
    clients: int = 0
    done: int = 0
    failures: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def aborts(backend):
    with running_server(backend) as proc:
        baseline = Baseline.take(proc)
        run_waves = []
        with Prober(proc, interval=0.02) as prober:
            stop_at = time.monotonic() + MIN_SECONDS
            for _ in range(MAX_WAVES):
                deadline = time.monotonic() + WAVE_DEADLINE
                done, failures = run_wave(proc.address, WAVE_CLIENTS, deadline)
                run_waves.append((done, failures))
                if failures or time.monotonic() >= stop_at:
                    break
        health = check_health(proc, baseline, "abort-mid-response", probes_during=prober.results)
        run = AbortRun(server=proc, health=health, waves=len(run_waves))
        for done, failures in run_waves:
            run.clients += WAVE_CLIENTS
            run.done += done
            run.failures += failures
        yield run


@pytest.mark.timeout(90)
def test_every_aborting_client_got_its_bytes_before_leaving(aborts):
    assert aborts.clients >= WAVE_CLIENTS
    assert aborts.done == aborts.clients, aborts.server.diag(
        f"{aborts.done}/{aborts.clients} clients reached their point in {aborts.waves} waves; "
        f"others: {aborts.failures[:8]}"
    )


@pytest.mark.timeout(90)
def test_probe_client_served_within_1s_throughout_the_aborts(aborts):
    during = aborts.health.probes_during
    bad = [(round(t, 3), s) for t, s in during if s != 200 or t >= ANSWER_WITHIN]
    assert len(during) >= 5, f"only {len(during)} probes ran while clients aborted"
    assert not bad, aborts.server.diag(f"{len(bad)}/{len(during)} probes slow or failed: {bad}")


@pytest.mark.timeout(90)
@pytest.mark.parametrize("aspect", HEALTH_ASPECTS)
def test_aborting_clients_leave_server_healthy(aborts, aspect):
    assert_healthy(aborts.health, aspect)


# --------------------------------------------------------------------------- walk-aways

WALK_AWAY_CLIENTS = 100
WALK_AWAY_THREADS = 10
WALK_AWAY_KINDS = 7
WALK_AWAYS_WITHIN = 30.0  # seconds for all of them


def walk_away(address, kind: int) -> None:
    """One of seven ways to walk away from the server. Errors caused by the server closing
    first are fine; the server's health is checked afterwards."""
    sock = socket.create_connection(address, timeout=5)
    try:
        if kind == 0:  # connect, close at once (FIN)
            pass
        elif kind == 1:  # connect, RST at once
            set_linger_rst(sock)
        elif kind == 2:  # half a request line, then RST
            sock.sendall(b"GET /stream?n=10 HT")
            set_linger_rst(sock)
        elif kind == 3:  # half a header block, then FIN
            sock.sendall(b"GET / HTTP/1.1\r\nHost: te")
        elif kind == 4:  # a long stream requested, FIN before reading any of it
            sock.sendall(get_request("/stream?n=2000&size=16384"))
        elif kind == 5:  # body promised 100000 bytes, 1000 sent, RST
            sock.sendall(post_request("/echo", b"x" * 100_000)[:1100])
            set_linger_rst(sock)
        elif kind == 6:  # a full request, RST before reading the answer
            sock.sendall(get_request("/"))
            set_linger_rst(sock)
    except OSError:
        pass
    finally:
        sock.close()


@pytest.fixture(scope="module")
def walk_aways(backend):
    with running_server(backend) as proc:
        # The whole log counts, start-up and warm-up included: no traceback anywhere.
        baseline = dataclasses.replace(Baseline.take(proc), stderr_lines=0)
        with ThreadPoolExecutor(max_workers=WALK_AWAY_THREADS) as pool:
            kinds = [i % WALK_AWAY_KINDS for i in range(WALK_AWAY_CLIENTS)]
            list(pool.map(lambda k: walk_away(proc.address, k), kinds, timeout=WALK_AWAYS_WITHIN))
        yield check_health(proc, baseline, "walk-aways")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("aspect", HEALTH_ASPECTS)
def test_clients_walking_away_at_seven_points_leave_server_healthy(walk_aways, aspect):
    assert_healthy(walk_aways, aspect)
