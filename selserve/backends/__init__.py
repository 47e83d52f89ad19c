"""The backend registry: names to readiness backends, and what `auto` picks.

Nothing outside this package imports a specific backend module; callers ask
the registry for an instance by name.
"""

from __future__ import annotations

from .base import READABLE, WRITABLE, Backend
from .devpoll import DevpollBackend
from .epoll import EpollBackend
from .kqueue import KqueueBackend
from .poll import PollBackend
from .select import SelectBackend

__all__ = [
    "READABLE",
    "WRITABLE",
    "Backend",
    "UnknownBackend",
    "available",
    "best",
    "create",
]

# Every mechanism we know, whether or not this platform has it.
_ALL: dict[str, type[Backend]] = {
    cls.name: cls
    for cls in (EpollBackend, KqueueBackend, DevpollBackend, PollBackend, SelectBackend)
}


class UnknownBackend(ValueError):
    """A backend name that is unknown or unavailable here; the message lists the choices."""


def available() -> list[str]:
    """Names of the backends usable on this machine, best first."""
    usable = [cls for cls in _ALL.values() if cls.is_available()]
    usable.sort(key=lambda cls: cls.rank, reverse=True)
    return [cls.name for cls in usable]


def best() -> str:
    """What `auto` picks: the highest-ranked available backend (epoll on Linux)."""
    return available()[0]


def backend_class(name: str) -> type[Backend]:
    if name == "auto":
        name = best()
    cls = _ALL.get(name)
    if cls is None or not cls.is_available():
        what = "unknown" if cls is None else "not available on this platform"
        choices = ", ".join(["auto", *available()])
        raise UnknownBackend(f"backend {name!r} is {what}; available: {choices}")
    return cls


def create(name: str = "auto") -> Backend:
    """A new backend instance by name ('auto' for the best one here)."""
    return backend_class(name)()
