"""The master: binds the listeners, forks workers and keeps the pool whole, never dropping capacity.

One loop, one wait point: signal handlers only queue the signal and wake the loop through a self-pipe; each
turn handles the queued signals, reaps children and supervises the pool from the scoreboard. Every kind of
recycling (max_requests, memory, lifetime, HUP, scale-down) marks a worker for retirement with a reason;
`_retire_what_capacity_allows` then TERMs retirees only while enough READY workers remain to carry the load.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import gc
import logging
import os
import random
import select
import signal
import socket
import ssl
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from corral import __version__
from corral.admin.app_metrics import AppMetricsDir, prepare_app_metrics
from corral.compiled import describe_build
from corral.core import sizing
from corral.core.contract import BOOT_FAILURES, MASTER_SIGNALS, ExitCode, MasterSignal, RestartReason
from corral.core.open_files import raise_open_files_limit
from corral.core.privileges import Identity, resolve_identity
from corral.core.scoreboard import MasterState, Scoreboard, Slot, WorkerState
from corral.core.settings import ApplicationSettings
from corral.core.sockets import (
    BindError,
    create_listeners,
    describe,
    systemd_listeners,
    tcp_migrate_req_enabled,
)
from corral.hooks import HookFailed, ServerView, WorkerView, call_hook, run_on_starting
from corral.master import log_output, upgrade
from corral.master.admin_monitor import Monitor
from corral.master.pidfile import Pidfile, PidfileError
from corral.master.reloader import Reloader, check_reload_setup, start_reloader
from corral.master.systemd import PoolView, SystemdNotifier, SystemdReporter
from corral.proctitle import set_title
from corral.tls import TLSConfigError, server_context

if TYPE_CHECKING:
    from corral.config import Config

__all__ = ["Arbiter", "run"]

# After SIGABRT (timeout), how long the worker's faulthandler gets to print its traceback before SIGKILL.
ABORT_GRACE = 2.0
# Beyond graceful_timeout, how long a draining worker may take to exit before SIGKILL.
DRAIN_MARGIN = 5.0
# Consecutive samples above max_worker_memory before a worker is replaced (RSS is noisy).
MEMORY_STRIKES = 3
MAX_BACKOFF = 10.0
# The loop's wait when nothing is booting (signals, SIGCHLD included, end it at once), and while a worker
# boots (READY is seen only by reading its slot).
IDLE_WAIT = 0.5
BOOT_POLL = 0.05
# Workers dying after READY: this many within CRASH_WINDOW seconds make a crash loop. It is logged (once per
# window), and until CRASH_WINDOW passes without a crash every worker serves one connection at a time (see
# worker/server.py): a request that kills its worker then takes no other request with it. Not at the first
# crash: a pool that loses a worker now and then keeps its concurrency.
CRASH_WINDOW = 10.0
CRASH_LOOP_AT = 2
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
    retire_reason: RestartReason | None = None
    term_sent_at: float | None = None
    abort_sent_at: float | None = None
    kill_sent: bool = False
    memory_strikes: int = 0
    last_rss_sample: float = 0.0
    boot_failed: str | None = None
    view: WorkerView | None = None  # what hooks see of this worker

    @property
    def stopping(self) -> bool:
        """Told to go (TERM, ABRT or KILL): no longer counted as serving capacity."""
        return self.term_sent_at is not None or self.abort_sent_at is not None or self.kill_sent


def _raise_open_files_limit(worker_connections: int, logger: logging.Logger) -> None:
    limit = raise_open_files_limit()
    if limit.now != limit.before:
        logger.debug("open-file limit raised from %d to %d", limit.before, limit.now)
    if limit.shortfall(worker_connections):
        logger.warning(
            "the open-file limit (%d) is too low for worker_connections=%d: a worker may fail to accept "
            "connections; raise it (systemd: LimitNOFILE=, docker: --ulimit nofile=)",
            limit.now,
            worker_connections,
        )


def run(cfg: Config, reload_config: Callable[[], Config] | None = None, *, app: Any = None) -> int:
    """Bind, start the pool and supervise it until told to stop; the exit status says how it ended.

    `app`: an app object given to corral.run() instead of an import string; the workers are forked with it
    (as with preload_app), so it is never imported again."""
    from corral.logging import LogConfigError, configure_logging

    settings = cfg.settings
    try:
        logger = configure_logging(settings.logging)  # before anything is bound; the workers inherit it
    except LogConfigError as exc:
        print(f"corral: error: {exc}", file=sys.stderr)
        return ExitCode.CONFIG
    log_output.guard_master_log()  # a log reader that stalls must never stall supervision
    _raise_open_files_limit(settings.worker.worker_connections, logger)
    server = ServerView(cfg, logger, os.getpid(), lambda: 0)
    start_cwd = os.getcwd()  # where a USR2 re-exec starts again, whatever chdir says
    upgrade_from = upgrade.upgrade_parent()
    try:
        if settings.application.chdir:
            os.chdir(settings.application.chdir)
        apply_process_environment(settings.application)
        run_on_starting(settings.hooks, server)
    except OSError as exc:
        print(f"corral: error: {_one_line(exc)}", file=sys.stderr)
        return ExitCode.CONFIG
    except HookFailed as exc:
        print(f"corral: error: {exc}", file=sys.stderr)
        return ExitCode.FAILED
    try:
        # Before binding: a bad certificate or key stops the start with nothing bound. In the master: it may
        # read key files that only root can, before the workers drop privileges.
        ssl_context = server_context(cfg)
    except TLSConfigError as exc:
        print(f"corral: error: {exc}", file=sys.stderr)
        return ExitCode.CONFIG
    app_metrics: AppMetricsDir | None = None
    try:
        if settings.development.reload:
            check_reload_setup(cfg)  # after chdir: relative reload paths mean what they will mean when watched
        process, socket_settings = settings.process, settings.socket
        identity = resolve_identity(process.user, process.group, process.initgroups)
        owner = (identity.uid, identity.gid) if identity is not None else None
        # Before a preloaded app creates its first metric, and before anything is bound.
        app_metrics = prepare_app_metrics(settings.metrics, identity)
        listeners = (
            upgrade.inherited_listeners()
            or systemd_listeners()
            or create_listeners(
                list(socket_settings.bind),
                socket_settings.backlog,
                umask=process.umask,
                owner=owner,
                reuse_port=socket_settings.reuse_port,
            )
        )
    except (BindError, ValueError, OSError) as exc:
        if app_metrics is not None:
            app_metrics.close()
        print(f"corral: error: {_one_line(exc)}", file=sys.stderr)
        return ExitCode.CONFIG
    # A master started by a binary upgrade writes <pidfile>.2 until the old master is gone (Gunicorn's way).
    pid_path = settings.process.pidfile
    pidfile = Pidfile(pid_path + (".2" if upgrade_from else "")) if pid_path else None
    server.reexec_pid = 0
    server.master_pid = upgrade_from or 0
    try:
        if pidfile is not None:
            pidfile.create(os.getpid())
        upgrading = UpgradeState(start_cwd, upgrade_from, pidfile)
        return _run_pool(
            cfg, listeners, logger, identity, reload_config, server, ssl_context, upgrading, app_metrics, app
        )
    except PidfileError as exc:
        print(f"corral: error: {exc}", file=sys.stderr)
        return ExitCode.CONFIG
    finally:
        if pidfile is not None:
            pidfile.unlink()
        if app_metrics is not None:
            app_metrics.close()
        for sock in listeners:
            with contextlib.suppress(OSError):
                sock.close()


def apply_process_environment(application: ApplicationSettings) -> None:
    """raw_env (KEY=VALUE) into the environment and pythonpath onto sys.path, as Gunicorn does at start and
    again on HUP: the app, its workers and the hooks all see them. env_file's variables fill in what is unset."""
    if application.env_file:
        from corral.envfile import apply_env_file

        try:
            apply_env_file(application.env_file)
        except ValueError as exc:  # checked when the config was loaded; changed since
            raise OSError(f"env_file: {exc}") from None
    for item in application.raw_env:
        key, _, value = item.partition("=")
        os.environ[key] = value
    for path in reversed((application.pythonpath or "").split(",")):
        path = os.path.abspath(path.strip()) if path.strip() else ""
        if path and path not in sys.path:
            sys.path.insert(0, path)


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.filename or 'chdir'}: {exc.strerror}" if exc.filename else exc.strerror
    return str(exc)


