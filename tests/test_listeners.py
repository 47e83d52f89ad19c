"""--bind addresses as `parse_bind` reads them, and the one-line errors it gives."""

from __future__ import annotations

import socket

import pytest

from selserve.listeners import BindError, parse_bind


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("127.0.0.1:8000", (socket.AF_INET, ("127.0.0.1", 8000))),
        (":8000", (socket.AF_INET, ("0.0.0.0", 8000))),
        ("localhost:0", (socket.AF_INET, ("localhost", 0))),
        ("127.0.0.1:65535", (socket.AF_INET, ("127.0.0.1", 65535))),
        ("[::1]:8000", (socket.AF_INET6, ("::1", 8000))),
        ("[::]:80", (socket.AF_INET6, ("::", 80))),
        ("unix:/tmp/selserve.sock", (socket.AF_UNIX, "/tmp/selserve.sock")),
    ],
)
def test_addresses_parse(address, expected):
    assert parse_bind(address) == expected


@pytest.mark.parametrize(
    ("address", "says"),
    [
        ("garbage", "is not HOST:PORT"),
        ("127.0.0.1:", "is not HOST:PORT"),
        ("127.0.0.1:http", "is not HOST:PORT"),
        ("127.0.0.1:-1", "is not HOST:PORT"),
        ("127.0.0.1:\u0663", "is not HOST:PORT"),  # an Arabic-Indic 3: int() would take it
        ("127.0.0.1:65536", "port 65536 is not from 0 to 65535"),
        ("127.0.0.1:99999", "port 99999 is not from 0 to 65535"),
        ("::1:8000", "brackets"),
        ("unix:", "needs a path"),
    ],
)
def test_bad_addresses_say_what_is_wrong(address, says):
    with pytest.raises(BindError) as caught:
        parse_bind(address)
    message = str(caught.value)
    assert says in message
    assert repr(address) in message
    assert "\n" not in message
