"""Probes before everything else on the admin endpoint: /metrics renders off the loop, one render at a time,
and a full connection table makes room by shedding the longest-idle connection, never a request in progress."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from corral.admin.app import AdminApp
from corral.admin.child import shed_one
from corral.core.scoreboard import MasterState, Scoreboard

NOW = 1000.0


@pytest.fixture
def board() -> Iterator[Scoreboard]:
    with Scoreboard(4) as scoreboard:
        scoreboard.set_master(4242, MasterState.RUNNING, 1)
        scoreboard.master_beat(NOW - 0.2, 1)
        yield scoreboard


async def request(app: AdminApp, path: str) -> tuple[int, bytes]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app({"type": "http", "method": "GET", "path": path}, receive, send)
    return sent[0]["status"], sent[1]["body"]


class SlowRender:
    """A /metrics render that takes as long as the test wants (thousands of series, a slow scoreboard)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.calls = 0

    def __call__(self) -> tuple[int, bytes, bytes]:
        self.calls += 1
        self.release.wait(10)
        return 200, b"text/plain", b"metrics\n"


def test_a_slow_metrics_render_does_not_delay_livez_or_readyz(board: Scoreboard) -> None:
    app = AdminApp(board.read_board, [], lambda: NOW)
    render = SlowRender()
    app.metrics = render  # type: ignore[method-assign]

    async def scenario() -> None:
        scrape = asyncio.ensure_future(request(app, "/metrics"))
        await asyncio.sleep(0)  # the scrape is under way
        assert (await request(app, "/livez"))[0] == 200
        assert (await request(app, "/readyz"))[0] == 503  # answered (no worker is ready), not held up
        assert not scrape.done(), "the probes waited for the render"
        render.release.set()
        assert await scrape == (200, b"metrics\n")

    asyncio.run(scenario())


def test_scrapes_that_arrive_during_a_render_share_it(board: Scoreboard) -> None:
    app = AdminApp(board.read_board, [], lambda: NOW)
    render = SlowRender()
    app.metrics = render  # type: ignore[method-assign]

    async def scenario() -> list[tuple[int, bytes]]:
        scrapes = [asyncio.ensure_future(request(app, "/metrics")) for _ in range(5)]
        await asyncio.sleep(0)
        render.release.set()
        return await asyncio.gather(*scrapes)

    assert asyncio.run(scenario()) == [(200, b"metrics\n")] * 5
    assert render.calls == 1
    assert asyncio.run(request(app, "/metrics")) == (200, b"metrics\n")
    assert render.calls == 2  # a later scrape renders afresh


class FakeTransport:
    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


class FakeConnection:
    """What shed_one reads of an H1Protocol."""

    def __init__(self, *, idle_since: float = 0.0, head_started: float = 0.0, busy: bool = False) -> None:
        self.transport = FakeTransport()
        self.closing = False
        self.cycle = object() if busy else None
        self.queue: list[Any] = []
        self.in_head = not busy
        self.head_bytes = 10 if head_started else 0
        self.head_started = head_started
        self.idle_since = idle_since

    def close(self) -> None:
        self.closing = True
        self.transport.close()


def test_the_longest_idle_connection_is_shed_first_then_the_oldest_slow_head_never_a_busy_one() -> None:
    busy = FakeConnection(busy=True)
    slow_old, slow_new = FakeConnection(head_started=1.0), FakeConnection(head_started=2.0)
    idle_old, idle_new = FakeConnection(idle_since=5.0), FakeConnection(idle_since=6.0)
    connections: set[Any] = {busy, slow_old, slow_new, idle_old, idle_new}
    order = []
    for _ in range(10):
        before = set(connections)
        if not shed_one(connections):
            break
        (shed,) = before - connections
        assert shed.transport.closed
        order.append(shed)
    assert order == [idle_old, idle_new, slow_old, slow_new]
    assert connections == {busy} and not busy.transport.closed
