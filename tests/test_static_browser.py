"""Static files in a real browser: headless Chromium (Debian's `chromium`) loads the
directory listing from a running `StaticFiles` server, and we check the DOM it built,
follow its links, and take a screenshot; and it loads a page with its stylesheet and
script over HTTPS (`--certfile`), on every backend.

Names with markup in them must show as text: a folder `<script>alert(1)<` holding
`script>.txt` (so the file's path reads `<script>alert(1)</script>.txt`; a single name
cannot contain "/"), and names that try to break out of an attribute.  Every Chromium run
is bounded by a timeout and runs in its own session, which is killed by its process-group
id if anything is left over.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import struct
import subprocess
import tempfile
import zlib
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit

import psutil
import pytest
import requests
from helpers import BACKENDS
from static_fixtures.listing_page import ListingPage
from static_fixtures.static_server import StaticServer

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="headless Chromium is not installed (Debian: apt-get install -y chromium)",
)

CHROMIUM_TIMEOUT = 60.0
SCRIPT_DIR = "<script>alert(1)<"
SCRIPT_FILE = "script>.txt"  # inside SCRIPT_DIR: the path reads <script>alert(1)</script>.txt
FILES = {
    "hello.txt": b"hello from the listing\n",
    "a b & c.txt": b"spaces and an ampersand\n",
    "caf\u00e9.txt": "caf\u00e9 au lait\n".encode(),
    '"><img src=x onerror=alert(1)>.txt': b"attribute breakout attempt\n",
    "<script>alert(2)<%2Fscript>.txt": b"a literal %2F in a name\n",
    "100%.txt": b"percent\n",
}


def run_chromium(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    """Run Chromium once with a fresh profile and HOME under `workdir`; leave nothing behind."""
    workdir.mkdir(parents=True, exist_ok=True)
    home = tempfile.mkdtemp(prefix="chromium-home-", dir=workdir)
    profile = tempfile.mkdtemp(prefix="chromium-profile-", dir=workdir)
    argv = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        *args,
    ]
    # Its crash handler would write under ~/.config and detach into its own session:
    # with HOME here, it stays in our folder, and its command line names that folder.
    env = dict(os.environ, HOME=home, XDG_CONFIG_HOME=f"{home}/.config")
    env["XDG_CACHE_HOME"] = f"{home}/.cache"
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=CHROMIUM_TIMEOUT)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=10)
        raise AssertionError(f"chromium did not finish within {CHROMIUM_TIMEOUT} s") from None
    finally:
        _reap_leftovers(proc.pid, (home, profile))
    return subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr)


def _reap_leftovers(pgid: int, markers: tuple[str, ...]) -> None:
    """Kill what this Chromium run started and left: its process group (zygote,
    renderers) and the crash handlers that name our folders, each by pid."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    leftovers = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        cmdline = process.info["cmdline"] or []
        if any(marker in arg for arg in cmdline for marker in markers):
            leftovers.append(process)
    for process in leftovers:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(leftovers, timeout=5)


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("browsed")
    for name, data in FILES.items():
        (root / name).write_bytes(data)
    (root / SCRIPT_DIR).mkdir()
    (root / SCRIPT_DIR / SCRIPT_FILE).write_bytes(b"the script-named file\n")
    (root / "folder").mkdir()
    (root / "folder" / "inside.txt").write_bytes(b"inside a folder\n")
    return root


@pytest.fixture(scope="module")
def server(tree):
    proc = StaticServer(BACKENDS[0], tree).start()
    yield proc
    proc.stop()


def dump_dom(tmp_path: Path, url: str) -> ListingPage:
    result = run_chromium(tmp_path, "--dump-dom", url)
    dom = result.stdout.decode("utf-8", "replace")
    assert result.returncode == 0 and "<html" in dom, (
        f"chromium exited {result.returncode}; stdout {dom[:300]!r}; "
        f"stderr {result.stderr.decode(errors='replace')[-2000:]}"
    )
    return ListingPage(dom)


def test_listing_renders_in_chromium(server, tmp_path):
    page = dump_dom(tmp_path, server.url + "/")
    assert "Index of /" in page.text
    assert {"table", "tr", "a"} <= set(page.tags)
    assert sorted(page.names()) == sorted(["folder/", SCRIPT_DIR + "/", *FILES])


