"""Apps for the drain tests: a Starlette service whose background jobs outlive their response, a download that
sends its closing message late, and app output a server must refuse or correct.

`app` serves the raw ASGI paths below and hands everything else (and the lifespan scope) to the Starlette app:
- POST /job?seconds=S&marker=PATH: answers at once; a BackgroundTask writes PATH+".started", sleeps S seconds,
  then writes PATH (cancelled: PATH+".cancelled").
- GET /download: 1 MiB with its Content-Length, in 64 KiB parts, then waits before the final empty message.
- GET /file: 1 MiB from a file, with Starlette's FileResponse (whose final empty message follows a file read).
- GET /status/float, /status/101, /status/103: http.response.start with that (bad) final status.
- GET /no-content-with-length, /not-modified-with-length: 204 and 304 with a Content-Length header.
- GET or POST /pid: "pid=N".
The lifespan shutdown writes the file named by CORRAL_TEST_SHUTDOWN_MARKER, when set.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse
from starlette.routing import Route

DOWNLOAD_SIZE = 1024 * 1024
_PART = 64 * 1024


async def background_job(seconds: float, marker: str) -> None:
    Path(marker + ".started").write_text("started")
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        Path(marker + ".cancelled").write_text("cancelled")
        raise
    Path(marker).write_text(f"done by {os.getpid()}")


async def job(request: Request) -> PlainTextResponse:
    seconds = float(request.query_params["seconds"])
    marker = request.query_params["marker"]
    return PlainTextResponse(f"queued pid={os.getpid()}\n", background=BackgroundTask(background_job, seconds, marker))


async def pid(request: Request) -> PlainTextResponse:
    return PlainTextResponse(f"pid={os.getpid()}\n")


@functools.cache
def download_file() -> str:
    fd, path = tempfile.mkstemp(prefix="corral-test-download-")
    with os.fdopen(fd, "wb") as file:
        file.write(b"x" * DOWNLOAD_SIZE)
    return path


async def file(request: Request) -> FileResponse:
    return FileResponse(download_file(), media_type="application/octet-stream")


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    yield
    if download_file.cache_info().currsize:
        os.unlink(download_file())
    marker = os.environ.get("CORRAL_TEST_SHUTDOWN_MARKER")
    if marker:
        Path(marker).write_text(f"shutdown by {os.getpid()}")


routes = [Route("/job", job, methods=["POST"]), Route("/pid", pid, methods=["GET", "POST"]), Route("/file", file)]
service = Starlette(routes=routes, lifespan=lifespan)


async def download(send: Any) -> None:
    headers = [(b"content-type", b"application/octet-stream"), (b"content-length", b"%d" % DOWNLOAD_SIZE)]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    for _ in range(DOWNLOAD_SIZE // _PART):
        await send({"type": "http.response.body", "body": b"x" * _PART, "more_body": True})
    # As a file response does when its last read comes back: the client may have everything and be gone.
    await asyncio.sleep(0.5)
    await send({"type": "http.response.body", "body": b"", "more_body": False})


_BAD_STATUS = {"/status/float": 200.0, "/status/101": 101, "/status/103": 103}
_WITH_LENGTH = {"/no-content-with-length": 204, "/not-modified-with-length": 304}


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    path = scope.get("path", "")
    if scope["type"] != "http" or not (path == "/download" or path in _BAD_STATUS or path in _WITH_LENGTH):
        await service(scope, receive, send)
    elif path == "/download":
        await download(send)
    elif path in _BAD_STATUS:
        await send({"type": "http.response.start", "status": _BAD_STATUS[path], "headers": []})
        await send({"type": "http.response.body", "body": b"should never be sent"})
    else:
        headers = [(b"content-length", b"5"), (b"etag", b'"v1"')]
        await send({"type": "http.response.start", "status": _WITH_LENGTH[path], "headers": headers})
        await send({"type": "http.response.body", "body": b""})
