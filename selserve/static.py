"""Static files: the default application of `selserve`, and a mountable one.

`StaticFiles(root)` answers GET and HEAD for the files under `root`: file content goes
out as a `FileBody` (sendfile, never read into memory; a small file the open-file
cache keeps whole goes out from memory, with its head in one send), with `Content-Type`,
`Content-Length`, `Last-Modified`, an `ETag` and `Accept-Ranges: bytes`; conditional
requests (RFC 9110 §13) give 304 or 412; `Range: bytes=` (§14) gives 206, or 416 when
nothing asked for exists.  Several ranges are answered with one `multipart/byteranges`
body (§14.6), read block by block as the client takes it; ranges that overlap or touch
are merged first, and more than 16 after merging get the whole file (200).  A directory
is answered with its `index.html`, or an HTML listing (names escaped and quoted, sorted
directories first, with size and modification time), or 403 when listings are off; a
directory asked for without its trailing slash is redirected (301) to the slash form.
With `precompressed`, `file.br` or `file.gz` beside `file` is sent with its
`Content-Encoding` to clients that accept it (`Vary: Accept-Encoding`).  Static files
never need a request body, so `on_head(request)` (of `StaticFiles` and of what `mount`
returns) answers a request that carries one from its head alone, as `__call__` would,
and the connection discards the body instead of storing it.

The ETag is `"<size>-<mtime in ns>"` (hex; like nginx's, made of size and modification
time only), and a precompressed variant's ends in `-<coding>`.  It never holds the
inode: that would show how the disk is laid out (CVE-2003-1418) and differ between
servers holding the same files.  It changes when a file is rewritten or replaced,
unless the new content has the same size and the same modification time to the
nanosecond.  It is strong, except for a file modified less than a second ago (then
`W/`), because a second write within the file system's timestamp granularity could
change the content without changing the tag; a weak tag never satisfies `If-Range`.

What it must never do: serve anything outside `root`.  The path is percent-decoded
exactly once, segment by segment, after splitting on `/`; a segment that decodes to
`.`, `..`, or contains `/`, `\\` or NUL, an empty segment (`//`), a malformed escape
and raw non-ASCII are all refused with 404.  The opened file's real path (from its
descriptor, so no race between check and use) must lie under the root's real path,
unless `follow_symlinks` is set.  Only regular files and directories are served (a
FIFO or a device is 404, and is opened non-blocking so it cannot stall the loop).
Nor, unless `dotfiles` is set, anything hidden: a path with a segment that decodes to
a name starting with "." (`/.env`, `/.git/config`, `/%2egit/`) is 404 and such names
are left out of listings; only `/.well-known/` right under the root (RFC 8615) is
served and listed.  Each request costs one `open` and one `fstat` on the opened
descriptor (plus one `readlink` of the descriptor to check where it really is), unless
an `OpenFileCache` (file_cache.py, --open-file-cache) still holds the file: then none.
"""

from __future__ import annotations

import errno
import html
import logging
import mimetypes
import os
import re
import stat
import time
from email.utils import formatdate
from functools import lru_cache
from urllib.parse import quote, unquote_to_bytes

from .app import FileBody, Request, Response
from .file_cache import CachedFile, OpenFileCache
from .http.abnf import TOKEN
from .http.conditional import if_range, parse_ranges, preconditions

try:
    import fcntl
except ImportError:  # not POSIX
    fcntl = None

log = logging.getLogger("selserve")

__all__ = ["StaticFiles", "mount"]

ALLOWED_METHODS = "GET, HEAD"
INDEX_NAME = b"index.html"
# The one dot-directory served without `dotfiles`, right under the root (RFC 8615).
WELL_KNOWN = b".well-known"
_WELL_KNOWN_NAME = WELL_KNOWN.decode()
# Parts of one multipart/byteranges answer at most; beyond it the whole file is sent.
MAX_RANGE_PARTS = 16
# Bytes read from the file per piece of a multipart/byteranges body.
RANGE_BLOCK = 64 * 1024
# A file modified less than this long ago gets a weak ETag and a weak Last-Modified
# (RFC 9110 §8.8.2.2: a date is strong only if at least a second before Date).
STRONG_AFTER = 1.0
CRLF = "\r\n"
# Request paths whose file-system name is remembered (a pure function of the path):
# past this many the memo starts again, so a client inventing paths costs it nothing.
RESOLVED_MAX = 1024

