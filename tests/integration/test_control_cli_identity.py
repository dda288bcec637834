"""`corral reload` and `corral scale` signal only a pid verified to be the corral master that answered: never
what an admin endpoint merely reports (-1, 0, 1, an unrelated process), and never a recycled pid."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from corral.admin.identity import start_ticks
from tests.integration.conftest import REPO_ROOT, free_port

__all__: list[str] = []


class _FakeAdmin(ThreadingHTTPServer):
    daemon_threads = True
    master: dict[str, Any]


class _Handler(BaseHTTPRequestHandler):
    server: _FakeAdmin

    def do_GET(self) -> None:
        body = json.dumps({"master": self.server.master, "workers": [], "listeners": []}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def fake_admin() -> Iterator[_FakeAdmin]:
    """An admin endpoint on 127.0.0.1 that reports whatever master the test sets."""
    server = _FakeAdmin(("127.0.0.1", free_port()), _Handler)
    server.master = {}
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def bystander() -> Iterator[subprocess.Popen[bytes]]:
    """An unrelated process that a HUP would end: it must outlive every refused command."""
    proc = subprocess.Popen(["sleep", "60"])
    yield proc
    proc.kill()
    proc.wait()


def corral(*args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO_ROOT / "src")}
    return subprocess.run(
        [sys.executable, "-m", "corral", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        start_new_session=True,  # whatever a wrong pid would reach, it is not the test's process group
    )


def _admin(server: _FakeAdmin) -> str:
    return f"127.0.0.1:{server.server_address[1]}"


def _assert_refused(done: subprocess.CompletedProcess[str], bystander: subprocess.Popen[bytes]) -> str:
    error = done.stderr.strip()
    assert done.returncode == 1, done
    assert error.startswith("corral: error: ") and "\n" not in error, error
    assert bystander.poll() is None, "the unrelated process was signalled"
    return error


@pytest.mark.parametrize("command", [["reload"], ["scale", "3", "--timeout", "1"]])
def test_a_pid_of_an_unrelated_process_reported_by_the_admin_endpoint_is_not_signalled(
    fake_admin: _FakeAdmin, bystander: subprocess.Popen[bytes], command: list[str]
) -> None:
    fake_admin.master = {"pid": bystander.pid, "target": 2}
    error = _assert_refused(corral(*command, "--admin-bind", _admin(fake_admin)), bystander)
    assert "does not say which process it is" in error


@pytest.mark.parametrize("command", [["reload"], ["scale", "3", "--timeout", "1"]])
def test_an_unrelated_process_with_its_real_start_time_is_not_signalled_either(
    fake_admin: _FakeAdmin, bystander: subprocess.Popen[bytes], command: list[str]
) -> None:
    # Whoever answers on the admin address can read any process's start time: the pid must also hold the
    # admin socket that answered.
    fake_admin.master = {"pid": bystander.pid, "start_ticks": start_ticks(bystander.pid), "target": 2}
    error = _assert_refused(corral(*command, "--admin-bind", _admin(fake_admin)), bystander)
    assert f"process {bystander.pid} does not hold the admin socket" in error


@pytest.mark.parametrize("pid", [-1, 0, 1])
def test_pids_that_are_not_one_process_are_refused(
    fake_admin: _FakeAdmin, bystander: subprocess.Popen[bytes], pid: int
) -> None:
    fake_admin.master = {"pid": pid, "start_ticks": start_ticks(1), "target": 2}
    error = _assert_refused(corral("reload", "--admin-bind", _admin(fake_admin)), bystander)
    assert f"reports pid {pid}, which is not a corral master" in error


def test_a_stale_pidfile_naming_an_unrelated_process_is_not_signalled(
    tmp_path: Path, bystander: subprocess.Popen[bytes]
) -> None:
    pidfile = tmp_path / "corral.pid"
    pidfile.write_text(f"{bystander.pid}\n")
    # The master that wrote it is long gone; its pid now belongs to a process started since.
    os.utime(pidfile, (1_000_000_000, 1_000_000_000))
    error = _assert_refused(corral("reload", "-p", str(pidfile)), bystander)
    assert "is stale" in error


def test_reload_signals_a_real_master_found_through_its_admin_endpoint(serve: Any) -> None:
    admin = f"127.0.0.1:{free_port()}"
    server = serve("tests.apps.master_apps:app", "--admin-bind", admin)
    done = corral("reload", "--admin-bind", admin)
    assert done.returncode == 0, done.stderr
    assert server.wait_for_stderr("Received HUP: reloading")
    assert server.proc.poll() is None
