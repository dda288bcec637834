"""--reload's pure logic: what is watched, which changes trigger a reload, and how a burst of saves becomes one."""

from __future__ import annotations

import logging
import os
import py_compile
import sys
import threading
from collections.abc import Iterator
from importlib.util import cache_from_source
from pathlib import Path

import pytest

from corral.config import load_config
from corral.master.reloader import (
    ChangeFilter,
    Debouncer,
    Reloader,
    check_reload_setup,
    plan_watch,
    start_reloader,
)

ADDED, MODIFIED, DELETED = 1, 2, 3  # watchfiles.Change values


def config(tmp_path: Path, *args: str):
    return load_config(["main:app", "--reload", *args], {}, cwd=str(tmp_path))


def change_filter(tmp_path: Path, *args: str) -> ChangeFilter:
    return ChangeFilter(plan_watch(config(tmp_path, *args), str(tmp_path)))


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Recorder:
    """An on_change callback that remembers each call's paths."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.called = threading.Event()

    def __call__(self, paths: list[str]) -> None:
        self.calls.append(paths)
        self.called.set()


def batches_at(clock: Clock, *steps: tuple[float, set[tuple[int, str]]]) -> Iterator[set[tuple[int, str]]]:
    """Yield each batch at its time; an empty batch is watchfiles' 'nothing happened' tick."""
    for at, batch in steps:
        clock.now = at
        yield batch


def reloader_for(tmp_path: Path, recorder: Recorder, *args: str) -> Reloader:
    return Reloader(
        plan_watch(config(tmp_path, *args), str(tmp_path)),
        recorder,
        logging.getLogger("test.reloader"),
        debouncer=Debouncer(quiet=0.3, longest=2.0),
    )


# --------------------------------------------------------------------------------------------------
# Which changes trigger


@pytest.mark.parametrize("relative", ["main.py", "pkg/models.py", "pkg/sub/deep/views.py"])
def test_python_source_anywhere_in_the_tree_triggers(tmp_path: Path, relative: str) -> None:
    assert change_filter(tmp_path).triggers(str(tmp_path / relative))


@pytest.mark.parametrize(
    "relative",
    [
        "notes.txt", "templates/index.html", "pkg/__pycache__/models.cpython-311.pyc", "pkg/models.pyc",
        ".git/index", ".git/hooks/pre-commit.py", ".venv/lib/site-packages/six.py", "venv/lib/x.py",
        "node_modules/tool/build.py", ".mypy_cache/3.11/main.py", ".pytest_cache/v/x.py", ".tox/py311/x.py",
        "corral.egg-info/top.py", "build/.#main.py", ".#main.py", "#main.py#", "main.py~", ".main.py.swp",
        "4913", "main.py___jb_tmp___", "flycheck_main.py",
    ],
)  # fmt: skip
def test_noise_and_non_python_files_do_not_trigger(tmp_path: Path, relative: str) -> None:
    assert not change_filter(tmp_path).triggers(str(tmp_path / relative))


def test_reload_include_adds_globs_to_python_sources(tmp_path: Path) -> None:
    watch = change_filter(tmp_path, "--reload-include", "*.html", "--reload-include", "conf/*.toml")
    assert watch.triggers(str(tmp_path / "templates/index.html"))
    assert watch.triggers(str(tmp_path / "conf/app.toml"))
    assert watch.triggers(str(tmp_path / "main.py"))
    assert not watch.triggers(str(tmp_path / "other/app.toml"))
    assert not watch.triggers(str(tmp_path / ".venv/share/index.html"))


def test_reload_exclude_by_name_covers_files_and_whole_directories(tmp_path: Path) -> None:
    watch = change_filter(tmp_path, "--reload-exclude", "tests", "--reload-exclude", "local_*.py")
    assert not watch.triggers(str(tmp_path / "tests/test_views.py"))
    assert not watch.triggers(str(tmp_path / "pkg/tests/test_models.py"))
    assert not watch.triggers(str(tmp_path / "local_settings.py"))
    assert watch.triggers(str(tmp_path / "pkg/views.py"))


def test_reload_exclude_with_a_slash_is_a_path_from_the_watched_directory(tmp_path: Path) -> None:
    watch = change_filter(tmp_path, "--reload-exclude", "pkg/migrations")
    assert not watch.triggers(str(tmp_path / "pkg/migrations/0001_initial.py"))
    assert watch.triggers(str(tmp_path / "other/migrations/0001_initial.py"))


