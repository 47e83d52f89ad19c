"""Being a good citizen behind a balancer: the health path, the drain before a stop
(--drain-delay), and the clients queued on a listener served rather than reset when it
closes; as one process and as workers, against real server processes."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time

import pytest
from helpers import get_request, poll_until

pytestmark = pytest.mark.timeout(60)

SLOW_APP = """
import time

def app(environ, start_response):
    if environ["PATH_INFO"] == "/slow":
        time.sleep(float(environ["QUERY_STRING"] or "1.5"))
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello"]
"""


@pytest.fixture(params=["epoll", "poll"])
def backend(request):
    return request.param


@pytest.fixture(params=["1", "2"], ids=["one-process", "workers"])
def workers(request):
    return request.param


@pytest.fixture
def slow_app(tmp_path):
    (tmp_path / "slowapp.py").write_text(SLOW_APP)
    return str(tmp_path)


def test_the_health_path_answers_before_the_app(backend, workers, server_factory):
    proc = server_factory(backend, "--workers", workers, "--health-path", "/healthz")
    answer = proc.get("/healthz")
    assert (answer.status, answer.body) == (200, b"ok\n")
    assert answer.header("Cache-Control") == "no-store"
    head = proc.request(get_request("/healthz").replace(b"GET", b"HEAD", 1), method="HEAD")
    assert head.status == 200 and head.body == b""
    assert proc.get("/").status == 200  # the demo app is still behind it


def test_a_drain_answers_503_on_the_health_path_and_goes_on_serving(
    backend, workers, server_factory
):
    proc = server_factory(
        backend, "--workers", workers, "--health-path", "/healthz", "--drain-delay", "2"
    )
    assert proc.get("/healthz").status == 200
    stopped_at = time.monotonic()
    os.kill(proc.pid, signal.SIGTERM)
    assert poll_until(lambda: proc.get("/healthz").status == 503, 1), proc.diag()
    assert proc.get("/healthz").body == b"draining\n"
    # New connections are still accepted and answered while the balancer catches up.
    assert all(proc.get("/").status == 200 for _ in range(10))
    assert proc.proc.wait(10) == 0
    assert time.monotonic() - stopped_at >= 1.9, "stopped before the drain delay ended"
    assert "draining: the health path answers 503" in proc.stderr_text()


def test_a_second_sigterm_ends_the_drain_at_once(backend, workers, server_factory):
    proc = server_factory(
        backend, "--workers", workers, "--health-path", "/healthz", "--drain-delay", "30"
    )
    os.kill(proc.pid, signal.SIGTERM)
    assert poll_until(lambda: proc.get("/healthz").status == 503, 2), proc.diag()
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.proc.wait(10) == 0


def test_clients_queued_on_the_listener_are_served_when_it_closes(
    backend, workers, server_factory, slow_app
):
    # One connection per worker, and each busy with a slow view: the other clients wait
    # in the listen backlog, accepted by no one, when SIGTERM comes.
    proc = server_factory(
        backend, "--workers", workers, "--max-connections", "1", "--chdir", slow_app,
        app="slowapp:app",
    )  # fmt: skip
    slow = []
    busy = [
        threading.Thread(target=lambda: slow.append(proc.get("/slow", timeout=10).status))
        for _ in range(int(workers))
    ]
    for thread in busy:
        thread.start()
    time.sleep(0.5)
    queued = [socket.create_connection(proc.address, timeout=10) for _ in range(10)]
    try:
        for client in queued:
            client.sendall(get_request("/"))
        time.sleep(0.2)
        os.kill(proc.pid, signal.SIGTERM)
        answers = [_read_until_closed(client) for client in queued]
    finally:
        for client in queued:
            client.close()
        for thread in busy:
            thread.join(15)
    assert all(a.startswith(b"HTTP/1.1 200 ") and a.endswith(b"hello") for a in answers), [
        a[:40] for a in answers
    ]
    assert all(b"Connection: close" in a for a in answers)
    assert slow == [200] * int(workers)
    assert proc.proc.wait(10) == 0


def _read_until_closed(client: socket.socket) -> bytes:
    data = b""
    try:
        while chunk := client.recv(65536):
            data += chunk
    except ConnectionResetError:
        return data + b"<reset>"
    return data
