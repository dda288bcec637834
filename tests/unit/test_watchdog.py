"""Loop watchdog: one warning per stall naming the blocking code and the in-flight requests; quiet otherwise."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from corral.worker.watchdog import THREAD_NAME, LoopWatchdog, format_in_flight

SLOW_REQUEST = ("GET", "/slow", "127.0.0.1:5000", 1.3)


class Records(logging.Handler):
    """Collects what one test's own logger emits (no propagation, so nothing else interferes)."""

    def __init__(self, logger: logging.Logger) -> None:
        super().__init__(logging.DEBUG)
        self.logger = logger
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def messages(self, level: int) -> list[str]:
        return [record.getMessage() for record in self.records if record.levelno == level]


@pytest.fixture
def records(request: pytest.FixtureRequest) -> Records:
    logger = logging.getLogger(f"corral.test.watchdog.{request.node.name}")
    handler = Records(logger)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    logger.addHandler(handler)
    request.addfinalizer(lambda: logger.removeHandler(handler))
    return handler


def watchdog_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == THREAD_NAME and thread.is_alive()]


def run_watched(
    records: Records,
    threshold: float,
    body: Callable[[], Coroutine[Any, Any, None]],
    in_flight: Callable[[], list[tuple[str, str, str, float]]] = lambda: [SLOW_REQUEST],
) -> None:
    async def main() -> None:
        watchdog = LoopWatchdog(asyncio.get_running_loop(), threshold, records.logger, in_flight)
        watchdog.start()
        try:
            await asyncio.wait_for(body(), timeout=10)
        finally:
            watchdog.stop()

    asyncio.run(main())


async def block_the_loop_with_a_synchronous_sleep() -> None:
    time.sleep(0.8)


async def one_stall() -> None:
    await asyncio.sleep(0.1)
    await block_the_loop_with_a_synchronous_sleep()
    await asyncio.sleep(0.4)  # room for the watchdog to see the loop recover


def test_a_stall_is_reported_once_with_the_blocking_function_and_the_in_flight_requests(records: Records) -> None:
    run_watched(records, 0.2, one_stall)

    warnings = records.messages(logging.WARNING)
    assert len(warnings) == 1
    warning = warnings[0]
    assert warning.startswith("event loop blocked for ")
    assert "the loop thread is at:" in warning
    assert "block_the_loop_with_a_synchronous_sleep" in warning
    assert "time.sleep(0.8)" in warning
    assert "in-flight requests:\n  GET /slow from 127.0.0.1:5000 for 1.3 s" in warning


def test_the_loop_recovering_is_logged(records: Records) -> None:
    run_watched(records, 0.2, one_stall)

    infos = records.messages(logging.INFO)
    assert len(infos) == 1
    assert infos[0].startswith("event loop unblocked after ")


def test_each_separate_stall_gets_its_own_warning(records: Records) -> None:
    async def two_stalls() -> None:
        await one_stall()
        await one_stall()

    run_watched(records, 0.2, two_stalls)

    assert len(records.messages(logging.WARNING)) == 2


def test_a_healthy_loop_logs_nothing(records: Records) -> None:
    async def busy_but_responsive() -> None:
        for _ in range(50):  # about 0.5 s of short awaits
            await asyncio.sleep(0.01)

    run_watched(records, 0.3, busy_but_responsive)

    assert records.records == []


def test_in_flight_changing_under_the_watchdog_is_retried(records: Records) -> None:
    calls = 0

    def changing_then_settled() -> list[tuple[str, str, str, float]]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("Set changed size during iteration")
        return [SLOW_REQUEST]

    run_watched(records, 0.2, one_stall, changing_then_settled)

    [warning] = records.messages(logging.WARNING)
    assert "GET /slow from 127.0.0.1:5000 for 1.3 s" in warning


def test_a_failing_in_flight_does_not_stop_the_warning(records: Records) -> None:
    def broken() -> list[tuple[str, str, str, float]]:
        raise KeyError("client")

    run_watched(records, 0.2, one_stall, broken)

    [warning] = records.messages(logging.WARNING)
    assert "block_the_loop_with_a_synchronous_sleep" in warning
    assert "in-flight requests: unknown" in warning


def test_stop_ends_the_watchdog_thread(records: Records) -> None:
    before = watchdog_threads()

    async def main() -> list[threading.Thread]:
        watchdog = LoopWatchdog(asyncio.get_running_loop(), 0.2, records.logger, lambda: [])
        watchdog.start()
        running = [thread for thread in watchdog_threads() if thread not in before]
        await asyncio.sleep(0.05)
        watchdog.stop()
        return running

    started = asyncio.run(main())

    assert len(started) == 1
    assert not started[0].is_alive()


def test_stop_ends_the_stamping_callback(records: Records) -> None:
    stamps_after_stop: list[float] = []

    async def main() -> None:
        watchdog = LoopWatchdog(asyncio.get_running_loop(), 0.2, records.logger, lambda: [])
        watchdog.start()
        await asyncio.sleep(0.1)
        watchdog.stop()
        last = watchdog._last_stamp
        await asyncio.sleep(0.2)  # four stamp intervals
        if watchdog._last_stamp != last:
            stamps_after_stop.append(watchdog._last_stamp or 0.0)

    asyncio.run(main())

    assert stamps_after_stop == []


def test_threshold_zero_starts_nothing(records: Records) -> None:
    before = watchdog_threads()

    async def main() -> None:
        watchdog = LoopWatchdog(asyncio.get_running_loop(), 0, records.logger, lambda: [SLOW_REQUEST])
        watchdog.start()
        assert watchdog_threads() == before
        await block_the_loop_with_a_synchronous_sleep()
        watchdog.stop()

    asyncio.run(main())

    assert records.records == []


def test_a_loop_that_is_not_running_is_not_reported_as_blocked(records: Records) -> None:
    loop = asyncio.new_event_loop()
    try:
        watchdog = LoopWatchdog(loop, 0.2, records.logger, lambda: [SLOW_REQUEST])
        loop.run_until_complete(asyncio.sleep(0))
        watchdog.start()
        loop.run_until_complete(asyncio.sleep(0.1))
        time.sleep(0.8)  # between two runs: the loop is paused, not blocked
        loop.run_until_complete(asyncio.sleep(0.3))
        watchdog.stop()
    finally:
        loop.close()

    assert records.messages(logging.WARNING) == []


def test_in_flight_lines_are_oldest_first_and_capped() -> None:
    requests = [("GET", f"/r{age}", "-", float(age)) for age in range(25)]

    lines = format_in_flight(requests).splitlines()

    assert lines[0] == "in-flight requests:"
    assert lines[1] == "  GET /r24 for 24.0 s"
    assert lines[20] == "  GET /r5 for 5.0 s"
    assert lines[21] == "  ... and 5 more"
    assert len(lines) == 22


def test_in_flight_paths_cannot_forge_log_lines() -> None:
    text = format_in_flight([("GET", "/a\nWARNING forged", "10.0.0.1:1", 0.5)])

    assert text == "in-flight requests:\n  GET /a\\nWARNING forged from 10.0.0.1:1 for 0.5 s"


def test_no_in_flight_requests_is_said_plainly() -> None:
    assert format_in_flight([]) == "in-flight requests: none"
