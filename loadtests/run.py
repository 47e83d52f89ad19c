"""Run the load tests in one command: start selserve, drive it with Locust, judge the run.

    python -m loadtests.run --backend epoll -u 30 -t 30s
    python -m loadtests.run --backend all -t 60s            # every backend, one after another
    python -m loadtests.run --tags demo misbehave static wsgi
    python -m loadtests.run --host http://127.0.0.1:8000    # a server you started yourself
    python -m loadtests.run --processes 2 -u 100            # the load from 2 Locust processes

For each backend it starts `python -m selserve APP --backend NAME` on a free loopback port
(with a short --header-timeout so that slowlorises are dropped within the run), runs Locust
headless in a subprocess, writes Locust's CSV files and HTML report into the report folder
it prints, stops the server (SIGTERM; it must exit 0) and prints requests/s, failures and
p50/p95/p99 per request type.  The exit status is 1 when a well-behaved user saw a failure,
a misbehaving user's check failed, user code raised, the server crashed or logged an error,
or the well-behaved p99 exceeded --max-p99-ms; 2 for a usage error; else 0.

Stdlib only: Locust (gevent, monkey-patching) only ever runs in its own process.  Every
process started here is stopped by its own pid (Locust by its own process group, which
holds its --processes workers) and reaped, whatever happens.  Locust imports this file too
(it loads every .py file in loadtests/); at import it does nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LOADTESTS = Path(__file__).resolve().parent
ROOT = LOADTESTS.parent
DEMO_APP = "selserve.demo:app"
TARGET_APP = "loadtests._target:app"  # the demo app with the load-test WSGI app at /wsgi
STATIC_PREFIX = "/static"
SERVER_HEADER_TIMEOUT = 2.0  # --header-timeout of the servers started here (s)
SELSERVE_HEADER_TIMEOUT = 10.0  # selserve's default, assumed for --host
READY_TIMEOUT = 15.0  # the server must accept connections within this long (s)
STOP_TIMEOUT = 20.0  # SIGTERM must end the server within this long (s), else SIGKILL
LOCUST_GRACE = 90.0  # Locust may take this much longer than --run-time before it is killed
LOG_TAIL = 30
USAGE_ERROR = 2
INTERRUPTED = 130
# Server log lines that fail a run: a traceback or an error is a bug under any load.
_BAD_LOG_LINE = re.compile(r"Traceback|\b(ERROR|CRITICAL)\b")
_RUN_TIME = re.compile(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s?)?\Z")


class UsageError(Exception):
    pass


# --------------------------------------------------------------------------- arguments


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.run",
        description="Start selserve, run the Locust load tests against it headless, write "
        "the reports and judge the run.",
        epilog="Tags: demo (api, stream, upload), misbehave (abort, slowloris, slowread), "
        "static, wsgi. Without --tags: the demo and misbehave users.",
    )
    target = parser.add_argument_group("target")
    target.add_argument(
        "--backend",
        default="auto",
        help="selserve --backend, or 'all' for each available backend in turn (default auto)",
    )
    target.add_argument(
        "--host", help="drive a running server at this http:// URL instead of starting one"
    )
    target.add_argument(
        "--app",
        help=f"APP for selserve (default {DEMO_APP}; {TARGET_APP} when wsgi users run)",
    )
    target.add_argument(
        "--header-timeout",
        type=float,
        help=f"the server's --header-timeout in s (default {SERVER_HEADER_TIMEOUT} for the "
        f"server started here; {SELSERVE_HEADER_TIMEOUT}, selserve's default, with --host)",
    )
    target.add_argument(
        "--server-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="one more selserve argument, e.g. --server-arg=--threads=4 (repeatable)",
    )
    load = parser.add_argument_group("load")
    load.add_argument("-u", "--users", type=int, default=30, help="simulated users (30)")
    load.add_argument("-r", "--spawn-rate", type=float, help="users started per s (all at once)")
    load.add_argument("-t", "--run-time", default="30s", help="e.g. 15s, 1m, 1h30m (30s)")
    load.add_argument(
        "--processes",
        type=int,
        default=1,
        metavar="N",
        help="Locust processes making the load: with N > 1, Locust's master and N worker "
        "processes on this machine; -1 for one per CPU (default 1: one process, which "
        "tops out at about one core's worth of requests)",
    )
    load.add_argument("--tags", nargs="+", default=[], help="run only users/tasks with a tag")
    load.add_argument("--exclude-tags", nargs="+", default=[], help="leave these tags out")
    load.add_argument(
        "--locust-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="one more Locust argument, e.g. --locust-arg=--processes=2 (repeatable)",
    )
    verdict = parser.add_argument_group("report and verdict")
    verdict.add_argument(
        "--out", help="report folder (default loadtest-reports/<time>[/<backend>])"
    )
    verdict.add_argument(
        "--max-p99-ms", type=float, help="fail when the well-behaved p99 exceeds this (ms)"
    )
    verdict.add_argument(
        "--allow-misbehaving-failures",
        action="store_true",
        help="report failed misbehaving-user checks without failing the run",
    )
    parser.add_argument(
        "--write-static-tree",
        metavar="DIR",
        help="only write the static files the static users expect into DIR, and exit",
    )
    return parser


def run_seconds(text: str) -> float:
    """Locust's --run-time syntax (1h30m, 90s, 90) in seconds."""
    match = _RUN_TIME.match(text.strip())
    if not text.strip() or not match or not any(match.groups()):
        raise UsageError(f"--run-time {text!r}: use e.g. 15s, 2m or 1h30m")
    hours, minutes, seconds = (int(g or 0) for g in match.groups())
    return float(hours * 3600 + minutes * 60 + seconds)


