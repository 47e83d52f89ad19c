"""The event loop: dispatch, stale events, handler failures, timers, wake-ups, signals."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time

import pytest

from selserve import backends
from selserve.backends import READABLE, WRITABLE
from selserve.loop import DeadlineQueue, EventLoop

pytestmark = pytest.mark.timeout(20)


@pytest.fixture(params=backends.available())
def loop(request):
    loop = EventLoop(backends.create(request.param))
    yield loop
    loop.close()


class Recorder:
    """A handler that records its calls and runs an optional action on readability."""

    def __init__(self, sock: socket.socket, action=None):
        self.sock = sock
        self.action = action
        self.calls: list[str] = []

    def on_readable(self):
        self.calls.append("readable")
        if self.action:
            self.action(self)

    def on_writable(self):
        self.calls.append("writable")

    def on_error(self, exc):
        self.calls.append(f"error:{type(exc).__name__}")


def readable_pair():
    """A connected socket pair whose first end is readable."""
    a, b = socket.socketpair()
    b.send(b"x")
    return a, b


def test_event_for_handler_closed_earlier_in_batch_is_skipped_even_if_fd_reused(loop):
    (a1, b1), (a2, b2) = readable_pair(), readable_pair()
    fresh_a, fresh_b = readable_pair()
    victims = {}
    replacement = Recorder(None)

    def close_the_other(me):
        other = victims["second"] if me is victims["first"] else victims["first"]
        fd = other.sock.fileno()
        loop.unwatch(fd)
        other.sock.close()
        # A new connection takes the very same fd number within the batch.
        os.dup2(fresh_a.fileno(), fd)
        replacement.sock = socket.socket(fileno=fd)
        loop.watch(fd, replacement, READABLE)
        victims["closed"] = other

    victims["first"] = Recorder(a1, close_the_other)
    victims["second"] = Recorder(a2, close_the_other)
    loop.watch(a1.fileno(), victims["first"], READABLE)
    loop.watch(a2.fileno(), victims["second"], READABLE)

    loop.run_once()

    closed = victims["closed"]
    survivor = victims["first"] if closed is victims["second"] else victims["second"]
    assert survivor.calls == ["readable"]
    assert closed.calls == []
    assert replacement.calls == []  # the batch's event was for the old socket
    loop.run_once()
    assert replacement.calls == ["readable"]  # the new socket is served normally
    for s in (b1, b2, survivor.sock, replacement.sock, fresh_a, fresh_b):
        s.close()


def test_handler_exception_closes_that_handler_and_loop_goes_on(loop, caplog):
    (a1, b1), (a2, b2) = readable_pair(), readable_pair()

    def explode(_):
        raise RuntimeError("bug in one connection")

    def unwatch_after_error(handler):
        loop.unwatch(handler.sock.fileno())

    bad = Recorder(a1, explode)
    good = Recorder(a2, lambda h: h.sock.recv(1))
    bad_error = bad.on_error
    bad.on_error = lambda exc: (bad_error(exc), unwatch_after_error(bad))
    loop.watch(a1.fileno(), bad, READABLE)
    loop.watch(a2.fileno(), good, READABLE)

    loop.run_once()

    assert bad.calls == ["readable", "error:RuntimeError"]
    assert good.calls == ["readable"]
    assert "bug in one connection" in caplog.text
    b2.send(b"y")
    loop.run_once()
    assert good.calls == ["readable", "readable"]
    for s in (a1, b1, a2, b2):
        s.close()


def test_set_interest_to_unchanged_events_leaves_the_registration_alone(loop):
    a, b = socket.socketpair()
    loop.watch(a.fileno(), Recorder(a), READABLE)
    selector = loop.backend._selector
    key = selector.get_key(a.fileno())
    loop.set_interest(a.fileno(), READABLE)
    # The selector replaces its key whenever it goes to the kernel.
    assert selector.get_key(a.fileno()) is key
    a.close()
    b.close()


def test_set_interest_delivers_the_new_events_to_the_handler(loop):
    a, b = socket.socketpair()  # writable, nothing to read
    handler = Recorder(a)
    loop.watch(a.fileno(), handler, READABLE)
    loop.set_interest(a.fileno(), READABLE | WRITABLE)
    loop.run_once()
    assert handler.calls == ["writable"]
    a.close()
    b.close()


def test_watching_a_watched_fd_again_changes_its_events_and_handler(loop):
    a, b = socket.socketpair()  # writable, nothing to read
    first, second = Recorder(a), Recorder(a)
    loop.watch(a.fileno(), first, READABLE)
    loop.watch(a.fileno(), second, WRITABLE)
    loop.run_once()
    assert (first.calls, second.calls) == ([], ["writable"])
    a.close()
    b.close()


def test_a_write_asked_for_runs_in_the_same_turn_after_the_turns_events(loop):
    pairs = [readable_pair() for _ in range(3)]
    order = []

    def ask(me):
        order.append(("readable", me))
        loop.write_soon(me)

    handlers = [Recorder(a, ask) for a, _ in pairs]
    for h in handlers:
        h.on_writable = lambda h=h: order.append(("writable", h))  # (not watched for it)
        loop.watch(h.sock.fileno(), h, READABLE)
    loop.call_later(30, lambda: None)  # a turn that waited would wait 30 s
    started = time.monotonic()
    loop.run_once()
    assert time.monotonic() - started < 5
    assert [kind for kind, _ in order] == ["readable"] * 3 + ["writable"] * 3
    assert [h for kind, h in order if kind == "writable"] == [h for _, h in order[:3]]


def test_a_write_asked_for_between_turns_keeps_the_next_turn_from_waiting(loop):
    handler = Recorder(None)
    loop.call_later(30, lambda: None)
    loop.write_soon(handler)
    started = time.monotonic()
    loop.run_once()
    assert handler.calls == ["writable"] and time.monotonic() - started < 5


def test_writes_asked_for_by_writes_run_before_the_loop_waits(loop):
    handler = Recorder(None)
    left = [3]

    def write():
        handler.calls.append("writable")
        left[0] -= 1
        if left[0]:
            loop.write_soon(handler)  # (an answer out, the next pipelined one queued)

    handler.on_writable = write
    loop.write_soon(handler)
    loop.call_later(30, lambda: None)
    loop.run_once()
    assert handler.calls == ["writable"] * 3


def test_writes_wait_behind_at_most_a_batch_of_events(loop):
    from selserve.loop import WRITE_BATCH

    count = WRITE_BATCH + 4
    pairs = [readable_pair() for _ in range(count)]
    order = []

    def ask(me):
        order.append("r")
        loop.write_soon(me)

    for a, _ in pairs:
        h = Recorder(a, ask)
        h.on_writable = lambda: order.append("w")
        loop.watch(a.fileno(), h, READABLE)
    loop.run_once()
    assert order == ["r"] * WRITE_BATCH + ["w"] * WRITE_BATCH + ["r"] * 4 + ["w"] * 4


def test_a_write_that_raises_closes_that_handler_and_the_others_still_write(loop, caplog):
    failing, other = Recorder(None), Recorder(None)

    def fail():
        raise RuntimeError("boom")

    failing.on_writable = fail
    loop.write_soon(failing)
    loop.write_soon(other)
    loop.run_once()
    assert failing.calls == ["error:RuntimeError"] and other.calls == ["writable"]
    assert "boom" in caplog.text


def test_timers_fire_in_order_and_cancelled_ones_do_not(loop):
    fired = []
    loop.call_later(0.03, lambda: fired.append("late"))
    loop.call_later(0.01, lambda: fired.append("early"))
    cancelled = loop.call_later(0.02, lambda: fired.append("cancelled"))
    cancelled.cancel()
    loop.call_later(0.05, loop.stop)
    loop.run()
    assert fired == ["early", "late"]


def test_rescheduling_later_delays_the_timer(loop):
    fired = []
    timer = loop.call_later(0.01, lambda: fired.append(loop.now))
    start = loop.now
    timer.reschedule(start + 0.08)
    loop.call_later(0.15, loop.stop)
    loop.run()
    assert len(fired) == 1
    assert fired[0] - start >= 0.08


def test_rescheduling_earlier_fires_once_at_the_earlier_time(loop):
    fired = []
    timer = loop.call_later(5, lambda: fired.append(loop.now))
    start = loop.now
    timer.reschedule(start + 0.02)
    loop.call_later(0.1, loop.stop)
    loop.run()
    assert len(fired) == 1
    assert fired[0] - start < 1


def test_fired_timer_can_be_rearmed(loop):
    fired = []
    timer = loop.call_later(0.01, lambda: fired.append(1))
    loop.call_later(0.05, lambda: timer.reschedule(loop.now + 0.01))
    loop.call_later(0.15, loop.stop)
    loop.run()
    assert fired == [1, 1]


def test_cancelled_timers_do_not_pile_up_in_the_heap(loop):
    for _ in range(5000):
        loop.call_later(0.001, lambda: None).cancel()
    keeper = loop.call_later(0.002, lambda: None)
    loop.call_later(0.02, loop.stop)
    loop.run()
    assert len(loop._timers) < 600
    keeper.cancel()


def test_cancelled_timers_far_in_the_future_are_compacted_away(loop):
    # They never come due: only compaction on push keeps the heap near the live count.
    for _ in range(5000):
        loop.call_later(3600, lambda: None).cancel()
    assert len(loop._timers) <= 513


class Member:
    """A deadline queue's member: notes when it fell due (or failed to)."""

    def __init__(self, loop, name, fired, fail=False):
        self.loop, self.name, self.fired, self.fail = loop, name, fired, fail

    def on_timeout(self):
        self.fired.append((self.name, self.loop.now))
        if self.fail:
            raise RuntimeError("a member's own bug")

    def on_error(self, exc):
        self.fired.append((self.name, "on_error"))


