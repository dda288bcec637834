"""Integration harness: run `python -m corral` as a real process on 127.0.0.1 and talk to it over sockets.

Gives the `serve` fixture factories (function, module and session scope), raw-socket helpers and a small
strict HTTP/1.1 response parser that copes with pipelined responses, chunked bodies and HEAD; for the pre-fork
master, the workers of a server (from /proc and its log) and a steady client load.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

__all__ = [
    "REPO_ROOT",
    "Conn",
    "Exchange",
    "Outcome",
    "RequestLoad",
    "Response",
    "ResponseParseError",
    "Server",
    "child_pids",
    "cpu_seconds",
    "exchange",
    "free_port",
    "logged_ready_pids",
    "parse_responses",
    "process_group_gone",
    "raw_request",
    "read_to_eof",
    "ready_workers",
    "refused",
    "wait_for_ready_workers",
    "wait_until",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT = 15.0
WORKERLESS_READY_AFTER = 1.0  # seconds: how long to look for a worker of a server whose workers die at once
STOP_TIMEOUT = 10.0
READ_TIMEOUT = 5.0


def wait_until(predicate: Callable[[], object], timeout: float, interval: float = 0.02) -> bool:
    """Poll `predicate` until it is truthy or `timeout` seconds pass; bounded in time and count."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / interval) + 2):
        if predicate():
            return True
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    return bool(predicate())


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# --------------------------------------------------------------------------------------------------
# Server processes


@dataclass
class Server:
    """One running `python -m corral` process bound to 127.0.0.1:port."""

    app: str
    args: tuple[str, ...]
    port: int
    proc: subprocess.Popen[bytes]
    stderr_path: Path
    stdout_path: Path
    host: str = "127.0.0.1"
    returncode: int | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stderr_text(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def stdout_text(self) -> str:
        return self.stdout_path.read_text(encoding="utf-8", errors="replace")

    def wait_for_stderr(self, text: str, timeout: float = 10.0) -> bool:
        return wait_until(lambda: text in self.stderr_text(), timeout, interval=0.05)

    def accepts_connections(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def signal(self, signum: int) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signum)

    def wait(self, timeout: float) -> int | None:
        """Wait up to `timeout` seconds for the process to exit; its exit status, or None if still running."""
        try:
            self.returncode = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        return self.returncode

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """TERM (graceful), then KILL the process group we created if it overstays `timeout`."""
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
            if self.wait(timeout) is None:
                # The server runs in its own session (pgid == pid), so this reaches any worker it forked.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.wait(timeout)
        self.returncode = self.proc.returncode
        return self.returncode


def _spawn(app: str, args: Sequence[str], log_dir: Path, app_dir: Path = REPO_ROOT) -> Server:
    port = free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    stem = f"corral-{port}-{time.monotonic_ns()}"
    stderr_path = log_dir / f"{stem}.stderr"
    stdout_path = log_dir / f"{stem}.stdout"
    # One worker unless the test asks for more or gives a config file (whose own `workers` must count): the
    # default ("auto") follows the machine's CPUs, and a test's expectations (connection caps, which worker
    # answers) must not.
    asks = any(arg in ("-w", "--workers", "-c", "--config") or arg.startswith("--workers=") for arg in args)
    workers = [] if asks else ["-w", "1"]
    command = [
        sys.executable, "-m", "corral", app,
        "--bind", f"127.0.0.1:{port}",
        "--app-dir", str(app_dir),
        *workers,
        *args,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with stderr_path.open("wb") as err, stdout_path.open("wb") as out:
        proc = subprocess.Popen(
            command, stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=REPO_ROOT, env=env,
            start_new_session=True,
        )  # fmt: skip
    return Server(app, tuple(args), port, proc, stderr_path, stdout_path)


def _wait_ready(server: Server) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    accepting_since = 0.0
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(
                f"corral exited with {server.proc.returncode} before accepting connections:\n" + server.stderr_text()
            )
        if accepting_since or server.accepts_connections():
            accepting_since = accepting_since or time.monotonic()
            # The master listens before it forks: a worker must exist too, or a test that looks at the workers
            # straight away (child_pids) would race with their start. Workers that die as they start (tests
            # of that) may never be seen: then the port is enough after a while.
            if child_pids(server.proc.pid) or time.monotonic() - accepting_since > WORKERLESS_READY_AFTER:
                return
        time.sleep(0.02 if accepting_since else 0.05)
    server.stop()
    raise RuntimeError(f"corral did not accept connections within {READY_TIMEOUT}s:\n{server.stderr_text()}")


class ServerFactory:
    """Starts servers on demand and stops every one of them at teardown."""

    def __init__(self, log_dir: Path) -> None:
        self._log_dir = log_dir
        self._servers: list[Server] = []

    def __call__(self, app: str, *args: str, wait_ready: bool = True, app_dir: Path = REPO_ROOT) -> Server:
        """Start `corral APP --bind 127.0.0.1:<free port> --app-dir DIR *args`; wait until it accepts."""
        server = _spawn(app, args, self._log_dir, app_dir)
        self._servers.append(server)
        if wait_ready:
            _wait_ready(server)
        return server

    def stop_all(self) -> None:
        for server in self._servers:
            server.stop()


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[ServerFactory]:
    """`serve(app, *args) -> Server`, stopped at the end of the test."""
    factory = ServerFactory(tmp_path / "servers")
    yield factory
    factory.stop_all()


@pytest.fixture(scope="module")
def serve_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerFactory]:
    """Like `serve`, but the servers live for the whole test module."""
    factory = ServerFactory(tmp_path_factory.mktemp("servers"))
    yield factory
    factory.stop_all()


@pytest.fixture(scope="session")
def serve_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerFactory]:
    """Like `serve`, but the servers live for the whole session (one per xdist worker)."""
    factory = ServerFactory(tmp_path_factory.mktemp("servers"))
    yield factory
    factory.stop_all()


