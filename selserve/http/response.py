"""Serialising responses: status lines, heads, chunked framing, error answers.

Pure functions of their arguments: the caller supplies the `Date` line (it owns
the clock) and decides keep-alive.  Statuses, reason phrases, header names and
values from applications are checked here against RFC 9110, the one rule for
native and WSGI applications alike: a final status is 200-599 (an interim 1xx
as a final answer would desynchronise the client), a name is a token, and a
value holds no control character but HTAB.  Anything else raises
`InvalidHeader` and is never written (a CR or LF would let an app split the
response; any other control byte can confuse a proxy or a terminal).
"""

from __future__ import annotations

import re
from email.utils import formatdate
from http import HTTPStatus

from .abnf import TOKEN

# field-name = token (RFC 9110 §5.1, §5.6.2)
FIELD_NAME = re.compile(TOKEN + r"\Z")
# field-value  = *field-content                               ; RFC 9110 §5.5
# field-vchar  = VCHAR / obs-text ; with SP and HTAB between them
# A value with any other character (CTLs such as CR, LF, NUL, ESC, DEL, or
# anything beyond latin-1) is refused.  Leading and trailing whitespace is
# allowed: harmless, and apps send it.
INVALID_FIELD_VALUE = re.compile(r"[^\t\x20-\x7e\x80-\xff]")
# reason-phrase = 1*( HTAB / SP / VCHAR / obs-text )           ; RFC 9112 §4
INVALID_REASON = INVALID_FIELD_VALUE

# Fields the server owns: an app's own are read (Content-Length, Connection), dropped
# (Date) or refused (the other hop-by-hop fields, RFC 9110 §7.6.1), never copied.
_SERVER_OWNED = frozenset(
    (
        "content-length",
        "connection",
        "date",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    )
)

# `body_length` of a HEAD answer whose length only a GET would tell (the app gave
# none and produced no content): the head announces no framing at all, which
# RFC 9110 §9.3.2 allows for what is determined only while generating content.
UNANNOUNCED = -1


class InvalidHeader(ValueError):
    """An application status or header we will not write."""


def _status_line(status: int, reason: str | None = None, version: bytes = b"HTTP/1.1") -> bytes:
    if reason is None:
        try:
            reason = HTTPStatus(status).phrase
        except ValueError:
            reason = "Unknown"
    return b"%s %d %s\r\n" % (version, status, reason.encode("latin-1"))


# Statuses whose responses never carry content (RFC 9110 §6.4.1).
_NO_CONTENT = frozenset((*range(100, 200), 204, 304))

# Pre-encoded status lines for every status http.HTTPStatus knows.
STATUS_LINES: dict[int, bytes] = {int(s): _status_line(int(s)) for s in HTTPStatus}
# The ones an application may answer with (final statuses, RFC 9110 §15).
FINAL_STATUS_LINES: dict[int, bytes] = {s: line for s, line in STATUS_LINES.items() if s >= 200}
# Status lines with an application's own reason phrase, by (status, reason).
# Bounded; cleared when full.
_REASON_LINES: dict[tuple[int, str], bytes] = {}
_REASON_LINES_MAX = 256


def status_line(status: int) -> bytes:
    """The status line for any three-digit status (interim ones included)."""
    line = STATUS_LINES.get(status)
    if line is None:
        if not 100 <= status <= 999:
            raise InvalidHeader(f"status {status} is not a three-digit code")
        line = _status_line(status)
    return line


def final_status_line(status: int, reason: str | None = None) -> bytes:
    """The status line of an application's answer: 200-599, with its own reason if given."""
    if type(status) is not int or not 200 <= status <= 599:
        raise InvalidHeader(f"status {status!r} is not a final status (200-599)")
    if reason is None:
        return FINAL_STATUS_LINES.get(status) or _status_line(status)
    line = _REASON_LINES.get((status, reason))
    if line is None:
        if not isinstance(reason, str) or INVALID_REASON.search(reason):
            raise InvalidHeader(f"reason phrase {reason!r} has a control character")
        line = _status_line(status, reason or "")
        if len(_REASON_LINES) >= _REASON_LINES_MAX:
            _REASON_LINES.clear()
        _REASON_LINES[(status, reason)] = line
    return line


