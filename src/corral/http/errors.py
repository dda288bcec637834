"""Protocol errors that carry their HTTP status, and the one place they become response bytes."""

from __future__ import annotations

from http import HTTPStatus

__all__ = [
    "BadRequest",
    "ClientDisconnected",
    "HTTPError",
    "HeaderFieldsTooLarge",
    "NotImplementedCoding",
    "PayloadTooLarge",
    "ServiceUnavailable",
    "URITooLong",
    "error_response",
]


class HTTPError(Exception):
    """A request the server refuses; `status` is the answer and the connection closes after it."""

    status = 400

    def __init__(self, reason: str = "") -> None:
        super().__init__(reason)
        self.reason = reason


class BadRequest(HTTPError):
    status = 400


class PayloadTooLarge(HTTPError):
    status = 413


class URITooLong(HTTPError):
    status = 414


class HeaderFieldsTooLarge(HTTPError):
    status = 431


class NotImplementedCoding(HTTPError):
    status = 501


class ServiceUnavailable(HTTPError):
    status = 503


class ClientDisconnected(OSError):
    """Raised by ASGI `send` once the client has gone (ASGI spec: an OSError subclass)."""


def error_response(status: int, reason: str = "", server_headers: bytes = b"") -> bytes:
    """A complete `Connection: close` response for a refused request.

    The body names the problem in one line so a developer debugging with curl sees why; it never echoes
    request bytes back (that would be an injection vector).
    """
    phrase = HTTPStatus(status).phrase
    body = f"{status} {phrase}" + (f": {reason}" if reason else "") + "\n"
    payload = body.encode("ascii", "replace")
    return (
        b"HTTP/1.1 %d %s\r\n" % (status, phrase.encode("ascii"))
        + server_headers
        + b"content-type: text/plain; charset=utf-8\r\nconnection: close\r\ncontent-length: %d\r\n\r\n" % len(payload)
        + payload
    )