@dataclass
class UpgradeState:
    """What the binary upgrade (USR2) needs: where to exec from, and the old master while it lives."""

    start_cwd: str
    upgrade_from: int | None = None  # the old master's pid, while this master is the new one of an upgrade
    pidfile: Pidfile | None = None
    new_master_pid: int = 0  # the new master this one exec'd (USR2), while it runs


def _run_pool(
    cfg: Config,
    listeners: list[socket.socket],
    logger: logging.Logger,
    identity: Identity | None,
    reload_config: Callable[[], Config] | None,
    server: ServerView,
    ssl_context: ssl.SSLContext | None = None,
    upgrading: UpgradeState | None = None,
    app_metrics: AppMetricsDir | None = None,
    app: Any = None,
) -> int:
    application = cfg.settings.application
    if cfg.settings.socket.reuse_port and tcp_migrate_req_enabled() is False:
        logger.warning(
            "reuse_port: net.ipv4.tcp_migrate_req is 0, so connections still queued on a replaced worker's "
            "own socket are reset; set it to 1 (sysctl -w net.ipv4.tcp_migrate_req=1)"
        )
    # Taken from the environment before a preloaded app is imported: the app must not notify in our name.
    systemd = SystemdNotifier.from_environ()
    if app is not None or application.preload_app:
        from corral.http import eager
        from corral.loading import AppLoadError, app_as_asgi3, load_app

        eager.install()
        try:
            if app is not None:
                app = app_as_asgi3(app, application.interface)
            else:
                assert cfg.app is not None, "corral runs only with an app"
                app = load_app(cfg.app, factory=application.factory, app_dir=application.app_dir,
                               interface=application.interface)  # fmt: skip
        except AppLoadError as exc:
            print(f"corral: error: {exc}", file=sys.stderr)
            return ExitCode.APP
    arbiter = Arbiter(
        cfg,
        listeners,
        logger,
        app=app,
        reload_config=reload_config,
        identity=identity,
        server=server,
        systemd=systemd,
        ssl_context=ssl_context,
        upgrading=upgrading,
        app_metrics=app_metrics,
    )
    return arbiter.run()


