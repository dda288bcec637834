"""WebSocket connections after the HTTP/1.1 Upgrade: RFC 6455 framing on the websockets library's sans-I/O
protocol, and the ASGI `websocket` cycle (connect, accept or deny, receive, send, close, disconnect).

The HTTP/1.1 connection (http/h1.py) validates the handshake and, once earlier pipelined requests are
answered, hands its transport to a `WebSocketSession`. The app runs in a Task of its own; frames are parsed
and written on the event loop's callbacks, with no Task per message. Keep-alive pings and closing timeouts
run on the worker's once-a-second sweep (`check_timeouts`), not on timers of their own.
"""

from __future__ import annotations

import asyncio
import codecs
import logging
import struct
from collections import deque
from typing import TYPE_CHECKING, Any

from websockets.exceptions import ProtocolError
from websockets.frames import Close, Frame, Opcode
from websockets.protocol import OPEN, Protocol, Side

from corral.core.settings import WebSocketSettings
from corral.http.errors import ClientDisconnected, error_response
from corral.http.flow import WriteFlowControl
from corral.http.sendfile import ZEROCOPYSEND
from corral.http.ws_close import CLOSE_GOING_AWAY, CLOSE_SERVICE_RESTART, close_websockets
from corral.http.ws_handshake import Handshake, accept_response, denial_response

if TYPE_CHECKING:
    from corral.http.state import ServerState

__all__ = [
    "CLOSE_GOING_AWAY",
    "CLOSE_SERVICE_RESTART",
    "CLOSE_TIMEOUT",
    "WebSocketSession",
    "WebSocketSettings",
    "WebSocketUpgrade",
    "close_websockets",
    "websocket_scope",
]

CLOSE_NORMAL = 1000
CLOSE_ABNORMAL = 1006  # never sent: the connection ended without a close frame
CLOSE_INVALID_DATA = 1007
CLOSE_INTERNAL_ERROR = 1011  # an app exception, or a peer that stopped answering pings

# After a close frame is sent, the peer has this long to answer with its own before the TCP connection is
# dropped (a dead peer would otherwise hold the connection, and a draining worker, until graceful_timeout).
CLOSE_TIMEOUT = 10.0

_TEXT = Opcode.TEXT
_BINARY = Opcode.BINARY
_CONT = Opcode.CONT
_PONG = Opcode.PONG
_MAX_CLOSE_REASON = 123
# The first byte of an unfragmented text or binary frame, and the header of one with a short payload.
_FIN_TEXT = 0x80 | Opcode.TEXT
_FIN_BINARY = 0x80 | Opcode.BINARY
_SHORT_HEADERS = {first: [bytes((first, length)) for length in range(126)] for first in (_FIN_TEXT, _FIN_BINARY)}
_HEADER_16 = struct.Struct("!BBH")
_HEADER_64 = struct.Struct("!BBQ")
# With permessage-deflate, a read is handed to the protocol this many bytes at a time and parsing stops once
# the queue bound is reached: the protocol inflates every frame a chunk completes, and deflate expands up to
# ~1000 times, so one 256 KiB read could otherwise become hundreds of MiB in one call.
_INFLATE_SLICE = 4096
# Payloads at least this long are written beside their header (writev) instead of copied behind it.
_COPY_LIMIT = 16 * 1024  # a control frame's payload is at most 125 bytes, two of them the code

_utf8_decoder = codecs.getincrementaldecoder("utf-8")

# websockets' protocol logs every ended connection at INFO; only its warnings and errors belong in our log.
_PROTOCOL_LOG = logging.getLogger("corral.error.websocket")
_PROTOCOL_LOG.setLevel(logging.WARNING)

# Where a session is, as far as the app is concerned.
_HANDSHAKE = 0  # the app has not answered the handshake yet
_DENYING = 1  # the app is sending an HTTP response instead (websocket.http.response extension)
_OPEN = 2  # accepted: messages flow both ways
_FAILING = 3  # the client broke the protocol; the app may still answer what it received before, this loop turn
_CLOSING = 4  # a close frame was sent or received: nothing more for or from the app
_ENDED = 5  # the socket is gone, or the handshake was answered with HTTP


