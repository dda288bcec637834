"""WebSockets served by a real corral process, talked to with the `websockets` client (and raw sockets where
the test needs a client that misbehaves)."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import socket
import struct
import time
from collections.abc import Iterator

import pytest
from websockets.exceptions import ConnectionClosed, ConnectionClosedError, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from tests.apps.websocket_apps import DENIAL_BODY
from tests.integration.conftest import (
    Server,
    ServerFactory,
    refused,
    wait_for_ready_workers,
    wait_until,
)

APP = "tests.apps.websocket_apps:app"
TIMEOUT = 10.0
KEY = base64.b64encode(b"0123456789abcdef")


def handshake_refusal(server: Server, path: str) -> InvalidStatus:
    """The HTTP answer to a handshake the server (or the app) refused."""
    with pytest.raises(InvalidStatus) as caught, ws_connect(server, path):
        pass
    return caught.value


def ws_url(server: Server, path: str) -> str:
    return f"ws://127.0.0.1:{server.port}{path}"


@contextlib.contextmanager
def ws_connect(server: Server, path: str, **options: object) -> Iterator[ClientConnection]:
    with connect(ws_url(server, path), open_timeout=TIMEOUT, close_timeout=TIMEOUT, **options) as ws:  # type: ignore[arg-type]
        yield ws


@pytest.fixture(scope="module")
def ws_server(serve_module: ServerFactory) -> Server:
    """Default WebSocket settings, with the access log on stdout."""
    return serve_module(APP, "--access-logfile", "-")


@pytest.fixture(scope="module")
def tight_server(serve_module: ServerFactory) -> Server:
    """Small limits and fast keep-alive pings, no compression."""
    return serve_module(
        APP,
        "--ws-max-size", "1024",
        "--ws-ping-interval", "1",
        "--ws-ping-timeout", "1",
        "--ws-per-message-deflate", "false",
    )  # fmt: skip


# --- raw-socket helpers -------------------------------------------------------------------------------


def raw_handshake(port: int, path: str = "/echo") -> socket.socket:
    """A raw connection that has completed the opening handshake (101 read)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    sock.sendall(
        b"GET %s HTTP/1.1\r\nHost: corral.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % (path.encode(), KEY)
    )
    head = b""
    for _ in range(8192):
        if b"\r\n\r\n" in head:
            break
        chunk = sock.recv(1)  # byte by byte: nothing after the head may be consumed here
        assert chunk, f"closed during the handshake: {head!r}"
        head += chunk
    assert head.startswith(b"HTTP/1.1 101 "), head
    return sock


def recv_exactly(sock: socket.socket, count: int) -> bytes:
    data = b""
    for _ in range(count + 1):
        if len(data) >= count:
            return data
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise EOFError(f"connection closed after {data!r}")
        data += chunk
    return data


def read_frame(sock: socket.socket) -> tuple[int, bytes]:
    """(opcode, payload) of the next unmasked frame from the server."""
    first, second = recv_exactly(sock, 2)
    length = second & 0x7F
    if length == 126:
        (length,) = struct.unpack("!H", recv_exactly(sock, 2))
    elif length == 127:
        (length,) = struct.unpack("!Q", recv_exactly(sock, 8))
    return first & 0x0F, recv_exactly(sock, length)


def client_frame(opcode: int, payload: bytes, *, fin: bool = True, rsv: int = 0, mask: bool = True) -> bytes:
    head = bytes([(0x80 if fin else 0) | (rsv & 7) << 4 | (opcode & 0x0F)])
    length = len(payload)
    mask_bit = 0x80 if mask else 0
    if length < 126:
        head += bytes([mask_bit | length])
    elif length < 1 << 16:
        head += bytes([mask_bit | 126]) + struct.pack("!H", length)
    else:
        head += bytes([mask_bit | 127]) + struct.pack("!Q", length)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(byte ^ key[index % 4] for index, byte in enumerate(payload))


def disconnect_count(server: Server, path: str, code: int) -> int:
    return server.stderr_text().count(f"websocket.disconnect path={path} code={code}")


# --- messages -----------------------------------------------------------------------------------------


def test_text_and_binary_messages_are_echoed(ws_server: Server) -> None:
    with ws_connect(ws_server, "/echo") as ws:
        ws.send("hello, wörld")
        assert ws.recv(timeout=TIMEOUT) == "hello, wörld"
        ws.send(b"\x00\x01\xfe\xff")
        assert ws.recv(timeout=TIMEOUT) == b"\x00\x01\xfe\xff"


