"""One serving process: event loop, app and lifespan, listeners, housekeeping tick, signals and drain.

Today `corral APP` runs this directly as a single process; the master (a later step) forks it per worker.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import sys
from typing import Any

from corral.http import eager
from corral.http.h1 import H1Protocol, ServerState
from corral.http.proxy import ProxyTrust
from corral.logging import AccessLog, setup_error_log
from corral.master.sockets import BindError, create_listeners, describe

__all__ = ["Worker", "new_event_loop", "run"]

EXIT_OK = 0
EXIT_CONFIG = 2
EXIT_APP = 3

# How often the coarse clock, the Date header, idle/slow connection checks and log flushing run.
TICK_SECONDS = 1.0


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


def run(cfg: Any) -> int:
    """Serve `cfg.app` until a signal says stop; the exit status says how it ended."""
    logger = setup_error_log(cfg.errorlog, cfg.loglevel)
    eager.install()  # before the app (and anyio) is imported
    try:
        listeners = create_listeners(list(cfg.bind), cfg.backlog)
    except BindError as exc:
        print(f"corral: error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    from corral.loading import AppLoadError, load_app

    try:
        app = load_app(cfg.app, factory=cfg.factory, app_dir=cfg.app_dir)
    except AppLoadError as exc:
        print(f"corral: error: {exc}", file=sys.stderr)
        for sock in listeners:
            sock.close()
        return EXIT_APP
    loop = new_event_loop(cfg.loop)
    asyncio.set_event_loop(loop)
    worker = Worker(cfg, app, listeners, loop, logger)
    try:
        return loop.run_until_complete(worker.serve())
    finally:
        for sock in listeners:
            sock.close()
        loop.close()


class Worker:
    """Serves the listeners with the app; TERM drains gracefully, INT stops at once."""

    def __init__(
        self,
        cfg: Any,
        app: Any,
        listeners: list[socket.socket],
        loop: asyncio.AbstractEventLoop,
        logger: logging.Logger,
    ) -> None:
        self.cfg = cfg
        self.app = app
        self.listeners = listeners
        self.loop = loop
        self.logger = logger
        self.servers: list[asyncio.AbstractServer] = []
        self.stop_requested: asyncio.Future[bool] = loop.create_future()
        self.state: ServerState | None = None
        self.access_log: AccessLog | None = None
        self.tick_handle: asyncio.TimerHandle | None = None

    async def serve(self) -> int:
        from corral.worker.lifespan import Lifespan, LifespanFailure

        cfg = self.cfg
        self._install_signals()
        lifespan = Lifespan(self.app, cfg.lifespan, self.logger)
        try:
            await lifespan.startup()
        except LifespanFailure as exc:
            self.logger.error("Application startup failed: %s", exc)
            print(f"corral: error: application startup failed: {exc}", file=sys.stderr)
            return EXIT_APP
        if self.stop_requested.done():
            await lifespan.shutdown()
            return EXIT_OK
        self.access_log = AccessLog.open(cfg.accesslog, cfg.access_log_format)
        self.state = self._make_state(lifespan.state)
        await self._start_servers()
        self.logger.info("Application startup complete")
        self._schedule_tick()
        graceful = await self.stop_requested
        await self._stop_servers(graceful)
        if graceful:
            await lifespan.shutdown()
        if self.tick_handle is not None:
            self.tick_handle.cancel()
        if self.access_log is not None:
            self.access_log.close()
        self.logger.info("Shutdown complete")
        return EXIT_OK

    def _make_state(self, app_state: dict[str, Any]) -> ServerState:
        cfg = self.cfg
        return ServerState(
            loop=self.loop,
            app=self.app,
            logger=self.logger,
            access_log=self.access_log,
            proxy_trust=ProxyTrust.from_setting(cfg.forwarded_allow_ips, cfg.secure_scheme_headers),
            root_path=cfg.root_path,
            server_header=cfg.server_header,
            date_header=cfg.date_header,
            keepalive=cfg.keepalive,
            header_timeout=cfg.header_timeout,
            limit_request_line=cfg.limit_request_line,
            limit_request_fields=cfg.limit_request_fields,
            limit_request_field_size=cfg.limit_request_field_size,
            limit_request_body=cfg.limit_request_body,
            worker_connections=cfg.worker_connections,
            app_state=app_state,
        )

    async def _start_servers(self) -> None:
        state = self.state
        assert state is not None

        def protocol_factory() -> H1Protocol:
            return H1Protocol(state)

        for sock in self.listeners:
            if sock.family == socket.AF_UNIX:
                server = await self.loop.create_unix_server(protocol_factory, sock=sock, backlog=self.cfg.backlog)
            else:
                server = await self.loop.create_server(protocol_factory, sock=sock, backlog=self.cfg.backlog)
            self.servers.append(server)
            self.logger.info("Listening on %s", describe(sock))

    def _install_signals(self) -> None:
        self.loop.add_signal_handler(signal.SIGTERM, self._request_stop, True)
        self.loop.add_signal_handler(signal.SIGINT, self._request_stop, False)
        self.loop.add_signal_handler(signal.SIGQUIT, self._request_stop, False)

    def _request_stop(self, graceful: bool) -> None:
        if not self.stop_requested.done():
            self.logger.info("Shutting down%s", " gracefully" if graceful else "")
            self.stop_requested.set_result(graceful)
        elif self.state is not None and self.state.draining:
            # A second signal during the drain: stop waiting for the stragglers.
            self._abort_connections()

    def _schedule_tick(self) -> None:
        self.tick_handle = self.loop.call_later(TICK_SECONDS, self._tick)

    def _tick(self) -> None:
        state = self.state
        assert state is not None
        state.tick()
        state.sweep()
        if self.access_log is not None:
            self.access_log.flush()
        self._schedule_tick()

    async def _stop_servers(self, graceful: bool) -> None:
        state = self.state
        assert state is not None
        state.draining = True
        for server in self.servers:
            server.close()
        if graceful:
            for conn in list(state.connections):
                conn.shutdown()
            deadline = self.loop.time() + self.cfg.graceful_timeout
            while state.connections and self.loop.time() < deadline:
                await asyncio.sleep(0.05)
            if state.connections:
                self.logger.warning(
                    "graceful_timeout (%ss) expired with %d connection(s) still open: closing them",
                    self.cfg.graceful_timeout,
                    len(state.connections),
                )
        self._abort_connections()
        for server in self.servers:
            await server.wait_closed()

    def _abort_connections(self) -> None:
        assert self.state is not None
        for conn in list(self.state.connections):
            conn.transport.abort()
