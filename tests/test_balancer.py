"""selserve behind a real balancer: HAProxy with the PROXY protocol (v2) and health
checks in front of two instances (deploy/haproxy.cfg, as the docs give it), and nginx
as a reverse proxy (deploy/nginx*.conf).  The balancers are started by the tests and
stopped by their PID; every address is loopback."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading

import pytest
from helpers import ROOT, ServerProcess, free_port, get_request, poll_until
from tls_certs import make_certs

pytestmark = pytest.mark.timeout(120)

HAPROXY = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/sbin")
NGINX = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin")
WRK = shutil.which("wrk")
needs_haproxy = pytest.mark.skipif(HAPROXY is None, reason="haproxy missing (Debian: haproxy)")
needs_nginx = pytest.mark.skipif(NGINX is None, reason="nginx missing (Debian: nginx-light)")
needs_wrk = pytest.mark.skipif(WRK is None, reason="wrk missing (Debian: wrk)")

WHO_APP = """
import os
from selserve.app import Response, native

@native
def app(request):
    host, port = request.peer if isinstance(request.peer, tuple) else (request.peer, 0)
    return Response(200, [], f"{os.getpid()} {host} {port} {request.scheme or 'http'}".encode())
"""

WHO_WSGI = """
def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    seen = " ".join(environ.get(k, "-") for k in (
        "REMOTE_ADDR", "wsgi.url_scheme", "HTTP_HOST", "HTTP_X_FORWARDED_FOR"))
    return [seen.encode()]
"""


class Balancer:
    """A balancer process in the foreground, reaped whatever happens; what it prints
    (HAProxy's log) goes to a file, for the failure messages."""

    def __init__(self, argv: list[str], env: dict | None = None) -> None:
        self.log_path = tempfile.mktemp(prefix="balancer-", suffix=".log")
        self.output = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=self.output, stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})}, start_new_session=True,
        )  # fmt: skip

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.output.close()
        os.unlink(self.log_path)

    def failures(self) -> str:
        """HAProxy's log lines but those of requests answered 200 in the usual way."""
        with open(self.log_path, errors="replace") as log:
            lines = log.readlines()
        odd = [line for line in lines if not GOOD_REQUEST.search(line)]
        return f"\n{len(lines)} lines in HAProxy's log; these are not plain 200s:\n" + "".join(
            odd[:50]
        )


# In HAProxy's httplog format: the status, the bytes, two cookie fields and the
# termination state ("----": nothing went wrong).
GOOD_REQUEST = re.compile(r" 200 \d+ - - ---- ")


@pytest.fixture
def balancers():
    started: list[Balancer] = []
    yield started
    for balancer in started:
        balancer.stop()


@pytest.fixture
def who_app(tmp_path):
    (tmp_path / "whoapp.py").write_text(WHO_APP)
    (tmp_path / "whowsgi.py").write_text(WHO_WSGI)
    return str(tmp_path)


# The client the balancer-facing tests play: another loopback address than the
# balancer's 127.0.0.1 (which --forwarded-allow-ips trusts by default), as a real
# client would be.
CLIENT = "127.0.0.5"


def ask(
    port: int, path: str = "/", timeout: float = 5.0, extra: str = ""
) -> tuple[int, bytes, int]:
    """(status, body, our own port) of one request from CLIENT on a fresh connection."""
    with socket.create_connection(
        ("127.0.0.1", port), timeout=timeout, source_address=(CLIENT, 0)
    ) as sock:
        sock.sendall(get_request(path, extra=extra + "Connection: close\r\n"))
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        own_port = sock.getsockname()[1]
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/") else 0
    return status, body, own_port


def haproxy(
    balancers, front: int, apps: list[ServerProcess], config: str = "haproxy.cfg", **more: str
) -> Balancer:
    env = {"FRONT_PORT": str(front), "APP1_PORT": str(apps[0].port), "APP2_PORT": str(apps[1].port)}
    balancer = Balancer([HAPROXY, "-db", "-f", str(ROOT / "deploy" / config)], {**env, **more})
    balancers.append(balancer)
    # Both instances are in rotation once both have answered through it.
    pids = set()

    def both_up():
        try:
            status, body, _ = ask(front, timeout=2)
        except OSError:
            return False
        if status == 200:
            pids.add(body.split()[0])
        return len(pids) == 2

    assert poll_until(both_up, 20), "HAProxy never had both instances in rotation"
    return balancer


