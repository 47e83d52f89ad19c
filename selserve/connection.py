"""One client connection: socket + request parser + write buffer + response producer.

A connection moves through READING (a request head or body is arriving),
RESPONDING (its answer is being written), and back to READING for the next
keep-alive request, or to LINGERING/closed.  Requests are answered one at a
time and in order; pipelined requests wait in the parser meanwhile, and the
socket is not read while a response is in progress, which bounds what a
client can make us buffer.

Every way a connection ends goes through `close(reason)`: unwatch, close the
socket, cancel the timer, close the response iterable, free the server's slot.
A failing send or recv is ordinary client behaviour (EPIPE, ECONNRESET, ...):
it is counted under its reason and logged at debug, never as a traceback.
"""

from __future__ import annotations

import logging
import socket
from typing import TYPE_CHECKING

from . import app as native
from .app import Request  # what this connection's parser makes of each request head
from .backends import READABLE, WRITABLE
from .body import RequestBody
from .buffer import WriteBuffer
from .http import response as wire
from .http.errors import HTTPError
from .http.parser import CLOSED, NEED_DATA, Data, EndOfMessage, RequestParser
from .workers import WAIT

if TYPE_CHECKING:
    from .server import Server

log = logging.getLogger("selserve")

READING, RESPONDING, LINGERING, CLOSED_STATE = "reading", "responding", "lingering", "closed"

# Timeout reasons (also close reasons).
HEADER_TIMEOUT = "header-timeout"
BODY_TIMEOUT = "body-timeout"
WRITE_TIMEOUT = "write-timeout"
KEEPALIVE_TIMEOUT = "keepalive-timeout"

# Bytes asked of recv() at once.
READ_SIZE = 64 * 1024
# A streamed body may put this many bytes in the buffer per turn before other
# connections get theirs (fairness against a fast client and an eager producer).
PRODUCE_BUDGET = 1024 * 1024
# After a refused request, how long we keep reading and discarding the client's
# input so that closing does not reset the connection before our answer arrives.
LINGER_TIMEOUT = 2.0
LINGER_READS = 16

# Close reasons: shared by the counters and the debug log.
PEER_CLOSED = "peer-closed"
RECV_ERROR = "recv-error"
SEND_ERROR = "send-error"
DONE = "done"
APP_ERROR = "app-error"
INTERNAL_ERROR = "internal-error"
SHUTDOWN = "shutdown"
RECLAIMED = "reclaimed"  # idle, closed to make room for a new client at the cap


def _app_failed() -> native.Response:
    return native.Response(
        500, [("Content-Type", "text/plain; charset=utf-8")], b"500 Internal Server Error\n"
    )


