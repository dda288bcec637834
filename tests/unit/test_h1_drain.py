"""Drain and completion accounting in the HTTP/1.1 protocol, through a fake transport: idle connections keep
their keep-alive timeout, app calls are tracked until they return, a fully written response is complete."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from corral.http.errors import ClientDisconnected
from tests.unit.test_h1_protocol import Harness, hello, run

GET = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


def test_an_idle_connection_in_a_drain_is_kept_until_its_keepalive_timeout() -> None:
    async def main() -> None:
        h = Harness(hello, keepalive=5.0)
        h.feed(GET)
        state = h.state
        state.draining = True
        state.drain_started = state.clock
        h.protocol.check_timeouts(state.clock + 4.0)
        assert not h.transport.closed
        h.protocol.check_timeouts(state.clock + 5.5)
        assert h.transport.closed

    run(main())


def test_a_request_on_an_idle_connection_in_a_drain_is_answered_with_connection_close() -> None:
    async def main() -> None:
        h = Harness(hello, keepalive=5.0)
        h.feed(GET)
        h.state.draining = True
        h.protocol.check_timeouts(h.state.clock + 3.0)
        h.transport.written.clear()
        h.feed(GET)
        assert h.output.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"connection: close\r\n" in h.output
        assert h.transport.closed

    run(main())


def test_an_app_that_answers_without_suspending_is_not_tracked() -> None:
    async def main() -> None:
        h = Harness(hello)
        h.feed(GET)
        assert h.output.startswith(b"HTTP/1.1 200 OK")
        assert h.state.app_calls == set()

    run(main())


def test_an_app_call_is_tracked_after_its_response_until_it_returns() -> None:
    async def main() -> None:
        release = asyncio.Event()

        async def background_after_response(scope: dict, receive: Callable, send: Callable) -> None:
            await asyncio.sleep(0)
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"queued"})
            await release.wait()  # a background task, run by the app after its response

        h = Harness(background_after_response)
        done: list[bool] = []
        h.state.on_app_calls_done = lambda: done.append(True)
        h.feed(GET)
        await h.settle()
        assert h.output.endswith(b"queued")
        (call,) = h.state.app_calls
        assert call.response_complete and call.task is not None and not call.task.done()
        release.set()
        await h.settle()
        assert h.state.app_calls == set()
        assert done == [True]

    run(main())


@pytest.mark.parametrize("app_waits", [True, False], ids=["before-its-final-message", "without-a-length"])
def test_a_response_whose_declared_length_is_written_is_complete_when_the_client_leaves(app_waits: bool) -> None:
    async def main() -> None:
        outcome: list[BaseException | None] = []

        async def download(scope: dict, receive: Callable, send: Callable) -> None:
            headers = [(b"content-length", b"5")] if app_waits else []
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": b"hello", "more_body": True})
            await asyncio.sleep(0.01)
            try:
                await send({"type": "http.response.body", "body": b""})
            except ClientDisconnected as exc:
                outcome.append(exc)
                raise
            outcome.append(None)

        h = Harness(download)
        h.feed(GET)
        await h.settle()
        h.protocol.connection_lost(None)
        await asyncio.sleep(0.05)
        counters = h.state.counters
        # With its length all on the wire the answer is complete; a chunked one without its last chunk is not.
        assert (counters.requests, counters.responses[1]) == ((1, 1) if app_waits else (0, 0))
        assert len(outcome) == 1 and isinstance(outcome[0], ClientDisconnected)
        assert h.state.app_calls == set()

    run(main())


@pytest.mark.parametrize(
    ("method", "status", "length"), [("HEAD", 200, True), ("HEAD", 204, False), ("GET", 304, False)]
)
def test_content_length_goes_out_with_head_but_never_with_204_or_304(method: str, status: int, length: bool) -> None:
    async def main() -> None:
        async def app(scope: dict, receive: Callable, send: Callable) -> None:
            await send({"type": "http.response.start", "status": status, "headers": [(b"content-length", b"7")]})
            await send({"type": "http.response.body", "body": b""})

        h = Harness(app)
        h.feed(b"%s / HTTP/1.1\r\nHost: x\r\n\r\n" % method.encode())
        assert h.output.startswith(b"HTTP/1.1 %d " % status)
        assert (b"content-length: 7\r\n" in h.output) is length
        assert h.output.endswith(b"\r\n\r\n")
        assert not h.transport.closed

    run(main())


@pytest.mark.parametrize("status", [200.0, 101, 103, True])
def test_a_final_status_that_is_not_an_int_in_200_to_599_becomes_a_500(status: object) -> None:
    async def main() -> None:
        async def app(scope: dict, receive: Callable, send: Callable) -> None:
            await send({"type": "http.response.start", "status": status, "headers": []})
            await send({"type": "http.response.body", "body": b"never sent"})

        h = Harness(app)
        h.feed(GET + GET)
        await h.settle()
        assert h.output.startswith(b"HTTP/1.1 500 ")
        assert b"never sent" not in h.output
        assert h.output.count(b"HTTP/1.1 ") == 1
        assert h.transport.closed

    run(main())
