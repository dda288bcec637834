"""Connection management: keep-alive, its timeout, pipelining in order, and when the server closes."""

from __future__ import annotations

import pytest

from tests.apps.behaviours import FIXED_BODY, pattern_chunk
from tests.apps.echo import decode_echo
from tests.integration.conftest import Conn, Server, ServerFactory, exchange

KEEPALIVE_SECONDS = 1.0


def get(path: str, *extra: str, version: str = "1.1") -> bytes:
    lines = [f"GET {path} HTTP/{version}", "Host: example.com", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def test_keep_alive_connection_serves_several_requests(echo_server: Server) -> None:
    with Conn(echo_server.port) as conn:
        for index in range(3):
            conn.send(get(f"/request-{index}"))
            response = conn.read_response()
            assert response.status == 200
            assert not response.closes
            echo = decode_echo(response.body)
            assert echo["path"] == f"/request-{index}"
            assert echo["client"] == ["127.0.0.1", conn.local_port]


def test_idle_keep_alive_connection_is_closed_after_the_keep_alive_timeout(serve_module: ServerFactory) -> None:
    server = serve_module("tests.apps.echo:app", "--keep-alive", str(KEEPALIVE_SECONDS))
    with Conn(server.port, timeout=10 * KEEPALIVE_SECONDS + 5) as conn:
        conn.send(get("/"))
        assert conn.read_response().status == 200
        # A silent close: an unsolicited response on an idle connection would be read as the next answer.
        assert conn.wait_closed() == b""


def test_pipelined_requests_are_answered_in_order_even_when_the_first_is_slowest(
    behaviour_server: Server,
) -> None:
    data = get("/sleep?seconds=0.3") + get("/fixed") + get("/stream?chunks=2&size=4", "Connection: close")
    result = exchange(behaviour_server.port, data)
    assert result.closed
    bodies = [response.body for response in result.responses()]
    assert bodies == [b"slept\n", FIXED_BODY, pattern_chunk(0, 4) + pattern_chunk(1, 4)]


def test_pipelined_requests_with_bodies_are_framed_exactly(echo_server: Server) -> None:
    first = b"POST /one HTTP/1.1\r\nHost: example.com\r\nContent-Length: 26\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n"
    second = b"POST /two HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    third = get("/three", "Connection: close")
    responses = exchange(echo_server.port, first + second + third).responses()
    echoes = [decode_echo(response.body) for response in responses]
    assert [(e["path"], e["body"]) for e in echoes] == [
        ("/one", b"GET /smuggled HTTP/1.1\r\n\r\n"),
        ("/two", b"abc"),
        ("/three", b""),
    ]


def test_client_connection_close_is_honoured(echo_server: Server) -> None:
    result = exchange(echo_server.port, get("/", "Connection: close") + get("/not-answered"))
    (response,) = result.responses()
    assert result.closed
    assert response.closes


@pytest.mark.parametrize("connection", ["close", "Close", "keep-alive, close"])
def test_connection_close_token_is_found_case_insensitively_in_a_list(echo_server: Server, connection: str) -> None:
    result = exchange(echo_server.port, get("/", f"Connection: {connection}"))
    assert result.closed
    assert len(result.responses()) == 1


def test_http10_request_without_keep_alive_gets_the_connection_closed(echo_server: Server) -> None:
    result = exchange(echo_server.port, get("/", version="1.0") + get("/not-answered"))
    (response,) = result.responses()
    assert result.closed
    assert response.status == 200
    assert not response.chunked


def test_http10_keep_alive_is_acknowledged_and_honoured(echo_server: Server) -> None:
    with Conn(echo_server.port) as conn:
        conn.send(get("/first", "Connection: keep-alive", version="1.0"))
        response = conn.read_response()
        # An HTTP/1.0 client assumes a close unless the response says keep-alive (RFC 9112 §9.3).
        assert b"keep-alive" in response.connection_tokens()
        conn.send(get("/second", "Connection: close", version="1.0"))
        assert decode_echo(conn.read_response().body)["path"] == "/second"
        conn.wait_closed()


def test_half_closed_client_still_gets_its_answer(echo_server: Server) -> None:
    result = exchange(echo_server.port, get("/half-closed"), shut_wr=True)
    (response,) = result.responses()
    assert decode_echo(response.body)["path"] == "/half-closed"
    assert result.closed
