"""5. Garbage on the plain HTTP port -- random bytes, a TLS ClientHello, the HTTP/2 preface,
absurdly long lines, invalid UTF-8 and control bytes in targets and headers, unknown
methods -- and request smuggling shapes (CL.TE, TE.CL, TE.TE, duplicate and conflicting
lengths): each is refused with the right status and a close, or answered by the app when
it is a valid request after all; a smuggled request is never answered; nothing crashes.

Every case is a fresh connection; all of a group run at once against one server per
backend (with --header-timeout 1, so that heads that never end are cut off quickly).
(tests/test_server_http.py checks single malformed requests; here they come in bulk and
in their adversarial shapes.)"""

from __future__ import annotations

import random
import socket
import ssl
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pytest
from helpers import ServerProcess

from faults.helpers import (
    HEALTH_ASPECTS,
    Baseline,
    Exchange,
    Health,
    assert_healthy,
    check_health,
    collect_responses,
    running_server,
)

FLAGS = ("--header-timeout", "1")
QUIET = 1.0  # a connection with nothing more to say for this long is done talking
TOTAL = 5.0  # and no exchange takes longer than this
CLOSE_WITHIN = 3.0  # a refusal is followed by a close within this long

REFUSALS = {400, 408, 413, 414, 417, 431, 501, 505}
SMUGGLED = b"GET /status/299 HTTP/1.1\r\nHost: test\r\n\r\n"  # 299: only a smuggled request


@dataclass(frozen=True)
class Case:
    """`expect`: statuses the first response may have (None: no response is also right).
    `close`: the server must close after it. `then_eof`: half-close after sending."""

    name: str
    payload: bytes
    expect: frozenset[int | None]
    close: bool = True
    then_eof: bool = False


def case(name: str, payload: bytes, *expect: int | None, close=True, then_eof=False) -> Case:
    return Case(name, payload, frozenset(expect), close, then_eof)


def head(line: bytes, *fields: bytes) -> bytes:
    return line + b"\r\n" + b"".join(f + b"\r\n" for f in fields) + b"\r\n"


