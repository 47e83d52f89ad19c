"""The app the runner serves when WSGI users run: the demo app, with the load-test WSGI
app mounted at /wsgi (`selserve loadtests._target:app`).  Static files are added with the
command line's `--static /static=DIR:listing`, in front of both.
"""

from __future__ import annotations

from selserve.app import Request, Response, native
from selserve.demo import app as demo_app
from selserve.wsgi import WSGIAdapter

from ._wsgi_app import app as wsgi_app

WSGI_PREFIX = "/wsgi"

_WSGI_DIRECTORY = WSGI_PREFIX + "/"
_wsgi = WSGIAdapter(wsgi_app, root_path=WSGI_PREFIX)


@native
def app(request: Request) -> Response:
    path = request.path
    if path == WSGI_PREFIX or path.startswith(_WSGI_DIRECTORY):
        return _wsgi(request)
    return demo_app(request)
