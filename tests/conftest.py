"""Fixtures and hooks for the black-box server tests: the `backend` parameter (every
available backend), a default demo-app server per backend and module, a factory for
servers with special flags, a raised open-file limit, the server's stderr attached to a
failure report, and no server outliving the run (even one ended by SIGTERM).

Only fixtures and hooks live here; what they are built from (`ServerProcess`, `RawClient`,
the request builders) is in tests/helpers.py, which test modules import directly.
"""

from __future__ import annotations

import contextlib
import resource
import signal

import pytest
from helpers import BACKENDS, ServerProcess, _started, raise_nofile_limit

# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def server(backend):
    """One demo-app server per backend and test module, default settings."""
    proc = ServerProcess(backend).start()
    yield proc
    proc.stop()


@pytest.fixture
def server_factory():
    """Start servers with special flags; every one of them is stopped at teardown."""
    servers: list[ServerProcess] = []

    def start(backend: str | None, *args: str, **kwargs) -> ServerProcess:
        proc = ServerProcess(backend, *args, **kwargs)
        servers.append(proc)
        return proc.start()

    start.servers = servers
    yield start
    for proc in servers:
        proc.stop()


@pytest.fixture
def many_fds():
    """Raise this process's RLIMIT_NOFILE soft limit to the hard limit for the test."""
    old = raise_nofile_limit()
    yield resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, old)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """On a failure, attach the stderr tail of every server the test used to the report."""
    report = yield
    if report.failed:
        funcargs = getattr(item, "funcargs", {})
        servers = []
        for value in funcargs.values():
            if isinstance(value, ServerProcess):
                servers.append(value)
            servers.extend(getattr(value, "servers", []))
        for proc in servers:
            if proc.proc is not None:
                report.sections.append((f"selserve {proc.backend} {proc.bind}", proc.stderr_tail()))
    return report


def pytest_configure(config):
    """SIGTERM (a cancelled CI job, a developer's kill) would end Python at once, running
    no `finally` and no fixture's teardown: the servers and load tools the tests started
    would outlive the run.  Raised as KeyboardInterrupt, it unwinds through them as
    Ctrl-C does, and pytest_sessionfinish stops the rest."""
    signal.signal(signal.SIGTERM, _interrupt)


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_sessionfinish(session, exitstatus):
    """Whatever happened, no server outlives the run."""
    for proc in list(_started):
        proc.stop(timeout=2.0)
