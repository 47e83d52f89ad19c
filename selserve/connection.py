"""One client connection: bytes between a transport and its HTTP exchange.

A `Connection` moves bytes and nothing else.  What they mean is its
`ServerExchange`'s business (sans I/O, `http/exchange.py`); who answers a
request is `Dispatch`'s (`dispatch.py`).  The connection reads from its
transport into the exchange, hands each request to dispatch, writes answers
through its bounded `WriteBuffer`, pulls a streamed body only while the buffer
has room, keeps the one record of what the loop watches for it, and runs one
timer for whichever deadline applies.  It sees its server only through a
narrow `ConnectionContext` (context.py), and a streamed body through its
`BodyProducer` (producer.py).

Every way a connection ends goes through `close(reason)`: unwatch, close the
transport, cancel the timer, release the bodies, free the slot (the last in a
`finally`: a connection that never gives its slot back would, at the cap,
stop the whole server).  A failing send or recv is ordinary client behaviour
(EPIPE, ECONNRESET, ...): counted under its reason and logged at debug, never
as a traceback.
"""

from __future__ import annotations

import logging
import socket

from . import proxy_protocol
from .app import FileBody, Response, close_body, internal_error
from .backends import READABLE, WRITABLE
from .buffer import WriteBuffer
from .context import ConnectionContext
from .http.exchange import (
    APP,
    BODY,
    CLOSED,
    HEAD,
    IDLE,
    NEED_DATA,
    READY,
    REFUSED,
    SENDING,
    ServerExchange,
)
from .http.response import UNANNOUNCED, chunk
from .producer import ENDED, WAITING, BodyProducer
from .transport import Transport

log = logging.getLogger("selserve")

# Timeout reasons (also close reasons).
HEADER_TIMEOUT = "header-timeout"
BODY_TIMEOUT = "body-timeout"
WRITE_TIMEOUT = "write-timeout"
KEEPALIVE_TIMEOUT = "keepalive-timeout"

# Close reasons: shared by the counters and the debug log.
PEER_CLOSED = "peer-closed"
RECV_ERROR = "recv-error"
SEND_ERROR = "send-error"
DONE = "done"
APP_ERROR = "app-error"
INTERNAL_ERROR = "internal-error"
SHUTDOWN = "shutdown"
RECLAIMED = "reclaimed"  # idle, closed to make room for a new client at the cap

# Bytes asked of recv() at once.
READ_SIZE = 64 * 1024
# A streamed body may put this many bytes in the buffer per turn before other
# connections get theirs (fairness against a fast client and an eager producer).
PRODUCE_BUDGET = 1024 * 1024
# After an answer that leaves input unread (a refusal, an answer from the head),
# how long we keep reading and dropping it so that closing does not reset the
# connection before our answer arrives.
LINGER_TIMEOUT = 2.0
LINGER_READS = 16

# What the connection is doing with its transport (PREAMBLE: --proxy-protocol, the
# balancer's PROXY header comes before any HTTP).
OPEN, LINGERING, CLOSED_IO, PREAMBLE = "open", "lingering", "closed", "preamble"
PROXY_REFUSED = "proxy-header-refused"  # close reasons: no valid PROXY header, or
PROXY_TIMEOUT = "proxy-header-timeout"  # none within --header-timeout