def selected_tags(args) -> set[str]:
    return set(args.tags) - set(args.exclude_tags)


def backends_to_run(args) -> list[str]:
    if args.host:
        return ["external"]
    sys.path.insert(0, str(ROOT))
    from selserve import backends

    available = list(backends.available())
    if args.backend == "all":
        return available
    if args.backend != "auto" and args.backend not in available:
        raise UsageError(
            f"backend {args.backend!r} is not available here; available: {', '.join(available)}"
        )
    return [args.backend]


# --------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def tail(path: Path, lines: int = LOG_TAIL) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError as exc:
        return f"<{path} unreadable: {exc}>"
    return "\n".join(text) or "<empty>"


class Server:
    """One selserve subprocess: started in its own session, stopped by its pid."""

    def __init__(self, argv: list[str], address: tuple[str, int], log_path: Path) -> None:
        self.argv = argv
        self.address = address
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None
        self.returncode: int | None = None
        self.killed = False

    def start(self) -> None:
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.argv,
                cwd=ROOT,
                env=child_env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"selserve exited with status {self.proc.returncode} at start:\n"
                    f"{' '.join(self.argv)}\n{tail(self.log_path)}"
                )
            try:
                with socket.create_connection(self.address, timeout=1.0):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"selserve did not accept connections within {READY_TIMEOUT} s")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> int | None:
        """SIGTERM, wait, SIGKILL if need be; the exit status.  Idempotent."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.killed = True
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.returncode = self.proc.returncode
        return self.returncode


def run_locust(argv: list[str], log_path: Path, timeout: float) -> tuple[int | None, bool]:
    """Run Locust to the end (or kill its process group after `timeout`): (status, killed)."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=child_env(),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    killed = False
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        killed = True
    finally:
        if proc.poll() is None:  # timed out, or we are being interrupted
            for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, sig)  # its own group: it and its --processes workers
                try:
                    proc.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
    return proc.returncode, killed


# --------------------------------------------------------------------------- one run


def server_argv(args, backend: str, port: int, static_root: str | None) -> list[str]:
    tags = selected_tags(args)
    app = args.app or (TARGET_APP if "wsgi" in tags else DEMO_APP)
    argv = [sys.executable, "-m", "selserve", app, "--bind", f"127.0.0.1:{port}"]
    if backend != "auto":
        argv += ["--backend", backend]
    argv += ["--header-timeout", str(args.header_timeout or SERVER_HEADER_TIMEOUT)]
    if static_root is not None:
        argv += ["--static", f"{STATIC_PREFIX}={static_root}:listing"]
    return argv + args.server_arg


def locust_argv(args, host: str, out: Path, header_timeout: float) -> list[str]:
    argv = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOADTESTS),
        "--headless",
        "--only-summary",
        "-u",
        str(args.users),
        "-r",
        str(args.spawn_rate or args.users),
        "-t",
        args.run_time,
        "--host",
        host,
        "--csv",
        str(out / "locust"),
        "--html",
        str(out / "report.html"),
        "--summary-json",
        str(out / "summary.json"),
        "--server-header-timeout",
        str(header_timeout),
    ]
    if args.processes != 1:
        argv += ["--processes", str(args.processes)]
    if args.tags:
        argv += ["--tags", *args.tags]
    if args.exclude_tags:
        argv += ["--exclude-tags", *args.exclude_tags]
    return argv + args.locust_arg


