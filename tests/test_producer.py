"""BodyProducer (producer.py): a streamed body pulled into a write buffer, framed by
the exchange's writer, joined into few buffer entries and bounded by high water.
No socket: the buffer is inspected, never flushed."""

from __future__ import annotations

import itertools

import pytest

from selserve.buffer import WriteBuffer
from selserve.http.exchange import ChunkedWriter, CloseDelimitedWriter, ContentLengthWriter
from selserve.http.response import LAST_CHUNK, chunk
from selserve.producer import BATCH, ENDED, FAILED, WAITING, BodyProducer
from selserve.workers import WAIT

HIGH = 256 * 1024


class FakeExchange:
    """What the producer uses of a ServerExchange: its writer and finish_body()."""

    def __init__(self, writer):
        self.writer = writer

    def finish_body(self) -> bytes:
        return self.writer.finish()


def producer(pieces, writer=None) -> BodyProducer:
    return BodyProducer(iter(pieces), FakeExchange(writer or ChunkedWriter()))


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


def test_a_long_stream_of_small_pieces_makes_entries_of_about_a_batch():
    pieces = [b"x" * 1000] * 200  # about 200 KB framed: below high water
    out = WriteBuffer(HIGH, HIGH // 4)
    assert producer(pieces).fill(out) == ENDED
    sizes = [len(entry) for entry in entries(out)]
    assert len(sizes) == -(-sum(sizes) // BATCH) and all(s >= BATCH for s in sizes[:-1])
    assert buffered(out) == b"".join(map(chunk, pieces)) + LAST_CHUNK


def test_a_piece_alone_in_its_batch_goes_in_uncopied():
    big = bytearray(b"y" * (BATCH + 1))
    out = WriteBuffer(HIGH, HIGH // 4)
    body = producer([big], CloseDelimitedWriter())
    assert body.fill(out) == ENDED and body.total == len(big)
    assert entries(out)[0] is big


def test_fill_stops_at_high_water_and_reports_what_it_added():
    out = WriteBuffer(100 * 1024, 25 * 1024)
    body = producer(itertools.repeat(b"z" * 1024))  # endless
    added = body.fill(out)
    assert added > 0 and body.total == added
    assert 100 * 1024 <= out.size < 100 * 1024 + len(chunk(b"z" * 1024))


def test_nothing_more_yet_keeps_what_came_before():
    out = WriteBuffer(HIGH, HIGH // 4)
    body = producer([b"one", b"", WAIT, b"two"])
    assert body.fill(out) == WAITING
    assert buffered(out) == chunk(b"one") and body.total == 3
    assert body.fill(out) == ENDED
    assert buffered(out) == chunk(b"one") + chunk(b"two") + LAST_CHUNK


def test_a_failing_body_keeps_what_came_before_and_says_why():
    def failing():
        yield b"kept"
        raise ValueError("app broke")

    out = WriteBuffer(HIGH, HIGH // 4)
    body = BodyProducer(failing(), FakeExchange(ChunkedWriter()))
    assert body.fill(out) == FAILED
    assert buffered(out) == chunk(b"kept") and isinstance(body.failure, ValueError)


@pytest.mark.parametrize("length", [5, 6, 8, 10])
def test_a_content_length_body_ends_at_its_length(length):
    writer = ContentLengthWriter(length)
    out = WriteBuffer(HIGH, HIGH // 4)
    assert producer([b"abc", b"def", b"ghi"], writer).fill(out) == ENDED
    assert buffered(out) == b"abcdefghi"[:length]
    assert (writer.problem is None) == (length == 6)
