"""`selserve --workers N`: a supervisor over worker processes that share its listeners.

The supervisor opens the listening sockets, forks the workers and from then on
only watches them: it serves no request and imports no application.  Each
worker imports the app and runs the single-process server (`server.Server`) on
the inherited listeners, and the kernel hands each pending connection to one of
the workers accepting on them.

Accept balancing is by shared listeners, not one SO_REUSEPORT socket per worker:
with SO_REUSEPORT every socket has a backlog of its own, and closing one (a
worker leaving, a reload) resets the connections queued in it; a shared
listener outlives any one worker, so workers come and go without a reset.  The
kernel wakes every worker for a client, so workers even out their open
connections through the scoreboard (`Server._leave_to_lighter_worker`).

The supervisor and the workers share a `Scoreboard` (scoreboard.py): each
worker beats into its slot once a second, and the supervisor kills a worker
that has not beaten for --worker-timeout (its loop stopped turning) and
replaces it; the slots also carry the counters that --stats-path and
--metrics-path sum over the workers.

Signals to the supervisor: SIGTERM or SIGINT stop every worker (SIGTERM to
each: it drains for --drain-delay, finishes what is in flight within
--shutdown-timeout and answers every open connection's next request with
`Connection: close`), then exit 0; SIGHUP starts a new set of workers, which
import the app afresh (with the settings read again: the command line over its
--config file), and only once all of them serve does it tell the old set to
leave (RETIRE: no drain delay, and the clients queued on the shared listeners
are left to the new set); a new worker that cannot start aborts the reload and
the old set stays.  --reload does the same when the app's source changes.
SIGTTIN and SIGTTOU add or remove one worker.  A worker that dies is replaced
and its end logged (one that leaves after --max-requests, with status 0, at
once); workers that die young are restarted after a back-off (1 s, doubling,
at most 30 s).  At start-up, a worker that cannot import the app (exit status
2) stops the others and the supervisor exits 2.
"""

from __future__ import annotations

import ctypes
import logging
import os
import random
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .config import Config
from .reloader import SourceWatcher
from .scoreboard import Scoreboard

log = logging.getLogger("selserve")

USAGE_ERROR = 2
# Signals the supervisor waits for (blocked, then taken with sigtimedwait).
SIGNALS = frozenset(
    (
        signal.SIGCHLD,
        signal.SIGTERM,
        signal.SIGINT,
        signal.SIGHUP,
        signal.SIGTTIN,
        signal.SIGTTOU,
        signal.SIGUSR1,  # from a worker: "I am leaving (--max-requests): replace me now"
    )
)
# To a worker: leave now, gracefully, without a drain delay and without taking the
# clients queued on the listeners (the workers that stay take them): a reload, one
# worker fewer.  SIGTERM is "stop": drain for --drain-delay, then take the queue.
RETIRE = signal.SIGUSR2
# How long a worker may take to import the app and start serving.
READY_TIMEOUT = 60.0
# A worker that dies within this long of starting "died young": restarts back off.
YOUNG = 5.0
BACKOFF_FIRST = 1.0
BACKOFF_MAX = 30.0
# After --shutdown-timeout, how much longer workers get before they are killed.
STOP_GRACE = 5.0
# Scoreboard slots (heartbeats, counters): room for two generations of many workers;
# a slot's memory is touched only once a worker uses it.
SCOREBOARD_SLOTS = 1024
_PR_SET_PDEATHSIG = 1  # prctl(2): a signal for the child when its parent dies


def hold_signals() -> None:
    """From now on the supervisor's signals wait, blocked, for its turns to take them.
    Called before the listeners open: a SIGTERM after that is a graceful stop, not the
    default death that would drop the clients queued on them."""
    signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)


@dataclass
class Worker:
    pid: int
    ready_fd: int  # the worker writes one byte here once it serves
    started: float
    generation: int
    slot: int | None  # in the scoreboard; None if all were taken
    ready_at: float = 0.0  # when it started serving (0: not yet)
    killed: bool = False  # by the supervisor, for a loop that stopped turning


