"""The server keeps serving when clients misbehave: resets mid-stream (the EPIPE story in
DESIGN.md), slow readers, aborted requests, the connection cap and the select() fd limit.
Black box, once per available backend; limits (fds, RSS, CPU, "answers within 1 s") are
the assertions, never throughput."""

from __future__ import annotations

import contextlib
import errno
import selectors
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pytest
from conftest import (
    BACKENDS,
    RawClient,
    ServerProcess,
    get_request,
    post_request,
    set_linger_rst,
)

ANSWER_WITHIN = 1.0  # seconds: a fresh GET / must be answered this fast, always
MiB = 1024 * 1024


# --------------------------------------------------------------------------- 1. the EPIPE story

STORM_CLIENTS = 200  # at once, in each wave
STORM_PATH = "/stream?n=5000&size=16384"
STORM_MIN_SECONDS = 2.0  # waves repeat this long, so the probes really run meanwhile
STORM_MAX_WAVES = 60


@dataclass
class StormOutcome:
    server: ServerProcess
    baseline_fds: int
    clients_done: int = 0
    clients_started: int = 0
    client_failures: list[str] = field(default_factory=list)
    during: list[tuple[float, int | str]] = field(default_factory=list)
    after: list[tuple[float, int | str]] = field(default_factory=list)
    fds_after: int = -1
    cpu_after: float = -1.0
    alive_after: bool = False


def run_reset_storm(address, clients: int, path: str, deadline: float) -> tuple[int, list[str]]:
    """`clients` non-blocking sockets, all at once: each requests `path`, reads a few KB,
    then closes with SO_LINGER 0 (RST) while the server is still streaming to it.
    One thread, one selector; returns (clients that did all that, failure descriptions)."""
    request = get_request(path)
    sel = selectors.DefaultSelector()
    failures: list[str] = []
    done = 0
    pending = 0
    try:
        for i in range(clients):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            set_linger_rst(sock)
            code = sock.connect_ex(address)
            if code not in (0, errno.EINPROGRESS):
                failures.append(f"client {i}: connect: {errno.errorcode.get(code, code)}")
                sock.close()
                continue
            # "a few KB": 2-14 KiB, varied so the resets land at different points.
            state = {"i": i, "phase": "connect", "got": 0, "want": 2048 + (i * 613) % 12288}
            sel.register(sock, selectors.EVENT_WRITE, state)
            pending += 1
        while pending and time.monotonic() < deadline:
            for key, _ in sel.select(0.2):
                sock, state = key.fileobj, key.data
                try:
                    if state["phase"] == "connect":
                        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                        if err:
                            raise OSError(err, errno.errorcode.get(err, str(err)))
                        sent = sock.send(request)
                        assert sent == len(request), "short send of a tiny request"
                        state["phase"] = "read"
                        sel.modify(sock, selectors.EVENT_READ, state)
                        continue
                    try:
                        data = sock.recv(65536)
                    except BlockingIOError:
                        continue
                    if not data:
                        raise OSError(f"EOF after {state['got']} bytes")
                    state["got"] += len(data)
                    if state["got"] < state["want"]:
                        continue
                    done += 1
                except OSError as exc:
                    failures.append(f"client {state['i']} ({state['phase']}): {exc}")
                sel.unregister(sock)
                sock.close()  # RST: SO_LINGER is on with 0 s
                pending -= 1
        for key in list(sel.get_map().values()):
            failures.append(f"client {key.data['i']}: still {key.data['phase']} at the deadline")
            key.fileobj.close()
    finally:
        sel.close()
    return done, failures


@pytest.fixture(scope="module")
def storm(backend):
    """Run the reset storm once per backend against a fresh server; record what happened."""
    proc = ServerProcess(backend).start()
    try:
        assert proc.get("/").status == 200  # warm up before measuring the baseline
        outcome = StormOutcome(server=proc, baseline_fds=proc.settled_fds())
        stop_at = time.monotonic() + STORM_MIN_SECONDS

        def waves():
            for _ in range(STORM_MAX_WAVES):
                done, failures = run_reset_storm(
                    proc.address, STORM_CLIENTS, STORM_PATH, time.monotonic() + 20
                )
                outcome.clients_started += STORM_CLIENTS
                outcome.clients_done += done
                outcome.client_failures += failures
                if failures or time.monotonic() >= stop_at:
                    break

        storm_thread = threading.Thread(target=waves, daemon=True)
        storm_thread.start()
        probe_deadline = time.monotonic() + 35
        while storm_thread.is_alive() and time.monotonic() < probe_deadline:
            outcome.during.append(proc.timed_get(timeout=5))
        storm_thread.join(25)
        if storm_thread.is_alive():
            outcome.client_failures.append("storm thread did not finish")
        for _ in range(10):
            outcome.after.append(proc.timed_get(timeout=5))
        outcome.alive_after = proc.alive()
        if outcome.alive_after:
            outcome.fds_after = proc.wait_fds_at_most(outcome.baseline_fds, timeout=5)
            outcome.cpu_after = proc.cpu_used_over(1.0)
        yield outcome
    finally:
        proc.stop()


