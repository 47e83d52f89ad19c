"""Who answers a request: the server's own routes, the application (in the loop or
on the worker pool), and the 500 when the application fails.

Connections hand `Dispatch` each complete request, and the head of each request
with a body before that body is read.  An answer given in the loop is returned;
one from a worker goes through the small handle the connection passed
(`handle.respond(response)` in the loop's thread, then `handle.resume()`, which
a threaded body also calls when it has more).  It imports neither
connection.py nor server.py: dependencies point one way.

What it promises:
- The server's own routes (`--stats-path`, `--health-path`, `--metrics-path`) and the
  application's answers from the head (`on_head`: static files, refusals) are
  given in the loop and never wait behind the worker pool.
- With a pool, every call into the application runs on a worker thread: the
  call, the iteration of a streamed body (`workers.ThreadedBody`), and the
  close() of a file body (which may run the framework's end-of-request hooks,
  Django's `request_finished` among them).
- An application that raises, or answers something that is not a `Response`,
  gets a logged 500; the connection stays usable.

An application may answer from the head by carrying an `on_head(request)`
attribute: given the head and the addresses (`request.body` is b"" then), it
returns a `Response` that needs neither the body nor a worker thread, or None.
It is asked before a body is read, and with a pool before any request goes to a
worker; without a pool a request without a body goes straight to the app, so
the hot path pays nothing for it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

from .app import Request, Response, internal_error, is_native
from .config import Config

log = logging.getLogger("selserve")

__all__ = ["Dispatch", "Handle", "as_native"]


class Handle(Protocol):
    """What dispatch may do to the connection a request came from (in the loop)."""

    def respond(self, response: Response) -> None: ...
    def resume(self) -> None: ...


Route = Callable[[Request], "Response | None"]


class Dispatch:
    """Answers requests for one server (see the module docstring)."""

    __slots__ = ("app", "routes", "pool", "dispatch", "_on_head")

    def __init__(self, app: Callable, *, pool=None, routes: dict[str, Route] | None = None):
        self.app = app
        self.routes = routes or {}  # path -> route(request): a Response, or None to pass
        self.pool = pool  # workers.WorkerPool, or None to call the app in the loop
        self._on_head = getattr(app, "on_head", None)
        # dispatch(request, handle): the answer to a complete request, or None when a
        # worker will give it through `handle`.  Chosen once, so that no request pays
        # for what it cannot need (the plain case is `call` itself).
        if pool is not None:
            self.dispatch = self._on_pool
        elif self.routes:
            self.dispatch = self._with_routes
        else:
            self.dispatch = self.call

    def answer_from_head(self, request: Request) -> Response | None:
        """An answer that needs neither the body nor a worker, or None."""
        if self.routes:
            response = self._route(request)
            if response is not None:
                return response
        on_head = self._on_head
        if on_head is None:
            return None
        try:
            response = on_head(request)
        except Exception:
            log.exception("application error answering %s %s", request.method, request.target)
            return internal_error()
        if response is None or isinstance(response, Response):
            return response
        log.error("on_head returned %r, not a Response", type(response).__name__)
        return internal_error()

    def _with_routes(self, request: Request, handle: Handle) -> Response:
        # `call` written out, with the route lookup before it: this runs for every
        # request once a server route exists, and a frame more cost 2% of a hello.
        if request.path in self.routes:
            response = self._route(request)
            if response is not None:
                return response
        try:
            response = self.app(request)
        except Exception:
            return self._app_failed(request)
        if type(response) is Response:
            return response
        return self._checked(response)

    def _on_pool(self, request: Request, handle: Handle) -> Response | None:
        # Static files and the server's own routes are answered here, not on a worker
        # (a request with a body was offered to answer_from_head at its head already).
        answer = None
        if not (request.chunked or request.content_length):
            answer = self.answer_from_head(request)
        if answer is None:
            self.pool.submit(self.call, request, handle)
        return answer

    def _route(self, request: Request) -> Response | None:
        route = self.routes.get(request.path)
        if route is None:
            return None
        try:
            return route(request)
        except Exception:
            log.exception("error in the server's route %s", request.path)
            return internal_error()

    def call(self, request: Request, handle: Handle | None = None) -> Response:
        """The application's answer, or a 500 if it fails; never raises.  (`handle` is
        not used: the signature is dispatch's, so that call can be dispatch.)"""
        try:
            response = self.app(request)
        except Exception:
            return self._app_failed(request)
        if type(response) is Response:
            return response
        return self._checked(response)

    @staticmethod
    def _app_failed(request: Request) -> Response:
        log.exception("application error on %s %s", request.method, request.target)
        return internal_error()

    @staticmethod
    def _checked(response) -> Response:
        """An answer that is not exactly a Response: a subclass passes, anything else
        is the application's mistake (a 500)."""
        if isinstance(response, Response):
            return response
        log.error("application returned %r, not a Response", type(response).__name__)
        return internal_error()


def as_native(app: Callable, config: Config) -> Callable:
    """`app` itself if it is native (see `selserve.app.native`), else the WSGI
    application `app` behind a `WSGIAdapter` configured from `config`."""
    if is_native(app):
        return app
    from .wsgi import WSGIAdapter

    return WSGIAdapter(
        app,
        root_path=config.root_path,
        expose_tracebacks=config.expose_tracebacks,
        url_scheme=config.url_scheme,
        multithread=config.thread_count(blocking_app=True) > 0,
    )