@pytest.fixture(scope="session")
def echo_server(serve_session: ServerFactory) -> Server:
    """The echo app on a default-config server, shared by every module."""
    return serve_session("tests.apps.echo:app")


@pytest.fixture(scope="session")
def behaviour_server(serve_session: ServerFactory) -> Server:
    """The misbehaving apps on a default-config server, shared by every module."""
    return serve_session("tests.apps.behaviours:app")


# --------------------------------------------------------------------------------------------------
# A small strict HTTP/1.1 response parser


class ResponseParseError(AssertionError):
    """The server sent bytes that are not a well-formed HTTP/1.1 response."""


_STATUS_LINE = re.compile(rb"HTTP/1\.[01] ([1-9][0-9]{2}) ([\t \x21-\x7e\x80-\xff]*)")
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_FIELD_VALUE = re.compile(rb"[\t \x21-\x7e\x80-\xff]*")
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]+)(;[^\r\n]*)?")


@dataclass
class Response:
    status: int
    reason: bytes
    version: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    chunked: bool = False
    trailers: list[tuple[bytes, bytes]] = field(default_factory=list)
    raw_head: bytes = b""

    def __repr__(self) -> str:
        return f"<Response {self.status} body={self.body[:100]!r}>"

    def header_values(self, name: bytes | str) -> list[bytes]:
        wanted = (name.encode() if isinstance(name, str) else name).lower()
        return [value for key, value in self.headers if key.lower() == wanted]

    def header(self, name: bytes | str) -> bytes | None:
        """The single value of `name` (None if absent); several lines of it fail the test."""
        values = self.header_values(name)
        if len(values) > 1:
            raise ResponseParseError(f"{name!r} sent {len(values)} times: {values!r}")
        return values[0] if values else None

    def connection_tokens(self) -> set[bytes]:
        return {
            token.strip().lower()
            for value in self.header_values(b"connection")
            for token in value.split(b",")
            if token.strip()
        }

    @property
    def closes(self) -> bool:
        return b"close" in self.connection_tokens()

    @property
    def is_interim(self) -> bool:
        return 100 <= self.status < 200


class _Incomplete(Exception):
    """More bytes are needed."""


def _split_line(data: bytes, start: int) -> tuple[bytes, int]:
    end = data.find(b"\r\n", start)
    if end < 0:
        if b"\n" in data[start:]:
            raise ResponseParseError(f"bare LF in response near {data[start : start + 80]!r}")
        raise _Incomplete
    line = data[start:end]
    if b"\n" in line or b"\r" in line:
        raise ResponseParseError(f"bare CR or LF in response line {line!r}")
    return line, end + 2


