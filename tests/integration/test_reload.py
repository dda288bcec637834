"""--reload: a real `corral --reload` serving an app written into a temporary project, edited while it runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import REPO_ROOT, Server, ServerFactory, exchange, wait_until

GET_ROOT = b"GET / HTTP/1.1\r\nHost: corral.test\r\nConnection: close\r\n\r\n"
RELOAD_WAIT = 20.0

APP_SOURCE = """\
import os

VERSION = {version!r}


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = f"{{VERSION}} pid={{os.getpid()}}".encode()
    await send({{"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]}})
    await send({{"type": "http.response.body", "body": body}})
"""


def app_source(version: str) -> str:
    return APP_SOURCE.format(version=version)


def save(path: Path, text: str) -> None:
    """Save as editors do: write a temporary file, then rename it over the original (one change, never a
    half-written module)."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def answer(server: Server) -> tuple[str, int]:
    """(VERSION, worker pid) from the app's response."""
    (response,) = exchange(server.port, GET_ROOT).final_responses()
    assert response.status == 200, response
    version, _, pid = response.body.decode().partition(" pid=")
    return version, int(pid)


def answers_version(server: Server, version: str) -> bool:
    try:
        return answer(server)[0] == version
    except (OSError, AssertionError):
        return False


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """An app's source tree, apart from the server logs the fixture writes under tmp_path."""
    path = tmp_path / "project"
    path.mkdir()
    (path / "main.py").write_text(app_source("one"))
    return path


def serve_reloading(serve: ServerFactory, project: Path, *args: str) -> Server:
    # --chdir: the server's working directory is the project, as when a developer runs it there.
    server = serve("main:app", "--reload", "--chdir", str(project), *args, app_dir=project)
    # Logged once the watch is in place: edits before it could be missed on a loaded machine.
    assert server.wait_for_stderr("Reload: watching"), server.stderr_text()
    return server


def reload_lines(server: Server) -> list[str]:
    return [line for line in server.stderr_text().splitlines() if "Reloading: " in line]


def test_editing_the_app_serves_the_new_code(serve: ServerFactory, project: Path) -> None:
    server = serve_reloading(serve, project)
    assert answer(server)[0] == "one", server.stderr_text()
    save(project / "main.py", app_source("two, edited"))
    assert wait_until(lambda: answers_version(server, "two, edited"), RELOAD_WAIT), server.stderr_text()
    assert reload_lines(server)[0].endswith("Reloading: main.py changed")


def test_a_syntax_error_keeps_the_old_code_serving_and_the_next_good_save_recovers(
    serve: ServerFactory, project: Path
) -> None:
    server = serve_reloading(serve, project)
    _, old_pid = answer(server)
    save(project / "main.py", app_source("broken").replace("async def app", "async def app(:"))
    assert server.wait_for_stderr("Reload failed", RELOAD_WAIT), server.stderr_text()
    assert server.wait_for_stderr("SyntaxError", RELOAD_WAIT), server.stderr_text()
    assert answer(server) == ("one", old_pid), server.stderr_text()
    save(project / "main.py", app_source("three, fixed"))
    assert wait_until(lambda: answers_version(server, "three, fixed"), RELOAD_WAIT), server.stderr_text()
    assert server.proc.poll() is None, server.stderr_text()


def test_changes_to_excluded_files_do_not_reload(serve: ServerFactory, project: Path) -> None:
    server = serve_reloading(serve, project, "--reload-exclude", "scratch", "--reload-exclude", "local_*.py")
    _, pid = answer(server)
    for relative in (
        "notes.txt", "main.py~", ".#main.py", "__pycache__/main.cpython-311.pyc", ".venv/lib/site.py",
        "node_modules/tool/build.py", "scratch/try.py", "local_settings.py",
    ):  # fmt: skip
        path = project / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x = 1\n")
    assert answer(server) == ("one", pid), server.stderr_text()
    # Then a change that does count: the watcher reports changes in order, so if any of the files above had
    # triggered, a reload naming it would come first (or with this one).
    save(project / "main.py", app_source("after the noise"))
    assert wait_until(lambda: answers_version(server, "after the noise"), RELOAD_WAIT), server.stderr_text()
    assert [line.split("Reloading: ")[1] for line in reload_lines(server)] == ["main.py changed"], server.stderr_text()
    assert server.stderr_text().count("Received HUP") == 1, server.stderr_text()


def test_reload_without_watchfiles_is_a_one_line_config_error(tmp_path: Path, project: Path) -> None:
    shadow = tmp_path / "no-watchfiles"
    shadow.mkdir()
    (shadow / "watchfiles.py").write_text("raise ImportError('No module named watchfiles')\n")
    result = subprocess.run(
        [sys.executable, "-m", "corral", "main:app", "--reload", "-b", "127.0.0.1:0", "--app-dir", str(project)],
        capture_output=True, text=True, timeout=30, cwd=project,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(shadow), str(REPO_ROOT / "src")])},
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert result.stderr == (
        "corral: error: reload: needs the watchfiles package "
        "(pip install watchfiles; from corral's checkout: pip install '.[reload]')\n"
    )


def test_a_missing_reload_dir_is_a_one_line_config_error(project: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "corral", "main:app", "--reload", "--reload-dir", "srcc", "-b", "127.0.0.1:0"],
        capture_output=True, text=True, timeout=30, cwd=project,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert result.stderr == "corral: error: reload_dirs: no such directory: 'srcc'\n"


FORK_WHILE_THE_WATCHER_LOGS = """\
import logging, os, signal, threading
from corral.master import reloader

read_end, write_end = os.pipe()
threading.Thread(target=lambda: [None for _ in iter(lambda: os.read(read_end, 65536), b"")], daemon=True).start()
log = logging.getLogger("watcher")
log.addHandler(logging.StreamHandler(os.fdopen(write_end, "w")))
reloader._install_fork_guard()

def log_like_the_watcher():
    while True:
        with reloader._THREAD_LOGGING:
            log.warning("Reloading: %s changed", "x" * 20000)

threading.Thread(target=log_like_the_watcher, daemon=True).start()
stuck = 0
for _ in range(20):
    pid = os.fork()
    if pid == 0:
        signal.alarm(10)  # a worker whose first log line hangs would be killed by this
        log.warning("worker started")
        os._exit(0)
    stuck += os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) != 0
print(stuck)
"""


def test_a_worker_forked_while_the_watcher_logs_can_still_log() -> None:
    result = subprocess.run(
        [sys.executable, "-c", FORK_WHILE_THE_WATCHER_LOGS], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "0"