class Connection:
    __slots__ = (
        "server",
        "loop",
        "sock",
        "fd",
        "peer",
        "parser",
        "out",
        "state",
        "timer",
        "timeout_reason",
        "head",
        "body",
        "local",
        "head_started",
        "keep_alive",
        "producer",
        "closeable",
        "chunked",
        "remaining",
        "watching",
        "linger",
        "in_app",
        "producer_waiting",
        "app_failed",
        "response_mark",
        "status",
        "bytes_in",
    )

    def __init__(self, server: Server, sock: socket.socket, peer, local=None) -> None:
        config = server.config
        self.server = server
        self.loop = server.loop
        self.sock = sock
        self.fd = sock.fileno()
        self.peer = peer
        self.local = local
        self.parser = RequestParser(**server.parser_limits, request_class=Request)
        self.out = WriteBuffer(config.high_water, config.low_water)
        self.state = READING
        self.head: Request | None = None
        self.body: RequestBody | None = None  # made for the first request with a body
        self.head_started = False
        self.keep_alive = True
        self.producer = None  # iterator of a streamed body, while one is being pulled
        self.closeable = None  # the body object whose close() we owe the application
        self.chunked = False
        self.remaining: int | None = None  # bytes a streamed body still owes its Content-Length
        self.linger = False  # after a refusal the client may still be sending
        self.in_app = False  # a worker thread is running the app for this connection
        self.producer_waiting = False  # a threaded body has nothing yet; resume() follows
        self.app_failed = False  # the body iterator raised; _pump decides what follows
        self.response_mark = 0  # bytes_sent + pending when this response began
        self.status = 0  # of the response in progress, for the access log
        self.bytes_in = 0
        self.timeout_reason = HEADER_TIMEOUT
        self.timer = self.loop.call_later(config.header_timeout, self.on_timeout)
        self.watching = READABLE
        self.loop.watch(self.fd, self, READABLE)
        server.idle[self] = self.loop.now  # silent so far: reclaimable at the cap

    def __repr__(self) -> str:
        return f"<Connection fd={self.fd} {self.peer!r} {self.state}>"

    # -- readiness ----------------------------------------------------------

    def on_readable(self) -> None:
        if self.state is LINGERING:
            self._discard_input()
            return
        try:
            data = self.sock.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.close(RECV_ERROR, exc)
            return
        if data:
            self.bytes_in += len(data)
            if not self.head_started:
                self.head_started = True
                self.server.idle.pop(self, None)
            self.parser.feed(data)
        else:
            self.parser.feed_eof()
        self._advance()
        if (
            self.head_started
            and self.head is None
            and self.state is READING
            and self.timeout_reason is not HEADER_TIMEOUT
        ):
            # A head has begun and is not complete: from now on it has
            # header_timeout to finish, counted from its first byte (from
            # accept for a new connection) and not extended by each trickled
            # byte (slowloris).
            self._arm(self.server.config.header_timeout, HEADER_TIMEOUT)

    def on_writable(self) -> None:
        if self.state is RESPONDING:
            self._pump()
            if self.state is READING:
                self._advance()  # the answer is out: serve pipelined requests
        elif self.state is READING:
            # Only an interim answer (100 Continue) was left over.
            try:
                drained = self.out.flush(self.sock)
            except OSError as exc:
                self.close(SEND_ERROR, exc)
                return
            if drained:
                self._watch(READABLE)

    def on_timeout(self) -> None:
        reason = self.timeout_reason
        if reason == HEADER_TIMEOUT and self.head_started and self.state is READING:
            self._try_send_now(wire.error_response(408, "request head too slow", self.server.fixed))
        self.close(reason)

    def on_error(self, exc: BaseException) -> None:
        self.close(INTERNAL_ERROR, exc)

    # -- reading requests -----------------------------------------------------

    def _advance(self) -> None:
        """Turn buffered bytes into requests and answers until we must wait."""
        parser = self.parser
        while self.state is READING:
            try:
                event = parser.next_event()
            except HTTPError as exc:
                self._refuse(exc)
                return
            kind = type(event)
            if kind is Request:
                self.head = event
                if event.chunked or event.content_length:
                    if not self._answer_from_head(event):
                        self._start_body(event)
                    continue
                parser.next_event()  # its EndOfMessage: without a body, the head is all
                self._respond()
                if self.state is READING and not self.head_started:
                    return  # answered, and nothing of another request has arrived
            elif kind is EndOfMessage:
                self._respond()
            elif event is NEED_DATA:
                return
            elif kind is Data:
                try:
                    self.body.append(event.data)
                except OSError as exc:
                    self._body_not_stored(exc)
                    return
                self._arm(self.server.config.body_timeout, BODY_TIMEOUT)
            elif event is CLOSED:
                self.close(PEER_CLOSED)
                return

    def _answer_from_head(self, head: Request) -> bool:
        """Let the server or the app answer a request with a body before the body is
        read (a 405, a static file): then the body is never stored and no 100 Continue
        goes out.  The connection closes after the answer, dropping the unread body
        while it lingers.  True if answered."""
        try:
            response = self.server.answer_from_head(head.arrived(b"", self.peer, self.local))
        except Exception:
            log.exception(
                "application error answering %s %s from its head", head.method, head.target
            )
            response = _app_failed()
        if response is None:
            return False
        self.server.requests += 1
        head.keep_alive = False  # the body is still on its way: close once answered
        self.linger = True
        self._answer(response)
        return True

    def _start_body(self, head: Request) -> None:
        if self.body is None:
            server = self.server
            self.body = RequestBody(server.config.body_spill_threshold, server.open_spill_file)
        self._arm(self.server.config.body_timeout, BODY_TIMEOUT)
        if head.expect_continue:
            # RFC 9110 §10.1.1: the client waits for this before sending the body.
            self._try_send_now(wire.CONTINUE)

    def _body_not_stored(self, exc: OSError) -> None:
        """The spill file failed (a full disk): refuse the request, keep the server going."""
        self.body.discard()
        self.server.body_store_failed(exc)
        self._refuse(HTTPError(503, "request body could not be stored"))

    # -- answering ------------------------------------------------------------

    def _respond(self) -> None:
        head = self.head
        server = self.server
        server.requests += 1
        if head.path == server.stats_path and head.method in ("GET", "HEAD"):
            self._start_response(server.stats_response())
            return
        body = self.body
        if body is not None and (body.size or body.spilled):
            try:
                body = body.take()
            except OSError as exc:
                self._body_not_stored(exc)
                return
        else:
            body = b""
        request = head.arrived(body, self.peer, self.local)
        pool = server.pool
        if pool is not None:
            # Until the worker answers, neither read (pipelined input would pile
            # up) nor time out: how long an app runs is the app's business.
            self.state = RESPONDING
            self.in_app = True
            self._watch(0)
            self.timer.cancel()
            pool.submit(self.server.app, request, self)
            return
        try:
            response = server.app(request)
        except Exception:
            log.exception("application error on %s %s", head.method, head.target)
            response = None
        if type(response) is native.Response:
            self._start_response(response)
        else:
            self._answer(response)

    def app_returned(self, response) -> None:
        """A worker's result, delivered in the loop."""
        self.in_app = False
        if self.state is CLOSED_STATE:
            # The client left while the app ran: release what the app handed us.
            body = getattr(response, "body", None)
            if body is not None and not isinstance(body, (bytes, bytearray, memoryview)):
                self.closeable = body
                self._release_body()
            self._discard_request_body()
            return
        self.state = READING  # _answer takes it from here, as for an inline app
        self._answer(response)
        if self.state is READING:
            self._advance()

    def resume(self) -> None:
        """A threaded body has more to send (called in the loop)."""
        if self.state is RESPONDING and self.producer_waiting:
            self.producer_waiting = False
            self._pump()
            if self.state is READING:
                self._advance()

    def _answer(self, response) -> None:
        if not isinstance(response, native.Response):
            if response is not None:
                log.error("application returned %r, not a Response", type(response).__name__)
            response = _app_failed()  # nothing was sent: the connection stays usable
        self._start_response(response)

    def _start_response(self, response: native.Response) -> None:
        head = self.head
        body = response.body
        if type(body) is bytes or isinstance(body, (bytearray, memoryview)):
            length = len(body)
        elif body is None:  # no content: for HEAD, of a length only GET would tell
            length = wire.UNANNOUNCED if head.method == "HEAD" else 0
            body = b""
        elif isinstance(body, native.FileBody):
            length = body.count
            self.closeable = body
        else:
            length = None
            self.closeable = body
        server = self.server
        out = self.out
        self.response_mark = out.bytes_sent + out.size
        self.status = response.status
        try:
            data, content_length, chunked, keep_alive, has_body = wire.build_head(
                response.status,
                response.headers,
                method=head.method,
                http11=head.version == "HTTP/1.1",
                keep_alive=head.keep_alive and not server.stopping,
                body_length=length,
                fixed=server.fixed,
                date=server.date,
                body=body if length and self.closeable is None else b"",
                reason=response.reason,
            )
        except (wire.InvalidHeader, TypeError, ValueError) as exc:
            log.error("invalid response from the application for %s: %s", head.target, exc)
            self._release_body()
            self._start_response(_app_failed())
            return
        self.keep_alive = keep_alive
        self.state = RESPONDING
        if self.closeable is None:  # bytes, already joined to the head
            # Optimistic: most answers fit in the socket buffer at once, and then
            # no buffering, no writability watch and no flush are involved.
            try:
                if out.write(self.sock, data):
                    self._response_complete()
                    return
            except OSError as exc:
                self.close(SEND_ERROR, exc)
                return
        elif length is not None:  # a file
            out.append(data)
            if has_body:
                out.append_file(body.fileobj, body.offset, body.count)
        else:
            out.append(data)
            if has_body:
                try:
                    self.producer = iter(body)
                except TypeError as exc:
                    log.error("response body of %s is not iterable: %s", head.target, exc)
                    self._release_body()
                    out.truncate(self.response_mark - out.bytes_sent)
                    self._start_response(_app_failed())
                    return
                self.chunked = chunked
                self.remaining = content_length
        self._pump()

    def _pump(self) -> None:
        """Fill the buffer from the producer (below high water) and flush it."""
        out = self.out
        produced = 0
        while True:
            if (
                self.producer is not None
                and out.size <= out.low_water
                and not self.producer_waiting
            ):
                produced += self._produce()
                if self.app_failed:
                    self._recover_from_app_failure()
                    return
            try:
                drained = out.flush(self.sock)
            except (OSError, EOFError) as exc:
                self.close(SEND_ERROR, exc)
                return
            if not drained:
                self._watch(WRITABLE)
                self._arm(self.server.config.write_timeout, WRITE_TIMEOUT)
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
                self._arm(self.server.config.write_timeout, WRITE_TIMEOUT)
                return

    def _produce(self) -> int:
        """Pull body pieces until high water; returns the bytes added."""
        out = self.out
        producer = self.producer
        added = 0
        while out.size < out.high_water:
            try:
                piece = next(producer)
            except StopIteration:
                self._end_of_body()
                return added
            except Exception:
                log.exception("application error while streaming %s", self.head.target)
                self.producer = None
                self._release_body()
                self.app_failed = True
                return added
            if not piece:
                continue
            if piece is WAIT:
                self.producer_waiting = True
                return added
            if self.remaining is not None:
                if len(piece) > self.remaining:
                    log.error("%s: body longer than its Content-Length", self.head.target)
                    piece = piece[: self.remaining]
                    self.keep_alive = False
                self.remaining -= len(piece)
            if self.chunked:
                out.append(wire.chunk(piece))
            else:
                out.append(piece)
            added += len(piece)
            if self.remaining == 0:
                self._end_of_body()
                return added
        return added

    def _recover_from_app_failure(self) -> None:
        """The body raised: answer 500 if none of this response left yet, else close."""
        self.app_failed = False
        out = self.out
        if out.bytes_sent > self.response_mark:
            self.close(APP_ERROR)  # the client has part of an answer: only closing ends it
            return
        out.truncate(self.response_mark - out.bytes_sent)
        self.chunked = False
        self.remaining = None
        self._start_response(_app_failed())

    def _end_of_body(self) -> None:
        self.producer = None
        if self.chunked:
            self.out.append(wire.LAST_CHUNK)
            self.chunked = False
        elif self.remaining:
            # Shorter than promised: only closing tells the client it is incomplete.
            log.error("%s: body shorter than its Content-Length", self.head.target)
            self.keep_alive = False
        self.remaining = None
        self._release_body()

    def _response_complete(self) -> None:
        if self.closeable is not None:
            self._release_body()
        if self.body is not None:
            self.body.discard()
        server = self.server
        if server.access_log is not None:
            server.access_log.write(
                self.peer, self.head, self.status, self.out.bytes_sent - self.response_mark
            )
        self.head = None
        if not self.keep_alive or server.stopping:
            self._close_after_response()
            return
        self.state = READING
        parser = self.parser
        parser.start_next_request()
        if self.watching != READABLE:
            self._watch(READABLE)
        now = self.loop.now
        if parser.buffered:
            self.head_started = True  # a pipelined request is already arriving
            self._arm(server.config.header_timeout, HEADER_TIMEOUT)
        else:
            self.head_started = False
            server.idle[self] = now
            if not server.accepting:
                server.became_idle()  # a client may be waiting at the cap
            self.timeout_reason = KEEPALIVE_TIMEOUT
            self.timer.reschedule(now + server.keepalive_timeout)

    def _refuse(self, exc: HTTPError) -> None:
        """Answer a request we cannot parse or accept, then close."""
        self.server.count(f"http-{exc.status}")
        log.debug("%r: refused with %d: %s", self, exc.status, exc.detail)
        self.head = None
        self.linger = True
        self.keep_alive = False  # a small error page, then close once it is sent
        self.state = RESPONDING
        self.status = exc.status
        self.response_mark = self.out.bytes_sent + self.out.size
        self.out.append(wire.error_response(exc.status, exc.detail, self.server.fixed))
        self._pump()

    def _try_send_now(self, data: bytes) -> None:
        """Send interim or last-gasp bytes: now if the socket takes them, else queued."""
        try:
            if self.out.write(self.sock, data):
                return
        except OSError:
            return  # the read side will see the failure
        if self.state is not RESPONDING:
            self._watch(READABLE | WRITABLE)

    # -- ending ---------------------------------------------------------------

    def _close_after_response(self) -> None:
        if not self.linger and not self.parser.buffered:
            self.close(DONE)
            return
        # The client may still be sending (a refused body, pipelined requests):
        # stop writing, read and drop its input for a while, then close, so the
        # kernel does not answer that input with a reset that destroys our reply.
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            self.close(SEND_ERROR, exc)
            return
        self.state = LINGERING
        self._watch(READABLE)
        self._arm(LINGER_TIMEOUT, DONE)

    def _discard_input(self) -> None:
        for _ in range(LINGER_READS):
            try:
                data = self.sock.recv(READ_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                break
            if not data:
                break
        self.close(DONE)

    def close(self, reason: str, exc: BaseException | None = None) -> None:
        """The one way out: unwatch, close, cancel the timer, release the bodies, free the slot.

        Idempotent, and the slot is freed whatever fails on the way (a log that
        cannot be written, an app's close() that raises): a connection that
        never gives its slot back would, at the cap, stop the whole server.
        """
        if self.state is CLOSED_STATE:
            return
        self.state = CLOSED_STATE
        try:
            try:
                if self.loop.is_watching(self.fd):
                    self.loop.unwatch(self.fd)
            finally:
                try:
                    self.sock.close()
                except OSError:
                    pass
                self.timer.cancel()
            self.producer = None
            self._release_body()
            if not self.in_app:  # else the worker may still read it: app_returned drops it
                self._discard_request_body()
            access_log = self.server.access_log
            if access_log is not None and self.status and self.head is not None:
                # An answer cut short (client gone, timeout, app failure): log what was sent.
                sent = self.out.bytes_sent - self.response_mark
                access_log.write(self.peer, self.head, self.status, max(sent, 0))
            if self.server.debug and reason not in (DONE, PEER_CLOSED):
                log.debug(
                    "connection %r closed: %s%s", self.peer, reason, f" ({exc})" if exc else ""
                )
        finally:
            self.out.clear()
            self.server.connection_closed(self, reason)

    def _release_body(self) -> None:
        """Call close() on the response body, once, as PEP 3333 and FileBody require."""
        closeable = self.closeable
        if closeable is None:
            return
        self.closeable = None
        close = getattr(closeable, "close", None)
        if close is not None:
            try:
                close()
            except Exception:
                log.exception("error closing the response body of %r", self)

    def _discard_request_body(self) -> None:
        if self.body is not None:
            self.body.discard()

    # -- helpers --------------------------------------------------------------

    def _watch(self, events: int) -> None:
        """Watch the socket for `events`; 0 stops watching it altogether."""
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
        return self.state is READING and self.head is None and not self.head_started
