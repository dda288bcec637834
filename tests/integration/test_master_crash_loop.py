"""A request that kills its worker, sent over and over, must not empty the pool: a worker that booted and then
died is replaced at once (back-off is only for workers that cannot boot), and healthy requests keep being
answered by the other worker and the replacements."""

from __future__ import annotations

import contextlib
import re
import threading
import time
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.integration.conftest import (
    Conn,
    RequestLoad,
    Server,
    ServerFactory,
    exchange,
    ready_workers,
    wait_for_ready_workers,
    wait_until,
)

APP = "tests.apps.master_apps:app"
CRASH = b"GET /crash HTTP/1.1\r\nHost: corral.test\r\nConnection: close\r\n\r\n"
GET_ROOT = b"GET / HTTP/1.1\r\nHost: corral.test\r\nConnection: close\r\n\r\n"
CRASH_CLIENTS = 4
CRASHES_EACH = 10
CRASHES = CRASH_CLIENTS * CRASHES_EACH
DIED = re.compile(r"Worker pid \d+ died unexpectedly \(killed by SIGKILL\)")
ONE_AT_A_TIME = re.compile(r"\[(\d+)\] \[INFO\] The pool is crash-looping: serving one connection at a time")
CONCURRENT_AGAIN = re.compile(r"\[(\d+)\] \[INFO\] The crash loop is over: serving connections concurrently again")
GET_KEEP_ALIVE = b"GET / HTTP/1.1\r\nHost: corral.test\r\n\r\n"
# The master declares a crash loop at the second crash within its window (CRASH_LOOP_AT in master/arbiter.py).
CRASHES_TO_DECLARE = 2
HEALTHY_CLIENTS = 3


def _send_crashes(port: int, clients: int = CRASH_CLIENTS, each: int = CRASHES_EACH) -> int:
    """`clients` clients each send `each` crash requests back to back; how many got no response."""
    unanswered = [0] * clients

    def client(index: int) -> None:
        for _ in range(each):
            try:
                unanswered[index] += not exchange(port, CRASH).final_responses()
            except (OSError, AssertionError):
                unanswered[index] += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(unanswered)


def test_a_request_that_kills_its_worker_is_replaced_at_once_and_healthy_requests_keep_being_answered(
    serve: ServerFactory,
) -> None:
    server = serve(APP, "-w", "2")
    wait_for_ready_workers(server, 2)
    with RequestLoad(server.port, max_seconds=60.0) as load:
        assert load.wait_for_more(5), "the healthy load never got going"
        unanswered = _send_crashes(server.port)
        during = load.outcomes()
        # The pool was not left empty behind a back-off: the next request is answered.
        assert exchange(server.port, GET_ROOT).final_responses()[0].status == 200
        assert load.wait_for_more(20), "healthy requests stopped being answered after the crash loop"
    wait_for_ready_workers(server, 2)
    log = server.stderr_text()
    assert unanswered == CRASHES, "a crash request is never answered: its worker dies"
    answered = [o for o in during if o.ok]
    failed = [o for o in during if not o.ok]
    print(f"\n{CRASHES} crash requests: healthy requests meanwhile {len(answered)} answered, {len(failed)} failed")
    # A healthy request fails only when the worker that accepted it is killed by a crash request meanwhile;
    # with a back-off the pool is empty for a while and they wait and fail.
    assert len(answered) > len(failed), f"{len(answered)} answered, {len(failed)} failed: {failed[:3]}"
    assert len(DIED.findall(log)) >= CRASH_CLIENTS
    assert "failures in a row" not in log, "workers that booted and then died must not be backed off"
    assert "Crash loop: " in log


def _every_worker_logged(server: Server, line: re.Pattern[str]) -> bool:
    """Whether both workers are READY and each has logged `line` (its pid in group 1)."""
    workers = ready_workers(server)
    return len(workers) == 2 and workers <= {int(pid) for pid in line.findall(server.stderr_text())}


