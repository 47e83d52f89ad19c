"""The backend registry and the contract every backend keeps."""

from __future__ import annotations

import socket
import sys

import pytest

from selserve import backends
from selserve.backends import READABLE, WRITABLE

pytestmark = pytest.mark.timeout(20)


def test_linux_offers_epoll_poll_and_select_with_epoll_as_auto():
    if not sys.platform.startswith("linux"):
        pytest.skip("Linux only")
    assert backends.available()[:3] == ["epoll", "poll", "select"]
    assert backends.best() == "epoll"
    assert backends.create("auto").name == "epoll"


def test_unknown_backend_names_the_available_ones():
    with pytest.raises(backends.UnknownBackend) as info:
        backends.create("nosuch")
    message = str(info.value)
    assert "nosuch" in message
    for name in backends.available():
        assert name in message


def test_unavailable_backend_is_refused_by_name():
    missing = [n for n in ("kqueue", "devpoll", "epoll") if n not in backends.available()]
    if not missing:
        pytest.skip("every backend is available here")
    with pytest.raises(backends.UnknownBackend, match="not available"):
        backends.create(missing[0])


def test_select_cannot_watch_fds_past_fd_setsize():
    backend = backends.create("select")
    assert backend.can_watch(1023)
    assert not backend.can_watch(1024)
    backend.close()


@pytest.mark.parametrize(
    "name", [n for n in backends.available() if backends.backend_class(n).fd_limit is None]
)
def test_backends_without_fd_limit_can_watch_high_fds(name):
    backend = backends.create(name)
    assert backend.can_watch(100_000)
    backend.close()


@pytest.mark.parametrize("name", backends.available())
def test_register_modify_unregister_select(name):
    backend = backends.create(name)
    a, b = socket.socketpair()
    token = object()
    try:
        backend.register(a.fileno(), READABLE, token)
        assert backend.select(0) == []  # nothing to read yet
        b.send(b"ping")
        ready = backend.select(1)
        assert [(key.fd, key.data, events) for key, events in ready] == [
            (a.fileno(), token, READABLE)
        ]
        backend.modify(a.fileno(), WRITABLE, token)
        ready = backend.select(1)
        assert [(key.fd, events) for key, events in ready] == [(a.fileno(), WRITABLE)]
        backend.unregister(a.fileno())
        assert backend.select(0) == []
        assert len(backend) == 0
    finally:
        a.close()
        b.close()
        backend.close()