class _ServerProtocol(Protocol):
    """websockets' sans-I/O protocol, server side, with one RFC 6455 fix.

    Control frames may come between the fragments of a message (RFC 6455 5.4), so a close frame there
    starts a normal closing handshake and the unfinished message is dropped; websockets treats it as a
    protocol error (1002), which Autobahn|Testsuite case 7.1.5 fails.
    """

    def recv_frame(self, frame: Frame) -> None:
        if frame.opcode is Opcode.CLOSE:
            # "No message in progress": websockets 14 and later call it current_size, earlier ones cur_size.
            if hasattr(self, "current_size"):
                self.current_size = None
            else:
                self.cur_size = None
        super().recv_frame(frame)


class WebSocketUpgrade:
    """A valid handshake queued on its HTTP/1.1 connection until the requests pipelined before it are answered."""

    __slots__ = ("handshake", "rest", "scope", "start_ns")

    def __init__(self, scope: dict[str, Any], handshake: Handshake, start_ns: int = 0) -> None:
        self.scope = scope
        self.handshake = handshake
        self.rest = b""  # bytes the client sent after the handshake, before any answer
        self.start_ns = start_ns


def websocket_scope(scope: dict[str, Any], handshake: Handshake) -> dict[str, Any]:
    """Turn the HTTP scope built for a handshake request into its ASGI `websocket` scope (in place)."""
    scope["type"] = "websocket"
    scope["scheme"] = "wss" if scope["scheme"] == "https" else "ws"
    del scope["method"]
    scope["subprotocols"] = handshake.subprotocols
    # The request's own copy of the connection's extensions: the HTTP response one does not apply; "tls" does.
    extensions = scope["extensions"]
    extensions.pop(ZEROCOPYSEND, None)
    extensions["websocket.http.response"] = {}
    return scope


