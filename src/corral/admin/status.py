"""The pool's status from one scoreboard read: liveness and readiness, the /status JSON document, and the
`corral status` table made from that document.

The JSON field names are an interface (docs/metrics.md lists them): add fields, never rename one.
"""

from __future__ import annotations

from typing import Any

from corral.core.scoreboard import BoardSnapshot, MasterState, RestartReason, SlotSnapshot, WorkerState

__all__ = [
    "LIVENESS_TIMEOUT",
    "format_duration",
    "format_size",
    "format_status",
    "liveness_problem",
    "readiness_problem",
    "status_document",
]

# The master's loop turns at least twice a second; this long without a turn means it is stuck (a hook that
# never returns, a blocked system call), even though the admin process still answers.
LIVENESS_TIMEOUT = 10.0

_STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")


def liveness_problem(board: BoardSnapshot, now: float) -> str | None:
    """Why the master does not count as alive (None: its loop turned recently)."""
    master = board.master
    if master.pid == 0 or master.heartbeat == 0.0:
        return "the master has not started"
    silent = now - master.heartbeat
    if silent > LIVENESS_TIMEOUT:
        return f"the master's loop has not turned for {silent:.1f} s"
    return None


def readiness_problem(board: BoardSnapshot, now: float) -> str | None:
    """Why the server should get no traffic (None: it is ready): starting, draining, or no READY worker."""
    problem = liveness_problem(board, now)
    if problem is not None:
        return problem
    master = board.master
    if master.state is MasterState.STARTING:
        return "starting"
    if master.draining or master.state in (MasterState.DRAINING, MasterState.STOPPING):
        return "draining"
    if not any(worker.state is WorkerState.READY for worker in board.workers):
        return "no worker is ready"
    return None


def status_document(board: BoardSnapshot, listener_names: list[str], now: float) -> dict[str, Any]:
    """The /status JSON document (see docs/metrics.md for every field)."""
    master = board.master
    totals = board.totals()
    return {
        "master": {
            "pid": master.pid,
            "state": master.state.name.lower(),
            "generation": master.generation,
            "draining": master.draining,
            "target": master.target,
            "uptime": _seconds(now - master.started) if master.started else 0.0,
            "heartbeat_age": _seconds(now - master.heartbeat) if master.heartbeat else None,
            "alive": liveness_problem(board, now) is None,
            "ready": readiness_problem(board, now) is None,
            "not_ready_because": readiness_problem(board, now),
            "crash_loop": board.crash_looping(now),
            "log_lines_dropped": board.log_lines_dropped,
            "restarts": {
                reason.name.lower(): board.restarts[reason] for reason in RestartReason if reason != RestartReason.START
            },
        },
        "workers": [_worker(worker, now) for worker in board.workers],
        "listeners": [
            _listener(name, queue) for name, queue in zip(listener_names, _padded(board, listener_names), strict=True)
        ],
        "totals": {
            "requests": totals.requests,
            "responses": dict(zip(_STATUS_CLASSES, totals.responses, strict=True)),
            "bytes_in": totals.bytes_in,
            "bytes_out": totals.bytes_out,
        },
    }


def _worker(worker: SlotSnapshot, now: float) -> dict[str, Any]:
    return {
        "slot": worker.index,
        "pid": worker.pid,
        "state": worker.state.name.lower(),
        "generation": worker.generation,
        "age": _seconds(now - worker.started),
        "boot_seconds": _seconds(worker.ready_at - worker.started) if worker.ready_at else None,
        "requests": worker.requests,
        "active_requests": max(0, worker.active_requests),
        "active_connections": max(0, worker.active_connections),
        "websockets": max(0, worker.websockets),
        "rss": worker.rss,
        "heartbeat_age": _seconds(now - worker.heartbeat),
        "restart_reason": worker.start_reason.name.lower(),
    }


