"""The app's own prometheus_client metrics on the admin /metrics: the multiprocess directory the workers write
to (prepared by the master before any app code is imported, removed when it exits), dead workers' live gauges
dropped when the master reaps them, and the collector that sums every worker's files at scrape time.

prometheus_client's multiprocess mode keeps each process's values in files named after its pid in
PROMETHEUS_MULTIPROC_DIR; the variable must be set before the app creates its first metric, which is why the
master sets it before a preloaded app is imported (and before forking any worker). A directory the user gave
(PROMETHEUS_MULTIPROC_DIR already set, as Gunicorn set-ups do) is used as it is: corral neither empties it
nor removes it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from corral.master.privileges import Identity

__all__ = ["ENV", "RESERVED_PREFIX", "AppMetricsCollector", "AppMetricsDir", "AppMetricsError", "prepare_app_metrics"]

ENV = "PROMETHEUS_MULTIPROC_DIR"
_LEGACY_ENV = "prometheus_multiproc_dir"  # older prometheus_client releases read this spelling
# The directory a corral master made for itself. A new master exec'd by a binary upgrade inherits the
# environment: this tells it that PROMETHEUS_MULTIPROC_DIR is its predecessor's (removed when that one exits),
# not the user's, so it makes its own.
_MADE_BY_CORRAL_ENV = "CORRAL_APP_METRICS_DIR"
# corral's own metric names: an app metric spelled like them would make the exposition ambiguous.
RESERVED_PREFIX = "corral_"


class AppMetricsError(ValueError):
    """The app metrics directory cannot be used: a one-line reason that names the setting."""


@dataclass
class AppMetricsDir:
    """The multiprocess directory of this master run."""

    path: str
    owned: bool  # made by corral: removed at exit
    owner_pid: int  # the master: forked children never remove it

    def worker_exited(self, pid: int) -> None:
        """In the master, for every reaped worker: its live gauges (livesum, liveall, ...) stop counting.
        Counters and histograms keep its files: multiprocess mode sums the dead with the living."""
        from prometheus_client.multiprocess import mark_process_dead

        with contextlib.suppress(OSError):
            mark_process_dead(pid, self.path)

    def close(self) -> None:
        """At master exit: remove the directory corral made (never a user's, never from a forked child)."""
        if not self.owned or os.getpid() != self.owner_pid:
            return
        shutil.rmtree(self.path, ignore_errors=True)
        for name in (ENV, _MADE_BY_CORRAL_ENV):
            if os.environ.get(name) == self.path:
                del os.environ[name]


def prepare_app_metrics(cfg: Any, identity: Identity | None) -> AppMetricsDir | None:
    """In the master, before a preloaded app is imported and before any bind: the directory, exported in the
    environment that every worker inherits; None when app metrics are off or cannot be read anywhere."""
    if not getattr(cfg, "app_metrics", False) or not getattr(cfg, "admin_bind", None):
        return None  # without the admin endpoint, nobody would read them: leave the app's metrics as they are
    if importlib.util.find_spec("prometheus_client") is None:
        return None  # the app cannot use it either
    given = os.environ.get(ENV) or os.environ.get(_LEGACY_ENV)
    if given and given != os.environ.get(_MADE_BY_CORRAL_ENV):
        if not os.path.isdir(given):
            raise AppMetricsError(
                f"app_metrics: {ENV}={given!r} is not a directory (create it, or unset it to let corral make one)"
            )
        metrics_dir = AppMetricsDir(os.path.abspath(given), owned=False, owner_pid=os.getpid())
    else:
        metrics_dir = AppMetricsDir(_make_private_dir(identity), owned=True, owner_pid=os.getpid())
        os.environ[_MADE_BY_CORRAL_ENV] = metrics_dir.path
    os.environ[ENV] = metrics_dir.path
    _refresh_value_class()
    return metrics_dir


def _make_private_dir(identity: Identity | None) -> str:
    try:
        path = tempfile.mkdtemp(prefix="corral-metrics-")  # mode 0700, under TMPDIR or /tmp
        if identity is not None:
            os.chown(path, identity.uid, identity.gid)  # the workers write there, the admin process reads
    except OSError as exc:
        where = os.environ.get("TMPDIR") or "/tmp"
        raise AppMetricsError(
            f"app_metrics: cannot make a directory for the app's metrics under {where}: "
            f"{exc.strerror or exc} (mount a writable /tmp, set TMPDIR, or --no-app-metrics)"
        ) from exc
    return path


def _refresh_value_class() -> None:
    """prometheus_client picks in-process or multiprocess values when it is first imported. A config file that
    imported it before the variable was set (to write a child_exit hook, say) would leave a preloaded app's
    metrics in the master's memory, where no worker's count reaches the files: choose again."""
    values = sys.modules.get("prometheus_client.values")
    if values is not None:
        values.ValueClass = values.get_value_class()


class AppMetricsCollector:
    """In the admin process: the app's metrics from every worker's files, summed as prometheus_client's
    multiprocess mode defines; a metric named like corral's own is left out (logged once)."""

    def __init__(self, path: str, logger: logging.Logger) -> None:
        from prometheus_client.multiprocess import MultiProcessCollector

        self.inner = MultiProcessCollector(None, path=path)
        self.log = logger
        self.warned: set[str] = set()

    def collect(self) -> Iterator[Any]:
        try:
            families = list(self.inner.collect())
        except Exception:  # a damaged file must not cost corral's own metrics their scrape
            if "" not in self.warned:
                self.warned.add("")
                self.log.exception("Could not read the app's metrics")
            return
        for family in families:
            if family.name.startswith(RESERVED_PREFIX):
                if family.name not in self.warned:
                    self.warned.add(family.name)
                    self.log.warning(
                        "The app's metric %r is left out of /metrics: names starting with %r are corral's",
                        family.name, RESERVED_PREFIX,
                    )  # fmt: skip
                continue
            yield family
