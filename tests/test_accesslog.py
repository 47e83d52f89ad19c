"""The access log: its formats, nginx-style escaping in each, and a log that cannot be
written never raises."""

from __future__ import annotations

import io
import json
import logging
import os
import sys

import pytest

from selserve.accesslog import (
    ATOMS,
    FLUSH_AT,
    FORMATS,
    AccessLog,
    check_format,
    escape,
    iso_time,
)
from selserve.app import Request

NOW = "[27/Nov/2026:14:31:03 +0000]"
PEER = ("10.0.0.1", 5)
# gunicorn's default template: the combined format, atom by atom.
GUNICORN_COMBINED = '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s"'
# A user agent with a control character, a quote, a backslash and a non-ASCII byte.
HOSTILE_AGENT = 'a\x01b"c\\d\xfc'
HOSTILE_AGENT_LOGGED = r"a\x01b\x22c\x5Cd\xFC"


def request(
    agent: str | None = "curl/8",
    target: str = "/",
    referer: str | None = None,
    headers: list[tuple[str, str]] = (),
) -> Request:
    fields = [("host", "t"), *headers]
    if agent is not None:
        fields.append(("user-agent", agent))
    if referer is not None:
        fields.append(("referer", referer))
    path, _, query = target.partition("?")
    return Request("GET", target, path, query, "HTTP/1.1", fields, True, None, False, False, "t")


def logged(tmp_path, format, head=None, status=200, body_bytes=5, duration=0.25, peer=PEER):
    """The text one write() puts in a log of `format` (at the time NOW)."""
    path = tmp_path / "access.log"
    path.unlink(missing_ok=True)  # (a test may log twice)
    log = AccessLog(str(path), format=format)
    log.now = NOW
    log.write(peer, request() if head is None else head, status, body_bytes, duration)
    log.close()
    return path.read_text("ascii")


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
    log.write(
        ("10.0.0.1", 5), request(agent=hostile, target='/a"b\\c', referer=hostile), 200, 5, 0.001
    )
    log.close()
    line = path.read_bytes()
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert all(0x20 <= byte < 0x7F for byte in line[:-1]), line


def test_lines_wait_in_memory_until_flushed(tmp_path):
    path = tmp_path / "access.log"
    log = AccessLog(str(path))
    log.write(("10.0.0.1", 5), request(), 200, 5, 0.001)
    assert path.read_bytes() == b""
    log.flush()
    assert path.read_bytes().count(b"\n") == 1
    log.close()