def test_deadline_queue_members_fall_due_in_order_each_delay_after_joining(loop):
    fired = []
    queue = DeadlineQueue(loop, 0.05)
    timers_before = loop._live_timers
    first = [Member(loop, f"a{i}", fired) for i in range(1000)]
    for member in first:
        queue.add(member)
    joined_a = loop.now
    assert loop._live_timers == timers_before + 1  # one timer for a thousand members
    late = Member(loop, "b", fired)
    loop.call_later(0.03, lambda: queue.add(late))
    loop.call_later(0.2, loop.stop)
    loop.run()
    assert [name for name, _ in fired] == [m.name for m in first] + ["b"]
    assert all(when >= joined_a + 0.05 for _, when in fired)
    assert fired[-1][1] >= joined_a + 0.03 + 0.05 and not queue


def test_deadline_queue_member_that_leaves_or_joins_again_is_timed_accordingly(loop):
    fired = []
    queue = DeadlineQueue(loop, 0.05)
    gone, again, stays = (Member(loop, name, fired) for name in ("gone", "again", "stays"))
    for member in (gone, again, stays):
        queue.add(member)
    start = loop.now
    assert queue.leave(gone) == start and queue.leave(gone) is None

    def join_again():  # due 0.05 from now, after `stays`
        queue.leave(again)
        queue.add(again)

    loop.call_later(0.03, join_again)
    loop.call_later(0.2, loop.stop)
    loop.run()
    assert [name for name, _ in fired] == ["stays", "again"]
    assert fired[1][1] >= start + 0.08


