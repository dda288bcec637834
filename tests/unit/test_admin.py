"""The admin endpoint's pure logic from a real scoreboard: liveness and readiness, the /status document and
the `corral status` table, the Prometheus exposition, the ASGI routes, and the master's bookkeeping of why
workers end and start."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from corral.admin.app import AdminApp
from corral.admin.prometheus import BoardCollector, MemoryLimitCollector, metrics_registry, render_metrics
from corral.admin.status import (
    LIVENESS_TIMEOUT,
    format_duration,
    format_size,
    format_status,
    liveness_problem,
    readiness_problem,
    status_document,
)
from corral.core.scoreboard import (
    ListenQueue,
    MasterState,
    RestartReason,
    Scoreboard,
    WorkerCounters,
    WorkerState,
)
from corral.master.admin_monitor import Monitor, exit_reason, listener_name

NOW = 1000.0
NAMES = ["127.0.0.1:8000", "unix:/run/app.sock"]


@pytest.fixture
def board() -> Iterator[Scoreboard]:
    with Scoreboard(4) as scoreboard:
        scoreboard.set_master(4242, MasterState.RUNNING, 3)
        scoreboard.master_started(NOW - 90.0, 1_700_000_000.0)
        scoreboard.master_beat(NOW - 0.2, 2)
        scoreboard.configure_request_metrics(True, (0.001, 0.01, 0.1))
        scoreboard.set_listen_queues([ListenQueue(5, 128), None])
        yield scoreboard


def add_worker(
    board: Scoreboard,
    index: int,
    pid: int,
    *,
    state: WorkerState = WorkerState.READY,
    reason: RestartReason = RestartReason.START,
    counters: WorkerCounters | None = None,
) -> None:
    slot = board.slot(index)
    slot.claim(pid, 3, NOW - 60.0, reason)
    if state is not WorkerState.BOOTING:
        slot.set_state(WorkerState.READY, NOW - 58.5)
    if state not in (WorkerState.BOOTING, WorkerState.READY):
        slot.set_state(state, NOW - 58.5)
    slot.publish(counters or WorkerCounters(), NOW - 0.5, 50 * 1024 * 1024)


def served(requests: int, responses: list[int], latency: list[int], methods: list[int] | None = None) -> WorkerCounters:
    return WorkerCounters(
        requests=requests,
        responses=responses,
        active_requests=1,
        active_connections=3,
        bytes_in=1000,
        bytes_out=2000,
        websockets=1,
        methods=methods or [requests, 0, 0, 0, 0, 0, 0, 0],
        duration_ns=requests * 2_000_000,
        latency=latency + [0] * (16 - len(latency)),
    )


# --- liveness and readiness ---------------------------------------------------------------------


def test_ready_with_a_turning_master_and_a_ready_worker(board: Scoreboard) -> None:
    add_worker(board, 0, 100)
    read = board.read_board()
    assert (liveness_problem(read, NOW), readiness_problem(read, NOW)) == (None, None)


def test_not_alive_when_the_master_loop_stopped_turning(board: Scoreboard) -> None:
    add_worker(board, 0, 100)
    board.master_beat(NOW - LIVENESS_TIMEOUT - 1, 2)
    read = board.read_board()
    assert "has not turned for 11.0 s" in (liveness_problem(read, NOW) or "")
    assert readiness_problem(read, NOW) == liveness_problem(read, NOW)


def test_not_alive_before_the_master_wrote_anything() -> None:
    with Scoreboard(1) as empty:
        assert liveness_problem(empty.read_board(), NOW) == "the master has not started"


@pytest.mark.parametrize(
    ("state", "draining", "worker_state", "problem"),
    [
        (MasterState.STARTING, False, WorkerState.READY, "starting"),
        (MasterState.DRAINING, True, WorkerState.READY, "draining"),
        (MasterState.RUNNING, True, WorkerState.READY, "draining"),
        (MasterState.STOPPING, True, WorkerState.DRAINING, "draining"),
        (MasterState.RUNNING, False, WorkerState.BOOTING, "no worker is ready"),
        (MasterState.RELOADING, False, WorkerState.READY, None),
    ],
)
def test_readiness_fails_while_starting_draining_or_with_no_ready_worker(
    board: Scoreboard, state: MasterState, draining: bool, worker_state: WorkerState, problem: str | None
) -> None:
    add_worker(board, 1, 100, state=worker_state)
    board.set_master(4242, state, 3, draining=draining)
    assert readiness_problem(board.read_board(), NOW) == problem


# --- /status and corral status ------------------------------------------------------------------


def test_status_document_names_the_master_every_worker_and_the_listeners(board: Scoreboard) -> None:
    add_worker(board, 0, 100, counters=served(7, [0, 6, 0, 1, 0], [7]))
    add_worker(board, 2, 102, state=WorkerState.BOOTING, reason=RestartReason.MAX_REQUESTS)
    board.count_restart(RestartReason.MAX_REQUESTS)
    document = status_document(board.read_board(), NAMES, NOW)
    json.dumps(document)  # it is JSON as it is
    master = document["master"]
    assert (master["pid"], master["state"], master["generation"], master["target"]) == (4242, "running", 3, 2)
    assert (master["uptime"], master["heartbeat_age"], master["alive"], master["ready"]) == (90.0, 0.2, True, True)
    assert master["restarts"]["max_requests"] == 1 and "start" not in master["restarts"]
    first, second = document["workers"]
    assert first == {
        "slot": 0,
        "pid": 100,
        "state": "ready",
        "generation": 3,
        "age": 60.0,
        "boot_seconds": 1.5,
        "requests": 7,
        "active_requests": 1,
        "active_connections": 3,
        "websockets": 1,
        "rss": 50 * 1024 * 1024,
        "heartbeat_age": 0.5,
        "restart_reason": "start",
    }
    assert (second["slot"], second["state"], second["boot_seconds"], second["restart_reason"]) == (
        2,
        "booting",
        None,
        "max_requests",
    )
    assert document["listeners"] == [
        {"address": "127.0.0.1:8000", "backlog": 5, "backlog_max": 128},
        {"address": "unix:/run/app.sock", "backlog": None, "backlog_max": None},
    ]
    assert document["totals"]["responses"] == {"1xx": 0, "2xx": 6, "3xx": 0, "4xx": 1, "5xx": 0}


def test_status_table_has_a_master_line_and_one_row_per_worker_like_ps(board: Scoreboard) -> None:
    add_worker(board, 0, 100, counters=served(12345, [0, 12345, 0, 0, 0], [12345]))
    add_worker(board, 1, 101, reason=RestartReason.CRASH)
    board.count_restart(RestartReason.CRASH)
    lines = format_status(status_document(board.read_board(), NAMES, NOW)).splitlines()
    assert lines[0] == "master  pid 4242  running  generation 3  up 1m30s  target 2 workers  ready"
    assert lines[1] == "restarts: crash 1"
    assert lines[2:4] == ["listen  127.0.0.1:8000  backlog 5/128", "listen  unix:/run/app.sock  backlog unknown"]
    header, first, second = lines[5:8]
    assert header.split() == ["PID", "SLOT", "STATE", "GEN", "AGE", "REQUESTS", "ACTIVE", "CONNS", "WS", "RSS",
                              "STARTED", "BECAUSE"]  # fmt: skip
    assert first.split() == ["100", "0", "ready", "3", "1m00s", "12345", "1", "3", "1", "50.0M", "start"]
    assert second.split() == ["101", "1", "ready", "3", "1m00s", "0", "0", "0", "0", "50.0M", "crash"]
    assert first.index("12345") + len("12345") == header.index("REQUESTS") + len("REQUESTS")  # right-aligned


def test_status_table_says_why_the_pool_is_not_ready(board: Scoreboard) -> None:
    board.set_master(4242, MasterState.DRAINING, 0)
    text = format_status(status_document(board.read_board(), NAMES, NOW))
    assert "not ready: draining" in text.splitlines()[0]
    assert text.splitlines()[-1] == "(no workers)"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (59.9, "59s"), (61, "1m01s"), (3600 * 2 + 420, "2h07m"), (86400 * 3 + 3600 * 4, "3d04h")],
)
def test_durations_read_like_ps_elapsed_times(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize(("count", "text"), [(512, "512B"), (2048, "2.0K"), (44_145_049, "42.1M"), (3 * 2**30, "3.0G")])
def test_sizes_read_in_1024_based_units(count: int, text: str) -> None:
    assert format_size(count) == text


# --- /metrics -----------------------------------------------------------------------------------


def scrape(board: Scoreboard, names: list[str] = NAMES) -> dict[str, Any]:
    """name -> {labels tuple -> value} for every sample of the exposition, parsed by prometheus-client."""
    text = render_metrics(metrics_registry(BoardCollector(board.read_board, names, lambda: NOW))).decode()
    samples: dict[str, Any] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def test_metrics_sum_every_worker_and_the_retired_ones(board: Scoreboard) -> None:
    add_worker(board, 0, 100, counters=served(10, [0, 8, 0, 2, 0], [6, 3, 1]))
    add_worker(board, 1, 101, counters=served(5, [0, 4, 0, 0, 1], [5], methods=[2, 1, 2, 0, 0, 0, 0, 0]))
    board.slot(1).release()  # its worker is gone: its totals must stay
    add_worker(board, 1, 102, counters=served(1, [0, 1, 0, 0, 0], [0, 0, 0, 1]))
    samples = scrape(board)
    responses = samples["corral_http_responses_total"]
    assert {labels[0][1]: value for labels, value in responses.items()} == {
        "1xx": 0, "2xx": 13, "3xx": 0, "4xx": 2, "5xx": 1,
    }  # fmt: skip
    methods = {labels[0][1]: value for labels, value in samples["corral_http_requests_total"].items()}
    assert (methods["GET"], methods["HEAD"], methods["POST"], methods["other"]) == (13, 1, 2, 0)
    buckets = {labels[0][1]: value for labels, value in samples["corral_http_request_duration_seconds_bucket"].items()}
    assert buckets == {"0.001": 11, "0.01": 14, "0.1": 15, "+Inf": 16}
    assert samples["corral_http_request_duration_seconds_count"][()] == 16
    assert samples["corral_http_request_duration_seconds_sum"][()] == pytest.approx(0.032)
    assert samples["corral_http_request_bytes_total"][()] == 3000
    assert samples["corral_http_response_bytes_total"][()] == 6000


def test_metrics_give_the_pool_workers_and_listeners(board: Scoreboard) -> None:
    add_worker(board, 0, 100, counters=served(1, [0, 1, 0, 0, 0], [1]))
    add_worker(board, 3, 103, state=WorkerState.DRAINING)
    board.count_restart(RestartReason.TIMEOUT)
    samples = scrape(board)
    by_state = {labels[0][1]: value for labels, value in samples["corral_workers"].items()}
    assert by_state == {"booting": 0, "ready": 1, "retiring": 0, "draining": 1}
    assert samples["corral_workers_target"][()] == 2
    assert samples["corral_worker_restarts_total"][(("reason", "timeout"),)] == 1
    assert samples["corral_worker_rss_bytes"] == {(("worker", "0"),): 50 * 2**20, (("worker", "3"),): 50 * 2**20}
    assert samples["corral_worker_boot_seconds"][(("worker", "0"),)] == 1.5
    assert samples["corral_connections_active"][()] == 3
    assert samples["corral_websocket_connections_active"][()] == 1
    assert samples["corral_listen_backlog"] == {(("listener", "127.0.0.1:8000"),): 5}
    assert samples["corral_listen_backlog_max"] == {(("listener", "127.0.0.1:8000"),): 128}
    assert samples["corral_master_state"][(("state", "running"),)] == 1
    assert samples["corral_master_alive"][()] == 1
    assert samples["corral_ready"][()] == 1
    assert samples["corral_master_start_time_seconds"][()] == 1_700_000_000.0


def test_without_request_metrics_the_method_counts_and_histogram_are_absent(board: Scoreboard) -> None:
    board.configure_request_metrics(False, (0.1,))
    add_worker(board, 0, 100, counters=served(3, [0, 3, 0, 0, 0], [0]))
    samples = scrape(board)
    assert "corral_http_requests_total" not in samples
    assert not any(name.startswith("corral_http_request_duration") for name in samples)
    assert samples["corral_http_responses_total"][(("status_class", "2xx"),)] == 3


# --- the ASGI app -------------------------------------------------------------------------------


def call(app: AdminApp, path: str, method: str = "GET") -> tuple[int, dict[bytes, bytes], bytes]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app({"type": "http", "method": method, "path": path}, receive, send))
    start, body = sent
    return start["status"], dict(start["headers"]), body["body"]


def test_livez_and_readyz_answer_200_or_503_with_the_reason(board: Scoreboard) -> None:
    app = AdminApp(board.read_board, NAMES, lambda: NOW)
    assert call(app, "/livez")[0::2] == (200, b"ok\n")
    assert call(app, "/readyz")[0::2] == (503, b"not ready: no worker is ready\n")
    add_worker(board, 0, 100)
    assert call(app, "/readyz")[0::2] == (200, b"ready\n")
    board.master_beat(NOW - 60, 2)
    assert call(app, "/livez")[0] == 503


def test_metrics_and_status_have_their_content_types(board: Scoreboard) -> None:
    add_worker(board, 0, 100)
    app = AdminApp(board.read_board, NAMES, lambda: NOW)
    status, headers, body = call(app, "/metrics")
    assert status == 200 and headers[b"content-type"].startswith(b"text/plain; version=")
    assert b"corral_workers{" in body
    status, headers, body = call(app, "/status")
    assert (status, headers[b"content-type"], json.loads(body)["master"]["pid"]) == (200, b"application/json", 4242)
    assert headers[b"cache-control"] == b"no-store"


def test_unknown_paths_are_404_and_other_methods_405(board: Scoreboard) -> None:
    app = AdminApp(board.read_board, NAMES, lambda: NOW)
    assert call(app, "/nope")[0] == 404
    status, headers, _ = call(app, "/metrics", "POST")
    assert (status, headers[b"allow"]) == (405, b"GET, HEAD")
    assert call(app, "/")[0] == 200


# --- why workers end and start ------------------------------------------------------------------


@dataclass
class Handle:
    """The fields of the arbiter's WorkerHandle that the monitor reads."""

    pid: int
    started: float = 0.0
    retire_reason: RestartReason | None = None
    boot_failed: str | None = None
    ready: bool = True
    stopping: bool = False


