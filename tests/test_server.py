"""The server in process (real sockets, one thread): application failures, answers from the
head, server-side failures, what an app may answer, on every backend."""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
import time

import pytest

from selserve import Response, Server, backends
from selserve.app import native
from selserve.listeners import refuse_new_clients

pytestmark = pytest.mark.timeout(30)


def failing_body(after: int, size: int = 100):
    for _ in range(after):
        yield b"y" * size
    raise RuntimeError("body bug")


@native
def app(request):
    if request.path == "/raise":
        raise RuntimeError("app bug")
    if request.path == "/not-a-response":
        return "oops"
    if request.path == "/bad-header":
        return Response(200, [("X-Evil", "a\r\nSet-Cookie: owned=1")], b"body")
    if request.path == "/fail-at-once":
        return Response(200, [], failing_body(0))
    if request.path == "/fail-late":
        # far past the high-water mark: part of the answer has gone out
        return Response(200, [], failing_body(20_000, 1024))
    if request.path == "/describe":
        seen = (
            request.method,
            request.host,
            request.header("X-Tag"),
            request.body,
            request.stream.read(),
            request.peer[0],
            request.local[0],
        )
        return Response(200, [], repr(seen).encode())
    return Response(200, [], b"fine")


@pytest.fixture(params=backends.available())
def port(request, caplog):
    srv = Server(app, binds=["127.0.0.1:0"], backend=request.param, header_timeout=0.5)
    srv.bind()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv.listeners[0].local[1]
    srv.shutdown()
    thread.join(10)


