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

A full run rewrites its section of `docs/benchmarks.md`; `--servers` or `--count` make it a
partial run that only prints, unless `--output` is given. Loopback only; every process it
starts is stopped by PID and reaped, also on Ctrl-C.

    .venv/bin/python benchmarks/idle_memory.py
    .venv/bin/python benchmarks/idle_memory.py --servers selserve-epoll --count 2000
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import json
import resource
import select
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import compare  # the sibling script: process handling, server command lines, report file
from compare import BENCH_DIR, HOST, SERVER_CPU, Managed, status_kib

from selserve import backends

DEFAULT_COUNT = 10_000
WARMUP_REQUESTS = 20
HELPER_TIMEOUT = 300.0  # seconds the helper gets to open every connection
SETTLE_TIMEOUT = 20.0  # seconds RSS gets to stop moving after the last connection
SETTLE_STEP = 0.5
SECTION = "idle_memory.py"
FD_MARGIN = 64  # fds a server needs besides its connections


@dataclass
class Measurement:
    server: str
    held: int = 0
    before_kib: int = 0
    after_kib: int = 0
    note: str = ""

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
        found.append(Candidate(f"selserve-{name}", argv, True, f"selserve, {name} backend", unable))
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


def warm_up(port: int) -> None:
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        for _ in range(WARMUP_REQUESTS):
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


def measure(candidate: Candidate, count: int, log_dir: Path) -> Measurement:
    result = Measurement(candidate.name)
    port = compare.free_port()
    argv = [part.replace("{port}", str(port)) for part in candidate.argv]
    server = Managed(candidate.name, argv, cwd=BENCH_DIR, cpu=SERVER_CPU, log_dir=log_dir)
    try:
        compare.wait_accepting(server, port)
        warm_up(port)
        result.before_kib = settled_rss(server.tree)
        helper_argv = [sys.executable, str(BENCH_DIR / "idle_clients.py"), "--port", str(port)]
        helper_argv += ["--count", str(count), "--hold", "1800"]
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="RSS per idle keep-alive connection")
    parser.add_argument("--count", type=int, default=DEFAULT_COUNT, help="idle connections")
    parser.add_argument(
        "--servers",
        type=compare.comma_list,
        action="extend",
        metavar="NAME",
        help="only these servers (comma-separated; 'selserve' means every backend)",
    )
    parser.add_argument("--output", type=Path, help="Markdown file to update")
    args = parser.parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:  # the servers inherit it (selserve raises its own anyway)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.count + FD_MARGIN > hard:
        raise SystemExit(f"RLIMIT_NOFILE's hard limit {hard} is too low for {args.count}")
    partial = bool(args.servers) or args.count != DEFAULT_COUNT
    output = args.output or (None if partial else compare.DEFAULT_OUTPUT)
    command = "python benchmarks/idle_memory.py" + (" " + " ".join(argv or sys.argv[1:])).rstrip()

    chosen = []
    for c in candidates(args.count):
        wanted = not args.servers or any(
            w == c.name or (w == "selserve" and c.name.startswith("selserve")) for w in args.servers
        )
        if wanted and c.available:
            chosen.append(c)
    signal.signal(signal.SIGTERM, compare._terminate)
    # Ctrl-C stops the run cleanly even when started where SIGINT was ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    results = []
    first_revision = compare.revision()
    with tempfile.TemporaryDirectory(prefix="selserve-idle-memory-") as logs:
        try:
            for c in chosen:
                print(f"{c.name:16} ", end="", flush=True)
                if c.unable:
                    results.append(Measurement(c.name, note=c.unable))
                    print(c.unable, flush=True)
                    continue
                try:
                    result = measure(c, args.count, Path(logs))
                except (RuntimeError, OSError, ValueError, http.client.HTTPException) as exc:
                    result = Measurement(c.name, note=f"failed: {exc}".splitlines()[0][:200])
                results.append(result)
                if result.per_connection is None:
                    print(result.note, flush=True)
                else:
                    print(
                        f"{result.held:,} held, {result.before_kib / 1024:.1f} → "
                        f"{result.after_kib / 1024:.1f} MiB, "
                        f"{result.per_connection:,.0f} B per connection {result.note}",
                        flush=True,
                    )
        except KeyboardInterrupt:
            print("\ninterrupted: stopping every process started", file=sys.stderr)
            return 130
        finally:
            compare.stop_everything()
    text = report(results, chosen, args.count, command, first_revision)
    print()
    print(text)
    if output is not None:
        compare.write_section(output, SECTION, text)
        print(f"\nwrote {output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
