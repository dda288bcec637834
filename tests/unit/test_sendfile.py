"""The file-sending mechanics (http/sendfile.py) on real TCP sockets over 127.0.0.1, with uvloop and asyncio:
sendfile() is what carries the file, after whatever the transport already holds; a full socket sends the next
block through the transport; without a socket it is all read and written in blocks; a client that goes is
noticed; and the range a zerocopysend message names is read from it as the ASGI extension says."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvloop

from corral.http import sendfile
from corral.http.errors import ClientDisconnected
from corral.http.flow import WriteFlowControl
from corral.http.sendfile import BLOCK, FileRange, file_range, send_range, socket_fd

FILE_SIZE = 3 * 1024 * 1024 + 123
HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % FILE_SIZE


class Connection(WriteFlowControl):
    """The least a sender needs of a connection: a transport and write back-pressure. Records the largest
    amount the transport ever held, to show that a file is never buffered whole."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.writing_paused = False
        self.reading_paused = False
        self.drain_waiters: list[asyncio.Future[None]] = []
        self.write_blocked_since = 0.0
        self.lost = False
        self.most_buffered = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def pause_writing(self) -> None:
        super().pause_writing()
        self.most_buffered = max(self.most_buffered, self.transport.get_write_buffer_size())

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._release_writers()

    def _writes_abandoned(self) -> bool:
        return self.lost


