"""WebSocket benchmark: echo round-trips per second and 1 MiB message throughput, corral against uvicorn.

Run with bench/.venv's Python (`bench/run --setup-only` installs it); see the WebSocket section of README.md:
    bench/.venv/bin/python bench/websocket.py [--duration 10] [--connections 50] [--client raw|websockets]
Both servers serve tests/autobahn/echo_app.py with one worker, pinned to one core; the client runs in this
process, pinned to another.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import http.client
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from pathlib import Path

__all__ = ["main"]

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
OUT_DIR = BENCH_DIR / "out"
VENV_BIN = Path(sys.executable).parent
APP = "tests.autobahn.echo_app:app"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
MIB = 1024 * 1024
SMALL_MESSAGE = "Hello, World! " * 2  # 28 bytes of text, one round-trip at a time per connection
SERVERS = ("corral", "uvicorn")
TESTS = ("roundtrip", "mib")
TARGET_RATIO = 1.2
START_TIMEOUT = 30.0


# --------------------------------------------------------------------------- servers

def server_command(name: str, port: int, deflate: bool, uvicorn_ws: str) -> list[str]:
    """argv for one server with one worker; compression flags only when it must be off."""
    if name == "corral":
        argv = [str(VENV_BIN / "corral"), APP, "--bind", f"127.0.0.1:{port}", "--app-dir", str(REPO_ROOT),
                "--workers", "1", "--log-level", "warning"]  # fmt: skip
        return argv if deflate else [*argv, "--ws-per-message-deflate", "false"]
    argv = [str(VENV_BIN / "uvicorn"), APP, "--host", "127.0.0.1", "--port", str(port), "--app-dir", str(REPO_ROOT),
            "--ws", uvicorn_ws, "--loop", "uvloop", "--http", "httptools", "--no-access-log",
            "--log-level", "warning"]  # fmt: skip
    return argv if deflate else [*argv, "--ws-per-message-deflate", "false"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _stat_fields(pid: int) -> list[str]:
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2:].split()


def process_tree(root: int) -> list[int]:
    """root and its living descendants (corral's master and worker; uvicorn's one process)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                children.setdefault(int(_stat_fields(int(entry.name))[1]), []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of these processes (all threads), in seconds; a process that is gone counts 0."""
    ticks = 0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = _stat_fields(pid)
            ticks += int(fields[11]) + int(fields[12])
    return ticks / CLOCK_TICKS


def core_busy_seconds(cpu: int | None) -> float:
    """Time the core spent on anything but idle and iowait, from /proc/stat (0 when nothing is pinned)."""
    if cpu is None:
        return 0.0
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{cpu} "):
            ticks = [int(field) for field in line.split()[1:9]]  # user nice system idle iowait irq softirq steal
            return (sum(ticks) - ticks[3] - ticks[4]) / CLOCK_TICKS
    return 0.0


def wait_for_quiet(args: argparse.Namespace) -> None:
    """Wait (at most --wait-quiet seconds) until both cores are under 10% busy for a whole second."""
    if args.wait_quiet <= 0 or args.server_cpu is None:
        return
    cores = (args.server_cpu, args.client_cpu)
    deadline = time.monotonic() + args.wait_quiet
    busiest = 1.0
    while time.monotonic() < deadline:
        before = [core_busy_seconds(cpu) for cpu in cores]
        time.sleep(1.0)
        busiest = max(core_busy_seconds(cpu) - was for cpu, was in zip(cores, before, strict=True))
        if busiest < 0.10:
            return
    print(f"websocket bench: cores still {100 * busiest:.0f}% busy with other work; measuring anyway",
          file=sys.stderr, flush=True)  # fmt: skip


@dataclasses.dataclass
class Server:
    name: str
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    def log_tail(self, lines: int = 10) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


def _answers_http(port: int) -> bool:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=1.0)
    try:
        connection.request("GET", "/")
        return connection.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        connection.close()


@contextlib.contextmanager
def running_server(name: str, args: argparse.Namespace, deflate: bool) -> Iterator[Server]:
    """Start the server in its own session pinned to the server core; stop its group (TERM, then KILL) after."""
    port = free_port()
    log_path = OUT_DIR / f"websocket-{name}.stderr"
    argv = server_command(name, port, deflate, args.uvicorn_ws)
    if args.server_cpu is not None and shutil.which("taskset"):
        argv = ["taskset", "-c", str(args.server_cpu), *argv]
    with log_path.open("wb") as log:
        process = subprocess.Popen(argv, cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                   start_new_session=True)  # fmt: skip
    server = Server(name, process, port, log_path)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not _answers_http(port):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start:\n{server.log_tail()}")
            time.sleep(0.2)
        yield server
    finally:
        _stop(process)


def _stop(process: subprocess.Popen[bytes]) -> None:
    # The server leads its own session, so its process group is exactly the server and what it forked.
    with contextlib.suppress(OSError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(OSError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


# --------------------------------------------------------------------------- clients

@dataclasses.dataclass
class Tally:
    """What the connections of one client did; latencies are kept only while `recording`."""

    messages: int = 0
    payload_bytes: int = 0
    recording: bool = False
    latencies: list[float] = dataclasses.field(default_factory=list)
    stop: bool = False

    def done(self, started: float, size: int) -> None:
        self.messages += 1
        self.payload_bytes += size
        if self.recording:
            self.latencies.append(time.perf_counter() - started)


def _masked_frame(opcode: int, payload: bytes) -> bytes:
    """One final client frame. The mask key is fixed: the server unmasks it all the same, and the client
    does not spend time masking per message (the point is to load the server, not the client)."""
    key = b"\x37\xfa\x21\x3d"
    length = len(payload)
    if length < 126:
        header = bytes([0x80 | opcode, 0x80 | length])
    elif length < 1 << 16:
        header = bytes([0x80 | opcode, 0x80 | 126]) + length.to_bytes(2, "big")
    else:
        header = bytes([0x80 | opcode, 0x80 | 127]) + length.to_bytes(8, "big")
    repeated = (key * (length // 4 + 1))[:length]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(length, "big")
    return header + key + masked


class RawEchoClient(asyncio.Protocol):
    """One WebSocket connection over a bare asyncio Protocol: the opening handshake, then one prebuilt frame
    in flight at a time, the next sent as soon as the whole echo has arrived. Frames from the server are
    counted, not copied; a ping is answered."""

    def __init__(self, frame: bytes, message_size: int, tally: Tally, port: int) -> None:
        self.frame = frame
        self.message_size = message_size
        self.tally = tally
        self.port = port
        self.transport: asyncio.Transport | None = None
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._handshake = bytearray()
        self._header = b""
        self._remaining = 0
        self._fin_opcode = 0
        self._control = bytearray()
        self._sent_at = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports do not subclass asyncio's
        key = base64.b64encode(os.urandom(16))
        transport.write(
            b"GET / HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % (self.port, key)
        )

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(f"closed during the handshake: {exc}"))
        if not self.closed.done():
            self.closed.set_result(None)

    def send_next(self) -> None:
        assert self.transport is not None
        if self.tally.stop:
            self.transport.write(b"\x88\x82\x00\x00\x00\x00\x03\xe8")  # close 1000, zero mask key
            return
        self._sent_at = time.perf_counter()
        self.transport.write(self.frame)

    def data_received(self, data: bytes) -> None:
        if not self.opened.done():
            data = self._finish_handshake(data)
            if not data:
                return
        self._frames_received(data)

    def _finish_handshake(self, data: bytes) -> bytes:
        self._handshake += data
        end = self._handshake.find(b"\r\n\r\n")
        if end < 0:
            return b""
        head, rest = bytes(self._handshake[:end]), bytes(self._handshake[end + 4:])
        if not head.startswith(b"HTTP/1.1 101"):
            self.opened.set_exception(ConnectionError(f"handshake refused: {head[:60]!r}"))
            assert self.transport is not None
            self.transport.close()
            return b""
        self.opened.set_result(None)
        return rest

    def _frames_received(self, data: bytes) -> None:
        position, size = 0, len(data)
        while position < size:
            if self._remaining:
                take = min(self._remaining, size - position)
                if self._fin_opcode & 0x08:
                    self._control += data[position:position + take]
                position += take
                self._remaining -= take
                if not self._remaining:
                    self._frame_done()
                continue
            if self._header:  # a header split across reads: join it with what follows
                data = self._header + data[position:]
                position, size = 0, len(data)
                self._header = b""
            header_length = _header_length(data, position)
            if header_length is None:
                self._header = data[position:]
                return
            self._fin_opcode = data[position]
            self._remaining = _payload_length(data, position)
            position += header_length
            if not self._remaining:
                self._frame_done()

    def _frame_done(self) -> None:
        opcode = self._fin_opcode & 0x0F
        if opcode == 0x9:  # ping: answer with the same payload
            assert self.transport is not None
            self.transport.write(_masked_frame(0xA, bytes(self._control)))
        elif opcode == 0x8:
            assert self.transport is not None
            self.transport.close()
        elif opcode < 0x8 and self._fin_opcode & 0x80:
            self.tally.done(self._sent_at, self.message_size)
            self.send_next()
        self._control.clear()


def _header_length(data: bytes, position: int) -> int | None:
    """Length of the server frame header at position (servers do not mask), or None if it is incomplete."""
    if len(data) - position < 2:
        return None
    marker = data[position + 1] & 0x7F
    length = 2 + (2 if marker == 126 else 8 if marker == 127 else 0)
    return length if len(data) - position >= length else None


def _payload_length(data: bytes, position: int) -> int:
    marker = data[position + 1] & 0x7F
    if marker == 126:
        return int.from_bytes(data[position + 2:position + 4], "big")
    if marker == 127:
        return int.from_bytes(data[position + 2:position + 10], "big")
    return marker


async def raw_clients(port: int, connections: int, payload: bytes | str, tally: Tally,
                      clock: Callable[[], Awaitable[None]]) -> None:  # fmt: skip
    """Open the connections, start them all, let `clock()` run the warm-up and the measurement, close them."""
    loop = asyncio.get_running_loop()
    binary = isinstance(payload, bytes)
    data = payload if isinstance(payload, bytes) else payload.encode()
    frame = _masked_frame(0x2 if binary else 0x1, data)
    clients = []
    for _ in range(connections):
        _, client = await loop.create_connection(lambda: RawEchoClient(frame, len(data), tally, port),
                                                 "127.0.0.1", port)  # fmt: skip
        await client.opened
        clients.append(client)
    for client in clients:
        client.send_next()
    await clock()
    tally.stop = True
    await asyncio.wait_for(asyncio.gather(*(client.closed for client in clients)), timeout=30)


async def websockets_clients(port: int, connections: int, payload: bytes | str, tally: Tally,
                             clock: Callable[[], Awaitable[None]], deflate: bool) -> None:  # fmt: skip
    """The same load with the `websockets` asyncio client: send, await the echo, repeat."""
    from websockets.asyncio.client import connect

    size = len(payload if isinstance(payload, bytes) else payload.encode())

    async def one(ready: asyncio.Event) -> None:
        async with connect(f"ws://127.0.0.1:{port}/", compression="deflate" if deflate else None,
                           max_size=None, ping_interval=None) as ws:  # fmt: skip
            await ready.wait()
            while not tally.stop:
                started = time.perf_counter()
                await ws.send(payload)
                await ws.recv()
                tally.done(started, size)

    ready = asyncio.Event()
    tasks = [asyncio.create_task(one(ready)) for _ in range(connections)]
    await asyncio.sleep(0.5)  # let the handshakes finish before the clock starts
    ready.set()
    await clock()
    tally.stop = True
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=30)


# --------------------------------------------------------------------------- one measurement

@dataclasses.dataclass
class Measurement:
    server: str
    test: str
    status: str = "ok"
    rate: float | None = None  # round-trips/s or MiB/s
    p50_ms: float | None = None
    p99_ms: float | None = None
    server_cpu_us: float | None = None  # per round-trip or per MiB
    server_cpu_pct: float | None = None
    client_cpu_pct: float | None = None
    other_on_server_core_pct: float | None = None  # anything but the server on its core: a disturbed run
    rounds: list[float] = dataclasses.field(default_factory=list)


def _percentile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def measure(server: Server, test: str, args: argparse.Namespace) -> Measurement:
    """Warm up, then count echoed messages for args.duration seconds, with the server's and our CPU time."""
    tally = Tally()
    pids = process_tree(server.process.pid)
    window: dict[str, float] = {}
    connections = args.connections if test == "roundtrip" else args.mib_connections
    payload: bytes | str = SMALL_MESSAGE if test == "roundtrip" else os.urandom(MIB)

    async def clock() -> None:
        await asyncio.sleep(args.warmup)
        tally.recording = True
        window.update(start=time.perf_counter(), messages=tally.messages, bytes=tally.payload_bytes,
                      server=cpu_seconds(pids), client=time.process_time(),
                      core=core_busy_seconds(args.server_cpu))  # fmt: skip
        await asyncio.sleep(args.duration)
        tally.recording = False
        window.update(end=time.perf_counter(), messages_end=tally.messages, bytes_end=tally.payload_bytes,
                      server_end=cpu_seconds(pids), client_end=time.process_time(),
                      core_end=core_busy_seconds(args.server_cpu))  # fmt: skip

    async def drive() -> None:
        if args.client == "raw":
            await raw_clients(server.port, connections, payload, tally, clock)
        else:
            await websockets_clients(server.port, connections, payload, tally, clock, args.deflate)

    _run(drive())
    elapsed = window["end"] - window["start"]
    messages = window["messages_end"] - window["messages"]
    server_cpu = window["server_end"] - window["server"]
    if messages <= 0:
        return Measurement(server.name, test, status="no messages echoed")
    mib = (window["bytes_end"] - window["bytes"]) / MIB
    return Measurement(
        server.name, test,
        rate=messages / elapsed if test == "roundtrip" else mib / elapsed,
        p50_ms=_ms(_percentile(tally.latencies, 0.50)),
        p99_ms=_ms(_percentile(tally.latencies, 0.99)),
        server_cpu_us=server_cpu / (messages if test == "roundtrip" else mib) * 1e6,
        server_cpu_pct=100 * server_cpu / elapsed,
        client_cpu_pct=100 * (window["client_end"] - window["client"]) / elapsed,
        other_on_server_core_pct=(None if args.server_cpu is None
                                  else max(0.0, 100 * (window["core_end"] - window["core"] - server_cpu) / elapsed)),
    )  # fmt: skip


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


def _run(coroutine: Coroutine[None, None, None]) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(coroutine)
        return
    uvloop.run(coroutine)


def run_one(name: str, test: str, args: argparse.Namespace) -> Measurement:
    # The MiB test runs with permessage-deflate off in the server; the round-trip test keeps the server's
    # default, and compression is negotiated only when the client offers it (--deflate, websockets client).
    deflate = test == "roundtrip"
    try:
        with running_server(name, args, deflate) as server:
            return measure(server, test, args)
    except (RuntimeError, OSError, asyncio.TimeoutError) as error:
        return Measurement(name, test, status=f"failed: {str(error).splitlines()[0][:80]}")


def median_of(rounds: list[Measurement]) -> Measurement:
    """The round with the median rate (its own latencies and CPU figures), with every round's rate kept."""
    good = [m for m in rounds if m.rate is not None]
    if not good:
        return rounds[0]
    chosen = sorted(good, key=lambda m: m.rate or 0.0)[len(good) // 2]
    chosen.rounds = [m.rate or 0.0 for m in good]
    return chosen


# --------------------------------------------------------------------------- report

def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def report(results: dict[tuple[str, str], Measurement], args: argparse.Namespace) -> list[str]:
    lines = [
        f"WebSocket echo, {args.client} client, {args.duration:g} s per run after {args.warmup:g} s warm-up, "
        f"{args.repeat} round(s), one worker per server",
        "",
        "| test | server | result | p50 ms | p99 ms | server CPU µs/unit | server CPU % | client CPU % "
        "| other CPU % on server core | vs uvicorn |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for test in args.tests:
        unit = "round-trips/s" if test == "roundtrip" else "MiB/s"
        label = (f"echo round-trips, {args.connections} conns, {len(SMALL_MESSAGE)} B text" if test == "roundtrip"
                 else f"1 MiB binary echo, {args.mib_connections} conns, no deflate")  # fmt: skip
        base = results.get(("uvicorn", test))
        for name in args.servers:
            m = results[(name, test)]
            if m.rate is None:
                lines.append(f"| {label} | {name} | {m.status} | | | | | | | |")
                continue
            ratio = f"{m.rate / base.rate:.2f}x" if base and base.rate and name != "uvicorn" else ""
            lines.append(
                f"| {label} | {name} | {m.rate:,.0f} {unit} | {_fmt(m.p50_ms, '.2f')} | {_fmt(m.p99_ms, '.2f')} "
                f"| {_fmt(m.server_cpu_us, '.1f')} | {_fmt(m.server_cpu_pct, '.0f')} "
                f"| {_fmt(m.client_cpu_pct, '.0f')} | {_fmt(m.other_on_server_core_pct, '.0f')} | {ratio} |"
            )
    lines.append("")
    lines += targets(results, args)
    return lines


def targets(results: dict[tuple[str, str], Measurement], args: argparse.Namespace) -> list[str]:
    if not {"corral", "uvicorn"} <= set(args.servers):
        return []
    lines = []
    for test in args.tests:
        corral, uvicorn = results[("corral", test)], results[("uvicorn", test)]
        if corral.rate is None or uvicorn.rate is None:
            lines.append(f"target {test}: n/a (a server failed)")
            continue
        ratio = corral.rate / uvicorn.rate
        verdict = "PASS" if ratio >= TARGET_RATIO else "FAIL"
        cpu = (uvicorn.server_cpu_us or 0) / (corral.server_cpu_us or 1)
        lines.append(f"target {test}: corral {ratio:.2f}x uvicorn (>= {TARGET_RATIO}x): {verdict}; "
                     f"server CPU per unit: uvicorn uses {cpu:.2f}x corral's")  # fmt: skip
    return lines


# --------------------------------------------------------------------------- main

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per run (default 10)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before measuring (default 2)")
    parser.add_argument("--connections", type=int, default=50, help="round-trip test connections (default 50)")
    parser.add_argument("--mib-connections", type=int, default=4,
                        help="1 MiB test connections, one message in flight each (default 4)")
    parser.add_argument("--client", choices=("raw", "websockets"), default="raw",
                        help="raw: prebuilt frames on a bare asyncio protocol (default); websockets: its "
                             "asyncio client (slower: it can be the bottleneck, see README.md)")
    parser.add_argument("--deflate", action="store_true",
                        help="websockets client only: offer permessage-deflate in the round-trip test")
    parser.add_argument("--tests", default=",".join(TESTS), help=f"comma-separated: {','.join(TESTS)}")
    parser.add_argument("--only", default=",".join(SERVERS), help=f"comma-separated: {','.join(SERVERS)}")
    parser.add_argument("--repeat", type=int, default=1, help="rounds over all servers; the median is shown")
    parser.add_argument("--uvicorn-ws", default="websockets",
                        help="uvicorn's --ws implementation (default websockets)")
    parser.add_argument("--wait-quiet", type=float, default=0.0,
                        help="before each run, wait up to this many seconds for both cores to be under 10%% busy")
    parser.add_argument("--server-cpu", type=int, default=0, help="core the server is pinned to (default 0)")
    parser.add_argument("--client-cpu", type=int, default=1, help="core this client is pinned to (default 1)")
    args = parser.parse_args(argv)
    args.tests = [t for t in args.tests.split(",") if t]
    args.servers = [s for s in args.only.split(",") if s]
    if not set(args.tests) <= set(TESTS) or not set(args.servers) <= set(SERVERS):
        parser.error(f"--tests takes {','.join(TESTS)}; --only takes {','.join(SERVERS)}")
    if args.deflate and args.client != "websockets":
        parser.error("--deflate needs --client websockets (the raw client does not compress)")
    if args.duration <= 0 or args.warmup < 0 or args.repeat < 1 or args.connections < 1 or args.mib_connections < 1:
        parser.error("--duration, --repeat and the connection counts must be positive, --warmup not negative")
    if (os.cpu_count() or 1) < 2:
        args.server_cpu = args.client_cpu = None
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    OUT_DIR.mkdir(exist_ok=True)
    if args.client_cpu is not None:
        os.sched_setaffinity(0, {args.client_cpu})
    rounds: dict[tuple[str, str], list[Measurement]] = {}
    for round_number in range(args.repeat):
        for test in args.tests:
            for name in args.servers:
                print(f"websocket bench: round {round_number + 1}/{args.repeat}, {test}, {name}", file=sys.stderr,
                      flush=True)  # fmt: skip
                wait_for_quiet(args)
                rounds.setdefault((name, test), []).append(run_one(name, test, args))
    results = {key: median_of(value) for key, value in rounds.items()}
    lines = report(results, args)
    print("\n".join(lines))
    record = {
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpus": os.cpu_count(), "loadavg_after": os.getloadavg()},
        "args": {key: value for key, value in vars(args).items()},
        "results": [dataclasses.asdict(m) for m in results.values()],
        "median_rates": {f"{k[0]}/{k[1]}": statistics.median(m.rate or 0 for m in v) for k, v in rounds.items()},
    }  # fmt: skip
    (OUT_DIR / "websocket-last-run.json").write_text(json.dumps(record, indent=2) + "\n")
    (OUT_DIR / "websocket-last-run.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
