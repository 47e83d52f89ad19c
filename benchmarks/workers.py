#!/usr/bin/env python3
"""How `selserve --workers N` behaves: how evenly the kernel spreads requests over
the workers, and what a client hammering the server sees during reloads.

Balance: a server with N workers and `--stats-path` takes (a) `Connection: close`
requests one after another from one client, and (b) `wrk -c20` keep-alive load; its
own counters (`requests_by_worker`, summed over the workers through the scoreboard)
say who answered how many.

Reload: `wrk --latency -c20` runs for DURATION seconds twice against the same kind
of server: once undisturbed, and once with a SIGHUP to the supervisor every
RELOAD_EVERY seconds (a whole new set of workers each time).  Compared: requests,
socket errors, non-2xx answers, p99 and worst latency.

Every address is loopback; every process started here is stopped by its PID and
reaped, and every wait is bounded.

    .venv/bin/python benchmarks/workers.py                # about 40 s
    .venv/bin/python benchmarks/workers.py --workers 4 --duration 20
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WRK = shutil.which("wrk") or "/usr/bin/wrk"
HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


class Server:
    """`selserve selserve.demo:app --workers N --stats-path /_stats` on a free port."""

    def __init__(self, workers: int) -> None:
        self.port = free_port()
        argv = [
            sys.executable, "-m", "selserve", "selserve.demo:app", "--workers", str(workers),
            "--bind", f"{HOST}:{self.port}", "--stats-path", "/_stats", "--log-level", "warning",
        ]  # fmt: skip
        self.proc = subprocess.Popen(argv, cwd=ROOT, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                self.get("/")
                return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise SystemExit("selserve did not start within 30 s")

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/"

    def get(self, path: str, close: bool = False) -> bytes:
        conn = http.client.HTTPConnection(HOST, self.port, timeout=5)
        try:
            conn.request("GET", path, headers={"Connection": "close"} if close else {})
            return conn.getresponse().read()
        finally:
            conn.close()

    def per_worker(self) -> list[int]:
        time.sleep(1.2)  # every worker publishes its counts once a second
        stats = json.loads(self.get("/_stats"))
        return sorted(stats["requests_by_worker"].values(), reverse=True)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def wrk(url: str, duration: float, during=None) -> dict:
    """Run wrk; `during(seconds_since_start)` is called every 0.1 s meanwhile."""
    argv = [WRK, "-t1", "-c20", f"-d{duration:.0f}s", "--timeout", "5s", "--latency", url]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    started = time.monotonic()
    try:
        while proc.poll() is None and time.monotonic() - started < duration + 30:
            if during is not None:
                during(time.monotonic() - started)
            time.sleep(0.1)
        out = proc.communicate(timeout=30)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return parse_wrk(out)


def parse_wrk(out: str) -> dict:
    def number(pattern: str) -> int:
        found = re.search(pattern, out)
        return int(found[1]) if found else 0

    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", out)
    worst = re.search(r"Latency\s+\S+\s+\S+\s+([\d.]+)(us|ms|s)\b", out)
    return {
        "requests": number(r"(\d+) requests in"),
        "socket_errors": sum(map(int, errors.groups())) if errors else 0,
        "non_2xx": number(r"Non-2xx or 3xx responses: (\d+)"),
        "p99_ms": _ms(p99),
        "max_ms": _ms(worst),
    }


def _ms(found) -> float:
    if not found:
        return 0.0
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[found[2]]
    return round(float(found[1]) * scale, 2)


def balance(workers: int, sequential: int, duration: float) -> None:
    server = Server(workers)
    try:
        for _ in range(sequential):
            server.get("/", close=True)
        closes = server.per_worker()
        print(f"\n{sequential} sequential Connection: close requests, {workers} workers:")
        print("  " + share(closes))
    finally:
        server.stop()
    server = Server(workers)
    try:
        wrk(server.url, duration)
        loaded = server.per_worker()
        print(f"wrk -c20 keep-alive for {duration:.0f} s, {workers} workers:")
        print("  " + share(loaded))
    finally:
        server.stop()


def share(counts: list[int]) -> str:
    total = sum(counts) or 1
    return ", ".join(f"{c} ({100 * c / total:.1f}%)" for c in counts)


def reloads(workers: int, duration: float, every: float) -> None:
    rows = []
    for label, reloading in (("no reload", False), (f"SIGHUP every {every:.0f} s", True)):
        server = Server(workers)
        sent = []

        def during(elapsed: float, server=server, sent=sent, reloading=reloading) -> None:
            due = int(elapsed // every)
            if reloading and due > len(sent) and elapsed < duration - 1:
                server.proc.send_signal(signal.SIGHUP)
                sent.append(elapsed)

        try:
            result = wrk(server.url, duration, during)
        finally:
            server.stop()
        rows.append((label, len(sent), result))
    print(f"\nwrk -t1 -c20 -d{duration:.0f}s --latency, {workers} workers:")
    print("| run | reloads | requests | socket errors | non-2xx | p99 | worst |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for label, count, r in rows:
        print(
            f"| {label} | {count} | {r['requests']:,} | {r['socket_errors']} | {r['non_2xx']} "
            f"| {r['p99_ms']} ms | {r['max_ms']} ms |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run")
    parser.add_argument("--reload-every", type=float, default=3.0, help="seconds between HUPs")
    parser.add_argument("--sequential", type=int, default=3000, help="close requests in a row")
    args = parser.parse_args()
    if not Path(WRK).exists():
        raise SystemExit("wrk is needed (Debian: apt-get install wrk)")
    balance(args.workers, args.sequential, args.duration)
    reloads(args.workers, args.duration, args.reload_every)


if __name__ == "__main__":
    main()
