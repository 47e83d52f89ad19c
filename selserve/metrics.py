"""Request metrics, and the server's figures in the Prometheus text format.

`RequestMetrics` counts every answered request by method and status class and
files its duration in a histogram with fixed buckets: a dict lookup, a bisect
and two additions per request.  `exposition()` writes the server's figures
(`Server.figures()`: counts that only grow, gauges, summed over the workers)
in the text exposition format 0.0.4 that Prometheus scrapes, named by its
conventions: `selserve_` prefix, base units (`_seconds`, `_bytes`), `_total` on
counters, one `# HELP` and `# TYPE` line per family.
"""

from __future__ import annotations

import time
from bisect import bisect_left

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Methods counted under their own name; any other is "other", so that a client
# inventing methods cannot grow the label set without bound.
METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE")
OTHER = "other"
STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
# Upper bounds of the duration buckets (s): from a hello answer (~0.1 ms) to a slow
# view; Prometheus's own defaults start at 5 ms, too coarse for this server.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class RequestMetrics:
    """Requests by method and status class, and their durations."""

    __slots__ = ("by_method", "buckets", "seconds")

    def __init__(self) -> None:
        # method -> six counters indexed by status // 100 (index 0 unused)
        self.by_method = {method: [0] * 6 for method in (*METHODS, OTHER)}
        self.buckets = [0] * (len(BUCKETS) + 1)  # per bucket, not cumulative; last: +Inf
        self.seconds = 0.0

    def observe(self, method: str, status: int, seconds: float) -> None:
        row = self.by_method.get(method)
        if row is None:
            row = self.by_method[OTHER]
        row[status // 100] += 1
        self.buckets[bisect_left(BUCKETS, seconds)] += 1
        self.seconds += seconds

    def observer(self, then=None):
        """The function a connection calls as each answer ends, `observe(connection,
        request)` (the connection's `status` and `started`: loop time the request
        came); `then(connection, request, seconds)` follows (the access log).  It runs
        for every request, so it is one closure with everything it touches bound, no
        method call on the common path, and no bisect for an answer within the first
        bucket (most of them)."""
        by_method = self.by_method
        other = by_method[OTHER]
        buckets = self.buckets
        bounds = BUCKETS
        first = BUCKETS[0]
        monotonic = time.monotonic
        metrics = self

        def count(conn, request) -> float:
            seconds = monotonic() - conn.started
            if request is not None:
                try:
                    row = by_method[request.method]
                except KeyError:
                    row = other
                row[conn.status // 100] += 1
                if seconds <= first:
                    buckets[0] += 1
                else:
                    buckets[bisect_left(bounds, seconds)] += 1
                metrics.seconds += seconds
            return seconds

        if then is None:
            return count

        def count_then(conn, request) -> None:
            then(conn, request, count(conn, request))

        return count_then

    def counts(self) -> dict:
        """As the scoreboard carries counts: nested dicts of numbers (summed by key)."""
        requests = {}
        for method, row in self.by_method.items():
            for index, count in enumerate(row[1:], start=1):
                if count:
                    requests[f"{method} {STATUS_CLASSES[index - 1]}"] = count
        buckets = dict(zip(map(repr, BUCKETS), self.buckets, strict=False))
        buckets["+Inf"] = self.buckets[-1]
        return {"requests_by": requests, "duration_buckets": buckets, "duration_sum": self.seconds}


def exposition(counts: dict, gauges: dict, workers: int, started: float) -> str:
    """The figures as Prometheus text (`counts` and `gauges` as `Server.figures()`)."""
    out: list[str] = []
    requests = counts.get("requests_by", {})
    _family(
        out,
        "selserve_requests_total",
        "counter",
        "HTTP requests answered, by method and status class.",
        [
            (_labels(method=method, status=status), count)
            for key, count in sorted(requests.items())
            for method, _, status in (key.partition(" "),)
        ],
    )
    _histogram(out, counts)
    _counts(out, counts)
    _gauges(out, gauges, workers, started)
    return "".join(out)


def _counts(out: list[str], counts: dict) -> None:
    for name, help_text, key in (
        ("selserve_received_bytes_total", "Bytes received from clients.", "bytes_in"),
        ("selserve_sent_bytes_total", "Bytes sent to clients.", "bytes_out"),
        (
            "selserve_connections_accepted_total",
            "Client connections accepted.",
            "connections_accepted",
        ),
    ):
        _family(out, name, "counter", help_text, [("", counts.get(key, 0))])
    _family(
        out,
        "selserve_connections_closed_total",
        "counter",
        "Client connections closed, by reason (done, peer-closed, keepalive-timeout, ...).",
        [(_labels(reason=r), n) for r, n in sorted(counts.get("closed", {}).items())],
    )
    _family(
        out,
        "selserve_events_total",
        "counter",
        "What else the server counted: refusals (http-400, ...), spilled bodies, accept "
        "errors, lost access-log lines.",
        [(_labels(event=e), n) for e, n in sorted(counts.get("events", {}).items())],
    )


def _gauges(out: list[str], gauges: dict, workers: int, started: float) -> None:
    open_, idle = gauges.get("connections_open", 0), gauges.get("connections_idle", 0)
    for name, help_text, value in (
        ("selserve_connections_open", "Open client connections.", open_),
        ("selserve_connections_idle", "Open connections with no request in progress.", idle),
        ("selserve_connections_active", "Open connections with a request in progress.",
         open_ - idle),
        ("selserve_connection_limit", "Connections the server may hold at once.",
         gauges.get("connection_limit", 0)),
        ("selserve_workers", "Worker processes serving.", workers),
        ("selserve_start_time_seconds", "When the server started (Unix time).",
         round(started, 3)),
    ):  # fmt: skip
        _family(out, name, "gauge", help_text, [("", value)])


def _family(out: list[str], name: str, kind: str, help_text: str, samples) -> None:
    out.append(f"# HELP {name} {help_text}\n# TYPE {name} {kind}\n")
    for labels, value in samples:
        out.append(f"{name}{labels} {_number(value)}\n")


def _histogram(out: list[str], counts: dict) -> None:
    name = "selserve_request_duration_seconds"
    out.append(
        f"# HELP {name} Time from a request's head to the end of its answer.\n"
        f"# TYPE {name} histogram\n"
    )
    buckets = counts.get("duration_buckets", {})
    cumulative = 0
    for bound in BUCKETS:
        cumulative += buckets.get(repr(bound), 0)
        out.append(f'{name}_bucket{{le="{bound!r}"}} {cumulative}\n')
    cumulative += buckets.get("+Inf", 0)
    out.append(f'{name}_bucket{{le="+Inf"}} {cumulative}\n')
    out.append(f"{name}_sum {_number(counts.get('duration_sum', 0.0))}\n")
    out.append(f"{name}_count {cumulative}\n")


def _labels(**labels: str) -> str:
    inner = ",".join(f'{key}="{_escape(value)}"' for key, value in labels.items())
    return "{" + inner + "}"


def _escape(value: str) -> str:
    """A label value as the format wants it: backslash, quote and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value) -> str:
    if isinstance(value, float):
        return repr(round(value, 6))
    return str(value)
