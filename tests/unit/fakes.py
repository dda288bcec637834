"""A fake asyncio transport for protocol tests without sockets (bytes the protocol writes are collected), and the
ServerState those protocols share, built from the settings table."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from corral.config import default_settings
from corral.core.scoreboard import WorkerCounters
from corral.http.state import ServerState

__all__ = ["FakeTransport", "server_state"]


class FakeTransport(asyncio.Transport):
    def __init__(self, peer: tuple[str, int] = ("127.0.0.1", 40000)) -> None:
        super().__init__()
        self.written = bytearray()
        self.closed = False
        self.aborted = False
        self.reading = True
        self.peer = peer
        self.unsent = 0  # what a real transport would still hold for a client that is not reading
        self.protocol: asyncio.BaseProtocol | None = None  # set only when a protocol hands the transport over

    def write(self, data: bytes) -> None:  # type: ignore[override]
        assert not self.closed, "write after close"
        self.written += data

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True
        self.aborted = True

    def is_closing(self) -> bool:
        return self.closed

    def get_write_buffer_size(self) -> int:
        return self.unsent

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.protocol = protocol

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": self.peer, "sockname": ("127.0.0.1", 8000)}.get(name, default)


def server_state(
    app: Callable[..., Any],
    *,
    logger: logging.Logger | None = None,
    access_log: Any = None,
    app_state: dict[str, Any] | None = None,
    counters: WorkerCounters | None = None,
    max_requests: int = 0,
    on_max_requests: Callable[[], None] | None = None,
    **settings: Any,
) -> ServerState:
    """A worker's ServerState on the running loop: the table's defaults with `settings` changed (validated as
    any other source is, so `keepalive="1"` works and a bad value fails as it would from the command line)."""
    return ServerState(
        default_settings(**settings),
        loop=asyncio.get_running_loop(),
        app=app,
        logger=logger or logging.getLogger("test"),
        access_log=access_log,
        app_state=app_state,
        counters=counters,
        max_requests=max_requests,
        on_max_requests=on_max_requests,
    )