class WebSocketSession(WriteFlowControl):
    """One WebSocket connection: owns the transport after the upgrade, and the app's receive/send."""

    # Slots: every frame reads a dozen of these, and an instance dict of this size is a full lookup per read.
    __slots__ = (
        "app_done",
        "close_on_accept",
        "closing_since",
        "connect_delivered",
        "counters",
        "decoder",
        "delivered",
        "denial",
        "denial_body",
        "disconnect",
        "failure_writes",
        "fragments",
        "gone",
        "handshake",
        "messages",
        "next_ping_at",
        "parse_slice",
        "phase",
        "ping_payload",
        "ping_sent_at",
        "pings",
        "protocol",
        "queued_bytes",
        "response_bytes",
        "response_headers",
        "rest",
        "resume_at",
        "resume_at_bytes",
        "scope",
        "settings",
        "slice_above",
        "start_ns",
        "state",
        "status",
        "task",
        "unparsed",
        "waiter",
    )

    cycle = None  # never an HTTP request in flight (the worker's active-requests gauge reads this)

    def __init__(
        self, state: ServerState, transport: asyncio.Transport, upgrade: WebSocketUpgrade, writing_paused: bool
    ) -> None:
        self.state = state
        self.loop = state.loop
        self.settings: WebSocketSettings = state.ws_settings
        self.counters = state.counters
        self.transport = transport
        self.scope = upgrade.scope
        self.handshake: Handshake | None = upgrade.handshake
        self.rest = upgrade.rest
        self.start_ns = upgrade.start_ns
        # The handshake's answer, for the request ledger (set when the app accepts or refuses).
        self.status = 0
        self.response_headers: list[Any] = []
        self.response_bytes = 0
        self.protocol: _ServerProtocol = None  # type: ignore[assignment]  # made when the app accepts
        self.phase = _HANDSHAKE
        self.gone = False
        self.app_done = False
        self.task: asyncio.Task[None] | None = None
        # incoming
        self.connect_delivered = False
        self.messages: deque[dict[str, Any]] = deque()
        self.queued_bytes = 0  # payload bytes of `messages` (decompressed; characters for text)
        self.unparsed = b""  # read but not parsed yet: held while the queue is full, reading paused
        self.delivered = 0  # messages handed to the app so far
        self.waiter: asyncio.Future[dict[str, Any]] | None = None
        self.disconnect: dict[str, Any] | None = None
        # A fragmented message being reassembled: its raw payload, bounded by max_size (the protocol closes
        # with 1009 beyond it). One buffer, not a list of fragments: a million one-byte fragments cost a MiB.
        self.fragments: bytearray | None = None
        self.decoder: codecs.IncrementalDecoder | None = None
        self.reading_paused = True  # the HTTP/1.1 side stopped reading at the upgrade
        self.resume_at = self.settings.ws_max_queue // 4
        self.resume_at_bytes = self.settings.ws_max_queue_bytes // 4
        self.parse_slice = 1 << 62  # _INFLATE_SLICE once permessage-deflate is on
        self.slice_above = self.parse_slice  # reads longer than this go to _receive_in_slices; 0 while holding
        # outgoing
        self.writing_paused = writing_paused
        self.drain_waiters: list[asyncio.Future[None]] = []
        self.failure_writes: list[bytes] = []  # held back while FAILING
        self.denial: tuple[Any, list[Any]] | None = None
        self.denial_body: list[bytes] = []
        # keep-alive and closing
        self.close_on_accept = 0
        self.next_ping_at = 0.0
        self.ping_payload: bytes | None = None
        self.ping_sent_at = 0.0
        self.pings = 0
        self.closing_since = 0.0

    def start(self) -> None:
        """Run the app in a Task of its own, in a fresh copy of the worker's base context."""
        state = self.state
        state.connections.add(self)
        state.websockets.add(self)
        if state.draining:
            self.close_on_accept = state.websocket_close_code
        coro = state.app(self.scope, self.receive, self.send)
        # The Task copies the context current at its creation: running create_task inside the copy makes the
        # app's context a copy of the base one, on every Python version corral supports.
        self.task = state.base_context.copy().run(self.loop.create_task, coro)
        self.task.add_done_callback(self._app_finished)

    # --- transport events -----------------------------------------------------------------------

    def is_idle(self) -> bool:
        """Never: a WebSocket session is not shed to make room, as an idle keep-alive connection is."""
        return False

    def data_received(self, data: bytes) -> None:
        size = len(data)
        self.counters.bytes_in += size
        if size > self.slice_above:
            self._receive_in_slices(data)
        else:
            self._receive(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.gone = True
        if self.phase >= _OPEN:
            self.phase = _ENDED
        self._set_disconnect(CLOSE_ABNORMAL, "")  # unless a close frame already said why
        self._release_writers()
        self._forget_if_done()

    def _writes_abandoned(self) -> bool:
        return self.gone

    # --- frames in ------------------------------------------------------------------------------

    def _receive_in_slices(self, data: bytes) -> None:
        """Parse a compressed read a slice at a time, and keep what is left once the queue is full."""
        if self.unparsed:
            data, self.unparsed = self.unparsed + data, b""
        size = self.slice_above = self.parse_slice
        offset = 0
        while offset < len(data):
            if self._queue_full():
                self.unparsed = data[offset:]  # at most one read: reading is paused from here on
                self.slice_above = 0
                self._update_reading()
                return
            self._receive(data[offset : offset + size])
            offset += size

    def _queue_full(self) -> bool:
        return self.phase == _OPEN and (
            len(self.messages) >= self.settings.ws_max_queue or self.queued_bytes >= self.settings.ws_max_queue_bytes
        )

    def _must_stop_reading(self) -> bool:
        """Whether reading must stop, bytes held unparsed aside: the handshake is not answered yet (nothing
        may be read until the app accepts), or the app's queue is over its bound (pausing when it is full,
        resuming only once the app has taken it down to a quarter, so a busy queue does not toggle). Never
        while closing: the peer's close frame must get through even if the app stopped reading."""
        phase = self.phase
        if phase < _OPEN:
            return True
        if phase == _OPEN:
            if self.reading_paused:
                return len(self.messages) > self.resume_at or self.queued_bytes > self.resume_at_bytes
            return self._queue_full()
        if phase == _CLOSING:
            return False
        return self.reading_paused  # failing this loop turn, or ended: no change

    def _update_reading(self) -> None:
        """The one place reading is paused or resumed: whenever a reason may have come or gone, and the
        transport is told only of a change."""
        if self.gone:
            return
        stop = self._must_stop_reading()
        if not stop and self.unparsed:
            # What was read before the pause comes first; it may fill the queue again (reading stays paused).
            held, self.unparsed = self.unparsed, b""
            self._receive_in_slices(held)
            if self.unparsed or self.gone:
                return
            stop = self._must_stop_reading()
        self._set_reading(stop)

    def _receive(self, data: bytes) -> None:
        protocol = self.protocol
        protocol.receive_data(data)
        delivered = self.delivered
        for frame in protocol.events_received():
            opcode = frame.opcode
            if opcode is _TEXT or opcode is _BINARY or opcode is _CONT:
                if self.phase == _OPEN:  # after a close frame, data is dropped: the app has its disconnect
                    self._data_frame(frame)
            elif opcode is _PONG and frame.data == self.ping_payload:
                self.ping_payload = None
            # Pings are answered and close frames echoed by the protocol itself (in data_to_send).
        writes = protocol.data_to_send()
        if protocol.state is not OPEN and self.phase == _OPEN:
            if self.delivered != delivered and protocol.close_rcvd is None:
                self._fail_after_answers(writes)
                return
            self._write(writes)
            self._protocol_closed()
        elif writes:
            self._write(writes)

    def _data_frame(self, frame: Frame) -> None:
        if frame.fin and self.fragments is None:  # a whole message in one frame: the common case
            if frame.opcode is _TEXT:
                try:
                    message = {"type": "websocket.receive", "text": frame.data.decode()}
                except UnicodeDecodeError:
                    self._fail(CLOSE_INVALID_DATA, "invalid UTF-8 in a text message")
                    return
            else:
                message = {"type": "websocket.receive", "bytes": frame.data}
            self._deliver(message)
        else:
            self._fragment(frame)

    def _fragment(self, frame: Frame) -> None:
        """One frame of a fragmented message (the protocol has checked their order)."""
        fragments = self.fragments
        if fragments is None:
            fragments = self.fragments = bytearray()
            self.decoder = _utf8_decoder() if frame.opcode is _TEXT else None
        decoder = self.decoder
        if decoder is not None:
            # Validated as the fragments arrive, so invalid UTF-8 fails the connection at once (RFC 6455 8.1)
            # rather than after a long message has been buffered; the text is decoded once, whole, at the end.
            try:
                decoder.decode(frame.data, frame.fin)
            except UnicodeDecodeError:
                self._fail(CLOSE_INVALID_DATA, "invalid UTF-8 in a text message")
                return
        fragments += frame.data
        if frame.fin:
            self.fragments = self.decoder = None
            if decoder is None:
                self._deliver({"type": "websocket.receive", "bytes": bytes(fragments)})
            else:
                self._deliver({"type": "websocket.receive", "text": fragments.decode()})

    def _deliver(self, message: dict[str, Any]) -> None:
        self.delivered += 1
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(message)
                return
        messages = self.messages
        messages.append(message)
        self.queued_bytes += _payload_size(message)
        if not self.reading_paused and self._queue_full():
            # The app is not keeping up: stop reading, so the client's TCP window closes (back-pressure).
            self._update_reading()

    def _fail_after_answers(self, writes: list[bytes]) -> None:
        """The client broke the protocol in the same read as messages the app has not answered yet.

        The app's wake-up is already scheduled, so one loop turn lets it answer them (an echo server's
        replies then come before the close, as Autobahn|Testsuite 3.2, 4.1.3 and 5.15 expect); the close
        frame and the TCP close follow.
        """
        self.phase = _FAILING
        self.failure_writes = writes
        self.loop.call_soon(self._finish_failing)

    def _finish_failing(self) -> None:
        if self.phase != _FAILING:
            return  # the connection is gone already
        self.phase = _OPEN
        writes, self.failure_writes = self.failure_writes, []
        self._write(writes)
        self._protocol_closed()

    def _protocol_closed(self) -> None:
        """The client sent a close frame, or broke the protocol and the protocol failed the connection."""
        protocol = self.protocol
        close = protocol.close_rcvd or protocol.close_sent
        if close is None:
            self._closing(CLOSE_ABNORMAL, "")
        else:
            self._closing(close.code, close.reason)

    # --- ASGI receive ---------------------------------------------------------------------------

    async def receive(self) -> dict[str, Any]:
        messages = self.messages
        if messages:
            message = messages.popleft()
            self.queued_bytes -= _payload_size(message)
            if self.reading_paused:
                self._update_reading()
            return message
        if not self.connect_delivered:
            self.connect_delivered = True
            return {"type": "websocket.connect"}
        if self.disconnect is not None:
            return self.disconnect
        waiter = self.waiter = self.loop.create_future()
        try:
            return await waiter
        finally:
            if self.waiter is waiter:
                self.waiter = None  # cancelled while waiting: the next message must not go to a dead future

    def _set_disconnect(self, code: int, reason: str) -> None:
        if self.disconnect is not None:
            return
        self.disconnect = {"type": "websocket.disconnect", "code": code, "reason": reason}
        waiter = self.waiter
        if waiter is not None:  # waiting means nothing is queued: the disconnect is next
            self.waiter = None
            if not waiter.done():
                waiter.set_result(self.disconnect)

    # --- ASGI send ------------------------------------------------------------------------------

    async def send(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "websocket.send":
            if self.phase != _OPEN:
                self._refuse_send(kind, message)
                return
            text = message.get("text")
            if text is not None:
                first, payload = _FIN_TEXT, text.encode()
            else:
                first, payload = _FIN_BINARY, message.get("bytes")
                if payload is None:
                    raise RuntimeError("websocket.send needs a 'text' or a 'bytes' key")
            if self.protocol.extensions:
                self._send_compressed(first, payload)
            else:
                self._send_frame(first, payload)
            if self.writing_paused:
                await self.drain()  # a slow reader makes the app wait instead of the server buffer
        elif kind == "websocket.accept":
            self._accept(message)
        elif kind == "websocket.close":
            self._app_close(message)
        elif kind == "websocket.http.response.start":
            self._deny_start(message)
        elif kind == "websocket.http.response.body":
            self._deny_body(message)
        else:
            raise RuntimeError(f"unexpected ASGI message type {kind!r} on a websocket connection")

    def _send_frame(self, first: int, payload: Any) -> None:
        """One unfragmented, uncompressed frame, framed here rather than by the protocol object: its
        serializer copies the payload into a new buffer, which for large messages costs a memcpy each."""
        if self.gone:
            return
        length = len(payload)
        if length < 126:
            header = _SHORT_HEADERS[first][length]
        elif length < 65536:
            header = _HEADER_16.pack(first, 126, length)
        else:
            header = _HEADER_64.pack(first, 127, length)
        if length < _COPY_LIMIT:
            self.transport.write(header + payload)  # one small write beats a writev of two pieces
        else:
            self.transport.writelines((header, payload))
        self.counters.bytes_out += len(header) + length

    def _send_compressed(self, first: int, payload: Any) -> None:
        protocol = self.protocol
        if first == _FIN_TEXT:
            protocol.send_text(payload)
        else:
            protocol.send_binary(payload)
        self._write(protocol.data_to_send())

    def _refuse_send(self, kind: str, message: dict[str, Any]) -> None:
        """A websocket.send while not OPEN: an error, except for answers just before a failure."""
        if self.phase < _OPEN:
            raise RuntimeError(f"ASGI app sent {kind!r} before 'websocket.accept'")
        if self.phase != _FAILING:
            raise ClientDisconnected("the WebSocket connection is closed")
        # The protocol object refuses to send once it has failed: frame the answer directly.
        text = message.get("text")
        frame = Frame(_TEXT, text.encode()) if text is not None else Frame(_BINARY, message["bytes"])
        self._write([frame.serialize(mask=False, extensions=self.protocol.extensions)])

    def _write(self, writes: list[bytes]) -> None:
        if self.gone:
            return
        transport = self.transport
        for data in writes:
            if data:
                transport.write(data)
                self.counters.bytes_out += len(data)
            else:
                # The protocol's end of stream: once the closing handshake is done (or the connection is
                # failed) the server closes the TCP connection first (RFC 6455 7.1.1).
                transport.close()

    def _accept(self, message: dict[str, Any]) -> None:
        if self.phase != _HANDSHAKE:
            raise RuntimeError("ASGI app sent 'websocket.accept' after the handshake was answered")
        if self.gone:
            raise ClientDisconnected("client disconnected during the WebSocket handshake")
        handshake = self.handshake
        assert handshake is not None
        head, headers = accept_response(
            handshake,
            self.state.default_headers,
            message.get("subprotocol"),
            message.get("headers") or (),
            self.scope["subprotocols"],
        )
        settings = self.settings
        protocol = _ServerProtocol(Side.SERVER, max_size=settings.ws_max_size or None, logger=_PROTOCOL_LOG)
        if handshake.extension is not None:
            protocol.extensions = [handshake.extension]
            self.parse_slice = self.slice_above = _INFLATE_SLICE
        self.protocol = protocol
        self.handshake = None
        self.phase = _OPEN
        self.transport.write(head)
        self._handshake_answered(101, headers, 0)
        self.next_ping_at = self.state.clock + settings.ws_ping_interval
        # Bytes the client sent behind its handshake are parsed first, as if just read.
        self.unparsed, self.rest = self.rest, b""
        if self.close_on_accept:
            self._server_close(self.close_on_accept)
        self._update_reading()

    def _app_close(self, message: dict[str, Any]) -> None:
        code = message.get("code")
        code = CLOSE_NORMAL if code is None else code
        reason = message.get("reason") or ""
        phase = self.phase
        if phase == _HANDSHAKE:
            # ASGI: closing before accepting rejects the handshake with 403.
            self._answer_http(error_response(403, "", self.state.default_headers), 403, [], 0, code)
        elif phase == _OPEN:
            _check_close(code, reason)
            self._server_close(code, reason)
        elif phase == _DENYING:
            raise RuntimeError("ASGI app sent 'websocket.close' in the middle of an HTTP response")
        # Closing or closed already: nothing more to do.

    def _deny_start(self, message: dict[str, Any]) -> None:
        if self.phase != _HANDSHAKE:
            raise RuntimeError("ASGI app sent 'websocket.http.response.start' after the handshake was answered")
        status = message["status"]
        headers = list(message.get("headers") or ())
        denial_response(status, headers, b"", self.state.default_headers)  # refuse bad input now, not later
        self.phase = _DENYING
        self.denial = (status, headers)

    def _deny_body(self, message: dict[str, Any]) -> None:
        if self.phase != _DENYING or self.denial is None:
            raise RuntimeError("ASGI app sent 'websocket.http.response.body' without 'websocket.http.response.start'")
        self.denial_body.append(message.get("body", b""))
        if not message.get("more_body", False):
            status, headers = self.denial
            body = b"".join(self.denial_body)
            self.denial_body = []
            response = denial_response(status, headers, body, self.state.default_headers)
            self._answer_http(response, status, headers, len(body), CLOSE_NORMAL)

    def _answer_http(self, response: bytes, status: int, headers: list[Any], length: int, code: int) -> None:
        """Answer the handshake with an HTTP response instead of a WebSocket, and close."""
        self.phase = _ENDED
        self.closing_since = self.state.clock
        if not self.gone:
            self.transport.write(response)
            self.transport.close()
        self._handshake_answered(status, headers, length)
        self._set_disconnect(code, "")

    def _handshake_answered(self, status: int, headers: list[Any], length: int) -> None:
        """The handshake is a request: it goes to the ledger once, with the answer it got (101 or a refusal)."""
        self.status = status
        self.response_headers = headers
        self.response_bytes = length
        self.state.ledger.finished(self)

    # --- closing --------------------------------------------------------------------------------

    def _server_close(self, code: int, reason: str = "") -> None:
        """Start the closing handshake from our side; the peer has CLOSE_TIMEOUT to answer."""
        protocol = self.protocol
        protocol.send_close(code, reason)
        self._write(protocol.data_to_send())
        self._closing(code, reason)

    def _fail(self, code: int, reason: str) -> None:
        """Fail the connection (RFC 6455 7.1.7): a close frame, then the TCP close without waiting."""
        protocol = self.protocol
        protocol.fail(code, reason)
        self._write(protocol.data_to_send())
        self._closing(code, reason)

    def _closing(self, code: int, reason: str) -> None:
        self.phase = _CLOSING
        self.closing_since = self.state.clock
        self.fragments = self.decoder = None
        self._set_disconnect(code, reason)
        self._update_reading()  # the peer's close frame must get through even if the app stopped reading

    def going_away(self, code: int) -> None:
        """The worker is stopping: close with `code` now, or as soon as the app accepts."""
        if self.phase == _OPEN:
            self._server_close(code, "server shutting down" if code == CLOSE_GOING_AWAY else "server restarting")
        elif self.phase == _HANDSHAKE:
            self.close_on_accept = code

    def _app_finished(self, task: asyncio.Task[None]) -> None:
        self.app_done = True
        exc = asyncio.CancelledError() if task.cancelled() else task.exception()
        self._log_outcome(exc)
        phase = self.phase
        if phase == _OPEN:
            self._server_close(CLOSE_NORMAL if exc is None else CLOSE_INTERNAL_ERROR)
        elif phase <= _DENYING and not self.gone:
            # Nothing of the HTTP answer is on the wire yet (a denial is sent whole): a 500 is still possible.
            self._answer_http(error_response(500, "", self.state.default_headers), 500, [], 0, CLOSE_INTERNAL_ERROR)
        self._forget_if_done()

    def _log_outcome(self, exc: BaseException | None) -> None:
        logger = self.state.logger
        if exc is None:
            if self.gone:
                return  # the client left during the handshake: nothing was owed to it
            if self.phase == _HANDSHAKE:
                logger.error("ASGI app returned without accepting or rejecting the WebSocket handshake")
            elif self.phase == _DENYING:
                logger.error("ASGI app returned without completing its WebSocket denial response")
        elif isinstance(exc, asyncio.CancelledError):
            return
        elif self.gone or isinstance(exc, ClientDisconnected):
            logger.debug("ASGI app raised after the WebSocket client disconnected: %r", exc)
        else:
            logger.error("Exception in ASGI application", exc_info=exc)

    def _forget_if_done(self) -> None:
        if self.gone and self.app_done:
            self.state.websockets.discard(self)  # first: whoever `connections` tells counts the sessions left
            self.state.connections.discard(self)

    # --- the worker's periodic sweep ------------------------------------------------------------

    def check_timeouts(self, now: float) -> None:
        """Once a second (more often while draining): keep-alive pings, and peers slow to close."""
        phase = self.phase
        if phase == _OPEN:
            self._keepalive(now)
        elif phase >= _CLOSING and not self.gone and now - self.closing_since > CLOSE_TIMEOUT:
            self.transport.abort()

    def _keepalive(self, now: float) -> None:
        settings = self.settings
        if self.ping_payload is not None:
            if self.reading_paused:
                # The app is not reading, so neither is corral: the pong may be waiting unread. Not the peer's fault.
                self.ping_sent_at = now
            elif settings.ws_ping_timeout and now - self.ping_sent_at > settings.ws_ping_timeout:
                # 1011, as the websockets library does for a keep-alive timeout; no point waiting for a
                # close frame from a peer that does not answer pings.
                self._fail(CLOSE_INTERNAL_ERROR, "keepalive ping timeout")
        elif settings.ws_ping_interval and now >= self.next_ping_at:
            self.pings += 1
            payload = struct.pack("!I", self.pings)
            self.protocol.send_ping(payload)
            self._write(self.protocol.data_to_send())
            self.ping_payload = payload
            self.ping_sent_at = now
            self.next_ping_at = now + settings.ws_ping_interval

    def in_flight(self) -> None:
        """A WebSocket is not a request in flight (the loop-lag watchdog lists only those)."""
        return None


def _payload_size(message: dict[str, Any]) -> int:
    """What a queued message counts against ws_max_queue_bytes: its bytes, or its characters for text."""
    text = message.get("text")
    return len(text) if text is not None else len(message["bytes"])


def _check_close(code: Any, reason: Any) -> None:
    """Refuse a websocket.close the protocol could not send, with a message naming what is wrong."""
    if type(code) is not int:
        raise TypeError(f"websocket.close code must be an int, got {code!r}")
    if not isinstance(reason, str):
        raise TypeError(f"websocket.close reason must be a str, got {reason!r}")
    try:
        Close(code, reason).check()
    except ProtocolError:
        raise RuntimeError(f"websocket.close code {code} may not be sent (RFC 6455 7.4)") from None
    if len(reason.encode()) > _MAX_CLOSE_REASON:
        raise RuntimeError(f"websocket.close reason is over {_MAX_CLOSE_REASON} bytes in UTF-8")
