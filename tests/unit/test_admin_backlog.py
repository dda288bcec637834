"""Listen queues read from real listening sockets on 127.0.0.1 and in a temporary directory: TCP through
TCP_INFO, unix sockets through sock_diag; unknown stays unknown."""

from __future__ import annotations

import socket
import struct
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.admin.backlog import _parse_unix_reply, listen_queue
from corral.core.scoreboard import ListenQueue

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="TCP_INFO and sock_diag are Linux's")


@pytest.fixture
def clients() -> Iterator[list[socket.socket]]:
    made: list[socket.socket] = []
    yield made
    for sock in made:
        sock.close()


def test_a_tcp_listener_reports_connections_waiting_for_accept_and_its_backlog(clients: list[socket.socket]) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(7)
        assert listen_queue(listener) == ListenQueue(0, 7)
        for _ in range(3):
            clients.append(socket.create_connection(listener.getsockname(), timeout=5))
        assert listen_queue(listener) == ListenQueue(3, 7)  # the handshake completes in the kernel at connect
        conn, _ = listener.accept()
        conn.close()
        assert listen_queue(listener) == ListenQueue(2, 7)


def test_a_unix_listener_reports_its_queue_through_sock_diag(tmp_path: Path, clients: list[socket.socket]) -> None:
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(tmp_path / "app.sock"))
        listener.listen(5)
        before = listen_queue(listener)
        if before is None:
            pytest.skip("this kernel does not answer sock_diag requests for unix sockets")
        assert before == ListenQueue(0, 5)
        for _ in range(2):
            client = socket.socket(socket.AF_UNIX)
            client.connect(str(tmp_path / "app.sock"))
            clients.append(client)
        assert listen_queue(listener) == ListenQueue(2, 5)


def test_sockets_that_do_not_listen_or_are_closed_read_as_unknown() -> None:
    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))  # the master's socket with reuse_port: bound, never listening
        assert listen_queue(bound) is None
    closed = socket.socket()
    closed.close()
    assert listen_queue(closed) is None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as datagram:
        assert listen_queue(datagram) is None


def test_a_sock_diag_reply_for_another_socket_or_an_error_is_no_answer() -> None:
    header = struct.Struct("=IHHII")
    message = struct.Struct("=BBBBIII")
    attribute = struct.pack("=HHII", 12, 4, 9, 64)
    body = message.pack(socket.AF_UNIX, 1, 10, 0, 555, 0, 0) + attribute
    reply = header.pack(header.size + len(body), 20, 0, 7, 0) + body
    assert _parse_unix_reply(reply, 7, 555) == ListenQueue(9, 64)
    assert _parse_unix_reply(reply, 8, 555) is None  # another request's answer
    assert _parse_unix_reply(reply, 7, 556) is None  # another socket
    assert _parse_unix_reply(header.pack(36, 2, 0, 7, 0) + bytes(20), 7, 555) is None  # NLMSG_ERROR
    assert _parse_unix_reply(reply[:20], 7, 555) is None  # cut short
