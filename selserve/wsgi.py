"""PEP 3333 (WSGI) applications on top of the native application interface.

`WSGIAdapter(wsgi_app)` is a native application (`request -> Response`): it
builds the environ from a complete `Request`, calls the WSGI application, and
turns what it returns into a `Response` whose body the connection streams
through its bounded write buffer.  The application is driven only until its
status and headers are known (PEP 3333: up to the first non-empty body piece
or the first `write()`); every later piece is pulled by the connection when
its buffer has room.  Whatever body object it hands to the connection calls
the application iterable's `close()` exactly once, and the connection calls
that body's `close()` on every path.

It never touches a socket, never blocks on the network (the body has been
read before the application runs) and never lets an application error escape
before the response has started: that becomes a 500 answer, and the traceback
goes to the "selserve" logger.
"""

from __future__ import annotations

import collections
import io
import logging
import os
import re
import stat
import threading
import traceback
from collections.abc import Callable, Iterable, Iterator
from http import HTTPStatus
from urllib.parse import unquote_to_bytes

from .app import FileBody, Request, Response, close_body
from .http.response import check_headers

__all__ = ["ErrorStream", "FileWrapper", "WSGIAdapter"]

log = logging.getLogger("selserve")
errors_log = logging.getLogger("selserve.wsgi")

# status = 3DIGIT SP reason-phrase; reason-phrase = *( HTAB / SP / VCHAR / obs-text )
# (PEP 3333 "Status-Code and Reason-Phrase separated by a single space";
# RFC 9112 §4).  Only final statuses: WSGI has no way to send an interim 1xx.
_STATUS = re.compile(r"([0-9]{3}) ([\t\x20-\x7e\x80-\xff]*)\Z")
_WILDCARD_HOSTS = frozenset(("", "0.0.0.0", "::"))
# environ keys every request has (HTTP_* and CONTENT_* only when the request has them).
_PER_REQUEST_KEYS = (
    "REQUEST_METHOD",
    "PATH_INFO",
    "QUERY_STRING",
    "SERVER_PROTOCOL",
    "REQUEST_URI",
    "RAW_URI",
    "SERVER_NAME",
    "SERVER_PORT",
    "REMOTE_ADDR",
    "wsgi.input",
)
_DEFAULT_PORTS = {"http": "80", "https": "443"}
_ERROR_HEADERS = [("Content-Type", "text/plain; charset=utf-8")]
_ERROR_BODY = b"500 Internal Server Error\n"
# Bounds of the small caches below (entries), so odd clients cannot grow them.
_CACHE_MAX = 512
# A wsgi.errors line longer than this is logged in pieces.
_ERROR_LINE_MAX = 64 * 1024
_END = object()
_EMPTY: Iterator[bytes] = iter(())


