"""A thread pool for applications that block (`--threads N`).

The loop hands a complete request to a worker thread, which calls the
application.  For a streamed body the same worker goes on pulling pieces into
a `ThreadedBody`, a small hand-over queue bounded by the write buffer's high
water mark: the worker waits while the queue is full, so a generator yielding
gigabytes to a slow client holds at most that much memory.  Results reach the
loop only through `call_soon_threadsafe`; a worker never touches a socket or a
connection's state.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from .app import FileBody, Request, Response, close_body

log = logging.getLogger("selserve")


class _Wait:
    def __repr__(self) -> str:
        return "WAIT"


# Yielded by a body iterator that has nothing yet; it calls its `resume` later.
WAIT = _Wait()


class ThreadedBody:
    """A response body pulled in a worker thread and consumed in the loop."""

    def __init__(self, iterable, loop, resume: Callable[[], Any], limit: int) -> None:
        self._iterable = iterable
        self._loop = loop
        self._resume = resume
        self._limit = limit
        self._pieces: collections.deque[bytes] = collections.deque()
        self._size = 0
        self._cond = threading.Condition()
        self._done = False
        self._error: BaseException | None = None
        self._abandoned = False
        self._consumer_waiting = False

    # -- the worker's side -------------------------------------------------

    def run(self) -> None:
        """Pull the app's pieces until the end, an error or abandonment; then close it."""
        try:
            for piece in self._iterable:
                if not piece:
                    continue
                with self._cond:
                    while self._size >= self._limit and not self._abandoned:
                        self._cond.wait()
                    if self._abandoned:
                        break
                    self._pieces.append(piece)
                    self._size += len(piece)
                    wake = self._consumer_waiting
                    self._consumer_waiting = False
                if wake:
                    self._loop.call_soon_threadsafe(self._resume)
        except Exception as exc:
            self._error = exc
        finally:
            close_body(self._iterable, log)
            with self._cond:
                self._done = True
                wake = self._consumer_waiting
                self._consumer_waiting = False
            if wake:
                self._loop.call_soon_threadsafe(self._resume)

    # -- the loop's side ---------------------------------------------------

    def __iter__(self):
        return self

    def __next__(self):
        with self._cond:
            if self._pieces:
                piece = self._pieces.popleft()
                self._size -= len(piece)
                self._cond.notify()
                return piece
            if self._done:
                if self._error is not None:
                    raise self._error
                raise StopIteration
            self._consumer_waiting = True
            return WAIT

    def close(self) -> None:
        """The connection is done with the body (finished or gone): stop the worker."""
        with self._cond:
            self._abandoned = True
            self._pieces.clear()
            self._cond.notify_all()


class PoolClosedFile(FileBody):
    """A file body whose close() runs on a worker thread: closing an application's
    file may run the application's code (a framework's end-of-request hooks), and
    in threaded mode no application code runs in the loop."""

    __slots__ = ("_body", "_pool")

    def __init__(self, body: FileBody, pool: WorkerPool) -> None:
        super().__init__(body.fileobj, body.offset, body.count)
        self._body = body
        self._pool = pool

    def close(self) -> None:
        self._pool.close_later(self._body)


class WorkerPool:
    """N threads that run the application and pull streamed bodies."""

    def __init__(self, loop, size: int, body_limit: int) -> None:
        self._loop = loop
        self._body_limit = body_limit
        self._executor = ThreadPoolExecutor(size, thread_name_prefix="selserve-worker")
        self._closing: dict[Future, object] = {}  # close() calls queued, by their future

    def submit(self, call: Callable[[Request], Response], request: Request, handle) -> None:
        """Run `call(request)` on a worker; the answer goes to `handle.respond` in the
        loop, and a streamed body is pulled by the same worker (`handle.resume` tells
        the loop when it has more)."""
        self._executor.submit(self._run, call, request, handle)

    def _run(self, call, request, handle) -> None:
        response = call(request)  # never raises: a failing app is a 500 already
        body = response.body
        if isinstance(body, FileBody):
            file = PoolClosedFile(body, self)
            response = Response(response.status, response.headers, file, response.reason)
        elif body is not None and not isinstance(body, (bytes, bytearray, memoryview)):
            threaded = ThreadedBody(body, self._loop, handle.resume, self._body_limit)
            streamed = Response(response.status, response.headers, threaded, response.reason)
            self._loop.call_soon_threadsafe(_deliver, handle, streamed)
            threaded.run()
            return
        self._loop.call_soon_threadsafe(_deliver, handle, response)

    def close_later(self, body) -> None:
        """Call `body.close()` on a worker.  A close still queued when the pool shuts
        down is not dropped with the queued requests: it runs where it is cancelled."""
        try:
            future = self._executor.submit(close_body, body, log)
        except RuntimeError:  # the pool is shut down already (the server is stopping)
            close_body(body, log)
            return
        self._closing[future] = body
        future.add_done_callback(self._closed)

    def _closed(self, future: Future) -> None:
        body = self._closing.pop(future, None)
        if future.cancelled() and body is not None:
            close_body(body, log)

    def shutdown(self) -> None:
        # Running apps finish on their own; queued ones are dropped (their
        # connections are being closed by the server), queued close() calls run.
        self._executor.shutdown(wait=False, cancel_futures=True)


def _deliver(handle, response: Response) -> None:
    """In the loop: hand the answer over, then let the connection carry on (the
    next pipelined request, once this answer is out)."""
    handle.respond(response)
    handle.resume()
