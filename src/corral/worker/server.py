"""One worker's serving life: lifespan, listeners, the once-a-second tick (heartbeat), and graceful drain.

The worker process (worker/process.py) runs `Worker.serve()` after the master forked it; the master reads
what the tick publishes in the worker's scoreboard slot.

While the master says the pool is crash-looping (a request kills its worker, over and over), the worker
serves one HTTP connection at a time: it accepts a connection only when it has no other HTTP connection open
and no app call running, and closes each connection after its response. Whatever a worker has accepted dies
with it, while what waits in the kernel's accept queue survives (the master holds the listeners), so a request
that kills its worker then takes no other request with it: the others wait in the queue for a live worker.
WebSocket sessions already open stay open (closing them would hurt more clients than the crash loop does);
new handshakes are answered with 1012 until the loop is over.
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
from corral.core.settings import Settings
from corral.core.sizing import rss_bytes
from corral.core.sockets import describe
from corral.http.h1 import H1Protocol
from corral.http.proxy import ProxyTrust
from corral.http.state import ServerState
from corral.http.ws_close import CLOSE_GOING_AWAY, CLOSE_SERVICE_RESTART, close_websockets
from corral.logging import AccessLog, access_log_colors, access_log_target
from corral.tls import serving_options
from corral.worker.drain import cancel_app_calls, wait_until_drained
from corral.worker.lifespan import Lifespan, LifespanFailure

__all__ = ["StopBeforeServing", "Worker", "new_event_loop"]

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


class StopBeforeServing:
    """TERM, INT or QUIT received after the fork and before the worker's loop handles signals (while the app
    loads, say): remembered rather than fatal, so that the worker still stops as the signal asked, gracefully
    for TERM (answering what waits for it), fast for INT and QUIT."""

    def __init__(self) -> None:
        self.graceful: bool | None = None  # None: no stop asked for yet

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
            signal.signal(sig, self._remember)

    def _remember(self, signum: int, frame: object) -> None:
        graceful = signum == signal.SIGTERM
        self.graceful = graceful if self.graceful is None else self.graceful and graceful


class Worker:
    """Serves the listeners with the app; TERM drains gracefully, INT and QUIT stop at once."""

    def __init__(
        self,
        settings: Settings,
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
        stop_before_serving: StopBeforeServing | None = None,
    ) -> None:
        self.settings = settings
        self.stop_before_serving = stop_before_serving
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
        self.tls_options = serving_options(ssl_context, settings.security.header_timeout)
        self.counters = WorkerCounters.for_worker(settings.metrics.request_metrics, slot)
        self.servers: list[asyncio.AbstractServer] = []
        self.stop_requested: asyncio.Future[bool] = loop.create_future()
        self.hurry: asyncio.Future[None] = loop.create_future()  # INT or QUIT during a drain: stop waiting
        self.state: ServerState | None = None
        self.access_log: AccessLog | None = None
        self.tick_handle: asyncio.TimerHandle | None = None
        self.watchdog: Any = None
        self.one_at_a_time = False  # the pool is crash-looping: see the module docstring
        self.watching_listeners = False  # one at a time: waiting to accept the next connection
        self.restarting_servers: asyncio.Task[None] | None = None  # the crash loop is over: back to normal
        self.protocol_factory: Callable[[], asyncio.Protocol] | None = None

    async def serve(self) -> int:
        logs = self.settings.logging
        self._install_signals()
        if self.stop_before_serving is not None and self.stop_before_serving.graceful is not None:
            self._request_stop(self.stop_before_serving.graceful)  # it came while the app loaded
        self._schedule_tick()  # the heartbeat runs while booting too: a slow lifespan is not a dead loop
        lifespan = Lifespan(self.app, self.settings.application.lifespan, self.logger)
        try:
            await lifespan.startup()
        except LifespanFailure as exc:
            self.logger.error("Application startup failed: %s", exc)
            return WorkerExit.LIFESPAN
        if self.stop_requested.done() and not self.stop_requested.result():
            await self._fast_lifespan_shutdown(lifespan)
            return WorkerExit.OK
        # A graceful stop asked for while booting goes through the drain like any other: a final shutdown
        # then answers the connections waiting in the kernel's queue for this worker.
        self.access_log = AccessLog.open(
            access_log_target(logs),
            logs.access_log_format,
            log_format=logs.log_format,
            request_id_header=logs.request_id_header,
            colors=access_log_colors(logs),
        )
        self.state = self._make_state(lifespan.state)
        self.protocol_factory = self._protocol_factory(self.state)
        if self._crash_loop_on():
            self._serve_one_at_a_time(self.state)
        else:
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
        return ServerState(
            self.settings,
            loop=self.loop,
            app=self.app,
            logger=self.logger,
            access_log=self.access_log,
            app_state=app_state,
            counters=self.counters,
            max_requests=self.max_requests,
            on_max_requests=self._max_requests_reached,
        )

    async def _start_servers(self) -> None:
        protocol_factory = self.protocol_factory
        assert protocol_factory is not None
        for sock in self.listeners:
            # The server gets a duplicate: closing it must leave our descriptor open, so that on the final
            # shutdown the connections still queued in the kernel can be accepted and answered.
            served = sock.dup()
            if sock.family == socket.AF_UNIX:
                server = await self.loop.create_unix_server(
                    protocol_factory, sock=served, backlog=self.settings.socket.backlog, **self.tls_options
                )
            else:
                server = await self.loop.create_server(
                    protocol_factory, sock=served, backlog=self.settings.socket.backlog, **self.tls_options
                )
            self.servers.append(server)
            self.logger.debug("Listening on %s", describe(sock))

    def _protocol_factory(self, state: ServerState) -> Callable[[], asyncio.Protocol]:
        """HTTP/1.1 for each connection; behind a PROXY protocol gate when proxy_protocol is on."""

        def protocol_factory() -> H1Protocol:
            return H1Protocol(state)

        if not self.settings.proxy.proxy_protocol:
            return protocol_factory
        from corral.http.proxy_protocol import gate_factory

        trust = ProxyTrust.from_setting(self.settings.proxy.proxy_allow_ips, {})
        return gate_factory(protocol_factory, trust)

    def _start_watchdog(self) -> None:
        threshold = self.settings.worker.loop_lag_warn
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
        self.loop.add_signal_handler(signal.SIGWINCH, self._crash_loop_news)  # the master declared a crash loop

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
            if not self.stop_requested.done():
                self._follow_crash_loop(state)
        if self.access_log is not None:
            self.access_log.flush()
        if self.slot is not None:
            self.slot.publish(self.counters, time.monotonic(), rss_bytes())
        self._schedule_tick()

    # --- crash loops: one connection at a time -------------------------------------------------------

    def _crash_loop_news(self) -> None:
        if self.state is not None and not self.stop_requested.done():
            self._follow_crash_loop(self.state)

    def _crash_loop_on(self) -> bool:
        return self.slot is not None and self.slot.crash_loop_until() > time.monotonic()

    def _follow_crash_loop(self, state: ServerState) -> None:
        """At the tick (and when the master says so): start or stop serving one connection at a time as the
        master's crash loop starts or ends. A worker that boots meanwhile reads it before it accepts anything."""
        if self.restarting_servers is not None and not self.restarting_servers.done():
            return  # the next tick decides
        if self._crash_loop_on() == self.one_at_a_time:
            if self.one_at_a_time:
                self._accept_when_idle()  # after a failed accept, which stopped the watch
            return
        if self.one_at_a_time:
            self.logger.info("The crash loop is over: serving connections concurrently again")
            self._stop_one_at_a_time(state)
            self.restarting_servers = self.loop.create_task(self._start_servers())
            return
        for server in self.servers:
            server.close()  # a duplicate of the listener: ours stays open, the queued connections stay queued
        self.servers.clear()
        # The HTTP connections already open end as in a drain (their next response says Connection: close, idle
        # ones at their keep-alive timeout); the next one is accepted once they are all gone.
        self._serve_one_at_a_time(state)

    def _serve_one_at_a_time(self, state: ServerState) -> None:
        self.logger.info("The pool is crash-looping: serving one connection at a time")
        self.one_at_a_time = True
        # Every response says Connection: close: an idle keep-alive connection would die with the worker too,
        # and its client may be sending its next request right then.
        state.draining = True
        # WebSockets already open stay open: they do not keep the worker from taking the next connection (see
        # _accept_when_idle). A new handshake is answered with 1012 (come back later) until the loop is over, as
        # a long-lived session started now would share the worker with whatever it accepts next.
        state.websocket_close_code = CLOSE_SERVICE_RESTART
        state.connections.on_discard = self._accept_when_idle
        state.on_app_calls_done = self._accept_when_idle
        self._accept_when_idle()

    def _stop_one_at_a_time(self, state: ServerState) -> None:
        self.one_at_a_time = False
        state.draining = False
        state.websocket_close_code = CLOSE_GOING_AWAY  # what a drain closes them with unless it says otherwise
        state.connections.on_discard = None
        state.on_app_calls_done = None
        self._unwatch_listeners()

    def _accept_when_idle(self) -> None:
        """Watch the listeners if nothing is left that could die with this worker: no HTTP connection, no app
        call (one still running after its response, a background task, can crash the worker too). WebSocket
        sessions opened before the crash loop do not count: they stay, and the worker serves others beside them."""
        state = self.state
        if self.watching_listeners or state is None or state.app_calls:
            return
        if len(state.connections) > len(state.websockets):
            return  # an HTTP connection is still open
        for sock in self.listeners:
            self.loop.add_reader(sock.fileno(), self._accept_one, sock)
        self.watching_listeners = True

    def _unwatch_listeners(self) -> None:
        if self.watching_listeners:
            for sock in self.listeners:
                self.loop.remove_reader(sock.fileno())
            self.watching_listeners = False

    def _accept_one(self, sock: socket.socket) -> None:
        state = self.state
        assert state is not None
        if not self.watching_listeners:
            return  # two listeners were ready at once, and the other one's connection was taken
        try:
            conn, _ = sock.accept()
        except (BlockingIOError, InterruptedError):
            return  # another worker took it
        except OSError as exc:
            # Out of file descriptors, say: the watch would fire again at once. The tick watches again.
            self.logger.warning("Could not accept a connection: %s", exc)
            self._unwatch_listeners()
            return
        self._unwatch_listeners()
        self._serve_accepted(state, sock, conn)

    # --- stopping -----------------------------------------------------------------------------------

    async def _stop_servers(self, graceful: bool) -> None:
        state = self.state
        assert state is not None
        if self.restarting_servers is not None:
            await self.restarting_servers  # so that the servers it starts are closed below
        if self.one_at_a_time:
            self._stop_one_at_a_time(state)
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
            graceful_timeout = self.settings.worker.graceful_timeout
            drained = await wait_until_drained(state, graceful_timeout, self.logger, self.hurry)
            if self.hurry.done():
                why = "fast shutdown during the drain"
            else:
                why = f"graceful_timeout ({graceful_timeout:g}s) expired"
            if state.connections and not drained:
                self.logger.warning("%s with %d connection(s) still open: closing them", why, len(state.connections))
        self._abort_connections()
        tasks = cancel_app_calls(state, self.logger, why)
        if tasks:
            await asyncio.wait(tasks, timeout=CANCEL_GRACE)

    def _accept_backlog(self, state: ServerState) -> None:
        """Take the connections already queued in the kernel, so the shutdown answers them too."""

        for sock in self.listeners:
            while True:
                try:
                    conn, _ = sock.accept()
                except (BlockingIOError, InterruptedError, OSError):
                    break
                self._serve_accepted(state, sock, conn)

    def _serve_accepted(self, state: ServerState, listener: socket.socket, conn: socket.socket) -> None:
        """Serve a connection accepted here rather than by a server's own accept loop."""
        conn.setblocking(False)
        with contextlib.suppress(OSError):
            if listener.family != socket.AF_UNIX:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # Made now, not when the transport is set up a loop turn later: it counts as a connection from here
        # on, so neither the drain nor the one-at-a-time accept can find the worker idle before it is answered.
        assert self.protocol_factory is not None
        protocol = self.protocol_factory()
        # The connection counted is the HTTP protocol, behind its PROXY protocol gate if any.
        h1 = protocol if isinstance(protocol, H1Protocol) else protocol.inner  # type: ignore[attr-defined]
        accepted = self.loop.connect_accepted_socket(lambda: protocol, conn, **self.tls_options)
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
