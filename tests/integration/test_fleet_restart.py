"""A stopping instance behind a load balancer: a connection made while it drains must be refused (the balancer
then tries another instance, safely, since nothing was sent), never accepted and then reset after the request
was sent (a POST lost: the balancer cannot know whether it ran)."""

from __future__ import annotations

import signal
import socket
import threading
import time

from tests.integration.conftest import STOP_TIMEOUT, ServerFactory, read_to_eof, wait_until

SLOW = b"GET /sleep?seconds=3 HTTP/1.1\r\nHost: corral.test\r\n\r\n"
POST = b"POST /hello HTTP/1.1\r\nHost: corral.test\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"


def _connect_and_post(port: int) -> str:
    """What happens to a POST on a new connection: refused, answered, or reset after it was sent."""
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    except ConnectionRefusedError:
        return "refused"
    with sock:
        try:
            sock.sendall(POST)
            data, _ = read_to_eof(sock, timeout=10)
        except ConnectionResetError:
            return "reset after sending"
    return "answered" if data.startswith(b"HTTP/1.1 ") else "closed after sending"


def test_a_connection_made_while_an_instance_drains_is_refused_or_answered(serve: ServerFactory) -> None:
    server = serve("tests.apps.master_apps:app")
    slow = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    with slow:
        slow.sendall(SLOW)  # keeps the worker draining for a few seconds after TERM
        time.sleep(0.3)
        server.signal(signal.SIGTERM)
        assert server.wait_for_stderr("shutting down gracefully"), server.stderr_text()
        time.sleep(0.3)  # the drain has begun: the queued connections were taken, new ones are not served
        outcomes: list[str] = []
        posts = [threading.Thread(target=lambda: outcomes.append(_connect_and_post(server.port))) for _ in range(3)]
        for post in posts:
            post.start()
        answer, _ = read_to_eof(slow, timeout=10)
        for post in posts:
            post.join(15)
    assert answer.startswith(b"HTTP/1.1 200"), answer
    assert wait_until(lambda: server.proc.poll() is not None, STOP_TIMEOUT)
    assert len(outcomes) == 3 and set(outcomes) <= {"refused", "answered"}, outcomes
