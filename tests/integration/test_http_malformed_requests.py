"""Malformed requests get the right status and a closed connection, one test per class of malformation.

Policies proved here (RFC 9112 unless said otherwise):
* Framing that two parsers could read differently is refused with 400 and a close: Content-Length with
  Transfer-Encoding (§6.3 lets a server reject; corral does), duplicate or non-decimal Content-Length,
  chunked missing or not last in Transfer-Encoding (§6.3 MUST), invalid chunk sizes (§7.1).
* A transfer coding other than chunked in front of a final chunked gets 501 (§6.1 SHOULD): corral decodes none.
* Header syntax: obs-fold (§5.2 lets a server reject; corral does), whitespace before the colon (§5.1 MUST
  400), control characters in names, values (bare CR included, §2.2) and the request target: 400.
* A bare LF as a line ending is refused with 400: §2.2 only allows a recipient to accept it, and a
  component in front of corral that disagrees about line ends is how requests are smuggled.
* Host missing in HTTP/1.1 or repeated: 400 (§3.2 MUST).
* A method that is a token but unknown to corral gets 501 (RFC 9110 §9.1); one that is not a token gets 400.
* After a refusal nothing else on the connection is answered: a request pipelined behind a bad one is dropped.
"""

from __future__ import annotations

import pytest

from tests.apps.echo import decode_echo
from tests.integration.conftest import Server, exchange, refused

GOOD_REQUEST = b"GET /after HTTP/1.1\r\nHost: example.com\r\n\r\n"


def request_with(headers: bytes, body: bytes = b"", *, method: bytes = b"POST", target: bytes = b"/") -> bytes:
    return b"%s %s HTTP/1.1\r\nHost: example.com\r\n%s\r\n%s" % (method, target, headers, body)


def test_well_formed_request_is_echoed(echo_server: Server) -> None:
    # The baseline every refusal below differs from by one malformation.
    result = exchange(echo_server.port, request_with(b"Content-Length: 5\r\nConnection: close\r\n", b"hello"))
    (response,) = result.responses()
    assert response.status == 200
    assert decode_echo(response.body)["body"] == b"hello"


