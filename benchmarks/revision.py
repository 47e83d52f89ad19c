"""selserve as of another git revision, for measuring a change against what it changes.

`unpack(revision, directory)` writes that revision's `selserve/` package into
`directory` (with `git archive`: the working tree is left alone) and returns the
revision's short name; put `directory` first on PYTHONPATH to run it.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def unpack(revision: str, directory: Path) -> str:
    """The short name of `revision`, whose selserve/ is now in `directory`.  Raises
    SystemExit with a one-line reason when git cannot archive it."""
    try:
        short = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", revision],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout.strip()
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", "--format=tar", short, "selserve"],
            capture_output=True,
            check=True,
            timeout=60,
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise SystemExit(
            f"--baseline {revision!r}: not a revision git can archive here ({exc})"
        ) from None
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "-x", "-C", str(directory)], input=archive, check=True, timeout=60)
    return short
