"""The scoreboard: slot life cycle, the documented byte layout, totals that survive a worker, torn reads, and
sharing across fork."""

from __future__ import annotations

import os
import random
import signal
import struct
import time
import traceback
from collections.abc import Callable, Iterator

import pytest

from corral.core.scoreboard import (
    DEFAULT_LATENCY_BOUNDS,
    HEADER_SIZE,
    LATENCY_BUCKETS,
    LATENCY_OFFSET,
    METHODS,
    SLOT_SIZE,
    ListenQueue,
    MasterState,
    RestartReason,
    Scoreboard,
    SlotSnapshot,
    Totals,
    WorkerCounters,
    WorkerState,
    check_latency_bounds,
)
from corral.http.ledger import Refusal, RequestLedger

U64_MAX = 2**64 - 1
I64_MAX = 2**63 - 1
# Offsets of the module docstring's layout, restated here so a silent layout change fails a test.
HEARTBEAT_OFFSET = 32
GAUGES_END = 136
PUBLISH_END = 384
COUNTER_FIELDS = ("requests", "active_requests", "active_connections", "bytes_in", "bytes_out", "websockets", "rss")
PUBLISHED_FIELDS = 1 + 1 + 5 + 6 + len(METHODS) + 1 + LATENCY_BUCKETS  # heartbeat .. latency, one value each


@pytest.fixture
def board() -> Iterator[Scoreboard]:
    with Scoreboard(4) as scoreboard:
        yield scoreboard


def counters_all(value: int) -> WorkerCounters:
    return WorkerCounters(
        requests=value,
        responses=[value] * 5,
        active_requests=value,
        active_connections=value,
        bytes_in=value,
        bytes_out=value,
        websockets=value,
        methods=[value] * len(METHODS),
        duration_ns=value,
        latency=[value] * LATENCY_BUCKETS,
    )


def set_all(counters: WorkerCounters, value: int) -> None:
    counters.requests = counters.bytes_in = counters.bytes_out = counters.duration_ns = value
    counters.active_requests = counters.active_connections = counters.websockets = value
    counters.responses[:] = [value] * 5
    counters.methods[:] = [value] * len(METHODS)
    counters.latency[:] = [value] * LATENCY_BUCKETS


def publish_all(board: Scoreboard, index: int, value: int) -> None:
    """Every published field of slot `index` set to `value` (the heartbeat to float(value))."""
    board.slot(index).publish(counters_all(value), float(value), value)


def published_values(snap: SlotSnapshot) -> list[float]:
    return [
        snap.heartbeat,
        *snap.responses,
        *(getattr(snap, name) for name in COUNTER_FIELDS),
        *snap.methods,
        snap.duration_ns,
        *snap.latency,
    ]


def run_in_child(work: Callable[[], None]) -> int:
    """Fork; the child runs `work` and exits 0, or 1 if it raised. Returns the child's pid."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            work()
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    return pid


def wait_child(pid: int, timeout: float = 10.0) -> int:
    """The child's exit code; kills it and fails the test if it outlives `timeout`."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / 0.005) + 1):
        reaped, status = os.waitpid(pid, os.WNOHANG)
        if reaped:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            break
        time.sleep(0.005)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail(f"child {pid} did not exit within {timeout}s")


def reap_if_exited(pid: int, exit_codes: dict[int, int]) -> bool:
    """Record the child's exit code in `exit_codes` once it has exited; True when it has."""
    if pid not in exit_codes:
        reaped, status = os.waitpid(pid, os.WNOHANG)
        if reaped:
            exit_codes[pid] = os.waitstatus_to_exitcode(status)
    return pid in exit_codes


def finish(pids: list[int], exit_codes: dict[int, int]) -> list[int]:
    """Every child's exit code, waiting (bounded) for those not reaped yet."""
    return [exit_codes[pid] if pid in exit_codes else wait_child(pid) for pid in pids]


# -- slot life cycle ---------------------------------------------------------------------------------


def test_a_new_scoreboard_has_every_slot_empty(board: Scoreboard) -> None:
    assert len(board) == 4
    for index, snap in enumerate(board.snapshot()):
        assert snap == SlotSnapshot(
            index=index,
            pid=0,
            generation=0,
            state=WorkerState.EMPTY,
            started=0.0,
            ready_at=0.0,
            heartbeat=0.0,
            requests=0,
            responses=(0, 0, 0, 0, 0),
            active_requests=0,
            active_connections=0,
            bytes_in=0,
            bytes_out=0,
            rss=0,
            websockets=0,
            retire_requested=False,
        )
    assert board.free_slot() == 0