# Non-blocking: opening a FIFO for reading would otherwise wait for a writer, in the loop.
_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0)
# Where the kernel tells us the real path of an open descriptor.
_PROC_FD = b"/proc/self/fd/" if os.path.isdir("/proc/self/fd") else None
_F_GETPATH = getattr(fcntl, "F_GETPATH", None) if fcntl is not None else None  # macOS

_UNRESOLVED = object()  # (a path not in the memo yet; None is a refused one)

# "%" must start an escape of two hex digits (RFC 3986 §2.1); anything else is refused.
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
# Accept-Encoding member: codings [ weight ] (§12.5.3)
_CODING = re.compile(rf"\s*({TOKEN})\s*(?:;\s*[qQ]\s*=\s*([0-9.]+))?\s*")

# Precompressed variants we look for, best first: (Content-Encoding, file suffix).
_VARIANTS = (("br", b".br"), ("gzip", b".gz"))
# Types whose text we declare as UTF-8 besides text/*.
_TEXTUAL = frozenset(("application/javascript", "application/json", "application/xml"))
# A file whose own name says it is compressed is served as that type, undecoded.
_ENCODED_TYPES = {
    "gzip": "application/gzip",
    "br": "application/x-brotli",
    "bzip2": "application/x-bzip2",
    "xz": "application/x-xz",
    "compress": "application/x-compress",
}

_PLAIN = ("Content-Type", "text/plain; charset=utf-8")
_NOSNIFF = ("X-Content-Type-Options", "nosniff")
_HTML = ("Content-Type", "text/html; charset=utf-8")
# The listing needs no script, frame or remote resource: say so to the browser.
_LISTING_CSP = ("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'")


def _plain(status: int, text: bytes, *extra: tuple[str, str]) -> Response:
    return Response(status, [_PLAIN, _NOSNIFF, *extra], text)


def _not_found() -> Response:
    return _plain(404, b"not found\n")


def _forbidden() -> Response:
    return _plain(403, b"forbidden\n")


