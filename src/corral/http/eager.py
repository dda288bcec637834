"""Runs an ASGI app coroutine eagerly: its first step inline, a Task only if it really suspends.

Most ASGI apps answer a request without ever waiting (their `await send(...)` completes at once), so
driving the coroutine one step directly saves a Task, a scheduling round and a context switch per request.
The app must not be able to tell: it runs in its own copied `contextvars.Context`, and
`asyncio.current_task()` returns the Task that will carry it on should it suspend (libraries such as
anyio key their cancel scopes on that Task). On Python 3.12+ asyncio's own `eager_start` does exactly
this; on 3.10 and 3.11 this module provides it.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import sys
import types
from collections.abc import Callable, Coroutine, Generator
from typing import Any

__all__ = ["DoneCallback", "install", "run_eagerly"]

DoneCallback = Callable[[BaseException | None], None]

_NATIVE_EAGER = sys.version_info >= (3, 12)


def run_eagerly(
    loop: asyncio.AbstractEventLoop,
    coro: Coroutine[Any, Any, Any],
    on_done: DoneCallback,
    ctx: contextvars.Context,
) -> asyncio.Task[Any] | None:
    """Start `coro` now in `ctx` (a fresh Context of its own); `on_done(exc)` is called once it finishes.

    The caller passes the context rather than this copying the current one, because the current one
    may belong to another request: the next pipelined request is started from the previous one's send.
    Returns the Task carrying on a coroutine that suspended (to wait for or cancel), None if it finished.
    """
    task = asyncio.Task(coro, loop=loop, context=ctx, eager_start=True)  # type: ignore[call-arg]
    if task.done():
        _report(task, on_done)
        return None
    task.add_done_callback(lambda t: _report(t, on_done))
    return task


def _report(task: asyncio.Task[Any], on_done: DoneCallback) -> None:
    if task.cancelled():
        on_done(asyncio.CancelledError())
    else:
        on_done(task.exception())


# --- Python 3.10/3.11 ---------------------------------------------------------------------------------

# The coroutine whose eager step is running now. A plain tuple, because most steps finish without anyone
# asking for their Task; `_EagerStep` is made only when someone does, or when the step suspends.
_Pending = tuple[asyncio.AbstractEventLoop, Coroutine[Any, Any, Any], contextvars.Context, DoneCallback]
_running: _Pending | _EagerStep | None = None
_c_current_task = asyncio.current_task
_PRIMED = object()


def _run_first_step(
    loop: asyncio.AbstractEventLoop,
    coro: Coroutine[Any, Any, Any],
    on_done: DoneCallback,
    ctx: contextvars.Context,
) -> asyncio.Task[Any] | None:
    """run_eagerly for Python < 3.12 (bound to that name at the end of the module)."""
    global _running
    outer = _running
    _running = (loop, coro, ctx, on_done)
    try:
        yielded = ctx.run(coro.send, None)
    except StopIteration:
        step = _running
        _running = outer
        if type(step) is _EagerStep:
            step.finished = True
        on_done(None)
        return None
    except BaseException as exc:
        step = _running
        _running = outer
        if type(step) is _EagerStep:
            step.finished = True
        on_done(exc)
        if not isinstance(exc, Exception):
            raise
        return None
    step = _running
    _running = outer
    if type(step) is not _EagerStep:
        step = _EagerStep(loop, coro, ctx, on_done)
    step.yielded = yielded
    return step.materialize()


class _EagerStep:
    """A coroutine started eagerly that needs its Task: it suspended, or asked for current_task()."""

    __slots__ = ("coro", "ctx", "finished", "loop", "on_done", "task", "yielded")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        coro: Coroutine[Any, Any, Any],
        ctx: contextvars.Context,
        on_done: DoneCallback,
    ) -> None:
        self.loop = loop
        self.coro = coro
        self.ctx = ctx
        self.on_done = on_done
        self.task: asyncio.Task[None] | None = None
        self.finished = False
        self.yielded: Any = None

    def materialize(self) -> asyncio.Task[None]:
        """The Task that stands for this coroutine: made the first time anyone needs it."""
        if self.task is None:
            continuation = _continue(self)
            next(continuation)  # prime it, so a cancel before its first step lands inside the try
            self.task = self.loop.create_task(continuation, **_context_kwargs(self.ctx))  # type: ignore[arg-type]
        return self.task

    def _finish(self, exc: BaseException | None) -> None:
        self.finished = True
        self.on_done(exc)


if sys.version_info >= (3, 11):

    def _context_kwargs(ctx: contextvars.Context) -> dict[str, Any]:
        return {"context": ctx}

else:  # 3.10 has no context= for tasks; a copy of ctx carries the same values.

    def _context_kwargs(ctx: contextvars.Context) -> dict[str, Any]:
        return {}


@types.coroutine
def _continue(step: _EagerStep) -> Generator[Any, Any, None]:
    """The body of the continuing Task: wait for what the eager step waited on, then resume the app."""
    thrown: BaseException | None = None
    try:
        yield _PRIMED
    except BaseException as exc:  # cancelled before the first step
        thrown = exc
    if step.finished:
        return
    coro = step.coro
    pending = step.yielded
    while True:
        if thrown is None:
            try:
                yield pending
            except BaseException as exc:
                thrown = exc
                continue
            try:
                yield from coro
            except BaseException as exc:
                step._finish(exc)
                if not isinstance(exc, Exception):
                    raise
                return
            step._finish(None)
            return
        try:
            pending = coro.throw(thrown)
        except StopIteration:
            step._finish(None)
            return
        except BaseException as exc:
            step._finish(exc)
            if not isinstance(exc, Exception):
                raise
            return
        thrown = None


def _current_task(loop: asyncio.AbstractEventLoop | None = None) -> asyncio.Task[Any] | None:
    global _running
    running = _running
    if running is None:
        return _c_current_task(loop)
    if type(running) is not _EagerStep:
        running = _running = _EagerStep(*running)
    return running.materialize()


def install() -> None:
    """Make `asyncio.current_task()` see eagerly started coroutines.

    Libraries bind `current_task` at import (`from asyncio import current_task`, as anyio does), so
    modules imported before this call are repointed too; it should run before the app is imported.
    """
    if _NATIVE_EAGER or asyncio.current_task is _current_task:
        return
    for module in list(sys.modules.values()):
        if getattr(module, "current_task", None) is _c_current_task:
            with contextlib.suppress(AttributeError, TypeError):  # read-only modules keep the original
                module.current_task = _current_task


if not _NATIVE_EAGER:
    run_eagerly = _run_first_step  # the same contract, without asyncio's eager_start