def slow_or_failed(probes):
    return [(round(t, 3), s) for t, s in probes if s != 200 or t >= ANSWER_WITHIN]


@pytest.mark.timeout(90)
def test_reset_storm_clients_all_got_streamed_data(storm):
    assert storm.clients_started >= STORM_CLIENTS
    assert storm.clients_done == storm.clients_started, storm.server.diag(
        f"{storm.clients_done}/{storm.clients_started} clients got their few KB; "
        f"failures: {storm.client_failures[:10]}"
    )


@pytest.mark.timeout(90)
def test_reset_storm_root_answered_within_1s_during(storm):
    assert storm.during, "no probe ran while the clients were resetting"
    assert not slow_or_failed(storm.during), storm.server.diag(
        f"{len(slow_or_failed(storm.during))}/{len(storm.during)} probes during the storm slow "
        f"or failed: {slow_or_failed(storm.during)[:10]}"
    )


@pytest.mark.timeout(90)
def test_reset_storm_root_answered_within_1s_after(storm):
    assert len(storm.after) == 10
    assert not slow_or_failed(storm.after), storm.server.diag(
        f"probes after the storm slow or failed: {slow_or_failed(storm.after)}"
    )


@pytest.mark.timeout(90)
def test_reset_storm_fds_return_to_baseline(storm):
    assert storm.alive_after, storm.server.diag("server died during the storm")
    assert storm.fds_after <= storm.baseline_fds, storm.server.diag(
        f"server has {storm.fds_after} fds 5 s after the storm, baseline {storm.baseline_fds}"
    )


@pytest.mark.timeout(90)
def test_reset_storm_server_not_spinning_afterwards(storm):
    assert storm.alive_after, storm.server.diag("server died during the storm")
    assert storm.cpu_after < 0.2, storm.server.diag(
        f"server used {storm.cpu_after:.2f} s CPU in 1 s of idleness after the storm"
    )


@pytest.mark.timeout(90)
def test_reset_storm_logs_no_traceback(storm):
    assert "Traceback" not in storm.server.stderr_text(), storm.server.diag(
        "client resets must not produce tracebacks"
    )


# --------------------------------------------------------------------------- 2. slow reader

SLOW_PATH = "/stream?n=100000&size=16384"  # about 1.6 GB: never fits anywhere
SLOW_SECONDS = 3.0


@dataclass
class SlowReaderOutcome:
    server: ServerProcess
    rss_growth: int = 0
    probes: list[tuple[float, int | str]] = field(default_factory=list)
    cpu_used: float = 0.0
    head: bytes = b""
    read: int = 0
    error: str = ""


@pytest.fixture(scope="module")
def slow_reader(backend):
    proc = ServerProcess(backend).start()
    try:
        assert proc.get("/").status == 200
        assert proc.get("/stream?n=20&size=16384").status == 200  # warm the streaming path
        outcome = SlowReaderOutcome(server=proc)
        rss_base = proc.rss()
        rss_max = rss_base
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # A small receive window, so the server meets back-pressure quickly.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.settimeout(5)
        try:
            sock.connect(proc.address)
            sock.sendall(get_request(SLOW_PATH))
            outcome.head = sock.recv(4096)
            outcome.read = len(outcome.head)
            cpu_start = proc.cpu_seconds()
            end = time.monotonic() + SLOW_SECONDS
            while time.monotonic() < end:
                tick = time.monotonic()
                outcome.read += len(sock.recv(4096))
                outcome.probes.append(proc.timed_get(timeout=5))
                rss_max = max(rss_max, proc.rss())
                time.sleep(max(0.0, 0.1 - (time.monotonic() - tick)))  # pace the slow reader
            outcome.cpu_used = proc.cpu_seconds() - cpu_start
            rss_max = max(rss_max, proc.rss())
        except OSError as exc:
            outcome.error = repr(exc)
        finally:
            sock.close()
        outcome.rss_growth = rss_max - rss_base
        yield outcome
    finally:
        proc.stop()


