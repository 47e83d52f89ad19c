"""3f. Every write the server makes for itself fails: the access log is on a full device
(`/dev/full`), request bodies spill to files that cannot grow (the process's RLIMIT_FSIZE
is lowered, so writes past it fail with EFBIG as on a full disk), and the counters are
asked for meanwhile. Clients must not notice beyond a 503 for a body that could not be
stored: every connection is answered and gives its slot back (a log write that raised in
close() once leaked slots until, at the cap, nothing was answered again), fds return to
baseline, and each failure costs the log one warning, not one per request."""

from __future__ import annotations

import errno
import json
import os
import resource
import time
from dataclasses import dataclass, field

import psutil
import pytest
from helpers import ServerProcess, get_request, post_request

from faults.helpers import (
    HEALTH_ASPECTS,
    Baseline,
    Health,
    MiB,
    Prober,
    assert_healthy,
    check_health,
    running_server,
)

CAP = 4  # a leaked slot shows within a handful of requests
SPILL_THRESHOLD = 16 * 1024
FILE_SIZE_LIMIT = 1 * MiB  # spill files cannot grow past this (stderr stays far below)
BIG_AGENT = "u" * 30_000  # 30 KB of User-Agent: the access log's buffer fills fast
LOGGED_REQUESTS = 60  # each on a fresh connection: 15 times the cap
SPILLED_UPLOADS = 8  # 2 MiB bodies: past the threshold, then past the file size limit
SMALL_UPLOADS = 8  # 8 KiB bodies: kept in memory, echoed


@dataclass
class FailingWritesRun:
    server: ServerProcess
    health: Health
    logged: list[int | str] = field(default_factory=list)
    spilled: list[int | str] = field(default_factory=list)
    small: list[bool] = field(default_factory=list)
    stats: dict = field(default_factory=dict)


def upload(proc: ServerProcess, body: bytes) -> int | str:
    """POST /echo with `body` on a fresh connection: the status, or what went wrong."""
    with proc.connect(timeout=10) as client:
        try:
            client.send(post_request("/echo", body))
        except OSError:
            pass  # refused early (503): the server stopped reading; its answer is waiting
        try:
            return client.read_final_response().status
        except AssertionError as exc:
            return str(exc)[:200]


@pytest.fixture(scope="module")
def failing_writes(backend):
    flags = (
        "--access-log", "/dev/full",
        "--max-connections", str(CAP),
        "--body-spill-threshold", str(SPILL_THRESHOLD),
        "--stats-path", "/_stats",
    )  # fmt: skip
    with running_server(backend, *flags) as proc:
        psutil.Process(proc.pid).rlimit(psutil.RLIMIT_FSIZE, (FILE_SIZE_LIMIT, FILE_SIZE_LIMIT))
        baseline = Baseline.take(proc)
        run = FailingWritesRun(server=proc, health=None)  # type: ignore[arg-type]
        with Prober(proc, interval=0.1, timeout=3.0) as prober:
            request = get_request("/", extra=f"User-Agent: {BIG_AGENT}\r\n")
            for _ in range(LOGGED_REQUESTS):
                try:
                    run.logged.append(proc.request(request, timeout=3).status)
                except (OSError, AssertionError) as exc:
                    run.logged.append(f"{type(exc).__name__}: {exc}"[:120])
            for _ in range(SPILLED_UPLOADS):
                run.spilled.append(upload(proc, b"s" * (2 * MiB)))
            for i in range(SMALL_UPLOADS):
                body = bytes([65 + i]) * 8192
                response = proc.request(post_request("/echo", body), timeout=5)
                run.small.append(response.status == 200 and response.body == body)
        # Every client is gone; the server may take a turn to see the last FIN.
        deadline = time.monotonic() + 3.0
        while True:
            run.stats = json.loads(proc.get("/_stats").body)
            if run.stats["connections_open"] == 1 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        run.health = check_health(
            proc, baseline, "server-side-writes-fail", probes_during=prober.results
        )
        return run


@pytest.mark.timeout(120)
def test_requests_are_answered_while_the_access_log_cannot_be_written(failing_writes):
    failed = [outcome for outcome in failing_writes.logged if outcome != 200]
    assert not failed, failing_writes.server.diag(
        f"{len(failed)} of {LOGGED_REQUESTS} requests at --max-connections {CAP} with "
        f"--access-log /dev/full were not answered 200: {failed[:5]}"
    )


@pytest.mark.timeout(120)
def test_lost_access_log_lines_are_counted(failing_writes):
    assert failing_writes.stats["events"].get("access-log-lines-lost", 0) >= LOGGED_REQUESTS


@pytest.mark.timeout(120)
def test_a_body_that_cannot_be_stored_is_refused_with_503(failing_writes):
    assert failing_writes.spilled == [503] * SPILLED_UPLOADS, failing_writes.server.diag()
    assert failing_writes.stats["events"].get("body-store-failed") == SPILLED_UPLOADS


@pytest.mark.timeout(120)
def test_bodies_kept_in_memory_are_still_echoed_whole(failing_writes):
    assert failing_writes.small == [True] * SMALL_UPLOADS


@pytest.mark.timeout(120)
def test_each_kind_of_failure_is_warned_about_once_not_per_request(failing_writes):
    log = failing_writes.server.stderr_text()
    counts = (log.count("write() to access log"), log.count("cannot store a request body"))
    assert counts == (1, 1), failing_writes.server.diag(f"warnings (log, body): {counts}")


@pytest.mark.timeout(120)
def test_no_connection_slot_is_left_behind(failing_writes):
    assert failing_writes.stats["connections_open"] == 1  # the stats request itself


@pytest.mark.timeout(120)
@pytest.mark.parametrize("aspect", HEALTH_ASPECTS)
def test_failing_server_side_writes_leave_server_healthy(failing_writes, aspect):
    assert_healthy(failing_writes.health, aspect)


def test_the_file_size_limit_stands_in_for_a_full_disk(tmp_path):
    # The scenario's premise: with RLIMIT_FSIZE lowered, writing past it fails with an
    # OSError (EFBIG) instead of killing the process with SIGXFSZ (Python ignores it).
    old = resource.getrlimit(resource.RLIMIT_FSIZE)
    fd = os.open(tmp_path / "grows", os.O_WRONLY | os.O_CREAT)
    try:
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, old[1]))
        os.write(fd, b"x" * 4096)
        with pytest.raises(OSError) as failure:
            os.write(fd, b"y")
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old)
        os.close(fd)
    assert failure.value.errno == errno.EFBIG