def test_a_log_on_a_full_disk_loses_lines_without_raising(caplog):
    log = AccessLog("/dev/full")
    big = request(agent="x" * 30_000)
    with caplog.at_level(logging.WARNING, logger="selserve"):
        for _ in range(3 * FLUSH_AT // 30_000 + 1):  # several buffers' worth
            log.write(("10.0.0.1", 5), big, 200, 5, 0.001)
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
        log.write(("10.0.0.1", 5), request(), 200, 5, 0.001)
        log.flush()
    assert log.lines_lost == 1


def test_a_stdout_that_cannot_take_latin1_gets_escaped_ascii(monkeypatch):
    # The stdout of a service manager may be ASCII-only; escaping keeps every line writable.
    stdout = io.TextIOWrapper(io.BytesIO(), encoding="ascii", errors="strict")
    monkeypatch.setattr(sys, "stdout", stdout)
    log = AccessLog("-")
    log.write(("10.0.0.1", 5), request(agent="\xe9\xff"), 200, 5, 0.001)
    log.flush()
    assert log.lines_lost == 0
    assert stdout.buffer.getvalue().endswith(b'"\\xE9\\xFF"\n')


def test_a_log_that_cannot_be_opened_is_refused_with_its_path(tmp_path):
    with pytest.raises(ValueError, match="--access-log"):
        AccessLog(str(tmp_path / "no" / "such" / "dir" / "access.log"))


# -- the named formats ----------------------------------------------------------------


def test_the_default_format_is_the_combined_log_format_as_before(tmp_path):
    path = tmp_path / "access.log"
    log = AccessLog(str(path))
    log.now = NOW
    log.write(PEER, request(target="/a?b=1", referer="http://r/"), 200, 5, 0.25)
    log.close()
    assert path.read_text("ascii") == (
        '10.0.0.1 - - [27/Nov/2026:14:31:03 +0000] "GET /a?b=1 HTTP/1.1" 200 5 '
        '"http://r/" "curl/8"\n'
    )


def test_a_unix_socket_peer_is_logged_as_unix(tmp_path):
    assert logged(tmp_path, "combined", peer="").startswith("unix - - ")


def test_common_is_combined_without_referer_and_agent(tmp_path):
    line = logged(tmp_path, "common", request(target="/a?b=1", referer="http://r/"))
    assert line == '10.0.0.1 - - [27/Nov/2026:14:31:03 +0000] "GET /a?b=1 HTTP/1.1" 200 5\n'


def test_gunicorns_default_template_writes_the_combined_line(tmp_path):
    head = request(target="/a?b=1", referer="http://r/", agent=HOSTILE_AGENT)
    combined = logged(tmp_path, "combined", head)
    assert logged(tmp_path, GUNICORN_COMBINED, head) == combined


def test_a_json_line_holds_the_request_and_its_answer(tmp_path):
    head = request(target="/a?b=1", referer="http://r/")
    line = logged(tmp_path, "json", head, status=404, body_bytes=9, duration=0.0123456)
    assert json.loads(line) == {
        "time": "2026-11-27T14:31:03Z",
        "remote_addr": "10.0.0.1",
        "method": "GET",
        "target": "/a?b=1",
        "protocol": "HTTP/1.1",
        "status": 404,
        "body_bytes": 9,
        "duration_ms": 12.346,
        "referer": "http://r/",
        "user_agent": "curl/8",
    }


def test_json_gives_null_for_a_header_the_request_did_not_send(tmp_path):
    record = json.loads(logged(tmp_path, "json", request(agent=None)))
    assert (record["referer"], record["user_agent"]) == (None, None)


def test_json_time_follows_the_clock_tick(tmp_path):
    path = tmp_path / "access.log"
    log = AccessLog(str(path), format="json")
    for now in (NOW, "[01/Jan/2027:00:00:00 +0000]"):
        log.now = now
        log.write(PEER, request(), 200, 5, 0.25)
    log.close()
    times = [json.loads(line)["time"] for line in path.read_text("ascii").splitlines()]
    assert times == ["2026-11-27T14:31:03Z", "2027-01-01T00:00:00Z"]


def test_iso_time_of_something_not_a_log_time_is_the_current_time():
    assert iso_time("[not a time]").endswith("Z")


# -- escaping, in every format --------------------------------------------------------

EVERY_FORMAT = [*FORMATS, GUNICORN_COMBINED, "%(m)s %(U)s %(q)s %(H)s %({x-hostile}i)s"]


@pytest.mark.parametrize("format", EVERY_FORMAT)
def test_a_hostile_request_is_one_line_of_printable_ascii_in_every_format(tmp_path, format):
    hostile = "".join(map(chr, range(256)))
    head = request(
        agent=hostile,
        target='/a"b\\c\n?d"\x1b',
        referer=hostile,
        headers=[("x-hostile", hostile)],
    )
    line = logged(tmp_path, format, head).encode("ascii")
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert all(0x20 <= byte < 0x7F for byte in line[:-1]), line


@pytest.mark.parametrize("format", ["combined", GUNICORN_COMBINED, "%(a)s", "%({User-Agent}i)s"])
def test_the_user_agent_is_escaped_as_nginx_does_in_text_formats(tmp_path, format):
    assert HOSTILE_AGENT_LOGGED in logged(tmp_path, format, request(agent=HOSTILE_AGENT))


def test_the_request_line_is_escaped_in_the_common_format(tmp_path):
    line = logged(tmp_path, "common", request(target='/"\\\x01\xfc'))
    assert '"GET /\\x22\\x5C\\x01\\xFC HTTP/1.1"' in line


def test_a_hostile_json_line_still_parses(tmp_path):
    hostile = "".join(map(chr, range(256)))
    head = request(agent=hostile, target='/"\\', referer=hostile)
    assert json.loads(logged(tmp_path, "json", head))["target"] == r"/\x22\x5C"


def test_a_json_field_reads_back_as_the_text_the_other_formats_show(tmp_path):
    line = logged(tmp_path, "json", request(agent=HOSTILE_AGENT))
    assert json.loads(line)["user_agent"] == HOSTILE_AGENT_LOGGED


def test_a_request_without_a_head_is_logged_with_dashes(tmp_path):
    path = tmp_path / "access.log"
    log = AccessLog(str(path), format=GUNICORN_COMBINED)
    log.now = NOW
    log.write(PEER, None, 400, 0, 0.0)
    log.close()
    assert path.read_text("ascii") == f'10.0.0.1 - - {NOW} "-" 400 0 "-" "-"\n'


@pytest.mark.parametrize("format", EVERY_FORMAT)
def test_every_format_writes_a_line_without_a_head(tmp_path, format):
    path = tmp_path / "access.log"
    log = AccessLog(str(path), format=format)
    log.write(PEER, None, 400, 0, 0.0)
    log.close()
    assert path.read_text("ascii").count("\n") == 1


# -- templates ------------------------------------------------------------------------

ATOM_REQUEST = request(
    target="/a/b?x=1&y=2",
    referer="http://r/",
    agent="curl/8",
    headers=[("x-request-id", "abc")],
)


# What each atom writes for ATOM_REQUEST answered 201, 1234 body bytes, in 1.2345678 s.
ATOM_WRITES = {
    "h": "10.0.0.1",
    "l": "-",
    "u": "-",
    "t": NOW,
    "r": "GET /a/b?x=1&y=2 HTTP/1.1",
    "m": "GET",
    "U": "/a/b",
    "q": "x=1&y=2",
    "H": "HTTP/1.1",
    "s": "201",
    "b": "1234",
    "B": "1234",
    "f": "http://r/",
    "a": "curl/8",
    "T": "1",
    "M": "1234",
    "D": "1234568",
    "L": "1.234568",
    "p": f"<{os.getpid()}>",
    "{x-request-id}i": "abc",
}


@pytest.mark.parametrize("atom, written", ATOM_WRITES.items())
def test_every_atom_writes_its_field(tmp_path, atom, written):
    line = logged(tmp_path, f"%({atom})s", ATOM_REQUEST, 201, 1234, 1.2345678)
    assert line == written + "\n"


def test_every_atom_has_an_example_above():
    assert set(ATOM_WRITES) - {"{x-request-id}i"} == set(ATOMS) - {"{header}i"}


@pytest.mark.parametrize(
    "duration, written",
    [
        (0.0, "0 0 0 0.000000"),
        (0.0004, "0 0 400 0.000400"),
        (0.999, "0 999 999000 0.999000"),
        (2.5, "2 2500 2500000 2.500000"),
        (61.0000014, "61 61000 61000001 61.000001"),
        (0.9999996, "1 1000 1000000 1.000000"),  # rounded to the microsecond first
    ],
)
def test_duration_atoms_are_the_microseconds_truncated_to_their_unit(tmp_path, duration, written):
    assert logged(tmp_path, "%(T)s %(M)s %(D)s %(L)s", duration=duration) == written + "\n"


def test_an_empty_body_is_logged_as_0_as_gunicorn_does(tmp_path):
    assert logged(tmp_path, "%(b)s %(B)s", body_bytes=0) == "0 0\n"


def test_an_empty_query_is_a_dash(tmp_path):
    assert logged(tmp_path, "%(U)s %(q)s", request(target="/p")) == "/p -\n"


@pytest.mark.parametrize("name", ["x-request-id", "X-Request-ID", "X-REQUEST-ID"])
def test_header_atoms_ignore_the_case_of_the_name(tmp_path, name):
    assert logged(tmp_path, f"%({{{name}}}i)s", ATOM_REQUEST) == "abc\n"


def test_a_header_the_request_did_not_send_is_a_dash(tmp_path):
    assert logged(tmp_path, "[%({x-missing}i)s]", ATOM_REQUEST) == "[-]\n"


def test_a_doubled_percent_is_a_literal_percent(tmp_path):
    assert logged(tmp_path, "%(s)s 100%% %%(s)s", status=200) == "200 100% %(s)s\n"


def test_text_around_atoms_is_kept(tmp_path):
    line = logged(tmp_path, 'ip=%(h)s status=%(s)s "x"', status=204)
    assert line == 'ip=10.0.0.1 status=204 "x"\n'


# -- formats refused ------------------------------------------------------------------


def test_an_unknown_atom_is_refused_naming_it_and_listing_the_valid_ones():
    with pytest.raises(ValueError) as refused:
        AccessLog("-", format="%(h)s %(x)s")
    message = str(refused.value)
    assert "%(x)s" in message and "h l u t r m U q H s b B f a T M D L p {header}i" in message


@pytest.mark.parametrize(
    "format, named",
    [
        ("%(h)d", "'%' at 0"),  # only %(atom)s
        ("50% %(s)s", "'%' at 2"),
        ("%(h", "'%' at 0"),
        ("jsn", "none of combined, common, json"),  # a misspelt name is no template
        ("", "none of combined, common, json"),
        ("%({x-a}o)s", "response headers are not logged"),
        ("%({HOME}e)s", "environment variables are not logged"),
        ("%({a b}i)s", "unknown atom %({a b}i)s"),
        ("%(h)s\n%(s)s", "printable ASCII"),  # a line must stay one line
        ("%(h)s \xe9", "printable ASCII"),
    ],
)
def test_a_malformed_format_is_refused_with_one_line_naming_the_problem(format, named):
    with pytest.raises(ValueError, match="--access-log-format") as refused:
        check_format(format)
    assert named in str(refused.value) and "\n" not in str(refused.value)


@pytest.mark.parametrize("format", [*FORMATS, GUNICORN_COMBINED, "%(p)s", "%%%(s)s"])
def test_named_formats_and_valid_templates_pass_the_check(format):
    check_format(format)


def test_a_refused_format_opens_no_file(tmp_path):
    path = tmp_path / "access.log"
    with pytest.raises(ValueError):
        AccessLog(str(path), format="%(x)s")
    assert not path.exists()
