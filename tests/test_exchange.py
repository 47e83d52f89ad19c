"""http/exchange.py's ServerExchange, sans I/O: bytes in, events and bytes out.

No socket, thread or server: every test builds an exchange, feeds it bytes (often
split at every position), drives it through its public methods the way
connection.py does, and looks at the bytes it returns and the state it is in.
Request bodies spill to in-memory fakes (`SpillFiles`, `FullDisk`) that record
what was asked of them.
"""

from __future__ import annotations

import errno
import io
import tempfile

import pytest
from helpers import chunked_body, get_request, post_request
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from selserve.app import Request
from selserve.http.exchange import (
    APP,
    BODY,
    CLOSED,
    CLOSED_STATE,
    HEAD,
    HEAD_ONLY,
    IDLE,
    NEED_DATA,
    READY,
    REFUSED,
    SENDING,
    SPARE_PARSERS_MAX,
    TRANSITIONS,
    ExchangeError,
    ExchangeSettings,
    ServerExchange,
)
from selserve.http.response import UNANNOUNCED, InvalidHeader

FIXED = b"Date: X\r\nServer: t\r\n"
PEER = ("192.0.2.7", 40000)
LOCAL = ("192.0.2.1", 8080)

GET = get_request()  # GET / HTTP/1.1, Host: test
POST = post_request("/submit", b"hello")
POST_HEAD = POST[: -len(b"hello")]

# --- helpers ------------------------------------------------------------------------------


class SpillFiles:
    """An `open_spill_file` that hands out in-memory files and keeps every one it opened."""

    def __init__(self) -> None:
        self.opened: list[io.BytesIO] = []

    def __call__(self) -> io.BytesIO:
        file = io.BytesIO()
        self.opened.append(file)
        return file


class FullDisk:
    """A spill file on a full disk: every write raises ENOSPC; close() is recorded."""

    def __init__(self) -> None:
        self.error = OSError(errno.ENOSPC, "No space left on device")
        self.closed = False

    def write(self, data) -> int:
        raise self.error

    def close(self) -> None:
        self.closed = True


def make(open_spill_file=None, **options) -> ServerExchange:
    """A fresh exchange as connection.py builds it, with deterministic fixed lines."""
    settings_ = ExchangeSettings(
        open_spill_file=open_spill_file if open_spill_file is not None else SpillFiles(),
        fixed=FIXED,
        **options,
    )
    return ServerExchange(settings_, request_class=Request, peer=PEER, local=LOCAL)


def settle(exchange: ServerExchange):
    """next_event(), reading the body when a head arrives (the driver's usual choice)."""
    event = exchange.next_event()
    if event is HEAD:
        exchange.read_body()
        event = exchange.next_event()
    return event


def feed(exchange: ServerExchange, *pieces: bytes):
    """Receive pieces one at a time, settling after each; the first event that is not
    NEED_DATA (the rest of the pieces are not fed), else NEED_DATA."""
    for piece in pieces:
        exchange.receive(piece)
        event = settle(exchange)
        if event is not NEED_DATA:
            return event
    return NEED_DATA


def ready(raw: bytes, **kwargs) -> ServerExchange:
    """An exchange holding the complete request raw (READY, its body read)."""
    exchange = make(**kwargs)
    event = feed(exchange, raw)
    assert event is READY, event
    return exchange


def answered(raw: bytes, status: int = 200, headers=(), body: bytes = b"ok") -> ServerExchange:
    """An exchange whose request raw has been answered with a known body (SENDING)."""
    exchange = ready(raw)
    exchange.respond(status, list(headers), len(body), body)
    return exchange


def streaming(raw: bytes, headers=()) -> ServerExchange:
    """An exchange answering raw with a streamed body (body_length None)."""
    exchange = ready(raw)
    exchange.respond(200, list(headers), None)
    return exchange


def split(answer: bytes) -> tuple[list[bytes], bytes]:
    """(head lines, body) of an answer."""
    head, _, body = answer.partition(b"\r\n\r\n")
    return head.split(b"\r\n"), body


def summary(request: Request) -> tuple:
    return (request.method, request.target, request.version, request.headers, request.body)


def split_at(raw: bytes, cuts) -> list[bytes]:
    points = sorted({0, len(raw), *(c for c in cuts if 0 <= c <= len(raw))})
    return [raw[a:b] for a, b in zip(points, points[1:], strict=False)]


# --- the state table ----------------------------------------------------------------------
#
# One way to reach each state that a move starts from, and for each move in TRANSITIONS
# one way to make it through the public methods. The moves are parametrised over the
# table itself: a transition added to the table without a scenario here fails (KeyError).


def at_idle() -> ServerExchange:
    return make()


def at_head_only() -> ServerExchange:
    exchange = make()
    exchange.receive(POST_HEAD)
    exchange.next_event()
    return exchange


def at_body() -> ServerExchange:
    exchange = at_head_only()
    exchange.read_body()
    return exchange


def at_app() -> ServerExchange:
    exchange = make()
    exchange.receive(GET)
    exchange.next_event()
    return exchange


def at_sending() -> ServerExchange:
    exchange = at_app()
    exchange.respond(200, [], 2, b"ok")
    return exchange


def at_closed() -> ServerExchange:
    exchange = make()
    exchange.receive_eof()
    exchange.next_event()
    return exchange


REACH = {
    IDLE: at_idle,
    HEAD_ONLY: at_head_only,
    BODY: at_body,
    APP: at_app,
    SENDING: at_sending,
    CLOSED_STATE: at_closed,
}


