"""The app's own prometheus_client metrics on the admin /metrics of a real server: a Counter, live and
non-live Gauges and a Histogram counted in 2 workers are summed, survive a worker's death as multiprocess
mode defines, and the directory corral prepared is gone after exit; a user's directory is used and kept; the
setting turns it off; a preloaded app counts too."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import Server, free_port, raw_request, wait_until

# Every request: the counter +1 and one histogram observation; each worker sets its live gauge to 1 at import.
# GET /dir answers the multiprocess directory the worker sees, /pid its pid.
METRICS_APP = """
import os

from prometheus_client import Counter, Gauge, Histogram

HITS = Counter("shop_hits", "Requests the app saw.", ["path"])
LIVE = Gauge("shop_workers_live", "Workers alive.", multiprocess_mode="livesum")
SEEN = Gauge("shop_workers_seen", "Workers that ever started.", multiprocess_mode="sum")
TIMES = Histogram("shop_seconds", "Fake durations.", buckets=(0.1, 1.0))
CLASH = Counter("corral_http_responses", "An app metric named like corral's own.")
LIVE.set(1)
SEEN.inc()


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    path = scope["path"]
    if path == "/dir":
        body = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "unset").encode()
    elif path == "/pid":
        body = str(os.getpid()).encode()
    else:
        HITS.labels(path).inc()
        TIMES.observe(0.5)
        CLASH.inc()
        body = b"ok"
    headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})
