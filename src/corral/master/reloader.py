"""--reload: watches the source tree from a background thread of the master and reports each settled burst of
relevant changes (what to watch, which changes count, when a burst of saves is over) to a callback."""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
import os
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from corral.config import Config

__all__ = [
    "DEFAULT_INCLUDE",
    "LONGEST_BURST",
    "NOISE",
    "QUIET_PERIOD",
    "WATCH_START_TIMEOUT",
    "ChangeFilter",
    "Debouncer",
    "Reloader",
    "WatchPlan",
    "check_reload_setup",
    "plan_watch",
    "start_reloader",
]

DEFAULT_INCLUDE = ("*.py",)
# Never worth a reload, whatever reload_include says: tool and VCS directories, bytecode, and the temporary,
# swap, backup and lock files editors write next to the file being saved (Emacs' .#app.py even ends in .py).
NOISE = (
    ".git", ".hg", ".svn", "__pycache__", ".venv", "venv", "node_modules", ".mypy_cache", ".pytest_cache",
    ".ruff_cache", ".hypothesis", ".tox", ".nox", ".idea", ".vscode", "*.egg-info",
    "*.pyc", "*.pyo", "*.swp", "*.swo", "*.swx", "*~", ".#*", "#*#", "4913", "*___jb_tmp___", "*___jb_old___",
    "flycheck_*", ".DS_Store",
)  # fmt: skip
# A burst of changes (an editor's save, a formatter run, a git checkout) is over once nothing relevant has
# changed for QUIET_PERIOD seconds; a tree that never stops changing still reloads every LONGEST_BURST.
QUIET_PERIOD = 0.3
LONGEST_BURST = 2.0
_ENGINES: dict[str, bool | None] = {"auto": None, "poll": True, "inotify": False}  # -> watchfiles' force_polling
_ADDED = 1  # watchfiles.Change.added (not imported here: watchfiles is optional until --reload is used)
WATCH_START_TIMEOUT = 5.0  # how long the master waits at start for the watch to be in place
_TICK_MS = 100  # how often the watching thread wakes without changes, to finish a settled burst
_NAMED_IN_LOG = 3
_WATCH_ATTEMPTS = 5  # in a row: a directory that vanishes between the walk and the watch just means "walk again"

# A process forked while the watching thread is inside a write to stderr inherits that stream's lock held, and
# its first log line would hang forever: so a fork waits until the thread's log write is done.
_THREAD_LOGGING = threading.Lock()
_fork_guard_installed = False


def _install_fork_guard() -> None:
    global _fork_guard_installed
    if not _fork_guard_installed:
        lock = _THREAD_LOGGING
        os.register_at_fork(before=lock.acquire, after_in_parent=lock.release, after_in_child=lock.release)
        _fork_guard_installed = True


def _require_watchfiles() -> Any:
    try:
        return importlib.import_module("watchfiles")
    except ImportError:
        raise ValueError(
            "reload: needs the watchfiles package "
            "(pip install watchfiles; from corral's checkout: pip install '.[reload]')"
        ) from None


# --------------------------------------------------------------------------------------------------
# What to watch.
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WatchPlan:
    """What --reload watches, with every path absolute.

    roots: directories whose whole tree is watched (minus excluded directories); files: files that always
    count, wherever they are (reload_extra_files and the config file); include/exclude: the glob patterns.
    """

    roots: tuple[str, ...]
    files: tuple[str, ...]
    include: tuple[str, ...]
    exclude: tuple[str, ...]
    force_polling: bool | None = None


def _outermost(directories: Iterable[str]) -> tuple[str, ...]:
    """Drop directories inside another one of the list (their tree is watched already)."""
    unique = sorted(set(directories), key=len)
    kept: list[str] = []
    for directory in unique:
        if not any(directory == k or directory.startswith(k.rstrip(os.sep) + os.sep) for k in kept):
            kept.append(directory)
    return tuple(kept)


