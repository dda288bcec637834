"""The PROXY protocol: the header parser on byte strings, and the gate in front of HTTP on a fake transport."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import struct
from collections.abc import Callable
from typing import Any

import pytest

from corral.http import eager
from corral.http.h1 import H1Protocol
from corral.http.proxy import ProxyTrust
from corral.http.proxy_protocol import (
    V2_MAX_PAYLOAD,
    V2_SIGNATURE,
    ProxyHeader,
    ProxyProtocolError,
    ProxyProtocolGate,
    parse_proxy_header,
    starts_like_proxy_header,
)
from tests.unit.fakes import FakeTransport, server_state

eager.install()

V1_TCP4 = b"PROXY TCP4 203.0.113.7 192.0.2.1 51000 443\r\n"
V1_TCP6 = b"PROXY TCP6 2001:db8::7 2001:db8::1 51000 443\r\n"


def v2(command: int, family: int, body: bytes, protocol: int = 1) -> bytes:
    return V2_SIGNATURE + bytes([0x20 | command, family << 4 | protocol]) + struct.pack("!H", len(body)) + body


def v2_inet(client: str, server: str, client_port: int, server_port: int, tlvs: bytes = b"") -> bytes:
    first, second = ipaddress.ip_address(client), ipaddress.ip_address(server)
    family = 1 if first.version == 4 else 2
    return v2(1, family, first.packed + second.packed + struct.pack("!HH", client_port, server_port) + tlvs)


# --- the parser ---------------------------------------------------------------------------------


def test_v1_tcp4_and_tcp6_give_the_client_and_server_addresses() -> None:
    assert parse_proxy_header(V1_TCP4 + b"GET /") == ProxyHeader(
        len(V1_TCP4), local=False, client=("203.0.113.7", 51000), server=("192.0.2.1", 443)
    )
    header = parse_proxy_header(V1_TCP6)
    assert header is not None and header.client == ("2001:db8::7", 51000) and header.length == len(V1_TCP6)


def test_v1_unknown_keeps_the_connection_addresses() -> None:
    assert parse_proxy_header(b"PROXY UNKNOWN\r\n") == ProxyHeader(15, local=True)
    assert parse_proxy_header(b"PROXY UNKNOWN ff:: 1.2.3.4 1 2\r\n") == ProxyHeader(32, local=True)


def test_a_partial_header_asks_for_more_bytes() -> None:
    for header in (V1_TCP4, v2_inet("203.0.113.7", "192.0.2.1", 51000, 443)):
        for size in range(1, len(header)):
            assert parse_proxy_header(header[:size]) is None, size


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\n",
        b"PROXY TCP4 203.0.113.7 192.0.2.1 51000\r\n",
        b"PROXY TCP4 2001:db8::7 192.0.2.1 51000 443\r\n",
        b"PROXY TCP5 203.0.113.7 192.0.2.1 51000 443\r\n",
        b"PROXY TCP4 203.0.113.7 192.0.2.1 51000 65536\r\n",
        b"PROXY TCP4 203.0.113.7 192.0.2.1 051000 443\r\n",
        b"PROXY TCP4 203.0.113.7  192.0.2.1 51000 443\r\n",
        b"PROXY TCP4 203.0.113.7 192.0.2.1 51000 443\n",
        b"PROXY TCP4 " + b"1" * 120,
        b"PROXY TCP4 1.2.3.4%eth0 192.0.2.1 1 2\r\n",
    ],
)
def test_a_malformed_v1_header_is_refused(data: bytes) -> None:
    with pytest.raises(ProxyProtocolError):
        parse_proxy_header(data)


def test_v1_header_is_bounded_at_107_bytes() -> None:
    longest = (
        b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n"
    )
    assert len(longest) == 104
    assert parse_proxy_header(longest) is not None
    with pytest.raises(ProxyProtocolError):
        parse_proxy_header(b"PROXY UNKNOWN " + b"x" * 100)


def test_v2_inet_and_inet6_give_the_client_and_server_addresses() -> None:
    data = v2_inet("203.0.113.7", "192.0.2.1", 51000, 443)
    assert parse_proxy_header(data + b"GET /") == ProxyHeader(
        len(data), local=False, client=("203.0.113.7", 51000), server=("192.0.2.1", 443)
    )
    header = parse_proxy_header(v2_inet("2001:db8::7", "2001:db8::1", 1, 2))
    assert header is not None and header.client == ("2001:db8::7", 1) and header.server == ("2001:db8::1", 2)


def test_v2_tlvs_are_skipped() -> None:
    tlvs = b"\x01\x00\x08http/1.1" + b"\x05\x00\x04abcd"
    data = v2_inet("203.0.113.7", "192.0.2.1", 51000, 443, tlvs)
    header = parse_proxy_header(data + b"GET")
    assert header is not None and header.length == len(data) and header.client == ("203.0.113.7", 51000)


def test_v2_local_and_unspec_keep_the_connection_addresses() -> None:
    assert parse_proxy_header(v2(0, 0, b"")) == ProxyHeader(16, local=True)
    assert parse_proxy_header(v2(0, 1, bytes(12))) == ProxyHeader(28, local=True)  # LOCAL with addresses
    assert parse_proxy_header(v2(1, 0, b"", protocol=0)) == ProxyHeader(16, local=True)


def test_v2_unix_source_has_no_client_address() -> None:
    assert parse_proxy_header(v2(1, 3, bytes(216))) == ProxyHeader(232, local=False, client=None, server=None)


@pytest.mark.parametrize(
    "data",
    [
        V2_SIGNATURE[:11] + b"X" + bytes(4),
        V2_SIGNATURE + b"\x11\x11\x00\x00",  # version 1
        V2_SIGNATURE + b"\x22\x11\x00\x00",  # command 2
        v2(1, 4, bytes(12)),  # family 4
        v2(1, 1, bytes(12), protocol=2),  # datagram
        v2(1, 1, bytes(11)),  # address block too short
        v2(1, 2, bytes(12)),  # an IPv6 block needs 36 bytes
        V2_SIGNATURE + b"\x21\x11" + struct.pack("!H", V2_MAX_PAYLOAD + 1),
    ],
)
def test_a_malformed_v2_header_is_refused(data: bytes) -> None:
    with pytest.raises(ProxyProtocolError):
        parse_proxy_header(data)


def test_starts_like_proxy_header_tells_http_from_a_header() -> None:
    assert starts_like_proxy_header(b"POST / HTTP/1.1") is False
    assert starts_like_proxy_header(b"PRO") is None
    assert starts_like_proxy_header(b"PROXY TCP4") is True
    assert starts_like_proxy_header(V2_SIGNATURE[:5]) is None
    assert starts_like_proxy_header(V2_SIGNATURE) is True
    assert starts_like_proxy_header(b"\r\n\r\nGET") is False


# --- the gate -----------------------------------------------------------------------------------


async def show_client(scope: dict, receive: Callable, send: Callable) -> None:
    client = scope["client"]
    forwarded = dict(scope["headers"]).get(b"host", b"")
    body = f"{client[0] if client else None} {scope['server'][0]} {scope['scheme']} {forwarded.decode()}"
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body.encode()})


class SwitchingTransport(FakeTransport):
    """A transport that remembers which protocol it delivers to, as asyncio's do."""

    protocol: Any = None

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.protocol = protocol


