"""The native application interface: what an application receives and returns.

An application is a callable `app(request) -> Response`, marked with `@native`
so that the command line does not take it for a WSGI application.  It runs in the
event loop once the whole request (head and body) has arrived, so it must not
block; WSGI applications get their own adapter (`wsgi.py`) on top of this.
A `Response` body is bytes, a `FileBody` (sent with sendfile), or any other
iterable of bytes (streamed: chunked on HTTP/1.1 unless the app gives a
Content-Length; its `close()` is called on every path).  An application may
also answer from a request's head (`on_head`, see `selserve.dispatch`).
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable
from typing import BinaryIO

from .buffer import FileRange
from .http.parser import Request as RequestHead


def native(app):
    """Mark `app` as a native application (`app(request) -> Response`).

    The command line serves unmarked callables as WSGI applications, the
    common case; this marker is how it tells the two kinds apart.
    """
    app.selserve_native = True
    return app


def is_native(app) -> bool:
    """Marked with @native (or a class attribute `selserve_native = True`)."""
    return getattr(app, "selserve_native", False) is True


class Request(RequestHead):
    """One complete request as the application sees it.

    The parsed head (`method`, `target`, `path` still percent-encoded, `query`,
    `version`, `headers` with lower-case names, `host`, `keep_alive`,
    `content_length`, `chunked`) plus what the connection knows: the body and
    the two addresses.  The connection's parser makes this class directly, so
    a request is not copied from one object into another.
    """

    __slots__ = ("peer", "local", "_body")
    # "http" or "https": https on a TLS listener, or as a trusted proxy reported it
    # (--proxy-headers); None: the server's own (--url-scheme).  A slot only in the
    # class --proxy-headers uses.
    scheme: str | None = None
    # The verified client certificate's subject, RFC 4514 ("CN=alice,O=Example"), on a
    # TLS connection with --client-cert; else None.
    client_cert: str | None = None

    def arrived(self, body: bytes | BinaryIO = b"", peer=None, local=None) -> Request:
        """Attach what follows the head: the body and the addresses. Returns self."""
        # bytes for a small body, a temporary file (at position 0) for one spilled to disk.
        self._body = body
        self.peer = peer  # (host, port) for TCP, the path (often "") for Unix sockets
        self.local = local  # the listening address: (host, port) or a Unix socket path
        return self

    @property
    def body(self) -> bytes:
        """The whole request body (read from disk if it was spilled there)."""
        body = self._body
        if isinstance(body, bytes):
            return body
        position = body.tell()
        body.seek(0)
        data = body.read()
        body.seek(position)
        return data

    @property
    def stream(self) -> BinaryIO:
        """The request body as a readable binary file, positioned at its start."""
        body = self._body
        if isinstance(body, bytes):
            body = self._body = io.BytesIO(body)
        return body

    def header(self, name: str, default: str | None = None) -> str | None:
        """The first value of header `name` (case-insensitive)."""
        return super().header(name.lower(), default)

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.target} {self.version}>"


class FileBody(FileRange):
    """`count` bytes of an open binary file from `offset` (to its end by default), sent
    without copying: the write buffer's `FileRange`, plus the `close()` the server
    calls when the response ends, however it ends.
    """

    __slots__ = ()

    def __init__(self, fileobj, offset: int = 0, count: int | None = None) -> None:
        if count is None:
            count = os.fstat(fileobj.fileno()).st_size - offset
        super().__init__(fileobj, offset, count)

    def close(self) -> None:
        self.fileobj.close()


class Response:
    """Status, headers and body of one answer.

    `status` is a final status, 200-599 (anything else is logged and answered
    500); `reason` replaces its standard reason phrase.  `body` is bytes, a
    `FileBody`, an iterable of bytes, or None: no content, and for HEAD no
    length announced either (for an answer whose length only a GET would tell).
    """

    __slots__ = ("status", "headers", "body", "reason")

    def __init__(
        self,
        status: int = 200,
        headers: list[tuple[str, str]] | None = None,
        body: bytes | FileBody | Iterable[bytes] | None = b"",
        reason: str | None = None,
    ) -> None:
        self.status = status
        self.headers = headers if headers is not None else []
        self.body = body
        self.reason = reason

    def __repr__(self) -> str:
        return f"<Response {self.status}>"


_INTERNAL_ERROR_HEADERS = (("Content-Type", "text/plain; charset=utf-8"),)
_INTERNAL_ERROR_BODY = b"500 Internal Server Error\n"


def internal_error(detail: str | None = None) -> Response:
    """The 500 answer for an application that failed before its answer started
    (`detail`, a traceback, only when the operator asked to show it)."""
    body = _INTERNAL_ERROR_BODY
    if detail:
        body += b"\n" + detail.encode("utf-8", "replace")
    return Response(500, list(_INTERNAL_ERROR_HEADERS), body)


def close_body(body, log) -> None:
    """Call `body.close()` if it has one (PEP 3333 and FileBody require it on every
    path): what it raises is the application's bug, logged to `log`, never ours."""
    close = getattr(body, "close", None)
    if close is not None:
        try:
            close()
        except Exception:
            log.exception("error closing the response body %r", body)
