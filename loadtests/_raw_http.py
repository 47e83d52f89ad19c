"""A small HTTP/1.1 client on a bare socket, for what HTTP libraries will not do.

The misbehaving users (resets, aborts, slowloris, slow readers) and the pipelining check
need control of every byte and of when the socket ends.  Under Locust the `socket` and
`time` modules are gevent's (Locust monkey-patches them), so these blocking calls only
block their own user.  Every read is bounded by the socket timeout.
"""

from __future__ import annotations

import socket
import struct
import time
from urllib.parse import urlsplit

MAX_HEAD = 64 * 1024


class ProtocolError(Exception):
    """The server's bytes are not a well-formed HTTP/1.1 response."""


def host_port(url: str) -> tuple[str, int]:
    """(host, port) of an http:// base URL such as Locust's --host."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"need an http://HOST:PORT URL, not {url!r}")
    return parts.hostname, parts.port or 80


def request_bytes(
    method: str, target: str, headers: tuple[tuple[str, str], ...] = (), body: bytes = b""
) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: loadtest"]
    lines += [f"{name}: {value}" for name, value in headers]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class Head:
    __slots__ = ("status", "headers")

    def __init__(self, status: int, headers: dict[str, str]) -> None:
        self.status = status
        self.headers = headers  # lower-cased names; repeated fields joined with ", "


class RawConnection:
    """One client socket plus a read buffer."""

    def __init__(
        self, address: tuple[str, int], timeout: float = 10.0, rcvbuf: int | None = None
    ) -> None:
        self.sock = socket.socket(socket.AF_INET6 if ":" in address[0] else socket.AF_INET)
        try:
            if rcvbuf is not None:
                # Before connect(), so that the advertised TCP window is small from the start.
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            self.sock.settimeout(timeout)
            self.sock.connect(address)
        except BaseException:
            self.sock.close()
            raise
        self.timeout = timeout
        self.buf = bytearray()
        self.received = 0  # bytes taken from the socket so far
        self.body_length = 0  # bytes in the last body read_body() read

    def __enter__(self) -> RawConnection:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def reset(self) -> None:
        """Close with SO_LINGER 0: the kernel sends RST instead of FIN."""
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv_some(self, limit: int = 65536) -> bytes:
        """Up to `limit` bytes, buffered ones first; b"" at EOF."""
        if self.buf:
            data = bytes(self.buf[:limit])
            del self.buf[:limit]
            return data
        data = self.sock.recv(limit)
        self.received += len(data)
        return data

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ProtocolError(f"connection closed with {len(self.buf)} bytes of a response")
        self.received += len(data)
        self.buf += data

    def read_until(self, marker: bytes, limit: int) -> bytes:
        while True:
            end = self.buf.find(marker)
            if end >= 0:
                data = bytes(self.buf[: end + len(marker)])
                del self.buf[: end + len(marker)]
                return data
            if len(self.buf) > limit:
                raise ProtocolError(f"no {marker!r} within {limit} bytes")
            self._fill()

    def read_exact(self, count: int) -> bytes:
        while len(self.buf) < count:
            self._fill()
        data = bytes(self.buf[:count])
        del self.buf[:count]
        return data

    def read_head(self) -> Head:
        """The next final (non-1xx) response head."""
        while True:
            raw = self.read_until(b"\r\n\r\n", MAX_HEAD)
            lines = raw[:-4].decode("latin-1").split("\r\n")
            parts = lines[0].split(" ", 2)
            if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
                raise ProtocolError(f"bad status line {lines[0]!r}")
            headers: dict[str, str] = {}
            for line in lines[1:]:
                name, colon, value = line.partition(":")
                if not colon:
                    raise ProtocolError(f"bad header line {line!r}")
                name = name.strip().lower()
                value = value.strip()
                headers[name] = f"{headers[name]}, {value}" if name in headers else value
            status = int(parts[1])
            if status >= 200 or status == 101:
                return Head(status, headers)

    def read_body(self, head: Head, method: str = "GET", pace=None, keep: bool = True) -> bytes:
        """The body of the response that `head` began.  `pace(n)` is called after each
        read of n bytes from the socket (the slow reader sleeps there).  With keep=False
        the bytes are only counted: the result is b"" and `body_length` says how many
        there were (it always does)."""
        self.body_length = 0
        pieces: list[bytes] = []

        def take(data: bytes) -> None:
            self.body_length += len(data)
            if keep:
                pieces.append(data)

        if method == "HEAD" or head.status in (204, 304) or 100 <= head.status < 200:
            return b""
        if "chunked" in head.headers.get("transfer-encoding", "").lower():
            while True:
                line = self.read_until(b"\r\n", 1024)
                try:
                    size = int(line.split(b";", 1)[0].strip(), 16)
                except ValueError:
                    raise ProtocolError(f"bad chunk size line {line!r}") from None
                if size == 0:
                    while self.read_until(b"\r\n", MAX_HEAD) != b"\r\n":
                        pass  # trailer fields
                    break
                remaining = size
                while remaining:
                    if not self.buf:
                        self._fill()
                        if pace:
                            pace(len(self.buf))
                    piece = bytes(self.buf[:remaining])
                    del self.buf[: len(piece)]
                    remaining -= len(piece)
                    take(piece)
                if self.read_exact(2) != b"\r\n":
                    raise ProtocolError("chunk data not followed by CRLF")
        elif "content-length" in head.headers:
            remaining = int(head.headers["content-length"])
            while remaining:
                if not self.buf:
                    self._fill()
                    if pace:
                        pace(len(self.buf))
                piece = bytes(self.buf[:remaining])
                del self.buf[: len(piece)]
                remaining -= len(piece)
                take(piece)
        else:  # delimited by the connection's end
            while True:
                data = self.recv_some()
                if not data:
                    break
                take(data)
                if pace:
                    pace(len(data))
        return b"".join(pieces)

    def wait_closed(self, timeout: float) -> str:
        """'eof', 'reset' or 'open' (nothing ended the connection within `timeout`);
        whatever arrives meanwhile (a 408 answer, say) is read and dropped."""
        deadline = time.monotonic() + timeout
        self.buf.clear()
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return "open"
                self.sock.settimeout(remaining)
                try:
                    data = self.sock.recv(65536)
                except TimeoutError:
                    return "open"
                except ConnectionResetError:
                    return "reset"
                if not data:
                    return "eof"
        finally:
            self.sock.settimeout(self.timeout)


def probe(address: tuple[str, int], timeout: float) -> int:
    """GET / on a fresh connection; the status of the complete answer.  Raises OSError or
    ProtocolError when the server does not answer in time."""
    with RawConnection(address, timeout) as conn:
        conn.send(request_bytes("GET", "/", (("Connection", "close"),)))
        head = conn.read_head()
        conn.read_body(head, keep=False)
        return head.status