def _declare_a_crash_loop(server: Server) -> None:
    """Crash workers until the master declares a crash loop, and wait until both workers serve one at a time."""
    for _ in range(CRASHES_TO_DECLARE):
        assert not exchange(server.port, CRASH).final_responses()
        wait_for_ready_workers(server, 2)
    # Replacements boot serving one at a time; a worker that was already serving switches at its next tick.
    assert wait_until(lambda: _every_worker_logged(server, ONE_AT_A_TIME), 10.0), server.stderr_text()


def test_while_the_pool_crash_loops_a_request_that_kills_its_worker_takes_no_healthy_request_with_it(
    serve: ServerFactory,
) -> None:
    """Once the master has declared the crash loop and every worker serves one connection at a time, no healthy
    request fails, however many crash requests arrive meanwhile: each worker holds only the connection it is
    answering, and the others wait in the kernel's accept queue, which the master keeps open."""
    server = serve(APP, "-w", "2")
    wait_for_ready_workers(server, 2)
    _declare_a_crash_loop(server)
    # Several healthy clients: a worker then often holds healthy connections when a crash request reaches it.
    loads = [RequestLoad(server.port, max_seconds=60.0) for _ in range(HEALTHY_CLIENTS)]
    with contextlib.ExitStack() as stack:
        for load in loads:
            stack.enter_context(load)
        assert all(load.wait_for_more(1) for load in loads), "the healthy load never got going"
        unanswered = _send_crashes(server.port, clients=2, each=10)
        assert all(load.wait_for_more(1) for load in loads), "healthy requests stopped being answered"
    outcomes = [outcome for load in loads for outcome in load.outcomes()]
    assert unanswered == 20, "a crash request is never answered: its worker dies"
    failed = [o for o in outcomes if not o.ok]
    assert not failed, f"{len(failed)} of {len(outcomes)} healthy requests failed: {failed[:3]}"
    wait_for_ready_workers(server, 2)


def test_once_the_crashes_stop_the_workers_keep_connections_alive_and_serve_them_concurrently_again(
    serve: ServerFactory,
) -> None:
    server = serve(APP, "-w", "2")
    wait_for_ready_workers(server, 2)
    _declare_a_crash_loop(server)
    with Conn(server.port) as conn:
        conn.send(GET_KEEP_ALIVE)
        response = conn.read_response()
        assert (response.status, response.closes) == (200, True), "one at a time: every connection ends"
        conn.wait_closed()
    # The master's crash-loop window (10 s) passes without a crash; each worker notices at its next tick.
    assert wait_until(lambda: _every_worker_logged(server, CONCURRENT_AGAIN), 30.0), server.stderr_text()
    # More open connections than workers, each answered twice: the workers hold several at once again.
    with contextlib.ExitStack() as stack:
        conns = [stack.enter_context(Conn(server.port)) for _ in range(3)]
        for _ in range(2):
            for conn in conns:
                conn.send(GET_KEEP_ALIVE)
                response = conn.read_response()
                assert (response.status, response.closes) == (200, False)


CRASH_OR_ECHO = """
import os
import signal


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while (await receive())["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
    elif scope["type"] == "websocket":
        await receive()
        await send({"type": "websocket.accept"})
        while (message := await receive())["type"] == "websocket.receive":
            await send({"type": "websocket.send", "text": message["text"]})
    elif scope["path"] == "/crash":
        os.kill(os.getpid(), signal.SIGKILL)
    else:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
"""


def test_without_crash_loop_isolation_the_workers_keep_serving_concurrently(serve: ServerFactory) -> None:
    server = serve(APP, "-w", "2", "--no-crash-loop-isolation")
    wait_for_ready_workers(server, 2)
    for _ in range(CRASHES_TO_DECLARE):
        assert not exchange(server.port, CRASH).final_responses()
        wait_for_ready_workers(server, 2)
    assert server.wait_for_stderr("crash_loop_isolation is off"), server.stderr_text()
    assert exchange(server.port, GET_ROOT).final_responses()[0].status == 200
    assert not ONE_AT_A_TIME.search(server.stderr_text())


