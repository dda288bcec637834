"""What an app sends that must not go on the wire as-is (a float status, an interim status as the answer, a
Content-Length on 204/304), and a download whose client leaves after the last byte: counted and logged."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.apps.drain_apps import DOWNLOAD_SIZE
from tests.integration.conftest import Server, ServerFactory, exchange, free_port, wait_until

APP = "tests.apps.drain_apps:app"


def get(path: str, *headers: str) -> bytes:
    return "\r\n".join([f"GET {path} HTTP/1.1", "Host: t", *headers, "", ""]).encode()


@pytest.fixture(scope="module")
def app_server(serve_module: ServerFactory) -> Server:
    # Its own server: these tests read its error log.
    return serve_module(APP)


@pytest.mark.parametrize(
    ("path", "mistake"),
    [
        ("/status/float", "must be an int in 100..599 (RFC 9110 15), got 200.0"),
        ("/status/101", "interim status 101 as its response"),
        ("/status/103", "interim status 103 as its response"),
    ],
)
def test_a_bad_final_status_becomes_a_500_and_closes_before_the_next_pipelined_request(
    app_server: Server, path: str, mistake: str
) -> None:
    result = exchange(app_server.port, get(path) + get("/pid"))
    assert result.closed and not result.reset
    (response,) = result.responses()
    assert response.status == 500
    assert response.closes
    assert b"should never be sent" not in result.data
    assert wait_until(lambda: mistake in app_server.stderr_text(), 10), app_server.stderr_text()
    # The worker serves on.
    (after,) = exchange(app_server.port, get("/pid", "Connection: close")).responses()
    assert after.status == 200


@pytest.mark.parametrize(("path", "status"), [("/no-content-with-length", 204), ("/not-modified-with-length", 304)])
def test_204_and_304_go_out_without_content_length_and_the_next_pipelined_request_is_answered(
    app_server: Server, path: str, status: int
) -> None:
    result = exchange(app_server.port, get(path) + get("/pid", "Connection: close"))
    first, second = result.responses()
    assert first.status == status
    assert first.header("content-length") is None, first.raw_head
    assert first.header("etag") == b'"v1"'
    assert second.status == 200 and second.body.startswith(b"pid=")


def _download_and_leave(port: int, path: str) -> None:
    """Read the head and the whole declared body, then close at once: before the app's final message."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(get(path))
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, "closed before the head"
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ")
        assert re.search(rb"(?i)content-length: %d\r\n" % DOWNLOAD_SIZE, head + b"\r\n")
        received = len(body)
        while received < DOWNLOAD_SIZE:
            chunk = sock.recv(65536)
            assert chunk, "closed inside the body"
            received += len(chunk)


def _responses_2xx(admin_port: int) -> float:
    text = httpx.get(f"http://127.0.0.1:{admin_port}/metrics", timeout=5).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "corral_http_responses_total" and sample.labels.get("status_class") == "2xx":
                return sample.value
    return -1


@pytest.mark.parametrize("path", ["/download", "/file"])
def test_a_download_closed_right_after_its_last_byte_is_counted_and_logged(
    serve: ServerFactory, tmp_path: Path, path: str
) -> None:
    access_log = tmp_path / "access.log"
    admin_port = free_port()
    server = serve(APP, "--access-logfile", str(access_log), "--admin-bind", f"127.0.0.1:{admin_port}")
    for _ in range(5):
        _download_and_leave(server.port, path)

    def logged() -> int:
        return access_log.read_text().count(f'"GET {path} HTTP/1.1" 200') if access_log.exists() else 0

    assert wait_until(lambda: logged() == 5, 10), access_log.read_text() if access_log.exists() else "no log"
    assert wait_until(lambda: _responses_2xx(admin_port) == 5, 10), _responses_2xx(admin_port)
    assert "Exception in ASGI application" not in server.stderr_text()


def test_workers_auto_caps_by_memory_as_soon_as_a_worker_is_ready(serve: ServerFactory) -> None:
    server = serve("tests.apps.echo:app", "--workers", "auto")
    # The one line that gives the count with the memory fact: only written once a worker's RSS is known.
    assert wait_until(lambda: re.search(r"workers=auto: \d+ \(.*memory: ", server.stderr_text()), 15), (
        server.stderr_text()
    )
