"""The scoreboard: one shared anonymous mmap, created by the master before it forks, in which each worker
publishes its state, heartbeat and counters in a fixed slot, and the master keeps a header.

No locks and no messages: each slot has exactly one writer at a time (the master while it claims or
releases the slot, the worker while it runs), and readers accept torn reads (see below).

Byte layout, version 2 (little-endian, every multi-byte field naturally aligned)
--------------------------------------------------------------------------------
Header, 1024 bytes at offset 0, written by the master::

    off  size  type      field
      0     4  4s        magic b"CRSB"
      4     2  u16       layout version (2)
      6     2  u16       slot size in bytes (512)
      8     4  u32       number of slots
     12     4  u32       master pid
     16     1  u8        master state (MasterState)
     17     1  u8        draining flag (0/1): readiness answers 503
     18     6            reserved
     24     8  u64       reload generation
     32     8  f64       master heartbeat: written on every turn of the master's loop
     40     8  f64       master started (monotonic)
     48     8  f64       master started (Unix time)
     56     4  u32       target number of workers
     60     1  u8        number of latency bucket bounds (at most 15)
     61     1  u8        request metrics on (0/1): workers time requests and count their methods
     62     2            reserved
     64     8  u64       retired sequence: odd while the master folds a released slot into the retired totals
     72     8  f64       crash loop until (monotonic): workers serve one connection at a time until then
     80   120  f64 x 15  latency bucket upper bounds, seconds, ascending (the 16th bucket is +Inf)
    200     8  u64       master log lines dropped: its log output (a pipe) was full and not being read
    208   128  u64 x 16  worker restarts by reason (RestartReason)
    336   128  u32 x 32  listen queues: (depth, limit) per listener, 0xFFFFFFFF when unknown
    464     4  u32       number of listeners sampled (at most 16)
    468    44            reserved
    512   264  u64 x 33  retired totals: the counters of every worker gone so far, in the order of the
                         slot's totals (requests, responses 1xx..5xx, bytes in, bytes out, requests by
                         method, duration sum, latency buckets)
    776   248            reserved

Slot i, 512 bytes at offset 1024 + i * 512 (a multiple of 64, so no two slots share a cache line)::

    off  size  type     field                 written by
      0     4  u32      pid                   master (claim/release)
      4     1  u8       state (WorkerState)   master (claim/release), worker (set_state)
      5     1  u8       retire_requested      worker (request_retirement)
      6     1  u8       start reason          master (claim): why this worker was started (RestartReason)
      7     1           reserved
      8     8  u64      generation            master (claim)
     16     8  f64      started               master (claim)
     24     8  f64      ready_at              worker (set_state READY); 0.0 until then
     32     8  f64      heartbeat             master (claim), worker (beat/set_state/publish)
     40     8  u64      requests              worker (publish) ─┐
     48    40  u64 x 5  responses 1xx..5xx                       │
     88     8  i64      active_requests                          │
     96     8  i64      active_connections                       │
    104     8  u64      bytes_in                                 │ publish() writes
    112     8  u64      bytes_out                                │ heartbeat .. latency
    120     8  i64      websockets                               │ at once
    128     8  u64      rss (bytes)                              │
    136    64  u64 x 8  requests by method (METHODS)             │
    200     8  u64      duration sum (nanoseconds)               │
    208    48           reserved                                 │
    256   128  u64 x 16 latency histogram buckets (not cumul.)  ─┘
    384   128           reserved

Times are time.monotonic() seconds (CLOCK_MONOTONIC, the same clock in every process).

Widths: totals are u64 (a worker serving 10^9 requests a second would need 584 years to wrap one); gauges
(active requests and connections, websockets) are i64 so a transient miscount can never make
publish() fail; pids are u32 (Linux caps them at 2^22).

Torn reads: a reader may run while a writer is half way through a write, and then sees some fields of the
previous write and some of the new one. Writers never use struct.pack_into on the mapping: it zero-fills
its destination before packing the fields, so a racing reader would see transient zeros (a heartbeat of
0.0, a worker silent since boot). Each write packs into private bytes and copies them in with one slice
assignment (a memcpy); every field is 8-byte aligned, so in practice each field reads whole, old or new.
Decoding never fails whatever the bytes (an unknown state byte reads as EMPTY / STARTING). The state byte
is written last (after ready_at and heartbeat), so a reader that sees READY also sees the READY time and
a fresh heartbeat.

Totals that never go back: every total only grows while its worker lives, and when the master releases the
slot of a worker that is gone it adds the slot's totals to the header's retired totals and zeroes them, with
the retired sequence odd meanwhile. `Scoreboard.read_board()` copies the mapping and retries while the
sequence was odd or moved, so the sum "retired + live slots" it reports never counts a worker twice or not
at all, and stays monotonic across worker replacements (Prometheus takes any decrease for a reset).
"""

