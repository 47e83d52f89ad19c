"""The `selserve` command line (also `python -m selserve`).

Flags are derived from `config.Config`, so a setting added there appears here
with its default and help.  Mistakes a user can make at start-up (a bad flag,
an app that cannot be imported, a port in use) print one line naming the
problem and the fix and exit with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
import traceback
import typing

from . import __version__, backends
from .activation import activated_binds
from .config import Config, flag_of, settings, settings_from_file
from .dispatch import as_native
from .listeners import BindError, create_listener, listener_url, raise_open_file_limit
from .server import Server

USAGE_ERROR = 2

log = logging.getLogger("selserve")


class UsageError(Exception):
    """A start-up problem the user can fix; its message says how."""


class AppFailedToLoad(UsageError):
    """The application's own code raised while being imported or built: its
    traceback (the app's frames only) is what the user needs to fix it."""

    def __init__(self, message: str, exc: BaseException) -> None:
        super().__init__(message)
        self.traceback = _app_traceback(exc)


def _app_traceback(exc: BaseException) -> str:
    """The traceback of `exc` from the first frame of the application's code: the
    frames of this module and of the import machinery say nothing to the user."""
    tb = exc.__traceback__
    while tb is not None and _is_machinery(tb.tb_frame.f_code.co_filename):
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb))


def _is_machinery(filename: str) -> bool:
    return (
        filename == __file__
        or filename.startswith("<frozen importlib")
        or filename == importlib.__file__
    )


