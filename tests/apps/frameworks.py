"""The same small service written with FastAPI (`fastapi_app`) and with Starlette (`starlette_app`).

Each exercises what those frameworks do on top of ASGI: anyio task groups, a thread pool for sync
endpoints, streaming responses, background tasks, BaseHTTPMiddleware and lifespan state.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

__all__ = ["STREAM_PARTS", "fastapi_app", "starlette_app"]

STREAM_PARTS = [b"alpha\n", b"beta\n", b"gamma\n"]
MIDDLEWARE_HEADER = "x-through-middleware"


class TagMiddleware(BaseHTTPMiddleware):
    """Tags every response; BaseHTTPMiddleware runs the endpoint in an anyio task group."""

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        response = await call_next(request)
        response.headers[MIDDLEWARE_HEADER] = "yes"
        return response


@asynccontextmanager
async def lifespan(app: Any) -> AsyncIterator[dict[str, str]]:
    yield {"greeting": "hello from lifespan"}


async def stream_parts() -> AsyncIterator[bytes]:
    for part in STREAM_PARTS:
        yield part


def write_marker(path: str, text: str) -> None:
    Path(path).write_text(text)


def in_worker_thread() -> bool:
    return threading.current_thread() is not threading.main_thread()


# --------------------------------------------------------------------------------------------------
# FastAPI

fastapi_app = FastAPI(lifespan=lifespan)
fastapi_app.add_middleware(TagMiddleware)


class Item(BaseModel):
    name: str
    quantity: int


@fastapi_app.get("/json")
async def fastapi_json(request: Request) -> dict[str, str]:
    return {"framework": "fastapi", "greeting": request.state.greeting}


@fastapi_app.get("/items/{item_id}")
async def fastapi_item(item_id: int, q: str | None = None) -> dict[str, Any]:
    return {"item_id": item_id, "q": q}


@fastapi_app.post("/items")
async def fastapi_create(item: Item) -> dict[str, Any]:
    return {"name": item.name, "quantity": item.quantity, "total": item.quantity * 2}


@fastapi_app.get("/sync")
def fastapi_sync() -> dict[str, bool]:
    return {"in_worker_thread": in_worker_thread()}


@fastapi_app.get("/stream")
async def fastapi_stream() -> StreamingResponse:
    return StreamingResponse(stream_parts(), media_type="text/plain")


@fastapi_app.post("/background")
async def fastapi_background(marker: str) -> JSONResponse:
    return JSONResponse({"scheduled": True}, background=BackgroundTask(write_marker, marker, "fastapi"))


# --------------------------------------------------------------------------------------------------
# Starlette


async def starlette_json(request: Request) -> JSONResponse:
    return JSONResponse({"framework": "starlette", "greeting": request.state.greeting})


async def starlette_item(request: Request) -> JSONResponse:
    return JSONResponse({"item_id": request.path_params["item_id"], "q": request.query_params.get("q")})


async def starlette_create(request: Request) -> JSONResponse:
    item = await request.json()
    return JSONResponse({"name": item["name"], "quantity": item["quantity"], "total": item["quantity"] * 2})


def starlette_sync(request: Request) -> JSONResponse:
    return JSONResponse({"in_worker_thread": in_worker_thread()})


async def starlette_stream(request: Request) -> StreamingResponse:
    return StreamingResponse(stream_parts(), media_type="text/plain")


async def starlette_background(request: Request) -> JSONResponse:
    marker = request.query_params["marker"]
    return JSONResponse({"scheduled": True}, background=BackgroundTask(write_marker, marker, "starlette"))


starlette_app = Starlette(
    routes=[
        Route("/json", starlette_json),
        Route("/items/{item_id:int}", starlette_item),
        Route("/items", starlette_create, methods=["POST"]),
        Route("/sync", starlette_sync),
        Route("/stream", starlette_stream),
        Route("/background", starlette_background, methods=["POST"]),
    ],
    middleware=[Middleware(TagMiddleware)],
    lifespan=lifespan,
)