def run_one(args, backend: str, out: Path) -> dict:
    """One load test against `backend` (or --host); the result the report is made of."""
    out.mkdir(parents=True, exist_ok=True)
    result: dict = {"backend": backend, "out": str(out), "problems": [], "summary": None}
    problems: list[str] = result["problems"]
    tree = None
    server = None
    died = False
    try:
        if args.host:
            host = args.host.rstrip("/")
            header_timeout = args.header_timeout or SELSERVE_HEADER_TIMEOUT
        else:
            if "static" in selected_tags(args):
                from loadtests._payloads import write_static_tree

                tree = tempfile.mkdtemp(prefix="selserve-static-tree-")
                write_static_tree(tree)
            port = free_port()
            host = f"http://127.0.0.1:{port}"
            header_timeout = args.header_timeout or SERVER_HEADER_TIMEOUT
            server = Server(
                server_argv(args, backend, port, tree), ("127.0.0.1", port), out / "server.log"
            )
            result["server_argv"] = server.argv
            server.start()
        argv = locust_argv(args, host, out, header_timeout)
        result["locust_argv"] = argv
        load_before = os.getloadavg()[0]
        status, killed = run_locust(
            argv, out / "locust.log", run_seconds(args.run_time) + LOCUST_GRACE
        )
        # Other work on the machine skews comparisons: keep a trace of it.
        result["load_average"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
        result["locust_status"] = status
        if killed:
            problems.append(f"Locust did not finish within --run-time + {LOCUST_GRACE:.0f} s")
        if server is not None and not server.alive():
            died = True
            problems.append(f"selserve died during the run (status {server.proc.returncode})")
    except RuntimeError as exc:
        problems.append(str(exc))
    finally:
        if server is not None:
            status = server.stop()
            result["server_status"] = status
            if server.killed:
                problems.append(f"selserve ignored SIGTERM for {STOP_TIMEOUT:.0f} s (killed)")
            elif status not in (0, None) and not died:
                problems.append(f"selserve exited with status {status} after SIGTERM")
        if tree is not None:
            shutil.rmtree(tree, ignore_errors=True)
    judge(args, result, out)
    (out / "result.json").write_text(json.dumps(result, indent=2))
    return result


def judge(args, result: dict, out: Path) -> None:
    problems: list[str] = result["problems"]
    try:
        summary = json.loads((out / "summary.json").read_text())
    except (OSError, ValueError) as exc:
        problems.append(f"no Locust summary ({exc}); Locust's log:\n{tail(out / 'locust.log')}")
        return
    result["summary"] = summary
    well, bad = summary["groups"]["well_behaved"], summary["groups"]["misbehaving"]
    if well["requests"] == 0:
        problems.append("the well-behaved users made no requests at all")
    if well["failures"]:
        problems.append(f"{well['failures']} well-behaved requests failed")
    if bad["failures"]:
        note = " (allowed)" if args.allow_misbehaving_failures else ""
        if not note:
            problems.append(f"{bad['failures']} misbehaving-user checks failed")
        result["misbehaving_note"] = f"{bad['failures']} misbehaving-user checks failed{note}"
    raised = sum(e["count"] for e in summary["exceptions"])
    if raised:
        problems.append(f"user code raised {raised} times (see the report's Exceptions)")
    if args.max_p99_ms is not None and well["p99_ms"] > args.max_p99_ms:
        problems.append(f"well-behaved p99 {well['p99_ms']} ms > --max-p99-ms {args.max_p99_ms}")
    log_path = out / "server.log"
    if log_path.exists():
        lines = log_path.read_text(errors="replace").splitlines()
        bad_lines = [line for line in lines if _BAD_LOG_LINE.search(line)]
        result["server_log_warnings"] = sum(" WARNING " in line for line in lines)
        result["server_log_errors"] = bad_lines[:20]
        if bad_lines:
            problems.append(f"{len(bad_lines)} error/traceback lines in {log_path}")


# --------------------------------------------------------------------------- report


def _row(cells, widths) -> str:
    return "  ".join(
        str(c).ljust(w) if i < 2 else str(c).rjust(w)
        for i, (c, w) in enumerate(zip(cells, widths, strict=True))
    )


def report(result: dict) -> str:
    lines = [f"== {result['backend']}: {result['out']}"]
    summary = result["summary"]
    if summary:
        widths = (9, 44, 7, 6, 8, 6, 6, 6)
        head = ("type", "name", "reqs", "fails", "req/s", "p50", "p95", "p99")
        lines.append(_row(head, widths) + "  (ms)")
        for e in summary["entries"]:
            cells = (e["type"], e["name"][:44], e["requests"], e["failures"], e["rps"])
            lines.append(_row(cells + (e["p50_ms"], e["p95_ms"], e["p99_ms"]), widths))
        for key, label in (("well_behaved", "well-behaved"), ("misbehaving", "misbehaving")):
            g = summary["groups"][key]
            cells = ("", f"{label} total", g["requests"], g["failures"], g["rps"])
            lines.append(_row(cells + (g["p50_ms"], g["p95_ms"], g["p99_ms"]), widths))
        for error in summary["errors"][:10]:
            lines.append(
                f"  failure x{error['occurrences']}: {error['type']} {error['name']}: "
                f"{error['error'][:200]}"
            )
    if "load_average" in result:
        before, after = result["load_average"]
        lines.append(
            f"machine: 1-minute load average {before} before the run, {after} at its end, "
            f"{os.cpu_count()} CPUs (this run's server and Locust add about 2)"
        )
    if "server_status" in result:
        lines.append(
            f"server: exit status {result['server_status']}, "
            f"{result.get('server_log_warnings', 0)} warnings and "
            f"{len(result.get('server_log_errors', []))} errors in server.log"
        )
    for line in result.get("server_log_errors", [])[:5]:
        lines.append(f"  server.log: {line[:200]}")
    if result.get("misbehaving_note"):
        lines.append(result["misbehaving_note"])
    if result["problems"]:
        lines += ["FAIL:"] + [f"  - {p}" for p in result["problems"]]
    else:
        lines.append("PASS")
    return "\n".join(lines)


def comparison(results: list[dict]) -> str:
    widths = (9, 9, 9, 7, 11, 6, 6, 6, 6)
    head = ("backend", "req/s", "requests", "fails", "misbehave", "p50", "p95", "p99", "ok")
    lines = ["== backends (well-behaved requests; misbehave = failed/total checks; ms)"]
    lines.append("  ".join(str(c).rjust(w) for c, w in zip(head, widths, strict=True)))
    for r in results:
        s = r["summary"]
        if not s:
            lines.append(f"{r['backend']:>9}  (no summary)")
            continue
        g, b = s["groups"]["well_behaved"], s["groups"]["misbehaving"]
        cells = (
            r["backend"],
            g["rps"],
            g["requests"],
            g["failures"],
            f"{b['failures']}/{b['requests']}",
            g["p50_ms"],
            g["p95_ms"],
            g["p99_ms"],
            "FAIL" if r["problems"] else "PASS",
        )
        lines.append("  ".join(str(c).rjust(w) for c, w in zip(cells, widths, strict=True)))
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def _terminated(signum, _frame) -> None:
    # SIGTERM ends the run like Ctrl-C: the finally clauses stop the server and Locust.
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.write_static_tree:
            sys.path.insert(0, str(ROOT))
            from loadtests._payloads import write_static_tree

            print(write_static_tree(args.write_static_tree))
            return 0
        if importlib.util.find_spec("locust") is None:
            raise UsageError(
                f"Locust is not installed for {sys.executable}: pip install -e '.[load]'"
            )
        run_seconds(args.run_time)
        if args.users < 1:
            raise UsageError("--users must be at least 1")
        if args.processes < 1 and args.processes != -1:
            raise UsageError(f"--processes {args.processes}: give 1 or more, or -1 (one per CPU)")
        backends = backends_to_run(args)
    except UsageError as exc:
        print(f"loadtests.run: {exc}", file=sys.stderr)
        return USAGE_ERROR

    signal.signal(signal.SIGTERM, _terminated)
    base = Path(args.out or Path("loadtest-reports") / time.strftime("%Y%m%d-%H%M%S"))
    results = []
    try:
        for backend in backends:
            out = base / backend if len(backends) > 1 else base
            out = out.resolve()
            print(f"-- {backend}: {args.users} users for {args.run_time} -> {out}", flush=True)
            result = run_one(args, backend, out)
            text = report(result)
            (out / "summary.txt").write_text(text + "\n")
            print(text, flush=True)
            results.append(result)
    except KeyboardInterrupt:
        print("loadtests.run: interrupted; the server and Locust are stopped", file=sys.stderr)
        return INTERRUPTED
    if len(results) > 1:
        table = comparison(results)
        (base / "comparison.txt").write_text(table + "\n")
        print(table)
    return 1 if any(r["problems"] for r in results) else 0


if __name__ == "__main__":
    if __package__ in (None, ""):  # python loadtests/run.py
        sys.path.insert(0, str(ROOT))
    sys.exit(main())
