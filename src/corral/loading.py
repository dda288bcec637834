"""Import the application named by an app spec (`module:attribute`) and adapt it to one calling convention.

Owns the app spec syntax, the import-error messages, and telling ASGI 3, ASGI 2 and WSGI apps apart.
"""

from __future__ import annotations

import ast
import functools
import importlib
import inspect
import logging
import os
import sys
import traceback
import types
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from corral.http.wsgi import WSGIApp

__all__ = ["ASGIApp", "AppLoadError", "WSGIApp", "app_as_asgi3", "load_app"]

ASGIApp = Callable[[dict[str, Any], Callable[..., Any], Callable[..., Any]], Awaitable[None]]
_Scope = dict[str, Any]
_Channel = Callable[..., Any]  # the receive and send callables

# `corral main` (no attribute) looks these up in order: `app` is what FastAPI/Starlette/Quart examples name
# their app, `application` is what Django's asgi.py and Gunicorn's default use.
DEFAULT_ATTRIBUTES = ("app", "application")

# Longest exception text kept in the one-line error: the full text is in the logged traceback.
_MAX_DETAIL = 300

_error_log = logging.getLogger("corral.error")


class AppLoadError(Exception):
    """The app could not be loaded. `str(error)` is one line meant for the operator (the CLI exits with 3)."""


@dataclass(frozen=True)
class _Spec:
    text: str
    module: str
    attributes: tuple[str, ...] | None  # None: the spec named only a module; try DEFAULT_ATTRIBUTES
    call: bool = False  # the spec ended in (...): call the attribute to get the app
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)


def load_app(spec: str, *, factory: bool = False, app_dir: str | None = ".", interface: str = "auto") -> ASGIApp:
    """Import and return the ASGI 3 app named by `spec`; raise AppLoadError (one line) if that fails.

    Spec forms:
      `module:attr`       the app object; attr may be dotted (`pkg.mod:api.app`)
      `module:attr()`     an app factory, called with no arguments; like Gunicorn, literal arguments are
                          accepted too (`module:create_app("prod", debug=False)`)
      `module`            the module's `app`, else its `application` (uvicorn insists on an attribute and
                          Gunicorn assumes `application`; trying `app` first serves FastAPI/Starlette, then
                          `application` serves Django's asgi.py and Gunicorn-style specs)
    `factory=True` (--factory) calls the attribute with no arguments, as if the spec ended in `()`.
    `app_dir` is put first on sys.path (as an absolute path) so the module is found there; None leaves
    sys.path alone.

    The returned callable is ASGI 3, and calling it returns a coroutine (so the server may drive it with
    `coro.send(None)`): ASGI 3 apps come back unchanged (an `async def`, an instance with an async
    `__call__`, a partial of either); ASGI 2 apps (`app(scope)` returning an instance with
    `async __call__(receive, send)`, or a class whose `__init__` takes the scope) and ASGI 3 apps that are
    not coroutine functions (a sync `__call__(scope, receive, send)` returning an awaitable, a class with
    `__await__`) are wrapped in a small closure. A sync callable that accepts any number of arguments
    (`def app(*args)`) is ambiguous and taken as ASGI 2, as other ASGI servers do. WSGI apps (a sync callable
    taking (environ, start_response), Flask-style apps with a `wsgi_app`, Django's WSGIHandler) come back as
    a `WSGIApp`, an ASGI 3 callable that runs them in a thread pool (http/wsgi.py).

    When the app's own code fails (an exception while importing its module or calling its factory) the
    traceback is logged at ERROR on the "corral.error" logger before AppLoadError is raised: the one line
    says what failed, but only the traceback says where in the app's code, and that is the first thing the
    developer needs (Gunicorn and uvicorn show it too). Errors about the spec itself (no such module or
    attribute, not an ASGI app) are fully described by the one line and log nothing.
    """
    parsed = _parse_spec(spec)
    app_dir_path = _prepend_app_dir(app_dir)
    module = _import_module(parsed, app_dir_path)
    obj, label = _resolve_attributes(module, parsed)
    if parsed.call or factory:
        obj, label = _call_factory(obj, label, parsed)
    return app_as_asgi3(obj, interface, label=label, module=parsed.module)


