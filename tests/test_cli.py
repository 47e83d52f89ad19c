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
from helpers import BACKENDS, ROOT, RawClient, ServerProcess, free_port, get_request
from tls_certs import make_certs


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


def write_app_package(directory, models: str) -> None:
    """A Django-like package `shop`: shop/wsgi.py imports shop/models.py (`models`)."""
    package = directory / "shop"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "models.py").write_text(models)
    (package / "wsgi.py").write_text(
        "from shop import models  # noqa: F401\n\n\n"
        "def application(environ, start_response):\n"
        "    start_response('200 OK', [])\n"
        "    return [b'hi']\n\n\n"
        "def create_app():\n"
        "    raise RuntimeError('no DATABASE_URL in the environment')\n"
    )


TYPO_MODELS = (
    "class Field:\n"
    "    def __init__(self, max_length=None):\n"
    "        self.max_length = max_length\n\n\n"
    "class Product:\n"
    "    name = Field(max_lenght=200)\n"
)


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "models, spec, where",
    [
        pytest.param(TYPO_MODELS, "shop.wsgi:application", 'models.py", line 7', id="typo"),
        pytest.param("import no_such_dependency_xyz\n", "shop.wsgi:application",
                     'models.py", line 1', id="missing-dependency"),
        pytest.param("", "shop.wsgi:create_app()", 'wsgi.py", line 10', id="factory"),
    ],
)  # fmt: skip
def test_an_error_in_the_apps_own_code_shows_its_traceback_and_exits_2(
    tmp_path, models, spec, where
):
    write_app_package(tmp_path, models)
    result = run_cli("--chdir", str(tmp_path), spec, "--bind", f"127.0.0.1:{free_port()}")
    shown = f"exit {result.returncode}\nstderr: {result.stderr}"
    assert result.returncode == 2, shown
    assert "Traceback (most recent call last)" in result.stderr, shown
    assert where in result.stderr, shown  # down to the app's own line
    assert "<frozen importlib" not in result.stderr and "selserve/cli.py" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("selserve: "), shown


@pytest.mark.timeout(30)
@pytest.mark.parametrize("spec", ["shop.nowsgi:application", "shopx.wsgi:application"])
def test_a_module_missing_from_the_command_line_stays_one_line(tmp_path, spec):
    write_app_package(tmp_path, "")
    result = run_cli("--chdir", str(tmp_path), spec, "--bind", f"127.0.0.1:{free_port()}")
    assert "No module named" in assert_one_line_usage_error(result)


@pytest.mark.timeout(30)
def test_an_access_log_that_cannot_be_opened_exits_2_with_one_line(tmp_path):
    missing = tmp_path / "no" / "such" / "access.log"
    result = run_cli("selserve.demo:app", "--access-log", str(missing), "--bind", "127.0.0.1:0")
    assert "--access-log" in assert_one_line_usage_error(result)


@pytest.mark.timeout(30)
def test_unknown_static_mount_option_exits_2_naming_the_one_there_is():
    result = run_cli("selserve.demo:app", "--static", "/media=./media:lsting")
    line = assert_one_line_usage_error(result)
    assert "'lsting'" in line and "':listing'" in line, line


@pytest.mark.timeout(30)
def test_help_exits_0_and_documents_flags():
    result = run_cli("--help")
    assert result.returncode == 0, result.stderr
    for flag in ("--backend", "--bind", "--max-connections", "--keepalive-timeout", "--log-level"):
        assert flag in result.stdout, f"{flag} missing from --help:\n{result.stdout}"


@pytest.mark.timeout(30)
def test_help_documents_dotfiles_and_the_static_listing_suffix():
    result = run_cli("--help")
    assert "--dotfiles" in result.stdout and "PREFIX=DIR[:listing]" in result.stdout


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


# Runs `selserve ARGS` with a SIGTERM sent the moment its first listener opens: the
# window between listen() and the server's own signal handling that a client (or an
# orchestrator's SIGTERM right after a health check passed) can hit.
SIGTERM_AT_LISTEN = """
import os, signal, sys
from selserve import cli, server

def sigterm_after(open_listener):
    def opened(*args, **kwargs):
        result = open_listener(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)
        return result
    return opened

server.Server.bind = sigterm_after(server.Server.bind)  # one process
cli.create_listener = sigterm_after(cli.create_listener)  # --workers: the supervisor
sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("workers", ["1", "2"], ids=["one-process", "workers"])
def test_a_sigterm_as_the_listeners_open_is_a_graceful_stop(workers):
    port = free_port()
    argv = ["--bind", f"127.0.0.1:{port}", "--workers", workers]
    done = subprocess.run(
        [sys.executable, "-c", SIGTERM_AT_LISTEN, *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    # The default action would end the process with -15 and no word in its log.
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr, done.stderr


@pytest.mark.timeout(30)
def test_a_config_file_with_an_unknown_key_exits_2_naming_it(tmp_path):
    path = tmp_path / "selserve.toml"
    path.write_text("max_conections = 5\n")
    result = run_cli("selserve.demo:app", "--config", str(path))
    assert "'max_conections'" in assert_one_line_usage_error(result)


@pytest.mark.timeout(30)
def test_a_server_takes_its_settings_from_a_config_file(server_factory, tmp_path):
    path = tmp_path / "selserve.toml"
    path.write_text('server_header = "from-the-file"\nstats_path = "/_stats"\n')
    proc = server_factory(None, "--config", str(path))
    response = proc.get("/_stats")
    assert (response.status, response.header("Server")) == (200, "from-the-file")


@pytest.mark.timeout(30)
def test_a_private_key_inside_the_served_directory_is_refused(tmp_path):
    certs = make_certs(tmp_path / "served")  # the key lands in the directory served
    tls = ("--certfile", str(certs.server_cert), "--keyfile", str(certs.server_key))
    line = assert_one_line_usage_error(
        run_cli("--root", str(tmp_path), *tls, "--bind", f"127.0.0.1:{free_port()}")
    )
    assert "inside the served directory" in line and str(certs.server_key) in line, line
    mounted = run_cli(
        "selserve.demo:app", "--static", f"/files={tmp_path}", *tls,
        "--bind", f"127.0.0.1:{free_port()}",
    )  # fmt: skip
    assert "inside the served directory" in assert_one_line_usage_error(mounted)


@pytest.mark.timeout(30)
def test_a_private_key_in_a_hidden_directory_of_the_served_one_is_allowed(tmp_path):
    certs = make_certs(tmp_path / ".tls")  # dot-files are never served (without --dotfiles)
    server = ServerProcess(
        None, "--root", str(tmp_path), "--certfile", str(certs.server_cert),
        "--keyfile", str(certs.server_key), app=None,
    )  # fmt: skip
    try:
        server.start()
        assert server.proc.poll() is None, server.diag("refused a key no one can download")
    finally:
        server.stop()