def _config_file_path(spec: str | None, cwd: str) -> str | None:
    if spec is None or spec.startswith("python:"):
        return None  # a module config is found through sys.path, not a file we can name here
    return os.path.normpath(os.path.join(cwd, spec.removeprefix("file:")))


def plan_watch(cfg: Config, cwd: str) -> WatchPlan:
    """The WatchPlan for cfg, relative paths resolved against cwd; ValueError names a missing directory."""
    development, app_dir = cfg.settings.development, cfg.settings.application.app_dir
    for directory in development.reload_dirs:
        if not os.path.isdir(os.path.join(cwd, directory)):
            raise ValueError(f"reload_dirs: no such directory: {directory!r}")
    for file in development.reload_extra_files:
        if not os.path.isdir(os.path.dirname(os.path.join(cwd, file))):
            raise ValueError(f"reload_extra_files: the directory of {file!r} does not exist")
    if development.reload_dirs:
        roots = [os.path.join(cwd, d) for d in development.reload_dirs]
    else:
        roots = [cwd, *([os.path.join(cwd, app_dir)] if os.path.isdir(os.path.join(cwd, app_dir)) else [])]
    config_file = _config_file_path(cfg.config_file, cwd)
    files = [os.path.join(cwd, f) for f in development.reload_extra_files] + ([config_file] if config_file else [])
    return WatchPlan(
        roots=_outermost(os.path.normpath(root) for root in roots),
        files=tuple(dict.fromkeys(os.path.normpath(f) for f in files)),
        include=(*DEFAULT_INCLUDE, *development.reload_include),
        exclude=(*NOISE, *development.reload_exclude),
        force_polling=_ENGINES[development.reload_engine],
    )


def check_reload_setup(cfg: Config) -> None:
    """Everything --reload needs that can be checked before binding; ValueError is one line naming the setting."""
    _require_watchfiles()
    plan_watch(cfg, os.getcwd())


# --------------------------------------------------------------------------------------------------
# Which changes count.
# --------------------------------------------------------------------------------------------------


def _excluded(parts: tuple[str, ...], patterns: Iterable[str]) -> bool:
    # A pattern without "/" names a file or directory anywhere; one with "/" a path from the watched directory.
    for pattern in patterns:
        if "/" in pattern:
            if any(fnmatchcase("/".join(parts[:depth]), pattern) for depth in range(1, len(parts) + 1)):
                return True
        elif any(fnmatchcase(part, pattern) for part in parts):
            return True
    return False


def _included(parts: tuple[str, ...], patterns: Iterable[str]) -> bool:
    relative = "/".join(parts)
    return any(fnmatchcase(relative if "/" in pattern else parts[-1], pattern) for pattern in patterns)


class ChangeFilter:
    """Decides which changed paths deserve a reload, and which directories the watch must cover."""

    def __init__(self, plan: WatchPlan) -> None:
        self.plan = plan
        self._files = frozenset(plan.files)

    def _relative_parts(self, path: str) -> tuple[str, ...] | None:
        """The path's parts below the root that holds it; None outside every root (and for a root itself)."""
        for root in self.plan.roots:
            prefix = root.rstrip(os.sep) + os.sep
            if path.startswith(prefix):
                return tuple(path[len(prefix) :].split(os.sep))
        return None

    def triggers(self, path: str) -> bool:
        """Whether a change of this file (modified, added or deleted) calls for a reload."""
        if path in self._files:
            return True  # named explicitly: counts even when it matches no include or an exclude
        parts = self._relative_parts(path)
        if parts is None:
            return False
        return not _excluded(parts, self.plan.exclude) and _included(parts, self.plan.include)

    def watched_directory(self, path: str) -> bool:
        """Whether this directory (in a root) is watched: excluded trees are never walked nor watched."""
        parts = self._relative_parts(path)
        return parts is not None and not _excluded(parts, self.plan.exclude)

    def directories(self) -> list[str]:
        """Every directory to watch, each on its own (not recursively): the roots' trees minus excluded
        directories, and the directories of the explicitly named files.

        Watching directory by directory keeps .venv, node_modules and .git out of the kernel's watch list and out
        of every pass of the polling engine, which a recursive watch of the root would walk in full.
        """
        found: dict[str, None] = {}
        for root in self.plan.roots:
            for directory, _files in self._walk(root):
                found[directory] = None
        for file in self.plan.files:
            found.setdefault(os.path.dirname(file), None)
        return list(found)

    def _walk(self, top: str) -> Iterator[tuple[str, list[str]]]:
        for directory, subdirectories, files in os.walk(top):
            subdirectories[:] = [d for d in subdirectories if self.watched_directory(os.path.join(directory, d))]
            yield directory, files

    def files_under(self, directory: str) -> list[str]:
        """The files in a newly appeared directory that count (their own creation happened before it was watched)."""
        return [
            os.path.join(parent, name)
            for parent, files in self._walk(directory)
            for name in files
            if self.triggers(os.path.join(parent, name))
        ]