def _parse_fields(data: bytes, pos: int) -> tuple[list[tuple[bytes, bytes]], int]:
    fields: list[tuple[bytes, bytes]] = []
    for _ in range(10_000):
        line, pos = _split_line(data, pos)
        if not line:
            return fields, pos
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.fullmatch(name):
            raise ResponseParseError(f"malformed header line {line!r}")
        value = value.strip(b" \t")
        if not _FIELD_VALUE.fullmatch(value):
            raise ResponseParseError(f"control character in header value {line!r}")
        fields.append((name, value))
    raise ResponseParseError("too many header lines")


def _parse_chunked(data: bytes, pos: int) -> tuple[bytes, list[tuple[bytes, bytes]], int]:
    body = bytearray()
    for _ in range(10_000_000):
        line, pos = _split_line(data, pos)
        match = _CHUNK_SIZE.fullmatch(line)
        if not match:
            raise ResponseParseError(f"bad chunk size line {line!r}")
        size = int(match.group(1), 16)
        if size == 0:
            trailers, pos = _parse_fields(data, pos)
            return bytes(body), trailers, pos
        if len(data) < pos + size + 2:
            raise _Incomplete
        body += data[pos : pos + size]
        if data[pos + size : pos + size + 2] != b"\r\n":
            raise ResponseParseError("chunk data not followed by CRLF")
        pos += size + 2
    raise ResponseParseError("too many chunks")


def _body_length(status: int, method: str, headers: list[tuple[bytes, bytes]]) -> int | str | None:
    """An int, "chunked", or None for "until the connection closes" (RFC 9112 §6.3)."""
    if method == "HEAD" or 100 <= status < 200 or status in (204, 304):
        return 0
    names = [name.lower() for name, _ in headers]
    if b"transfer-encoding" in names:
        if b"content-length" in names:
            raise ResponseParseError("response has both Transfer-Encoding and Content-Length")
        codings = b",".join(v for n, v in headers if n.lower() == b"transfer-encoding")
        if codings.replace(b" ", b"").lower() != b"chunked":
            raise ResponseParseError(f"unexpected response Transfer-Encoding {codings!r}")
        return "chunked"
    lengths = [v for n, v in headers if n.lower() == b"content-length"]
    if len(lengths) > 1:
        raise ResponseParseError(f"several Content-Length lines {lengths!r}")
    if lengths:
        if not lengths[0].isdigit():
            raise ResponseParseError(f"bad Content-Length {lengths[0]!r}")
        return int(lengths[0])
    return None


def _parse_one(data: bytes, method: str, eof: bool) -> tuple[Response, int]:
    status_line, pos = _split_line(data, 0)
    match = _STATUS_LINE.fullmatch(status_line)
    if not match:
        raise ResponseParseError(f"bad status line {status_line!r}")
    headers, pos = _parse_fields(data, pos)
    status = int(match.group(1))
    response = Response(status, match.group(2), status_line[5:8], headers, b"", raw_head=data[:pos])
    length = _body_length(status, method, headers)
    if length == "chunked":
        response.body, response.trailers, pos = _parse_chunked(data, pos)
        response.chunked = True
    elif length is None:
        if not eof:
            raise _Incomplete
        response.body, pos = data[pos:], len(data)
    else:
        assert isinstance(length, int)
        if len(data) < pos + length:
            raise _Incomplete
        response.body, pos = data[pos : pos + length], pos + length
    return response, pos


def _try_parse(data: bytes, method: str, eof: bool) -> tuple[Response | None, int]:
    try:
        return _parse_one(data, method, eof)
    except _Incomplete:
        if eof and data:
            raise ResponseParseError(f"connection closed inside a response: {data[:200]!r}") from None
        return None, 0


def parse_responses(data: bytes, methods: Sequence[str] = (), *, eof: bool = True) -> list[Response]:
    """Every response in `data` (interim 1xx ones too); `methods[i]` is the method of the i-th request.

    With `eof`, the data must end exactly after the last response.
    """
    responses: list[Response] = []
    request_index = 0
    for _ in range(10_000):
        if not data:
            return responses
        method = methods[request_index] if request_index < len(methods) else "GET"
        response, used = _try_parse(data, method, eof)
        if response is None:
            return responses
        responses.append(response)
        if not response.is_interim:
            request_index += 1
        data = data[used:]
    raise ResponseParseError("too many responses")


# --------------------------------------------------------------------------------------------------
# Raw sockets