from __future__ import annotations

import itertools
import mmap
import struct
import time
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from corral.core.contract import MasterState, RestartReason, WorkerState

__all__ = [
    "DEFAULT_LATENCY_BOUNDS",
    "GET",
    "HEADER_SIZE",
    "LATENCY_BUCKETS",
    "LATENCY_OFFSET",
    "MAX_LISTENERS",
    "METHODS",
    "METHOD_INDEX",
    "OTHER_METHOD",
    "SLOT_SIZE",
    "BoardSnapshot",
    "ListenQueue",
    "MasterHeader",
    "MasterSnapshot",
    "MasterState",
    "RestartReason",
    "Scoreboard",
    "Slot",
    "SlotSnapshot",
    "Totals",
    "WorkerCounters",
    "WorkerState",
    "check_latency_bounds",
]


# Request methods counted one by one; everything else is "other". A fixed set: labels must stay bounded.
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other")
METHOD_INDEX: dict[str, int] = {name: index for index, name in enumerate(METHODS[:-1])}
OTHER_METHOD = len(METHODS) - 1
GET = METHODS[0]  # not counted request by request: see WorkerCounters

MAGIC = b"CRSB"
LAYOUT_VERSION = 2
HEADER_SIZE = 1024
SLOT_SIZE = 512
LATENCY_OFFSET = 256  # within a slot: the 16 u64 latency buckets
LATENCY_BUCKETS = 16  # the last one is +Inf, so at most 15 finite bounds
MAX_LISTENERS = 16
RESTART_REASONS = 16  # room in the header; RestartReason uses the first few
# Upper bounds (seconds) of the request duration histogram; a server that answers in tens of microseconds
# needs the sub-millisecond ones, a slow upstream the long ones.
DEFAULT_LATENCY_BOUNDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_UNKNOWN_QUEUE = 0xFFFF_FFFF
_READ_ATTEMPTS = 1000

# Header structs (offsets from the start of the mapping).
_HEADER_IDENTITY = struct.Struct("<4sHHI")  # magic, version, slot size, slot count at 0
_MASTER = struct.Struct("<IBB6xQ")  # pid, state, draining, generation at 12
_MASTER_OFFSET = 12
_MASTER_END = _MASTER_OFFSET + _MASTER.size
_MASTER_EXTRA = struct.Struct("<dddIBB2x")  # heartbeat, started, started (Unix), target, bounds, timed at 32
_MASTER_EXTRA_OFFSET = 32
_MASTER_HEARTBEAT_OFFSET = 32
_TARGET_OFFSET = 56
_BOUND_COUNT_OFFSET = 60
_TIMED_OFFSET = 61
_SEQ_OFFSET = 64
_CRASH_LOOP_OFFSET = 72
_BOUNDS_OFFSET = 80
_LOG_DROPPED_OFFSET = 200
_RESTARTS_OFFSET = 208
_QUEUES_OFFSET = 336
_QUEUE_COUNT_OFFSET = 464
_RETIRED_OFFSET = 512
_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")
_BOUNDS = struct.Struct(f"<{LATENCY_BUCKETS - 1}d")
_RESTARTS = struct.Struct(f"<{RESTART_REASONS}Q")
_QUEUES = struct.Struct(f"<{2 * MAX_LISTENERS}I")
_TOTAL_FIELDS = 1 + 5 + 2 + len(METHODS) + 1 + LATENCY_BUCKETS
_TOTALS = struct.Struct(f"<{_TOTAL_FIELDS}Q")

