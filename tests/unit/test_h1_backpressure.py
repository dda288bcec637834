"""Bounds a client cannot push past on one HTTP/1.1 connection (pipelining depth, a client that reads no
responses) and the worker_connections cap, driven through a fake transport."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from corral.http import eager
from corral.http.h1 import H1Protocol
from corral.http.state import ServerState
from tests.unit.fakes import FakeTransport, server_state

eager.install()

GET = b"GET /%d HTTP/1.1\r\nHost: x\r\n\r\n"


class Counting:
    """Answers each request with its path; the first one waits for `release` when `hold` is set."""

    def __init__(self, hold: bool = False) -> None:
        self.paths: list[str] = []
        self.release = asyncio.Event()
        if not hold:
            self.release.set()

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        self.paths.append(scope["path"])
        if not self.release.is_set():
            await self.release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": scope["path"].encode()})


def run(coro: Awaitable[None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 10))  # type: ignore[arg-type]


async def settle_until(condition: Callable[[], bool], turns: int = 20000) -> None:
    for _ in range(turns):
        if condition():
            return
        await asyncio.sleep(0)


def connect(state: ServerState) -> tuple[H1Protocol, FakeTransport]:
    protocol = H1Protocol(state)
    transport = FakeTransport()
    protocol.connection_made(transport)
    return protocol, transport


def new_state(app: Any, **settings: Any) -> ServerState:
    return server_state(app, **settings)


def test_pipelined_requests_are_parsed_only_a_few_ahead_of_a_slow_app() -> None:
    async def main() -> None:
        app = Counting(hold=True)
        protocol, transport = connect(new_state(app))
        protocol.data_received(b"".join(GET % i for i in range(2000)))
        # Parsing stopped a slice after PIPELINE_AHEAD requests waited; the rest of the read is held, unread.
        assert 8 <= len(protocol.queue) < 200 and protocol.unparsed and not transport.reading
        app.release.set()
        await settle_until(lambda: len(app.paths) == 2000 and transport.reading)
        assert app.paths == [f"/{i}" for i in range(2000)]
        protocol.state.write_held_outputs()  # the last response goes at the end of this loop iteration
        assert transport.written.count(b"HTTP/1.1 200 OK") == 2000 and transport.reading

    run(main())


def test_no_request_is_started_or_parsed_while_the_client_reads_no_responses() -> None:
    async def main() -> None:
        app = Counting()
        protocol, transport = connect(new_state(app))
        protocol.data_received(GET % 0)
        protocol.pause_writing()  # the transport's buffer is full: the client is not reading
        protocol.data_received(b"".join(GET % i for i in range(1, 1001)))
        assert app.paths == ["/0"] and not protocol.queue and not transport.reading
        protocol.resume_writing()
        await settle_until(lambda: len(app.paths) == 1001 and transport.reading)
        assert app.paths == [f"/{i}" for i in range(1001)] and transport.reading

    run(main())


def test_reading_pauses_while_the_client_reads_no_responses_and_resumes_when_it_does() -> None:
    async def main() -> None:
        app = Counting()
        protocol, transport = connect(new_state(app))
        protocol.data_received(GET % 1)
        protocol.pause_writing()  # the last response filled the transport's buffer
        assert not transport.reading
        protocol.resume_writing()
        assert transport.reading
        protocol.data_received(GET % 2)
        assert app.paths == ["/1", "/2"]

    run(main())


def test_a_large_body_is_parsed_no_further_than_the_app_has_read() -> None:
    async def main() -> None:
        release = asyncio.Event()
        received: list[int] = []

        async def app(scope: dict, receive: Callable, send: Callable) -> None:
            await release.wait()
            while True:
                message = await receive()
                received.append(len(message["body"]))
                if not message["more_body"]:
                    break
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"%d" % sum(received)})

        protocol, transport = connect(new_state(app))
        body = b"b" * (1024 * 1024)
        protocol.data_received(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        assert protocol.parsing is not None and protocol.parsing.buffered_bytes < 256 * 1024
        assert protocol.unparsed and not transport.reading
        release.set()
        await settle_until(lambda: transport.written.endswith(b"%d" % len(body)) and transport.reading)
        assert sum(received) == len(body) and transport.reading

    run(main())


def test_a_websocket_upgrade_parsed_from_a_slice_keeps_every_byte_behind_it() -> None:
    async def main() -> None:
        got: list[bytes] = []

        async def app(scope: dict, receive: Callable, send: Callable) -> None:
            if scope["type"] == "http":
                await Counting()(scope, receive, send)
                return
            await receive()
            await send({"type": "websocket.accept"})
            got.append((await receive())["bytes"])

        protocol, transport = connect(new_state(app))
        transport.set_protocol = lambda new: setattr(transport, "protocol", new)  # type: ignore[method-assign]
        handshake = (
            b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        payload = bytes(range(256)) * 64  # 16 KiB: the frame spans several parse slices
        frame = bytes((0x82, 0x80 | 126)) + len(payload).to_bytes(2, "big") + b"\0\0\0\0" + payload
        protocol.data_received(b"".join(GET % i for i in range(3)) + handshake + frame)
        await settle_until(lambda: bool(got))
        assert got == [payload]

    run(main())


def idle_connection(state: ServerState) -> tuple[H1Protocol, FakeTransport]:
    protocol, transport = connect(state)
    protocol.data_received(GET % 0)
    return protocol, transport


def test_at_the_connection_cap_the_longest_idle_keepalive_is_closed_to_serve_a_new_client() -> None:
    async def main() -> None:
        state = new_state(Counting(), worker_connections=3)
        idle = []
        for index in range(3):
            state.clock = 100.0 + index  # each one goes idle a second after the previous one
            idle.append(idle_connection(state))
        state.clock = 110.0
        newcomer, transport = idle_connection(state)
        state.write_held_outputs()  # its response goes at the end of this loop iteration
        assert transport.written.startswith(b"HTTP/1.1 200 OK") and not transport.closed
        assert [t.closed for _, t in idle] == [True, False, False]  # the longest idle went
        assert newcomer in state.connections and idle[0][0] not in state.connections
        assert len(state.connections) == 3

    run(main())


def test_at_the_connection_cap_a_connection_that_never_sent_a_request_is_shed_after_answered_ones() -> None:
    async def main() -> None:
        state = new_state(Counting(), worker_connections=2)
        state.clock = 100.0
        _, silent_transport = connect(state)  # idle longest, but its first request may be on the wire
        state.clock = 101.0
        _, answered_transport = idle_connection(state)
        state.clock = 110.0
        _, transport = idle_connection(state)
        state.write_held_outputs()  # its response goes at the end of this loop iteration
        assert transport.written.startswith(b"HTTP/1.1 200 OK")
        assert answered_transport.closed and not silent_transport.closed
        held = Counting(hold=True)
        state.app = held
        state.clock = 111.0
        busy, _ = idle_connection(state)  # the answered one is shed again; this one stays busy
        protocol = H1Protocol(state)
        transport = FakeTransport()
        protocol.app = Counting()
        protocol.connection_made(transport)  # no answered idle connection left: the silent one goes
        assert silent_transport.closed and not transport.closed and busy.cycle is not None
        held.release.set()

    run(main())


def test_at_the_connection_cap_a_new_client_gets_503_only_when_every_connection_is_busy() -> None:
    async def main() -> None:
        app = Counting(hold=True)
        state = new_state(app, worker_connections=2)
        busy = [idle_connection(state) for _ in range(2)]  # each holds a request the app has not answered
        assert all(p.cycle is not None for p, _ in busy)
        refused, transport = connect(state)
        assert transport.written.startswith(b"HTTP/1.1 503 ") and transport.closed
        assert not any(t.closed for _, t in busy) and refused not in state.connections
        app.release.set()

    run(main())


def test_a_connection_whose_request_head_is_arriving_is_not_shed() -> None:
    async def main() -> None:
        state = new_state(Counting(), worker_connections=1)
        sending, sending_transport = connect(state)
        sending.data_received(b"GET / HTTP/1.1\r\nHost:")
        _, transport = connect(state)
        assert transport.written.startswith(b"HTTP/1.1 503 ") and not sending_transport.closed

    run(main())


def test_a_connection_holding_unparsed_requests_for_a_slow_reader_is_not_closed_as_idle() -> None:
    async def main() -> None:
        app = Counting()
        state = new_state(app, keepalive=5.0)
        protocol, transport = connect(state)
        protocol.data_received(GET % 0)
        protocol.pause_writing()  # the client reads its responses slowly
        protocol.data_received(b"".join(GET % i for i in range(1, 1001)))
        protocol.check_timeouts(state.clock + 60.0)
        assert not transport.closed
        protocol.resume_writing()
        await settle_until(lambda: len(app.paths) == 1001)
        assert app.paths == [f"/{i}" for i in range(1001)]

    run(main())
