"""HTTPS: selserve with --certfile/--keyfile, black box, through real clients -- curl,
requests, the standard library's http.client and ssl, `openssl s_client` for protocol
versions, ALPN and session resumption, and wrk.

Servers that tests can share are module-scoped, one per backend; what does not depend on
the backend (start-up refusals, settings of the TLS context, SIGHUP reloads) runs once.
Every certificate is generated at test time (tls_certs.py).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import random
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time

import pytest
import requests
from helpers import ROOT, RawClient, ServerProcess, free_port, get_request, poll_until
from tls_certs import (
    CLIENT_SUBJECT,
    SERVER_SERIAL,
    TLSServer,
    cert_der,
    cert_serial,
    client_context,
    close_reasons,
    make_certs,
)

GREETING = b"Hello from selserve!\n"
PLAIN_TO_TLS = b"The plain HTTP request was sent to HTTPS port"
MiB = 1024 * 1024
BIG_SIZE = 5 * MiB
CURL = shutil.which("curl")
WRK = shutil.which("wrk")
OPENSSL = shutil.which("openssl")

needs_curl = pytest.mark.skipif(CURL is None, reason="curl is not installed")
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="openssl is not installed")

# Apps that report what the server told them about the connection. Written into a
# directory served with --chdir, so that the server process imports them by name.
TLS_APPS = """
import json
from selserve.app import Response, native

KEYS = ("wsgi.url_scheme", "HTTPS", "SSL_CLIENT_S_DN")
MISSING = "<no such attribute>"


def wsgi_app(environ, start_response):
    body = json.dumps({k: environ[k] for k in KEYS if k in environ}).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]


@native
def native_app(request):
    shown = {
        "scheme": getattr(request, "scheme", MISSING),
        "client_cert": getattr(request, "client_cert", MISSING),
    }
    return Response(200, [("Content-Type", "application/json")], json.dumps(shown).encode())
"""


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certs(tmp_path_factory.mktemp("tls-certs"))


@pytest.fixture(scope="module")
def apps_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tls-apps")
    (directory / "tlsapps.py").write_text(TLS_APPS)
    return directory


@pytest.fixture(scope="module")
def big_file(tmp_path_factory):
    """(root directory, content): a 5 MB file of random bytes under a --root."""
    root = tmp_path_factory.mktemp("tls-static")
    data = random.Random(20240501).randbytes(BIG_SIZE)
    (root / "big.bin").write_bytes(data)
    return root, data


@pytest.fixture
def tls_servers():
    """Start TLSServers with special flags; every one of them is stopped at teardown."""
    servers: list[TLSServer] = []

    def start(backend, certs, *args, **kwargs) -> TLSServer:
        proc = TLSServer(backend, certs, *args, **kwargs)
        servers.append(proc)
        return proc.start()

    start.servers = servers
    yield start
    for proc in servers:
        proc.stop()


def module_server(backend, certs, *args, **kwargs):
    proc = TLSServer(backend, certs, *args, **kwargs)
    try:
        yield proc.start()
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def demo(backend, certs):
    """The demo app on https://127.0.0.1:TLS_PORT, stats on the plain listener."""
    yield from module_server(backend, certs, "--stats-path", "/_stats")


@pytest.fixture(scope="module")
def static(backend, certs, big_file):
    yield from module_server(backend, certs, "--root", str(big_file[0]), app=None)


@pytest.fixture(scope="module")
def wsgi_optional(backend, certs, apps_dir):
    """A WSGI app that shows its environ, mTLS optional."""
    yield from module_server(
        backend, certs, "--chdir", str(apps_dir), "--ca-certs", str(certs.ca_cert),
        "--client-cert", "optional", app="tlsapps:wsgi_app",
    )  # fmt: skip


@pytest.fixture(scope="module")
def native_optional(backend, certs, apps_dir):
    yield from module_server(
        backend, certs, "--chdir", str(apps_dir), "--ca-certs", str(certs.ca_cert),
        "--client-cert", "optional", app="tlsapps:native_app",
    )  # fmt: skip