def test_large_and_fragmented_messages_are_echoed_whole(ws_server: Server) -> None:
    big = os.urandom(3 * 1024 * 1024 + 7)
    with ws_connect(ws_server, "/echo", max_size=None) as ws:
        ws.send(big)
        assert ws.recv(timeout=TIMEOUT) == big
        ws.send(["fragments ", "make ", "one message"])
        assert ws.recv(timeout=TIMEOUT) == "fragments make one message"
        ws.send([b"a" * 70_000, b"b" * 70_000])
        assert ws.recv(timeout=TIMEOUT) == b"a" * 70_000 + b"b" * 70_000


def test_permessage_deflate_is_negotiated_by_default(ws_server: Server) -> None:
    text = "very compressible " * 20_000
    with ws_connect(ws_server, "/echo", compression="deflate") as ws:
        assert "permessage-deflate" in ws.response.headers.get("Sec-WebSocket-Extensions", "")
        ws.send(text)
        assert ws.recv(timeout=TIMEOUT) == text


def test_permessage_deflate_can_be_switched_off(tight_server: Server) -> None:
    with ws_connect(tight_server, "/echo", compression="deflate") as ws:
        assert "Sec-WebSocket-Extensions" not in ws.response.headers
        ws.send("plain")
        assert ws.recv(timeout=TIMEOUT) == "plain"


def test_the_app_chooses_among_the_offered_subprotocols(ws_server: Server) -> None:
    with ws_connect(ws_server, "/subprotocol", subprotocols=["chat", "superchat"]) as ws:  # type: ignore[list-item]
        assert ws.subprotocol == "superchat"
        assert ws.response.headers["x-chosen"] == "superchat"
        assert ws.recv(timeout=TIMEOUT) == "superchat"


def test_websocket_scope(ws_server: Server) -> None:
    with ws_connect(ws_server, "/scope?room=7") as ws:
        scope = json.loads(ws.recv(timeout=TIMEOUT))
    assert scope["type"] == "websocket" and scope["scheme"] == "ws" and scope["http_version"] == "1.1"
    assert scope["path"] == "/scope" and scope["raw_path"] == "/scope" and scope["query_string"] == "room=7"
    assert not scope["has_method"] and scope["subprotocols"] == []
    assert "websocket.http.response" in scope["extensions"]
    assert scope["state"] == {"started_by": "lifespan"}
    assert scope["client"][0] == "127.0.0.1"
    assert scope["asgi"]["version"] == "3.0"


# --- refusals and denials -----------------------------------------------------------------------------


def test_denial_response_reaches_the_client_as_http(ws_server: Server) -> None:
    response = handshake_refusal(ws_server, "/deny").response
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.body == DENIAL_BODY


def test_close_before_accept_is_a_403(ws_server: Server) -> None:
    assert handshake_refusal(ws_server, "/reject").response.status_code == 403


def test_app_exception_before_accept_is_a_500(ws_server: Server) -> None:
    assert handshake_refusal(ws_server, "/raise-before-accept").response.status_code == 500
    assert ws_server.wait_for_stderr("boom before accept")


