"""The admin process: a child of the master that serves the admin endpoint, and how the master binds its
socket, starts it, restarts it when it dies and stops it last.

Why a child and not the master's own loop: rendering /metrics and parsing HTTP from whoever can reach the
admin port is work the supervisor should never wait on or crash from, and /livez can still tell whether the
master's loop turns, from the heartbeat the master writes into the scoreboard on every turn. The master
binds the socket (so a privileged port or a bad address fails the start with exit 2, and connections queue
while the child restarts); the child never runs app code: it closes the app's listeners at once (the master
must be able to close them at shutdown and have new connections refused), drops privileges like the
workers, freezes what it inherited away from the garbage collector, and dies with the master
(PR_SET_PDEATHSIG, and a check of its parent on every tick).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import select
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

from corral.admin.app_metrics import AppMetricsDir
from corral.admin.identity import start_ticks
from corral.core.contract import MASTER_SIGNALS
from corral.core.privileges import Identity, drop_privileges
from corral.core.scoreboard import Scoreboard
from corral.core.settings import Settings
from corral.core.sockets import BindError, create_listeners, describe
from corral.proctitle import set_title

if TYPE_CHECKING:
    from corral.config import Config

__all__ = ["AdminLaunch", "AdminProcess", "serve_admin", "shed_one"]

ADMIN_BACKLOG = 128
ADMIN_CONNECTIONS = 64  # scrapers and probes; more is someone misbehaving (the longest idle ones are shed)
# Probes and scrapes send their request at once and rarely reuse a connection for long: whoever holds one
# open without a request, or sends its head slowly, is cut soon, so they cannot keep the probes out.
ADMIN_KEEPALIVE = 2.0
ADMIN_HEADER_TIMEOUT = 3.0
# A scraper that stops reading a /metrics answer holds its connection (and, past the socket buffers, the
# answer) only this long: a busy connection is never shed to make room.
ADMIN_SEND_TIMEOUT = 5.0
STOP_GRACE = 2.0
MAX_BACKOFF = 30.0
STABLE_AFTER = 10.0  # an admin process that lived this long resets the back-off
BIND_RETRY = 1.0
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class AdminLaunch:
    """What the admin process needs from the master."""

    cfg: Config
    sock: socket.socket
    scoreboard: Scoreboard
    listener_names: list[str]
    identity: Identity | None
    master_pid: int
    app_metrics: AppMetricsDir | None = None  # the app's prometheus_client multiprocess directory, when summed
    master_start_ticks: int | None = None  # published in /status: how `corral reload` knows the master


class AdminProcess:
    """The master's side: the admin socket and the child serving it."""

    def __init__(
        self,
        cfg: Config,
        scoreboard: Scoreboard,
        listeners: list[socket.socket],
        listener_names: list[str],
        identity: Identity | None,
        logger: logging.Logger,
        close_in_child: Callable[[], None],
        app_metrics: AppMetricsDir | None = None,
    ) -> None:
        self.cfg = cfg
        self.app_metrics = app_metrics
        assert cfg.settings.metrics.admin_bind is not None, "an admin process is only made for an admin_bind"
        self.address: str = cfg.settings.metrics.admin_bind
        self.scoreboard = scoreboard
        self.listeners = listeners
        self.listener_names = listener_names
        self.identity = identity
        self.log = logger
        self.close_in_child = close_in_child  # what only the master may hold (its wake pipe, systemd's socket)
        self.sock: socket.socket | None = None
        self.pid = 0
        self.started_at = 0.0
        self.failures = 0
        self.next_start = 0.0
        self.bind_retry_at: float | None = None  # a new master of a binary upgrade waits for the old one's port
        self.serving = True  # False once the master shuts down: no more restarts

    def bind(self, *, upgrading: bool) -> str | None:
        """Bind the admin address; a one-line problem for the caller to exit with, or None.

        The new master of a binary upgrade finds the address held by the old master's admin process: it
        retries (see keep_running) and serves it once the old master is gone.
        """
        owner = (self.identity.uid, self.identity.gid) if self.identity is not None else None
        try:
            umask = self.cfg.settings.process.umask
            (self.sock,) = create_listeners([self.address], ADMIN_BACKLOG, umask=umask, owner=owner)
        except BindError as exc:
            reason = str(exc).removeprefix(f"bind {self.address!r}: ")
            if not upgrading:
                return f"admin_bind {self.address!r}: {reason}"
            if self.bind_retry_at is None:
                self.log.info("Admin endpoint %s: %s; taking it over once the old master exits", self.address, reason)
            self.bind_retry_at = time.monotonic() + BIND_RETRY
            return None
        self.bind_retry_at = None
        self.log.info("Admin endpoint on %s", describe(self.sock))
        return None

    def keep_running(self, now: float) -> None:
        """Once per master loop turn while serving: (re)start the child when it is due."""
        if not self.serving:
            return
        if self.sock is None:
            if self.bind_retry_at is not None and now >= self.bind_retry_at:
                self.bind(upgrading=True)
            if self.sock is None:
                return
        if self.pid == 0 and now >= self.next_start:
            self.spawn()

    def spawn(self) -> None:
        assert self.sock is not None
        master = os.getpid()
        launch = AdminLaunch(
            self.cfg, self.sock, self.scoreboard, self.listener_names, self.identity, master,
            self.app_metrics, start_ticks(master),
        )  # fmt: skip
        # As for workers: signals stay blocked across fork, so none lands in the child's copy of the master's
        # handlers before it has reset them.
        signal.pthread_sigmask(signal.SIG_BLOCK, MASTER_SIGNALS)
        try:
            pid = os.fork()
            if pid == 0:
                self._become_admin(launch)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, MASTER_SIGNALS)
        self.pid = pid
        self.started_at = time.monotonic()
        self.log.debug("Started the admin process pid %d", pid)

    def _become_admin(self, launch: AdminLaunch) -> NoReturn:
        code = 1
        try:
            self.close_in_child()
            for sock in self.listeners:
                sock.close()
            code = serve_admin(launch)
        except BaseException:
            logging.getLogger("corral.error").exception("The admin process crashed")
        finally:
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(OSError, ValueError):
                    stream.flush()
        os._exit(code)

    def reaped(self, pid: int, status: int) -> bool:
        """Whether `pid` was the admin process (then it is restarted, with back-off if it keeps dying)."""
        if pid == 0 or pid != self.pid:
            return False
        self.pid = 0
        code = os.waitstatus_to_exitcode(status)
        how = f"exit status {code}" if code >= 0 else f"killed by signal {-code}"
        if not self.serving:
            self.log.info("The admin process pid %d exited (%s)", pid, how)
            return True
        now = time.monotonic()
        if now - self.started_at > STABLE_AFTER:
            self.failures = 0
        self.failures += 1
        delay = min(MAX_BACKOFF, 0.5 * 2 ** (self.failures - 2)) if self.failures > 1 else 0.0
        self.next_start = now + delay
        self.log.error("The admin process pid %d exited (%s); restarting it in %.1f s", pid, how, delay)
        return True

    def close_socket(self) -> None:
        """In a freshly forked worker: the admin port is not the worker's to hold."""
        if self.sock is not None:
            self.sock.close()

    def stop(self) -> None:
        """Last thing at master exit: TERM the child, KILL it after a grace period, close the socket."""
        if self.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            _wait_for_exit(self.pid, STOP_GRACE)
            if not self._reaped_now():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(self.pid, 0)
                self.pid = 0
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def _reaped_now(self) -> bool:
        try:
            pid, _ = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            pid = self.pid  # someone else reaped it
        if pid:
            self.pid = 0
        return pid != 0


