"""One client connection: bytes between a transport and its HTTP exchange.

A `Connection` moves bytes and nothing else.  What they mean is its
`ServerExchange`'s business (sans I/O, `http/exchange.py`); who answers a
request is `Dispatch`'s (`dispatch.py`); how an answer goes out -- its head,
its body whole, from a file or pulled from a producer, its close() -- is the
`Responder`'s (responder.py), the connection's base class.  The connection
reads from its transport into the exchange, hands each request to dispatch
and each answer to its `Responder` part, acts on how far that got (watch for
writability, wait for a worker, keep alive, linger, close), keeps the one
record of what the loop watches for it, and times whichever deadline applies:
while idle by waiting in one of its context's deadline queues (loop.py), else by
a timer of its own.  It sees its server only through a narrow
`ConnectionContext` (context.py).  With --proxy-protocol it first reads the
balancer's PROXY header (the `ProxyPreamble` part, preamble.py).  Its close
reasons and transport states are named in reasons.py.

Every way a connection ends goes through `close(reason)`: unwatch, close the
transport, cancel the timer (or leave the idle queue), release the answer's
body, free the slot (the last in a `finally`: a connection that never gives its
slot back would, at the cap, stop the whole server).  A failing send or recv is
ordinary client behaviour (EPIPE, ECONNRESET, ...): counted under its reason and
logged at debug, never as a traceback.
"""

from __future__ import annotations

import logging
import socket

from .app import Response, close_body
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
from .lingering import LINGER_TIMEOUT, drop_input
from .preamble import ProxyPreamble
from .reasons import (
    APP_ERROR,
    AWAITING_APP,
    BODY_TIMEOUT,
    CLOSED_IO,
    DONE,
    HEADER_TIMEOUT,
    INTERNAL_ERROR,
    KEEPALIVE_TIMEOUT,
    LINGERING,
    OPEN,
    PEER_CLOSED,
    PREAMBLE,
    PROXY_TIMEOUT,
    RECV_ERROR,
    SEND_ERROR,
    WRITE_TIMEOUT,
)
from .responder import BLOCKED, BODY_WAITING, QUEUED, SEND_FAILED, SENT, Responder
from .transport import READ_SIZE, Transport

log = logging.getLogger("selserve")