def send_an_answer_that_closes(exchange: ServerExchange) -> None:
    exchange.keep_alive = False  # (what respond() decided for a head saying close)
    exchange.response_sent()


def receive_and_look(data: bytes):
    def move(exchange: ServerExchange) -> None:
        exchange.receive(data)
        exchange.next_event()

    return move


def eof_and_look(exchange: ServerExchange) -> None:
    exchange.receive_eof()
    exchange.next_event()


MOVES = {
    (IDLE, "head"): receive_and_look(POST_HEAD),
    (IDLE, "request"): receive_and_look(GET),
    (IDLE, "refuse"): receive_and_look(b"GET\r\n\r\n"),
    (IDLE, "eof"): eof_and_look,
    (HEAD_ONLY, "respond"): lambda exchange: exchange.respond(413, [], 0),
    (HEAD_ONLY, "read-body"): lambda exchange: exchange.read_body(),
    (BODY, "request"): receive_and_look(b"hello"),
    (BODY, "refuse"): eof_and_look,
    (APP, "respond"): lambda exchange: exchange.respond(200, [], 2, b"ok"),
    (APP, "refuse"): lambda exchange: exchange.refuse(503, "application too slow"),
    (SENDING, "abandon"): lambda exchange: exchange.abandon(),
    (SENDING, "keep-alive"): lambda exchange: exchange.response_sent(),
    (SENDING, "close"): send_an_answer_that_closes,
}


@pytest.mark.parametrize("move", list(TRANSITIONS), ids="{0[0]}-{0[1]}".format)
def test_every_move_in_the_table_leads_where_the_table_says(move):
    exchange = REACH[move[0]]()
    before = exchange.state
    MOVES[move](exchange)
    assert (before, exchange.state) == (move[0], TRANSITIONS[move])


def call(name: str, *args):
    return lambda exchange: getattr(exchange, name)(*args)


FORBIDDEN = [
    (IDLE, "respond", call("respond", 200, [], 0)),
    (IDLE, "read_body", call("read_body")),
    (IDLE, "abandon", call("abandon")),
    (IDLE, "response_sent", call("response_sent")),
    (HEAD_ONLY, "abandon", call("abandon")),
    (HEAD_ONLY, "refuse", call("refuse", 408, "too slow")),
    (HEAD_ONLY, "response_sent", call("response_sent")),
    (BODY, "respond", call("respond", 200, [], 0)),
    (BODY, "read_body", call("read_body")),
    (BODY, "response_sent", call("response_sent")),
    (APP, "read_body", call("read_body")),
    (APP, "abandon", call("abandon")),
    (APP, "response_sent", call("response_sent")),
    (SENDING, "respond", call("respond", 200, [], 0)),
    (SENDING, "read_body", call("read_body")),
    (SENDING, "refuse", call("refuse", 503, "again")),
    (CLOSED_STATE, "respond", call("respond", 200, [], 0)),
    (CLOSED_STATE, "read_body", call("read_body")),
    (CLOSED_STATE, "refuse", call("refuse", 408, "too slow")),
    (CLOSED_STATE, "response_sent", call("response_sent")),
]


@pytest.mark.parametrize(
    ("state", "action"),
    [(state, action) for state, _, action in FORBIDDEN],
    ids=[f"{name}-while-{state}" for state, name, _ in FORBIDDEN],
)
def test_a_move_the_table_does_not_allow_raises_exchange_error(state, action):
    exchange = REACH[state]()
    with pytest.raises(ExchangeError):
        action(exchange)


def test_a_move_the_table_does_not_allow_leaves_the_state_as_it_was():
    exchange = at_app()
    with pytest.raises(ExchangeError):
        exchange.read_body()
    assert exchange.state is APP


@pytest.mark.parametrize("state", [HEAD_ONLY, APP, SENDING, CLOSED_STATE])
def test_next_event_outside_idle_and_body_is_need_data_whatever_is_buffered(state):
    exchange = REACH[state]()
    exchange.receive(GET)
    assert exchange.next_event() is NEED_DATA


def test_heads_are_parsed_as_the_request_class_the_driver_gives():
    exchange = make()
    exchange.receive(GET)
    exchange.next_event()
    assert type(exchange.request) is Request


# --- idle between requests: the parser lent out ------------------------------------------


def test_an_idle_exchange_lends_its_parser_and_takes_one_back_when_bytes_come():
    exchange = answered(GET)
    parser = exchange.parser
    assert exchange.response_sent() is True
    assert exchange.parser is None and exchange.settings.spare_parsers == [parser]
    assert exchange.next_event() is NEED_DATA and not exchange.head_started
    exchange.receive(GET)
    assert exchange.parser is parser and exchange.settings.spare_parsers == []
    assert exchange.next_event() is READY and exchange.request.path == "/"


def test_a_lent_parser_serves_another_exchange_as_good_as_new():
    first = answered(POST)
    first.response_sent()
    second = ServerExchange(first.settings, request_class=Request, peer=PEER, local=LOCAL)
    second.receive(GET.replace(b"GET / ", b"GET /other "))
    assert second.parser is not None and first.settings.spare_parsers == []
    assert second.next_event() is READY and second.request.path == "/other"


