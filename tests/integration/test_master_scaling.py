"""TTIN and TTOU change the size of the pool one worker at a time, never below one worker."""

from __future__ import annotations

import signal

from tests.integration.conftest import ServerFactory, exchange, wait_for_ready_workers, wait_until

APP = "tests.apps.master_apps:app"
GET_ROOT = b"GET / HTTP/1.1\r\nHost: corral.test\r\nConnection: close\r\n\r\n"
AT_MINIMUM = "already at 1 worker"


def test_ttin_adds_a_worker_and_ttou_removes_one_down_to_one(serve: ServerFactory) -> None:
    server = serve(APP, "-w", "2")
    first = wait_for_ready_workers(server, 2)
    server.signal(signal.SIGTTIN)
    grown = wait_for_ready_workers(server, 3)
    assert first < grown
    server.signal(signal.SIGTTOU)
    wait_for_ready_workers(server, 2)
    server.signal(signal.SIGTTOU)
    (last,) = wait_for_ready_workers(server, 1)
    for refusals in (1, 2):
        server.signal(signal.SIGTTOU)
        assert wait_until(lambda n=refusals: server.stderr_text().count(AT_MINIMUM) == n, 10), server.stderr_text()
    assert wait_for_ready_workers(server, 1) == {last}
    (response,) = exchange(server.port, GET_ROOT).final_responses()
    assert response.status == 200
    assert f"pid={last}".encode() in response.body
