"""WebSocket test apps: a raw ASGI app whose path picks a behaviour (`app`), and a FastAPI app with a
WebSocket route (`fastapi_app`).

What the server did to a session that cannot be seen from the client (the disconnect code the app got) is
printed to stderr as `websocket.disconnect path=... code=...`, where the tests read it from the server's log.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from fastapi import FastAPI, WebSocket, WebSocketDisconnect

__all__ = ["DENIAL_BODY", "app", "fastapi_app"]

DENIAL_BODY = b"no entry without a token\n"
SUBPROTOCOLS_KNOWN = ("superchat", "chat")

Receive = Any
Send = Any


def _report_disconnect(scope: dict[str, Any], message: dict[str, Any]) -> None:
    print(f"websocket.disconnect path={scope['path']} code={message.get('code')}", file=sys.stderr, flush=True)


async def _echo(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            _report_disconnect(scope, message)
            return
        if message.get("text") is not None:
            await send({"type": "websocket.send", "text": message["text"]})
        else:
            await send({"type": "websocket.send", "bytes": message["bytes"]})


async def _subprotocol(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    chosen = next((name for name in SUBPROTOCOLS_KNOWN if name in scope["subprotocols"]), None)
    await send({"type": "websocket.accept", "subprotocol": chosen, "headers": [(b"x-chosen", str(chosen).encode())]})
    await send({"type": "websocket.send", "text": str(chosen)})
    await _wait_for_disconnect(scope, receive)


async def _deny(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    headers = [(b"content-type", b"text/plain"), (b"www-authenticate", b"Bearer")]
    await send({"type": "websocket.http.response.start", "status": 401, "headers": headers})
    await send({"type": "websocket.http.response.body", "body": DENIAL_BODY[:8], "more_body": True})
    await send({"type": "websocket.http.response.body", "body": DENIAL_BODY[8:]})


async def _reject(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    await send({"type": "websocket.close"})


async def _raise_before_accept(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    raise RuntimeError("boom before accept")


async def _raise_after_accept(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    await send({"type": "websocket.accept"})
    await receive()  # the first message from the client
    raise RuntimeError("boom after accept")


async def _close_with_code(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.close", "code": 4000, "reason": "bye"})


async def _scope(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    await send({"type": "websocket.accept"})
    described = {
        "type": scope["type"],
        "scheme": scope["scheme"],
        "http_version": scope["http_version"],
        "path": scope["path"],
        "raw_path": scope["raw_path"].decode("latin-1"),
        "query_string": scope["query_string"].decode("latin-1"),
        "root_path": scope["root_path"],
        "subprotocols": scope["subprotocols"],
        "extensions": sorted(scope["extensions"]),
        "state": dict(scope["state"]),
        "client": list(scope["client"]),
        "has_method": "method" in scope,
        "asgi": scope["asgi"],
    }
    await send({"type": "websocket.send", "text": json.dumps(described)})
    await _wait_for_disconnect(scope, receive)


async def _wait_for_disconnect(scope: dict[str, Any], receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            _report_disconnect(scope, message)
            return


ROUTES = {
    "/echo": _echo,
    "/subprotocol": _subprotocol,
    "/deny": _deny,
    "/reject": _reject,
    "/raise-before-accept": _raise_before_accept,
    "/raise-after-accept": _raise_after_accept,
    "/close-4000": _close_with_code,
    "/scope": _scope,
}


async def _lifespan(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            scope["state"]["started_by"] = "lifespan"
            await send({"type": "lifespan.startup.complete"})
        else:
            await send({"type": "lifespan.shutdown.complete"})
            return


async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await _lifespan(scope, receive, send)
    elif scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"plain http\n"})
    else:
        assert (await receive())["type"] == "websocket.connect"
        handler = ROUTES.get(scope["path"])
        if handler is None:
            await send({"type": "websocket.close", "code": 1008})
        else:
            await handler(scope, receive, send)


fastapi_app = FastAPI()


@fastapi_app.websocket("/ws/{room}")
async def _room(websocket: WebSocket, room: str) -> None:
    await websocket.accept()
    try:
        while True:
            payload = await websocket.receive_json()
            await websocket.send_json({"room": room, "echo": payload})
    except WebSocketDisconnect as exc:
        print(f"websocket.disconnect path=/ws/{room} code={exc.code}", file=sys.stderr, flush=True)


@fastapi_app.get("/")
async def _index() -> dict[str, str]:
    return {"status": "ok"}
