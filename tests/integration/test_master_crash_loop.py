"""A request that kills its worker, sent over and over, must not empty the pool: a worker that booted and then
died is replaced at once (back-off is only for workers that cannot boot), and healthy requests keep being
answered by the other worker and the replacements."""

from __future__ import annotations

import re
import threading
from pathlib import Path

from tests.integration.conftest import (
    RequestLoad,
    ServerFactory,
    exchange,
    wait_for_ready_workers,
)

APP = "tests.apps.master_apps:app"
CRASH = b"GET /crash HTTP/1.1\r\nHost: corral.test\r\nConnection: close\r\n\r\n"
GET_ROOT = b"GET / HTTP/1.1\r\nHost: corral.test\r\nConnection: close\r\n\r\n"
CRASH_CLIENTS = 4
CRASHES_EACH = 40
CRASHES = CRASH_CLIENTS * CRASHES_EACH
DIED = re.compile(r"Worker pid \d+ died unexpectedly \(killed by SIGKILL\)")


def _send_crashes(port: int) -> int:
    """CRASH_CLIENTS clients each send CRASHES_EACH crash requests back to back; how many got no response."""
    unanswered = [0] * CRASH_CLIENTS

    def client(index: int) -> None:
        for _ in range(CRASHES_EACH):
            try:
                unanswered[index] += not exchange(port, CRASH).final_responses()
            except (OSError, AssertionError):
                unanswered[index] += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CRASH_CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(unanswered)


def test_a_request_that_kills_its_worker_is_replaced_at_once_and_healthy_requests_keep_being_answered(
    serve: ServerFactory,
) -> None:
    server = serve(APP, "-w", "2")
    wait_for_ready_workers(server, 2)
    with RequestLoad(server.port, max_seconds=60.0) as load:
        assert load.wait_for_more(5), "the healthy load never got going"
        unanswered = _send_crashes(server.port)
        during = load.outcomes()
        # The pool was not left empty behind a back-off: the next request is answered.
        assert exchange(server.port, GET_ROOT).final_responses()[0].status == 200
        assert load.wait_for_more(20), "healthy requests stopped being answered after the crash loop"
    wait_for_ready_workers(server, 2)
    log = server.stderr_text()
    assert unanswered == CRASHES, "a crash request is never answered: its worker dies"
    answered = [o for o in during if o.ok]
    failed = [o for o in during if not o.ok]
    print(f"\n{CRASHES} crash requests: healthy requests meanwhile {len(answered)} answered, {len(failed)} failed")
    # A healthy request fails only when the worker that accepted it is killed by a crash request meanwhile;
    # with a back-off the pool is empty for a while and they wait and fail.
    assert len(answered) > len(failed), f"{len(answered)} answered, {len(failed)} failed: {failed[:3]}"
    assert len(DIED.findall(log)) >= CRASH_CLIENTS
    assert "failures in a row" not in log, "workers that booted and then died must not be backed off"
    assert "Crash loop: " in log


KILLED_AT_IMPORT = """
import os
import signal

os.kill(os.getpid(), signal.SIGKILL)  # a C extension that crashes while the app is imported
"""


def test_a_worker_that_dies_before_it_is_ready_is_still_restarted_with_back_off(
    serve: ServerFactory, tmp_path: Path
) -> None:
    (tmp_path / "dies_at_import.py").write_text(KILLED_AT_IMPORT)
    server = serve("dies_at_import:app", "-w", "2", app_dir=tmp_path)
    assert server.wait_for_stderr("worker failures in a row: next start in"), server.stderr_text()
    assert "Crash loop" not in server.stderr_text()
