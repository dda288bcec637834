"""Gunicorn-style server hooks: the `server` and `worker` objects they receive, and calling them safely.

Hooks are plain functions from the config file (on_starting, pre_fork, post_fork, ...), called with
Gunicorn's names and signatures. The objects passed in are small views that expose what hooks in the wild
read (`server.cfg`, `server.log`, `server.pid`, `worker.pid`, `worker.age`, `worker.log`, ...), not the
master's internals, so a hook cannot corrupt the supervisor's state by accident.

A hook that raises is logged with its traceback and the server carries on; only on_starting may stop a
start (see `HookFailed`).
"""

from __future__ import annotations

import inspect
import logging
import os
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from corral.core.settings import HooksSettings

if TYPE_CHECKING:
    from corral.config import Config

__all__ = ["HookFailed", "ServerView", "WorkerView", "accepted_arity", "call_hook", "run_on_starting"]


class HookFailed(Exception):
    """A hook raised; str(error) is one line naming the hook."""


class ServerView:
    """The `server` argument of master-side hooks (Gunicorn passes its Arbiter). Its `cfg` is the Config,
    whose flat reads (`server.cfg.workers`) are Gunicorn's."""

    def __init__(self, cfg: Config, log: logging.Logger, pid: int, count_workers: Callable[[], int]) -> None:
        self.cfg = cfg
        self.log = log
        self.pid = pid
        self.master_pid = pid
        self.reexec_pid = 0
        self.LISTENERS: list[socket.socket] = []
        self.WORKERS: dict[int, WorkerView] = {}
        self.num_workers: int = 0
        self._count_workers = count_workers

    @property
    def proc_name(self) -> str:
        return self.cfg.settings.process.proc_name or "corral"

    @property
    def app(self) -> Any:
        # Gunicorn's `server.app` is its Application object, whose `.cfg` hooks sometimes read.
        return self

    @property
    def address(self) -> list[str]:
        return list(self.cfg.settings.socket.bind)

    @property
    def live_workers(self) -> int:
        """How many worker processes are running now (num_workers is how many are wanted)."""
        return self._count_workers()

    def __repr__(self) -> str:
        return f"<corral master pid={self.pid}>"


class WorkerView:
    """The `worker` argument of hooks (Gunicorn passes its Worker object).

    The master creates it just before the fork (pid None until then); the child keeps its own copy and fills
    in what only the worker knows (the app, `booted`, the request count).
    """

    def __init__(
        self,
        age: int,
        ppid: int,
        cfg: Config,
        log: logging.Logger,
        sockets: list[socket.socket],
        max_requests: int,
        app: Any = None,
    ) -> None:
        self.age = age  # Gunicorn's spawn counter: 1 for the first worker ever started, and so on
        self.pid: int | None = None
        self.ppid = ppid
        self.cfg = cfg
        self.log = log
        self.sockets = sockets
        self.max_requests = max_requests
        self.timeout = cfg.settings.worker.timeout
        self.app = app
        self.alive = True
        self.booted = False
        self.aborted = False
        self._count_requests: Callable[[], int] = lambda: 0

    @property
    def nr(self) -> int:
        """Requests served so far (Gunicorn's name)."""
        return self._count_requests()

    def count_requests_with(self, counter: Callable[[], int]) -> None:
        self._count_requests = counter

    def became(self, pid: int) -> None:
        self.pid = pid

    def __repr__(self) -> str:
        return f"<corral worker pid={self.pid} age={self.age}>"


def call_hook(hooks: HooksSettings, name: str, *args: Any, log: logging.Logger | None = None) -> bool:
    """Call hook `name` if the config defines it; a hook that raises is logged and reported as False."""
    hook: Callable[..., Any] | None = getattr(hooks, name)
    if hook is None:
        return True
    try:
        hook(*args)
    except Exception:
        (log or logging.getLogger("corral.error")).exception("Hook %s raised (pid %d); carrying on", name, os.getpid())
        return False
    return True


def run_on_starting(hooks: HooksSettings, server: ServerView) -> None:
    """on_starting may stop the start: it runs before anything is bound, so there is nothing to undo."""
    hook = hooks.on_starting
    if hook is None:
        return
    try:
        hook(server)
    except Exception as exc:
        server.log.exception("Hook on_starting raised")
        raise HookFailed(f"on_starting hook failed: {type(exc).__name__}: {exc}") from None


def accepted_arity(func: Callable[..., Any], choices: tuple[int, ...]) -> int:
    """The largest number of positional arguments in `choices` that `func` accepts (post_request takes 2-4)."""
    for arity in sorted(choices, reverse=True):
        try:
            inspect.signature(func).bind(*range(arity))
        except TypeError:
            continue
        except ValueError:
            return max(choices)
        return arity
    return min(choices)
