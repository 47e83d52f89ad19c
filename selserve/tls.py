"""TLS: the server's certificate context, and TLS as a transport.

`ServerTLS` holds the `ssl.SSLContext` built from the --certfile family of
settings (TLS 1.2 at least, ALPN `http/1.1`, no renegotiation, session tickets
on) and builds it again on SIGHUP; a context that cannot be built keeps the
old one.  `TLSTransport` gives a connection the transport verbs over an
`ssl.SSLSocket` (transport.py), so that the connection and the HTTP exchange
above it do not know TLS is there:

- OpenSSL's "want read" and "want write" are the non-blocking socket's
  BlockingIOError.  A read that needs to write first (a TLS 1.3 key update
  answered into a full socket) or a write that needs to read first is noted
  (`read_wants_write`, `write_wants_read`) for the connection to watch the
  other direction (tls_connection.py).
- A write is at most one TLS record (16 KiB), and gathered pieces are joined
  up to that size, since SSL sockets have no sendmsg.  OpenSSL must retry a
  write that wanted more room with the same bytes; the write buffer only ever
  offers the same bytes again, or more of them.
- No `sendfile`: the write buffer reads files in record-sized blocks instead
  (`write_size`).
- Closing sends TLS's close_notify first, once, without waiting for the
  client's.
"""

from __future__ import annotations

import logging
import socket
import ssl

log = logging.getLogger("selserve")

# The largest plaintext one TLS record carries (RFC 8446 §5.1): the size of a write.
RECORD_SIZE = 16 * 1024

VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
CLIENT_CERT_MODES = {
    "none": ssl.CERT_NONE,
    "optional": ssl.CERT_OPTIONAL,
    "required": ssl.CERT_REQUIRED,
}

# Short names of the attributes a subject usually has, as RFC 4514 §3 writes them.
_ATTRIBUTE_NAMES = {
    "commonName": "CN",
    "localityName": "L",
    "stateOrProvinceName": "ST",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "countryName": "C",
    "streetAddress": "STREET",
    "domainComponent": "DC",
    "userId": "UID",
}


class TLSSettingsError(ValueError):
    """TLS settings that cannot make a context: a missing file, a key that does not
    match its certificate, an unknown cipher string."""


def build_context(config) -> ssl.SSLContext:
    """A server context from `config`'s TLS settings; raises TLSSettingsError with
    one line that names what is wrong."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = VERSIONS[config.min_tls]
    # Renegotiation is an old denial-of-service lever; compression leaks (CRIME).
    context.options |= ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_COMPRESSION
    context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    password = _read_password(config.keyfile_password_file)
    for flag, path in (("--certfile", config.certfile), ("--keyfile", config.keyfile)):
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise TLSSettingsError(f"{flag} {path}: {_why(exc)}") from None
    try:
        # (never OpenSSL's own prompt on the terminal: no password file, no password)
        context.load_cert_chain(config.certfile, config.keyfile, password=password or _no_password)
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc):
            raise TLSSettingsError(
                f"--keyfile {config.keyfile} is not the key of --certfile {config.certfile}"
            ) from None
        raise TLSSettingsError(
            f"--certfile {config.certfile} and --keyfile {config.keyfile} must be a PEM "
            "certificate (chain) and its PEM private key (with --keyfile-password-file "
            "if the key is encrypted)"
        ) from None
    except OSError as exc:
        raise TLSSettingsError(f"--certfile/--keyfile: {_why(exc)}") from None
    if config.ssl_ciphers:
        try:
            context.set_ciphers(config.ssl_ciphers)
        except ssl.SSLError:
            raise TLSSettingsError(
                f"--ssl-ciphers {config.ssl_ciphers!r} selects no cipher OpenSSL knows "
                "(an OpenSSL cipher string, e.g. ECDHE+AESGCM)"
            ) from None
    context.set_alpn_protocols(["http/1.1"])  # never h2: this server speaks HTTP/1.1
    if config.ca_certs:
        try:
            context.load_verify_locations(config.ca_certs)
        except (OSError, ssl.SSLError) as exc:
            raise TLSSettingsError(f"--ca-certs {config.ca_certs}: {_why(exc)}") from None
    context.verify_mode = CLIENT_CERT_MODES[config.client_cert]
    return context


def _no_password() -> bytes:
    return b""


def _read_password(path: str) -> bytes | None:
    if not path:
        return None
    try:
        with open(path, "rb") as file:
            return file.read().rstrip(b"\r\n")
    except OSError as exc:
        raise TLSSettingsError(f"--keyfile-password-file {path}: {_why(exc)}") from None


def _why(exc: OSError) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.reason or str(exc)
    return exc.strerror or str(exc)


class ServerTLS:
    """The server's TLS context: `context` for new connections, rebuilt by `reload()`.
    Connections keep the context they began with."""

    __slots__ = ("config", "context", "handshake_timeout", "request_class")

    def __init__(self, config, request_class: type) -> None:
        self.config = config
        self.context = getattr(config, "_tls_context", None) or build_context(config)
        self.handshake_timeout = config.handshake_timeout or config.header_timeout
        self.request_class = tls_request_class(request_class)  # requests on TLS connections

    def reload(self) -> bool:
        """Read the certificate and key again (SIGHUP); on failure keep the old ones."""
        try:
            self.context = build_context(self.config)
        except TLSSettingsError as exc:
            log.error("TLS reload failed, still serving the old certificate: %s", exc)
            return False
        log.info("TLS certificate and key reloaded from %s", self.config.certfile)
        return True

    def wrap(self, sock: socket.socket) -> TLSTransport:
        """An accepted socket as a TLS transport, its handshake not yet begun."""
        return TLSTransport(
            self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        )


def tls_request_class(base: type) -> type:
    """The requests of TLS connections: `scheme` is https (unless a trusted proxy said
    otherwise, --proxy-headers), and `client_cert` is the verified client
    certificate's subject (set per connection, see `with_client_cert`)."""
    if "scheme" not in getattr(base, "__slots__", ()):

        class TLSRequest(base):
            __slots__ = ()
            scheme = "https"

        return TLSRequest

    class ForwardedTLSRequest(base):  # (its arrived() sets scheme: None when no proxy said)
        __slots__ = ()

        def arrived(self, body=b"", peer=None, local=None):
            base.arrived(self, body, peer, local)
            if self.scheme is None:
                self.scheme = "https"
            return self

    return ForwardedTLSRequest


