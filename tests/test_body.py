"""http/body.py's RequestBody: memory while small, a file beyond, bounded however it is cut."""

from __future__ import annotations

import errno
import io
import tempfile
import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from selserve.http.body import RequestBody
from selserve.http.parser import NEED_DATA, Data, EndOfMessage, RequestParser


def test_a_body_in_one_piece_is_handed_over_uncopied():
    piece = b"x" * 1000
    body = RequestBody(spill_threshold=1 << 20, open_file=tempfile.TemporaryFile)
    body.append(piece)
    assert body.take() is piece


def test_an_empty_body_is_empty_bytes():
    assert RequestBody(spill_threshold=10, open_file=tempfile.TemporaryFile).take() == b""


@given(pieces=st.lists(st.binary(min_size=1, max_size=50), max_size=40))
def test_pieces_come_back_joined_in_order(pieces):
    body = RequestBody(spill_threshold=1 << 20, open_file=tempfile.TemporaryFile)
    for piece in pieces:
        body.append(piece)
    assert body.take() == b"".join(pieces)


@given(
    pieces=st.lists(st.binary(min_size=1, max_size=50), min_size=1, max_size=40),
    threshold=st.integers(min_value=0, max_value=300),
)
def test_a_body_past_the_threshold_is_a_file_at_its_start(pieces, threshold):
    body = RequestBody(spill_threshold=threshold, open_file=tempfile.TemporaryFile)
    for piece in pieces:
        body.append(piece)
    whole = b"".join(pieces)
    taken = body.take()
    if len(whole) > threshold:
        assert body.spilled and taken.read() == whole
    else:
        assert not body.spilled and taken == whole
    body.discard()


def test_tiny_pieces_cost_about_their_payload_in_memory():
    # 250,000 two-byte chunks once cost 28 bytes of memory per body byte (a list of
    # small bytes objects); gathered, the body costs its payload plus growth slack.
    payload = 250_000 * 2
    body = RequestBody(spill_threshold=1 << 20, open_file=tempfile.TemporaryFile)
    pieces = [b"ab"] * 250_000  # one shared object: only the body's own memory is traced
    tracemalloc.start()
    try:
        for piece in pieces:
            body.append(piece)
        _, peak = tracemalloc.get_traced_memory()
        taken = body.take()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert taken == b"ab" * 250_000
    assert peak <= 2.5 * payload, f"{peak} bytes traced for a {payload}-byte body"


class _FullDisk(io.BytesIO):
    def write(self, data) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")


def test_a_spill_file_that_cannot_be_written_raises_to_the_caller():
    body = RequestBody(spill_threshold=4, open_file=_FullDisk)
    body.append(b"abc")
    with pytest.raises(OSError):
        body.append(b"defgh")
    body.discard()  # and the file it opened is closed, without raising
    assert body.size == 0 and not body.spilled


class _CannotClose(io.BytesIO):
    def close(self) -> None:
        if not self.closed:  # (once: the collector closes it again, quietly)
            super().close()
            raise OSError(errno.ENOSPC, "flush failed")


def test_discard_never_raises():
    body = RequestBody(spill_threshold=0, open_file=_CannotClose)
    body.append(b"x")
    body.discard()
    assert not body.spilled


def test_discard_closes_the_spill_file():
    files = []

    def opener():
        files.append(tempfile.TemporaryFile())  # noqa: SIM115 (closed by discard)
        return files[-1]

    body = RequestBody(spill_threshold=1, open_file=opener)
    body.append(b"abc")
    body.discard()
    assert files[0].closed


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    payload=st.integers(1, 60_000),
    chunk=st.integers(1, 4096),
    feed=st.integers(1, 65536),
)
def test_a_chunked_body_costs_its_payload_plus_a_constant_however_it_is_cut(payload, chunk, feed):
    # Parser and body together, as a connection drives them: bytes in pieces of `feed`
    # (one recv each), chunks of `chunk` bytes. What the client makes us hold is the
    # payload (twice at most, while the buffer grows) plus what one read can carry.
    data = b"p" * payload
    wire = (
        b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"".join(
            b"%x\r\n%s\r\n" % (len(data[i : i + chunk]), data[i : i + chunk])
            for i in range(0, payload, chunk)
        )
        + b"0\r\n\r\n"
    )
    pieces = [wire[i : i + feed] for i in range(0, len(wire), feed)]
    parser = RequestParser()
    body = RequestBody(spill_threshold=1 << 20, open_file=tempfile.TemporaryFile)
    tracemalloc.start()
    try:
        for piece in pieces:
            parser.feed(piece)
            while (event := parser.next_event()) is not NEED_DATA:
                if type(event) is Data:
                    body.append(event.data)
                elif type(event) is EndOfMessage:
                    break
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert body.take() == data
    assert peak <= 2 * payload + 2 * feed + 16 * 1024, f"{peak} bytes traced"