class StaticFiles:
    """A native app serving the files under `root` (see the module docstring)."""

    selserve_native = True

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        listing: bool = True,
        dotfiles: bool = False,
        follow_symlinks: bool = False,
        precompressed: bool = False,
        open_file_cache: OpenFileCache | None = None,
    ) -> None:
        real = os.path.realpath(os.fsencode(root))
        if not os.path.isdir(real):
            raise ValueError(f"static root {os.fsdecode(root)!r} is not a directory")
        if not mimetypes.inited:
            mimetypes.init()  # reads the system's tables now, not on the first request
        self.root = real
        self.listing = listing
        self.dotfiles = dotfiles
        self.follow_symlinks = follow_symlinks
        self.precompressed = precompressed
        # Files kept open between requests (not with precompressed variants, whose
        # choice depends on each request's Accept-Encoding).
        self.cache = None if precompressed else open_file_cache
        # Real paths under the root start with this (the root itself aside).
        self._inside = real if real.endswith(b"/") else real + b"/"
        # Request path -> (name under the root, trailing slash, the root itself), or None
        # for a path refused by its form: decoding and checking it is about a tenth of
        # a small cached file's answer.
        self._resolved: dict[str, tuple[bytes, bool, bool] | None] = {}

    def __repr__(self) -> str:
        return f"<StaticFiles {os.fsdecode(self.root)!r}>"

    def __call__(self, request: Request) -> Response:
        return self.serve_path(request, request.path)

    def on_head(self, request: Request) -> Response:
        """The answer to a request that carries a body, before the body is read: the same
        as `__call__`, since no static answer depends on it (the body is then dropped)."""
        return self.serve_path(request, request.path)

    # -- one request ------------------------------------------------------------

    def serve_path(self, request: Request, path: str) -> Response:
        """Answer `request` for `path` (percent-encoded, relative to the root: "/..." ).

        `mount` calls this with the mount prefix stripped; `request.path` stays whole.
        """
        if request.method != "GET" and request.method != "HEAD":
            return _plain(405, b"method not allowed\n", ("Allow", ALLOWED_METHODS))
        resolved = self._resolved.get(path, _UNRESOLVED)
        if resolved is _UNRESOLVED:
            resolved = self._resolve(path)
        if resolved is None:
            return _not_found()
        fs_path, trailing_slash, at_root = resolved
        cache = self.cache
        if cache is not None:
            entry = cache.lookup(fs_path)
            if entry is not None:  # a regular file, checked less than `valid` ago
                if trailing_slash:
                    return _not_found()
                return self._cached_file(request, entry, fs_path)
        try:
            fd = os.open(fs_path, _OPEN_FLAGS)
        except OSError as exc:
            return _open_failed(exc)
        try:
            st = os.fstat(fd)
            if not self.follow_symlinks and not self._is_inside(fd, fs_path):
                return _not_found()
            if stat.S_ISDIR(st.st_mode):
                if not trailing_slash:
                    return _add_slash(path, request.query)
                return self._directory(request, fd, fs_path, not at_root)
            if not stat.S_ISREG(st.st_mode) or trailing_slash:
                return _not_found()
            owned, fd = fd, -1  # _file (or the cache) closes it on every path from here
            if cache is not None:
                return self._cached_file(request, cache.store(fs_path, owned, st), fs_path)
            return self._file(request, owned, st, fs_path)
        finally:
            if fd >= 0:
                os.close(fd)

    def _resolve(self, path: str) -> tuple[bytes, bool, bool] | None:
        """(name under the root, trailing slash, the root itself) for a request path, or
        None when its form is refused (404); remembered in `_resolved`."""
        split = _split_path(path)
        if split is None or (not self.dotfiles and _hidden(split[0])):
            resolved = None
        else:
            segments, trailing_slash = split
            fs_path = b"/".join((self.root.rstrip(b"/"), *segments)) if segments else self.root
            resolved = (fs_path, trailing_slash, not segments)
        if len(self._resolved) >= RESOLVED_MAX:
            self._resolved.clear()
        self._resolved[path] = resolved
        return resolved

    def _is_inside(self, fd: int, fs_path: bytes) -> bool:
        """Whether the open descriptor `fd` really lies under the root (links resolved)."""
        try:
            if _PROC_FD is not None:
                real = os.readlink(_PROC_FD + b"%d" % fd)
            elif _F_GETPATH is not None:
                real = fcntl.fcntl(fd, _F_GETPATH, b"\0" * 1024).rstrip(b"\0")
            else:  # no way to ask the descriptor: resolve the name (racy, but best we have)
                real = os.path.realpath(fs_path)
        except OSError:
            return False
        return real == self.root or real.startswith(self._inside)

    # -- files --------------------------------------------------------------------

    def _file(self, request: Request, fd: int, st: os.stat_result, fs_path: bytes) -> Response:
        """Answer for the regular file open at `fd`; owns `fd` from here on."""
        coding = None
        if self.precompressed:
            variant = self._variant(request, fs_path)
            if variant is not None:
                os.close(fd)
                fd, st, coding = variant
        file = _OpenFile(fd)
        try:
            return self._file_response(request, file, st, fs_path, coding)
        except BaseException:
            file.close()
            raise

    def _cached_file(self, request: Request, entry: CachedFile, fs_path: bytes) -> Response:
        """Answer from a file the cache holds open (lent to this response), or holds whole
        (a small one, asked for without conditions or ranges: the common case)."""
        memo = entry.memo
        if memo is None:
            memo = entry.memo = self._validators(entry.st, fs_path, None)
        data = entry.data
        if data is not None and not _conditional(request):
            return Response(200, list(memo.headers), data)
        file = entry.borrow()
        try:
            return self._file_response(request, file, entry.st, fs_path, None, memo)
        except BaseException:
            file.close()
            raise

    def _variant(self, request: Request, fs_path: bytes):
        """(fd, stat, coding) of a precompressed sibling the client accepts, or None."""
        accept = request.header("accept-encoding")
        if not accept:
            return None
        for coding, suffix in _acceptable_codings(accept):
            try:
                fd = os.open(fs_path + suffix, _OPEN_FLAGS)
            except OSError:
                continue
            try:
                st = os.fstat(fd)
                if stat.S_ISREG(st.st_mode) and (
                    self.follow_symlinks or self._is_inside(fd, fs_path + suffix)
                ):
                    found, fd = (fd, st, coding), -1
                    return found
            finally:
                if fd >= 0:
                    os.close(fd)
        return None

    def _file_response(self, request, file, st: os.stat_result, fs_path: bytes, coding, memo=None):
        """Every answer for an open regular file; `file` is closed unless it is handed on.
        `memo`: the file's `_Validators`, when the open-file cache kept them."""
        if memo is None:
            memo = self._validators(st, fs_path, coding)
        size = st.st_size
        etag, modified = memo.etag, memo.modified
        status = preconditions(request, etag, modified)
        if status == 304:
            # Content-Length is that of the 200 we would have sent (RFC 9110 §8.6).
            file.close()
            return Response(304, [*memo.tags, ("Content-Length", str(size))])
        if status == 412:
            file.close()
            return _plain(412, b"precondition failed\n", *memo.tags)

        ranges = None
        # Range is defined for GET only (§14.2); If-Range can turn it off (§13.1.5).
        range_value = request.header("range") if request.method == "GET" else None
        if range_value is not None and size > 0 and if_range(request, etag, modified, memo.strong):
            ranges = parse_ranges(range_value, size)
        if ranges is None or len(ranges) > MAX_RANGE_PARTS:
            return Response(200, list(memo.headers), FileBody(file, 0, size))
        if not ranges:
            file.close()
            return _plain(416, b"range not satisfiable\n", ("Content-Range", f"bytes */{size}"))
        if len(ranges) == 1:
            first, last = ranges[0]
            headers = [*memo.headers, ("Content-Range", f"bytes {first}-{last}/{size}")]
            return Response(206, headers, FileBody(file, first, last - first + 1))
        body = ByteRanges(file, ranges, size, memo.content_type)
        headers = [
            *memo.base,
            ("Content-Type", f"multipart/byteranges; boundary={body.boundary}"),
            ("Content-Length", str(body.length)),
        ]
        return Response(206, headers, body)

    def _validators(self, st: os.stat_result, fs_path: bytes, coding) -> _Validators:
        now = time.time()
        strong = now - st.st_mtime >= STRONG_AFTER
        etag = _etag(st, coding, strong)
        tags = [("ETag", etag)]
        if self.precompressed:
            tags.append(("Vary", "Accept-Encoding"))
        modified = min(int(st.st_mtime), int(now))
        base = [
            *tags,
            ("Last-Modified", _imf_fixdate(modified)),
            ("Accept-Ranges", "bytes"),
            _NOSNIFF,
        ]
        if coding is not None:
            base.append(("Content-Encoding", coding))
        return _Validators(
            etag, modified, strong, tags, base,
            _content_type(os.path.basename(fs_path)),
        )  # fmt: skip

    # -- directories --------------------------------------------------------------

    def _directory(self, request: Request, fd: int, fs_path: bytes, below_root: bool) -> Response:
        """index.html, a listing, or 403 for the directory open at `fd` (not closed here)."""
        index_path = fs_path.rstrip(b"/") + b"/" + INDEX_NAME
        try:
            index_fd = os.open(INDEX_NAME, _OPEN_FLAGS, dir_fd=fd)
        except OSError:
            index_fd = -1
        if index_fd >= 0:
            try:
                st = os.fstat(index_fd)
                if stat.S_ISREG(st.st_mode) and (
                    self.follow_symlinks or self._is_inside(index_fd, index_path)
                ):
                    owned, index_fd = index_fd, -1  # _file closes it from here
                    return self._file(request, owned, st, index_path)
            finally:
                if index_fd >= 0:
                    os.close(index_fd)
        if not self.listing:
            return _forbidden()
        try:
            page = self._listing_page(request.path, fd, fs_path, below_root)
        except OSError as exc:
            return _open_failed(exc)
        return Response(200, [_HTML, _NOSNIFF, _LISTING_CSP], page)

    def _listing_page(self, shown_path: str, fd: int, fs_path: bytes, below_root: bool) -> bytes:
        dirs, files = [], []
        with os.scandir(fd) as entries:
            for entry in entries:
                name = entry.name
                if "\\" in name:
                    continue  # would be refused if asked for: do not offer it
                hidden = name[0] == "." and (below_root or name != _WELL_KNOWN_NAME)
                if hidden and not self.dotfiles:
                    continue  # 404 if asked for: do not offer it
                try:
                    if entry.is_symlink() and not self.follow_symlinks:
                        target = os.path.realpath(os.path.join(fs_path, os.fsencode(name)))
                        if target != self.root and not target.startswith(self._inside):
                            continue
                    st = entry.stat()
                except OSError:
                    continue  # vanished, dangling link, no permission: nothing to offer
                if stat.S_ISDIR(st.st_mode):
                    dirs.append((name.casefold(), name, st))
                elif stat.S_ISREG(st.st_mode):
                    files.append((name.casefold(), name, st))
        dirs.sort()
        files.sort()
        title = html.escape(unquote_to_bytes(shown_path).decode("utf-8", "replace"))
        rows = []
        if below_root:
            rows.append('<tr><td><a href="../">../</a></td><td></td><td></td></tr>')
        for group, is_dir in ((dirs, True), (files, False)):
            for _, name, st in group:
                raw = os.fsencode(name)
                href = quote(raw, safe="") + ("/" if is_dir else "")
                text = html.escape(raw.decode("utf-8", "replace") + ("/" if is_dir else ""))
                size = "-" if is_dir else str(st.st_size)
                when = _listing_time(st.st_mtime)
                rows.append(
                    f'<tr><td><a href="{html.escape(href)}">{text}</a></td>'
                    f'<td class="size">{size}</td><td>{when}</td></tr>'
                )
        return _LISTING_TEMPLATE.format(title=title, rows="\n".join(rows)).encode("utf-8")


