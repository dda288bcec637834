"""Apps for the uvicorn command-line and corral.run() tests."""

from __future__ import annotations

import json
import os
from typing import Any

__all__ = ["app"]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers what a uvicorn setting changes: the environment variable named by the query string, the
    scope's root_path, client and scheme, and the worker's pid."""
    if scope["type"] != "http":
        return
    name = scope["query_string"].decode("ascii")
    body = json.dumps(
        {
            "env": os.environ.get(name) if name else None,
            "root_path": scope.get("root_path"),
            "path": scope["path"],
            "client": scope.get("client"),
            "scheme": scope["scheme"],
            "pid": os.getpid(),
        }
    ).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})
