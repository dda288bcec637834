"""The master never blocks on its own log output: with stderr a full pipe that nobody reads, it still aborts
and kills a worker whose event loop is stuck, and its lines come out once the pipe is read again."""

from __future__ import annotations

import contextlib
import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from tests.integration.conftest import REPO_ROOT, free_port, wait_until

APP = "tests.apps.master_apps:app"
PID_IN_BODY = re.compile(rb"pid=(\d+)")


class PipeReader:
    """Reads the server's stderr pipe while `reading` is set; keeps everything it read."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.data = bytearray()
        self.reading = threading.Event()
        self.done = threading.Event()
        self.parked = threading.Event()  # not reading, and will not until `reading` is set again
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.done.is_set():
            if not self.reading.is_set():
                self.parked.set()
                self.reading.wait(0.05)
                continue
            self.parked.clear()
            ready, _, _ = select.select([self.fd], [], [], 0.05)
            if ready:
                chunk = os.read(self.fd, 65536)
                if not chunk:
                    return
                self.data += chunk

    def text(self) -> str:
        return bytes(self.data).decode("utf-8", "replace")


@pytest.fixture
def stderr_pipe() -> Iterator[tuple[int, int]]:
    read_end, write_end = os.pipe()
    yield read_end, write_end
    for fd in (read_end, write_end):
        with contextlib.suppress(OSError):
            os.close(fd)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def _worker_pid(port: int) -> int | None:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as conn:
            conn.sendall(b"GET / HTTP/1.1\r\nHost: corral.test\r\nConnection: close\r\n\r\n")
            match = PID_IN_BODY.search(conn.recv(4096))
    except OSError:
        return None
    return int(match.group(1)) if match else None


def _fill(write_end: int) -> int:
    """Fill the pipe through a file description of our own (O_NONBLOCK on the shared one would change the
    server's); how many bytes it took."""
    fd = os.open(f"/proc/self/fd/{write_end}", os.O_WRONLY | os.O_NONBLOCK)
    total = 0
    try:
        while True:
            try:
                total += os.write(fd, b"#" * 4096)
            except BlockingIOError:
                return total
    finally:
        os.close(fd)


def test_the_master_kills_a_stuck_worker_while_its_stderr_is_a_full_pipe_nobody_reads(
    stderr_pipe: tuple[int, int],
) -> None:
    read_end, write_end = stderr_pipe
    port = free_port()
    command = [
        sys.executable, "-m", "corral", APP, "--bind", f"127.0.0.1:{port}", "--app-dir", str(REPO_ROOT),
        "-w", "1", "--timeout", "2",
    ]  # fmt: skip
    proc = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=write_end, stdin=subprocess.DEVNULL, cwd=REPO_ROOT,
        start_new_session=True,
    )  # fmt: skip
    reader = PipeReader(read_end)
    reader.reading.set()
    stuck = None
    try:
        assert wait_until(lambda: _worker_pid(port) is not None, 20), reader.text()
        worker = _worker_pid(port)
        assert worker is not None
        reader.reading.clear()  # from now on nobody reads the server's stderr
        assert reader.parked.wait(5)
        assert _fill(write_end) > 0
        stuck = socket.create_connection(("127.0.0.1", port), timeout=2)
        stuck.sendall(b"GET /stuck HTTP/1.1\r\nHost: corral.test\r\n\r\n")
        # The worker sleeps in its event loop for 30 s; the master must abort it after `timeout` (2 s) and kill
        # it after the grace for its traceback, which it cannot write either.
        assert wait_until(lambda: not _alive(worker), 20), "the master did not end the stuck worker"
        assert proc.poll() is None
        print(f"\nworker {worker} ended; what the pipe held when read again:")
        reader.reading.set()  # read again: the master's lines come out, none of them lost
        assert wait_until(lambda: f"Worker pid {worker} silent for" in reader.text(), 20), reader.text()[-2000:]
        assert wait_until(lambda: _worker_pid(port) not in (None, worker), 20), "no replacement serves"
    finally:
        if stuck is not None:
            stuck.close()
        reader.reading.set()
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        reader.done.set()
        reader.thread.join(5)