def test_invalid_handshake_is_refused_with_400_and_a_reason(ws_server: Server) -> None:
    request = (
        b"GET /echo HTTP/1.1\r\nHost: corral.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: short\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    response = refused(ws_server.port, request, 400)
    assert b"Sec-WebSocket-Key" in response.body


def test_handshake_is_in_the_access_log(ws_server: Server) -> None:
    with ws_connect(ws_server, "/echo?logged=1") as ws:
        ws.send("x")
        ws.recv(timeout=TIMEOUT)
    assert wait_until(lambda: '"GET /echo?logged=1 HTTP/1.1" 101' in ws_server.stdout_text(), TIMEOUT)


# --- closing ------------------------------------------------------------------------------------------


def test_app_exception_after_accept_closes_1011_with_a_logged_traceback(ws_server: Server) -> None:
    with ws_connect(ws_server, "/raise-after-accept") as ws:
        ws.send("trigger")
        with pytest.raises(ConnectionClosedError) as caught:
            ws.recv(timeout=TIMEOUT)
    assert caught.value.rcvd is not None and caught.value.rcvd.code == 1011
    assert ws_server.wait_for_stderr("RuntimeError: boom after accept")
    assert "Traceback" in ws_server.stderr_text()


def test_app_close_code_and_reason_reach_the_client(ws_server: Server) -> None:
    with ws_connect(ws_server, "/close-4000") as ws, pytest.raises(ConnectionClosed) as caught:
        ws.recv(timeout=TIMEOUT)
    assert caught.value.rcvd is not None
    assert (caught.value.rcvd.code, caught.value.rcvd.reason) == (4000, "bye")


def test_client_close_code_reaches_the_app(ws_server: Server) -> None:
    before = disconnect_count(ws_server, "/echo", 4100)
    with ws_connect(ws_server, "/echo") as ws:
        ws.close(4100, "client done")
    assert wait_until(lambda: disconnect_count(ws_server, "/echo", 4100) > before, TIMEOUT)


def test_a_client_that_vanishes_gets_the_app_a_disconnect(ws_server: Server) -> None:
    before = disconnect_count(ws_server, "/echo", 1006)
    sock = raw_handshake(ws_server.port)
    # SO_LINGER 0: close with a reset, no close frame and no FIN handshake.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
    assert wait_until(lambda: disconnect_count(ws_server, "/echo", 1006) > before, TIMEOUT)


def test_a_protocol_violation_closes_1002(ws_server: Server) -> None:
    with raw_handshake(ws_server.port) as sock:
        sock.sendall(client_frame(0x1, b"unmasked", mask=False))
        opcode, payload = read_frame(sock)
        assert opcode == 0x8 and struct.unpack("!H", payload[:2])[0] == 1002


def test_a_message_over_ws_max_size_closes_1009(tight_server: Server) -> None:
    with ws_connect(tight_server, "/echo") as ws:
        ws.send(b"x" * 1000)
        assert ws.recv(timeout=TIMEOUT) == b"x" * 1000
        ws.send(b"x" * 2000)
        with pytest.raises(ConnectionClosedError) as caught:
            ws.recv(timeout=TIMEOUT)
    assert caught.value.rcvd is not None and caught.value.rcvd.code == 1009


def test_a_peer_that_stops_answering_pings_is_closed_1011(tight_server: Server) -> None:
    before = disconnect_count(tight_server, "/echo", 1011)
    with raw_handshake(tight_server.port) as sock:
        opcodes: list[int] = []
        for _ in range(10):  # a ping, then (unanswered) the close; bounded by the socket timeout too
            opcode, payload = read_frame(sock)
            opcodes.append(opcode)
            if opcode == 0x8:
                assert struct.unpack("!H", payload[:2])[0] == 1011
                break
        assert opcodes[0] == 0x9 and opcodes[-1] == 0x8
        assert sock.recv(1) == b""  # and the server closed the TCP connection
    assert wait_until(lambda: disconnect_count(tight_server, "/echo", 1011) > before, TIMEOUT)


def test_a_peer_that_answers_pings_stays_connected(tight_server: Server) -> None:
    with ws_connect(tight_server, "/echo", ping_interval=None) as ws:
        deadline = time.monotonic() + 3.5  # several ping intervals and timeouts of this server
        for _ in range(100):
            if time.monotonic() > deadline:
                break
            ws.send("still here")
            assert ws.recv(timeout=TIMEOUT) == "still here"
            time.sleep(0.25)


# --- drain --------------------------------------------------------------------------------------------


def test_shutdown_closes_websockets_with_1001(serve: ServerFactory) -> None:
    server = serve(APP)
    with ws_connect(server, "/echo") as ws:
        ws.send("hi")
        assert ws.recv(timeout=TIMEOUT) == "hi"
        server.signal(signal.SIGTERM)
        with pytest.raises(ConnectionClosed) as caught:
            ws.recv(timeout=TIMEOUT)
    assert caught.value.rcvd is not None and caught.value.rcvd.code == 1001
    assert server.wait(TIMEOUT) == 0
    assert disconnect_count(server, "/echo", 1001) == 1


def test_reload_closes_websockets_with_1012_and_new_ones_reach_the_new_worker(serve: ServerFactory) -> None:
    server = serve(APP)
    old = wait_for_ready_workers(server, 1)
    with ws_connect(server, "/echo") as ws:
        server.signal(signal.SIGHUP)
        with pytest.raises(ConnectionClosed) as caught:
            ws.recv(timeout=2 * TIMEOUT)
    assert caught.value.rcvd is not None and caught.value.rcvd.code == 1012
    new = wait_for_ready_workers(server, 1)
    assert not new & old
    with ws_connect(server, "/echo") as ws:
        ws.send("after the reload")
        assert ws.recv(timeout=TIMEOUT) == "after the reload"
    assert wait_until(lambda: disconnect_count(server, "/echo", 1012) == 1, TIMEOUT)


# --- frameworks ---------------------------------------------------------------------------------------


def test_fastapi_websocket_route(serve_module: ServerFactory) -> None:
    server = serve_module("tests.apps.websocket_apps:fastapi_app")
    with ws_connect(server, "/ws/lobby") as ws:
        ws.send(json.dumps({"n": 1}))
        assert json.loads(ws.recv(timeout=TIMEOUT)) == {"room": "lobby", "echo": {"n": 1}}
        ws.send(json.dumps({"n": 2}))
        assert json.loads(ws.recv(timeout=TIMEOUT)) == {"room": "lobby", "echo": {"n": 2}}
    assert wait_until(lambda: "websocket.disconnect path=/ws/lobby code=1000" in server.stderr_text(), TIMEOUT)
