"""Loop-lag diagnosis: a thread that notices a stalled event loop and logs where the loop thread is stuck.

The loop stamps `time.monotonic()` from a cheap periodic callback; a daemon thread compares that stamp with the
clock. When the stamp is late by more than the threshold it logs, once per stall, the loop thread's Python stack
and the requests in flight, so a developer sees which endpoint blocked the loop long before a hard timeout.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from types import FrameType

__all__ = ["InFlight", "LoopWatchdog", "format_in_flight"]

# (method, path, client "ip:port" or "-", age in seconds), as the server describes a request it is answering.
InFlight = Callable[[], list[tuple[str, str, str, float]]]

THREAD_NAME = "corral-loop-watchdog"
MAX_STAMP_INTERVAL = 0.25  # seconds; small enough to date a stall precisely, large enough to cost nothing
MAX_LISTED_REQUESTS = 20
MAX_STACK_FRAMES = 64  # innermost frames kept; deep framework stacks would drown the useful lines
MAX_PATH_CHARS = 200
JOIN_SECONDS = 2.0


class LoopWatchdog:
    """Warns when `loop` has not run a callback for longer than `threshold` seconds (0: off).

    `start()` must be called from the loop's thread. The watchdog cannot see a stall inside C code that
    holds the GIL (its own thread does not run then); it reports such a stall once the GIL is released.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        threshold: float,
        logger: logging.Logger,
        in_flight: InFlight,
        *,
        check_interval: float | None = None,
    ) -> None:
        self.loop = loop
        self.threshold = threshold
        self.logger = logger
        self.in_flight = in_flight
        self.stamp_interval = min(MAX_STAMP_INTERVAL, threshold / 4) if threshold > 0 else MAX_STAMP_INTERVAL
        # Checking no less often than the loop stamps means the first stamp after a stall is the one seen,
        # which dates the end of the stall.
        self.check_interval = check_interval if check_interval and check_interval > 0 else self.stamp_interval
        self._last_stamp: float | None = None  # written by the loop thread only
        self._loop_thread_id = 0
        self._handle: asyncio.TimerHandle | asyncio.Handle | None = None
        self._stamping = False  # a plain flag, so a stop() from another thread also ends the stamp chain
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    def start(self) -> None:
        """Begin stamping on the loop and watching from a daemon thread; does nothing when the threshold is 0."""
        if self.threshold <= 0 or self._thread is not None:
            return
        self._loop_thread_id = threading.get_ident()
        self._stopping.clear()
        self._stamping = True
        if self.loop.is_running():
            # Called from a callback of the running loop: "now" is a moment the loop demonstrably ran.
            self._last_stamp = time.monotonic()
            self._handle = self.loop.call_later(self.stamp_interval, self._stamp)
        else:
            # The loop has not started: there is nothing to watch until it runs its first callback.
            self._handle = self.loop.call_soon(self._stamp)
        self._thread = threading.Thread(target=self._watch, name=THREAD_NAME, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the stamping callback and the thread (waits a bounded time for the thread to end)."""
        self._stopping.set()
        self._stamping = False
        handle, self._handle = self._handle, None
        if handle is not None:
            self._cancel(handle)
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(JOIN_SECONDS)

    def _cancel(self, handle: asyncio.TimerHandle | asyncio.Handle) -> None:
        # Handles belong to the loop thread; from elsewhere, ask the loop to cancel (if it still can).
        if threading.get_ident() == self._loop_thread_id or self.loop.is_closed():
            handle.cancel()
        else:
            try:
                self.loop.call_soon_threadsafe(handle.cancel)
            except RuntimeError:  # closed in the meantime
                handle.cancel()

    def _stamp(self) -> None:
        # Runs on the loop every stamp_interval: keep it to one clock read and one call_later.
        if not self._stamping:
            return
        self._last_stamp = time.monotonic()
        self._handle = self.loop.call_later(self.stamp_interval, self._stamp)

    def _watch(self) -> None:
        stalled: _Stall | None = None  # the stall being reported, or excused while the loop was not running
        while not self._stopping.wait(self.check_interval):
            stamp = self._last_stamp
            if stamp is None:
                continue
            if stalled is not None and stamp != stalled.stamp:
                if stalled.reported:
                    self.logger.info("event loop unblocked after %.1f s", max(0.0, stamp - stalled.due))
                stalled = None
            if stalled is not None:
                continue
            due = stamp + self.stamp_interval
            if not self.loop.is_running():
                # A loop between run_until_complete() calls is paused, not blocked: stay quiet until it stamps.
                stalled = _Stall(stamp, due, reported=False)
                continue
            blocked_for = time.monotonic() - due
            if blocked_for > self.threshold:
                stalled = _Stall(stamp, due, reported=True)
                self._report(blocked_for)

    def _report(self, blocked_for: float) -> None:
        # The watchdog must outlive whatever goes wrong while describing the stall.
        try:
            message = self._describe(blocked_for)
        except Exception as exc:
            message = f"event loop blocked for {blocked_for:.1f} s (could not describe it: {exc!r})"
        self.logger.warning("%s", message)

    def _describe(self, blocked_for: float) -> str:
        frame = sys._current_frames().get(self._loop_thread_id)
        stack = _format_frame(frame) if frame is not None else "  (the loop thread's stack is not available)\n"
        return (
            f"event loop blocked for {blocked_for:.1f} s; the loop thread is at:\n"
            f"{stack}"
            f"{format_in_flight(self._read_in_flight())}"
        )

    def _read_in_flight(self) -> list[tuple[str, str, str, float]] | None:
        # in_flight() walks containers the (stalled or just-resumed) loop thread owns; if the loop resumes
        # and changes one mid-walk, one retry almost always sees a settled view.
        for _ in range(2):
            try:
                return list(self.in_flight())
            except RuntimeError:
                continue
            except Exception as exc:
                self.logger.debug("loop watchdog: in-flight requests unavailable: %r", exc)
                return None
        return None


class _Stall:
    """One stall: identified by the last stamp the loop made before it."""

    __slots__ = ("due", "reported", "stamp")

    def __init__(self, stamp: float, due: float, *, reported: bool) -> None:
        self.stamp = stamp
        self.due = due  # when the next stamp should have come: the stall began no later than this
        self.reported = reported


def _format_frame(frame: FrameType) -> str:
    return "".join(traceback.format_stack(frame, limit=MAX_STACK_FRAMES))


def format_in_flight(requests: Sequence[tuple[str, str, str, float]] | None) -> str:
    """The "in-flight requests:" block of a stall warning: oldest first, at most MAX_LISTED_REQUESTS lines."""
    if requests is None:
        return "in-flight requests: unknown"
    if not requests:
        return "in-flight requests: none"
    oldest_first = sorted(requests, key=lambda request: request[3], reverse=True)
    lines = ["in-flight requests:"]
    for method, path, client, age in oldest_first[:MAX_LISTED_REQUESTS]:
        origin = f" from {_printable(client)}" if client and client != "-" else ""
        lines.append(f"  {_printable(method)} {_printable(path)}{origin} for {age:.1f} s")
    if len(oldest_first) > MAX_LISTED_REQUESTS:
        lines.append(f"  ... and {len(oldest_first) - MAX_LISTED_REQUESTS} more")
    return "\n".join(lines)


def _printable(text: str) -> str:
    # Paths arrive percent-decoded: a client could otherwise forge log lines with %0A.
    if len(text) > MAX_PATH_CHARS:
        text = text[:MAX_PATH_CHARS] + "..."
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else char.encode("unicode_escape").decode("ascii") for char in text)
