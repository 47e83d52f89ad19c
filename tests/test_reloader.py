"""--reload's source watcher: which files it looks at, and what counts as a change."""

from __future__ import annotations

import os
import sys

from selserve import reloader
from selserve.reloader import SourceWatcher, app_directory


def touch(path, stamp: int = 2_000_000_000) -> None:
    os.utime(path, ns=(stamp, stamp))


def test_a_changed_an_added_and_a_removed_file_are_each_noticed(tmp_path):
    (tmp_path / "app.py").write_text("x = 1\n")
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "views.py").write_text("y = 1\n")
    watcher = SourceWatcher([str(tmp_path)])
    assert watcher.count == 2 and watcher.changed() is None
    touch(tmp_path / "pkg" / "views.py")
    assert watcher.changed() == str(tmp_path / "pkg" / "views.py")
    assert watcher.changed() is None  # (once)
    (tmp_path / "new.py").write_text("")
    assert watcher.changed() == str(tmp_path / "new.py")
    (tmp_path / "app.py").unlink()
    assert watcher.changed() == str(tmp_path / "app.py")


def test_other_peoples_code_and_other_files_are_not_watched(tmp_path):
    (tmp_path / "app.py").write_text("")
    (tmp_path / "notes.txt").write_text("")
    for skipped in (".git", "__pycache__", "node_modules", "lib/site-packages", "venv"):
        (tmp_path / skipped).mkdir(parents=True)
        (tmp_path / skipped / "mod.py").write_text("")
    (tmp_path / "venv" / "pyvenv.cfg").write_text("home = /usr\n")
    watcher = SourceWatcher([str(tmp_path)])
    assert list(watcher.times) == [str(tmp_path / "app.py")]
    touch(tmp_path / "notes.txt")
    touch(tmp_path / "venv" / "mod.py")
    assert watcher.changed() is None


def test_the_scan_stops_at_its_bound_with_one_warning(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(reloader, "MAX_FILES", 3)
    for i in range(5):
        (tmp_path / f"m{i}.py").write_text("")
    watcher = SourceWatcher([str(tmp_path)])
    watcher.changed()
    assert watcher.count == 3
    assert [r.message for r in caplog.records].count(
        "--reload watches only the first 3 source files; name the directories that hold "
        "the app with --reload-dir"
    ) == 1


def test_the_app_directory_is_where_its_top_level_name_is_found(tmp_path, monkeypatch):
    (tmp_path / "single.py").write_text("")
    (tmp_path / "site" / "mysite").mkdir(parents=True)
    (tmp_path / "site" / "mysite" / "__init__.py").write_text("")
    (tmp_path / "site" / "mysite" / "wsgi.py").write_text("")
    monkeypatch.chdir(tmp_path)
    assert app_directory("single:app") == str(tmp_path)
    monkeypatch.setattr(sys, "path", [str(tmp_path / "site"), *sys.path])
    assert app_directory("mysite.wsgi:application") == str(tmp_path / "site")
    assert app_directory("no_such_module_here:app") == str(tmp_path)
    assert app_directory("pytest:main") == str(tmp_path)  # installed: not watched
