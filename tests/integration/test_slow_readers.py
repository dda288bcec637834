"""Clients that ask for a response and never read it: cut after `send_timeout`, so they cannot hold the
worker's connections (and the app's `send()`) for ever."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from tests.integration.conftest import ServerFactory, exchange, wait_until

SEND_TIMEOUT = 1.0
# 25 MiB: far more than the kernel's socket buffers and the transport's high-water mark together.
_BIG = b"GET /stream?chunks=400&size=65536&length=1 HTTP/1.1\r\nHost: t\r\n\r\n"


@pytest.fixture
def non_readers() -> Iterator[list[socket.socket]]:
    sockets: list[socket.socket] = []
    yield sockets
    for sock in sockets:
        sock.close()


def _ask_and_never_read(port: int, sockets: list[socket.socket]) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
    sock.connect(("127.0.0.1", port))
    sock.sendall(_BIG)
    sockets.append(sock)
    return sock


def _status(port: int) -> int:
    answered = exchange(port, b"GET /fixed HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").final_responses()
    return answered[0].status if answered else 0


def _read_until_cut(sock: socket.socket) -> int:
    """Everything the server sent before it cut the connection; fails if it never does."""
    sock.settimeout(10)
    received = 0
    try:
        while chunk := sock.recv(1 << 20):
            received += len(chunk)
    except ConnectionResetError:
        pass
    return received


def test_a_client_that_reads_none_of_a_large_response_is_cut_after_send_timeout(
    serve: ServerFactory, non_readers: list[socket.socket]
) -> None:
    server = serve("tests.apps.behaviours:app", "--send-timeout", str(SEND_TIMEOUT))
    sock = _ask_and_never_read(server.port, non_readers)
    assert server.wait_for_stderr("client read nothing for over", timeout=10), server.stderr_text()
    assert _read_until_cut(sock) < 400 * 65536  # cut, not completed
    assert _status(server.port) == 200


def test_connections_held_by_non_readers_are_given_back_to_other_clients(
    serve: ServerFactory, non_readers: list[socket.socket]
) -> None:
    server = serve("tests.apps.behaviours:app", "--worker-connections", "3", "--send-timeout", str(SEND_TIMEOUT))
    for _ in range(3):
        _ask_and_never_read(server.port, non_readers)
    # Every connection is busy with a response nobody reads: a newcomer is refused at first...
    assert _status(server.port) == 503
    # ...and served once the non-readers have been cut.
    assert wait_until(
        lambda: _status(server.port) == 200,
        timeout=10,
        interval=0.5,
    ), server.stderr_text()
