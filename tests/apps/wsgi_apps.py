"""WSGI apps for the integration tests: a Flask app, a plain callable checked by wsgiref.validate on every path,
and routes that sleep or get stuck (for -k sync, timeout and drain tests)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from wsgiref.validate import validator

from flask import Flask, Response, jsonify, request, send_file, stream_with_context

STREAM_PARTS = [b"part-%d\n" % i for i in range(5)]

flask_app = Flask(__name__)


@flask_app.get("/json")
def json_hello() -> Any:
    return jsonify(hello="world")


@flask_app.get("/query")
def query() -> Any:
    return jsonify(dict(request.args))


@flask_app.post("/upload")
def upload() -> Any:
    data = request.get_data()
    return jsonify(size=len(data), sha256=hashlib.sha256(data).hexdigest())


@flask_app.get("/stream")
def stream() -> Response:
    def generate() -> Iterator[bytes]:
        yield from STREAM_PARTS

    return Response(stream_with_context(generate()), mimetype="text/plain")


@flask_app.get("/file")
def file() -> Any:
    return send_file(__file__, mimetype="text/plain")


@flask_app.get("/error")
def error() -> Any:
    raise RuntimeError("flask view failed on purpose")


@flask_app.get("/sleep")
def sleep() -> Any:
    mark = request.args.get("mark")
    if mark:  # tells a test the request is in the app
        open(mark, "w").close()
    time.sleep(float(request.args.get("s", "1")))
    return jsonify(slept=True, pid=os.getpid())


@flask_app.get("/stuck")
def stuck() -> Any:
    threading.Event().wait(60)  # far past any timeout a test sets; the worker is replaced before
    return jsonify(stuck=False)


@flask_app.get("/async")
async def async_view() -> Any:  # Flask runs it with asgiref's async_to_sync, as under Gunicorn
    await asyncio.sleep(0)
    return jsonify(async_view=True)


@flask_app.get("/pid")
def pid() -> Any:
    return jsonify(pid=os.getpid(), multithread=request.environ["wsgi.multithread"])


def plain(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
    """A bare WSGI callable exercising every way of answering: list, generator, write(), file_wrapper."""
    path = environ["PATH_INFO"]
    if path == "/stream":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return iter(STREAM_PARTS)
    if path == "/write":
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"written ")
        return [b"returned"]
    if path == "/file":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return environ["wsgi.file_wrapper"](open(__file__, "rb"), 8192)
    if path == "/echo":
        stream = environ["wsgi.input"]
        lines = stream.readlines()
        body = b"".join(lines)
        start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(len(body)))])
        return [body]
    body = f"{environ['REQUEST_METHOD']} {environ['SCRIPT_NAME']}|{path}?{environ['QUERY_STRING']}".encode("latin-1")
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


validated = validator(plain)


def hello(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
    return [b"hello"]
