"""WSGI apps on the async worker: the request cycle that runs a WSGI callable, one request or `threads` at a time.

`WSGIApp` is an ASGI 3 callable around a WSGI one, so a WSGI request goes through the same connection, parser,
limits, request counting, access log, metrics, hooks and drain as an ASGI one. The event loop reads the body in
full (`wsgi.input` never blocks the app on the client) before the app runs.

How the app runs depends on how many requests may run it at once (`threads`, Gunicorn's meaning):

- One (`-k sync`, and the default): on the event loop's own thread, between its I/O, as Gunicorn's sync worker
  runs it between accepts. No thread hand-over per request, so this is the fast mode; while the app runs the
  loop waits, which costs nothing the app could have used (one request at a time is the contract). The
  response is written with the connection's back-pressure: a streamed response whose client reads slowly
  makes the next request wait, as its app thread would, but holds no more memory than the transport's bound.
- More: in a pool of that many threads. The response is handed back to the loop through a pipe bounded in
  bytes: the thread waits while the client is slow, so a slow reader holds no more memory than the bound and
  an app thread only as long as the pipe is full.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import signal
import stat
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator
from queue import SimpleQueue
from typing import Any

from corral.compiled import mypyc_attr
from corral.core.settings import HttpSettings, WorkerSettings
from corral.http.errors import ClientDisconnected
from corral.http.sendfile import ZEROCOPYSEND
from corral.http.wsgi_environ import (
    BodyBudget,
    BodyWriter,
    EnvironBuilder,
    ErrorStream,
    FileWrapper,
    WSGIInput,
)

__all__ = ["MEMORY_BODIES_BYTES", "PIPE_HIGH_WATER", "SPOOL_BYTES", "WSGIApp", "serving_interface", "wsgi_threads"]

# A request body up to this size stays in memory; a larger one goes to a temporary file in tmp_upload_dir.
SPOOL_BYTES = 1024 * 1024
# Request bodies one worker holds in memory at once (waiting for a thread, or being read); past it, to disk.
MEMORY_BODIES_BYTES = 16 * 1024 * 1024
# Response bytes an app thread may have handed over and the loop not yet written before the thread waits.
PIPE_HIGH_WATER = 256 * 1024
# How often the loop checks the age of running WSGI calls against `timeout`.
DEADLINE_CHECK_SECONDS = 1.0

_log = logging.getLogger("corral.error")
_get_running_loop = asyncio._get_running_loop
_set_running_loop = asyncio._set_running_loop
_END_OF_BODY: Any = object()
# The app's mistakes with start_response, as the error log names them.
_BODY_BEFORE_START = "WSGI app sent a body before calling start_response"
_RETURNED_BEFORE_START = "WSGI app returned without calling start_response"
_ERRORS = ErrorStream(_log)
_INTERNAL_ERROR = b"Internal Server Error"
_ERROR_HEADERS = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"21")]
# The code of each status line apps have given, checked once (bounded: apps may put anything after the code).
_STATUS_CODES: dict[str, int] = {}
_STATUS_CODES_MAX = 1024

# What the app thread hands the loop.
_START = 0  # (status, headers)
_BODY = 1  # bytes
_END = 2  # bytes: the last body bytes
_ERROR = 3  # (exception, headers_were_sent)
_WHOLE = 4  # (status, headers, body): a response the app gave all at once, handed over in one step
_FILE = 5  # _HandedFile: the rest of the response is a file, sent by the loop (zero copy), which closes it


# Exceptions stay Python classes when this module is compiled (mypyc cannot derive a native class from them).
@mypyc_attr(native_class=False)
class WSGIResponseAborted(ClientDisconnected):
    """The response was cut off after its head was sent (the app's iterable raised midway): the connection is
    closed, so the client sees an incomplete response. Already logged, so the cycle only closes."""


@mypyc_attr(native_class=False)
class _Abandoned(Exception):
    """Raised in the app thread when the loop will take no more of the response (client gone, cancelled)."""


class _Threads:
    """The worker's app threads: `size` daemon threads taking calls from one queue, and the waker their calls'
    pipes share. Not a ThreadPoolExecutor: nobody waits on a call's Future (its outcome goes through its pipe),
    so none is made per request."""

    def __init__(self, size: int, app: Callable[..., Iterable[bytes]], loop: asyncio.AbstractEventLoop) -> None:
        self.app = app
        self.loop = loop
        self.waker = _Waker(loop)
        self.queue: SimpleQueue[_Call | _Closing] = SimpleQueue()
        for index in range(size):
            threading.Thread(target=self._serve, name=f"corral-wsgi-{index}", daemon=True).start()

    def submit(self, call: _Call | _Closing) -> None:
        self.queue.put(call)

    def _serve(self) -> None:
        app, take = self.app, self.queue.get
        while True:
            call = take()
            try:
                call.run(app)
            except BaseException:  # run() reports the app's errors itself; this thread must outlive any call
                _log.exception("WSGI thread: unexpected error")


class _Waker:
    """Wakes the loop's waiting response relays from app threads. One call_soon_threadsafe (a write to the
    loop's self-pipe) serves every hand-over that comes before the loop runs it: under load, many per wake."""

    __slots__ = ("lock", "loop", "ready", "scheduled")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.lock = threading.Lock()
        self.ready: list[asyncio.Future[None]] = []
        self.scheduled = False

    def wake(self, waiter: asyncio.Future[None]) -> None:
        """From an app thread."""
        with self.lock:
            self.ready.append(waiter)
            if self.scheduled:
                return
            self.scheduled = True
        self.loop.call_soon_threadsafe(self._run)

    def _run(self) -> None:
        with self.lock:
            ready, self.ready = self.ready, []
            self.scheduled = False
        for waiter in ready:
            if not waiter.done():
                waiter.set_result(None)


class _Pipe:
    """Response messages from one app thread to the loop, bounded in bytes (the thread blocks past the bound).

    Plain locks rather than a Condition: this is made for every request, and a thread rarely has to wait."""

    __slots__ = (
        "abandoned", "blocked_since", "blocked_total", "gate", "items", "lock", "loop", "size", "waiter", "waker",
    )  # fmt: skip

    def __init__(self, loop: asyncio.AbstractEventLoop, waker: _Waker) -> None:
        self.loop = loop
        self.waker = waker
        self.lock = threading.Lock()
        self.items: list[tuple[int, Any]] = []
        self.size = 0
        self.waiter: asyncio.Future[None] | None = None
        self.gate: Any = None  # a held lock the blocked thread waits on; the loop releases it
        self.abandoned = False
        # Time the thread spent waiting for a slow client: not time in the app, so not counted by `timeout`.
        self.blocked_since = 0.0
        self.blocked_total = 0.0

    # --- the app thread

    def put(self, kind: int, value: Any, size: int = 0) -> None:
        with self.lock:
            if self.abandoned:
                raise _Abandoned
            self.items.append((kind, value))
            self.size += size
            waiter, self.waiter = self.waiter, None
            if waiter is not None:
                self.waker.wake(waiter)
            if self.size <= PIPE_HIGH_WATER:
                return
            gate = self.gate = threading.Lock()
            gate.acquire()
        self.blocked_since = time.monotonic()
        gate.acquire()  # until the loop has written enough, or will write no more
        self.blocked_total += time.monotonic() - self.blocked_since
        self.blocked_since = 0.0

    # --- the loop

    async def take(self) -> list[tuple[int, Any]]:
        while True:
            with self.lock:
                items = self.items
                if items:
                    self.items = []
                    return items
                self.waiter = waiter = self.loop.create_future()
            await waiter

    def written(self, size: int) -> None:
        """`size` bytes taken from the pipe are on the transport: the thread may hand over that much more.
        Counted only now, not when taken, so bytes held by the loop while it waits on a slow client count."""
        with self.lock:
            self.size -= size
            if self.gate is not None and self.size <= PIPE_HIGH_WATER:
                self.gate, gate = None, self.gate
                gate.release()

    def abandon(self) -> list[tuple[int, Any]]:
        """No more is taken: wake a thread waiting to hand over more. Returns what was handed over and never
        taken (a file among it is still to be closed)."""
        with self.lock:
            self.abandoned = True
            if self.gate is not None:
                self.gate, gate = None, self.gate
                gate.release()
            left, self.items = self.items, []
        return left


class _Response:
    """PEP 3333's start_response and the response head it records: the part of a call both modes share."""

    __slots__ = ("headers", "headers_sent", "status")

    def __init__(self) -> None:
        self.status: int | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.headers_sent = False

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Callable[[bytes], None]:
        if exc_info is not None:
            try:
                if self.headers_sent:
                    raise exc_info[1].with_traceback(exc_info[2])  # PEP 3333: too late to change the response
            finally:
                exc_info = None
        elif self.status is not None:
            raise AssertionError("start_response called a second time without exc_info")
        self.status = (_STATUS_CODES.get(status) if type(status) is str else None) or _status_code(status)
        encoded = []
        for name, value in headers:  # a loop costs less than a comprehension's own frame, for a few headers
            encoded.append((name.encode("latin-1"), value.encode("latin-1")))
        self.headers = encoded
        return self.write

    def write(self, data: bytes) -> None:
        raise NotImplementedError

    def head(self) -> dict[str, Any]:
        """The http.response.start message; the caller has checked that start_response was called."""
        return {"type": "http.response.start", "status": self.status, "headers": self.headers}

    def check_started(self, mistake: str) -> None:
        """Raise the app's `mistake` if it has not called start_response."""
        if self.status is None:
            raise AssertionError(mistake)


def _status_code(status: Any) -> int:
    """The code of a status line not in `_STATUS_CODES` yet (start_response looks there first, inline)."""
    if type(status) is not str or len(status) < 4 or not status[:3].isdigit() or status[3] != " ":
        raise ValueError(f"WSGI status must be a str like '200 OK', got {status!r}")
    code = int(status[:3])
    if len(_STATUS_CODES) < _STATUS_CODES_MAX:
        _STATUS_CODES[status] = code
    return code


def _body_bytes(data: Any) -> bytes:
    """The app's body bytes; anything else is the app's mistake."""
    if type(data) is not bytes:
        raise TypeError(f"WSGI response body must be bytes, got {type(data).__name__}")
    return data


class _Call(_Response):
    """One WSGI call, run in a pool thread: start_response, write() and the response iterable."""

    __slots__ = ("body", "environ", "method", "path", "pipe", "started")

    def __init__(self, environ: dict[str, Any], pipe: _Pipe) -> None:
        super().__init__()
        self.environ = environ
        # Closed by this call, in its thread, once the app is done with it (the loop may be done sooner). Ours,
        # not environ's: middleware (wsgiref.validate) may wrap it.
        self.body = environ["wsgi.input"]
        self.pipe = pipe
        self.started = math.inf  # waiting for a pool thread: the timeout counts from when one runs it
        self.method = environ["REQUEST_METHOD"]
        self.path = environ["PATH_INFO"]

    def time_in_app(self, now: float) -> float:
        """Seconds this call has run in a thread, less the time it waited for the client (read on the loop)."""
        pipe = self.pipe
        blocked_since = pipe.blocked_since
        blocked = pipe.blocked_total + (now - blocked_since if blocked_since else 0.0)
        return now - self.started - blocked

    def run(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.started = time.monotonic()
        try:
            result = app(self.environ, self.start_response)
            if type(result) is list and len(result) <= 1:  # the usual answer: one body, one hand-over, no close()
                self._end(result[0] if result else b"")
            elif type(result) is not FileWrapper or not self._hand_over_file(result):
                try:
                    for chunk in result:
                        if chunk:
                            self.write(chunk)
                    self._end(b"")
                finally:
                    _close(result)
        except _Abandoned:
            pass
        except BaseException as exc:  # reported on the loop, which answers 500 or closes the connection
            try:
                self.pipe.put(_ERROR, (exc, self.headers_sent))
            except _Abandoned:
                _log.debug("WSGI app raised after the client went away: %r", exc)
        finally:
            self.body.close()

    def _hand_over_file(self, wrapper: FileWrapper) -> bool:
        """Give the loop our wsgi.file_wrapper's file to send with zero copy (PEP 3333's "using sendfile for
        files"): only a regular file with a descriptor, and only where the connection offers zero-copy sends.
        False: the wrapper is iterated as any iterable is. From here on the loop closes it."""
        fd = _zero_copy_descriptor(self.environ, wrapper)
        if fd is None:
            return False
        handed = _HandedFile(wrapper, fd, _declared_length(self.headers))
        try:
            if not self.headers_sent:
                self._send_headers()
            handed.offset = wrapper.filelike.tell()  # PEP 3333: from the file's current position
            self.pipe.put(_FILE, handed)
        except BaseException:
            _close(wrapper)
            raise
        return True

    def write(self, data: bytes) -> None:
        """PEP 3333's write(): also how the iterable's chunks go out. Blocks while the pipe is full."""
        _body_bytes(data)
        pipe = self.pipe
        if not self.headers_sent:
            self._send_headers()
        pipe.put(_BODY, data, len(data))

    def _send_headers(self) -> None:
        self.check_started(_BODY_BEFORE_START)
        self.headers_sent = True
        self.pipe.put(_START, (self.status, self.headers))

    def _end(self, last: bytes) -> None:
        _body_bytes(last)
        if self.headers_sent:
            self.pipe.put(_END, last, len(last))
            return
        self.check_started(_RETURNED_BEFORE_START)
        self.headers_sent = True
        self.pipe.put(_WHOLE, (self.status, self.headers, last), len(last))


class _InlineCall(_Response):
    """One WSGI call run on the event loop's thread: what the app passes to write() waits here until the loop
    sends it, which is as soon as the app returns or yields its next chunk. For the app, the headers are sent
    with the first write() (PEP 3333): start_response can no longer replace them."""

    __slots__ = ("written",)

    def __init__(self) -> None:
        super().__init__()
        self.written: list[dict[str, Any]] = []  # ASGI messages

    def write(self, data: bytes) -> None:
        _body_bytes(data)
        if not self.headers_sent:
            self.written.append(self.send_head(_BODY_BEFORE_START))
        if data:
            self.written.append({"type": "http.response.body", "body": data, "more_body": True})

    def whole(self, result: list[bytes]) -> bytes:
        """The body of a response given all at once; raises the app's mistake if it is not one."""
        body = _body_bytes(result[0] if result else b"")
        self.check_started(_RETURNED_BEFORE_START)
        return body

    def send_head(self, mistake: str) -> dict[str, Any]:
        """The head message, sent from now on as far as the app can tell; raises `mistake` without one."""
        self.check_started(mistake)
        self.headers_sent = True
        return self.head()

    def declared_length(self) -> int | None:
        return _declared_length(self.headers)


def _in_app(function: Callable[..., Any], *args: Any) -> Any:
    """Call the app's code as sync code expects to run: with no event loop running in its thread. Otherwise
    asgiref's async_to_sync (Flask's async views, Django's async middleware) and asyncio.run() refuse to run."""
    loop = _get_running_loop()
    _set_running_loop(None)
    try:
        return function(*args)
    finally:
        _set_running_loop(loop)


class _HandedFile:
    """A wsgi.file_wrapper response handed to the loop: the wrapper (closed once, when sent or abandoned), its
    file's descriptor, where to start and how much to send (the app's Content-Length, PEP 3333: no more than
    that; None: to the end of the file)."""

    __slots__ = ("count", "fd", "offset", "wrapper")

    def __init__(self, wrapper: FileWrapper, fd: int, count: int | None) -> None:
        self.wrapper: FileWrapper | None = wrapper
        self.fd = fd
        self.offset = 0
        self.count = count

    def message(self) -> dict[str, Any]:
        return {"type": ZEROCOPYSEND, "file": self.fd, "offset": self.offset, "count": self.count}

    def close_in(self, pool: _Threads) -> None:
        """Have an app thread call the wrapper's close(), once."""
        wrapper, self.wrapper = self.wrapper, None
        if wrapper is not None:
            pool.submit(_Closing(wrapper))


class _Closing:
    """The close() of a wrapper the loop has sent, run in an app thread like the rest of the app's code: the
    app may have made it its own (Django's sends request_finished, which may use the database), and it must
    neither hold the event loop nor run there."""

    __slots__ = ("wrapper",)

    def __init__(self, wrapper: FileWrapper) -> None:
        self.wrapper = wrapper

    def run(self, app: Callable[..., Iterable[bytes]]) -> None:
        _close(self.wrapper)


def _zero_copy_descriptor(environ: dict[str, Any], wrapper: FileWrapper) -> int | None:
    """The descriptor to send our wsgi.file_wrapper's file from with zero copy, or None: not a regular file, or
    the connection does not offer zero-copy sends (TLS, --no-sendfile)."""
    scope = environ.get("asgi.scope")
    if scope is None or ZEROCOPYSEND not in scope["extensions"]:
        return None
    return _regular_file_descriptor(wrapper.filelike)


def _regular_file_descriptor(filelike: Any) -> int | None:
    """The descriptor of a regular file (sendfile() reads nothing else), or None: a pipe, a socket, a BytesIO
    or an app's own file-like object whose fileno() fails are iterated instead."""
    try:
        fd = filelike.fileno()
        if type(fd) is int and stat.S_ISREG(os.fstat(fd).st_mode) and hasattr(filelike, "tell"):
            return fd
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both OSError and ValueError
        pass
    return None


def _declared_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    for name, value in headers:
        if name.lower() == b"content-length" and value.isdigit():
            return int(value)
    return None


def _close_files(items: list[tuple[int, Any]], pool: _Threads) -> None:
    for kind, value in items:
        if kind == _FILE:
            value.close_in(pool)


def _close(result: Any) -> None:
    close = getattr(result, "close", None)
    if close is None:
        return
    try:
        close()
    except Exception:  # the response may be out already: the log is the only place to say it
        _log.exception("The WSGI response iterable's close() raised")


class _Turn:
    """Whose turn it is to run the app on the loop's thread: one request at a time, in arrival order. Lighter
    than an asyncio.Lock on the path every request takes: taking a free turn is an attribute test and a store."""

    __slots__ = ("busy", "waiters")

    def __init__(self) -> None:
        self.busy = False
        self.waiters: deque[asyncio.Future[None]] = deque()

    async def wait(self) -> None:
        """Wait for the turn held by another request (the caller saw `busy`); on return it is the caller's."""
        waiter = asyncio.get_running_loop().create_future()
        self.waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.cancelled():
                self.waiters.remove(waiter)
            else:
                self.release()  # handed to us as we were cancelled: pass it on
            raise

    def release(self) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # handed over: `busy` stays set
                return
        self.busy = False


class WSGIApp:
    """A WSGI callable as an ASGI 3 app. `configure()` in the worker sets the pool size and the timeout."""

    def __init__(self, wsgi_app: Callable[..., Iterable[bytes]]) -> None:
        self.wsgi_app = wsgi_app
        self.threads = 1
        self.timeout = 0.0
        self.tmp_dir: str | None = None
        self.spool = SPOOL_BYTES
        self.budget = BodyBudget(MEMORY_BODIES_BYTES)
        self._pool: _Threads | None = None  # made in the worker, never before a fork
        self._turn = _Turn()  # with one thread: the app runs on the loop's thread, a request at a time
        self._running: set[_Call] = set()
        self._deadline_check: asyncio.TimerHandle | None = None
        self._environs = EnvironBuilder(errors=_ERRORS, multithread=False)
        self._call: Callable[[dict[str, Any], Any], Awaitable[None]] = self._call_inline

    def configure(self, *, threads: int, timeout: float = 0.0, tmp_dir: str | None = None) -> WSGIApp:
        self.threads = max(1, threads)
        self.timeout = timeout
        self.tmp_dir = tmp_dir
        self._environs = EnvironBuilder(errors=_ERRORS, multithread=self.threads > 1)
        self._call = self._call_inline if self.threads == 1 else self._call_in_thread
        return self

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await _lifespan(receive, send)
            return  # a WebSocket handshake is left unanswered: the server refuses it with 403
        environ = self._environs.build(scope)
        scope["wsgi.environ"] = environ  # for post_request hooks and the access log's {name}e atoms
        # Without Content-Length or Transfer-Encoding a request has no body (RFC 9112 6.3): most requests. Then
        # there is no buffer to make and give back, no receive() that could only say "empty", and `wsgi.input`
        # stays the shared empty one.
        if "CONTENT_LENGTH" in environ or "HTTP_TRANSFER_ENCODING" in environ:
            await self._call_with_body(environ, receive, send)
        else:
            await self._call(environ, send)

    async def _call_with_body(self, environ: dict[str, Any], receive: Any, send: Any) -> None:
        writer = BodyWriter(self.spool, self.tmp_dir, self.budget)
        try:
            body = await _read_body(receive, writer)
            if body is None:
                return  # the client went away before the body was in
            environ["wsgi.input"] = body
            if self.threads > 1:
                await self._call_in_thread(environ, send)  # the thread closes the body when the app is done
                return
            try:
                await self._call_inline(environ, send)
            finally:
                body.close()  # the app is done: it only runs while the loop waits in _call_inline
        finally:
            writer.release()

    async def _call_inline(self, environ: dict[str, Any], send: Any) -> None:
        turn = self._turn
        if turn.busy:  # an earlier response is still streaming to a slow client
            await turn.wait()
        else:
            turn.busy = True
        call = _InlineCall()
        try:
            result = _in_app(self.wsgi_app, environ, call.start_response)
            whole = type(result) is list and len(result) <= 1 and not call.written  # the usual answer
            body = call.whole(result) if whole else b""
        except BaseException as exc:
            turn.release()
            if not isinstance(exc, Exception):
                raise  # SystemExit and the like are not the app's answer to this request
            for message in call.written:  # what the app wrote before it raised goes out first
                await send(message)
            await _app_failed(exc, call.headers_sent, send)
            return
        if whole:
            turn.release()
            await send(call.head())
            await send({"type": "http.response.body", "body": body})
            return
        if type(result) is FileWrapper:
            fd = _zero_copy_descriptor(environ, result)
            if fd is not None:
                await self._send_file_inline(call, result, fd, send)
                return
        try:
            await _stream_inline(call, result, send)
        finally:
            try:
                _in_app(_close, result)
            finally:
                turn.release()

    async def _send_file_inline(self, call: _InlineCall, wrapper: FileWrapper, fd: int, send: Any) -> None:
        """Send our wsgi.file_wrapper's file with zero copy, out of the app's turn (a slow download holds up no
        other request), then close the wrapper in a turn of its own: its close() is the app's code."""
        turn = self._turn
        try:
            call.check_started(_RETURNED_BEFORE_START)
            offset = _in_app(wrapper.filelike.tell)  # PEP 3333: from the file's current position
        except Exception as exc:
            turn.release()
            await self._close_in_turn(wrapper)
            await _app_failed(exc, call.headers_sent, send)
            return
        turn.release()
        try:
            for message in call.written:
                await send(message)
            if not call.headers_sent:
                await send(call.send_head(_RETURNED_BEFORE_START))
            await send({"type": ZEROCOPYSEND, "file": fd, "offset": offset, "count": call.declared_length()})
        finally:
            await self._close_in_turn(wrapper)

    async def _close_in_turn(self, result: Any) -> None:
        turn = self._turn
        if turn.busy:
            try:
                await turn.wait()
            except asyncio.CancelledError:
                _in_app(_close, result)  # a file left open would outlive the request: close it out of turn
                raise
        else:
            turn.busy = True
        try:
            _in_app(_close, result)
        finally:
            turn.release()

    async def _call_in_thread(self, environ: dict[str, Any], send: Any) -> None:
        pool = self._pool or self._start_pool()
        loop = pool.loop
        pipe = _Pipe(loop, pool.waker)
        call = _Call(environ, pipe)
        running = self._running
        running.add(call)
        if self.timeout and self._deadline_check is None:
            self._deadline_check = loop.call_later(DEADLINE_CHECK_SECONDS, self._check_deadlines, loop)
        pool.submit(call)
        try:
            await _relay(pipe, send, pool)  # once it returns, the thread has handed over its last message
        except BaseException:
            _close_files(pipe.abandon(), pool)  # wakes a thread still waiting to hand over more (client gone, ...)
            raise
        finally:
            running.discard(call)

    def _start_pool(self) -> _Threads:
        self._pool = _Threads(self.threads, self.wsgi_app, asyncio.get_running_loop())
        return self._pool

    def _check_deadlines(self, loop: asyncio.AbstractEventLoop) -> None:
        """A thread stuck in the app does not stop the loop's heartbeat, so the loop checks the calls' ages and
        takes the master's timeout path itself: SIGABRT prints every thread's stack, then the worker is replaced."""
        self._deadline_check = None
        now = time.monotonic()
        for call in self._running:
            if call.time_in_app(now) > self.timeout:
                _log.critical(
                    "WSGI request %s %s has run for over %gs (timeout): aborting the worker, every thread's "
                    "traceback follows",
                    call.method,
                    call.path,
                    self.timeout,
                )
                os.kill(os.getpid(), signal.SIGABRT)
                return
        if self._running:
            self._deadline_check = loop.call_later(DEADLINE_CHECK_SECONDS, self._check_deadlines, loop)

    def in_flight_calls(self) -> int:
        return len(self._running)


async def _read_body(receive: Any, writer: BodyWriter) -> WSGIInput | None:
    """The whole request body, read on the loop before any thread is used; None if the client left."""
    while True:
        message = await receive()
        if message["type"] != "http.request":
            writer.file.close()
            return None
        body = message.get("body", b"")
        if body:
            writer.write(body)
        if not message.get("more_body", False):
            return writer.finish()


async def _relay(pipe: _Pipe, send: Any, pool: _Threads) -> None:
    """Write what the app thread hands over, in order, with the connection's back-pressure. A file is closed
    in an app thread once sent (`pool`)."""
    while True:
        items = await pipe.take()
        try:
            for kind, value in items:
                if kind == _BODY:
                    await send({"type": "http.response.body", "body": value, "more_body": True})
                    pipe.written(len(value))
                elif kind == _START:
                    await send({"type": "http.response.start", "status": value[0], "headers": value[1]})
                elif kind == _WHOLE:
                    await send({"type": "http.response.start", "status": value[0], "headers": value[1]})
                    await send({"type": "http.response.body", "body": value[2], "more_body": False})
                    return
                elif kind == _END:
                    await send({"type": "http.response.body", "body": value, "more_body": False})
                    return
                elif kind == _FILE:
                    try:
                        await send(value.message())
                    finally:
                        value.close_in(pool)
                    return
                else:
                    exc, headers_sent = value
                    await _app_failed(exc, headers_sent, send)
                    return
        except BaseException:
            _close_files(items, pool)  # a file handed over and never sent is still ours to close
            raise


async def _stream_inline(call: _InlineCall, result: Iterable[bytes], send: Any) -> None:
    """Send the chunks of the app's iterable as it yields them, with the connection's back-pressure."""
    streaming = False
    try:
        chunks, chunk = _in_app(_first_chunk, result)
        while True:
            if call.written:  # write() came first: its bytes go first
                written, call.written = call.written, []
                for message in written:
                    await send(message)
            if chunk is _END_OF_BODY:
                break
            if _body_bytes(chunk):
                if not call.headers_sent and len(chunk) == call.declared_length():
                    # All the body in one chunk (Flask's usual response): one write, and nothing more to ask for.
                    await send(call.send_head(_BODY_BEFORE_START))
                    await send({"type": "http.response.body", "body": chunk})
                    return
                await _send_chunk(call, chunk, send)
                if not streaming:
                    # Leave the eager first step, during which the cycle holds streamed parts back to write them
                    # together: the next chunk may take the app a while, and this one must not wait for it.
                    streaming = True
                    await asyncio.sleep(0)
            chunk = _in_app(next, chunks, _END_OF_BODY)
    except ClientDisconnected:
        raise  # the client went away: nothing to answer
    except Exception as exc:
        await _app_failed(exc, call.headers_sent, send)
        return
    if not call.headers_sent:
        try:
            head = call.send_head(_RETURNED_BEFORE_START)
        except AssertionError as exc:
            await _app_failed(exc, False, send)
            return
        await send(head)
    await send({"type": "http.response.body", "body": b""})


def _first_chunk(result: Iterable[bytes]) -> tuple[Iterator[bytes], Any]:
    """The iterator of the app's iterable and its first chunk (or _END_OF_BODY), in one stretch of app code."""
    chunks = iter(result)
    return chunks, next(chunks, _END_OF_BODY)


async def _send_chunk(call: _InlineCall, data: bytes, send: Any) -> None:
    if not call.headers_sent:
        await send(call.send_head(_BODY_BEFORE_START))
    await send({"type": "http.response.body", "body": data, "more_body": True})


async def _app_failed(exc: BaseException, headers_sent: bool, send: Any) -> None:
    """The app (or its iterable) raised: a 500 if nothing was sent yet, else the connection is closed."""
    if headers_sent:
        _log.error("WSGI response iterable raised midway: closing the connection", exc_info=exc)
        raise WSGIResponseAborted("response cut off") from None
    _log.error("Exception in WSGI application", exc_info=exc)
    await send({"type": "http.response.start", "status": 500, "headers": _ERROR_HEADERS})
    await send({"type": "http.response.body", "body": _INTERNAL_ERROR})


async def _lifespan(receive: Any, send: Any) -> None:
    # WSGI has no lifespan; answering it (rather than raising) keeps `--lifespan on` working and the log quiet.
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def wsgi_threads(worker: WorkerSettings) -> int:
    """How many requests run a WSGI app at once in one worker: Gunicorn's meaning of -k and --threads."""
    return 1 if worker.worker_class == "sync" else max(1, worker.threads)


def serving_interface(app: Any, worker: WorkerSettings, http: HttpSettings, logger: logging.Logger) -> Any:
    """In the worker, after loading: give a WSGI app its pool size and timeout; note a thread worker class
    given to an ASGI app (Gunicorn would break the app; here the class only sizes a WSGI pool)."""
    if isinstance(app, WSGIApp):
        return app.configure(threads=wsgi_threads(worker), timeout=worker.timeout, tmp_dir=http.tmp_upload_dir)
    if worker.worker_class in ("sync", "gthread"):
        logger.info(
            "The app is ASGI: serving it as ASGI (worker class %s only applies to WSGI apps)", worker.worker_class
        )
    return app