def _wait_for_exit(pid: int, timeout: float) -> None:
    """Block until child `pid` exits or `timeout` passes, woken by the exit itself (its pidfd turns readable);
    the caller reaps it."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return  # gone already
    except OSError:  # a kernel before 5.3: one bounded wait, then the caller's SIGKILL
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
            time.sleep(0.01)
        return
    try:
        select.select([fd], [], [], timeout)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------------------------
# The child's side


def serve_admin(launch: AdminLaunch) -> int:
    """Run in the admin child after fork: serve until TERM (or the master is gone); the exit status."""
    for sig in MASTER_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
    # ^C in a terminal reaches the whole process group: the master stops this process itself, last.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGQUIT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    signal.set_wakeup_fd(-1)
    # Whatever the master holds (a preloaded app included) is never collected here: the collector must not
    # walk it, let alone run a finalizer of it.
    gc.freeze()
    if launch.identity is not None:
        drop_privileges(launch.identity)
    _die_with_master(launch.master_pid)  # after dropping privileges, which clears the death signal
    set_title(launch.cfg, "admin")

    from corral.worker.server import new_event_loop  # the serving code is only imported in the child

    loop = new_event_loop(launch.cfg.settings.application.loop)
    asyncio.set_event_loop(loop)
    try:
        return loop.run_until_complete(_AdminServer(launch, loop).serve())
    finally:
        loop.close()


def _die_with_master(master_pid: int) -> None:
    import ctypes  # here, not at the top: the master imports this module, and every worker it forks would carry it

    with contextlib.suppress(Exception):  # not Linux, or no libc to call: the tick checks the parent anyway
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != master_pid:
        os._exit(0)  # the master died before the death signal was armed


def _admin_http_settings() -> Settings:
    """The admin endpoint's HTTP settings: the table's defaults with its own limits, never the app's settings
    (the app's headers, proxy trust or access log have nothing to do with probes and scrapes)."""
    from corral.config import default_settings

    return default_settings(
        server_header="corral",
        keepalive=ADMIN_KEEPALIVE,
        header_timeout=ADMIN_HEADER_TIMEOUT,
        send_timeout=ADMIN_SEND_TIMEOUT,
        worker_connections=ADMIN_CONNECTIONS,
        proxy_headers=False,
    )


class _AdminServer:
    def __init__(self, launch: AdminLaunch, loop: asyncio.AbstractEventLoop) -> None:
        self.launch = launch
        self.loop = loop
        self.log = logging.getLogger("corral.error")
        self.stopped: asyncio.Future[None] = loop.create_future()
        self.tick_handle: asyncio.TimerHandle | None = None

    async def serve(self) -> int:
        from corral.admin.app import AdminApp
        from corral.core.scoreboard import WorkerCounters
        from corral.http.h1 import H1Protocol
        from corral.http.state import ServerState

        launch = self.launch
        self.loop.add_signal_handler(signal.SIGTERM, self._stop)
        from corral.admin.prometheus import MemoryLimitCollector
        from corral.core.sizing import memory_budget

        extra: list[Any] = [MemoryLimitCollector(memory_budget().limit_bytes)]
        if launch.app_metrics is not None:
            from corral.admin.app_metrics import AppMetricsCollector

            # Only a directory corral made is compacted: a user's is left as the user keeps it.
            metrics_dir = launch.app_metrics
            extra.append(AppMetricsCollector(metrics_dir.path, self.log, compact=metrics_dir.owned))
        app = AdminApp(
            launch.scoreboard.read_board, launch.listener_names, extra_collectors=extra,
            master_start_ticks=launch.master_start_ticks,
        )  # fmt: skip
        state = ServerState(
            _admin_http_settings(),
            loop=self.loop,
            app=app,
            logger=self.log,
            counters=WorkerCounters(),  # the admin's own requests are not the app's: never published
        )

        def protocol() -> H1Protocol:
            if len(state.connections) >= ADMIN_CONNECTIONS:
                shed_one(state.connections)  # a fresh probe gets in: the cap never refuses it while some wait idle
            return H1Protocol(state)

        if launch.sock.family == socket.AF_UNIX:
            server = await self.loop.create_unix_server(protocol, sock=launch.sock, backlog=ADMIN_BACKLOG)
        else:
            server = await self.loop.create_server(protocol, sock=launch.sock, backlog=ADMIN_BACKLOG)
        self._tick(state)
        await self.stopped
        server.close()
        if self.tick_handle is not None:
            self.tick_handle.cancel()
        for conn in list(state.connections):
            if conn.transport is not None:
                conn.transport.abort()
        return 0

    def _tick(self, state: Any) -> None:
        state.tick()
        state.sweep()
        if os.getppid() != self.launch.master_pid:
            self._stop()
            return
        self.tick_handle = self.loop.call_later(1.0, self._tick, state)

    def _stop(self) -> None:
        if not self.stopped.done():
            self.stopped.set_result(None)


def shed_one(connections: set[Any]) -> bool:
    """Close the connection that is doing least to make room for a new one: the longest idle keep-alive
    connection (or one that never sent a byte), else the oldest whose request head is still arriving. A
    connection with a request being answered is never shed. Whether one was closed."""
    idle, slow = [], []
    for conn in connections:
        if getattr(conn, "in_head", None) is None:  # a WebSocket session: never one of ours for long
            continue
        if conn.transport is None or conn.closing or conn.cycle is not None or conn.queue:
            continue
        if conn.in_head and conn.head_bytes:
            slow.append(conn)
        else:
            idle.append(conn)
    if idle:
        victim = min(idle, key=lambda conn: conn.idle_since)
    elif slow:
        victim = min(slow, key=lambda conn: conn.head_started)
    else:
        return False
    connections.discard(victim)  # now: connection_lost comes a loop turn later, after the newcomer's check
    victim.close()
    return True