# Slot structs (offsets from the start of the slot).
_CLAIM = struct.Struct("<IBBBxQddd")  # pid .. heartbeat at 0
_RELEASE = struct.Struct("<IB")  # pid, state at 0
_PID = struct.Struct("<I")
_STATE_OFFSET = 4
_RETIRE_OFFSET = 5
_REASON_OFFSET = 6
_TIME = struct.Struct("<d")
_HEARTBEAT_OFFSET = 32
_HEARTBEAT_END = _HEARTBEAT_OFFSET + _TIME.size
_READY_AT_AND_HEARTBEAT = struct.Struct("<dd")  # ready_at, heartbeat at 24
_READY_AT_OFFSET = 24
_PUBLISH = struct.Struct(f"<dQ5QqqQQqQ{len(METHODS)}QQ48x{LATENCY_BUCKETS}Q")  # heartbeat .. latency at 32
_PUBLISH_END = _HEARTBEAT_OFFSET + _PUBLISH.size
_READ = struct.Struct(f"<IBBBxQdddQ5QqqQQqQ{len(METHODS)}QQ48x{LATENCY_BUCKETS}Q")  # pid .. latency at 0
# The totals of a slot, in two pieces around the reserved gap: requests .. bytes_out with the gauges
# between them, and methods .. latency.
_COUNTS_OFFSET = 40
_COUNTS_END = 384

_WORKER_STATES = tuple(WorkerState)
_MASTER_STATES = tuple(MasterState)
_REASONS = tuple(RestartReason)

assert _PUBLISH_END == _READ.size == _COUNTS_END == LATENCY_OFFSET + 8 * LATENCY_BUCKETS <= SLOT_SIZE
assert _READY_AT_OFFSET + _READY_AT_AND_HEARTBEAT.size == _HEARTBEAT_END
assert _MASTER_END <= _MASTER_EXTRA_OFFSET and _MASTER_EXTRA_OFFSET + _MASTER_EXTRA.size <= _SEQ_OFFSET
assert _SEQ_OFFSET + 8 == _CRASH_LOOP_OFFSET and _CRASH_LOOP_OFFSET + 8 <= _BOUNDS_OFFSET
assert _BOUNDS_OFFSET + _BOUNDS.size <= _RESTARTS_OFFSET
assert _RESTARTS_OFFSET + _RESTARTS.size == _QUEUES_OFFSET
assert _QUEUES_OFFSET + _QUEUES.size == _QUEUE_COUNT_OFFSET
assert _RETIRED_OFFSET + _TOTALS.size <= HEADER_SIZE
assert len(DEFAULT_LATENCY_BOUNDS) < LATENCY_BUCKETS


def _worker_state(value: int) -> WorkerState:
    return _WORKER_STATES[value] if value < len(_WORKER_STATES) else WorkerState.EMPTY


def _master_state(value: int) -> MasterState:
    return _MASTER_STATES[value] if value < len(_MASTER_STATES) else MasterState.STARTING


def _reason(value: int) -> RestartReason:
    return _REASONS[value] if value < len(_REASONS) else RestartReason.START


def _zero_responses() -> list[int]:
    return [0, 0, 0, 0, 0]


def _zero_methods() -> list[int]:
    return [0] * len(METHODS)


def _zero_latency() -> list[int]:
    return [0] * LATENCY_BUCKETS


def check_latency_bounds(bounds: Any) -> tuple[float, ...]:
    """The bounds as a tuple of floats, or ValueError: 1 to 15 finite, positive, strictly ascending seconds."""
    values = tuple(float(bound) for bound in bounds)
    if not 1 <= len(values) < LATENCY_BUCKETS:
        raise ValueError(f"expected 1 to {LATENCY_BUCKETS - 1} bucket bounds, got {len(values)}")
    for value in values:
        if not 0 < value < float("inf"):
            raise ValueError(f"bucket bounds must be positive, finite seconds, got {value!r}")
    if any(later <= earlier for earlier, later in itertools.pairwise(values)):
        raise ValueError("bucket bounds must be strictly ascending")
    return values


