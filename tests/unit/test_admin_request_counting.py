"""What a worker counts per request, driven through the HTTP/1.1 protocol with a fake transport: status
classes, methods and the duration histogram when the request metrics are on, only the basics when off,
and responses the app failed to finish counted like the others."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from corral.core.scoreboard import METHODS, WorkerCounters
from corral.http import eager
from corral.http.h1 import H1Protocol
from tests.unit.fakes import FakeTransport, server_state

eager.install()


async def by_path(scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
    """/NNN answers status NNN; /fail raises before answering; /sleep waits 20 ms first."""
    path = scope["path"].strip("/")
    if path == "fail":
        raise RuntimeError("the app failed")
    if path == "sleep":
        await asyncio.sleep(0.02)
    await send({"type": "http.response.start", "status": int(path) if path.isdigit() else 200, "headers": []})
    await send({"type": "http.response.body", "body": b"hi"})


def serve(counters: WorkerCounters, requests: list[tuple[str, str]]) -> None:
    async def main() -> None:
        state = server_state(by_path, counters=counters)
        for method, path in requests:
            protocol = H1Protocol(state)
            protocol.connection_made(FakeTransport())
            protocol.data_received(f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".encode())
            for _ in range(200):
                if protocol.cycle is None and not protocol.queue:
                    break
                await asyncio.sleep(0.005)

    asyncio.run(asyncio.wait_for(main(), 10))


def test_timed_counters_count_status_classes_methods_and_durations() -> None:
    counters = WorkerCounters.timing((0.005, 10.0))
    serve(counters, [("GET", "/"), ("GET", "/404"), ("POST", "/201"), ("DELETE", "/503"), ("PROPFIND", "/"),
                     ("GET", "/sleep")])  # fmt: skip
    assert counters.requests == 6
    assert counters.responses == [0, 4, 0, 1, 1]
    assert dict(zip(METHODS, counters.method_counts(), strict=True)) == {
        "GET": 3, "HEAD": 0, "POST": 1, "PUT": 0, "PATCH": 0, "DELETE": 1, "OPTIONS": 0, "other": 1,
    }  # fmt: skip
    assert counters.latency[:3] == [5, 1, 0]  # the sleeping one is over 5 ms, none over 10 s
    assert counters.duration_ns >= 20_000_000
    assert counters.bytes_out == 12


def test_untimed_counters_keep_only_the_basics() -> None:
    counters = WorkerCounters()
    serve(counters, [("GET", "/"), ("POST", "/500")])
    assert (counters.requests, counters.responses) == (2, [0, 1, 0, 0, 1])
    assert (sum(counters.methods), sum(counters.latency), counters.duration_ns) == (0, 0, 0)


def test_a_500_answered_for_a_failing_app_is_counted_and_timed() -> None:
    counters = WorkerCounters.timing((1.0,))
    serve(counters, [("PUT", "/fail")])
    assert (counters.requests, counters.responses, counters.method_counts()[3], sum(counters.latency)) == (
        1,
        [0, 0, 0, 0, 1],
        1,
        1,
    )
