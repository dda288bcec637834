"""Every kind of finished request goes through the request ledger once: counted once, in the access log once
(refusals, which have no request line, never), and one step toward max_requests. Driven through the HTTP/1.1
protocol with a fake transport."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from corral.core.scoreboard import WorkerCounters
from corral.http import eager
from corral.http.h1 import H1Protocol
from corral.http.wsgi import WSGIApp
from tests.unit.fakes import FakeTransport, server_state

eager.install()

GET = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
WEBSOCKET = (
    b"GET /chat HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


class RecordingAccessLog:
    """Keeps (status, body bytes) of each line the server asked for."""

    def __init__(self) -> None:
        self.lines: list[tuple[int, int | None]] = []

    def log(self, scope: dict[str, Any], status: int, headers: Any, length: int | None, elapsed_ns: int) -> None:
        assert scope["path"] and elapsed_ns >= 0
        self.lines.append((status, length))


class BusyConnection:
    """Another connection of the worker, busy with a request: never shed to make room."""

    def is_idle(self) -> bool:
        return False


class Ledgered:
    """One connection to a worker whose max_requests is 1, with timed counters and an access log."""

    def __init__(self, app: Callable[..., Any], *, busy_neighbours: int = 0, **overrides: Any) -> None:
        self.counters = WorkerCounters.timing((60.0,))
        self.access_log = RecordingAccessLog()
        self.successors_asked = 0
        self.state = server_state(
            app,
            counters=self.counters,
            access_log=self.access_log,
            max_requests=1,
            on_max_requests=self.ask_for_successor,
            **overrides,
        )
        for _ in range(busy_neighbours):
            self.state.connections.add(BusyConnection())  # type: ignore[arg-type]
        self.transport = FakeTransport()
        self.protocol = H1Protocol(self.state)
        self.transport.set_protocol(self.protocol)
        self.protocol.connection_made(self.transport)

    def ask_for_successor(self) -> None:
        self.successors_asked += 1

    def feed(self, data: bytes) -> None:
        protocol = self.transport.protocol
        assert isinstance(protocol, asyncio.Protocol)
        protocol.data_received(data)

    async def settle(self) -> None:
        """Let apps that suspended (and WSGI threads) run to the end of their response."""
        for _ in range(200):
            if self.counters.requests and self.protocol.cycle is None:
                break
            await asyncio.sleep(0.005)
        for _ in range(10):
            await asyncio.sleep(0)


def run(main: Callable[[], Any]) -> None:
    asyncio.run(asyncio.wait_for(main(), 10))


async def hello(scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"hi"})


async def streamed(scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"one", "more_body": True})
    await asyncio.sleep(0)  # suspends: the rest runs in a Task
    await send({"type": "http.response.body", "body": b"two", "more_body": True})
    await send({"type": "http.response.body", "body": b""})


async def fails(scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
    raise RuntimeError("the app failed")


async def cut_off(scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"part", "more_body": True})


def assert_accounted_once(conn: Ledgered, status: int, logged: list[tuple[int, int | None]], timed: int = 1) -> None:
    counters = conn.counters
    assert counters.requests == 1
    assert counters.responses == [1 if status // 100 == n else 0 for n in range(1, 6)]
    assert sum(counters.latency) == timed
    assert conn.access_log.lines == logged
    assert conn.successors_asked == 1


def test_a_plain_response_is_counted_timed_and_logged_once() -> None:
    async def main() -> None:
        conn = Ledgered(hello)
        conn.feed(GET)
        await conn.settle()
        assert_accounted_once(conn, 200, [(200, 2)])
        assert conn.counters.bytes_out == 2

    run(main)


def test_a_streamed_response_that_suspends_is_accounted_once_when_it_completes() -> None:
    async def main() -> None:
        conn = Ledgered(streamed)
        conn.feed(GET)
        await conn.settle()
        assert conn.transport.written.endswith(b"0\r\n\r\n")
        assert_accounted_once(conn, 200, [(200, 6)])

    run(main)


def test_pipelined_requests_are_each_accounted_once() -> None:
    async def main() -> None:
        conn = Ledgered(streamed)
        conn.feed(GET * 3)
        for _ in range(100):
            if conn.counters.requests == 3:
                break
            await asyncio.sleep(0.005)
        await conn.settle()
        assert (conn.counters.requests, conn.access_log.lines, conn.successors_asked) == (3, [(200, 6)] * 3, 1)

    run(main)


def test_a_request_refused_with_400_is_counted_and_not_logged() -> None:
    async def main() -> None:
        conn = Ledgered(hello)
        conn.feed(b"GET / HTTP/1.1\r\n\r\n")  # no Host
        await conn.settle()
        assert conn.transport.written.startswith(b"HTTP/1.1 400 ")
        assert_accounted_once(conn, 400, [], timed=0)

    run(main)


def test_a_request_over_limit_concurrency_is_refused_with_503_once() -> None:
    async def main() -> None:
        conn = Ledgered(hello, limit_concurrency=1)
        H1Protocol(conn.state)  # a second connection of the worker: the first one's request is over the limit
        conn.feed(GET)
        await conn.settle()
        assert conn.transport.written.startswith(b"HTTP/1.1 503 ")
        assert_accounted_once(conn, 503, [], timed=0)

    run(main)


def test_a_connection_over_worker_connections_is_refused_with_503_once() -> None:
    async def main() -> None:
        conn = Ledgered(hello, worker_connections=1, busy_neighbours=1)
        assert conn.transport.written.startswith(b"HTTP/1.1 503 ") and conn.transport.closed
        assert_accounted_once(conn, 503, [], timed=0)

    run(main)


def test_a_500_answered_for_a_failing_app_is_accounted_and_logged_once() -> None:
    async def main() -> None:
        conn = Ledgered(fails)
        conn.feed(GET)
        await conn.settle()
        assert conn.transport.written.startswith(b"HTTP/1.1 500 ")
        assert_accounted_once(conn, 500, [(500, 0)])

    run(main)


def test_a_response_the_app_cut_off_is_accounted_and_logged_once() -> None:
    async def main() -> None:
        conn = Ledgered(cut_off)
        conn.feed(GET)
        await conn.settle()
        assert conn.transport.closed
        assert_accounted_once(conn, 200, [(200, 4)])

    run(main)


def test_a_websocket_session_is_one_request_however_many_messages_it_carries() -> None:
    async def echo_then_close(scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        for _ in range(3):
            await send({"type": "websocket.send", "text": "tick"})
        await send({"type": "websocket.close"})

    async def main() -> None:
        conn = Ledgered(echo_then_close)
        conn.feed(WEBSOCKET)
        await conn.settle()
        assert conn.transport.written.startswith(b"HTTP/1.1 101 ")
        assert_accounted_once(conn, 101, [(101, 0)])

    run(main)


def test_a_websocket_handshake_the_app_refuses_is_one_request() -> None:
    async def refuse(scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        await send({"type": "websocket.close"})

    async def main() -> None:
        conn = Ledgered(refuse)
        conn.feed(WEBSOCKET)
        await conn.settle()
        assert conn.transport.written.startswith(b"HTTP/1.1 403 ")
        assert_accounted_once(conn, 403, [(403, 0)])

    run(main)


def test_a_wsgi_request_is_accounted_once() -> None:
    def wsgi_hello(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        start_response("201 Created", [("Content-Type", "text/plain")])
        return [b"made"]

    async def main() -> None:
        conn = Ledgered(WSGIApp(wsgi_hello).configure(threads=1))
        conn.feed(GET)
        await conn.settle()
        assert conn.transport.written.startswith(b"HTTP/1.1 201 ")
        assert_accounted_once(conn, 201, [(201, 4)])

    run(main)
