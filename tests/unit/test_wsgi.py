"""The WSGI request cycle driven through the HTTP/1.1 protocol and a fake transport: PEP 3333 environ, input,
start_response, write(), iterables, framing, errors and back-pressure, with wsgiref.validate on every path.

Every test runs in both modes: one request at a time on the event loop's thread (threads=1, `-k sync`) and in a
pool of threads; tests of one mode only say so with `@only_mode(...)`."""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import Any
from wsgiref.validate import validator

import pytest

from corral.http import eager
from corral.http.h1 import H1Protocol
from corral.http.wsgi import PIPE_HIGH_WATER, WSGIApp
from tests.unit.fakes import FakeTransport, server_state

eager.install()

# An exception escaping an app thread would be a server bug (and used to be swallowed): fail the test on it.
pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")


ON_THE_LOOP = 1
IN_THREADS = 2


@pytest.fixture(autouse=True, params=[ON_THE_LOOP, IN_THREADS], ids=["app-on-the-loop", "app-in-threads"])
def app_threads(request: pytest.FixtureRequest) -> int:
    """How many threads the test's WSGIApp gets (its mode)."""
    Harness.threads = request.param
    return int(request.param)


def only_mode(threads: int) -> pytest.MarkDecorator:
    return pytest.mark.parametrize("app_threads", [threads], indirect=True)


class Harness:
    threads = IN_THREADS  # set per test by the app_threads fixture

    def __init__(self, wsgi_app: Callable[..., Any], *, validate: bool = True, **settings: Any):
        self.loop = asyncio.get_running_loop()
        self.app = WSGIApp(validator(wsgi_app) if validate else wsgi_app).configure(threads=self.threads)
        self.state = server_state(self.app, **settings)
        self.transport = FakeTransport()
        self.protocol = H1Protocol(self.state)
        self.protocol.connection_made(self.transport)

    def feed(self, data: bytes) -> None:
        self.protocol.data_received(data)

    async def until(self, done: Callable[[], bool]) -> None:
        for _ in range(500):
            if done():
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"not done; output so far: {self.output!r}")

    async def answered(self, count: int = 1) -> bytes:
        await self.until(lambda: self.state.counters.requests >= count or self.transport.closed)
        return self.output

    @property
    def output(self) -> bytes:
        """What is on the wire at the end of this loop iteration (finished responses are written then)."""
        self.state.write_held_outputs()
        return bytes(self.transport.written)


def run(coro: Awaitable[None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 10))  # type: ignore[arg-type]


def body_of(output: bytes) -> bytes:
    """The response body, de-chunked when the response is chunked."""
    head, _, body = output.partition(b"\r\n\r\n")
    if b"transfer-encoding: chunked" not in head:
        return body
    data = b""
    while body:
        size, _, body = body.partition(b"\r\n")
        data += body[: int(size, 16)]
        body = body[int(size, 16) + 2 :]
    return data


def environ_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    keys = ("REQUEST_METHOD", "SCRIPT_NAME", "PATH_INFO", "QUERY_STRING", "SERVER_NAME", "SERVER_PORT",
            "SERVER_PROTOCOL", "REMOTE_ADDR", "REMOTE_PORT", "CONTENT_TYPE", "HTTP_X_TWO", "wsgi.url_scheme",
            "wsgi.multithread", "wsgi.input_terminated")
    text = "\n".join(f"{key}={environ.get(key)}" for key in keys).encode("latin-1")
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [text]