def app_as_asgi3(obj: Any, interface: str = "auto", *, label: str = "the app", module: str = "") -> ASGIApp:
    """An app object as an ASGI 3 callable: detected (auto), or as the interface setting says (asgi3, asgi2)."""
    if interface == "wsgi":
        if not callable(obj):
            raise AppLoadError(f"{label} is not a WSGI app: it is not callable (it is of type {type(obj).__name__})")
        return WSGIApp(obj)
    if interface == "asgi2":
        return _asgi2_to_asgi3(obj)
    if interface == "asgi3" and callable(obj) and not inspect.iscoroutinefunction(_call_target(obj)):
        return _awaiting(obj)
    return _as_asgi3(obj, label, module)


# ---------------------------------------------------------------------------------------------- the spec


def _parse_spec(spec: str) -> _Spec:
    text = spec.strip()
    module, colon, expression = text.partition(":")
    module = module.strip()
    if not module:
        raise AppLoadError(f"invalid app spec {spec!r}: expected 'module:attribute', e.g. 'main:app'")
    _check_module_name(module, spec, expression.strip() or "app")
    if not colon:
        return _Spec(text, module, None)
    expression = expression.strip()
    if not expression:
        raise AppLoadError(f"invalid app spec {spec!r}: nothing after ':'; expected 'module:attribute'")
    try:
        node = ast.parse(expression, mode="eval").body
    except SyntaxError:
        raise AppLoadError(
            f"invalid app spec {spec!r}: {expression!r} is not an attribute name or a factory call"
        ) from None
    if isinstance(node, ast.Call):
        args, kwargs = _literal_arguments(node, spec)
        return _Spec(text, module, _attribute_path(node.func, spec), True, args, kwargs)
    return _Spec(text, module, _attribute_path(node, spec))


def _check_module_name(module: str, spec: str, attribute: str) -> None:
    # A common first try is a file name (`main.py:app`). Caught before importing: `main.py` is a valid
    # dotted name and importing it would run `main` only to fail on a submodule `py` that nobody meant.
    if module.endswith(".py") or "/" in module or os.sep in module:
        guess = module.removesuffix(".py").replace(os.sep, ".").replace("/", ".").strip(".")
        raise AppLoadError(
            f"invalid app spec {spec!r}: {module!r} is a file name; use the module name, "
            f"e.g. '{guess}:{attribute}' (and the app directory setting if it lives elsewhere)"
        )
    if all(part.isidentifier() for part in module.split(".")):
        return
    raise AppLoadError(f"invalid app spec {spec!r}: {module!r} is not a valid module name")


def _attribute_path(node: ast.expr, spec: str) -> tuple[str, ...]:
    names: list[str] = []
    while isinstance(node, ast.Attribute):
        names.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        raise AppLoadError(f"invalid app spec {spec!r}: expected a (dotted) attribute name after ':'")
    names.append(node.id)
    return tuple(reversed(names))


def _literal_arguments(call: ast.Call, spec: str) -> tuple[tuple[Any, ...], dict[str, Any]]:
    try:
        args = tuple(ast.literal_eval(arg) for arg in call.args)
        kwargs = {}
        for keyword in call.keywords:
            if keyword.arg is None:
                raise ValueError("** arguments")
            kwargs[keyword.arg] = ast.literal_eval(keyword.value)
    except ValueError:
        raise AppLoadError(
            f"invalid app spec {spec!r}: factory arguments must be Python literals (strings, numbers, ...)"
        ) from None
    return args, kwargs


# -------------------------------------------------------------------------------------- import and lookup


def _prepend_app_dir(app_dir: str | None) -> str | None:
    if app_dir is None:
        return None
    # Absolute, so that a later chdir (or a relative app_dir) cannot change where modules are found.
    path = os.path.abspath(app_dir)
    if not os.path.isdir(path):
        raise AppLoadError(f"app directory {app_dir!r} does not exist or is not a directory")
    if not sys.path or sys.path[0] != path:
        sys.path.insert(0, path)
    return path


def _import_module(spec: _Spec, app_dir: str | None) -> types.ModuleType:
    name = spec.module
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if _names_the_spec_module(name, exc.name):
            raise AppLoadError(_module_not_found(name, exc.name, app_dir)) from exc
        # The module exists but something it imports does not: that is an error in the app.
        raise _app_code_error(f"importing module {name!r}", exc) from exc
    except (Exception, SystemExit) as exc:
        raise _app_code_error(f"importing module {name!r}", exc) from exc


