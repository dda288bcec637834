"""The admin endpoint keeps answering probes whatever other clients of its port do: connections held idle or
fed a request head byte by byte are shed or cut, never at the expense of a fresh /livez or /readyz."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from corral.admin.child import ADMIN_CONNECTIONS
from tests.integration.conftest import free_port, raw_request, read_to_eof, wait_until

APP = "tests.apps.master_apps:app"
HOARDERS = ADMIN_CONNECTIONS + 6  # more than the admin process's connection cap


@pytest.fixture
def admin_port(serve: Any) -> int:
    port = free_port()
    serve(APP, "--admin-bind", f"127.0.0.1:{port}")
    assert wait_until(lambda: probe(port, "/readyz") == 200, 15)
    return port


@pytest.fixture
def hoard() -> Iterator[list[socket.socket]]:
    sockets: list[socket.socket] = []
    yield sockets
    for sock in sockets:
        with contextlib.suppress(OSError):
            sock.close()


def probe(port: int, path: str) -> int | None:
    """One probe on a fresh connection, as a kubelet sends it; its status, or None (refused, reset, no answer)."""
    try:
        data = raw_request(port, f"GET {path} HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n".encode())
    except OSError:
        return None
    return int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else None


def _keep_alive_client(port: int) -> socket.socket:
    """A client that made one request on a keep-alive connection and keeps it open, idle."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(b"GET /livez HTTP/1.1\r\nHost: hoarder\r\n\r\n")
    answer = b""
    while b"ok\n" not in answer:
        chunk = sock.recv(4096)
        assert chunk, "the admin endpoint closed a keep-alive connection after one answer"
        answer += chunk
    return sock


def test_fresh_probes_are_answered_while_more_clients_than_the_cap_hold_keep_alive_connections(
    admin_port: int, hoard: list[socket.socket]
) -> None:
    for _ in range(HOARDERS):
        hoard.append(_keep_alive_client(admin_port))
    statuses = [probe(admin_port, path) for _ in range(5) for path in ("/livez", "/readyz")]
    assert statuses == [200] * 10


def test_fresh_probes_are_answered_while_more_clients_than_the_cap_send_their_heads_slowly(
    admin_port: int, hoard: list[socket.socket]
) -> None:
    for _ in range(HOARDERS):
        sock = socket.create_connection(("127.0.0.1", admin_port), timeout=5)
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: slow")  # and never the rest
        hoard.append(sock)
    statuses = [probe(admin_port, path) for _ in range(5) for path in ("/livez", "/readyz")]
    assert statuses == [200] * 10


def test_a_slowloris_on_the_admin_port_is_cut_by_the_header_timeout(admin_port: int) -> None:
    with socket.create_connection(("127.0.0.1", admin_port), timeout=5) as sock:
        sock.sendall(b"GET /livez HTTP/1.1\r\nHost: slow\r\n")
        data, closed = read_to_eof(sock, timeout=15)
    assert closed, "the admin endpoint kept a head that never ends"
    assert data.startswith(b"HTTP/1.1 408 ")


def test_an_idle_keep_alive_connection_to_the_admin_port_is_closed(admin_port: int) -> None:
    with _keep_alive_client(admin_port) as sock:
        data, closed = read_to_eof(sock, timeout=15)
    assert closed and data == b""
