"""The ASGI app bench/hostile.py serves: GET answers 4 KiB; a WebSocket is accepted and its messages never read."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

__all__ = ["app"]

Message = MutableMapping[str, Any]
BODY = b"x" * 4096
START: Message = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-type", b"application/octet-stream"), (b"content-length", b"4096")],
}
# Long enough to outlive any scenario: the server's shutdown ends it.
WEBSOCKET_LIFETIME = 300.0


Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


async def app(scope: Message, receive: Receive, send: Send) -> None:
    kind = scope["type"]
    if kind == "http":
        await send(START)
        await send({"type": "http.response.body", "body": BODY})
    elif kind == "websocket":
        await receive()  # websocket.connect; after it, this app never asks for a message
        await send({"type": "websocket.accept"})
        await asyncio.sleep(WEBSOCKET_LIFETIME)
    elif kind == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
