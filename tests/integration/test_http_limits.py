"""Request limits and slow-client defences: each refuses with its own status and closes the connection.

Limits count bytes as Gunicorn does, since corral takes its setting names and defaults: the request line
without its CRLF against limit_request_line (4094), each header field line with its CRLF against
limit_request_field_size (8190), and at most limit_request_fields (100) header fields.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.apps.echo import decode_echo
from tests.integration.conftest import (
    Conn,
    Response,
    Server,
    ServerFactory,
    exchange,
    parse_responses,
    refused,
    wait_until,
)

REQUEST_LINE_LIMIT = 4094
FIELD_SIZE_LIMIT = 8190
FIELD_COUNT_LIMIT = 100
BODY_LIMIT = 1000
HEADER_TIMEOUT = 1.0


def get_with_target_length(line_length: int) -> bytes:
    """A GET whose request line (without CRLF) is exactly `line_length` bytes."""
    target = b"/" + b"a" * (line_length - len(b"GET / HTTP/1.1"))
    line = b"GET %s HTTP/1.1" % target
    assert len(line) == line_length
    return line + b"\r\nHost: example.com\r\nConnection: close\r\n\r\n"


def get_with_field_line(length_with_crlf: int) -> bytes:
    prefix = b"X-Big: "
    value = b"v" * (length_with_crlf - len(prefix) - 2)
    return b"GET / HTTP/1.1\r\nHost: example.com\r\n%s%s\r\nConnection: close\r\n\r\n" % (prefix, value)


def get_with_field_count(count: int) -> bytes:
    """A GET with exactly `count` header fields, Host and Connection included."""
    fields = [b"Host: example.com", b"Connection: close"] + [b"X-F%d: v" % i for i in range(count - 2)]
    return b"GET / HTTP/1.1\r\n" + b"".join(f + b"\r\n" for f in fields) + b"\r\n"


def answered_ok(server: Server, data: bytes) -> Response:
    (response,) = exchange(server.port, data).responses()
    assert response.status == 200, response
    return response


def test_request_line_at_the_limit_is_served(echo_server: Server) -> None:
    answered_ok(echo_server, get_with_target_length(REQUEST_LINE_LIMIT))


def test_request_line_over_the_limit_gets_414(echo_server: Server) -> None:
    refused(echo_server.port, get_with_target_length(REQUEST_LINE_LIMIT + 1), 414)


def test_very_long_request_line_gets_414_before_it_ends(echo_server: Server) -> None:
    # The server must not wait for (or buffer) a request line of unbounded size: no CRLF is ever sent.
    refused(echo_server.port, b"GET /" + b"a" * 64 * 1024, 414)


def test_header_field_at_the_limit_is_served(echo_server: Server) -> None:
    answered_ok(echo_server, get_with_field_line(FIELD_SIZE_LIMIT))


def test_header_field_over_the_limit_gets_431(echo_server: Server) -> None:
    refused(echo_server.port, get_with_field_line(FIELD_SIZE_LIMIT + 1), 431)


def test_endless_header_section_gets_431_before_it_ends(echo_server: Server) -> None:
    # No CRLF ever comes: the server must give up at a bounded size (Gunicorn's cap is limit_request_fields
    # times limit_request_field_size), not buffer forever.
    refused(echo_server.port, b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"v" * 2 * 1024 * 1024, 431)


def test_header_count_at_the_limit_is_served(echo_server: Server) -> None:
    response = answered_ok(echo_server, get_with_field_count(FIELD_COUNT_LIMIT))
    assert len(decode_echo(response.body)["headers"]) == FIELD_COUNT_LIMIT


def test_header_count_over_the_limit_gets_431(echo_server: Server) -> None:
    refused(echo_server.port, get_with_field_count(FIELD_COUNT_LIMIT + 1), 431)


@pytest.fixture(scope="module")
def body_limited_server(serve_module: ServerFactory) -> Server:
    return serve_module("tests.apps.echo:app", "--limit-request-body", str(BODY_LIMIT))


def post(body_headers: bytes, body: bytes) -> bytes:
    return b"POST / HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n%s\r\n%s" % (body_headers, body)


def chunked(body: bytes, chunk_size: int = 300) -> bytes:
    chunks = [body[i : i + chunk_size] for i in range(0, len(body), chunk_size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"


def test_body_at_the_limit_is_served(body_limited_server: Server) -> None:
    body = b"b" * BODY_LIMIT
    response = answered_ok(body_limited_server, post(b"Content-Length: %d\r\n" % len(body), body))
    assert decode_echo(response.body)["body"] == body


def test_declared_body_over_the_limit_gets_413(body_limited_server: Server) -> None:
    body = b"b" * (BODY_LIMIT + 1)
    refused(body_limited_server.port, post(b"Content-Length: %d\r\n" % len(body), body), 413)


def test_declared_body_over_the_limit_gets_413_without_being_sent(body_limited_server: Server) -> None:
    # The Content-Length alone decides: the client need not upload the body to learn it is too large.
    refused(body_limited_server.port, post(b"Content-Length: %d\r\n" % (100 * BODY_LIMIT), b""), 413)


def test_chunked_body_at_the_limit_is_served(body_limited_server: Server) -> None:
    body = b"c" * BODY_LIMIT
    response = answered_ok(body_limited_server, post(b"Transfer-Encoding: chunked\r\n", chunked(body)))
    assert decode_echo(response.body)["body"] == body


def test_chunked_body_over_the_limit_gets_413(body_limited_server: Server) -> None:
    body = b"c" * (BODY_LIMIT + 1)
    refused(body_limited_server.port, post(b"Transfer-Encoding: chunked\r\n", chunked(body)), 413)


@pytest.fixture(scope="module")
def slow_client_server(serve_module: ServerFactory) -> Server:
    return serve_module(
        "tests.apps.echo:app", "--header-timeout", str(HEADER_TIMEOUT), "--body-timeout", str(HEADER_TIMEOUT)
    )


def trickle_until_closed(conn: Conn, pieces: list[bytes], interval: float) -> bytes:
    """Send one piece per `interval` until the server closes; what it sent back. Bounded by len(pieces)."""
    received = b""
    for piece in pieces:
        received += conn.read_available(interval)
        if conn.eof:
            return received
        try:
            conn.send(piece)
        except (BrokenPipeError, ConnectionResetError):
            return received + conn.read_available(interval)
    raise AssertionError(f"still open after trickling {len(pieces)} pieces over {len(pieces) * interval:.0f}s")


def assert_timed_out(received: bytes) -> None:
    """A header timeout is a plain close or a 408 (RFC 9110 §15.5.9), never a served request."""
    if received:
        response = parse_responses(received)[0]
        assert response.status == 408, response


def test_headers_trickled_past_the_header_timeout_are_cut_off(slow_client_server: Server) -> None:
    # Slowloris: each byte arrives well inside any idle timeout, but the header section never completes.
    with Conn(slow_client_server.port) as conn:
        conn.send(b"GET / HTTP/1.1\r\nHost: example.com\r\n")
        received = trickle_until_closed(conn, [b"X-Slow-%d: v\r\n" % i for i in range(40)], interval=0.25)
    assert_timed_out(received)


def test_connection_that_never_sends_a_request_is_closed(slow_client_server: Server) -> None:
    with Conn(slow_client_server.port, timeout=10 * HEADER_TIMEOUT) as conn:
        assert_timed_out(conn.wait_closed())


def test_request_that_stops_midway_through_the_headers_is_closed(slow_client_server: Server) -> None:
    with Conn(slow_client_server.port, timeout=10 * HEADER_TIMEOUT) as conn:
        conn.send(b"GET / HTTP/1.1\r\nHost: exa")
        assert_timed_out(conn.wait_closed())


def test_request_body_that_stops_arriving_is_cut_off(slow_client_server: Server) -> None:
    with Conn(slow_client_server.port, timeout=10 * HEADER_TIMEOUT) as conn:
        conn.send(b"POST / HTTP/1.1\r\nHost: example.com\r\nContent-Length: 100\r\n\r\nonly part of it")
        received = conn.wait_closed()
        # The app was waiting for the rest: it never answered, and the connection was closed.
        assert not received.startswith(b"HTTP/1.1 200")


def test_server_still_serves_after_cutting_off_slow_clients(slow_client_server: Server) -> None:
    answered_ok(slow_client_server, b"GET / HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n")


def open_hold(server: Server, marker: Path) -> Conn:
    conn = Conn(server.port)
    conn.send(b"GET /hold?marker=%s HTTP/1.1\r\nHost: example.com\r\n\r\n" % str(marker).encode())
    assert wait_until(marker.exists, 10), "the app never saw the held request"
    return conn


def attempt_extra_connection(server: Server) -> tuple[bytes, bool]:
    """Whatever an over-the-limit connection gets: (bytes, closed). Refusing the connect counts as closed."""
    try:
        result = exchange(server.port, b"GET /fixed HTTP/1.1\r\nHost: example.com\r\n\r\n", timeout=5)
    except ConnectionRefusedError:
        return b"", True
    return result.data, result.closed


def test_connections_over_worker_connections_are_refused_not_left_hanging(serve: ServerFactory, tmp_path: Path) -> None:
    server = serve("tests.apps.behaviours:app", "--worker-connections", "2")
    holds = [open_hold(server, tmp_path / f"hold-{i}") for i in range(2)]
    try:
        data, closed = attempt_extra_connection(server)
        assert closed, f"the connection over the limit was left waiting; got {data[:200]!r}"
        if data:
            response = parse_responses(data)[0]
            assert response.status == 503, response
            assert response.closes
    finally:
        for conn in holds:
            conn.close()

    def serves_again() -> bool:
        data, _ = attempt_extra_connection(server)
        return data.startswith(b"HTTP/1.1 200")

    assert wait_until(serves_again, 10, interval=0.2), "capacity did not come back after the held connections closed"