"""

Samples = dict[str, dict[tuple[tuple[str, str], ...], float]]


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    (tmp_path / "metricsapp.py").write_text(METRICS_APP)
    return tmp_path


class Admin:
    def __init__(self, server: Server, port: int) -> None:
        self.server = server
        self.url = f"http://127.0.0.1:{port}"

    def text(self) -> str:
        response = httpx.get(self.url + "/metrics", timeout=5.0)
        assert response.status_code == 200
        return response.text

    def samples(self) -> Samples:
        found: Samples = {}
        for family in text_string_to_metric_families(self.text()):
            for sample in family.samples:
                found.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
        return found

    def workers(self) -> list[dict[str, Any]]:
        try:
            return httpx.get(self.url + "/status", timeout=5.0).json()["workers"]
        except httpx.HTTPError:
            return []

    def wait_for_ready(self, count: int, not_pids: set[int] = frozenset()) -> set[int]:  # type: ignore[assignment]
        def ready() -> bool:
            workers = self.workers()
            return (
                len(workers) == count
                and all(w["state"] == "ready" and w["pid"] for w in workers)
                and not not_pids & {w["pid"] for w in workers}
            )

        assert wait_until(ready, 20), self.server.stderr_text()
        return {w["pid"] for w in self.workers()}


@pytest.fixture
def start(serve: Any, app_dir: Path) -> Callable[..., Admin]:
    def start_server(*args: str) -> Admin:
        port = free_port()
        server = serve("metricsapp:app", "--admin-bind", f"127.0.0.1:{port}", *args, app_dir=app_dir)
        return Admin(server, port)

    return start_server


def get(server: Server, path: str) -> bytes:
    data = raw_request(server.port, f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), data
    return body


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get(name, {}).get(tuple(sorted(labels.items())), 0.0)


def live_pids(samples: Samples, name: str) -> set[int]:
    return {int(dict(labels)["pid"]) for labels in samples.get(name, {})}


def test_app_counter_gauge_and_histogram_are_summed_over_workers_and_survive_a_worker_death(
    start: Callable[..., Admin],
) -> None:
    # reuse_port spreads the connections over both workers by their source port.
    admin = start("-w", "2", "--reuse-port")
    pids = admin.wait_for_ready(2)
    directory = get(admin.server, "/dir").decode()
    assert directory != "unset" and os.path.isdir(directory)
    served_by = {int(get(admin.server, "/pid")) for _ in range(40)}
    for _ in range(30):
        get(admin.server, "/a")
    for _ in range(10):
        get(admin.server, "/b")

    samples = admin.samples()
    assert value(samples, "shop_hits_total", path="/a") == 30
    assert value(samples, "shop_hits_total", path="/b") == 10
    assert value(samples, "shop_seconds_count") == 40
    assert value(samples, "shop_seconds_bucket", le="1.0") == 40
    assert value(samples, "shop_seconds_bucket", le="0.1") == 0
    assert value(samples, "shop_workers_live") == 2
    assert value(samples, "shop_workers_seen") == 2
    assert served_by == pids, "both workers must have counted for the sums to mean anything"

    victim = min(pids)
    os.kill(victim, signal.SIGKILL)  # a worker corral started for this test's server
    admin.wait_for_ready(2, not_pids={victim})
    samples = admin.samples()
    # Counters and histograms keep the dead worker's counts; its live gauge is dropped, its successor's added.
    assert value(samples, "shop_hits_total", path="/a") == 30
    assert value(samples, "shop_seconds_count") == 40
    assert value(samples, "shop_workers_live") == 2
    assert value(samples, "shop_workers_seen") == 3
    assert not any(f"_{victim}.db" in name and "live" in name for name in os.listdir(directory))

    assert admin.server.stop() == 0
    assert not os.path.exists(directory), "the directory corral made is removed at exit"


def test_app_metric_named_like_corrals_own_is_left_out(start: Callable[..., Admin]) -> None:
    admin = start()
    admin.wait_for_ready(1)
    for _ in range(3):
        get(admin.server, "/a")
    text = admin.text()
    assert text.count("# TYPE corral_http_responses_total counter") == 1  # corral's own, once
    assert value(admin.samples(), "shop_hits_total", path="/a") == 3
    assert admin.server.wait_for_stderr("'corral_http_responses' is left out")


def test_app_metrics_off_leaves_the_environment_and_metrics_alone(start: Callable[..., Admin]) -> None:
    admin = start("--no-app-metrics")
    admin.wait_for_ready(1)
    assert get(admin.server, "/dir") == b"unset"
    get(admin.server, "/a")
    samples = admin.samples()
    assert "shop_hits_total" not in samples and "corral_workers" in samples


def test_a_preloaded_app_counts_into_the_workers_files(start: Callable[..., Admin]) -> None:
    admin = start("-w", "2", "--preload")
    admin.wait_for_ready(2)
    for _ in range(12):
        get(admin.server, "/a")
    samples = admin.samples()
    assert value(samples, "shop_hits_total", path="/a") == 12
    # Set in the master at import, then inherited: each worker's own files hold what it set after fork.
    assert value(samples, "shop_seconds_count") == 12


def test_a_directory_the_user_set_is_used_and_kept(
    start: Callable[..., Admin], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mine = tmp_path / "prom"
    mine.mkdir()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(mine))
    admin = start()
    admin.wait_for_ready(1)
    assert get(admin.server, "/dir").decode() == str(mine)
    get(admin.server, "/a")
    assert value(admin.samples(), "shop_hits_total", path="/a") == 1
    assert admin.server.stop() == 0
    assert mine.is_dir() and any(mine.iterdir())


def test_a_user_directory_that_does_not_exist_stops_the_start_naming_the_setting(
    serve: Any, app_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "missing"))
    server = serve("metricsapp:app", "--admin-bind", f"127.0.0.1:{free_port()}", app_dir=app_dir, wait_ready=False)
    assert server.wait(15) == 2
    lines = [line for line in server.stderr_text().splitlines() if "error" in line]
    assert len(lines) == 1 and "app_metrics" in lines[0] and "PROMETHEUS_MULTIPROC_DIR" in lines[0]
    assert not server.accepts_connections()


def test_a_preloaded_app_counts_even_when_the_config_file_imported_prometheus_client_first(
    start: Callable[..., Admin], app_dir: Path
) -> None:
    # Gunicorn-style config files import prometheus_client for their child_exit hook, before corral sets the
    # directory: the app's metrics, created at preload in the master, must still go to the files.
    config = app_dir / "metrics.conf.py"
    config.write_text("import prometheus_client.values  # noqa: F401\npreload_app = True\nworkers = 2\n")
    admin = start("-c", str(config))
    admin.wait_for_ready(2)
    for _ in range(5):
        get(admin.server, "/a")
    assert value(admin.samples(), "shop_hits_total", path="/a") == 5


def test_recycled_workers_counts_stay_exact_while_their_files_are_folded(start: Callable[..., Admin]) -> None:
    # max_requests 5 and one worker: each round of 6 requests has the worker replaced; each leaves counter,
    # histogram and gauge files behind.
    admin = start("--max-requests", "5")
    (pid,) = admin.wait_for_ready(1)
    directory = get(admin.server, "/dir").decode()
    sent = 0
    for _ in range(4):
        for _ in range(6):
            get(admin.server, "/a")
            sent += 1
        (pid,) = admin.wait_for_ready(1, not_pids={pid})

    samples = admin.samples()
    assert value(samples, "shop_hits_total", path="/a") == sent
    assert value(samples, "shop_seconds_count") == sent
    assert value(samples, "shop_workers_live") == 1
    assert value(samples, "shop_workers_seen") == 5
    counter_files = sorted(name for name in os.listdir(directory) if name.startswith("counter_"))
    assert counter_files == sorted(["counter_archive.db", f"counter_{pid}.db"])
    app_only = {name: found for name, found in samples.items() if name.startswith("shop_")}
    assert {name: found for name, found in admin.samples().items() if name.startswith("shop_")} == app_only
