"""Eager execution of app coroutines behaves exactly as running them in a Task."""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any

import pytest

from corral.http import eager

eager.install()

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="unset")


def run(coro_fn: Any) -> list[BaseException | None]:
    """Start coro_fn() eagerly inside a running loop; return the outcomes reported to on_done."""
    outcomes: list[BaseException | None] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        done = loop.create_future()

        def on_done(exc: BaseException | None) -> None:
            outcomes.append(exc)
            done.set_result(None)

        # Called from a plain callback, as the protocol does, not from inside a task.
        loop.call_soon(eager.run_eagerly, loop, coro_fn(), on_done, contextvars.copy_context())
        await asyncio.wait_for(done, 5)
        await asyncio.sleep(0)

    asyncio.run(main())
    return outcomes


def test_app_that_never_suspends_finishes_without_a_task() -> None:
    seen: list[int] = []

    async def app() -> None:
        seen.append(len(asyncio.all_tasks()))

    assert run(app) == [None]
    assert seen == [1]  # only main(): no task was made for the app


def test_app_that_suspends_is_continued_by_a_task() -> None:
    steps: list[str] = []

    async def app() -> None:
        steps.append("before")
        await asyncio.sleep(0.01)
        steps.append("after")

    assert run(app) == [None]
    assert steps == ["before", "after"]


def test_current_task_is_the_same_task_before_and_after_suspending() -> None:
    tasks: list[Any] = []

    async def app() -> None:
        tasks.append(asyncio.current_task())
        await asyncio.sleep(0)
        tasks.append(asyncio.current_task())

    assert run(app) == [None]
    assert tasks[0] is not None
    assert tasks[0] is tasks[1]


def test_exception_in_the_eager_step_is_reported() -> None:
    async def app() -> None:
        raise ValueError("boom")

    (outcome,) = run(app)
    assert isinstance(outcome, ValueError)


def test_exception_after_suspending_is_reported() -> None:
    async def app() -> None:
        await asyncio.sleep(0)
        raise KeyError("late")

    (outcome,) = run(app)
    assert isinstance(outcome, KeyError)


def test_cancelling_the_task_delivers_cancelled_error_to_the_app() -> None:
    caught: list[str] = []

    async def app() -> None:
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().call_later(0.01, task.cancel)
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            caught.append("cancelled")
            raise

    (outcome,) = run(app)
    assert caught == ["cancelled"]
    assert isinstance(outcome, asyncio.CancelledError)


def test_cancel_requested_during_the_eager_step_lands_at_the_next_await() -> None:
    caught: list[str] = []

    async def app() -> None:
        task = asyncio.current_task()
        assert task is not None
        task.cancel()
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            caught.append("cancelled")
        await asyncio.sleep(0)  # the app swallowed it and carries on

    assert run(app) == [None]
    assert caught == ["cancelled"]


def test_context_changes_stay_within_one_run() -> None:
    values: list[str] = []

    async def app() -> None:
        values.append(request_id.get())
        request_id.set("mine")
        await asyncio.sleep(0)
        values.append(request_id.get())

    run(app)
    run(app)
    assert values == ["unset", "mine", "unset", "mine"]


def test_anyio_task_group_works_inside_the_eager_step() -> None:
    anyio = pytest.importorskip("anyio")
    results: list[int] = []

    async def child(n: int) -> None:
        await anyio.sleep(0)
        results.append(n)

    async def app() -> None:
        async with anyio.create_task_group() as group:
            group.start_soon(child, 1)
            group.start_soon(child, 2)

    assert run(app) == [None]
    assert sorted(results) == [1, 2]


def test_anyio_cancel_scope_timeout_inside_the_eager_step() -> None:
    anyio = pytest.importorskip("anyio")
    reached: list[str] = []

    async def app() -> None:
        with anyio.move_on_after(0.01):
            await anyio.sleep(10)
            reached.append("not here")
        reached.append("after scope")

    assert run(app) == [None]
    assert reached == ["after scope"]
