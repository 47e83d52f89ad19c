"""CI smoke of the Locust load tests (`loadtests/`): a short headless run per backend.

Each run drives a `selserve selserve.demo:app` (started by the server_factory fixture, short
--header-timeout so that slowlorises are dropped within the run) with the default mix,
through `python -m loadtests.run --host`: well-behaved users must see no failure at all,
misbehaving users' checks must all pass, and the server must end with no more fds than it
started with and nothing alarming in its log.  A second run against a deliberately broken
app shows that the checks do fail.

Locust (gevent, monkey-patching) is never imported here: it runs in its own process, and
these tests are skipped when it is not installed (`pip install -e '.[load]'`).  Timings are
reported, never asserted.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import BACKENDS, ROOT

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("locust") is None,
    reason="Locust is not installed (pip install -e '.[load]'); the load-test smoke needs it",
)

USERS = 24
RUN_TIME = "10s"
HEADER_TIMEOUT = "2"
DEFAULT_MIX = {
    "ApiUser",
    "Streamer",
    "ChunkedUploader",
    "AbortingUser",
    "SlowlorisUser",
    "SlowReaderUser",
}
RUNNER_TIMEOUT = 75.0  # run time + Locust start-up and teardown, with room to spare


def run_loadtest(out: Path, *args: str) -> tuple[int, str]:
    """`python -m loadtests.run ARGS --out OUT`; (exit status, its output).  On a timeout the
    runner gets SIGTERM (it then stops what it started) and, failing that, SIGKILL."""
    argv = [sys.executable, "-m", "loadtests.run", *args, "--out", str(out)]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.Popen(
        argv,
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=RUNNER_TIMEOUT)
    except subprocess.TimeoutExpired:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, sig)
            try:
                output, _ = proc.communicate(timeout=20)
                break
            except subprocess.TimeoutExpired:
                continue
        raise AssertionError(f"the load test did not end within {RUNNER_TIMEOUT} s") from None
    return proc.returncode, output.decode(errors="replace")


def default_mix_against(server) -> list[str]:
    """The runner's arguments for the default mix against `server`, the smoke's size."""
    target = ["--host", server.url, "--header-timeout", HEADER_TIMEOUT]
    return [*target, "-u", str(USERS), "-t", RUN_TIME]


def summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


@pytest.mark.parametrize("backend", BACKENDS)
def test_default_mix_has_no_failures(backend, server_factory, tmp_path):
    server = server_factory(backend, "--header-timeout", HEADER_TIMEOUT)
    fds_before = server.settled_fds()
    status, output = run_loadtest(tmp_path, *default_mix_against(server))
    assert status == 0, f"load test failed on {backend}:\n{output}"
    # Every user of the default mix took part.
    ran = set(summary(tmp_path)["user_classes"])
    assert ran == DEFAULT_MIX, f"user classes that ran: {sorted(ran)}"
    assert server.alive(), server.diag("the server did not survive the load test")
    fds_after = server.wait_fds_at_most(fds_before, timeout=10.0)
    assert fds_after <= fds_before, server.diag(
        f"{fds_after} fds open after the load test, {fds_before} before: connections leaked"
    )
    log = server.stderr_text()
    assert "Traceback" not in log and " ERROR " not in log, server.diag("errors in the log")


def test_two_locust_processes_drive_the_server_and_report_as_one(server_factory, tmp_path):
    # --processes 2: Locust's master and two workers; the master writes the summary, so
    # every request and check counted must have come back from the workers.
    server = server_factory(BACKENDS[0], "--header-timeout", HEADER_TIMEOUT)
    status, output = run_loadtest(tmp_path, *default_mix_against(server), "--processes", "2")
    assert status == 0, f"load test with two Locust processes failed:\n{output}"
    got = summary(tmp_path)
    assert set(got["user_classes"]) == DEFAULT_MIX
    groups = got["groups"]
    assert groups["well_behaved"]["requests"] > 0 and groups["well_behaved"]["failures"] == 0
    assert groups["misbehaving"]["requests"] > 0, "no misbehaving check reached the master"
    log = (tmp_path / "locust.log").read_text()
    assert "2 workers connected" in log, "Locust did not run two worker processes"
    assert server.alive(), server.diag("the server did not survive the load test")


def test_processes_must_be_positive_or_minus_one(tmp_path):
    status, output = run_loadtest(tmp_path, "--processes", "0", "--host", "http://127.0.0.1:9")
    assert status == 2 and "--processes 0" in output, output


@pytest.fixture(scope="module")
def faulty_run(tmp_path_factory):
    """One run against an app that corrupts every other echo, with the slowloris checks
    told that the server drops slow heads after 1 s while it really waits 30 s."""
    out = tmp_path_factory.mktemp("faulty-run")
    status, output = run_loadtest(
        out,
        "--app",
        "loadtests._faulty_target:app",
        "--backend",
        BACKENDS[0],
        "--tags",
        "api",
        "slowloris",
        "--header-timeout",
        "1",
        "--server-arg=--header-timeout=30",
        "-u",
        "6",
        "-t",
        "5s",
    )
    return status, output, summary(out) if (out / "summary.json").exists() else None


def test_corrupted_echo_fails_the_run(faulty_run):
    status, output, result = faulty_run
    assert status == 1, f"the runner passed a server that corrupts echoes:\n{output}"
    assert result is not None, output
    echo_errors = [e for e in result["errors"] if "echo differs" in e["error"]]
    assert echo_errors and result["groups"]["well_behaved"]["failures"] > 0, output


def test_slowloris_not_dropped_is_a_misbehaving_failure(faulty_run):
    status, output, result = faulty_run
    assert result is not None, output
    kept = [
        e
        for e in result["errors"]
        if e["group"] == "misbehaving" and "still connected" in e["error"]
    ]
    # Either slowloris task may be the one that ran in so short a run; both
    # report a connection the server kept past its header timeout this way.
    assert kept, f"a slowloris the server kept for 30 s was not reported:\n{output}"