def test_environ_carries_pep_3333_variables_from_the_request(app_threads: int) -> None:
    async def main() -> None:
        h = Harness(environ_app, root_path="/api")
        h.feed(
            b"POST /caf%C3%A9/x?a=1&b=2 HTTP/1.1\r\nHost: example.org:8080\r\nContent-Type: text/plain\r\n"
            b"X-Two: a\r\nX-Two: b\r\nContent-Length: 0\r\n\r\n"
        )
        lines = dict(line.split("=", 1) for line in body_of(await h.answered()).decode("latin-1").splitlines())
        assert lines["REQUEST_METHOD"] == "POST"
        assert lines["SCRIPT_NAME"] == "/api"
        assert lines["PATH_INFO"] == "/caf\xc3\xa9/x"  # the unquoted bytes, carried as latin-1
        assert lines["QUERY_STRING"] == "a=1&b=2"
        assert (lines["SERVER_NAME"], lines["SERVER_PORT"]) == ("example.org", "8080")
        assert lines["SERVER_PROTOCOL"] == "HTTP/1.1"
        assert (lines["REMOTE_ADDR"], lines["REMOTE_PORT"]) == ("127.0.0.1", "40000")
        assert lines["CONTENT_TYPE"] == "text/plain"
        assert lines["HTTP_X_TWO"] == "a,b"
        assert lines["wsgi.url_scheme"] == "http"
        assert lines["wsgi.multithread"] == str(app_threads > 1)
        assert lines["wsgi.input_terminated"] == "False"

    run(main())


def test_without_a_host_header_server_name_and_port_are_the_listening_address() -> None:
    async def main() -> None:
        h = Harness(environ_app)
        h.feed(b"GET / HTTP/1.0\r\n\r\n")  # HTTP/1.0 may leave Host out
        lines = dict(line.split("=", 1) for line in body_of(await h.answered()).decode("latin-1").splitlines())
        assert (lines["SERVER_NAME"], lines["SERVER_PORT"]) == ("127.0.0.1", "8000")
        assert lines["SERVER_PROTOCOL"] == "HTTP/1.0"

    run(main())


