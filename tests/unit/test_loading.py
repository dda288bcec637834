"""load_app: app specs, ASGI 3 / ASGI 2 / WSGI detection, factories, app_dir and one-line error messages."""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from corral.loading import AppLoadError, WSGIApp, load_app

APPS_DIR = str(Path(__file__).resolve().parent.parent / "apps")


# Modules these tests create and import; only they are forgotten after each test (forgetting real libraries
# such as pydantic would leave two copies of their classes in the process).
TEST_MODULE_ROOTS = ("loading_", "mysite", "django")


@pytest.fixture(autouse=True)
def restore_import_state():
    """load_app changes sys.path and sys.modules; every test starts from and leaves the same state."""
    path = list(sys.path)
    modules = set(sys.modules)
    yield
    sys.path[:] = path
    for name in set(sys.modules) - modules:
        if name.startswith(TEST_MODULE_ROOTS):
            del sys.modules[name]


def load(spec: str, **options: Any):
    options.setdefault("app_dir", APPS_DIR)
    return load_app(spec, **options)


def load_error(spec: str, **options: Any) -> str:
    """The AppLoadError message for `spec`, checked to be the single line the CLI prints."""
    with pytest.raises(AppLoadError) as caught:
        load(spec, **options)
    message = str(caught.value)
    assert message and "\n" not in message
    return message


async def call(app, scope: dict | None = None) -> list[dict]:
    """Run `app` once with an empty request body; return what it sent."""
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    await app(scope if scope is not None else {"type": "http"}, receive, send)
    return sent


def run(coroutine):
    async def bounded():
        return await asyncio.wait_for(coroutine, timeout=10)

    return asyncio.run(bounded())


def write_module(directory: Path, name: str, source: str) -> None:
    (directory / f"{name}.py").write_text(source)


# ------------------------------------------------------------------------------------------------ ASGI 3


@pytest.mark.parametrize("attribute", ["app", "asgi3_instance", "asgi3_partial", "partial_of_instance", "star_args"])
def test_asgi3_apps_are_returned_unchanged(attribute):
    app = load(f"loading_apps:{attribute}")
    assert app is getattr(sys.modules["loading_apps"], attribute)


@pytest.mark.parametrize(
    ("attribute", "sent_type"),
    [
        ("app", "asgi3-function"),
        ("star_args", "asgi3-star-args"),
        ("asgi3_instance", "asgi3-instance"),
        ("asgi3_partial", "asgi3-partial"),
        ("partial_of_instance", "asgi3-instance"),
        ("AwaitableAsgi3", "asgi3-awaitable-class"),
        ("sync_middleware", "asgi3-function"),
        ("asgi2_function", "asgi2-function"),
        ("Asgi2Class", "asgi2-class"),
        ("sync_star_args", "asgi2-function"),
    ],
)
def test_every_loaded_app_returns_a_coroutine_that_serves_the_request(attribute, sent_type):
    app = load(f"loading_apps:{attribute}")

    async def scenario():
        sent: list[dict] = []

        async def receive():
            return {"type": "http.request"}

        async def send(message):
            sent.append(message)

        result = app({"type": "http"}, receive, send)
        # The server drives the app's coroutine directly (coro.send), so it must be a real coroutine.
        assert inspect.iscoroutine(result)
        await result
        return sent

    sent = run(scenario())
    assert [message["type"] for message in sent] == [sent_type]


def test_asgi2_function_gets_the_scope_then_receive_and_send():
    app = load("loading_apps:asgi2_function")
    scope = {"type": "http", "path": "/"}

    sent = run(call(app, scope))

    assert sent[0]["scope"] is scope
    assert sent[0]["received"] == {"type": "http.request", "body": b"", "more_body": False}


def test_asgi2_class_is_instantiated_with_the_scope_for_each_request():
    app = load("loading_apps:Asgi2Class")
    scopes = [{"type": "http", "n": 1}, {"type": "http", "n": 2}]

    sent = [run(call(app, scope))[0] for scope in scopes]

    assert [message["scope"] for message in sent] == scopes


