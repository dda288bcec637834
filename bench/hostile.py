"""Hostile-client benchmark: peak RSS growth of one serving process under clients that try to balloon its memory.

Run with bench/.venv's Python (`bench/run --setup-only` installs it); see the "Hostile clients" section of
README.md:
    bench/.venv/bin/python bench/hostile.py [--servers corral,uvicorn] [--scenarios deflate1,pipeline,...]
Each scenario starts a fresh server (corral with one worker, or uvicorn with uvloop + httptools) serving
bench/hostile_app.py, resets the serving process's peak RSS, runs one hostile client from this process and
prints how far the peak rose above the idle RSS. Every client is bounded: a send that makes no progress for
--stall seconds means the server stopped reading (TCP pushed back), and the client moves on.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

__all__ = ["main"]

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
OUT_DIR = BENCH_DIR / "out"
VENV_BIN = Path(sys.executable).parent
APP = "bench.hostile_app:app"
MIB = 1024 * 1024
SERVERS = ("corral", "uvicorn")
SCENARIOS = ("deflate1", "deflate3", "pipeline", "pipeline3", "fragments", "idle")
START_TIMEOUT = 30.0
SETTLE = 1.0  # after a client stops sending: time for the server to parse what it already read


# --------------------------------------------------------------------------- servers

def server_command(name: str, port: int) -> list[str]:
    if name == "corral":
        return [str(VENV_BIN / "corral"), APP, "--bind", f"127.0.0.1:{port}", "--app-dir", str(REPO_ROOT),
                "--workers", "1", "--log-level", "warning"]  # fmt: skip
    return [str(VENV_BIN / "uvicorn"), APP, "--host", "127.0.0.1", "--port", str(port), "--app-dir", str(REPO_ROOT),
            "--loop", "uvloop", "--http", "httptools", "--ws", "websockets", "--no-access-log",
            "--log-level", "warning"]  # fmt: skip


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                text = (entry / "stat").read_text()
                if int(text[text.rindex(")") + 2:].split()[1]) == pid:
                    found.append(int(entry.name))
    return found


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


@dataclasses.dataclass
class Server:
    name: str
    process: subprocess.Popen[bytes]
    port: int
    pid: int  # the serving process: corral's worker, uvicorn itself


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
            return sock.recv(16).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


@contextlib.contextmanager
def running_server(name: str) -> Iterator[Server]:
    port = free_port()
    OUT_DIR.mkdir(exist_ok=True)
    log_path = OUT_DIR / f"hostile-{name}.stderr"
    with log_path.open("ab") as log:
        process = subprocess.Popen(server_command(name, port), cwd=REPO_ROOT, stdin=subprocess.DEVNULL,
                                   stdout=log, stderr=log, start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not _answers(port):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start; see {log_path}")
            time.sleep(0.2)
        pid = process.pid
        if name == "corral":
            # One worker (and no admin child by default): the master's biggest child serves.
            pid = max(children(process.pid), key=lambda p: status_kib(p, "VmRSS"))
        yield Server(name, process, port, pid)
    finally:
        with contextlib.suppress(OSError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(OSError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


class PeakMeter:
    """Peak RSS of one process from a reset point: VmHWM (reset through clear_refs), sampled VmRSS as a fallback."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        time.sleep(0.5)
        self.base = status_kib(pid, "VmRSS")
        try:
            Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets VmHWM to the current RSS
            self.hwm_reset = True
        except OSError:
            self.hwm_reset = False
        self.sampled = self.base
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def _sample(self) -> None:
        while not self.stop.wait(0.05):
            with contextlib.suppress(OSError):
                self.sampled = max(self.sampled, status_kib(self.pid, "VmRSS"))

    def growth_mib(self) -> float:
        peak = self.sampled
        if self.hwm_reset:
            with contextlib.suppress(OSError):
                peak = max(peak, status_kib(self.pid, "VmHWM"))
        return (peak - self.base) / 1024

    def now_mib(self) -> float:
        return (status_kib(self.pid, "VmRSS") - self.base) / 1024

    def close(self) -> None:
        self.stop.set()
        self.thread.join()


# --------------------------------------------------------------------------- clients

def send_until_stalled(sock: socket.socket, chunks: Iterator[bytes], stall: float) -> tuple[int, bool]:
    """Send every chunk; stop when one makes no progress for `stall` seconds. (bytes sent, pushed back?)"""
    sock.settimeout(stall)
    sent = 0
    for chunk in chunks:
        view = memoryview(chunk)
        while view:
            try:
                n = sock.send(view)
            except TimeoutError:
                return sent, True
            except OSError:
                return sent, False  # closed by the server
            sent += n
            view = view[n:]
    return sent, False


