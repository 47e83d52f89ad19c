"""Listeners, accepting, the connection cap and graceful shutdown.

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
import resource
import signal
import socket
import stat
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable

from . import backends
from .accesslog import AccessLog, clf_time
from .activation import InheritedSocketError, inherited_socket
from .app import Request, Response
from .backends import READABLE
from .config import Config
from .connection import INTERNAL_ERROR, RECLAIMED, SHUTDOWN, Connection
from .context import ConnectionContext
from .dispatch import Dispatch, as_native
from .http import response as wire
from .http.exchange import ExchangeSettings
from .loop import EventLoop
from .notices import ThrottledWarning
from .scoreboard import NOT_ACCEPTING, Scoreboard
from .transport import prepare_socket
from .workers import WorkerPool

log = logging.getLogger("selserve")

# Connections accepted per listener per turn, for fairness with the rest of the loop.
ACCEPT_BATCH = 64
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


class BindError(ValueError):
    """A --bind address that cannot be parsed or listened on."""


def parse_bind(address: str) -> tuple[int, object]:
    """'HOST:PORT', '[IPV6]:PORT' or 'unix:PATH' → (family, sockaddr)."""
    if address.startswith("unix:"):
        path = address[5:]
        if not path:
            raise BindError(f"bind address {address!r} needs a path, e.g. unix:/tmp/selserve.sock")
        return socket.AF_UNIX, path
    host, sep, port_text = address.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise BindError(
            f"bind address {address!r} is not HOST:PORT, [IPV6]:PORT or unix:PATH "
            "(e.g. 127.0.0.1:8000)"
        )
    port = int(port_text)
    if host.startswith("[") and host.endswith("]"):
        return socket.AF_INET6, (host[1:-1], port)
    if ":" in host:
        raise BindError(f"bind address {address!r}: write IPv6 hosts in brackets, e.g. [::1]:8000")
    return socket.AF_INET, (host or "0.0.0.0", port)


def create_listener(address: str, backlog: int) -> socket.socket:
    if address.startswith("fd://"):  # a socket opened for us (systemd, a shell's <>)
        fd = address[5:]
        if not fd.isdigit():
            raise BindError(f"bind address {address!r}: write fd://N with N a descriptor")
        try:
            return inherited_socket(int(fd))
        except InheritedSocketError as exc:
            raise BindError(f"bind address {address!r}: {exc}") from None
    family, sockaddr = parse_bind(address)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if family == socket.AF_UNIX:
            _remove_stale_unix_socket(sockaddr)
        else:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(sockaddr)
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise BindError(f"cannot listen on {address}: {exc.strerror or exc}") from None
    return sock


def listener_url(sock: socket.socket) -> str:
    """Where a listening socket can be reached: http://HOST:PORT or unix:PATH."""
    if sock.family == socket.AF_UNIX:
        return f"unix:{sock.getsockname()}"
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _remove_stale_unix_socket(path: str) -> None:
    try:
        if stat.S_ISSOCK(os.stat(path).st_mode):
            os.unlink(path)
    except FileNotFoundError:
        pass


