"""The ASGI lifespan protocol (spec 2.x): startup and shutdown events, and the state the app gives requests.

Startup and shutdown are two events inside one long call of the app, so that call runs as its own task from
`startup()` until `shutdown()`.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, Literal

from corral.loading import ASGIApp

__all__ = ["LIFESPAN_MODES", "Lifespan", "LifespanFailure"]

LIFESPAN_MODES = ("auto", "on", "off")

_STARTUP_ANSWERS = ("lifespan.startup.complete", "lifespan.startup.failed")
_SHUTDOWN_ANSWERS = ("lifespan.shutdown.complete", "lifespan.shutdown.failed")
_MAX_REASON = 300  # longest app text kept in a one-line reason; the full text is logged


class LifespanFailure(Exception):
    """Lifespan startup failed.

    `str(error)` is one line saying why ("RuntimeError: database unreachable", or the app's own
    `lifespan.startup.failed` message); the caller frames it ("application startup failed: ...").
    """


@dataclass(frozen=True)
class _Outcome:
    """How one phase (startup or shutdown) ended."""

    kind: Literal["complete", "failed", "unsupported", "ended"]  # ended: the app returned before shutdown
    reason: str = ""  # one line
    exc: BaseException | None = None  # the app's exception, logged with its traceback
    detail: str = ""  # the app's own multi-line failure message (Starlette sends a formatted traceback)


class Lifespan:
    """Runs the app's lifespan scope: `await startup()` before serving, `await shutdown()` after draining.

    Modes: "on" requires the app to complete startup; "auto" serves an app that does not support lifespan
    (it raises, or returns, before using receive or send: the usual reaction to an unknown scope type)
    without startup or shutdown events; "off" never calls the app with a lifespan scope.

    Unlike servers that treat any exception in "auto" mode as "unsupported", an app that has received
    `lifespan.startup` and then raises has a broken startup, and that fails startup in every mode: serving
    an app whose database pool never opened is worse than not booting.
    """

    def __init__(self, app: ASGIApp, mode: str, logger: logging.Logger) -> None:
        if mode not in LIFESPAN_MODES:
            raise ValueError(f"lifespan mode must be one of {', '.join(LIFESPAN_MODES)}, not {mode!r}")
        self.app = app
        self.mode = mode
        self.logger = logger
        # Given to the app as scope["state"]; each request's scope gets a shallow copy of it.
        self.state: dict[str, Any] = {}
        self._task: asyncio.Task[None] | None = None
        self._interacted = False  # the app has called receive or send
        self._startup_delivered = False
        self._startup_answered = False
        self._startup_completed = False
        self._shutdown_delivered = False
        self._shutdown_answered = False
        self._shutdown_requested = asyncio.Event()
        self._startup_outcome: asyncio.Future[_Outcome] | None = None
        self._shutdown_outcome: asyncio.Future[_Outcome] | None = None
        self._parked: asyncio.Future[None] | None = None  # the app waits for events after its shutdown

    # ------------------------------------------------------------------------------------ server side

    async def startup(self) -> None:
        """Send `lifespan.startup` and wait for the answer; raise LifespanFailure if startup failed.

        The app's traceback or multi-line failure message, if any, is logged at ERROR first; the exception
        carries the one-line reason for the caller to report.
        """
        if self.mode == "off":
            return
        if self._task is not None:
            raise RuntimeError("Lifespan.startup() can run only once")
        loop = asyncio.get_running_loop()
        self._startup_outcome = loop.create_future()
        self._shutdown_outcome = loop.create_future()
        self._parked = loop.create_future()
        self._task = loop.create_task(self._run_app(), name="corral-lifespan")
        try:
            outcome = await self._startup_outcome
        except asyncio.CancelledError:
            self._task.cancel()
            raise
        if outcome.kind == "complete":
            self._startup_completed = True
            self.logger.debug("lifespan startup complete")
            return
        if outcome.kind == "unsupported" and self.mode == "auto":
            self.logger.info(
                "the app does not support the ASGI lifespan protocol (%s); "
                "serving it without startup and shutdown events",
                outcome.reason,
            )
            if outcome.exc is not None:
                self.logger.debug("lifespan scope raised", exc_info=outcome.exc)
            return
        await self._stop_app()
        reason = outcome.reason
        if outcome.kind == "unsupported":
            reason = f"the app does not support the ASGI lifespan protocol ({reason}) and lifespan is 'on'"
        if outcome.exc is not None or outcome.detail:  # the one-line reason is the caller's to report
            self._log_failure("startup", reason, outcome)
        raise LifespanFailure(reason)

    async def shutdown(self) -> None:
        """Send `lifespan.shutdown`, wait for the answer, and end the app's lifespan task.

        Never raises (problems are logged), except CancelledError when the caller gives up waiting, in which
        case the app's lifespan task is cancelled too.
        """
        if self._task is None:
            return
        try:
            if self._startup_completed:
                await self._request_shutdown()
            await self._wait_until_app_is_idle()
            await self._stop_app()
        except asyncio.CancelledError:
            self._task.cancel()
            raise

    async def _request_shutdown(self) -> None:
        assert self._shutdown_outcome is not None
        self._shutdown_requested.set()
        outcome = await self._shutdown_outcome
        if outcome.kind == "complete":
            self.logger.debug("lifespan shutdown complete")
        elif outcome.kind == "failed":
            self._log_failure("shutdown", outcome.reason, outcome)

    async def _wait_until_app_is_idle(self) -> None:
        # After its last answer the app should return; one that waits for more events will never get any,
        # so it is idle and can be cancelled. One busy elsewhere is waited for (the caller bounds the wait).
        assert self._task is not None and self._parked is not None
        if not self._task.done():
            await asyncio.wait({self._task, self._parked}, return_when=asyncio.FIRST_COMPLETED)

    async def _stop_app(self) -> None:
        assert self._task is not None
        if not self._task.done():
            self._task.cancel()
            await asyncio.wait({self._task})  # unlike `await task`, does not re-raise the task's cancellation

    def _log_failure(self, phase: str, reason: str, outcome: _Outcome) -> None:
        if outcome.detail:
            self.logger.error("lifespan %s failed; the app reported:\n%s", phase, outcome.detail.rstrip())
        else:
            self.logger.error("lifespan %s failed: %s", phase, reason, exc_info=outcome.exc)

    # ----------------------------------------------------------------------------------- the app's call

    async def _run_app(self) -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": self.state}
        try:
            await self.app(scope, self._receive, self._send)
        except asyncio.CancelledError:
            self._app_exited(None, cancelled=True)
            raise
        except Exception as exc:
            self._app_exited(exc)
        else:
            self._app_exited(None)

    async def _receive(self) -> dict[str, Any]:
        self._interacted = True
        if not self._startup_delivered:
            self._startup_delivered = True
            return {"type": "lifespan.startup"}
        if not self._startup_answered:
            # The next event (shutdown) only comes after startup: waiting for it now would never end.
            raise self._protocol_error("the app asked for the next lifespan event before answering startup")
        if not self._shutdown_delivered:
            await self._shutdown_requested.wait()
            self._shutdown_delivered = True
            return {"type": "lifespan.shutdown"}
        if not self._shutdown_answered:
            raise self._protocol_error("the app asked for another lifespan event before answering shutdown")
        _resolve(self._parked, None)
        await asyncio.get_running_loop().create_future()  # no more events, ever: shutdown() cancels this
        raise AssertionError("unreachable")  # pragma: no cover

    async def _send(self, message: dict[str, Any]) -> None:
        self._interacted = True
        kind = message.get("type") if isinstance(message, dict) else None
        if kind in _STARTUP_ANSWERS and not self._startup_answered:
            self._startup_answered = True
            _resolve(self._startup_outcome, _answer(kind, message))
        elif kind in _SHUTDOWN_ANSWERS and self._shutdown_delivered and not self._shutdown_answered:
            self._shutdown_answered = True
            _resolve(self._shutdown_outcome, _answer(kind, message))
        else:
            raise self._protocol_error(f"the app sent {kind!r}, {self._expected()}")

    def _expected(self) -> str:
        if not self._startup_answered:
            return "expected 'lifespan.startup.complete' or 'lifespan.startup.failed'"
        if self._shutdown_delivered and not self._shutdown_answered:
            return "expected 'lifespan.shutdown.complete' or 'lifespan.shutdown.failed'"
        return "when no lifespan message was expected"

    def _protocol_error(self, reason: str) -> RuntimeError:
        """Fail the pending phase with `reason`; the returned error is raised into the app."""
        startup, shutdown = self._startup_outcome, self._shutdown_outcome
        assert startup is not None and shutdown is not None
        if not startup.done():
            _resolve(startup, _Outcome("failed", reason))
        elif self._shutdown_delivered and not shutdown.done():
            _resolve(shutdown, _Outcome("failed", reason))
        else:  # no phase is waiting for this: report it now rather than never
            self.logger.error("lifespan protocol error: %s", reason)
        return RuntimeError(reason)

    def _app_exited(self, exc: Exception | None, *, cancelled: bool = False) -> None:
        startup, shutdown = self._startup_outcome, self._shutdown_outcome
        assert startup is not None and shutdown is not None
        if cancelled:
            ending = _Outcome("failed", "the app's lifespan task was cancelled")
            _resolve(startup, ending)
            _resolve(shutdown, ending)
        elif not startup.done():
            _resolve(startup, self._startup_ending(exc))
        elif not shutdown.done() and _completed(startup):
            _resolve(shutdown, self._shutdown_ending(exc))
        elif exc is not None:
            # Typically Starlette re-raising after it sent '...failed': that failure is already reported.
            self.logger.debug("the app's lifespan scope raised after its last answer", exc_info=exc)
        _resolve(self._parked, None)

    def _startup_ending(self, exc: Exception | None) -> _Outcome:
        if not self._interacted:
            # Apps without lifespan support raise (or return) at once on the unknown scope type.
            how = f"it raised {_describe(exc)}" if exc else "it returned"
            return _Outcome("unsupported", f"{how} without using receive or send", exc)
        if exc is not None:
            return _Outcome("failed", f"the app raised {_describe(exc)}", exc)
        return _Outcome("failed", "the app returned without sending 'lifespan.startup.complete'")

    def _shutdown_ending(self, exc: Exception | None) -> _Outcome:
        if self._shutdown_delivered:
            if exc is not None:
                return _Outcome("failed", f"the app raised {_describe(exc)}", exc)
            return _Outcome("failed", "the app returned without sending 'lifespan.shutdown.complete'")
        # Ended between startup and shutdown: say so now, not at shutdown, possibly hours later.
        if exc is not None:
            self.logger.error(
                "the app's lifespan scope raised after startup; it will get no shutdown event", exc_info=exc
            )
        else:
            self.logger.debug("the app's lifespan scope returned after startup; no shutdown event to send")
        return _Outcome("ended")


def _answer(kind: str, message: dict[str, Any]) -> _Outcome:
    if kind.endswith(".complete"):
        return _Outcome("complete")
    text = str(message.get("message") or "")
    reason = _one_line(text) or f"the app sent {kind!r} without a message"
    return _Outcome("failed", reason, detail=text if "\n" in text.strip() else "")


def _one_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return ""
    # A formatted traceback (Starlette sends one) ends with "ExceptionType: message", its most telling line.
    line = lines[-1] if lines[0].startswith("Traceback (most recent call last)") else " ".join(lines)
    return line if len(line) <= _MAX_REASON else line[: _MAX_REASON - 3] + "..."


def _describe(exc: BaseException) -> str:
    text = _one_line(str(exc))
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _completed(future: asyncio.Future[_Outcome]) -> bool:
    return future.done() and not future.cancelled() and future.result().kind == "complete"


def _resolve(future: asyncio.Future[Any] | None, value: Any) -> None:
    if future is not None and not future.done():
        future.set_result(value)
