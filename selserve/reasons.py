"""Why a connection closed, and what it is doing with its transport.

Close reasons are the labels of the `connections closed` counters (`/_stats`,
`selserve_connections_closed_total{reason}`) and of the debug log; a timeout's
reason is also the close reason it ends with.  They live apart from
connection.py so that the parts of a connection (preamble.py, tls_connection.py)
and the server can name them without importing each other.  Values are
compared by identity: always use these names, never the strings.
"""

from __future__ import annotations

# Timeouts (each also the close reason it ends with).
HEADER_TIMEOUT = "header-timeout"
BODY_TIMEOUT = "body-timeout"
WRITE_TIMEOUT = "write-timeout"
KEEPALIVE_TIMEOUT = "keepalive-timeout"

# Other close reasons.
PEER_CLOSED = "peer-closed"
RECV_ERROR = "recv-error"
SEND_ERROR = "send-error"
DONE = "done"
APP_ERROR = "app-error"
INTERNAL_ERROR = "internal-error"
SHUTDOWN = "shutdown"
RECLAIMED = "reclaimed"  # idle, closed to make room for a new client at the cap
PROXY_REFUSED = "proxy-header-refused"  # --proxy-protocol: no valid PROXY header,
PROXY_TIMEOUT = "proxy-header-timeout"  # or none within --header-timeout

# What a connection is doing with its transport (its io_state).  PREAMBLE: with
# --proxy-protocol, the balancer's PROXY header comes before any HTTP.  AWAITING_APP:
# a worker thread has the request; its input is not read until the answer comes.
OPEN, LINGERING, CLOSED_IO, PREAMBLE = "open", "lingering", "closed", "preamble"
AWAITING_APP = "awaiting-app"