@dataclass(slots=True)
class WorkerCounters:
    """A worker's own counters, bumped with plain int operations on the request path and published by the tick.

    `responses[status // 100 - 1]` counts responses by class (1xx..5xx). When `timed`, each request's
    duration goes into `latency[bisect_left(latency_bounds_ns, ns)]` and `duration_ns`, and its method, unless
    it is GET, into `methods[METHOD_INDEX.get(method, OTHER_METHOD)]`. GET, most requests, is the timed
    requests less the others: `method_counts()` fills it in, which saves every GET a lookup.
    """

    requests: int = 0
    responses: list[int] = field(default_factory=_zero_responses)
    active_requests: int = 0
    active_connections: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    websockets: int = 0
    methods: list[int] = field(default_factory=_zero_methods)
    duration_ns: int = 0
    latency: list[int] = field(default_factory=_zero_latency)
    timed: bool = False  # the request metrics are on: time every request and count its method
    latency_bounds_ns: tuple[int, ...] = ()

    def method_counts(self) -> list[int]:
        """Requests by method (METHODS order), GET included."""
        counts = list(self.methods)
        if self.timed:
            counts[0] = sum(self.latency) - sum(counts[1:])
        return counts

    @classmethod
    def timing(cls, bounds: tuple[float, ...]) -> WorkerCounters:
        """Counters that time requests into a histogram with these upper bounds (seconds)."""
        return cls(timed=True, latency_bounds_ns=tuple(round(bound * 1e9) for bound in check_latency_bounds(bounds)))

    @classmethod
    def for_worker(cls, request_metrics: bool, slot: Slot | None) -> WorkerCounters:
        """A worker's counters, as the master configured the request metrics when it started (in the
        scoreboard's header, so that every worker's buckets mean the same whatever a reload changed);
        from the request_metrics setting for a worker without a slot."""
        if slot is not None:
            timed, bounds = slot.request_metrics()
        else:
            timed, bounds = request_metrics, DEFAULT_LATENCY_BOUNDS
        return cls.timing(bounds or DEFAULT_LATENCY_BOUNDS) if timed else cls()


@dataclass(frozen=True, slots=True)
class SlotSnapshot:
    """One read of a slot. Times are monotonic seconds; ready_at is 0.0 until the worker is READY."""

    index: int
    pid: int
    generation: int
    state: WorkerState
    started: float
    ready_at: float
    heartbeat: float
    requests: int
    responses: tuple[int, int, int, int, int]
    active_requests: int
    active_connections: int
    bytes_in: int
    bytes_out: int
    rss: int
    websockets: int
    retire_requested: bool
    start_reason: RestartReason = RestartReason.START
    methods: tuple[int, ...] = (0,) * len(METHODS)
    duration_ns: int = 0
    latency: tuple[int, ...] = (0,) * LATENCY_BUCKETS


@dataclass(frozen=True, slots=True)
class Totals:
    """Counters that only grow: of one slot, of the retired workers, or of the whole pool."""

    requests: int = 0
    responses: tuple[int, ...] = (0,) * 5
    bytes_in: int = 0
    bytes_out: int = 0
    methods: tuple[int, ...] = (0,) * len(METHODS)
    duration_ns: int = 0
    latency: tuple[int, ...] = (0,) * LATENCY_BUCKETS

    @classmethod
    def of(cls, snap: SlotSnapshot) -> Totals:
        return cls(
            snap.requests, snap.responses, snap.bytes_in, snap.bytes_out, snap.methods, snap.duration_ns, snap.latency
        )

    @classmethod
    def unpack(cls, values: tuple[int, ...]) -> Totals:
        methods_end = 8 + len(METHODS)
        return cls(
            values[0],
            tuple(values[1:6]),
            values[6],
            values[7],
            tuple(values[8:methods_end]),
            values[methods_end],
            tuple(values[methods_end + 1 :]),
        )

    def pack(self) -> bytes:
        return _TOTALS.pack(
            self.requests,
            *self.responses,
            self.bytes_in,
            self.bytes_out,
            *self.methods,
            self.duration_ns,
            *self.latency,
        )

    def __add__(self, other: Totals) -> Totals:
        return Totals(
            self.requests + other.requests,
            tuple(a + b for a, b in zip(self.responses, other.responses, strict=True)),
            self.bytes_in + other.bytes_in,
            self.bytes_out + other.bytes_out,
            tuple(a + b for a, b in zip(self.methods, other.methods, strict=True)),
            self.duration_ns + other.duration_ns,
            tuple(a + b for a, b in zip(self.latency, other.latency, strict=True)),
        )


class MasterHeader(NamedTuple):
    pid: int
    state: MasterState
    generation: int
    draining: bool