def _listing_time(mtime: float) -> str:
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(mtime))
    except (OverflowError, ValueError, OSError):
        return "-"


_LISTING_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Index of {title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; }}
th, td {{ padding: 0.2em 1.2em 0.2em 0; text-align: left; }}
td.size {{ text-align: right; font-variant-numeric: tabular-nums; }}
</style>
</head>
<body>
<h1>Index of {title}</h1>
<table>
<thead><tr><th>Name</th><th class="size">Size (bytes)</th><th>Modified</th></tr></thead>
<tbody>
{rows}
</tbody>
</table>
</body>
</html>
"""


class _Validators:
    """What a file's answers say about it, derived from its stat: the ETag and its
    strength, the Last-Modified time, and the headers every 200 and 206 carries
    (`tags`: those a 304 or 412 repeats; `base`: all but Content-Type)."""

    __slots__ = ("etag", "modified", "strong", "tags", "base", "content_type", "headers")

    def __init__(self, etag, modified, strong, tags, base, content_type) -> None:
        self.etag = etag
        self.modified = modified
        self.strong = strong
        self.tags = tags
        self.base = base
        self.content_type = content_type
        self.headers = (*base, ("Content-Type", content_type))


def _conditional(request: Request) -> bool:
    """Whether the request has a field that can change a file's answer: a precondition
    (If-*) or a Range."""
    for name, _ in request.headers:  # noqa: SIM110 (cheaper than any() and a generator)
        if name[:3] == "if-" or name == "range":
            return True
    return False


class ByteRanges:
    """A `multipart/byteranges` body (RFC 9110 §14.6) over several ranges of one open file.

    The server pulls it like any streamed body, so at most a block of the file is in
    memory at a time; `close()` closes the file, whether or not iteration started.
    """

    __slots__ = ("boundary", "length", "_file", "_pieces", "_next", "_offset", "_left")

    def __init__(self, file, ranges: list[tuple[int, int]], size: int, content_type: str):
        self.boundary = os.urandom(12).hex()
        self._file = file
        # (part head, offset, count) per part, then the closing delimiter with count 0.
        pieces = []
        for index, (first, last) in enumerate(ranges):
            head = (
                f"{'' if index == 0 else CRLF}--{self.boundary}\r\n"
                f"Content-Type: {content_type}\r\n"
                f"Content-Range: bytes {first}-{last}/{size}\r\n\r\n"
            ).encode("latin-1")
            pieces.append((head, first, last - first + 1))
        pieces.append((f"\r\n--{self.boundary}--\r\n".encode("latin-1"), 0, 0))
        self.length = sum(len(head) + count for head, _, count in pieces)
        self._pieces = pieces
        self._next = 0  # index of the part whose head is sent next
        self._offset = 0
        self._left = 0  # bytes of the current part still to read

    def __iter__(self):
        return self

    def __next__(self) -> bytes:
        if self._left:
            block = os.pread(self._file.fileno(), min(self._left, RANGE_BLOCK), self._offset)
            if not block:
                raise OSError(errno.EIO, "file shrank while being sent")
            self._offset += len(block)
            self._left -= len(block)
            return block
        if self._next == len(self._pieces):
            raise StopIteration
        head, self._offset, self._left = self._pieces[self._next]
        self._next += 1
        return head

    def close(self) -> None:
        self._file.close()


# -- mounting -------------------------------------------------------------------------


def mount(app, mounts: list[tuple[str, StaticFiles]]):
    """A native app: requests whose path is under a prefix (e.g. "/assets") go to that
    StaticFiles with the prefix stripped; everything else goes to `app`.

    The longest matching prefix wins.  The bare prefix ("/assets") is redirected to
    "/assets/".  Matching is on the raw (percent-encoded) path.  Its `on_head(request)`
    answers a request under a prefix from its head, and leaves any other to `app.on_head`
    if `app` has one (else None: read the body and call the app).
    """
    table = []
    for prefix, static in mounts:
        if not prefix.startswith("/"):
            raise ValueError(f"mount prefix {prefix!r} must start with '/'")
        if not callable(getattr(static, "serve_path", None)):
            raise TypeError(f"mount {prefix!r}: expected a StaticFiles, got {static!r}")
        prefix = quote(prefix.rstrip("/"), safe="/%")
        table.append((prefix, static))
    table.sort(key=lambda item: len(item[0]), reverse=True)
    app_on_head = getattr(app, "on_head", None)

    def static_answer(request: Request) -> Response | None:
        """The answer of the mount `request.path` falls under; None if it is the app's."""
        path = request.path
        for prefix, static in table:
            if not prefix:  # mounted at "/": everything is static
                return static.serve_path(request, path)
            if path.startswith(prefix):
                rest = path[len(prefix) :]
                if rest.startswith("/"):
                    return static.serve_path(request, rest)
                if not rest:
                    if request.method != "GET" and request.method != "HEAD":
                        return _plain(405, b"method not allowed\n", ("Allow", ALLOWED_METHODS))
                    return _add_slash(path, request.query)
        return None

    def mounted(request: Request) -> Response:
        answer = static_answer(request)
        return app(request) if answer is None else answer

    def on_head(request: Request) -> Response | None:
        answer = static_answer(request)
        if answer is None and app_on_head is not None:
            return app_on_head(request)
        return answer

    mounted.mounts = table
    mounted.on_head = on_head
    mounted.blocking = getattr(app, "blocking", False)  # (the app's, not the files')
    mounted.selserve_native = True
    return mounted