def test_callable_marked_as_coroutine_function_is_asgi3(tmp_path):
    # asgiref's markcoroutinefunction (before Python 3.12) sets `_is_coroutine` on a plain function.
    write_module(
        tmp_path,
        "loading_marked",
        "import asyncio\n"
        "async def _inner(scope, receive, send):\n"
        "    await send({'type': 'marked'})\n"
        "def app(scope, receive, send):\n"
        "    return _inner(scope, receive, send)\n"
        "app._is_coroutine = object()\n",
    )
    app = load("loading_marked:app", app_dir=str(tmp_path))

    assert [message["type"] for message in run(call(app))] == ["marked"]


def test_real_starlette_and_fastapi_apps_load_unchanged(tmp_path):
    write_module(
        tmp_path,
        "loading_frameworks",
        "from fastapi import FastAPI\nfrom starlette.applications import Starlette\n"
        "starlette_app = Starlette()\nfastapi_app = FastAPI()\n",
    )
    module_options = {"app_dir": str(tmp_path)}

    starlette_app = load("loading_frameworks:starlette_app", **module_options)
    fastapi_app = load("loading_frameworks:fastapi_app", **module_options)

    assert starlette_app is sys.modules["loading_frameworks"].starlette_app
    assert fastapi_app is sys.modules["loading_frameworks"].fastapi_app


def test_starlette_class_instead_of_instance_is_refused_with_a_hint():
    message = load_error("starlette.applications:Starlette")

    assert "'starlette.applications:Starlette' is a class, not an app" in message
    assert "app = Starlette(...)" in message


def test_async_function_with_wrong_arguments_is_refused():
    message = load_error("loading_apps:async_wrong_arity")

    assert "'loading_apps:async_wrong_arity'" in message
    assert "(scope)" in message and "app(scope, receive, send)" in message


def test_async_generator_is_refused():
    assert "async generator" in load_error("loading_apps:async_generator")


def test_sync_callable_with_four_required_arguments_is_refused():
    message = load_error("loading_apps:three_positional")

    assert "'loading_apps:three_positional' takes (scope, receive, send, extra)" in message


# -------------------------------------------------------------------------------------------------- WSGI


@pytest.mark.parametrize("attribute", ["wsgi_app", "wsgi_with_other_names", "flask_app"])
def test_wsgi_callables_are_detected_and_served_as_wsgi(attribute):
    app = load(f"loading_apps:{attribute}")

    assert isinstance(app, WSGIApp)
    assert app.wsgi_app is getattr(sys.modules["loading_apps"], attribute)


def test_django_wsgi_handler_is_detected_as_wsgi(tmp_path):
    # A stand-in for Django's class: what matters is the class name and its package.
    handlers = tmp_path / "django" / "core" / "handlers"
    handlers.mkdir(parents=True)
    for package in (tmp_path / "django", tmp_path / "django" / "core", handlers):
        (package / "__init__.py").write_text("")
    write_module(handlers, "wsgi", "class WSGIHandler:\n    def __call__(self, *args): ...\n")
    (tmp_path / "mysite").mkdir()
    (tmp_path / "mysite" / "__init__.py").write_text("")
    write_module(
        tmp_path / "mysite",
        "wsgi",
        "from django.core.handlers.wsgi import WSGIHandler\napplication = WSGIHandler()\n",
    )

    assert isinstance(load("mysite.wsgi:application", app_dir=str(tmp_path)), WSGIApp)


def test_interface_wsgi_serves_an_ambiguous_callable_as_wsgi():
    assert isinstance(load("loading_apps:sync_star_args", interface="wsgi"), WSGIApp)


def test_interface_wsgi_refuses_what_is_not_callable():
    assert "is not a WSGI app: it is not callable" in load_error("loading_apps:settings", interface="wsgi")


# ----------------------------------------------------------------------------------------------- specs


def test_module_alone_prefers_app_over_application():
    assert load("loading_apps") is sys.modules["loading_apps"].app


def test_module_alone_falls_back_to_application():
    assert load("loading_only_application") is sys.modules["loading_only_application"].application


def test_module_alone_without_app_or_application_names_both():
    message = load_error("loading_no_app")

    assert "module 'loading_no_app' has no attribute 'app' or 'application'" in message
    assert "'loading_no_app:<attribute>'" in message


