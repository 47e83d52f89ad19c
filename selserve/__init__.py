"""selserve: a small, dependency-free HTTP/1.1 server on the standard library's selectors.

from selserve import Response, serve
from selserve.app import native
serve(native(lambda request: Response(200, [("Content-Type", "text/plain")], b"hi\\n")))

(A callable not marked @native is served as a WSGI application.)
"""

from .app import FileBody, Request, Response
from .config import Config
from .server import Server, serve

__version__ = "0.1.0"
__all__ = ["Config", "FileBody", "Request", "Response", "Server", "serve", "__version__"]
