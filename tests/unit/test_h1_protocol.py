"""The HTTP/1.1 protocol driven through a fake transport: bytes in, bytes out, no sockets."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from corral.http import eager
from corral.http.h1 import H1Protocol
from tests.unit.fakes import FakeTransport, server_state

eager.install()

App = Callable[[dict, Callable, Callable], Awaitable[None]]


async def hello(scope: dict, receive: Callable, send: Callable) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"hello " + scope["path"].encode()})


async def echo_body(scope: dict, receive: Callable, send: Callable) -> None:
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


class Harness:
    def __init__(self, app: App, **settings: Any) -> None:
        self.loop = asyncio.get_running_loop()
        self.state = server_state(app, **settings)
        self.transport = FakeTransport()
        self.protocol = H1Protocol(self.state)
        self.protocol.connection_made(self.transport)

    def feed(self, data: bytes) -> None:
        self.protocol.data_received(data)

    async def settle(self) -> None:
        for _ in range(20):
            await asyncio.sleep(0)

    @property
    def output(self) -> bytes:
        """What is on the wire at the end of this loop iteration (finished responses are written then)."""
        self.state.write_held_outputs()
        return bytes(self.transport.written)


def run(coro: Awaitable[None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 10))  # type: ignore[arg-type]


def status_lines(output: bytes) -> list[bytes]:
    return [line for line in output.split(b"\r\n") if line.startswith(b"HTTP/1.1 ")]


def test_simple_get_gets_length_framed_response_and_stays_open() -> None:
    async def main() -> None:
        h = Harness(hello)
        h.feed(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
        assert h.output.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"content-length: 8\r\n" in h.output
        assert h.output.endswith(b"\r\n\r\nhello /a")
        assert not h.transport.closed

    run(main())


def test_pipelined_requests_are_answered_in_order() -> None:
    async def main() -> None:
        h = Harness(hello)
        h.feed(b"".join(b"GET /%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in (1, 2, 3)))
        await h.settle()
        assert h.output.count(b"HTTP/1.1 200 OK") == 3
        assert h.output.index(b"hello /1") < h.output.index(b"hello /2") < h.output.index(b"hello /3")
        assert h.transport.reading

    run(main())


def test_connection_close_request_closes_after_response() -> None:
    async def main() -> None:
        h = Harness(hello)
        h.feed(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert b"connection: close\r\n" in h.output
        assert h.transport.closed

    run(main())


def test_http10_without_keep_alive_closes() -> None:
    async def main() -> None:
        h = Harness(hello)
        h.feed(b"GET / HTTP/1.0\r\n\r\n")
        assert h.output.startswith(b"HTTP/1.1 200 OK")
        assert h.transport.closed

    run(main())


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET / HTTP/1.1\r\n\r\n", 400),  # no Host
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabc", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: abc\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n  folded\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX-A : b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\x01c\r\n\r\n", 400),
        (b"GET /\x01 HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
        (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
        (b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 414),
        (b"GET / HTTP/1.1\r\nHost: a\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(101)) + b"\r\n", 431),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"v" * 9000 + b"\r\n\r\n", 431),
    ],
)
def test_malformed_request_gets_status_and_close(request_bytes: bytes, status: int) -> None:
    async def main() -> None:
        h = Harness(hello)
        h.feed(request_bytes)
        assert h.output.startswith(b"HTTP/1.1 %d " % status), h.output[:80]
        assert b"connection: close\r\n" in h.output
        assert h.transport.closed

    run(main())


def test_body_over_limit_gets_413_before_the_app_runs() -> None:
    async def main() -> None:
        h = Harness(echo_body, limit_request_body=10)
        h.feed(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\n")
        assert h.output.startswith(b"HTTP/1.1 413 ")
        assert h.transport.closed

    run(main())


def test_chunked_body_over_limit_gets_413() -> None:
    async def main() -> None:
        h = Harness(echo_body, limit_request_body=10)
        h.feed(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nabcdef\r\n")
        await h.settle()
        h.feed(b"6\r\nabcdef\r\n0\r\n\r\n")
        assert h.output.startswith(b"HTTP/1.1 413 ")
        assert h.transport.closed

    run(main())


def test_chunked_request_body_is_decoded_for_the_app() -> None:
    async def main() -> None:
        h = Harness(echo_body)
        h.feed(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
        await h.settle()
        h.feed(b"2\r\nde\r\n0\r\n\r\n")
        await h.settle()
        assert h.output.endswith(b"\r\n\r\nabcde")

    run(main())


def test_app_content_length_is_sent_once() -> None:
    async def app(scope: dict, receive: Callable, send: Callable) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"Content-Length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    async def main() -> None:
        h = Harness(app)
        h.feed(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        assert h.output.lower().count(b"content-length") == 1
        assert h.output.endswith(b"\r\n\r\nok")

    run(main())


def test_streamed_response_without_length_is_chunked() -> None:
    async def app(scope: dict, receive: Callable, send: Callable) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ab", "more_body": True})
        await send({"type": "http.response.body", "body": b"cde", "more_body": False})

    async def main() -> None:
        h = Harness(app)
        h.feed(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        assert b"transfer-encoding: chunked\r\n" in h.output
        assert h.output.endswith(b"\r\n\r\n2\r\nab\r\n3\r\ncde\r\n0\r\n\r\n")
        assert not h.transport.closed

    run(main())


def test_head_response_has_length_but_no_body() -> None:
    async def main() -> None:
        h = Harness(hello)
        h.feed(b"HEAD /x HTTP/1.1\r\nHost: a\r\n\r\n")
        assert b"content-length: 8\r\n" in h.output  # len(b"hello /x")
        assert h.output.endswith(b"\r\n\r\n")

    run(main())


def test_expect_100_continue_is_sent_only_when_the_app_reads() -> None:
    async def refuse(scope: dict, receive: Callable, send: Callable) -> None:
        await send({"type": "http.response.start", "status": 401, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def main() -> None:
        reader = Harness(echo_body)
        reader.feed(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n")
        await reader.settle()
        assert reader.output == b"HTTP/1.1 100 Continue\r\n\r\n"
        reader.feed(b"abc")
        await reader.settle()
        assert reader.output.endswith(b"abc")

        refuser = Harness(refuse)
        refuser.feed(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n")
        await refuser.settle()
        assert b"100 Continue" not in refuser.output
        assert refuser.output.startswith(b"HTTP/1.1 401 ")
        assert refuser.transport.closed  # the unread body is never fetched

    run(main())


def test_large_body_pauses_reading_until_the_app_consumes_it() -> None:
    release = asyncio.Event

    async def main() -> None:
        gate = release()

        async def slow_reader(scope: dict, receive: Callable, send: Callable) -> None:
            await gate.wait()
            await echo_body(scope, receive, send)

        h = Harness(slow_reader)
        h.feed(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 200000\r\n\r\n")
        await h.settle()
        h.feed(b"x" * 100000)
        assert not h.transport.reading
        gate.set()
        await h.settle()
        assert h.transport.reading
        h.feed(b"x" * 100000)
        await h.settle()
        assert h.output.endswith(b"x" * 1000)
        assert b"content-length: 200000\r\n" in h.output

    run(main())


def test_app_exception_before_response_gives_500() -> None:
    async def broken(scope: dict, receive: Callable, send: Callable) -> None:
        raise RuntimeError("broken app")

    async def main() -> None:
        h = Harness(broken)
        h.feed(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        assert h.output.startswith(b"HTTP/1.1 500 ")
        assert h.transport.closed

    run(main())


def test_app_exception_mid_response_closes_the_connection() -> None:
    async def broken(scope: dict, receive: Callable, send: Callable) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"part", "more_body": True})
        raise RuntimeError("broken app")

    async def main() -> None:
        h = Harness(broken)
        h.feed(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        assert h.output.startswith(b"HTTP/1.1 200 ")
        assert not h.output.endswith(b"0\r\n\r\n")
        assert h.transport.closed

    run(main())


def test_app_returning_without_response_gives_500() -> None:
    async def silent(scope: dict, receive: Callable, send: Callable) -> None:
        return None

    async def main() -> None:
        h = Harness(silent)
        h.feed(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        assert h.output.startswith(b"HTTP/1.1 500 ")

    run(main())


def test_response_header_with_newline_is_refused() -> None:
    async def splitter(scope: dict, receive: Callable, send: Callable) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"x-a", b"b\r\nset-cookie: x")]})
        await send({"type": "http.response.body", "body": b""})

    async def main() -> None:
        h = Harness(splitter)
        h.feed(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        assert h.output.startswith(b"HTTP/1.1 500 ")
        assert b"set-cookie" not in h.output

    run(main())


def test_disconnect_is_delivered_to_a_waiting_app() -> None:
    async def main() -> None:
        messages: list[dict] = []

        async def waiter(scope: dict, receive: Callable, send: Callable) -> None:
            messages.append(await receive())
            messages.append(await receive())

        h = Harness(waiter)
        h.feed(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        await h.settle()
        h.protocol.connection_lost(None)
        await h.settle()
        assert messages[-1] == {"type": "http.disconnect"}

    run(main())


def test_scope_is_complete() -> None:
    async def main() -> None:
        scopes: list[dict] = []

        async def capture(scope: dict, receive: Callable, send: Callable) -> None:
            scopes.append(scope)
            await hello(scope, receive, send)

        h = Harness(capture, root_path="/api", app_state={"db": 1})
        h.feed(b"GET /a%20b/%E2%9C%93?x=1&y=2 HTTP/1.1\r\nHost: a\r\nX-Thing: Yes\r\n\r\n")
        scope = scopes[0]
        assert scope["type"] == "http"
        assert scope["asgi"]["version"] == "3.0"
        assert scope["http_version"] == "1.1"
        assert scope["method"] == "GET"
        assert scope["scheme"] == "http"
        assert scope["path"] == "/api/a b/\u2713"
        assert scope["raw_path"] == b"/api/a%20b/%E2%9C%93"
        assert scope["query_string"] == b"x=1&y=2"
        assert scope["root_path"] == "/api"
        assert scope["headers"] == [(b"host", b"a"), (b"x-thing", b"Yes")]
        assert scope["client"] == ("127.0.0.1", 40000)
        assert scope["server"] == ("127.0.0.1", 8000)
        assert scope["state"] == {"db": 1}
        assert scope["extensions"] == {"http.response.zerocopysend": {}}  # a plain connection, sendfile on

    run(main())


def test_keepalive_sweep_closes_idle_connection() -> None:
    async def main() -> None:
        h = Harness(hello, keepalive=5)
        h.feed(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        h.protocol.check_timeouts(h.state.clock + 4)
        assert not h.transport.closed
        h.protocol.check_timeouts(h.state.clock + 6)
        assert h.transport.closed

    run(main())


def test_slow_header_gets_408() -> None:
    async def main() -> None:
        h = Harness(hello, header_timeout=10)
        h.feed(b"GET / HTTP/1.1\r\nHost: a\r\n")
        h.protocol.check_timeouts(h.state.clock + 11)
        assert h.output.startswith(b"HTTP/1.1 408 ")
        assert h.transport.closed

    run(main())


def test_stalled_request_body_is_cut_after_body_timeout() -> None:
    async def main() -> None:
        messages: list[dict] = []

        async def reader(scope: dict, receive: Callable, send: Callable) -> None:
            while True:
                message = await receive()
                messages.append(message)
                if message["type"] == "http.disconnect" or not message.get("more_body"):
                    return

        h = Harness(reader, body_timeout=30)
        h.feed(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc")
        await h.settle()
        h.protocol.check_timeouts(h.state.clock + 29)
        assert not h.transport.closed
        h.protocol.check_timeouts(h.state.clock + 31)
        assert h.transport.closed
        await h.settle()
        assert messages[-1] == {"type": "http.disconnect"}

    run(main())


def test_an_app_that_does_not_read_is_not_taken_for_a_stalled_client() -> None:
    async def main() -> None:
        gate = asyncio.Event()

        async def slow_reader(scope: dict, receive: Callable, send: Callable) -> None:
            await gate.wait()
            await echo_body(scope, receive, send)

        h = Harness(slow_reader, body_timeout=30)
        h.feed(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 200000\r\n\r\n" + b"x" * 100000)
        await h.settle()
        assert not h.transport.reading  # back-pressure: the server stopped reading, not the client sending
        h.protocol.check_timeouts(h.state.clock + 31)
        assert not h.transport.closed
        gate.set()

    run(main())


def test_header_timeout_zero_means_no_header_timeout() -> None:
    async def main() -> None:
        h = Harness(hello, header_timeout=0)
        h.feed(b"GET / HTTP/1.1\r\nHost: a\r\n")
        h.protocol.check_timeouts(h.state.clock + 3)
        assert h.output == b""
        assert not h.transport.closed

    run(main())


async def _endless(scope: dict, receive: Callable, send: Callable) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    while True:
        await send({"type": "http.response.body", "body": b"x" * 1024, "more_body": True})


def test_a_response_the_client_does_not_read_is_cut_after_send_timeout() -> None:
    async def main() -> None:
        h = Harness(_endless, send_timeout=5.0)
        h.protocol.pause_writing()  # the transport's buffer is full: the client reads nothing
        h.feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await h.settle()
        blocked_at = h.protocol.write_blocked_since
        h.protocol.check_timeouts(blocked_at + 4.0)
        assert not h.transport.aborted
        h.protocol.check_timeouts(blocked_at + 6.0)
        assert h.transport.aborted  # aborted: a close would wait for the buffer to drain, i.e. for ever

    run(main())


def test_a_client_that_reads_slowly_but_steadily_is_not_cut() -> None:
    async def main() -> None:
        h = Harness(_endless, send_timeout=5.0)
        h.protocol.pause_writing()
        h.feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        start = h.protocol.write_blocked_since
        h.protocol.resume_writing()  # the client took some: progress
        h.protocol.pause_writing()  # before the app runs again, so its loop waits
        await h.settle()
        h.protocol.write_blocked_since = start + 4.0
        h.protocol.check_timeouts(start + 8.0)  # 8 s since the first pause, 4 s since the last
        assert not h.transport.aborted

    run(main())


def test_send_timeout_zero_never_cuts_a_client() -> None:
    async def main() -> None:
        h = Harness(_endless, send_timeout=0.0)
        h.protocol.pause_writing()
        h.feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        h.protocol.check_timeouts(h.protocol.write_blocked_since + 3600.0)
        assert not h.transport.aborted

    run(main())


def test_a_connection_closed_with_unsent_output_stays_counted_until_it_is_gone() -> None:
    async def main() -> None:
        h = Harness(hello, send_timeout=5.0)
        h.transport.unsent = 4096  # the client has not taken the end of the response
        h.feed(b"GET /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert h.transport.closed and not h.transport.aborted
        # Still holding a descriptor and a buffer: counted against worker_connections, waited for by a drain.
        assert h.protocol in h.state.connections
        h.protocol.check_timeouts(h.protocol.write_blocked_since + 6.0)
        assert h.transport.aborted
        h.protocol.connection_lost(None)
        assert h.protocol not in h.state.connections

    run(main())


def test_a_connection_closed_with_everything_sent_leaves_at_once() -> None:
    async def main() -> None:
        h = Harness(hello)
        h.feed(b"GET /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert h.transport.closed
        assert h.protocol not in h.state.connections

    run(main())


def test_finished_responses_are_written_together_at_the_end_of_the_loop_iteration() -> None:
    async def main() -> None:
        first, second = Harness(hello), Harness(hello)
        second.state = first.state
        second.protocol = H1Protocol(first.state)
        second.protocol.connection_made(second.transport)
        first.feed(b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n")
        second.feed(b"GET /2 HTTP/1.1\r\nHost: x\r\n\r\n")
        assert not first.transport.written and not second.transport.written  # held for the iteration's end
        await asyncio.sleep(0)
        assert bytes(first.transport.written).endswith(b"hello /1")
        assert bytes(second.transport.written).endswith(b"hello /2")

    run(main())


def test_a_held_response_goes_out_before_the_close_and_before_a_refusal_behind_it() -> None:
    async def main() -> None:
        h = Harness(hello)
        h.feed(b"GET /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert h.transport.closed
        assert bytes(h.transport.written).endswith(b"hello /a")  # written before the close, not dropped
        h = Harness(hello)
        h.feed(b"GET /b HTTP/1.1\r\nHost: x\r\n\r\nBAD REQUEST LINE\r\n\r\n")
        await h.settle()
        output = bytes(h.transport.written)
        assert output.startswith(b"HTTP/1.1 200 OK") and b"hello /b" in output
        assert output.index(b"hello /b") < output.index(b"HTTP/1.1 501")  # "BAD" is no method

    run(main())
