"""The access log: one line per answered request, in the Combined Log Format.

    127.0.0.1 - - [27/Nov/2026:14:31:03 +0000] "GET / HTTP/1.1" 200 21 "-" "curl/8.1"

Lines wait in memory and are written with one `write()` once a second (the
server's clock tick), at 64 KiB, and at shutdown, so logging costs no syscall
per request.  Fields a client controls are escaped as nginx does: every byte
below 0x20 or from 0x7f, and `"` and `\\`, is written as `\\xHH`, so a line is
plain ASCII that can be neither split, nor forged, nor used to drive the
terminal of whoever tails it.

What it must never do is raise into a connection: a log that cannot be
written (a full disk, a closed pipe on stdout) loses its lines and costs one
warning per minute, never the connection that was being logged.
"""

from __future__ import annotations

import os
import re
import sys
import time

from .notices import ThrottledWarning

# Buffered lines are written out once they reach this many bytes.
FLUSH_AT = 64 * 1024
# At most one "cannot write the access log" warning per this many seconds.
FAILURE_WARNING_INTERVAL = 60.0

# Characters written as they are: printable ASCII except '"' and '\'.
_UNSAFE = re.compile(r"[^\x20\x21\x23-\x5b\x5d-\x7e]")


def clf_time(timestamp: float) -> str:
    """'[27/Nov/2026:14:31:03 +0000]' (always UTC)."""
    return time.strftime("[%d/%b/%Y:%H:%M:%S +0000]", time.gmtime(timestamp))


def _hex_escape(match: re.Match) -> str:
    code = ord(match[0])
    if code <= 0xFF:  # request fields are latin-1 decoded: one character per byte
        return f"\\x{code:02X}"
    # Wider characters (an embedder's own str) are escaped byte by byte in UTF-8.
    return "".join(f"\\x{byte:02X}" for byte in match[0].encode("utf-8", "surrogatepass"))


def escape(value: str | None) -> str:
    """A client-controlled field as it goes in the log: '-' when absent, else escaped."""
    if not value:
        return "-"
    if _UNSAFE.search(value) is None:
        return value
    return _UNSAFE.sub(_hex_escape, value)


class AccessLog:
    """Combined Log Format lines, buffered and written to PATH or stdout ('-')."""

    def __init__(self, path: str) -> None:
        self.path = path if path != "-" else "stdout"
        self._fd = -1
        if path != "-":
            try:
                self._fd = os.open(
                    path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644
                )
            except OSError as exc:
                raise ValueError(f"cannot open --access-log {path!r}: {exc.strerror}") from None
        self._pending: list[str] = []
        self._pending_size = 0
        self.lines_lost = 0  # lines that could not be written
        self._failure = ThrottledWarning(FAILURE_WARNING_INTERVAL)
        self.now = clf_time(time.time())  # refreshed by the server once a second

    def write(self, peer, head, status: int, size: int) -> None:
        host = peer[0] if isinstance(peer, tuple) else "unix"
        if head is None:
            request = referer = agent = None
        else:
            request = f"{head.method} {head.target} {head.version}"
            referer = head.header("referer")
            agent = head.header("user-agent")
        line = (
            f'{host} - - {self.now} "{escape(request)}" {status} {size} '
            f'"{escape(referer)}" "{escape(agent)}"\n'
        )
        self._pending.append(line)
        self._pending_size += len(line)
        if self._pending_size >= FLUSH_AT:
            self.flush()

    def flush(self) -> None:
        """Write the buffered lines; on failure they are lost and counted, never raised."""
        pending = self._pending
        if not pending:
            return
        self._pending = []
        self._pending_size = 0
        data = "".join(pending).encode("ascii")
        try:
            self._write_all(data)
        except (OSError, ValueError, AttributeError) as exc:
            # ValueError/AttributeError: a stdout that is closed or gone.
            lost = len(pending)
            self.lines_lost += lost
            self._failure.warn(
                "write() to access log %s failed (%s): %d lines lost", self.path, exc, lost
            )

    def _write_all(self, data: bytes) -> None:
        fd = self._fd
        if fd < 0:
            fd = _stdout_fd()
            if fd < 0:  # a stdout without a descriptor (replaced by an embedder)
                sys.stdout.write(data.decode("ascii"))
                sys.stdout.flush()
                return
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]

    def close(self) -> None:
        self.flush()
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            try:
                os.close(fd)
            except OSError:
                pass


def _stdout_fd() -> int:
    try:
        return sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both
        return -1