# --------------------------------------------------------------------------------------------------
# When a burst of changes is over.
# --------------------------------------------------------------------------------------------------


class Debouncer:
    """Gathers changed paths until none has come for `quiet` seconds (or `longest` after the first one)."""

    def __init__(self, quiet: float = QUIET_PERIOD, longest: float = LONGEST_BURST) -> None:
        self.quiet = quiet
        self.longest = longest
        self._paths: dict[str, None] = {}  # insertion-ordered: the log names files in the order they changed
        self._first = 0.0
        self._last = 0.0

    def add(self, path: str, now: float) -> None:
        if not self._paths:
            self._first = now
        self._paths[path] = None
        self._last = now

    def take_settled(self, now: float) -> list[str]:
        """The burst's paths once it is over (and forget them); [] while it goes on or when nothing changed."""
        if not self._paths or (now - self._last < self.quiet and now - self._first < self.longest):
            return []
        paths = list(self._paths)
        self._paths.clear()
        return paths


# --------------------------------------------------------------------------------------------------
# The watching thread.
# --------------------------------------------------------------------------------------------------


def _forget_bytecode(paths: Iterable[str]) -> None:
    # A .pyc is trusted when the source's mtime (whole seconds) and size match: an edit of the same size within
    # the second after a worker cached the previous version would otherwise be served stale.
    for path in paths:
        if path.endswith(".py"):
            for optimization in ("", 1, 2):
                with contextlib.suppress(OSError, ValueError):
                    os.unlink(importlib.util.cache_from_source(path, optimization=optimization))


def _shown(path: str, cwd: str) -> str:
    return os.path.relpath(path, cwd) if path.startswith(cwd.rstrip(os.sep) + os.sep) else path


def _describe(paths: list[str], cwd: str) -> str:
    named = ", ".join(_shown(path, cwd) for path in paths[:_NAMED_IN_LOG])
    more = len(paths) - _NAMED_IN_LOG
    return f"{named} and {more} more" if more > 0 else named


