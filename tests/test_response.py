"""Response serialisation: framing decisions, header checks, chunks, error answers."""

from __future__ import annotations

from typing import NamedTuple

import pytest

from selserve.http import response as wire

FIXED = b"Date: Fri, 27 Nov 2026 14:00:00 GMT\r\nServer: t\r\n"


class Framing(NamedTuple):
    """build_head()'s answer, by name."""

    data: bytes
    content_length: int | None
    chunked: bool
    keep_alive: bool
    has_body: bool


def head(status=200, headers=(), *, method="GET", http11=True, keep_alive=True, length=None):
    return framed(
        status,
        list(headers),
        method=method,
        http11=http11,
        keep_alive=keep_alive,
        body_length=length,
        fixed=FIXED,
    )


def framed(*args, **kwargs) -> Framing:
    return Framing(*wire.build_head(*args, **kwargs))


def lines(framing) -> list[bytes]:
    assert framing.data.endswith(b"\r\n\r\n")
    return framing.data[:-4].split(b"\r\n")


def test_known_length_gets_content_length():
    framing = head(headers=[("Content-Type", "text/plain")], length=5)
    assert lines(framing) == [
        b"HTTP/1.1 200 OK",
        b"Date: Fri, 27 Nov 2026 14:00:00 GMT",
        b"Server: t",
        b"Content-Type: text/plain",
        b"Content-Length: 5",
    ]
    assert framing.keep_alive and not framing.chunked


def test_streamed_body_on_http11_is_chunked():
    framing = head()
    assert b"Transfer-Encoding: chunked" in lines(framing)
    assert framing.chunked


def test_streamed_body_with_app_content_length_is_not_chunked():
    framing = head(headers=[("Content-Length", "42")])
    assert b"Content-Length: 42" in lines(framing)
    assert not framing.chunked and framing.content_length == 42


def test_streamed_body_on_http10_is_close_delimited():
    framing = head(http11=False, keep_alive=True)
    assert not framing.chunked and not framing.keep_alive
    assert not any(line.startswith(b"Connection") for line in lines(framing))


def test_http10_keep_alive_is_announced():
    framing = head(http11=False, keep_alive=True, length=3)
    assert b"Connection: keep-alive" in lines(framing)


def test_http11_close_is_announced():
    assert b"Connection: close" in lines(head(keep_alive=False, length=0))


def test_app_connection_close_ends_keep_alive():
    framing = head(headers=[("Connection", "close")], length=0)
    assert not framing.keep_alive
    assert lines(framing).count(b"Connection: close") == 1


@pytest.mark.parametrize(
    "name", ["Transfer-Encoding", "Keep-Alive", "Upgrade", "TE", "Trailer", "Proxy-Connection"]
)
def test_hop_by_hop_fields_from_an_app_are_refused(name):
    # The server frames the message and owns the connection; the app cannot (one
    # policy for native and WSGI apps, as PEP 3333 asks of WSGI ones).
    with pytest.raises(wire.InvalidHeader):
        head(headers=[(name, "chunked")], length=2)


def test_an_apps_date_is_dropped_not_refused():
    assert b"Date: yesterday" not in lines(head(headers=[("Date", "yesterday")], length=0))


@pytest.mark.parametrize(
    "headers",
    [("X-A", "v"), {"X-A": "v"}, [("X-A", "v", "w")], ["X-A"], [("X-A", b"v")], [(b"X-A", "v")]],
)
def test_headers_that_are_not_a_list_of_str_pairs_are_refused(headers):
    with pytest.raises(wire.InvalidHeader):
        wire.encode_headers(headers)


def test_conflicting_content_lengths_from_an_app_are_refused():
    with pytest.raises(wire.InvalidHeader):
        wire.encode_headers([("Content-Length", "3"), ("content-length", "4")])


@pytest.mark.parametrize("status", [204, 304])
def test_no_body_statuses(status):
    framing = head(status, length=0)
    assert not framing.has_body
    assert not framing.chunked


@pytest.mark.parametrize("status", [100, 101, 103, 199, 600, 999, 0, -200, "200"])
def test_an_app_status_outside_200_to_599_is_refused(status):
    # An interim 1xx as the final answer would make the client read the next
    # pipelined answer as this one's.
    with pytest.raises(wire.InvalidHeader):
        head(status, length=0)


def test_an_apps_reason_phrase_replaces_the_standard_one():
    framing = framed(
        404,
        [],
        method="GET",
        http11=True,
        keep_alive=True,
        body_length=0,
        fixed=FIXED,
        reason="Nope",
    )
    assert lines(framing)[0] == b"HTTP/1.1 404 Nope"


@pytest.mark.parametrize("reason", ["a\r\nX-Evil: 1", "a\x1b[31m", "a\x7f", "a\0", "caf\u20ac"])
def test_a_reason_phrase_with_a_control_character_is_refused(reason):
    with pytest.raises(wire.InvalidHeader):
        framed(
            200,
            [],
            method="GET",
            http11=True,
            keep_alive=True,
            body_length=0,
            fixed=FIXED,
            reason=reason,
        )


