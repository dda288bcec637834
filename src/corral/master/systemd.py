"""The master's line to systemd: a small sd_notify client (readiness, reload, stop, status, watchdog) and the
policy that turns the pool's state into those messages once per turn of the master's loop."""

from __future__ import annotations

import logging
import math
import os
import socket
import time
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass

__all__ = ["PoolView", "SystemdNotifier", "SystemdReporter", "describe_pool"]

_ENVIRONMENT = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
_log = logging.getLogger("corral.error")


class SystemdNotifier:
    """Sends sd_notify datagrams to the service manager; never raises into the master.

    The socket is non-blocking: a service manager too busy to read must never stall the master's loop, so a
    message that cannot be queued at once is not sent (nor is any to a socket that has vanished); `notify`
    says whether it was, and SystemdReporter sends state changes again on the next turn.
    """

    def __init__(self, address: str, watchdog_usec: int | None = None) -> None:
        self.address = address  # as NOTIFY_SOCKET gave it: "/path" or "@abstract-name"
        self.watchdog_usec = watchdog_usec
        self._destination = _socket_address(address)
        self._sock: socket.socket | None = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setblocking(False)
        self._failure_logged = False

    @classmethod
    def from_environ(cls, environ: MutableMapping[str, str] = os.environ) -> SystemdNotifier | None:
        """The notifier NOTIFY_SOCKET asks for, or None; NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID are
        removed from `environ` either way, so that workers, the app and anything they exec cannot notify (or
        feed the watchdog) in the master's name."""
        values = {name: environ.pop(name, None) for name in _ENVIRONMENT}
        address = values["NOTIFY_SOCKET"]
        if not address:
            return None
        if not address.startswith(("/", "@")) or len(address) < 2:
            _log.warning("NOTIFY_SOCKET=%r is not a unix socket path or @name: not notifying systemd", address)
            return None
        return cls(address, _watchdog_usec(values["WATCHDOG_USEC"], values["WATCHDOG_PID"]))

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between WATCHDOG=1 pings (half of WATCHDOG_USEC, as sd_watchdog_enabled advises), or None."""
        return self.watchdog_usec / 2_000_000 if self.watchdog_usec else None

    def environ_for(self, pid: int) -> dict[str, str]:
        """The variables a process that takes over as the service's main process (pid) needs to notify."""
        environ = {"NOTIFY_SOCKET": self.address}
        if self.watchdog_usec:
            environ |= {"WATCHDOG_USEC": str(self.watchdog_usec), "WATCHDOG_PID": str(pid)}
        return environ

    def notify(self, **fields: str | int) -> bool:
        """Send one datagram of KEY=VALUE lines; whether it was handed to the socket."""
        if self._sock is None:
            return False
        message = "".join(f"{key}={_one_line(value)}\n" for key, value in fields.items()).encode()
        try:
            self._sock.sendto(message, self._destination)
        except OSError as exc:
            if not self._failure_logged:
                self._failure_logged = True
                _log.debug("systemd notification to %s not delivered, ignoring: %s", self.address, exc)
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        return self.notify(READY=1, **_status(status))

    def reloading(self, status: str | None = None) -> bool:
        # Type=notify-reload matches the reload to its own request by this timestamp (CLOCK_MONOTONIC, in µs).
        now_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify(RELOADING=1, MONOTONIC_USEC=now_usec, **_status(status))

    def stopping(self, status: str | None = None) -> bool:
        return self.notify(STOPPING=1, **_status(status))

    def status(self, text: str) -> bool:
        return self.notify(STATUS=text)

    def watchdog(self) -> bool:
        return self.notify(WATCHDOG=1)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _socket_address(address: str) -> bytes:
    raw = os.fsencode(address)
    # "@name" is Linux's abstract namespace, whose addresses start with a NUL byte instead.
    return b"\0" + raw[1:] if raw.startswith(b"@") else raw


def _watchdog_usec(usec: str | None, pid: str | None) -> int | None:
    # WATCHDOG_PID names the process the watchdog is meant for: a wrapper that forked us keeps it to itself.
    if pid is not None and pid != str(os.getpid()):
        return None
    if usec is None or not usec.isdigit() or int(usec) == 0:
        return None
    return int(usec)


