"""Config: validation messages, and the README's settings table kept in step."""

from __future__ import annotations

from pathlib import Path

import pytest

from selserve.config import Config, markdown_table


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
        ({"server_header": "x\r\ny"}, "--server-header must not contain"),
        ({"root_path": "app/"}, "--root-path must start with /"),
    ],
)
def test_bad_settings_are_refused_with_the_fix(settings, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        Config(**settings)


def test_static_mounts_are_normalised():
    config = Config(static=["/assets/=./public", "/=./root"])
    assert config.static_mounts == [("/assets", "./public"), ("/", "./root")]
