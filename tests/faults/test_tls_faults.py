"""8. Hostile clients of a TLS listener, once per backend, while a probe client keeps being
served on fresh TLS connections within 1 s: half a ClientHello then RST, a hundred at a
time; clients that finish the handshake, ask for a long stream or a large static file and
RST in the middle of the answer; silent connections and a slowloris dribbling its
ClientHello, both cut off by --handshake-timeout; random bytes instead of a ClientHello;
plain HTTP sent to the TLS port. After each, the server's fds are back to their baseline,
its CPU idles, and --stats-path (read over a plain listener beside the TLS one) counts the
connections under the right close reason.

One server per backend serves every scenario (demo app, a large file under --static,
--handshake-timeout 1); each scenario takes its own baseline and its own health figures.
"""

from __future__ import annotations

import contextlib
import random
import selectors
import socket
import ssl
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pytest
from helpers import get_request, raise_nofile_limit, set_linger_rst
from tls_certs import TLSServer, close_reasons, make_certs

from faults.helpers import (
    ANSWER_WITHIN,
    HEALTH_ASPECTS,
    Baseline,
    Health,
    Prober,
    assert_healthy,
    check_health,
)

HANDSHAKE_TIMEOUT = 1.0
CUT_WITHIN = (0.5, 3.0)  # seconds after connect a stalled handshake must be closed
PROMPTLY = 0.9  # seconds: well under the handshake timeout
BIG_FILE = 5 * 1024 * 1024
PLAIN_TO_TLS = b"The plain HTTP request was sent to HTTPS port"

MIN_SECONDS = 1.0  # short scenarios repeat in waves at least this long: the probe runs
MAX_WAVES = 10
WAVE_PAUSE = 0.1  # seconds between waves (pacing only)
HALF_HELLO_CLIENTS = 100
MID_RESPONSE_CLIENTS = 40
MID_RESPONSE_THREADS = 8
SILENT_CLIENTS = 50
LORIS_CLIENTS = 5
LORIS_EVERY = 0.2
GARBAGE_CLIENTS = 50
PLAIN_CLIENTS = 20
OBSERVE_FOR = 6.0  # bound on watching connections for their close


