"""Listening sockets: parse `bind` values and create, configure and bind the sockets before any app code runs."""

from __future__ import annotations

import contextlib
import os
import socket
import stat
from dataclasses import dataclass

__all__ = ["BindError", "Listener", "create_listeners", "describe", "parse_bind"]


class BindError(Exception):
    """A `bind` value that cannot be bound; str(e) is one line naming the address and the reason."""


@dataclass(frozen=True)
class Listener:
    """A parsed `bind` value: a TCP host and port, a unix socket path, or an inherited descriptor."""

    kind: str  # "tcp" | "unix" | "fd"
    host: str = ""
    port: int = 0
    path: str = ""
    fd: int = -1


def parse_bind(value: str) -> Listener:
    if value.startswith("unix:"):
        path = value[len("unix:") :]
        if not path:
            raise BindError(f"bind {value!r}: empty unix socket path")
        return Listener("unix", path=path)
    if value.startswith("fd://"):
        try:
            return Listener("fd", fd=int(value[len("fd://") :]))
        except ValueError:
            raise BindError(f"bind {value!r}: fd:// needs a descriptor number") from None
    if value.startswith("["):
        host, sep, port = value[1:].partition("]")
        if not sep:
            raise BindError(f"bind {value!r}: missing ']' after the IPv6 address")
        port = port.lstrip(":")
    elif value.count(":") == 1:
        host, _, port = value.partition(":")
    elif ":" in value:
        host, port = value, ""  # a bare IPv6 address
    else:
        host, port = value, ""
    try:
        port_number = int(port) if port else 8000
    except ValueError:
        raise BindError(f"bind {value!r}: port {port!r} is not a number") from None
    if not 0 <= port_number <= 65535:
        raise BindError(f"bind {value!r}: port {port_number} is out of range")
    return Listener("tcp", host=host or "0.0.0.0", port=port_number)


def describe(sock: socket.socket) -> str:
    """The address a listening socket serves, as a URL for the log."""
    if sock.family == socket.AF_UNIX:
        return f"unix:{sock.getsockname()}"
    host, port = sock.getsockname()[:2]
    if sock.family == socket.AF_INET6:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def create_listeners(binds: list[str], backlog: int) -> list[socket.socket]:
    """Bind every `bind` value; on any failure close what was bound and raise BindError."""
    sockets: list[socket.socket] = []
    try:
        for value in binds:
            sockets.append(_bind_one(value, parse_bind(value), backlog))
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _bind_one(value: str, listener: Listener, backlog: int) -> socket.socket:
    if listener.kind == "fd":
        try:
            sock = socket.socket(fileno=listener.fd)
        except OSError as exc:
            raise BindError(f"bind {value!r}: descriptor {listener.fd} is not a socket ({exc.strerror})") from None
        sock.setblocking(False)
        return sock
    if listener.kind == "unix":
        return _bind_unix(value, listener.path, backlog)
    return _bind_tcp(value, listener.host, listener.port, backlog)


def _bind_tcp(value: str, host: str, port: int, backlog: int) -> socket.socket:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise BindError(f"bind {value!r}: cannot resolve {host!r} ({exc.strerror})") from None
    family, socktype, proto, _, address = infos[0]
    sock = socket.socket(family, socktype, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(address)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise BindError(f"bind {value!r}: {exc.strerror or exc}") from None
    sock.setblocking(False)
    return sock


def _bind_unix(value: str, path: str, backlog: int) -> socket.socket:
    with contextlib.suppress(FileNotFoundError):
        # Replace a stale socket file left by a previous run, but never a regular file.
        if stat.S_ISSOCK(os.stat(path).st_mode):
            os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise BindError(f"bind {value!r}: {exc.strerror or exc}") from None
    sock.setblocking(False)
    return sock
