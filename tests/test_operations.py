"""Operations: the access log, the counters behind --stats-path, log levels."""

from __future__ import annotations

import json
import re
import time

import prometheus
import pytest
from helpers import get_request, post_request

pytestmark = pytest.mark.timeout(60)

# Combined Log Format: host ident user [time] "request" status size "referer" "agent"
CLF = re.compile(
    r"(?P<host>\S+) - - \[(?P<time>\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d \+0000)\] "
    r'"(?P<request>(?:[^"\\]|\\.)*)" (?P<status>\d{3}) (?P<size>\d+) '
    r'"(?P<referer>(?:[^"\\]|\\.)*)" "(?P<agent>(?:[^"\\]|\\.)*)"\Z'
)


def read_log_lines(path, count: int, timeout: float = 5.0) -> list[str]:
    """Lines of the access log once it holds `count` (it is flushed once a second)."""
    deadline = time.monotonic() + timeout
    lines: list[str] = []
    while time.monotonic() < deadline:
        if path.exists():
            lines = path.read_text(encoding="latin-1").splitlines()
            if len(lines) >= count:
                return lines
        time.sleep(0.1)
    raise AssertionError(f"access log has {len(lines)} lines, expected {count}: {lines}")


def test_access_log_writes_one_combined_line_per_request(backend, server_factory, tmp_path):
    log_path = tmp_path / "access.log"
    proc = server_factory(backend, "--access-log", str(log_path))
    with proc.connect() as client:
        client.send(get_request("/", extra='Referer: http://r.example/\r\nUser-Agent: t"q\\x\r\n'))
        assert client.read_final_response().status == 200
        client.send(post_request("/echo", b"12345"))
        assert client.read_final_response().status == 200
        client.send(get_request("/nope"))
        assert client.read_final_response().status == 404
    lines = read_log_lines(log_path, 3)
    fields = [CLF.match(line) for line in lines]
    assert all(fields), lines
    first, echo, missing = (m.groupdict() for m in fields)
    assert (first["host"], first["request"], first["status"]) == (
        "127.0.0.1",
        "GET / HTTP/1.1",
        "200",
    )
    assert (first["referer"], first["agent"]) == ("http://r.example/", r"t\x22q\x5Cx")
    assert (echo["request"], echo["status"]) == ("POST /echo HTTP/1.1", "200")
    assert int(echo["size"]) == 5  # the body only (CLF %b, nginx $body_bytes_sent): no head
    assert (missing["request"], missing["status"]) == ("GET /nope HTTP/1.1", "404")


def test_access_log_records_refused_requests(backend, server_factory, tmp_path):
    log_path = tmp_path / "access.log"
    proc = server_factory(backend, "--access-log", str(log_path))
    with proc.connect() as client:
        client.send(b"GET / HTTP/1.1\r\n\r\n")  # no Host
        assert client.read_final_response().status == 400
    (line,) = read_log_lines(log_path, 1)
    match = CLF.match(line)
    assert match and (match["request"], match["status"]) == ("-", "400"), line


def test_stats_path_counts_requests_and_why_connections_ended(backend, server_factory):
    proc = server_factory(backend, "--stats-path", "/_stats", "--keepalive-timeout", "0.3")
    for _ in range(3):
        assert proc.get("/").status == 200
    with proc.connect() as idle:
        idle.send(get_request("/"))
        assert idle.read_final_response().status == 200
        how, _ = idle.wait_closed(timeout=3.0)
        assert how == "eof"
    with proc.connect() as bad:
        bad.send(b"BROKEN\r\n\r\n")
        assert bad.read_final_response().status == 400
    response = proc.get("/_stats")
    assert response.status == 200
    assert response.header("Content-Type") == "application/json"
    stats = json.loads(response.body)
    assert stats["backend"] == backend
    assert stats["requests"] >= 5
    assert stats["connections_accepted"] >= 6
    assert stats["events"]["keepalive-timeout"] >= 1
    assert stats["events"]["http-400"] == 1
    assert stats["bytes_in"] > 0 and stats["bytes_out"] > 0


def test_stats_path_is_off_by_default(server):
    assert server.get("/_stats").status == 404


def test_debug_log_names_the_reason_a_connection_ended(backend, server_factory):
    proc = server_factory(backend, "--log-level", "debug", "--keepalive-timeout", "0.3")
    with proc.connect() as idle:
        idle.send(get_request("/"))
        assert idle.read_final_response().status == 200
        idle.wait_closed(timeout=3.0)
    deadline = time.monotonic() + 3
    while "keepalive-timeout" not in proc.stderr_tail() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "closed: keepalive-timeout" in proc.stderr_tail()
    assert "Traceback" not in proc.stderr_tail()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_metrics_path_gives_prometheus_text_summed_over_workers(backend, server_factory, workers):
    proc = server_factory(
        backend, "--workers", workers, "--metrics-path", "/metrics", "--keepalive-timeout", "0.3"
    )
    for _ in range(6):
        assert proc.request(get_request("/", extra="Connection: close\r\n")).status == 200
    assert proc.get("/status/404").status == 404
    assert proc.request(post_request("/echo", b"x" * 10), method="POST").status == 200
    with proc.connect() as bad:
        bad.send(b"BROKEN\r\n\r\n")
        assert bad.read_final_response().status == 400
    time.sleep(1.2)  # (each worker publishes its counts once a second)
    answer = proc.get("/metrics")
    assert answer.status == 200
    assert answer.header("Content-Type") == "text/plain; version=0.0.4; charset=utf-8"
    families = prometheus.parse(answer.body.decode())
    requests = families["selserve_requests_total"]
    assert requests.value(method="GET", status="2xx") == 6
    assert requests.value(method="GET", status="4xx") == 1
    assert requests.value(method="POST", status="2xx") == 1
    histogram = families["selserve_request_duration_seconds"]
    # The 8 above and, perhaps, this scrape itself (counted once answered).
    assert 8 <= histogram.value("_count") <= 9 and histogram.value("_sum") > 0
    assert families["selserve_events_total"].value(event="http-400") == 1
    assert families["selserve_connections_accepted_total"].value() >= 9
    assert families["selserve_connections_closed_total"].value(reason="done") >= 6
    assert families["selserve_workers"].value() == int(workers)
    assert families["selserve_connections_active"].value() >= 1  # this very scrape


def test_access_log_counts_body_bytes_only_and_the_request_time(backend, server_factory, tmp_path):
    log_path = tmp_path / "access.log"
    proc = server_factory(
        backend, "--access-log", str(log_path), "--access-log-format", "%(s)s %(B)s %(D)s"
    )
    assert proc.get("/").status == 200  # "Hello, world!\n" style greeting, fixed length
    assert proc.get("/stream?n=4&size=10").status == 200  # chunked: framing is not body
    first, second = read_log_lines(log_path, 2)
    status, size, micros = first.split()
    assert status == "200" and int(size) == len(proc.get("/").body) and int(micros) >= 0
    assert second.split()[:2] == ["200", "40"], second


def test_access_log_counts_no_body_for_head(backend, server_factory, tmp_path):
    log_path = tmp_path / "access.log"
    proc = server_factory(
        backend, "--access-log", str(log_path), "--access-log-format", "%(m)s %(s)s %(B)s"
    )
    head = proc.request(get_request("/").replace(b"GET", b"HEAD", 1), method="HEAD")
    assert head.status == 200 and head.body == b""
    assert read_log_lines(log_path, 1) == ["HEAD 200 0"]
