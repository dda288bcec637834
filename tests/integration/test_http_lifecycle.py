"""The server process as an operator sees it: access log, graceful TERM, fast INT, and refusing to start."""

from __future__ import annotations

import re
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from tests.apps.behaviours import FIXED_BODY, startup_failure_message
from tests.integration.conftest import Conn, ServerFactory, exchange, wait_until

EXIT_APP_ERROR = 3
# Gunicorn's default access_log_format: '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s"'.
ACCESS_LINE = re.compile(
    r"127\.0\.0\.1 - - \[\d{2}/[A-Z][a-z]{2}/\d{4}:\d{2}:\d{2}:\d{2} [+-]\d{4}\] "
    r'"GET /fixed\?from=access-log HTTP/1\.1" 200 (?P<bytes>\d+) '
    r'"http://referrer\.example/page" "access-log-test/1\.0"'
)


def test_access_log_file_gets_a_line_in_gunicorns_default_format(serve: ServerFactory, tmp_path: Path) -> None:
    log_path = tmp_path / "access.log"
    server = serve("tests.apps.behaviours:app", "--access-logfile", str(log_path))
    request = (
        b"GET /fixed?from=access-log HTTP/1.1\r\nHost: example.com\r\n"
        b"Referer: http://referrer.example/page\r\nUser-Agent: access-log-test/1.0\r\nConnection: close\r\n\r\n"
    )
    (response,) = exchange(server.port, request).responses()
    assert response.body == FIXED_BODY

    def logged_line() -> re.Match[str] | None:
        text = log_path.read_text() if log_path.exists() else ""
        return next(filter(None, (ACCESS_LINE.fullmatch(line) for line in text.splitlines())), None)

    assert wait_until(logged_line, 10), f"no matching access log line in {log_path.read_text()!r}"
    match = logged_line()
    assert match is not None
    assert int(match["bytes"]) == len(FIXED_BODY)


def test_term_lets_the_request_in_flight_finish_then_exits_0(serve: ServerFactory, tmp_path: Path) -> None:
    server = serve("tests.apps.behaviours:app")
    marker = tmp_path / "in-flight"
    with Conn(server.port, timeout=30) as conn:
        conn.send(b"GET /sleep?seconds=1&marker=%s HTTP/1.1\r\nHost: example.com\r\n\r\n" % str(marker).encode())
        assert wait_until(marker.exists, 10), "the request never reached the app"
        server.signal(signal.SIGTERM)
        response = conn.read_response()
        assert response.status == 200
        assert response.body == b"slept\n"
        # Draining: the server tells the client this connection will not be reused, then closes it.
        assert response.closes
        assert conn.wait_closed(timeout=10) == b""
    assert server.wait(30) == 0, server.stderr_text()


def test_term_under_load_fails_no_request_in_flight(serve: ServerFactory, tmp_path: Path) -> None:
    """Many clients mid-request (some still uploading) when TERM arrives: every one gets its full answer."""
    server = serve("tests.apps.behaviours:app", "--graceful-timeout", "20")
    clients = 24
    term_sent = threading.Event()
    sleeper_markers = [tmp_path / f"started-{i}" for i in range(clients) if i % 3]
    results: dict[int, tuple[int, bytes] | BaseException] = {}

    uploads_started = threading.Semaphore(0)

    def slow_body() -> Iterator[bytes]:
        yield b"x" * 1000
        uploads_started.release()  # connected, head and first part sent: this request is in flight
        term_sent.wait(15)  # the body is still arriving when TERM comes: the request must still finish
        time.sleep(0.2)
        yield b"y" * 1000

    def client(index: int) -> None:
        try:
            with httpx.Client(timeout=30) as http:
                if index % 3 == 0:
                    response = http.post(f"{server.url}/upload-digest", content=slow_body())
                else:
                    marker = tmp_path / f"started-{index}"
                    response = http.get(f"{server.url}/sleep", params={"seconds": "1", "marker": str(marker)})
                results[index] = (response.status_code, response.content)
        except BaseException as exc:  # reported below, with the index
            results[index] = exc

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    assert wait_until(lambda: all(p.exists() for p in sleeper_markers), 15), "requests never reached the app"
    uploaders = len(range(0, clients, 3))
    assert all(uploads_started.acquire(timeout=15) for _ in range(uploaders)), "uploads never started"
    server.signal(signal.SIGTERM)
    term_sent.set()
    for thread in threads:
        thread.join(40)
    failures = {i: r for i, r in results.items() if isinstance(r, BaseException) or r[0] != 200}
    assert len(results) == clients
    assert failures == {}, server.stderr_text()
    for index, result in results.items():
        assert isinstance(result, tuple)
        expected = b"slept\n" if index % 3 else b'"length": 2000'
        assert expected in result[1]
    assert server.wait(30) == 0, server.stderr_text()


