"""What the master and its workers tell the operator, and what the master costs while idle."""

from __future__ import annotations

import re
import time

from tests.integration.conftest import ServerFactory, cpu_seconds, exchange, wait_for_ready_workers

APP = "tests.apps.master_apps:app"
# A stall report: the warning, the loop thread's stack (traceback format), then the requests in flight.
STALL_REPORT = re.compile(
    r"event loop blocked for \d+\.\d s; the loop thread is at:\n"
    r"(?P<stack>(?:  .*\n)+?)"
    r"in-flight requests:\n"
    r"  GET /block from 127\.0\.0\.1:\d+ for \d+\.\d s"
)
IDLE_WINDOW_SECONDS = 3.0
# A sanity bound, far above what an idle supervisor loop should use: it catches a busy-polling master.
IDLE_CPU_BOUND_SECONDS = 0.5


def test_loop_lag_warning_names_the_blocking_endpoint_and_the_request(serve: ServerFactory) -> None:
    server = serve(APP, "-w", "1", "--loop-lag-warn", "0.5")
    wait_for_ready_workers(server, 1)
    request = b"GET /block?seconds=1.5 HTTP/1.1\r\nHost: corral.test\r\nConnection: close\r\n\r\n"
    (response,) = exchange(server.port, request).final_responses()
    assert response.status == 200
    assert server.wait_for_stderr("event loop blocked", 10), server.stderr_text()
    report = STALL_REPORT.search(server.stderr_text())
    assert report is not None, server.stderr_text()
    assert ", in block_the_loop\n" in report["stack"]


def test_an_idle_master_with_four_workers_uses_almost_no_cpu(serve: ServerFactory) -> None:
    server = serve(APP, "-w", "4")
    wait_for_ready_workers(server, 4)
    master = server.proc.pid
    before = cpu_seconds(master)
    time.sleep(IDLE_WINDOW_SECONDS)  # the measurement window, not a wait for an event
    used = cpu_seconds(master) - before
    print(f"\nidle master with 4 workers used {used:.3f} s of CPU in {IDLE_WINDOW_SECONDS:g} s")
    assert used < IDLE_CPU_BOUND_SECONDS
