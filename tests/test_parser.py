"""Tests for selserve.http.parser: the sans-I/O HTTP/1.1 request parser.

Everything here feeds bytes and looks at events. Most refusal tests go through
`refused()`, which parses the input whole *and* one byte at a time and insists on the
same error both ways, so every rule is also a split-invariance check.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from selserve.http import parser as parser_module
from selserve.http.errors import HTTPError
from selserve.http.parser import (
    CLOSED,
    MAX_CHUNK_LINE,
    NEED_DATA,
    PAUSED,
    Data,
    EndOfMessage,
    Request,
    RequestParser,
)

# --- helpers ------------------------------------------------------------------------------

MAX_STEPS = 10_000  # no input in these tests needs more next_event() calls than this


def drain(parser: RequestParser, out: list | None = None) -> list:
    """Append events to out until NEED_DATA or CLOSED (included), answering PAUSED at
    once. Events given before an HTTPError stay in out."""
    out = [] if out is None else out
    for _ in range(MAX_STEPS):
        event = parser.next_event()
        if event is PAUSED:
            parser.start_next_request()
            continue
        out.append(event)
        if event is NEED_DATA or event is CLOSED:
            return out
    raise AssertionError("parser did not settle")


def run(pieces, *, eof: bool = True, **limits) -> tuple[list, tuple[int, str] | None]:
    """Feed pieces, draining after each; (events without NEED_DATA, (status, detail))."""
    parser = RequestParser(**limits)
    events: list = []
    error = None
    try:
        for piece in pieces:
            parser.feed(piece)
            drain(parser, events)
        if eof:
            parser.feed_eof()
            drain(parser, events)
    except HTTPError as exc:
        error = (exc.status, exc.detail)
    return [e for e in events if e is not NEED_DATA], error


def normalise(events: list) -> list:
    """Comparable form of events: Data pieces of one message joined into one."""
    out: list = []
    for event in events:
        if type(event) is Data:
            assert event.data, "Data events are never empty"
            if out and out[-1][0] == "data":
                out[-1] = ("data", out[-1][1] + event.data)
            else:
                out.append(("data", event.data))
        elif type(event) is Request:
            out.append(("request", *(getattr(event, a) for a in Request.__slots__)))
        elif type(event) is EndOfMessage:
            out.append(("end", event.trailers))
        else:
            out.append((repr(event),))
    return out


def whole(raw: bytes, *, eof: bool = True, **limits):
    return run([raw], eof=eof, **limits)


def bytewise(raw: bytes, *, eof: bool = True, **limits):
    return run([raw[i : i + 1] for i in range(len(raw))], eof=eof, **limits)


def parse(raw: bytes, *, eof: bool = True, **limits) -> list:
    """Events of input that must parse cleanly (checked whole and byte by byte)."""
    events, error = whole(raw, eof=eof, **limits)
    assert error is None, error
    events_b, error_b = bytewise(raw, eof=eof, **limits)
    assert error_b is None, error_b
    assert normalise(events_b) == normalise(events)
    return events


def head(raw: bytes, **limits) -> Request:
    """The single Request of raw."""
    events = parse(raw, **limits)
    requests = [e for e in events if type(e) is Request]
    assert len(requests) == 1
    return requests[0]


def body(raw: bytes, **limits) -> bytes:
    return b"".join(e.data for e in parse(raw, **limits) if type(e) is Data)


def refused(raw: bytes, *, eof: bool = True, **limits) -> int:
    """The status raw is refused with; whole and byte-by-byte must agree exactly."""
    _, error = whole(raw, eof=eof, **limits)
    assert error is not None, "expected an HTTPError"
    _, error_b = bytewise(raw, eof=eof, **limits)
    assert error_b == error
    return error[0]


def get(*fields: bytes, target: bytes = b"/", version: bytes = b"HTTP/1.1") -> bytes:
    lines = [b"GET " + target + b" " + version, *fields]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def post(*fields: bytes, body: bytes = b"") -> bytes:
    return b"\r\n".join([b"POST /submit HTTP/1.1", b"Host: h", *fields]) + b"\r\n\r\n" + body


# --- the basics ---------------------------------------------------------------------------


def test_simple_get_gives_request_then_end_of_message():
    events = parse(get(b"Host: example.com"))
    assert [type(e) for e in events] == [Request, EndOfMessage, type(CLOSED)]
    assert events[1] == EndOfMessage() and len(events[1].trailers) == 0


def test_request_events_are_made_as_the_given_request_class():
    class AppRequest(Request):
        __slots__ = ("extra",)

    parser = RequestParser(request_class=AppRequest)
    parser.feed(get(b"Host: example.com") + get(b"Host: example.com", target=b"/second"))
    first = parser.next_event()
    assert type(first) is AppRequest
    assert (first.method, first.target, first.host) == ("GET", "/", "example.com")
    assert parser.next_event() == EndOfMessage()
    parser.start_next_request()
    second = parser.next_event()
    assert type(second) is AppRequest and second.target == "/second"


def test_request_line_parts():
    req = head(get(b"Host: example.com", target=b"/a/b%20c?x=1&y=2"))
    assert (req.method, req.target, req.path, req.query, req.version) == (
        "GET",
        "/a/b%20c?x=1&y=2",
        "/a/b%20c",
        "x=1&y=2",
        "HTTP/1.1",
    )


def test_query_splits_at_first_question_mark():
    req = head(get(b"Host: h", target=b"/p?a=?b"))
    assert (req.path, req.query) == ("/p", "a=?b")


def test_missing_query_is_empty_string():
    assert head(get(b"Host: h", target=b"/p")).query == ""


def test_empty_query_after_question_mark():
    req = head(get(b"Host: h", target=b"/p?"))
    assert (req.path, req.query) == ("/p", "")


def test_host_attribute_is_host_header_value():
    assert head(get(b"Host: example.com:8080")).host == "example.com:8080"


def test_header_names_lower_cased_and_values_stripped():
    req = head(get(b"HOST: h", b"X-Thing: \t  some value \t "))
    assert req.headers == [("host", "h"), ("x-thing", "some value")]


def test_headers_keep_order_and_duplicates():
    req = head(get(b"Host: h", b"B: 1", b"A: 2", b"b: 3"))
    assert req.headers == [("host", "h"), ("b", "1"), ("a", "2"), ("b", "3")]


def test_header_lookup_returns_first_value():
    req = head(get(b"Host: h", b"B: 1", b"B: 2"))
    assert req.header("b") == "1"


def test_header_lookup_default_when_absent():
    req = head(get(b"Host: h"))
    assert req.header("missing") is None
    assert req.header("missing", "x") == "x"


def test_empty_header_value_allowed():
    assert head(get(b"Host: h", b"X-Empty:", b"Y:   ")).headers[1:] == [("x-empty", ""), ("y", "")]


def test_inner_whitespace_in_value_kept():
    assert head(get(b"Host: h", b"X: a \t b")).header("x") == "a \t b"


def test_obs_text_value_decoded_as_latin1():
    assert head(get(b"Host: h", b"X: caf\xe9 \x80\xff")).header("x") == "caf\xe9 \x80\xff"


def test_all_tchars_allowed_in_header_name():
    name = b"!#$%&'*+-.^_`|~09azAZ"
    assert head(get(b"Host: h", name + b": v")).header(name.decode().lower()) == "v"


def test_http10_without_host_accepted():
    req = head(b"GET / HTTP/1.0\r\n\r\n")
    assert (req.version, req.host) == ("HTTP/1.0", "")


def test_request_without_body_has_no_body():
    req = head(get(b"Host: h"))
    assert (req.content_length, req.chunked) == (None, False)


def test_lower_case_method_is_kept_as_sent():
    assert head(b"get / HTTP/1.1\r\nHost: h\r\n\r\n").method == "get"


def test_extension_method_accepted():
    assert head(b"PROPFIND /d HTTP/1.1\r\nHost: h\r\n\r\n").method == "PROPFIND"


def test_sentinels_have_useful_reprs():
    assert (repr(NEED_DATA), repr(PAUSED), repr(CLOSED)) == ("NEED_DATA", "PAUSED", "CLOSED")


def test_need_data_for_partial_head():
    parser = RequestParser()
    parser.feed(b"GET / HTTP/1.1\r\nHost: h\r\n")
    assert parser.next_event() is NEED_DATA


def test_need_data_when_nothing_fed():
    assert RequestParser().next_event() is NEED_DATA


def test_empty_feed_is_ignored():
    parser = RequestParser()
    parser.feed(b"")
    assert (parser.next_event(), parser.buffered) == (NEED_DATA, 0)


def test_buffered_counts_unconsumed_bytes():
    parser = RequestParser()
    raw = post(b"Content-Length: 10", body=b"12345")
    parser.feed(raw)
    assert parser.buffered == len(raw)
    parser.next_event()
    assert parser.buffered == 5
    parser.next_event()
    assert parser.buffered == 0


def test_feed_accepts_bytearray_and_memoryview():
    parser = RequestParser()
    parser.feed(bytearray(b"GET / HTTP/1.1\r\n"))
    parser.feed(memoryview(b"Host: h\r\n\r\n"))
    assert type(parser.next_event()) is Request


def test_events_compare_by_value():
    assert Data(b"x") == Data(b"x")
    assert EndOfMessage() == EndOfMessage([])
    assert EndOfMessage([("a", "b")]) != EndOfMessage()


def test_http_error_carries_status_and_detail():
    exc = HTTPError(413, "too big")
    assert (exc.status, exc.detail, str(exc)) == (413, "too big", "413 too big")


# --- line endings and leading empty lines (RFC 9112 §2.2) ---------------------------------


def test_bare_lf_line_endings_accepted():
    req = head(b"GET /x HTTP/1.1\nHost: h\nA: 1\n\n")
    assert req.headers == [("host", "h"), ("a", "1")]


def test_mixed_line_endings_accepted():
    req = head(b"GET /x HTTP/1.1\r\nHost: h\nA: 1\r\n\n")
    assert req.headers == [("host", "h"), ("a", "1")]


def test_bare_lf_then_crlf_empty_line_ends_head():
    events = parse(b"GET / HTTP/1.1\r\nHost: h\n\r\nGET /2 HTTP/1.1\r\nHost: h\r\n\r\n")
    assert [e.target for e in events if type(e) is Request] == ["/", "/2"]


def test_leading_empty_lines_ignored():
    assert head(b"\r\n\r\n\nGET / HTTP/1.1\r\nHost: h\r\n\r\n").target == "/"


def test_leading_empty_lines_count_toward_request_line_limit():
    line = b"GET / HTTP/1.1"
    ok = b"\r\n" * 3 + line + b"\r\nHost: h\r\n\r\n"
    assert head(ok, max_request_line=len(line) + 6).target == "/"
    assert refused(ok, max_request_line=len(line) + 5) == 414


def test_endless_empty_lines_refused():
    assert refused(b"\r\n" * 5000, eof=False, max_request_line=8192) == 414


def test_bare_cr_in_request_line_refused():
    assert refused(b"GET /\rx HTTP/1.1\r\nHost: h\r\n\r\n") == 400


def test_bare_cr_ending_request_line_refused():
    assert refused(b"GET / HTTP/1.1\rHost: h\r\n\r\n") == 400


def test_bare_cr_ending_header_line_refused():
    assert refused(b"GET / HTTP/1.1\r\nHost: h\rX: y\r\n\r\n") == 400


def test_double_cr_before_lf_refused():
    assert refused(b"GET / HTTP/1.1\r\nHost: h\r\r\n\r\n") == 400


def test_bare_cr_before_request_line_refused():
    assert refused(b"\rGET / HTTP/1.1\r\nHost: h\r\n\r\n") == 400


# --- request line (RFC 9112 §3) -----------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    [
        b"G(T / HTTP/1.1",
        b"GET@ / HTTP/1.1",
        b" / HTTP/1.1",
        b"G\xc9T / HTTP/1.1",
    ],
)
def test_method_must_be_token(line):
    assert refused(line + b"\r\nHost: h\r\n\r\n") == 400


# The first bytes of a TLS 1.2/1.3 ClientHello record: handshake (0x16), TLS 1.0 record
# version, a length, ClientHello (0x01).  What a client sends to https://host:plain-port/.
CLIENT_HELLO = bytes.fromhex("16030100f4010000f00303") + bytes(range(0x20, 0x40))


@pytest.mark.parametrize(
    ("start", "waiting"),
    [
        (CLIENT_HELLO, 0),
        (b"\x00\x01\x02", 0),
        (b"GET@/", 3),
        (b" /index.html", 0),
        (b"G\xc9T", 1),
        (b"GE\rT / HTTP/1.1", 3),  # (a last CR may begin the line's CRLF)
        (b"GET\r\r", 4),
    ],
)
def test_a_method_that_cannot_be_one_is_refused_before_the_line_ends(start, waiting):
    # Before its line's end a ClientHello or garbage would hold the connection until
    # header_timeout; the error comes with the first byte that no method can hold, and is
    # the one the whole line gets.
    for size in range(waiting + 1, len(start) + 1):
        parser = RequestParser()
        parser.feed(start[:size])
        with pytest.raises(HTTPError) as info:
            parser.next_event()
        assert (info.value.status, info.value.detail) == (400, "invalid method")
    parser = RequestParser()
    parser.feed(start[:waiting])
    assert parser.next_event() is NEED_DATA
    assert whole(start + b"\r\nHost: h\r\n\r\n")[1] == (400, "invalid method")


@pytest.mark.parametrize(
    "start", [b"G", b"GET", b"GET ", b"GET /", b"M-SEARCH", b"GET\r", b"X" * 90]
)
def test_a_method_so_far_waits_for_the_line(start):
    parser = RequestParser(max_request_line=100)
    parser.feed(start)
    assert parser.next_event() is NEED_DATA


def test_a_long_line_with_a_bad_method_is_refused_for_its_method():
    # The method is checked first, whole or not, so the error does not depend on whether
    # the line's end had arrived when it went over the limit.
    assert refused(b"G@T /" + b"a" * 200 + b" HTTP/1.1\r\n\r\n", max_request_line=100) == 400
    assert refused(b"GET /" + b"a" * 200 + b" HTTP/1.1\r\n\r\n", max_request_line=100) == 414


@pytest.mark.parametrize(
    "line",
    [
        b"GET  / HTTP/1.1",
        b"GET /  HTTP/1.1",
        b"GET / HTTP/1.1 ",
        b" GET / HTTP/1.1",
        b"GET\t/ HTTP/1.1",
        b"GET /\tHTTP/1.1",
        b"GET /",
        b"GET",
        b"GET /a b HTTP/1.1",
    ],
)
def test_request_line_needs_exactly_single_spaces(line):
    assert refused(line + b"\r\nHost: h\r\n\r\n") == 400


@pytest.mark.parametrize("target", [b"/caf\xe9", b"/a\x01b", b"/a\x7fb", b"/a\x00b", b"/\x80"])
def test_target_must_be_visible_ascii(target):
    assert refused(get(b"Host: h", target=target)) == 400


@pytest.mark.parametrize("target", [b"index.html", b"?q", b"%2F"])
def test_origin_form_must_start_with_slash(target):
    assert refused(get(b"Host: h", target=target)) == 400


@pytest.mark.parametrize(
    "version",
    [b"HTTP/1", b"HTTP/1.1.1", b"http/1.1", b"HTTP/11", b"HTTP/1.x", b"HTTPS/1.1", b"HTTP/ 1.1"],
)
def test_malformed_version_refused_with_400(version):
    assert refused(get(b"Host: h", version=version)) == 400


@pytest.mark.parametrize("version", [b"HTTP/2.0", b"HTTP/0.9", b"HTTP/3.0"])
def test_unsupported_version_refused_with_505(version):
    assert refused(get(b"Host: h", version=version)) == 505


def test_higher_http1_minor_version_is_served_as_http11():
    # RFC 9110 §6.2: treat it as the highest minor version we implement.
    request = head(get(b"Host: h", version=b"HTTP/1.2"))
    assert (request.version, request.keep_alive) == ("HTTP/1.1", True)


def test_absolute_form_gives_path_and_query():
    req = head(get(b"Host: example.com", target=b"http://example.com/a/b?x=1"))
    assert (req.target, req.path, req.query) == ("http://example.com/a/b?x=1", "/a/b", "x=1")


def test_absolute_form_without_path_gives_slash():
    req = head(get(b"Host: example.com", target=b"https://example.com:8443"))
    assert (req.path, req.query) == ("/", "")


def test_absolute_form_with_query_and_no_path():
    req = head(get(b"Host: e", target=b"http://e?q=1"))
    assert (req.path, req.query) == ("/", "q=1")


def test_absolute_form_with_ipv6_host():
    assert head(get(b"Host: [::1]:80", target=b"http://[::1]:80/x")).path == "/x"


# RFC 9112 §3.2.2: a server given an absolute-form target ignores Host and uses the
# target's authority. The app sees Host as Request.host and in Request.headers (HTTP_HOST).


def test_absolute_form_authority_replaces_host():
    assert head(get(b"Host: good.example", target=b"http://evil.example/x")).host == "evil.example"


def test_absolute_form_authority_replaces_host_field_in_place():
    req = head(get(b"A: 1", b"Host: good.example", b"B: 2", target=b"http://evil.example/x"))
    assert req.headers == [("a", "1"), ("host", "evil.example"), ("b", "2")]


def test_absolute_form_authority_replaces_host_with_its_port():
    req = head(get(b"Host: good.example", target=b"https://evil.example:8443/x?q"))
    assert (req.host, req.header("host")) == ("evil.example:8443", "evil.example:8443")


def test_absolute_form_ipv6_authority_replaces_host():
    req = head(get(b"Host: good.example", target=b"http://[2001:db8::1]:8080/x"))
    assert (req.host, req.header("host")) == ("[2001:db8::1]:8080", "[2001:db8::1]:8080")


def test_absolute_form_still_needs_host_on_http11():
    assert refused(get(target=b"http://example.com/x")) == 400


def test_absolute_form_still_needs_a_valid_host():
    assert refused(get(b"Host: bad host", target=b"http://example.com/x")) == 400


def test_absolute_form_with_two_hosts_refused():
    assert refused(get(b"Host: a", b"Host: a", target=b"http://example.com/x")) == 400


def test_absolute_form_http10_without_host_takes_the_authority():
    req = head(get(target=b"http://example.com/x", version=b"HTTP/1.0"))
    assert (req.host, req.headers) == ("example.com", [])


def test_origin_form_keeps_its_host():
    req = head(get(b"Host: good.example", target=b"/x"))
    assert (req.host, req.headers) == ("good.example", [("host", "good.example")])


def test_origin_form_after_absolute_form_keeps_its_host():
    raw = get(b"Host: good.example", target=b"http://evil.example/") + get(b"Host: good.example")
    assert [(e.host, e.headers) for e in parse(raw) if type(e) is Request] == [
        ("evil.example", [("host", "evil.example")]),
        ("good.example", [("host", "good.example")]),
    ]


def test_authority_form_keeps_its_host():
    req = head(b"CONNECT example.com:443 HTTP/1.1\r\nHost: proxy.example\r\n\r\n")
    assert req.host == "proxy.example"


@pytest.mark.parametrize(
    "target",
    [
        b"http://user@example.com/",
        b"http:///path",
        b"http:/example.com/",
        b"1http://example.com/",
        b"http://example.com:80x/",
        b"example.com/path",
    ],
)
def test_bad_absolute_form_refused(target):
    assert refused(get(b"Host: example.com", target=target)) == 400


def test_authority_form_with_connect():
    req = head(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
    assert (req.method, req.target, req.path, req.query) == (
        "CONNECT",
        "example.com:443",
        "example.com:443",
        "",
    )


def test_authority_form_with_ipv6_literal():
    assert head(b"CONNECT [::1]:443 HTTP/1.1\r\nHost: [::1]:443\r\n\r\n").path == "[::1]:443"


def test_authority_form_without_connect_refused():
    assert refused(get(b"Host: example.com", target=b"example.com:443")) == 400


def test_connect_with_origin_form_refused():
    assert refused(b"CONNECT / HTTP/1.1\r\nHost: h\r\n\r\n") == 400


def test_connect_without_port_refused():
    assert refused(b"CONNECT example.com HTTP/1.1\r\nHost: h\r\n\r\n") == 400


def test_asterisk_form_with_options():
    req = head(b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n")
    assert (req.target, req.path, req.query) == ("*", "*", "")


def test_asterisk_form_without_options_refused():
    assert refused(get(b"Host: h", target=b"*")) == 400


def test_options_with_origin_form_accepted():
    assert head(b"OPTIONS /x HTTP/1.1\r\nHost: h\r\n\r\n").path == "/x"


# --- header fields (RFC 9112 §5, RFC 9110 §5.5) -------------------------------------------


@pytest.mark.parametrize("line", [b"Host : h", b"Host\t: h", b"X-A : 1"])
def test_whitespace_before_colon_refused(line):
    fields = (line,) if line.startswith(b"Host") else (b"Host: h", line)
    assert refused(get(*fields)) == 400


def test_whitespace_before_colon_detail():
    _, error = whole(get(b"Host: h", b"X-A : 1"))
    assert error == (400, "whitespace before colon in header")


@pytest.mark.parametrize("fold", [b" folded", b"\tfolded"])
def test_obs_fold_refused(fold):
    assert refused(get(b"Host: h", b"X-A: 1", fold)) == 400


def test_obs_fold_detail():
    _, error = whole(get(b"Host: h", b"X-A: 1", b" more"))
    assert error == (400, "obsolete line folding in header")


def test_first_header_line_folded_refused():
    assert refused(get(b" Host: h")) == 400


def test_line_without_colon_refused():
    assert refused(get(b"Host: h", b"NoColonHere")) == 400


@pytest.mark.parametrize("name", [b"X[1]", b"X/Y", b"X Y", b"", b"X\x00", b"\xe9t\xe9", b'"q"'])
def test_header_name_must_be_token(name):
    assert refused(get(b"Host: h", name + b": v")) == 400


@pytest.mark.parametrize("ctl", [b"\x00", b"\x01", b"\x08", b"\x0b", b"\x0c", b"\x1b", b"\x7f"])
def test_control_character_in_value_refused(ctl):
    assert refused(get(b"Host: h", b"X: a" + ctl + b"b")) == 400


def test_control_character_at_value_end_refused():
    assert refused(get(b"Host: h", b"X: ab\x00")) == 400


def test_nul_in_value_detail():
    _, error = whole(get(b"Host: h", b"X: a\x00b"))
    assert error == (400, "invalid character in header value")


def test_error_detail_is_safe_ascii():
    # The detail goes into a response body: it must never echo request bytes.
    _, error = whole(get(b"Host: h", b"X\r\n: \xff\x00"))
    assert error is not None
    assert error[1].isascii() and "\r" not in error[1] and "\n" not in error[1]


# --- Host (RFC 9112 §3.2, RFC 9110 §7.2) --------------------------------------------------


def test_http11_without_host_refused():
    assert refused(get(b"Accept: */*")) == 400


def test_http11_with_two_hosts_refused():
    assert refused(get(b"Host: a", b"Host: a")) == 400


def test_http10_with_two_hosts_refused():
    assert refused(get(b"Host: a", b"Host: b", version=b"HTTP/1.0")) == 400


def test_empty_host_accepted():
    assert head(get(b"Host:")).host == ""


@pytest.mark.parametrize(
    "value", [b"example.com", b"example.com:80", b"[::1]", b"[::1]:8080", b"10.0.0.1:1"]
)
def test_valid_host_values_accepted(value):
    assert head(get(b"Host: " + value)).host == value.decode()


@pytest.mark.parametrize("value", [b"a b", b"a/b", b"user@host", b"host:port", b"[::1", b"a?b"])
def test_invalid_host_value_refused(value):
    assert refused(get(b"Host: " + value)) == 400


def test_same_host_checked_again_after_an_invalid_one():
    # The parser caches the last valid Host; a different one is still checked.
    parser = RequestParser()
    parser.feed(get(b"Host: good") + get(b"Host: bad host"))
    assert type(parser.next_event()) is Request
    parser.next_event()
    parser.start_next_request()
    with pytest.raises(HTTPError) as info:
        parser.next_event()
    assert info.value.status == 400


# --- Content-Length bodies (RFC 9112 §6.2, RFC 9110 §8.6) ---------------------------------


def test_content_length_body_gives_data_then_end():
    events = parse(post(b"Content-Length: 5", body=b"hello"))
    assert [type(e) for e in events] == [Request, Data, EndOfMessage, type(CLOSED)]
    assert (events[0].content_length, events[1].data) == (5, b"hello")


def test_content_length_zero_gives_no_data():
    events = parse(post(b"Content-Length: 0"))
    assert [type(e) for e in events] == [Request, EndOfMessage, type(CLOSED)]
    assert events[0].content_length == 0


def test_content_length_body_handed_out_as_it_arrives():
    parser = RequestParser()
    parser.feed(post(b"Content-Length: 10", body=b"abc"))
    assert type(parser.next_event()) is Request
    assert parser.next_event() == Data(b"abc")
    assert parser.next_event() is NEED_DATA
    parser.feed(b"defghij")
    assert parser.next_event() == Data(b"defghij")
    assert type(parser.next_event()) is EndOfMessage


def test_bytes_beyond_content_length_stay_for_next_request():
    parser = RequestParser()
    parser.feed(post(b"Content-Length: 3", body=b"abcGET /next HTTP/1.1\r\nHost: h\r\n\r\n"))
    assert type(parser.next_event()) is Request
    assert parser.next_event() == Data(b"abc")
    assert type(parser.next_event()) is EndOfMessage
    assert parser.next_event() is PAUSED
    parser.start_next_request()
    assert parser.next_event().target == "/next"


def test_data_never_exceeds_content_length_even_when_more_is_buffered():
    parser = RequestParser()
    parser.feed(post(b"Content-Length: 4", body=b"abcdefgh"))
    parser.next_event()
    assert parser.next_event() == Data(b"abcd")
    assert parser.buffered == 4


def test_identical_content_length_lines_accepted():
    assert body(post(b"Content-Length: 3", b"Content-Length: 3", body=b"abc")) == b"abc"


def test_identical_content_length_list_accepted():
    assert body(post(b"Content-Length: 3, 3,3", body=b"abc")) == b"abc"


def test_content_length_with_ows_accepted():
    assert body(post(b"Content-Length:   3  ", body=b"abc")) == b"abc"


def test_content_length_leading_zeros_accepted():
    assert head(post(b"Content-Length: 003", body=b"abc")).content_length == 3


def test_differing_content_length_lines_refused():
    assert refused(post(b"Content-Length: 3", b"Content-Length: 4", body=b"abcd")) == 400


def test_differing_content_length_list_refused():
    assert refused(post(b"Content-Length: 3, 4", body=b"abcd")) == 400


@pytest.mark.parametrize(
    "value",
    [b"+5", b"-1", b"0x10", b"1 2", b"", b"abc", b"5.0", b"5,", b",5", b"1_0", b"\xb2", b"1e3"],
)
def test_malformed_content_length_refused(value):
    assert refused(post(b"Content-Length: " + value, body=b"hello")) == 400


def test_content_length_with_19_digits_refused():
    assert refused(post(b"Content-Length: " + b"1" * 19)) == 400


def test_content_length_with_18_digits_over_max_body_gives_413():
    assert refused(post(b"Content-Length: " + b"9" * 18)) == 413


def test_content_length_at_max_body_size_accepted():
    assert body(post(b"Content-Length: 8", body=b"12345678"), max_body_size=8) == b"12345678"


def test_content_length_over_max_body_size_refused():
    assert refused(post(b"Content-Length: 9", body=b"123456789"), max_body_size=8) == 413


def test_content_length_413_raised_before_any_body_arrives():
    parser = RequestParser(max_body_size=8)
    parser.feed(post(b"Content-Length: 9"))
    with pytest.raises(HTTPError) as info:
        parser.next_event()
    assert info.value.status == 413


def test_content_length_body_of_http10_request():
    assert body(b"POST / HTTP/1.0\r\nContent-Length: 2\r\n\r\nok") == b"ok"


# --- Transfer-Encoding (RFC 9112 §6.1, §6.3) ---------------------------------------------


def test_transfer_encoding_with_content_length_refused():
    raw = post(b"Content-Length: 5", b"Transfer-Encoding: chunked", body=b"0\r\n\r\n")
    assert refused(raw) == 400


def test_content_length_after_transfer_encoding_refused():
    raw = post(b"Transfer-Encoding: chunked", b"Content-Length: 5", body=b"0\r\n\r\n")
    assert refused(raw) == 400


def test_transfer_encoding_with_content_length_refused_whatever_the_coding():
    assert refused(post(b"Transfer-Encoding: gzip", b"Content-Length: 5")) == 400


def test_transfer_encoding_in_http10_refused():
    raw = b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    assert refused(raw) == 400


@pytest.mark.parametrize(
    "fields",
    [
        [b"Transfer-Encoding: chunked, chunked"],
        [b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked"],
        [b"Transfer-Encoding: chunked,CHUNKED"],
    ],
)
def test_chunked_twice_refused(fields):
    assert refused(post(*fields, body=b"0\r\n\r\n")) == 400


@pytest.mark.parametrize(
    "fields",
    [
        [b"Transfer-Encoding: chunked, gzip"],
        [b"Transfer-Encoding: chunked", b"Transfer-Encoding: gzip"],
        [b"Transfer-Encoding: chunked, identity"],
    ],
)
def test_chunked_not_last_refused(fields):
    assert refused(post(*fields, body=b"0\r\n\r\n")) == 400


@pytest.mark.parametrize(
    "value",
    [
        b"gzip",
        b"identity",
        b"xchunked",
        b"chunkedx",
        b"gzip, chunked",
        b"deflate,chunked",
        b"x;a=1",
    ],
)
def test_other_transfer_codings_not_implemented(value):
    assert refused(post(b"Transfer-Encoding: " + value, body=b"0\r\n\r\n")) == 501


@pytest.mark.parametrize("value", [b"", b" , ", b"chun ked", b'"chunked"', b"chunked;"])
def test_malformed_transfer_encoding_refused(value):
    assert refused(post(b"Transfer-Encoding: " + value, body=b"0\r\n\r\n")) == 400


def test_transfer_encoding_obs_fold_refused():
    assert refused(post(b"Transfer-Encoding:", b" chunked", body=b"0\r\n\r\n")) == 400


@pytest.mark.parametrize(
    "value", [b"Chunked", b"CHUNKED", b"  chunked  ", b"chunked,", b", chunked"]
)
def test_transfer_encoding_chunked_case_and_list_tolerant(value):
    req = head(post(b"Transfer-Encoding: " + value, body=b"0\r\n\r\n"))
    assert (req.chunked, req.content_length) == (True, None)


# --- chunked bodies (RFC 9112 §7.1) ---------------------------------------------------------


def chunked(payload: bytes, *fields: bytes) -> bytes:
    return post(b"Transfer-Encoding: chunked", *fields, body=payload)


def test_chunked_body_decoded():
    assert body(chunked(b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")) == b"hello world"


def test_chunked_empty_body():
    events = parse(chunked(b"0\r\n\r\n"))
    assert [type(e) for e in events] == [Request, EndOfMessage, type(CLOSED)]


def test_chunk_data_handed_out_before_chunk_is_complete():
    parser = RequestParser()
    parser.feed(chunked(b"a\r\n01234"))
    parser.next_event()
    assert parser.next_event() == Data(b"01234")
    assert parser.next_event() is NEED_DATA


def test_chunk_sizes_are_hex_either_case():
    raw = chunked(b"A\r\n0123456789\r\nb\r\n0123456789x\r\n0\r\n\r\n")
    assert body(raw) == b"01234567890123456789x"


def test_chunk_extensions_ignored():
    raw = chunked(
        b"5;name\r\nhello\r\n"
        b'1 ; a = b ;c="quoted \\" ;x"\r\n!\r\n'
        b"1;\tk=v\t;k2\r\n?\r\n"
        b"0;last=yes\r\n\r\n"
    )
    assert body(raw) == b"hello!?"


@pytest.mark.parametrize(
    "line",
    [b"5;", b"5;=x", b"5;a=", b'5;a="open', b"5;a b", b"5 ", b"5\t", b"5;a=b c", b"5;a=\x01"],
)
def test_malformed_chunk_extension_refused(line):
    assert refused(chunked(line + b"\r\nhello\r\n0\r\n\r\n")) == 400


@pytest.mark.parametrize("line", [b"", b"g", b"-1", b" 5", b"+5", b"0x5", b"5\r5"])
def test_malformed_chunk_size_refused(line):
    assert refused(chunked(line + b"\r\nhello\r\n0\r\n\r\n")) == 400


def test_chunk_size_of_16_hex_digits_accepted():
    assert body(chunked(b"0000000000000005\r\nhello\r\n0\r\n\r\n")) == b"hello"


def test_chunk_size_of_17_hex_digits_refused():
    assert refused(chunked(b"00000000000000005\r\nhello\r\n0\r\n\r\n")) == 400


def test_huge_chunk_size_refused_as_too_large():
    assert refused(chunked(b"ffffffffffffffff\r\nhello")) == 413


def test_missing_crlf_after_chunk_data_refused():
    assert refused(chunked(b"5\r\nhelloX\r\n0\r\n\r\n")) == 400


def test_cr_without_lf_after_chunk_data_refused():
    assert refused(chunked(b"5\r\nhello\rX0\r\n\r\n")) == 400


def test_chunk_data_longer_than_size_refused():
    assert refused(chunked(b"3\r\nhello\r\n0\r\n\r\n")) == 400


# Each chunked body once with a bare LF in its framing, once with CRLF there instead.
BARE_LF_FRAMING = {
    "after-chunk-size": (b"3\nabc\r\n0\r\n\r\n", b"3\r\nabc\r\n0\r\n\r\n"),
    "after-extension": (b"3;e=1\nabc\r\n0\r\n\r\n", b"3;e=1\r\nabc\r\n0\r\n\r\n"),
    "after-chunk-data": (b"3\r\nabc\n0\r\n\r\n", b"3\r\nabc\r\n0\r\n\r\n"),
    "after-last-chunk": (b"3\r\nabc\r\n0\n\r\n", b"3\r\nabc\r\n0\r\n\r\n"),
    "final-line-end": (b"3\r\nabc\r\n0\r\n\n", b"3\r\nabc\r\n0\r\n\r\n"),
    "trailer-line": (b"0\r\nT: 1\nU: 2\r\n\r\n", b"0\r\nT: 1\r\nU: 2\r\n\r\n"),
    "after-trailers": (b"0\r\nT: 1\r\n\n", b"0\r\nT: 1\r\n\r\n"),
    "everywhere": (b"3\nabc\n0\n\n", b"3\r\nabc\r\n0\r\n\r\n"),
}


@pytest.mark.parametrize("where", BARE_LF_FRAMING)
def test_bare_lf_in_chunked_framing_refused(where):
    # RFC 9112 §2.2's leniency covers the head only; §7.1 framing is CRLF throughout.
    assert refused(chunked(BARE_LF_FRAMING[where][0])) == 400


@pytest.mark.parametrize("where", BARE_LF_FRAMING)
def test_crlf_in_chunked_framing_accepted(where):
    assert type(parse(chunked(BARE_LF_FRAMING[where][1]))[-2]) is EndOfMessage


def test_bare_lf_in_chunked_framing_detail():
    _, error = whole(chunked(b"3\nabc\r\n0\r\n\r\n"))
    assert error == (400, "bare LF in chunked body")


@pytest.mark.parametrize(
    "framing",
    [b"3\n", b"3\r\nabc\n", b"3\r\nabc\r\n0\n", b"0\r\n\n", b"0\r\nT: 1\n"],
    ids=["chunk-size", "chunk-data", "last-chunk", "final-line-end", "trailer-line"],
)
def test_bare_lf_in_chunked_framing_refused_as_soon_as_it_arrives(framing):
    assert refused(chunked(framing), eof=False) == 400


@pytest.mark.parametrize(
    "framing",
    [b"3\r", b"3;e=1\r", b"3\r\nabc\r", b"0\r", b"0\r\n\r", b"0\r\nT: 1\r"],
    ids=["chunk-size", "extension", "chunk-data", "last-chunk", "final-line-end", "trailer-line"],
)
def test_chunked_framing_ending_in_cr_waits_for_its_lf(framing):
    assert whole(chunked(framing), eof=False)[1] is None


def test_head_with_bare_lf_still_takes_a_crlf_chunked_body():
    raw = b"POST / HTTP/1.1\nHost: h\nTransfer-Encoding: chunked\n\n3\r\nabc\r\n0\r\n\r\n"
    assert body(raw) == b"abc"


def test_chunk_line_at_length_limit_accepted():
    line = b"5;x=" + b"a" * (MAX_CHUNK_LINE - 6) + b"\r\n"
    assert len(line) == MAX_CHUNK_LINE
    assert body(chunked(line + b"hello\r\n0\r\n\r\n")) == b"hello"


def test_chunk_line_over_length_limit_refused():
    line = b"5;x=" + b"a" * (MAX_CHUNK_LINE - 5) + b"\r\n"
    assert refused(chunked(line + b"hello\r\n0\r\n\r\n")) == 400


def test_chunk_line_over_limit_refused_before_its_end_arrives():
    parser = RequestParser()
    parser.feed(chunked(b"5;x=" + b"a" * MAX_CHUNK_LINE))
    parser.next_event()
    with pytest.raises(HTTPError) as info:
        parser.next_event()
    assert info.value.status == 400


def test_trailers_returned_in_end_of_message():
    events = parse(chunked(b"5\r\nhello\r\n0\r\nX-Sum: abc \r\nX-Other:\t1\r\n\r\n"))
    assert events[-2] == EndOfMessage([("x-sum", "abc"), ("x-other", "1")])


def test_trailers_with_bare_lf_refused():
    assert refused(chunked(b"0\r\nX-Sum: 1\n\n")) == 400


@pytest.mark.parametrize("line", [b"X-Sum : 1", b" folded", b"NoColon", b"X: a\x00b", b"X: a\rb"])
def test_malformed_trailer_refused(line):
    assert refused(chunked(b"0\r\n" + line + b"\r\n\r\n")) == 400


# The request's own header section here is 39 bytes; the trailer section is 67.
TRAILER_67 = b"X: " + b"a" * 60 + b"\r\n\r\n"


def test_trailer_section_at_limit_accepted():
    assert len(TRAILER_67) == 67
    events = parse(chunked(b"0\r\n" + TRAILER_67), max_header_bytes=67)
    assert events[-2] == EndOfMessage([("x", "a" * 60)])


def test_trailer_section_over_limit_refused():
    assert refused(chunked(b"0\r\n" + TRAILER_67), max_header_bytes=66) == 431


def test_too_many_trailer_fields_refused():
    fields = b"".join(b"T%d: v\r\n" % i for i in range(4))
    assert refused(chunked(b"0\r\n" + fields + b"\r\n"), max_headers=3) == 431


def test_chunked_body_at_max_body_size_accepted():
    raw = chunked(b"4\r\n1234\r\n4\r\n5678\r\n0\r\n\r\n")
    assert body(raw, max_body_size=8) == b"12345678"


def test_chunked_body_over_max_body_size_refused():
    raw = chunked(b"4\r\n1234\r\n5\r\n56789\r\n0\r\n\r\n")
    assert refused(raw, max_body_size=8) == 413


def test_chunked_413_comes_after_earlier_chunks_were_handed_out():
    events, error = whole(chunked(b"4\r\n1234\r\n5\r\n56789\r\n0\r\n\r\n"), max_body_size=8)
    assert (error[0], [e for e in events if type(e) is Data]) == (413, [Data(b"1234")])


def test_chunked_then_pipelined_request():
    raw = chunked(b"1\r\na\r\n0\r\n\r\n") + get(b"Host: h", target=b"/next")
    events = parse(raw)
    assert [e.target for e in events if type(e) is Request] == ["/submit", "/next"]


# --- chunked framing budget (RFC 9112 §7.1.1; CVE-2024-22019) -------------------------------


def chunks_of(data: bytes, size: int, ext: bytes = b"") -> bytes:
    """data as chunk-data of `size` bytes each (the last maybe shorter), then the last-chunk
    and an empty trailer section."""
    pieces = (data[i : i + size] for i in range(0, len(data), size))
    return b"".join(b"%x%s\r\n%s\r\n" % (len(p), ext, p) for p in pieces) + b"0\r\n\r\n"


def pieces_of(raw: bytes, size: int):
    """raw in pieces of `size` bytes, cut as they are fed (an error stops the feeding)."""
    return (raw[i : i + size] for i in range(0, len(raw), size))


# The shape of CVE-2024-22019: 1000 one-byte chunks, each with a 4 KiB extension, so
# 1000 bytes of data take 4 MB on the wire.
EXTENSION_FLOOD = chunked(chunks_of(b"Z" * 1000, 1, b";a=" + b"x" * 4080))


def test_extension_flood_refused_with_413():
    assert whole(EXTENSION_FLOOD, max_body_size=1000)[1] == (413, "too much chunked framing")


def test_extension_flood_fed_a_few_bytes_at_a_time_refused_with_413():
    _, error = run(pieces_of(EXTENSION_FLOOD, 7), max_body_size=1000)
    assert error == (413, "too much chunked framing")


def test_extension_flood_refused_within_its_first_chunks():
    # 1000 / 8 + 16 KiB of framing: the fifth 4 KiB extension is past it.
    events, error = whole(EXTENSION_FLOOD, max_body_size=1000)
    assert error is not None and sum(type(e) is Data for e in events) == 4


def test_extension_flood_refused_under_default_limits():
    # max_body_size is 10 MiB by default: framing may take 1.25 MiB + 16 KiB, not 4 MB.
    assert whole(EXTENSION_FLOOD)[1] == (413, "too much chunked framing")


@pytest.mark.parametrize("size", [100, 1024, 4096])
def test_chunked_body_at_max_body_size_in_ordinary_chunks_accepted(size):
    data = bytes(range(256)) * 40
    raw = chunked(chunks_of(data, size, b';name="value"'))
    assert body(raw, max_body_size=len(data)) == data


def test_tiny_chunks_are_framing_within_the_budget():
    # 2-byte chunks: 5 bytes of framing per 2 of data, well within an eighth of the limit.
    raw = chunked(chunks_of(b"ab" * 4_000, 2))
    assert body(raw, max_body_size=1 << 20) == b"ab" * 4_000


def extension_flood(last_extension: int) -> bytes:
    """Four 1-byte chunks with 4,000-byte extensions, then one with `last_extension`
    bytes of extension. Framing: 4,005 bytes per chunk of the four (its line and the
    CRLF after its data), last_extension + 5 for the last, 5 for the end: 16,030 bytes
    plus last_extension."""
    flood = chunks_of(b"abcd", 1, b";e=" + b"x" * 3997)
    last = b"1;e=" + b"x" * (last_extension - 3) + b"\r\nZ\r\n"
    return chunked(flood[: -len(b"0\r\n\r\n")] + last + b"0\r\n\r\n")


def test_framing_up_to_its_budget_accepted():
    # max_body_size 1000: 1000 // 8 + 16,384 = 16,509 bytes of framing, all of it used.
    assert body(extension_flood(479), max_body_size=1000) == b"abcdZ"


def test_framing_one_byte_over_its_budget_refused_with_413():
    assert refused(extension_flood(480), max_body_size=1000) == 413


def test_chunk_data_over_max_body_size_keeps_its_own_413():
    raw = chunked(b"3e9\r\n" + b"d" * 1001 + b"\r\n0\r\n\r\n")
    assert whole(raw, max_body_size=1000)[1] == (413, "request body too large")


# 17,000 bytes of trailer section: past the framing budget of a small max_body_size
# (100 // 8 + 16,384), within the default max_header_bytes.
TRAILER_17K = b"X: " + b"a" * 16_993 + b"\r\n\r\n"


def test_trailer_section_over_framing_budget_refused_with_413():
    assert refused(chunked(b"0\r\n" + TRAILER_17K), max_body_size=100) == 413


@pytest.mark.parametrize(
    ("max_header_bytes", "max_body_size", "status"), [(50, 100, 431), (20_000, 100, 413)]
)
def test_trailer_section_over_both_bounds_gets_the_status_of_the_smaller(
    max_header_bytes, max_body_size, status
):
    raw = chunked(b"0\r\n" + TRAILER_17K)
    limits = {"max_header_bytes": max_header_bytes, "max_body_size": max_body_size}
    assert refused(raw, **limits) == status


@pytest.mark.parametrize(
    ("raw", "max_body_size"),
    [
        pytest.param(extension_flood(480), 1000, id="chunk-lines"),
        pytest.param(chunked(b"0\r\n" + TRAILER_17K), 100, id="trailers"),
    ],
)
def test_framing_budget_error_is_the_same_for_every_two_way_split(raw, max_body_size):
    # Every 17th split point (the inputs are 17 KB), and every one near the head's end.
    cuts = sorted({*range(1, len(raw), 17), *range(1, 120)})
    errors = {run([raw[:i], raw[i:]], max_body_size=max_body_size)[1] for i in cuts}
    assert errors == {(413, "too much chunked framing")}


# --- Expect (RFC 9110 §10.1.1) -------------------------------------------------------------


@pytest.mark.parametrize("value", [b"100-continue", b"100-Continue", b"100-CONTINUE"])
def test_expect_100_continue_sets_flag(value):
    assert head(post(b"Expect: " + value, b"Content-Length: 1", body=b"x")).expect_continue


def test_no_expect_means_no_flag():
    assert not head(post(b"Content-Length: 1", body=b"x")).expect_continue


@pytest.mark.parametrize("value", [b"200-ok", b"100-continue, foo", b"100-continue;x=1"])
def test_other_expectation_refused_with_417(value):
    assert refused(post(b"Expect: " + value, b"Content-Length: 1", body=b"x")) == 417


def test_expect_ignored_for_http10():
    raw = b"POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\nx"
    assert not head(raw).expect_continue


def test_unknown_expect_ignored_for_http10():
    assert head(b"GET / HTTP/1.0\r\nExpect: something\r\n\r\n").expect_continue is False


# --- Connection and keep-alive (RFC 9112 §9.3) ---------------------------------------------


def test_http11_keeps_alive_by_default():
    assert head(get(b"Host: h")).keep_alive is True


def test_http11_connection_close():
    assert head(get(b"Host: h", b"Connection: close")).keep_alive is False


def test_http10_closes_by_default():
    assert head(b"GET / HTTP/1.0\r\n\r\n").keep_alive is False


def test_http10_connection_keep_alive():
    assert head(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").keep_alive is True


@pytest.mark.parametrize("value", [b"keep-alive, close", b"close, keep-alive", b"Keep-Alive,CLOSE"])
def test_close_wins_over_keep_alive(value):
    assert head(get(b"Host: h", b"Connection: " + value)).keep_alive is False


@pytest.mark.parametrize("order", [1, -1], ids=["close-last", "close-first"])
def test_close_on_any_connection_line_counts(order):
    fields = (b"Connection: keep-alive", b"Connection: close")[::order]
    assert head(get(b"Host: h", *fields)).keep_alive is False
    assert head(get(b"Host: h", *fields, version=b"HTTP/1.0")).keep_alive is False


@pytest.mark.parametrize("value", [b"Close", b"CLOSE", b"Upgrade, close", b" close "])
def test_connection_close_case_and_list_tolerant(value):
    assert head(get(b"Host: h", b"Connection: " + value)).keep_alive is False


def test_connection_token_must_be_whole_to_count():
    assert head(get(b"Host: h", b"Connection: closed")).keep_alive is True


def test_http10_keep_alive_among_other_tokens():
    raw = b"GET / HTTP/1.0\r\nConnection: foo, Keep-Alive\r\n\r\n"
    assert head(raw).keep_alive is True


# --- pipelining ---------------------------------------------------------------------------


def test_three_pipelined_requests_parse_in_order_with_pauses():
    parser = RequestParser()
    parser.feed(b"".join(get(b"Host: h", target=b"/%d" % i) for i in range(3)))
    seen = []
    for _ in range(3):
        request = parser.next_event()
        seen.append(request.target)
        assert type(parser.next_event()) is EndOfMessage
        assert parser.next_event() is PAUSED
        assert parser.next_event() is PAUSED
        parser.start_next_request()
    assert seen == ["/0", "/1", "/2"]
    assert parser.next_event() is NEED_DATA


def test_start_next_request_is_a_noop_before_end_of_message():
    parser = RequestParser()
    parser.feed(post(b"Content-Length: 3", body=b"abc"))
    parser.next_event()
    parser.start_next_request()
    assert parser.next_event() == Data(b"abc")


def test_pipelined_requests_with_bodies():
    raw = (
        post(b"Content-Length: 3", body=b"one")
        + chunked(b"3\r\ntwo\r\n0\r\n\r\n")
        + post(b"Content-Length: 5", body=b"three")
    )
    bodies = []
    for event in parse(raw):
        if type(event) is Request:
            bodies.append(b"")
        elif type(event) is Data:
            bodies[-1] += event.data
    assert bodies == [b"one", b"two", b"three"]


def test_next_request_waits_for_start_next_request_even_with_eof():
    parser = RequestParser()
    parser.feed(get(b"Host: h") * 2)
    parser.feed_eof()
    parser.next_event()
    parser.next_event()
    assert parser.next_event() is PAUSED
    parser.start_next_request()
    assert type(parser.next_event()) is Request


# --- end of input -------------------------------------------------------------------------


def test_eof_at_message_boundary_gives_closed_repeatedly():
    parser = RequestParser()
    parser.feed_eof()
    assert [parser.next_event() for _ in range(3)] == [CLOSED] * 3


def test_half_closed_client_still_gets_its_request():
    parser = RequestParser()
    parser.feed(post(b"Content-Length: 2", body=b"hi"))
    parser.feed_eof()
    assert type(parser.next_event()) is Request
    assert parser.next_event() == Data(b"hi")
    assert type(parser.next_event()) is EndOfMessage
    parser.start_next_request()
    assert parser.next_event() is CLOSED


def test_eof_mid_head_refused():
    assert refused(b"GET / HTTP/1.1\r\nHost: h\r\n") == 400


def test_eof_mid_request_line_refused():
    assert refused(b"GET / HT") == 400


def test_eof_mid_head_detail():
    _, error = whole(b"GET / HTTP/1.1\r\n")
    assert error == (400, "incomplete request")


def test_eof_mid_content_length_body_refused():
    assert refused(post(b"Content-Length: 10", body=b"abc")) == 400


def test_eof_mid_content_length_body_after_data_was_handed_out():
    events, error = whole(post(b"Content-Length: 10", body=b"abc"))
    assert (error[0], [e for e in events if type(e) is Data]) == (400, [Data(b"abc")])


def test_eof_mid_chunk_refused():
    assert refused(chunked(b"5\r\nhe")) == 400


def test_eof_before_last_chunk_refused():
    assert refused(chunked(b"5\r\nhello\r\n")) == 400


def test_eof_in_trailers_refused():
    assert refused(chunked(b"0\r\nX: 1\r\n")) == 400


def test_eof_after_leading_empty_lines_is_clean():
    events, error = whole(b"\r\n\r\n")
    assert (normalise(events), error) == ([("CLOSED",)], None)


def test_eof_after_a_lone_cr_refused():
    assert refused(get(b"Host: h") + b"\r") == 400


def test_feed_after_eof_ignored():
    parser = RequestParser()
    parser.feed_eof()
    parser.feed(get(b"Host: h"))
    assert parser.next_event() is CLOSED


# --- errors are final ---------------------------------------------------------------------


def test_parser_stays_dead_after_error():
    parser = RequestParser()
    parser.feed(b"GET / HTTP/2.0\r\n\r\n")
    statuses = []
    for _ in range(3):
        with pytest.raises(HTTPError) as info:
            parser.next_event()
        statuses.append((info.value.status, info.value.detail))
    assert statuses == [(505, "HTTP version not supported")] * 3


def test_good_input_after_error_does_not_revive_parser():
    parser = RequestParser()
    parser.feed(b"BAD\r\n\r\n")
    with pytest.raises(HTTPError):
        parser.next_event()
    parser.feed(get(b"Host: h"))
    parser.start_next_request()
    with pytest.raises(HTTPError):
        parser.next_event()


def test_error_after_earlier_good_requests():
    parser = RequestParser()
    parser.feed(get(b"Host: h") + b"GET / HTTP/1.1\r\nHost : h\r\n\r\n")
    assert type(parser.next_event()) is Request
    assert type(parser.next_event()) is EndOfMessage
    parser.start_next_request()
    with pytest.raises(HTTPError):
        parser.next_event()


# --- limits -------------------------------------------------------------------------------

LINE = b"GET /" + b"a" * 86 + b" HTTP/1.1"  # exactly 100 bytes


def test_request_line_at_limit_accepted():
    assert len(LINE) == 100
    assert head(LINE + b"\r\nHost: h\r\n\r\n", max_request_line=100).target == "/" + "a" * 86


def test_request_line_over_limit_refused_with_414():
    assert refused(LINE + b"\r\nHost: h\r\n\r\n", max_request_line=99) == 414


def test_request_line_at_limit_with_bare_lf_accepted():
    assert head(LINE + b"\nHost: h\n\n", max_request_line=100).method == "GET"


def test_request_line_limit_applies_to_malformed_lines_too():
    assert refused(b"X" * 101 + b"\r\n\r\n", max_request_line=100) == 414


def test_request_line_over_limit_refused_before_its_end_arrives():
    parser = RequestParser(max_request_line=100)
    parser.feed(LINE + b"a")
    with pytest.raises(HTTPError) as info:
        parser.next_event()
    assert info.value.status == 414


def test_request_line_at_limit_without_end_waits():
    parser = RequestParser(max_request_line=100)
    parser.feed(LINE)
    assert parser.next_event() is NEED_DATA
    parser.feed(b"\r")  # could still be the first half of the CRLF
    assert parser.next_event() is NEED_DATA


def test_request_line_limit_default_is_8192():
    line = b"GET /" + b"a" * (8192 - 14) + b" HTTP/1.1"
    assert head(line + b"\r\nHost: h\r\n\r\n").method == "GET"
    assert refused(line + b"a\r\nHost: h\r\n\r\n") == 414


# "Host: h\r\n" (9) + "X: " + value + "\r\n" (5 + len) + blank line (2) = 16 + len(value)
SECTION_100 = b"Host: h\r\nX: " + b"v" * 84 + b"\r\n\r\n"


def test_header_section_at_limit_accepted():
    assert len(SECTION_100) == 100
    assert head(b"GET / HTTP/1.1\r\n" + SECTION_100, max_header_bytes=100).header("x") == "v" * 84


def test_header_section_over_limit_refused_with_431():
    assert refused(b"GET / HTTP/1.1\r\n" + SECTION_100, max_header_bytes=99) == 431


def test_header_section_over_limit_refused_before_its_end_arrives():
    parser = RequestParser(max_header_bytes=100)
    parser.feed(b"GET / HTTP/1.1\r\nHost: h\r\nX: " + b"v" * 100)
    with pytest.raises(HTTPError) as info:
        parser.next_event()
    assert info.value.status == 431


def test_header_section_one_short_of_limit_without_end_waits():
    parser = RequestParser(max_header_bytes=100)
    parser.feed(b"GET / HTTP/1.1\r\n" + SECTION_100[:99])
    assert parser.next_event() is NEED_DATA
    parser.feed(SECTION_100[99:])
    assert type(parser.next_event()) is Request


def test_header_section_without_fields_counts_its_blank_line():
    assert head(b"GET / HTTP/1.0\r\n\r\n", max_header_bytes=2).headers == []
    assert refused(b"GET / HTTP/1.0\r\n\r\n", max_header_bytes=1) == 431


def test_request_line_errors_win_over_header_size_errors():
    raw = b"GET / HTTP/2.0\r\n" + SECTION_100
    assert refused(raw, max_header_bytes=10) == 505


def test_header_count_at_limit_accepted():
    fields = [b"Host: h"] + [b"X-%d: v" % i for i in range(9)]
    assert len(head(get(*fields), max_headers=10).headers) == 10


def test_header_count_over_limit_refused_with_431():
    fields = [b"Host: h"] + [b"X-%d: v" % i for i in range(10)]
    assert refused(get(*fields), max_headers=10) == 431


def test_large_body_streams_without_buffering_whole():
    parser = RequestParser()
    parser.feed(post(b"Content-Length: 1000000"))
    parser.next_event()
    total = 0
    chunk = b"x" * 65536
    while total < 1_000_000:
        piece = chunk[: 1_000_000 - total]
        parser.feed(piece)
        event = parser.next_event()
        assert event == Data(piece)
        assert parser.buffered == 0
        total += len(piece)
    assert type(parser.next_event()) is EndOfMessage


def test_slow_header_section_is_not_quadratic():
    # Byte-at-a-time feeding of a 60 KB head must finish quickly (resumed searches).
    raw = b"GET / HTTP/1.1\r\nHost: h\r\n" + b"X: " + b"v" * 60_000 + b"\r\n\r\n"
    parser = RequestParser()
    for i in range(len(raw) - 1):
        parser.feed(raw[i : i + 1])
        assert parser.next_event() is NEED_DATA
    parser.feed(raw[-1:])
    assert type(parser.next_event()) is Request


# --- request smuggling shapes --------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "status"),
    [
        # CL.TE and TE.CL: both framing headers.
        ([b"Content-Length: 6", b"Transfer-Encoding: chunked"], 400),
        ([b"Transfer-Encoding: chunked", b"Content-Length: 6"], 400),
        # TE.TE: obfuscated Transfer-Encoding a proxy may read differently.
        ([b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked"], 400),
        ([b"Transfer-Encoding: chunked, chunked"], 400),
        ([b"Transfer-Encoding: xchunked"], 501),
        ([b"Transfer-Encoding: chunked", b"Transfer-Encoding: x"], 400),
        ([b"Transfer-Encoding:", b" chunked"], 400),
        ([b"Transfer-Encoding : chunked"], 400),
        ([b"Transfer-Encoding\t: chunked"], 400),
        ([b"Transfer-Encoding: chunked\x0b"], 400),
        # Conflicting or malformed lengths.
        ([b"Content-Length: 6", b"Content-Length: 5"], 400),
        ([b"Content-Length: 6, 5"], 400),
        ([b"Content-Length: +6"], 400),
        ([b"Content-Length: -1"], 400),
        ([b"Content-Length: 0x6"], 400),
        ([b"Content-Length: 6 0"], 400),
        ([b"Content-Length: 6\x00"], 400),
    ],
)
def test_smuggling_shapes(fields, status):
    raw = post(*fields, body=b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n")
    assert refused(raw) == status


def test_transfer_encoding_lookalike_is_an_ordinary_field():
    raw = post(b"Transfer_Encoding: chunked", b"Content-Length: 5", body=b"0\r\n\r\n")
    req = head(raw)
    assert (req.chunked, req.content_length) == (False, 5)


def test_smuggled_request_in_content_length_body_stays_body():
    inner = b"GET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n"
    events = parse(post(b"Content-Length: %d" % len(inner), body=inner))
    assert [e.target for e in events if type(e) is Request] == ["/submit"]
    assert b"".join(e.data for e in events if type(e) is Data) == inner


# --- byte-at-a-time and every split ---------------------------------------------------------

SAMPLES = [
    get(b"Host: h"),
    get(b"Host: h", b"Connection: close", target=b"/x?y=1"),
    b"\r\n\nGET / HTTP/1.0\nConnection: keep-alive\n\n",
    post(b"Content-Length: 11", body=b"hello world"),
    chunked(b"5;e=1\r\nhello\r\n0\r\nT: 1\r\n\r\n"),
    post(b"Content-Length: 3", body=b"abc") + get(b"Host: h") + chunked(b"1\r\nx\r\n0\r\n\r\n"),
    # refusals
    get(b"Host: h", b"X : y"),
    get(b"Host: h", version=b"HTTP/2.0"),
    chunked(b"5\r\nhelloX"),
    chunked(b"3\nabc\n0\n\n"),
    chunked(b"5\r\nhello\r\n0\r\nT: 1\nU: 2\r\n\r\n"),
    post(b"Content-Length: 10", body=b"abc"),
    get(b"Host: h") + b"GET / HTTP/1.1\r\nHost: h\r\nA: \x00\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\r\n\r\n",
]


@pytest.mark.parametrize("raw", SAMPLES)
def test_byte_at_a_time_matches_whole_buffer(raw):
    events, error = whole(raw)
    events_b, error_b = bytewise(raw)
    assert (normalise(events_b), error_b) == (normalise(events), error)


@pytest.mark.parametrize("raw", SAMPLES)
def test_every_two_way_split_matches_whole_buffer(raw):
    expected = whole(raw)
    expected = (normalise(expected[0]), expected[1])
    for i in range(1, len(raw)):
        events, error = run([raw[:i], raw[i:]])
        assert (normalise(events), error) == expected, i


# --- property tests -----------------------------------------------------------------------

TCHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
VALUE_CHARS = "".join(map(chr, range(0x21, 0x7F))) + " \t" + "".join(map(chr, range(0x80, 0x100)))
PATH_CHARS = "".join(c for c in map(chr, range(0x21, 0x7F)) if c != "?")
FRAMING = {"host", "content-length", "transfer-encoding", "connection", "expect"}

tokens = st.text(TCHARS, min_size=1, max_size=12)
field_values = st.text(VALUE_CHARS, max_size=30).map(lambda v: v.strip(" \t"))
fields = st.lists(
    st.tuples(tokens.filter(lambda n: n.lower() not in FRAMING), field_values), max_size=6
)


@st.composite
def requests(draw):
    """(raw bytes, expected (method, target, headers, body, trailers)) of a valid request."""
    # CONNECT takes an authority-form target, which this generator does not make.
    methods = st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]) | tokens
    method = draw(methods.filter(lambda m: m != "CONNECT"))
    path = "/" + draw(st.text(PATH_CHARS, max_size=20))
    query = draw(st.none() | st.text(PATH_CHARS + "?", max_size=10))
    target = path if query is None else f"{path}?{query}"
    eol = draw(st.sampled_from([b"\r\n", b"\n"]))
    headers = [("host", draw(st.sampled_from(["h", "example.com:8080", "[::1]", ""])))]
    headers += [(name, value) for name, value in draw(fields)]
    content = draw(st.binary(max_size=80))
    framing = draw(st.sampled_from(["none", "length", "chunked"] if content else ["none"]))
    trailers: list = []
    payload = b""
    if framing == "length":
        headers.append(("content-length", str(len(content))))
        payload = content
    elif framing == "chunked":
        headers.append(("transfer-encoding", "chunked"))
        cuts = sorted(draw(st.lists(st.integers(0, len(content)), max_size=4)))
        pieces = [
            content[a:b] for a, b in zip([0, *cuts], [*cuts, len(content)], strict=True) if b > a
        ]
        # The head may end its lines with a bare LF; chunked framing may not (§7.1).
        for piece in pieces:
            ext = draw(st.sampled_from([b"", b";a", b";a=b", b' ; q="x y"']))
            payload += b"%x%s\r\n%s\r\n" % (len(piece), ext, piece)
        trailers = [(n.lower(), v) for n, v in draw(fields)]
        payload += b"0\r\n"
        payload += b"".join(f"{n}: {v}\r\n".encode("latin-1") for n, v in trailers)
        payload += b"\r\n"
    else:
        content = b""
    lines = [f"{method} {target} HTTP/1.1".encode()]
    lines += [
        f"{n}:{draw(st.sampled_from(['', ' ', '  ', chr(9)]))}{v}".encode("latin-1")
        for n, v in headers
    ]
    raw = b"".join(line + eol for line in lines) + eol + payload
    expected = (method, target, [(n.lower(), v) for n, v in headers], content, trailers)
    return raw, expected


def split_at(raw: bytes, cuts: list[int]) -> list[bytes]:
    cuts = sorted({c % (len(raw) + 1) for c in cuts})
    return [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True)]


PROPERTY = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(st.binary(max_size=300), st.lists(st.integers(0, 400), max_size=5))
def test_arbitrary_bytes_give_events_or_http_error(raw, cuts):
    # run() bounds the number of next_event() calls; any other exception fails the test.
    events, error = run(split_at(raw, cuts))
    for event in events:
        assert type(event) in (Request, Data, EndOfMessage) or event is CLOSED
    assert error is None or error[0] in (400, 413, 414, 417, 431, 501, 505)


@st.composite
def mutated_requests(draw):
    raw = bytearray(draw(requests())[0] * draw(st.integers(1, 2)))
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(raw)))
        op = draw(st.sampled_from(["insert", "delete", "replace"]))
        byte = draw(st.sampled_from(b'\r\n\t :;,\x00\x7f\x80 0aA-"\\'))
        if op == "insert":
            raw[i:i] = bytes([byte])
        elif op == "delete":
            del raw[i : i + 1]
        elif i < len(raw):
            raw[i] = byte
    return bytes(raw)


@PROPERTY
@given(mutated_requests(), st.lists(st.integers(0, 400), max_size=5))
def test_damaged_requests_split_anywhere_give_same_outcome(raw, cuts):
    events, error = run([raw])
    events_s, error_s = run(split_at(raw, cuts))
    assert (normalise(events_s), error_s) == (normalise(events), error)


@PROPERTY
@given(st.lists(requests(), min_size=1, max_size=3), st.lists(st.integers(0, 2000), max_size=8))
def test_valid_requests_split_anywhere_give_same_events(reqs, cuts):
    raw = b"".join(r for r, _ in reqs)
    events, error = run([raw])
    assert error is None
    events_s, error_s = run(split_at(raw, cuts))
    assert (normalise(events_s), error_s) == (normalise(events), None)


@PROPERTY
@given(st.lists(requests(), min_size=1, max_size=3))
def test_serialised_requests_parse_back_to_their_parts(reqs):
    events, error = run([b"".join(r for r, _ in reqs)])
    assert error is None
    parsed = []
    for event in events:
        if type(event) is Request:
            parsed.append([event.method, event.target, event.headers, b"", None])
        elif type(event) is Data:
            parsed[-1][3] += event.data
        elif type(event) is EndOfMessage:
            parsed[-1][4] = list(event.trailers)
    assert [tuple(p) for p in parsed] == [expected for _, expected in reqs]


small_limits = st.fixed_dictionaries(
    {
        "max_request_line": st.integers(1, 60),
        "max_header_bytes": st.integers(1, 120),
        "max_headers": st.integers(0, 6),
        "max_body_size": st.integers(0, 100),
    }
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_requests(), small_limits, st.booleans())
def test_limit_errors_do_not_depend_on_how_input_is_split(raw, limits, eof):
    events, error = whole(raw, eof=eof, **limits)
    events_b, error_b = bytewise(raw, eof=eof, **limits)
    assert (normalise(events_b), error_b) == (normalise(events), error)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(mutated_requests() | st.binary(min_size=1, max_size=200), min_size=1, max_size=4),
    st.lists(st.integers(0, 3000), max_size=10),
    small_limits,
)
def test_the_parser_holds_no_more_than_its_limits_plus_the_last_feed(pieces, cuts, limits):
    # What a client can make a connection hold while a request is being parsed: a head
    # (its limits), a chunk-size line or trailers (their limits); bodies leave as Data.
    # Requests are answered at once here (PAUSED -> start_next_request), as the
    # connection answers one before it reads more.
    parser = RequestParser(**limits)
    bound = limits["max_request_line"] + limits["max_header_bytes"] + MAX_CHUNK_LINE
    for piece in split_at(b"".join(pieces), cuts):
        parser.feed(piece)
        try:
            drain(parser)
        except HTTPError:
            return
        assert parser.buffered <= bound + len(piece)


# --- between requests: a parser as good as new (an idle exchange lends it out) -----------

GET_ = b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n"
POST_ = b"POST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc"


def until_paused(parser: RequestParser) -> list:
    events = []
    while (event := parser.next_event()) is not PAUSED:
        events.append(event)
        assert event is not NEED_DATA and len(events) < MAX_STEPS
    return events


def test_after_a_request_with_nothing_more_the_parser_parses_like_a_new_one():
    parser = RequestParser()
    parser.feed(GET_)
    until_paused(parser)
    assert parser.start_next_request() is True
    fresh = RequestParser()
    for p in (parser, fresh):
        p.feed(POST_)
    assert [repr(e) for e in drain(parser)] == [repr(e) for e in drain(fresh)]


@pytest.mark.parametrize(
    "after, eof",
    [(b"GET /a HT", False), (b"\r\n", False), (b"", True)],
    ids=["part-of-a-head", "an-empty-line", "eof"],
)
def test_after_a_request_anything_of_another_is_reported(after, eof):
    parser = RequestParser()
    parser.feed(GET_ + after)
    if eof:
        parser.feed_eof()
    until_paused(parser)
    assert parser.start_next_request() is False
    assert parser.buffered == len(after)


def test_an_empty_line_already_skipped_is_something_of_another_request():
    parser = RequestParser()
    parser.feed(GET_)
    until_paused(parser)
    parser.start_next_request()
    parser.feed(b"\r\n")
    assert parser.next_event() is NEED_DATA and parser.buffered == 0
    assert parser.start_next_request() is False


@pytest.mark.parametrize("pieces", [[POST_[:-2]], [b"BAD\r\n\r\n"]], ids=["in-a-body", "refused"])
def test_outside_a_request_boundary_start_next_request_changes_nothing(pieces):
    parser = RequestParser()
    for piece in pieces:
        parser.feed(piece)
    try:
        drain(parser)
    except HTTPError:
        pass
    state = (parser._buf, parser._pos, parser._state)
    assert parser.start_next_request() is False
    assert (parser._buf, parser._pos, parser._state) == state


# --- field lines seen before (_KNOWN_FIELD_LINES) ---------------------------------------

FIELD_NAME = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
FIELD_VALUE = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")


def reference_fields(lines: list[bytes]) -> list[tuple[str, str]] | None:
    """The fields of a section by RFC 9110 §5.5 / RFC 9112 §5, written out without the
    parser's patterns; None if some line is invalid."""
    fields = []
    for line in lines:
        if line.endswith(b"\r"):
            line = line[:-1]
        name, colon, value = line.partition(b":")
        if not colon or not FIELD_NAME.fullmatch(name) or not FIELD_VALUE.fullmatch(value):
            return None
        fields.append((name.decode().lower(), value.strip(b" \t").decode("latin-1")))
    return fields


