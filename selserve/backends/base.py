"""The contract every readiness backend implements.

A backend watches file descriptors and reports which are ready; it knows
nothing of sockets, HTTP or timers.  Each concrete backend is a thin layer over
the matching `selectors` class and adds only what the selector lacks: a name,
whether this platform has it, the highest fd it can watch, and its rank for
`auto`.  The selector's key is the one record of what each fd is watched for.
The event loop never asks which backend it runs on; differences are data on
the class.
"""

from __future__ import annotations

import selectors
from typing import Any, ClassVar

READABLE = selectors.EVENT_READ
WRITABLE = selectors.EVENT_WRITE


class Backend:
    """One readiness mechanism behind register/modify/unregister/select/close."""

    name: ClassVar[str] = ""
    selector_class: ClassVar[type[selectors.BaseSelector] | None] = None
    # fds at or above this cannot be watched (select's FD_SETSIZE); None: no limit.
    fd_limit: ClassVar[int | None] = None
    # Preference when picking `auto`: the highest available wins.
    rank: ClassVar[int] = 0

    def __init__(self) -> None:
        if not self.is_available():
            raise RuntimeError(f"backend {self.name!r} is not available on this platform")
        self._selector = self.selector_class()

    @classmethod
    def is_available(cls) -> bool:
        return cls.selector_class is not None

    def can_watch(self, fd: int) -> bool:
        return self.fd_limit is None or fd < self.fd_limit

    def register(self, fd: int, events: int, data: Any) -> None:
        self._selector.register(fd, events, data)

    def modify(self, fd: int, events: int, data: Any) -> None:
        # Every selectors class compares with its key's events first: unchanged
        # events make no syscall, so callers keep no copy of the interest set.
        self._selector.modify(fd, events, data)

    def unregister(self, fd: int) -> None:
        self._selector.unregister(fd)

    def select(self, timeout: float | None) -> list[tuple[selectors.SelectorKey, int]]:
        """Ready (key, events) pairs; `key.data` is what was registered for the fd."""
        return self._selector.select(timeout)

    def close(self) -> None:
        self._selector.close()

    def __len__(self) -> int:
        return len(self._selector.get_map())

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} watching {len(self)} fds>"
