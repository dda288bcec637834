"""Fakes for protocol tests without sockets: a transport that collects the bytes the protocol writes, and the
one place such tests build a ServerState."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from corral.http.state import ServerState

__all__ = ["FakeTransport", "make_state"]


def make_state(app: Callable[..., Any], **overrides: Any) -> ServerState:
    """A worker's shared state for `app` on the running loop, with the defaults unless `overrides` says otherwise."""
    return ServerState(loop=asyncio.get_running_loop(), app=app, logger=logging.getLogger("test"), **overrides)


class FakeTransport(asyncio.Transport):
    def __init__(self, peer: tuple[str, int] = ("127.0.0.1", 40000)) -> None:
        super().__init__()
        self.written = bytearray()
        self.closed = False
        self.reading = True
        self.peer = peer
        self.protocol: asyncio.BaseProtocol | None = None  # set only when a protocol hands the transport over

    def write(self, data: bytes) -> None:  # type: ignore[override]
        assert not self.closed, "write after close"
        self.written += data

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.protocol = protocol

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": self.peer, "sockname": ("127.0.0.1", 8000)}.get(name, default)
