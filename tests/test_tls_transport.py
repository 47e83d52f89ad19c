"""tls.py on its own: the TLS transport's verbs over a real in-process TLS pair (want-read
as BlockingIOError, record-sized writes, gathered pieces joined, close_notify on close),
the client certificate's subject as RFC 4514 text, the https request classes, and
the settings refused at start-up."""

from __future__ import annotations

import socket
import ssl
import subprocess
from pathlib import Path

import pytest

from selserve.app import Request
from selserve.config import Config
from selserve.tls import (
    RECORD_SIZE,
    ServerTLS,
    subject_name,
    tls_request_class,
    with_client_cert,
)


@pytest.fixture(scope="module")
def cert(tmp_path_factory) -> tuple[str, str]:
    directory = tmp_path_factory.mktemp("tls")
    key, certificate = directory / "key.pem", directory / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-keyout", key, "-out", certificate, "-days", "2", "-subj", "/CN=localhost"],
        check=True, capture_output=True,
    )  # fmt: skip
    return str(certificate), str(key)


@pytest.fixture
def pair(cert):
    """(server TLSTransport, client SSLSocket) over a socketpair, handshake done."""
    certfile, keyfile = cert
    config = Config(certfile=certfile, keyfile=keyfile)
    server_sock, client_sock = socket.socketpair()
    server_sock.setblocking(False)
    client_sock.setblocking(False)
    transport = ServerTLS(config, Request).wrap(server_sock)
    client_context = ssl.create_default_context(cafile=certfile)
    client_context.check_hostname = False
    client = client_context.wrap_socket(client_sock, do_handshake_on_connect=False)
    done = {"server": False, "client": False}
    for _ in range(100):
        if not done["server"]:
            done["server"] = transport.handshake() is None
        if not done["client"]:
            try:
                client.do_handshake()
                done["client"] = True
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                pass
        if all(done.values()):
            break
    assert all(done.values())
    yield transport, client
    transport.close()
    client.close()


def read_all(sock, expected: int) -> bytes:
    got = b""
    for _ in range(10_000):
        try:
            got += sock.recv(1 << 20)
        except (ssl.SSLWantReadError, BlockingIOError):
            pass
        if len(got) >= expected:
            break
    return got


def test_nothing_to_read_is_a_blocking_io_error(pair):
    transport, client = pair
    with pytest.raises(BlockingIOError):
        transport.recv(65536)
    client.sendall(b"GET / HTTP/1.1\r\n\r\n")
    assert read_all(transport, 18) == b"GET / HTTP/1.1\r\n\r\n"


def test_a_write_is_at_most_one_record(pair):
    transport, client = pair
    data = bytes(range(256)) * 400  # 100 KiB
    sent = transport.send(data)
    assert sent == RECORD_SIZE
    assert read_all(client, sent) == data[:sent]


def test_gathered_pieces_are_joined_up_to_a_record(pair):
    transport, client = pair
    pieces = [b"head\r\n\r\n", memoryview(b"x" * 10_000), b"y" * 10_000, b"z" * 5]
    sent = transport.sendmsg(pieces)
    assert sent == RECORD_SIZE
    assert read_all(client, sent) == b"".join(bytes(p) for p in pieces)[:RECORD_SIZE]
    assert transport.sendmsg([b"a", b"b"]) == 2


def test_a_full_socket_is_a_blocking_io_error_and_the_same_bytes_go_later(pair):
    transport, client = pair
    data = b"q" * RECORD_SIZE
    accepted = 0
    with pytest.raises(BlockingIOError):
        for _ in range(10_000):  # the client does not read: the socketpair fills up
            accepted += transport.send(data)
    assert accepted > 0
    received = read_all(client, accepted)
    assert received == b"q" * accepted
    # OpenSSL retries the record it could not finish with the same bytes: accepted now.
    assert transport.send(data) == RECORD_SIZE


def test_close_sends_close_notify(pair):
    transport, client = pair
    transport.close()
    client.setblocking(True)
    client.settimeout(2)
    client.suppress_ragged_eofs = False
    assert client.recv(100) == b""  # a clean TLS end, not an EOF in violation of protocol


def test_the_clients_close_notify_reads_as_the_end(pair):
    transport, client = pair
    try:
        client.unwrap()
    except ssl.SSLWantReadError:
        pass  # (sent; it waits for ours)
    assert read_all_end(transport) == b""


def read_all_end(transport) -> bytes | None:
    for _ in range(1000):
        try:
            return transport.recv(65536)
        except BlockingIOError:
            continue
    return None


