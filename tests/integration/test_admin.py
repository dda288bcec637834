"""The admin endpoint of a real server on 127.0.0.1: /metrics scraped with a real HTTP client and parsed by
prometheus-client, exact counts across several workers and across worker replacements, readiness through
start and drain, accept-queue depth while the workers are stopped, the admin process's own life, StatsD."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import Server, child_pids, free_port, raw_request, wait_until

# /NNN answers status NNN, anything else 200; every answer names the worker's pid.
STATUS_APP = """
import os


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    path = scope["path"].strip("/")
    body = f"pid={os.getpid()}\\n".encode()
    headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": int(path) if path.isdigit() else 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})
"""


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    (tmp_path / "statusapp.py").write_text(STATUS_APP)
    return tmp_path


class Admin:
    """A server with its admin endpoint."""

    def __init__(self, server: Server, port: int) -> None:
        self.server = server
        self.port = port
        self.url = f"http://127.0.0.1:{port}"

    def get(self, path: str) -> httpx.Response:
        return httpx.get(self.url + path, timeout=5.0)

    def status(self) -> dict[str, Any]:
        return self.get("/status").json()

    def metrics(self) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
        """Sample name -> {sorted labels -> value}, parsed by prometheus-client's own parser."""
        response = self.get("/metrics")
        assert response.status_code == 200
        samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
        for family in text_string_to_metric_families(response.text):
            for sample in family.samples:
                samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
        return samples

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 10.0) -> dict[str, Any]:
        """Poll /metrics until predicate(samples) holds (workers publish once a second); the last samples."""
        last: dict[str, Any] = {}

        def check() -> bool:
            nonlocal last
            last = self.metrics()
            return predicate(last)

        assert wait_until(check, timeout, interval=0.1), f"metrics never matched; last: {last}"
        return last


@pytest.fixture
def start(serve: Any, app_dir: Path) -> Callable[..., Admin]:
    def start_server(*args: str, app: str = "statusapp:app", wait_ready: bool = True) -> Admin:
        port = free_port()
        server = serve(app, "--admin-bind", f"127.0.0.1:{port}", *args, app_dir=app_dir, wait_ready=wait_ready)
        return Admin(server, port)

    return start_server


def by_label(samples: dict[str, Any], name: str) -> dict[str, float]:
    return {labels[0][1]: value for labels, value in samples.get(name, {}).items()}


