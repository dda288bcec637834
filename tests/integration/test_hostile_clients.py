"""Clients that try to make a worker buffer without end, against a real server: it stops reading them and
lets TCP push back, then serves them correctly once they behave; and the connection cap sheds idle
keep-alive connections before it refuses anyone."""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

from websockets.sync.client import connect as ws_connect

from tests.integration.conftest import Conn, ServerFactory, exchange, wait_until

APP = "tests.apps.hostile:app"
RESPONSE_SIZE = 16 * 1024
STALL = 2.0  # a send that makes no progress this long: the server stopped reading (TCP pushed back)


def count(port: int) -> int:
    response = exchange(port, b"GET /count HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    return int(response.data.rpartition(b"\r\n\r\n")[2])


def send_until_stalled(sock: socket.socket, requests: list[bytes]) -> int:
    """Send requests one after another; how many went out before a send made no progress for STALL seconds."""
    sock.settimeout(STALL)
    for index, request in enumerate(requests):
        view = memoryview(request)
        while view:
            try:
                view = view[sock.send(view) :]
            except TimeoutError:
                return index
    return len(requests)


def read_numbered_responses(sock: socket.socket, total: int) -> list[int]:
    """The number at the start of each of `total` responses (same head length each: one Date format)."""
    sock.settimeout(10)
    data = bytearray()
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    each = data.index(b"\r\n\r\n") + 4 + RESPONSE_SIZE
    while len(data) < each * total:
        chunk = sock.recv(1 << 20)
        assert chunk, f"closed after {len(data) // each} responses"
        data += chunk
    head = each - RESPONSE_SIZE
    return [int(data[i * each + head : i * each + head + 8]) for i in range(total)]


def test_a_pipelining_client_that_reads_no_responses_is_pushed_back_and_then_answered_in_order(
    serve: ServerFactory,
) -> None:
    server = serve(APP)
    pad = b"x-pad: " + b"p" * 8000 + b"\r\n"  # big requests: the kernel's socket buffers hold fewer of them
    total = 4000
    requests = [b"GET /big/%d HTTP/1.1\r\nHost: x\r\n%s\r\n" % (i, pad) for i in range(total)]
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    try:
        sent = send_until_stalled(sock, requests)
        assert sent < total, "the server read every request although the client read no response"
        answered = count(server.port)
        assert answered < sent, f"the server answered {answered} of {sent} requests nobody read"
        # The client reads now: every request is answered, in order, including those sent after the stall.
        reader_result: list[list[int]] = []
        reader = threading.Thread(target=lambda: reader_result.append(read_numbered_responses(sock, total)))
        reader.start()
        sock.settimeout(30)
        sock.sendall(b"".join(requests[sent:]))
        reader.join(60)
        assert reader_result and reader_result[0] == list(range(total))
    finally:
        sock.close()


def test_a_websocket_client_is_pushed_back_while_the_app_reads_nothing_and_every_message_arrives_after(
    serve: ServerFactory, tmp_path: Path
) -> None:
    server = serve(APP, "--ws-max-queue-bytes", "256K")
    marker = tmp_path / "read-now"
    # 64 KiB messages that deflate to about 6.5 KiB each (a fresh random block, repeated): about 13 MiB on the
    # wire in all, more than the socket buffers hold, and cheap enough to inflate.
    total = 2000
    messages = [os.urandom(6554) * 10 for _ in range(total)]
    sent = 0
    url = f"ws://127.0.0.1:{server.port}/slow?marker={marker}"
    with ws_connect(url, max_size=None, ping_interval=None) as ws:
        assert ws.protocol.extensions, "permessage-deflate was not negotiated"

        def flood() -> None:
            nonlocal sent
            for message in messages:
                ws.send(message)
                sent += 1
            ws.send("end")

        sender = threading.Thread(target=flood, daemon=True)
        sender.start()
        # The sender stops making progress: the server stopped reading, so TCP holds it back.
        stalled, last = False, -1
        for _ in range(30):
            time.sleep(STALL)
            if sent == last:
                stalled = True
                break
            last = sent
        assert stalled and sent < total, f"the client sent {sent} of {total} messages unhindered"
        marker.write_text("go")
        sender.join(60)
        assert not sender.is_alive()
        assert ws.recv(timeout=30) == f"{total} {sum(map(len, messages))}"


def idle_keepalive(port: int) -> Conn:
    conn = Conn(port)
    conn.send(b"GET /big/0 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert conn.read_response().status == 200
    return conn


def test_at_the_connection_cap_the_longest_idle_connection_is_closed_and_a_new_client_served(
    serve: ServerFactory, tmp_path: Path
) -> None:
    server = serve(APP, "--worker-connections", "3", "--keep-alive", "60")
    oldest = idle_keepalive(server.port)
    time.sleep(1.2)  # the worker's idle clock has a one-second grain: the next ones are idle for less long
    newer = [idle_keepalive(server.port) for _ in range(2)]
    try:
        with Conn(server.port) as newcomer:
            newcomer.send(b"GET /big/1 HTTP/1.1\r\nHost: x\r\n\r\n")
            assert newcomer.read_response().status == 200
            oldest.wait_closed()
            for conn in newer:  # the others were kept, and serve their next request
                conn.send(b"GET /big/2 HTTP/1.1\r\nHost: x\r\n\r\n")
                assert conn.read_response().status == 200
    finally:
        for conn in (oldest, *newer):
            conn.close()
    assert wait_until(lambda: count(server.port) >= 6, 5)