class WSGIAdapter:
    """Serve the WSGI application `wsgi_app` as a native selserve application."""

    selserve_native = True
    # A WSGI app may block (a database, a file, a remote call): by default (--threads
    # auto) it runs on a pool of threads, never in the event loop.
    blocking = True

    def __init__(
        self,
        wsgi_app: Callable,
        *,
        root_path: str = "",
        expose_tracebacks: bool = False,
        url_scheme: str = "http",
        multithread: bool = False,
        multiprocess: bool = False,
    ) -> None:
        if not callable(wsgi_app):
            raise TypeError(f"the WSGI application {wsgi_app!r} is not callable")
        if url_scheme not in _DEFAULT_PORTS:
            raise ValueError(f"url_scheme must be 'http' or 'https', not {url_scheme!r}")
        self.app = wsgi_app
        self.root_path = script_name(root_path)
        self.expose_tracebacks = expose_tracebacks
        self.url_scheme = url_scheme
        self.errors = ErrorStream()
        self._root_prefix = self.root_path + "/"
        self._default_port = _DEFAULT_PORTS[url_scheme]
        self._base = {
            "SCRIPT_NAME": self.root_path,
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": url_scheme,
            "wsgi.errors": self.errors,
            "wsgi.multithread": multithread,
            "wsgi.multiprocess": multiprocess,
            "wsgi.run_once": False,
            "wsgi.input_terminated": True,
            "wsgi.file_wrapper": FileWrapper,
        }
        if url_scheme == "https":
            self._base["HTTPS"] = "on"
        # Every request sets these: present (as placeholders) in the copied dict,
        # they are replaced in place instead of growing it entry by entry.
        for key in _PER_REQUEST_KEYS:
            self._base[key] = None
        # The base environ per listening address: SERVER_NAME and SERVER_PORT
        # filled in where the address says them (None: taken from Host).
        self._listener_bases: dict[object, dict] = {}
        # (listener, target, method, version, Host, fields) -> the environ's shared part
        # (see _shared_environ): a request seen before costs a copy of it (the WSGI
        # hello under wrk +8%).  Bounded like _HEADER_ENTRIES: emptied when full.
        self._shared_environs: dict[tuple, dict] = {}

    def __repr__(self) -> str:
        return f"<WSGIAdapter {self.app!r} root_path={self.root_path!r}>"

    # -- the native application -------------------------------------------------

    def __call__(self, request: Request) -> Response:
        environ = self.environ(request)
        exchange = _Exchange()
        try:
            result = self.app(environ, exchange.start_response)
        except Exception:
            return self._failed(request, "WSGI application error")
        if type(result) is list and len(result) == 1 and exchange.written is None:
            # The usual `return [body]` after start_response(): nothing to drive.
            body = result[0]
            length = exchange.content_length
            if (
                type(body) is bytes
                and exchange.status is not None
                and (length is None or length == len(body))
            ):
                if not body and request.method == "HEAD":
                    body = None  # no length to announce: see _known_response
                return Response(exchange.status, exchange.headers, body, exchange.reason)
        try:
            return self._response(exchange, result, request.method)
        except BaseException as exc:
            # Nothing was handed to the connection: the close() is ours to make.
            if not exchange.result_closed:
                exchange.result_closed = True
                close_body(result, log)
            if not isinstance(exc, Exception):
                raise
            if isinstance(exc, _NoStartResponse):
                log.error("%s for %s %s", exc, request.method, request.target)
                return self._error_response(None)
            return self._failed(request, "WSGI application error")

    def _response(self, exchange: _Exchange, result, method: str) -> Response:
        """The Response for `result`.

        Raises whatever the application raises while we drive it, TypeError or
        ValueError for what it returns that WSGI does not allow, and
        _NoStartResponse if it never called start_response().
        """
        if isinstance(result, (bytes, str)):
            raise TypeError(
                f"the application returned {type(result).__name__}, not an iterable of bytes "
                "(wrap the body in a list)"
            )
        result_type = type(result)
        if result_type is FileWrapper and exchange.status is not None and exchange.written is None:
            body = _file_body(result, exchange.content_length)
            if body is not None:
                return Response(exchange.status, exchange.headers, body, exchange.reason)
        if result_type is list or result_type is tuple:
            # Every piece is known already (the usual `return [body]`).
            if exchange.status is None:
                raise _NoStartResponse()
            pieces = [_as_bytes(piece) for piece in result]
            return _known_response(exchange, [*(exchange.written or ()), *pieces], method)

        iterator = iter(result)
        first = _END
        # PEP 3333: headers go out with the first non-empty piece or at the first
        # write(); until then the application may still change its mind.
        while not exchange.headers_sent:
            piece = next(iterator, _END)
            if piece is _END:
                break
            if type(piece) is not bytes:
                piece = _as_bytes(piece)
            if piece:
                first = piece
                break
        if exchange.status is None:
            raise _NoStartResponse()
        if first is _END and not exchange.headers_sent:
            # Exhausted without a byte: the whole body is what write() got.
            exchange.result_closed = True
            close_body(result, log)
            return _known_response(exchange, list(exchange.written or ()), method)
        exchange.headers_sent = True
        pending = exchange.written
        if pending is None:
            # The body's queue: a later write() from the iterable lands here too.
            pending = exchange.written = collections.deque()
        if first is not _END:
            pending.append(first)
        exchange.result_closed = True  # from here on the body object owns it
        return Response(
            exchange.status, exchange.headers, _Body(pending, iterator, result), exchange.reason
        )

    def _failed(self, request: Request, what: str) -> Response:
        """Log the exception being handled and answer 500."""
        log.exception("%s on %s %s", what, request.method, request.target)
        return self._error_response(traceback.format_exc() if self.expose_tracebacks else None)

    @staticmethod
    def _error_response(detail: str | None) -> Response:
        body = _ERROR_BODY
        if detail:
            body += b"\n" + detail.encode("utf-8", "replace")
        return Response(500, list(_ERROR_HEADERS), body)

    # -- the environ --------------------------------------------------------------

    def environ(self, request: Request) -> dict:
        """The PEP 3333 environ for `request`."""
        try:
            key = (
                request.local,
                request.target,
                request.method,
                request.version,
                request.host,
                tuple(request.headers),
            )
            shared = self._shared_environs.get(key)
        except TypeError:  # (a list among the fields: not remembered)
            key = shared = None
        if shared is None:
            shared = self._shared_environ(request, key)
        environ = shared.copy()

        if request.chunked:
            # The connection has removed the chunked coding: wsgi.input holds the
            # decoded body, and CONTENT_LENGTH says how long that is.
            stream = environ["wsgi.input"] = request.stream
            environ["CONTENT_LENGTH"] = str(_stream_size(stream))
        elif request.content_length is not None:
            environ["wsgi.input"] = request.stream
            environ["CONTENT_LENGTH"] = str(request.content_length)
        if request.scheme is not None:  # (TLS, or a trusted proxy's word: --proxy-headers)
            _set_scheme(environ, request.scheme)
            if request.client_cert is not None:
                environ["SSL_CLIENT_S_DN"] = request.client_cert
        peer = request.peer
        if type(peer) is tuple:
            environ["REMOTE_ADDR"] = peer[0]
            environ["REMOTE_PORT"] = str(peer[1])
        else:
            environ["REMOTE_ADDR"] = peer or ""  # a Unix socket's peer, usually unnamed
            environ.pop("REMOTE_PORT", None)
        return environ

    def _shared_environ(self, request: Request, key: tuple | None) -> dict:
        """What the environ of `request` shares with every request of the same
        listener, request line, Host and fields (the body, the scheme and the
        peer's address are set per request); remembered under `key` unless it is
        None or the request is long."""
        local = request.local
        base = self._listener_bases.get(local)
        if base is None:
            base = self._listener_base(local)
        environ = base.copy()
        path = request.path
        # PEP 3333 "bytes as str": decode %XX once, keep each byte as one latin-1 char.
        if "%" in path:
            path = unquote_to_bytes(path).decode("latin-1")
        root = self.root_path
        if root and (path == root or path.startswith(self._root_prefix)):
            path = path[len(root) :]
        environ["REQUEST_METHOD"] = request.method
        environ["PATH_INFO"] = path
        environ["QUERY_STRING"] = request.query
        environ["SERVER_PROTOCOL"] = request.version
        # Not in PEP 3333, but what frameworks look for to see the undecoded path.
        environ["REQUEST_URI"] = environ["RAW_URI"] = request.target

        headers = request.headers
        fields = None if key is None else key[-1]
        entries = None if fields is None else _HEADER_ENTRIES.get(fields)
        if entries is None:
            entries = _header_entries(headers, fields)
        environ.update(entries)
        environ["wsgi.input"] = _NO_BODY  # (a request with a body has its own)
        if environ["SERVER_NAME"] is None:  # a wildcard or Unix socket listener
            environ["SERVER_NAME"], environ["SERVER_PORT"] = self._server_address_from_host(
                request.host, local
            )
        if type(request.peer) is tuple:
            environ["REMOTE_PORT"] = None  # (a placeholder: the copy need not grow)
        if key is not None and _chars(request.target, fields) <= _HEADER_ENTRY_CHARS:
            environs = self._shared_environs
            if len(environs) >= _HEADER_ENTRIES_MAX:
                environs.clear()  # (a flood of new requests cannot grow it)
            environs[key] = environ
        return environ

    def _listener_base(self, local) -> dict:
        base = self._base.copy()
        if type(local) is tuple and local[0] not in _WILDCARD_HOSTS:
            base["SERVER_NAME"], base["SERVER_PORT"] = local[0], str(local[1])
        if len(self._listener_bases) < _CACHE_MAX:
            self._listener_bases[local] = base
        return base

    def _server_address_from_host(self, host: str | None, local) -> tuple[str, str]:
        """SERVER_NAME and SERVER_PORT when the listener's address does not say."""
        port = str(local[1]) if type(local) is tuple else self._default_port
        if host:
            name, sep, host_port = host.rpartition(":")
            if sep and host_port.isdigit() and not name.endswith(":"):
                if type(local) is not tuple:
                    port = host_port
            else:
                name = host
            if name.startswith("[") and name.endswith("]"):
                name = name[1:-1]
            if name:
                return name, port
        if type(local) is tuple:
            return local[0], port
        return "localhost", port


