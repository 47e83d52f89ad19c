"""The access log: one line per answered request, in the format the operator chose.

    127.0.0.1 - - [27/Nov/2026:14:31:03 +0000] "GET / HTTP/1.1" 200 21 "-" "curl/8.1"

That is "combined" (the Combined Log Format), the default; "common" stops
after the body size; "json" writes one JSON object per line; anything else is
a template of gunicorn's atoms, such as `%(h)s "%(r)s" %(s)s %(D)s`, checked
and compiled once, when the log is made, into a format string and one small
function per field, so that a request pays for the fields it logs.  The size
logged is the response body's (Apache's %b, nginx's $body_bytes_sent): not
the head, not chunk framing.

Lines wait in memory and are written with one `write()` once a second (the
server's clock tick), at 64 KiB, and at shutdown, so logging costs no syscall
per request.  Fields a client controls are escaped as nginx does, in every
format: every byte below 0x20 or from 0x7f, and `"` and `\\`, is written as
`\\xHH`, so a line is plain ASCII that can be neither split, nor forged, nor
used to drive the terminal of whoever tails it.  (In JSON the backslash of
`\\xHH` is itself escaped, so a field reads back as the same text the other
formats show: bytes stay bytes, whatever their encoding was.)

What it must never do is raise into a connection: a log that cannot be
written (a full disk, a closed pipe on stdout) loses its lines and costs one
warning per minute, never the connection that was being logged.
"""

from __future__ import annotations

import os
import re
import sys
import time

from .http.abnf import TOKEN
from .notices import ThrottledWarning

# Buffered lines are written out once they reach this many bytes.
FLUSH_AT = 64 * 1024
# At most one "cannot write the access log" warning per this many seconds.
FAILURE_WARNING_INTERVAL = 60.0

# Characters written as they are: printable ASCII except '"' and '\'.
_UNSAFE = re.compile(r"[^\x20\x21\x23-\x5b\x5d-\x7e]")

# The formats known by name; any other format is a template of ATOMS.
FORMATS = ("combined", "common", "json")

# The atoms of a template, written %(atom)s, with gunicorn's names and meanings
# (gunicorn also has {header}o and {variable}e: a log line sees neither).
ATOMS = {
    "h": "remote address",
    "l": "'-'",
    "u": "'-'",
    "t": "time, [27/Nov/2026:14:31:03 +0000]",
    "r": "request line",
    "m": "method",
    "U": "path, without the query",
    "q": "query string",
    "H": "protocol",
    "s": "status",
    "b": "response body bytes",
    "B": "response body bytes",
    "f": "referer",
    "a": "user agent",
    "T": "request time, whole seconds",
    "M": "request time, milliseconds",
    "D": "request time, microseconds",
    "L": "request time, decimal seconds",
    "p": "process id, <1234>",
    "{header}i": "a request header (any case), '-' when absent",
}
_ATOM_LIST = " ".join(ATOMS)

# A template's pieces: %(atom)s, %% (a literal '%'), or a '%' that starts neither.
_TEMPLATE_TOKEN = re.compile(r"%(?:\(([^()]*)\)s|%|)")
_HEADER_ATOM = re.compile(r"\{(.*)\}([a-zA-Z])\Z")
_FIELD_NAME = re.compile(TOKEN + r"\Z")
# Literal text of a template: printable ASCII, so that a line stays one line.
_PRINTABLE = re.compile(r"[\x20-\x7e]*\Z")


def clf_time(timestamp: float) -> str:
    """'[27/Nov/2026:14:31:03 +0000]' (always UTC)."""
    return time.strftime("[%d/%b/%Y:%H:%M:%S +0000]", time.gmtime(timestamp))


def _hex_escape(match: re.Match) -> str:
    code = ord(match[0])
    if code <= 0xFF:  # request fields are latin-1 decoded: one character per byte
        return f"\\x{code:02X}"
    # Wider characters (an embedder's own str) are escaped byte by byte in UTF-8.
    return "".join(f"\\x{byte:02X}" for byte in match[0].encode("utf-8", "surrogatepass"))


def escape(value: str | None) -> str:
    """A client-controlled field as it goes in the log: '-' when absent, else escaped."""
    if not value:
        return "-"
    if _UNSAFE.search(value) is None:
        return value
    return _UNSAFE.sub(_hex_escape, value)


def check_format(format: str) -> None:
    """Raise ValueError, naming the problem, unless `format` is one a log can be made with."""
    if format not in FORMATS:
        compile_template(format)


