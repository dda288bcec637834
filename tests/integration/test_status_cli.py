"""`corral status`, `corral reload` and `corral scale N` run as real commands against a real server on
127.0.0.1, finding it the way its own configuration says; and an app module named `status` still serves."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from corral.admin.client import CommandError, fetch_status
from tests.integration.conftest import REPO_ROOT, free_port, raw_request, wait_until

HELLO = """
import os


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = f"hello pid={os.getpid()}\\n".encode()
    headers = [(b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})
"""


def corral(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO_ROOT / "src")}
    return subprocess.run(
        [sys.executable, "-m", "corral", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    (tmp_path / "hello.py").write_text(HELLO)
    return tmp_path


def ready_pool(admin: str, count: int, generation: int = 1) -> set[int]:
    """Wait until the pool is exactly `count` READY workers of `generation` (read in-process from /status, the
    admin process being a child of the master too); their pids."""
    pids: set[int] = set()

    def ready() -> bool:
        nonlocal pids
        try:
            workers = fetch_status(admin)["workers"]
        except CommandError:
            return False
        pids = {w["pid"] for w in workers if w["state"] == "ready" and w["generation"] == generation}
        return len(workers) == len(pids) == count and 0 not in pids

    assert wait_until(ready, 20), f"wanted {count} READY workers of generation {generation}"
    return pids


def status_json(admin: str, cwd: Path) -> dict[str, Any]:
    done = corral("status", "--json", "--admin-bind", admin, cwd=cwd)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_status_prints_the_master_and_a_row_per_worker(serve: Any, app_dir: Path) -> None:
    admin = f"127.0.0.1:{free_port()}"
    server = serve("hello:app", "-w", "2", "--admin-bind", admin, app_dir=app_dir)
    pids = ready_pool(admin, 2)
    done = corral("status", "--admin-bind", admin, cwd=app_dir)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith(f"master  pid {server.proc.pid}  running  generation 1  up ")
    assert lines[0].endswith("target 2 workers  ready")
    assert lines[2] == f"listen  127.0.0.1:{server.port}  backlog 0/2048"
    rows = [line.split() for line in lines[4:]]
    assert rows[0][:3] == ["PID", "SLOT", "STATE"]
    assert {int(row[0]) for row in rows[1:]} == pids
    assert all(row[2] == "ready" and row[-1] == "start" for row in rows[1:])


def test_a_config_file_tells_status_and_reload_where_the_server_is(serve: Any, app_dir: Path) -> None:
    socket_path = app_dir / "admin.sock"
    pidfile = app_dir / "corral.pid"
    (app_dir / "corral.conf.py").write_text(f"admin_bind = 'unix:{socket_path}'\npidfile = '{pidfile}'\nworkers = 2\n")
    server = serve("hello:app", "-c", str(app_dir / "corral.conf.py"), app_dir=app_dir)
    old = ready_pool(f"unix:{socket_path}", 2)

    # ./corral.conf.py is read as the server reads it: no option needed.
    done = corral("reload", cwd=app_dir)
    assert done.returncode == 0, done.stderr
    assert f"sent HUP to the master (pid {server.proc.pid})" in done.stdout

    ready_pool(f"unix:{socket_path}", 2, generation=2)
    done = corral("status", "--json", cwd=app_dir)
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert {w["pid"] for w in document["workers"]}.isdisjoint(old)
    assert {w["restart_reason"] for w in document["workers"]} == {"reload"}
    assert document["master"]["restarts"]["reload"] == 2


def test_scale_sets_the_pools_target_up_and_down(serve: Any, app_dir: Path) -> None:
    admin = f"127.0.0.1:{free_port()}"
    serve("hello:app", "-w", "1", "--admin-bind", admin, app_dir=app_dir)
    ready_pool(admin, 1)
    done = corral("scale", "3", "--admin-bind", admin, cwd=app_dir)
    assert done.returncode == 0, done.stderr
    assert "target 1 -> 3 workers" in done.stdout
    ready_pool(admin, 3)
    done = corral("scale", "2", "--admin-bind", admin, cwd=app_dir)
    assert done.returncode == 0, done.stderr
    ready_pool(admin, 2)
    document = status_json(admin, app_dir)
    assert document["master"]["target"] == 2
    assert document["master"]["restarts"]["scale"] == 1
    assert sorted(w["restart_reason"] for w in document["workers"]) == ["scale", "start"]


def test_status_of_a_server_that_is_not_running_fails_in_one_line(app_dir: Path) -> None:
    done = corral("status", "--admin-bind", f"127.0.0.1:{free_port()}", cwd=app_dir)
    assert done.returncode == 1
    assert done.stderr.startswith("corral: error: cannot reach the admin endpoint")
    assert done.stderr.count("\n") == 1


def test_an_app_module_named_status_is_served_as_status_colon_app(serve: Any, app_dir: Path) -> None:
    (app_dir / "status.py").write_text(HELLO)
    done = corral("status", cwd=app_dir)  # the command, not the module: and it says how to serve the module
    assert done.returncode == 2
    assert "corral status:ATTRIBUTE" in done.stderr
    server = serve("status:app", app_dir=app_dir)
    assert b"hello pid=" in raw_request(server.port, b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