def get(port: int, path: str, method: str = "GET") -> int:
    data = raw_request(port, f"{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
    return int(data.split(b" ", 2)[1])


def worker_pids(admin: Admin) -> set[int]:
    return {worker["pid"] for worker in admin.status()["workers"]}


def wait_for_workers(admin: Admin, count: int) -> set[int]:
    """Wait until /status shows exactly `count` workers, all READY; their pids."""

    def ready() -> bool:
        workers = _answers_json(admin)
        return len(workers) == count and all(w["state"] == "ready" and w["pid"] for w in workers)

    assert wait_until(ready, 15), admin.server.stderr_text()
    return worker_pids(admin)


def _answers_json(admin: Admin) -> list[dict[str, Any]]:
    try:
        return admin.status()["workers"]
    except httpx.HTTPError:
        return []


def test_metrics_count_requests_of_known_statuses_exactly_across_workers(start: Callable[..., Admin]) -> None:
    # reuse_port spreads connections over the workers by their source port: 46 cannot all land on one.
    admin = start("-w", "3", "--reuse-port")
    wait_for_workers(admin, 3)
    sent = [("GET", "/", 30), ("GET", "/404", 7), ("POST", "/500", 5), ("HEAD", "/", 4)]
    for method, path, count in sent:
        for _ in range(count):
            get(admin.server.port, path, method)

    samples = admin.wait_for(lambda s: s.get("corral_http_request_duration_seconds_count", {}).get((), 0) >= 46)
    assert by_label(samples, "corral_http_responses_total") == {"1xx": 0, "2xx": 34, "3xx": 0, "4xx": 7, "5xx": 5}
    methods = by_label(samples, "corral_http_requests_total")
    assert (methods["GET"], methods["POST"], methods["HEAD"], sum(methods.values())) == (37, 5, 4, 46)
    buckets = by_label(samples, "corral_http_request_duration_seconds_bucket")
    cumulative = list(buckets.values())  # in the order of their bounds, +Inf last
    assert cumulative == sorted(cumulative) and cumulative[-1] == 46
    assert samples["corral_http_request_duration_seconds_count"][()] == 46
    assert by_label(samples, "corral_workers")["ready"] == 3
    per_worker = [worker["requests"] for worker in admin.status()["workers"]]
    assert sum(per_worker) == 46 and sum(1 for count in per_worker if count) > 1


def test_counts_stay_exact_and_never_go_back_when_workers_are_replaced(start: Callable[..., Admin]) -> None:
    admin = start("-w", "2", "--max-requests", "5")
    wait_for_workers(admin, 2)
    seen: list[float] = []
    for _ in range(23):
        assert get(admin.server.port, "/") == 200
        seen.append(admin.metrics()["corral_http_responses_total"][(("status_class", "2xx"),)])
    samples = admin.wait_for(
        lambda s: (
            s["corral_http_responses_total"][(("status_class", "2xx"),)] == 23
            and s["corral_worker_restarts_total"][(("reason", "max_requests"),)] >= 2
        )
    )
    assert seen == sorted(seen)
    assert samples["corral_http_request_duration_seconds_count"][()] == 23
    reasons = {worker["restart_reason"] for worker in admin.status()["workers"]}
    assert "max_requests" in reasons


def test_readiness_flips_to_503_at_the_start_of_a_drain(start: Callable[..., Admin]) -> None:
    admin = start("--drain-delay", "3")
    wait_for_workers(admin, 1)
    assert admin.get("/readyz").status_code == 200
    admin.server.signal(signal.SIGTERM)
    assert wait_until(lambda: admin.get("/readyz").status_code == 503, 5)
    assert admin.get("/readyz").text == "not ready: draining\n"
    # Still serving through drain_delay, and the master is alive: only readiness changed.
    assert get(admin.server.port, "/") == 200
    assert admin.get("/livez").status_code == 200


def test_readiness_is_503_while_the_first_workers_boot(start: Callable[..., Admin]) -> None:
    admin = start("--boot-timeout", "60", app="tests.apps.master_apps:hanging_lifespan_app", wait_ready=False)
    assert wait_until(lambda: _answers(admin, "/livez") == 200, 15)
    assert admin.get("/readyz").status_code == 503
    assert admin.get("/readyz").text == "not ready: starting\n"
    os.killpg(admin.server.proc.pid, signal.SIGKILL)  # its worker would wait out its lifespan before stopping
    admin.server.wait(10)


def _answers(admin: Admin, path: str) -> int | None:
    try:
        return admin.get(path).status_code
    except httpx.HTTPError:
        return None


@contextlib.contextmanager
def stopped(pids: set[int]) -> Iterator[None]:
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


def test_backlog_depth_rises_while_the_workers_are_stopped(start: Callable[..., Admin]) -> None:
    admin = start("-w", "2", "--backlog", "64")
    wait_for_workers(admin, 2)
    listener = (("listener", f"127.0.0.1:{admin.server.port}"),)
    assert admin.metrics()["corral_listen_backlog_max"][listener] == 64
    waiting: list[socket.socket] = []
    try:
        with stopped(worker_pids(admin)):
            for _ in range(5):
                waiting.append(socket.create_connection(("127.0.0.1", admin.server.port), timeout=5))
            samples = admin.wait_for(lambda s: s["corral_listen_backlog"][listener] == 5, timeout=5)
            assert admin.status()["listeners"][0]["backlog"] == 5
        admin.wait_for(lambda s: s["corral_listen_backlog"][listener] == 0, timeout=10)
    finally:
        for sock in waiting:
            sock.close()
    assert samples["corral_listen_backlog"][listener] == 5


def admin_pid(admin: Admin) -> int:
    others = child_pids(admin.server.proc.pid) - worker_pids(admin)
    assert len(others) == 1, others
    return others.pop()


def test_the_admin_process_is_restarted_when_it_dies_and_is_never_a_worker(start: Callable[..., Admin]) -> None:
    admin = start("-w", "2")
    wait_for_workers(admin, 2)
    first = admin_pid(admin)
    assert "corral: admin" in Path(f"/proc/{first}/cmdline").read_text().replace("\0", " ")
    os.kill(first, signal.SIGKILL)
    assert admin.server.wait_for_stderr(f"The admin process pid {first} exited (killed by signal 9)")
    assert wait_until(lambda: _answers(admin, "/livez") == 200, 10)
    second = admin_pid(admin)
    assert second != first
    status = admin.status()
    assert len(status["workers"]) == 2 and status["master"]["target"] == 2
    assert sum(status["master"]["restarts"].values()) == 0  # not a worker restart


def test_the_admin_process_exits_with_the_master(start: Callable[..., Admin]) -> None:
    admin = start()
    wait_for_workers(admin, 1)
    pid = admin_pid(admin)
    admin.server.proc.kill()  # no shutdown at all: the admin process must notice by itself
    admin.server.wait(10)
    try:
        assert wait_until(lambda: _gone(pid), 10)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(admin.server.proc.pid, signal.SIGKILL)  # the orphaned worker, which has no such duty


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state in ("Z", "X")


def test_an_admin_address_in_use_stops_the_start_with_one_line_and_exit_2(start: Callable[..., Admin]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        server = start("--admin-bind", f"127.0.0.1:{port}", wait_ready=False).server  # the last one given wins
        assert server.wait(15) == 2
    errors = [line for line in server.stderr_text().splitlines() if "error" in line.lower()]
    assert errors == [f"corral: error: admin_bind '127.0.0.1:{port}': Address already in use"]


def test_statsd_gets_the_pool_metrics_under_gunicorns_names(start: Callable[..., Admin]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as statsd:
        statsd.bind(("127.0.0.1", 0))
        statsd.settimeout(0.5)
        admin = start("--statsd-host", f"127.0.0.1:{statsd.getsockname()[1]}", "--statsd-prefix", "shop",
                      "--dogstatsd-tags", "env:test")  # fmt: skip
        wait_for_workers(admin, 1)
        for path in ("/", "/", "/404"):
            get(admin.server.port, path)
        lines: list[str] = []

        def received_all() -> bool:
            with contextlib.suppress(TimeoutError):
                lines.extend(statsd.recv(65536).decode().split("\n"))
            return _counted(lines, "shop.gunicorn.requests") == 3

        assert wait_until(received_all, 10, interval=0.01), lines
    assert _counted(lines, "shop.gunicorn.request.status.4xx") == 1
    assert "shop.gunicorn.workers:1|g|#env:test" in lines
    assert any(line.startswith("shop.gunicorn.request.duration:") and "|ms" in line for line in lines)


def _counted(lines: list[str], name: str) -> int:
    return sum(int(line.split(":")[1].split("|")[0]) for line in lines if line.startswith(name + ":") and "|c" in line)


def test_the_admin_port_is_closed_in_the_workers(start: Callable[..., Admin]) -> None:
    admin = start()
    (worker,) = wait_for_workers(admin, 1)
    inode = _socket_inode(admin.port)
    fds = Path(f"/proc/{worker}/fd")
    held = {os.readlink(fd) for fd in fds.iterdir() if _readable_link(fd)}
    assert f"socket:[{inode}]" not in held


def _socket_inode(port: int) -> int:
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1].endswith(f":{port:04X}") and fields[3] == "0A":  # LISTEN
            return int(fields[9])
    raise AssertionError(f"nothing listens on {port}")


def _readable_link(path: Path) -> bool:
    try:
        os.readlink(path)
    except OSError:
        return False
    return True
