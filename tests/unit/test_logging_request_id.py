"""Request ids: which ids a client may bring, how new ones are made, and what the connection does with them
(the app's scope headers, the response header, the access log), driven through a fake transport."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import textwrap
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from corral.config import request_id_header_value
from corral.http import eager
from corral.http.h1 import H1Protocol
from corral.logging import REQUEST_ID_MAX_LENGTH, AccessLog, RequestIds, compile_json_access_log
from tests.unit.fakes import FakeTransport, server_state

eager.install()

NEW_ID = re.compile(rb"[0-9a-f]{32}")

# ------------------------------------------------------------------------------------------------ rules


@pytest.mark.parametrize(
    "value",
    [
        b"0123456789abcdef0123456789abcdef",
        b"3f2b8c1e-6a4d-4c55-9e1a-2b7c9d0e4f61",  # a UUID
        b"01HZX3JQ6K8V2W9YB4T5R7N0MC",  # a ULID
        b"YWJjZGVm+/ZA==",  # base64
        b"api-gateway:1234/req.5_6@edge",
        b"a",
        b"x" * REQUEST_ID_MAX_LENGTH,
    ],
)
def test_a_client_id_of_safe_characters_and_bounded_length_is_kept(value: bytes):
    assert RequestIds("X-Request-ID").accepts(value)


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"x" * (REQUEST_ID_MAX_LENGTH + 1),
        b"has space",
        b'quote"d',
        b"comma,separated",
        b"semi;colon",
        b"back\\slash",
        b"tab\there",
        b"caf\xc3\xa9",
        b"bell\x07",
        b"<script>",
    ],
)
def test_a_client_id_that_is_empty_too_long_or_has_unsafe_characters_is_replaced(value: bytes):
    assert not RequestIds("X-Request-ID").accepts(value)


def test_new_ids_are_32_hex_digits_and_never_repeat():
    ids = RequestIds("X-Request-ID")
    made = [ids.new() for _ in range(1000)]
    assert all(NEW_ID.fullmatch(value) for value in made)
    assert len(set(made)) == len(made)
    assert all(ids.accepts(value) for value in made)  # an id corral made passes its own check downstream


def test_two_sources_of_ids_do_not_share_a_prefix():
    assert RequestIds("x").new()[:16] != RequestIds("x").new()[:16]


def test_a_forked_worker_makes_different_ids_from_its_parent():
    script = textwrap.dedent(
        """
        import os
        from corral.logging import RequestIds
        ids = RequestIds("X-Request-ID")
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.write(write_end, ids.new())
            os._exit(0)
        os.waitpid(pid, 0)
        print(os.read(read_end, 64).decode(), ids.new().decode())
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    child, parent = result.stdout.split()
    assert child[:16] != parent[:16]


def test_the_header_name_is_compared_as_the_scope_spells_it_and_echoed_in_lower_case():
    ids = RequestIds(" X-Request-ID ")
    assert ids.header == b"x-request-id"
    assert ids.response_line(b"abc") == b"x-request-id: abc\r\n"


@pytest.mark.parametrize("value", ["X-Request-ID", "x-correlation-id", "Request-Id", ""])
def test_request_id_header_setting_takes_a_header_name_or_empty_for_off(value: str):
    assert request_id_header_value(value) == value


@pytest.mark.parametrize("value", ["X Request", "X-Request-ID:", "Host", "content-length", "Connection", "é"])
def test_request_id_header_setting_refuses_what_is_no_header_name_or_a_header_the_server_owns(value: str):
    with pytest.raises(ValueError):
        request_id_header_value(value)


# ------------------------------------------------------------------------------------------- connection

App = Callable[[dict, Callable, Callable], Awaitable[None]]


class Recorder:
    """An app that records each scope's headers and answers 200 with the headers it is given."""

    def __init__(self, response_headers: list[tuple[bytes, bytes]] | None = None, fail: bool = False) -> None:
        self.scopes: list[dict] = []
        self.response_headers = response_headers or [(b"content-type", b"text/plain")]
        self.fail = fail

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        self.scopes.append(scope)
        if self.fail:
            raise RuntimeError("the app failed")
        await send({"type": "http.response.start", "status": 200, "headers": self.response_headers})
        await send({"type": "http.response.body", "body": b"ok"})

    def request_ids(self, index: int = 0) -> list[bytes]:
        return [value for name, value in self.scopes[index]["headers"] if name == b"x-request-id"]


class ListAccessLog:
    """What the access log is handed, rendered by a compiled JSON access log."""

    def __init__(self, request_id_header: str) -> None:
        self.render = compile_json_access_log(request_id_header=request_id_header)
        self.lines: list[dict] = []

    def log(self, scope, status, response_headers, response_length, request_time_ns) -> None:
        self.lines.append(json.loads(self.render(scope, status, response_headers, response_length, request_time_ns)))


async def serve(app: App, request: bytes, request_id_header: str = "X-Request-ID", **settings: Any) -> bytes:
    """Feed `request` to a fresh connection and return what it wrote once the app is done."""
    state = server_state(app, request_id_header=request_id_header, **settings)
    protocol = H1Protocol(state)
    transport = FakeTransport()
    protocol.connection_made(transport)
    protocol.data_received(request)
    for _ in range(20):
        await asyncio.sleep(0)
    return bytes(transport.written)


