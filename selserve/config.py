"""Every limit, timeout and default of selserve, in one place.

`Config` is the single typed source of settings: the command line (`cli.py`),
the embedding API (`serve(app, **settings)`) and the README's table are all
derived from the field list below.  Nothing here opens a socket; the environment is
read only for the open-file limit (`default_max_connections()`) and for
`$WEB_CONCURRENCY`, the default of --workers as platforms set it.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import resource
import tomllib
import typing
from dataclasses import dataclass, field

from .accesslog import check_format
from .forwarded import SOURCES, TrustedPeers
from .http.abnf import FIELD_VALUE_CHARS_RE

# Values of --min-tls and --client-cert (tls.py maps them to ssl's; ssl itself is
# imported only by a server that serves TLS: it costs about 3 MiB of memory).
TLS_VERSIONS = ("1.2", "1.3")
CLIENT_CERT_MODES = ("none", "optional", "required")


def _setting(default, help: str, *, flag: str | None = None, metavar: str | None = None):
    """A Config field carrying its command-line help (and optional flag name)."""
    return field(default=default, metadata={"help": help, "flag": flag, "metavar": metavar})


# What follows the last ":" of a --static DIR is read as an option when it is a bare word
# ("./media:listing"); a directory whose name has a colon ends in "/" ("./a:b/").
_MOUNT_OPTION = re.compile(r"[A-Za-z_-]*")
# The one option a --static mount takes: list its directories.
MOUNT_LISTING = "listing"


def parse_static_mount(value: str) -> tuple[str, str, bool]:
    """(URL prefix without trailing slash, directory, listing) of one --static value."""
    prefix, sep, directory = value.partition("=")
    listing = False
    head, colon, option = directory.rpartition(":")
    if colon and _MOUNT_OPTION.fullmatch(option):
        if option != MOUNT_LISTING:
            raise ValueError(
                f"--static {value!r}: unknown option {option!r} after ':'; the only one "
                f"is ':{MOUNT_LISTING}' (end a directory whose name has ':' with '/')"
            )
        directory, listing = head, True
    if not sep or not prefix.startswith("/") or not directory:
        raise ValueError(
            f"--static {value!r} must be PREFIX=DIR or PREFIX=DIR:{MOUNT_LISTING}, "
            "e.g. /assets=./public"
        )
    return prefix.rstrip("/") or "/", directory, listing


def default_max_connections() -> int:
    """Connections we can hold: the open-file limit minus room for listeners and files."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = hard if hard != resource.RLIM_INFINITY else 65536
    return max(16, min(limit, 65536) - 64)


