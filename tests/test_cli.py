"""The command line, black box: start-up errors a user can cause exit 2 with one line and no
traceback; `--help`; IPv6 and Unix-socket binds; a graceful stop on SIGTERM/SIGINT."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest
from conftest import BACKENDS, ROOT, RawClient, ServerProcess, free_port, get_request


def run_cli(*args: str, timeout: float = 15.0) -> subprocess.CompletedProcess:
    """Run `python -m selserve ARGS` to completion (killed by subprocess.run on timeout)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "selserve", *args],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_one_line_usage_error(result: subprocess.CompletedProcess) -> str:
    shown = f"exit {result.returncode}\nstdout: {result.stdout!r}\nstderr: {result.stderr!r}"
    assert result.returncode == 2, shown
    assert "Traceback" not in result.stderr, shown
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, shown
    return lines[0]


@pytest.mark.timeout(30)
def test_unknown_backend_exits_2_listing_available_backends():
    result = run_cli(
        "selserve.demo:app", "--backend", "nosuch", "--bind", f"127.0.0.1:{free_port()}"
    )
    line = assert_one_line_usage_error(result)
    assert "nosuch" in line, line
    missing = [name for name in BACKENDS if name not in line]
    assert not missing, f"available backends {missing} not named in: {line!r}"


@pytest.mark.timeout(30)
def test_unknown_backend_without_app_exits_2():
    result = run_cli("--backend", "nosuch", "--bind", f"127.0.0.1:{free_port()}")
    assert_one_line_usage_error(result)


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "bind", ["garbage", "127.0.0.1:notaport", "127.0.0.1:99999", "127.0.0.1:", "[::1"]
)
def test_bad_bind_exits_2_with_one_line(bind):
    result = run_cli("selserve.demo:app", "--bind", bind)
    assert_one_line_usage_error(result)


@pytest.mark.timeout(30)
def test_port_in_use_exits_2_with_one_line():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("selserve.demo:app", "--bind", f"127.0.0.1:{port}")
    assert_one_line_usage_error(result)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("app", ["no_such_module_xyz:app", "selserve.demo:no_such_callable"])
def test_bad_app_path_exits_2_with_one_line(app):
    result = run_cli(app, "--bind", f"127.0.0.1:{free_port()}")
    assert_one_line_usage_error(result)


@pytest.mark.timeout(30)
def test_help_exits_0_and_documents_flags():
    result = run_cli("--help")
    assert result.returncode == 0, result.stderr
    for flag in ("--backend", "--bind", "--max-connections", "--keepalive-timeout", "--log-level"):
        assert flag in result.stdout, f"{flag} missing from --help:\n{result.stdout}"


def ipv6_loopback_usable() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.timeout(30)
@pytest.mark.skipif(not ipv6_loopback_usable(), reason="no IPv6 loopback here")
@pytest.mark.parametrize("backend", BACKENDS)
def test_ipv6_bind_serves(backend, server_factory):
    proc = server_factory(backend, host="::1")
    response = proc.get("/")
    assert response.status == 200, proc.diag(repr(response))
    assert response.body


@pytest.mark.timeout(30)
@pytest.mark.parametrize("backend", BACKENDS)
def test_unix_socket_bind_serves(backend, server_factory):
    directory = tempfile.mkdtemp(prefix="selserve-")  # short: sun_path is ~108 bytes
    try:
        proc = server_factory(backend, unix_path=os.path.join(directory, "s.sock"))
        with RawClient.connect(proc.address, socket.AF_UNIX) as client:
            client.send(
                get_request("/") + b"POST /echo HTTP/1.1\r\nHost: x\r\n"
                b"Content-Length: 4\r\n\r\nunix"
            )
            first = client.read_final_response()
            second = client.read_final_response()
        assert first.status == 200 and first.body, proc.diag(repr(first))
        assert (second.status, second.body) == (200, b"unix"), proc.diag(repr(second))
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_signal_stops_gracefully_with_idle_keepalive_connection(backend, signum):
    proc = ServerProcess(backend, "--keepalive-timeout", "60").start()
    try:
        with proc.connect() as idle:
            idle.send(get_request("/"))
            assert idle.read_final_response().status == 200, proc.diag()
            started = time.monotonic()
            os.kill(proc.pid, signum)
            try:
                returncode = proc.proc.wait(5)
            except subprocess.TimeoutExpired:
                returncode = None
            took = time.monotonic() - started
        assert returncode == 0, proc.diag(f"exit status {returncode} after {took:.1f} s")
        assert "Traceback" not in proc.stderr_text(), proc.diag("traceback on shutdown")
    finally:
        with contextlib.suppress(Exception):
            proc.stop()
