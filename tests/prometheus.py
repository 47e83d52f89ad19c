"""A small parser of the Prometheus text exposition format (0.0.4), strict enough to
catch what a scraper would refuse: samples before their # TYPE, bad names, bad label
escapes, non-numbers, histograms whose buckets are not cumulative."""

from __future__ import annotations

import math
import re

NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
SAMPLE = re.compile(r"(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})? (?P<value>\S+)\Z")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"(?:,|\Z)')
TYPES = {"counter", "gauge", "histogram", "summary", "untyped"}


class Family(dict):
    """Samples of one metric family: {(sample name, sorted label pairs): value}."""

    def __init__(self, kind: str, help_text: str) -> None:
        super().__init__()
        self.kind = kind
        self.help = help_text

    def value(self, suffix: str = "", **labels: str) -> float:
        return self[(suffix, tuple(sorted(labels.items())))]


def parse(text: str) -> dict[str, Family]:
    assert text.endswith("\n"), "the exposition must end with a newline"
    helps: dict[str, str] = {}
    families: dict[str, Family] = {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name, _, help_text = line[7:].partition(" ")
            assert NAME.match(name) and name not in helps, line
            helps[name] = help_text
        elif line.startswith("# TYPE "):
            name, _, kind = line[7:].partition(" ")
            assert kind in TYPES and name in helps and name not in families, line
            families[name] = Family(kind, helps[name])
        else:
            match = SAMPLE.match(line)
            assert match, f"not a sample line: {line!r}"
            name = match["name"]
            family_name, suffix = _family_of(name, families)
            labels = _labels(match["labels"] or "")
            value = float(match["value"])  # raises for a non-number
            key = (suffix, tuple(sorted(labels.items())))
            assert key not in families[family_name], f"duplicate sample {line!r}"
            families[family_name][key] = value
    for name, family in families.items():
        if family.kind == "counter":
            assert name.endswith("_total"), f"counter {name} must end in _total"
        if family.kind == "histogram":
            _check_histogram(name, family)
    return families


def _family_of(name: str, families: dict[str, Family]) -> tuple[str, str]:
    if name in families:
        return name, ""
    for suffix in ("_bucket", "_sum", "_count"):
        base = name.removesuffix(suffix)
        if base != name and families.get(base) is not None and families[base].kind == "histogram":
            return base, suffix
    raise AssertionError(f"sample {name} comes before its # TYPE line")


def _labels(text: str) -> dict[str, str]:
    labels: dict[str, str] = {}
    position = 0
    while position < len(text):
        match = LABEL.match(text, position)
        assert match, f"bad labels {text!r}"
        labels[match[1]] = match[2].replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\")
        position = match.end()
    return labels


def _check_histogram(name: str, family: Family) -> None:
    buckets = sorted(
        (float(dict(labels)["le"]), value)
        for (suffix, labels), value in family.items()
        if suffix == "_bucket"
    )
    assert buckets and math.isinf(buckets[-1][0]), f"{name}: no +Inf bucket"
    counts = [value for _, value in buckets]
    assert counts == sorted(counts), f"{name}: buckets are not cumulative: {buckets}"
    assert family.value("_count") == counts[-1], f"{name}: _count is not the +Inf bucket"