def test_named_extra_file_and_config_file_trigger_whatever_the_globs_say(tmp_path: Path) -> None:
    project, outside = tmp_path / "project", tmp_path / "shared" / "settings.toml"
    for directory in (project / "build", outside.parent):
        directory.mkdir(parents=True)
    (project / "corral.conf.py").write_text("workers = 1\n")
    watch = change_filter(
        project, "--reload-extra-file", str(outside), "--reload-extra-file", "build/schema.json",
        "--reload-exclude", "build",
    )  # fmt: skip
    assert watch.triggers(str(outside))
    assert watch.triggers(str(project / "build/schema.json"))
    assert watch.triggers(str(project / "corral.conf.py"))
    assert not watch.triggers(str(project / "build/other.py"))
    assert not watch.triggers(str(outside.parent / "other.py"))


def test_files_outside_the_watched_directories_do_not_trigger(tmp_path: Path) -> None:
    watch = change_filter(tmp_path, "--reload-dir", ".")
    assert not watch.triggers(str(tmp_path.parent / "elsewhere.py"))
    assert not watch.triggers(str(tmp_path))


# --------------------------------------------------------------------------------------------------
# What is watched


def test_default_watch_is_the_current_directory_and_the_app_dir(tmp_path: Path) -> None:
    (tmp_path / "project").mkdir()
    (tmp_path / "src").mkdir()
    plan = plan_watch(config(tmp_path / "project", "--app-dir", "../src"), str(tmp_path / "project"))
    assert plan.roots == (str(tmp_path / "src"), str(tmp_path / "project"))
    assert plan.include == ("*.py",)
    assert plan.force_polling is None


def test_an_app_dir_inside_the_current_directory_adds_no_second_watch(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    assert plan_watch(config(tmp_path, "--app-dir", "src"), str(tmp_path)).roots == (str(tmp_path),)


def test_reload_dirs_replace_the_default_directories(tmp_path: Path) -> None:
    (tmp_path / "api").mkdir()
    (tmp_path / "lib").mkdir()
    plan = plan_watch(config(tmp_path, "--reload-dir", "api", "--reload-dir", "lib"), str(tmp_path))
    assert set(plan.roots) == {str(tmp_path / "api"), str(tmp_path / "lib")}


@pytest.mark.parametrize(("engine", "force_polling"), [("auto", None), ("poll", True), ("inotify", False)])
def test_reload_engine_maps_to_polling_or_native_events(tmp_path: Path, engine: str, force_polling: bool) -> None:
    assert plan_watch(config(tmp_path, "--reload-engine", engine), str(tmp_path)).force_polling is force_polling


def test_a_missing_reload_dir_is_an_error_naming_the_setting(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"^reload_dirs: no such directory: 'srcc'$"):
        plan_watch(config(tmp_path, "--reload-dir", "srcc"), str(tmp_path))


def test_an_extra_file_in_a_missing_directory_is_an_error_naming_the_setting(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"^reload_extra_files: the directory of 'conf/app.toml' does not exist$"):
        plan_watch(config(tmp_path, "--reload-extra-file", "conf/app.toml"), str(tmp_path))


def test_missing_watchfiles_is_one_line_saying_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "watchfiles", None)  # what an absent package looks like to import
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError) as raised:
        check_reload_setup(config(tmp_path))
    assert str(raised.value) == (
        "reload: needs the watchfiles package (pip install watchfiles; from corral's checkout: pip install '.[reload]')"
    )


def test_excluded_directories_are_not_watched_at_all(tmp_path: Path) -> None:
    for relative in ("pkg/sub", ".venv/lib/site-packages", "node_modules/x", ".git/objects", "pkg/__pycache__"):
        (tmp_path / relative).mkdir(parents=True)
    watched = change_filter(tmp_path).directories()
    assert sorted(watched) == sorted([str(tmp_path), str(tmp_path / "pkg"), str(tmp_path / "pkg/sub")])