def test_claim_marks_the_slot_booting_with_pid_generation_and_start_time(board: Scoreboard) -> None:
    slot = board.slot(2)
    slot.claim(4242, 7, 100.5)
    snap = slot.read()
    assert (snap.index, snap.pid, snap.generation, snap.state) == (2, 4242, 7, WorkerState.BOOTING)
    assert (snap.started, snap.heartbeat, snap.ready_at) == (100.5, 100.5, 0.0)
    assert (slot.pid, slot.state, slot.heartbeat) == (4242, WorkerState.BOOTING, 100.5)


def test_claim_zeroes_what_the_previous_worker_left(board: Scoreboard) -> None:
    slot = board.slot(1)
    slot.claim(10, 1, 1.0)
    slot.set_state(WorkerState.READY, 2.0)
    publish_all(board, 1, 99)
    slot.request_retirement()
    board._mm[HEADER_SIZE + SLOT_SIZE + LATENCY_OFFSET] = 0xFF  # the reserved histogram area too
    slot.release()

    slot.claim(11, 2, 5.0)

    snap = slot.read()
    assert (snap.pid, snap.generation, snap.state, snap.ready_at) == (11, 2, WorkerState.BOOTING, 0.0)
    assert published_values(snap) == [5.0] + [0] * (PUBLISHED_FIELDS - 1)
    assert not snap.retire_requested
    assert board._mm[HEADER_SIZE + SLOT_SIZE + LATENCY_OFFSET] == 0


def test_release_frees_the_slot_and_moves_its_totals_to_the_retired_totals(board: Scoreboard) -> None:
    slot = board.slot(0)
    slot.claim(10, 1, 1.0)
    publish_all(board, 0, 5)

    slot.release()

    snap = slot.read()
    assert (snap.pid, snap.state) == (0, WorkerState.EMPTY)
    assert (snap.requests, snap.methods, snap.latency) == (0, (0,) * len(METHODS), (0,) * LATENCY_BUCKETS)
    read = board.read_board()
    assert read.retired == Totals(5, (5,) * 5, 5, 5, (5,) * len(METHODS), 5, (5,) * LATENCY_BUCKETS)
    assert read.totals() == read.retired
    assert board.free_slot() == 0


def test_pool_totals_never_go_back_when_workers_are_replaced(board: Scoreboard) -> None:
    seen = []
    for generation in range(1, 6):
        slot = board.slot(generation % 2)
        slot.claim(100 + generation, generation, 1.0)
        for requests in (1, 2, 3):
            counters = WorkerCounters(requests=requests, bytes_out=10 * requests)
            slot.publish(counters, 2.0, 0)
            seen.append(board.read_board().totals().requests)
        slot.release()
        seen.append(board.read_board().totals().requests)
    assert seen == sorted(seen)
    assert board.read_board().totals().requests == 15
    assert board.read_board().totals().bytes_out == 150


def test_claim_records_why_the_worker_starts_and_the_worker_claim_keeps_it(board: Scoreboard) -> None:
    slot = board.slot(1)
    slot.claim(0, 3, 1.0, RestartReason.MAX_REQUESTS)  # the master, before fork
    slot.claim(4321, 3, 1.1)  # the worker, after fork
    assert (slot.start_reason, slot.read().start_reason, slot.pid) == (
        RestartReason.MAX_REQUESTS,
        RestartReason.MAX_REQUESTS,
        4321,
    )
    slot.release()
    slot.claim(0, 4, 2.0, RestartReason.CRASH)
    assert slot.read().start_reason is RestartReason.CRASH


def test_free_slot_is_the_first_empty_slot_and_none_when_all_are_taken(board: Scoreboard) -> None:
    for index in (0, 1, 3):
        board.slot(index).claim(100 + index, 1, 1.0)
    assert board.free_slot() == 2
    board.slot(2).claim(102, 1, 1.0)
    assert board.free_slot() is None
    board.slot(1).release()
    assert board.free_slot() == 1


