#!/usr/bin/env python3
"""Memory per idle keep-alive connection: RSS(after N connections that each completed one
request and stay open) − RSS(before), divided by N (default 10,000).

Servers: selserve on every backend that can hold N connections (select cannot: it watches
no fd at or above 1024) and, when installed, uvicorn (uvloop + httptools, the ASGI hello)
and waitress (4 threads, the WSGI hello; `--asyncore-use-poll` because its default
select() loop cannot hold fds past 1024 either). Each server gets a keep-alive timeout of
300 s, so no connection is closed while it is measured. The connections are held by
`idle_clients.py` in its own process, which raises RLIMIT_NOFILE to the hard limit.

"Before" is read after a short warm-up (a few requests on one connection, then closed), so
code paths and caches that every connection shares are already paid for. "After" is read
once the server holds every connection and its RSS has stopped moving. RSS is VmRSS from
/proc/PID/status, summed over the server's process tree.

`--tls` measures, for each server that speaks TLS (selserve on every backend that can hold
the connections, with `--certfile`/`--keyfile`; uvicorn with `--ssl-certfile`/
`--ssl-keyfile`), the same figure over TLS right after the plain one, in the same run and
at the same count (default 5,000): one EC P-256 certificate (CN=localhost, SAN
IP:127.0.0.1) made by the `openssl` CLI for the run; each connection is held by this
script's own helper mode (`--tls-clients`, a process of its own like `idle_clients.py`),
which completes a full handshake (no session resumed), one `GET /` and stays idle. Its
result goes to the `tls` section of `docs/benchmarks.md`.

A full run rewrites its section of `docs/benchmarks.md`; `--servers` or `--count` make it a
partial run that only prints, unless `--output` is given. Loopback only; every process it
starts is stopped by PID and reaped, also on Ctrl-C.

    .venv/bin/python benchmarks/idle_memory.py
    .venv/bin/python benchmarks/idle_memory.py --servers selserve-epoll --count 2000
    .venv/bin/python benchmarks/idle_memory.py --tls --servers selserve-epoll,uvicorn
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import json
import os
import resource
import select
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import compare  # the sibling script: process handling, server command lines, report file
import idle_clients  # the sibling helper: the plain connections, and how they are read
from compare import BENCH_DIR, HOST, SERVER_CPU, Managed, status_kib

from selserve import backends

DEFAULT_COUNT = 10_000
DEFAULT_TLS_COUNT = 5_000  # each a full handshake from one Python client: well under a minute
TLS_WARMUP_HANDSHAKES = 5
WARMUP_REQUESTS = 20
HELPER_TIMEOUT = 300.0  # seconds the helper gets to open every connection
SETTLE_TIMEOUT = 20.0  # seconds RSS gets to stop moving after the last connection
SETTLE_STEP = 0.5
SECTION = "idle_memory.py"
TLS_SECTION = "idle_memory.py tls"
FD_MARGIN = 64  # fds a server needs besides its connections


@dataclass
class Measurement:
    server: str
    held: int = 0
    before_kib: int = 0
    after_kib: int = 0
    note: str = ""
    tls: bool = False
    seconds: float = 0.0  # the helper's time to open every connection

    @property
    def per_connection(self) -> float | None:
        if not self.held:
            return None
        return (self.after_kib - self.before_kib) * 1024 / self.held


@dataclass
class Candidate:
    name: str
    argv: list[str]
    available: bool
    note: str
    unable: str = ""  # why this server cannot hold the connections at all
    # what makes it serve TLS ({certfile}, {keyfile} filled in); empty: it cannot
    tls_args: list[str] = field(default_factory=list)


def candidates(count: int, port_placeholder: str = "{port}") -> list[Candidate]:
    found = []
    for name in backends.available():
        limit = backends.backend_class(name).fd_limit
        argv = [sys.executable, "-m", "selserve", "selserve.demo:app", "--backend", name]
        argv += ["--bind", f"{HOST}:{port_placeholder}", "--keepalive-timeout", "300"]
        argv += ["--log-level", "warning"]
        unable = ""
        if limit is not None and count + FD_MARGIN > limit:
            unable = f"cannot watch fds at or above {limit}"
        found.append(
            Candidate(
                f"selserve-{name}",
                argv,
                True,
                f"selserve, {name} backend",
                unable,
                ["--certfile", "{certfile}", "--keyfile", "{keyfile}"],
            )
        )
    found.append(
        Candidate(
            "uvicorn",
            [
                sys.executable,
                "-m",
                "uvicorn",
                "--loop=uvloop",
                "--http=httptools",
                "--workers=1",
                "--no-access-log",
                "--log-level=warning",
                "--timeout-keep-alive=300",
                f"--host={HOST}",
                f"--port={port_placeholder}",
                "hello_asgi:app",
            ],
            compare.uvicorn_available(),
            "uvicorn --loop uvloop --http httptools, --timeout-keep-alive 300",
            tls_args=["--ssl-certfile={certfile}", "--ssl-keyfile={keyfile}"],
        )
    )
    found.append(
        Candidate(
            "waitress",
            [
                sys.executable,
                "-m",
                "waitress",
                "--threads=4",
                f"--listen={HOST}:{port_placeholder}",
                "--channel-timeout=300",
                f"--connection-limit={count + FD_MARGIN}",
                "--asyncore-use-poll",
                "hello_wsgi:app",
            ],
            compare.installed("waitress")(),
            "waitress, 4 threads, --channel-timeout 300, --asyncore-use-poll",
        )
    )
    return found


def warm_up(port: int, tls_context: ssl.SSLContext | None = None) -> None:
    """A few requests on one connection; over TLS, a few more handshakes besides."""
    connections = 1 + (TLS_WARMUP_HANDSHAKES if tls_context is not None else 0)
    for index in range(connections):
        if tls_context is not None:
            conn = http.client.HTTPSConnection(HOST, port, timeout=10, context=tls_context)
        else:
            conn = http.client.HTTPConnection(HOST, port, timeout=10)
        try:
            for _ in range(WARMUP_REQUESTS if index == 0 else 1):
                conn.request("GET", "/")
                response = conn.getresponse()
                response.read()
                if response.status != 200:
                    raise RuntimeError(f"warm-up GET / answered {response.status}")
        finally:
            conn.close()


def settled_rss(pids_of, timeout: float = SETTLE_TIMEOUT) -> int:
    """VmRSS once two readings SETTLE_STEP apart agree within 1% (or at the timeout)."""
    last = status_kib(pids_of(), "VmRSS")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(SETTLE_STEP)
        now = status_kib(pids_of(), "VmRSS")
        if abs(now - last) <= last // 100:
            return now
        last = now
    return last


def measure(
    candidate: Candidate, count: int, log_dir: Path, scratch: Path | None = None
) -> Measurement:
    """RSS per idle connection; over TLS when `scratch` (holding the run's certificate,
    `compare.tls_files`) is given."""
    tls = scratch is not None
    result = Measurement(candidate.name, tls=tls)
    port = compare.free_port()
    argv = [part.replace("{port}", str(port)) for part in candidate.argv]
    tls_context = None
    if tls:
        cert, key = compare.tls_files(scratch)
        argv += [
            part.replace("{certfile}", str(cert)).replace("{keyfile}", str(key))
            for part in candidate.tls_args
        ]
        tls_context = compare.tls_client_context(scratch)
    name = f"{candidate.name}-tls" if tls else candidate.name
    server = Managed(name, argv, cwd=BENCH_DIR, cpu=SERVER_CPU, log_dir=log_dir)
    try:
        compare.wait_accepting(server, port)
        warm_up(port, tls_context)
        result.before_kib = settled_rss(server.tree)
        if tls:
            helper_argv = [sys.executable, str(Path(__file__).resolve()), "--tls-clients"]
            helper_argv += ["--cafile", str(compare.tls_files(scratch)[0])]
        else:
            helper_argv = [sys.executable, str(BENCH_DIR / "idle_clients.py")]
        helper_argv += ["--port", str(port), "--count", str(count), "--hold", "1800"]
        helper = Managed(
            "idle-clients",
            helper_argv,
            cpu=compare.CLIENT_CPU,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            log_dir=log_dir,
        )
        try:
            ready, _, _ = select.select([helper.proc.stdout], [], [], HELPER_TIMEOUT)
            line = helper.proc.stdout.readline() if ready else b""
            if not line:
                raise RuntimeError(f"idle-connection helper did not report:\n{helper.log_tail()}")
            report = json.loads(line)
            result.held = report["open"]
            result.seconds = report.get("seconds", 0.0)
            if report["failed"]:
                result.note = f"{report['failed']} of {count} failed: {report['statuses']}"
            result.after_kib = settled_rss(server.tree)
            if not server.alive():
                raise RuntimeError(f"server exited:\n{server.log_tail()}")
        finally:
            helper.stop()
    finally:
        server.stop()
    return result


# --------------------------------------------------------------------------- TLS clients


def open_tls_connections(
    port: int, count: int, context: ssl.SSLContext
) -> tuple[list[ssl.SSLSocket], Counter]:
    """`count` TLS connections, one after the other: each a full handshake (no session is
    offered again) and one `GET /` read to its end; those answered 200 are kept."""
    request = f"GET / HTTP/1.1\r\nHost: {HOST}:{port}\r\n\r\n".encode("latin-1")
    held: list[ssl.SSLSocket] = []
    outcomes: Counter = Counter()
    for _ in range(count):
        try:
            raw = socket.create_connection((HOST, port), timeout=idle_clients.IO_TIMEOUT)
        except OSError as exc:
            outcomes[type(exc).__name__] += 1
            continue
        try:
            sock = context.wrap_socket(raw, server_hostname=HOST)
            sock.sendall(request)
            status = idle_clients.read_status(sock)
        except (OSError, ValueError) as exc:
            outcomes[type(exc).__name__] += 1
            idle_clients.close_with_reset(raw)
            continue
        outcomes[str(status)] += 1
        if status == 200:
            held.append(sock)
        else:
            idle_clients.close_with_reset(sock)
    return held, outcomes


def tls_clients_main(args: argparse.Namespace) -> int:
    """The helper mode: as `idle_clients.py` (one JSON line once every connection is open,
    then hold them until stdin closes, SIGTERM or --hold), over TLS."""
    limit = idle_clients.raise_open_file_limit()
    if args.count + 64 > limit:
        raise SystemExit(f"RLIMIT_NOFILE is {limit}: too low for {args.count} connections")
    stop = False

    def on_term(signum, frame):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    context = ssl.create_default_context(cafile=args.cafile)
    started = time.monotonic()
    held, outcomes = open_tls_connections(args.port, args.count, context)
    versions = Counter(sock.version() for sock in held)
    report = {
        "open": len(held),
        "failed": args.count - len(held),
        "statuses": dict(outcomes),
        "seconds": round(time.monotonic() - started, 3),
        "versions": dict(versions),
        "resumed": sum(sock.session_reused for sock in held),
    }
    print(json.dumps(report), flush=True)
    deadline = time.monotonic() + min(args.hold, idle_clients.MAX_HOLD)
    try:
        while not stop and time.monotonic() < deadline:
            ready, _, _ = select.select([sys.stdin], [], [], 0.5)
            if ready and not sys.stdin.buffer.read1(4096):
                break  # stdin closed: the parent is done with us
    finally:
        for sock in held:
            idle_clients.close_with_reset(sock)
    return 0


# --------------------------------------------------------------------------- report


def table(results: list[Measurement], count: int) -> list[str]:
    lines = [
        "| server | connections held | RSS before MiB | RSS after MiB | per connection |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        if r.per_connection is None:
            lines.append(f"| {r.server} | – | | | {r.note} |")
            continue
        lines.append(
            f"| {r.server} | {r.held:,} | {r.before_kib / 1024:.1f} | {r.after_kib / 1024:.1f} "
            f"| **{r.per_connection / 1024:.2f} KiB** ({r.per_connection:,.0f} B) |"
        )
    return lines


def report(
    results: list[Measurement],
    used: list[Candidate],
    count: int,
    command: str,
    first_revision: str,
) -> str:
    info = compare.machine()
    now = datetime.datetime.now(datetime.UTC)
    out = [
        "## Memory per idle keep-alive connection",
        "",
        f"Produced by `{command}` on {now:%Y-%m-%d %H:%M} UTC from selserve "
        f"{compare.revisions_text(first_revision, info['revision'])}, on a machine with "
        f"{info['nproc']} cores ({info['cpu']}), Linux {info['kernel']}; {info['versions']}.",
        "",
        f"(RSS with {count:,} idle keep-alive connections, each after one completed `GET /`) − "
        "(RSS after a warm-up of a few requests), divided by the connections held. RSS is "
        "VmRSS of the server process; the connections are held by a separate process "
        "(`benchmarks/idle_clients.py`). Servers:",
        "",
    ]
    out += [f"- **{c.name}**: {c.note}" for c in used]
    out += ["", *table(results, count), ""]
    notes = [r for r in results if r.note and r.per_connection is not None]
    if notes:
        out += ["Notes:", ""] + [f"- {r.server}: {r.note}" for r in notes] + [""]
    return "\n".join(out)


def per_kib(m: Measurement | None) -> str:
    if m is None:
        return "not run"
    if m.per_connection is None:
        return m.note or "–"
    return f"{m.per_connection / 1024:.2f} KiB"


def bold(text: str, m: Measurement | None) -> str:
    return f"**{text}**" if m is not None and m.per_connection is not None else text


def tls_table(results: list[Measurement]) -> list[str]:
    lines = [
        "| server | connections held (plain / TLS) | RSS before → after, plain MiB "
        "| RSS before → after, TLS MiB | plain, per connection | TLS, per connection "
        "| TLS − plain | TLS ÷ plain |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name in dict.fromkeys(r.server for r in results):
        plain = next((r for r in results if r.server == name and not r.tls), None)
        tls = next((r for r in results if r.server == name and r.tls), None)
        both = [m for m in (plain, tls) if m is not None and m.per_connection is not None]

        def rss(m: Measurement | None) -> str:
            if m is None or m.per_connection is None:
                return "–"
            return f"{m.before_kib / 1024:.1f} → {m.after_kib / 1024:.1f}"

        held = " / ".join(
            f"{m.held:,}" if m is not None and m.per_connection is not None else "–"
            for m in (plain, tls)
        )
        extra = share = "–"
        if len(both) == 2:
            diff = tls.per_connection - plain.per_connection
            extra = f"**{diff / 1024:+.2f} KiB** ({diff:+,.0f} B)"
            share = f"{tls.per_connection / plain.per_connection:.2f}×"
        lines.append(
            f"| {name} | {held} | {rss(plain)} | {rss(tls)} | {per_kib(plain)} "
            f"| {bold(per_kib(tls), tls)} | {extra} | {share} |"
        )
    return lines


def tls_report(
    results: list[Measurement],
    used: list[Candidate],
    count: int,
    command: str,
    first_revision: str,
) -> str:
    info = compare.machine()
    now = datetime.datetime.now(datetime.UTC)
    out = [
        "### Memory per idle TLS keep-alive connection",
        "",
        f"Produced by `{command}` on {now:%Y-%m-%d %H:%M} UTC from selserve "
        f"{compare.revisions_text(first_revision, info['revision'])}, on a machine with "
        f"{info['nproc']} cores ({info['cpu']}), Linux {info['kernel']}; {info['versions']}; "
        f"OpenSSL: {compare.openssl_versions()}.",
        "",
        "As in *Memory per idle keep-alive connection* above: (RSS with N idle keep-alive "
        "connections, each after one completed `GET /`) − (RSS after a warm-up), divided by "
        f"the connections held, N = {count:,}; each server measured without TLS and then, "
        "in a fresh process, with it, back to back in one run. Over TLS each connection "
        "is a full TLS 1.3 handshake (Python's `ssl` client, the certificate verified, no "
        "session resumed), one `GET /` and then idle; the warm-up adds "
        f"{TLS_WARMUP_HANDSHAKES} handshakes. The connections are held by a separate "
        "process (`idle_memory.py --tls-clients`). The certificate is EC P-256, "
        "self-signed, CN=localhost, SAN IP:127.0.0.1, made for the run with `openssl "
        "req`. Servers:",
        "",
    ]
    for c in used:
        flags = " ".join(c.tls_args).replace("{certfile}", "cert.pem")
        out.append(f"- **{c.name}**: {c.note}; TLS: `{flags.replace('{keyfile}', 'key.pem')}`")
    out += ["", *tls_table(results), ""]
    notes = [r for r in results if r.note and r.per_connection is not None]
    timing = [r for r in results if r.seconds]
    if notes or timing:
        out += ["Notes:", ""]
        out += [
            f"- {r.server}{', TLS' if r.tls else ''}: {r.held:,} connections opened in "
            f"{r.seconds:.1f} s"
            for r in timing
        ]
        out += [f"- {r.server}{', TLS' if r.tls else ''}: {r.note}" for r in notes]
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="RSS per idle keep-alive connection")
    parser.add_argument(
        "--count",
        type=int,
        help=f"idle connections (default {DEFAULT_COUNT:,}; with --tls {DEFAULT_TLS_COUNT:,})",
    )
    parser.add_argument(
        "--tls",
        action="store_true",
        help="measure each server that speaks TLS without it and then with it, side by side",
    )
    # The helper mode that holds TLS connections (a process of its own, as idle_clients.py).
    parser.add_argument("--tls-clients", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--cafile", help=argparse.SUPPRESS)
    parser.add_argument("--hold", type=float, default=900.0, help=argparse.SUPPRESS)
    parser.add_argument(
        "--servers",
        type=compare.comma_list,
        action="extend",
        metavar="NAME",
        help="only these servers (comma-separated; 'selserve' means every backend)",
    )
    parser.add_argument("--output", type=Path, help="Markdown file to update")
    args = parser.parse_args(argv)
    default_count = DEFAULT_TLS_COUNT if args.tls else DEFAULT_COUNT
    if args.tls_clients:
        if args.port is None or args.count is None or not args.cafile:
            parser.error("--tls-clients needs --port, --count and --cafile")
        return tls_clients_main(args)
    if args.count is None:
        args.count = default_count
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:  # the servers inherit it (selserve raises its own anyway)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.count + FD_MARGIN > hard:
        raise SystemExit(f"RLIMIT_NOFILE's hard limit {hard} is too low for {args.count}")
    partial = bool(args.servers) or args.count != default_count
    output = args.output or (None if partial else compare.DEFAULT_OUTPUT)
    if args.tls and not os.access(compare.OPENSSL, os.X_OK):
        raise SystemExit("--tls needs the openssl CLI (Debian: openssl)")
    command = "python benchmarks/idle_memory.py" + (" " + " ".join(argv or sys.argv[1:])).rstrip()

    chosen = []
    for c in candidates(args.count):
        wanted = not args.servers or any(
            w == c.name or (w == "selserve" and c.name.startswith("selserve")) for w in args.servers
        )
        if wanted and c.available and (c.tls_args or not args.tls):
            chosen.append(c)
        elif wanted and c.available and args.servers:
            print(f"{c.name} does not serve TLS here: skipped", file=sys.stderr)
    signal.signal(signal.SIGTERM, compare._terminate)
    # Ctrl-C stops the run cleanly even when started where SIGINT was ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    results = []
    first_revision = compare.revision()
    with tempfile.TemporaryDirectory(prefix="selserve-idle-memory-") as logs:
        scratch = Path(logs) / "scratch"
        scratch.mkdir()
        if args.tls:
            compare.make_tls_files(scratch)
        try:
            for c in chosen:
                for tls in (False, True) if args.tls else (False,):
                    label = f"{c.name}{' TLS' if tls else ''}"
                    print(f"{label:20} ", end="", flush=True)
                    if c.unable:
                        results.append(Measurement(c.name, note=c.unable, tls=tls))
                        print(c.unable, flush=True)
                        continue
                    try:
                        result = measure(c, args.count, Path(logs), scratch if tls else None)
                    except (
                        RuntimeError,
                        OSError,
                        ValueError,
                        http.client.HTTPException,
                    ) as exc:
                        note = f"failed: {exc}".splitlines()[0][:200]
                        result = Measurement(c.name, note=note, tls=tls)
                    results.append(result)
                    if result.per_connection is None:
                        print(result.note, flush=True)
                    else:
                        print(
                            f"{result.held:,} held in {result.seconds:.1f} s, "
                            f"{result.before_kib / 1024:.1f} → "
                            f"{result.after_kib / 1024:.1f} MiB, "
                            f"{result.per_connection:,.0f} B per connection {result.note}",
                            flush=True,
                        )
        except KeyboardInterrupt:
            print("\ninterrupted: stopping every process started", file=sys.stderr)
            return 130
        finally:
            compare.stop_everything()
    if args.tls:
        text = tls_report(results, chosen, args.count, command, first_revision)
    else:
        text = report(results, chosen, args.count, command, first_revision)
    print()
    print(text)
    if output is not None:
        compare.write_section(output, TLS_SECTION if args.tls else SECTION, text)
        print(f"\nwrote {output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