@pytest.mark.parametrize(
    "after", [b"GET / HT", b"\r\n", None], ids=["part-of-a-head", "an-empty-line", "eof"]
)
def test_an_exchange_with_input_or_eof_pending_keeps_its_parser(after):
    exchange = answered(GET)
    if after is None:
        exchange.receive_eof()
    else:
        exchange.receive(after)  # (while the answer goes out)
    parser = exchange.parser
    exchange.response_sent()
    assert exchange.parser is parser and exchange.settings.spare_parsers == []


def test_eof_on_an_idle_exchange_closes_as_before():
    exchange = answered(GET)
    exchange.response_sent()
    exchange.receive_eof()
    assert exchange.next_event() is CLOSED


def test_the_spare_parsers_are_bounded():
    settings_ = make().settings
    busy = []
    for _ in range(SPARE_PARSERS_MAX + 10):  # all at once: each takes a parser of its own
        exchange = ServerExchange(settings_, request_class=Request, peer=PEER, local=LOCAL)
        exchange.receive(GET)
        exchange.next_event()
        busy.append(exchange)
    for exchange in busy:
        exchange.respond(200, [], 0, b"")
        exchange.response_sent()
    assert all(exchange.parser is None for exchange in busy)
    assert len(settings_.spare_parsers) == SPARE_PARSERS_MAX


def test_an_exchange_closed_after_its_last_answer_lends_its_parser():
    exchange = answered(GET, headers=[("Connection", "close")])
    assert exchange.response_sent() is False
    parser = exchange.parser
    exchange.close()
    assert exchange.parser is None and exchange.settings.spare_parsers == [parser]


def test_an_exchange_closed_in_the_middle_of_a_request_lends_nothing():
    exchange = make()
    exchange.receive(POST[:-2])
    settle(exchange)  # (its body is being read)
    exchange.close()
    assert exchange.parser is not None and exchange.settings.spare_parsers == []


# --- a bodiless GET -----------------------------------------------------------------------


def test_a_bodiless_get_is_ready_at_once():
    exchange = make()
    exchange.receive(GET)
    assert exchange.next_event() is READY


def test_a_bodiless_get_is_the_request_with_its_addresses():
    request = ready(GET).request
    assert (request.method, request.target, request.host, request.body, request.peer) == (
        "GET",
        "/",
        "test",
        b"",
        PEER,
    )


def test_nothing_yet_is_need_data():
    exchange = make()
    exchange.receive(GET[:-1])
    assert exchange.next_event() is NEED_DATA


def test_an_answer_known_in_full_is_one_bytes_object_with_head_and_body():
    exchange = ready(GET)
    data = exchange.respond(200, [("Content-Type", "text/plain")], 5, b"hello")
    assert data == (
        b"HTTP/1.1 200 OK\r\nDate: X\r\nServer: t\r\nContent-Type: text/plain\r\n"
        b"Content-Length: 5\r\n\r\nhello"
    )


def test_an_answered_keep_alive_request_keeps_the_connection():
    assert answered(GET).response_sent() is True


def test_after_the_answer_the_exchange_is_idle_again():
    exchange = answered(GET)
    exchange.response_sent()
    assert exchange.state is IDLE


def test_after_the_answer_the_request_is_let_go():
    exchange = answered(GET)
    exchange.response_sent()
    assert exchange.request is None


def test_a_pipelined_request_waits_until_the_first_answer_is_out():
    exchange = make()
    exchange.receive(GET + get_request("/second"))
    events = [exchange.next_event()]
    events.append(exchange.next_event())  # APP: the first is being answered
    exchange.respond(200, [], 2, b"ok")
    events.append(exchange.next_event())  # SENDING
    exchange.response_sent()
    events.append(exchange.next_event())
    assert events == [READY, NEED_DATA, NEED_DATA, READY]


def test_pipelined_requests_come_out_in_order():
    exchange = make()
    exchange.receive(get_request("/1") + post_request("/2", b"two") + get_request("/3"))
    targets = []
    while settle(exchange) is READY:
        targets.append((exchange.request.target, exchange.request.body))
        exchange.respond(200, [], 0)
        exchange.response_sent()
    assert targets == [("/1", b""), ("/2", b"two"), ("/3", b"")]


def test_pipelined_requests_are_answered_then_need_data():
    exchange = make()
    exchange.receive(GET + GET)
    for _ in range(2):
        settle(exchange)
        exchange.respond(200, [], 0)
        exchange.response_sent()
    assert exchange.next_event() is NEED_DATA


# --- keep-alive ---------------------------------------------------------------------------

