"""metrics.py: request counts by method and status class, the duration histogram, and
the Prometheus text they are written as (checked with a strict parser)."""

from __future__ import annotations

import time

import pytest
from prometheus import parse

from selserve.metrics import BUCKETS, RequestMetrics, exposition
from selserve.scoreboard import _add


def observed(*requests: tuple[str, int, float]) -> RequestMetrics:
    metrics = RequestMetrics()
    for method, status, seconds in requests:
        metrics.observe(method, status, seconds)
    return metrics


def test_requests_are_counted_by_method_and_status_class():
    metrics = observed(("GET", 200, 0.001), ("GET", 204, 0.001), ("POST", 503, 0.1))
    metrics.observe("BREW", 418, 0.0)  # an invented method: "other"
    assert metrics.counts()["requests_by"] == {"GET 2xx": 2, "POST 5xx": 1, "other 4xx": 1}


def test_durations_fall_in_the_bucket_whose_bound_they_do_not_exceed():
    metrics = observed(("GET", 200, 0.0), ("GET", 200, 0.001), ("GET", 200, 0.0011))
    metrics.observe("GET", 200, 60.0)
    buckets = metrics.counts()["duration_buckets"]
    assert buckets["0.0005"] == 1 and buckets["0.001"] == 1 and buckets["0.0025"] == 1
    assert buckets["+Inf"] == 1 and sum(buckets.values()) == 4
    assert metrics.counts()["duration_sum"] == pytest.approx(60.0021)


def figures(metrics: RequestMetrics, **more) -> tuple[dict, dict]:
    counts = {
        "requests": 4,
        "bytes_in": 100,
        "bytes_out": 2000,
        "connections_accepted": 3,
        "closed": {"done": 2, "keepalive-timeout": 1},
        "events": {"http-400": 1},
        **metrics.counts(),
        **more,
    }
    gauges = {"connections_open": 5, "connections_idle": 2, "connection_limit": 100}
    return counts, gauges


def test_the_exposition_parses_and_says_what_was_counted():
    metrics = observed(("GET", 200, 0.0004), ("GET", 404, 0.003), ("POST", 201, 0.2))
    counts, gauges = figures(metrics)
    families = parse(exposition(counts, gauges, workers=2, started=1_700_000_000.5))
    assert families["selserve_requests_total"].value(method="GET", status="4xx") == 1
    assert families["selserve_requests_total"].value(method="POST", status="2xx") == 1
    histogram = families["selserve_request_duration_seconds"]
    assert histogram.kind == "histogram" and histogram.value("_count") == 3
    assert histogram.value("_bucket", le="0.0005") == 1
    assert histogram.value("_bucket", le="0.005") == 2
    assert histogram.value("_sum") == pytest.approx(0.2034)
    closed = families["selserve_connections_closed_total"]
    assert closed.value(reason="done") == 2 and closed.value(reason="keepalive-timeout") == 1
    assert families["selserve_events_total"].value(event="http-400") == 1
    assert families["selserve_connections_active"].value() == 3
    assert families["selserve_workers"].value() == 2
    assert families["selserve_sent_bytes_total"].value() == 2000
    assert all(f.help for f in families.values())


def test_counts_summed_over_workers_give_the_same_exposition_as_one_worker():
    one = observed(("GET", 200, 0.001), ("GET", 200, 0.02))
    two = observed(("GET", 200, 0.003), ("HEAD", 304, 7.0))
    both = observed(*[("GET", 200, s) for s in (0.001, 0.02, 0.003)], ("HEAD", 304, 7.0))
    summed = _add(one.counts(), two.counts())
    assert summed["requests_by"] == both.counts()["requests_by"]
    assert summed["duration_buckets"] == both.counts()["duration_buckets"]


def test_every_bucket_bound_is_written_and_in_order():
    text = exposition(*figures(RequestMetrics()), workers=1, started=0.0)
    histogram = parse(text)["selserve_request_duration_seconds"]
    bounds = [dict(labels)["le"] for suffix, labels in histogram if suffix == "_bucket"]
    assert bounds == [repr(b) for b in BUCKETS] + ["+Inf"]


def test_the_parser_refuses_what_a_scraper_would():
    with pytest.raises(AssertionError):
        parse("selserve_x_total 1\n")  # no # TYPE
    with pytest.raises(AssertionError):
        parse('# HELP a_total x\n# TYPE a_total counter\na_total{l="bad\\q"} 1\n')
    with pytest.raises(AssertionError):
        parse("# HELP a x\n# TYPE a counter\na 1\n")  # a counter without _total
    with pytest.raises(AssertionError):
        parse(
            "# HELP h x\n# TYPE h histogram\n"
            'h_bucket{le="1"} 5\nh_bucket{le="+Inf"} 3\nh_sum 1\nh_count 3\n'
        )


class Answered:
    """What the observer reads of a connection whose answer has ended."""

    def __init__(self, status: int, started: float) -> None:
        self.status, self.started = status, started


class Head:
    def __init__(self, method: str) -> None:
        self.method = method


def test_the_observer_counts_as_observe_does_and_then_passes_on():
    metrics = RequestMetrics()
    passed_on = []
    observe = metrics.observer(then=lambda conn, request, seconds: passed_on.append(seconds))
    started = time.monotonic()
    observe(Answered(200, started), Head("GET"))
    observe(Answered(503, started), Head("BREW"))
    observe(Answered(400, started), None)  # a refusal before any head: logged, not counted
    counts = metrics.counts()
    assert counts["requests_by"] == {"GET 2xx": 1, "other 5xx": 1}
    assert sum(counts["duration_buckets"].values()) == 2
    assert len(passed_on) == 3 and all(0 <= s < 5 for s in passed_on)
