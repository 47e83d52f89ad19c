"""The PROXY-protocol preamble of a connection (`--proxy-protocol`).

A balancer that speaks the PROXY protocol sends one header naming the client
before any of the client's bytes.  `ProxyPreamble` is the part of a
`Connection` that reads it in the PREAMBLE state: the header's source becomes
the client (`peer`, and the exchange's, so the access log and the app see it),
and what follows it is HTTP.  A connection whose first bytes are not a valid
header did not come through the balancer: it is closed unanswered
(proxy-header-refused).  Parsing is proxy_protocol.py's (sans I/O); the TLS
connection reads the same header by peeking, with the helpers below.
"""

from __future__ import annotations

from . import proxy_protocol
from .reasons import OPEN, PEER_CLOSED, PREAMBLE, PROXY_REFUSED, RECV_ERROR
from .transport import READ_SIZE


class ProxyPreamble:
    """A mixin of `Connection`: its PREAMBLE state.  It uses the connection's
    transport, exchange, context, io_state, preamble and bytes_in slots, and its
    `close()`, `_leave_idle()` and `_advance()`."""

    __slots__ = ()

    def _read_preamble(self) -> None:
        """Take the PROXY header the balancer sends first; then carry on with HTTP."""
        data = self._preamble_recv()
        if data is None:
            return
        self.bytes_in += len(data)
        data = self.preamble + data
        header = self._proxy_header(data)
        if header is None:
            if self.io_state is PREAMBLE:
                self.preamble = data  # (parse() bounds it: past MAX_V2_LENGTH it refuses)
            return
        self.preamble = b""
        self.io_state = OPEN
        self._take_proxy_header(header)
        if len(data) > header.length:  # the request began in the same packet
            self._leave_idle()
            self.exchange.receive(data[header.length :])
            self._advance()

    def _preamble_recv(self, flags: int = 0) -> bytes | None:
        """What the client sent (None: nothing yet, or it left and we closed); `flags`
        (MSG_PEEK) only where the transport is a plain socket."""
        transport = self.transport
        try:
            data = transport.recv(READ_SIZE, flags) if flags else transport.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError as exc:
            self.close(RECV_ERROR, exc)
            return None
        if not data:
            self.close(PEER_CLOSED)
            return None
        return data

    def _proxy_header(self, data: bytes) -> proxy_protocol.ProxyHeader | None:
        """The header `data` begins with; None while incomplete, or (closed) if invalid."""
        try:
            return proxy_protocol.parse(data)
        except proxy_protocol.ProxyProtocolError as exc:
            self.close(PROXY_REFUSED, exc)
            return None

    def _take_proxy_header(self, header: proxy_protocol.ProxyHeader) -> None:
        """The client and the address it reached, as the balancer's PROXY header says."""
        exchange = self.exchange
        if not header.local:  # (a balancer's own health check keeps the socket's addresses)
            self.peer = exchange.peer = header.source
            if header.destination is not None:
                self.local = exchange.local = header.destination
