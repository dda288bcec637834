"""The open-file limit: the master raises its soft limit to the hard one so a worker can reach its connection cap,
and says so in one line when even the hard limit is too low."""

from __future__ import annotations

import re
import resource
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import READY_TIMEOUT, REPO_ROOT, STOP_TIMEOUT, child_pids, free_port, wait_until


def _limit_open_files(soft: int, hard: int) -> Callable[[], None]:
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    return apply


def _soft_open_files(pid: int) -> int:
    text = Path(f"/proc/{pid}/limits").read_text()
    found = re.search(r"^Max open files\s+(\d+)", text, re.MULTILINE)
    assert found is not None, text
    return int(found.group(1))


StartWithLimit = Callable[[int, int], tuple[subprocess.Popen[bytes], Path]]


@pytest.fixture
def start_with_limit(tmp_path: Path) -> Iterator[StartWithLimit]:
    started: list[subprocess.Popen[bytes]] = []

    def start(soft: int, hard: int) -> tuple[subprocess.Popen[bytes], Path]:
        stderr_path = tmp_path / f"corral-{len(started)}.stderr"
        with stderr_path.open("wb") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "corral", "tests.apps.echo:app", "--bind", f"127.0.0.1:{free_port()}",
                 "-w", "1", "--app-dir", str(REPO_ROOT)],
                cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                preexec_fn=_limit_open_files(soft, hard), start_new_session=True,
            )  # fmt: skip
        started.append(proc)
        return proc, stderr_path

    yield start
    for proc in started:
        proc.terminate()
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_workers_get_the_hard_open_file_limit_as_their_soft_limit(start_with_limit: StartWithLimit) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard < 4096:
        pytest.skip(f"the hard open-file limit here ({hard}) leaves nothing to show")
    proc, stderr_path = start_with_limit(256, hard)
    assert wait_until(lambda: "Application startup complete" in stderr_path.read_text(), READY_TIMEOUT)
    workers = child_pids(proc.pid)
    assert workers
    assert _soft_open_files(proc.pid) == hard
    assert all(_soft_open_files(pid) == hard for pid in workers)
    assert "open-file limit" not in stderr_path.read_text()


def test_a_hard_limit_below_worker_connections_is_reported_in_one_line(start_with_limit: StartWithLimit) -> None:
    proc, stderr_path = start_with_limit(512, 512)
    assert wait_until(lambda: "Application startup complete" in stderr_path.read_text(), READY_TIMEOUT)
    lines = [line for line in stderr_path.read_text().splitlines() if "open-file limit" in line]
    assert len(lines) == 1, stderr_path.read_text()
    assert "(512)" in lines[0] and "worker_connections=1000" in lines[0]
    assert proc.poll() is None  # a warning, not a refusal: the server still serves