def raise_open_file_limit() -> int:
    """Lift the soft RLIMIT_NOFILE to the hard limit; returns the limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


class Listener:
    """A listening socket as a loop handler: readable means 'connections are waiting'."""

    __slots__ = ("server", "sock", "fd", "address", "unix_path", "local", "owned")

    def __init__(self, server: Server, sock: socket.socket, address: str, owned: bool = True):
        self.server = server
        self.sock = sock
        self.fd = sock.fileno()
        self.address = address
        # A listener handed down (by a supervisor, by systemd) is shared: closing our
        # copy must not remove its Unix socket's path (others still listen there).
        self.owned = owned and not address.startswith("fd://")
        self.unix_path = sock.getsockname() if sock.family == socket.AF_UNIX else None
        # What applications see as the server's address (port 0 resolved).
        self.local = self.unix_path if self.unix_path is not None else sock.getsockname()[:2]

    def on_readable(self) -> None:
        self.server.accept_from(self)

    def on_writable(self) -> None:
        pass

    def on_error(self, exc: BaseException) -> None:
        pass  # a bug in accepting is logged by the loop; the listener stays

    @property
    def url(self) -> str:
        return listener_url(self.sock)

    def close(self) -> None:
        self.sock.close()
        if self.unix_path and self.owned:
            try:
                os.unlink(self.unix_path)
            except OSError:
                pass


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
        routes = {}
        if config.stats_path:
            routes[config.stats_path] = self._stats_route
        self.dispatch = Dispatch(app, pool=self.pool, routes=routes)
        self.access_log = AccessLog(config.access_log) if config.access_log else None
        self.settings = ExchangeSettings(
            max_request_line=config.max_request_line,
            max_header_bytes=config.max_header_bytes,
            max_headers=config.max_headers,
            max_body_size=config.max_body_size,
            spill_threshold=config.body_spill_threshold,
            open_spill_file=self.open_spill_file,
        )
        self.context = ConnectionContext(
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
            access_log=self.access_log,
            debug=log.isEnabledFor(logging.DEBUG),
        )
        # Connections with no request in progress, oldest-idle first: the ones closed
        # to make room at the cap (shared with the connections, which keep it current).
        self.idle = self.context.idle
        self.counters = self.context.counters
        self.stopping = False
        # A worker under a supervisor stops by draining: idle keep-alive connections are
        # not closed in the client's face but answered once more, with Connection: close.
        self.drain_on_stop = False
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
                self.listeners.append(Listener(self, sock, address))
        except BindError:
            for listener in self.listeners:
                listener.close()
            self.listeners.clear()
            raise

    def adopt(self, sock: socket.socket, address: str) -> None:
        """Serve on a listening socket opened elsewhere (a supervisor's, shared with
        other workers): closing our copy leaves the socket to the others."""
        sock.setblocking(False)
        self.listeners.append(Listener(self, sock, address, owned=False))

    @property
    def urls(self) -> list[str]:
        return [listener.url for listener in self.listeners]

    def serve_forever(
        self, ready: Callable[[], object] | None = None, announce: bool = True
    ) -> None:
        """Run until shut down (SIGTERM/SIGINT in the main thread, or `shutdown()`).
        `ready()` is called once everything is set and the loop is about to turn;
        `announce` logs the listening line (the command line logs its own)."""
        if not self.listeners:
            self.bind()
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                self.loop.add_signal_handler(signum, self.begin_shutdown)
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
        """Ask a running server to stop gracefully; safe from any thread."""
        self.loop.call_soon_threadsafe(self.begin_shutdown)

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
            self.accepted(sock, peer, listener.local)

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
        if not board.lighter_than(slot, len(self.connections), self.counters["accepted"]):
            return False
        self.count("accept-left-to-sibling")
        self._took_turn = True
        self._pause_accepting()
        self._paused_until = self.loop.now + BALANCE_PAUSE
        self.loop.call_later(BALANCE_PAUSE, self._resume_accepting)
        return True

    def _publish_load(self) -> None:
        board, slot, _ = self._shared
        board.load(
            slot,
            len(self.connections) if not self.stopping else NOT_ACCEPTING,
            self.counters["accepted"],
        )

    def _reclaimable(self) -> Connection | None:
        """The longest-idle connection, if it has been idle for RECLAIM_MIN_IDLE."""
        for conn, idle_since in self.idle.items():
            if self.loop.now - idle_since >= RECLAIM_MIN_IDLE:
                return conn
            return None  # the oldest is too young, so are the rest
        return None

    def _retry_when_reclaimable(self) -> None:
        """With accepting paused at the cap, look again once the oldest idle one is old enough."""
        if self._reclaim_timer is not None or not self.idle:
            return
        idle_since = next(iter(self.idle.values()))
        delay = max(0.0, idle_since + RECLAIM_MIN_IDLE - self.loop.now)
        self._reclaim_timer = self.loop.call_later(delay, self._reclaim_timer_fired)

    def _reclaim_timer_fired(self) -> None:
        self._reclaim_timer = None
        self._resume_accepting()

    def accepted(self, sock: socket.socket, peer, local=None) -> None:
        self.counters["accepted"] += 1
        if not self.backend.can_watch(sock.fileno()):
            self._refuse_unwatchable(sock)
            return
        try:
            conn = Connection(self.context, prepare_socket(sock), peer, local)
        except Exception as exc:
            # A client gone already (EINVAL from setsockopt) or a bug: either way
            # this one socket is closed and accepting goes on.
            log.debug("could not set up the connection from %r: %s", peer, exc)
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
        self.idle.pop(conn, None)
        if self._shared is not None:
            self._publish_load()
        self.counters[reason] += 1
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
        self.begin_shutdown()

    def became_idle(self) -> None:
        """A connection went idle (it is in `idle` now) while accepting is paused at
        the cap: look again once it is old enough to be reclaimed, so a client
        waiting in the backlog does not wait for a keep-alive timeout."""
        if not self.stopping and self._paused_until <= self.loop.now:
            self._retry_when_reclaimable()

    def count(self, what: str) -> None:
        self.counters[what] += 1

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

    def stats(self) -> dict:
        """Counters for monitoring: connections, requests, bytes, and why connections
        closed; with workers sharing a scoreboard, summed over all of them."""
        if self._shared is None:
            counts, gauges = self.snapshot().values()
            uptime, extra = time.time() - self.started, {}
        else:
            board, slot, started = self._shared
            board.beat(slot, os.getpid(), self.snapshot())  # our own figures, fresh
            counts, gauges, per_worker = board.total()
            uptime = time.time() - started
            extra = {"workers": len(per_worker), "requests_by_worker": per_worker}
        return {
            "uptime_seconds": round(uptime, 3),
            "backend": self.backend.name,
            **extra,
            "connections_open": gauges.get("connections_open", 0),
            "connections_idle": gauges.get("connections_idle", 0),
            "connections_accepted": counts.get("connections_accepted", 0),
            "connection_limit": gauges.get("connection_limit", 0),
            "requests": counts.get("requests", 0),
            "bytes_in": counts.get("bytes_in", 0),
            "bytes_out": counts.get("bytes_out", 0),
            "events": dict(sorted(counts.get("events", {}).items())),
        }

    def snapshot(self) -> dict:
        """This process's figures: counts (only ever grow) and gauges (right now)."""
        live = self.connections
        counts = {
            "connections_accepted": self.counters["accepted"],
            "requests": self.requests,
            "bytes_in": self.bytes_in + sum(conn.bytes_in for conn in live),
            "bytes_out": self.bytes_out + sum(conn.out.bytes_sent for conn in live),
            "events": dict(self._events()),
        }
        gauges = {
            "connections_open": len(live),
            "connections_idle": len(self.idle),
            "connection_limit": self.limit,
        }
        return {"counts": counts, "gauges": gauges}

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
        board.beat(slot, os.getpid(), self.snapshot() if self.config.stats_path else None)

    def _events(self) -> Counter[str]:
        events = self.counters.copy()
        if self.access_log is not None and self.access_log.lines_lost:
            events["access-log-lines-lost"] = self.access_log.lines_lost
        return events

    def _stats_route(self, request: Request) -> Response | None:
        """--stats-path: GET or HEAD; other methods go on to the app."""
        if request.method == "GET" or request.method == "HEAD":
            return self.stats_response()
        return None

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
        """Stop accepting, close idle connections, let in-flight ones finish up to the deadline."""
        if self.stopping:
            return
        self.stopping = True
        self.settings.keep_alive = False  # every answer from now on closes its connection
        if self._shared is not None:
            self._publish_load()  # (as not accepting: siblings no longer leave clients to us)
        count = len(self.connections)
        log.info("shutting down: %d connection%s open", count, "" if count == 1 else "s")
        self._pause_accepting()
        for listener in self.listeners:
            listener.close()
        self.listeners.clear()
        if not self.drain_on_stop:
            for conn in list(self.connections):
                if conn.idle:
                    conn.close(SHUTDOWN)
        if not self.connections:
            self.loop.stop()
            return
        self.loop.call_later(self.config.shutdown_timeout, self._shutdown_deadline)

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
    server.bind()
    server.serve_forever()
