"""poll(2): portable and without an fd ceiling, but every turn scans all watched fds."""

import selectors

from .base import Backend


class PollBackend(Backend):
    name = "poll"
    selector_class = getattr(selectors, "PollSelector", None)
    rank = 10
