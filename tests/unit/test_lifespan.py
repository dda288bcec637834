"""Lifespan: startup/shutdown events, state handed to requests, failures, apps without lifespan support."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from corral.worker.lifespan import Lifespan, LifespanFailure
from tests.apps import lifespan_starlette

LOGGER = logging.getLogger("corral.test.lifespan")


def run(coroutine):
    async def bounded():
        return await asyncio.wait_for(coroutine, timeout=10)

    return asyncio.run(bounded())


async def startup_failure(lifespan: Lifespan) -> str:
    with pytest.raises(LifespanFailure) as caught:
        await lifespan.startup()
    message = str(caught.value)
    assert message and "\n" not in message
    return message


class ScriptedApp:
    """A hand-written lifespan app: records what it saw and answers as told."""

    def __init__(self, startup: dict | None = None, shutdown: dict | None = None) -> None:
        self.startup_answer = startup if startup is not None else {"type": "lifespan.startup.complete"}
        self.shutdown_answer = shutdown if shutdown is not None else {"type": "lifespan.shutdown.complete"}
        self.events: list[str] = []
        self.scopes: list[dict] = []

    async def __call__(self, scope: dict, receive, send) -> None:
        self.scopes.append(scope)
        message = await receive()
        self.events.append(message["type"])
        await send(self.startup_answer)
        message = await receive()
        self.events.append(message["type"])
        await send(self.shutdown_answer)
        self.events.append("returned")


async def app_without_lifespan(scope, receive, send):
    assert scope["type"] == "http"  # how most apps without lifespan support react to the lifespan scope


async def app_ignoring_lifespan(scope, receive, send):
    if scope["type"] != "http":
        return


# ------------------------------------------------------------------------------------------- Starlette


def test_starlette_lifespan_state_is_set_at_startup_and_cleaned_up_at_shutdown():
    events: list[str] = []
    lifespan = Lifespan(lifespan_starlette.create_app(events), "on", LOGGER)

    async def scenario():
        await lifespan.startup()
        after_startup = (list(events), dict(lifespan.state))
        await lifespan.shutdown()
        return after_startup

    events_after_startup, state_after_startup = run(scenario())

    assert events_after_startup == ["startup"]
    assert state_after_startup == {"pool": "the-pool"}
    assert events == ["startup", "shutdown"]
    assert lifespan._task is not None and lifespan._task.done()


def test_requests_see_the_lifespan_state_through_a_shallow_copy():
    app = lifespan_starlette.create_app([])
    lifespan = Lifespan(app, "on", LOGGER)

    async def request_pool() -> list[dict]:
        sent: list[dict] = []
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": "/pool",
            "raw_path": b"/pool",
            "root_path": "",
            "query_string": b"",
            "headers": [],
            "state": dict(lifespan.state),  # what the HTTP server gives each request
        }

        async def receive():
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message):
            sent.append(message)

        await app(scope, receive, send)
        return sent

    async def scenario():
        await lifespan.startup()
        sent = await request_pool()
        await lifespan.shutdown()
        return sent

    sent = run(scenario())

    assert sent[0]["status"] == 200
    assert sent[1]["body"] == b"the-pool"


def test_starlette_startup_exception_fails_startup_with_one_line_and_logs_the_traceback(caplog):
    caplog.set_level(logging.ERROR, logger=LOGGER.name)
    events: list[str] = []
    lifespan = Lifespan(lifespan_starlette.create_app(events, fail_startup=True), "auto", LOGGER)

    async def scenario():
        message = await startup_failure(lifespan)
        await lifespan.shutdown()  # a worker that failed to start still shuts down cleanly
        return message

    message = run(scenario())

    assert message == "RuntimeError: database unreachable"
    assert "Traceback (most recent call last)" in caplog.text
    assert 'raise RuntimeError("database unreachable")' in caplog.text
    assert lifespan._task is not None and lifespan._task.done()
    assert events == ["startup"]


def test_starlette_shutdown_exception_is_logged_not_raised(caplog):
    caplog.set_level(logging.ERROR, logger=LOGGER.name)
    events: list[str] = []
    lifespan = Lifespan(lifespan_starlette.create_app(events, fail_shutdown=True), "on", LOGGER)

    async def scenario():
        await lifespan.startup()
        await lifespan.shutdown()

    run(scenario())

    assert events == ["startup", "shutdown"]
    assert "lifespan shutdown failed" in caplog.text
    assert "RuntimeError: could not flush" in caplog.text


# ---------------------------------------------------------------------------- apps without lifespan


def test_auto_mode_serves_an_app_that_raises_on_the_lifespan_scope(caplog):
    caplog.set_level(logging.INFO, logger=LOGGER.name)
    lifespan = Lifespan(app_without_lifespan, "auto", LOGGER)

    async def scenario():
        await lifespan.startup()
        await lifespan.shutdown()

    run(scenario())

    [record] = [record for record in caplog.records if record.levelno >= logging.INFO]
    assert record.levelno == logging.INFO
    assert "does not support the ASGI lifespan protocol" in record.getMessage()
    assert "AssertionError" in record.getMessage()
    assert lifespan.state == {}


def test_auto_mode_serves_an_app_that_returns_on_the_lifespan_scope(caplog):
    caplog.set_level(logging.DEBUG, logger=LOGGER.name)
    scopes = []

    async def app(scope, receive, send):
        scopes.append(scope["type"])
        await app_ignoring_lifespan(scope, receive, send)

    lifespan = Lifespan(app, "auto", LOGGER)
    outcomes = []

    async def scenario():
        await lifespan.startup()  # a LifespanFailure here would stop the worker from serving
        outcomes.append("started")
        await lifespan.shutdown()
        outcomes.append("stopped")

    run(scenario())

    assert outcomes == ["started", "stopped"]
    assert scopes == ["lifespan"]  # called once; no second call for shutdown
    [record] = [record for record in caplog.records if record.levelno >= logging.INFO]
    assert record.levelno == logging.INFO
    assert "serving it without startup and shutdown events" in record.getMessage()
    assert "it returned without using receive or send" in record.getMessage()
    assert lifespan.state == {}


def test_on_mode_fails_startup_for_an_app_that_raises_on_the_lifespan_scope():
    lifespan = Lifespan(app_without_lifespan, "on", LOGGER)

    message = run(startup_failure(lifespan))

    assert "the app does not support the ASGI lifespan protocol" in message
    assert "AssertionError" in message and "lifespan is 'on'" in message


def test_on_mode_fails_startup_for_an_app_that_returns_on_the_lifespan_scope():
    lifespan = Lifespan(app_ignoring_lifespan, "on", LOGGER)

    message = run(startup_failure(lifespan))

    assert "(it returned without using receive or send)" in message


def test_off_mode_never_calls_the_app():
    app = ScriptedApp()
    lifespan = Lifespan(app, "off", LOGGER)

    async def scenario():
        await lifespan.startup()
        await lifespan.shutdown()

    run(scenario())

    assert app.scopes == []


@pytest.mark.parametrize("mode", ["auto", "on"])
def test_app_that_raises_after_receiving_startup_fails_in_every_mode(mode):
    async def broken_startup(scope, receive, send):
        await receive()
        raise ConnectionError("no database\nat db:5432")

    lifespan = Lifespan(broken_startup, mode, LOGGER)

    message = run(startup_failure(lifespan))

    assert message == "the app raised ConnectionError: no database at db:5432"


# ----------------------------------------------------------------------------------- the protocol


def test_lifespan_scope_carries_versions_and_the_state_dict():
    app = ScriptedApp()
    lifespan = Lifespan(app, "on", LOGGER)

    async def scenario():
        await lifespan.startup()
        await lifespan.shutdown()

    run(scenario())

    [scope] = app.scopes
    assert scope["type"] == "lifespan"
    assert scope["asgi"] == {"version": "3.0", "spec_version": "2.0"}
    assert scope["state"] is lifespan.state


def test_shutdown_event_is_sent_only_when_shutdown_is_called_and_awaited_to_the_end():
    app = ScriptedApp()
    lifespan = Lifespan(app, "on", LOGGER)

    async def scenario():
        await lifespan.startup()
        for _ in range(10):  # give the app's task every chance to run ahead
            await asyncio.sleep(0)
        before_shutdown = list(app.events)
        await lifespan.shutdown()
        return before_shutdown

    before_shutdown = run(scenario())

    assert before_shutdown == ["lifespan.startup"]
    assert app.events == ["lifespan.startup", "lifespan.shutdown", "returned"]
    assert lifespan._task is not None and lifespan._task.done() and not lifespan._task.cancelled()


def test_startup_failed_message_becomes_the_failure():
    app = ScriptedApp(startup={"type": "lifespan.startup.failed", "message": "no DB"})
    lifespan = Lifespan(app, "on", LOGGER)

    assert run(startup_failure(lifespan)) == "no DB"


def test_startup_failed_without_message_still_says_why():
    lifespan = Lifespan(ScriptedApp(startup={"type": "lifespan.startup.failed"}), "auto", LOGGER)

    message = run(startup_failure(lifespan))

    assert message == "the app sent 'lifespan.startup.failed' without a message"


def test_unexpected_event_during_startup_fails_startup_and_raises_into_the_app():
    seen: list[BaseException] = []

    async def confused_app(scope, receive, send):
        await receive()
        try:
            await send({"type": "http.response.start", "status": 200})
        except RuntimeError as exc:
            seen.append(exc)
            raise

    lifespan = Lifespan(confused_app, "auto", LOGGER)

    message = run(startup_failure(lifespan))

    assert "the app sent 'http.response.start'" in message
    assert "expected 'lifespan.startup.complete' or 'lifespan.startup.failed'" in message
    assert len(seen) == 1


def test_waiting_for_the_next_event_before_answering_startup_fails_instead_of_hanging():
    async def impatient_app(scope, receive, send):
        await receive()
        await receive()

    lifespan = Lifespan(impatient_app, "on", LOGGER)

    message = run(startup_failure(lifespan))

    assert "asked for the next lifespan event before answering startup" in message


def test_returning_after_startup_event_without_answering_fails():
    async def forgetful_app(scope, receive, send):
        await receive()

    lifespan = Lifespan(forgetful_app, "auto", LOGGER)

    message = run(startup_failure(lifespan))

    assert message == "the app returned without sending 'lifespan.startup.complete'"


def test_shutdown_failed_is_logged(caplog):
    caplog.set_level(logging.ERROR, logger=LOGGER.name)
    app = ScriptedApp(shutdown={"type": "lifespan.shutdown.failed", "message": "could not flush"})
    lifespan = Lifespan(app, "on", LOGGER)

    async def scenario():
        await lifespan.startup()
        await lifespan.shutdown()

    run(scenario())

    assert [record.getMessage() for record in caplog.records] == ["lifespan shutdown failed: could not flush"]


def test_app_waiting_for_events_after_shutdown_is_cancelled_not_awaited_forever():
    cancelled: list[bool] = []

    async def lingering_app(scope, receive, send):
        await receive()
        await send({"type": "lifespan.startup.complete"})
        await receive()
        await send({"type": "lifespan.shutdown.complete"})
        try:
            await receive()
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    lifespan = Lifespan(lingering_app, "on", LOGGER)

    async def scenario():
        await lifespan.startup()
        await lifespan.shutdown()

    run(scenario())

    assert cancelled == [True]


def test_lifespan_scope_crashing_after_startup_is_logged_at_once_and_shutdown_still_returns(caplog):
    caplog.set_level(logging.ERROR, logger=LOGGER.name)
    crash = asyncio.Event()

    async def crashing_app(scope, receive, send):
        await receive()
        await send({"type": "lifespan.startup.complete"})
        await crash.wait()
        raise RuntimeError("background job died")

    lifespan = Lifespan(crashing_app, "on", LOGGER)

    async def scenario():
        await lifespan.startup()
        crash.set()
        assert lifespan._task is not None
        await asyncio.wait({lifespan._task})
        logged_before_shutdown = caplog.text
        await lifespan.shutdown()
        return logged_before_shutdown

    logged_before_shutdown = run(scenario())

    assert "raised after startup" in logged_before_shutdown
    assert "RuntimeError: background job died" in logged_before_shutdown


def test_cancelled_shutdown_cancels_the_app_task():
    got_shutdown = asyncio.Event()
    cancelled: list[bool] = []

    async def slow_shutdown_app(scope, receive, send):
        await receive()
        await send({"type": "lifespan.startup.complete"})
        await receive()
        got_shutdown.set()
        try:
            await asyncio.get_running_loop().create_future()  # a shutdown that never finishes
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    lifespan = Lifespan(slow_shutdown_app, "on", LOGGER)

    async def scenario():
        await lifespan.startup()
        shutdown = asyncio.create_task(lifespan.shutdown())
        await got_shutdown.wait()
        shutdown.cancel()
        with pytest.raises(asyncio.CancelledError):
            await shutdown
        assert lifespan._task is not None
        await asyncio.wait({lifespan._task})

    run(scenario())

    assert cancelled == [True]


def test_startup_can_run_only_once():
    lifespan = Lifespan(ScriptedApp(), "on", LOGGER)

    async def scenario():
        await lifespan.startup()
        with pytest.raises(RuntimeError):
            await lifespan.startup()
        await lifespan.shutdown()

    run(scenario())


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="lifespan mode"):
        Lifespan(ScriptedApp(), "sometimes", LOGGER)


def test_shutdown_without_startup_does_nothing():
    app: Any = ScriptedApp()

    run(Lifespan(app, "on", LOGGER).shutdown())

    assert app.scopes == []


def test_cancelled_startup_cancels_the_app_task_and_shutdown_then_returns():
    got_startup = asyncio.Event()
    cancelled: list[bool] = []

    async def slow_startup_app(scope, receive, send):
        await receive()
        got_startup.set()
        try:
            await asyncio.get_running_loop().create_future()  # a startup that never finishes
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    lifespan = Lifespan(slow_startup_app, "on", LOGGER)

    async def scenario():
        startup = asyncio.create_task(lifespan.startup())
        await got_startup.wait()
        startup.cancel()
        with pytest.raises(asyncio.CancelledError):
            await startup
        await lifespan.shutdown()

    run(scenario())

    assert cancelled == [True]
    assert lifespan._task is not None and lifespan._task.done()
