"""The worker pool (--threads N): blocking apps off the loop, streamed bodies with backpressure."""

from __future__ import annotations

import socket
import threading
import time

import psutil
import pytest

from selserve import Response, Server, backends
from selserve.app import native

pytestmark = pytest.mark.timeout(60)

BLOCK = b"z" * 65536
closed_bodies: list[str] = []


def endless():
    try:
        while True:
            yield BLOCK
    finally:
        closed_bodies.append("endless")


@native
def app(request):
    if request.path == "/slow":
        time.sleep(1)
        return Response(200, [], b"slow\n")
    if request.path == "/trickle":

        def trickle():
            for i in range(5):
                time.sleep(0.02)
                yield b"%d;" % i

        return Response(200, [], trickle())
    if request.path == "/endless":
        return Response(200, [], endless())
    if request.path == "/fail":
        raise RuntimeError("app bug")
    return Response(200, [], b"quick\n")


@pytest.fixture(params=backends.available())
def server(request):
    srv = Server(app, binds=["127.0.0.1:0"], backend=request.param, threads=4)
    srv.bind()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    srv.port = srv.listeners[0].local[1]
    yield srv
    srv.shutdown()
    thread.join(10)
    assert not thread.is_alive(), "server did not stop"


def get(port: int, path: str, timeout: float = 5) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(b"GET %s HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n" % path.encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data


def test_slow_app_does_not_delay_a_quick_request(server):
    slow = threading.Thread(target=get, args=(server.port, "/slow"))
    slow.start()
    time.sleep(0.1)  # let the slow request occupy a worker
    started = time.monotonic()
    answer = get(server.port, "/quick")
    elapsed = time.monotonic() - started
    slow.join()
    assert answer.endswith(b"quick\n")
    assert elapsed < 0.5


def test_streamed_body_from_a_worker_arrives_whole_and_chunked(server):
    answer = get(server.port, "/trickle")
    assert b"Transfer-Encoding: chunked" in answer
    assert answer.endswith(b"2\r\n0;\r\n2\r\n1;\r\n2\r\n2;\r\n2\r\n3;\r\n2\r\n4;\r\n0\r\n\r\n")


def test_app_exception_in_a_worker_gives_500_and_the_connection_stays_usable(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"GET /fail HTTP/1.1\r\nHost: t\r\n\r\n")
        first = sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 500")


def test_endless_body_to_a_stalled_client_keeps_memory_bounded_and_closes_on_disconnect(server):
    closed_bodies.clear()
    rss_before = psutil.Process().memory_info().rss
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.sendall(b"GET /endless HTTP/1.1\r\nHost: t\r\n\r\n")
    assert sock.recv(100).startswith(b"HTTP/1.1 200")
    time.sleep(1.0)  # the worker fills the hand-over queue and waits
    growth = psutil.Process().memory_info().rss - rss_before
    assert growth < 32 * 1024 * 1024
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()  # RST: the server's next send fails and it abandons the body
    deadline = time.monotonic() + 5
    while not closed_bodies and time.monotonic() < deadline:
        time.sleep(0.05)
    assert closed_bodies == ["endless"]
    assert get(server.port, "/quick").endswith(b"quick\n")
