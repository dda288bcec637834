"""A draining worker loses nothing: app work that outlives its response (Starlette background tasks) finishes on
TERM, HUP, max_requests and TTOU; INT still runs lifespan shutdown; idle keep-alive connections get one more
answer instead of a reset; keep-alive clients see no failure through a reload or a shutdown."""

from __future__ import annotations

import random
import re
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.integration.conftest import (
    Conn,
    Server,
    ServerFactory,
    logged_ready_pids,
    wait_for_ready_workers,
    wait_until,
)

APP = "tests.apps.drain_apps:app"
_PID = re.compile(rb"pid=(\d+)")


def start_job(port: int, seconds: float, marker: Path) -> int:
    """POST a background job; the pid of the worker that queued it (its response is complete at once)."""
    with Conn(port) as conn:
        conn.send(
            f"POST /job?seconds={seconds}&marker={marker} HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n".encode()
        )
        response = conn.read_response()
    assert response.status == 200, response
    match = _PID.search(response.body)
    assert match is not None
    assert wait_until(Path(f"{marker}.started").exists, 10), "the background job never started"
    return int(match.group(1))


def worker_log(server: Server, pid: int) -> str:
    return "\n".join(line for line in server.stderr_text().splitlines() if f"[{pid}]" in line)


def test_term_waits_for_a_background_task_that_outlives_its_response(serve: ServerFactory, tmp_path: Path) -> None:
    server = serve(APP)
    marker = tmp_path / "job"
    pid = start_job(server.port, 1.5, marker)
    server.signal(signal.SIGTERM)
    assert server.wait(30) == 0, server.stderr_text()
    assert marker.read_text() == f"done by {pid}", server.stderr_text()
    assert "Waiting for 1 app task(s) to finish" in worker_log(server, pid)


def test_hup_lets_the_replaced_worker_finish_its_background_task(serve: ServerFactory, tmp_path: Path) -> None:
    server = serve(APP)
    (old,) = wait_for_ready_workers(server, 1)
    marker = tmp_path / "job"
    assert start_job(server.port, 1.5, marker) == old
    server.signal(signal.SIGHUP)
    assert wait_until(marker.exists, 20), server.stderr_text()
    assert marker.read_text() == f"done by {old}"
    assert wait_until(lambda: "Shutdown complete" in worker_log(server, old), 20)
    assert "Waiting for 1 app task(s) to finish" in worker_log(server, old)


def test_max_requests_recycling_lets_the_worker_finish_its_background_task(
    serve: ServerFactory, tmp_path: Path
) -> None:
    server = serve(APP, "--max-requests", "1")
    marker = tmp_path / "job"
    pid = start_job(server.port, 1.5, marker)
    assert wait_until(marker.exists, 20), server.stderr_text()
    assert marker.read_text() == f"done by {pid}"
    assert wait_until(lambda: "Shutdown complete" in worker_log(server, pid), 20), server.stderr_text()
    assert "Waiting for 1 app task(s) to finish" in worker_log(server, pid)


def test_ttou_lets_the_retired_worker_finish_its_background_task(serve: ServerFactory, tmp_path: Path) -> None:
    server = serve(APP, "-w", "2")
    newest = max(wait_for_ready_workers(server, 2))  # TTOU retires the newest worker: forked last
    marker = None
    for attempt in range(60):  # new connections go to either worker: queue jobs until one lands on it
        candidate = tmp_path / f"job-{attempt}"
        if start_job(server.port, 2, candidate) == newest:
            marker = candidate
            break
    assert marker is not None, "no job ever reached the newest worker"
    server.signal(signal.SIGTTOU)
    assert wait_until(marker.exists, 20), server.stderr_text()
    assert marker.read_text() == f"done by {newest}"
    assert wait_until(lambda: "Shutdown complete" in worker_log(server, newest), 20), server.stderr_text()
    assert "Waiting for 1 app task(s) to finish" in worker_log(server, newest)


def test_a_background_task_longer_than_graceful_timeout_is_cancelled_and_named(
    serve: ServerFactory, tmp_path: Path
) -> None:
    server = serve(APP, "--graceful-timeout", "1")
    marker = tmp_path / "job"
    pid = start_job(server.port, 60, marker)
    server.signal(signal.SIGTERM)
    assert server.wait(30) == 0, server.stderr_text()
    assert not marker.exists()
    assert Path(f"{marker}.cancelled").exists(), server.stderr_text()
    log = worker_log(server, pid)
    assert "graceful_timeout (1s) expired: cancelling 1 app task(s) still running: POST /job (after its response)" in (
        log
    ), log


def test_int_during_a_drain_stops_waiting_cancels_the_app_work_and_still_runs_lifespan_shutdown(
    serve: ServerFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutdown_marker = tmp_path / "lifespan-shutdown"
    monkeypatch.setenv("CORRAL_TEST_SHUTDOWN_MARKER", str(shutdown_marker))
    server = serve(APP, "--graceful-timeout", "120")
    marker = tmp_path / "job"
    pid = start_job(server.port, 120, marker)
    server.signal(signal.SIGTERM)
    assert wait_until(lambda: "Waiting for 1 app task(s)" in worker_log(server, pid), 10), server.stderr_text()
    server.signal(signal.SIGINT)
    assert server.wait(30) is not None, "the drain went on after INT"
    assert Path(f"{marker}.cancelled").exists(), server.stderr_text()
    assert "fast shutdown during the drain: cancelling 1 app task(s) still running: POST /job" in worker_log(
        server, pid
    )
    assert shutdown_marker.read_text() == f"shutdown by {pid}"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGQUIT], ids=["INT", "QUIT"])
