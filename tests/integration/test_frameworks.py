"""FastAPI and Starlette apps served by corral: routing, bodies, streaming, thread pools, background tasks,
middleware and lifespan state all work, which exercises anyio running inside the app."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.apps.frameworks import MIDDLEWARE_HEADER, STREAM_PARTS
from tests.integration.conftest import Server, ServerFactory, wait_until

APPS = {"fastapi": "tests.apps.frameworks:fastapi_app", "starlette": "tests.apps.frameworks:starlette_app"}


@pytest.fixture(scope="module", params=sorted(APPS))
def framework(request: pytest.FixtureRequest, serve_module: ServerFactory) -> tuple[str, Server]:
    return request.param, serve_module(APPS[request.param])


@pytest.fixture
def client(framework: tuple[str, Server]) -> Iterator[httpx.Client]:
    _, server = framework
    with httpx.Client(base_url=server.url, timeout=10) as http:
        yield http


def test_json_route_sees_lifespan_state(framework: tuple[str, Server], client: httpx.Client) -> None:
    response = client.get("/json")
    assert response.status_code == 200
    assert response.json() == {"framework": framework[0], "greeting": "hello from lifespan"}


def test_middleware_runs_around_every_route(client: httpx.Client) -> None:
    assert client.get("/json").headers[MIDDLEWARE_HEADER] == "yes"
    assert client.get("/items/1").headers[MIDDLEWARE_HEADER] == "yes"


def test_path_and_query_parameters(client: httpx.Client) -> None:
    response = client.get("/items/42", params={"q": "blue shoes"})
    assert response.json() == {"item_id": 42, "q": "blue shoes"}


def test_json_request_body(client: httpx.Client) -> None:
    response = client.post("/items", json={"name": "widget", "quantity": 21})
    assert response.status_code == 200
    assert response.json() == {"name": "widget", "quantity": 21, "total": 42}


def test_sync_endpoint_runs_in_a_worker_thread(client: httpx.Client) -> None:
    response = client.get("/sync")
    assert response.json() == {"in_worker_thread": True}


def test_streaming_response_arrives_in_full(client: httpx.Client) -> None:
    with client.stream("GET", "/stream") as response:
        assert response.headers.get("transfer-encoding") == "chunked"
        assert b"".join(response.iter_bytes()) == b"".join(STREAM_PARTS)


def test_background_task_runs_after_the_response(client: httpx.Client, tmp_path: Path) -> None:
    marker = tmp_path / "background-done"
    response = client.post("/background", params={"marker": str(marker)})
    assert response.json() == {"scheduled": True}
    assert wait_until(marker.exists, 10), "the background task never ran"


def test_many_requests_on_one_keep_alive_connection(client: httpx.Client) -> None:
    for index in range(20):
        assert client.get(f"/items/{index}").json()["item_id"] == index
        assert client.get("/sync").json() == {"in_worker_thread": True}