@dataclass(frozen=True, slots=True)
class MasterSnapshot:
    """The master's part of the header. Times are monotonic seconds, except started_unix."""

    pid: int
    state: MasterState
    generation: int
    draining: bool
    heartbeat: float
    started: float
    started_unix: float
    target: int


class ListenQueue(NamedTuple):
    """A listener's accept queue: connections waiting to be accepted, and the most the kernel will queue."""

    depth: int
    limit: int


@dataclass(frozen=True, slots=True)
class BoardSnapshot:
    """One consistent read of the whole scoreboard (see `Scoreboard.read_board`)."""

    master: MasterSnapshot
    slots: tuple[SlotSnapshot, ...]  # every slot, EMPTY ones included
    retired: Totals
    restarts: tuple[int, ...]  # indexed by RestartReason
    listeners: tuple[ListenQueue | None, ...]  # per listener, None when unknown
    latency_bounds: tuple[float, ...]
    request_metrics: bool  # workers time requests and count their methods
    crash_loop_until: float  # monotonic: workers serve one connection at a time until then
    log_lines_dropped: int  # master log lines dropped since start (its output was full)

    def crash_looping(self, now: float) -> bool:
        """The master has declared a crash loop that is still on (workers serve one connection at a time)."""
        return self.crash_loop_until > now

    @property
    def workers(self) -> tuple[SlotSnapshot, ...]:
        """The slots that hold a worker."""
        return tuple(snap for snap in self.slots if snap.state is not WorkerState.EMPTY)

    def totals(self) -> Totals:
        """The whole pool's totals since the master started: retired workers plus the living ones."""
        total = self.retired
        for snap in self.workers:
            total = total + Totals.of(snap)
        return total


def _unpack_slot(data: Any, offset: int, index: int) -> SlotSnapshot:
    (
        pid,
        state,
        retire,
        reason,
        generation,
        started,
        ready_at,
        heartbeat,
        requests,
        r1,
        r2,
        r3,
        r4,
        r5,
        active_requests,
        active_connections,
        bytes_in,
        bytes_out,
        websockets,
        rss,
        *rest,
    ) = _READ.unpack_from(data, offset)
    methods_end = len(METHODS)
    return SlotSnapshot(
        index=index,
        pid=pid,
        generation=generation,
        state=_worker_state(state),
        started=started,
        ready_at=ready_at,
        heartbeat=heartbeat,
        requests=requests,
        responses=(r1, r2, r3, r4, r5),
        active_requests=active_requests,
        active_connections=active_connections,
        bytes_in=bytes_in,
        bytes_out=bytes_out,
        rss=rss,
        websockets=websockets,
        retire_requested=bool(retire),
        start_reason=_reason(reason),
        methods=tuple(rest[:methods_end]),
        duration_ns=rest[methods_end],
        latency=tuple(rest[methods_end + 1 :]),
    )


def _read_bounds(data: Any) -> tuple[float, ...]:
    count = min(data[_BOUND_COUNT_OFFSET], LATENCY_BUCKETS - 1)
    return _BOUNDS.unpack_from(data, _BOUNDS_OFFSET)[:count]