class Arbiter:
    """Supervises the worker pool."""

    def __init__(
        self,
        cfg: Config,
        listeners: list[socket.socket],
        logger: logging.Logger,
        *,
        app: Any = None,
        reload_config: Callable[[], Config] | None = None,
        identity: Identity | None = None,
        server: ServerView | None = None,
        systemd: SystemdNotifier | None = None,
        ssl_context: ssl.SSLContext | None = None,
        upgrading: UpgradeState | None = None,
        app_metrics: AppMetricsDir | None = None,
    ) -> None:
        self.cfg = cfg
        # Built here, in the master, and inherited by every worker forked from now on (rebuilt on HUP).
        self.ssl_context = ssl_context
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
        # heartbeat, admin endpoint, StatsD, the app's metrics
        self.monitor = Monitor(cfg, self.scoreboard, listeners, logger, app_metrics)
        self.ever_ready = False
        self.failures_in_a_row = 0
        self.next_spawn_at = 0.0
        self.crash_times: deque[float] = deque()  # when workers died after READY, within CRASH_WINDOW
        self.crash_warned_at = -CRASH_WINDOW
        self.crash_loop_until = 0.0  # monotonic; workers serve one connection at a time until then
        self.signals: list[int] = []
        self.wake_r, self.wake_w = os.pipe()
        self.exit_code: int | None = None
        self.stopping: str | None = None  # "graceful" | "fast"
        self.reloader: Reloader | None = None  # --reload's file watcher
        # Normally given by _run_pool, which takes the variables out of the environment before a preloaded app.
        self.systemd = systemd if systemd is not None else SystemdNotifier.from_environ()
        self.systemd_report = SystemdReporter(self.systemd) if self.systemd is not None else None
        self.spawned = 0  # workers started so far: each one's `age`, as Gunicorn numbers them
        self.upgrading = upgrading or UpgradeState(os.getcwd())
        self.server = server or ServerView(cfg, logger, self.pid, lambda: 0)
        self.server._count_workers = lambda: len(self.workers)
        self.server.LISTENERS = listeners
        self.server.num_workers = self.target

    # --- the loop -------------------------------------------------------------------------------

    def run(self) -> int:
        # Before the first worker: it reads the metrics settings from the scoreboard, and an admin address that
        # cannot be bound must stop the start (exit 2) with no worker started.
        problem = self.monitor.start(
            identity=self.identity,
            close_in_child=self._close_master_fds,
            upgrading=bool(self.upgrading.upgrade_from),
        )
        if problem is not None:
            print(f"corral: error: {problem}", file=sys.stderr)
            return ExitCode.CONFIG
        self._install_signals()
        set_title(self.cfg, "master")
        self.scoreboard.set_master(self.pid, MasterState.STARTING, self.generation)
        self.log.info("corral %s (%s)", __version__, describe_build())  # which build an operator is running
        for sock in self.listeners:
            self.log.info("Listening on %s", describe(sock, "https" if self.ssl_context is not None else "http"))
        self._hook("nworkers_changed", self.server, self.target, None)
        self._hook("when_ready", self.server)
        self.log.info("Starting %d worker%s (pid %d)", self.target, "s" * (self.target != 1), self.pid)
        try:
            if self.cfg.settings.development.reload:
                self.reloader = start_reloader(self.cfg, self.log, self._reload_on_change)
            _import_worker_code(self.cfg.settings.application.loop)
            while self.stopping is None:
                self._spawn_missing()
                self._wait(self._next_timeout())
                self._handle_signals()
                self._reap()
                if self.stopping is None:
                    self._check_upgrade()
                    self._supervise()
            code = self._shut_down()
            self._hook("on_exit", self.server)
            return code
        finally:
            self._stop_reloader()  # first: it may write to the wake pipe until stopped
            self._restore_signals()
            os.close(self.wake_r)
            os.close(self.wake_w)
            if self.systemd is not None:
                self.systemd.close()

    def _next_timeout(self) -> float:
        """Poll fast while a worker boots: it says READY only in its scoreboard slot, which sends no signal.
        Otherwise sleep until the next tick: a worker's exit wakes the loop (SIGCHLD), and the deadlines of
        stopping workers (SIGKILL after a grace period) are coarse."""
        booting = any(not w.ready and not w.stopping for w in self.workers.values())
        # Idle, half a second: replacement requests (max_requests) are seen soon, at no measurable cost.
        return BOOT_POLL if booting else IDLE_WAIT

    def _wait(self, timeout: float) -> None:
        self.monitor.turn(self.target, serving=self.stopping is None)  # the heartbeat /livez checks
        log_output.flush_pending()  # log lines that waited for a slow reader
        timeout = self._tell_systemd(timeout)
        try:
            readable, _, _ = select.select([self.wake_r], [], [], timeout)
        except InterruptedError:
            return
        if readable:
            with contextlib.suppress(BlockingIOError):
                os.read(self.wake_r, 4096)

    def _tell_systemd(self, timeout: float) -> float:
        """Once per loop turn, before waiting: news for systemd and its watchdog; the wait that still allows."""
        if self.systemd_report is None:
            return timeout
        # Fed from this single wait point, the watchdog starves whenever the master is stuck anywhere else.
        view = PoolView(
            target=self.target,
            serving=sum(1 for w in self.workers.values() if w.ready and not w.stopping),
            new_ready=sum(1 for w in self._keepers() if w.ready),
            alive=len(self.workers),
            reloading=self.rollout_from is not None,
            stopping=self.stopping,
        )
        return min(timeout, self.systemd_report.update(view))

    # --- signals --------------------------------------------------------------------------------

    _HANDLED = MASTER_SIGNALS

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
        if len(self.signals) < 16 or signum in (MasterSignal.TERM, MasterSignal.INT, MasterSignal.QUIT):
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
        self._set_target(self.target + 1)
        self.log.info("Received TTIN: %d workers wanted", self.target)

    def _on_sigttou(self) -> None:
        if self.target <= 1:
            self.log.info("Received TTOU: already at 1 worker, the minimum")
            return
        self._set_target(self.target - 1)
        self.log.info("Received TTOU: %d workers wanted", self.target)
        keepers = sorted(self._keepers(), key=lambda w: w.started, reverse=True)
        if len(keepers) > self.target:
            keepers[0].retire_reason = RestartReason.SCALE

    def _on_sighup(self) -> None:
        if self.systemd_report is not None:
            self.systemd_report.reload_started()  # RELOADING=1 now; READY=1 once the rollout ends either way
        self.log.info("Received HUP: reloading")
        if self.reload_config is not None:
            try:
                cfg = self.reload_config()
            except Exception as exc:  # a broken config file must not take the running pool down
                self.log.error("Reload aborted: the configuration could not be loaded: %s", exc)
                return
            if not self._reload_tls(cfg):
                return
            new, old = cfg.settings, self.cfg.settings
            if new.socket.bind != old.socket.bind:
                self.log.warning("bind changed in the configuration: a restart is needed to apply it")
            workers_changed = new.worker.workers != old.worker.workers
            self.cfg = self.server.cfg = cfg
            apply_process_environment(new.application)
            if workers_changed:
                self._set_target(self._initial_target())
        if self.target == 0:  # workers stopped by WINCH during an upgrade: HUP brings them back (roll back)
            self._set_target(self._initial_target())
        self._hook("on_reload", self.server)
        self.rollout_from = self.generation if self.rollout_from is None else self.rollout_from
        self.generation += 1
        self.failures_in_a_row = 0
        self.next_spawn_at = 0.0
        self.scoreboard.set_master(self.pid, MasterState.RELOADING, self.generation)

    def _reload_tls(self, cfg: Config) -> bool:
        """Re-read the certificate files for the workers started from now on; False aborts the reload."""
        try:
            self.ssl_context = server_context(cfg)
        except TLSConfigError as exc:  # like a broken config file: keep the old context and the old workers
            self.log.error("Reload aborted: %s", exc)
            return False
        return True

    def _on_sigusr2(self) -> None:
        state = self.upgrading
        if state.new_master_pid:
            self.log.warning("Received USR2: ignored, a new master (pid %d) is already running", state.new_master_pid)
            return
        if state.upgrade_from:
            self.log.warning("Received USR2: ignored, the old master (pid %d) is still running", state.upgrade_from)
            return
        state.new_master_pid = upgrade.exec_new_master(
            self.listeners,
            state.start_cwd,
            lambda: self._hook("pre_exec", self.server),
            self.systemd.environ_for if self.systemd is not None else None,
        )
        self.server.reexec_pid = state.new_master_pid
        self.log.info("Received USR2: started a new master (pid %d) on the same sockets", state.new_master_pid)

    def _on_sigwinch(self) -> None:
        # Only during an upgrade: a terminal sends WINCH on every resize, and must not stop the workers.
        if not self.upgrading.new_master_pid:
            self.log.info("Received WINCH: ignored, no binary upgrade in progress")
            return
        self.log.info("Received WINCH: stopping this (old) master's workers; the new master serves")
        self._set_target(0)
        for worker in self.workers.values():
            worker.retire_reason = worker.retire_reason or RestartReason.UPGRADE

    def _check_upgrade(self) -> None:
        """A new master of an upgrade takes over the pidfile once the old master is gone (we are re-parented)."""
        state = self.upgrading
        if state.upgrade_from is None or os.getppid() == state.upgrade_from:
            return
        self.log.info("The old master (pid %d) has exited: this master takes over", state.upgrade_from)
        state.upgrade_from = None
        self.server.master_pid = 0
        pid_path = self.cfg.settings.process.pidfile
        if state.pidfile is not None and pid_path:
            try:
                state.pidfile.rename(pid_path)
            except PidfileError as exc:
                self.log.error("%s", exc)

    def _new_master_exited(self, code: int) -> None:
        self.log.error(
            "The new master (pid %d) exited (%s); this master keeps serving%s",
            self.upgrading.new_master_pid,
            _describe_exit(code),
            "; send HUP to start its workers again" if self.target == 0 else "",
        )
        self.upgrading.new_master_pid = 0
        self.server.reexec_pid = 0

    def _on_sigusr1(self) -> None:
        from corral.logging import reopen_error_log

        reopen_error_log()
        for worker in self.workers.values():
            self._send(worker, signal.SIGUSR1)

    # --- hooks ----------------------------------------------------------------------------------

    def _hook(self, name: str, *args: Any) -> None:
        call_hook(self.cfg.settings.hooks, name, *args, log=self.log)

    def _set_target(self, target: int) -> None:
        old, self.target = self.target, target
        self.server.num_workers = target
        if target != old:
            self._hook("nworkers_changed", self.server, target, old)

    def _reload_on_change(self, changed: list[str]) -> None:
        # Called from the reloader's thread: do only what the HUP signal handler does (queue it, wake the
        # loop); the loop then re-reads the config and replaces the workers as for a real HUP.
        self._queue_signal(signal.SIGHUP, None)
        with contextlib.suppress(BlockingIOError):
            os.write(self.wake_w, b"\0")

    def _stop_reloader(self) -> None:
        if self.reloader is not None:
            self.reloader.stop()
            self.reloader = None

    # --- spawning -------------------------------------------------------------------------------

    def _initial_target(self) -> int:
        workers = self.cfg.settings.worker.workers
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
        reason = self.monitor.spawn_reason(
            self.workers.values(), reloading=self.rollout_from is not None, ever_ready=self.ever_ready
        )
        slot.claim(0, self.generation, now, reason)
        cfg, worker_settings = self.cfg, self.cfg.settings.worker
        max_requests = worker_settings.max_requests
        max_requests += random.randint(0, worker_settings.max_requests_jitter) if max_requests else 0
        self.spawned += 1
        view = WorkerView(self.spawned, self.pid, cfg, self.log, self.listeners, max_requests, app=self.app)
        self._hook("pre_fork", self.server, view)
        # Signals stay blocked across fork: one arriving before the child has reset the master's handlers
        # would otherwise be queued in the child's copy of the master and lost. The child unblocks them
        # once its own handling is in place (worker/process.py).
        signal.pthread_sigmask(signal.SIG_BLOCK, self._HANDLED)
        try:
            pid = os.fork()
            if pid == 0:
                self._become_worker(slot, max_requests, view)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, self._HANDLED)
        lifetime = worker_settings.max_worker_lifetime
        deadline = now + lifetime + random.uniform(0, lifetime * 0.1) if lifetime else None
        view.became(pid)
        self.server.WORKERS[pid] = view
        self.workers[pid] = WorkerHandle(
            pid, slot, self.generation, now, max_requests, lifetime_deadline=deadline, view=view
        )
        self.log.debug("Started worker pid %d (generation %d)", pid, self.generation)
        return True

    def _become_worker(self, slot: Slot, max_requests: int, view: WorkerView) -> None:
        from corral.worker.process import WorkerLaunch, run_worker_process

        self._close_master_fds()
        self.monitor.close_in_worker()
        run_worker_process(
            WorkerLaunch(
                self.cfg,
                self.listeners,
                self.scoreboard,
                slot,
                self.generation,
                self.app,
                max_requests,
                self.identity,
                server=self.server,
                view=view,
                ssl_context=self.ssl_context,
            )
        )

    def _close_master_fds(self) -> None:
        """In a forked child (a worker, the admin process): close what only the master may hold; only the
        master speaks to systemd."""
        os.close(self.wake_r)
        os.close(self.wake_w)
        if self.systemd is not None:
            self.systemd.close()

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
                if pid == self.upgrading.new_master_pid:
                    self._new_master_exited(os.waitstatus_to_exitcode(status))
                self.monitor.reaped(pid, status)  # the admin process: restarted while serving
                continue  # otherwise not ours: as PID 1 in a container we reap every orphan that lands on us
            self._worker_exited(worker, os.waitstatus_to_exitcode(status))

    def _worker_exited(self, worker: WorkerHandle, code: int) -> None:
        if not worker.ready and _reached_ready(worker):
            # It booted and died between two of our looks at its slot: a crash, not a boot failure.
            worker.ready = True
            self.ever_ready = True
        self.monitor.worker_exited(worker, code)  # counts why it ended, before the slot is released
        worker.slot.release()
        self.server.WORKERS.pop(worker.pid, None)
        if worker.view is not None:
            worker.view.alive = False
            self._hook("child_exit", self.server, worker.view)
        cause = _describe_exit(code)
        if worker.stopping and worker.boot_failed is None:
            self.log.info("Worker pid %d exited (%s)%s", worker.pid, cause, _reason_suffix(worker))
            return
        boot_failure = worker.boot_failed or (None if worker.ready else BOOT_FAILURES.get(code))
        if boot_failure is not None:
            self._boot_failed(worker, boot_failure)
            return
        self.log.error("Worker pid %d died unexpectedly (%s); starting a replacement", worker.pid, cause)
        if worker.ready:
            self._crashed()
        else:
            self._back_off()  # it never booted (a crash in the app's import, say): no fork bomb

    def _crashed(self) -> None:
        """A worker that booted and served died: replace it at once. Back-off is for workers that cannot boot;
        delaying this one would let a request that kills its worker empty the pool. Each successor must boot
        again before it can die this way, so the restart rate is bounded by the app's boot time."""
        self.failures_in_a_row = 0
        self.next_spawn_at = 0.0
        now = time.monotonic()
        self.crash_times.append(now)
        while self.crash_times and now - self.crash_times[0] > CRASH_WINDOW:
            self.crash_times.popleft()
        if len(self.crash_times) < CRASH_LOOP_AT:
            return
        isolating = self.cfg.settings.worker.crash_loop_isolation
        if isolating:
            self._isolate_requests(now)
        if now >= self.crash_warned_at + CRASH_WINDOW:
            self.crash_warned_at = now
            isolation = (
                f"each worker serves one connection at a time until {CRASH_WINDOW:g} s pass without a crash"
                if isolating
                else "workers keep serving concurrently (crash_loop_isolation is off)"
            )
            self.log.warning(
                "Crash loop: %d workers died after booting in the last %g s (pool of %d); each is replaced at once, "
                "and %s. Look for the request or task that kills them "
                '(corral_worker_restarts_total{reason="crash"})',
                len(self.crash_times),
                CRASH_WINDOW,
                self.target,
                isolation,
            )

    def _isolate_requests(self, now: float) -> None:
        """Declare the crash loop to the workers: one connection at a time each, until CRASH_WINDOW passes
        without a crash."""
        starts = now >= self.crash_loop_until
        self.crash_loop_until = now + CRASH_WINDOW
        # Before the replacement is forked: it reads this as it boots.
        self.scoreboard.set_crash_loop_until(self.crash_loop_until)
        if starts:
            # The workers serving now would see it at their next tick, up to a second of concurrent serving in
            # which a crash takes other requests with it. WINCH tells them now; a worker ignores it until it
            # serves (its default action), and reads the scoreboard when it starts anyway.
            for worker in self.workers.values():
                self._send(worker, signal.SIGWINCH)

    def _boot_failed(self, worker: WorkerHandle, why: str) -> None:
        if not self.ever_ready:
            self.log.error("Worker pid %d failed to boot: %s; stopping (see the error above)", worker.pid, why)
            self.exit_code = ExitCode.APP
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
                    worker.retire_reason = RestartReason.BOOT_FAILURE
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
            self._set_target(capped)
            self.cpu_budget = None

    def _check_liveness(self, worker: WorkerHandle, snapshot: Any, now: float) -> None:
        timeouts = self.cfg.settings.worker
        if worker.abort_sent_at is not None:
            if not worker.kill_sent and now - worker.abort_sent_at > ABORT_GRACE:
                self._kill(worker)
            return
        if worker.term_sent_at is not None:
            if not worker.kill_sent and now - worker.term_sent_at > timeouts.graceful_timeout + DRAIN_MARGIN:
                self.log.warning("Worker pid %d did not finish draining in time: killing it", worker.pid)
                self._kill(worker)
            return
        if not worker.ready:
            if timeouts.boot_timeout and now - worker.started > timeouts.boot_timeout:
                worker.boot_failed = f"it did not boot within boot_timeout ({timeouts.boot_timeout:g} s)"
                self._kill(worker)
            return
        silent = now - snapshot.heartbeat
        if timeouts.timeout and silent > timeouts.timeout:
            self.log.error(
                "Worker pid %d silent for %.1f s (timeout %g s): sending SIGABRT; its traceback follows in the "
                "error log, then it is replaced",
                worker.pid,
                silent,
                timeouts.timeout,
            )
            worker.abort_sent_at = now
            worker.retire_reason = RestartReason.TIMEOUT
            self._send(worker, signal.SIGABRT)

    def _check_recycling(self, worker: WorkerHandle, snapshot: Any, now: float) -> None:
        max_worker_memory = self.cfg.settings.worker.max_worker_memory
        if snapshot.retire_requested:
            worker.retire_reason = RestartReason.MAX_REQUESTS
        elif worker.lifetime_deadline is not None and now > worker.lifetime_deadline:
            worker.retire_reason = RestartReason.LIFETIME
        elif max_worker_memory and snapshot.heartbeat != worker.last_rss_sample:
            worker.last_rss_sample = snapshot.heartbeat
            worker.memory_strikes = worker.memory_strikes + 1 if snapshot.rss > max_worker_memory else 0
            if worker.memory_strikes >= MEMORY_STRIKES:
                worker.retire_reason = RestartReason.MEMORY
        if worker.retire_reason is not None:
            self.log.info("Replacing worker pid %d (%s)", worker.pid, worker.retire_reason.label)

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
                worker.retire_reason = RestartReason.RELOAD
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
        if self.upgrading.new_master_pid and self.systemd is not None:
            # The new master of a binary upgrade is the service from now on: without this, systemd would take
            # our exit for the service's and stop it.
            self.systemd.notify(MAINPID=self.upgrading.new_master_pid)
        self._stop_reloader()
        graceful = self.stopping == "graceful"
        self.scoreboard.set_master(self.pid, MasterState.DRAINING if graceful else MasterState.STOPPING, 0)
        drain_delay = self.cfg.settings.worker.drain_delay
        if graceful and drain_delay:
            self._drain_delay(drain_delay)
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
        limit = (self.cfg.settings.worker.graceful_timeout + DRAIN_MARGIN) if graceful else 3.0
        deadline = time.monotonic() + limit
        while self.workers and time.monotonic() < deadline:
            self._wait(min(IDLE_WAIT, deadline - time.monotonic()))  # a worker's exit (SIGCHLD) wakes it
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
        self.monitor.stop()  # last: /readyz said 503 throughout the drain
        self.scoreboard.close()
        self.log.info("Master exiting")
        return self.exit_code if self.exit_code is not None else ExitCode.OK

    def _drain_delay(self, seconds: float) -> None:
        """Keep serving while load balancers notice the drain (readiness already reports it)."""
        self.log.info("Draining: still serving for drain_delay (%g s)", seconds)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and self.stopping == "graceful":
            self._wait(min(IDLE_WAIT, deadline - time.monotonic()))
            self._handle_signals()
            self._reap()

    def _reap_all(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.workers and time.monotonic() < deadline:
            self._reap()
            if self.workers:
                self._wait(min(IDLE_WAIT, deadline - time.monotonic()))  # SIGCHLD wakes it

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


@functools.cache
def _import_worker_code(loop: str) -> None:
    """Import the worker's modules (HTTP, ASGI, WSGI, the event loop's) into the master before it forks any
    worker. Every worker then starts with them loaded and shares their memory copy-on-write, instead of each
    importing its own copy (several MiB per worker), and the import, most of a worker's boot, is done once:
    a pool that keeps losing workers (a crash loop) gets its replacements sooner. `loop` is the setting the
    workers pick their event loop by (worker/server.py's new_event_loop): uvloop, which brings
    concurrent.futures with it, is imported only where they would run it.

    Then the master's heap is frozen (its garbage collected first): the cycle collector leaves the objects
    alive now alone, in the master and in every worker. Otherwise a worker's first full collection writes to
    the header of every object it inherited, and the kernel copies each page holding one: about 4 MiB more
    private memory per worker."""
    import corral.worker.process  # noqa: F401

    if loop in ("auto", "uvloop"):
        with contextlib.suppress(ImportError):  # "auto" without uvloop installed: asyncio's loop, already in
            import uvloop  # noqa: F401
    gc.collect()
    gc.freeze()


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


def _reached_ready(worker: WorkerHandle) -> bool:
    """Whether the worker's slot says it became READY (ready_at is only ever written on READY)."""
    snapshot = worker.slot.read()
    return snapshot.pid == worker.pid and snapshot.ready_at > 0.0


def _reason_suffix(worker: WorkerHandle) -> str:
    return f" after retirement: {worker.retire_reason.label}" if worker.retire_reason else ""
