"""Apps that answer with files, for the sendfile tests: WSGI's wsgi.file_wrapper (bare and through Flask's
send_file) and ASGI's http.response.zerocopysend. Each takes the file's path in the query string (`path=`)."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from flask import Flask, request, send_file

flask_app = Flask(__name__)


@flask_app.get("/send")
def send() -> Any:
    return send_file(request.args["path"], mimetype="application/octet-stream")


class MarkedFile:
    """A file object of the app's own type that, when closed, leaves a mark file naming the thread that closed
    it (PEP 3333: the server calls the iterable's close(), which is the file's)."""

    def __init__(self, path: str, mark: str | None) -> None:
        self.file = open(path, "rb")  # noqa: SIM115 - closed by the server through the wrapper
        self.mark = mark

    def read(self, size: int = -1) -> bytes:
        return self.file.read(size)

    def fileno(self) -> int:
        return self.file.fileno()

    def tell(self) -> int:
        return self.file.tell()

    def seek(self, offset: int) -> int:
        return self.file.seek(offset)

    def close(self) -> None:
        self.file.close()
        if self.mark:
            Path(self.mark).write_text(threading.current_thread().name)


def wsgi_files(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
    """/wrapper (Content-Length given), /no-length, /short?length=N (Content-Length below the file's size),
    /from?offset=N (the file positioned before it is wrapped), /chunked (write() before the wrapper: chunked)."""
    query = {name: values[0] for name, values in parse_qs(environ["QUERY_STRING"]).items()}
    path = environ["PATH_INFO"]
    if path == "/extensions":
        body = json.dumps(sorted(environ["asgi.scope"]["extensions"])).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]
    file = MarkedFile(query["path"], query.get("mark"))
    size = os.fstat(file.fileno()).st_size
    headers = [("Content-Type", "application/octet-stream")]
    if path == "/wrapper":
        headers.append(("Content-Length", str(size)))
    elif path == "/short":
        headers.append(("Content-Length", query["length"]))
    elif path == "/from":
        offset = int(query["offset"])
        file.seek(offset)
        headers.append(("Content-Length", str(size - offset)))
    write = start_response("200 OK", headers)
    if path == "/chunked":
        write(b"before the file;")
    return environ["wsgi.file_wrapper"](file, 8192)


async def asgi_files(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """/whole (Content-Length given), /parts (no length: chunked, a body part between two ranges of the
    file), /position (no offset: from the file's position, which follows), /extensions (the scope's)."""
    if scope["type"] == "lifespan":
        await receive()  # lifespan.startup
        await send({"type": "lifespan.startup.complete"})
        await receive()  # lifespan.shutdown
        await send({"type": "lifespan.shutdown.complete"})
        return
    path = scope["path"]
    if path == "/extensions":
        body = json.dumps(sorted(scope["extensions"])).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})
        return
    query = {name: values[0] for name, values in parse_qs(scope["query_string"].decode()).items()}
    with open(query["path"], "rb") as file:
        size = os.fstat(file.fileno()).st_size
        if path == "/whole":
            headers = [(b"content-length", str(size).encode())]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.zerocopysend", "file": file})
        elif path == "/parts":
            half = size // 2
            await send({"type": "http.response.start", "status": 200, "headers": []})
            first = {"file": file, "offset": 0, "count": half, "more_body": True}
            await send({"type": "http.response.zerocopysend", **first})
            await send({"type": "http.response.body", "body": b"|middle|", "more_body": True})
            second = {"file": file.fileno(), "offset": half, "more_body": True}  # a descriptor, to the end
            await send({"type": "http.response.zerocopysend", **second})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        elif path == "/position":
            file.seek(10)
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.zerocopysend", "file": file, "count": 100, "more_body": True})
            rest = str(file.tell()).encode()
            await send({"type": "http.response.body", "body": b"|position=" + rest})