class _NoStartResponse(Exception):
    def __str__(self) -> str:
        return "the WSGI application did not call start_response()"


class _Exchange:
    """What the application has said so far about one response."""

    __slots__ = (
        "status",
        "reason",
        "headers",
        "content_length",
        "headers_sent",
        "written",
        "result_closed",
    )

    def __init__(self) -> None:
        self.status: int | None = None  # with `reason` (the app's own phrase, if not the
        # standard one), set by start_response()
        self.headers: tuple[tuple[str, str], ...] = ()
        self.content_length: int | None = None
        self.headers_sent = False
        self.written: collections.deque[bytes] | None = None  # write()'s data, once called
        self.result_closed = False

    def start_response(self, status: str, headers: list[tuple[str, str]], exc_info=None):
        if exc_info is not None:
            try:
                if self.headers_sent:
                    # PEP 3333: too late to change the answer; let the error through.
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None  # no reference cycle through the traceback
        elif self.status is not None:
            raise RuntimeError("start_response() called a second time without exc_info")
        parsed = _STATUS_CODES.get(status) if type(status) is str else None
        if parsed is None:
            parsed = _parse_status(status)
        self.headers, self.content_length = check_headers(headers)
        self.status, self.reason = parsed
        return self.write

    def write(self, data: bytes) -> None:
        """PEP 3333's write(): its data goes out before the iterable's pieces."""
        if self.status is None:
            raise RuntimeError("write() called before start_response()")
        if type(data) is not bytes:
            data = _as_bytes(data)
        self.headers_sent = True
        if data:
            if self.written is None:
                self.written = collections.deque()
            self.written.append(data)