@dataclass
class Config:
    """Settings for one server; every field is also a `--flag` of the same name."""

    binds: list[str] = field(
        default_factory=lambda: ["127.0.0.1:8000"],
        metadata={
            "help": "address to listen on: HOST:PORT, [IPV6]:PORT, unix:PATH or fd://N, "
            "https://ADDR for a TLS listener (repeatable; sockets from systemd socket "
            "activation come first)",
            "flag": "--bind",
            "metavar": "ADDR",
        },
    )
    backend: str = _setting("auto", "readiness backend (see --list-backends)", metavar="NAME")
    max_connections: int = _setting(
        0, "open client connections at most; 0 derives it from RLIMIT_NOFILE", metavar="N"
    )
    backlog: int = _setting(1024, "listen() backlog: clients queued while at the cap", metavar="N")
    keepalive_timeout: float = _setting(
        5.0, "close a keep-alive connection idle this long (s)", metavar="S"
    )
    header_timeout: float = _setting(
        10.0, "close a connection whose request head takes longer than this (s)", metavar="S"
    )
    body_timeout: float = _setting(
        30.0, "close a connection whose request body stalls this long (s)", metavar="S"
    )
    write_timeout: float = _setting(
        30.0, "close a connection that accepts no response bytes for this long (s)", metavar="S"
    )
    shutdown_timeout: float = _setting(
        10.0, "on SIGTERM/SIGINT, let in-flight responses finish this long (s)", metavar="S"
    )
    max_request_line: int = _setting(8192, "longest request line in bytes (else 414)", metavar="B")
    max_header_bytes: int = _setting(
        65536, "largest header section in bytes (else 431)", metavar="B"
    )
    max_headers: int = _setting(100, "most header fields in one request (else 431)", metavar="N")
    max_body_size: int = _setting(
        1024 * 1024 * 1024, "largest request body in bytes (else 413)", metavar="B"
    )
    body_spill_threshold: int = _setting(
        1024 * 1024, "request bodies larger than this wait in a temporary file", metavar="B"
    )
    high_water: int = _setting(
        256 * 1024, "pause a streamed body when this many bytes wait to be sent", metavar="B"
    )
    low_water: int = _setting(64 * 1024, "resume a paused body below this many bytes", metavar="B")
    # -- what is served
    root: str = _setting(".", "directory served when no APP is given", metavar="DIR")
    no_listing: bool = _setting(
        False,
        "answer 403 for directories without index.html under --root "
        "(--static mounts list only with PREFIX=DIR:listing)",
    )
    dotfiles: bool = _setting(
        False, "serve and list names starting with '.' (/.well-known/ is served regardless)"
    )
    follow_symlinks: bool = _setting(False, "serve symlinks that lead outside --root")
    precompressed: bool = _setting(
        False, "serve FILE.br / FILE.gz beside FILE to clients that accept them"
    )
    open_file_cache: int = _setting(
        1000,
        "keep up to N static files open between requests, as nginx's open_file_cache "
        "(0: open and check every file on every request; not with --precompressed)",
        metavar="N",
    )
    open_file_cache_valid: float = _setting(
        1.0,
        "open and check a kept file again after this long: the most a replaced or "
        "deleted file can still be served (s)",
        metavar="S",
    )
    static: list[str] = field(
        default_factory=list,
        metadata={
            "help": "serve DIR under URL PREFIX in front of the app (repeatable); "
            "PREFIX=DIR:listing also lists its directories",
            "metavar": "PREFIX=DIR[:listing]",
        },
    )
    chdir: str = _setting(
        "", "change to DIR before importing APP (it goes on sys.path)", metavar="DIR"
    )
    threads: str = _setting(
        "auto",
        "threads the app runs in: N, 0 for none (the app runs in the event loop and must "
        "not block), or auto: min(32, CPUs + 4) for WSGI apps, 0 for native ones",
        metavar="N",
    )
    max_requests: int = _setting(
        0,
        "a worker leaves gracefully after about N requests and is replaced, for apps that "
        "leak (0: never; runs a supervisor even for one worker)",
        metavar="N",
    )
    max_requests_jitter: int = _setting(
        0, "add up to this many requests to each worker's --max-requests, at random", metavar="J"
    )
    workers: str = _setting(
        "",
        "worker processes sharing the listeners, under a supervisor: N, or auto for the "
        "CPU count (default: $WEB_CONCURRENCY, else 1: one process, no supervisor)",
        metavar="N",
    )
    worker_timeout: float = _setting(
        30.0,
        "with a supervisor: kill and replace a worker whose event loop has not turned for "
        "this long (s; 0: never)",
        metavar="S",
    )
    reload: bool = _setting(
        False,
        "development only: restart the workers when a .py file under the app's directory "
        "changes (stdlib stat() polling, once a second)",
    )
    reload_dirs: list[str] = field(
        default_factory=list,
        metadata={
            "help": "watch DIR for --reload instead of the app's directory (repeatable)",
            "flag": "--reload-dir",
            "metavar": "DIR",
        },
    )
    root_path: str = _setting(
        "", "WSGI SCRIPT_NAME: the URL prefix the app is mounted at", metavar="P"
    )
    expose_tracebacks: bool = _setting(False, "show application tracebacks in 500 responses")
    url_scheme: str = _setting(
        "http", "WSGI wsgi.url_scheme: https behind a TLS-terminating proxy", metavar="SCHEME"
    )
    # -- behind a balancer
    proxy_protocol: bool = _setting(
        False,
        "every connection starts with a PROXY protocol v1 or v2 header (HAProxy send-proxy, "
        "nginx proxy_protocol), whose source is the client; one without it is closed",
    )
    proxy_headers: bool = _setting(
        False,
        "take the client address, scheme and host from Forwarded or X-Forwarded-For/-Proto/"
        "-Host when the peer is in --forwarded-allow-ips (else those headers are ignored)",
    )
    forwarded_allow_ips: str = _setting(
        "127.0.0.1,::1",
        "peers trusted with --proxy-headers: addresses and CIDRs, comma-separated, or * for all",
        metavar="LIST",
    )
    forwarded_headers: str = _setting(
        "x-forwarded",
        "which proxy headers --proxy-headers reads, never both: x-forwarded "
        "(X-Forwarded-For/-Proto/-Host: nginx, HAProxy forwardfor) or forwarded (RFC 7239)",
        metavar="FAMILY",
    )
    # -- TLS
    certfile: str = _setting(
        "",
        "serve HTTPS with this PEM certificate (its chain may follow it); every --bind is "
        "TLS unless some are marked https://HOST:PORT",
        metavar="PEM",
    )
    keyfile: str = _setting("", "the PEM private key of --certfile", metavar="PEM")
    keyfile_password_file: str = _setting(
        "", "read the password of an encrypted --keyfile from this file", metavar="FILE"
    )
    ca_certs: str = _setting(
        "", "PEM file of the CAs that client certificates are verified against", metavar="PEM"
    )
    client_cert: str = _setting(
        "none",
        "ask TLS clients for a certificate: none, optional, or required (needs --ca-certs); "
        "its subject goes to WSGI's SSL_CLIENT_S_DN and request.client_cert",
        metavar="MODE",
    )
    ssl_ciphers: str = _setting(
        "", "OpenSSL cipher string for TLS 1.2 (default: OpenSSL's)", metavar="CIPHERS"
    )
    min_tls: str = _setting("1.2", "oldest TLS version accepted: 1.2 or 1.3", metavar="VERSION")
    handshake_timeout: float = _setting(
        10.0, "close a TLS connection whose handshake takes longer than this (s)", metavar="S"
    )
    # -- operations
    access_log: str = _setting(
        "", "append a Combined Log Format line per request to PATH ('-': stdout)", metavar="PATH"
    )
    access_log_format: str = _setting(
        "combined",
        "combined, common, json, or a template of gunicorn's atoms, e.g. "
        "'%(h)s \"%(r)s\" %(s)s %(b)s %(D)s'; %({name}i)s logs a request header",
        metavar="FORMAT",
    )
    stats_path: str = _setting(
        "", "answer GET PATH with the server's counters as JSON (e.g. /_stats)", metavar="PATH"
    )
    metrics_path: str = _setting(
        "",
        "answer GET PATH with the server's figures in the Prometheus text format "
        "(e.g. /metrics), summed over workers",
        metavar="PATH",
    )
    health_path: str = _setting(
        "",
        "answer GET PATH with 200 ok while serving and 503 from the moment a drain begins "
        "(e.g. /healthz), before the app sees it",
        metavar="PATH",
    )
    drain_delay: float = _setting(
        0.0,
        "on SIGTERM, go on serving this long while --health-path answers 503, so that a "
        "balancer stops sending first (s; 5-10 under Kubernetes)",
        metavar="S",
    )
    log_level: str = _setting("info", "debug, info, warning or error", metavar="LEVEL")
    server_header: str = _setting(
        "selserve", "value of the Server header ('' to omit)", metavar="S"
    )

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Refuse settings that cannot work, naming the setting and what would be right."""
        self._validate_numbers()
        if self.log_level.lower() not in ("debug", "info", "warning", "error"):
            raise ValueError("--log-level must be one of debug, info, warning, error")
        self._validate_paths()
        check_format(self.access_log_format)
        TrustedPeers.parse(self.forwarded_allow_ips)  # (its ValueError names the bad item)
        if self.forwarded_headers not in SOURCES:
            raise ValueError("--forwarded-headers must be x-forwarded or forwarded")
        if self.url_scheme not in ("http", "https"):
            raise ValueError("--url-scheme must be http or https")
        # A field value (RFC 9110 §5.5), sent as latin-1.
        if not FIELD_VALUE_CHARS_RE.fullmatch(self.server_header):
            raise ValueError(
                "--server-header must not contain CR, LF, NUL or another control "
                "character, or anything outside latin-1"
            )
        if not self.binds:
            raise ValueError("at least one --bind address is needed")
        self._validate_tls()
        for mount in self.static:
            parse_static_mount(mount)
        if isinstance(self.threads, int):  # (embedders pass numbers)
            self.threads = str(self.threads)
        if self.threads != "auto" and not self.threads.isdigit():
            raise ValueError("--threads must be a number of threads (0 or more) or auto")
        workers = self.workers or os.environ.get("WEB_CONCURRENCY", "")
        if workers and workers != "auto" and (not workers.isdigit() or int(workers) < 1):
            where = "--workers" if self.workers else "$WEB_CONCURRENCY"
            raise ValueError(f"{where} must be a number of processes (1 or more) or auto")
        if self.root_path and (not self.root_path.startswith("/") or self.root_path.endswith("/")):
            raise ValueError("--root-path must start with / and not end with one, e.g. /app")

    def _validate_numbers(self) -> None:
        """Limits, sizes and seconds within their ranges."""
        # A NaN compares false with everything, so it would pass the checks below and
        # then never fall due (a keep-alive timeout of nan kept idle clients forever).
        for setting in dataclasses.fields(self):
            if setting.type == "float" and not math.isfinite(getattr(self, setting.name)):
                raise ValueError(f"--{_dash(setting.name)} must be a finite number of seconds")
        positive = (
            "keepalive_timeout",
            "header_timeout",
            "body_timeout",
            "write_timeout",
            "max_request_line",
            "max_header_bytes",
            "max_headers",
            "high_water",
            "backlog",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"--{_dash(name)} must be greater than 0")
        for name in (
            "open_file_cache",
            "open_file_cache_valid",
            "shutdown_timeout",
            "max_connections",
            "max_body_size",
            "low_water",
            "body_spill_threshold",
            "max_requests",
            "max_requests_jitter",
            "worker_timeout",
            "drain_delay",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"--{_dash(name)} must be 0 or more")
        if self.low_water > self.high_water:
            raise ValueError("--low-water must not exceed --high-water")

    def _validate_tls(self) -> None:
        """TLS settings that agree with each other, and files that make a context."""
        marked = [b for b in self.binds if b.startswith("https://")]
        if bool(self.certfile) != bool(self.keyfile):
            given, missing = (
                ("--certfile", "--keyfile") if self.certfile else ("--keyfile", "--certfile")
            )
            raise ValueError(f"{given} needs {missing} too (a certificate and its private key)")
        if marked and not self.certfile:
            raise ValueError(f"--bind {marked[0]} needs --certfile and --keyfile")
        if self.min_tls not in TLS_VERSIONS:
            raise ValueError(f"--min-tls must be 1.2 or 1.3, not {self.min_tls!r}")
        if self.client_cert not in CLIENT_CERT_MODES:
            raise ValueError("--client-cert must be none, optional or required")
        if self.client_cert != "none" and not self.ca_certs:
            raise ValueError(
                f"--client-cert {self.client_cert} needs --ca-certs PEM to verify them"
            )
        if self.handshake_timeout < 0:
            raise ValueError("--handshake-timeout must be 0 or more")
        if self.certfile:
            # Built once here (its TLSSettingsError, a ValueError, names the problem) and
            # kept: workers forked from the supervisor share it, and with it its session
            # ticket keys, so a client resumes its session on whichever worker it reaches.
            from .tls import build_context

            self._tls_context = build_context(self)

    @property
    def tls_binds(self) -> list[str]:
        """The --bind addresses that serve TLS: those marked https://, else with
        --certfile every one of them."""
        if not self.certfile:
            return []
        marked = [b for b in self.binds if b.startswith("https://")]
        return marked or list(self.binds)

    def _validate_paths(self) -> None:
        """The server's own paths: real paths, and no two the same."""
        paths: dict[str, str] = {}
        for name, example in (
            ("stats_path", "/_stats"),
            ("metrics_path", "/metrics"),
            ("health_path", "/healthz"),
        ):
            path = getattr(self, name)
            if path and (not path.startswith("/") or any(c in path for c in "?# ")):
                raise ValueError(f"--{_dash(name)} must be a path starting with /, e.g. {example}")
            if path and path in paths:
                raise ValueError(f"--{_dash(name)} and --{_dash(paths[path])} are both {path}")
            paths[path] = name

    @property
    def static_mounts(self) -> list[tuple[str, str, bool]]:
        """--static values as (URL prefix without trailing slash, directory, listing)."""
        return [parse_static_mount(mount) for mount in self.static]

    def thread_count(self, blocking_app: bool) -> int:
        """--threads resolved for an app: auto gives a WSGI app (which may block: a
        database, a file) as many threads as concurrent.futures would, and a native
        app (which must not block) none."""
        if self.threads == "auto":
            return min(32, (os.cpu_count() or 1) + 4) if blocking_app else 0
        return int(self.threads)

    @property
    def worker_count(self) -> int:
        """--workers resolved: auto is the CPU count; unset, $WEB_CONCURRENCY or 1."""
        value = self.workers or os.environ.get("WEB_CONCURRENCY", "") or "1"
        if value == "auto":
            return os.cpu_count() or 1
        return int(value)

    @property
    def supervised(self) -> bool:
        """Whether a supervisor runs the server in worker processes."""
        return self.worker_count > 1 or bool(self.max_requests) or self.reload

    @property
    def connection_limit(self) -> int:
        return self.max_connections or default_max_connections()


