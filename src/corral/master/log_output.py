"""The master's own log output never blocks: lines it cannot write at once (stderr is a full pipe nobody reads)
wait in a small bounded buffer, and beyond it are dropped and counted, rather than stopping supervision.

A master blocked in write(2) on its error log would stop enforcing `timeout`, reaping and restarting: one
stalled log reader would take the whole server down. So every log handler of the master that writes to a pipe
or a terminal is wrapped: in the master it writes through a file description of its own, opened again from
/proc/self/fd/N with O_NONBLOCK (setting O_NONBLOCK on the inherited descriptor would change it for the workers
and the app too, which share that file description), or, to a socket (journald's stream), with MSG_DONTWAIT
on each send; in the processes it forks (workers, the admin process)
the wrapper hands records to the original handler, whose writes may block as they always did: a worker stuck
on its log stops its heartbeat, and the master, which is not stuck, replaces it.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import stat
import weakref
from typing import Any

__all__ = ["MAX_PENDING", "NonBlockingHandler", "dropped_lines", "flush_pending", "guard_master_log"]

MAX_PENDING = 64 * 1024  # bytes of log lines held while the reader is behind; lines beyond it are dropped

_guards: weakref.WeakSet[NonBlockingHandler] = weakref.WeakSet()


class NonBlockingHandler(logging.Handler):
    """Wraps a StreamHandler of the master: same level, filters and formatter, non-blocking writes."""

    def __init__(self, inner: logging.StreamHandler[Any], fd: int, sock: socket.socket | None = None) -> None:
        super().__init__(inner.level)
        self.inner = inner
        self.filters = inner.filters
        self.formatter = inner.formatter
        self.fd = fd
        self.sock = sock  # set when the output is a socket: fd is then its descriptor
        self.owner = os.getpid()
        self.pending = bytearray()
        self.dropped = 0  # lines dropped since the last notice
        self.dropped_total = 0

    @property
    def stream(self) -> Any:
        """The original stream (a worker's faulthandler writes its tracebacks there)."""
        return self.inner.stream

    def emit(self, record: logging.LogRecord) -> None:
        if os.getpid() != self.owner:
            self.inner.handle(record)  # a forked child: the original, blocking handler
            return
        try:
            line = (self.format(record) + "\n").encode("utf-8", "backslashreplace")
        except Exception:
            self.handleError(record)
            return
        self.write(line)

    def write(self, line: bytes) -> None:
        """Queue one line (or drop it, counted, when the queue is full), then write what the pipe takes."""
        if len(self.pending) + len(line) > MAX_PENDING:
            self.dropped += 1
            self.dropped_total += 1
        else:
            self.pending += line
        self.flush_pending()

    def flush_pending(self) -> None:
        """Write as much of the queue as the pipe takes now; once it is empty, say how many lines were lost."""
        if os.getpid() != self.owner or self.fd < 0:
            return
        while self.pending:
            try:
                written = self._write_now(self.pending)
            except BlockingIOError:
                return
            except InterruptedError:
                continue
            except OSError as exc:
                if exc.errno != errno.EPIPE:
                    self.dropped += self.pending.count(b"\n")
                self.pending.clear()  # nobody will ever read it (EPIPE) or it cannot be written: let it go
                return
            del self.pending[:written]
        if self.dropped:
            notice = self._notice(self.dropped)
            self.dropped = 0
            self.pending += notice
            self.flush_pending()

    def _notice(self, count: int) -> bytes:
        record = logging.LogRecord(
            "corral.error", logging.WARNING, __file__, 0,
            "%d lines of the master's log were dropped: its output (a pipe) was full and not being read",
            (count,), None,
        )  # fmt: skip
        try:
            return (self.format(record) + "\n").encode("utf-8", "backslashreplace")
        except Exception:
            return f"corral: {count} log lines dropped (the log output was full)\n".encode()

    def _write_now(self, data: bytearray) -> int:
        if self.sock is not None:
            return self.sock.send(data, socket.MSG_DONTWAIT)
        return os.write(self.fd, data)

    def close(self) -> None:
        if os.getpid() == self.owner and self.fd >= 0:
            self.flush_pending()  # a last try, still without waiting: the master is going
            self._close_output()
        self.fd = -1
        self.inner.close()
        super().close()

    def _forget_in_child(self) -> None:
        if os.getpid() != self.owner and self.fd >= 0:
            self._close_output()
            self.fd = -1
            self.pending.clear()

    def _close_output(self) -> None:
        with contextlib.suppress(OSError):
            if self.sock is not None:
                self.sock.close()
            else:
                os.close(self.fd)
        self.sock = None


def guard_master_log(loggers: tuple[str, ...] = ("corral.error", "gunicorn.error", "")) -> int:
    """In the master, before the first fork: wrap every handler of `loggers` that writes to a pipe or a
    terminal so that it never blocks. Returns how many were wrapped."""
    wrapped = 0
    for name in loggers:
        logger = logging.getLogger(name or None)
        for index, handler in enumerate(list(logger.handlers)):
            output = _private_output(handler)
            if output is None:
                continue
            guard = NonBlockingHandler(handler, *output)  # type: ignore[arg-type]
            logger.handlers[index] = guard
            _guards.add(guard)
            wrapped += 1
    return wrapped


def flush_pending() -> None:
    """Once per master loop turn: write what waited for the reader, even when nothing new is logged."""
    for guard in list(_guards):
        if guard.pending or guard.dropped:
            guard.flush_pending()


def dropped_lines() -> int:
    """Master log lines dropped since start because the output was full."""
    return sum(guard.dropped_total for guard in list(_guards))


def _private_output(handler: logging.Handler) -> tuple[int, socket.socket | None] | None:
    """A way for the master to write the handler's output without ever waiting, if that output may block: a
    non-blocking file description of its own (a pipe, a terminal), or a socket to send to with MSG_DONTWAIT."""
    if isinstance(handler, (logging.FileHandler, NonBlockingHandler)) or not isinstance(handler, logging.StreamHandler):
        return None  # regular files do not block; other handlers (sockets, syslog) are the operator's choice
    stream = handler.stream
    try:
        with contextlib.suppress(AttributeError, ValueError):
            stream.flush()
        fd = stream.fileno()
        mode = os.fstat(fd).st_mode
    except (AttributeError, ValueError, OSError):
        return None
    if stat.S_ISSOCK(mode):
        with contextlib.suppress(OSError):
            sock = socket.socket(fileno=os.dup(fd))
            if sock.type == socket.SOCK_STREAM:
                return sock.fileno(), sock
            sock.close()
        return None
    if not (stat.S_ISFIFO(mode) or os.isatty(fd)):
        return None
    try:
        private = os.open(f"/proc/self/fd/{fd}", os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError:
        return None  # no /proc: the shared description stays as it is, blocking
    return private, None


def _after_fork_in_child() -> None:
    for guard in list(_guards):
        guard._forget_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)
