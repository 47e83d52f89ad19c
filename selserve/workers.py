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
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from .app import FileBody, Request, Response, close_body

log = logging.getLogger("selserve")


class _Wait:
    def __repr__(self) -> str:
        return "WAIT"

    def __len__(self) -> int:
        # Empty, so a producer's one test for an empty piece (`if not n`) also catches
        # WAIT, and the pieces with data pay no second test.
        return 0


# Yielded by a body iterator that has nothing yet; it calls its `resume` later.
WAIT = _Wait()

THREAD_PREFIX = "selserve-worker"  # the workers' thread names begin with this
EXIT_GRACE = 2.0  # seconds the workers get to finish at shutdown (see WorkerPool.shutdown)
_STOP = None  # the job that ends a worker


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
    """N threads that run the application and pull streamed bodies.

    Not `concurrent.futures.ThreadPoolExecutor`: a request needs no `Future`
    (the answer goes back through the loop), and the executor's submit and
    completion -- the future's condition, the idle semaphore, the shutdown
    locks -- cost more than a small app does.  A job here is one tuple on a
    `SimpleQueue` (C, one lock).
    """

    def __init__(self, loop, size: int, body_limit: int) -> None:
        self._loop = loop
        self._body_limit = body_limit
        self._size = size
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()  # (function, args) or _STOP
        self._threads: list[threading.Thread] = []
        self._closed = False

    def submit(self, call: Callable[[Request], Response], request: Request, handle) -> None:
        """Run `call(request)` on a worker; the answer goes to `handle.respond` in the
        loop, and a streamed body is pulled by the same worker (`handle.resume` tells
        the loop when it has more)."""
        if self._closed:  # (no worker would ever take it: its client would wait forever)
            raise RuntimeError("the worker pool is shut down")
        if not self._threads:
            self._start()  # (here, not in __init__: the server may be made before a fork)
        self._jobs.put((self._run, (call, request, handle)))

    def _start(self) -> None:
        for n in range(self._size):
            # Daemon threads: a stopping server waits for the answers in flight up to
            # its deadline, and an app that never returns must not keep it from exiting.
            thread = threading.Thread(target=self._work, name=f"{THREAD_PREFIX}_{n}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def _work(self) -> None:
        get = self._jobs.get
        while True:
            job = get()
            if job is _STOP:
                return
            function, args = job
            try:
                function(*args)
            except Exception:  # (_run and close_body catch the app's own failures)
                log.exception("error in a worker thread")

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
        down is not dropped with the queued requests: shutdown() runs it."""
        if self._closed:  # the server is stopping: no worker will take it
            close_body(body, log)
            return
        if not self._threads:
            self._start()
        self._jobs.put((close_body, (body, log)))

    def shutdown(self, grace: float = EXIT_GRACE) -> None:
        """Let the workers go.  Queued requests are dropped (the server is closing
        their connections), queued close() calls run here, and the workers get up to
        `grace` seconds to finish what they are doing: closing the bodies of
        connections just closed, which the app may be told of (a stalled stream's
        generator); an app that runs longer is left to end with the process."""
        self._closed = True
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not _STOP and job[0] is close_body:
                close_body(*job[1])
        for _ in self._threads:
            self._jobs.put(_STOP)
        deadline = time.monotonic() + grace
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        running = sum(thread.is_alive() for thread in self._threads)
        if running:
            log.warning("%d worker thread(s) still running the application at exit", running)


def _deliver(handle, response: Response) -> None:
    """In the loop: hand the answer over, then let the connection carry on (the
    next pipelined request, once this answer is out)."""
    handle.respond(response)
    handle.resume()
