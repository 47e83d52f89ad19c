"""Static-file browsers (tag static, opt-in): need the tree of `_payloads.STATIC_FILES`
served under `--static-prefix` (the runner does `--static /static=TREE:listing` for `--tags
static`; by hand: `python -m loadtests.run --write-static-tree DIR`, then `selserve --root
DIR` with `--static-prefix ''`, or `--static /static=DIR:listing` in front of an app).

`StaticBrowser` checks every byte against the tree's known content: whole files, HEAD,
single, suffix, open-ended and multiple ranges, If-Range, unsatisfiable ranges,
If-None-Match / If-Modified-Since (304), directory listings (every entry shown), index
pages, the trailing-slash redirect, 404 for missing files and escapes from the root.
"""

from __future__ import annotations

import html
import random
import re
from email.utils import formatdate
from urllib.parse import quote, unquote

from _payloads import (
    STATIC_DIRS,
    STATIC_FILES,
    STATIC_INDEXED,
    STATIC_MTIME,
    STATIC_SIZES,
    static_content,
)
from _raw_http import RawConnection, host_port, request_bytes
from _suite import describe, exchange, option, verdict
from locust import FastHttpUser, constant, tag, task

NETWORK_TIMEOUT = 15.0
LAST_MODIFIED = formatdate(STATIC_MTIME, usegmt=True)
_HREF = re.compile(r'href="([^"]*)"')
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)\Z")
NON_EMPTY = tuple(path for path, size in STATIC_FILES if size > 0)