def with_client_cert(request_class: type, subject: str) -> type:
    """`request_class` for one connection whose client presented certificate `subject`
    (a class per such connection: nothing is paid per request, or by the others)."""
    return type(request_class.__name__, (request_class,), {"__slots__": (), "client_cert": subject})


def subject_name(certificate: dict) -> str | None:
    """A peer certificate's subject (as `SSLSocket.getpeercert()` gives it) as an RFC 4514
    string, most specific first: 'CN=alice,O=Example'."""
    subject = certificate.get("subject") if certificate else None
    if not subject:
        return None
    parts = []
    for rdn in reversed(subject):
        parts.append(
            "+".join(f"{_ATTRIBUTE_NAMES.get(key, key)}={_escape_dn(value)}" for key, value in rdn)
        )
    return ",".join(parts)


def _escape_dn(value: str) -> str:
    """An attribute value escaped as RFC 4514 §2.4 asks."""
    out = []
    for index, char in enumerate(value):
        if char in ',+"\\<>;' or (char == "#" and index == 0) or char == "\0":
            out.append("\\" + char if char != "\0" else "\\00")
        elif char == " " and (index == 0 or index == len(value) - 1):
            out.append("\\ ")
        else:
            out.append(char)
    return "".join(out)


class TLSTransport:
    """An `ssl.SSLSocket` with the verbs of a plain transport (see the module docstring)."""

    __slots__ = ("sock", "read_wants_write", "write_wants_read", "_closed")

    write_size = RECORD_SIZE  # what the write buffer reads from a file at once

    def __init__(self, sock: ssl.SSLSocket) -> None:
        self.sock = sock
        self.read_wants_write = False
        self.write_wants_read = False
        self._closed = False

    def handshake(self) -> str | None:
        """One step of the handshake: None once it is done, else what it waits for,
        "read" or "write"; raises SSLError (a failed handshake) or OSError."""
        try:
            self.sock.do_handshake()
        except ssl.SSLWantReadError:
            return "read"
        except ssl.SSLWantWriteError:
            return "write"
        return None

    def send_plain(self, data: bytes) -> None:
        """Best effort, bytes as they are, with no TLS around them (an answer to a
        client that spoke plain HTTP to us); the connection is closed next."""
        self._closed = True  # (no close_notify after plain text)
        try:
            socket.socket.send(self.sock, data)
        except OSError:
            pass

    def recv(self, size: int) -> bytes:
        sock = self.sock
        try:
            data = sock.recv(size)
        except ssl.SSLWantReadError:
            raise BlockingIOError from None
        except ssl.SSLWantWriteError:
            self.read_wants_write = True
            raise BlockingIOError from None
        except ssl.SSLZeroReturnError:  # the client's close_notify: a clean end
            return b""
        # Decrypted bytes OpenSSL holds are invisible to the loop: take them now.
        if data and sock.pending() and len(data) < size:
            pieces = [data]
            total = len(data)
            while total < size and sock.pending():
                more = sock.recv(min(size - total, sock.pending()))
                if not more:
                    break
                pieces.append(more)
                total += len(more)
            data = b"".join(pieces)
        return data

    def send(self, data) -> int:
        if len(data) > RECORD_SIZE:
            data = memoryview(data)[:RECORD_SIZE]
        try:
            return self.sock.send(data)
        except ssl.SSLWantWriteError:
            raise BlockingIOError from None
        except ssl.SSLWantReadError:
            self.write_wants_read = True
            raise BlockingIOError from None

    def sendmsg(self, buffers, ancdata=(), flags: int = 0, /) -> int:
        joined = bytearray()
        for piece in buffers:
            room = RECORD_SIZE - len(joined)
            if room <= 0:
                break
            joined += piece if len(piece) <= room else memoryview(piece)[:room]
        return self.send(joined)

    def shutdown(self, how: int) -> None:
        """No more output (lingering): close_notify, then the socket's write side."""
        self._notify_close()
        socket.socket.shutdown(self.sock, how)  # (SSLSocket.shutdown drops its TLS state)

    def close(self) -> None:
        self._notify_close()
        self.sock.close()

    def _notify_close(self) -> None:
        if self._closed:
            return
        self._closed = True
        sslobj = self.sock._sslobj  # (SSLSocket.unwrap() would forget it on success)
        if sslobj is None:
            return
        try:
            sslobj.shutdown()  # sends close_notify; not waiting for the client's
        except (OSError, ValueError):
            pass

    def fileno(self) -> int:
        return self.sock.fileno()

    def getpeercert(self) -> dict:
        return self.sock.getpeercert()
