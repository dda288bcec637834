"""The open-file limit: raised to what the system allows, so a worker can hold `worker_connections` sockets.

Distributions start services with a soft limit of 1024 and a much higher hard limit (systemd: 524288). A worker
needs a descriptor per connection plus its listeners, logs and whatever the app opens, so with the soft limit
left at 1024 the default `worker_connections` (1000) could not be reached: accept() would fail with EMFILE
while the cap still says there is room. The master raises its soft limit to the hard limit once, before it
forks; the workers inherit it.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass

__all__ = ["DESCRIPTORS_BESIDES_CONNECTIONS", "OpenFilesLimit", "raise_open_files_limit"]

# Listeners, log files, the scoreboard, pipes, and what an app opens itself (database pools, files).
DESCRIPTORS_BESIDES_CONNECTIONS = 64


@dataclass(frozen=True, slots=True)
class OpenFilesLimit:
    before: int  # the soft limit found
    now: int  # the soft limit after raising it
    hard: int

    def shortfall(self, worker_connections: int) -> int:
        """How many descriptors a worker may lack to reach its connection cap (0: none)."""
        return max(0, worker_connections + DESCRIPTORS_BESIDES_CONNECTIONS - self.now)


def raise_open_files_limit() -> OpenFilesLimit:
    """Raise the soft RLIMIT_NOFILE to the hard limit (never lowers it; an unlimited hard limit is capped at
    the kernel's own per-process maximum, which setrlimit would otherwise refuse)."""
    before, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    soft = before
    wanted = hard if hard != resource.RLIM_INFINITY else _kernel_maximum()
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError):
            pass  # a sandbox may refuse: keep what we have, shortfall() tells the operator
    return OpenFilesLimit(before=before, now=soft, hard=hard)


def _kernel_maximum() -> int:
    try:
        with open("/proc/sys/fs/nr_open", encoding="ascii") as file:
            return int(file.read())
    except (OSError, ValueError):
        return 1 << 20