class _Body:
    """The streamed body of a WSGI response: write() data, then the iterable's pieces.

    The connection pulls it only while its write buffer has room and calls
    `close()` once however the response ends; that reaches the application
    iterable's `close()` exactly once.
    """

    __slots__ = ("pending", "iterator", "result", "closed")

    def __init__(self, pending: collections.deque[bytes], iterator: Iterator, result) -> None:
        self.pending = pending
        self.iterator = iterator
        self.result = result
        self.closed = False

    def __iter__(self) -> _Body:
        return self

    def __next__(self) -> bytes:
        pending = self.pending
        if pending:
            return pending.popleft()
        piece = next(self.iterator)
        if type(piece) is not bytes:
            piece = _as_bytes(piece)
        if pending:
            # write() was called while this piece was being produced: it came first.
            pending.append(piece)
            return pending.popleft()
        return piece

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.iterator = _EMPTY
        self.pending.clear()
        close_body(self.result, log)


class _EmptyInput(io.BufferedIOBase):
    """`wsgi.input` of every request without a body: always at its end.

    One instance serves them all, so it cannot be written, and close() leaves
    it open (an application closing its input must not break the next request).
    """

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        return b""

    read1 = read

    def readline(self, size: int | None = -1) -> bytes:
        return b""

    def readinto(self, buffer) -> int:
        return 0

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return 0

    def tell(self) -> int:
        return 0

    def close(self) -> None:
        pass


_NO_BODY = _EmptyInput()


class FileWrapper:
    """`wsgi.file_wrapper`: a file-like object as a WSGI iterable.

    Returned as is by the application, a wrapper over a regular file (one with
    `fileno()`) is sent with sendfile; anything else is read in blocks.
    """

    __slots__ = ("filelike", "block_size", "closed")

    def __init__(self, filelike, block_size: int = 64 * 1024) -> None:
        self.filelike = filelike
        self.block_size = block_size
        self.closed = False

    def __iter__(self) -> FileWrapper:
        return self

    def __next__(self) -> bytes:
        data = self.filelike.read(self.block_size)
        if data:
            return data
        raise StopIteration

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        close = getattr(self.filelike, "close", None)
        if close is not None:
            close()