def test_content_length_with_transfer_encoding_is_refused_and_nothing_after_it_answered(
    echo_server: Server,
) -> None:
    data = request_with(b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n") + GOOD_REQUEST
    refused(echo_server.port, data, 400)


@pytest.mark.parametrize("lengths", [(b"5", b"5"), (b"5", b"6")], ids=["same-values", "different-values"])
def test_duplicate_content_length_is_refused(echo_server: Server, lengths: tuple[bytes, bytes]) -> None:
    headers = b"Content-Length: %s\r\nContent-Length: %s\r\n" % lengths
    refused(echo_server.port, request_with(headers, b"hello"), 400)


@pytest.mark.parametrize("value", [b"abc", b"-1", b"+5", b"1 2", b"0x5", b"5,5", b"", b"5.0", b"\xd9\xa5"])
def test_invalid_content_length_is_refused(echo_server: Server, value: bytes) -> None:
    refused(echo_server.port, request_with(b"Content-Length: %s\r\n" % value, b"hello"), 400)


@pytest.mark.parametrize(
    "coding", [b"gzip", b"chunked, gzip", b"identity", b"chunked, chunked"], ids=lambda c: c.decode()
)
def test_transfer_encoding_without_a_single_final_chunked_is_refused(echo_server: Server, coding: bytes) -> None:
    # RFC 9112 §6.3: chunked missing or not final means the body length is unknowable: 400 and close.
    data = request_with(b"Transfer-Encoding: %s\r\n" % coding, b"5\r\nhello\r\n0\r\n\r\n")
    refused(echo_server.port, data, 400)


@pytest.mark.parametrize("coding", [b"gzip, chunked", b"deflate, chunked"], ids=lambda c: c.decode())
def test_unknown_transfer_coding_before_chunked_is_not_implemented(echo_server: Server, coding: bytes) -> None:
    data = request_with(b"Transfer-Encoding: %s\r\n" % coding, b"5\r\nhello\r\n0\r\n\r\n")
    refused(echo_server.port, data, 501)


def test_transfer_encoding_in_http10_is_refused(echo_server: Server) -> None:
    data = b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    refused(echo_server.port, data, 400)


def test_obsolete_line_folding_is_refused(echo_server: Server) -> None:
    refused(echo_server.port, request_with(b"X-Folded: one\r\n two\r\n", method=b"GET"), 400)


@pytest.mark.parametrize("line", [b"X-Space : value", b"X-Tab\t: value", b"Host : example.com"])
def test_whitespace_before_the_colon_is_refused(echo_server: Server, line: bytes) -> None:
    refused(echo_server.port, request_with(line + b"\r\n", method=b"GET"), 400)


@pytest.mark.parametrize(
    "line",
    [b"X-\x01Name: value", b"X Name: value", b"X-Name\x7f: value", b"X-N\xc3\xa9: value", b": no-name"],
    ids=["ctl", "space", "del", "non-ascii", "empty"],
)
def test_invalid_header_name_is_refused(echo_server: Server, line: bytes) -> None:
    refused(echo_server.port, request_with(line + b"\r\n", method=b"GET"), 400)


@pytest.mark.parametrize(
    "value", [b"a\x01b", b"a\x00b", b"a\rb", b"a\x7fb", b"a\x1bb"], ids=["soh", "nul", "bare-cr", "del", "esc"]
)
def test_control_character_in_header_value_is_refused(echo_server: Server, value: bytes) -> None:
    refused(echo_server.port, request_with(b"X-Value: %s\r\n" % value, method=b"GET"), 400)


@pytest.mark.parametrize(
    "target", [b"/a\x01b", b"/a\x00b", b"/a\x7fb", b"/a\rb", b"/a\tb"], ids=["soh", "nul", "del", "cr", "tab"]
)
def test_control_character_in_request_target_is_refused(echo_server: Server, target: bytes) -> None:
    refused(echo_server.port, request_with(b"", method=b"GET", target=target), 400)


@pytest.mark.parametrize(
    "size",
    [b"zz", b"5g", b"1ffffffffffffffff", b"fffffffffffffffffffffffffff", b"-5", b"+5", b"", b" 5", b"0x5"],
    ids=["non-hex", "trailing-garbage", "overflow-64", "overflow-huge", "negative", "plus", "empty",
         "leading-space", "0x-prefix"],
)  # fmt: skip
def test_invalid_chunk_size_is_refused(echo_server: Server, size: bytes) -> None:
    data = request_with(b"Transfer-Encoding: chunked\r\n", b"%s\r\nhello\r\n0\r\n\r\n" % size) + GOOD_REQUEST
    refused(echo_server.port, data, 400)


def test_chunk_data_longer_than_its_size_is_refused(echo_server: Server) -> None:
    data = request_with(b"Transfer-Encoding: chunked\r\n", b"3\r\nhello\r\n0\r\n\r\n")
    refused(echo_server.port, data, 400)


def test_missing_host_in_http11_is_refused(echo_server: Server) -> None:
    refused(echo_server.port, b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n", 400)


def test_missing_host_in_http10_is_fine(echo_server: Server) -> None:
    result = exchange(echo_server.port, b"GET /old HTTP/1.0\r\n\r\n")
    (response,) = result.responses()
    assert response.status == 200
    assert decode_echo(response.body)["path"] == "/old"


@pytest.mark.parametrize("second", [b"example.com", b"evil.example"], ids=["same", "different"])
def test_repeated_host_is_refused(echo_server: Server, second: bytes) -> None:
    refused(echo_server.port, request_with(b"Host: %s\r\n" % second, method=b"GET"), 400)


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\nHost: example.com\n\n",
        b"GET / HTTP/1.1\r\nHost: example.com\nX-A: b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: example.com\r\n\n",
    ],
    ids=["everywhere", "one-header-line", "end-of-headers"],
)
def test_bare_lf_line_ending_is_refused(echo_server: Server, data: bytes) -> None:
    refused(echo_server.port, data, 400)


@pytest.mark.parametrize("method", [b"FOO", b"get", b"-bl", b"X.Y"])
def test_unknown_method_token_is_not_implemented(echo_server: Server, method: bytes) -> None:
    refused(echo_server.port, request_with(b"", method=method), 501)


@pytest.mark.parametrize("method", [b"G@T", b"GE(T", b"GET:", b"G\xc3\x89T", b"G\x00T"])
def test_method_that_is_not_a_token_is_refused(echo_server: Server, method: bytes) -> None:
    refused(echo_server.port, request_with(b"", method=method), 400)


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_standard_methods_reach_the_app(echo_server: Server, method: str) -> None:
    data = request_with(b"Connection: close\r\n", method=method.encode())
    (response,) = exchange(echo_server.port, data).responses()
    assert response.status == 200
    assert decode_echo(response.body)["method"] == method


@pytest.mark.parametrize(
    "line",
    [b"GET / HTTP/1.1 extra", b"GET / HTTP/1.1 ", b"GET /", b"GET / FTP/1.1", b"GET / HTTP/1"],
    ids=["extra-token", "trailing-space", "no-version", "wrong-protocol", "short-version"],
)
def test_malformed_request_line_is_refused(echo_server: Server, line: bytes) -> None:
    refused(echo_server.port, line + b"\r\nHost: example.com\r\n\r\n", 400)


@pytest.mark.parametrize("target", [b"*", b"example.com:443", b"foo/bar"], ids=["asterisk", "authority", "relative"])
def test_request_target_form_that_does_not_fit_the_method_is_refused(echo_server: Server, target: bytes) -> None:
    refused(echo_server.port, request_with(b"", method=b"GET", target=target), 400)
