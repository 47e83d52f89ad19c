"""HTTP/1.1 behaviour of a running server, black box: raw sockets against
`python -m selserve selserve.demo:app`, once per available backend."""

from __future__ import annotations

import email.utils
import random
import re
import socket
import threading
import time
from datetime import UTC, datetime

import pytest
import requests
from helpers import chunked_body, get_request, post_request
from hypothesis import given, settings
from hypothesis import strategies as st

IMF_FIXDATE = re.compile(
    r"^(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d{2} "
    r"(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) \d{4} \d{2}:\d{2}:\d{2} GMT$"
)


def binary_payload(size: int, seed: int = 0) -> bytes:
    """Every byte value, CR/LF/NUL included, in a reproducible order."""
    return random.Random(seed).randbytes(size)


def assert_closed_by_server(client, server, timeout: float = 2.0) -> None:
    state, extra = client.wait_closed(timeout)
    assert state in ("eof", "reset"), server.diag(
        f"server kept the connection open {timeout} s after the response"
    )
    assert extra == b"", server.diag(f"unexpected bytes after the response: {extra[:200]!r}")


# --------------------------------------------------------------------------- the demo app


@pytest.mark.timeout(20)
def test_root_is_plain_text_greeting(server):
    response = server.get("/")
    assert response.status == 200, server.diag(repr(response))
    assert (response.header("Content-Type") or "").startswith("text/plain"), repr(response)
    assert response.body, repr(response)
    assert response.header("Content-Length") == str(len(response.body)), repr(response)


@pytest.mark.timeout(20)
@pytest.mark.parametrize("method", ["POST", "PUT"])
def test_content_length_body_is_echoed(server, method):
    body = binary_payload(10_000, seed=1)
    response = server.request(post_request("/echo", body, method=method))
    assert response.status == 200, server.diag(repr(response))
    assert response.body == body


@pytest.mark.timeout(20)
def test_empty_body_is_echoed(server):
    response = server.request(post_request("/echo", b""))
    assert response.status == 200, server.diag(repr(response))
    assert response.body == b""


@pytest.mark.timeout(20)
def test_chunked_upload_is_echoed_byte_exact(server):
    pieces = [binary_payload(n, seed=n) for n in (1, 2, 100, 4096, 65_537, 3)]
    head = b"POST /echo HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n"
    response = server.request(head + chunked_body(pieces))
    assert response.status == 200, server.diag(repr(response))
    assert response.body == b"".join(pieces)


@pytest.mark.timeout(20)
def test_chunked_upload_with_extensions_and_trailers_is_echoed(server):
    pieces = [b"hello ", b"chunked ", b"world"]
    head = b"POST /echo HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n"
    body = chunked_body(pieces, trailer=b"X-Checksum: 42\r\n", extension=b';name="v"')
    response = server.request(head + body)
    assert response.status == 200, server.diag(repr(response))
    assert response.body == b"hello chunked world"


@pytest.mark.timeout(60)
@settings(max_examples=25, deadline=None)
@given(
    pieces=st.lists(st.binary(min_size=1, max_size=3000), max_size=8),
    segment=st.integers(min_value=1, max_value=700),
)
def test_chunked_upload_split_anywhere_is_echoed(server, pieces, segment):
    head = b"PUT /echo HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n"
    data = head + chunked_body(pieces)
    with server.connect() as client:
        client.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for start in range(0, len(data), segment):
            client.send(data[start : start + segment])
        response = client.read_final_response()
    assert response.status == 200, server.diag(repr(response))
    assert response.body == b"".join(pieces)


@pytest.mark.timeout(20)
def test_request_sent_one_byte_at_a_time_is_answered(server):
    data = b"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 9\r\n\r\nbytewise!"
    with server.connect() as client:
        client.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(len(data)):
            client.send(data[i : i + 1])
        response = client.read_final_response()
    assert response.status == 200, server.diag(repr(response))
    assert response.body == b"bytewise!"


@pytest.mark.timeout(60)
def test_large_body_echo_8mib(server):
    body = binary_payload(8 * 1024 * 1024 + 123, seed=8)
    with server.connect(timeout=30) as client:
        errors: list[BaseException] = []

        def upload():
            try:
                client.send(post_request("/echo", body))
            except BaseException as exc:  # reported by the main thread
                errors.append(exc)

        sender = threading.Thread(target=upload, daemon=True)
        sender.start()
        response = client.read_final_response()
        sender.join(30)
    assert not errors, server.diag(f"upload failed: {errors!r}")
    assert response.status == 200, server.diag(repr(response))
    assert len(response.body) == len(body)
    assert response.body == body


