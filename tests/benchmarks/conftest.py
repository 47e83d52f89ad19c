"""What the benchmark suite's pytest run needs: switching measurement off in ordinary test
runs and a raised open-file limit. The bounded helpers that hold idle keep-alive
connections are in tests/benchmarks/helpers.py.

`pytest tests/benchmarks --benchmark-only` (or `--benchmark-enable`) measures. Any other
run -- the plain `pytest` from the repository root included -- executes every benchmark
exactly once with pytest-benchmark's `--benchmark-disable`, so the suite keeps working
without slowing the test run; cases that only make sense when measured (the largest idle
loads) skip themselves then and say so.
"""

from __future__ import annotations

import contextlib
import resource

import pytest

from .helpers import measuring


def pytest_configure(config: pytest.Config) -> None:
    if measuring(config):
        return
    config.option.benchmark_disable = True
    # This conftest is often registered after pytest-benchmark built its session from the
    # options (a plain `pytest` finds it during collection), so tell the session as well.
    session = getattr(config, "_benchmarksession", None)
    if session is not None:
        session.disabled = True


@pytest.fixture(scope="session")
def benchmarking(pytestconfig: pytest.Config) -> bool:
    return measuring(pytestconfig)


@pytest.fixture(scope="session")
def open_file_limit() -> int:
    """Lift RLIMIT_NOFILE's soft limit to the hard one for the session; restore it after."""
    old = resource.getrlimit(resource.RLIMIT_NOFILE)
    soft, hard = old
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    yield resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, old)
