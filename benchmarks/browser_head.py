"""The fields a browser sends with a page request, for the benchmarks' hello-browser
workloads (compare.py's wrk run, hotpath.py's counted one).

What Chromium sends for a page it navigates to, Host aside (wrk and hotpath.py add
their own): about 600 bytes with the request line.  tests/benchmarks/
test_parser_throughput.py parses the same fields.  This module imports nothing:
hotpath.py's measured child imports it, and it must not import selserve (the child
measures whichever selserve tree is on its PYTHONPATH).
"""

BROWSER_FIELDS = (
    "User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36",
    "Accept: text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8",
    "Accept-Language: en-GB,en;q=0.9,de;q=0.8",
    "Accept-Encoding: gzip, deflate, br, zstd",
    "Referer: https://www.example.org/",
    "Cookie: session=5f2b8c0e9a7d4e1fb3c6a2d9e8f70415; theme=dark; consent=1",
    "Connection: keep-alive",
    "Upgrade-Insecure-Requests: 1",
    "Sec-Fetch-Dest: document",
    "Sec-Fetch-Mode: navigate",
    "Sec-Fetch-Site: same-origin",
    "Cache-Control: max-age=0",
)
