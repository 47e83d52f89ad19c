"""What the black-box server tests share: start `python -m selserve` in a subprocess
(`ServerProcess`), talk to it over real sockets (`RawClient`, `Response`, the request
builders) and watch its fds, CPU and memory with psutil. Importable by any test module,
fixture file or helper (`from helpers import ServerProcess`); tests/conftest.py builds its
fixtures from it.

Nothing here imports the server's internals except `selserve.backends.available()`, which
decides which backends every server test is parametrised over, and nothing here is a
fixture or a pytest hook.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from selserve.backends import available  # noqa: E402

BACKENDS: list[str] = list(available())

READY_TIMEOUT = 10.0  # seconds to wait for the listener to accept connections
STOP_TIMEOUT = 5.0  # SIGTERM must end the server within this long
STDERR_TAIL_LINES = 40

_started: list[ServerProcess] = []


# --------------------------------------------------------------------------- helpers


def free_port(host: str = "127.0.0.1", family: int = socket.AF_INET) -> int:
    """A port nothing listens on right now (bind to port 0 and let the kernel choose)."""
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def raise_nofile_limit() -> tuple[int, int]:
    """Raise this process's RLIMIT_NOFILE soft limit to the hard limit; return the old pair."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return soft, hard


def poll_until(predicate, timeout: float, interval: float = 0.05):
    """Call `predicate` until it returns a truthy value or `timeout` passes; return the last
    value. Bounded in time; the interval only paces the polling."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


# --------------------------------------------------------------------------- server process


class ServerProcess:
    """One `python -m selserve selserve.demo:app` subprocess.

    Started in its own session, stderr to a temp file (a PIPE could fill up and block the
    server), ready once a TCP (or Unix) connect succeeds, stopped with SIGTERM and, if that
    fails, SIGKILL -- always by its own pid.
    """

    def __init__(
        self,
        backend: str | None,
        *extra_args: str,
        host: str = "127.0.0.1",
        unix_path: str | None = None,
        app: str | None = "selserve.demo:app",
    ) -> None:
        self.backend = backend
        self.extra_args = list(extra_args)
        self.unix_path = unix_path
        self.app = app
        if unix_path is not None:
            self.family = socket.AF_UNIX
            self.host = None
            self.port = None
            self.address: object = unix_path
            self.bind = f"unix:{unix_path}"
            self.url = f"unix:{unix_path}"
        else:
            self.family = socket.AF_INET6 if ":" in host else socket.AF_INET
            self.host = host
            self.port = free_port(host, self.family)
            self.address = (host, self.port)
            shown = f"[{host}]" if self.family == socket.AF_INET6 else host
            self.bind = f"{shown}:{self.port}"
            self.url = f"http://{shown}:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.returncode: int | None = None
        self.killed = False
        self._stderr = tempfile.NamedTemporaryFile(  # noqa: SIM115 - lives as long as we do
            prefix="selserve-stderr-", suffix=".log", delete=False
        )
        self._stderr_final: str | None = None

    # -- life cycle

    @property
    def argv(self) -> list[str]:
        argv = [sys.executable, "-m", "selserve"]
        if self.app:
            argv.append(self.app)
        if self.backend:
            argv += ["--backend", self.backend]
        argv += ["--bind", self.bind, *self.extra_args]
        return argv

    def start(self) -> ServerProcess:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        env["PYTHONUNBUFFERED"] = "1"
        self.proc = subprocess.Popen(
            self.argv,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self._stderr,
            start_new_session=True,
        )
        _started.append(self)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        last_error: OSError | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"server exited with status {self.proc.returncode} before accepting "
                    f"connections: {' '.join(self.argv)}\n{self.stderr_tail()}"
                )
            try:
                with socket.socket(self.family, socket.SOCK_STREAM) as probe:
                    probe.settimeout(1.0)
                    probe.connect(self.address)
                return
            except OSError as exc:
                last_error = exc
                time.sleep(0.05)
        raise AssertionError(
            f"server did not accept connections within {READY_TIMEOUT} s ({last_error!r}): "
            f"{' '.join(self.argv)}\n{self.stderr_tail()}"
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM, wait up to `timeout`, then SIGKILL. Returns the exit status. Idempotent."""
        if self.proc is None:
            self._release_stderr()
            return None
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.killed = True
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.returncode = self.proc.returncode
        if self in _started:
            _started.remove(self)
        self._release_stderr()
        return self.returncode

    def _release_stderr(self) -> None:
        """Keep the log in memory (reports read it after teardown), delete the temp file."""
        if self._stderr_final is None:
            self._stderr_final = self._read_stderr_file()
            self._stderr.close()
            with contextlib.suppress(OSError):
                os.unlink(self._stderr.name)

    # -- observation

    def _read_stderr_file(self) -> str:
        try:
            return Path(self._stderr.name).read_text(errors="replace")
        except OSError as exc:
            return f"<stderr unreadable: {exc}>"

    def stderr_text(self) -> str:
        if self._stderr_final is not None:
            return self._stderr_final
        return self._read_stderr_file()

    def stderr_tail(self, lines: int = STDERR_TAIL_LINES) -> str:
        text = self.stderr_text().splitlines()[-lines:]
        if self.proc is None:
            status = "never started"
        elif self.alive():
            status = f"pid {self.pid}, running"
        else:
            status = f"pid {self.pid}, exited {self.proc.returncode}"
        return f"--- server stderr tail ({self.backend}, {status}) ---\n" + (
            "\n".join(text) or "<empty>"
        )

    def diag(self, message: str = "") -> str:
        return f"{message}\n{self.stderr_tail()}"

    def _process(self) -> psutil.Process:
        return psutil.Process(self.pid)

    def num_fds(self) -> int:
        return self._process().num_fds()

    def cpu_seconds(self) -> float:
        times = self._process().cpu_times()
        return times.user + times.system

    def rss(self) -> int:
        return self._process().memory_info().rss

    def settled_fds(self, timeout: float = 3.0) -> int:
        """The fd count once it stops changing (three equal readings 0.1 s apart)."""
        readings = [self.num_fds()]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            time.sleep(0.1)
            readings.append(self.num_fds())
            if len(readings) >= 3 and readings[-1] == readings[-2] == readings[-3]:
                break
        return readings[-1]

    def wait_fds_at_most(self, limit: int, timeout: float = 5.0) -> int:
        """Poll until the fd count is <= limit (or timeout); return the last reading."""
        last = self.num_fds()
        deadline = time.monotonic() + timeout
        while last > limit and time.monotonic() < deadline:
            time.sleep(0.1)
            last = self.num_fds()
        return last

    def cpu_used_over(self, window: float) -> float:
        """CPU seconds (user + system) the server used during the next `window` seconds."""
        before = self.cpu_seconds()
        time.sleep(window)  # a measurement window, not a wait for readiness
        return self.cpu_seconds() - before

    # -- talking to it

    def connect(self, timeout: float = 5.0) -> RawClient:
        return RawClient.connect(self.address, self.family, timeout)

    def request(self, data: bytes, method: str = "GET", timeout: float = 5.0) -> Response:
        """One request on a fresh connection; returns the (first non-1xx) response."""
        with self.connect(timeout) as client:
            client.send(data)
            return client.read_final_response(method)

    def get(self, path: str = "/", timeout: float = 5.0) -> Response:
        return self.request(get_request(path), timeout=timeout)

    def timed_get(self, path: str = "/", timeout: float = 5.0) -> tuple[float, int | str]:
        """(seconds, status) for GET on a fresh connection; status is an error text on failure."""
        start = time.monotonic()
        try:
            response = self.get(path, timeout)
            outcome: int | str = response.status
        except (OSError, AssertionError) as exc:
            outcome = f"{type(exc).__name__}: {exc}"[:200]
        return time.monotonic() - start, outcome


