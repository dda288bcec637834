"""What a worker needs to know about WebSockets before any is served: the ws_* settings, the close codes of a
worker that stops, and the call that closes every session.

Kept apart from http/websocket.py, which is built on the websockets library: a worker imports that library (and
the ~2 MiB it takes) on the first upgrade request, so one that never serves a WebSocket, as a WSGI worker
rarely does, never pays for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from corral.http.state import ServerState

__all__ = ["CLOSE_GOING_AWAY", "CLOSE_SERVICE_RESTART", "WebSocketSettings", "close_websockets"]

CLOSE_GOING_AWAY = 1001  # the server is shutting down
CLOSE_SERVICE_RESTART = 1012  # this worker is being replaced; the server goes on (reconnect)


@dataclass(frozen=True, slots=True)
class WebSocketSettings:
    """The ws_* settings (see docs/websocket.md). 0 turns max_size, ping_interval or ping_timeout off."""

    max_size: int = 16 * 1024 * 1024
    max_queue: int = 32
    max_queue_bytes: int = 4 * 1024 * 1024
    ping_interval: float = 20.0
    ping_timeout: float = 20.0
    per_message_deflate: bool = True

    @classmethod
    def from_config(cls, cfg: Any) -> WebSocketSettings:
        return cls(
            max_size=cfg.ws_max_size,
            max_queue=cfg.ws_max_queue,
            max_queue_bytes=cfg.ws_max_queue_bytes,
            ping_interval=cfg.ws_ping_interval,
            ping_timeout=cfg.ws_ping_timeout,
            per_message_deflate=cfg.ws_per_message_deflate,
        )


def close_websockets(state: ServerState, code: int) -> None:
    """Start closing every WebSocket of the worker with `code` (1001 shutdown, 1012 restart).

    A session whose handshake is still with the app is closed with it as soon as the app accepts.
    """
    state.websocket_close_code = code
    for session in list(state.websockets):
        session.going_away(code)