KEEP_ALIVE = [
    ("http11-default", GET, [], True),
    ("http11-client-close", get_request(extra="Connection: close\r\n"), [], False),
    ("http10-default", b"GET / HTTP/1.0\r\n\r\n", [], False),
    ("http10-keep-alive", b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", [], True),
    ("app-close", GET, [("Connection", "close")], False),
]


@pytest.mark.parametrize(
    ("raw", "headers", "kept"),
    [case[1:] for case in KEEP_ALIVE],
    ids=[case[0] for case in KEEP_ALIVE],
)
def test_keep_alive_decision(raw, headers, kept):
    assert answered(raw, headers=headers).response_sent() is kept


ANNOUNCED = [
    ("http11-default", GET, [], None),
    ("http11-client-close", get_request(extra="Connection: close\r\n"), [], b"close"),
    ("http10-default", b"GET / HTTP/1.0\r\n\r\n", [], None),
    ("http10-keep-alive", b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", [], b"keep-alive"),
    ("app-close", GET, [("Connection", "close")], b"close"),
]


@pytest.mark.parametrize(
    ("raw", "headers", "connection"),
    [case[1:] for case in ANNOUNCED],
    ids=[case[0] for case in ANNOUNCED],
)
def test_the_answer_announces_the_keep_alive_decision(raw, headers, connection):
    lines, _ = split(ready(raw).respond(200, headers, 0))
    values = [line[len(b"Connection: ") :] for line in lines if line.startswith(b"Connection:")]
    assert values == ([] if connection is None else [connection])


def test_an_app_naming_its_own_server_gets_the_date_line_alone():
    exchange = ready(GET, date=b"Date: X\r\n")
    assert exchange.respond(200, [("Server", "app")], 0) == (
        b"HTTP/1.1 200 OK\r\nDate: X\r\nServer: app\r\nContent-Length: 0\r\n\r\n"
    )


def test_an_answer_begun_before_a_stop_keeps_the_connection_its_head_promised():
    # (The server closes it as an idle connection: test_server.py.)
    exchange = answered(GET)
    exchange.settings.keep_alive = False
    assert exchange.response_sent() is True and exchange.state is IDLE


def test_a_stopping_server_announces_close_in_its_answers():
    exchange = ready(GET)
    exchange.settings.keep_alive = False
    assert exchange.respond(200, [], 0) == (
        b"HTTP/1.1 200 OK\r\nDate: X\r\nServer: t\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )


def test_a_closing_answer_ends_the_exchange():
    exchange = answered(get_request(extra="Connection: close\r\n"))
    exchange.response_sent()
    assert exchange.state is CLOSED_STATE


def test_a_closing_answer_with_nothing_more_here_does_not_linger():
    exchange = answered(get_request(extra="Connection: close\r\n"))
    exchange.response_sent()
    assert exchange.linger is False


def test_a_closing_answer_with_pipelined_requests_unanswered_lingers():
    exchange = make()
    exchange.receive(get_request(extra="Connection: close\r\n") + GET)
    exchange.next_event()
    exchange.respond(200, [], 0)
    exchange.response_sent()
    assert exchange.linger is True


def test_a_client_that_half_closes_after_its_request_is_answered_then_closed():
    exchange = make()
    exchange.receive(GET)
    exchange.receive_eof()
    exchange.next_event()
    exchange.respond(200, [], 0)
    exchange.response_sent()
    assert exchange.next_event() is CLOSED


# --- request bodies -----------------------------------------------------------------------

PAYLOAD = bytes(range(256)) * 4  # 1024 bytes
BODIES = {
    "content-length": post_request("/submit", PAYLOAD),
    "chunked": (
        b"POST /submit HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n"
        + chunked_body([PAYLOAD[:100], PAYLOAD[100:700], PAYLOAD[700:]])
    ),
}


def test_a_request_with_a_body_gives_its_head_first():
    exchange = make()
    exchange.receive(POST)
    assert exchange.next_event() is HEAD


def test_the_head_event_has_the_request_head():
    exchange = make()
    exchange.receive(POST)
    exchange.next_event()
    assert (exchange.request.method, exchange.request.content_length) == ("POST", 5)


def test_the_body_is_not_read_before_read_body():
    exchange = make()
    exchange.receive(POST)
    exchange.next_event()
    assert exchange.next_event() is NEED_DATA


def test_the_request_is_ready_once_its_body_is_read():
    exchange = make()
    exchange.receive(POST)
    exchange.next_event()
    exchange.read_body()
    assert exchange.next_event() is READY


def test_a_zero_content_length_is_ready_without_a_head_event():
    exchange = make()
    exchange.receive(post_request("/", b""))
    assert exchange.next_event() is READY


@pytest.mark.parametrize("raw", BODIES.values(), ids=BODIES.keys())
def test_a_small_body_arrives_as_bytes(raw):
    assert ready(raw).request.body == PAYLOAD


@pytest.mark.parametrize("raw", BODIES.values(), ids=BODIES.keys())
def test_a_small_body_opens_no_spill_file(raw):
    spill = SpillFiles()
    ready(raw, open_spill_file=spill)
    assert spill.opened == []


@pytest.mark.parametrize("raw", BODIES.values(), ids=BODIES.keys())
def test_a_body_past_the_threshold_spills_to_one_file(raw):
    spill = SpillFiles()
    ready(raw, open_spill_file=spill, spill_threshold=500)
    assert len(spill.opened) == 1


@pytest.mark.parametrize("raw", BODIES.values(), ids=BODIES.keys())
def test_a_spilled_body_arrives_as_its_file_rewound(raw):
    spill = SpillFiles()
    request = ready(raw, open_spill_file=spill, spill_threshold=500).request
    assert (request.stream is spill.opened[0], request.stream.tell()) == (True, 0)


@pytest.mark.parametrize("raw", BODIES.values(), ids=BODIES.keys())
def test_a_spilled_body_reads_back_whole(raw):
    assert ready(raw, spill_threshold=500).request.body == PAYLOAD


def test_a_real_temporary_file_serves_as_the_spill():
    exchange = ready(BODIES["chunked"], open_spill_file=tempfile.TemporaryFile, spill_threshold=10)
    assert exchange.request.stream.read() == PAYLOAD


def test_the_spill_file_is_closed_once_the_answer_is_out():
    spill = SpillFiles()
    exchange = ready(BODIES["content-length"], open_spill_file=spill, spill_threshold=500)
    exchange.respond(200, [], 0)
    exchange.response_sent()
    assert spill.opened[0].closed


def test_close_lets_go_of_a_spilled_body():
    spill = SpillFiles()
    exchange = ready(BODIES["content-length"], open_spill_file=spill, spill_threshold=500)
    exchange.close()
    assert spill.opened[0].closed


def test_close_ends_the_exchange():
    exchange = ready(GET)
    exchange.close()
    assert exchange.state is CLOSED_STATE


def test_a_body_after_a_spilled_one_is_its_own():
    exchange = make(spill_threshold=500)
    exchange.receive(BODIES["content-length"] + post_request("/small", b"tiny"))
    bodies = []
    while settle(exchange) is READY:
        bodies.append(exchange.request.body)
        exchange.respond(200, [], 0)
        exchange.response_sent()
    assert bodies == [PAYLOAD, b"tiny"]


@pytest.mark.parametrize("name", BODIES)
def test_a_request_split_in_two_anywhere_is_the_same_request(name):
    raw = BODIES[name]
    expected = summary(ready(raw).request)
    seen = []
    for i in range(len(raw) + 1):
        exchange = make()
        event = feed(exchange, raw[:i], raw[i:])
        seen.append(summary(exchange.request) if event is READY else (i, event))
    assert seen == [expected] * (len(raw) + 1)


@pytest.mark.parametrize("name", BODIES)
def test_a_request_fed_byte_by_byte_is_the_same_request(name):
    raw = BODIES[name]
    exchange = make(spill_threshold=300)
    feed(exchange, *(raw[i : i + 1] for i in range(len(raw))))
    assert summary(exchange.request) == summary(ready(raw).request)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    body=st.binary(min_size=1, max_size=400),
    pieces=st.lists(st.integers(1, 60), min_size=1, max_size=8),
    cuts=st.lists(st.integers(0, 600), max_size=8),
    threshold=st.integers(0, 500),
    chunked=st.booleans(),
)
def test_any_body_split_anywhere_arrives_whole(body, pieces, cuts, threshold, chunked):
    if chunked:
        parts, rest = [], body
        for size in pieces:
            if rest:
                parts.append(rest[:size])
                rest = rest[size:]
        if rest:
            parts.append(rest)
        raw = b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        raw += chunked_body(parts)
    else:
        raw = post_request("/", body)
    exchange = make(spill_threshold=threshold)
    feed(exchange, *split_at(raw, cuts))
    assert exchange.request.body == body


def test_expect_100_continue_makes_read_body_return_the_interim_answer():
    exchange = make()
    exchange.receive(post_request("/", b"hello", extra="Expect: 100-continue\r\n")[:-5])
    exchange.next_event()
    assert exchange.read_body() == b"HTTP/1.1 100 Continue\r\n\r\n"


def test_without_expect_read_body_returns_nothing():
    exchange = make()
    exchange.receive(POST_HEAD)
    exchange.next_event()
    assert exchange.read_body() == b""


def test_an_http10_expect_is_ignored():
    exchange = make()
    exchange.receive(b"POST / HTTP/1.0\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
    exchange.next_event()
    assert exchange.read_body() == b""


# --- answering from the head --------------------------------------------------------------

HUGE = b"PUT /upload HTTP/1.1\r\nHost: test\r\nContent-Length: 1000000000\r\n\r\n"


def from_the_head(raw: bytes = HUGE, spill: SpillFiles | None = None):
    """(exchange, answer bytes) for raw answered 403 from its head (a body of more than
    10 bytes would spill, were it read)."""
    exchange = make(open_spill_file=spill, spill_threshold=10)
    exchange.receive(raw)
    assert exchange.next_event() is HEAD
    return exchange, exchange.respond(403, [], 0)


def test_an_answer_from_the_head_announces_close():
    _, data = from_the_head()
    assert data == (
        b"HTTP/1.1 403 Forbidden\r\nDate: X\r\nServer: t\r\n"
        b"Content-Length: 0\r\nConnection: close\r\n\r\n"
    )


def test_an_answer_from_the_head_lingers():
    exchange, _ = from_the_head()
    assert exchange.linger is True


def test_an_answer_from_the_head_closes_the_connection():
    exchange, _ = from_the_head()
    assert exchange.response_sent() is False


def test_an_answer_from_the_head_never_opens_a_spill_file():
    spill = SpillFiles()
    exchange, _ = from_the_head(spill=spill)
    exchange.receive(b"x" * 100_000)
    exchange.next_event()
    exchange.response_sent()
    exchange.next_event()
    assert spill.opened == []


# --- refusals -----------------------------------------------------------------------------

LIMIT_HEAD = {"max_header_bytes": 64}
REFUSALS = [
    ("malformed-request-line", b"GET\r\n\r\n", {}, 400),
    ("header-without-colon", get_request(extra="Bad Header\r\n"), {}, 400),
    ("missing-host", b"GET / HTTP/1.1\r\n\r\n", {}, 400),
    ("bare-lf-in-chunk", BODIES["chunked"].replace(b"64\r\n", b"64\n"), {}, 400),
    ("request-line-too-long", get_request("/" + "a" * 100), {"max_request_line": 50}, 414),
    ("content-length-too-large", post_request("/", b"x" * 20), {"max_body_size": 10}, 413),
    (
        "header-section-too-large",
        get_request(extra=f"X: {'a' * 200}\r\n"),
        {"max_header_bytes": 64},
        431,
    ),
    ("too-many-headers", get_request(extra="A: 1\r\nB: 2\r\nC: 3\r\n"), {"max_headers": 2}, 431),
    ("unknown-expectation", get_request(extra="Expect: teapot\r\n"), {}, 417),
    ("unsupported-coding", get_request(extra="Transfer-Encoding: gzip\r\n"), {}, 501),
    ("http2", b"GET / HTTP/2.0\r\nHost: test\r\n\r\n", {}, 505),
]


def refused(raw: bytes, **kwargs) -> ServerExchange:
    exchange = make(**kwargs)
    event = feed(exchange, raw)
    assert event is REFUSED, event
    return exchange


@pytest.mark.parametrize(
    ("raw", "limits", "status"),
    [case[1:] for case in REFUSALS],
    ids=[case[0] for case in REFUSALS],
)
def test_malformed_input_is_refused_with_its_status(raw, limits, status):
    assert refused(raw, **limits).refusal_status == status


@pytest.mark.parametrize(
    ("raw", "limits", "status"),
    [case[1:] for case in REFUSALS],
    ids=[case[0] for case in REFUSALS],
)
def test_a_refusal_is_a_complete_closing_answer_with_its_status(raw, limits, status):
    lines, body = split(refused(raw, **limits).refusal)
    assert (
        lines[0][:12],
        b"Connection: close" in lines,
        b"Content-Length: %d" % len(body) in lines,
    ) == (b"HTTP/1.1 %d" % status, True, True)


@pytest.mark.parametrize(
    ("raw", "limits", "status"),
    [case[1:] for case in REFUSALS],
    ids=[case[0] for case in REFUSALS],
)
def test_refusals_do_not_depend_on_how_the_bytes_were_split(raw, limits, status):
    statuses = set()
    for i in range(len(raw) + 1):
        exchange = make(**limits)
        feed(exchange, raw[:i], raw[i:])
        statuses.add(exchange.refusal_status)
    assert statuses == {status}


def test_a_refusal_is_exactly_the_error_answer():
    assert refused(b"GET\r\n\r\n").refusal == (
        b"HTTP/1.1 400 Bad Request\r\nDate: X\r\nServer: t\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\nContent-Length: 40\r\n"
        b"Connection: close\r\n\r\n400 Bad Request: malformed request line\n"
    )


def test_a_refused_head_leaves_no_request():
    assert refused(b"GET\r\n\r\n").request is None


def test_a_refused_body_keeps_its_request():
    raw = BODIES["chunked"].replace(b"64\r\n", b"64\n")
    assert refused(raw).request.target == "/submit"


def test_a_refused_body_lets_go_of_its_spill_file():
    spill = SpillFiles()
    raw = BODIES["chunked"].replace(b"\r\n258\r\n", b"\r\n258\n")  # the second chunk
    refused(raw, open_spill_file=spill, spill_threshold=10)
    assert (len(spill.opened), spill.opened[0].closed) == (1, True)


def test_a_refusal_is_not_followed_by_keep_alive():
    assert refused(b"GET\r\n\r\n").response_sent() is False


def test_a_refusal_lingers():
    assert refused(b"GET\r\n\r\n").linger is True


def test_a_refused_exchange_ends_closed():
    exchange = refused(b"GET\r\n\r\n")
    exchange.response_sent()
    assert exchange.state is CLOSED_STATE


def test_a_malformed_pipelined_request_is_refused_only_after_the_first_answer():
    exchange = make()
    exchange.receive(GET + b"GET\r\n\r\n")
    events = [exchange.next_event()]
    exchange.respond(200, [], 0)
    events.append(exchange.next_event())
    exchange.response_sent()
    events.append(exchange.next_event())
    assert events == [READY, NEED_DATA, REFUSED]


def test_a_spill_file_that_cannot_be_written_is_refused_503():
    exchange = refused(BODIES["content-length"], open_spill_file=FullDisk, spill_threshold=10)
    assert exchange.refusal == (
        b"HTTP/1.1 503 Service Unavailable\r\nDate: X\r\nServer: t\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\nContent-Length: 58\r\n"
        b"Connection: close\r\n\r\n503 Service Unavailable: request body could not be stored\n"
    )


def test_a_spill_file_that_cannot_be_written_is_the_store_error():
    disk = FullDisk()
    exchange = refused(BODIES["chunked"], open_spill_file=lambda: disk, spill_threshold=10)
    assert exchange.store_error is disk.error


def test_a_spill_file_that_cannot_be_written_is_closed():
    disk = FullDisk()
    refused(BODIES["chunked"], open_spill_file=lambda: disk, spill_threshold=10)
    assert disk.closed


def test_a_spill_file_that_cannot_be_opened_is_refused_503():
    def no_room():
        raise OSError(errno.ENOSPC, "No space left on device")

    exchange = refused(BODIES["content-length"], open_spill_file=no_room, spill_threshold=10)
    assert exchange.refusal_status == 503


def test_refuse_408_while_a_head_is_partly_here_gives_the_408():
    exchange = make()
    exchange.receive(GET[:10])
    exchange.next_event()
    assert exchange.refuse(408, "request head too slow") == (
        b"HTTP/1.1 408 Request Timeout\r\nDate: X\r\nServer: t\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\nContent-Length: 43\r\n"
        b"Connection: close\r\n\r\n408 Request Timeout: request head too slow\n"
    )


def test_refuse_closes_after_the_refusal():
    exchange = make()
    exchange.receive(GET[:10])
    exchange.refuse(408, "request head too slow")
    assert exchange.response_sent() is False


HEAD_STARTED = [
    ("nothing", b"", False),
    ("part-of-a-head", GET[:10], True),
]


@pytest.mark.parametrize(
    ("data", "started"), [c[1:] for c in HEAD_STARTED], ids=[c[0] for c in HEAD_STARTED]
)
def test_head_started_says_whether_a_request_has_begun(data, started):
    exchange = make()
    exchange.receive(data)
    exchange.next_event()
    assert exchange.head_started is started


def test_head_started_is_false_while_a_request_is_answered():
    exchange = make()
    exchange.receive(GET + GET)
    exchange.next_event()
    assert exchange.head_started is False


# --- body writers -------------------------------------------------------------------------

HTTP10 = b"GET / HTTP/1.0\r\n\r\n"


def test_a_streamed_answer_on_http11_announces_chunked():
    assert ready(GET).respond(200, [], None) == (
        b"HTTP/1.1 200 OK\r\nDate: X\r\nServer: t\r\nTransfer-Encoding: chunked\r\n\r\n"
    )


def test_a_streamed_answer_has_its_body_to_follow():
    assert streaming(GET).body_follows is True


def test_a_streamed_piece_is_framed_as_a_chunk():
    assert streaming(GET).writer.frame(b"hello") == b"5\r\nhello\r\n"


def test_finishing_a_chunked_body_gives_the_last_chunk():
    assert streaming(GET).finish_body() == b"0\r\n\r\n"


def test_a_chunked_answer_keeps_the_connection():
    exchange = streaming(GET)
    exchange.writer.frame(b"hello")
    exchange.finish_body()
    assert exchange.response_sent() is True


def test_a_streamed_answer_with_an_app_content_length_announces_it():
    assert ready(GET).respond(200, [("Content-Length", "5")], None) == (
        b"HTTP/1.1 200 OK\r\nDate: X\r\nServer: t\r\nContent-Length: 5\r\n\r\n"
    )


def test_the_content_length_writer_passes_pieces_through():
    writer = streaming(GET, [("Content-Length", "5")]).writer
    assert [writer.frame(b"he"), writer.frame(b"llo")] == [b"he", b"llo"]


def test_the_content_length_writer_is_done_at_the_length():
    writer = streaming(GET, [("Content-Length", "5")]).writer
    writer.frame(b"he")
    writer.frame(b"llo")
    assert (writer.done, writer.problem) == (True, None)


def test_the_content_length_writer_keeps_the_connection_for_an_exact_body():
    exchange = streaming(GET, [("Content-Length", "5")])
    exchange.writer.frame(b"hello")
    exchange.finish_body()
    assert exchange.response_sent() is True


def test_the_content_length_writer_cuts_a_longer_body():
    writer = streaming(GET, [("Content-Length", "5")]).writer
    assert [writer.frame(b"abc"), writer.frame(b"defg")] == [b"abc", b"de"]


def test_a_cut_body_is_done():
    writer = streaming(GET, [("Content-Length", "5")]).writer
    writer.frame(b"abcdefg")
    assert writer.done is True


def test_a_cut_body_notes_the_problem():
    writer = streaming(GET, [("Content-Length", "5")]).writer
    writer.frame(b"abcdefg")
    assert writer.problem == "body longer than its Content-Length"


def test_a_cut_body_closes_the_connection():
    exchange = streaming(GET, [("Content-Length", "5")])
    exchange.writer.frame(b"abcdefg")
    exchange.finish_body()
    assert exchange.response_sent() is False


def test_finishing_a_short_body_adds_nothing():
    exchange = streaming(GET, [("Content-Length", "5")])
    exchange.writer.frame(b"abc")
    assert exchange.finish_body() == b""


def test_a_short_body_notes_the_problem():
    exchange = streaming(GET, [("Content-Length", "5")])
    exchange.writer.frame(b"abc")
    exchange.finish_body()
    assert exchange.writer.problem == "body shorter than its Content-Length"


def test_a_short_body_closes_the_connection():
    exchange = streaming(GET, [("Content-Length", "5")])
    exchange.writer.frame(b"abc")
    exchange.finish_body()
    assert exchange.response_sent() is False


def test_a_streamed_answer_on_http10_has_no_framing():
    assert ready(HTTP10).respond(200, [], None) == (
        b"HTTP/1.1 200 OK\r\nDate: X\r\nServer: t\r\n\r\n"
    )


def test_a_streamed_body_on_http10_is_close_delimited():
    exchange = streaming(HTTP10)
    assert (exchange.writer.frame(b"hello"), exchange.finish_body()) == (b"hello", b"")


@pytest.mark.parametrize(
    "raw",
    [HTTP10, b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"],
    ids=["http10", "http10-keep-alive"],
)
def test_a_streamed_body_on_http10_closes_the_connection(raw):
    exchange = streaming(raw)
    exchange.writer.frame(b"hello")
    exchange.finish_body()
    assert exchange.response_sent() is False


# --- HEAD and bodiless statuses -----------------------------------------------------------

HEAD_REQUEST = b"HEAD / HTTP/1.1\r\nHost: test\r\n\r\n"


def test_a_head_answer_has_no_body_bytes():
    assert ready(HEAD_REQUEST).respond(200, [], 5, b"hello") == (
        b"HTTP/1.1 200 OK\r\nDate: X\r\nServer: t\r\nContent-Length: 5\r\n\r\n"
    )


def test_a_head_answer_has_no_body_to_follow():
    exchange = ready(HEAD_REQUEST)
    exchange.respond(200, [], None)
    assert exchange.body_follows is False


def test_a_head_answer_keeps_the_connection():
    exchange = ready(HEAD_REQUEST)
    exchange.respond(200, [], 5, b"hello")
    assert exchange.response_sent() is True


def test_an_unannounced_head_answer_has_no_framing():
    assert ready(HEAD_REQUEST).respond(200, [("Content-Type", "text/html")], UNANNOUNCED) == (
        b"HTTP/1.1 200 OK\r\nDate: X\r\nServer: t\r\nContent-Type: text/html\r\n\r\n"
    )


BODILESS = {
    204: b"HTTP/1.1 204 No Content\r\nDate: X\r\nServer: t\r\n\r\n",
    304: b"HTTP/1.1 304 Not Modified\r\nDate: X\r\nServer: t\r\n\r\n",
}


@pytest.mark.parametrize("status", BODILESS)
def test_a_bodiless_status_has_no_body_bytes(status):
    assert ready(GET).respond(status, [], 5, b"hello") == BODILESS[status]


@pytest.mark.parametrize("status", BODILESS)
def test_a_bodiless_status_has_no_body_to_follow(status):
    exchange = ready(GET)
    exchange.respond(status, [], None)
    assert exchange.body_follows is False


# --- abandon ------------------------------------------------------------------------------


def test_abandon_goes_back_to_awaiting_an_answer():
    exchange = streaming(GET)
    exchange.abandon()
    assert exchange.state is APP


def test_an_answer_after_abandon_is_the_whole_second_answer():
    exchange = streaming(GET)
    exchange.abandon()
    assert exchange.respond(500, [], 5, b"oops\n") == (
        b"HTTP/1.1 500 Internal Server Error\r\nDate: X\r\nServer: t\r\n"
        b"Content-Length: 5\r\n\r\noops\n"
    )


def test_an_answer_after_abandon_frames_as_itself():
    exchange = streaming(GET)
    exchange.abandon()
    exchange.respond(200, [("Content-Length", "3")], None)
    assert exchange.writer.frame(b"abcdef") == b"abc"


def test_an_answer_after_abandon_keeps_the_connection():
    exchange = streaming(GET)
    exchange.abandon()
    exchange.respond(500, [], 5, b"oops\n")
    assert exchange.response_sent() is True


def test_an_answer_from_the_head_abandoned_still_closes():
    exchange, _ = from_the_head()
    exchange.abandon()
    exchange.respond(500, [], 0)
    assert exchange.response_sent() is False


# --- end of input -------------------------------------------------------------------------


def test_eof_between_requests_is_closed():
    exchange = make()
    exchange.receive_eof()
    assert exchange.next_event() is CLOSED


def test_eof_after_an_answered_request_is_closed():
    exchange = answered(GET)
    exchange.response_sent()
    exchange.receive_eof()
    assert exchange.next_event() is CLOSED


def test_eof_between_requests_ends_the_exchange():
    exchange = make()
    exchange.receive_eof()
    exchange.next_event()
    assert exchange.state is CLOSED_STATE


EOF_MIDWAY = {
    "mid-head": GET[:-2],
    "mid-content-length-body": POST[:-2],
    "mid-chunked-body": BODIES["chunked"][:-10],
}


@pytest.mark.parametrize("raw", EOF_MIDWAY.values(), ids=EOF_MIDWAY.keys())
def test_eof_in_the_middle_of_a_request_is_refused_400(raw):
    exchange = make()
    feed(exchange, raw)
    exchange.receive_eof()
    settle(exchange)
    assert (exchange.state, exchange.refusal_status) == (SENDING, 400)


# --- invalid answers from the application -------------------------------------------------

INVALID = [
    ("control-character-in-value", 200, [("X-Evil", "a\x01b")]),
    ("crlf-in-value", 200, [("X-Evil", "a\r\nSet-Cookie: owned=1")]),
    ("space-in-name", 200, [("X Evil", "a")]),
    ("interim-status", 100, []),
    ("status-600", 600, []),
    ("bad-content-length", 200, [("Content-Length", "five")]),
]


@pytest.mark.parametrize(
    ("status", "headers"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID]
)
def test_an_invalid_answer_raises_invalid_header(status, headers):
    with pytest.raises(InvalidHeader):
        ready(GET).respond(status, headers, 0)


@pytest.mark.parametrize(
    ("status", "headers"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID]
)
def test_an_invalid_answer_leaves_the_state_unchanged(status, headers):
    exchange = ready(GET)
    with pytest.raises(InvalidHeader):
        exchange.respond(status, headers, 0)
    assert exchange.state is APP


def test_an_invalid_reason_phrase_raises_invalid_header():
    with pytest.raises(InvalidHeader):
        ready(GET).respond(200, [], 0, reason="OK\r\nX: y")


def test_an_answer_after_an_invalid_one_is_sent_whole():
    exchange = ready(GET)
    with pytest.raises(InvalidHeader):
        exchange.respond(200, [("X-Evil", "a\x01b")], None)
    assert exchange.respond(500, [], 5, b"oops\n") == (
        b"HTTP/1.1 500 Internal Server Error\r\nDate: X\r\nServer: t\r\n"
        b"Content-Length: 5\r\n\r\noops\n"
    )


def test_an_invalid_answer_from_the_head_leaves_the_head_unanswered():
    exchange = make()
    exchange.receive(POST_HEAD)
    exchange.next_event()
    with pytest.raises(InvalidHeader):
        exchange.respond(100, [], 0)
    assert exchange.state is HEAD_ONLY
