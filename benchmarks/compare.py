#!/usr/bin/env python3
"""Run `wrk` against selserve (on every backend) and its peers, side by side, and publish
a Markdown table and a chart of the results.

Servers: selserve on each available backend with its demo app (`selserve.demo:app`) or,
for static files, its default static job; selserve hosting the WSGI hello
(`hello_wsgi.py`); and, when installed, waitress (4 threads), gunicorn (sync, 1 worker)
and uvicorn (uvloop + httptools, 1 worker, the native ASGI hello `hello_asgi.py`) on the
same routes, and nginx (one worker, sendfile on) for static files. Workloads run one after
the other; within a workload every server takes its turn back to back, each in a fresh
process pinned to CPU 0 while `wrk -t1` runs pinned to CPU 1. For each run: requests/s,
p50/p99 latency (`wrk --latency`), server CPU µs per request (utime + stime from
/proc/PID/stat over the measured run, summed over the server's process tree) and peak RSS
(VmHWM, summed over the tree). `idle-scaling` then measures hello keep-alive on each
selserve backend while a helper process (`idle_clients.py`) holds K idle keep-alive
connections, K = 0, 1,000, 10,000, and draws `docs/benchmarks.png`.

TLS workloads (`tls-*`) ask the same hello over HTTPS of selserve (every backend, its
`--certfile`/`--keyfile`), uvicorn (`--ssl-certfile`/`--ssl-keyfile`) and nginx (one
worker, `listen ... ssl`, `return 200` with the same greeting), all with one EC P-256
certificate (CN=localhost, SAN IP:127.0.0.1) that the `openssl` CLI makes once per run in
the scratch folder: `tls-hello-c50` keeps 50 connections alive; `tls-handshake` sends
`Connection: close`, so every request is a new connection and a new handshake -- which
wrk's OpenSSL client resumes with the session ticket of the connection before it (TLS 1.3
PSK with a fresh ECDHE, no certificate or signature); `tls-handshake-full` is the same
with every server started under an OpenSSL configuration (`OPENSSL_CONF`, `NumTickets =
0`) that issues no ticket, so every handshake is a full one. After the measured run of
each `Connection: close` workload, wrk runs for one more second through a loopback relay
that reads each server's first flight (ServerHello) in the clear and counts the
handshakes it resumed. The TLS tables go to their own section, `## TLS`.

A full run rewrites its sections of `docs/benchmarks.md` and the chart; a partial one
(`--quick`, `--only`, `--servers`) only prints, unless `--output` is given.

Every address is loopback. Every process this script starts is stopped by its PID (SIGTERM,
then SIGKILL for it and each of its descendants by PID) and reaped, on success, error and
Ctrl-C alike; every wait is bounded.

    .venv/bin/python benchmarks/compare.py                 # everything, ~15 minutes
    .venv/bin/python benchmarks/compare.py --quick --only hello-c50 --servers selserve,uvicorn
    .venv/bin/python benchmarks/compare.py --only tls-hello-c50,tls-handshake \
        --servers selserve-epoll,uvicorn,nginx --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import http.client
import importlib.metadata
import importlib.util
import json
import os
import platform
import pwd
import re
import resource
import select
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "benchmarks"
DEFAULT_OUTPUT = ROOT / "docs" / "benchmarks.md"
DEFAULT_CHART = ROOT / "docs" / "benchmarks.png"
sys.path.insert(0, str(ROOT))

from browser_head import BROWSER_FIELDS  # noqa: E402
from revision import unpack  # noqa: E402

from selserve import backends  # noqa: E402

HOST = "127.0.0.1"
SERVER_CPU = "0"
CLIENT_CPU = "1"
WRK = shutil.which("wrk") or "/usr/bin/wrk"
TASKSET = shutil.which("taskset")
NGINX = "/usr/sbin/nginx"
OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")

READY_TIMEOUT = 20.0  # seconds a server gets to accept connections
STOP_TIMEOUT = 10.0  # seconds a server gets to exit after SIGTERM
IDLE_READY_TIMEOUT = 180.0  # seconds the idle-connection helper gets to open its connections
SETTLE = 0.5  # seconds of quiet between warm-up and the measured run
WRK_TIMEOUT = "5s"  # wrk's per-request timeout (counted as errors)
STATIC_FILES = {"4k.bin": 4 * 1024, "1m.bin": 1024 * 1024}
IDLE_COUNTS = (0, 1_000, 10_000)
IDLE_CLIENTS = 50  # wrk connections in idle-scaling
FD_MARGIN = 32  # fds a select server holds besides its connections, with room to spare
STREAM_PATH = "/stream?n=64&size=1024"
STREAM_BYTES = 64 * 1024
SECTION = "compare.py"
TLS_SECTION = "compare.py tls"
GREETING = "Hello from selserve!\n"  # what every hello answers (21 bytes)
TLS_KIND = "tls-hello"
PROBE_SECONDS = 1  # the resumption probe's wrk run, after the measured one


# --------------------------------------------------------------------------- processes

_running: list[Managed] = []


def descendants(pid: int) -> list[int]:
    """PIDs of every live descendant of `pid` (children first), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found: list[int] = []
    queue = [pid]
    while queue and len(found) < 10_000:
        for child in children.get(queue.pop(0), []):
            found.append(child)
            queue.append(child)
    return found


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of these processes, in seconds (processes that are gone count 0)."""
    ticks = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5)
    return ticks / CLK_TCK


def status_kib(pids: list[int], key: str) -> int:
    """Sum of a kB field of /proc/PID/status (VmHWM, VmRSS) over these processes."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith(key + ":"):
                        total += int(line.split()[1])
                        break
        except OSError:
            continue
    return total


def pinned(cpu: str, argv: list[str]) -> list[str]:
    # taskset execs the command: the PID we get is the command's own.
    return [TASKSET, "-c", cpu, *argv] if TASKSET else argv


class Managed:
    """A process this script started: stopped by PID, descendants included, and reaped."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        *,
        cwd: Path = BENCH_DIR,
        cpu: str | None = None,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        log_dir: Path,
        source: Path = ROOT,
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.argv = pinned(cpu, argv) if cpu is not None else argv
        self.log_path = log_dir / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}.log"
        env = {**os.environ, **(env or {})}
        # `source` is the tree selserve is imported from (another revision's, for --baseline).
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(source), env.get("PYTHONPATH")]))
        env["PYTHONUNBUFFERED"] = "1"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                cwd=cwd,
                env=env,
                stdin=stdin,
                stdout=stdout,
                stderr=log,
                start_new_session=True,  # Ctrl-C reaches us, and we stop it in order
            )
        _running.append(self)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def tree(self) -> list[int]:
        return [self.pid, *descendants(self.pid)]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return ""
        return "\n".join(text)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM; after `timeout`, SIGKILL it and every descendant, each by PID."""
        if self in _running:
            _running.remove(self)
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        tree = self.tree() if self.alive() else []
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        for pid in reversed(tree):  # whatever is left, grandchildren first
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def stop_everything() -> None:
    for managed in list(reversed(_running)):
        managed.stop(timeout=3.0)


