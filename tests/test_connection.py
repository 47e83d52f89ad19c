"""Connection, alone: a fake transport and a fake loop stand in for the socket and the
event loop (as waitress tests its channel with a DummySock), so every test runs without
a socket, a thread or a clock, and can make a send fail or stall at the byte it likes."""

from __future__ import annotations

import errno
import tempfile

import pytest
from fakes import FakeLoop, FakeTransport, TurnsMixin

from selserve.app import FileBody, Response, native
from selserve.backends import READABLE, WRITABLE
from selserve.connection import Connection
from selserve.context import ConnectionContext
from selserve.dispatch import Dispatch
from selserve.http.exchange import ExchangeSettings
from selserve.reasons import (
    BODY_TIMEOUT,
    DONE,
    HEADER_TIMEOUT,
    KEEPALIVE_TIMEOUT,
    PEER_CLOSED,
    PROXY_REFUSED,
    PROXY_TIMEOUT,
    SEND_ERROR,
    WRITE_TIMEOUT,
)
from selserve.workers import WAIT

HELLO = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"
FIXED = b"Date: X\r\nServer: t\r\n"


@native
def app(request):
    if request.path == "/stream":
        return Response(200, [], (b"p" * 1000 for _ in range(1000)))
    if request.path == "/echo":
        return Response(200, [], request.body)
    if request.path == "/peer":
        return Response(200, [], f"{request.peer} {request.local}".encode())
    return Response(200, [("Content-Type", "text/plain")], b"hello")


class Harness(TurnsMixin):
    def __init__(self, app=app, window=None, proxy_protocol=False, **context):
        self.loop = FakeLoop()
        self.closed: list[str] = []
        self.idle_calls = 0
        self.spills = 0
        settings = ExchangeSettings(open_spill_file=self._spill, spill_threshold=1024, fixed=FIXED)
        self.context = ConnectionContext(
            loop=self.loop,
            settings=settings,
            dispatch=Dispatch(app),
            closed=lambda conn, reason: self.closed.append(reason),
            became_idle=self._became_idle,
            body_store_failed=lambda exc: None,
            **context,
        )
        self.context.accepting = True
        self.transport = FakeTransport(self.loop, window)
        self.conn = Connection(
            self.context, self.transport, ("10.0.0.1", 5000), ("10.0.0.2", 80), proxy_protocol
        )

    def _spill(self):
        self.spills += 1
        return tempfile.TemporaryFile()  # noqa: SIM115 (the exchange closes it)

    def _became_idle(self):
        self.idle_calls += 1

    def send(self, *pieces: bytes) -> None:
        """The client sends these (each one recv) and the loop reports readability."""
        self.transport.inbound.extend(pieces)
        for _ in pieces:
            self.conn.on_readable()
            self.loop.end_turn()

    def answers(self) -> list[bytes]:
        return [b"HTTP/1.1 " + part for part in bytes(self.transport.sent).split(b"HTTP/1.1 ")[1:]]


def test_a_keep_alive_hello_is_answered_with_one_send():
    h = Harness()
    h.send(HELLO)
    assert (h.transport.sends, h.answers()) == (1, [h.answers()[0]])
    assert h.answers()[0].endswith(b"\r\n\r\nhello")


def test_after_a_keep_alive_answer_the_connection_waits_idle_for_the_next_request():
    h = Harness()
    h.send(HELLO)
    assert h.conn in h.context.kept_alive and h.conn.timeout_reason is KEEPALIVE_TIMEOUT
    # Timed by the queue, with no timer of its own (loop.DeadlineQueue).
    assert h.conn.timer is None and h.conn.deadline == h.loop.now + 5.0
    assert h.loop.watched == {7: READABLE} and h.loop.modifies == 0


def test_pipelined_requests_are_answered_in_order():
    h = Harness()
    h.send(
        HELLO.replace(b"/ ", b"/a ")
        + b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc"
        + HELLO
    )
    assert [a.rsplit(b"\r\n\r\n", 1)[1] for a in h.answers()] == [b"hello", b"abc", b"hello"]


def test_an_answer_leaves_at_the_end_of_the_loops_turn_with_the_turns_others():
    h = Harness()
    h.transport.inbound.append(HELLO)
    h.conn.on_readable()
    assert h.transport.sent == b"" and h.loop.writers == [h.conn]
    assert h.conn.timer is None  # (no deadline needed: the loop writes before it waits)
    h.loop.end_turn()
    assert h.answers()[0].endswith(b"hello") and h.transport.sends == 1
    assert h.conn in h.context.kept_alive and h.loop.watched == {7: READABLE}


