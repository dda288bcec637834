"""A stop that reaches a worker while it still loads the app: TERM is not fatal there, the worker boots, answers
what waits in the listen queue for it, and exits cleanly; INT and QUIT still stop it fast."""

from __future__ import annotations

import signal
import socket
import time

from tests.integration.conftest import READ_TIMEOUT, ServerFactory, child_pids, parse_responses, read_to_eof, wait_until


def _queue_a_request(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=READ_TIMEOUT)
    sock.sendall(b"GET /queued HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    return sock


def test_term_while_the_app_loads_still_answers_the_queued_request_and_exits_cleanly(serve: ServerFactory) -> None:
    server = serve("tests.apps.slow_import:app", wait_ready=False)
    assert wait_until(server.accepts_connections, 10)
    assert wait_until(lambda: bool(child_pids(server.proc.pid)), 10)
    with _queue_a_request(server.port) as sock:
        time.sleep(0.3)  # the worker is importing the app (it sleeps 2 s at import)
        server.signal(signal.SIGTERM)
        data, closed = read_to_eof(sock, timeout=15)
    assert closed
    responses = parse_responses(data)
    assert [response.status for response in responses] == [200], server.stderr_text()
    assert server.wait(15) == 0, server.stderr_text()
    assert "killed by SIGTERM" not in server.stderr_text()


def test_quit_while_the_app_loads_stops_the_worker_fast_without_killing_it(serve: ServerFactory) -> None:
    server = serve("tests.apps.slow_import:app", wait_ready=False)
    assert wait_until(lambda: bool(child_pids(server.proc.pid)), 10)
    time.sleep(0.3)
    server.signal(signal.SIGQUIT)
    assert server.wait(15) == 0, server.stderr_text()
    assert "killed by SIGQUIT" not in server.stderr_text()
