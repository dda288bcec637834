"""Gunicorn's server hooks, from a real config file, in a real master and real workers.

The hooks in tests/apps/configs/recording_hooks.py append one JSON line per call (what they were given and
in which process); the tests read that file back.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import REPO_ROOT, free_port, wait_for_ready_workers, wait_until

HOOKS_CONFIG = REPO_ROOT / "tests" / "apps" / "configs" / "recording_hooks.py"
APP = "tests.apps.master_apps:app"


def calls(log: Path, name: str | None = None) -> list[dict]:
    if not log.exists():
        return []
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return [r for r in records if name is None or r["hook"] == name]


@pytest.fixture
def hook_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    log = tmp_path / "hooks.jsonl"
    monkeypatch.setenv("HOOK_LOG", str(log))
    return log


def test_lifecycle_hooks_run_in_order_in_the_right_processes(serve, hook_log):
    server = serve(APP, "-c", str(HOOKS_CONFIG), "-w", "2")
    workers = wait_for_ready_workers(server, 2)
    master = server.proc.pid
    assert server.stop() == 0

    names = [c["hook"] for c in calls(hook_log) if c["hook"] not in ("pre_request", "post_request")]
    assert names[:3] == ["on_starting", "nworkers_changed", "when_ready"]
    assert names[-1] == "on_exit"
    for master_side in ("on_starting", "when_ready", "pre_fork", "child_exit", "on_exit", "nworkers_changed"):
        assert {c["in_pid"] for c in calls(hook_log, master_side)} == {master}, master_side
    for worker_side in ("post_fork", "post_worker_init", "worker_exit"):
        assert {c["in_pid"] for c in calls(hook_log, worker_side)} == workers, worker_side
        assert {c["worker_pid"] for c in calls(hook_log, worker_side)} == workers, worker_side
    assert calls(hook_log, "nworkers_changed")[0] | {"at": 0, "in_pid": 0} == {
        "hook": "nworkers_changed", "new": 2, "old": None, "at": 0, "in_pid": 0,
    }  # fmt: skip
    assert calls(hook_log, "when_ready")[0]["listeners"] == 1


def test_hooks_get_gunicorn_style_server_and_worker_objects(serve, hook_log):
    server = serve(APP, "-c", str(HOOKS_CONFIG), "-w", "2", "--name", "shop")
    workers = wait_for_ready_workers(server, 2)
    master = server.proc.pid
    server.stop()

    pre_forks = calls(hook_log, "pre_fork")
    assert [c["worker_pid"] for c in pre_forks] == [None, None]  # not forked yet, as in Gunicorn
    assert sorted(c["age"] for c in pre_forks) == [1, 2]
    for call in calls(hook_log, "post_fork") + calls(hook_log, "child_exit"):
        assert (call["server_pid"], call["workers_setting"], call["proc_name"]) == (master, 2, "shop")
        assert call["ppid"] == master
    assert {c["worker_pid"] for c in calls(hook_log, "child_exit")} == workers
    assert all(c["has_app"] for c in calls(hook_log, "post_worker_init"))
    assert f"hook sees master pid {master}" in server.stderr_text()  # server.log is the error log


def test_pre_and_post_request_see_the_request_and_the_response(serve, hook_log):
    server = serve(APP, "-c", str(HOOKS_CONFIG), "-w", "1")
    assert httpx.get(f"{server.url}/hello?x=1", headers={"X-Trace": "t1"}).status_code == 200
    assert httpx.get(f"{server.url}/missing-is-still-hello").status_code == 200
    assert wait_until(lambda: len(calls(hook_log, "post_request")) == 2, 5.0)

    pre = calls(hook_log, "pre_request")[0]
    assert (pre["method"], pre["path"], pre["uri"]) == ("GET", "/hello", "/hello?x=1")
    assert pre["headers"]["X-TRACE"] == "t1"
    post = calls(hook_log, "post_request")[0]
    assert (post["path"], post["status"], post["status_code"], post["query"]) == ("/hello", "200 OK", 200, "x=1")
    assert post["sent"] > 0
    assert post["worker_pid"] == pre["in_pid"]
    assert [c["nr"] for c in calls(hook_log, "post_request")] == [1, 2]  # this request included, as in Gunicorn


def test_hup_calls_on_reload_and_ttin_calls_nworkers_changed(serve, hook_log):
    server = serve(APP, "-c", str(HOOKS_CONFIG), "-w", "1")
    wait_for_ready_workers(server, 1)
    server.signal(signal.SIGHUP)
    assert wait_until(lambda: calls(hook_log, "on_reload"), 10.0)
    server.signal(signal.SIGTTIN)
    assert wait_until(lambda: len(calls(hook_log, "nworkers_changed")) == 2, 10.0)
    change = calls(hook_log, "nworkers_changed")[1]
    assert (change["new"], change["old"]) == (2, 1)


def test_worker_int_runs_in_the_worker_on_quit(serve, hook_log):
    server = serve(APP, "-c", str(HOOKS_CONFIG), "-w", "1")
    (worker,) = wait_for_ready_workers(server, 1)
    server.signal(signal.SIGQUIT)
    assert server.wait(15.0) is not None
    assert [c["in_pid"] for c in calls(hook_log, "worker_int")] == [worker]


def test_worker_abort_runs_when_a_stuck_worker_is_aborted_and_the_traceback_is_still_logged(serve, hook_log):
    server = serve(APP, "-c", str(HOOKS_CONFIG), "-w", "1", "--timeout", "1")
    (worker,) = wait_for_ready_workers(server, 1)
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{server.url}/stuck?seconds=20", timeout=15.0)
    assert wait_until(lambda: calls(hook_log, "worker_abort"), 10.0)
    assert calls(hook_log, "worker_abort")[0]["in_pid"] == worker
    assert server.wait_for_stderr("stuck_in_time_sleep")


def test_a_raising_hook_is_logged_with_its_traceback_and_the_server_carries_on(serve, hook_log, monkeypatch):
    monkeypatch.setenv("HOOK_RAISE", "post_fork,pre_request,post_request,when_ready,child_exit")
    server = serve(APP, "-c", str(HOOKS_CONFIG), "-w", "1")
    assert httpx.get(f"{server.url}/").status_code == 200
    server.signal(signal.SIGTTIN)
    wait_for_ready_workers(server, 2)
    assert server.stop() == 0
    log = server.stderr_text()
    for name in ("post_fork", "pre_request", "post_request", "when_ready", "child_exit"):
        assert f"Hook {name} raised" in log, name
    assert "RuntimeError: post_fork was told to raise" in log  # the traceback, not just a line


def test_on_starting_that_raises_stops_the_start_with_one_line_before_binding(tmp_path, hook_log, monkeypatch):
    monkeypatch.setenv("HOOK_RAISE", "on_starting")
    port = free_port()
    result = subprocess.run(
        [sys.executable, "-m", "corral", APP, "-c", str(HOOKS_CONFIG), "-b", f"127.0.0.1:{port}", "-w", "1"],
        capture_output=True, text=True, timeout=30, cwd=REPO_ROOT,
    )  # fmt: skip
    assert result.returncode == 1
    assert "corral: error: on_starting hook failed: RuntimeError: on_starting was told to raise" in result.stderr
    assert [c["hook"] for c in calls(hook_log)] == ["on_starting"]


def test_raw_env_and_pythonpath_reach_the_app_and_the_hooks(serve, tmp_path):
    library = tmp_path / "lib"
    library.mkdir()
    (library / "extra_module.py").write_text("GREETING = 'from pythonpath'\n")
    (tmp_path / "env_app.py").write_text(
        "import os\nimport extra_module\n\n"
        "async def app(scope, receive, send):\n"
        "    if scope['type'] != 'http':\n        return\n"
        "    body = (os.environ['SHOP_MODE'] + ' ' + extra_module.GREETING).encode()\n"
        "    await send({'type': 'http.response.start', 'status': 200, 'headers': []})\n"
        "    await send({'type': 'http.response.body', 'body': body})\n"
    )
    server = serve("env_app:app", "-e", "SHOP_MODE=live", "--pythonpath", str(library), app_dir=tmp_path)
    assert httpx.get(server.url).text == "live from pythonpath"


def test_hup_rereads_a_relative_config_path_from_where_corral_started_even_after_chdir(serve, hook_log, tmp_path):
    relative = HOOKS_CONFIG.relative_to(REPO_ROOT)  # the fixture starts corral in the repository root
    server = serve(APP, "-c", str(relative), "-w", "1", "--chdir", str(tmp_path))
    wait_for_ready_workers(server, 1)
    server.signal(signal.SIGHUP)
    assert wait_until(lambda: calls(hook_log, "on_reload"), 10.0), server.stderr_text()
    assert "Reload aborted" not in server.stderr_text()
