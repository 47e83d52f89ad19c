"""`selserve --workers N` against real processes: the supervisor forks workers that share
its listeners, replaces the ones that die, stops them gracefully, reloads them on SIGHUP
without a failed request, and never leaves an orphan behind."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import psutil
import pytest
from helpers import ROOT, ServerProcess, free_port, get_request, poll_until

pytestmark = pytest.mark.timeout(90)

BACKENDS_WITH_WORKERS = ["epoll", "poll"]
WRK = shutil.which("wrk")

DIE_APP = """
import os, time
from selserve.app import Response, native

@native
def app(request):
    if request.path == "/die":
        os._exit(3)
    if request.path == "/pid":
        return Response(200, [], str(os.getpid()).encode())
    if request.path == "/block":  # a native app blocking its worker's loop (on purpose)
        time.sleep(1.0)
        return Response(200, [], str(os.getpid()).encode())
    if request.path == "/hang":  # ... and one that never gives it back
        while True:
            time.sleep(1.0)
    return Response(200, [], b"hello")
"""


def workers_of(proc: ServerProcess) -> list[int]:
    try:
        return sorted(child.pid for child in psutil.Process(proc.pid).children())
    except psutil.NoSuchProcess:
        return []


def replaced(proc: ServerProcess, before: list[int], count: int, every: bool = False):
    """The workers now, once there are `count` and one (or, with `every`, each) of them is
    not one of `before`; else None."""
    now = workers_of(proc)
    if len(now) != count:
        return None
    new = set(now) - set(before)
    return now if (new == set(now) if every else new) else None


def wait_workers(proc: ServerProcess, count: int, timeout: float = 10.0) -> list[int]:
    poll_until(lambda: len(workers_of(proc)) == count, timeout)
    return workers_of(proc)


@pytest.fixture(params=BACKENDS_WITH_WORKERS)
def backend(request):
    return request.param


@pytest.fixture
def die_app(tmp_path):
    (tmp_path / "dieapp.py").write_text(DIE_APP)
    return str(tmp_path)


# select too: each worker watches at most FD_SETSIZE fds, which its cap respects.
@pytest.mark.parametrize("backend", [*BACKENDS_WITH_WORKERS, "select"])
def test_the_workers_asked_for_each_listen_on_the_shared_socket(backend, server_factory):
    proc = server_factory(backend, "--workers", "3")
    workers = wait_workers(proc, 3)
    listening = [
        any(c.status == psutil.CONN_LISTEN and c.laddr.port == proc.port for c in
            psutil.Process(pid).net_connections("tcp"))
        for pid in workers
    ]  # fmt: skip
    assert len(workers) == 3 and all(listening), proc.diag(f"workers {workers}: {listening}")


def test_while_one_worker_is_blocked_another_answers(backend, server_factory, die_app):
    proc = server_factory(backend, "--workers", "2", "--chdir", die_app, app="dieapp:app")
    wait_workers(proc, 2)
    assert poll_until(lambda: proc.get("/pid").status == 200, 5)
    blocked: list[bytes] = []
    blocker = threading.Thread(target=lambda: blocked.append(proc.get("/block").body))
    blocker.start()
    try:
        time.sleep(0.2)  # one worker's loop now sleeps for a second
        started = time.monotonic()
        other = proc.get("/pid", timeout=5)
        elapsed = time.monotonic() - started
    finally:
        blocker.join(10)
    assert other.status == 200 and other.body != blocked[0], proc.diag(f"{other!r} {blocked}")
    assert elapsed < 0.5, f"answered after {elapsed:.2f} s: it waited for the blocked worker"


def test_a_killed_worker_is_replaced_within_5_seconds(backend, server_factory):
    proc = server_factory(backend, "--workers", "2")
    before = wait_workers(proc, 2)
    os.kill(before[0], signal.SIGKILL)
    after = poll_until(lambda: replaced(proc, before, 2), 5)
    assert after and before[0] not in after, proc.diag(f"before {before}, after {workers_of(proc)}")
    assert proc.get("/").status == 200
    assert "was killed by signal SIGKILL" in proc.stderr_text()


def test_workers_dying_young_are_restarted_after_a_back_off(backend, server_factory, die_app):
    proc = server_factory(backend, "--workers", "2", "--chdir", die_app, app="dieapp:app")
    wait_workers(proc, 2)
    with proc.connect() as client:
        client.send_ignoring_reset(get_request("/die"))
    assert poll_until(lambda: "died young: next start in 1 s" in proc.stderr_text(), 5)
    assert len(wait_workers(proc, 2, timeout=5)) == 2
    assert "exited with status 3" in proc.stderr_text()


def test_sigterm_lets_a_slow_download_finish_and_leaves_no_process(backend, server_factory):
    proc = server_factory(backend, "--workers", "2")
    workers = wait_workers(proc, 2)
    received = bytearray()
    with socket.create_connection(proc.address, timeout=10) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
        sock.sendall(get_request("/stream?n=400&size=8192"))  # 3.2 MB, read slowly
        received += sock.recv(16384)
        os.kill(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
            time.sleep(0.002)
    assert received.endswith(b"0\r\n\r\n"), f"{len(received)} bytes, ended {received[-20:]!r}"
    assert proc.proc.wait(15) == 0
    assert not any(psutil.pid_exists(pid) for pid in workers)


def test_a_worker_that_cannot_import_the_app_ends_the_start_up_with_status_2(tmp_path):
    (tmp_path / "brokenapp.py").write_text("raise RuntimeError('no DATABASE_URL')\n")
    result = subprocess.run(
        [sys.executable, "-m", "selserve", "brokenapp:app", "--workers", "2", "--chdir",
         str(tmp_path), "--bind", f"127.0.0.1:{free_port()}"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "RuntimeError: no DATABASE_URL" in result.stderr
    assert 'brokenapp.py", line 1' in result.stderr


def test_sigttin_and_sigttou_add_and_remove_a_worker(backend, server_factory):
    proc = server_factory(backend, "--workers", "2")
    wait_workers(proc, 2)
    os.kill(proc.pid, signal.SIGTTIN)
    assert len(wait_workers(proc, 3)) == 3, proc.diag()
    os.kill(proc.pid, signal.SIGTTOU)
    assert len(wait_workers(proc, 2)) == 2, proc.diag()


def test_web_concurrency_sets_the_number_of_workers(backend, server_factory, monkeypatch):
    monkeypatch.setenv("WEB_CONCURRENCY", "3")
    proc = server_factory(backend)
    assert len(wait_workers(proc, 3)) == 3, proc.diag()


def test_sighup_replaces_every_worker(backend, server_factory, die_app):
    proc = server_factory(backend, "--workers", "2", "--chdir", die_app, app="dieapp:app")
    before = wait_workers(proc, 2)
    os.kill(proc.pid, signal.SIGHUP)
    after = poll_until(lambda: replaced(proc, before, 2, every=True), 15)
    assert after, proc.diag(f"before {before}, now {workers_of(proc)}")
    assert {proc.get("/pid").body for _ in range(20)} <= {str(pid).encode() for pid in after}


@pytest.mark.skipif(WRK is None, reason="wrk is not installed (Debian: wrk)")
@pytest.mark.parametrize("backend", [*BACKENDS_WITH_WORKERS, "select"])
def test_a_reload_under_load_fails_no_request(backend, server_factory):
    proc = server_factory(backend, "--workers", "2")
    before = wait_workers(proc, 2)
    wrk = subprocess.Popen(
        [WRK, "-t1", "-c20", "-d6s", "--timeout", "5s", f"{proc.url}/"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        threading.Timer(2.0, os.kill, (proc.pid, signal.SIGHUP)).start()
        out, _ = wrk.communicate(timeout=30)
    finally:
        if wrk.poll() is None:
            wrk.kill()
            wrk.wait()
    after = workers_of(proc)
    assert not set(after) & set(before), proc.diag(f"workers before {before}, after {after}")
    requests = int(re.search(r"(\d+) requests in", out)[1])
    assert requests > 1000, out
    assert "Socket errors" not in out and "Non-2xx" not in out, out + proc.stderr_tail()


def test_version_is_printed():
    result = subprocess.run(
        [sys.executable, "-m", "selserve", "--version"],
        cwd=ROOT, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 0 and re.fullmatch(r"selserve \d+\.\d+\.\d+\n", result.stdout)


def test_the_start_up_line_names_app_workers_threads_mounts_and_binds(server_factory, tmp_path):
    proc = server_factory(
        None, "--workers", "2", "--threads", "3", "--static", f"/assets={tmp_path}"
    )
    line = next(ln for ln in proc.stderr_text().splitlines() if "selserve 0." in ln)
    for part in ("selserve.demo:app", proc.url, "2 workers", "3 threads", "/assets="):
        assert part in line, line


def test_max_requests_recycles_workers_without_a_failed_request(backend, server_factory, die_app):
    proc = server_factory(
        backend, "--workers", "2", "--max-requests", "40", "--max-requests-jitter", "10",
        "--keepalive-timeout", "0.5", "--chdir", die_app, app="dieapp:app",
    )  # fmt: skip
    first = wait_workers(proc, 2)
    answers = [proc.request(get_request("/pid", extra="Connection: close\r\n")) for _ in range(300)]
    assert all(a.status == 200 for a in answers), [a.status for a in answers if a.status != 200]
    pids = {int(a.body) for a in answers}
    # 300 requests at most 50 per worker: at least 6 workers answered, the first two gone.
    assert len(pids) >= 6 and not set(first) & set(workers_of(proc)), proc.diag(f"{pids}")
    assert "(--max-requests): leaving" in proc.stderr_text()
    assert "died young" not in proc.stderr_text()  # recycled, not crashed: no back-off


def test_max_requests_recycles_a_single_worker_too(backend, server_factory, die_app):
    proc = server_factory(backend, "--max-requests", "20", "--chdir", die_app, app="dieapp:app")
    first = wait_workers(proc, 1)
    answers = [proc.request(get_request("/pid", extra="Connection: close\r\n")) for _ in range(60)]
    assert all(a.status == 200 for a in answers)
    assert len({a.body for a in answers}) >= 3 and workers_of(proc) != first, proc.diag()


def test_sighup_reads_the_config_file_again(backend, server_factory, tmp_path):
    settings = tmp_path / "selserve.toml"
    settings.write_text('server_header = "before"\n')
    proc = server_factory(backend, "--workers", "2", "--config", str(settings))
    before = wait_workers(proc, 2)
    assert proc.get("/").header("Server") == "before"
    settings.write_text('server_header = "after"\n')
    os.kill(proc.pid, signal.SIGHUP)
    assert poll_until(lambda: replaced(proc, before, 2, every=True), 15), proc.diag()
    assert poll_until(lambda: proc.get("/").header("Server") == "after", 5), proc.diag()


def test_a_reload_with_a_broken_config_file_keeps_the_workers(backend, server_factory, tmp_path):
    settings = tmp_path / "selserve.toml"
    settings.write_text('server_header = "kept"\n')
    proc = server_factory(backend, "--workers", "2", "--config", str(settings))
    before = wait_workers(proc, 2)
    settings.write_text("max_conections = 1\n")
    os.kill(proc.pid, signal.SIGHUP)
    assert poll_until(lambda: "reload aborted" in proc.stderr_text(), 5), proc.diag()
    assert workers_of(proc) == before and proc.get("/").header("Server") == "kept"


def test_a_worker_whose_loop_stops_turning_is_killed_and_replaced(backend, server_factory, die_app):
    proc = server_factory(
        backend, "--workers", "2", "--worker-timeout", "2", "--chdir", die_app, app="dieapp:app"
    )
    before = wait_workers(proc, 2)
    with proc.connect() as client:
        client.send(get_request("/hang"))
        hung = poll_until(lambda: "has not turned for" in proc.stderr_text(), 10)
    assert hung, proc.diag()
    after = poll_until(lambda: replaced(proc, before, 2), 5)
    assert after, proc.diag(f"before {before}, now {workers_of(proc)}")
    assert "was killed by signal SIGKILL" in proc.stderr_text()
    assert all(proc.get("/pid").status == 200 for _ in range(10))


def test_busy_workers_are_not_taken_for_hung_ones(backend, server_factory, die_app):
    # Beats come once a second, so a loop blocked for 1 s can leave a gap of 2 s between
    # two of them: a timeout of 3 s must never fire.
    proc = server_factory(
        backend, "--workers", "2", "--worker-timeout", "3", "--chdir", die_app, app="dieapp:app"
    )
    before = wait_workers(proc, 2)
    deadline = time.monotonic() + 6  # twice the timeout, each loop blocked for 1 s at a time
    while time.monotonic() < deadline:
        assert proc.get("/block").status == 200
    assert workers_of(proc) == before and "has not turned" not in proc.stderr_text()


def stats_of(proc: ServerProcess) -> dict:
    answer = proc.get("/_stats")
    assert answer.status == 200, answer
    return json.loads(answer.body)


def test_the_stats_path_answers_for_every_worker(backend, server_factory, die_app):
    proc = server_factory(
        backend, "--workers", "2", "--stats-path", "/_stats", "--chdir", die_app,
        app="dieapp:app",
    )  # fmt: skip
    wait_workers(proc, 2)
    # Which worker accepts a lone connection is the kernel's choice (one took all of 60 in
    # a CI run): 60 requests, and more until both workers have answered (600 at most).
    served_by: set[int] = set()
    sent = 0
    while sent < 60 or (len(served_by) < 2 and sent < 600):
        answer = proc.request(get_request("/pid", extra="Connection: close\r\n"))
        assert answer.status == 200, answer
        served_by.add(int(answer.body))
        sent += 1
    time.sleep(1.2)  # every worker has published its counts since (once a second)
    stats = stats_of(proc)
    assert stats["workers"] == 2 and len(served_by) == 2, stats
    assert set(map(int, stats["requests_by_worker"])) == served_by, stats
    assert sum(stats["requests_by_worker"].values()) == stats["requests"], stats
    # Every /pid request and this /_stats one; the other worker may not count its share of
    # the /_stats calls yet, so: at least those.
    assert sent + 1 <= stats["requests"] <= sent + 2, stats
    assert stats["connections_accepted"] >= sent + 1 and stats["connection_limit"] > 0, stats


def test_counts_survive_a_reload(backend, server_factory, die_app):
    proc = server_factory(
        backend, "--workers", "2", "--stats-path", "/_stats", "--chdir", die_app,
        app="dieapp:app",
    )  # fmt: skip
    before = wait_workers(proc, 2)
    for _ in range(30):
        assert proc.request(get_request("/pid", extra="Connection: close\r\n")).status == 200
    time.sleep(1.2)
    counted = stats_of(proc)["requests"]
    assert counted >= 31
    os.kill(proc.pid, signal.SIGHUP)
    assert poll_until(lambda: replaced(proc, before, 2, every=True), 15), proc.diag()
    assert poll_until(lambda: len(workers_of(proc)) == 2 and "exited" in proc.stderr_text(), 10)
    time.sleep(0.5)
    after = stats_of(proc)
    assert after["requests"] > counted and set(map(int, after["requests_by_worker"])).isdisjoint(
        before
    ), (counted, after)


RELOAD_APP = """
from selserve.app import Response, native