def test_set_state_ready_records_ready_at_and_counts_as_a_heartbeat(board: Scoreboard) -> None:
    slot = board.slot(0)
    slot.claim(10, 1, 1.0)
    slot.set_state(WorkerState.READY, 30.0)
    snap = slot.read()
    assert (snap.state, snap.ready_at, snap.heartbeat, snap.started) == (WorkerState.READY, 30.0, 30.0, 1.0)


def test_set_state_other_than_ready_keeps_ready_at(board: Scoreboard) -> None:
    slot = board.slot(0)
    slot.claim(10, 1, 1.0)
    slot.set_state(WorkerState.READY, 2.0)
    slot.set_state(WorkerState.DRAINING, 9.0)
    snap = slot.read()
    assert (snap.state, snap.ready_at, snap.heartbeat) == (WorkerState.DRAINING, 2.0, 9.0)


def test_beat_writes_only_the_heartbeat(board: Scoreboard) -> None:
    slot = board.slot(0)
    slot.claim(10, 1, 1.0)
    publish_all(board, 0, 3)
    before = slot.read()
    slot.beat(42.0)
    after = slot.read()
    assert after.heartbeat == 42.0
    assert after == SlotSnapshot(**{**{name: getattr(before, name) for name in before.__slots__}, "heartbeat": 42.0})


def test_publish_writes_heartbeat_counters_histogram_and_rss(board: Scoreboard) -> None:
    slot = board.slot(3)
    slot.claim(10, 1, 1.0)
    counters = WorkerCounters(
        requests=12,
        responses=[1, 8, 2, 1, 0],
        active_requests=2,
        active_connections=5,
        bytes_in=1000,
        bytes_out=64000,
        websockets=3,
        methods=[7, 1, 3, 0, 0, 1, 0, 0],
        duration_ns=123_456,
        latency=[9, 2, 1] + [0] * 13,
    )
    slot.publish(counters, 7.25, 50_000_000)
    snap = slot.read()
    assert snap.heartbeat == 7.25
    assert (snap.methods, snap.duration_ns, snap.latency) == ((7, 1, 3, 0, 0, 1, 0, 0), 123_456, (9, 2, 1) + (0,) * 13)
    assert (snap.requests, snap.responses) == (12, (1, 8, 2, 1, 0))
    assert (snap.active_requests, snap.active_connections, snap.websockets) == (2, 5, 3)
    assert (snap.bytes_in, snap.bytes_out, snap.rss) == (1000, 64000, 50_000_000)
    assert (snap.pid, snap.state, snap.started) == (10, WorkerState.BOOTING, 1.0)


def test_totals_hold_the_full_u64_range_and_gauges_may_go_negative(board: Scoreboard) -> None:
    slot = board.slot(0)
    counters = WorkerCounters(
        requests=U64_MAX,
        responses=[U64_MAX] * 5,
        active_requests=-1,
        active_connections=-2,
        bytes_in=U64_MAX,
        bytes_out=U64_MAX,
        websockets=-3,
        methods=[U64_MAX] * len(METHODS),
        duration_ns=U64_MAX,
        latency=[U64_MAX] * LATENCY_BUCKETS,
    )
    slot.publish(counters, 1.0, U64_MAX)
    snap = slot.read()
    assert (snap.requests, snap.bytes_in, snap.bytes_out, snap.rss, snap.duration_ns) == (U64_MAX,) * 5
    assert snap.methods + snap.latency == (U64_MAX,) * (len(METHODS) + LATENCY_BUCKETS)
    assert snap.responses == (U64_MAX,) * 5
    assert (snap.active_requests, snap.active_connections, snap.websockets) == (-1, -2, -3)


def test_request_retirement_raises_the_flag_for_the_master(board: Scoreboard) -> None:
    slot = board.slot(1)
    slot.claim(10, 1, 1.0)
    assert not slot.retire_requested
    slot.request_retirement()
    assert slot.retire_requested
    assert slot.read().retire_requested


def test_writing_one_slot_leaves_its_neighbours_untouched(board: Scoreboard) -> None:
    empty = board.snapshot()
    middle = board.slot(1)
    middle.claim(2**32 - 1, U64_MAX, 1e300)
    middle.set_state(WorkerState.READY, 1e300)
    middle.request_retirement()
    middle.publish(counters_all(I64_MAX), 1e300, U64_MAX)
    after = board.snapshot()
    assert after[0] == empty[0]
    assert after[2] == empty[2]
    assert board.read_master() == (0, MasterState.STARTING, 0, False)


