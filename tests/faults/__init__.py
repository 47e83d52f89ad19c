"""Fault-injection suite: the server under the abuse real servers see (load tools killed
mid-run, resets mid-stream, aborting and half-closing clients, slow readers, slowloris,
floods past the connection cap and past select's FD_SETSIZE, garbage and smuggling
shapes), once per available backend.

A package so that its shared code is imported as `faults.helpers`, apart from the
black-box helpers every test directory uses (tests/helpers.py, imported as `helpers`)."""
