"""The WebSocket opening handshake as pure functions: validation, permessage-deflate negotiation, the answers."""

from __future__ import annotations

import pytest

from corral.http.ws_handshake import (
    HandshakeError,
    UnsupportedVersion,
    accept_key,
    accept_response,
    check_handshake,
    denial_response,
    is_websocket_upgrade,
)

KEY = b"dGhlIHNhbXBsZSBub25jZQ=="
DEFAULTS = b"server: corral\r\ndate: Thu, 01 Jan 2026 00:00:00 GMT\r\n"


def headers(*extra: tuple[bytes, bytes], without: bytes = b"") -> list[tuple[bytes, bytes]]:
    base = [
        (b"host", b"example.test"),
        (b"upgrade", b"websocket"),
        (b"connection", b"keep-alive, Upgrade"),
        (b"sec-websocket-key", KEY),
        (b"sec-websocket-version", b"13"),
    ]
    return [(name, value) for name, value in base if name != without] + list(extra)


def test_accept_key_matches_the_rfc_6455_example() -> None:
    assert accept_key(KEY) == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


@pytest.mark.parametrize(("value", "expected"), [(b"websocket", True), (b"WebSocket", True), (b"h2c", False)])
def test_only_a_websocket_upgrade_is_taken_as_one(value: bytes, expected: bool) -> None:
    assert is_websocket_upgrade(value) is expected


def test_valid_handshake_gives_key_and_offered_subprotocols() -> None:
    handshake = check_handshake(
        "GET", "1.1", headers((b"sec-websocket-protocol", b"chat, superchat"), (b"sec-websocket-protocol", b"v2"))
    )
    assert handshake.key == KEY
    assert handshake.subprotocols == ["chat", "superchat", "v2"]
    assert handshake.extension is None


@pytest.mark.parametrize(
    ("method", "version", "request_headers", "reason"),
    [
        ("POST", "1.1", headers(), "must be a GET"),
        ("GET", "1.0", headers(), "HTTP/1.1"),
        ("GET", "1.1", headers(without=b"connection"), "Connection"),
        ("GET", "1.1", headers(without=b"sec-websocket-key"), "Sec-WebSocket-Key"),
        ("GET", "1.1", headers((b"sec-websocket-key", KEY)), "exactly one Sec-WebSocket-Key"),
        ("GET", "1.1", headers(without=b"sec-websocket-version"), "Sec-WebSocket-Version"),
        ("GET", "1.1", headers((b"content-length", b"5")), "no body"),
        ("GET", "1.1", headers((b"transfer-encoding", b"chunked")), "no body"),
    ],
)
def test_invalid_handshakes_get_400_with_a_reason(
    method: str, version: str, request_headers: list[tuple[bytes, bytes]], reason: str
) -> None:
    with pytest.raises(HandshakeError) as caught:
        check_handshake(method, version, request_headers)
    assert caught.value.status == 400
    assert reason in caught.value.reason


@pytest.mark.parametrize("key", [b"not base64!", b"c2hvcnQ=", b""])
def test_a_key_that_is_not_16_base64_bytes_is_refused(key: bytes) -> None:
    request_headers = [(name, key if name == b"sec-websocket-key" else value) for name, value in headers()]
    with pytest.raises(HandshakeError, match="Sec-WebSocket-Key"):
        check_handshake("GET", "1.1", request_headers)


def test_another_protocol_version_gets_426_naming_version_13() -> None:
    request_headers = [(name, b"8" if name == b"sec-websocket-version" else value) for name, value in headers()]
    with pytest.raises(UnsupportedVersion) as caught:
        check_handshake("GET", "1.1", request_headers)
    assert caught.value.status == 426
    assert b"sec-websocket-version: 13\r\n" in caught.value.headers


