"""What a connection may know of its server: the `ConnectionContext`.

Connections never see the `Server`: they get this narrow object, which the
server fills in and keeps current, with the settings their exchanges share,
the dispatch that answers their requests, their timeouts and water marks, the
two queues of idle connections (which time them out, and whose members are
reclaimed at the cap), the counters, the observer of finished answers (access
log, metrics) and three callbacks for what they report.  It holds data and does
nothing: no I/O, no import of connection.py or server.py.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING

from .app import Request
from .http.exchange import ExchangeSettings
from .loop import DeadlineQueue

if TYPE_CHECKING:
    from .connection import Connection


class ConnectionContext:
    """What a connection may know of its server: settings, shared registries and the
    few things it reports.  The server fills it in and keeps it current."""

    __slots__ = (
        "loop",
        "settings",
        "dispatch",
        "header_timeout",
        "body_timeout",
        "write_timeout",
        "keepalive_timeout",
        "high_water",
        "low_water",
        "fresh",
        "kept_alive",
        "accepting",
        "observe",
        "request_class",
        "debug",
        "counters",
        "requests",
        "max_requests",
        "closed",
        "served_enough",
        "became_idle",
        "body_store_failed",
    )

    def __init__(
        self,
        *,
        loop,
        settings: ExchangeSettings,
        dispatch,
        closed: Callable[[Connection, str], None],
        became_idle: Callable[[], None],
        body_store_failed: Callable[[OSError], None],
        served_enough: Callable[[], None] = lambda: None,
        header_timeout: float = 10.0,
        body_timeout: float = 30.0,
        write_timeout: float = 30.0,
        keepalive_timeout: float = 5.0,
        high_water: int = 256 * 1024,
        low_water: int = 64 * 1024,
        observe: Callable | None = None,
        debug: bool = False,
    ) -> None:
        self.loop = loop
        self.settings = settings  # shared by every connection's exchange
        self.dispatch = dispatch
        self.header_timeout = header_timeout
        self.body_timeout = body_timeout
        self.write_timeout = write_timeout
        self.keepalive_timeout = keepalive_timeout
        self.high_water = high_water
        self.low_water = low_water
        # The idle connections, oldest first, each with no timer of its own (loop.py):
        # accepted with nothing received yet, due header_timeout after accept; and
        # answered with nothing of the next request yet, due keepalive_timeout after.
        # Both are reclaimable at the cap.
        self.fresh = DeadlineQueue(loop, header_timeout)
        self.kept_alive = DeadlineQueue(loop, keepalive_timeout)
        self.accepting = False  # False while the server is not accepting (at the cap, say)
        # (connection, request): an answer has ended (its status, start and body_sent()
        # are the connection's),
        # for the access log and the metrics; None when neither is kept.
        self.observe = observe
        self.request_class = Request  # what heads are parsed as (see forwarded.py)
        self.debug = debug
        self.counters: Counter[str] = Counter()
        self.requests = 0
        self.max_requests = 0  # reaching it calls served_enough (0: never)
        self.closed = closed  # (connection, reason): the connection has ended
        self.became_idle = became_idle  # a connection went idle while accepting is paused
        self.body_store_failed = body_store_failed  # (OSError): a spill file failed
        self.served_enough = served_enough  # max_requests were answered
