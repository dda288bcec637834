"""The contract between corral's processes: worker and master states, why a worker is replaced, exit
statuses and the master's signals. One enum per concept, so a typo is an error rather than a value."""

from __future__ import annotations

import enum
import signal
import types
from collections.abc import Mapping

__all__ = [
    "BOOT_FAILURES",
    "MASTER_SIGNALS",
    "ExitCode",
    "MasterSignal",
    "MasterState",
    "RestartReason",
    "WorkerExit",
    "WorkerState",
]


class WorkerState(enum.IntEnum):
    """A worker's state as its scoreboard slot stores it (one byte)."""

    EMPTY = 0
    BOOTING = 1
    READY = 2
    RETIRING = 3
    DRAINING = 4


class MasterState(enum.IntEnum):
    """The master's state as the scoreboard header stores it (one byte)."""

    STARTING = 0
    RUNNING = 1
    RELOADING = 2
    DRAINING = 3
    STOPPING = 4


class RestartReason(enum.IntEnum):
    """Why a worker was stopped or replaced (the arbiter's retire reason; the scoreboard counts them), and why
    a worker was started (its slot says). START is no restart: the pool's first workers. `label` is the
    metric label and the word in log lines."""

    START = 0
    CRASH = 1
    TIMEOUT = 2
    MAX_REQUESTS = 3
    MEMORY = 4
    LIFETIME = 5
    RELOAD = 6
    SCALE = 7
    UPGRADE = 8
    BOOT_FAILURE = 9

    @property
    def label(self) -> str:
        return self.name.lower()


class WorkerExit(enum.IntEnum):
    """A worker process's exit status: how it tells the master why it ended."""

    OK = 0
    CRASH = 1  # an exception escaped the worker
    APP_LOAD = 3  # the app could not be imported
    LIFESPAN = 4  # lifespan startup failed


# The worker exits that mean "could not boot", and how the master says so.
BOOT_FAILURES: Mapping[int, str] = types.MappingProxyType({
    WorkerExit.APP_LOAD: "the app could not be imported",
    WorkerExit.LIFESPAN: "lifespan startup failed",
})  # fmt: skip


class ExitCode(enum.IntEnum):
    """The `corral` command's exit status (the master's, and the control commands')."""

    OK = 0
    FAILED = 1  # the on_starting hook raised; a control command (status, reload, scale) failed
    CONFIG = 2  # a configuration, TLS or bind error
    APP = 3  # the app cannot be imported or its lifespan startup fails at first start


class MasterSignal(enum.IntEnum):
    """The signals the master handles (README's table); each value is the signal's number."""

    TERM = signal.SIGTERM  # graceful shutdown
    INT = signal.SIGINT  # fast shutdown
    QUIT = signal.SIGQUIT  # fast shutdown
    HUP = signal.SIGHUP  # reload the config, replace every worker
    TTIN = signal.SIGTTIN  # one worker more
    TTOU = signal.SIGTTOU  # one worker fewer
    USR1 = signal.SIGUSR1  # reopen the log files
    USR2 = signal.SIGUSR2  # binary upgrade
    WINCH = signal.SIGWINCH  # stop the old master's workers during a binary upgrade
    CHLD = signal.SIGCHLD  # a child ended: reap it


# Every signal the master handles, blocks around fork and a fresh child must reset.
MASTER_SIGNALS: tuple[MasterSignal, ...] = tuple(MasterSignal)