field_line_bytes = st.lists(
    st.sampled_from([b"a", b"X", b"-", b":", b" ", b"\t", b"\r", b"\x00", b"\x7f", b"\xe9", b"v"]),
    min_size=1,
    max_size=12,
).map(b"".join)


@PROPERTY
@given(st.lists(field_line_bytes, max_size=5), st.booleans())
def test_a_field_line_parses_alike_when_new_and_when_seen_before(lines, crlf):
    # (not a second Host, nor a blank line: b"\r" before a LF is one)
    lines = [line for line in lines if not line.lower().startswith(b"host") and line != b"\r"]
    eol = b"\r\n" if crlf else b"\n"
    raw = eol.join([b"GET / HTTP/1.1", b"Host: h", *lines]) + eol + eol
    # (the lines as the wire has them up to their LF: a CR of their own is then not
    # the CR of a CRLF)
    expected = reference_fields([line + eol[:-1] for line in lines])
    for _ in range(2):  # new, then (if valid and short) known
        events, error = whole(raw)
        if expected is None:
            assert error is not None and error[0] == 400
        else:
            assert error is None
            assert events[0].headers == [("host", "h"), *expected]


def test_only_lines_not_seen_before_are_matched(monkeypatch):
    matched = []
    real = parser_module.FIELD_LINE_TEXT

    class Counting:
        def fullmatch(self, line):
            matched.append(line)
            return real.fullmatch(line)

    monkeypatch.setattr(parser_module, "FIELD_LINE_TEXT", Counting())
    new = f"X-New-{id(matched)}: v"
    newer = f"X-Newer-{id(matched)}:  w "
    assert head(get(b"Host: h", new.encode())).headers[1] == (new[:-3].lower(), "v")
    assert new + "\r" in matched
    matched.clear()
    fields = head(get(b"Host: h", new.encode(), newer.encode())).headers
    assert fields[1:] == [(new[:-3].lower(), "v"), (newer[:-5].lower(), "w")]
    assert matched == [newer + "\r"]