def compile_template(template: str) -> tuple[str, tuple]:
    """A template as a %-format string for one line, and a getter per '%s' in it.

    A getter is called as `get(host, head, status, body_bytes, duration, now)`.
    Atoms whose value never changes ('l', 'u', 'p') go into the string itself.
    Raises ValueError naming the atom or the text that is wrong.
    """
    pieces: list[str] = []  # of the format string
    getters = []
    atoms = 0
    position = 0
    for match in _TEMPLATE_TOKEN.finditer(template):
        pieces.append(_template_literal(template[position : match.start()]))
        position = match.end()
        atom = match[1]
        if atom is None:
            if match[0] != "%%":
                raise ValueError(
                    f"--access-log-format {template!r}: the '%' at {match.start()} begins "
                    f"neither %(atom)s nor %% (atoms: {_ATOM_LIST})"
                )
            pieces.append("%%")
            continue
        atoms += 1
        if atom in _CONSTANT_ATOMS:
            pieces.append(_CONSTANT_ATOMS[atom])
        else:
            getters.append(_getter(atom))
            pieces.append("%s")
    pieces.append(_template_literal(template[position:]))
    if not atoms:
        raise ValueError(
            f"--access-log-format {template!r} is none of {', '.join(FORMATS)}, and has "
            f"no %(atom)s (atoms: {_ATOM_LIST})"
        )
    return "".join(pieces) + "\n", tuple(getters)


def _template_literal(text: str) -> str:
    if _PRINTABLE.match(text) is None:
        raise ValueError(
            f"--access-log-format: text between atoms must be printable ASCII, not {text!r}"
        )
    return text  # (with no '%' in it: every '%' is part of a token)


def _getter(atom: str):
    getter = _ATOM_GETTERS.get(atom)
    if getter is not None:
        return getter
    header = _HEADER_ATOM.match(atom)
    kind = "" if header is None else header[2].lower()  # (gunicorn takes {Name}I too)
    if kind == "i" and _FIELD_NAME.match(header[1]):
        return _request_header(header[1].lower())
    if kind == "o" or kind == "e":
        what = "response headers" if kind == "o" else "environment variables"
        raise ValueError(
            f"--access-log-format: %({atom})s: {what} are not logged (atoms: {_ATOM_LIST})"
        )
    raise ValueError(f"--access-log-format: unknown atom %({atom})s (atoms: {_ATOM_LIST})")


# -- the getters: each takes (host, head, status, body_bytes, duration, now) ------------


def _host(host, head, status, body_bytes, duration, now):
    return host


def _now(host, head, status, body_bytes, duration, now):
    return now


def _request_line(host, head, status, body_bytes, duration, now):
    if head is None:
        return "-"
    return escape(f"{head.method} {head.target} {head.version}")


def _method(host, head, status, body_bytes, duration, now):
    return "-" if head is None else escape(head.method)


def _path(host, head, status, body_bytes, duration, now):
    return "-" if head is None else escape(head.path)


def _query(host, head, status, body_bytes, duration, now):
    return "-" if head is None else escape(head.query)


def _protocol(host, head, status, body_bytes, duration, now):
    return "-" if head is None else escape(head.version)


def _status(host, head, status, body_bytes, duration, now):
    return status


def _body_bytes(host, head, status, body_bytes, duration, now):
    return body_bytes


# A duration is first rounded to the microsecond (gunicorn's timedelta is), then
# truncated to the unit: 0.9999996 s is 1 s, 1000 ms and "1.000000" alike.


def _seconds(host, head, status, body_bytes, duration, now):
    return round(duration * 1_000_000) // 1_000_000


def _milliseconds(host, head, status, body_bytes, duration, now):
    return round(duration * 1_000_000) // 1000


def _microseconds(host, head, status, body_bytes, duration, now):
    return round(duration * 1_000_000)


def _decimal_seconds(host, head, status, body_bytes, duration, now):
    seconds, microseconds = divmod(round(duration * 1_000_000), 1_000_000)
    return f"{seconds}.{microseconds:06d}"


def _request_header(name: str):
    """The getter of request header `name` (lower-case): its first value, escaped."""

    def header(host, head, status, body_bytes, duration, now):
        return "-" if head is None else escape(head.header(name))

    return header


_CONSTANT_ATOMS = {"l": "-", "u": "-", "p": f"<{os.getpid()}>"}  # (a log is made per process)
_ATOM_GETTERS = {
    "h": _host,
    "t": _now,
    "r": _request_line,
    "m": _method,
    "U": _path,
    "q": _query,
    "H": _protocol,
    "s": _status,
    # gunicorn writes 0 for an empty body, not Apache's '-': its b is '-' only when
    # the size is unknown, and here it never is.
    "b": _body_bytes,
    "B": _body_bytes,
    "f": _request_header("referer"),
    "a": _request_header("user-agent"),
    "T": _seconds,
    "M": _milliseconds,
    "D": _microseconds,
    "L": _decimal_seconds,
}


def _json_string(value: str | None) -> str:
    """A client field as a JSON value: null when absent, else its escaped text as a string.

    escape() leaves printable ASCII with no '"' in it: only its backslashes need JSON's.
    """
    if not value:
        return "null"
    if _UNSAFE.search(value) is None:  # (escape() inlined: JSON lines make five of these)
        return f'"{value}"'
    return '"' + _UNSAFE.sub(_hex_escape, value).replace("\\", "\\\\") + '"'