def read_response(sock: socket.socket) -> tuple[bytes, bytes]:
    """One Content-Length response: (head, body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before a full head: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(
        next(line for line in head.split(b"\r\n") if line.startswith(b"Content-Length")).split(
            b":"
        )[1]
    )
    while len(body) < length:
        body += sock.recv(65536)
    return head, body


def ask(sock: socket.socket, path: str) -> tuple[bytes, bytes]:
    sock.sendall(b"GET %s HTTP/1.1\r\nHost: t\r\n\r\n" % path.encode())
    return read_response(sock)


@pytest.mark.parametrize("path", ["/raise", "/not-a-response", "/bad-header", "/fail-at-once"])
def test_failure_before_the_answer_started_gives_500_and_keeps_the_connection(port, path):
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        head, _ = ask(sock, path)
        assert head.startswith(b"HTTP/1.1 500")
        assert b"Set-Cookie" not in head
        head, body = ask(sock, "/")
        assert head.startswith(b"HTTP/1.1 200") and body == b"fine"


def test_failure_after_part_of_the_answer_went_out_closes_the_connection(port):
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET /fail-late HTTP/1.1\r\nHost: t\r\n\r\n")
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        assert received.startswith(b"HTTP/1.1 200")
        assert not received.endswith(b"0\r\n\r\n")  # never looks complete


def test_a_trickled_head_is_cut_off_at_the_header_timeout(port):
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        head, _ = ask(sock, "/")  # a keep-alive request first: the idle timer is 5 s
        assert head.startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        received = b""
        for byte in b"GET / HTTP/1.1\r\nHost: slow\r\nX-Pad: " + b"a" * 40:
            try:
                sock.send(bytes([byte]))
            except OSError:
                break
            time.sleep(0.05)
            if time.monotonic() - started > 3:
                break
        sock.settimeout(3)
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except ConnectionResetError:
            pass
        elapsed = time.monotonic() - started
    assert received.startswith(b"HTTP/1.1 408")
    assert 0.4 < elapsed < 2.0, f"cut off after {elapsed:.2f} s, header timeout is 0.5 s"


def test_each_request_carries_its_own_head_body_and_addresses(port):
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(
            b"POST /describe HTTP/1.1\r\nHost: one\r\nX-Tag: a\r\nContent-Length: 4\r\n\r\nbody"
            b"GET /describe HTTP/1.1\r\nHost: two\r\n\r\n"  # pipelined: no body of its own
        )
        received = b""
        while received.count(b"'127.0.0.1')") < 2:  # how each answer ends
            chunk = sock.recv(65536)
            assert chunk, f"closed after {received!r}"
            received += chunk
    answers = [part.partition(b"\r\n\r\n")[2] for part in received.split(b"HTTP/1.1 ")[1:]]
    assert answers == [
        repr(("POST", "one", "a", b"body", b"body", "127.0.0.1", "127.0.0.1")).encode(),
        repr(("GET", "two", None, b"", b"", "127.0.0.1", "127.0.0.1")).encode(),
    ]


# -- answering from the head, server-side failures, what apps may answer -------------


@native
def guarded(request):
    """Reads bodies only on POST /upload; everything else it answers from the head."""
    if request.path == "/interim":
        return Response(100, [], b"")
    if request.path == "/status-600":
        return Response(600, [], b"x")
    if request.path == "/escape-in-header":
        return Response(200, [("X-Term", "\x1b]0;owned\x07")], b"body")
    if request.path == "/nope":
        return Response(404, [], b"", reason="Nope")
    if request.path == "/upload" and request.method == "POST":
        return Response(200, [], b"%d" % len(request.body))
    return Response(405, [("Allow", "GET")], b"no\n")


def _guard_head(request):
    if request.path == "/upload" and request.method == "POST":
        return None
    return guarded(request)


guarded.on_head = _guard_head


@contextlib.contextmanager
def serving(app, backend, **settings):
    srv = Server(app, binds=["127.0.0.1:0"], backend=backend, **settings)
    srv.bind()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield srv, srv.listeners[0].local[1]
    finally:
        srv.shutdown()
        thread.join(10)


@pytest.fixture(params=backends.available())
def backend(request):
    return request.param


def read_all(sock: socket.socket, limit: float = 5.0) -> bytes:
    sock.settimeout(limit)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    return received


def test_a_request_refused_from_its_head_gets_its_answer_without_100_continue(backend):
    with (
        serving(guarded, backend) as (_, port),
        socket.create_connection(("127.0.0.1", port), timeout=5) as sock,
    ):
        sock.sendall(
            b"POST /file HTTP/1.1\r\nHost: t\r\nContent-Length: 100000000\r\n"
            b"Expect: 100-continue\r\n\r\n"
        )
        sock.settimeout(3)
        first = sock.recv(65536)  # sent before any body byte: the answer, not 100
    assert first.startswith(b"HTTP/1.1 405 "), first
    assert b"\r\nConnection: close\r\n" in first


def test_a_body_refused_from_its_head_is_never_stored(backend):
    body = b"b" * (3 * 1024 * 1024)  # past the 1 MiB spill threshold
    with serving(guarded, backend) as (srv, port):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(
                b"POST /file HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % len(body)
            )
            try:
                sock.sendall(body)
            except OSError:
                pass  # the server may close once its lingering bound is reached
            refused = read_all(sock)
        stored_for_refusal = srv.stats()["events"].get("body-spilled", 0)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(
                b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % len(body)
            )
            sock.sendall(body)
            head, answer = read_response(sock)
        stored_for_upload = srv.stats()["events"].get("body-spilled", 0)
    assert refused.startswith(b"HTTP/1.1 405 ")
    assert (stored_for_refusal, stored_for_upload) == (0, 1)  # the control does spill
    assert answer == b"%d" % len(body)


@pytest.mark.parametrize("path", ["/interim", "/status-600", "/escape-in-header"])
def test_an_answer_no_client_could_read_right_becomes_a_500(backend, path):
    with (
        serving(guarded, backend) as (_, port),
        socket.create_connection(("127.0.0.1", port), timeout=5) as sock,
    ):
        head, _ = ask(sock, path)
        assert head.startswith(b"HTTP/1.1 500 "), head
        assert b"\x1b" not in head
        head, body = ask(sock, "/nope")  # the connection is still in step
    assert head.startswith(b"HTTP/1.1 404 Nope\r\n")


def test_an_access_log_that_cannot_be_written_never_costs_a_connection_slot(backend, caplog):
    # A log on a full disk once raised in close(): the slot was never freed and, at
    # the cap, nothing was answered again.
    agent = b"a" * 30_000
    with serving(guarded, backend, access_log="/dev/full", max_connections=4) as (srv, port):
        for _ in range(12):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                sock.sendall(b"GET /nope HTTP/1.1\r\nHost: t\r\nUser-Agent: %s\r\n\r\n" % agent)
                head, _ = read_response(sock)
                assert head.startswith(b"HTTP/1.1 404")
        assert poll_until(lambda: not srv.connections, 5), srv.connections
        lost = srv.stats()["events"].get("access-log-lines-lost", 0)
    assert lost >= 1


def poll_until(predicate, timeout: float):
    deadline = time.monotonic() + timeout
    while not (value := predicate()) and time.monotonic() < deadline:
        time.sleep(0.02)
    return value


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a Linux socket filter")
def test_a_listener_refusing_new_clients_still_hands_over_the_queued_ones():
    listener = socket.create_server(("127.0.0.1", 0))
    try:
        queued = socket.create_connection(listener.getsockname(), timeout=2)
        refuse_new_clients(listener)
        late = socket.socket()
        late.settimeout(0.5)
        with pytest.raises(TimeoutError):  # its SYN is dropped: no handshake completes
            late.connect(listener.getsockname())
        late.close()
        accepted, _ = listener.accept()  # the one queued before is still there
        queued.sendall(b"x")
        assert accepted.recv(1) == b"x"
        accepted.close()
        queued.close()
    finally:
        listener.close()


def test_the_connection_reclaimed_at_the_cap_is_the_longest_idle_of_either_queue():
    # New connections and kept-alive ones wait in two queues (context.py): the one to
    # make room is the older of their two heads, once idle for RECLAIM_MIN_IDLE.
    srv = Server(app, binds=["127.0.0.1:0"])
    try:
        new, kept, newer = object(), object(), object()
        srv.context.fresh.members.update({new: 10.0, newer: 10.2})
        srv.context.kept_alive.members[kept] = 9.8
        srv.loop.now = 10.1
        assert srv._longest_idle() == (kept, 9.8) and srv._reclaimable() is None  # too young
        srv.loop.now = 10.4
        assert srv._reclaimable() is kept
        del srv.context.kept_alive.members[kept]
        assert srv._reclaimable() is None  # `new` has been idle 0.4 s
        srv.loop.now = 10.5
        assert srv._reclaimable() is new
    finally:
        srv.loop.close()


# -- an answer built before a stop and sent after it ------------------------------------


@pytest.fixture
def hello_srv():
    """A server driven turn by turn by the test (no listeners, accepting as if serving)."""
    srv = Server(app, binds=["127.0.0.1:0"])
    srv._resume_accepting()
    yield srv
    srv.loop.close()


def turn(srv):
    srv.loop.call_soon(int)  # (a turn that does not wait)
    srv.loop.run_once()


def hello_on_a_new_connection(srv, port: int = 40000) -> socket.socket:
    """The client's end of a connection whose request the server has read and answered
    (the answer leaves at the end of the turn)."""
    ours, theirs = socket.socketpair()
    theirs.settimeout(5)
    theirs.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    srv.accepted(ours, ("127.0.0.1", port), ("127.0.0.1", 8000))
    return theirs


def answer_queued_then_stop(srv, stop) -> socket.socket:
    """A request answered in a turn in which the server then begins to stop: its
    head promised keep-alive, and it leaves at the end of that turn."""
    client = hello_on_a_new_connection(srv)
    stop()
    turn(srv)
    first = client.recv(65536)
    assert first.startswith(b"HTTP/1.1 200 ") and b"Connection: close" not in first
    return client


def test_after_a_graceful_stop_a_promised_keep_alive_is_kept_for_the_next_request(hello_srv):
    with answer_queued_then_stop(hello_srv, hello_srv.leave) as client:
        turn(hello_srv)
        assert len(hello_srv.connections) == 1  # not closed in the client's face
        client.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        turn(hello_srv)
        second = client.recv(65536)
        assert second.startswith(b"HTTP/1.1 200 ") and b"Connection: close" in second
        assert client.recv(1) == b"" and not hello_srv.connections


def test_after_an_interrupt_a_promised_keep_alive_is_closed_once_idle(hello_srv):
    with answer_queued_then_stop(hello_srv, hello_srv.interrupt) as client:
        turn(hello_srv)
        assert client.recv(1) == b"" and not hello_srv.connections  # at once, not at a deadline


def test_connections_going_idle_together_after_a_stop_are_closed_in_one_pass(hello_srv):
    clients = [hello_on_a_new_connection(hello_srv, 40000 + i) for i in range(5)]
    try:
        hello_srv.interrupt()  # (their answers are queued: none is idle yet)
        passes = []
        close_idle = hello_srv._close_idle
        hello_srv._close_idle = lambda: passes.append(1) or close_idle()
        turn(hello_srv)  # the answers leave, and each connection goes idle
        turn(hello_srv)
        assert passes == [1] and not hello_srv.connections
        for client in clients:
            assert client.recv(65536).startswith(b"HTTP/1.1 200 ") and client.recv(1) == b""
    finally:
        for client in clients:
            client.close()