class Connection(Responder, ProxyPreamble):
    """One client (see the module docstring); also dispatch's `Handle` for it.  Its
    answer in flight is the `Responder` part (responder.py), its PROXY header the
    `ProxyPreamble` part (preamble.py)."""

    __slots__ = (
        "context",
        "loop",
        "fd",
        "peer",
        "local",
        "io_state",
        "watching",
        "timer",
        "timeout_reason",
        "started",
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
        self.fd = transport.fileno()
        self.peer = peer
        self.local = local
        Responder.__init__(  # (sets exchange, out and transport)
            self,
            ServerExchange(
                context.settings, request_class=context.request_class, peer=peer, local=local
            ),
            WriteBuffer(context.high_water, context.low_water),
            transport,
        )
        self.io_state = PREAMBLE if proxy_protocol else OPEN
        self.preamble = b""  # the PROXY header so far
        # Loop time the request in progress arrived (until its head is complete: when
        # its header_timeout began).
        self.started = 0.0
        self.bytes_in = 0
        self.timeout_reason = HEADER_TIMEOUT  # counted from accept for a new connection
        # A deadline of our own; None while idle, when one of the context's queues
        # times us instead (so an idle connection with an IDLE exchange and no timer is
        # waiting in a queue).  Idle connections hold no timer: 1,549 -> 1,205 B each.
        self.timer = None
        self.watching = READABLE  # the one record of what the loop watches for us
        loop.watch(self.fd, self, READABLE)
        context.fresh.add(self)  # silent so far: reclaimable at the cap

    def __repr__(self) -> str:
        return f"<Connection fd={self.fd} {self.peer!r} {self.exchange.state}>"

    # -- readiness ----------------------------------------------------------------

    def on_readable(self) -> None:
        if self.io_state is not OPEN:
            if self.io_state is AWAITING_APP:
                self._watch(0)  # read once the app has answered (see _wait_for_app)
            elif self.io_state is PREAMBLE:
                self._read_preamble()
            elif drop_input(self.transport, READ_SIZE):  # lingering (lingering.py)
                self.close(DONE)
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
            if exchange.state is IDLE and self.timer is None:
                self._leave_idle()  # a request is arriving (and takes a parser)
            exchange.parser.feed(data)  # (exchange.receive, without its frame)
        else:
            exchange.receive_eof()
        self._advance()

    def on_writable(self) -> None:
        if self.io_state is CLOSED_IO:
            return  # closed after asking the loop for write_soon
        exchange = self.exchange
        if exchange.state is SENDING:
            self._answered(self._pump())
            # The answer is out: serve pipelined requests, or see the client's EOF
            # (a lent parser means nothing of either is here).
            if exchange.state is IDLE and self.io_state is OPEN and exchange.parser is not None:
                self._advance()
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
                # Queued whole: it leaves at the end of the loop's turn, and then
                # on_writable serves what is pipelined behind it.
                self._answered(self._send_answer(response))
                return
            elif event is NEED_DATA:
                if exchange.state is BODY:
                    self._arm(context.body_timeout, BODY_TIMEOUT)  # progress
                elif self.timeout_reason is None:  # (_leave_idle) the head is incomplete
                    # It has header_timeout from its first byte (from accept for a new
                    # connection), not extended by each trickled byte.
                    self._arm_at(self.started + context.header_timeout, HEADER_TIMEOUT)
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
        response = context.dispatch.answer_from_head(exchange.request)
        if response is not None:
            context.requests += 1
            self._answered(self._send_answer(response))
            return
        interim = exchange.read_body()
        if interim:
            self._try_send_now(interim)

    def _wait_for_app(self) -> None:
        # The app runs on a worker: until it answers, neither read (pipelined input
        # would pile up) nor time out (how long an app runs is the app's business).
        # The socket stays watched for input: a client waiting for its answer sends
        # nothing, and not unwatching and watching again saves two epoll_ctl calls per
        # request, each a chance for the GIL to go to a worker (WSGI hello on 4 threads:
        # 40.9 -> 32.7 us of server CPU per request).  Input that does come stops the
        # watch (on_readable).
        self.io_state = AWAITING_APP
        if self.watching != READABLE:
            self._watch(0)
        self._disarm()

    def _refused(self) -> None:
        exchange = self.exchange
        context = self.context
        context.counters[f"http-{exchange.refusal_status}"] += 1
        if exchange.store_error is not None:
            context.body_store_failed(exchange.store_error)
            exchange.store_error = None
        if context.debug:
            log.debug("%r: refused with %d", self, exchange.refusal_status)
        self.started = self.loop.now
        self._answered(self._send_refusal(exchange.refusal_status, exchange.refusal))

    # -- answers (dispatch's Handle) -----------------------------------------------

    def respond(self, response: Response) -> None:
        """A worker's answer to the request being answered (in the loop's thread)."""
        if self.io_state is AWAITING_APP:
            self.io_state = OPEN
            self._answered(self._send_answer(response))
            return
        # The client left while the app ran: let go of what the app handed over.
        body = response.body
        if body is not None and not isinstance(body, (bytes, bytearray, memoryview)):
            close_body(body, log)
        self.exchange.close()  # the request body is no longer the app's to read

    def resume(self) -> None:
        """Carry on after a worker's news (in the loop): pull more of a threaded body,
        or, once an answer is out, serve the next pipelined request."""
        if self.io_state is not OPEN:
            return
        if self.producer_waiting:
            self._answered(self._resume_body())
        if self.exchange.state is IDLE and self.io_state is OPEN:
            self._advance()

    def _answered(self, outcome: str) -> None:
        """Do the connection's part of how far the answer got (see responder.py)."""
        if outcome is QUEUED:
            self.loop.write_soon(self)
        elif outcome is SENT:
            self._response_complete()
        elif outcome is BLOCKED:
            self._watch(WRITABLE)
            self._arm(self.context.write_timeout, WRITE_TIMEOUT)
        elif outcome is BODY_WAITING:
            self._watch(0)  # nothing to send until resume()
            self._disarm()
        elif outcome is SEND_FAILED:
            error = self.error
            self.error = None  # (its traceback holds our frames: a cycle that keeps us)
            self.close(SEND_ERROR, error)
        else:
            self.close(APP_ERROR)  # the client has part of an answer: only closing ends it

    def _response_complete(self) -> None:
        context = self.context
        exchange = self.exchange
        if context.observe is not None:
            context.observe(self, exchange.request)
        if not exchange.response_sent():
            self._close_after_response()
            return
        if self.watching != READABLE:
            self._watch(READABLE)
        parser = exchange.parser  # (None: lent out, nothing of another request here)
        if parser is not None and parser.buffered:  # a pipelined request is arriving
            self._arm(context.header_timeout, HEADER_TIMEOUT)
        else:  # nothing of another request is here
            if self.timer is not None:
                self._disarm()
            self.timeout_reason = KEEPALIVE_TIMEOUT
            context.kept_alive.add(self)
            if not context.accepting:
                context.became_idle()  # a client may be waiting at the cap

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
        # writing, read and drop its input for a while, then close (lingering.py).
        try:
            self.transport.shutdown(socket.SHUT_WR)
        except OSError as exc:
            self.close(SEND_ERROR, exc)
            return
        self.io_state = LINGERING
        self._watch(READABLE)
        self._arm(LINGER_TIMEOUT, DONE)

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
                self._disarm()
                context.fresh.leave(self)
                context.kept_alive.leave(self)
            if self.closeable is not None:  # cut short: stop pulling the body, close it
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
        self._arm_at(self.loop.now + delay, reason)

    def _arm_at(self, when: float, reason: str) -> None:
        self.timeout_reason = reason
        if self.timer is None:
            self.timer = self.loop.call_at(when, self.on_timeout)
        else:
            self.timer.reschedule(when)

    def _disarm(self) -> None:
        timer = self.timer
        if timer is not None:
            timer.cancel()
            self.timer = None

    def _leave_idle(self) -> None:
        """The first bytes of a request: leave the idle queue.  Its head has
        header_timeout from now, or from accept on a new connection (armed by
        _advance if the head is incomplete; `started` holds its beginning till then)."""
        context = self.context
        now = self.loop.now
        if context.kept_alive.leave(self) is None:
            joined = context.fresh.leave(self)
            now = joined if joined is not None else now
        self.started = now
        self.timeout_reason = None
        self.exchange.wake()

    def wait_as_new(self) -> None:
        """Wait for a first request as a newly accepted connection does: idle, with
        header_timeout from now (after a TLS handshake, say)."""
        self._disarm()
        self.timeout_reason = HEADER_TIMEOUT
        self.context.fresh.leave(self)
        self.context.fresh.add(self)

    @property
    def deadline(self) -> float | None:
        """The loop time this connection times out at, None if it does not."""
        if self.timer is not None:
            return self.timer.when if self.timer.active else None
        for queue in (self.context.kept_alive, self.context.fresh):
            joined = queue.members.get(self)
            if joined is not None:
                return joined + queue.delay
        return None

    @property
    def idle(self) -> bool:
        """Waiting for a request with nothing of it received: safe to close at shutdown."""
        return (
            self.io_state is OPEN and self.exchange.state is IDLE and not self.exchange.head_started
        )
