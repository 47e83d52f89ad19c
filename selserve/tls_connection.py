"""A client connection over TLS: the handshake first, then the connection as usual.

`TLSConnection` is a `Connection` whose transport becomes a `TLSTransport`
(tls.py) once any PROXY header is read.  It adds what TLS needs around the
plain connection's work, and nothing to the plain path:

- a HANDSHAKE state, driven by readiness in whichever direction OpenSSL asks,
  with its own deadline (--handshake-timeout); meanwhile it stays among the new
  idle connections (reclaimable at the cap), so --header-timeout from accept
  bounds the handshake too, as nginx's client_header_timeout does; then the
  request head has --header-timeout, as on a new plain connection;
- the crossed waits: a read that wanted to write is retried when the socket is
  writable, a write that wanted to read when it is readable;
- plain HTTP sent to the TLS port is answered with a plaintext 400 saying so,
  as nginx does, and closed;
- a PROXY header in front of the handshake is read with MSG_PEEK, so that not
  a byte of the ClientHello after it is taken from OpenSSL;
- its own close reasons: tls-handshake-failed (a bad ClientHello, an alert, a
  refused client certificate), tls-handshake-timeout, tls-plain-http,
  tls-eof (the client closed TCP mid-answer without TLS's close_notify: it
  left) and tls-error (any other TLS error after the handshake).  Clients
  that reset are recv-error or send-error as on plain TCP.
"""

from __future__ import annotations

import socket
import ssl

from .backends import READABLE, WRITABLE
from .connection import Connection
from .http import response as wire
from .http.exchange import SENDING
from .reasons import CLOSED_IO, OPEN, PREAMBLE, RECV_ERROR, SEND_ERROR
from .tls import ServerTLS, subject_name, with_client_cert

HANDSHAKE = "handshake"  # io_state: the TLS handshake is under way

TLS_HANDSHAKE_FAILED = "tls-handshake-failed"
TLS_HANDSHAKE_TIMEOUT = "tls-handshake-timeout"
TLS_PLAIN_HTTP = "tls-plain-http"
TLS_ERROR = "tls-error"
TLS_EOF = "tls-eof"  # the client closed its TCP side with no close_notify (it left)

# OpenSSL's reasons for a "ClientHello" that is an HTTP request line.
_PLAIN_HTTP_REASONS = frozenset(("HTTP_REQUEST", "HTTPS_PROXY_REQUEST"))
_PLAIN_HTTP_DETAIL = "The plain HTTP request was sent to HTTPS port"