def test_deadline_queue_member_that_raises_is_closed_and_the_others_still_fall_due(loop, caplog):
    fired = []
    queue = DeadlineQueue(loop, 0.01)
    for member in (Member(loop, "a", fired), Member(loop, "bad", fired, fail=True)):
        queue.add(member)
    queue.add(Member(loop, "c", fired))
    loop.call_later(0.1, loop.stop)
    loop.run()
    assert [entry[0] for entry in fired] == ["a", "bad", "bad", "c"]
    assert fired[2] == ("bad", "on_error") and "unhandled error" in caplog.text


@pytest.mark.parametrize("name", backends.available())
def test_waking_a_loop_already_closed_writes_nowhere(name):
    # A worker may finish its app after the server stopped: its wake-up must not
    # raise, nor write into whatever socket reuses the waker's fd number.
    loop = EventLoop(backends.create(name))
    loop.close()
    a, b = socket.socketpair()  # takes the lowest free fds: the ones just closed
    with a, b:
        loop.call_soon_threadsafe(lambda: None)
        for sock in (a, b):
            sock.setblocking(False)
            with pytest.raises(BlockingIOError):
                sock.recv(16)


def test_call_soon_threadsafe_wakes_a_blocked_select(loop):
    woke = []
    thread = threading.Timer(0.1, loop.call_soon_threadsafe, args=(lambda: woke.append(1),))
    thread.start()
    loop.call_soon(lambda: None)
    started = time.monotonic()
    while not woke and time.monotonic() - started < 5:
        loop.run_once()  # no timers: blocks in select() until woken
    thread.join()
    assert woke == [1]
    assert time.monotonic() - started < 2


def test_no_wake_up_is_lost_when_threads_race_the_loop(loop, monkeypatch):
    """wake() writes nothing while a token waits to be drained: four threads queueing
    callbacks as fast as they can, against a loop with no timer (a lost wake-up would
    leave it blocked in select for good), must see every callback run.  Draining is
    slowed down (the GIL goes to the threads right there), so that a wake() lands
    between the loop's read of the token and its clearing of the flag, again and again."""
    real_read = os.read
    waker_fd = loop._waker.fd

    def slow_read(fd, size):
        if fd == waker_fd:
            time.sleep(0.0002)
        return real_read(fd, size)

    monkeypatch.setattr(os, "read", slow_read)
    threads, each = 4, 3000
    ran = []
    done = threading.Event()

    def work():
        for _ in range(each):
            loop.call_soon_threadsafe(ran.append, 1)
            if len(ran) % 97 == 0:
                time.sleep(0)  # (let the loop drain in the middle of the others' wakes)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    watchdog = threading.Timer(10, lambda: (done.set(), loop.call_soon_threadsafe(loop.stop)))
    watchdog.start()
    try:
        started = time.monotonic()
        while len(ran) < threads * each and time.monotonic() - started < 10:
            loop.run_once()  # no timers: blocks in select() until woken
    finally:
        watchdog.cancel()
        for worker in workers:
            worker.join()
    assert not done.is_set(), f"only {len(ran)} of {threads * each} callbacks ran"
    assert len(ran) == threads * each


def test_stop_from_another_thread_ends_run(loop):
    threading.Timer(0.1, loop.stop).start()
    started = time.monotonic()
    loop.run()
    assert time.monotonic() - started < 2


def test_signal_handler_runs_in_the_loop(loop):
    got = []
    previous = signal.getsignal(signal.SIGUSR1)
    try:
        loop.add_signal_handler(signal.SIGUSR1, lambda: (got.append(1), loop.stop()))
        threading.Timer(0.1, os.kill, args=(os.getpid(), signal.SIGUSR1)).start()
        loop.call_later(5, loop.stop)
        loop.run()
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert got == [1]
