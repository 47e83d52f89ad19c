"""selserve: a small, dependency-free HTTP/1.1 server on the standard library's selectors.

from selserve import serve, Response
serve(lambda request: Response(200, [("Content-Type", "text/plain")], b"hi\\n"))
"""

from .app import FileBody, Request, Response
from .config import Config
from .server import Server, serve

__version__ = "0.1.0"
__all__ = ["Config", "FileBody", "Request", "Response", "Server", "serve", "__version__"]
