"""The WebSocket opening handshake (RFC 6455 4.2): checking a client's Upgrade request, negotiating
permessage-deflate (RFC 7692), and the bytes of the server's answers (101, or an HTTP denial).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from websockets.exceptions import InvalidHeader, NegotiationError
from websockets.extensions import Extension
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.headers import build_extension, parse_extension

from corral.http.errors import HTTPError

__all__ = [
    "Handshake",
    "HandshakeError",
    "UnsupportedVersion",
    "accept_key",
    "accept_response",
    "check_handshake",
    "denial_response",
    "is_websocket_upgrade",
]

# RFC 6455 1.3: the GUID a server appends to the client's key to prove it speaks WebSocket.
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

# The permessage-deflate parameters the websockets library recommends for servers: a 4 KiB window and
# memLevel 5 keep each connection's zlib state near 64 KiB instead of over 300 KiB, for a small loss of ratio.
_DEFLATE = ServerPerMessageDeflateFactory(
    server_max_window_bits=12,
    client_max_window_bits=12,
    compress_settings={"memLevel": 5},
)

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_FORBIDDEN_IN_VALUE = re.compile(rb"[\r\n\0]")

# Response headers the handshake owns: an app that sets them would break the upgrade.
_HANDSHAKE_HEADERS = frozenset(
    {b"upgrade", b"connection", b"sec-websocket-accept", b"sec-websocket-extensions", b"content-length",
     b"transfer-encoding"}
)  # fmt: skip
_SUBPROTOCOL_HEADER = b"sec-websocket-protocol"
# Headers of a denial response the server frames itself (the app's are dropped).
_DENIAL_FRAMING = frozenset({b"content-length", b"transfer-encoding", b"connection"})


class HandshakeError(HTTPError):
    """An Upgrade: websocket request that is not a valid opening handshake (400)."""

    status = 400


class UnsupportedVersion(HTTPError):
    """A handshake for a WebSocket version other than 13: 426 naming the one we speak (RFC 6455 4.4)."""

    status = 426
    headers = b"upgrade: websocket\r\nsec-websocket-version: 13\r\n"


@dataclass(frozen=True, slots=True)
class Handshake:
    """What a valid opening handshake asked for, and the extension agreed for it."""

    key: bytes
    subprotocols: list[str]
    extensions_header: bytes | None  # the Sec-WebSocket-Extensions answer, or None
    extension: Extension | None  # the negotiated permessage-deflate, or None


def is_websocket_upgrade(upgrade: bytes) -> bool:
    """Whether an Upgrade header value asks for WebSocket (other upgrades, such as h2c, are ignored)."""
    return b"websocket" in _tokens(upgrade)


def _tokens(value: bytes) -> set[bytes]:
    return {token.strip().lower() for token in value.split(b",")}


def check_handshake(
    method: str, http_version: str, headers: Iterable[tuple[bytes, bytes]], *, deflate: bool = True
) -> Handshake:
    """Validate an opening handshake whose Upgrade header names websocket; raise HandshakeError (400) or
    UnsupportedVersion (426) with the reason. `deflate` allows negotiating permessage-deflate."""
    if method != "GET":
        raise HandshakeError("a WebSocket handshake must be a GET request")
    if http_version != "1.1":
        raise HandshakeError("a WebSocket handshake needs HTTP/1.1")
    connection: set[bytes] = set()
    keys: list[bytes] = []
    versions: list[bytes] = []
    protocols: list[bytes] = []
    extensions: list[bytes] = []
    for name, value in headers:
        if name == b"connection":
            connection |= _tokens(value)
        elif name == b"sec-websocket-key":
            keys.append(value)
        elif name == b"sec-websocket-version":
            versions.append(value)
        elif name == b"sec-websocket-protocol":
            protocols.append(value)
        elif name == b"sec-websocket-extensions":
            extensions.append(value)
        elif name == b"transfer-encoding" or (name == b"content-length" and value.strip() != b"0"):
            raise HandshakeError("a WebSocket handshake has no body")
    if b"upgrade" not in connection:
        raise HandshakeError("the Connection header must include 'upgrade'")
    if len(versions) != 1:
        raise HandshakeError("exactly one Sec-WebSocket-Version header is required")
    if versions[0].strip() != b"13":
        raise UnsupportedVersion("only WebSocket version 13 is supported")
    key = _check_key(keys)
    header, extension = _negotiate_deflate(extensions) if deflate and extensions else (None, None)
    return Handshake(key, _subprotocols(protocols), header, extension)


def _check_key(keys: list[bytes]) -> bytes:
    if len(keys) != 1:
        raise HandshakeError("exactly one Sec-WebSocket-Key header is required")
    key = keys[0].strip()
    try:
        raw = base64.b64decode(key, validate=True)
    except binascii.Error:
        raise HandshakeError("Sec-WebSocket-Key is not base64") from None
    if len(raw) != 16:
        raise HandshakeError("Sec-WebSocket-Key must be 16 bytes, base64-encoded")
    return key


def _subprotocols(values: list[bytes]) -> list[str]:
    names = (name.strip() for value in values for name in value.split(b","))
    return [name.decode("latin-1") for name in names if name]


def _negotiate_deflate(values: list[bytes]) -> tuple[bytes | None, Extension | None]:
    """Accept the first permessage-deflate offer we can honour (RFC 7692 5); decline the others."""
    try:
        offers = [offer for value in values for offer in parse_extension(value.decode("latin-1"))]
    except InvalidHeader as exc:
        raise HandshakeError(f"invalid Sec-WebSocket-Extensions header: {exc}") from None
    for name, params in offers:
        if name != _DEFLATE.name:
            continue
        try:
            response_params, extension = _DEFLATE.process_request_params(params, [])
        except NegotiationError:
            continue  # this variant asks for something we cannot do; a later one may be fine
        return build_extension([(name, response_params)]).encode("latin-1"), extension
    return None, None


def accept_key(key: bytes) -> bytes:
    """Sec-WebSocket-Accept for a client's Sec-WebSocket-Key (RFC 6455 4.2.2)."""
    return base64.b64encode(hashlib.sha1(key + _GUID).digest())