class _WrappedFileBody(FileBody):
    """A FileBody whose close() closes the application's FileWrapper (and so its file)."""

    __slots__ = ("wrapper",)

    def __init__(self, wrapper: FileWrapper, offset: int, count: int) -> None:
        super().__init__(wrapper.filelike, offset, count)
        self.wrapper = wrapper

    def close(self) -> None:
        self.wrapper.close()


class ErrorStream:
    """`wsgi.errors`: a text stream whose lines go to the "selserve.wsgi" logger."""

    def __init__(self, logger: logging.Logger = errors_log) -> None:
        self.logger = logger
        self._partial = ""
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"wsgi.errors takes str, not {type(text).__name__}")
        with self._lock:
            *lines, rest = (self._partial + text).split("\n")
            if len(rest) > _ERROR_LINE_MAX:
                lines.append(rest)
                rest = ""
            self._partial = rest
        for line in lines:
            if line:
                self.logger.error("%s", line)
        return len(text)

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        with self._lock:
            rest, self._partial = self._partial, ""
        if rest:
            self.logger.error("%s", rest)


# -- helpers ------------------------------------------------------------------------


def script_name(root_path: str) -> str:
    """SCRIPT_NAME for a mount point like "/app" ("" for the root), bytes-as-str."""
    if not isinstance(root_path, str):
        raise TypeError(f"root_path must be a str, not {type(root_path).__name__}")
    root = root_path.rstrip("/")
    if root and not root.startswith("/"):
        raise ValueError(f"root_path must start with '/', e.g. /app (got {root_path!r})")
    # Given as text (maybe with %XX escapes); compared with decoded request paths.
    return unquote_to_bytes(root).decode("latin-1")


def _parse_status(status: str) -> tuple[int, str | None]:
    """(code, reason) of a WSGI status line; reason is None when it is the standard one."""
    parsed = _STATUS_CODES.get(status) if type(status) is str else None
    if parsed is not None:
        return parsed
    if not isinstance(status, str):
        raise TypeError(f"status must be a str like '200 OK', not {type(status).__name__}")
    match = _STATUS.match(status)
    if match is None:
        raise ValueError(
            f"invalid status {status!r}: want three digits, a space and a reason, e.g. '200 OK'"
        )
    code = int(match[1])
    if not 200 <= code <= 599:
        raise ValueError(f"invalid status {status!r}: a WSGI status is from 200 to 599")
    reason: str | None = match[2]
    if reason == _STANDARD_REASONS.get(code):
        reason = None  # the pre-encoded status line serves it
    parsed = (code, reason)
    if len(_STATUS_CODES) < _CACHE_MAX:
        _STATUS_CODES[status] = parsed
    return parsed


_STATUS_CODES: dict[str, tuple[int, str | None]] = {}
_STANDARD_REASONS = {int(s): s.phrase for s in HTTPStatus}


_DROP = "<drop>"  # environ key of a header that must not reach the application

# The environ entries of a request's header fields, by those fields.  A client
# sends the same head again and again, and the parser hands back the same field
# tuples for lines it has seen: one lookup then replaces a loop over the fields
# (a WSGI hello with a browser's 13 fields: 134.8k -> 127.3k instructions per
# request; with wrk's 3, 96.7k -> 95.9k).  The entries depend on the fields
# alone, so they cannot go stale.  Bounded: at most _HEADER_ENTRIES_MAX heads of up to
# _HEADER_ENTRY_CHARS characters (about 4 MB in all); emptied when full.
_HEADER_ENTRIES: dict[tuple, dict[str, str]] = {}
_HEADER_ENTRIES_MAX = 256
_HEADER_ENTRY_CHARS = 16 * 1024


