"""One worker's serving life: lifespan, listeners, the once-a-second tick (heartbeat), and graceful drain.

The worker process (worker/process.py) runs `Worker.serve()` after the master forked it; the master reads
what the tick publishes in the worker's scoreboard slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any

from corral.core.contract import WorkerExit
from corral.core.scoreboard import Slot, WorkerCounters, WorkerState
from corral.core.sizing import rss_bytes
from corral.core.sockets import describe
from corral.http.h1 import H1Protocol
from corral.http.proxy import ProxyTrust
from corral.http.state import ServerState
from corral.http.ws_settings import CLOSE_GOING_AWAY, CLOSE_SERVICE_RESTART, WebSocketSettings, close_websockets
from corral.logging import AccessLog, access_log_colors, access_log_target
from corral.tls import serving_options
from corral.worker.drain import cancel_app_calls, wait_until_drained
from corral.worker.lifespan import Lifespan, LifespanFailure

__all__ = ["Worker", "new_event_loop"]

# How often the coarse clock, the Date header, idle/slow connection checks, log flushing and the
# heartbeat run.
TICK_SECONDS = 1.0

# On INT/QUIT the master kills its workers 3 s after asking: lifespan shutdown gets this long, so the app can
# still close its pools and flush what it holds.
FAST_LIFESPAN_SHUTDOWN = 2.0

# How long cancelled app calls get to unwind (their `finally` blocks, their except CancelledError).
CANCEL_GRACE = 1.0


def new_event_loop(choice: str) -> asyncio.AbstractEventLoop:
    """uvloop when asked for or available ("auto"); asyncio's own loop otherwise."""
    if choice in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if choice == "uvloop":
                raise
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