def run(coro: Awaitable[bytes]) -> bytes:
    return asyncio.run(asyncio.wait_for(coro, 10))  # type: ignore[arg-type]


def response_ids(output: bytes) -> list[bytes]:
    return re.findall(rb"\r\nx-request-id: ([^\r]*)\r\n", output, re.IGNORECASE)


def get(*headers: bytes) -> bytes:
    return b"GET / HTTP/1.1\r\nHost: example.com\r\n" + b"".join(h + b"\r\n" for h in headers) + b"\r\n"


def test_a_valid_client_id_reaches_the_app_unchanged_and_is_echoed():
    app = Recorder()
    output = run(serve(app, get(b"X-Request-ID: client-id-1")))
    assert app.request_ids() == [b"client-id-1"]
    assert response_ids(output) == [b"client-id-1"]


def test_a_request_without_an_id_gets_a_new_one_in_its_headers_and_its_response():
    app = Recorder()
    output = run(serve(app, get()))
    (made,) = app.request_ids()
    assert NEW_ID.fullmatch(made)
    assert response_ids(output) == [made]
    assert app.scopes[0]["headers"][0] == (b"host", b"example.com")  # the client's headers come first, untouched


def test_an_invalid_client_id_is_replaced_for_the_app_and_the_response():
    app = Recorder()
    output = run(serve(app, get(b"X-Request-ID: not valid!")))
    (made,) = app.request_ids()
    assert NEW_ID.fullmatch(made)
    assert response_ids(output) == [made]


def test_a_repeated_client_id_header_is_replaced_by_one_new_id():
    app = Recorder()
    run(serve(app, get(b"X-Request-ID: one", b"x-request-id: two")))
    (made,) = app.request_ids()
    assert NEW_ID.fullmatch(made)


def test_trailing_whitespace_around_a_client_id_does_not_make_it_invalid():
    app = Recorder()
    output = run(serve(app, get(b"X-Request-ID:   spaced-id  ")))
    assert app.request_ids() == [b"spaced-id"]
    assert response_ids(output) == [b"spaced-id"]


def test_the_configured_header_name_is_used_whatever_its_case():
    app = Recorder()
    output = run(serve(app, get(b"X-CORRELATION-ID: abc"), request_id_header="X-Correlation-Id"))
    assert [value for name, value in app.scopes[0]["headers"] if name == b"x-correlation-id"] == [b"abc"]
    assert b"\r\nx-correlation-id: abc\r\n" in output


def test_with_request_ids_off_nothing_is_added_and_a_client_header_is_left_alone():
    app = Recorder()
    output = run(serve(app, get(b"X-Request-ID: not valid!"), request_id_header=""))
    assert app.request_ids() == [b"not valid!"]
    assert response_ids(output) == []
    output = run(serve(app, get(), request_id_header=""))
    assert app.request_ids(1) == []
    assert response_ids(output) == []


def test_an_id_the_app_answers_with_itself_is_the_only_one_in_the_response():
    app = Recorder([(b"content-type", b"text/plain"), (b"X-Request-Id", b"from-the-app")])
    output = run(serve(app, get(b"X-Request-ID: from-the-client")))
    assert response_ids(output) == [b"from-the-app"]


def test_the_500_for_a_failed_app_carries_the_request_id():
    app = Recorder(fail=True)
    output = run(serve(app, get(b"X-Request-ID: failing-request")))
    assert output.startswith(b"HTTP/1.1 500 ")
    assert response_ids(output) == [b"failing-request"]


def test_pipelined_requests_each_get_their_own_id():
    app = Recorder()
    output = run(serve(app, get() + get(b"X-Request-ID: second") + get()))
    ids = [app.request_ids(index)[0] for index in range(3)]
    assert ids[1] == b"second"
    assert len(set(ids)) == 3
    assert response_ids(output) == ids


def test_a_head_request_and_a_chunked_response_carry_the_id():
    async def streaming(scope: dict, receive: Callable, send: Callable) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"part", "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    output = run(serve(streaming, get(b"X-Request-ID: streamed")))
    assert b"transfer-encoding: chunked" in output
    assert response_ids(output) == [b"streamed"]
    output = run(serve(Recorder(), b"HEAD / HTTP/1.1\r\nHost: h\r\nX-Request-ID: head-id\r\n\r\n"))
    assert response_ids(output) == [b"head-id"]


@pytest.mark.parametrize(
    ("sent", "kept"),
    [(b"X-Request-ID: kept-id", True), (b"X-Request-ID: bad id", False), (b"Accept: */*", False)],
)
def test_the_access_log_has_the_id_the_app_saw(sent: bytes, kept: bool):
    app = Recorder()
    access_log = ListAccessLog("X-Request-ID")
    output = run(serve(app, get(sent), access_log=access_log))
    (seen,) = app.request_ids()
    assert access_log.lines[0]["request_id"] == seen.decode()
    assert response_ids(output) == [seen]
    assert (seen == b"kept-id") is kept


def test_the_text_access_log_request_id_atom_has_the_id_the_app_saw(tmp_path):
    path = tmp_path / "access.log"
    access_log = AccessLog.open(str(path), "%(s)s %(request_id)s", request_id_header="X-Request-ID")
    app = Recorder()
    run(serve(app, get(), access_log=access_log))
    assert access_log is not None
    access_log.close()
    assert path.read_text() == f"200 {app.request_ids()[0].decode()}\n"