@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    ("n", "size"), [(0, 10), (1, 1), (37, 1000), (3, 65_536), (1, 1024 * 1024)]
)
def test_stream_body_is_exact(server, n, size):
    response = server.get(f"/stream?n={n}&size={size}", timeout=10)
    assert response.status == 200, server.diag(repr(response))
    assert response.has_token("Transfer-Encoding", "chunked"), repr(response)
    assert response.header("Content-Length") is None, repr(response)
    assert len(response.body) == n * size
    assert response.chunk_sizes == [size] * n
    assert response.body == response.body[:size] * n, "chunks differ from each other"


@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    "query",
    [
        "n=1000001&size=1",
        "n=1&size=1048577",
        "n=abc&size=10",
        "n=10&size=xyz",
        "n=-1&size=10",
        "n=10&size=-5",
        "n=1.5&size=10",
        "n=99999999999999999999999&size=1",
    ],
)
def test_stream_limits_and_bad_numbers_are_400(server, query):
    response = server.get(f"/stream?{query}")
    assert response.status == 400, server.diag(repr(response))


@pytest.mark.timeout(20)
@pytest.mark.parametrize("status", [200, 201, 202, 400, 404, 418, 500, 503])
def test_status_endpoint_returns_that_status_with_empty_body(server, status):
    response = server.get(f"/status/{status}")
    assert response.status == status, server.diag(repr(response))
    assert response.body == b""


@pytest.mark.timeout(20)
@pytest.mark.parametrize("method", ["DELETE", "PATCH", "PUT", "POST", "OPTIONS"])
def test_other_methods_on_root_are_405_with_allow(server, method):
    response = server.request(post_request("/", b"x", method=method))
    assert response.status == 405, server.diag(repr(response))
    allow = [m.strip().upper() for m in (response.header("Allow") or "").split(",")]
    assert "GET" in allow, repr(response)
    assert method not in allow, repr(response)


@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    "request_bytes",
    [get_request("/no/such/path"), post_request("/nope", b"data"), get_request("/echoes")],
    ids=["GET", "POST", "prefix-of-known"],
)
def test_unknown_path_is_404(server, request_bytes):
    response = server.request(request_bytes)
    assert response.status == 404, server.diag(repr(response))


# --------------------------------------------------------------------------- connection management


@pytest.mark.timeout(20)
def test_keepalive_serves_several_requests_on_one_socket(server):
    with server.connect() as client:
        for i in range(20):
            body = f"request {i}".encode()
            client.send(post_request("/echo", body))
            response = client.read_final_response()
            assert response.status == 200, server.diag(f"request {i}: {response!r}")
            assert response.body == body
            assert not response.has_token("Connection", "close"), repr(response)
        assert client.wait_closed(0.2)[0] == "open", "server closed a keep-alive connection"


@pytest.mark.timeout(20)
def test_pipelined_requests_are_answered_in_order(server):
    data = (
        post_request("/echo", b"first")
        + get_request("/status/202")
        + post_request("/echo", b"third", method="PUT")
    )
    with server.connect() as client:
        client.send(data)
        responses = [client.read_final_response() for _ in range(3)]
    got = [(r.status, r.body) for r in responses]
    assert got == [(200, b"first"), (202, b""), (200, b"third")], server.diag(repr(responses))


@pytest.mark.timeout(30)
def test_fifty_pipelined_requests_are_answered_in_order(server):
    bodies = [f"pipelined {i:03d}".encode() * (i + 1) for i in range(50)]
    with server.connect() as client:
        client.send(b"".join(post_request("/echo", body) for body in bodies))
        responses = [client.read_final_response() for _ in bodies]
    assert [r.status for r in responses] == [200] * 50, server.diag(repr(responses[:3]))
    assert [r.body for r in responses] == bodies


