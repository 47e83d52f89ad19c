"""pytest-benchmark suite (a package so its conftest, helpers and modules have their own names)."""
