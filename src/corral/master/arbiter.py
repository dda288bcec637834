"""The master: binds the listeners, forks workers and keeps the pool whole, never dropping capacity.

One loop, one wait point: signal handlers only queue the signal and wake the loop through a self-pipe; each
turn handles the queued signals, reaps children and supervises the pool from the scoreboard. Every kind of
recycling (max_requests, memory, lifetime, HUP, scale-down) marks a worker for retirement with a reason;
`_retire_what_capacity_allows` then TERMs retirees only while enough READY workers remain to carry the load.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import random
import select
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from corral.master import sizing
from corral.master.pidfile import Pidfile, PidfileError
from corral.master.privileges import Identity, resolve_identity
from corral.master.scoreboard import MasterState, Scoreboard, Slot, WorkerState
from corral.master.sockets import (
    BindError,
    create_listeners,
    describe,
    systemd_listeners,
    tcp_migrate_req_enabled,
)
from corral.proctitle import set_title

__all__ = ["Arbiter", "run"]

EXIT_OK = 0
EXIT_CONFIG = 2
EXIT_APP = 3

# Worker exit statuses (worker/process.py) that mean "could not boot": app import and lifespan startup.
_BOOT_FAILURE_CODES = {3: "the app could not be imported", 4: "lifespan startup failed"}
# After SIGABRT (timeout), how long the worker's faulthandler gets to print its traceback before SIGKILL.
ABORT_GRACE = 2.0
# Beyond graceful_timeout, how long a draining worker may take to exit before SIGKILL.
DRAIN_MARGIN = 5.0
# Consecutive samples above max_worker_memory before a worker is replaced (RSS is noisy).
MEMORY_STRIKES = 3
MAX_BACKOFF = 10.0
SCOREBOARD_SLOTS_MIN = 64


@dataclass
class WorkerHandle:
    """What the master remembers of one worker; the worker's own figures live in its scoreboard slot."""

    pid: int
    slot: Slot
    generation: int
    started: float
    max_requests: int
    lifetime_deadline: float | None = None
    ready: bool = False
    retire_reason: str | None = None
    term_sent_at: float | None = None
    abort_sent_at: float | None = None
    kill_sent: bool = False
    memory_strikes: int = 0
    last_rss_sample: float = 0.0
    boot_failed: str | None = None

    @property
    def stopping(self) -> bool:
        """Told to go (TERM, ABRT or KILL): no longer counted as serving capacity."""
        return self.term_sent_at is not None or self.abort_sent_at is not None or self.kill_sent


