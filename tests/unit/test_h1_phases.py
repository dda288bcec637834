"""The HTTP/1.1 connection's phases and its one decision to pause or resume reading, checked by feeding byte
strings through a fake transport: a request while another is answered, an upgrade, a close during a body,
refusals, and the transition table itself."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from corral.http import eager
from corral.http.asgi import BODY_HIGH_WATER
from corral.http.h1 import _TRANSITIONS, H1Protocol, Phase
from corral.http.websocket import WebSocketSession
from tests.unit.fakes import FakeTransport, server_state

eager.install()

GET = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
WEBSOCKET = (
    b"GET /chat HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


class CountingTransport(FakeTransport):
    """Counts what the transport is told, to prove it hears only of changes."""

    def __init__(self) -> None:
        super().__init__()
        self.pauses = 0
        self.resumes = 0

    def pause_reading(self) -> None:
        assert self.reading, "paused twice"
        self.pauses += 1
        super().pause_reading()

    def resume_reading(self) -> None:
        assert not self.reading, "resumed twice"
        self.resumes += 1
        super().resume_reading()


class GatedApp:
    """Answers HTTP requests once `release` is called; accepts WebSockets at once. Keeps what it received."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.received: list[dict[str, Any]] = []

    def release(self) -> None:
        self.gate.set()

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] == "websocket":
            await receive()
            await send({"type": "websocket.accept"})
            return
        await self.gate.wait()
        self.received.append(await receive())
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


class Connection:
    def __init__(self, app: Callable[..., Any], **overrides: Any) -> None:
        self.transport = CountingTransport()
        self.protocol = H1Protocol(server_state(app, **overrides))
        self.transport.set_protocol(self.protocol)
        self.protocol.connection_made(self.transport)

    def feed(self, data: bytes) -> None:
        self.protocol.data_received(data)

    @property
    def phase(self) -> Phase:
        return self.protocol.phase

    async def settle(self) -> None:
        for _ in range(20):
            await asyncio.sleep(0)


def run(main: Callable[[], Any]) -> None:
    asyncio.run(asyncio.wait_for(main(), 10))


def test_a_request_read_while_another_is_answered_pauses_reading_until_its_turn_is_over() -> None:
    async def main() -> None:
        app = GatedApp()
        conn = Connection(app)
        conn.feed(GET)
        await conn.settle()
        assert (conn.phase, conn.transport.reading) == (Phase.HEAD, True)  # answering is not a phase
        conn.feed(GET)  # pipelined behind the one being answered
        assert (conn.phase, conn.transport.reading, len(conn.protocol.queue)) == (Phase.HEAD, False, 1)
        app.release()
        await conn.settle()
        assert conn.transport.written.count(b"HTTP/1.1 200 OK") == 2
        assert (conn.phase, conn.transport.reading) == (Phase.HEAD, True)
        assert (conn.transport.pauses, conn.transport.resumes) == (1, 1)

    run(main)


def test_a_client_that_does_not_read_its_responses_stops_reading_once_whatever_else_stops_it() -> None:
    async def main() -> None:
        app = GatedApp()
        conn = Connection(app)
        conn.feed(GET)
        conn.protocol.pause_writing()
        conn.feed(GET)  # a second reason while paused: the transport hears nothing more
        assert (conn.transport.reading, conn.transport.pauses) == (False, 1)
        app.release()
        await conn.settle()
        assert conn.transport.written.count(b"HTTP/1.1 200 OK") == 1  # the next waits for the client to read
        conn.protocol.resume_writing()
        await conn.settle()
        assert conn.transport.written.count(b"HTTP/1.1 200 OK") == 2
        assert (conn.transport.reading, conn.transport.pauses, conn.transport.resumes) == (True, 1, 1)

    run(main)


def test_a_body_over_its_high_water_pauses_reading_until_the_app_takes_it() -> None:
    async def main() -> None:
        app = GatedApp()
        conn = Connection(app)
        size = BODY_HIGH_WATER + 10
        conn.feed(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (size + 5))
        conn.feed(b"x" * size)
        assert (conn.phase, conn.transport.reading) == (Phase.BODY, False)
        app.release()
        await conn.settle()
        assert app.received[0]["more_body"] and conn.transport.reading

    run(main)


def test_a_websocket_handshake_behind_a_request_waits_for_its_answer_then_hands_over() -> None:
    async def main() -> None:
        app = GatedApp()
        conn = Connection(app)
        conn.feed(GET + WEBSOCKET)
        assert (conn.phase, conn.transport.reading) == (Phase.UPGRADING, False)
        app.release()
        await conn.settle()
        assert conn.phase is Phase.HANDED_OVER and conn.protocol.closing
        assert isinstance(conn.transport.protocol, WebSocketSession)
        assert conn.transport.written.count(b"HTTP/1.1 101 ") == 1 and conn.transport.reading  # the session reads

    run(main)


def test_a_close_during_a_body_ends_the_connection_and_the_app_hears_of_it() -> None:
    async def main() -> None:
        app = GatedApp()
        conn = Connection(app)
        conn.feed(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nhello")
        assert conn.phase is Phase.BODY
        conn.protocol.connection_lost(None)
        assert conn.phase is Phase.CLOSED
        app.release()
        await conn.settle()
        assert app.received[0]["body"] == b"hello"  # what came is still the app's; the disconnect follows

    run(main)


def test_a_refusal_behind_a_request_goes_out_after_its_answer_then_closes() -> None:
    async def main() -> None:
        app = GatedApp()
        conn = Connection(app)
        conn.feed(GET + b"GET / HTTP/1.1\r\n\r\n")  # the second has no Host
        assert (conn.phase, conn.transport.reading) == (Phase.FAILED, False)
        conn.feed(GET)  # bytes that still arrive are not parsed, nor refused again
        app.release()
        await conn.settle()
        written = bytes(conn.transport.written)
        assert written.index(b"HTTP/1.1 200 OK") < written.index(b"HTTP/1.1 400 ") and written.count(b"HTTP/1.1") == 2
        assert conn.phase is Phase.CLOSED and conn.transport.closed

    run(main)


def test_a_refused_request_alone_is_answered_and_closed_at_once() -> None:
    async def main() -> None:
        conn = Connection(GatedApp())
        conn.feed(b"GET / HTTP/1.1\r\n\r\n")
        assert conn.transport.written.startswith(b"HTTP/1.1 400 ")
        assert conn.phase is Phase.CLOSED and conn.transport.closed

    run(main)


def test_the_table_refuses_a_transition_it_does_not_list() -> None:
    async def main() -> None:
        conn = Connection(GatedApp())
        with pytest.raises(RuntimeError, match="no 'hand_over' transition from phase HEAD"):
            conn.protocol._advance("hand_over")
        conn.protocol.connection_lost(None)
        conn.protocol._advance("close")  # closing twice is allowed: the peer may go as we close
        assert conn.phase is Phase.CLOSED

    run(main)


def test_every_phase_but_a_handed_over_one_can_close() -> None:
    closable = {phase for (phase, event) in _TRANSITIONS if event == "close"}
    assert closable == set(Phase) - {Phase.HANDED_OVER}
