"""The request ledger: the one place a finished request is accounted (counters, max_requests, access log).

Every request ends here exactly once, whatever became of it: an HTTP response the app completed, one it cut
off or failed to give (answered with a 500), a WebSocket handshake (101, or the app's refusal), a request the
server refused before it had a request cycle (a bad head, a full worker), and WSGI requests alike (they run
through the same HTTP request cycle). The call sites only say *that* a request finished; what is counted,
timed, logged, and when a successor is asked for, is decided here.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable
from time import perf_counter_ns
from typing import Any, Protocol

from corral.core.scoreboard import GET, METHOD_INDEX, OTHER_METHOD, WorkerCounters

__all__ = ["FinishedRequest", "Refusal", "RequestLedger"]

_NEVER = 1 << 62  # a request count no worker reaches


class FinishedRequest(Protocol):
    """What the ledger reads of a finished request (http/asgi.py's RequestCycle, a WebSocket session, a Refusal)."""

    @property
    def scope(self) -> dict[str, Any] | None: ...  # None: refused before there was a request to describe

    @property
    def status(self) -> int: ...

    @property
    def response_headers(self) -> Any: ...  # the app's headers, as the access log's %({name}o)s atoms read them

    @property
    def response_bytes(self) -> int: ...  # body bytes sent

    @property
    def start_ns(self) -> int: ...  # perf_counter_ns() at the end of the head; 0 when requests are not timed


class Refusal:
    """A request refused before it had a request cycle: counted and it counts toward max_requests, but it is
    neither timed nor in the access log (there is no request line to log, only bytes that were not one)."""

    __slots__ = ("status",)

    scope = None
    response_headers = ()
    response_bytes = 0
    start_ns = 0

    def __init__(self, status: int) -> None:
        self.status = status


class RequestLedger:
    """Counts, times and logs finished requests, and asks for a successor once max_requests is reached."""

    __slots__ = ("access_log", "counters", "max_requests", "on_max_requests")

    def __init__(
        self,
        counters: WorkerCounters,
        access_log: Any = None,
        max_requests: int = 0,
        on_max_requests: Callable[[], None] | None = None,
    ) -> None:
        self.counters = counters
        self.access_log = access_log
        # The count that asks for a successor; off (0, or no one to ask) it is never reached, so the hot path
        # makes one comparison.
        self.max_requests = max_requests if max_requests and on_max_requests is not None else _NEVER
        self.on_max_requests = on_max_requests

    def finished(self, request: FinishedRequest) -> None:
        """Account one finished request; called exactly once per request, by whoever saw it end.

        On the hot path: plain int and list updates and at most one clock read (the worker's tick publishes
        the counters). Most requests of a fast server land in the first latency bucket and most are GETs,
        which WorkerCounters.method_counts derives: both skip a lookup.
        """
        counters = self.counters
        counters.requests += 1
        counters.responses[request.status // 100 - 1] += 1
        counters.bytes_out += request.response_bytes
        start_ns = request.start_ns
        if start_ns:  # timed: the request metrics or the access log are on
            elapsed = perf_counter_ns() - start_ns
            if counters.timed:
                bounds = counters.latency_bounds_ns
                counters.latency[0 if elapsed <= bounds[0] else bisect_left(bounds, elapsed)] += 1
                counters.duration_ns += elapsed
                method = request.scope.get("method", GET)  # type: ignore[union-attr]  # timed means a scope
                if method is not GET and method != GET:  # a WebSocket handshake has no method: it is a GET
                    counters.methods[METHOD_INDEX.get(method, OTHER_METHOD)] += 1
            access_log = self.access_log
            if access_log is not None:
                access_log.log(request.scope, request.status, request.response_headers, request.response_bytes, elapsed)
        if counters.requests >= self.max_requests:
            self._max_requests_reached()

    def _max_requests_reached(self) -> None:
        """Ask for a successor, once: >= rather than == above, since refusals count too and may step over the
        exact number."""
        self.max_requests = _NEVER
        on_max_requests, self.on_max_requests = self.on_max_requests, None
        if on_max_requests is not None:
            on_max_requests()
