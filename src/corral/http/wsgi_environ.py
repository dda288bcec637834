"""The PEP 3333 side of a WSGI request: the environ built from the ASGI scope, `wsgi.input` over a body read in
full (memory up to a spool size, then a temporary file), `wsgi.errors` and `wsgi.file_wrapper`."""

from __future__ import annotations

import io
import logging
import sys
import tempfile
from collections.abc import Iterator
from typing import IO, Any
from urllib.parse import unquote_to_bytes

__all__ = [
    "NO_BODY", "BodyBudget", "BodyWriter", "EnvironBuilder", "ErrorStream", "FileWrapper", "WSGIInput",
]  # fmt: skip

_error_log = logging.getLogger("corral.error")

# Headers whose environ keys have no HTTP_ prefix (PEP 3333, CGI).
_UNPREFIXED = {b"content-type": "CONTENT_TYPE", b"content-length": "CONTENT_LENGTH"}
# Strings that repeat from request to request, made once: the environ key of each header name, and the
# SERVER_NAME and SERVER_PORT of each Host value. Bounded, as clients choose what goes in them.
_HEADER_KEYS: dict[bytes, str] = {}
_HOSTS: dict[str, tuple[str, str | None]] = {}
_CACHE_MAX = 1024
_PROTOCOLS = {"1.1": "HTTP/1.1", "1.0": "HTTP/1.0"}
# "%" as an int: `int in bytes` is a memchr, while `bytes in bytes` first tries its needle as an int, which
# raises a TypeError inside CPython (made, then cleared): about ten times the cost, on every request.
_PERCENT = ord("%")


def _header_key(name: bytes) -> str:
    """The environ key of a header name not in `_HEADER_KEYS` yet (the builder looks there first, inline)."""
    key = _UNPREFIXED.get(name) or "HTTP_" + name.decode("latin-1").upper().replace("-", "_")
    if len(_HEADER_KEYS) < _CACHE_MAX:
        _HEADER_KEYS[name] = key
    return key


class EnvironBuilder:
    """Builds the environ of each request of one app from its ASGI scope, with the shared empty `wsgi.input`
    (the request's body, if it has one, replaces it once read). What every request of the worker shares (the
    wsgi.* values, the CGI variables' defaults) is a base dict made once and copied: each environ is still a
    fresh dict the app may change as it likes, and a copy costs less than building the same keys again. Proxy
    headers are already applied to the scope's client, server and scheme."""

    __slots__ = ("base",)

    def __init__(self, *, errors: Any, multithread: bool) -> None:
        self.base: dict[str, Any] = {
            "SCRIPT_NAME": "",
            "QUERY_STRING": "",
            "REMOTE_ADDR": "",
            "REMOTE_PORT": "",
            "wsgi.version": (1, 0),
            "wsgi.input": NO_BODY,
            "wsgi.errors": errors,
            "wsgi.multithread": multithread,
            "wsgi.multiprocess": True,  # a pre-fork pool, as Gunicorn says even with one worker
            "wsgi.run_once": False,
            "wsgi.file_wrapper": FileWrapper,
            "wsgi.input_terminated": False,
        }

    def build(self, scope: dict[str, Any]) -> dict[str, Any]:
        environ = self.base.copy()
        raw_path: bytes = scope["raw_path"]
        root_path: str = scope.get("root_path", "")
        if root_path:
            root_bytes = root_path.encode("utf-8")
            if raw_path.startswith(root_bytes):
                raw_path = raw_path[len(root_bytes):]
            environ["SCRIPT_NAME"] = root_bytes.decode("latin-1")
        # PEP 3333: PATH_INFO is the unquoted path as bytes, carried in a str by latin-1 (a "bytes-as-str").
        environ["PATH_INFO"] = (unquote_to_bytes(raw_path) if _PERCENT in raw_path else raw_path).decode("latin-1")
        environ["REQUEST_METHOD"] = scope["method"]
        query: bytes = scope["query_string"]
        if query:
            environ["QUERY_STRING"] = query.decode("latin-1")
        version: str = scope["http_version"]
        environ["SERVER_PROTOCOL"] = _PROTOCOLS.get(version) or "HTTP/" + version
        client = scope.get("client")
        if client:
            environ["REMOTE_ADDR"] = client[0]
            environ["REMOTE_PORT"] = str(client[1])
        environ["wsgi.url_scheme"] = scheme = scope["scheme"]
        # A copy (its values shared), because the server keeps the environ in the scope (scope["wsgi.environ"],
        # for hooks and the access log): two dicts naming each other would leave every request's scope and
        # environ to Python's cycle collector, a collection every hundred or so requests.
        environ["asgi.scope"] = scope.copy()
        header_key = _HEADER_KEYS.get
        for name, value in scope["headers"]:
            key = header_key(name) or _header_key(name)
            text = value.decode("latin-1")
            if key in environ:  # repeated headers are joined, as a CGI server does (RFC 9110 5.3)
                environ[key] += ("; " if key == "HTTP_COOKIE" else ",") + text
            else:
                environ[key] = text
        if "HTTP_TRANSFER_ENCODING" in environ:  # the parser let only a final "chunked" through
            environ["wsgi.input_terminated"] = True
        host = environ.get("HTTP_HOST")
        if host:
            # Like Gunicorn: the name the client asked for, which is what apps build their own URLs from.
            name, port = _HOSTS.get(host) or _split_host(host)
            environ["SERVER_NAME"] = name
            environ["SERVER_PORT"] = port or ("443" if scheme == "https" else "80")
        else:
            server = scope.get("server") or ("localhost", None)
            environ["SERVER_NAME"] = str(server[0])
            environ["SERVER_PORT"] = str(server[1]) if server[1] is not None else ""
        return environ


