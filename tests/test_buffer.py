"""WriteBuffer: water marks, gathering, partial writes, files, errors."""

from __future__ import annotations

import socket
import tempfile

import pytest

from selserve.buffer import WriteBuffer

pytestmark = pytest.mark.timeout(20)


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    a.setblocking(False)
    yield a, b
    a.close()
    b.close()


def read_exactly(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        assert chunk, "peer closed early"
        data += chunk
    return data


def test_small_pieces_are_sent_in_one_call_in_order(pair):
    a, b = pair
    buf = WriteBuffer()
    for i in range(10):
        buf.append(b"%d," % i)
    calls = []
    real = a.sendmsg
    a_proxy = type("P", (), {})()
    a_proxy.sendmsg = lambda pieces, *rest: (calls.append(len(pieces)), real(pieces, *rest))[1]
    a_proxy.send = a.send
    a_proxy.fileno = a.fileno
    assert buf.flush(a_proxy)
    assert calls == [10]
    assert read_exactly(b, 20) == b"0,1,2,3,4,5,6,7,8,9,"
    assert buf.size == 0


def test_partial_writes_keep_the_rest_in_order(pair):
    a, b = pair
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    payload = bytes(range(256)) * 4096  # 1 MiB: far more than the socket takes at once
    buf = WriteBuffer()
    buf.append(payload[:1000])
    buf.append(payload[1000:])
    assert not buf.flush(a)  # the socket filled up
    assert 0 < buf.size < len(payload)
    received = b""
    while buf.size:
        received += b.recv(1 << 20)
        buf.flush(a)
    received += read_exactly(b, len(payload) - len(received))
    assert received == payload
    assert buf.bytes_sent == len(payload)


def test_file_ranges_go_out_between_bytes(pair):
    a, b = pair
    with tempfile.TemporaryFile() as f:
        f.write(b"0123456789" * 1000)
        f.flush()
        buf = WriteBuffer()
        buf.append(b"head|")
        buf.append_file(f, 10, 25)
        buf.append(b"|tail")
        while not buf.flush(a):
            pass
        assert read_exactly(b, 35) == b"head|0123456789012345678901234|tail"


def test_file_shorter_than_promised_is_an_error(pair):
    a, _ = pair
    with tempfile.TemporaryFile() as f:
        f.write(b"short")
        f.flush()
        buf = WriteBuffer()
        buf.append_file(f, 0, 100)
        with pytest.raises(EOFError):
            while not buf.flush(a):
                pass


def test_send_to_a_departed_peer_raises_oserror(pair):
    a, b = pair
    b.close()
    buf = WriteBuffer()
    with pytest.raises(OSError):
        for _ in range(100):
            buf.append(b"x" * 65536)
            buf.flush(a)


def test_truncate_drops_the_newest_bytes(pair):
    a, b = pair
    with tempfile.TemporaryFile() as f:
        f.write(b"abcdefghij")
        f.flush()
        buf = WriteBuffer()
        buf.append(b"keep")
        buf.append_file(f, 0, 10)
        buf.append(b"dropped")
        buf.truncate(7)
        assert buf.size == 7
        while not buf.flush(a):
            pass
        assert read_exactly(b, 7) == b"keepabc"


def test_bytes_before_a_file_are_sent_with_msg_more(pair):
    a, b = pair
    flags_seen = []
    real = a.sendmsg
    proxy = type("P", (), {})()
    proxy.sendmsg = lambda pieces, anc=(), flags=0: (flags_seen.append(flags), real(pieces))[1]
    proxy.send = a.send
    proxy.fileno = a.fileno
    with tempfile.TemporaryFile() as f:
        f.write(b"body")
        f.flush()
        buf = WriteBuffer()
        buf.append(b"head ")
        buf.append(b"line|")
        buf.append_file(f, 0, 4)
        while not buf.flush(proxy):
            pass
    assert flags_seen == [getattr(socket, "MSG_MORE", 0)]
    assert read_exactly(b, 14) == b"head line|body"


def test_write_sends_at_once_and_keeps_what_the_socket_refuses(pair):
    a, b = pair
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    buf = WriteBuffer()
    assert buf.write(a, b"small") is True and buf.size == 0
    payload = bytes(range(256)) * 4096
    assert buf.write(a, payload) is False
    assert 0 < buf.size < len(payload)
    assert buf.write(a, b"|after") is False  # queued behind the rest, never ahead of it
    expected = b"small" + payload + b"|after"
    received = b""
    while buf.size:
        received += b.recv(1 << 20)
        buf.flush(a)
    received += read_exactly(b, len(expected) - len(received))
    assert received == expected
    assert buf.bytes_sent == len(expected)
