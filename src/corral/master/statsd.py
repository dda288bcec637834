"""StatsD: the master sends the pool's metrics, aggregated from the scoreboard, about once a second, over UDP or
a unix datagram socket, under Gunicorn's metric names where Gunicorn has them.

Gunicorn sends one packet per request from each worker. Here the workers only count (plain int updates),
and the master sends what changed since its last flush: counters as deltas (`|c`), gauges as values (`|g`),
timers (`|ms`). Gunicorn's `gunicorn.request.duration` (one sample per request) becomes one sample per
flush, the mean duration of the requests of that interval, sent with the sample rate 1/N so that the
server's request count stays exact; the scoreboard keeps no per-request durations to send. Percentiles
come from /metrics' histogram instead.

Sending never blocks the master: a non-blocking datagram socket, the address resolved once at start, and a
datagram the kernel will not take right away is dropped (StatsD is lossy by design).
"""

from __future__ import annotations

import logging
import re
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from corral.core.scoreboard import METHODS, BoardSnapshot, RestartReason, Totals, WorkerState

__all__ = [
    "DEFAULT_PORT",
    "FLUSH_INTERVAL",
    "StatsdAddress",
    "StatsdClient",
    "parse_statsd_address",
    "statsd_lines",
    "statsd_prefix",
    "statsd_tags",
]

DEFAULT_PORT = 8125  # as Gunicorn
FLUSH_INTERVAL = 1.0
# Lines are packed into datagrams of at most this many bytes: fits an Ethernet MTU with IP and UDP headers.
MAX_DATAGRAM = 1432

_NAME_SAFE = re.compile(r"[^A-Za-z0-9_-]+")
_TAG_FORBIDDEN = re.compile(r"[\s|#@,]")
_PREFIX_FORBIDDEN = re.compile(r"[\s:|@#]")
_STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")


@dataclass(frozen=True)
class StatsdAddress:
    """A parsed `statsd_host`: a UDP host and port, or a unix datagram socket path."""

    host: str = ""
    port: int = DEFAULT_PORT
    path: str = ""

    def __str__(self) -> str:
        if self.path:
            return f"unix:{self.path}"
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_statsd_address(raw: str) -> StatsdAddress:
    """HOST:PORT, HOST (port 8125), [IPV6]:PORT, or unix:PATH (unix://PATH); ValueError says what is wrong."""
    text = raw.strip()
    if text.startswith(("unix://", "unix:")):
        path = text[7:] if text.startswith("unix://") else text[5:]
        if not path:
            raise ValueError(f"a unix socket address needs a path, got {raw!r}")
        return StatsdAddress(path=path)
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"expected [IPV6]:PORT, got {raw!r}")
        return StatsdAddress(host=host, port=_port(rest[1:], raw) if rest else DEFAULT_PORT)
    if text.count(":") > 1:
        raise ValueError(f"write IPv6 addresses in brackets, e.g. [::1]:8125; got {raw!r}")
    host, sep, port = text.partition(":")
    if not host:
        raise ValueError(f"expected HOST:PORT or unix:PATH, got {raw!r}")
    return StatsdAddress(host=host, port=_port(port, raw) if sep else DEFAULT_PORT)


def _port(text: str, raw: str) -> int:
    if not text.isdigit() or not 0 < int(text) <= 65535:
        raise ValueError(f"port must be a number from 1 to 65535 in {raw!r}")
    return int(text)


def statsd_prefix(prefix: str) -> str:
    """The prefix as it goes before every name: with one trailing dot, as Gunicorn writes it; "" for none."""
    prefix = prefix.strip().rstrip(".")
    if _PREFIX_FORBIDDEN.search(prefix):
        raise ValueError(f"a StatsD prefix may not contain spaces, ':', '|', '@' or '#'; got {prefix!r}")
    return f"{prefix}." if prefix else ""


def statsd_tags(raw: str) -> str:
    """Comma-separated DogStatsD tags (key:value or bare), normalised to "a:b,c"; ValueError if malformed."""
    tags = [tag.strip() for tag in raw.split(",") if tag.strip()]
    for tag in tags:
        if _TAG_FORBIDDEN.search(tag):
            raise ValueError(f"a DogStatsD tag may not contain spaces, '|', '#', '@' or ','; got {tag!r}")
    return ",".join(tags)


def statsd_lines(
    board: BoardSnapshot,
    previous: Totals,
    previous_restarts: tuple[int, ...],
    listener_names: list[str],
    booted: Iterable[float] = (),
) -> list[str]:
    """The StatsD lines (without prefix or tags) for one flush: counters since `previous`, gauges now, and one
    boot-time sample per worker in `booted` (seconds)."""
    totals = board.totals()
    lines = _counter_lines(totals, previous)
    lines += _duration_lines(totals, previous)
    lines += _restart_lines(board.restarts, previous_restarts)
    lines += _gauge_lines(board, listener_names)
    lines += [f"corral.app.boot:{_number(seconds * 1000)}|ms" for seconds in booted]
    return lines


def _counter_lines(totals: Totals, previous: Totals) -> list[str]:
    counters = [("gunicorn.requests", totals.requests - previous.requests)]
    counters += [
        (f"gunicorn.request.status.{name}", now - before)
        for name, now, before in zip(_STATUS_CLASSES, totals.responses, previous.responses, strict=True)
    ]
    counters += [
        (f"corral.request.method.{name}", now - before)
        for name, now, before in zip(METHODS, totals.methods, previous.methods, strict=True)
    ]
    counters.append(("corral.request.bytes", totals.bytes_in - previous.bytes_in))
    counters.append(("corral.response.bytes", totals.bytes_out - previous.bytes_out))
    return [f"{name}:{delta}|c" for name, delta in counters if delta > 0]


