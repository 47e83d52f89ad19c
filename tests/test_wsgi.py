"""The WSGI adapter (`selserve/wsgi.py`): unit tests calling it with constructed requests,
then integration through a real server process on every backend (plain apps, apps inside
`wsgiref.validate.validator`, and a real Flask app)."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import random
import signal
import sys
import tempfile
import threading
import time
import uuid
import warnings
from wsgiref.validate import WSGIWarning, validator

import pytest
import requests
from helpers import (
    ServerProcess,
    chunked_body,
    get_request,
    poll_until,
    post_request,
    set_linger_rst,
)
from hypothesis import given, settings
from hypothesis import strategies as st

import tests.wsgi_apps as apps
from selserve import wsgi
from selserve.app import FileBody, Request, Response
from selserve.http import response as wire
from selserve.wsgi import FileWrapper, WSGIAdapter

PEER = ("192.0.2.7", 51234)
LOCAL = ("127.0.0.1", 8000)
RECORD_TIMEOUT = 5.0  # seconds to wait for the server process to record a close()


# =========================================================================== unit: helpers


def make_request(
    target: str = "/",
    method: str = "GET",
    headers=(),
    body: bytes | io.IOBase = b"",
    version: str = "HTTP/1.1",
    peer=PEER,
    local=LOCAL,
    request_class: type[Request] = Request,
) -> Request:
    """A request as the connection hands it over: head fields derived from `headers`."""
    path, _, query = target.partition("?")
    fields = [(name.lower(), value) for name, value in headers]
    first = dict(reversed(fields))  # the first value of each field
    length = first.get("content-length")
    request = request_class(
        method,
        target,
        path,
        query,
        version,
        fields,
        keep_alive=True,
        content_length=None if length is None else int(length),
        chunked="transfer-encoding" in first,
        expect_continue=False,
        host=first.get("host", ""),
    )
    return request.arrived(body, peer, local)


def drain(response: Response) -> bytes:
    """What the connection would send of `response`'s body, closing it once as it does."""
    body = response.body
    if body is None:  # no content, no length announced (a HEAD answer)
        return b""
    if isinstance(body, bytes):
        return body
    try:
        if isinstance(body, FileBody):
            return os.pread(body.fileobj.fileno(), body.count, body.offset)
        return b"".join(body)
    finally:
        body.close()


def respond(app, request: Request | None = None, **adapter_options) -> tuple[Response, bytes]:
    response = WSGIAdapter(app, **adapter_options)(request or make_request())
    assert isinstance(response, Response)
    return response, drain(response)


def environ_for(request: Request | None = None, **adapter_options) -> dict:
    seen = {}

    def app(environ, start_response):
        seen.update(environ)
        seen["wsgi.input.data"] = environ["wsgi.input"].read()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    response, _ = respond(app, request, **adapter_options)
    assert response.status == 200, response
    return seen


def simple_app(status="200 OK", headers=None, body=(b"ok",)):
    def app(environ, start_response):
        start_response(status, headers if headers is not None else [("Content-Type", "text/plain")])
        return list(body)

    return app


class Recorder:
    """A WSGI iterable that counts close() calls and pieces pulled."""

    def __init__(self, pieces, fail_at: int | None = None) -> None:
        self.pieces = list(pieces)
        self.fail_at = fail_at
        self.pulled = 0
        self.closes = 0

    def __iter__(self):
        return self

    def __next__(self) -> bytes:
        if self.fail_at is not None and self.pulled == self.fail_at:
            raise RuntimeError("the recorder fails on purpose")
        if self.pulled >= len(self.pieces):
            raise StopIteration
        self.pulled += 1
        return self.pieces[self.pulled - 1]

    def close(self) -> None:
        self.closes += 1


def app_returning(iterable, status="200 OK", headers=None):
    def app(environ, start_response):
        start_response(status, headers if headers is not None else [("Content-Type", "text/plain")])
        return iterable

    return app


# =========================================================================== unit: environ


def test_environ_has_every_pep3333_key_with_the_right_types():
    environ = environ_for(make_request("/a/b?x=1&y=2", headers=[("Host", "example.com")]))
    required_str = [
        "REQUEST_METHOD",
        "SCRIPT_NAME",
        "PATH_INFO",
        "QUERY_STRING",
        "SERVER_NAME",
        "SERVER_PORT",
        "SERVER_PROTOCOL",
        "REMOTE_ADDR",
        "REMOTE_PORT",
        "HTTP_HOST",
        "wsgi.url_scheme",
    ]
    for key in required_str:
        assert type(environ.get(key)) is str, (key, environ.get(key))
    assert environ["REQUEST_METHOD"] == "GET"
    assert environ["SCRIPT_NAME"] == ""
    assert environ["PATH_INFO"] == "/a/b"
    assert environ["QUERY_STRING"] == "x=1&y=2"
    assert environ["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert environ["wsgi.version"] == (1, 0)
    assert environ["wsgi.url_scheme"] == "http"
    assert environ["wsgi.multithread"] is False
    assert environ["wsgi.multiprocess"] is False
    assert environ["wsgi.run_once"] is False
    assert environ["wsgi.input_terminated"] is True
    assert environ["wsgi.file_wrapper"] is FileWrapper
    for method in ("read", "readline", "readlines", "__iter__"):
        assert hasattr(environ["wsgi.input"], method), method
    for method in ("write", "writelines", "flush"):
        assert hasattr(environ["wsgi.errors"], method), method
    for key, value in environ.items():
        if "." not in key:
            assert type(value) is str, (key, value)


def test_environ_has_no_content_keys_without_a_body():
    environ = environ_for(make_request("/"))
    assert "CONTENT_LENGTH" not in environ
    assert "CONTENT_TYPE" not in environ
    assert environ["wsgi.input.data"] == b""


def test_input_without_a_body_reads_empty_every_way_and_survives_close_and_writes():
    outcomes = []

    def app(environ, start_response):
        stream = environ["wsgi.input"]
        outcomes.append(
            (stream.read(), stream.read(5), stream.readline(), stream.readlines(), list(stream))
        )
        stream.close()  # one input serves every bodiless request: this must not break it
        with pytest.raises(OSError):
            stream.write(b"leak into the next request")
        start_response("204 No Content", [])
        return []

    adapter = WSGIAdapter(app)
    for _ in range(2):
        assert adapter(make_request("/")).status == 204
    assert outcomes == [(b"", b"", b"", [], [])] * 2


def test_empty_body_with_content_length_zero_still_says_so():
    request = make_request("/", "POST", headers=[("Content-Length", "0")])
    environ = environ_for(request)
    assert environ["CONTENT_LENGTH"] == "0"
    assert environ["wsgi.input.data"] == b""


def test_path_info_is_percent_decoded_once_into_latin1_bytes_as_str():
    environ = environ_for(make_request("/caf%C3%A9/a%20b/%2525/%2F?q=%C3%A9"))
    assert environ["PATH_INFO"] == "/caf\xc3\xa9/a b/%25//"
    assert environ["PATH_INFO"].encode("latin-1").decode("utf-8") == "/café/a b/%25//"
    assert environ["QUERY_STRING"] == "q=%C3%A9"  # the query stays as sent
    assert environ["REQUEST_URI"] == environ["RAW_URI"] == "/caf%C3%A9/a%20b/%2525/%2F?q=%C3%A9"


def test_root_path_becomes_script_name_and_is_stripped_from_path_info():
    environ = environ_for(make_request("/app/users/7?x=1"), root_path="/app")
    assert environ["SCRIPT_NAME"] == "/app"
    assert environ["PATH_INFO"] == "/users/7"


def test_root_path_itself_leaves_an_empty_path_info():
    environ = environ_for(make_request("/app"), root_path="/app/")
    assert (environ["SCRIPT_NAME"], environ["PATH_INFO"]) == ("/app", "")


def test_root_path_matches_whole_segments_only():
    environ = environ_for(make_request("/application/x"), root_path="/app")
    assert (environ["SCRIPT_NAME"], environ["PATH_INFO"]) == ("/app", "/application/x")


def test_path_outside_root_path_keeps_the_whole_path_info():
    # A proxy in front may already have removed the prefix.
    environ = environ_for(make_request("/users/7"), root_path="/app")
    assert (environ["SCRIPT_NAME"], environ["PATH_INFO"]) == ("/app", "/users/7")


def test_non_ascii_root_path_matches_the_decoded_request_path():
    environ = environ_for(make_request("/caf%C3%A9/x"), root_path="/café")
    assert environ["SCRIPT_NAME"] == "/caf\xc3\xa9"
    assert environ["PATH_INFO"] == "/x"


@pytest.mark.parametrize("root", ["app", "x/y"])
def test_root_path_without_leading_slash_is_refused(root):
    with pytest.raises(ValueError, match="root_path"):
        WSGIAdapter(simple_app(), root_path=root)


def test_slash_root_path_is_the_empty_script_name():
    assert environ_for(make_request("/x"), root_path="/")["SCRIPT_NAME"] == ""


def test_repeated_headers_are_joined_with_comma_space():
    headers = [("Accept", "text/html"), ("X-Thing", "a"), ("Accept", "application/json")]
    environ = environ_for(make_request("/", headers=headers))
    assert environ["HTTP_ACCEPT"] == "text/html, application/json"
    assert environ["HTTP_X_THING"] == "a"


def test_repeated_cookie_headers_are_joined_with_semicolon():
    environ = environ_for(make_request("/", headers=[("Cookie", "a=1"), ("Cookie", "b=2")]))
    assert environ["HTTP_COOKIE"] == "a=1; b=2"


def test_headers_with_underscores_are_dropped():
    headers = [("X-Forwarded-For", "10.0.0.1"), ("X_Forwarded_For", "6.6.6.6"), ("A_B", "x")]
    environ = environ_for(make_request("/", headers=headers))
    assert environ["HTTP_X_FORWARDED_FOR"] == "10.0.0.1"
    assert "HTTP_A_B" not in environ


def reference_header_entries(fields) -> dict:
    """PEP 3333's header entries of `fields`, written out without the adapter's tables."""
    entries = {}
    for name, value in fields:
        if "_" in name or name in ("content-length", "transfer-encoding"):
            continue
        key = "CONTENT_TYPE" if name == "content-type" else "HTTP_" + name.upper().replace("-", "_")
        if key not in entries:
            entries[key] = value
        elif key == "HTTP_COOKIE":
            entries[key] += "; " + value
        elif key != "CONTENT_TYPE":
            entries[key] += ", " + value
    return entries


def header_entries_of(environ: dict) -> dict:
    return {k: v for k, v in environ.items() if k.startswith("HTTP_") or k == "CONTENT_TYPE"}


FIELD_NAMES = st.sampled_from(
    ["accept", "cookie", "content-type", "content-length", "transfer-encoding", "x-a", "x_a", "a-b"]
)
FIELD_VALUES = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=8)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(FIELD_NAMES, FIELD_VALUES), max_size=8))
def test_header_entries_are_the_same_first_and_when_remembered(fields):
    adapter = WSGIAdapter(simple_app())
    expected = reference_header_entries(fields)
    for _ in range(2):  # computed, then looked up
        request = Request(
            "GET",
            "/",
            "/",
            "",
            "HTTP/1.1",
            list(fields),
            keep_alive=True,
            content_length=None,
            chunked=False,
            expect_continue=False,
            host="",
        ).arrived(b"", PEER, LOCAL)  # (the fields as they are: make_request reads them)
        assert header_entries_of(adapter.environ(request)) == expected