def test_the_byte_layout_is_the_documented_one(board: Scoreboard) -> None:
    slot = board.slot(2)
    slot.claim(4321, 9, 1.5, RestartReason.LIFETIME)
    slot.set_state(WorkerState.READY, 2.5)
    slot.request_retirement()
    counters = WorkerCounters(
        requests=11,
        responses=[21, 22, 23, 24, 25],
        active_requests=31,
        active_connections=32,
        bytes_in=41,
        bytes_out=42,
        websockets=51,
        methods=[71, 72, 73, 74, 75, 76, 77, 78],
        duration_ns=81,
        latency=list(range(100, 116)),
    )
    slot.publish(counters, 3.5, 61)
    board.set_master(777, MasterState.RELOADING, 5)
    board.master_started(10.5, 1_700_000_000.25)
    board.master_beat(12.5, 6)
    board.configure_request_metrics(True, (0.25, 1.0))
    board.count_restart(RestartReason.MEMORY)
    board.set_listen_queues([ListenQueue(3, 128), None])
    board.set_crash_loop_until(13.5)
    raw = bytes(board._mm)
    base = HEADER_SIZE + 2 * SLOT_SIZE

    assert struct.unpack_from("<4sHHI", raw, 0) == (b"CRSB", 2, SLOT_SIZE, 4)
    assert struct.unpack_from("<IBB", raw, 12) == (777, MasterState.RELOADING, 0)
    assert struct.unpack_from("<Q", raw, 24) == (5,)
    assert struct.unpack_from("<dddIBB", raw, 32) == (12.5, 10.5, 1_700_000_000.25, 6, 2, 1)
    assert struct.unpack_from("<Q", raw, 64) == (0,)  # the retired sequence: even, nothing released
    assert struct.unpack_from("<d", raw, 72) == (13.5,)
    assert struct.unpack_from("<3d", raw, 80) == (0.25, 1.0, 0.0)
    assert struct.unpack_from("<16Q", raw, 208)[RestartReason.MEMORY] == 1
    assert struct.unpack_from("<4I", raw, 336) == (3, 128, 0xFFFFFFFF, 0xFFFFFFFF)
    assert struct.unpack_from("<I", raw, 464) == (2,)
    assert struct.unpack_from("<IBBB", raw, base) == (4321, WorkerState.READY, 1, RestartReason.LIFETIME)
    assert struct.unpack_from("<Qddd", raw, base + 8) == (9, 1.5, 2.5, 3.5)
    assert struct.unpack_from("<Q5Q", raw, base + 40) == (11, 21, 22, 23, 24, 25)
    assert struct.unpack_from("<qqQQqQ", raw, base + 88) == (31, 32, 41, 42, 51, 61)
    assert struct.unpack_from("<8QQ", raw, base + 136) == (71, 72, 73, 74, 75, 76, 77, 78, 81)
    assert raw[base + 208 : base + LATENCY_OFFSET] == bytes(LATENCY_OFFSET - 208)
    assert struct.unpack_from("<16Q", raw, base + LATENCY_OFFSET) == tuple(range(100, 116))
    assert raw[base + PUBLISH_END : base + SLOT_SIZE] == bytes(SLOT_SIZE - PUBLISH_END)

    slot.release()
    raw = bytes(board._mm)
    assert struct.unpack_from("<Q", raw, 64) == (2,)  # odd while folding, even again after
    assert struct.unpack_from("<Q5QQQ8QQ16Q", raw, 512) == (
        11, 21, 22, 23, 24, 25, 41, 42, 71, 72, 73, 74, 75, 76, 77, 78, 81, *range(100, 116),
    )  # fmt: skip


# -- master header -----------------------------------------------------------------------------------


def test_a_new_board_has_the_default_histogram_bounds_and_request_metrics_off(board: Scoreboard) -> None:
    read = board.read_board()
    assert (read.latency_bounds, read.request_metrics) == (DEFAULT_LATENCY_BOUNDS, False)
    assert board.slot(0).request_metrics() == (False, DEFAULT_LATENCY_BOUNDS)


