"""atheris (libFuzzer) harness for `selserve.http.parser.RequestParser`.

Each input picks parser limits, split points and whether EOF follows from its first
bytes, and feeds the rest to a parser in those pieces, draining events after every feed
the way a connection does (`start_next_request` on PAUSED). What may come out: `Request`,
`Data`, `EndOfMessage`, the NEED_DATA / PAUSED / CLOSED sentinels, or `HTTPError` with a
status the server knows how to answer -- after which the parser must stay dead. Anything
else, an event that breaks the framing invariants, or more events than the bytes can
justify (a parser that loops) is a crash. A second parser fed the same bytes in one piece
must tell the same story (the parser promises split-independence).

One input in four instead builds a chunked body (chunk sizes, extensions of any length,
trailers, maybe one bare LF) under small random limits, keeping its own account of the
framing budget from the rule next to `CHUNK_FRAMING_SHARE`. The parser must refuse with 413
exactly when that account goes over the budget (or the data over max_body_size) first, and
must never accept a body whose framing went over it.

Run: see fuzz/README.md. Never part of the test suite (it needs libFuzzer and minutes).
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# Not atheris's "RegEx" hook: its pattern proxy does not take the pos/endpos arguments
# the parser passes to search() and match(). "str" traces str comparisons.
atheris.enabled_hooks.add("str")

with atheris.instrument_imports(include=["selserve"]):
    from selserve.http.errors import HTTPError
    from selserve.http.parser import (
        CHUNK_FRAMING_SHARE,
        CHUNK_FRAMING_SLACK,
        CLOSED,
        MAX_CHUNK_LINE,
        NEED_DATA,
        PAUSED,
        Data,
        EndOfMessage,
        Request,
        RequestParser,
    )

STATUSES = {400, 408, 413, 414, 417, 431, 501, 505}
MAX_SPLITS = 12


class ParserLoops(AssertionError):
    pass


def limits(fdp: atheris.FuzzedDataProvider) -> dict:
    """Small limits half of the time, so that the limit paths are reachable."""
    if fdp.ConsumeBool():
        return {}
    return {
        "max_request_line": fdp.ConsumeIntInRange(1, 256),
        "max_header_bytes": fdp.ConsumeIntInRange(1, 512),
        "max_headers": fdp.ConsumeIntInRange(0, 8),
        "max_body_size": fdp.ConsumeIntInRange(0, 1024),
    }


def check_request(event: Request) -> None:
    assert isinstance(event.method, str) and event.method, event
    assert isinstance(event.target, str) and event.target, event
    assert event.version in ("HTTP/1.0", "HTTP/1.1"), event
    assert all(isinstance(n, str) and isinstance(v, str) for n, v in event.headers), event
    assert all(n == n.lower() for n, _ in event.headers), event
    assert not any(c in v for _, v in event.headers for c in "\r\n\0"), event
    assert not (event.chunked and event.content_length is not None), event
    assert event.content_length is None or event.content_length >= 0, event


class Run:
    """One parser and the story it tells: a list of normalised events."""

    def __init__(self, parser_limits: dict, budget: int) -> None:
        self.parser = RequestParser(**parser_limits)
        self.limits = parser_limits
        self.story: list = []
        self.dead: HTTPError | None = None
        self.closed = False
        self.budget = budget  # next_event calls allowed in all
        self.body_left: int | None = None  # Content-Length bytes still owed
        self.in_message = False

    def _record(self, item) -> None:
        # Consecutive Data merge: how the body is cut into pieces may depend on the feeds.
        if type(item) is bytes and self.story and type(self.story[-1]) is bytes:
            self.story[-1] += item
        else:
            self.story.append(item)

    def drain(self) -> None:
        parser = self.parser
        while self.dead is None and not self.closed:
            self.budget -= 1
            if self.budget < 0:
                raise ParserLoops(f"more next_event calls than the input justifies: {self.story}")
            try:
                event = parser.next_event()
            except HTTPError as exc:
                assert exc.status in STATUSES, f"unexpected status {exc!r}"
                assert exc.detail.isascii() and not any(c in exc.detail for c in "\r\n"), exc
                self.dead = exc
                self.story.append(("error", exc.status))
                return
            kind = type(event)
            if kind is Request:
                assert not self.in_message, f"Request inside a message: {event!r}"
                check_request(event)
                self.in_message = True
                self.body_left = event.content_length if not event.chunked else None
                max_body = self.limits.get("max_body_size", 10 * 1024 * 1024)
                assert event.content_length is None or event.content_length <= max_body, event
                self.story.append(("request", *(getattr(event, a) for a in Request.__slots__)))
            elif kind is Data:
                assert self.in_message, f"Data outside a message: {event!r}"
                assert type(event.data) is bytes and event.data, f"empty or odd Data {event!r}"
                if self.body_left is not None:
                    self.body_left -= len(event.data)
                    assert self.body_left >= 0, "more body than Content-Length"
                self._record(event.data)
            elif kind is EndOfMessage:
                assert self.in_message, "EndOfMessage outside a message"
                assert not self.body_left, f"EndOfMessage with {self.body_left} body bytes owed"
                self.in_message = False
                self.story.append(("end", repr(event.trailers)))
            elif event is PAUSED:
                assert not self.in_message, "PAUSED inside a message"
                parser.start_next_request()
            elif event is NEED_DATA:
                return
            elif event is CLOSED:
                assert not self.in_message, "CLOSED inside a message"
                self.closed = True
                self.story.append(("closed",))
                return
            else:
                raise AssertionError(f"next_event returned {event!r}")

    def check_dead(self) -> None:
        """After an HTTPError the parser stays dead: the same error, feed or no feed."""
        if self.dead is None:
            return
        self.parser.feed(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        try:
            event = self.parser.next_event()
        except HTTPError as again:
            assert again.status == self.dead.status, (self.dead, again)
        else:
            raise AssertionError(f"dead parser produced {event!r} after {self.dead!r}")


def tell(payload: bytes, parser_limits: dict, cuts: list[int], eof: bool) -> Run:
    """Feed payload split at cuts, then whole; both must tell the same story."""
    # Every event but the sentinels consumes at least one byte or ends a message that did.
    budget = 4 * len(payload) + 4 * (len(cuts) + 3)

    split = Run(parser_limits, budget)
    start = 0
    for cut in [*(c for c in cuts if c < len(payload)), len(payload)]:
        piece = payload[start:cut]
        start = max(start, cut)
        if split.dead is None and not split.closed:
            split.parser.feed(piece)
            split.drain()
    if eof and split.dead is None and not split.closed:
        split.parser.feed_eof()
        split.drain()
    split.check_dead()

    whole = Run(parser_limits, budget)
    whole.parser.feed(payload)
    whole.drain()
    if eof and whole.dead is None and not whole.closed:
        whole.parser.feed_eof()
        whole.drain()
    assert split.story == whole.story, (
        f"split at {cuts} and whole disagree:\n split {split.story}\n whole {whole.story}"
    )
    return split


def split_points(fdp: atheris.FuzzedDataProvider, top: int) -> list[int]:
    count = fdp.ConsumeIntInRange(0, MAX_SPLITS)
    return sorted(fdp.ConsumeIntInRange(0, top) for _ in range(count))


CHUNKED_HEAD = b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
CHUNKED_HEAD_SECTION = len(b"Host: a\r\nTransfer-Encoding: chunked\r\n\r\n")


class ChunkedBody:
    """A chunked body built piece by piece, with its own account of the framing budget
    (from the rule, not from the parser's code) and of what the parser must answer."""

    def __init__(self, max_body_size: int, max_header_bytes: int, bare_lf_at: int) -> None:
        self.budget = max_body_size // CHUNK_FRAMING_SHARE + CHUNK_FRAMING_SLACK
        self.max_body_size = max_body_size
        self.max_header_bytes = max_header_bytes
        self.bare_lf_at = bare_lf_at  # which line end is a bare LF (-1: none)
        self.line_ends = 0
        self.wire = bytearray()
        self.framing = 0
        self.data = 0
        self.over_budget = False  # framing was ever over the budget
        # The first refusal the body must meet: a status, or "any" for a malformed body
        # (bare LF, over-long chunk line), whose status depends on which rule sees it first.
        self.expected: int | str | None = None

    def refuse(self, status: int | str) -> None:
        if self.expected is None:
            self.expected = status

    def room(self) -> int:
        return self.budget - self.framing

    def eol(self) -> bytes:
        bare = self.line_ends == self.bare_lf_at
        self.line_ends += 1
        if bare:
            self.refuse("any")
        return b"\n" if bare else b"\r\n"

    def frame(self, raw: bytes) -> None:
        if len(raw) > self.room():
            self.over_budget = True
            self.refuse(413)
        self.wire += raw
        self.framing += len(raw)

    def chunk(self, data: bytes, ext: bytes) -> None:
        line = b"%x%s" % (len(data), ext) + self.eol()
        if len(line) > MAX_CHUNK_LINE:
            self.refuse("any")
        self.frame(line)
        if data:
            if self.data + len(data) > self.max_body_size:
                self.refuse(413)
            self.wire += data
            self.data += len(data)
            self.frame(self.eol())

    def trailers(self, fields: list[bytes]) -> None:
        if not fields:
            self.frame(self.eol())
            return
        section = b"".join(f + self.eol() for f in fields) + self.eol()
        room = self.room()
        if len(section) > min(self.max_header_bytes, room):
            # Both bounds apply to one growing count: the smaller is met first.
            self.refuse(431 if self.max_header_bytes <= room else 413)
        self.frame(section)


def extensions(fdp: atheris.FuzzedDataProvider) -> bytes:
    """Zero to three chunk extensions, a few of them kilobytes long."""
    out = b""
    for _ in range(fdp.ConsumeIntInRange(0, 3)):
        value = b"v" * fdp.ConsumeIntInRange(0, fdp.PickValueInList([8, 300, 2100]))
        kind = fdp.ConsumeIntInRange(0, 2)
        out += (b";e", b";e=v" + value, b' ; q="' + value + b'"')[kind]
    return out


def check_chunked_budget(fdp: atheris.FuzzedDataProvider) -> None:
    max_body_size = fdp.ConsumeIntInRange(0, 2048)
    max_headers = fdp.ConsumeIntInRange(2, 8)
    max_header_bytes = CHUNKED_HEAD_SECTION + fdp.ConsumeIntInRange(0, 512)
    bare_lf_at = fdp.ConsumeIntInRange(-1, 24) if fdp.ConsumeBool() else -1
    body = ChunkedBody(max_body_size, max_header_bytes, bare_lf_at)
    for _ in range(fdp.ConsumeIntInRange(0, 8)):
        body.chunk(b"d" * fdp.ConsumeIntInRange(1, 600), extensions(fdp))
    body.chunk(b"", extensions(fdp))  # the last-chunk
    count = fdp.ConsumeIntInRange(0, max_headers - 2)
    body.trailers([b"T%d: " % i + b"t" * fdp.ConsumeIntInRange(0, 200) for i in range(count)])

    payload = CHUNKED_HEAD + bytes(body.wire)
    parser_limits = {
        "max_header_bytes": max_header_bytes,
        "max_headers": max_headers,
        "max_body_size": max_body_size,
    }
    run = tell(payload, parser_limits, split_points(fdp, len(payload)), eof=True)
    accepted = any(item[0] == "end" for item in run.story if type(item) is tuple)
    assert not (accepted and body.over_budget), f"accepted over-budget framing {run.story}"
    if body.expected is None:
        assert accepted and run.dead is None, f"refused a body within its limits: {run.dead!r}"
    elif body.expected == "any":
        assert run.dead is not None, "accepted a malformed chunked body"
    else:
        assert run.dead is not None and run.dead.status == body.expected, (
            f"expected {body.expected}, got {run.dead!r}"
        )


def TestOneInput(data: bytes) -> None:  # noqa: N802 - the name atheris looks for
    fdp = atheris.FuzzedDataProvider(data)
    if fdp.ConsumeIntInRange(0, 3) == 0:
        check_chunked_budget(fdp)
        return
    parser_limits = limits(fdp)
    eof = fdp.ConsumeBool()
    cuts = split_points(fdp, 4096)
    tell(fdp.ConsumeBytes(fdp.remaining_bytes()), parser_limits, cuts, eof)


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
