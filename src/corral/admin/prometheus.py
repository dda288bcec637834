"""/metrics: the pool's figures from one scoreboard read, in the Prometheus text format, generated with
prometheus-client (a collector that builds metric families at scrape time; no client-side state).

Counters are the pool's totals since the master started (retired workers included, so they never go back
when a worker is replaced); per-worker gauges carry a `worker` label that is the worker's scoreboard slot,
which stays bounded whatever the number of restarts. docs/metrics.md lists every metric.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from corral.admin.status import liveness_problem, readiness_problem
from corral.core.scoreboard import METHODS, BoardSnapshot, MasterState, RestartReason, WorkerState

__all__ = [
    "CONTENT_TYPE",
    "BoardCollector",
    "MemoryLimitCollector",
    "metric_families",
    "metrics_registry",
    "render_metrics",
]

CONTENT_TYPE = CONTENT_TYPE_LATEST
_STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
_WORKER_STATES = (WorkerState.BOOTING, WorkerState.READY, WorkerState.RETIRING, WorkerState.DRAINING)


def metric_families(board: BoardSnapshot, listener_names: list[str], now: float) -> list[Metric]:
    """Every metric family, from one read of the scoreboard."""
    return [
        *_master_families(board, now),
        *_worker_families(board, now),
        *_http_families(board),
        *_listener_families(board, listener_names),
    ]


def _master_families(board: BoardSnapshot, now: float) -> list[Metric]:
    master = board.master
    state = GaugeMetricFamily("corral_master_state", "The master's state (1 for the current one).", labels=["state"])
    for value in MasterState:
        state.add_metric([value.name.lower()], 1.0 if master.state is value else 0.0)
    heartbeat = GaugeMetricFamily(
        "corral_master_heartbeat_age_seconds", "Seconds since the master's loop last turned (/livez checks it)."
    )
    heartbeat.add_metric([], max(0.0, now - master.heartbeat) if master.heartbeat else 0.0)
    alive = GaugeMetricFamily("corral_master_alive", "1 when the master's loop turns (what /livez answers).")
    alive.add_metric([], 0.0 if liveness_problem(board, now) else 1.0)
    # Sampled at each scrape, so flapping shows as changes() over a window (deploy/prometheus alerts on it).
    ready = GaugeMetricFamily("corral_ready", "1 when the pool takes traffic (what /readyz answers).")
    ready.add_metric([], 0.0 if readiness_problem(board, now) else 1.0)
    generation = GaugeMetricFamily("corral_master_generation", "Reload generation: HUP adds one.")
    generation.add_metric([], master.generation)
    started = GaugeMetricFamily("corral_master_start_time_seconds", "When the master started (Unix time).")
    started.add_metric([], master.started_unix)
    restarts = CounterMetricFamily(
        "corral_worker_restarts", "Workers stopped or replaced, by reason.", labels=["reason"]
    )
    for reason in RestartReason:
        if reason is not RestartReason.START:
            restarts.add_metric([reason.name.lower()], board.restarts[reason])
    crash_loop = GaugeMetricFamily(
        "corral_crash_loop",
        "1 while the master has declared a crash loop (a request keeps killing its worker): workers serve one "
        "connection at a time.",
    )
    crash_loop.add_metric([], 1.0 if board.crash_looping(now) else 0.0)
    dropped = CounterMetricFamily(
        "corral_master_log_lines_dropped",
        "Master log lines dropped because its log output (a pipe) was full and not being read.",
    )
    dropped.add_metric([], board.log_lines_dropped)
    return [state, heartbeat, alive, ready, generation, started, restarts, crash_loop, dropped]


def _worker_families(board: BoardSnapshot, now: float) -> list[Metric]:
    workers = board.workers
    by_state = GaugeMetricFamily("corral_workers", "Worker processes by state.", labels=["state"])
    for state in _WORKER_STATES:
        by_state.add_metric([state.name.lower()], sum(1 for w in workers if w.state is state))
    target = GaugeMetricFamily("corral_workers_target", "How many workers the master keeps (TTIN/TTOU change it).")
    target.add_metric([], board.master.target)
    rss = GaugeMetricFamily("corral_worker_rss_bytes", "Resident memory of each worker.", labels=["worker"])
    boot = GaugeMetricFamily(
        "corral_worker_boot_seconds", "Seconds each READY worker took from fork to READY (app import, lifespan).",
        labels=["worker"],
    )  # fmt: skip
    silence = GaugeMetricFamily(
        "corral_worker_heartbeat_age_seconds", "Seconds since each worker's event loop last reported.",
        labels=["worker"],
    )  # fmt: skip
    for worker in workers:
        label = [str(worker.index)]
        rss.add_metric(label, worker.rss)
        silence.add_metric(label, max(0.0, now - worker.heartbeat))
        if worker.ready_at:
            boot.add_metric(label, max(0.0, worker.ready_at - worker.started))
    return [by_state, target, rss, boot, silence]


def _http_families(board: BoardSnapshot) -> list[Metric]:
    totals = board.totals()
    workers = board.workers
    responses = CounterMetricFamily(
        "corral_http_responses", "Responses sent, by status class (WebSocket handshakes too).", labels=["status_class"]
    )
    for name, count in zip(_STATUS_CLASSES, totals.responses, strict=True):
        responses.add_metric([name], count)
    received = CounterMetricFamily(
        "corral_http_request_bytes", "Bytes received from clients (heads, bodies, WebSocket frames)."
    )
    received.add_metric([], totals.bytes_in)
    sent = CounterMetricFamily("corral_http_response_bytes", "Response body bytes sent (WebSocket frames too).")
    sent.add_metric([], totals.bytes_out)
    families: list[Metric] = [responses, received, sent]
    for name, doc, value in (
        ("corral_http_requests_active", "Requests being answered now.", sum(w.active_requests for w in workers)),
        ("corral_connections_active", "Open client connections.", sum(w.active_connections for w in workers)),
        ("corral_websocket_connections_active", "Open WebSocket connections.", sum(w.websockets for w in workers)),
    ):
        gauge = GaugeMetricFamily(name, doc)
        gauge.add_metric([], max(0, value))
        families.append(gauge)
    if board.request_metrics:
        families += _timed_families(board)
    return families


def _timed_families(board: BoardSnapshot) -> list[Metric]:
    """With request_metrics on: requests by method and the duration histogram."""
    totals = board.totals()
    methods = CounterMetricFamily("corral_http_requests", "HTTP requests answered, by method.", labels=["method"])
    for name, count in zip(METHODS, totals.methods, strict=True):
        methods.add_metric([name], count)
    buckets: list[tuple[str, float]] = []
    cumulative = 0
    for bound, count in zip(board.latency_bounds, totals.latency, strict=False):
        cumulative += count
        buckets.append((floatToGoString(bound), cumulative))
    count = sum(totals.latency)
    buckets.append(("+Inf", count))
    duration = HistogramMetricFamily(
        "corral_http_request_duration_seconds", "Time from a request's head to the end of its response."
    )
    duration.add_metric([], buckets, sum_value=totals.duration_ns / 1e9)
    return [methods, duration]


def _listener_families(board: BoardSnapshot, listener_names: list[str]) -> list[Metric]:
    depth = GaugeMetricFamily(
        "corral_listen_backlog", "Connections waiting in the listener's accept queue.", labels=["listener"]
    )
    limit = GaugeMetricFamily(
        "corral_listen_backlog_max", "The most the kernel queues on the listener (backlog, capped by somaxconn).",
        labels=["listener"],
    )  # fmt: skip
    for name, queue in zip(listener_names, board.listeners, strict=False):
        if queue is not None:
            depth.add_metric([name], queue.depth)
            limit.add_metric([name], queue.limit)
    return [depth, limit]


class BoardCollector:
    """A prometheus-client collector that reads the scoreboard at every scrape."""

    def __init__(
        self,
        read_board: Callable[[], BoardSnapshot],
        listener_names: list[str],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.read_board = read_board
        self.listener_names = listener_names
        self.clock = clock

    def collect(self) -> Iterator[Metric]:
        yield from metric_families(self.read_board(), self.listener_names, self.clock())


class MemoryLimitCollector:
    """The memory the server may use, read once when the admin process starts: what memory alerts compare
    the workers' RSS with."""

    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes

    def collect(self) -> Iterator[Metric]:
        limit = GaugeMetricFamily(
            "corral_memory_limit_bytes",
            "Memory this server may use: the tightest cgroup limit (a container's), else physical RAM; 0 unknown.",
        )
        limit.add_metric([], self.limit_bytes)
        yield limit


def metrics_registry(collector: BoardCollector, *others: Any) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    for each in (collector, *others):
        registry.register(each)
    return registry


def render_metrics(registry: CollectorRegistry) -> bytes:
    """The text exposition of everything the registry collects now."""
    return generate_latest(registry)
