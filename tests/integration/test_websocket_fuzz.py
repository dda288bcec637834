"""Random frames from a raw socket never crash or wedge the worker (hypothesis, a bounded number of examples)."""

from __future__ import annotations

import socket
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.integration.conftest import Server, ServerFactory, child_pids, exchange, read_to_eof
from tests.integration.test_websocket import APP, client_frame, raw_handshake

OPCODES = [0x0, 0x1, 0x2, 0x3, 0x7, 0x8, 0x9, 0xA, 0xB, 0xF]


@st.composite
def frames(draw: st.DrawFn) -> bytes:
    """A frame that is often well-formed and often not: any opcode, RSV bits, masking, a lying length."""
    payload = draw(st.binary(max_size=300))
    frame = client_frame(
        draw(st.sampled_from(OPCODES)),
        payload,
        fin=draw(st.booleans()),
        rsv=draw(st.sampled_from([0, 0, 0, 1, 2, 4, 7])),
        mask=draw(st.booleans()) or draw(st.booleans()),  # masked three times in four
    )
    if draw(st.integers(0, 9)) == 0:  # now and then a length field that does not match the payload
        frame = frame[:1] + bytes([0x80 | 126]) + struct.pack("!H", draw(st.integers(0, 0xFFFF))) + frame[2:]
    return frame


payloads = st.one_of(
    st.lists(frames(), min_size=1, max_size=6).map(b"".join),
    st.binary(min_size=1, max_size=400),
)


@pytest.fixture(scope="module")
def fuzz_server(serve_module: ServerFactory) -> Server:
    return serve_module(APP, "--ws-max-size", "65536")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=payloads)
def test_random_frames_never_crash_or_wedge_the_worker(fuzz_server: Server, data: bytes) -> None:
    workers = child_pids(fuzz_server.proc.pid)
    with raw_handshake(fuzz_server.port) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server may already have failed the connection and reset it
        _, closed = read_to_eof(sock, timeout=10)
    assert closed, "the server left the connection open after the client's EOF"
    assert child_pids(fuzz_server.proc.pid) == workers, fuzz_server.stderr_text()
    answer = exchange(fuzz_server.port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert [response.status for response in answer.responses()] == [200]
    log = fuzz_server.stderr_text()
    assert "Traceback" not in log and "parser failed" not in log, log