@native
def app(request):
    return Response(200, [], b"VERSION")
"""


def write_app(directory, version: str, stamp: int) -> None:
    path = directory / "reloadapp.py"
    path.write_text(RELOAD_APP.replace("VERSION", version))
    os.utime(path, ns=(stamp, stamp))  # a clearly new mtime, however coarse the clock


def test_reload_restarts_the_worker_when_the_app_changes(backend, server_factory, tmp_path):
    write_app(tmp_path, "one", 1_000_000_000)
    proc = server_factory(backend, "--reload", "--chdir", str(tmp_path), app="reloadapp:app")
    assert proc.get("/").body == b"one"
    assert "--reload is for development" in proc.stderr_text()
    first = wait_workers(proc, 1)
    write_app(tmp_path, "two", 2_000_000_000)
    assert poll_until(lambda: proc.get("/").body == b"two", 10), proc.diag()
    assert "reloadapp.py changed" in proc.stderr_text()
    assert poll_until(lambda: replaced(proc, first, 1, every=True), 10), proc.diag()


def test_reload_keeps_the_old_worker_while_the_app_is_broken(backend, server_factory, tmp_path):
    write_app(tmp_path, "one", 1_000_000_000)
    proc = server_factory(backend, "--reload", "--chdir", str(tmp_path), app="reloadapp:app")
    assert proc.get("/").body == b"one"
    (tmp_path / "reloadapp.py").write_text("def app(:\n")
    os.utime(tmp_path / "reloadapp.py", ns=(2_000_000_000, 2_000_000_000))
    assert poll_until(lambda: "reload aborted" in proc.stderr_text(), 10), proc.diag()
    assert proc.get("/").body == b"one"
    write_app(tmp_path, "three", 3_000_000_000)
    assert poll_until(lambda: proc.get("/").body == b"three", 10), proc.diag()


def test_reload_without_an_app_is_refused():
    done = subprocess.run(
        [sys.executable, "-m", "selserve", "--reload", "--bind", "127.0.0.1:0"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 2 and "--reload needs an APP" in done.stderr, done.stderr


def test_keep_alive_clients_arriving_together_are_spread_over_the_workers(
    backend, server_factory, die_app
):
    proc = server_factory(backend, "--workers", "2", "--chdir", die_app, app="dieapp:app")
    wait_workers(proc, 2)
    time.sleep(1.2)  # both workers have a heartbeat: each counts on the other
    clients = [socket.create_connection(("127.0.0.1", proc.port), timeout=5) for _ in range(20)]
    try:
        served_by = []
        for client in clients:
            client.sendall(get_request("/pid"))
            served_by.append(client.recv(4096).rpartition(b"\r\n\r\n")[2])
    finally:
        for client in clients:
            client.close()
    shares = sorted(served_by.count(pid) for pid in set(served_by))
    # The kernel wakes both and the first to run would take all 20; each takes 8-12 now.
    assert len(shares) == 2 and shares[0] >= 8, shares
