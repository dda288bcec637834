"""Back-pressure for corral's asyncio protocols. Writing: the transport pauses and resumes us, and writers
await `drain()` until its buffer falls below the low-water mark (HTTP responses and WebSocket frames alike).
Reading: each protocol decides when to stop reading, and tells the transport through `_set_reading`."""

from __future__ import annotations

import asyncio

from corral.compiled import mypyc_attr

__all__ = ["WriteFlowControl"]


# Compiled (see setup.py), it is subclassed by both a compiled protocol (H1Protocol) and an interpreted one
# (WebSocketSession), which mypyc allows only when told.
@mypyc_attr(allow_interpreted_subclasses=True)
class WriteFlowControl(asyncio.Protocol):
    """pause_writing/resume_writing bookkeeping and `drain()`; subclasses set `loop`, `transport`,
    `writing_paused`, `reading_paused` and `drain_waiters` in their __init__, call `_release_writers()` when the
    connection is lost, and say in `_writes_abandoned()` when waiting would be pointless."""

    # Slots, so that a subclass may use them (H1Protocol does). Every attribute this class reads is one of its
    # own: compiled, it keeps them in its own layout, which a subclass's slot of the same name would shadow.
    __slots__ = ("drain_waiters", "loop", "reading_paused", "transport", "write_blocked_since", "writing_paused")

    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport
    reading_paused: bool  # what the transport was last told
    writing_paused: bool
    drain_waiters: list[asyncio.Future[None]]
    # Since when the client has taken none of our output (loop time): set when the transport pauses us, and by
    # a protocol that closes with output still unsent. Rare paths only, so the clock read costs nothing.
    write_blocked_since: float

    def pause_writing(self) -> None:
        self.writing_paused = True
        self.write_blocked_since = self.loop.time()

    def _set_reading(self, stop: bool) -> None:
        """Pause or resume reading, telling the transport only of a change."""
        if stop is not self.reading_paused:
            self.reading_paused = stop
            if stop:
                self.transport.pause_reading()
            else:
                self.transport.resume_reading()

    def resume_writing(self) -> None:
        self.writing_paused = False
        self._release_writers()

    def _release_writers(self) -> None:
        waiters, self.drain_waiters = self.drain_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _writes_abandoned(self) -> bool:
        """True once nothing more will be written (closing, peer gone): drain() returns at once."""
        return False

    async def drain(self) -> None:
        """Wait until the transport's write buffer falls below its low-water mark."""
        if self._writes_abandoned():
            return
        waiter = self.loop.create_future()
        self.drain_waiters.append(waiter)
        await waiter
