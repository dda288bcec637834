"""The ASGI `http` request cycle: one request's `receive`/`send`, and how its response is framed on the wire.

The connection (http/h1.py) gives the app `receive` and `send`, drives the cycle through `feed_body()`,
`message_complete()`, `client_gone()`, `complete_if_sent()`, `release_held()` and `app_finished()`, sets
`request_id_line` and `task`, and reads `scope`, `keep_alive`, `more_body`, `response_started`,
`disconnected`, `buffered_bytes` and `started`. The request ledger (http/ledger.py) reads `scope`, `status`,
`response_headers`, `response_bytes` and `start_ns`. What the cycle uses of its connection is listed in
http/h1.py's docstring.
"""

from __future__ import annotations

import asyncio
import re
from http import HTTPStatus
from time import perf_counter_ns
from typing import TYPE_CHECKING, Any

from corral.http.errors import ClientDisconnected, PayloadTooLarge, error_response
from corral.http.sendfile import ZEROCOPYSEND, file_range, send_range, socket_fd

if TYPE_CHECKING:
    from corral.http.h1 import H1Protocol

__all__ = ["BODY_HIGH_WATER", "HOLD_LIMIT", "RequestCycle"]

# The body buffer of one request may hold this much before the connection stops reading (back-pressure).
BODY_HIGH_WATER = 64 * 1024

# While the app runs its eager first step (http/eager.py) nothing else runs on the loop, so the parts of a
# streamed response it sends meanwhile are held and written together, in one system call instead of one per
# part, when its last part comes or the app waits (or this many bytes are held: then at once).
HOLD_LIMIT = 64 * 1024

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Validated header names, keyed by the app's own bytes objects: apps send the same literals on every
# response, so after the first request a name costs one dict lookup.
_NAME_CACHE: dict[bytes, bytes] = {}
_NAME_CACHE_MAX = 4096

# Response headers the server frames or supplies itself.
_CONTENT_LENGTH = b"content-length"
_TRANSFER_ENCODING = b"transfer-encoding"
_CONNECTION = b"connection"
_SERVER = b"server"
_DATE = b"date"
_SPECIAL = frozenset({_CONTENT_LENGTH, _TRANSFER_ENCODING, _CONNECTION, _SERVER, _DATE})

# Final statuses only: a 1xx from http.response.start falls through to _status_line's refusal.
_STATUS_LINES: dict[int, bytes] = {
    int(s): b"HTTP/1.1 %d %s\r\n" % (s, s.phrase.encode("ascii")) for s in HTTPStatus if s >= 200
}

# Framing of the response body.
_LENGTH = 0  # Content-Length (given by the app or computed from a single body message)
_CHUNKED = 1
_UNTIL_CLOSE = 2  # HTTP/1.0 streaming without a length: the close ends the body
_NO_BODY = 3  # HEAD, 204, 304
_BODILESS_STATUSES = frozenset({204, 304})


def _status_line(status: Any) -> bytes:
    line = _STATUS_LINES.get(status)
    # The type check: 200.0 and True hash like ints and would find a line, then break the counters later.
    if line is not None and type(status) is int:
        return line
    if type(status) is not int or not 100 <= status <= 599:
        raise RuntimeError(f"ASGI response status must be an int in 100..599 (RFC 9110 15), got {status!r}")
    if status < 200:
        # An interim status as the final answer would leave the client waiting for another response (and
        # 101 would tell it the protocol changed): the stream would no longer be HTTP/1.1 we can frame.
        raise RuntimeError(
            f"ASGI app sent the interim status {status} as its response; a response needs a status in 200..599"
            + (" (101 is only for an accepted WebSocket upgrade)" if status == 101 else "")
        )
    return b"HTTP/1.1 %d \r\n" % status


def _header_name(name: Any) -> bytes:
    """Validate and lower-case a header name the cache has not seen."""
    if not isinstance(name, bytes):
        raise TypeError(f"ASGI header names must be bytes, got {type(name).__name__}")
    if not _TOKEN.fullmatch(name):
        raise RuntimeError(f"invalid response header name {name!r}")
    lname = name.lower()
    if len(_NAME_CACHE) < _NAME_CACHE_MAX:
        _NAME_CACHE[name] = lname
    return lname