# -- paths ----------------------------------------------------------------------------


def _split_path(path: str) -> tuple[list[bytes], bool] | None:
    """([decoded segment, ...], trailing slash) of a request path, or None to refuse it.

    Split first, then decode each segment once: "%2F" can never become a separator and
    "%252e" stays the literal name "%2e".
    """
    if path == "/":
        return [], True
    if not path.startswith("/") or not path.isascii():
        return None
    trailing_slash = path.endswith("/")
    inner = path[1:-1] if trailing_slash else path[1:]
    if not inner:
        return None  # "//"
    segments = []
    for part in inner.split("/"):
        if not part:
            return None  # "//": an empty segment, or an absolute path after the first slash
        if "%" in part:
            if _BAD_ESCAPE.search(part):
                return None
            name = unquote_to_bytes(part)
        else:
            name = part.encode("ascii")
        if name == b".." or name == b"." or b"/" in name or b"\\" in name or b"\0" in name:
            return None
        segments.append(name)
    return segments, trailing_slash


def _hidden(segments: list[bytes]) -> bool:
    """Whether decoded path segments name a dot-file or pass through a dot-directory
    (`.well-known` as the first segment aside)."""
    for index, name in enumerate(segments):
        if name[:1] == b"." and (index or name != WELL_KNOWN):
            return True
    return False