def instances(server_factory, backend: str, who_app: str, *extra: str) -> list[ServerProcess]:
    return [
        server_factory(
            backend,
            "--proxy-protocol",
            "--health-path",
            "/healthz",
            "--chdir",
            who_app,
            *extra,
            app="whoapp:app",
        )  # fmt: skip
        for _ in range(2)
    ]


@pytest.fixture(params=["epoll", "poll"])
def backend(request):
    return request.param


@needs_haproxy
@pytest.mark.parametrize("workers", ["1", "2"])
def test_haproxy_spreads_requests_and_the_app_and_log_see_the_real_client(
    backend, workers, server_factory, who_app, balancers, tmp_path
):
    logs = [tmp_path / "app1.log", tmp_path / "app2.log"]
    apps = [
        server_factory(
            backend, "--proxy-protocol", "--health-path", "/healthz", "--chdir", who_app,
            "--workers", workers, "--access-log", str(log), "--access-log-format", "%(h)s %(U)s",
            app="whoapp:app",
        )
        for log in logs
    ]  # fmt: skip
    front = free_port()
    haproxy(balancers, front, apps)
    answered_by = set()
    for _ in range(20):
        status, body, own_port = ask(front, "/counted")
        pid, host, port, _ = body.split()
        assert status == 200 and (host, int(port)) == (CLIENT.encode(), own_port), body
        answered_by.add(pid)
    assert len(answered_by) >= 2  # round robin over both instances (and their workers)

    def logged() -> list[str]:
        lines = [line for log in logs if log.exists() for line in log.read_text().splitlines()]
        return [line for line in lines if line.endswith(" /counted")]

    # Health checks come with a LOCAL header: logged with HAProxy's own address.
    assert poll_until(lambda: len(logged()) == 20, 5), logged()
    assert all(line == f"{CLIENT} /counted" for line in logged()), logged()


@needs_haproxy
def test_haproxy_speaks_tls_to_the_instances_after_the_proxy_header(
    backend, server_factory, who_app, balancers, tmp_path
):
    """deploy/haproxy-tls.cfg: HAProxy verifies each instance's certificate and sends
    the PROXY v2 header before the TLS handshake; the app sees the real client, over
    https, and the health checks (TLS too) keep both instances in rotation."""
    certs = make_certs(tmp_path / "certs")
    tls = ("--certfile", str(certs.server_cert), "--keyfile", str(certs.server_key))
    apps = instances(server_factory, backend, who_app, *tls)
    front = free_port()
    haproxy(balancers, front, apps, "haproxy-tls.cfg", APP_CA=str(certs.ca_cert))
    answered_by = set()
    for _ in range(10):
        status, body, own_port = ask(front)
        pid, host, port, scheme = body.split()
        assert status == 200 and (host, int(port)) == (CLIENT.encode(), own_port), body
        assert scheme == b"https", body
        answered_by.add(pid)
    assert len(answered_by) == 2


