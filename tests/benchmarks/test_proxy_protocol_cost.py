"""PROXY protocol parse cost: one `parse` of a complete header with the first HTTP bytes
after it, as a connection's first read brings them, for the two common headers: a
version 1 TCP4 line and a version 2 TCP-over-IPv4 header without TLVs. The budget is a
few microseconds each: every proxied connection pays it once, before its first request.
"""

from __future__ import annotations

import socket
import struct

import pytest

from selserve.proxy_protocol import V2_SIGNATURE, parse

pytestmark = pytest.mark.benchmark(group="proxy-protocol")

HTTP = b"GET / HTTP/1.1\r\nHost: example.org\r\n\r\n"

V1_TCP4 = b"PROXY TCP4 203.0.113.195 192.168.0.11 56324 443\r\n" + HTTP

V2_INET = (
    V2_SIGNATURE
    + b"\x21\x11"  # version 2, PROXY; TCP over IPv4
    + struct.pack(">H", 12)
    + socket.inet_aton("203.0.113.195")
    + socket.inet_aton("192.168.0.11")
    + struct.pack(">HH", 56324, 443)
    + HTTP
)


def test_v1_tcp4_line(benchmark):
    benchmark.name = "v1 TCP4 line"
    header = benchmark(parse, V1_TCP4)
    assert header.source == ("203.0.113.195", 56324) and V1_TCP4[header.length :] == HTTP


def test_v2_inet_header(benchmark):
    benchmark.name = "v2 TCP over IPv4, no TLVs"
    header = benchmark(parse, V2_INET)
    assert header.source == ("203.0.113.195", 56324) and V2_INET[header.length :] == HTTP
