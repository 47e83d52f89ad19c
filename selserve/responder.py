"""The answer in flight on one connection: from a `Response` to bytes sent.

A `Responder` turns the application's `Response` into the exchange's bytes (the
head, with a body known in full) queued in the `WriteBuffer` for the end of the
loop's turn, adds a file range or pulls a streamed body through a `BodyProducer`
while the buffer has room, flushes the buffer to the transport, and owes the
body's close() until `_release_body()`.  It keeps what the access log asks of
an answer afterwards: its status and where it and its body began
(`body_sent()`).  An application failure before any byte of its answer left is
mended here: the buffer is cut back to where the answer began and a 500 goes
out instead.

Each step reports how far it got (`QUEUED`, `SENT`, `BLOCKED`, `BODY_WAITING`,
`SEND_FAILED`, `APP_FAILED`); what that means -- watching, timers, keep-alive,
closing -- is the connection's business.  A Responder never watches, arms a
timer, closes its transport or calls back into the connection, and its code
touches only its own slots and the exchange, buffer and transport it is given.

It is the base class of `Connection` rather than an object a connection holds:
one more object per connection cost 1.3% more instructions per `Connection:
close` request (`benchmarks/hotpath.py --callgrind`), and the access log reads
`status` and `body_sent()` from the connection without a hop.
"""

from __future__ import annotations

import logging

from .app import FileBody, Response, close_body, internal_error
from .buffer import WriteBuffer
from .http.exchange import ServerExchange
from .http.response import UNANNOUNCED, chunk
from .producer import ENDED, WAITING, BodyProducer, producer_for
from .transport import Transport

log = logging.getLogger("selserve")

# How far a step got (what each _send_* step, _pump() and _resume_body() return).
SENT = "sent"  # the whole answer is out, its body released
QUEUED = "queued"  # the whole answer is in the buffer: to be sent with this turn's others
BLOCKED = "blocked"  # bytes wait: the socket is full, or this turn's budget is spent
BODY_WAITING = "body-waiting"  # a threaded body has nothing yet: resume() follows
SEND_FAILED = "send-failed"  # the transport failed (`error` says how)
APP_FAILED = "app-failed"  # the application failed after part of its answer left

# A streamed body may put this many bytes in the buffer per turn before other
# connections get theirs (fairness against a fast client and an eager producer).
PRODUCE_BUDGET = 1024 * 1024


