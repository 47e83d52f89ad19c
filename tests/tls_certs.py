"""Certificates for the TLS tests, made at test time with the `openssl` command line into
a directory the test owns (EC P-256 keys: a whole set takes a few tens of milliseconds).

`make_certs(directory)` returns a `Certs` whose attributes are paths:

- `ca_cert`, `ca_key`: a self-signed CA ("Selserve Test CA");
- `server_cert`, `server_key`: a server certificate for DNS `localhost`, IP 127.0.0.1 and
  IP ::1, signed by the CA (serial `SERVER_SERIAL`); `server_chain` is the same certificate
  followed by the CA's (a certfile with a chain);
- `client_cert`, `client_key`: a client certificate, subject `CN=alice,O=Selserve Tests`
  (RFC 4514, most specific first), signed by the CA;
- `other_key`: a key unrelated to every CA-signed certificate (for "key does not match");
  `rogue_client_cert` is a self-signed client certificate for it (CN=mallory), which no
  CA of ours vouches for;
- `server_key_encrypted` and `password_file`: the server key encrypted with AES-256 under
  the password `PASSWORD`, which the file holds followed by a newline.

`certs.reissue_server_cert(path, serial)` signs a new server certificate (same key, same
names, another serial) for the reload tests; `cert_serial(path)` reads a certificate's
serial number back and `cert_der(path)` its DER bytes (what
`SSLSocket.getpeercert(binary_form=True)` gives).

`TLSServer` is a `helpers.ServerProcess` with a TLS listener whose `connect()` speaks
TLS (so the fault suite's Prober and health checks work over TLS unchanged) and a plain
listener beside it for --stats-path; `close_reasons(stats)` reads why connections closed.

Only the standard library, the `openssl` binary and tests/helpers.py; no fixtures here
(each test module makes its own, usually module-scoped, so that a module generates its
set once).
"""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

from helpers import RawClient, Response, ServerProcess, free_port, get_request, poll_until

OPENSSL = shutil.which("openssl") or "openssl"
PASSWORD = "selserve-test-password"
SERVER_SERIAL = 0x5E1
CLIENT_SERIAL = 0xA11CE
CLIENT_SUBJECT = "CN=alice,O=Selserve Tests"  # RFC 4514: most specific RDN first
DAYS = "3"

CA_EXTENSIONS = """\
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
"""

