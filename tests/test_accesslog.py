"""The access log: nginx-style escaping, and a log that cannot be written never raises."""

from __future__ import annotations

import io
import logging
import os
import sys

import pytest

from selserve.accesslog import FLUSH_AT, AccessLog, escape
from selserve.app import Request


def request(agent: str = "curl/8", target: str = "/", referer: str | None = None) -> Request:
    headers = [("host", "t"), ("user-agent", agent)]
    if referer is not None:
        headers.append(("referer", referer))
    return Request("GET", target, target, "", "HTTP/1.1", headers, True, None, False, False, "t")


@pytest.mark.parametrize(
    "raw, logged",
    [
        ("curl/8.1 (x86_64)", "curl/8.1 (x86_64)"),
        ('say "hi"', r"say \x22hi\x22"),
        ("back\\slash", r"back\x5Cslash"),
        ("tab\there", r"tab\x09here"),
        ("csi\x9b31m", r"csi\x9B31m"),  # 8-bit CSI: a terminal would obey it
        ("esc\x1b[2J", r"esc\x1B[2J"),
        ("del\x7f", r"del\x7F"),
        ("latin\xfc", r"latin\xFC"),
        ("snow\u2603", r"snow\xE2\x98\x83"),  # an embedder's own str: its UTF-8 bytes
        ("", "-"),
        (None, "-"),
    ],
)
def test_client_fields_are_escaped_as_nginx_does(raw, logged):
    assert escape(raw) == logged


def test_an_escaped_line_is_plain_printable_ascii(tmp_path):
    path = tmp_path / "access.log"
    log = AccessLog(str(path))
    hostile = "".join(map(chr, range(256)))
    log.write(("10.0.0.1", 5), request(agent=hostile, target='/a"b\\c', referer=hostile), 200, 5)
    log.close()
    line = path.read_bytes()
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert all(0x20 <= byte < 0x7F for byte in line[:-1]), line


def test_lines_wait_in_memory_until_flushed(tmp_path):
    path = tmp_path / "access.log"
    log = AccessLog(str(path))
    log.write(("10.0.0.1", 5), request(), 200, 5)
    assert path.read_bytes() == b""
    log.flush()
    assert path.read_bytes().count(b"\n") == 1
    log.close()


def test_a_log_on_a_full_disk_loses_lines_without_raising(caplog):
    log = AccessLog("/dev/full")
    big = request(agent="x" * 30_000)
    with caplog.at_level(logging.WARNING, logger="selserve"):
        for _ in range(3 * FLUSH_AT // 30_000 + 1):  # several buffers' worth
            log.write(("10.0.0.1", 5), big, 200, 5)
        log.flush()
        log.close()
    assert log.lines_lost == 3 * FLUSH_AT // 30_000 + 1
    warnings = [r for r in caplog.records if "access log" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]  # rate-limited


def test_a_closed_stdout_pipe_loses_lines_without_raising(monkeypatch):
    read_end, write_end = os.pipe()
    os.close(read_end)  # nobody reads: write() fails with EPIPE
    with open(write_end, "w", encoding="ascii") as stdout:
        monkeypatch.setattr(sys, "stdout", stdout)
        log = AccessLog("-")
        log.write(("10.0.0.1", 5), request(), 200, 5)
        log.flush()
    assert log.lines_lost == 1


def test_a_stdout_that_cannot_take_latin1_gets_escaped_ascii(monkeypatch):
    # The stdout of a service manager may be ASCII-only; escaping keeps every line writable.
    stdout = io.TextIOWrapper(io.BytesIO(), encoding="ascii", errors="strict")
    monkeypatch.setattr(sys, "stdout", stdout)
    log = AccessLog("-")
    log.write(("10.0.0.1", 5), request(agent="\xe9\xff"), 200, 5)
    log.flush()
    assert log.lines_lost == 0
    assert stdout.buffer.getvalue().endswith(b'"\\xE9\\xFF"\n')


def test_a_log_that_cannot_be_opened_is_refused_with_its_path(tmp_path):
    with pytest.raises(ValueError, match="--access-log"):
        AccessLog(str(tmp_path / "no" / "such" / "dir" / "access.log"))
