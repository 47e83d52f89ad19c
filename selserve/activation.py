"""Listening sockets handed down by a service manager: systemd socket activation and
`--bind fd://N`.

systemd (or `systemd-socket-activate`) opens the sockets itself and starts us with
them as descriptors 3, 4, ... and `LISTEN_FDS` (how many) and `LISTEN_PID` (for
whom: a child that inherits the environment must not take them for its own).
`activated_binds()` turns them into `--bind fd://N` values once and clears the
variables; `inherited_socket(fd)` takes one such descriptor, checking that it is
a listening stream socket.  Nothing here binds or listens: the sockets exist.
"""

from __future__ import annotations

import os
import socket

# sd_listen_fds(3): passed descriptors start here.
LISTEN_FDS_START = 3


class InheritedSocketError(ValueError):
    """A descriptor that is not a listening stream socket."""


def inherited_socket(fd: int) -> socket.socket:
    """The listening socket on descriptor `fd`, non-blocking."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise InheritedSocketError(f"fd {fd} is not a socket ({exc.strerror})") from None
    if sock.type != socket.SOCK_STREAM or not sock.getsockopt(
        socket.SOL_SOCKET, socket.SO_ACCEPTCONN
    ):
        sock.detach()  # not ours to close
        raise InheritedSocketError(f"fd {fd} is not a listening stream socket")
    sock.setblocking(False)
    return sock


def activated_binds(environ: dict[str, str] | None = None) -> list[str]:
    """The sockets systemd passed to this process, as `--bind` values ("fd://3", ...);
    [] if none.  The variables are removed from `environ` (the process environment by
    default), so that nothing started from here takes the sockets for its own too."""
    environ = os.environ if environ is None else environ
    try:
        count = int(environ.get("LISTEN_FDS", "0"))
        for_pid = int(environ.get("LISTEN_PID", "0"))
    except ValueError:
        return []
    for name in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
        environ.pop(name, None)
    if count <= 0 or for_pid != os.getpid():
        return []
    return [f"fd://{fd}" for fd in range(LISTEN_FDS_START, LISTEN_FDS_START + count)]