def run(cfg: Any, reload_config: Callable[[], Any] | None = None) -> int:
    """Bind, start the pool and supervise it until told to stop; the exit status says how it ended."""
    from corral.logging import setup_error_log

    logger = setup_error_log(cfg.errorlog, cfg.loglevel)
    try:
        if cfg.chdir:
            os.chdir(cfg.chdir)
        identity = resolve_identity(cfg.user, cfg.group, cfg.initgroups)
        owner = (identity.uid, identity.gid) if identity is not None else None
        listeners = systemd_listeners() or create_listeners(
            list(cfg.bind), cfg.backlog, umask=cfg.umask, owner=owner, reuse_port=cfg.reuse_port
        )
    except (BindError, ValueError, OSError) as exc:
        print(f"corral: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_CONFIG
    pidfile = Pidfile(cfg.pidfile) if cfg.pidfile else None
    try:
        if pidfile is not None:
            pidfile.create(os.getpid())
        return _run_pool(cfg, listeners, logger, identity, reload_config)
    except PidfileError as exc:
        print(f"corral: error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    finally:
        if pidfile is not None:
            pidfile.unlink()
        for sock in listeners:
            with contextlib.suppress(OSError):
                sock.close()


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.filename or 'chdir'}: {exc.strerror}" if exc.filename else exc.strerror
    return str(exc)


def _run_pool(
    cfg: Any,
    listeners: list[socket.socket],
    logger: logging.Logger,
    identity: Identity | None,
    reload_config: Callable[[], Any] | None,
) -> int:
    if cfg.reuse_port and tcp_migrate_req_enabled() is False:
        logger.warning(
            "reuse_port: net.ipv4.tcp_migrate_req is 0, so connections still queued on a replaced worker's "
            "own socket are reset; set it to 1 (sysctl -w net.ipv4.tcp_migrate_req=1)"
        )
    app = None
    if getattr(cfg, "preload_app", False):
        from corral.http import eager
        from corral.loading import AppLoadError, load_app

        eager.install()
        try:
            app = load_app(cfg.app, factory=cfg.factory, app_dir=cfg.app_dir)
        except AppLoadError as exc:
            print(f"corral: error: {exc}", file=sys.stderr)
            return EXIT_APP
    return Arbiter(cfg, listeners, logger, app=app, reload_config=reload_config, identity=identity).run()


class Arbiter:
    """Supervises the worker pool."""

    def __init__(
        self,
        cfg: Any,
        listeners: list[socket.socket],
        logger: logging.Logger,
        *,
        app: Any = None,
        reload_config: Callable[[], Any] | None = None,
        identity: Identity | None = None,
    ) -> None:
        self.cfg = cfg
        self.identity = identity
        self.listeners = listeners
        self.log = logger
        self.app = app
        self.reload_config = reload_config
        self.pid = os.getpid()
        self.workers: dict[int, WorkerHandle] = {}
        self.generation = 1
        self.rollout_from: int | None = None  # the generation a HUP is replacing
        self.cpu_budget: sizing.CpuBudget | None = None  # set when workers="auto"
        self.target = self._initial_target()
        self.scoreboard = Scoreboard(max(SCOREBOARD_SLOTS_MIN, self.target * 4))
        self.ever_ready = False
        self.failures_in_a_row = 0
        self.next_spawn_at = 0.0
        self.signals: list[int] = []
        self.wake_r, self.wake_w = os.pipe()
        self.exit_code: int | None = None
        self.stopping: str | None = None  # "graceful" | "fast"

    # --- the loop -------------------------------------------------------------------------------

    def run(self) -> int:
        self._install_signals()
        set_title(self.cfg, "master")
        self.scoreboard.set_master(self.pid, MasterState.STARTING, self.generation)
        for sock in self.listeners:
            self.log.info("Listening on %s", describe(sock))
        self.log.info("Starting %d worker%s (pid %d)", self.target, "s" * (self.target != 1), self.pid)
        try:
            while self.stopping is None:
                self._spawn_missing()
                self._wait(self._next_timeout())
                self._handle_signals()
                self._reap()
                if self.stopping is None:
                    self._supervise()
            return self._shut_down()
        finally:
            self._restore_signals()
            os.close(self.wake_r)
            os.close(self.wake_w)

    def _next_timeout(self) -> float:
        """Poll fast while something is in motion (boots, drains); otherwise sleep until the next tick."""
        busy = any(not w.ready or w.stopping for w in self.workers.values())
        # Idle, half a second: replacement requests (max_requests) are seen soon, at no measurable cost.
        return 0.05 if busy else 0.5

    def _wait(self, timeout: float) -> None:
        try:
            readable, _, _ = select.select([self.wake_r], [], [], timeout)
        except InterruptedError:
            return
        if readable:
            with contextlib.suppress(BlockingIOError):
                os.read(self.wake_r, 4096)

    # --- signals --------------------------------------------------------------------------------

    _HANDLED = (
        signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU,
        signal.SIGUSR1, signal.SIGCHLD,
    )  # fmt: skip

    def _install_signals(self) -> None:
        os.set_blocking(self.wake_w, False)
        os.set_blocking(self.wake_r, False)
        signal.set_wakeup_fd(self.wake_w)
        for sig in self._HANDLED:
            signal.signal(sig, self._queue_signal)

    def _restore_signals(self) -> None:
        signal.set_wakeup_fd(-1)
        for sig in self._HANDLED:
            signal.signal(sig, signal.SIG_DFL)

    def _queue_signal(self, signum: int, frame: Any) -> None:
        # Only queue: the work happens in the loop, never inside a signal handler.
        if len(self.signals) < 16 or signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
            self.signals.append(signum)

    def _handle_signals(self) -> None:
        while self.signals:
            signum = self.signals.pop(0)
            handler = getattr(self, f"_on_{signal.Signals(signum).name.lower()}", None)
            if handler is not None:
                handler()

    def _on_sigterm(self) -> None:
        self.log.info("Received TERM: graceful shutdown")
        self.stopping = "graceful"

    def _on_sigint(self) -> None:
        self.log.info("Received INT: fast shutdown")
        self.stopping = "fast"

    def _on_sigquit(self) -> None:
        self.log.info("Received QUIT: fast shutdown")
        self.stopping = "fast"

    def _on_sigchld(self) -> None:
        pass  # the loop reaps after every wake-up

    def _on_sigttin(self) -> None:
        self.target += 1
        self.log.info("Received TTIN: %d workers wanted", self.target)

    def _on_sigttou(self) -> None:
        if self.target <= 1:
            self.log.info("Received TTOU: already at 1 worker, the minimum")
            return
        self.target -= 1
        self.log.info("Received TTOU: %d workers wanted", self.target)
        keepers = sorted(self._keepers(), key=lambda w: w.started, reverse=True)
        if len(keepers) > self.target:
            keepers[0].retire_reason = "scale"

    def _on_sighup(self) -> None:
        self.log.info("Received HUP: reloading")
        if self.reload_config is not None:
            try:
                cfg = self.reload_config()
            except Exception as exc:  # a broken config file must not take the running pool down
                self.log.error("Reload aborted: the configuration could not be loaded: %s", exc)
                return
            if list(cfg.bind) != list(self.cfg.bind):
                self.log.warning("bind changed in the configuration: a restart is needed to apply it")
            self.cfg = cfg
        self.rollout_from = self.generation if self.rollout_from is None else self.rollout_from
        self.generation += 1
        self.failures_in_a_row = 0
        self.next_spawn_at = 0.0
        self.scoreboard.set_master(self.pid, MasterState.RELOADING, self.generation)

    def _on_sigusr1(self) -> None:
        from corral.logging import reopen_error_log

        reopen_error_log()
        for worker in self.workers.values():
            self._send(worker, signal.SIGUSR1)

    # --- spawning -------------------------------------------------------------------------------

    def _initial_target(self) -> int:
        workers = self.cfg.workers
        if workers != "auto":
            return int(workers)
        self.cpu_budget = sizing.cpu_budget()
        return self.cpu_budget.cpus

    def _keepers(self) -> list[WorkerHandle]:
        """Workers of the current generation that are meant to stay."""
        return [
            w
            for w in self.workers.values()
            if w.generation == self.generation and w.retire_reason is None and not w.stopping
        ]

    def _spawn_missing(self) -> None:
        if self.stopping is not None or time.monotonic() < self.next_spawn_at:
            return
        while len(self._keepers()) < self.target:
            if not self._spawn():
                return

    def _spawn(self) -> bool:
        index = self.scoreboard.free_slot()
        if index is None:
            self.log.error("no free scoreboard slot: not starting another worker")
            return False
        slot = self.scoreboard.slot(index)
        now = time.monotonic()
        slot.claim(0, self.generation, now)
        cfg = self.cfg
        max_requests = cfg.max_requests + random.randint(0, cfg.max_requests_jitter) if cfg.max_requests else 0
        # Signals stay blocked across fork: one arriving before the child has reset the master's handlers
        # would otherwise be queued in the child's copy of the master and lost. The child unblocks them
        # once its own handling is in place (worker/process.py).
        signal.pthread_sigmask(signal.SIG_BLOCK, self._HANDLED)
        try:
            pid = os.fork()
            if pid == 0:
                self._become_worker(slot, max_requests)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, self._HANDLED)
        lifetime = float(cfg.max_worker_lifetime or 0)
        deadline = now + lifetime + random.uniform(0, lifetime * 0.1) if lifetime else None
        self.workers[pid] = WorkerHandle(pid, slot, self.generation, now, max_requests, lifetime_deadline=deadline)
        self.log.debug("Started worker pid %d (generation %d)", pid, self.generation)
        return True

    def _become_worker(self, slot: Slot, max_requests: int) -> None:
        from corral.worker.process import WorkerLaunch, run_worker_process

        os.close(self.wake_r)
        os.close(self.wake_w)
        run_worker_process(
            WorkerLaunch(
                self.cfg, self.listeners, self.scoreboard, slot, self.generation, self.app, max_requests, self.identity
            )
        )

    # --- reaping --------------------------------------------------------------------------------

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            except InterruptedError:
                continue
            if pid == 0:
                return
            worker = self.workers.pop(pid, None)
            if worker is None:
                continue  # not ours: as PID 1 in a container we reap every orphan that lands on us
            self._worker_exited(worker, os.waitstatus_to_exitcode(status))

    def _worker_exited(self, worker: WorkerHandle, code: int) -> None:
        worker.slot.release()
        cause = _describe_exit(code)
        if worker.stopping and worker.boot_failed is None:
            self.log.info("Worker pid %d exited (%s)%s", worker.pid, cause, _reason_suffix(worker))
            return
        boot_failure = worker.boot_failed or (None if worker.ready else _BOOT_FAILURE_CODES.get(code))
        if boot_failure is not None:
            self._boot_failed(worker, boot_failure)
            return
        self.log.error("Worker pid %d died unexpectedly (%s); starting a replacement", worker.pid, cause)
        self._back_off()

    def _boot_failed(self, worker: WorkerHandle, why: str) -> None:
        if not self.ever_ready:
            self.log.error("Worker pid %d failed to boot: %s; stopping (see the error above)", worker.pid, why)
            self.exit_code = EXIT_APP
            self.stopping = "fast"
            return
        if self.rollout_from is not None and worker.generation == self.generation:
            self._abort_rollout(f"a new worker failed to boot: {why}")
            return
        self.log.error("Worker pid %d failed to boot: %s; retrying", worker.pid, why)
        self._back_off()

    def _back_off(self) -> None:
        self.failures_in_a_row += 1
        delay = min(MAX_BACKOFF, 0.1 * 2 ** (self.failures_in_a_row - 1)) if self.failures_in_a_row > 1 else 0.0
        if delay:
            self.log.warning("%d worker failures in a row: next start in %.1f s", self.failures_in_a_row, delay)
        self.next_spawn_at = time.monotonic() + delay

    def _abort_rollout(self, why: str) -> None:
        old = self.rollout_from
        assert old is not None
        self.log.error("Reload failed: %s. Keeping the workers of the previous generation serving.", why)
        for worker in self.workers.values():
            if worker.generation == self.generation:
                if worker.ready:
                    worker.generation = old  # it serves fine: keep it as part of the old pool
                elif not worker.stopping:
                    worker.retire_reason = "reload failed"
                    self._terminate(worker)
        self.generation = old
        self.rollout_from = None
        self.scoreboard.set_master(self.pid, MasterState.RUNNING, self.generation)
        self._back_off()

    # --- supervision ----------------------------------------------------------------------------

    def _supervise(self) -> None:
        now = time.monotonic()
        for worker in list(self.workers.values()):
            snapshot = worker.slot.read()
            if not worker.ready and snapshot.state == WorkerState.READY and snapshot.pid == worker.pid:
                self._became_ready(worker, snapshot.rss)
            self._check_liveness(worker, snapshot, now)
            if worker.ready and worker.retire_reason is None and not worker.stopping:
                self._check_recycling(worker, snapshot, now)
        self._retire_what_capacity_allows()
        self._finish_rollout()

    def _became_ready(self, worker: WorkerHandle, rss: int) -> None:
        worker.ready = True
        self.failures_in_a_row = 0
        if not self.ever_ready:
            self.ever_ready = True
            self.scoreboard.set_master(self.pid, MasterState.RUNNING, self.generation)
        if self.cpu_budget is not None and rss:
            # workers="auto": now that a worker's real size is known, cap the pool by memory; one log line.
            capped, why = sizing.cap_by_memory(self.target, rss, sizing.memory_budget())
            self.log.info("%s", sizing.describe_choice(self.cpu_budget, capped, why))
            self.target = capped
            self.cpu_budget = None

    def _check_liveness(self, worker: WorkerHandle, snapshot: Any, now: float) -> None:
        cfg = self.cfg
        if worker.abort_sent_at is not None:
            if not worker.kill_sent and now - worker.abort_sent_at > ABORT_GRACE:
                self._kill(worker)
            return
        if worker.term_sent_at is not None:
            if not worker.kill_sent and now - worker.term_sent_at > cfg.graceful_timeout + DRAIN_MARGIN:
                self.log.warning("Worker pid %d did not finish draining in time: killing it", worker.pid)
                self._kill(worker)
            return
        if not worker.ready:
            if cfg.boot_timeout and now - worker.started > cfg.boot_timeout:
                worker.boot_failed = f"it did not boot within boot_timeout ({cfg.boot_timeout:g} s)"
                self._kill(worker)
            return
        silent = now - snapshot.heartbeat
        if cfg.timeout and silent > cfg.timeout:
            self.log.error(
                "Worker pid %d silent for %.1f s (timeout %g s): sending SIGABRT; its traceback follows in the "
                "error log, then it is replaced",
                worker.pid,
                silent,
                cfg.timeout,
            )
            worker.abort_sent_at = now
            worker.retire_reason = "timeout"
            self._send(worker, signal.SIGABRT)

    def _check_recycling(self, worker: WorkerHandle, snapshot: Any, now: float) -> None:
        cfg = self.cfg
        if snapshot.retire_requested:
            worker.retire_reason = "max_requests"
        elif worker.lifetime_deadline is not None and now > worker.lifetime_deadline:
            worker.retire_reason = "lifetime"
        elif cfg.max_worker_memory and snapshot.heartbeat != worker.last_rss_sample:
            worker.last_rss_sample = snapshot.heartbeat
            worker.memory_strikes = worker.memory_strikes + 1 if snapshot.rss > cfg.max_worker_memory else 0
            if worker.memory_strikes >= MEMORY_STRIKES:
                worker.retire_reason = "memory"
        if worker.retire_reason is not None:
            self.log.info("Replacing worker pid %d (%s)", worker.pid, worker.retire_reason)

    def _retire_what_capacity_allows(self) -> None:
        """TERM retirees while the READY workers left would still number at least the target."""
        retirees = [
            w
            for w in self.workers.values()
            if not w.stopping and (w.retire_reason is not None or w.generation != self.generation)
        ]
        if not retirees:
            return
        serving = sum(1 for w in self.workers.values() if w.ready and not w.stopping)
        for worker in sorted(retirees, key=lambda w: (w.ready, w.started)):
            if worker.ready and serving - 1 < self.target:
                break
            if worker.ready:
                serving -= 1
            if worker.retire_reason is None:
                worker.retire_reason = "reload"
            self._terminate(worker)

    def _finish_rollout(self) -> None:
        if self.rollout_from is None:
            return
        if any(w.generation != self.generation and not w.stopping for w in self.workers.values()):
            return
        if len([w for w in self._keepers() if w.ready]) < self.target:
            return
        self.log.info("Reload complete: %d workers of generation %d serving", self.target, self.generation)
        self.rollout_from = None
        self.scoreboard.set_master(self.pid, MasterState.RUNNING, self.generation)

    # --- stopping -------------------------------------------------------------------------------

    def _shut_down(self) -> int:
        graceful = self.stopping == "graceful"
        self.scoreboard.set_master(self.pid, MasterState.DRAINING if graceful else MasterState.STOPPING, 0)
        if graceful and self.cfg.drain_delay:
            self._drain_delay(float(self.cfg.drain_delay))
            graceful = self.stopping == "graceful"
        # The workers hold their own copies of the listeners: once they have taken what is queued,
        # nothing else may accept, so new connections are refused rather than left waiting.
        for sock in self.listeners:
            with contextlib.suppress(OSError):
                sock.close()
        for worker in self.workers.values():
            if graceful:
                self._terminate(worker)
            else:
                self._send(worker, signal.SIGQUIT)
                worker.term_sent_at = time.monotonic()
        limit = (self.cfg.graceful_timeout + DRAIN_MARGIN) if graceful else 3.0
        deadline = time.monotonic() + limit
        while self.workers and time.monotonic() < deadline:
            self._wait(0.05)
            self._handle_signals()
            if self.stopping == "fast" and graceful:
                graceful = False
                for worker in self.workers.values():
                    self._send(worker, signal.SIGQUIT)
                deadline = min(deadline, time.monotonic() + 3.0)
            self._reap()
        for worker in list(self.workers.values()):
            self.log.warning("Worker pid %d still running at shutdown: killing it", worker.pid)
            self._kill(worker)
        self._reap_all(timeout=5.0)
        self.scoreboard.close()
        self.log.info("Master exiting")
        return self.exit_code if self.exit_code is not None else EXIT_OK

    def _drain_delay(self, seconds: float) -> None:
        """Keep serving while load balancers notice the drain (readiness already reports it)."""
        self.log.info("Draining: still serving for drain_delay (%g s)", seconds)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and self.stopping == "graceful":
            self._wait(min(0.1, deadline - time.monotonic()))
            self._handle_signals()
            self._reap()

    def _reap_all(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.workers and time.monotonic() < deadline:
            self._reap()
            if self.workers:
                time.sleep(0.02)

    # --- talking to workers ---------------------------------------------------------------------

    def _terminate(self, worker: WorkerHandle) -> None:
        if worker.term_sent_at is None:
            worker.term_sent_at = time.monotonic()
            self._send(worker, signal.SIGTERM)

    def _kill(self, worker: WorkerHandle) -> None:
        worker.kill_sent = True
        self._send(worker, signal.SIGKILL)

    def _send(self, worker: WorkerHandle, sig: int) -> None:
        try:
            os.kill(worker.pid, sig)
        except OSError as exc:
            if exc.errno != errno.ESRCH:
                raise


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


def _reason_suffix(worker: WorkerHandle) -> str:
    return f" after retirement: {worker.retire_reason}" if worker.retire_reason else ""
