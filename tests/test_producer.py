"""BodyProducer and ChunkedProducer (producer.py): a streamed body pulled into a write
buffer, framed by the exchange's writer, joined into few buffer entries and bounded by
high water.  No socket: the buffer is inspected, never flushed."""

from __future__ import annotations

import itertools

import pytest

from selserve.buffer import WriteBuffer
from selserve.http.exchange import ChunkedWriter, CloseDelimitedWriter, ContentLengthWriter
from selserve.http.response import LAST_CHUNK, chunk
from selserve.producer import (
    BATCH,
    ENDED,
    FAILED,
    WAITING,
    BodyProducer,
    ChunkedProducer,
    producer_for,
)
from selserve.workers import WAIT

HIGH = 256 * 1024


class FakeExchange:
    """What the producer uses of a ServerExchange: its writer and finish_body()."""

    def __init__(self, writer):
        self.writer = writer

    def finish_body(self) -> bytes:
        return self.writer.finish()


def producer(pieces, writer=None) -> BodyProducer:
    return producer_for(iter(pieces), FakeExchange(writer or ChunkedWriter()))


def entries(out: WriteBuffer) -> list:
    return list(out._pieces)


def buffered(out: WriteBuffer) -> bytes:
    return b"".join(bytes(piece) for piece in entries(out))


def test_small_pieces_are_framed_in_order_and_joined_into_one_entry():
    pieces = [bytes([65 + n]) * 1024 for n in range(20)]
    out = WriteBuffer(HIGH, HIGH // 4)
    assert producer(pieces).fill(out) == ENDED
    assert buffered(out) == b"".join(map(chunk, pieces)) + LAST_CHUNK
    assert len(entries(out)) == 1 and out.size == len(buffered(out))


def test_chunked_and_unframed_bodies_have_producers_of_their_own():
    assert type(producer([], ChunkedWriter())) is ChunkedProducer
    assert type(producer([], CloseDelimitedWriter())) is BodyProducer
    assert type(producer([], ContentLengthWriter(3))) is BodyProducer


@pytest.mark.parametrize("size", [1, 1000, 5000])
def test_a_long_stream_of_small_pieces_makes_entries_of_about_a_batch(size):
    framed = len(chunk(b"x" * size))
    pieces = [b"x" * size] * (200_000 // framed)  # about 200 KB framed: below high water
    out = WriteBuffer(HIGH, HIGH // 4)
    assert producer(pieces).fill(out) == ENDED
    sizes = [len(entry) for entry in entries(out)]
    # The chunked loop counts each piece's framing at its bound (12 bytes), so an
    # entry may fall short of a batch by the difference: under 1% at 1 KB.
    short = (BATCH // (size + 12) + 1) * (size + 12 - framed)
    assert all(BATCH - short <= s < BATCH + framed for s in sizes[:-1])
    assert len(sizes) <= -(-sum(sizes) // (BATCH - short))
    assert buffered(out) == b"".join(map(chunk, pieces)) + LAST_CHUNK


def test_a_piece_alone_in_its_batch_goes_in_uncopied():
    big = bytearray(b"y" * (BATCH + 1))
    out = WriteBuffer(HIGH, HIGH // 4)
    body = producer([big], CloseDelimitedWriter())
    assert body.fill(out) == ENDED and body.total == len(big)
    assert entries(out)[0] is big


def test_a_big_chunk_goes_in_uncopied_between_its_size_line_and_crlf():
    big = bytearray(b"y" * (BATCH + 1))
    out = WriteBuffer(HIGH, HIGH // 4)
    body = producer([b"small", big])
    assert body.fill(out) == ENDED and body.total == len(big) + 5
    assert any(entry is big for entry in entries(out))
    assert buffered(out) == chunk(b"small") + chunk(big) + LAST_CHUNK


@pytest.mark.parametrize("size", [1, 1024, 100_000])
@pytest.mark.parametrize("high", [1, 100 * 1024])
@pytest.mark.parametrize("writer", [ChunkedWriter, CloseDelimitedWriter])
def test_fill_stops_at_high_water_and_reports_what_it_added(writer, high, size):
    out = WriteBuffer(high, high // 4)
    piece = b"z" * size
    body = producer(itertools.repeat(piece), writer())  # endless
    added = body.fill(out)
    assert added > 0 and body.total == added
    framed = writer.frame(piece)
    assert high <= out.size < high + len(framed)
    assert buffered(out) == framed * (added // size)
    assert body.fill(out) == 0 and out.size < high + len(framed)  # full: nothing pulled


@pytest.mark.parametrize("writer", [ChunkedWriter, CloseDelimitedWriter])
def test_nothing_more_yet_keeps_what_came_before(writer):
    out = WriteBuffer(HIGH, HIGH // 4)
    frame = writer.frame
    body = producer([b"one", b"", WAIT, b"two", b"", b"three"], writer())
    assert body.fill(out) == WAITING
    assert buffered(out) == frame(b"one") and body.total == 3
    assert body.fill(out) == ENDED
    assert buffered(out) == frame(b"one") + frame(b"two") + frame(b"three") + writer().finish()
    assert body.total == 11


def test_a_failing_body_keeps_what_came_before_and_says_why():
    def failing():
        yield b"kept"
        raise ValueError("app broke")

    out = WriteBuffer(HIGH, HIGH // 4)
    body = producer(failing())
    assert body.fill(out) == FAILED
    assert buffered(out) == chunk(b"kept") and isinstance(body.failure, ValueError)


@pytest.mark.parametrize("length", [5, 6, 8, 10])
def test_a_content_length_body_ends_at_its_length(length):
    writer = ContentLengthWriter(length)
    out = WriteBuffer(HIGH, HIGH // 4)
    assert producer([b"abc", b"def", b"ghi"], writer).fill(out) == ENDED
    assert buffered(out) == b"abcdefghi"[:length]
    assert (writer.problem is None) == (length == 6)


@pytest.mark.parametrize("writer", [ChunkedWriter, CloseDelimitedWriter])
@pytest.mark.parametrize(
    "pieces", [["text"], [b"kept", "text"], [b"kept", "t" * (BATCH + 1)], ["t" * (BATCH + 1)]]
)
def test_a_piece_that_is_not_bytes_fails_the_body(writer, pieces):
    out = WriteBuffer(HIGH, HIGH // 4)
    body = producer(pieces, writer())
    assert body.fill(out) == FAILED and isinstance(body.failure, TypeError)
    assert all(isinstance(entry, (bytes, bytearray, memoryview)) for entry in entries(out))