def test_markup_in_names_shows_as_text_not_elements(server, tmp_path):
    page = dump_dom(tmp_path, server.url + "/")
    assert "script" not in page.tags
    assert "img" not in page.tags
    for name in (SCRIPT_DIR + "/", '"><img src=x onerror=alert(1)>.txt'):
        assert name in page.text


def test_every_link_in_the_rendered_listing_leads_to_its_file(server, tree, tmp_path):
    page_url = server.url + "/"
    page = dump_dom(tmp_path, page_url)
    assert len(page.links) == len(FILES) + 2
    for href, text in page.links:
        url = urljoin(page_url, href)
        response = requests.get(url, timeout=10)
        assert response.status_code == 200, (text, url)
        if text.endswith("/"):
            assert "Index of /" + text in ListingPage(response.text).text
        else:
            assert response.content == (tree / text).read_bytes(), (text, url)


def test_script_named_file_is_reached_through_its_folder(server, tmp_path):
    page_url = server.url + "/" + "%3Cscript%3Ealert%281%29%3C/"
    page = dump_dom(tmp_path, page_url)
    assert "script" not in page.tags
    assert "Index of /" + SCRIPT_DIR + "/" in page.text
    (href,) = [href for href, text in page.links if text == SCRIPT_FILE]
    url = urljoin(page_url, href)
    assert unquote(urlsplit(url).path) == "/<script>alert(1)</script>.txt"
    response = requests.get(url, timeout=10)
    assert (response.status_code, response.content) == (200, b"the script-named file\n")


def png_pixels(data: bytes) -> tuple[int, int, bytes]:
    """(width, height, decompressed scanlines) of a PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", data[:16]
    pos, width, height, idat = 8, 0, 0, bytearray()
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        chunk = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height = struct.unpack(">II", chunk[:8])
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    return width, height, zlib.decompress(bytes(idat))


def test_screenshot_of_the_listing(server, tmp_path):
    shot = tmp_path / "listing.png"
    result = run_chromium(
        tmp_path, f"--screenshot={shot}", "--window-size=1024,768", server.url + "/"
    )
    assert shot.is_file(), result.stderr.decode(errors="replace")[-2000:]
    width, height, pixels = png_pixels(shot.read_bytes())
    assert (width, height) == (1024, 768)
    # Text was drawn: a blank page compresses to a handful of distinct byte values.
    assert len(set(pixels)) > 32, f"{len(set(pixels))} distinct bytes: the page looks empty"
    keep = os.environ.get("SELSERVE_SCREENSHOT")
    if keep:
        shutil.copyfile(shot, keep)


HTTPS_PAGE = b"""<!DOCTYPE html>
<html><head><link rel="stylesheet" href="style.css"><script src="app.js"></script></head>
<body><p id="out">not yet</p></body></html>
"""


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_page_with_its_stylesheet_and_script_loads_over_https(backend, tmp_path):
    """What a browser does with `selserve --certfile --keyfile`: TLS 1.3 with ALPN (it
    offers h2 and gets http/1.1), then the page, its stylesheet and its script over
    one or more kept-alive TLS connections; the script reports the stylesheet's colour."""
    from tls_certs import TLSServer, make_certs

    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_bytes(HTTPS_PAGE)
    (site / "style.css").write_bytes(b"body { color: rgb(1, 2, 3); }\n")
    (site / "app.js").write_bytes(
        b"window.addEventListener('load', () => { document.getElementById('out')"
        b".textContent = 'colour ' + getComputedStyle(document.body).color; });\n"
    )
    server = TLSServer(backend, make_certs(tmp_path / "certs"), "--root", str(site), app=None)
    try:
        server.start()
        result = run_chromium(
            tmp_path / "chromium", "--ignore-certificate-errors", "--virtual-time-budget=5000",
            "--dump-dom", server.tls_url + "/",
        )  # fmt: skip
    finally:
        server.stop()
    dom = result.stdout.decode("utf-8", "replace")
    assert "colour rgb(1, 2, 3)" in dom, (
        f"chromium exited {result.returncode}; stdout {dom[:500]!r}; "
        f"stderr {result.stderr.decode(errors='replace')[-1500:]}\n{server.diag('')}"
    )