@pytest.mark.parametrize(
    ("handle", "code", "reason"),
    [
        (Handle(1), -9, RestartReason.CRASH),
        (Handle(1), 1, RestartReason.CRASH),
        (Handle(1, retire_reason=RestartReason.MAX_REQUESTS, stopping=True), 0, RestartReason.MAX_REQUESTS),
        (Handle(1, retire_reason=RestartReason.TIMEOUT, stopping=True), -6, RestartReason.TIMEOUT),
        (Handle(1, retire_reason=RestartReason.BOOT_FAILURE, ready=False, stopping=True), 0,
         RestartReason.BOOT_FAILURE),
        (Handle(1, ready=False), 3, RestartReason.BOOT_FAILURE),
        (Handle(1, ready=False, boot_failed="boot_timeout", stopping=True), -9, RestartReason.BOOT_FAILURE),
        (Handle(1, stopping=True), 0, None),  # the server is shutting down: no restart
    ],
)
def test_exit_reasons_follow_the_arbiters_bookkeeping(handle: Handle, code: int, reason: RestartReason | None) -> None:
    assert exit_reason(handle, code) == reason


def monitor_on(board: Scoreboard) -> Monitor:
    return Monitor(None, board, [], None)  # type: ignore[arg-type]


def test_a_crashed_worker_hands_its_reason_to_the_next_start(board: Scoreboard) -> None:
    monitor = monitor_on(board)
    monitor.worker_exited(Handle(10), -9)
    assert monitor.spawn_reason([], reloading=False, ever_ready=True) is RestartReason.CRASH
    assert monitor.spawn_reason([], reloading=False, ever_ready=True) is RestartReason.SCALE
    assert board.read_board().restarts[RestartReason.CRASH] == 1


