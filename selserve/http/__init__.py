"""Sans-I/O HTTP/1.1: bytes in, events out; responses serialised to bytes.

Nothing in this package touches a socket, a clock or a logger: every behaviour
can be tested by feeding bytes.
"""
