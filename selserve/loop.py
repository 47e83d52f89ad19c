"""The event loop: one backend, timers, handler dispatch, wake-ups and signals.

Handlers are long-lived objects with `on_readable()` and `on_writable()`; the
loop keeps an fd → handler table and calls the handler registered *now* for a
ready fd, so an event for a connection closed earlier in the same batch is
dropped even when a new connection already reuses its fd number.  An exception
escaping a handler is that handler's bug: it is logged, the handler's
`on_error()` closes it, and the loop goes on.  The loop must never block on
anything but the backend's `select()`.
"""

from __future__ import annotations

import collections
import heapq
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from .backends import READABLE, WRITABLE, Backend

log = logging.getLogger("selserve")

# Rebuild the timer heap once stale entries outnumber live timers by this much.
_HEAP_COMPACT_MIN = 512
# Writes asked for with write_soon() are made once this many wait, else at the end
# of the turn: a batch of answers leaves back to back (wrk's hello: 47.2k -> 56.5k
# req/s with batches of up to 16, most of it with 4), and no answer waits behind
# more than 15 others being worked out.
WRITE_BATCH = 16


class Handler(Protocol):
    def on_readable(self) -> None: ...
    def on_writable(self) -> None: ...
    def on_error(self, exc: BaseException) -> None: ...


class Timer:
    """A callback due at `when` (loop clock).  Moving it later is O(1).

    Keep-alive connections push their deadline back on every request, so
    `reschedule` to a later time only records the new deadline; the heap entry
    keeps its place and, when it comes due, is pushed again for the new time.
    """

    __slots__ = ("when", "callback", "active", "_queued_when", "_loop")

    def __init__(self, loop: EventLoop, when: float, callback: Callable[[], Any]) -> None:
        self._loop = loop
        self.when = when
        self.callback = callback
        self.active = False
        self._queued_when = when

    def reschedule(self, when: float) -> None:
        """Make the timer due at `when`, whether it is pending, fired or cancelled."""
        self.when = when
        if not self.active:
            self.active = True
            self._loop._live_timers += 1
            self._loop._push_timer(self)
        elif when < self._queued_when:
            # The queued entry becomes stale (its time no longer matches
            # `_queued_when`) and a new one is pushed.
            self._loop._push_timer(self)

    def cancel(self) -> None:
        if self.active:
            self.active = False
            self._loop._live_timers -= 1


class DeadlineQueue:
    """Members that each fall due `delay` seconds after they joined, timed by one
    loop timer for all of them.

    With one delay for every member, joining order is deadline order (the loop's
    clock never goes back), so the earliest deadline is always the first member:
    joining and leaving are dict operations and no member holds a timer of its own.
    Ten thousand idle keep-alive connections cost one timer, not ten thousand
    (about 310 B each: a Timer, its bound callback and its heap entry).  Node.js
    times its sockets the same way, one list per duration.  A member that falls due
    leaves the queue, then its `on_timeout()` is called.
    """

    __slots__ = ("delay", "members", "_loop", "_timer")

    def __init__(self, loop: EventLoop, delay: float) -> None:
        self._loop = loop
        self.delay = delay
        self.members: dict[Any, float] = {}  # member -> loop time it joined, oldest first
        self._timer = loop.call_later(delay, self._expire)  # armed while there are members
        self._timer.cancel()

    def __len__(self) -> int:
        return len(self.members)

    def __contains__(self, member: Any) -> bool:
        return member in self.members

    def add(self, member: Any) -> None:
        """Join now, due `delay` from now.  Not a member already: a dict keeps a key
        assigned again in its old place (leave first)."""
        now = self._loop.now
        self.members[member] = now
        if not self._timer.active:
            self._timer.reschedule(now + self.delay)

    def leave(self, member: Any) -> float | None:
        """Leave without falling due; the loop time `member` joined, None if it was
        not a member."""
        return self.members.pop(member, None)

    def oldest(self) -> tuple[Any, float] | None:
        """The member that joined first and when, None if there is none."""
        for entry in self.members.items():
            return entry
        return None

    def _expire(self) -> None:
        loop = self._loop
        members = self.members
        delay = self.delay
        due = []
        for member, joined in members.items():
            if joined + delay > loop.now:  # (the timer's own test: the same sum)
                self._timer.reschedule(joined + delay)  # the next one to fall due
                break
            due.append(member)
        for member in due:
            if members.pop(member, None) is None:
                continue  # an earlier one's timeout took it along
            try:
                member.on_timeout()
            except Exception as exc:
                loop._handler_failed(member, exc)


