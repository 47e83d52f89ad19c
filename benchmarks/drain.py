#!/usr/bin/env python3
"""Stopping one of two selserve instances behind HAProxy under steady load: what do
the clients see?

Two instances of the demo app (`--proxy-protocol --health-path /healthz`, with the
given `--workers` and `--drain-delay`) sit behind HAProxy configured by
`deploy/haproxy.cfg`, as the docs give it.  `wrk --latency -c20` runs through
HAProxy for DURATION seconds; STOP_AT seconds in, the first instance gets SIGTERM.
Reported per drain delay: requests, socket errors, non-2xx answers, p99 and worst
latency, and how long the stopped instance took to exit.

Every address is loopback; every process started here is stopped by its PID and
reaped, and every wait is bounded.

    .venv/bin/python benchmarks/drain.py                      # about 30 s
    .venv/bin/python benchmarks/drain.py --workers 2 --drains 0 5
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from workers import HOST, ROOT, free_port, parse_wrk

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
WRK = shutil.which("wrk") or "/usr/bin/wrk"


def start(argv: list[str], env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        argv, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, env={**os.environ, **(env or {})},
    )  # fmt: skip


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_answering(port: int, timeout: float = 20.0) -> None:
    import http.client

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection(HOST, port, timeout=2)
            conn.request("GET", "/")
            if conn.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing answered on port {port} within {timeout:.0f} s")


def one_run(workers: int, drain: float, duration: float, stop_at: float) -> dict:
    ports = [free_port(), free_port()]
    front = free_port()
    apps = [
        start(
            [
                sys.executable,
                "-m",
                "selserve",
                "selserve.demo:app",
                "--bind",
                f"{HOST}:{port}",
                "--proxy-protocol",
                "--health-path",
                "/healthz",
                "--workers",
                str(workers),
                "--drain-delay",
                str(drain),
                "--log-level",
                "warning",
            ]
        )  # fmt: skip
        for port in ports
    ]
    balancer = None
    try:
        env = {"FRONT_PORT": str(front), "APP1_PORT": str(ports[0]), "APP2_PORT": str(ports[1])}
        balancer = start([HAPROXY, "-db", "-f", str(ROOT / "deploy" / "haproxy.cfg")], env)
        wait_answering(front)
        time.sleep(3)  # both instances in rotation (rise 2, checks every second)
        wrk = subprocess.Popen(
            [WRK, "-t1", "-c20", f"-d{duration:.0f}s", "--timeout", "5s", "--latency",
             f"http://{HOST}:{front}/"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        time.sleep(stop_at)
        stopped = time.monotonic()
        apps[0].send_signal(signal.SIGTERM)
        apps[0].wait(60)
        exit_after = time.monotonic() - stopped
        out = wrk.communicate(timeout=duration + 60)[0]
    finally:
        for proc in [*apps, *([balancer] if balancer else [])]:
            stop(proc)
    return {**parse_wrk(out), "exit_after_s": round(exit_after, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--drains", type=float, nargs="+", default=[0.0, 3.0])
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--stop-at", type=float, default=3.0)
    args = parser.parse_args()
    for tool in (HAPROXY, WRK):
        if not Path(tool).exists():
            raise SystemExit(f"{tool} is needed (Debian: apt-get install haproxy wrk)")
    print(
        f"wrk -t1 -c20 -d{args.duration:.0f}s through HAProxy, two instances with "
        f"--workers {args.workers}; SIGTERM to one at {args.stop_at:.0f} s"
    )
    print("| --drain-delay | requests | socket errors | non-2xx | p99 | worst | exit after |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for drain in args.drains:
        r = one_run(args.workers, drain, args.duration, args.stop_at)
        print(
            f"| {drain:g} s | {r['requests']:,} | {r['socket_errors']} | {r['non_2xx']} "
            f"| {r['p99_ms']} ms | {r['max_ms']} ms | {r['exit_after_s']} s |"
        )


if __name__ == "__main__":
    main()
