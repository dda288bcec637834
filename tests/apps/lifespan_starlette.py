"""Starlette apps whose lifespan sets state, records what ran, and can be told to fail."""

import contextlib

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route


def create_app(events: list, *, fail_startup: bool = False, fail_shutdown: bool = False) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app):
        events.append("startup")
        if fail_startup:
            raise RuntimeError("database unreachable")
        yield {"pool": "the-pool"}
        events.append("shutdown")
        if fail_shutdown:
            raise RuntimeError("could not flush")

    async def pool(request: Request) -> PlainTextResponse:
        return PlainTextResponse(request.state.pool)

    return Starlette(routes=[Route("/pool", pool)], lifespan=lifespan)