def test_each_request_gets_a_fresh_environ_whatever_the_app_did_to_the_last_one() -> None:
    seen: list[dict[str, Any]] = []

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        seen.append(dict(environ))
        environ["wsgi.multiprocess"] = "changed"  # the app's environ is its own to change
        environ["myapp.user"] = "alice"
        del environ["SCRIPT_NAME"]
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    async def main() -> None:
        h = Harness(app, validate=False)
        h.feed(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
        await h.answered()
        h.feed(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
        await h.answered(2)

    run(main())
    first, second = seen
    assert second["wsgi.multiprocess"] is True
    assert "myapp.user" not in second
    assert second["SCRIPT_NAME"] == ""
    del first["asgi.scope"], second["asgi.scope"]  # each request's own scope
    assert first == second


@only_mode(ON_THE_LOOP)
def test_served_requests_leave_no_reference_cycles_to_collect() -> None:
    """The scope holds the environ (for hooks and the access log): the environ must not hold the scope back, or
    every request would wait for the cycle collector to be freed."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        assert environ["asgi.scope"]["path"] == "/a"
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    async def main() -> None:
        h = Harness(app, validate=False)
        h.feed(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
        await h.answered()
        gc.collect()
        gc.disable()
        try:
            for count in range(2, 12):
                h.feed(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
                await h.answered(count)
            # Only the requests' own objects count: an earlier test's may be released meanwhile.
            assert [o for o in _collected_garbage() if _of_a_request(o)] == []
        finally:
            gc.enable()

    run(main())


def _collected_garbage() -> list[Any]:
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        return list(gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()


def _of_a_request(obj: object) -> bool:
    """An environ, an HTTP request's scope, or an object of corral's HTTP or WSGI request cycle."""
    if isinstance(obj, dict):
        return "wsgi.version" in obj or obj.get("type") == "http"
    return type(obj).__module__ in _REQUEST_CYCLE_MODULES


_REQUEST_CYCLE_MODULES = ("corral.http.asgi", "corral.http.h1", "corral.http.wsgi", "corral.http.wsgi_environ")


def test_an_invalid_status_is_refused_each_time_it_is_given() -> None:
    statuses = iter(["200 OK", "200", "200 OK", "200"])

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        start_response(next(statuses), [("Content-Type", "text/plain")])
        return [b"ok"]

    async def main() -> None:
        h = Harness(app, validate=False)
        for count in range(1, 5):
            h.feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            await h.answered(count)
        assert h.output.count(b"HTTP/1.1 500 ") == 2
        assert h.output.count(b"HTTP/1.1 200 OK") == 2

    run(main())


def read_all(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    stream = environ["wsgi.input"]
    first = stream.readline()
    second = stream.read(3)
    rest = b"".join(stream)  # iteration over what is left
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    return [b"|".join((first, second, rest, str(environ["wsgi.input_terminated"]).encode()))]


def test_wsgi_input_reads_lines_sizes_and_iterates_a_length_framed_body() -> None:
    async def main() -> None:
        h = Harness(read_all)
        h.feed(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 16\r\n\r\nline1\nabcdefgh\nz")
        assert body_of(await h.answered()) == b"line1\n|abc|defgh\nz|False"

    run(main())


def test_a_chunked_upload_is_read_in_full_and_marked_input_terminated() -> None:
    async def main() -> None:
        h = Harness(read_all)
        h.feed(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nline1\n\r\n")
        await asyncio.sleep(0.05)
        assert h.output == b""  # the app is not called until the whole body is in
        h.feed(b"4\r\nabcd\r\n0\r\n\r\n")
        assert body_of(await h.answered()) == b"line1\n|abc|d|True"

    run(main())


def test_a_request_without_a_body_reads_empty_input_even_after_an_app_closed_it() -> None:
    def read_then_close(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        stream = environ["wsgi.input"]
        seen = [stream.read(), stream.read(5), stream.readline(), b"".join(stream.readlines()), b"".join(stream)]
        stream.close()  # the empty input is shared by every request without a body: this must not break the next
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [repr(seen).encode()]

    async def main() -> None:
        h = Harness(read_then_close, validate=False)  # wsgiref.validate forbids close(); apps still call it
        h.feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        first = body_of(await h.answered())
        h.feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await h.answered(2)
        assert first == repr([b"", b"", b"", b"", b""]).encode()
        assert h.output.count(repr([b"", b"", b"", b"", b""]).encode()) == 2

    run(main())


def test_an_empty_length_framed_body_is_read_as_an_empty_input() -> None:
    async def main() -> None:
        h = Harness(read_all)
        h.feed(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        assert body_of(await h.answered()) == b"|||False"

    run(main())


def test_a_body_over_the_spool_size_goes_to_a_temporary_file(tmp_path: Any) -> None:
    seen: dict[str, Any] = {}

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        stream = environ["wsgi.input"]
        seen["file"] = type(stream._file).__name__
        data = stream.read()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"%d" % len(data)]

    async def main() -> None:
        h = Harness(app, validate=False)
        h.app.spool = 1000
        h.app.tmp_dir = str(tmp_path)
        h.feed(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n" + b"x" * 5000)
        assert body_of(await h.answered()) == b"5000"
        assert seen["file"] != "BytesIO"

    run(main())


def test_a_single_item_response_gets_content_length_and_keeps_the_connection() -> None:
    async def main() -> None:
        h = Harness(environ_app, validate=False)  # validate wraps the list in an iterator of unknown length
        h.feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        output = await h.answered()
        assert output.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"content-length: " in output
        assert not h.transport.closed

    run(main())


def streaming(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
    start_response("200 OK", [("Content-Type", "text/plain")])
    for i in range(3):
        yield b"part%d\n" % i


def test_a_generator_streams_with_chunked_framing() -> None:
    async def main() -> None:
        h = Harness(streaming)
        h.feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        output = await h.answered()
        assert b"transfer-encoding: chunked\r\n" in output
        assert output.partition(b"\r\n\r\n")[2] == b"6\r\npart0\n\r\n6\r\npart1\n\r\n6\r\npart2\n\r\n0\r\n\r\n"

    run(main())


def test_head_gets_the_headers_and_no_body() -> None:
    async def main() -> None:
        h = Harness(environ_app)
        h.feed(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n")
        output = await h.answered()
        assert output.startswith(b"HTTP/1.1 200 OK\r\n")
        assert body_of(output) == b""

    run(main())


def test_the_write_callable_sends_before_the_iterable() -> None:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"first ")
        return [b"second"]

    async def main() -> None:
        h = Harness(app)
        h.feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        output = await h.answered()
        assert b"first " in output and output.endswith(b"second\r\n0\r\n\r\n")

    run(main())


class ClosingIterable:
    closed = threading.Event()

    def __init__(self) -> None:
        self.parts = [b"a", b"b"]

    def __iter__(self) -> Any:
        return iter(self.parts)

    def close(self) -> None:
        ClosingIterable.closed.set()


def test_the_response_iterable_is_closed() -> None:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return ClosingIterable()

    async def main() -> None:
        ClosingIterable.closed.clear()
        h = Harness(app)
        h.feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await h.answered()
        await h.until(ClosingIterable.closed.is_set)

    run(main())


def test_file_wrapper_sends_the_file() -> None:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return environ["wsgi.file_wrapper"](open(__file__, "rb"), 4096)

    async def main() -> None:
        h = Harness(app)
        h.feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        output = await h.answered()
        with open(__file__, "rb") as file:
            assert file.read(200) in output

    run(main())


def test_start_response_with_exc_info_before_headers_replaces_the_response() -> None:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        try:
            raise ValueError("boom")
        except ValueError:
            start_response("503 Service Unavailable", [("Content-Type", "text/plain")], sys.exc_info())
        return [b"sorry"]

    async def main() -> None:
        h = Harness(app)
        h.feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        output = await h.answered()
        assert output.startswith(b"HTTP/1.1 503 ")
        assert body_of(output) == b"sorry"

    run(main())


def test_start_response_with_exc_info_after_headers_reraises_and_cuts_the_response(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"partial")
        try:
            raise ValueError("late failure")
        except ValueError:
            start_response("500 Internal Server Error", [], sys.exc_info())
        return [b"never"]

    async def main() -> None:
        h = Harness(app, validate=False)
        h.feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await h.until(lambda: h.transport.closed)
        assert h.output.startswith(b"HTTP/1.1 200 OK")
        assert b"never" not in h.output

    with caplog.at_level(logging.ERROR, "corral.error"):
        run(main())
    assert "late failure" in caplog.text


def test_an_app_that_raises_gets_a_500_and_a_traceback_and_the_connection_serves_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls = []

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("app bug")
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"fine"]

    async def main() -> None:
        h = Harness(app)
        h.feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await h.answered()).startswith(b"HTTP/1.1 500 ")
        h.feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await h.answered(2)).endswith(b"fine\r\n0\r\n\r\n")

    with caplog.at_level(logging.ERROR, "corral.error"):
        run(main())
    assert "Exception in WSGI application" in caplog.text
    assert "RuntimeError: app bug" in caplog.text


def test_an_iterable_that_raises_midway_closes_the_connection_and_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        start_response("200 OK", [("Content-Type", "text/plain")])
        yield b"some"
        raise RuntimeError("midway")

    async def main() -> None:
        h = Harness(app)
        h.feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await h.until(lambda: h.transport.closed)
        assert not h.output.endswith(b"0\r\n\r\n")  # the chunked body never ends: the client sees it cut

    with caplog.at_level(logging.ERROR, "corral.error"):
        run(main())
    assert "raised midway" in caplog.text


def _streaming_app(produced: list[int], chunk: bytes) -> Callable[..., Any]:
    """An app that streams 200 chunks (12.5 MiB of 64 KiB ones: far more than the pipe and the transport hold),
    counting in `produced` each one it yields."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        start_response("200 OK", [("Content-Type", "text/plain")])
        for _ in range(200):
            produced.append(len(chunk))
            yield chunk

    return app


@only_mode(IN_THREADS)
def test_a_slow_reader_blocks_the_app_thread_with_bounded_buffering() -> None:
    produced: list[int] = []
    chunk = b"x" * 65536

    async def main() -> None:
        h = Harness(_streaming_app(produced, chunk))
        h.protocol.pause_writing()  # the client reads nothing
        h.feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await asyncio.sleep(0.3)
        held = sum(produced) - len(h.output)
        assert held <= PIPE_HIGH_WATER + len(chunk)
        assert len(produced) < 20
        h.protocol.resume_writing()
        await h.answered()
        assert len(produced) == 200

    run(main())


@only_mode(ON_THE_LOOP)
def test_on_the_loop_a_slow_reader_stops_the_iterable_with_bounded_buffering() -> None:
    produced: list[int] = []
    chunk = b"x" * 65536

    async def main() -> None:
        h = Harness(_streaming_app(produced, chunk))
        h.protocol.pause_writing()  # the client reads nothing
        h.feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await asyncio.sleep(0.3)
        assert len(produced) <= 2  # the iterable waits for the client: one chunk written, one in hand
        h.protocol.resume_writing()
        await h.answered()
        assert len(produced) == 200
        assert len(body_of(h.output)) == 200 * len(chunk)

    run(main())


@only_mode(ON_THE_LOOP)
def test_on_the_loop_the_next_request_runs_the_app_only_after_a_blocked_stream_finishes() -> None:
    events = []

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        path = environ["PATH_INFO"]
        events.append(f"start {path}")
        start_response("200 OK", [("Content-Type", "text/plain")])
        yield b"a" * 65536
        yield b"b" * 65536
        events.append(f"end {path}")

    async def main() -> None:
        wsgi = WSGIApp(app).configure(threads=1)
        state = server_state(wsgi)
        slow, quick = FakeTransport(), FakeTransport()
        slow_protocol, quick_protocol = H1Protocol(state), H1Protocol(state)
        slow_protocol.connection_made(slow)
        quick_protocol.connection_made(quick)
        slow_protocol.pause_writing()
        slow_protocol.data_received(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        quick_protocol.data_received(b"GET /quick HTTP/1.1\r\nHost: x\r\n\r\n")
        await asyncio.sleep(0.2)
        assert events == ["start /slow"]  # one request at a time: /quick waits for the app
        slow_protocol.resume_writing()
        for _ in range(500):
            if state.counters.requests == 2:
                break
            await asyncio.sleep(0.01)
        assert events == ["start /slow", "end /slow", "start /quick", "end /quick"]

    run(main())


@only_mode(ON_THE_LOOP)
def test_on_the_loop_the_app_runs_with_no_event_loop_running_in_its_thread() -> None:
    async def compute() -> bytes:
        await asyncio.sleep(0)
        return b"computed"

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [asyncio.run(compute())]  # what asgiref's async_to_sync and sync code calling async code do

    async def main() -> None:
        loop = asyncio.get_running_loop()
        h = Harness(app)
        h.feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        output = await h.answered()
        assert body_of(output) == b"computed"
        assert asyncio.get_running_loop() is loop

    run(main())


@only_mode(IN_THREADS)
def test_threads_bound_how_many_requests_run_the_app_at_once() -> None:
    running = 0
    peak = 0
    lock = threading.Lock()

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        threading.Event().wait(0.05)
        with lock:
            running -= 1
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    async def main() -> None:
        wsgi = WSGIApp(app).configure(threads=2)
        state = server_state(wsgi)
        for _ in range(6):
            protocol = H1Protocol(state)
            protocol.connection_made(FakeTransport())
            protocol.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        for _ in range(500):
            if state.counters.requests == 6:
                break
            await asyncio.sleep(0.01)
        assert state.counters.requests == 6
        assert peak == 2

    run(main())


def test_a_second_start_response_without_exc_info_is_an_error() -> None:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b""]

    async def main() -> None:
        h = Harness(app, validate=False)
        h.feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await h.answered()).startswith(b"HTTP/1.1 500 ")

    run(main())


@pytest.mark.parametrize(
    ("argv", "threads"),
    [([], 1), (["--threads", "4"], 4), (["-k", "gthread", "--threads", "4"], 4), (["-k", "sync", "--threads", "4"], 1)],
)
def test_worker_class_and_threads_size_the_wsgi_pool_as_in_gunicorn(argv: list[str], threads: int) -> None:
    from corral.config import load_config
    from corral.http.wsgi import wsgi_threads

    assert wsgi_threads(load_config([*argv, "app:app"], environ={}).settings.worker) == threads


def test_an_app_wrapped_by_wsgiref_validate_is_detected_as_wsgi() -> None:
    from corral.loading import app_as_asgi3

    assert isinstance(app_as_asgi3(validator(environ_app)), WSGIApp)


@only_mode(IN_THREADS)
def test_time_waiting_for_a_slow_client_does_not_count_as_time_in_the_app() -> None:
    from corral.http.wsgi import _Call, _Pipe, _Waker

    async def main() -> None:
        loop = asyncio.get_running_loop()
        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "wsgi.input": None}
        call = _Call(environ, _Pipe(loop, _Waker(loop)))
        call.started = 100.0
        assert call.time_in_app(130.0) == 30.0
        call.pipe.blocked_total = 20.0  # waited 20 s for the client earlier
        call.pipe.blocked_since = 125.0  # and has been waiting again since 125
        assert call.time_in_app(130.0) == 5.0

    run(main())


