"""The suite's own hygiene: a test run ended by SIGTERM still stops what its tests started
(conftest.py turns SIGTERM into KeyboardInterrupt)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parent

STARTS_A_SERVER_AND_WAITS = """
import time

def test_waits(server_factory):
    proc = server_factory("poll")
    open(PID_FILE, "w").write(str(proc.proc.pid))
    time.sleep(60)
"""


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # (a zombie, exited but not yet reaped by its parent, has stopped too)
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0] != "Z"


def test_a_test_run_ended_by_sigterm_still_stops_the_servers_it_started(tmp_path):
    pid_file = tmp_path / "server.pid"
    test_file = tmp_path / "test_inner.py"
    test_file.write_text(f"PID_FILE = {str(pid_file)!r}\n" + STARTS_A_SERVER_AND_WAITS)
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])
    )
    run = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-p", "conftest", "-p", "no:cacheprovider",
         "--rootdir", str(tmp_path), str(test_file)],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    server_pid = None
    try:
        deadline = time.monotonic() + 30
        while not pid_file.exists() or not pid_file.read_text():
            assert run.poll() is None, run.stdout.read().decode(errors="replace")
            assert time.monotonic() < deadline, "the inner test never started its server"
            time.sleep(0.1)
        server_pid = int(pid_file.read_text())
        assert alive(server_pid)
        run.send_signal(signal.SIGTERM)
        run.wait(timeout=20)
        assert not alive(server_pid), "the server outlived the run that started it"
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
        if server_pid is not None and alive(server_pid):
            os.kill(server_pid, signal.SIGKILL)  # (ours: started by the run we started)