def _add_slash(path: str, query: str) -> Response:
    # A relative reference to the last segment plus "/": right under any mount prefix,
    # and never read as a scheme ("./a:b/") or another host ("//evil/").
    location = "./" + path.rsplit("/", 1)[1] + "/"
    if query:
        location += "?" + query
    return Response(
        301,
        [_HTML, _NOSNIFF, ("Location", location)],
        f'<a href="{html.escape(location)}">moved here</a>\n'.encode(),
    )


class _OpenFile:
    """An open descriptor as the file object a FileBody needs: `fileno()` and
    `close()`.  Lighter than `os.fdopen`, which costs another fstat and an io
    object per request; closed by the server on every path, and by the garbage
    collector as a last resort."""

    __slots__ = ("_fd",)

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def fileno(self) -> int:
        if self._fd < 0:
            raise ValueError("I/O operation on closed file")
        return self._fd

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)

    def __del__(self) -> None:
        self.close()


def _open_failed(exc: OSError) -> Response:
    code = exc.errno
    if code in (errno.EACCES, errno.EPERM):
        return _forbidden()
    if code in (errno.EMFILE, errno.ENFILE):
        log.warning("static: out of file descriptors (%s)", exc)
        return _plain(503, b"server busy\n", ("Retry-After", "1"))
    if code not in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.ENAMETOOLONG, errno.EINVAL):
        log.error("static: cannot open a file: %s", exc)
    return _not_found()