def test_while_the_pool_crash_loops_a_new_websocket_is_closed_with_1012_so_that_its_client_comes_back_later(
    serve: ServerFactory, tmp_path: Path
) -> None:
    (tmp_path / "crash_or_echo.py").write_text(CRASH_OR_ECHO)
    server = serve("crash_or_echo:app", "-w", "2", app_dir=tmp_path)
    wait_for_ready_workers(server, 2)
    with connect(f"ws://127.0.0.1:{server.port}/") as ws:
        ws.send("echo")
        assert ws.recv(timeout=5) == "echo"  # a WebSocket is served as usual before
    _declare_a_crash_loop(server)
    with connect(f"ws://127.0.0.1:{server.port}/") as ws, pytest.raises(ConnectionClosed) as closed:
        ws.recv(timeout=5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012


# The worker holding a WebSocket refuses to crash (409), so the crash loop is declared by the other one.
CRASH_UNLESS_HOLDING_A_WEBSOCKET = """
import os
import signal

open_websockets = 0


async def app(scope, receive, send):
    global open_websockets
    if scope["type"] == "lifespan":
        while (await receive())["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["type"] == "websocket":
        await receive()
        await send({"type": "websocket.accept"})
        open_websockets += 1
        try:
            while (message := await receive())["type"] == "websocket.receive":
                await send({"type": "websocket.send", "text": f"{os.getpid()} {message['text']}"})
        finally:
            open_websockets -= 1
        return
    if scope["path"] == "/crash" and not open_websockets:
        os.kill(os.getpid(), signal.SIGKILL)
    status = 409 if scope["path"] == "/crash" else 200
    await send({"type": "http.response.start", "status": status, "headers": []})
    await send({"type": "http.response.body", "body": str(os.getpid()).encode()})
"""


def test_a_websocket_open_before_the_crash_loop_stays_open_and_its_worker_keeps_serving_requests(
    serve: ServerFactory, tmp_path: Path
) -> None:
    (tmp_path / "crash_unless_ws.py").write_text(CRASH_UNLESS_HOLDING_A_WEBSOCKET)
    server = serve("crash_unless_ws:app", "-w", "2", app_dir=tmp_path)
    wait_for_ready_workers(server, 2)
    with connect(f"ws://127.0.0.1:{server.port}/") as ws:
        ws.send("hello")
        holder = int(ws.recv(timeout=5).split()[0])
        crashes = 0
        # Only connections the other worker accepts crash it, and a busy machine can give the holder many in a
        # row: keep asking for a while rather than a fixed number of times (the crashes must fall within 10 s).
        deadline = time.monotonic() + 8.0
        while crashes < CRASHES_TO_DECLARE and time.monotonic() < deadline:
            if not exchange(server.port, CRASH).final_responses():
                crashes += 1
                wait_for_ready_workers(server, 2)
        assert crashes == CRASHES_TO_DECLARE, server.stderr_text()
        assert wait_until(lambda: _every_worker_logged(server, ONE_AT_A_TIME), 10.0), server.stderr_text()
        # The session survived the switch to one connection at a time...
        ws.send("still there")
        assert ws.recv(timeout=5) == f"{holder} still there"
        # ...and does not keep its worker from answering others: both workers answer while it stays open.
        answered_by = {int(exchange(server.port, GET_ROOT).final_responses()[0].body) for _ in range(40)}
        assert holder in answered_by, f"the worker holding the WebSocket answered nothing: {answered_by}"
        ws.send("and after")
        assert ws.recv(timeout=5) == f"{holder} and after"


KILLED_AT_IMPORT = """
import os
import signal

os.kill(os.getpid(), signal.SIGKILL)  # a C extension that crashes while the app is imported
"""


def test_a_worker_that_dies_before_it_is_ready_is_still_restarted_with_back_off(
    serve: ServerFactory, tmp_path: Path
) -> None:
    (tmp_path / "dies_at_import.py").write_text(KILLED_AT_IMPORT)
    server = serve("dies_at_import:app", "-w", "2", app_dir=tmp_path)
    assert server.wait_for_stderr("worker failures in a row: next start in"), server.stderr_text()
    assert "Crash loop" not in server.stderr_text()
