"""Sending a range of a file on an HTTP/1.1 connection: the ASGI `http.response.zerocopysend` mechanics.

With zero copy (plain TCP, the `sendfile` setting on) the kernel copies the file straight from the page cache
to the socket with os.sendfile(). uvloop's transports have no `loop.sendfile()`, so the socket is written here,
beside the transport, which stays the owner of the connection. Two rules keep the two writers apart:

- sendfile() is called only while the transport's write buffer is empty, so bytes written before (the head, a
  chunk-size line, earlier body parts) are always on the wire first;
- when the socket is full (EAGAIN, or a partial send), the next block is read with os.pread() and written
  through the transport, and the sender waits for the connection to drain before it tries sendfile() again. The
  transport then watches the socket for us: back-pressure, `send_timeout` and a client that disconnects work as
  for any other response, and no more than one block is ever held in memory.

Without zero copy (TLS, `--no-sendfile`, no socket to write to) the whole range goes by pread() and the transport.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from typing import Any

from corral.http.errors import ClientDisconnected
from corral.http.flow import WriteFlowControl

__all__ = ["BLOCK", "ZEROCOPYSEND", "FileRange", "file_range", "send_range", "socket_fd"]

# The ASGI extension (and message type) this module serves.
ZEROCOPYSEND = "http.response.zerocopysend"
# What one os.pread() reads when the bytes go through the transport: the most a file response holds in memory.
BLOCK = 64 * 1024


@dataclass(slots=True)
class FileRange:
    """The bytes of one `http.response.zerocopysend` message: `count` bytes of `fd` from `offset`, of which
    `sent` are on their way to the client (kept up to date, so that a disconnect midway counts what went out).
    `position_of` is the app's file object (or descriptor) whose position follows the send when the message
    gave no offset (ASGI: the read starts at the file's current position); None when an offset was given."""

    fd: int
    offset: int
    count: int
    position_of: Any = None
    sent: int = 0

    def advance_position(self) -> None:
        """Leave the app's file positioned after what was sent, as a read() would have."""
        owner = self.position_of
        if owner is None:
            return
        if hasattr(owner, "seek"):
            owner.seek(self.offset + self.sent)
        else:
            os.lseek(self.fd, self.offset + self.sent, os.SEEK_SET)


def file_range(file: Any, offset: Any, count: Any) -> FileRange:
    """The range a zerocopysend message asks for. `count` None means to the end of the file as it is now."""
    fd = file if type(file) is int else file.fileno()
    status = os.fstat(fd)
    if not stat.S_ISREG(status.st_mode):
        raise RuntimeError("http.response.zerocopysend needs a regular file")
    position_of = None
    if offset is None:
        position_of = file
        offset = file.tell() if hasattr(file, "tell") else os.lseek(fd, 0, os.SEEK_CUR)
    elif type(offset) is not int or offset < 0:
        raise RuntimeError(f"http.response.zerocopysend offset must be an int >= 0, got {offset!r}")
    if count is None:
        count = max(0, status.st_size - offset)
    elif type(count) is not int or count < 0:
        raise RuntimeError(f"http.response.zerocopysend count must be an int >= 0, got {count!r}")
    return FileRange(fd, offset, count, position_of)


def socket_fd(transport: Any) -> int | None:
    """The descriptor of the transport's socket, or None when there is none to write to."""
    sock = transport.get_extra_info("socket")
    return sock.fileno() if sock is not None else None


async def send_range(conn: WriteFlowControl, span: FileRange, sock_fd: int | None) -> None:
    """Write `span` on `conn`, with sendfile() when `sock_fd` is given. Afterwards `span.sent` is below
    `span.count` only if the file ended first. Raises ClientDisconnected if the connection goes meanwhile."""
    if sock_fd is None:
        await _send_copied(conn, span)
    else:
        await _send_zero_copy(conn, span, sock_fd)


async def _send_zero_copy(conn: WriteFlowControl, span: FileRange, sock_fd: int) -> None:
    transport = conn.transport
    low, high = transport.get_write_buffer_limits()
    # A high-water mark of 0 makes the transport pause us whenever anything is buffered and resume us once its
    # buffer is empty: drain() then waits for exactly the moment sendfile() may write again.
    transport.set_write_buffer_limits(high=0, low=0)
    try:
        while span.sent < span.count:
            if conn.writing_paused:
                await conn.drain()
            if transport.is_closing():  # checked right before the call: the descriptor is still the client's
                raise ClientDisconnected("client disconnected during a file response")
            wanted = span.count - span.sent
            done = _sendfile(transport, sock_fd, span.fd, span.offset + span.sent, wanted)
            if done == 0:
                break  # the file ended before the range did
            if done > 0:
                span.sent += done
                if done == wanted:
                    continue
            # The socket is full: one block through the transport, which waits for the socket and resumes us.
            if not _write_block(transport, span):
                break
    finally:
        if not transport.is_closing():
            transport.set_write_buffer_limits(high=high, low=low)


def _sendfile(transport: Any, sock_fd: int, fd: int, offset: int, count: int) -> int:
    """os.sendfile() on the non-blocking socket: the bytes sent, 0 at the end of the file, -1 if the socket is
    full. A socket error means the client is gone: the transport is aborted so the connection learns it too."""
    try:
        return os.sendfile(sock_fd, fd, offset, count)
    except BlockingIOError:
        return -1
    except OSError as exc:
        transport.abort()
        raise ClientDisconnected(f"client disconnected during a file response: {exc}") from None


async def _send_copied(conn: WriteFlowControl, span: FileRange) -> None:
    transport = conn.transport
    while span.sent < span.count:
        if transport.is_closing():
            raise ClientDisconnected("client disconnected during a file response")
        if not _write_block(transport, span):
            break
        if conn.writing_paused:
            await conn.drain()


def _write_block(transport: Any, span: FileRange) -> bool:
    """The next block of the range through the transport; False at the end of the file."""
    block = os.pread(span.fd, min(BLOCK, span.count - span.sent), span.offset + span.sent)
    if not block:
        return False
    transport.write(block)
    span.sent += len(block)
    return True
