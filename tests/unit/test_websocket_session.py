"""WebSocket sessions driven through the HTTP/1.1 protocol and a fake transport: bytes in, bytes out.

Frames are made and read with the websockets library's client-side sans-I/O protocol, so what the server
writes is checked by an independent RFC 6455 implementation.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from websockets.extensions.permessage_deflate import PerMessageDeflate
from websockets.frames import Frame, Opcode
from websockets.protocol import Protocol, Side

from corral.http import eager
from corral.http.h1 import H1Protocol
from corral.http.websocket import CLOSE_TIMEOUT, WebSocketSession, close_websockets
from tests.unit.fakes import server_state

eager.install()

App = Callable[[dict, Callable, Callable], Awaitable[None]]
KEY = b"dGhlIHNhbXBsZSBub25jZQ=="
HANDSHAKE = (
    b"GET /chat?room=1 HTTP/1.1\r\nHost: example.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: " + KEY + b"\r\nSec-WebSocket-Version: 13\r\n"
)
REQUEST = HANDSHAKE + b"\r\n"
marker: contextvars.ContextVar[str] = contextvars.ContextVar("marker", default="unset")


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closed = False
        self.aborted = False
        self.reading = True
        self.protocol: asyncio.BaseProtocol | None = None

    def write(self, data: bytes) -> None:  # type: ignore[override]
        assert not self.closed, "write after close"
        self.written += data

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            assert self.protocol is not None
            asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)

    def abort(self) -> None:
        self.aborted = True
        self.close()

    def is_closing(self) -> bool:
        return self.closed

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        assert self.protocol is not None
        return self.protocol

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 8000)}.get(name, default)

    def take(self) -> bytes:
        data, self.written = bytes(self.written), bytearray()
        return data


class Harness:
    """One connection: an H1Protocol that may hand its transport to a WebSocketSession."""

    def __init__(self, app: App, **settings: Any) -> None:
        """`settings`: changes to the table's defaults; permessage-deflate is off unless a test turns it on."""
        self.loop = asyncio.get_running_loop()
        settings.setdefault("ws_per_message_deflate", False)
        self.state = server_state(app, logger=logging.getLogger("test.websocket"), **settings)
        self.transport = FakeTransport()
        h1 = H1Protocol(self.state)
        self.transport.set_protocol(h1)
        h1.connection_made(self.transport)
        self.client = Protocol(Side.CLIENT)  # a client-side parser for what the server sends after the 101

    def feed(self, data: bytes) -> None:
        protocol = self.transport.get_protocol()
        assert isinstance(protocol, asyncio.Protocol)
        protocol.data_received(data)

    async def settle(self) -> None:
        for _ in range(20):
            await asyncio.sleep(0)

    async def upgrade(self, request: bytes = REQUEST) -> bytes:
        """Send the handshake and let the app answer; the HTTP response the server wrote."""
        self.feed(request)
        await self.settle()
        head, sep, rest = self.transport.take().partition(b"\r\n\r\n")
        assert sep, head
        if rest:
            self.client.receive_data(rest)
        return head + sep

    @property
    def session(self) -> WebSocketSession:
        protocol = self.transport.get_protocol()
        assert isinstance(protocol, WebSocketSession)
        return protocol

    def send(self, opcode: Opcode, data: bytes, fin: bool = True) -> None:
        self.client.send_frame(Frame(opcode, data, fin))
        for chunk in self.client.data_to_send():
            if chunk:
                self.feed(chunk)

    def frames(self) -> list[Frame]:
        """Frames the server wrote since the last call."""
        self.client.receive_data(self.transport.take())
        return [event for event in self.client.events_received() if isinstance(event, Frame)]


def run(coro: Awaitable[None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 10))  # type: ignore[arg-type]


def close_code(frame: Frame) -> int:
    assert frame.opcode is Opcode.CLOSE, frame
    return int.from_bytes(frame.data[:2], "big")


