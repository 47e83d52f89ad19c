"""Accepting, the connection cap and graceful shutdown (the listening sockets are
listeners.py's).

The server owns the loop, the listening sockets and the set of live
connections.  It accepts until the kernel says `BlockingIOError` (at most
`ACCEPT_BATCH` per turn so one busy listener cannot starve the rest), skips
errors about one client (`ECONNABORTED`, network errors accept(2) passes on),
pauses accepting briefly on `EMFILE`/`ENFILE` or any other failure of the
listener, and at the connection cap stops watching its listeners until a
connection closes or goes idle long enough to be reclaimed; a readiness event
is never dropped on the floor.  It never blocks and never lets one
connection's failure, nor one of its own (a log it cannot write, a disk it
cannot fill), reach another connection.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import socket
import sys
import tempfile
import threading
import time
import typing
from collections import Counter
from collections.abc import Callable
from operator import itemgetter

from . import backends
from .accesslog import AccessLog, clf_time
from .app import Request, Response
from .backends import READABLE
from .config import Config
from .connection import Connection
from .context import ConnectionContext
from .dispatch import Dispatch, as_native
from .forwarded import TrustedPeers, forwarded_request_class
from .http import response as wire
from .http.exchange import ExchangeSettings
from .listeners import (
    BindError,
    Listener,
    create_listener,
    raise_open_file_limit,
    refuse_new_clients,
)
from .loop import EventLoop
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .metrics import RequestMetrics, exposition
from .notices import ThrottledWarning
from .reasons import INTERNAL_ERROR, RECLAIMED, RECV_ERROR, SHUTDOWN
from .scoreboard import NOT_ACCEPTING, Scoreboard
from .transport import prepare_socket
from .workers import WorkerPool

if typing.TYPE_CHECKING:
    from .tls import ServerTLS

log = logging.getLogger("selserve")

# Connections accepted per listener per turn, for fairness with the rest of the loop.
ACCEPT_BATCH = 64
# After a stop (SIGTERM), how long idle keep-alive connections may still bring one
# last request (answered with Connection: close) before they are closed: longer than a
# balancer takes to see the closed listener and stop sending (HAProxy checking every
# second: 1-2 s).  Closed after 1 s, one request in 100,000 failed behind HAProxy.
IDLE_GRACE = 2.0
# The health path's answers: plain text, never cached by a proxy in between.
_HEALTH_HEADERS = (("Content-Type", "text/plain"), ("Cache-Control", "no-store"))
# How long a worker leaves a waiting client to a less loaded sibling (see
# Server._leave_to_lighter_worker).
BALANCE_PAUSE = 0.005
# A connection must have been idle this long before it is closed to make room
# at the cap: one accepted a moment ago has its request on the way (a flood of
# real clients must queue in the backlog, not push each other out).
RECLAIM_MIN_IDLE = 0.5
# How long accepting pauses when the process is out of file descriptors.
FD_EXHAUSTED_PAUSE = 0.25
# At most one warning per this many seconds for a failure that repeats per
# connection or per request (out of descriptors, a full disk).
RESOURCE_WARNING_INTERVAL = 10.0

_since = itemgetter(1)  # of a (connection, idle since) pair

# accept() errors that concern one pending connection, not the listener: the
# client is gone, or (Linux) a network error already pending on the new socket,
# which accept(2) says to treat like EAGAIN.  Skip it and accept the next.
_ACCEPT_SKIP = frozenset(
    getattr(errno, name)
    for name in (
        "ECONNABORTED",
        "EPROTO",
        "ENETDOWN",
        "ENOPROTOOPT",
        "EHOSTDOWN",
        "ENONET",
        "EHOSTUNREACH",
        "EOPNOTSUPP",
        "ENETUNREACH",
        "EPERM",  # a firewall rule refused the connection
    )
    if hasattr(errno, name)
)


class Server:
    """An HTTP/1.1 server for one native application on one event loop."""

    def __init__(self, app: Callable, config: Config | None = None, **settings) -> None:
        self.app = app
        self.config = config = config if config is not None else Config(**settings)
        self.backend = backends.create(config.backend)
        self.loop = EventLoop(self.backend)
        self.connections: set[Connection] = set()
        self.listeners: list[Listener] = []
        self.limit = config.connection_limit
        # A pool for an app that may block (WSGI): `blocking` is its own word for it.
        threads = config.thread_count(getattr(app, "blocking", False))
        self.pool = WorkerPool(self.loop, threads, config.high_water) if threads else None
        self.dispatch = Dispatch(app, pool=self.pool, routes=self._own_routes())
        self.access_log = (
            AccessLog(config.access_log, config.access_log_format) if config.access_log else None
        )
        self.settings = ExchangeSettings(
            max_request_line=config.max_request_line,
            max_header_bytes=config.max_header_bytes,
            max_headers=config.max_headers,
            max_body_size=config.max_body_size,
            spill_threshold=config.body_spill_threshold,
            open_spill_file=self.open_spill_file,
        )
        self.context = self._connection_context()
        # The certificate context of the HTTPS listeners (--certfile), or None.  (ssl is
        # imported only here: a server without TLS does not pay its memory.)
        self.tls: ServerTLS | None = None
        if config.certfile:
            from .tls import ServerTLS
            from .tls_connection import TLSConnection

            self.tls = ServerTLS(config, self.context.request_class)
            self._tls_connection = TLSConnection
        self.counters = self.context.counters  # what the server and connections noted
        self.closed: Counter[str] = Counter()  # connections closed, by reason
        self.metrics = RequestMetrics() if config.metrics_path else None
        self.context.observe = self._observer()
        self.stopping = False
        self._closing_idle = False  # stopping, and idle connections are closed now
        self._close_idle_queued = False  # a pass of _close_idle is on its way
        self.draining = False  # the health path answers 503 (see begin_shutdown)
        self.on_leaving: Callable[[], object] | None = None  # called when max_requests is met
        self._took_turn = False  # see _leave_to_lighter_worker()

        self.started = time.time()
        self.bytes_in = 0  # of closed connections; live ones add theirs in stats()
        self.bytes_out = 0
        self._reclaim_timer = None
        self._paused_until = 0.0
        self._accept_warning = ThrottledWarning(RESOURCE_WARNING_INTERVAL)
        self._disk_warning = ThrottledWarning(RESOURCE_WARNING_INTERVAL)
        self._warned_unwatchable = False
        self._shared: tuple[Scoreboard, int, float] | None = None  # see share()
        self._server_line = (
            f"Server: {config.server_header}\r\n".encode("latin-1") if config.server_header else b""
        )
        self._refresh_date()

    def _own_routes(self) -> dict:
        """The server's own paths, answered before the app (and never on its pool)."""
        config = self.config
        routes = {}
        if config.stats_path:
            routes[config.stats_path] = self._stats_route
        if config.metrics_path:
            routes[config.metrics_path] = self._metrics_route
        if config.health_path:
            routes[config.health_path] = self._health_route
        return routes

    def _connection_context(self) -> ConnectionContext:
        config = self.config
        context = ConnectionContext(
            loop=self.loop,
            settings=self.settings,
            dispatch=self.dispatch,
            closed=self.connection_closed,
            became_idle=self.became_idle,
            served_enough=self._served_enough,
            body_store_failed=self.body_store_failed,
            header_timeout=config.header_timeout,
            body_timeout=config.body_timeout,
            write_timeout=config.write_timeout,
            keepalive_timeout=config.keepalive_timeout,
            high_water=config.high_water,
            low_water=config.low_water,
            debug=log.isEnabledFor(logging.DEBUG),
        )
        if config.proxy_headers:
            context.request_class = forwarded_request_class(
                Request,
                TrustedPeers.parse(config.forwarded_allow_ips),
                config.forwarded_headers,
                malformed=self._forwarded_malformed,
            )
        return context

    @property
    def accepting(self) -> bool:
        return self.context.accepting

    @property
    def requests(self) -> int:
        return self.context.requests

    # -- set-up ---------------------------------------------------------------

    def bind(self) -> None:
        """Open every --bind address; on failure close what was opened and raise BindError."""
        try:
            for address in self.config.binds:
                sock = create_listener(address, self.config.backlog)
                self.listeners.append(Listener(self, sock, address, tls=self._tls_of(address)))
        except BindError:
            for listener in self.listeners:
                listener.close()
            self.listeners.clear()
            raise

    def adopt(self, sock: socket.socket, address: str) -> None:
        """Serve on a listening socket opened elsewhere (a supervisor's, shared with
        other workers): closing our copy leaves the socket to the others."""
        sock.setblocking(False)
        self.listeners.append(Listener(self, sock, address, owned=False, tls=self._tls_of(address)))

    def _tls_of(self, address: str) -> ServerTLS | None:
        return self.tls if address in self.config.tls_binds else None

    def reload_tls(self) -> None:
        """Read the certificate and key again for new connections (SIGHUP); a reload that
        fails keeps the old ones."""
        if self.tls is not None:
            self.tls.reload()

    @property
    def urls(self) -> list[str]:
        return [listener.url for listener in self.listeners]

    def handle_stop_signals(self) -> None:
        """From now on SIGTERM stops gracefully and SIGINT at once (see begin_shutdown
        and interrupt), in the main thread only: they are queued for the loop.  Called
        before the listeners open, since from then on clients may be queued on them and
        the default action would drop them all."""
        if threading.current_thread() is threading.main_thread():
            self.loop.add_signal_handler(signal.SIGTERM, self.begin_shutdown)
            self.loop.add_signal_handler(signal.SIGINT, self.interrupt)

    def serve_forever(
        self, ready: Callable[[], object] | None = None, announce: bool = True
    ) -> None:
        """Run until shut down (SIGTERM/SIGINT in the main thread, or `shutdown()`).
        `ready()` is called once everything is set and the loop is about to turn;
        `announce` logs the listening line (the command line logs its own)."""
        self.handle_stop_signals()
        if not self.listeners:
            self.bind()
        self._resume_accepting()
        log.log(
            logging.INFO if announce else logging.DEBUG,
            "selserve listening on %s (backend %s, up to %d connections)",
            ", ".join(self.urls),
            self.backend.name,
            self.limit,
        )
        if ready is not None:
            ready()
        try:
            self.loop.run()
        finally:
            self._close_everything()
            if self._shared is not None:
                self._beat()  # the final counts, for the supervisor to keep

    def shutdown(self) -> None:
        """Ask a running server to stop gracefully, as `interrupt()` does (no drain
        delay); safe from any thread."""
        self.loop.call_soon_threadsafe(self.interrupt)

    # -- accepting ------------------------------------------------------------

    def accept_from(self, listener: Listener) -> None:
        connections = self.connections
        for _ in range(ACCEPT_BATCH):
            if self.stopping:
                return  # (stopping began while we served what we accepted)
            if self._shared is not None and self._leave_to_lighter_worker():
                return
            victim = None
            if len(connections) >= self.limit:
                victim = self._reclaimable()
                if victim is None:
                    # Every connection is busy (or only just went idle): stop
                    # watching listeners until a slot frees, so pending clients
                    # wait in the backlog instead of being dropped.
                    self.count("cap-reached")
                    self._pause_accepting()
                    self._retry_when_reclaimable()
                    return
            try:
                sock, peer = listener.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _ACCEPT_SKIP:
                    continue  # about that one client (it left, say): take the next
                self._accept_failed(exc)
                return
            if victim is not None:
                # Like nginx's reusable connections: the longest-idle connection
                # with no request in progress makes room for the new client.
                victim.close(RECLAIMED)
            self.accepted(sock, peer, listener.local, listener.tls)

    def _leave_to_lighter_worker(self) -> bool:
        """Workers sharing a listener are all woken for a client and the first to run
        takes it, so keep-alive clients pile up on one worker.  A worker ahead of
        another accepting one (scoreboard.lighter_than) stops watching the listeners
        for BALANCE_PAUSE, for the other to take the client; then takes its turn
        anyway, so that a busy sibling delays a client by that much at most."""
        if self._took_turn:
            self._took_turn = False
            return False
        board, slot, _ = self._shared
        if not board.lighter_than(slot, len(self.connections)):
            return False
        self.count("accept-left-to-sibling")
        self._took_turn = True
        self._pause_accepting()
        self._paused_until = self.loop.now + BALANCE_PAUSE
        self.loop.call_later(BALANCE_PAUSE, self._resume_accepting)
        return True

    def _publish_load(self) -> None:
        board, slot, _ = self._shared
        board.load(slot, len(self.connections) if not self.stopping else NOT_ACCEPTING)

    def _longest_idle(self) -> tuple[Connection, float] | None:
        """The connection idle longest (new, or kept alive after an answer: the
        connections' two queues, context.py), and since when."""
        heads = (self.context.fresh.oldest(), self.context.kept_alive.oldest())
        return min((head for head in heads if head is not None), key=_since, default=None)

    def _reclaimable(self) -> Connection | None:
        """The longest-idle connection, if it has been idle for RECLAIM_MIN_IDLE."""
        longest = self._longest_idle()
        if longest is not None and self.loop.now - longest[1] >= RECLAIM_MIN_IDLE:
            return longest[0]
        return None  # the oldest is too young, so are the rest

    def _retry_when_reclaimable(self) -> None:
        """With accepting paused at the cap, look again once the oldest idle one is old enough."""
        if self._reclaim_timer is not None:
            return
        longest = self._longest_idle()
        if longest is None:
            return
        delay = max(0.0, longest[1] + RECLAIM_MIN_IDLE - self.loop.now)
        self._reclaim_timer = self.loop.call_later(delay, self._reclaim_timer_fired)

    def _reclaim_timer_fired(self) -> None:
        self._reclaim_timer = None
        self._resume_accepting()

    def accepted(self, sock: socket.socket, peer, local=None, tls: ServerTLS | None = None) -> None:
        self.counters["accepted"] += 1
        if not self.backend.can_watch(sock.fileno()):
            self._refuse_unwatchable(sock)
            return
        if type(peer) is tuple:
            # One string per client host, not per connection: clients (and balancers)
            # open many each, and an idle connection keeps its peer (64 B less each).
            peer = (sys.intern(peer[0]), *peer[1:])
        try:
            if tls is None:
                conn = Connection(
                    self.context, prepare_socket(sock), peer, local, self.config.proxy_protocol
                )
            else:
                conn = self._tls_connection(
                    self.context, prepare_socket(sock), peer, local, self.config.proxy_protocol, tls
                )
        except OSError as exc:
            # The client is gone already: EINVAL from setsockopt, or a reset before the
            # TLS handshake could begin (ssl refuses to wrap such a socket).  Ordinary.
            log.debug("could not set up the connection from %r: %s", peer, exc)
            self.count(RECV_ERROR)
            sock.close()
            return
        except Exception as exc:
            # A bug: this one socket is closed and accepting goes on.
            log.exception("could not set up the connection from %r: %s", peer, exc)
            self.count(INTERNAL_ERROR)
            sock.close()
            return
        self.connections.add(conn)
        if self._shared is not None:
            self._publish_load()
        # Data often arrives with the connection: try to read it now rather
        # than a turn later.
        try:
            conn.on_readable()
        except Exception as exc:
            # A bug while serving its first bytes is that connection's, as in the
            # loop: logged, and the connection closed so that its slot comes back.
            log.exception("unhandled error in %r", conn)
            conn.close(INTERNAL_ERROR, exc)

    def _refuse_unwatchable(self, sock: socket.socket) -> None:
        fd = sock.fileno()
        self.count("refused-fd-limit")
        if not self._warned_unwatchable:
            self._warned_unwatchable = True
            log.warning(
                "backend %s cannot watch fd %d (limit %s): refusing such connections "
                "with 503; a backend without the limit (%s) would take them",
                self.backend.name,
                fd,
                self.backend.fd_limit,
                ", ".join(n for n in backends.available() if n != self.backend.name),
            )
        else:
            log.debug("refused connection on unwatchable fd %d", fd)
        sock.setblocking(False)
        try:
            sock.send(wire.error_response(503, "server at capacity", self.settings.fixed))
        except OSError:
            pass
        sock.close()

    def _accept_failed(self, exc: OSError) -> None:
        """accept() failed for the listener, not for one client (out of descriptors or
        memory, or something unforeseen): pause briefly instead of spinning on it."""
        if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
            self.count("accept-fd-exhausted")
        else:
            self.count("accept-error")
        self._accept_warning.warn(
            "accept failed (%s): pausing accepting for %.2fs", exc, FD_EXHAUSTED_PAUSE
        )
        self._pause_accepting()
        self._paused_until = self.loop.now + FD_EXHAUSTED_PAUSE
        self.loop.call_later(FD_EXHAUSTED_PAUSE, self._resume_accepting)

    def _pause_accepting(self) -> None:
        if self.context.accepting:
            self.context.accepting = False
            for listener in self.listeners:
                self.loop.unwatch(listener.fd)

    def _resume_accepting(self) -> None:
        if self.context.accepting or self.stopping:
            return
        if len(self.connections) >= self.limit and self._reclaimable() is None:
            self._retry_when_reclaimable()
            return
        if self.loop.now < self._paused_until:
            return  # an fd-exhaustion pause is still running; its timer resumes us
        self.context.accepting = True
        for listener in self.listeners:
            self.loop.watch(listener.fd, listener, READABLE)

    # -- connections ----------------------------------------------------------

    def connection_closed(self, conn: Connection, reason: str) -> None:
        self.connections.discard(conn)
        if self._shared is not None:
            self._publish_load()
        self.closed[reason] += 1
        self.bytes_in += conn.bytes_in
        self.bytes_out += conn.out.bytes_sent
        if not self.context.accepting:
            self._resume_accepting()
        if self.stopping and not self.connections:
            self.loop.stop()

    def stop_after(self, requests: int) -> None:
        """Stop gracefully once `requests` have been answered (a worker being recycled
        by --max-requests); 0 never."""
        self.context.max_requests = requests

    def _served_enough(self) -> None:
        log.info("served %d requests (--max-requests): leaving", self.requests)
        if self.on_leaving is not None:
            self.on_leaving()
        self.leave()

    def became_idle(self) -> None:
        """A connection went idle (it is in `idle` now) while accepting is paused.
        At the cap: look again once it is old enough to be reclaimed, so a client
        waiting in the backlog does not wait for a keep-alive timeout.  Stopping (an
        answer whose head promised keep-alive before the stop): close it as the
        other idle ones, at once if their time has come, else when it does."""
        if self.stopping:
            if self._closing_idle and not self._close_idle_queued:
                # One pass for all that go idle this turn (not from inside their calls).
                self._close_idle_queued = True
                self.loop.call_soon(self._close_idle)
        elif self._paused_until <= self.loop.now:
            self._retry_when_reclaimable()

    def count(self, what: str) -> None:
        self.counters[what] += 1

    def _forwarded_malformed(self, count: int) -> None:
        self.counters["forwarded-header-malformed"] += count

    def open_spill_file(self):
        """A temporary file for a request body past --body-spill-threshold."""
        self.count("body-spilled")
        return tempfile.TemporaryFile()  # noqa: SIM115 (the connection's RequestBody closes it)

    def body_store_failed(self, exc: OSError) -> None:
        self.count("body-store-failed")
        self._disk_warning.warn(
            "cannot store a request body (%s): answering 503; is the temporary directory %s full?",
            exc,
            tempfile.gettempdir(),
        )

    def figures(self) -> tuple[dict, dict, dict[int, int]]:
        """(counts, gauges, {pid: requests}) for the whole server: this process, or,
        with workers sharing a scoreboard, summed over all of them."""
        snapshot = self.snapshot()
        if self._shared is None:
            return snapshot["counts"], snapshot["gauges"], {os.getpid(): self.requests}
        board, slot, _ = self._shared
        board.beat(slot, os.getpid(), snapshot)  # our own figures, fresh
        return board.total()

    @property
    def started_at(self) -> float:
        """When the server (the first of its workers) started, in Unix time."""
        return self._shared[2] if self._shared is not None else self.started

    def stats(self) -> dict:
        """Counters for monitoring: connections, requests, bytes, and why connections
        closed; with workers sharing a scoreboard, summed over all of them."""
        counts, gauges, per_worker = self.figures()
        events = Counter(counts.get("events", {}))
        events.update(counts.get("closed", {}))
        extra = {}
        if self._shared is not None:
            extra = {"workers": len(per_worker), "requests_by_worker": per_worker}
        return {
            "uptime_seconds": round(time.time() - self.started_at, 3),
            "backend": self.backend.name,
            **extra,
            "connections_open": gauges.get("connections_open", 0),
            "connections_idle": gauges.get("connections_idle", 0),
            "connections_accepted": counts.get("connections_accepted", 0),
            "connection_limit": gauges.get("connection_limit", 0),
            "requests": counts.get("requests", 0),
            "bytes_in": counts.get("bytes_in", 0),
            "bytes_out": counts.get("bytes_out", 0),
            "events": dict(sorted(events.items())),
        }

    def snapshot(self) -> dict:
        """This process's figures: counts (only ever grow) and gauges (right now)."""
        live = self.connections
        events = self.counters.copy()
        del events["accepted"]  # (connections_accepted)
        if self.access_log is not None and self.access_log.lines_lost:
            events["access-log-lines-lost"] = self.access_log.lines_lost
        counts = {
            "connections_accepted": self.counters["accepted"],
            "requests": self.requests,
            "bytes_in": self.bytes_in + sum(conn.bytes_in for conn in live),
            "bytes_out": self.bytes_out + sum(conn.out.bytes_sent for conn in live),
            "closed": dict(self.closed),
            "events": dict(events),
        }
        if self.metrics is not None:
            counts.update(self.metrics.counts())
        gauges = {
            "connections_open": len(live),
            "connections_idle": len(self.context.fresh) + len(self.context.kept_alive),
            "connection_limit": self.limit,
        }
        return {"counts": counts, "gauges": gauges}

    def _observer(self) -> Callable | None:
        """What a connection calls once an answer ends (complete or cut short), as
        `observe(connection, request)`, for the access log and the metrics; None (no
        call at all) when neither is on.  `request` is None for a refusal before its
        head was read; else its peer is the client a proxy named (--proxy-headers)."""
        access_log, metrics = self.access_log, self.metrics
        log_answer = None
        if access_log is not None:
            write = access_log.write

            def log_answer(conn, request, seconds: float) -> None:
                peer = conn.peer if request is None else request.peer
                write(peer, request, conn.status, conn.body_sent(), seconds)

        if metrics is not None:
            return metrics.observer(then=log_answer)
        if log_answer is None:
            return None
        monotonic = time.monotonic

        def observe(conn, request) -> None:
            log_answer(conn, request, monotonic() - conn.started)

        return observe

    def share(self, board: Scoreboard, slot: int, started: float) -> None:
        """Work as one of several workers (`--workers`): beat into our `slot` of
        `board` every second (the supervisor watches it), and answer the stats path
        for all of them (`started`: when the first of them was)."""
        self._shared = (board, slot, started)
        self._beat()
        self._publish_load()

    def _beat(self) -> None:
        board, slot, _ = self._shared
        # Counters are gathered only when something reads them (the stats path).
        wanted = self.config.stats_path or self.config.metrics_path
        board.beat(slot, os.getpid(), self.snapshot() if wanted else None)

    def _stats_route(self, request: Request) -> Response | None:
        """--stats-path: GET or HEAD; other methods go on to the app."""
        if request.method == "GET" or request.method == "HEAD":
            return self.stats_response()
        return None

    def _metrics_route(self, request: Request) -> Response | None:
        """--metrics-path: the figures in the Prometheus text format."""
        if request.method != "GET" and request.method != "HEAD":
            return None
        counts, gauges, per_worker = self.figures()
        body = exposition(counts, gauges, len(per_worker), self.started_at).encode("utf-8")
        return Response(200, [("Content-Type", METRICS_CONTENT_TYPE)], body)

    def _health_route(self, request: Request) -> Response | None:
        """--health-path: 200 while serving, 503 from the moment a drain begins."""
        if request.method != "GET" and request.method != "HEAD":
            return None
        if self.draining:
            return Response(503, _HEALTH_HEADERS, b"draining\n")
        return Response(200, _HEALTH_HEADERS, b"ok\n")

    def stats_response(self) -> Response:
        body = json.dumps(self.stats(), indent=1).encode("ascii")
        return Response(200, [("Content-Type", "application/json")], body)

    def _refresh_date(self) -> None:
        now = time.time()
        # Refresh just after the next wall-clock second begins (armed first: whatever
        # happens below, the clock keeps ticking).
        self.loop.call_later(1.0 - (now % 1.0) + 0.001, self._refresh_date)
        settings = self.settings
        settings.date = wire.date_line(now)
        settings.fixed = settings.date + self._server_line
        if self.access_log is not None:
            self.access_log.now = clf_time(now)
            self.access_log.flush()
        if self._shared is not None:
            self._beat()

    # -- stopping -------------------------------------------------------------

    def begin_shutdown(self) -> None:
        """Stop gracefully, as an orchestrator means it (SIGTERM).  With --drain-delay,
        first go on serving that long while the health path answers 503, so that a
        balancer takes us out of rotation before anything is refused; a second call
        stops at once.  Then idle connections are not closed in their client's face
        at once, since a balancer may be sending on one at that very moment: for
        IDLE_GRACE a request on one is answered (with Connection: close), and only
        then are those still idle closed."""
        if self.stopping:
            return
        if self.config.drain_delay and not self.draining:
            self.draining = True
            log.info(
                "draining: the health path answers 503; listeners close in %.1f s",
                self.config.drain_delay,
            )
            self.loop.call_later(self.config.drain_delay, self._stop)
            return
        self._stop()

    def interrupt(self) -> None:
        """Stop gracefully, as a person at a terminal means it (SIGINT, Ctrl-C): no
        drain delay, idle keep-alive connections closed at once, in-flight answers
        finish."""
        self._stop(close_idle=True)

    def leave(self) -> None:
        """Stop gracefully at once, without a drain delay and leaving the clients queued
        on the listeners to the workers that stay (a reload, fewer workers, or
        --max-requests): the listening sockets live on in them."""
        self._stop(take_queued=False)

    def _stop(self, take_queued: bool = True, close_idle: bool = False) -> None:
        """Stop accepting, let in-flight answers finish up to --shutdown-timeout."""
        if self.stopping:
            if close_idle:  # (a Ctrl-C while stopping gently: hurry up)
                self._close_idle()
            return
        self.draining = True  # (the health path says 503 from now on, if not already)
        self.settings.keep_alive = False  # every answer from now on closes its connection
        self._pause_accepting()
        self._close_listeners(take_queued)
        self.stopping = True
        if self._shared is not None:
            self._publish_load()  # (as not accepting: siblings no longer leave clients to us)
        count = len(self.connections)
        log.info("shutting down: %d connection%s open", count, "" if count == 1 else "s")
        if close_idle:
            self._close_idle()
        else:
            self.loop.call_later(IDLE_GRACE, self._close_idle)
        if not self.connections:
            self.loop.stop()
            return
        self.loop.call_later(self.config.shutdown_timeout, self._shutdown_deadline)

    def _close_idle(self) -> None:
        self._closing_idle = True  # (from now on, as each goes idle: became_idle)
        self._close_idle_queued = False
        for conn in list(self.connections):
            if conn.idle:
                # A request may have arrived since the loop last looked (a balancer
                # sending on its pooled connection): read first, and answer it.
                conn.on_readable()
            if conn.idle:
                conn.close(SHUTDOWN)
        if not self.connections:
            self.loop.stop()

    def _close_listeners(self, take_queued: bool) -> None:
        """Close the listening sockets.  Closing one resets the clients queued in its
        backlog, which were told their connection is open (a balancer answers them
        502); so, with `take_queued`, first stop the kernel from completing new
        handshakes (those clients are refused, which a balancer retries elsewhere),
        then accept what is queued, to be answered (with Connection: close) like the
        rest, and close at once."""
        for listener in self.listeners:
            if take_queued:
                refuse_new_clients(listener.sock)
                for _ in range(self.config.backlog):
                    try:
                        sock, peer = listener.sock.accept()
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError as exc:
                        if exc.errno in _ACCEPT_SKIP:
                            continue
                        break  # out of descriptors, say: what is left is lost either way
                    self.accepted(sock, peer, listener.local, listener.tls)
            listener.close()
        self.listeners.clear()

    def _shutdown_deadline(self) -> None:
        if self.connections:
            log.warning("shutdown deadline: closing %d connections", len(self.connections))
        for conn in list(self.connections):
            conn.close("shutdown-deadline")
        self.loop.stop()

    def _close_everything(self) -> None:
        for conn in list(self.connections):
            conn.close(SHUTDOWN)
        if self.pool is not None:
            self.pool.shutdown()
        if self.access_log is not None:
            self.access_log.close()
        for listener in self.listeners:
            self.loop.unwatch(listener.fd)
            listener.close()
        self.listeners.clear()
        self.loop.close()


def serve(app: Callable, **settings) -> None:
    """Serve `app` (native, or any WSGI application) until SIGTERM/SIGINT.

    `settings` are Config fields, e.g. `serve(app, binds=["127.0.0.1:8000"])`.
    """
    raise_open_file_limit()
    config = Config(**settings)
    server = Server(as_native(app, config), config)
    server.handle_stop_signals()  # (before a client can be queued)
    server.bind()
    server.serve_forever()