class TLSConnection(Connection):
    """One client of an HTTPS listener (see the module docstring)."""

    __slots__ = ("tls",)

    def __init__(
        self,
        context,
        sock: socket.socket,
        peer,
        local,
        proxy_protocol: bool,
        tls: ServerTLS,
    ) -> None:
        self.tls = tls
        if proxy_protocol:  # the PROXY header comes first, in plain text
            Connection.__init__(self, context, sock, peer, local, proxy_protocol)
            return
        # (wrapped before anything is registered: if this raises, the server just
        # closes the socket)
        Connection.__init__(self, context, tls.wrap(sock), peer, local)
        self._handshake_begins()

    def _handshake_begins(self) -> None:
        self.io_state = HANDSHAKE
        self._arm(self.tls.handshake_timeout, TLS_HANDSHAKE_TIMEOUT)

    # -- readiness ----------------------------------------------------------------

    def on_readable(self) -> None:
        state = self.io_state
        if state is HANDSHAKE:
            self._handshake()
            return
        if state is PREAMBLE:
            self._read_preamble()
            return
        if state is CLOSED_IO:
            return
        transport = self.transport
        if transport.write_wants_read and state is OPEN:  # a write waited for input
            transport.write_wants_read = False
            self._watch(WRITABLE)
            self.on_writable()
            return
        Connection.on_readable(self)
        self._follow_crossed_waits()

    def on_writable(self) -> None:
        if self.io_state is HANDSHAKE:
            self._handshake()
            return
        if self.io_state is not OPEN:
            Connection.on_writable(self)
            return
        transport = self.transport
        if transport.read_wants_write:
            transport.read_wants_write = False
            Connection.on_readable(self)  # the read that waited for room
            if self.io_state is not OPEN or transport.read_wants_write:
                return
            if self.exchange.state is not SENDING and not self.out:
                self._watch(READABLE)
                return
        Connection.on_writable(self)
        self._follow_crossed_waits()

    def _follow_crossed_waits(self) -> None:
        """After a read or a write that OpenSSL made wait the other way round."""
        transport = self.transport
        if self.io_state is not OPEN:
            return
        if transport.write_wants_read:  # retried when the client's bytes come (watching
            self._watch(READABLE)  # for writability would spin: the socket has room)
        elif transport.read_wants_write:  # retried when the socket has room
            self._watch(self.watching | WRITABLE)

    # -- the handshake ------------------------------------------------------------

    def _handshake(self) -> None:
        transport = self.transport
        try:
            waiting_for = transport.handshake()
        except ssl.SSLError as exc:
            self._handshake_failed(exc)
            return
        except OSError as exc:  # the client reset or left
            self.close(RECV_ERROR, exc)
            return
        if waiting_for is not None:
            self._watch(WRITABLE if waiting_for == "write" else READABLE)
            return
        self.io_state = OPEN
        request_class = self.tls.request_class
        if transport.sock.context.verify_mode != ssl.CERT_NONE:
            subject = subject_name(transport.getpeercert())
            if subject is not None:
                request_class = with_client_cert(request_class, subject)
        self.exchange.use_request_class(request_class)
        self.wait_as_new()
        self._watch(READABLE)
        Connection.on_readable(self)  # (the first request may have come with the Finished)
        self._follow_crossed_waits()

    def _handshake_failed(self, exc: ssl.SSLError) -> None:
        if exc.reason in _PLAIN_HTTP_REASONS:
            fixed = self.context.settings.fixed
            self.transport.send_plain(wire.error_response(400, _PLAIN_HTTP_DETAIL, fixed))
            self.close(TLS_PLAIN_HTTP, exc)
            return
        self.close(TLS_HANDSHAKE_FAILED, exc)

    def _read_preamble(self) -> None:
        """--proxy-protocol: the PROXY header, peeked at and then taken to its last byte
        only, so that the ClientHello after it stays in the socket for OpenSSL."""
        sock = self.transport
        data = self._preamble_recv(socket.MSG_PEEK)
        if data is None:
            return
        seen = self.preamble + data
        header = self._proxy_header(seen)
        if header is None and self.io_state is not PREAMBLE:
            return  # (refused: closed)
        # All of an unfinished header's bytes are the header's; of a finished one, up to
        # its length.
        take = len(data) if header is None else header.length - len(self.preamble)
        try:
            sock.recv(take)  # (already in the socket: peeked)
        except OSError as exc:
            self.close(RECV_ERROR, exc)
            return
        self.bytes_in += take
        if header is None:
            self.preamble = seen
            return
        self.preamble = b""
        self._take_proxy_header(header)
        try:
            self.transport = self.tls.wrap(sock)
        except (OSError, ValueError) as exc:  # (the client left already)
            self.close(RECV_ERROR, exc)
            return
        self._handshake_begins()
        self._handshake()  # (the ClientHello may be here already)

    # -- ending -------------------------------------------------------------------

    def close(self, reason: str, exc: BaseException | None = None) -> None:
        if isinstance(exc, ssl.SSLError) and (reason is RECV_ERROR or reason is SEND_ERROR):
            # (A client that resets raises a plain OSError, and keeps its reason.)
            reason = TLS_EOF if isinstance(exc, ssl.SSLEOFError) else TLS_ERROR
        Connection.close(self, reason, exc)

    @property
    def idle(self) -> bool:
        """Nothing asked of us yet: a handshake under way counts (closed at shutdown)."""
        return self.io_state is HANDSHAKE or Connection.idle.fget(self)
