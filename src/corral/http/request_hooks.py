"""Gunicorn's pre_request and post_request hooks, as an ASGI wrapper around the app.

The wrapper is installed only when one of the two hooks is set, so a server without them pays nothing on
the request path. The `req`, `environ` and `resp` objects carry the fields Gunicorn hooks read (method, path,
headers, status ...), built from the ASGI scope and the response messages.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from corral.core.settings import HooksSettings
from corral.hooks import accepted_arity

__all__ = ["HookRequest", "HookResponse", "with_request_hooks", "wsgi_like_environ"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]]


class HookRequest:
    """What Gunicorn's `req` offers hooks, from an ASGI http scope."""

    def __init__(self, scope: Scope) -> None:
        query = scope.get("query_string", b"").decode("latin-1")
        self.method: str = scope["method"]
        self.path: str = scope["path"]
        self.query = query
        self.fragment = ""
        self.uri = scope.get("raw_path", scope["path"].encode()).decode("latin-1") + (f"?{query}" if query else "")
        major, _, minor = scope.get("http_version", "1.1").partition(".")
        self.version = (int(major), int(minor or 0))
        self.scheme: str = scope.get("scheme", "http")
        self.headers = [(name.decode("latin-1").upper(), value.decode("latin-1")) for name, value in scope["headers"]]
        self.peer_addr = scope.get("client")
        self.remote_addr = self.peer_addr

    def __repr__(self) -> str:
        return f"<request {self.method} {self.uri}>"


class HookResponse:
    """What Gunicorn's `resp` offers post_request: status line, status code, headers, body bytes sent."""

    def __init__(self) -> None:
        self.status_code: int | None = None
        self.status: str | None = None
        self.headers: list[tuple[str, str]] = []
        self.sent = 0

    def started(self, message: Message) -> None:
        from http import HTTPStatus

        code = int(message["status"])
        try:
            phrase = HTTPStatus(code).phrase
        except ValueError:
            phrase = ""
        self.status_code = code
        self.status = f"{code} {phrase}".rstrip()
        self.headers = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in message.get("headers", ())]


def wsgi_like_environ(scope: Scope) -> dict[str, Any]:
    """The WSGI environ keys post_request hooks read, from the ASGI scope (plus the scope itself); for a WSGI
    app, the very environ it was called with."""
    wsgi_environ: dict[str, Any] | None = scope.get("wsgi.environ")
    if wsgi_environ is not None:
        return wsgi_environ
    server = scope.get("server") or ("", 0)
    client = scope.get("client") or ("", 0)
    environ: dict[str, Any] = {
        "REQUEST_METHOD": scope["method"],
        "SCRIPT_NAME": scope.get("root_path", ""),
        "PATH_INFO": scope["path"],
        "QUERY_STRING": scope.get("query_string", b"").decode("latin-1"),
        "SERVER_PROTOCOL": f"HTTP/{scope.get('http_version', '1.1')}",
        "SERVER_NAME": str(server[0]),
        "SERVER_PORT": str(server[1] or ""),
        "REMOTE_ADDR": str(client[0]),
        "REMOTE_PORT": str(client[1] or ""),
        "wsgi.url_scheme": scope.get("scheme", "http"),
        "asgi.scope": scope,
    }
    for name, value in scope["headers"]:
        key = name.decode("latin-1").upper().replace("-", "_")
        key = key if key in ("CONTENT_TYPE", "CONTENT_LENGTH") else f"HTTP_{key}"
        text = value.decode("latin-1")
        environ[key] = f"{environ[key]},{text}" if key in environ else text
    return environ


def with_request_hooks(app: ASGIApp, hooks: HooksSettings, worker: Any, log: logging.Logger) -> ASGIApp:
    """`app`, or `app` wrapped to call the pre_request / post_request hooks around each HTTP request."""
    pre_request = hooks.pre_request
    post_request = hooks.post_request
    if pre_request is None and post_request is None:
        return app
    post_arity = accepted_arity(post_request, (2, 3, 4)) if post_request is not None else 0

    def call(name: str, hook: Callable[..., Any], *args: Any) -> None:
        try:
            hook(*args)
        except Exception:
            log.exception("Hook %s raised; carrying on", name)

    async def app_with_request_hooks(scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        request = HookRequest(scope)
        if pre_request is not None:
            call("pre_request", pre_request, worker, request)
        response = HookResponse()

        async def observed_send(message: Message) -> None:
            kind = message["type"]
            if kind == "http.response.start":
                response.started(message)
            elif kind == "http.response.body":
                response.sent += len(message.get("body", b""))
            await send(message)

        try:
            await app(scope, receive, observed_send)
        finally:
            if post_request is not None:
                args: tuple[Any, ...] = (worker, request, wsgi_like_environ(scope), response)[:post_arity]
                call("post_request", post_request, *args)

    return app_with_request_hooks
