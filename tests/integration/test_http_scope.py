"""The ASGI HTTP scope is complete and right: every key of the spec, root_path, and proxy headers.

root_path follows the ASGI spec as Starlette and uvicorn read it: `path` includes `root_path`, and so does
`raw_path` (as uvicorn does), so that an app routing on either sees the same path. Proxy headers count only
from a peer in --forwarded-allow-ips (default 127.0.0.1 and ::1, so the tests' own connections are trusted
unless told otherwise).
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.apps.echo import LIFESPAN_STATE_KEY, LIFESPAN_STATE_VALUE, decode_echo
from tests.integration.conftest import Conn, Server, ServerFactory, exchange


def echo_of(server: Server, request: bytes) -> tuple[dict[str, Any], int]:
    """The echo of one request, and the client port it was sent from."""
    with Conn(server.port) as conn:
        conn.send(request)
        response = conn.read_response()
        assert response.status == 200, response
        return decode_echo(response.body), conn.local_port


def get(target: str, *headers: str, version: str = "1.1") -> bytes:
    return "\r\n".join([f"GET {target} HTTP/{version}", "Host: example.com", *headers, "", ""]).encode()


def test_scope_has_every_key_with_the_right_values(echo_server: Server) -> None:
    echo, client_port = echo_of(
        echo_server, get("/a%2Fb/caf%C3%A9?x=%20&y=1", "X-Mixed-Case: Value", "Connection: close")
    )
    assert echo["type"] == "http"
    assert echo["asgi"]["version"] == "3.0"
    assert re.fullmatch(r"2\.\d+", echo["asgi"]["spec_version"])
    assert echo["http_version"] == "1.1"
    assert echo["method"] == "GET"
    assert echo["scheme"] == "http"
    assert echo["path"] == "/a/b/café"
    assert echo["raw_path"] == b"/a%2Fb/caf%C3%A9"
    assert echo["query_string"] == b"x=%20&y=1"
    assert echo["root_path"] == ""
    assert echo["client"] == ["127.0.0.1", client_port]
    assert echo["server"] == ["127.0.0.1", echo_server.port]
    assert echo["extensions"] is not None
    assert echo["state"] == {LIFESPAN_STATE_KEY: LIFESPAN_STATE_VALUE}


def test_header_names_are_lowercased_and_values_kept_in_order(echo_server: Server) -> None:
    echo, _ = echo_of(echo_server, get("/", "X-Mixed-Case: Value", "Accept: a", "accept: b", "Connection: close"))
    assert echo["headers"] == [
        (b"host", b"example.com"),
        (b"x-mixed-case", b"Value"),
        (b"accept", b"a"),
        (b"accept", b"b"),
        (b"connection", b"close"),
    ]


def test_http10_request_says_so_in_the_scope(echo_server: Server) -> None:
    echo, _ = echo_of(echo_server, get("/", version="1.0"))
    assert echo["http_version"] == "1.0"


def test_state_is_a_copy_per_request(echo_server: Server) -> None:
    # Each request gets a shallow copy of the lifespan state, so one request cannot add keys for the next.
    first, _ = echo_of(echo_server, get("/?mutate_state=1", "Connection: close"))
    second, _ = echo_of(echo_server, get("/", "Connection: close"))
    assert first["state"] == {LIFESPAN_STATE_KEY: LIFESPAN_STATE_VALUE, "mutated_by_request": True}
    assert second["state"] == {LIFESPAN_STATE_KEY: LIFESPAN_STATE_VALUE}


def test_root_path_is_set_and_prefixed_to_path(serve_module: ServerFactory) -> None:
    server = serve_module("tests.apps.echo:app", "--root-path", "/api")
    echo, _ = echo_of(server, get("/items?id=1", "Connection: close"))
    assert echo["root_path"] == "/api"
    assert echo["path"] == "/api/items"
    assert echo["raw_path"] == b"/api/items"
    assert echo["query_string"] == b"id=1"


@pytest.mark.parametrize(
    ("headers", "client_host", "scheme"),
    [
        (["X-Forwarded-For: 203.0.113.7", "X-Forwarded-Proto: https"], "203.0.113.7", "https"),
        (["X-Forwarded-For: 198.51.100.1, 203.0.113.7"], "203.0.113.7", "http"),
        (["Forwarded: for=198.51.100.9;proto=https"], "198.51.100.9", "https"),
    ],
    ids=["x-forwarded", "x-forwarded-for-list", "forwarded"],
)
def test_proxy_headers_from_a_trusted_peer_set_client_and_scheme(
    echo_server: Server, headers: list[str], client_host: str, scheme: str
) -> None:
    echo, _ = echo_of(echo_server, get("/", *headers, "Connection: close"))
    assert echo["client"][0] == client_host
    assert echo["scheme"] == scheme


def test_proxy_headers_from_an_untrusted_peer_are_ignored(serve_module: ServerFactory) -> None:
    server = serve_module("tests.apps.echo:app", "--forwarded-allow-ips", "10.1.2.3")
    headers = ["X-Forwarded-For: 203.0.113.7", "X-Forwarded-Proto: https", "Forwarded: for=198.51.100.9;proto=https"]
    echo, client_port = echo_of(server, get("/", *headers, "Connection: close"))
    assert echo["client"] == ["127.0.0.1", client_port]
    assert echo["scheme"] == "http"


def test_absolute_form_target_maps_to_path_and_query(echo_server: Server) -> None:
    echo, _ = echo_of(echo_server, get("http://example.com/abs/path?q=1", "Connection: close"))
    assert echo["path"] == "/abs/path"
    assert echo["raw_path"] == b"/abs/path"
    assert echo["query_string"] == b"q=1"


def test_request_without_query_has_empty_query_string(echo_server: Server) -> None:
    result = exchange(echo_server.port, get("/plain", "Connection: close"))
    (response,) = result.responses()
    assert decode_echo(response.body)["query_string"] == b""
