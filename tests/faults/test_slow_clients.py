"""3a. Slow clients: many slow or stalled readers of huge streamed bodies (the server's
memory stays bounded and others are served), and clients that trickle or stall while the
server waits on them -- slowloris heads, a silent connection, a stalled body, a reader
that stopped reading -- which the header, body and write timeouts cut off within a few
seconds while everyone else is served. While the readers hang on, the server must not
spin on their blocked sockets."""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
import time
from dataclasses import dataclass, field

import pytest
from helpers import ServerProcess, get_request

from faults.helpers import (
    ANSWER_WITHIN,
    HEALTH_ASPECTS,
    Baseline,
    Health,
    MiB,
    Prober,
    assert_healthy,
    check_health,
    running_server,
)

# --------------------------------------------------------------------------- slow readers

SLOW_READERS = 16  # half read 4 KiB every 0.1 s, half read nothing after the head
SLOW_PATH = "/stream?n=100000&size=65536"  # 6.5 GB: never fits anywhere
SLOW_SECONDS = 2.5
SLOW_RSS_BOUND = 32 * MiB


@dataclass
class SlowReadersRun:
    server: ServerProcess
    health: Health
    heads: list[bytes] = field(default_factory=list)
    read: list[int] = field(default_factory=list)  # bytes each slow (not stalled) reader got
    cpu_used: float = -1.0  # server CPU seconds while the slow readers read
    error: str = ""