def client_hello() -> bytes:
    """The first flight of a real TLS client: what `ssl` writes to start a handshake."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    hello = outgoing.read()
    assert hello[:1] == b"\x16" and len(hello) > 100, hello[:20]  # a handshake record
    return hello


def garbage(seed: int, size: int = 512) -> bytes:
    """Random bytes whose first is no TLS record type (0x14-0x18), no SSLv2 length (high
    bit) and no letter (an HTTP method): nothing a server could wait on for more."""
    data = bytearray(random.Random(seed).randbytes(size))
    data[0] %= 0x14
    return bytes(data)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certs(tmp_path_factory.mktemp("tls-fault-certs"))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("tls-fault-files")
    (root / "big.bin").write_bytes(random.Random(7).randbytes(BIG_FILE))
    return root


@pytest.fixture(scope="module")
def tls_server(backend, certs, files):
    raise_nofile_limit()
    proc = TLSServer(
        backend, certs, "--handshake-timeout", str(HANDSHAKE_TIMEOUT), "--stats-path", "/_stats",
        "--static", f"/files={files}",
    )  # fmt: skip
    try:
        yield proc.start()
    finally:
        proc.stop()


@dataclass
class Run:
    server: TLSServer
    health: Health | None = None
    reasons: dict[str, int] = field(default_factory=dict)  # close reasons counted meanwhile
    problems: list[str] = field(default_factory=list)  # clients that did not go as planned
    cut_after: list[float] = field(default_factory=list)  # seconds to the server's close
    clients: int = 0
    waves: int = 0


def run_scenario(
    proc: TLSServer, name: str, wave, min_seconds: float = 0.0, max_waves: int = 1
) -> Run:
    """Baseline; waves of the scenario (`wave(proc, run)`) with the prober running, until
    `min_seconds` have passed (so that the probe runs meanwhile), `max_waves` ran or one
    went wrong; health; and the close reasons the server counted in between (read once
    the fds are back, so every connection of the scenario is closed by then)."""
    baseline = Baseline.take(proc, "/files/big.bin")
    before = close_reasons(proc.stats())
    run = Run(server=proc)
    with Prober(proc, interval=0.05) as prober:
        stop_at = time.monotonic() + min_seconds
        for _ in range(max_waves):
            try:
                wave(proc, run)
            except (OSError, AssertionError) as exc:
                run.problems.append(f"wave {run.waves} stopped: {exc!r}")
            run.waves += 1
            if run.problems or time.monotonic() >= stop_at:
                break
            time.sleep(WAVE_PAUSE)
    run.health = check_health(proc, baseline, name, probes_during=prober.results)
    after = close_reasons(proc.stats())
    run.reasons = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    run.reasons = {k: n for k, n in run.reasons.items() if n}
    return run


def assert_probes_during(run: Run, at_least: int = 3) -> None:
    during = run.health.probes_during
    bad = [(round(t, 3), s) for t, s in during if s != 200 or t >= ANSWER_WITHIN]
    assert len(during) >= at_least, f"only {len(during)} probes ran during the scenario"
    assert not bad, run.server.diag(f"{len(bad)}/{len(during)} TLS probes slow or failed: {bad}")


def tls_connect_raw(proc: TLSServer) -> socket.socket:
    return socket.create_connection(proc.tls_address, timeout=5)


# --------------------------------------------------------------------------- watching closes


def watch_closes(socks: dict[socket.socket, float], deadline: float, run: Run, what: str,
                 pace=None) -> None:  # fmt: skip
    """Wait until the server has closed every socket (EOF or RST on read), noting the
    seconds from each one's start time; `pace(now)`, if given, runs between waits (and
    returns the seconds until it wants to run again). Whatever is still open at the
    deadline is a problem."""
    sel = selectors.DefaultSelector()
    try:
        for sock, _ in socks.items():
            sock.setblocking(False)
            sel.register(sock, selectors.EVENT_READ)
        while sel.get_map() and time.monotonic() < deadline:
            wait = pace(time.monotonic()) if pace else 0.2
            for key, _ in sel.select(max(0.0, min(wait, deadline - time.monotonic()))):
                sock = key.fileobj
                try:
                    data = sock.recv(65536)
                except (ConnectionResetError, BrokenPipeError):
                    data = b""
                except BlockingIOError:
                    continue
                if data:
                    continue  # (an alert or an answer first; the close follows)
                run.cut_after.append(time.monotonic() - socks[sock])
                sel.unregister(sock)
        for key in list(sel.get_map().values()):
            run.problems.append(f"{what}: still open {OBSERVE_FOR} s after it started")
            sel.unregister(key.fileobj)
    finally:
        sel.close()


def close_all(socks) -> None:
    for sock in socks:
        with contextlib.suppress(OSError):
            sock.close()


# =========================================================================== 1. half hello, RST


def half_hello_wave(proc: TLSServer, run: Run) -> None:
    """HALF_HELLO_CLIENTS connections at once, each sends half a ClientHello, then all RST."""
    half = client_hello()
    half = half[: len(half) // 2]
    socks = []
    try:
        for _ in range(HALF_HELLO_CLIENTS):
            sock = tls_connect_raw(proc)
            socks.append(sock)
            sock.sendall(half)
            run.clients += 1
    finally:
        for sock in socks:
            set_linger_rst(sock)
        close_all(socks)


@pytest.fixture(scope="module")
def half_hellos(tls_server):
    return run_scenario(tls_server, "tls-half-hello-rst", half_hello_wave, MIN_SECONDS, MAX_WAVES)


def test_half_hello_clients_all_sent_their_bytes(half_hellos):
    assert not half_hellos.problems, half_hellos.server.diag(str(half_hellos.problems[:5]))
    assert half_hellos.clients >= HALF_HELLO_CLIENTS


def test_half_hello_resets_are_closed_at_once_not_at_the_handshake_deadline(half_hellos):
    assert half_hellos.reasons.get("tls-handshake-timeout", 0) == 0, half_hellos.server.diag(
        f"close reasons: {half_hellos.reasons}"
    )


def test_tls_probe_served_within_1s_during_half_hellos(half_hellos):
    assert_probes_during(half_hellos)


@pytest.mark.parametrize("aspect", HEALTH_ASPECTS)
def test_half_hello_resets_leave_server_healthy(half_hellos, aspect):
    assert_healthy(half_hellos.health, aspect)


# =========================================================================== 2. RST mid-response

MID_PATHS = ("/stream?n=2000&size=16384", "/files/big.bin")
READ_BEFORE_LEAVING = 20_000  # bytes of the answer (head included) read before the RST


def leave_mid_response(proc: TLSServer, i: int) -> str:
    """Handshake, ask for a long answer, read a little of it, RST. '' or the problem."""
    path = MID_PATHS[i % len(MID_PATHS)]
    try:
        sock = proc.tls_socket()
    except OSError as exc:
        return f"client {i}: handshake: {exc!r}"
    try:
        sock.sendall(get_request(path))
        got = bytearray()
        while len(got) < READ_BEFORE_LEAVING:
            data = sock.recv(65536)
            if not data:
                return f"client {i} {path}: EOF after {len(got)} bytes: {bytes(got[:80])!r}"
            got += data
        if not got.startswith(b"HTTP/1.1 200 "):
            return f"client {i} {path}: bad head {bytes(got[:80])!r}"
        return ""
    except OSError as exc:
        return f"client {i} {path}: {exc!r}"
    finally:
        with contextlib.suppress(OSError):
            set_linger_rst(sock)
        sock.close()


def mid_response_wave(proc: TLSServer, run: Run) -> None:
    with ThreadPoolExecutor(max_workers=MID_RESPONSE_THREADS) as pool:
        outcomes = list(
            pool.map(lambda i: leave_mid_response(proc, i), range(MID_RESPONSE_CLIENTS), timeout=30)
        )
    run.clients += len(outcomes)
    run.problems += [o for o in outcomes if o]


@pytest.fixture(scope="module")
def mid_response(tls_server):
    return run_scenario(
        tls_server, "tls-rst-mid-response", mid_response_wave, MIN_SECONDS, MAX_WAVES
    )


def test_mid_response_clients_got_their_answers_started(mid_response):
    assert mid_response.clients >= MID_RESPONSE_CLIENTS
    assert not mid_response.problems, mid_response.server.diag(str(mid_response.problems[:5]))


def test_tls_probe_served_within_1s_during_mid_response_resets(mid_response):
    assert_probes_during(mid_response)


@pytest.mark.parametrize("aspect", HEALTH_ASPECTS)
def test_mid_response_resets_leave_server_healthy(mid_response, aspect):
    assert_healthy(mid_response.health, aspect)


# =========================================================================== 3. silent clients


def silent_wave(proc: TLSServer, run: Run) -> None:
    socks: dict[socket.socket, float] = {}
    try:
        for _ in range(SILENT_CLIENTS):
            sock = tls_connect_raw(proc)
            socks[sock] = time.monotonic()
        run.clients = len(socks)
        start = min(socks.values())
        watch_closes(socks, start + OBSERVE_FOR, run, "silent client")
    finally:
        close_all(socks)


@pytest.fixture(scope="module")
def silent(tls_server):
    return run_scenario(tls_server, "tls-silent", silent_wave)


def test_silent_clients_are_closed_at_the_handshake_deadline(silent):
    assert silent.clients == SILENT_CLIENTS and not silent.problems, silent.server.diag(
        f"{silent.problems[:5]}"
    )
    early = [round(t, 2) for t in silent.cut_after if t < CUT_WITHIN[0]]
    late = [round(t, 2) for t in silent.cut_after if t > CUT_WITHIN[1]]
    assert len(silent.cut_after) == SILENT_CLIENTS
    assert not early and not late, silent.server.diag(
        f"--handshake-timeout {HANDSHAKE_TIMEOUT}: closed too early {early}, too late {late}"
    )


def test_silent_clients_are_counted_as_handshake_timeouts(silent):
    assert silent.reasons.get("tls-handshake-timeout") == SILENT_CLIENTS, silent.server.diag(
        f"close reasons: {silent.reasons}"
    )


def test_tls_probe_served_within_1s_beside_silent_clients(silent):
    assert_probes_during(silent)


@pytest.mark.parametrize("aspect", HEALTH_ASPECTS)
def test_silent_clients_leave_server_healthy(silent, aspect):
    assert_healthy(silent.health, aspect)


# =========================================================================== 4. slowloris


def loris_wave(proc: TLSServer, run: Run) -> None:
    hello = client_hello()
    socks: dict[socket.socket, float] = {}
    sent: dict[socket.socket, int] = {}
    try:
        for _ in range(LORIS_CLIENTS):
            sock = tls_connect_raw(proc)
            sock.sendall(hello[:1])
            socks[sock] = time.monotonic()
            sent[sock] = 1
        run.clients = len(socks)
        next_at = time.monotonic() + LORIS_EVERY

        def dribble(now: float) -> float:
            nonlocal next_at
            if now >= next_at:
                next_at = now + LORIS_EVERY
                for sock, n in sent.items():
                    if n < len(hello):
                        try:
                            sock.send(hello[n : n + 1])
                            sent[sock] = n + 1
                        except OSError:
                            sent[sock] = len(hello)  # closed: its reader notes when
            return max(0.0, next_at - time.monotonic())

        watch_closes(socks, min(socks.values()) + OBSERVE_FOR, run, "slowloris", pace=dribble)
    finally:
        close_all(socks)


@pytest.fixture(scope="module")
def loris(tls_server):
    return run_scenario(tls_server, "tls-slowloris-hello", loris_wave)


def test_slowloris_handshake_is_cut_at_the_deadline(loris):
    assert loris.clients == LORIS_CLIENTS and not loris.problems, loris.server.diag(
        f"{loris.problems[:5]}"
    )
    assert len(loris.cut_after) == LORIS_CLIENTS
    cut = [round(t, 2) for t in loris.cut_after]
    assert all(CUT_WITHIN[0] <= t <= CUT_WITHIN[1] for t in cut), loris.server.diag(
        f"--handshake-timeout {HANDSHAKE_TIMEOUT}, one byte every {LORIS_EVERY} s: cut after {cut}"
    )


def test_slowloris_is_counted_as_a_handshake_timeout(loris):
    assert loris.reasons.get("tls-handshake-timeout") == LORIS_CLIENTS, loris.server.diag(
        f"close reasons: {loris.reasons}"
    )


def test_tls_probe_served_within_1s_beside_the_slowloris(loris):
    assert_probes_during(loris)


@pytest.mark.parametrize("aspect", HEALTH_ASPECTS)
def test_slowloris_leaves_server_healthy(loris, aspect):
    assert_healthy(loris.health, aspect)


# =========================================================================== 5. garbage


def garbage_wave(proc: TLSServer, run: Run) -> None:
    socks: dict[socket.socket, float] = {}
    try:
        for i in range(GARBAGE_CLIENTS):
            sock = tls_connect_raw(proc)
            with contextlib.suppress(ConnectionResetError, BrokenPipeError):
                sock.sendall(garbage(seed=run.clients + i))
            socks[sock] = time.monotonic()
        run.clients += len(socks)
        watch_closes(socks, min(socks.values()) + OBSERVE_FOR, run, "garbage client")
    finally:
        close_all(socks)


@pytest.fixture(scope="module")
def garbage_run(tls_server):
    return run_scenario(tls_server, "tls-garbage-hello", garbage_wave, MIN_SECONDS, MAX_WAVES)


def test_garbage_instead_of_a_hello_is_closed_promptly(garbage_run):
    run = garbage_run
    assert run.clients >= GARBAGE_CLIENTS and not run.problems, run.server.diag(
        f"{run.problems[:5]}"
    )
    slow = [round(t, 2) for t in run.cut_after if t > PROMPTLY]
    assert len(run.cut_after) == run.clients
    assert not slow, run.server.diag(f"garbage closed after {slow} s (deadline is 1 s)")


def test_garbage_is_counted_as_a_failed_handshake(garbage_run):
    assert garbage_run.reasons.get("tls-handshake-failed") == garbage_run.clients, (
        garbage_run.server.diag(f"close reasons: {garbage_run.reasons}")
    )


@pytest.mark.parametrize("aspect", HEALTH_ASPECTS)
def test_garbage_leaves_server_healthy(garbage_run, aspect):
    assert_healthy(garbage_run.health, aspect)


# =========================================================================== 6. plain HTTP


def plain_http_wave(proc: TLSServer, run: Run) -> None:
    socks: dict[socket.socket, float] = {}
    answers: dict[socket.socket, bytearray] = {}
    try:
        for _ in range(PLAIN_CLIENTS):
            sock = tls_connect_raw(proc)
            sock.sendall(get_request("/"))
            socks[sock] = time.monotonic()
            answers[sock] = bytearray()
        run.clients += len(socks)
        # Read every answer to its close (watch_closes only wants the close).
        deadline = min(socks.values()) + OBSERVE_FOR
        for sock, started in socks.items():
            sock.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                while True:
                    data = sock.recv(65536)
                    if not data:
                        break
                    answers[sock] += data
            except ConnectionResetError:
                pass
            except TimeoutError:
                run.problems.append(f"still open after {OBSERVE_FOR} s: {bytes(answers[sock])!r}")
                continue
            run.cut_after.append(time.monotonic() - started)
        for answer in answers.values():
            head, _, body = bytes(answer).partition(b"\r\n\r\n")
            status_line = head.split(b"\r\n", 1)[0]
            if status_line != b"HTTP/1.1 400 Bad Request" or PLAIN_TO_TLS not in body:
                run.problems.append(f"answer {bytes(answer[:300])!r}")
    finally:
        close_all(socks)


@pytest.fixture(scope="module")
def plain_http(tls_server):
    return run_scenario(tls_server, "tls-plain-http", plain_http_wave, MIN_SECONDS, MAX_WAVES)


def test_plain_http_to_the_tls_port_gets_400_and_a_prompt_close(plain_http):
    run = plain_http
    assert run.clients >= PLAIN_CLIENTS and not run.problems, run.server.diag(f"{run.problems[:5]}")
    slow = [round(t, 2) for t in run.cut_after if t > PROMPTLY]
    assert len(run.cut_after) == run.clients and not slow, run.server.diag(f"slow: {slow}")


def test_plain_http_is_counted_as_tls_plain_http(plain_http):
    assert plain_http.reasons.get("tls-plain-http") == plain_http.clients, plain_http.server.diag(
        f"close reasons: {plain_http.reasons}"
    )


@pytest.mark.parametrize("aspect", HEALTH_ASPECTS)
def test_plain_http_to_the_tls_port_leaves_server_healthy(plain_http, aspect):
    assert_healthy(plain_http.health, aspect)


# =========================================================================== all scenarios

SCENARIOS = ("half_hellos", "mid_response", "silent", "loris", "garbage_run", "plain_http")


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_no_hostile_client_is_counted_as_an_internal_error(backend, scenario, request):
    """`internal-error` is the server's own code failing; a client's misbehaviour (a reset
    before the handshake included) must be counted under a reason of its own."""
    run = request.getfixturevalue(scenario)
    assert run.reasons.get("internal-error", 0) == 0, run.server.diag(
        f"{scenario}: close reasons {run.reasons} for {run.clients} clients in {run.waves} waves"
    )


# --------------------------------------------------------------------------- self-checks


def test_the_captured_client_hello_is_a_tls_handshake_record():
    hello = client_hello()
    assert hello[0] == 0x16 and hello[1] == 0x03  # handshake, TLS 1.x record
    assert hello[5] == 0x01  # ClientHello
    assert int.from_bytes(hello[3:5], "big") == len(hello) - 5


def test_garbage_cannot_be_mistaken_for_tls_or_http():
    for seed in range(GARBAGE_CLIENTS):
        assert garbage(seed)[0] < 0x14  # not a record type, not SSLv2, not ASCII text