def _padded(board: BoardSnapshot, names: list[str]) -> list[Any]:
    """One queue (or None) per listener name, whatever the header held."""
    return [board.listeners[i] if i < len(board.listeners) else None for i in range(len(names))]


def _listener(name: str, queue: Any) -> dict[str, Any]:
    return {
        "address": name,
        "backlog": None if queue is None else queue.depth,
        "backlog_max": None if queue is None else queue.limit,
    }


def _seconds(value: float) -> float:
    return round(max(0.0, value), 3)


# ---------------------------------------------------------------------------------------------------------------
# The `corral status` table


_COLUMNS = ("PID", "SLOT", "STATE", "GEN", "AGE", "REQUESTS", "ACTIVE", "CONNS", "WS", "RSS", "STARTED BECAUSE")
_RIGHT_ALIGNED = frozenset({"PID", "SLOT", "GEN", "AGE", "REQUESTS", "ACTIVE", "CONNS", "WS", "RSS"})


def format_status(document: dict[str, Any]) -> str:
    """The `corral status` output: a master line, the listeners, then one row per worker, like `ps`."""
    master = document["master"]
    lines = [_master_line(master), _restarts_line(master.get("restarts", {}))]
    if master.get("crash_loop"):
        lines.append("CRASH LOOP: a request keeps killing its worker; workers serve one connection at a time")
    if master.get("log_lines_dropped"):
        lines.append(f"master log lines dropped: {master['log_lines_dropped']} (its log output was not being read)")
    lines += [_listener_line(listener) for listener in document.get("listeners", [])]
    lines.append("")
    rows = [_COLUMNS] + [_worker_row(worker) for worker in document.get("workers", [])]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
    for row in rows:
        cells = [
            cell.rjust(width) if name in _RIGHT_ALIGNED else cell.ljust(width)
            for name, cell, width in zip(_COLUMNS, row, widths, strict=True)
        ]
        lines.append("  ".join(cells).rstrip())
    if not document.get("workers"):
        lines.append("(no workers)")
    return "\n".join(lines)


def _master_line(master: dict[str, Any]) -> str:
    readiness = "ready" if master.get("ready") else f"not ready: {master.get('not_ready_because') or 'unknown'}"
    if not master.get("alive", True):
        readiness = f"NOT ALIVE: {master.get('not_ready_because')}"
    return (
        f"master  pid {master['pid']}  {master['state']}  generation {master['generation']}  "
        f"up {format_duration(master.get('uptime') or 0)}  target {master['target']} workers  {readiness}"
    )


def _restarts_line(restarts: dict[str, int]) -> str:
    counted = [f"{reason} {count}" for reason, count in restarts.items() if count]
    return "restarts: " + (", ".join(counted) if counted else "none")


def _listener_line(listener: dict[str, Any]) -> str:
    if listener.get("backlog") is None:
        return f"listen  {listener['address']}  backlog unknown"
    return f"listen  {listener['address']}  backlog {listener['backlog']}/{listener['backlog_max']}"


def _worker_row(worker: dict[str, Any]) -> tuple[str, ...]:
    return (
        str(worker["pid"]),
        str(worker["slot"]),
        worker["state"],
        str(worker["generation"]),
        format_duration(worker["age"]),
        str(worker["requests"]),
        str(worker["active_requests"]),
        str(worker["active_connections"]),
        str(worker["websockets"]),
        format_size(worker["rss"]),
        worker["restart_reason"],
    )


def format_duration(seconds: float) -> str:
    """12s, 5m03s, 2h07m, 3d04h: two units at most, like ps's elapsed time but shorter."""
    whole = int(max(0.0, seconds))
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def format_size(count: int) -> str:
    """Bytes in 1024-based units with one decimal: 512B, 42.1M, 1.5G."""
    value = float(count)
    for unit in ("B", "K", "M", "G"):
        if value < 1024 or unit == "G":
            return f"{int(value)}B" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return f"{value:.1f}T"  # unreachable: the loop returns at "G"