def client_hello() -> bytes:
    """A real TLS ClientHello, as a browser would send it to https://127.0.0.1/."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def random_cases(count: int = 40) -> list[Case]:
    rng = random.Random(20240905)  # fixed: the same bytes every run
    cases = []
    for i in range(count):
        junk = rng.randbytes(rng.randint(1, 2048))
        if i % 3 == 0:  # ends like a head: the parser sees the whole thing at once
            cases.append(case(f"random-{i}-head", junk + b"\r\n\r\n", *REFUSALS, None))
        elif i % 3 == 1:  # then EOF
            cases.append(case(f"random-{i}-eof", junk, *REFUSALS, None, then_eof=True))
        else:  # after a valid request line, as header junk (not starting with the blank line)
            payload = b"GET / HTTP/1.1\r\nHost: test\r\n" + junk.lstrip(b"\r\n") + b"\r\n\r\n"
            cases.append(case(f"random-{i}-fields", payload, 400, 431))
    return cases


GARBAGE = [
    *random_cases(),
    case("tls-client-hello", client_hello(), 400, 408, None),
    case("http2-preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400, 505),
    case(
        "h2c-upgrade-ignored",
        head(
            b"GET / HTTP/1.1",
            b"Host: test",
            b"Connection: Upgrade, HTTP2-Settings",
            b"Upgrade: h2c",
            b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA",
        ),
        200,
        close=False,
    ),
    case("request-line-64k", head(b"GET /" + b"a" * 65536 + b" HTTP/1.1", b"Host: t"), 414),
    case("request-line-1m-no-lf", b"GET /" + b"a" * (1 << 20), 414),
    case("empty-lines-1m", b"\r\n" * (1 << 19) + head(b"GET / HTTP/1.1", b"Host: t"), 400, 414),
    case("header-value-100k", head(b"GET / HTTP/1.1", b"Host: t", b"X: " + b"v" * 100_000), 431),
    case(
        "headers-10k",
        head(b"GET / HTTP/1.1", b"Host: t", *(b"X-%d: v" % i for i in range(10_000))),
        431,
    ),
    case(
        "headers-200",
        head(b"GET / HTTP/1.1", b"Host: t", *(b"X-%d: v" % i for i in range(200))),
        431,
    ),
    case(
        "chunk-line-10k",
        head(b"POST /echo HTTP/1.1", b"Host: t", b"Transfer-Encoding: chunked")
        + b"5;"
        + b"e" * 10_000
        + b"\r\nhello\r\n0\r\n\r\n",
        400,
    ),
    case("target-invalid-utf8", head(b"GET /\xff\xfe\xc3\x28 HTTP/1.1", b"Host: t"), 400),
    case("target-nul", head(b"GET /a\x00b HTTP/1.1", b"Host: t"), 400),
    case("target-control-bytes", head(b"GET /a\x01\x1b[2J\x7f HTTP/1.1", b"Host: t"), 400),
    case("target-space", head(b"GET /a b HTTP/1.1", b"Host: t"), 400),
    case("target-tab", head(b"GET /a\tb HTTP/1.1", b"Host: t"), 400),
    case("method-invalid-utf8", head(b"G\xc3\x28T / HTTP/1.1", b"Host: t"), 400),
    case("header-name-invalid-utf8", head(b"GET / HTTP/1.1", b"Host: t", b"X-\xff\xfe: v"), 400),
    case("header-name-space", head(b"GET / HTTP/1.1", b"Host: t", b"X A: v"), 400),
    case("header-value-nul", head(b"GET / HTTP/1.1", b"Host: t", b"X: a\x00b"), 400),
    case("header-value-control", head(b"GET / HTTP/1.1", b"Host: t", b"X: a\x01\x7fb"), 400),
    case("header-value-bare-cr", head(b"GET / HTTP/1.1", b"Host: t", b"X: a\rb"), 400),
    case("header-value-escape", head(b"GET / HTTP/1.1", b"Host: t", b"X: \x1b[31mred"), 400),
    # RFC 9110 5.5: obs-text (0x80-0xFF) is allowed in field values; refusing it is fine too.
    case(
        "header-value-invalid-utf8",
        head(b"GET / HTTP/1.1", b"Host: t", b"X: \xff\xfe\xc3\x28"),
        200,
        400,
        close=False,
    ),
    case("host-invalid-utf8", head(b"GET / HTTP/1.1", b"Host: \xff\xfe"), 400),
    case("header-without-colon", head(b"GET / HTTP/1.1", b"Host: t", b"NoColonHere"), 400),
    case("version-http-3", head(b"GET / HTTP/3.0", b"Host: t"), 505),
    case("version-lowercase", head(b"GET / http/1.1", b"Host: t"), 400),
    case("missing-host", head(b"GET / HTTP/1.1"), 400),
]

UNKNOWN_METHODS = [
    case("method-foo", head(b"FOO / HTTP/1.1", b"Host: t"), 405, close=False),
    case("method-brew-nowhere", head(b"BREW /pot-0 HTTP/1.1", b"Host: t"), 404, close=False),
    case("method-propfind-echo", head(b"PROPFIND /echo HTTP/1.1", b"Host: t"), 405, close=False),
    case("method-lowercase-get", head(b"get / HTTP/1.1", b"Host: t"), 405, close=False),
    case("method-long-token", head(b"X" * 200 + b" / HTTP/1.1", b"Host: t"), 405, close=False),
    case("method-trace", head(b"TRACE / HTTP/1.1", b"Host: t"), 405, close=False),
    case("method-delete-stream", head(b"DELETE /stream HTTP/1.1", b"Host: t"), 405, close=False),
]


def chunked(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n0\r\n\r\n" % (len(data), data)


POST = b"POST /echo HTTP/1.1"
TE = b"Transfer-Encoding: chunked"
ZERO_THEN_SMUGGLED = b"0\r\n\r\n" + SMUGGLED  # a chunked reader stops at 0, then sees GET
CL_ALL = b"Content-Length: %d" % len(ZERO_THEN_SMUGGLED)  # a CL reader takes it all as body


def te_te(name: str, te_fields: list[bytes], *expect: int) -> Case:
    """An obfuscated Transfer-Encoding next to a Content-Length covering the whole body: one
    reader takes the TE and sees a smuggled GET after the 0 chunk, the other takes CL."""
    return case(name, head(POST, b"Host: t", *te_fields, CL_ALL) + ZERO_THEN_SMUGGLED, *expect)


SMUGGLING = [
    # CL.TE: a front end reads Content-Length, the back end chunked.
    case("cl-te", head(POST, b"Host: t", CL_ALL, TE) + ZERO_THEN_SMUGGLED, 400),
    # TE.CL: a front end reads chunked (one chunk holding the GET), the back end 4 bytes.
    case("te-cl", head(POST, b"Host: t", TE, b"Content-Length: 4") + chunked(SMUGGLED), 400),
    case("cl-0-te", head(POST, b"Host: t", b"Content-Length: 0", TE) + ZERO_THEN_SMUGGLED, 400),
    te_te("te-te-second-te-x", [TE, b"Transfer-Encoding: x"], 400, 501),
    te_te("te-te-xchunked", [b"Transfer-Encoding: xchunked"], 400, 501),
    te_te("te-te-space-before-colon", [b"Transfer-Encoding : chunked"], 400),
    te_te("te-te-tab-value", [b"Transfer-Encoding:\tchunked"], 400),
    te_te("te-te-vertical-tab", [b"Transfer-Encoding:\x0bchunked"], 400),
    te_te("te-te-quoted", [b'Transfer-Encoding: "chunked"'], 400, 501),
    te_te("te-te-uppercase", [b"TRANSFER-ENCODING: CHUNKED"], 400),
    te_te("te-te-list-identity", [b"Transfer-Encoding: chunked, identity"], 400, 501),
    te_te("te-te-obs-fold", [b"X-Pad: y", b" Transfer-Encoding: chunked"], 400),
    te_te("te-te-fold-value", [b"Transfer-Encoding:", b" chunked"], 400),
    te_te("te-te-leading-space-line", [b" Transfer-Encoding: chunked"], 400),
    te_te("te-te-nul", [b"Transfer-Encoding: chunked\x00"], 400),
    # Transfer_Encoding is another field altogether: Content-Length frames the body.
    case(
        "te-te-underscore",
        head(POST, b"Host: t", b"Transfer_Encoding: chunked", CL_ALL) + ZERO_THEN_SMUGGLED,
        200,
        close=False,
    ),
    # Without Content-Length: a coding we do not know means the length cannot be known.
    case(
        "te-chunked-then-cow",
        head(POST, b"Host: t", TE, b"Transfer-Encoding: cow") + ZERO_THEN_SMUGGLED,
        400,
        501,
    ),
    case(
        "te-cow", head(POST, b"Host: t", b"Transfer-Encoding: cow") + ZERO_THEN_SMUGGLED, 501, 400
    ),
    case(
        "te-chunked-twice",
        head(POST, b"Host: t", b"Transfer-Encoding: chunked, chunked") + ZERO_THEN_SMUGGLED,
        400,
    ),
    case(
        "http10-te",
        head(b"POST /echo HTTP/1.0", b"Host: t", TE) + ZERO_THEN_SMUGGLED,
        400,
    ),
    # Content-Length shapes: a reader taking the other value would find the GET.
    case(
        "cl-cl-conflict",
        head(POST, b"Host: t", b"Content-Length: 5", CL_ALL) + b"hello" + SMUGGLED,
        400,
    ),
    case(
        "cl-list-conflict",
        head(POST, b"Host: t", b"Content-Length: 5, %d" % (5 + len(SMUGGLED)))
        + b"hello"
        + SMUGGLED,
        400,
    ),
    case("cl-plus", head(POST, b"Host: t", b"Content-Length: +5") + b"hello" + SMUGGLED, 400),
    case("cl-hex", head(POST, b"Host: t", b"Content-Length: 0x5") + b"hello" + SMUGGLED, 400),
    case("cl-negative", head(POST, b"Host: t", b"Content-Length: -5") + b"hello" + SMUGGLED, 400),
    case(
        "cl-inner-space", head(POST, b"Host: t", b"Content-Length: 1 5") + b"hello" + SMUGGLED, 400
    ),
    case("cl-huge", head(POST, b"Host: t", b"Content-Length: " + b"9" * 40) + SMUGGLED, 400, 413),
    case("cl-empty", head(POST, b"Host: t", b"Content-Length:") + b"hello" + SMUGGLED, 400),
    # Chunk framing lies: a reader trusting the data length would find the GET.
    case(
        "chunk-size-too-small",
        head(POST, b"Host: t", TE) + b"3\r\nhello\r\n0\r\n\r\n" + SMUGGLED,
        400,
    ),
    case(
        "chunk-size-overflow",
        head(POST, b"Host: t", TE) + b"1" + b"0" * 32 + b"\r\nhello\r\n0\r\n\r\n" + SMUGGLED,
        400,
        413,
    ),
    case(
        "chunk-size-0x", head(POST, b"Host: t", TE) + b"0x5\r\nhello\r\n0\r\n\r\n" + SMUGGLED, 400
    ),
    case("chunk-size-negative", head(POST, b"Host: t", TE) + b"-5\r\nhello\r\n" + SMUGGLED, 400),
    case(
        "chunk-size-leading-space",
        head(POST, b"Host: t", TE) + b" 5\r\nhello\r\n0\r\n\r\n" + SMUGGLED,
        400,
    ),
    # A body on a GET is still a body: the GET inside it is data, not a request.
    case(
        "get-with-cl-body",
        head(b"GET / HTTP/1.1", b"Host: t", b"Content-Length: %d" % len(SMUGGLED)) + SMUGGLED,
        200,
        close=False,
    ),
]

# Cases whose payload carries SMUGGLED without it being a separate, valid request.
HIDES_SMUGGLED = [c for c in SMUGGLING if SMUGGLED in c.payload]


@dataclass
class GroupRun:
    server: ServerProcess
    health: Health
    exchanges: dict[str, Exchange] = field(default_factory=dict)


def exchange(proc: ServerProcess, item: Case) -> Exchange:
    try:
        with proc.connect(timeout=5) as client:
            client.send_ignoring_reset(item.payload)
            if item.then_eof:
                try:
                    client.sock.shutdown(socket.SHUT_WR)
                except OSError:
                    pass  # the server may have refused and closed already
            return collect_responses(client, QUIET, TOTAL)
    except OSError as exc:
        return Exchange(end="broken", error=repr(exc))


def run_group(proc: ServerProcess, cases: list[Case], scenario: str) -> GroupRun:
    baseline = Baseline.take(proc)
    with ThreadPoolExecutor(max_workers=24) as pool:
        results = list(pool.map(lambda c: exchange(proc, c), cases, timeout=60))
    health = check_health(proc, baseline, scenario)
    return GroupRun(proc, health, {c.name: r for c, r in zip(cases, results, strict=True)})


@pytest.fixture(scope="module")
def server(backend):
    with running_server(backend, *FLAGS) as proc:
        yield proc


@pytest.fixture(scope="module")
def garbage(server):
    return run_group(server, GARBAGE + UNKNOWN_METHODS, "garbage")


@pytest.fixture(scope="module")
def smuggling(server):
    return run_group(server, SMUGGLING, "smuggling")


def describe(item: Case, got: Exchange) -> str:
    return (
        f"{item.name}: statuses {got.statuses}, end {got.end!r} after {got.elapsed:.2f} s, "
        f"expected first status in {sorted(item.expect, key=str)}"
        f"{' then a close' if item.close else ''}; first bytes {got.first_bytes[:120]!r}"
        f"{' error ' + got.error if got.error else ''}"
    )


def answered_as_expected(item: Case, got: Exchange) -> bool:
    first = got.statuses[0] if got.statuses else None
    if first not in item.expect:
        return False
    if got.end.startswith("broken"):
        return False
    if item.close:
        # Refused: that one answer (or none), then closed in good time.
        return len(got.statuses) <= 1 and got.closed and got.elapsed <= CLOSE_WITHIN + QUIET
    return True


@pytest.mark.timeout(60)
@pytest.mark.parametrize("item", GARBAGE, ids=lambda c: c.name)
def test_garbage_is_refused_with_the_right_status_and_a_close(garbage, item):
    got = garbage.exchanges[item.name]
    assert answered_as_expected(item, got), garbage.server.diag(describe(item, got))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("item", UNKNOWN_METHODS, ids=lambda c: c.name)
def test_unknown_method_is_answered_by_the_app(garbage, item):
    got = garbage.exchanges[item.name]
    assert answered_as_expected(item, got), garbage.server.diag(describe(item, got))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("aspect", HEALTH_ASPECTS)
def test_garbage_leaves_server_healthy(garbage, aspect):
    assert_healthy(garbage.health, aspect)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("item", HIDES_SMUGGLED, ids=lambda c: c.name)
def test_smuggled_request_is_never_answered(smuggling, item):
    got = smuggling.exchanges[item.name]
    assert 299 not in got.statuses, smuggling.server.diag(
        f"the request hidden in the body was answered: {describe(item, got)}"
    )


@pytest.mark.timeout(60)
@pytest.mark.parametrize("item", SMUGGLING, ids=lambda c: c.name)
def test_ambiguous_framing_is_refused_with_the_right_status_and_a_close(smuggling, item):
    got = smuggling.exchanges[item.name]
    assert answered_as_expected(item, got), smuggling.server.diag(describe(item, got))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("aspect", HEALTH_ASPECTS)
def test_smuggling_attempts_leave_server_healthy(smuggling, aspect):
    assert_healthy(smuggling.health, aspect)