def test_request_metrics_configured_by_the_master_are_what_workers_read(board: Scoreboard) -> None:
    board.configure_request_metrics(True, (0.001, 0.1))
    assert board.slot(3).request_metrics() == (True, (0.001, 0.1))
    counters = WorkerCounters.for_worker(False, board.slot(3))
    assert (counters.timed, counters.latency_bounds_ns) == (True, (1_000_000, 100_000_000))
    board.configure_request_metrics(False, DEFAULT_LATENCY_BOUNDS)
    assert not WorkerCounters.for_worker(False, board.slot(3)).timed


def test_master_beat_and_start_are_read_back_with_the_target(board: Scoreboard) -> None:
    board.set_master(99, MasterState.RUNNING, 4)
    board.master_started(5.0, 1234.5)
    board.master_beat(7.5, 3)
    master = board.read_board().master
    assert (master.pid, master.state, master.generation, master.draining) == (99, MasterState.RUNNING, 4, False)
    assert (master.heartbeat, master.started, master.started_unix, master.target) == (7.5, 5.0, 1234.5, 3)


def test_the_crash_loop_the_master_declares_is_what_every_worker_reads(board: Scoreboard) -> None:
    assert [slot.crash_loop_until() for slot in board.slots()] == [0.0] * len(board)
    board.set_crash_loop_until(42.5)
    assert [slot.crash_loop_until() for slot in board.slots()] == [42.5] * len(board)


def test_restarts_are_counted_by_reason(board: Scoreboard) -> None:
    for reason in (RestartReason.CRASH, RestartReason.CRASH, RestartReason.RELOAD):
        board.count_restart(reason)
    restarts = board.read_board().restarts
    assert (restarts[RestartReason.CRASH], restarts[RestartReason.RELOAD], restarts[RestartReason.TIMEOUT]) == (2, 1, 0)


def test_listen_queues_read_back_with_unknown_ones_as_none(board: Scoreboard) -> None:
    board.set_listen_queues([ListenQueue(0, 2048), None, ListenQueue(2**40, 5)])
    assert board.read_board().listeners == (ListenQueue(0, 2048), None, ListenQueue(0xFFFFFFFE, 5))
    board.set_listen_queues([])
    assert board.read_board().listeners == ()


