"""How bytes move between a connection and its client: the transport interface.

A connection reads and writes through a `Transport`, the handful of socket
verbs below, and never asks what is underneath.  Today the only transport is
a connected, non-blocking `socket.socket`, which has those verbs already: it is
used as it is, at no cost per call.  A TLS transport and the PROXY-protocol
preamble will be other implementations of the same interface, invisible to the
HTTP exchange (`http/exchange.py`), which sees only bytes.

Transports differ in what they can do: only a plain socket's descriptor can
take `os.sendfile` (a TLS transport must encrypt what it sends, a test's fake
has no descriptor worth the name), so the write buffer asks `can_sendfile`
before it hands a file range to the kernel, and reads the file otherwise.
"""

from __future__ import annotations

import socket
from typing import Protocol

__all__ = ["Transport", "can_sendfile", "prepare_socket"]


# Bytes asked of recv() at once.
READ_SIZE = 64 * 1024


class Transport(Protocol):
    """A connected, non-blocking byte stream."""

    def recv(self, size: int) -> bytes: ...
    def send(self, data) -> int: ...
    def sendmsg(self, buffers, ancdata=(), flags: int = 0, /) -> int: ...
    def shutdown(self, how: int) -> None: ...
    def close(self) -> None: ...
    def fileno(self) -> int: ...


def prepare_socket(sock: socket.socket) -> socket.socket:
    """An accepted socket as a plain transport: non-blocking, and for TCP with
    Nagle's algorithm off (with the client's delayed ACK it would hold each
    answer back by ~40 ms).  Raises OSError if the client is already gone."""
    sock.setblocking(False)
    if sock.family != socket.AF_UNIX:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def can_sendfile(transport: Transport) -> bool:
    """Whether file ranges may go to this transport's descriptor with os.sendfile."""
    return type(transport) is socket.socket