def _names_the_spec_module(module: str, missing: str | None) -> bool:
    """True when the missing module is `module` itself or one of its parent packages."""
    if missing is None:
        return False
    return module == missing or module.startswith(missing + ".")


def _module_not_found(module: str, missing: str | None, app_dir: str | None) -> str:
    where = f"in the app directory {app_dir} or on sys.path" if app_dir else "on sys.path"
    detail = f" (no module named {missing!r})" if missing != module else ""
    return f"module {module!r} not found {where}{detail}"


def _resolve_attributes(module: types.ModuleType, spec: _Spec) -> tuple[Any, str]:
    if spec.attributes is None:
        return _default_attribute(module, spec)
    obj: Any = module
    for depth, name in enumerate(spec.attributes):
        try:
            obj = getattr(obj, name)
        except AttributeError:
            raise AppLoadError(_missing_attribute(module, spec, depth, obj)) from None
        except Exception as exc:  # a module __getattr__ or property in the app's code raised
            raise _app_code_error(f"looking up {spec.text!r}", exc) from exc
    return obj, repr(spec.text)


def _default_attribute(module: types.ModuleType, spec: _Spec) -> tuple[Any, str]:
    for name in DEFAULT_ATTRIBUTES:
        if hasattr(module, name):
            return getattr(module, name), repr(f"{spec.module}:{name}")
    raise AppLoadError(
        f"module {spec.module!r} has no attribute 'app' or 'application'; "
        f"name the app in the spec, e.g. '{spec.module}:<attribute>'"
    )


def _missing_attribute(module: types.ModuleType, spec: _Spec, depth: int, owner: Any) -> str:
    assert spec.attributes is not None
    name = spec.attributes[depth]
    owner_text = f"module {spec.module!r}"
    if depth:
        owner_text = f"{'.'.join(spec.attributes[:depth])!r} in module {spec.module!r}"
    message = f"{owner_text} has no attribute {name!r} (app spec {spec.text!r})"
    candidates = [candidate for candidate in dir(owner) if not candidate.startswith("_")]
    import difflib  # here, not at the top: workers never suggest, and it costs memory
    close = difflib.get_close_matches(name, candidates, n=3)
    if close:
        message += "; did you mean " + " or ".join(repr(candidate) for candidate in close) + "?"
    return message


# ------------------------------------------------------------------------------------------------ factories


def _call_factory(factory: Any, label: str, spec: _Spec) -> tuple[Any, str]:
    if not callable(factory):
        raise AppLoadError(f"app factory {label} is not callable (it is of type {type(factory).__name__})")
    signature = _signature(factory)
    if signature is not None and not _binds(signature, len(spec.args), spec.kwargs):
        raise AppLoadError(_uncallable_factory(factory, label, spec, signature))
    try:
        app = factory(*spec.args, **spec.kwargs)
    except (Exception, SystemExit) as exc:
        raise _app_code_error(f"calling app factory {label}", exc) from exc
    if inspect.isawaitable(app):
        if inspect.iscoroutine(app):
            app.close()  # never awaited on purpose: avoid the "never awaited" warning
        raise AppLoadError(
            f"app factory {label} is async (it returned an awaitable); corral calls factories "
            "synchronously: make it a plain `def` that returns the app"
        )
    if app is None:
        raise AppLoadError(f"app factory {label} returned None; it must return the ASGI app")
    return app, f"the app returned by {label}"


def _uncallable_factory(factory: Any, label: str, spec: _Spec, signature: inspect.Signature) -> str:
    if _is_async_callable(factory) and _binds(signature, 3):
        return f"{label} is an ASGI app, not an app factory: drop --factory and the '()'"
    arguments = "no arguments" if not (spec.args or spec.kwargs) else "the given arguments"
    try:
        signature.bind(*spec.args, **spec.kwargs)
    except TypeError as exc:
        reason = str(exc)
    else:  # pragma: no cover - only called when binding failed
        reason = "unexpected signature"
    return f"app factory {label} cannot be called with {arguments}: {reason}"


# ------------------------------------------------------------------------------------ kinds of callables


