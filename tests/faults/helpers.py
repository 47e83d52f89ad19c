"""What every fault scenario shares: the server's health before it (`Baseline`), the same
figures after it (`check_health`), a client that keeps asking `GET /` meanwhile (`Prober`),
a reader that collects every response a connection gets (`collect_responses`), and the
JSON lines report of the measured figures (`SELSERVE_FAULT_REPORT`). Fault modules import
it as `faults.helpers`; it holds no fixtures and no pytest hooks.

A scenario runs once per backend in a module-scoped fixture and returns what it saw plus
a `Health`; its tests then each assert one thing about that. Every loop here is bounded in
count and in time, and only processes a scenario started are ever signalled, by pid.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from helpers import RawClient, ServerProcess

ANSWER_WITHIN = 1.0  # seconds: GET / must be answered this fast, during and after
CPU_IDLE_LIMIT = 0.2  # CPU seconds the server may use in the 1 s window after a scenario
CPU_WINDOW = 1.0
FD_SETTLE_TIMEOUT = 5.0  # seconds the server gets to close what a scenario left behind
MiB = 1024 * 1024
DEFAULT_RSS_BOUND = 32 * MiB
AFTER_PROBES = 3
REPORT_ENV = "SELSERVE_FAULT_REPORT"

# What the `test_*_healthy` tests assert after each scenario, one aspect per parameter.
HEALTH_ASPECTS = ("answers", "fds", "cpu", "rss", "no_traceback")

_report_lock = threading.Lock()


# --------------------------------------------------------------------------- servers


@contextlib.contextmanager
def running_server(backend: str, *args: str) -> Iterator[ServerProcess]:
    """A demo-app server for one module and backend, stopped (by pid) whatever happens."""
    proc = ServerProcess(backend, *args)
    try:
        proc.start()
        yield proc
    finally:
        proc.stop()


# --------------------------------------------------------------------------- health


@dataclass
class Baseline:
    fds: int
    rss: int
    stderr_lines: int

    @classmethod
    def take(cls, proc: ServerProcess, *files: str) -> Baseline:
        """Warm the paths scenarios use (so lazy imports are not counted as growth), and
        the static `files` they ask for (the open-file cache keeps each one's descriptor:
        a bounded cost, paid once), then read the settled fd count and RSS."""
        assert proc.get("/").status == 200, proc.diag("warm-up GET / failed")
        assert proc.get("/stream?n=8&size=16384").status == 200, proc.diag("warm-up failed")
        for path in files:
            assert proc.get(path).status == 200, proc.diag(f"warm-up GET {path} failed")
        fds = proc.settled_fds()
        return cls(fds=fds, rss=proc.rss(), stderr_lines=len(proc.stderr_text().splitlines()))


@dataclass
class Health:
    scenario: str
    backend: str
    alive: bool
    probes_during: list[tuple[float, int | str]]
    probes_after: list[tuple[float, int | str]]
    fd_baseline: int
    fd_after: int
    rss_delta: int
    rss_bound: int
    cpu_after: float
    new_stderr: str
    diag: str = ""

    @property
    def probes(self) -> list[tuple[float, int | str]]:
        return self.probes_during + self.probes_after

    @property
    def probe_latency_max(self) -> float:
        return max((t for t, _ in self.probes), default=-1.0)

    @property
    def fd_delta(self) -> int:
        return self.fd_after - self.fd_baseline

    def slow_or_failed(self) -> list[tuple[float, int | str]]:
        return [(round(t, 3), s) for t, s in self.probes if s != 200 or t >= ANSWER_WITHIN]

    def record(self) -> dict:
        return {
            "scenario": self.scenario,
            "backend": self.backend,
            "probe_latency_max_s": round(self.probe_latency_max, 4),
            "probes": len(self.probes),
            "probes_slow_or_failed": len(self.slow_or_failed()),
            "fd_baseline": self.fd_baseline,
            "fd_delta": self.fd_delta,
            "rss_delta_kib": self.rss_delta // 1024,
            "cpu_after_s": round(self.cpu_after, 4),
            "alive": self.alive,
        }


def check_health(
    proc: ServerProcess,
    baseline: Baseline,
    scenario: str,
    *,
    probes_during: list[tuple[float, int | str]] | None = None,
    rss_peak: int = 0,
    rss_bound: int = DEFAULT_RSS_BOUND,
    after_probes: int = AFTER_PROBES,
    extra: dict | None = None,
) -> Health:
    """After a scenario: `after_probes` fresh GET / probes, fds back to baseline (polled),
    CPU used over a 1 s window, RSS growth (the peak seen during the scenario counts).
    Writes the figures to the report file when SELSERVE_FAULT_REPORT names one (`extra`
    goes with them)."""
    after = [proc.timed_get(timeout=5) for _ in range(after_probes)]
    alive = proc.alive()
    fd_after, cpu, rss_delta = -1, -1.0, -1
    if alive:
        fd_after = proc.wait_fds_at_most(baseline.fds, timeout=FD_SETTLE_TIMEOUT)
        cpu = proc.cpu_used_over(CPU_WINDOW)
        rss_delta = max(rss_peak, proc.rss()) - baseline.rss
    lines = proc.stderr_text().splitlines()
    health = Health(
        scenario=scenario,
        backend=str(proc.backend),
        alive=alive,
        probes_during=list(probes_during or []),
        probes_after=after,
        fd_baseline=baseline.fds,
        fd_after=fd_after,
        rss_delta=rss_delta,
        rss_bound=rss_bound,
        cpu_after=cpu,
        new_stderr="\n".join(lines[baseline.stderr_lines :]),
        diag=proc.stderr_tail(),
    )
    write_report({**health.record(), **(extra or {})})
    return health


def write_report(record: dict) -> None:
    path = os.environ.get(REPORT_ENV)
    if not path:
        return
    with _report_lock, open(path, "a", encoding="utf-8") as out:
        out.write(json.dumps(record) + "\n")


def assert_healthy(health: Health, aspect: str) -> None:
    """One aspect of the server's health after a scenario (see HEALTH_ASPECTS)."""
    where = f"after {health.scenario} on {health.backend}"
    tail = f"\n{health.diag}"
    if aspect == "answers":
        assert health.alive, f"server died {where}" + tail
        bad = health.slow_or_failed()
        assert not bad, (
            f"{len(bad)}/{len(health.probes)} GET / probes (during and {where}) failed or took "
            f">= {ANSWER_WITHIN} s: {bad[:10]}" + tail
        )
    elif aspect == "fds":
        assert health.alive, f"server died {where}" + tail
        assert health.fd_after <= health.fd_baseline, (
            f"server holds {health.fd_after} fds {FD_SETTLE_TIMEOUT} s {where}, "
            f"baseline {health.fd_baseline}" + tail
        )
    elif aspect == "cpu":
        assert health.alive, f"server died {where}" + tail
        assert health.cpu_after < CPU_IDLE_LIMIT, (
            f"server used {health.cpu_after:.3f} s CPU in {CPU_WINDOW} s of idleness {where}" + tail
        )
    elif aspect == "rss":
        assert health.alive, f"server died {where}" + tail
        assert health.rss_delta < health.rss_bound, (
            f"server RSS grew by {health.rss_delta / MiB:.1f} MiB {where} "
            f"(bound {health.rss_bound / MiB:.0f} MiB)" + tail
        )
    elif aspect == "no_traceback":
        assert "Traceback" not in health.new_stderr, (
            f"the server logged a traceback {where}:\n{health.new_stderr[-3000:]}"
        )
    else:
        raise ValueError(f"unknown health aspect {aspect!r}")