def date_line(timestamp: float) -> bytes:
    """The `Date` header line for a wall-clock time (RFC 9110 §5.6.7 IMF-fixdate)."""
    return b"Date: " + formatdate(timestamp, usegmt=True).encode("ascii") + b"\r\n"


def build_head(
    status: int,
    headers: list[tuple[str, str]],
    *,
    method: str,
    http11: bool,
    keep_alive: bool,
    body_length: int | None,
    fixed: bytes,
    date: bytes = b"",
    body: bytes = b"",
    reason: str | None = None,
) -> tuple[bytes, int | None, bool, bool, bool]:
    """Serialise a response head and decide its framing.

    Returns `(data, content_length, chunked, keep_alive, has_body)`: the bytes to send,
    the body length the head announces (None: chunked or until close), whether the body
    must be chunked, whether the connection stays open after it, and whether the
    response carries a body at all.

    `status` must be a final status (200-599; `InvalidHeader` otherwise) and `reason`,
    if given, replaces its standard reason phrase.  `body_length` is the body's size
    when the server knows it (bytes, files), None when it is streamed, UNANNOUNCED for
    a HEAD answer that must not announce any framing.  `fixed` holds pre-encoded lines
    every response carries (Date, Server); `date` is the Date line alone, used instead
    when the app names its own Server.  An app's Date is dropped.  A Content-Length
    from the app wins for streamed bodies; without one, HTTP/1.1 gets chunked encoding
    and HTTP/1.0 a close-delimited body.  `body`, a body known in full, is appended to
    `data` when the response carries one (not for HEAD, 204, 304): head and body leave
    in one send.
    """
    if reason is None:
        line = FINAL_STATUS_LINES.get(status) or final_status_line(status)
    else:
        line = final_status_line(status, reason)
    block, app_length, wants_close, names_server = encode_headers(headers)
    if wants_close:
        keep_alive = False
    # RFC 9110 §6.4.1: no content for HEAD, 204 or 304.
    has_body = method != "HEAD" and status not in _NO_CONTENT
    # A streamed body (None) or an UNANNOUNCED one has the app's length, if any.
    content_length = app_length if body_length is None or body_length < 0 else body_length
    chunked = False
    if content_length is not None and status != 204 and status != 304:
        framing = b"Content-Length: %d\r\n" % content_length
    elif has_body and http11:
        chunked = True
        framing = b"Transfer-Encoding: chunked\r\n"
    else:  # no length to announce, or a status with rules of its own
        framing, content_length, keep_alive = _uncommon_framing(
            status, has_body, http11, keep_alive, body_length, app_length
        )
    if http11:
        connection = b"" if keep_alive else b"Connection: close\r\n"
    else:
        connection = b"Connection: keep-alive\r\n" if keep_alive else b""
    own_lines = date if names_server and date else fixed
    content = body if has_body else b""
    data = b"".join((line, own_lines, block, framing, connection, b"\r\n", content))
    return data, content_length, chunked, keep_alive, has_body


def _uncommon_framing(
    status: int,
    has_body: bool,
    http11: bool,
    keep_alive: bool,
    body_length: int | None,
    app_length: int | None,
) -> tuple[bytes, int | None, bool]:
    """`(framing line, content_length, keep_alive)` for the answers `build_head` gives
    neither a Content-Length of the body nor chunked coding: 204, 304, HTTP/1.0 without
    a length, HEAD without a length.  (So a body here is HTTP/1.0's, and no body is
    a HEAD answer's.)"""
    if status == 204:
        return b"", None, keep_alive  # RFC 9110 §8.6: never on 204
    if status == 304:
        # RFC 9110 §8.6: only the length the 200 would have had, which only the app knows.
        framing = b"" if app_length is None else b"Content-Length: %d\r\n" % app_length
        return framing, app_length, keep_alive
    if has_body:
        return b"", None, False  # HTTP/1.0 without a length: the close ends the body
    if http11 and body_length is None:
        return b"Transfer-Encoding: chunked\r\n", None, keep_alive  # what GET would have said
    return b"", None, keep_alive


# Encoded application header blocks by their (name, value) tuples: most apps send the
# same few header sets over and over.  Bounded; cleared when full.
_HEADER_CACHE: dict[tuple, tuple[bytes, int | None, bool, bool]] = {}
_HEADER_CACHE_MAX = 512


