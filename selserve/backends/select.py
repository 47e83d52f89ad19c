"""select(2): available everywhere, but it cannot watch fds at or above FD_SETSIZE.

The limit is data here (`fd_limit`); the server asks `can_watch(fd)` before it
registers a connection and refuses one this backend could not watch.
"""

import selectors

from .base import Backend

# glibc's fd_set holds 1024 descriptors; CPython's select() raises for larger fds.
FD_SETSIZE = 1024


class SelectBackend(Backend):
    name = "select"
    selector_class = selectors.SelectSelector
    fd_limit = FD_SETSIZE
    rank = 0