def test_dotted_module_and_dotted_attribute():
    assert load("loading_pkg.api:holder.app") is sys.modules["loading_pkg.api"].app


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("", "expected 'module:attribute'"),
        (":app", "expected 'module:attribute'"),
        ("loading_apps:", "nothing after ':'"),
        ("loading_apps:app[0]", "expected a (dotted) attribute name"),
        ("loading_apps:1+", "is not an attribute name or a factory call"),
        ("loading_apps:create_app_with(name)", "factory arguments must be Python literals"),
        ("loading-apps:app", "'loading-apps' is not a valid module name"),
        ("apps/loading_apps.py:app", "'apps/loading_apps.py' is a file name; use the module name"),
    ],
)
def test_invalid_spec_is_explained(spec, expected):
    message = load_error(spec)

    assert expected in message
    assert repr(spec) in message


def test_python_file_name_as_module_gets_a_hint_without_running_the_module():
    message = load_error("loading_broken_import.py:app")

    assert "'loading_broken_import.py' is a file name; use the module name" in message
    assert "'loading_broken_import:app'" in message


# --------------------------------------------------------------------------------------------- factories


def test_factory_call_in_spec_calls_it_once_without_arguments():
    app = load("loading_apps:create_app()")
    module = sys.modules["loading_apps"]

    assert app is module.app
    assert module.calls == ["create_app"]


def test_factory_option_calls_the_attribute():
    app = load("loading_apps:create_app", factory=True)

    assert app is sys.modules["loading_apps"].app


def test_factory_option_with_call_in_spec_calls_only_once():
    load("loading_apps:create_app()", factory=True)

    assert sys.modules["loading_apps"].calls == ["create_app"]


def test_factory_accepts_literal_arguments_like_gunicorn():
    load("loading_apps:create_app_with('prod', debug=False)")

    assert sys.modules["loading_apps"].calls == ["create_app_with('prod', debug=False)"]


def test_factory_result_is_detected_too():
    app = load("loading_apps:create_asgi2_app()")

    assert run(call(app))[0]["type"] == "asgi2-function"


def test_factory_without_call_gets_a_hint():
    message = load_error("loading_apps:create_app")

    assert "'loading_apps:create_app' takes no arguments" in message
    assert "'()'" in message and "--factory" in message


def test_factory_that_raises_names_the_factory_and_the_error(caplog):
    caplog.set_level(logging.ERROR, logger="corral.error")

    message = load_error("loading_apps:failing_factory()")

    assert message.startswith("calling app factory 'loading_apps:failing_factory()' failed: ")
    assert "RuntimeError: database unreachable" in message
    assert "loading_apps.py, line" in message
    # The traceback (where in the app's code) goes to the error log, starting at the app's own frame.
    record = caplog.records[-1]
    assert record.name == "corral.error" and record.exc_info is not None
    assert "failing_factory" in caplog.text and "corral/loading.py" not in caplog.text


def test_async_factory_is_refused_without_leaving_a_coroutine_unawaited(recwarn):
    message = load_error("loading_apps:async_factory()")

    assert "app factory 'loading_apps:async_factory()' is async" in message
    assert not [warning for warning in recwarn if "never awaited" in str(warning.message)]


def test_factory_returning_none_is_refused():
    assert "returned None" in load_error("loading_apps:factory_returning_none()")


def test_factory_needing_arguments_says_which():
    message = load_error("loading_apps:factory_needing_config()")

    assert "cannot be called with no arguments" in message
    assert "'config'" in message


def test_factory_option_on_an_app_says_to_drop_it():
    message = load_error("loading_apps:app", factory=True)

    assert "is an ASGI app, not an app factory" in message


def test_factory_option_on_a_non_callable_is_refused():
    assert "is not callable" in load_error("loading_apps:settings", factory=True)


def test_factory_returning_a_wsgi_app_serves_it_as_wsgi():
    assert isinstance(load("loading_apps:create_wsgi_app()"), WSGIApp)


# ---------------------------------------------------------------------------------- missing things


def test_missing_module_is_not_found_without_traceback(caplog):
    caplog.set_level(logging.DEBUG, logger="corral.error")

    message = load_error("loading_does_not_exist:app")

    assert message.startswith("module 'loading_does_not_exist' not found")
    assert APPS_DIR in message
    assert not caplog.records


def test_missing_parent_package_is_named():
    message = load_error("loading_no_such_package.api:app")

    assert "module 'loading_no_such_package.api' not found" in message
    assert "(no module named 'loading_no_such_package')" in message


def test_missing_submodule_of_existing_package_is_not_found():
    assert "module 'loading_pkg.nope' not found" in load_error("loading_pkg.nope:app")


