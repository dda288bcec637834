"""An app for the hostile-client tests: large numbered responses, a request count, and a WebSocket endpoint
that reads nothing until told to (a marker file appears), then reports what it received."""

from __future__ import annotations

import asyncio
import os
from typing import Any
from urllib.parse import parse_qs

RESPONSE_SIZE = 16 * 1024
seen = 0  # requests answered by /big, for /count


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    global seen
    if scope["type"] == "websocket":
        await _slow_reader(scope, receive, send)
        return
    if scope["type"] != "http":
        return
    path = scope["path"]
    if path == "/count":
        body = b"%d" % seen
    else:
        seen += 1
        index = path.rsplit("/", 1)[-1].encode()
        body = index.rjust(8, b"0") + b"." * (RESPONSE_SIZE - 8)
    headers = [(b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _slow_reader(scope: dict[str, Any], receive: Any, send: Any) -> None:
    marker = parse_qs(scope["query_string"].decode())["marker"][0]
    await receive()
    await send({"type": "websocket.accept"})
    for _ in range(600):  # at most a minute
        if os.path.exists(marker):
            break
        await asyncio.sleep(0.1)
    count = size = 0
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect" or message.get("text") == "end":
            break
        count += 1
        size += len(message.get("bytes") or b"")
    await send({"type": "websocket.send", "text": f"{count} {size}"})
    await send({"type": "websocket.close"})