def iso_time(clf: str) -> str:
    """'2026-11-27T14:31:03Z' for '[27/Nov/2026:14:31:03 +0000]' (the current time if the
    argument is no such time)."""
    try:
        parsed = time.strptime(clf, "[%d/%b/%Y:%H:%M:%S +0000]")
    except ValueError:
        parsed = time.gmtime()
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", parsed)


class AccessLog:
    """Lines in `format` (see FORMATS and ATOMS), buffered and written to PATH or stdout ('-').

    Raises ValueError for a format that is neither named nor a valid template, and for
    a path it cannot open; the message names the problem.
    """

    def __init__(self, path: str, format: str = "combined") -> None:
        self.format = format
        self._template = ""
        self._getters: tuple = ()
        # The line maker; None for combined, which write() makes itself: no call more.
        self._line = None
        if format == "common":
            self._line = self._common_line
        elif format == "json":
            self._line = self._json_line
        elif format != "combined":
            self._template, self._getters = compile_template(format)
            self._line = self._template_line
        self.path = path if path != "-" else "stdout"
        self._fd = -1
        if path != "-":
            try:
                self._fd = os.open(
                    path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644
                )
            except OSError as exc:
                raise ValueError(f"cannot open --access-log {path!r}: {exc.strerror}") from None
        self._pending: list[str] = []
        self._pending_size = 0
        self.lines_lost = 0  # lines that could not be written
        self._failure = ThrottledWarning(FAILURE_WARNING_INTERVAL)
        self.now = clf_time(time.time())  # refreshed by the server once a second
        self._iso_now = ""  # `now` in ISO 8601, for JSON lines: made once per `now`
        self._iso_of = ""

    def write(self, peer, head, status: int, body_bytes: int, duration: float) -> None:
        """Log one answer: `body_bytes` of response body (not the head, not chunk framing)
        sent in `duration` seconds, from the parsed request head to the complete response."""
        host = peer[0] if isinstance(peer, tuple) else "unix"
        if self._line is not None:
            line = self._line(host, head, status, body_bytes, duration)
        else:
            if head is None:
                request = referer = agent = None
            else:
                request = f"{head.method} {head.target} {head.version}"
                referer = head.header("referer")
                agent = head.header("user-agent")
            line = (
                f'{host} - - {self.now} "{escape(request)}" {status} {body_bytes} '
                f'"{escape(referer)}" "{escape(agent)}"\n'
            )
        self._pending.append(line)
        self._pending_size += len(line)
        if self._pending_size >= FLUSH_AT:
            self.flush()

    def _common_line(self, host, head, status, body_bytes, duration) -> str:
        request = None if head is None else f"{head.method} {head.target} {head.version}"
        return f'{host} - - {self.now} "{escape(request)}" {status} {body_bytes}\n'

    def _json_line(self, host, head, status, body_bytes, duration) -> str:
        now = self.now
        if now is not self._iso_of:
            self._iso_now = iso_time(now)
            self._iso_of = now
        if head is None:
            method = target = protocol = referer = agent = "null"
        else:
            method = _json_string(head.method)
            target = _json_string(head.target)
            protocol = _json_string(head.version)
            referer = _json_string(head.header("referer"))
            agent = _json_string(head.header("user-agent"))
        return (
            f'{{"time":"{self._iso_now}","remote_addr":"{host}","method":{method},'
            f'"target":{target},"protocol":{protocol},"status":{status},'
            f'"body_bytes":{body_bytes},"duration_ms":{duration * 1000:.3f},'
            f'"referer":{referer},"user_agent":{agent}}}\n'
        )

    def _template_line(self, host, head, status, body_bytes, duration) -> str:
        now = self.now
        values = []
        for get in self._getters:  # (a plain loop: cheaper than a comprehension in 3.11)
            values.append(get(host, head, status, body_bytes, duration, now))
        return self._template % tuple(values)

    def flush(self) -> None:
        """Write the buffered lines; on failure they are lost and counted, never raised."""
        pending = self._pending
        if not pending:
            return
        self._pending = []
        self._pending_size = 0
        data = "".join(pending).encode("ascii")
        try:
            self._write_all(data)
        except (OSError, ValueError, AttributeError) as exc:
            # ValueError/AttributeError: a stdout that is closed or gone.
            lost = len(pending)
            self.lines_lost += lost
            self._failure.warn(
                "write() to access log %s failed (%s): %d lines lost", self.path, exc, lost
            )

    def _write_all(self, data: bytes) -> None:
        fd = self._fd
        if fd < 0:
            fd = _stdout_fd()
            if fd < 0:  # a stdout without a descriptor (replaced by an embedder)
                sys.stdout.write(data.decode("ascii"))
                sys.stdout.flush()
                return
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]

    def close(self) -> None:
        self.flush()
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            try:
                os.close(fd)
            except OSError:
                pass


def _stdout_fd() -> int:
    try:
        return sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both
        return -1
