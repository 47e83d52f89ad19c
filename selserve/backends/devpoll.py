"""/dev/poll: Solaris's readiness mechanism; one turn costs O(ready fds)."""

import selectors

from .base import Backend


class DevpollBackend(Backend):
    name = "devpoll"
    selector_class = getattr(selectors, "DevpollSelector", None)
    rank = 20
