"""file_cache.py, and StaticFiles with it: kept descriptors are reused within `valid`
seconds and only then opened and checked again, so a symlink swapped in never escapes
the root, a replaced or deleted file is never served past `valid`, and descriptors
stay bounded -- including those evicted while a response still sends from them.
Time is a fake clock; nothing sleeps."""

from __future__ import annotations

import os

import pytest

from selserve import file_cache
from selserve.app import FileBody, Request
from selserve.file_cache import SMALL_FILE, OpenFileCache
from selserve.static import StaticFiles


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def get(app, path: str, *headers: tuple[str, str]):
    request = Request(
        "GET", path, path, "", "HTTP/1.1", list(headers), True, None, False, False, "t"
    )
    return app(request.arrived(peer=("127.0.0.1", 1)))


def content(response) -> bytes:
    """The body an answer sends: bytes as they are, a FileBody read as the server
    would (then closed)."""
    body = response.body
    if type(body) is bytes:
        return body
    assert isinstance(body, FileBody), response.status
    try:
        return os.pread(body.fileobj.fileno(), body.count, body.offset)
    finally:
        body.close()


@pytest.fixture
def site(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "a.txt").write_bytes(b"inside\n")
    (tmp_path / "secret.txt").write_bytes(b"outside the root\n")
    return root


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def served(site, clock):
    cache = OpenFileCache(4, valid=1.0, clock=clock)
    return StaticFiles(site, open_file_cache=cache), cache


# -- the cache alone


def test_an_entry_is_reused_until_it_expires_then_closed(tmp_path, clock):
    path = tmp_path / "f"
    path.write_bytes(b"x")
    cache = OpenFileCache(4, valid=1.0, clock=clock)
    fd = os.open(path, os.O_RDONLY)
    entry = cache.store(b"f", fd, os.fstat(fd))
    clock.now += 0.9
    assert cache.lookup(b"f") is entry
    clock.now += 0.2
    assert cache.lookup(b"f") is None and len(cache) == 0
    with pytest.raises(OSError):
        os.fstat(fd)  # closed: nobody was sending from it


def test_the_oldest_entry_goes_when_the_cache_is_full(tmp_path, clock):
    cache = OpenFileCache(3, valid=60.0, clock=clock)
    before = open_fds()
    fds = []
    for index in range(10):
        path = tmp_path / f"f{index}"
        path.write_bytes(b"x")
        fds.append(os.open(path, os.O_RDONLY))
        cache.store(path.name.encode(), fds[-1], os.fstat(fds[-1]))
        assert open_fds() - before <= 3
    assert len(cache) == 3 and cache.lookup(b"f9") is not None and cache.lookup(b"f0") is None
    cache.clear()
    assert open_fds() == before


def test_an_entry_evicted_while_lent_is_closed_when_the_last_response_ends(tmp_path, clock):
    path = tmp_path / "f"
    path.write_bytes(b"x")
    cache = OpenFileCache(1, valid=60.0, clock=clock)
    before = open_fds()
    fd = os.open(path, os.O_RDONLY)
    entry = cache.store(b"f", fd, os.fstat(fd))
    first, second = entry.borrow(), entry.borrow()
    cache.clear()
    assert open_fds() == before + 1  # still sending
    first.close()
    first.close()  # (closing twice gives back once)
    assert open_fds() == before + 1
    assert second.fileno() == fd
    second.close()
    assert open_fds() == before
    with pytest.raises(ValueError):
        second.fileno()


# -- StaticFiles with a cache


def test_a_kept_file_is_not_opened_again_within_valid(served, clock, monkeypatch):
    app, cache = served
    assert content(get(app, "/a.txt")) == b"inside\n"
    opened = []
    real_open = os.open
    monkeypatch.setattr(os, "open", lambda *a, **k: opened.append(a[0]) or real_open(*a, **k))
    for _ in range(5):
        assert content(get(app, "/a.txt")) == b"inside\n"
    assert opened == []
    clock.now += 1.5
    assert content(get(app, "/a.txt")) == b"inside\n"
    assert len(opened) == 1  # expired: opened and checked again


def test_a_symlink_swapped_in_never_escapes_the_root(served, site, clock):
    app, _ = served
    assert content(get(app, "/a.txt")) == b"inside\n"
    (site / "a.txt").unlink()
    (site / "a.txt").symlink_to(site.parent / "secret.txt")
    # Within `valid` the checked inode (inside the root) is still what is served...
    assert content(get(app, "/a.txt")) == b"inside\n"
    # ... and once it expires the new link is checked, and refused.
    clock.now += 1.5
    assert get(app, "/a.txt").status == 404
    assert get(app, "/a.txt").status == 404  # (and not kept)