def _header_entries(headers, fields: tuple | None) -> dict[str, str]:
    """The environ entries (HTTP_*, CONTENT_TYPE) of the request header fields
    `headers`; remembered under `fields` (their tuple) unless that is None."""
    entries: dict[str, str] = {}
    chars = 0
    for name, value in headers:
        chars += len(name) + len(value)
        key = _ENVIRON_KEYS.get(name) or _environ_key(name)
        if key in entries:
            # RFC 9110 §5.3: repeated fields combine with commas; cookies with
            # "; " (RFC 6265 §5.4), since a comma could be part of a cookie.
            # (A repeated Content-Type: the first one stands.)
            if key[0] == "H":
                entries[key] += "; " + value if key == "HTTP_COOKIE" else ", " + value
        elif key is not _DROP:
            entries[key] = value
    if fields is not None and chars <= _HEADER_ENTRY_CHARS:
        if len(_HEADER_ENTRIES) >= _HEADER_ENTRIES_MAX:
            _HEADER_ENTRIES.clear()  # (a flood of new heads cannot grow it)
        _HEADER_ENTRIES[fields] = entries
    return entries


def _chars(target: str, fields: tuple) -> int:
    return len(target) + sum(len(name) + len(value) for name, value in fields)


def _environ_key(name: str) -> str:
    # A "_" would let "X_Forwarded_For" pose as "X-Forwarded-For" once both
    # became HTTP_X_FORWARDED_FOR: such headers are dropped.
    key = _DROP if "_" in name else "HTTP_" + name.upper().replace("-", "_")
    if len(_ENVIRON_KEYS) < _CACHE_MAX:
        _ENVIRON_KEYS[name] = key
    return key


# Request header (lower-case) → environ key; grows up to _CACHE_MAX names.
_ENVIRON_KEYS: dict[str, str] = {
    "content-type": "CONTENT_TYPE",
    # The body's framing: CONTENT_LENGTH is set from the parsed request instead
    # (the decoded length for a chunked body).
    "content-length": _DROP,
    "transfer-encoding": _DROP,
}


def _as_bytes(piece) -> bytes:
    if isinstance(piece, bytes):
        return piece
    if isinstance(piece, (bytearray, memoryview)):
        return bytes(piece)
    raise TypeError(f"a WSGI body piece must be bytes, not {type(piece).__name__}")


def _known_response(exchange: _Exchange, pieces: list[bytes], method: str) -> Response:
    """A Response for a body known in full, to a request of `method`."""
    body = b"".join(pieces)
    length = exchange.content_length
    if not body and method == "HEAD":
        # Apps (werkzeug, httpbin) answer HEAD with no content and often no
        # length: the length of their GET answer is unknown here, so none is
        # announced (RFC 9110 §8.6 forbids a Content-Length that differs from
        # GET's); a Content-Length the app gave is kept.
        return Response(exchange.status, exchange.headers, None, exchange.reason)
    if length is None or length == len(body):
        return Response(exchange.status, exchange.headers, body, exchange.reason)
    # The application's Content-Length disagrees with its body (or answers a
    # HEAD): streamed, the connection keeps the header and enforces it.
    return Response(
        exchange.status,
        exchange.headers,
        _Body(collections.deque(pieces), _EMPTY, None),
        exchange.reason,
    )


def _file_body(wrapper: FileWrapper, content_length: int | None) -> FileBody | None:
    """A FileBody for a FileWrapper over a regular file, else None (then it is read)."""
    filelike = wrapper.filelike
    if isinstance(filelike, io.TextIOBase):
        return None
    try:
        fd = filelike.fileno()
        offset = filelike.tell()
        info = os.fstat(fd)
    except (AttributeError, OSError, ValueError):
        return None
    if not stat.S_ISREG(info.st_mode) or type(offset) is not int or offset < 0:
        return None
    available = max(0, info.st_size - offset)
    if content_length is None:
        count = available
    elif content_length <= available:
        count = content_length
    else:
        return None  # shorter than promised: streamed, so the connection notices
    return _WrappedFileBody(wrapper, offset, count)


def _stream_size(stream) -> int:
    position = stream.tell()
    size = stream.seek(0, os.SEEK_END)
    stream.seek(position)
    return size - position


def _set_scheme(environ: dict, scheme: str) -> None:
    environ["wsgi.url_scheme"] = scheme
    if scheme == "https":
        environ["HTTPS"] = "on"
    else:
        environ.pop("HTTPS", None)
