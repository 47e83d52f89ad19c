"""TLSConnection, alone: a fake TLS transport over the fake loop (fakes.py) plays what
OpenSSL asks for -- a handshake that waits to write, a read that needs to write first,
a write that needs to read first, plain HTTP instead of a ClientHello, TLS errors -- so
that each way the connection must follow it is checked without a socket or a clock."""

from __future__ import annotations

import ssl

from fakes import FakeLoop, FakeTransport, TurnsMixin

from selserve.app import Request, Response, native
from selserve.backends import READABLE, WRITABLE
from selserve.context import ConnectionContext
from selserve.dispatch import Dispatch
from selserve.http.exchange import ExchangeSettings
from selserve.reasons import HEADER_TIMEOUT
from selserve.tls import tls_request_class
from selserve.tls_connection import (
    TLS_EOF,
    TLS_ERROR,
    TLS_HANDSHAKE_FAILED,
    TLS_HANDSHAKE_TIMEOUT,
    TLS_PLAIN_HTTP,
    TLSConnection,
)

HELLO = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"
FIXED = b"Date: X\r\nServer: t\r\n"


class FakeSSLSocket:
    """What TLSConnection asks of the SSL socket itself: its context's verify mode."""

    class context:  # noqa: N801 (stands for an SSLContext)
        verify_mode = ssl.CERT_NONE


class FakeTLSTransport(FakeTransport):
    """A FakeTransport with TLS's extras: `steps` are what successive handshake() calls
    return ("read", "write", None for done, or an exception to raise); `read_wants` makes
    the next recv wait to write, `write_wants` every send wait to read until it is
    cleared (the client's bytes came)."""

    def __init__(self, loop, steps):
        super().__init__(loop)
        self.sock = FakeSSLSocket()
        self.steps = list(steps)
        self.read_wants_write = False
        self.write_wants_read = False
        self.read_wants = False
        self.write_wants = False
        self.recv_error: BaseException | None = None
        self.plain = b""

    def handshake(self):
        step = self.steps.pop(0)
        if isinstance(step, BaseException):
            raise step
        return step

    def recv(self, size):
        if self.recv_error is not None:
            raise self.recv_error
        if self.read_wants:
            self.read_wants = False
            self.read_wants_write = True
            raise BlockingIOError
        return super().recv(size)

    def send(self, data):
        if self.write_wants:  # (until the test says the client's bytes came)
            self.write_wants_read = True
            raise BlockingIOError
        return super().send(data)

    def send_plain(self, data):
        self.plain += data

    def getpeercert(self):
        return {}


class FakeServerTLS:
    def __init__(self, transport):
        self.transport = transport
        self.handshake_timeout = 3.0
        self.request_class = tls_request_class(Request)

    def wrap(self, sock):
        return self.transport


@native
def app(request):
    return Response(200, [], f"{request.scheme} {request.path}".encode())


class Harness(TurnsMixin):
    def __init__(self, *steps):
        self.loop = FakeLoop()
        self.closed: list[str] = []
        self.context = ConnectionContext(
            loop=self.loop,
            settings=ExchangeSettings(open_spill_file=None, fixed=FIXED),
            dispatch=Dispatch(app),
            closed=lambda conn, reason: self.closed.append(reason),
            became_idle=lambda: None,
            body_store_failed=lambda exc: None,
            header_timeout=7.0,
        )
        self.context.accepting = True
        self.transport = FakeTLSTransport(self.loop, steps)
        self.conn = TLSConnection(
            self.context, object(), ("10.0.0.1", 5000), ("10.0.0.2", 443), False,
            FakeServerTLS(self.transport),
        )  # fmt: skip

    @property
    def watching(self) -> int:
        return self.loop.watched.get(7, 0)


def test_the_handshake_follows_what_openssl_waits_for_then_serves_https():
    h = Harness("write", "read", None)
    assert h.conn.idle  # (a handshake under way: closed at once at shutdown)
    assert h.conn.deadline == h.loop.now + 3.0  # the handshake's own deadline
    h.readable()  # OpenSSL wants to write first
    assert h.watching == WRITABLE
    h.writable()  # ... then to read
    assert h.watching == READABLE
    h.transport.inbound.append(HELLO)
    h.readable()  # done: the request that came with it is answered
    assert h.conn.timeout_reason is not TLS_HANDSHAKE_TIMEOUT
    assert bytes(h.transport.sent).endswith(b"\r\n\r\nhttps /")
    assert h.watching == READABLE and not h.closed


def test_after_the_handshake_the_head_has_the_header_timeout():
    h = Harness("read", None)
    h.readable()
    h.loop.now += 1.0
    h.readable()  # the handshake ends a second after accept
    assert h.conn.timeout_reason is HEADER_TIMEOUT
    assert h.conn.deadline == h.loop.now + 7.0 and h.conn in h.context.fresh


def test_a_handshake_that_never_ends_is_closed_as_such():
    h = Harness("read")
    h.readable()
    h.conn.on_timeout()
    assert h.closed == [TLS_HANDSHAKE_TIMEOUT] and h.transport.closed


def test_a_read_that_must_write_first_is_retried_when_writable():
    h = Harness(None)
    h.readable()
    h.transport.read_wants = True
    h.transport.inbound.append(HELLO)
    h.readable()  # OpenSSL: the read needs to write (a key update's answer)
    assert h.watching == READABLE | WRITABLE and not h.transport.sent
    h.writable()  # room: the read runs again, and the request is answered
    assert bytes(h.transport.sent).endswith(b"https /")
    assert h.watching == READABLE and not h.closed


def test_a_write_that_must_read_first_is_retried_when_readable():
    h = Harness(None)
    h.readable()
    h.transport.write_wants = True
    h.transport.inbound.append(HELLO)
    h.readable()  # the answer's send needs to read first
    assert not h.transport.sent
    assert h.watching == READABLE  # not WRITABLE: the socket is writable, that would spin
    h.transport.write_wants = False
    h.readable()  # the client's bytes came: the write goes on
    assert bytes(h.transport.sent).endswith(b"https /")
    assert h.watching == READABLE and not h.closed


def test_plain_http_to_the_tls_port_gets_a_plaintext_400_and_a_close():
    error = ssl.SSLError(1, "http request")
    error.reason = "HTTP_REQUEST"
    h = Harness(error)
    h.readable()
    assert h.transport.plain.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"The plain HTTP request was sent to HTTPS port" in h.transport.plain
    assert h.closed == [TLS_PLAIN_HTTP]


def test_a_failed_handshake_is_closed_as_such():
    error = ssl.SSLError(1, "wrong version number")
    error.reason = "WRONG_VERSION_NUMBER"
    h = Harness(error)
    h.readable()
    assert h.closed == [TLS_HANDSHAKE_FAILED] and not h.transport.plain


def test_a_client_that_resets_during_the_handshake_is_a_recv_error():
    h = Harness(ConnectionResetError(104, "reset"))
    h.readable()
    assert h.closed == ["recv-error"]


def test_tls_errors_after_the_handshake_have_their_own_reasons():
    h = Harness(None)
    h.readable()
    h.transport.recv_error = ssl.SSLError(1, "bad record mac")
    h.readable()
    assert h.closed == [TLS_ERROR]
    gone = Harness(None)
    gone.readable()
    gone.transport.recv_error = ssl.SSLEOFError(8, "EOF occurred in violation of protocol")
    gone.readable()
    assert gone.closed == [TLS_EOF]