def test_a_recycled_workers_successor_gets_its_reason_once(board: Scoreboard) -> None:
    monitor = monitor_on(board)
    old, other = Handle(10, started=1.0, retire_reason=RestartReason.MEMORY), Handle(11, started=2.0)
    assert monitor.spawn_reason([other, old], reloading=False, ever_ready=True) is RestartReason.MEMORY
    old.stopping = True
    monitor.worker_exited(old, 0)  # its successor started already: nothing left to hand on
    assert monitor.spawn_reason([other], reloading=False, ever_ready=True) is RestartReason.SCALE


def test_reload_scale_down_and_shutdown_leave_nothing_for_later_starts(board: Scoreboard) -> None:
    monitor = monitor_on(board)
    assert monitor.spawn_reason([], reloading=True, ever_ready=True) is RestartReason.RELOAD
    for reason in (RestartReason.RELOAD, RestartReason.SCALE, RestartReason.UPGRADE):
        monitor.worker_exited(Handle(20, retire_reason=reason, stopping=True), 0)
    monitor.worker_exited(Handle(21, stopping=True), 0)
    assert monitor.spawn_reason([], reloading=False, ever_ready=False) is RestartReason.START
    restarts = board.read_board().restarts
    assert (restarts[RestartReason.RELOAD], restarts[RestartReason.SCALE], restarts[RestartReason.UPGRADE]) == (1, 1, 1)


