"""The bounded write buffer between a response producer and a socket.

`WriteBuffer` holds output not yet accepted by the kernel: byte strings and
file ranges (sent with sendfile, never read into memory).  Producers look at
`size` against `high_water` before adding more and are resumed below
`low_water`, so a connection's memory stays bounded however slowly its client
reads.  `flush()` writes as much as the socket takes now, gathering small
pieces into one `sendmsg`; it never blocks and never swallows an error:
`OSError` from the socket propagates to the connection's one close path.
"""

from __future__ import annotations

import errno
import os
import socket

from .transport import can_sendfile

# How many pieces one sendmsg() gathers (IOV_MAX is 1024 on Linux; stay well below).
_GATHER_MAX = 64
# The largest slice handed to one sendfile() call.
_SENDFILE_MAX = 1 << 30
# The most read from a file at once when it cannot go out with sendfile.
_READ_BLOCK = 256 * 1024
# errno values meaning "sendfile cannot do this pair of fds", not "the peer is gone".
_NO_SENDFILE = frozenset((errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP))
_NOTHING = ()
_MSG_MORE = getattr(socket, "MSG_MORE", 0)


class FileRange:
    """`count` bytes of the open file `fileobj` starting at `offset`."""

    __slots__ = ("fileobj", "offset", "count")

    def __init__(self, fileobj, offset: int, count: int) -> None:
        self.fileobj = fileobj
        self.offset = offset
        self.count = count


class WriteBuffer:
    __slots__ = ("_pieces", "size", "high_water", "low_water", "bytes_sent")

    def __init__(self, high_water: int = 256 * 1024, low_water: int = 64 * 1024) -> None:
        # Idle connections share one empty tuple; a connection gets a list of its own
        # only while output waits.  A list, not a deque: there are a few pieces at a
        # time (producers join small ones), and the usual one -- a whole answer --
        # costs a 1-item list instead of a 600-byte deque.
        self._pieces: list[bytes | memoryview | FileRange] | tuple = _NOTHING
        self.size = 0  # bytes waiting, files included
        self.high_water = high_water
        self.low_water = low_water
        self.bytes_sent = 0

    def __bool__(self) -> bool:
        return self.size > 0

    def append(self, data: bytes) -> None:
        if data:
            if self._pieces is _NOTHING:
                self._pieces = [data]
            else:
                self._pieces.append(data)
            self.size += len(data)

    def append_file(self, fileobj, offset: int, count: int) -> None:
        if count > 0:
            if self._pieces is _NOTHING:
                self._pieces = []
            self._pieces.append(FileRange(fileobj, offset, count))
            self.size += count

    def write(self, sock: socket.socket, data: bytes) -> bool:
        """Send `data` at once if nothing waits ahead of it; keep what the socket
        does not take.  True when all of it went out (no buffer was involved)."""
        if self.size:
            self.append(data)
            return False
        try:
            sent = sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        self.bytes_sent += sent
        if sent == len(data):
            return True
        self.append(memoryview(data)[sent:])
        return False

    def flush(self, sock: socket.socket) -> bool:
        """Send what the socket accepts now; True once everything is sent."""
        pieces = self._pieces
        while pieces:
            first = pieces[0]
            if type(first) is FileRange:
                sent = self._send_file(sock, first)
                if sent is None:
                    return False
                continue
            try:
                if len(pieces) == 1:
                    sent = sock.send(first)
                    if sent == self.size:  # (the usual: one answer, all taken)
                        self.bytes_sent += sent
                        self.size = 0
                        break
                else:
                    gathered = self._gather()
                    # Bytes followed by a file (a response head before sendfile):
                    # MSG_MORE lets the kernel put them in the file's first segment
                    # instead of a small packet of their own.
                    more = _MSG_MORE if len(gathered) < len(pieces) else 0
                    sent = sock.sendmsg(gathered, (), more)
            except (BlockingIOError, InterruptedError):
                return False
            self._consume(sent)
        self._pieces = _NOTHING
        return True

    def _gather(self) -> list:
        out = []
        for piece in self._pieces:
            if type(piece) is FileRange or len(out) == _GATHER_MAX:
                break
            out.append(piece)
        return out

    def _consume(self, sent: int) -> None:
        self.size -= sent
        self.bytes_sent += sent
        pieces = self._pieces
        while sent:
            first = pieces[0]
            if len(first) <= sent:
                sent -= len(first)
                del pieces[0]
            else:
                pieces[0] = memoryview(first)[sent:]
                sent = 0

    def _send_file(self, sock: socket.socket, piece: FileRange) -> int | None:
        """Send part of a file range; None when the socket is full."""
        if not can_sendfile(sock):
            return self._send_file_by_reading(sock, piece)
        try:
            sent = os.sendfile(
                sock.fileno(), piece.fileobj.fileno(), piece.offset, min(piece.count, _SENDFILE_MAX)
            )
        except (BlockingIOError, InterruptedError):
            return None
        except OSError as exc:
            if exc.errno in _NO_SENDFILE:
                return self._send_file_by_reading(sock, piece)
            raise
        if sent == 0:
            # The file is shorter than promised: the response cannot be completed.
            raise EOFError("file ended before its promised length")
        self._advance_file(piece, sent)
        return sent

    def _send_file_by_reading(self, sock: socket.socket, piece: FileRange) -> int | None:
        # sendfile is not possible here (TLS; a filesystem without it): read a block
        # and send it as ordinary bytes -- no more than the transport takes at once (a
        # TLS record), or each turn would read far more than it sends.
        size = min(piece.count, getattr(sock, "write_size", _READ_BLOCK))
        block = os.pread(piece.fileobj.fileno(), size, piece.offset)
        if not block:
            raise EOFError("file ended before its promised length")
        try:
            sent = sock.send(block)
        except (BlockingIOError, InterruptedError):
            return None
        self._advance_file(piece, sent)
        return sent

    def _advance_file(self, piece: FileRange, sent: int) -> None:
        piece.offset += sent
        piece.count -= sent
        self.size -= sent
        self.bytes_sent += sent
        if piece.count == 0:
            del self._pieces[0]

    def truncate(self, size: int) -> None:
        """Drop the newest bytes until `size` remain (unsent output being replaced)."""
        pieces = self._pieces
        while self.size > size:
            last = pieces[-1]
            excess = self.size - size
            length = last.count if type(last) is FileRange else len(last)
            if length <= excess:
                pieces.pop()
                self.size -= length
            elif type(last) is FileRange:
                last.count -= excess
                self.size = size
            else:
                pieces[-1] = last[: length - excess]
                self.size = size

    def clear(self) -> None:
        self._pieces = _NOTHING
        self.size = 0
