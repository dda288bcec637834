"""What every connection of one worker shares: the app, the limits, the live connections and the clock.

Kept apart from the protocols (http/h1.py, http/asgi.py, http/websocket.py) that all take it, so that none of
them imports another only to name this type.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Callable
from email.utils import formatdate
from typing import TYPE_CHECKING, Any, Protocol, TypeGuard

from corral.compiled import mypyc_attr
from corral.core.scoreboard import WorkerCounters
from corral.core.settings import Settings, WebSocketSettings
from corral.http.ledger import RequestLedger
from corral.http.proxy import PROXY_HEADER_NAMES, ProxyTrust
from corral.http.ws_close import CLOSE_GOING_AWAY
from corral.logging import RequestIds

if TYPE_CHECKING:
    from corral.http.h1 import H1Protocol
    from corral.http.websocket import WebSocketSession

__all__ = ["AppCall", "Connections", "ServerState"]

_HOST = b"host"
_EXPECT = b"expect"
_TRANSFER_ENCODING = b"transfer-encoding"
_CONTENT_LENGTH = b"content-length"
_UPGRADE = b"upgrade"


class AppCall(Protocol):
    """What a drain reads of an app call still running (http/asgi.py's RequestCycle). A protocol rather than
    that class: compiled (see setup.py), a parameter of a class type is checked on every call, and tests pass
    stand-ins."""

    @property
    def task(self) -> asyncio.Task[Any] | None: ...

    @property
    def scope(self) -> dict[str, Any]: ...

    @property
    def response_complete(self) -> bool: ...


# A set subclass: compiled (see setup.py), it stays an ordinary Python class, as mypyc requires.
@mypyc_attr(native_class=False)
class Connections(set["H1Protocol | WebSocketSession"]):
    """The live connections; a draining worker sets `on_empty` to learn at once when the last one goes, and a
    crash-looping one `on_discard` to learn when any goes (it may then accept the next)."""

    on_empty: Callable[[], None] | None = None
    on_discard: Callable[[], None] | None = None

    def discard(self, conn: object) -> None:
        super().discard(conn)
        if self.on_discard is not None:
            self.on_discard()
        if not self and self.on_empty is not None:
            self.on_empty()


class ServerState:
    """What every connection of one worker shares: the app, the limits, and the live connections."""

    # Slots: the protocols read these on every request, and past a few dozen attributes an instance dict is a
    # full dict lookup per read.
    __slots__ = (
        "app",
        "app_calls",
        "app_state",
        "base_context",
        "body_timeout",
        "clock",
        "connections",
        "counters",
        "date_header",
        "date_line",
        "default_header_lines",
        "default_headers",
        "drain_started",
        "draining",
        "extra_lines",
        "header_timeout",
        "held_outputs",
        "keepalive",
        "ledger",
        "limit_concurrency",
        "limit_head_bytes",
        "limit_request_body",
        "limit_request_field_size",
        "limit_request_fields",
        "limit_request_line",
        "logger",
        "loop",
        "on_app_calls_done",
        "proxy_trust",
        "recheck_at",
        "request_id_name",
        "request_ids",
        "root_path",
        "root_path_bytes",
        "send_timeout",
        "sendfile",
        "server_line",
        "shed_candidates",
        "shed_scan_at",
        "timed",
        "watched",
        "watched_trusted",
        "websocket_close_code",
        "websockets",
        "worker_connections",
        "ws_settings",
    )

    def __init__(
        self,
        settings: Settings,
        *,
        loop: asyncio.AbstractEventLoop,
        app: Callable[..., Any],
        logger: logging.Logger,
        access_log: Any = None,
        app_state: dict[str, Any] | None = None,
        counters: WorkerCounters | None = None,
        max_requests: int = 0,
        on_max_requests: Callable[[], None] | None = None,
    ) -> None:
        """`settings` gives every limit, timeout and header (read once, here: the attributes below are what
        the protocols read on the hot path); the rest are the worker's runtime objects. max_requests is this
        worker's own (jitter included; 0: never)."""
        http, security, proxy = settings.http, settings.security, settings.proxy
        self.loop = loop
        self.app = app
        self.logger = logger
        self.proxy_trust = (
            ProxyTrust.from_setting(proxy.forwarded_allow_ips, proxy.secure_scheme_headers)
            if proxy.proxy_headers
            else None
        )
        self.root_path = http.root_path
        self.root_path_bytes = http.root_path.encode("utf-8")
        self.keepalive = settings.worker.keepalive
        self.header_timeout = security.header_timeout
        self.body_timeout = security.body_timeout
        self.send_timeout = security.send_timeout
        self.sendfile = http.sendfile  # file responses go by os.sendfile() on plain connections
        # 0 means unlimited, as in Gunicorn.
        self.limit_request_line = security.limit_request_line or 1 << 62
        self.limit_request_fields = security.limit_request_fields or 1 << 62
        self.limit_request_field_size = security.limit_request_field_size or 1 << 62
        self.limit_request_body = security.limit_request_body
        # A bound on the bytes of one request head, so a client cannot make the parser buffer without end.
        self.limit_head_bytes = (
            (security.limit_request_line or 65536)
            + (security.limit_request_fields or 1000) * ((security.limit_request_field_size or 65536) + 4)
            + 4096
        )
        self.worker_connections = settings.worker.worker_connections
        # Idle keep-alive connections to shed at the cap, the first to go last (see make_room).
        self.shed_candidates: list[H1Protocol] = []
        self.shed_scan_at = -1.0  # the coarse clock at the last scan that found few idle connections
        self.recheck_at = -1.0  # the coarse clock at the last rescan for answered idle connections
        self.app_state: dict[str, Any] = app_state if app_state is not None else {}
        # What the worker publishes to the scoreboard; plain int updates on the hot path.
        self.counters = counters if counters is not None else WorkerCounters()
        # Requests are timed (one clock read at the end of the head) for the request metrics and the access log.
        self.timed = self.counters.timed or access_log is not None
        # Where every finished request is counted, timed, logged and weighed against max_requests.
        self.ledger = RequestLedger(self.counters, access_log, max_requests, on_max_requests)
        # WebSocket sessions stay in `connections` (the worker_connections cap and the drain count them).
        self.connections: Connections = Connections()
        # Requests whose app suspended and has not returned yet, whether or not their response is complete
        # (a background task runs after it): a drain waits for them. Eager ones finish before they could be added.
        self.app_calls: set[AppCall] = set()
        self.on_app_calls_done: Callable[[], None] | None = None  # set by a draining worker
        self.websockets: set[WebSocketSession] = set()
        self.ws_settings: WebSocketSettings = settings.websocket
        self.websocket_close_code = CLOSE_GOING_AWAY  # what a draining worker closes WebSockets with
        self.drain_started = 0.0
        # Connections whose finished response waits for the end of this loop iteration (see hold_output).
        self.held_outputs: list[H1Protocol] = []
        # Each request runs in a copy of this, never of whatever context happens to be current.
        self.base_context = contextvars.copy_context()
        self.draining = False
        self.clock = loop.time()
        self.server_line = f"server: {http.server_header}\r\n".encode("latin-1") if http.server_header else b""
        # The headers setting ("Name: value" lines), added to every response; a Server line replaces ours.
        self.extra_lines: list[bytes] = []
        for line in http.headers:
            encoded = line.encode("latin-1") + b"\r\n"
            if line.lower().startswith("server:"):
                self.server_line = encoded
            else:
                self.extra_lines.append(encoded)
        self.date_header = http.date_header
        self.date_line = b""
        self.default_headers = b""
        self.default_header_lines = 0  # the CRLFs in default_headers: what a response head's check expects
        # 0: off. A request that arrives while the worker has more connections than this is answered 503.
        self.limit_concurrency = http.limit_concurrency
        # Upgrade is watched so a WebSocket handshake is recognised with no work for plain requests; with
        # WebSocket off (uvicorn's --ws none) it is not, so an upgrade request reaches the app as plain HTTP.
        websocket = settings.websocket.ws != "none"
        self.watched = frozenset({_HOST, _EXPECT, _TRANSFER_ENCODING, *((_UPGRADE,) if websocket else ())})
        if security.limit_request_body:
            self.watched |= {_CONTENT_LENGTH}
        # Request ids (off when the header setting is empty): the header is watched like Host, for free.
        request_id_header = settings.logging.request_id_header
        self.request_ids = RequestIds(request_id_header) if request_id_header else None
        self.request_id_name = self.request_ids.header if self.request_ids is not None else None
        if self.request_id_name is not None:
            self.watched |= {self.request_id_name}
        proxy_names = self.proxy_trust.header_names if self.proxy_trust is not None else PROXY_HEADER_NAMES
        self.watched_trusted = self.watched | proxy_names
        self.tick()

    def hold_output(self, conn: H1Protocol) -> None:
        """`conn` holds a finished response for the end of this loop iteration: written then, together with
        every other connection's, rather than one at a time between the apps' work. Clients then get their
        answers in bursts and send their next requests in bursts, so the worker reads many per iteration and
        runs their apps back to back; that saves more than a tenth of the CPU per request."""
        held = self.held_outputs
        if not held:
            self.loop.call_soon(self.write_held_outputs)
        held.append(conn)

    def write_held_outputs(self) -> None:
        held, self.held_outputs = self.held_outputs, []
        for conn in held:
            conn.write_held()

    def tick(self) -> None:
        """Once a second: refresh the coarse clock and the Date header."""
        self.clock = self.loop.time()
        if self.date_header:
            self.date_line = b"date: %s\r\n" % formatdate(usegmt=True).encode("ascii")
        default_headers = b"".join((self.server_line, self.date_line, *self.extra_lines))
        self.default_header_lines = default_headers.count(b"\n")
        self.default_headers = default_headers

    def app_call_finished(self, call: AppCall) -> None:
        self.app_calls.discard(call)
        if not self.app_calls and self.on_app_calls_done is not None:
            self.on_app_calls_done()

    def default_headers_without(self, name: bytes) -> bytes:
        """The default headers minus one the app sets itself (rare: an app that sends its own Server)."""
        lines = [self.server_line, self.date_line, *self.extra_lines]
        return b"".join(line for line in lines if line and not line.lower().startswith(name + b":"))

    def make_room(self) -> bool:
        """At the worker_connections cap: close the longest-idle keep-alive connection. False when all are busy.

        No scan per accept: one scan sorts the idle connections, and the following accepts take from that list
        (checking that each is still idle) until it runs out. A scan that finds few idle connections is not
        repeated before the next tick of the coarse clock, so a flood of accepts while nearly every connection
        is busy costs no scan each.
        """
        conn = self._pop_idle()
        if conn is not None and not conn.head_started and self.recheck_at != self.clock:
            # Only connections that never sent a request are left from an older scan: look once more (once a
            # tick) for an answered one gone idle since, before closing one whose first request may be on the wire.
            self.recheck_at = self.clock
            self._scan_idle()
            conn = self._pop_idle()
        if conn is None:
            return False
        conn.shed()
        return True

    def _pop_idle(self) -> H1Protocol | None:
        candidates = self.shed_candidates
        if not candidates and self.shed_scan_at != self.clock:
            self._scan_idle()
        while candidates:
            conn = candidates.pop()
            if conn.is_idle():
                return conn
        return None

    def _scan_idle(self) -> None:
        idle = [conn for conn in self.connections if _is_idle_h1(conn)]
        if len(idle) <= len(self.connections) // 16:
            self.shed_scan_at = self.clock
        idle.sort(key=_shed_order, reverse=True)
        self.shed_candidates[:] = idle

    def sweep(self) -> None:
        """Close idle keep-alive connections and heads that arrive too slowly (one pass, no timers)."""
        now = self.clock
        self.shed_candidates.clear()  # rebuilt with fresh idle times when next needed
        for conn in list(self.connections):
            conn.check_timeouts(now)


def _shed_order(conn: H1Protocol) -> tuple[bool, float]:
    """Sorted descending, the list ends with the connection to shed first: one that has sent a request before
    (its client knows a reused connection may close, and retries), idle longest. One that never sent a request
    goes last: its first request may be on the wire, and a new connection's failure is not retried.
    (head_started is 0.0 until the first bytes of a first request: a signal the hot path already keeps.)"""
    return not conn.head_started, conn.idle_since


def _is_idle_h1(conn: H1Protocol | WebSocketSession) -> TypeGuard[H1Protocol]:
    return conn.is_idle()  # a WebSocket session never is
