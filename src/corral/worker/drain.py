"""A worker's graceful drain: waiting for its connections and for the app calls still running, then cancelling
whatever outlives the bound.

An app call is waited for until the app coroutine returns, not until its response is complete: work that runs
after the response (Starlette's BackgroundTasks, a streaming app's cleanup) is part of the request.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from corral.http.state import AppCall, ServerState

__all__ = ["cancel_app_calls", "describe_call", "wait_until_drained"]


async def wait_until_drained(
    state: ServerState, timeout: float, logger: logging.Logger, give_up: asyncio.Future[None]
) -> bool:
    """Wait until every connection is closed and every app call has returned, `timeout` seconds pass, or
    `give_up` is done (a fast stop came).

    Woken by the events themselves (the last connection going, the last app call returning), so a worker
    with nothing left exits at once. True if everything finished.
    """
    loop = state.loop
    deadline = loop.time() + timeout
    if state.app_calls:
        logger.info(
            "Waiting for %d app task(s) to finish (requests in flight or work after their response, such as "
            "background tasks), for up to %gs",
            len(state.app_calls),
            timeout,
        )
    while not _drained(state):
        remaining = deadline - loop.time()
        if remaining <= 0 or give_up.done():
            return False
        await _until_empty(state, give_up, remaining)
    return True


async def _until_empty(state: ServerState, give_up: asyncio.Future[None], timeout: float) -> None:
    """One wait for the moment both sets are empty. The caller checks again: a connection handed over (to a
    WebSocket session) leaves the set for an instant before its successor joins it."""
    emptied: asyncio.Future[None] = state.loop.create_future()

    def check() -> None:
        if _drained(state) and not emptied.done():
            emptied.set_result(None)

    state.connections.on_empty = check
    state.on_app_calls_done = check
    try:
        check()
        await asyncio.wait({emptied, give_up}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        state.connections.on_empty = None
        state.on_app_calls_done = None
        emptied.cancel()


def _drained(state: ServerState) -> bool:
    return not state.connections and not state.app_calls


def cancel_app_calls(state: ServerState, logger: logging.Logger, why: str) -> list[asyncio.Task[Any]]:
    """Cancel every app call still running and name them in the log; their Tasks, to wait for."""
    calls = list(state.app_calls)
    if not calls:
        return []
    logger.warning(
        "%s: cancelling %d app task(s) still running: %s", why, len(calls), ", ".join(map(describe_call, calls))
    )
    tasks = [call.task for call in calls if call.task is not None and not call.task.done()]
    for task in tasks:
        task.cancel()
    return tasks


def describe_call(call: AppCall) -> str:
    """'POST /jobs (after its response)': what the operator needs to find the request again."""
    scope = call.scope
    when = "after its response" if call.response_complete else "before its response was complete"
    return f"{scope['method']} {scope['path']} ({when})"
