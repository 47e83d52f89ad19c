"""The access log: one line per answered request, in the Combined Log Format.

    127.0.0.1 - - [27/Nov/2026:14:31:03 +0000] "GET / HTTP/1.1" 200 21 "-" "curl/8.1"

Lines are written to a buffered file and flushed once a second by the server
(and at shutdown), so logging costs no syscall per request.  Fields a client
controls are escaped so that a line can never be split or forged.
"""

from __future__ import annotations

import sys
import time


def clf_time(timestamp: float) -> str:
    """'[27/Nov/2026:14:31:03 +0000]' (always UTC)."""
    return time.strftime("[%d/%b/%Y:%H:%M:%S +0000]", time.gmtime(timestamp))


def _quote(value: str | None) -> str:
    if not value:
        return "-"
    if '"' in value or "\\" in value:
        value = value.replace("\\", "\\\\").replace('"', '\\"')
    return value


class AccessLog:
    def __init__(self, path: str) -> None:
        if path == "-":
            self._file = sys.stdout
            self._owned = False
        else:
            self._file = open(path, "a", encoding="latin-1", errors="replace", buffering=65536)  # noqa: SIM115
            self._owned = True
        self.now = clf_time(time.time())  # refreshed by the server once a second

    def write(self, peer, head, status: int, size: int) -> None:
        host = peer[0] if isinstance(peer, tuple) else "unix"
        if head is None:
            request = referer = agent = None
        else:
            request = f"{head.method} {head.target} {head.version}"
            referer = head.header("referer")
            agent = head.header("user-agent")
        self._file.write(
            f'{host} - - {self.now} "{_quote(request)}" {status} {size} '
            f'"{_quote(referer)}" "{_quote(agent)}"\n'
        )

    def flush(self) -> None:
        try:
            self._file.flush()
        except (OSError, ValueError):
            pass

    def close(self) -> None:
        self.flush()
        if self._owned:
            self._file.close()
