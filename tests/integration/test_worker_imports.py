"""A worker imports the websockets library on its first upgrade request, not before: a worker that never serves
a WebSocket (most WSGI workers) does without the memory it takes, and the first WebSocket is still served.
Neither the master nor a worker imports the standard-library modules only error messages or sizing need. The
master imports the event loop the workers will run, and freezes its heap, before the first fork: the workers share
that memory instead of each making (or, collecting, copying) its own."""

from __future__ import annotations

import httpx
from websockets.sync.client import connect

from tests.integration.conftest import ServerFactory

TIMEOUT = 10.0


def test_a_wsgi_worker_serves_requests_without_importing_websockets(serve: ServerFactory) -> None:
    server = serve("tests.apps.lazy_imports:wsgi_app", "-k", "gthread", "--threads", "2")
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as client:
        answers = {client.get("/").text for _ in range(5)}
    assert answers == {"websockets not loaded"}


def test_the_first_websocket_of_a_worker_imports_websockets_and_is_served(serve: ServerFactory) -> None:
    server = serve("tests.apps.lazy_imports:asgi_app", "-w", "1")
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as client:
        assert client.get("/").text == "websockets not loaded"
        with connect(f"ws://127.0.0.1:{server.port}/", open_timeout=TIMEOUT, close_timeout=TIMEOUT) as ws:
            ws.send("first")
            assert ws.recv(timeout=TIMEOUT) == "first"
        assert client.get("/").text == "websockets loaded"


def test_a_worker_does_without_the_modules_only_error_messages_sizing_and_idna_names_need(serve: ServerFactory) -> None:
    server = serve("tests.apps.lazy_imports:unneeded_modules_app")
    assert httpx.get(server.url + "/", timeout=TIMEOUT).text == ""


def test_a_worker_inherits_uvloop_and_a_frozen_heap_from_the_master(serve: ServerFactory) -> None:
    server = serve("tests.apps.lazy_imports:inherited_app")
    inherited = httpx.get(server.url + "/", timeout=TIMEOUT).json()
    assert inherited == {"modules": ["uvloop", "concurrent.futures.thread"], "frozen": True}


def test_a_master_whose_workers_run_asyncio_leaves_uvloop_unimported(serve: ServerFactory) -> None:
    server = serve("tests.apps.lazy_imports:inherited_app", "--loop", "asyncio")
    assert httpx.get(server.url + "/", timeout=TIMEOUT).json()["modules"] == []