def ws_connect(port: int, deflate: bool) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10.0)
    key = base64.b64encode(os.urandom(16)).decode()
    extension = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n" if deflate else ""
    sock.sendall((f"GET /ws HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{extension}\r\n").encode())  # fmt: skip
    head = b""
    while b"\r\n\r\n" not in head:
        data = sock.recv(4096)
        if not data:
            raise RuntimeError("WebSocket handshake: connection closed")
        head += data
    if not head.startswith(b"HTTP/1.1 101"):
        raise RuntimeError(f"WebSocket handshake refused: {head[:60]!r}")
    if deflate and b"permessage-deflate" not in head.lower():
        raise RuntimeError("the server did not accept permessage-deflate")
    return sock


def ws_frame(first: int, payload: bytes) -> bytes:
    """A client frame, masked with the all-zero key (valid, and the payload goes out as is)."""
    length = len(payload)
    if length < 126:
        header = bytes((first, 0x80 | length))
    elif length < 65536:
        header = bytes((first, 0x80 | 126)) + length.to_bytes(2, "big")
    else:
        header = bytes((first, 0x80 | 127)) + length.to_bytes(8, "big")
    return header + b"\0\0\0\0" + payload


def deflate_bomb(message_mib: int) -> bytes:
    """One permessage-deflate binary message of `message_mib` MiB of zeros, compressed on its own."""
    compressor = zlib.compressobj(wbits=-15)
    data = compressor.compress(bytes(message_mib * MIB)) + compressor.flush(zlib.Z_SYNC_FLUSH)
    return ws_frame(0x80 | 0x40 | 0x2, data[:-4])  # FIN, RSV1 (compressed), binary; without 00 00 ff ff


@dataclasses.dataclass
class Result:
    growth_mib: float
    note: str