@dataclass
class Exchange:
    """What came back on one raw connection: the bytes, and whether the server closed it."""

    data: bytes
    closed: bool
    reset: bool = False

    def responses(self, methods: Sequence[str] = ()) -> list[Response]:
        return parse_responses(self.data, methods, eof=self.closed)

    def final_responses(self, methods: Sequence[str] = ()) -> list[Response]:
        return [r for r in self.responses(methods) if not r.is_interim]


def _read_to_eof(sock: socket.socket, timeout: float) -> tuple[bytes, bool, bool]:
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    for _ in range(1_000_000):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return b"".join(chunks), False, False
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            return b"".join(chunks), False, False
        except ConnectionResetError:
            return b"".join(chunks), True, True
        if not chunk:
            return b"".join(chunks), True, False
        chunks.append(chunk)
    return b"".join(chunks), False, False


def read_to_eof(sock: socket.socket, timeout: float = READ_TIMEOUT) -> tuple[bytes, bool]:
    """Everything the peer sends until it closes or `timeout` passes, and whether it closed."""
    data, closed, _ = _read_to_eof(sock, timeout)
    return data, closed


def exchange(port: int, data: bytes, *, shut_wr: bool = False, timeout: float = READ_TIMEOUT) -> Exchange:
    """Send `data` on a fresh connection and read until the server closes it or `timeout` passes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        # The server may reject and close (or stop reading) before the whole request is written.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError, TimeoutError):
            sock.sendall(data)
        if shut_wr:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_WR)
        received, closed, reset = _read_to_eof(sock, timeout)
    return Exchange(received, closed, reset)


def raw_request(port: int, data: bytes, *, shut_wr: bool = False, timeout: float = READ_TIMEOUT) -> bytes:
    """Send `data` and return whatever the server answers before EOF or `timeout`."""
    return exchange(port, data, shut_wr=shut_wr, timeout=timeout).data


def refused(
    port: int, data: bytes, statuses: set[int] | int, *, shut_wr: bool = False, timeout: float = READ_TIMEOUT
) -> Response:
    """Send `data`; assert exactly one response, with one of `statuses` and `Connection: close`, then EOF."""
    wanted = {statuses} if isinstance(statuses, int) else statuses
    result = exchange(port, data, shut_wr=shut_wr, timeout=timeout)
    assert result.closed, f"the server kept the connection open; got {result.data[:300]!r}"
    responses = result.responses()
    assert len(responses) == 1, f"expected exactly one response, got {responses}"
    response = responses[0]
    assert response.status in wanted, response
    assert response.closes, f"a refusal must carry Connection: close: {response.raw_head!r}"
    return response


class Conn:
    """One client connection read response by response (for keep-alive and pipelining tests)."""

    def __init__(self, port: int, timeout: float = READ_TIMEOUT) -> None:
        self.timeout = timeout
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self._buffer = b""
        self._eof = False

    def __enter__(self) -> Conn:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def eof(self) -> bool:
        return self._eof

    @property
    def local_port(self) -> int:
        return self.sock.getsockname()[1]

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def shut_wr(self) -> None:
        self.sock.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.sock.close()

    def _fill(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"no complete response within {self.timeout}s; have {self._buffer[:200]!r}")
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            self._eof = True
        self._buffer += chunk

    def read_response(self, method: str = "GET", *, interim: bool = False) -> Response:
        """The next response; interim (1xx) responses are skipped unless `interim`."""
        deadline = time.monotonic() + self.timeout
        for _ in range(1_000_000):
            response, used = _try_parse(self._buffer, method, self._eof)
            if response is not None:
                self._buffer = self._buffer[used:]
                if response.is_interim and not interim:
                    continue
                return response
            if self._eof:
                raise ConnectionError(f"connection closed before a response; have {self._buffer[:200]!r}")
            self._fill(deadline)
        raise AssertionError("unreachable")

    def read_available(self, wait: float) -> bytes:
        """Whatever arrives within `wait` seconds (without parsing)."""
        deadline = time.monotonic() + wait
        with contextlib.suppress(TimeoutError):
            while not self._eof:
                self._fill(deadline)
        data, self._buffer = self._buffer, b""
        return data

    def wait_closed(self, timeout: float | None = None) -> bytes:
        """Read until EOF; the bytes after the last parsed response. Fails if still open after `timeout`."""
        if not self._eof:
            received, closed, _ = _read_to_eof(self.sock, timeout if timeout is not None else self.timeout)
            self._buffer += received
            self._eof = closed
        if not self._eof:
            raise AssertionError(f"server kept the connection open; got {self._buffer[:200]!r}")
        data, self._buffer = self._buffer, b""
        return data


# --------------------------------------------------------------------------------------------------
# The pre-fork master: its workers, their readiness and a steady client load

_READY_LINE = re.compile(r"\[(\d+)\] \[INFO\] Application startup complete")
_PID_IN_BODY = re.compile(rb"pid=(\d+)")


def _proc_stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (index 0 is the state), or None if gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: it ends at the last ")".
    return text[text.rindex(")") + 2 :].split()


def child_pids(parent: int) -> set[int]:
    """The living (not zombie) child processes of `parent`."""
    children = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _proc_stat(int(entry.name))
        if fields is not None and fields[0] not in ("Z", "X") and int(fields[1]) == parent:
            children.add(int(entry.name))
    return children


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) `pid` has used so far."""
    fields = _proc_stat(pid)
    assert fields is not None, f"process {pid} is gone"
    # utime and stime are fields 14 and 15 of /proc/PID/stat, i.e. 11 and 12 after the command name.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_group_gone(pgid: int) -> bool:
    """True once no process is left in the group (the server runs in its own session, pgid == its pid)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def logged_ready_pids(server: Server) -> list[int]:
    """Pids that logged "Application startup complete" (a worker marks itself READY just before), in order."""
    return [int(pid) for pid in _READY_LINE.findall(server.stderr_text())]


def ready_workers(server: Server) -> set[int]:
    """The master's living children that have reported READY."""
    return child_pids(server.proc.pid) & set(logged_ready_pids(server))