class StaticBrowser(FastHttpUser):
    """A browser of the static tree, checking sizes, bytes, ETags and listings."""

    opt_in = True  # runs only with --tags static (see _suite.selected)
    weight = 3
    wait_time = constant(0)
    network_timeout = NETWORK_TIMEOUT
    connection_timeout = NETWORK_TIMEOUT

    def on_start(self) -> None:
        self.rng = random.Random()
        self.prefix = option(self.environment, "static_prefix", "/static").rstrip("/")
        self.etags: dict[str, str] = {}

    def url(self, path: str) -> str:
        return f"{self.prefix}/{quote(path)}"

    def etag(self, path: str) -> str | None:
        """The file's ETag, learnt with a HEAD the first time it is needed."""
        if path not in self.etags:
            with self.client.head(self.url(path), name="/static [HEAD]", catch_response=True) as r:
                tag_value = r.headers.get("ETag") or ""
                ok = r.status_code == 200 and tag_value.startswith('"')
                if verdict(r, ok, f"{path}: {describe(r)}, ETag {tag_value!r} (want strong)"):
                    self.etags[path] = tag_value
        return self.etags.get(path)

    def pick(self, files=NON_EMPTY) -> str:
        return self.rng.choice(files)

    # -- whole files

    @tag("static")
    @task(4)
    def whole_file(self) -> None:
        path, size = self.rng.choice(STATIC_FILES)
        with self.client.get(self.url(path), name="/static/[file]", catch_response=True) as r:
            problems = []
            if r.status_code != 200:
                problems.append(describe(r))
            elif r.content != static_content(path):
                problems.append(f"{len(r.content or b'')} bytes differ from the {size} expected")
            if r.headers.get("Last-Modified") != LAST_MODIFIED:
                problems.append(f"Last-Modified {r.headers.get('Last-Modified')!r}")
            if not (r.headers.get("ETag") or "").startswith('"'):
                problems.append(f"ETag {r.headers.get('ETag')!r} is not strong")
            verdict(r, not problems, f"{path}: " + "; ".join(problems))

    @tag("static")
    @task(1)
    def head(self) -> None:
        path, size = self.rng.choice(STATIC_FILES)
        with self.client.head(self.url(path), name="/static [HEAD]", catch_response=True) as r:
            length = r.headers.get("Content-Length")
            ok = r.status_code == 200 and length == str(size) and not r.content
            verdict(r, ok, f"{path}: {describe(r)}, Content-Length {length!r}, want {size}")

    # -- conditional requests

    @tag("static")
    @task(2)
    def if_none_match(self) -> None:
        path = self.pick()
        etag = self.etag(path)
        if etag is None:
            return
        headers = {"If-None-Match": etag}
        name = "/static/[file] If-None-Match [304]"
        with self.client.get(self.url(path), headers=headers, name=name, catch_response=True) as r:
            ok = r.status_code == 304 and not r.content and r.headers.get("ETag") == etag
            verdict(r, ok, f"{path}: {describe(r)}, ETag {r.headers.get('ETag')!r}")

    @tag("static")
    @task(1)
    def if_modified_since(self) -> None:
        path = self.pick()
        headers = {"If-Modified-Since": LAST_MODIFIED}
        name = "/static/[file] If-Modified-Since [304]"
        with self.client.get(self.url(path), headers=headers, name=name, catch_response=True) as r:
            verdict(r, r.status_code == 304 and not r.content, f"{path}: {describe(r)}")

    # -- ranges

    def _range(self, path: str, spec: str, first: int, last: int, name: str, headers=None):
        content = static_content(path)
        size = len(content)
        headers = {"Range": f"bytes={spec}", **(headers or {})}
        with self.client.get(self.url(path), headers=headers, name=name, catch_response=True) as r:
            match = _CONTENT_RANGE.match(r.headers.get("Content-Range") or "")
            want = (first, last, size)
            if r.status_code != 206:
                verdict(r, False, f"{path} bytes={spec}: {describe(r)}")
            elif not match or tuple(map(int, match.groups())) != want:
                verdict(r, False, f"{path} bytes={spec}: Content-Range {match and match[0]!r}")
            else:
                ok = r.content == content[first : last + 1]
                verdict(r, ok, f"{path} bytes={spec}: body differs ({len(r.content)} bytes)")

    @tag("static")
    @task(3)
    def single_range(self) -> None:
        path = self.pick()
        size = STATIC_SIZES[path]
        first = self.rng.randrange(size)
        last = self.rng.randrange(first, size)
        form = self.rng.randrange(3)
        if form == 0:
            self._range(path, f"{first}-{last}", first, last, "/static/[file] Range a-b")
        elif form == 1:
            self._range(path, f"{first}-", first, size - 1, "/static/[file] Range a-")
        else:
            count = size - first
            self._range(path, f"-{count}", first, size - 1, "/static/[file] Range -n")

    @tag("static")
    @task(1)
    def if_range(self) -> None:
        path = self.pick()
        etag = self.etag(path)
        if etag is None:
            return
        size = STATIC_SIZES[path]
        last = self.rng.randrange(size)
        name = "/static/[file] If-Range current [206]"
        self._range(path, f"0-{last}", 0, last, name, {"If-Range": etag})
        # A validator that no longer matches: the whole file, 200.
        headers = {"Range": f"bytes=0-{last}", "If-Range": '"stale"'}
        name = "/static/[file] If-Range stale [200]"
        with self.client.get(self.url(path), headers=headers, name=name, catch_response=True) as r:
            ok = r.status_code == 200 and r.content == static_content(path)
            verdict(r, ok, f"{path}: {describe(r)}")

    @tag("static")
    @task(1)
    def multiple_ranges(self) -> None:
        path = self.pick(tuple(p for p in NON_EMPTY if STATIC_SIZES[p] >= 1000))
        content = static_content(path)
        size = len(content)
        # Two ranges with a gap, so that the server cannot merge them.
        a = self.rng.randrange(0, size // 3)
        b = self.rng.randrange(a, size // 3)
        c = self.rng.randrange(size // 2, size - 1)
        d = self.rng.randrange(c, size)
        headers = {"Range": f"bytes={a}-{b},{c}-{d}"}
        name = "/static/[file] Range a-b,c-d (multipart)"
        with self.client.get(self.url(path), headers=headers, name=name, catch_response=True) as r:
            if r.status_code != 206:
                verdict(r, False, f"{path} {headers['Range']}: {describe(r)}")
                return
            ctype = r.headers.get("Content-Type") or ""
            boundary = ctype.partition("boundary=")[2].strip('"')
            parts = _multipart_parts(r.content or b"", boundary)
            want = [(a, b, content[a : b + 1]), (c, d, content[c : d + 1])]
            verdict(r, parts == want, f"{path} {headers['Range']}: parts {_brief(parts)}")

    @tag("static")
    @task(1)
    def unsatisfiable_range(self) -> None:
        path = self.pick()
        size = STATIC_SIZES[path]
        headers = {"Range": f"bytes={size}-"}
        name = "/static/[file] Range past the end [416]"
        with self.client.get(self.url(path), headers=headers, name=name, catch_response=True) as r:
            content_range = r.headers.get("Content-Range")
            ok = r.status_code == 416 and content_range == f"bytes */{size}"
            verdict(r, ok, f"{path}: {describe(r)}, Content-Range {content_range!r}")

    # -- directories and errors

    @tag("static")
    @task(1)
    def listing(self) -> None:
        directory = self.rng.choice(sorted(STATIC_DIRS))
        url = f"{self.prefix}/{quote(directory)}"
        with self.client.get(url, name="/static/[dir]/ listing", catch_response=True) as r:
            if r.status_code != 200:
                verdict(r, False, f"{url}: {describe(r)}")
                return
            shown = {
                unquote(html.unescape(href)).rstrip("/").rsplit("/", 1)[-1]
                for href in _HREF.findall((r.content or b"").decode("utf-8", "replace"))
            }
            missing = {entry.rstrip("/") for entry in STATIC_DIRS[directory]} - shown
            verdict(r, not missing, f"{url}: listing lacks {sorted(missing)}")

    @tag("static")
    @task(1)
    def index_page(self) -> None:
        directory, index = next(iter(STATIC_INDEXED.items()))
        url = f"{self.prefix}/{directory}"
        with self.client.get(url, name="/static/[dir]/ index.html", catch_response=True) as r:
            ok = r.status_code == 200 and r.content == static_content(index)
            verdict(r, ok, f"{url}: {describe(r)}")

    @tag("static")
    @task(1)
    def redirect_to_slash(self) -> None:
        # On a raw socket: FastHttpUser's allow_redirects=False breaks on some Locust and
        # geventhttpclient version pairs.
        url = f"{self.prefix}/sub"

        def action() -> int:
            with RawConnection(host_port(self.host), NETWORK_TIMEOUT) as conn:
                conn.send(request_bytes("GET", url))
                head = conn.read_head()
                body = conn.read_body(head)
                location = head.headers.get("location", "")
                if head.status != 301 or not location.endswith("/sub/"):
                    raise AssertionError(f"{url}: status {head.status}, Location {location!r}")
                return len(body)

        exchange(self.environment, "GET", "/static/[dir] no slash [301]", action)

    @tag("static")
    @task(1)
    def not_found(self) -> None:
        for url, name in (
            (f"{self.prefix}/no-such-file.txt", "/static/[missing] [404]"),
            (f"{self.prefix}/sub/%2e%2e/%2e%2e/pyproject.toml", "/static/[escape] [404]"),
        ):
            with self.client.get(url, name=name, catch_response=True) as r:
                verdict(r, r.status_code == 404, f"{url}: {describe(r)}")


def _multipart_parts(body: bytes, boundary: str) -> list[tuple[int, int, bytes]]:
    """(first, last, data) of each part of a multipart/byteranges body (RFC 9110 §14.6)."""
    if not boundary:
        return []
    parts = []
    delimiter = b"--" + boundary.encode("latin-1")
    for chunk in body.split(delimiter)[1:]:
        if chunk.startswith(b"--"):
            break  # the close delimiter
        head, _, data = chunk.partition(b"\r\n\r\n")
        match = re.search(rb"Content-Range: bytes (\d+)-(\d+)/\d+", head, re.IGNORECASE)
        if not match or not data.endswith(b"\r\n"):
            return parts + [(-1, -1, chunk[:40])]
        parts.append((int(match[1]), int(match[2]), data[:-2]))
    return parts


def _brief(parts) -> list[tuple[int, int, int]]:
    return [(first, last, len(data)) for first, last, data in parts]