def get_request(path: str = "/", host: str = "test", extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode("latin-1")


def post_request(path: str, body: bytes, method: str = "POST", extra: str = "") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
    return head.encode("latin-1") + body


def chunked_body(pieces: list[bytes], trailer: bytes = b"", extension: bytes = b"") -> bytes:
    out = bytearray()
    for piece in pieces:
        out += b"%x%s\r\n%s\r\n" % (len(piece), extension, piece)
    out += b"0\r\n" + trailer + b"\r\n"
    return bytes(out)


# --------------------------------------------------------------------------- raw HTTP client


@dataclass
class Response:
    version: str
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes = b""
    chunk_sizes: list[int] | None = None  # data chunk sizes when the body was chunked
    trailers: list[tuple[str, str]] = field(default_factory=list)
    raw_head: bytes = b""

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k.lower() == name.lower()]
        return ", ".join(values) if values else None

    def header_count(self, name: str) -> int:
        return sum(1 for k, _ in self.headers if k.lower() == name.lower())

    def has_token(self, name: str, token: str) -> bool:
        value = self.header(name) or ""
        return token.lower() in [t.strip().lower() for t in value.split(",")]

    def __repr__(self) -> str:
        body = self.body[:80]
        return (
            f"<Response {self.version} {self.status} {self.reason!r} headers={self.headers} "
            f"body[{len(self.body)}]={body!r}>"
        )


