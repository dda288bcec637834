"""The app's own prometheus_client metrics on the admin /metrics: the multiprocess directory the workers write
to (prepared by the master before any app code is imported, removed when it exits), dead workers' live gauges
dropped when the master reaps them, and the collector that sums every worker's files at scrape time (folding
exited workers' files into archives first, so that recycling does not pile them up).

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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from corral.core.privileges import Identity
from corral.core.settings import MetricsSettings

__all__ = [
    "ENV",
    "RESERVED_PREFIX",
    "AppMetricsCollector",
    "AppMetricsDir",
    "AppMetricsError",
    "compact_dead_files",
    "prepare_app_metrics",
]

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


def prepare_app_metrics(metrics: MetricsSettings, identity: Identity | None) -> AppMetricsDir | None:
    """In the master, before a preloaded app is imported and before any bind: the directory, exported in the
    environment that every worker inherits; None when app metrics are off or cannot be read anywhere."""
    if not metrics.app_metrics or not metrics.admin_bind:
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
    values: Any = sys.modules.get("prometheus_client.values")  # its ValueClass is set at import, untyped
    if values is not None:
        values.ValueClass = values.get_value_class()


# ---------------------------------------------------------------------------------------------------------------
# Compaction: every worker that ever ran leaves files behind (its counters must keep counting in the totals), and
# with max_requests recycling that is thousands of files a day, all read at every scrape. The files of processes
# that have exited are folded into one archive file per kind, the way the collector would have summed them.

Value = tuple[float, float]  # value, timestamp


def _add(old: Value, new: Value) -> Value:
    return old[0] + new[0], max(old[1], new[1])


# File kinds (the name before the pid) whose values from several processes fold into one, and how. Gauges in the
# `all` modes keep one series per process (a pid label), and live gauges are removed when their worker is
# reaped: neither is folded.
_FOLDS: dict[str, Callable[[Value, Value], Value]] = {
    "counter": _add,
    "histogram": _add,
    "summary": _add,
    "gauge_sum": _add,
    "gauge_max": max,
    "gauge_min": min,
    "gauge_mostrecent": lambda old, new: new if new[1] > old[1] else old,
}
_ARCHIVE = "archive"


def _exited(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False  # it exists (another user's process)
    return False


def compact_dead_files(path: str, exited: Callable[[int], bool] = _exited) -> int:
    """Fold the files of processes that have exited into `<kind>_archive.db`; how many files were folded.

    Only processes that no longer exist are folded: a live worker keeps its file mapped and writes to it.
    A crash between the archive's replacement and the removal of the folded files would count them twice
    (never lose them)."""
    from prometheus_client.mmap_dict import MmapedDict

    dead: dict[str, list[str]] = {}
    for name in os.listdir(path):
        kind, _, pid = name.removesuffix(".db").rpartition("_")
        if name.endswith(".db") and kind in _FOLDS and pid.isdigit() and exited(int(pid)):
            dead.setdefault(kind, []).append(os.path.join(path, name))
    for kind, files in dead.items():
        fold = _FOLDS[kind]
        archive = os.path.join(path, f"{kind}_{_ARCHIVE}.db")
        values: dict[str, Value] = {}
        for source in ([archive] if os.path.exists(archive) else []) + files:
            for key, value, timestamp, _ in MmapedDict.read_all_values_from_file(source):
                values[key] = fold(values[key], (value, timestamp)) if key in values else (value, timestamp)
        staging = archive + ".new"  # not *.db: the collector never reads it half-written
        with contextlib.suppress(FileNotFoundError):
            os.remove(staging)
        out = MmapedDict(staging)
        try:
            for key, (value, timestamp) in values.items():
                out.write_value(key, value, timestamp)
        finally:
            out.close()
        os.replace(staging, archive)
        for source in files:
            os.remove(source)
    return sum(len(files) for files in dead.values())


class AppMetricsCollector:
    """In the admin process: the app's metrics from every worker's files, summed as prometheus_client's
    multiprocess mode defines; a metric named like corral's own is left out (logged once). With `compact`,
    the files of exited workers are folded first (this process is the only one that does it)."""

    def __init__(self, path: str, logger: logging.Logger, *, compact: bool = False) -> None:
        from prometheus_client.multiprocess import MultiProcessCollector

        self.path = path
        self.inner = MultiProcessCollector(None, path=path)
        self.log = logger
        self.compact = compact
        self.warned: set[str] = set()

    def collect(self) -> Iterator[Any]:
        # A damaged or vanished file must cost neither corral's own metrics nor the rest of the app's.
        if self.compact:
            try:
                compact_dead_files(self.path)
            except Exception:
                self._warn_once("compact", "Could not fold exited workers' metric files; they are read as they are")
        try:
            families = list(self.inner.collect())
        except Exception:
            self._warn_once("read", "Could not read the app's metrics")
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

    def _warn_once(self, what: str, message: str) -> None:
        if what not in self.warned:
            self.warned.add(what)
            self.log.exception(message)
