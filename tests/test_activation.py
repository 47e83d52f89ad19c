"""Listening sockets handed down: systemd socket activation (through Debian's
`systemd-socket-activate`) and `--bind fd://N`, with and without --workers."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
from helpers import ROOT, RawClient, free_port, get_request

from selserve.activation import activated_binds

pytestmark = pytest.mark.timeout(60)
ACTIVATE = shutil.which("systemd-socket-activate")


def run_server(argv: list[str], **popen) -> subprocess.Popen:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return subprocess.Popen(
        argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, start_new_session=True, **popen,
    )  # fmt: skip


def stop(proc: subprocess.Popen) -> tuple[int, str]:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    return proc.returncode, proc.stderr.read().decode(errors="replace")


def get_root(port: int, timeout: float = 10.0) -> int:
    """GET / on a fresh connection, retrying while nothing listens yet."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with RawClient.connect(("127.0.0.1", port), timeout=5) as client:
                client.send(get_request("/"))
                return client.read_final_response().status
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@pytest.mark.skipif(ACTIVATE is None, reason="systemd-socket-activate missing (Debian: systemd)")
@pytest.mark.parametrize("workers", ["1", "2"])
def test_sockets_from_systemd_are_served_without_a_bind(workers):
    port = free_port()
    proc = run_server(
        [ACTIVATE, "-l", f"127.0.0.1:{port}", sys.executable, "-m", "selserve",
         "selserve.demo:app", "--workers", workers],
    )  # fmt: skip
    try:
        status = get_root(port)  # the first connection starts selserve, which takes it
        time.sleep(0.2)
        second = get_root(port)
    finally:
        code, stderr = stop(proc)
    assert (status, second) == (200, 200), stderr
    assert code == 0, stderr
    assert f"on http://127.0.0.1:{port}" in stderr  # the inherited socket, not 8000


def test_bind_fd_serves_an_inherited_listening_socket():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        fd = listener.fileno()
        proc = run_server(
            [sys.executable, "-m", "selserve", "selserve.demo:app", "--bind", f"fd://{fd}"],
            pass_fds=(fd,),
        )
    try:
        status = get_root(port)
    finally:
        code, stderr = stop(proc)
    assert status == 200 and code == 0, stderr


@pytest.mark.parametrize("bind", ["fd://99", "fd://abc", "fd://0"])
def test_a_bind_fd_that_is_not_a_listening_socket_exits_2_with_one_line(bind):
    result = subprocess.run(
        [sys.executable, "-m", "selserve", "selserve.demo:app", "--bind", bind],
        cwd=ROOT, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and bind in lines[0], result.stderr


def test_sockets_meant_for_another_process_are_left_alone():
    environ = {"LISTEN_FDS": "2", "LISTEN_PID": str(os.getpid() + 1), "LISTEN_FDNAMES": "a:b"}
    assert activated_binds(environ) == [] and environ == {}


def test_sockets_meant_for_this_process_become_binds():
    environ = {"LISTEN_FDS": "2", "LISTEN_PID": str(os.getpid())}
    assert activated_binds(environ) == ["fd://3", "fd://4"] and environ == {}