def test_fast_shutdown_still_runs_lifespan_shutdown(
    serve: ServerFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, signum: signal.Signals
) -> None:
    marker = tmp_path / "lifespan-shutdown"
    monkeypatch.setenv("CORRAL_TEST_SHUTDOWN_MARKER", str(marker))
    server = serve(APP)
    (pid,) = wait_for_ready_workers(server, 1)
    server.signal(signum)
    assert server.wait(30) is not None
    assert marker.read_text() == f"shutdown by {pid}", server.stderr_text()


# --- idle keep-alive connections in a drain --------------------------------------------------------------


@pytest.mark.parametrize("used", [True, False], ids=["after-a-response", "never-used"])
def test_draining_worker_answers_one_more_request_on_an_idle_keepalive_connection(
    serve: ServerFactory, used: bool
) -> None:
    server = serve(APP, "--keep-alive", "10", "--graceful-timeout", "30")
    wait_for_ready_workers(server, 1)
    request = b"GET /pid HTTP/1.1\r\nHost: t\r\n\r\n"
    with Conn(server.port) as conn:
        if used:
            conn.send(request)
            first = conn.read_response()
            assert first.status == 200 and not first.closes
        server.signal(signal.SIGTERM)
        assert server.wait_for_stderr("Worker shutting down gracefully")
        time.sleep(2)  # idle in the drain, longer than any short grace, within the keep-alive timeout
        conn.send(request)
        response = conn.read_response()
        assert response.status == 200
        assert response.closes, response.raw_head
        assert conn.wait_closed(timeout=10) == b""
    assert server.wait(30) == 0, server.stderr_text()


def test_idle_keepalive_connection_is_closed_by_the_keepalive_timeout_during_a_drain(serve: ServerFactory) -> None:
    server = serve(APP, "--keep-alive", "2", "--graceful-timeout", "60")
    with Conn(server.port) as conn:
        conn.send(b"GET /pid HTTP/1.1\r\nHost: t\r\n\r\n")
        assert conn.read_response().status == 200
        server.signal(signal.SIGTERM)
        # Closed by its keep-alive timeout, not held until graceful_timeout: the worker then exits.
        assert conn.wait_closed(timeout=20) == b""
    assert server.wait(20) == 0, server.stderr_text()
    assert "graceful_timeout" not in server.stderr_text()


def test_a_drain_with_no_connections_and_no_app_work_exits_without_waiting(serve: ServerFactory) -> None:
    server = serve(APP, "--keep-alive", "60", "--graceful-timeout", "60")
    server.signal(signal.SIGTERM)
    # Both bounds are a minute: exiting within the wait below means nothing was waited for.
    assert server.wait(20) == 0, server.stderr_text()
    assert "Waiting for" not in server.stderr_text()


# --- keep-alive clients through a reload and a shutdown -----------------------------------------------------


@dataclass
class KeepAliveClients:
    """Threads POSTing over keep-alive connections with idle pauses, reconnecting after Connection: close.

    A request written on an open connection that gets no response is a failure (what a proxy turns into a
    502). A refused connect is not: after a shutdown the server is simply gone.
    """

    port: int
    clients: int = 8
    max_seconds: float = 40.0
    answered: int = 0
    refused: int = 0
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __enter__(self) -> KeepAliveClients:
        for index in range(self.clients):
            thread = threading.Thread(target=self._run, args=(random.Random(index),), daemon=True)
            self._threads.append(thread)
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(20)

    def wait_for_answers(self, count: int, timeout: float = 20.0) -> bool:
        target = self.answered + count
        return wait_until(lambda: self.answered >= target, timeout)

    def _run(self, rng: random.Random) -> None:
        deadline = time.monotonic() + self.max_seconds
        conn: Conn | None = None
        body = b"x" * 100
        request = b"POST /pid HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        for _ in range(100_000):
            if self._stop.is_set() or time.monotonic() > deadline:
                break
            if conn is None:
                try:
                    conn = Conn(self.port)
                except ConnectionRefusedError:
                    with self._lock:
                        self.refused += 1
                    time.sleep(0.1)
                    continue
            try:
                conn.send(request)
                response = conn.read_response()
            except (OSError, AssertionError) as exc:
                with self._lock:
                    self.failures.append(repr(exc))
                conn.close()
                conn = None
                continue
            with self._lock:
                if response.status == 200:
                    self.answered += 1
                else:
                    self.failures.append(f"status {response.status}")
            if response.closes:
                conn.close()
                conn = None
            # Idle pauses longer than a second, shorter than the keep-alive timeout: the pooled connection of a
            # proxy that is not busy all the time.
            time.sleep(rng.uniform(0.0, 2.0))
        if conn is not None:
            conn.close()


def test_keepalive_clients_lose_no_request_through_a_reload_and_a_shutdown(serve: ServerFactory) -> None:
    server = serve(APP, "-w", "2", "--keep-alive", "5", "--graceful-timeout", "20")
    wait_for_ready_workers(server, 2)
    with KeepAliveClients(server.port) as clients:
        assert clients.wait_for_answers(16)
        old = logged_ready_pids(server)
        server.signal(signal.SIGHUP)
        assert wait_until(lambda: all(f"[{pid}] [INFO] Shutdown complete" in server.stderr_text() for pid in old), 30)
        assert clients.wait_for_answers(16)
        assert clients.refused == 0, "connections were refused during the reload"
        server.signal(signal.SIGTERM)
        assert server.wait(40) == 0, server.stderr_text()
        clients.stop()
    failed = len(clients.failures)
    assert failed == 0, f"{failed} of {clients.answered + failed} requests failed: {clients.failures[:5]}"