def _as_asgi3(obj: Any, label: str, module: str) -> ASGIApp:
    """Return `obj` as an ASGI 3 callable, or raise AppLoadError saying what it is instead."""
    if isinstance(obj, types.ModuleType):
        raise AppLoadError(f"{label} is a module, not an app; name the app inside it, e.g. '{obj.__name__}:app'")
    if not callable(obj):
        raise AppLoadError(
            f"{label} is not an ASGI or WSGI app: it is not callable (it is of type {type(obj).__name__})"
        )
    if inspect.isclass(obj):
        return _class_as_asgi3(obj, label)
    if inspect.isasyncgenfunction(_call_target(obj)):
        raise AppLoadError(f"{label} is an async generator function, not an ASGI app")
    signature = _signature(obj)
    if _is_async_callable(obj):
        if signature is None or _binds(signature, 3):
            if inspect.iscoroutinefunction(_call_target(obj)):
                app: ASGIApp = obj
                return app  # the common case, served with no wrapper at all
            return _awaiting(obj)  # marked async (asgiref, Cython) but not a plain coroutine function
        raise AppLoadError(
            f"{label} is an async callable taking ({_parameters(signature)}); "
            "ASGI 3 apps are called as app(scope, receive, send)"
        )
    if _is_wsgi_framework(obj):
        return WSGIApp(obj)
    return _sync_callable_as_asgi3(obj, label, signature)


def _sync_callable_as_asgi3(obj: Any, label: str, signature: inspect.Signature | None) -> ASGIApp:
    if signature is None:
        return _asgi2_to_asgi3(obj)  # nothing to go on: assume ASGI 2, the only sync ASGI form (as uvicorn)
    if _looks_like_wsgi(signature) or (_binds(signature, 2) and not _binds(signature, 1)):
        return WSGIApp(obj)
    if _binds(signature, 1):
        # ASGI 2; a sync callable that also accepts more arguments (`*args`) is ambiguous, and ASGI 2 is
        # what other servers assume, so apps move between servers unchanged.
        return _asgi2_to_asgi3(obj)
    if _binds(signature, 3):
        # A sync callable taking (scope, receive, send) that returns an awaitable: ASGI 3 middleware
        # written as `def __call__(...): return self.app(...)`, or a sync decorator around an async app.
        return _awaiting(obj)
    if _binds(signature, 0):
        raise AppLoadError(
            f"{label} takes no arguments: if it is an app factory, add '()' to the spec or use --factory"
        )
    raise AppLoadError(
        f"{label} takes ({_parameters(signature)}), which is not an ASGI or WSGI app: "
        "ASGI 3 apps are `async def app(scope, receive, send)`, WSGI apps `def app(environ, start_response)`"
    )


def _class_as_asgi3(cls: type, label: str) -> ASGIApp:
    if hasattr(cls, "__await__"):
        # `await Cls(scope, receive, send)` runs the request: an ASGI 3 app in class form.
        return _awaiting(cls)
    instance_call = _instance_call(cls)
    class_signature = _signature(cls)
    call_signature = _signature(instance_call) if instance_call is not None else None
    if (
        instance_call is not None
        and _is_async_callable(instance_call)
        and (class_signature is None or _binds(class_signature, 1))
        and (call_signature is None or _binds(call_signature, 3))  # (self, receive, send)
    ):
        return _asgi2_to_asgi3(cls)
    raise AppLoadError(
        f"{label} is a class, not an app: create the app in the module (app = {cls.__name__}(...)), "
        "or, if calling the class with no arguments builds the app, add '()' to the spec or use --factory"
    )


def _instance_call(cls: type) -> Any:
    """The `__call__` that instances of `cls` would run (not `type.__call__`, which builds the instance)."""
    for klass in cls.__mro__:
        if klass is not object and "__call__" in vars(klass):
            return vars(klass)["__call__"]
    return None


def _is_wsgi_framework(obj: Any) -> bool:
    """Django's WSGIHandler, a Flask-style app (a `wsgi_app` method), or an app wrapped by wsgiref.validate
    (whose `*args` signature would otherwise read as ASGI 2): WSGI whatever their signature says."""
    if getattr(obj, "__module__", None) == "wsgiref.validate":
        return True
    for klass in type(obj).__mro__:
        if klass.__name__ == "WSGIHandler" and klass.__module__.split(".")[0] == "django":
            return True
    return callable(getattr(obj, "wsgi_app", None))