@pytest.fixture(scope="module")
def mtls_required(backend, certs):
    yield from module_server(
        backend, certs, "--ca-certs", str(certs.ca_cert), "--client-cert", "required",
        "--stats-path", "/_stats", client_cert=True,
    )  # fmt: skip


# --------------------------------------------------------------------------- clients


def curl(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    argv = [CURL, "--http1.1", "-sS", "--max-time", "20", *args]
    return subprocess.run(argv, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)


def s_client(port: int, *args: str, request: bytes | None = None) -> tuple[int, str]:
    """`openssl s_client` against 127.0.0.1:port; (exit status, stdout+stderr). With
    `request`, it is sent and s_client reads until the server closes (-ign_eof): send
    `Connection: close`."""
    argv = [OPENSSL, "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "localhost"]
    argv += list(args)
    if request is not None:
        argv.append("-ign_eof")
    done = subprocess.run(
        argv,
        input=request if request is not None else b"",
        capture_output=True,
        timeout=20,
    )
    return done.returncode, (done.stdout + done.stderr).decode("latin-1")


def handshake(output: str) -> tuple[str, str, str] | None:
    """('New' | 'Reused', protocol, cipher) when s_client's handshake succeeded, else None."""
    match = re.search(r"^(New|Reused), (\S+), Cipher is (\S+)", output, re.M)
    if match is None or match[3] == "(NONE)":
        return None
    return match[1], match[2], match[3]


CLOSE_REQUEST = b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"


def https_get(proc: TLSServer, path: str = "/", context: ssl.SSLContext | None = None):
    """(status, headers, body) for GET over a fresh TLS connection, with http.client."""
    conn = http.client.HTTPSConnection(
        "127.0.0.1", proc.tls_port, context=context or proc.client_context, timeout=10
    )
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.headers, response.read()
    finally:
        conn.close()


def peer_der(proc: TLSServer) -> bytes | None:
    """The certificate a fresh TLS connection is shown (None if the connection fails)."""
    try:
        with proc.tls_socket(timeout=3) as sock:
            return sock.getpeercert(binary_form=True)
    except OSError:
        return None


def reason_count(proc: TLSServer, reason: str) -> int:
    return close_reasons(proc.stats()).get(reason, 0)


def random_bytes(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


# =========================================================================== basics


@needs_curl
def test_curl_verifies_the_certificate_and_gets_the_greeting(demo, certs, tmp_path):
    out = tmp_path / "body"
    done = curl(
        "--cacert", str(certs.ca_cert), "-o", str(out), "-w", "%{http_code} %{scheme}",
        f"{demo.tls_url}/",
    )  # fmt: skip
    assert done.returncode == 0, demo.diag(f"curl failed: {done.stderr!r}")
    assert done.stdout == b"200 HTTPS", done.stdout
    assert out.read_bytes() == GREETING


@needs_curl
def test_curl_verifies_the_name_localhost(demo, certs):
    port = demo.tls_port
    done = curl(
        "--cacert", str(certs.ca_cert), "--resolve", f"localhost:{port}:127.0.0.1",
        f"https://localhost:{port}/",
    )  # fmt: skip
    assert done.returncode == 0, demo.diag(f"curl failed: {done.stderr!r}")
    assert done.stdout == GREETING


@needs_curl
def test_curl_refuses_the_server_without_our_ca(demo):
    # The certificate really is checked against the CA: without it, curl refuses.
    done = curl(f"{demo.tls_url}/")
    assert done.returncode == 60, (done.returncode, done.stderr)  # peer certificate failed
    assert done.stdout == b""


def test_requests_posts_1mb_to_echo_and_gets_the_same_bytes(demo, certs):
    body = random_bytes(MiB, 1)
    response = requests.post(
        f"{demo.tls_url}/echo", data=body, verify=str(certs.ca_cert), timeout=20
    )
    assert response.status_code == 200, response.text[:200]
    assert response.headers["Content-Length"] == str(MiB)
    assert hashlib.sha256(response.content).hexdigest() == hashlib.sha256(body).hexdigest()
    assert response.content == body


def test_chunked_stream_arrives_exactly(demo):
    with demo.connect() as client:
        client.send(get_request("/stream?n=64&size=1024"))
        response = client.read_final_response()
    assert response.status == 200, response
    assert response.header("Transfer-Encoding") == "chunked", response
    assert response.chunk_sizes is not None and sum(response.chunk_sizes) == 64 * 1024
    assert response.body == b"x" * (64 * 1024)


def test_expect_100_continue_over_tls(demo):
    body = random_bytes(200_000, 2)
    head = (
        b"POST /echo HTTP/1.1\r\nHost: test\r\nExpect: 100-continue\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    )
    with demo.connect() as client:
        client.send(head)
        interim = client.read_response("POST")
        assert interim.status == 100, interim
        client.send(body)
        final = client.read_final_response("POST")
    assert final.status == 200, final
    assert final.body == body


def test_keep_alive_serves_several_requests_on_one_tls_connection(demo):
    conn = http.client.HTTPSConnection(
        "127.0.0.1", demo.tls_port, context=demo.client_context, timeout=10
    )
    try:
        posted = random_bytes(300_000, 3)
        plan = [
            ("GET", "/", None, GREETING),
            ("POST", "/echo", posted, posted),
            ("GET", "/stream?n=64&size=1024", None, b"x" * 65536),
            ("GET", "/", None, GREETING),
            ("POST", "/echo", b"small", b"small"),
        ]
        sock = None
        for i, (method, path, body, expected) in enumerate(plan):
            conn.request(method, path, body=body)
            response = conn.getresponse()
            got = response.read()
            assert response.status == 200, (i, method, path, response.status)
            assert got == expected, (i, method, path, len(got))
            assert not response.will_close, (i, method, path, response.getheaders())
            if sock is None:
                sock = conn.sock
                port = sock.getsockname()[1]
            assert conn.sock is sock and sock.getsockname()[1] == port, f"reconnected at {i}"
    finally:
        conn.close()


def test_plain_http_to_the_tls_port_gets_400_and_is_closed_promptly(demo):
    before = reason_count(demo, "tls-plain-http")
    start = time.monotonic()
    with RawClient.connect(demo.tls_address) as client:
        client.send(get_request("/"))
        response = client.read_response()
        how, extra = client.wait_closed(timeout=3.0)
    elapsed = time.monotonic() - start
    assert response.version == "HTTP/1.1" and response.status == 400, response
    assert response.reason == "Bad Request", response
    assert PLAIN_TO_TLS in response.body, response
    assert how in ("eof", "reset") and extra == b"", (how, extra)
    assert elapsed < 2.0, f"closed after {elapsed:.2f} s (handshake timeout is 10 s)"
    assert poll_until(lambda: reason_count(demo, "tls-plain-http") == before + 1, 2), demo.diag(
        f"closed: {close_reasons(demo.stats())}"
    )


def test_mixed_listeners_serve_tls_and_plain_at_once(demo):
    assert demo.get("/").body == GREETING  # TLS listener
    plain = demo.plain_get("/")  # plain listener of the same process
    assert plain.status == 200 and plain.body == GREETING, plain
    # and the plain listener does not speak TLS
    with pytest.raises(ssl.SSLError):
        raw = socket.create_connection(demo.address, timeout=5)
        with demo.client_context.wrap_socket(raw, server_hostname="127.0.0.1"):
            pass


def test_python_client_negotiates_alpn_http11(demo):
    context = client_context(demo.certs)
    context.set_alpn_protocols(["h2", "http/1.1"])
    with demo.tls_socket(context) as sock:
        assert sock.selected_alpn_protocol() == "http/1.1"
        assert sock.version() in ("TLSv1.2", "TLSv1.3")


@pytest.mark.skipif(WRK is None, reason="wrk is not installed")
def test_wrk_over_https_has_no_errors(demo):
    done = subprocess.run(
        [WRK, "-t1", "-c10", "-d2", f"{demo.tls_url}/"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    match = re.search(r"(\d+) requests in", done.stdout)
    assert match and int(match[1]) > 0, done.stdout
    assert "Socket errors" not in done.stdout, demo.diag(done.stdout)
    assert "Non-2xx" not in done.stdout, done.stdout


# =========================================================================== openssl s_client


@needs_openssl
def test_alpn_h2_and_http11_offered_negotiates_http11(demo, certs):
    _, out = s_client(demo.tls_port, "-CAfile", str(certs.ca_cert), "-alpn", "h2,http/1.1")
    assert handshake(out), out
    assert "ALPN protocol: http/1.1" in out, out


@needs_openssl
def test_alpn_h2_alone_is_never_selected(demo, certs):
    _, out = s_client(demo.tls_port, "-CAfile", str(certs.ca_cert), "-alpn", "h2")
    assert "ALPN protocol: h2" not in out, out
    if handshake(out):  # completing without ALPN is fine; refusing the handshake too
        assert "No ALPN negotiated" in out, out


@needs_openssl
@pytest.mark.parametrize(("flag", "protocol"), [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")])
def test_tls12_and_tls13_are_accepted_by_default(demo, certs, flag, protocol):
    _, out = s_client(demo.tls_port, "-CAfile", str(certs.ca_cert), flag)
    done = handshake(out)
    assert done and done[1] == protocol, out
    assert "Verify return code: 0 (ok)" in out, out


@needs_openssl
def test_tls11_is_refused(demo):
    _, out = s_client(demo.tls_port, "-msg", "-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0")
    if not re.search(r">>> TLS 1\.1, Handshake \[length [0-9a-f]+\], ClientHello", out):
        pytest.skip(f"the local openssl does not even try TLS 1.1: {out[-300:]}")
    assert handshake(out) is None, out


@needs_openssl
@pytest.mark.parametrize("flag", ["-tls1_2", "-tls1_3"])
def test_session_resumption_is_on(demo, certs, tmp_path, flag):
    session = tmp_path / "session.pem"
    common = ["-CAfile", str(certs.ca_cert), flag]
    _, first = s_client(demo.tls_port, *common, "-sess_out", str(session), request=CLOSE_REQUEST)
    assert handshake(first) and handshake(first)[0] == "New", first
    assert GREETING.decode() in first, first
    _, second = s_client(demo.tls_port, *common, "-sess_in", str(session), request=CLOSE_REQUEST)
    assert handshake(second) and handshake(second)[0] == "Reused", second
    assert GREETING.decode() in second, second


# =========================================================================== static files


def test_static_5mb_file_arrives_exactly(static, certs, big_file):
    _, data = big_file
    response = requests.get(f"{static.tls_url}/big.bin", verify=str(certs.ca_cert), timeout=30)
    assert response.status_code == 200
    assert response.headers["Content-Length"] == str(BIG_SIZE)
    assert hashlib.sha256(response.content).digest() == hashlib.sha256(data).digest()


@needs_curl
def test_static_5mb_file_arrives_exactly_through_curl(static, certs, big_file, tmp_path):
    _, data = big_file
    out = tmp_path / "big.bin"
    done = curl("--cacert", str(certs.ca_cert), "-o", str(out), f"{static.tls_url}/big.bin")
    assert done.returncode == 0, static.diag(f"curl failed: {done.stderr!r}")
    assert out.read_bytes() == data


@pytest.mark.parametrize(
    ("spec", "first", "last"),
    [("100-199", 100, 199), ("1048570-3145740", 1048570, 3145740), ("-500", BIG_SIZE - 500,
     BIG_SIZE - 1)],
    ids=["100-199", "megabytes", "suffix"],
)  # fmt: skip
def test_static_range_requests(static, big_file, spec, first, last):
    _, data = big_file
    with static.connect() as client:
        client.send(get_request("/big.bin", extra=f"Range: bytes={spec}\r\n"))
        response = client.read_final_response()
    assert response.status == 206, response
    assert response.header("Content-Range") == f"bytes {first}-{last}/{BIG_SIZE}", response
    assert response.body == data[first : last + 1]


def test_static_conditional_get_answers_304(static):
    with static.connect() as client:
        client.send(get_request("/big.bin", extra="Range: bytes=0-0\r\n"))
        etag = client.read_final_response().header("ETag")
        assert etag, "no ETag on a static file"
        client.send(get_request("/big.bin", extra=f"If-None-Match: {etag}\r\n"))
        response = client.read_final_response()
    assert response.status == 304, response
    assert response.body == b""
    assert response.header("ETag") == etag


# =========================================================================== what apps see


def env_of(response) -> dict:
    assert response.status_code == 200, response.text[:300]
    return response.json()


def test_wsgi_sees_https_on_the_tls_listener(wsgi_optional, certs):
    env = env_of(requests.get(f"{wsgi_optional.tls_url}/", verify=str(certs.ca_cert), timeout=10))
    assert env.get("wsgi.url_scheme") == "https", env
    assert env.get("HTTPS") == "on", env
    assert "SSL_CLIENT_S_DN" not in env, env


def test_wsgi_sees_the_verified_client_certificate(wsgi_optional, certs):
    response = requests.get(
        f"{wsgi_optional.tls_url}/",
        verify=str(certs.ca_cert),
        cert=(str(certs.client_cert), str(certs.client_key)),
        timeout=10,
    )
    env = env_of(response)
    assert env.get("SSL_CLIENT_S_DN") == CLIENT_SUBJECT, env
    assert env.get("wsgi.url_scheme") == "https", env


def test_wsgi_sees_http_on_the_plain_listener_of_the_same_server(wsgi_optional):
    response = wsgi_optional.plain_get("/")
    assert response.status == 200, response
    env = json.loads(response.body)
    assert env.get("wsgi.url_scheme") == "http", env
    assert env.get("HTTPS", "off") != "on", env
    assert "SSL_CLIENT_S_DN" not in env, env


def native_view(proc: TLSServer, context=None) -> dict:
    status, _, body = https_get(proc, "/", context)
    assert status == 200, body[:300]
    return json.loads(body)


def test_native_app_sees_scheme_and_client_cert(native_optional, certs):
    assert native_view(native_optional) == {"scheme": "https", "client_cert": None}
    with_cert = client_context(certs, with_cert=True)
    assert native_view(native_optional, with_cert) == {
        "scheme": "https",
        "client_cert": CLIENT_SUBJECT,
    }
    plain = native_optional.plain_get("/")
    assert plain.status == 200, plain
    shown = json.loads(plain.body)
    assert shown["scheme"] in (None, "http") and shown["client_cert"] is None, shown


# =========================================================================== mutual TLS


@needs_curl
def test_mtls_optional_accepts_clients_with_and_without_a_certificate(wsgi_optional, certs):
    url = f"{wsgi_optional.tls_url}/"
    without = curl("--cacert", str(certs.ca_cert), url)
    assert without.returncode == 0, wsgi_optional.diag(repr(without.stderr))
    with_cert = curl(
        "--cacert", str(certs.ca_cert), "--cert", str(certs.client_cert),
        "--key", str(certs.client_key), url,
    )  # fmt: skip
    assert with_cert.returncode == 0, wsgi_optional.diag(repr(with_cert.stderr))
    assert "SSL_CLIENT_S_DN" not in json.loads(without.stdout)
    assert json.loads(with_cert.stdout)["SSL_CLIENT_S_DN"] == CLIENT_SUBJECT


@needs_curl
def test_mtls_required_accepts_a_client_with_its_certificate(mtls_required, certs):
    done = curl(
        "--cacert", str(certs.ca_cert), "--cert", str(certs.client_cert),
        "--key", str(certs.client_key), f"{mtls_required.tls_url}/",
    )  # fmt: skip
    assert done.returncode == 0, mtls_required.diag(repr(done.stderr))
    assert done.stdout == GREETING


@needs_curl
def test_mtls_required_refuses_clients_without_a_valid_certificate(mtls_required, certs):
    before = reason_count(mtls_required, "tls-handshake-failed")
    url = f"{mtls_required.tls_url}/"
    without = curl("--cacert", str(certs.ca_cert), url)
    rogue = curl(
        "--cacert", str(certs.ca_cert), "--cert", str(certs.rogue_client_cert),
        "--key", str(certs.other_key), url,
    )  # fmt: skip
    # The standard library's client: the handshake may complete on its side (TLS 1.3
    # checks the client's certificate after), but no HTTP answer ever comes.
    got = b""
    error = None
    try:
        with mtls_required.tls_socket(client_context(certs)) as sock:
            sock.sendall(get_request("/"))
            got = sock.recv(4096)
    except OSError as exc:
        error = exc
    assert without.returncode != 0 and without.stdout == b"", (without.returncode, without.stdout)
    assert rogue.returncode != 0 and rogue.stdout == b"", (rogue.returncode, rogue.stdout)
    assert got == b"" or error is not None, got
    assert b"HTTP/" not in got
    assert poll_until(
        lambda: reason_count(mtls_required, "tls-handshake-failed") == before + 3, 3
    ), mtls_required.diag(f"closed: {close_reasons(mtls_required.stats())}")


# =========================================================================== TLS settings


@needs_openssl
def test_min_tls_13_refuses_tls12(tls_servers, certs):
    proc = tls_servers(None, certs, "--min-tls", "1.3")
    _, out12 = s_client(proc.tls_port, "-CAfile", str(certs.ca_cert), "-tls1_2")
    _, out13 = s_client(proc.tls_port, "-CAfile", str(certs.ca_cert), "-tls1_3")
    assert handshake(out12) is None, out12
    done = handshake(out13)
    assert done and done[1] == "TLSv1.3", out13


@needs_openssl
def test_ssl_ciphers_limits_the_tls12_ciphers(tls_servers, certs):
    proc = tls_servers(None, certs, "--ssl-ciphers", "ECDHE-ECDSA-AES128-GCM-SHA256")
    ca = ["-CAfile", str(certs.ca_cert)]
    _, chosen = s_client(proc.tls_port, *ca, "-tls1_2")
    _, other = s_client(proc.tls_port, *ca, "-tls1_2", "-cipher", "ECDHE-ECDSA-AES256-GCM-SHA384")
    _, tls13 = s_client(proc.tls_port, *ca, "-tls1_3")
    assert handshake(chosen) == ("New", "TLSv1.2", "ECDHE-ECDSA-AES128-GCM-SHA256"), chosen
    assert handshake(other) is None, other
    assert handshake(tls13) and handshake(tls13)[1] == "TLSv1.3", tls13


@pytest.fixture(scope="module")
def chain_and_encrypted_key(certs):
    yield from module_server(
        None, certs, "--keyfile-password-file", str(certs.password_file),
        certfile=certs.server_chain, keyfile=certs.server_key_encrypted,
    )  # fmt: skip


def test_encrypted_key_with_a_password_file_serves(chain_and_encrypted_key):
    assert chain_and_encrypted_key.get("/").body == GREETING


@needs_openssl
def test_certfile_with_a_chain_sends_the_chain(chain_and_encrypted_key, certs):
    _, out = s_client(chain_and_encrypted_key.tls_port, "-CAfile", str(certs.ca_cert), "-showcerts")
    assert handshake(out), out
    assert out.count("-----BEGIN CERTIFICATE-----") == 2, out


def test_certfile_without_an_https_bind_makes_every_listener_tls(tls_servers, certs):
    second = free_port()
    proc = tls_servers(None, certs, "--bind", f"127.0.0.1:{second}", all_tls=True)
    for port in (proc.port, second):
        raw = socket.create_connection(("127.0.0.1", port), timeout=5)
        with proc.client_context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
            client = RawClient(sock)
            client.send(get_request("/"))
            assert client.read_final_response().body == GREETING, port


def test_http_scheme_bind_is_plain_beside_an_https_one(tls_servers, certs):
    third = free_port()
    proc = tls_servers(None, certs, "--bind", f"http://127.0.0.1:{third}")
    with RawClient.connect(("127.0.0.1", third)) as client:
        client.send(get_request("/"))
        assert client.read_final_response().body == GREETING
    assert proc.get("/").body == GREETING


# =========================================================================== start-up refusals


def refuse(*args: str) -> tuple[int, str]:
    """Run selserve with these flags; (exit status, stderr). It must exit by itself."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    argv = [sys.executable, "-m", "selserve", "selserve.demo:app", *args]
    done = subprocess.run(
        argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=15,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    return done.returncode, done.stderr


def pair(c) -> list:
    """A certificate and its key: flags every refusal but the first two starts from."""
    return ["--certfile", c.server_cert, "--keyfile", c.server_key]


REFUSALS = {
    # case: (flags, what the line must name: one of these)
    "certfile-without-keyfile": (lambda c: ["--certfile", c.server_cert], ["--keyfile"]),
    "keyfile-without-certfile": (lambda c: ["--keyfile", c.server_key], ["--certfile"]),
    "key-does-not-match": (
        lambda c: ["--certfile", c.server_cert, "--keyfile", c.other_key],
        ["--keyfile", "other.key"],
    ),
    "missing-certfile": (
        lambda c: ["--certfile", c.directory / "missing.pem", "--keyfile", c.server_key],
        ["missing.pem"],
    ),
    "garbage-certfile": (
        lambda c: ["--certfile", c.directory / "garbage.pem", "--keyfile", c.server_key],
        ["--certfile", "garbage.pem"],
    ),
    "optional-without-ca": (lambda c: [*pair(c), "--client-cert", "optional"], ["--ca-certs"]),
    "required-without-ca": (lambda c: [*pair(c), "--client-cert", "required"], ["--ca-certs"]),
    "min-tls-1.1": (lambda c: [*pair(c), "--min-tls", "1.1"], ["--min-tls"]),
    "https-bind-without-certfile": (lambda c: [], ["--certfile"]),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_start_up_refusals_exit_2_with_one_line(certs, case):
    (certs.directory / "garbage.pem").write_text("this is not a certificate\n")
    make_flags, names = REFUSALS[case]
    flags = [str(f) for f in make_flags(certs)]
    bind = f"{'https://' if case == 'https-bind-without-certfile' else ''}127.0.0.1:{free_port()}"
    status, stderr = refuse("--bind", bind, *flags)
    lines = stderr.strip().splitlines()
    assert status == 2, (status, stderr)
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    assert any(name in lines[0] for name in names), f"{lines[0]!r} names none of {names}"


# =========================================================================== SIGHUP reloads


def test_sighup_reloads_the_certificate_for_new_connections(tls_servers, certs, tmp_path):
    cert_path = tmp_path / "cert.pem"
    shutil.copy(certs.server_cert, cert_path)
    proc = tls_servers(None, certs, certfile=cert_path)
    old, new_serial = cert_der(certs.server_cert), SERVER_SERIAL + 1
    new_path = certs.reissue_server_cert(tmp_path / "new.pem", new_serial)
    new = cert_der(new_path)
    assert cert_serial(new_path) == new_serial != cert_serial(certs.server_cert)
    kept = http.client.HTTPSConnection(
        "127.0.0.1", proc.tls_port, context=proc.client_context, timeout=10
    )
    try:
        kept.request("GET", "/")
        assert kept.getresponse().read() == GREETING
        sock = kept.sock
        assert sock.getpeercert(binary_form=True) == old
        assert peer_der(proc) == old

        os.replace(new_path, cert_path)
        os.kill(proc.pid, signal.SIGHUP)
        assert poll_until(lambda: peer_der(proc) == new, 5), proc.diag("no new certificate")
        assert [peer_der(proc) for _ in range(3)] == [new] * 3

        # The connection opened before the reload goes on, with the old certificate.
        kept.request("GET", "/")
        assert kept.getresponse().read() == GREETING
        assert kept.sock is sock and sock.getpeercert(binary_form=True) == old
    finally:
        kept.close()
    assert proc.alive(), proc.diag("the server died on SIGHUP")
    assert "Traceback" not in proc.stderr_text()


def test_a_failed_reload_keeps_the_old_certificate(tls_servers, certs, tmp_path):
    cert_path = tmp_path / "cert.pem"
    shutil.copy(certs.server_cert, cert_path)
    proc = tls_servers(None, certs, certfile=cert_path)
    old = cert_der(certs.server_cert)
    assert peer_der(proc) == old
    lines_before = len(proc.stderr_text().splitlines())

    def new_lines() -> list[str]:
        return proc.stderr_text().splitlines()[lines_before:]

    cert_path.write_text("-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n")
    os.kill(proc.pid, signal.SIGHUP)
    assert poll_until(new_lines, 5), proc.diag("nothing logged about the failed reload")
    assert [peer_der(proc) for _ in range(3)] == [old] * 3, proc.diag("old certificate lost")
    assert proc.get("/").body == GREETING
    lines = new_lines()
    assert len(lines) == 1, lines
    assert "error" in lines[0].lower(), lines
    assert "Traceback" not in proc.stderr_text()
    assert proc.alive()


def test_sighup_with_workers_gives_new_connections_the_new_certificate(
    tls_servers, certs, tmp_path
):
    cert_path = tmp_path / "cert.pem"
    shutil.copy(certs.server_cert, cert_path)
    proc = tls_servers(None, certs, "--workers", "2", certfile=cert_path)
    assert peer_der(proc) == cert_der(certs.server_cert)
    new_path = certs.reissue_server_cert(tmp_path / "new.pem", SERVER_SERIAL + 2)
    new = cert_der(new_path)
    os.replace(new_path, cert_path)
    os.kill(proc.pid, signal.SIGHUP)
    assert poll_until(lambda: peer_der(proc) == new, 10), proc.diag("no new certificate")
    # Once the old workers have left, every new connection gets the new certificate.
    assert poll_until(lambda: [peer_der(proc) for _ in range(6)] == [new] * 6, 10), proc.diag(
        "some new connections still get the old certificate"
    )
    assert proc.get("/").body == GREETING


@pytest.mark.parametrize("split", [False, True], ids=["whole", "in-pieces"])
def test_a_proxy_header_before_the_handshake_names_the_client(backend, tmp_path, split):
    """--proxy-protocol on a TLS listener (HAProxy's send-proxy-v2 to a TLS server): the
    PROXY header comes in plain text, maybe in pieces, and the ClientHello right after
    it; the header's client is the one logged, and the handshake is not disturbed."""
    certs = make_certs(tmp_path / "certs")
    log = tmp_path / "access.log"
    server = ServerProcess(
        backend, "--certfile", str(certs.server_cert), "--keyfile", str(certs.server_key),
        "--proxy-protocol", "--access-log", str(log), "--access-log-format", "%(h)s %(U)s",
    )  # fmt: skip
    context = client_context(certs)
    try:
        server.start()
        with socket.create_connection(server.address, timeout=5) as raw:
            header = b"PROXY TCP4 203.0.113.7 127.0.0.1 5555 443\r\n"
            if split:
                raw.sendall(header[:9])
                time.sleep(0.1)
                raw.sendall(header[9:])
            else:
                raw.sendall(header)
            with context.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(get_request("/", extra="Connection: close\r\n"))
                answer = b""
                while chunk := tls.recv(65536):
                    answer += chunk
        assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
        assert poll_until(lambda: log.exists() and log.read_text(), 5)
        assert log.read_text().splitlines() == ["203.0.113.7 /"]
    finally:
        server.stop()
