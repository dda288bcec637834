"""Recycling that is not max_requests: worker lifetime and memory, plus preload and log reopening."""

from __future__ import annotations

import signal
import socket
from pathlib import Path

from tests.integration.conftest import (
    RequestLoad,
    ServerFactory,
    ready_workers,
    wait_for_ready_workers,
    wait_until,
)

APP = "tests.apps.master_apps:app"


def get(port: int, path: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(f"GET {path} HTTP/1.1\r\nHost: corral.test\r\nConnection: close\r\n\r\n".encode())
        reply = b""
        while chunk := conn.recv(65536):
            reply += chunk
    return reply


def test_max_worker_lifetime_replaces_workers_without_failing_a_request(serve: ServerFactory) -> None:
    server = serve(APP, "-w", "2", "--max-worker-lifetime", "2")
    first = wait_for_ready_workers(server, 2)
    with RequestLoad(server.port, max_requests=1_000_000, max_seconds=30) as load:

        def only_new_workers_answer() -> bool:
            recent = load.outcomes()[-20:]
            return len(recent) == 20 and not first & {o.pid for o in recent}

        assert wait_until(only_new_workers_answer, 20), "workers were not replaced"
        outcomes = load.stop()
    failures = [o for o in outcomes if not o.ok]
    assert failures == [], failures[:5]
    assert "Replacing worker pid" in server.stderr_text() and "(lifetime)" in server.stderr_text()


def test_max_worker_memory_replaces_a_worker_that_keeps_growing(serve: ServerFactory) -> None:
    server = serve(APP, "-w", "1", "--max-worker-memory", "100M")
    (worker,) = wait_for_ready_workers(server, 1)
    assert get(server.port, "/grow?mib=150").startswith(b"HTTP/1.1 200 ")
    assert wait_until(lambda: "(memory)" in server.stderr_text(), 20), server.stderr_text()
    assert wait_until(lambda: bool(ready_workers(server)) and worker not in ready_workers(server), 20)
    assert get(server.port, "/").startswith(b"HTTP/1.1 200 ")


def test_preload_imports_the_app_once_in_the_master(serve: ServerFactory, tmp_path: Path) -> None:
    marker = tmp_path / "imports"
    (tmp_path / "preloaded_app.py").write_text(
        "import os\n"
        f"with open({str(marker)!r}, 'a') as f:\n    f.write(f'{{os.getpid()}}\\n')\n"
        "from tests.apps.master_apps import app\n"
    )
    server = serve("preloaded_app:app", "-w", "2", "--preload", app_dir=tmp_path)
    wait_for_ready_workers(server, 2)
    assert marker.read_text().split() == [str(server.proc.pid)]
    assert get(server.port, "/").startswith(b"HTTP/1.1 200 ")


def test_usr1_reopens_the_access_log(serve: ServerFactory, tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    server = serve(APP, "-w", "1", "--access-logfile", str(log))
    wait_for_ready_workers(server, 1)
    assert get(server.port, "/?n=1").startswith(b"HTTP/1.1 200 ")
    assert wait_until(lambda: log.exists() and "n=1" in log.read_text(), 10)
    rotated = tmp_path / "access.log.1"
    log.rename(rotated)  # what logrotate does before it signals
    server.signal(signal.SIGUSR1)
    assert wait_until(log.exists, 10), "USR1 did not reopen the access log"
    assert get(server.port, "/?n=2").startswith(b"HTTP/1.1 200 ")
    assert wait_until(lambda: "n=2" in log.read_text(), 10)
    assert "n=2" not in rotated.read_text()