def test_permessage_deflate_offer_is_accepted() -> None:
    offer = (b"sec-websocket-extensions", b"permessage-deflate; client_max_window_bits")
    handshake = check_handshake("GET", "1.1", headers(offer))
    assert handshake.extension is not None
    assert handshake.extensions_header is not None
    assert handshake.extensions_header.startswith(b"permessage-deflate")


def test_permessage_deflate_is_not_negotiated_when_switched_off() -> None:
    offer = (b"sec-websocket-extensions", b"permessage-deflate")
    handshake = check_handshake("GET", "1.1", headers(offer), deflate=False)
    assert handshake.extension is None and handshake.extensions_header is None


def test_unknown_extensions_are_declined_and_a_later_usable_offer_taken() -> None:
    offers = b"x-unknown, permessage-deflate; server_max_window_bits=99, permessage-deflate"
    offer = (b"sec-websocket-extensions", offers)
    handshake = check_handshake("GET", "1.1", headers(offer))
    assert handshake.extensions_header is not None
    assert handshake.extensions_header.startswith(b"permessage-deflate")


def test_malformed_extension_header_is_a_400() -> None:
    with pytest.raises(HandshakeError, match="Sec-WebSocket-Extensions"):
        check_handshake("GET", "1.1", headers((b"sec-websocket-extensions", b"permessage-deflate; =")))


def test_accept_response_carries_the_accept_key_subprotocol_and_app_headers() -> None:
    handshake = check_handshake("GET", "1.1", headers((b"sec-websocket-protocol", b"chat")))
    head, sent = accept_response(handshake, DEFAULTS, "chat", [(b"x-app", b"1")], handshake.subprotocols)
    assert head.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert b"sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" in head
    assert b"sec-websocket-protocol: chat\r\n" in head
    assert b"x-app: 1\r\n" in head and b"server: corral\r\n" in head
    assert head.endswith(b"\r\n\r\n")
    assert (b"x-app", b"1") in sent


def test_app_server_header_replaces_the_default_one() -> None:
    handshake = check_handshake("GET", "1.1", headers())
    head, _ = accept_response(handshake, DEFAULTS, None, [(b"Server", b"mine")], [])
    assert b"server: corral" not in head and b"Server: mine\r\n" in head and b"date: " in head


@pytest.mark.parametrize(
    ("subprotocol", "app_headers", "error"),
    [
        ("other", [], "did not offer"),
        (None, [(b"sec-websocket-protocol", b"chat")], "subprotocol"),
        (None, [(b"connection", b"close")], "set by the server"),
        (None, [(b"x-bad", b"a\r\nb: c")], "CR, LF or NUL"),
        (None, [(b"bad name", b"v")], "invalid response header name"),
    ],
)
def test_accept_response_refuses_what_would_break_the_handshake(
    subprotocol: str | None, app_headers: list[tuple[bytes, bytes]], error: str
) -> None:
    handshake = check_handshake("GET", "1.1", headers((b"sec-websocket-protocol", b"chat")))
    with pytest.raises(RuntimeError, match=error):
        accept_response(handshake, DEFAULTS, subprotocol, app_headers, handshake.subprotocols)


def test_accept_response_refuses_str_headers() -> None:
    handshake = check_handshake("GET", "1.1", headers())
    with pytest.raises(TypeError):
        accept_response(handshake, DEFAULTS, None, [("x-str", "v")], [])


def test_denial_response_is_length_framed_and_closes() -> None:
    response = denial_response(401, [(b"content-length", b"999"), (b"x-why", b"token")], b"no", DEFAULTS)
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 401 Unauthorized\r\n")
    assert b"content-length: 2" in head and b"999" not in head
    assert b"connection: close" in head and b"x-why: token" in head
    assert body == b"no"


@pytest.mark.parametrize("status", [99, 600, "200", None])
def test_denial_with_an_invalid_status_is_refused(status: object) -> None:
    with pytest.raises(RuntimeError, match="status"):
        denial_response(status, [], b"", DEFAULTS)