def test_a_replaced_file_is_served_new_once_valid_has_passed(served, site, clock):
    app, _ = served
    old = get(app, "/a.txt")
    etag = dict(old.headers)["ETag"]
    assert content(old) == b"inside\n"
    replacement = site / "a.txt.new"
    replacement.write_bytes(b"a new version, longer\n")
    os.replace(replacement, site / "a.txt")
    clock.now += 1.5
    new = get(app, "/a.txt", ("if-none-match", etag))
    assert new.status == 200 and content(new) == b"a new version, longer\n"


def test_a_deleted_file_is_404_and_let_go_once_valid_has_passed(served, site, clock):
    app, cache = served
    before = open_fds()
    assert content(get(app, "/a.txt")) == b"inside\n"
    assert open_fds() == before + 1  # kept open
    (site / "a.txt").unlink()
    clock.now += 1.5
    assert get(app, "/a.txt").status == 404
    assert open_fds() == before and len(cache) == 0


def test_conditional_and_range_answers_give_the_descriptor_back(served, clock):
    app, cache = served
    first = get(app, "/a.txt")
    etag = dict(first.headers)["ETag"]
    content(first)
    not_modified = get(app, "/a.txt", ("if-none-match", etag))
    assert not_modified.status == 304
    part = get(app, "/a.txt", ("range", "bytes=1-3"))
    assert part.status == 206 and content(part) == b"nsi"
    many = get(app, "/a.txt", ("range", "bytes=0-0,2-2"))
    assert many.status == 206
    assert b"".join(many.body).count(b"Content-Range") == 2
    many.body.close()
    entry = cache.lookup(os.fsencode(app.root) + b"/a.txt")
    assert entry is not None and entry.users == 0


def test_a_trailing_slash_on_a_kept_file_is_still_404(served):
    app, _ = served
    content(get(app, "/a.txt"))
    assert get(app, "/a.txt/").status == 404


def test_precompressed_variants_are_not_cached(site, clock):
    cache = OpenFileCache(4, valid=1.0, clock=clock)
    app = StaticFiles(site, precompressed=True, open_file_cache=cache)
    assert content(get(app, "/a.txt")) == b"inside\n"
    assert len(cache) == 0


def test_a_small_file_is_kept_whole_and_answered_without_file_io(served, site, monkeypatch):
    app, cache = served
    assert content(get(app, "/a.txt")) == b"inside\n"
    monkeypatch.setattr(os, "pread", None)  # no read, no descriptor lent: bytes kept
    answer = get(app, "/a.txt")
    assert answer.status == 200 and answer.body == b"inside\n"
    assert ("Content-Type", "text/plain; charset=utf-8") in answer.headers
    assert cache.data_bytes == len(b"inside\n")


def test_a_large_file_is_sent_from_its_descriptor(served, site):
    app, cache = served
    (site / "big.bin").write_bytes(b"b" * (SMALL_FILE + 1))
    answer = get(app, "/big.bin")
    assert isinstance(answer.body, FileBody) and content(answer) == b"b" * (SMALL_FILE + 1)
    assert cache.data_bytes == 0


def test_small_files_kept_whole_stay_within_the_budget(tmp_path, clock, monkeypatch):
    monkeypatch.setattr(file_cache, "DATA_BUDGET", 3 * 1000)
    for index in range(5):
        (tmp_path / f"f{index}").write_bytes(b"x" * 1000)
    cache = OpenFileCache(10, valid=60.0, clock=clock)
    app = StaticFiles(tmp_path, open_file_cache=cache)
    answers = [get(app, f"/f{index}") for index in range(5)]
    assert [type(a.body) is bytes for a in answers] == [True, True, True, False, False]
    assert cache.data_bytes == 3000
    for answer in answers:
        assert content(answer) == b"x" * 1000
    cache.clear()
    assert cache.data_bytes == 0


def test_an_expired_file_is_let_go_by_a_request_for_any_other(served, site, clock):
    """A file deleted after it was served keeps its disk space only until the first
    request for any file once its entry expired, not until the cache turns over."""
    app, cache = served
    (site / "b.txt").write_bytes(b"another\n")
    before = open_fds()
    assert content(get(app, "/a.txt")) == b"inside\n"
    (site / "a.txt").unlink()
    assert open_fds() == before + 1
    clock.now += 1.5
    assert content(get(app, "/b.txt")) == b"another\n"  # another path
    assert open_fds() == before + 1 and len(cache) == 1  # a.txt's descriptor let go
    assert cache.lookup(os.fsencode(app.root) + b"/a.txt") is None


def test_entries_still_valid_stay_when_older_ones_go(tmp_path, clock):
    cache = OpenFileCache(10, valid=1.0, clock=clock)
    for name in ("old", "new"):
        path = tmp_path / name
        path.write_bytes(b"x")
        fd = os.open(path, os.O_RDONLY)
        cache.store(name.encode(), fd, os.fstat(fd))
        clock.now += 0.6
    # "old" was stored 1.2 s ago, "new" 0.6 s ago: only "old" has expired.
    assert cache.lookup(b"missing") is None
    assert len(cache) == 1 and cache.lookup(b"new") is not None
