"""How the pre-fork master starts, refuses to start, and stops: exit statuses and what the operator reads."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from corral import __version__
from corral.compiled import describe_build
from tests.apps.master_apps import BROKEN_APP_SOURCE
from tests.integration.conftest import (
    REPO_ROOT,
    Conn,
    ServerFactory,
    free_port,
    process_group_gone,
    wait_for_ready_workers,
    wait_until,
)

APP = "tests.apps.master_apps:app"
EXIT_OK = 0
EXIT_CONFIG = 2
EXIT_APP = 3
# Bounds on how long a failing start may take: long enough for a loaded test machine, short enough to catch a
# master that keeps restarting workers forever.
FAILED_START_TIMEOUT = 20.0


def test_term_with_a_request_in_flight_on_two_workers_finishes_it_and_exits_0(
    serve: ServerFactory, tmp_path: Path
) -> None:
    server = serve(APP, "-w", "2")
    wait_for_ready_workers(server, 2)
    marker = tmp_path / "in-flight"
    with Conn(server.port, timeout=30) as conn:
        conn.send(b"GET /sleep?seconds=1&marker=%s HTTP/1.1\r\nHost: corral.test\r\n\r\n" % str(marker).encode())
        assert wait_until(marker.exists, 10), "the request never reached the app"
        server.signal(signal.SIGTERM)
        response = conn.read_response()
        assert response.status == 200
        assert response.body.startswith(b"slept pid=")
        assert response.closes
    assert server.wait(30) == EXIT_OK, server.stderr_text()
    assert wait_until(lambda: process_group_gone(server.proc.pid), 10), "a worker outlived the master"


def test_the_master_names_corrals_version_and_build_when_it_starts(serve: ServerFactory) -> None:
    server = serve(APP)
    wait_for_ready_workers(server, 1)
    expected = f"corral {__version__} ({describe_build()})"  # this interpreter's import path: the server's too
    assert expected in server.stderr_text()


def test_address_in_use_exits_2_with_one_line_naming_the_address(serve: ServerFactory) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", free_port()))
        holder.listen()
        busy = f"127.0.0.1:{holder.getsockname()[1]}"
        server = serve(APP, "-w", "2", "--bind", busy, wait_ready=False)
        assert server.wait(FAILED_START_TIMEOUT) == EXIT_CONFIG
    lines = server.stderr_text().strip().splitlines()
    assert len(lines) == 1, lines
    assert busy in lines[0]
    assert "in use" in lines[0]


def test_app_import_error_with_two_workers_exits_3_without_a_crash_loop(serve: ServerFactory, tmp_path: Path) -> None:
    (tmp_path / "broken_at_import.py").write_text(BROKEN_APP_SOURCE)
    server = serve("broken_at_import:app", "-w", "2", wait_ready=False, app_dir=tmp_path)
    assert server.wait(FAILED_START_TIMEOUT) == EXIT_APP, server.stderr_text()
    log = server.stderr_text()
    assert "this deploy is broken at import time" in log
    assert "failed to boot: the app could not be imported" in log
    # Each of the two workers tried once: nobody restarted them.
    assert log.count("Worker could not load the app") <= 2, log
    assert wait_until(lambda: process_group_gone(server.proc.pid), 10), "a worker outlived the master"


def test_lifespan_startup_that_hangs_is_killed_after_boot_timeout_and_exits_3(serve: ServerFactory) -> None:
    server = serve("tests.apps.master_apps:hanging_lifespan_app", "-w", "1", "--boot-timeout", "2", wait_ready=False)
    assert server.wait(FAILED_START_TIMEOUT) == EXIT_APP, server.stderr_text()
    log = server.stderr_text()
    assert "did not boot within boot_timeout (2 s)" in log
    assert "Application startup complete" not in log
    assert wait_until(lambda: process_group_gone(server.proc.pid), 10), "a worker outlived the master"


def test_connections_queued_in_the_kernel_at_shutdown_are_answered(serve: ServerFactory) -> None:
    """Gunicorn resets these (its issue 3397); corral's draining worker accepts and answers them."""
    server = serve(APP, "-w", "1")
    (worker,) = wait_for_ready_workers(server, 1)
    os.kill(worker, signal.SIGSTOP)  # the worker cannot accept: new connections wait in the backlog
    queued: list[socket.socket] = []
    try:
        for _ in range(5):
            conn = socket.create_connection((server.host, server.port), timeout=10)
            conn.sendall(b"GET / HTTP/1.1\r\nHost: corral.test\r\n\r\n")
            queued.append(conn)
        server.signal(signal.SIGTERM)
        assert wait_until(lambda: "Received TERM" in server.stderr_text(), 10)
    finally:
        os.kill(worker, signal.SIGCONT)
    for conn in queued:
        with conn:
            reply = b""
            while chunk := conn.recv(4096):
                reply += chunk
            # Answered, then closed by the drain (whether the answer came just before or during it).
            assert reply.startswith(b"HTTP/1.1 200 "), reply[:80]
    assert server.wait(30) == EXIT_OK, server.stderr_text()


def test_drain_delay_keeps_serving_new_connections_after_term(serve: ServerFactory) -> None:
    server = serve(APP, "-w", "1", "--drain-delay", "2")
    wait_for_ready_workers(server, 1)
    server.signal(signal.SIGTERM)
    assert wait_until(lambda: "drain_delay" in server.stderr_text(), 10)
    # Load balancers still send traffic for a moment after a pod is told to stop: it must be served.
    with socket.create_connection((server.host, server.port), timeout=10) as conn:
        conn.sendall(b"GET / HTTP/1.1\r\nHost: corral.test\r\nConnection: close\r\n\r\n")
        assert conn.recv(4096).startswith(b"HTTP/1.1 200 ")
    assert server.wait(30) == EXIT_OK


def test_inherited_descriptor_is_served_with_fd_bind(tmp_path: Path) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    fd = listener.fileno()
    proc = subprocess.Popen(
        [sys.executable, "-m", "corral", APP, "--bind", f"fd://{fd}", "-w", "1"],
        cwd=REPO_ROOT, pass_fds=(fd,), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        port = listener.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=15) as conn:
            conn.sendall(b"GET / HTTP/1.1\r\nHost: corral.test\r\nConnection: close\r\n\r\n")
            conn.settimeout(15)
            assert conn.recv(4096).startswith(b"HTTP/1.1 200 ")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == EXIT_OK
        listener.close()