@pytest.fixture(scope="module")
def slow_readers(backend):
    with running_server(backend) as proc:
        baseline = Baseline.take(proc)
        run = SlowReadersRun(server=proc, health=None)  # type: ignore[arg-type]
        rss_peak = proc.rss()
        socks: list[socket.socket] = []
        try:
            with Prober(proc, interval=0.05) as prober:
                for _ in range(SLOW_READERS):
                    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                    socks.append(sock)
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
                    sock.settimeout(5)
                    sock.connect(proc.address)
                    sock.sendall(get_request(SLOW_PATH))
                for sock in socks:
                    run.heads.append(sock.recv(4096))
                slow = socks[: SLOW_READERS // 2]
                run.read = [0] * len(slow)
                cpu_start = proc.cpu_seconds()
                end = time.monotonic() + SLOW_SECONDS
                while time.monotonic() < end:
                    tick = time.monotonic()
                    for i, sock in enumerate(slow):
                        run.read[i] += len(sock.recv(4096))
                    rss_peak = max(rss_peak, proc.rss())
                    time.sleep(max(0.0, 0.1 - (time.monotonic() - tick)))  # the slow pace
                run.cpu_used = proc.cpu_seconds() - cpu_start
                rss_peak = max(rss_peak, proc.rss())
        except OSError as exc:
            run.error = repr(exc)
        finally:
            for sock in socks:
                sock.close()  # unread data pending: the kernel sends RST
        run.health = check_health(
            proc,
            baseline,
            "slow-readers",
            probes_during=prober.results,
            rss_peak=rss_peak,
            rss_bound=SLOW_RSS_BOUND,
            extra={"cpu_during_s": round(run.cpu_used, 4)},
        )
        yield run


@pytest.mark.timeout(90)
def test_slow_readers_keep_receiving_their_streams(slow_readers):
    assert not slow_readers.error, slow_readers.server.diag(slow_readers.error)
    bad_heads = [h[:60] for h in slow_readers.heads if not h.startswith(b"HTTP/1.1 200 ")]
    assert len(slow_readers.heads) == SLOW_READERS and not bad_heads, bad_heads
    # 2.5 s at 4 KiB a tenth of a second is ~100 KiB; a reader starved of data gets little.
    assert min(slow_readers.read) > 60_000, slow_readers.server.diag(
        f"bytes per slow reader in {SLOW_SECONDS} s: {slow_readers.read}"
    )


@pytest.mark.timeout(90)
def test_others_are_served_within_1s_beside_the_slow_readers(slow_readers):
    during = slow_readers.health.probes_during
    bad = [(round(t, 3), s) for t, s in during if s != 200 or t >= ANSWER_WITHIN]
    assert len(during) >= 10, f"only {len(during)} probes ran beside the slow readers"
    assert not bad, slow_readers.server.diag(f"probes beside the slow readers: {bad}")


@pytest.mark.timeout(90)
def test_slow_and_stalled_readers_do_not_make_the_server_spin(slow_readers):
    assert not slow_readers.error, slow_readers.server.diag(slow_readers.error)
    # The probes cost a little CPU; a loop polling the blocked sockets costs all of it.
    assert slow_readers.cpu_used < 0.5 * SLOW_SECONDS, slow_readers.server.diag(
        f"server used {slow_readers.cpu_used:.2f} s CPU in {SLOW_SECONDS} s beside "
        f"{SLOW_READERS} slow and stalled readers"
    )


@pytest.mark.timeout(90)
@pytest.mark.parametrize("aspect", HEALTH_ASPECTS)
def test_slow_and_stalled_readers_leave_server_healthy(slow_readers, aspect):
    # "rss" here is the bound on memory while the readers hang on (the peak counts).
    assert_healthy(slow_readers.health, aspect)


# --------------------------------------------------------------------------- timeouts

TIMEOUT_FLAGS = ("--header-timeout", "1", "--body-timeout", "1", "--write-timeout", "1")
CUT_WITHIN = (0.5, 3.0)  # seconds from the start of the stall: not before, not after
TRICKLE_EVERY = 0.15  # seconds between trickled pieces
PER_KIND = 4
OBSERVE_FOR = 6.0  # the whole observation is bounded by this
HEAD_KINDS = ("line-bytes", "header-lines", "keepalive-then-bytes")
KINDS = (*HEAD_KINDS, "silent", "stalled-body", "stalled-reader")


@dataclass
class Loris:
    kind: str
    sock: socket.socket
    pieces: list[bytes]  # sent one every TRICKLE_EVERY
    port: int = 0
    start: float = 0.0  # when the stall began (first trickled byte, connect, last byte)
    next_send: float = 0.0
    received: bytearray = field(default_factory=bytearray)
    ended_at: float | None = None
    end: str = "open"

    @property
    def cut_after(self) -> float | None:
        return None if self.ended_at is None else self.ended_at - self.start


def loris_pieces(kind: str) -> list[bytes]:
    if kind in ("line-bytes", "keepalive-then-bytes"):
        head = b"GET / HTTP/1.1\r\nHost: test\r\nX-Slow: " + b"a" * 200
        return [head[i : i + 1] for i in range(len(head))]
    if kind == "header-lines":
        return [b"GET / HTTP/1.1\r\nHost: test\r\n"] + [
            b"X-Loris-%d: still here\r\n" % i for i in range(300)
        ]
    return []


def start_loris(proc: ServerProcess, kind: str) -> Loris:
    sock = socket.create_connection(proc.address, timeout=5)
    loris = Loris(kind=kind, sock=sock, pieces=loris_pieces(kind), port=sock.getsockname()[1])
    now = time.monotonic()
    if kind == "keepalive-then-bytes":
        # One request answered in full first; the trickle is the second head.
        sock.sendall(get_request("/"))
        answer = b""
        while not answer.endswith(b"Hello from selserve!\n"):
            piece = sock.recv(4096)
            assert piece, f"keep-alive loris: EOF after {answer!r}"
            answer += piece
        now = time.monotonic()
    elif kind == "stalled-body":
        sock.sendall(
            b"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 1000\r\n\r\n" + b"b" * 10
        )
        now = time.monotonic()
    elif kind == "stalled-reader":
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
        sock.sendall(get_request("/stream?n=100000&size=65536"))
        now = time.monotonic()
    if kind in HEAD_KINDS:
        # The first trickled byte goes now, so the stall is timed from it whatever the
        # setup of the other connections costs.
        sock.sendall(loris.pieces.pop(0))
        now = time.monotonic()
    loris.start = now
    loris.next_send = now + TRICKLE_EVERY
    sock.setblocking(False)
    return loris


TCP_TABLE = "/proc/net/tcp"
TCP_ESTABLISHED = "01"


def server_side_states(server_port: int, client_ports: set[int]) -> dict[int, str]:
    """The TCP state (hex, as in /proc/net/tcp) of the server's end of each connection
    from these client ports; a port whose server end is gone is missing. One read of the
    table and a scan in C: psutil parses it line by line in Python, which takes most of a
    second once earlier tests have left tens of thousands of TIME_WAIT entries."""
    with open(TCP_TABLE, "rb") as table:
        text = table.read()
    states = {}
    for port in client_ports:
        # sl local_address rem_address st: the server's end is local SERVER, remote CLIENT.
        needle = b" 0100007F:%04X 0100007F:%04X " % (server_port, port)
        at = text.find(needle)
        if at >= 0:
            states[port] = text[at + len(needle) : at + len(needle) + 2].decode()
    return states


class CloseWatcher:
    """Notes when the server closes its end of connections we never read from (a stalled
    reader's client sees no FIN while its window is full): the server's end leaves
    ESTABLISHED (FIN_WAIT1 with unsent data, or gone). Polls in a thread, bounded."""

    def __init__(self, server_port: int, client_ports: set[int], max_seconds: float) -> None:
        self.server_port = server_port
        self.waiting = set(client_ports)
        self.closed_at: dict[int, float] = {}
        self.max_seconds = max_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="close-watcher", daemon=True)

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        while self.waiting and not self._stop.is_set() and time.monotonic() < deadline:
            states = server_side_states(self.server_port, self.waiting)
            now = time.monotonic()
            for port in list(self.waiting):
                if states.get(port) != TCP_ESTABLISHED:
                    self.closed_at[port] = now
                    self.waiting.discard(port)
            self._stop.wait(0.02)

    def __enter__(self) -> CloseWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)