def test_each_request_gets_a_list_of_its_own():
    raw = get(b"Host: h", b"Accept: */*")
    first = head(raw)
    first.headers.append(("x-added", "by the app"))
    first.headers[1] = ("accept", "changed")
    assert head(raw).headers == [("host", "h"), ("accept", "*/*")]


def test_the_known_lines_are_bounded_and_long_lines_are_not_kept():
    known = parser_module._KNOWN_FIELD_LINES
    long_value = b"c" * parser_module.KNOWN_LINE_MAX
    head(get(b"Host: h", b"Cookie: " + long_value))
    assert "Cookie: " + long_value.decode() + "\r" not in known
    for n in range(parser_module.KNOWN_LINES_MAX // 50 + 2):
        fields = [b"X-Flood-%d-%d: v" % (n, i) for i in range(50)]
        assert len(head(get(b"Host: h", *fields), max_headers=100).headers) == 51
        assert len(known) <= parser_module.KNOWN_LINES_MAX
    assert "X-Flood-0-0: v\r" not in known  # emptied once full, then filled again
    assert f"X-Flood-{n}-49: v\r" in known


# --- request lines seen before (_KNOWN_REQUEST_LINES) ------------------------------------

request_line_bytes = st.tuples(
    st.sampled_from([b"GET", b"POST", b"OPTIONS", b"CONNECT", b"G T", b"get"]),
    st.sampled_from([b"/", b"/a?b=c", b"*", b"http://h.example/x?y", b"h.example:443", b"/\x7f"]),
    st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/1.2", b"HTTP/2.0", b"http/1.1"]),
).map(b" ".join)


@PROPERTY
@given(request_line_bytes, st.integers(10, 60))
def test_a_request_line_parses_alike_when_new_and_when_seen_before(line, max_line):
    raw = line + b"\r\nHost: h\r\n\r\n"
    outcomes = [whole(raw, max_request_line=limit) for limit in (8000, max_line, 8000, max_line)]
    assert outcomes[0] == outcomes[2] and outcomes[1] == outcomes[3]
    short_enough = len(line) <= max_line
    assert (outcomes[1] == outcomes[0]) == short_enough or outcomes[0][1] is not None
    if not short_enough:
        assert outcomes[1][1] is not None and outcomes[1][1][0] in (400, 414, 505)


def test_a_known_request_line_is_not_matched_again_but_its_length_is_checked(monkeypatch):
    matched = []
    real = parser_module.REQUEST_LINE

    class Counting:
        def match(self, text):
            matched.append(text)
            return real.match(text)

    monkeypatch.setattr(parser_module, "REQUEST_LINE", Counting())
    target = f"/known-{id(matched)}?q=1"
    raw = get(b"Host: h", target=target.encode())
    first = head(raw)
    assert (first.method, first.path, first.query) == ("GET", target[:-4], "q=1")
    matched.clear()
    events, error = whole(raw)  # (byte by byte, the request line is checked as it comes)
    again = events[0]
    assert error is None
    parts = (again.method, again.target, again.path, again.query, again.version)
    assert parts == ("GET", target, target[:-4], "q=1", "HTTP/1.1")
    assert matched == []
    assert refused(raw, max_request_line=len(target) + 12) == 414


def test_an_absolute_form_request_line_is_parsed_every_time():
    raw = b"GET http://authority.example/p HTTP/1.1\r\nHost: h\r\n\r\n"
    for _ in range(2):
        request = head(raw)
        assert (request.host, request.path) == ("authority.example", "/p")
    assert "GET http://authority.example/p HTTP/1.1\r" not in parser_module._KNOWN_REQUEST_LINES


# --- header sections seen before (_KNOWN_SECTIONS) ---------------------------------------

section_field_lines = st.lists(
    st.sampled_from(
        [
            b"Host: h",
            b"Host: h2",
            b"Host: bad host",
            b"Accept: */*",
            b"X-A:  v ",
            b"Connection: close",
            b"Connection: keep-alive",
            b"Content-Length: 3",
            b"Content-Length: 4",
            b"Transfer-Encoding: chunked",
            b"Transfer-Encoding: gzip",
            b"Expect: 100-continue",
            b"Expect: other",
            b"Bad Line",
            b" folded",
        ]
    ),
    max_size=6,
)


def tables_emptied() -> None:
    parser_module._KNOWN_SECTIONS.clear()
    parser_module._KNOWN_FIELD_LINES.clear()
    parser_module._KNOWN_REQUEST_LINES.clear()


@PROPERTY
@given(
    section_field_lines,
    st.sampled_from([b"/", b"http://authority.example/p"]),
    st.sampled_from([b"HTTP/1.1", b"HTTP/1.0"]),
    st.integers(1, 8),
)
def test_a_header_section_parses_alike_when_new_and_when_seen_before(
    lines, target, version, max_headers
):
    body = b"abcd0\r\n\r\n"  # (3 or 4 bytes of a Content-Length body, or a chunked one's end)
    raw = get(*lines, target=target, version=version) + body
    other_version = b"HTTP/1.0" if version == b"HTTP/1.1" else b"HTTP/1.1"
    other = get(*lines, target=target, version=other_version)
    tables_emptied()
    fresh = {limit: whole(raw, max_headers=limit) for limit in (max_headers, 100)}
    tables_emptied()
    fresh_other = whole(other + body)
    tables_emptied()
    outcomes = [whole(raw, max_headers=limit) for limit in (100, max_headers, 100, max_headers)]
    assert outcomes == [fresh[100], fresh[max_headers]] * 2
    assert whole(other + body) == fresh_other  # the same section under the other version


def test_a_known_section_is_not_split_again(monkeypatch):
    split = []
    real = RequestParser._new_section

    def counting(self, section, special):
        split.append(section)
        return real(self, section, special)

    monkeypatch.setattr(RequestParser, "_new_section", counting)
    raw = get(b"Host: h", f"X-Section: {id(split)}".encode())
    assert head(raw).headers == [("host", "h"), ("x-section", str(id(split)))]
    assert len(split) == 1  # (byte by byte, the same section was found)
    assert head(raw).headers == [("host", "h"), ("x-section", str(id(split)))]
    assert len(split) == 1


def test_a_known_section_is_checked_against_each_parsers_limits_and_host():
    fields = [b"Host: h", *(b"X-%d: v" % i for i in range(5))]
    raw = get(*fields)
    assert len(head(raw).headers) == 6
    assert refused(raw, max_headers=5) == 431
    assert refused(raw, max_header_bytes=20) == 431
    assert len(head(raw).headers) == 6
    bad_host = get(b"Host: bad host", b"X-Host-Test: 1")
    assert refused(bad_host) == 400
    assert refused(bad_host) == 400
    assert bad_host.split(b"\r\n", 1)[1].decode("latin-1") in parser_module._KNOWN_SECTIONS


def test_a_known_section_acted_on_answers_for_its_request_line():
    section = [b"Host: h", b"Connection: close", b"Content-Length: 2"]
    for version, keep_alive in ((b"HTTP/1.1", False), (b"HTTP/1.0", False)) * 2:
        events = parse(get(*section, version=version) + b"hi")
        assert (events[0].keep_alive, events[0].content_length) == (keep_alive, 2)
        assert events[1] == Data(b"hi")
    section = [b"Host: h", b"Connection: keep-alive"]
    assert head(get(*section)).keep_alive is True
    assert head(get(*section, version=b"HTTP/1.0")).keep_alive is True
    assert head(get(b"Host: h", b"X-Keep: 1", version=b"HTTP/1.0")).keep_alive is False
    assert head(get(b"Host: h", b"X-Keep: 1")).keep_alive is True
    # An absolute-form target's authority replaces Host in the request's own list only.
    for _ in range(2):
        request = head(get(b"Host: h", b"X-Keep: 1", target=b"http://authority.example/p"))
        assert request.host == "authority.example"
        assert request.headers[0] == ("host", "authority.example")
        assert head(get(b"Host: h", b"X-Keep: 1")).headers[0] == ("host", "h")


def test_the_known_sections_are_bounded_and_long_sections_are_not_kept():
    known = parser_module._KNOWN_SECTIONS
    long_value = b"c" * parser_module.KNOWN_SECTION_MAX
    raw = get(b"Host: h", b"Cookie: " + long_value)
    assert head(raw).headers[1] == ("cookie", long_value.decode())
    assert raw.split(b"\r\n", 1)[1].decode("latin-1") not in known
    count = parser_module.KNOWN_SECTIONS_MAX + 2
    sections = [get(b"Host: h", b"X-Flood: %d" % n) for n in range(count)]
    for raw in sections:
        assert head(raw).headers[1][0] == "x-flood"
        assert len(known) <= parser_module.KNOWN_SECTIONS_MAX
    assert sections[0].split(b"\r\n", 1)[1].decode("latin-1") not in known  # emptied once full
    assert sections[-1].split(b"\r\n", 1)[1].decode("latin-1") in known