@needs_haproxy
@needs_wrk
@pytest.mark.parametrize("drain", ["0", "2"])
@pytest.mark.parametrize("workers", ["1", "2"])
def test_stopping_an_instance_under_load_fails_no_request(
    backend, workers, drain, server_factory, who_app, balancers
):
    apps = instances(server_factory, backend, who_app, "--workers", workers, "--drain-delay", drain)
    front = free_port()
    balancer = haproxy(balancers, front, apps)
    wrk = subprocess.Popen(
        [WRK, "-t1", "-c20", "-d6s", "--timeout", "5s", "--latency", f"http://127.0.0.1:{front}/"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        threading.Timer(1.5, os.kill, (apps[0].pid, signal.SIGTERM)).start()
        out, _ = wrk.communicate(timeout=60)
    finally:
        if wrk.poll() is None:
            wrk.kill()
            wrk.wait()
    assert apps[0].proc.wait(15) == 0, apps[0].diag()
    requests = int(re.search(r"(\d+) requests in", out)[1])
    failed = "Socket errors" in out or "Non-2xx" in out
    assert requests > 1000 and not failed, out + balancer.failures()
    assert ask(front)[0] == 200  # the other instance serves on


# -- forwarded headers --------------------------------------------------------------


def wsgi_instance(server_factory, backend: str, who_app: str, *extra: str) -> ServerProcess:
    return server_factory(backend, "--chdir", who_app, *extra, app="whowsgi:app")


def test_a_trusted_proxys_headers_name_the_client_scheme_and_host(
    backend, server_factory, who_app, tmp_path
):
    log = tmp_path / "access.log"
    proc = wsgi_instance(
        server_factory, backend, who_app, "--proxy-headers", "--access-log", str(log)
    )
    forwarded = (
        "X-Forwarded-For: 198.51.100.9, 203.0.113.5\r\n"
        "X-Forwarded-Proto: https\r\nX-Forwarded-Host: shop.example\r\n"
    )
    answer = proc.request(get_request("/", extra=forwarded))
    remote, scheme, host, *forwarded_for = answer.body.split()
    assert (remote, scheme, host) == (b"203.0.113.5", b"https", b"shop.example"), answer.body
    assert forwarded_for == [b"198.51.100.9,", b"203.0.113.5"]  # (the app may read it too)
    assert poll_until(lambda: log.exists() and log.read_text().startswith("203.0.113.5 "), 3)


def test_an_untrusted_peers_proxy_headers_are_ignored_and_removed(backend, server_factory, who_app):
    proc = wsgi_instance(
        server_factory, backend, who_app, "--proxy-headers", "--forwarded-allow-ips", "10.0.0.0/8"
    )
    spoof = "X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Proto: https\r\nForwarded: for=6.6.6.6\r\n"
    answer = proc.request(get_request("/", extra=spoof))
    assert answer.body.split() == [b"127.0.0.1", b"http", b"test", b"-"], answer.body


def test_without_proxy_headers_the_peer_is_the_client(backend, server_factory, who_app):
    proc = wsgi_instance(server_factory, backend, who_app)
    answer = proc.request(get_request("/", extra="X-Forwarded-For: 6.6.6.6\r\n"))
    assert answer.body.split()[:2] == [b"127.0.0.1", b"http"], answer.body


def nginx(balancers, tmp_path, config: str, front: int, apps: list[ServerProcess]) -> Balancer:
    run_dir = tmp_path / "nginx"
    run_dir.mkdir()
    text = (ROOT / "deploy" / config).read_text()
    for token, value in {
        "@RUN_DIR@": str(run_dir),
        "@FRONT_PORT@": str(front),
        "@APP1_PORT@": str(apps[0].port),
        "@APP2_PORT@": str(apps[1].port),
    }.items():
        text = text.replace(token, value)
    (run_dir / "nginx.conf").write_text(text)
    (run_dir / "modules.conf").write_text(f"load_module {NGINX_STREAM};\n" if NGINX_STREAM else "")
    balancer = Balancer([NGINX, "-c", str(run_dir / "nginx.conf"), "-e", str(run_dir / "e.log")])
    balancers.append(balancer)
    assert poll_until(lambda: _answers(front), 10), (run_dir / "e.log").read_text()
    return balancer


def _answers(port: int) -> bool:
    try:
        return ask(port, timeout=2)[0] == 200
    except OSError:
        return False


@needs_nginx
def test_behind_nginx_the_app_sees_the_client_and_the_scheme(
    backend, server_factory, who_app, balancers, tmp_path
):
    apps = [wsgi_instance(server_factory, backend, who_app, "--proxy-headers") for _ in range(2)]
    front = free_port()
    nginx(balancers, tmp_path, "nginx.conf", front, apps)
    status, body, _ = ask(front)
    remote, scheme, host, forwarded_for = body.split()
    assert status == 200 and (remote, scheme) == (CLIENT.encode(), b"http"), body
    assert host == b"test", body  # nginx passes the client's Host on ($host)
    # A client's own X-Forwarded-For is kept to the left of what nginx saw, not believed.
    status, body, _ = ask(front, extra="X-Forwarded-For: 6.6.6.6\r\n")
    assert body.split()[0] == CLIENT.encode(), body


NGINX_STREAM = next(
    (p for p in ("/usr/lib/nginx/modules/ngx_stream_module.so",) if os.path.exists(p)), None
)


@needs_nginx
@pytest.mark.skipif(
    NGINX_STREAM is None, reason="nginx stream module missing (Debian: libnginx-mod-stream)"
)
def test_behind_nginx_with_proxy_protocol_the_app_sees_the_client(
    backend, server_factory, who_app, balancers, tmp_path
):
    apps = instances(server_factory, backend, who_app)
    front = free_port()
    nginx(balancers, tmp_path, "nginx-proxy-protocol.conf", front, apps)
    for _ in range(4):
        status, body, own_port = ask(front)
        _, host, port, _ = body.split()
        assert status == 200 and (host, int(port)) == (CLIENT.encode(), own_port), body
