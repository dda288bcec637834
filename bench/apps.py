"""The ASGI 3 application every benchmarked server runs: raw plaintext, JSON and a body echo, and FastAPI.

Paths under /fastapi/ go to bench/fastapi_app.py, imported on the first such request so that the raw tests
and the idle memory of every server are measured without a framework loaded.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

__all__ = ["app"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

PLAINTEXT_BODY = b"Hello, World!"
# Headers are built once: the benchmark measures the server, not the app's header construction.
PLAINTEXT_START: Message = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-type", b"text/plain"), (b"content-length", b"13")],
}
NOT_FOUND_START: Message = {
    "type": "http.response.start",
    "status": 404,
    "headers": [(b"content-type", b"text/plain"), (b"content-length", b"9")],
}


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """Route /plaintext, /json, /echo and /fastapi/*; complete the lifespan protocol; 404 anything else."""
    if scope["type"] == "http":
        await _handle_http(scope, receive, send)
    elif scope["type"] == "lifespan":
        await _handle_lifespan(receive, send)


async def _handle_http(scope: Scope, receive: Receive, send: Send) -> None:
    path = scope["path"]
    if path == "/plaintext":
        await send(PLAINTEXT_START)
        await send({"type": "http.response.body", "body": PLAINTEXT_BODY})
    elif path == "/json":
        # Serialised per request, as the TechEmpower JSON test requires.
        body = json.dumps({"message": "Hello, World!"}).encode()
        await send(_start(200, b"application/json", len(body)))
        await send({"type": "http.response.body", "body": body})
    elif path == "/echo":
        body = await _read_body(receive)
        await send(_start(200, b"application/octet-stream", len(body)))
        await send({"type": "http.response.body", "body": body})
    elif path.startswith("/fastapi/"):
        await _framework()(scope, receive, send)
    else:
        await send(NOT_FOUND_START)
        await send({"type": "http.response.body", "body": b"Not Found"})


_FRAMEWORK_APP: list[Callable[..., Awaitable[None]]] = []


def _framework() -> Callable[..., Awaitable[None]]:
    if not _FRAMEWORK_APP:
        from bench.fastapi_app import app as fastapi_app

        _FRAMEWORK_APP.append(fastapi_app)
    return _FRAMEWORK_APP[0]


def _start(status: int, content_type: bytes, length: int) -> Message:
    return {
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", content_type), (b"content-length", str(length).encode())],
    }


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break  # http.disconnect: the client went away; answer with what arrived.
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


async def _handle_lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
