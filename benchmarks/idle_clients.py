"""Hold COUNT idle keep-alive connections open on a server, for `compare.py` and
`idle_memory.py` (it runs as its own process, so the server's load generator and the
measuring script keep their own cores and file descriptors).

Each connection sends one `GET PATH` and reads the whole response, then sits idle. When
all are open it prints one JSON line to stdout (`{"open": N, "failed": F, "statuses":
{...}}`) and waits until its stdin closes, SIGTERM arrives or `--hold` seconds pass; then
it closes every connection with RST (SO_LINGER 0: no TIME_WAIT ties up client ports for
the next run) and exits. Connections the server refuses or answers with a non-200 status
are counted as failed and closed, never retried. Loopback only; every wait is bounded.

    python benchmarks/idle_clients.py --port 8000 --count 10000
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import select
import signal
import socket
import struct
import sys
import time
from collections import Counter

BATCH = 500  # connections opened before their responses are read (< the listen backlog)
IO_TIMEOUT = 10.0  # seconds any one connect/send/recv may take
MAX_HOLD = 3600.0  # the longest --hold accepted


def raise_open_file_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def read_status(sock: socket.socket) -> int:
    """Read one Content-Length-framed response (bounded by the socket timeout); its status."""
    buf = bytearray()
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("closed before a response head")
        buf += data
        if len(buf) > 1 << 20:
            raise ConnectionError("response head too long")
    end = buf.index(b"\r\n\r\n")
    head = bytes(buf[:end]).lower()
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip() == b"content-length":
            length = int(value)
    missing = end + 4 + length - len(buf)
    while missing > 0:
        data = sock.recv(min(missing, 65536))
        if not data:
            raise ConnectionError("closed inside a response body")
        missing -= len(data)
    return status


def close_with_reset(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def open_connections(
    host: str, port: int, count: int, path: str
) -> tuple[list[socket.socket], Counter]:
    request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode("latin-1")
    held: list[socket.socket] = []
    outcomes: Counter = Counter()
    for start in range(0, count, BATCH):
        batch = []
        for _ in range(min(BATCH, count - start)):
            try:
                sock = socket.create_connection((host, port), timeout=IO_TIMEOUT)
            except OSError as exc:
                outcomes[type(exc).__name__] += 1
                continue
            try:
                sock.sendall(request)
            except OSError as exc:
                outcomes[type(exc).__name__] += 1
                close_with_reset(sock)
                continue
            batch.append(sock)
        for sock in batch:
            try:
                status = read_status(sock)
            except (OSError, ValueError) as exc:
                outcomes[type(exc).__name__] += 1
                close_with_reset(sock)
                continue
            outcomes[str(status)] += 1
            if status == 200:
                held.append(sock)
            else:
                close_with_reset(sock)
    return held, outcomes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--path", default="/")
    parser.add_argument("--hold", type=float, default=900.0, help="seconds to hold at most")
    args = parser.parse_args(argv)
    if not args.host.startswith("127.") and args.host not in ("localhost", "::1"):
        parser.error("loopback addresses only")
    limit = raise_open_file_limit()
    if args.count + 64 > limit:
        parser.error(f"RLIMIT_NOFILE is {limit}: too low for {args.count} connections")
    stop = False

    def on_term(signum, frame):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    started = time.monotonic()
    held, outcomes = open_connections(args.host, args.port, args.count, args.path)
    report = {
        "open": len(held),
        "failed": args.count - len(held),
        "statuses": dict(outcomes),
        "seconds": round(time.monotonic() - started, 3),
    }
    print(json.dumps(report), flush=True)
    deadline = time.monotonic() + min(args.hold, MAX_HOLD)
    try:
        while not stop and time.monotonic() < deadline:
            ready, _, _ = select.select([sys.stdin], [], [], 0.5)
            if ready and not sys.stdin.buffer.read1(4096):
                break  # stdin closed: the parent is done with us
    finally:
        for sock in held:
            close_with_reset(sock)
    return 0


if __name__ == "__main__":
    sys.exit(main())