def _one_line(value: str | int) -> str:
    # A newline would start a new KEY=VALUE assignment in the datagram.
    return str(value).replace("\n", " ")


def _status(status: str | None) -> dict[str, str]:
    return {} if status is None else {"STATUS": status}


@dataclass(frozen=True)
class PoolView:
    """What systemd is told about, read from the master once per loop turn."""

    target: int  # workers wanted
    serving: int  # READY workers not told to stop
    new_ready: int  # READY workers of the current generation (what a reload is waiting for)
    alive: int  # worker processes not yet reaped
    reloading: bool
    stopping: str | None  # None, "graceful" or "fast"


def describe_pool(view: PoolView, *, started: bool = True) -> str:
    """The STATUS= line for `view`, e.g. "8 workers ready" or "reloading: 3/8 new workers ready"."""
    if view.stopping is not None:
        if not view.alive:
            return "all workers stopped"
        return f"{'draining' if view.stopping == 'graceful' else 'stopping'} {_workers(view.alive)}"
    if view.reloading:
        return f"reloading: {view.new_ready}/{view.target} new workers ready"
    if not started:
        return f"starting: {view.serving}/{view.target} workers ready"
    if view.serving < view.target:
        return f"{view.serving}/{view.target} workers ready"
    return f"{_workers(view.serving)} ready"


def _workers(count: int) -> str:
    return f"{count} worker{'s' * (count != 1)}"


class SystemdReporter:
    """Tells systemd what the pool is doing: READY=1 once every worker of the first start is READY, RELOADING=1
    at a reload and READY=1 when its rollout completes or is aborted, STOPPING=1, STATUS= when the text
    changes, and WATCHDOG=1 every watchdog interval.

    The master calls `update` once per loop turn, so the watchdog is only fed while that loop really turns.
    A message the notifier could not queue (systemd's socket is shared and its queue short) is sent again on
    the next turn, so a busy service manager delays READY=1 instead of losing it; a lost ping is not resent,
    the next one is due soon.
    """

    def __init__(self, notifier: SystemdNotifier, clock: Callable[[], float] = time.monotonic) -> None:
        self.notifier = notifier
        self._clock = clock
        self._interval = notifier.watchdog_interval
        self._next_ping = clock() if self._interval else math.inf
        self._ready_sent = False
        self._reload_pending = False  # RELOADING=1 awaits its READY=1
        self._reloading_unsent = False
        self._stopping_sent = False
        self._status = ""

    def reload_started(self) -> None:
        # Before the first READY=1 systemd is still waiting for the start: the READY=1 that ends it will do.
        if self._ready_sent and not self._stopping_sent:
            self._reload_pending = True
            self._reloading_unsent = not self.notifier.reloading()

    def update(self, view: PoolView) -> float:
        """Send what changed since the last turn; the seconds until the next watchdog ping is due (inf: none)."""
        if self._reloading_unsent and view.stopping is None:
            # Its own datagram, before the READY=1 that answers it.
            self._reloading_unsent = not self.notifier.reloading()
        event = self._event(view)
        fields: dict[str, str | int] = {event: 1} if event else {}
        status = describe_pool(view, started=self._ready_sent or event == "READY")
        if status != self._status:
            fields["STATUS"] = status
        now = self._clock()
        if self._interval and now >= self._next_ping:
            self._next_ping = now + self._interval
            fields["WATCHDOG"] = 1
        if fields and self.notifier.notify(**fields):
            self._delivered(event, status)
        return max(0.0, self._next_ping - now)

    def _event(self, view: PoolView) -> str | None:
        """The state change due this turn, if any: "STOPPING" or "READY"."""
        if view.stopping is not None:
            return None if self._stopping_sent else "STOPPING"
        if self._reloading_unsent:
            return None
        if self._reload_pending and not view.reloading:
            return "READY"
        if not self._ready_sent and not view.reloading and view.serving >= view.target:
            return "READY"
        return None

    def _delivered(self, event: str | None, status: str) -> None:
        self._status = status
        if event == "STOPPING":
            self._stopping_sent = True
        elif event == "READY":
            self._ready_sent = True
            self._reload_pending = False
