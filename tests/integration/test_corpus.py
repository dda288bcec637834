"""Gunicorn's request corpus replayed against a real corral: an outside check of the HTTP/1.1 parser.

The corpus (third-party, MIT; see its README) lives beside the repository at
../shared/corpora/gunicorn-requests/. This module is skipped when it is absent (a user's clone has none).

How a case is judged
* Valid: the bytes go to the echo app (tests/apps/echo.py), followed in the same write by a sentinel request.
  Each expected request must come back as a 200 whose echo matches (method, version, raw_path against `path`,
  query_string against `query`, headers in order with names compared case-insensitively, body). Then the
  sentinel must be answered too, which proves the framing consumed exactly the case's bytes, unless the last
  request closes the connection (HTTP/1.0 without keep-alive, `Connection: close`): then EOF follows and the
  sentinel is never answered.
* Invalid: the first response has corral's status for that case and `Connection: close`, EOF follows, there
  is no second response and no 2xx at all. The two truncated cases are sent with a half-close and may also
  get a plain close.

Mapping rules, where ASGI has no field for part of a request
* raw_path is the target's path exactly as sent (percent-escapes kept); query_string the bytes after "?".
* absolute-form: raw_path and query_string come from the target's path and query; the scheme and authority
  are not copied anywhere and the Host header reaches the app as sent.
* asterisk-form (`OPTIONS *`): raw_path b"*", path "*".
* Request trailers are dropped: ASGI has no place for them and RFC 9110 §6.5.1 forbids merging them into
  the header section. Chunk extensions are ignored.
* Header names containing "_" reach the app as sent. Gunicorn drops them (valid/040 expects them gone)
  because WSGI's environ maps "_" and "-" to the same key; ASGI header names are bytes with no such mapping,
  and the gunicorn + uvicorn-worker pair corral replaces passes them through as well.

Corral's policy for the valid cases a strict RFC 9112 server may refuse (`strict_may_reject_because`), per tag
* http11-no-host -> 400: RFC 9112 §3.2, a MUST.
* te-non-chunked-coding -> 501 when chunked is the final coding (corral decodes no other transfer coding;
  RFC 9112 §6.1 SHOULD), 400 when chunked is missing or not final (RFC 9112 §6.3 MUST). "identity" is no
  transfer coding at all since RFC 7230, so it counts as an unknown one.
* te-and-cl -> 400: RFC 9112 §6.3 lets a server reject this smuggling vector, and corral does.
* fragment-in-target, quote-in-target, non-ascii-target -> 400: "#", '"' and raw bytes >= 0x80 are not
  allowed in a request-target (RFC 9112 §3.2, RFC 3986 §3.3); RFC 9112 §3 says to answer an invalid
  request-line with 400. Real clients percent-encode all three.
* connect -> 501: CONNECT asks for a tunnel, which an ASGI server cannot provide; a 2xx from the app would
  tell the client the tunnel is open (RFC 9110 §9.3.6) and its next bytes would be parsed as HTTP.
* custom-limits -> the case runs on a server started with corral's equivalent flag (same setting names).
* compat-flag -> skipped: corral's parser has no leniency switches (the settings exist only to say so).
* proxy-protocol -> the cases run with --proxy-protocol, and the test client (127.0.0.1) is in the default
  proxy_allow_ips. A case that starts with a valid header is served; one that starts without one (valid/pp_03)
  gets 400: corral requires the header from a trusted peer (Gunicorn serves such a connection without it).
* chunk-ext-whitespace -> 400: whitespace around the ";" of a chunk extension (valid/013). RFC 9112 §7.1.1
  allows it as BWS, but llhttp refuses it and has no leniency switch for it. Corral keeps the parser's answer
  (a deliberate deviation, recorded in docs): no known client sends chunk extensions, let alone padded ones,
  and chunk-extension parsing differences are a classic request-smuggling vector.
A case with several reasons may get the status of any of them: the order of corral's checks is not part of
the contract. Beyond the tags, a well-formed method token corral does not know (`-BLARGH`) gets 501 (RFC 9110
§9.1: SHOULD 501; the parser only knows a fixed set of methods), while a method that is not a token gets 400.
Every http11-no-host case is replayed once more with a Host header added, so that the remaining reasons (or
none, and then the echo) decide: the other policies cannot pass by accident behind the missing Host.

The cases whose pass mark is gunicorn policy rather than an RFC MUST, decided
* invalid/019 (X-Forwarded-Proto https, X-Forwarded-Ssl off, from a trusted peer) -> 400, as gunicorn: the
  proxy contradicts itself, so the scheme is unknowable. The case also lacks Host, so it is replayed with one.
* invalid/041 (Content-Type twice) -> accepted, both lines reach the app in order: corral polices framing
  (Content-Length, Transfer-Encoding, Host), and RFC 9110 §5.3 leaves a repeated singleton field to the
  recipient, here the app.
* invalid/003c (method `-bl`) -> 501: a legal token corral does not know, like `-BLARGH` above.
* invalid/rfc9112_smuggle_cl_list_form_01 (`Content-Length: 5, 5`) -> 400: RFC 9112 §6.3 allows either;
  corral's framing accepts exactly one decimal number.
* invalid/rfc9110_trailer_forbidden_* (Content-Length, Host, Transfer-Encoding as trailers) -> 400, as
  gunicorn: corral never merges trailers (valid/012 with Host added proves it), and a trailer that repeats a
  framing or routing field is a smuggling probe or a broken client, so refusing it costs nothing.
* invalid/rfc9112_smuggle_cl_te_chunked_01 (Content-Length with chunked) -> 400 and close, as te-and-cl.
* invalid/version_02 (`HTTP/2.0`) -> 505 or 400: the version is well-formed but not HTTP/1.x.

Config-dependent cases run only where corral has the same setting: the request limits and
forwarded_allow_ips. limit_header_default_01 is skipped: gunicorn reads limit_request_field_size=0 as "the
default", corral as "no limit". header_map=refuse cases are skipped: corral has no header map (see the
underscore rule above).
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from collections.abc import Iterator, Sequence
from functools import cache
from typing import Any
from urllib.parse import unquote_to_bytes

import pytest

from tests.apps.echo import decode_echo
from tests.integration.conftest import REPO_ROOT, Exchange, Response, Server, ServerFactory, exchange

CORPUS_DIR = REPO_ROOT.parent / "shared" / "corpora" / "gunicorn-requests"
MANIFEST_PATH = CORPUS_DIR / "manifest.json"

if not MANIFEST_PATH.is_file():
    pytest.skip(f"gunicorn request corpus not found at {CORPUS_DIR}", allow_module_level=True)

MANIFEST: dict[str, Any] = json.loads(MANIFEST_PATH.read_text(encoding="utf-8"))
CASES: dict[str, dict[str, Any]] = {case["id"]: case for case in MANIFEST["cases"]}

ECHO_APP = "tests.apps.echo:app"
SENTINEL_PATH = "/__corpus_sentinel__"
SENTINEL = f"GET {SENTINEL_PATH} HTTP/1.1\r\nHost: sentinel\r\nConnection: close\r\n\r\n".encode()
ADDED_HOST = (b"host", b"example.com")
TRUNCATED_CASES = {"invalid/001", "invalid/rfc9112_chunked_missing_final_crlf_01"}
KNOWN_METHODS = {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}

# Status (set) per strict-rejection reason; see the module docstring.
REASON_STATUSES: dict[str, set[int]] = {
    "http11-no-host": {400},
    "te-and-cl": {400},
    "fragment-in-target": {400},
    "quote-in-target": {400},
    "non-ascii-target": {400},
    "connect": {501},
    "unknown-method": {501},
    "chunk-ext-whitespace": {400},
    "proxy-protocol": {400},
}
SKIPPED_REASONS = {
    "compat-flag": "corral's parser has no leniency switches",
}

# Invalid cases where corral's answer is not gunicorn's; see the module docstring.
INVALID_STATUS_OVERRIDES: dict[str, set[int]] = {
    "invalid/003c": {501},
    "invalid/version_02": {505, 400},
}
INVALID_ACCEPTED_BY_POLICY = {"invalid/041"}
# Corral answers the limits with their own status, not the 400 gunicorn's worker also allows.
LIMIT_EXCEPTIONS = {"LimitRequestLine": {414}, "LimitRequestHeaders": {431}}

# Gunicorn setting -> corral flag. Settings absent here have no corral equivalent.
SETTING_FLAGS = {
    "limit_request_line": "--limit-request-line",
    "limit_request_fields": "--limit-request-fields",
    "limit_request_field_size": "--limit-request-field-size",
    "forwarded_allow_ips": "--forwarded-allow-ips",
    "proxy_protocol": "--proxy-protocol",
}
UNEQUAL_SETTINGS = {"invalid/limit_header_default_01": "field size 0: gunicorn default, corral no limit"}


# --------------------------------------------------------------------------------------------------
# Expectations


def request_bytes(case: dict[str, Any]) -> bytes:
    return base64.b64decode(case["request_bytes_b64"])


def latin1(text: str) -> bytes:
    return text.encode("latin-1")


def expected_headers(request: dict[str, Any]) -> list[tuple[bytes, bytes]]:
    return [(latin1(name).lower(), latin1(value)) for name, value in request["headers"]]


# Corral passes underscore header names through (module docstring); gunicorn's expectation drops them.
HEADERS_AS_SENT: dict[str, list[list[tuple[bytes, bytes]]]] = {
    "valid/040": [[(b"transfer_encoding", b"tricked"), (b"content-length", b"7"), (b"content_length", b"-1E23")]],
}


def closes_after(request: dict[str, Any]) -> bool:
    """Whether the request ends the connection (RFC 9112 §9.3)."""
    tokens = {
        token.strip().lower()
        for name, value in request["headers"]
        if name.lower() == "connection"
        for token in value.split(",")
    }
    if "close" in tokens:
        return True
    return request["version"] == "1.0" and "keep-alive" not in tokens


def te_statuses(request: dict[str, Any]) -> set[int]:
    codings = [
        coding.strip().lower()
        for name, value in request["headers"]
        if name.lower() == "transfer-encoding"
        for coding in value.split(",")
    ]
    if codings and codings[-1] == "chunked" and codings.count("chunked") == 1:
        return {501}
    return {400}


def rejection_statuses(case: dict[str, Any], reasons: list[str]) -> set[int]:
    statuses: set[int] = set()
    for reason in reasons:
        if reason == "te-non-chunked-coding":
            statuses |= te_statuses(case["expected_requests"][0])
        else:
            statuses |= REASON_STATUSES[reason]
    return statuses


# A chunk-size line with whitespace around a chunk extension's ";" (valid/013).
CHUNK_EXT_WHITESPACE = re.compile(rb"\r\n[0-9A-Fa-f]+[ \t]*;[^\r\n]*[ \t]")


PROXY_HEADER_STARTS = (b"PROXY ", b"\r\n\r\n\x00\r\nQUIT\n")


def strict_reasons(case: dict[str, Any]) -> list[str]:
    reasons = list(case["strict_may_reject_because"])
    if "proxy-protocol" in reasons and request_bytes(case).startswith(PROXY_HEADER_STARTS):
        reasons.remove("proxy-protocol")  # corral refuses only a connection that starts without the header
    if any(request["method"] not in KNOWN_METHODS for request in case["expected_requests"]):
        reasons.append("unknown-method")
    if "chunk-ext" in case["tags"] and CHUNK_EXT_WHITESPACE.search(request_bytes(case)):
        reasons.append("chunk-ext-whitespace")
    return reasons


def first_refused_index(case: dict[str, Any], reasons: list[str]) -> int:
    """The index of the refused request: the first HTTP/1.1 one without Host, when that is the only reason."""
    if reasons != ["http11-no-host"]:
        return 0
    for index, request in enumerate(case["expected_requests"]):
        names = {name.lower() for name, _ in request["headers"]}
        if request["version"] == "1.1" and "host" not in names:
            return index
    raise AssertionError(f"{case['id']} is tagged http11-no-host but every HTTP/1.1 request has a Host")


def complete_body(case: dict[str, Any]) -> tuple[bytes, list[dict[str, Any]]]:
    """The case's bytes and expected requests, with a body shorter than its Content-Length padded to it.

    valid/099 declares Content-Length 17914 but carries 8599 bytes (gunicorn's harness reads to EOF). Over a
    kept-alive connection the request would never end, so the missing bytes are sent and expected back.
    """
    data, requests = request_bytes(case), case["expected_requests"]
    last = requests[-1]
    declared = [int(value) for name, value in last["headers"] if name.lower() == "content-length"]
    body = base64.b64decode(last["body_b64"])
    if not declared or declared[0] <= len(body):
        return data, requests
    padding = b"." * (declared[0] - len(body))
    padded = {**last, "body_b64": base64.b64encode(body + padding).decode()}
    return data + padding, [*requests[:-1], padded]


def with_host_added(case: dict[str, Any]) -> bytes:
    """The case's bytes with `Host: example.com` after each expected request line."""
    data = request_bytes(case)
    position = 0
    for request in case["expected_requests"]:
        line = b"%s %s HTTP/%s\r\n" % (
            latin1(request["method"]),
            latin1(request["target"]),
            latin1(request["version"]),
        )
        start = data.index(line, position)
        insert_at = start + len(line)
        host_line = b"Host: example.com\r\n"
        data = data[:insert_at] + host_line + data[insert_at:]
        position = insert_at + len(host_line)
    return data


# --------------------------------------------------------------------------------------------------
# Checks


def check_echo(response: Response, request: dict[str, Any], headers: list[tuple[bytes, bytes]]) -> None:
    assert response.status == 200, response
    echo = decode_echo(response.body)
    assert echo["method"] == request["method"]
    assert echo["http_version"] == request["version"]
    assert echo["raw_path"] == latin1(request["path"])
    assert echo["path"].encode("utf-8") == unquote_to_bytes(latin1(request["path"]))
    assert echo["query_string"] == latin1(request["query"])
    assert [(name.lower(), value) for name, value in echo["headers"]] == headers
    assert echo["body"] == base64.b64decode(request["body_b64"])


def check_echoed(result: Exchange, requests: list[dict[str, Any]], headers: list[list[tuple[bytes, bytes]]]) -> None:
    responses = result.responses()
    assert result.closed, "the sentinel asked for Connection: close, yet the connection stayed open"
    closes = closes_after(requests[-1])
    assert len(responses) == len(requests) + (0 if closes else 1), responses
    for response, request, request_headers in zip(responses, requests, headers, strict=False):
        check_echo(response, request, request_headers)
    for response in responses[: len(requests) - 1]:
        assert not response.closes, "the connection closed before the pipelined requests were answered"
    if not closes:
        sentinel = decode_echo(responses[-1].body)
        assert sentinel["path"] == SENTINEL_PATH


def check_rejected(
    result: Exchange,
    statuses: set[int],
    *,
    truncated: bool = False,
    answered_first: Sequence[dict[str, Any]] = (),
) -> None:
    """One refusal with `statuses` and a close, after echoes of the `answered_first` requests (pipelined)."""
    assert result.closed, f"connection left open after a refused request; got {result.data[:300]!r}"
    responses = result.responses()
    for response, request in zip(responses, answered_first, strict=False):
        check_echo(response, request, expected_headers(request))
    refusals = responses[len(answered_first) :]
    assert not any(200 <= r.status < 300 for r in refusals), refusals
    if truncated and not refusals:
        return
    assert len(refusals) == 1, f"expected exactly one refusal, got {refusals}"
    assert refusals[0].status in statuses, refusals[0]
    assert refusals[0].closes, "a refused request must carry Connection: close"


def replay_valid(server: Server, data: bytes) -> Exchange:
    return exchange(server.port, data + SENTINEL)


# --------------------------------------------------------------------------------------------------
# Servers


@cache
def corral_help() -> str:
    completed = subprocess.run(
        [sys.executable, "-m", "corral", "--help-all"], capture_output=True, text=True, cwd=REPO_ROOT, timeout=30
    )
    return completed.stdout + completed.stderr


def config_args(case: dict[str, Any]) -> list[str]:
    """corral flags equivalent to the case's gunicorn settings; skips the case when there are none."""
    if case["id"] in UNEQUAL_SETTINGS:
        pytest.skip(UNEQUAL_SETTINGS[case["id"]])
    args: list[str] = []
    for setting, value in sorted(case["cfg_overrides"].items()):
        flag = SETTING_FLAGS.get(setting)
        if flag is None:
            pytest.skip(f"corral has no equivalent of gunicorn's {setting}")
        if flag not in corral_help():
            pytest.skip(f"corral has no {flag} flag yet")
        args += [flag] if value is True else [flag, str(value)]
    return args


@pytest.fixture(scope="module")
def corpus_server(serve_module: ServerFactory) -> Server:
    return serve_module(ECHO_APP)


@pytest.fixture(scope="module")
def configured_server(serve_module: ServerFactory) -> Iterator[Any]:
    servers: dict[tuple[str, ...], Server] = {}

    def get(args: list[str]) -> Server:
        key = tuple(args)
        if key not in servers:
            servers[key] = serve_module(ECHO_APP, *args)
        return servers[key]

    yield get


# --------------------------------------------------------------------------------------------------
# Case lists


def ids_where(predicate: Any) -> list[str]:
    return [case_id for case_id, case in CASES.items() if predicate(case)]


def is_config_case(case: dict[str, Any]) -> bool:
    return not case["default_config"] or bool(case["cfg_overrides"])


CORE_VALID = list(MANIFEST["core_valid_ids"])
CORE_INVALID = [
    case_id
    for case_id in MANIFEST["core_invalid_ids"]
    if case_id not in INVALID_ACCEPTED_BY_POLICY and not is_config_case(CASES[case_id])
]
STRICT_VALID = ids_where(
    lambda c: c["kind"] == "valid" and c["id"] not in CORE_VALID and not is_config_case(c) and strict_reasons(c)
)
NO_HOST_VALID = ids_where(
    lambda c: c["kind"] == "valid" and not is_config_case(c) and "http11-no-host" in c["strict_may_reject_because"]
)
CONFIG_CASES = ids_where(is_config_case)


def invalid_statuses(case: dict[str, Any]) -> set[int]:
    if case["id"] in INVALID_STATUS_OVERRIDES:
        return INVALID_STATUS_OVERRIDES[case["id"]]
    return LIMIT_EXCEPTIONS.get(case["gunicorn_exception"], {400})


# --------------------------------------------------------------------------------------------------
# Tests


@pytest.mark.parametrize("case_id", CORE_VALID)
def test_core_valid_request_reaches_the_app_exactly(corpus_server: Server, case_id: str) -> None:
    case = CASES[case_id]
    data, requests = complete_body(case)
    headers = HEADERS_AS_SENT.get(case_id) or [expected_headers(r) for r in requests]
    check_echoed(replay_valid(corpus_server, data), requests, headers)


@pytest.mark.parametrize("case_id", CORE_INVALID)
def test_core_invalid_request_is_refused_and_the_connection_closed(corpus_server: Server, case_id: str) -> None:
    case = CASES[case_id]
    truncated = case_id in TRUNCATED_CASES
    result = exchange(corpus_server.port, request_bytes(case), shut_wr=truncated)
    check_rejected(result, invalid_statuses(case), truncated=truncated)


@pytest.mark.parametrize("case_id", STRICT_VALID)
def test_strictly_refusable_valid_request_gets_the_policy_status(corpus_server: Server, case_id: str) -> None:
    case = CASES[case_id]
    reasons = strict_reasons(case)
    answered = case["expected_requests"][: first_refused_index(case, reasons)]
    statuses = rejection_statuses(case, reasons)
    check_rejected(exchange(corpus_server.port, request_bytes(case)), statuses, answered_first=answered)


@pytest.mark.parametrize("case_id", NO_HOST_VALID)
def test_no_host_case_with_host_added_is_judged_by_its_other_reasons(corpus_server: Server, case_id: str) -> None:
    case = CASES[case_id]
    data = with_host_added(case)
    reasons = [r for r in strict_reasons(case) if r != "http11-no-host"]
    if reasons:
        check_rejected(exchange(corpus_server.port, data), rejection_statuses(case, reasons))
        return
    requests = case["expected_requests"]
    # valid/012's trailers are dropped, so the expected headers are the header section alone.
    headers = [[ADDED_HOST, *expected_headers(r)] for r in requests]
    check_echoed(replay_valid(corpus_server, data), requests, headers)


def test_conflicting_scheme_headers_from_a_trusted_proxy_are_refused(corpus_server: Server) -> None:
    case = CASES["invalid/019"]
    data = request_bytes(case).replace(b"HTTP/1.1\r\n", b"HTTP/1.1\r\nHost: example.com\r\n", 1)
    check_rejected(exchange(corpus_server.port, data), {400})


def test_repeated_content_type_reaches_the_app_in_order(corpus_server: Server) -> None:
    result = replay_valid(corpus_server, request_bytes(CASES["invalid/041"]))
    request = {
        "method": "GET",
        "version": "1.1",
        "path": "/stuff/here",
        "query": "foo=bar",
        "body_b64": "",
        "headers": [],
    }
    headers = [
        (b"host", b"localhost"),
        (b"content-type", b"application/json"),
        (b"content-type", b"text/html"),
    ]
    check_echoed(result, [request], [headers])


@pytest.mark.parametrize("case_id", CONFIG_CASES)
def test_case_with_a_limit_setting_runs_with_corrals_equivalent(configured_server: Any, case_id: str) -> None:
    case = CASES[case_id]
    for tag in case["tags"]:
        if tag in SKIPPED_REASONS:
            pytest.skip(SKIPPED_REASONS[tag])
    server = configured_server(config_args(case))
    if case["kind"] == "valid":
        requests = case["expected_requests"]
        reasons = [r for r in strict_reasons(case) if r != "custom-limits"]
        if reasons:
            check_rejected(exchange(server.port, request_bytes(case)), rejection_statuses(case, reasons))
            return
        check_echoed(replay_valid(server, request_bytes(case)), requests, [expected_headers(r) for r in requests])
        return
    check_rejected(exchange(server.port, request_bytes(case)), invalid_statuses(case))


def test_corpus_is_the_one_this_module_was_written_for() -> None:
    # The policies above name cases by id; a different corpus would silently test something else.
    assert MANIFEST["counts"] == {"valid": 63, "invalid": 74}
    assert len(CORE_VALID) == 25
    assert len(MANIFEST["core_invalid_ids"]) == 63