def test_the_directory_of_an_extra_file_outside_the_tree_is_watched(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    project = tmp_path / "project"
    shared.mkdir()
    project.mkdir()
    watched = change_filter(project, "--reload-extra-file", str(shared / "settings.toml")).directories()
    assert sorted(watched) == sorted([str(project), str(shared)])


# --------------------------------------------------------------------------------------------------
# Debouncing


def test_debouncer_hands_over_a_burst_once_it_has_been_quiet() -> None:
    debouncer = Debouncer(quiet=0.3, longest=2.0)
    debouncer.add("/p/a.py", 10.0)
    debouncer.add("/p/b.py", 10.1)
    debouncer.add("/p/a.py", 10.2)
    assert debouncer.take_settled(10.4) == []
    assert debouncer.take_settled(10.5) == ["/p/a.py", "/p/b.py"]
    assert debouncer.take_settled(11.0) == []


def test_debouncer_does_not_wait_forever_for_a_tree_that_never_stops_changing() -> None:
    debouncer = Debouncer(quiet=0.3, longest=2.0)
    now = 10.0
    settled: list[str] = []
    for _ in range(100):  # a change every 1/8 s, each one before the quiet period is over
        settled = debouncer.take_settled(now)
        if settled:
            break
        debouncer.add("/p/generated.py", now)
        now += 0.125
    assert settled == ["/p/generated.py"]
    assert now == 12.0


def test_debouncer_with_nothing_changed_has_nothing_to_hand_over() -> None:
    assert Debouncer().take_settled(1000.0) == []


def test_an_editors_save_storm_is_one_reload(tmp_path: Path) -> None:
    recorder, clock = Recorder(), Clock()
    reloader = reloader_for(tmp_path, recorder)
    main = str(tmp_path / "main.py")
    storm = batches_at(
        clock,
        (1.00, {(ADDED, str(tmp_path / ".main.py.swp")), (ADDED, str(tmp_path / "4913"))}),
        (1.05, {(DELETED, str(tmp_path / "4913")), (ADDED, main + "~")}),
        (1.10, {(DELETED, main), (ADDED, main)}),
        (1.20, {(MODIFIED, main), (DELETED, main + "~")}),
        (1.30, set()),
        (1.55, set()),
        (1.60, set()),
        (3.00, set()),
    )
    assert reloader.follow(storm, clock) is False
    assert recorder.calls == [[main]]


def test_bursts_separated_by_a_quiet_period_are_separate_reloads(tmp_path: Path) -> None:
    recorder, clock = Recorder(), Clock()
    reloader = reloader_for(tmp_path, recorder)
    a, b = str(tmp_path / "a.py"), str(tmp_path / "pkg/b.py")
    reloader.follow(batches_at(clock, (1.0, {(MODIFIED, a)}), (1.4, {(MODIFIED, b)}), (1.8, set())), clock)
    assert recorder.calls == [[a], [b]]


def test_changes_to_noise_alone_never_reload(tmp_path: Path) -> None:
    recorder, clock = Recorder(), Clock()
    reloader = reloader_for(tmp_path, recorder)
    noise = {(MODIFIED, str(tmp_path / "db.sqlite3")), (ADDED, str(tmp_path / "pkg/__pycache__/m.cpython-311.pyc"))}
    reloader.follow(batches_at(clock, *((1.0 + 0.1 * i, noise) for i in range(30)), (9.0, set())), clock)
    assert recorder.calls == []


def test_a_new_directory_asks_for_a_new_watch_and_its_sources_count(tmp_path: Path) -> None:
    recorder, clock = Recorder(), Clock()
    reloader = reloader_for(tmp_path, recorder)
    (tmp_path / "newpkg/sub").mkdir(parents=True)
    (tmp_path / "newpkg/sub/views.py").write_text("x = 1\n")
    (tmp_path / "newpkg/readme.txt").write_text("notes\n")
    later = batches_at(clock, (1.0, {(ADDED, str(tmp_path / "newpkg"))}), (5.0, set()))
    assert reloader.follow(later, clock) is True
    assert reloader.follow(batches_at(clock, (1.5, set())), clock) is False
    assert recorder.calls == [[str(tmp_path / "newpkg/sub/views.py")]]


def test_a_new_excluded_directory_changes_nothing(tmp_path: Path) -> None:
    recorder, clock = Recorder(), Clock()
    reloader = reloader_for(tmp_path, recorder)
    (tmp_path / "node_modules/pkg").mkdir(parents=True)
    (tmp_path / "node_modules/pkg/x.py").write_text("x = 1\n")
    added = batches_at(clock, (1.0, {(ADDED, str(tmp_path / "node_modules"))}), (2.0, set()))
    assert reloader.follow(added, clock) is False
    assert recorder.calls == []


def test_a_stopped_reloader_calls_back_no_more(tmp_path: Path) -> None:
    recorder, clock = Recorder(), Clock()
    reloader = reloader_for(tmp_path, recorder)
    reloader.stop()
    reloader.follow(batches_at(clock, (1.0, {(MODIFIED, str(tmp_path / "main.py"))}), (2.0, set())), clock)
    assert recorder.calls == []


def test_a_changed_modules_cached_bytecode_is_dropped_before_the_reload(tmp_path: Path) -> None:
    # Python trusts a .pyc whose source has the same size and mtime second: a quick same-size edit would be
    # served stale by the new worker.
    module = tmp_path / "views.py"
    module.write_text("ANSWER = 1\n")
    cached = Path(cache_from_source(str(module)))
    py_compile.compile(str(module), cfile=str(cached))
    assert cached.exists()
    recorder, clock = Recorder(), Clock()
    reloader = reloader_for(tmp_path, recorder)
    reloader.follow(batches_at(clock, (1.0, {(MODIFIED, str(module))}), (2.0, set())), clock)
    assert recorder.calls == [[str(module)]]
    assert not cached.exists()


def test_the_reload_log_line_names_the_changed_files(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    recorder, clock = Recorder(), Clock()
    reloader = reloader_for(tmp_path, recorder)
    reloader._cwd = str(tmp_path)
    changed = {(MODIFIED, str(tmp_path / name)) for name in ("a.py", "b.py", "c.py", "d.py", "e.py")}
    with caplog.at_level(logging.INFO, logger="test.reloader"):
        reloader.follow(batches_at(clock, (1.0, {(MODIFIED, str(tmp_path / "pkg/m.py"))}), (2.0, set())), clock)
        reloader.follow(batches_at(clock, (3.0, changed), (4.0, set())), clock)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == f"Reloading: {os.path.join('pkg', 'm.py')} changed"
    assert lines[1].startswith("Reloading: ") and lines[1].endswith(" and 2 more changed")


# --------------------------------------------------------------------------------------------------
# The real watching thread


@pytest.mark.parametrize("engine", ["auto", "poll"])
def test_the_watching_thread_reports_an_edit_and_stops_cleanly(tmp_path: Path, engine: str) -> None:
    (tmp_path / "pkg").mkdir()
    module = tmp_path / "pkg" / "views.py"
    module.write_text("ANSWER = 1\n")
    recorder = Recorder()
    reloader = reloader_for(tmp_path, recorder, "--reload-engine", engine)
    reloader.start()
    try:
        # The watch starts asynchronously: keep editing (bounded) until one edit is seen.
        for attempt in range(50):
            module.write_text(f"ANSWER = {attempt + 2}\n")
            if recorder.called.wait(0.5):
                break
        assert recorder.calls and recorder.calls[0] == [str(module)]
    finally:
        reloader.stop()
    assert reloader._thread is not None and not reloader._thread.is_alive()


def test_preload_app_gets_a_warning_that_code_changes_need_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.INFO, logger="test.reloader"):
        reloader = start_reloader(config(tmp_path, "--preload"), logging.getLogger("test.reloader"), Recorder())
        reloader.stop()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "code changes need a restart" in warnings[0]


def test_a_directory_vanishing_before_the_watch_starts_means_walking_again(tmp_path: Path) -> None:
    recorder = Recorder()
    reloader = reloader_for(tmp_path, recorder)
    main = str(tmp_path / "main.py")
    watches: list[list[str]] = []

    def watch(directories: list[str]) -> Iterator[set[tuple[int, str]]]:
        watches.append(directories)
        if len(watches) == 1:
            raise FileNotFoundError("No such file or directory")
        yield {(MODIFIED, main)}
        reloader.debouncer.quiet = 0.0  # settle at the next tick
        yield set()
        reloader._stop.set()

    reloader._watch = watch  # type: ignore[method-assign]
    reloader._run()
    assert len(watches) == 2
    assert recorder.calls == [[main]]


def test_watching_that_keeps_failing_is_logged_once_and_stops(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    reloader = reloader_for(tmp_path, Recorder())

    def watch(directories: list[str]) -> Iterator[set[tuple[int, str]]]:
        raise OSError("OS file watch limit reached")

    reloader._watch = watch  # type: ignore[method-assign]
    with caplog.at_level(logging.ERROR, logger="test.reloader"):
        reloader._run()
    assert [r.getMessage() for r in caplog.records] == [
        "reload: watching for changes failed, edits no longer reload: OS file watch limit reached"
    ]