def _names_spec_module(missing: str | None, module_name: str) -> bool:
    """Whether a ModuleNotFoundError for `missing` is about the module the command
    line names (or a package on its way), not an import inside the app."""
    return missing is not None and (missing == module_name or module_name.startswith(missing + "."))


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> typing.NoReturn:
        self.exit(USAGE_ERROR, f"selserve: {message} (see selserve --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="selserve",
        description="A small, dependency-free HTTP/1.1 server on the standard library's selectors.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "app",
        nargs="?",
        help="a WSGI application as module:callable (or module:factory() to call a factory); "
        "without one, the --root directory is served",
    )
    parser.add_argument(
        "--list-backends", action="store_true", help="print the backends usable here and exit"
    )
    parser.add_argument("--version", action="version", version=f"selserve {__version__}")
    parser.add_argument(
        "--config",
        metavar="FILE.toml",
        help="read settings from a TOML file: the keys are the flags, with _ for - "
        "(bind, max_connections, ...); flags given here win over the file",
    )
    hints = typing.get_type_hints(Config)
    for field in settings():
        flag = flag_of(field)
        kind = hints[field.name]
        # (argparse formats help with %: a literal one, as in a log template, is %%)
        common = {"dest": field.name, "help": field.metadata["help"].replace("%", "%%")}
        if field.metadata.get("metavar"):
            common["metavar"] = field.metadata["metavar"]
        if typing.get_origin(kind) is list:
            common["help"] += f" (default: {', '.join(field.default_factory()) or 'none'})"
            parser.add_argument(flag, action="append", default=argparse.SUPPRESS, **common)
        elif kind is bool:
            common.pop("metavar", None)
            parser.add_argument(flag, action="store_true", **common)
        else:
            parser.add_argument(flag, type=kind, default=field.default, **common)
    return parser


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    """The command line, over the settings of its --config file (if any)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.config:
        try:
            from_file = settings_from_file(args.config)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        # Flags win: the file's values become the defaults, and list settings (which
        # flags append to) are taken from the file only when no flag gave them.
        lists = {k: v for k, v in from_file.items() if isinstance(v, list)}
        parser.set_defaults(**{k: v for k, v in from_file.items() if k not in lists})
        args = parser.parse_args(argv)
        for name, value in lists.items():
            if not hasattr(args, name):
                setattr(args, name, value)
    return args


def config_from_args(args: argparse.Namespace) -> Config:
    values = {f.name: getattr(args, f.name) for f in settings() if hasattr(args, f.name)}
    activated = activated_binds()
    if activated:
        # Started by systemd with its sockets: serve them (and any --bind given too).
        values["binds"] = [*activated, *values.get("binds", [])]
    try:
        config = Config(**values)
        backends.backend_class(config.backend)
    except (ValueError, backends.UnknownBackend) as exc:
        raise UsageError(str(exc)) from None
    return config


def load_app(spec: str):
    """Import 'module:callable' (a dotted attribute path; 'module:factory()' calls it)."""
    module_name, sep, attr_path = spec.partition(":")
    call_factory = attr_path.endswith("()")
    if call_factory:
        attr_path = attr_path[:-2]
    if not sep or not module_name or not attr_path:
        raise UsageError(f"application {spec!r} must be written module:callable")
    try:
        target = importlib.import_module(module_name)
    except Exception as exc:
        message = f"cannot import module {module_name!r} for {spec!r}: {type(exc).__name__}: {exc}"
        if isinstance(exc, ModuleNotFoundError) and _names_spec_module(exc.name, module_name):
            raise UsageError(message) from None  # a typo on the command line: one line
        raise AppFailedToLoad(message, exc) from None
    for attr in attr_path.split("."):
        try:
            target = getattr(target, attr)
        except AttributeError:
            raise UsageError(f"module {module_name!r} has no attribute {attr_path!r}") from None
    if not callable(target):
        raise UsageError(f"{spec!r} is a {type(target).__name__}, not a callable application")
    if call_factory:
        try:
            target = target()
        except Exception as exc:
            raise AppFailedToLoad(
                f"factory {spec!r} failed: {type(exc).__name__}: {exc}", exc
            ) from None
        if not callable(target):
            raise UsageError(f"factory {spec!r} returned a {type(target).__name__}, not an app")
    return target


def _refuse_serving_the_key(root: str, config: Config) -> None:
    """Refuse a TLS private key that the static files under `root` would hand to anyone
    (`selserve --certfile cert.pem --keyfile key.pem` run where the key was made)."""
    if not config.keyfile:
        return
    key = os.path.realpath(config.keyfile)
    served = os.path.realpath(root)
    inside = os.path.relpath(key, served)
    if inside.startswith(os.pardir + os.sep) or inside == os.pardir:
        return
    hidden = any(part.startswith(".") for part in inside.split(os.sep))
    if hidden and not config.dotfiles:
        return  # (dot-files are never served)
    raise UsageError(
        f"--keyfile {config.keyfile} is inside the served directory {root}: anyone could "
        "download the private key; keep it outside what is served (e.g. ~/.selserve/)"
    )


def build_app(spec: str | None, config: Config):
    """The native application the server runs, from the APP argument and the settings."""

    def static_files(root: str, listing: bool):
        from .file_cache import OpenFileCache
        from .static import StaticFiles

        _refuse_serving_the_key(root, config)
        try:
            return StaticFiles(
                root,
                listing=listing,
                dotfiles=config.dotfiles,
                follow_symlinks=config.follow_symlinks,
                precompressed=config.precompressed,
                open_file_cache=(
                    OpenFileCache(config.open_file_cache, config.open_file_cache_valid)
                    if config.open_file_cache
                    else None
                ),
            )
        except ValueError as exc:
            raise UsageError(f"{exc} (--root and --static need an existing directory)") from None

    if config.chdir:
        try:
            os.chdir(config.chdir)
        except OSError as exc:
            raise UsageError(f"--chdir {config.chdir!r}: {exc.strerror}") from None
    if spec is None:
        app = static_files(config.root, listing=not config.no_listing)
    else:
        if os.getcwd() not in sys.path and "" not in sys.path:
            sys.path.insert(0, os.getcwd())
        app = as_native(load_app(spec), config)
    if config.static:
        from .static import mount

        # A mount in front of an app lists only when asked to (PREFIX=DIR:listing): an
        # upload folder must not show its contents by default, as with nginx's autoindex.
        app = mount(
            app,
            [(prefix, static_files(d, listing)) for prefix, d, listing in config.static_mounts],
        )
    return app


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_arguments(argv)
    except UsageError as exc:
        print(f"selserve: {exc}", file=sys.stderr)
        return USAGE_ERROR
    if args.list_backends:
        best = backends.best()
        for name in backends.available():
            print(f"{name}{' (auto)' if name == best else ''}")
        return 0
    try:
        config = config_from_args(args)
        logging.basicConfig(
            level=config.log_level.upper(),
            # With workers, each line says which process wrote it.
            format="%(asctime)s %(levelname)s %(name)s"
            + (" [%(process)d]" if config.worker_count > 1 else "")
            + ": %(message)s",
            stream=sys.stderr,
        )
        if config.supervised:
            return _supervise(args.app, config, lambda: config_from_args(parse_arguments(argv)))
        app = build_app(args.app, config)
        raise_open_file_limit()
        server = Server(app, config)
        server.handle_stop_signals()  # (before a client can be queued)
        server.bind()
    except (UsageError, BindError, ValueError) as exc:
        # ValueError: a setting the server refused (an --access-log it cannot open).
        if isinstance(exc, AppFailedToLoad):
            print(exc.traceback, file=sys.stderr)
        print(f"selserve: {exc}", file=sys.stderr)
        return USAGE_ERROR
    threads = config.thread_count(getattr(app, "blocking", False))
    _announce(args.app, config, server.urls, server.backend.name, threads)
    if server.tls is not None:  # (with workers, SIGHUP starts new ones, which read it)
        server.loop.add_signal_handler(signal.SIGHUP, server.reload_tls)
    server.serve_forever(announce=False)
    return 0


def _supervise(spec: str | None, config: Config, reload_config) -> int:
    """--workers N: open the listeners here, import the app in each worker."""
    from .supervisor import Supervisor, hold_signals

    if config.chdir:
        # Relative paths (unix: binds, --root, the app) mean the same here and there.
        config.chdir = os.path.abspath(config.chdir)
        try:
            os.chdir(config.chdir)
        except OSError as exc:
            raise UsageError(f"--chdir {config.chdir!r}: {exc.strerror}") from None
    watcher = _source_watcher(spec, config) if config.reload else None
    raise_open_file_limit()
    hold_signals()  # (before a client can be queued)
    listeners = []
    try:
        for address in config.binds:
            listeners.append((create_listener(address, config.backlog), address))
    except BindError:
        for sock, _ in listeners:
            sock.close()
        raise
    tls_binds = config.tls_binds
    urls = [listener_url(sock, address in tls_binds) for sock, address in listeners]
    _announce(spec, config, urls, backends.backend_class(config.backend).name, None)
    supervisor = Supervisor(
        config,
        lambda settings: build_app(spec, settings),
        listeners,
        reload_config=reload_config,
        watcher=watcher,
    )
    return supervisor.run()


def _source_watcher(spec: str | None, config: Config):
    from .reloader import SourceWatcher, app_directory

    if spec is None:
        raise UsageError(
            "--reload needs an APP (module:callable): files under --root are read "
            "afresh on every request anyway"
        )
    directories = config.reload_dirs or [app_directory(spec)]
    watcher = SourceWatcher(directories)
    log.warning(
        "--reload is for development: %d source file%s under %s polled once a "
        "second; do not use it in production",
        watcher.count,
        " is" if watcher.count == 1 else "s are",
        ", ".join(watcher.directories),
    )
    return watcher


def _announce(
    spec: str | None, config: Config, urls: list[str], backend: str, threads: int | None
) -> None:
    """The start-up line a deployer reads: what is served, where, and how."""
    what = f"app {spec}" if spec else f"directory {os.path.abspath(config.root)}"
    workers = config.worker_count
    how = [f"backend {backend}", f"{workers} worker{'' if workers == 1 else 's'}"]
    if threads is None and config.threads != "auto":
        threads = int(config.threads)
    if threads is None:  # (auto: the supervisor imports no app, so it cannot tell)
        how.append("threads auto")
    elif threads:
        how.append(f"{threads} thread{'' if threads == 1 else 's'}")
    else:
        how.append("no threads (the app runs in the event loop)")
    how += [f"static {mount}" for mount in config.static]
    log.info("selserve %s: %s on %s (%s)", __version__, what, ", ".join(urls), ", ".join(how))