# --------------------------------------------------------------------------- probing


class Prober:
    """Keeps asking GET / on fresh connections in a thread while a scenario runs.

    Bounded: at most `max_probes` probes and `max_seconds` of probing; each probe has its
    own socket timeout, so a hung server shows up as a slow probe, not a hung test.
    """

    def __init__(
        self,
        proc: ServerProcess,
        interval: float = 0.05,
        max_probes: int = 2000,
        max_seconds: float = 60.0,
        timeout: float = 3.0,
    ) -> None:
        self.proc = proc
        self.interval = interval
        self.max_probes = max_probes
        self.max_seconds = max_seconds
        self.timeout = timeout
        self.results: list[tuple[float, int | str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="prober", daemon=True)

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        while (
            not self._stop.is_set()
            and len(self.results) < self.max_probes
            and time.monotonic() < deadline
        ):
            self.results.append(self.proc.timed_get(timeout=self.timeout))
            self._stop.wait(self.interval)

    def __enter__(self) -> Prober:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(self.timeout + 2)


# --------------------------------------------------------------------------- responses


@dataclass
class Exchange:
    """What one connection got back: the statuses of complete responses, in order, and how
    it ended: 'eof', 'reset', 'open' (still open when we stopped listening) or 'broken: ...'
    (bytes that were not a complete, well-framed response)."""

    statuses: list[int] = field(default_factory=list)
    end: str = "open"
    elapsed: float = 0.0
    first_bytes: bytes = b""
    error: str = ""

    @property
    def closed(self) -> bool:
        return self.end in ("eof", "reset")


def _wait_for_bytes(client: RawClient, timeout: float) -> str:
    """'data' (appended to the client's buffer), 'eof', 'reset' or 'quiet'."""
    client.sock.settimeout(max(timeout, 0.001))
    try:
        data = client.sock.recv(1 << 18)
    except TimeoutError:
        return "quiet"
    except ConnectionResetError:
        return "reset"
    finally:
        client.sock.settimeout(client.timeout)
    if not data:
        client.eof = True
        return "eof"
    client.buf += data
    return "data"


def collect_responses(
    client: RawClient, quiet: float, total: float, method: str = "GET"
) -> Exchange:
    """Read responses until the server closes, nothing arrives for `quiet` seconds, or
    `total` seconds pass. Every response must be complete and well framed."""
    start = time.monotonic()
    deadline = start + total
    exchange = Exchange()
    seen = bytearray()
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                exchange.end = "open"
                break
            if not client.buf:
                state = _wait_for_bytes(client, min(quiet, remaining))
                if state == "quiet":
                    exchange.end = "open"
                    break
                if state != "data":
                    exchange.end = state
                    break
            if len(seen) < 400:
                seen += client.buf[: 400 - len(seen)]
            client.timeout = max(min(2.0, deadline - time.monotonic()), 0.05)
            client.sock.settimeout(client.timeout)
            response = client.read_response(method)
            exchange.statuses.append(response.status)
            bodiless = method == "HEAD" or response.status in (204, 304) or response.status < 200
            if (
                not bodiless
                and response.header("Content-Length") is None
                and response.chunk_sizes is None
            ):
                # Close-delimited: read_response read up to the close.
                exchange.end = "eof"
                break
    except AssertionError as exc:
        exchange.end = f"broken: {str(exc)[:300]}"
    exchange.elapsed = time.monotonic() - start
    exchange.first_bytes = bytes(seen[:200])
    return exchange


# --------------------------------------------------------------------------- tools


def stop_process(proc: subprocess.Popen, sig: int, grace: float = 5.0) -> int:
    """Send `sig` to a process this suite started (by pid), wait `grace`, then SIGKILL.
    Always reaps it; returns its exit status."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
    return proc.returncode