def test_a_head_answer_of_unannounced_length_has_no_framing():
    framing = head(method="HEAD", length=wire.UNANNOUNCED)
    assert not any(
        line.startswith((b"Content-Length", b"Transfer-Encoding")) for line in lines(framing)
    )
    assert not framing.has_body and framing.keep_alive


def test_a_head_answer_of_unannounced_length_keeps_the_apps_content_length():
    framing = head(method="HEAD", headers=[("Content-Length", "77")], length=wire.UNANNOUNCED)
    assert b"Content-Length: 77" in lines(framing)


def test_204_never_has_content_length():
    assert not any(line.startswith(b"Content-Length") for line in lines(head(204, length=0)))


def test_head_keeps_content_length_and_has_no_body():
    framing = head(method="HEAD", length=1234)
    assert b"Content-Length: 1234" in lines(framing)
    assert not framing.has_body


@pytest.mark.parametrize(
    "value",
    ["a\r\nSet-Cookie: x=1", "a\nb", "a\rb", "a\0b", "a\x1b[2Jb", "a\x7fb", "a\x08b", "\u0100"],
)
def test_header_values_with_control_characters_are_refused(value):
    with pytest.raises(wire.InvalidHeader):
        head(headers=[("X-Test", value)])


@pytest.mark.parametrize("name", ["Bad Name", "X:Y", "", "X\r\nY"])
def test_invalid_header_names_are_refused(name):
    with pytest.raises(wire.InvalidHeader):
        head(headers=[(name, "v")])


def test_invalid_app_content_length_is_refused():
    with pytest.raises(wire.InvalidHeader):
        head(headers=[("Content-Length", "-1")])


def test_unknown_status_gets_a_generic_reason():
    assert wire.status_line(599) == b"HTTP/1.1 599 Unknown\r\n"
    with pytest.raises(wire.InvalidHeader):
        wire.status_line(42)


def test_chunk_framing():
    assert wire.chunk(b"hello world!!!!!") == b"10\r\nhello world!!!!!\r\n"
    assert wire.LAST_CHUNK == b"0\r\n\r\n"


def test_error_response_is_complete_and_closes():
    data = wire.error_response(431, "too many headers", FIXED)
    head_part, body = data.split(b"\r\n\r\n", 1)
    assert head_part.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
    assert b"Connection: close" in head_part
    assert b"Content-Length: %d" % len(body) in head_part


def test_date_line_is_imf_fixdate():
    assert wire.date_line(0) == b"Date: Thu, 01 Jan 1970 00:00:00 GMT\r\n"


def test_app_date_is_dropped_for_the_servers_own():
    framing = head(headers=[("Date", "yesterday")], length=0)
    assert b"Date: yesterday" not in lines(framing)
    assert lines(framing).count(b"Date: Fri, 27 Nov 2026 14:00:00 GMT") == 1


def test_app_server_header_replaces_the_servers():
    framing = framed(
        200,
        [("Server", "myapp")],
        method="GET",
        http11=True,
        keep_alive=True,
        body_length=0,
        fixed=FIXED,
        date=b"Date: Fri, 27 Nov 2026 14:00:00 GMT\r\n",
    )
    assert b"Server: myapp" in lines(framing)
    assert b"Server: t" not in lines(framing)


def test_304_has_no_content_length_of_its_own_and_no_chunking():
    for method in ("GET", "HEAD"):
        for length in (0, None):
            framing = head(304, method=method, length=length)
            assert not any(
                line.startswith((b"Content-Length", b"Transfer-Encoding"))
                for line in lines(framing)
            ), (method, length)


def test_304_keeps_the_apps_content_length():
    framing = head(304, headers=[("Content-Length", "1234")], length=0)
    assert b"Content-Length: 1234" in lines(framing)


@pytest.mark.parametrize(
    "status, method, sent",
    [
        (200, "GET", True),
        (404, "POST", True),
        (200, "HEAD", False),
        (204, "GET", False),
        (304, "GET", False),
    ],
)
def test_a_body_known_in_full_follows_its_head_only_when_the_response_has_one(status, method, sent):
    framing = framed(
        status,
        [],
        method=method,
        http11=True,
        keep_alive=True,
        body_length=4,
        fixed=FIXED,
        body=b"abcd",
    )
    assert framing.has_body is sent
    head_end = framing.data.index(b"\r\n\r\n") + 4
    assert framing.data[head_end:] == (b"abcd" if sent else b"")


@pytest.mark.parametrize("value", ["a\tb", " padded ", "caf\xe9", ""])
def test_header_values_with_htab_space_and_obs_text_are_written(value):
    assert ("X-Test: " + value).encode("latin-1") in lines(head(headers=[("X-Test", value)]))