class Responder:
    """The answer in flight on one connection (see the module docstring)."""

    __slots__ = (
        "exchange",
        "out",
        "transport",
        "status",
        "response_mark",
        "body_mark",
        "streamed",
        "closeable",
        "producer",
        "producer_waiting",
        "error",
    )

    def __init__(self, exchange: ServerExchange, out: WriteBuffer, transport: Transport):
        self.exchange = exchange
        self.out = out
        self.transport = transport
        self.status = 0  # of the answer in progress (or the last one), for the access log
        self.response_mark = 0  # bytes_sent + pending when this answer began
        self.body_mark = 0  # ... and where its body begins (after the head)
        self.streamed = -1  # payload bytes of a chunked body so far (-1: not chunked)
        # The response body whose close() we owe the application (set whenever a
        # producer is: the connection asks this one slot whether to _release_body()).
        self.closeable = None
        self.producer: BodyProducer | None = None  # a streamed body, while it is pulled
        self.producer_waiting = False  # a threaded body has nothing yet; resume() follows
        self.error: BaseException | None = None  # why a send failed (SEND_FAILED): taken once

    def _send_answer(self, response: Response) -> str:
        """Answer the exchange's request with `response` and send what the socket takes."""
        exchange = self.exchange
        body = response.body
        if type(body) is bytes or isinstance(body, (bytearray, memoryview)):
            length = len(body)
            closeable = None
        elif body is None:  # no content; for HEAD, of a length only GET would tell
            length = UNANNOUNCED if exchange.request.method == "HEAD" else 0
            body = b""
            closeable = None
        elif isinstance(body, FileBody):
            length = body.count
            closeable = body
        else:
            length = None
            closeable = body
        try:
            data = exchange.respond(
                response.status,
                response.headers,
                length,
                body if closeable is None and length else b"",
                response.reason,
            )
        except (ValueError, TypeError) as exc:  # InvalidHeader is a ValueError
            log.error("invalid response for %s: %s", exchange.request.target, exc)
            if closeable is not None:
                close_body(closeable, log)
            return self._send_answer(internal_error())
        out = self.out
        self.status = response.status
        self.response_mark = mark = out.bytes_sent + out.size
        # (`data` holds the body too when it is bytes and is sent at all: not for HEAD)
        joined = length if closeable is None and length > 0 and exchange.body_follows else 0
        self.body_mark = mark + len(data) - joined
        self.streamed = -1
        self.closeable = closeable
        out.append(data)  # (the whole answer, when its body is bytes)
        if closeable is not None and exchange.body_follows:
            if length is not None:
                out.append_file(body.fileobj, body.offset, body.count)
            else:
                return self._stream(body)
        # Sent at the end of the loop's turn with the turn's other answers (see
        # EventLoop.write_soon); most fit in the socket buffer at once, and then
        # no writability watch is involved.
        return QUEUED

    def _stream(self, body) -> str:
        try:
            self.producer = producer_for(iter(body), self.exchange)
        except TypeError as exc:
            log.error("response body of %s is not iterable: %s", self.exchange.request.target, exc)
            return self._answer_failed()
        if self.exchange.writer.frame is chunk:
            self.streamed = 0  # (its framing is not body: count the payload)
        return QUEUED  # (the producer is pulled at the end of the turn)

    def _send_refusal(self, status: int, data: bytes) -> str:
        """Send the exchange's error answer (`data`, head and body) to a refused request."""
        out = self.out
        self.status = status
        self.response_mark = out.bytes_sent + out.size
        self.body_mark = self.response_mark + data.find(b"\r\n\r\n") + 4
        out.append(data)
        return self._pump()

    def _resume_body(self) -> str:
        """A threaded body has more: pull it."""
        self.producer_waiting = False
        return self._pump()

    def _pump(self) -> str:
        """Fill the buffer from the producer (at or below low water) and flush it."""
        out = self.out
        produced = 0
        while True:
            producer = self.producer
            if producer is not None and out.size <= out.low_water and not self.producer_waiting:
                added = producer.fill(out)
                if added >= 0:
                    produced += added
                elif added == ENDED:
                    self._end_of_body()
                elif added == WAITING:
                    self.producer_waiting = True
                else:
                    log.error(
                        "application error while streaming %s",
                        self.exchange.request.target,
                        exc_info=producer.failure,
                    )
                    return self._answer_failed()
            try:
                drained = out.flush(self.transport)
            except (OSError, EOFError) as exc:
                self.error = exc
                return SEND_FAILED
            if not drained:
                return BLOCKED
            if self.producer is None:
                if self.closeable is not None:
                    self._close_body()  # a file's last range is out
                return SENT
            if self.producer_waiting:
                return BODY_WAITING
            if produced >= PRODUCE_BUDGET:
                # The socket would take more, but others deserve a turn; being
                # writable, we are called again on the next turn.
                return BLOCKED

    def _end_of_body(self) -> None:
        problem = self.exchange.writer.problem
        if problem is not None:
            log.error("%s: %s", self.exchange.request.target, problem)
        self._release_body()

    def _answer_failed(self) -> str:
        """The body failed: answer 500 if none of this answer left yet, else give up."""
        self.producer = None
        self._close_body()
        out = self.out
        if out.bytes_sent > self.response_mark:
            return APP_FAILED  # the client has part of an answer: only closing ends it
        out.truncate(self.response_mark - out.bytes_sent)
        self.exchange.abandon()
        return self._send_answer(internal_error())

    def body_sent(self) -> int:
        """Body bytes of the answer in progress that left (CLF's %b: no head, and for a
        complete chunked body no framing either; an answer cut short counts its framing)."""
        sent = max(0, self.out.bytes_sent - self.body_mark)
        return sent if self.streamed < 0 else min(sent, self.streamed)

    def _release_body(self) -> None:
        """Stop pulling the body and close() it, once, as PEP 3333 and FileBody require:
        when it ends, and on every way out of the connection (body_sent() then counts
        what was pulled)."""
        producer = self.producer
        if producer is not None:
            self.producer = None
            if self.streamed >= 0:
                self.streamed = producer.total
        closeable = self.closeable
        if closeable is not None:  # (inline: not a second call on every close)
            self.closeable = None
            close_body(closeable, log)

    def _close_body(self) -> None:
        """Call close() on the response body, once."""
        closeable = self.closeable
        if closeable is not None:
            self.closeable = None
            close_body(closeable, log)
