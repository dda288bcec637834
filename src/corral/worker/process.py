"""A worker process from fork to exit: signals, tracebacks on SIGABRT, process title, app, event loop.

The exit status tells the master why a worker ended (see `WorkerExit`); the master turns those into log lines,
boot-failure decisions and restart counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import logging
import os
import signal
import socket
import ssl
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

from corral.core.contract import MASTER_SIGNALS, WorkerExit
from corral.core.privileges import Identity, drop_privileges
from corral.core.scoreboard import MasterState, Scoreboard, Slot
from corral.core.settings import HooksSettings
from corral.core.sockets import worker_listeners
from corral.hooks import ServerView, WorkerView, call_hook
from corral.http import eager
from corral.http.request_hooks import with_request_hooks
from corral.http.wsgi import serving_interface
from corral.proctitle import set_title
from corral.worker.server import StopBeforeServing, Worker, new_event_loop

if TYPE_CHECKING:
    from corral.config import Config

__all__ = ["WorkerLaunch", "run_worker_process"]


@dataclass(frozen=True)
class WorkerLaunch:
    """Everything a freshly forked worker needs from the master."""

    cfg: Config
    listeners: list[socket.socket]
    scoreboard: Scoreboard
    slot: Slot
    generation: int
    app: Any | None  # the preloaded app, or None to import it in the worker
    max_requests: int  # this worker's own, jitter included; 0: never
    identity: Identity | None  # who to become after fork, or None to stay
    server: ServerView | None = None  # what the hooks see of the master
    view: WorkerView | None = None  # what the hooks see of this worker
    ssl_context: ssl.SSLContext | None = None  # built by the master (it can read root-only key files)


def run_worker_process(launch: WorkerLaunch) -> NoReturn:
    """Run in the child after fork; never returns."""
    code: int = WorkerExit.CRASH
    try:
        code = _serve(launch)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else WorkerExit.CRASH
    except BaseException:
        logging.getLogger("corral.error").exception("Worker crashed")
    finally:
        if launch.view is not None:
            launch.view.alive = False
        call_hook(launch.cfg.settings.hooks, "worker_exit", launch.server, launch.view)
        _flush_std_streams()
    os._exit(code)


def _serve(launch: WorkerLaunch) -> int:
    cfg, slot, app, view = launch.cfg, launch.slot, launch.app, launch.view
    settings, hooks = cfg.settings, cfg.settings.hooks
    _reset_signals()
    stop_before_serving = StopBeforeServing()
    stop_before_serving.install()
    slot.claim(os.getpid(), launch.generation, time.monotonic())
    logger = logging.getLogger("corral.error")
    if view is not None:
        view.became(os.getpid())
    # Before dropping privileges, as in Gunicorn: post_fork hooks may need what only the master's user can do.
    call_hook(hooks, "post_fork", launch.server, view, log=logger)
    if launch.identity is not None:
        drop_privileges(launch.identity)
    # On SIGABRT (the master's timeout) print every thread's Python stack to the error log, so the operator
    # sees where the worker was stuck before it died.
    faulthandler.enable(file=_error_log_stream(logger), all_threads=True)
    set_title(cfg, "worker")
    eager.install()
    if app is None:
        from corral.loading import AppLoadError, load_app

        assert cfg.app is not None, "the master starts workers only for an app"
        application = settings.application
        try:
            app = load_app(cfg.app, factory=application.factory, app_dir=application.app_dir,
                           interface=application.interface)  # fmt: skip
        except AppLoadError as exc:
            logger.error("Worker could not load the app: %s", exc)
            return WorkerExit.APP_LOAD
    if view is not None:
        view.app = app
    call_hook(hooks, "post_worker_init", view, log=logger)
    if view is not None:
        view.booted = True
    app = with_request_hooks(serving_interface(app, settings.worker, settings.http, logger), hooks, view, logger)
    if hooks.worker_abort is not None:
        _call_worker_abort_on_sigabrt(hooks, view, logger)
    loop = new_event_loop(settings.application.loop)
    asyncio.set_event_loop(loop)

    reuse_port = settings.socket.reuse_port
    own_sockets = worker_listeners(launch.listeners, settings.socket.backlog, reuse_port)

    def server_stopping() -> bool:
        # The master is shutting down, not replacing this worker (reload, recycling, TTOU).
        return launch.scoreboard.read_master().state in (MasterState.DRAINING, MasterState.STOPPING)

    def final_shutdown() -> bool:
        # With reuse_port the queue is this worker's own: whatever waits in it must be answered now.
        return reuse_port or server_stopping()

    def on_quit() -> None:
        if view is not None:
            view.alive = False
        call_hook(hooks, "worker_int", view, log=logger)

    worker = Worker(
        settings,
        app,
        own_sockets,
        loop,
        logger,
        slot=slot,
        final_shutdown=final_shutdown,
        server_stopping=server_stopping,
        max_requests=launch.max_requests,
        on_quit=on_quit,
        ssl_context=launch.ssl_context,
        stop_before_serving=stop_before_serving,
    )
    if view is not None:
        view.count_requests_with(lambda: worker.counters.requests)
    try:
        code = loop.run_until_complete(worker.serve())
    finally:
        loop.close()
    return WorkerExit.LIFESPAN if code == WorkerExit.LIFESPAN else WorkerExit.OK


def _call_worker_abort_on_sigabrt(hooks: HooksSettings, view: WorkerView | None, logger: logging.Logger) -> None:
    """With a worker_abort hook, SIGABRT (the master's timeout) runs Python code: print the tracebacks as
    faulthandler would, call the hook, then die of SIGABRT as without it. Python handlers only run between
    bytecodes, so a worker stuck inside C code gets no traceback this way; the master kills it anyway."""

    def on_abort(signum: int, frame: Any) -> None:
        faulthandler.dump_traceback(file=_error_log_stream(logger), all_threads=True)
        if view is not None:
            view.aborted = True
            view.alive = False
        call_hook(hooks, "worker_abort", view, log=logger)
        _flush_std_streams()
        faulthandler.disable()
        signal.signal(signal.SIGABRT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGABRT)

    signal.signal(signal.SIGABRT, on_abort)


def _reset_signals() -> None:
    for sig in MASTER_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    signal.set_wakeup_fd(-1)


def _error_log_stream(logger: logging.Logger) -> Any:
    """The file the error log writes to (faulthandler needs a real file descriptor)."""
    for handler in logger.handlers:
        stream = getattr(handler, "stream", None)
        if stream is not None and hasattr(stream, "fileno"):
            try:
                stream.fileno()
            except (OSError, ValueError):
                continue
            return stream
    return sys.stderr


def _flush_std_streams() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
