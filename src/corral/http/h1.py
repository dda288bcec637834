"""HTTP/1.1 connections: strict parsing with httptools, limits, keep-alive, pipelining and flow control.

One `H1Protocol` per connection. It turns parser callbacks into `RequestCycle`s (http/asgi.py), runs the
app for each in order, and owns everything about the connection itself: timeouts, back-pressure in both
directions, and refusing bad requests with the right status and a close.

The connection's phase says where it is in the client's byte stream (`H1Protocol.phase`, a `Phase`):

    phase         event              next          when
    HEAD          head_complete      BODY          a request head is parsed (its RequestCycle is queued)
    BODY          message_complete   HEAD          its body ended (perhaps empty): the next head may follow
    HEAD          upgrade            UPGRADING     llhttp stopped behind a WebSocket handshake: nothing more is parsed
    UPGRADING     hand_over          HANDED_OVER   every earlier request is answered: the session owns the transport
    HEAD, BODY    refuse             FAILED        a bad request: nothing more is parsed; its refusal goes out after
                                                   the responses before it, then the connection closes
    all but HANDED_OVER   close      CLOSED        closed by us or by the peer (CLOSED, close: stays CLOSED)

`_advance` checks each transition against this table (`_TRANSITIONS`); the two every request takes
(head_complete, message_complete) are plain attribute stores on the hot path, the table's first two rows.

What is being answered is not a phase but data, since pipelining lets it run behind the parser: `cycle` (the
request whose app runs) and `queue` (requests parsed behind it, a WebSocket handshake or a refusal waiting for
its turn). Orthogonal facts stay flags: `writing_paused` (the transport's, for every phase), `reading_paused`
(what `_update_reading`, the one place that pauses or resumes reading, last told the transport) and a
request's own `keep_alive`.

The request cycle talks to its connection only through: `state`, `loop`, `transport` (to write), `zerocopy`
(whether files may go by sendfile()), `writing_paused` and `drain()` (write back-pressure), `reading_paused`
with `body_consumed()` (read back-pressure), `response_complete()`, `answer_for_app()` and `abort_response()`.
"""

from __future__ import annotations

import asyncio
import enum
import re
from collections import deque
from time import perf_counter_ns
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_to_bytes

import httptools

from corral.http.asgi import BODY_HIGH_WATER, RequestCycle
from corral.http.eager import run_eagerly
from corral.http.errors import (
    BadRequest,
    HeaderFieldsTooLarge,
    HTTPError,
    NotImplementedCoding,
    PayloadTooLarge,
    ServiceUnavailable,
    URITooLong,
    error_response,
)
from corral.http.flow import WriteFlowControl
from corral.http.ledger import Refusal
from corral.http.proxy import apply_proxy_headers
from corral.http.sendfile import ZEROCOPYSEND
from corral.http.state import ServerState
from corral.logging import RequestIds
from corral.tls import tls_extension

if TYPE_CHECKING:
    from corral.http.websocket import WebSocketUpgrade

__all__ = ["H1Protocol"]