@lru_cache(maxsize=1024)
def _imf_fixdate(timestamp: int) -> str:
    return formatdate(timestamp, usegmt=True)


@lru_cache(maxsize=1024)
def _content_type(name: bytes) -> str:
    kind, encoding = mimetypes.guess_type(os.fsdecode(name), strict=False)
    if encoding is not None:
        return _ENCODED_TYPES.get(encoding, "application/octet-stream")
    if kind is None:
        return "application/octet-stream"
    if kind.startswith("text/") or kind in _TEXTUAL:
        return kind + "; charset=utf-8"
    return kind


# -- validators and encodings ---------------------------------------------------------


def _etag(st: os.stat_result, coding: str | None, strong: bool) -> str:
    tag = f"{st.st_size:x}-{st.st_mtime_ns:x}"
    if coding is not None:
        tag += "-" + coding
    return f'"{tag}"' if strong else f'W/"{tag}"'


def _acceptable_codings(accept: str) -> list[tuple[str, bytes]]:
    """Our precompressed variants the client accepts, most preferred first (§12.5.3)."""
    weights: dict[str, float] = {}
    for member in accept.split(","):
        m = _CODING.fullmatch(member)
        if m is None:
            continue
        try:
            q = float(m[2]) if m[2] is not None else 1.0
        except ValueError:
            continue
        weights[m[1].lower()] = q
    star = weights.get("*", 0.0)
    found = []
    for rank, (coding, suffix) in enumerate(_VARIANTS):
        q = weights.get(coding, star)
        if coding == "gzip" and "gzip" not in weights:
            q = weights.get("x-gzip", star)
        if q > 0:
            found.append((-q, rank, coding, suffix))
    found.sort()
    return [(coding, suffix) for _, _, coding, suffix in found]