class Reloader:
    """Watches a WatchPlan from a daemon thread and calls on_change(paths), from that thread, once per settled
    burst of relevant changes (after logging one line naming them). stop() guarantees no call after it returns.
    """

    def __init__(
        self,
        plan: WatchPlan,
        on_change: Callable[[list[str]], None],
        log: logging.Logger,
        *,
        debouncer: Debouncer | None = None,
    ) -> None:
        self.filter = ChangeFilter(plan)
        self.on_change = on_change
        self.log = log
        self.debouncer = debouncer or Debouncer()
        self._stop = threading.Event()
        self._watching = threading.Event()  # set once the watcher delivers its first batch: edits now count
        self._calling = threading.RLock()  # held while on_change runs, so stop() can wait it out
        self._thread: threading.Thread | None = None
        self._cwd = os.getcwd()

    def start(self) -> None:
        _install_fork_guard()
        self._thread = threading.Thread(target=self._run, name="corral-reloader", daemon=True)
        self._thread.start()

    def wait_until_watching(self, timeout: float) -> bool:
        """Whether the watch is in place within `timeout` seconds (the watcher starts in the thread)."""
        return self._watching.wait(timeout)

    def stop(self, timeout: float = 2.0) -> None:
        with self._calling:
            self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)  # a daemon thread: even if it overstays, it never keeps the process up

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                with contextlib.closing(self._watch(self.filter.directories())) as batches:
                    self.follow(batches)
                failures = 0
            except FileNotFoundError as exc:
                failures += 1
                if failures >= _WATCH_ATTEMPTS:
                    self._give_up(exc)
                    return
                self._stop.wait(_TICK_MS / 1000)
            except Exception as exc:
                self._give_up(exc)
                return

    def _give_up(self, exc: Exception) -> None:
        # The pool keeps serving; only automatic reloading is lost, and the log says so.
        with _THREAD_LOGGING:
            self.log.error("reload: watching for changes failed, edits no longer reload: %s", exc)

    def _watch(self, directories: list[str]) -> Generator[set[tuple[Any, str]], None, None]:
        watchfiles = _require_watchfiles()
        changes: Generator[set[tuple[Any, str]], None, None] = watchfiles.watch(
            *directories,
            watch_filter=None,  # filtered in follow(): every batch, even of noise, gives the debouncer a turn
            debounce=_TICK_MS * 2,
            step=50,
            stop_event=self._stop,
            rust_timeout=_TICK_MS,
            yield_on_timeout=True,
            raise_interrupt=False,
            force_polling=self.filter.plan.force_polling,
            recursive=False,
            ignore_permission_denied=True,
        )
        return changes

    def follow(self, batches: Iterable[Iterable[tuple[Any, str]]], clock: Callable[[], float] = time.monotonic) -> bool:
        """Feed batches of watchfiles changes through the filter and the debouncer, calling on_change when a
        burst settles. Returns True (and stops reading) when a new directory appeared: the watch must be redone."""
        for batch in batches:
            self._watching.set()  # the first batch, even an empty one on timeout, means the watch is in place
            now = clock()
            self._fire(self.debouncer.take_settled(now))  # first: a burst already over is not merged into the next
            if self._take_batch(batch, now):
                return True
        return False

    def _take_batch(self, batch: Iterable[tuple[Any, str]], now: float) -> bool:
        new_directories = False
        for change, path in batch:
            if change == _ADDED and self._is_new_directory(path):
                new_directories = True
                for file in self.filter.files_under(path):
                    self.debouncer.add(file, now)
            elif self.filter.triggers(path):
                self.debouncer.add(path, now)
        return new_directories

    def _is_new_directory(self, path: str) -> bool:
        return os.path.isdir(path) and not os.path.islink(path) and self.filter.watched_directory(path)

    def _fire(self, paths: list[str]) -> None:
        if not paths:
            return
        with self._calling:
            if self._stop.is_set():
                return
            _forget_bytecode(paths)
            with _THREAD_LOGGING:
                self.log.info("Reloading: %s changed", _describe(paths, self._cwd))
            self.on_change(paths)


def start_reloader(cfg: Config, log: logging.Logger, on_change: Callable[[list[str]], None]) -> Reloader:
    """Start watching for cfg (which has reload on); on_change is called from the watching thread."""
    plan = plan_watch(cfg, os.getcwd())
    if cfg.settings.application.preload_app:
        log.warning(
            "reload: preload_app is on, so the app is imported once in the master: code changes need a restart "
            "(config file changes still reload)"
        )
    quiet = cfg.settings.development.reload_delay
    reloader = Reloader(plan, on_change, log, debouncer=Debouncer(quiet=quiet, longest=max(LONGEST_BURST, quiet)))
    reloader.start()
    # So that the log line below is true: an edit made after it is seen (a test or a developer may act on it).
    if not reloader.wait_until_watching(WATCH_START_TIMEOUT):
        log.warning("reload: the file watcher is slow to start; edits made now may be missed")
    cwd = os.getcwd()
    log.info(
        "Reload: watching %s for %s",
        ", ".join(_shown(root, cwd) if root != cwd else "." for root in plan.roots),
        " ".join(plan.include),
    )
    return reloader
