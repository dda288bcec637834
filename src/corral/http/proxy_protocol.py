"""The PROXY protocol (HAProxy's, versions 1 and 2): parsing the header a load balancer sends before the first
byte of a connection, and the gate that reads it before HTTP gets the connection.

Only used with `proxy_protocol` on: the worker then gives each new connection a `ProxyProtocolGate` in front of
its `H1Protocol`; with the setting off nothing here runs. Decisions:

* A peer in `proxy_allow_ips` (or a unix-socket peer) must start with a valid header; anything else closes the
  connection. The header's source address becomes the request's client (scope and access log). Gunicorn also
  serves a trusted peer that sends no header; we do not, because a proxy configured to send the header always
  does, and a connection without one is then a misconfiguration or someone else on the trusted network.
* A peer outside `proxy_allow_ips` that starts with a header is closed (it would choose its own address);
  one that starts with anything else is served as plain HTTP.
* LOCAL (v2 health checks), UNKNOWN (v1) and UNSPEC (v2) keep the connection's own client address. A v2
  AF_UNIX source has no address an ASGI scope can carry: the client is then None. TLVs are skipped.
  `scope["server"]` stays the listening address, as the ASGI spec defines it and as proxy headers leave it;
  the header's destination address is parsed (and validated) but not used.
* Bounded: a v1 header is at most 107 bytes (the spec's limit), a v2 header at most 16 + `V2_MAX_PAYLOAD`
  bytes. The header is read under the same header timeout as a request head.
* A refusal is answered like a bad request (400; 403 for a header from an untrusted peer, as Gunicorn does)
  with `Connection: close`, logged (one warning line), and counted as a refusal in the worker's counters.
* TLS is not combined with the PROXY protocol: the header arrives before the TLS handshake, which asyncio's
  TLS transport would take as handshake bytes; the configuration refuses the pair.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from corral.http.errors import BadRequest

if TYPE_CHECKING:
    from corral.http.h1 import H1Protocol
    from corral.http.proxy import ProxyTrust

__all__ = [
    "V1_MAX_LENGTH",
    "V2_MAX_PAYLOAD",
    "V2_SIGNATURE",
    "ProxyHeader",
    "ProxyProtocolError",
    "ProxyProtocolGate",
    "UntrustedProxyHeader",
    "gate_factory",
    "parse_proxy_header",
    "starts_like_proxy_header",
]

V1_MAX_LENGTH = 107  # "PROXY TCP6 <39> <39> <5> <5>\r\n", the limit the specification sets
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
# Addresses (at most 216 bytes, AF_UNIX) plus TLVs: HAProxy's own TLVs (ALPN, authority, unique id, TLS facts)
# and the cloud load balancers' stay far below this.
V2_MAX_PAYLOAD = 4096
_V1_PREFIX = b"PROXY "
_V2_HEADER = 16
_V2_ADDRESS_LENGTHS = {0x1: 12, 0x2: 36, 0x3: 216}  # AF_INET, AF_INET6, AF_UNIX
_STREAM = 0x1

Address = tuple[str, int]


class ProxyProtocolError(BadRequest):
    """The bytes are not a valid PROXY protocol header (400)."""


class UntrustedProxyHeader(ProxyProtocolError):
    """A PROXY header from a peer not in proxy_allow_ips (403, as Gunicorn answers it)."""

    status = 403


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """A parsed header: its length in bytes, and the addresses it gives unless `local`."""

    length: int
    local: bool  # LOCAL, UNKNOWN or UNSPEC: keep the connection's own addresses
    client: Address | None = None
    server: Address | None = None


_NO_HEADER = ProxyHeader(0, local=True)  # an untrusted peer speaking plain HTTP


def starts_like_proxy_header(data: bytes) -> bool | None:
    """Whether `data` begins a PROXY header (v1 or v2); None while too few bytes arrived to tell."""
    for prefix in (_V1_PREFIX, V2_SIGNATURE):
        size = min(len(data), len(prefix))
        if data[:size] == prefix[:size]:
            return True if size == len(prefix) else None
    return False


def parse_proxy_header(data: bytes) -> ProxyHeader | None:
    """The header at the start of `data`; None if more bytes are needed. Raises ProxyProtocolError."""
    if data[:1] == b"P":
        return _parse_v1(data)
    if data[:1] == b"\r":
        return _parse_v2(data)
    raise ProxyProtocolError("no PROXY protocol header")


def _parse_v1(data: bytes) -> ProxyHeader | None:
    if data[:6] != _V1_PREFIX[: min(len(data), 6)]:
        raise ProxyProtocolError("no PROXY protocol header")
    end = data.find(b"\r\n", 0, V1_MAX_LENGTH)
    if end < 0:
        if len(data) >= V1_MAX_LENGTH or b"\n" in data:
            raise ProxyProtocolError("v1 header without CRLF within 107 bytes")
        return None
    fields = data[6:end].split(b" ")
    if fields[0] == b"UNKNOWN":
        return ProxyHeader(end + 2, local=True)
    if len(fields) != 5 or fields[0] not in (b"TCP4", b"TCP6"):
        raise ProxyProtocolError("malformed v1 header")
    version = 4 if fields[0] == b"TCP4" else 6
    source = _v1_address(fields[1], version)
    destination = _v1_address(fields[2], version)
    return ProxyHeader(
        end + 2, local=False, client=(source, _v1_port(fields[3])), server=(destination, _v1_port(fields[4]))
    )


def _v1_address(text: bytes, version: int) -> str:
    try:
        address = ipaddress.ip_address(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise ProxyProtocolError("malformed v1 address") from None
    if address.version != version:
        raise ProxyProtocolError("v1 address of the wrong family")
    return str(address)


def _v1_port(text: bytes) -> int:
    if not text.isdigit() or len(text) > 5 or (len(text) > 1 and text[:1] == b"0"):
        raise ProxyProtocolError("malformed v1 port")
    port = int(text)
    if port > 65535:
        raise ProxyProtocolError("malformed v1 port")
    return port


def _parse_v2(data: bytes) -> ProxyHeader | None:
    if data[:12] != V2_SIGNATURE[: min(len(data), 12)]:
        raise ProxyProtocolError("no PROXY protocol header")
    if len(data) < _V2_HEADER:
        return None
    version_command, family_protocol = data[12], data[13]
    payload = int.from_bytes(data[14:16], "big")
    if version_command >> 4 != 2:
        raise ProxyProtocolError("unknown v2 version")
    command = version_command & 0xF
    if command > 1:
        raise ProxyProtocolError("unknown v2 command")
    if payload > V2_MAX_PAYLOAD:
        raise ProxyProtocolError(f"v2 header longer than {V2_MAX_PAYLOAD} bytes")
    length = _V2_HEADER + payload
    if len(data) < length:
        return None
    family, protocol = family_protocol >> 4, family_protocol & 0xF
    if command == 0 or family == 0:  # LOCAL (the proxy's own health check), or UNSPEC: nothing to use
        return ProxyHeader(length, local=True)
    if family not in _V2_ADDRESS_LENGTHS:
        raise ProxyProtocolError("unknown v2 address family")
    if protocol != _STREAM:
        raise ProxyProtocolError("v2 header for a transport other than a stream")
    if payload < _V2_ADDRESS_LENGTHS[family]:
        raise ProxyProtocolError("v2 address block too short")
    body = data[_V2_HEADER:length]
    if family == 0x3:
        return ProxyHeader(length, local=False)  # a unix socket path is no ASGI client address
    size = 4 if family == 0x1 else 16
    client = (_v2_address(body[:size]), int.from_bytes(body[2 * size : 2 * size + 2], "big"))
    server = (_v2_address(body[size : 2 * size]), int.from_bytes(body[2 * size + 2 : 2 * size + 4], "big"))
    return ProxyHeader(length, local=False, client=client, server=server)


def _v2_address(packed: bytes) -> str:
    return str(ipaddress.ip_address(packed))


class ProxyProtocolGate(asyncio.Protocol):
    """A new connection's first protocol: reads the PROXY header, then hands the transport to HTTP."""

    __slots__ = ("buffer", "expected", "inner", "transport", "trust")

    def __init__(self, inner: H1Protocol, trust: ProxyTrust) -> None:
        self.inner = inner
        self.trust = trust
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.expected = False  # the peer is trusted, so it must send a header

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        inner = self.inner
        inner.connection_made(transport)
        if inner.closing:
            return  # refused (worker_connections)
        self.expected = self.trust.is_trusted(inner.client[0] if inner.client else None)

    def data_received(self, data: bytes) -> None:
        inner = self.inner
        if inner.closing:
            return
        buffer = self.buffer + data if self.buffer else data
        try:
            header = self._read(buffer)
        except ProxyProtocolError as exc:
            self._refuse(exc)
            return
        if header is None:
            self.buffer = buffer
            inner.proxy_header_waiting()
            return
        self.buffer = b""
        if header.length:
            inner.state.counters.bytes_in += header.length
            buffer = buffer[header.length :]
        if not header.local:
            inner.proxied(header.client)
        inner.proxy_header_done()
        self.transport.set_protocol(inner)  # type: ignore[union-attr]
        if buffer:
            inner.data_received(buffer)

    def _read(self, buffer: bytes) -> ProxyHeader | None:
        """The header of a trusted peer; for another peer, no header (plain HTTP); None until enough bytes."""
        if self.expected:
            return parse_proxy_header(buffer)
        looks = starts_like_proxy_header(buffer)
        if looks:
            raise UntrustedProxyHeader("PROXY protocol header from a peer not in proxy_allow_ips")
        return None if looks is None else _NO_HEADER

    def _refuse(self, error: ProxyProtocolError) -> None:
        """Answer with the error's status, close, log one line; the refusal is counted like a bad request's."""
        inner = self.inner
        client = inner.client
        peer = f"{client[0]}:{client[1]}" if client else "a unix socket peer"
        inner.state.logger.warning("Closing a connection from %s: %s", peer, error.reason)
        self.buffer = b""
        inner.refuse_connection(error.status, error.reason)

    def connection_lost(self, exc: Exception | None) -> None:
        self.inner.connection_lost(exc)

    def eof_received(self) -> bool | None:
        return None  # a peer that stops before its header has nothing to be answered: close

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


def gate_factory(inner_factory: Callable[[], H1Protocol], trust: ProxyTrust) -> Callable[[], ProxyProtocolGate]:
    """A protocol factory that puts a gate in front of each protocol `inner_factory` makes."""

    def factory() -> ProxyProtocolGate:
        return ProxyProtocolGate(inner_factory(), trust)

    return factory
