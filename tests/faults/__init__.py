"""Fault-injection suite: the server under the abuse real servers see (load tools killed
mid-run, aborting and half-closing clients, slow readers, slowloris, floods past the
connection cap, garbage and smuggling shapes), once per available backend.

A package so that its conftest.py is imported as `faults.conftest` and the test modules
can import its helpers without clashing with tests/conftest.py."""
