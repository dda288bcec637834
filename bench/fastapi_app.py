"""The FastAPI service the fastapi_* benchmarks run: idiomatic endpoints, as people write them.

bench/apps.py hands every path under /fastapi/ to this app, importing it on the first such request, so the
raw tests and every server's idle memory stay as they were without it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

__all__ = ["ITEM_BODY", "STREAM_BODY", "app", "item_answer"]

# The 1 KiB JSON document wrk posts to /fastapi/items (bench/fastapi_items.lua reads the same file).
ITEM_BODY = (Path(__file__).resolve().parent / "item.json").read_bytes()
STREAM_PARTS = [b"%02d %s\n" % (n, b"x" * 60) for n in range(8)]
STREAM_BODY = b"".join(STREAM_PARTS)

app = FastAPI()


class Item(BaseModel):
    name: str
    description: str
    price: float
    tax: float | None = None
    quantity: int
    tags: list[str]


# No return annotations, as in FastAPI's tutorial: an annotation would add a response model to validate.
@app.get("/fastapi/json")
async def hello():  # type: ignore[no-untyped-def]
    return {"message": "Hello, World!"}


@app.post("/fastapi/items")
async def create_item(item: Item):  # type: ignore[no-untyped-def]
    return item_answer(item.name, item.price, item.tax, item.quantity, len(item.tags))


def item_answer(name: str, price: float, tax: float | None, quantity: int, tags: int) -> dict[str, object]:
    return {"name": name, "total": round((price + (tax or 0.0)) * quantity, 2), "tags": tags}


async def _parts() -> AsyncIterator[bytes]:
    for part in STREAM_PARTS:
        yield part


@app.get("/fastapi/stream")
async def stream():  # type: ignore[no-untyped-def]
    return StreamingResponse(_parts(), media_type="text/plain")
