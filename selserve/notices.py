"""Warnings for the operator that fire at most once per interval.

Some server-side failures repeat with every request (a log on a full disk, a
spill directory out of space, a process out of descriptors).  Each must cost
one warning per interval, counting what it kept quiet about, never a line per
request: the log would otherwise become the next thing to fill up.
"""

from __future__ import annotations

import logging
import time

log = logging.getLogger("selserve")


class ThrottledWarning:
    """`warn(message, *args)` logs at most once per `interval` seconds."""

    __slots__ = ("interval", "_last", "_quiet")

    def __init__(self, interval: float = 10.0) -> None:
        self.interval = interval
        self._last = -interval
        self._quiet = 0  # warnings suppressed since the last one logged

    def warn(self, message: str, *args: object) -> bool:
        """Log `message % args` unless one was logged less than `interval` ago.

        Returns whether it was logged.
        """
        now = time.monotonic()
        if now - self._last < self.interval:
            self._quiet += 1
            return False
        self._last = now
        if self._quiet:
            message += " (and %d more like it since the last warning)"
            args = (*args, self._quiet)
            self._quiet = 0
        log.warning(message, *args)
        return True