class Worker:
    """Serves the listeners with the app; TERM drains gracefully, INT and QUIT stop at once."""

    def __init__(
        self,
        cfg: Any,
        app: Any,
        listeners: list[socket.socket],
        loop: asyncio.AbstractEventLoop,
        logger: logging.Logger,
        *,
        slot: Slot | None = None,
        final_shutdown: Callable[[], bool] = lambda: True,
        server_stopping: Callable[[], bool] = lambda: True,
        max_requests: int = 0,
        on_quit: Callable[[], None] | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.cfg = cfg
        self.app = app
        self.listeners = listeners
        self.loop = loop
        self.logger = logger
        self.slot = slot
        self.final_shutdown = final_shutdown
        self.server_stopping = server_stopping  # the whole server stops (not just this worker): WebSockets get 1001
        self.max_requests = max_requests
        self.on_quit = on_quit  # the worker_int hook, on INT or QUIT
        # ssl= and a handshake bound for every server and accepted socket; empty for plain HTTP.
        self.tls_options = serving_options(ssl_context, cfg.header_timeout)
        self.counters = WorkerCounters.for_worker(cfg, slot)
        self.servers: list[asyncio.AbstractServer] = []
        self.stop_requested: asyncio.Future[bool] = loop.create_future()
        self.hurry: asyncio.Future[None] = loop.create_future()  # INT or QUIT during a drain: stop waiting
        self.state: ServerState | None = None
        self.access_log: AccessLog | None = None
        self.tick_handle: asyncio.TimerHandle | None = None
        self.watchdog: Any = None

    async def serve(self) -> int:
        cfg = self.cfg
        self._install_signals()
        self._schedule_tick()  # the heartbeat runs while booting too: a slow lifespan is not a dead loop
        lifespan = Lifespan(self.app, cfg.lifespan, self.logger)
        try:
            await lifespan.startup()
        except LifespanFailure as exc:
            self.logger.error("Application startup failed: %s", exc)
            return WorkerExit.LIFESPAN
        if self.stop_requested.done():
            await lifespan.shutdown()
            return WorkerExit.OK
        self.access_log = AccessLog.open(
            access_log_target(cfg),
            cfg.access_log_format,
            log_format=cfg.log_format,
            request_id_header=cfg.request_id_header,
            colors=access_log_colors(cfg),
        )
        self.state = self._make_state(lifespan.state)
        await self._start_servers()
        self._start_watchdog()
        if self.slot is not None:
            now = time.monotonic()
            # RSS before READY: the master reads it as it sees READY (workers=auto caps the pool by it).
            self.slot.publish(self.counters, now, rss_bytes())
            self.slot.set_state(WorkerState.READY, now)
        self.logger.info("Application startup complete")
        graceful = await self.stop_requested
        if self.slot is not None:
            self.slot.set_state(WorkerState.DRAINING, time.monotonic())
        await self._stop_servers(graceful)
        if graceful and not self.hurry.done():
            await lifespan.shutdown()
        else:
            await self._fast_lifespan_shutdown(lifespan)
        if self.watchdog is not None:
            self.watchdog.stop()
        if self.tick_handle is not None:
            self.tick_handle.cancel()
        if self.slot is not None:
            # The last counts since the tick: the master adds them to the pool's totals when it reaps us.
            self.slot.publish(self.counters, time.monotonic(), rss_bytes())
        if self.access_log is not None:
            self.access_log.close()
        self.logger.info("Shutdown complete")
        return WorkerExit.OK

    async def _fast_lifespan_shutdown(self, lifespan: Lifespan) -> None:
        """INT/QUIT: lifespan shutdown still runs, bounded so that it ends before the master's kill."""
        try:
            await asyncio.wait_for(lifespan.shutdown(), FAST_LIFESPAN_SHUTDOWN)
        except asyncio.TimeoutError:
            self.logger.warning(
                "lifespan shutdown did not finish within %gs of a fast shutdown: cancelled", FAST_LIFESPAN_SHUTDOWN
            )

    def _make_state(self, app_state: dict[str, Any]) -> ServerState:
        cfg = self.cfg
        return ServerState(
            loop=self.loop,
            app=self.app,
            logger=self.logger,
            access_log=self.access_log,
            proxy_trust=(
                ProxyTrust.from_setting(cfg.forwarded_allow_ips, cfg.secure_scheme_headers)
                if cfg.proxy_headers
                else None
            ),
            root_path=cfg.root_path,
            server_header=cfg.server_header,
            date_header=cfg.date_header,
            headers=cfg.headers,
            limit_concurrency=cfg.limit_concurrency,
            websocket=cfg.ws != "none",
            keepalive=cfg.keepalive,
            header_timeout=cfg.header_timeout,
            body_timeout=cfg.body_timeout,
            limit_request_line=cfg.limit_request_line,
            limit_request_fields=cfg.limit_request_fields,
            limit_request_field_size=cfg.limit_request_field_size,
            limit_request_body=cfg.limit_request_body,
            worker_connections=cfg.worker_connections,
            app_state=app_state,
            counters=self.counters,
            max_requests=self.max_requests,
            on_max_requests=self._max_requests_reached,
            ws_settings=WebSocketSettings.from_config(cfg),
            request_id_header=cfg.request_id_header,
        )

    async def _start_servers(self) -> None:
        state = self.state
        assert state is not None

        protocol_factory = self._protocol_factory(state)
        for sock in self.listeners:
            # The server gets a duplicate: closing it must leave our descriptor open, so that on the final
            # shutdown the connections still queued in the kernel can be accepted and answered.
            served = sock.dup()
            if sock.family == socket.AF_UNIX:
                server = await self.loop.create_unix_server(
                    protocol_factory, sock=served, backlog=self.cfg.backlog, **self.tls_options
                )
            else:
                server = await self.loop.create_server(
                    protocol_factory, sock=served, backlog=self.cfg.backlog, **self.tls_options
                )
            self.servers.append(server)
            self.logger.debug("Listening on %s", describe(sock))

    def _protocol_factory(self, state: ServerState) -> Callable[[], asyncio.Protocol]:
        """HTTP/1.1 for each connection; behind a PROXY protocol gate when proxy_protocol is on."""

        def protocol_factory() -> H1Protocol:
            return H1Protocol(state)

        if not getattr(self.cfg, "proxy_protocol", False):
            return protocol_factory
        from corral.http.proxy_protocol import gate_factory

        trust = ProxyTrust.from_setting(self.cfg.proxy_allow_ips, {})
        return gate_factory(protocol_factory, trust)

    def _start_watchdog(self) -> None:
        threshold = float(getattr(self.cfg, "loop_lag_warn", 0) or 0)
        if not threshold:
            return
        from corral.worker.watchdog import LoopWatchdog

        self.watchdog = LoopWatchdog(self.loop, threshold, self.logger, self._in_flight)
        self.watchdog.start()

    def _in_flight(self) -> list[tuple[str, str, str, float]]:
        if self.state is None:
            return []
        requests = [conn.in_flight() for conn in list(self.state.connections)]
        return [request for request in requests if request is not None]

    def _install_signals(self) -> None:
        self.loop.add_signal_handler(signal.SIGTERM, self._request_stop, True)
        self.loop.add_signal_handler(signal.SIGINT, self._request_stop, False)
        self.loop.add_signal_handler(signal.SIGQUIT, self._request_stop, False)
        self.loop.add_signal_handler(signal.SIGUSR1, self._reopen_logs)

    def _reopen_logs(self) -> None:
        from corral.logging import reopen_error_log

        reopen_error_log()
        if self.access_log is not None:
            self.access_log.reopen()

    def _request_stop(self, graceful: bool) -> None:
        if not graceful and self.on_quit is not None:
            on_quit, self.on_quit = self.on_quit, None
            on_quit()
        if not self.stop_requested.done():
            self.logger.info("Worker shutting down%s", " gracefully" if graceful else "")
            self.stop_requested.set_result(graceful)
        elif not graceful and not self.hurry.done():
            # A fast stop during the drain: stop waiting for the stragglers.
            self.hurry.set_result(None)

    def _max_requests_reached(self) -> None:
        self.logger.info("max_requests (%d) reached: asking the master for a replacement", self.max_requests)
        if self.slot is not None:
            self.slot.request_retirement()

    def _schedule_tick(self) -> None:
        self.tick_handle = self.loop.call_later(TICK_SECONDS, self._tick)

    def _tick(self) -> None:
        state = self.state
        if state is not None:
            state.tick()
            state.sweep()
            self.counters.active_connections = len(state.connections)
            self.counters.active_requests = sum(1 for conn in state.connections if conn.cycle is not None)
            self.counters.websockets = len(state.websockets)
        if self.access_log is not None:
            self.access_log.flush()
        if self.slot is not None:
            self.slot.publish(self.counters, time.monotonic(), rss_bytes())
        self._schedule_tick()

    async def _stop_servers(self, graceful: bool) -> None:
        state = self.state
        assert state is not None
        state.draining = True  # from now on every response says Connection: close
        for server in self.servers:
            server.close()
        # Tell WebSocket clients whether to reconnect (1012: another worker serves on) or not (1001).
        close_websockets(state, CLOSE_GOING_AWAY if self.server_stopping() else CLOSE_SERVICE_RESTART)
        if graceful and self.final_shutdown():
            self._accept_backlog(state)
        # Nothing more is accepted here: close our copies of the listeners now. Once every process has closed
        # its copy, new connections are refused, and a load balancer retries them on another instance; an
        # open copy would let the kernel queue them until we exit and then reset them, after the client had
        # sent its request (a POST a balancer cannot retry).
        for sock in self.listeners:
            sock.close()
        why = "fast shutdown"
        if graceful:
            state.tick()
            state.drain_started = state.clock
            # Idle keep-alive connections stay until their keep-alive timeout (the tick's sweep), their next
            # request (answered with Connection: close), or the peer's close.
            drained = await wait_until_drained(state, self.cfg.graceful_timeout, self.logger, self.hurry)
            if self.hurry.done():
                why = "fast shutdown during the drain"
            else:
                why = f"graceful_timeout ({self.cfg.graceful_timeout:g}s) expired"
            if state.connections and not drained:
                self.logger.warning("%s with %d connection(s) still open: closing them", why, len(state.connections))
        self._abort_connections()
        tasks = cancel_app_calls(state, self.logger, why)
        if tasks:
            await asyncio.wait(tasks, timeout=CANCEL_GRACE)

    def _accept_backlog(self, state: ServerState) -> None:
        """Take the connections already queued in the kernel, so the shutdown answers them too."""

        protocol_factory = self._protocol_factory(state)
        for sock in self.listeners:
            while True:
                try:
                    conn, _ = sock.accept()
                except (BlockingIOError, InterruptedError, OSError):
                    break
                conn.setblocking(False)
                with contextlib.suppress(OSError):
                    if sock.family != socket.AF_UNIX:
                        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                # Made now, not when the transport is set up a loop turn later: it counts as a connection from
                # here on, so the drain cannot find the worker idle and exit before answering it.
                protocol = protocol_factory()
                # The connection the drain counts is the HTTP protocol, behind its PROXY protocol gate if any.
                h1 = protocol if isinstance(protocol, H1Protocol) else protocol.inner  # type: ignore[attr-defined]
                accepted = self.loop.connect_accepted_socket(lambda p=protocol: p, conn, **self.tls_options)
                task = self.loop.create_task(accepted)
                task.add_done_callback(functools.partial(_accept_done, state, h1))

    def _abort_connections(self) -> None:
        if self.state is None:
            return
        for conn in list(self.state.connections):
            if conn.transport is not None:
                conn.transport.abort()


def _accept_done(state: ServerState, protocol: H1Protocol, task: asyncio.Task[Any]) -> None:
    if task.cancelled() or task.exception() is not None:
        state.connections.discard(protocol)  # it never started: nothing to wait for
        if not task.cancelled():
            logging.getLogger("corral.error").debug("could not serve a queued connection: %r", task.exception())