def test_term_with_nothing_in_flight_exits_0_and_stops_listening(serve: ServerFactory) -> None:
    server = serve("tests.apps.echo:app")
    with Conn(server.port) as idle:
        idle.send(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n")
        assert idle.read_response().status == 200
        server.signal(signal.SIGTERM)
        # An idle keep-alive connection is closed at once, not kept until its timeout.
        assert idle.wait_closed(timeout=10) == b""
    assert server.wait(30) == 0, server.stderr_text()
    assert not server.accepts_connections()


def test_int_exits_without_waiting_for_requests_in_flight(serve: ServerFactory, tmp_path: Path) -> None:
    server = serve("tests.apps.behaviours:app")
    marker = tmp_path / "held"
    with Conn(server.port) as conn:
        conn.send(b"GET /hold?marker=%s HTTP/1.1\r\nHost: example.com\r\n\r\n" % str(marker).encode())
        assert wait_until(marker.exists, 10), "the request never reached the app"
        server.signal(signal.SIGINT)
        # /hold waits a minute for its client; a fast shutdown must not wait for it.
        assert server.wait(10) is not None, "INT did not stop the server"


def test_lifespan_startup_failure_exits_3_with_the_apps_message(serve: ServerFactory) -> None:
    server = serve("tests.apps.behaviours:failing_lifespan_app", wait_ready=False)
    assert server.wait(30) == EXIT_APP_ERROR
    assert startup_failure_message in server.stderr_text()
    assert "failed to boot: lifespan startup failed" in server.stderr_text()


def test_lifespan_startup_exception_with_lifespan_on_exits_3(serve: ServerFactory) -> None:
    server = serve("tests.apps.behaviours:raising_lifespan_app", "--lifespan", "on", wait_ready=False)
    assert server.wait(30) == EXIT_APP_ERROR
    assert startup_failure_message in server.stderr_text()


def test_app_that_fails_to_import_exits_3_naming_the_error(serve: ServerFactory, tmp_path: Path) -> None:
    (tmp_path / "explodes_on_import.py").write_text('raise RuntimeError("import-time-boom")\n')
    server = serve("explodes_on_import:app", wait_ready=False, app_dir=tmp_path)
    assert server.wait(30) == EXIT_APP_ERROR
    assert "import-time-boom" in server.stderr_text()


def test_missing_app_module_exits_3(serve: ServerFactory, tmp_path: Path) -> None:
    server = serve("no_such_module_here:app", wait_ready=False, app_dir=tmp_path)
    assert server.wait(30) == EXIT_APP_ERROR
    assert "no_such_module_here" in server.stderr_text()


def test_lifespan_off_serves_an_app_whose_lifespan_would_fail(serve: ServerFactory) -> None:
    server = serve("tests.apps.behaviours:failing_lifespan_app", "--lifespan", "off")
    (response,) = exchange(server.port, b"GET /fixed HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").responses()
    assert response.body == FIXED_BODY
