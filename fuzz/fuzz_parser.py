"""atheris (libFuzzer) harness for `selserve.http.parser.RequestParser`.

Each input picks parser limits, split points and whether EOF follows from its first
bytes, and feeds the rest to a parser in those pieces, draining events after every feed
the way a connection does (`start_next_request` on PAUSED). What may come out: `Request`,
`Data`, `EndOfMessage`, the NEED_DATA / PAUSED / CLOSED sentinels, or `HTTPError` with a
status the server knows how to answer -- after which the parser must stay dead. Anything
else, an event that breaks the framing invariants, or more events than the bytes can
justify (a parser that loops) is a crash. A second parser fed the same bytes in one piece
must tell the same story (the parser promises split-independence).

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
        CLOSED,
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


def TestOneInput(data: bytes) -> None:  # noqa: N802 - the name atheris looks for
    fdp = atheris.FuzzedDataProvider(data)
    parser_limits = limits(fdp)
    eof = fdp.ConsumeBool()
    cuts = sorted(
        fdp.ConsumeIntInRange(0, 4096) for _ in range(fdp.ConsumeIntInRange(0, MAX_SPLITS))
    )
    payload = fdp.ConsumeBytes(fdp.remaining_bytes())
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


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
