"""Incremental, sans-I/O parser for HTTP/1.1 requests (RFC 9112).

Bytes go in with `RequestParser.feed`; events come out of `RequestParser.next_event`:
a `Request` head, zero or more `Data` pieces of body, one `EndOfMessage`, then `PAUSED`
until the caller has answered and calls `start_next_request` (so pipelined requests are
taken one at a time, in order). A request we refuse raises `HTTPError` with the status to
answer; from then on the parser is dead.

It must never touch a socket, a clock or a logger; never hold more than its limits allow
while waiting for a line end; never let an ambiguous body length through (that is how
requests are smuggled past a proxy); and never loop over bytes in Python on the common
path: a whole head is parsed with a handful of C-level searches and regexes.
"""

from __future__ import annotations

from collections.abc import Sequence

from selserve.http.abnf import (
    ABSOLUTE_FORM_RE,
    AUTHORITY_FORM_RE,
    BARE_LF_B,
    CHUNK_LINE_B,
    CONTENT_LENGTH_RE,
    EMPTY_LINES_B,
    FIELD_LINE,
    FIELD_LINE_TEXT,
    FIELD_VALUE_CHARS_RE,
    HEAD_END_B,
    HOST_RE,
    HTTP_VERSION_RE,
    METHOD_RE,
    METHOD_SO_FAR_B,
    REQUEST_LINE,
    TARGET_CHARS_RE,
    TOKEN_RE,
    TRANSFER_CODING_RE,
)
from selserve.http.errors import HTTPError

__all__ = [
    "CLOSED",
    "NEED_DATA",
    "PAUSED",
    "Data",
    "EndOfMessage",
    "Request",
    "RequestParser",
]


class _Sentinel:
    """A named singleton returned by `next_event` when there is no event."""

    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name

    def __reduce__(self) -> str:
        return self._name  # pickles as the module global: identity survives


NEED_DATA = _Sentinel("NEED_DATA")  # feed more bytes, then ask again
PAUSED = _Sentinel("PAUSED")  # a request is complete; call start_next_request()
CLOSED = _Sentinel("CLOSED")  # the peer sent EOF at a message boundary


class Request:
    """The parsed head of one request."""

    __slots__ = (
        "method",
        "target",
        "path",
        "query",
        "version",
        "headers",
        "keep_alive",
        "content_length",
        "chunked",
        "expect_continue",
        "host",
    )

    def __init__(
        self,
        method: str,
        target: str,
        path: str,
        query: str,
        version: str,
        headers: list[tuple[str, str]],
        keep_alive: bool,
        content_length: int | None,
        chunked: bool,
        expect_continue: bool,
        host: str,
    ) -> None:
        self.method = method
        self.target = target
        self.path = path
        self.query = query
        self.version = version
        self.headers = headers
        self.keep_alive = keep_alive
        self.content_length = content_length
        self.chunked = chunked
        self.expect_continue = expect_continue
        self.host = host

    def header(self, name: str, default: str | None = None) -> str | None:
        """The first value of the field `name` (give it lower-case), else `default`."""
        for field, value in self.headers:
            if field == name:
                return value
        return default

    def __eq__(self, other: object) -> bool:
        if type(other) is not Request:
            return NotImplemented
        return all(getattr(self, a) == getattr(other, a) for a in Request.__slots__)

    __hash__ = None  # type: ignore[assignment]  # mutable, compared by value

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.target} {self.version} headers={self.headers!r}>"


