"""The scoreboard: one shared anonymous mmap, created by the master before it forks, in which each worker
publishes its state, heartbeat and counters in a fixed slot, and the master keeps a small header.

No locks and no messages: each slot has exactly one writer at a time (the master while it claims or
releases the slot, the worker while it runs), and readers accept torn reads (see below).

Byte layout (little-endian, every multi-byte field naturally aligned)
----------------------------------------------------------------------
Header, 64 bytes at offset 0, written by the master::

    off  size  type  field
      0     4  4s    magic b"CRSB"
      4     2  u16   layout version (1)
      6     2  u16   slot size in bytes (512)
      8     4  u32   number of slots
     12     4  u32   master pid
     16     1  u8    master state (MasterState)
     17     1  u8    draining flag (0/1): readiness answers 503
     18     6        reserved
     24     8  u64   reload generation
     32    32        reserved

Slot i, 512 bytes at offset 64 + i * 512 (a multiple of 64, so no two slots share a cache line)::

    off  size  type     field                 written by
      0     4  u32      pid                   master (claim/release)
      4     1  u8       state (WorkerState)   master (claim/release), worker (set_state)
      5     1  u8       retire_requested      worker (request_retirement)
      6     2           reserved
      8     8  u64      generation            master (claim)
     16     8  f64      started               master (claim)
     24     8  f64      ready_at              worker (set_state READY); 0.0 until then
     32     8  f64      heartbeat             master (claim), worker (beat/set_state/publish)
     40     8  u64      requests              worker (publish) ─┐
     48    40  u64 x 5  responses 1xx..5xx                       │
     88     8  i64      active_requests                          │ publish() writes
     96     8  i64      active_connections                       │ heartbeat .. rss at once
    104     8  u64      bytes_in                                 │
    112     8  u64      bytes_out                                │
    120     8  i64      websockets                               │
    128     8  u64      rss (bytes)                             ─┘
    136   120           reserved for more counters
    256   128  u64 x 16 latency histogram buckets (reserved for issue 6; zero until then)
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
"""

from __future__ import annotations

import enum
import mmap
import struct
from dataclasses import dataclass, field
from typing import NamedTuple

__all__ = [
    "HEADER_SIZE",
    "LATENCY_BUCKETS",
    "LATENCY_OFFSET",
    "SLOT_SIZE",
    "MasterHeader",
    "MasterState",
    "Scoreboard",
    "Slot",
    "SlotSnapshot",
    "WorkerCounters",
    "WorkerState",
]


class WorkerState(enum.IntEnum):
    EMPTY = 0
    BOOTING = 1
    READY = 2
    RETIRING = 3
    DRAINING = 4


class MasterState(enum.IntEnum):
    STARTING = 0
    RUNNING = 1
    RELOADING = 2
    DRAINING = 3
    STOPPING = 4


MAGIC = b"CRSB"
LAYOUT_VERSION = 1
HEADER_SIZE = 64
SLOT_SIZE = 512
LATENCY_OFFSET = 256  # within a slot: 16 u64 buckets, reserved for the latency histogram
LATENCY_BUCKETS = 16

# Header structs (offsets from the start of the mapping).
_HEADER_IDENTITY = struct.Struct("<4sHHI")  # magic, version, slot size, slot count at 0
_MASTER = struct.Struct("<IBB6xQ")  # pid, state, draining, generation at 12
_MASTER_OFFSET = 12
_MASTER_END = _MASTER_OFFSET + _MASTER.size

# Slot structs (offsets from the start of the slot).
_CLAIM = struct.Struct("<IBB2xQddd")  # pid .. heartbeat at 0
_RELEASE = struct.Struct("<IB")  # pid, state at 0
_PID = struct.Struct("<I")
_STATE_OFFSET = 4
_RETIRE_OFFSET = 5
_TIME = struct.Struct("<d")
_HEARTBEAT_OFFSET = 32
_HEARTBEAT_END = _HEARTBEAT_OFFSET + _TIME.size
_READY_AT_AND_HEARTBEAT = struct.Struct("<dd")  # ready_at, heartbeat at 24
_READY_AT_OFFSET = 24
_PUBLISH = struct.Struct("<dQ5QqqQQqQ")  # heartbeat .. rss at 32
_PUBLISH_END = _HEARTBEAT_OFFSET + _PUBLISH.size
_READ = struct.Struct("<IBB2xQdddQ5QqqQQqQ")  # pid .. rss at 0