def _split_host(host: str) -> tuple[str, str | None]:
    """A Host value's name and port; None for the port when the value has none (the scheme's default then)."""
    name, colon, port = host.rpartition(":")
    split: tuple[str, str | None] = (host, None)
    if colon and port.isdigit() and (not name.startswith("[") or name.endswith("]")):
        split = (name, port)
    if len(_HOSTS) < _CACHE_MAX:
        _HOSTS[host] = split
    return split


class BodyBudget:
    """The request-body bytes one worker keeps in memory. Bodies wait in full for a free app thread, so without
    a worker-wide bound many connections could each hold a spool's worth; past it, bodies go to disk."""

    __slots__ = ("limit", "used")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0


class BodyWriter:
    """Collects a request body as it arrives on the event loop: in memory up to `spool` bytes (and while the
    worker's budget allows), then in a temporary file in `tmp_dir`, so a large upload costs disk, not memory.
    `release()` gives the memory back to the budget once the request is done."""

    __slots__ = ("budget", "file", "length", "spool", "tmp_dir")

    def __init__(self, spool: int, tmp_dir: str | None, budget: BodyBudget) -> None:
        self.file: IO[bytes] = io.BytesIO()
        self.length = 0
        self.spool = spool
        self.tmp_dir = tmp_dir
        self.budget = budget

    def write(self, data: bytes) -> None:
        if isinstance(self.file, io.BytesIO):
            budget = self.budget
            if self.length + len(data) > self.spool or budget.used + len(data) > budget.limit:
                spooled = tempfile.TemporaryFile(dir=self.tmp_dir)  # noqa: SIM115 - closed with the request
                spooled.write(self.file.getbuffer())
                self.file = spooled
                budget.used -= self.length
            else:
                budget.used += len(data)
        self.length += len(data)
        self.file.write(data)

    def finish(self) -> WSGIInput:
        self.file.seek(0)
        return WSGIInput(self.file)

    def release(self) -> None:
        if isinstance(self.file, io.BytesIO):
            self.budget.used -= self.length
            self.length = 0
            self.file = io.BytesIO()  # released once: a second call gives back nothing more


class WSGIInput:
    """`wsgi.input`: read(n), readline(limit), readlines(hint) and iteration over the request body."""

    __slots__ = ("_file",)

    def __init__(self, file: IO[bytes]) -> None:
        self._file = file

    def read(self, size: int | None = -1) -> bytes:
        return self._file.read(-1 if size is None else size)

    def readline(self, size: int | None = -1) -> bytes:
        return self._file.readline(-1 if size is None else size)

    def readlines(self, hint: int | None = -1) -> list[bytes]:
        return self._file.readlines(-1 if hint is None else hint)

    def __iter__(self) -> Iterator[bytes]:
        while True:
            line = self._file.readline()
            if not line:
                return
            yield line

    def close(self) -> None:
        self._file.close()


class _NoBody:
    """`wsgi.input` of a request without a body: always at its end. One object serves every such request, so
    nothing it is asked (closing included) changes it."""

    __slots__ = ()

    def read(self, size: int | None = -1) -> bytes:
        return b""

    def readline(self, size: int | None = -1) -> bytes:
        return b""

    def readlines(self, hint: int | None = -1) -> list[bytes]:
        return []

    def __iter__(self) -> Iterator[bytes]:
        return iter(())

    def close(self) -> None:
        pass


NO_BODY = _NoBody()


class ErrorStream:
    """`wsgi.errors`: text the app writes goes to the error log, a line at a time."""

    def __init__(self, logger: logging.Logger = _error_log) -> None:
        self.logger = logger
        self._partial = ""

    def write(self, text: str) -> int:
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        for line in lines:
            self.logger.error("%s", line)
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if self._partial:
            self.logger.error("%s", self._partial)
            self._partial = ""
        sys.stderr.flush()


class FileWrapper:
    """`wsgi.file_wrapper`: iterates a file in blocks; the server recognises it and sends the file itself."""

    def __init__(self, filelike: Any, blksize: int = 8192) -> None:
        self.filelike = filelike
        self.blksize = blksize
        if hasattr(filelike, "close"):
            self.close = filelike.close

    def __iter__(self) -> Iterator[bytes]:
        read = self.filelike.read
        while True:
            block = read(self.blksize)
            if not block:
                return
            yield block
