"""One connection's HTTP/1.1 exchanges, server side, sans I/O.

`ServerExchange` turns what a client sends into requests, and what the server
answers into bytes, and makes every decision HTTP makes in between: which
request is answered next (pipelined ones wait in the parser, answered one at a
time and in order), when `100 Continue` goes out, where a request body goes
(`RequestBody`: memory, then a temporary file it is handed), how a response is
framed (a `Content-Length`, `chunked` or close-delimited writer), whether the
connection stays open afterwards, and which error answers a request we refuse.

It is driven by a connection, or by a test feeding bytes: it never touches a
socket, a clock, a thread or a log, so a second driver (an asyncio protocol
for ASGI apps, say) could use it unchanged.  Its states and the events that
move them are one table, `TRANSITIONS`, as in h11's `_state.py`: a driver that
asks for something the table does not allow gets `ExchangeError`, a bug in the
driver, never a silent wrong answer.

    receive(data) / receive_eof()     bytes in
    next_event()                      NEED_DATA, HEAD, READY, REFUSED or CLOSED
    read_body()                       after HEAD: read it (bytes of 100 Continue to send, maybe)
    respond(status, headers, ...)     bytes of the head (and a body known in full)
    writer.frame(piece) / finish_body()   bytes of a streamed body, framed
    response_sent()                   the answer is out: keep the connection (idle), or not
    wake()                            bytes come: take a parser (idle, it lent its own out)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import BinaryIO

from .body import RequestBody
from .errors import HTTPError
from .parser import CLOSED, NEED_DATA, Data, EndOfMessage, Request, RequestParser, _Sentinel
from .response import CONTINUE, LAST_CHUNK, build_head, chunk, error_response

__all__ = [
    "CLOSED",
    "HEAD",
    "NEED_DATA",
    "READY",
    "REFUSED",
    "TRANSITIONS",
    "ExchangeError",
    "ExchangeSettings",
    "ServerExchange",
]


# What next_event() returns besides the parser's NEED_DATA and CLOSED.
HEAD = _Sentinel("HEAD")  # `request` has a body coming: answer it now, or read_body()
READY = _Sentinel("READY")  # `request` is complete, body and all: respond() to it
REFUSED = _Sentinel("REFUSED")  # send `refusal` (an error answer), then response_sent()

# States.
IDLE = "idle"  # waiting for a request (its head may be partly here)
HEAD_ONLY = "head"  # a head whose body has not been read
BODY = "body"  # reading a request body
APP = "app"  # the request is complete: its answer is awaited
SENDING = "sending"  # an answer is going out
CLOSED_STATE = "closed"  # nothing more on this connection

# Events, and the one table that says where each leads.
_HEAD, _REQUEST, _READ_BODY, _RESPOND, _REFUSE = "head", "request", "read-body", "respond", "refuse"
_ABANDON, _KEEP_ALIVE, _CLOSE, _EOF = "abandon", "keep-alive", "close", "eof"
TRANSITIONS: dict[tuple[str, str], str] = {
    (IDLE, _HEAD): HEAD_ONLY,  # a request with a body has its head here
    (IDLE, _REQUEST): APP,  # a request without a body is complete
    (IDLE, _REFUSE): SENDING,  # a request we cannot accept: an error answer
    (IDLE, _EOF): CLOSED_STATE,  # the client closed between requests
    (HEAD_ONLY, _RESPOND): SENDING,  # answered from the head: the body is never read
    (HEAD_ONLY, _READ_BODY): BODY,
    (BODY, _REQUEST): APP,  # the body is complete
    (BODY, _REFUSE): SENDING,  # a body we cannot accept or store
    (APP, _RESPOND): SENDING,
    (SENDING, _ABANDON): APP,  # the answer failed before any byte of it left: answer again
    (SENDING, _KEEP_ALIVE): IDLE,  # the answer is out; the next request may come
    (SENDING, _CLOSE): CLOSED_STATE,  # the answer is out; the connection ends
}
# The moves every request makes, read from the table once (the hot path then costs
# an assignment, not a lookup); every other move looks the table up (`_move`).
_AFTER_BODILESS_HEAD = TRANSITIONS[IDLE, _REQUEST]
_AFTER_HEAD = TRANSITIONS[IDLE, _HEAD]
_AFTER_BODY = TRANSITIONS[BODY, _REQUEST]
_AFTER_RESPOND = TRANSITIONS[APP, _RESPOND]
_AFTER_KEEP_ALIVE = TRANSITIONS[SENDING, _KEEP_ALIVE]
_AFTER_CLOSE = TRANSITIONS[SENDING, _CLOSE]


class ExchangeError(RuntimeError):
    """The driver asked for something the state does not allow (a bug in the driver)."""


class ExchangeSettings:
    """What every exchange of a server shares: limits, the body spill, the lines
    every answer carries (the server refreshes `fixed` and `date` once a second and
    clears `keep_alive` when it begins to stop), and the parsers idle exchanges lent
    out (`ServerExchange._lend_parser`)."""

    __slots__ = (
        "parser_limits",
        "spare_parsers",
        "spill_threshold",
        "open_spill_file",
        "fixed",
        "date",
        "keep_alive",
    )

    def __init__(
        self,
        *,
        max_request_line: int = 8192,
        max_header_bytes: int = 65536,
        max_headers: int = 100,
        max_body_size: int = 1024 * 1024 * 1024,
        spill_threshold: int = 1024 * 1024,
        open_spill_file: Callable[[], BinaryIO],
        fixed: bytes = b"",
        date: bytes = b"",
    ) -> None:
        self.parser_limits = {
            "max_request_line": max_request_line,
            "max_header_bytes": max_header_bytes,
            "max_headers": max_headers,
            "max_body_size": max_body_size,
        }
        self.spare_parsers: list[RequestParser] = []  # at most SPARE_PARSERS_MAX
        self.spill_threshold = spill_threshold
        self.open_spill_file = open_spill_file
        self.fixed = fixed  # pre-encoded Date and Server lines
        self.date = date  # the Date line alone (for an app that names its own Server)
        self.keep_alive = True  # False: every answer closes its connection (stopping)


# Parsers kept for exchanges that wake: as many as were busy at once, recently, is
# enough; the rest of a burst's are freed.
SPARE_PARSERS_MAX = 256


# -- body writers: one per framing, each enforcing it (h11's _writers.py) -------------
#
# A writer's `frame(piece)` gives the bytes of one piece of a streamed body (never
# given an empty one: the driver skips those), `finish()` the bytes that end the
# body.  `limited` writers stop at a length: the driver asks `done` after each piece.
# `frame` is a plain function where it can be (chunked, close-delimited): it runs for
# every piece, and an instance's __call__ would cost a slot lookup each time.


def _unframed(piece: bytes) -> bytes:
    return piece


class ChunkedWriter:
    """Frames each piece as a chunk; `finish()` is the last-chunk."""

    __slots__ = ()
    frame = staticmethod(chunk)
    limited = False
    done = False  # a chunked body ends only when the producer does
    problem = None

    def finish(self) -> bytes:
        return LAST_CHUNK


class ContentLengthWriter:
    """Passes pieces through up to the announced length.  A body longer than that is
    cut (`done` once it is reached), a shorter one noted; either way only closing the
    connection can tell the client, and `problem` says what happened."""

    __slots__ = ("remaining", "problem")
    limited = True

    def __init__(self, length: int) -> None:
        self.remaining = length
        self.problem: str | None = None

    @property
    def done(self) -> bool:
        return self.remaining == 0

    def frame(self, piece: bytes) -> bytes:
        if len(piece) > self.remaining:
            self.problem = "body longer than its Content-Length"
            piece = piece[: self.remaining]
        self.remaining -= len(piece)
        return piece

    def finish(self) -> bytes:
        if self.remaining:
            self.problem = "body shorter than its Content-Length"
        return b""


class CloseDelimitedWriter:
    """HTTP/1.0 without a length: the body ends when the connection does."""

    __slots__ = ()
    frame = staticmethod(_unframed)
    limited = False
    done = False
    problem = None

    def finish(self) -> bytes:
        return b""


_CLOSE_DELIMITED = CloseDelimitedWriter()
_CHUNKED = ChunkedWriter()


# -- the exchange -------------------------------------------------------------------


class ServerExchange:
    """The HTTP/1.1 server side of one connection (see the module docstring)."""

    __slots__ = (
        "state",
        "request",
        "parser",
        "settings",
        "peer",
        "local",
        "body",
        "keep_alive",
        "linger",
        "body_follows",
        "writer",
        "refusal",
        "refusal_status",
        "store_error",
        "_request_class",
    )

    def __init__(
        self,
        settings: ExchangeSettings,
        *,
        request_class: type[Request],
        peer=None,
        local=None,
    ) -> None:
        # `request_class`: what heads are parsed as, a subclass of the parser's Request
        # with `arrived(body, peer, local)` (selserve.app.Request), so that the request
        # an application gets is the parsed head itself, never a copy.
        self.settings = settings
        self.parser: RequestParser | None = None  # taken when the first bytes come (wake)
        self._request_class = request_class
        self.peer = peer
        self.local = local
        self.state = IDLE
        self.request: Request | None = None  # the request being answered
        self.body: RequestBody | None = None  # made for the first request with a body
        self.linger = False  # the client may still be sending what we will not read
        # Set by respond() for each answer (a connection that never answers never reads
        # them): keep_alive (of the answer being sent), body_follows (its body goes out
        # after its head), writer (frames a streamed body); and by a refusal: refusal
        # (the error answer to send after REFUSED), refusal_status, store_error (why a
        # body could not be stored, or None).

    def __repr__(self) -> str:
        return f"<ServerExchange {self.state}>"

    def use_request_class(self, request_class: type[Request]) -> None:
        """Parse the heads from now on as `request_class` (a TLS connection's, once its
        handshake tells whether it is https and whose client certificate it has)."""
        self._request_class = request_class
        if self.parser is not None:
            self.parser._request_class = request_class

    def wake(self) -> None:
        """Bytes of a request come: take a parser (a spare, or a new one).  (An idle
        exchange lent its own out: see _lend_parser.)"""
        if self.parser is None:
            spares = self.settings.spare_parsers
            if spares:
                parser = self.parser = spares.pop()
                parser._request_class = self._request_class
            else:
                self.parser = RequestParser(
                    **self.settings.parser_limits, request_class=self._request_class
                )

    # -- bytes in ---------------------------------------------------------------

    def receive(self, data: bytes) -> None:
        """Bytes from the client.  (A driver on a hot path may call `parser.feed(data)`
        itself, as the connection does: this frame costs more than the parser's work on
        a small request, and a bound method kept per exchange would cost 64 bytes for
        every idle connection; it must wake() the exchange first.)"""
        self.wake()
        self.parser.feed(data)

    def receive_eof(self) -> None:
        """The client will send no more (it closed or half-closed its side)."""
        self.wake()
        self.parser.feed_eof()

    def next_event(self):
        """What the bytes so far amount to.  Between requests and while a body
        arrives: NEED_DATA (feed more), HEAD (`request` has a body coming), READY
        (`request` is complete), REFUSED (send `refusal`) or CLOSED (the client left
        at a request boundary).  In any other state: NEED_DATA."""
        state = self.state
        if state is not IDLE and state is not BODY:  # (IDLE: one comparison)
            return NEED_DATA
        parser = self.parser
        if parser is None:  # lent out while idle: nothing came since
            return NEED_DATA
        try:
            while True:
                event = parser.next_event()
                kind = type(event)
                if kind is self._request_class:  # a request head
                    self.request = event
                    event.arrived(b"", self.peer, self.local)  # the body is not here yet
                    if event.chunked or event.content_length:
                        self.state = _AFTER_HEAD
                        return HEAD
                    parser.next_event()  # its EndOfMessage: without a body, the head is all
                    self.state = _AFTER_BODILESS_HEAD
                    return READY
                if kind is Data:
                    self.body.append(event.data)
                elif event is NEED_DATA:
                    return NEED_DATA
                elif kind is EndOfMessage:
                    self.request.arrived(self.body.take(), self.peer, self.local)
                    self.state = _AFTER_BODY
                    return READY
                else:  # CLOSED (only ever between requests)
                    self._move(_EOF)
                    return CLOSED
        except HTTPError as exc:
            return self._refuse(exc.status, exc.detail)
        except OSError as exc:  # the body's temporary file (a full disk)
            return self._refuse(503, "request body could not be stored", exc)

    @property
    def head_started(self) -> bool:
        """Bytes of the next request have arrived, and it is not complete."""
        return self.state is IDLE and self.parser is not None and self.parser.buffered > 0

    def read_body(self) -> bytes:
        """After HEAD: read the body.  Returns the interim answer to send first
        (`100 Continue` when the client waits for it, RFC 9110 §10.1.1), or b""."""
        self._move(_READ_BODY)
        if self.body is None:
            self.body = RequestBody(self.settings.spill_threshold, self.settings.open_spill_file)
        return CONTINUE if self.request.expect_continue else b""

    def refuse(self, status: int, detail: str) -> bytes:
        """Give up on the request in progress (the driver's own reasons: a head too
        slow, 408): the bytes of the error answer, after which the connection closes."""
        self._refuse(status, detail)
        return self.refusal

    def _refuse(self, status: int, detail: str, store_error: OSError | None = None):
        if self.state is IDLE:
            self.request = None  # its head never parsed: nothing to log or answer to
        self._move(_REFUSE)
        if self.body is not None:
            self.body.discard()
        self.refusal = error_response(status, detail, self.settings.fixed)
        self.refusal_status = status
        self.store_error = store_error
        self.keep_alive = False
        self.linger = True  # the client may be sending still: do not reset it
        self.body_follows = False
        return REFUSED

    # -- bytes out --------------------------------------------------------------

    def respond(
        self,
        status: int,
        headers,
        body_length: int | None,
        body: bytes = b"",
        reason: str | None = None,
    ) -> bytes:
        """The bytes of an answer's head, with `body` when it is known in full.

        `body_length` is the body's length when it is known (bytes, a file), None
        when it is streamed.  Afterwards `body_follows` says whether the answer
        carries a body at all (not for HEAD, 204 or 304): then a file or stream not
        given here must follow, a stream's pieces through `writer.frame`.  Raises
        `InvalidHeader` (a ValueError) for what an application may not answer; the
        driver then answers again.
        """
        state = self.state
        request = self.request
        settings = self.settings
        if state is not APP:
            if state is not HEAD_ONLY:
                raise ExchangeError(f"cannot respond in state {state}")
            request.keep_alive = False  # its body is on the way: close once answered
        data, content_length, chunked, keep_alive, has_body = build_head(
            status,
            headers,
            method=request.method,
            http11=request.version == "HTTP/1.1",
            keep_alive=request.keep_alive and settings.keep_alive,
            body_length=body_length,
            fixed=settings.fixed,
            date=settings.date,
            body=body,
            reason=reason,
        )
        if state is APP:
            self.state = _AFTER_RESPOND
        else:  # from the head
            self.state = TRANSITIONS[HEAD_ONLY, _RESPOND]
            self.linger = True  # the unread body: read and dropped while closing
        self.keep_alive = keep_alive
        self.body_follows = has_body
        if body_length is None:
            if chunked:
                self.writer = _CHUNKED
            elif content_length is not None:
                self.writer = ContentLengthWriter(content_length)
            else:
                self.writer = _CLOSE_DELIMITED
        return data

    def finish_body(self) -> bytes:
        """The streamed body has ended (or reached its Content-Length): the bytes
        that close its framing.  A body that broke its Content-Length ends the
        connection (`writer.problem` says how)."""
        writer = self.writer
        data = writer.finish()
        if writer.problem is not None:
            self.keep_alive = False
        return data

    def abandon(self) -> None:
        """The answer failed before any byte of it left: respond() again (a 500)."""
        self._move(_ABANDON)

    def response_sent(self) -> bool:
        """The whole answer is out.  True: the connection stays open for the next
        request (maybe already buffered: call next_event()), as its head told the
        client -- even if the server has begun to stop since (it then closes idle
        connections its own way).  False: close it, lingering first if `linger` (or
        unread input) says the client may still send."""
        if self.state is not SENDING:
            self._move(_KEEP_ALIVE)  # not allowed: raises ExchangeError
        if self.body is not None:
            self.body.discard()
        self.request = None
        if self.keep_alive:
            self.state = _AFTER_KEEP_ALIVE
            if self.parser.start_next_request():  # nothing of the next request yet
                self._lend_parser()
            return True
        self.state = _AFTER_CLOSE
        if self.parser.buffered:
            self.linger = True  # pipelined requests we will not answer
        return False

    def close(self) -> None:
        """The connection ends, whatever state it is in: let go of the body."""
        self.state = CLOSED_STATE
        if self.body is not None:
            self.body.discard()
        # After a last answer its parser can serve another connection: a new connection
        # per request (`Connection: close`) then makes no parser.
        if self.parser is not None and self.parser.start_next_request():
            self._lend_parser()

    def _lend_parser(self) -> None:
        """Idle, or closed, with nothing of another request here: the parser goes to
        the spares every exchange of these settings shares, so that an idle
        connection holds none (168 B each); wake() takes one back."""
        spares = self.settings.spare_parsers
        if len(spares) < SPARE_PARSERS_MAX:
            spares.append(self.parser)
        self.parser = None

    # -- the table ----------------------------------------------------------------

    def _move(self, event: str) -> None:
        try:
            self.state = TRANSITIONS[self.state, event]
        except KeyError:
            raise ExchangeError(f"cannot {event} in state {self.state}") from None
