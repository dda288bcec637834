"""What a worker needs of WebSockets before any is served: the close codes of a worker that stops, and the call
that closes every session.

Kept apart from http/websocket.py, which is built on the websockets library: a worker imports that library (and
the ~2 MiB it takes) on the first upgrade request, so one that never serves a WebSocket, as a WSGI worker
rarely does, never pays for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from corral.http.state import ServerState

__all__ = ["CLOSE_GOING_AWAY", "CLOSE_SERVICE_RESTART", "close_websockets"]

CLOSE_GOING_AWAY = 1001  # the server is shutting down
CLOSE_SERVICE_RESTART = 1012  # this worker is being replaced; the server goes on (reconnect)


def close_websockets(state: ServerState, code: int) -> None:
    """Start closing every WebSocket of the worker with `code` (1001 shutdown, 1012 restart).

    A session whose handshake is still with the app is closed with it as soon as the app accepts.
    """
    state.websocket_close_code = code
    for session in list(state.websockets):
        session.going_away(code)