class Calls:
    """Counts the calls of one os function made through corral.http.sendfile."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
        self.count = 0
        real = getattr(os, name)

        def counted(*args: Any) -> Any:
            self.count += 1
            return real(*args)

        monkeypatch.setattr(sendfile.os, name, counted)


@pytest.fixture(params=["uvloop", "asyncio"])
def run(request: pytest.FixtureRequest) -> Callable[[Coroutine[Any, Any, Any]], Any]:
    factory = uvloop.new_event_loop if request.param == "uvloop" else asyncio.new_event_loop

    def runner(coro: Coroutine[Any, Any, Any]) -> Any:
        loop = factory()
        try:
            return loop.run_until_complete(coro)
        finally:
            loop.close()

    return runner


@pytest.fixture
def data_file(tmp_path: Path) -> Iterator[tuple[int, bytes]]:
    data = os.urandom(FILE_SIZE)
    path = tmp_path / "data.bin"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    yield fd, data
    os.close(fd)


class Client:
    """The client end of a TCP connection, read in a thread: `chunk` bytes at a time, `stop_after` bytes in all
    (then it closes), waiting for `go` before reading anything (a client that reads nothing yet)."""

    def __init__(self, sock: socket.socket, chunk: int = 1 << 20, stop_after: int | None = None) -> None:
        self.sock = sock
        self.chunk = chunk
        self.stop_after = stop_after
        self.go = threading.Event()
        self.received = bytearray()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        self.go.wait(30)
        with self.sock:
            while self.stop_after is None or len(self.received) < self.stop_after:
                data = self.sock.recv(self.chunk)
                if not data:
                    return
                self.received += data

    def done(self) -> bytes:
        self.go.set()
        self.thread.join(30)
        return bytes(self.received)


async def connect(small_buffers: bool = False) -> tuple[Connection, socket.socket]:
    """A connection whose server end is served by the running loop, and the client's socket. Small buffers
    (no autotuning) make the socket full after a few dozen KiB, as it is for a slow client far away."""
    loop = asyncio.get_running_loop()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        accepted, _ = listener.accept()
    if small_buffers:
        accepted.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32 * 1024)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
    conn = Connection(loop)
    await loop.connect_accepted_socket(lambda: conn, accepted)
    return conn, client


async def send_and_close(conn: Connection, span: FileRange, zero_copy: bool = True) -> None:
    await send_range(conn, span, socket_fd(conn.transport) if zero_copy else None)
    conn.transport.close()


def test_the_file_goes_out_with_sendfile_after_what_the_transport_already_holds(
    run: Callable[..., Any], data_file: tuple[int, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    fd, data = data_file
    sendfiles = Calls(monkeypatch, "sendfile")

    async def main() -> bytes:
        conn, sock = await connect()
        client = Client(sock)
        conn.transport.write(HEAD)
        span = FileRange(fd, 0, FILE_SIZE)
        await send_and_close(conn, span)
        assert span.sent == FILE_SIZE
        return await asyncio.to_thread(client.done)

    assert run(main()) == HEAD + data
    assert sendfiles.count >= 1


def test_a_full_socket_sends_one_block_through_the_transport_then_sendfile_resumes(
    run: Callable[..., Any], data_file: tuple[int, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    fd, data = data_file
    sendfiles, preads = Calls(monkeypatch, "sendfile"), Calls(monkeypatch, "pread")

    async def main() -> tuple[bytes, Connection]:
        conn, sock = await connect(small_buffers=True)
        client = Client(sock, chunk=16 * 1024)  # a slow reader: small reads, starting late
        conn.transport.write(HEAD)
        sending = asyncio.ensure_future(send_and_close(conn, FileRange(fd, 1000, FILE_SIZE - 1000)))
        received = await asyncio.to_thread(client.done)
        await sending
        return received, conn

    received, conn = run(main())
    assert received == HEAD + data[1000:]
    assert sendfiles.count >= 2 and preads.count >= 1  # sendfile() again after each block
    assert conn.most_buffered <= BLOCK + len(HEAD)  # never more than a block held in memory


def test_without_a_socket_the_file_is_read_and_written_in_blocks(
    run: Callable[..., Any], data_file: tuple[int, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    fd, data = data_file
    sendfiles = Calls(monkeypatch, "sendfile")

    async def main() -> bytes:
        conn, sock = await connect()
        client = Client(sock)
        await send_and_close(conn, FileRange(fd, 0, FILE_SIZE), zero_copy=False)
        return await asyncio.to_thread(client.done)

    assert run(main()) == data
    assert sendfiles.count == 0


def test_a_file_shorter_than_its_range_ends_the_send_with_what_it_had(
    run: Callable[..., Any], data_file: tuple[int, bytes]
) -> None:
    fd, data = data_file

    async def main() -> tuple[bytes, int]:
        conn, sock = await connect()
        client = Client(sock)
        span = FileRange(fd, FILE_SIZE - 10, 100)
        await send_and_close(conn, span)
        return await asyncio.to_thread(client.done), span.sent

    assert run(main()) == (data[-10:], 10)


def test_a_client_that_leaves_midway_ends_the_send_with_client_disconnected(
    run: Callable[..., Any], data_file: tuple[int, bytes]
) -> None:
    fd, _ = data_file

    async def main() -> tuple[int, bool]:
        conn, sock = await connect(small_buffers=True)  # far less than the file fits in the two buffers
        client = Client(sock, chunk=16 * 1024, stop_after=64 * 1024)
        client.go.set()
        span = FileRange(fd, 0, FILE_SIZE)
        with pytest.raises(ClientDisconnected):
            await send_range(conn, span, socket_fd(conn.transport))
        await asyncio.to_thread(client.done)
        return span.sent, conn.transport.is_closing()

    sent, closing = run(main())
    assert 0 < sent < FILE_SIZE
    assert closing


# ------------------------------------------------------------------------------ the message's range


def test_without_an_offset_the_range_starts_at_the_file_position_and_leaves_it_after_what_was_sent(
    tmp_path: Path,
) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"0123456789")
    with path.open("rb") as file:
        file.read(3)
        span = file_range(file, None, 4)
        assert (span.offset, span.count) == (3, 4)
        span.sent = 4
        span.advance_position()
        assert file.read() == b"789"


def test_without_a_count_the_range_runs_to_the_end_of_the_file(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"0123456789")
    with path.open("rb") as file:
        assert file_range(file.fileno(), 4, None).count == 6
        assert file_range(file, 20, None).count == 0


@pytest.mark.parametrize(("offset", "count"), [(-1, None), (0, -5), ("1", None), (0, 1.5)])
def test_an_invalid_offset_or_count_is_refused(tmp_path: Path, offset: Any, count: Any) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"data")
    with path.open("rb") as file, pytest.raises(RuntimeError, match="zerocopysend"):
        file_range(file, offset, count)


def test_a_file_that_is_not_a_regular_file_is_refused() -> None:
    read_end, write_end = os.pipe()
    try:
        with pytest.raises(RuntimeError, match="regular file"):
            file_range(read_end, 0, 10)
    finally:
        os.close(read_end)
        os.close(write_end)