class RequestCycle:
    """One request from the app's point of view: feeds it the body, frames what it sends."""

    __slots__ = (
        "body_limit",
        "body_received",
        "buffered_bytes",
        "chunks",
        "conn",
        "content_length",
        "disconnected",
        "expect_continue",
        "finished_receiving",
        "framing",
        "head",
        "held",
        "held_bytes",
        "is_head",
        "keep_alive",
        "more_body",
        "request_id_line",
        "response_bytes",
        "response_complete",
        "response_headers",
        "response_started",
        "scope",
        "start_ns",
        "started",
        "status",
        "task",
        "waiter",
    )

    def __init__(
        self, conn: H1Protocol, scope: dict[str, Any], keep_alive: bool, expect_continue: bool, is_head: bool
    ) -> None:
        state = conn.state
        self.conn = conn
        self.scope = scope
        self.keep_alive = keep_alive
        self.expect_continue = expect_continue  # cleared once the 100 Continue is sent
        self.is_head = is_head
        # request side
        self.chunks: list[bytes] = []
        self.more_body = True
        self.finished_receiving = False
        self.body_received = 0
        self.buffered_bytes = 0  # received and not yet given to the app: kept, not recounted per chunk
        self.body_limit = state.limit_request_body
        self.disconnected = False
        self.waiter: asyncio.Future[None] | None = None
        # response side
        self.response_started = False
        self.response_complete = False
        self.head: list[bytes] | None = None
        self.status = 0
        self.response_headers: Any = ()
        self.content_length: int | None = None
        self.framing = _LENGTH
        self.response_bytes = 0
        self.held: list[bytes] | None = None  # parts of a streamed response not yet written (see HOLD_LIMIT)
        self.request_id_line = b""  # "x-request-id: ...\r\n" when request ids are on (set by the connection)
        self.task: asyncio.Task[Any] | None = None  # the app's Task, set only if it suspended (a drain waits for it)
        # Timed from the end of the head, one clock read for both users: the request metrics and the access log.
        self.start_ns = perf_counter_ns() if state.timed else 0
        self.started = state.clock

    # --- fed by the connection ------------------------------------------------------------------

    def feed_body(self, chunk: bytes) -> bool:
        """A piece of the body from the parser: buffered for the app (True), or dropped (False) once the app is
        done with the request. Raises PayloadTooLarge (413) past the body limit."""
        if self.body_limit and self.body_received + len(chunk) > self.body_limit:
            raise PayloadTooLarge("request body too large")
        if self.disconnected or self.finished_receiving:
            return False
        self.chunks.append(chunk)
        self.body_received += len(chunk)
        self.buffered_bytes += len(chunk)
        if self.waiter is not None:
            self._wake()
        return True

    def message_complete(self) -> None:
        self.more_body = False
        if self.waiter is not None:
            self._wake()

    def client_gone(self) -> None:
        self.disconnected = True
        if self.waiter is not None:
            self._wake()

    def _wake(self) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # --- ASGI receive ---------------------------------------------------------------------------

    async def receive(self) -> dict[str, Any]:
        while True:
            if self.chunks:
                return self._take_body()
            if not self.more_body and not self.finished_receiving:
                self.finished_receiving = True
                return {"type": "http.request", "body": b"", "more_body": False}
            if self.disconnected or self.response_complete:
                return {"type": "http.disconnect"}
            if self.more_body and self.expect_continue and not self.response_started:
                # Only now that the app asks for the body is the client told to send it (RFC 9110 10.1.1).
                self.expect_continue = False
                self.conn.transport.write(_CONTINUE)
            self.waiter = self.conn.loop.create_future()
            await self.waiter

    def _take_body(self) -> dict[str, Any]:
        chunks = self.chunks
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self.chunks = []
        self.buffered_bytes = 0
        more = self.more_body
        if not more:
            self.finished_receiving = True
        conn = self.conn
        if conn.reading_paused:  # reading stopped for this body (or for pipelining): perhaps resume it
            conn.body_consumed(self)
        return {"type": "http.request", "body": body, "more_body": more}

    # --- ASGI send ------------------------------------------------------------------------------

    async def send(self, message: dict[str, Any]) -> None:
        if self.disconnected:
            raise ClientDisconnected("client disconnected")
        kind = message["type"]
        if kind == "http.response.body":
            if self.head is not None:
                self._write_first_body(message.get("body", b""), message.get("more_body", False))
            elif not self.response_started:
                raise RuntimeError("ASGI app sent 'http.response.body' before 'http.response.start'")
            elif self.response_complete:
                raise RuntimeError("ASGI app sent 'http.response.body' after the response was complete")
            else:
                self._write(b"", message.get("body", b""), message.get("more_body", False))
            conn = self.conn
            if conn.writing_paused and not self.response_complete:
                await conn.drain()
        elif kind == "http.response.start":
            if self.response_started:
                raise RuntimeError("ASGI app sent 'http.response.start' twice")
            self._start(message["status"], message.get("headers", ()))
        elif kind == ZEROCOPYSEND:
            await self._send_file(message)
        else:
            raise RuntimeError(f"unexpected ASGI message type {kind!r} on an http connection")

    def _start(self, status: Any, headers: Any) -> None:
        """Validate the head now; it goes on the wire with the first body (one write, known length).

        `status` is whatever the app sent (Any: compiled, an int annotation would reject a float before
        _status_line could say what is wrong with it)."""
        state = self.conn.state
        line = _STATUS_LINES.get(status) if type(status) is int else None
        lines = [line if line is not None else _status_line(status), state.default_headers]
        content_length: int | None = None
        framing = _LENGTH
        try:
            for name, value in headers:
                lname = _NAME_CACHE.get(name) or _header_name(name)
                if lname in _SPECIAL:
                    if lname == _CONTENT_LENGTH:
                        if not value.isdigit():
                            raise RuntimeError(f"invalid Content-Length in ASGI response headers: {value!r}")
                        content_length = int(value)
                        continue  # written by the framing code, once
                    elif lname == _TRANSFER_ENCODING:
                        framing = _CHUNKED  # the server frames chunks itself; the app's header is dropped
                        continue
                    elif lname == _CONNECTION:
                        if b"close" in value.lower():
                            self.keep_alive = False
                        continue
                    else:
                        lines[1] = state.default_headers_without(lname)
                lines.append(b"%s: %s\r\n" % (name, value))
        except TypeError:
            raise TypeError("ASGI response header names and values must be bytes") from None
        if self.request_id_line:
            self._echo_request_id(lines, headers)
        self.response_started = True
        self.status = status
        self.response_headers = headers
        if status in _BODILESS_STATUSES or self.is_head:
            framing = _NO_BODY
        self.framing = framing
        self.content_length = content_length
        self.head = lines

    def _echo_request_id(self, lines: list[bytes], headers: Any) -> None:
        """Answer with the request's id, unless the app sent that header itself (then its value stands)."""
        name = self.conn.state.request_id_name
        for header_name, _ in headers:
            if (_NAME_CACHE.get(header_name) or header_name.lower()) == name:
                return
        lines.append(self.request_id_line)

    def _finish_head(self, lines: list[bytes]) -> bytes:
        state = self.conn.state
        if not self.keep_alive or state.draining:
            self.keep_alive = False
            lines.append(b"connection: close\r\n")
        elif self.scope["http_version"] == "1.0":
            lines.append(b"connection: keep-alive\r\n")
        lines.append(b"\r\n")
        head = b"".join(lines)
        # One scan per forbidden byte over the whole head instead of several per value: every piece of
        # `lines` ends in exactly one CRLF of ours (the default headers in one each), so any other CR or
        # LF came from a header value (response splitting).
        defaults = lines[1]
        expected = len(lines) - 1 + (
            state.default_header_lines if defaults is state.default_headers else defaults.count(b"\n")
        )
        # `0 in head`, an int: `b"\0" in head` first fails (and clears) a TypeError inside CPython, every time.
        if head.count(b"\n") != expected or head.count(b"\r") != expected or 0 in head:
            raise RuntimeError("invalid character (CR, LF or NUL) in an ASGI response header value")
        return head

    def _write_first_body(self, body: bytes, more_body: bool) -> None:
        lines = self.head
        assert lines is not None
        framing = self.framing
        content_length = self.content_length
        if not more_body and framing == _LENGTH and (content_length is None or content_length == len(body)):
            # The common case, kept short: the whole response in one message, so one write.
            lines.append(b"content-length: %d\r\n" % len(body))
            head = self._finish_head(lines)
            self.head = None
            self.response_bytes = len(body)
            self.conn.hold_output(head + body)  # written at the end of the loop iteration, with the others
            self._complete()
            return
        self._write(self._frame_head(len(body), more_body), body, more_body)

    def _frame_head(self, length: int, more_body: bool) -> bytes:
        """Choose the body's framing now that its first part (of `length` bytes) is known, and finish the head."""
        lines = self.head
        assert lines is not None
        framing = self.framing
        content_length = self.content_length
        if framing == _LENGTH:
            if content_length is None:
                if more_body:
                    if self.scope["http_version"] == "1.1":
                        framing = _CHUNKED
                    else:
                        framing = _UNTIL_CLOSE
                        self.keep_alive = False
                else:
                    content_length = length
                    lines.append(b"content-length: %d\r\n" % content_length)
            else:
                lines.append(b"content-length: %d\r\n" % content_length)
        elif framing == _NO_BODY and self.status != 204 and self.status != 304:
            # A HEAD response carries the headers a GET would have had, including the length. A 204 must not
            # carry one (RFC 9110 8.6) and a 304's would describe another response: the app's is dropped.
            if content_length is not None:
                lines.append(b"content-length: %d\r\n" % content_length)
            elif not more_body:
                lines.append(b"content-length: %d\r\n" % length)
        if framing == _CHUNKED:
            if self.scope["http_version"] == "1.1":
                lines.append(b"transfer-encoding: chunked\r\n")
            else:
                framing = _UNTIL_CLOSE
                self.keep_alive = False
        self.framing = framing
        self.content_length = content_length
        if not more_body and framing == _LENGTH and length != content_length:
            self.keep_alive = False  # the body is short: closing tells the client it is incomplete
        head = self._finish_head(lines)
        self.head = None
        return head

    def _write(self, head: bytes, body: bytes, more_body: bool) -> None:
        framing = self.framing
        transport = self.conn.transport
        if framing == _LENGTH:
            sent = self.response_bytes + len(body)
            if self.content_length is not None and sent > self.content_length:
                self.keep_alive = False
                raise RuntimeError("ASGI app sent more body than its Content-Length header declared")
            self.response_bytes = sent
            data = head + body if head else body
        elif framing == _CHUNKED:
            self.response_bytes += len(body)
            data = head + b"%x\r\n%s\r\n" % (len(body), body) if body else head
            if not more_body:
                data += b"0\r\n\r\n"
        elif framing == _NO_BODY:
            data = head
        else:
            self.response_bytes += len(body)
            data = head + body
        if more_body and self.task is None:
            if data:
                self._hold(data)
        else:
            held = self.held
            if held is not None:
                self.held = None
                held.append(data)
                data = b"".join(held)
            if data:
                transport.write(data)
        if not more_body:
            if framing == _LENGTH and self.response_bytes != self.content_length:
                self.keep_alive = False
            self._complete()

    async def _send_file(self, message: dict[str, Any]) -> None:
        """The ASGI zero-copy send extension: a range of a file as the next part of the body, framed like one
        `http.response.body` of that many bytes, sent by http/sendfile.py (zero copy where the connection
        advertised the extension, else read and written in blocks)."""
        if not self.response_started:
            raise RuntimeError("ASGI app sent 'http.response.zerocopysend' before 'http.response.start'")
        if self.response_complete:
            raise RuntimeError("ASGI app sent 'http.response.zerocopysend' after the response was complete")
        span = file_range(message["file"], message.get("offset"), message.get("count"))
        more_body = message.get("more_body", False)
        head = self._frame_head(span.count, more_body) if self.head is not None else b""
        framing = self.framing
        content_length = self.content_length
        if framing == _LENGTH and content_length is not None and self.response_bytes + span.count > content_length:
            self.keep_alive = False
            raise RuntimeError("ASGI app sent more body than its Content-Length header declared")
        conn = self.conn
        self.release_held()  # parts streamed before, during the app's eager step, go first
        if framing == _CHUNKED and span.count:
            head += b"%x\r\n" % span.count
        if head:
            conn.transport.write(head)
        if framing != _NO_BODY and span.count:
            try:
                await send_range(conn, span, socket_fd(conn.transport) if conn.zerocopy else None)
            finally:
                self.response_bytes += span.sent
            span.advance_position()
            if span.sent < span.count and framing == _CHUNKED:
                raise RuntimeError("the file of an http.response.zerocopysend ended before its count")
        if framing == _CHUNKED:
            tail = (b"\r\n" if span.count else b"") + (b"" if more_body else b"0\r\n\r\n")
            if tail:
                conn.transport.write(tail)
        if not more_body:
            if framing == _LENGTH and self.response_bytes != content_length:
                self.keep_alive = False
            self._complete()
        elif conn.writing_paused:
            await conn.drain()

    def _hold(self, data: bytes) -> None:
        held = self.held
        if held is None:
            self.held = held = []
            self.held_bytes = 0
        held.append(data)
        self.held_bytes += len(data)
        if self.held_bytes >= HOLD_LIMIT:
            self.release_held()

    def release_held(self) -> None:
        """Write the parts held back during the app's eager step: it waits now, or its response is cut off."""
        held = self.held
        if held is not None:
            self.held = None
            self.conn.transport.write(b"".join(held))

    def complete_if_sent(self) -> None:
        """The connection is going: a response whose declared length is all on the wire is complete, even if
        the app's closing `more_body: False` message has not come yet (a client that closes after the last
        byte of a download got all of it)."""
        if (
            self.response_started
            and not self.response_complete
            and self.head is None
            and self.framing == _LENGTH
            and self.response_bytes == self.content_length
        ):
            self._complete()

    def _complete(self) -> None:
        self.response_complete = True
        if self.waiter is not None:
            self._wake()
        self.conn.response_complete(self)

    # --- app outcome ----------------------------------------------------------------------------

    def app_finished(self, exc: BaseException | None) -> None:
        """The app coroutine returned or raised; answer for it if it left the client waiting."""
        conn = self.conn
        if self.task is not None:
            conn.state.app_call_finished(self)
        if exc is None and self.response_complete:
            return  # the common case: answered in full
        if exc is not None:
            if self.disconnected or isinstance(exc, ClientDisconnected):
                conn.state.logger.debug("ASGI app raised after the client disconnected: %r", exc)
            elif not isinstance(exc, asyncio.CancelledError):
                conn.state.logger.error("Exception in ASGI application", exc_info=exc)
        elif not self.response_started and not self.disconnected:
            conn.state.logger.error("ASGI app returned without starting a response")
        elif not self.response_complete and not self.disconnected:
            conn.state.logger.error("ASGI app returned without completing the response")
        if self.response_complete or self.disconnected:
            return
        if not self.response_started or self.head is not None:
            # Nothing of the response is on the wire yet: a 500 goes out instead, and is what the request ledger
            # records (with the id the operator will search for in the access log).
            self.status = 500
            self.response_headers = ()
            headers = conn.state.default_headers + self.request_id_line
            conn.answer_for_app(self, error_response(500, server_headers=headers))
        else:
            conn.abort_response(self)