@pytest.mark.parametrize(
    "subject, text",
    [
        (((("countryName", "DE"),), (("organizationName", "Selserve Tests"),),
          (("commonName", "alice"),)), "CN=alice,O=Selserve Tests,C=DE"),
        (((("commonName", "Smith, John"),),), "CN=Smith\\, John"),
        (((("commonName", "#1 +x"),),), "CN=\\#1 \\+x"),
        (((("commonName", " padded "),),), "CN=\\ padded\\ "),
        (((("commonName", "a"), ("userId", "7")),), "CN=a+UID=7"),
        (((("1.2.3.4", "odd"),),), "1.2.3.4=odd"),
    ],
)  # fmt: skip
def test_the_subject_is_written_as_rfc_4514_most_specific_first(subject, text):
    assert subject_name({"subject": subject}) == text


def test_no_certificate_no_subject():
    assert subject_name({}) is None
    assert subject_name(None) is None


def test_tls_requests_are_https_and_carry_the_client_certificate():
    plain = tls_request_class(Request)
    assert plain.scheme == "https" and plain.client_cert is None
    alice = with_client_cert(plain, "CN=alice")
    assert alice.client_cert == "CN=alice" and alice.scheme == "https"
    assert issubclass(alice, Request) and not hasattr(alice(*_head()), "__dict__")


def test_behind_a_proxy_its_scheme_wins_else_https():
    from selserve.forwarded import TrustedPeers, forwarded_request_class

    forwarded = forwarded_request_class(Request, TrustedPeers.parse("127.0.0.1"))
    tls = tls_request_class(forwarded)
    told = tls(*_head(headers=[("x-forwarded-proto", "http")])).arrived(peer=("127.0.0.1", 1))
    assert told.scheme == "http"
    untold = tls(*_head()).arrived(peer=("127.0.0.1", 1))
    assert untold.scheme == "https"
    stranger = tls(*_head(headers=[("x-forwarded-proto", "http")])).arrived(peer=("10.0.0.9", 1))
    assert stranger.scheme == "https"


def _head(headers=None):
    return ("GET", "/", "/", "", "HTTP/1.1", headers or [], True, None, False, False, "x")


def test_settings_refused_at_start_up_name_the_problem(cert, tmp_path):
    certfile, keyfile = cert
    with pytest.raises(ValueError, match="--certfile needs --keyfile"):
        Config(certfile=certfile)
    with pytest.raises(ValueError, match="--keyfile needs --certfile"):
        Config(keyfile=keyfile)
    with pytest.raises(ValueError, match="needs --certfile"):
        Config(binds=["https://127.0.0.1:8443"])
    with pytest.raises(ValueError, match="--min-tls must be 1.2 or 1.3"):
        Config(certfile=certfile, keyfile=keyfile, min_tls="1.1")
    with pytest.raises(ValueError, match="needs --ca-certs"):
        Config(certfile=certfile, keyfile=keyfile, client_cert="required")
    with pytest.raises(ValueError, match="No such file"):
        Config(certfile=str(tmp_path / "missing.pem"), keyfile=keyfile)
    with pytest.raises(ValueError, match="must be a PEM certificate"):
        Config(certfile=keyfile, keyfile=keyfile)
    with pytest.raises(ValueError, match="selects no cipher"):
        Config(certfile=certfile, keyfile=keyfile, ssl_ciphers="NO-SUCH-CIPHER")


def test_which_binds_are_tls(cert):
    certfile, keyfile = cert
    every = Config(binds=["127.0.0.1:1", "127.0.0.1:2"], certfile=certfile, keyfile=keyfile)
    assert every.tls_binds == ["127.0.0.1:1", "127.0.0.1:2"]
    binds = ["https://127.0.0.1:1", "127.0.0.1:2"]
    marked = Config(binds=binds, certfile=certfile, keyfile=keyfile)
    assert marked.tls_binds == ["https://127.0.0.1:1"]
    assert Config(binds=["127.0.0.1:1"]).tls_binds == []


def test_the_context_speaks_http_1_1_from_tls_1_2_without_renegotiation(cert):
    certfile, keyfile = cert
    context = ServerTLS(Config(certfile=certfile, keyfile=keyfile), Request).context
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.options & ssl.OP_NO_RENEGOTIATION and context.options & ssl.OP_NO_COMPRESSION
    assert not context.options & ssl.OP_NO_TICKET  # session resumption stays on
    strict = Config(certfile=certfile, keyfile=keyfile, min_tls="1.3")
    assert ServerTLS(strict, Request).context.minimum_version == ssl.TLSVersion.TLSv1_3


def test_a_failed_reload_keeps_the_old_context(cert, tmp_path, caplog):
    certfile, keyfile = cert
    copy = tmp_path / "cert.pem"
    copy.write_text(Path(certfile).read_text())
    tls = ServerTLS(Config(certfile=str(copy), keyfile=keyfile), Request)
    before = tls.context
    assert tls.reload() and tls.context is not before
    working = tls.context
    copy.write_text("not a certificate\n")
    assert not tls.reload()
    assert tls.context is working
    assert "TLS reload failed" in caplog.text
