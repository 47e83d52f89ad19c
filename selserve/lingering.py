"""Lingering close: ending a connection whose client may still be sending.

After an answer that leaves the client's input unread (a refusal, an answer
from the head, pipelined requests that will not be answered), closing at once
would make the kernel answer that input with a reset, and a reset can destroy
our answer before the client has read it (RFC 9112 section 9.6).  So the
connection stops writing (`SHUT_WR`: the client sees our answer end), reads and
drops what still comes for up to `LINGER_TIMEOUT`, then closes.  This module is
that reading and its limits; the state, the timer and the close are the
connection's.
"""

from __future__ import annotations

from .transport import Transport

LINGER_TIMEOUT = 2.0  # how long a lingering connection reads and drops input
LINGER_READS = 16  # pieces dropped per readiness event; a client sending more is cut off


def drop_input(transport: Transport, size: int) -> bool:
    """Read and drop what the client sent, `size` bytes a read.  True: close now (the
    client finished, its socket failed, or it sent LINGER_READS pieces at once);
    False: nothing more yet, linger on."""
    for _ in range(LINGER_READS):
        try:
            data = transport.recv(size)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            return True
        if not data:
            return True
    return True
