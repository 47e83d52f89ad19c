#!/usr/bin/env python3
"""The cost of one keep-alive hello request, counted instead of timed.

wrk figures on a shared machine move by 10-20% from one run to the next, more
than most changes to the hot path are worth.  This script counts what a
request costs, which does not depend on the neighbours:

- Python opcodes per request (`sys.settrace` with opcode events): the work the
  interpreter does for us;
- with `--callgrind`, machine instructions per request in user space
  (`valgrind --tool=callgrind`, the interpreter, C extensions and libc
  included; the kernel's share is not counted): the same number on every run.

The requests are those of `compare.py`'s workloads, with the head wrk sends:
`GET /` answered by the demo app (`native`) and by `hello_wsgi.py` through the
WSGI adapter (`wsgi`) on one keep-alive connection; the same with `Connection:
close`, a new connection per request (`close`); the demo's chunked stream of
64 x 1 KiB (`stream`); and `native` and `wsgi` with the head of compare.py's
hello-browser, Host and the 12 fields Chromium sends (`browser`,
`wsgi-browser`).  An in-process server answers over socketpairs, one loop
turn per request.  `--baseline REV` measures that git revision of selserve too,
side by side, so a change to the hot path is quoted against what it changes:

    .venv/bin/python benchmarks/hotpath.py --baseline main~3 --callgrind
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from browser_head import BROWSER_FIELDS
from revision import unpack

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "benchmarks"
HEAD = b"Host: 127.0.0.1:8000\r\nUser-Agent: wrk\r\nAccept: */*\r\n"
# compare.py's hello-browser: Host and the 12 fields Chromium sends for a page.
BROWSER_HEAD = b"Host: 127.0.0.1:8000\r\n" + b"".join(
    field.encode("latin-1") + b"\r\n" for field in BROWSER_FIELDS
)
REQUESTS = {
    "native": b"GET / HTTP/1.1\r\n" + HEAD + b"\r\n",
    "wsgi": b"GET / HTTP/1.1\r\n" + HEAD + b"\r\n",
    "close": b"GET / HTTP/1.1\r\n" + HEAD + b"Connection: close\r\n\r\n",
    "stream": b"GET /stream?n=64&size=1024 HTTP/1.1\r\n" + HEAD + b"\r\n",
    "browser": b"GET / HTTP/1.1\r\n" + BROWSER_HEAD + b"\r\n",
    "wsgi-browser": b"GET / HTTP/1.1\r\n" + BROWSER_HEAD + b"\r\n",
}
KINDS = tuple(REQUESTS)
WARM_UP = 200
TRACED = 200  # requests traced for the opcode count
CALLGRIND_RUNS = (1_000, 3_000)  # the difference between the two runs is the per-request cost


# --------------------------------------------------------------------------- child


def serve_requests(kind: str, count: int, trace: bool) -> float | None:
    """In this process (selserve importable from sys.path): answer `count` requests
    after a warm-up; with `trace`, return Python opcodes per request."""
    from selserve.config import Config
    from selserve.server import Server, as_native

    if kind.startswith("wsgi"):
        sys.path.insert(0, str(BENCH_DIR))
        from hello_wsgi import app
    else:
        from selserve.demo import app

    # threads=0: the app answers within the loop turn that read its request (what is
    # measured here); WSGI apps would otherwise get a thread pool.
    extra = json.loads(os.environ.get("HOTPATH_SETTINGS", "{}"))  # (--setting)
    config = Config(
        binds=["127.0.0.1:0"], keepalive_timeout=300, log_level="warning", threads=0, **extra
    )
    server = Server(as_native(app, config), config)
    server._resume_accepting()  # (no listeners) as while serving: not paused at the cap
    turn = server.loop.run_once
    request = REQUESTS[kind]
    peer, local = ("127.0.0.1", 40000), ("127.0.0.1", 8000)

    def answer(theirs: socket.socket) -> None:
        first = theirs.recv(1 << 20)
        if not first.startswith(b"HTTP/1.1 200 "):
            raise SystemExit("not answered 200")
        if kind == "stream":
            while not first.endswith(b"0\r\n\r\n"):
                first = theirs.recv(1 << 20)

    if kind == "close":

        def one() -> None:
            ours, theirs = socket.socketpair()
            with theirs:
                theirs.send(request)
                server.accepted(ours, peer, local)  # reads and answers at once
                # The answer may leave at the end of a turn: one that does not wait.
                server.loop.call_soon(int)
                turn()
                answer(theirs)
    else:
        ours, theirs = socket.socketpair()
        server.accepted(ours, peer, local)

        def one() -> None:
            theirs.send(request)
            turn()
            answer(theirs)

    for _ in range(WARM_UP):
        one()
    if not trace:
        for _ in range(count):
            one()
        return None
    opcodes = 0

    def tracer(frame, event, arg):
        nonlocal opcodes
        frame.f_trace_opcodes = True
        if event == "opcode":
            opcodes += 1
        return tracer

    sys.settrace(tracer)
    try:
        for _ in range(count):
            one()
    finally:
        sys.settrace(None)
    return opcodes / count


# --------------------------------------------------------------------------- parent


def child_argv(source: Path, kind: str, count: int, trace: bool) -> list[str]:
    argv = [sys.executable, __file__, "--child", kind, str(count), str(source)]
    return argv + (["--trace"] if trace else [])


def env_for(source: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(source), env.get("PYTHONPATH")]))
    env["PYTHONHASHSEED"] = "0"  # the same dict layouts, run after run
    return env


def opcodes_per_request(source: Path, kind: str) -> float:
    done = subprocess.run(
        child_argv(source, kind, TRACED, True),
        env=env_for(source),
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return float(done.stdout.split()[-1])


def instructions(source: Path, kind: str, count: int) -> int:
    with tempfile.TemporaryDirectory() as scratch:
        done = subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={scratch}/out",
                *child_argv(source, kind, count, False),
            ],
            env=env_for(source),
            capture_output=True,
            text=True,
            timeout=1800,
            check=True,
        )
    found = re.search(r"Collected : (\d+)", done.stderr)
    if found is None:
        raise SystemExit(f"no instruction count from callgrind:\n{done.stderr[-2000:]}")
    return int(found[1])


def instructions_per_request(source: Path, kind: str) -> float:
    low, high = CALLGRIND_RUNS
    return (instructions(source, kind, high) - instructions(source, kind, low)) / (high - low)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", metavar="REV", help="also measure this git revision")
    parser.add_argument(
        "--callgrind", action="store_true", help="count instructions too (valgrind; minutes)"
    )
    parser.add_argument("--only", nargs="+", choices=KINDS, help="these workloads only")
    parser.add_argument(
        "--setting",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a Config setting for the measured server, e.g. metrics_path=/metrics "
        "(repeatable; the baseline must know it too)",
    )
    parser.add_argument("--child", nargs=3, metavar=("KIND", "N", "SOURCE"), help=argparse.SUPPRESS)
    parser.add_argument("--trace", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        kind, count, _ = args.child
        result = serve_requests(kind, int(count), args.trace)
        if result is not None:
            print(result)
        return 0
    settings = dict(item.split("=", 1) for item in args.setting)
    os.environ["HOTPATH_SETTINGS"] = json.dumps(settings)  # (children inherit it)
    if args.callgrind and shutil.which("valgrind") is None:
        raise SystemExit("--callgrind needs valgrind (Debian: apt-get install valgrind)")
    with tempfile.TemporaryDirectory(prefix="selserve-hotpath-") as scratch:
        trees = [("current", ROOT)]
        if args.baseline:
            trees.insert(0, (unpack(args.baseline, Path(scratch)), Path(scratch)))
        rows = []
        kinds = args.only or KINDS
        for kind in kinds:
            for name, source in trees:
                opcodes = opcodes_per_request(source, kind)
                instr = instructions_per_request(source, kind) if args.callgrind else None
                rows.append((kind, name, opcodes, instr))
    print("| workload | selserve | Python opcodes | vs first | instructions | vs first |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for kind in kinds:
        mine = [row for row in rows if row[0] == kind]
        first = mine[0]
        for _, name, opcodes, instr in mine:
            ratio = f"{opcodes / first[2]:.3f}×"
            shown = f"{instr:,.0f}" if instr is not None else "-"
            instr_ratio = f"{instr / first[3]:.3f}×" if instr is not None else "-"
            print(f"| {kind} | {name} | {opcodes:,.0f} | {ratio} | {shown} | {instr_ratio} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