class Slot:
    """A view of one worker's slot; cheap to create, holds no state of its own besides where the slot is."""

    __slots__ = ("_buf", "_heartbeat", "_offset", "_publish", "index")

    def __init__(self, buf: mmap.mmap, index: int) -> None:
        self._buf = buf
        self.index = index
        self._offset = offset = HEADER_SIZE + index * SLOT_SIZE
        # Where the hot writes go, precomputed: (start, end) within the mapping.
        self._heartbeat = (offset + _HEARTBEAT_OFFSET, offset + _HEARTBEAT_END)
        self._publish = (offset + _HEARTBEAT_OFFSET, offset + _PUBLISH_END)

    def __repr__(self) -> str:
        return f"<Slot {self.index} pid={self.pid} state={self.state.name}>"

    # -- master side ---------------------------------------------------------------------------------

    def claim(self, pid: int, generation: int, now: float, reason: RestartReason | None = None) -> None:
        """Give the slot to a new worker: every field zeroed, state BOOTING, started = heartbeat = now.

        `reason` records why the worker is started; None keeps the one recorded (the worker claims its slot
        again after fork, and must not lose what the master wrote).
        """
        if reason is None:
            reason = _reason(self._buf[self._offset + _REASON_OFFSET])
        image = bytearray(SLOT_SIZE)
        _CLAIM.pack_into(image, 0, pid, WorkerState.BOOTING, 0, reason, generation, now, 0.0, now)
        self._buf[self._offset : self._offset + SLOT_SIZE] = image

    def release(self) -> None:
        """Mark the slot free (state EMPTY, pid 0), its worker gone: its totals move to the header's retired
        totals, so the pool's totals never go back (see the module docstring)."""
        buf, offset = self._buf, self._offset
        seq = _U64.unpack_from(buf, _SEQ_OFFSET)[0]
        buf[_SEQ_OFFSET : _SEQ_OFFSET + 8] = _U64.pack(seq + 1)  # odd: readers retry
        retired = Totals.unpack(_TOTALS.unpack_from(buf, _RETIRED_OFFSET))
        mine = Totals.of(_unpack_slot(buf, offset, self.index))
        buf[_RETIRED_OFFSET : _RETIRED_OFFSET + _TOTALS.size] = (retired + mine).pack()
        buf[offset + _COUNTS_OFFSET : offset + _COUNTS_END] = bytes(_COUNTS_END - _COUNTS_OFFSET)
        buf[offset : offset + _RELEASE.size] = _RELEASE.pack(0, WorkerState.EMPTY)
        buf[_SEQ_OFFSET : _SEQ_OFFSET + 8] = _U64.pack(seq + 2)

    # -- worker side ---------------------------------------------------------------------------------

    def set_state(self, state: WorkerState, now: float) -> None:
        """Record a state change; it is also a heartbeat, and READY records ready_at."""
        buf, offset = self._buf, self._offset
        # ready_at and heartbeat first, the state byte last: whoever sees the new state sees them too.
        # A long boot would otherwise leave a stale heartbeat that the master could take for a hang.
        if state == WorkerState.READY:
            buf[offset + _READY_AT_OFFSET : offset + _HEARTBEAT_END] = _READY_AT_AND_HEARTBEAT.pack(now, now)
        else:
            start, end = self._heartbeat
            buf[start:end] = _TIME.pack(now)
        buf[offset + _STATE_OFFSET] = state

    def beat(self, now: float) -> None:
        """Write the heartbeat only."""
        start, end = self._heartbeat
        self._buf[start:end] = _TIME.pack(now)

    def publish(self, counters: WorkerCounters, now: float, rss: int) -> None:
        """Write the heartbeat, every counter and the RSS: one pack, one copy into the mapping."""
        responses = counters.responses
        start, end = self._publish
        self._buf[start:end] = _PUBLISH.pack(
            now,
            counters.requests,
            responses[0],
            responses[1],
            responses[2],
            responses[3],
            responses[4],
            counters.active_requests,
            counters.active_connections,
            counters.bytes_in,
            counters.bytes_out,
            counters.websockets,
            rss,
            *counters.method_counts(),
            counters.duration_ns,
            *counters.latency,
        )

    def request_retirement(self) -> None:
        """Ask the master to replace this worker (e.g. max_requests reached); the claim of a successor clears it."""
        self._buf[self._offset + _RETIRE_OFFSET] = 1

    def crash_loop_until(self) -> float:
        """Until when (monotonic seconds) the pool is crash-looping, as the master last declared it; 0.0 if never."""
        until: float = _TIME.unpack_from(self._buf, _CRASH_LOOP_OFFSET)[0]
        return until

    def request_metrics(self) -> tuple[bool, tuple[float, ...]]:
        """Whether requests are timed, and the histogram's bucket bounds (seconds): what the master wrote into
        the header of this slot's board."""
        return bool(self._buf[_TIMED_OFFSET]), _read_bounds(self._buf)

    # -- readers -------------------------------------------------------------------------------------

    def read(self) -> SlotSnapshot:
        """Every field in one unpack_from (see the module docstring about torn reads)."""
        return _unpack_slot(self._buf, self._offset, self.index)

    @property
    def pid(self) -> int:
        pid: int = _PID.unpack_from(self._buf, self._offset)[0]
        return pid

    @property
    def state(self) -> WorkerState:
        return _worker_state(self._buf[self._offset + _STATE_OFFSET])

    @property
    def heartbeat(self) -> float:
        heartbeat: float = _TIME.unpack_from(self._buf, self._heartbeat[0])[0]
        return heartbeat

    @property
    def retire_requested(self) -> bool:
        return self._buf[self._offset + _RETIRE_OFFSET] != 0

    @property
    def start_reason(self) -> RestartReason:
        return _reason(self._buf[self._offset + _REASON_OFFSET])


