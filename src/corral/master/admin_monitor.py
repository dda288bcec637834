"""What the master does for observability: its heartbeat and the pool's target in the scoreboard on every
loop turn, the listeners' accept queues, StatsD flushes, the admin process, and why workers end and start.

The arbiter calls in at a few points and never waits on any of it: `turn()` from its single wait point,
`reaped()` for children that are not workers, `worker_exited()` and `spawn_reason()` around its own
bookkeeping, `stop()` last at shutdown. The app's own metrics directory (app_metrics.py) is made before the
monitor exists (before a preloaded app is imported); the monitor tells it of dead workers.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from corral.admin.app_metrics import AppMetricsDir
from corral.admin.backlog import listen_queue
from corral.admin.child import AdminProcess
from corral.core.contract import BOOT_FAILURES, RestartReason
from corral.core.privileges import Identity
from corral.core.scoreboard import Scoreboard
from corral.core.sockets import describe
from corral.master import log_output
from corral.master.statsd import StatsdClient, parse_statsd_address

if TYPE_CHECKING:
    from corral.config import Config

__all__ = ["Monitor", "exit_reason", "listener_name"]

# Workers the arbiter replaces one by one: it starts a successor as soon as it marks one of them. (A reload
# starts a new generation whatever the old workers do; scale-down and upgrade shrink the pool.)
_REPLACED = frozenset({RestartReason.TIMEOUT, RestartReason.MAX_REQUESTS, RestartReason.MEMORY, RestartReason.LIFETIME})
# A worker that ended without a successor yet hands its reason to the next one started within this long
# (the arbiter's back-off is at most 10 s); older reasons are stale (a failed rollout's new workers).
_PENDING_FOR = 30.0


def listener_name(sock: socket.socket) -> str:
    """How a listener is labelled in metrics: 127.0.0.1:8000, [::1]:8000, unix:/run/app.sock."""
    try:
        text = describe(sock)
    except OSError:
        return "unknown"
    return text.split("://", 1)[1] if "://" in text else text.split(" ", 1)[0]


def exit_reason(worker: Any, code: int) -> RestartReason | None:
    """Why a worker the arbiter reaped ended (None: the server is shutting down, not a restart)."""
    retired: RestartReason | None = worker.retire_reason
    if retired is not None:
        return retired
    if worker.boot_failed is not None or (not worker.ready and code in BOOT_FAILURES):
        return RestartReason.BOOT_FAILURE
    if worker.stopping:
        return None
    return RestartReason.CRASH


class Monitor:
    """The master's observability duties; created with the arbiter, started before its first worker."""

    def __init__(
        self,
        cfg: Config,
        scoreboard: Scoreboard,
        listeners: list[socket.socket],
        logger: logging.Logger,
        app_metrics: AppMetricsDir | None = None,
    ) -> None:
        self.cfg = cfg
        self.app_metrics = app_metrics
        self.scoreboard = scoreboard
        self.listeners = listeners
        self.listener_names = [listener_name(sock) for sock in listeners]
        self.log = logger
        self.admin: AdminProcess | None = None
        self.statsd: StatsdClient | None = None
        self.sampling = False
        self.pending: deque[tuple[float, RestartReason]] = deque()  # ended workers awaiting a successor
        self.succeeded: set[int] = set()  # retiring workers whose successor was started

    def start(
        self, *, identity: Identity | None, close_in_child: Callable[[], None], upgrading: bool = False
    ) -> str | None:
        """Before the first worker: configure the scoreboard, open StatsD, bind and start the admin process.

        Returns a one-line problem (the caller exits with status 2) or None.
        """
        cfg, metrics = self.cfg, self.cfg.settings.metrics
        self.scoreboard.master_started(time.monotonic(), time.time())
        self.scoreboard.configure_request_metrics(metrics.request_metrics, metrics.metrics_buckets)
        if metrics.statsd_host:
            try:
                address = parse_statsd_address(metrics.statsd_host)
                self.statsd = StatsdClient(
                    address, metrics.statsd_prefix, metrics.dogstatsd_tags, self.listener_names, self.log
                )
            except (OSError, ValueError) as exc:
                return f"statsd_host {metrics.statsd_host!r}: {getattr(exc, 'strerror', None) or exc}"
        if metrics.admin_bind:

            def in_child() -> None:
                close_in_child()
                self._close_statsd()

            self.admin = AdminProcess(
                cfg, self.scoreboard, self.listeners, self.listener_names, identity, self.log, in_child,
                app_metrics=self.app_metrics,
            )  # fmt: skip
            problem = self.admin.bind(upgrading=upgrading)
            if problem is not None:
                self._close_statsd()
                return problem
        self.sampling = self.admin is not None or self.statsd is not None  # someone reads the queues
        if self.sampling:
            self._sample_queues()
        if self.admin is not None:
            self.admin.keep_running(time.monotonic())
        return None

    def turn(self, target: int, *, serving: bool) -> None:
        """Every turn of the master's loop (shutdown included): the heartbeat that /livez checks, and the rest
        when it is due. The admin process is restarted only while serving."""
        now = time.monotonic()
        self.scoreboard.master_beat(now, target)
        self.scoreboard.set_log_lines_dropped(log_output.dropped_lines())
        if self.sampling:
            self._sample_queues()
        if self.statsd is not None:
            self.statsd.maybe_flush(self.scoreboard.read_board)
        if self.admin is not None:
            self.admin.serving = serving
            self.admin.keep_running(now)

    def _sample_queues(self) -> None:
        self.scoreboard.set_listen_queues([listen_queue(sock) for sock in self.listeners])

    def reaped(self, pid: int, status: int) -> bool:
        """Whether a child that is not a worker was the admin process (the monitor restarts it)."""
        return self.admin is not None and self.admin.reaped(pid, status)

    # --- why workers end and start --------------------------------------------------------------

    def worker_exited(self, worker: Any, code: int) -> None:
        """Count why a reaped worker ended; a worker with no successor yet hands its reason on."""
        if self.app_metrics is not None:
            self.app_metrics.worker_exited(worker.pid)
        reason = exit_reason(worker, code)
        if reason is None:
            return
        self.scoreboard.count_restart(reason)
        succeeded = worker.pid in self.succeeded
        self.succeeded.discard(worker.pid)
        if worker.retire_reason is None or (reason in _REPLACED and not succeeded):
            # It died on its own (a crash, a failed boot), or went before its successor started: the next
            # worker started replaces it.
            self.pending.append((time.monotonic(), reason))

    def spawn_reason(self, workers: Iterable[Any], *, reloading: bool, ever_ready: bool) -> RestartReason:
        """Why the worker about to start is started: the reason of the one it replaces, else reload, scale or
        the first start."""
        now = time.monotonic()
        while self.pending:
            when, reason = self.pending.popleft()
            if now - when <= _PENDING_FOR:
                return reason
        for worker in sorted(workers, key=lambda w: w.started):
            retired: RestartReason | None = worker.retire_reason
            if retired in _REPLACED and worker.pid not in self.succeeded:
                self.succeeded.add(worker.pid)
                return retired
        if reloading:
            return RestartReason.RELOAD
        return RestartReason.SCALE if ever_ready else RestartReason.START

    # --- forks and the end ----------------------------------------------------------------------

    def close_in_worker(self) -> None:
        """In a freshly forked worker: close the master's observability sockets."""
        if self.admin is not None:
            self.admin.close_socket()
        self._close_statsd()

    def stop(self) -> None:
        """At master exit, after the workers are gone: a last StatsD flush, then the admin process goes."""
        if self.statsd is not None:
            with contextlib.suppress(OSError, ValueError):
                self.statsd.flush(self.scoreboard.read_board())
            self._close_statsd()
        if self.admin is not None:
            self.admin.stop()

    def _close_statsd(self) -> None:
        if self.statsd is not None:
            with contextlib.suppress(OSError):
                self.statsd.close()
            self.statsd = None
