"""Listening sockets: --bind addresses parsed and opened, and the listener handler.

`create_listener` opens one --bind address (HOST:PORT, [IPV6]:PORT, unix:PATH,
fd://N, any of them marked https:// for TLS) as a non-blocking listening socket,
or raises `BindError` with one line saying what is wrong.  A `Listener` is such
a socket as a loop handler: readable means clients are waiting, and its server
accepts them.  `refuse_new_clients` makes a socket about to close drop every
new client's packets (Linux), so that what is queued can be accepted first.
"""

from __future__ import annotations

import ctypes
import os
import resource
import socket
import stat
import struct
import sys
import typing

from .activation import InheritedSocketError, inherited_socket

if typing.TYPE_CHECKING:
    from .server import Server
    from .tls import ServerTLS


class BindError(ValueError):
    """A --bind address that cannot be parsed or listened on."""


def parse_bind(address: str) -> tuple[int, object]:
    """'HOST:PORT', '[IPV6]:PORT' or 'unix:PATH' → (family, sockaddr)."""
    if address.startswith("unix:"):
        path = address[5:]
        if not path:
            raise BindError(f"bind address {address!r} needs a path, e.g. unix:/tmp/selserve.sock")
        return socket.AF_UNIX, path
    host, sep, port_text = address.rpartition(":")
    # (isascii: str.isdigit() also takes other scripts' digits, which int() reads.)
    if not sep or not port_text.isascii() or not port_text.isdigit():
        raise BindError(
            f"bind address {address!r} is not HOST:PORT, [IPV6]:PORT or unix:PATH "
            "(e.g. 127.0.0.1:8000)"
        )
    port = int(port_text)
    if port > 65535:
        raise BindError(f"bind address {address!r}: port {port} is not from 0 to 65535")
    if host.startswith("[") and host.endswith("]"):
        return socket.AF_INET6, (host[1:-1], port)
    if ":" in host:
        raise BindError(f"bind address {address!r}: write IPv6 hosts in brackets, e.g. [::1]:8000")
    return socket.AF_INET, (host or "0.0.0.0", port)


def without_scheme(address: str) -> str:
    """A --bind address without its https:// (TLS) or http:// mark."""
    for scheme in ("https://", "http://"):
        if address.startswith(scheme):
            return address[len(scheme) :]
    return address


def create_listener(address: str, backlog: int) -> socket.socket:
    address = without_scheme(address)
    if address.startswith("fd://"):  # a socket opened for us (systemd, a shell's <>)
        fd = address[5:]
        if not fd.isdigit():
            raise BindError(f"bind address {address!r}: write fd://N with N a descriptor")
        try:
            return inherited_socket(int(fd))
        except InheritedSocketError as exc:
            raise BindError(f"bind address {address!r}: {exc}") from None
    family, sockaddr = parse_bind(address)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if family == socket.AF_UNIX:
            _remove_stale_unix_socket(sockaddr)
        else:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(sockaddr)
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise BindError(f"cannot listen on {address}: {exc.strerror or exc}") from None
    return sock


def listener_url(sock: socket.socket, tls: bool = False) -> str:
    """Where a listening socket can be reached: http(s)://HOST:PORT or unix:PATH."""
    if sock.family == socket.AF_UNIX:
        return f"{'https+' if tls else ''}unix:{sock.getsockname()}"
    host, port = sock.getsockname()[:2]
    scheme = "https" if tls else "http"
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


def _remove_stale_unix_socket(path: str) -> None:
    try:
        if stat.S_ISSOCK(os.stat(path).st_mode):
            os.unlink(path)
    except FileNotFoundError:
        pass


def raise_open_file_limit() -> int:
    """Lift the soft RLIMIT_NOFILE to the hard limit; returns the limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


# A classic BPF program of one instruction, "return 0": every packet dropped.
_DROP_ALL = struct.pack("HBBI", 0x06, 0, 0, 0)  # BPF_RET | BPF_K, k = 0
_SO_ATTACH_FILTER = getattr(socket, "SO_ATTACH_FILTER", 26)


def refuse_new_clients(sock: socket.socket) -> None:
    """Linux: make a listening socket drop every packet from now on, so that no new
    handshake completes (and no client joins the backlog) while what is queued is
    accepted before the socket closes.  Elsewhere, or if refused, nothing happens."""
    if sys.platform != "linux" or sock.family == socket.AF_UNIX:
        return
    program = ctypes.create_string_buffer(_DROP_ALL)
    fprog = struct.pack("HL", 1, ctypes.addressof(program))  # struct sock_fprog
    try:
        sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, fprog)
    except OSError:
        pass


class Listener:
    """A listening socket as a loop handler: readable means 'connections are waiting'."""

    __slots__ = ("server", "sock", "fd", "address", "unix_path", "local", "owned", "tls")

    def __init__(
        self,
        server: Server,
        sock: socket.socket,
        address: str,
        owned: bool = True,
        tls: ServerTLS | None = None,
    ):
        self.server = server
        self.sock = sock
        self.fd = sock.fileno()
        self.address = address
        self.tls = tls  # the server's TLS context holder on an HTTPS listener, else None
        # A listener handed down (by a supervisor, by systemd) is shared: closing our
        # copy must not remove its Unix socket's path (others still listen there).
        self.owned = owned and not without_scheme(address).startswith("fd://")
        self.unix_path = sock.getsockname() if sock.family == socket.AF_UNIX else None
        # What applications see as the server's address (port 0 resolved).
        self.local = self.unix_path if self.unix_path is not None else sock.getsockname()[:2]

    def on_readable(self) -> None:
        self.server.accept_from(self)

    def on_writable(self) -> None:
        pass

    def on_error(self, exc: BaseException) -> None:
        pass  # a bug in accepting is logged by the loop; the listener stays

    @property
    def url(self) -> str:
        return listener_url(self.sock, self.tls is not None)

    def close(self) -> None:
        self.sock.close()
        if self.unix_path and self.owned:
            try:
                os.unlink(self.unix_path)
            except OSError:
                pass