class _Waker:
    """A readable fd that other threads and signal handlers poke to end a select()."""

    def __init__(self) -> None:
        # wake() may come from any thread while the loop closes the waker: the lock
        # keeps a late wake() from writing to a closed fd (or to whatever reuses it).
        # Re-entrant, because a signal handler may wake the loop from inside wake().
        self._lock = threading.RLock()
        self._closed = False
        # A token written and not yet drained: the loop will turn anyway, so a wake()
        # meanwhile writes nothing (a busy thread pool wakes the loop once per turn, not
        # once per answer).  drain() clears it after reading the token and before the
        # loop runs its callbacks, so a callback whose wake() was skipped still runs.
        self._pending = False
        if hasattr(os, "eventfd"):
            self._rfd = self._wfd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            self._token = (1).to_bytes(8, "little")
            self._pair = None
        else:
            self._pair = socket.socketpair()
            for s in self._pair:
                s.setblocking(False)
            self._rfd, self._wfd = self._pair[0].fileno(), self._pair[1].fileno()
            self._token = b"\0"

    @property
    def fd(self) -> int:
        return self._rfd

    def wake(self) -> None:
        if self._pending:
            return
        with self._lock:
            if self._closed:
                return  # the loop is gone: nothing to wake
            self._pending = True
            try:
                os.write(self._wfd, self._token)
            except (BlockingIOError, InterruptedError):
                pass  # already pending: the loop will wake anyway

    def drain(self) -> None:
        try:
            if self._pair is None:
                os.read(self._rfd, 8)  # an eventfd gives its whole count in one read
            else:
                while os.read(self._rfd, 4096):
                    pass
        except (BlockingIOError, InterruptedError):
            pass
        # After the read: clearing first would let a wake() in between write a token
        # that the read then takes, leaving _pending set with nothing to wake the loop.
        self._pending = False

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._pair is not None:
                for s in self._pair:
                    s.close()
            else:
                os.close(self._rfd)


class _WakeHandler:
    def __init__(self, loop: EventLoop) -> None:
        self._loop = loop

    def on_readable(self) -> None:
        self._loop._waker.drain()

    def on_writable(self) -> None:  # never watched for writing
        pass

    def on_error(self, exc: BaseException) -> None:
        pass