@pytest.mark.timeout(20)
def test_expect_100_continue_gets_interim_response_before_body(server):
    body = b"sent after 100"
    head = (
        b"POST /echo HTTP/1.1\r\nHost: test\r\nExpect: 100-continue\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    )
    with server.connect(timeout=3) as client:
        client.send(head)
        interim = client.read_response()  # fails on timeout: the body has not been sent
        assert (interim.version, interim.status) == ("HTTP/1.1", 100), server.diag(repr(interim))
        client.send(body)
        final = client.read_response()
    assert final.status == 200, server.diag(repr(final))
    assert final.body == body


@pytest.mark.timeout(20)
@pytest.mark.parametrize("path", ["/", "/stream?n=3&size=10", "/no/such/path"])
def test_head_has_get_headers_and_no_body(server, path):
    get = server.get(path)
    head_request = f"HEAD {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode()
    with server.connect() as client:
        # The GET pipelined behind the HEAD parses only if the HEAD response had no body.
        client.send(head_request + get_request("/"))
        head = client.read_response("HEAD")
        after = client.read_final_response()
    assert head.status == get.status, server.diag(repr(head))
    assert after.status == 200, server.diag(f"bytes after the HEAD response? {after!r}")
    assert after.body == server.get("/").body

    def names(response):
        return sorted(k.lower() for k, _ in response.headers if k.lower() != "date")

    assert names(head) == names(get)
    assert head.header("Content-Length") == get.header("Content-Length")
    if get.header("Content-Length") is not None:
        assert head.header("Content-Length") == str(len(get.body))


@pytest.mark.timeout(20)
@pytest.mark.parametrize("status", [204, 304])
def test_204_and_304_have_no_body(server, status):
    with server.connect() as client:
        client.send(get_request(f"/status/{status}") + get_request("/"))
        first = client.read_response()
        second = client.read_final_response()
    assert first.status == status, server.diag(repr(first))
    assert not first.has_token("Transfer-Encoding", "chunked"), repr(first)
    assert first.header("Content-Length") in (None, "0"), repr(first)
    assert second.status == 200, server.diag(f"bytes after the {status}? {second!r}")


@pytest.mark.timeout(20)
def test_http10_request_gets_connection_close(server):
    with server.connect() as client:
        client.send(b"GET / HTTP/1.0\r\n\r\n")
        response = client.read_final_response()
        assert response.status == 200, server.diag(repr(response))
        assert response.body
        assert not response.has_token("Connection", "keep-alive"), repr(response)
        assert_closed_by_server(client, server)


@pytest.mark.timeout(20)
def test_http10_keepalive_request_keeps_connection_open(server):
    request = b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
    with server.connect() as client:
        for i in range(2):
            client.send(request)
            response = client.read_final_response()
            assert response.status == 200, server.diag(f"request {i}: {response!r}")
            assert response.has_token("Connection", "keep-alive"), repr(response)
            assert response.header("Content-Length") == str(len(response.body)), repr(response)
        assert client.wait_closed(0.3)[0] == "open", "HTTP/1.0 keep-alive connection was closed"


@pytest.mark.timeout(20)
def test_http10_stream_is_close_delimited(server):
    with server.connect() as client:
        client.send(b"GET /stream?n=4&size=100 HTTP/1.0\r\n\r\n")
        response = client.read_final_response()
        assert response.status == 200, server.diag(repr(response))
        assert response.header("Transfer-Encoding") is None, repr(response)
        assert len(response.body) == 400
        assert_closed_by_server(client, server)


@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    "request_bytes",
    [
        get_request("/"),
        get_request("/nope"),
        post_request("/", b"x", method="DELETE"),
        get_request("/status/204"),
        get_request("/stream?n=2&size=5"),
        b"GET / HTTP/1.0\r\n\r\n",
        b"GARBAGE\r\n\r\n",
    ],
    ids=["200", "404", "405", "204", "chunked", "http10", "400"],
)
def test_every_response_has_date_and_server(server, request_bytes):
    response = server.request(request_bytes)
    date = response.header("Date")
    assert response.header_count("Date") == 1, repr(response)
    assert IMF_FIXDATE.match(date), f"Date not in IMF-fixdate form: {date!r}"
    skew = abs((email.utils.parsedate_to_datetime(date) - datetime.now(UTC)).total_seconds())
    assert skew < 5, f"Date {date!r} is {skew:.1f} s off"
    assert (response.header("Server") or "").strip(), repr(response)


# --------------------------------------------------------------------------- malformed requests

FILLER_HEADERS = b"".join(b"X-Filler-%02d: %s\r\n" % (i, b"v" * 2000) for i in range(40))
MANY_HEADERS = b"".join(b"X-H%03d: v\r\n" % i for i in range(101))

