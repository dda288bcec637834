"""The admin endpoint as a small ASGI app (served by corral's own HTTP/1.1 code in the admin process):
/livez, /readyz, /metrics and /status, each answered from one fresh read of the scoreboard."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from corral.admin.prometheus import CONTENT_TYPE, BoardCollector, metrics_registry, render_metrics
from corral.admin.status import liveness_problem, readiness_problem, status_document
from corral.core.scoreboard import BoardSnapshot

__all__ = ["AdminApp"]

_TEXT = b"text/plain; charset=utf-8"
_JSON = b"application/json"
_INDEX = (
    b"corral admin endpoint\n"
    b"/livez    200 while the master's loop turns\n"
    b"/readyz   200 when the pool takes traffic; 503 while starting, draining or with no READY worker\n"
    b"/metrics  Prometheus text format\n"
    b"/status   the pool as JSON (corral status shows it as a table)\n"
)

Response = tuple[int, bytes, bytes]  # status, content type, body


class AdminApp:
    """Routes GET and HEAD on four paths; anything else is 404 or 405."""

    def __init__(
        self,
        read_board: Callable[[], BoardSnapshot],
        listener_names: list[str],
        clock: Callable[[], float] = time.monotonic,
        extra_collectors: Sequence[Any] = (),
        *,
        master_start_ticks: int | None = None,
    ) -> None:
        self.read_board = read_board
        self.master_start_ticks = master_start_ticks  # the master's identity for `corral reload` and `scale`
        self.listener_names = listener_names
        self.clock = clock
        self._renderer: ThreadPoolExecutor | None = None  # created on the first scrape
        self._rendering: asyncio.Future[Response] | None = None  # the render in progress, if any
        # corral's own metrics first, then what else /metrics shows (the app's, summed over the workers).
        self.registry = metrics_registry(BoardCollector(read_board, listener_names, clock), *extra_collectors)
        self.routes: dict[str, Callable[[], Response]] = {
            "/": lambda: (200, _TEXT, _INDEX),
            "/livez": self.livez,
            "/readyz": self.readyz,
            "/metrics": self.metrics,
            "/status": self.status,
        }

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] != "http":
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1003})
            return
        extra: list[tuple[bytes, bytes]] = []
        route = self.routes.get(scope["path"])
        if route is None:
            status, content_type, body = 404, _TEXT, b"not found; see /\n"
        elif scope["method"] not in ("GET", "HEAD"):
            status, content_type, body = 405, _TEXT, b"method not allowed\n"
            extra.append((b"allow", b"GET, HEAD"))
        elif scope["path"] == "/metrics":
            status, content_type, body = await self._metrics_off_the_loop()
        else:
            status, content_type, body = route()
        headers = [(b"content-type", content_type), (b"cache-control", b"no-store"), *extra]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _metrics_off_the_loop(self) -> Response:
        """/metrics rendered in a thread, one render at a time, shared by the scrapes that arrive meanwhile: a
        slow render (many workers, many series) must never delay /livez and /readyz, which the loop answers
        directly."""
        if self._rendering is None:
            if self._renderer is None:
                self._renderer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="corral-metrics")
            rendering = asyncio.get_running_loop().run_in_executor(self._renderer, self.metrics)
            rendering.add_done_callback(self._rendered)
            self._rendering = rendering
        return await asyncio.shield(self._rendering)

    def _rendered(self, rendering: asyncio.Future[Response]) -> None:
        if self._rendering is rendering:
            self._rendering = None

    def livez(self) -> Response:
        problem = liveness_problem(self.read_board(), self.clock())
        return (200, _TEXT, b"ok\n") if problem is None else (503, _TEXT, f"not alive: {problem}\n".encode())

    def readyz(self) -> Response:
        problem = readiness_problem(self.read_board(), self.clock())
        return (200, _TEXT, b"ready\n") if problem is None else (503, _TEXT, f"not ready: {problem}\n".encode())

    def metrics(self) -> Response:
        return 200, CONTENT_TYPE.encode(), render_metrics(self.registry)

    def status(self) -> Response:
        document = status_document(self.read_board(), self.listener_names, self.clock())
        document["master"]["start_ticks"] = self.master_start_ticks
        return 200, _JSON, json.dumps(document, indent=1).encode() + b"\n"