_WORKER_STATES = tuple(WorkerState)
_MASTER_STATES = tuple(MasterState)

assert _PUBLISH_END == _READ.size <= LATENCY_OFFSET
assert _READY_AT_OFFSET + _READY_AT_AND_HEARTBEAT.size == _HEARTBEAT_END
assert _MASTER_END <= HEADER_SIZE
assert LATENCY_OFFSET + 8 * LATENCY_BUCKETS <= SLOT_SIZE


def _worker_state(value: int) -> WorkerState:
    return _WORKER_STATES[value] if value < len(_WORKER_STATES) else WorkerState.EMPTY


def _master_state(value: int) -> MasterState:
    return _MASTER_STATES[value] if value < len(_MASTER_STATES) else MasterState.STARTING


def _zero_responses() -> list[int]:
    return [0, 0, 0, 0, 0]


@dataclass(slots=True)
class WorkerCounters:
    """A worker's own counters, bumped with plain int operations on the request path and published by the tick.

    `responses[status // 100 - 1]` counts responses by class (1xx..5xx).
    """

    requests: int = 0
    responses: list[int] = field(default_factory=_zero_responses)
    active_requests: int = 0
    active_connections: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    websockets: int = 0


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


class MasterHeader(NamedTuple):
    pid: int
    state: MasterState
    generation: int
    draining: bool


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

    def claim(self, pid: int, generation: int, now: float) -> None:
        """Give the slot to a new worker: every field zeroed, state BOOTING, started = heartbeat = now."""
        image = bytearray(SLOT_SIZE)
        _CLAIM.pack_into(image, 0, pid, WorkerState.BOOTING, 0, generation, now, 0.0, now)
        self._buf[self._offset : self._offset + SLOT_SIZE] = image

    def release(self) -> None:
        """Mark the slot free (state EMPTY, pid 0). The counters stay readable until the next claim."""
        self._buf[self._offset : self._offset + _RELEASE.size] = _RELEASE.pack(0, WorkerState.EMPTY)

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
        )

    def request_retirement(self) -> None:
        """Ask the master to replace this worker (e.g. max_requests reached); the claim of a successor clears it."""
        self._buf[self._offset + _RETIRE_OFFSET] = 1

    # -- readers -------------------------------------------------------------------------------------

    def read(self) -> SlotSnapshot:
        """Every field in one unpack_from (see the module docstring about torn reads)."""
        (
            pid,
            state,
            retire,
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
        ) = _READ.unpack_from(self._buf, self._offset)
        return SlotSnapshot(
            index=self.index,
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
        )

    @property
    def pid(self) -> int:
        return _PID.unpack_from(self._buf, self._offset)[0]

    @property
    def state(self) -> WorkerState:
        return _worker_state(self._buf[self._offset + _STATE_OFFSET])

    @property
    def heartbeat(self) -> float:
        return _TIME.unpack_from(self._buf, self._heartbeat[0])[0]

    @property
    def retire_requested(self) -> bool:
        return self._buf[self._offset + _RETIRE_OFFSET] != 0


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

    def set_master(self, pid: int, state: MasterState, generation: int, *, draining: bool | None = None) -> None:
        """Write the master's header in one copy; draining defaults to state DRAINING or STOPPING."""
        if draining is None:
            draining = state in (MasterState.DRAINING, MasterState.STOPPING)
        self._mm[_MASTER_OFFSET:_MASTER_END] = _MASTER.pack(pid, state, draining, generation)

    def read_master(self) -> MasterHeader:
        pid, state, draining, generation = _MASTER.unpack_from(self._mm, _MASTER_OFFSET)
        return MasterHeader(pid, _master_state(state), generation, bool(draining))

    def close(self) -> None:
        """Unmap; the Slot objects must not be used afterwards. Other processes keep their own mapping."""
        self._mm.close()
