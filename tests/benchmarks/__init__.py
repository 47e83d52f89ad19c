"""pytest-benchmark suite (a package so its conftest and modules have their own names)."""
