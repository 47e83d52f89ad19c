"""What the workers of one supervisor tell each other: heartbeats and counters.

A scoreboard (Apache's word for the same thing) is an anonymous shared memory
map that the supervisor makes before it forks, so that every worker inherits it.
It holds one slot per worker, and slot 0 for the counts of workers that have
left.  Once a second each worker writes into its own slot the time (its
heartbeat) and, when someone asks for counters (--stats-path), a JSON snapshot
of its own.  Whichever worker answers the stats path reads every slot and sums
them; the supervisor reads the heartbeats to find a worker whose loop has
stopped turning, and folds a departing worker's counts into slot 0.

Writes never wait for readers and nothing is locked: each slot is guarded by a
sequence number (a seqlock), odd while its owner writes, so a reader that sees
it odd or changed reads again.  The cost to a worker is one small write a
second, and a snapshot a second only when counters are wanted; the cost to a
reader is one pass over the slots in use.
"""

from __future__ import annotations

import json
import mmap
import struct
import time
from collections.abc import Iterator

# Per slot: sequence number, owner's pid, heartbeat (time.monotonic(), the same
# clock in every process), its load (open connections, or NOT_ACCEPTING), length of
# the JSON snapshot that follows.  The load is written on its own, outside the
# seqlock, at every accept and close: one aligned word, read as it is.
_HEADER = struct.Struct("=QqdqI")
_BEAT = struct.Struct("=d")
_BEAT_OFFSET = 16
_LOAD = struct.Struct("=q")
_LOAD_OFFSET = 24
NOT_ACCEPTING = 1 << 62  # a worker that is leaving: never the one to leave a client to
# A worker whose heartbeat is older than this is not counted on to accept.
STALE = 2.0
# How many open connections more than another worker one may hold before leaving it
# the next client.  Only open connections count: evening out connections accepted
# too made two workers on one core alternate strictly, and cost a Connection: close
# load 37% more CPU per request; short connections even out by themselves.
OPEN_SLACK = 1
SLOT_SIZE = 16 * 1024
_ROOM = SLOT_SIZE - _HEADER.size
DEPARTED = 0  # the slot holding the summed counts of workers that have left
_READ_ATTEMPTS = 1000  # a writer takes microseconds; past this, it died mid-write