def scenario_deflate(server: Server, args: argparse.Namespace, connections: int) -> Result:
    frame = deflate_bomb(args.message_mib)
    meter = PeakMeter(server.pid)
    socks = [ws_connect(server.port, deflate=True) for _ in range(connections)]
    outcomes: list[tuple[int, bool]] = [(0, False)] * connections

    def flood(i: int) -> None:
        outcomes[i] = send_until_stalled(socks[i], iter([frame] * args.messages), args.stall)

    threads = [threading.Thread(target=flood, args=(i,)) for i in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    time.sleep(SETTLE)
    growth = meter.growth_mib()
    meter.close()
    for sock in socks:
        sock.close()
    sent = sum(n for n, _ in outcomes) // len(frame)
    pushed = sum(1 for _, p in outcomes if p)
    return Result(growth, f"{sent}/{args.messages * connections} msgs sent, {pushed} conn pushed back")


def scenario_pipeline(server: Server, args: argparse.Namespace, rounds: int) -> Result:
    request = b"GET /4k HTTP/1.1\r\nHost: bench\r\n\r\n"
    batch = request * 1000
    meter = PeakMeter(server.pid)
    notes = []
    for _ in range(rounds):
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            sent, pushed = send_until_stalled(sock, iter([batch] * (args.requests // 1000)), args.stall)
            time.sleep(SETTLE)
            notes.append(f"{sent // len(request)} sent{' (pushed back)' if pushed else ''}, "
                         f"peak +{meter.growth_mib():.0f}")  # fmt: skip
        time.sleep(SETTLE)
    growth = meter.growth_mib()
    retained = meter.now_mib()
    meter.close()
    return Result(growth, "; ".join(notes) + f"; kept after close +{retained:.0f} MiB")


def scenario_fragments(server: Server, args: argparse.Namespace) -> Result:
    piece = ws_frame(0x0, b"x")  # a continuation frame carrying one byte
    meter = PeakMeter(server.pid)
    sock = ws_connect(server.port, deflate=False)
    per_chunk = 100_000
    chunks = [ws_frame(0x2, b"x")]  # the first fragment of a binary message, FIN clear
    full, rest = divmod(args.fragments - 2, per_chunk)
    chunks += [piece * per_chunk] * full + [piece * rest]
    chunks.append(ws_frame(0x80, b"x"))
    sent, pushed = send_until_stalled(sock, iter(chunks), args.stall)
    time.sleep(SETTLE)
    growth = meter.growth_mib()
    meter.close()
    sock.close()
    return Result(growth, f"{sent // len(piece)} fragments sent{' (pushed back)' if pushed else ''}")


async def _idle_clients(port: int, count: int, fresh: int) -> str:
    request = b"GET /4k HTTP/1.1\r\nHost: bench\r\n\r\n"
    opening = asyncio.Semaphore(100)
    idle: list[asyncio.StreamWriter] = []
    failed = 0

    async def one_request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> int:
        writer.write(request)
        status = int((await reader.readline()).split()[1])
        length = 0
        while (line := await reader.readline()) not in (b"\r\n", b""):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        await reader.readexactly(length)
        return status

    async def idle_client() -> None:
        nonlocal failed
        async with opening:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                if await one_request(reader, writer) == 200:
                    idle.append(writer)
                    return
                writer.close()
            except (OSError, ValueError, IndexError, asyncio.IncompleteReadError):
                pass
            failed += 1

    await asyncio.wait_for(asyncio.gather(*(idle_client() for _ in range(count))), 60)
    statuses: dict[str, int] = {}
    for _ in range(fresh):
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            status = str(await asyncio.wait_for(one_request(reader, writer), 5))
            writer.close()
        except (OSError, ValueError, IndexError, asyncio.IncompleteReadError, TimeoutError):
            status = "error"
        statuses[status] = statuses.get(status, 0) + 1
    still_open = len(idle)
    for writer in idle:
        writer.close()
    answered = ", ".join(f"{n}x {s}" for s, n in sorted(statuses.items()))
    return f"{still_open} idle served, {failed} not; fresh clients: {answered}"


def scenario_idle(server: Server, args: argparse.Namespace) -> Result:
    meter = PeakMeter(server.pid)
    note = asyncio.run(_idle_clients(server.port, args.idle, args.fresh))
    growth = meter.growth_mib()
    meter.close()
    return Result(growth, note)


SCENARIO_RUNNERS: dict[str, tuple[str, Callable[[Server, argparse.Namespace], Result]]] = {
    "deflate1": ("deflate bomb, 1 conn", lambda s, a: scenario_deflate(s, a, 1)),
    "deflate3": ("deflate bomb, 3 conns", lambda s, a: scenario_deflate(s, a, 3)),
    "pipeline": ("pipelining flood", lambda s, a: scenario_pipeline(s, a, 1)),
    "pipeline3": ("pipelining flood x3", lambda s, a: scenario_pipeline(s, a, 3)),
    "fragments": ("fragment flood", scenario_fragments),
    "idle": ("idle keep-alive conns", scenario_idle),
}


# --------------------------------------------------------------------------- main

def raise_fd_limit(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        print(f"hostile bench: open files limited to {soft}; the idle scenario needs {wanted}", file=sys.stderr)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--servers", default=",".join(SERVERS))
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--messages", type=int, default=40, help="deflate bomb: messages per connection")
    parser.add_argument("--message-mib", type=int, default=15, help="deflate bomb: MiB of zeros per message")
    parser.add_argument("--requests", type=int, default=100_000, help="pipelining flood: GETs per round")
    parser.add_argument("--fragments", type=int, default=4_000_000, help="fragment flood: one-byte fragments")
    parser.add_argument("--idle", type=int, default=5000, help="idle keep-alive connections")
    parser.add_argument("--fresh", type=int, default=20, help="fresh clients tried once the idle ones are open")
    parser.add_argument("--stall", type=float, default=3.0, help="seconds without progress that count as pushed back")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    raise_fd_limit(args.idle + 1024)
    servers = [s for s in args.servers.split(",") if s]
    scenarios = [s for s in args.scenarios.split(",") if s]
    results: dict[tuple[str, str], Result] = {}
    for scenario in scenarios:
        title, run = SCENARIO_RUNNERS[scenario]
        for name in servers:
            with running_server(name) as server:
                result = results[scenario, name] = run(server, args)
            print(f"{title:24} {name:8} peak RSS +{result.growth_mib:7.1f} MiB  ({result.note})", flush=True)
    print()
    header = f"{'scenario':24}" + "".join(f"{name + ' MiB':>14}" for name in servers)
    if len(servers) == 2:
        header += f"{servers[0] + '/' + servers[1]:>18}"
    print(header)
    for scenario in scenarios:
        row = f"{SCENARIO_RUNNERS[scenario][0]:24}"
        growths = [results[scenario, name].growth_mib for name in servers]
        row += "".join(f"{g:14.1f}" for g in growths)
        if len(growths) == 2:
            row += f"{growths[0] / max(growths[1], 0.1):18.2f}"
        print(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