class Connection:
    """One client (see the module docstring); also dispatch's `Handle` for it."""

    __slots__ = (
        "context",
        "loop",
        "transport",
        "fd",
        "peer",
        "local",
        "exchange",
        "out",
        "io_state",
        "watching",
        "timer",
        "timeout_reason",
        "producer",
        "producer_waiting",
        "closeable",
        "response_mark",
        "body_mark",
        "streamed",
        "started",
        "status",
        "bytes_in",
        "preamble",
    )

    def __init__(
        self,
        context: ConnectionContext,
        transport: Transport,
        peer,
        local=None,
        proxy_protocol: bool = False,
    ):
        loop = context.loop
        self.context = context
        self.loop = loop
        self.transport = transport
        self.fd = transport.fileno()
        self.peer = peer
        self.local = local
        self.exchange = ServerExchange(
            context.settings, request_class=context.request_class, peer=peer, local=local
        )
        self.out = WriteBuffer(context.high_water, context.low_water)
        self.io_state = PREAMBLE if proxy_protocol else OPEN
        self.preamble = b""  # the PROXY header so far
        self.producer: BodyProducer | None = None  # a streamed body, while it is pulled
        self.producer_waiting = False  # a threaded body has nothing yet; resume() follows
        self.closeable = None  # the response body whose close() we owe the application
        self.response_mark = 0  # bytes_sent + pending when this response began
        self.body_mark = 0  # ... and where its body begins (after the head)
        self.streamed = -1  # payload bytes of a chunked body so far (-1: not chunked)
        self.started = 0.0  # loop time the request in progress arrived
        self.status = 0  # of the response in progress, for the access log
        self.bytes_in = 0
        self.timeout_reason = HEADER_TIMEOUT  # counted from accept for a new connection
        self.timer = loop.call_later(context.header_timeout, self.on_timeout)
        self.watching = READABLE  # the one record of what the loop watches for us
        loop.watch(self.fd, self, READABLE)
        context.idle[self] = loop.now  # silent so far: reclaimable at the cap

    def __repr__(self) -> str:
        return f"<Connection fd={self.fd} {self.peer!r} {self.exchange.state}>"

    # -- readiness ----------------------------------------------------------------

    def on_readable(self) -> None:
        if self.io_state is not OPEN:
            if self.io_state is PREAMBLE:
                self._read_preamble()
            else:
                self._discard_input()
            return
        try:
            data = self.transport.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.close(RECV_ERROR, exc)
            return
        exchange = self.exchange
        if data:
            self.bytes_in += len(data)
            if exchange.state is IDLE:
                self.context.idle.pop(self, None)  # a request is arriving
            exchange.receive(data)
        else:
            exchange.receive_eof()
        self._advance()

    def on_writable(self) -> None:
        if self.exchange.state is SENDING:
            self._pump()
            if self.exchange.state is IDLE and self.io_state is OPEN:
                self._advance()  # the answer is out: serve pipelined requests
            return
        # Only an interim answer (100 Continue) was left over.
        try:
            drained = self.out.flush(self.transport)
        except OSError as exc:
            self.close(SEND_ERROR, exc)
            return
        if drained:
            self._watch(READABLE)

    def on_timeout(self) -> None:
        reason = self.timeout_reason
        if self.io_state is PREAMBLE:
            reason = PROXY_TIMEOUT
        elif reason is HEADER_TIMEOUT and self.exchange.head_started:
            self._try_send_now(self.exchange.refuse(408, "request head too slow"))
        self.close(reason)

    def on_error(self, exc: BaseException) -> None:
        self.close(INTERNAL_ERROR, exc)

    # -- requests -----------------------------------------------------------------

    def _advance(self) -> None:
        """Turn buffered bytes into requests and answers until we must wait."""
        exchange = self.exchange
        context = self.context
        while True:
            event = exchange.next_event()
            if event is READY:
                self.started = self.loop.now
                context.requests += 1
                if context.requests == context.max_requests:
                    context.served_enough()
                response = context.dispatch.dispatch(exchange.request, self)
                if response is None:  # a worker will answer
                    self._wait_for_app()
                    return
                self._send_answer(response)
                if exchange.state is not IDLE:
                    return  # the answer is still going out, or the connection is closing
                if self.timeout_reason is KEEPALIVE_TIMEOUT:
                    return  # answered, and nothing of another request is here (see below)
            elif event is NEED_DATA:
                if exchange.state is BODY:
                    self._arm(context.body_timeout, BODY_TIMEOUT)  # progress
                elif self.timeout_reason is not HEADER_TIMEOUT and exchange.parser.buffered:
                    # A head has begun: it has header_timeout from its first byte (from
                    # accept for a new connection), not extended by each trickled byte.
                    self._arm(context.header_timeout, HEADER_TIMEOUT)
                return
            elif event is HEAD:
                self._head_arrived()
            elif event is REFUSED:
                self._refused()
                return
            elif event is CLOSED:
                self.close(PEER_CLOSED)
                return

    def _head_arrived(self) -> None:
        """A request with a body: answer it from its head if dispatch can (its body is
        then never stored), else read the body."""
        context = self.context
        exchange = self.exchange
        self.started = self.loop.now
        answer = context.dispatch.answer_from_head(exchange.request)
        if answer is not None:
            context.requests += 1
            self._send_answer(answer)
            return
        interim = exchange.read_body()
        if interim:
            self._try_send_now(interim)

    def _wait_for_app(self) -> None:
        # The app runs on a worker: until it answers, neither read (pipelined input
        # would pile up) nor time out (how long an app runs is the app's business).
        self._watch(0)
        self.timer.cancel()

    def _refused(self) -> None:
        exchange = self.exchange
        context = self.context
        context.counters[f"http-{exchange.refusal_status}"] += 1
        if exchange.store_error is not None:
            context.body_store_failed(exchange.store_error)
            exchange.store_error = None
        if context.debug:
            log.debug("%r: refused with %d", self, exchange.refusal_status)
        self.status = exchange.refusal_status
        self.started = self.loop.now
        self.response_mark = self.out.bytes_sent + self.out.size
        self.body_mark = self.response_mark + exchange.refusal.find(b"\r\n\r\n") + 4
        self.out.append(exchange.refusal)
        self._pump()

    # -- answers (dispatch's Handle) -----------------------------------------------

    def respond(self, response: Response) -> None:
        """A worker's answer to the request being answered (in the loop's thread)."""
        if self.io_state is OPEN:
            self._send_answer(response)
            return
        # The client left while the app ran: let go of what the app handed over.
        body = response.body
        if body is not None and not isinstance(body, (bytes, bytearray, memoryview)):
            close_body(body, log)
        self.exchange.close()  # the request body is no longer the app's to read

    def _send_answer(self, response: Response) -> None:
        body = response.body
        if type(body) is bytes or isinstance(body, (bytearray, memoryview)):
            length = len(body)
            closeable = None
        elif body is None:  # no content; for HEAD, of a length only GET would tell
            length = UNANNOUNCED if self.exchange.request.method == "HEAD" else 0
            body = b""
            closeable = None
        elif isinstance(body, FileBody):
            length = body.count
            closeable = body
        else:
            length = None
            closeable = body
        try:
            data = self.exchange.respond(
                response.status,
                response.headers,
                length,
                body if closeable is None and length else b"",
                response.reason,
            )
        except (ValueError, TypeError) as exc:  # InvalidHeader is a ValueError
            log.error("invalid response for %s: %s", self.exchange.request.target, exc)
            if closeable is not None:
                close_body(closeable, log)
            self._send_answer(internal_error())
            return
        out = self.out
        self.status = response.status
        self.response_mark = mark = out.bytes_sent + out.size
        # (`data` holds the body too when it is bytes and is sent at all: not for HEAD)
        joined = length if closeable is None and length > 0 and self.exchange.body_follows else 0
        self.body_mark = mark + len(data) - joined
        self.streamed = -1
        self.closeable = closeable
        if closeable is None:  # the whole answer is in `data`
            # Optimistic: most answers fit in the socket buffer at once, and then no
            # buffering, no writability watch and no flush are involved.
            try:
                if out.write(self.transport, data):
                    self._response_complete()
                    return
            except OSError as exc:
                self.close(SEND_ERROR, exc)
                return
        else:
            out.append(data)
            if self.exchange.body_follows:
                if length is not None:
                    out.append_file(body.fileobj, body.offset, body.count)
                elif not self._start_producer(body):
                    return
                elif self.exchange.writer.frame is chunk:
                    self.streamed = 0  # (its framing is not body: count the payload)
        self._pump()

    def _start_producer(self, body) -> bool:
        try:
            self.producer = BodyProducer(iter(body), self.exchange)
        except TypeError as exc:
            log.error("response body of %s is not iterable: %s", self.exchange.request.target, exc)
            self._answer_failed()
            return False
        return True

    def resume(self) -> None:
        """Carry on after a worker's news (in the loop): pull more of a threaded body,
        or, once an answer is out, serve the next pipelined request."""
        if self.io_state is not OPEN:
            return
        if self.producer_waiting:
            self.producer_waiting = False
            self._pump()
        if self.exchange.state is IDLE and self.io_state is OPEN:
            self._advance()

    def _pump(self) -> None:
        """Fill the buffer from the producer (below low water) and flush it."""
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
                    self._answer_failed()
                    return
            try:
                drained = out.flush(self.transport)
            except (OSError, EOFError) as exc:
                self.close(SEND_ERROR, exc)
                return
            if not drained:
                self._watch(WRITABLE)
                self._arm(self.context.write_timeout, WRITE_TIMEOUT)
                return
            if self.producer is None:
                self._response_complete()
                return
            if self.producer_waiting:
                self._watch(0)  # nothing to send until resume()
                self.timer.cancel()
                return
            if produced >= PRODUCE_BUDGET:
                # The socket would take more, but others deserve a turn; being
                # writable, we are called again on the next turn.
                self._watch(WRITABLE)
                self._arm(self.context.write_timeout, WRITE_TIMEOUT)
                return

    def _end_of_body(self) -> None:
        if self.streamed >= 0:
            self.streamed = self.producer.total
        self.producer = None
        problem = self.exchange.writer.problem
        if problem is not None:
            log.error("%s: %s", self.exchange.request.target, problem)
        self._release_body()

    def _answer_failed(self) -> None:
        """The body failed: answer 500 if none of this response left yet, else close."""
        self.producer = None
        self._release_body()
        out = self.out
        if out.bytes_sent > self.response_mark:
            self.close(APP_ERROR)  # the client has part of an answer: only closing ends it
            return
        out.truncate(self.response_mark - out.bytes_sent)
        self.exchange.abandon()
        self._send_answer(internal_error())

    def body_sent(self) -> int:
        """Body bytes of the answer in progress that left (CLF's %b: no head, and for a
        complete chunked body no framing either; an answer cut short counts its framing)."""
        sent = max(0, self.out.bytes_sent - self.body_mark)
        return sent if self.streamed < 0 else min(sent, self.streamed)

    def _response_complete(self) -> None:
        if self.closeable is not None:
            self._release_body()
        context = self.context
        exchange = self.exchange
        if context.observe is not None:
            context.observe(self, exchange.request)
        if not exchange.response_sent():
            self._close_after_response()
            return
        if self.watching != READABLE:
            self._watch(READABLE)
        now = self.loop.now
        if exchange.parser.buffered:  # a pipelined request is already arriving
            self._arm(context.header_timeout, HEADER_TIMEOUT)
        else:  # (KEEPALIVE_TIMEOUT is how _advance knows nothing more is here)
            context.idle[self] = now
            if not context.accepting:
                context.became_idle()  # a client may be waiting at the cap
            self.timeout_reason = KEEPALIVE_TIMEOUT
            self.timer.reschedule(now + context.keepalive_timeout)

    def _try_send_now(self, data: bytes) -> None:
        """Send interim or last-gasp bytes: now if the socket takes them, else queued."""
        try:
            if self.out.write(self.transport, data):
                return
        except OSError:
            return  # the read side will see the failure
        if self.exchange.state is not SENDING:
            self._watch(READABLE | WRITABLE)

    # -- ending -------------------------------------------------------------------

    def _close_after_response(self) -> None:
        if not self.exchange.linger:
            self.close(DONE)
            return
        # The client may still be sending (a refused body, pipelined requests): stop
        # writing, read and drop its input for a while, then close, so the kernel does
        # not answer that input with a reset that destroys our answer.
        try:
            self.transport.shutdown(socket.SHUT_WR)
        except OSError as exc:
            self.close(SEND_ERROR, exc)
            return
        self.io_state = LINGERING
        self._watch(READABLE)
        self._arm(LINGER_TIMEOUT, DONE)

    def _read_preamble(self) -> None:
        """--proxy-protocol: the PROXY header the balancer sends first names the
        client; what follows it is HTTP.  Anything else closes the connection
        unanswered (it did not come through the balancer)."""
        try:
            data = self.transport.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.close(RECV_ERROR, exc)
            return
        if not data:
            self.close(PEER_CLOSED)
            return
        self.bytes_in += len(data)
        data = self.preamble + data
        try:
            header = proxy_protocol.parse(data)
        except proxy_protocol.ProxyProtocolError as exc:
            self.close(PROXY_REFUSED, exc)
            return
        if header is None:
            self.preamble = data  # (parse() bounds it: past MAX_V2_LENGTH it refuses)
            return
        self.preamble = b""
        self.io_state = OPEN
        exchange = self.exchange
        if not header.local:  # (a balancer's own health check keeps the socket's addresses)
            self.peer = exchange.peer = header.source
            if header.destination is not None:
                self.local = exchange.local = header.destination
        if len(data) > header.length:  # the request began in the same packet
            self.context.idle.pop(self, None)
            exchange.receive(data[header.length :])
            self._advance()

    def _discard_input(self) -> None:
        for _ in range(LINGER_READS):
            try:
                data = self.transport.recv(READ_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                break
            if not data:
                break
        self.close(DONE)

    def close(self, reason: str, exc: BaseException | None = None) -> None:
        """The one way out: unwatch, close, cancel the timer, release the bodies, free
        the slot -- the last whatever fails before it.  Idempotent."""
        if self.io_state is CLOSED_IO:
            return
        self.io_state = CLOSED_IO
        context = self.context
        exchange = self.exchange
        try:
            try:
                if self.loop.is_watching(self.fd):
                    self.loop.unwatch(self.fd)
            finally:
                try:
                    self.transport.close()
                except OSError:
                    pass
                self.timer.cancel()
            if self.producer is not None and self.streamed >= 0:
                self.streamed = self.producer.total
            self.producer = None
            self._release_body()
            request = exchange.request
            if context.observe is not None and self.status and request is not None:
                # An answer cut short (client gone, timeout, app failure): what was sent.
                context.observe(self, request)
            if exchange.state is not APP:  # else a worker may still read the request body:
                exchange.close()  # respond() lets it go when the app is done
            if context.debug and reason is not DONE and reason is not PEER_CLOSED:
                log.debug(
                    "connection %r closed: %s%s", self.peer, reason, f" ({exc})" if exc else ""
                )
        finally:
            self.out.clear()
            context.closed(self, reason)

    def _release_body(self) -> None:
        """Call close() on the response body, once, as PEP 3333 and FileBody require."""
        closeable = self.closeable
        if closeable is not None:
            self.closeable = None
            close_body(closeable, log)

    # -- helpers ------------------------------------------------------------------

    def _watch(self, events: int) -> None:
        """Watch the transport for `events`; 0 stops watching it altogether."""
        if self.watching == events:
            return
        if not events:
            self.loop.unwatch(self.fd)
        elif not self.watching:
            self.loop.watch(self.fd, self, events)
        else:
            self.loop.set_interest(self.fd, events)
        self.watching = events

    def _arm(self, delay: float, reason: str) -> None:
        self.timeout_reason = reason
        self.timer.reschedule(self.loop.now + delay)

    @property
    def idle(self) -> bool:
        """Waiting for a request with nothing of it received: safe to close at shutdown."""
        return (
            self.io_state is OPEN and self.exchange.state is IDLE and not self.exchange.head_started
        )