def _looks_like_wsgi(signature: inspect.Signature) -> bool:
    names = [
        parameter.name
        for parameter in signature.parameters.values()
        if parameter.kind in (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD)
    ]
    return names[:1] == ["environ"] or names[1:2] == ["start_response"]


# --------------------------------------------------------------------------------------------- adapters


def _asgi2_to_asgi3(asgi2_app: Callable[[dict[str, Any]], Any]) -> ASGIApp:
    # On the request path: one closure call, no per-request allocation beyond the ASGI 2 instance itself.
    async def asgi2_app_as_asgi3(scope: _Scope, receive: _Channel, send: _Channel) -> None:
        await asgi2_app(scope)(receive, send)

    asgi2_app_as_asgi3.asgi2_app = asgi2_app  # type: ignore[attr-defined]  # for debugging
    return asgi2_app_as_asgi3


def _awaiting(asgi3_app: Callable[..., Any]) -> ASGIApp:
    # The server drives the app's coroutine directly, so every app must hand back a real coroutine.
    async def awaiting_asgi3(scope: _Scope, receive: _Channel, send: _Channel) -> None:
        await asgi3_app(scope, receive, send)

    awaiting_asgi3.asgi3_app = asgi3_app  # type: ignore[attr-defined]  # for debugging
    return awaiting_asgi3


# ---------------------------------------------------------------------------------------------- helpers


def _call_target(obj: Any) -> Any:
    """The function that actually runs when `obj` is called (partials unwrapped, instances' __call__)."""
    while isinstance(obj, functools.partial):
        obj = obj.func
    if inspect.isroutine(obj) or inspect.isclass(obj):
        return obj
    return getattr(obj, "__call__", obj)  # noqa: B004 - we want the method, not a callable() check


def _is_async_callable(obj: Any) -> bool:
    target = _call_target(obj)
    if inspect.iscoroutinefunction(target):
        return True
    # asgiref's markcoroutinefunction (before Python 3.12) and Cython mark async callables this way.
    function = getattr(target, "__func__", target)
    return getattr(function, "_is_coroutine", None) is not None


def _signature(obj: Any) -> inspect.Signature | None:
    try:
        return inspect.signature(obj)
    except (TypeError, ValueError):  # builtins and some C extensions have none
        return None


def _binds(signature: inspect.Signature, count: int, kwargs: dict[str, Any] | None = None) -> bool:
    try:
        signature.bind(*([None] * count), **(kwargs or {}))
    except TypeError:
        return False
    return True


def _parameters(signature: inspect.Signature | None) -> str:
    return ", ".join(str(parameter) for parameter in signature.parameters.values()) if signature else "?"


def _app_code_error(action: str, exc: BaseException) -> AppLoadError:
    # Start the traceback at the app's first frame: the loader's and importlib's frames are noise here.
    _error_log.error("%s failed", action, exc_info=(type(exc), exc, _app_frames(exc.__traceback__)))
    return AppLoadError(f"{action} failed: {_describe(exc)}")


def _app_frames(tb: types.TracebackType | None) -> types.TracebackType | None:
    while tb is not None and _is_loader_file(tb.tb_frame.f_code.co_filename):
        tb = tb.tb_next
    return tb


def _is_loader_file(filename: str) -> bool:
    return filename in (__file__, importlib.__file__) or filename.startswith("<frozen")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, SystemExit):
        return f"it called sys.exit({exc.code!r})"
    if isinstance(exc, SyntaxError) and exc.filename:
        return f"{type(exc).__name__}: {exc.msg} ({exc.filename}, line {exc.lineno})"
    text = " ".join(str(exc).split())
    if len(text) > _MAX_DETAIL:
        text = text[: _MAX_DETAIL - 3] + "..."
    description = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    location = _raise_location(exc)
    return f"{description} ({location})" if location else description


def _raise_location(exc: BaseException) -> str:
    """Where the exception was raised (the innermost frame), unless that is in the loader itself."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames or _is_loader_file(frames[-1].filename):
        return ""
    return f"{frames[-1].filename}, line {frames[-1].lineno}"