def observe(proc: ServerProcess, lorises: list[Loris]) -> None:
    """Trickle, and note when and how each connection ends; one thread (plus the watcher
    of the stalled readers), bounded."""
    sel = selectors.DefaultSelector()
    readers = {loris.port: loris for loris in lorises if loris.kind == "stalled-reader"}
    watcher = CloseWatcher(proc.port, set(readers), OBSERVE_FOR)
    try:
        for loris in lorises:
            if loris.kind != "stalled-reader":  # never read: that is its whole point
                sel.register(loris.sock, selectors.EVENT_READ, loris)
        deadline = time.monotonic() + OBSERVE_FOR
        with watcher:
            while time.monotonic() < deadline and any(
                x.ended_at is None for x in lorises if x.kind != "stalled-reader"
            ):
                for key, _ in sel.select(0.05):
                    loris = key.data
                    try:
                        data = loris.sock.recv(65536)
                    except BlockingIOError:
                        continue
                    except ConnectionResetError:
                        data, loris.end = b"", "reset"
                    if data:
                        loris.received += data
                        continue
                    loris.ended_at = time.monotonic()
                    loris.end = "eof" if loris.end == "open" else loris.end
                    sel.unregister(loris.sock)
                now = time.monotonic()
                for loris in lorises:
                    if loris.ended_at is None and loris.pieces and now >= loris.next_send:
                        try:
                            loris.sock.send(loris.pieces.pop(0))
                        except (BlockingIOError, BrokenPipeError, ConnectionResetError):
                            pass  # the read side reports the end
                        loris.next_send = now + TRICKLE_EVERY
            # The watcher may still be waiting for a stalled reader: give it its bound.
            while watcher.waiting and time.monotonic() < deadline:
                time.sleep(0.02)
    finally:
        sel.close()
    for port, when in watcher.closed_at.items():
        readers[port].ended_at, readers[port].end = when, "server-closed"