def test_listener_names_are_addresses_without_a_scheme(tmp_path: Any) -> None:
    import socket

    with socket.socket() as tcp, socket.socket(socket.AF_UNIX) as unix:
        tcp.bind(("127.0.0.1", 0))
        unix.bind(str(tmp_path / "app.sock"))
        assert listener_name(tcp) == f"127.0.0.1:{tcp.getsockname()[1]}"
        assert listener_name(unix) == f"unix:{tmp_path / 'app.sock'}"


def test_ready_gauge_is_what_readyz_answers(board: Scoreboard) -> None:
    add_worker(board, 0, 100, state=WorkerState.BOOTING)
    assert scrape(board)["corral_ready"][()] == 0
    add_worker(board, 1, 101)
    assert scrape(board)["corral_ready"][()] == 1


def test_memory_limit_gauge_gives_the_limit_it_was_given() -> None:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MemoryLimitCollector(512 * 2**20))
    (family,) = text_string_to_metric_families(render_metrics(registry).decode())
    assert (family.name, family.samples[0].value) == ("corral_memory_limit_bytes", 512 * 2**20)


def test_a_declared_crash_loop_shows_in_metrics_status_and_the_table_until_it_ends(board: Scoreboard) -> None:
    assert scrape(board)["corral_crash_loop"][()] == 0
    board.set_crash_loop_until(NOW + 5.0)
    assert scrape(board)["corral_crash_loop"][()] == 1
    document = status_document(board.read_board(), NAMES, NOW)
    assert document["master"]["crash_loop"] is True
    assert "CRASH LOOP" in format_status(document)
    later = status_document(board.read_board(), NAMES, NOW + 6.0)
    assert later["master"]["crash_loop"] is False
    assert "CRASH LOOP" not in format_status(later)


def test_dropped_master_log_lines_are_a_counter_and_in_status(board: Scoreboard) -> None:
    assert scrape(board)["corral_master_log_lines_dropped_total"][()] == 0
    board.set_log_lines_dropped(7)
    assert scrape(board)["corral_master_log_lines_dropped_total"][()] == 7
    document = status_document(board.read_board(), NAMES, NOW)
    assert document["master"]["log_lines_dropped"] == 7
    assert "master log lines dropped: 7" in format_status(document)
