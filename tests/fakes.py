"""Stand-ins for the event loop and a transport, for the tests of one connection
(test_connection.py, test_tls_connection.py): as waitress tests its channel with a
DummySock, they run without a socket, a thread or a clock, and let a test make a send
fail or stall at the byte it likes."""

from __future__ import annotations

import socket


class FakeTimer:
    def __init__(self, loop, when, callback):
        self.loop, self.when, self.callback, self.active = loop, when, callback, True

    def reschedule(self, when):
        self.when, self.active = when, True

    def cancel(self):
        self.active = False


class FakeLoop:
    """Records what is watched and in which order things happen; time stands still."""

    def __init__(self):
        self.now = 100.0
        self.watched: dict[int, int] = {}
        self.log: list[str] = []
        self.modifies = 0
        self.writers: list = []  # handlers that asked for write_soon

    def call_at(self, when, callback):
        return FakeTimer(self, when, callback)

    def call_later(self, delay, callback):
        return self.call_at(self.now + delay, callback)

    def watch(self, fd, handler, events):
        self.watched[fd] = events
        self.log.append(f"watch {events}")

    def set_interest(self, fd, events):
        self.watched[fd] = events
        self.modifies += 1

    def unwatch(self, fd):
        del self.watched[fd]
        self.log.append("unwatch")

    def is_watching(self, fd):
        return fd in self.watched

    def write_soon(self, handler):
        self.writers.append(handler)

    def end_turn(self):
        """What the real loop does before it waits again: the writes asked for."""
        while self.writers:
            writers, self.writers = self.writers, []
            for handler in writers:
                handler.on_writable()


class TurnsMixin:
    """For a test harness with `conn` and `loop` (a FakeLoop): deliver an event as the
    loop does, then end the loop's turn (the writes asked for with write_soon)."""

    def readable(self) -> None:
        self.conn.on_readable()
        self.loop.end_turn()

    def writable(self) -> None:
        self.conn.on_writable()
        self.loop.end_turn()


class FakeTransport:
    """Takes at most `window` bytes per send (None: everything); `fail` makes the next
    send raise that errno; `inbound` is what recv() returns, piece by piece."""

    def __init__(self, loop: FakeLoop, window: int | None = None):
        self.loop = loop
        self.window = window
        self.fail: int | None = None
        self.inbound: list[bytes] = []
        self.sent = bytearray()
        self.sends = 0
        self.shut = False
        self.closed = False

    def fileno(self):
        return 7

    def recv(self, size):
        if not self.inbound:
            raise BlockingIOError
        return self.inbound.pop(0)

    def send(self, data):
        if self.fail is not None:
            raise OSError(self.fail, "fake failure")
        if self.window == 0:
            raise BlockingIOError
        taken = bytes(data) if self.window is None else bytes(data[: self.window])
        self.sent += taken
        self.sends += 1
        if self.window is not None:
            self.window -= len(taken)
        return len(taken)

    def sendmsg(self, buffers, ancdata=(), flags=0):
        return self.send(b"".join(bytes(b) for b in buffers))

    def shutdown(self, how):
        self.shut = how == socket.SHUT_WR

    def close(self):
        self.closed = True
        self.loop.log.append("close")