def _terminate(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def wait_accepting(server: Managed, port: int, timeout: float = READY_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not server.alive():
            raise RuntimeError(
                f"{server.name} exited with status {server.proc.returncode}:\n{server.log_tail()}"
            )
        try:
            with socket.create_connection((HOST, port), timeout=1.0):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{server.name} did not accept connections within {timeout} s")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


# --------------------------------------------------------------------------- servers


@dataclass
class Target:
    """What a running server is asked for in one workload."""

    path: str
    expect_bytes: int | None  # body length a correct answer has (None: any)


@dataclass
class ServerSpec:
    name: str
    kinds: tuple[str, ...]  # "hello", "stream", "static"
    argv: Callable[[str, int, Path, Path], list[str]]  # (kind, port, files, scratch) -> argv
    available: Callable[[], bool] = lambda: True
    note: str = ""
    is_selserve: bool = False
    backend: str | None = None  # for selserve
    source: Path = ROOT  # the tree selserve is imported from
    tls_note: str = ""  # how it serves the TLS workloads (kind "tls-hello")

    def target(self, kind: str, static_file: str | None) -> Target:
        if kind in ("hello", TLS_KIND):
            return Target("/", len(GREETING))
        if kind == "stream":
            return Target(STREAM_PATH, STREAM_BYTES)
        return Target(f"/{static_file}", STATIC_FILES[static_file])


def installed(module: str) -> Callable[[], bool]:
    return lambda: importlib.util.find_spec(module) is not None


def selserve_spec(backend: str) -> ServerSpec:
    def argv(kind: str, port: int, files: Path, scratch: Path) -> list[str]:
        common = ["--backend", backend, "--bind", f"{HOST}:{port}", "--log-level", "warning"]
        common += ["--keepalive-timeout", "300"]
        if kind == "static":
            return [sys.executable, "-m", "selserve", "--root", str(files), *common]
        if kind == TLS_KIND:
            cert, key = tls_files(scratch)
            common += ["--certfile", str(cert), "--keyfile", str(key)]
        return [sys.executable, "-m", "selserve", "selserve.demo:app", *common]

    return ServerSpec(
        f"selserve-{backend}",
        ("hello", "stream", "static", TLS_KIND),
        argv,
        is_selserve=True,
        backend=backend,
        note=f"selserve, {backend} backend: `selserve.demo:app`, static: `--root DIR`",
        tls_note=f"selserve, {backend} backend: `selserve.demo:app --certfile cert.pem "
        "--keyfile key.pem` (its defaults: TLS 1.2 at least, ALPN http/1.1, session "
        "tickets on)",
    )


def selserve_wsgi_argv(kind: str, port: int, files: Path, scratch: Path) -> list[str]:
    # --threads 0: the app in the event loop (explicit: WSGI apps get a pool by default).
    return [
        sys.executable,
        "-m",
        "selserve",
        "hello_wsgi:app",
        "--threads",
        "0",
        "--bind",
        f"{HOST}:{port}",
        "--log-level",
        "warning",
        "--keepalive-timeout",
        "300",
    ]


def selserve_wsgi_pool_argv(kind: str, port: int, files: Path, scratch: Path) -> list[str]:
    argv = selserve_wsgi_argv(kind, port, files, scratch)
    argv[argv.index("--threads") + 1] = "4"  # as many as waitress is given
    return argv


def waitress_argv(kind: str, port: int, files: Path, scratch: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "waitress",
        "--threads=4",
        f"--listen={HOST}:{port}",
        "--connection-limit=1000",  # its default, 100, would refuse wrk's c=200
        "hello_wsgi:app",
    ]


def gunicorn_argv(kind: str, port: int, files: Path, scratch: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "--worker-class=sync",
        "--workers=1",
        f"--bind={HOST}:{port}",
        "--log-level=warning",
        "hello_wsgi:app",
    ]


def uvicorn_argv(kind: str, port: int, files: Path, scratch: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "--loop=uvloop",
        "--http=httptools",
        "--workers=1",
        "--no-access-log",
        "--log-level=warning",
        f"--host={HOST}",
        f"--port={port}",
        *(tls_arguments("--ssl-certfile", "--ssl-keyfile", scratch) if kind == TLS_KIND else []),
        "hello_asgi:app",
    ]


def tls_arguments(cert_flag: str, key_flag: str, scratch: Path) -> list[str]:
    cert, key = tls_files(scratch)
    return [f"{cert_flag}={cert}", f"{key_flag}={key}"]


def uvicorn_available() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("uvicorn", "uvloop", "httptools"))


def nginx_user() -> str:
    """The `user` line nginx needs when started as root (its workers drop to this user)."""
    if os.geteuid() != 0:
        return ""
    for name in ("www-data", "nobody"):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        import grp

        with contextlib.suppress(KeyError):
            return f"user {name} {grp.getgrgid(entry.pw_gid).gr_name};"
    return "user root root;"


def nginx_argv(kind: str, port: int, files: Path, scratch: Path) -> list[str]:
    prefix = scratch / f"nginx-{port}"
    (prefix / "tmp").mkdir(parents=True, exist_ok=True)
    conf = prefix / "nginx.conf"
    if kind == TLS_KIND:
        cert, key = tls_files(scratch)
        nginx_greeting = GREETING.replace("\n", "\\n")  # (nginx reads \n in quotes)
        # TLS 1.3 as the others (nginx < 1.23.4 offers TLS 1.2 at most unless told);
        # ssl_session_cache and ssl_session_tickets as nginx's defaults have them, spelled
        # out: no server-side session cache, stateless tickets on (as selserve's and
        # uvicorn's OpenSSL contexts have them).
        server = f"""listen {HOST}:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache none;
        ssl_session_tickets on;
        location = / {{
            default_type "text/plain; charset=utf-8";
            return 200 "{nginx_greeting}";
        }}"""
    else:
        server = f"""listen {HOST}:{port};
        root {files};"""
    temp_paths = "\n".join(
        f"    {what}_temp_path {prefix}/tmp/{what};"
        for what in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    conf.write_text(
        f"""{nginx_user()}
worker_processes 1;
worker_rlimit_nofile 20000;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 300s;
    keepalive_requests 1000000;
    default_type application/octet-stream;
{temp_paths}
    server {{
        {server}
    }}
}}
"""
    )
    return [NGINX, "-p", str(prefix), "-c", str(conf), "-e", f"{prefix}/error.log"]


def selserve_workers_argv(kind: str, port: int, files: Path, scratch: Path) -> list[str]:
    argv = selserve_spec(backends.best()).argv(kind, port, files, scratch)
    return [*argv, "--workers", "2"]


def selserve_observed_argv(kind: str, port: int, files: Path, scratch: Path) -> list[str]:
    argv = selserve_spec(backends.best()).argv(kind, port, files, scratch)
    return [*argv, "--metrics-path", "/metrics", "--health-path", "/healthz"]


def all_servers() -> list[ServerSpec]:
    specs = [selserve_spec(name) for name in backends.available()]
    specs += [
        ServerSpec(
            "selserve-workers2",
            ("hello", "stream", "static"),
            selserve_workers_argv,
            is_selserve=True,
            note=f"selserve ({backends.best()}), `--workers 2`: a supervisor and two "
            "workers sharing the listener (on the one server core)",
        ),
        ServerSpec(
            "selserve-metrics",
            ("hello", "stream", "static"),
            selserve_observed_argv,
            is_selserve=True,
            note=f"selserve ({backends.best()}) with `--metrics-path` and `--health-path`: "
            "every answer counted and timed into the histogram",
        ),
        ServerSpec(
            "selserve-wsgi",
            ("hello", "stream"),
            selserve_wsgi_argv,
            is_selserve=True,
            note=f"selserve ({backends.best()}) hosting `hello_wsgi.py` through its WSGI adapter, "
            "`--threads 0` (in the event loop)",
        ),
        ServerSpec(
            "selserve-wsgi-pool",
            ("hello", "stream"),
            selserve_wsgi_pool_argv,
            is_selserve=True,
            note=f"selserve ({backends.best()}) hosting `hello_wsgi.py` on a pool of 4 threads "
            "(WSGI apps get a pool by default)",
        ),
        ServerSpec(
            "waitress",
            ("hello", "stream"),
            waitress_argv,
            installed("waitress"),
            note="waitress, 4 threads, `hello_wsgi.py`, --connection-limit=1000",
        ),
        ServerSpec(
            "gunicorn",
            ("hello", "stream"),
            gunicorn_argv,
            installed("gunicorn"),
            note="gunicorn, sync worker class, 1 worker, `hello_wsgi.py` (closes every "
            "connection after one response: sync workers do no keep-alive)",
        ),
        ServerSpec(
            "uvicorn",
            ("hello", "stream", TLS_KIND),
            uvicorn_argv,
            uvicorn_available,
            note="uvicorn --loop uvloop --http httptools, 1 worker, no access log, "
            "the native ASGI `hello_asgi.py`",
            tls_note="uvicorn --loop uvloop --http httptools, 1 worker, no access log, "
            "`--ssl-certfile cert.pem --ssl-keyfile key.pem`, `hello_asgi.py` (uvloop's TLS: "
            "Python's `ssl.SSLObject` over memory BIOs)",
        ),
        ServerSpec(
            "nginx",
            ("static", TLS_KIND),
            nginx_argv,
            lambda: os.access(NGINX, os.X_OK),
            note="nginx, 1 worker, sendfile on, tcp_nopush on, access_log off",
            tls_note="nginx, 1 worker, access_log off, `listen ... ssl`, `ssl_certificate` "
            "the same pair, `ssl_protocols TLSv1.2 TLSv1.3` (nginx 1.22 offers TLS 1.2 at "
            "most unless told; 1.23.4 and later default to this), `ssl_session_cache none` "
            "and `ssl_session_tickets on` (both its defaults: no server-side cache, "
            "stateless tickets), `location = / { return "
            '200 "Hello from selserve!\\n"; }`',
        ),
    ]
    return specs


# --------------------------------------------------------------------------- TLS


def tls_files(scratch: Path) -> tuple[Path, Path]:
    """The run's certificate and key (made by `make_tls_files`)."""
    return scratch / "tls" / "cert.pem", scratch / "tls" / "key.pem"


def no_tickets_conf(scratch: Path) -> Path:
    """An OpenSSL configuration whose every server context issues no session ticket."""
    return scratch / "tls" / "no-tickets.cnf"


def make_tls_files(scratch: Path) -> None:
    """A self-signed EC P-256 certificate for CN=localhost, IP:127.0.0.1 (two days), its
    key, and the no-tickets OpenSSL configuration, with the `openssl` CLI."""
    cert, key = tls_files(scratch)
    cert.parent.mkdir(parents=True, exist_ok=True)
    cert.parent.chmod(0o755)
    argv = [OPENSSL, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]
    argv += ["-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2"]
    argv += ["-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"]
    done = subprocess.run(argv, capture_output=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"openssl req failed: {done.stderr.decode(errors='replace')}")
    cert.chmod(0o644)
    # `NumTickets` (OpenSSL 3.0+) is read by every SSL_CTX that OpenSSL's library makes in
    # a process started with OPENSSL_CONF pointing here: Python's (selserve, uvicorn) and
    # nginx's alike. No TLS 1.3 ticket: no resumption, a full handshake every time.
    no_tickets_conf(scratch).write_text(
        "openssl_conf = openssl_init\n\n[openssl_init]\nssl_conf = ssl_sect\n\n"
        "[ssl_sect]\nsystem_default = system_default_sect\n\n"
        "[system_default_sect]\nNumTickets = 0\n"
    )


def tls_client_context(scratch: Path) -> ssl.SSLContext:
    """A client context that trusts the run's certificate, and checks the name in it."""
    return ssl.create_default_context(cafile=str(tls_files(scratch)[0]))


# Names of the TLS 1.3 cipher suites and of the key-exchange groups a ServerHello names.
_CIPHERS = {0x1301: "TLS_AES_128_GCM_SHA256", 0x1302: "TLS_AES_256_GCM_SHA384"}
_CIPHERS[0x1303] = "TLS_CHACHA20_POLY1305_SHA256"
_CIPHERS[0xC02B] = "ECDHE-ECDSA-AES128-GCM-SHA256"  # TLS 1.2's, for an ECDSA certificate
_CIPHERS[0xC02C] = "ECDHE-ECDSA-AES256-GCM-SHA384"
_CIPHERS[0xCCA9] = "ECDHE-ECDSA-CHACHA20-POLY1305"
_GROUPS = {0x17: "P-256", 0x18: "P-384", 0x19: "P-521", 0x1D: "X25519", 0x1E: "X448"}
_HELLO_RETRY = bytes.fromhex("cf21ad74e59a6111be1d8c021e65b891c2a211167abb8c5e079e09e2c8a8339c")


def _server_hello(msg: bytes) -> tuple[str, str, str, bool] | None:
    """(version, cipher suite, group, PSK accepted) from a ServerHello's body; None for a
    HelloRetryRequest."""
    if msg[2:34] == _HELLO_RETRY:
        return None
    pos = 34
    pos += 1 + msg[pos]  # session id
    suite = int.from_bytes(msg[pos : pos + 2], "big")
    pos += 3  # suite, compression
    version, group, psk = "TLS 1.2", "", False
    end = pos + 2 + int.from_bytes(msg[pos : pos + 2], "big") if pos + 2 <= len(msg) else pos
    pos += 2
    while pos + 4 <= end:
        ext = int.from_bytes(msg[pos : pos + 2], "big")
        size = int.from_bytes(msg[pos + 2 : pos + 4], "big")
        body = msg[pos + 4 : pos + 4 + size]
        if ext == 43 and body == b"\x03\x04":  # supported_versions
            version = "TLS 1.3"
        elif ext == 51 and len(body) >= 2:  # key_share
            code = int.from_bytes(body[:2], "big")
            group = _GROUPS.get(code, f"group 0x{code:04x}")
        elif ext == 41:  # pre_shared_key: the server took the client's ticket
            psk = True
        pos += 4 + size
    return version, _CIPHERS.get(suite, f"suite 0x{suite:04x}"), group, psk


def server_flight(data: bytes) -> tuple[str, str, str, bool] | None:
    """(version, cipher suite, group, resumed) from the first bytes a TLS server sent on a
    connection, or None while they do not tell yet. TLS 1.3: resumed when the ServerHello
    accepts a pre-shared key. TLS 1.2: resumed when ChangeCipherSpec comes with no
    Certificate before it."""
    handshake = bytearray()
    hello = None
    pos = 0
    while pos + 5 <= len(data):
        kind, size = data[pos], int.from_bytes(data[pos + 3 : pos + 5], "big")
        if pos + 5 + size > len(data):
            break
        record = data[pos + 5 : pos + 5 + size]
        pos += 5 + size
        if kind != 22:  # ChangeCipherSpec, alert or application data: the flight ended
            if hello is not None:
                return (*hello[:3], True)
            return ("alert", "", "", False) if kind == 21 else None
        handshake += record
        at = 0
        while at + 4 <= len(handshake):
            msg_type, msg_size = handshake[at], int.from_bytes(handshake[at + 1 : at + 4], "big")
            if at + 4 + msg_size > len(handshake):
                break
            msg = bytes(handshake[at + 4 : at + 4 + msg_size])
            at += 4 + msg_size
            if msg_type == 2:
                hello = _server_hello(msg)
                if hello is not None and hello[0] == "TLS 1.3":
                    return hello
            elif msg_type in (11, 12, 14) and hello is not None:  # Certificate: a full one
                return (*hello[:3], False)
    return None


class HandshakeProbe:
    """A loopback TCP relay to a TLS server, in a thread of its own, that reads what the
    server sends first on each connection in the clear and counts full and resumed
    handshakes (`server_flight`). Bytes pass unchanged both ways."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.counts: Counter = Counter()
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> HandshakeProbe:
        self._thread.start()
        if not self._ready.wait(10) or not self.port:
            raise RuntimeError("the handshake probe did not start")
        return self

    def __exit__(self, *exc) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            server = self._loop.run_until_complete(
                asyncio.start_server(self._relay, HOST, 0, backlog=1024)
            )
            self.port = server.sockets[0].getsockname()[1]
        finally:
            self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            server.close()
            for task in asyncio.all_tasks(self._loop):
                task.cancel()
            with contextlib.suppress(Exception):
                self._loop.run_until_complete(asyncio.sleep(0))
            self._loop.close()

    async def _relay(self, reader, writer) -> None:
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(HOST, self.target_port), 5
            )
        except (TimeoutError, OSError):
            self.counts["relay could not connect"] += 1
            writer.close()
            return
        await asyncio.gather(
            self._pump(reader, up_writer, False), self._pump(up_reader, writer, True)
        )

    async def _pump(self, reader, writer, from_server: bool) -> None:
        flight = bytearray() if from_server else None
        try:
            while data := await reader.read(65536):
                if flight is not None:
                    flight += data
                    verdict = server_flight(bytes(flight))
                    if verdict is not None or len(flight) > 65536:
                        self.counts[verdict or ("unreadable", "", "", False)] += 1
                        flight = None
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    def summary(self) -> tuple[int, int, str]:
        """(handshakes seen, of which resumed, what was negotiated)."""
        seen = resumed = 0
        kinds = Counter()
        for key, n in self.counts.items():
            if isinstance(key, str):
                kinds[key] += n
                continue
            version, suite, group, was_resumed = key
            if version in ("alert", "unreadable"):
                kinds[version] += n
                continue
            seen += n
            resumed += n if was_resumed else 0
            kinds[", ".join(filter(None, (version, suite, group)))] += n
        return seen, resumed, "; ".join(f"{k} ×{n:,}" for k, n in kinds.most_common())


# --------------------------------------------------------------------------- workloads


@dataclass
class Workload:
    name: str
    kind: str
    connections: int
    title: str
    close: bool = False
    static_file: str | None = None
    tickets: bool = True  # TLS: False starts the servers under an OpenSSL conf issuing none
    headers: tuple[str, ...] = ()  # sent with every request, after wrk's own Host

    @property
    def tls(self) -> bool:
        return self.kind == TLS_KIND


WORKLOADS = [
    Workload("hello-c50", "hello", 50, "hello, keep-alive, 50 connections"),
    Workload("hello-c200", "hello", 200, "hello, keep-alive, 200 connections"),
    Workload(
        "hello-browser",
        "hello",
        50,
        "hello with a browser's head (Host and 12 more fields, about 600 bytes: "
        "User-Agent, Accept*, Cookie, Referer, Sec-Fetch-*), keep-alive, 50 connections",
        headers=BROWSER_FIELDS,
    ),
    Workload(
        "hello-close",
        "hello",
        50,
        "hello, `Connection: close` (a new connection per request), 50 connections",
        close=True,
    ),
    Workload(
        "stream",
        "stream",
        50,
        "chunked stream of 64 × 1 KiB (`/stream?n=64&size=1024`), 50 connections",
    ),
    Workload("static-4k", "static", 50, "static 4 KiB file, 50 connections", static_file="4k.bin"),
    Workload("static-1m", "static", 50, "static 1 MiB file, 50 connections", static_file="1m.bin"),
    Workload("tls-hello-c50", TLS_KIND, 50, "hello over HTTPS, keep-alive, 50 connections"),
    Workload(
        "tls-handshake",
        TLS_KIND,
        50,
        "hello over HTTPS, `Connection: close`: a TLS handshake per request (resumed "
        "with a session ticket, see above), 50 connections",
        close=True,
    ),
    Workload(
        "tls-handshake-full",
        TLS_KIND,
        50,
        "hello over HTTPS, `Connection: close`, servers issuing no session ticket: a full "
        "handshake per request (ECDHE + ECDSA P-256 signature), 50 connections",
        close=True,
        tickets=False,
    ),
]
IDLE_SCALING = "idle-scaling"
WORKLOAD_NAMES = [w.name for w in WORKLOADS] + [IDLE_SCALING]
TLS_WORKLOAD_NAMES = {w.name for w in WORKLOADS if w.tls}


@dataclass
class Result:
    workload: str
    server: str
    requests: int = 0
    seconds: float = 0.0
    rps: float = 0.0
    p50_ms: float | None = None
    p99_ms: float | None = None
    cpu_us: float | None = None
    peak_rss_kib: int = 0
    client_cpu: float | None = None  # wrk's CPU use over the run, in % of one core
    errors: int = 0
    idle: int = 0  # idle keep-alive connections held meanwhile (idle-scaling)
    idle_held: int = 0
    failure: str = ""
    notes: list[str] = field(default_factory=list)
    round: int = 0
    # TLS, `Connection: close`: what the resumption probe saw (see HandshakeProbe)
    handshakes: int = 0
    resumed: int = 0
    tls_params: str = ""
    socket_errors: str = ""  # wrk's "Socket errors" line, when it printed one


# --------------------------------------------------------------------------- wrk

_LATENCY = re.compile(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", re.M)
_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def wrk_argv(
    url: str, connections: int, seconds: float, close: bool, headers: tuple[str, ...] = ()
) -> list[str]:
    argv = [WRK, "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency"]
    argv += ["--timeout", WRK_TIMEOUT]
    if close:
        argv += ["-H", "Connection: close"]
    for header in headers:
        argv += ["-H", header]
    return pinned(CLIENT_CPU, [*argv, url])


def run_wrk(argv: list[str], seconds: float, log_dir: Path) -> str:
    """Run wrk to completion (bounded) and return its output."""
    wrk = Managed("wrk", argv, stdout=subprocess.PIPE, log_dir=log_dir)
    try:
        out, _ = wrk.proc.communicate(timeout=seconds + 30)
    except subprocess.TimeoutExpired:
        wrk.stop(timeout=1.0)
        raise RuntimeError("wrk did not finish within its duration + 30 s") from None
    wrk.stop(timeout=1.0)
    if wrk.proc.returncode != 0:
        raise RuntimeError(f"wrk failed ({wrk.proc.returncode}): {wrk.log_tail()}")
    return out.decode(errors="replace")


def parse_wrk(text: str, result: Result) -> None:
    m = re.search(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m)", text, re.M)
    if not m:
        raise RuntimeError(f"cannot read wrk's output:\n{text}")
    result.requests = int(m[1])
    result.seconds = float(m[2]) * {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[m[3]]
    m = re.search(r"^Requests/sec:\s+([\d.]+)", text, re.M)
    result.rps = float(m[1]) if m else result.requests / max(result.seconds, 1e-9)
    for pct, value, unit in _LATENCY.findall(text):
        ms = float(value) * _UNIT_MS[unit]
        if pct == "50":
            result.p50_ms = ms
        else:
            result.p99_ms = ms
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m:
        result.errors += sum(int(g) for g in m.groups())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if m:
        result.errors += int(m[1])


def check_answer(
    port: int, target: Target, close: bool, tls_context: ssl.SSLContext | None = None
) -> None:
    """One request with the stdlib client: 200 and a body of the expected length (over
    TLS with `tls_context`: its certificate verified, for 127.0.0.1)."""
    if tls_context is not None:
        conn = http.client.HTTPSConnection(HOST, port, timeout=10, context=tls_context)
    else:
        conn = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        conn.request("GET", target.path, headers={"Connection": "close"} if close else {})
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    if response.status != 200:
        raise RuntimeError(f"GET {target.path} answered {response.status}")
    if target.expect_bytes is not None and len(body) != target.expect_bytes:
        raise RuntimeError(f"GET {target.path}: {len(body)} bytes, expected {target.expect_bytes}")


# --------------------------------------------------------------------------- one run


@dataclass
class Settings:
    duration: float
    warmup: float
    files: Path
    scratch: Path
    log_dir: Path
    rounds: int = 1


@contextlib.contextmanager
def running(
    spec: ServerSpec, kind: str, settings: Settings, env: dict[str, str] | None = None
) -> Iterator[tuple[Managed, int]]:
    port = free_port()
    argv = spec.argv(kind, port, settings.files, settings.scratch)
    server = Managed(
        f"{spec.name}-{kind}-{port}",
        argv,
        cpu=SERVER_CPU,
        log_dir=settings.log_dir,
        source=spec.source,
        env=env,
    )
    try:
        wait_accepting(server, port)
        yield server, port
    finally:
        server.stop()


@contextlib.contextmanager
def idle_connections(port: int, count: int, settings: Settings) -> Iterator[dict]:
    """A helper process holding `count` idle keep-alive connections to the server."""
    if count == 0:
        yield {"open": 0, "failed": 0}
        return
    argv = [sys.executable, str(BENCH_DIR / "idle_clients.py"), "--port", str(port)]
    argv += ["--count", str(count), "--hold", "1800"]
    helper = Managed(
        f"idle-clients-{count}",
        argv,
        cpu=CLIENT_CPU,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        log_dir=settings.log_dir,
    )
    try:
        ready, _, _ = select.select([helper.proc.stdout], [], [], IDLE_READY_TIMEOUT)
        line = helper.proc.stdout.readline() if ready else b""
        if not line:
            raise RuntimeError(f"idle-connection helper did not report:\n{helper.log_tail()}")
        yield json.loads(line)
    finally:
        helper.stop()


def measure(
    spec: ServerSpec, workload: Workload, settings: Settings, connections: int, idle: int = 0
) -> Result:
    result = Result(workload.name, spec.name, idle=idle)
    target = spec.target(workload.kind, workload.static_file)
    env = None
    if workload.tls and not workload.tickets:
        env = {"OPENSSL_CONF": str(no_tickets_conf(settings.scratch))}
    with running(spec, workload.kind, settings, env) as (server, port):
        tls_context = tls_client_context(settings.scratch) if workload.tls else None
        check_answer(port, target, workload.close, tls_context)
        with idle_connections(port, idle, settings) as held:
            result.idle_held = held["open"]
            if held["failed"]:
                result.notes.append(f"{held['failed']} of {idle} idle connections failed")
            url = f"{'https' if workload.tls else 'http'}://{HOST}:{port}{target.path}"
            if settings.warmup > 0:
                run_wrk(
                    wrk_argv(url, connections, settings.warmup, workload.close, workload.headers),
                    settings.warmup,
                    settings.log_dir,
                )
                time.sleep(SETTLE)
            tree = server.tree()
            cpu_before = cpu_seconds(tree)
            # wrk is the only child reaped during the run: its CPU is this difference.
            children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
            text = run_wrk(
                wrk_argv(url, connections, settings.duration, workload.close, workload.headers),
                settings.duration,
                settings.log_dir,
            )
            children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
            tree = sorted(set(tree) | set(server.tree()))
            cpu_used = cpu_seconds(tree) - cpu_before
            parse_wrk(text, result)
            wrk_cpu = (children_after.ru_utime - children_before.ru_utime) + (
                children_after.ru_stime - children_before.ru_stime
            )
            result.client_cpu = 100 * wrk_cpu / max(result.seconds, 1e-9)
            result.peak_rss_kib = status_kib(tree, "VmHWM")
            if result.requests:
                result.cpu_us = cpu_used / result.requests * 1e6
            if workload.tls:
                tls_checks(result, text, server, port, workload, settings, connections, target)
            if not server.alive():
                result.failure = f"server exited during the run:\n{server.log_tail()}"
    return result


def tls_checks(
    result: Result,
    text: str,
    server: Managed,
    port: int,
    workload: Workload,
    settings: Settings,
    connections: int,
    target: Target,
) -> None:
    """After a measured TLS run: wrk's socket errors and the server's log lines as notes,
    and, for `Connection: close`, a short wrk run through a HandshakeProbe that counts the
    handshakes resumed."""
    m = re.search(r"Socket errors: .*", text)
    if m:
        result.socket_errors = m[0]
        result.notes.append(f"wrk: {m[0]}")
    log = [line for line in server.log_tail(10_000).splitlines() if line.strip()]
    if log:
        result.notes.append(f"{len(log)} line(s) in the server's stderr, the last: {log[-1][:200]}")
    if not workload.close:
        return
    with HandshakeProbe(port) as probe:
        url = f"https://{HOST}:{probe.port}{target.path}"
        run_wrk(wrk_argv(url, connections, PROBE_SECONDS, True), PROBE_SECONDS, settings.log_dir)
        time.sleep(0.2)  # the relay's last connections
    result.handshakes, result.resumed, result.tls_params = probe.summary()


def run_safely(fn: Callable[[], Result], workload: str, server: str) -> Result:
    try:
        return fn()
    except (RuntimeError, OSError, ValueError, http.client.HTTPException) as exc:
        return Result(workload, server, failure=f"{type(exc).__name__}: {exc}")


# --------------------------------------------------------------------------- report


def fmt(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "–"
    return f"{value:,.{digits}f}"


def ratio(value: float | None, reference: float | None) -> str:
    if value is None or not reference:
        return "–"
    return f"{value / reference:.2f}×"


def reference_of(rows: list[Result], default: str) -> Result | None:
    for row in rows:
        if row.server == default and not row.failure:
            return row
    for row in rows:
        if row.server.startswith("selserve") and not row.failure:
            return row
    return None


def workload_table(rows: list[Result], default: str) -> list[str]:
    ref = reference_of(rows, default)
    ref_name = ref.server if ref else "selserve"
    lines = [
        f"| server | requests/s | vs {ref_name} | p50 ms | p99 ms | server CPU µs/request "
        f"| vs {ref_name} | peak RSS MiB | wrk CPU | errors |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        if row.failure:
            reason = row.failure.splitlines()[0][:120].replace("|", "/")
            lines.append(f"| {row.server} | failed: {reason} | | | | | | | | |")
            continue
        lines.append(
            f"| {row.server} | {fmt(row.rps)} | {ratio(row.rps, ref and ref.rps)} "
            f"| {fmt(row.p50_ms, 2)} | {fmt(row.p99_ms, 2)} | {fmt(row.cpu_us, 1)} "
            f"| {ratio(row.cpu_us, ref and ref.cpu_us)} | {fmt(row.peak_rss_kib / 1024, 1)} "
            f"| {fmt(row.client_cpu)}% | {row.errors:,} |"
        )
    return lines


def idle_table(rows: list[Result]) -> list[str]:
    counts = sorted({r.idle for r in rows if r.idle in IDLE_COUNTS} | set(IDLE_COUNTS))
    lines = [
        "| backend | " + " | ".join(f"K={k:,}" for k in counts) + " |",
        "| --- |" + " ---: |" * len(counts),
    ]
    names = list(dict.fromkeys(r.server for r in rows))
    for name in names:
        cells = []
        for k in counts:
            row = next((r for r in rows if r.server == name and _bucket(r.idle) == k), None)
            if row is None:
                cells.append("not run")
            elif row.failure:
                cells.append("failed")
            else:
                held = f" (K={row.idle:,})" if row.idle != k else ""
                cells.append(f"{fmt(row.rps)} req/s, {fmt(row.cpu_us, 1)} µs/req{held}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def _bucket(idle: int) -> int:
    """The K column an idle count belongs to (select's reduced K goes under 1,000)."""
    return min(IDLE_COUNTS, key=lambda k: abs(k - idle))


def machine() -> dict[str, str]:
    model = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    versions = {"python": platform.python_version()}
    for dist in ("waitress", "gunicorn", "uvicorn", "uvloop", "httptools"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[dist] = importlib.metadata.version(dist)
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run([WRK, "-v"], capture_output=True, timeout=10).stdout.decode()
        versions["wrk"] = out.split()[1] if out.split()[1:] else out.strip()
    if os.access(NGINX, os.X_OK):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            err = subprocess.run([NGINX, "-v"], capture_output=True, timeout=10).stderr.decode()
            versions["nginx"] = err.strip().rsplit("/", 1)[-1]
    return {
        "revision": revision(),
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "kernel": platform.release(),
        "versions": ", ".join(f"{k} {v}" for k, v in versions.items()),
    }


def revision() -> str:
    """The selserve revision measured: commit, and whether selserve/ had uncommitted changes."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            timeout=10,
        ).stdout.decode()
        changes = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--", "selserve"],
            capture_output=True,
            timeout=10,
        ).stdout.decode()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    commit = commit.strip() or "unknown"
    return f"{commit} (+ uncommitted changes in selserve/)" if changes.strip() else commit


def load_average() -> str:
    with contextlib.suppress(OSError), open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])
    return "?"


def revisions_text(at_start: str, at_end: str) -> str:
    if at_start == at_end:
        return at_start
    return f"{at_start} (**changed during the run**, to {at_end})"


def report(
    results: list[Result],
    specs: list[ServerSpec],
    settings: Settings,
    command: str,
    started: datetime.datetime,
    loads: tuple[str, str],
    chart: Path | None,
    revisions: str,
) -> str:
    info = machine()
    default = f"selserve-{backends.best()}"
    rounds_text = (
        f", {settings.rounds} rounds in turn, and each server's best round is shown"
        if settings.rounds > 1
        else ""
    )
    out = [
        "## Throughput, latency, CPU and memory against peers",
        "",
        f"Produced by `{command}` on {started:%Y-%m-%d %H:%M} UTC from selserve "
        f"{revisions_text(revisions, info['revision'])}, on a machine with "
        f"{info['nproc']} cores ({info['cpu']}), Linux {info['kernel']}; {info['versions']}. "
        f"Load average {loads[0]} before the run and {loads[1]} after it.",
        "",
        f"Method: every server runs in a fresh process pinned to CPU {SERVER_CPU}; "
        f"`wrk -t1 --latency` runs pinned to CPU {CLIENT_CPU} for {settings.duration:g} s "
        f"after a {settings.warmup:g} s warm-up. Within a workload the servers take turns "
        f"back to back{rounds_text}. *server CPU µs/request* is the server's utime + stime "
        "(`/proc/PID/stat`, summed over its process tree) during the measured run divided "
        "by the requests wrk completed: requests/s alone says more about the client than "
        "the server once the client's core is saturated. *peak RSS* is VmHWM at the end of "
        "the run (summed over the tree: gunicorn's and nginx's master and worker). *wrk CPU* "
        "is the client's CPU use over the run in % of its core: near 100% the client, not "
        "the server, sets requests/s. *errors* are wrk's socket errors plus non-2xx answers. "
        f"Ratios compare with {default} (the default backend): above 1× in requests/s is "
        "faster than selserve, "
        "above 1× in CPU is more CPU per request than selserve.",
        "",
        "Servers:",
        "",
    ]
    used = {r.server for r in results}
    for spec in specs:
        if spec.name in used:
            out.append(f"- **{spec.name}**: {spec.note}")
    out.append("")
    for workload in WORKLOADS:
        rows = [r for r in results if r.workload == workload.name]
        if rows and not workload.tls:  # (those are tls_report's)
            out += [f"### {workload.title}", "", *workload_table(rows, default), ""]
    idle_rows = [r for r in results if r.workload == IDLE_SCALING]
    if idle_rows:
        out += [
            "### Requests/s against idle keep-alive connections",
            "",
            f"Hello, keep-alive, {IDLE_CLIENTS} wrk connections, while a helper process "
            "(`benchmarks/idle_clients.py`, pinned with wrk) holds K other keep-alive "
            "connections that each completed one request and stay open "
            "(`--keepalive-timeout 300`). epoll's cost does not depend on K; poll and select "
            "scan every watched fd on every loop turn. select cannot watch fds at or above "
            f"1024, so it runs at K=0 and at the largest K that fits beside {IDLE_CLIENTS} "
            "active connections.",
            "",
        ]
        if chart is not None:
            out += [f"![requests/s against idle connections]({chart.name})", ""]
        out += [*idle_table(idle_rows), ""]
    out += run_notes([r for r in results if r.workload not in TLS_WORKLOAD_NAMES])
    return "\n".join(out)


def run_notes(results: list[Result]) -> list[str]:
    notes = [(r, n) for r in results for n in r.notes]
    failures = [r for r in results if r.failure]
    if not (notes or failures):
        return []
    out = ["Notes from this run:", ""]
    out += [f"- {r.workload}, {r.server}: {n}" for r, n in notes]
    out += [f"- {r.workload}, {r.server}: {r.failure.splitlines()[0][:300]}" for r in failures]
    out.append("")
    return out


def openssl_versions() -> str:
    """Which OpenSSL each party runs: Python's (selserve, uvicorn), nginx's, wrk's."""
    parts = [f"Python's `ssl` (selserve, uvicorn/uvloop): {ssl.OPENSSL_VERSION}"]
    if os.access(NGINX, os.X_OK):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            err = subprocess.run([NGINX, "-V"], capture_output=True, timeout=10).stderr.decode()
            m = re.search(
                r"built with (OpenSSL [^ ]+)[^(\n]*(?:\(running with (OpenSSL [^ ]+))?", err
            )
            if m:
                parts.append(f"nginx: built with {m[1]}, running with {m[2] or m[1]}")
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        lib = subprocess.run(["ldd", WRK], capture_output=True, timeout=10).stdout.decode()
        m = re.search(r"(libssl\.so[.\d]*) => (\S+)", lib)
        out = subprocess.run([OPENSSL, "version"], capture_output=True, timeout=10).stdout.decode()
        if m:
            parts.append(f"wrk: {m[2]} (the system's {' '.join(out.split()[:2])})")
    return "; ".join(parts)


def handshake_table(results: list[Result]) -> list[str]:
    rows = [r for r in results if r.handshakes or (r.tls_params and not r.failure)]
    if not rows:
        return []
    lines = [
        "| workload | server | handshakes the probe saw | resumed | negotiated |",
        "| --- | --- | ---: | ---: | --- |",
    ]
    for r in rows:
        share = f" ({100 * r.resumed / r.handshakes:.1f}%)" if r.handshakes else ""
        lines.append(
            f"| {r.workload} | {r.server} | {r.handshakes:,} | {r.resumed:,}{share} "
            f"| {r.tls_params.replace('|', '/')} |"
        )
    return lines


def tls_report(
    results: list[Result],
    specs: list[ServerSpec],
    settings: Settings,
    command: str,
    started: datetime.datetime,
    loads: tuple[str, str],
    revisions: str,
) -> str:
    info = machine()
    default = f"selserve-{backends.best()}"
    rounds_text = (
        f", {settings.rounds} rounds in turn, and each server's best round is shown"
        if settings.rounds > 1
        else ""
    )
    out = [
        "## TLS",
        "",
        f"Produced by `{command}` on {started:%Y-%m-%d %H:%M} UTC from selserve "
        f"{revisions_text(revisions, info['revision'])}, on a machine with "
        f"{info['nproc']} cores ({info['cpu']}), Linux {info['kernel']}; {info['versions']}. "
        f"OpenSSL: {openssl_versions()}. "
        f"Load average {loads[0]} before the run and {loads[1]} after it.",
        "",
        "The same hello as above over HTTPS, and the same method: every server in a fresh "
        f"process pinned to CPU {SERVER_CPU}, `wrk -t1 --latency` pinned to CPU {CLIENT_CPU} "
        f"for {settings.duration:g} s after a {settings.warmup:g} s warm-up, the servers "
        f"taking turns back to back{rounds_text}; the columns mean what they mean there, "
        f"and ratios compare with {default}. Every server is given one certificate, made "
        "for the run by `openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256` "
        "(self-signed, CN=localhost, SAN IP:127.0.0.1), and its answer is checked first "
        "with Python's `http.client` over TLS, the certificate verified.",
        "",
        "What a `Connection: close` run measures: wrk keeps each connection's TLS session "
        "when it reconnects (its `ssl_close` is `SSL_shutdown` + `SSL_clear`, which keeps "
        "the session) and offers the session ticket the server sent on the last "
        "connection. So in *tls-handshake* each of wrk's connections makes one full "
        "handshake and every reconnect after it is a TLS 1.3 resumption (PSK with a fresh "
        "ECDHE: no certificate, no signature): it measures resumed handshakes, for every "
        "server alike, since all three issue tickets by default. *tls-handshake-full* "
        "starts every server with `OPENSSL_CONF` pointing to a configuration that sets "
        "`NumTickets = 0`, which OpenSSL applies to every server context, Python's and "
        "nginx's alike: no ticket, so every request is a full handshake (ECDHE and an "
        "ECDSA P-256 signature). After each measured `Connection: close` run, wrk runs "
        f"{PROBE_SECONDS} s more through a loopback relay that reads every ServerHello "
        "in the clear and counts the resumed ones (a pre-shared key accepted): the last "
        "table.",
        "",
        "Reading the tables: under `Connection: close` wrk does the client's half of every "
        "handshake on its one core, and at *wrk CPU* near 100% it, not the server, sets "
        "requests/s: *server CPU µs/request* is the comparison then. wrk starts a "
        "request's latency clock when it writes the request, after its handshake, so "
        "there p50/p99 leave the handshake out: a server that runs other connections' "
        "handshakes before answering a request that has arrived shows a higher p50 for the "
        "same time per connection; that time, handshake included, is on average "
        "connections ÷ requests/s (Little's law). In the keep-alive run each of wrk's "
        "connections makes one full handshake, at its start.",
        "",
        "Servers:",
        "",
    ]
    used = {r.server for r in results}
    for spec in specs:
        if spec.name in used:
            out.append(f"- **{spec.name}**: {spec.tls_note or spec.note}")
    out.append("")
    for workload in WORKLOADS:
        rows = [r for r in results if r.workload == workload.name]
        if rows and workload.tls:
            out += [f"### {workload.title}", "", *workload_table(rows, default), ""]
    probe = handshake_table(results)
    if probe:
        out += ["### The handshakes wrk made (resumption probe)", "", *probe, ""]
    out += run_notes(results)
    return "\n".join(out)


def write_section(path: Path, name: str, body: str) -> None:
    """Replace this script's marked section of `path` (creating the file when missing)."""
    start, end = f"<!-- {name}: start -->", f"<!-- {name}: end -->"
    block = f"{start}\n{body.rstrip()}\n{end}\n"
    if path.exists():
        text = path.read_text()
    else:
        text = (
            "# Benchmarks\n\nGenerated by the scripts in `benchmarks/` (see "
            "`benchmarks/README.md`); run them again to refresh these sections.\n\n"
        )
    if start in text and end in text:
        before, rest = text.split(start, 1)
        after = rest.split(end, 1)[1].lstrip("\n")
        text = before + block + ("\n" + after if after else "")
    else:
        text = text.rstrip() + "\n\n" + block
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def draw_chart(rows: list[Result], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter
    except ImportError:
        print("matplotlib is not installed: no chart", file=sys.stderr)
        return False
    fig, (ax_rps, ax_cpu) = plt.subplots(1, 2, figsize=(11, 4.4))
    for name in dict.fromkeys(r.server for r in rows):
        points = sorted(
            (r for r in rows if r.server == name and not r.failure), key=lambda r: r.idle
        )
        if not points:
            continue
        ks = [r.idle for r in points]
        (line,) = ax_rps.plot(ks, [r.rps for r in points], marker="o", label=name)
        ax_cpu.plot(ks, [r.cpu_us for r in points], marker="o", label=name)
        for r in points:
            if r.idle not in IDLE_COUNTS:  # select's reduced K: say which K it is
                for ax, y in ((ax_rps, r.rps), (ax_cpu, r.cpu_us)):
                    ax.annotate(
                        f"K={r.idle:,}",
                        (r.idle, y),
                        textcoords="offset points",
                        xytext=(-8, 8),
                        ha="right",
                        fontsize=8,
                        color=line.get_color(),
                    )
    thousands = FuncFormatter(lambda value, _: f"{value:,.0f}")
    for ax, label in ((ax_rps, "requests/s"), (ax_cpu, "server CPU µs per request")):
        ax.set_xscale("symlog", linthresh=100)
        ax.set_xticks(list(IDLE_COUNTS))
        ax.set_xticklabels([f"{k:,}" for k in IDLE_COUNTS])
        ax.set_xlabel("idle keep-alive connections held (K)")
        ax.set_ylabel(label)
        ax.yaxis.set_major_formatter(thousands)
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.suptitle(
        f"selserve demo hello, keep-alive, wrk -t1 -c{IDLE_CLIENTS}, "
        f"while K other connections sit idle"
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# --------------------------------------------------------------------------- main


def make_static_files(directory: Path) -> None:
    directory.chmod(0o755)  # nginx's workers run as an unprivileged user
    for name, size in STATIC_FILES.items():
        (directory / name).write_bytes(os.urandom(size))
        (directory / name).chmod(0o644)


def baseline_servers(revision: str, directory: Path) -> list[ServerSpec]:
    """selserve as of `revision` (a git revision of this repository), unpacked into
    `directory`: the demo app on the default backend, and the WSGI hello in the loop
    and on the thread pool, so that a change to the hot path is measured side by
    side with what it changes."""
    short = unpack(revision, directory)
    best = backends.best()
    demo = selserve_spec(best)
    demo.name, demo.source, demo.backend = f"selserve@{short}", directory, None
    demo.note = f"selserve at revision {short} ({best}), `selserve.demo:app`"
    wsgi = [
        ServerSpec(
            f"selserve@{short}{suffix}",
            ("hello", "stream"),
            argv,
            is_selserve=True,
            source=directory,
            note=f"selserve at revision {short} ({best}) hosting `hello_wsgi.py`{how}",
        )
        for suffix, argv, how in (
            ("-wsgi", selserve_wsgi_argv, " in the loop"),
            ("-wsgi-pool", selserve_wsgi_pool_argv, " on 4 threads"),
        )
    ]
    return [demo, *wsgi]


def select_servers(specs: list[ServerSpec], wanted: list[str] | None) -> list[ServerSpec]:
    if not wanted:
        return [s for s in specs if s.available()]
    chosen = []
    for spec in specs:
        if any(spec.name == w or (w == "selserve" and spec.is_selserve) for w in wanted):
            if spec.available():
                chosen.append(spec)
            else:
                print(f"{spec.name} is not installed here: skipped", file=sys.stderr)
    unknown = [w for w in wanted if w != "selserve" and w not in {s.name for s in specs}]
    if unknown:
        raise SystemExit(
            f"unknown server(s) {', '.join(unknown)}; choose from selserve, "
            + ", ".join(s.name for s in specs)
        )
    return chosen


def comma_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="wrk comparison of selserve's backends and its peers",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--duration", type=float, help="seconds per measured run (default 10, --quick 3)"
    )
    parser.add_argument(
        "--warmup", type=float, help="seconds of warm-up per run (default 2, --quick 1)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="3 s runs, 1 s warm-up (a partial run: prints only)"
    )
    parser.add_argument(
        "--only",
        type=comma_list,
        action="extend",
        metavar="WORKLOAD",
        help=f"run only these workloads (comma-separated, repeatable): {', '.join(WORKLOAD_NAMES)}",
    )
    parser.add_argument(
        "--servers",
        type=comma_list,
        action="extend",
        metavar="NAME",
        help="run only these servers (comma-separated; 'selserve' means every selserve row)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        help="Markdown file to update (default for full runs: docs/benchmarks.md)",
    )
    parser.add_argument("--chart", type=Path, help="PNG chart path (default next to --output)")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run every workload's rotation of servers this many times; report each "
        "server's best round (interference from other load only ever slows a run down)",
    )
    parser.add_argument("--json", type=Path, help="also write the raw results as JSON here")
    parser.add_argument(
        "--baseline",
        metavar="REV",
        help="also run selserve as of this git revision (demo app and WSGI hello, rows "
        "named selserve@REV, selserve@REV-wsgi and selserve@REV-wsgi-pool): before/after "
        "side by side in one run",
    )
    parser.add_argument("--keep-logs", action="store_true", help="keep the servers' stderr logs")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.duration is None:
        args.duration = 3.0 if args.quick else 10.0
    if args.warmup is None:
        args.warmup = 1.0 if args.quick else 2.0
    if args.rounds < 1 or args.duration < 1:
        raise SystemExit("--rounds and --duration must be at least 1")
    unknown = [w for w in args.only or [] if w not in WORKLOAD_NAMES]
    if unknown:
        raise SystemExit(f"unknown workload(s) {', '.join(unknown)}; choose from {WORKLOAD_NAMES}")
    if not os.access(WRK, os.X_OK):
        raise SystemExit("wrk is not installed (Debian: apt-get install wrk)")
    if (os.cpu_count() or 1) < 2:
        print("warning: one CPU: server and wrk share it", file=sys.stderr)
    partial = bool(args.quick or args.only or args.servers)
    output = args.output or (None if partial else DEFAULT_OUTPUT)
    chart_path = args.chart or (output.with_suffix(".png") if output else None)
    work = Path(tempfile.mkdtemp(prefix="selserve-compare-"))
    work.chmod(0o755)  # nginx's workers run as an unprivileged user and must reach files/
    specs = all_servers()
    chosen = select_servers(specs, args.servers)
    if args.baseline:  # always run, whatever --servers picked: that is what it is for
        try:
            chosen += baseline_servers(args.baseline, work / "baseline")
        except SystemExit:
            shutil.rmtree(work, ignore_errors=True)
            raise
    workloads = [w for w in WORKLOADS if not args.only or w.name in args.only]
    if any(w.tls for w in workloads) and not os.access(OPENSSL, os.X_OK):
        if args.only:
            shutil.rmtree(work, ignore_errors=True)
            raise SystemExit("the TLS workloads need the openssl CLI (Debian: openssl)")
        print("openssl is not installed: no TLS workloads", file=sys.stderr)
        workloads = [w for w in workloads if not w.tls]
    do_idle = not args.only or IDLE_SCALING in args.only
    command = "python benchmarks/compare.py" + (" " + " ".join(argv or sys.argv[1:])).rstrip()

    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    # Ctrl-C stops the run cleanly even when started where SIGINT was ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    started = datetime.datetime.now(datetime.UTC)
    loads = [load_average(), "?"]
    first_revision = revision()
    results: list[Result] = []
    files = work / "files"
    files.mkdir()
    make_static_files(files)
    if any(w.tls for w in workloads):
        make_tls_files(work)
    settings = Settings(args.duration, args.warmup, files, work, work / "logs", args.rounds)
    settings.log_dir.mkdir()
    try:
        for workload in workloads:
            for round_no in range(args.rounds):
                for spec in chosen:
                    if workload.kind not in spec.kinds:
                        continue
                    print(f"{workload.name:18} {spec.name:16} ", end="", flush=True)
                    result = run_safely(
                        lambda spec=spec, workload=workload: measure(
                            spec, workload, settings, workload.connections
                        ),
                        workload.name,
                        spec.name,
                    )
                    result.round = round_no
                    results.append(result)
                    print(summary(result), flush=True)
        if do_idle:
            idle_workload = Workload(IDLE_SCALING, "hello", IDLE_CLIENTS, "idle scaling")
            for round_no in range(args.rounds):
                for spec in chosen:
                    if not spec.is_selserve or spec.backend is None:
                        continue
                    for k in idle_counts_for(spec.backend):
                        print(f"{IDLE_SCALING:18} {spec.name:16} K={k:<6,} ", end="", flush=True)
                        result = run_safely(
                            lambda spec=spec, k=k: measure(
                                spec, idle_workload, settings, IDLE_CLIENTS, idle=k
                            ),
                            IDLE_SCALING,
                            spec.name,
                        )
                        result.idle = k
                        result.round = round_no
                        results.append(result)
                        print(summary(result), flush=True)
    except KeyboardInterrupt:
        print("\ninterrupted: stopping every process started", file=sys.stderr)
        stop_everything()
        return 130
    finally:
        stop_everything()
        if args.keep_logs:
            print(f"logs kept in {settings.log_dir}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    loads[1] = load_average()

    all_results = results
    results = best_of_rounds(results)
    idle_rows = [r for r in results if r.workload == IDLE_SCALING]
    chart = None
    if idle_rows and chart_path is not None and draw_chart(idle_rows, chart_path):
        chart = chart_path
    tls_results = [r for r in results if r.workload in TLS_WORKLOAD_NAMES]
    plain_results = [r for r in results if r.workload not in TLS_WORKLOAD_NAMES]
    texts = []  # (section, text): the TLS rows have a section of their own
    if plain_results or not tls_results:
        text = report(
            plain_results,
            chosen,
            settings,
            command,
            started,
            (loads[0], loads[1]),
            chart,
            first_revision,
        )
        texts.append((SECTION, text))
    if tls_results:
        text = tls_report(
            tls_results, chosen, settings, command, started, (loads[0], loads[1]), first_revision
        )
        texts.append((TLS_SECTION, text))
    for _, text in texts:
        print()
        print(text)
    if output is not None:
        for section, text in texts:
            write_section(output, section, text)
        print(f"\nwrote {output}" + (f" and {chart}" if chart else ""), file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in all_results], indent=1))
    return 0


def best_of_rounds(results: list[Result]) -> list[Result]:
    """One row per (workload, server, K): the round with the most requests/s."""
    best: dict[tuple[str, str, int], Result] = {}
    for r in results:
        key = (r.workload, r.server, r.idle)
        kept = best.get(key)
        if kept is None or (kept.failure and not r.failure) or (not r.failure and r.rps > kept.rps):
            best[key] = r
    return list(best.values())


def idle_counts_for(backend: str) -> list[int]:
    """K values a backend can hold beside wrk's connections (select: below FD_SETSIZE)."""
    limit = backends.backend_class(backend).fd_limit
    if limit is None:
        return list(IDLE_COUNTS)
    fitting = limit - IDLE_CLIENTS - FD_MARGIN
    counts = [k for k in IDLE_COUNTS if k <= fitting]
    if fitting > counts[-1]:
        counts.append(fitting // 10 * 10)
    return counts


def summary(result: Result) -> str:
    if result.failure:
        return "failed: " + result.failure.splitlines()[0][:200]
    return (
        f"{result.rps:>10,.0f} req/s  p50 {fmt(result.p50_ms, 2):>7} ms  "
        f"p99 {fmt(result.p99_ms, 2):>7} ms  {fmt(result.cpu_us, 1):>7} µs/req  "
        f"{result.peak_rss_kib / 1024:6.1f} MiB  wrk {fmt(result.client_cpu):>3}%  "
        f"errors {result.errors}"
    )


if __name__ == "__main__":
    sys.exit(main())