def test_a_connection_closed_before_the_end_of_its_turn_writes_nothing():
    h = Harness()
    h.transport.inbound.append(HELLO)
    h.conn.on_readable()
    h.conn.close(DONE)  # (shutdown, say, later in the same turn)
    h.loop.end_turn()
    assert h.transport.sent == b"" and h.closed == [DONE]
    assert h.loop.watched == {} and h.loop.log == [f"watch {READABLE}", "unwatch", "close"]


def test_an_answer_the_socket_does_not_take_at_once_waits_for_writability():
    h = Harness(window=10)
    h.send(HELLO)
    assert h.loop.watched[7] == WRITABLE and h.conn.timeout_reason is WRITE_TIMEOUT
    h.transport.window = None
    h.writable()
    assert h.answers()[0].endswith(b"hello") and h.loop.watched[7] == READABLE


def test_an_idle_connection_lends_its_parser_out_and_takes_one_for_the_next_request():
    h = Harness()
    assert h.conn.exchange.parser is None  # (a new connection: taken with the first bytes)
    h.send(HELLO)
    spares = h.context.settings.spare_parsers
    assert h.conn.exchange.parser is None and len(spares) == 1
    h.send(HELLO)
    assert len(h.answers()) == 2 and len(spares) == 1


def test_a_client_that_closes_while_its_answer_is_blocked_is_closed_and_lends_nothing():
    h = Harness(window=10)
    h.send(HELLO)
    h.send(b"")  # it half-closes, its answer not yet out
    h.transport.window = None
    h.writable()
    assert h.answers()[0].endswith(b"hello") and h.closed == [PEER_CLOSED]
    assert h.context.settings.spare_parsers == []  # (a parser past EOF is nobody's spare)


def test_a_streamed_body_is_pulled_only_up_to_high_water_while_the_client_reads_nothing():
    pulled = []

    @native
    def streaming(request):
        def body():
            for i in range(10_000):
                pulled.append(i)
                yield b"x" * 1000

        return Response(200, [], body())

    h = Harness(streaming, window=0, high_water=64 * 1024, low_water=16 * 1024)
    h.send(HELLO)
    # 1 KB pieces (1,007 bytes framed) until the buffer holds 64 KiB, then nothing more.
    assert len(pulled) <= 66
    assert h.conn.out.size <= 64 * 1024 + 1100


@pytest.mark.parametrize("at_send", [0, 1, 3])
def test_a_send_that_fails_closes_once_unwatching_before_closing(at_send):
    h = Harness(window=None)
    h.send(HELLO)
    for _ in range(at_send):
        h.send(HELLO)
    h.transport.fail = errno.EPIPE
    h.send(b"GET /stream HTTP/1.1\r\nHost: t\r\n\r\n")
    assert h.closed == [SEND_ERROR]
    assert h.loop.log[-2:] == ["unwatch", "close"]


def test_a_failing_access_log_still_frees_the_slot():
    def exploding(*args):
        raise RuntimeError("log bug")

    h = Harness(observe=exploding)
    h.conn.status = 200  # an answer was in progress
    h.conn.exchange.request = object()
    with pytest.raises(RuntimeError):
        h.conn.close(DONE)
    assert h.closed == [DONE] and h.transport.closed


def test_a_head_that_does_not_complete_runs_the_header_timeout_from_its_first_byte():
    h = Harness()
    h.send(HELLO)  # keep-alive: the idle timer runs
    h.loop.now += 2
    h.send(b"GET / HTTP/1.1\r\n")
    first = h.conn.deadline
    assert first == h.loop.now + 10.0 and h.conn not in h.context.kept_alive
    h.loop.now += 1
    h.send(b"Host: t\r\n")  # trickled bytes do not push it back
    assert h.conn.timeout_reason is HEADER_TIMEOUT and h.conn.deadline == first


def test_a_new_connection_waits_idle_and_its_head_has_the_header_timeout_from_accept():
    h = Harness()
    accepted = h.loop.now
    assert h.conn in h.context.fresh and h.conn.timer is None
    assert h.conn.deadline == accepted + 10.0
    h.loop.now += 4
    h.send(b"GET / HTTP/1.1\r\n")  # the first bytes, 4 s after accept
    assert h.conn not in h.context.fresh and h.conn.timeout_reason is HEADER_TIMEOUT
    assert h.conn.deadline == accepted + 10.0
    h.send(b"Host: t\r\n\r\n")
    assert h.answers()[0].endswith(b"hello") and h.conn in h.context.kept_alive


