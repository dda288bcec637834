"""The master's log handler on a pipe: never blocks, holds a bounded queue, drops and counts beyond it, and says
how many lines were lost once the pipe is read again."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator

import pytest

from corral.master.log_output import MAX_PENDING, NonBlockingHandler, guard_master_log


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    read_end, write_end = os.pipe()
    yield read_end, write_end
    for fd in (read_end, write_end):
        with contextlib.suppress(OSError):
            os.close(fd)


def _handler(write_end: int) -> NonBlockingHandler:
    stream = os.fdopen(os.dup(write_end), "w")
    inner = logging.StreamHandler(stream)
    inner.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    fd = os.open(f"/proc/self/fd/{write_end}", os.O_WRONLY | os.O_NONBLOCK)
    return NonBlockingHandler(inner, fd)


def _record(message: str) -> logging.LogRecord:
    return logging.LogRecord("corral.error", logging.ERROR, __file__, 1, message, (), None)


def _drain(read_end: int) -> bytes:
    os.set_blocking(read_end, False)
    data = bytearray()
    with contextlib.suppress(BlockingIOError):
        while chunk := os.read(read_end, 1 << 16):
            data += chunk
    return bytes(data)


def test_a_full_pipe_never_blocks_the_master_and_lost_lines_are_counted_then_reported(
    pipe: tuple[int, int],
) -> None:
    read_end, write_end = pipe
    handler = _handler(write_end)
    line = "x" * 1000
    lines = 4 * (MAX_PENDING + 65536) // 1000  # the pipe's 64 KiB, the queue, and as much again beyond both
    for _ in range(lines):
        handler.handle(_record(line))  # would block forever on a blocking pipe nobody reads
    assert 0 < len(handler.pending) <= MAX_PENDING
    assert handler.dropped == handler.dropped_total > 0
    dropped = handler.dropped
    read = bytearray()
    for _ in range(4):  # the reader catches up: what waited is written, then the notice
        read += _drain(read_end)
        handler.flush_pending()
    text = read.decode()
    assert text.count(f"ERROR {line}\n") == lines - dropped
    assert f"WARNING {dropped} lines of the master's log were dropped" in text
    assert handler.pending == bytearray() and handler.dropped == 0
    handler.close()


def test_the_shared_stderr_stays_blocking_for_the_workers(pipe: tuple[int, int]) -> None:
    read_end, write_end = pipe
    logger = logging.getLogger("corral.test.guard")
    stream = os.fdopen(os.dup(write_end), "w")
    inner = logging.StreamHandler(stream)
    logger.addHandler(inner)
    try:
        assert guard_master_log(("corral.test.guard",)) == 1
        (guard,) = logger.handlers
        assert isinstance(guard, NonBlockingHandler) and guard.inner is inner
        assert os.get_blocking(stream.fileno())  # the description the workers and the app share
        assert not os.get_blocking(guard.fd)  # the master's own
        logger.warning("hello")
        assert _drain(read_end).endswith(b"hello\n")
    finally:
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
            handler.close()


def test_a_stream_socket_that_is_not_read_never_blocks_the_master_either() -> None:
    # journald's stdout/stderr stream is a unix stream socket, not a pipe.
    ours, theirs = socket.socketpair()
    logger = logging.getLogger("corral.test.journal")
    logger.addHandler(logging.StreamHandler(os.fdopen(os.dup(theirs.fileno()), "w")))
    logger.propagate = False
    try:
        assert guard_master_log(("corral.test.journal",)) == 1
        (guard,) = logger.handlers
        assert isinstance(guard, NonBlockingHandler) and guard.sock is not None
        assert theirs.getblocking()  # the shared description is left as it was
        for _ in range(2000):
            logger.warning("y" * 1000)  # far beyond what the socket buffers hold
        assert guard.dropped > 0
        ours.setblocking(False)
        received = bytearray()
        for _ in range(200):
            with contextlib.suppress(BlockingIOError):
                while chunk := ours.recv(1 << 16):
                    received += chunk
            guard.flush_pending()
            if b"were dropped" in received:
                break
        assert b"lines of the master's log were dropped" in received
    finally:
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
            handler.close()
        ours.close()
        theirs.close()
