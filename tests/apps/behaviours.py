"""ASGI apps that behave in specific ways (some badly, on purpose) for the integration tests.

`app` dispatches on the request path; query parameters tune each behaviour. Apps that must coordinate with a
test write marker files whose paths the test passes in the query string.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import json
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

__all__ = [
    "FIXED_BODY",
    "app",
    "failing_lifespan_app",
    "pattern_chunk",
    "raising_lifespan_app",
    "startup_failure_message",
]

FIXED_BODY = b"hello world\n"
HOLD_LIMIT_SECONDS = 60.0
startup_failure_message = "lifespan-startup-boom"

# Set by /ctx; a later request on the same connection must not see the value.
request_marker: contextvars.ContextVar[str] = contextvars.ContextVar("request_marker", default="unset")


def pattern_chunk(index: int, size: int) -> bytes:
    """Deterministic, index-dependent bytes, so reordered or lost chunks change the digest."""
    seed = hashlib.sha256(str(index).encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


def _query(scope: dict[str, Any]) -> dict[str, str]:
    return {key: values[-1] for key, values in parse_qs(scope["query_string"].decode("latin-1")).items()}


async def _start(send: Any, status: int = 200, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers or []})


async def _answer(send: Any, body: bytes, status: int = 200, content_type: bytes = b"text/plain") -> None:
    await _start(send, status, [(b"content-type", content_type), (b"content-length", str(len(body)).encode())])
    await send({"type": "http.response.body", "body": body})


async def _answer_json(send: Any, data: object, status: int = 200) -> None:
    await _answer(send, json.dumps(data).encode(), status, b"application/json")


async def _drain_body(receive: Any) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _touch(path: str | None, text: str) -> None:
    if path:
        Path(path).write_text(text)


# --------------------------------------------------------------------------------------------------
# Behaviours, one per path


async def fixed(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await _drain_body(receive)
    await _answer(send, FIXED_BODY)


async def stream(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """`chunks` body messages of `size` bytes; with `length=1` the total Content-Length is declared."""
    query = _query(scope)
    chunks, size = int(query.get("chunks", "3")), int(query.get("size", "5"))
    headers = [(b"content-type", b"application/octet-stream")]
    if query.get("length") == "1":
        headers.append((b"content-length", str(chunks * size).encode()))
    await _drain_body(receive)
    await _start(send, 200, headers)
    for index in range(chunks):
        await send({"type": "http.response.body", "body": pattern_chunk(index, size), "more_body": True})
    await send({"type": "http.response.body", "body": b""})


async def sleep(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Writes `marker` once the request is in the app, sleeps `seconds`, then answers 200."""
    query = _query(scope)
    await _drain_body(receive)
    _touch(query.get("marker"), "started")
    await asyncio.sleep(float(query.get("seconds", "0.2")))
    await _answer(send, b"slept\n")


async def hold(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Keeps the request open until the client goes away, then writes `<marker>.disconnected`."""
    query = _query(scope)
    marker = query.get("marker")
    await _drain_body(receive)
    _touch(marker, "started")
    try:
        message = await asyncio.wait_for(receive(), HOLD_LIMIT_SECONDS)
    except asyncio.TimeoutError:
        await _answer(send, b"held too long\n", 500)
        return
    if marker and message["type"] == "http.disconnect":
        _touch(marker + ".disconnected", "disconnected")


async def raise_before_start(scope: dict[str, Any], receive: Any, send: Any) -> None:
    raise RuntimeError("boom-before-start")


async def raise_after_start(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await _start(send, 200, [(b"content-length", b"100")])
    await send({"type": "http.response.body", "body": b"partial", "more_body": True})
    raise RuntimeError("boom-after-start")


async def return_mid_body(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await _start(send, 200)
    await send({"type": "http.response.body", "body": b"partial", "more_body": True})


async def no_response(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await _drain_body(receive)


async def reject(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers `status` (default 417) without ever reading the request body."""
    await _answer(send, b"rejected\n", int(_query(scope).get("status", "417")))


async def upload_digest(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Waits `delay` seconds before reading (the server must hold the client back), then digests the body."""
    await asyncio.sleep(float(_query(scope).get("delay", "0")))
    digest, length, messages = hashlib.sha256(), 0, 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            await _answer_json(send, {"disconnected": True, "length": length}, 500)
            return
        chunk = message.get("body", b"")
        digest.update(chunk)
        length += len(chunk)
        messages += 1
        if not message.get("more_body", False):
            break
    await _answer_json(send, {"length": length, "sha256": digest.hexdigest(), "messages": messages})


async def context_var(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers the value of a context variable as seen on entry, then sets it to `set` (after `await=1`)."""
    query = _query(scope)
    seen = request_marker.get()
    await _drain_body(receive)
    if query.get("await") == "1":
        await asyncio.sleep(0)
    if "set" in query:
        request_marker.set(query["set"])
    await _answer_json(send, {"seen": seen})


async def lifespan_state(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await _drain_body(receive)
    await _answer_json(send, {"state": dict(scope.get("state") or {})})


ROUTES = {
    "/fixed": fixed,
    "/stream": stream,
    "/sleep": sleep,
    "/hold": hold,
    "/raise-before-start": raise_before_start,
    "/raise-after-start": raise_after_start,
    "/return-mid-body": return_mid_body,
    "/no-response": no_response,
    "/reject": reject,
    "/upload-digest": upload_digest,
    "/ctx": context_var,
    "/state": lifespan_state,
}


async def _lifespan(scope: dict[str, Any], receive: Any, send: Any, fail: str = "") -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            if fail == "raise":
                raise RuntimeError(startup_failure_message)
            if fail == "report":
                await send({"type": "lifespan.startup.failed", "message": startup_failure_message})
                return
            if "state" in scope:
                scope["state"]["behaviours"] = "ready"
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await _lifespan(scope, receive, send)
        return
    if scope["type"] != "http":
        return
    route = ROUTES.get(scope["path"])
    if route is None:
        await _drain_body(receive)
        await _answer(send, b"no such behaviour\n", 404)
        return
    await route(scope, receive, send)


async def failing_lifespan_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Reports `lifespan.startup.failed`; the server must refuse to start."""
    if scope["type"] == "lifespan":
        await _lifespan(scope, receive, send, fail="report")
        return
    await app(scope, receive, send)


async def raising_lifespan_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Raises during lifespan startup; fatal when lifespan is "on" (ASGI lets "auto" carry on without it)."""
    if scope["type"] == "lifespan":
        await _lifespan(scope, receive, send, fail="raise")
        return
    await app(scope, receive, send)