def test_a_new_connection_that_sends_nothing_is_closed_by_its_queue():
    h = Harness()
    h.context.fresh._expire()  # (the queue's timer, early: nothing is due yet)
    assert not h.closed and h.conn in h.context.fresh
    h.loop.now += 10.0
    h.context.fresh._expire()
    assert h.closed == [HEADER_TIMEOUT] and h.transport.sent == b""
    assert h.conn not in h.context.fresh


def test_a_kept_alive_connection_is_closed_by_its_queue_without_an_answer():
    h = Harness()
    h.send(HELLO)
    sent = bytes(h.transport.sent)
    h.loop.now += 5.0
    h.context.kept_alive._expire()
    assert h.closed == [KEEPALIVE_TIMEOUT] and bytes(h.transport.sent) == sent


def test_an_empty_line_on_an_idle_connection_still_leaves_it_a_deadline():
    # (RFC 9112 2.2: a server should ignore an empty line before a request line.)
    h = Harness()
    h.send(HELLO)
    h.send(b"\r\n")
    assert h.conn.deadline is not None and h.conn.timeout_reason is HEADER_TIMEOUT


def test_the_header_timeout_answers_408_and_closes():
    h = Harness()
    h.send(b"GET / HTTP/1.1\r\n")
    h.conn.on_timeout()
    assert h.answers()[-1].startswith(b"HTTP/1.1 408 ") and h.closed == [HEADER_TIMEOUT]


def test_a_body_in_progress_runs_the_body_timeout():
    h = Harness()
    h.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc")
    assert h.conn.timeout_reason is BODY_TIMEOUT


def test_a_client_closing_between_requests_is_an_ordinary_close():
    h = Harness()
    h.send(HELLO, b"")
    assert h.closed == [PEER_CLOSED]


def test_a_refused_request_is_answered_then_the_connection_lingers_and_closes():
    h = Harness()
    h.send(b"BROKEN\r\n\r\n")
    assert h.answers()[0].startswith(b"HTTP/1.1 400 ") and h.transport.shut
    assert h.closed == []  # lingering: reading and dropping what the client still sends
    h.send(b"more garbage", b"")
    assert h.closed == [DONE]