def test_a_close_that_raises_is_logged_and_the_response_stands(caplog: pytest.LogCaptureFixture) -> None:
    class BadClose:
        def __iter__(self) -> Any:
            return iter([b"body"])

        def close(self) -> None:
            raise OSError("close failed")

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return BadClose()

    async def main() -> None:
        h = Harness(app, validate=False)
        h.feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await h.answered()).endswith(b"4\r\nbody\r\n0\r\n\r\n")
        await h.until(lambda: "close() raised" in caplog.text)

    with caplog.at_level(logging.ERROR, "corral.error"):
        run(main())


def test_bodies_past_the_workers_memory_budget_go_to_disk_and_the_budget_is_given_back(tmp_path: Any) -> None:
    from corral.http.wsgi_environ import BodyBudget

    kinds: list[str] = []

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        kinds.append(type(environ["wsgi.input"]._file).__name__)
        data = environ["wsgi.input"].read()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"%d" % len(data)]

    async def main() -> None:
        h = Harness(app, validate=False)
        h.app.tmp_dir = str(tmp_path)
        h.app.budget = BodyBudget(3000)  # room for one 2000-byte body in memory, not two
        h.app.budget.used = 2000  # as if another connection's body were waiting for a thread
        h.feed(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2000\r\n\r\n" + b"x" * 2000)
        assert body_of(await h.answered()) == b"2000"
        h.app.budget.used = 0
        h.feed(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2000\r\n\r\n" + b"y" * 2000)
        assert (await h.answered(2)).endswith(b"\r\n\r\n2000")
        await h.until(lambda: h.app.budget.used == 0)

    run(main())
    assert kinds[0] != "BytesIO"
    assert kinds[1] == "BytesIO"


@only_mode(ON_THE_LOOP)
def test_the_turn_to_run_the_app_goes_in_arrival_order_and_survives_cancelled_waiters() -> None:
    from corral.http.wsgi import _Turn

    async def main() -> None:
        turn = _Turn()
        turn.busy = True  # a first request runs the app
        gone = asyncio.create_task(turn.wait())  # its client leaves while it waits
        handed = asyncio.create_task(turn.wait())  # cancelled just as the turn is handed to it
        last = asyncio.create_task(turn.wait())
        await asyncio.sleep(0)
        gone.cancel()
        await asyncio.sleep(0)
        assert len(turn.waiters) == 2
        turn.release()  # the first request is done: the turn goes to the next waiter, "handed"...
        handed.cancel()  # ...which is cancelled before it could run: the turn must go on to "last"
        await asyncio.wait_for(last, 1)
        assert handed.cancelled() and gone.cancelled()
        assert turn.busy and not turn.waiters  # "last" has it
        turn.release()
        assert not turn.busy

    run(main())
