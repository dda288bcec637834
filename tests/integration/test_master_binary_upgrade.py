"""Binary upgrade, Gunicorn-style: USR2 execs a new master on the same sockets, WINCH stops the old master's
workers, TERM ends the old master, and the new one takes over the pidfile; no request fails on the way."""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

from tests.integration.conftest import (
    REPO_ROOT,
    RequestLoad,
    Server,
    child_pids,
    logged_ready_pids,
    wait_for_ready_workers,
    wait_until,
)

APP = "tests.apps.master_apps:app"
HOOKS_CONFIG = REPO_ROOT / "tests" / "apps" / "configs" / "recording_hooks.py"


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def ready_children(server: Server, parent: int) -> set[int]:
    return child_pids(parent) & set(logged_ready_pids(server))


@contextlib.contextmanager
def stopped_at_exit(pid_of: list[int]) -> Iterator[None]:
    """The new master is not the fixture's process: TERM it (and wait) whatever the test's outcome."""
    try:
        yield
    finally:
        for pid in pid_of:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            wait_until(lambda pid=pid: not Path(f"/proc/{pid}").exists() or _zombie(pid), 15.0)


def _zombie(pid: int) -> bool:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    return True


def test_usr2_then_winch_then_term_switches_masters_without_failing_a_request(serve, tmp_path, monkeypatch):
    hook_log = tmp_path / "hooks.jsonl"
    monkeypatch.setenv("HOOK_LOG", str(hook_log))
    pidfile = tmp_path / "corral.pid"
    server = serve(APP, "-w", "2", "--pid", str(pidfile), "-c", str(HOOKS_CONFIG))
    old_master = server.proc.pid
    old_workers = wait_for_ready_workers(server, 2)
    new_master_pids: list[int] = []

    with stopped_at_exit(new_master_pids), RequestLoad(server.port, max_seconds=90.0) as load:
        assert load.wait_for_more(50)
        server.signal(signal.SIGUSR2)
        assert wait_until(lambda: read_pid(Path(f"{pidfile}.2")) is not None, 15.0), server.stderr_text()
        new_master = read_pid(Path(f"{pidfile}.2"))
        assert new_master is not None
        new_master_pids.append(new_master)
        assert new_master in child_pids(old_master)
        assert wait_until(lambda: len(ready_children(server, new_master)) == 2, 20.0), server.stderr_text()
        assert read_pid(pidfile) == old_master  # the old master keeps the pidfile while it lives
        assert load.wait_for_more(50)

        server.signal(signal.SIGWINCH)
        assert wait_until(lambda: child_pids(old_master) == {new_master}, 20.0), server.stderr_text()
        assert load.wait_for_more(50)

        server.signal(signal.SIGTERM)
        assert server.wait(20.0) == 0
        assert wait_until(lambda: read_pid(pidfile) == new_master, 10.0), server.stderr_text()
        assert not Path(f"{pidfile}.2").exists()
        assert load.wait_for_more(50)
        outcomes = load.stop()

    failures = [o for o in outcomes if not o.ok]
    assert failures == [], failures[:5]
    served_by = {o.pid for o in outcomes}
    new_workers = served_by - old_workers
    assert old_workers & served_by and new_workers  # both pools served during the switch
    assert outcomes[-1].pid in new_workers
    pre_exec = [json.loads(line) for line in hook_log.read_text().splitlines() if '"pre_exec"' in line]
    assert [call["server_pid"] for call in pre_exec] == [old_master]
    assert "this master takes over" in server.stderr_text()


def test_a_new_master_that_fails_to_start_leaves_the_old_one_serving(serve, tmp_path):
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    module = app_dir / "upgraded_app.py"
    module.write_text((REPO_ROOT / "tests" / "apps" / "master_apps.py").read_text())
    server = serve("upgraded_app:app", "-w", "1", app_dir=app_dir)
    (worker,) = wait_for_ready_workers(server, 1)
    module.write_text("raise RuntimeError('the upgraded code is broken')\n" + "#" * 600 + "\n")

    server.signal(signal.SIGUSR2)
    assert server.wait_for_stderr("The new master", timeout=30.0), server.stderr_text()
    assert "keeps serving" in server.stderr_text()
    with RequestLoad(server.port, max_requests=20) as load:
        assert load.join(20.0)
    assert all(o.ok and o.pid == worker for o in load.outcomes())


def test_winch_without_an_upgrade_in_progress_is_ignored(serve):
    server = serve(APP, "-w", "1")
    workers = wait_for_ready_workers(server, 1)
    server.signal(signal.SIGWINCH)  # a terminal resize must never stop the workers
    assert server.wait_for_stderr("Received WINCH: ignored")
    assert wait_for_ready_workers(server, 1) == workers


def test_a_second_usr2_during_an_upgrade_is_ignored(serve, tmp_path):
    pidfile = tmp_path / "corral.pid"
    server = serve(APP, "-w", "1", "--pid", str(pidfile))
    wait_for_ready_workers(server, 1)
    new_master_pids: list[int] = []
    with stopped_at_exit(new_master_pids):
        server.signal(signal.SIGUSR2)
        assert wait_until(lambda: read_pid(Path(f"{pidfile}.2")) is not None, 15.0), server.stderr_text()
        new_master_pids.append(read_pid(Path(f"{pidfile}.2")))
        server.signal(signal.SIGUSR2)
        assert server.wait_for_stderr("Received USR2: ignored, a new master")
