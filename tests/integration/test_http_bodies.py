"""Bodies both ways: chunked requests, streamed and sized responses, HEAD, Expect: 100-continue, back-pressure."""

from __future__ import annotations

import hashlib
import json
import socket
import time
from collections.abc import Iterator
from email.utils import parsedate_to_datetime
from pathlib import Path

import pytest

from tests.apps.behaviours import FIXED_BODY, pattern_chunk
from tests.apps.echo import decode_echo
from tests.integration.conftest import (
    Conn,
    Response,
    Server,
    ServerFactory,
    exchange,
    parse_responses,
    read_to_eof,
)

MIB = 1024 * 1024
# Transfers much larger than any sane buffer, so a server without flow control would have to hold most of it.
BIG_TRANSFER = 48 * MIB
# How much a well-behaved server's memory may grow while moving BIG_TRANSFER.
MEMORY_GROWTH_ALLOWED = 16 * MIB


def request(method: str, path: str, *headers: str, body: bytes = b"") -> bytes:
    head = "\r\n".join([f"{method} {path} HTTP/1.1", "Host: example.com", *headers])
    return head.encode() + b"\r\n\r\n" + body


def only_response(server: Server, data: bytes, method: str = "GET") -> Response:
    result = exchange(server.port, data)
    (response,) = result.final_responses([method])
    return response


def test_chunked_request_body_reaches_the_app_whole(echo_server: Server) -> None:
    body = b"3;ext=1\r\nabc\r\n10\r\n0123456789abcdef\r\n1\r\n!\r\n0\r\n\r\n"
    response = only_response(
        echo_server, request("POST", "/", "Transfer-Encoding: chunked", "Connection: close", body=body)
    )
    assert decode_echo(response.body)["body"] == b"abc0123456789abcdef!"


def test_request_trailers_are_not_merged_into_the_headers(echo_server: Server) -> None:
    body = b"3\r\nabc\r\n0\r\nX-Trailer: sneaky\r\n\r\n"
    response = only_response(
        echo_server, request("POST", "/", "Transfer-Encoding: chunked", "Connection: close", body=body)
    )
    echo = decode_echo(response.body)
    assert echo["body"] == b"abc"
    assert b"x-trailer" not in [name for name, _ in echo["headers"]]


def test_empty_chunked_request_body(echo_server: Server) -> None:
    data = request("POST", "/", "Transfer-Encoding: chunked", "Connection: close", body=b"0\r\n\r\n")
    assert decode_echo(only_response(echo_server, data).body)["body"] == b""


def test_streamed_response_without_length_is_chunked(behaviour_server: Server) -> None:
    response = only_response(behaviour_server, request("GET", "/stream?chunks=3&size=5", "Connection: close"))
    assert response.status == 200
    assert response.chunked
    assert response.header("content-length") is None
    assert response.body == b"".join(pattern_chunk(i, 5) for i in range(3))


def test_streamed_response_with_declared_length_is_not_chunked(behaviour_server: Server) -> None:
    response = only_response(behaviour_server, request("GET", "/stream?chunks=3&size=5&length=1", "Connection: close"))
    assert not response.chunked
    assert response.header("content-length") == b"15"
    assert response.body == b"".join(pattern_chunk(i, 5) for i in range(3))


def test_streamed_response_to_http10_is_delimited_by_close(behaviour_server: Server) -> None:
    # HTTP/1.0 has no chunked coding: the end of the body is the end of the connection.
    result = exchange(behaviour_server.port, b"GET /stream?chunks=3&size=5 HTTP/1.0\r\n\r\n")
    assert result.closed
    (response,) = result.responses()
    assert not response.chunked
    assert response.header("transfer-encoding") is None
    assert response.body == b"".join(pattern_chunk(i, 5) for i in range(3))


def test_sized_response_has_content_length_and_exact_body(behaviour_server: Server) -> None:
    response = only_response(behaviour_server, request("GET", "/fixed", "Connection: close"))
    assert response.header("content-length") == str(len(FIXED_BODY)).encode()
    assert response.body == FIXED_BODY


def headers_except_date(response: Response) -> list[tuple[bytes, bytes]]:
    # Two responses may straddle a second boundary, so their Date headers can differ.
    return [(name.lower(), value) for name, value in response.headers if name.lower() != b"date"]


def test_head_gets_the_get_headers_and_no_body(behaviour_server: Server) -> None:
    with Conn(behaviour_server.port) as conn:
        conn.send(request("GET", "/fixed"))
        got = conn.read_response()
        conn.send(request("HEAD", "/fixed"))
        head = conn.read_response("HEAD")
        # Had the server sent a body after the HEAD response, it would be read here as a broken response.
        conn.send(request("GET", "/fixed", "Connection: close"))
        after = conn.read_response()
        assert conn.wait_closed() == b""
    assert head.status == got.status == 200
    assert head.body == b""
    assert headers_except_date(head) == headers_except_date(got)
    assert after.body == FIXED_BODY