class Gate:
    def __init__(self, peer: tuple[str, int] = ("127.0.0.1", 40000), allow: str = "127.0.0.1") -> None:
        self.state = server_state(show_client, forwarded_allow_ips="127.0.0.1,::1", secure_scheme_headers={})
        self.transport = SwitchingTransport(peer)
        self.inner = H1Protocol(self.state)
        self.transport.protocol = ProxyProtocolGate(self.inner, ProxyTrust.from_setting(allow, {}))
        self.transport.protocol.connection_made(self.transport)

    def feed(self, *chunks: bytes) -> None:
        for chunk in chunks:
            self.transport.protocol.data_received(chunk)

    async def settle(self) -> None:
        for _ in range(20):
            await asyncio.sleep(0)

    @property
    def body(self) -> bytes:
        return bytes(self.transport.written).partition(b"\r\n\r\n")[2]


def run(coro: Any) -> None:
    asyncio.run(asyncio.wait_for(coro, 10))


def test_the_app_sees_the_client_from_the_header_and_http_goes_on() -> None:
    async def main() -> None:
        gate = Gate()
        request = b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 198.51.100.1\r\n\r\n"
        gate.feed(V1_TCP4[:9], V1_TCP4[9:] + request[:5], request[5:])
        await gate.settle()
        # The real client is not a trusted proxy: its own X-Forwarded-For is not believed.
        assert gate.body == b"203.0.113.7 127.0.0.1 http a"
        assert gate.transport.protocol is gate.inner
        assert not gate.transport.closed

    run(main())