SERVER_EXTENSIONS = """\
[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1, IP:::1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""

CLIENT_EXTENSIONS = """\
[client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""

# `openssl req` reads a config file; this minimal one (plus CA_EXTENSIONS, for the CA's
# self-signed certificate) keeps the system's defaults out.
REQ_CONFIG = """\
[req]
distinguished_name = dn
prompt = no
[dn]
"""


def openssl(*args: str | Path, cwd: Path | None = None) -> str:
    """Run `openssl ARGS`; its stdout, or an AssertionError with its stderr."""
    argv = [OPENSSL, *map(str, args)]
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, f"{' '.join(argv)} failed ({done.returncode}): {done.stderr}"
    return done.stdout


def new_key(path: Path) -> Path:
    openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", path)
    return path


@dataclass
class Certs:
    directory: Path
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    server_chain: Path
    client_cert: Path
    client_key: Path
    other_key: Path
    server_key_encrypted: Path
    password_file: Path
    rogue_client_cert: Path

    def sign(self, key: Path, subject: str, extensions: str, section: str, serial: int,
             out: Path) -> Path:  # fmt: skip
        """A certificate for `key`, subject `subject` (openssl's /A=b/C=d form), signed by
        the CA with the extensions of `section` in `extensions`."""
        stem = out.with_suffix("")
        csr = stem.with_suffix(".csr")
        ext = stem.with_suffix(".ext")
        config = self.directory / "req.cnf"
        ext.write_text(extensions)
        openssl("req", "-new", "-config", config, "-key", key, "-subj", subject, "-out", csr)
        openssl(
            "x509", "-req", "-in", csr, "-CA", self.ca_cert, "-CAkey", self.ca_key,
            "-set_serial", str(serial), "-days", DAYS, "-sha256",
            "-extfile", ext, "-extensions", section, "-out", out,
        )  # fmt: skip
        return out

    def reissue_server_cert(self, out: Path, serial: int) -> Path:
        """Another certificate for the server's key and names, with serial `serial`."""
        return self.sign(self.server_key, "/CN=localhost", SERVER_EXTENSIONS, "server", serial, out)


def make_certs(directory: Path | str) -> Certs:
    """Generate the whole set into `directory` (created if missing)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    (d / "req.cnf").write_text(REQ_CONFIG + CA_EXTENSIONS)
    ca_key = new_key(d / "ca.key")
    ca_cert = d / "ca.pem"
    openssl(
        "req", "-x509", "-new", "-config", d / "req.cnf", "-key", ca_key,
        "-subj", "/O=Selserve Tests/CN=Selserve Test CA", "-days", DAYS, "-sha256",
        "-extensions", "ca", "-out", ca_cert,
    )  # fmt: skip
    certs = Certs(
        directory=d,
        ca_cert=ca_cert,
        ca_key=ca_key,
        server_cert=d / "server.pem",
        server_key=new_key(d / "server.key"),
        server_chain=d / "server-chain.pem",
        client_cert=d / "client.pem",
        client_key=new_key(d / "client.key"),
        other_key=new_key(d / "other.key"),
        server_key_encrypted=d / "server-encrypted.key",
        password_file=d / "password.txt",
        rogue_client_cert=d / "rogue-client.pem",
    )
    certs.reissue_server_cert(certs.server_cert, SERVER_SERIAL)
    certs.sign(
        certs.client_key, "/O=Selserve Tests/CN=alice", CLIENT_EXTENSIONS, "client",
        CLIENT_SERIAL, certs.client_cert,
    )  # fmt: skip
    certs.server_chain.write_text(certs.server_cert.read_text() + ca_cert.read_text())
    certs.password_file.write_text(PASSWORD + "\n")
    openssl(
        "pkey", "-in", certs.server_key, "-aes256", "-passout", f"file:{certs.password_file}",
        "-out", certs.server_key_encrypted,
    )  # fmt: skip
    # A client certificate no CA of ours signed (self-signed, the unrelated key).
    openssl(
        "req", "-x509", "-new", "-config", d / "req.cnf", "-key", certs.other_key,
        "-subj", "/O=Selserve Tests/CN=mallory", "-days", DAYS, "-sha256",
        "-out", certs.rogue_client_cert,
    )  # fmt: skip
    return certs


def cert_der(path: Path | str) -> bytes:
    """The DER bytes of the (first) PEM certificate at `path`."""
    return ssl.PEM_cert_to_DER_cert(Path(path).read_text())


def cert_serial(path: Path | str) -> int:
    """The serial number of the PEM certificate at `path`."""
    out = openssl("x509", "-in", path, "-noout", "-serial").strip()
    assert out.startswith("serial="), out
    return int(out.removeprefix("serial="), 16)


# --------------------------------------------------------------------------- TLS servers


def client_context(certs: Certs, with_cert: bool = False) -> ssl.SSLContext:
    """A client context that trusts only our CA (and checks the name), with alice's
    certificate when `with_cert`."""
    context = ssl.create_default_context(cafile=str(certs.ca_cert))
    if with_cert:
        context.load_cert_chain(str(certs.client_cert), str(certs.client_key))
    return context


class TLSServer(ServerProcess):
    """A selserve process with --certfile/--keyfile and, by default, two listeners: the
    plain one ServerProcess binds first (`address`, `port`: read --stats-path over it) and
    `--bind https://127.0.0.1:TLS_PORT` (`tls_address`, `tls_port`, `tls_url`).
    With `all_tls`, no https:// bind is given: the first listener is TLS itself.

    `connect()` (hence `request`, `get`, `timed_get`, and so faults.helpers' Prober,
    Baseline and check_health) opens a fresh TLS connection to the TLS listener,
    verifying the certificate against our CA; `plain_connect()` and `plain_get()` talk
    plain HTTP to the plain listener."""

    def __init__(
        self,
        backend: str | None,
        certs: Certs,
        *extra_args: str,
        all_tls: bool = False,
        client_cert: bool = False,
        certfile: Path | None = None,
        keyfile: Path | None = None,
        **kwargs,
    ) -> None:
        self.certs = certs
        self.all_tls = all_tls
        tls_args = ["--certfile", str(certfile or certs.server_cert)]
        tls_args += ["--keyfile", str(keyfile or certs.server_key)]
        self.tls_port = free_port()
        if not all_tls:
            tls_args += ["--bind", f"https://127.0.0.1:{self.tls_port}"]
        super().__init__(backend, *tls_args, *extra_args, **kwargs)
        if all_tls:
            self.tls_port = self.port
        self.tls_address = ("127.0.0.1", self.tls_port)
        self.tls_url = f"https://127.0.0.1:{self.tls_port}"
        self.client_context = client_context(certs, with_cert=client_cert)

    def start(self) -> TLSServer:
        super().start()
        if not self.all_tls:  # the first listener answered; the TLS one must too
            try:
                outcome = poll_until(lambda: self.timed_get(timeout=2)[1] == 200, 5)
                assert outcome, self.diag(f"no answer over TLS on {self.tls_url}")
            except BaseException:
                self.stop()
                raise
        return self

    def tls_socket(self, context: ssl.SSLContext | None = None, timeout: float = 5.0):
        """A TLS connection to the TLS listener, handshake done."""
        raw = socket.create_connection(self.tls_address, timeout=timeout)
        try:
            return (context or self.client_context).wrap_socket(raw, server_hostname="127.0.0.1")
        except BaseException:
            raw.close()
            raise

    def connect(self, timeout: float = 5.0) -> RawClient:
        return RawClient(self.tls_socket(timeout=timeout), timeout)

    def plain_connect(self, timeout: float = 5.0) -> RawClient:
        assert not self.all_tls, "an all-TLS server has no plain listener"
        return RawClient.connect(self.address, self.family, timeout)

    def plain_get(self, path: str = "/", timeout: float = 5.0) -> Response:
        with self.plain_connect(timeout) as client:
            client.send(get_request(path))
            return client.read_final_response()

    def stats(self, path: str = "/_stats") -> dict:
        """The --stats-path JSON, read over the plain listener."""
        response = self.plain_get(path)
        assert response.status == 200, self.diag(f"GET {path}: {response!r}")
        return json.loads(response.body)


def close_reasons(stats: dict) -> dict[str, int]:
    """Why connections closed, by reason, from a --stats-path answer: its `closed` object
    where there is one, else `events` (where selserve's stats have always folded the
    close reasons in, beside the other events)."""
    if "closed" in stats:
        return stats["closed"]
    return stats["events"]
