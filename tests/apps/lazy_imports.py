"""Apps that answer an HTTP request with whether their worker has imported the websockets library: an ASGI one
that also echoes one WebSocket message, and a WSGI one; a WSGI app listing which of the modules a worker has
no use for it has imported; and one saying what its worker inherited from the master."""

from __future__ import annotations

import gc
import json
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["asgi_app", "inherited_app", "unneeded_modules_app", "wsgi_app"]

# Standard-library modules that only the master's error messages, sizing or name resolution use.
UNNEEDED_IN_A_WORKER = ("difflib", "fractions", "decimal", "encodings.idna", "unicodedata")


# A worker imports its app before it makes its event loop: the event loop's modules loaded now, and the objects
# frozen out of the cycle collector's reach, came from the master.
_EVENT_LOOP_MODULES = ("uvloop", "concurrent.futures.thread")
_INHERITED = {
    "modules": [name for name in _EVENT_LOOP_MODULES if name in sys.modules],
    "frozen": gc.get_freeze_count() > 0,
}


def _loaded() -> bytes:
    return b"websockets loaded" if "websockets" in sys.modules else b"websockets not loaded"


async def asgi_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": _loaded()})
    elif scope["type"] == "websocket":
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        message = await receive()
        await send({"type": "websocket.send", "text": message["text"]})
        await send({"type": "websocket.close", "code": 1000})


def wsgi_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [_loaded()]


def unneeded_modules_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [" ".join(name for name in UNNEEDED_IN_A_WORKER if name in sys.modules).encode()]


def inherited_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "application/json")])
    return [json.dumps(_INHERITED).encode()]