def settings() -> list[dataclasses.Field]:
    """The Config fields, in declaration order (the CLI and docs are built from these)."""
    return list(dataclasses.fields(Config))


def _dash(name: str) -> str:
    return name.replace("_", "-")


def flag_of(item: dataclasses.Field) -> str:
    return item.metadata.get("flag") or "--" + _dash(item.name)


def file_key(item: dataclasses.Field) -> str:
    """A setting's key in a --config file: its flag, with `_` for `-` (bind, max_requests)."""
    return flag_of(item)[2:].replace("-", "_")


def settings_from_file(path: str) -> dict[str, object]:
    """The settings a TOML --config file gives, by field name.  Raises ValueError naming
    the file and the key for what cannot be read or is not a setting."""
    try:
        with open(path, "rb") as file:
            table = tomllib.load(file)
    except OSError as exc:
        raise ValueError(f"cannot read --config {path!r}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"--config {path!r} is not valid TOML: {exc}") from None
    fields = {file_key(item): item for item in settings()}
    hints = typing.get_type_hints(Config)
    values: dict[str, object] = {}
    for key, value in table.items():
        item = fields.get(key)
        if item is None:
            raise ValueError(
                f"--config {path!r}: unknown key {key!r} (the keys are the flags of "
                "selserve --help, with _ for -: max_connections, bind, ...)"
            )
        values[item.name] = _file_value(path, key, value, hints[item.name])
    return values


def _file_value(path: str, key: str, value: object, kind) -> object:
    if typing.get_origin(kind) is list:
        value = [value] if isinstance(value, str) else value
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
        wanted = "a string or a list of strings"
    elif kind is bool:
        if isinstance(value, bool):
            return value
        wanted = "true or false"
    elif kind is str:
        if isinstance(value, (str, int)) and not isinstance(value, bool):
            return str(value)  # (workers = 4 and threads = 8 are numbers in TOML)
        wanted = "a string or a whole number"
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        wanted = "a whole number"
    else:  # float
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        wanted = "a number"
    raise ValueError(f"--config {path!r}: {key} must be {wanted}, not {value!r}")


def markdown_table() -> str:
    """The settings as the README's Markdown table (a test keeps the README in step)."""
    rows = ["| flag | --config key | default | meaning |", "| --- | --- | --- | --- |"]
    for item in settings():
        if item.default_factory is not dataclasses.MISSING:
            default = ", ".join(item.default_factory()) or "none"
        elif isinstance(item.default, bool):
            default = "off"
        else:
            default = str(item.default) if item.default != "" else '""'
        rows.append(
            f"| `{flag_of(item)}` | `{file_key(item)}` | `{default}` | {item.metadata['help']} |"
        )
    return "\n".join(rows)