def wait_for_ready_workers(server: Server, count: int, timeout: float = READY_TIMEOUT) -> set[int]:
    """Wait until exactly `count` workers are alive and READY; those pids (fails the test on timeout)."""
    ok = wait_until(
        lambda: len(ready_workers(server)) == count == len(child_pids(server.proc.pid)), timeout, interval=0.05
    )
    assert ok, f"wanted {count} READY workers, have {sorted(ready_workers(server))}:\n{server.stderr_text()}"
    return ready_workers(server)


@dataclass(frozen=True)
class Outcome:
    """One request of a `RequestLoad`: when it started, its status (None: no response) and who served it."""

    started: float
    status: int | None
    pid: int | None
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status == 200


class RequestLoad:
    """A thread sending sequential GETs, each on a fresh connection, until stopped or its bounds are reached.

    Use as a context manager; `outcomes()` lists every finished request. The app's answers should contain
    "pid=N" (tests/apps/master_apps.py does) so each outcome names the worker that served it.
    """

    def __init__(self, port: int, path: str = "/", *, max_requests: int = 5_000, max_seconds: float = 60.0) -> None:
        self.port = port
        self.request = f"GET {path} HTTP/1.1\r\nHost: corral.test\r\nConnection: close\r\n\r\n".encode()
        self.max_requests = max_requests
        self.max_seconds = max_seconds
        self._outcomes: list[Outcome] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="request-load", daemon=True)

    def __enter__(self) -> RequestLoad:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self, timeout: float = 2 * READ_TIMEOUT) -> list[Outcome]:
        self._stop.set()
        self._thread.join(timeout)
        return self.outcomes()

    def join(self, timeout: float) -> bool:
        """Wait for the load to reach its bounds by itself; whether it did."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def outcomes(self) -> list[Outcome]:
        return list(self._outcomes)

    def wait_for_more(self, count: int, timeout: float = 20.0) -> bool:
        """Wait until `count` more requests than now have finished."""
        target = len(self._outcomes) + count
        return wait_until(lambda: len(self._outcomes) >= target or not self._thread.is_alive(), timeout) and (
            len(self._outcomes) >= target
        )

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        for _ in range(self.max_requests):
            if self._stop.is_set() or time.monotonic() > deadline:
                return
            self._outcomes.append(self._one())

    def _one(self) -> Outcome:
        started = time.monotonic()
        try:
            result = exchange(self.port, self.request)
            responses = result.final_responses()
        except (OSError, AssertionError) as exc:  # ResponseParseError is an AssertionError
            return Outcome(started, None, None, repr(exc))
        if len(responses) != 1:
            how = "reset by the server" if result.reset else "closed" if result.closed else "still open"
            return Outcome(started, None, None, f"{len(responses)} responses, connection {how}")
        match = _PID_IN_BODY.search(responses[0].body)
        return Outcome(started, responses[0].status, int(match.group(1)) if match else None)