@pytest.mark.parametrize(
    ("bounds", "problem"),
    [((), "1 to 15"), (tuple(range(1, 17)), "1 to 15"), ((0.0, 1.0), "positive"), ((1.0, 1.0), "ascending"),
     ((2.0, 1.0), "ascending"), ((float("inf"),), "finite")],
)  # fmt: skip
def test_histogram_bounds_must_be_1_to_15_positive_ascending_seconds(bounds: tuple, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        check_latency_bounds(bounds)


class Finished:
    """A finished request as the ledger reads it."""

    def __init__(self, status: int, body_bytes: int, method: str | None, start_ns: int) -> None:
        self.scope = {"method": method} if method is not None else None
        self.status = status
        self.response_headers = ()
        self.response_bytes = body_bytes
        self.start_ns = start_ns


def _account(counters: WorkerCounters, status: int, body_bytes: int, method: str, start_ns: int) -> None:
    RequestLedger(counters).finished(Finished(status, body_bytes, method, start_ns))


def test_a_timed_request_lands_in_the_histogram_and_its_method() -> None:
    counters = WorkerCounters.timing((0.001, 1.0))
    _account(counters, 503, 12, "PATCH", time.perf_counter_ns())
    _account(counters, 200, 5, "BREW", time.perf_counter_ns() - 5_000_000)  # started 5 ms ago
    assert (counters.requests, counters.responses, counters.bytes_out) == (2, [0, 1, 0, 0, 1], 17)
    assert counters.method_counts() == [0, 0, 0, 0, 1, 0, 0, 1]
    assert counters.latency[:3] == [1, 1, 0] and sum(counters.latency) == 2
    assert counters.duration_ns >= 5_000_000
    _account(counters, 200, 0, "GET", time.perf_counter_ns())
    assert (counters.methods[0], counters.method_counts()[0]) == (0, 1)  # GET is derived, never counted
    untimed = WorkerCounters()
    _account(untimed, 200, 5, "GET", 0)
    assert (untimed.requests, sum(untimed.methods), sum(untimed.latency), untimed.duration_ns) == (1, 0, 0, 0)


def test_a_refusal_counts_as_a_response_but_is_neither_timed_nor_a_method() -> None:
    counters = WorkerCounters.timing((1.0,))
    RequestLedger(counters).finished(Refusal(431))
    assert (counters.requests, counters.responses, counters.method_counts(), sum(counters.latency)) == (
        1,
        [0, 0, 0, 1, 0],
        [0] * len(METHODS),
        0,
    )


def test_published_method_counts_include_the_derived_gets(board: Scoreboard) -> None:
    counters = WorkerCounters.timing((1.0,))
    for method in ("GET", "GET", "POST", "GET", "OPTIONS"):
        _account(counters, 200, 0, method, time.perf_counter_ns())
    board.slot(0).publish(counters, 1.0, 0)
    assert board.slot(0).read().methods == (3, 0, 1, 0, 0, 0, 1, 0)


def test_a_bucket_bound_belongs_to_its_own_bucket_as_prometheus_le_says() -> None:
    counters = WorkerCounters.timing((0.001,))
    start = time.perf_counter_ns()
    counters.latency_bounds_ns = (10**18,)  # a bound no real elapsed time reaches
    _account(counters, 200, 0, "GET", start)
    assert counters.latency[0] == 1


def test_master_header_round_trips(board: Scoreboard) -> None:
    board.set_master(1234, MasterState.RUNNING, 3)
    assert board.read_master() == (1234, MasterState.RUNNING, 3, False)
    header = board.read_master()
    assert (header.pid, header.state, header.generation, header.draining) == (1234, MasterState.RUNNING, 3, False)


@pytest.mark.parametrize("state", [MasterState.DRAINING, MasterState.STOPPING])
def test_master_draining_follows_a_draining_or_stopping_state(board: Scoreboard, state: MasterState) -> None:
    board.set_master(1, state, 1)
    assert board.read_master().draining


def test_master_draining_can_be_set_explicitly(board: Scoreboard) -> None:
    board.set_master(1, MasterState.RUNNING, 1, draining=True)
    assert board.read_master().draining
    board.set_master(1, MasterState.DRAINING, 1, draining=False)
    assert not board.read_master().draining


# -- misuse ------------------------------------------------------------------------------------------


def test_a_scoreboard_needs_at_least_one_slot() -> None:
    with pytest.raises(ValueError, match="at least one slot"):
        Scoreboard(0)


@pytest.mark.parametrize("index", [-1, 4])
def test_a_slot_outside_the_board_is_an_index_error(board: Scoreboard, index: int) -> None:
    with pytest.raises(IndexError):
        board.slot(index)


def test_a_closed_scoreboard_refuses_reads_and_writes() -> None:
    board = Scoreboard(1)
    slot = board.slot(0)
    board.close()
    with pytest.raises(ValueError):
        slot.read()
    with pytest.raises((ValueError, TypeError)):
        slot.beat(1.0)


def test_slots_lists_every_slot_in_order(board: Scoreboard) -> None:
    assert [slot.index for slot in board.slots()] == [0, 1, 2, 3]


# -- worker counters ---------------------------------------------------------------------------------


def test_worker_counters_are_plain_slotted_attributes_with_their_own_response_list() -> None:
    first, second = WorkerCounters(), WorkerCounters()
    first.responses[1] += 1
    first.requests += 1
    assert second.responses == [0, 0, 0, 0, 0]
    assert not hasattr(first, "__dict__")
    with pytest.raises(AttributeError):
        first.typo = 1  # type: ignore[attr-defined]


def test_snapshots_are_frozen(board: Scoreboard) -> None:
    snap = board.slot(0).read()
    with pytest.raises(AttributeError):
        snap.pid = 1  # type: ignore[misc]


# -- torn reads --------------------------------------------------------------------------------------


def test_a_torn_write_reads_as_a_mix_of_whole_old_and_new_fields(board: Scoreboard) -> None:
    publish_all(board, 0, 1)
    publish_all(board, 1, 2)
    mm = board._mm
    old_base, new_base = HEADER_SIZE, HEADER_SIZE + SLOT_SIZE
    old_block = mm[old_base + HEARTBEAT_OFFSET : old_base + PUBLISH_END]
    # The published fields, in layout order, around the reserved gap before the histogram.
    offsets = [*range(HEARTBEAT_OFFSET, 208, 8), *range(LATENCY_OFFSET, PUBLISH_END, 8)]
    assert len(offsets) == PUBLISHED_FIELDS
    rng = random.Random(7)
    # A copy may land its 8-byte words in any order: try every single field, then many random subsets.
    subsets = [1 << field for field in range(len(offsets))] + [rng.getrandbits(len(offsets)) for _ in range(500)]
    for written in subsets:
        mm[old_base + HEARTBEAT_OFFSET : old_base + PUBLISH_END] = old_block
        for field, at in enumerate(offsets):
            if written >> field & 1:
                mm[old_base + at : old_base + at + 8] = mm[new_base + at : new_base + at + 8]
        snap = board.slot(0).read()
        in_layout_order = [
            snap.heartbeat,
            snap.requests,
            *snap.responses,
            snap.active_requests,
            snap.active_connections,
            snap.bytes_in,
            snap.bytes_out,
            snap.websockets,
            snap.rss,
            *snap.methods,
            snap.duration_ns,
            *snap.latency,
        ]
        assert in_layout_order == [2 if written >> field & 1 else 1 for field in range(len(offsets))]


def test_reading_never_fails_whatever_the_bytes(board: Scoreboard) -> None:
    rng = random.Random(3)
    base = HEADER_SIZE + SLOT_SIZE
    patterns = [b"\xff" * SLOT_SIZE, *(rng.randbytes(SLOT_SIZE) for _ in range(200))]
    for pattern in patterns:
        board._mm[base : base + SLOT_SIZE] = pattern
        board._mm[12:32] = pattern[:20]
        board._mm[32:HEADER_SIZE] = (pattern * 2)[: HEADER_SIZE - 32]
        board._mm[64:72] = bytes(8)  # the retired sequence even: no release in progress
        snap = board.slot(1).read()
        assert isinstance(snap.state, WorkerState)
        assert isinstance(snap.start_reason, RestartReason)
        assert isinstance(board.slot(1).state, WorkerState)
        assert isinstance(board.read_master().state, MasterState)
        assert board.free_slot() in (0, 1, 2, 3)
        read = board.read_board()
        assert isinstance(read.master.state, MasterState)
        assert len(read.latency_bounds) < LATENCY_BUCKETS and len(read.listeners) <= 16


# -- across processes --------------------------------------------------------------------------------


def test_a_forked_worker_writes_its_slot_and_the_master_reads_it(board: Scoreboard) -> None:
    slot = board.slot(1)
    slot.claim(0, 4, time.monotonic())

    def worker() -> None:
        slot.set_state(WorkerState.READY, time.monotonic())
        counters = WorkerCounters(requests=3, responses=[0, 2, 0, 1, 0], bytes_in=300, bytes_out=900)
        slot.publish(counters, time.monotonic(), 12345)
        slot.request_retirement()

    before = time.monotonic()
    pid = run_in_child(worker)
    assert wait_child(pid) == 0

    snap = slot.read()
    assert (snap.state, snap.generation, snap.retire_requested) == (WorkerState.READY, 4, True)
    assert (snap.requests, snap.responses, snap.bytes_in, snap.bytes_out, snap.rss) == (
        3,
        (0, 2, 0, 1, 0),
        300,
        900,
        12345,
    )
    # CLOCK_MONOTONIC is shared by every process, so the child's times are comparable with ours.
    assert before <= snap.ready_at <= snap.heartbeat <= time.monotonic()


def test_a_forked_child_sees_the_master_header(board: Scoreboard) -> None:
    board.set_master(os.getpid(), MasterState.RUNNING, 2)
    parent = os.getpid()

    def child() -> None:
        if board.read_master() != (parent, MasterState.RUNNING, 2, False):
            raise AssertionError(board.read_master())

    assert wait_child(run_in_child(child)) == 0


def test_two_processes_writing_adjacent_slots_do_not_disturb_each_other(board: Scoreboard) -> None:
    rounds = 20_000
    for index in (0, 1):
        board.slot(index).claim(0, 1, 0.0)
        publish_all(board, index, index)  # so that even a torn first publish shows only its writer's parity

    def writer(index: int) -> Callable[[], None]:
        """Slot 0 gets only even values, slot 1 only odd ones."""

        def work() -> None:
            slot = board.slot(index)
            counters = WorkerCounters()
            for i in range(rounds):
                value = 2 * i + index
                set_all(counters, value)
                slot.publish(counters, float(value), value)
                if i % 1000 == 0 and index == 1:
                    slot.request_retirement()
                elif i % 1000 == 0:
                    slot.set_state(WorkerState.READY, float(value))

        return work

    even = run_in_child(writer(0))
    odd = run_in_child(writer(1))
    exit_codes: dict[int, int] = {}
    try:
        # Read both slots while the two children write them: each slot only ever holds its writer's parity.
        for _ in range(200_000):
            for index in (0, 1):
                snap = board.slot(index).read()
                assert {int(value) % 2 for value in published_values(snap)} == {index}
            if all([reap_if_exited(even, exit_codes), reap_if_exited(odd, exit_codes)]):
                break
    finally:
        assert finish([even, odd], exit_codes) == [0, 0]

    last = 2 * (rounds - 1)
    assert published_values(board.slot(0).read()) == [last] * PUBLISHED_FIELDS
    assert published_values(board.slot(1).read()) == [last + 1] * PUBLISHED_FIELDS
    assert (board.slot(0).state, board.slot(0).retire_requested) == (WorkerState.READY, False)
    assert (board.slot(1).state, board.slot(1).retire_requested) == (WorkerState.BOOTING, True)
    assert board.slot(2).read().state is WorkerState.EMPTY


def test_a_read_racing_the_worker_sees_only_values_it_wrote_never_a_transient_zero(board: Scoreboard) -> None:
    rounds = 50_000
    slot = board.slot(0)
    slot.claim(0, 1, 1.0)
    slot.set_state(WorkerState.READY, 1.0)
    publish_all(board, 0, 1)

    def writer() -> None:
        counters = counters_all(1)
        for i in range(2, rounds + 1):
            set_all(counters, i)
            if i % 100 == 0:
                slot.set_state(WorkerState.READY, 1.0)
            slot.publish(counters, float(i), i)
            slot.beat(float(i))

    pid = run_in_child(writer)
    exit_codes: dict[int, int] = {}
    try:
        for _ in range(500_000):
            snap = slot.read()
            # Fields of consecutive writes may mix, but each one is a value that was written: in particular
            # the heartbeat never reads 0.0 in the middle of a write (the master would take that for a hang).
            assert all(value == int(value) and 1 <= value <= rounds for value in published_values(snap))
            assert (snap.state, snap.ready_at) == (WorkerState.READY, 1.0)
            assert slot.heartbeat >= 1.0
            if reap_if_exited(pid, exit_codes):
                break
    finally:
        assert finish([pid], exit_codes) == [0]
    assert published_values(slot.read()) == [rounds] * PUBLISHED_FIELDS


def test_a_release_left_half_done_by_a_dead_master_does_not_hang_readers(board: Scoreboard) -> None:
    board.slot(0).claim(1, 1, 0.0)
    board.slot(0).publish(WorkerCounters(requests=3), 0.0, 0)
    board._mm[64:72] = struct.pack("<Q", 1)  # odd: a release began and never ended
    assert board.read_board().totals().requests == 3


def test_a_board_read_racing_releases_never_counts_a_worker_twice_or_not_at_all(board: Scoreboard) -> None:
    """The master releases and reclaims slots of workers that each served 10 requests; whatever moment a
    reader picks, the pool's total is a multiple of 10 and never goes back."""
    rounds = 3000
    for index in range(4):
        board.slot(index).claim(1, 1, 0.0)
        board.slot(index).publish(WorkerCounters(requests=10), 0.0, 0)

    def master() -> None:
        for i in range(rounds):
            slot = board.slot(i % 4)
            slot.release()
            slot.claim(2 + i, 1, 0.0)
            slot.publish(WorkerCounters(requests=10), 0.0, 0)

    pid = run_in_child(master)
    exit_codes: dict[int, int] = {}
    previous = 0
    try:
        for _ in range(200_000):
            total = board.read_board().totals().requests
            assert total % 10 == 0 and total >= previous, (total, previous)
            previous = total
            if reap_if_exited(pid, exit_codes):
                break
    finally:
        assert finish([pid], exit_codes) == [0]
    assert board.read_board().totals().requests == 10 * (4 + rounds)