def encode_headers(headers) -> tuple[bytes, int | None, bool, bool]:
    """(encoded block, app Content-Length, app asked to close, app named a Server).

    The one check of an application's headers, for native and WSGI apps alike
    (see `_check_and_encode`).  Header lists already checked are remembered by
    their tuples (apps send the same few over and over); a refused one is never
    remembered, so it is refused every time.
    """
    try:
        key = tuple(headers)
        cached = _HEADER_CACHE.get(key)
    except TypeError:  # unhashable pieces (lists): checked without remembering
        key = cached = None
    if cached is not None:
        return cached
    result = _check_and_encode(headers)
    if key is not None:
        if len(_HEADER_CACHE) >= _HEADER_CACHE_MAX:
            _HEADER_CACHE.clear()
        _HEADER_CACHE[key] = result
    return result


def check_headers(headers) -> tuple[tuple[tuple[str, str], ...], int | None]:
    """An application's headers checked as `encode_headers` does, as a tuple (nobody can
    change them afterwards), and the Content-Length they give.  Raises InvalidHeader."""
    try:
        key = tuple(headers)
        cached = _HEADER_CACHE.get(key)
    except TypeError:  # unhashable pieces: encode_headers refuses them
        key = cached = None
    if cached is None:
        cached = encode_headers(headers)  # checks (raises InvalidHeader), remembers
    return key, cached[1]


def _check_and_encode(headers) -> tuple[bytes, int | None, bool, bool]:
    # The policy: a list (or tuple) of (name, value) str pairs; names are tokens and
    # values hold no control character but HTAB (RFC 9110 §5.1, §5.5).  The fields that
    # frame the message and the connection are the server's: an app's Content-Length
    # is read (the server enforces it) and Connection: close is honoured, neither is
    # copied; its Date is dropped; any other hop-by-hop field is refused (RFC 9110
    # §7.6.1, as PEP 3333 asks of WSGI apps).
    if not isinstance(headers, (list, tuple)):
        raise InvalidHeader(f"response headers must be a list, not {type(headers).__name__}")
    lines = []
    app_length: int | None = None
    wants_close = names_server = False
    for item in headers:
        if type(item) is not tuple or len(item) != 2:
            raise InvalidHeader(f"a response header must be a (name, value) tuple, not {item!r}")
        name, value = item
        if not isinstance(name, str) or not FIELD_NAME.match(name):
            raise InvalidHeader(f"invalid header name {name!r}")
        if not isinstance(value, str):
            raise InvalidHeader(f"header {name!r} has a {type(value).__name__} value, not str")
        if INVALID_FIELD_VALUE.search(value):
            raise InvalidHeader(f"header {name!r} has a control or non-latin-1 character")
        lower = name.lower()
        if lower in _SERVER_OWNED:
            if lower == "content-length":
                length = _parse_length(value)
                if app_length is not None and length != app_length:
                    raise InvalidHeader("conflicting Content-Length headers")
                app_length = length
            elif lower == "connection":
                wants_close = wants_close or "close" in value.lower()
            elif lower != "date":
                raise InvalidHeader(f"hop-by-hop header {name!r} is the server's business")
            continue
        if lower == "server":
            names_server = True
        lines.append(f"{name}: {value}\r\n".encode("latin-1"))
    return b"".join(lines), app_length, wants_close, names_server


def _parse_length(value: str) -> int:
    value = value.strip()
    if not value.isdigit() or not value.isascii():
        raise InvalidHeader(f"invalid Content-Length {value!r}")
    return int(value)


# chunk = chunk-size [ chunk-ext ] CRLF chunk-data CRLF   (RFC 9112 §7.1; we send no
# extensions).  CHUNK_SIZE_LINE % len(data) is the part before the data.
CHUNK_SIZE_LINE = b"%x\r\n"
CHUNK_END = b"\r\n"


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked body; never call with empty data (that is the last-chunk)."""
    return b"%x\r\n%s\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def error_response(status: int, detail: str, fixed: bytes) -> bytes:
    """A small, complete answer that closes the connection (parse errors, 5xx)."""
    body = f"{status} {HTTPStatus(status).phrase}: {detail}\n".encode("ascii", "replace")
    head = b"%sContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n" % (
        fixed,
        len(body),
    )
    out = status_line(status) + head + b"Connection: close\r\n\r\n"
    return out + body
