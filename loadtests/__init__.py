"""Locust load tests for selserve: `locust -f loadtests/` and `python -m loadtests.run`.

Locust imports every `*.py` file here whose name does not start with an underscore as a
locustfile (the user classes), so support modules are named `_*.py`.  See README.md here.
"""