class Data:
    """A piece of request body, never empty."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __eq__(self, other: object) -> bool:
        if type(other) is not Data:
            return NotImplemented
        return self.data == other.data

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Data({self.data!r})"


class EndOfMessage:
    """The request body is complete; `trailers` holds chunked trailer fields, if any."""

    __slots__ = ("trailers",)

    def __init__(self, trailers: Sequence[tuple[str, str]] = ()) -> None:
        self.trailers = trailers

    def __eq__(self, other: object) -> bool:
        if type(other) is not EndOfMessage:
            return NotImplemented
        return list(self.trailers) == list(other.trailers)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"EndOfMessage({self.trailers!r})"


Event = Request | Data | EndOfMessage | _Sentinel

# The end of every message without trailers: one shared, immutable event.
_NO_TRAILERS = EndOfMessage(())

# Parser states. Small ints, not bound methods: storing self._parse_x on self would make
# a reference cycle per connection.
_HEAD = 0  # waiting for / parsing a request head
_BODY = 1  # Content-Length body, self._remaining bytes to go
_CHUNK_SIZE = 2  # waiting for a chunk-size line
_CHUNK_DATA = 3  # inside chunk-data, self._remaining bytes to go
_CHUNK_END = 4  # waiting for the CRLF that closes chunk-data
_TRAILERS = 5  # waiting for the trailer section after the last chunk
_END = 6  # the body is complete: next event is EndOfMessage
_DONE = 7  # EndOfMessage given: PAUSED until start_next_request()
_ERROR = 8  # an HTTPError was raised: raise it again forever

# A chunk-size line, extensions and line end included, must fit in this many bytes.
# Extensions carry nothing we use; the bound keeps a client from making us buffer them.
MAX_CHUNK_LINE = 4096

# The framing of a chunked body (chunk-size lines with their extensions, the CRLFs, the
# trailer section) may take an eighth of max_body_size plus CHUNK_FRAMING_SLACK bytes;
# past that, 413. Without a bound, max_body_size would limit only the data while the wire
# carried any amount of extensions (CVE-2024-22019; RFC 9112 §7.1.1 asks for a limit).
# Ordinary clients send no extensions and chunks of kilobytes, far below it; even 2-byte
# chunks fit a body of an eighth of the limit, while a body that is mostly extensions
# is refused after a few of them.
CHUNK_FRAMING_SHARE = 8
CHUNK_FRAMING_SLACK = 16 * 1024

# Header names the parser itself acts on; every other field is only collected.
# (Connection says only whether the connection persists, apart from the others.)
_SPECIAL = frozenset(("host", "content-length", "transfer-encoding", "connection", "expect"))

# Lines seen before, as they came (CR included, LF not), with their parse.  Clients
# send the same lines request after request (a browser its User-Agent, Accept and
# Sec-Fetch-* lines; an API client, a balancer's health check or wrk all of its
# head), and a line found here needs no pattern run over it.  Per request
# (benchmarks/hotpath.py --callgrind): a browser's 13 fields 157k -> 107k
# instructions; wrk's hello, one field, 91k -> 80k (the pattern's start-up was most
# of that); the request line too, 80k -> 77k.  A parse is a pure function of its line,
# so an entry is never stale; the request line's length is checked against the
# limit of the parser that finds it.  Lines longer than KNOWN_LINE_MAX (long cookies
# or targets) are not kept, and a flood of new lines empties a full table rather
# than evicting one by one (the steady traffic fills it again).  At most about
# 2 x 2,000 x 700 B, 2.8 MB.
KNOWN_LINES_MAX = 2000
KNOWN_LINE_MAX = 256
# request line -> (method, target, path, query, minor version, length without CRLF);
# origin-form targets only
_KNOWN_REQUEST_LINES: dict[str, tuple[str, str, str, str, str, int]] = {}
# field line -> (lower-case name, value)
_KNOWN_FIELD_LINES: dict[str, tuple[str, str]] = {}


def _remember(table: dict, line: str, parse: tuple) -> None:
    if len(line) <= KNOWN_LINE_MAX:
        if len(table) >= KNOWN_LINES_MAX:
            table.clear()
        table[line] = parse


# The authority of an absolute-form target travels with the special fields under this
# name (not a token, so no field can have it), which keeps origin-form requests free of
# any check for it.
_TARGET_AUTHORITY = ":authority"


# Whole header sections seen before (from after the request line's LF to the end of
# the blank line) -> (their fields, the first Host's value or None, how many fields,
# the other fields the parser acts on or None, the Connection values joined or None).
# A client sends the same section request after request (wrk and most API clients
# always; a browser until its cookies or Referer change), and one lookup then stands
# for the loop over its lines (hotpath.py --callgrind: wrk's hello 84.1k -> 79.1k
# instructions, a browser's head 110.9k -> 90.4k).  What depends on more than the
# section's text is still done per request: the field count against the parser's
# limit, Host against its pattern, and Connection, Content-Length and the rest against
# the request line's version.  Bounded like the line tables: KNOWN_SECTIONS_MAX
# sections of up to KNOWN_SECTION_MAX characters, emptied when full, at most about
# 256 x 8 KB, 2 MB.
KNOWN_SECTIONS_MAX = 256
KNOWN_SECTION_MAX = 4096
_KNOWN_SECTIONS: dict[str, tuple] = {}


def _remember_section(section: str, parse: tuple) -> None:
    if len(_KNOWN_SECTIONS) >= KNOWN_SECTIONS_MAX:
        _KNOWN_SECTIONS.clear()
    _KNOWN_SECTIONS[section] = parse


def _keep_alive(connection: str, http11: bool) -> bool:
    """Whether the Connection field (all lines joined) keeps the connection open."""
    connection = connection.lower()
    if connection == "keep-alive":
        return True
    if connection == "close":
        return False
    tokens = _strip_list(connection)
    if "close" in tokens:
        return False
    return True if "keep-alive" in tokens else http11


def _strip_list(value: str) -> list[str]:
    """Elements of a comma-separated list (RFC 9110 §5.6.1), lower-cased, empties dropped."""
    return [e for e in (e.strip(" \t") for e in value.lower().split(",")) if e]


class RequestParser:
    """Turns the bytes of one connection into request events. See the module docstring.

    Limits bound what a head or chunk line may make it buffer. Bytes fed while PAUSED
    (pipelined requests) are kept whatever their amount: the caller stops reading when
    `buffered` is more than it wants to hold.
    """

    __slots__ = (
        "max_request_line",
        "max_header_bytes",
        "max_headers",
        "max_body_size",
        "_buf",
        "_pos",
        "_eof",
        "_state",
        "_error",
        "_skipped",
        "_scan",
        "_line_end",
        "_valid_host",
        "_request_class",
        "_remaining",
        "_body_seen",
        "_framing",
    )

    def __init__(
        self,
        *,
        max_request_line: int = 8192,
        max_header_bytes: int = 65536,
        max_headers: int = 100,
        max_body_size: int = 10 * 1024 * 1024,
        request_class: type[Request] = Request,
    ) -> None:
        self.max_request_line = max_request_line
        self.max_header_bytes = max_header_bytes
        self.max_headers = max_headers
        self.max_body_size = max_body_size
        # Unconsumed input is self._buf[self._pos:]. It is the caller's bytes object
        # itself while one feed covers it (no copy), and a bytearray only while pieces
        # must be joined (a head or chunk line split across feeds).
        self._buf: bytes | bytearray = b""
        self._pos = 0
        self._eof = False
        self._state = _HEAD
        self._error: HTTPError | None = None
        self._valid_host = ""
        # What Request events are made as: a subclass may add slots of its own
        # (the application's request), so that nobody copies the head.
        self._request_class = request_class
        self._reset_message()

    def _reset_message(self) -> None:
        self._skipped = 0  # empty lines skipped before this request line (bytes)
        self._scan = 0  # bytes past _pos already searched for the end of head / trailers
        self._line_end = -1  # LF of a request line checked while its head was partial
        self._remaining = 0  # body bytes left in the Content-Length body or current chunk
        # (_body_seen and _framing count a chunked body: set where one begins.)

    # --- input ------------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Append received bytes. Empty data, and data after EOF or an error, are ignored."""
        if not data or self._eof or self._state == _ERROR:
            return
        buf = self._buf
        pos = self._pos
        if pos >= len(buf):
            self._buf = data if type(data) is bytes else bytes(data)
            self._pos = 0
        elif type(buf) is bytes:
            joined = bytearray(buf[pos:])
            joined += data
            self._buf = joined
            self._pos = 0
        else:
            if pos:
                del buf[:pos]  # cheap: CPython moves the bytearray's start, not its bytes
                self._pos = 0
            buf += data

    def feed_eof(self) -> None:
        """The peer will send no more bytes (it closed or half-closed its side)."""
        self._eof = True

    @property
    def buffered(self) -> int:
        """Bytes received and not yet consumed by an event."""
        return len(self._buf) - self._pos

    def start_next_request(self) -> bool:
        """After EndOfMessage: allow the next (maybe already buffered) request to parse.
        A no-op in any other state, so a caller may call it defensively.

        True when nothing of another request has come (no byte, not even an empty
        line, no EOF) at a request boundary: the parser is then as good as new and
        may serve another connection."""
        state = self._state
        if state == _DONE:
            self._state = _HEAD
            self._reset_message()
        elif state != _HEAD or self._skipped:
            return False
        return not self._eof and self._pos >= len(self._buf)

    # --- output -----------------------------------------------------------------------

    def next_event(self) -> Event:
        """The next event, or NEED_DATA / PAUSED / CLOSED. Raises HTTPError for a bad request."""
        state = self._state
        try:
            if state == _HEAD:
                return self._next_head()
            if state == _BODY:
                return self._next_body()
            if state == _END:
                self._state = _DONE
                return _NO_TRAILERS
            if state == _DONE:
                return PAUSED
            if state == _ERROR:
                raise self._error.with_traceback(None)  # type: ignore[union-attr]
            return self._next_chunked()
        except HTTPError as exc:
            self._state = _ERROR
            self._error = exc
            raise

    def _need_data(self) -> _Sentinel:
        if self._eof:
            raise HTTPError(400, "incomplete request")
        return NEED_DATA

    def _consume(self, end: int) -> None:
        if end >= len(self._buf):
            self._buf = b""  # drop the reference: a big body piece is not kept alive
            self._pos = 0
        else:
            self._pos = end

    # --- head -------------------------------------------------------------------------

    def _next_head(self) -> Event:
        buf = self._buf
        pos = self._pos
        end = len(buf)
        if pos < end and buf[pos] in b"\r\n":
            # RFC 9112 §2.2: ignore at least one empty line before a request-line. They
            # count toward the request-line limit so that they cannot go on forever.
            m = EMPTY_LINES_B.match(buf, pos)
            if m is not None:
                self._skipped += m.end() - pos
                self._scan = 0
                self._consume(m.end())
                buf = self._buf
                pos = self._pos
                end = len(buf)
        if pos >= end:
            if self._skipped > self.max_request_line:
                raise HTTPError(414, "request line too long")
            return CLOSED if self._eof else NEED_DATA

        # The first LF after pos ends the request line, so the first empty line found
        # from pos is the end of the head even when there are no header fields.
        m = HEAD_END_B.search(buf, pos + self._scan)
        if m is None:
            return self._partial_head(buf, pos, end)
        head_end = m.end()
        # One decode for the whole head; the blank line is included because for the usual
        # single request per read that makes the slice the whole buffer, which is free.
        request = self._parse_head(buf[pos:head_end].decode("latin-1"))
        # What _consume does, written out: this runs for every request.
        if head_end < end:
            self._pos = head_end  # a pipelined request follows
        else:
            self._buf = b""
            self._pos = 0
        return request

    def _partial_head(self, buf: bytes | bytearray, pos: int, end: int) -> _Sentinel:
        """NEED_DATA for a head whose end has not arrived, once what is here is checked.

        The checks are those of a complete head, in the same order, so that the error
        does not depend on how the bytes were split.
        """
        max_line = self.max_request_line - self._skipped
        self._scan = max(end - pos - 2, 0)  # an end may straddle the next feed
        lf = self._line_end
        if lf < 0:
            lf = buf.find(b"\n", pos)
            if lf < 0:
                self._check_method_so_far(buf, pos, end)
                # Without its end, the line is at least this long (a trailing CR may be
                # the first half of its CRLF).
                if end - pos - (buf[end - 1] == 13) > max_line:
                    raise HTTPError(414, "request line too long")
                return self._need_data()
            line = buf[pos : lf + 1].decode("latin-1")
            m = REQUEST_LINE.match(line)
            if m is None:
                self._request_line_error(line, max_line)
            elif m.end(3) > max_line:
                raise HTTPError(414, "request line too long")
            else:
                self._target_parts(m[1], m[2])
            lf -= pos
            self._line_end = lf
        if end - pos - lf - 1 >= self.max_header_bytes:
            raise HTTPError(431, "request header section too large")
        return self._need_data()

    def _parse_head(self, text: str) -> Request:
        """Parse a complete head (request line to blank line); set the state for what follows."""
        line_end = text.find("\n")  # the request line's LF (a head has one)
        special = None  # what frames a body, Expect, a second Host, the target's authority
        known = _KNOWN_REQUEST_LINES.get(text[:line_end])
        if known is not None and known[5] <= self.max_request_line - self._skipped:
            method, target, path, query, minor, _ = known
        else:
            method, target, path, query, minor, authority = self._new_request_line(text)
            if authority is not None:
                special = [(_TARGET_AUTHORITY, authority)]
        # Header section: from after the request line up to and including the blank line.
        section = text[line_end + 1 :]
        if len(section) > self.max_header_bytes:
            raise HTTPError(431, "request header section too large")
        known = _KNOWN_SECTIONS.get(section)
        if known is not None and known[2] <= self.max_headers:
            fields, host, _, acted_on, connection = known
            headers = list(fields)  # (the request's own: an application may change it)
            if acted_on is not None:
                special = list(acted_on) if special is None else [*special, *acted_on]
        else:
            headers, host, special, connection = self._new_section(section, special)

        http11 = minor != "0"
        keep_alive = http11 if connection is None else _keep_alive(connection, http11)
        if special is None:  # no body, and nothing but Host (and Connection) to act on
            if host is None or host != self._valid_host:
                host = self._checked_host(host, http11)
            content_length, chunked, expect_continue = None, False, False
            self._state = _END
        else:
            host, content_length, chunked, expect_continue = self._special_fields(
                special, headers, host, http11
            )
        return self._request_class(
            method,
            target,
            path,
            query,
            "HTTP/1.1" if http11 else "HTTP/1.0",
            headers,
            keep_alive,
            content_length,
            chunked,
            expect_continue,
            host,
        )

    def _expect_body(self, chunked: bool, content_length: int | None) -> None:
        if chunked:
            self._state = _CHUNK_SIZE
            self._body_seen = 0  # decoded chunked body bytes so far
            self._framing = 0  # chunked framing bytes so far (see CHUNK_FRAMING_SHARE)
        else:
            self._state = _BODY
            self._remaining = content_length

    def _checked_host(self, host: str | None, http11: bool) -> str:
        """The request's host: `host` once it is checked, "" when HTTP/1.0 sent none."""
        if host is None:
            # RFC 9112 §3.2: an HTTP/1.1 request without Host is refused.
            if http11:
                raise HTTPError(400, "missing Host header")
            return ""
        # A keep-alive client sends the same Host every time: callers check only a Host
        # that differs from the last one that passed.
        if not HOST_RE.fullmatch(host):
            raise HTTPError(400, "invalid Host header")
        self._valid_host = host
        return host

    def _special_fields(
        self, special: list[tuple[str, str]], headers: list, host: str | None, http11: bool
    ) -> tuple[str, int | None, bool, bool]:
        """(host, content_length, chunked, expect_continue) from the fields the parser
        acts on but Connection (each repeated field's lines joined with commas); the
        parser is left in the state that reads the body, if there is one."""
        cl = te = expect = None
        for name, value in special:
            if name == "content-length":
                cl = value if cl is None else f"{cl},{value}"
            elif name == "transfer-encoding":
                te = value if te is None else f"{te},{value}"
            elif name == "expect":
                expect = value if expect is None else f"{expect},{value}"
            elif name == _TARGET_AUTHORITY:
                # RFC 9112 §3.2.2: the target's authority replaces Host, which must
                # still be valid; it comes first in special, before any second Host.
                if host is not None:
                    if not HOST_RE.fullmatch(host):
                        raise HTTPError(400, "invalid Host header")
                    headers[headers.index(("host", host))] = ("host", value)
                    host = value
                elif not http11:
                    host = value  # (HTTP/1.1 without Host is refused below)
            else:
                raise HTTPError(400, "more than one Host header")
        if host is not None and host != self._valid_host:
            self._checked_host(host, http11)
        content_length = None
        chunked = False
        if te is not None:
            chunked = self._transfer_encoding(te, cl, http11)
        elif cl is not None:
            content_length = self._content_length(cl)
        # RFC 9110 §10.1.1: an HTTP/1.0 client cannot handle 100 (Continue), so a 1.0
        # request's Expect is ignored altogether.
        expect_continue = False
        if expect is not None and http11:
            for e in _strip_list(expect):
                if e != "100-continue":
                    raise HTTPError(417, "unsupported expectation")
                expect_continue = True
        if host is None:
            host = self._checked_host(host, http11)  # "" for HTTP/1.0, else 400
        if chunked or content_length:
            self._expect_body(chunked, content_length)
        else:
            self._state = _END
        return host, content_length, chunked, expect_continue

    @staticmethod
    def _check_method_so_far(buf: bytes | bytearray, pos: int, end: int) -> None:
        """Refuse a request line whose first bytes cannot begin one, without waiting for
        its end: a TLS ClientHello sent to a plain port, or binary garbage, would hold the
        connection until header_timeout.  The method is checked before anything else in
        a complete line too (_request_line_error), so the error is the same however the
        bytes were split."""
        stop = METHOD_SO_FAR_B.match(buf, pos, end).end()
        if stop == end:
            return  # a method so far
        byte = buf[stop]
        if byte == 32:  # SP: the method is complete
            if stop == pos:
                raise HTTPError(400, "invalid method")
        elif byte != 13 or stop + 1 < end:  # (a last CR may begin the line's CRLF)
            raise HTTPError(400, "invalid method")

    @staticmethod
    def _request_line_error(text: str, max_line: int) -> None:
        """Raise the right error for a head (text starts with the request line, LF
        included) whose request line failed the fast pattern."""
        line = text[: text.index("\n")]
        if line.endswith("\r"):
            line = line[:-1]
        # The method first: its bytes come first, so _check_method_so_far finds the
        # same error in a line still arriving.
        if not METHOD_RE.fullmatch(line.partition(" ")[0]):
            raise HTTPError(400, "invalid method")
        if len(line) > max_line:
            raise HTTPError(414, "request line too long")
        parts = line.split(" ")
        if len(parts) != 3:
            raise HTTPError(400, "malformed request line")
        _, target, version = parts
        if not TARGET_CHARS_RE.fullmatch(target):
            raise HTTPError(400, "invalid request-target")
        if not HTTP_VERSION_RE.fullmatch(version):
            raise HTTPError(400, "malformed HTTP version")
        raise HTTPError(505, "HTTP version not supported")

    @staticmethod
    def _target_parts(method: str, target: str) -> tuple[str, str, str | None]:
        """(path, query, authority) of a request-target, checking its form against the
        method. authority is the host[:port] of an absolute-form target, else None."""
        if target[0] == "/":  # origin-form, RFC 9112 §3.2.1
            if method == "CONNECT":
                raise HTTPError(400, "CONNECT needs an authority-form target")
            path, _, query = target.partition("?")
            return path, query, None
        if target == "*":  # asterisk-form, §3.2.4
            if method != "OPTIONS":
                raise HTTPError(400, "asterisk-form target is only for OPTIONS")
            return "*", "", None
        if method == "CONNECT":  # authority-form, §3.2.3
            if not AUTHORITY_FORM_RE.fullmatch(target):
                raise HTTPError(400, "invalid authority-form target")
            return target, "", None
        m = ABSOLUTE_FORM_RE.fullmatch(target)  # absolute-form, §3.2.2
        if m is None:
            raise HTTPError(400, "invalid request-target")
        return m[2] or "/", m[3] or "", m[1]

    def _new_request_line(self, text: str) -> tuple[str, str, str, str, str, str | None]:
        """(method, target, path, query, minor version, authority) of a request line
        not in _KNOWN_REQUEST_LINES, which it joins if its target is in origin-form;
        the right error if it is invalid or too long."""
        m = REQUEST_LINE.match(text)
        if m is None or m.end(3) > self.max_request_line - self._skipped:
            # (group 3 ends the request line: too long is a 414 unless its method is bad)
            self._request_line_error(text, self.max_request_line - self._skipped)
        method, target, minor = m.groups()  # type: ignore[union-attr]
        if target[0] == "/" and method != "CONNECT":  # origin-form, RFC 9112 §3.2.1
            path, _, query = target.partition("?")
            parts = (method, target, path, query, minor, m.end(3))  # type: ignore[union-attr]
            _remember(_KNOWN_REQUEST_LINES, text[: m.end() - 1], parts)  # type: ignore[union-attr]
            return method, target, path, query, minor, None
        path, query, authority = self._target_parts(method, target)
        return method, target, path, query, minor, authority

    def _new_section(
        self, section: str, special: list | None
    ) -> tuple[list[tuple[str, str]], str | None, list | None, str | None]:
        """(fields, host, special, connection) of a header section not in
        _KNOWN_SECTIONS, which it joins if it is short.  `special`, the fields the
        parser acts on but the first Host and Connection, comes with the target's
        authority, if any; the section's own follow it.  `connection` is the
        Connection lines' values joined with commas, or None."""
        lines = section.split("\n")
        del lines[-2:]  # the blank line, and the nothing after its LF
        if len(lines) > self.max_headers:
            count = len(FIELD_LINE.findall("\n" + section))  # (fewer: some line is invalid)
            self._field_section_error(section, count)
        headers = []
        host = connection = None
        acted_on = None  # the fields of this section in `special`
        known = _KNOWN_FIELD_LINES
        for line in lines:
            field = known.get(line)
            if field is None:
                field = self._new_field_line(line, section)
            headers.append(field)
            name = field[0]
            if name in _SPECIAL:
                if name == "host" and host is None:
                    host = field[1]
                elif name == "connection":
                    connection = field[1] if connection is None else f"{connection},{field[1]}"
                elif acted_on is None:
                    acted_on = [field]
                else:
                    acted_on.append(field)
        if acted_on is not None:
            special = acted_on if special is None else special + acted_on
            acted_on = tuple(acted_on)
        if len(section) <= KNOWN_SECTION_MAX:
            entry = (tuple(headers), host, len(headers), acted_on, connection)
            _remember_section(section, entry)
        return headers, host, special, connection

    def _new_field_line(self, line: str, section: str) -> tuple[str, str]:
        """(lower-case name, value) of a line not in _KNOWN_FIELD_LINES, which it joins
        if it is short; the right 400 for the section if the line is invalid.  (Run per
        line, the pattern costs more than its share of one pass over a whole section:
        parsing a browser's head with every line new takes 26.7 instead of 13.9 µs
        before the tables, with a new cookie and Referer 13.6 as before, with none new
        7.0 instead of 13.0; tests/benchmarks/test_parser_throughput.py.  Matching a
        head's new lines in one pass over them joined took a loop over all its lines
        to find them: 25.2, 16.6 and 7.0 µs.)"""
        m = FIELD_LINE_TEXT.fullmatch(line)
        if m is None:
            self._field_error(section)
        name, value = m.groups()  # type: ignore[union-attr]
        field = (name.lower(), value)
        _remember(_KNOWN_FIELD_LINES, line, field)
        return field

    def _field_section_error(self, section: str, count: int) -> None:
        """Raise the right error for a header section (lines after the request line, blank
        line included) in which FIELD_LINE found `count` fields: either some line failed
        it or there are more fields than max_headers."""
        if count != section.count("\n") - 1:
            self._field_error(section)
        raise HTTPError(431, "too many header fields")

    def _field_error(self, block: str) -> None:
        """Raise the right 400 for a field block (lines after the request line, blank line
        included) in which some line failed FIELD_LINE."""
        for line in block.split("\n")[:-2]:
            if line.endswith("\r"):
                line = line[:-1]
            if line[:1] in (" ", "\t"):
                # RFC 9112 §5.2: obs-fold may be rejected; joining lines would let a
                # field mean different things to us and to a proxy in front of us.
                raise HTTPError(400, "obsolete line folding in header")
            name, colon, value = line.partition(":")
            if not colon:
                raise HTTPError(400, "header line without a colon")
            if name[-1:] in (" ", "\t"):
                # RFC 9112 §5.1: MUST reject whitespace between field name and colon.
                raise HTTPError(400, "whitespace before colon in header")
            if not TOKEN_RE.fullmatch(name):
                raise HTTPError(400, "invalid header name")
            if not FIELD_VALUE_CHARS_RE.fullmatch(value):
                raise HTTPError(400, "invalid character in header value")
        raise HTTPError(400, "malformed header line")

    def _transfer_encoding(self, te: str, cl: str | None, http11: bool) -> bool:
        """Check Transfer-Encoding (all lines joined); True when the body is chunked."""
        # RFC 9112 §6.1: TE with CL is how requests are smuggled past a proxy that reads
        # the other one; refuse it rather than pick one. HTTP/1.0 has no TE at all.
        if cl is not None:
            raise HTTPError(400, "both Transfer-Encoding and Content-Length")
        if not http11:
            raise HTTPError(400, "Transfer-Encoding in an HTTP/1.0 request")
        codings = _strip_list(te)
        if not codings:
            raise HTTPError(400, "empty Transfer-Encoding")
        chunked = codings.count("chunked")
        if chunked > 1:
            raise HTTPError(400, "chunked applied more than once")
        if chunked and codings[-1] != "chunked":
            # RFC 9112 §6.3: the length of the body cannot be determined.
            raise HTTPError(400, "chunked is not the final transfer coding")
        for coding in codings:
            if coding != "chunked":
                if not TRANSFER_CODING_RE.fullmatch(coding):
                    raise HTTPError(400, "invalid Transfer-Encoding")
                raise HTTPError(501, "unsupported transfer coding")
        return True

    def _content_length(self, cl: str) -> int:
        """The value of Content-Length (all lines joined)."""
        if "," in cl:
            # RFC 9110 §8.6: the same value repeated (in a list or on several lines) may
            # be taken as one; different values are an error.
            values = [v.strip(" \t") for v in cl.split(",")]
            cl = values[0]
            if any(v != cl for v in values):
                raise HTTPError(400, "conflicting Content-Length values")
        if not CONTENT_LENGTH_RE.fullmatch(cl):
            raise HTTPError(400, "invalid Content-Length")
        length = int(cl)
        if length > self.max_body_size:
            raise HTTPError(413, "request body too large")
        return length

    # --- body -------------------------------------------------------------------------

    def _take(self, n: int) -> Data:
        """The next n buffered bytes (n > 0, all available) as a Data event."""
        buf = self._buf
        pos = self._pos
        data = buf[pos : pos + n]  # the whole bytes object itself when it all goes
        if type(data) is not bytes:
            data = bytes(data)
        self._consume(pos + n)
        return Data(data)

    def _next_body(self) -> Event:
        available = len(self._buf) - self._pos
        if not available:
            return self._need_data()
        remaining = self._remaining
        n = remaining if remaining < available else available
        self._remaining = remaining - n
        if n == remaining:
            self._state = _END
        return self._take(n)

    def _framing_room(self) -> int:
        """Bytes of chunked framing the budget still allows (see CHUNK_FRAMING_SHARE)."""
        budget = self.max_body_size // CHUNK_FRAMING_SHARE + CHUNK_FRAMING_SLACK
        return budget - self._framing

    def _count_framing(self, n: int) -> None:
        """Count n more bytes of chunked framing; 413 if the budget does not allow them."""
        if n > self._framing_room():
            raise HTTPError(413, "too much chunked framing")
        self._framing += n

    def _trailer_section_error(self, room: int) -> HTTPError:
        """The error for a trailer section over min(max_header_bytes, room) bytes."""
        if self.max_header_bytes <= room:
            return HTTPError(431, "trailer section too large")
        return HTTPError(413, "too much chunked framing")

    def _next_chunked(self) -> Event:
        # One small method per part of the chunked grammar; the ones that only move
        # to the next part return None, and the loop goes on.
        while True:
            state = self._state
            if state == _CHUNK_DATA:
                return self._chunk_data()
            if state == _CHUNK_SIZE:
                event = self._chunk_size_line()
            elif state == _CHUNK_END:
                event = self._chunk_data_end()
            else:
                return self._trailer_section()
            if event is not None:
                return event

    def _chunk_data(self) -> Event:
        available = len(self._buf) - self._pos
        if available <= 0:
            return self._need_data()
        remaining = self._remaining
        n = min(remaining, available)
        self._remaining = remaining - n
        self._body_seen += n
        if n == remaining:
            self._state = _CHUNK_END
        return self._take(n)

    def _chunk_size_line(self) -> Event | None:
        buf = self._buf
        pos = self._pos
        # The line is judged once its LF is in: the per-line bound keeps what we hold
        # until then small, and the error cannot depend on the split.
        lf = buf.find(b"\n", pos, pos + MAX_CHUNK_LINE)
        if lf < 0:
            if len(buf) - pos >= MAX_CHUNK_LINE:
                raise HTTPError(400, "chunk-size line too long")
            return self._need_data()
        m = CHUNK_LINE_B.fullmatch(buf, pos, lf + 1)
        if m is None:
            if lf == pos or buf[lf - 1] != 13:
                raise HTTPError(400, "bare LF in chunked body")
            raise HTTPError(400, "malformed chunk-size line")
        digits = m[1]
        if len(digits) > 16:
            raise HTTPError(400, "chunk size too large")
        self._count_framing(lf + 1 - pos)
        size = int(digits, 16)
        self._consume(lf + 1)
        if size == 0:
            self._state = _TRAILERS
            self._scan = 0
            return None
        if self._body_seen + size > self.max_body_size:
            raise HTTPError(413, "request body too large")
        self._remaining = size
        self._state = _CHUNK_DATA
        return None

    def _chunk_data_end(self) -> Event | None:
        buf = self._buf
        pos = self._pos
        # chunk-data is followed by CRLF, never a bare LF (see CHUNK_LINE_B).
        if not buf.startswith(b"\r\n", pos):
            if len(buf) - pos < 2 and (pos >= len(buf) or buf[pos] == 13):
                return self._need_data()
            if buf[pos] == 10:
                raise HTTPError(400, "bare LF in chunked body")
            raise HTTPError(400, "missing CRLF after chunk data")
        self._count_framing(2)
        self._consume(pos + 2)
        self._state = _CHUNK_SIZE
        return None

    def _trailer_section(self) -> Event:
        """trailer-section CRLF, parsed with the header field rules."""
        buf = self._buf
        pos = self._pos
        end = len(buf)
        if buf.startswith(b"\r\n", pos):  # no trailer fields
            self._count_framing(2)
            self._consume(pos + 2)
            self._state = _DONE
            return _NO_TRAILERS
        if end - pos < 2 and (pos >= end or buf[pos] == 13):
            return self._need_data()
        # The section must fit max_header_bytes (else 431) and the framing budget (else
        # 413). Both bound the same growing count, so the smaller bound is met first and
        # names the error however the bytes are split; a bare LF counts only within that
        # bound (and within the section), for the same reason.
        room = self._framing_room()
        limit = min(self.max_header_bytes, room)
        m = HEAD_END_B.search(buf, pos + self._scan)
        stop = pos + limit if m is None or m.end() - pos > limit else m.end()
        if BARE_LF_B.search(buf, pos + self._scan, stop) is not None:
            raise HTTPError(400, "bare LF in chunked body")
        if m is None:
            if end - pos >= limit:
                raise self._trailer_section_error(room)
            self._scan = max(end - pos - 2, 0)
            return self._need_data()
        if m.end() - pos > limit:
            raise self._trailer_section_error(room)
        # A leading LF stands in for the end of the last-chunk line, which FIELD_LINE
        # needs in front of the first field.
        text = "\n" + buf[pos : m.end()].decode("latin-1")
        fields = FIELD_LINE.findall(text)
        if len(fields) != text.count("\n") - 2:
            self._field_error(text[1:])
        if len(fields) > self.max_headers:
            raise HTTPError(431, "too many trailer fields")
        self._framing += m.end() - pos
        self._consume(m.end())
        self._state = _DONE
        return EndOfMessage([(name.lower(), value) for name, value in fields])
