"""`--reload`, for development: notice that the app's Python source changed.

No dependency and no inotify: the supervisor polls, once a second, the
modification time of every `.py` file under the watched directories.  That
costs one stat() per file per second, which is why directories that hold
someone else's code (virtualenvs, site-packages, `node_modules`, caches, dot
directories) are skipped and the scan stops at MAX_FILES.
"""

from __future__ import annotations

import importlib.machinery
import logging
import os
import sys

log = logging.getLogger("selserve")

SUFFIXES = (".py",)
MAX_FILES = 20_000
_SKIPPED = frozenset(("__pycache__", "site-packages", "dist-packages", "node_modules"))


def app_directory(spec: str) -> str:
    """Where the app `module:callable` is imported from, found without importing
    it: the sys.path entry holding its top-level package or module (for a Django
    project, the directory with manage.py), or the working directory."""
    top = spec.partition(":")[0].split(".")[0]
    search = [os.getcwd(), *(entry for entry in sys.path if entry)]
    found = importlib.machinery.PathFinder.find_spec(top, search) if top else None
    if found is None or not found.origin or "-packages" in found.origin:
        return os.getcwd()  # (an installed app: its owner does not edit it here)
    if found.submodule_search_locations:  # a package: the directory above it
        return os.path.dirname(os.path.dirname(found.origin))
    return os.path.dirname(found.origin)


class SourceWatcher:
    """Remembers the modification times of the source files under `directories`;
    `changed()` says which one changed (or appeared, or went) since it last looked."""

    def __init__(self, directories: list[str]) -> None:
        self.directories = [os.path.abspath(directory) for directory in directories]
        self._warned = False
        self.times = self._scan()

    def changed(self) -> str | None:
        times = self._scan()
        if times == self.times:
            return None
        before, self.times = self.times, times
        for path in sorted(times.keys() | before.keys()):
            if times.get(path) != before.get(path):
                return path
        return None  # (unreachable: the dicts differ)

    @property
    def count(self) -> int:
        return len(self.times)

    def _scan(self) -> dict[str, int]:
        times: dict[str, int] = {}
        pending = list(self.directories)
        while pending:
            directory = pending.pop()
            try:
                entries = list(os.scandir(directory))
            except OSError:
                continue  # gone, or not ours to read
            if any(entry.name == "pyvenv.cfg" for entry in entries):
                continue  # a virtualenv
            for entry in entries:
                try:
                    if entry.is_dir(follow_symlinks=False):
                        if not entry.name.startswith(".") and entry.name not in _SKIPPED:
                            pending.append(entry.path)
                    elif entry.name.endswith(SUFFIXES):
                        times[entry.path] = entry.stat().st_mtime_ns
                except OSError:
                    continue  # removed while we looked
                if len(times) >= MAX_FILES:
                    self._warn_too_many()
                    return times
        return times

    def _warn_too_many(self) -> None:
        if not self._warned:
            self._warned = True
            log.warning(
                "--reload watches only the first %d source files; name the directories "
                "that hold the app with --reload-dir",
                MAX_FILES,
            )
