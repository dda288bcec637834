"""The master keeps the pool whole: a killed worker is replaced, a stuck one is aborted with its traceback."""

from __future__ import annotations

import os
import re
import signal
import time

from tests.integration.conftest import (
    Conn,
    RequestLoad,
    Server,
    ServerFactory,
    child_pids,
    exchange,
    ready_workers,
    wait_for_ready_workers,
    wait_until,
)

APP = "tests.apps.master_apps:app"
GET_ROOT = b"GET / HTTP/1.1\r\nHost: corral.test\r\nConnection: close\r\n\r\n"
REPLACEMENT_TIMEOUT = 15.0


def _wait_for_replacement(server: Server, gone: set[int], count: int) -> set[int]:
    """Wait until `count` READY workers serve and none of them is in `gone`; their pids."""

    def whole_again() -> bool:
        ready = ready_workers(server)
        return len(ready) == count and not ready & gone

    assert wait_until(whole_again, REPLACEMENT_TIMEOUT, interval=0.01), server.stderr_text()
    return ready_workers(server)


def test_sigkill_of_a_worker_under_load_is_replaced_and_requests_keep_succeeding(serve: ServerFactory) -> None:
    server = serve(APP, "-w", "2")
    before = wait_for_ready_workers(server, 2)
    victim = min(before)
    with RequestLoad(server.port) as load:
        assert load.wait_for_more(20), "the load never got going"
        os.kill(victim, signal.SIGKILL)
        after = _wait_for_replacement(server, {victim}, 2)
        replacement_ready_at = time.monotonic()
        assert load.wait_for_more(50), "requests stopped after the replacement"
    outcomes = load.outcomes()
    (replacement,) = after - before
    assert child_pids(server.proc.pid) == after
    assert f"Worker pid {victim} died unexpectedly (killed by SIGKILL)" in server.stderr_text()
    # Only a request the killed worker had in hand may fail; once the pool is whole, none may.
    late = [o for o in outcomes if o.started >= replacement_ready_at]
    assert len(late) >= 50
    assert [o for o in late if not o.ok] == []
    failed_early = [o for o in outcomes if not o.ok]
    print(
        f"\n{len(outcomes)} requests, {len(failed_early)} failed around the kill; "
        f"replacement pid {replacement} served {sum(o.pid == replacement for o in late)} of {len(late)} late ones"
    )


def test_time_to_replace_a_sigkilled_worker(serve: ServerFactory) -> None:
    server = serve(APP, "-w", "2")
    before = wait_for_ready_workers(server, 2)
    victim = max(before)
    killed_at = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    _wait_for_replacement(server, {victim}, 2)
    elapsed = time.monotonic() - killed_at
    print(f"\nreplacement READY {elapsed * 1000:.0f} ms after SIGKILL (polled every 10 ms)")
    assert elapsed < REPLACEMENT_TIMEOUT
    assert exchange(server.port, GET_ROOT).final_responses()[0].status == 200


SILENT_LINE = re.compile(r"Worker pid (\d+) silent for (\d+\.\d) s \(timeout 2 s\)")
# faulthandler's own format: `  File "PATH", line N in FUNCTION`.
STUCK_FRAME = re.compile(r'File "[^"]*master_apps\.py", line \d+ in stuck_in_time_sleep')


def test_a_worker_blocked_past_timeout_is_aborted_with_its_traceback_and_replaced(serve: ServerFactory) -> None:
    server = serve(APP, "-w", "1", "--timeout", "2")
    (stuck,) = wait_for_ready_workers(server, 1)
    with Conn(server.port, timeout=30) as conn:
        conn.send(b"GET /stuck?seconds=30 HTTP/1.1\r\nHost: corral.test\r\n\r\n")
        assert server.wait_for_stderr(f"Worker pid {stuck} exited (killed by SIGABRT)", 20), server.stderr_text()
        # The client of the stuck request loses its connection with the worker: it gets no answer.
        assert b"woke up" not in conn.read_available(1.0)
    (replacement,) = _wait_for_replacement(server, {stuck}, 1)
    log = server.stderr_text()
    silent = SILENT_LINE.search(log)
    assert silent is not None, log
    assert int(silent[1]) == stuck
    assert float(silent[2]) >= 2.0
    assert STUCK_FRAME.search(log), log
    (response,) = exchange(server.port, GET_ROOT).final_responses()
    assert response.status == 200
    assert f"pid={replacement}".encode() in response.body