class EventLoop:
    """Runs until `stop()`: waits on the backend, fires due timers, runs callbacks."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.now = time.monotonic()  # the loop's clock, refreshed once per turn
        self._handlers: dict[int, Handler] = {}
        self._timers: list[tuple[float, int, Timer]] = []
        self._timer_seq = 0
        self._live_timers = 0
        self._ready: collections.deque[tuple[Callable[..., Any], tuple]] = collections.deque()
        self._writers: list[Handler] = []  # (see write_soon)
        self._stopping = False
        self._waker = _Waker()
        self._thread_id: int | None = None
        self.watch(self._waker.fd, _WakeHandler(self), READABLE)

    # -- fds -------------------------------------------------------------

    def watch(self, fd: int, handler: Handler, events: int) -> None:
        """Start (or change) watching `fd` for `events`; `handler` receives them."""
        if fd in self._handlers:
            self.backend.modify(fd, events, handler)
        else:
            self.backend.register(fd, events, handler)
        self._handlers[fd] = handler

    def set_interest(self, fd: int, events: int) -> None:
        """Change what `fd` is watched for; a no-op (no syscall) when unchanged."""
        # The selector's key holds the events and skips the syscall when they
        # are unchanged: the loop keeps no copy of its own.
        self.backend.modify(fd, events, self._handlers[fd])

    def unwatch(self, fd: int) -> None:
        """Stop watching `fd`.  Call before closing it (a closed fd cannot be removed)."""
        if self._handlers.pop(fd, None) is not None:
            self.backend.unregister(fd)

    def is_watching(self, fd: int) -> bool:
        return fd in self._handlers

    def write_soon(self, handler: Handler) -> None:
        """Call `handler.on_writable()` before the loop waits again, as if its fd had
        been reported writable: an optimistic write, batched with this turn's others.

        Sends made back to back cost the kernel less than sends spread between the
        work of other requests (the client is woken once for several answers), and
        the loop never waits with such a write pending.  The handler is called even
        if its fd is not watched (a connection that stopped reading while its app
        ran), so one closed meanwhile must ignore the call.
        """
        self._writers.append(handler)

    # -- timers and callbacks ---------------------------------------------

    def call_at(self, when: float, callback: Callable[[], Any]) -> Timer:
        timer = Timer(self, when, callback)
        timer.reschedule(when)
        return timer

    def call_later(self, delay: float, callback: Callable[[], Any]) -> Timer:
        return self.call_at(self.now + delay, callback)

    def _push_timer(self, timer: Timer) -> None:
        self._timer_seq += 1
        timer._queued_when = timer.when
        timers = self._timers
        heapq.heappush(timers, (timer.when, self._timer_seq, timer))
        # Only a push grows the heap: checked here, stale entries (cancelled or
        # superseded timers not yet due) never outnumber live ones by much.
        if len(timers) > 2 * self._live_timers + _HEAP_COMPACT_MIN:
            self._compact_timers()

    def call_soon(self, callback: Callable[..., Any], *args: Any) -> None:
        self._ready.append((callback, args))

    def call_soon_threadsafe(self, callback: Callable[..., Any], *args: Any) -> None:
        """Queue `callback` from any thread (or a signal handler) and wake the loop."""
        self._ready.append((callback, args))  # deque.append is atomic
        self._waker.wake()

    def add_signal_handler(self, signum: int, callback: Callable[[], Any]) -> None:
        """Run `callback` in the loop when `signum` arrives (main thread only)."""
        signal.signal(signum, lambda _signum, _frame: self.call_soon_threadsafe(callback))

    # -- running ------------------------------------------------------------

    def stop(self) -> None:
        """Make `run()` return after the current turn."""
        self._stopping = True
        if self._thread_id is not None and self._thread_id != threading.get_ident():
            self._waker.wake()

    def run(self) -> None:
        self._stopping = False
        self._thread_id = threading.get_ident()
        try:
            while not self._stopping:
                self.run_once()
        finally:
            self._thread_id = None

    def run_once(self) -> None:
        """One turn: wait for readiness or the next timer, dispatch, fire timers."""
        timeout = self._select_timeout()
        ready = self.backend.select(timeout)
        self.now = time.monotonic()
        handlers = self._handlers
        for key, events in ready:
            handler = key.data
            fd = key.fd
            # Skip events for a handler closed earlier in this batch, even if a
            # new one already holds the same fd number.
            if handlers.get(fd) is not handler:
                continue
            try:
                if events & READABLE:
                    handler.on_readable()
                if events & WRITABLE and handlers.get(fd) is handler:
                    handler.on_writable()
            except Exception as exc:
                self._handler_failed(handler, exc)
            if len(self._writers) >= WRITE_BATCH:
                self._run_writers()
        timers = self._timers
        if timers and timers[0][0] <= self.now:  # (most turns: nothing is due)
            self._run_due_timers()
        if self._ready:
            self._run_callbacks()
        if self._writers:
            self._run_writers()

    def _select_timeout(self) -> float | None:
        if self._ready or self._writers or self._stopping:
            return 0
        if not self._timers:
            return None
        return max(0.0, self._timers[0][0] - time.monotonic())

    def _run_due_timers(self) -> None:
        timers = self._timers
        now = self.now
        while timers and timers[0][0] <= now:
            queued_when, _, timer = heapq.heappop(timers)
            if not timer.active or queued_when != timer._queued_when:
                continue  # cancelled, or superseded by an earlier reschedule
            if timer.when > now:
                self._push_timer(timer)  # moved later since it was queued
                continue
            timer.active = False
            self._live_timers -= 1
            try:
                timer.callback()
            except Exception as exc:
                self._handler_failed(timer.callback, exc)

    def _compact_timers(self) -> None:
        self._timers = [
            entry for entry in self._timers if entry[2].active and entry[0] == entry[2]._queued_when
        ]
        heapq.heapify(self._timers)

    def _run_callbacks(self) -> None:
        # Only what is queued now: callbacks queued by these run next turn.
        for _ in range(len(self._ready)):
            callback, args = self._ready.popleft()
            try:
                callback(*args)
            except Exception as exc:
                self._handler_failed(callback, exc)

    def _run_writers(self) -> None:
        # Until none is left: a write that completes an answer may answer the next
        # pipelined request, which asks for another.
        writers = self._writers
        while writers:
            self._writers = []
            for handler in writers:
                try:
                    handler.on_writable()
                except Exception as exc:
                    self._handler_failed(handler, exc)
            writers = self._writers

    def _handler_failed(self, culprit: Any, exc: Exception) -> None:
        log.error("unhandled error in %r", culprit, exc_info=exc)
        on_error = getattr(culprit, "on_error", None)
        if on_error is None:
            owner = getattr(culprit, "__self__", None)  # a bound method's object
            on_error = getattr(owner, "on_error", None)
        if on_error is not None:
            try:
                on_error(exc)
            except Exception:
                log.exception("error while closing %r after a failure", culprit)

    def close(self) -> None:
        """Release the backend and the waker.  Watched fds are not closed here."""
        self.unwatch(self._waker.fd)
        self._waker.close()
        self.backend.close()