class RawClient:
    """A blocking socket plus a read buffer: send raw bytes, read whole responses (framed by
    Content-Length, chunked or connection close), tell EOF and RST apart. Every read is
    bounded by the socket timeout."""

    MAX_HEAD = 1 << 20

    def __init__(self, sock: socket.socket, timeout: float = 5.0) -> None:
        self.sock = sock
        self.timeout = timeout
        sock.settimeout(timeout)
        self.buf = bytearray()
        self.eof = False

    @classmethod
    def connect(cls, address, family: int = socket.AF_INET, timeout: float = 5.0) -> RawClient:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(address)
        except BaseException:
            sock.close()
            raise
        return cls(sock, timeout)

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def reset(self) -> None:
        """Close with SO_LINGER 0 s: the kernel sends RST instead of FIN."""
        set_linger_rst(self.sock)
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_ignoring_reset(self, data: bytes) -> None:
        """Send, tolerating the server closing early (it may answer before reading it all)."""
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.sock.sendall(data)

    # -- low level reads

    def _fill(self, what: str) -> bool:
        """Read more into the buffer; False on EOF. A timeout or RST is a test failure."""
        if self.eof:
            return False
        try:
            data = self.sock.recv(1 << 18)
        except TimeoutError:
            raise AssertionError(
                f"timed out after {self.timeout} s waiting for {what}; "
                f"buffered {len(self.buf)} bytes: {bytes(self.buf[:200])!r}"
            ) from None
        except ConnectionResetError:
            raise AssertionError(
                f"connection reset by the server while waiting for {what}; "
                f"buffered {len(self.buf)} bytes: {bytes(self.buf[:200])!r}"
            ) from None
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def _take(self, n: int) -> bytes:
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def _read_line(self, what: str) -> bytes:
        while True:
            end = self.buf.find(b"\r\n")
            if end >= 0:
                return self._take(end + 2)[:-2]
            if len(self.buf) > self.MAX_HEAD:
                raise AssertionError(f"no CRLF within {self.MAX_HEAD} bytes reading {what}")
            if not self._fill(what):
                raise AssertionError(
                    f"connection closed while reading {what}; got {bytes(self.buf[:200])!r}"
                )

    def read_exact(self, n: int, what: str = "body") -> bytes:
        while len(self.buf) < n:
            if not self._fill(what):
                raise AssertionError(
                    f"connection closed after {len(self.buf)} of {n} bytes of {what}"
                )
        return self._take(n)

    def read_until_close(self, what: str = "close-delimited body") -> bytes:
        while self._fill(what):
            pass
        return self._take(len(self.buf))

    # -- responses

    def read_head(self) -> Response:
        while b"\r\n\r\n" not in self.buf:
            if len(self.buf) > self.MAX_HEAD:
                raise AssertionError(f"response head longer than {self.MAX_HEAD} bytes")
            if not self._fill("response head"):
                raise AssertionError(
                    "connection closed before a complete response head; "
                    f"got {bytes(self.buf[:300])!r}"
                )
        end = self.buf.index(b"\r\n\r\n")
        raw = self._take(end + 4)
        lines = raw[:-4].split(b"\r\n")
        parts = lines[0].decode("latin-1").split(" ", 2)
        assert len(parts) >= 2 and parts[0].startswith("HTTP/"), f"bad status line {lines[0]!r}"
        assert parts[1].isdigit() and len(parts[1]) == 3, f"bad status code {lines[0]!r}"
        headers = []
        for line in lines[1:]:
            name, sep, value = line.decode("latin-1").partition(":")
            assert sep and name and name == name.strip(), f"bad header line {line!r}"
            headers.append((name, value.strip()))
        return Response(
            version=parts[0],
            status=int(parts[1]),
            reason=parts[2] if len(parts) > 2 else "",
            headers=headers,
            raw_head=raw,
        )

    def read_response(self, method: str = "GET") -> Response:
        """Read one response, including interim 1xx ones (callers loop past those)."""
        response = self.read_head()
        status = response.status
        if method == "HEAD" or 100 <= status < 200 or status in (204, 304):
            return response
        te = response.header("Transfer-Encoding")
        if te is not None:
            codings = [c.strip().lower() for c in te.split(",")]
            if codings[-1] == "chunked":
                self._read_chunked(response)
            else:
                response.body = self.read_until_close()
            return response
        length = response.header("Content-Length")
        if length is not None:
            assert length.isdigit(), f"bad Content-Length {length!r} in {response!r}"
            response.body = self.read_exact(int(length))
        else:
            response.body = self.read_until_close()
        return response

    def read_final_response(self, method: str = "GET") -> Response:
        for _ in range(10):
            response = self.read_response(method)
            if not 100 <= response.status < 200:
                return response
        raise AssertionError("more than 10 interim responses")

    def _read_chunked(self, response: Response) -> None:
        body = bytearray()
        sizes = []
        while True:
            line = self._read_line("chunk size line")
            size_text = line.split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise AssertionError(f"bad chunk size line {line!r}") from None
            if size == 0:
                break
            sizes.append(size)
            body += self.read_exact(size, "chunk data")
            crlf = self.read_exact(2, "chunk CRLF")
            assert crlf == b"\r\n", f"chunk data not followed by CRLF: {crlf!r}"
        while True:
            line = self._read_line("trailer")
            if not line:
                break
            name, _, value = line.decode("latin-1").partition(":")
            response.trailers.append((name, value.strip()))
        response.body = bytes(body)
        response.chunk_sizes = sizes

    # -- connection state

    def wait_closed(self, timeout: float = 2.0) -> tuple[str, bytes]:
        """Wait for the server to close: ('eof' | 'reset' | 'open', bytes received meanwhile).
        'open' means nothing ended the connection within `timeout`."""
        extra = bytearray(self._take(len(self.buf)))
        if self.eof:
            return "eof", bytes(extra)
        deadline = time.monotonic() + timeout
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return "open", bytes(extra)
                self.sock.settimeout(remaining)
                try:
                    data = self.sock.recv(65536)
                except TimeoutError:
                    return "open", bytes(extra)
                except ConnectionResetError:
                    return "reset", bytes(extra)
                if not data:
                    self.eof = True
                    return "eof", bytes(extra)
                extra += data
        finally:
            self.sock.settimeout(self.timeout)

    def received_within(self, timeout: float) -> bytes:
        """Whatever arrives within `timeout` (b'' if nothing); EOF/RST also end the wait."""
        if self.buf:
            return self._take(len(self.buf))
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(65536)
        except (TimeoutError, ConnectionResetError):
            return b""
        finally:
            self.sock.settimeout(self.timeout)


def set_linger_rst(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