class Recorder:
    """An app that accepts, echoes, and records every message it receives."""

    def __init__(self, accept: dict[str, Any] | None = None) -> None:
        self.received: list[dict[str, Any]] = []
        self.scope: dict[str, Any] = {}
        self.accept = accept or {"type": "websocket.accept"}
        self.done = False

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        self.scope = scope
        self.received.append(await receive())
        await send(self.accept)
        while True:
            message = await receive()
            self.received.append(message)
            if message["type"] == "websocket.disconnect":
                break
            await send({"type": "websocket.send", **{k: v for k, v in message.items() if k in ("text", "bytes")}})
        self.done = True


def test_handshake_answers_101_and_the_app_sees_a_websocket_scope() -> None:
    async def main() -> None:
        app = Recorder()
        h = Harness(app, app_state={"db": "ready"})
        head = await h.upgrade(HANDSHAKE + b"Sec-WebSocket-Protocol: chat, v2\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
        assert b"sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" in head
        assert app.received == [{"type": "websocket.connect"}]
        scope = app.scope
        assert scope["type"] == "websocket" and scope["scheme"] == "ws" and "method" not in scope
        assert scope["path"] == "/chat" and scope["query_string"] == b"room=1"
        assert scope["subprotocols"] == ["chat", "v2"]
        assert "websocket.http.response" in scope["extensions"]
        assert scope["state"] == {"db": "ready"} and scope["state"] is not h.state.app_state
        assert h.session in h.state.connections and h.session in h.state.websockets

    run(main())


def test_text_and_binary_messages_are_echoed() -> None:
    async def main() -> None:
        h = Harness(Recorder())
        await h.upgrade()
        h.send(Opcode.TEXT, "héllo".encode())
        h.send(Opcode.BINARY, b"\x00\xff")
        await h.settle()
        frames = h.frames()
        assert [(f.opcode, f.data) for f in frames] == [(Opcode.TEXT, "héllo".encode()), (Opcode.BINARY, b"\x00\xff")]

    run(main())


@pytest.mark.parametrize("size", [125, 126, 65535, 65536, 200_000])
def test_every_payload_length_encoding_is_framed_correctly(size: int) -> None:
    async def main() -> None:
        h = Harness(Recorder())
        await h.upgrade()
        payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
        h.send(Opcode.BINARY, payload)
        await h.settle()
        assert [(f.opcode, f.data) for f in h.frames()] == [(Opcode.BINARY, payload)]

    run(main())


def test_compressed_messages_are_echoed_compressed() -> None:
    async def main() -> None:
        h = Harness(Recorder(), ws_per_message_deflate=True)
        head = await h.upgrade(HANDSHAKE + b"Sec-WebSocket-Extensions: permessage-deflate\r\n\r\n")
        assert b"sec-websocket-extensions: permessage-deflate" in head
        h.client.extensions = [PerMessageDeflate(False, False, 15, 15)]
        h.send(Opcode.TEXT, b"squeeze me " * 100)
        await h.settle()
        wire = bytes(h.transport.written)
        frames = h.frames()
        assert [(f.opcode, f.data) for f in frames] == [(Opcode.TEXT, b"squeeze me " * 100)]
        assert wire[0] & 0x40 and len(wire) < 200  # RSV1: compressed, and much smaller than 1100 bytes

    run(main())


def test_fragmented_messages_are_reassembled() -> None:
    async def main() -> None:
        app = Recorder()
        h = Harness(app)
        await h.upgrade()
        h.send(Opcode.TEXT, b"fra", fin=False)
        h.send(Opcode.PING, b"in between")
        h.send(Opcode.CONT, b"gm", fin=False)
        h.send(Opcode.CONT, b"ented", fin=True)
        await h.settle()
        assert app.received[1] == {"type": "websocket.receive", "text": "fragmented"}
        assert [(f.opcode, f.data) for f in h.frames()] == [(Opcode.PONG, b"in between"), (Opcode.TEXT, b"fragmented")]

    run(main())


def test_frames_sent_with_the_handshake_are_kept_for_the_websocket() -> None:
    async def main() -> None:
        app = Recorder()
        h = Harness(app)
        client = Protocol(Side.CLIENT)
        client.send_text(b"early")
        h.feed(REQUEST + b"".join(client.data_to_send()))
        await h.settle()
        assert app.received[1] == {"type": "websocket.receive", "text": "early"}

    run(main())


def test_handshake_pipelined_behind_a_request_waits_for_its_response() -> None:
    async def main() -> None:
        async def app(scope: dict, receive: Callable, send: Callable) -> None:
            if scope["type"] == "http":
                await asyncio.sleep(0.01)
                await send({"type": "http.response.start", "status": 200, "headers": []})
                await send({"type": "http.response.body", "body": b"first"})
            else:
                await receive()
                await send({"type": "websocket.accept"})

        h = Harness(app)
        h.feed(b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n" + REQUEST)
        await asyncio.sleep(0.05)
        await h.settle()
        output = h.transport.take()
        assert output.index(b"HTTP/1.1 200 OK") < output.index(b"HTTP/1.1 101 Switching Protocols")

    run(main())


def test_invalid_handshake_is_refused_with_400_and_a_reason() -> None:
    async def main() -> None:
        h = Harness(Recorder())
        h.feed(REQUEST.replace(b"Sec-WebSocket-Key: " + KEY + b"\r\n", b""))
        output = h.transport.take()
        assert output.startswith(b"HTTP/1.1 400 Bad Request\r\n") and b"Sec-WebSocket-Key" in output
        assert h.transport.closed

    run(main())


def test_wrong_version_is_refused_with_426_and_the_supported_version() -> None:
    async def main() -> None:
        h = Harness(Recorder())
        h.feed(REQUEST.replace(b"Version: 13", b"Version: 8"))
        output = h.transport.take()
        assert output.startswith(b"HTTP/1.1 426 Upgrade Required\r\n")
        assert b"sec-websocket-version: 13\r\n" in output

    run(main())


def test_other_upgrades_are_served_as_plain_http() -> None:
    async def main() -> None:
        async def app(scope: dict, receive: Callable, send: Callable) -> None:
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": scope["type"].encode()})

        h = Harness(app)
        h.feed(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\n\r\n")
        await h.settle()
        output = h.transport.take()
        assert output.startswith(b"HTTP/1.1 200 OK") and output.endswith(b"http")

    run(main())


def test_close_before_accept_is_a_403() -> None:
    async def main() -> None:
        async def app(scope: dict, receive: Callable, send: Callable) -> None:
            await receive()
            await send({"type": "websocket.close"})

        h = Harness(app)
        head = await h.upgrade()
        assert head.startswith(b"HTTP/1.1 403 Forbidden\r\n")
        assert h.transport.closed

    run(main())


def test_denial_response_extension_sends_the_apps_http_response() -> None:
    async def main() -> None:
        async def app(scope: dict, receive: Callable, send: Callable) -> None:
            await receive()
            await send({"type": "websocket.http.response.start", "status": 401, "headers": [(b"x-why", b"token")]})
            await send({"type": "websocket.http.response.body", "body": b"go ", "more_body": True})
            await send({"type": "websocket.http.response.body", "body": b"away"})

        h = Harness(app)
        h.feed(REQUEST)
        await h.settle()
        output = h.transport.take()
        assert output.startswith(b"HTTP/1.1 401 Unauthorized\r\n")
        assert b"x-why: token\r\n" in output and b"content-length: 7\r\n" in output
        assert output.endswith(b"\r\n\r\ngo away") and h.transport.closed
        assert h.state.counters.responses[3] == 1

    run(main())


def test_app_exception_before_accept_is_a_500_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        async def app(scope: dict, receive: Callable, send: Callable) -> None:
            raise ValueError("broken")

        h = Harness(app)
        head = await h.upgrade()
        assert head.startswith(b"HTTP/1.1 500 Internal Server Error\r\n")

    with caplog.at_level(logging.ERROR, "test.websocket"):
        run(main())
    assert any(record.exc_info and "broken" in str(record.exc_info[1]) for record in caplog.records)


def test_app_exception_after_accept_closes_1011_and_logs_the_traceback(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        async def app(scope: dict, receive: Callable, send: Callable) -> None:
            await receive()
            await send({"type": "websocket.accept"})
            await receive()
            raise ValueError("broken later")

        h = Harness(app)
        await h.upgrade()
        h.send(Opcode.TEXT, b"go")
        await h.settle()
        assert [close_code(f) for f in h.frames()] == [1011]

    with caplog.at_level(logging.ERROR, "test.websocket"):
        run(main())
    assert any(record.exc_info and "broken later" in str(record.exc_info[1]) for record in caplog.records)


def test_app_returning_after_accept_closes_normally() -> None:
    async def main() -> None:
        async def app(scope: dict, receive: Callable, send: Callable) -> None:
            await receive()
            await send({"type": "websocket.accept"})
            await send({"type": "websocket.send", "text": "bye"})

        h = Harness(app)
        await h.upgrade()
        frames = h.frames()
        assert frames[0].data == b"bye" and close_code(frames[1]) == 1000
        h.send(Opcode.CLOSE, frames[1].data)  # the client answers the closing handshake
        await h.settle()
        assert h.transport.closed
        assert h.session not in h.state.connections and h.session not in h.state.websockets

    run(main())


def test_app_close_sends_its_code_and_reason() -> None:
    async def main() -> None:
        async def app(scope: dict, receive: Callable, send: Callable) -> None:
            await receive()
            await send({"type": "websocket.accept"})
            await send({"type": "websocket.close", "code": 4001, "reason": "done"})

        h = Harness(app)
        await h.upgrade()
        frame = h.frames()[0]
        assert close_code(frame) == 4001 and frame.data[2:] == b"done"

    run(main())


def test_app_close_with_a_reserved_code_is_an_app_error() -> None:
    async def main() -> None:
        errors: list[BaseException] = []

        async def app(scope: dict, receive: Callable, send: Callable) -> None:
            await receive()
            await send({"type": "websocket.accept"})
            try:
                await send({"type": "websocket.close", "code": 1006})
            except RuntimeError as exc:
                errors.append(exc)

        h = Harness(app)
        await h.upgrade()
        assert errors and "1006" in str(errors[0])

    run(main())


def test_client_close_is_echoed_and_the_app_gets_its_code() -> None:
    async def main() -> None:
        app = Recorder()
        h = Harness(app)
        await h.upgrade()
        h.send(Opcode.CLOSE, (4321).to_bytes(2, "big") + b"leaving")
        await h.settle()
        assert app.received[-1] == {"type": "websocket.disconnect", "code": 4321, "reason": "leaving"}
        assert close_code(h.frames()[0]) == 4321
        assert h.transport.closed and app.done
        await h.settle()
        assert not h.state.websockets

    run(main())


def test_close_between_fragments_is_a_normal_closing_handshake() -> None:
    async def main() -> None:
        app = Recorder()
        h = Harness(app)
        await h.upgrade()
        h.send(Opcode.TEXT, b"unfinished", fin=False)
        h.send(Opcode.CLOSE, (1000).to_bytes(2, "big"))
        await h.settle()
        assert [close_code(f) for f in h.frames()] == [1000]
        assert app.received[-1]["code"] == 1000 and len(app.received) == 2  # the fragment never reached the app

    run(main())


def test_answers_to_messages_before_a_protocol_error_go_out_before_the_close() -> None:
    async def main() -> None:
        h = Harness(Recorder())
        await h.upgrade()
        client = Protocol(Side.CLIENT)
        client.send_text(b"answer me first")
        h.feed(b"".join(client.data_to_send()) + b"\x81\x02hi")  # then an unmasked frame, in the same read
        await h.settle()
        frames = h.frames()
        assert (frames[0].opcode, frames[0].data) == (Opcode.TEXT, b"answer me first")
        assert close_code(frames[1]) == 1002 and h.transport.closed

    run(main())


def test_client_that_vanishes_gets_the_app_a_1006_disconnect() -> None:
    async def main() -> None:
        app = Recorder()
        h = Harness(app)
        await h.upgrade()
        h.session.connection_lost(ConnectionResetError())
        await h.settle()
        assert app.received[-1]["type"] == "websocket.disconnect" and app.received[-1]["code"] == 1006
        assert not h.state.connections

    run(main())


def test_send_after_the_client_left_raises_an_oserror() -> None:
    async def main() -> None:
        outcome: list[BaseException] = []

        async def app(scope: dict, receive: Callable, send: Callable) -> None:
            await receive()
            await send({"type": "websocket.accept"})
            await receive()  # the disconnect
            try:
                await send({"type": "websocket.send", "text": "too late"})
            except OSError as exc:
                outcome.append(exc)

        h = Harness(app)
        await h.upgrade()
        h.session.connection_lost(None)
        await h.settle()
        assert outcome

    run(main())


def test_invalid_utf8_fails_fast_with_1007_even_mid_message() -> None:
    async def main() -> None:
        h = Harness(Recorder())
        await h.upgrade()
        h.send(Opcode.TEXT, b"ok \xff", fin=False)
        assert [close_code(f) for f in h.frames()] == [1007]
        assert h.transport.closed

    run(main())


def test_message_over_max_size_closes_1009() -> None:
    async def main() -> None:
        h = Harness(Recorder(), ws_max_size=1000)
        await h.upgrade()
        h.send(Opcode.BINARY, b"x" * 600, fin=False)
        h.send(Opcode.CONT, b"x" * 600, fin=True)
        assert [close_code(f) for f in h.frames()] == [1009]

    run(main())


def test_protocol_violation_closes_1002() -> None:
    async def main() -> None:
        app = Recorder()
        h = Harness(app)
        await h.upgrade()
        h.feed(b"\x81\x02hi")  # an unmasked client frame
        await h.settle()
        assert [close_code(f) for f in h.frames()] == [1002]
        assert app.received[-1]["code"] == 1002

    run(main())


def test_reading_pauses_when_max_queue_messages_wait_and_resumes_when_read() -> None:
    async def main() -> None:
        release = asyncio.Event()
        got: list[str] = []

        async def app(scope: dict, receive: Callable, send: Callable) -> None:
            await receive()
            await send({"type": "websocket.accept"})
            await release.wait()
            for _ in range(4):
                got.append((await receive())["text"])

        h = Harness(app, ws_max_queue=4)
        await h.upgrade()
        for index in range(4):
            h.send(Opcode.TEXT, b"%d" % index)
        assert not h.transport.reading
        release.set()
        await h.settle()
        assert got == ["0", "1", "2", "3"] and h.transport.reading

    run(main())


def test_send_waits_while_the_transport_is_paused() -> None:
    async def main() -> None:
        sent: list[int] = []

        async def app(scope: dict, receive: Callable, send: Callable) -> None:
            await receive()
            await send({"type": "websocket.accept"})
            for index in range(3):
                await send({"type": "websocket.send", "bytes": b"x"})
                sent.append(index)

        h = Harness(app)
        h.feed(REQUEST)
        h.session.pause_writing()
        await h.settle()
        assert sent == []  # the first send wrote its frame, then waited
        h.session.resume_writing()
        await h.settle()
        assert sent == [0, 1, 2]

    run(main())


def test_keepalive_ping_unanswered_closes_1011_and_answered_keeps_open() -> None:
    async def main() -> None:
        app = Recorder()
        h = Harness(app, ws_ping_interval=5.0, ws_ping_timeout=3.0)
        await h.upgrade()
        start = h.state.clock
        h.session.check_timeouts(start + 5.0)
        ping = h.frames()[0]
        assert ping.opcode is Opcode.PING
        h.send(Opcode.PONG, ping.data)
        h.session.check_timeouts(start + 9.0)
        assert h.frames() == []  # answered: no close
        h.session.check_timeouts(start + 10.0)
        assert h.frames()[0].opcode is Opcode.PING
        h.session.check_timeouts(start + 13.5)
        assert [close_code(f) for f in h.frames()] == [1011]
        await h.settle()
        assert app.received[-1]["code"] == 1011 and h.transport.closed

    run(main())


def test_ping_timeout_does_not_count_while_the_app_leaves_messages_unread() -> None:
    async def main() -> None:
        async def app(scope: dict, receive: Callable, send: Callable) -> None:
            await receive()
            await send({"type": "websocket.accept"})
            await asyncio.sleep(3600)  # never reads

        h = Harness(app, ws_ping_interval=5.0, ws_ping_timeout=3.0, ws_max_queue=1)
        await h.upgrade()
        h.send(Opcode.TEXT, b"unread")
        assert not h.transport.reading
        start = h.state.clock
        h.session.check_timeouts(start + 5.0)
        assert h.frames()[0].opcode is Opcode.PING
        h.session.check_timeouts(start + 60.0)
        assert h.frames() == [] and not h.transport.closed  # its pong may be in the unread bytes
        h.session.task.cancel()  # type: ignore[union-attr]

    run(main())


def test_peer_that_never_answers_a_close_is_dropped_after_the_close_timeout() -> None:
    async def main() -> None:
        h = Harness(Recorder())
        await h.upgrade()
        session = h.session
        close_websockets(h.state, 1001)
        assert close_code(h.frames()[0]) == 1001
        session.check_timeouts(h.state.clock + CLOSE_TIMEOUT + 1)
        assert h.transport.aborted

    run(main())


@pytest.mark.parametrize("code", [1001, 1012])
def test_going_away_sends_the_drain_code_and_the_app_gets_it(code: int) -> None:
    async def main() -> None:
        app = Recorder()
        h = Harness(app)
        await h.upgrade()
        close_websockets(h.state, code)
        await h.settle()
        assert close_code(h.frames()[0]) == code
        assert app.received[-1]["code"] == code

    run(main())


def test_handshake_during_drain_is_closed_right_after_accept() -> None:
    async def main() -> None:
        h = Harness(Recorder())
        h.state.draining = True
        close_websockets(h.state, 1012)
        head = await h.upgrade()
        assert head.startswith(b"HTTP/1.1 101")
        assert close_code(h.frames()[0]) == 1012

    run(main())


def test_each_session_runs_in_a_copy_of_the_base_context() -> None:
    async def main() -> None:
        seen: list[str] = []

        async def app(scope: dict, receive: Callable, send: Callable) -> None:
            seen.append(marker.get())
            marker.set("changed by the app")
            await receive()
            await send({"type": "websocket.close"})

        marker.set("base")
        h = Harness(app)
        marker.set("current at the time of the request")
        await h.upgrade()
        h2 = Harness(app)
        h2.state.base_context = h.state.base_context
        await h2.upgrade()
        assert seen == ["base", "base"]

    run(main())


def test_handshake_is_counted_and_access_logged() -> None:
    async def main() -> None:
        logged: list[tuple[Any, ...]] = []

        class AccessLog:
            def log(self, *args: Any) -> None:
                logged.append(args)

        h = Harness(Recorder(), access_log=AccessLog())
        await h.upgrade()
        assert h.state.counters.requests == 1 and h.state.counters.responses[0] == 1
        assert logged and logged[0][1] == 101 and logged[0][0]["type"] == "websocket"

    run(main())


class Unread:
    """An app that accepts, then reads nothing until `release` is set; then reads `count` messages."""

    def __init__(self, count: int) -> None:
        self.release = asyncio.Event()
        self.count = count
        self.got: list[dict[str, Any]] = []

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await self.release.wait()
        for _ in range(self.count):
            self.got.append(await receive())


def test_reading_pauses_when_queued_message_bytes_reach_max_queue_bytes_and_resumes_when_read() -> None:
    async def main() -> None:
        app = Unread(2)
        h = Harness(app, ws_max_queue_bytes=1000)
        await h.upgrade()
        h.send(Opcode.BINARY, b"a" * 600)
        assert h.transport.reading  # 600 bytes wait: under the bound
        h.send(Opcode.BINARY, b"b" * 600)
        assert not h.transport.reading  # two messages, far below max_queue, but over the byte bound
        app.release.set()
        await h.settle()
        assert [m["bytes"][:1] for m in app.got] == [b"a", b"b"] and h.transport.reading

    run(main())


def test_a_compressed_read_is_inflated_only_up_to_max_queue_bytes_and_the_rest_waits_unparsed() -> None:
    async def main() -> None:
        app = Unread(10)
        h = Harness(app, ws_per_message_deflate=True, ws_max_queue_bytes=1024 * 1024)
        await h.upgrade(HANDSHAKE + b"Sec-WebSocket-Extensions: permessage-deflate\r\n\r\n")
        h.client.extensions = [PerMessageDeflate(False, False, 15, 15)]
        for index in range(10):  # 10 MiB of messages in ~10 KiB on the wire, all in one read
            h.client.send_binary(bytes([index]) * (1024 * 1024))
        h.feed(b"".join(h.client.data_to_send()))
        session = h.session
        # Parsing stopped a slice after the bound: not every message of the read was inflated.
        assert 1 <= len(session.messages) < 10 and session.unparsed and not h.transport.reading
        app.release.set()
        await h.settle()
        assert [m["bytes"][:1] for m in app.got] == [bytes([index]) for index in range(10)]
        assert all(len(m["bytes"]) == 1024 * 1024 for m in app.got)
        assert not session.unparsed and h.transport.reading

    run(main())


def test_a_close_frame_held_unparsed_behind_a_full_queue_still_closes_the_connection() -> None:
    async def main() -> None:
        app = Unread(5)
        h = Harness(app, ws_per_message_deflate=True, ws_max_queue_bytes=1000)
        await h.upgrade(HANDSHAKE + b"Sec-WebSocket-Extensions: permessage-deflate\r\n\r\n")
        h.client.extensions = [PerMessageDeflate(False, False, 15, 15)]
        for _ in range(3):  # incompressible, so that the close frame is read slices behind the first message
            h.client.send_binary(os.urandom(20_000))
        h.client.send_close(1000)
        h.feed(b"".join(h.client.data_to_send()))
        assert h.session.unparsed and not h.transport.reading
        app.release.set()
        await h.settle()
        assert [len(m.get("bytes", b"")) for m in app.got[:3]] == [20_000] * 3
        assert app.got[3] == {"type": "websocket.disconnect", "code": 1000, "reason": ""}
        assert close_code(h.frames()[-1]) == 1000

    run(main())


def test_a_message_of_many_small_fragments_is_reassembled_whole() -> None:
    async def main() -> None:
        app = Recorder()
        h = Harness(app)
        await h.upgrade()
        h.send(Opcode.BINARY, b"x", fin=False)
        for _ in range(998):
            h.send(Opcode.CONT, b"y", fin=False)
        h.send(Opcode.CONT, b"z")
        text = "héllo wörld".encode()
        h.send(Opcode.TEXT, text[:2], fin=False)  # the é is split between two fragments
        h.send(Opcode.CONT, text[2:])
        await h.settle()
        assert app.received[1] == {"type": "websocket.receive", "bytes": b"x" + b"y" * 998 + b"z"}
        assert app.received[2] == {"type": "websocket.receive", "text": "héllo wörld"}

    run(main())


def test_a_fragmented_message_over_max_size_closes_1009_before_it_is_whole() -> None:
    async def main() -> None:
        app = Recorder()
        h = Harness(app, ws_max_size=1000)
        await h.upgrade()
        h.send(Opcode.BINARY, b"x" * 600, fin=False)
        h.send(Opcode.CONT, b"y" * 600, fin=False)
        await h.settle()
        assert [close_code(f) for f in h.frames()] == [1009]
        assert h.session.fragments is None

    run(main())
