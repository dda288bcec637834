"""An ASGI app that answers every HTTP request with a JSON description of what it received.

Byte fields are base64 so that any byte the server let through survives the trip back to the test.
"""

from __future__ import annotations

import base64
import json
from typing import Any

__all__ = ["app", "decode_echo"]

# Put into the lifespan state at startup, so tests can prove `scope["state"]` is a copy of it.
LIFESPAN_STATE_KEY = "echo_lifespan"
LIFESPAN_STATE_VALUE = "started"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _describe(scope: dict[str, Any], body: bytes) -> dict[str, Any]:
    return {
        "type": scope["type"],
        "asgi": scope.get("asgi"),
        "http_version": _b64(scope["http_version"].encode("latin-1")),
        "method": _b64(scope["method"].encode("latin-1")),
        "scheme": scope.get("scheme"),
        "path": scope["path"],
        "raw_path": None if scope.get("raw_path") is None else _b64(scope["raw_path"]),
        "query_string": _b64(scope["query_string"]),
        "root_path": scope.get("root_path"),
        "headers": [[_b64(name), _b64(value)] for name, value in scope["headers"]],
        "client": scope.get("client"),
        "server": scope.get("server"),
        "state": dict(scope["state"]) if "state" in scope else None,
        "extensions": sorted(scope.get("extensions") or {}) if "extensions" in scope else None,
        "body": _b64(body),
    }


async def _lifespan(scope: dict[str, Any], receive: Any, send: Any) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            if "state" in scope:
                scope["state"][LIFESPAN_STATE_KEY] = LIFESPAN_STATE_VALUE
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _read_body(receive: Any) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await _lifespan(scope, receive, send)
        return
    if scope["type"] != "http":
        return
    body = await _read_body(receive)
    if b"mutate_state" in scope["query_string"] and "state" in scope:
        # Tests prove that what one request does to its state is invisible to the next.
        scope["state"]["mutated_by_request"] = True
    payload = json.dumps(_describe(scope, body)).encode("ascii")
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode("ascii")),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


def decode_echo(payload: bytes | str) -> dict[str, Any]:
    """Turn the app's JSON answer back into Python values with the byte fields as bytes."""
    data = json.loads(payload)
    for key in ("http_version", "method"):
        data[key] = base64.b64decode(data[key]).decode("latin-1")
    for key in ("raw_path", "query_string", "body"):
        if data[key] is not None:
            data[key] = base64.b64decode(data[key])
    data["headers"] = [(base64.b64decode(n), base64.b64decode(v)) for n, v in data["headers"]]
    return data
