"""Pulling an application's streamed body into a write buffer, as far as it may go.

A `BodyProducer` holds the iterator of one response body and the writer of the
HTTP exchange that frames it.  `fill(out)` pulls pieces while the buffer is
below its high-water mark, so a body yielding gigabytes to a client that reads
nothing holds about that much memory, and says what happened: bytes added, the
body ended (its framing closed: a last chunk), nothing more yet (a threaded
body's `WAIT`: the worker resumes the connection later), or the body raised.

It calls the application's iterator and nothing else: no socket, no timer, no
close().  Flushing and close() are its `Responder`'s business (responder.py),
watching and closing the connection's.
"""

from __future__ import annotations

from .buffer import WriteBuffer
from .http.exchange import ServerExchange
from .http.response import CHUNK_END, CHUNK_SIZE_LINE, chunk
from .workers import WAIT

# What fill() reports besides a number of bytes added.
ENDED = -1  # the body is complete and framed: once flushed, the answer is out
WAITING = -2  # a threaded body has nothing yet; the worker calls resume()
FAILED = -3  # the application's iterator raised (the caller logs it)

# Framed pieces are joined into one buffer entry of about this size: the buffer's
# bookkeeping per entry (append, gather for sendmsg, consume), about 75 opcodes,
# was most of the cost of a stream of small pieces.  64 x 1 KiB, with the for loop
# below: 10,527 -> 6,151 opcodes, 661k -> 470k instructions per request
# (benchmarks/hotpath.py --callgrind).
BATCH = 64 * 1024


def producer_for(iterator, exchange: ServerExchange) -> BodyProducer:
    """The producer for `exchange`'s framing: chunked bodies have a loop of their own."""
    if exchange.writer.frame is chunk:
        return ChunkedProducer(iterator, exchange)
    return BodyProducer(iterator, exchange)


class BodyProducer:
    """One streamed response body (see the module docstring)."""

    __slots__ = ("iterator", "exchange", "writer", "frame", "limited", "failure", "total")

    def __init__(self, iterator, exchange: ServerExchange) -> None:
        self.iterator = iterator
        self.exchange = exchange
        self.writer = writer = exchange.writer
        self.frame = writer.frame
        self.limited = writer.limited
        self.failure: Exception | None = None  # what the iterator raised (FAILED)
        self.total = 0  # body bytes put in the buffer so far, unframed

    def fill(self, out: WriteBuffer) -> int:
        """Pull pieces until `out` reaches high water: the bytes added, or ENDED,
        WAITING or FAILED (the pieces pulled before those are in `out` already)."""
        room = out.high_water - out.size
        if room <= 0:
            return 0
        frame = self.frame
        limited = self.limited
        batch: list[bytes] = []  # small framed pieces, joined before they go into out
        batched = 0
        added = 0
        outcome = 0
        try:
            # A for loop: the end of the body costs no StopIteration caught per fill.
            for piece in self.iterator:
                if not piece:  # (WAIT is empty too)
                    if piece is WAIT:
                        outcome = WAITING
                        break
                    continue
                framed = frame(piece)
                added += len(piece)
                batch.append(framed)
                batched += len(framed)
                if batched >= BATCH:
                    _append_joined(out, batch)
                    room -= batched
                    batch = []
                    batched = 0
                if limited and self.writer.done:  # its Content-Length is reached
                    batch.append(self.exchange.finish_body())
                    outcome = ENDED
                    break
                if batched >= room:  # high water
                    break
            else:
                batch.append(self.exchange.finish_body())
                outcome = ENDED
        except Exception as exc:
            self.failure = exc
            outcome = FAILED
        try:
            _append_joined(out, batch)
        except TypeError as exc:  # a piece that is not bytes
            self.failure = exc
            return FAILED
        self.total += added
        return outcome or added


# A chunk's framing, counted against the batch: a size line of up to 8 hex digits
# (pieces under 4 GiB) and two CRLFs.  Only a bound: the buffer's size is exact.
_FRAMING_MAX = 12


class ChunkedProducer(BodyProducer):
    """A chunked body: the loop of `BodyProducer.fill` with the framing written in.

    Each piece goes into the batch as three entries (its size line, itself, CRLF) and
    is copied once, by the join: formatting it into a chunk copied it twice.  A
    chunked writer is never `limited`, and the batch and the room are one budget.
    64 x 1 KiB: fill and chunk() 55 -> 34 opcodes a piece, 472k -> 362k instructions
    per request (benchmarks/hotpath.py --callgrind).
    """

    __slots__ = ()

    def fill(self, out: WriteBuffer) -> int:
        room = out.high_water - out.size
        if room <= 0:
            return 0
        batch: list[bytes] = []
        left = min(room, BATCH)  # bytes the batch may still take, framing included
        added = 0
        outcome = 0
        try:
            for piece in self.iterator:
                n = len(piece)
                if not n:  # (WAIT is empty too)
                    if piece is WAIT:
                        outcome = WAITING
                        break
                    continue
                batch += (CHUNK_SIZE_LINE % n, piece, CHUNK_END)
                added += n
                left -= n + _FRAMING_MAX
                if left <= 0:
                    room -= _append_batch(out, batch)
                    batch = []
                    if room <= 0:  # high water
                        break
                    left = min(room, BATCH)
            else:
                batch.append(self.exchange.finish_body())
                outcome = ENDED
        except Exception as exc:
            self.failure = exc
            outcome = FAILED
        try:
            _append_batch(out, batch)
        except TypeError as exc:  # a piece that is not bytes
            self.failure = exc
            return FAILED
        self.total += added
        return outcome or added


def _append_batch(out: WriteBuffer, batch: list[bytes]) -> int:
    """Put a chunked batch into `out`, joined; the bytes added.  A piece of a batch's
    size or more (the last of its batch: it fills it) goes in uncopied."""
    before = out.size
    if len(batch) >= 3 and len(batch[-2]) >= BATCH and _bytes_like(batch[-2]):
        out.append(b"".join(batch[:-2]))  # the chunks before it and its size line
        out.append(batch[-2])
        out.append(batch[-1])
    elif batch:
        out.append(b"".join(batch))
    return out.size - before


def _append_joined(out: WriteBuffer, batch: list[bytes]) -> None:
    if len(batch) == 1 and _bytes_like(batch[0]):
        out.append(batch[0])  # (one piece, however big: not copied)
    elif batch:
        out.append(b"".join(batch))  # (TypeError for a piece that is not bytes)


def _bytes_like(piece) -> bool:
    return isinstance(piece, (bytes, bytearray, memoryview))
