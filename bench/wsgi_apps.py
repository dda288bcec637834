"""The WSGI benchmark's apps: Flask answering JSON, and a plain WSGI callable answering plaintext."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Flask, jsonify

flask_app = Flask(__name__)


@flask_app.get("/json")
def json_hello() -> Any:
    return jsonify(message="Hello, World!")


_BODY = b"Hello, World!"
_HEADERS = [("Content-Type", "text/plain"), ("Content-Length", str(len(_BODY)))]


def plain(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    start_response("200 OK", _HEADERS)
    return [_BODY]
