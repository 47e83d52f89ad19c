"""1. The original story with the original tools: `siege -b` interrupted with SIGINT after
about two seconds and restarted, ten times; `wrk` killed with SIGKILL mid-run, three times.
Afterwards (and in between) the server answers, holds no extra fds, idles, and has not
grown. siege and wrk run with a temporary HOME and rc file, so no user config is read and
nothing is written outside a temporary directory; each is signalled by its own pid."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field

import pytest
from helpers import ServerProcess

from faults.helpers import (
    HEALTH_ASPECTS,
    Baseline,
    Health,
    Prober,
    assert_healthy,
    check_health,
    running_server,
    stop_process,
)

SIEGE = shutil.which("siege")
WRK = shutil.which("wrk")

SIEGE_CYCLES = 10
SIEGE_RUN_SECONDS = 1.8  # then SIGINT ("after about two seconds")
SIEGE_USERS = 25
SIEGE_PATHS = ("/stream?n=200&size=16384", "/")
# Everything siege would otherwise take from ~/.siege/siege.conf. Verbose: one line per
# completed transaction on stdout (status, body bytes, URL); the summary goes to stderr.
SIEGE_RC = """\
verbose = true
color = off
quiet = false
json_output = false
show-logfile = false
logging = false
logfile = {log}
parser = false
protocol = HTTP/1.1
chunked = true
cache = false
connection = keep-alive
accept-encoding =
"""
SIEGE_LINE = re.compile(rb"^HTTP/1\.[01] (\d{3}) +[0-9.]+ secs: +(\d+) bytes ==> GET +(\S+)$")
SIEGE_FAILED = re.compile(rb"Failed transactions:\s+(\d+)")
# siege 4.0.x sometimes deadlocks on its way out after SIGINT (all threads in futex
# waits, JoeDog/siege#66, #4): after this grace it is SIGKILLed. Its per-transaction
# lines are already written by then, so the cycle still counts.
SIEGE_EXIT_GRACE = 1.0
EXPECTED_BODY_BYTES = {"/stream?n=200&size=16384": 200 * 16384, "/": 21}

WRK_CYCLES = 3
WRK_RUN_SECONDS = 1.0  # then SIGKILL
WRK_CONNECTIONS = 50
WRK_PATHS = ("/stream?n=200&size=16384", "/")


@dataclass
class ToolCycle:
    ran_seconds: float  # how long the tool ran before we signalled it
    exited_early: bool  # it ended before we signalled it
    exit_status: int | None
    transactions: list[tuple[int, int, str]] = field(default_factory=list)  # siege lines
    failed: int | None = None  # siege's summary count, when it got to print one
    errors: list[str] = field(default_factory=list)  # siege's [error] / [alert] lines
    peak_fds: int = 0  # server fds seen while the tool ran


@dataclass
class ToolRun:
    server: ServerProcess
    baseline: Baseline
    health: Health
    cycles: list[ToolCycle] = field(default_factory=list)


def read_siege_output(cycle: ToolCycle, stdout: bytes, stderr: bytes) -> None:
    # A SIGKILLed siege leaves its stdio buffer half written: skip an unfinished last line.
    for line in stdout.split(b"\n")[:-1]:
        m = SIEGE_LINE.match(line.rstrip())
        if m is not None:
            cycle.transactions.append((int(m[1]), int(m[2]), m[3].decode("latin-1")))
    m = SIEGE_FAILED.search(stderr)
    cycle.failed = int(m[1]) if m else None
    cycle.errors = [
        line.decode("latin-1")
        for line in stderr.splitlines()
        if line.startswith((b"[error]", b"[alert]", b"[fatal]"))
    ]


def run_siege_cycle(home, rc, urls, index: int) -> ToolCycle:
    env = dict(os.environ, HOME=str(home))
    env.pop("SIEGERC", None)
    out_path = home / f"siege-{index}.out"
    err_path = home / f"siege-{index}.err"
    argv = [SIEGE, "-R", str(rc), "-b", "-c", str(SIEGE_USERS), "-f", str(urls)]
    started = time.monotonic()
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        tool = subprocess.Popen(
            argv,
            cwd=home,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
        try:
            tool.wait(SIEGE_RUN_SECONDS)
            exited_early = True
        except subprocess.TimeoutExpired:
            exited_early = False
        finally:
            ran = time.monotonic() - started
            status = stop_process(tool, signal.SIGINT, grace=SIEGE_EXIT_GRACE)
    cycle = ToolCycle(ran_seconds=ran, exited_early=exited_early, exit_status=status)
    read_siege_output(cycle, out_path.read_bytes(), err_path.read_bytes())
    return cycle


def run_wrk_cycle(proc: ServerProcess, index: int) -> ToolCycle:
    url = proc.url + WRK_PATHS[index % len(WRK_PATHS)]
    argv = [WRK, "-t", "2", "-c", str(WRK_CONNECTIONS), "-d", "30s", url]
    started = time.monotonic()
    peak = 0
    tool = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        while time.monotonic() - started < WRK_RUN_SECONDS and tool.poll() is None:
            peak = max(peak, proc.num_fds())
            time.sleep(0.05)  # sampling pace, not a readiness wait
        exited_early = tool.poll() is not None
    finally:
        ran = time.monotonic() - started
        status = stop_process(tool, signal.SIGKILL, grace=5.0)
    return ToolCycle(ran_seconds=ran, exited_early=exited_early, exit_status=status, peak_fds=peak)


@pytest.fixture(scope="module")
def siege_run(backend, tmp_path_factory):
    if SIEGE is None:
        pytest.skip("siege is not installed (.ci/run installs the Debian package)")
    with running_server(backend) as proc:
        baseline = Baseline.take(proc)
        home = tmp_path_factory.mktemp(f"siege-{backend}")
        rc = home / "siegerc"
        rc.write_text(SIEGE_RC.format(log=home / "siege.log"))
        urls = home / "urls.txt"
        urls.write_text("".join(f"{proc.url}{path}\n" for path in SIEGE_PATHS))
        cycles = []
        between = []
        with Prober(proc, interval=0.1) as prober:
            for index in range(SIEGE_CYCLES):
                cycles.append(run_siege_cycle(home, rc, urls, index))
                between.append(proc.timed_get(timeout=5))
        health = check_health(proc, baseline, "siege", probes_during=prober.results + between)
        yield ToolRun(server=proc, baseline=baseline, health=health, cycles=cycles)


@pytest.fixture(scope="module")
def wrk_run(backend):
    if WRK is None:
        pytest.skip("wrk is not installed (.ci/run installs the Debian package)")
    with running_server(backend) as proc:
        baseline = Baseline.take(proc)
        cycles = []
        after_kills = []
        for index in range(WRK_CYCLES):
            cycles.append(run_wrk_cycle(proc, index))
            after_kills.append(proc.timed_get(timeout=5))
        health = check_health(proc, baseline, "wrk-sigkill", probes_during=after_kills)
        yield ToolRun(server=proc, baseline=baseline, health=health, cycles=cycles)


@pytest.mark.timeout(120)
def test_siege_gets_only_complete_200s_in_every_cycle(siege_run):
    bad = []
    for index, cycle in enumerate(siege_run.cycles):
        wrong = [
            t for t in cycle.transactions if t[0] != 200 or t[1] != EXPECTED_BODY_BYTES.get(t[2])
        ]
        if (
            cycle.exited_early
            or len(cycle.transactions) < 10
            or wrong
            or cycle.failed not in (0, None)
            or cycle.errors
        ):
            bad.append(
                f"cycle {index}: early exit {cycle.exited_early}, "
                f"{len(cycle.transactions)} transactions, wrong {wrong[:3]}, "
                f"failed {cycle.failed}, errors {cycle.errors[:3]}"
            )
    assert len(siege_run.cycles) == SIEGE_CYCLES
    assert not bad, siege_run.server.diag("\n".join(bad))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("aspect", HEALTH_ASPECTS)
def test_siege_interrupted_leaves_server_healthy(siege_run, aspect):
    assert_healthy(siege_run.health, aspect)


@pytest.mark.timeout(60)
def test_wrk_connections_reached_the_server_before_each_kill(wrk_run):
    # Otherwise the kill tested nothing: wrk's connections must have been open on the server.
    want = wrk_run.baseline.fds + WRK_CONNECTIONS // 2
    peaks = [cycle.peak_fds for cycle in wrk_run.cycles]
    early = [i for i, cycle in enumerate(wrk_run.cycles) if cycle.exited_early]
    assert not early, f"wrk exited on its own in cycles {early}"
    assert all(peak >= want for peak in peaks), wrk_run.server.diag(
        f"server fd peaks while wrk ran: {peaks}; wanted >= {want} "
        f"(baseline {wrk_run.baseline.fds} + {WRK_CONNECTIONS // 2})"
    )


@pytest.mark.timeout(60)
@pytest.mark.parametrize("aspect", HEALTH_ASPECTS)
def test_wrk_killed_leaves_server_healthy(wrk_run, aspect):
    assert_healthy(wrk_run.health, aspect)
