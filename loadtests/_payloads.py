"""Bytes the load tests send and expect: the static file tree, and request bodies.

The static tree is deterministic: every file's content is a function of its path and size,
so a static browser can check every byte it receives (ranges included) without reading the
server's disk, wherever the server runs.  `write_static_tree(DIR)` creates it (the runner
does, or `python -m loadtests.run --write-static-tree DIR` for a server you start yourself).

Nothing here imports Locust: the runner and the server side use it too.
"""

from __future__ import annotations

import os
import random
import string
from functools import lru_cache

# (path relative to the tree root, size in bytes).  Sizes straddle the interesting edges:
# empty, one byte, the write buffer's low (64 KiB) and high (256 KiB) water marks, and
# files far bigger than the buffer (sendfile in many turns).
STATIC_FILES: tuple[tuple[str, int], ...] = (
    ("empty.bin", 0),
    ("one.txt", 1),
    ("page.html", 1000),
    ("block.bin", 16384),
    ("odd.bin", 65543),
    ("mid.bin", 300_000),
    ("large.bin", 1_048_576),
    ("huge.bin", 4_194_307),
    ("with space & ü.txt", 4096),
    ("sub/nested.css", 2048),
    ("sub/deeper/leaf.json", 777),
    ("site/index.html", 500),
)
STATIC_SIZES = dict(STATIC_FILES)
# Directories (relative, with a trailing slash) and the entries their listing must show.
STATIC_DIRS: dict[str, frozenset[str]] = {
    "": frozenset({name for name, _ in STATIC_FILES if "/" not in name} | {"sub/", "site/"}),
    "sub/": frozenset({"nested.css", "deeper/"}),
    "sub/deeper/": frozenset({"leaf.json"}),
}
# Directories answered with their index.html instead of a listing.
STATIC_INDEXED = {"site/": "site/index.html"}
# All files get this modification time: old enough for strong ETags (a file changed less
# than a second ago gets a weak one) and the same Last-Modified on every run.
STATIC_MTIME = 1_700_000_000  # 2023-11-14 22:13:20 UTC

_ALPHABET = (string.ascii_letters + string.digits + " .,;:-_/\n").encode()
# A prime length, so that consecutive blocks start at different offsets of the pattern.
_PATTERN_LENGTH = 4093


@lru_cache(maxsize=64)
def static_content(path: str) -> bytes:
    """The exact content of the tree file at `path` (relative, as in STATIC_FILES)."""
    size = STATIC_SIZES[path]
    rng = random.Random(path)
    pattern = bytes(rng.choice(_ALPHABET) for _ in range(_PATTERN_LENGTH))
    return (pattern * (size // _PATTERN_LENGTH + 1))[:size]


def write_static_tree(root: str | os.PathLike) -> str:
    """Create the tree under `root` (made if missing); return its path as a str."""
    root = os.fspath(root)
    for path, _ in STATIC_FILES:
        target = os.path.join(root, *path.split("/"))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "wb") as f:
            f.write(static_content(path))
        os.utime(target, (STATIC_MTIME, STATIC_MTIME))
    return root


class BodyPool:
    """Random request bodies: slices of one random buffer, so that making a body costs a
    slice, not a call to the random generator per byte (the load generator's CPU is the
    scarce resource)."""

    def __init__(self, size: int = 4 * 1024 * 1024, seed: int | None = None) -> None:
        self.data = random.Random(seed).randbytes(size)

    def body(self, rng: random.Random, length: int) -> bytes:
        length = min(length, len(self.data))
        start = rng.randrange(len(self.data) - length + 1)
        return self.data[start : start + length]


def body_length(rng: random.Random) -> int:
    """A request body length: mostly small, sometimes around the buffer marks, rarely
    above the 1 MiB spill threshold (the server then keeps the body in a temp file)."""
    roll = rng.random()
    if roll < 0.6:
        return rng.randrange(0, 2048)
    if roll < 0.95:
        return rng.randrange(2048, 300_000)
    return rng.randrange(1_048_577, 1_600_000)
