"""Callables of every shape the app loader must recognise (ASGI 3, ASGI 2, WSGI, factories, mistakes)."""

import functools

calls: list[str] = []  # factories append their name, so tests can count calls


async def app(scope, receive, send):
    await send({"type": "asgi3-function", "scope": scope})


async def application(scope, receive, send):
    """Also present, so a spec naming only the module proves `app` is preferred."""


async def star_args(*args):
    await args[2]({"type": "asgi3-star-args"})


class Asgi3Instance:
    async def __call__(self, scope, receive, send):
        await send({"type": "asgi3-instance"})


asgi3_instance = Asgi3Instance()


async def _with_greeting(greeting, scope, receive, send):
    await send({"type": greeting})


asgi3_partial = functools.partial(_with_greeting, "asgi3-partial")
partial_of_instance = functools.partial(asgi3_instance)


class AwaitableAsgi3:
    """ASGI 3 in class form: `await AwaitableAsgi3(scope, receive, send)` serves the request."""

    def __init__(self, scope, receive, send):
        self.send = send

    def __await__(self):
        return self.send({"type": "asgi3-awaitable-class"}).__await__()


class SyncMiddleware:
    """ASGI 3 middleware written with a plain `def __call__` that returns the wrapped app's coroutine."""

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, scope, receive, send):
        return self.inner(scope, receive, send)


sync_middleware = SyncMiddleware(app)


def asgi2_function(scope):
    async def asgi2_instance(receive, send):
        await send({"type": "asgi2-function", "scope": scope, "received": await receive()})

    return asgi2_instance


class Asgi2Class:
    def __init__(self, scope):
        self.scope = scope

    async def __call__(self, receive, send):
        await send({"type": "asgi2-class", "scope": self.scope})


def sync_star_args(*args):
    return asgi2_function(*args)


def wsgi_app(environ, start_response):
    start_response("200 OK", [])
    return [b""]


def wsgi_with_other_names(request_environment, respond):
    return []


class Flask:
    """Stands in for flask.Flask: a WSGI app object with a `wsgi_app` method."""

    def wsgi_app(self, environ, start_response):
        return []

    def __call__(self, environ, start_response):
        return self.wsgi_app(environ, start_response)


flask_app = Flask()


async def async_wrong_arity(scope):
    pass


async def async_generator(scope, receive, send):
    yield


def create_app():
    calls.append("create_app")
    return app


def create_app_with(name, *, debug=True):
    calls.append(f"create_app_with({name!r}, debug={debug!r})")
    return app


def create_asgi2_app():
    return asgi2_function


def create_wsgi_app():
    return wsgi_app


def failing_factory():
    raise RuntimeError("database\nunreachable")


async def async_factory():
    return app


def factory_returning_none():
    return None


def factory_needing_config(config):
    return app


def three_positional(scope, receive, send, extra):
    pass


class Holder:
    def __init__(self, app):
        self.app = app


holder = Holder(app)
settings = {"debug": True}
