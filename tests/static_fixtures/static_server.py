"""A `StaticFiles` server in a subprocess, for the static integration and browser tests.

It reuses `helpers.ServerProcess` (own session, stderr to a file, poll-connect readiness,
SIGTERM then SIGKILL by pid) and only changes what is run: a tiny launcher that serves
`StaticFiles(root)` -- alone, or mounted at /assets in front of the demo app.
"""

from __future__ import annotations

import sys

from helpers import ServerProcess

LAUNCHER = """
import sys
from selserve import serve
from selserve.static import StaticFiles, mount
root, bind, backend, mode = sys.argv[1:5]
static = StaticFiles(root)
if mode == "mounted":
    from selserve.demo import app as demo
    app = mount(demo, [("/assets", static)])
else:
    app = static
serve(app, binds=[bind], backend=backend)
"""


class StaticServer(ServerProcess):
    """`serve(StaticFiles(root))` (mode "static") or the demo app with root at /assets
    (mode "mounted"), on a free loopback port."""

    def __init__(self, backend: str, root: str, mode: str = "static") -> None:
        super().__init__(backend, app=None)
        self.root = str(root)
        self.mode = mode

    @property
    def argv(self) -> list[str]:
        return [sys.executable, "-c", LAUNCHER, self.root, self.bind, self.backend, self.mode]
