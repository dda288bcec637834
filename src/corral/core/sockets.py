"""Listening sockets: parse `bind` values and create, configure and bind the sockets before any app code runs."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import socket
import stat
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "BindAddress",
    "BindError",
    "create_listeners",
    "describe",
    "parse_bind",
    "systemd_listeners",
    "tcp_migrate_req_enabled",
    "worker_listeners",
]


class BindError(ValueError):
    """A `bind` value that cannot be parsed or bound; str(e) is one line naming the address and the reason."""


_HOSTNAME_RE = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?$")
_DEFAULT_PORT = 8000


@dataclass(frozen=True)
class BindAddress:
    """A parsed `bind` value; str() gives the canonical form stored in Config.bind."""

    kind: Literal["tcp", "unix", "fd"]
    host: str = ""
    port: int = 0
    path: str = ""
    fd: int = -1

    def __str__(self) -> str:
        if self.kind == "unix":
            return f"unix:{self.path}"
        if self.kind == "fd":
            return f"fd://{self.fd}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def _parse_port(text: str, value: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise BindError(f"port must be a number from 0 to 65535 in {value!r}")
    return int(text)


def _parse_host(host: str, value: str) -> str:
    if not host:
        return "0.0.0.0"
    if re.fullmatch(r"[\d.]+", host):
        try:
            return str(ipaddress.IPv4Address(host))
        except ValueError:
            raise BindError(f"{host!r} is not a valid IPv4 address in {value!r}") from None
    if not _HOSTNAME_RE.match(host):
        raise BindError(f"{host!r} is not a valid host name or address in {value!r}")
    return host.lower()


def _parse_ipv6(text: str, value: str) -> str:
    try:
        return str(ipaddress.IPv6Address(text))
    except ValueError:
        raise BindError(f"{text!r} is not a valid IPv6 address in {value!r}") from None


def parse_bind(value: str) -> BindAddress:
    """Parse HOST, HOST:PORT, [IPV6]:PORT, unix:PATH (or unix://PATH) or fd://N.

    A bare HOST means port 8000; an empty host means 0.0.0.0; port 0 lets the kernel choose."""
    text = value.strip()
    if text.startswith(("unix://", "unix:")):
        path = text[7:] if text.startswith("unix://") else text[5:]
        if not path:
            raise BindError(f"unix socket address needs a path: {value!r}")
        return BindAddress("unix", path=path)
    if text.startswith("fd://"):
        fd = text[5:]
        if not fd.isdigit():
            raise BindError(f"fd://N needs a file descriptor number, got {value!r}")
        return BindAddress("fd", fd=int(fd))
    text = text.removeprefix("tcp://")
    if not text:
        raise BindError("an empty address")
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep:
            raise BindError(f"missing ']' in {value!r}")
        if rest and not rest.startswith(":"):
            raise BindError(f"expected [IPV6]:PORT, got {value!r}")
        port = _parse_port(rest[1:], value) if rest else _DEFAULT_PORT
        return BindAddress("tcp", host=_parse_ipv6(host, value), port=port)
    if text.count(":") > 1:
        # "::1:80" is itself a valid IPv6 address, so without brackets the port would be a guess.
        raise BindError(f"write IPv6 addresses in brackets, e.g. [::1]:8000; got {value!r}")
    host, sep, port_text = text.rpartition(":")
    if not sep:
        host, port_text = text, str(_DEFAULT_PORT)
    return BindAddress("tcp", host=_parse_host(host, value), port=_parse_port(port_text, value))


def describe(sock: socket.socket, scheme: str = "http") -> str:
    """The address a listening socket serves, as a URL for the log."""
    if sock.family == socket.AF_UNIX:
        return f"unix:{sock.getsockname()}" + (f" ({scheme})" if scheme != "http" else "")
    host, port = sock.getsockname()[:2]
    if sock.family == socket.AF_INET6:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}"


def create_listeners(
    binds: list[str],
    backlog: int,
    *,
    umask: int = 0,
    owner: tuple[int, int] | None = None,
    reuse_port: bool = False,
) -> list[socket.socket]:
    """Bind every `bind` value; on any failure close what was bound and raise BindError.

    `umask` applies while unix sockets are created (their file mode); `owner` (uid, gid) is given the
    unix socket files, so that workers running as that user can manage them.
    """
    sockets: list[socket.socket] = []
    try:
        for value in binds:
            sockets.append(_bind_one(value, parse_bind(value), backlog, umask, owner, reuse_port))
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _bind_one(
    value: str, listener: BindAddress, backlog: int, umask: int, owner: tuple[int, int] | None, reuse_port: bool
) -> socket.socket:
    if listener.kind == "fd":
        try:
            sock = socket.socket(fileno=listener.fd)
        except OSError as exc:
            raise BindError(f"bind {value!r}: descriptor {listener.fd} is not a socket ({exc.strerror})") from None
        sock.setblocking(False)
        return sock
    if listener.kind == "unix":
        return _bind_unix(value, listener.path, backlog, umask, owner)
    return _bind_tcp(value, listener.host, listener.port, backlog, reuse_port)


def _bind_tcp(value: str, host: str, port: int, backlog: int, reuse_port: bool) -> socket.socket:
    try:
        # An ASCII name is passed as bytes: as a str it goes through the idna codec, whose import (stringprep,
        # unicodedata) would add about a megabyte to the master and so to every worker forked from it.
        name = host.encode("ascii") if host.isascii() else host
        infos = socket.getaddrinfo(name, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise BindError(f"bind {value!r}: cannot resolve {host!r} ({exc.strerror})") from None
    family, socktype, proto, _, address = infos[0]
    sock = socket.socket(family, socktype, proto)
    try:
        _configure_tcp(sock, reuse_port)
        sock.bind(address)
        if not reuse_port:
            # With reuse_port the master's socket only holds the address; each worker listens on its own.
            sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise BindError(f"bind {value!r}: {exc.strerror or exc}") from None
    sock.setblocking(False)
    return sock


def _configure_tcp(sock: socket.socket, reuse_port: bool) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if sock.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def worker_listeners(master_sockets: list[socket.socket], backlog: int, reuse_port: bool) -> list[socket.socket]:
    """The sockets a worker serves: the master's, or with reuse_port its own twin of each TCP one.

    A twin is a new SO_REUSEPORT socket bound to the same address, so the kernel spreads connections over
    the workers' own accept queues instead of waking them all on one shared queue.
    """
    if not reuse_port:
        return master_sockets
    sockets = []
    for shared in master_sockets:
        if shared.family not in (socket.AF_INET, socket.AF_INET6) or _is_listening(shared):
            sockets.append(shared)  # unix sockets and inherited descriptors stay shared
            continue
        own = socket.socket(shared.family, socket.SOCK_STREAM)
        _configure_tcp(own, reuse_port=True)
        own.bind(shared.getsockname())
        own.listen(backlog)
        own.setblocking(False)
        sockets.append(own)
    return sockets


def _is_listening(sock: socket.socket) -> bool:
    return bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))


def tcp_migrate_req_enabled(path: str = "/proc/sys/net/ipv4/tcp_migrate_req") -> bool | None:
    """Whether the kernel moves queued connections off a closing SO_REUSEPORT socket (None: unknown)."""
    try:
        with open(path) as file:
            return file.read().strip() == "1"
    except OSError:
        return None


def _bind_unix(value: str, path: str, backlog: int, umask: int, owner: tuple[int, int] | None) -> socket.socket:
    with contextlib.suppress(FileNotFoundError):
        # Replace a stale socket file left by a previous run, but never a regular file.
        if stat.S_ISSOCK(os.stat(path).st_mode):
            os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    previous_umask = os.umask(umask)
    try:
        sock.bind(path)
        if owner is not None:
            os.chown(path, *owner)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise BindError(f"bind {value!r}: {exc.strerror or exc}") from None
    finally:
        os.umask(previous_umask)
    sock.setblocking(False)
    return sock


SD_LISTEN_FDS_START = 3


def systemd_listeners(environ: dict[str, str] | None = None, pid: int | None = None) -> list[socket.socket] | None:
    """The sockets systemd passed by socket activation (LISTEN_FDS for this pid), or None when there are none.

    The variables are removed once read, so that workers and apps do not take the sockets for their own, and
    the descriptors are made close-on-exec (systemd passes them inheritable), so that programs the app runs do
    not hold the listeners open. Raises BindError for anything corral cannot listen on, naming the socket by
    its LISTEN_FDNAMES name.
    """
    env = os.environ if environ is None else environ
    if env.get("LISTEN_PID") != str(os.getpid() if pid is None else pid):
        return None
    count_text = env.pop("LISTEN_FDS", "0")
    names = env.pop("LISTEN_FDNAMES", "").split(":")
    env.pop("LISTEN_PID", None)
    if not count_text.isdigit():
        raise BindError(f"LISTEN_FDS={count_text!r} from systemd is not a number of descriptors")
    sockets: list[socket.socket] = []
    try:
        for index in range(int(count_text)):
            name = names[index] if index < len(names) and names[index] else "unknown"
            sockets.append(_inherited_listener(SD_LISTEN_FDS_START + index, name))
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets or None


def _inherited_listener(fd: int, name: str) -> socket.socket:
    what = f"systemd socket {name!r} (descriptor {fd})"
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise BindError(f"{what} is not a socket ({exc.strerror or exc})") from None
    problem = None
    if sock.family not in (socket.AF_INET, socket.AF_INET6, socket.AF_UNIX) or sock.type != socket.SOCK_STREAM:
        problem = "is not a TCP or unix stream socket; use ListenStream= in the .socket unit"
    elif not _is_listening(sock):
        problem = "is not listening (Accept=yes passes connections); use Accept=no in the .socket unit"
    if problem is not None:
        sock.close()
        raise BindError(f"{what} {problem}")
    sock.set_inheritable(False)
    sock.setblocking(False)
    return sock
