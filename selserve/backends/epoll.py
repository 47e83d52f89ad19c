"""epoll(7): Linux's readiness mechanism; one turn costs O(ready fds)."""

import selectors

from .base import Backend


class EpollBackend(Backend):
    name = "epoll"
    selector_class = getattr(selectors, "EpollSelector", None)
    rank = 30