def test_a_request_answered_from_its_head_never_stores_its_body():
    @native
    def refusing(request):
        return Response(405, [("Allow", "GET")], b"no")

    refusing.on_head = refusing
    h = Harness(refusing)
    h.send(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n" + b"b" * 5000)
    assert h.answers()[0].startswith(b"HTTP/1.1 405 ") and b"Connection: close" in h.answers()[0]
    assert h.spills == 0 and h.transport.shut


def test_a_body_past_the_spill_threshold_goes_to_a_file():
    h = Harness()
    h.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3000\r\n\r\n" + b"b" * 3000)
    assert h.spills == 1 and h.answers()[0].endswith(b"b" * 3000)


def test_a_threaded_body_that_has_nothing_yet_stops_watching_until_resumed():
    pieces = [b"one", WAIT]

    class Threaded:
        def __iter__(self):
            return self

        def __next__(self):
            if not pieces:
                raise StopIteration
            return pieces.pop(0)

    @native
    def waiting(request):
        return Response(200, [], Threaded())

    h = Harness(waiting)
    h.send(HELLO)
    assert 7 not in h.loop.watched and h.conn.producer_waiting
    pieces.append(b"two")
    h.conn.resume()
    h.loop.end_turn()
    assert h.answers()[0].endswith(b"3\r\none\r\n3\r\ntwo\r\n0\r\n\r\n")
    assert h.loop.watched[7] == READABLE


class RecordingPool:
    """Stands in for the worker pool: keeps what was submitted for the test to run."""

    def __init__(self, loop):
        self.loop = loop
        self.jobs: list = []

    def submit(self, call, request, handle):
        self.jobs.append((call, request, handle))

    def run_next(self):
        """What a worker and _deliver do, in one go, and the rest of that loop turn."""
        call, request, handle = self.jobs.pop(0)
        handle.respond(call(request))
        handle.resume()
        self.loop.end_turn()


def pooled_harness() -> tuple[Harness, RecordingPool]:
    h = Harness()
    pool = RecordingPool(h.loop)
    h.context.dispatch = Dispatch(app, pool=pool)
    return h, pool


def test_while_a_worker_has_the_request_the_socket_stays_watched_and_the_timer_stops():
    h, pool = pooled_harness()
    h.send(HELLO)
    assert len(pool.jobs) == 1 and h.transport.sent == b""
    assert h.loop.watched == {7: READABLE} and h.conn.deadline is None
    pool.run_next()
    assert h.answers()[0].endswith(b"hello")
    # Not unwatched and watched again per request: one watch at accept, that is all.
    assert h.loop.log == [f"watch {READABLE}"] and h.loop.modifies == 0
    assert h.conn.timeout_reason is KEEPALIVE_TIMEOUT and h.conn in h.context.kept_alive


def test_input_while_a_worker_has_the_request_waits_for_its_answer():
    h, pool = pooled_harness()
    h.send(HELLO)
    h.transport.inbound.append(b"GET /second HTTP/1.1\r\nHost: t\r\n\r\n")  # pipelined
    h.readable()
    assert 7 not in h.loop.watched and h.transport.inbound, "read while the app ran"
    pool.run_next()
    assert len(h.answers()) == 1 and h.loop.watched == {7: READABLE}
    h.readable()
    assert len(pool.jobs) == 1 and pool.jobs[0][1].path == "/second"
    pool.run_next()
    assert len(h.answers()) == 2 and h.closed == []


def test_a_client_that_leaves_while_a_worker_has_the_request_is_closed_after_the_answer():
    h, pool = pooled_harness()
    h.send(HELLO)
    h.send(b"")  # the client's FIN
    assert 7 not in h.loop.watched and h.closed == []
    pool.run_next()
    h.readable()  # watched again after the answer: the FIN is read
    assert h.closed == [PEER_CLOSED] and h.answers()[0].endswith(b"hello")


def test_a_file_body_goes_out_whole_and_is_closed():
    with tempfile.TemporaryFile() as file:
        file.write(b"0123456789")
        file.flush()
        closed = []

        class Tracked(FileBody):
            __slots__ = ()

            def close(self):
                closed.append(True)

        @native
        def files(request):
            return Response(200, [], Tracked(file, 2, 5))

        h = Harness(files)
        h.send(HELLO)
    assert h.answers()[0].endswith(b"Content-Length: 5\r\n\r\n23456") and closed == [True]


def test_a_connection_going_idle_while_accepting_is_paused_tells_the_server():
    h = Harness()
    h.context.accepting = False
    h.send(HELLO)
    assert h.idle_calls == 1


# -- --proxy-protocol: the balancer's header comes first ----------------------------

PROXY_V1 = b"PROXY TCP4 192.0.2.7 10.0.0.2 51234 443\r\n"
PEER_REQUEST = b"GET /peer HTTP/1.1\r\nHost: t\r\n\r\n"


def test_the_proxy_header_names_the_client_and_the_request_may_follow_at_once():
    h = Harness(proxy_protocol=True)
    h.send(PROXY_V1 + PEER_REQUEST)
    assert h.transport.sent.endswith(b"('192.0.2.7', 51234) ('10.0.0.2', 443)")
    h.send(PEER_REQUEST)  # and it stays the client for the connection's later requests
    assert h.transport.sent.endswith(b"('192.0.2.7', 51234) ('10.0.0.2', 443)")
    assert not h.closed


def test_a_proxy_header_in_pieces_is_waited_for():
    h = Harness(proxy_protocol=True)
    h.send(PROXY_V1[:5], PROXY_V1[5:20], PROXY_V1[20:], PEER_REQUEST[:10], PEER_REQUEST[10:])
    assert h.transport.sent.endswith(b"('192.0.2.7', 51234) ('10.0.0.2', 443)")


def test_a_local_proxy_header_keeps_the_sockets_addresses():
    local_v2 = b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x20, 0x00, 0, 0])
    h = Harness(proxy_protocol=True)
    h.send(local_v2 + PEER_REQUEST)
    assert h.transport.sent.endswith(b"('10.0.0.1', 5000) ('10.0.0.2', 80)")


@pytest.mark.parametrize(
    "first",
    [PEER_REQUEST, b"PROXY TCP4 192.0.2.7 10.0.0.2 99999 443\r\n", b"PROXY " + b"1" * 200],
    ids=["plain-http", "bad-port", "too-long"],
)
def test_a_connection_without_a_valid_proxy_header_is_closed_unanswered(first):
    h = Harness(proxy_protocol=True)
    h.send(first)
    assert h.closed == [PROXY_REFUSED] and h.transport.sent == b""


def test_a_proxy_header_that_never_completes_times_out_as_such():
    h = Harness(proxy_protocol=True)
    h.send(PROXY_V1[:10])
    h.conn.on_timeout()
    assert h.closed == [PROXY_TIMEOUT] and h.transport.sent == b""