def test_a_head_seen_before_is_looked_up_not_converted_again(monkeypatch):
    monkeypatch.setattr(wsgi, "_HEADER_ENTRIES", {})
    converted = []
    convert = wsgi._header_entries
    monkeypatch.setattr(wsgi, "_header_entries", lambda *a: converted.append(1) or convert(*a))
    adapter = WSGIAdapter(simple_app())
    fields = [("Host", "example.com"), ("Accept", "*/*"), ("Cookie", "a=1")]
    for _ in range(3):
        assert adapter.environ(make_request("/", headers=fields))["HTTP_COOKIE"] == "a=1"
    assert len(converted) == 1
    adapter.environ(make_request("/", headers=[*fields[:2], ("Cookie", "a=2")]))
    assert len(converted) == 2  # another cookie: another head


def test_an_app_changing_its_environ_leaves_the_next_requests_headers_alone():
    def app(environ, start_response):
        environ["HTTP_ACCEPT"] = "changed"
        del environ["HTTP_X_A"]
        start_response("200 OK", [])
        return [b""]

    fields = [("Accept", "text/html"), ("X-A", "1")]
    respond(app, make_request("/", headers=fields))
    environ = environ_for(make_request("/", headers=fields))
    assert environ["HTTP_ACCEPT"] == "text/html" and environ["HTTP_X_A"] == "1"


def test_the_remembered_heads_are_bounded(monkeypatch):
    monkeypatch.setattr(wsgi, "_HEADER_ENTRIES", {})
    adapter = WSGIAdapter(simple_app())
    for i in range(wsgi._HEADER_ENTRIES_MAX * 2 + 5):
        adapter.environ(make_request("/", headers=[("X-Count", str(i))]))
        assert len(wsgi._HEADER_ENTRIES) <= wsgi._HEADER_ENTRIES_MAX
    big = "x" * wsgi._HEADER_ENTRY_CHARS
    wsgi._HEADER_ENTRIES.clear()
    assert adapter.environ(make_request("/", headers=[("Cookie", big)]))["HTTP_COOKIE"] == big
    assert not wsgi._HEADER_ENTRIES  # too long to keep


def test_fields_that_are_lists_are_converted_every_time(monkeypatch):
    monkeypatch.setattr(wsgi, "_HEADER_ENTRIES", {})
    request = make_request("/")
    request.headers = [["accept", "*/*"], ["cookie", "a=1"]]  # (a hand-built request)
    environ = WSGIAdapter(simple_app()).environ(request)
    assert environ["HTTP_ACCEPT"] == "*/*" and environ["HTTP_COOKIE"] == "a=1"
    assert not wsgi._HEADER_ENTRIES


class SchemedRequest(Request):
    __slots__ = ("scheme",)  # (as --proxy-headers' request class has it)


REQUEST_PARTS = {
    "target": st.sampled_from(["/", "/app", "/app/a%20b?q=1", "/x?y=%41", "*"]),
    "method": st.sampled_from(["GET", "HEAD", "POST"]),
    "version": st.sampled_from(["HTTP/1.1", "HTTP/1.0"]),
    "fields": st.lists(
        st.tuples(
            st.sampled_from(["host", "accept", "cookie", "content-type", "x_a", "x-a"]),
            st.sampled_from(["", "a", "h.example:81", "[::1]:9000", "b c"]),
        ),
        max_size=4,
    ),
    "body": st.sampled_from(["none", "length", "chunked"]),
    "peer": st.sampled_from([PEER, ("2001:db8::5", 40000, 0, 0), "", "/peer.sock"]),
    "local": st.sampled_from([LOCAL, ("0.0.0.0", 8123), "/run/app.sock"]),
    "scheme": st.sampled_from([None, "https"]),
}


def built_request(target, method, version, fields, body, peer, local, scheme) -> Request:
    """A request of these parts, its head as the parser would give it."""
    framing = {"length": [("content-length", "4")], "chunked": [("transfer-encoding", "chunked")]}
    headers = [*fields, *framing.get(body, [])]
    data = b"" if body == "none" else b"body"
    request_class = Request if scheme is None else SchemedRequest
    request = make_request(target, method, headers, data, version, peer, local, request_class)
    if scheme is not None:
        request.scheme = scheme
    return request


def comparable(environ: dict) -> dict:
    environ = dict(environ)
    environ["wsgi.input"] = environ["wsgi.input"].read()
    del environ["wsgi.errors"]  # (each adapter's own)
    return environ


# One adapter for every example: what it remembers from earlier ones must not show.
REMEMBERING = WSGIAdapter(simple_app(), root_path="/app")


@settings(max_examples=300, deadline=None)
@given(st.fixed_dictionaries(REQUEST_PARTS), st.integers(1, 3))
def test_an_environ_is_the_same_first_and_when_its_shared_part_is_remembered(parts, times):
    wsgi._HEADER_ENTRIES.clear()
    expected = comparable(
        WSGIAdapter(simple_app(), root_path="/app").environ(built_request(**parts))
    )
    wsgi._HEADER_ENTRIES.clear()
    for _ in range(times):
        environ = REMEMBERING.environ(built_request(**parts))
        assert comparable(environ) == expected
        environ["PATH_INFO"] = environ["HTTP_X_A"] = "changed by the app"
        environ["REMOTE_PORT"] = None


