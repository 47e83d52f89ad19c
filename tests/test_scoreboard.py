"""The scoreboard: slots in shared memory that workers beat into and anyone sums."""

from __future__ import annotations

import os
import struct
import time

import pytest

from selserve.scoreboard import NOT_ACCEPTING, SLOT_SIZE, Scoreboard


def snapshot(requests: int, open_: int, reason: str = "client-closed") -> dict:
    return {
        "counts": {"requests": requests, "bytes_out": 10 * requests, "events": {reason: 1}},
        "gauges": {"connections_open": open_},
    }


@pytest.fixture
def board():
    board = Scoreboard(4)
    yield board
    board.close()


def test_a_beat_is_read_back_with_its_time_and_snapshot(board):
    slot = board.claim()
    before = time.monotonic()
    board.beat(slot, 1234, snapshot(5, 2))
    pid, heartbeat, published = board.read(slot)
    assert pid == 1234 and before <= heartbeat <= time.monotonic()
    assert published == snapshot(5, 2)


def test_a_beat_without_a_snapshot_keeps_the_last_one(board):
    slot = board.claim()
    board.beat(slot, 1, snapshot(5, 2))
    first = board.heartbeat(slot)
    board.beat(slot, 1)
    assert board.heartbeat(slot) >= first and board.read(slot)[2] == snapshot(5, 2)


def test_totals_sum_counts_and_gauges_over_the_workers(board):
    one, two = board.claim(), board.claim()
    board.beat(one, 11, snapshot(5, 2))
    board.beat(two, 22, snapshot(7, 1, reason="timeout"))
    counts, gauges, per_worker = board.total()
    assert counts == {
        "requests": 12,
        "bytes_out": 120,
        "events": {"client-closed": 1, "timeout": 1},
    }
    assert gauges == {"connections_open": 3} and per_worker == {11: 5, 22: 7}


def test_a_departed_worker_keeps_its_counts_but_not_its_gauges(board):
    one, two = board.claim(), board.claim()
    board.beat(one, 11, snapshot(5, 2))
    board.beat(two, 22, snapshot(7, 1))
    board.release(one)
    counts, gauges, per_worker = board.total()
    assert counts["requests"] == 12 and gauges == {"connections_open": 1}
    assert per_worker == {22: 7}
    again = board.claim()  # the freed slot, cleared
    assert again == one and board.read(again) == (0, 0.0, None)
    board.beat(again, 33, snapshot(1, 1))
    assert board.total()[0]["requests"] == 13


def test_slots_run_out_cleanly(board):
    slots = [board.claim() for _ in range(4)]
    assert None not in slots and board.claim() is None
    board.release(slots[0])
    assert board.claim() == slots[0]


def test_a_snapshot_too_big_for_its_slot_is_replaced_by_a_marker(board):
    slot = board.claim()
    huge = {"counts": {"events": {f"reason-{i}": i for i in range(SLOT_SIZE)}}, "gauges": {}}
    board.beat(slot, 1, huge)
    assert board.read(slot)[2] == {"counts": {}, "gauges": {}, "truncated": True}


def test_a_slot_left_mid_write_reads_as_empty_and_can_be_reused(board):
    slot = board.claim()
    board.beat(slot, 1, snapshot(5, 2))
    sequence = struct.unpack_from("=Q", board.memory, slot * SLOT_SIZE)[0]
    struct.pack_into("=Q", board.memory, slot * SLOT_SIZE, sequence + 1)  # killed mid-write
    assert board.read(slot) == (0, 0.0, None)
    board.release(slot)  # its counts are lost, nothing else
    assert board.total() == ({}, {}, {})
    again = board.claim()
    board.beat(again, 2, snapshot(1, 0))
    assert board.read(again)[2] == snapshot(1, 0)


def test_other_processes_see_a_beat_and_the_parent_sees_theirs(board):
    slot = board.claim()
    pid = os.fork()
    if pid == 0:  # the child: what a worker does
        try:
            board.beat(slot, os.getpid(), snapshot(3, 1))
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    assert board.read(slot)[0] == pid and board.total()[2] == {pid: 3}


def live(board, pid: int, open_: int) -> int:
    slot = board.claim()
    board.beat(slot, pid)
    board.load(slot, open_)
    return slot


def test_a_worker_leaves_clients_to_one_with_fewer_connections(board):
    mine = live(board, 1, 5)
    live(board, 2, 3)
    assert board.lighter_than(mine, 5)  # 3 < 5 - 1
    assert not board.lighter_than(mine, 4)  # within the slack


def test_the_worker_with_fewest_connections_always_takes_the_client():
    loads = [4, 0, 3, 2, 7, 5, 1]
    many = Scoreboard(len(loads))
    try:
        slots = [live(many, 100 + i, load) for i, load in enumerate(loads)]
        keep = [s for s, load in zip(slots, loads, strict=True) if not many.lighter_than(s, load)]
    finally:
        many.close()
    assert keep == [slots[1], slots[6]]  # 0 and 1 open: within the slack of each other


def test_leaving_stale_and_unready_workers_are_not_counted_on(board):
    mine = live(board, 1, 9)
    leaving = live(board, 2, 0)
    board.load(leaving, NOT_ACCEPTING)
    board.claim()  # a worker still starting: no heartbeat yet
    assert not board.lighter_than(mine, 9)
    stale = live(board, 3, 0)
    assert board.lighter_than(mine, 9)
    offset = stale * SLOT_SIZE + 16
    struct.pack_into("=d", board.memory, offset, time.monotonic() - 10)  # hung for 10 s
    assert not board.lighter_than(mine, 9)