def test_missing_dependency_of_the_app_is_an_import_error_of_the_app(caplog):
    caplog.set_level(logging.ERROR, logger="corral.error")

    message = load_error("loading_missing_dependency:app")

    assert message.startswith("importing module 'loading_missing_dependency' failed: ModuleNotFoundError: ")
    assert "corral_test_dependency_that_does_not_exist" in message
    assert "loading_missing_dependency.py, line 3" in message
    assert caplog.records and caplog.records[-1].exc_info is not None


def test_exception_while_importing_the_app_gives_type_message_and_place(caplog):
    caplog.set_level(logging.ERROR, logger="corral.error")

    message = load_error("loading_broken_import:app")

    assert message == (
        "importing module 'loading_broken_import' failed: RuntimeError: settings are missing "
        f"({os.path.join(APPS_DIR, 'loading_broken_import.py')}, line 3)"
    )
    assert 'raise RuntimeError("settings are' in caplog.text
    assert "importlib" not in caplog.text


def test_syntax_error_in_the_app_names_file_and_line(tmp_path):
    write_module(tmp_path, "loading_syntax_error", "x = 1\ndef broken(:\n    pass\n")

    message = load_error("loading_syntax_error:app", app_dir=str(tmp_path))

    assert message.startswith("importing module 'loading_syntax_error' failed: SyntaxError: ")
    assert f"({tmp_path / 'loading_syntax_error.py'}, line 2)" in message


def test_sys_exit_while_importing_the_app_is_a_load_error():
    message = load_error("loading_exits:app")

    assert message == "importing module 'loading_exits' failed: it called sys.exit(2)"


def test_missing_attribute_names_module_and_attribute_and_suggests():
    message = load_error("loading_apps:ap")

    assert message.startswith("module 'loading_apps' has no attribute 'ap' (app spec 'loading_apps:ap')")
    assert "did you mean 'app'" in message


def test_missing_nested_attribute_names_its_owner():
    message = load_error("loading_apps:holder.api")

    assert "'holder' in module 'loading_apps' has no attribute 'api'" in message


def test_non_callable_attribute_is_refused():
    message = load_error("loading_apps:settings")

    assert message == "'loading_apps:settings' is not an ASGI or WSGI app: it is not callable (it is of type dict)"


def test_submodule_named_as_attribute_gets_the_right_spec():
    load("loading_pkg.api:app")  # importing the submodule makes `api` an attribute of the package

    message = load_error("loading_pkg:api")

    assert "'loading_pkg:api' is a module, not an app" in message
    assert "'loading_pkg.api:app'" in message


# ------------------------------------------------------------------------------------------------ app_dir


def test_app_dir_is_put_first_on_sys_path_as_an_absolute_path(tmp_path, monkeypatch):
    write_module(tmp_path, "loading_in_app_dir", "async def app(scope, receive, send): ...\n")
    monkeypatch.chdir(tmp_path.parent)

    app = load_app("loading_in_app_dir:app", app_dir=tmp_path.name)

    assert sys.path[0] == str(tmp_path)
    assert app is sys.modules["loading_in_app_dir"].app


def test_app_dir_is_not_added_twice(tmp_path):
    write_module(tmp_path, "loading_twice", "async def app(scope, receive, send): ...\n")

    load_app("loading_twice:app", app_dir=str(tmp_path))
    load_app("loading_twice:app", app_dir=str(tmp_path))

    assert sys.path.count(str(tmp_path)) == 1


def test_default_app_dir_is_the_working_directory(tmp_path, monkeypatch):
    write_module(tmp_path, "loading_in_cwd", "async def app(scope, receive, send): ...\n")
    monkeypatch.chdir(tmp_path)

    assert load_app("loading_in_cwd:app") is sys.modules["loading_in_cwd"].app


def test_no_app_dir_leaves_sys_path_alone(tmp_path, monkeypatch):
    write_module(tmp_path, "loading_not_on_path", "async def app(scope, receive, send): ...\n")
    monkeypatch.chdir(tmp_path)
    before = list(sys.path)

    message = load_error("loading_not_on_path:app", app_dir=None)

    assert sys.path == before
    assert message == "module 'loading_not_on_path' not found on sys.path"


def test_missing_app_dir_is_reported(tmp_path):
    missing = str(tmp_path / "nope")

    assert load_error("main:app", app_dir=missing) == (
        f"app directory {missing!r} does not exist or is not a directory"
    )
