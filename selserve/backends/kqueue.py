"""kqueue(2): the BSDs' and macOS's readiness mechanism; one turn costs O(ready fds)."""

import selectors

from .base import Backend


class KqueueBackend(Backend):
    name = "kqueue"
    selector_class = getattr(selectors, "KqueueSelector", None)
    rank = 30
