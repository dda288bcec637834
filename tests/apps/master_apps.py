"""ASGI apps for the pre-fork master's integration tests: answers that name the worker, and workers that misbehave.

`app` dispatches on the request path. Every answer carries the pid of the worker that gave it, so a test can
tell which worker served it. Endpoints that block the event loop do so with `time.sleep` on purpose: the master
and the loop watchdog must notice, and their logs must name these functions.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

__all__ = [
    "BROKEN_APP_SOURCE",
    "RELOADABLE_APP_SOURCE",
    "app",
    "block_the_loop",
    "crash_the_worker",
    "grow",
    "hanging_lifespan_app",
    "hello",
    "sleep_politely",
    "stuck_in_time_sleep",
]

# Longest a misbehaving endpoint blocks: far beyond any timeout the tests set, short enough that a worker the
# master failed to kill still ends on its own.
STUCK_SECONDS = 30.0

# A module the reload tests write to a temporary directory, then replace with BROKEN_APP_SOURCE before a HUP.
RELOADABLE_APP_SOURCE = '''\
"""A tiny app the reload tests rewrite on disk."""
import os


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = f"reloadable pid={os.getpid()}\\n".encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
'''
# Fails at import time: a deploy that broke the code. Longer than the good source, so bytecode caches notice.
BROKEN_APP_SOURCE = 'raise RuntimeError("master-test: this deploy is broken at import time")\n' + "#" * 600 + "\n"


def _query(scope: dict[str, Any]) -> dict[str, str]:
    return {key: values[-1] for key, values in parse_qs(scope["query_string"].decode("latin-1")).items()}


async def _answer(send: Any, text: str, status: int = 200) -> None:
    body = f"{text} pid={os.getpid()}\n".encode()
    headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def stuck_in_time_sleep(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Blocks the worker's event loop far longer than `timeout`: the master must abort the worker."""
    time.sleep(float(_query(scope).get("seconds", STUCK_SECONDS)))
    await _answer(send, "woke up")


async def block_the_loop(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Blocks the event loop for `seconds` (below `timeout`): the loop watchdog must name this function."""
    time.sleep(min(float(_query(scope).get("seconds", "1.5")), STUCK_SECONDS))
    await _answer(send, "unblocked")


async def sleep_politely(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Writes `marker` once the request is in the app, awaits `seconds`, then answers 200."""
    query = _query(scope)
    if query.get("marker"):
        Path(query["marker"]).write_text("started")
    await asyncio.sleep(min(float(query.get("seconds", "1")), STUCK_SECONDS))
    await _answer(send, "slept")


async def hello(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await _answer(send, "hello")


_HELD: list[bytearray] = []


async def grow(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Keeps `mib` MiB alive in this worker (a leak): max_worker_memory must replace the worker."""
    _HELD.append(bytearray(int(_query(scope).get("mib", "64")) * 1024 * 1024))
    await _answer(send, "grown")


async def crash_the_worker(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The worker serving this request dies on the spot, as from a segfault in a C extension."""
    os.kill(os.getpid(), signal.SIGKILL)


_ROUTES = {
    "/crash": crash_the_worker,
    "/stuck": stuck_in_time_sleep,
    "/block": block_the_loop,
    "/sleep": sleep_politely,
    "/grow": grow,
}


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await _lifespan_accepting_everything(receive, send)
        return
    await _ROUTES.get(scope["path"], hello)(scope, receive, send)


async def _lifespan_accepting_everything(receive: Any, send: Any) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def hanging_lifespan_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Its lifespan startup never completes (a database that never answers): boot_timeout must end it."""
    if scope["type"] == "lifespan":
        await receive()
        await asyncio.sleep(STUCK_SECONDS)
        await send({"type": "lifespan.startup.failed", "message": "gave up waiting"})
        return
    await hello(scope, receive, send)
