"""The drain's wait and its cancelling of app calls, on a real event loop with stand-in connections and tasks."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable

import pytest

from corral.http.state import ServerState
from corral.worker.drain import cancel_app_calls, wait_until_drained
from tests.unit.fakes import server_state


async def _app(scope: dict, receive: object, send: object) -> None:
    return None


def run(coro: Awaitable[None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 10))  # type: ignore[arg-type]


def make_state() -> ServerState:
    return server_state(_app)


class Call:
    """What the drain reads of a RequestCycle."""

    def __init__(self, task: asyncio.Task[None], method: str, path: str, response_complete: bool) -> None:
        self.task = task
        self.scope = {"method": method, "path": path}
        self.response_complete = response_complete


def test_a_drain_with_nothing_to_wait_for_ends_at_once() -> None:
    async def main() -> None:
        state = make_state()
        never = asyncio.get_running_loop().create_future()
        assert await wait_until_drained(state, 3600, logging.getLogger("test"), never)

    run(main())


def test_the_drain_ends_when_the_last_connection_goes_and_the_last_app_call_returns() -> None:
    async def main() -> None:
        state = make_state()
        loop = asyncio.get_running_loop()
        conn = object()
        state.connections.add(conn)  # type: ignore[arg-type]
        call = Call(loop.create_task(asyncio.sleep(3600)), "POST", "/job", True)
        state.app_calls.add(call)  # type: ignore[arg-type]
        waiting = loop.create_task(wait_until_drained(state, 3600, logging.getLogger("test"), loop.create_future()))
        await asyncio.sleep(0)
        state.connections.discard(conn)  # type: ignore[arg-type]
        await asyncio.sleep(0)
        assert not waiting.done()  # the app call still runs
        state.app_call_finished(call)  # type: ignore[arg-type]
        assert await waiting
        call.task.cancel()

    run(main())


def test_the_drain_gives_up_on_a_fast_stop_and_cancel_names_what_it_cancels(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        state = make_state()
        loop = asyncio.get_running_loop()
        call = Call(loop.create_task(asyncio.sleep(3600)), "POST", "/job", True)
        state.app_calls.add(call)  # type: ignore[arg-type]
        give_up = loop.create_future()
        waiting = loop.create_task(wait_until_drained(state, 3600, logging.getLogger("test"), give_up))
        await asyncio.sleep(0)
        give_up.set_result(None)
        assert not await waiting
        tasks = cancel_app_calls(state, logging.getLogger("test"), "fast shutdown")
        assert tasks == [call.task]
        await asyncio.wait(tasks)
        assert call.task.cancelled()

    caplog.set_level(logging.INFO)
    run(main())
    assert "Waiting for 1 app task(s) to finish" in caplog.text
    assert "fast shutdown: cancelling 1 app task(s) still running: POST /job (after its response)" in caplog.text
