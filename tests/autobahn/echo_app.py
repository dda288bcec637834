"""The raw ASGI 3 app that Autobahn|Testsuite and bench/websocket.py talk to: echoes every WebSocket message.

Text comes back as text and bytes as bytes, unchanged; a plain HTTP request gets a short 200 so that a
harness can tell the server is up. No framework, so what is measured or fuzzed is the server alone.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["app"]

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_READY_BODY = b"websocket echo app\n"
_READY_START: Message = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(_READY_BODY)).encode())],
}
_READY_BODY_MESSAGE: Message = {"type": "http.response.body", "body": _READY_BODY}


async def _echo_websocket(receive: Receive, send: Send) -> None:
    connect = await receive()
    if connect["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] != "websocket.receive":
            return  # websocket.disconnect: the peer or the server closed the connection
        text = message.get("text")
        if text is not None:
            await send({"type": "websocket.send", "text": text})
        else:
            await send({"type": "websocket.send", "bytes": message.get("bytes") or b""})


async def _answer_http(receive: Receive, send: Send) -> None:
    await send(_READY_START)
    await send(_READY_BODY_MESSAGE)


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    kind = scope["type"]
    if kind == "websocket":
        await _echo_websocket(receive, send)
    elif kind == "http":
        await _answer_http(receive, send)
    elif kind == "lifespan":
        await _lifespan(receive, send)