def test_a_request_seen_before_shares_its_environ_but_not_its_addresses_or_body(monkeypatch):
    adapter = WSGIAdapter(simple_app())
    built = []
    build = adapter._shared_environ
    monkeypatch.setattr(adapter, "_shared_environ", lambda *a: built.append(1) or build(*a))
    fields = [("host", "h"), ("accept", "*/*")]
    first = adapter.environ(make_request("/a?b", headers=fields, peer=("192.0.2.1", 1)))
    second = adapter.environ(make_request("/a?b", headers=fields, peer=("192.0.2.2", 2)))
    assert len(built) == 1 and first is not second
    assert (second["REMOTE_ADDR"], second["REMOTE_PORT"]) == ("192.0.2.2", "2")
    assert (first["REMOTE_ADDR"], first["REMOTE_PORT"]) == ("192.0.2.1", "1")
    posted = [*fields, ("content-length", "4")]
    third = adapter.environ(make_request("/a?b", "POST", posted, b"data"))
    assert (third["CONTENT_LENGTH"], third["wsgi.input"].read()) == ("4", b"data")
    fourth = adapter.environ(make_request("/a?b", "POST", posted, b"next"))
    assert len(built) == 2 and fourth["wsgi.input"].read() == b"next"
    for other in (make_request("/a?c", headers=fields), make_request("/a?b", "HEAD", fields)):
        adapter.environ(other)
    assert len(built) == 4


def test_the_shared_environs_are_bounded_and_long_requests_are_not_kept():
    adapter = WSGIAdapter(simple_app())
    for i in range(wsgi._HEADER_ENTRIES_MAX * 2 + 5):
        assert adapter.environ(make_request(f"/{i}"))["PATH_INFO"] == f"/{i}"
        assert len(adapter._shared_environs) <= wsgi._HEADER_ENTRIES_MAX
    adapter._shared_environs.clear()
    big = "x" * wsgi._HEADER_ENTRY_CHARS
    assert adapter.environ(make_request("/", headers=[("X_Dropped", big)]))["PATH_INFO"] == "/"
    assert adapter.environ(make_request("/" + big))["PATH_INFO"] == "/" + big
    assert not adapter._shared_environs  # too long to keep (a dropped field counts too)


def test_content_type_and_length_have_no_http_prefix():
    request = make_request(
        "/",
        "POST",
        headers=[("Content-Type", "text/plain"), ("Content-Length", "5")],
        body=b"hello",
    )
    environ = environ_for(request)
    assert environ["CONTENT_TYPE"] == "text/plain"
    assert environ["CONTENT_LENGTH"] == "5"
    assert "HTTP_CONTENT_TYPE" not in environ
    assert "HTTP_CONTENT_LENGTH" not in environ
    assert environ["wsgi.input.data"] == b"hello"


def test_chunked_body_gets_its_decoded_length_and_no_transfer_encoding():
    request = make_request(
        "/", "POST", headers=[("Transfer-Encoding", "chunked")], body=b"decoded body"
    )
    environ = environ_for(request)
    assert environ["CONTENT_LENGTH"] == "12"
    assert not [key for key in environ if "TRANSFER_ENCODING" in key]
    assert environ["wsgi.input.data"] == b"decoded body"


def test_spilled_body_in_a_temporary_file_is_wsgi_input():
    payload = random.Random(3).randbytes(300_000)
    with tempfile.TemporaryFile() as spill:
        spill.write(payload)
        spill.seek(0)
        request = make_request("/", "POST", headers=[("Transfer-Encoding", "chunked")], body=spill)
        environ = environ_for(request)
    assert environ["CONTENT_LENGTH"] == str(len(payload))
    assert environ["wsgi.input.data"] == payload


@pytest.mark.parametrize("spilled", [False, True], ids=["bytes", "tempfile"])
def test_wsgi_input_supports_every_pep3333_read_method(spilled):
    payload = b"line one\nline two\r\n\nlast line without newline"
    outcomes = {}

    def app(environ, start_response):
        stream = environ["wsgi.input"]
        outcomes["read(5)"] = stream.read(5)
        outcomes["readline()"] = stream.readline()
        outcomes["readline(3)"] = stream.readline(3)
        outcomes["iteration"] = [next(iter(stream))]
        outcomes["readlines()"] = stream.readlines()
        outcomes["read() at end"] = stream.read()
        outcomes["read(-1) at end"] = stream.read(-1)
        start_response("204 No Content", [])
        return []

    if spilled:
        body = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the request
        body.write(payload)
        body.seek(0)
    else:
        body = payload
    request = make_request("/", "PUT", headers=[("Content-Length", str(len(payload)))], body=body)
    response, _ = respond(app, request)
    assert response.status == 204
    assert outcomes == {
        "read(5)": b"line ",
        "readline()": b"one\n",
        "readline(3)": b"lin",
        "iteration": [b"e two\r\n"],
        "readlines()": [b"\n", b"last line without newline"],
        "read() at end": b"",
        "read(-1) at end": b"",
    }


def test_server_name_and_port_come_from_the_local_address():
    request = make_request("/", headers=[("Host", "example.com:9999")], local=("10.1.2.3", 8123))
    environ = environ_for(request)
    assert (environ["SERVER_NAME"], environ["SERVER_PORT"]) == ("10.1.2.3", "8123")
    assert environ["HTTP_HOST"] == "example.com:9999"


def test_wildcard_listener_takes_server_name_from_host_and_port_from_the_socket():
    request = make_request("/", headers=[("Host", "example.com:9999")], local=("0.0.0.0", 8123))
    environ = environ_for(request)
    assert (environ["SERVER_NAME"], environ["SERVER_PORT"]) == ("example.com", "8123")


def test_unix_socket_takes_server_name_and_port_from_host():
    request = make_request("/", headers=[("Host", "[::1]:9000")], local="/run/app.sock", peer="")
    environ = environ_for(request)
    assert (environ["SERVER_NAME"], environ["SERVER_PORT"]) == ("::1", "9000")
    assert environ["REMOTE_ADDR"] == ""
    assert "REMOTE_PORT" not in environ


@pytest.mark.parametrize(
    ("scheme", "port"), [("http", "80"), ("https", "443")], ids=["http", "https"]
)
def test_unix_socket_without_host_port_uses_the_scheme_default(scheme, port):
    request = make_request("/", headers=[("Host", "example.org")], local="/run/app.sock", peer="")
    environ = environ_for(request, url_scheme=scheme)
    assert (environ["SERVER_NAME"], environ["SERVER_PORT"]) == ("example.org", port)
    assert environ["wsgi.url_scheme"] == scheme


def test_unix_socket_without_host_header_is_localhost():
    request = make_request("/", version="HTTP/1.0", local="/run/app.sock", peer="")
    environ = environ_for(request)
    assert (environ["SERVER_NAME"], environ["SERVER_PORT"]) == ("localhost", "80")
    assert environ["SERVER_PROTOCOL"] == "HTTP/1.0"


def test_remote_addr_and_port_come_from_the_peer():
    environ = environ_for(make_request("/", peer=("2001:db8::5", 40000, 0, 0)))
    assert (environ["REMOTE_ADDR"], environ["REMOTE_PORT"]) == ("2001:db8::5", "40000")


def test_latin1_header_values_pass_through_unchanged():
    environ = environ_for(make_request("/", headers=[("X-Name", "Jos\xe9")]))
    assert environ["HTTP_X_NAME"] == "Jos\xe9"


def test_adapter_options_reach_the_environ():
    environ = environ_for(url_scheme="https", multithread=True, multiprocess=True)
    assert environ["wsgi.url_scheme"] == "https"
    assert environ["HTTPS"] == "on"
    assert environ["wsgi.multithread"] is True
    assert environ["wsgi.multiprocess"] is True