@dataclass
class TimeoutsRun:
    server: ServerProcess
    health: Health
    lorises: list[Loris] = field(default_factory=list)

    def of(self, *kinds: str) -> list[Loris]:
        return [loris for loris in self.lorises if loris.kind in kinds]

    def outside_window(self, *kinds: str) -> list[tuple[str, float | None, str]]:
        low, high = CUT_WITHIN
        return [
            (x.kind, None if x.cut_after is None else round(x.cut_after, 2), x.end)
            for x in self.of(*kinds)
            if x.cut_after is None or not low <= x.cut_after <= high
        ]


@pytest.fixture(scope="module")
def timeouts(backend):
    with running_server(backend, *TIMEOUT_FLAGS) as proc:
        baseline = Baseline.take(proc)
        run = TimeoutsRun(server=proc, health=None)  # type: ignore[arg-type]
        try:
            with Prober(proc, interval=0.05) as prober:
                for kind in KINDS:
                    for _ in range(PER_KIND):
                        run.lorises.append(start_loris(proc, kind))
                observe(proc, run.lorises)
        finally:
            for loris in run.lorises:
                with contextlib.suppress(OSError):
                    loris.sock.close()
        run.health = check_health(
            proc, baseline, "slowloris-timeouts", probes_during=prober.results
        )
        yield run


@pytest.mark.timeout(60)
def test_trickled_heads_are_cut_off_by_the_header_timeout(timeouts):
    late = timeouts.outside_window(*HEAD_KINDS)
    assert not late, timeouts.server.diag(
        f"trickled heads not cut off {CUT_WITHIN[0]}-{CUT_WITHIN[1]} s after their first "
        f"byte (--header-timeout 1): {late}"
    )


@pytest.mark.timeout(60)
def test_trickled_heads_get_a_408_or_nothing(timeouts):
    wrong = [
        (x.kind, bytes(x.received[:80]))
        for x in timeouts.of(*HEAD_KINDS)
        if x.received and not x.received.startswith(b"HTTP/1.1 408 ")
    ]
    assert not wrong, timeouts.server.diag(f"what trickling clients received: {wrong}")


@pytest.mark.timeout(60)
def test_silent_connections_are_closed_by_the_header_timeout(timeouts):
    late = timeouts.outside_window("silent")
    talked = [bytes(x.received[:80]) for x in timeouts.of("silent") if x.received]
    assert not late and not talked, timeouts.server.diag(
        f"silent connections: not closed {CUT_WITHIN} s after connecting: {late}; "
        f"answered: {talked}"
    )


@pytest.mark.timeout(60)
def test_stalled_body_is_cut_off_by_the_body_timeout(timeouts):
    late = timeouts.outside_window("stalled-body")
    assert not late, timeouts.server.diag(
        f"stalled bodies not cut off {CUT_WITHIN} s after the last byte: {late}"
    )


@pytest.mark.timeout(60)
def test_reader_that_stopped_reading_is_dropped_by_the_write_timeout(timeouts):
    late = timeouts.outside_window("stalled-reader")
    assert not late, timeouts.server.diag(
        f"stalled readers not dropped {CUT_WITHIN} s after asking for a huge stream: {late}"
    )


@pytest.mark.timeout(60)
def test_others_are_served_within_1s_while_lorises_trickle(timeouts):
    during = timeouts.health.probes_during
    bad = [(round(t, 3), s) for t, s in during if s != 200 or t >= ANSWER_WITHIN]
    assert len(during) >= 10, f"only {len(during)} probes ran beside the slow clients"
    assert not bad, timeouts.server.diag(f"probes beside the slow clients: {bad}")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("aspect", HEALTH_ASPECTS)
def test_timed_out_clients_leave_server_healthy(timeouts, aspect):
    assert_healthy(timeouts.health, aspect)