@pytest.mark.timeout(60)
def test_slow_reader_gets_the_stream(slow_reader):
    assert not slow_reader.error, slow_reader.server.diag(slow_reader.error)
    assert slow_reader.head.startswith(b"HTTP/1.1 200"), slow_reader.server.diag(
        repr(slow_reader.head[:200])
    )
    assert slow_reader.read > 20_000


@pytest.mark.timeout(60)
def test_slow_reader_keeps_server_memory_bounded(slow_reader):
    assert not slow_reader.error, slow_reader.server.diag(slow_reader.error)
    assert slow_reader.rss_growth < 32 * MiB, slow_reader.server.diag(
        f"RSS grew by {slow_reader.rss_growth / MiB:.1f} MiB while a client read slowly"
    )


@pytest.mark.timeout(60)
def test_slow_reader_does_not_delay_others(slow_reader):
    assert len(slow_reader.probes) >= 10, slow_reader.server.diag(
        f"only {len(slow_reader.probes)} probes ran"
    )
    assert not slow_or_failed(slow_reader.probes), slow_reader.server.diag(
        f"probes slow or failed beside the slow reader: {slow_or_failed(slow_reader.probes)}"
    )


@pytest.mark.timeout(60)
def test_slow_reader_does_not_make_server_spin(slow_reader):
    assert not slow_reader.error, slow_reader.server.diag(slow_reader.error)
    # The probes cost a little CPU; a loop polling the blocked socket costs all of it.
    assert slow_reader.cpu_used < 0.5 * SLOW_SECONDS, slow_reader.server.diag(
        f"server used {slow_reader.cpu_used:.2f} s CPU in {SLOW_SECONDS} s beside a slow reader"
    )


# --------------------------------------------------------------------------- 3. --max-connections


@pytest.mark.timeout(60)
def test_max_connections_queues_extra_clients_and_loses_none(backend, server_factory):
    proc = server_factory(backend, "--max-connections", "5", "--keepalive-timeout", "30")
    held: list[RawClient] = []
    waiting: list[RawClient] = []
    try:
        for i in range(5):
            client = proc.connect(timeout=5)
            held.append(client)
            client.send(post_request("/echo", f"held {i}".encode()))
            response = client.read_final_response()
            assert (response.status, response.body) == (200, f"held {i}".encode()), proc.diag()
            # A response in progress (a huge stream the client does not read): busy,
            # so not reclaimable as an idle connection.
            client.send(b"GET /stream?n=100000&size=65536 HTTP/1.1\r\nHost: held\r\n\r\n")
            assert client.received_within(5.0).startswith(b"HTTP/1.1 200"), proc.diag()

        sixth = proc.connect(timeout=5)  # completes in the kernel's listen backlog
        waiting.append(sixth)
        sixth.send(post_request("/echo", b"waiting 0"))
        early = sixth.received_within(0.5)
        assert early == b"", proc.diag(
            f"6th client answered while 5 connections were held (cap 5): {early[:200]!r}"
        )
        for i in range(1, 5):
            client = proc.connect(timeout=5)
            waiting.append(client)
            client.send(post_request("/echo", f"waiting {i}".encode()))

        for client in held:
            client.close()
        held.clear()

        answers = []
        for client in waiting:
            client.timeout = 5.0
            client.sock.settimeout(5.0)
            response = client.read_final_response()
            answers.append((response.status, response.body))
        assert answers == [(200, f"waiting {i}".encode()) for i in range(5)], proc.diag()
    finally:
        for client in held + waiting:
            client.close()
    assert proc.get("/").status == 200, proc.diag("server stopped answering")


