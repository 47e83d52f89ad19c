"""Config: validation messages, and the README's settings table kept in step."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from selserve.config import Config, markdown_table, settings


def test_readme_settings_table_is_current():
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    assert markdown_table() in readme, "regenerate the README table from selserve/config.py"


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"keepalive_timeout": 0}, "--keepalive-timeout must be greater than 0"),
        ({"low_water": 10, "high_water": 5}, "--low-water must not exceed --high-water"),
        ({"log_level": "loud"}, "--log-level must be one of"),
        ({"static": ["assets"]}, "--static 'assets' must be PREFIX=DIR"),
        ({"static": ["/m=./m:lsting"]}, "unknown option 'lsting' after ':'"),
        ({"static": ["/m=./m:"]}, "unknown option '' after ':'"),
        ({"static": ["/m=:listing"]}, "--static '/m=:listing' must be PREFIX=DIR"),
        ({"server_header": "x\r\ny"}, "--server-header must not contain"),
        ({"server_header": "x\x01y"}, "--server-header must not contain"),
        ({"server_header": "x\x7fy"}, "--server-header must not contain"),
        ({"server_header": "\u670d\u52a1"}, "--server-header must not contain"),
        ({"keepalive_timeout": float("nan")}, "--keepalive-timeout must be a finite number"),
        ({"header_timeout": float("inf")}, "--header-timeout must be a finite number"),
        ({"open_file_cache_valid": float("nan")}, "--open-file-cache-valid must be a finite"),
        ({"shutdown_timeout": float("-inf")}, "--shutdown-timeout must be a finite number"),
        ({"drain_delay": float("nan")}, "--drain-delay must be a finite number"),
        ({"handshake_timeout": float("nan")}, "--handshake-timeout must be a finite number"),
        ({"root_path": "app/"}, "--root-path must start with /"),
    ],
)
def test_bad_settings_are_refused_with_the_fix(settings, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        Config(**settings)


def test_a_server_header_may_hold_latin_1_and_tabs():
    assert Config(server_header="s\u00e9lserve\t1.0 (+https://x)").server_header.startswith("s")


def test_every_setting_in_seconds_refuses_nan():
    seconds = [f.name for f in settings() if f.type == "float"]
    assert len(seconds) >= 9  # (the timeouts, the cache's validity, the drain delay)
    for name in seconds:
        with pytest.raises(ValueError, match="must be a finite number of seconds"):
            Config(**{name: float("nan")})


def test_static_mounts_are_normalised_and_do_not_list_by_default():
    config = Config(static=["/assets/=./public", "/=./root"])
    assert config.static_mounts == [("/assets", "./public", False), ("/", "./root", False)]


def test_static_mount_listing_suffix_turns_listing_on():
    config = Config(static=["/media=./media:listing"])
    assert config.static_mounts == [("/media", "./media", True)]


@pytest.mark.parametrize("directory", ["./a:b/", "/srv/a:b/c", "C:\\files", "./v1:2"])
def test_static_directory_with_a_colon_that_is_no_option_is_kept_whole(directory):
    assert Config(static=[f"/x={directory}"]).static_mounts == [("/x", directory, False)]


def test_dotfiles_are_off_by_default():
    assert Config().dotfiles is False


def test_no_listing_help_names_root_and_static_mounts():
    help_text = next(f for f in settings() if f.name == "no_listing").metadata["help"]
    assert "--root" in help_text and "PREFIX=DIR:listing" in help_text


def test_threads_auto_gives_wsgi_apps_a_pool_and_native_apps_none():
    config = Config()
    assert config.thread_count(blocking_app=False) == 0
    assert config.thread_count(blocking_app=True) == min(32, (os.cpu_count() or 1) + 4)


def test_an_explicit_thread_count_is_the_same_for_every_app():
    assert [Config(threads=n).thread_count(b) for n in (0, 3) for b in (False, True)] == [
        0,
        0,
        3,
        3,
    ]


@pytest.mark.parametrize("value", ["-1", "many", "2.5"])
def test_a_thread_count_that_is_not_a_number_or_auto_is_refused(value):
    with pytest.raises(ValueError, match="--threads"):
        Config(threads=value)


@pytest.mark.parametrize("value", ["0", "-2", "lots"])
def test_a_worker_count_that_is_not_a_positive_number_or_auto_is_refused(value):
    with pytest.raises(ValueError, match="--workers"):
        Config(workers=value)


def test_web_concurrency_is_the_default_worker_count(monkeypatch):
    monkeypatch.setenv("WEB_CONCURRENCY", "5")
    assert (Config().worker_count, Config(workers="2").worker_count) == (5, 2)


def write(tmp_path, text: str) -> str:
    path = tmp_path / "selserve.toml"
    path.write_text(text)
    return str(path)


def test_a_config_file_gives_every_kind_of_setting(tmp_path):
    from selserve.config import settings_from_file

    path = write(
        tmp_path,
        'bind = ["127.0.0.1:1", "unix:/tmp/s"]\nmax_connections = 7\nkeepalive_timeout = 2\n'
        'no_listing = true\nthreads = 3\nworkers = "auto"\nstatic = "/a=./b"\n',
    )
    assert settings_from_file(path) == {
        "binds": ["127.0.0.1:1", "unix:/tmp/s"],
        "max_connections": 7,
        "keepalive_timeout": 2.0,
        "no_listing": True,
        "threads": "3",
        "workers": "auto",
        "static": ["/a=./b"],
    }


@pytest.mark.parametrize(
    "text, named",
    [
        ("max_conections = 5\n", "'max_conections'"),
        ('max_connections = "lots"\n', "max_connections must be a whole number"),
        ("no_listing = 1\n", "no_listing must be true or false"),
        ("bind = [1, 2]\n", "bind must be a string or a list of strings"),
        ("workers = 2.5\n", "workers must be a string or a whole number, not 2.5"),
        ("threads = true\n", "threads must be a string or a whole number, not True"),
        ("this is = not toml\n", "not valid TOML"),
    ],
)
def test_a_config_file_key_that_is_wrong_is_named(tmp_path, text, named):
    from selserve.config import settings_from_file

    with pytest.raises(ValueError, match="--config") as failure:
        settings_from_file(write(tmp_path, text))
    assert named in str(failure.value)


def test_flags_win_over_the_config_file(tmp_path):
    from selserve.cli import config_from_args, parse_arguments

    path = write(tmp_path, 'max_connections = 7\nbind = ["127.0.0.1:1"]\nbacklog = 9\n')
    config = config_from_args(
        parse_arguments(["--config", path, "--max-connections", "8", "--bind", "127.0.0.1:2"])
    )
    assert (config.max_connections, config.binds, config.backlog) == (8, ["127.0.0.1:2"], 9)
