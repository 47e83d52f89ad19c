"""Open static files kept between requests: nginx's open_file_cache, for StaticFiles.

Serving a small file costs more in finding it than in sending it: `open`, `fstat`
and the `readlink` of the descriptor that proves where it really is (static.py's
confinement check) for a `sendfile` of a few KiB.  An `OpenFileCache` keeps, by
file-system path, the descriptor of a regular file that passed those checks with
its stat result, and hands it out again for `valid` seconds; after that the next
request for the path opens and checks it afresh.  So:

- **Nothing escapes the root.**  A kept descriptor is the inode that was checked;
  a symlink or a file swapped in later under the same name is only opened, and
  checked, once the entry has expired.
- **Nothing is served stale past `valid` seconds** (a file replaced by rename or
  deleted; a file rewritten in place is read as it is now, but its size and
  validators are those seen when it was opened, as with nginx).
- **Descriptors are bounded:** at most `size` entries; the oldest goes first.  An
  entry evicted while a response still sends from its descriptor is closed when the
  last such response ends (`CachedFile.borrow()` counts them).
- **Small files are kept whole** (up to SMALL_FILE bytes each, DATA_BUDGET in all),
  read once when stored: such an answer is then one `send` with its head, no file
  I/O at all, as for any bytes answer.  What the user of the cache derives from a
  file's stat (static.py: its validators and headers) is kept as `memo`.

Entries are kept in the order they were stored, so the expired ones are at the
front: any lookup past the oldest entry's expiry lets them go.  A file deleted or
replaced is therefore let go by the first request for any file after it expired,
not held (with its disk space) until the cache turns over.  Used from the event
loop's thread only.
"""

from __future__ import annotations

import math
import os
import time

# Files this small are read into memory when stored (a whole 4 KiB page costs a
# second syscall and a file range in the write buffer to send otherwise) ...
SMALL_FILE = 16 * 1024
# ... up to this many bytes of them in one cache.
DATA_BUDGET = 4 * 1024 * 1024


class CachedFile:
    """One open regular file: `fd`, the `st` it had when opened and checked, and
    `checked`, when (monotonic)."""

    __slots__ = ("fd", "st", "checked", "users", "evicted", "data", "memo")

    def __init__(self, fd: int, st: os.stat_result, checked: float, data: bytes | None) -> None:
        self.fd = fd
        self.st = st
        self.checked = checked
        self.users = 0  # responses sending from fd now
        self.evicted = False
        self.data = data  # the whole content of a small file, else None
        self.memo = None  # what the cache's user derived from st, kept with it

    def borrow(self) -> BorrowedFile:
        """The file object for one response (a FileBody's `fileobj`): closing it gives
        the descriptor back instead of closing it."""
        self.users += 1
        return BorrowedFile(self)

    def give_back(self) -> None:
        self.users -= 1
        if self.evicted and self.users == 0:
            self._close()

    def evict(self) -> None:
        self.evicted = True
        if self.users == 0:
            self._close()

    def _close(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)


class BorrowedFile:
    """A cached descriptor lent to one response: `fileno()`, and `close()` (once)."""

    __slots__ = ("_entry",)

    def __init__(self, entry: CachedFile) -> None:
        self._entry = entry

    def fileno(self) -> int:
        entry = self._entry
        if entry is None:
            raise ValueError("I/O operation on closed file")
        return entry.fd

    @property
    def closed(self) -> bool:
        return self._entry is None

    def close(self) -> None:
        entry, self._entry = self._entry, None
        if entry is not None:
            entry.give_back()

    def __del__(self) -> None:
        self.close()


class OpenFileCache:
    """At most `size` open files by path, each valid for `valid` seconds."""

    __slots__ = ("size", "valid", "data_bytes", "_entries", "_clock", "_next_expiry")

    def __init__(self, size: int, valid: float, clock=time.monotonic) -> None:
        if size < 1:
            raise ValueError("an open-file cache holds at least one file")
        self.size = size
        self.valid = valid
        self.data_bytes = 0  # of small files kept whole
        self._entries: dict[bytes, CachedFile] = {}  # oldest first
        self._clock = clock
        self._next_expiry = math.inf  # when the oldest entry expires

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, path: bytes) -> CachedFile | None:
        """The entry for `path` if it is still valid; an expired one is dropped (the
        caller opens and checks the path again, and stores what it finds)."""
        now = self._clock()
        if now > self._next_expiry:
            self._drop_expired(now)
        entry = self._entries.get(path)
        if entry is None:
            return None
        if now - entry.checked <= self.valid:
            return entry
        del self._entries[path]
        self._evict(entry)
        return None

    def _drop_expired(self, now: float) -> None:
        """Let the expired entries go: the oldest first, up to the first still valid."""
        entries = self._entries
        valid = self.valid
        while entries:
            path = next(iter(entries))
            entry = entries[path]
            if now - entry.checked <= valid:
                self._next_expiry = entry.checked + valid
                return
            del entries[path]
            self._evict(entry)
        self._next_expiry = math.inf

    def store(self, path: bytes, fd: int, st: os.stat_result) -> CachedFile:
        """Keep `fd` (a regular file just opened and checked, now ours) for `path`."""
        entries = self._entries
        old = entries.pop(path, None)
        if old is not None:
            self._evict(old)
        while len(entries) >= self.size:
            self._evict(entries.pop(next(iter(entries))))
        data = None
        size = st.st_size
        if size <= SMALL_FILE and self.data_bytes + size <= DATA_BUDGET:
            data = os.pread(fd, size, 0)
            if len(data) == size:
                self.data_bytes += size
            else:  # (changing as we read: served from the descriptor instead)
                data = None
        entry = entries[path] = CachedFile(fd, st, self._clock(), data)
        if len(entries) == 1:
            self._next_expiry = entry.checked + self.valid
        return entry

    def _evict(self, entry: CachedFile) -> None:
        if entry.data is not None:
            self.data_bytes -= len(entry.data)
            entry.data = None
        entry.evict()

    def clear(self) -> None:
        """Let every entry go (closed now, or when its last response ends)."""
        entries, self._entries = self._entries, {}
        self._next_expiry = math.inf
        for entry in entries.values():
            self._evict(entry)
