"""Replacing workers without dropping capacity: HUP rollouts, a rollout that fails, max_requests recycling."""

from __future__ import annotations

import signal
from pathlib import Path

from tests.apps.master_apps import BROKEN_APP_SOURCE, RELOADABLE_APP_SOURCE
from tests.integration.conftest import (
    RequestLoad,
    ServerFactory,
    child_pids,
    exchange,
    wait_for_ready_workers,
    wait_until,
)

APP = "tests.apps.master_apps:app"
GET_ROOT = b"GET / HTTP/1.1\r\nHost: corral.test\r\nConnection: close\r\n\r\n"


def test_hup_under_load_replaces_every_worker_without_failing_a_request(serve: ServerFactory) -> None:
    server = serve(APP, "-w", "2")
    old = wait_for_ready_workers(server, 2)
    with RequestLoad(server.port) as load:
        assert load.wait_for_more(20), "the load never got going"
        server.signal(signal.SIGHUP)
        assert server.wait_for_stderr("Reload complete", 20), server.stderr_text()
        assert wait_until(lambda: not child_pids(server.proc.pid) & old, 15), "the old workers did not exit"
        assert load.wait_for_more(30), "requests stopped after the reload"
    outcomes = load.outcomes()
    new = wait_for_ready_workers(server, 2)
    assert not new & old
    assert [o for o in outcomes if not o.ok] == [], server.stderr_text()
    assert {o.pid for o in outcomes[-30:]} <= new
    print(f"\n{len(outcomes)} requests across the HUP, none failed")


def test_hup_after_a_broken_deploy_keeps_the_old_workers_serving(serve: ServerFactory, tmp_path: Path) -> None:
    deploy = tmp_path / "deploy"
    deploy.mkdir()
    module = deploy / "reloadable_app.py"
    module.write_text(RELOADABLE_APP_SOURCE)
    server = serve("reloadable_app:app", "-w", "2", app_dir=deploy)
    old = wait_for_ready_workers(server, 2)
    module.write_text(BROKEN_APP_SOURCE)
    server.signal(signal.SIGHUP)
    assert server.wait_for_stderr("Reload failed", 20), server.stderr_text()
    # The failed successors go away; exactly the old pool remains.
    assert wait_until(lambda: child_pids(server.proc.pid) == old, 15), server.stderr_text()
    log = server.stderr_text()
    assert "this deploy is broken at import time" in log
    assert server.proc.poll() is None
    for _ in range(10):
        (response,) = exchange(server.port, GET_ROOT).final_responses()
        assert response.status == 200
        assert response.body.startswith(b"reloadable pid=")
        assert int(response.body.split(b"=")[1]) in old


def test_max_requests_with_jitter_recycles_workers_without_failing_a_request(serve: ServerFactory) -> None:
    server = serve(APP, "-w", "2", "--max-requests", "20", "--max-requests-jitter", "5")
    old = wait_for_ready_workers(server, 2)
    # Each request awaits 10 ms, so the load spans several of the master's supervision ticks.
    with RequestLoad(server.port, "/sleep?seconds=0.01", max_requests=300) as load:
        assert load.join(90), "300 sequential requests did not finish"
    outcomes = load.outcomes()
    assert len(outcomes) == 300
    assert [o for o in outcomes if not o.ok] == [], server.stderr_text()
    serving = {o.pid for o in outcomes}
    assert old - child_pids(server.proc.pid), "no original worker was recycled"
    assert len(serving) > len(old)
    assert "(max_requests)" in server.stderr_text()
    print(f"\n300 requests served by {len(serving)} worker pids, none failed")