@dataclass
class Supervisor:
    """Runs the workers for `config` (see the module docstring); `run()` returns the
    exit status.  `build_app` makes the application inside each worker."""

    config: Config
    build_app: Callable[[Config], Callable]
    listeners: list[tuple[socket.socket, str]] = field(default_factory=list)
    # SIGHUP reads the settings again (the command line over its --config file) with
    # this; the listeners stay as they are (a new --bind takes a restart).
    reload_config: Callable[[], Config] | None = None
    # --reload: the app's source, looked at once a second; a change reloads.
    watcher: SourceWatcher | None = None
    workers: dict[int, Worker] = field(default_factory=dict)
    wanted: int = 1
    generation: int = 0
    stopping: bool = False
    backoff: float = BACKOFF_FIRST
    restart_at: float = 0.0  # when the next replacement may start (back-off)
    stop_deadline: float = 0.0  # stopping: workers still alive then are killed
    watched_at: float = 0.0  # when --reload last looked
    board: Scoreboard = field(default_factory=lambda: Scoreboard(SCOREBOARD_SLOTS))
    started: float = field(default_factory=time.time)

    # -- the supervisor's side ---------------------------------------------------

    def run(self) -> int:
        self.wanted = self.config.worker_count
        hold_signals()
        try:
            if not self._start_generation():
                self._stop_all()
                return USAGE_ERROR
            while self.workers or not self.stopping:
                self._turn()
            return 0
        finally:
            for sock, _ in self.listeners:
                sock.close()
            self.board.close()

    def _turn(self) -> None:
        delay = max(0.05, self.restart_at - time.monotonic()) if self._missing() else 1.0
        info = signal.sigtimedwait(SIGNALS, delay)
        if info is None:
            if self.stopping:
                self._reap()  # (checks the stop deadline)
        elif info.si_signo == signal.SIGCHLD:
            self._reap()
        elif info.si_signo in (signal.SIGTERM, signal.SIGINT):
            self._begin_stop()
        elif info.si_signo == signal.SIGHUP and not self.stopping:
            self._reload()
        elif info.si_signo == signal.SIGTTIN and not self.stopping:
            self.wanted += 1
        elif info.si_signo == signal.SIGTTOU and not self.stopping and self.wanted > 1:
            self.wanted -= 1
            self._retire(1)
        elif info.si_signo == signal.SIGUSR1:
            leaving = self.workers.get(info.si_pid)
            if leaving is not None:
                leaving.generation = -1  # no longer counted: its replacement starts now
        if not self.stopping and self._missing() and time.monotonic() >= self.restart_at:
            self._spawn(self.generation)
        self._check_heartbeats()
        if self.watcher is not None and not self.stopping:
            self._check_source()

    def _check_heartbeats(self) -> None:
        """Kill a serving worker whose loop has not turned for --worker-timeout (it is
        then reaped and replaced like any dead worker)."""
        timeout = self.config.worker_timeout
        if not timeout:
            return
        now = time.monotonic()
        for worker in self.workers.values():
            if worker.slot is None or not worker.ready_at or worker.killed:
                continue
            last = max(worker.ready_at, self.board.heartbeat(worker.slot))
            if now - last > timeout:
                log.warning(
                    "worker %d: its event loop has not turned for %.0f s (--worker-timeout): "
                    "killing it",
                    worker.pid,
                    now - last,
                )
                worker.killed = True
                self._signal(worker, signal.SIGKILL)

    def _check_source(self) -> None:
        if time.monotonic() - self.watched_at < 1.0:
            return
        self.watched_at = time.monotonic()
        path = self.watcher.changed()
        if path is not None:
            log.info("--reload: %s changed", path)
            self._reload()

    def _missing(self) -> bool:
        current = [w for w in self.workers.values() if w.generation == self.generation]
        return len(current) < self.wanted

    def _start_generation(self) -> bool:
        """Start `wanted` workers of a new generation and wait until each serves;
        False (and the new ones stopped) if one cannot: it could not import the app
        (exit status 2), or did not start in time.  A worker that dies otherwise is
        replaced by the main loop, as later on."""
        self.generation += 1
        new = [self._spawn(self.generation) for _ in range(self.wanted)]
        for worker in new:
            if not self._wait_ready(worker):
                for other in new:
                    self._signal(other, RETIRE)
                self.generation -= 1
                return False
        return True

    def _wait_ready(self, worker: Worker) -> bool:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            pid, status = os.waitpid(worker.pid, os.WNOHANG)
            if pid:
                self._forget(worker)
                if os.WIFEXITED(status) and os.WEXITSTATUS(status) == USAGE_ERROR:
                    self._report_exit(worker, status)
                    return False
                self._ended(worker, status)
                return True
            try:
                if os.read(worker.ready_fd, 1):
                    worker.ready_at = time.monotonic()
                    return True
            except BlockingIOError:
                pass
            time.sleep(0.02)
        log.error("worker %d did not start serving within %.0f s", worker.pid, READY_TIMEOUT)
        return False

    def _reload(self) -> None:
        if self.reload_config is not None:
            try:
                self.config = self.reload_config()
            except Exception as exc:  # a usage error in the new settings: keep the old
                log.error("reload aborted: %s", exc)
                return
        log.info("reloading: starting %d new worker%s", self.wanted, _s(self.wanted))
        old = [w for w in self.workers.values() if w.generation == self.generation]
        if not self._start_generation():
            log.error("reload aborted: a new worker could not start; the old ones go on")
            return
        for worker in old:
            self._signal(worker, RETIRE)

    def _retire(self, count: int) -> None:
        current = sorted(
            (w for w in self.workers.values() if w.generation == self.generation),
            key=lambda w: w.started,
        )
        for worker in current[:count]:
            self._signal(worker, RETIRE)
            worker.generation = -1  # leaving: not counted as serving

    def _begin_stop(self) -> None:
        """Stop every worker gracefully (each drains for --drain-delay first); a second
        SIGTERM or SIGINT tells them to stop draining."""
        for worker in self.workers.values():
            self._signal(worker, signal.SIGTERM)
        if self.stopping:
            return
        self.stopping = True
        count = len(self.workers)
        log.info("stopping %d worker%s", count, _s(count))
        # Our copies of the listeners go now: the workers' copies keep them open while
        # they drain, and the last worker to close one accepts what is queued first.
        # Kept until the end, ours would hold clients in the backlog only to reset them.
        for sock, _ in self.listeners:
            sock.close()
        config = self.config
        self.stop_deadline = (
            time.monotonic() + config.drain_delay + config.shutdown_timeout + STOP_GRACE
        )

    def _stop_all(self) -> None:
        for worker in self.workers.values():
            self._signal(worker, RETIRE)
        deadline = time.monotonic() + self.config.shutdown_timeout + STOP_GRACE
        while self.workers and time.monotonic() < deadline:
            self._reap()
            time.sleep(0.05)
        for worker in list(self.workers.values()):
            self._signal(worker, signal.SIGKILL)
        while self.workers:
            self._reap(block=True)

    def _reap(self, block: bool = False) -> None:
        while self.workers:
            try:
                pid, status = os.waitpid(-1, 0 if block else os.WNOHANG)
            except ChildProcessError:
                self.workers.clear()
                return
            if not pid:
                break
            worker = self.workers.get(pid)
            if worker is None:
                continue
            self._forget(worker)
            self._ended(worker, status)
            if block:
                return
        if self.stopping and self.workers and time.monotonic() > self.stop_deadline:
            for worker in self.workers.values():
                self._signal(worker, signal.SIGKILL)

    def _forget(self, worker: Worker) -> None:
        """A reaped worker: close its pipe, keep its counts and free its slot."""
        del self.workers[worker.pid]
        os.close(worker.ready_fd)
        if worker.slot is not None:
            self.board.release(worker.slot)

    def _ended(self, worker: Worker, status: int) -> None:
        """A worker is gone (reaped): log how, and back off if it crashed young (one that
        leaves after --max-requests exits 0 and is replaced at once)."""
        self._report_exit(worker, status)
        recycled = os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
        if not self.stopping and worker.generation == self.generation and not recycled:
            self._back_off(worker)

    def _back_off(self, worker: Worker) -> None:
        if time.monotonic() - worker.started < YOUNG:
            self.restart_at = time.monotonic() + self.backoff
            log.warning("worker died young: next start in %.0f s", self.backoff)
            self.backoff = min(self.backoff * 2, BACKOFF_MAX)
        else:
            self.backoff = BACKOFF_FIRST
            self.restart_at = 0.0

    def _report_exit(self, worker: Worker, status: int) -> None:
        if os.WIFSIGNALED(status):
            how = f"was killed by signal {signal.Signals(os.WTERMSIG(status)).name}"
        else:
            how = f"exited with status {os.WEXITSTATUS(status)}"
        recycled = os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
        expected = self.stopping or worker.generation != self.generation or recycled
        log.log(logging.INFO if expected else logging.WARNING, "worker %d %s", worker.pid, how)

    @staticmethod
    def _signal(worker: Worker, signum: int) -> None:
        try:
            os.kill(worker.pid, signum)
        except ProcessLookupError:
            pass

    def _spawn(self, generation: int) -> Worker:
        ready_r, ready_w = os.pipe()
        os.set_blocking(ready_r, False)
        supervisor = os.getpid()
        slot = self.board.claim()
        if slot is None:
            log.warning("no scoreboard slot left: a worker goes unwatched and uncounted")
        pid = os.fork()
        if pid == 0:  # the worker
            os.close(ready_r)
            for other in self.workers.values():
                os.close(other.ready_fd)
            code = 1
            try:
                code = self._worker_main(ready_w, supervisor, slot)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:
                log.exception("worker %d failed", os.getpid())
            finally:
                logging.shutdown()
                os._exit(code)
        os.close(ready_w)
        worker = Worker(pid, ready_r, time.monotonic(), generation, slot)
        self.workers[pid] = worker
        return worker

    # -- the worker's side ---------------------------------------------------------

    def _worker_main(self, ready_fd: int, supervisor: int, slot: int | None) -> int:
        from .cli import AppFailedToLoad, UsageError  # (the worker imports the app)
        from .server import Server

        signal.pthread_sigmask(signal.SIG_SETMASK, ())
        for signum in (signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU, signal.SIGCHLD):
            signal.signal(signum, signal.SIG_DFL if signum == signal.SIGCHLD else signal.SIG_IGN)
        _die_with_parent(supervisor)
        try:
            app = self.build_app(self.config)
            server = Server(app, self.config)
        except (UsageError, ValueError) as exc:
            if isinstance(exc, AppFailedToLoad):
                print(exc.traceback, file=sys.stderr)
            print(f"selserve: {exc}", file=sys.stderr)
            return USAGE_ERROR
        for sock, address in self.listeners:
            server.adopt(sock, address)
        if slot is not None:
            server.share(self.board, slot, self.started)
        server.loop.add_signal_handler(RETIRE, server.leave)
        if self.config.max_requests:
            jitter = random.randint(0, self.config.max_requests_jitter)
            server.stop_after(self.config.max_requests + jitter)
            server.on_leaving = lambda: os.kill(supervisor, signal.SIGUSR1)

        def ready() -> None:
            os.write(ready_fd, b"R")
            os.close(ready_fd)

        server.serve_forever(ready=ready, announce=False)
        return 0


def _die_with_parent(supervisor: int) -> None:
    """Linux: SIGTERM this worker if the supervisor dies (no orphans serving on)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    if os.getppid() != supervisor:  # it died before prctl took effect: go now
        os._exit(0)


def _s(count: int) -> str:
    return "" if count == 1 else "s"