def test_head_of_a_streamed_response_sends_no_body(behaviour_server: Server) -> None:
    with Conn(behaviour_server.port) as conn:
        conn.send(request("HEAD", "/stream?chunks=3&size=5"))
        head = conn.read_response("HEAD")
        conn.send(request("GET", "/fixed", "Connection: close"))
        assert conn.read_response().body == FIXED_BODY
        assert conn.wait_closed() == b""
    assert head.status == 200


def test_date_and_server_headers_are_present(behaviour_server: Server) -> None:
    response = only_response(behaviour_server, request("GET", "/fixed", "Connection: close"))
    date = response.header("date")
    assert date is not None
    assert parsedate_to_datetime(date.decode()).tzname() == "UTC"
    assert date.decode().endswith(" GMT")
    assert response.header("server") == b"corral"


@pytest.mark.parametrize(("value", "expected"), [("acme-edge", b"acme-edge"), ("", None)], ids=["custom", "off"])
def test_server_header_follows_the_setting(serve: ServerFactory, value: str, expected: bytes | None) -> None:
    server = serve("tests.apps.behaviours:app", "--server-header", value)
    response = only_response(server, request("GET", "/fixed", "Connection: close"))
    assert response.header("server") == expected
    assert response.header("date") is not None


# --------------------------------------------------------------------------------------------------
# Expect: 100-continue


def test_100_continue_is_sent_when_the_app_reads_the_body(echo_server: Server) -> None:
    with Conn(echo_server.port) as conn:
        conn.send(request("POST", "/", "Expect: 100-continue", "Content-Length: 5", "Connection: close"))
        interim = conn.read_response(interim=True)
        assert interim.status == 100
        conn.send(b"hello")
        final = conn.read_response()
    assert final.status == 200
    assert decode_echo(final.body)["body"] == b"hello"


@pytest.mark.parametrize("status", [417, 401])
def test_no_100_continue_when_the_app_answers_without_reading(behaviour_server: Server, status: int) -> None:
    with Conn(behaviour_server.port) as conn:
        conn.send(request("POST", f"/reject?status={status}", "Expect: 100-continue", "Content-Length: 5"))
        first = conn.read_response(interim=True)
    assert first.status == status


def test_100_continue_is_not_sent_to_http10(echo_server: Server) -> None:
    data = b"POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\nhello"
    result = exchange(echo_server.port, data)
    assert [r.status for r in result.responses()] == [200]


# --------------------------------------------------------------------------------------------------
# Back-pressure: a slow reader on either side must not make the server buffer the whole transfer.


def process_tree(pid: int) -> Iterator[int]:
    yield pid
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        for child in task.read_text().split():
            yield from process_tree(int(child))


def peak_rss_bytes(pid: int) -> int:
    """The largest VmHWM (peak resident set) in the server's process tree."""
    peaks = []
    for member in process_tree(pid):
        for line in Path(f"/proc/{member}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                peaks.append(int(line.split()[1]) * 1024)
    return max(peaks)


@pytest.fixture
def pressure_server(serve: ServerFactory) -> Server:
    if not Path("/proc/self/status").exists():
        pytest.skip("needs /proc to read the server's peak memory")
    server = serve("tests.apps.behaviours:app")
    # Warm up so the first request's one-off allocations do not count as growth.
    only_response(server, request("GET", "/stream?chunks=16&size=65536", "Connection: close"))
    return server


def test_large_upload_to_a_slow_reader_arrives_intact_without_buffering(pressure_server: Server) -> None:
    body = b"".join(pattern_chunk(index, MIB) for index in range(BIG_TRANSFER // MIB))
    head = request("POST", "/upload-digest?delay=0.5", f"Content-Length: {len(body)}", "Connection: close")
    before = peak_rss_bytes(pressure_server.proc.pid)
    result = exchange(pressure_server.port, head + body, timeout=60)
    (response,) = result.responses()
    report = json.loads(response.body)
    assert report["length"] == len(body)
    assert report["sha256"] == hashlib.sha256(body).hexdigest()
    growth = peak_rss_bytes(pressure_server.proc.pid) - before
    assert growth < MEMORY_GROWTH_ALLOWED, f"server memory grew by {growth / MIB:.1f} MiB for a slow reader"


def test_large_response_to_a_slow_client_arrives_intact_without_buffering(pressure_server: Server) -> None:
    size = 256 * 1024
    chunks = BIG_TRANSFER // size
    before = peak_rss_bytes(pressure_server.proc.pid)
    with socket.create_connection(("127.0.0.1", pressure_server.port), timeout=60) as sock:
        sock.sendall(request("GET", f"/stream?chunks={chunks}&size={size}", "Connection: close"))
        # Read nothing for a while: the socket buffers fill up and the app's sends must wait.
        time.sleep(0.5)
        data, closed = read_to_eof(sock, timeout=60)
    assert closed
    (response,) = parse_responses(data)
    expected = hashlib.sha256(b"".join(pattern_chunk(index, size) for index in range(chunks)))
    assert hashlib.sha256(response.body).hexdigest() == expected.hexdigest()
    growth = peak_rss_bytes(pressure_server.proc.pid) - before
    assert growth < MEMORY_GROWTH_ALLOWED, f"server memory grew by {growth / MIB:.1f} MiB for a slow client"