def accept_response(
    handshake: Handshake, default_headers: bytes, subprotocol: Any, app_headers: Any, offered: list[str]
) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """The 101 answer to send when the app accepts, and the headers it carries (for the access log).

    Raises RuntimeError or TypeError for what the app asked that cannot be sent.
    """
    app_headers = list(app_headers)
    headers = [
        (b"upgrade", b"websocket"),
        (b"connection", b"Upgrade"),
        (b"sec-websocket-accept", accept_key(handshake.key)),
    ]
    if handshake.extensions_header is not None:
        headers.append((b"sec-websocket-extensions", handshake.extensions_header))
    if subprotocol is not None:
        if subprotocol not in offered:
            raise RuntimeError(f"ASGI app accepted subprotocol {subprotocol!r}, which the client did not offer")
        headers.append((_SUBPROTOCOL_HEADER, subprotocol.encode("latin-1")))
    lines, defaults = _app_header_lines(app_headers, default_headers, _HANDSHAKE_HEADERS)
    head = [b"HTTP/1.1 101 Switching Protocols\r\n", defaults]
    head.extend(b"%s: %s\r\n" % pair for pair in headers)
    head.extend(lines)
    head.append(b"\r\n")
    return b"".join(head), headers + app_headers


def denial_response(status: Any, app_headers: Any, body: bytes, default_headers: bytes) -> bytes:
    """A complete `Connection: close` HTTP response for an app that rejects the handshake."""
    if type(status) is not int or not 100 <= status <= 599:
        raise RuntimeError(f"ASGI response status must be an int in 100..599, got {status!r}")
    try:
        phrase = HTTPStatus(status).phrase.encode("ascii")
    except ValueError:
        phrase = b""
    lines, defaults = _app_header_lines(app_headers, default_headers, _DENIAL_FRAMING, drop=True)
    head = [b"HTTP/1.1 %d %s\r\n" % (status, phrase), defaults, *lines]
    head.append(b"connection: close\r\ncontent-length: %d\r\n\r\n" % len(body))
    return b"".join(head) + body


def _app_header_lines(
    app_headers: Any, default_headers: bytes, owned: frozenset[bytes], *, drop: bool = False
) -> tuple[list[bytes], bytes]:
    """Validated header lines from an ASGI message, and the server's defaults minus those the app set.

    Headers in `owned` belong to the server: dropped when `drop`, refused otherwise.
    """
    lines: list[bytes] = []
    overridden: set[bytes] = set()
    for name, value in app_headers:
        if not isinstance(name, bytes) or not isinstance(value, bytes):
            raise TypeError("ASGI header names and values must be bytes")
        lname = name.lower()
        if not _TOKEN.fullmatch(name):
            raise RuntimeError(f"invalid response header name {name!r}")
        if _FORBIDDEN_IN_VALUE.search(value):
            raise RuntimeError("invalid character (CR, LF or NUL) in an ASGI response header value")
        if lname == _SUBPROTOCOL_HEADER and not drop:
            raise RuntimeError("use the 'subprotocol' key of websocket.accept, not a sec-websocket-protocol header")
        if lname in owned:
            if drop:
                continue
            raise RuntimeError(f"the {name.decode()} header is set by the server during a WebSocket handshake")
        if lname in (b"server", b"date"):
            overridden.add(lname)
        lines.append(b"%s: %s\r\n" % (name, value))
    if overridden:
        kept = (line for line in default_headers.split(b"\r\n") if line)
        default_headers = b"".join(line + b"\r\n" for line in kept if line.split(b":", 1)[0].lower() not in overridden)
    return lines, default_headers