class Scoreboard:
    """`slots` worker slots (plus the departed one) in shared memory; pages are
    touched only as slots are used, so a generous count costs address space only."""

    def __init__(self, slots: int) -> None:
        self.memory = mmap.mmap(-1, (slots + 1) * SLOT_SIZE)  # MAP_SHARED: seen after fork
        self.free = list(range(slots, 0, -1))

    # -- the supervisor's side -------------------------------------------------

    def claim(self) -> int | None:
        """A free slot for a new worker, cleared; None when all are taken."""
        if not self.free:
            return None
        slot = self.free.pop()
        self._write(slot, 0, 0.0, b"")
        self.load(slot, NOT_ACCEPTING)
        if slot > self._highest():
            # Readers look at slots up to the highest ever claimed (slot 0's pid field).
            struct.pack_into("=q", self.memory, 8, slot)
        return slot

    def release(self, slot: int) -> None:
        """The worker in `slot` has ended: keep its counts (slot 0), free the slot.
        Slot 0's sequence stays odd across both writes, so that a reader summing the
        slots never sees the counts twice or not at all (counters must not go back)."""
        _, _, snapshot = self.read(slot)
        _, _, departed = self.read(DEPARTED)
        if snapshot is not None:
            departed = _add(departed or {}, snapshot["counts"])
        sequence = self._begin(DEPARTED)
        self._write(slot, 0, 0.0, b"")
        self._fill(DEPARTED, self._highest(), 0.0, _encode(departed) if departed else b"")
        self._end(DEPARTED, sequence)
        self.free.append(slot)

    # -- the worker's side -----------------------------------------------------

    def beat(self, slot: int, pid: int, snapshot: dict | None = None) -> None:
        """Say this worker's loop is turning; with `snapshot`, publish its counters
        too ({"counts": cumulative numbers, "gauges": numbers right now})."""
        payload = _encode(snapshot) if snapshot is not None else None
        if payload is not None and len(payload) > _ROOM:
            payload = _encode({"counts": {}, "gauges": {}, "truncated": True})
        self._write(slot, pid, time.monotonic(), payload)

    def load(self, slot: int, open_connections: int) -> None:
        """Publish this worker's load at once (see `lighter_than`)."""
        _LOAD.pack_into(self.memory, slot * SLOT_SIZE + _LOAD_OFFSET, open_connections)

    def lighter_than(self, slot: int, open_connections: int) -> bool:
        """Whether another live, accepting worker should take the next client instead:
        one with fewer open connections, by more than OPEN_SLACK.  The one with the
        fewest always finds none lighter than itself."""
        memory, now = self.memory, time.monotonic()
        for other in self._live_slots():
            if other == slot:
                continue
            offset = other * SLOT_SIZE
            (heartbeat,) = _BEAT.unpack_from(memory, offset + _BEAT_OFFSET)
            (theirs,) = _LOAD.unpack_from(memory, offset + _LOAD_OFFSET)
            if now - heartbeat > STALE or theirs == NOT_ACCEPTING:
                continue
            if theirs < open_connections - OPEN_SLACK:
                return True
        return False

    def _live_slots(self) -> range:
        return range(1, self._highest() + 1)

    def _highest(self) -> int:
        return struct.unpack_from("=q", self.memory, 8)[0]

    # -- reading ---------------------------------------------------------------

    def read(self, slot: int) -> tuple[int, float, dict | None]:
        """(pid, heartbeat, snapshot or None) of one slot, consistently."""
        memory, offset = self.memory, slot * SLOT_SIZE
        for _ in range(_READ_ATTEMPTS):
            sequence, pid, heartbeat, _, length = _HEADER.unpack_from(memory, offset)
            if sequence & 1:
                continue
            start = offset + _HEADER.size
            payload = memory[start : start + min(length, _ROOM)]
            if _HEADER.unpack_from(memory, offset)[0] == sequence:
                return pid, heartbeat, json.loads(payload) if payload else None
        return 0, 0.0, None  # its writer died mid-write: nothing to trust

    def heartbeat(self, slot: int) -> float:
        """When the slot's worker last beat: one aligned word, read as it is (the
        supervisor asks every second and needs no snapshot decoded for it)."""
        return _BEAT.unpack_from(self.memory, slot * SLOT_SIZE + _BEAT_OFFSET)[0]

    def snapshots(self, slots: int) -> Iterator[tuple[int, dict]]:
        """(pid, snapshot) of every worker slot up to `slots` that has published one."""
        for slot in range(1, slots + 1):
            pid, _, snapshot = self.read(slot)
            if pid and snapshot is not None:
                yield pid, snapshot

    def total(self) -> tuple[dict, dict, dict[int, int]]:
        """Counts over every worker past and present, gauges over the live ones, and
        each live worker's requests: (counts, gauges, {pid: requests})."""
        slots = self._highest()
        for _ in range(_READ_ATTEMPTS):
            before = _HEADER.unpack_from(self.memory, 0)[0]
            counts = self.read(DEPARTED)[2] or {}
            gauges: dict = {}
            per_worker = {}
            for pid, snapshot in self.snapshots(slots):
                counts = _add(counts, snapshot["counts"])
                gauges = _add(gauges, snapshot["gauges"])
                per_worker[pid] = snapshot["counts"].get("requests", 0)
            if not before & 1 and _HEADER.unpack_from(self.memory, 0)[0] == before:
                break  # no worker left while we added
        return counts, gauges, per_worker

    def close(self) -> None:
        self.memory.close()

    def _write(self, slot: int, pid: int, heartbeat: float, payload: bytes | None) -> None:
        """Write a slot's header (and payload, unless None: keep the last one)."""
        sequence = self._begin(slot)
        self._fill(slot, pid, heartbeat, payload)
        self._end(slot, sequence)

    def _begin(self, slot: int) -> int:
        """Make the slot's sequence odd (being written) and return it.  It may be odd
        already: a worker killed while writing left it so."""
        offset = slot * SLOT_SIZE
        sequence = _HEADER.unpack_from(self.memory, offset)[0] | 1
        struct.pack_into("=Q", self.memory, offset, sequence)
        return sequence

    def _end(self, slot: int, sequence: int) -> None:
        struct.pack_into("=Q", self.memory, slot * SLOT_SIZE, sequence + 1)

    def _fill(self, slot: int, pid: int, heartbeat: float, payload: bytes | None) -> None:
        memory, offset = self.memory, slot * SLOT_SIZE
        sequence, _, _, open_connections, length = _HEADER.unpack_from(memory, offset)
        if payload is not None:
            start = offset + _HEADER.size
            memory[start : start + len(payload)] = payload
            length = len(payload)
        _HEADER.pack_into(memory, offset, sequence, pid, heartbeat, open_connections, length)


def _encode(snapshot: dict) -> bytes:
    return json.dumps(snapshot, separators=(",", ":")).encode("ascii")


def _add(into: dict, more: dict) -> dict:
    """`into` + `more`, number by number; nested dicts (the close reasons) alike."""
    result = dict(into)
    for key, value in more.items():
        if isinstance(value, dict):
            result[key] = _add(result.get(key) or {}, value)
        elif isinstance(value, (int, float)):
            result[key] = result.get(key, 0) + value
    return result
