"""A streamed response sent while the app runs without waiting goes out in one write; nothing is held once it waits."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from corral.http import eager
from corral.http.asgi import HOLD_LIMIT
from corral.http.h1 import H1Protocol
from tests.unit.fakes import FakeTransport, server_state

eager.install()

REQUEST = b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n"
START = {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]}


class CountingTransport(FakeTransport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:  # type: ignore[override]
        super().write(data)
        self.writes.append(bytes(data))


def serve(app: Callable[..., object]) -> tuple[H1Protocol, CountingTransport]:
    state = server_state(app)
    transport = CountingTransport()
    protocol = H1Protocol(state)
    protocol.connection_made(transport)
    return protocol, transport


def body_of(output: bytes) -> bytes:
    """Decode a chunked body."""
    rest = output.split(b"\r\n\r\n", 1)[1]
    body = b""
    while True:
        size_line, rest = rest.split(b"\r\n", 1)
        size = int(size_line, 16)
        if size == 0:
            return body
        body, rest = body + rest[:size], rest[size + 2:]


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def test_parts_streamed_without_waiting_go_out_in_one_write() -> None:
    async def app(scope: dict, receive: Callable, send: Callable) -> None:
        await send(START)
        for part in (b"alpha\n", b"beta\n", b"gamma\n"):
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    async def main() -> None:
        protocol, transport = serve(app)
        protocol.data_received(REQUEST)
        assert len(transport.writes) == 1
        assert b"transfer-encoding: chunked\r\n" in transport.writes[0]
        assert body_of(bytes(transport.written)) == b"alpha\nbeta\ngamma\n"
        assert not transport.closed

    asyncio.run(main())


def test_parts_streamed_before_the_app_waits_are_written_when_it_waits() -> None:
    async def main() -> None:
        event = asyncio.Event()

        async def app(scope: dict, receive: Callable, send: Callable) -> None:
            await send(START)
            await send({"type": "http.response.body", "body": b"first\n", "more_body": True})
            await event.wait()
            await send({"type": "http.response.body", "body": b"second\n", "more_body": True})
            await event.wait()
            await send({"type": "http.response.body", "body": b""})

        protocol, transport = serve(app)
        protocol.data_received(REQUEST)
        assert transport.written.endswith(b"6\r\nfirst\n\r\n")  # out as soon as the app waited
        event.set()
        await settle()
        assert body_of(bytes(transport.written)) == b"first\nsecond\n"

    asyncio.run(main())


def test_a_part_sent_after_the_app_waited_is_written_at_once() -> None:
    async def main() -> None:
        resumed, sent = asyncio.Event(), asyncio.Event()
        finish = asyncio.Event()

        async def app(scope: dict, receive: Callable, send: Callable) -> None:
            await send(START)
            await resumed.wait()
            await send({"type": "http.response.body", "body": b"live\n", "more_body": True})
            sent.set()
            await finish.wait()
            await send({"type": "http.response.body", "body": b""})

        protocol, transport = serve(app)
        protocol.data_received(REQUEST)
        resumed.set()
        await sent.wait()
        assert transport.written.endswith(b"5\r\nlive\n\r\n")
        finish.set()
        await settle()
        assert body_of(bytes(transport.written)) == b"live\n"

    asyncio.run(main())


def test_held_parts_are_written_before_the_close_when_the_app_fails_mid_stream() -> None:
    async def app(scope: dict, receive: Callable, send: Callable) -> None:
        await send(START)
        await send({"type": "http.response.body", "body": b"partial\n", "more_body": True})
        raise RuntimeError("boom")

    async def main() -> None:
        protocol, transport = serve(app)
        protocol.data_received(REQUEST)
        assert transport.written.endswith(b"8\r\npartial\n\r\n")
        assert transport.closed

    asyncio.run(main())


def test_a_stream_past_the_hold_limit_is_written_as_it_grows() -> None:
    part = b"x" * 4096
    parts = 2 * HOLD_LIMIT // len(part) + 3

    async def app(scope: dict, receive: Callable, send: Callable) -> None:
        await send(START)
        for _ in range(parts):
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    async def main() -> None:
        protocol, transport = serve(app)
        protocol.data_received(REQUEST)
        assert len(transport.writes) >= 3
        assert max(len(data) for data in transport.writes) < HOLD_LIMIT + len(part) + 64
        assert body_of(bytes(transport.written)) == part * parts

    asyncio.run(main())