class Scoreboard:
    """The shared mapping: a header owned by the master and `slots` worker slots. Create it before forking."""

    def __init__(self, slots: int) -> None:
        if not 1 <= slots <= 0xFFFF_FFFF:
            raise ValueError(f"a scoreboard needs at least one slot, got {slots}")
        self.size = HEADER_SIZE + slots * SLOT_SIZE
        # Anonymous and MAP_SHARED: the pages start zeroed (every slot EMPTY) and stay shared across fork.
        self._mm = mmap.mmap(-1, self.size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        _HEADER_IDENTITY.pack_into(self._mm, 0, MAGIC, LAYOUT_VERSION, SLOT_SIZE, slots)
        self._slots = [Slot(self._mm, index) for index in range(slots)]
        self.configure_request_metrics(False, DEFAULT_LATENCY_BOUNDS)

    def __len__(self) -> int:
        return len(self._slots)

    def __enter__(self) -> Scoreboard:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def slot(self, index: int) -> Slot:
        if not 0 <= index < len(self._slots):
            raise IndexError(f"no scoreboard slot {index} (there are {len(self._slots)})")
        return self._slots[index]

    def slots(self) -> list[Slot]:
        return list(self._slots)

    def snapshot(self) -> list[SlotSnapshot]:
        return [slot.read() for slot in self._slots]

    def free_slot(self) -> int | None:
        """The index of the first EMPTY slot, or None when every slot is taken."""
        for slot in self._slots:
            if slot.state is WorkerState.EMPTY:
                return slot.index
        return None

    # -- master side ---------------------------------------------------------------------------------

    def set_master(self, pid: int, state: MasterState, generation: int, *, draining: bool | None = None) -> None:
        """Write the master's header in one copy; draining defaults to state DRAINING or STOPPING."""
        if draining is None:
            draining = state in (MasterState.DRAINING, MasterState.STOPPING)
        self._mm[_MASTER_OFFSET:_MASTER_END] = _MASTER.pack(pid, state, draining, generation)

    def read_master(self) -> MasterHeader:
        pid, state, draining, generation = _MASTER.unpack_from(self._mm, _MASTER_OFFSET)
        return MasterHeader(pid, _master_state(state), generation, bool(draining))

    def master_started(self, now: float, now_unix: float) -> None:
        """Record when the master started (monotonic and Unix time); also its first heartbeat."""
        _, _, _, target, bounds, timed = _MASTER_EXTRA.unpack_from(self._mm, _MASTER_EXTRA_OFFSET)
        packed = _MASTER_EXTRA.pack(now, now, now_unix, target, bounds, timed)
        self._mm[_MASTER_EXTRA_OFFSET : _MASTER_EXTRA_OFFSET + _MASTER_EXTRA.size] = packed

    def master_beat(self, now: float, target: int) -> None:
        """The master's loop turned: its heartbeat (what /livez checks) and the pool's target."""
        self._mm[_MASTER_HEARTBEAT_OFFSET : _MASTER_HEARTBEAT_OFFSET + 8] = _TIME.pack(now)
        self._mm[_TARGET_OFFSET : _TARGET_OFFSET + 4] = _U32.pack(max(0, min(target, 0xFFFF_FFFF)))

    def configure_request_metrics(self, timed: bool, bounds: tuple[float, ...]) -> None:
        """Whether workers time requests, and the histogram's bucket bounds (seconds): set before the first
        worker starts and never changed afterwards, so that every worker's buckets mean the same."""
        values = check_latency_bounds(bounds)
        padded = values + (0.0,) * (LATENCY_BUCKETS - 1 - len(values))
        self._mm[_BOUNDS_OFFSET : _BOUNDS_OFFSET + _BOUNDS.size] = _BOUNDS.pack(*padded)
        self._mm[_BOUND_COUNT_OFFSET] = len(values)
        self._mm[_TIMED_OFFSET] = 1 if timed else 0

    def count_restart(self, reason: RestartReason) -> None:
        """One more worker stopped or replaced for `reason` (the master is the only writer)."""
        at = _RESTARTS_OFFSET + 8 * reason
        self._mm[at : at + 8] = _U64.pack(_U64.unpack_from(self._mm, at)[0] + 1)

    def set_crash_loop_until(self, until: float) -> None:
        """Declare the pool crash-looping until `until` (monotonic seconds): workers that see it serve one
        connection at a time, so that a request killing its worker takes no other request with it."""
        self._mm[_CRASH_LOOP_OFFSET : _CRASH_LOOP_OFFSET + 8] = _TIME.pack(until)

    def set_log_lines_dropped(self, count: int) -> None:
        """How many of the master's log lines were dropped so far (the master is the only writer)."""
        self._mm[_LOG_DROPPED_OFFSET : _LOG_DROPPED_OFFSET + 8] = _U64.pack(count)

    def set_listen_queues(self, queues: list[ListenQueue | None]) -> None:
        """The listeners' accept queues as the master last sampled them (at most MAX_LISTENERS)."""
        shown = queues[:MAX_LISTENERS]
        values: list[int] = []
        for queue in shown:
            values += (_UNKNOWN_QUEUE, _UNKNOWN_QUEUE) if queue is None else (_u32(queue.depth), _u32(queue.limit))
        values += [_UNKNOWN_QUEUE] * (2 * MAX_LISTENERS - len(values))
        self._mm[_QUEUES_OFFSET : _QUEUES_OFFSET + _QUEUES.size] = _QUEUES.pack(*values)
        self._mm[_QUEUE_COUNT_OFFSET : _QUEUE_COUNT_OFFSET + 4] = _U32.pack(len(shown))

    # -- readers -------------------------------------------------------------------------------------

    def read_board(self) -> BoardSnapshot:
        """Everything at once, consistent across a slot's release: retried while the master folds a slot."""
        data = b""
        for _ in range(_READ_ATTEMPTS):
            before = _U64.unpack_from(self._mm, _SEQ_OFFSET)[0]
            if before & 1:
                time.sleep(0.0001)
                continue
            data = self._mm[: self.size]
            if _U64.unpack_from(self._mm, _SEQ_OFFSET)[0] == before:
                break
        else:
            # The master died half way through a release: what we have is the best there is.
            data = data or self._mm[: self.size]
        return self._decode(data)

    def _decode(self, data: bytes) -> BoardSnapshot:
        pid, state, draining, generation = _MASTER.unpack_from(data, _MASTER_OFFSET)
        heartbeat, started, started_unix, target, _, timed = _MASTER_EXTRA.unpack_from(data, _MASTER_EXTRA_OFFSET)
        master = MasterSnapshot(
            pid, _master_state(state), generation, bool(draining), heartbeat, started, started_unix, target
        )
        slots = tuple(_unpack_slot(data, HEADER_SIZE + i * SLOT_SIZE, i) for i in range(len(self._slots)))
        queue_values = _QUEUES.unpack_from(data, _QUEUES_OFFSET)
        count = min(_U32.unpack_from(data, _QUEUE_COUNT_OFFSET)[0], MAX_LISTENERS)
        listeners = tuple(
            None
            if _UNKNOWN_QUEUE in queue_values[2 * i : 2 * i + 2]
            else ListenQueue(queue_values[2 * i], queue_values[2 * i + 1])
            for i in range(count)
        )
        return BoardSnapshot(
            master=master,
            slots=slots,
            retired=Totals.unpack(_TOTALS.unpack_from(data, _RETIRED_OFFSET)),
            restarts=_RESTARTS.unpack_from(data, _RESTARTS_OFFSET),
            listeners=listeners,
            latency_bounds=_read_bounds(data),
            request_metrics=bool(timed),
            crash_loop_until=_TIME.unpack_from(data, _CRASH_LOOP_OFFSET)[0],
            log_lines_dropped=_U64.unpack_from(data, _LOG_DROPPED_OFFSET)[0],
        )

    def close(self) -> None:
        """Unmap; the Slot objects must not be used afterwards. Other processes keep their own mapping."""
        self._mm.close()


def _u32(value: int) -> int:
    return max(0, min(value, _UNKNOWN_QUEUE - 1))