_ASGI_VERSION = {"version": "3.0", "spec_version": "2.4"}
_METHODS = {m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")}

# While draining, a connection accepted but not yet started (a TLS handshake under way) is kept this long.
# asyncio says nothing of a handshake that fails, so waiting longer would hold the drain for a health check
# that connected and left; a real client finishes its handshake well within this. Idle keep-alive
# connections get no such grace: they keep their keep-alive timeout (see H1Protocol.check_timeouts).
DRAIN_HANDSHAKE_GRACE = 1.0

# Pipelining: parsing stops once this many requests wait behind the one being answered; the rest of what was
# read is held unparsed and reading pauses, so a client that sends without reading its answers is held back by
# its own socket buffers rather than by our memory. Reads over _PARSE_SLICE are parsed a slice at a time (small
# slices between requests, bigger ones through a body) so that parsing can stop in the middle of one.
PIPELINE_AHEAD = 8
_PARSE_SLICE = 8 * 1024
_HEAD_SLICE = 2 * 1024
_BODY_SLICE = 64 * 1024
_NEVER = 1 << 62


class Phase(enum.Enum):
    """Where a connection is in the client's byte stream (see the module docstring for the transitions)."""

    HEAD = "reading a request head (or waiting for one)"
    BODY = "reading a request body"
    UPGRADING = "waiting to hand the connection over to a WebSocket session"
    FAILED = "refused a request: nothing more is read"
    HANDED_OVER = "handed over to a WebSocket session"
    CLOSED = "closed"


_HEAD, _BODY, _UPGRADING, _FAILED, _HANDED_OVER, _CLOSED = Phase
_TRANSITIONS: dict[tuple[Phase, str], Phase] = {
    (_HEAD, "head_complete"): _BODY,
    (_BODY, "message_complete"): _HEAD,
    (_HEAD, "upgrade"): _UPGRADING,
    (_UPGRADING, "hand_over"): _HANDED_OVER,
    (_HEAD, "refuse"): _FAILED,
    (_BODY, "refuse"): _FAILED,
    **{(phase, "close"): _CLOSED for phase in Phase if phase is not _HANDED_OVER},
}

_PERCENT = ord("%")
_HOST = b"host"
_EXPECT = b"expect"
_TRANSFER_ENCODING = b"transfer-encoding"
_CONTENT_LENGTH = b"content-length"
_UPGRADE = b"upgrade"
_FORBIDDEN_TRAILERS = frozenset({_HOST, _TRANSFER_ENCODING, _CONTENT_LENGTH})
# Bytes a request-target may not contain though llhttp lets them through (RFC 9112 3.2, RFC 3986).
_TARGET_FORBIDDEN = re.compile(rb'[#"\x80-\xff]')


class H1Protocol(WriteFlowControl):
    """One HTTP/1.1 connection."""

    # Slots, not an instance dict: a connection has more attributes than CPython's shared-key dicts hold, so
    # every attribute access on the request path would otherwise go through a dict lookup.
    __slots__ = (
        "accepted_at",
        "after_slice",
        "app",
        "body_seen_at",
        "client",
        "content_length",
        "cycle",
        "expect_continue",
        "extensions",
        "field_limit",
        "head_bytes",
        "head_started",
        "headers",
        "held_output",
        "host_count",
        "idle_since",
        "parser",
        "parsing",
        "phase",
        "proxy_seen",
        "queue",
        "request_id_sent",
        "scheme",
        "server",
        "slice_above",
        "state",
        "transfer_encoding",
        "trusted",
        "unparsed",
        "upgrade",
        "url",
        "watched",
        "websocket_upgrade",
        "zerocopy",
    )

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.loop = state.loop
        self.app = state.app
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.client: tuple[str, int] | None = None
        self.server: tuple[str, int] | None = None
        self.scheme = "http"
        # The ASGI extensions of this connection's requests, made once; each scope gets a copy, as an app (or
        # its middleware) may add to its own. A WebSocket handshake's scope gets its own, without zerocopysend.
        self.extensions: dict[str, Any] = {}
        # Whether responses may send files with sendfile(): the ASGI "http.response.zerocopysend" extension is
        # offered on plain connections only (a TLS connection's bytes must go through the TLS layer).
        self.zerocopy = False
        # A finished response waiting for the end of the loop iteration (state.hold_output); b"" when none.
        # Anything else written or closed on this connection writes it first (write_held), so order holds.
        self.held_output = b""
        self.trusted = False
        self.watched = state.watched
        self.field_limit = state.limit_request_field_size - 4  # a field line counts ": " and CRLF too
        # the request being parsed
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.host_count = 0
        self.expect_continue = False
        self.proxy_seen = False
        self.transfer_encoding: list[bytes] | None = None
        self.content_length: bytes | None = None
        self.upgrade: bytes | None = None  # the Upgrade header, when the request has one
        self.request_id_sent: bytes | None = None  # the client's request id, when ids are on and it sent one
        self.phase = _HEAD
        self.head_bytes = 0  # of the head arriving (HEAD phase): 0 until its first bytes came
        self.head_started = 0.0
        self.body_seen_at = 0.0
        self.parsing: RequestCycle | None = None
        # the request being answered, and those parsed behind it (pipelining)
        self.cycle: RequestCycle | None = None
        self.queue: deque[RequestCycle | WebSocketUpgrade | bytes] = deque()
        self.websocket_upgrade: WebSocketUpgrade | None = None  # parsed, until llhttp stops at its end
        self.idle_since = state.clock
        self.reading_paused = False  # as last told to the transport, by _update_reading only
        self.unparsed = b""  # read but held back unparsed (see PIPELINE_AHEAD); reading is paused meanwhile
        self.after_slice = b""  # while a read is parsed in slices: the bytes behind the current slice
        # Reads longer than this are parsed in slices; 0 while bytes are held in `unparsed`, so that one check
        # on the common path sends both cases to _receive_in_slices.
        self.slice_above = _PARSE_SLICE
        self.writing_paused = False
        self.write_blocked_since = 0.0
        self.drain_waiters: list[asyncio.Future[None]] = []
        # Counted from the moment the connection is accepted, not from connection_made a loop turn later:
        # a draining worker must see a connection it has accepted but not yet started, or it would exit
        # and close it unanswered.
        self.accepted_at = state.clock
        state.connections.add(self)

    # --- connection events ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        state = self.state
        # Checked before the transport is set, so this connection does not count as idle and shed itself.
        if len(state.connections) > state.worker_connections and not state.make_room():
            # Over the cap with every connection busy: answer at once rather than let the client hang in a
            # queue we will not serve.
            state.logger.warning("worker_connections (%d) reached: refusing a connection", state.worker_connections)
            transport.write(error_response(503, "too many connections", state.default_headers))  # type: ignore[attr-defined]
            state.ledger.finished(Refusal(503))
            transport.close()
            self._advance("close")
            state.connections.discard(self)
            return
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        sock = transport.get_extra_info("sockname")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self.client = (str(peer[0]), int(peer[1]))
        if isinstance(sock, tuple) and len(sock) >= 2:
            self.server = (str(sock[0]), int(sock[1]))
        elif isinstance(sock, str) and sock:
            self.server = (sock, None)  # type: ignore[assignment]
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None:
            # connection_made comes after the handshake, so the peer's certificate is known: once per connection.
            self.scheme = "https"
            self.extensions = {"tls": tls_extension(ssl_object)}
        elif state.sendfile:
            self.zerocopy = True
            self.extensions = {ZEROCOPYSEND: {}}
        trust = state.proxy_trust
        if trust is not None and trust.is_trusted(self.client[0] if self.client else None):
            self.trusted = True
            self.watched = state.watched_trusted

    # --- the PROXY protocol gate (http/proxy_protocol.py) reads a header before this protocol is given the
    # connection; these are its only ways in.

    def proxied(self, client: tuple[str, int] | None) -> None:
        """The real client, from a PROXY header. Forwarded headers are then believed only if the real client is
        itself a trusted proxy: the load balancer in front did not write them."""
        self.client = client
        trust = self.state.proxy_trust
        self.trusted = trust is not None and client is not None and trust.is_trusted(client[0])
        self.watched = self.state.watched_trusted if self.trusted else self.state.watched

    def proxy_header_waiting(self) -> None:
        """Part of a PROXY header arrived: the header timeout runs for it as for a request head."""
        if not self.head_bytes:
            self.head_started = self.state.clock
            self.head_bytes = 1

    def proxy_header_done(self) -> None:
        self.head_bytes = 0

    def refuse_connection(self, status: int, reason: str) -> None:
        self._refuse(status, reason)

    @property
    def closing(self) -> bool:
        """Nothing more for this object to do on the connection: closed, or handed over (for other modules)."""
        return self.phase is _CLOSED or self.phase is _HANDED_OVER

    @property
    def in_head(self) -> bool:
        """Between requests or reading a head (for other modules; this one reads `phase`)."""
        return self.phase is _HEAD

    def _advance(self, event: str) -> None:
        """Take `event` by the transition table; an event the table does not allow for the phase is a bug."""
        phase = self.phase
        following = _TRANSITIONS.get((phase, event))
        if following is None:
            raise RuntimeError(f"HTTP/1.1 connection: no {event!r} transition from phase {phase.name}")
        self.phase = following

    def connection_lost(self, exc: Exception | None) -> None:
        self._advance("close")
        answering = self.cycle
        if answering is not None:
            answering.complete_if_sent()  # counted and logged as answered, before the app hears of the close
        self.state.connections.discard(self)
        for cycle in (answering, self.parsing):
            if cycle is not None:
                cycle.client_gone()
        for item in self.queue:
            if isinstance(item, RequestCycle):
                item.client_gone()
        self.queue.clear()
        self._release_writers()

    def _writes_abandoned(self) -> bool:
        return self.phase is _CLOSED

    def data_received(self, data: bytes) -> None:
        size = len(data)
        if size > self.slice_above:
            self._receive_in_slices(data)
            return
        state = self.state
        state.counters.bytes_in += size
        if self.phase is _HEAD:
            if not self.head_bytes:
                self.head_started = state.clock
            self.head_bytes += size
            if self.head_bytes > state.limit_head_bytes:
                self._refuse(431, "request header section too large")
                return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self._continue_after_upgrade(data, upgrade)
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, HTTPError):
                self._refuse(cause.status, cause.reason, getattr(cause, "headers", b""))
            else:
                self.state.logger.error("Error while parsing a request", exc_info=cause)
                self._refuse(400, "")
        except httptools.HttpParserInvalidMethodError:
            self._refuse(_unknown_method_status(data), "unknown or invalid method")
        except httptools.HttpParserError as exc:
            self._refuse(400, _parser_reason(exc))
        if self.cycle is None:
            if self.queue and self.phase is not _CLOSED:
                self._start_next()
        elif self.queue and not self.reading_paused:
            self._update_reading()  # a request waits behind the one being answered (pipelining)

    def _receive_in_slices(self, data: bytes) -> None:
        """A big read (a pipelining burst, a large body), or one behind bytes held back: parse it a slice at a
        time, and stop when enough is parsed ahead (_parse_blocked); the rest waits in `unparsed`."""
        if self.unparsed:
            data, self.unparsed = self.unparsed + data, b""
        self.slice_above = _PARSE_SLICE
        while data and (self.phase is _HEAD or self.phase is _BODY):
            if self._parse_blocked():
                self.unparsed = data  # at most one read and a slice: reading is paused until it is parsed
                self.slice_above = 0
                self._update_reading()
                return
            size = _HEAD_SLICE if self.parsing is None else _BODY_SLICE
            self.after_slice = data[size:]
            self.slice_above = _NEVER  # the slice takes data_received's direct path
            try:
                self.data_received(data[:size])
            finally:
                self.slice_above = _PARSE_SLICE
            data, self.after_slice = self.after_slice, b""  # a WebSocket upgrade may have taken the rest

    def _parse_blocked(self) -> bool:
        """Enough parsed ahead: PIPELINE_AHEAD requests waiting, a body the app has not read, or (between
        requests) a client that is not reading its responses."""
        parsing = self.parsing
        if parsing is None:
            return len(self.queue) >= PIPELINE_AHEAD or self.writing_paused
        return parsing.buffered_bytes > BODY_HIGH_WATER or len(self.queue) > PIPELINE_AHEAD

    def _parse_unparsed(self) -> None:
        """Parse what was held back (called soon after nothing else kept reading paused); reading resumes
        if nothing new stops it."""
        if not self.unparsed or self._must_stop_reading():
            return  # closed, or stopped again meanwhile: parsed when that clears
        self._receive_in_slices(b"")
        self._update_reading()

    def _must_stop_reading(self) -> bool:
        """Whether reading must stop, bytes held unparsed aside. Each reason lets the client's own socket buffers
        hold what it sends rather than our memory: no request is read any more in this phase (a refusal or a
        WebSocket hand-over pending, closed), the client does not read its responses (writing paused),
        requests wait behind the one being answered (pipelining), or a request body is over its high water."""
        phase = self.phase
        if phase is not _HEAD and phase is not _BODY:
            return True
        if self.writing_paused or self.queue:
            return True
        parsing = self.parsing
        return parsing is not None and parsing.buffered_bytes > BODY_HIGH_WATER

    def _update_reading(self) -> None:
        """The one place reading is paused or resumed: whenever a reason may have come or gone, and the
        transport is told only of a change."""
        phase = self.phase
        if phase is _CLOSED or phase is _HANDED_OVER:
            return  # the transport is closed, or the WebSocket session's now
        stop = self._must_stop_reading()
        if not stop and self.unparsed:
            # Bytes read earlier come before any new ones: parse them soon, not from here (this may run inside an
            # app's send(), and the held requests start apps of their own). Reading stays paused meanwhile.
            self.loop.call_soon(self._parse_unparsed)
            stop = True
        self._set_reading(stop)

    def pause_writing(self) -> None:
        """The client is not reading its responses as fast as they come: read no more requests until it does.
        Its own socket buffers then hold what it sends, and no request is started for an answer nobody reads
        (_start_queued waits too). Done here, not per request, so the common path pays nothing for it."""
        super().pause_writing()
        self._update_reading()

    def resume_writing(self) -> None:
        super().resume_writing()
        if self.queue and self.cycle is None and self.phase is not _CLOSED:
            self.loop.call_soon(self._start_queued)  # pipelined requests waited for the client to read
        self._update_reading()

    def _continue_after_upgrade(self, data: bytes, upgrade: httptools.HttpParserUpgrade) -> None:
        """llhttp stops at the end of an Upgrade request. A WebSocket handshake keeps the bytes after it
        for the WebSocket, and reading stops until the connection is handed over.

        Other upgrades (h2c...) are served as plain HTTP (RFC 9110 7.8 lets a server ignore Upgrade): a
        fresh parser takes the bytes after it.
        """
        offset = upgrade.args[0] if upgrade.args else len(data)
        pending = self.websocket_upgrade
        if pending is not None:
            self.websocket_upgrade = None
            pending.rest = data[offset:] + self.after_slice
            self.after_slice = b""
            self._advance("upgrade")
            self._update_reading()
            return
        self.parser = httptools.HttpRequestParser(self)
        rest = data[offset:]
        if rest:
            self.state.counters.bytes_in -= len(rest)  # counted once already, when they arrived
            self.data_received(rest)

    # --- parser callbacks -----------------------------------------------------------------------

    def on_url(self, url: bytes) -> None:
        self.url += url
        if len(self.url) + 14 > self.state.limit_request_line:
            self._check_request_line()

    def _check_request_line(self) -> None:
        # The limit covers the whole request line: method, target and version (as Gunicorn counts it).
        line_length = len(self.parser.get_method()) + 1 + len(self.url) + 9
        if line_length > self.state.limit_request_line:
            raise URITooLong("request line too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        # The field size counts the whole line with ": " and CRLF, as Gunicorn does. The count limit is
        # checked once the head is complete: data_received already bounds the head's bytes.
        if len(name) + len(value) > self.field_limit:
            raise HeaderFieldsTooLarge("header field too large")
        if self.phase is not _HEAD:
            self._trailer(name.lower())
            return
        name = name.lower()
        if name in self.watched:
            self._watch(name, value)
        # llhttp strips leading whitespace from values but keeps trailing whitespace (RFC 9110 5.5: OWS).
        self.headers.append((name, value.rstrip(b" \t")))

    def _trailer(self, name: bytes) -> None:
        """Trailers are dropped (ASGI has no place for them), but never ones that repeat framing fields."""
        if name in _FORBIDDEN_TRAILERS:
            raise BadRequest(f"{name.decode('latin-1')} is not allowed in a trailer")

    def _watch(self, name: bytes, value: bytes) -> None:
        if name == _HOST:
            self.host_count += 1
            if self.host_count > 1:
                raise BadRequest("more than one Host header")
        elif name == _EXPECT:
            if value.lower() == b"100-continue":
                self.expect_continue = True
        elif name == _TRANSFER_ENCODING:
            if self.transfer_encoding is None:
                self.transfer_encoding = []
            self.transfer_encoding.append(value)
        elif name == _CONTENT_LENGTH:
            self.content_length = value
        elif name == _UPGRADE:
            self.upgrade = value if self.upgrade is None else self.upgrade + b"," + value
        elif name == self.state.request_id_name:
            # Sent twice, it is no single id: b"" is never accepted, so a new one replaces both.
            self.request_id_sent = value.rstrip(b" \t") if self.request_id_sent is None else b""
        else:
            self.proxy_seen = True

    def on_headers_complete(self) -> None:
        self.phase = _BODY  # head_complete (the table's first row, as a plain store: every request takes it)
        state = self.state
        if len(self.headers) > state.limit_request_fields:
            raise HeaderFieldsTooLarge("too many header fields")
        parser = self.parser
        version = parser.get_http_version()
        if version == "1.1":
            if self.host_count == 0:
                raise BadRequest("missing Host header")
        elif version != "1.0":
            raise BadRequest(f"unsupported HTTP version {version}")
        if self.transfer_encoding is not None:
            _check_transfer_encoding(self.transfer_encoding, version)
        if self.content_length is not None:  # watched only when there is a body limit
            limit = state.limit_request_body
            if limit and int(self.content_length) > limit:
                raise PayloadTooLarge("request body too large")
        method_bytes = parser.get_method()
        method = _METHODS.get(method_bytes) or method_bytes.decode("ascii")
        if method == "CONNECT":
            # A tunnel is not something an ASGI app can provide; a 2xx would tell the client it was open.
            raise NotImplementedCoding("CONNECT is not supported")
        limit = state.limit_concurrency
        if limit and len(state.connections) > limit:
            raise ServiceUnavailable("limit_concurrency reached")
        scope = self._build_scope(method, version)
        request_ids = state.request_ids
        request_id_line = self._request_id(scope, request_ids) if request_ids is not None else b""
        if self.upgrade is not None and self._websocket_handshake(scope, method, version):
            return
        cycle = RequestCycle(self, scope, parser.should_keep_alive(), self.expect_continue, method_bytes == b"HEAD")
        if request_id_line:
            cycle.request_id_line = request_id_line
        self._reset_head()
        self.parsing = cycle
        self.body_seen_at = state.clock
        self.queue.append(cycle)

    def _request_id(self, scope: dict[str, Any], request_ids: RequestIds) -> bytes:
        """Keep the client's request id when it is valid, else give the request a new one in its headers (the
        app and the access log read it there); the response header line that echoes it."""
        sent, self.request_id_sent = self.request_id_sent, None
        if sent is not None and request_ids.accepts(sent):
            return request_ids.response_line(sent)
        request_id = request_ids.new()
        headers = scope["headers"]
        if sent is not None:  # invalid or repeated: the app and the log must see only the replacement
            headers = [header for header in headers if header[0] != request_ids.header]
            scope["headers"] = headers
        headers.append((request_ids.header, request_id))
        return request_ids.response_line(request_id)

    def _websocket_handshake(self, scope: dict[str, Any], method: str, version: str) -> bool:
        """An Upgrade request: queue it as a WebSocket handshake (True), or leave it to plain HTTP (False).

        An invalid handshake raises HandshakeError (400) or UnsupportedVersion (426).
        """
        upgrade, self.upgrade = self.upgrade, None
        if upgrade is None:
            return False
        # Imported on the first Upgrade request: a worker that never serves a WebSocket never loads websockets.
        from corral.http.websocket import WebSocketUpgrade, websocket_scope
        from corral.http.ws_handshake import check_handshake, is_websocket_upgrade

        if not is_websocket_upgrade(upgrade):
            return False
        state = self.state
        handshake = check_handshake(method, version, self.headers, deflate=state.ws_settings.ws_per_message_deflate)
        start_ns = perf_counter_ns() if state.timed else 0
        pending = WebSocketUpgrade(websocket_scope(scope, handshake), handshake, start_ns)
        self._reset_head()
        self.websocket_upgrade = pending
        self.queue.append(pending)
        return True

    def _reset_head(self) -> None:
        """Ready for the next request's head (cheaper here than in an on_message_begin callback)."""
        self.url = b""
        self.headers = []
        self.host_count = 0
        if self.expect_continue or self.proxy_seen:
            self.expect_continue = False
            self.proxy_seen = False
        if self.transfer_encoding is not None or self.content_length is not None:
            self.transfer_encoding = None
            self.content_length = None

    def _build_scope(self, method: str, version: str) -> dict[str, Any]:
        target = self.url
        if _TARGET_FORBIDDEN.search(target):
            raise BadRequest("invalid character in the request target")
        if target[:1] == b"/":
            raw_path, _, query = target.partition(b"?")
        else:
            raw_path, query = _split_other_target(target, method)
        if _PERCENT in raw_path:  # an int: `b"%" in` first fails (and clears) a TypeError inside CPython
            path = unquote_to_bytes(raw_path).decode("utf-8", "replace")
        else:
            path = raw_path.decode("utf-8", "replace")
        state = self.state
        if state.root_path:
            path = state.root_path + path
            raw_path = state.root_path_bytes + raw_path
        scope: dict[str, Any] = {
            "type": "http",
            "asgi": _ASGI_VERSION,
            "http_version": version,
            "server": self.server,
            "client": self.client,
            "scheme": self.scheme,
            "method": method,
            "root_path": state.root_path,
            "path": path,
            "raw_path": raw_path,
            "query_string": query,
            "headers": self.headers,
            "state": state.app_state.copy(),
            "extensions": self.extensions.copy(),  # the app may add to its own
        }
        if self.proxy_seen:
            apply_proxy_headers(scope, state.proxy_trust)  # type: ignore[arg-type]  # ProxyHeaderError is a 400
        return scope

    def on_body(self, body: bytes) -> None:
        cycle = self.parsing
        if cycle is not None and cycle.feed_body(body):
            self.body_seen_at = self.state.clock
            if cycle.buffered_bytes > BODY_HIGH_WATER and not self.reading_paused:
                self._update_reading()

    def on_message_complete(self) -> None:
        self.phase = _HEAD  # message_complete (the table's second row, as a plain store)
        self.head_bytes = 0
        cycle = self.parsing
        if cycle is not None:
            cycle.message_complete()
            self.parsing = None

    # --- running requests -----------------------------------------------------------------------

    def hold_output(self, data: bytes) -> None:
        """Write the last bytes of a finished response at the end of this loop iteration (state.hold_output)."""
        if self.held_output:
            self.held_output += data
        else:
            self.held_output = data
            self.state.hold_output(self)

    def write_held(self) -> None:
        data = self.held_output
        if data:
            self.held_output = b""
            transport = self.transport
            if not transport.is_closing():  # lost or aborted meanwhile: nobody to send it to
                transport.write(data)

    def _start_next(self) -> None:
        if self.held_output:
            self.write_held()
        item = self.queue.popleft()
        if type(item) is not RequestCycle:
            self._start_other(item)
            return
        self.cycle = item
        if self.queue and not self.reading_paused:
            self._update_reading()  # more requests are pipelined behind this one: read no more until we catch up
        coro = self.app(item.scope, item.receive, item.send)
        task = run_eagerly(self.loop, coro, item.app_finished, self.state.base_context.copy())
        if task is not None:  # it suspended: track it until it returns, so that a drain can wait for it
            item.task = task
            self.state.app_calls.add(item)
            item.release_held()  # what it streamed before waiting goes out now

    def _start_other(self, item: WebSocketUpgrade | bytes) -> None:
        if isinstance(item, bytes):  # a refusal queued behind earlier pipelined responses
            self.transport.write(item)
            self._close()
        else:
            self._hand_over(item)

    def _hand_over(self, upgrade: WebSocketUpgrade) -> None:
        """Every earlier request is answered: the transport now belongs to a WebSocket session."""
        self._advance("hand_over")  # reading is paused since the upgrade: the session resumes it
        self.state.connections.discard(self)
        from corral.http.websocket import WebSocketSession  # loaded by the handshake already

        session = WebSocketSession(self.state, self.transport, upgrade, self.writing_paused)
        self.transport.set_protocol(session)
        session.start()

    def body_consumed(self, cycle: RequestCycle) -> None:
        """The app took the buffered body of `cycle` (called only while reading is paused)."""
        self._update_reading()

    def response_complete(self, cycle: RequestCycle) -> None:
        state = self.state
        state.ledger.finished(cycle)
        if cycle is not self.cycle:
            return
        self.cycle = None
        if not cycle.keep_alive or cycle.more_body or self.phase is _CLOSED or state.draining:
            # Close rather than read and discard an unread body: the client may never send it (no
            # 100 Continue was given) and the server should not spend effort on a body nobody wants.
            self._close()
            return
        self.idle_since = state.clock
        if self.queue:
            self.loop.call_soon(self._start_queued)
        elif self.reading_paused:
            self._update_reading()

    def _start_queued(self) -> None:
        if self.cycle is None and self.queue and self.phase is not _CLOSED:
            if self.writing_paused:
                return  # resume_writing calls again once the client reads
            self._start_next()
        else:
            self._update_reading()

    # --- refusing and closing -------------------------------------------------------------------

    def _refuse(self, status: int, reason: str, headers: bytes = b"") -> None:
        """Answer a bad request with `status` and close; earlier pipelined responses go out first."""
        if self.phase is not _HEAD and self.phase is not _BODY:
            return  # refused or closed already: nothing more was to be read
        response = error_response(status, reason, self.state.default_headers + headers)
        self.state.ledger.finished(Refusal(status))
        self._advance("refuse")
        self.unparsed = b""
        self.slice_above = _PARSE_SLICE
        self._update_reading()
        parsing, self.parsing = self.parsing, None
        if parsing is not None:
            parsing.client_gone()  # its app, if running, will get no more of this request
            if parsing is self.cycle:
                self.cycle = None
                if parsing.response_started:
                    self._close()
                    return
            elif parsing in self.queue:
                self.queue.remove(parsing)
        if self.cycle is None and not self.queue:
            self.write_held()
            self.transport.write(response)
            self._close()
        else:
            self.queue.append(response)

    def answer_for_app(self, cycle: RequestCycle, response: bytes) -> None:
        """The app failed before any of its response went out: send `response` (a 500) for it and close."""
        if cycle is self.cycle and self.phase is not _CLOSED:
            self.cycle = None
            self.state.ledger.finished(cycle)
            self.transport.write(response)
            self._close()

    def abort_response(self, cycle: RequestCycle) -> None:
        """The app stopped mid-response: close so the client sees the response is incomplete."""
        if cycle is self.cycle:
            self.cycle = None
            if self.phase is not _CLOSED:
                self.state.ledger.finished(cycle)  # cut off, but a finished request like the others
            cycle.release_held()  # the parts it did send go out before the close
            self._close()

    def is_idle(self) -> bool:
        """A keep-alive connection waiting for its next request: nothing in flight, no head arriving."""
        return (
            self.cycle is None
            and not self.queue
            and not self.head_bytes
            and not self.unparsed
            and self.phase is _HEAD
            and self.transport is not None
        )

    def shed(self) -> None:
        """Closed to make room at the worker_connections cap (a client that sends now sees a close, as it
        would at the keep-alive timeout, and retries on a new connection)."""
        self.state.logger.debug("worker_connections (%d) reached: closing the longest-idle connection",
                                self.state.worker_connections)  # fmt: skip
        self._close()

    def close(self) -> None:
        """Close the connection (a request in flight gets its disconnect when the transport reports the loss)."""
        self._close()

    def _close(self) -> None:
        if not self.closing:
            self.write_held()
            self._advance("close")
            transport = self.transport
            if transport.get_write_buffer_size():
                # The close waits for the client to take the rest of the response: until connection_lost the
                # connection still holds a descriptor and its buffer, so it stays counted (worker_connections,
                # the drain) and swept (send_timeout).
                if not self.writing_paused:
                    self.write_blocked_since = self.loop.time()
            else:
                self.state.connections.discard(self)
            transport.close()

    def in_flight(self) -> tuple[str, str, str, float] | None:
        """The request being answered, for diagnostics: (method, path, client, age in seconds)."""
        cycle = self.cycle
        if cycle is None:
            return None
        scope = cycle.scope
        client = scope["client"]
        peer = f"{client[0]}:{client[1]}" if client else "-"
        # loop.time(), not the coarse clock: this is read while the loop is stalled and the clock stopped.
        return scope["method"], scope["path"], peer, self.loop.time() - cycle.started

    def check_timeouts(self, now: float) -> None:
        state = self.state
        if self.transport is None:
            # Accepted but never started (say, a TLS handshake that failed): forget it after a while. asyncio
            # tells the protocol nothing of a failed handshake, so a drain must not wait the whole while for
            # a health check that connected and left: a real client finishes its handshake within the grace.
            given_up = now - self.accepted_at > max(state.header_timeout, state.keepalive, 1.0)
            if given_up or self._drain_grace_over(now):
                state.connections.discard(self)
            return
        closed = self.phase is _CLOSED
        if (closed or self.writing_paused) and (self._send_timed_out(now) or closed):
            return  # a closed connection is here only while its unsent output waits for the client
        if self.cycle is not None or self.queue or self.unparsed:  # unparsed: requests wait for a slow reader
            self._check_body_timeout(now)
            return
        if self.phase is _HEAD and self.head_bytes:
            if state.header_timeout and now - self.head_started > state.header_timeout:
                self._refuse(408, "request header timeout")
        elif now - self.idle_since > state.keepalive:
            # The same rule while draining: the peer may be sending on this connection right now (a proxy's
            # pooled upstream connection), and closing it earlier than the keep-alive timeout would turn that
            # request into a reset. Its next request is answered with Connection: close instead.
            self._close()

    def _send_timed_out(self, now: float) -> bool:
        """Cut a client that reads none of its response: it would hold the connection, its buffered output and
        (while writes are paused) the app's `send()` for ever. Aborted, not closed: close() would wait to flush."""
        timeout = self.state.send_timeout
        if not timeout or now - self.write_blocked_since <= timeout:
            return False
        if not self.closing:
            self.state.logger.info("Closing a connection whose client read nothing for over %gs", timeout)
        self.transport.abort()
        return True

    def _check_body_timeout(self, now: float) -> None:
        """Cut a client that stopped sending a request body the app is waiting for."""
        state = self.state
        parsing = self.parsing
        if not state.body_timeout or parsing is None or parsing.disconnected or self.reading_paused:
            return  # nothing expected from the client, or the app is the one not reading (back-pressure)
        if now - self.body_seen_at > state.body_timeout:
            state.logger.info("Closing a connection whose request body stalled for over %gs", state.body_timeout)
            self._close()
            parsing.client_gone()

    def _drain_grace_over(self, now: float) -> bool:
        state = self.state
        return state.draining and now - max(self.accepted_at, state.drain_started) >= DRAIN_HANDSHAKE_GRACE


def _check_transfer_encoding(values: list[bytes], version: str) -> None:
    if version == "1.0":
        # RFC 9112 6.1: Transfer-Encoding in an HTTP/1.0 request means the framing cannot be trusted.
        raise BadRequest("Transfer-Encoding in an HTTP/1.0 request")
    codings = [c.strip().lower() for value in values for c in value.split(b",")]
    if codings[-1] != b"chunked" or codings.count(b"chunked") > 1:
        # RFC 9112 6.3: without chunked last (and once) the body length cannot be known.
        raise BadRequest("Transfer-Encoding must end in chunked, applied once")
    if len(codings) > 1:
        raise NotImplementedCoding("unsupported transfer coding")


def _split_other_target(target: bytes, method: str) -> tuple[bytes, bytes]:
    """Targets that are not origin-form: `*` (OPTIONS), authority-form (CONNECT), absolute-form."""
    if target == b"*":
        if method != "OPTIONS":
            raise BadRequest("asterisk-form is only for OPTIONS")
        return b"*", b""
    try:
        # Any: httptools' stubs type every part as bytes, but a part the target lacks is None (compiled code
        # would check the stub's type and fail on it).
        url: Any = httptools.parse_url(target)
    except httptools.HttpParserInvalidURLError:
        raise BadRequest("invalid request target") from None
    if not url.schema:
        raise BadRequest("invalid request target")
    return url.path or b"/", url.query or b""


_METHOD_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+ ")


def _unknown_method_status(data: bytes) -> int:
    """501 for a well-formed method the parser does not know (RFC 9110 9.1), 400 for one that is no token.

    llhttp knows a fixed set of methods and reports both the same way; when the refused request starts
    this chunk (the usual case) its first word tells them apart.
    """
    return 501 if _METHOD_TOKEN.match(data) else 400


def _parser_reason(exc: Exception) -> str:
    text = str(exc)
    return text if text.isprintable() and len(text) < 120 else "malformed request"
