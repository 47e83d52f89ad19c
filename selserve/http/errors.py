"""The one exception the HTTP layer raises: a request we refuse, and the status to answer with.

The parser raises `HTTPError` for every request it will not process (malformed, too
large, unsupported). The connection answers with `status` and closes. `detail` goes
into that response body as-is, so it must never carry CR, LF or non-ASCII text, and
never echo bytes from the request (that would let a client shape our response).
"""

from __future__ import annotations

__all__ = ["HTTPError"]


class HTTPError(Exception):
    """A request we refuse; carries the status to answer with."""

    status: int  # 400, 413, 414, 417, 431, 501, 505
    detail: str  # short human text, safe to put in a response body (ASCII, no CR/LF)

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(status, detail)
        self.status = status
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.status} {self.detail}"

    def __repr__(self) -> str:
        return f"HTTPError({self.status!r}, {self.detail!r})"
