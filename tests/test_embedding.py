"""The embedding API: serve() takes native and WSGI applications alike."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from selserve import Config
from selserve.demo import app as demo_app
from selserve.server import as_native
from selserve.static import StaticFiles
from selserve.wsgi import WSGIAdapter

pytestmark = pytest.mark.timeout(30)
ROOT = Path(__file__).parent.parent

LAUNCHER = """
import sys
from selserve import serve

def hello(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"plain wsgi via serve()"]

serve(hello, binds=[sys.argv[1]], log_level="warning")
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_as_native_keeps_native_apps_and_wraps_wsgi_ones(tmp_path):
    config = Config()
    static = StaticFiles(tmp_path)
    assert as_native(demo_app, config) is demo_app
    assert as_native(static, config) is static

    def wsgi(environ, start_response):
        return []

    wrapped = as_native(wsgi, Config(root_path="/app", threads=2))
    assert isinstance(wrapped, WSGIAdapter)
    assert (wrapped.app, wrapped.root_path) == (wsgi, "/app")


def test_serve_hosts_a_plain_wsgi_function():
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, f"127.0.0.1:{port}"],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=5)
                break
            except OSError:
                assert proc.poll() is None, proc.stderr.read().decode()
                assert time.monotonic() < deadline, "server did not start"
                time.sleep(0.05)
        with sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 200")
        assert answer.endswith(b"plain wsgi via serve()")
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