MALFORMED = [
    pytest.param(b"GARBAGE\r\n\r\n", 400, id="bad-request-line"),
    pytest.param(b"GET /\r\nHost: test\r\n\r\n", 400, id="request-line-no-version"),
    pytest.param(b"GET / HTTP/2.0\r\nHost: test\r\n\r\n", 505, id="http-2.0"),
    pytest.param(
        b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: test\r\n\r\n", 414, id="request-line-9k"
    ),
    pytest.param(
        b"GET / HTTP/1.1\r\nHost: test\r\n" + FILLER_HEADERS + b"\r\n", 431, id="headers-80k"
    ),
    pytest.param(
        b"GET / HTTP/1.1\r\nHost: test\r\n" + MANY_HEADERS + b"\r\n", 431, id="102-headers"
    ),
    pytest.param(
        b"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        400,
        id="cl-and-te",
    ),
    pytest.param(b"GET / HTTP/1.1\r\n\r\n", 400, id="http11-no-host"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, id="two-hosts"),
    pytest.param(
        b"POST /echo HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: gzip\r\n\r\n",
        501,
        id="te-gzip",
    ),
    pytest.param(
        b"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"
        b"hello!",
        400,
        id="conflicting-cl",
    ),
    pytest.param(
        b"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: abc\r\n\r\n", 400, id="bad-cl"
    ),
    pytest.param(b"GET / HTTP/1.1\r\nHost: test\r\nX-A: a\r\n b\r\n\r\n", 400, id="obs-fold"),
    pytest.param(b"GET / HTTP/1.1\r\nHost : test\r\n\r\n", 400, id="space-before-colon"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: test\r\nX-A: a\x00b\r\n\r\n", 400, id="nul-in-value"),
    pytest.param(
        b"POST /echo HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        400,
        id="bad-chunk-size",
    ),
]


@pytest.mark.timeout(20)
@pytest.mark.parametrize(("request_bytes", "status"), MALFORMED)
def test_malformed_request_gets_error_and_close(server, request_bytes, status):
    with server.connect(timeout=5) as client:
        client.send_ignoring_reset(request_bytes)
        response = client.read_final_response()
        assert response.status == status, server.diag(repr(response))
        assert response.has_token("Connection", "close"), repr(response)
        assert len(response.body) < 4096, repr(response)
        assert_closed_by_server(client, server)
    assert server.get("/").status == 200, server.diag("server stopped answering")


@pytest.mark.timeout(20)
def test_a_tls_client_hello_on_a_plain_port_is_refused_at_once(server):
    # What `curl https://host:plain-port/` sends: no line end ever comes, so only the
    # first byte (0x16, no method's) can end it before --header-timeout (10 s here).
    hello = bytes.fromhex("16030100f4010000f00303") + bytes(range(0x20, 0x40))
    started = time.monotonic()
    with server.connect(timeout=3) as client:
        client.send_ignoring_reset(hello)
        response = client.read_final_response()
        assert response.status == 400, server.diag(repr(response))
        assert response.has_token("Connection", "close"), repr(response)
        assert_closed_by_server(client, server)
    assert time.monotonic() - started < 5, "the refusal waited for a timeout"
    assert server.get("/").status == 200, server.diag("server stopped answering")


@pytest.mark.timeout(20)
def test_exactly_100_headers_are_accepted(server):
    headers = b"".join(b"X-H%03d: v\r\n" % i for i in range(99))  # + Host = 100
    response = server.request(b"GET / HTTP/1.1\r\nHost: test\r\n" + headers + b"\r\n")
    assert response.status == 200, server.diag(repr(response))


@pytest.mark.timeout(20)
def test_error_after_good_pipelined_request_answers_both(server):
    with server.connect() as client:
        client.send(post_request("/echo", b"good") + b"GET / HTTP/2.0\r\nHost: test\r\n\r\n")
        good = client.read_final_response()
        bad = client.read_final_response()
        assert (good.status, good.body) == (200, b"good"), server.diag(repr(good))
        assert bad.status == 505, server.diag(repr(bad))
        assert_closed_by_server(client, server)


# --------------------------------------------------------------------------- timeouts


@pytest.mark.timeout(30)
def test_idle_keepalive_connection_closed_after_timeout(backend, server_factory):
    proc = server_factory(backend, "--keepalive-timeout", "1")
    with proc.connect() as client:
        client.send(get_request("/"))
        assert client.read_final_response().status == 200, proc.diag()
        idle_since = time.monotonic()
        state, extra = client.wait_closed(timeout=4.0)
        idle = time.monotonic() - idle_since
    assert state in ("eof", "reset"), proc.diag("idle connection still open after 4 s")
    assert extra == b"", proc.diag(f"unexpected bytes on idle connection: {extra[:200]!r}")
    assert 0.5 <= idle <= 3.0, proc.diag(f"closed after {idle:.2f} s, expected about 1 s")
    assert proc.get("/").status == 200, proc.diag("server stopped answering")


# --------------------------------------------------------------------------- a real client


@pytest.mark.timeout(30)
def test_requests_library_smoke(server):
    with requests.Session() as session:
        session.trust_env = False  # no proxies from the environment for loopback
        root = session.get(server.url + "/", timeout=5)
        assert root.status_code == 200
        assert root.headers["Content-Type"].startswith("text/plain")
        assert root.text

        echoed = session.post(server.url + "/echo", data=b"via requests", timeout=5)
        assert (echoed.status_code, echoed.content) == (200, b"via requests")

        chunked = session.put(
            server.url + "/echo", data=iter([b"gen", b"erated"]), timeout=5
        )  # a generator body is sent chunked
        assert (chunked.status_code, chunked.content) == (200, b"generated")

        stream = session.get(server.url + "/stream?n=10&size=1000", timeout=5)
        assert stream.status_code == 200
        assert len(stream.content) == 10_000

        assert session.get(server.url + "/status/418", timeout=5).status_code == 418
        assert session.delete(server.url + "/", timeout=5).status_code == 405
        assert session.get(server.url + "/missing", timeout=5).status_code == 404
