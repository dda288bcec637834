"""Apps that fail, return early or lose their client: the server answers what it still can and survives."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.apps.behaviours import FIXED_BODY
from tests.integration.conftest import (
    Conn,
    ResponseParseError,
    Server,
    ServerFactory,
    exchange,
    parse_responses,
    wait_until,
)


def get(path: str, *headers: str) -> bytes:
    return "\r\n".join([f"GET {path} HTTP/1.1", "Host: example.com", *headers, "", ""]).encode()


@pytest.fixture(scope="module")
def app_server(serve_module: ServerFactory) -> Server:
    # Its own server: these tests read its error log.
    return serve_module("tests.apps.behaviours:app")


def assert_still_serving(server: Server) -> None:
    (response,) = exchange(server.port, get("/fixed", "Connection: close")).responses()
    assert response.body == FIXED_BODY


def test_exception_before_the_response_starts_gives_500_and_a_logged_traceback(app_server: Server) -> None:
    with Conn(app_server.port) as conn:
        conn.send(get("/raise-before-start"))
        response = conn.read_response()
        assert response.status == 500
        # The failure was the app's, not the connection's: it may stay open for the next request.
        if not response.closes:
            conn.send(get("/fixed", "Connection: close"))
            assert conn.read_response().body == FIXED_BODY
    assert app_server.wait_for_stderr("boom-before-start")
    log = app_server.stderr_text()
    assert "Traceback (most recent call last)" in log
    assert "RuntimeError: boom-before-start" in log
    assert_still_serving(app_server)


def assert_cut_short(data: bytes) -> None:
    """The client must be able to tell the response is incomplete: no well-formed response parses out of it."""
    assert data.startswith(b"HTTP/1.1 200 "), data[:200]
    with pytest.raises(ResponseParseError):
        parse_responses(data)


def test_exception_after_the_response_started_closes_the_connection_mid_response(app_server: Server) -> None:
    result = exchange(app_server.port, get("/raise-after-start") + get("/fixed"))
    assert result.closed
    assert_cut_short(result.data)
    assert app_server.wait_for_stderr("boom-after-start")
    assert_still_serving(app_server)


def test_app_returning_mid_body_closes_the_connection_without_ending_the_body(app_server: Server) -> None:
    # A terminating zero-size chunk would tell the client a truncated body was complete.
    result = exchange(app_server.port, get("/return-mid-body") + get("/fixed"))
    assert result.closed
    assert_cut_short(result.data)
    assert not result.data.endswith(b"0\r\n\r\n")
    assert_still_serving(app_server)


def test_app_returning_without_a_response_gives_500(app_server: Server) -> None:
    (response,) = exchange(app_server.port, get("/no-response", "Connection: close")).responses()
    assert response.status == 500
    assert_still_serving(app_server)


def test_client_going_away_mid_request_delivers_http_disconnect(app_server: Server, tmp_path: Path) -> None:
    marker = tmp_path / "held"
    with Conn(app_server.port) as conn:
        conn.send(get(f"/hold?marker={marker}"))
        assert wait_until(marker.exists, 10), "the request never reached the app"
    disconnected = Path(f"{marker}.disconnected")
    assert wait_until(disconnected.exists, 10), "the app was not told the client went away"
    assert_still_serving(app_server)


@pytest.mark.parametrize("await_first", [False, True], ids=["set-eagerly", "set-after-await"])
def test_context_variables_do_not_leak_into_the_next_request_on_the_connection(
    app_server: Server, await_first: bool
) -> None:
    suffix = "&await=1" if await_first else ""
    with Conn(app_server.port) as conn:
        conn.send(get(f"/ctx?set=leaked{suffix}"))
        assert conn.read_response().body == b'{"seen": "unset"}'
        conn.send(get("/ctx"))
        assert conn.read_response().body == b'{"seen": "unset"}'
        conn.send(get(f"/ctx?set=again{suffix}") + get("/ctx"))
        assert conn.read_response().body == b'{"seen": "unset"}'
        assert conn.read_response().body == b'{"seen": "unset"}'