def test_a_local_header_keeps_the_peer_address() -> None:
    async def main() -> None:
        gate = Gate()
        gate.feed(v2(0, 0, b"") + b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        await gate.settle()
        assert gate.body == b"127.0.0.1 127.0.0.1 http a"

    run(main())


def test_a_trusted_peer_without_a_header_is_closed_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        gate = Gate()
        with caplog.at_level(logging.WARNING):
            gate.feed(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        assert gate.transport.closed
        assert gate.transport.written.startswith(b"HTTP/1.1 400 Bad Request\r\n")
        assert b"connection: close\r\n" in gate.transport.written
        assert gate.state.counters.responses[3] == 1
        assert "no PROXY protocol header" in caplog.text

    run(main())


def test_an_untrusted_peer_sending_a_header_is_closed() -> None:
    async def main() -> None:
        gate = Gate(peer=("198.51.100.9", 40000))
        gate.feed(b"PRO", b"XY TCP4 1.2.3.4 5.6.7.8 1 2\r\n")
        assert gate.transport.closed
        assert gate.transport.written.startswith(b"HTTP/1.1 403 Forbidden\r\n")
        assert gate.state.counters.responses[3] == 1

    run(main())


def test_an_untrusted_peer_speaking_plain_http_is_served() -> None:
    async def main() -> None:
        gate = Gate(peer=("198.51.100.9", 40000))
        gate.feed(b"P", b"OST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n")
        await gate.settle()
        assert gate.body == b"198.51.100.9 127.0.0.1 http a"

    run(main())


def test_a_partial_header_is_cut_by_the_header_timeout() -> None:
    async def main() -> None:
        gate = Gate()
        gate.feed(b"PROXY TCP4 1.2.3.4")
        gate.inner.check_timeouts(gate.state.clock + gate.state.header_timeout + 1)
        assert gate.transport.closed

    run(main())


# --- the settings -------------------------------------------------------------------------------


def test_proxy_protocol_with_tls_is_a_config_error() -> None:
    from corral.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"^proxy_protocol: cannot be combined with TLS"):
        load_config(["app:app", "--proxy-protocol", "--certfile", "cert.pem"], environ={}, cwd="/")
    cfg = load_config(
        ["app:app", "--proxy-protocol", "--proxy-allow-from", "10.0.0.0/8, 127.0.0.1"], environ={}, cwd="/"
    )
    assert cfg.proxy_protocol is True and cfg.proxy_allow_ips == "10.0.0.0/8,127.0.0.1"
    with pytest.raises(ConfigError, match=r"^proxy_allow_ips: "):
        load_config(["app:app", "--proxy-allow-from", "nginx"], environ={}, cwd="/")