def _duration_lines(totals: Totals, previous: Totals) -> list[str]:
    timed = sum(totals.latency) - sum(previous.latency)
    if timed <= 0:
        return []
    mean_ms = (totals.duration_ns - previous.duration_ns) / timed / 1e6
    rate = "" if timed == 1 else f"|@{1 / timed:.6g}"
    return [f"gunicorn.request.duration:{_number(mean_ms)}|ms{rate}"]


def _restart_lines(restarts: tuple[int, ...], previous: tuple[int, ...]) -> list[str]:
    lines = []
    for reason in RestartReason:
        if reason is RestartReason.START:
            continue
        delta = restarts[reason] - (previous[reason] if reason < len(previous) else 0)
        if delta > 0:
            lines.append(f"corral.workers.restarts.{reason.name.lower()}:{delta}|c")
    return lines


def _gauge_lines(board: BoardSnapshot, listener_names: list[str]) -> list[str]:
    workers = board.workers
    gauges = [("gunicorn.workers", len(workers)), ("corral.workers.target", board.master.target)]
    for state in (WorkerState.BOOTING, WorkerState.READY, WorkerState.RETIRING, WorkerState.DRAINING):
        gauges.append((f"corral.workers.{state.name.lower()}", sum(1 for w in workers if w.state is state)))
    gauges += [
        ("corral.requests.active", sum(w.active_requests for w in workers)),
        ("corral.connections.active", sum(w.active_connections for w in workers)),
        ("corral.websockets.active", sum(w.websockets for w in workers)),
        ("corral.workers.rss", sum(w.rss for w in workers)),
    ]
    for name, queue in zip(listener_names, board.listeners, strict=False):
        if queue is not None:
            label = _NAME_SAFE.sub("_", name).strip("_")
            gauges.append((f"corral.listen.backlog.{label}", queue.depth))
            gauges.append((f"corral.listen.backlog_max.{label}", queue.limit))
    # A gauge value with a sign means "change by" to StatsD: never send a negative one.
    return [f"{name}:{max(0, value)}|g" for name, value in gauges]


def _number(value: float) -> str:
    return f"{value:.3f}".rstrip("0").rstrip(".") or "0"


class StatsdClient:
    """Sends the pool's metrics to one StatsD server from the master, once per FLUSH_INTERVAL."""

    def __init__(
        self,
        address: StatsdAddress,
        prefix: str,
        tags: str,
        listener_names: list[str],
        logger: logging.Logger,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.address = address
        self.prefix = statsd_prefix(prefix)
        self.suffix = f"|#{statsd_tags(tags)}" if statsd_tags(tags) else ""
        self.listener_names = listener_names
        self.log = logger
        self.clock = clock
        self.sock, self.destination = _open(address)  # OSError: the host does not resolve
        self.previous = Totals()
        self.previous_restarts: tuple[int, ...] = ()
        self.booted: set[tuple[int, int]] = set()  # (slot, pid) whose boot time was sent
        self.next_flush = 0.0
        self.send_failed = False

    def maybe_flush(self, read_board: Callable[[], BoardSnapshot]) -> None:
        """Flush if FLUSH_INTERVAL has passed since the last flush."""
        now = self.clock()
        if now >= self.next_flush:
            self.next_flush = now + FLUSH_INTERVAL
            self.flush(read_board())

    def flush(self, board: BoardSnapshot) -> None:
        lines = statsd_lines(board, self.previous, self.previous_restarts, self.listener_names, self._new_boots(board))
        self.previous = board.totals()
        self.previous_restarts = board.restarts
        self._send([f"{self.prefix}{line}{self.suffix}" for line in lines])

    def close(self) -> None:
        self.sock.close()

    def _new_boots(self, board: BoardSnapshot) -> list[float]:
        ready = {(w.index, w.pid): w.ready_at - w.started for w in board.workers if w.ready_at > 0}
        new = [seconds for key, seconds in ready.items() if key not in self.booted]
        self.booted = set(ready)
        return new

    def _send(self, lines: list[str]) -> None:
        for datagram in _datagrams(lines):
            try:
                self.sock.sendto(datagram, self.destination)
            except OSError as exc:  # no server listening, a full buffer: StatsD is lossy by design
                if not self.send_failed:
                    self.send_failed = True
                    self.log.warning("statsd_host %s: cannot send (%s); will keep trying quietly", self.address, exc)
                return
        self.send_failed = False


def _open(address: StatsdAddress) -> tuple[socket.socket, str | tuple[object, ...]]:
    if address.path:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.setblocking(False)
        return sock, address.path
    family, kind, proto, _, destination = socket.getaddrinfo(address.host, address.port, type=socket.SOCK_DGRAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setblocking(False)
    return sock, destination


def _datagrams(lines: list[str]) -> list[bytes]:
    datagrams: list[bytes] = []
    current = b""
    for line in lines:
        encoded = line.encode()
        if current and len(current) + 1 + len(encoded) > MAX_DATAGRAM:
            datagrams.append(current)
            current = b""
        current = current + b"\n" + encoded if current else encoded
    if current:
        datagrams.append(current)
    return datagrams