@pytest.mark.timeout(60)
def test_at_the_cap_the_longest_idle_connection_makes_room(backend, server_factory):
    proc = server_factory(backend, "--max-connections", "5", "--keepalive-timeout", "30")
    held: list[RawClient] = []
    try:
        for _ in range(5):  # accepted but silent: idle, reclaimable
            held.append(proc.connect(timeout=5))
        newcomer = proc.connect(timeout=5)
        held.append(newcomer)
        newcomer.send(post_request("/echo", b"let me in"))
        newcomer.sock.settimeout(1.0)
        response = newcomer.read_final_response()
        assert (response.status, response.body) == (200, b"let me in"), proc.diag()
        how, extra = held[0].wait_closed(timeout=2.0)
        assert (how, extra) == ("eof", b""), proc.diag("the oldest idle connection was not closed")
    finally:
        for client in held:
            client.close()


# --------------------------------------------------------------------------- 4. select's FD_SETSIZE


SELECT_CONNECTIONS = 1150


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


@pytest.mark.timeout(180)
@pytest.mark.skipif("select" not in BACKENDS, reason="select backend not available")
def test_select_backend_refuses_fds_beyond_fd_setsize_cleanly(server_factory, many_fds):
    assert many_fds > SELECT_CONNECTIONS + 100, f"RLIMIT_NOFILE too low here: {many_fds}"
    proc = server_factory(
        "select", "--max-connections", "5000", "--keepalive-timeout", "120", "--log-level", "info"
    )
    assert proc.get("/").status == 200
    baseline = proc.settled_fds()
    log_lines_before = len(proc.stderr_text().splitlines())
    clients: list[socket.socket] = []
    try:
        connect_deadline = time.monotonic() + 60
        for i in range(SELECT_CONNECTIONS):
            assert time.monotonic() < connect_deadline, f"only {i} connects in 60 s"
            sock = socket.create_connection(proc.address, timeout=5)
            clients.append(sock)
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                sock.sendall(get_request("/"))  # a refused one may be closed already
        outcomes = classify_held_connections(clients, time.monotonic() + 30)
        served = [i for i, o in enumerate(outcomes) if o == "served"]
        refused = [i for i, o in enumerate(outcomes) if o == "refused"]
        other = [(i, o) for i, o in enumerate(outcomes) if o not in ("served", "refused")]
        assert not other, proc.diag(
            f"{len(other)} connections neither served nor refused: {other[:5]}"
        )
        assert proc.alive(), proc.diag("server died when its fds passed FD_SETSIZE")
        new_log_lines = len(proc.stderr_text().splitlines()) - log_lines_before
        assert new_log_lines <= 3, proc.diag(
            f"{new_log_lines} log lines for {len(refused)} refusals: the limit is logged once"
        )
        # Fds below 1024 are usable: only the last ~(base fds + connections - 1024) go away.
        assert len(served) >= 1024 - 64, proc.diag(
            f"only {len(served)} of {SELECT_CONNECTIONS} served, {len(refused)} refused"
        )
        assert refused, proc.diag(
            f"all {SELECT_CONNECTIONS} served: the server's fds never passed 1024? "
            f"(server fds now {proc.num_fds()})"
        )
        # The loop still works for the connections it holds.
        again = RawClient(clients[served[0]])
        again.send(get_request("/"))
        assert again.read_final_response().status == 200, proc.diag("held connection unusable")
    finally:
        for sock in clients:
            sock.close()
    assert proc.wait_fds_at_most(baseline, timeout=10) <= baseline, proc.diag(
        f"fds {proc.num_fds()} > baseline {baseline} after closing all clients"
    )
    assert proc.get("/").status == 200, proc.diag("server stopped answering")
    assert proc.alive()


# --------------------------------------------------------------------------- 5. aborting clients


def abort_client(address, kind: int) -> None:
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


@pytest.mark.timeout(60)
def test_aborting_clients_leave_server_healthy(backend, server_factory):
    proc = server_factory(backend)
    assert proc.get("/").status == 200
    baseline = proc.settled_fds()
    with ThreadPoolExecutor(max_workers=10) as pool:
        list(pool.map(lambda k: abort_client(proc.address, k % 7), range(100), timeout=30))
    latency, status = proc.timed_get()
    assert status == 200 and latency < ANSWER_WITHIN, proc.diag(
        f"GET / after 100 aborting clients: {status} in {latency:.2f} s"
    )
    assert proc.alive(), proc.diag("server died")
    fds = proc.wait_fds_at_most(baseline, timeout=5)
    assert fds <= baseline, proc.diag(f"fds {fds} > baseline {baseline} 5 s after the aborts")
    assert "Traceback" not in proc.stderr_text(), proc.diag("aborting clients caused a traceback")