def test_wsgi_errors_lines_go_to_the_selserve_logger(caplog):
    def app(environ, start_response):
        errors = environ["wsgi.errors"]
        errors.write("first line\nsecond ")
        errors.writelines(["line\n", "unfinished"])
        errors.flush()
        start_response("200 OK", [])
        return []

    with caplog.at_level(logging.INFO, logger="selserve"):
        respond(app)
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("selserve")]
    assert lines == ["first line", "second line", "unfinished"]


def test_environ_passes_wsgiref_validator():
    checked = validator(simple_app())
    request = make_request(
        "/x?y=1", "POST", headers=[("Host", "h"), ("Content-Length", "3")], body=b"abc"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", WSGIWarning)
        response, body = respond(checked, request)
    assert (response.status, body) == (200, b"ok")


# =========================================================================== unit: responses


def test_status_and_headers_pass_through():
    headers = [("Content-Type", "text/plain"), ("X-A", "1"), ("Set-Cookie", "a=1")]
    response, body = respond(simple_app("201 Created", headers, [b"made"]))
    assert response.status == 201
    assert list(response.headers) == headers
    assert body == b"made"


def test_list_body_without_content_length_becomes_bytes():
    response, _ = respond(simple_app(body=[b"a", b"b", b"c"]))
    assert response.body == b"abc"


def test_list_body_matching_its_content_length_becomes_bytes():
    headers = [("Content-Length", "3")]
    response, _ = respond(simple_app(headers=headers, body=[b"a", b"bc"]))
    assert response.body == b"abc"


@pytest.mark.parametrize("declared", ["2", "10"])
def test_list_body_disagreeing_with_content_length_is_streamed_for_the_server_to_enforce(
    declared,
):
    headers = [("Content-Length", declared)]
    response, body = respond(simple_app(headers=headers, body=[b"abc"]))
    assert not isinstance(response.body, bytes)
    assert ("Content-Length", declared) in response.headers
    assert body == b"abc"


def test_head_answer_keeps_the_apps_content_length():
    # Frameworks answer HEAD with GET's Content-Length and no body.
    headers = [("Content-Length", "1234")]
    response, body = respond(simple_app(headers=headers, body=[]), make_request("/", "HEAD"))
    assert not isinstance(response.body, bytes)
    assert ("Content-Length", "1234") in response.headers
    assert body == b""


def test_generator_is_pulled_only_up_to_its_first_non_empty_piece():
    pulled = []

    def app(environ, start_response):
        start_response("200 OK", [])
        for piece in (b"", b"first", b"second", b"third"):
            pulled.append(piece)
            yield piece

    response = WSGIAdapter(app)(make_request())
    assert pulled == [b"", b"first"]
    assert drain(response) == b"firstsecondthird"


def test_start_response_may_wait_for_the_first_iteration():
    def app(environ, start_response):
        yield b""  # empty pieces do not start the response
        start_response("202 Accepted", [("X-Late", "yes")])
        yield b"late"

    response, body = respond(app)
    assert (response.status, list(response.headers), body) == (202, [("X-Late", "yes")], b"late")


def test_reason_phrase_may_be_empty_or_latin1():
    assert respond(simple_app("299 "))[0].status == 299
    assert respond(simple_app("200 \xc7a va"))[0].status == 200


def test_a_standard_reason_phrase_is_left_to_the_server():
    assert respond(simple_app("404 Not Found"))[0].reason is None


@pytest.mark.parametrize("status, reason", [("404 Nope", "Nope"), ("200 \xc7a va", "\xc7a va")])
def test_the_apps_own_reason_phrase_goes_with_the_response(status, reason):
    assert respond(simple_app(status))[0].reason == reason


@pytest.mark.parametrize("body", [[], [b""], iter(())])
def test_an_empty_head_answer_without_content_length_announces_no_length(body):
    headers = [("Content-Type", "text/plain")]
    response, sent = respond(simple_app(headers=headers, body=body), make_request("/", "HEAD"))
    assert response.body is None and sent == b""


def test_a_head_answer_with_content_gets_its_length():
    # Django answers HEAD with GET's whole body: its length is GET's.
    response, _ = respond(simple_app(body=[b"hello"]), make_request("/", "HEAD"))
    assert response.body == b"hello"


@pytest.mark.parametrize(
    "status",
    [
        "200",
        "200OK",
        " 200 OK",
        "2000 OK",
        "20 OK",
        "abc OK",
        "200  OK\n",
        "200 O\r\nX: y",
        "200 O\x00K",
        "199 Too Early",
        "600 Beyond",
        "099 x",
        "200 \u20ac",
        b"200 OK",
        200,
    ],
)
def test_malformed_status_is_a_500(status):
    response, body = respond(simple_app(status))
    assert response.status == 500
    assert body.startswith(b"500 Internal Server Error")


@pytest.mark.parametrize(
    "header",
    [
        ("X-A", "x\r\ny"),
        ("X-A", "x\ny"),
        ("X-A", "x\ry"),
        ("X-A", "x\x00y"),
        ("X-A", "euro \u20ac"),
        ("X A", "v"),
        ("X:A", "v"),
        ("", "v"),
        ("X-A\r\nEvil", "v"),
        ("X-A", b"bytes"),
        (b"X-A", "v"),
        ("Content-Length", "12abc"),
        ("Content-Length", "-1"),
    ],
)
def test_invalid_header_is_a_500(header):
    response, body = respond(simple_app(headers=[("Content-Type", "text/plain"), header]))
    assert response.status == 500
    assert b"evil" not in body.lower()


@pytest.mark.parametrize(
    "name",
    [
        "keep-alive",
        "Transfer-Encoding",
        "Upgrade",
        "TE",
        "Trailer",
        "Proxy-Authenticate",
        "Proxy-Authorization",
    ],
)
def test_hop_by_hop_header_from_the_app_is_a_500(name):
    response, _ = respond(simple_app(headers=[(name, "close")]))
    assert response.status == 500


def test_an_apps_connection_close_is_honoured_as_for_native_apps():
    # One policy for every app (http/response.py): the server owns the connection, so
    # Connection is never copied, but an app asking to close is heard.
    response, _ = respond(simple_app(headers=[("Connection", "close")]))
    head = wire.build_head(
        response.status,
        response.headers,
        method="GET",
        http11=True,
        keep_alive=True,
        body_length=2,
        fixed=b"",
    )
    assert response.status == 200 and head[3] is False
    assert head[0].count(b"Connection: close") == 1


@pytest.mark.parametrize("headers", [("X-A", "v"), {"X-A": "v"}, [("X-A", "v", "w")], ["X-A"]])
def test_headers_that_are_not_a_list_of_pairs_are_a_500(headers):
    assert respond(simple_app(headers=headers))[0].status == 500


def test_conflicting_content_lengths_are_a_500():
    headers = [("Content-Length", "3"), ("Content-Length", "4")]
    assert respond(simple_app(headers=headers, body=[b"abc"]))[0].status == 500


def test_repeated_equal_content_lengths_are_accepted():
    headers = [("Content-Length", "3"), ("content-length", "3")]
    response, body = respond(simple_app(headers=headers, body=[b"abc"]))
    assert (response.status, body) == (200, b"abc")


# --------------------------------------------------------------------------- start_response


def test_second_start_response_without_exc_info_is_a_500():
    def app(environ, start_response):
        start_response("200 OK", [])
        start_response("404 Not Found", [])
        return [b"x"]

    assert respond(app)[0].status == 500


def test_exc_info_before_any_body_replaces_status_and_headers():
    def app(environ, start_response):
        start_response("200 OK", [("X-First", "1")])
        try:
            raise ValueError("handled by the app")
        except ValueError:
            start_response("503 Service Unavailable", [("X-Second", "2")], sys.exc_info())
        return [b"sorry"]

    response, body = respond(app)
    assert (response.status, list(response.headers), body) == (503, [("X-Second", "2")], b"sorry")


def test_exc_info_after_write_reraises_the_apps_exception():
    reraised = []

    def app(environ, start_response):
        write = start_response("200 OK", [])
        write(b"already out")
        try:
            raise KeyError("original")
        except KeyError as exc:
            try:
                start_response("500 Oops", [], sys.exc_info())
            except KeyError as again:
                reraised.append(again is exc)
                raise

    response, body = respond(app)
    assert reraised == [True]
    assert response.status == 500
    assert b"already out" not in body  # nothing had reached the client: a clean 500


def test_exc_info_after_the_first_piece_reraises_into_the_iteration():
    recorder = []

    def app(environ, start_response):
        start_response("200 OK", [])
        yield b"first"
        try:
            raise LookupError("late failure")
        except LookupError:
            try:
                start_response("500 Oops", [], sys.exc_info())
            except LookupError:
                recorder.append("re-raised")
                raise
        finally:
            recorder.append("closed")

    response = WSGIAdapter(app)(make_request())
    body = iter(response.body)
    assert next(body) == b"first"
    with pytest.raises(LookupError):
        next(body)
    response.body.close()
    assert recorder == ["re-raised", "closed"]


def test_start_response_returns_a_write_callable():
    results = []

    def app(environ, start_response):
        results.append(callable(start_response("200 OK", [])))
        return []

    respond(app)
    assert results == [True]


# --------------------------------------------------------------------------- write()


def test_write_data_comes_before_the_iterables_pieces():
    response, body = respond(apps.write_app)
    assert body == b"written-1;written-2;returned-1;returned-2"


def test_write_during_iteration_keeps_the_order_of_events():
    def app(environ, start_response):
        write = start_response("200 OK", [])
        write(b"1")
        yield b"2"
        write(b"3")
        yield b"4"
        write(b"5")
        write(b"6")
        yield b""
        yield b"7"

    assert respond(app)[1] == b"1234567"


def test_write_only_app_returning_an_empty_list():
    def app(environ, start_response):
        write = start_response("200 OK", [])
        write(b"all ")
        write(b"written")
        return []

    response, body = respond(app)
    assert (response.status, body) == (200, b"all written")


def test_write_before_start_response_is_a_500():
    def app(environ, start_response):
        start_response.__self__.write(b"too early")
        return []

    assert respond(app)[0].status == 500


def test_write_of_str_is_a_500():
    def app(environ, start_response):
        start_response("200 OK", [])("text is not bytes")
        return []

    assert respond(app)[0].status == 500


# --------------------------------------------------------------------------- close()


def test_close_is_called_once_at_the_normal_end():
    recorder = Recorder([b"a", b"b", b"c"])
    response, body = respond(app_returning(recorder))
    assert body == b"abc"
    assert recorder.closes == 1


def test_close_is_called_once_when_iteration_raises_after_the_head():
    recorder = Recorder([b"a", b"b", b"c"], fail_at=2)
    response = WSGIAdapter(app_returning(recorder))(make_request())
    pieces = iter(response.body)
    assert [next(pieces), next(pieces)] == [b"a", b"b"]
    with pytest.raises(RuntimeError):
        next(pieces)
    response.body.close()  # what the connection does after logging the error
    response.body.close()  # and a second close (e.g. from shutdown) must not reach the app
    assert recorder.closes == 1


def test_close_is_called_once_when_the_server_abandons_the_body():
    recorder = Recorder([b"a"] * 1000)
    response = WSGIAdapter(app_returning(recorder))(make_request())
    assert next(iter(response.body)) == b"a"
    response.body.close()
    assert recorder.closes == 1
    assert recorder.pulled < 1000


def test_close_of_an_abandoned_generator_runs_its_finally_clause():
    events = []

    def app(environ, start_response):
        start_response("200 OK", [])
        try:
            while True:
                yield b"more"
        finally:
            events.append("finally")

    response = WSGIAdapter(app)(make_request())
    next(iter(response.body))
    response.body.close()
    assert events == ["finally"]


def test_close_is_called_once_when_the_first_piece_raises():
    recorder = Recorder([b"a"], fail_at=0)
    response, body = respond(app_returning(recorder))
    assert response.status == 500
    assert recorder.closes == 1


def test_close_is_called_once_when_start_response_is_missing():
    recorder = Recorder([b"a"])

    def app(environ, start_response):
        return recorder

    response, _ = respond(app)
    assert response.status == 500
    assert recorder.closes == 1


def test_close_is_called_once_for_an_iterable_without_a_byte():
    recorder = Recorder([b"", b""])
    response, body = respond(app_returning(recorder))
    assert (response.status, body) == (200, b"")
    assert recorder.closes == 1


def test_close_is_called_once_when_the_body_has_a_str_piece():
    recorder = Recorder(["text, not bytes"])
    response, _ = respond(app_returning(recorder))
    assert response.status == 500
    assert recorder.closes == 1


def test_str_piece_after_the_head_raises_from_the_body():
    recorder = Recorder([b"bytes", "text"])
    response = WSGIAdapter(app_returning(recorder))(make_request())
    pieces = iter(response.body)
    next(pieces)
    with pytest.raises(TypeError):
        next(pieces)
    response.body.close()
    assert recorder.closes == 1


# --------------------------------------------------------------------------- file_wrapper


@pytest.fixture
def payload_file(tmp_path):
    path = tmp_path / "payload.bin"
    data = random.Random(5).randbytes(200_000)
    path.write_bytes(data)
    return path, data


def file_app(path, offset=0, headers=(), block_size=None, calls=None):
    def app(environ, start_response):
        f = open(path, "rb")  # noqa: SIM115 - closed through the wrapper
        f.seek(offset)
        start_response("200 OK", [("Content-Type", "application/octet-stream"), *headers])
        wrapper = environ["wsgi.file_wrapper"]
        result = wrapper(f) if block_size is None else wrapper(f, block_size)
        if calls is not None:
            calls.append(f)
        return result

    return app


def test_file_wrapper_over_a_real_file_becomes_a_file_body(payload_file):
    path, data = payload_file
    files = []
    response = WSGIAdapter(file_app(path, offset=1000, calls=files))(make_request())
    assert isinstance(response.body, FileBody)
    assert (response.body.offset, response.body.count) == (1000, len(data) - 1000)
    assert drain(response) == data[1000:]
    assert files[0].closed


def test_file_body_sends_no_more_than_the_apps_content_length(payload_file):
    path, data = payload_file
    app = file_app(path, headers=[("Content-Length", "4096")])
    response = WSGIAdapter(app)(make_request())
    assert isinstance(response.body, FileBody)
    assert response.body.count == 4096
    assert drain(response) == data[:4096]


def test_file_shorter_than_its_content_length_is_streamed_for_the_server_to_notice(payload_file):
    path, data = payload_file
    declared = str(len(data) + 10)
    response = WSGIAdapter(file_app(path, headers=[("Content-Length", declared)]))(make_request())
    assert not isinstance(response.body, FileBody)
    assert ("Content-Length", declared) in response.headers
    assert drain(response) == data


def test_file_wrapper_over_a_non_file_is_read_in_blocks():
    source = io.BytesIO(b"0123456789" * 10)

    def app(environ, start_response):
        start_response("200 OK", [])
        return environ["wsgi.file_wrapper"](source, 16)

    response = WSGIAdapter(app)(make_request())
    assert not isinstance(response.body, FileBody)
    pieces = list(response.body)
    response.body.close()
    assert b"".join(pieces) == b"0123456789" * 10
    assert max(len(p) for p in pieces) == 16
    assert source.closed


def test_file_wrapper_after_write_is_streamed_after_the_written_data(payload_file):
    path, data = payload_file

    def app(environ, start_response):
        write = start_response("200 OK", [])
        write(b"prefix:")
        return environ["wsgi.file_wrapper"](open(path, "rb"))  # noqa: SIM115

    response = WSGIAdapter(app)(make_request())
    assert not isinstance(response.body, FileBody)
    assert drain(response) == b"prefix:" + data


def test_file_wrapper_closes_its_file_once():
    closes = []

    class Source(io.BytesIO):
        def close(self):
            closes.append(1)
            super().close()

    wrapper = FileWrapper(Source(b"abc"))
    assert list(wrapper) == [b"abc"]
    wrapper.close()
    wrapper.close()
    assert closes == [1]


# --------------------------------------------------------------------------- application errors


def test_exception_before_start_response_is_a_500_with_the_traceback_logged(caplog):
    with caplog.at_level(logging.ERROR, logger="selserve"):
        response, body = respond(apps.raise_before_start, make_request("/boom"))
    assert response.status == 500
    assert body == b"500 Internal Server Error\n"
    assert ("Content-Type", "text/plain; charset=utf-8") in response.headers
    assert not any(name.lower() == "connection" for name, _ in response.headers)
    logged = [r for r in caplog.records if r.name == "selserve" and r.exc_info]
    assert logged, caplog.text
    assert "/boom" in logged[0].getMessage()
    assert "fails before start_response" in caplog.text


def test_exposed_traceback_is_in_the_500_body():
    response, body = respond(apps.raise_before_start, expose_tracebacks=True)
    assert response.status == 500
    assert b"Traceback" in body
    assert b"fails before start_response" in body


def test_exception_in_the_first_iteration_is_a_500():
    response, body = respond(apps.raise_in_generator_before_body)
    assert response.status == 500
    assert b"Traceback" not in body


@pytest.mark.parametrize("result", [b"bytes", "str", None, 42], ids=repr)
def test_app_returning_a_non_iterable_of_bytes_is_a_500(result):
    def app(environ, start_response):
        start_response("200 OK", [])
        return result

    assert respond(app)[0].status == 500


def test_base_exception_from_the_iteration_is_not_swallowed():
    recorder = Recorder([])

    def app(environ, start_response):
        start_response("200 OK", [])

        class Iterable:
            def __iter__(self):
                raise KeyboardInterrupt

            def close(self):
                recorder.close()

        return Iterable()

    with pytest.raises(KeyboardInterrupt):
        WSGIAdapter(app)(make_request())
    assert recorder.closes == 1


def test_adapter_refuses_a_non_callable():
    with pytest.raises(TypeError, match="not callable"):
        WSGIAdapter("module:app")


@pytest.mark.parametrize(
    "name",
    [
        "hello",
        "environ_json",
        "echo_input",
        "write_app",
        "stream",
        "generator_stream",
        "errors_app",
    ],
)
def test_test_apps_pass_wsgiref_validator_in_process(name):
    app = validator(getattr(apps, name))
    request = make_request(
        "/?mode=read-n&n=3&size=10",
        "POST",
        headers=[("Host", "h"), ("Content-Length", "4")],
        body=b"abcd",
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", WSGIWarning)
        response = WSGIAdapter(app)(request)
        drain(response)
    assert response.status == 200


# =========================================================================== integration

LAUNCHER = """
import json, logging, sys
from selserve import serve
from selserve.wsgi import WSGIAdapter
import tests.wsgi_apps as apps
options = json.loads(sys.argv[4])
logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                    format="%(asctime)s %(name)s %(levelname)s %(message)s")
serve(WSGIAdapter(getattr(apps, sys.argv[1]), **options.get("adapter", {})),
      binds=[sys.argv[2]], backend=sys.argv[3], **options.get("settings", {}))
"""


class WSGIServer(ServerProcess):
    """A selserve process serving one app of tests/wsgi_apps.py through WSGIAdapter."""

    def __init__(self, backend: str, app_name: str, adapter=None, settings=None) -> None:
        super().__init__(backend, app=None)
        self.app_name = app_name
        self.options = {"adapter": adapter or {}, "settings": settings or {}}

    @property
    def argv(self) -> list[str]:
        options = json.dumps(self.options)
        return [sys.executable, "-c", LAUNCHER, self.app_name, self.bind, self.backend, options]


@pytest.fixture(scope="module")
def record_dir(tmp_path_factory):
    """Where the server's test apps record close() calls; passed to it by environment."""
    directory = tmp_path_factory.mktemp("wsgi-records")
    old = os.environ.get(apps.RECORD_DIR_ENV)
    os.environ[apps.RECORD_DIR_ENV] = str(directory)
    yield directory
    if old is None:
        del os.environ[apps.RECORD_DIR_ENV]
    else:
        os.environ[apps.RECORD_DIR_ENV] = old


@pytest.fixture(scope="module", params=[0, 4], ids=["inline", "threads4"])
def router_server(backend, record_dir, request):
    # The same routes with the app inline in the loop and in a pool of 4 threads.
    proc = WSGIServer(backend, "router", settings={"threads": request.param})
    try:
        yield proc.start()
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def validated_server(backend, record_dir):
    proc = WSGIServer(backend, "validated")
    try:
        yield proc.start()
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def flask_server(backend, record_dir):
    try:
        import flask  # noqa: F401 - only to fail early with a clear reason
    except ImportError:
        pytest.fail("Flask is not installed: the test extra ('.[test]') must install flask")
    proc = WSGIServer(backend, "flask_app")
    try:
        yield proc.start()
    finally:
        proc.stop()


@pytest.fixture
def wsgi_server_factory(backend, record_dir):
    started: list[WSGIServer] = []

    def start(app_name: str, **options) -> WSGIServer:
        proc = WSGIServer(backend, app_name, **options)
        started.append(proc)
        return proc.start()

    start.servers = started
    try:
        yield start
    finally:
        for proc in started:
            proc.stop()


def new_token() -> str:
    return uuid.uuid4().hex


def recorded(record_dir, token: str) -> list[str]:
    path = record_dir / token
    return path.read_text().splitlines() if path.exists() else []


def wait_recorded(record_dir, token: str) -> list[str]:
    return poll_until(lambda: recorded(record_dir, token), RECORD_TIMEOUT) or []


def pulled_from(line: str) -> int:
    assert line.startswith("close pulled="), line
    return int(line.split("=", 1)[1])


# --------------------------------------------------------------------------- plain apps


@pytest.mark.timeout(30)
def test_served_environ_describes_the_request(router_server):
    url = router_server.url + "/env?x=%C3%A9"
    reply = requests.get(url, headers={"X-Custom": "v", "X_Sneaky": "no"}, timeout=5)
    assert reply.status_code == 200, router_server.diag(reply.text)
    environ = reply.json()
    assert environ["REQUEST_METHOD"] == "GET"
    assert environ["PATH_INFO"] == "/env"
    assert environ["QUERY_STRING"] == "x=%C3%A9"
    assert environ["SERVER_NAME"] == "127.0.0.1"
    assert environ["SERVER_PORT"] == str(router_server.port)
    assert environ["REMOTE_ADDR"] == "127.0.0.1"
    assert environ["REMOTE_PORT"].isdigit()
    assert environ["HTTP_X_CUSTOM"] == "v"
    assert "HTTP_X_SNEAKY" not in environ
    assert environ["HTTP_HOST"] == f"127.0.0.1:{router_server.port}"
    assert environ["wsgi.input_terminated"] is True


@pytest.mark.timeout(30)
def test_served_path_info_is_utf8_bytes_as_latin1(router_server):
    # Routed as /env only after decoding: the path is sent percent-encoded.
    with router_server.connect() as client:
        client.send(get_request("/%65nv"))
        response = client.read_response()
    assert response.status == 200, router_server.diag(repr(response))
    assert bytes.fromhex(json.loads(response.body)["PATH_INFO_BYTES"]) == b"/env"


@pytest.mark.timeout(30)
@pytest.mark.parametrize("mode", ["read", "read-n", "readline", "readlines", "iter"])
def test_chunked_upload_is_read_through_wsgi_input(router_server, mode):
    payload = random.Random(7).randbytes(200_000)
    pieces = [payload[i : i + 7000] for i in range(0, len(payload), 7000)]
    head = f"POST /echo?mode={mode} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
    response = router_server.request(head.encode() + chunked_body(pieces))
    assert response.status == 200, router_server.diag(repr(response))
    assert response.body == payload
    assert response.header("X-Content-Length") == str(len(payload))
    assert response.header("X-Transfer-Encoding") == "<absent>"


@pytest.mark.timeout(30)
def test_large_chunked_upload_spilled_to_disk_is_read_through_wsgi_input(router_server):
    payload = random.Random(8).randbytes(3 * 1024 * 1024 + 17)
    pieces = [payload[i : i + 65536] for i in range(0, len(payload), 65536)]
    head = b"POST /echo?mode=readline HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
    response = router_server.request(head + chunked_body(pieces), timeout=15)
    assert response.status == 200, router_server.diag(repr(response))
    assert response.header("X-SHA256") == hashlib.sha256(payload).hexdigest()
    assert response.header("X-Content-Length") == str(len(payload))
    assert response.body == payload


@pytest.mark.timeout(30)
def test_content_length_upload_is_read_through_wsgi_input(router_server):
    payload = random.Random(9).randbytes(100_000)
    response = router_server.request(post_request("/echo?mode=read-n", payload))
    assert response.status == 200, router_server.diag(repr(response))
    assert response.body == payload
    assert response.header("X-Content-Length") == str(len(payload))


@pytest.mark.timeout(30)
def test_write_callable_data_is_served_before_the_iterable(router_server):
    response = router_server.get("/write")
    assert response.status == 200, router_server.diag(repr(response))
    assert response.body == b"written-1;written-2;returned-1;returned-2"


@pytest.mark.timeout(30)
def test_streamed_body_without_length_is_chunked_and_closed_once(router_server, record_dir):
    token = new_token()
    response = router_server.get(f"/stream?token={token}&n=50&size=1000")
    assert response.status == 200, router_server.diag(repr(response))
    assert response.header("Transfer-Encoding") == "chunked"
    assert response.body == b"x" * 50_000
    assert wait_recorded(record_dir, token) == ["close pulled=50"], router_server.diag()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("route", ["/stream", "/generator"])
def test_client_disconnect_mid_stream_closes_the_iterable_once(router_server, record_dir, route):
    token = new_token()
    blocks, size = 100_000, 65536  # 6.5 GB if it were all pulled
    with router_server.connect() as client:
        client.send(get_request(f"{route}?token={token}&n={blocks}&size={size}"))
        head = client.read_head()
        assert head.status == 200, router_server.diag(repr(head))
        client.read_exact(1024 * 1024, "the first MiB of the stream")
        set_linger_rst(client.sock)
    lines = wait_recorded(record_dir, token)
    assert len(lines) == 1, router_server.diag(f"close() records: {lines}")
    # Backpressure: only what the buffers held was produced, not the whole body.
    assert pulled_from(lines[0]) < 200, lines
    assert router_server.get("/hello").status == 200, router_server.diag()


@pytest.mark.timeout(30)
def test_app_error_mid_stream_closes_the_connection_and_the_iterable(router_server, record_dir):
    token = new_token()
    # Pieces large enough that the head goes out before the failure (past high water).
    with router_server.connect() as client:
        client.send(get_request(f"/stream?token={token}&n=10&size=100000&fail_after=5"))
        head = client.read_head()
        assert head.status == 200, router_server.diag(repr(head))
        state, rest = client.wait_closed(5.0)
    assert state in ("eof", "reset"), router_server.diag("connection stayed open")
    assert not rest.endswith(b"0\r\n\r\n"), "an incomplete body must not look complete"
    assert len(rest) < 5 * 100_000 + 1000
    assert wait_recorded(record_dir, token) == ["close pulled=5"], router_server.diag()
    assert "fails in the middle of its body" in router_server.stderr_text()


@pytest.mark.timeout(30)
def test_body_longer_than_content_length_is_cut_and_the_connection_closed(router_server):
    with router_server.connect() as client:
        client.send(get_request("/longer"))
        response = client.read_response()
        assert response.status == 200, router_server.diag(repr(response))
        assert response.body == b"hello"
        state, extra = client.wait_closed(5.0)
    assert state in ("eof", "reset"), router_server.diag("keep-alive continued after a bad body")
    assert extra == b""


@pytest.mark.timeout(30)
def test_body_shorter_than_content_length_closes_the_connection(router_server):
    with router_server.connect() as client:
        client.send(get_request("/shorter"))
        head = client.read_head()
        assert head.status == 200, router_server.diag(repr(head))
        assert head.header("Content-Length") == "100"
        state, rest = client.wait_closed(5.0)
    assert state in ("eof", "reset"), router_server.diag("connection stayed open")
    assert rest == b"only ten b"


@pytest.mark.timeout(30)
def test_app_error_is_a_500_and_the_connection_stays_usable(router_server):
    with router_server.connect() as client:
        client.send(get_request("/raise"))
        failed = client.read_response()
        assert failed.status == 500, router_server.diag(repr(failed))
        assert b"Traceback" not in failed.body
        assert not failed.has_token("Connection", "close"), repr(failed)
        client.send(get_request("/hello"))
        after = client.read_response()
    assert after.status == 200, router_server.diag(repr(after))
    assert after.body == b"Hello, WSGI!\n"
    assert "fails before start_response" in router_server.stderr_text()


@pytest.mark.timeout(30)
def test_error_in_the_first_iteration_is_a_500(router_server):
    response = router_server.get("/raise-in-generator")
    assert response.status == 500, router_server.diag(repr(response))


@pytest.mark.timeout(30)
def test_header_with_crlf_is_a_500_and_not_sent(router_server):
    with router_server.connect() as client:
        client.send(get_request("/bad-header"))
        response = client.read_response()
    assert response.status == 500, router_server.diag(repr(response))
    assert b"evil" not in response.raw_head
    assert b"must not be sent" not in response.body


@pytest.mark.timeout(30)
def test_file_wrapper_is_served_whole_with_a_content_length(router_server, record_dir):
    data = random.Random(11).randbytes(2 * 1024 * 1024 + 5)
    (record_dir / apps.PAYLOAD_NAME).write_bytes(data)
    response = router_server.get("/file", timeout=15)
    assert response.status == 200, router_server.diag(repr(response))
    # A FileBody has a known length; a body read block by block would be chunked.
    assert response.header("Content-Length") == str(len(data)), repr(response)
    assert response.header("Transfer-Encoding") is None
    assert response.body == data


@pytest.mark.timeout(30)
def test_wsgi_errors_reach_the_server_log(router_server):
    assert router_server.get("/errors").status == 200, router_server.diag()
    found = poll_until(
        lambda: "wsgi.errors marker from the test app" in router_server.stderr_text(), 5.0
    )
    assert found, router_server.diag("the wsgi.errors line was not logged")


@pytest.mark.timeout(30)
def test_head_request_gets_the_head_only(router_server):
    with router_server.connect() as client:
        client.send(b"HEAD /hello HTTP/1.1\r\nHost: t\r\n\r\n")
        response = client.read_response("HEAD")
        assert response.status == 200, router_server.diag(repr(response))
        assert response.header("Content-Length") == str(len(b"Hello, WSGI!\n"))
        client.send(get_request("/hello"))
        after = client.read_response()
    assert after.body == b"Hello, WSGI!\n"


@pytest.mark.timeout(30)
def test_head_of_a_streamed_answer_announces_no_length_its_get_lacks(router_server):
    # An app that answers HEAD with an empty iterable (werkzeug, httpbin) and GET with
    # a generator once got "Content-Length: 0" for HEAD: a length GET never had.
    with router_server.connect() as client:
        client.send(b"HEAD /head-aware-stream HTTP/1.1\r\nHost: t\r\n\r\n")
        head = client.read_response("HEAD")
        client.send(get_request("/head-aware-stream"))
        get = client.read_response()
    assert (head.status, get.status) == (200, 200), router_server.diag(repr(head))
    assert get.header("Transfer-Encoding") == "chunked" and get.header("Content-Length") is None
    assert head.header("Content-Length") is None, repr(head)
    assert get.body == b"piece 0\npiece 1\npiece 2\n"


@pytest.mark.timeout(30)
def test_the_apps_own_reason_phrase_is_kept(router_server):
    response = router_server.get("/own-reason")
    assert (response.status, response.reason) == (404, "Nope"), router_server.diag(repr(response))


@pytest.mark.timeout(30)
def test_root_path_is_the_script_name(wsgi_server_factory):
    server = wsgi_server_factory("router", adapter={"root_path": "/mount"})
    response = server.get("/mount/env")
    assert response.status == 200, server.diag(repr(response))
    environ = json.loads(response.body)
    assert (environ["SCRIPT_NAME"], environ["PATH_INFO"]) == ("/mount", "/env")


@pytest.mark.timeout(30)
def test_shutdown_closes_the_iterable_of_a_stalled_stream(wsgi_server_factory, record_dir):
    server = wsgi_server_factory("router", settings={"shutdown_timeout": 0.5})
    token = new_token()
    with server.connect() as client:
        client.send(get_request(f"/stream?token={token}&n=100000&size=65536"))
        assert client.read_head().status == 200, server.diag()
        # The client reads no more: the server's buffer fills and the stream stalls.
        os.kill(server.pid, signal.SIGTERM)
        exited = poll_until(lambda: server.proc.poll() is not None, 5.0)
        status = server.stop()
    assert exited, server.diag("SIGTERM did not end the server within 5 s")
    assert status == 0, server.diag(f"exit status {status}")
    lines = recorded(record_dir, token)
    assert len(lines) == 1, server.diag(f"close() records: {lines}")
    assert pulled_from(lines[0]) < 100_000


# --------------------------------------------------------------------------- validator


@pytest.mark.timeout(60)
def test_validated_apps_are_served_without_complaint(validated_server, record_dir):
    data = random.Random(12).randbytes(300_000)
    (record_dir / apps.PAYLOAD_NAME).write_bytes(data)
    token = new_token()
    payload = random.Random(13).randbytes(50_000)
    chunked_head = b"POST /echo?mode=iter HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
    checks = [
        (get_request("/hello"), b"Hello, WSGI!\n"),
        (get_request("/env?a=b", extra="Cookie: a=1\r\nCookie: b=2\r\n"), None),
        (post_request("/echo?mode=readline", payload), payload),
        (chunked_head + chunked_body([payload[:1000], payload[1000:]]), payload),
        (get_request("/write"), b"written-1;written-2;returned-1;returned-2"),
        (get_request(f"/stream?token={token}&n=20&size=5000"), b"x" * 100_000),
        (get_request("/generator?n=3&size=10"), b"y" * 30),
        (get_request("/file"), data),
        (get_request("/errors"), b"logged\n"),
    ]
    for raw, expected in checks:
        response = validated_server.request(raw, timeout=10)
        assert response.status == 200, validated_server.diag(f"{raw[:60]!r}: {response!r}")
        if expected is not None:
            assert response.body == expected, raw[:60]
    assert wait_recorded(record_dir, token) == ["close pulled=20"]
    log = validated_server.stderr_text()
    for complaint in ("Traceback", "AssertionError", "WSGIWarning", "garbage collected"):
        assert complaint not in log, validated_server.diag(f"{complaint} in the server log")


# --------------------------------------------------------------------------- Flask


@pytest.mark.timeout(30)
def test_slow_app_with_threads_does_not_delay_a_quick_request(wsgi_server_factory):
    server = wsgi_server_factory("router", settings={"threads": 4})
    elapsed, status = quick_request_beside_a_sleeping_one(server)
    assert status == 200
    assert elapsed < 0.5, f"a quick request waited {elapsed:.2f} s behind a sleeping app"


def quick_request_beside_a_sleeping_one(server) -> tuple[float, int | str]:
    """(seconds, status) of GET /hello sent while GET /sleep (1 s) is being answered."""
    slow = threading.Thread(target=server.get, args=("/sleep",))
    slow.start()
    try:
        time.sleep(0.2)  # the slow request is now in the app
        return server.timed_get("/hello")
    finally:
        slow.join(10)


@pytest.mark.timeout(30)
def test_by_default_a_sleeping_wsgi_view_does_not_delay_a_quick_request(wsgi_server_factory):
    # A Django view blocked for 2 s once held up every request, static files included:
    # WSGI apps now run on a thread pool unless --threads 0 says otherwise.
    elapsed, status = quick_request_beside_a_sleeping_one(wsgi_server_factory("router"))
    assert status == 200
    assert elapsed < 0.5, f"a quick request waited {elapsed:.2f} s behind a sleeping app"


@pytest.mark.timeout(30)
def test_threads_0_runs_a_wsgi_app_in_the_event_loop(wsgi_server_factory):
    # The explicit opt-in for apps that never block: one sleeping view holds up all.
    server = wsgi_server_factory("router", settings={"threads": 0})
    elapsed, status = quick_request_beside_a_sleeping_one(server)
    assert status == 200
    assert elapsed > 0.5, f"answered in {elapsed:.2f} s: not held up, so not in the loop"


def test_flask_json_route(flask_server):
    reply = requests.get(flask_server.url + "/json", timeout=5)
    assert reply.status_code == 200, flask_server.diag(reply.text)
    assert reply.headers["Content-Type"] == "application/json"
    assert reply.json() == {"hello": "world", "numbers": [1, 2, 3], "unicode": "héllo ✓"}


@pytest.mark.timeout(30)
def test_flask_form_post(flask_server):
    form = {"name": "Zoë", "tags": ["a", "b"], "empty": ""}
    reply = requests.post(flask_server.url + "/form", data=form, timeout=5)
    assert reply.status_code == 200, flask_server.diag(reply.text)
    assert reply.json() == {"name": ["Zoë"], "tags": ["a", "b"], "empty": [""]}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("size", [10_000, 3 * 1024 * 1024], ids=["small", "spilled"])
def test_flask_multipart_upload(flask_server, size):
    data = random.Random(size).randbytes(size)
    reply = requests.post(
        flask_server.url + "/upload",
        files={"file": ("data.bin", data, "application/octet-stream")},
        data={"note": "uploaded"},
        timeout=20,
    )
    assert reply.status_code == 200, flask_server.diag(reply.text)
    assert reply.json() == {
        "filename": "data.bin",
        "size": size,
        "sha256": hashlib.sha256(data).hexdigest(),
        "note": "uploaded",
    }


@pytest.mark.timeout(30)
def test_flask_chunked_upload_reaches_request_data(flask_server):
    def pieces():
        yield b"name=chunked&"
        yield b"tags=x"

    reply = requests.post(
        flask_server.url + "/form",
        data=pieces(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        timeout=5,
    )
    assert reply.status_code == 200, flask_server.diag(reply.text)
    assert reply.json() == {"name": ["chunked"], "tags": ["x"]}


@pytest.mark.timeout(30)
def test_flask_streaming_response(flask_server):
    with requests.get(flask_server.url + "/stream?n=200", stream=True, timeout=5) as reply:
        assert reply.status_code == 200, flask_server.diag(reply.text)
        assert reply.headers.get("Transfer-Encoding") == "chunked"
        text = reply.content.decode()
    assert text == "".join(f"line {i}\n" for i in range(200))


@pytest.mark.timeout(30)
def test_flask_error_page_is_a_500_and_the_server_goes_on(flask_server):
    with requests.Session() as session:
        reply = session.get(flask_server.url + "/error", timeout=5)
        assert reply.status_code == 500, flask_server.diag(reply.text)
        assert "Traceback" not in reply.text
        again = session.get(flask_server.url + "/json", timeout=5)
    assert again.status_code == 200, flask_server.diag(again.text)


@pytest.mark.timeout(30)
def test_flask_unknown_route_is_a_404(flask_server):
    reply = requests.get(flask_server.url + "/no/such/page", timeout=5)
    assert reply.status_code == 404, flask_server.diag(reply.text)


@pytest.mark.timeout(30)
def test_flask_sees_the_request_url_and_client(flask_server):
    reply = requests.get(flask_server.url + "/whoami?x=1", timeout=5)
    assert reply.status_code == 200, flask_server.diag(reply.text)
    assert reply.json() == {
        "url": flask_server.url + "/whoami?x=1",
        "path": "/whoami",
        "script_root": "",
        "remote_addr": "127.0.0.1",
    }


@pytest.mark.timeout(30)
def test_flask_head_request_has_the_get_length(flask_server):
    get = requests.get(flask_server.url + "/json", timeout=5)
    head = requests.head(flask_server.url + "/json", timeout=5)
    assert head.status_code == 200, flask_server.diag(repr(head.headers))
    assert head.headers["Content-Length"] == str(len(get.content))
    assert head.content == b""


def test_checked_headers_are_immutable_copies_and_refusals_are_never_remembered():
    headers = [("Content-Type", "text/plain"), ("Content-Length", "5")]
    first, length = wire.check_headers(headers)
    headers.append(("X-Mutated", "1"))  # the app's list changing does not reach ours
    assert (first, length) == (tuple(headers[:2]), 5)
    with pytest.raises(AttributeError):
        first.append(("X-Mutated", "1"))  # type: ignore[attr-defined]
    second, again = wire.check_headers(headers[:2])
    assert (second, again) == (first, 5)
    bad = [("X-Bad", "a\r\nb")]
    for _ in range(2):
        with pytest.raises(ValueError):
            wire.check_headers(bad)
